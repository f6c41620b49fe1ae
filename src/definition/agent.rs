//! Agents defined as data (`RunService.RegisterAgent`): the model runs on the server, on its model provider; each
//! tool is a task that a worker runs ([`WorkerHub::tool`](crate::worker::WorkerHub)).

use std::{collections::HashSet, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    DefinitionError, MAX_ID_LEN,
    validate::{check_definition_id, check_name, check_task},
};
use crate::{
    agent::{self, Agent},
    engine::{Workflow, schema::Schema},
    model::ModelProvider,
    worker::WorkerHub,
};

/// Model calls per run when the definition sets none (proto: "Unset or 0: 10").
pub(crate) const DEFAULT_MAX_STEPS: u32 = 10;
/// The most model calls a definition may allow per run.
pub(crate) const MAX_STEPS: u32 = 50;
/// The most tools an agent may have (OpenAI takes at most 128).
pub(crate) const MAX_TOOLS: usize = 128;
/// The longest tool name (OpenAI's limit).
const MAX_TOOL_NAME_LEN: usize = 64;

/// An agent defined as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentDef {
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) instructions: String,
    /// Empty: the server's model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) model: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tools: Vec<ToolDef>,
    /// 0: [`DEFAULT_MAX_STEPS`].
    #[serde(default)]
    pub(crate) max_steps: u32,
}

/// A tool a worker serving `task` runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolDef {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    /// JSON Schema of the arguments; unset: an object with any properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parameters: Option<Value>,
    #[serde(default)]
    pub(crate) task: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) requires_approval: bool,
}

impl ToolDef {
    /// The arguments' schema, an empty object's when unset.
    fn parameters(&self) -> Value {
        self.parameters.clone().unwrap_or_else(|| json!({ "type": "object", "properties": {} }))
    }
}

/// Checks `def` and makes it an agent whose model is `model` (or the one it names on `model`'s provider) and whose
/// tools the workers of `hub` run; the result is the agent's one-step workflow.
pub(crate) fn compile(
    def: &AgentDef,
    model: &Arc<dyn ModelProvider>,
    hub: &Arc<WorkerHub>,
) -> Result<Arc<Workflow>, DefinitionError> {
    let schemas = validate(def)?;
    // A provider with one model (the offline stand-in) serves every name.
    let model = match def.model.as_str() {
        "" => Arc::clone(model),
        name => model.with_model(name).unwrap_or_else(|| Arc::clone(model)),
    };
    let max_steps = if def.max_steps == 0 { DEFAULT_MAX_STEPS } else { def.max_steps };
    let mut agent = Agent::new(def.id.as_str(), def.instructions.as_str(), model)
        .description(def.description.as_str())
        .max_steps(max_steps);
    for (tool, parameters) in def.tools.iter().zip(schemas) {
        let built = hub.tool(&tool.name, &tool.description, parameters, &tool.task);
        agent = agent.tool(if tool.requires_approval { built.with_approval() } else { built });
    }
    Ok(agent::workflow(Arc::new(agent)))
}

/// Checks `def`; returns each tool's compiled parameters schema, in order.
fn validate(def: &AgentDef) -> Result<Vec<Schema>, DefinitionError> {
    check_definition_id("id", &def.id)?;
    if def.model.len() > MAX_ID_LEN {
        return Err(DefinitionError::new(
            "model",
            format!("{} characters long; at most {MAX_ID_LEN}", def.model.len()),
        ));
    }
    if def.model.chars().any(char::is_control) {
        return Err(DefinitionError::new("model", "must not contain control characters"));
    }
    if def.max_steps > MAX_STEPS {
        return Err(DefinitionError::new(
            "maxSteps",
            format!("{} is more than the limit of {MAX_STEPS} model calls per run", def.max_steps),
        ));
    }
    if def.tools.len() > MAX_TOOLS {
        return Err(DefinitionError::new("tools", format!("{} tools; at most {MAX_TOOLS}", def.tools.len())));
    }
    let mut names = HashSet::new();
    let mut schemas = Vec::with_capacity(def.tools.len());
    for (i, tool) in def.tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        // What model APIs take as a function name.
        check_name(&format!("{path}.name"), &tool.name, MAX_TOOL_NAME_LEN, "; use letters, digits, _ and -")?;
        if !names.insert(tool.name.as_str()) {
            return Err(DefinitionError::new(
                format!("{path}.name"),
                format!("'{}' is already the name of another tool; tool names must be unique", tool.name),
            ));
        }
        check_task(&format!("{path}.task"), &tool.task)?;
        let parameters = tool.parameters();
        // Models take only an object of named arguments.
        if parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err(DefinitionError::new(
                format!("{path}.parameters"),
                "must be a JSON Schema of type \"object\" (a tool's arguments are named fields)",
            ));
        }
        let schema = Schema::compile(parameters)
            .map_err(|e| DefinitionError::new(format!("{path}.parameters"), format!("not a valid JSON Schema: {e}")))?;
        schemas.push(schema);
    }
    Ok(schemas)
}

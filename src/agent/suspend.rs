//! When a tool call waits for a person: the approval decision and its schema, the loop state saved for the resume,
//! and restoring that state with the resume data (a decision, or data for a tool that suspended itself).

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Agent,
    chunks::{PartIds, ToolAnswer, ToolPhase, error_content},
};
use crate::{
    engine::{AgentChunk, Usage, schema::Schema},
    model::Message,
};

/// A person's answer to a `ToolCallApproval`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// Whether the call may run.
    pub approved: bool,
    /// Why, if the person said (told to the model when declined).
    #[serde(default)]
    pub reason: Option<String>,
}

impl ApprovalDecision {
    /// The decision resume data carries (checked against [`approval_schema`] before a resume starts; this only
    /// fails on data that bypassed that check), with a message saying what it must be.
    pub fn from_resume_data(data: Value) -> Result<Self, String> {
        serde_json::from_value(data)
            .map_err(|e| format!("resume_data must be {{\"approved\": bool, \"reason\"?: string}}: {e}"))
    }
}

/// JSON Schema of the resume data an approval takes (compiled: [`APPROVAL_SCHEMA`]).
pub fn approval_schema() -> Value {
    APPROVAL_SCHEMA.raw().clone()
}

/// The approval schema, compiled once; what every approval suspension names as its resume schema.
pub(crate) static APPROVAL_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::compile_or_panic(approval_schema_json(), "the approval schema"));

fn approval_schema_json() -> Value {
    json!({
        "type": "object",
        "required": ["approved"],
        "properties": {
            "approved": { "type": "boolean", "description": "true runs the tool call; false declines it" },
            "reason": { "type": "string", "description": "why, shown to the model when declined" }
        },
        "additionalProperties": false
    })
}

/// Everything the loop needs to go on after a suspension. Kept by the engine in the run's snapshot (see
/// `StepContext::save_state`), never shown to callers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LoopState {
    pub(super) message_id: String,
    pub(super) conversation: Vec<Message>,
    pub(super) steps: u32,
    pub(super) total: Usage,
    pub(super) parts: PartIds,
    /// The tool half of the current model call, while its tools run (or wait for approval).
    pub(super) pending: Option<ToolPhase>,
}

/// Restores the loop after a suspension and hands `data` to the call that waited: the decision on a call awaiting
/// approval, the resume data of a tool that suspended itself (checked against its schema here too, for callers of
/// the loop that did not check it).
pub(super) fn resume_state(
    agent: &Agent,
    state: Value,
    data: Value,
    emit: &impl Fn(AgentChunk),
) -> Result<LoopState, String> {
    let mut st: LoopState =
        serde_json::from_value(state).map_err(|e| format!("the agent's saved state is unreadable: {e}"))?;
    let Some(phase) = st.pending.as_mut().filter(|p| !p.queue.is_empty()) else {
        return Err("the agent's saved state has no tool call waiting for a decision or resume data".to_owned());
    };
    if let Some(head) = phase.queue.front_mut().filter(|c| c.suspended) {
        if let Some(schema) = agent.find_tool(&head.name).and_then(|t| t.resume_schema.as_ref()) {
            schema
                .validate(&data, "resume_data")
                .map_err(|v| format!("{v}; the tool '{}' cannot resume", head.name))?;
        }
        head.suspended = false;
        head.resume_data = Some(data);
        return Ok(st);
    }
    let decision = ApprovalDecision::from_resume_data(data)?;
    if decision.approved {
        if let Some(head) = phase.queue.front_mut() {
            head.approved = true;
        }
    } else if let Some(call) = phase.queue.pop_front() {
        emit(AgentChunk::ToolOutputDenied {
            tool_call_id: Arc::from(call.id.as_str()),
            tool_name: Arc::from(call.name.as_str()),
            args: Some(call.args),
            approval_id: call.id.clone(),
            reason: decision.reason.clone(),
        });
        // The model learns that the call was declined (and why), so it can answer without it.
        let why = decision.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        let content = error_content(&format!("the user declined this call to '{}'{why}", call.name));
        phase.answers.push(ToolAnswer { id: call.id, name: call.name, content });
    }
    Ok(st)
}

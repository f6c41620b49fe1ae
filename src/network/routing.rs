//! What the routing agent reads and writes: its system message, the JSON Schema of its answer, the parsing of that
//! answer (untrusted model output), and the notes on results it reads back. Pure functions, no model call.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{NONE_ID, Network};
use crate::engine::{Delegation, ErrorInfo, PrimitiveType};

/// The routing agent's system message: what the network is, its primitives, and the answer format.
pub(super) fn routing_instructions(network: &Network) -> String {
    let mut text = format!(
        "You are the routing agent of the agent network '{}'. You work on the user's task one step at a time: each \
         time you are asked, choose the one primitive (agent, workflow or tool) to run next, or \"none\" once the \
         task is complete.",
        network.id
    );
    if !network.description.is_empty() {
        let _ = write!(text, " The network: {}", network.description);
    }
    if !network.instructions.is_empty() {
        let _ = write!(text, "\n\n{}", network.instructions);
    }
    text.push_str("\n\nPrimitives:");
    for agent in &network.agents {
        let _ = write!(text, "\n- agent \"{}\": {}", agent.id, agent.description);
    }
    for workflow in &network.workflows {
        let _ = write!(text, "\n- workflow \"{}\": {}", workflow.id(), workflow.description());
        if let Some(schema) = workflow.input_schema() {
            let _ = write!(text, " Input (JSON Schema): {schema}");
        }
    }
    for tool in &network.tools {
        let _ = write!(
            text,
            "\n- tool \"{}\": {} Input (JSON Schema): {}",
            tool.name(),
            tool.description(),
            tool.parameters()
        );
    }
    text.push_str(
        "\n\nAnswer with a JSON object: \"primitive_id\", the id of the primitive to run next, or \"none\" when the \
         task is complete; \"prompt\", what the primitive gets: an agent's message, a workflow's or tool's input as \
         a JSON object (or a request in words, which is turned into that input), or with \"none\" your final answer; \
         \"selection_reason\", why, in one sentence. Run every primitive the task names, in the order it names them, \
         each once unless a result shows it must run again. Each primitive's result follows your decision.",
    );
    text
}

/// The routing answer's JSON Schema: strict (every field required, nothing else), `primitive_id` an enum with
/// `"none"` first.
pub(super) fn routing_schema(network: &Network) -> Value {
    let mut ids = vec![NONE_ID];
    ids.extend(network.primitive_ids());
    json!({
        "type": "object",
        "required": ["primitive_id", "prompt", "selection_reason"],
        "properties": {
            "primitive_id": { "type": "string", "enum": ids },
            "prompt": { "type": "string" },
            "selection_reason": { "type": "string" }
        },
        "additionalProperties": false
    })
}

/// Reads the routing answer: `(primitive_id, type, prompt, selection_reason)`, or what is wrong with it.
pub(super) fn parse_decision(
    network: &Network,
    answer: &str,
) -> Result<(String, PrimitiveType, String, String), String> {
    let value: Value =
        serde_json::from_str(strip_code_fence(answer)).map_err(|e| format!("its answer is not JSON ({e})"))?;
    let Value::Object(fields) = value else {
        return Err("its answer is not a JSON object".to_owned());
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!("\"{name}\" must be a string, not {other}")),
    };
    let primitive_id = match fields.get("primitive_id") {
        Some(Value::String(id)) => id.trim().to_owned(),
        _ => return Err("its answer has no \"primitive_id\" string".to_owned()),
    };
    let primitive_type = if primitive_id == NONE_ID {
        PrimitiveType::None
    } else {
        match network.primitive(&primitive_id) {
            Some(primitive) => primitive.primitive_type(),
            None => {
                return Err(format!(
                    "it chose \"{primitive_id}\", which is not a primitive of this network (it has: {}; or \"none\")",
                    network.primitive_ids().join(", ")
                ));
            }
        }
    };
    Ok((primitive_id, primitive_type, text("prompt")?, text("selection_reason")?))
}

/// Models asked for JSON sometimes wrap it in a Markdown code fence anyway.
fn strip_code_fence(text: &str) -> &str {
    let text = text.trim();
    match text.strip_prefix("```") {
        Some(rest) => {
            let body = rest.split_once('\n').map_or("", |(_, body)| body);
            body.trim_end().strip_suffix("```").unwrap_or(body).trim()
        }
        None => text,
    }
}

pub(super) fn routing_error(iteration: u32, problem: String, answer: Option<&str>) -> ErrorInfo {
    ErrorInfo {
        name: "RoutingError".to_owned(),
        message: format!("the routing agent failed at iteration {iteration}: {problem}"),
        details: Some(json!({ "iteration": iteration, "answer": answer.map(excerpt) })),
    }
}

/// What the router (and the structured-output call) read about a primitive's result.
pub(super) fn result_note(delegation: &Delegation) -> String {
    let kind = match delegation.primitive_type {
        PrimitiveType::Agent => "agent",
        PrimitiveType::Workflow => "workflow",
        PrimitiveType::Tool => "tool",
        PrimitiveType::RoutingAgent | PrimitiveType::None => "primitive",
    };
    let result = match &delegation.result {
        Some(Value::String(text)) => text.clone(),
        Some(value) => value.to_string(),
        None => "nothing".to_owned(),
    };
    format!("Result of {kind} \"{}\" (iteration {}): {result}", delegation.primitive_id, delegation.iteration)
}

/// The first 300 characters of `text`, for error messages about untrusted output.
pub(super) fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

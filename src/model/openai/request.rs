//! The Chat Completions request body: messages, tools and tool choice, response schema, token and reasoning
//! settings, as OpenAI and the compatible servers read them.

use serde_json::{Map, Value, json};

use crate::model::{Message, ModelRequest, ToolChoice};

/// The Chat Completions request body for `request`.
pub(super) fn request_body(model: &str, request: &ModelRequest) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    body.insert("stream".into(), true.into());
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": { "name": t.name, "description": t.description, "parameters": t.parameters },
                })
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    // `tool_choice: none` without tools is meaningful to nobody, and some servers reject it.
    if !request.tools.is_empty() {
        let choice = match &request.tool_choice {
            ToolChoice::Auto => None,
            ToolChoice::None => Some(json!("none")),
            ToolChoice::Required => Some(json!("required")),
            ToolChoice::Tool(name) => Some(json!({ "type": "function", "function": { "name": name } })),
        };
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(schema) = &request.response_schema {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": { "name": schema.name, "schema": schema.schema, "strict": schema.strict },
            }),
        );
    }
    if let Some(max_tokens) = request.max_tokens {
        // OpenAI's reasoning models reject `max_tokens`; every other server reads it (not all read the newer name).
        let key = if request.reasoning_effort.is_some() { "max_completion_tokens" } else { "max_tokens" };
        body.insert(key.into(), max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), temperature.into());
    }
    if let Some(effort) = request.reasoning_effort {
        body.insert("reasoning_effort".into(), effort.requested().as_str().into());
    }
    Value::Object(body)
}

fn message_json(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({ "role": "system", "content": content }),
        Message::User { content } => json!({ "role": "user", "content": content }),
        Message::Assistant { content, tool_calls } => {
            let mut m = Map::new();
            m.insert("role".into(), "assistant".into());
            m.insert("content".into(), content.as_deref().map_or(Value::Null, Value::from));
            // An empty `tool_calls` array is rejected by some servers: omit it.
            if !tool_calls.is_empty() {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments },
                        })
                    })
                    .collect();
                m.insert("tool_calls".into(), calls.into());
            }
            Value::Object(m)
        }
        Message::Tool { tool_call_id, content, .. } => {
            json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content })
        }
    }
}

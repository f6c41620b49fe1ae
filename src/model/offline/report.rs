//! The answer after tool results: text reporting each result, the successful ones cited as sources or attached as
//! a CSV file when the user asked for that.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{Plan, excerpt};
use crate::model::Message;

/// One tool result a report covers.
pub(super) struct Reported {
    pub(super) tool: String,
    pub(super) call_id: String,
    /// The result, `None` when the call failed (the agent loop answers a failed call with `{"error": ...}`).
    pub(super) value: Option<Value>,
}

/// Text that reports the tool results after the last assistant message; with `cite` they are cited, with `as_csv`
/// attached as CSV.
pub(super) fn report(messages: &[Message], cite: bool, as_csv: bool) -> Plan<'_> {
    let start = messages.iter().rposition(|m| matches!(m, Message::Assistant { .. })).map_or(0, |i| i + 1);
    let mut text = String::from("Here is what I found:");
    let mut tools = Vec::new();
    let mut results = Vec::new();
    for message in &messages[start..] {
        if let Message::Tool { tool_call_id, tool_name, content } = message {
            let parsed = serde_json::from_str::<Value>(content).ok();
            let result = match &parsed {
                Some(value) => describe(value),
                None => excerpt(content, 60),
            };
            let _ = write!(text, " {tool_name} returned {result}.");
            tools.push(tool_name.clone());
            let failed = matches!(&parsed, Some(Value::Object(o)) if o.len() == 1 && o.contains_key("error"));
            let value = match parsed {
                _ if failed => None,
                Some(value) => Some(value),
                None => Some(Value::String(content.clone())),
            };
            results.push(Reported { tool: tool_name.clone(), call_id: tool_call_id.clone(), value });
        }
    }
    let csv = as_csv.then(|| csv(&results)).flatten();
    if csv.is_some() {
        text.push_str(" The results are attached as a CSV file.");
    }
    Plan::Report { text, tools, results, cite, csv }
}

/// The successful results as CSV (RFC 4180, `\n` line ends): a `tool` column, then every field of the results in
/// alphabetical order (an object's keys; `result` for a value that is not an object); strings as they are, other
/// values as JSON. `None` when no result succeeded.
fn csv(results: &[Reported]) -> Option<String> {
    let rows: Vec<(&str, Map<String, Value>)> = results
        .iter()
        .filter_map(|r| {
            let fields = match r.value.as_ref()? {
                Value::Object(o) => o.clone(),
                other => Map::from_iter([("result".to_owned(), other.clone())]),
            };
            Some((r.tool.as_str(), fields))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let columns: std::collections::BTreeSet<&str> =
        rows.iter().flat_map(|(_, f)| f.keys().map(String::as_str)).collect();
    let field = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    };
    let mut out = std::iter::once("tool").chain(columns.iter().copied()).map(field).collect::<Vec<_>>().join(",");
    out.push('\n');
    for (tool, fields) in &rows {
        let cells = columns.iter().map(|c| match fields.get(*c) {
            None => String::new(),
            Some(Value::String(s)) => field(s),
            Some(other) => field(&other.to_string()),
        });
        out.push_str(&std::iter::once(field(tool)).chain(cells).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    Some(out)
}

/// A JSON value in words: `{"temperature": 18, "conditions": "sunny"}` → `conditions sunny, temperature 18`.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => excerpt(s, 60),
        Value::Object(map) if !map.is_empty() => {
            map.iter().map(|(k, v)| format!("{k} {}", describe(v))).collect::<Vec<_>>().join(", ")
        }
        Value::Array(items) if !items.is_empty() => items.iter().map(describe).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

//! A JSON value for a JSON Schema (a tool's arguments, a structured answer), filled from what the message says
//! where it fits, within a budget that a client's schema cannot exceed.

use serde_json::{Map, Value, json};

use super::{excerpt, facts::Facts};

/// Most values one answer fills in. The schema may come from a client (`outputSchema`): `minItems` of 10^12 must
/// not make the server build 10^12 values. An answer cut short fails the schema check, as a real model's would.
pub(super) const FILL_BUDGET: usize = 10_000;

/// A deterministic value for `schema` (field `name`), from what the message says where it fits.
pub(super) fn fill(schema: &Value, name: &str, facts: &Facts, next_number: &mut usize) -> Value {
    let mut budget = FILL_BUDGET;
    fill_within(schema, name, facts, next_number, &mut budget)
}

fn fill_within(schema: &Value, name: &str, facts: &Facts, next_number: &mut usize, budget: &mut usize) -> Value {
    let Some(left) = budget.checked_sub(1) else { return Value::Null };
    *budget = left;
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    let name = name.to_lowercase();
    if let Some(options) = schema.get("enum").and_then(Value::as_array).filter(|o| !o.is_empty()) {
        let operation = facts.expression.as_ref().map(|e| e.operation);
        let fitting = options.iter().find(|o| {
            o.as_str().is_some_and(|o| operation.is_some_and(|op| o.eq_ignore_ascii_case(op) || op.starts_with(o)))
        });
        return fitting.or_else(|| first_mentioned(options, &name, facts)).unwrap_or(&options[0]).clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let required: Option<Vec<&str>> =
                schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect());
            let mut object = Map::new();
            for (key, property) in properties.into_iter().flatten() {
                if required.as_ref().is_none_or(|r| r.contains(&key.as_str())) {
                    object.insert(key.clone(), fill_within(property, key, facts, next_number, budget));
                }
            }
            Value::Object(object)
        }
        "array" => {
            let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            let count = usize::try_from(count).unwrap_or(usize::MAX).min(*budget);
            let item = schema.get("items").cloned().unwrap_or(json!({}));
            (0..count).map(|_| fill_within(&item, &name, facts, next_number, budget)).collect()
        }
        "number" | "integer" => {
            let number = facts.numbers.get(*next_number).copied().unwrap_or(facts.words.len() as f64);
            *next_number += 1;
            if kind == "integer" || number.fract() == 0.0 { json!(number.trunc() as i64) } else { json!(number) }
        }
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::String(fill_string(&name, facts)),
    }
}

/// The option the message mentions first that no earlier answer gave field `field` (see the module docs).
fn first_mentioned<'a>(options: &'a [Value], field: &str, facts: &Facts) -> Option<&'a Value> {
    let text = facts.text.to_lowercase();
    let chosen_before = |option: &Value| {
        facts
            .earlier_answers
            .iter()
            .any(|answer| answer.iter().any(|(k, v)| k.eq_ignore_ascii_case(field) && v == option))
    };
    options
        .iter()
        .filter_map(|option| Some((mention_position(&text, &option.as_str()?.to_lowercase())?, option)))
        .filter(|(_, option)| !chosen_before(option))
        .min_by_key(|(position, _)| *position)
        .map(|(_, option)| option)
}

/// Where `text` first holds `word` as a whole word: not inside a longer word or name (`-` and `_` join words, so
/// `content` is not mentioned by `content-pipeline`).
pub(super) fn mention_position(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let joins = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        !text[..at].chars().next_back().is_some_and(joins) && !text[at + word.len()..].chars().next().is_some_and(joins)
    })
}

fn fill_string(name: &str, facts: &Facts) -> String {
    let has = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    if let Some(expr) = &facts.expression {
        if has(&["expr", "formula", "equation", "calculation"]) {
            return expr.text.clone();
        }
        if has(&["op"]) {
            return expr.operation.to_owned();
        }
    }
    if has(&["location", "city", "place", "where", "town", "country", "region", "address"])
        && let Some(place) = &facts.place
    {
        return place.clone();
    }
    excerpt(&facts.text, 12)
}

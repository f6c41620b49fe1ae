//! What a definition can do with data without running code: follow paths, test conditions, build objects.
//!
//! A path is dot-separated: `""` or `"."` is the whole value, `"order.items.0.sku"` a part (a number indexes an
//! array), and `length` on an array or a string is its length. A path that leads nowhere gives nothing: a
//! condition on it does not hold (unless negated), a mapping puts `null` there.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Condition, Source, Test};

/// The path segment naming the loop iteration in a loop condition (`"$iteration"`).
pub(crate) const ITERATION: &str = "$iteration";

/// The value at `path` in `data`, if there is one.
pub(crate) fn lookup<'a>(data: &'a Value, path: &str) -> Option<std::borrow::Cow<'a, Value>> {
    use std::borrow::Cow;
    let path = path.strip_prefix('.').unwrap_or(path);
    if path.is_empty() {
        return Some(Cow::Borrowed(data));
    }
    let mut here = data;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let next = match here {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => match segment.parse::<usize>() {
                Ok(i) => items.get(i),
                Err(_) if segment == "length" && segments.peek().is_none() => {
                    return Some(Cow::Owned(Value::from(items.len())));
                }
                Err(_) => None,
            },
            Value::String(s) if segment == "length" && segments.peek().is_none() => {
                return Some(Cow::Owned(Value::from(s.chars().count())));
            }
            _ => None,
        };
        here = next?;
    }
    Some(Cow::Borrowed(here))
}

/// Checks a path's syntax: no empty segment (`a..b`, `a.`).
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    let trimmed = path.strip_prefix('.').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(());
    }
    if trimmed.split('.').any(str::is_empty) {
        return Err(format!(
            "{path:?} has an empty segment; write parts separated by single dots, e.g. \"order.items.0.sku\" (\"\" \
             for all of the data)"
        ));
    }
    Ok(())
}

/// Whether `cond` holds on `data`; `iteration` is what path `$iteration` gives (loops only).
pub(crate) fn holds(cond: &Condition, data: &Value, iteration: Option<u32>) -> bool {
    let value = if cond.path == ITERATION {
        iteration.map(|i| std::borrow::Cow::Owned(Value::from(i)))
    } else {
        lookup(data, &cond.path)
    };
    // A condition of only `all` / `any` is a combinator: it tests nothing of its own.
    let combinator = cond.path.is_empty() && cond.test.is_none() && !(cond.all.is_empty() && cond.any.is_empty());
    let own = match &cond.test {
        None if combinator => true,
        None => value.as_deref().is_some_and(truthy),
        Some(Test::Exists(want)) => value.as_deref().is_some_and(|v| !v.is_null()) == *want,
        Some(Test::Equals(expected)) => value.as_deref().is_some_and(|v| same(v, expected)),
        Some(Test::NotEquals(expected)) => !value.as_deref().is_some_and(|v| same(v, expected)),
        Some(Test::GreaterThan(n)) => number(value.as_deref()).is_some_and(|v| v > *n),
        Some(Test::GreaterOrEqual(n)) => number(value.as_deref()).is_some_and(|v| v >= *n),
        Some(Test::LessThan(n)) => number(value.as_deref()).is_some_and(|v| v < *n),
        Some(Test::LessOrEqual(n)) => number(value.as_deref()).is_some_and(|v| v <= *n),
    };
    let all = cond.all.iter().all(|c| holds(c, data, iteration));
    let any = cond.any.is_empty() || cond.any.iter().any(|c| holds(c, data, iteration));
    (own && all && any) != cond.not
}

/// Null, false, 0, "" (and a missing value) are false; everything else, empty arrays and objects too, is true.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// JSON equality, except that numbers compare by value (`1` equals `1.0`, which proto JSON may turn it into).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// The object a mapping builds: one field per entry, from the node's data or the run input.
pub(crate) fn build(fields: &BTreeMap<String, Source>, data: &Value, run_input: &Value) -> Value {
    let mut out = Map::new();
    for (name, source) in fields {
        let value = match source {
            Source::Path(path) => lookup(data, path).map(std::borrow::Cow::into_owned),
            Source::RunInput(path) => lookup(run_input, path).map(std::borrow::Cow::into_owned),
            Source::Value(v) => Some(v.clone()),
        };
        out.insert(name.clone(), value.unwrap_or(Value::Null));
    }
    Value::Object(out)
}

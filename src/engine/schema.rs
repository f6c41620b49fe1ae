//! JSON Schema checks at the engine's boundaries: run input, step input/output, suspend payloads, resume data.
//!
//! Schemas are compiled once, when the workflow is defined, because validation runs on every step invocation.
//! Violations are reported as a dotted path from the caller's point of view (`input.value`, `items[3]`), not as a
//! JSON pointer, because that is what a person reading an error message or a gRPC status expects.

use std::{fmt, sync::Arc};

use jsonschema::{JsonType, ValidationError, error::TypeKind, error::ValidationErrorKind, paths::LocationSegment};
use serde_json::Value;

use super::error::SchemaViolation;

/// A compiled JSON Schema together with its source (which is reported to clients, e.g. as a step's resume schema).
#[derive(Clone)]
pub struct Schema {
    raw: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schema").field(&self.raw).finish()
    }
}

/// Two schemas are equal when they are written the same (the compiled validator follows from the text).
impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

/// Stored as the schema's JSON, so that a stored snapshot keeps what its suspended steps wait for.
impl serde::Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// Compiled again when read: a stored schema that no longer compiles is an error, not a schema that checks nothing.
impl<'de> serde::Deserialize<'de> for Schema {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::compile(Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl Schema {
    /// Compiles `schema`. Fails when it is not a valid JSON Schema.
    pub fn compile(schema: Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&schema).map_err(|e| format!("invalid JSON Schema: {e}"))?;
        Ok(Self { raw: Arc::new(schema), validator: Arc::new(validator) })
    }

    /// Compiles a schema given in code; panics with `what` in the message when it is invalid, because a workflow
    /// with a broken schema is a programming error best caught when the workflow is defined.
    pub(crate) fn compile_or_panic(schema: Value, what: &str) -> Self {
        match Self::compile(schema) {
            Ok(s) => s,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// The schema as written.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Checks `instance`; on failure reports the first violation with its field named under `root` (e.g. `input`).
    pub fn validate(&self, instance: &Value, root: &str) -> Result<(), SchemaViolation> {
        match self.validator.iter_errors(instance).next() {
            None => Ok(()),
            Some(err) => Err(violation(&err, &self.raw, root)),
        }
    }
}

/// Turns a jsonschema error into a [`SchemaViolation`] with a dotted path and a short message.
fn violation(err: &ValidationError<'_>, schema: &Value, root: &str) -> SchemaViolation {
    let mut path = String::from(root);
    for segment in err.instance_path().iter() {
        match segment {
            LocationSegment::Property(name) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&name);
            }
            LocationSegment::Index(i) => {
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
            }
        }
    }
    let message = match err.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            format!("expected {expected}, got {}", type_name(err.instance()))
        }
        ValidationErrorKind::Required { property } => {
            if !path.is_empty() {
                path.push('.');
            }
            match property {
                Value::String(s) => path.push_str(s),
                other => path.push_str(&other.to_string()),
            }
            "required field is missing".to_owned()
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            // Name the unknown field itself (a typo such as `delayMS`) and the fields the schema knows there.
            if let Some(first) = unexpected.first() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(first);
            }
            let location = err.schema_path().as_str();
            let object = location.strip_suffix("/additionalProperties").and_then(|at| schema.pointer(at));
            let known: Vec<&str> = object
                .and_then(|o| o.get("properties"))
                .and_then(Value::as_object)
                .map(|props| props.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if known.is_empty() {
                "unknown field".to_owned()
            } else {
                format!("unknown field; the fields are: {}", known.join(", "))
            }
        }
        _ => err.to_string(),
    };
    SchemaViolation { path, message }
}

/// JSON type name of a value as JSON Schema spells it (`integer` for whole numbers is deliberately not used: an
/// "expected string, got number" message is clearer).
fn type_name(v: &Value) -> &'static str {
    let t = match v {
        Value::Null => JsonType::Null,
        Value::Bool(_) => JsonType::Boolean,
        Value::Number(_) => JsonType::Number,
        Value::String(_) => JsonType::String,
        Value::Array(_) => JsonType::Array,
        Value::Object(_) => JsonType::Object,
    };
    t.as_str()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_schema_is_stored_as_its_json_and_compiled_when_read() {
        let s = Schema::compile(json!({"type": "integer"})).unwrap();
        let stored = serde_json::to_value(&s).unwrap();
        assert_eq!(stored, json!({"type": "integer"}));
        let read: Schema = serde_json::from_value(stored).unwrap();
        assert_eq!(read, s);
        assert!(read.validate(&json!("x"), "resume_data").is_err());
        assert!(serde_json::from_value::<Schema>(json!({"type": "nonsense"})).is_err());
    }

    #[test]
    fn type_error_names_the_field() {
        let s = Schema::compile(json!({"type":"object","properties":{"value":{"type":"number"}}})).unwrap();
        let v = s.validate(&json!({"value": "x"}), "input").unwrap_err();
        assert_eq!(v.path, "input.value");
        assert_eq!(v.message, "expected number, got string");
    }

    #[test]
    fn missing_required_field_is_named() {
        let s = Schema::compile(json!({"type":"object","required":["approved"]})).unwrap();
        let v = s.validate(&json!({}), "resume_data").unwrap_err();
        assert_eq!(v.path, "resume_data.approved");
    }

    #[test]
    fn array_items_use_brackets() {
        let s = Schema::compile(
            json!({"type":"object","properties":{"items":{"type":"array","items":{"type":"integer"}}}}),
        )
        .unwrap();
        let v = s.validate(&json!({"items": [1, 2, 3, "x"]}), "input").unwrap_err();
        assert_eq!(v.path, "input.items[3]");
        assert_eq!(v.message, "expected integer, got string");
    }

    #[test]
    fn root_violation_uses_the_root_name() {
        let s = Schema::compile(json!({"type":"object"})).unwrap();
        let v = s.validate(&json!(3), "input").unwrap_err();
        assert_eq!(v.path, "input");
        assert_eq!(v.message, "expected object, got number");
    }

    #[test]
    fn an_unknown_field_is_named_with_the_known_ones() {
        let s = Schema::compile(json!({
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "delayMs": {"type": "integer"},
                "nested": {"type": "object", "properties": {"a": {}}, "additionalProperties": false}
            },
            "additionalProperties": false
        }))
        .unwrap();
        let v = s.validate(&json!({"value": 1, "delayMS": 3000}), "input").unwrap_err();
        assert_eq!(v.path, "input.delayMS");
        assert_eq!(v.message, "unknown field; the fields are: delayMs, nested, value");
        let v = s.validate(&json!({"value": 1, "nested": {"b": 1}}), "input").unwrap_err();
        assert_eq!(v.path, "input.nested.b");
        assert_eq!(v.message, "unknown field; the fields are: a");
    }

    #[test]
    fn invalid_schema_is_rejected() {
        assert!(Schema::compile(json!({"type": 12})).is_err());
    }
}

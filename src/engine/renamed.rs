//! Input keys renamed to camelCase (JSON a user types is camelCase, as proto JSON is) whose old snake_case
//! spelling is still accepted until the next release: read under either spelling, listed in the input schema as a
//! deprecated property (so that a strict schema still takes it), and warned about once per run. In the release
//! after, drop the old spellings: this module and its callers' `RENAMED` lists.

use serde_json::{Value, json};

use super::error::SchemaViolation;

/// An input key and its deprecated old spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RenamedKey {
    /// The spelling to use (camelCase).
    pub(crate) key: &'static str,
    /// The old spelling, still accepted.
    pub(crate) old: &'static str,
}

/// A renamed key's value in an input, and the spelling it was given under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Given<'a> {
    pub(crate) spelling: &'static str,
    pub(crate) value: &'a Value,
}

impl Given<'_> {
    /// Where the value is, for an error about it: `input.` and the spelling the caller used.
    pub(crate) fn path(&self) -> String {
        format!("input.{}", self.spelling)
    }
}

impl RenamedKey {
    pub(crate) const fn new(key: &'static str, old: &'static str) -> Self {
        Self { key, old }
    }

    /// The value `input` gives this key under either spelling; both at once is an error naming the field.
    pub(crate) fn get<'a>(&self, input: &'a Value) -> Result<Option<Given<'a>>, SchemaViolation> {
        match (input.get(self.key), input.get(self.old)) {
            (Some(_), Some(_)) => Err(SchemaViolation {
                path: format!("input.{}", self.key),
                message: format!(
                    "given twice, also as `{}` (its deprecated spelling); send only `{}`",
                    self.old, self.key
                ),
            }),
            (Some(value), None) => Ok(Some(Given { spelling: self.key, value })),
            (None, Some(value)) => Ok(Some(Given { spelling: self.old, value })),
            (None, None) => Ok(None),
        }
    }
}

/// `schema` (an object schema) with the old spelling of each of `keys` as a property too: a copy of the new
/// spelling's, marked `deprecated`, so that a strict schema (`additionalProperties: false`) still takes it.
pub(crate) fn with_deprecated_spellings(mut schema: Value, keys: &[RenamedKey]) -> Value {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for key in keys {
            let Some(mut property) = properties.get(key.key).cloned() else { continue };
            if let Some(property) = property.as_object_mut() {
                property.insert("deprecated".to_owned(), json!(true));
                property.insert(
                    "description".to_owned(),
                    json!(format!("deprecated: use `{}` (this spelling is accepted until the next release)", key.key)),
                );
            }
            properties.insert(key.old.to_owned(), property);
        }
    }
    schema
}

/// Logs a deprecation warning for each of `keys` that `input` gives under its old spelling. Called once per run,
/// when its input is checked; `runnable` names what runs (`agent 'assistant'`).
pub(crate) fn warn_deprecated(input: &Value, keys: &[RenamedKey], runnable: &str) {
    for key in keys.iter().filter(|key| input.get(key.old).is_some()) {
        tracing::warn!(
            "{runnable}: input key `{}` is deprecated, use `{}` (the old spelling is accepted until the next release)",
            key.old,
            key.key
        );
    }
}

/// Test support: runs `f`, returning what it returns and the warnings it logged (their messages).
#[cfg(test)]
pub(crate) fn capture_warnings<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    (result, text.lines().map(|line| line.trim().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: RenamedKey = RenamedKey::new("outputSchema", "output_schema");

    #[test]
    fn either_spelling_is_read_and_both_is_an_error_naming_the_field() {
        let value = json!({ "type": "object" });
        let new = json!({ "outputSchema": value });
        assert_eq!(KEY.get(&new).unwrap(), Some(Given { spelling: "outputSchema", value: &value }));
        let old = json!({ "output_schema": value });
        let given = KEY.get(&old).unwrap().unwrap();
        assert_eq!(
            (given.spelling, given.value, given.path()),
            ("output_schema", &value, "input.output_schema".into())
        );
        assert_eq!(KEY.get(&json!({ "task": "x" })).unwrap(), None);
        let both = KEY.get(&json!({ "outputSchema": value, "output_schema": value })).unwrap_err();
        assert_eq!(both.path, "input.outputSchema");
        assert!(
            both.message.contains("`output_schema`") && both.message.contains("send only `outputSchema`"),
            "{both}"
        );
    }

    #[test]
    fn the_old_spelling_is_a_deprecated_copy_of_the_new_property() {
        let schema = json!({
            "type": "object",
            "properties": { "outputSchema": { "type": "object", "description": "a schema" }, "task": {} },
            "additionalProperties": false
        });
        let schema = with_deprecated_spellings(schema, &[KEY, RenamedKey::new("missing", "mis_sing")]);
        let old = &schema["properties"]["output_schema"];
        assert_eq!((&old["type"], &old["deprecated"]), (&json!("object"), &json!(true)));
        assert!(old["description"].as_str().is_some_and(|d| d.contains("use `outputSchema`")), "{old}");
        assert_eq!(schema["properties"]["outputSchema"]["description"], "a schema", "the new spelling is unchanged");
        assert!(schema["properties"].get("mis_sing").is_none(), "only keys the schema has");
    }

    #[test]
    fn each_old_spelling_given_is_warned_about_once_naming_the_new_one() {
        let keys = [KEY, RenamedKey::new("reasoningEffort", "reasoning_effort")];
        let ((), warnings) = capture_warnings(|| {
            warn_deprecated(&json!({ "output_schema": {}, "reasoningEffort": "low" }), &keys, "agent 'a'");
        });
        assert_eq!(
            warnings,
            ["agent 'a': input key `output_schema` is deprecated, use `outputSchema` (the old spelling is accepted \
              until the next release)"]
        );
        let ((), none) = capture_warnings(|| warn_deprecated(&json!({ "outputSchema": {} }), &keys, "agent 'a'"));
        assert!(none.is_empty(), "{none:?}");
    }
}

//! Built-in tools: `get-weather` (offline, deterministic), `calculator`, `book-activity` (needs approval) and
//! `reserve-table` (suspends itself to ask the guest what it lacks); and the `secret-guard` output guardrail.
//!
//! Both work without a network so that the built-in agent and workflows run anywhere and tests are reproducible.
//! The plain functions ([`get_weather`], [`calculate`]) are public too, for workflow steps that want the data
//! without going through a model.

use serde_json::{Value, json};

use crate::agent::{OutputGuardrail, Tool, ToolError};
use crate::fnv::Fnv1a;

/// Name of [`get_weather_tool`].
pub const GET_WEATHER: &str = "get-weather";
/// Name of [`calculator_tool`].
pub const CALCULATOR: &str = "calculator";
/// Name of [`book_activity_tool`].
pub const BOOK_ACTIVITY: &str = "book-activity";
/// Name of [`reserve_table_tool`].
pub const RESERVE_TABLE: &str = "reserve-table";
/// Id of the [`secret_guard`] guardrail.
pub const SECRET_GUARD: &str = "secret-guard";

/// `book-activity`: `{"activity": string, "city": string}` → a (made-up) confirmed booking. It spends money in
/// the story it tells, so every call waits for a person's approval.
pub fn book_activity_tool() -> Tool {
    Tool::new(
        BOOK_ACTIVITY,
        "Books an activity in a city (a tour, a class, a table). Needs the user's approval.",
        json!({
            "type": "object",
            "required": ["activity", "city"],
            "properties": {
                "activity": { "type": "string", "description": "What to book, e.g. a kayak tour" },
                "city": { "type": "string", "description": "Where, e.g. Lisbon" }
            }
        }),
        |ctx, args: Value| async move {
            let activity = args["activity"].as_str().unwrap_or_default();
            let city = args["city"].as_str().unwrap_or_default();
            // Progress streams as `tool_output` while the tool runs.
            ctx.write(json!({ "stage": "checking availability", "city": city }));
            ctx.write(json!({ "stage": "reserving" }));
            Ok(json!({
                "bookingId": format!("bk-{}", &*ctx.tool_call_id),
                "activity": activity,
                "city": city,
                "status": "confirmed",
            }))
        },
    )
    .with_approval()
}

/// 24-hour `HH:MM`.
const TIME_PATTERN: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";

/// `reserve-table`: `{"city": string, "guests"?: integer, "time"?: "HH:MM"}` → a (made-up) confirmed reservation.
/// Without the party size or the time it asks the guest, as Mastra's tools do with `suspend()`: it suspends itself
/// with `{"question", "missing", "city"}` (the agent emits `ToolCallSuspended` and its run suspends), and resumed
/// with `{"guests": 1-20, "time": "HH:MM"}` it is called again and confirms with those.
pub fn reserve_table_tool() -> Tool {
    let guests = json!({ "type": "integer", "minimum": 1, "maximum": 20, "description": "Party size" });
    let time = json!({ "type": "string", "pattern": TIME_PATTERN, "description": "Arrival time, 24-hour HH:MM" });
    Tool::new(
        RESERVE_TABLE,
        "Reserves a restaurant table in a city. Asks the guest for the party size and time when they are not given.",
        json!({
            "type": "object",
            "required": ["city"],
            "properties": {
                "city": { "type": "string", "description": "Where, e.g. Porto" },
                "guests": guests,
                "time": time,
            }
        }),
        |ctx, args: Value| async move {
            let city = args["city"].as_str().unwrap_or_default().trim().to_owned();
            // The guest's answer, when resumed, overrides what the model guessed.
            let detail = |key: &str| ctx.resume_data().and_then(|d| d.get(key)).or_else(|| args.get(key)).cloned();
            let guests = detail("guests").and_then(|g| g.as_u64());
            let time = detail("time").and_then(|t| t.as_str().map(str::to_owned));
            let (Some(guests), Some(time)) = (guests, time.clone()) else {
                let missing: Vec<&str> = [("guests", guests.is_none()), ("time", time.is_none())]
                    .into_iter()
                    .filter(|m| m.1)
                    .map(|m| m.0)
                    .collect();
                return Err(ctx.suspend(json!({
                    "question": format!("For how many guests, and at what time, shall I reserve the table in {city}?"),
                    "missing": missing,
                    "city": city,
                })));
            };
            Ok(json!({
                "reservationId": format!("rt-{}", &*ctx.tool_call_id),
                "city": city,
                "guests": guests,
                "time": time,
                "status": "confirmed",
            }))
        },
    )
    .with_resume_schema(json!({
        "type": "object",
        "required": ["guests", "time"],
        "properties": { "guests": guests, "time": time },
        "additionalProperties": false
    }))
}

/// `secret-guard`: stops an answer that would reveal what looks like a credential (an OpenAI-style `sk-...` key,
/// an AWS access key id, a PEM private key), before that text reaches the stream.
pub fn secret_guard() -> OutputGuardrail {
    OutputGuardrail::new(SECRET_GUARD, |text| {
        let found = if contains_token(text, "sk-", 20) {
            "an API key (sk-...)"
        } else if contains_token(text, "AKIA", 16) {
            "an AWS access key id"
        } else if text.contains("-----BEGIN") && text.contains("PRIVATE KEY") {
            "a private key"
        } else {
            return None;
        };
        Some(format!("the answer would reveal {found}; it was stopped before that text was sent"))
    })
}

/// Whether `text` holds `prefix` followed by at least `min_len` key characters (letters, digits, `-`, `_`).
fn contains_token(text: &str, prefix: &str, min_len: usize) -> bool {
    text.match_indices(prefix).any(|(at, _)| {
        text[at + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).count()
            >= min_len
    })
}

/// `get-weather`: `{"city": string}` → the city's (made-up) current weather.
pub fn get_weather_tool() -> Tool {
    Tool::new(
        GET_WEATHER,
        "Current weather for a city: temperature (°C), conditions, humidity (%) and wind (km/h).",
        json!({
            "type": "object",
            "required": ["city"],
            "properties": { "city": { "type": "string", "description": "City name, e.g. Paris" } }
        }),
        |_ctx, args: Value| async move { get_weather(args["city"].as_str().unwrap_or_default()) },
    )
}

const CONDITIONS: [&str; 6] = ["sunny", "partly cloudy", "cloudy", "light rain", "windy", "foggy"];

/// The weather of `city`, derived from its name (case and surrounding spaces ignored): the same city always gets
/// the same weather. This is demo data, not a forecast.
pub fn get_weather(city: &str) -> Result<Value, ToolError> {
    let city = city.trim();
    if city.is_empty() {
        return Err(ToolError::args("`city` must name a city, e.g. \"Paris\""));
    }
    let mut hash = Fnv1a::new();
    hash.write(city.to_lowercase().bytes());
    let hash = hash.finish();
    let temperature = (hash % 36) as i64 - 5;
    let conditions = CONDITIONS[((hash >> 8) % CONDITIONS.len() as u64) as usize];
    let humidity = 30 + (hash >> 16) % 61;
    let wind_kph = (hash >> 24) % 41;
    Ok(json!({
        "city": city,
        "temperature": temperature,
        "conditions": conditions,
        "humidity": humidity,
        "windKph": wind_kph,
    }))
}

/// `calculator`: `{"expression": string}` → `{"expression", "result"}`.
pub fn calculator_tool() -> Tool {
    Tool::new(
        CALCULATOR,
        "Evaluates an arithmetic expression with + - * / and parentheses, e.g. (12 + 3) * 7.",
        json!({
            "type": "object",
            "required": ["expression"],
            "properties": { "expression": { "type": "string", "description": "The expression to evaluate" } }
        }),
        |_ctx, args: Value| async move {
            let expression = args["expression"].as_str().unwrap_or_default();
            let result = calculate(expression)?;
            Ok(json!({ "expression": expression, "result": number_json(result) }))
        },
    )
}

/// Whole results as integers (`84`, not `84.0`), which is what a reader expects.
fn number_json(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 { json!(x as i64) } else { json!(x) }
}

/// Nesting deeper than this is rejected: the expression comes from a model, and the parser recurses.
const MAX_DEPTH: usize = 64;

/// Evaluates `expression`: numbers (`12`, `3.5`, `.5`), `+ - * /`, unary minus and parentheses, with the usual
/// precedence.
pub fn calculate(expression: &str) -> Result<f64, ToolError> {
    let mut parser = Parser { chars: expression.chars().filter(|c| !c.is_whitespace()).collect(), pos: 0, depth: 0 };
    if parser.chars.is_empty() {
        return Err(ToolError::args("the expression is empty"));
    }
    let value = parser.expr()?;
    if let Some(c) = parser.peek() {
        return Err(ToolError::args(format!("unexpected '{c}' at position {} of the expression", parser.pos + 1)));
    }
    if !value.is_finite() {
        return Err(ToolError::new("the result is too large"));
    }
    Ok(value)
}

/// Recursive descent over the expression without whitespace: `expr = term (('+'|'-') term)*`,
/// `term = factor (('*'|'/') factor)*`, `factor = ('-'|'+') factor | number | '(' expr ')'`.
struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<f64, ToolError> {
        let mut value = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<f64, ToolError> {
        let mut value = self.factor()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let rhs = self.factor()?;
            if op == '*' {
                value *= rhs;
            } else if rhs == 0.0 {
                return Err(ToolError::new("division by zero"));
            } else {
                value /= rhs;
            }
        }
        Ok(value)
    }

    fn factor(&mut self) -> Result<f64, ToolError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ToolError::args(format!("the expression nests deeper than {MAX_DEPTH} levels")));
        }
        let value = match self.peek() {
            Some('-') => {
                self.pos += 1;
                -self.factor()?
            }
            Some('+') => {
                self.pos += 1;
                self.factor()?
            }
            Some('(') => {
                self.pos += 1;
                let value = self.expr()?;
                if self.peek() != Some(')') {
                    return Err(ToolError::args(format!("missing ')' at position {} of the expression", self.pos + 1)));
                }
                self.pos += 1;
                value
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number()?,
            Some(c) => {
                return Err(ToolError::args(format!(
                    "unexpected '{c}' at position {} of the expression",
                    self.pos + 1
                )));
            }
            None => return Err(ToolError::args("the expression ends where a number was expected")),
        };
        self.depth -= 1;
        Ok(value)
    }

    fn number(&mut self) -> Result<f64, ToolError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse::<f64>().map_err(|_| ToolError::args(format!("'{text}' is not a number")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::agent::ToolContext;

    fn ctx() -> ToolContext {
        ToolContext::new(Arc::from("a"), Arc::from("c"), CancellationToken::new())
    }

    #[test]
    fn calculator_follows_precedence_and_parentheses() {
        for (expr, want) in [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("12 * 7", 84.0),
            ("10 / 4", 2.5),
            ("-3 + 5", 2.0),
            ("2 * -(1 + 1)", -4.0),
            ("8 - 2 - 1", 5.0),
            ("16 / 4 / 2", 2.0),
            (".5 + 1.25", 1.75),
        ] {
            assert_eq!(calculate(expr).unwrap(), want, "{expr}");
        }
    }

    #[test]
    fn calculator_rejects_bad_input() {
        assert_eq!(calculate("1 / 0").unwrap_err().message, "division by zero");
        assert_eq!(calculate("1 / (2 - 2)").unwrap_err().message, "division by zero");
        assert_eq!(calculate("").unwrap_err().message, "the expression is empty");
        assert_eq!(calculate("2 +").unwrap_err().message, "the expression ends where a number was expected");
        assert_eq!(calculate("(1 + 2").unwrap_err().message, "missing ')' at position 5 of the expression");
        assert_eq!(calculate("2 x 3").unwrap_err().message, "unexpected 'x' at position 2 of the expression");
        assert_eq!(calculate("1.2.3").unwrap_err().message, "'1.2.3' is not a number");
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert!(calculate(&deep).unwrap_err().message.contains("deeper than 64"));
        assert_eq!(calculate(&"-".repeat(10_000)).unwrap_err().name, "ToolArgsError");
    }

    #[tokio::test]
    async fn calculator_tool_checks_args_and_answers_integers_as_integers() {
        let tool = calculator_tool();
        assert_eq!(
            tool.call(ctx(), json!({"expression": "12 * 7"})).await.unwrap(),
            json!({"expression": "12 * 7", "result": 84})
        );
        assert_eq!(tool.call(ctx(), json!({"expression": "1/4"})).await.unwrap()["result"], json!(0.25));
        let err = tool.call(ctx(), json!({"expr": "1"})).await.unwrap_err();
        assert_eq!(err.name, "ToolArgsError");
        assert_eq!(err.message, "invalid arguments for tool 'calculator': args.expression: required field is missing");
    }

    #[tokio::test]
    async fn weather_is_deterministic_per_city() {
        let paris = get_weather("Paris").unwrap();
        assert_eq!(
            paris,
            get_weather("  paris ")
                .unwrap()
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("city".into(), json!("Paris"));
                    Value::Object(o)
                })
                .unwrap()
        );
        let t = paris["temperature"].as_i64().unwrap();
        assert!((-5..=30).contains(&t));
        assert!(CONDITIONS.contains(&paris["conditions"].as_str().unwrap()));
        assert_ne!(get_weather("Paris").unwrap(), get_weather("Oslo").unwrap());
        assert_eq!(get_weather(" ").unwrap_err().name, "ToolArgsError");

        let tool = get_weather_tool();
        assert_eq!(tool.call(ctx(), json!({"city": "Paris"})).await.unwrap(), paris);
        let err = tool.call(ctx(), json!({"city": 3})).await.unwrap_err();
        assert_eq!(err.message, "invalid arguments for tool 'get-weather': args.city: expected string, got number");
    }
}

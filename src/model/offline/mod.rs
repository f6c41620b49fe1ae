//! The built-in offline model: a deterministic stand-in for a language model, so that the service and its built-in
//! agents work with no network, no API key and no GPU, and so that tests get the same answer every time.
//!
//! It is **not a language model**: it follows a short script, chosen by the shape of the request.
//!
//! 1. The last message is a tool result (and no response schema is asked): it answers in text that reports the results
//!    ("Here is what I found: get-weather returned conditions sunny, temperature 18."). When the user's last
//!    message asks for sources (a word `source(s)`, `cite(d)` or `citation(s)`: "...and cite your sources"), it
//!    first cites each successful result as a source ([`ModelChunk::Source`]): URL
//!    `runstream://tool/<tool>/<tool call id>`, title `<tool> result`. When it mentions CSV ("...as a CSV file"),
//!    it also attaches the results as a CSV file after the text ([`ModelChunk::File`], `text/csv`: a `tool`
//!    column, then one column per field of the results in alphabetical order, one row per result) and says so in
//!    the text.
//! 2. The last message is the user's, tools are offered, and the message mentions one: it calls that tool. A tool
//!    is mentioned when a word of the message matches a word of the tool's name other than a generic verb
//!    ("weather" → `get-weather`), or when the message holds arithmetic such as `12 * 7` or `3 plus 4` and a
//!    tool's name is about calculating (`calculator`, `calc`, `math`, `compute`, `evaluate`). The arguments are
//!    filled from the tool's JSON Schema: the arithmetic expression for `expression`-like fields, the place after
//!    "in"/"for"/"at" for `location`/`city`-like fields, the message's numbers for number fields in order, and so
//!    on. They stream in several deltas and the response finishes with `tool_calls`.
//! 3. A response schema is asked: it answers with JSON that fills the schema's required fields (all of an object
//!    schema's properties when it lists none): strings from the message, numbers from the message's numbers
//!    (else its word count), booleans `true`, arrays with `minItems` copies of their item, nested objects alike,
//!    consts with their value. An enum gets the value the message's arithmetic names (`multiply`), else the value
//!    the message mentions first (as a whole word, case ignored) that no earlier assistant answer in the
//!    conversation (a JSON object) gave the same field, else its first value. Asked again after each answer, it
//!    thus picks every option the user named once, in the order named, then the first option: this is how it
//!    routes an agent network (whose first option is "none").
//! 4. Otherwise: a text answer that quotes the user's last message and says what this model is.
//!
//! With a reasoning effort set (`reasoningEffort` in an agent run's input), a one-sentence reasoning section about
//! the script it follows streams first, then its signature ([`ModelChunk::ReasoningSignature`]: `offline-sig-` and
//! an FNV-1a hash of the reasoning text, so the same reasoning always has the same signature). With effort
//! [`Hidden`](super::ReasoningEffort::Hidden) the section is not streamed as text: one
//! [`ModelChunk::RedactedReasoning`] stands for it (`offline-redacted-` and the same hash).
//! Text streams in word-sized deltas. Usage counts words (runs of letters and digits) as tokens: input over all
//! messages, output over everything streamed (a CSV file included), reasoning over the reasoning section, hidden
//! or not.

use std::{collections::VecDeque, fmt::Write as _, time::Duration};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};

use super::{
    FinishReason, Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream, ToolChoice, ToolSpec,
    Usage,
};

/// See the [module docs](self). Cheap to create and to clone.
#[derive(Debug, Clone, Default)]
pub struct OfflineModel {
    chunk_delay: Duration,
}

impl OfflineModel {
    pub const MODEL_ID: &str = "offline";

    pub fn new() -> Self {
        Self::default()
    }

    /// Waits `delay` before each chunk, so demos stream visibly like a real model. Zero (the default) streams at
    /// once.
    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Every chunk the stream for `request` yields, in order. The same request always gives the same chunks.
    pub fn respond(&self, request: &ModelRequest) -> Vec<ModelChunk> {
        let mut out = Vec::new();
        out.push(ModelChunk::ResponseMetadata {
            id: Some(format!("offline-{:016x}", fingerprint(&request.messages))),
            model: Some(Self::MODEL_ID.to_owned()),
        });
        let plan = plan(request);
        let mut output_words = 0;
        let mut reasoning_words = 0;
        if let Some(effort) = request.reasoning_effort {
            let reasoning = plan.reasoning();
            reasoning_words = count_words(&reasoning);
            let hash = fnv1a(reasoning.as_bytes());
            if effort.shows_reasoning() {
                out.extend(word_pieces(&reasoning).map(|text| ModelChunk::ReasoningDelta { text }));
                out.push(ModelChunk::ReasoningSignature { signature: format!("offline-sig-{hash:016x}") });
            } else {
                out.push(ModelChunk::RedactedReasoning { data: format!("offline-redacted-{hash:016x}") });
            }
        }
        let finish = match plan {
            Plan::CallTool { tool, arguments, id, .. } => {
                let arguments = arguments.to_string();
                output_words += count_words(&tool.name) + count_words(&arguments);
                out.push(ModelChunk::ToolCallStart { index: 0, id, name: tool.name.clone() });
                out.extend(split_in(&arguments, 3).map(|arguments| ModelChunk::ToolCallDelta { index: 0, arguments }));
                FinishReason::ToolCalls
            }
            Plan::Json(value) => {
                let text = value.to_string();
                output_words += count_words(&text);
                out.extend(split_in(&text, 4).map(|text| ModelChunk::TextDelta { text }));
                FinishReason::Stop
            }
            Plan::Report { text, results, cite, csv, .. } => {
                for result in results.iter().filter(|r| cite && r.value.is_some()) {
                    out.push(ModelChunk::Source {
                        url: format!("runstream://tool/{}/{}", result.tool, result.call_id),
                        title: Some(format!("{} result", result.tool)),
                    });
                }
                output_words += count_words(&text);
                out.extend(word_pieces(&text).map(|text| ModelChunk::TextDelta { text }));
                if let Some(csv) = csv {
                    output_words += count_words(&csv);
                    out.push(ModelChunk::File { media_type: "text/csv".to_owned(), base64: BASE64.encode(csv) });
                }
                FinishReason::Stop
            }
            Plan::Echo { text } => {
                output_words += count_words(&text);
                out.extend(word_pieces(&text).map(|text| ModelChunk::TextDelta { text }));
                FinishReason::Stop
            }
        };
        let raw = match finish {
            FinishReason::ToolCalls => "tool_calls",
            _ => "stop",
        };
        out.push(ModelChunk::Finish { reason: finish, raw: raw.to_owned() });
        let input_tokens = request.messages.iter().map(message_words).sum::<u64>();
        let output_tokens = output_words + reasoning_words;
        out.push(ModelChunk::Usage {
            usage: Usage {
                input_tokens,
                output_tokens,
                total_tokens: input_tokens + output_tokens,
                reasoning_tokens: reasoning_words,
                ..Usage::default()
            },
        });
        out
    }
}

impl ModelProvider for OfflineModel {
    fn model_id(&self) -> &str {
        Self::MODEL_ID
    }

    fn provider(&self) -> &str {
        "offline"
    }

    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream {
        let chunks: VecDeque<ModelChunk> = self.respond(&request).into();
        let delay = self.chunk_delay;
        Box::pin(futures_util::stream::unfold(Some((chunks, cancel)), move |state| async move {
            let (mut chunks, cancel) = state?;
            if !delay.is_zero() && !chunks.is_empty() {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
            if cancel.is_cancelled() {
                return Some((Err(ModelError::Canceled), None));
            }
            let chunk = chunks.pop_front()?;
            Some((Ok(chunk), Some((chunks, cancel))))
        }))
    }
}

/// What the script does for one request.
enum Plan<'a> {
    CallTool {
        tool: &'a ToolSpec,
        arguments: Value,
        id: String,
        why: String,
    },
    Json(Value),
    /// `cite`: the user asked for sources; `csv`: the results as a CSV file, when the user asked for one.
    Report {
        text: String,
        tools: Vec<String>,
        results: Vec<Reported>,
        cite: bool,
        csv: Option<String>,
    },
    Echo {
        text: String,
    },
}

impl Plan<'_> {
    fn reasoning(&self) -> String {
        match self {
            Self::CallTool { tool, why, .. } => {
                format!("The request {why}, so I will call the {} tool and wait for its result.", tool.name)
            }
            Self::Json(_) => "A JSON answer is required, so I will fill in each required field of the schema.".into(),
            Self::Report { tools, .. } => {
                format!("I have the results from {}, so I will report them.", tools.join(" and "))
            }
            Self::Echo { .. } => "No tool fits this request, so I will answer it directly.".into(),
        }
    }
}

/// One tool result a report covers.
struct Reported {
    tool: String,
    call_id: String,
    /// The result, `None` when the call failed (the agent loop answers a failed call with `{"error": ...}`).
    value: Option<Value>,
}

fn plan(request: &ModelRequest) -> Plan<'_> {
    let prompt = last_user_text(&request.messages).unwrap_or_default();
    let mut facts = Facts::of(prompt);
    facts.earlier_answers = earlier_answers(&request.messages);
    match request.messages.last() {
        // With a response schema, the report is the JSON below: the answer must be the object asked for.
        Some(Message::Tool { .. }) if request.response_schema.is_none() => {
            let asks = |words: &[&str]| facts.words.iter().any(|w| words.contains(&w.as_str()));
            let cite = asks(&["source", "sources", "cite", "cited", "citation", "citations"]);
            return report(&request.messages, cite, asks(&["csv"]));
        }
        Some(Message::User { .. }) if !request.tools.is_empty() && request.tool_choice != ToolChoice::None => {
            if let Some((tool, why)) = choose_tool(request, &facts) {
                let arguments = fill(&tool.parameters, "", &facts, &mut 0);
                let previous_calls: usize = request
                    .messages
                    .iter()
                    .map(|m| match m {
                        Message::Assistant { tool_calls, .. } => tool_calls.len(),
                        _ => 0,
                    })
                    .sum();
                let id = format!("call_offline_{}", previous_calls + 1);
                return Plan::CallTool { tool, arguments, id, why };
            }
        }
        _ => {}
    }
    if let Some(schema) = &request.response_schema {
        return Plan::Json(fill(&schema.schema, "", &facts, &mut 0));
    }
    let text = if prompt.trim().is_empty() {
        "Hello. I am runstream's offline model, a deterministic stand-in for a language model that runs without a \
         network. Set RUNSTREAM_MODEL to use a real model."
            .to_owned()
    } else {
        format!(
            "You said: \"{}\". I am runstream's offline model, a deterministic stand-in for a language model, so I \
             can only answer from a script. Set RUNSTREAM_MODEL to use a real model.",
            excerpt(prompt, 40)
        )
    };
    Plan::Echo { text }
}

/// Text that reports the tool results after the last assistant message; with `cite` they are cited, with `as_csv`
/// attached as CSV.
fn report(messages: &[Message], cite: bool, as_csv: bool) -> Plan<'_> {
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

/// The tool the prompt asks for, and why (for the reasoning text).
fn choose_tool<'a>(request: &'a ModelRequest, facts: &Facts) -> Option<(&'a ToolSpec, String)> {
    let tools = &request.tools;
    if let ToolChoice::Tool(name) = &request.tool_choice
        && let Some(tool) = tools.iter().find(|t| &t.name == name)
    {
        return Some((tool, "must use this tool".to_owned()));
    }
    if let Some(expr) = &facts.expression
        && let Some(tool) = tools.iter().find(|t| name_words(&t.name).iter().any(|w| is_calculation_word(w)))
    {
        return Some((tool, format!("holds the arithmetic {}", expr.text)));
    }
    for tool in tools {
        let subjects: Vec<String> = name_words(&tool.name).into_iter().filter(|w| !is_generic_word(w)).collect();
        if let Some(word) = facts.words.iter().find(|w| subjects.iter().any(|s| same_stem(w, s))) {
            return Some((tool, format!("mentions \"{word}\"")));
        }
    }
    match &request.tool_choice {
        ToolChoice::Required => tools.first().map(|t| (t, "must use a tool".to_owned())),
        _ => None,
    }
}

fn is_calculation_word(word: &str) -> bool {
    ["calc", "math", "arithmetic", "compute", "evaluat", "sum"].iter().any(|stem| word.starts_with(stem))
}

/// Verbs and fillers in tool names that say nothing about the tool's subject.
fn is_generic_word(word: &str) -> bool {
    matches!(
        word,
        "get"
            | "set"
            | "fetch"
            | "lookup"
            | "look"
            | "up"
            | "find"
            | "run"
            | "call"
            | "do"
            | "make"
            | "tool"
            | "current"
            | "the"
            | "a"
            | "an"
            | "of"
            | "for"
            | "by"
            | "api"
            | "query"
            | "list"
            | "read"
            | "create"
    )
}

/// `weather` ~ `weather`, `calculate` ~ `calculator`: equal, or sharing the first six letters.
fn same_stem(word: &str, subject: &str) -> bool {
    const STEM: usize = 6;
    if word == subject {
        return true;
    }
    word.len() >= STEM && subject.len() >= STEM && word.as_bytes()[..STEM] == subject.as_bytes()[..STEM]
}

/// `get-weather`, `get_weather`, `getWeather` → `["get", "weather"]`.
fn name_words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if (!c.is_alphanumeric() || (c.is_uppercase() && previous_lower)) && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        }
        previous_lower = c.is_lowercase();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// What the script reads from the user's message.
struct Facts {
    text: String,
    /// Lower-cased words.
    words: Vec<String>,
    numbers: Vec<f64>,
    expression: Option<Expression>,
    /// The place after "in", "for" or "at", e.g. `New York`.
    place: Option<String>,
    /// The assistant's earlier answers that are JSON objects, for the enum rule.
    earlier_answers: Vec<Map<String, Value>>,
}

struct Expression {
    /// Normalized: `12 * 7`.
    text: String,
    /// The first operator's name: `add`, `subtract`, `multiply`, `divide`.
    operation: &'static str,
}

impl Facts {
    fn of(text: &str) -> Self {
        let words: Vec<String> = word_runs(text).map(str::to_lowercase).collect();
        let numbers = words
            .iter()
            .filter(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        Self {
            text: text.trim().to_owned(),
            words,
            numbers,
            expression: expression(text),
            place: place(text),
            earlier_answers: Vec::new(),
        }
    }
}

/// The longest run of `number (operator number)+`, where operators are symbols or words (`plus`, `times`, ...).
fn expression(text: &str) -> Option<Expression> {
    enum Token {
        Number(String),
        Op(&'static str),
        Other,
        Skip,
    }
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut previous_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let token = match (word.as_str(), previous_word.as_str()) {
                ("plus", _) => Token::Op("+"),
                ("minus", _) => Token::Op("-"),
                ("times" | "x", _) => Token::Op("*"),
                ("by", "multiplied") => Token::Op("*"),
                ("by", "divided") => Token::Op("/"),
                // Read together with the "by" that follows.
                ("multiplied" | "divided", _) => Token::Skip,
                _ => Token::Other,
            };
            if !matches!(token, Token::Skip) {
                tokens.push(token);
            }
            previous_word = word;
            continue;
        }
        match c {
            '+' => tokens.push(Token::Op("+")),
            '-' | '\u{2212}' => tokens.push(Token::Op("-")),
            '*' | '\u{d7}' => tokens.push(Token::Op("*")),
            '/' | '\u{f7}' => tokens.push(Token::Op("/")),
            c if c.is_whitespace() => {}
            _ => tokens.push(Token::Other),
        }
        i += 1;
    }
    let mut best: Option<(usize, String, &'static str)> = None;
    let mut start = 0;
    while start < tokens.len() {
        if let Token::Number(first) = &tokens[start] {
            let mut text = first.clone();
            let mut operation = None;
            let mut len = 1;
            while let (Some(Token::Op(op)), Some(Token::Number(n))) =
                (tokens.get(start + len), tokens.get(start + len + 1))
            {
                let _ = write!(text, " {op} {n}");
                operation.get_or_insert(*op);
                len += 2;
            }
            if let Some(op) = operation
                && best.as_ref().is_none_or(|(l, ..)| len > *l)
            {
                best = Some((len, text, op));
            }
            start += len;
        } else {
            start += 1;
        }
    }
    best.map(|(_, text, op)| Expression {
        text,
        operation: match op {
            "+" => "add",
            "-" => "subtract",
            "*" => "multiply",
            _ => "divide",
        },
    })
}

/// The capitalized words after the last "in", "for" or "at" (else the next word), up to the end of the sentence:
/// `weather in New York? Send it` → `New York`.
fn place(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().rposition(|w| matches!(w.to_lowercase().as_str(), "in" | "for" | "at"))?;
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
    let mut ended = false;
    let capitalized: Vec<String> = words[at + 1..]
        .iter()
        .take_while(|w| {
            // A word after `?`, `.`, `!` or `;` starts another sentence: not part of the name.
            let take = !ended && w.chars().next().is_some_and(char::is_uppercase);
            ended = w.ends_with(['?', '.', '!', ';']);
            take
        })
        .map(|w| clean(w))
        .collect();
    if !capitalized.is_empty() {
        return Some(capitalized.join(" "));
    }
    words.get(at + 1).map(|w| clean(w)).filter(|w| !w.is_empty())
}

/// A deterministic value for `schema` (field `name`), from what the message says where it fits.
/// Most values one answer fills in. The schema may come from a client (`outputSchema`): `minItems` of 10^12 must
/// not make the server build 10^12 values. An answer cut short fails the schema check, as a real model's would.
const FILL_BUDGET: usize = 10_000;

fn fill(schema: &Value, name: &str, facts: &Facts, next_number: &mut usize) -> Value {
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
fn mention_position(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let joins = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        !text[..at].chars().next_back().is_some_and(joins) && !text[at + word.len()..].chars().next().is_some_and(joins)
    })
}

/// The assistant messages of the conversation whose text is a JSON object (earlier structured answers).
fn earlier_answers(messages: &[Message]) -> Vec<Map<String, Value>> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Assistant { content: Some(content), .. } => match serde_json::from_str(content) {
                Ok(Value::Object(answer)) => Some(answer),
                _ => None,
            },
            _ => None,
        })
        .collect()
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

/// The first `max_words` words of `text`, with "..." if there were more.
fn excerpt(text: &str, max_words: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = words.iter().take(max_words).copied().collect::<Vec<_>>().join(" ");
    if words.len() > max_words {
        out.push_str("...");
    }
    out
}

fn last_user_text(messages: &[Message]) -> Option<&str> {
    messages.iter().rev().find_map(|m| match m {
        Message::User { content } => Some(content.as_str()),
        _ => None,
    })
}

/// Runs of letters and digits (with inner `.` between digits, so `2.5` is one): the offline model's "tokens".
fn word_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .flat_map(|w| {
            // `end.` and `.5.` are not numbers: split at dots unless the run is a number.
            if w.starts_with(|c: char| c.is_ascii_digit()) && w.parse::<f64>().is_ok() {
                vec![w]
            } else {
                w.split('.').collect()
            }
        })
        .filter(|w| !w.is_empty())
}

fn count_words(text: &str) -> u64 {
    word_runs(text).count() as u64
}

fn message_words(message: &Message) -> u64 {
    match message {
        Message::System { content } | Message::User { content } => count_words(content),
        Message::Assistant { content, tool_calls } => {
            content.as_deref().map_or(0, count_words)
                + tool_calls.iter().map(|c| count_words(&c.name) + count_words(&c.arguments)).sum::<u64>()
        }
        Message::Tool { content, .. } => count_words(content),
    }
}

/// `Hello big world` → `Hello `, `big `, `world`.
fn word_pieces(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_inclusive(' ').map(str::to_owned)
}

/// `text` in `parts` roughly equal pieces, cut at character boundaries.
fn split_in(text: &str, parts: usize) -> impl Iterator<Item = String> + '_ {
    let size = text.len().div_ceil(parts.max(1)).max(1);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece.to_owned())
    })
}

/// FNV-1a, fed piece by piece: stable across platforms and releases, unlike std's hashers, so that the offline
/// model's (and the offline tools') answers are the same everywhere.
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: impl IntoIterator<Item = u8>) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(bytes.iter().copied());
    hash.finish()
}

/// FNV-1a over the conversation: a stable response id.
fn fingerprint(messages: &[Message]) -> u64 {
    let mut hash = Fnv1a::new();
    let mut eat = |s: &str| hash.write(s.bytes().chain([0xff]));
    for message in messages {
        match message {
            Message::System { content } => eat(content),
            Message::User { content } => eat(content),
            Message::Assistant { content, tool_calls } => {
                eat(content.as_deref().unwrap_or_default());
                for call in tool_calls {
                    eat(&call.id);
                    eat(&call.arguments);
                }
            }
            Message::Tool { tool_call_id, content, .. } => {
                eat(tool_call_id);
                eat(content);
            }
        }
    }
    hash.finish()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::model::{ReasoningEffort, ResponseSchema, ToolCall};

    fn weather_tool() -> ToolSpec {
        ToolSpec {
            name: "get-weather".into(),
            description: "Current weather for a city".into(),
            parameters: json!({
                "type": "object",
                "properties": { "location": { "type": "string" }, "units": { "type": "string", "enum": ["celsius", "fahrenheit"] } },
                "required": ["location"],
            }),
        }
    }

    fn calculator_tool() -> ToolSpec {
        ToolSpec {
            name: "calculator".into(),
            description: "Evaluates arithmetic".into(),
            parameters: json!({
                "type": "object",
                "properties": { "expression": { "type": "string" } },
                "required": ["expression"],
            }),
        }
    }

    fn text(chunks: &[ModelChunk]) -> String {
        chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn tool_call(chunks: &[ModelChunk]) -> Option<(String, String, Value)> {
        let (id, name) = chunks.iter().find_map(|c| match c {
            ModelChunk::ToolCallStart { id, name, .. } => Some((id.clone(), name.clone())),
            _ => None,
        })?;
        let arguments: String = chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        Some((id, name, serde_json::from_str(&arguments).ok()?))
    }

    fn finish(chunks: &[ModelChunk]) -> FinishReason {
        chunks
            .iter()
            .find_map(|c| match c {
                ModelChunk::Finish { reason, .. } => Some(*reason),
                _ => None,
            })
            .unwrap_or(FinishReason::Other)
    }

    fn usage(chunks: &[ModelChunk]) -> Usage {
        match chunks.last() {
            Some(ModelChunk::Usage { usage }) => *usage,
            other => panic!("last chunk is not usage: {other:?}"),
        }
    }

    #[test]
    fn plain_prompts_get_a_deterministic_text_answer_in_word_deltas() {
        let model = OfflineModel::new();
        let request = ModelRequest::new(vec![Message::system("Be brief."), Message::user("Tell me a story")]);
        let chunks = model.respond(&request);
        assert_eq!(chunks, model.respond(&request), "same request, same chunks");
        assert!(matches!(&chunks[0], ModelChunk::ResponseMetadata { model: Some(m), .. } if m == "offline"));
        let answer = text(&chunks);
        assert!(answer.starts_with("You said: \"Tell me a story\"."), "{answer}");
        assert!(answer.contains("offline model"), "{answer}");
        let deltas = chunks.iter().filter(|c| matches!(c, ModelChunk::TextDelta { .. })).count();
        assert_eq!(deltas, answer.split(' ').count());
        assert_eq!(finish(&chunks), FinishReason::Stop);
        let usage = usage(&chunks);
        assert_eq!(usage.input_tokens, 6);
        assert_eq!(usage.output_tokens, count_words(&answer));
        assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
        // A different prompt gives a different response id.
        let other = model.respond(&ModelRequest::new(vec![Message::user("Tell me a joke")]));
        assert_ne!(chunks[0], other[0]);
    }

    #[test]
    fn weather_questions_call_the_weather_tool_with_the_place() {
        let request = ModelRequest::new(vec![Message::user("What's the weather like in New York today?")])
            .with_tools(vec![calculator_tool(), weather_tool()]);
        let chunks = OfflineModel::new().respond(&request);
        let (id, name, arguments) = tool_call(&chunks).unwrap();
        assert_eq!((id.as_str(), name.as_str()), ("call_offline_1", "get-weather"));
        assert_eq!(arguments, json!({ "location": "New York" }));
        let deltas = chunks.iter().filter(|c| matches!(c, ModelChunk::ToolCallDelta { .. })).count();
        assert!(deltas >= 3, "arguments stream in several deltas, got {deltas}");
        assert_eq!(finish(&chunks), FinishReason::ToolCalls);
        assert!(text(&chunks).is_empty());
        assert!(usage(&chunks).output_tokens > 0);
    }

    #[test]
    fn arithmetic_calls_the_calculator() {
        let tools = vec![weather_tool(), calculator_tool()];
        for (prompt, expected) in [
            ("What is 12 * 7?", "12 * 7"),
            ("compute 3 plus 4 times 2 please", "3 + 4 * 2"),
            ("how much is 2.5 divided by 5", "2.5 / 5"),
        ] {
            let request = ModelRequest::new(vec![Message::user(prompt)]).with_tools(tools.clone());
            let (_, name, arguments) = tool_call(&OfflineModel::new().respond(&request)).unwrap();
            assert_eq!(name, "calculator", "{prompt}");
            assert_eq!(arguments, json!({ "expression": expected }), "{prompt}");
        }
        // Schema with numbers and an operation enum.
        let tool = ToolSpec {
            name: "doMath".into(),
            description: String::new(),
            parameters: json!({ "type": "object", "properties": {
                "a": { "type": "number" }, "b": { "type": "number" },
                "op": { "type": "string", "enum": ["add", "subtract", "multiply", "divide"] },
            }}),
        };
        let request = ModelRequest::new(vec![Message::user("12 x 7")]).with_tools(vec![tool]);
        let (_, _, arguments) = tool_call(&OfflineModel::new().respond(&request)).unwrap();
        assert_eq!(arguments, json!({ "a": 12, "b": 7, "op": "multiply" }));
    }

    #[test]
    fn no_matching_tool_means_a_text_answer() {
        let request = ModelRequest::new(vec![Message::user("Say hello")]).with_tools(vec![weather_tool()]);
        let chunks = OfflineModel::new().respond(&request);
        assert!(tool_call(&chunks).is_none());
        assert_eq!(finish(&chunks), FinishReason::Stop);
        let mut none = request.clone();
        none.messages = vec![Message::user("weather in Paris")];
        none.tool_choice = ToolChoice::None;
        assert!(tool_call(&OfflineModel::new().respond(&none)).is_none());
    }

    #[test]
    fn after_tool_results_it_reports_them() {
        let request = ModelRequest::new(vec![
            Message::user("What's the weather in Paris?"),
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_offline_1".into(),
                    name: "get-weather".into(),
                    arguments: r#"{"location":"Paris"}"#.into(),
                }],
            },
            Message::tool_result("call_offline_1", "get-weather", r#"{"temperature":18,"conditions":"sunny"}"#),
        ])
        .with_tools(vec![weather_tool()]);
        let chunks = OfflineModel::new().respond(&request);
        assert_eq!(text(&chunks), "Here is what I found: get-weather returned conditions sunny, temperature 18.");
        assert_eq!(finish(&chunks), FinishReason::Stop);
        // A follow-up question in the same conversation gets the next call id.
        let mut follow_up = request.clone();
        follow_up.messages.push(Message::assistant("It is sunny."));
        follow_up.messages.push(Message::user("And the weather in Rome?"));
        let (id, _, arguments) = tool_call(&OfflineModel::new().respond(&follow_up)).unwrap();
        assert_eq!(id, "call_offline_2");
        assert_eq!(arguments, json!({ "location": "Rome" }));
    }

    #[test]
    fn response_schemas_get_conforming_json() {
        let mut request = ModelRequest::new(vec![Message::user("Rate a stay in Lyon, 4 stars")]);
        request.response_schema = Some(ResponseSchema {
            name: "rating".into(),
            strict: true,
            schema: json!({
                "type": "object",
                "properties": {
                    "city": { "type": "string" },
                    "stars": { "type": "integer" },
                    "recommended": { "type": "boolean" },
                    "tags": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                    "detail": { "type": "object", "properties": { "note": { "type": ["string", "null"] } } },
                    "kind": { "enum": ["town", "city"] },
                    "optional": { "type": "string" },
                },
                "required": ["city", "stars", "recommended", "tags", "detail", "kind"],
            }),
        });
        let chunks = OfflineModel::new().respond(&request);
        let answer: Value = serde_json::from_str(&text(&chunks)).unwrap();
        assert_eq!(
            answer,
            json!({
                "city": "Lyon",
                "stars": 4,
                "recommended": true,
                "tags": ["Rate a stay in Lyon, 4 stars"],
                "detail": { "note": "Rate a stay in Lyon, 4 stars" },
                "kind": "town",
            })
        );
    }

    #[test]
    fn a_schema_asking_for_absurdly_many_items_gets_a_bounded_answer() {
        let mut request = ModelRequest::new(vec![Message::user("Make a list")]);
        let huge = json!({ "type": "array", "minItems": 1_000_000_000_000u64, "items": { "type": "integer" } });
        request.response_schema = Some(ResponseSchema {
            name: "list".into(),
            strict: true,
            schema: json!({ "type": "object", "required": ["a", "b"], "properties": { "a": huge, "b": huge } }),
        });
        let chunks = OfflineModel::new().respond(&request);
        let answer: Value = serde_json::from_str(&text(&chunks)).unwrap();
        let items = |key: &str| answer[key].as_array().map_or(0, Vec::len);
        assert!(items("a") + items("b") < FILL_BUDGET, "{} + {}", items("a"), items("b"));
    }

    /// A router's decision: which of `options` to run next.
    fn choose(options: &[&str], messages: Vec<Message>) -> Value {
        let mut request = ModelRequest::new(messages);
        request.response_schema = Some(ResponseSchema {
            name: "route".into(),
            strict: true,
            schema: json!({
                "type": "object",
                "required": ["next"],
                "properties": { "next": { "type": "string", "enum": options } },
            }),
        });
        let answer: Value = serde_json::from_str(&text(&OfflineModel::new().respond(&request))).unwrap();
        answer["next"].clone()
    }

    #[test]
    fn enums_pick_each_mentioned_option_once_in_the_order_mentioned_then_the_first() {
        let options = ["none", "writer", "content-pipeline", "calculator"];
        let task = "Use the Calculator, then content-pipeline, then the writer.";
        let mut conversation = vec![Message::system("Route."), Message::user(task)];
        let mut picks = Vec::new();
        for _ in 0..5 {
            let pick = choose(&options, conversation.clone());
            picks.push(pick.as_str().unwrap().to_owned());
            // The decision goes back into the conversation, followed by a note that is not a JSON object.
            conversation.push(Message::assistant(json!({ "next": pick }).to_string()));
            conversation.push(Message::assistant(format!("{pick} returned 42")));
        }
        assert_eq!(picks, ["calculator", "content-pipeline", "writer", "none", "none"]);

        // Whole words only: "content" and "writers" mention neither option; nothing mentioned gives the first.
        assert_eq!(choose(&options, vec![Message::user("some content for writers")]), json!("none"));
        // Another field's earlier answer does not count as a choice.
        let other_field = Message::assistant(json!({ "other": "writer" }).to_string());
        assert_eq!(choose(&options, vec![Message::user("ask the writer"), other_field]), json!("writer"));
        assert_eq!(mention_position("a content-pipeline run", "content"), None);
        assert_eq!(mention_position("a content-pipeline run", "content-pipeline"), Some(2));
        assert_eq!(mention_position("pipeline-content content", "content"), Some(17));
    }

    #[test]
    fn reasoning_streams_first_and_is_counted() {
        let mut request = ModelRequest::new(vec![Message::user("What is 6 * 7?")]).with_tools(vec![calculator_tool()]);
        request.reasoning_effort = Some(ReasoningEffort::Low);
        let chunks = OfflineModel::new().respond(&request);
        let reasoning: String = chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::ReasoningDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasoning,
            "The request holds the arithmetic 6 * 7, so I will call the calculator tool and wait for its result."
        );
        let first_call = chunks.iter().position(|c| matches!(c, ModelChunk::ToolCallStart { .. })).unwrap();
        let last_reasoning = chunks.iter().rposition(|c| matches!(c, ModelChunk::ReasoningDelta { .. })).unwrap();
        assert!(last_reasoning < first_call);
        // The signature follows the reasoning it signs, and is the same for the same reasoning.
        let signature = format!("offline-sig-{:016x}", fnv1a(reasoning.as_bytes()));
        assert_eq!(chunks[last_reasoning + 1], ModelChunk::ReasoningSignature { signature });
        assert_eq!(chunks[last_reasoning + 2..first_call].len(), 0);
        let usage = usage(&chunks);
        assert_eq!(usage.reasoning_tokens, count_words(&reasoning));
        assert!(usage.output_tokens > usage.reasoning_tokens);

        // Hidden: one redacted chunk stands for the same reasoning, which still counts.
        request.reasoning_effort = Some(ReasoningEffort::Hidden);
        let hidden = OfflineModel::new().respond(&request);
        assert!(
            !hidden
                .iter()
                .any(|c| matches!(c, ModelChunk::ReasoningDelta { .. } | ModelChunk::ReasoningSignature { .. }))
        );
        let data = format!("offline-redacted-{:016x}", fnv1a(reasoning.as_bytes()));
        assert_eq!(hidden[1], ModelChunk::RedactedReasoning { data });
        assert_eq!(self::usage(&hidden).reasoning_tokens, usage.reasoning_tokens);
    }

    fn weather_report(prompt: &str, results: &[(&str, &str, &str)]) -> Vec<ModelChunk> {
        let mut messages = vec![Message::user(prompt)];
        messages.push(Message::Assistant {
            content: None,
            tool_calls: results
                .iter()
                .map(|(id, name, _)| ToolCall { id: (*id).into(), name: (*name).into(), arguments: "{}".into() })
                .collect(),
        });
        messages.extend(results.iter().map(|(id, name, content)| Message::tool_result(*id, *name, *content)));
        OfflineModel::new().respond(&ModelRequest::new(messages).with_tools(vec![weather_tool()]))
    }

    #[test]
    fn asked_for_sources_a_report_cites_each_successful_result_before_the_text() {
        let uncited = weather_report("Weather in Paris?", &[("c1", "get-weather", r#"{"city":"Paris"}"#)]);
        assert!(!uncited.iter().any(|c| matches!(c, ModelChunk::Source { .. })), "no sources unless asked");
        let chunks = weather_report(
            "Weather in Paris and Oslo? Cite your sources.",
            &[
                ("call_offline_1", "get-weather", r#"{"city":"Paris","temperature":18}"#),
                ("call_offline_2", "get-weather", r#"{"error":"the service is down"}"#),
            ],
        );
        let sources: Vec<&ModelChunk> = chunks.iter().filter(|c| matches!(c, ModelChunk::Source { .. })).collect();
        assert_eq!(
            sources,
            [&ModelChunk::Source {
                url: "runstream://tool/get-weather/call_offline_1".into(),
                title: Some("get-weather result".into()),
            }],
            "the failed call is reported but not cited"
        );
        let source = chunks.iter().position(|c| matches!(c, ModelChunk::Source { .. })).unwrap();
        let first_text = chunks.iter().position(|c| matches!(c, ModelChunk::TextDelta { .. })).unwrap();
        assert!(source < first_text);
        assert!(!chunks.iter().any(|c| matches!(c, ModelChunk::File { .. })), "no CSV unless asked");
        assert!(!text(&chunks).contains("CSV"));
    }

    #[test]
    fn asked_for_csv_it_attaches_the_results_as_a_csv_file_after_the_text() {
        let chunks = weather_report(
            "Weather in Paris and Oslo, as a CSV file please",
            &[
                ("c1", "get-weather", r#"{"city":"Paris","temperature":18,"conditions":"sunny, warm"}"#),
                ("c2", "get-weather", r#"{"city":"Oslo","temperature":-2,"wind_kph":30}"#),
                ("c3", "calculator", "not JSON"),
                ("c4", "calculator", r#"{"error":"division by zero"}"#),
            ],
        );
        assert!(text(&chunks).ends_with(" The results are attached as a CSV file."), "{}", text(&chunks));
        let Some(ModelChunk::File { media_type, base64 }) =
            chunks.iter().find(|c| matches!(c, ModelChunk::File { .. }))
        else {
            panic!("no file: {chunks:?}")
        };
        assert_eq!(media_type, "text/csv");
        let csv = String::from_utf8(BASE64.decode(base64).unwrap()).unwrap();
        assert_eq!(
            csv,
            "tool,city,conditions,result,temperature,wind_kph\n\
             get-weather,Paris,\"sunny, warm\",,18,\n\
             get-weather,Oslo,,,-2,30\n\
             calculator,,,not JSON,,\n"
        );
        let file = chunks.iter().position(|c| matches!(c, ModelChunk::File { .. })).unwrap();
        let last_text = chunks.iter().rposition(|c| matches!(c, ModelChunk::TextDelta { .. })).unwrap();
        assert_eq!(file, last_text + 1);
        assert!(usage(&chunks).output_tokens > count_words(&text(&chunks)), "the file counts as output");
    }

    #[tokio::test]
    async fn the_stream_yields_the_script_and_stops_when_canceled() {
        let model = OfflineModel::new();
        let request = ModelRequest::new(vec![Message::user("hello there")]);
        let streamed: Vec<ModelChunk> =
            model.stream(request.clone(), CancellationToken::new()).map(|c| c.unwrap()).collect().await;
        assert_eq!(streamed, model.respond(&request));

        let cancel = CancellationToken::new();
        let mut stream = model.stream(request, cancel.clone());
        assert!(matches!(stream.next().await, Some(Ok(ModelChunk::ResponseMetadata { .. }))));
        cancel.cancel();
        assert_eq!(stream.next().await, Some(Err(ModelError::Canceled)));
        assert_eq!(stream.next().await, None);
    }

    #[test]
    fn words_and_names() {
        assert_eq!(name_words("getWeather"), ["get", "weather"]);
        assert_eq!(name_words("get_current-Weather"), ["get", "current", "weather"]);
        assert_eq!(word_runs("It's 2.5 degrees. Done.").collect::<Vec<_>>(), ["It", "s", "2.5", "degrees", "Done"]);
        assert_eq!(split_in("{\"a\":\"é\"}", 3).collect::<String>(), "{\"a\":\"é\"}");
        assert_eq!(place("weather for san francisco"), Some("san".into()));
        assert_eq!(place("no place here"), None);
        assert_eq!(place("weather in New York? Send it"), Some("New York".into()));
        assert_eq!(place("weather in Paris, Texas"), Some("Paris Texas".into()));
    }
}

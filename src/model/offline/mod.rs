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
//!
//! This file holds the model and its plan (which of the four answers, and which tool); `facts.rs` reads the user's
//! message, `fill.rs` fills a JSON Schema from it, `report.rs` reports tool results (sources, CSV).

mod facts;
mod fill;
mod report;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::{
    facts::{Facts, earlier_answers, last_user_text, word_runs},
    fill::fill,
    report::{Reported, report},
};
use super::{
    FinishReason, Message, ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream, ToolChoice, ToolSpec,
    Usage,
};
use crate::fnv::{Fnv1a, fnv1a};

/// See the [module docs](self). Cheap to create and to clone.
#[derive(Debug, Clone, Default)]
pub struct OfflineModel {
    chunk_delay: Duration,
}

impl OfflineModel {
    /// The model id it reports (and that `--model offline` selects).
    pub const MODEL_ID: &str = "offline";

    /// The offline model (stateless; cheap to create).
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

/// The first `max_words` words of `text`, with "..." if there were more.
fn excerpt(text: &str, max_words: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = words.iter().take(max_words).copied().collect::<Vec<_>>().join(" ");
    if words.len() > max_words {
        out.push_str("...");
    }
    out
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

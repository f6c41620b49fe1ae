//! The response stream's events turned into `ModelChunk`s, accepting the known variations of compatible servers
//! (see the [module docs](super)), and knowing when the response is complete.

use std::{collections::VecDeque, sync::Arc};

use serde_json::Value;

use super::error::{json_error_message, truncate};
use crate::model::{FinishReason, ModelChunk, ModelError, Usage, sse::SseEvent};

/// Turns the events of one response into chunks, and knows when the response is complete.
#[derive(Debug)]
pub(super) struct Parser {
    url: Arc<str>,
    metadata_sent: bool,
    response_id: Option<String>,
    calls: Vec<ToolCallSlot>,
    pub(super) finish: Option<String>,
    usage: Option<Usage>,
    pub(super) saw_done: bool,
    /// False when the request asked for hidden reasoning: its text and signatures are then not yielded.
    show_reasoning: bool,
    /// URLs cited so far: servers repeat annotations (OpenRouter sends them again with the last chunk).
    cited: Vec<String>,
}

/// One tool call being streamed. `index` in chunks is the slot's position, which equals the server's index except
/// when a server reuses one index for several calls (then a new id starts a new slot).
#[derive(Debug)]
struct ToolCallSlot {
    server_index: u64,
    id: Option<String>,
    name: Option<String>,
    started: bool,
    /// Arguments that arrived before the call's name (then `ToolCallStart` cannot be sent yet).
    early_arguments: String,
}

impl Parser {
    pub(super) fn new(url: Arc<str>) -> Self {
        Self {
            url,
            metadata_sent: false,
            response_id: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
            saw_done: false,
            show_reasoning: true,
            cited: Vec::new(),
        }
    }

    pub(super) fn showing_reasoning(mut self, show: bool) -> Self {
        self.show_reasoning = show;
        self
    }

    fn invalid(&self, message: String) -> ModelError {
        ModelError::InvalidResponse { url: self.url.to_string(), message }
    }

    pub(super) fn event(&mut self, event: &SseEvent, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| self.invalid(format!("an event is not JSON ({e}): {}", truncate(data, 200))))?;
        if event.event.as_deref() == Some("error") || value.get("error").is_some_and(|e| !e.is_null()) {
            return Err(self.stream_error(&value));
        }
        if !self.metadata_sent {
            let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
            let model = value.get("model").and_then(Value::as_str).map(str::to_owned);
            if id.is_some() || model.is_some() {
                self.metadata_sent = true;
                self.response_id.clone_from(&id);
                out.push_back(ModelChunk::ResponseMetadata { id, model });
            }
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(parse_usage(usage));
        }
        let choices = value.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        // We ask for one choice (no `n`); a server that sends more gets its first one read.
        let Some(choice) = choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
            self.delta(delta, out)?;
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
        Ok(())
    }

    fn delta(&mut self, delta: &Value, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        let text = |key: &str| delta.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
        // vLLM and llama.cpp say `reasoning_content`, newer vLLM and OpenRouter `reasoning`; a server in transition
        // may send both with the same text, so take one.
        let reasoning = text("reasoning_content").or_else(|| text("reasoning"));
        if let Some(reasoning) = reasoning.filter(|_| self.show_reasoning) {
            out.push_back(ModelChunk::ReasoningDelta { text: reasoning.to_owned() });
        }
        for detail in delta.get("reasoning_details").and_then(Value::as_array).into_iter().flatten() {
            self.reasoning_detail(detail, reasoning.is_none(), out);
        }
        if let Some(content) = text("content") {
            out.push_back(ModelChunk::TextDelta { text: content.to_owned() });
        }
        // A refusal is the model's answer to the user: show it as text.
        if let Some(refusal) = text("refusal") {
            out.push_back(ModelChunk::TextDelta { text: refusal.to_owned() });
        }
        for annotation in delta.get("annotations").and_then(Value::as_array).into_iter().flatten() {
            self.annotation(annotation, out);
        }
        for image in delta.get("images").and_then(Value::as_array).into_iter().flatten() {
            // `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`; some send the URL bare.
            let url = image.pointer("/image_url/url").or_else(|| image.get("image_url")).and_then(Value::as_str);
            match url.and_then(base64_data_url) {
                Some((media_type, base64)) => out.push_back(ModelChunk::File { media_type, base64 }),
                // A link rather than the bytes: nothing to stream as a file.
                None => tracing::debug!(url = %self.url, "ignoring an image that is not a base64 data URL"),
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                self.tool_call_delta(position, call, out)?;
            }
        }
        Ok(())
    }

    /// One entry of OpenRouter's `reasoning_details`. `take_text`: the delta has no plain reasoning field, whose
    /// text the entry's would repeat.
    fn reasoning_detail(&self, detail: &Value, take_text: bool, out: &mut VecDeque<ModelChunk>) {
        let field = |key: &str| detail.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        match detail.get("type").and_then(Value::as_str) {
            Some("reasoning.text" | "reasoning.summary") if self.show_reasoning => {
                if take_text && let Some(text) = field("text").or_else(|| field("summary")) {
                    out.push_back(ModelChunk::ReasoningDelta { text });
                }
                // After the text: a signature signs the reasoning before it.
                if let Some(signature) = field("signature") {
                    out.push_back(ModelChunk::ReasoningSignature { signature });
                }
            }
            Some("reasoning.encrypted") => {
                if let Some(data) = field("data") {
                    out.push_back(ModelChunk::RedactedReasoning { data });
                }
            }
            _ => {}
        }
    }

    /// One entry of `annotations`: a `url_citation` is a source, cited once however often the server repeats it.
    fn annotation(&mut self, annotation: &Value, out: &mut VecDeque<ModelChunk>) {
        if annotation.get("type").and_then(Value::as_str) != Some("url_citation") {
            return;
        }
        let citation = annotation.get("url_citation").unwrap_or(annotation);
        let field = |key: &str| citation.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let Some(url) = field("url") else { return };
        if self.cited.iter().any(|seen| seen == url) {
            return;
        }
        self.cited.push(url.to_owned());
        out.push_back(ModelChunk::Source { url: url.to_owned(), title: field("title").map(str::to_owned) });
    }

    fn tool_call_delta(
        &mut self,
        position: usize,
        call: &Value,
        out: &mut VecDeque<ModelChunk>,
    ) -> Result<(), ModelError> {
        // Servers that send whole calls sometimes omit `index`; the position in the array stands in for it.
        let server_index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        let id = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|s| !s.is_empty());
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // Some servers send the arguments as a JSON object rather than JSON text.
            Some(other) => other.to_string(),
        };
        let existing = self.calls.iter().rposition(|slot| slot.server_index == server_index);
        let slot_index = match existing {
            // The same index with a different id and a name: a server that reuses indices. A new call.
            Some(i)
                if id.is_some()
                    && name.is_some()
                    && self.calls[i].id.is_some()
                    && self.calls[i].id.as_deref() != id =>
            {
                None
            }
            other => other,
        };
        let slot_index = slot_index.unwrap_or_else(|| {
            self.calls.push(ToolCallSlot {
                server_index,
                id: None,
                name: None,
                started: false,
                early_arguments: String::new(),
            });
            self.calls.len() - 1
        });
        let index = u32::try_from(slot_index).map_err(|_| self.invalid("too many tool calls".to_owned()))?;
        let response_id = self.response_id.clone();
        let slot = &mut self.calls[slot_index];
        if slot.id.is_none() {
            slot.id = id.map(str::to_owned);
        }
        if slot.name.is_none() {
            slot.name = name.map(str::to_owned);
        }
        if !slot.started {
            let Some(name) = slot.name.clone() else {
                slot.early_arguments.push_str(&arguments);
                return Ok(());
            };
            slot.started = true;
            // A call needs an id to be answered; servers that send none get one made up, unique in the response.
            let id = slot.id.get_or_insert_with(|| match &response_id {
                Some(response) => format!("call_{response}_{index}"),
                None => format!("call_{index}"),
            });
            out.push_back(ModelChunk::ToolCallStart { index, id: id.clone(), name });
            let early = std::mem::take(&mut slot.early_arguments);
            if !early.is_empty() {
                out.push_back(ModelChunk::ToolCallDelta { index, arguments: early });
            }
        }
        if !arguments.is_empty() {
            out.push_back(ModelChunk::ToolCallDelta { index, arguments });
        }
        Ok(())
    }

    fn stream_error(&self, value: &Value) -> ModelError {
        let error = value.get("error").unwrap_or(value);
        let message = json_error_message(value).unwrap_or_else(|| truncate(&value.to_string(), 500));
        let code = error.get("code").and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
        let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
        let retryable = matches!(code, Some(429 | 500..=599))
            || matches!(kind, "server_error" | "overloaded_error" | "rate_limit_error" | "internal_error");
        ModelError::StreamError { url: self.url.to_string(), message, retryable }
    }

    /// The response is complete: the `Finish` (and `Usage`) chunks.
    pub(super) fn end(&mut self, out: &mut VecDeque<ModelChunk>) -> Result<(), ModelError> {
        if let Some(slot) = self.calls.iter().find(|s| !s.started) {
            return Err(self.invalid(format!("tool call {} has arguments but no function name", slot.server_index)));
        }
        let (reason, raw) = match self.finish.take() {
            Some(raw) => (FinishReason::from_openai(&raw), raw),
            // `[DONE]` without a finish_reason: complete, but the server did not say why. Infer it.
            None if self.calls.is_empty() => (FinishReason::Stop, String::new()),
            None => (FinishReason::ToolCalls, String::new()),
        };
        out.push_back(ModelChunk::Finish { reason, raw });
        if let Some(usage) = self.usage.take() {
            out.push_back(ModelChunk::Usage { usage });
        }
        Ok(())
    }
}

/// `data:image/png;base64,iVBOR...` → (`image/png`, `iVBOR...`). Only base64 data URLs: their bytes are all there
/// is to a file. Parameters other than `base64` (`;charset=...`) are dropped from the media type.
fn base64_data_url(url: &str) -> Option<(String, String)> {
    let (meta, data) = url.trim().strip_prefix("data:")?.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?.split(';').next().unwrap_or_default().trim();
    // RFC 2397's default media type.
    let media_type = if media_type.is_empty() { "text/plain" } else { media_type };
    Some((media_type.to_owned(), data.trim().to_owned()))
}

fn parse_usage(usage: &Value) -> Usage {
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let input_tokens = count(usage.get("prompt_tokens"));
    let output_tokens = count(usage.get("completion_tokens"));
    let total_tokens = usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(input_tokens + output_tokens);
    Usage {
        input_tokens,
        output_tokens,
        total_tokens,
        reasoning_tokens: count(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        cached_input_tokens: count(usage.pointer("/prompt_tokens_details/cached_tokens")),
        cache_creation_input_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(events: &[&str]) -> Result<Vec<ModelChunk>, ModelError> {
        let mut parser = Parser::new("http://test/v1/chat/completions".into());
        let mut out = VecDeque::new();
        for data in events {
            parser.event(&SseEvent { event: None, data: (*data).to_owned() }, &mut out)?;
        }
        parser.end(&mut out)?;
        Ok(out.into())
    }

    #[test]
    fn usage_fields_map_to_the_engine_usage() {
        let usage = parse_usage(&json!({
            "prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50,
            "completion_tokens_details": { "reasoning_tokens": 12 },
            "prompt_tokens_details": { "cached_tokens": 8 },
        }));
        assert_eq!(
            usage,
            Usage {
                input_tokens: 20,
                output_tokens: 30,
                total_tokens: 50,
                reasoning_tokens: 12,
                cached_input_tokens: 8,
                cache_creation_input_tokens: 0
            }
        );
        let usage = parse_usage(&json!({ "prompt_tokens": 3, "completion_tokens": 4 }));
        assert_eq!(usage.total_tokens, 7);
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(FinishReason::from_openai("stop"), FinishReason::Stop);
        assert_eq!(FinishReason::from_openai("length"), FinishReason::Length);
        assert_eq!(FinishReason::from_openai("content_filter"), FinishReason::ContentFilter);
        assert_eq!(FinishReason::from_openai("tool_calls"), FinishReason::ToolCalls);
        assert_eq!(FinishReason::from_openai("function_call"), FinishReason::ToolCalls);
        assert_eq!(FinishReason::from_openai("abort"), FinishReason::Other);
    }

    #[test]
    fn whole_tool_calls_with_object_arguments_and_no_ids_or_indices() {
        // Ollama-style: complete calls in one chunk.
        let chunks =
            parse(&[r#"{"id":"r1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[
                {"function":{"name":"a","arguments":{"x":1}}},
                {"function":{"name":"b","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#])
            .unwrap();
        assert_eq!(
            chunks,
            [
                ModelChunk::ResponseMetadata { id: Some("r1".into()), model: Some("m".into()) },
                ModelChunk::ToolCallStart { index: 0, id: "call_r1_0".into(), name: "a".into() },
                ModelChunk::ToolCallDelta { index: 0, arguments: r#"{"x":1}"#.into() },
                ModelChunk::ToolCallStart { index: 1, id: "call_r1_1".into(), name: "b".into() },
                ModelChunk::ToolCallDelta { index: 1, arguments: "{}".into() },
                ModelChunk::Finish { reason: FinishReason::ToolCalls, raw: "tool_calls".into() },
            ]
        );
    }

    #[test]
    fn a_reused_index_with_a_new_id_is_a_new_call() {
        let chunks = parse(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"a","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c2","function":{"name":"b","arguments":"{}"}}]}}]}"#,
        ])
        .unwrap();
        assert!(chunks.contains(&ModelChunk::ToolCallStart { index: 1, id: "c2".into(), name: "b".into() }));
        // `[DONE]` without finish_reason after tool calls: inferred.
        assert_eq!(chunks.last(), Some(&ModelChunk::Finish { reason: FinishReason::ToolCalls, raw: String::new() }));
    }

    #[test]
    fn reasoning_is_read_from_either_field_but_not_twice() {
        let chunks = parse(&[
            r#"{"choices":[{"delta":{"reasoning_content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"b"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"c","reasoning":"c"}}]}"#,
        ])
        .unwrap();
        let reasoning: Vec<_> = chunks
            .iter()
            .filter_map(|c| match c {
                ModelChunk::ReasoningDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasoning, ["a", "b", "c"]);
    }

    #[test]
    fn only_base64_data_urls_are_files() {
        let file = |url: &str| base64_data_url(url);
        assert_eq!(file("data:image/png;base64,iVBO"), Some(("image/png".into(), "iVBO".into())));
        assert_eq!(file(" data:text/csv;charset=utf-8;base64,YQ== "), Some(("text/csv".into(), "YQ==".into())));
        assert_eq!(file("data:;base64,YQ=="), Some(("text/plain".into(), "YQ==".into())));
        assert_eq!(file("data:text/plain,hello"), None, "not base64");
        assert_eq!(file("https://cdn.example/a.png"), None);
    }

    #[test]
    fn errors_in_the_stream_and_malformed_events() {
        let err = parse(&[r#"{"error":{"message":"overloaded","type":"server_error"}}"#]).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("overloaded"));
        let err = parse(&[r#"{"error":{"message":"bad schema","code":400}}"#]).unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        let err = parse(&["{not json"]).unwrap_err();
        assert!(matches!(err, ModelError::InvalidResponse { .. }), "{err}");
        assert!(!err.is_retryable());
    }
}

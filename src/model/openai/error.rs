//! Failed calls as `ModelError`s: an HTTP status mapped to an error (with a hint at the setting to check), the
//! message read from an error body, a 429's requested wait, and a reqwest error with its causes.

use std::{error::Error as _, time::Duration};

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::Value;

use crate::model::ModelError;

// The settings of `runstream serve` that choose the model, named in the hints of errors that a setting may cause.
// The library reads none of them: the binary builds the model and hands it in.
const BASE_URL_SETTING: &str = "RUNSTREAM_MODEL_BASE_URL / --model-base-url";
const API_KEY_SETTING: &str = "RUNSTREAM_MODEL_API_KEY / --model-api-key, or OPENAI_API_KEY";
const MODEL_SETTING: &str = "RUNSTREAM_MODEL / --model";

/// How much of an error response body is read, so a misbehaving server cannot make us buffer without bound.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Maps an unsuccessful HTTP status to an error, with a hint at what to check for the permanent ones.
pub(super) fn status_error(
    url: &str,
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
) -> ModelError {
    let url = url.to_owned();
    let code = status.as_u16();
    match code {
        429 => ModelError::RateLimited { url, message, retry_after },
        // 408 is the server timing out on us, as transient as a 5xx (OpenAI's own SDKs retry it).
        408 | 500..=599 => ModelError::Server { url, status: code, message },
        _ => {
            let hint = match code {
                401 | 403 => format!("; check the API key ({API_KEY_SETTING})"),
                404 => format!(
                    "; check {BASE_URL_SETTING} (it usually ends in /v1) and that {MODEL_SETTING} names a model this \
                     server serves"
                ),
                413 => "; the conversation is too long for the server".to_owned(),
                400 | 422 => "; the server does not accept something in the request (a parameter, a tool or \
                              response schema, or the conversation's length)"
                    .to_owned(),
                _ => String::new(),
            };
            ModelError::Rejected { url, status: code, message, hint }
        }
    }
}

pub(super) async fn read_error_body(mut response: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(bytes)) = response.chunk().await {
            body.extend_from_slice(&bytes);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    // An error body that never arrives must not hide the status we already have.
    let _ = tokio::time::timeout(timeout.min(Duration::from_secs(10)), read).await;
    body.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, vLLM's `{"message"}`, or the text itself.
pub(super) fn error_message(body: String) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(&body)
        && let Some(message) = json_error_message(&value)
    {
        return message;
    }
    let body = body.trim();
    if body.is_empty() { "(empty response body)".to_owned() } else { truncate(body, 500) }
}

pub(super) fn json_error_message(value: &Value) -> Option<String> {
    let error = value.get("error").unwrap_or(value);
    match error {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The wait a 429 asks for: `retry-after-ms` (OpenAI's, milliseconds) or `retry-after` in seconds. The HTTP-date
/// form of `retry-after` is not read; the retry policy's backoff applies then.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let parse = |name: &str, scale: f64| {
        header_str(headers, name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .and_then(|v| Duration::try_from_secs_f64(v * scale).ok())
    };
    parse("retry-after-ms", 0.001).or_else(|| parse("retry-after", 1.0))
}

/// A reqwest error with its causes ("error sending request: connection refused"), because its top-level message
/// alone rarely says what went wrong.
pub(super) fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(error_message(r#"{"error":{"message":"Invalid API key","type":"x"}}"#.into()), "Invalid API key");
        assert_eq!(error_message(r#"{"object":"error","message":"model not found"}"#.into()), "model not found");
        assert_eq!(error_message("  upstream down \n".into()), "upstream down");
        assert_eq!(error_message(String::new()), "(empty response body)");
    }

    #[test]
    fn retry_after_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}

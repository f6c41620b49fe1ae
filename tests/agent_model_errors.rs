//! A real model server that keeps failing: the built-in assistant, configured through the environment to use it,
//! retries per policy, then emits `agent_error`; the step fails and the run's result says why. One test per binary,
//! because the model configuration is read from the process environment when the server starts.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use common::*;
use runstream::pb::{self, run_event::Event};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// An OpenAI-compatible endpoint that answers every request with HTTP 429 and `Retry-After: 0` (so the retries
/// come at once), counting the requests.
async fn rate_limited_model_server() -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // Read the whole request (headers, then Content-Length bytes of body) before answering.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
                let response = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 0\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/v1"), requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_retries_end_the_agent_with_an_error_and_fail_the_run_saying_why() {
    let (base_url, requests) = rate_limited_model_server().await;
    // SAFETY: this binary's only test sets these before anything reads the environment.
    unsafe {
        std::env::set_var("RUNSTREAM_MODEL", "test-model");
        std::env::set_var("RUNSTREAM_MODEL_BASE_URL", &base_url);
        std::env::set_var("RUNSTREAM_MODEL_API_KEY", "test-key");
    }
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = pb::StreamRunRequest {
        agent_id: "assistant".into(),
        input: Some(pb_value(json!({"prompt": "hello"}))),
        ..Default::default()
    };
    let events = stream_run(&mut client, request).await;
    assert_eq!(requests.load(Ordering::SeqCst), 3, "the default policy makes three attempts");
    let error = events.iter().find_map(|e| match &e.event {
        Some(Event::AgentError(a)) => a.error.clone(),
        _ => None,
    });
    let error = error.expect("agent_error");
    assert_eq!(error.name, "ModelError");
    assert!(error.message.contains("failed 3 times") && error.message.contains("HTTP 429"), "{}", error.message);
    let last = events.last().expect("finish");
    assert_eq!(finish_status(last), Some(pb::RunStatus::Failed));
    let result = get_result(&mut client, &last.run_id, false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Failed);
    let run_error = result.error.expect("run error");
    assert!(run_error.message.contains("HTTP 429"), "{}", run_error.message);
    assert_eq!(result.steps["assistant"].status, pb::StepStatus::Failed as i32);
    server.stop().await;
}

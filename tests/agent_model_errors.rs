//! The model settings of `runstream serve`, on the real binary:
//!
//! - a real model server that keeps failing: the built-in assistant, configured through the environment to use
//!   it, retries per policy, then emits `agent_error`; the step fails and the run's result says why;
//! - a setting that cannot be used stops the server at start with a message naming the setting and what to write;
//! - `runstream serve --help` lists the settings and their variables, and never prints a key.

mod common;

use std::{
    ffi::OsStr,
    path::Path,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{
    process::{ServerProcess, run_with_timeout, runstream_command},
    *,
};
use runstream::pb::{self, run_event::Event, run_service_client::RunServiceClient};
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

/// How long a server may take to start, or to refuse to.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn log_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("agent-model-errors-{name}.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_retries_end_the_agent_with_an_error_and_fail_the_run_saying_why() {
    let (base_url, requests) = rate_limited_model_server().await;
    // The settings as a user exports them: clap reads the variables.
    let env = [
        ("RUNSTREAM_MODEL", "test-model"),
        ("RUNSTREAM_MODEL_BASE_URL", base_url.as_str()),
        ("RUNSTREAM_MODEL_API_KEY", "test-key"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let server = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServerProcess::start_with_env(
            &[OsStr::new("--store"), OsStr::new("memory")],
            &env,
            None,
            log_path("rate-limited"),
            START_TIMEOUT,
        )
    })
    .await
    .expect("start the server");
    let mut client = RunServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    let all = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let assistant = all.iter().find(|w| w.id == "assistant").expect("assistant");
    assert_eq!(assistant.model, "test-model", "ListWorkflows names the model the settings chose");

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
}

/// Runs `runstream serve` on a free port and an in-memory store with `args` and `env`, expecting it to refuse to
/// start: returns its stderr after checking that it exited non-zero, promptly, without listening.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = runstream_command(["serve", "--listen", "127.0.0.1:0", "--store", "memory"]);
    command.args(args).envs(env.iter().copied());
    let Output { status, stdout, stderr } = run_with_timeout(command, START_TIMEOUT, "runstream serve");
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr).into_owned());
    assert!(!status.success(), "the server started with {args:?} {env:?}:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("listening"), "it listened before refusing: {stdout}");
    stderr
}

#[test]
fn a_base_url_without_a_scheme_stops_the_server_saying_what_to_write() {
    let env = [("RUNSTREAM_MODEL", "x"), ("RUNSTREAM_MODEL_BASE_URL", "127.0.0.1:9")];
    let stderr = refused_start(&[], &env);
    for part in
        ["RUNSTREAM_MODEL_BASE_URL", "--model-base-url", "'127.0.0.1:9' has no scheme", "write http://127.0.0.1:9/v1"]
    {
        assert!(stderr.contains(part), "stderr lacks {part:?}:\n{stderr}");
    }
    // The same through the flags.
    let stderr = refused_start(&["--model", "x", "--model-base-url", "127.0.0.1:9"], &[]);
    assert!(stderr.contains("write http://127.0.0.1:9/v1"), "{stderr}");
}

#[test]
fn other_settings_that_cannot_be_used_stop_the_server() {
    // A base URL but no model: the offline model would ignore the server.
    let stderr = refused_start(&[], &[("RUNSTREAM_MODEL_BASE_URL", "http://127.0.0.1:9/v1")]);
    assert!(stderr.contains("RUNSTREAM_MODEL / --model is offline; set RUNSTREAM_MODEL / --model to"), "{stderr}");
    // Not an http(s) URL.
    let stderr = refused_start(&["--model", "x", "--model-base-url", "ftp://127.0.0.1:9/v1"], &[]);
    assert!(stderr.contains("write http://127.0.0.1:9/v1"), "{stderr}");
    // OpenAI (the default server) without a key: every call would be refused.
    let stderr = refused_start(&["--model", "llama3.2"], &[("OPENAI_API_KEY", "")]);
    assert!(stderr.contains("which needs an API key; set RUNSTREAM_MODEL_API_KEY"), "{stderr}");
}

#[test]
fn serve_help_lists_the_model_settings_and_hides_the_key() {
    let mut command = runstream_command(["serve", "--help"]);
    command.env("RUNSTREAM_MODEL_API_KEY", "sk-do-not-print").env("OPENAI_API_KEY", "sk-nor-this");
    let out = run_with_timeout(command, START_TIMEOUT, "runstream serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for part in [
        "--model <NAME>",
        "env: RUNSTREAM_MODEL=",
        "--model-base-url <URL>",
        "env: RUNSTREAM_MODEL_BASE_URL",
        "--model-api-key <KEY>",
        "env: RUNSTREAM_MODEL_API_KEY]",
        "OPENAI_API_KEY",
        "http://127.0.0.1:11434/v1 (Ollama)",
        "http://127.0.0.1:8000/v1 (vLLM)",
    ] {
        assert!(help.contains(part), "`runstream serve --help` lacks {part:?}:\n{help}");
    }
    assert!(!help.contains("sk-do-not-print") && !help.contains("sk-nor-this"), "the help prints a key:\n{help}");
}

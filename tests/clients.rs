//! Cross-language client tests: real clients against the real `runstream` binary.
//!
//! - `python_client_reconnects_without_loss` runs `tests/python/test_reconnect.py` (grpcio) against a server.
//! - `grpcurl_readme_walkthrough` runs the grpcurl walkthrough of README.md, command by command, and checks what
//!   each prints.
//!
//! The tools (a venv with grpcio, grpcio-tools and grpcurl 1.8.6) come from `scripts/test-deps.sh`, run once per
//! test process, so a plain `cargo test` works on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::process::{ServerProcess, run_with_timeout};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PYTHON_TIMEOUT: Duration = Duration::from_secs(600);
const GRPCURL_TIMEOUT: Duration = Duration::from_secs(120);
const WALKTHROUGH_START: &str = "<!-- walkthrough:start -->";
const WALKTHROUGH_END: &str = "<!-- walkthrough:end -->";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/test-deps.sh` put the tools.
struct Tools {
    python: PathBuf,
    grpcurl: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = repo().join("scripts/test-deps.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            script.display(),
            out.status
        );
        let field = |name: &str| -> PathBuf {
            let path = stdout
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
                .unwrap_or_else(|| panic!("{} printed no `{name}` line:\n{stdout}", script.display()));
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{} does not exist", path.display());
            path
        };
        Tools { python: field("python:"), grpcurl: field("grpcurl:") }
    })
}

/// A `runstream serve` child process for client `name`, with its own fresh store (the default, SQLite): these
/// clients run against the durable mode.
fn start_server(name: &str) -> ServerProcess {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let data_dir = tmp.join(format!("clients-{name}-data"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let log = tmp.join(format!("clients-{name}-server.log"));
    let server =
        ServerProcess::start(&["--data-dir".as_ref(), data_dir.as_os_str()], Some(repo()), log, STARTUP_TIMEOUT);
    eprintln!("runstream server at {} (log: {})", server.addr, server.log.display());
    server
}

#[test]
fn python_client_reconnects_without_loss() {
    let tools = tools();
    let server = start_server("python");
    let script = repo().join("tests/python/test_reconnect.py");
    let mut cmd = Command::new(&tools.python);
    cmd.arg(&script)
        .arg(&server.addr)
        .current_dir(repo())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(cmd, PYTHON_TIMEOUT, "tests/python/test_reconnect.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !stderr.is_empty() {
        println!("--- stderr\n{stderr}");
    }
    assert!(out.status.success(), "test_reconnect.py failed ({})\n{}", out.status, server.log_tail());
}

/// The grpcurl commands of README.md's walkthrough: the ```sh blocks between the walkthrough markers; a line
/// starting with `grpcurl` begins a command, and a line ending in `\` continues it.
fn walkthrough_commands(readme: &str) -> Vec<String> {
    let start = readme.find(WALKTHROUGH_START).unwrap_or_else(|| panic!("README.md has no {WALKTHROUGH_START}"));
    let len = readme[start..].find(WALKTHROUGH_END).unwrap_or_else(|| panic!("README.md has no {WALKTHROUGH_END}"));
    let section = &readme[start + WALKTHROUGH_START.len()..start + len];

    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current: Option<String> = None;
    for line in section.lines() {
        let trimmed = line.trim();
        if !in_block {
            if trimmed.strip_prefix("```").is_some_and(|lang| lang.trim() == "sh") {
                in_block = true;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            assert!(current.is_none(), "unterminated continuation at the end of a ```sh block");
            in_block = false;
            continue;
        }
        let (part, continues) = match trimmed.strip_suffix('\\') {
            Some(part) => (part.trim_end(), true),
            None => (trimmed, false),
        };
        match current.as_mut() {
            Some(cmd) => {
                cmd.push(' ');
                cmd.push_str(part);
            }
            None if trimmed.starts_with("grpcurl") => current = Some(part.to_owned()),
            None => continue,
        }
        if !continues {
            commands.extend(current.take());
        }
    }
    assert!(!in_block, "a ```sh block of the walkthrough is not closed");
    assert!(current.is_none(), "the last walkthrough command ends with a continuation");
    assert!(!commands.is_empty(), "the README walkthrough has no grpcurl commands");
    commands
}

/// The JSON request of a command (`-d '...'`), or `{}`.
fn request_of(command: &str) -> Value {
    let Some(i) = command.find("-d '") else { return Value::Object(Default::default()) };
    let rest = &command[i + 4..];
    let end = rest.find('\'').unwrap_or_else(|| panic!("unterminated -d '...' in {command}"));
    serde_json::from_str(&rest[..end]).unwrap_or_else(|e| panic!("-d payload of {command} is not JSON: {e}"))
}

/// grpcurl's output: a sequence of pretty-printed JSON objects.
fn json_messages(output: &str, command: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(output)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("output of {command} is not a sequence of JSON objects ({e}):\n{output}"))
}

fn seq(event: &Value) -> u64 {
    match &event["seq"] {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("bad seq in {event}")),
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("bad seq in {event}")),
        _ => panic!("event without seq: {event}"),
    }
}

/// The event's type: its key that is not a RunEvent envelope field (grpcurl names a oneof variant by its own key).
fn kind(event: &Value) -> &str {
    const ENVELOPE: [&str; 5] = ["runId", "seq", "time", "source", "stepId"];
    event
        .as_object()
        .and_then(|o| o.keys().find(|k| !ENVELOPE.contains(&k.as_str())))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("event without a type: {event}"))
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(kind).collect()
}

fn finish_status(event: &Value) -> &str {
    event["workflowFinish"]["status"].as_str().unwrap_or("RUN_STATUS_UNSPECIFIED")
}

fn assert_gapless(events: &[Value], first: u64, command: &str) {
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs of {command} are not gapless from {first}");
}

/// True if `value` holds, at any depth, the key `key` with the number `n`.
fn has_number(value: &Value, key: &str, n: f64) -> bool {
    match value {
        Value::Object(map) => {
            map.get(key).and_then(Value::as_f64) == Some(n) || map.values().any(|v| has_number(v, key, n))
        }
        Value::Array(items) => items.iter().any(|v| has_number(v, key, n)),
        _ => false,
    }
}

#[test]
fn grpcurl_readme_walkthrough() {
    let tools = tools();
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let commands = walkthrough_commands(&readme);
    let server = start_server("grpcurl");
    let grpcurl = format!("'{}'", tools.grpcurl.display());

    let mut checked = Vec::new();
    // Last seq of the most recent stream that ended with a suspension.
    let mut suspended_at: Option<u64> = None;
    for (n, original) in commands.iter().enumerate() {
        let command = format!("{grpcurl}{}", &original["grpcurl".len()..]).replace("localhost:50051", &server.addr);
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&command).current_dir(repo());
        let out = run_with_timeout(cmd, GRPCURL_TIMEOUT, original);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("$ {original}\n{stdout}");
        assert!(
            out.status.success(),
            "walkthrough command {} failed ({}): {original}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{}",
            n + 1,
            out.status,
            server.log_tail()
        );

        let words: Vec<&str> = original.split_whitespace().collect();
        let method = words.iter().find_map(|w| w.split_once("runstream.v1.RunService/").map(|(_, m)| m));
        let request = request_of(original);
        match method {
            None if words.contains(&"list") => {
                for service in ["runstream.v1.RunService", "grpc.health.v1.Health", "grpc.reflection."] {
                    assert!(stdout.contains(service), "`list` output lacks {service}:\n{stdout}");
                }
                checked.push("list");
            }
            None if words.contains(&"describe") && words.contains(&"runstream.v1.RunService") => {
                assert!(stdout.contains("rpc StreamRun"), "`describe` output lacks `rpc StreamRun`:\n{stdout}");
                checked.push("describe");
            }
            None => {}
            Some(method) => {
                let events = json_messages(&stdout, original);
                assert!(!events.is_empty(), "{original} printed nothing");
                match method {
                    "StreamRun" | "ResumeStream" | "ObserveStream" => {
                        let first = seq(&events[0]);
                        assert_gapless(&events, first, original);
                        let last = events.last().unwrap();
                        assert_eq!(kind(last), "workflowFinish", "{original} does not end with workflowFinish");
                        let workflow = request["workflowId"]
                            .as_str()
                            .or(request["agentId"].as_str())
                            .or(request["networkId"].as_str());
                        let workflow = workflow.unwrap_or_default();
                        match (method, workflow) {
                            ("StreamRun", "chain") => {
                                assert_eq!(first, 1, "a new run's first seq");
                                assert_eq!(events.len(), 8, "chain events: {:?}", kinds(&events));
                                assert_eq!(finish_status(last), "RUN_STATUS_SUCCESS", "chain finish: {last}");
                                if request["input"]["value"].as_f64() == Some(1.0) {
                                    assert!(
                                        has_number(&last["workflowFinish"], "value", 4.0),
                                        "chain with value 1 should finish with \"value\": 4: {last}"
                                    );
                                }
                                checked.push("StreamRun chain");
                            }
                            ("StreamRun", "order-approval") => {
                                assert_eq!(first, 1, "a new run's first seq");
                                let tail = &kinds(&events)[events.len().saturating_sub(2)..];
                                assert_eq!(tail, ["stepSuspended", "workflowFinish"], "end of {original}");
                                assert_eq!(finish_status(last), "RUN_STATUS_SUSPENDED", "suspension: {last}");
                                suspended_at = Some(seq(last));
                                checked.push("StreamRun order-approval");
                            }
                            ("StreamRun", "assistant") => {
                                let kinds = kinds(&events);
                                for k in ["agentStart", "toolCallDelta", "toolCall", "toolResult", "textDelta"] {
                                    assert!(kinds.contains(&k), "the assistant's stream lacks {k}: {kinds:?}");
                                }
                                assert_eq!(finish_status(last), "RUN_STATUS_SUCCESS", "assistant finish: {last}");
                                checked.push("StreamRun assistant");
                            }
                            ("StreamRun", "concierge") => {
                                let tail = &kinds(&events)[events.len().saturating_sub(3)..];
                                assert_eq!(tail, ["toolCallApproval", "stepSuspended", "workflowFinish"], "{original}");
                                suspended_at = Some(seq(last));
                                checked.push("StreamRun concierge");
                            }
                            ("StreamRun", "content-pipeline") => {
                                let kinds = kinds(&events);
                                for k in ["agentStart", "textDelta", "stepOutput", "custom", "stepResult"] {
                                    assert!(kinds.contains(&k), "content-pipeline's stream lacks {k}: {kinds:?}");
                                }
                                assert_eq!(finish_status(last), "RUN_STATUS_SUCCESS", "content-pipeline: {last}");
                                assert!(stdout.contains("\"ready\""), "content-pipeline's result is not ready");
                                checked.push("StreamRun content-pipeline");
                            }
                            ("StreamRun", "research-network") => {
                                let kinds = kinds(&events);
                                for k in [
                                    "routingAgentStart",
                                    "routingAgentEnd",
                                    "agentExecutionStart",
                                    "agentExecutionEvent",
                                    "agentExecutionEnd",
                                    "toolExecutionStart",
                                    "toolExecutionEnd",
                                    "workflowExecutionStart",
                                    "workflowExecutionEvent",
                                    "workflowExecutionEnd",
                                    "networkStepFinish",
                                    "networkFinish",
                                ] {
                                    assert!(kinds.contains(&k), "research-network's stream lacks {k}: {kinds:?}");
                                }
                                assert_eq!(finish_status(last), "RUN_STATUS_SUCCESS", "research-network: {last}");
                                checked.push("StreamRun research-network");
                            }
                            ("ResumeStream", _) => {
                                let suspended = suspended_at.take().expect("ResumeStream before any suspension");
                                assert_eq!(first, suspended + 1, "ResumeStream must continue after seq {suspended}");
                                assert_eq!(kind(&events[0]), "workflowStart", "a resumed phase starts: {}", events[0]);
                                let (proof, step) = match request["runId"].as_str() {
                                    Some("trip-1") => ("\"toolResult\"", "ResumeStream concierge"),
                                    _ => ("\"approved by", "ResumeStream"),
                                };
                                assert!(stdout.contains(proof), "ResumeStream output lacks {proof}");
                                assert_eq!(finish_status(last), "RUN_STATUS_SUCCESS", "resumed finish: {last}");
                                checked.push(step);
                            }
                            ("ObserveStream", _) => {
                                let after = match &request["afterSeq"] {
                                    Value::String(s) => s.parse::<u64>().expect("afterSeq"),
                                    v => v.as_u64().unwrap_or(0),
                                };
                                assert_eq!(first, after + 1, "ObserveStream must start at afterSeq + 1");
                                checked.push("ObserveStream");
                            }
                            _ => {}
                        }
                    }
                    "GetResult" => {
                        assert!(stdout.contains("RUN_STATUS_SUCCESS"), "GetResult: {stdout}");
                        checked.push("GetResult");
                    }
                    _ => {}
                }
            }
        }
    }

    for step in [
        "list",
        "describe",
        "StreamRun chain",
        "StreamRun order-approval",
        "ResumeStream",
        "ObserveStream",
        "GetResult",
        "StreamRun assistant",
        "StreamRun concierge",
        "ResumeStream concierge",
        "StreamRun content-pipeline",
        "StreamRun research-network",
    ] {
        assert!(checked.contains(&step), "the README walkthrough has no `{step}` command (checked: {checked:?})");
    }
}

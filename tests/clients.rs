//! Cross-language client tests: real clients against the real `runstream` binary.
//!
//! - `python_client_reconnects_without_loss` runs `tests/python/test_reconnect.py` (grpcio) against a server.
//! - `grpcurl_readme_walkthrough` runs the grpcurl walkthrough of README.md as a user pastes it: its setup lines,
//!   then the walkthrough twice, in one shell that has run nothing else, and checks what each command prints.
//!
//! The tools (a venv with grpcio, grpcio-tools and grpcurl 1.8.6) come from `scripts/test-deps.sh`, run once per
//! test process, so a plain `cargo test` works on a fresh machine.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::process::{ServerProcess, run_with_timeout};
use common::tools::tools;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PYTHON_TIMEOUT: Duration = Duration::from_secs(600);
const WALKTHROUGH_TIMEOUT: Duration = Duration::from_secs(600);
const SETUP_START: &str = "<!-- walkthrough-setup:start -->";
const SETUP_END: &str = "<!-- walkthrough-setup:end -->";
const WALKTHROUGH_START: &str = "<!-- walkthrough:start -->";
const WALKTHROUGH_END: &str = "<!-- walkthrough:end -->";
/// The PATH of the shell the walkthrough runs in: a fresh login's, without the venv.
const CLEAN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// The lines of the ```sh block between the markers `start` and `end` of README.md.
fn sh_block(readme: &str, start: &str, end: &str) -> Vec<String> {
    let from = readme.find(start).unwrap_or_else(|| panic!("README.md has no {start}"));
    let len = readme[from..].find(end).unwrap_or_else(|| panic!("README.md has no {end} after {start}"));
    let section = &readme[from + start.len()..from + len];
    let mut lines = section.lines().skip_while(|l| l.trim() != "```sh");
    assert!(lines.next().is_some(), "no ```sh block between {start} and {end}");
    let block: Vec<String> = lines.by_ref().take_while(|l| l.trim() != "```").map(str::to_owned).collect();
    assert!(!block.is_empty(), "the ```sh block between {start} and {end} is empty or not closed");
    block
}

/// A piece of the walkthrough: a grpcurl command, or any other line, passed to the shell as it is.
enum Piece {
    /// A line that begins a grpcurl call, with its continuation lines (`\`) and, if it reads a here-document, the
    /// document's lines and terminator: `lines` as written; `text` its first line and continuations joined.
    Grpcurl {
        lines: Vec<String>,
        text: String,
    },
    Other(String),
}

/// The here-document a command line opens (`<<EOF`, `<<-'EOF'`, ...): its terminator, and whether leading tabs
/// are stripped. `<<<` (a here-string) opens none.
fn heredoc(text: &str) -> Option<(String, bool)> {
    let at = text.match_indices("<<").map(|(i, _)| i).find(|&i| !text[i + 2..].starts_with('<'))?;
    let rest = &text[at + 2..];
    let (rest, strip_tabs) = match rest.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let word: String = rest.trim_start().chars().take_while(|c| !c.is_whitespace() && !";|&)".contains(*c)).collect();
    let word = word.replace(['\'', '"', '\\'], "");
    assert!(!word.is_empty(), "a here-document without a terminator word in {text}");
    Some((word, strip_tabs))
}

/// Splits the walkthrough block into its grpcurl commands and the other lines.
fn walkthrough_pieces(block: &[String]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lines = block.iter();
    while let Some(line) = lines.next() {
        if !(line.trim_start() == "grpcurl" || line.trim_start().starts_with("grpcurl ")) {
            pieces.push(Piece::Other(line.clone()));
            continue;
        }
        let mut command = vec![line.clone()];
        let mut text = line.trim().to_owned();
        while let Some(head) = text.strip_suffix('\\') {
            let next = lines.next().unwrap_or_else(|| panic!("the walkthrough ends inside the continuation of {text}"));
            command.push(next.clone());
            text = format!("{} {}", head.trim_end(), next.trim());
        }
        if let Some((terminator, strip_tabs)) = heredoc(&text) {
            loop {
                let next =
                    lines.next().unwrap_or_else(|| panic!("the here-document of {text} has no {terminator} line"));
                command.push(next.clone());
                let ends = if strip_tabs { next.trim_start_matches('\t') } else { next.as_str() };
                if ends == terminator {
                    break;
                }
            }
        }
        pieces.push(Piece::Grpcurl { lines: command, text });
    }
    assert!(
        pieces.iter().any(|p| matches!(p, Piece::Grpcurl { .. })),
        "the README walkthrough has no grpcurl commands"
    );
    pieces
}

/// Starts the marker lines the walkthrough script prints around each command (and nothing else prints).
const MARK: &str = "@@@walkthrough";

/// A shell function the script defines after the README's setup lines: it prints what a grpcurl command sends
/// (its `-d` argument, or its standard input for `-d @`) on a marker line, then runs grpcurl with it.
const GRPCURL_SPY: &str = r#"grpcurl() {
    local previous= request=
    for arg in "$@"; do
        case "$previous:$arg" in
            -d:*) request=$arg ;;
            *:-d=*) request=${arg#-d=} ;;
        esac
        previous=$arg
    done
    if [ "$request" = @ ]; then
        request=$(cat)
        printf '%s request %s\n' "@@MARK@@" "$(printf '%s' "$request" | tr '\n' ' ')"
        printf '%s\n' "$request" | command grpcurl "$@"
    else
        printf '%s request %s\n' "@@MARK@@" "$request"
        command grpcurl "$@"
    fi
}"#;

/// The script the walkthrough test runs in one shell: the setup lines, a marker line naming the grpcurl they put
/// on PATH, the grpcurl spy, then the walkthrough `pastes` times as written, with `localhost:50051` replaced by
/// `addr` and each grpcurl command between a `cmd N` marker (on stdout and stderr) and a `status N $?` marker.
/// Returns the script and each command's text, by N - 1.
fn walkthrough_script(setup: &[String], pieces: &[Piece], pastes: usize, addr: &str) -> (String, Vec<String>) {
    let mut script = String::new();
    let mut commands = Vec::new();
    let mut push = |line: &str| {
        script.push_str(&line.replace("localhost:50051", addr));
        script.push('\n');
    };
    for line in setup {
        push(line);
    }
    push(&format!("printf '%s grpcurl-is %s\\n' '{MARK}' \"$(command -v grpcurl)\""));
    push(&GRPCURL_SPY.replace("@@MARK@@", MARK));
    for _ in 0..pastes {
        for piece in pieces {
            match piece {
                Piece::Other(line) => push(line),
                Piece::Grpcurl { lines, text } => {
                    commands.push(text.clone());
                    let n = commands.len();
                    push(&format!("echo '{MARK} cmd {n}'; echo '{MARK} cmd {n}' >&2"));
                    for line in lines {
                        push(line);
                    }
                    push(&format!("echo \"{MARK} status {n} $?\""));
                }
            }
        }
    }
    (script, commands)
}

/// What one command of the script printed and sent.
#[derive(Default)]
struct Ran {
    /// Its request as sent (`{}` without `-d`).
    request: Value,
    stdout: String,
    stderr: String,
    status: Option<i32>,
}

/// Splits the script's output at its markers: the grpcurl the setup put on PATH, and what each command did.
fn split_runs(stdout: &str, stderr: &str, commands: usize) -> (String, Vec<Ran>) {
    let mut runs: Vec<Ran> = (0..commands).map(|_| Ran::default()).collect();
    let mut grpcurl_is = String::new();
    let mut current: Option<usize> = None;
    for line in stdout.lines() {
        let Some(marker) = line.strip_prefix(MARK).map(str::trim_start) else {
            if let Some(n) = current {
                runs[n].stdout.push_str(line);
                runs[n].stdout.push('\n');
            }
            continue;
        };
        let (name, rest) = marker.split_once(' ').unwrap_or((marker, ""));
        match name {
            "grpcurl-is" => grpcurl_is = rest.trim().to_owned(),
            "cmd" => current = Some(rest.trim().parse::<usize>().expect("command number") - 1),
            "request" => {
                let n = current.expect("a request marker outside a command");
                let sent = rest.trim();
                runs[n].request = if sent.is_empty() {
                    Value::Object(Default::default())
                } else {
                    serde_json::from_str(sent)
                        .unwrap_or_else(|e| panic!("command {} sent no JSON ({e}): {sent}", n + 1))
                };
            }
            "status" => {
                let (n, code) = rest.trim().split_once(' ').expect("status marker: N CODE");
                let n = n.parse::<usize>().expect("command number") - 1;
                runs[n].status = Some(code.parse().expect("exit status"));
                current = None;
            }
            _ => panic!("unknown marker line {line}"),
        }
    }
    let mut current: Option<usize> = None;
    for line in stderr.lines() {
        match line.strip_prefix(MARK).and_then(|m| m.trim().strip_prefix("cmd ")) {
            Some(n) => current = Some(n.trim().parse::<usize>().expect("command number") - 1),
            None => {
                if let Some(n) = current {
                    runs[n].stderr.push_str(line);
                    runs[n].stderr.push('\n');
                }
            }
        }
    }
    (grpcurl_is, runs)
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

/// How many times the test pastes the walkthrough into the same shell, against the same server.
const PASTES: usize = 2;

#[test]
fn grpcurl_readme_walkthrough() {
    let tools = tools();
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let setup = sh_block(&readme, SETUP_START, SETUP_END);
    let pieces = walkthrough_pieces(&sh_block(&readme, WALKTHROUGH_START, WALKTHROUGH_END));
    let venv_grpcurl = repo().join(".venv/bin/grpcurl");
    let same_file = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    assert!(
        tools.grpcurl.ends_with(".venv/bin/grpcurl") && same_file(&tools.grpcurl, &venv_grpcurl),
        "scripts/test-deps.sh put grpcurl at {}, not {}",
        tools.grpcurl.display(),
        venv_grpcurl.display()
    );

    // A shell that has run nothing else: no grpcurl on its PATH until the README's setup lines put it there.
    let home = std::env::var_os("HOME").unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    let clean_shell = |script: &str, cwd: &Path| {
        let mut bash = Command::new("bash");
        bash.env_clear()
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            .env("PATH", CLEAN_PATH)
            .arg("-c")
            .arg(script)
            .current_dir(cwd);
        bash
    };
    let out = run_with_timeout(clean_shell("command -v grpcurl", repo()), STARTUP_TIMEOUT, "command -v grpcurl");
    if out.status.success() {
        eprintln!(
            "note: a grpcurl is on {CLEAN_PATH} ({}); the walkthrough must still run the one the setup installs",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }

    // The line test-deps.sh prints to paste works from any directory.
    let bin = tools.grpcurl.parent().expect("grpcurl's directory");
    let line = format!("export PATH=\"{}:$PATH\"", bin.display());
    assert_eq!(tools.export_line, line, "the last line of scripts/test-deps.sh");
    let script = format!("{line}\ncommand -v grpcurl");
    let out = run_with_timeout(clean_shell(&script, Path::new("/")), STARTUP_TIMEOUT, "the printed export line");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tools.grpcurl.display().to_string(), "after {line}");

    let server = start_server("grpcurl");
    let (script, commands) = walkthrough_script(&setup, &pieces, PASTES, &server.addr);
    let out = run_with_timeout(clean_shell(&script, repo()), WALKTHROUGH_TIMEOUT, "the README walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (grpcurl_is, runs) = split_runs(&stdout, &stderr, commands.len());
    assert_eq!(
        grpcurl_is,
        venv_grpcurl.display().to_string(),
        "after the README's setup lines, `grpcurl` is not .venv/bin/grpcurl\n--- script\n{script}\n--- stdout\n\
         {stdout}\n--- stderr\n{stderr}"
    );

    let mut checked = Vec::new();
    // The runs whose last stream ended with a suspension: run id -> (last seq, workflow, agent or network id).
    let mut suspended: HashMap<String, (u64, String)> = HashMap::new();
    for (n, (original, ran)) in commands.iter().zip(&runs).enumerate() {
        let Ran { request, stdout, stderr, status } = ran;
        println!("$ {original}\n# sent: {request}\n{stdout}");
        assert_eq!(
            *status,
            Some(0),
            "walkthrough command {} failed (exit status {status:?}; None: it did not run): {original}\n--- stdout\n\
             {stdout}\n--- stderr\n{stderr}\n{}",
            n + 1,
            server.log_tail()
        );

        let words: Vec<&str> = original.split_whitespace().collect();
        let method = words.iter().find_map(|w| w.split_once("runstream.v1.RunService/").map(|(_, m)| m));
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
                let events = json_messages(stdout, original);
                assert!(!events.is_empty(), "{original} printed nothing");
                match method {
                    "StreamRun" | "ResumeStream" | "ObserveStream" => {
                        let first = seq(&events[0]);
                        assert_gapless(&events, first, original);
                        let last = events.last().expect("not empty");
                        assert_eq!(kind(last), "workflowFinish", "{original} does not end with workflowFinish");
                        let run_id = last["runId"].as_str().unwrap_or_default().to_owned();
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
                                assert_eq!(first, 1, "a new run's first seq (a pasted run id must be new)");
                                let tail = &kinds(&events)[events.len().saturating_sub(2)..];
                                assert_eq!(tail, ["stepSuspended", "workflowFinish"], "end of {original}");
                                assert_eq!(finish_status(last), "RUN_STATUS_SUSPENDED", "suspension: {last}");
                                suspended.insert(run_id, (seq(last), workflow.to_owned()));
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
                                assert_eq!(first, 1, "a new run's first seq (a pasted run id must be new)");
                                let tail = &kinds(&events)[events.len().saturating_sub(3)..];
                                assert_eq!(tail, ["toolCallApproval", "stepSuspended", "workflowFinish"], "{original}");
                                suspended.insert(run_id, (seq(last), workflow.to_owned()));
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
                                let resumed = request["runId"].as_str().unwrap_or_default();
                                let (suspended_at, workflow) = suspended
                                    .remove(resumed)
                                    .unwrap_or_else(|| panic!("{original} resumes {resumed:?}, not a suspended run"));
                                assert_eq!(
                                    first,
                                    suspended_at + 1,
                                    "ResumeStream must continue after seq {suspended_at}"
                                );
                                assert_eq!(kind(&events[0]), "workflowStart", "a resumed phase starts: {}", events[0]);
                                let (proof, step) = match workflow.as_str() {
                                    "concierge" => ("\"toolResult\"", "ResumeStream concierge"),
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
        let times = checked.iter().filter(|c| **c == step).count();
        assert_eq!(
            times, PASTES,
            "`{step}` of the README walkthrough was checked {times} times in {PASTES} pastes (checked: {checked:?})"
        );
    }
}

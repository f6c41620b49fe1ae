//! runstream's benchmark suite: `cargo bench --bench suite -- [--quick] [--addr HOST:PORT] [--runs N]
//! [--json PATH] [--only SCENARIO,...] [--server-bin PATH] [--python PATH] [--soak-runs N] [--restart-runs N]`.
//!
//! Starts `runstream serve` as its own process (a fresh one per scenario repetition, so memory figures are per
//! scenario) unless `--addr` names a running server, drives it over real gRPC with the generated Rust client,
//! and prints a Markdown table of medians over `--runs` repetitions with each figure's goal (issue 3) and its
//! ratio to the goal; the same figures, with every sample, go to a JSON file (default target/bench/suite.json).
//! The raw ceiling runs in a separate process too: this binary re-executed with `--raw-server`.
//!
//! Scenarios: raw, b (writer-flood), a (chain), c (batch-foreach), d (order-approval), e (10k concurrent runs),
//! e-held (suspended runs held), f (fan-out), g (reconnect storm), latency, workers (remote steps through one
//! Rust worker, then one Python SDK worker run by `--python PATH` or else the venv of scripts/test-deps.sh, skipped
//! when neither imports the SDK; its server is this binary re-executed with `--workers-server`, also with `--addr`),
//! soak (chain runs at a steady load, server RSS sampled as they go: does it plateau?), restart (a start on a store
//! of many runs, always durable and always local: it starts its own servers). See docs/performance.md. Each runs
//! against the in-memory store (`--store memory`); `NAME@durable` runs the same scenario against the default
//! SQLite store on a fresh data dir, its figures keyed `durable.*`, with ratios to the in-memory figures of the
//! same run.

#[path = "suite/client.rs"]
mod client;
#[path = "suite/history.rs"]
mod history;
#[path = "suite/procs.rs"]
mod procs;
#[path = "suite/raw.rs"]
mod raw;
#[path = "suite/scenarios.rs"]
mod scenarios;
#[path = "suite/workers.rs"]
mod workers;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Instant};

use procs::Server;
use scenarios::{Figures, Sizes};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    /// Passes at or above; ratio = measured / goal.
    AtLeast(f64),
    /// Passes below; ratio = goal / measured.
    Under(f64),
    /// Must be exactly zero.
    Zero,
    /// Reported, no goal.
    Info,
}

struct Row {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    goal: Goal,
}

const ROWS: &[Row] = &[
    Row { key: "raw.events_per_s", label: "raw ceiling: events/s, one stream", unit: "ev/s", goal: Goal::Info },
    Row { key: "raw.first_event_ms", label: "raw ceiling: first event", unit: "ms", goal: Goal::Info },
    Row { key: "b.events_per_s", label: "B writer-flood: events/s to one client", unit: "ev/s", goal: Goal::Info },
    Row { key: "b.ratio_to_raw", label: "B writer-flood: ÷ raw ceiling", unit: "×", goal: Goal::AtLeast(0.5) },
    Row { key: "b.first_event_ms", label: "B writer-flood: first event", unit: "ms", goal: Goal::Under(1.0) },
    Row { key: "a.seq_p50_ms", label: "A chain sequential: p50 per run", unit: "ms", goal: Goal::Info },
    Row { key: "a.seq_p99_ms", label: "A chain sequential: p99 per run", unit: "ms", goal: Goal::Under(1.0) },
    Row { key: "a.runs_per_s", label: "A chain, 64 callers: runs/s", unit: "runs/s", goal: Goal::AtLeast(20_000.0) },
    Row { key: "c.wall_ms", label: "C batch-foreach (conc. 8): wall", unit: "ms", goal: Goal::Under(50.0) },
    Row {
        key: "d.cycles_per_s",
        label: "D order-approval, 64 callers: cycles/s",
        unit: "cyc/s",
        goal: Goal::AtLeast(10_000.0),
    },
    Row { key: "e.wall_ms", label: "E concurrent runs streamed at once: wall", unit: "ms", goal: Goal::Info },
    Row { key: "e.peak_rss_mb", label: "E concurrent runs: server peak RSS", unit: "MB", goal: Goal::Under(150.0) },
    Row { key: "e.idle_rss_mb", label: "E: idle server RSS (baseline)", unit: "MB", goal: Goal::Info },
    Row {
        key: "e.bytes_per_suspended_run",
        label: "E held suspended runs: RSS per run",
        unit: "B",
        goal: Goal::Under(1024.0),
    },
    Row { key: "e.suspend_runs_per_s", label: "E held suspended runs: started/s", unit: "runs/s", goal: Goal::Info },
    Row {
        key: "f.deliveries_per_s",
        label: "F fan-out: deliveries/s in all",
        unit: "ev/s",
        goal: Goal::AtLeast(5_000_000.0),
    },
    Row {
        key: "f.observers_not_exactly_once",
        label: "F fan-out: observers missing/repeating",
        unit: "",
        goal: Goal::Zero,
    },
    Row { key: "g.events_per_s", label: "G reconnect storm: events/s", unit: "ev/s", goal: Goal::Info },
    Row { key: "g.ratio_to_b", label: "G reconnect storm: ÷ B events/s", unit: "×", goal: Goal::AtLeast(0.8) },
    Row { key: "g.lost", label: "G reconnect storm: lost", unit: "", goal: Goal::Zero },
    Row { key: "g.duplicated", label: "G reconnect storm: duplicated", unit: "", goal: Goal::Zero },
    Row { key: "latency.p50_ms", label: "latency append→client, under B: p50", unit: "ms", goal: Goal::Info },
    Row { key: "latency.p99_ms", label: "latency append→client, under B: p99", unit: "ms", goal: Goal::Under(1.0) },
    Row {
        key: "workers.tasks_per_s",
        label: "workers: tasks/s, one Rust worker, 64 in flight",
        unit: "tasks/s",
        goal: Goal::Info,
    },
    Row {
        key: "workers.python_tasks_per_s",
        label: "workers: tasks/s, one Python worker, 64 in flight",
        unit: "tasks/s",
        goal: Goal::Info,
    },
    Row {
        key: "workers.python_over_rust",
        label: "workers: Python worker ÷ Rust worker tasks/s",
        unit: "×",
        goal: Goal::Info,
    },
    Row { key: "workers.remote_step_ms", label: "workers: remote step, p50 per step", unit: "ms", goal: Goal::Info },
    Row { key: "workers.local_step_ms", label: "workers: in-process step, p50 per step", unit: "ms", goal: Goal::Info },
    Row {
        key: "workers.remote_over_local",
        label: "workers: remote ÷ in-process per step",
        unit: "×",
        goal: Goal::Info,
    },
    Row {
        key: "workers.overhead_ms",
        label: "workers: remote step overhead (remote − in-process)",
        unit: "ms",
        goal: Goal::Info,
    },
    Row { key: "soak.runs_per_s", label: "soak chain: runs/s", unit: "runs/s", goal: Goal::Info },
    Row { key: "soak.rss_start_mb", label: "soak: server RSS at start", unit: "MB", goal: Goal::Info },
    Row { key: "soak.rss_end_mb", label: "soak: server RSS at end", unit: "MB", goal: Goal::Info },
    Row { key: "soak.peak_rss_mb", label: "soak: server peak RSS (sampled)", unit: "MB", goal: Goal::Info },
    Row { key: "soak.bytes_per_run", label: "soak: RSS growth per run, whole soak", unit: "B", goal: Goal::Info },
    Row {
        key: "soak.bytes_per_run_last_half",
        label: "soak: RSS slope per run, last half (plateau: ~0)",
        unit: "B",
        goal: Goal::Under(100.0),
    },
    // The same scenarios in durable mode (SQLite, group commit): the goals still apply.
    Row { key: "durable.b.events_per_s", label: "durable B writer-flood: events/s", unit: "ev/s", goal: Goal::Info },
    Row { key: "durable.b.ratio_to_memory", label: "durable B ÷ in-memory B", unit: "×", goal: Goal::Info },
    Row { key: "durable.b.first_event_ms", label: "durable B: first event", unit: "ms", goal: Goal::Under(1.0) },
    Row { key: "durable.a.seq_p99_ms", label: "durable A sequential: p99 per run", unit: "ms", goal: Goal::Under(1.0) },
    Row {
        key: "durable.a.runs_per_s",
        label: "durable A, 64 callers: runs/s",
        unit: "runs/s",
        goal: Goal::AtLeast(20_000.0),
    },
    Row { key: "durable.a.ratio_to_memory", label: "durable A runs/s ÷ in-memory", unit: "×", goal: Goal::Info },
    Row { key: "durable.c.wall_ms", label: "durable C batch-foreach: wall", unit: "ms", goal: Goal::Under(50.0) },
    Row {
        key: "durable.d.cycles_per_s",
        label: "durable D order-approval: cycles/s",
        unit: "cyc/s",
        goal: Goal::AtLeast(10_000.0),
    },
    Row { key: "durable.d.ratio_to_memory", label: "durable D cycles/s ÷ in-memory", unit: "×", goal: Goal::Info },
    Row { key: "durable.e.peak_rss_mb", label: "durable E: server peak RSS", unit: "MB", goal: Goal::Under(150.0) },
    Row {
        key: "durable.f.deliveries_per_s",
        label: "durable F fan-out: deliveries/s",
        unit: "ev/s",
        goal: Goal::AtLeast(5_000_000.0),
    },
    Row { key: "durable.g.lost", label: "durable G reconnect storm: lost", unit: "", goal: Goal::Zero },
    Row { key: "durable.g.duplicated", label: "durable G: duplicated", unit: "", goal: Goal::Zero },
    Row { key: "durable.latency.p99_ms", label: "durable latency under B: p99", unit: "ms", goal: Goal::Under(1.0) },
    Row {
        key: "durable.e.bytes_per_suspended_run",
        label: "durable E held suspended runs: RSS per run",
        unit: "B",
        goal: Goal::Under(1024.0),
    },
    Row {
        key: "durable.e.suspend_runs_per_s",
        label: "durable E held suspended runs: started/s",
        unit: "runs/s",
        goal: Goal::Info,
    },
    Row { key: "durable.soak.runs_per_s", label: "durable soak chain: runs/s", unit: "runs/s", goal: Goal::Info },
    Row { key: "durable.soak.rss_start_mb", label: "durable soak: server RSS at start", unit: "MB", goal: Goal::Info },
    Row { key: "durable.soak.rss_end_mb", label: "durable soak: server RSS at end", unit: "MB", goal: Goal::Info },
    Row {
        key: "durable.soak.peak_rss_mb",
        label: "durable soak: server peak RSS (sampled)",
        unit: "MB",
        goal: Goal::Info,
    },
    Row {
        key: "durable.soak.bytes_per_run",
        label: "durable soak: RSS growth per run, whole soak",
        unit: "B",
        goal: Goal::Info,
    },
    Row {
        key: "durable.soak.bytes_per_run_last_half",
        label: "durable soak: RSS slope per run, last half (plateau: ~0)",
        unit: "B",
        goal: Goal::Under(100.0),
    },
    // A start on a store of many runs (always durable).
    Row { key: "restart.runs", label: "restart: runs in the store", unit: "runs", goal: Goal::Info },
    Row { key: "restart.db_mb", label: "restart: store file size", unit: "MB", goal: Goal::Info },
    Row {
        key: "restart.clean_ready_ms",
        label: "restart after a clean stop: time to SERVING",
        unit: "ms",
        goal: Goal::Under(1000.0),
    },
    Row {
        key: "restart.clean_rss_mb",
        label: "restart after a clean stop: RSS when ready",
        unit: "MB",
        goal: Goal::Info,
    },
    Row {
        key: "restart.clean_get_run_ms",
        label: "restart after a clean stop: GetRun of the oldest run",
        unit: "ms",
        goal: Goal::Info,
    },
    Row {
        key: "restart.unclean_ready_ms",
        label: "restart after SIGKILL: time to SERVING",
        unit: "ms",
        goal: Goal::Under(1000.0),
    },
    Row { key: "restart.unclean_rss_mb", label: "restart after SIGKILL: RSS when ready", unit: "MB", goal: Goal::Info },
    Row {
        key: "restart.unclean_over_clean",
        label: "restart: after SIGKILL ÷ after a clean stop (quick_check)",
        unit: "×",
        goal: Goal::Info,
    },
    Row { key: "restart.stop_ms", label: "restart: clean stop (SIGTERM to exit)", unit: "ms", goal: Goal::Info },
];

/// The scenarios, in run order. `raw` always runs on a local raw server process, even with `--addr`.
const SCENARIOS: &[&str] = &[
    "raw",
    "b",
    "a",
    "c",
    "d",
    "e",
    "e-held",
    "f",
    "g",
    "latency",
    "workers",
    "soak",
    "b@durable",
    "a@durable",
    "c@durable",
    "d@durable",
    "e@durable",
    "f@durable",
    "g@durable",
    "latency@durable",
    "e-held@durable",
    "soak@durable",
    "restart",
];

struct Options {
    quick: bool,
    addr: Option<SocketAddr>,
    runs: usize,
    json: PathBuf,
    only: Option<Vec<String>>,
    server_bin: Option<PathBuf>,
    /// The Python for the workers scenario's Python worker (default: the repository's .venv).
    python: Option<PathBuf>,
    /// Overrides the size's `soak_runs` / `restart_runs`.
    soak_runs: Option<usize>,
    restart_runs: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench suite -- [--quick] [--addr HOST:PORT] [--runs N] [--json PATH] \
         [--only {}] [--server-bin PATH] [--python PATH] [--soak-runs N] [--restart-runs N]",
        SCENARIOS.join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut options = Options {
        quick: false,
        addr: None,
        runs: 0,
        json: PathBuf::from("target/bench/suite.json"),
        only: None,
        server_bin: None,
        python: None,
        soak_runs: None,
        restart_runs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--addr" => options.addr = Some(args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())),
            "--runs" => options.runs = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage()),
            "--server-bin" => options.server_bin = Some(args.next().map(PathBuf::from).unwrap_or_else(|| usage())),
            "--soak-runs" => {
                options.soak_runs = Some(args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage()))
            }
            "--restart-runs" => {
                options.restart_runs = Some(args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage()))
            }
            "--python" => options.python = Some(args.next().map(PathBuf::from).unwrap_or_else(|| usage())),
            "--json" => options.json = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--only" => {
                let list: Vec<String> =
                    args.next().unwrap_or_else(|| usage()).split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    eprintln!("unknown scenario {bad:?}");
                    usage();
                }
                options.only = Some(list);
            }
            _ => usage(),
        }
    }
    if options.runs == 0 {
        options.runs = if options.quick { 1 } else { 3 };
    }
    options
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--raw-server") => return raw::serve(),
        Some("--workers-server") => return workers::serve(),
        _ => {}
    }
    let options = parse_args();
    let mut sizes = if options.quick { Sizes::quick() } else { Sizes::full() };
    sizes.soak_runs = options.soak_runs.unwrap_or(sizes.soak_runs);
    sizes.restart_runs = options.restart_runs.unwrap_or(sizes.restart_runs);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let started = Instant::now();
    let report = runtime.block_on(run(&options, &sizes));
    runtime.shutdown_background();
    print_and_save(&options, &sizes, &report, started.elapsed().as_secs_f64());
}

/// A server's peak RSS (MB) and CPU seconds over one scenario repetition, when readable.
type ServerUse = (Option<f64>, Option<f64>);

#[derive(Default)]
struct Report {
    /// Every sample of every figure, in repetition order.
    samples: BTreeMap<&'static str, Vec<f64>>,
    /// Per scenario: the server's peak RSS (MB) and CPU seconds, per repetition.
    servers: BTreeMap<&'static str, Vec<ServerUse>>,
}

async fn run(options: &Options, sizes: &Sizes) -> Report {
    let mut report = Report::default();
    for &name in SCENARIOS {
        if options.only.as_ref().is_some_and(|only| !only.iter().any(|s| s == name)) {
            continue;
        }
        let (base, durable) = match name.split_once('@') {
            Some((base, _)) => (base, true),
            None => (name, false),
        };
        for rep in 1..=options.runs {
            let server = match (name, options.addr) {
                ("raw", _) => Server::raw(),
                ("workers", _) => Server::workers(),
                ("restart", _) => Server::none(),
                (_, Some(addr)) => Server::external(addr),
                _ if durable => Server::runstream_durable(options.server_bin.as_deref()),
                _ => Server::runstream(options.server_bin.as_deref()),
            };
            procs::settle().await;
            let cpu_before = server.cpu_seconds();
            let t = Instant::now();
            let figures: Figures = match base {
                "raw" => scenarios::raw(&server, sizes).await,
                "b" => scenarios::writer_flood(&server, sizes).await,
                "a" => scenarios::chain(&server, sizes).await,
                "c" => scenarios::batch_foreach(&server, sizes).await,
                "d" => scenarios::order_approval(&server, sizes).await,
                "e" => scenarios::concurrent_runs(&server, sizes).await,
                "e-held" => scenarios::suspended_runs(&server, sizes).await,
                "f" => scenarios::fan_out(&server, sizes).await,
                "g" => scenarios::reconnect_storm(&server, sizes).await,
                "latency" => scenarios::latency(&server, sizes).await,
                "workers" => workers::scenario(&server, sizes, options.python.as_deref()).await,
                "soak" => history::soak(&server, sizes).await,
                "restart" => history::restart(sizes, options.server_bin.as_deref()).await,
                _ => unreachable!("scenario names are checked"),
            };
            // Durable figures get their own keys (leaked: a few dozen short strings per suite run).
            let figures: Figures = if durable {
                figures.into_iter().map(|(k, v)| (&*Box::leak(format!("durable.{k}").into_boxed_str()), v)).collect()
            } else {
                figures
            };
            let cpu = server.cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
            let peak = server.peak_rss().map(|b| b / 1e6);
            eprintln!(
                "[{name} {rep}/{}] {:.1} s: {}",
                options.runs,
                t.elapsed().as_secs_f64(),
                figures.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" ")
            );
            for (key, value) in figures {
                report.samples.entry(key).or_default().push(value);
            }
            report.servers.entry(name).or_default().push((peak, cpu));
        }
    }
    report
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 10_000.0 {
        let s = format!("{:.0}", v);
        // thousands separators
        let (sign, digits) = s.split_at(if v < 0.0 { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn print_and_save(options: &Options, sizes: &Sizes, report: &Report, seconds: f64) {
    let mut medians: BTreeMap<&str, f64> = report.samples.iter().map(|(k, v)| (*k, median(v))).collect();
    // Ratios of medians measured in this one run, side by side.
    if let (Some(b), Some(raw)) = (medians.get("b.events_per_s"), medians.get("raw.events_per_s")) {
        medians.insert("b.ratio_to_raw", b / raw);
    }
    if let (Some(g), Some(b)) = (medians.get("g.events_per_s"), medians.get("b.events_per_s")) {
        medians.insert("g.ratio_to_b", g / b);
    }
    if let (Some(&remote), Some(&local)) = (medians.get("workers.remote_step_ms"), medians.get("workers.local_step_ms"))
    {
        medians.insert("workers.remote_over_local", remote / local);
        medians.insert("workers.overhead_ms", remote - local);
    }
    if let (Some(python), Some(rust)) = (medians.get("workers.python_tasks_per_s"), medians.get("workers.tasks_per_s"))
    {
        medians.insert("workers.python_over_rust", python / rust);
    }
    for (durable, memory, ratio) in [
        ("durable.b.events_per_s", "b.events_per_s", "durable.b.ratio_to_memory"),
        ("durable.a.runs_per_s", "a.runs_per_s", "durable.a.ratio_to_memory"),
        ("durable.d.cycles_per_s", "d.cycles_per_s", "durable.d.ratio_to_memory"),
    ] {
        if let (Some(d), Some(m)) = (medians.get(durable), medians.get(memory)) {
            medians.insert(ratio, d / m);
        }
    }
    let mode = if options.quick { "quick (scaled-down sizes; goals apply to full runs)" } else { "full" };
    println!("\n## runstream benchmark suite ({mode}, medians of {} runs, {seconds:.0} s)\n", options.runs);
    println!("| figure | measured | goal | ratio to goal | pass |");
    println!("|---|---:|---|---:|:---:|");
    let mut figures = serde_json::Map::new();
    for row in ROWS {
        let Some(&value) = medians.get(row.key) else { continue };
        let (goal, ratio, pass) = match row.goal {
            Goal::AtLeast(g) => (format!("≥ {} {}", fmt_num(g), row.unit), Some(value / g), Some(value >= g)),
            Goal::Under(g) => (format!("< {} {}", fmt_num(g), row.unit), Some(g / value), Some(value < g)),
            Goal::Zero => ("0".to_string(), None, Some(value == 0.0)),
            Goal::Info => ("—".to_string(), None, None),
        };
        println!(
            "| {} | {} {} | {} | {} | {} |",
            row.label,
            fmt_num(value),
            row.unit,
            goal,
            ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into()),
            match pass {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
        figures.insert(
            row.key.to_string(),
            json!({
                "label": row.label,
                "unit": row.unit,
                "median": value,
                "samples": report.samples.get(row.key),
                "goal": match row.goal {
                    Goal::AtLeast(g) => json!({ "at_least": g }),
                    Goal::Under(g) => json!({ "under": g }),
                    Goal::Zero => json!({ "equals": 0 }),
                    Goal::Info => Value::Null,
                },
                "ratio_to_goal": ratio,
                "pass": pass,
            }),
        );
    }
    let extra: serde_json::Map<String, Value> = report
        .samples
        .iter()
        .filter(|(k, _)| !ROWS.iter().any(|r| r.key == **k))
        .map(|(k, v)| (k.to_string(), json!({ "median": median(v), "samples": v })))
        .collect();

    println!("\n| scenario | server peak RSS (MB) | server CPU (s) |");
    println!("|---|---:|---:|");
    let mut servers = serde_json::Map::new();
    for (name, reps) in &report.servers {
        let peaks: Vec<f64> = reps.iter().filter_map(|r| r.0).collect();
        let cpus: Vec<f64> = reps.iter().filter_map(|r| r.1).collect();
        println!("| {name} | {} | {} |", fmt_num(median(&peaks)), fmt_num(median(&cpus)));
        servers.insert(
            name.to_string(),
            json!({ "peak_rss_mb": peaks, "cpu_seconds": cpus, "peak_rss_mb_median": median(&peaks).is_finite().then(|| median(&peaks)), "cpu_seconds_median": median(&cpus).is_finite().then(|| median(&cpus)) }),
        );
    }
    if options.addr.is_some() {
        println!("\n(--addr: the server's memory and CPU are not readable from here; raw and restart ran locally)");
    }

    let doc = json!({
        "mode": if options.quick { "quick" } else { "full" },
        "runs": options.runs,
        "addr": options.addr.map(|a| a.to_string()),
        "server_bin": options.server_bin.as_ref().map(|p| p.display().to_string()),
        "seconds": seconds,
        "sizes": sizes.to_json(),
        "figures": figures,
        "other": extra,
        "servers": servers,
    });
    if let Some(dir) = options.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    let text = serde_json::to_string_pretty(&doc).expect("the report serializes");
    std::fs::write(&options.json, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", options.json.display()));
    println!("\nJSON: {}", options.json.display());
}

//! The scenarios. Each runs once against a server and returns its figures as (key, value) pairs; the driver
//! repeats them and takes medians.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use runstream::{grpc::convert::json_to_pb, pb};
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    client::{self, Client, channels, drain, expect_finish, observe_seqs, stream_request},
    procs::Server,
};

pub type Figures = Vec<(&'static str, f64)>;

/// Sizes of the scenarios: the in a full run, scaled down in quick mode.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub flood: u64,
    pub chain_sequential: usize,
    pub chain_concurrent: usize,
    pub callers: usize,
    pub foreach_items: u64,
    pub foreach_concurrency: u64,
    pub cycles: usize,
    pub concurrent_runs: usize,
    pub suspended_runs: usize,
    pub fanout_events: u64,
    pub observers: usize,
    pub storm_events: u64,
    pub storm_every: u64,
    pub worker_tasks: u64,
    pub worker_chain_runs: usize,
    /// `soak`: chain runs in all, by `soak_callers` callers, RSS sampled every `soak_sample_ms`.
    pub soak_runs: usize,
    pub soak_callers: usize,
    pub soak_sample_ms: u64,
    /// `restart`: runs in the store the server restarts on.
    pub restart_runs: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            flood: 1_000_000,
            chain_sequential: 2_000,
            chain_concurrent: 50_000,
            callers: 64,
            foreach_items: 10_000,
            foreach_concurrency: 8,
            cycles: 20_000,
            concurrent_runs: 10_000,
            suspended_runs: 100_000,
            fanout_events: 100_000,
            observers: 1_000,
            storm_events: 1_000_000,
            storm_every: 1_000,
            worker_tasks: 20_000,
            worker_chain_runs: 300,
            soak_runs: 200_000,
            soak_callers: 16,
            soak_sample_ms: 1_000,
            restart_runs: 1_000_000,
        }
    }

    pub fn quick() -> Self {
        Self {
            flood: 100_000,
            chain_sequential: 300,
            chain_concurrent: 3_000,
            callers: 64,
            foreach_items: 2_000,
            foreach_concurrency: 8,
            cycles: 1_000,
            concurrent_runs: 1_000,
            suspended_runs: 2_000,
            fanout_events: 10_000,
            observers: 50,
            storm_events: 100_000,
            storm_every: 1_000,
            worker_tasks: 2_000,
            worker_chain_runs: 30,
            soak_runs: 5_000,
            soak_callers: 16,
            // A quick soak lasts seconds: sampled more often, so that its last half still has points to fit.
            soak_sample_ms: 50,
            restart_runs: 20_000,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "flood": self.flood, "chain_sequential": self.chain_sequential,
            "chain_concurrent": self.chain_concurrent, "callers": self.callers,
            "foreach_items": self.foreach_items, "foreach_concurrency": self.foreach_concurrency,
            "cycles": self.cycles, "concurrent_runs": self.concurrent_runs,
            "suspended_runs": self.suspended_runs, "fanout_events": self.fanout_events,
            "observers": self.observers, "storm_events": self.storm_events, "storm_every": self.storm_every,
            "worker_tasks": self.worker_tasks, "worker_chain_runs": self.worker_chain_runs,
            "soak_runs": self.soak_runs, "soak_callers": self.soak_callers, "soak_sample_ms": self.soak_sample_ms,
            "restart_runs": self.restart_runs,
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
}

/// One stream of `count` flood events to one client: events/s and time to first event. `workflow` is
/// `writer-flood` on runstream, anything on the raw server (which ignores it).
async fn flood_once(client: &mut Client, count: u64) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut stream = client
        .stream_run(stream_request("writer-flood", json!({ "count": count })))
        .await
        .expect("StreamRun writer-flood")
        .into_inner();
    let headers = ms(start.elapsed());
    let mut first = None;
    let mut events = 0u64;
    while let Some(_event) = stream.message().await.expect("flood stream") {
        if first.is_none() {
            first = Some(start.elapsed());
        }
        events += 1;
    }
    let wall = start.elapsed();
    assert!(events >= count, "the flood stream ended after {events} of {count} events");
    (events as f64 / wall.as_secs_f64(), ms(first.unwrap_or(wall)), headers)
}

/// raw: the transport's ceiling, same message size, same client.
pub async fn raw(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::channel(server.addr).await);
    flood_once(&mut c, 1_000).await;
    let (rate, first, headers) = flood_once(&mut c, sizes.flood).await;
    vec![("raw.events_per_s", rate), ("raw.first_event_ms", first), ("raw.headers_ms", headers)]
}

/// B writer-flood: one run, one client.
pub async fn writer_flood(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::channel(server.addr).await);
    flood_once(&mut c, 1_000).await;
    let (rate, first, headers) = flood_once(&mut c, sizes.flood).await;
    vec![("b.events_per_s", rate), ("b.first_event_ms", first), ("b.headers_ms", headers)]
}

pub async fn chain_once(c: &mut Client) {
    let stream = c.stream_run(stream_request("chain", json!({ "value": 1 }))).await.expect("StreamRun chain");
    let drained = drain(stream.into_inner()).await.expect("chain stream");
    expect_finish(&drained, pb::RunStatus::Success, "chain");
    assert_eq!(drained.events, 8, "a chain run has 8 events");
}

/// Runs `total` jobs on `callers` concurrent tasks spread over `connections` connections; returns the wall time.
pub async fn concurrent<F, Fut>(server: &Server, connections: usize, callers: usize, total: usize, job: F) -> Duration
where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let pool = channels(server.addr, connections).await;
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..callers {
        let c = client::client(&pool[i % pool.len()]);
        let (next, job) = (next.clone(), job.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                job(c.clone()).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a caller task panicked");
    }
    start.elapsed()
}

/// A chain: sequential latency per run, then runs/s with 64 callers.
pub async fn chain(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::channel(server.addr).await);
    for _ in 0..100 {
        chain_once(&mut c).await;
    }
    let mut lat = Vec::with_capacity(sizes.chain_sequential);
    for _ in 0..sizes.chain_sequential {
        let t = Instant::now();
        chain_once(&mut c).await;
        lat.push(ms(t.elapsed()));
    }
    sort(&mut lat);
    let wall = concurrent(server, 4, sizes.callers, sizes.chain_concurrent, |mut c| async move {
        chain_once(&mut c).await;
    })
    .await;
    vec![
        ("a.seq_p50_ms", percentile(&lat, 50.0)),
        ("a.seq_p99_ms", percentile(&lat, 99.0)),
        ("a.runs_per_s", sizes.chain_concurrent as f64 / wall.as_secs_f64()),
    ]
}

/// C batch-foreach: wall time of one run, streamed.
pub async fn batch_foreach(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::channel(server.addr).await);
    let run = |c: &mut Client, count: u64| {
        let request =
            stream_request("batch-foreach", json!({ "count": count, "concurrency": sizes.foreach_concurrency }));
        let mut c = c.clone();
        async move {
            let t = Instant::now();
            let drained = drain(c.stream_run(request).await.expect("StreamRun batch-foreach").into_inner())
                .await
                .expect("batch-foreach stream");
            expect_finish(&drained, pb::RunStatus::Success, "batch-foreach");
            assert_eq!(drained.events, count + 6, "one progress event per item");
            t.elapsed()
        }
    };
    run(&mut c, 10).await;
    let wall = run(&mut c, sizes.foreach_items).await;
    vec![("c.wall_ms", ms(wall))]
}

/// One order-approval cycle: stream to the suspension, then resume to the end.
async fn approval_cycle(mut c: Client) -> String {
    let request = stream_request("order-approval", json!({ "orderId": "A-100", "amount": 250 }));
    let first = drain(c.stream_run(request).await.expect("StreamRun order-approval").into_inner())
        .await
        .expect("order-approval stream");
    expect_finish(&first, pb::RunStatus::Suspended, "order-approval phase 1");
    let resume = pb::ResumeStreamRequest {
        run_id: first.run_id.clone(),
        resume_data: Some(json_to_pb(&json!({ "approved": true, "approver": "bench" }))),
        ..Default::default()
    };
    let second = drain(c.resume_stream(resume).await.expect("ResumeStream").into_inner()).await.expect("resume stream");
    expect_finish(&second, pb::RunStatus::Success, "order-approval phase 2");
    first.run_id
}

/// D order-approval: suspend + resume cycles/s with 64 callers.
pub async fn order_approval(server: &Server, sizes: &Sizes) -> Figures {
    let wall = concurrent(server, 4, sizes.callers, sizes.cycles, |c| async move {
        approval_cycle(c).await;
    })
    .await;
    vec![("d.cycles_per_s", sizes.cycles as f64 / wall.as_secs_f64())]
}

/// E concurrency, part 1: all runs streamed at once, on a fresh server: wall time and the server's peak RSS.
pub async fn concurrent_runs(server: &Server, sizes: &Sizes) -> Figures {
    let idle = server.rss();
    let pool = channels(server.addr, (sizes.concurrent_runs / 150).clamp(1, 128)).await;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..sizes.concurrent_runs {
        let mut c = client::client(&pool[i % pool.len()]);
        tasks.spawn(async move { chain_once(&mut c).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a run task panicked");
    }
    let wall = start.elapsed();
    let mut figures = vec![("e.wall_ms", ms(wall))];
    if let (Some(peak), Some(idle)) = (server.peak_rss(), idle) {
        figures.push(("e.peak_rss_mb", peak / 1e6));
        figures.push(("e.idle_rss_mb", idle / 1e6));
    }
    figures
}

/// E concurrency, part 2: many runs suspended and held; the server's RSS growth per run.
pub async fn suspended_runs(server: &Server, sizes: &Sizes) -> Figures {
    // Warm up: threads, connections and allocator pools exist before the baseline is read.
    concurrent(server, 4, sizes.callers, 256, |c| async move {
        approval_cycle(c).await;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.rss();
    let wall = concurrent(server, 4, sizes.callers, sizes.suspended_runs, |mut c| async move {
        let request = stream_request("order-approval", json!({ "orderId": "A-100", "amount": 250 }));
        let drained = drain(c.stream_run(request).await.expect("StreamRun order-approval").into_inner())
            .await
            .expect("order-approval stream");
        expect_finish(&drained, pb::RunStatus::Suspended, "order-approval");
    })
    .await;
    // Held in the store, not in memory (issue 12): a durable server lets a suspended run go once it has been idle
    // for --evict-after (2 s by default), at its next sweep (every second); a memory server keeps every run.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut figures = vec![("e.suspend_runs_per_s", sizes.suspended_runs as f64 / wall.as_secs_f64())];
    if let (Some(before), Some(after)) = (before, server.rss()) {
        figures.push(("e.bytes_per_suspended_run", (after - before) / sizes.suspended_runs as f64));
    }
    figures
}

/// F fan-out: one flood run, many observers from seq 0; every observer must see every event exactly once.
pub async fn fan_out(server: &Server, sizes: &Sizes) -> Figures {
    let pool = channels(server.addr, (sizes.observers / 100).clamp(1, 16)).await;
    let expected = sizes.fanout_events + 4;
    let start = Instant::now();
    let started = client::client(&pool[0])
        .start_run(pb::StartRunRequest {
            workflow_id: "writer-flood".into(),
            input: Some(json_to_pb(&json!({ "count": sizes.fanout_events }))),
            ..Default::default()
        })
        .await
        .expect("StartRun writer-flood")
        .into_inner();
    let bad = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..sizes.observers {
        let channel = pool[i % pool.len()].clone();
        let (run_id, bad) = (started.run_id.clone(), bad.clone());
        tasks.spawn(async move {
            let request = pb::ObserveStreamRequest { run_id, after_seq: 0, close_on_suspend: None };
            let mut stream = observe_seqs(channel, request).await.expect("ObserveStream");
            let mut next = 1u64;
            let mut ok = true;
            while let Some(event) = stream.message().await.expect("observer stream") {
                ok &= event.seq == next;
                next = event.seq + 1;
            }
            if !ok || next != expected + 1 {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("an observer task panicked");
    }
    let wall = start.elapsed();
    vec![
        ("f.deliveries_per_s", (expected * sizes.observers as u64) as f64 / wall.as_secs_f64()),
        ("f.observers_not_exactly_once", bad.load(Ordering::Relaxed) as f64),
    ]
}

/// Re-attaches per connection in the reconnect storm.
const STORM_ATTACHES_PER_CONNECTION: u64 = 256;

/// G reconnect storm: one observer that drops its stream every `storm_every` events and re-attaches with
/// `after_seq`; nothing may be lost or repeated.
pub async fn reconnect_storm(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::storm_channel(server.addr).await);
    let expected = sizes.storm_events + 4;
    let start = Instant::now();
    let run_id = c
        .start_run(pb::StartRunRequest {
            workflow_id: "writer-flood".into(),
            input: Some(json_to_pb(&json!({ "count": sizes.storm_events }))),
            ..Default::default()
        })
        .await
        .expect("StartRun writer-flood")
        .into_inner()
        .run_id;
    let (mut cursor, mut lost, mut duplicated, mut attaches) = (0u64, 0u64, 0u64, 0u64);
    let mut finished = false;
    while !finished {
        // A long storm moves to a fresh connection now and then, as a client whose network drops would anyway;
        // `storm_channel` says why the connection's reset guard is off (docs/performance.md).
        if attaches > 0 && attaches % STORM_ATTACHES_PER_CONNECTION == 0 {
            c = client::client(&client::storm_channel(server.addr).await);
        }
        let request = pb::ObserveStreamRequest { run_id: run_id.clone(), after_seq: cursor, close_on_suspend: None };
        let mut stream = c.observe_stream(request).await.expect("ObserveStream").into_inner();
        attaches += 1;
        let mut this_attach = 0;
        loop {
            let Some(event) = stream.message().await.expect("observer stream") else {
                finished = true;
                break;
            };
            if event.seq <= cursor {
                duplicated += 1;
            } else {
                lost += event.seq - cursor - 1;
                cursor = event.seq;
            }
            this_attach += 1;
            if this_attach == sizes.storm_every {
                break; // drops the stream: the client cancels it, as a flaky network would
            }
        }
    }
    let wall = start.elapsed();
    lost += expected.saturating_sub(cursor);
    vec![
        ("g.events_per_s", cursor as f64 / wall.as_secs_f64()),
        ("g.lost", lost as f64),
        ("g.duplicated", duplicated as f64),
        ("g.attaches", attaches as f64),
    ]
}

/// latency: a probe of sequential chain runs on its own connection while a B-sized flood streams alongside;
/// each probe event's latency is its receive time minus its `time` (set when the log appended it; same clock).
/// The probe is a client of its own (its own thread and runtime), as a second client would be: sharing the flood
/// client's runtime, its events also waited behind the flood's decoding in the load generator's task queue.
pub async fn latency(server: &Server, sizes: &Sizes) -> Figures {
    let mut flood_client = client::client(&client::channel(server.addr).await);
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = tokio::spawn({
        let (flooding, count) = (flooding.clone(), sizes.flood);
        async move {
            let result = flood_once(&mut flood_client, count).await;
            flooding.store(false, Ordering::Relaxed);
            result
        }
    });
    let addr = server.addr;
    let probe_loop = {
        let flooding = flooding.clone();
        async move {
            let mut probe = client::client(&client::channel(addr).await);
            let mut samples = Vec::new();
            let mut probes = 0;
            while flooding.load(Ordering::Relaxed) || probes < 20 {
                let mut stream =
                    probe.stream_run(stream_request("chain", json!({ "value": 1 }))).await.expect("probe").into_inner();
                while let Some(event) = stream.message().await.expect("probe stream") {
                    let received = SystemTime::now();
                    let sent: SystemTime = event.time.and_then(|t| t.try_into().ok()).expect("events carry a time");
                    samples.push(received.duration_since(sent).map(ms).unwrap_or(0.0));
                }
                probes += 1;
            }
            samples
        }
    };
    let mut samples = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a probe runtime")
            .block_on(probe_loop)
    })
    .await
    .expect("the probe thread");
    let (flood_rate, _, _) = flood.await.expect("the flood task");
    sort(&mut samples);
    vec![
        ("latency.p50_ms", percentile(&samples, 50.0)),
        ("latency.p99_ms", percentile(&samples, 99.0)),
        ("latency.samples", samples.len() as f64),
        ("latency.flood_events_per_s", flood_rate),
    ]
}

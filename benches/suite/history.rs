//! Scenarios about what a server keeps of its history (issue 12): `soak`, server memory over a long series of
//! short runs, and `restart`, a start on a store of many runs.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use runstream::{
    pb,
    store::{LoadedRun, RunStore, SqliteStore, StoredEvent, Write, sqlite},
};
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    client::{self, stream_request},
    procs::{self, Server},
    scenarios::{Figures, Sizes, chain_once, concurrent, ms},
};

/// soak: `soak_runs` chain runs by `soak_callers` concurrent callers (a steady load: each caller starts its next
/// run when the last one ends), the server's RSS sampled every `soak_sample_ms` against the runs done so far.
/// A server whose memory follows live work plateaus: the slope over the last half of the runs is then about 0.
pub async fn soak(server: &Server, sizes: &Sizes) -> Figures {
    let mut c = client::client(&client::channel(server.addr).await);
    // Warm up: threads, connections and allocator pools exist before the first sample.
    for _ in 0..200 {
        chain_once(&mut c).await;
    }
    procs::settle().await;
    let done = Arc::new(AtomicUsize::new(0));
    let loading = Arc::new(AtomicBool::new(true));
    let sampler = server.pid().map(|pid| {
        let (done, loading, period) = (done.clone(), loading.clone(), Duration::from_millis(sizes.soak_sample_ms));
        tokio::spawn(async move {
            let mut samples: Vec<(f64, f64)> = Vec::new();
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                // Read before the sample: the one after the load ended is the last.
                let last = !loading.load(Ordering::Relaxed);
                if let Some(rss) = procs::rss_of(pid) {
                    samples.push((done.load(Ordering::Relaxed) as f64, rss));
                }
                if last {
                    return samples;
                }
            }
        })
    });
    let wall = concurrent(server, 2, sizes.soak_callers, sizes.soak_runs, {
        let done = done.clone();
        move |mut c| {
            let done = done.clone();
            async move {
                chain_once(&mut c).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    loading.store(false, Ordering::Relaxed);
    let mut figures = vec![("soak.runs_per_s", sizes.soak_runs as f64 / wall.as_secs_f64())];
    let Some(sampler) = sampler else { return figures };
    let samples = sampler.await.expect("the RSS sampler");
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return figures };
    let peak = samples.iter().map(|s| s.1).fold(f64::NAN, f64::max);
    let half = sizes.soak_runs as f64 / 2.0;
    let last_half: Vec<(f64, f64)> = samples.iter().copied().filter(|s| s.0 >= half).collect();
    figures.extend([
        ("soak.rss_start_mb", first.1 / 1e6),
        ("soak.rss_end_mb", last.1 / 1e6),
        ("soak.peak_rss_mb", peak / 1e6),
        ("soak.bytes_per_run", (last.1 - first.1) / sizes.soak_runs as f64),
        ("soak.bytes_per_run_last_half", slope(&last_half)),
        ("soak.samples", samples.len() as f64),
    ]);
    figures
}

/// The least-squares slope of y over x; NaN with fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 { sxy / sxx } else { f64::NAN }
}

/// Runs a real server produces, copied into the restart store: chain runs, as the user ran them.
const TEMPLATE_RUNS: usize = 64;
/// Runs committed per transaction while the store is generated.
const BUILD_BATCH: usize = 2_000;
/// How long a start may take before the scenario gives up.
const START_DEADLINE: Duration = Duration::from_secs(300);

/// restart: a store of `restart_runs` finished chain runs, then `runstream serve --data-dir` on it: time to
/// healthy and RSS once healthy, after a clean stop and again after SIGKILL (the store then runs SQLite's
/// `quick_check` over the whole file). Always the durable store: a memory server has nothing to restart on.
///
/// The store is generated quickly, not by running a million runs through a server: a server runs
/// [`TEMPLATE_RUNS`] chain runs on a scratch store and stops cleanly; their stored records, events (the bodies the
/// server's encoder wrote, which hold no run id) and checkpoints are read back through [`SqliteStore`] and
/// committed again under fresh run ids through [`RunStore::commit`], split into the same event rows the server
/// wrote (one row per run per group commit).
pub async fn restart(sizes: &Sizes, program: Option<&Path>) -> Figures {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Gigabytes at full size: removed however the scenario ends, a failed assertion included.
    let root = RemovedOnDrop(root);
    let (template_dir, data_dir) = (root.0.join("template"), root.0.join("data"));

    let mut template = Server::runstream_on(program, &template_dir);
    concurrent(&template, 2, 8, TEMPLATE_RUNS, |mut c| async move { chain_once(&mut c).await }).await;
    assert!(template.terminate(Duration::from_secs(30)).is_some(), "the template server did not stop on SIGTERM");
    drop(template);
    let templates = read_templates(&template_dir);

    let t = Instant::now();
    let first_id = build_store(&data_dir, &templates, sizes.restart_runs);
    let build_s = t.elapsed().as_secs_f64();
    let db_bytes = file_len(&data_dir.join(sqlite::FILE_NAME));

    // Clean: the generated store was closed as a clean stop closes it (WAL folded into the database).
    let (mut server, clean) = start(program, &data_dir, &first_id).await;
    // Leave commits in the WAL, then kill: the next start finds a non-empty WAL, an unclean stop.
    let mut c = client::client(&client::channel(server.addr).await);
    for _ in 0..20 {
        chain_once(&mut c).await;
    }
    drop(c);
    server.kill();
    drop(server);
    let wal_bytes = file_len(&data_dir.join(format!("{}-wal", sqlite::FILE_NAME)));
    let (mut server, unclean) = start(program, &data_dir, &first_id).await;
    let stop = server.terminate(Duration::from_secs(60));
    drop(server);
    drop(root);

    vec![
        ("restart.runs", sizes.restart_runs as f64),
        ("restart.build_s", build_s),
        ("restart.db_mb", db_bytes / 1e6),
        ("restart.clean_listening_ms", clean.listening_ms),
        ("restart.clean_ready_ms", clean.ready_ms),
        ("restart.clean_rss_mb", clean.rss_mb),
        ("restart.clean_get_run_ms", clean.get_run_ms),
        ("restart.unclean_wal_kb", wal_bytes / 1e3),
        ("restart.unclean_listening_ms", unclean.listening_ms),
        ("restart.unclean_ready_ms", unclean.ready_ms),
        ("restart.unclean_rss_mb", unclean.rss_mb),
        ("restart.unclean_over_clean", unclean.ready_ms / clean.ready_ms),
        ("restart.stop_ms", stop.map(ms).unwrap_or(f64::NAN)),
    ]
}

/// A directory removed when this goes.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_len(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len() as f64).unwrap_or(0.0)
}

/// The template store's runs, each with the first seqs of its event rows.
fn read_templates(dir: &Path) -> Vec<(LoadedRun, Vec<u64>)> {
    // The rows first, with SQLite directly (the store's API merges them); read-only, before the store opens.
    let db =
        rusqlite::Connection::open_with_flags(dir.join(sqlite::FILE_NAME), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the template store opens read-only");
    let mut rows = db.prepare("SELECT run_id, first_seq FROM events ORDER BY run_id, first_seq").expect("a query");
    let starts: Vec<(String, u64)> = rows
        .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.unsigned_abs())))
        .expect("the template's event rows")
        .collect::<Result<_, _>>()
        .expect("the template's event rows");
    drop(rows);
    drop(db);
    let store = SqliteStore::open(dir, sqlite::Sync::Normal).expect("the template store opens");
    let runs = store.load().expect("the template store loads");
    assert_eq!(runs.len(), TEMPLATE_RUNS, "the template store holds the template runs");
    runs.into_iter()
        .map(|run| {
            let firsts = starts.iter().filter(|(id, _)| *id == run.record.run_id).map(|(_, seq)| *seq).collect();
            (run, firsts)
        })
        .collect()
}

/// Writes `runs` copies of the templates under fresh run ids into a new store in `dir`, closes it cleanly and
/// returns the first run's id.
fn build_store(dir: &Path, templates: &[(LoadedRun, Vec<u64>)], runs: usize) -> String {
    let store = SqliteStore::open(dir, sqlite::Sync::Normal).expect("a new store opens");
    // Oldest first, one millisecond apart, all well within the default retention.
    let base = SystemTime::now() - Duration::from_millis(runs as u64);
    let mut first_id = None;
    let mut writes = Vec::new();
    for i in 0..runs {
        let (template, row_starts) = &templates[i % templates.len()];
        let run_id = uuid::Uuid::now_v7().to_string();
        first_id.get_or_insert_with(|| run_id.clone());
        let mut record = template.record.clone();
        record.run_id.clone_from(&run_id);
        record.created_at = base + Duration::from_millis(i as u64);
        writes.push(Write::CreateRun(Box::new(record)));
        for events in rows(&template.events, row_starts) {
            writes.push(Write::Events { run_id: run_id.clone(), events });
        }
        for checkpoint in &template.checkpoints {
            writes.push(Write::Step { run_id: run_id.clone(), checkpoint: Box::new(checkpoint.clone()) });
        }
        if (i + 1) % BUILD_BATCH == 0 {
            store.commit(&writes).expect("a generated batch commits");
            writes.clear();
        }
    }
    store.commit(&writes).expect("the last generated batch commits");
    store.checkpoint().expect("the generated store checkpoints");
    first_id.expect("at least one run")
}

/// `events` cut where each of `starts` begins a row.
fn rows(events: &[StoredEvent], starts: &[u64]) -> Vec<Vec<StoredEvent>> {
    let mut out: Vec<Vec<StoredEvent>> = Vec::new();
    for event in events {
        match out.last_mut() {
            Some(row) if !starts.contains(&event.seq) => row.push(event.clone()),
            _ => out.push(vec![event.clone()]),
        }
    }
    out
}

/// What one start on the store took.
struct Started {
    /// From spawning the process to its listening line (store loaded, port bound).
    listening_ms: f64,
    /// From spawning the process to the first health check answering SERVING.
    ready_ms: f64,
    /// The server's RSS once ready.
    rss_mb: f64,
    /// A `GetRun` of the oldest stored run, once ready.
    get_run_ms: f64,
}

async fn start(program: Option<&Path>, data_dir: &Path, old_run: &str) -> (Server, Started) {
    let t = Instant::now();
    let server = Server::runstream_on(program, data_dir);
    let listening_ms = ms(t.elapsed());
    let request = HealthCheckRequest { service: "runstream.v1.RunService".into() };
    loop {
        let serving = async {
            let channel = client::try_channel(server.addr).await?;
            let response = HealthClient::new(channel).check(request.clone()).await.ok()?;
            (response.into_inner().status == ServingStatus::Serving as i32).then_some(())
        };
        if serving.await.is_some() {
            break;
        }
        assert!(t.elapsed() < START_DEADLINE, "the server was not SERVING {START_DEADLINE:?} after its start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready_ms = ms(t.elapsed());
    let rss_mb = server.rss().map(|b| b / 1e6).unwrap_or(f64::NAN);
    let mut c = client::client(&client::channel(server.addr).await);
    let t = Instant::now();
    let info = c
        .get_run(pb::GetRunRequest { run_id: old_run.to_string() })
        .await
        .expect("GetRun of a stored run after the restart")
        .into_inner();
    let get_run_ms = ms(t.elapsed());
    assert_eq!(info.status, pb::RunStatus::Success as i32, "the stored run is a finished chain run: {info:?}");
    // And the server takes new runs.
    let drained = client::drain(
        c.stream_run(stream_request("chain", json!({ "value": 1 })))
            .await
            .expect("StreamRun after restart")
            .into_inner(),
    )
    .await
    .expect("a chain run after the restart");
    client::expect_finish(&drained, pb::RunStatus::Success, "chain after restart");
    (server, Started { listening_ms, ready_ms, rss_mb, get_run_ms })
}

//! `runstream serve`: runs the service with the built-in workflows.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand, ValueEnum};
use runstream::{
    clock::SystemClock,
    grpc::{ServiceConfig, wire::WireEncoder},
    registry::RunRegistry,
    server,
    store::{SqliteStore, sqlite::Sync},
    workflows,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(name = "runstream", version, about = "Runs workflows and streams every event of every run over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve RunService, reflection and health on one port.
    Serve {
        /// Address to listen on; port 0 picks a free port (the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Where runs are kept: `sqlite` (one file, runstream.db, under --data-dir; runs survive restarts and
        /// crashes) or `memory` (nothing survives the process).
        #[arg(long, value_enum, default_value = "sqlite")]
        store: StoreKind,
        /// Directory of the SQLite store (created if missing).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// `normal`: a stored event survives the process being killed; `full`: also an OS crash or power loss
        /// (an fsync per commit, slower).
        #[arg(long, value_enum, default_value = "normal")]
        sync: SyncMode,
        /// How long finished runs (result and log) are kept after they end, and how long any run keeps its
        /// events: e.g. `7d`, `12h`, `30m`, `90s`. Older cursors get OUT_OF_RANGE naming the earliest seq kept.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        retention: std::time::Duration,
        #[command(flatten)]
        limits: Limits,
    },
}

/// Message size limits. gRPC clients refuse messages over 4 MiB unless told otherwise, so raising a limit here
/// means raising it in every client too (grpcurl -max-msg-sz, grpcio grpc.max_receive_message_length).
#[derive(Debug, clap::Args)]
struct Limits {
    /// The largest request accepted (e.g. a run's input), in bytes or with a unit (`4MiB`, `512KiB`, `8MB`);
    /// larger ones get RESOURCE_EXHAUSTED naming the limit.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    max_request_bytes: usize,
    /// The largest response sent (a GetResult answer; a larger one is RESOURCE_EXHAUSTED naming its size).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    max_response_bytes: usize,
    /// The largest event streamed, at most --max-response-bytes (the default): a step's write or output that
    /// would be larger is refused and fails the step with a message that says so; it is never streamed.
    #[arg(long, value_parser = parse_size)]
    max_event_bytes: Option<usize>,
}

/// A byte count: digits, optionally followed by `KiB`, `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB`.
fn parse_size(text: &str) -> Result<usize, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number of bytes, optionally with a unit, e.g. 4MiB, 512KiB, 8MB"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("{text:?}: the unit must be KiB, MiB, GiB, KB, MB or GB (e.g. 4MiB)")),
    };
    match n.checked_mul(scale) {
        // Under a kilobyte not even a run's first event fits.
        Some(bytes) if bytes >= 1024 => Ok(bytes),
        Some(_) => Err(format!("{text:?}: at least 1KiB")),
        None => Err(format!("{text:?}: too large")),
    }
}

/// `<n><unit>` with unit `d`, `h`, `m` or `s`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 7d, 12h, 30m, 90s"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => return Err(format!("{text:?}: the unit must be d, h, m or s (e.g. 7d, 12h, 30m, 90s)")),
    };
    match secs {
        Some(secs) if secs > 0 => Ok(std::time::Duration::from_secs(secs)),
        Some(_) => Err(format!("{text:?}: retention must be longer than zero")),
        None => Err(format!("{text:?}: too long")),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StoreKind {
    Sqlite,
    Memory,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyncMode {
    Normal,
    Full,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { listen, store, data_dir, sync, retention, limits } => {
            match runtime.block_on(serve(listen, store, data_dir, sync, retention, limits)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(
    listen: SocketAddr,
    store: StoreKind,
    data_dir: PathBuf,
    sync: SyncMode,
    retention: std::time::Duration,
    limits: Limits,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_event_bytes = limits.max_event_bytes.unwrap_or(limits.max_response_bytes);
    if max_event_bytes > limits.max_response_bytes {
        return Err(format!(
            "--max-event-bytes ({max_event_bytes}) is larger than --max-response-bytes ({}): an event is a response; \
             raise --max-response-bytes too",
            limits.max_response_bytes
        )
        .into());
    }
    let config = ServiceConfig {
        max_request_bytes: limits.max_request_bytes,
        max_response_bytes: limits.max_response_bytes,
        ..ServiceConfig::default()
    };
    let encoder = Arc::new(WireEncoder::new(max_event_bytes));
    // The store first: a bad store must stop the server before it takes calls.
    let registry = match store {
        StoreKind::Memory => RunRegistry::with_encoder(workflows::builtin_catalog(), Arc::new(SystemClock), encoder),
        StoreKind::Sqlite => {
            let sync = match sync {
                SyncMode::Normal => Sync::Normal,
                SyncMode::Full => Sync::Full,
            };
            let store = SqliteStore::open(&data_dir, sync)?;
            info!(store = %runstream::store::RunStore::describe(&store), "opened the run store");
            RunRegistry::open_with_encoder(
                workflows::builtin_catalog(),
                Arc::new(SystemClock),
                Arc::new(store),
                encoder,
            )?
        }
    };
    registry.spawn_retention(retention);
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // Tests and scripts read this line to learn the port; keep its format.
    println!("runstream listening on {local}");
    info!(%local, "serving runstream.v1.RunService");
    server::serve(listener, registry.clone(), config, shutdown).await?;
    // Whatever runs appended while the server stopped is stored before the process exits.
    tokio::task::spawn_blocking(move || registry.flush()).await?;
    info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                error!("cannot listen for SIGTERM: {e}");
                let _ = interrupt.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutting down: no new calls, open streams end");
    shutdown.cancel();
}

//! A server whose workflow runs its steps in worker processes (`runstream.v1.WorkerService`, docs/workers.md).
//!
//! ```sh
//! cargo run --example workers -- --listen 127.0.0.1:50051 --data-dir ./workers-data
//! ```
//!
//! `thumbnails` lists images (task type `list-images`), resizes each in a foreach of 10 at once (`resize-image`)
//! and reports how many it made. Any worker serving those task types runs them; `ListWorkers` shows who is
//! connected. `--lease-ms` shortens the lease (tests).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use runstream::{
    Server, Store,
    engine::{Step, StepOutcome, Workflow},
    worker::{WorkerHub, WorkerSettings},
};
use serde_json::json;

fn thumbnails(hub: &Arc<WorkerHub>) -> Arc<Workflow> {
    Workflow::builder("thumbnails")
        .then(hub.step("list", "list-images").description("Lists the images to resize (a worker)."))
        .foreach(hub.step("resize", "resize-image").description("Resizes one image (a worker)."), 10)
        .then(Step::new("report", |ctx| async move {
            Ok(StepOutcome::Done(json!({ "thumbnails": ctx.input().as_array().map_or(0, Vec::len) })))
        }))
        .commit()
}

struct Args {
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    lease: Option<Duration>,
}

/// `--listen ADDR` (default 127.0.0.1:50051), `--data-dir DIR` (SQLite; default: memory), `--lease-ms N`.
fn args() -> Result<Args, String> {
    let mut parsed = Args { listen: SocketAddr::from(([127, 0, 0, 1], 50051)), data_dir: None, lease: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--listen" => parsed.listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?,
            "--data-dir" => parsed.data_dir = Some(PathBuf::from(value)),
            "--lease-ms" => {
                let ms: u64 = value.parse().map_err(|e| format!("--lease-ms {value}: {e}"))?;
                parsed.lease = Some(Duration::from_millis(ms.max(1)));
            }
            _ => return Err(format!("unknown argument {arg}; use --listen ADDR, --data-dir DIR, --lease-ms N")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = WorkerSettings::default();
    if let Some(lease) = args.lease {
        settings.lease_duration = lease;
        settings.heartbeat_interval = lease / 4;
    }
    let hub = WorkerHub::new(settings);
    let server = Server::builder()
        .listen(args.listen)
        .store(args.data_dir.map_or(Store::Memory, Store::sqlite))
        .workflow(thumbnails(&hub))
        .workers(hub);
    let served = async {
        let listening = server.build()?.bind().await?;
        println!("runstream listening on {}", listening.local_addr());
        listening
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    };
    match served.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

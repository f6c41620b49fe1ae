//! `runstream serve`: the service with the built-in demos, configured by flags ([`runstream::Server`] underneath);
//! `runstream backup`: a consistent copy of a running server's store.

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    str::FromStr,
    sync::Arc,
};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, error::ErrorKind};
use runstream::{
    ServeError, Server, ServerBuilder, Store, Tls,
    auth::{Auth, TokenTable},
    model::{ModelProvider, OfflineModel, OpenAiConfig, OpenAiModel, RetryPolicy, RetryingModel, parse_base_url},
    store::sqlite::Sync,
    worker::WorkerSettings,
};
use tracing::{error, info, warn};

/// mimalloc gives freed memory back to the OS (glibc's malloc keeps most of it after a burst), so that memory freed
/// when runs leave memory shows as a smaller RSS (issue 12: memory follows live work).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "runstream", version, about = "Runs workflows and streams every event of every run over gRPC")]
struct Cli {
    /// How log lines (stderr) look: `text` for people, `json` for log pipelines (one object a line, with the
    /// fields of the spans it is in: a run's lines carry its `run_id`, `workflow` and `trace_id`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve RunService, reflection and health on one port.
    Serve(Box<ServeArgs>),
    /// Copy a store to one file, consistently, while its server runs (SQLite's online backup).
    ///
    /// The copy holds every commit made before the backup began. To restore it, stop the server and put the
    /// file in an empty data dir as runstream.db.
    Backup {
        /// The data dir of the store to copy (the server's --data-dir).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The file to write; refused if it exists, unless --force.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// `runstream serve`: what to serve, where runs are kept, who may call, the limits.
#[derive(Debug, clap::Args)]
struct ServeArgs {
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
    /// How long a finished or suspended run stays in memory once nobody reads it, e.g. `2s`, `5m`, `0s`; then
    /// it is read from the store when asked for (SQLite store only: a memory store keeps every run).
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    evict_after: std::time::Duration,
    /// Serve none of the built-in demo workflows, agents and networks.
    #[arg(long)]
    no_builtins: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    workers: WorkerArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// TLS on the gRPC port. Without it the port is plaintext: fine on loopback or behind a proxy or mesh that
/// terminates TLS (Envoy, Linkerd); anywhere else, give a certificate.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "TLS")]
struct TlsArgs {
    /// Serve TLS only, with this certificate chain (a PEM file, the server's certificate first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (a PEM file).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: only clients with a certificate signed by this CA (a PEM file) get in; needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files read, or what could not be read.
    fn load(&self) -> Result<Option<Tls>, String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let tls = Tls::new(read("--tls-cert", cert)?, read("--tls-key", key)?);
        Ok(Some(match &self.tls_client_ca {
            Some(ca) => tls.client_ca(read("--tls-client-ca", ca)?),
            None => tls,
        }))
    }
}

/// Who may call. `none` (the default) is for loopback, or behind a proxy that authenticates: every caller is one
/// tenant with every right.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Authentication")]
struct AuthArgs {
    /// `none`, or `tokens`: every call but health and reflection needs the metadata `authorization: Bearer TOKEN`
    /// with a token of --tokens-file, and sees only its tenant's runs.
    #[arg(long, value_enum, default_value = "none")]
    auth: AuthKind,
    /// With --auth tokens: one `TOKEN TENANT [ROLE]` per line (ROLE `read-write`, the default, or `read-only`; `#`
    /// starts a comment); read again on SIGHUP.
    #[arg(long, value_name = "PATH", required_if_eq("auth", "tokens"))]
    tokens_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthKind {
    None,
    Tokens,
}

impl AuthArgs {
    /// The server's [`Auth`], and the tokens file to read again on SIGHUP.
    fn build(&self) -> Result<(Auth, Option<PathBuf>), String> {
        match (self.auth, &self.tokens_file) {
            (AuthKind::None, None) => Ok((Auth::none(), None)),
            (AuthKind::None, Some(_)) => Err("--tokens-file is given but --auth is none; add --auth tokens".into()),
            (AuthKind::Tokens, Some(path)) => Ok((Auth::tokens(read_tokens(path)?), Some(path.clone()))),
            (AuthKind::Tokens, None) => Err("--auth tokens needs --tokens-file PATH".into()),
        }
    }
}

/// A tokens file, or why it cannot be used.
fn read_tokens(path: &Path) -> Result<TokenTable, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read --tokens-file {}: {e}", path.display()))?;
    let table = TokenTable::parse(&text).map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
    if table.is_empty() {
        return Err(format!("--tokens-file {} lists no token: every call would be refused", path.display()));
    }
    Ok(table)
}

/// Reads the tokens file again on each SIGHUP; a file that cannot be used leaves the tokens in use as they are.
#[cfg(unix)]
fn reload_tokens_on_hangup(auth: Auth, path: PathBuf) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            warn!("cannot listen for SIGHUP, so the tokens file is read only at start: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match read_tokens(&path) {
                Ok(table) => {
                    let count = table.len();
                    auth.replace_tokens(table);
                    info!(tokens = count, file = %path.display(), "read the tokens file again");
                }
                Err(e) => error!("{e}; the tokens in use stay"),
            }
        }
    });
}

/// The worker protocol's timings (docs/workers.md), told to each worker in its Welcome.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Workers (remote steps)")]
struct WorkerArgs {
    /// How often a worker must heartbeat the tasks it runs (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    worker_heartbeat: std::time::Duration,
    /// How long a task stays with a worker not heard from; then it goes to another worker as its next attempt.
    /// Longer than --worker-heartbeat; a shorter lease hands work on sooner after a crash, a longer one rides out
    /// longer network cuts.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    worker_lease: std::time::Duration,
    /// The largest message accepted from a worker (a task's output or write), like the size flags.
    #[arg(long, default_value = "4MiB", value_parser = parse_size, value_name = "BYTES")]
    max_worker_message_bytes: usize,
}

impl WorkerArgs {
    fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            heartbeat_interval: self.worker_heartbeat,
            lease_duration: self.worker_lease,
            max_message_bytes: self.max_worker_message_bytes,
        }
    }
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
    /// The most calls (streams) one connection may have open at once; a gRPC client over it waits for one to end.
    #[arg(long, default_value_t = runstream::ServiceConfig::DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// The most runs executing at once (suspended ones do not count); over it a start or resume is UNAVAILABLE,
    /// telling the client to retry later or elsewhere.
    #[arg(long, default_value_t = runstream::RunLimits::default().max_running, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_running_runs: usize,
    /// The most runs of one tenant executing at once; over it that tenant's start or resume is RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = runstream::RunLimits::default().max_running_per_tenant, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_running_runs_per_tenant: usize,
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

/// The settings that choose the model of the built-in agents and networks and of registered agents. Each flag can be given instead by its
/// environment variable; a flag wins over its variable.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model (built-in and registered agents)")]
struct ModelArgs {
    /// `offline` or the name of a model an OpenAI-compatible server serves.
    ///
    /// `offline` (the default) is a deterministic stand-in that needs no network; it is not a language model.
    /// Any other name (e.g. `gpt-4o-mini`, `llama3.2`, `Qwen/Qwen3-8B`) is asked of the OpenAI-compatible Chat
    /// Completions server at --model-base-url.
    #[arg(long, env = "RUNSTREAM_MODEL", default_value = OfflineModel::MODEL_ID, value_name = "NAME")]
    model: String,
    /// The model server's API root, up to and including /v1 [default: https://api.openai.com/v1].
    ///
    /// An http:// or https:// URL, e.g. http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (vLLM),
    /// http://127.0.0.1:8080/v1 (llama.cpp's server), http://127.0.0.1:1234/v1 (LM Studio). Only with a --model
    /// other than `offline`.
    #[arg(long, env = "RUNSTREAM_MODEL_BASE_URL", value_name = "URL")]
    model_base_url: Option<String>,
    /// The model server's API key, sent as `Authorization: Bearer` [default: $OPENAI_API_KEY].
    ///
    /// Local servers need none. Prefer the environment variable: other users of the machine can read a flag in
    /// the process list. Its value is never printed.
    #[arg(long, env = "RUNSTREAM_MODEL_API_KEY", hide_env_values = true, value_name = "KEY")]
    model_api_key: Option<ApiKey>,
}

/// The settings' names as messages give them, flag and variable.
const MODEL_SETTING: &str = "RUNSTREAM_MODEL / --model";
const BASE_URL_SETTING: &str = "RUNSTREAM_MODEL_BASE_URL / --model-base-url";

/// An API key; `Debug` does not show it.
#[derive(Clone)]
struct ApiKey(String);

impl FromStr for ApiKey {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Infallible> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ModelArgs {
    /// The model these settings name (`openai_api_key`: `OPENAI_API_KEY`, the key's fallback), or why they cannot
    /// be used, naming the setting and what to write instead. Empty values count as unset.
    fn build(&self, openai_api_key: Option<String>) -> Result<Arc<dyn ModelProvider>, String> {
        let name = self.model.trim();
        let base_url = self.model_base_url.as_deref().map(str::trim).filter(|url| !url.is_empty());
        if name.is_empty() || name.eq_ignore_ascii_case(OfflineModel::MODEL_ID) {
            return match base_url {
                Some(url) => Err(format!(
                    "{BASE_URL_SETTING} is set ('{url}') but {MODEL_SETTING} is offline; set {MODEL_SETTING} to \
                     the name of the model that server serves (e.g. RUNSTREAM_MODEL=llama3.2 or --model llama3.2), \
                     or unset {BASE_URL_SETTING} to use the offline model"
                )),
                None => {
                    info!(
                        "agents and networks use the offline model (a scripted stand-in; --model names \
                         a real one)"
                    );
                    Ok(Arc::new(OfflineModel::new()))
                }
            };
        }
        let text = base_url.unwrap_or(OpenAiConfig::DEFAULT_BASE_URL);
        let url = parse_base_url(text).map_err(|e| format!("{BASE_URL_SETTING} {e}"))?;
        let api_key = self
            .model_api_key
            .as_ref()
            .map(|key| key.0.trim().to_owned())
            .filter(|key| !key.is_empty())
            .or_else(|| openai_api_key.map(|key| key.trim().to_owned()).filter(|key| !key.is_empty()));
        if api_key.is_none() && url.host_str() == Some("api.openai.com") {
            let which = if base_url.is_none() { " (the default)" } else { "" };
            return Err(format!(
                "{MODEL_SETTING} is '{name}' and {BASE_URL_SETTING} is OpenAI's, {text}{which}, which needs an API \
                 key; set RUNSTREAM_MODEL_API_KEY (or OPENAI_API_KEY) to your key, or set {BASE_URL_SETTING} to \
                 the server that serves '{name}', e.g. http://127.0.0.1:11434/v1 for Ollama"
            ));
        }
        if url.path() == "/" {
            warn!(
                "{BASE_URL_SETTING} '{text}' has no path: requests go to {url}chat/completions; most servers serve \
                 the API under /v1 (write {url}v1)"
            );
        }
        let mut config = OpenAiConfig::new(text, name);
        config.api_key = api_key;
        let client = OpenAiModel::new(config).map_err(|e| e.to_string())?;
        info!(model = name, base_url = text, "agents and networks use this model");
        Ok(Arc::new(RetryingModel::new(Arc::new(client), RetryPolicy::default())))
    }
}

/// Reports a setting that cannot be used as clap reports a bad argument (`error: ...`, the usage, exit code 2).
fn setting_error(message: String) -> ExitCode {
    let mut command = Cli::command();
    command.build();
    let error = match command.find_subcommand_mut("serve") {
        Some(serve) => serve.error(ErrorKind::ValueValidation, message),
        None => command.error(ErrorKind::ValueValidation, message),
    };
    let _ = error.print();
    ExitCode::from(2)
}

/// [`parse_duration`], or zero: `0`, `0s` or `0ms`.
fn parse_delay(text: &str) -> Result<std::time::Duration, String> {
    match text {
        "0" | "0s" | "0ms" => Ok(std::time::Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// `<n><unit>` with unit `d`, `h`, `m`, `s` or `ms`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 7d, 12h, 30m, 90s, 500ms"))?;
    let millis = match unit {
        "d" => n.checked_mul(86_400_000),
        "h" => n.checked_mul(3_600_000),
        "m" => n.checked_mul(60_000),
        "s" => n.checked_mul(1_000),
        "ms" => Some(n),
        _ => return Err(format!("{text:?}: the unit must be d, h, m, s or ms (e.g. 7d, 12h, 30m, 90s, 500ms)")),
    };
    match millis {
        Some(millis) if millis > 0 => Ok(std::time::Duration::from_millis(millis)),
        Some(_) => Err(format!("{text:?}: must be longer than zero")),
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
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let serve_args = match cli.command {
        Command::Serve(args) => *args,
        Command::Backup { data_dir, to, force } => return backup(&data_dir, &to, force),
    };
    let ServeArgs {
        listen,
        store,
        data_dir,
        sync,
        retention,
        evict_after,
        tls,
        auth,
        limits,
        workers,
        model,
        no_builtins,
    } = serve_args;
    // The model before anything else: a setting that cannot be used stops the server before it opens the store.
    let model = match model.build(std::env::var("OPENAI_API_KEY").ok()) {
        Ok(model) => model,
        Err(message) => return setting_error(message),
    };
    let builder = Server::builder()
        .listen(listen)
        .store(match store {
            StoreKind::Memory => Store::Memory,
            StoreKind::Sqlite => Store::Sqlite {
                data_dir,
                sync: match sync {
                    SyncMode::Normal => Sync::Normal,
                    SyncMode::Full => Sync::Full,
                },
            },
        })
        .retention(retention)
        .evict_after(evict_after)
        .builtins(!no_builtins)
        .model(model)
        .max_request_bytes(limits.max_request_bytes)
        .max_response_bytes(limits.max_response_bytes)
        .max_streams_per_connection(limits.max_streams_per_connection)
        .run_limits(runstream::RunLimits {
            max_running: limits.max_running_runs,
            max_running_per_tenant: limits.max_running_runs_per_tenant,
        })
        .worker_settings(workers.settings());
    let builder = match limits.max_event_bytes {
        Some(bytes) => builder.max_event_bytes(bytes),
        None => builder,
    };
    let builder = match tls.load() {
        Ok(Some(tls)) => builder.tls(tls),
        Ok(None) => builder,
        Err(message) => return setting_error(message),
    };
    let (auth, tokens_file) = match auth.build() {
        Ok(built) => built,
        Err(message) => return setting_error(message),
    };
    if !auth.is_required() && !listen.ip().is_loopback() {
        warn!(
            %listen,
            "serving without authentication on an address other hosts can reach: anyone who reaches it can read, \
             start and cancel every run; use --auth tokens (README: \"Running it exposed\")"
        );
    }
    let builder = builder.auth(auth.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(unix)]
    if let Some(path) = tokens_file {
        let _entered = runtime.enter();
        reload_tokens_on_hangup(auth, path);
    }
    #[cfg(not(unix))]
    let _ = (auth, tokens_file);
    match runtime.block_on(serve(builder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `runstream backup`: says what it copied on stdout, or why it did not on stderr (exit code 1).
fn backup(data_dir: &Path, to: &Path, force: bool) -> ExitCode {
    match runstream::store::backup::backup(data_dir, to, force) {
        Ok(report) => {
            println!(
                "backed up {} runs and {} definition versions ({} bytes) from {} to {}",
                report.runs,
                report.definitions,
                report.bytes,
                report.source.display(),
                report.target.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(builder: ServerBuilder) -> Result<(), ServeError> {
    // The store first (in build): a bad store must stop the server before it takes calls.
    let listening = builder.build()?.bind().await?;
    let local = listening.local_addr();
    // Tests and scripts read this line to learn the port; keep its format.
    println!("runstream listening on {local}");
    info!(%local, "serving runstream.v1.RunService");
    listening.serve(stop_on_signal()).await?;
    info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn stop_on_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                error!("cannot listen for SIGTERM: {e}");
                let _ = interrupt.await;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn settings(model: &str, base_url: Option<&str>, api_key: Option<&str>) -> ModelArgs {
        ModelArgs {
            model: model.to_owned(),
            model_base_url: base_url.map(str::to_owned),
            model_api_key: api_key.map(|key| ApiKey(key.to_owned())),
        }
    }

    fn error(args: ModelArgs, openai_api_key: Option<&str>) -> String {
        match args.build(openai_api_key.map(str::to_owned)) {
            Ok(model) => panic!("{args:?} built {} {}", model.provider(), model.model_id()),
            Err(message) => message,
        }
    }

    #[test]
    fn the_settings_pick_the_model() {
        for model in ["offline", "", " Offline "] {
            let offline = settings(model, None, None).build(Some("sk-1".to_owned())).unwrap();
            assert_eq!((offline.provider(), offline.model_id()), ("offline", "offline"), "{model:?}");
        }
        // An empty base URL (an empty variable) counts as unset.
        assert_eq!(settings("offline", Some(" "), None).build(None).unwrap().provider(), "offline");
        let local = settings("llama3.2", Some("http://127.0.0.1:11434/v1"), None).build(None).unwrap();
        assert_eq!((local.provider(), local.model_id()), ("openai-compatible", "llama3.2"));
        let openai = settings("gpt-4o-mini", None, None).build(Some("sk-1".to_owned())).unwrap();
        assert_eq!(openai.model_id(), "gpt-4o-mini");
        assert!(settings("gpt-4o-mini", None, Some("sk-2")).build(None).is_ok());
    }

    #[test]
    fn settings_that_cannot_be_used_say_what_to_write() {
        assert_eq!(
            error(settings("x", Some("127.0.0.1:9"), None), None),
            "RUNSTREAM_MODEL_BASE_URL / --model-base-url '127.0.0.1:9' has no scheme; write http://127.0.0.1:9/v1 \
             (https:// if the server uses TLS)"
        );
        let message = error(settings("offline", Some("http://127.0.0.1:11434/v1"), None), None);
        assert!(
            message.starts_with(
                "RUNSTREAM_MODEL_BASE_URL / --model-base-url is set ('http://127.0.0.1:11434/v1') but RUNSTREAM_MODEL \
                 / --model is offline; set RUNSTREAM_MODEL / --model to the name of the model"
            ),
            "{message}"
        );
        let message = error(settings("llama3.2", None, Some(" ")), Some(""));
        assert!(message.contains("https://api.openai.com/v1 (the default), which needs an API key"), "{message}");
        assert!(message.contains("e.g. http://127.0.0.1:11434/v1 for Ollama"), "{message}");
        let message = error(settings("x", Some("ftp://h/v1"), None), None);
        assert!(message.contains("'ftp://h/v1' is not an http:// or https:// URL; write http://h/v1"), "{message}");
    }

    #[test]
    fn durations_take_units_down_to_milliseconds() {
        assert_eq!(parse_duration("7d"), Ok(std::time::Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert!(parse_duration("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_duration("5 minutes").unwrap_err().contains("d, h, m, s or ms"));
        assert!(parse_duration("99999999999999999d").unwrap_err().contains("too long"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let text = format!("{:?}", settings("m", None, Some("sk-secret")));
        assert!(!text.contains("sk-secret"), "{text}");
    }
}

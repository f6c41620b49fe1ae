//! The way to run runstream: [`Server::builder`] collects what to serve (your workflows, agents and networks, and the
//! built-in demos if you want them), where runs are kept and the limits; [`Server`] serves them over gRPC until a
//! shutdown signal, then stores what is left to store. `runstream serve` is this builder with flags.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    agent::{self, Agent},
    auth::Auth,
    builtin,
    clock::{Clock, SystemClock},
    definition,
    engine::{Workflow, WorkflowCatalog},
    grpc::{
        ServiceConfig,
        serve::{Access, GrpcError},
        tls::Tls,
        wire::WireEncoder,
    },
    model::{ModelProvider, OfflineModel},
    network::{self, Network},
    registry::{DefinitionCompiler, RunLimits, RunRegistry},
    store::{RunStore, SqliteStore, StoreError, sqlite::Sync},
    worker::{WorkerHub, WorkerSettings},
};

/// Where a server keeps its runs.
#[derive(Clone, Default)]
pub enum Store {
    /// In memory only: nothing outlives the process (tests, throwaway use). The default of the builder.
    #[default]
    Memory,
    /// One SQLite file, `runstream.db`, in `data_dir` (created if missing): runs survive restarts and crashes.
    Sqlite {
        /// The directory of the database file.
        data_dir: PathBuf,
        /// How hard each commit is pushed to disk.
        sync: Sync,
    },
    /// A store of your own (see [`RunStore`]).
    Custom(Arc<dyn RunStore>),
}

impl Store {
    /// SQLite in `data_dir`, with the default sync (a commit survives the process being killed).
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Self {
        Self::Sqlite { data_dir: data_dir.into(), sync: Sync::Normal }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Sqlite { data_dir, sync } => {
                f.debug_struct("Sqlite").field("data_dir", data_dir).field("sync", sync).finish()
            }
            Self::Custom(store) => f.debug_tuple("Custom").field(&store.describe()).finish(),
        }
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or read; nothing was changed in it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Two things to serve share an id (ids are one namespace across workflows, agents and networks).
    #[error("'{id}' is served twice (as a {first} and as a {second}); give one of them another id")]
    DuplicateId {
        /// The id.
        id: String,
        /// What had it first: "workflow", "agent" or "network".
        first: &'static str,
        /// What asked for it again.
        second: &'static str,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The final store flush could not run.
    #[error("storing the last changes failed: {0}")]
    Flush(String),
}

/// Builds a [`Server`]. Every setting has a default: an empty server on 127.0.0.1:50051 keeping runs in memory.
#[must_use]
pub struct ServerBuilder {
    listen: SocketAddr,
    store: Store,
    retention: Duration,
    evict_after: Duration,
    runnables: Vec<Arc<Workflow>>,
    builtins: bool,
    model: Option<Arc<dyn ModelProvider>>,
    config: ServiceConfig,
    max_event_bytes: Option<usize>,
    clock: Arc<dyn Clock>,
    workers: Option<Arc<WorkerHub>>,
    worker_settings: Option<WorkerSettings>,
    tls: Option<Tls>,
    auth: Auth,
    run_limits: RunLimits,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            store: Store::Memory,
            retention: Duration::from_secs(7 * 86_400),
            evict_after: Duration::from_secs(2),
            runnables: Vec::new(),
            builtins: false,
            model: None,
            config: ServiceConfig::default(),
            max_event_bytes: None,
            clock: Arc::new(SystemClock),
            workers: None,
            worker_settings: None,
            tls: None,
            auth: Auth::none(),
            run_limits: RunLimits::default(),
        }
    }
}

impl ServerBuilder {
    /// The address to listen on (default `127.0.0.1:50051`; port 0 picks a free port, see [`Listening`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Where runs are kept (default [`Store::Memory`]).
    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// How long a finished run (result and log) is kept after it ends, and how long any run keeps its events
    /// (default 7 days).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a finished or suspended run stays in memory once nobody reads it or acts on it (default 2 s); then
    /// it leaves memory and is read from the store when a client asks for it, so that memory follows live work, not
    /// history. Only with a store to read it from: [`Store::Memory`] keeps every run in memory until its retention.
    pub fn evict_after(mut self, idle: Duration) -> Self {
        self.evict_after = idle;
        self
    }

    /// Serves a workflow (`StreamRun` with `workflow_id`).
    pub fn workflow(mut self, workflow: Arc<Workflow>) -> Self {
        self.runnables.push(workflow);
        self
    }

    /// Serves an agent (`StreamRun` with `agent_id`), as a one-step run of the agent's id.
    pub fn agent(mut self, agent: Arc<Agent>) -> Self {
        self.runnables.push(agent::workflow(agent));
        self
    }

    /// Serves an agent network (`StreamRun` with `network_id`).
    pub fn network(mut self, network: Arc<Network>) -> Self {
        self.runnables.push(network::workflow(network));
        self
    }

    /// Serves everything in `catalog`.
    pub fn catalog(mut self, catalog: WorkflowCatalog) -> Self {
        self.runnables.extend(catalog.list());
        self
    }

    /// Also serves the built-in demos (`chain`, `order-approval`, the `assistant` agent, ...; see the README);
    /// default false.
    pub fn builtins(mut self, include: bool) -> Self {
        self.builtins = include;
        self
    }

    /// The server's model provider (default: the offline stand-in): the model of the built-in agents and networks
    /// and of agents registered over gRPC (an `AgentDefinition` naming another model gets it from this provider).
    pub fn model(mut self, model: Arc<dyn ModelProvider>) -> Self {
        self.model = Some(model);
        self
    }

    /// The largest request accepted (default 4 MiB); larger ones get RESOURCE_EXHAUSTED.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }

    /// The largest response sent (default 4 MiB, what gRPC clients accept unless told otherwise).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.config.max_response_bytes = bytes;
        self
    }

    /// How many runs may execute at once, in all (over it a start or resume is UNAVAILABLE: retry later or
    /// elsewhere) and per tenant (over it RESOURCE_EXHAUSTED for that tenant); suspended runs do not count.
    pub fn run_limits(mut self, limits: RunLimits) -> Self {
        self.run_limits = limits;
        self
    }

    /// The most streams one connection may have open at once (default 1,000).
    pub fn max_streams_per_connection(mut self, streams: u32) -> Self {
        self.config.max_streams_per_connection = streams;
        self
    }

    /// The largest event streamed (default: the response limit); a step's write or output that would be larger is
    /// refused and fails the step.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = Some(bytes);
        self
    }

    /// The service's limits and timings all at once.
    pub fn service_config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock runs read and sleep on (default: the system's); tests move time with their own.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The worker hub that `runstream.v1.WorkerService` connects workers to: the one whose
    /// [`WorkerHub::step`]s your workflows use. Without it the server has a hub of its own. Either way the steps of
    /// workflows registered over gRPC (`RegisterWorkflow`) run in this hub's workers.
    ///
    /// ```no_run
    /// use runstream::{Server, engine::Workflow, worker::{WorkerHub, WorkerSettings}};
    ///
    /// # async fn run() -> Result<(), runstream::ServeError> {
    /// let hub = WorkerHub::new(WorkerSettings::default());
    /// let thumbnails = Workflow::builder("thumbnails").then(hub.step("resize", "resize-image")).commit();
    /// Server::builder().workers(hub).workflow(thumbnails).serve(std::future::pending()).await
    /// # }
    /// ```
    pub fn workers(mut self, hub: Arc<WorkerHub>) -> Self {
        self.workers = Some(hub);
        self
    }

    /// The worker protocol's timings and limits (heartbeat interval, lease, largest message) of the hub the server
    /// makes for itself when it is given none (default [`WorkerSettings::default`]). A hub given with
    /// [`workers`](Self::workers) has its own settings: giving both is a [`ServeError::Config`].
    pub fn worker_settings(mut self, settings: WorkerSettings) -> Self {
        self.worker_settings = Some(settings);
        self
    }

    /// Serves over TLS (default: plaintext, for loopback or behind a proxy that terminates TLS). A certificate or
    /// key that cannot be used stops [`build`](Self::build) with [`ServeError::Config`].
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How callers prove who they are (default [`Auth::none`]: every caller is the default tenant, with every
    /// right). With tokens, every call but health and reflection needs `authorization: Bearer <token>`, and each run
    /// belongs to the tenant that started it. Keep a clone to replace the tokens while serving
    /// ([`Auth::replace_tokens`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Opens the store and loads what it holds (runs that were in flight are recovered and go on running), ready
    /// to serve. Must be called within a tokio runtime.
    pub fn build(self) -> Result<Server, ServeError> {
        let max_event_bytes = self.max_event_bytes.unwrap_or(self.config.max_response_bytes);
        if max_event_bytes > self.config.max_response_bytes {
            return Err(ServeError::Config(format!(
                "the event limit (--max-event-bytes, {max_event_bytes} bytes) is larger than the response limit \
                 (--max-response-bytes, {} bytes): an event is a response; raise the response limit too",
                self.config.max_response_bytes
            )));
        }
        // Before the store is opened: a certificate that cannot be used stops the server with nothing changed.
        let tls = self.tls.as_ref().map(Tls::server_config).transpose().map_err(ServeError::Config)?;
        let mut catalog = WorkflowCatalog::new();
        let mut add = |workflow: Arc<Workflow>| match catalog.get(workflow.id()) {
            Some(first) => Err(ServeError::DuplicateId {
                id: workflow.id().to_string(),
                first: first.kind().as_str(),
                second: workflow.kind().as_str(),
            }),
            None => {
                catalog.register(workflow);
                Ok(())
            }
        };
        let model = self.model.unwrap_or_else(|| Arc::new(OfflineModel::new()));
        if self.builtins {
            builtin::catalog_with(Arc::clone(&model)).list().into_iter().try_for_each(&mut add)?;
        }
        self.runnables.into_iter().try_for_each(&mut add)?;
        let encoder = Arc::new(WireEncoder::new(max_event_bytes));
        // Always a hub: workflows registered over gRPC run their steps in its workers.
        let workers = match (self.workers, self.worker_settings) {
            (Some(_), Some(_)) => {
                return Err(ServeError::Config(
                    "worker settings given twice: the hub given to .workers() has its own (WorkerHub::new(settings)); \
                     drop .worker_settings()"
                        .into(),
                ));
            }
            (Some(hub), None) => hub,
            (None, settings) => WorkerHub::new(settings.unwrap_or_default()),
        };
        check_worker_settings(workers.settings())?;
        let compiler: Arc<dyn DefinitionCompiler> = Arc::new(definition::Compiler::new(Arc::clone(&workers), model));
        let registry = match self.store {
            Store::Memory => RunRegistry::new_with(catalog, self.clock, encoder, Some(compiler)),
            Store::Sqlite { data_dir, sync } => {
                let store = SqliteStore::open(&data_dir, sync)?;
                tracing::info!(store = %store.describe(), "opened the run store");
                RunRegistry::open_with(catalog, self.clock, Arc::new(store), encoder, Some(compiler))?
            }
            Store::Custom(store) => RunRegistry::open_with(catalog, self.clock, store, encoder, Some(compiler))?,
        };
        registry.set_run_limits(self.run_limits);
        Ok(Server {
            registry,
            workers,
            config: self.config,
            listen: self.listen,
            retention: self.retention,
            evict_after: self.evict_after,
            access: Access { tls, auth: self.auth },
        })
    }

    /// [`build`](Self::build), bind the listen address and serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        self.build()?.bind().await?.serve(shutdown).await
    }
}

/// Worker timings that cannot work stop the server at start, naming the flag (and the field) to change.
fn check_worker_settings(settings: &WorkerSettings) -> Result<(), ServeError> {
    let WorkerSettings { heartbeat_interval, lease_duration, max_message_bytes } = settings;
    if heartbeat_interval.is_zero() {
        return Err(ServeError::Config(
            "the worker heartbeat interval (--worker-heartbeat, WorkerSettings::heartbeat_interval) must be longer \
             than zero"
                .into(),
        ));
    }
    if lease_duration <= heartbeat_interval {
        return Err(ServeError::Config(format!(
            "the worker lease (--worker-lease, WorkerSettings::lease_duration, {lease_duration:?}) must be longer \
             than the heartbeat interval (--worker-heartbeat, {heartbeat_interval:?}), or leases run out between \
             heartbeats; a lease of several heartbeats (the default is 6) survives a lost one"
        )));
    }
    if *max_message_bytes < 1024 {
        return Err(ServeError::Config(format!(
            "the largest worker message (--max-worker-message-bytes, WorkerSettings::max_message_bytes, \
             {max_message_bytes} bytes) must be at least 1KiB"
        )));
    }
    Ok(())
}

/// A runstream server, built by [`Server::builder`]: its runs are loaded and it is ready to serve.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use runstream::{Server, Store, engine::{Step, StepOutcome, Workflow}};
/// use serde_json::json;
///
/// # async fn run() -> Result<(), runstream::ServeError> {
/// let greet = Workflow::builder("greet")
///     .then(Step::new("hello", |ctx| async move {
///         ctx.writer().write(json!({ "note": "saying hello" })).await?;
///         Ok(StepOutcome::Done(json!({ "greeting": format!("hello, {}", ctx.input()["name"]) })))
///     }))
///     .commit();
/// Server::builder()
///     .listen("127.0.0.1:50051".parse().expect("an address"))
///     .store(Store::sqlite("./data"))
///     .workflow(greet)
///     .serve(async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
pub struct Server {
    registry: Arc<RunRegistry>,
    workers: Arc<WorkerHub>,
    config: ServiceConfig,
    listen: SocketAddr,
    retention: Duration,
    evict_after: Duration,
    access: Access,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Binds the listen address.
    pub async fn bind(self) -> Result<Listening, ServeError> {
        let addr = self.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        Ok(self.on(listener))
    }

    /// Serves on a listener you bound.
    pub fn on(self, listener: TcpListener) -> Listening {
        Listening { server: self, listener }
    }

    /// The run registry, for the project's own tests.
    #[doc(hidden)]
    pub fn registry(&self) -> &Arc<RunRegistry> {
        &self.registry
    }
}

/// A [`Server`] with its listener bound: its address is known (port 0 was given a free port).
#[derive(Debug)]
pub struct Listening {
    server: Server,
    listener: TcpListener,
}

impl Listening {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.server.listen)
    }

    /// Serves until `shutdown` completes: then no new calls are taken, open streams end with UNAVAILABLE naming
    /// the cursor to re-attach with, and what runs appended meanwhile is stored before this returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Server { registry, workers, config, retention, evict_after, access, .. } = self.server;
        registry.spawn_retention(retention);
        registry.spawn_eviction(evict_after);
        let token = CancellationToken::new();
        tokio::spawn({
            let token = token.clone();
            async move {
                shutdown.await;
                token.cancel();
            }
        });
        let grace = config.shutdown_grace;
        let served =
            crate::grpc::serve::serve_with_workers(self.listener, registry.clone(), workers, config, access, token)
                .await;
        // Whatever runs appended while the server stopped is stored before the caller goes on (e.g. exits), unless
        // the store refuses writes: then the stop still ends within its grace (what was not stored is recovered
        // from what the store holds, as after a crash; no client saw it, as events are shown only once stored).
        let flushed = tokio::task::spawn_blocking(move || registry.close(grace)).await;
        served?;
        flushed.map(drop).map_err(|e| ServeError::Flush(e.to_string()))
    }
}

//! The run registry: every run this server knows, shared by every RPC.
//!
//! The registry creates runs, hands out readers of their logs, claims resumes and cancels. It knows workflows and
//! runs, not gRPC: the gRPC layer translates requests into these calls and their errors into status codes.

mod admission;
mod definitions;
mod error;
mod log;
mod persist;
mod run;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use admission::RunLimits;
pub use definitions::{Definition, DefinitionCompiler, InvalidDefinition};
pub use error::RegistryError;
pub use log::{EventEncoder, EventLog, LogReader, LoggedEvent, ReadUntil};
pub use run::{Run, RunSpec, RunState, RunView};
use serde_json::{Map, Value};

use crate::{
    clock::Clock,
    engine::{ResumeRequest, RunKind, RunStatus, Workflow, WorkflowCatalog},
    store::{LoadedRun, RecoveryMark, RunQuery, RunRecord, RunStore, StoreError, StoredEvent, Write},
};
use definitions::Catalog;
use persist::Persister;

/// The longest client-chosen run id.
pub const MAX_RUN_ID_LEN: usize = 128;

/// What a caller asks for when starting a run (StartRun, StreamRun), before it is checked.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The id of the workflow, agent or network to run, according to `kind`.
    pub workflow_id: String,
    pub kind: RunKind,
    /// Empty: the registry assigns a UUIDv7.
    pub run_id: String,
    pub input: Value,
    pub request_context: Map<String, Value>,
    pub resource_id: String,
    /// The caller's tenant: the run is its alone.
    pub tenant: Arc<str>,
    pub tracing: Option<TraceContext>,
}

/// Trace propagation a caller sent with a run (Mastra's tracingOptions): the run's log lines carry the trace id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceContext {
    pub trace_id: String,
    pub parent_span_id: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

/// Whether a start created a run or found an existing one with that id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Created,
    Existing,
}

/// Filters for [`RunRegistry::list`]: the store's query.
pub type RunFilter = RunQuery;

pub struct RunRegistry {
    /// Changes while runs execute: definitions are registered at any time.
    catalog: RwLock<Catalog>,
    /// Compiles registered definitions; `None`: the registry takes none.
    compiler: Option<Arc<dyn DefinitionCompiler>>,
    /// Registrations are stored directly (not through the persister), before they are answered.
    store: Option<Arc<dyn RunStore>>,
    /// Held while a definition is registered, so versions are numbered and stored in order.
    registering: Mutex<()>,
    runs: RwLock<HashMap<Arc<str>, Arc<Run>>>,
    next_order: AtomicU64,
    clock: Arc<dyn Clock>,
    encoder: Arc<dyn EventEncoder>,
    /// The store's writer; `None`: runs live in memory only.
    persist: Option<Arc<Persister>>,
    /// Bumped by each sweep that evicts runs: a load from the store that overlapped one may have read a run that
    /// was resident and changed meanwhile, and reads it again (see [`Self::find`]).
    evictions: AtomicU64,
    /// How many runs execute at once, in all and per tenant.
    admission: Arc<admission::Admission>,
}

/// What looking a run up by id finds.
enum Found {
    Run(Arc<Run>),
    /// The store holds a run of that id of a workflow this server does not have (its id, and the run's tenant): not
    /// served, and not to be taken by a new run (the store would refuse it, and with it the batch it is in).
    Unserved {
        workflow_id: String,
        tenant: String,
    },
    Missing,
}

impl std::fmt::Debug for RunRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRegistry").finish_non_exhaustive()
    }
}

impl RunRegistry {
    /// A registry without a store (runs live in memory only) whose logs keep events as `encoder` writes them
    /// (each event is encoded once, at append).
    pub fn new(catalog: WorkflowCatalog, clock: Arc<dyn Clock>, encoder: Arc<dyn EventEncoder>) -> Arc<Self> {
        Self::new_with(catalog, clock, encoder, None)
    }

    /// [`new`](Self::new) that takes definitions registered as data, compiled by `compiler` (kept in memory only).
    pub fn new_with(
        catalog: WorkflowCatalog,
        clock: Arc<dyn Clock>,
        encoder: Arc<dyn EventEncoder>,
        compiler: Option<Arc<dyn DefinitionCompiler>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            catalog: RwLock::new(Catalog::new(&catalog)),
            compiler,
            store: None,
            registering: Mutex::new(()),
            runs: RwLock::new(HashMap::new()),
            next_order: AtomicU64::new(1),
            clock,
            encoder,
            persist: None,
            evictions: AtomicU64::new(0),
            admission: Arc::default(),
        })
    }

    /// A registry whose runs are kept in `store`. Only the runs in flight are loaded (and recovered, see
    /// [`Run::recover`]); every other run stays in the store until a client asks for it (finished runs with their
    /// results and logs, suspended runs resumable), so that start time and memory follow live work, not history.
    /// From now on every change is stored (see the persister). Fails, changing nothing, if the store cannot be read.
    pub fn open(
        catalog: WorkflowCatalog,
        clock: Arc<dyn Clock>,
        store: Arc<dyn RunStore>,
        encoder: Arc<dyn EventEncoder>,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_with(catalog, clock, store, encoder, None)
    }

    /// [`open`](Self::open) that takes definitions registered as data, compiled by `compiler`: those the store
    /// keeps are compiled again, in the order they were registered, before the runs are loaded.
    pub fn open_with(
        fixed: WorkflowCatalog,
        clock: Arc<dyn Clock>,
        store: Arc<dyn RunStore>,
        encoder: Arc<dyn EventEncoder>,
        compiler: Option<Arc<dyn DefinitionCompiler>>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut catalog = Catalog::new(&fixed);
        let definitions = store.load_definitions()?;
        if compiler.is_none() && !definitions.is_empty() {
            tracing::warn!(
                definitions = definitions.len(),
                "the store holds registered definitions, but this server takes none: their runs are not served"
            );
        }
        let defined = definitions.len();
        for record in definitions {
            catalog.restore(compiler.as_deref(), record);
        }
        let mut loaded = store.load_active(log::WINDOW)?;
        // Only runs this server can serve: the others are kept in the store untouched (see below).
        let servable = |record: &RunRecord| {
            catalog.version(&record.tenant, &record.workflow_id, record.workflow_version).is_some()
        };
        let failed_recoveries = mark_recoveries(store.as_ref(), &mut loaded, servable)?;
        let persister = Persister::start(store.clone())?;
        let mut runs = HashMap::new();
        let mut recover = Vec::new();
        // New runs are numbered after every stored one, served here or not.
        let next_order = store.max_order()?.saturating_add(1);
        for run in loaded {
            let record = &run.record;
            let Some(workflow) = catalog.version(&record.tenant, &record.workflow_id, record.workflow_version) else {
                // Kept in the store untouched: a later build that has the workflow again serves it.
                tracing::warn!(run_id = %run.record.run_id, workflow = %run.record.workflow_id, "stored run of a workflow this server does not have; not served");
                continue;
            };
            let checkpoints = run.checkpoints;
            let restored = restore(run.record, run.events, run.events_from, workflow, &clock, &encoder, &persister);
            if let Some(reason) = failed_recoveries.get(restored.id().as_ref()) {
                tracing::error!(run_id = %restored.id(), "{reason}");
                restored.fail_unrecoverable(reason, checkpoints);
            } else {
                recover.push((restored.clone(), checkpoints));
            }
            runs.insert(restored.id().clone(), restored);
        }
        tracing::info!(
            recovering = recover.len(),
            definitions = defined,
            "loaded the runs in flight from the store; every other run is read when asked for"
        );
        let registry = Arc::new(Self {
            catalog: RwLock::new(catalog),
            compiler,
            store: Some(store),
            registering: Mutex::new(()),
            runs: RwLock::new(runs),
            next_order: AtomicU64::new(next_order),
            clock,
            encoder,
            persist: Some(persister),
            evictions: AtomicU64::new(0),
            admission: Arc::default(),
        });
        for (run, checkpoints) in recover {
            tracing::info!(run_id = %run.id(), "recovering a run that was in flight");
            let tenant: Arc<str> = run.tenant().into();
            run.recover(checkpoints, registry.admission.force(&tenant));
        }
        Ok(registry)
    }

    /// Applies retention: forgets the runs that ended more than `retention` ago (in memory and in the store) and
    /// drops the events older than `retention` of the runs that remain in memory (never a run's newest event). A
    /// reader whose cursor falls below what is kept gets OUT_OF_RANGE naming the earliest seq kept. Returns how many
    /// runs in memory were forgotten and how many logs trimmed.
    pub fn expire(&self, retention: Duration) -> (usize, usize) {
        let now = self.clock.now();
        let Some(cutoff) = now.checked_sub(retention) else { return (0, 0) };
        let (mut forgotten, mut trimmed) = (0, 0);
        // The store forgets its runs that ended before the cutoff, resident or not (most finished runs are only
        // there), before they leave memory: a lookup after that finds them nowhere, rather than loading them back.
        if let Some(persister) = &self.persist {
            persister.expire(cutoff);
            if !persister.flush(Duration::from_secs(10)) {
                tracing::warn!(store = persister.describe(), "retention waits for the store; tried again later");
                return (0, 0);
            }
        }
        let runs: Vec<Arc<Run>> =
            self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect();
        for run in runs {
            if run.ended_before(cutoff) {
                self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(run.id());
                forgotten += 1;
            } else if let Some(first_seq) = run.trim_log(cutoff) {
                if let Some(persister) = &self.persist {
                    persister.trim(run.id(), first_seq);
                }
                trimmed += 1;
            }
        }
        if forgotten + trimmed > 0 {
            tracing::info!(forgotten, trimmed, retention_secs = retention.as_secs(), "applied retention");
        }
        (forgotten, trimmed)
    }

    /// Applies [`expire`](Self::expire) now and then (on a blocking thread: it waits for the store), for as long as
    /// the registry lives.
    pub fn spawn_retention(self: &Arc<Self>, retention: Duration) {
        // Often enough that nothing outlives its retention by much more than a tenth of it; at most once a second.
        let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        self.every(every, move |registry| async move {
            let _ = tokio::task::spawn_blocking(move || registry.expire(retention)).await;
        });
    }

    /// Lets the runs that are done for now leave memory: a finished or suspended run whose last change is older than
    /// `idle`, all of whose events are stored, and that nobody holds (no reader of its log, no call in progress on
    /// it). It stays in the store, and [`get`](Self::get) loads it again when a client asks for it. Does nothing
    /// without a store (there is nowhere to load it from). Returns how many runs left memory.
    pub fn evict(&self, idle: Duration) -> usize {
        if self.persist.is_none() {
            return 0;
        }
        let Some(cutoff) = self.clock.now().checked_sub(idle) else { return 0 };
        // Look under the read lock, evict under the write lock: new calls find a run under the read lock, so one
        // that holds no reference now cannot take one while it is being removed.
        let candidates: Vec<Arc<str>> = {
            let runs = self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            runs.iter().filter(|(_, run)| run.is_idle_since(cutoff)).map(|(id, _)| id.clone()).collect()
        };
        if candidates.is_empty() {
            return 0;
        }
        let (evicted, resident) = {
            let mut runs = self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut evicted = Vec::new();
            for id in candidates {
                let free = runs
                    .get(&id)
                    .is_some_and(|run| Arc::strong_count(run) == 1 && run.log_unshared() && run.is_idle_since(cutoff));
                if let Some(run) = free.then(|| runs.remove(&id)).flatten() {
                    evicted.push(run);
                }
            }
            if !evicted.is_empty() {
                self.evictions.fetch_add(1, Ordering::AcqRel);
            }
            (evicted, runs.len())
        };
        // Freed once the lock is released: freeing thousands of runs' logs must not hold up every lookup.
        let count = evicted.len();
        drop(evicted);
        tracing::debug!(evicted = count, resident, "runs left memory; they are read from the store when asked for");
        count
    }

    /// Applies [`evict`](Self::evict) now and then, for as long as the registry lives: a run leaves memory about
    /// `idle` after it finished or suspended (with a store; no-op without one).
    pub fn spawn_eviction(self: &Arc<Self>, idle: Duration) {
        if self.persist.is_none() {
            return;
        }
        let every = (idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        self.every(every, move |registry| async move {
            registry.evict(idle);
        });
    }

    /// Runs `task` every `period` (the first at once), for as long as the registry lives.
    fn every<F, Fut>(self: &Arc<Self>, period: Duration, task: F)
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else { return };
                task(registry).await;
            }
        });
    }

    /// Whether the run with this id is in memory now (tests of eviction).
    pub fn is_resident(&self, run_id: &str) -> bool {
        self.resident(run_id).is_some()
    }

    /// A clean stop: clears the recovery marks of the runs still in flight (a clean stop is not a crash their
    /// recovery caused), waits (blocking) until every change made so far is stored, then has the store fold in what
    /// it keeps aside (SQLite's WAL), so that its file alone is a full copy. Waits at most `limit` for the store (one
    /// that refuses writes would hold the stop forever); returns whether everything was stored.
    pub fn close(&self, limit: Duration) -> bool {
        let Some(persister) = &self.persist else { return true };
        let runs: Vec<Arc<Run>> =
            self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect();
        for run in runs {
            run.clear_recovery_mark();
        }
        if !persister.flush(limit) {
            tracing::error!(
                store = persister.describe(),
                cause = persister.failing().unwrap_or_default(),
                "stopping with writes the store did not take; runs in flight are recovered from what it holds"
            );
            return false;
        }
        if let Some(Err(e)) = self.store.as_deref().map(RunStore::checkpoint) {
            tracing::warn!(error = %e, "stopped with the store's WAL not folded in; the next start reads it");
        }
        true
    }

    /// Waits (blocking) until every change made so far is stored; at once without a store.
    pub fn flush(&self) {
        if let Some(persister) = &self.persist {
            persister.flush(Duration::MAX);
        }
    }

    /// Fails when the store refuses writes, naming it and the cause: for calls that need a write.
    pub fn check_store(&self) -> Result<(), RegistryError> {
        match self.persist.as_ref().and_then(|p| p.failing().map(|cause| (p, cause))) {
            None => Ok(()),
            Some((persister, cause)) => {
                Err(RegistryError::StoreUnavailable { store: persister.describe().to_owned(), cause })
            }
        }
    }

    /// Follows whether the store refuses writes (the cause while it does); `None` without a store.
    pub fn watch_store(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        self.persist.as_ref().map(|p| p.watch_failing())
    }

    /// Limits on the runs executing at once (default [`RunLimits::default`]); they apply to starts and resumes
    /// from now on.
    pub fn set_run_limits(&self, limits: RunLimits) {
        self.admission.set_limits(limits);
    }

    /// The workflows `tenant` can start runs of, sorted by id, each with its version (0: built into the server; a
    /// registered one's latest otherwise).
    pub fn workflows(&self, tenant: &str) -> Vec<(Arc<Workflow>, u32)> {
        self.catalog().list(tenant)
    }

    fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a run, or returns the existing run with the requested id (which is then not started again).
    pub async fn start(&self, request: StartRequest) -> Result<(Arc<Run>, Started), RegistryError> {
        self.check_store()?;
        let kind = request.kind;
        let (workflow, version) = self.runnable(&request.tenant, &request.workflow_id, kind)?;
        let run_id: Arc<str> = if request.run_id.is_empty() {
            uuid::Uuid::now_v7().to_string().into()
        } else {
            validate_run_id("run_id", &request.run_id)?;
            match self.find(&request.run_id).await? {
                Found::Run(existing) => return attach(existing, &request),
                // Another tenant's: taken, and nothing more said of it.
                Found::Unserved { tenant, .. } if *tenant != *request.tenant => {
                    return Err(RegistryError::RunIdTakenElsewhere { run_id: request.run_id.clone() });
                }
                Found::Unserved { workflow_id, .. } => {
                    return Err(RegistryError::RunIdTaken {
                        run_id: request.run_id.clone(),
                        existing: workflow_id,
                        requested: request.workflow_id.clone(),
                    });
                }
                Found::Missing => request.run_id.as_str().into(),
            }
        };
        workflow.validate_input(&request.input).map_err(RegistryError::InvalidInput)?;
        // Its place among the runs executing; given back if the run is not created after all (the id was taken).
        let permit = self.admission.admit(&request.tenant)?;

        let spec = RunSpec {
            run_id: run_id.clone(),
            workflow,
            version,
            input: request.input.clone(),
            request_context: Arc::new(request.request_context.clone()),
            resource_id: request.resource_id.clone(),
            tenant: request.tenant.clone(),
            tracing: request.tracing.clone(),
        };
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        let run = Run::new(spec, order, self.clock.clone(), self.encoder.clone(), self.persist.clone());
        {
            let mut runs = self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Re-check under the write lock: two callers may race to create the same client-chosen id.
            if let Some(existing) = runs.get(&run_id) {
                let existing = existing.clone();
                drop(runs);
                return attach(existing, &request);
            }
            runs.insert(run_id, run.clone());
        }
        run.start(permit);
        Ok((run, Started::Created))
    }

    /// The latest version of the workflow (agent, network) `id` of `kind` that `tenant` can run, or why there is
    /// none.
    fn runnable(&self, tenant: &str, id: &str, kind: RunKind) -> Result<(Arc<Workflow>, u32), RegistryError> {
        let catalog = self.catalog();
        catalog.get(tenant, id).filter(|(wf, _)| wf.kind() == kind).ok_or_else(|| {
            if id.is_empty() {
                return RegistryError::InvalidId {
                    field: "workflow_id",
                    reason: "set one of workflow_id, agent_id or network_id; call ListWorkflows for the available ids"
                        .into(),
                };
            }
            RegistryError::WorkflowNotFound {
                kind,
                id: id.to_owned(),
                actual: catalog.get(tenant, id).map(|(wf, _)| wf.kind()),
                available: catalog
                    .list(tenant)
                    .iter()
                    .filter(|(wf, _)| wf.kind() == kind)
                    .map(|(wf, _)| wf.id().to_string())
                    .collect(),
            }
        })
    }

    /// The run of `tenant` with this id: in memory, or loaded from the store. Another tenant's run is not found,
    /// exactly as a run that does not exist.
    pub async fn get(&self, tenant: &str, run_id: &str) -> Result<Arc<Run>, RegistryError> {
        validate_run_id("run_id", run_id)?;
        match self.find(run_id).await? {
            Found::Run(run) if run.tenant() == tenant => Ok(run),
            // Not served here, so not found here (a build with its workflow serves it).
            Found::Run(_) | Found::Unserved { .. } | Found::Missing => {
                Err(RegistryError::RunNotFound { id: run_id.to_string() })
            }
        }
    }

    fn resident(&self, run_id: &str) -> Option<Arc<Run>> {
        self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(run_id).cloned()
    }

    /// The run in memory, else the one in the store, loaded into memory (it leaves again when it is idle, see
    /// [`evict`](Self::evict)). The store is read on a blocking thread; two callers loading the same run race to
    /// insert it, and the loser takes the winner's copy, so there is only ever one `Run` per id in memory.
    async fn find(&self, run_id: &str) -> Result<Found, RegistryError> {
        loop {
            if let Some(run) = self.resident(run_id) {
                return Ok(Found::Run(run));
            }
            let (Some(store), Some(persister)) = (&self.store, &self.persist) else { return Ok(Found::Missing) };
            let evictions = self.evictions.load(Ordering::Acquire);
            let read = {
                let run_id = run_id.to_owned();
                persister.read(move |store| store.load_run(&run_id, log::WINDOW))
            };
            let loaded = read_result(store.as_ref(), read.await)?;
            let Some(loaded) = loaded else {
                // Absent from the store too, unless it was created meanwhile.
                return Ok(self.resident(run_id).map_or(Found::Missing, Found::Run));
            };
            let record = &loaded.record;
            let workflow = self.catalog().version(&record.tenant, &record.workflow_id, record.workflow_version);
            let Some(workflow) = workflow else {
                return Ok(Found::Unserved { workflow_id: loaded.record.workflow_id, tenant: loaded.record.tenant });
            };
            let mut runs = self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(run) = runs.get(run_id) {
                return Ok(Found::Run(run.clone()));
            }
            // A run evicted while this read was under way may have been loaded, changed and evicted again by
            // others meanwhile: what was read may be older than the store now. Read again.
            if self.evictions.load(Ordering::Acquire) != evictions {
                continue;
            }
            let events = loaded.events.len();
            let run = restore(
                loaded.record,
                loaded.events,
                loaded.events_from,
                workflow,
                &self.clock,
                &self.encoder,
                persister,
            );
            runs.insert(run.id().clone(), run.clone());
            tracing::debug!(run_id, events, "loaded a run from the store");
            return Ok(Found::Run(run));
        }
    }

    /// Resumes a suspended run; returns it and the seq after which the resumed phase's events appear.
    pub async fn resume(
        &self,
        tenant: &str,
        run_id: &str,
        request: ResumeRequest,
    ) -> Result<(Arc<Run>, u64), RegistryError> {
        let run = self.get(tenant, run_id).await?;
        self.check_store()?;
        let tenant: Arc<str> = run.tenant().into();
        let start_seq = run.resume(request, self.admission.admit(&tenant)?)?;
        Ok((run, start_seq))
    }

    /// Cancels a run; returns whether anything was canceled (false when it had already ended). Waits up to
    /// `settle` for a running run's executor to stop, so the caller usually sees the final status.
    pub async fn cancel(
        &self,
        tenant: &str,
        run_id: &str,
        settle: Duration,
    ) -> Result<(Arc<Run>, bool), RegistryError> {
        let run = self.get(tenant, run_id).await?;
        self.check_store()?;
        let canceled = run.cancel();
        if canceled {
            run.wait_for(settle, RunStatus::is_terminal).await;
        }
        Ok((run, canceled))
    }

    /// Runs matching `filter` (always of one tenant: `filter.tenant`), newest first, starting after the run with creation order `after_order` (0: from the
    /// newest); at most `limit`. Returns the page and the order to continue after, if there is more. With a store,
    /// the page is the store's merged with the runs in memory: those whose creation is not stored yet, and the live
    /// status of those that are.
    pub async fn list(
        &self,
        filter: &RunFilter,
        after_order: u64,
        limit: usize,
    ) -> Result<(Vec<RunView>, Option<u64>), RegistryError> {
        let resident: HashMap<Arc<str>, Arc<Run>> = {
            let runs = self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            runs.iter()
                .filter(|(_, run)| run.tenant() == filter.tenant)
                .filter(|(_, run)| after_order == 0 || run.created_order < after_order)
                .filter(|(_, run)| filter.workflow_id.as_deref().is_none_or(|id| &**run.workflow().id() == id))
                .filter(|(_, run)| filter.resource_id.as_deref().is_none_or(|id| run.resource_id() == id))
                .map(|(id, run)| (id.clone(), run.clone()))
                .collect()
        };
        // Matching by their status now (a stored status may lag behind).
        let live = |run: &Run| filter.status.is_none_or(|status| run.status() == status);
        let mut page: Vec<(u64, RunView)> =
            resident.values().filter(|run| live(run)).map(|run| (run.created_order, run.view())).collect();
        // The store's page is one more than asked for: whether there is more.
        let mut stored_more = None;
        if let (Some(store), Some(persister)) = (&self.store, &self.persist) {
            let query = filter.clone();
            let want = limit.saturating_add(1);
            let read = persister.read(move |store| store.list_runs(&query, after_order, want));
            let unavailable = |cause: String| RegistryError::StoreUnavailable { store: store.describe(), cause };
            let stored = read
                .await
                .map_err(|e| unavailable(format!("listing runs failed: {e}")))?
                .map_err(|e| unavailable(e.to_string()))?;
            if stored.len() > limit {
                stored_more = stored.last().map(|run| run.record.created_order);
            }
            let catalog = self.catalog();
            for summary in stored {
                let record = summary.record;
                // In memory: listed above if it matches by its live status.
                if resident.contains_key(record.run_id.as_str()) {
                    continue;
                }
                // Runs of workflows this server does not have are not served, hence not listed.
                let version = catalog.version(&record.tenant, &record.workflow_id, record.workflow_version);
                let Some(workflow) = version else { continue };
                let view = RunView {
                    run_id: record.run_id.into(),
                    workflow_id: workflow.id().clone(),
                    kind: workflow.kind(),
                    resource_id: record.resource_id,
                    input: record.input,
                    created_at: record.created_at,
                    state: record.state,
                    last_seq: summary.last_seq,
                };
                page.push((record.created_order, view));
            }
        }
        page.sort_unstable_by_key(|(order, _)| std::cmp::Reverse(*order));
        let more = page.len() > limit || stored_more.is_some();
        page.truncate(limit);
        // Continue after the last run listed; a page emptied by the live statuses continues after what the store
        // gave.
        let next = if more { page.last().map(|(order, _)| *order).or(stored_more) } else { None };
        Ok((page.into_iter().map(|(_, view)| view).collect(), next))
    }
}

/// After this many recoveries in a row with no step completed in between, a run is failed at start instead of
/// recovered again: its recovery was in progress each time the server went down, so it is likely what brings it
/// down (a crash loop that would otherwise need the store edited by hand). A clean stop does not count. More than
/// one: every run in flight is being recovered when a poison run brings the server down, and a run that completes
/// a step in between starts counting again, so the poison run reaches the limit first; one unrelated kill during a
/// recovery fails nothing.
const MAX_RECOVERIES: u32 = 3;

/// Marks the in-flight runs of `loaded` as being recovered, in the store, before any of them runs (a crash during
/// their recovery must find the mark), and returns the runs not to recover again, with the reason.
fn mark_recoveries(
    store: &dyn RunStore,
    loaded: &mut [LoadedRun],
    servable: impl Fn(&RunRecord) -> bool,
) -> Result<HashMap<String, String>, StoreError> {
    let mut marks = Vec::new();
    let mut failed = HashMap::new();
    for run in loaded.iter_mut() {
        let in_flight = matches!(run.record.state.status, RunStatus::Pending | RunStatus::Running | RunStatus::Waiting);
        if !in_flight || !servable(&run.record) {
            continue;
        }
        let state = &mut run.record.state;
        // A step completed since the last recovery started: that recovery got somewhere.
        let progressed = |mark: &RecoveryMark| state.phase > mark.from_phase && !run.checkpoints.is_empty();
        let attempts = state.recovering.filter(|mark| !progressed(mark)).map_or(0, |mark| mark.attempts);
        if attempts >= MAX_RECOVERIES {
            failed.insert(
                run.record.run_id.clone(),
                format!(
                    "runstream stopped without a clean shutdown {attempts} time(s) in a row while recovering this run, \
                     before any of its steps completed: it is failed instead of recovered again, in case it is what \
                     brings the server down; start it again (a new run) once the cause is fixed"
                ),
            );
            continue;
        }
        state.recovering = Some(RecoveryMark { attempts: attempts + 1, from_phase: state.phase });
        marks.push(Write::State { run_id: run.record.run_id.clone(), state: Box::new(state.clone()) });
    }
    if !marks.is_empty() {
        store.commit(&marks)?;
    }
    Ok(failed)
}

/// What a read of the store on a blocking thread gave, its failure as the registry's error.
pub(super) fn read_result<T>(
    store: &dyn RunStore,
    read: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, RegistryError> {
    let store_read =
        |cause: String, damaged: bool| RegistryError::StoreRead { store: store.describe(), cause, damaged };
    match read {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_read(e.to_string(), matches!(e, StoreError::Corrupt { .. }))),
        // The read panicked or was dropped with the runtime.
        Err(e) => Err(store_read(e.to_string(), false)),
    }
}

/// A stored run of `workflow` as a `Run` in memory (not started: the caller decides what happens next).
#[allow(clippy::too_many_arguments)]
fn restore(
    record: RunRecord,
    events: Vec<StoredEvent>,
    events_from: u64,
    workflow: Arc<Workflow>,
    clock: &Arc<dyn Clock>,
    encoder: &Arc<dyn EventEncoder>,
    persister: &Arc<Persister>,
) -> Arc<Run> {
    let spec = RunSpec {
        run_id: record.run_id.as_str().into(),
        workflow,
        version: record.workflow_version,
        input: record.input,
        request_context: Arc::new(record.request_context),
        resource_id: record.resource_id,
        tenant: record.tenant.into(),
        tracing: None,
    };
    Run::restore(
        spec,
        record.created_at,
        record.created_order,
        record.state,
        (events, events_from),
        clock.clone(),
        encoder.clone(),
        persister.clone(),
    )
}

/// Attaching to an existing run by id is only for a retry of the start that created it (same tenant, same
/// workflow, same input): anything else means the caller reused an id by mistake, and attaching would show another
/// run's events. Of another tenant's run nothing is said but that its id is taken.
fn attach(existing: Arc<Run>, request: &StartRequest) -> Result<(Arc<Run>, Started), RegistryError> {
    let (workflow_id, input) = (&request.workflow_id, &request.input);
    if existing.tenant() != &*request.tenant {
        return Err(RegistryError::RunIdTakenElsewhere { run_id: existing.id().to_string() });
    }
    if **existing.workflow().id() != *workflow_id {
        return Err(RegistryError::RunIdTaken {
            run_id: existing.id().to_string(),
            existing: existing.workflow().id().to_string(),
            requested: workflow_id.to_owned(),
        });
    }
    if existing.input() != input {
        return Err(RegistryError::RunIdInUse { run_id: existing.id().to_string(), status: existing.status() });
    }
    Ok((existing, Started::Existing))
}

/// Run ids travel in URLs, logs and metrics labels: keep them short and plain.
pub fn validate_run_id(field: &'static str, run_id: &str) -> Result<(), RegistryError> {
    if run_id.is_empty() {
        return Err(RegistryError::InvalidId { field, reason: "required".into() });
    }
    if run_id.len() > MAX_RUN_ID_LEN {
        return Err(RegistryError::InvalidId {
            field,
            reason: format!("{} characters long; at most {MAX_RUN_ID_LEN} are allowed", run_id.len()),
        });
    }
    if let Some(bad) = run_id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(RegistryError::InvalidId {
            field,
            reason: format!("character {bad:?} is not allowed; use letters, digits and . _ : -"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

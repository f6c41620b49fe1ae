//! Errors of registry operations. Every message tells the caller what to do; `grpc::status` maps each variant to a
//! gRPC status code, in that one place.

use crate::engine::{ResumeError, RunKind, RunStatus, SchemaViolation};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// No workflow, agent or network of `kind` has this id. `actual` is set when the id names something of another
    /// kind: the caller set the wrong request field.
    #[error("{}", not_found_message(*kind, id, available, *actual))]
    WorkflowNotFound { kind: RunKind, id: String, available: Vec<String>, actual: Option<RunKind> },

    #[error("run '{id}' does not exist; check the run_id (ListRuns lists known runs)")]
    RunNotFound { id: String },

    /// A malformed identifier; `field` is the request field.
    #[error("{field}: {reason}")]
    InvalidId { field: &'static str, reason: String },

    /// Input failing the workflow's input schema (the violation names the field).
    #[error("{0}; send input that matches the workflow's input_schema (see ListWorkflows)")]
    InvalidInput(SchemaViolation),

    /// StreamRun/StartRun with the id of an existing run of another workflow.
    #[error("run '{run_id}' already exists for workflow '{existing}', not '{requested}'; pick another run_id")]
    RunIdTaken { run_id: String, existing: String, requested: String },

    /// As many runs execute as the server takes: a start or resume is shed.
    #[error(
        "this server is running as many runs as it takes (--max-running-runs); retry in a few seconds, or against \
         another replica"
    )]
    ServerBusy { running: usize, limit: usize },

    /// As many of the tenant's runs execute as it may have.
    #[error(
        "tenant '{tenant}' has {running} runs running, its limit ({limit}, --max-running-runs-per-tenant); retry once \
         some end, or cancel some"
    )]
    TenantBusy { tenant: String, running: usize, limit: usize },

    /// StreamRun/StartRun with the id of another tenant's run: taken, and nothing more is said of it.
    #[error(
        "run_id '{run_id}' is taken; pick another run_id, or leave run_id empty for a generated one (run ids are \
         unique across the server)"
    )]
    RunIdTakenElsewhere { run_id: String },

    /// StreamRun/StartRun with the id of an existing run of the same workflow but other input: not a retry of the
    /// start that created it, so attaching would silently show another run's events.
    #[error(
        "run '{run_id}' already exists ({}, started with different input); to follow it call ObserveStream or GetResult with run_id \"{run_id}\"; to start a new run pick another run_id, or leave run_id empty for a generated one",
        status.as_str()
    )]
    RunIdInUse { run_id: String, status: RunStatus },

    #[error("run '{run_id}' is {} and cannot be resumed; only a suspended run can (GetRun shows its status)", status.as_str())]
    NotSuspended { run_id: String, status: RunStatus },

    #[error("cannot resume run '{run_id}': {source}")]
    Resume { run_id: String, source: ResumeError },

    #[error(
        "after_seq {after_seq} is beyond the last event of run '{run_id}' (seq {last_seq}); pass the seq of the last event you received, or 0 to replay from the start"
    )]
    CursorAhead { run_id: String, after_seq: u64, last_seq: u64 },

    /// A cursor older than what retention keeps.
    #[error(
        "run '{run_id}' no longer keeps events up to seq {after_seq}: retention dropped them; the earliest seq kept is {first_seq}, re-attach with after_seq = {} or later", first_seq - 1
    )]
    CursorExpired { run_id: String, after_seq: u64, first_seq: u64 },

    #[error("the server is shutting down; retry against another replica or after restart")]
    ShuttingDown,

    /// The store refuses writes (disk full, a read-only file): what needs one fails at once instead of waiting.
    #[error(
        "the run store {store} refuses writes ({cause}); runs cannot be started, resumed or canceled until it takes \
         writes again (the cause says what to do; the server carries on by itself once it does); reads of stored \
         runs still work"
    )]
    StoreUnavailable { store: String, cause: String },

    /// Reading a run from the store failed (issue 12: runs not in memory are read when asked for). `damaged`: what
    /// is stored cannot be read (the cause says what to do), rather than a read that may work when retried.
    #[error("reading from the run store {store} failed: {cause}")]
    StoreRead { store: String, cause: String, damaged: bool },

    /// A definition that does not compile: the field at fault (`steps[2].foreach.node.step.task`) and why.
    /// `missing`: it refers to something the server does not have.
    #[error("{}: {reason}", if path.is_empty() { "definition".to_owned() } else { format!("definition.{path}") })]
    InvalidDefinition { path: String, reason: String, missing: bool },

    /// Registering over an id that names something else (a runnable built into the server, or a registered
    /// definition of another kind).
    #[error("{}", id_taken_message(id, *existing, *built_in))]
    DefinitionIdTaken { id: String, existing: RunKind, built_in: bool },

    #[error("{}", definition_not_found_message(*kind, id, *version, *latest, *built_in))]
    DefinitionNotFound { kind: RunKind, id: String, version: u32, latest: Option<u32>, built_in: bool },

    #[error("this server takes no definitions registered as data")]
    DefinitionsUnsupported,

    /// The store refused the registration: nothing was registered.
    #[error("registering '{id}' failed, nothing was registered: {reason}; retry later")]
    DefinitionNotStored { id: String, reason: String },
}

fn not_found_message(kind: RunKind, id: &str, available: &[String], actual: Option<RunKind>) -> String {
    let kind_name = kind.as_str();
    match actual {
        Some(actual) => {
            let actual = actual.as_str();
            format!(
                "{kind_name} '{id}' does not exist, but {actual} '{id}' does: did you mean {actual}_id? Set {actual}_id instead of {kind_name}_id (this server's {kind_name}s: {})",
                available.join(", ")
            )
        }
        None => format!(
            "{kind_name} '{id}' does not exist; call ListWorkflows for the available ids (this server's {kind_name}s: {})",
            available.join(", ")
        ),
    }
}

fn id_taken_message(id: &str, existing: RunKind, built_in: bool) -> String {
    let what = existing.as_str();
    if built_in {
        format!("'{id}' is a {what} built into this server; a registered definition cannot replace it: pick another id")
    } else {
        format!(
            "'{id}' is a registered {what}; ids are one namespace across workflows, agents and networks: pick another id"
        )
    }
}

fn definition_not_found_message(kind: RunKind, id: &str, version: u32, latest: Option<u32>, built_in: bool) -> String {
    let kind = kind.as_str();
    match (latest, built_in) {
        (Some(latest), _) => {
            format!("{kind} '{id}' has no version {version}; its versions are 1 to {latest} (0 asks for the latest)")
        }
        (None, true) => {
            format!("'{id}' is built into this server, not registered as data: it has no definition to return")
        }
        (None, false) => format!("no {kind} '{id}' is registered; ListWorkflows lists what this server runs"),
    }
}

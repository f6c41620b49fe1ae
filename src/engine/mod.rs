//! The workflow engine: how workflows are defined and how one phase of a run executes.
//!
//! The engine knows nothing of gRPC, protobuf or the run registry. It receives a [`Phase`] (the workflow, the
//! input, the snapshot of earlier phases, what to resume) and an [`EventSink`], emits events into the sink while it
//! runs, and returns a [`PhaseOutcome`]. Everything about runs outliving a phase (numbering, storage, readers,
//! claims) is the registry's job.
//!
//! - [`workflow`]: the builder (`then`, `parallel`, `branch`, loops, `foreach`, `sleep`, `map`, nesting).
//! - [`step`]: what step code sees (input, writer, suspend, bail, cancel).
//! - [`executor`]: walks the graph for one phase.
//! - [`schema`]: JSON Schema checks at the boundaries; [`renamed`]: input keys whose old spelling is still taken.
//! - [`agent_event`]: the chunks agents and agent networks emit (the loop that emits them is `crate::agent`).

pub mod agent_event;
pub mod catalog;
pub mod error;
pub mod event;
pub mod executor;
pub mod renamed;
pub mod schema;
pub mod snapshot;
pub mod step;
pub mod workflow;

pub use agent_event::{
    AgentChunk, Delegation, FinishReason, NetworkEvent, PrimitiveType, ToolCallApproval, ToolCallSuspended,
};
pub use catalog::WorkflowCatalog;
pub use error::{ResumeError, SchemaViolation};
#[cfg(test)]
pub(crate) use event::with_old_usage_keys;
pub use event::{
    ErrorInfo, Event, EventKind, EventSink, EventSource, EventTooLarge, RunStatus, StepStatus, Usage, WaitReason,
};
pub use executor::{Phase, PhaseOutcome, execute_phase, recovered_snapshot};
pub use snapshot::{ResumeRequest, ResumeTarget, RunSnapshot, StepRecord, SuspendedStep};
pub use step::{Step, StepContext, StepError, StepOutcome, Writer};
pub use workflow::{RunKind, RunnableMeta, StepInfo, ToolMeta, Workflow};

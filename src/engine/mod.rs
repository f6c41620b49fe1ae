//! The workflow engine: how workflows are defined and how one phase of a run executes.
//!
//! The engine knows nothing of gRPC, protobuf or the run registry. It receives a phase (the workflow, the input,
//! the snapshot of earlier phases, what to resume) and a sink, emits [`Event`]s into the sink while it runs, and
//! returns the phase's outcome. Everything about runs outliving a phase (numbering, storage, readers, claims) is
//! the registry's job.
//!
//! - [`workflow`]: the builder (`then`, `parallel`, `branch`, loops, `foreach`, `sleep`, `map`, nesting).
//! - [`step`]: what step code sees (input, writer, suspend, bail, cancel).
//! - [`event`]: the events a run emits; [`agent_event`]: the chunks agents and agent networks emit (the loop that
//!   emits them is [`crate::agent`]).
//! - [`snapshot`]: what the engine remembers of a run between phases (stored with the run).
//! - [`schema`]: JSON Schema checks at the boundaries.
//!
//! The executor, which walks the graph for one phase, is internal: runs are started through the
//! [`Server`](crate::Server).

pub mod agent_event;
pub mod catalog;
pub mod error;
pub mod event;
pub(crate) mod executor;
pub(crate) mod renamed;
pub mod schema;
pub mod snapshot;
pub mod step;
pub mod workflow;

pub use agent_event::{
    AgentChunk, Delegation, FinishReason, NetworkEvent, PrimitiveType, ToolCallApproval, ToolCallSuspended,
};
pub use catalog::WorkflowCatalog;
pub use error::{ResumeError, SchemaViolation};
pub(crate) use event::EventSink;
#[cfg(test)]
pub(crate) use event::with_old_usage_keys;
pub use event::{ErrorInfo, Event, EventKind, EventSource, EventTooLarge, RunStatus, StepStatus, Usage, WaitReason};
/// Not part of the API: the durability test checks with it that a restart would not run a stored step again.
#[doc(hidden)]
pub use executor::recovered_snapshot;
pub(crate) use executor::{Phase, PhaseOutcome, execute_phase};
pub use snapshot::{ResumeRequest, ResumeTarget, RunSnapshot, StepRecord, SuspendedStep};
pub use step::{Step, StepContext, StepError, StepOutcome, Writer};
pub use workflow::{RunKind, RunnableMeta, StepInfo, ToolMeta, Workflow};

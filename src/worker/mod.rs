//! Remote steps: steps whose code runs in worker processes connected over `runstream.v1.WorkerService`.
//!
//! The [`WorkerHub`] keeps the connected workers (sessions), one queue of tasks per task type, and the tasks handed
//! out. A task is one execution of one remote step; it is handed to a worker with a lease that the worker's
//! heartbeats renew. When a lease runs out (the worker died, or its connection was cut and not restored in time)
//! the task goes to another worker with the next attempt number and a new lease token; a message about an older
//! attempt is rejected, never applied. A worker is never handed more tasks than its `max_in_flight`.
//!
//! The engine does not know about workers: [`WorkerHub::step`] makes an ordinary [`Step`] whose function enqueues a
//! task and awaits its outcome, forwarding the worker's writes to the step's writer. The gRPC layer
//! (`grpc::worker`) translates the Connect stream into [`WorkerHub::connect`], [`WorkerHub::handle`] and
//! [`WorkerHub::disconnect`]; this module knows nothing of protobuf.
//!
//! Tasks live in memory. After a server restart the engine's recovery runs an interrupted step again, which
//! enqueues a new task with the same idempotency key; a worker that still holds the old attempt gets it revoked
//! when it reconnects.

mod hub;
mod step;
mod tool;

pub use hub::{PROTOCOL_VERSION, WorkerHub, WorkerInfo, WorkerSettings};
pub(crate) use step::InputFn;
// The protocol's messages as the hub speaks them, for the gRPC layer's translation only.
pub(crate) use hub::{
    Assignment, CancelReason, Chunk, FromWorker, Hello, RejectCode, TaskRef, ToWorker, Welcome, WorkerError,
};

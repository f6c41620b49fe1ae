//! runstream runs workflows and AI agents and streams every event of every run, live, over gRPC: every event has a
//! gapless per-run `seq`, re-attaching from a cursor loses and repeats nothing, and runs survive crashes.
//!
//! Serve your own workflows, agents and networks with [`Server::builder`]:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use runstream::{
//!     Server, Store,
//!     agent::{Agent, Tool, ToolError},
//!     engine::{Step, StepOutcome, Workflow},
//!     model::OfflineModel,
//! };
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), runstream::ServeError> {
//!     // A workflow: steps run one after the other, each getting the previous one's output.
//!     let double = Workflow::builder("double")
//!         .then(Step::new("double", |ctx| async move {
//!             let n = ctx.input()["n"].as_f64().unwrap_or(0.0);
//!             // Streamed to every client as a `step_output` event, numbered like every other.
//!             ctx.writer().write(json!({ "doubling": n })).await?;
//!             Ok(StepOutcome::Done(json!({ "n": n * 2.0 })))
//!         }))
//!         .commit();
//!     // An agent with a tool of its own (the offline model stands in for a real one).
//!     let shout = Tool::new(
//!         "shout",
//!         "Upper-cases a text.",
//!         json!({ "type": "object", "required": ["text"], "properties": { "text": { "type": "string" } } }),
//!         |_ctx, args| async move {
//!             let text = args["text"].as_str().ok_or_else(|| ToolError::new("text must be a string"))?;
//!             Ok(json!({ "text": text.to_uppercase() }))
//!         },
//!     );
//!     let agent = Arc::new(Agent::new("shouter", "Shout what you are told.", Arc::new(OfflineModel::new())).tool(shout));
//!
//!     Server::builder()
//!         .listen("127.0.0.1:50051".parse().expect("an address"))
//!         .store(Store::sqlite("./data"))
//!         .workflow(double)
//!         .agent(agent)
//!         .serve(async {
//!             let _ = tokio::signal::ctrl_c().await;
//!         })
//!         .await
//! }
//! ```
//!
//! Clients use the generated [`pb`] client (or any gRPC client of `runstream.v1`; see the README). The modules:
//! - [`engine`]: workflows and steps ([`engine::Workflow::builder`], [`engine::Step`]) and the events they emit;
//! - [`agent`]: agents (instructions, a model, tools), alone or as a workflow step;
//! - [`network`]: agent networks (a routing agent delegating to agents, workflows and tools);
//! - [`model`]: language models (an OpenAI-compatible streaming client, the offline stand-in);
//! - [`store`]: where runs outlive the process (the [`store::RunStore`] trait; SQLite and memory);
//! - [`builtin`]: the demos `runstream serve` offers (workflows, agents, tools, networks);
//! - [`clock`]: the time runs read and sleep on.

// Every public item has a doc comment (CI runs clippy with `-D warnings`); the generated `pb` is exempt.
#![warn(missing_docs)]

pub mod agent;
pub mod auth;
pub mod builtin;
pub mod clock;
// Workflows defined as data (RegisterWorkflow): internal; users write them in proto JSON.
pub(crate) mod definition;
pub mod engine;
pub mod model;
pub mod network;
pub mod store;
pub mod worker;

/// The gRPC layer: a thin translation between `runstream.v1` and the run registry. Not part of the API (use
/// [`Server`]); public for the project's own integration tests and benchmarks.
#[doc(hidden)]
pub mod grpc;
/// Every run, its numbered event log, readers, claims and cancels. Not part of the API (use [`Server`]); public for
/// the project's own integration tests.
#[doc(hidden)]
pub mod registry;
mod server;

pub use grpc::{ServiceConfig, tls::Tls};
pub use registry::RunLimits;
pub use server::{Listening, ServeError, Server, ServerBuilder, Store};

// Shared by the offline model and the built-in tools; not part of the API.
mod fnv;

/// Generated protobuf messages and the client of `runstream.v1`.
// prost documents only what the .proto files comment: most enum values and oneof variants (about 140 items)
// have none.
#[allow(missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pb/runstream.v1.rs"));
    // The WorkerService client: no `connect` constructor (it would clash with the RPC); use `new(channel)`.
    include!(concat!(env!("OUT_DIR"), "/worker_client/runstream.v1.rs"));
}

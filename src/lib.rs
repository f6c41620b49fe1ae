//! runstream: runs workflows and streams every event of every run, live, over gRPC.
//!
//! Layers, each knowing only the one below it (see ARCHITECTURE.md):
//! - [`grpc`]: RunService, a thin translation of requests into registry calls;
//! - [`registry`]: every run, its numbered event log, readers, claims and cancels;
//! - [`store`]: where runs outlive the process (the storage trait; SQLite and memory);
//! - [`engine`]: workflow definitions and the executor of one phase of a run;
//! - [`agent`]: agents (instructions, a model, tools) and the loop that runs them, alone or as a workflow step;
//! - [`model`]: language-model providers (OpenAI-compatible streaming client, offline stand-in);
//! - [`network`]: agent networks (a routing agent delegating to agents, workflows and tools), run as a step;
//! - [`workflows`]: the built-in workflows.

pub mod agent;
pub mod clock;
pub mod engine;
pub mod grpc;
pub mod model;
pub mod network;
pub mod registry;
pub mod server;
pub mod store;
pub mod workflows;

// Shared by the offline model and the built-in tools; not part of the API.
mod fnv;

/// Generated protobuf messages and the client of `runstream.v1`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pb/runstream.v1.rs"));
}

//! `research-network`: the built-in agent network. Its routing agent delegates among the `assistant` agent, the
//! `content-pipeline` workflow and the `calculator` tool. With the offline model it runs each primitive the task
//! names once, in the order named, then finishes.
//! Registered in [`catalog`](super::catalog) as a network run ([`workflow`]).

use std::sync::Arc;

use super::content_pipeline;
use crate::{
    builtin::{assistant_with, tools::calculator_tool},
    engine::Workflow,
    model::ModelProvider,
    network::{self, Network},
};

/// The network's id.
pub const ID: &str = "research-network";

/// The network with one model for everything in it (routing, assistant, content analyst).
pub fn research_network_with(model: Arc<dyn ModelProvider>) -> Arc<Network> {
    Arc::new(
        Network::new(
            ID,
            "Delegate questions and explanations to the assistant, arithmetic to the calculator, and turning text \
             into a publish-ready piece to content-pipeline.",
            Arc::clone(&model),
        )
        .description("Researches with the assistant, computes with the calculator and publishes with content-pipeline.")
        .agent(assistant_with(Arc::clone(&model)))
        .workflow(content_pipeline::workflow_with(content_pipeline::analyst_with(model)))
        .tool(calculator_tool()),
    )
}

/// `research-network` on `model` as a standalone run (see [`network::workflow`]).
pub fn workflow(model: Arc<dyn ModelProvider>) -> Arc<Workflow> {
    network::workflow(research_network_with(model))
}

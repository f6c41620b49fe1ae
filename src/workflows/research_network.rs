//! `research-network`: the built-in agent network. Its routing agent delegates among the `assistant` agent, the
//! `content-pipeline` workflow and the `calculator` tool. With the offline model it runs each primitive the task
//! names once, in the order named, then finishes.
//! Registered in [`builtin_catalog`](super::builtin_catalog) as a network run ([`workflow`]).

use std::sync::Arc;

use super::content_pipeline;
use crate::{
    agent::{assistant_with, env_model, tools::calculator_tool},
    engine::Workflow,
    model::ModelProvider,
    network::{self, Network},
};

pub const ID: &str = "research-network";

/// The network, every model (routing, assistant, content analyst) from the environment ([`env_model`]); a
/// broken model configuration falls back to the offline model (with a warning), as for the built-in agents.
pub fn research_network() -> Arc<Network> {
    research_network_with(env_model("the research network"))
}

/// The network with one model for everything in it (tests pin the offline model).
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

/// `research-network` as a standalone run (see [`network::workflow`]).
pub fn workflow() -> Arc<Workflow> {
    network::workflow(research_network())
}

//! The built-in workflows every runstream server offers: demos, the throughput benchmark and end-to-end fixtures
//! for each streaming feature (plain chain, writer output, foreach progress, suspend/resume, sleep, retries, agent chunks),
//! and the built-in agents and networks as runnables (`assistant`, `concierge`, `research-network`,
//! `travel-network`).

use crate::{agent, engine::WorkflowCatalog};

pub mod batch_foreach;
pub mod chain;
pub mod content_pipeline;
pub mod flaky;
pub mod order_approval;
pub mod research_network;
pub mod timer;
pub mod travel_network;
pub mod weather_activities;
pub mod writer_flood;

/// A catalog holding every built-in workflow.
pub fn builtin_catalog() -> WorkflowCatalog {
    let mut catalog = WorkflowCatalog::new();
    catalog.register(chain::workflow());
    catalog.register(content_pipeline::workflow());
    catalog.register(writer_flood::workflow());
    catalog.register(batch_foreach::workflow());
    catalog.register(order_approval::workflow());
    catalog.register(timer::workflow());
    catalog.register(flaky::workflow());
    catalog.register(weather_activities::workflow());
    catalog.register(agent::workflow(agent::assistant()));
    catalog.register(agent::workflow(agent::concierge()));
    catalog.register(research_network::workflow());
    catalog.register(travel_network::workflow());
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_builtins_sorted() {
        let ids: Vec<String> = builtin_catalog().list().iter().map(|w| w.id().to_string()).collect();
        assert_eq!(
            ids,
            [
                "assistant",
                "batch-foreach",
                "chain",
                "concierge",
                "content-pipeline",
                "flaky",
                "order-approval",
                "research-network",
                "timer",
                "travel-network",
                "weather-activities",
                "writer-flood"
            ]
        );
        assert!(builtin_catalog().get("chain").is_some());
        assert!(builtin_catalog().get("nope").is_none());
    }
}

//! The built-in workflows every runstream server offers: demos, the throughput benchmark and end-to-end fixtures
//! for each streaming feature (plain chain, writer output, foreach progress, suspend/resume, sleep, retries, agent chunks),
//! and the built-in agents and networks as runnables (`assistant`, `concierge`, `research-network`,
//! `travel-network`).

use std::{sync::Arc, time::Duration};

use crate::{
    agent,
    engine::{StepContext, WorkflowCatalog},
    model::{ModelProvider, OfflineModel},
};

pub mod agents;
pub mod batch_foreach;
pub mod chain;
pub mod content_pipeline;
pub mod flaky;
pub mod order_approval;
pub mod research_network;
pub mod timer;
pub mod tools;
pub mod travel_network;
pub mod weather_activities;
pub mod writer_flood;

pub use agents::{ASSISTANT_ID, CONCIERGE_ID, assistant_with, concierge_with};

/// Waits the run input's optional `delayMs` (on the step's clock; a cancel drops the wait with the step). The demo
/// workflows that take it use it to make a step last long enough to be watched, or interrupted, mid-way.
pub(crate) async fn input_delay(ctx: &StepContext) {
    if let Some(ms) = ctx.run_input()["delayMs"].as_u64().filter(|ms| *ms > 0) {
        ctx.clock().sleep(Duration::from_millis(ms)).await;
    }
}

/// The JSON Schema of the optional `delayMs` input.
pub(crate) fn delay_schema() -> serde_json::Value {
    serde_json::json!({ "type": "integer", "minimum": 0 })
}

/// A catalog holding every built-in workflow, its agents and networks on the offline model (deterministic, no
/// network): what tests and benchmarks run. `runstream serve` uses [`catalog_with`] and the model its
/// settings choose.
pub fn catalog() -> WorkflowCatalog {
    catalog_with(Arc::new(OfflineModel::new()))
}

/// A catalog holding every built-in workflow, its agents and networks sharing `model` (one client and connection
/// pool).
pub fn catalog_with(model: Arc<dyn ModelProvider>) -> WorkflowCatalog {
    let mut catalog = WorkflowCatalog::new();
    catalog.register(chain::workflow());
    catalog.register(content_pipeline::workflow_with(content_pipeline::analyst_with(model.clone())));
    catalog.register(writer_flood::workflow());
    catalog.register(batch_foreach::workflow());
    catalog.register(order_approval::workflow());
    catalog.register(timer::workflow());
    catalog.register(flaky::workflow());
    catalog.register(weather_activities::workflow_with(assistant_with(model.clone())));
    catalog.register(agent::workflow(assistant_with(model.clone())));
    catalog.register(agent::workflow(concierge_with(model.clone())));
    catalog.register(crate::network::workflow(research_network::research_network_with(model.clone())));
    catalog.register(crate::network::workflow(travel_network::travel_network_with(model)));
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_builtins_sorted() {
        let ids: Vec<String> = catalog().list().iter().map(|w| w.id().to_string()).collect();
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
        assert!(catalog().get("chain").is_some());
        assert!(catalog().get("nope").is_none());
    }
}

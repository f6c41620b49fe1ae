//! The built-in agents: `assistant` (weather and calculator tools, a guardrail) and `concierge` (bookings that
//! wait for approval, a tool that asks the guest).

use std::sync::Arc;

use super::tools;
use crate::{agent::Agent, model::ModelProvider};

/// Id of the built-in [`assistant_with`] agent.
pub const ASSISTANT_ID: &str = "assistant";

/// The built-in assistant, on `model`: answers questions, using `get-weather` and `calculator`.
pub fn assistant_with(model: Arc<dyn ModelProvider>) -> Arc<Agent> {
    Arc::new(
        Agent::new(
            ASSISTANT_ID,
            "You are a helpful assistant. Use the get-weather tool for current weather and the calculator tool for \
             arithmetic; never guess either. Answer briefly and concretely.",
            model,
        )
        .description("A helpful assistant with weather and calculator tools.")
        .tool(tools::get_weather_tool())
        .tool(tools::calculator_tool())
        .output_guardrail(tools::secret_guard()),
    )
}

/// Id of the built-in [`concierge_with`] agent.
pub const CONCIERGE_ID: &str = "concierge";

/// The built-in concierge, on `model`: checks the weather, books activities and reserves tables. Every booking waits
/// for the user's approval (its run suspends with `ToolCallApproval`); a reservation without party size or time asks
/// the guest (`reserve-table` suspends itself: `ToolCallSuspended`).
pub fn concierge_with(model: Arc<dyn ModelProvider>) -> Arc<Agent> {
    Arc::new(
        Agent::new(
            CONCIERGE_ID,
            "You are a concierge. Check the weather with get-weather when it matters, book activities with \
             book-activity when the user asks (the user approves each booking), and reserve restaurant tables with \
             reserve-table (it asks the guest what it lacks). Confirm what was booked or reserved.",
            model,
        )
        .description(
            "Checks the weather, books activities (each booking needs the user's approval) and reserves tables \
             (asking the guest for party size and time).",
        )
        .tool(tools::get_weather_tool())
        .tool(tools::book_activity_tool())
        .tool(tools::reserve_table_tool())
        .output_guardrail(tools::secret_guard()),
    )
}

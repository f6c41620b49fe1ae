//! `travel-network`: the built-in network whose primitives wait for people. Its routing agent delegates among the
//! `concierge` agent (whose `book-activity` calls need the user's approval), the `order-approval` workflow (whose
//! `approve` step suspends for a manager's decision) and the `book-activity` tool itself (which needs approval when
//! the network calls it directly), and the `reserve-table` tool (which suspends itself to ask for what a
//! reservation lacks, also when the concierge calls it). Each wait suspends the network run
//! (`AgentExecutionApproval`, `AgentExecutionSuspended`, `WorkflowExecutionSuspended`, `ToolExecutionApproval`,
//! `ToolExecutionSuspended`); `ResumeStream` continues it where it stopped. With the
//! offline model it runs each primitive the task names once, in the order named, then finishes.
//! Registered in [`catalog`](super::catalog) as a network run ([`workflow`]).

use std::sync::Arc;

use super::order_approval;
use super::{
    concierge_with,
    tools::{book_activity_tool, reserve_table_tool},
};
use crate::{
    engine::Workflow,
    model::ModelProvider,
    network::{self, Network},
};

/// The network's id.
pub const ID: &str = "travel-network";

/// The network with one model for everything in it (routing, concierge).
pub fn travel_network_with(model: Arc<dyn ModelProvider>) -> Arc<Network> {
    Arc::new(
        Network::new(
            ID,
            "Delegate trip planning and activity bookings to the concierge, orders that need a manager's sign-off to \
             order-approval (its input: an order id and an amount), and a single booking the user spells out to \
             book-activity. Bookings and orders wait for a person's decision.",
            Arc::clone(&model),
        )
        .description("Plans trips with the concierge, files orders with order-approval and books with book-activity.")
        .agent(concierge_with(model))
        .workflow(order_approval::workflow())
        .tool(book_activity_tool())
        .tool(reserve_table_tool()),
    )
}

/// `travel-network` on `model` as a standalone run (see [`network::workflow`]).
pub fn workflow(model: Arc<dyn ModelProvider>) -> Arc<Workflow> {
    network::workflow(travel_network_with(model))
}

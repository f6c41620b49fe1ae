//! A delegated agent: its chunks wrapped in `AgentExecutionEvent`s, its answer as the delegation's result, and the
//! network's suspension when one of its tool calls waits for approval or suspends itself.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    agent::{APPROVAL_SCHEMA, Agent, AgentEnd, AgentInput, AgentOptions, run_agent_with},
    engine::{Delegation, NetworkEvent, PrimitiveType},
    model::Message,
    network::{
        error_result,
        run::{AbortGuard, NetworkRun, Stop, Suspension, Waiting},
    },
};

impl NetworkRun<'_> {
    pub(super) async fn run_agent(&mut self, agent: &Agent, delegation: Delegation) -> Result<Delegation, Stop> {
        self.emit(NetworkEvent::AgentExecutionStart {
            agent_id: Arc::clone(&agent.id),
            delegation: Box::new(delegation.clone()),
        });
        let messages = vec![Message::user(delegation.prompt.clone())];
        self.continue_agent(agent, delegation, AgentInput::Messages(messages)).await
    }

    /// Runs a delegated agent from `input` (its message, or the decision its approval waited for) until it answers
    /// (`AgentExecutionEnd`) or a tool call of its waits for approval (`AgentExecutionApproval`, and the network
    /// suspends with the agent's own state).
    pub(super) async fn continue_agent(
        &mut self,
        agent: &Agent,
        mut delegation: Delegation,
        input: AgentInput,
    ) -> Result<Delegation, Stop> {
        let guard = AbortGuard::new(&self.emit, PrimitiveType::Agent, &agent.id);
        let (emit, agent_id) = (Arc::clone(&self.emit), Arc::clone(&agent.id));
        let nested = move |chunk| {
            emit(NetworkEvent::AgentExecutionEvent { agent_id: Arc::clone(&agent_id), chunk: Box::new(chunk) })
        };
        // The run's tenant and request context reach the agent's tools (a worker's tool task keeps the tenant).
        let options = AgentOptions {
            tenant: Arc::clone(&self.env.tenant),
            request_context: Arc::clone(&self.env.request_context),
            ..AgentOptions::default()
        };
        let outcome = run_agent_with(agent, input, &options, nested, self.env.cancel.clone()).await;
        let result = match outcome.end {
            AgentEnd::Finished(_) => Value::String(outcome.text),
            AgentEnd::Aborted => return Err(Stop::Aborted),
            AgentEnd::AwaitingApproval { approval, state } => {
                guard.disarm();
                let payload = json!({
                    "reason": "agent-execution-approval",
                    "iteration": delegation.iteration,
                    "agentId": &*agent.id,
                    "toolCallId": &*approval.tool_call_id,
                    "toolName": &*approval.tool_name,
                    "args": approval.args,
                });
                self.emit(NetworkEvent::AgentExecutionApproval {
                    agent_id: Arc::clone(&agent.id),
                    approval: Box::new(approval),
                    // The agent's usage so far; the network counts it once the agent ends.
                    usage: outcome.usage,
                    selection_reason: delegation.selection_reason.clone(),
                });
                let waiting = Waiting::Agent { delegation, state };
                return Err(Stop::Suspended(Box::new(Suspension {
                    waiting,
                    payload,
                    resume_schema: Some(APPROVAL_SCHEMA.clone()),
                })));
            }
            // One of its tools suspended itself: as for an approval, but the tool's own resume schema applies.
            AgentEnd::Suspended { suspended, state } => {
                guard.disarm();
                let payload = json!({
                    "reason": "agent-execution-suspended",
                    "iteration": delegation.iteration,
                    "agentId": &*agent.id,
                    "toolCallId": &*suspended.tool_call_id,
                    "toolName": &*suspended.tool_name,
                    "suspendPayload": suspended.suspend_payload,
                });
                // The loop suspends only for a tool that has a resume schema (compiled, on the tool).
                let resume_schema =
                    agent.find_tool(&suspended.tool_name).and_then(|t| t.compiled_resume_schema().cloned());
                self.emit(NetworkEvent::AgentExecutionSuspended {
                    agent_id: Arc::clone(&agent.id),
                    suspended: Box::new(suspended),
                    usage: outcome.usage,
                    selection_reason: delegation.selection_reason.clone(),
                });
                let waiting = Waiting::Agent { delegation, state };
                return Err(Stop::Suspended(Box::new(Suspension { waiting, payload, resume_schema })));
            }
            other => error_result(agent_failure(&other)),
        };
        guard.disarm();
        self.usage.add(&outcome.usage);
        delegation.result = Some(result);
        self.emit(NetworkEvent::AgentExecutionEnd {
            agent_id: Arc::clone(&agent.id),
            delegation: Box::new(delegation.clone()),
            usage: outcome.usage,
        });
        Ok(delegation)
    }
}

/// Why a delegated agent produced no answer.
fn agent_failure(end: &AgentEnd) -> String {
    match end {
        AgentEnd::Failed(error) => error.message.clone(),
        other => format!("the agent stopped without an answer ({other:?})"),
    }
}

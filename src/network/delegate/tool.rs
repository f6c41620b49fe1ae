//! A delegated tool: its input, the network's suspension when it needs approval or suspends itself, its call raced
//! against cancellation, and its result.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    agent::{APPROVAL_SCHEMA, Tool, ToolContext, approval_schema},
    engine::{Delegation, NetworkEvent, PrimitiveType, ToolCallApproval, ToolCallSuspended},
    network::{
        NetworkEnv, error_result,
        run::{AbortGuard, NetworkRun, Stop, Suspension, Waiting},
    },
};

impl NetworkRun<'_> {
    /// Runs a delegated tool, or, when it needs approval, emits `ToolExecutionApproval` and suspends the network.
    pub(super) async fn run_tool(&mut self, tool: &Tool, delegation: Delegation) -> Result<Delegation, Stop> {
        let guard = AbortGuard::new(&self.emit, PrimitiveType::Tool, tool.name());
        let args = self.input_for("tool", tool.name(), Some(tool.parameters()), &delegation.prompt).await?;
        let tool_name: Arc<str> = Arc::from(tool.name());
        let tool_call_id: Arc<str> = Arc::from(format!("{}-{}-{}", self.network.id, tool.name(), delegation.iteration));
        self.emit(NetworkEvent::ToolExecutionStart {
            tool_name: Arc::clone(&tool_name),
            tool_call_id: Arc::clone(&tool_call_id),
            args: args.as_ref().ok().cloned(),
            selection_reason: delegation.selection_reason.clone(),
        });
        // `call_tool` guards the call itself; nothing awaits in between.
        guard.disarm();
        let args = match args {
            Err(problem) => return Ok(self.end_tool(tool, delegation, tool_call_id, error_result(problem))),
            Ok(args) => args,
        };
        if tool.requires_approval() {
            let payload = json!({
                "reason": "tool-execution-approval",
                "iteration": delegation.iteration,
                "toolCallId": &*tool_call_id,
                "toolName": &*tool_name,
                "args": args,
            });
            self.emit(NetworkEvent::ToolExecutionApproval {
                approval: Box::new(ToolCallApproval {
                    tool_call_id: Arc::clone(&tool_call_id),
                    tool_name,
                    args: args.clone(),
                    resume_schema: Some(approval_schema()),
                }),
                selection_reason: delegation.selection_reason.clone(),
            });
            let waiting = Waiting::Tool { delegation, tool_call_id: tool_call_id.to_string(), args, suspended: false };
            return Err(Stop::Suspended(Box::new(Suspension {
                waiting,
                payload,
                resume_schema: Some(APPROVAL_SCHEMA.clone()),
            })));
        }
        self.call_tool(tool, delegation, tool_call_id, args, None).await
    }

    /// Calls a delegated tool (approved, if it needs approval; with `resume` when it suspended itself before) and
    /// ends its delegation with the result. A tool with a resume schema that suspends itself suspends the network
    /// (`ToolExecutionSuspended`); the resume data calls it again.
    pub(super) async fn call_tool(
        &mut self,
        tool: &Tool,
        delegation: Delegation,
        tool_call_id: Arc<str>,
        args: Value,
        resume: Option<Value>,
    ) -> Result<Delegation, Stop> {
        let guard = AbortGuard::new(&self.emit, PrimitiveType::Tool, tool.name());
        let mut ctx = tool_context(&self.network.id, &tool_call_id, &self.env);
        ctx.resume = resume;
        let cancel = self.env.cancel.clone();
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop::Aborted),
            r = tool.call(ctx, args.clone()) => r,
        };
        let result = match outcome {
            Ok(result) => result,
            Err(e) => match (e.suspend_payload(), tool.compiled_resume_schema()) {
                (Some(suspend_payload), Some(resume_schema)) => {
                    guard.disarm();
                    let payload = json!({
                        "reason": "tool-execution-suspended",
                        "iteration": delegation.iteration,
                        "toolCallId": &*tool_call_id,
                        "toolName": tool.name(),
                        "suspendPayload": suspend_payload,
                    });
                    self.emit(NetworkEvent::ToolExecutionSuspended {
                        suspended: Box::new(ToolCallSuspended {
                            tool_call_id: Arc::clone(&tool_call_id),
                            tool_name: Arc::from(tool.name()),
                            suspend_payload: suspend_payload.clone(),
                            args: args.clone(),
                            resume_schema: Some(resume_schema.raw().clone()),
                        }),
                        selection_reason: delegation.selection_reason.clone(),
                    });
                    let resume_schema = Some(resume_schema.clone());
                    let tool_call_id = tool_call_id.to_string();
                    let waiting = Waiting::Tool { delegation, tool_call_id, args, suspended: true };
                    return Err(Stop::Suspended(Box::new(Suspension { waiting, payload, resume_schema })));
                }
                // Only a tool with a resume schema may suspend (as in an agent's loop): otherwise it failed.
                _ => error_result(e.message),
            },
        };
        guard.disarm();
        Ok(self.end_tool(tool, delegation, tool_call_id, result))
    }

    pub(super) fn end_tool(
        &self,
        tool: &Tool,
        mut delegation: Delegation,
        tool_call_id: Arc<str>,
        result: Value,
    ) -> Delegation {
        delegation.result = Some(result);
        self.emit(NetworkEvent::ToolExecutionEnd {
            tool_name: Arc::from(tool.name()),
            tool_call_id,
            delegation: Box::new(delegation.clone()),
        });
        delegation
    }
}

/// The context a tool delegated to by the network runs with (the network is its caller).
fn tool_context(network_id: &Arc<str>, tool_call_id: &Arc<str>, env: &NetworkEnv) -> ToolContext {
    ToolContext {
        tenant: Arc::clone(&env.tenant),
        ..ToolContext::new(Arc::clone(network_id), Arc::clone(tool_call_id), env.cancel.clone())
    }
}

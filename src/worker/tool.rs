//! The remote tool: an agent [`Tool`] whose calls are tasks a worker runs, as a remote step's are.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    hub::{Chunk, NewTask, TaskEvent, WorkerHub},
    step::Abandon,
};
use crate::{
    agent::{Tool, ToolContext, ToolError},
    engine::{StepOutcome, schema::Schema},
};

impl WorkerHub {
    /// A tool named `name` whose calls a worker serving `task_type` runs: the call's arguments are the task's
    /// input, the worker's writes stream as the call's `ToolOutput` chunks, its Complete is the tool's result and
    /// its Fail the tool's error (shown to the model, which may try again). A canceled run abandons the task.
    /// Workers' tools cannot suspend themselves; `requires_approval` on the agent's definition asks a person first.
    pub(crate) fn tool(self: &Arc<Self>, name: &str, description: &str, parameters: Schema, task_type: &str) -> Tool {
        let hub = Arc::clone(self);
        let task_type: Arc<str> = Arc::from(task_type);
        let tool_name: Arc<str> = Arc::from(name);
        Tool::with_schema(name, description, parameters, move |ctx: ToolContext, args: Value| {
            let hub = Arc::clone(&hub);
            let task_type = Arc::clone(&task_type);
            let tool_name = Arc::clone(&tool_name);
            async move { hub.run_tool(ctx, args, task_type, tool_name).await }
        })
    }

    async fn run_tool(
        self: Arc<Self>,
        ctx: ToolContext,
        args: Value,
        task_type: Arc<str>,
        tool_name: Arc<str>,
    ) -> Result<Value, ToolError> {
        let run_id = ctx.run_id.as_deref().unwrap_or_default();
        let step_id = ctx.step_id.as_deref().unwrap_or_default();
        // Outside a run (a tool called directly) there is nothing to make the key unique with but a fresh id.
        let idempotency_key = match (&ctx.run_id, &ctx.step_id) {
            // Model-made call ids repeat across model calls (an OpenAI-compatible server may send none, then they are
            // `call_<index>`): the model call's number keeps the key unique within the step.
            (Some(run), Some(step)) => format!("{run}/{step}/{}/{}", ctx.step_number, ctx.tool_call_id),
            _ => format!("{}/{}", uuid::Uuid::now_v7(), ctx.tool_call_id),
        };
        let (task_id, mut events) = self.enqueue(
            NewTask {
                tenant: Arc::clone(&ctx.tenant),
                task_type: task_type.to_string(),
                run_id: run_id.to_owned(),
                workflow_id: ctx.agent_id.to_string(),
                // The worker sees which call of which step this is: `<agent step>/<tool name>`.
                step_id: if step_id.is_empty() { tool_name.to_string() } else { format!("{step_id}/{tool_name}") },
                for_each_index: None,
                input: args,
                resume_data: None,
                suspend_payload: None,
                request_context: (*ctx.request_context).clone(),
                idempotency_key,
            },
            1,
        );
        let mut guard = Abandon { hub: Arc::clone(&self), task_id, done: false };
        loop {
            let event = tokio::select! {
                biased;
                // The agent loop stops waiting too; dropping the guard abandons the task.
                () = ctx.cancel.cancelled() => return Err(ToolError::new("the run was canceled")),
                event = events.recv() => event,
            };
            let Some(event) = event else {
                guard.done = true;
                return Err(ToolError::new(format!("the task of tool '{tool_name}' was lost")));
            };
            match event {
                // An agent's chunks have no place for a waiting tool: the call simply takes longer.
                TaskEvent::Waiting(_) | TaskEvent::Running | TaskEvent::Redelivered(_) => {}
                TaskEvent::Output(chunk) => ctx.write(match chunk {
                    Chunk::Write(value) => value,
                    Chunk::Custom { kind, data, id, transient: _ } => match id {
                        Some(id) => json!({ "type": kind, "id": id, "data": data }),
                        None => json!({ "type": kind, "data": data }),
                    },
                    Chunk::Progress { current, total, message } => json!({
                        "type": "data-progress",
                        "data": { "current": current, "total": total, "message": message },
                    }),
                }),
                TaskEvent::Finished(outcome) => {
                    guard.done = true;
                    return match outcome {
                        Ok(StepOutcome::Done(value) | StepOutcome::Bail(value)) => Ok(value),
                        Ok(StepOutcome::Suspend { .. }) => Err(ToolError::new(format!(
                            "the worker suspended tool '{tool_name}', but a worker's tool cannot suspend; set \
                             requires_approval on the tool to have a person approve each call"
                        ))),
                        Err(e) => Err(ToolError::new(e.message())),
                    };
                }
            }
        }
    }
}

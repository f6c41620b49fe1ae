//! Runs the primitive a routing decision names (an agent, a workflow, a tool: one file each), or goes on with the
//! one that waited for a person, and turns a prompt into a workflow's or tool's input.

mod agent;
mod tool;
mod workflow;

use std::sync::Arc;

use serde_json::{Value, json};

use self::workflow::NestedRun;
use super::{
    Primitive, error_result,
    routing::excerpt,
    run::{CallError, NetworkRun, Stop, Waiting},
};
use crate::{
    agent::{AgentInput, ApprovalDecision},
    engine::{Delegation, ErrorInfo, ResumeRequest},
    model::{Message, ModelRequest, ResponseSchema},
};

impl NetworkRun<'_> {
    /// Runs the primitive `delegation` names; returns the delegation with its result.
    pub(super) async fn delegate(&mut self, delegation: Delegation) -> Result<Delegation, Stop> {
        let network = self.network;
        match network.primitive(&delegation.primitive_id) {
            Some(Primitive::Agent(agent)) => self.run_agent(agent, delegation).await,
            Some(Primitive::Workflow(workflow)) => self.run_workflow(workflow, delegation).await,
            Some(Primitive::Tool(tool)) => self.run_tool(tool, delegation).await,
            // `route` checked the id against the same network.
            None => Ok(Delegation { result: Some(error_result("unknown primitive")), ..delegation }),
        }
    }

    /// Goes on with the primitive that waited, given the resume data; returns its delegation with its result.
    pub(super) async fn resume(&mut self, waiting: Waiting, resume_data: Value) -> Result<Delegation, Stop> {
        let network = self.network;
        let primitive = network.primitive(&waiting.delegation().primitive_id);
        match (waiting, primitive) {
            (Waiting::Agent { delegation, state }, Some(Primitive::Agent(agent))) => {
                // The agent's loop reads the data: an approval decision, or what a suspended tool asked for.
                self.continue_agent(agent, delegation, AgentInput::Resume { state, data: resume_data }).await
            }
            (Waiting::Tool { delegation, tool_call_id, args, suspended: true }, Some(Primitive::Tool(tool))) => {
                // Called again with the same arguments, the data it asked for in its context.
                self.call_tool(tool, delegation, Arc::from(tool_call_id), args, Some(resume_data)).await
            }
            (Waiting::Tool { delegation, tool_call_id, args, suspended: false }, Some(Primitive::Tool(tool))) => {
                let decision = approval_decision(resume_data)?;
                let tool_call_id: Arc<str> = Arc::from(tool_call_id);
                if decision.approved {
                    return self.call_tool(tool, delegation, tool_call_id, args, None).await;
                }
                // Not an error: the router learns that the user said no, and may finish without it.
                let declined = json!({ "declined": true, "reason": decision.reason });
                Ok(self.end_tool(tool, delegation, tool_call_id, declined))
            }
            (
                Waiting::Workflow { delegation, workflow_run_id, input, phase, snapshot, step, for_each_index },
                Some(Primitive::Workflow(workflow)),
            ) => {
                let request = ResumeRequest { step: vec![step], label: None, for_each_index, resume_data };
                let target = workflow.resolve_resume(&snapshot, request).map_err(|e| {
                    Stop::Failed(ErrorInfo::new(
                        "ResumeError",
                        format!("workflow '{}' cannot resume: {e}", workflow.id()),
                    ))
                })?;
                let nested = NestedRun {
                    workflow_run_id: Arc::from(workflow_run_id),
                    input,
                    phase: phase + 1,
                    snapshot,
                    resume: Some(target),
                };
                self.run_nested(workflow, delegation, nested).await
            }
            (waiting, _) => Err(Stop::Failed(ErrorInfo::new(
                "ResumeError",
                format!("the network waits for '{}', which it no longer has", waiting.delegation().primitive_id),
            ))),
        }
    }

    /// The input of a workflow or tool: the prompt if it is a JSON object (or there is no schema), else what the
    /// routing model makes of it when asked for JSON of the input's schema. `Ok(Err(_))`: no usable input.
    async fn input_for(
        &mut self,
        kind: &str,
        id: &str,
        schema: Option<&Value>,
        prompt: &str,
    ) -> Result<Result<Value, String>, Stop> {
        let parsed = serde_json::from_str::<Value>(prompt.trim());
        let schema = match (parsed, schema) {
            (Ok(input @ Value::Object(_)), _) => return Ok(Ok(input)),
            (Ok(input), None) => return Ok(Ok(input)),
            (Err(_), None) => return Ok(Ok(Value::String(prompt.to_owned()))),
            (_, Some(schema)) => schema,
        };
        let mut request = ModelRequest::new(vec![
            Message::system(format!(
                "Write the input of {kind} '{id}' for the request below: a JSON object that satisfies its JSON \
                 Schema:\n{schema}"
            )),
            Message::user(prompt.to_owned()),
        ]);
        request.response_schema =
            Some(ResponseSchema { name: "input".to_owned(), schema: schema.clone(), strict: false });
        let (answer, usage) = match self.call(request, |_, _| {}).await {
            Ok(done) => done,
            Err(CallError::Canceled) => return Err(Stop::Aborted),
            Err(CallError::Failed(message)) => return Ok(Err(format!("could not derive its input: {message}"))),
        };
        self.usage.add(&usage);
        self.unreported_usage.add(&usage);
        Ok(serde_json::from_str::<Value>(answer.trim())
            .map_err(|e| format!("the input written for it is not JSON ({e}): {}", excerpt(&answer))))
    }
}

/// The decision an approval's resume data carries.
fn approval_decision(resume_data: Value) -> Result<ApprovalDecision, Stop> {
    ApprovalDecision::from_resume_data(resume_data)
        .map_err(|message| Stop::Failed(ErrorInfo::new("ResumeError", message)))
}

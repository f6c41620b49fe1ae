//! The network loop; see the [module docs](super) for the events it emits and why.

use std::{fmt::Write as _, sync::Arc};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CheckInput, Network, NetworkEnd, NetworkEnv, NetworkInput, NetworkOutcome, Primitive, error_result};
use crate::{
    agent::{
        APPROVAL_SCHEMA, Agent, AgentEnd, AgentInput, AgentOptions, ApprovalDecision, Tool, ToolContext,
        approval_schema, run_agent_with,
    },
    engine::{
        Delegation, ErrorInfo, Event, EventKind, EventSink, NetworkEvent, Phase, PrimitiveType, ResumeRequest,
        ResumeTarget, RunSnapshot, RunStatus, ToolCallApproval, ToolCallSuspended, Usage, Workflow, execute_phase,
        schema::Schema,
    },
    model::{Message, ModelChunk, ModelError, ModelRequest, ResponseSchema},
};

/// `agent_id` of the routing agent in `RoutingAgentStart` and `PrimitiveAbort` (Mastra's name for it).
pub const ROUTING_AGENT_ID: &str = "routing-agent";

/// The loop's callback, shared with the sink of nested workflow runs (which must be `'static`).
type Emit = Arc<dyn Fn(NetworkEvent) + Send + Sync>;

/// Where a network run starts.
#[derive(Debug, Clone)]
pub enum NetworkStart {
    /// A new run on the task.
    New,
    /// Continue after [`NetworkEnd::Suspended`], handing back its `state`, with the resume data (already checked
    /// against its resume schema).
    Resume { state: Value, resume_data: Value },
}

/// Runs `network` on `input` from the start; see [`run_network_with`].
pub async fn run_network<F>(network: &Network, input: NetworkInput, emit: F, env: NetworkEnv) -> NetworkOutcome
where
    F: Fn(NetworkEvent) + Send + Sync + 'static,
{
    run_network_with(network, input, NetworkStart::New, emit, env).await
}

/// Runs `network` on `input` from `start`, emitting every event through `emit`, until the router says the task is
/// complete and the completion checks pass, `max_iterations` iterations ran, the routing agent fails, a delegated
/// primitive waits for a person (the run suspends) or `env.cancel` fires.
pub async fn run_network_with<F>(
    network: &Network,
    input: NetworkInput,
    start: NetworkStart,
    emit: F,
    env: NetworkEnv,
) -> NetworkOutcome
where
    F: Fn(NetworkEvent) + Send + Sync + 'static,
{
    let NetworkInput { task, output_schema } = input;
    let mut run = NetworkRun {
        network,
        emit: Arc::new(emit),
        env,
        task,
        conversation: Vec::new(),
        ran: Vec::new(),
        usage: Usage::default(),
        unreported_usage: Usage::default(),
    };
    let max = network.max_iterations.max(1);
    let mut previous: Option<Delegation> = None;
    let mut first = 1;
    match start {
        NetworkStart::New => {
            run.conversation = vec![Message::system(routing_instructions(network)), Message::user(run.task.clone())];
        }
        NetworkStart::Resume { state, resume_data } => {
            let saved: SavedRun = match serde_json::from_value(state) {
                Ok(saved) => saved,
                Err(e) => {
                    let error = ErrorInfo::new("ResumeError", format!("the network's saved state is unreadable: {e}"));
                    return run.outcome(NetworkEnd::Failed(error), None, None, 0);
                }
            };
            let iteration = saved.iteration;
            (run.conversation, run.ran, run.usage) = (saved.conversation, saved.ran, saved.usage);
            // The waiting primitive goes on; its iteration then ends as any other, and the next one follows.
            match run.resume(saved.waiting, resume_data).await {
                Ok(delegation) => {
                    run.end_iteration(iteration, &delegation);
                    previous = Some(delegation);
                    first = iteration + 1;
                }
                Err(stop) => return run.stop(stop, None, iteration),
            }
        }
    }
    for iteration in first..=max {
        match run.iteration(iteration, previous.clone(), output_schema.as_ref()).await {
            Ok(IterationEnd::Next(delegation)) => previous = Some(delegation),
            Ok(IterationEnd::Complete { delegation, object }) => {
                return run.outcome(NetworkEnd::Complete, Some(delegation), object, iteration);
            }
            Err(stop) => return run.stop(stop, previous, iteration),
        }
    }
    // Every iteration leaves a delegation; the fallback only keeps this free of panics.
    let delegation = previous.unwrap_or_else(|| delegation(&run.task, super::NONE_ID, PrimitiveType::None, max));
    run.emit(NetworkEvent::NetworkFinish {
        delegation: Box::new(delegation.clone()),
        object: None,
        completion_reason: NetworkEnd::MaxIterations.completion_reason().unwrap_or_default().to_owned(),
        usage: run.usage,
    });
    run.outcome(NetworkEnd::MaxIterations, Some(delegation), None, max)
}

/// How an iteration ended, when the run goes on or completes.
enum IterationEnd {
    /// A primitive ran (or completion was refused): the delegation, with its result.
    Next(Delegation),
    /// The task is complete; `NetworkFinish` was emitted.
    Complete { delegation: Delegation, object: Option<Value> },
}

/// What ends the run early.
enum Stop {
    Failed(ErrorInfo),
    Aborted,
    /// A delegated primitive waits for a person; its event (`AgentExecutionApproval`, ...) was emitted.
    Suspended(Box<Suspension>),
}

/// A delegated primitive that waits, and what the network step's suspension tells callers.
struct Suspension {
    waiting: Waiting,
    /// The step's suspend payload: what is awaited.
    payload: Value,
    /// What the resume data must satisfy.
    resume_schema: Option<Schema>,
}

/// What a suspended network keeps to go on where it stopped: the step's saved state (`StepContext::save_state`),
/// which lives in the run's snapshot and is never shown to callers.
#[derive(Serialize, Deserialize)]
struct SavedRun {
    /// The iteration whose delegation waits.
    iteration: u32,
    conversation: Vec<Message>,
    ran: Vec<Delegation>,
    /// Every model call's usage so far, but the waiting primitive's: that is added when it ends, as for any
    /// primitive (its end event reports its usage over all phases).
    usage: Usage,
    waiting: Waiting,
}

/// The delegation that waits, and what its primitive needs to go on.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Waiting {
    /// A delegated agent's tool call awaits approval; `state` is the agent loop's own saved state.
    Agent { delegation: Delegation, state: Value },
    /// A delegated tool awaits approval, or (`suspended`) suspended itself and awaits its resume data.
    Tool {
        delegation: Delegation,
        tool_call_id: String,
        args: Value,
        #[serde(default)]
        suspended: bool,
    },
    /// A delegated workflow's nested run suspended; it resumes at `step` with the resume data.
    Workflow {
        delegation: Delegation,
        workflow_run_id: String,
        input: Value,
        /// The nested run's last phase.
        phase: u32,
        snapshot: RunSnapshot,
        step: String,
        for_each_index: Option<u32>,
    },
}

impl Waiting {
    fn delegation(&self) -> &Delegation {
        match self {
            Self::Agent { delegation, .. } | Self::Tool { delegation, .. } | Self::Workflow { delegation, .. } => {
                delegation
            }
        }
    }
}

/// A nested run of a delegated workflow: its first phase, or a resume.
struct NestedRun {
    workflow_run_id: Arc<str>,
    input: Value,
    phase: u32,
    snapshot: RunSnapshot,
    resume: Option<ResumeTarget>,
}

/// One run of the loop: the conversation with the router and the running totals.
struct NetworkRun<'a> {
    network: &'a Network,
    emit: Emit,
    env: NetworkEnv,
    task: String,
    conversation: Vec<Message>,
    /// Delegations that ran, with their results, in order.
    ran: Vec<Delegation>,
    usage: Usage,
    unreported_usage: Usage,
}

/// What the routing agent decided.
struct Decision {
    delegation: Delegation,
    /// The answer as the model wrote it, for the conversation.
    answer: String,
    usage: Usage,
}

impl NetworkRun<'_> {
    fn emit(&self, event: NetworkEvent) {
        (self.emit)(event);
    }

    fn outcome(
        &self,
        end: NetworkEnd,
        delegation: Option<Delegation>,
        object: Option<Value>,
        iterations: u32,
    ) -> NetworkOutcome {
        let finished = matches!(end, NetworkEnd::Complete | NetworkEnd::MaxIterations);
        NetworkOutcome {
            end,
            result: if finished { delegation.as_ref().and_then(|d| d.result.clone()) } else { None },
            delegation,
            object,
            usage: self.usage,
            unreported_usage: self.unreported_usage,
            iterations,
        }
    }

    /// The outcome of a run that stopped early at `iteration`.
    fn stop(mut self, stop: Stop, previous: Option<Delegation>, iteration: u32) -> NetworkOutcome {
        match stop {
            Stop::Aborted => self.outcome(NetworkEnd::Aborted, previous, None, iteration),
            Stop::Failed(error) => self.outcome(NetworkEnd::Failed(error), previous, None, iteration),
            Stop::Suspended(suspension) => {
                let Suspension { waiting, payload, resume_schema } = *suspension;
                let delegation = waiting.delegation().clone();
                let saved = SavedRun {
                    iteration,
                    conversation: std::mem::take(&mut self.conversation),
                    ran: std::mem::take(&mut self.ran),
                    usage: self.usage,
                    waiting,
                };
                let end = match serde_json::to_value(&saved) {
                    Ok(state) => NetworkEnd::Suspended { payload, resume_schema, state },
                    // Plain data throughout; only a bug could make this fail, and then the run must say so.
                    Err(e) => NetworkEnd::Failed(ErrorInfo::new(
                        "NetworkStateError",
                        format!("cannot save the network's state: {e}"),
                    )),
                };
                self.outcome(end, Some(delegation), None, iteration)
            }
        }
    }

    /// Ends an iteration whose primitive ran: the router reads its result, the stream gets the step finish.
    fn end_iteration(&mut self, iteration: u32, delegation: &Delegation) {
        self.conversation.push(Message::assistant(result_note(delegation)));
        self.emit(NetworkEvent::NetworkStepFinish {
            task: self.task.clone(),
            result: delegation.result.clone(),
            is_complete: false,
            iteration,
        });
        self.ran.push(delegation.clone());
    }

    async fn iteration(
        &mut self,
        iteration: u32,
        previous: Option<Delegation>,
        output_schema: Option<&Schema>,
    ) -> Result<IterationEnd, Stop> {
        self.emit(NetworkEvent::RoutingAgentStart {
            agent_id: Arc::from(ROUTING_AGENT_ID),
            network_id: Arc::clone(&self.network.id),
            task: self.task.clone(),
            iteration,
            previous: previous.map(Box::new),
        });
        let Decision { mut delegation, answer, usage } = self.route(iteration).await?;
        self.usage.add(&usage);
        self.emit(NetworkEvent::RoutingAgentEnd { delegation: Box::new(delegation.clone()), usage });
        self.conversation.push(Message::assistant(answer));

        if delegation.primitive_type != PrimitiveType::None {
            let delegation = self.delegate(delegation).await?;
            self.end_iteration(iteration, &delegation);
            return Ok(IterationEnd::Next(delegation));
        }

        // The router says the task is complete: the final result is the last primitive's, or its own answer.
        let result = match self.ran.last() {
            Some(last) => last.result.clone().unwrap_or(Value::Null),
            None => Value::String(delegation.prompt.clone()),
        };
        delegation.result = Some(result.clone());
        let failures = self.validate(iteration, &result);
        self.emit(NetworkEvent::NetworkStepFinish {
            task: self.task.clone(),
            result: Some(result),
            is_complete: failures.is_none(),
            iteration,
        });
        if let Some(reasons) = failures {
            delegation.is_complete = false;
            self.conversation.push(Message::user(format!(
                "The task is not complete yet: {reasons}. Continue with the task: {}",
                self.task
            )));
            return Ok(IterationEnd::Next(delegation));
        }
        let object = match output_schema {
            Some(schema) => Some(self.structured_output(schema).await?),
            None => None,
        };
        self.emit(NetworkEvent::NetworkFinish {
            delegation: Box::new(delegation.clone()),
            object: object.clone(),
            completion_reason: NetworkEnd::Complete.completion_reason().unwrap_or_default().to_owned(),
            usage: self.usage,
        });
        Ok(IterationEnd::Complete { delegation, object })
    }

    /// One routing call: streams the answer, then parses and checks it.
    async fn route(&mut self, iteration: u32) -> Result<Decision, Stop> {
        let mut request = ModelRequest::new(self.conversation.clone());
        request.response_schema = Some(ResponseSchema {
            name: "routing_decision".to_owned(),
            schema: routing_schema(self.network),
            strict: true,
        });
        let guard = AbortGuard::new(&self.emit, PrimitiveType::RoutingAgent, ROUTING_AGENT_ID);
        let emit = Arc::clone(&self.emit);
        let mut started = false;
        let call = self
            .call(request, |delta, restarted| {
                if restarted {
                    // A retried call streams afresh: a new text start tells clients to drop the void attempt.
                    started = false;
                }
                if !started {
                    emit(NetworkEvent::RoutingAgentTextStart);
                    started = true;
                }
                emit(NetworkEvent::RoutingAgentTextDelta { text: delta.to_owned() });
            })
            .await;
        let (answer, usage) = match call {
            Ok(done) => done,
            Err(CallError::Canceled) => return Err(Stop::Aborted),
            Err(CallError::Failed(message)) => {
                guard.disarm();
                return Err(Stop::Failed(routing_error(iteration, format!("its model call failed: {message}"), None)));
            }
        };
        guard.disarm();
        match parse_decision(self.network, &answer) {
            Ok((primitive_id, primitive_type, prompt, selection_reason)) => {
                let mut delegation = delegation(&self.task, &primitive_id, primitive_type, iteration);
                delegation.prompt = prompt;
                delegation.selection_reason = selection_reason;
                Ok(Decision { delegation, answer, usage })
            }
            Err(problem) => {
                // No event reports this call, but it was made.
                self.usage.add(&usage);
                self.unreported_usage.add(&usage);
                Err(Stop::Failed(routing_error(iteration, problem, Some(&answer))))
            }
        }
    }

    /// Runs the primitive `delegation` names; returns the delegation with its result.
    async fn delegate(&mut self, delegation: Delegation) -> Result<Delegation, Stop> {
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
    async fn resume(&mut self, waiting: Waiting, resume_data: Value) -> Result<Delegation, Stop> {
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

    async fn run_agent(&mut self, agent: &Agent, delegation: Delegation) -> Result<Delegation, Stop> {
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
    async fn continue_agent(
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
        let outcome = run_agent_with(agent, input, &AgentOptions::default(), nested, self.env.cancel.clone()).await;
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

    async fn run_workflow(&mut self, workflow: &Arc<Workflow>, delegation: Delegation) -> Result<Delegation, Stop> {
        let workflow_id = Arc::clone(workflow.id());
        let guard = AbortGuard::new(&self.emit, PrimitiveType::Workflow, &workflow_id);
        let input = self
            .input_for("workflow", &workflow_id, workflow.input_schema(), &delegation.prompt)
            .await?
            .and_then(|input| match workflow.validate_input(&input) {
                Ok(()) => Ok(input),
                Err(violation) => Err(format!("its input does not fit its schema: {violation}")),
            });
        let workflow_run_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        self.emit(NetworkEvent::WorkflowExecutionStart {
            workflow_id: Arc::clone(&workflow_id),
            workflow_run_id: Arc::clone(&workflow_run_id),
            delegation: Box::new(delegation.clone()),
        });
        // `run_nested` guards the nested run itself; nothing awaits in between.
        guard.disarm();
        match input {
            Err(problem) => Ok(self.end_workflow(
                workflow_id,
                workflow_run_id,
                delegation,
                RunStatus::Failed,
                error_result(problem),
                Usage::default(),
            )),
            Ok(input) => {
                let nested =
                    NestedRun { workflow_run_id, input, phase: 1, snapshot: RunSnapshot::default(), resume: None };
                self.run_nested(workflow, delegation, nested).await
            }
        }
    }

    /// Runs one phase of a delegated workflow's nested run: its events wrapped, then `WorkflowExecutionEnd`, or,
    /// when it suspends, `WorkflowExecutionSuspended` and the network suspends with the nested run's snapshot.
    async fn run_nested(
        &mut self,
        workflow: &Arc<Workflow>,
        delegation: Delegation,
        nested: NestedRun,
    ) -> Result<Delegation, Stop> {
        let workflow_id = Arc::clone(workflow.id());
        let mut guard = AbortGuard::new(&self.emit, PrimitiveType::Workflow, &workflow_id);
        // Whichever way the nested run is cut short, its stream still ends with a finish.
        guard.before_abort(nested_event(&workflow_id, canceled_finish()));
        let NestedRun { workflow_run_id, input, phase, snapshot, resume } = nested;
        let sink = NestedSink { workflow_id: Arc::clone(&workflow_id), emit: Arc::clone(&self.emit) };
        let outcome = execute_phase(Phase {
            run_id: Arc::clone(&workflow_run_id),
            workflow: Arc::clone(workflow),
            input: input.clone(),
            request_context: Arc::clone(&self.env.request_context),
            phase,
            snapshot,
            resume,
            recovering: false,
            sink: Arc::new(sink),
            clock: Arc::clone(&self.env.clock),
            cancel: self.env.cancel.clone(),
        })
        .await;
        if outcome.status == RunStatus::Canceled || self.env.cancel.is_cancelled() {
            return Err(Stop::Aborted);
        }
        // Over all of the nested run's phases.
        let usage = outcome.snapshot.usage;
        self.emit(nested_event(
            &workflow_id,
            EventKind::WorkflowFinish {
                status: outcome.status,
                result: outcome.result.clone(),
                error: outcome.error.clone(),
                usage,
            },
        ));
        guard.disarm();
        // The network waits for the first suspended step (in path order); if others wait too, the nested run
        // suspends again once that one resumes, and the network with it.
        let waiting_step = outcome.snapshot.suspended.iter().next().map(|(path, s)| (path.clone(), s.clone()));
        let result = match (outcome.status, waiting_step) {
            (RunStatus::Suspended, Some((step, suspended))) => {
                self.emit(NetworkEvent::WorkflowExecutionSuspended {
                    workflow_id: Arc::clone(&workflow_id),
                    workflow_run_id: Arc::clone(&workflow_run_id),
                    suspend_payload: suspended.suspend_payload.clone(),
                    usage,
                    selection_reason: delegation.selection_reason.clone(),
                });
                let mut payload = json!({
                    "reason": "workflow-execution-suspended",
                    "iteration": delegation.iteration,
                    "workflowId": &*workflow_id,
                    "workflowRunId": &*workflow_run_id,
                    "step": &step,
                    "suspendPayload": suspended.suspend_payload,
                });
                if let Some(index) = suspended.for_each_index {
                    payload["forEachIndex"] = json!(index);
                }
                let waiting = Waiting::Workflow {
                    delegation,
                    workflow_run_id: workflow_run_id.to_string(),
                    input,
                    phase,
                    snapshot: outcome.snapshot,
                    step,
                    for_each_index: suspended.for_each_index,
                };
                return Err(Stop::Suspended(Box::new(Suspension {
                    waiting,
                    payload,
                    resume_schema: suspended.resume_schema.clone(),
                })));
            }
            (RunStatus::Success, _) => outcome.result.unwrap_or(Value::Null),
            _ => error_result(outcome.error.map_or_else(|| outcome.status.as_str().to_owned(), |e| e.message)),
        };
        Ok(self.end_workflow(workflow_id, workflow_run_id, delegation, outcome.status, result, usage))
    }

    fn end_workflow(
        &mut self,
        workflow_id: Arc<str>,
        workflow_run_id: Arc<str>,
        mut delegation: Delegation,
        status: RunStatus,
        result: Value,
        usage: Usage,
    ) -> Delegation {
        self.usage.add(&usage);
        delegation.result = Some(result);
        self.emit(NetworkEvent::WorkflowExecutionEnd {
            workflow_id,
            workflow_run_id,
            delegation: Box::new(delegation.clone()),
            status,
            usage,
        });
        delegation
    }

    /// Runs a delegated tool, or, when it needs approval, emits `ToolExecutionApproval` and suspends the network.
    async fn run_tool(&mut self, tool: &Tool, delegation: Delegation) -> Result<Delegation, Stop> {
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
    async fn call_tool(
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

    fn end_tool(&self, tool: &Tool, mut delegation: Delegation, tool_call_id: Arc<str>, result: Value) -> Delegation {
        delegation.result = Some(result);
        self.emit(NetworkEvent::ToolExecutionEnd {
            tool_name: Arc::from(tool.name()),
            tool_call_id,
            delegation: Box::new(delegation.clone()),
        });
        delegation
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

    /// Runs the completion checks between `NetworkValidationStart` and `NetworkValidationEnd`; `Some(reasons)`
    /// when one failed.
    fn validate(&self, iteration: u32, result: &Value) -> Option<String> {
        let checks = &self.network.completion_checks;
        self.emit(NetworkEvent::NetworkValidationStart { iteration, checks_count: checks.len() as u32 });
        let started = self.env.clock.now();
        let input = CheckInput { network: self.network, task: &self.task, ran: &self.ran, result };
        let mut results = Vec::with_capacity(checks.len());
        let mut failures = Vec::new();
        for check in checks {
            let (passed, reason) = match check.check(&input) {
                Ok(reason) => (true, reason),
                Err(reason) => {
                    failures.push(reason.clone());
                    (false, reason)
                }
            };
            results.push(json!({ "check": check.id(), "passed": passed, "reason": reason }));
        }
        let duration_ms = self.env.clock.now().duration_since(started).map_or(0, |d| d.as_millis() as u64);
        let passed = failures.is_empty();
        let reason = if passed { format!("all {} checks passed", checks.len()) } else { failures.join("; ") };
        self.emit(NetworkEvent::NetworkValidationEnd {
            iteration,
            passed,
            results: Value::Array(results),
            duration_ms,
            timed_out: false,
            reason: Some(reason.clone()),
            max_iteration_reached: iteration >= self.network.max_iterations.max(1),
        });
        (!passed).then_some(reason)
    }

    /// The final answer as JSON of `schema`, from one call of the routing model: `NetworkObject` partials as it
    /// streams, then the checked `NetworkObjectResult`.
    async fn structured_output(&mut self, schema: &Schema) -> Result<Value, Stop> {
        let mut instructions = format!(
            "Write the final answer to the user's task as a JSON object that satisfies this JSON Schema:\n{}\n\nWhat \
             the network's primitives produced, in order:",
            schema.raw()
        );
        for delegation in &self.ran {
            let _ = write!(instructions, "\n- {}", result_note(delegation));
        }
        let mut request = ModelRequest::new(vec![Message::system(instructions), Message::user(self.task.clone())]);
        request.response_schema =
            Some(ResponseSchema { name: "final_answer".to_owned(), schema: schema.raw().clone(), strict: false });
        let guard = AbortGuard::new(&self.emit, PrimitiveType::RoutingAgent, ROUTING_AGENT_ID);
        let emit = Arc::clone(&self.emit);
        let (mut text, mut last) = (String::new(), None::<Value>);
        let call = self
            .call(request, |delta, restarted| {
                if restarted {
                    text.clear();
                }
                text.push_str(delta);
                if let Some(object) = partial_object(&text).filter(|o| last.as_ref() != Some(o)) {
                    emit(NetworkEvent::NetworkObject { object: object.clone() });
                    last = Some(object);
                }
            })
            .await;
        let (answer, usage) = match call {
            Ok(done) => done,
            Err(CallError::Canceled) => return Err(Stop::Aborted),
            Err(CallError::Failed(message)) => {
                guard.disarm();
                return Err(Stop::Failed(structured_error(format!("its model call failed: {message}"))));
            }
        };
        guard.disarm();
        self.usage.add(&usage);
        self.unreported_usage.add(&usage);
        let object = serde_json::from_str::<Value>(answer.trim()).map_err(|e| {
            Stop::Failed(structured_error(format!("the answer is not JSON ({e}): {}", excerpt(&answer))))
        })?;
        schema.validate(&object, "object").map_err(|v| Stop::Failed(structured_error(v.to_string())))?;
        self.emit(NetworkEvent::NetworkObjectResult { object: object.clone() });
        Ok(object)
    }

    /// Streams one model call, handing each text delta to `on_delta` (with `true` for the first delta after a
    /// retry restarted the call); returns the complete text and the call's usage.
    async fn call(
        &self,
        request: ModelRequest,
        mut on_delta: impl FnMut(&str, bool),
    ) -> Result<(String, Usage), CallError> {
        let cancel = self.env.cancel.clone();
        let mut stream = self.network.model.stream(request, cancel.clone());
        let (mut text, mut usage, mut finished, mut restarted) = (String::new(), Usage::default(), false, false);
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(CallError::Canceled),
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Err(ModelError::Canceled)) => return Err(CallError::Canceled),
                Some(Err(e)) => return Err(CallError::Failed(e.to_string())),
                Some(Ok(ModelChunk::TextDelta { text: delta })) if !delta.is_empty() => {
                    text.push_str(&delta);
                    on_delta(&delta, std::mem::take(&mut restarted));
                }
                Some(Ok(ModelChunk::Usage { usage: u })) => usage = u,
                Some(Ok(ModelChunk::Finish { .. })) => finished = true,
                Some(Ok(ModelChunk::Restart { .. })) => {
                    (text, usage, finished, restarted) = (String::new(), Usage::default(), false, true);
                }
                Some(Ok(_)) => {}
            }
        }
        if !finished {
            return Err(CallError::Failed("the model's response ended without a finish reason".to_owned()));
        }
        Ok((text, usage))
    }
}

/// Why a model call produced no answer.
enum CallError {
    Canceled,
    Failed(String),
}

/// Emits `PrimitiveAbort` for what is running unless disarmed, so that both a cancel the loop notices and a
/// dropped loop future (the engine drops a canceled step's future) tell the stream what was cut short.
struct AbortGuard {
    emit: Emit,
    armed: Option<(PrimitiveType, String)>,
    /// Emitted just before the abort (a nested run's canceled finish).
    before: Option<NetworkEvent>,
}

impl AbortGuard {
    fn new(emit: &Emit, primitive_type: PrimitiveType, primitive_id: &str) -> Self {
        Self { emit: Arc::clone(emit), armed: Some((primitive_type, primitive_id.to_owned())), before: None }
    }

    fn before_abort(&mut self, event: NetworkEvent) {
        self.before = Some(event);
    }

    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some((primitive_type, primitive_id)) = self.armed.take() {
            if let Some(event) = self.before.take() {
                (self.emit)(event);
            }
            (self.emit)(NetworkEvent::PrimitiveAbort { primitive_type, primitive_id });
        }
    }
}

/// Wraps a nested workflow run's events as `WorkflowExecutionEvent`s.
struct NestedSink {
    workflow_id: Arc<str>,
    emit: Emit,
}

impl EventSink for NestedSink {
    fn emit(&self, event: Event) {
        (self.emit)(nested_event(&self.workflow_id, event.kind));
    }
}

fn nested_event(workflow_id: &Arc<str>, event: EventKind) -> NetworkEvent {
    NetworkEvent::WorkflowExecutionEvent { workflow_id: Arc::clone(workflow_id), event: Box::new(event) }
}

/// The finish of a nested run that was canceled (the registry's job for top-level runs).
fn canceled_finish() -> EventKind {
    EventKind::WorkflowFinish { status: RunStatus::Canceled, result: None, error: None, usage: Usage::default() }
}

/// The context a tool delegated to by the network runs with (the network is its caller).
fn tool_context(network_id: &Arc<str>, tool_call_id: &Arc<str>, env: &NetworkEnv) -> ToolContext {
    ToolContext::new(Arc::clone(network_id), Arc::clone(tool_call_id), env.cancel.clone())
}

/// The decision an approval's resume data carries.
fn approval_decision(resume_data: Value) -> Result<ApprovalDecision, Stop> {
    ApprovalDecision::from_resume_data(resume_data)
        .map_err(|message| Stop::Failed(ErrorInfo::new("ResumeError", message)))
}

/// Why a delegated agent produced no answer.
fn agent_failure(end: &AgentEnd) -> String {
    match end {
        AgentEnd::Failed(error) => error.message.clone(),
        other => format!("the agent stopped without an answer ({other:?})"),
    }
}

fn delegation(task: &str, primitive_id: &str, primitive_type: PrimitiveType, iteration: u32) -> Delegation {
    Delegation {
        task: task.to_owned(),
        primitive_id: primitive_id.to_owned(),
        primitive_type,
        prompt: String::new(),
        result: None,
        is_complete: primitive_type == PrimitiveType::None,
        selection_reason: String::new(),
        iteration,
    }
}

/// The routing agent's system message: what the network is, its primitives, and the answer format.
fn routing_instructions(network: &Network) -> String {
    let mut text = format!(
        "You are the routing agent of the agent network '{}'. You work on the user's task one step at a time: each \
         time you are asked, choose the one primitive (agent, workflow or tool) to run next, or \"none\" once the \
         task is complete.",
        network.id
    );
    if !network.description.is_empty() {
        let _ = write!(text, " The network: {}", network.description);
    }
    if !network.instructions.is_empty() {
        let _ = write!(text, "\n\n{}", network.instructions);
    }
    text.push_str("\n\nPrimitives:");
    for agent in &network.agents {
        let _ = write!(text, "\n- agent \"{}\": {}", agent.id, agent.description);
    }
    for workflow in &network.workflows {
        let _ = write!(text, "\n- workflow \"{}\": {}", workflow.id(), workflow.description());
        if let Some(schema) = workflow.input_schema() {
            let _ = write!(text, " Input (JSON Schema): {schema}");
        }
    }
    for tool in &network.tools {
        let _ = write!(
            text,
            "\n- tool \"{}\": {} Input (JSON Schema): {}",
            tool.name(),
            tool.description(),
            tool.parameters()
        );
    }
    text.push_str(
        "\n\nAnswer with a JSON object: \"primitive_id\", the id of the primitive to run next, or \"none\" when the \
         task is complete; \"prompt\", what the primitive gets: an agent's message, a workflow's or tool's input as \
         a JSON object (or a request in words, which is turned into that input), or with \"none\" your final answer; \
         \"selection_reason\", why, in one sentence. Run every primitive the task names, in the order it names them, \
         each once unless a result shows it must run again. Each primitive's result follows your decision.",
    );
    text
}

/// The routing answer's JSON Schema: strict (every field required, nothing else), `primitive_id` an enum with
/// `"none"` first.
fn routing_schema(network: &Network) -> Value {
    let mut ids = vec![super::NONE_ID];
    ids.extend(network.primitive_ids());
    json!({
        "type": "object",
        "required": ["primitive_id", "prompt", "selection_reason"],
        "properties": {
            "primitive_id": { "type": "string", "enum": ids },
            "prompt": { "type": "string" },
            "selection_reason": { "type": "string" }
        },
        "additionalProperties": false
    })
}

/// Reads the routing answer: `(primitive_id, type, prompt, selection_reason)`, or what is wrong with it.
fn parse_decision(network: &Network, answer: &str) -> Result<(String, PrimitiveType, String, String), String> {
    let value: Value =
        serde_json::from_str(strip_code_fence(answer)).map_err(|e| format!("its answer is not JSON ({e})"))?;
    let Value::Object(fields) = value else {
        return Err("its answer is not a JSON object".to_owned());
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!("\"{name}\" must be a string, not {other}")),
    };
    let primitive_id = match fields.get("primitive_id") {
        Some(Value::String(id)) => id.trim().to_owned(),
        _ => return Err("its answer has no \"primitive_id\" string".to_owned()),
    };
    let primitive_type = if primitive_id == super::NONE_ID {
        PrimitiveType::None
    } else {
        match network.primitive(&primitive_id) {
            Some(primitive) => primitive.primitive_type(),
            None => {
                return Err(format!(
                    "it chose \"{primitive_id}\", which is not a primitive of this network (it has: {}; or \"none\")",
                    network.primitive_ids().join(", ")
                ));
            }
        }
    };
    Ok((primitive_id, primitive_type, text("prompt")?, text("selection_reason")?))
}

/// Models asked for JSON sometimes wrap it in a Markdown code fence anyway.
fn strip_code_fence(text: &str) -> &str {
    let text = text.trim();
    match text.strip_prefix("```") {
        Some(rest) => {
            let body = rest.split_once('\n').map_or("", |(_, body)| body);
            body.trim_end().strip_suffix("```").unwrap_or(body).trim()
        }
        None => text,
    }
}

fn routing_error(iteration: u32, problem: String, answer: Option<&str>) -> ErrorInfo {
    ErrorInfo {
        name: "RoutingError".to_owned(),
        message: format!("the routing agent failed at iteration {iteration}: {problem}"),
        details: Some(json!({ "iteration": iteration, "answer": answer.map(excerpt) })),
    }
}

fn structured_error(problem: String) -> ErrorInfo {
    ErrorInfo::new("StructuredOutputError", format!("the network's structured output failed: {problem}"))
}

/// What the router (and the structured-output call) read about a primitive's result.
fn result_note(delegation: &Delegation) -> String {
    let kind = match delegation.primitive_type {
        PrimitiveType::Agent => "agent",
        PrimitiveType::Workflow => "workflow",
        PrimitiveType::Tool => "tool",
        PrimitiveType::RoutingAgent | PrimitiveType::None => "primitive",
    };
    let result = match &delegation.result {
        Some(Value::String(text)) => text.clone(),
        Some(value) => value.to_string(),
        None => "nothing".to_owned(),
    };
    format!("Result of {kind} \"{}\" (iteration {}): {result}", delegation.primitive_id, delegation.iteration)
}

/// The first 300 characters of `text`, for error messages about untrusted output.
fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The object a prefix of streamed JSON is on its way to, when closing its open string, arrays and objects makes it
/// parse; `None` otherwise (that prefix is skipped; the final text is parsed strictly).
pub(super) fn partial_object(prefix: &str) -> Option<Value> {
    let (mut closers, mut in_string, mut escaped) = (Vec::new(), false, false);
    for c in prefix.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, false, _) => {}
            (false, _, '"') => in_string = true,
            (false, _, '{') => closers.push('}'),
            (false, _, '[') => closers.push(']'),
            (false, _, '}' | ']') => {
                closers.pop();
            }
            _ => {}
        }
    }
    let mut completed = prefix.trim_end().to_owned();
    if in_string {
        if escaped {
            completed.pop();
        }
        completed.push('"');
    }
    let completed = completed.trim_end().trim_end_matches(',').to_owned() + &closers.iter().rev().collect::<String>();
    match serde_json::from_str(&completed) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    }
}

//! The network loop: iteration by iteration, a routing call, the delegation it decides (`delegate/`), the completion
//! checks and the structured output, until the run finishes or stops (failure, abort, a primitive waiting for a
//! person); see the [module docs](super) for the events it emits and why.

use std::{fmt::Write as _, sync::Arc};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    CheckInput, Network, NetworkEnd, NetworkEnv, NetworkInput, NetworkOutcome,
    routing::{excerpt, parse_decision, result_note, routing_error, routing_instructions, routing_schema},
};
use crate::{
    engine::{Delegation, ErrorInfo, NetworkEvent, PrimitiveType, RunSnapshot, Usage, schema::Schema},
    model::{Message, ModelChunk, ModelError, ModelRequest, ResponseSchema},
};

/// `agent_id` of the routing agent in `RoutingAgentStart` and `PrimitiveAbort` (Mastra's name for it).
pub const ROUTING_AGENT_ID: &str = "routing-agent";

/// The loop's callback, shared with the sink of nested workflow runs (which must be `'static`).
pub(super) type Emit = Arc<dyn Fn(NetworkEvent) + Send + Sync>;

/// Where a network run starts.
#[derive(Debug, Clone)]
pub enum NetworkStart {
    /// A new run on the task.
    New,
    /// Continue after [`NetworkEnd::Suspended`], handing back its `state`, with the resume data (already checked
    /// against its resume schema).
    Resume {
        /// The state the network ended with.
        state: Value,
        /// What the waiting primitive is resumed with.
        resume_data: Value,
    },
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
pub(super) enum Stop {
    Failed(ErrorInfo),
    Aborted,
    /// A delegated primitive waits for a person; its event (`AgentExecutionApproval`, ...) was emitted.
    Suspended(Box<Suspension>),
}

/// A delegated primitive that waits, and what the network step's suspension tells callers.
pub(super) struct Suspension {
    pub(super) waiting: Waiting,
    /// The step's suspend payload: what is awaited.
    pub(super) payload: Value,
    /// What the resume data must satisfy.
    pub(super) resume_schema: Option<Schema>,
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
pub(super) enum Waiting {
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
    pub(super) fn delegation(&self) -> &Delegation {
        match self {
            Self::Agent { delegation, .. } | Self::Tool { delegation, .. } | Self::Workflow { delegation, .. } => {
                delegation
            }
        }
    }
}

/// One run of the loop: the conversation with the router and the running totals.
pub(super) struct NetworkRun<'a> {
    pub(super) network: &'a Network,
    pub(super) emit: Emit,
    pub(super) env: NetworkEnv,
    task: String,
    conversation: Vec<Message>,
    /// Delegations that ran, with their results, in order.
    ran: Vec<Delegation>,
    pub(super) usage: Usage,
    pub(super) unreported_usage: Usage,
}

/// What the routing agent decided.
struct Decision {
    delegation: Delegation,
    /// The answer as the model wrote it, for the conversation.
    answer: String,
    usage: Usage,
}

impl NetworkRun<'_> {
    pub(super) fn emit(&self, event: NetworkEvent) {
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
    pub(super) async fn call(
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
pub(super) enum CallError {
    Canceled,
    Failed(String),
}

/// Emits `PrimitiveAbort` for what is running unless disarmed, so that both a cancel the loop notices and a
/// dropped loop future (the engine drops a canceled step's future) tell the stream what was cut short.
pub(super) struct AbortGuard {
    emit: Emit,
    armed: Option<(PrimitiveType, String)>,
    /// Emitted just before the abort (a nested run's canceled finish).
    before: Option<NetworkEvent>,
}

impl AbortGuard {
    pub(super) fn new(emit: &Emit, primitive_type: PrimitiveType, primitive_id: &str) -> Self {
        Self { emit: Arc::clone(emit), armed: Some((primitive_type, primitive_id.to_owned())), before: None }
    }

    pub(super) fn before_abort(&mut self, event: NetworkEvent) {
        self.before = Some(event);
    }

    pub(super) fn disarm(mut self) {
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

fn structured_error(problem: String) -> ErrorInfo {
    ErrorInfo::new("StructuredOutputError", format!("the network's structured output failed: {problem}"))
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

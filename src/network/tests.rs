//! The network loop's event order, against the offline model (routing deterministically) and scripted routers.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    agent::approval_schema,
    builtin::{assistant_with, tools::calculator_tool},
    builtin::{research_network as research, travel_network as travel},
    engine::{
        AgentChunk, Event, EventKind, EventSource, PhaseOutcome, ResumeError, RunStatus, StepStatus, Workflow,
        executor::test_support::{describe, req, resume, run},
    },
    model::{FinishReason, Message, ModelChunk, ModelError, ModelRequest, ModelStream, OfflineModel},
};

const TASK: &str = "Ask the assistant what 12 * 7 is, verify it with the calculator, then publish the answer as an \
                    article with content-pipeline.";

/// Wraps a model and adds up the usage of every call it answers, to check the network's sums against.
struct Counting {
    inner: Arc<dyn ModelProvider>,
    usage: Arc<Mutex<Usage>>,
    calls: Arc<Mutex<u32>>,
}

impl Counting {
    fn offline() -> Arc<Self> {
        Arc::new(Self { inner: Arc::new(OfflineModel::new()), usage: Arc::default(), calls: Arc::default() })
    }

    fn total(&self) -> Usage {
        *self.usage.lock().unwrap()
    }
}

impl ModelProvider for Counting {
    fn model_id(&self) -> &str {
        "counting"
    }

    fn provider(&self) -> &str {
        "test"
    }

    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream {
        *self.calls.lock().unwrap() += 1;
        let usage = Arc::clone(&self.usage);
        Box::pin(self.inner.stream(request, cancel).inspect(move |chunk| {
            if let Ok(ModelChunk::Usage { usage: u }) = chunk {
                usage.lock().unwrap().add(u);
            }
        }))
    }
}

/// Answers each call with the next scripted text (in two deltas, usage 10 + 5), and records the requests; a call
/// past the script hangs until canceled.
#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<String>>,
    requests: Mutex<Vec<ModelRequest>>,
}

impl Scripted {
    fn new(answers: &[Value]) -> Arc<Self> {
        Arc::new(Self { answers: Mutex::new(answers.iter().map(Value::to_string).collect()), ..Self::default() })
    }

    fn raw(answers: &[&str]) -> Arc<Self> {
        Arc::new(Self { answers: Mutex::new(answers.iter().map(|a| a.to_string()).collect()), ..Self::default() })
    }
}

const SCRIPTED_USAGE: Usage = Usage {
    input_tokens: 10,
    output_tokens: 5,
    total_tokens: 15,
    reasoning_tokens: 0,
    cached_input_tokens: 0,
    cache_creation_input_tokens: 0,
};

impl ModelProvider for Scripted {
    fn model_id(&self) -> &str {
        "scripted"
    }

    fn provider(&self) -> &str {
        "test"
    }

    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream {
        self.requests.lock().unwrap().push(request);
        let Some(answer) = self.answers.lock().unwrap().pop_front() else {
            return Box::pin(futures_util::stream::once(async move {
                cancel.cancelled().await;
                Err(ModelError::Canceled)
            }));
        };
        let middle = answer.len() / 2;
        let chunks = vec![
            Ok(ModelChunk::TextDelta { text: answer[..middle].to_owned() }),
            Ok(ModelChunk::TextDelta { text: answer[middle..].to_owned() }),
            Ok(ModelChunk::Finish { reason: FinishReason::Stop, raw: "stop".into() }),
            Ok(ModelChunk::Usage { usage: SCRIPTED_USAGE }),
        ];
        Box::pin(futures_util::stream::iter(chunks))
    }
}

fn route(primitive_id: &str, prompt: &str) -> Value {
    json!({ "primitive_id": primitive_id, "prompt": prompt, "selection_reason": format!("{primitive_id} fits") })
}

/// Runs `network` directly, collecting its events; `cancel_when` fires the cancel token from inside the callback
/// when it matches an event (after emitting it), so cancellation lands at an exact point without sleeping.
async fn run_collecting(
    network: &Network,
    input: NetworkInput,
    cancel_when: impl Fn(&NetworkEvent) -> bool + Send + Sync + 'static,
) -> (NetworkOutcome, Vec<NetworkEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let (sink, token) = (Arc::clone(&events), cancel.clone());
    let emit = move |event: NetworkEvent| {
        let fire = cancel_when(&event);
        sink.lock().unwrap().push(event);
        if fire {
            token.cancel();
        }
    };
    let outcome = run_network(network, input, emit, NetworkEnv::new(cancel)).await;
    let events = events.lock().unwrap().clone();
    (outcome, events)
}

/// One line per network event; runs of identical lines (text deltas) are collapsed by [`lines`].
fn line(event: &NetworkEvent) -> String {
    match event {
        NetworkEvent::RoutingAgentStart { agent_id, network_id, iteration, previous, .. } => format!(
            "routing-start {agent_id} {network_id} #{iteration} previous={}",
            previous.as_ref().map_or("-", |p| p.primitive_id.as_str())
        ),
        NetworkEvent::RoutingAgentTextStart => "routing-text-start".into(),
        NetworkEvent::RoutingAgentTextDelta { .. } => "routing-text-delta".into(),
        NetworkEvent::RoutingAgentEnd { delegation: d, .. } => {
            format!("routing-end #{} {:?} {}", d.iteration, d.primitive_type, d.primitive_id)
        }
        NetworkEvent::AgentExecutionStart { agent_id, .. } => format!("agent-start {agent_id}"),
        NetworkEvent::AgentExecutionEvent { agent_id, chunk } => format!("  agent {agent_id} {}", chunk_kind(chunk)),
        NetworkEvent::AgentExecutionEnd { agent_id, .. } => format!("agent-end {agent_id}"),
        NetworkEvent::WorkflowExecutionStart { workflow_id, .. } => format!("workflow-start {workflow_id}"),
        NetworkEvent::WorkflowExecutionEvent { workflow_id, event } => {
            format!("  workflow {workflow_id} {}", nested_line(event))
        }
        NetworkEvent::WorkflowExecutionEnd { workflow_id, status, .. } => {
            format!("workflow-end {workflow_id} {}", status.as_str())
        }
        NetworkEvent::ToolExecutionStart { tool_name, args, .. } => {
            format!("tool-start {tool_name} {}", args.as_ref().map_or("-".into(), Value::to_string))
        }
        NetworkEvent::ToolExecutionEnd { tool_name, delegation, .. } => {
            format!("tool-end {tool_name} {}", delegation.result.as_ref().map_or("-".into(), Value::to_string))
        }
        NetworkEvent::NetworkStepFinish { iteration, is_complete, .. } => {
            format!("step-finish #{iteration} complete={is_complete}")
        }
        NetworkEvent::NetworkValidationStart { iteration, checks_count } => {
            format!("validation-start #{iteration} checks={checks_count}")
        }
        NetworkEvent::NetworkValidationEnd { iteration, passed, .. } => {
            format!("validation-end #{iteration} passed={passed}")
        }
        NetworkEvent::NetworkFinish { completion_reason, .. } => format!("finish {completion_reason}"),
        NetworkEvent::PrimitiveAbort { primitive_type, primitive_id } => {
            format!("abort {primitive_type:?} {primitive_id}")
        }
        NetworkEvent::NetworkObject { .. } => "object".into(),
        NetworkEvent::NetworkObjectResult { .. } => "object-result".into(),
        NetworkEvent::AgentExecutionApproval { agent_id, approval, .. } => {
            format!("agent-approval {agent_id} {}", approval.tool_name)
        }
        NetworkEvent::ToolExecutionApproval { approval, .. } => format!("tool-approval {}", approval.tool_name),
        NetworkEvent::WorkflowExecutionSuspended { workflow_id, suspend_payload, .. } => {
            format!("workflow-suspended {workflow_id} {suspend_payload}")
        }
        other => format!("unexpected {other:?}"),
    }
}

fn chunk_kind(chunk: &AgentChunk) -> &'static str {
    match chunk {
        AgentChunk::AgentStart { .. } => "start",
        AgentChunk::AgentStepStart { .. } => "step-start",
        AgentChunk::ResponseMetadata { .. } => "response-metadata",
        AgentChunk::TextStart { .. } => "text-start",
        AgentChunk::TextDelta { .. } => "text-delta",
        AgentChunk::TextEnd { .. } => "text-end",
        AgentChunk::ToolCallInputStreamingStart { .. } => "tool-input-start",
        AgentChunk::ToolCallDelta { .. } => "tool-call-delta",
        AgentChunk::ToolCallInputStreamingEnd { .. } => "tool-input-end",
        AgentChunk::ToolCall { .. } => "tool-call",
        AgentChunk::ToolResult { .. } => "tool-result",
        AgentChunk::AgentStepFinish { .. } => "step-finish",
        AgentChunk::AgentFinish { .. } => "finish",
        AgentChunk::AgentAbort { .. } => "abort",
        AgentChunk::ToolCallApproval(_) => "tool-call-approval",
        AgentChunk::ToolOutputDenied { .. } => "tool-output-denied",
        AgentChunk::ToolOutput { .. } => "tool-output",
        _ => "other",
    }
}

fn nested_line(event: &EventKind) -> String {
    match event {
        EventKind::WorkflowStart { workflow_id, .. } => format!("workflow_start {workflow_id}"),
        EventKind::StepStart { step_id, .. } => format!("step-start {step_id}"),
        EventKind::StepResult { step_id, status, .. } => format!("result {step_id} {status:?}"),
        EventKind::StepOutput { step_id, .. } => format!("output {step_id}"),
        EventKind::Custom { step_id, kind, .. } => format!("custom {step_id} {kind}"),
        EventKind::Agent { step_id, chunk } => {
            format!("agent {} {}", step_id.as_deref().unwrap_or("-"), chunk_kind(chunk))
        }
        EventKind::WorkflowCanceled { .. } => "workflow_canceled".into(),
        EventKind::StepSuspended { step_id, .. } => format!("suspended {step_id}"),
        EventKind::WorkflowFinish { status, .. } => format!("workflow_finish {}", status.as_str()),
        other => format!("unexpected {other:?}"),
    }
}

fn lines<'a>(events: impl IntoIterator<Item = &'a NetworkEvent>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for event in events {
        let line = line(event);
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out
}

/// The network events of a workflow run (of network `network_id`, whose step has the same id).
fn network_events(events: &[Event], network_id: &str) -> Vec<NetworkEvent> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Network { step_id, event } => {
                assert_eq!(step_id.as_deref(), Some(network_id));
                assert_eq!(e.source, EventSource::Network);
                Some(event.clone())
            }
            _ => None,
        })
        .collect()
}

fn research_network_workflow(model: Arc<dyn ModelProvider>) -> Arc<Workflow> {
    workflow(research::research_network_with(model))
}

/// The research network's lines for [`TASK`]: iterations 1-3 delegate to assistant, calculator, content-pipeline
/// (the order the task names them), iteration 4 says "none" and the checks pass.
const RESEARCH_LINES: &[&str] = &[
    "routing-start routing-agent research-network #1 previous=-",
    "routing-text-start",
    "routing-text-delta",
    "routing-end #1 Agent assistant",
    "agent-start assistant",
    "  agent assistant start",
    "  agent assistant step-start",
    "  agent assistant response-metadata",
    "  agent assistant tool-input-start",
    "  agent assistant tool-call-delta",
    "  agent assistant tool-input-end",
    "  agent assistant tool-call",
    "  agent assistant tool-result",
    "  agent assistant step-finish",
    "  agent assistant step-start",
    "  agent assistant response-metadata",
    "  agent assistant text-start",
    "  agent assistant text-delta",
    "  agent assistant text-end",
    "  agent assistant step-finish",
    "  agent assistant finish",
    "agent-end assistant",
    "step-finish #1 complete=false",
    "routing-start routing-agent research-network #2 previous=assistant",
    "routing-text-start",
    "routing-text-delta",
    "routing-end #2 Tool calculator",
    r#"tool-start calculator {"expression":"12 * 7"}"#,
    r#"tool-end calculator {"expression":"12 * 7","result":84}"#,
    "step-finish #2 complete=false",
    "routing-start routing-agent research-network #3 previous=calculator",
    "routing-text-start",
    "routing-text-delta",
    "routing-end #3 Workflow content-pipeline",
    "workflow-start content-pipeline",
    "  workflow content-pipeline workflow_start content-pipeline",
    "  workflow content-pipeline step-start analyze-content",
    "  workflow content-pipeline agent analyze-content start",
    "  workflow content-pipeline agent analyze-content step-start",
    "  workflow content-pipeline agent analyze-content response-metadata",
    "  workflow content-pipeline agent analyze-content text-start",
    "  workflow content-pipeline agent analyze-content text-delta",
    "  workflow content-pipeline agent analyze-content text-end",
    "  workflow content-pipeline agent analyze-content step-finish",
    "  workflow content-pipeline agent analyze-content finish",
    "  workflow content-pipeline result analyze-content Success",
    "  workflow content-pipeline step-start track-progress",
    "  workflow content-pipeline output track-progress",
    "  workflow content-pipeline custom track-progress data-progress",
    "  workflow content-pipeline result track-progress Success",
    "  workflow content-pipeline step-start publish",
    "  workflow content-pipeline result publish Success",
    "  workflow content-pipeline workflow_finish success",
    "workflow-end content-pipeline success",
    "step-finish #3 complete=false",
    "routing-start routing-agent research-network #4 previous=content-pipeline",
    "routing-text-start",
    "routing-text-delta",
    "routing-end #4 None none",
    "validation-start #4 checks=2",
    "validation-end #4 passed=true",
    "step-finish #4 complete=true",
    "finish task complete",
];

#[tokio::test]
async fn research_network_runs_each_named_primitive_in_order_and_adds_up_usage() {
    let model = Counting::offline();
    let wf = research_network_workflow(model.clone());
    let (out, events) = run(&wf, json!({ "task": TASK })).await;
    assert_eq!(out.status, RunStatus::Success, "{:?}", out.error);
    let net = network_events(&events, research::ID);
    assert_eq!(lines(&net), RESEARCH_LINES);
    // The step frames the network: its start first, its result after the network's finish.
    let workflow_lines: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Network { .. }))
        .map(|e| match &e.kind {
            EventKind::StepStart { step_id, .. } => format!("step-start {step_id}"),
            EventKind::StepResult { step_id, status, .. } => format!("result {step_id} {status:?}"),
            EventKind::WorkflowStart { workflow_id, .. } => format!("start {workflow_id}"),
            other => format!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        workflow_lines,
        ["start research-network", "step-start research-network", "result research-network Success"]
    );
    assert!(matches!(events.last().map(|e| &e.kind), Some(EventKind::StepResult { .. })));

    // Routing: each answer streams as JSON text that is exactly the decision in routing-end.
    let mut answer = String::new();
    let mut routing_usage = Usage::default();
    let mut decisions = Vec::new();
    for event in &net {
        match event {
            NetworkEvent::RoutingAgentStart { task, .. } => {
                assert_eq!(task, TASK);
                answer.clear();
            }
            NetworkEvent::RoutingAgentTextDelta { text } => answer.push_str(text),
            NetworkEvent::RoutingAgentEnd { delegation, usage } => {
                let parsed: Value = serde_json::from_str(&answer).unwrap();
                assert_eq!(parsed["primitive_id"], json!(delegation.primitive_id));
                assert_eq!(parsed["prompt"], json!(delegation.prompt));
                assert_eq!(parsed["selection_reason"], json!(delegation.selection_reason));
                assert!(!delegation.selection_reason.is_empty());
                assert_eq!(delegation.task, TASK);
                assert_eq!(delegation.result, None);
                assert_eq!(delegation.is_complete, delegation.primitive_type == PrimitiveType::None);
                assert!(usage.total_tokens > 0);
                routing_usage.add(usage);
                decisions.push((delegation.iteration, delegation.primitive_id.clone()));
            }
            _ => {}
        }
    }
    assert_eq!(
        decisions,
        [(1, "assistant".into()), (2, "calculator".into()), (3, "content-pipeline".into()), (4, "none".into())]
    );

    // The agent: its answer and usage are its nested chunks'.
    let nested_agent_usage = net
        .iter()
        .filter_map(|e| match e {
            NetworkEvent::AgentExecutionEvent { chunk, .. } => match &**chunk {
                AgentChunk::AgentStepFinish { usage, .. } => Some(*usage),
                _ => None,
            },
            _ => None,
        })
        .fold(Usage::default(), |mut sum, u| {
            sum.add(&u);
            sum
        });
    let agent_end = net.iter().find_map(|e| match e {
        NetworkEvent::AgentExecutionEnd { delegation, usage, .. } => Some((delegation, *usage)),
        _ => None,
    });
    let (agent_delegation, agent_usage) = agent_end.unwrap();
    assert_eq!(agent_usage, nested_agent_usage);
    assert_eq!(agent_delegation.prompt, "Ask the assistant what 12 * 7 is, verify it with the...");
    assert_eq!(
        agent_delegation.result,
        Some(json!("Here is what I found: calculator returned expression 12 * 7, result 84."))
    );

    // The workflow: one nested run, its own id, its finish repeated in the end event.
    let (start_run_id, end) = (
        net.iter().find_map(|e| match e {
            NetworkEvent::WorkflowExecutionStart { workflow_run_id, .. } => Some(workflow_run_id.clone()),
            _ => None,
        }),
        net.iter().find_map(|e| match e {
            NetworkEvent::WorkflowExecutionEnd { workflow_run_id, delegation, status, usage, .. } => {
                Some((workflow_run_id.clone(), delegation.clone(), *status, *usage))
            }
            _ => None,
        }),
    );
    let (end_run_id, workflow_delegation, status, workflow_usage) = end.unwrap();
    assert_eq!(Some(end_run_id.clone()), start_run_id);
    assert!(!end_run_id.is_empty() && &*end_run_id != "run-1");
    assert_eq!(status, RunStatus::Success);
    let nested_finish = net.iter().find_map(|e| match e {
        NetworkEvent::WorkflowExecutionEvent { event, .. } => match &**event {
            EventKind::WorkflowFinish { result, usage, .. } => Some((result.clone(), *usage)),
            _ => None,
        },
        _ => None,
    });
    let (nested_result, nested_usage) = nested_finish.unwrap();
    assert_eq!(nested_usage, workflow_usage);
    assert!(workflow_usage.total_tokens > 0, "the analyst's tokens");
    assert_eq!(workflow_delegation.result, nested_result);
    let published = nested_result.unwrap();
    assert_eq!(published["status"], json!("ready"));
    assert_eq!(published["body"], json!("Ask the assistant what 12 * 7 is, verify it with the..."));

    // Each step finish carries its iteration's result; the previous delegation comes back in the next start.
    let step_results: Vec<Option<Value>> = net
        .iter()
        .filter_map(|e| match e {
            NetworkEvent::NetworkStepFinish { result, task, .. } => {
                assert_eq!(task, TASK);
                Some(result.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(step_results.len(), 4);
    assert_eq!(step_results[1], Some(json!({ "expression": "12 * 7", "result": 84 })));
    assert_eq!(step_results[2], Some(published.clone()));
    assert_eq!(step_results[3], Some(published.clone()), "the final result is the last primitive's");
    let previous = net.iter().find_map(|e| match e {
        NetworkEvent::RoutingAgentStart { iteration: 3, previous, .. } => previous.clone(),
        _ => None,
    });
    assert_eq!(previous.unwrap().result, Some(json!({ "expression": "12 * 7", "result": 84 })));

    // Validation: both built-in checks passed.
    let validation = net.iter().find_map(|e| match e {
        NetworkEvent::NetworkValidationEnd { results, reason, timed_out, max_iteration_reached, .. } => {
            Some((results.clone(), reason.clone(), *timed_out, *max_iteration_reached))
        }
        _ => None,
    });
    let (results, reason, timed_out, max_reached) = validation.unwrap();
    assert_eq!(
        results,
        json!([
            { "check": "named-primitives-ran", "passed": true, "reason": "every primitive the task names has run" },
            { "check": "result-usable", "passed": true, "reason": "the last result is usable" },
        ])
    );
    assert_eq!(reason.as_deref(), Some("all 2 checks passed"));
    assert!(!timed_out && !max_reached);

    // Finish: the final delegation and the usage of every model call, routing, agents (also inside the workflow)
    // and the two calls that turned prompts into the calculator's and the workflow's input.
    let Some(NetworkEvent::NetworkFinish { delegation, object, usage, .. }) = net.last() else {
        panic!("the network must end with its finish")
    };
    assert_eq!((delegation.primitive_id.as_str(), delegation.primitive_type), ("none", PrimitiveType::None));
    assert!(delegation.is_complete);
    assert_eq!(delegation.iteration, 4);
    assert_eq!(delegation.result, Some(published.clone()));
    assert_eq!(*object, None);
    assert_eq!(*usage, model.total(), "every model call counts, once");
    assert_eq!(*model.calls.lock().unwrap(), 4 + 2 + 1 + 2, "routing, assistant, analyst, two inputs");
    let mut seen = routing_usage;
    seen.add(&agent_usage);
    seen.add(&workflow_usage);
    assert!(seen.total_tokens < usage.total_tokens, "the input calls are counted too");
    // The run's usage (workflow_finish, GetResult) adds up the same calls.
    assert_eq!(out.snapshot.usage, *usage);

    let result = out.result.unwrap();
    assert_eq!(result["result"], published);
    assert_eq!(result["completionReason"], json!("task complete"));
    assert_eq!(result["iterations"], json!(4));
    assert_eq!(result["usage"]["totalTokens"], json!(usage.total_tokens));
    assert!(result.get("object").is_none());
}

#[tokio::test]
async fn structured_output_streams_partial_objects_then_the_checked_object() {
    let model = Counting::offline();
    let network = research::research_network_with(model.clone());
    let schema = json!({
        "type": "object",
        "required": ["answer", "value"],
        "properties": { "answer": { "type": "string" }, "value": { "type": "integer" } },
        "additionalProperties": false
    });
    let input = network_input(&json!({ "task": TASK, "outputSchema": schema })).unwrap();
    let (outcome, events) = run_collecting(&network, input, |_| false).await;
    assert_eq!(outcome.end, NetworkEnd::Complete);
    let all = lines(&events);
    let tail: Vec<&str> = all[all.len() - 5..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "validation-end #4 passed=true",
            "step-finish #4 complete=true",
            "object",
            "object-result",
            "finish task complete"
        ]
    );

    let partials: Vec<&Value> = events
        .iter()
        .filter_map(|e| match e {
            NetworkEvent::NetworkObject { object } => Some(object),
            _ => None,
        })
        .collect();
    let expected =
        json!({ "answer": TASK.split_whitespace().take(12).collect::<Vec<_>>().join(" ") + "...", "value": 12 });
    assert!(partials.len() >= 2, "the object grows as it streams: {partials:?}");
    assert_eq!(partials.last().copied(), Some(&expected));
    assert!(partials.windows(2).all(|w| w[0] != w[1]), "no repeated partials");
    let result = events.iter().find_map(|e| match e {
        NetworkEvent::NetworkObjectResult { object } => Some(object.clone()),
        _ => None,
    });
    assert_eq!(result, Some(expected.clone()));
    let Some(NetworkEvent::NetworkFinish { object, usage, .. }) = events.last() else { panic!("no finish") };
    assert_eq!(object.as_ref(), Some(&expected));
    assert_eq!(outcome.object, Some(expected));
    assert_eq!(*usage, model.total(), "the structured-output call counts too");
    assert_eq!(outcome.usage, model.total());
}

#[tokio::test]
async fn structured_output_that_fails_its_schema_fails_the_network() {
    let router = Scripted::new(&[route("none", "nothing to do"), json!({ "answer": 3 })]);
    let network = Network::new("net", "", router);
    let schema = Schema::compile(
        json!({ "type": "object", "required": ["answer"], "properties": { "answer": { "type": "string" } } }),
    )
    .unwrap();
    let input = NetworkInput { task: "Say hi.".into(), output_schema: Some(schema) };
    let (outcome, events) = run_collecting(&network, input, |_| false).await;
    let NetworkEnd::Failed(error) = &outcome.end else { panic!("{:?}", outcome.end) };
    assert_eq!(error.name, "StructuredOutputError");
    assert!(error.message.contains("object.answer"), "{}", error.message);
    let all = lines(&events);
    assert_eq!(all[all.len() - 2..], ["step-finish #1 complete=true", "object"]);
}

/// A network (step id "net") whose router is scripted and whose only agent's model never answers.
fn hanging_agent_network(router: Arc<Scripted>) -> Network {
    Network::new("net", "", router).agent(assistant_with(Scripted::new(&[])))
}

#[tokio::test]
async fn cancel_aborts_the_routing_agent() {
    let network = research::research_network_with(Arc::new(OfflineModel::new()));
    let (outcome, events) =
        run_collecting(&network, NetworkInput::new(TASK), |e| matches!(e, NetworkEvent::RoutingAgentTextStart)).await;
    assert_eq!(outcome.end, NetworkEnd::Aborted);
    assert_eq!(
        lines(&events),
        [
            "routing-start routing-agent research-network #1 previous=-",
            "routing-text-start",
            "routing-text-delta",
            "abort RoutingAgent routing-agent"
        ]
    );
}

#[tokio::test]
async fn cancel_aborts_a_delegated_agent_after_its_own_abort() {
    let network = research::research_network_with(Arc::new(OfflineModel::new()));
    let (outcome, events) =
        run_collecting(&network, NetworkInput::new(TASK), |e| matches!(e, NetworkEvent::AgentExecutionStart { .. }))
            .await;
    assert_eq!(outcome.end, NetworkEnd::Aborted);
    let all = lines(&events);
    assert_eq!(
        all[all.len() - 4..],
        ["agent-start assistant", "  agent assistant start", "  agent assistant abort", "abort Agent assistant"]
    );
    assert!(outcome.result.is_none());
}

#[tokio::test]
async fn cancel_aborts_a_delegated_workflow_after_its_nested_run_finishes_canceled() {
    let network = research::research_network_with(Arc::new(OfflineModel::new()));
    let task = "Publish a note on streaming with content-pipeline.";
    let is_nested_step_start = |e: &NetworkEvent| matches!(e, NetworkEvent::WorkflowExecutionEvent { event, .. } if matches!(**event, EventKind::StepStart { .. }));
    let (outcome, events) = run_collecting(&network, NetworkInput::new(task), is_nested_step_start).await;
    assert_eq!(outcome.end, NetworkEnd::Aborted);
    let all = lines(&events);
    assert_eq!(
        all[all.len() - 7..],
        [
            "workflow-start content-pipeline",
            "  workflow content-pipeline workflow_start content-pipeline",
            "  workflow content-pipeline step-start analyze-content",
            "  workflow content-pipeline result analyze-content Canceled",
            "  workflow content-pipeline workflow_canceled",
            "  workflow content-pipeline workflow_finish canceled",
            "abort Workflow content-pipeline"
        ]
    );
}

#[tokio::test]
async fn cancel_aborts_a_delegated_tool() {
    let network = research::research_network_with(Arc::new(OfflineModel::new()));
    let (outcome, events) = run_collecting(&network, NetworkInput::new("Use the calculator for 2 + 2."), |e| {
        matches!(e, NetworkEvent::ToolExecutionStart { .. })
    })
    .await;
    assert_eq!(outcome.end, NetworkEnd::Aborted);
    let all = lines(&events);
    assert_eq!(all[all.len() - 2..], [r#"tool-start calculator {"expression":"2 + 2"}"#, "abort Tool calculator"]);
}

#[tokio::test]
async fn a_canceled_network_step_reports_the_abort_although_its_future_is_dropped() {
    use crate::engine::{RunSnapshot, executor::test_support::phase};
    let network = Arc::new(hanging_agent_network(Scripted::new(&[route("assistant", "hello")])));
    let wf = workflow(network);
    let (p, sink, cancel) = phase(&wf, json!({ "task": "Greet via the assistant." }), 1, RunSnapshot::default(), None);
    let running = tokio::spawn(crate::engine::execute_phase(p));
    sink.wait_for(|events| {
        events.iter().any(|e| {
            matches!(&e.kind, EventKind::Network { event: NetworkEvent::AgentExecutionEvent { chunk, .. }, .. }
                if matches!(**chunk, AgentChunk::AgentStepStart { .. }))
        })
    })
    .await;
    cancel.cancel();
    let out = running.await.unwrap();
    assert_eq!(out.status, RunStatus::Canceled);
    let events = sink.events();
    let net = network_events(&events, "net");
    let all = lines(&net);
    assert_eq!(
        all[all.len() - 3..],
        ["  agent assistant step-start", "  agent assistant abort", "abort Agent assistant"]
    );
    // The aborts come before the step's canceled result.
    let tail: Vec<String> = events[events.len() - 2..]
        .iter()
        .map(|e| match &e.kind {
            EventKind::StepResult { status, .. } => format!("result {status:?}"),
            EventKind::WorkflowCanceled { .. } => "canceled".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(tail, ["result Canceled", "canceled"]);
    assert!(matches!(
        events[events.len() - 3].kind,
        EventKind::Network { event: NetworkEvent::PrimitiveAbort { .. }, .. }
    ));
}

#[tokio::test]
async fn a_router_naming_an_unknown_primitive_fails_the_run_with_its_answer() {
    let router = Scripted::new(&[route("teleporter", "beam me up")]);
    let wf = workflow(Arc::new(Network::new("net", "", router).tool(calculator_tool())));
    let (out, events) = run(&wf, json!({ "task": "Go somewhere." })).await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.unwrap();
    assert_eq!(
        error.message,
        "the routing agent failed at iteration 1: it chose \"teleporter\", which is not a primitive of this network \
         (it has: calculator; or \"none\")"
    );
    assert_eq!(
        error.details.as_ref().unwrap()["details"]["answer"],
        json!(route("teleporter", "beam me up").to_string())
    );
    let net = network_events(&events, "net");
    assert_eq!(
        lines(&net),
        ["routing-start routing-agent net #1 previous=-", "routing-text-start", "routing-text-delta"]
    );
    assert!(matches!(events.last().map(|e| &e.kind), Some(EventKind::StepResult { status: StepStatus::Failed, .. })));
    // No event reports the call, yet the run's usage counts it.
    assert_eq!(out.snapshot.usage, SCRIPTED_USAGE);
}

#[tokio::test]
async fn a_router_answer_that_is_not_the_json_asked_for_fails_the_network() {
    for (answer, problem) in [
        ("Sure! I'll use the calculator.", "its answer is not JSON"),
        ("[1, 2]", "its answer is not a JSON object"),
        (r#"{"prompt": "x"}"#, "its answer has no \"primitive_id\" string"),
        (r#"{"primitive_id": "calculator", "prompt": 7}"#, "\"prompt\" must be a string, not 7"),
    ] {
        let network = Network::new("net", "", Scripted::raw(&[answer])).tool(calculator_tool());
        let (outcome, _) = run_collecting(&network, NetworkInput::new("x"), |_| false).await;
        let NetworkEnd::Failed(error) = &outcome.end else { panic!("{answer}: {:?}", outcome.end) };
        assert!(error.message.contains(problem), "{answer}: {}", error.message);
        assert_eq!(outcome.usage, SCRIPTED_USAGE);
        assert_eq!(outcome.unreported_usage, SCRIPTED_USAGE);
    }
    // A code fence around the JSON is tolerated.
    let fenced = format!("```json\n{}\n```", route("none", "done"));
    let (outcome, _) =
        run_collecting(&Network::new("net", "", Scripted::raw(&[&fenced])), NetworkInput::new("x"), |_| false).await;
    assert_eq!(outcome.end, NetworkEnd::Complete);
    assert_eq!(outcome.result, Some(json!("done")), "no primitive ran: the router's answer is the result");
}

#[tokio::test]
async fn max_iterations_stops_the_network_with_the_last_delegation() {
    let network = (*research::research_network_with(Arc::new(OfflineModel::new()))).clone().max_iterations(2);
    let (outcome, events) = run_collecting(&network, NetworkInput::new(TASK), |_| false).await;
    assert_eq!(outcome.end, NetworkEnd::MaxIterations);
    assert_eq!(outcome.iterations, 2);
    let all = lines(&events);
    assert_eq!(
        all[all.len() - 5..],
        [
            "routing-end #2 Tool calculator",
            r#"tool-start calculator {"expression":"12 * 7"}"#,
            r#"tool-end calculator {"expression":"12 * 7","result":84}"#,
            "step-finish #2 complete=false",
            "finish max iterations reached",
        ]
    );
    assert!(!all.iter().any(|l| l.starts_with("validation")), "the router never said the task was complete");
    let Some(NetworkEvent::NetworkFinish { delegation, object, .. }) = events.last() else { panic!("no finish") };
    assert_eq!(
        (delegation.primitive_id.as_str(), delegation.iteration, delegation.is_complete),
        ("calculator", 2, false)
    );
    assert_eq!(*object, None);
    assert_eq!(outcome.result, Some(json!({ "expression": "12 * 7", "result": 84 })));
}

#[tokio::test]
async fn a_failed_completion_check_sends_the_router_back_with_the_reason() {
    let router = Scripted::new(&[
        route("none", "done"),
        route("calculator", r#"{"expression": "2 + 3"}"#),
        route("none", "2 + 3 is 5"),
    ]);
    let network = Network::new("net", "", router.clone()).tool(calculator_tool());
    let task = "Add 2 and 3 with the calculator.";
    let (outcome, events) = run_collecting(&network, NetworkInput::new(task), |_| false).await;
    assert_eq!(outcome.end, NetworkEnd::Complete);
    assert_eq!(
        lines(&events),
        [
            "routing-start routing-agent net #1 previous=-",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #1 None none",
            "validation-start #1 checks=2",
            "validation-end #1 passed=false",
            "step-finish #1 complete=false",
            "routing-start routing-agent net #2 previous=none",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #2 Tool calculator",
            r#"tool-start calculator {"expression":"2 + 3"}"#,
            r#"tool-end calculator {"expression":"2 + 3","result":5}"#,
            "step-finish #2 complete=false",
            "routing-start routing-agent net #3 previous=calculator",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #3 None none",
            "validation-start #3 checks=2",
            "validation-end #3 passed=true",
            "step-finish #3 complete=true",
            "finish task complete",
        ]
    );
    let first_validation = events.iter().find_map(|e| match e {
        NetworkEvent::NetworkValidationEnd { iteration: 1, results, reason, .. } => {
            Some((results.clone(), reason.clone()))
        }
        _ => None,
    });
    let (results, reason) = first_validation.unwrap();
    assert_eq!(reason.as_deref(), Some("the task names calculator, which has not run"));
    assert_eq!(
        results[0],
        json!({ "check": "named-primitives-ran", "passed": false, "reason": "the task names calculator, which has not run" })
    );
    assert_eq!(results[1]["passed"], json!(true));
    // The feedback is the router's next user message; the result of each primitive follows its decision.
    let requests = router.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[1].messages.last(),
        Some(&Message::user(format!(
            "The task is not complete yet: the task names calculator, which has not run. Continue with the task: {task}"
        )))
    );
    assert_eq!(
        requests[2].messages.last(),
        Some(&Message::assistant(r#"Result of tool "calculator" (iteration 2): {"expression":"2 + 3","result":5}"#))
    );
    let Some(NetworkEvent::NetworkFinish { delegation, usage, .. }) = events.last() else { panic!("no finish") };
    assert_eq!(delegation.result, Some(json!({ "expression": "2 + 3", "result": 5 })));
    assert_eq!(delegation.prompt, "2 + 3 is 5");
    let mut three = Usage::default();
    for _ in 0..3 {
        three.add(&SCRIPTED_USAGE);
    }
    assert_eq!(*usage, three, "three routing calls; the tool's input was JSON already, so no input call");
}

#[tokio::test]
async fn a_failed_primitive_is_a_result_the_router_reads() {
    let router = Scripted::new(&[route("calculator", r#"{"expression": "1 / 0"}"#), route("none", "done")]);
    let network = Network::new("net", "", router.clone()).tool(calculator_tool()).max_iterations(2);
    let (outcome, events) = run_collecting(&network, NetworkInput::new("Divide 1 by 0."), |_| false).await;
    assert_eq!(outcome.end, NetworkEnd::MaxIterations);
    let all = lines(&events);
    assert!(all.contains(&r#"tool-end calculator {"error":"division by zero"}"#.to_owned()), "{all:#?}");
    assert_eq!(
        all[all.len() - 4..],
        [
            "validation-start #2 checks=2",
            "validation-end #2 passed=false",
            "step-finish #2 complete=false",
            "finish max iterations reached"
        ]
    );
    let validation = events.iter().find_map(|e| match e {
        NetworkEvent::NetworkValidationEnd { reason, max_iteration_reached, .. } => {
            Some((reason.clone(), *max_iteration_reached))
        }
        _ => None,
    });
    assert_eq!(validation, Some((Some("the last result is an error: division by zero".to_owned()), true)));
    let requests = router.requests.lock().unwrap().clone();
    assert_eq!(
        requests[1].messages.last(),
        Some(&Message::assistant(r#"Result of tool "calculator" (iteration 1): {"error":"division by zero"}"#))
    );
}

#[test]
fn run_input_is_checked() {
    let wf = research::workflow(Arc::new(OfflineModel::new()));
    assert_eq!(&**wf.id(), research::ID);
    assert_eq!(wf.steps().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [research::ID]);
    assert!(wf.validate_input(&json!({ "task": "x", "outputSchema": { "type": "object" } })).is_ok());
    assert_eq!(wf.validate_input(&json!({ "task": "" })).unwrap_err().path, "input.task");
    assert!(wf.validate_input(&json!({ "task": "x", "extra": 1 })).is_err());
    let err = network_input(&json!({ "task": "x", "outputSchema": { "type": 5 } })).unwrap_err();
    assert_eq!(err.path, "input.outputSchema");
    assert!(err.message.starts_with("invalid JSON Schema"), "{err}");
    assert_eq!(
        research::research_network_with(Arc::new(OfflineModel::new())).primitive_ids(),
        ["assistant", "content-pipeline", "calculator"]
    );
}

/// `output_schema`, the spelling before issue 10, is still taken until the next release: listed in the input
/// schema as deprecated, warned about once when the run's input is checked (once per run), and named as given in
/// errors. Both spellings at once are refused, naming the field.
#[test]
fn the_old_spelling_of_output_schema_is_still_taken_with_a_warning() {
    let wf = research::workflow(Arc::new(OfflineModel::new()));
    let schema = json!({ "type": "object", "required": ["answer"], "properties": { "answer": { "type": "integer" } } });
    let old = json!({ "task": "x", "output_schema": schema });
    let (checked, warnings) = crate::engine::renamed::capture_warnings(|| wf.validate_input(&old));
    assert_eq!(checked, Ok(()));
    assert_eq!(
        warnings,
        ["network 'research-network': input key `output_schema` is deprecated, use `outputSchema` (the old spelling \
          is accepted until the next release)"]
    );
    assert_eq!(network_input(&old).unwrap().output_schema.map(|s| s.raw().clone()), Some(schema.clone()));
    let new = json!({ "task": "x", "outputSchema": schema });
    let (checked, warnings) = crate::engine::renamed::capture_warnings(|| wf.validate_input(&new));
    assert_eq!((checked, warnings.len()), (Ok(()), 0));
    assert_eq!(network_input(&new).unwrap().output_schema.map(|s| s.raw().clone()), Some(schema.clone()));

    let both = wf.validate_input(&json!({ "task": "x", "outputSchema": schema, "output_schema": schema }));
    let both = both.unwrap_err();
    assert_eq!(both.path, "input.outputSchema");
    assert!(both.message.contains("send only `outputSchema`"), "{both}");
    let err = network_input(&json!({ "task": "x", "output_schema": { "type": 5 } })).unwrap_err();
    assert_eq!(err.path, "input.output_schema");

    let properties = &wf.input_schema().unwrap()["properties"];
    assert!(properties["outputSchema"].get("deprecated").is_none(), "{properties}");
    assert_eq!(properties["output_schema"]["deprecated"], true, "{properties}");
}

#[test]
#[should_panic(expected = "already has a primitive with id 'calculator'")]
fn primitive_ids_are_unique() {
    let _ = Network::new("n", "", Arc::new(OfflineModel::new())).tool(calculator_tool()).tool(calculator_tool());
}

#[test]
fn partial_objects_close_what_is_open() {
    use super::run::partial_object;
    assert_eq!(partial_object(r#"{"a": "he"#), Some(json!({ "a": "he" })));
    assert_eq!(partial_object(r#"{"a": [1, 2"#), Some(json!({ "a": [1, 2] })));
    assert_eq!(partial_object(r#"{"a": 1,"#), Some(json!({ "a": 1 })));
    assert_eq!(partial_object(r#"{"a": "x\"#), Some(json!({ "a": "x" })));
    assert_eq!(partial_object(r#"{"a": tr"#), None);
    assert_eq!(partial_object("[1"), None, "only objects");
}

// ---- approvals and suspensions inside networks ----

const TRAVEL_TASK: &str = "Ask the concierge to book a 90 euro kayak tour in Lisbon, then file the order with \
                           order-approval, then book-activity a food tour in Porto.";

/// The arguments the offline model writes for `book-activity` from the travel task's first twelve words.
fn booking_args() -> Value {
    json!({ "activity": "Ask the concierge to book a 90 euro kayak tour in Lisbon,...", "city": "Lisbon" })
}

/// The network step's suspension at the end of a phase: its payload and resume schema.
fn suspension(out: &PhaseOutcome, step: &str) -> (Value, Option<Value>) {
    assert_eq!(out.status, RunStatus::Suspended, "{:?}", out.error);
    assert_eq!(out.snapshot.suspended.keys().collect::<Vec<_>>(), [step]);
    let suspended = &out.snapshot.suspended[step];
    (suspended.suspend_payload.clone(), suspended.resume_schema.as_ref().map(|s| s.raw().clone()))
}

/// A resume of the travel network's only suspended step.
async fn resume_travel(
    wf: &Arc<Workflow>,
    previous: &PhaseOutcome,
    data: Value,
    phase: u32,
) -> (PhaseOutcome, Vec<Event>) {
    let input = json!({ "task": TRAVEL_TASK });
    resume(wf, input, previous, req("", data), phase).await.expect("the resume data fits")
}

fn find<T>(events: &[NetworkEvent], pick: impl Fn(&NetworkEvent) -> Option<T>) -> T {
    events.iter().find_map(pick).expect("the network emitted the event")
}

/// The phase's events that are not the network's: the run's frame around the network step.
fn frame(events: &[Event]) -> Vec<String> {
    events.iter().filter(|e| !matches!(e.kind, EventKind::Network { .. })).map(describe).collect()
}

#[tokio::test]
async fn travel_network_suspends_for_each_wait_and_resumes_where_it_stopped() {
    let model = Counting::offline();
    let wf = workflow(travel::travel_network_with(model.clone()));
    let input = json!({ "task": TRAVEL_TASK });

    // Phase 1: the concierge asks to book; the network suspends with the approval.
    let (out1, events) = run(&wf, input.clone()).await;
    let net = network_events(&events, travel::ID);
    assert_eq!(
        lines(&net),
        [
            "routing-start routing-agent travel-network #1 previous=-",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #1 Agent concierge",
            "agent-start concierge",
            "  agent concierge start",
            "  agent concierge step-start",
            "  agent concierge response-metadata",
            "  agent concierge tool-input-start",
            "  agent concierge tool-call-delta",
            "  agent concierge tool-input-end",
            "  agent concierge tool-call",
            "  agent concierge tool-call-approval",
            "agent-approval concierge book-activity",
        ]
    );
    assert_eq!(frame(&events), ["start travel-network 1", "step-start travel-network", "suspended travel-network"]);
    let (routing_usage, selection_reason) = find(&net, |e| match e {
        NetworkEvent::RoutingAgentEnd { delegation, usage } => Some((*usage, delegation.selection_reason.clone())),
        _ => None,
    });
    let (approval, agent_usage, reason) = find(&net, |e| match e {
        NetworkEvent::AgentExecutionApproval { approval, usage, selection_reason, .. } => {
            Some(((**approval).clone(), *usage, selection_reason.clone()))
        }
        _ => None,
    });
    assert_eq!((&*approval.tool_call_id, &*approval.tool_name), ("call_offline_1", "book-activity"));
    assert_eq!(approval.args, booking_args());
    assert_eq!(approval.resume_schema, Some(approval_schema()));
    assert_eq!(reason, selection_reason);
    // The agent's usage so far: its one model call, everything the model answered but the routing call.
    assert!(agent_usage.total_tokens > 0);
    assert_eq!(agent_usage.total_tokens + routing_usage.total_tokens, model.total().total_tokens);
    let (payload, schema) = suspension(&out1, travel::ID);
    assert_eq!(
        payload,
        json!({
            "reason": "agent-execution-approval",
            "iteration": 1,
            "agentId": "concierge",
            "toolCallId": "call_offline_1",
            "toolName": "book-activity",
            "args": booking_args(),
        }),
        "what is awaited, and nothing of the loop's state"
    );
    assert_eq!(schema, Some(approval_schema()));
    assert!(
        wf.resolve_resume(&out1.snapshot, req("", json!({ "approved": "yes" }))).is_err(),
        "resume data is checked against the approval's schema"
    );

    // Phase 2: approved, the booking runs, the agent answers; then order-approval suspends at its approve step.
    let (out2, events) = resume_travel(&wf, &out1, json!({ "approved": true }), 2).await;
    let net = network_events(&events, travel::ID);
    assert_eq!(
        lines(&net),
        [
            "  agent concierge tool-output",
            "  agent concierge tool-result",
            "  agent concierge step-finish",
            "  agent concierge step-start",
            "  agent concierge response-metadata",
            "  agent concierge text-start",
            "  agent concierge text-delta",
            "  agent concierge text-end",
            "  agent concierge step-finish",
            "  agent concierge finish",
            "agent-end concierge",
            "step-finish #1 complete=false",
            "routing-start routing-agent travel-network #2 previous=concierge",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #2 Workflow order-approval",
            "workflow-start order-approval",
            "  workflow order-approval workflow_start order-approval",
            "  workflow order-approval step-start prepare",
            "  workflow order-approval result prepare Success",
            "  workflow order-approval step-start approve",
            "  workflow order-approval output approve",
            "  workflow order-approval suspended approve",
            "  workflow order-approval workflow_finish suspended",
            r#"workflow-suspended order-approval {"amount":90,"reason":"needs approval"}"#,
        ]
    );
    assert_eq!(
        frame(&events),
        ["start travel-network 2 resumed", "step-start travel-network resumed", "suspended travel-network"]
    );
    let (agent_end, agent_total) = find(&net, |e| match e {
        NetworkEvent::AgentExecutionEnd { delegation, usage, .. } => Some(((**delegation).clone(), *usage)),
        _ => None,
    });
    assert_eq!(agent_end.iteration, 1, "the iteration that waited ends now");
    let text = agent_end.result.as_ref().and_then(Value::as_str).unwrap_or_default();
    assert!(text.starts_with("Here is what I found: book-activity returned") && text.contains("status confirmed"));
    // The agent's usage covers both phases: its first call (reported with the approval) and its answer.
    let answer_usage = find(&net, |e| match e {
        NetworkEvent::AgentExecutionEvent { chunk, .. } => match &**chunk {
            AgentChunk::AgentStepFinish { step_number: 2, usage, .. } => Some(*usage),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(agent_total.total_tokens, agent_usage.total_tokens + answer_usage.total_tokens);
    let (start_run_id, suspended) = (
        find(&net, |e| match e {
            NetworkEvent::WorkflowExecutionStart { workflow_run_id, .. } => Some(Arc::clone(workflow_run_id)),
            _ => None,
        }),
        find(&net, |e| match e {
            NetworkEvent::WorkflowExecutionSuspended { workflow_run_id, usage, selection_reason, .. } => {
                Some((Arc::clone(workflow_run_id), *usage, selection_reason.clone()))
            }
            _ => None,
        }),
    );
    assert_eq!((&suspended.0, suspended.1), (&start_run_id, Usage::default()));
    assert!(!suspended.2.is_empty());
    let (payload, schema) = suspension(&out2, travel::ID);
    assert_eq!(
        payload,
        json!({
            "reason": "workflow-execution-suspended",
            "iteration": 2,
            "workflowId": "order-approval",
            "workflowRunId": &*start_run_id,
            "step": "approve",
            "suspendPayload": { "reason": "needs approval", "amount": 90 },
        })
    );
    // The resume data is the nested step's: its schema applies.
    assert_eq!(schema.as_ref().map(|s| s["required"].clone()), Some(json!(["approved", "approver"])));
    let refused = wf.resolve_resume(&out2.snapshot, req("", json!({ "approved": true }))).unwrap_err();
    assert!(matches!(&refused, ResumeError::InvalidResumeData(v) if v.path == "resume_data.approver"), "{refused}");

    // Phase 3: the nested run resumes (its phase 2) and ends; then the tool waits for approval.
    let (out3, events) = resume_travel(&wf, &out2, json!({ "approved": true, "approver": "ann" }), 3).await;
    let net = network_events(&events, travel::ID);
    let args = booking_args().to_string();
    assert_eq!(
        lines(&net),
        [
            "  workflow order-approval workflow_start order-approval",
            "  workflow order-approval step-start approve",
            "  workflow order-approval result approve Success",
            "  workflow order-approval step-start finalize",
            "  workflow order-approval result finalize Success",
            "  workflow order-approval workflow_finish success",
            "workflow-end order-approval success",
            "step-finish #2 complete=false",
            "routing-start routing-agent travel-network #3 previous=order-approval",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #3 Tool book-activity",
            &format!("tool-start book-activity {args}"),
            "tool-approval book-activity",
        ]
    );
    let nested_start = find(&net, |e| match e {
        NetworkEvent::WorkflowExecutionEvent { event, .. } => match &**event {
            EventKind::WorkflowStart { phase, resumed, .. } => Some((*phase, *resumed)),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(nested_start, (2, true), "the nested run's second phase");
    let workflow_end = find(&net, |e| match e {
        NetworkEvent::WorkflowExecutionEnd { workflow_run_id, delegation, .. } => {
            Some((Arc::clone(workflow_run_id), delegation.result.clone()))
        }
        _ => None,
    });
    assert_eq!(workflow_end, (start_run_id, Some(json!({ "status": "approved by ann" }))));
    let approval = find(&net, |e| match e {
        NetworkEvent::ToolExecutionApproval { approval, selection_reason } => {
            assert!(!selection_reason.is_empty());
            Some((**approval).clone())
        }
        _ => None,
    });
    assert_eq!((&*approval.tool_call_id, &*approval.tool_name), ("travel-network-book-activity-3", "book-activity"));
    assert_eq!((approval.args, approval.resume_schema), (booking_args(), Some(approval_schema())));
    let (payload, schema) = suspension(&out3, travel::ID);
    assert_eq!(
        payload,
        json!({
            "reason": "tool-execution-approval",
            "iteration": 3,
            "toolCallId": "travel-network-book-activity-3",
            "toolName": "book-activity",
            "args": booking_args(),
        })
    );
    assert_eq!(schema, Some(approval_schema()));

    // Phase 4: the tool runs; the router finishes.
    let (out4, events) = resume_travel(&wf, &out3, json!({ "approved": true }), 4).await;
    let net = network_events(&events, travel::ID);
    let booking = json!({
        "bookingId": "bk-travel-network-book-activity-3",
        "activity": booking_args()["activity"],
        "city": "Lisbon",
        "status": "confirmed",
    });
    assert_eq!(
        lines(&net),
        [
            &format!("tool-end book-activity {booking}"),
            "step-finish #3 complete=false",
            "routing-start routing-agent travel-network #4 previous=book-activity",
            "routing-text-start",
            "routing-text-delta",
            "routing-end #4 None none",
            "validation-start #4 checks=2",
            "validation-end #4 passed=true",
            "step-finish #4 complete=true",
            "finish task complete",
        ]
    );
    assert_eq!(out4.status, RunStatus::Success, "{:?}", out4.error);
    assert!(out4.snapshot.suspended.is_empty() && out4.snapshot.control.is_empty(), "nothing kept once done");
    let Some(NetworkEvent::NetworkFinish { delegation, usage, .. }) = net.last() else { panic!("no finish") };
    assert_eq!((delegation.iteration, delegation.result.as_ref()), (4, Some(&booking)));
    // Every model call, in whichever phase, counted once: by the network and by the run.
    assert_eq!(*usage, model.total());
    assert_eq!(out4.snapshot.usage, model.total());
    let result = out4.result.unwrap();
    assert_eq!((result["result"].clone(), result["iterations"].clone()), (booking, json!(4)));
    assert_eq!(result["usage"]["totalTokens"], json!(model.total().total_tokens));
}

/// A travel network suspended by a build before issue 10 (the run's snapshot, the network's saved state, the
/// delegated agent's and the nested workflow run's, all with snake_case usage) resumes at each wait and ends with
/// the same result and usage as a run that never left this build.
#[tokio::test]
async fn a_network_suspended_by_an_older_build_resumes_with_its_usage() {
    let wf = workflow(travel::travel_network_with(Arc::new(OfflineModel::new())));
    let (mut current, _) = run(&wf, json!({ "task": TRAVEL_TASK })).await;
    let mut old = current.clone();
    let decisions =
        [json!({ "approved": true }), json!({ "approved": true, "approver": "ann" }), json!({ "approved": true })];
    for (phase, data) in (2..).zip(decisions) {
        let stored = crate::engine::with_old_usage_keys(serde_json::to_value(&old.snapshot).unwrap());
        old.snapshot = serde_json::from_value(stored).unwrap();
        assert_eq!(old.snapshot.usage, current.snapshot.usage);
        (old, _) = resume_travel(&wf, &old, data.clone(), phase).await;
        (current, _) = resume_travel(&wf, &current, data, phase).await;
        assert_eq!((old.status, old.snapshot.usage), (current.status, current.snapshot.usage), "phase {phase}");
    }
    assert_eq!(current.status, RunStatus::Success, "{:?}", current.error);
    assert_eq!(old.result, current.result);
}

#[tokio::test]
async fn declined_approvals_and_a_rejected_order_are_results_the_router_reads() {
    let wf = workflow(travel::travel_network_with(Arc::new(OfflineModel::new())));
    let (out1, _) = run(&wf, json!({ "task": TRAVEL_TASK })).await;

    // The concierge's booking is declined: the agent is told, and answers without it.
    let (out2, events) = resume_travel(&wf, &out1, json!({ "approved": false, "reason": "too pricey" }), 2).await;
    let net = network_events(&events, travel::ID);
    assert_eq!(lines(&net)[..2], ["  agent concierge tool-output-denied", "  agent concierge step-finish"]);
    let denied = find(&net, |e| match e {
        NetworkEvent::AgentExecutionEvent { chunk, .. } => match &**chunk {
            AgentChunk::ToolOutputDenied { tool_name, reason, .. } => Some((tool_name.to_string(), reason.clone())),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(denied, ("book-activity".to_owned(), Some("too pricey".to_owned())));
    let agent_result = find(&net, |e| match e {
        NetworkEvent::AgentExecutionEnd { delegation, .. } => delegation.result.clone(),
        _ => None,
    });
    let text = agent_result.as_str().unwrap_or_default();
    assert!(text.contains("the user declined this call to 'book-activity': too pricey"), "{text}");
    assert!(!net.iter().any(|e| matches!(e, NetworkEvent::AgentExecutionEvent { chunk, .. } if matches!(**chunk, AgentChunk::ToolResult { .. }))));

    // The order is rejected: that is the workflow's result.
    let (out3, events) = resume_travel(&wf, &out2, json!({ "approved": false, "approver": "bob" }), 3).await;
    let rejected = find(&network_events(&events, travel::ID), |e| match e {
        NetworkEvent::WorkflowExecutionEnd { delegation, status, .. } => Some((*status, delegation.result.clone())),
        _ => None,
    });
    assert_eq!(rejected, (RunStatus::Success, Some(json!({ "status": "rejected by bob" }))));

    // The direct booking is declined: the tool does not run, its result says so, and the router reads it.
    let (out4, events) = resume_travel(&wf, &out3, json!({ "approved": false, "reason": "not today" }), 4).await;
    let net = network_events(&events, travel::ID);
    let declined = json!({ "declined": true, "reason": "not today" });
    assert_eq!(
        lines(&net)[..2],
        [format!("tool-end book-activity {declined}"), "step-finish #3 complete=false".into()]
    );
    let previous = find(&net, |e| match e {
        NetworkEvent::RoutingAgentStart { iteration: 4, previous, .. } => previous.clone(),
        _ => None,
    });
    assert_eq!(previous.result, Some(declined.clone()));
    // A declined booking is an answer, not an error: the network can finish with it.
    assert_eq!(out4.status, RunStatus::Success, "{:?}", out4.error);
    assert_eq!(out4.result.unwrap()["result"], declined);
}

/// A step that suspends with `{"at": <path>}` unless resumed, and then outputs the resume data.
fn gate(id: &str) -> Step {
    Step::new(id, |ctx| async move {
        match ctx.resume_data() {
            Some(data) => Ok(StepOutcome::Done(data.clone())),
            None => Ok(StepOutcome::suspend(json!({ "at": ctx.step_id() }))),
        }
    })
}

#[tokio::test]
async fn a_delegated_workflow_with_two_waiting_steps_suspends_the_network_for_each_in_turn() {
    let gates = Workflow::builder("gates").parallel(vec![gate("a"), gate("b")]).commit();
    let router = Scripted::new(&[route("gates", "{}"), route("none", "both gates are open")]);
    let wf = workflow(Arc::new(Network::new("net", "", router).workflow(gates)));
    let input = json!({ "task": "Open the gates." });
    let (out1, events) = run(&wf, input.clone()).await;
    let net = network_events(&events, "net");
    let (payload, schema) = suspension(&out1, "net");
    assert_eq!((payload["step"].clone(), payload["suspendPayload"].clone()), (json!("a"), json!({ "at": "a" })));
    assert_eq!(schema, None, "the nested step declares none: any resume data");
    let run_id = find(&net, |e| match e {
        NetworkEvent::WorkflowExecutionStart { workflow_run_id, .. } => Some(Arc::clone(workflow_run_id)),
        _ => None,
    });

    // Resuming `a` leaves `b` waiting: the nested run suspends again, and the network with it.
    let (out2, events) = resume(&wf, input.clone(), &out1, req("", json!("A")), 2).await.unwrap();
    let net = network_events(&events, "net");
    let (payload, _) = suspension(&out2, "net");
    assert_eq!((payload["step"].clone(), payload["workflowRunId"].clone()), (json!("b"), json!(&*run_id)));
    assert_eq!(
        lines(&net),
        [
            "  workflow gates workflow_start gates",
            "  workflow gates step-start a",
            "  workflow gates result a Success",
            "  workflow gates workflow_finish suspended",
            r#"workflow-suspended gates {"at":"b"}"#,
        ]
    );

    let (out3, events) = resume(&wf, input, &out2, req("", json!("B")), 3).await.unwrap();
    let net = network_events(&events, "net");
    let end = find(&net, |e| match e {
        NetworkEvent::WorkflowExecutionEnd { workflow_run_id, delegation, .. } => {
            Some((Arc::clone(workflow_run_id), delegation.iteration, delegation.result.clone()))
        }
        _ => None,
    });
    assert_eq!(end, (run_id, 1, Some(json!({ "a": "A", "b": "B" }))));
    assert_eq!(out3.status, RunStatus::Success, "{:?}", out3.error);
    assert_eq!(out3.result.unwrap()["iterations"], json!(2));
    // Two routing calls in all, however many phases.
    let mut two = SCRIPTED_USAGE;
    two.add(&SCRIPTED_USAGE);
    assert_eq!(out3.snapshot.usage, two);
}

#[tokio::test]
async fn a_resume_with_an_unreadable_state_fails_the_network() {
    let network = Network::new("net", "", Scripted::new(&[]));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let start = NetworkStart::Resume { state: json!({ "iteration": "one" }), resume_data: json!({}) };
    let emit = move |event| sink.lock().unwrap().push(event);
    let outcome =
        run_network_with(&network, NetworkInput::new("x"), start, emit, NetworkEnv::new(CancellationToken::new()))
            .await;
    let NetworkEnd::Failed(error) = outcome.end else { panic!("{:?}", outcome.end) };
    assert_eq!(error.name, "ResumeError");
    assert!(error.message.starts_with("the network's saved state is unreadable"), "{}", error.message);
    assert!(events.lock().unwrap().is_empty());
}

//! Agent networks run over the RPCs (`network_id`), against a real server with the generated Rust client: the
//! built-in `research-network` on the offline model delegating to an agent, a tool and a workflow, every network
//! variant in order with its fields, the nested agent and workflow events, structured output, usage adding up, and
//! the `content-pipeline` workflow on its own; the built-in `travel-network` suspending for each primitive that
//! waits for a person (an agent's tool approval, a workflow's suspended step, a tool's approval) and resumed
//! through `ResumeStream` to success, approvals given and declined.

mod common;

use common::*;
use runstream::pb::{self, run_event::Event};
use serde_json::{Value, json};
use tonic::Code;

const TASK: &str = "Ask the assistant what 12 * 7 is, verify it with the calculator, then publish the answer as an \
                    article with content-pipeline.";

fn network_request(network_id: &str, input: Value) -> pb::StreamRunRequest {
    pb::StreamRunRequest { network_id: network_id.into(), input: Some(pb_value(input)), ..Default::default() }
}

/// The name of a oneof variant from prost's Debug output (`TextDelta(TextDelta { .. })` → `TextDelta`).
fn name(variant: &impl std::fmt::Debug) -> String {
    format!("{variant:?}").split('(').next().unwrap_or_default().to_owned()
}

/// The event's variant; nested events as `Wrapper/Inner`, e.g. `AgentExecutionEvent/TextDelta`.
fn variant(event: &pb::RunEvent) -> String {
    match &event.event {
        Some(Event::AgentExecutionEvent(e)) => {
            let inner = e.chunk.as_ref().and_then(|c| c.chunk.as_ref()).map(name).unwrap_or_default();
            format!("AgentExecutionEvent/{inner}")
        }
        Some(Event::WorkflowExecutionEvent(e)) => {
            let inner = match e.event.as_ref().and_then(|w| w.event.as_ref()) {
                Some(pb::workflow_event::Event::AgentChunk(c)) => {
                    format!("AgentChunk/{}", c.chunk.as_ref().map(name).unwrap_or_default())
                }
                other => other.map(name).unwrap_or_default(),
            };
            format!("WorkflowExecutionEvent/{inner}")
        }
        Some(e) => name(e),
        None => "none".into(),
    }
}

/// Variant names in order, with runs of the same delta (or partial object) collapsed to one `Name*`.
fn shape(events: &[pb::RunEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let name = variant(e);
        let starred = format!("{name}*");
        if name.ends_with("Delta") || name.ends_with("NetworkObject") || name.ends_with("/ObjectPartial") {
            if out.last() == Some(&starred) {
                continue;
            }
            if out.last() == Some(&name) {
                out.pop();
                out.push(starred);
                continue;
            }
        }
        out.push(name);
    }
    out
}

fn first<T>(events: &[pb::RunEvent], pick: impl Fn(&Event) -> Option<T>) -> T {
    events.iter().find_map(|e| e.event.as_ref().and_then(&pick)).expect("the stream has the event")
}

fn all<T>(events: &[pb::RunEvent], pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
    events.iter().filter_map(|e| e.event.as_ref().and_then(&pick)).collect()
}

/// The research network's stream for [`TASK`]: iterations 1-3 delegate to the assistant agent, the calculator tool
/// and the content-pipeline workflow (the order the task names them); iteration 4 answers "none", the completion
/// checks run and pass, and the network finishes.
const RESEARCH_SHAPE: &[&str] = &[
    "WorkflowStart",
    "StepStart",
    // Iteration 1: the assistant agent, its chunks nested.
    "RoutingAgentStart",
    "RoutingAgentTextStart",
    "RoutingAgentTextDelta*",
    "RoutingAgentEnd",
    "AgentExecutionStart",
    "AgentExecutionEvent/AgentStart",
    "AgentExecutionEvent/AgentStepStart",
    "AgentExecutionEvent/ResponseMetadata",
    "AgentExecutionEvent/ToolCallInputStreamingStart",
    "AgentExecutionEvent/ToolCallDelta*",
    "AgentExecutionEvent/ToolCallInputStreamingEnd",
    "AgentExecutionEvent/ToolCall",
    "AgentExecutionEvent/ToolResult",
    "AgentExecutionEvent/AgentStepFinish",
    "AgentExecutionEvent/AgentStepStart",
    "AgentExecutionEvent/ResponseMetadata",
    "AgentExecutionEvent/TextStart",
    "AgentExecutionEvent/TextDelta*",
    "AgentExecutionEvent/TextEnd",
    "AgentExecutionEvent/AgentStepFinish",
    "AgentExecutionEvent/AgentFinish",
    "AgentExecutionEnd",
    "NetworkStepFinish",
    // Iteration 2: the calculator tool.
    "RoutingAgentStart",
    "RoutingAgentTextStart",
    "RoutingAgentTextDelta*",
    "RoutingAgentEnd",
    "ToolExecutionStart",
    "ToolExecutionEnd",
    "NetworkStepFinish",
    // Iteration 3: the content-pipeline workflow, a nested run whose events are wrapped whole.
    "RoutingAgentStart",
    "RoutingAgentTextStart",
    "RoutingAgentTextDelta*",
    "RoutingAgentEnd",
    "WorkflowExecutionStart",
    "WorkflowExecutionEvent/WorkflowStart",
    "WorkflowExecutionEvent/StepStart",
    "WorkflowExecutionEvent/AgentChunk/AgentStart",
    "WorkflowExecutionEvent/AgentChunk/AgentStepStart",
    "WorkflowExecutionEvent/AgentChunk/ResponseMetadata",
    "WorkflowExecutionEvent/AgentChunk/TextStart",
    "WorkflowExecutionEvent/AgentChunk/TextDelta*",
    "WorkflowExecutionEvent/AgentChunk/TextEnd",
    "WorkflowExecutionEvent/AgentChunk/AgentStepFinish",
    "WorkflowExecutionEvent/AgentChunk/AgentFinish",
    "WorkflowExecutionEvent/StepResult",
    "WorkflowExecutionEvent/StepStart",
    "WorkflowExecutionEvent/StepOutput",
    "WorkflowExecutionEvent/Custom",
    "WorkflowExecutionEvent/StepResult",
    "WorkflowExecutionEvent/StepStart",
    "WorkflowExecutionEvent/StepResult",
    "WorkflowExecutionEvent/WorkflowFinish",
    "WorkflowExecutionEnd",
    "NetworkStepFinish",
    // Iteration 4: done; the completion checks run.
    "RoutingAgentStart",
    "RoutingAgentTextStart",
    "RoutingAgentTextDelta*",
    "RoutingAgentEnd",
    "NetworkValidationStart",
    "NetworkValidationEnd",
    "NetworkStepFinish",
    "NetworkFinish",
    "StepResult",
    "WorkflowFinish",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_network_streams_every_delegation_in_order_with_usage_adding_up() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events = stream_run(&mut client, network_request("research-network", json!({ "task": TASK }))).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(shape(&events), RESEARCH_SHAPE);
    let Some(Event::WorkflowStart(start)) = &events[0].event else { panic!("workflow_start first") };
    assert_eq!(start.workflow_id, "research-network");
    assert!(events[1..events.len() - 1].iter().all(|e| e.step_id == "research-network"));

    // Routing: one start and one end per iteration, each end naming the delegation; each start the one before.
    let starts = all(&events, |e| match e {
        Event::RoutingAgentStart(s) => Some(s.clone()),
        _ => None,
    });
    let iterations: Vec<u32> = starts.iter().map(|s| s.iteration).collect();
    assert_eq!(iterations, [1, 2, 3, 4]);
    assert!(starts.iter().all(|s| s.network_id == "research-network" && s.task == TASK && !s.agent_id.is_empty()));
    assert_eq!(starts[0].previous, None);
    assert_eq!(starts[1].previous.as_ref().map(|p| p.primitive_id.as_str()), Some("assistant"));
    let ends = all(&events, |e| match e {
        Event::RoutingAgentEnd(end) => Some(end.clone()),
        _ => None,
    });
    let delegations: Vec<(String, i32)> = ends
        .iter()
        .map(|end| end.delegation.as_ref().map(|d| (d.primitive_id.clone(), d.primitive_type)).expect("delegation"))
        .collect();
    assert_eq!(
        delegations,
        [
            ("assistant".to_owned(), pb::PrimitiveType::Agent as i32),
            ("calculator".to_owned(), pb::PrimitiveType::Tool as i32),
            ("content-pipeline".to_owned(), pb::PrimitiveType::Workflow as i32),
            ("none".to_owned(), pb::PrimitiveType::None as i32),
        ]
    );
    assert!(ends.iter().all(|end| end.usage.is_some_and(|u| u.total_tokens > 0)));

    // The agent delegation: its chunks nested under its id, its text and usage at the end.
    let agent_end = first(&events, |e| match e {
        Event::AgentExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(agent_end.agent_id, "assistant");
    let nested_text: String = all(&events, |e| match e {
        Event::AgentExecutionEvent(n) => match n.chunk.as_ref().and_then(|c| c.chunk.as_ref()) {
            Some(pb::agent_chunk::Chunk::TextDelta(d)) => Some(d.text.clone()),
            _ => None,
        },
        _ => None,
    })
    .concat();
    assert!(!nested_text.is_empty());
    assert!(
        all(&events, |e| match e {
            Event::AgentExecutionEvent(n) => Some(n.agent_id.clone()),
            _ => None,
        })
        .iter()
        .all(|id| id == "assistant")
    );

    // The tool delegation: arguments at the start, result at the end.
    let tool_start = first(&events, |e| match e {
        Event::ToolExecutionStart(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(
        (tool_start.tool_name.as_str(), json(&tool_start.args)),
        ("calculator", json!({"expression": "12 * 7"}))
    );
    let tool_end = first(&events, |e| match e {
        Event::ToolExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(tool_end.tool_call_id, tool_start.tool_call_id);
    let tool_result = tool_end.delegation.as_ref().map(|d| json(&d.result));
    assert_eq!(tool_result, Some(json!({"expression": "12 * 7", "result": 84})));

    // The workflow delegation: a nested run with its own id, its events from workflow_start to workflow_finish.
    let wf_start = first(&events, |e| match e {
        Event::WorkflowExecutionStart(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(wf_start.workflow_id, "content-pipeline");
    assert!(!wf_start.workflow_run_id.is_empty() && wf_start.workflow_run_id != events[0].run_id);
    let wf_end = first(&events, |e| match e {
        Event::WorkflowExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(
        (wf_end.workflow_run_id.as_str(), wf_end.status),
        (wf_start.workflow_run_id.as_str(), pb::RunStatus::Success as i32)
    );
    let published = wf_end.delegation.as_ref().map(|d| json(&d.result)).expect("delegation");
    assert_eq!(published["status"], "ready");
    // The nested analyst's text streams through, tagged with its step in the nested run.
    let nested_analysis: Vec<String> = all(&events, |e| match e {
        Event::WorkflowExecutionEvent(n) => match n.event.as_ref() {
            Some(pb::WorkflowEvent { step_id, event: Some(pb::workflow_event::Event::AgentChunk(c)) }) => {
                assert_eq!(step_id, "analyze-content");
                match &c.chunk {
                    Some(pb::agent_chunk::Chunk::TextDelta(d)) => Some(d.text.clone()),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    });
    assert!(nested_analysis.len() > 1, "the nested analysis streams in pieces");
    assert_eq!(published["analysis"], json!(nested_analysis.concat()));

    // Each iteration ends with a network step-finish; only the last is complete.
    let step_finishes = all(&events, |e| match e {
        Event::NetworkStepFinish(f) => Some((f.iteration, f.is_complete)),
        _ => None,
    });
    assert_eq!(step_finishes, [(1, false), (2, false), (3, false), (4, true)]);
    let validation = first(&events, |e| match e {
        Event::NetworkValidationEnd(v) => Some(v.clone()),
        _ => None,
    });
    assert!(validation.passed && validation.iteration == 4);
    let checks = json(&validation.results);
    assert_eq!(checks.as_array().map(Vec::len), Some(2), "{checks}");

    // Usage: the network's total is what the run reports, and it covers routing, agent and nested workflow.
    let finish = first(&events, |e| match e {
        Event::NetworkFinish(f) => Some(f.clone()),
        _ => None,
    });
    assert_eq!(finish.completion_reason, "task complete");
    let total = finish.usage.expect("network usage").total_tokens;
    let routing: u64 = ends.iter().filter_map(|e| e.usage).map(|u| u.total_tokens).sum();
    let agent = agent_end.usage.expect("agent usage").total_tokens;
    let workflow = wf_end.usage.expect("workflow usage").total_tokens;
    assert!(routing > 0 && agent > 0 && workflow > 0);
    assert!(total >= routing + agent + workflow, "{total} < {routing} + {agent} + {workflow}");
    let Some(Event::WorkflowFinish(wf_finish)) = &events[events.len() - 1].event else { panic!() };
    assert_eq!(wf_finish.usage.map(|u| u.total_tokens), Some(total));
    let result = get_result(&mut client, &events[0].run_id, false).await;
    assert_eq!((result.kind, status_of(&result)), (pb::RunKind::Network as i32, pb::RunStatus::Success));
    assert_eq!(result.usage.map(|u| u.total_tokens), Some(total));
    let output = json(&result.result);
    assert_eq!((output["completionReason"].clone(), output["iterations"].clone()), (json!("task complete"), json!(4)));
    server.stop().await;
}

/// Also under `output_schema`, the spelling before issue 10, still taken until the next release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_asked_for_a_schema_streams_partial_objects_then_the_checked_object() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for key in ["outputSchema", "output_schema"] {
        a_network_asked_for_a_schema(&mut client, key).await;
    }
    server.stop().await;
}

async fn a_network_asked_for_a_schema(client: &mut Client, key: &str) {
    let schema = json!({
        "type": "object",
        "required": ["answer", "value"],
        "properties": { "answer": { "type": "string" }, "value": { "type": "integer" } }
    });
    let input = json!({ "task": "What is 12 * 7? Use the calculator.", key: schema });
    let events = stream_run(client, network_request("research-network", input)).await;
    let tail: Vec<String> = shape(&events).into_iter().rev().take(6).rev().collect();
    assert_eq!(
        tail,
        ["NetworkStepFinish", "NetworkObject*", "NetworkObjectResult", "NetworkFinish", "StepResult", "WorkflowFinish"]
    );
    let object = first(&events, |e| match e {
        Event::NetworkObjectResult(r) => Some(json(&r.object)),
        _ => None,
    });
    assert!(object["answer"].is_string() && object["value"].is_i64(), "{object}");
    let partials = all(&events, |e| match e {
        Event::NetworkObject(o) => Some(json(&o.object)),
        _ => None,
    });
    assert_eq!(partials.last(), Some(&object), "the last partial object is the whole object");
    let finish = first(&events, |e| match e {
        Event::NetworkFinish(f) => Some(json(&f.object)),
        _ => None,
    });
    assert_eq!(finish, object);
    assert_eq!(json(&get_result(client, &events[0].run_id, false).await.result)["object"], object, "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_listed_and_their_input_is_checked_at_start() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let all = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let network = all.iter().find(|w| w.id == "research-network").expect("research-network listed");
    assert_eq!((network.kind, network.model.as_str()), (pb::RunKind::Network as i32, "offline"));
    assert_eq!(network.members, ["assistant", "content-pipeline"]);
    let tools: Vec<&str> = network.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tools, ["calculator"]);
    let travel = all.iter().find(|w| w.id == "travel-network").expect("travel-network listed");
    assert_eq!(
        (travel.kind, travel.members.as_slice()),
        (pb::RunKind::Network as i32, ["concierge", "order-approval"].map(String::from).as_slice())
    );
    assert!(travel.tools.iter().any(|t| t.name == "book-activity" && t.requires_approval));
    let pipeline = all.iter().find(|w| w.id == "content-pipeline").expect("content-pipeline listed");
    assert_eq!(pipeline.kind, pb::RunKind::Workflow as i32);
    // The input's keys are camelCase; the spelling before issue 10 is listed as deprecated, so strict schemas take it.
    let properties = json(&network.input_schema)["properties"].clone();
    assert!(properties["outputSchema"].is_object() && properties["outputSchema"].get("deprecated").is_none());
    assert_eq!(properties["output_schema"]["deprecated"], true, "{properties}");

    let stream = |input: Value, id: &str| {
        let request = network_request(id, input);
        let mut client = client.clone();
        async move { client.stream_run(request).await }
    };
    assert_status(stream(json!({}), "research-network").await, Code::InvalidArgument, &["input.task"]);
    assert_status(stream(json!({ "task": "  " }), "research-network").await, Code::InvalidArgument, &["input.task"]);
    let bad_schema = json!({ "task": "hi", "outputSchema": { "type": "frog" } });
    assert_status(stream(bad_schema, "research-network").await, Code::InvalidArgument, &["input.outputSchema"]);
    let bad_schema = json!({ "task": "hi", "output_schema": { "type": "frog" } });
    assert_status(stream(bad_schema, "research-network").await, Code::InvalidArgument, &["input.output_schema"]);
    let both = json!({ "task": "hi", "outputSchema": { "type": "object" }, "output_schema": { "type": "object" } });
    let refused = &["input.outputSchema", "also as `output_schema`", "send only `outputSchema`"];
    assert_status(stream(both, "research-network").await, Code::InvalidArgument, refused);
    // An id that is not a network's is not found among the networks, and the message lists those there are.
    let not_a_network = stream(json!({ "task": "hi" }), "assistant").await;
    assert_status(not_a_network, Code::NotFound, &["network 'assistant'", "research-network"]);
    assert_status(stream(json!({ "task": "hi" }), "nope").await, Code::NotFound, &["nope"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_pipeline_streams_the_analysis_progress_and_the_publish_ready_result() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let content = "Streaming runs make long work visible. Every event has a sequence number, so nothing is lost.";
    let input = json!({ "content": content, "type": "article" });
    let events = stream_run(&mut client, stream_request("content-pipeline", "", input)).await;
    assert_seqs(&events, 1, events.len() as u64);
    let steps: Vec<(String, &str)> = events
        .iter()
        .filter(|e| matches!(e.event, Some(Event::StepStart(_)) | Some(Event::StepResult(_))))
        .map(|e| (e.step_id.clone(), kind(e)))
        .collect();
    let step_ids: Vec<&str> = steps.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        step_ids,
        ["analyze-content", "analyze-content", "track-progress", "track-progress", "publish", "publish"]
    );
    // The analysis streams as text deltas inside the agent step, before that step's result.
    let analysis_end = events.iter().position(|e| matches!(e.event, Some(Event::StepResult(_)))).expect("result");
    let deltas = events[..analysis_end].iter().filter(|e| matches!(e.event, Some(Event::TextDelta(_)))).count();
    assert!(deltas > 1, "the analysis streams in pieces ({deltas} deltas)");
    // Progress through the writer: a step output and a custom `progress` event.
    let output = first(&events, |e| match e {
        Event::StepOutput(o) => Some(json(&o.output)),
        _ => None,
    });
    assert!(output["progressPercent"].is_number(), "{output}");
    let custom = first(&events, |e| match e {
        Event::Custom(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!((custom.r#type.as_str(), json(&custom.data)["stage"].clone()), ("data-progress", json!("publish")));
    let result = finish_result(events.last().expect("finish"));
    assert_eq!(result["status"], "ready");
    assert_eq!(result["type"], "article");
    assert!(result["title"].is_string() && result["body"].is_string(), "{result}");
    // The analyst's tokens add up into the run's usage.
    let Some(Event::WorkflowFinish(finish)) = &events[events.len() - 1].event else { panic!("workflow_finish last") };
    assert!(finish.usage.is_some_and(|u| u.total_tokens > 0));
    server.stop().await;
}

// ---- approvals and suspensions inside networks: the built-in travel-network ----

const TRAVEL_TASK: &str = "Ask the concierge to book a 90 euro kayak tour in Lisbon, then file the order with \
                           order-approval, then book-activity a food tour in Porto.";

/// Resumes `run_id` with `data` and reads the phase's stream to its end.
async fn resume(client: &mut Client, run_id: &str, data: Value) -> Vec<pb::RunEvent> {
    let stream = client.resume_stream(resume_request(run_id, data)).await.expect("ResumeStream accepted");
    collect(stream.into_inner()).await
}

/// The network step's `step_suspended` (second to last) and the suspended finish (last) of a phase: the
/// suspend payload and the resume schema.
fn suspended(events: &[pb::RunEvent]) -> (Value, Value) {
    let n = events.len();
    assert_eq!(finish_status(&events[n - 1]), Some(pb::RunStatus::Suspended));
    let Some(Event::StepSuspended(step)) = &events[n - 2].event else { panic!("step_suspended before the finish") };
    assert_eq!(step.step_id, "travel-network");
    (json(&step.suspend_payload), json(&step.resume_schema))
}

fn routing_ends(events: &[pb::RunEvent]) -> Vec<pb::RoutingAgentEnd> {
    all(events, |e| match e {
        Event::RoutingAgentEnd(end) => Some(end.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn travel_network_suspends_for_each_wait_and_resume_stream_continues_it_to_success() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    // Phase 1: the concierge's booking needs approval; the network run suspends.
    let phase1 = stream_run(&mut client, network_request("travel-network", json!({ "task": TRAVEL_TASK }))).await;
    assert_seqs(&phase1, 1, phase1.len() as u64);
    let run_id = phase1[0].run_id.clone();
    assert_eq!(
        shape(&phase1),
        [
            "WorkflowStart",
            "StepStart",
            "RoutingAgentStart",
            "RoutingAgentTextStart",
            "RoutingAgentTextDelta*",
            "RoutingAgentEnd",
            "AgentExecutionStart",
            "AgentExecutionEvent/AgentStart",
            "AgentExecutionEvent/AgentStepStart",
            "AgentExecutionEvent/ResponseMetadata",
            "AgentExecutionEvent/ToolCallInputStreamingStart",
            "AgentExecutionEvent/ToolCallDelta*",
            "AgentExecutionEvent/ToolCallInputStreamingEnd",
            "AgentExecutionEvent/ToolCall",
            "AgentExecutionEvent/ToolCallApproval",
            "AgentExecutionApproval",
            "StepSuspended",
            "WorkflowFinish",
        ]
    );
    let agent_approval = first(&phase1, |e| match e {
        Event::AgentExecutionApproval(a) => Some(a.clone()),
        _ => None,
    });
    let routed = &routing_ends(&phase1)[0];
    let selection_reason = routed.delegation.as_ref().map(|d| d.selection_reason.clone()).unwrap_or_default();
    assert_eq!(
        (agent_approval.agent_id.as_str(), agent_approval.selection_reason.as_str()),
        ("concierge", selection_reason.as_str())
    );
    let call = agent_approval.approval.clone().expect("the tool call awaiting approval");
    assert_eq!((call.tool_name.as_str(), json(&call.args)["city"].clone()), ("book-activity", json!("Lisbon")));
    assert_eq!(json(&call.resume_schema)["required"], json!(["approved"]));
    let agent_so_far = agent_approval.usage.expect("the agent's usage so far").total_tokens;
    assert!(agent_so_far > 0);
    let (payload, schema) = suspended(&phase1);
    assert_eq!(payload["reason"], "agent-execution-approval");
    assert_eq!((payload["iteration"].clone(), payload["agentId"].clone()), (json!(1), json!("concierge")));
    assert_eq!(payload["toolCallId"], json!(call.tool_call_id));
    assert!(payload.get("conversation").is_none() && payload.get("state").is_none(), "the loop's state is private");
    assert_eq!(schema, json(&call.resume_schema), "the run resumes with the approval's data");
    let result = get_result(&mut client, &run_id, false).await;
    assert_eq!((status_of(&result), result.kind), (pb::RunStatus::Suspended, pb::RunKind::Network as i32));
    assert_eq!(result.suspended.iter().map(|p| p.segments.clone()).collect::<Vec<_>>(), [["travel-network"]]);
    assert_eq!(json(&result.suspend_payload.get("travel-network").cloned()), payload);
    let bad = client.resume_stream(resume_request(&run_id, json!({ "approved": "yes" }))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data.approved"]);

    // Phase 2: approved; the booking runs and the concierge answers; order-approval then suspends.
    let phase2 = resume(&mut client, &run_id, json!({ "approved": true })).await;
    let last1 = phase1.last().map_or(0, |e| e.seq);
    assert_seqs(&phase2, last1 + 1, last1 + phase2.len() as u64);
    assert_eq!(
        shape(&phase2),
        [
            "WorkflowStart",
            "StepStart",
            "AgentExecutionEvent/ToolOutput",
            "AgentExecutionEvent/ToolOutput",
            "AgentExecutionEvent/ToolResult",
            "AgentExecutionEvent/AgentStepFinish",
            "AgentExecutionEvent/AgentStepStart",
            "AgentExecutionEvent/ResponseMetadata",
            "AgentExecutionEvent/TextStart",
            "AgentExecutionEvent/TextDelta*",
            "AgentExecutionEvent/TextEnd",
            "AgentExecutionEvent/AgentStepFinish",
            "AgentExecutionEvent/AgentFinish",
            "AgentExecutionEnd",
            "NetworkStepFinish",
            "RoutingAgentStart",
            "RoutingAgentTextStart",
            "RoutingAgentTextDelta*",
            "RoutingAgentEnd",
            "WorkflowExecutionStart",
            "WorkflowExecutionEvent/WorkflowStart",
            "WorkflowExecutionEvent/StepStart",
            "WorkflowExecutionEvent/StepResult",
            "WorkflowExecutionEvent/StepStart",
            "WorkflowExecutionEvent/StepOutput",
            "WorkflowExecutionEvent/StepSuspended",
            "WorkflowExecutionEvent/WorkflowFinish",
            "WorkflowExecutionSuspended",
            "StepSuspended",
            "WorkflowFinish",
        ]
    );
    let agent_end = first(&phase2, |e| match e {
        Event::AgentExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    let agent_result = agent_end.delegation.as_ref().map(|d| json(&d.result)).unwrap_or_default();
    assert!(agent_result.as_str().is_some_and(|t| t.contains("status confirmed")), "{agent_result}");
    let agent_total = agent_end.usage.expect("agent usage").total_tokens;
    assert!(agent_total > agent_so_far, "the agent's usage spans both phases");
    let wf_start = first(&phase2, |e| match e {
        Event::WorkflowExecutionStart(s) => Some(s.clone()),
        _ => None,
    });
    let wf_suspended = first(&phase2, |e| match e {
        Event::WorkflowExecutionSuspended(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(
        (wf_suspended.workflow_id.as_str(), wf_suspended.workflow_run_id.as_str()),
        ("order-approval", wf_start.workflow_run_id.as_str())
    );
    assert_eq!(json(&wf_suspended.suspend_payload), json!({ "reason": "needs approval", "amount": 90 }));
    assert!(wf_suspended.usage.is_some() && !wf_suspended.selection_reason.is_empty());
    let (payload, schema) = suspended(&phase2);
    assert_eq!(
        (payload["reason"].clone(), payload["step"].clone(), payload["workflowRunId"].clone()),
        (json!("workflow-execution-suspended"), json!("approve"), json!(wf_start.workflow_run_id))
    );
    assert_eq!(schema["required"], json!(["approved", "approver"]), "the nested step's resume schema");
    let bad = client.resume_stream(resume_request(&run_id, json!({ "approved": true }))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data.approver"]);

    // Phase 3: the order is approved; the nested run resumes and ends; the tool waits for approval.
    let phase3 = resume(&mut client, &run_id, approval(true, "ann")).await;
    let last2 = phase2.last().map_or(0, |e| e.seq);
    assert_seqs(&phase3, last2 + 1, last2 + phase3.len() as u64);
    assert_eq!(
        shape(&phase3),
        [
            "WorkflowStart",
            "StepStart",
            "WorkflowExecutionEvent/WorkflowStart",
            "WorkflowExecutionEvent/StepStart",
            "WorkflowExecutionEvent/StepResult",
            "WorkflowExecutionEvent/StepStart",
            "WorkflowExecutionEvent/StepResult",
            "WorkflowExecutionEvent/WorkflowFinish",
            "WorkflowExecutionEnd",
            "NetworkStepFinish",
            "RoutingAgentStart",
            "RoutingAgentTextStart",
            "RoutingAgentTextDelta*",
            "RoutingAgentEnd",
            "ToolExecutionStart",
            "ToolExecutionApproval",
            "StepSuspended",
            "WorkflowFinish",
        ]
    );
    let wf_end = first(&phase3, |e| match e {
        Event::WorkflowExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(
        (wf_end.workflow_run_id.as_str(), wf_end.status),
        (wf_start.workflow_run_id.as_str(), pb::RunStatus::Success as i32)
    );
    assert_eq!(wf_end.delegation.as_ref().map(|d| json(&d.result)), Some(json!({ "status": "approved by ann" })));
    let tool_start = first(&phase3, |e| match e {
        Event::ToolExecutionStart(s) => Some(s.clone()),
        _ => None,
    });
    let tool_approval = first(&phase3, |e| match e {
        Event::ToolExecutionApproval(a) => Some(a.clone()),
        _ => None,
    });
    let call = tool_approval.approval.clone().expect("the tool call awaiting approval");
    assert_eq!(
        (call.tool_call_id.as_str(), call.tool_name.as_str()),
        (tool_start.tool_call_id.as_str(), "book-activity")
    );
    assert_eq!(json(&call.args), json(&tool_start.args));
    assert_eq!(tool_approval.selection_reason, tool_start.selection_reason);
    let (payload, schema) = suspended(&phase3);
    assert_eq!((payload["reason"].clone(), payload["iteration"].clone()), (json!("tool-execution-approval"), json!(3)));
    assert_eq!(schema, json(&call.resume_schema));

    // Phase 4: the booking runs; the router finishes; the run succeeds.
    let phase4 = resume(&mut client, &run_id, json!({ "approved": true })).await;
    let last3 = phase3.last().map_or(0, |e| e.seq);
    assert_seqs(&phase4, last3 + 1, last3 + phase4.len() as u64);
    assert_eq!(
        shape(&phase4),
        [
            "WorkflowStart",
            "StepStart",
            "ToolExecutionEnd",
            "NetworkStepFinish",
            "RoutingAgentStart",
            "RoutingAgentTextStart",
            "RoutingAgentTextDelta*",
            "RoutingAgentEnd",
            "NetworkValidationStart",
            "NetworkValidationEnd",
            "NetworkStepFinish",
            "NetworkFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    let tool_end = first(&phase4, |e| match e {
        Event::ToolExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    let booking = tool_end.delegation.as_ref().map(|d| json(&d.result)).unwrap_or_default();
    assert_eq!((booking["status"].clone(), booking["city"].clone()), (json!("confirmed"), json!("Lisbon")));
    assert_eq!(finish_status(phase4.last().expect("finish")), Some(pb::RunStatus::Success));

    // Across the phases: one log, iterations numbered on, usage adding up.
    let everything: Vec<pb::RunEvent> = [phase1, phase2, phase3, phase4].concat();
    assert_seqs(&everything, 1, everything.len() as u64);
    let iterations = all(&everything, |e| match e {
        Event::NetworkStepFinish(f) => Some((f.iteration, f.is_complete)),
        _ => None,
    });
    assert_eq!(iterations, [(1, false), (2, false), (3, false), (4, true)]);
    let finish = first(&everything, |e| match e {
        Event::NetworkFinish(f) => Some(f.clone()),
        _ => None,
    });
    let total = finish.usage.expect("network usage").total_tokens;
    let routing: u64 = routing_ends(&everything).iter().filter_map(|e| e.usage).map(|u| u.total_tokens).sum();
    assert!(total > routing + agent_total, "routing, the concierge and the input calls: {total}");
    let result = get_result(&mut client, &run_id, false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    assert_eq!(result.usage.map(|u| u.total_tokens), Some(total), "the run counts every call once, over all phases");
    let output = json(&result.result);
    assert_eq!((output["result"].clone(), output["iterations"].clone()), (booking, json!(4)));
    assert_eq!(output["completionReason"], "task complete");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_approvals_in_a_network_reach_the_agent_and_the_router() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let phase1 = stream_run(&mut client, network_request("travel-network", json!({ "task": TRAVEL_TASK }))).await;
    let run_id = phase1[0].run_id.clone();

    // The concierge's booking is declined: no tool result; the agent is told and answers without it.
    let phase2 = resume(&mut client, &run_id, json!({ "approved": false, "reason": "too pricey" })).await;
    assert_eq!(
        shape(&phase2)[..4],
        ["WorkflowStart", "StepStart", "AgentExecutionEvent/ToolOutputDenied", "AgentExecutionEvent/AgentStepFinish"]
    );
    let denied = first(&phase2, |e| match e {
        Event::AgentExecutionEvent(n) => match n.chunk.as_ref().and_then(|c| c.chunk.as_ref()) {
            Some(pb::agent_chunk::Chunk::ToolOutputDenied(d)) => Some(d.clone()),
            _ => None,
        },
        _ => None,
    });
    assert_eq!((denied.tool_name.as_str(), denied.reason.as_str()), ("book-activity", "too pricey"));
    assert!(!shape(&phase2).contains(&"AgentExecutionEvent/ToolResult".to_owned()));
    let agent_result = first(&phase2, |e| match e {
        Event::AgentExecutionEnd(end) => end.delegation.as_ref().map(|d| json(&d.result)),
        _ => None,
    });
    assert!(
        agent_result.as_str().is_some_and(|t| t.contains("declined this call to 'book-activity'")),
        "{agent_result}"
    );

    // The order is rejected; the direct booking is declined; the router reads both and finishes.
    let phase3 = resume(&mut client, &run_id, approval(false, "bob")).await;
    let rejected = first(&phase3, |e| match e {
        Event::WorkflowExecutionEnd(end) => end.delegation.as_ref().map(|d| json(&d.result)),
        _ => None,
    });
    assert_eq!(rejected, json!({ "status": "rejected by bob" }));
    let phase4 = resume(&mut client, &run_id, json!({ "approved": false })).await;
    let declined = first(&phase4, |e| match e {
        Event::ToolExecutionEnd(end) => end.delegation.as_ref().map(|d| json(&d.result)),
        _ => None,
    });
    assert_eq!(declined, json!({ "declined": true, "reason": null }));
    let next = first(&phase4, |e| match e {
        Event::RoutingAgentStart(s) => s.previous.clone(),
        _ => None,
    });
    assert_eq!((next.primitive_id.as_str(), json(&next.result)), ("book-activity", declined.clone()));
    assert_eq!(finish_status(phase4.last().expect("finish")), Some(pb::RunStatus::Success));
    let result = get_result(&mut client, &run_id, false).await;
    assert_eq!(json(&result.result)["result"], declined);
    server.stop().await;
}

// ---- tools that suspend themselves, inside networks ----

const TABLE_TASK: &str = "Ask the concierge to reserve a table for dinner in Porto, then reserve-table in Lisbon.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_that_suspend_themselves_suspend_the_network_and_resume_with_the_guests_answer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let phase1 = stream_run(&mut client, network_request("travel-network", json!({ "task": TABLE_TASK }))).await;
    let run_id = phase1[0].run_id.clone();
    // The concierge's reserve-table call suspends itself: the network says so and suspends.
    let agent_suspended = first(&phase1, |e| match e {
        Event::AgentExecutionSuspended(s) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(agent_suspended.agent_id, "concierge");
    let call = agent_suspended.suspended.clone().expect("the tool's suspension");
    assert_eq!(call.tool_name, "reserve-table");
    assert!(json(&call.suspend_payload)["question"].is_string(), "{:?}", call.suspend_payload);
    assert!(agent_suspended.usage.is_some_and(|u| u.total_tokens > 0));
    let tail: Vec<String> = shape(&phase1).into_iter().rev().take(4).rev().collect();
    assert_eq!(
        tail,
        ["AgentExecutionEvent/ToolCallSuspended", "AgentExecutionSuspended", "StepSuspended", "WorkflowFinish"]
    );
    let Some(Event::StepSuspended(step)) = &phase1[phase1.len() - 2].event else { panic!() };
    assert_eq!(json(&step.suspend_payload)["reason"], "agent-execution-suspended");
    assert!(json(&step.resume_schema)["properties"]["guests"].is_object(), "the tool's own resume schema");

    // Data that does not satisfy the tool's schema is refused; the guests' answer continues the concierge.
    let bad = client.resume_stream(resume_request(&run_id, json!({ "guests": "many" }))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data"]);
    let phase2 = resume(&mut client, &run_id, json!({ "guests": 4, "time": "19:30" })).await;
    assert_eq!(phase2[0].seq, phase1.len() as u64 + 1, "numbering continues");
    let agent_end = first(&phase2, |e| match e {
        Event::AgentExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(agent_end.agent_id, "concierge");
    // Next, the router calls reserve-table itself: it suspends itself again, now as the network's own tool.
    let tool_suspended = first(&phase2, |e| match e {
        Event::ToolExecutionSuspended(s) => Some(s.clone()),
        _ => None,
    });
    let call = tool_suspended.suspended.clone().expect("the tool's suspension");
    assert_eq!(call.tool_name, "reserve-table");
    assert!(json(&call.resume_schema)["properties"]["time"].is_object());
    let (payload, _) = suspended(&phase2);
    assert_eq!(payload["reason"], "tool-execution-suspended");

    let phase3 = resume(&mut client, &run_id, json!({ "guests": 2, "time": "20:00" })).await;
    let tool_end = first(&phase3, |e| match e {
        Event::ToolExecutionEnd(end) => Some(end.clone()),
        _ => None,
    });
    assert_eq!(
        (tool_end.tool_name.as_str(), tool_end.tool_call_id.as_str()),
        ("reserve-table", call.tool_call_id.as_str())
    );
    let reserved = tool_end.delegation.as_ref().map(|d| json(&d.result)).expect("the tool's result");
    assert_eq!((reserved["guests"].clone(), reserved["time"].clone()), (json!(2), json!("20:00")), "{reserved}");
    assert_eq!(finish_status(phase3.last().expect("finish")), Some(pb::RunStatus::Success));
    server.stop().await;
}

// ---- cancel: the primitive running is aborted, then the run ends CANCELED ----

/// A server whose `research-network` and `assistant` stream on an offline model slowed to 20 ms per chunk, so that
/// a cancel arrives while they stream.
async fn slow_server() -> TestServer {
    use runstream::{agent, builtin::research_network, model::OfflineModel, network};
    let slow = std::sync::Arc::new(OfflineModel::new().with_chunk_delay(std::time::Duration::from_millis(20)));
    let mut catalog = runstream::engine::WorkflowCatalog::new();
    catalog.register(network::workflow(research_network::research_network_with(slow.clone())));
    catalog.register(agent::workflow(runstream::builtin::assistant_with(slow)));
    TestServer::start_with_catalog(catalog).await
}

/// Streams `request` until an event `is_mid` says the primitive is mid-stream, cancels the run, and returns every
/// event of the run (re-read from the start, so the cancel's events are there).
async fn cancel_mid_stream(
    client: &mut Client,
    request: pb::StreamRunRequest,
    is_mid: impl Fn(&pb::RunEvent) -> bool,
) -> Vec<pb::RunEvent> {
    let mut stream = client.stream_run(request).await.expect("StreamRun accepted").into_inner();
    let mut run_id = String::new();
    while let Some(event) = stream.message().await.expect("stream") {
        run_id.clone_from(&event.run_id);
        if is_mid(&event) {
            break;
        }
    }
    let canceled = client.cancel_run(pb::CancelRunRequest { run_id: run_id.clone() }).await;
    assert!(canceled.expect("CancelRun").into_inner().canceled);
    let observe = pb::ObserveStreamRequest { run_id, after_seq: 0, ..Default::default() };
    collect(client.observe_stream(observe).await.expect("ObserveStream").into_inner()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_streaming_agent_emits_its_abort_then_ends_the_run_canceled() {
    let server = slow_server().await;
    let mut client = server.client().await;
    let request = pb::StreamRunRequest {
        agent_id: "assistant".into(),
        input: Some(pb_value(json!({ "prompt": "Tell me about Lisbon and its old trams, at length" }))),
        ..Default::default()
    };
    let events = cancel_mid_stream(&mut client, request, |e| matches!(e.event, Some(Event::TextDelta(_)))).await;
    assert_seqs(&events, 1, events.len() as u64);
    let tail: Vec<String> = shape(&events).into_iter().rev().take(4).rev().collect();
    assert_eq!(tail, ["AgentAbort", "StepResult", "WorkflowCanceled", "WorkflowFinish"]);
    let abort = first(&events, |e| match e {
        Event::AgentAbort(a) => Some(a.clone()),
        _ => None,
    });
    assert!(!abort.reason.is_empty(), "{abort:?}");
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Canceled));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_network_mid_delegation_aborts_the_primitive_then_ends_the_run_canceled() {
    let server = slow_server().await;
    let mut client = server.client().await;
    let request = network_request("research-network", json!({ "task": TASK }));
    let events =
        cancel_mid_stream(&mut client, request, |e| matches!(e.event, Some(Event::AgentExecutionEvent(_)))).await;
    assert_seqs(&events, 1, events.len() as u64);
    let abort = first(&events, |e| match e {
        Event::PrimitiveAbort(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!((abort.primitive_type, abort.primitive_id.as_str()), (pb::PrimitiveType::Agent as i32, "assistant"));
    // The delegated agent's own abort comes first, nested; no end event for the aborted primitive.
    let shape = shape(&events);
    let at = shape.iter().position(|s| s == "PrimitiveAbort").expect("primitive_abort");
    assert_eq!(shape[at - 1], "AgentExecutionEvent/AgentAbort");
    assert!(!shape.contains(&"AgentExecutionEnd".to_owned()));
    assert_eq!(shape[shape.len() - 3..], ["StepResult", "WorkflowCanceled", "WorkflowFinish"]);
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Canceled));
    server.stop().await;
}

//! Agents run on their own over the RPCs (`agent_id`), against a real server with the generated Rust client and the
//! built-in agents on the offline model: every agent chunk in order with its fields (reasoning and its signature,
//! redacted reasoning, sources, files), tool approval and a tool's own suspension across a resume, the tripwire,
//! structured output, and the errors a caller can make.

mod common;

use common::*;
use runstream::pb::{self, run_event::Event};
use serde_json::{Value, json};
use tonic::Code;

fn agent_request(agent_id: &str, input: Value) -> pb::StreamRunRequest {
    pb::StreamRunRequest { agent_id: agent_id.into(), input: Some(pb_value(input)), ..Default::default() }
}

/// The oneof variant's name, e.g. `TextDelta` (prost's Debug output starts with it).
fn variant(event: &pb::RunEvent) -> String {
    match &event.event {
        Some(e) => format!("{e:?}").split('(').next().unwrap_or_default().to_owned(),
        None => "none".into(),
    }
}

/// Variant names in order, with runs of the same delta collapsed to one `Name*`.
fn shape(events: &[pb::RunEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let name = variant(e);
        let starred = format!("{name}*");
        if name.ends_with("Delta") || name == "Object" {
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

fn texts(events: &[pb::RunEvent]) -> impl Iterator<Item = &str> {
    events.iter().filter_map(|e| match &e.event {
        Some(Event::TextDelta(d)) => Some(d.text.as_str()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workflows_shows_agents_with_their_tools() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let all = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let assistant = all.iter().find(|w| w.id == "assistant").expect("assistant");
    assert_eq!(assistant.kind, pb::RunKind::Agent as i32);
    assert_eq!(assistant.model, "offline");
    let tools: Vec<(&str, bool)> = assistant.tools.iter().map(|t| (t.name.as_str(), t.requires_approval)).collect();
    assert_eq!(tools, [("get-weather", false), ("calculator", false)]);
    assert!(json(&assistant.input_schema)["properties"]["prompt"].is_object());
    let concierge = all.iter().find(|w| w.id == "concierge").expect("concierge");
    assert!(concierge.tools.iter().any(|t| t.name == "book-activity" && t.requires_approval));
    let reserve = concierge.tools.iter().find(|t| t.name == "reserve-table").expect("reserve-table");
    assert_eq!(json(&reserve.resume_schema)["required"], json!(["guests", "time"]));
    assert_eq!(assistant.tools[0].resume_schema, None);
    // The step takes an approval decision or the reservation's details, whichever suspended it.
    let any_of = json(&concierge.steps[0].resume_schema)["anyOf"].clone();
    assert!(any_of[0]["properties"]["approved"].is_object(), "{any_of}");
    assert_eq!(any_of[1], json(&reserve.resume_schema));
    let chain = all.iter().find(|w| w.id == "chain").expect("chain");
    assert_eq!(chain.kind, pb::RunKind::Workflow as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_streams_reasoning_then_text_in_the_run_envelope() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = agent_request("assistant", json!({"prompt": "Tell me about Lisbon", "reasoningEffort": "low"}));
    let events = stream_run(&mut client, request).await;
    assert_seqs(&events, 1, events.len() as u64);
    assert_eq!(
        shape(&events),
        [
            "WorkflowStart",
            "StepStart",
            "AgentStart",
            "AgentStepStart",
            "ResponseMetadata",
            "ReasoningStart",
            "ReasoningDelta*",
            "ReasoningSignature",
            "ReasoningEnd",
            "TextStart",
            "TextDelta*",
            "TextEnd",
            "AgentStepFinish",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    // The signature comes inside its reasoning part, after the reasoning it signs; the part's end repeats it.
    let part = |i: usize| match &events[i].event {
        Some(Event::ReasoningStart(m)) => (m.id.clone(), m.signature.clone()),
        Some(Event::ReasoningSignature(m)) => (m.id.clone(), m.signature.clone()),
        Some(Event::ReasoningEnd(m)) => (m.id.clone(), m.signature.clone()),
        other => panic!("{other:?}"),
    };
    let at = |name: &str| events.iter().position(|e| variant(e) == name).unwrap();
    let (start, signature, end) =
        (part(at("ReasoningStart")), part(at("ReasoningSignature")), part(at("ReasoningEnd")));
    assert_eq!((start.0.as_str(), start.1.as_str()), ("reasoning-1", ""));
    assert_eq!(signature.0, "reasoning-1");
    assert!(signature.1.starts_with("offline-sig-") && signature.1.len() == "offline-sig-".len() + 16, "{signature:?}");
    assert_eq!(end, signature);
    let Some(Event::WorkflowStart(start)) = &events[0].event else { panic!() };
    assert_eq!(start.workflow_id, "assistant");
    let agent: Vec<&pb::RunEvent> = events.iter().filter(|e| e.source == pb::EventSource::Agent as i32).collect();
    assert_eq!(agent.len(), events.len() - 4, "everything between step_start and step_result is the agent's");
    assert!(agent.iter().all(|e| e.step_id == "assistant"));
    let Some(Event::AgentStart(s)) = &events[2].event else { panic!() };
    assert_eq!(s.agent_id, "assistant");
    let Some(Event::AgentStepStart(step)) = &events[3].event else { panic!() };
    assert_eq!((step.step_number, step.message_id.as_str()), (1, s.message_id.as_str()));
    let Some(Event::ResponseMetadata(meta)) = &events[4].event else { panic!() };
    assert_eq!(meta.model_id, "offline");
    let text: String = texts(&events).collect();
    assert!(text.starts_with("You said: \"Tell me about Lisbon\""), "{text}");
    let n = events.len();
    let Some(Event::AgentStepFinish(step_finish)) = &events[n - 4].event else { panic!() };
    assert_eq!((step_finish.text.as_str(), step_finish.is_continued), (text.as_str(), false));
    let usage = step_finish.usage.expect("usage");
    assert!(usage.reasoning_tokens > 0 && usage.total_tokens > usage.reasoning_tokens);
    let Some(Event::AgentFinish(finish)) = &events[n - 3].event else { panic!() };
    assert_eq!((finish.text.as_str(), finish.steps), (text.as_str(), 1));
    assert_eq!(finish.usage.map(|u| u.total_tokens), Some(usage.total_tokens));
    let result = finish_result(&events[n - 1]);
    assert_eq!(result["text"], json!(text));
    assert_eq!(result["finishReason"], "stop");
    let run = get_result(&mut client, &events[0].run_id, false).await;
    assert_eq!((run.kind, run.workflow_id.as_str()), (pb::RunKind::Agent as i32, "assistant"));
    assert_eq!(run.usage.map(|u| u.total_tokens), Some(usage.total_tokens));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_reasoning_streams_only_its_redacted_part() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = agent_request("assistant", json!({"prompt": "Tell me about Lisbon", "reasoningEffort": "hidden"}));
    let events = stream_run(&mut client, request).await;
    assert_eq!(
        shape(&events)[5..10],
        ["ReasoningStart", "RedactedReasoning", "ReasoningEnd", "TextStart", "TextDelta*"],
        "no reasoning text, no signature"
    );
    let Some(Event::RedactedReasoning(redacted)) = &events[6].event else { panic!() };
    assert_eq!(redacted.id, "reasoning-1");
    assert!(redacted.data.starts_with("offline-redacted-"), "{}", redacted.data);
    let Some(Event::ReasoningEnd(end)) = &events[7].event else { panic!() };
    assert_eq!((end.id.as_str(), end.signature.as_str()), ("reasoning-1", ""));
    // Reasoning still happened: it counts.
    let n = events.len();
    let Some(Event::AgentFinish(finish)) = &events[n - 3].event else { panic!() };
    assert!(finish.usage.is_some_and(|u| u.reasoning_tokens > 0));
    assert_eq!(finish_status(&events[n - 1]), Some(pb::RunStatus::Success));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_cites_its_tool_as_a_source_and_attaches_a_csv_file() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let prompt = "What is the weather in Paris? Send it as a CSV file and cite your sources.";
    let events = stream_run(&mut client, agent_request("assistant", json!({"prompt": prompt}))).await;
    let shape = shape(&events);
    let second = shape.iter().rposition(|s| s == "AgentStepStart").unwrap();
    assert_eq!(
        shape[second..],
        [
            "AgentStepStart",
            "ResponseMetadata",
            "SourceRef",
            "TextStart",
            "TextDelta*",
            "TextEnd",
            "File",
            "AgentStepFinish",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    let call_id = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::ToolCall(c)) => Some(c.tool_call_id.clone()),
            _ => None,
        })
        .expect("tool_call");
    let source = events.iter().find_map(|e| match &e.event {
        Some(Event::SourceRef(s)) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(
        source.expect("source_ref"),
        pb::SourceRef {
            id: "source-1".into(),
            source_type: "url".into(),
            title: "get-weather result".into(),
            mime_type: String::new(),
            filename: String::new(),
            url: format!("runstream://tool/get-weather/{call_id}"),
        }
    );
    let file = events.iter().find_map(|e| match &e.event {
        Some(Event::File(f)) => Some(f.clone()),
        _ => None,
    });
    let file = file.expect("file");
    assert_eq!(file.mime_type, "text/csv");
    let csv = String::from_utf8(file.data).expect("utf-8");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("tool,city,conditions,humidity,temperature,windKph"));
    assert!(lines.next().is_some_and(|row| row.starts_with("get-weather,Paris,")), "{csv}");
    let text: String = texts(&events).collect();
    assert!(text.ends_with("The results are attached as a CSV file."), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_stream_their_arguments_then_results_and_errors() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events =
        stream_run(&mut client, agent_request("assistant", json!({"prompt": "What is the weather in Paris?"}))).await;
    assert_eq!(
        shape(&events)[2..],
        [
            "AgentStart",
            "AgentStepStart",
            "ResponseMetadata",
            "ToolCallInputStreamingStart",
            "ToolCallDelta*",
            "ToolCallInputStreamingEnd",
            "ToolCall",
            "ToolResult",
            "AgentStepFinish",
            "AgentStepStart",
            "ResponseMetadata",
            "TextStart",
            "TextDelta*",
            "TextEnd",
            "AgentStepFinish",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    let args_text: String = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::ToolCallDelta(d)) => Some(d.args_text_delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&args_text).unwrap(), json!({"city": "Paris"}));
    let call = events.iter().find_map(|e| match &e.event {
        Some(Event::ToolCall(c)) => Some(c.clone()),
        _ => None,
    });
    let call = call.expect("tool_call");
    assert_eq!((call.tool_name.as_str(), json(&call.args)), ("get-weather", json!({"city": "Paris"})));
    let result = events.iter().find_map(|e| match &e.event {
        Some(Event::ToolResult(r)) => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("tool_result");
    assert_eq!(result.tool_call_id, call.tool_call_id);
    assert_eq!(json(&result.result)["city"], "Paris");
    let first_finish = events.iter().find_map(|e| match &e.event {
        Some(Event::AgentStepFinish(f)) => Some(f.clone()),
        _ => None,
    });
    assert!(first_finish.expect("step finish").is_continued);

    // A tool that fails: the error is streamed and fed back to the model, and the agent still answers.
    let events = stream_run(&mut client, agent_request("assistant", json!({"prompt": "Calculate 1 / 0"}))).await;
    let error = events.iter().find_map(|e| match &e.event {
        Some(Event::ToolError(t)) => Some(t.clone()),
        _ => None,
    });
    let error = error.expect("tool_error");
    assert_eq!(error.tool_name, "calculator");
    assert_eq!(error.error.map(|e| e.message), Some("division by zero".into()));
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Success));
    server.stop().await;
}

/// Streams the concierge to its approval; returns the run id and the last seq.
async fn until_approval(client: &mut Client) -> (String, u64) {
    let request = agent_request("concierge", json!({"prompt": "Please book a kayak tour in Lisbon"}));
    let events = stream_run(client, request).await;
    let shape = shape(&events);
    assert_eq!(
        shape[shape.len() - 4..],
        ["ToolCall", "ToolCallApproval", "StepSuspended", "WorkflowFinish"],
        "the approval is asked, then the run suspends"
    );
    let n = events.len();
    let Some(Event::ToolCallApproval(approval)) = &events[n - 3].event else { panic!() };
    assert_eq!(approval.tool_name, "book-activity");
    assert_eq!(json(&approval.args)["city"], "Lisbon");
    assert!(json(&approval.resume_schema)["properties"]["approved"].is_object());
    let Some(Event::StepSuspended(suspended)) = &events[n - 2].event else { panic!() };
    assert_eq!(suspended.step_id, "concierge");
    let payload = json(&suspended.suspend_payload);
    assert_eq!(payload["reason"], "tool-call-approval");
    assert_eq!(payload["toolCallId"].as_str(), Some(approval.tool_call_id.as_str()));
    assert!(payload.get("conversation").is_none(), "the agent's state is private");
    assert_eq!(finish_status(&events[n - 1]), Some(pb::RunStatus::Suspended));
    (events[0].run_id.clone(), events[n - 1].seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_booking_runs_after_the_resume() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (run_id, last) = until_approval(&mut client).await;

    // Resume data is checked against the approval schema first.
    let bad = client.resume_stream(resume_request(&run_id, json!({"approved": "yes"}))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data.approved"]);

    let stream = client.resume_stream(resume_request(&run_id, json!({"approved": true}))).await.expect("resume");
    let events = collect(stream.into_inner()).await;
    assert_seqs(&events, last + 1, last + events.len() as u64);
    assert_eq!(
        shape(&events),
        [
            "WorkflowStart",
            "StepStart",
            "ToolOutput",
            "ToolOutput",
            "ToolResult",
            "AgentStepFinish",
            "AgentStepStart",
            "ResponseMetadata",
            "TextStart",
            "TextDelta*",
            "TextEnd",
            "AgentStepFinish",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    // The tool streams its progress before its result.
    let Some(Event::ToolOutput(progress)) = &events[2].event else { panic!() };
    assert_eq!(progress.tool_name, "book-activity");
    assert_eq!(json(&progress.output)["stage"], "checking availability");
    let Some(Event::ToolResult(result)) = &events[4].event else { panic!() };
    assert_eq!(result.tool_call_id, progress.tool_call_id);
    assert_eq!(json(&result.result)["status"], "confirmed");
    let text: String = texts(&events).collect();
    assert!(text.contains("book-activity returned"), "{text}");
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Success));
    // Usage spans both phases.
    let run = get_result(&mut client, &run_id, false).await;
    let calls: u64 = json(&run.result)["usage"]["totalTokens"].as_u64().unwrap();
    assert_eq!(run.usage.map(|u| u.total_tokens), Some(calls));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_booking_is_denied_and_the_agent_answers_without_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (run_id, _) = until_approval(&mut client).await;
    let decision = json!({"approved": false, "reason": "too expensive"});
    let stream = client.resume_stream(resume_request(&run_id, decision)).await.expect("resume");
    let events = collect(stream.into_inner()).await;
    assert_eq!(shape(&events)[..4], ["WorkflowStart", "StepStart", "ToolOutputDenied", "AgentStepFinish"]);
    let Some(Event::ToolOutputDenied(denied)) = &events[2].event else { panic!() };
    assert_eq!((denied.tool_name.as_str(), denied.reason.as_str()), ("book-activity", "too expensive"));
    assert_eq!(json(&denied.args)["city"], "Lisbon");
    assert!(!events.iter().any(|e| matches!(e.event, Some(Event::ToolResult(_)))));
    let text: String = texts(&events).collect();
    assert!(text.contains("the user declined this call to 'book-activity': too expensive"), "{text}");
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Success));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_suspends_itself_resumes_with_the_guests_answer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let request = agent_request("concierge", json!({"prompt": "Reserve a table for dinner in Porto"}));
    let events = stream_run(&mut client, request).await;
    let first_phase = shape(&events);
    assert_eq!(
        first_phase[first_phase.len() - 5..],
        ["ToolCallInputStreamingEnd", "ToolCall", "ToolCallSuspended", "StepSuspended", "WorkflowFinish"],
        "the tool suspends, then the run"
    );
    let n = events.len();
    let Some(Event::ToolCallSuspended(suspended)) = &events[n - 3].event else { panic!() };
    assert_eq!((suspended.tool_name.as_str(), json(&suspended.args)), ("reserve-table", json!({"city": "Porto"})));
    let payload = json(&suspended.suspend_payload);
    assert_eq!(payload["missing"], json!(["guests", "time"]));
    assert!(payload["question"].as_str().is_some_and(|q| q.contains("Porto")), "{payload}");
    let schema = json(&suspended.resume_schema);
    assert_eq!(schema["required"], json!(["guests", "time"]));
    // The step suspends with the tool's schema, not the approval's.
    let Some(Event::StepSuspended(step)) = &events[n - 2].event else { panic!() };
    assert_eq!(json(&step.resume_schema), schema);
    let step_payload = json(&step.suspend_payload);
    assert_eq!(step_payload["reason"], "tool-call-suspended");
    assert_eq!(step_payload["toolCallId"].as_str(), Some(suspended.tool_call_id.as_str()));
    assert_eq!(step_payload["suspendPayload"], payload);
    assert_eq!(finish_status(&events[n - 1]), Some(pb::RunStatus::Suspended));
    let (run_id, last) = (events[0].run_id.clone(), events[n - 1].seq);
    assert_eq!(status_of(&get_result(&mut client, &run_id, false).await), pb::RunStatus::Suspended);

    // Data that misses the tool's resume schema (an approval, here) is refused before anything runs.
    let bad = client.resume_stream(resume_request(&run_id, json!({"approved": true}))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data", "guests"]);
    let bad = client.resume_stream(resume_request(&run_id, json!({"guests": 4, "time": "7pm"}))).await;
    assert_status(bad, Code::InvalidArgument, &["resume_data.time"]);

    let data = json!({"guests": 4, "time": "19:30"});
    let stream = client.resume_stream(resume_request(&run_id, data)).await.expect("resume");
    let events = collect(stream.into_inner()).await;
    assert_seqs(&events, last + 1, last + events.len() as u64);
    assert_eq!(
        shape(&events),
        [
            "WorkflowStart",
            "StepStart",
            "ToolResult",
            "AgentStepFinish",
            "AgentStepStart",
            "ResponseMetadata",
            "TextStart",
            "TextDelta*",
            "TextEnd",
            "AgentStepFinish",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish",
        ]
    );
    let Some(Event::ToolResult(result)) = &events[2].event else { panic!() };
    assert_eq!(result.tool_call_id, suspended.tool_call_id);
    assert_eq!(json(&result.args), json!({"city": "Porto"}));
    let reservation = json(&result.result);
    assert_eq!((&reservation["guests"], &reservation["time"]), (&json!(4), &json!("19:30")));
    assert_eq!(reservation["status"], "confirmed");
    let text: String = texts(&events).collect();
    assert!(text.contains("reserve-table returned"), "{text}");
    assert_eq!(finish_status(events.last().unwrap()), Some(pb::RunStatus::Success));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripwire_stops_the_agent_and_ends_the_run_as_tripwire() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let secret = "sk-live0123456789abcdefghijkl";
    let request = agent_request("assistant", json!({"prompt": format!("Remember my key {secret} please")}));
    let events = stream_run(&mut client, request).await;
    let shape = shape(&events);
    assert_eq!(
        shape[shape.len() - 7..],
        ["TextDelta*", "TextEnd", "Tripwire", "AgentStepFinish", "AgentFinish", "StepResult", "WorkflowFinish"]
    );
    let tripwire = events.iter().find_map(|e| match &e.event {
        Some(Event::Tripwire(t)) => Some(t.clone()),
        _ => None,
    });
    let tripwire = tripwire.expect("tripwire");
    assert_eq!(tripwire.processor_id, "secret-guard");
    assert!(tripwire.reason.contains("API key"), "{}", tripwire.reason);
    assert!(!texts(&events).collect::<String>().contains("sk-live"), "the secret never reaches the client");
    let last = events.last().unwrap();
    assert_eq!(finish_status(last), Some(pb::RunStatus::Tripwire));
    let run = get_result(&mut client, &last.run_id, false).await;
    assert_eq!(status_of(&run), pb::RunStatus::Tripwire);
    let error = run.error.expect("error");
    assert_eq!(error.name, "TripwireError");
    assert!(error.message.contains("API key"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_streams_objects_and_returns_the_checked_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let schema = json!({
        "type": "object",
        "required": ["city", "days"],
        "properties": { "city": { "type": "string" }, "days": { "type": "integer" } }
    });
    let request = agent_request("assistant", json!({"prompt": "Plan 3 days in Porto", "outputSchema": schema}));
    let events = stream_run(&mut client, request).await;
    assert_eq!(
        shape(&events)[2..],
        [
            "AgentStart",
            "AgentStepStart",
            "ResponseMetadata",
            "Object*",
            "AgentStepFinish",
            "ObjectResult",
            "AgentFinish",
            "StepResult",
            "WorkflowFinish"
        ]
    );
    let object = events.iter().find_map(|e| match &e.event {
        Some(Event::ObjectResult(o)) => Some(json(&o.object)),
        _ => None,
    });
    let object = object.expect("object_result");
    assert_eq!(object["days"], 3);
    assert!(object["city"].is_string());
    let n = events.len();
    let Some(Event::AgentFinish(finish)) = &events[n - 3].event else { panic!() };
    assert_eq!(json(&finish.object), object);
    assert_eq!(finish_result(&events[n - 1])["object"], object);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_requests_get_precise_statuses() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let both = pb::StreamRunRequest {
        workflow_id: "chain".into(),
        agent_id: "assistant".into(),
        input: Some(pb_value(json!({"prompt": "hi"}))),
        ..Default::default()
    };
    assert_status(client.stream_run(both).await, Code::InvalidArgument, &["workflow_id, agent_id", "only one"]);
    let none = pb::StreamRunRequest::default();
    assert_status(client.stream_run(none).await, Code::InvalidArgument, &["workflow_id", "agent_id"]);
    let unknown = agent_request("nobody", json!({"prompt": "hi"}));
    assert_status(client.stream_run(unknown).await, Code::NotFound, &["agent 'nobody'", "assistant", "concierge"]);
    let workflow_as_agent = agent_request("chain", json!({"prompt": "hi"}));
    assert_status(
        client.stream_run(workflow_as_agent).await,
        Code::NotFound,
        &["agent 'chain' does not exist", "did you mean workflow_id"],
    );
    // And the other way round: an agent's id as workflow_id.
    assert_status(
        client.stream_run(stream_request("assistant", "", json!({"prompt": "hi"}))).await,
        Code::NotFound,
        &["workflow 'assistant' does not exist", "did you mean agent_id", "Set agent_id instead of workflow_id"],
    );
    let no_prompt = agent_request("assistant", json!({"text": "hi"}));
    assert_status(client.stream_run(no_prompt).await, Code::InvalidArgument, &["input"]);
    let bad_schema = agent_request("assistant", json!({"prompt": "hi", "output_schema": {"type": "nonsense"}}));
    assert_status(client.stream_run(bad_schema).await, Code::InvalidArgument, &["input.output_schema"]);
    let bad_role = agent_request("assistant", json!({"messages": [{"role": "robot", "content": "hi"}]}));
    assert_status(client.stream_run(bad_role).await, Code::InvalidArgument, &["input.messages[0].role"]);
    server.stop().await;
}

/// The input keys renamed to camelCase (`outputSchema`, `reasoningEffort`) over the real binary: ListWorkflows names
/// the new spellings; the old ones (`output_schema`, `reasoning_effort`) still work until the next release, listed
/// as deprecated and warned about in the server's log once per run; both spellings at once are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_input_spellings_still_work_with_a_deprecation_warning() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("agents-old-spellings");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test dir");
    let args = ["--store".as_ref(), "memory".as_ref()];
    let server = process::ServerProcess::start(&args, None, dir.join("server.log"), std::time::Duration::from_secs(30));
    let mut client = Client::connect(format!("http://{}", server.addr)).await.expect("connect");

    let all = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let assistant = all.iter().find(|w| w.id == "assistant").expect("assistant");
    let properties = json(&assistant.input_schema)["properties"].clone();
    for (key, old) in [("outputSchema", "output_schema"), ("reasoningEffort", "reasoning_effort")] {
        assert!(properties[key].is_object() && properties[key].get("deprecated").is_none(), "{properties}");
        assert_eq!(properties[old]["deprecated"], true, "{properties}");
    }

    let schema = json!({
        "type": "object",
        "required": ["city", "days"],
        "properties": { "city": { "type": "string" }, "days": { "type": "integer" } }
    });
    let old = json!({"prompt": "Plan 3 days in Porto", "output_schema": schema, "reasoning_effort": "low"});
    let events = stream_run(&mut client, agent_request("assistant", old)).await;
    assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));
    assert!(events.iter().any(|e| matches!(e.event, Some(Event::ReasoningDelta(_)))), "reasoning was asked for");
    let result = finish_result(events.last().expect("events"));
    assert_eq!(result["object"]["days"], 3, "{result}");
    assert_eq!(result["finishReason"], "stop", "{result}");

    let both = json!({"prompt": "hi", "reasoningEffort": "low", "reasoning_effort": "low"});
    let refused = ["input.reasoningEffort", "also as `reasoning_effort`", "send only `reasoningEffort`"];
    assert_status(client.stream_run(agent_request("assistant", both)).await, Code::InvalidArgument, &refused);
    let bad = json!({"prompt": "hi", "reasoningEffort": "extreme"});
    assert_status(
        client.stream_run(agent_request("assistant", bad)).await,
        Code::InvalidArgument,
        &["input.reasoningEffort"],
    );

    // One warning per old spelling, for the one run that used them. (A RUST_LOG the tests run under may filter
    // warnings out of the server's log; the server inherits it.)
    if std::env::var_os("RUST_LOG").is_none() {
        let log = std::fs::read_to_string(&server.log).expect("the server's log");
        let warned = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
        let output_schema = "agent 'assistant': input key `output_schema` is deprecated, use `outputSchema`";
        let reasoning_effort = "agent 'assistant': input key `reasoning_effort` is deprecated, use `reasoningEffort`";
        assert_eq!((warned(output_schema), warned(reasoning_effort)), (1, 1), "{}", server.log_tail());
        assert!(log.lines().any(|line| line.contains("WARN") && line.contains(output_schema)), "{log}");
    }
}

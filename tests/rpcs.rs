//! Every RPC and every built-in workflow, over a real server with the generated Rust client.

mod common;

use common::*;
use runstream::pb::{self, run_event::Event};
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workflows_describes_the_builtins() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let workflows = client.list_workflows(pb::ListWorkflowsRequest {}).await.expect("list").into_inner().workflows;
    let ids: Vec<&str> = workflows.iter().map(|w| w.id.as_str()).collect();
    for id in ["batch-foreach", "chain", "flaky", "order-approval", "timer", "writer-flood"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let chain = workflows.iter().find(|w| w.id == "chain").expect("chain");
    assert!(chain.input_schema.is_some());
    let steps: Vec<&str> = chain.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(steps, ["step-1", "step-2", "step-3"]);
    let order = workflows.iter().find(|w| w.id == "order-approval").expect("order-approval");
    let approve = order.steps.iter().find(|s| s.id == "approve").expect("approve step");
    assert!(json(&approve.resume_schema)["properties"]["approved"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_emits_exactly_eight_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events = stream_run(&mut client, stream_request("chain", "", json!({"value": 1}))).await;
    assert_eq!(
        kinds(&events),
        [
            "workflow_start",
            "step_start",
            "step_result",
            "step_start",
            "step_result",
            "step_start",
            "step_result",
            "workflow_finish"
        ]
    );
    assert_seqs(&events, 1, 8);
    let step_ids: Vec<&str> = events.iter().filter(|e| kind(e) == "step_start").map(|e| e.step_id.as_str()).collect();
    assert_eq!(step_ids, ["step-1", "step-2", "step-3"]);
    assert_eq!(finish_result(&events[7]), json!({"value": 4}));
    // A server-assigned run id is a UUID, the same on every event.
    let run_id = &events[0].run_id;
    assert!(uuid::Uuid::parse_str(run_id).is_ok(), "{run_id}");
    assert!(events.iter().all(|e| &e.run_id == run_id));
    assert!(events.iter().all(|e| e.time.is_some()));
    assert_eq!(events[1].source, pb::EventSource::Workflow as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_flood_streams_every_output() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events = stream_run(&mut client, stream_request("writer-flood", "", json!({"count": 1000}))).await;
    assert_seqs(&events, 1, 1004);
    let outputs: Vec<_> = events.iter().filter(|e| kind(e) == "step_output").collect();
    assert_eq!(outputs.len(), 1000);
    assert!(outputs.iter().all(|e| e.source == pb::EventSource::User as i32 && e.step_id == "flood"));
    assert_eq!(finish_result(events.last().expect("finish")), json!({"written": 1000}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_foreach_reports_each_iteration() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events =
        stream_run(&mut client, stream_request("batch-foreach", "", json!({"count": 50, "concurrency": 4}))).await;
    let progress: Vec<&pb::StepProgress> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepProgress(p)) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 50);
    assert!(progress.iter().all(|p| p.step_id == "square" && p.total_count == 50));
    // A count that would build a billion items in memory is refused before anything runs (it aborted the server).
    let huge = pb::StartRunRequest {
        workflow_id: "batch-foreach".into(),
        input: Some(pb_value(json!({"count": 1_000_000_000u64, "concurrency": 4}))),
        ..Default::default()
    };
    assert_status(client.start_run(huge).await, Code::InvalidArgument, &["count"]);
    let completed: Vec<u32> = progress.iter().map(|p| p.completed_count).collect();
    assert_eq!(completed, (1..=50).collect::<Vec<u32>>());
    let mut indices: Vec<u32> = progress.iter().map(|p| p.current_index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..50).collect::<Vec<u32>>());
    let expected: Vec<_> = (0..50).map(|k| json!({"i": k, "square": k * k})).collect();
    assert_eq!(finish_result(events.last().expect("finish")), json!(expected));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_waits_then_reports() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events = stream_run(&mut client, stream_request("timer", "", json!({"ms": 50}))).await;
    let waiting = events.iter().find_map(|e| match &e.event {
        Some(Event::StepWaiting(w)) => Some(w.clone()),
        _ => None,
    });
    let waiting = waiting.expect("a step_waiting event");
    assert!(waiting.wake_at.is_some());
    assert_eq!(finish_result(events.last().expect("finish")), json!({"sleptMs": 50}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_retries_then_succeeds_or_fails() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ok = stream_run(&mut client, stream_request("flaky", "flaky-ok", json!({"failTimes": 2, "attempts": 3}))).await;
    assert_eq!(finish_status(ok.last().expect("finish")), Some(pb::RunStatus::Success));
    let attempts = ok.iter().find_map(|e| match &e.event {
        Some(Event::StepResult(r)) => Some(r.attempts),
        _ => None,
    });
    assert_eq!(attempts, Some(3));
    // Each retry waits its delay in the open (step_waiting RETRY_BACKOFF naming the next attempt), then starts.
    assert_eq!(
        kinds(&ok),
        [
            "workflow_start",
            "step_start",
            "step_waiting",
            "step_start",
            "step_waiting",
            "step_start",
            "step_result",
            "workflow_finish"
        ]
    );
    let shown: Vec<(&str, u32)> = ok
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::StepStart(s)) => Some(("start", s.attempt)),
            Some(Event::StepWaiting(w)) => {
                assert_eq!(w.reason, pb::WaitReason::RetryBackoff as i32);
                assert!(w.wake_at.is_some(), "a retry wait says when it ends");
                Some(("waiting", w.attempt))
            }
            _ => None,
        })
        .collect();
    assert_eq!(shown, [("start", 1), ("waiting", 2), ("start", 2), ("waiting", 3), ("start", 3)]);

    let failed =
        stream_run(&mut client, stream_request("flaky", "flaky-fail", json!({"failTimes": 3, "attempts": 3}))).await;
    let finish = failed.last().expect("finish");
    assert_eq!(finish_status(finish), Some(pb::RunStatus::Failed));
    match &finish.event {
        Some(Event::WorkflowFinish(f)) => assert!(!f.error.as_ref().expect("error").message.is_empty()),
        other => panic!("{other:?}"),
    }
    let result = get_result(&mut client, "flaky-fail", false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Failed);
    assert_eq!(result.steps["unreliable"].status, pb::StepStatus::Failed as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_get_and_list_runs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let started = client
        .start_run(pb::StartRunRequest {
            workflow_id: "chain".into(),
            input: Some(pb_value(json!({"value": 10}))),
            resource_id: "user-1".into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert!(started.created);
    let result = get_result(&mut client, &started.run_id, true).await;
    assert_eq!(json(&result.result), json!({"value": 13}));
    assert_eq!(json(&result.input), json!({"value": 10}));

    let info = client.get_run(pb::GetRunRequest { run_id: started.run_id.clone() }).await.expect("get").into_inner();
    assert_eq!(info.workflow_id, "chain");
    assert_eq!(info.resource_id, "user-1");
    assert_eq!(info.status, pb::RunStatus::Success as i32);
    assert_eq!(info.last_seq, 8);
    assert_eq!(info.phase, 1);

    // Starting again with the same id does not start a second run.
    let again = client
        .start_run(pb::StartRunRequest {
            workflow_id: "chain".into(),
            run_id: started.run_id.clone(),
            input: Some(pb_value(json!({"value": 10}))),
            ..Default::default()
        })
        .await
        .expect("start again")
        .into_inner();
    assert!(!again.created);

    for i in 0..5 {
        stream_run(&mut client, stream_request("chain", &format!("page-{i}"), json!({"value": i}))).await;
    }
    stream_run(&mut client, stream_request("order-approval", "page-suspended", order_input())).await;
    // Newest first, paginated.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_runs(pb::ListRunsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        assert!(page.runs.len() <= 2);
        seen.extend(page.runs.into_iter().map(|r| r.run_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0], "page-suspended");
    assert_eq!(seen[1], "page-4");
    let filtered = client
        .list_runs(pb::ListRunsRequest { status: pb::RunStatus::Suspended as i32, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(filtered.runs.len(), 1);
    assert_eq!(filtered.runs[0].suspended, [pb::StepPath { segments: vec!["approve".into()] }]);
    let by_resource = client
        .list_runs(pb::ListRunsRequest { resource_id: "user-1".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(by_resource.runs.len(), 1);
    assert_status(
        client.list_runs(pb::ListRunsRequest { page_size: 5000, ..Default::default() }).await,
        Code::InvalidArgument,
        &["page_size"],
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weather_activities_streams_agent_chunks_as_a_step() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let events = stream_run(&mut client, stream_request("weather-activities", "", json!({"city": "Lisbon"}))).await;
    assert_seqs(&events, 1, events.len() as u64);
    let agent: Vec<&pb::RunEvent> = events.iter().filter(|e| kind(e) == "agent_or_network").collect();
    assert!(!agent.is_empty(), "the agent step streams its chunks");
    assert!(agent.iter().all(|e| e.step_id == "plan-activities" && e.source == pb::EventSource::Agent as i32));
    assert!(matches!(agent.first().and_then(|e| e.event.as_ref()), Some(Event::AgentStart(_))));
    assert!(matches!(agent.last().and_then(|e| e.event.as_ref()), Some(Event::AgentFinish(_))));
    assert!(agent.iter().any(|e| matches!(e.event, Some(Event::TextDelta(_)))));
    let finish = events.last().expect("finish");
    assert_eq!(finish_status(finish), Some(pb::RunStatus::Success));
    assert!(finish_result(finish)["text"].is_string());

    // The agent's usage adds up into the run: the sum of its model calls, in workflow_finish and GetResult.
    let calls: u64 = agent
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::AgentStepFinish(step)) => step.usage.map(|u| u.total_tokens),
            _ => None,
        })
        .sum();
    assert!(calls > 0, "the offline model reports usage");
    let Some(Event::WorkflowFinish(workflow_finish)) = &finish.event else { panic!("not a finish") };
    assert_eq!(workflow_finish.usage.map(|u| u.total_tokens), Some(calls));
    let result = get_result(&mut client, &finish.run_id, false).await;
    assert_eq!(result.usage.map(|u| u.total_tokens), Some(calls));
    server.stop().await;
}

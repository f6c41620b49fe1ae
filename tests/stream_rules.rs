//! The rules of the stream (issue: "The run registry and the stream rules"), each tested against a real server on
//! an ephemeral port with the generated Rust client.

mod common;

use std::time::Duration;

use common::*;
use runstream::pb::{self, run_event::Event};
use serde_json::json;
use tonic::{Code, Request};

// Rule 1 and 2: seq starts at 1, +1 per event across phases; a suspending phase ends with step_suspended then
// workflow_finish(SUSPENDED); the resume phase starts with workflow_start and continues the numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_gapless_across_suspend_and_resume() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let phase1 = stream_run(&mut client, stream_request("order-approval", "order-1", order_input())).await;
    assert_seqs(&phase1, 1, 7);
    assert_eq!(
        kinds(&phase1),
        [
            "workflow_start",
            "step_start",
            "step_result",
            "step_start",
            "step_output",
            "step_suspended",
            "workflow_finish"
        ]
    );
    assert_eq!(finish_status(&phase1[6]), Some(pb::RunStatus::Suspended));
    match &phase1[5].event {
        Some(Event::StepSuspended(s)) => {
            assert_eq!(s.step_id, "approve");
            assert_eq!(json(&s.suspend_payload), json!({"reason": "needs approval", "amount": 250}));
        }
        other => panic!("expected step_suspended, got {other:?}"),
    }
    match &phase1[4].event {
        Some(Event::StepOutput(o)) => assert_eq!(json(&o.output), json!({"note": "about to suspend"})),
        other => panic!("expected step_output, got {other:?}"),
    }
    assert!(phase1.iter().all(|e| e.run_id == "order-1"));

    let resumed = client.resume_stream(resume_request("order-1", approval(true, "ada"))).await.expect("resume");
    let phase2 = collect(resumed.into_inner()).await;
    assert_seqs(&phase2, 8, 13);
    assert_eq!(kinds(&phase2)[0], "workflow_start");
    match &phase2[0].event {
        Some(Event::WorkflowStart(start)) => {
            assert_eq!(start.phase, 2);
            assert!(start.resumed);
        }
        other => panic!("expected workflow_start, got {other:?}"),
    }
    let finish = phase2.last().expect("events");
    assert_eq!(finish_status(finish), Some(pb::RunStatus::Success));
    assert_eq!(finish_result(finish), json!({"status": "approved by ada"}));

    // The whole log, both finishes included, replays from the start.
    let all = collect(
        client
            .observe_stream(pb::ObserveStreamRequest { run_id: "order-1".into(), after_seq: 0, close_on_suspend: None })
            .await
            .expect("observe")
            .into_inner(),
    )
    .await;
    assert_seqs(&all, 1, 13);
    assert_eq!(finish_status(&all[6]), Some(pb::RunStatus::Suspended));
    assert_eq!(all[..7], phase1[..]);
    assert_eq!(all[7..], phase2[..]);

    let result = get_result(&mut client, "order-1", false).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    assert_eq!(json(&result.result), json!({"status": "approved by ada"}));
    assert_eq!(result.last_seq, 13);
    assert!(result.steps.contains_key("approve") && result.steps.contains_key("finalize"));
    server.stop().await;
}

// Rule 3: ObserveStream(after_seq = k) yields exactly seq > k, in order, follows live, ends after the final finish;
// for many observers attaching at different moments, also after the run has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_from_any_cursor_see_each_event_once() {
    const COUNT: u64 = 20_000;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let total = COUNT + 4; // workflow_start, step_start, COUNT outputs, step_result, workflow_finish

    // Keep the run from racing ahead of the first observers: start it, then attach observers at once.
    let run = client
        .start_run(pb::StartRunRequest {
            workflow_id: "writer-flood".into(),
            run_id: "flood-1".into(),
            input: Some(pb_value(json!({"count": COUNT}))),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    assert!(run.created);

    // A lead observer from the start; each time it reaches seq k, another observer attaches with after_seq = k
    // and follows live from there. Every one must see exactly k+1..=total.
    let mut lead = client
        .observe_stream(pb::ObserveStreamRequest { run_id: "flood-1".into(), after_seq: 0, close_on_suspend: None })
        .await
        .expect("observe")
        .into_inner();
    let mut lead_events = Vec::new();
    let mut joined = Vec::new();
    for cursor in [0u64, 1, 17, 5_000, 19_999] {
        while lead_events.last().map_or(0, |e: &pb::RunEvent| e.seq) < cursor {
            lead_events.push(lead.message().await.expect("event").expect("not ended"));
        }
        let mut client = server.client().await;
        let stream = client
            .observe_stream(pb::ObserveStreamRequest {
                run_id: "flood-1".into(),
                after_seq: cursor,
                close_on_suspend: None,
            })
            .await
            .expect("observe mid-run")
            .into_inner();
        joined.push((cursor, tokio::spawn(collect(stream))));
    }
    lead_events.extend(collect(lead).await);
    assert_seqs(&lead_events, 1, total);
    for (cursor, observer) in joined {
        let events = observer.await.expect("observer task");
        assert_seqs(&events, cursor + 1, total);
        assert_eq!(finish_status(events.last().expect("events")), Some(pb::RunStatus::Success));
    }

    // After the run has finished: any cursor, including the last one and the finish itself.
    for after_seq in [0, 1, COUNT, total - 1, total] {
        let events = collect(
            client
                .observe_stream(pb::ObserveStreamRequest {
                    run_id: "flood-1".into(),
                    after_seq,
                    close_on_suspend: None,
                })
                .await
                .expect("observe finished run")
                .into_inner(),
        )
        .await;
        if after_seq == total {
            assert!(events.is_empty());
        } else {
            assert_seqs(&events, after_seq + 1, total);
        }
    }
    // Outputs arrive in write order with their payloads.
    let events = collect(
        client
            .observe_stream(pb::ObserveStreamRequest { run_id: "flood-1".into(), after_seq: 2, close_on_suspend: None })
            .await
            .expect("observe")
            .into_inner(),
    )
    .await;
    for (k, event) in events.iter().take(COUNT as usize).enumerate() {
        match &event.event {
            Some(Event::StepOutput(o)) => {
                assert_eq!(o.step_id, "flood");
                assert_eq!(json(&o.output), json!({"i": k}));
            }
            other => panic!("expected step_output {k}, got {other:?}"),
        }
    }

    // A cursor beyond the log is a precise error, never a silent wait or gap.
    assert_status(
        client
            .observe_stream(pb::ObserveStreamRequest {
                run_id: "flood-1".into(),
                after_seq: total + 1,
                close_on_suspend: None,
            })
            .await,
        Code::OutOfRange,
        &["after_seq", &total.to_string()],
    );
    server.stop().await;
}

// Rule 4: a stalled reader neither slows the engine nor other readers, and loses nothing once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_stall_the_run() {
    const COUNT: u64 = 50_000;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Open a stream and do not read it: the run must still finish, and other readers must see everything.
    let stalled = client
        .stream_run(stream_request("writer-flood", "stall-1", json!({"count": COUNT})))
        .await
        .expect("stream")
        .into_inner();

    let result = get_result(&mut client, "stall-1", true).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success, "the run finished while a reader was stalled");
    let other = collect(
        client
            .observe_stream(pb::ObserveStreamRequest { run_id: "stall-1".into(), after_seq: 0, close_on_suspend: None })
            .await
            .expect("observe")
            .into_inner(),
    )
    .await;
    assert_seqs(&other, 1, COUNT + 4);

    // The stalled reader now reads everything, nothing lost.
    let late = collect(stalled).await;
    assert_seqs(&late, 1, COUNT + 4);
    server.stop().await;
}

// Rule 5: a disconnecting client does not cancel the run; CancelRun does (running, sleeping, suspended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_does_not_cancel_but_cancel_run_does() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    // Disconnect: read the first event, drop the stream and the channel.
    {
        let mut dropping = server.client().await;
        let mut stream = dropping
            .stream_run(stream_request("timer", "timer-dc", json!({"ms": 200})))
            .await
            .expect("stream")
            .into_inner();
        let first = stream.message().await.expect("first event").expect("an event");
        assert_eq!(kind(&first), "workflow_start");
    }
    let result = get_result(&mut client, "timer-dc", true).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    assert_eq!(json(&result.result), json!({"sleptMs": 200}));

    // Cancel a sleeping run.
    let mut stream = client
        .stream_run(stream_request("timer", "timer-cancel", json!({"ms": 60_000})))
        .await
        .expect("stream")
        .into_inner();
    loop {
        let event = stream.message().await.expect("event").expect("not ended");
        if kind(&event) == "step_waiting" {
            break;
        }
    }
    let status = get_result(&mut client, "timer-cancel", false).await;
    assert_eq!(status_of(&status), pb::RunStatus::Waiting);
    let canceled = client.cancel_run(pb::CancelRunRequest { run_id: "timer-cancel".into() }).await.expect("cancel");
    let canceled = canceled.into_inner();
    assert!(canceled.canceled);
    assert_eq!(canceled.run.expect("run").status, pb::RunStatus::Canceled as i32);
    let rest = collect(stream).await;
    let tail: Vec<_> = kinds(&rest).into_iter().rev().take(2).collect();
    assert_eq!(tail, ["workflow_finish", "workflow_canceled"]);
    assert_eq!(finish_status(rest.last().expect("finish")), Some(pb::RunStatus::Canceled));

    // Cancel a suspended run.
    stream_run(&mut client, stream_request("order-approval", "order-cancel", order_input())).await;
    let canceled = client.cancel_run(pb::CancelRunRequest { run_id: "order-cancel".into() }).await.expect("cancel");
    assert!(canceled.into_inner().canceled);
    let events = collect(
        client
            .observe_stream(pb::ObserveStreamRequest {
                run_id: "order-cancel".into(),
                after_seq: 7,
                close_on_suspend: None,
            })
            .await
            .expect("observe")
            .into_inner(),
    )
    .await;
    assert_eq!(kinds(&events), ["workflow_canceled", "workflow_finish"]);
    assert_seqs(&events, 8, 9);
    assert_eq!(finish_status(&events[1]), Some(pb::RunStatus::Canceled));
    // Canceling again changes nothing; resuming a canceled run is refused.
    let again = client.cancel_run(pb::CancelRunRequest { run_id: "order-cancel".into() }).await.expect("cancel");
    assert!(!again.into_inner().canceled);
    assert_status(
        client.resume_stream(resume_request("order-cancel", approval(true, "ada"))).await,
        Code::FailedPrecondition,
        &["canceled"],
    );

    // Cancel a running run (a long writer flood).
    let mut stream = client
        .stream_run(stream_request("writer-flood", "flood-cancel", json!({"count": 5_000_000})))
        .await
        .expect("stream")
        .into_inner();
    stream.message().await.expect("event");
    let canceled = client.cancel_run(pb::CancelRunRequest { run_id: "flood-cancel".into() }).await.expect("cancel");
    assert!(canceled.into_inner().canceled);
    let result = get_result(&mut client, "flood-cancel", true).await;
    assert_eq!(status_of(&result), pb::RunStatus::Canceled);
    server.stop().await;
}

// Rule 6: close_on_suspend = false keeps a stream open across a suspension, through a resume by another caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stays_open_across_suspension_when_asked() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = stream_request("order-approval", "order-open", order_input());
    request.close_on_suspend = Some(false);
    let mut stream = client.stream_run(request).await.expect("stream").into_inner();
    let mut seen = Vec::new();
    while let Some(event) = stream.message().await.expect("event") {
        let suspended = finish_status(&event) == Some(pb::RunStatus::Suspended);
        seen.push(event);
        if suspended {
            break;
        }
    }
    // An observer with close_on_suspend = false also stays open.
    let observer = client
        .observe_stream(pb::ObserveStreamRequest {
            run_id: "order-open".into(),
            after_seq: 7,
            close_on_suspend: Some(false),
        })
        .await
        .expect("observe")
        .into_inner();

    let mut other = server.client().await;
    let resumed = other.resume_stream(resume_request("order-open", approval(false, "bob"))).await.expect("resume");
    let resumed = collect(resumed.into_inner()).await;
    seen.extend(collect(stream).await);
    assert_seqs(&seen, 1, 13);
    assert_eq!(finish_result(seen.last().expect("finish")), json!({"status": "rejected by bob"}));
    assert_eq!(seen[7..], resumed[..]);
    assert_eq!(collect(observer).await, resumed);
    server.stop().await;
}

// Rule 7: GetResult answers at once without wait, and with wait ends at the run's end or suspension, or before
// the caller's deadline with the current state, never hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_result_never_hangs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_run(pb::StartRunRequest {
            workflow_id: "timer".into(),
            run_id: "slow".into(),
            input: Some(pb_value(json!({"ms": 30_000}))),
            ..Default::default()
        })
        .await
        .expect("start");
    let now = get_result(&mut client, "slow", false).await;
    assert!(!now.wait_expired);
    assert!(matches!(status_of(&now), pb::RunStatus::Running | pb::RunStatus::Waiting));

    // A deadline of 500 ms: the answer comes before it, with the state at that moment.
    let mut request =
        Request::new(pb::GetResultRequest { run_id: "slow".into(), wait: true, max_wait: None, fields: vec![] });
    request.set_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let answer = client.get_result(request).await.expect("answered before the deadline").into_inner();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(answer.wait_expired);
    assert_eq!(status_of(&answer), pb::RunStatus::Waiting);

    // max_wait bounds the wait without a deadline.
    let answer = client
        .get_result(pb::GetResultRequest {
            run_id: "slow".into(),
            wait: true,
            max_wait: Some(prost_types::Duration { seconds: 0, nanos: 100_000_000 }),
            fields: vec![],
        })
        .await
        .expect("answer")
        .into_inner();
    assert!(answer.wait_expired);

    // A wait ends at a suspension, with the suspended paths and payloads.
    client
        .start_run(pb::StartRunRequest {
            workflow_id: "order-approval".into(),
            run_id: "wait-suspend".into(),
            input: Some(pb_value(order_input())),
            ..Default::default()
        })
        .await
        .expect("start");
    let suspended = get_result(&mut client, "wait-suspend", true).await;
    assert_eq!(status_of(&suspended), pb::RunStatus::Suspended);
    assert!(!suspended.wait_expired);
    assert_eq!(suspended.suspended, [pb::StepPath { segments: vec!["approve".into()] }]);
    assert_eq!(
        json(&Some(suspended.suspend_payload["approve"].clone())),
        json!({"reason": "needs approval", "amount": 250})
    );
    server.stop().await;
}

// Rule 8: resuming a run that is not suspended fails; of concurrent resumes exactly one wins and no stream is
// left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_concurrent_resume_wins() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    stream_run(&mut client, stream_request("chain", "done", json!({"value": 1}))).await;
    assert_status(
        client.resume_stream(resume_request("done", json!({}))).await,
        Code::FailedPrecondition,
        &["success", "only a suspended run"],
    );

    stream_run(&mut client, stream_request("order-approval", "contested", order_input())).await;
    let mut attempts = Vec::new();
    for i in 0..8 {
        let mut client = server.client().await;
        attempts.push(tokio::spawn(async move {
            let approver = format!("approver-{i}");
            match client.resume_stream(resume_request("contested", approval(true, &approver))).await {
                Ok(stream) => Ok(collect(stream.into_inner()).await),
                Err(status) => Err(status),
            }
        }));
    }
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(events) => winners.push(events),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message()),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one resume wins");
    let events = &winners[0];
    assert_seqs(events, 8, 13);
    assert_eq!(finish_status(events.last().expect("finish")), Some(pb::RunStatus::Success));
    server.stop().await;
}

// Rule 9: StreamRun with an existing run_id and the same input (a retry) attaches to that run instead of starting
// another; other input is ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_run_with_existing_id_attaches() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = stream_run(&mut client, stream_request("chain", "same-id", json!({"value": 1}))).await;
    // A retry of the same start (same workflow, same input) attaches: it replays the first run.
    let second = stream_run(&mut client, stream_request("chain", "same-id", json!({"value": 1}))).await;
    assert_eq!(first, second, "the second call replays the first run");
    assert_eq!(finish_result(second.last().expect("finish")), json!({"value": 4}));
    let runs = client
        .list_runs(pb::ListRunsRequest { workflow_id: "chain".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(runs.runs.len(), 1);
    // Other input under the same id is not a retry: attaching would show another run's events as this request's.
    for request in
        [stream_request("chain", "same-id", json!({"value": 100})), stream_request("chain", "same-id", json!({}))]
    {
        assert_status(
            client.stream_run(request).await,
            Code::AlreadyExists,
            &["run 'same-id' already exists", "success", "different input", "ObserveStream", "another run_id"],
        );
    }
    let start = pb::StartRunRequest {
        workflow_id: "chain".into(),
        run_id: "same-id".into(),
        input: Some(pb_value(json!({"value": 2}))),
        ..Default::default()
    };
    assert_status(client.start_run(start).await, Code::AlreadyExists, &["different input"]);
    // The same id for another workflow is a caller mistake, reported as such.
    assert_status(
        client.stream_run(stream_request("timer", "same-id", json!({"ms": 1}))).await,
        Code::AlreadyExists,
        &["same-id", "chain"],
    );
    server.stop().await;
}

// Rule 10: NOT_FOUND for unknown workflows and runs, INVALID_ARGUMENT naming the field for bad input, resume data
// and ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_status(
        client.stream_run(stream_request("no-such-workflow", "", json!({}))).await,
        Code::NotFound,
        &["no-such-workflow", "ListWorkflows", "chain"],
    );
    assert_status(client.stream_run(stream_request("", "", json!({}))).await, Code::InvalidArgument, &["workflow_id"]);
    assert_status(
        client.stream_run(stream_request("chain", "", json!({"value": "x"}))).await,
        Code::InvalidArgument,
        &["input.value"],
    );
    assert_status(client.stream_run(stream_request("chain", "", json!({}))).await, Code::InvalidArgument, &["input"]);
    assert_status(
        client.stream_run(stream_request("chain", "bad id!", json!({"value": 1}))).await,
        Code::InvalidArgument,
        &["run_id"],
    );
    assert_status(
        client.stream_run(stream_request("chain", &"x".repeat(200), json!({"value": 1}))).await,
        Code::InvalidArgument,
        &["run_id", "128"],
    );
    let mut traced = stream_request("chain", "", json!({"value": 1}));
    traced.tracing_options = Some(pb::TracingOptions { trace_id: "not-hex".into(), ..Default::default() });
    assert_status(client.stream_run(traced).await, Code::InvalidArgument, &["tracing_options.trace_id", "hexadecimal"]);
    let mut traced = stream_request("chain", "traced", json!({"value": 1}));
    traced.tracing_options = Some(pb::TracingOptions {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        parent_span_id: "00f067aa0ba902b7".into(),
        tags: vec!["test".into()],
        metadata: None,
    });
    assert_eq!(stream_run(&mut client, traced).await.len(), 8);
    assert_status(
        client
            .get_result(pb::GetResultRequest { run_id: "nope".into(), wait: false, max_wait: None, fields: vec![] })
            .await,
        Code::NotFound,
        &["nope"],
    );
    assert_status(client.get_run(pb::GetRunRequest { run_id: "".into() }).await, Code::InvalidArgument, &["run_id"]);
    assert_status(
        client.observe_stream(pb::ObserveStreamRequest { run_id: "nope".into(), ..Default::default() }).await,
        Code::NotFound,
        &["nope"],
    );
    assert_status(client.cancel_run(pb::CancelRunRequest { run_id: "nope".into() }).await, Code::NotFound, &["nope"]);

    stream_run(&mut client, stream_request("order-approval", "order-bad", order_input())).await;
    assert_status(
        client.resume_stream(resume_request("order-bad", json!({"approved": "yes", "approver": "ada"}))).await,
        Code::InvalidArgument,
        &["resume_data.approved"],
    );
    assert_status(
        client.resume_stream(resume_request("order-bad", json!({"approved": true}))).await,
        Code::InvalidArgument,
        &["resume_data", "approver"],
    );
    let mut wrong_step = resume_request("order-bad", approval(true, "ada"));
    wrong_step.step = vec!["prepare".into()];
    assert_status(client.resume_stream(wrong_step).await, Code::FailedPrecondition, &["prepare", "approve"]);
    // After all those refusals the run is still suspended and resumable.
    let mut named = resume_request("order-bad", approval(true, "ada"));
    named.step = vec!["approve".into()];
    let events = collect(client.resume_stream(named).await.expect("resume").into_inner()).await;
    assert_seqs(&events, 8, 13);
    assert_status(
        client.list_runs(pb::ListRunsRequest { page_token: "garbage".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        &["page_token"],
    );
    server.stop().await;
}

// Shutdown ends open streams with UNAVAILABLE and the cursor to re-attach with, so the server drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_a_cursor() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = client
        .stream_run(stream_request("timer", "t-shutdown", json!({"ms": 60_000})))
        .await
        .expect("stream")
        .into_inner();
    let waiting_seq = loop {
        let event = stream.message().await.expect("event").expect("not ended");
        if kind(&event) == "step_waiting" {
            break event.seq;
        }
    };
    server.shutdown.cancel();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream must end with a status that says why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    let cursor = format!("after_seq = {waiting_seq}");
    assert!(status.message().contains(&cursor), "{}", status.message());
    server.stop().await;
}

// A client that stopped reading holds its stream open through HTTP/2 flow control; shutdown still completes,
// after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_despite_a_reader_that_stopped_reading() {
    let config = runstream::grpc::ServiceConfig { shutdown_grace: Duration::from_millis(300), ..Default::default() };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut stalled = client
        .stream_run(stream_request("writer-flood", "stalled-at-shutdown", json!({"count": 200_000})))
        .await
        .expect("stream")
        .into_inner();
    stalled.message().await.expect("first event");
    let result = get_result(&mut client, "stalled-at-shutdown", true).await;
    assert_eq!(status_of(&result), pb::RunStatus::Success);
    // `stalled` is not read again: its server-side stream is blocked on flow control.
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
    drop(stalled);
}

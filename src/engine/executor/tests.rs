//! Executor tests: each control-flow primitive, nesting, retries, bail, failure, cancel, suspend/resume.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::{
    CANCEL_REASON, PhaseOutcome, execute_phase,
    test_support::{describe_all, phase, req, resume, run},
};
use crate::engine::{
    ErrorInfo, EventKind, EventSource, ResumeError, ResumeRequest, RunSnapshot, RunStatus, Step, StepError,
    StepOutcome, StepStatus, Workflow, schema::Schema, workflow::when,
};

/// A step that adds `n` to the numeric input.
fn add(id: &str, n: i64) -> Step {
    Step::new(id, move |ctx| async move { Ok(StepOutcome::Done(json!(ctx.input().as_i64().unwrap_or(0) + n))) })
}

/// A step that echoes its input, and counts its invocations.
fn counted(id: &str, counter: Arc<AtomicU32>) -> Step {
    Step::new(id, move |ctx| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(StepOutcome::Done(ctx.input().clone()))
        }
    })
}

/// A step that suspends with `{"id": <id>}` unless resumed, and then outputs the resume data.
fn gate(id: &str) -> Step {
    Step::new(id, |ctx| async move {
        match ctx.resume_data() {
            Some(data) => Ok(StepOutcome::Done(data.clone())),
            None => Ok(StepOutcome::suspend(json!({ "at": ctx.step_id() }))),
        }
    })
}

fn error_step_id(error: &Option<ErrorInfo>) -> Option<String> {
    error.as_ref()?.details.as_ref()?.get("stepId")?.as_str().map(str::to_owned)
}

#[test]
fn execute_phase_is_send_and_static() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let wf = Workflow::builder("w").then(add("a", 1)).commit();
    let (p, _, _) = phase(&wf, json!(1), 1, RunSnapshot::default(), None);
    let fut = execute_phase(p);
    assert_send(&fut);
}

#[tokio::test]
async fn then_chains_outputs_and_records_steps() {
    let wf = Workflow::builder("w").then(add("a", 1)).then(add("b", 10)).commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Success);
    assert_eq!(out.result, Some(json!(12)));
    assert_eq!(
        describe_all(&events),
        ["start w 1", "step-start a", "result a Success", "step-start b", "result b Success"]
    );
    assert!(events.iter().all(|e| e.source == EventSource::Workflow));
    let rec = &out.snapshot.steps["b"];
    assert_eq!(
        (rec.status, rec.input.clone(), rec.output.clone(), rec.attempts),
        (StepStatus::Success, json!(2), Some(json!(12)), 1)
    );
    assert!(out.snapshot.suspended.is_empty());
    // Every invocation has its own call id, shared by its start and result.
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepStart { step_call_id, .. } | EventKind::StepResult { step_call_id, .. } => {
                Some(step_call_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2]);
}

fn child_workflow() -> Arc<Workflow> {
    let talk = Step::new("talk", |ctx| async move {
        ctx.writer().write(json!({ "said": ctx.input() })).await?;
        ctx.writer().custom("progress", json!({ "pct": 50 })).await?;
        Ok(StepOutcome::Done(json!({ "child": ctx.input() })))
    });
    Workflow::builder("child").then(talk).then(add("noop", 0).input_schema(json!({"type": "object"}))).commit()
}

#[tokio::test]
async fn nested_workflow_prefixes_ids_and_forwards_writer_output() {
    let child = Workflow::builder("child")
        .then(Step::new("talk", |ctx| async move {
            ctx.writer().write(json!({ "said": ctx.input() })).await?;
            ctx.writer().custom("progress", json!({ "pct": 50 })).await?;
            Ok(StepOutcome::Done(json!({ "child": ctx.input() })))
        }))
        .commit();
    let wf = Workflow::builder("parent")
        .then(add("a", 1))
        .then_workflow(child)
        .then(counted("after", Default::default()))
        .commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Success);
    assert_eq!(out.result, Some(json!({ "child": 2 })));
    assert_eq!(
        describe_all(&events),
        [
            "start parent 1",
            "step-start a",
            "result a Success",
            "step-start child",
            "step-start child.talk",
            "output child.talk {\"said\":2}",
            "custom child.talk data-progress {\"pct\":50}",
            "result child.talk Success",
            "result child Success",
            "step-start after",
            "result after Success",
        ]
    );
    assert_eq!(events[5].source, EventSource::User);
    assert_eq!(events[6].source, EventSource::User);
    assert!(out.snapshot.steps.contains_key("child.talk"));
    assert_eq!(out.snapshot.steps["child"].output, Some(json!({ "child": 2 })));
}

#[tokio::test]
async fn nested_step_failure_fails_parent_with_inner_step_id() {
    let failing = Workflow::builder("child2").then(add("n", 1).input_schema(json!({"type": "object"}))).commit();
    let wf = Workflow::builder("parent").then_workflow(failing).commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.clone().unwrap();
    assert_eq!(error.name, "SchemaError");
    assert_eq!(error_step_id(&out.error).as_deref(), Some("child2.n"));
    assert!(error.message.contains("input: expected object, got number"), "{}", error.message);
    assert_eq!(
        describe_all(&events),
        [
            "start parent 1",
            "step-start child2",
            "step-start child2.n",
            "result child2.n Failed",
            "result child2 Failed"
        ]
    );
}

#[test]
fn steps_lists_nested_paths_in_definition_order() {
    let wf = Workflow::builder("parent")
        .then(add("a", 1).description("adds").resume_schema(json!({"type": "object"})))
        .then_workflow(child_workflow())
        .parallel(vec![add("p1", 1), add("p2", 2)])
        .sleep("nap", Duration::ZERO)
        .map("m", |v, _| v.clone())
        .commit();
    let ids: Vec<String> = wf.steps().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["a", "child", "child.talk", "child.noop", "p1", "p2", "nap", "m"]);
    assert_eq!(wf.steps()[0].description, "adds");
    assert_eq!(wf.steps()[0].resume_schema, Some(json!({"type": "object"})));
}

#[test]
#[should_panic(expected = "two steps with id 'a'")]
fn duplicate_step_ids_are_rejected_at_build_time() {
    let _ = Workflow::builder("w").then(add("a", 1)).parallel(vec![add("a", 2)]).commit();
}

#[tokio::test]
async fn parallel_runs_all_and_keys_outputs_by_id() {
    // Both steps must be running at once: each waits for the other to have started.
    let started = Arc::new(AtomicU32::new(0));
    let notify = Arc::new(Notify::new());
    let rendezvous = |id: &str| {
        let (started, notify) = (Arc::clone(&started), Arc::clone(&notify));
        Step::new(id, move |ctx| {
            let (started, notify) = (Arc::clone(&started), Arc::clone(&notify));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                notify.notify_waiters();
                while started.load(Ordering::SeqCst) < 2 {
                    let n = notify.notified();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if started.load(Ordering::SeqCst) >= 2 {
                        break;
                    }
                    n.await;
                }
                ctx.writer().write(json!(ctx.step_id())).await?;
                Ok(StepOutcome::Done(json!(format!("{}:{}", ctx.step_id(), ctx.input()))))
            }
        })
    };
    let wf = Workflow::builder("w").parallel(vec![rendezvous("x"), rendezvous("y")]).commit();
    let (out, events) = run(&wf, json!(7)).await;
    assert_eq!(out.result, Some(json!({ "x": "x:7", "y": "y:7" })));
    let lines = describe_all(&events);
    for id in ["x", "y"] {
        assert!(lines.contains(&format!("step-start {id}")));
        assert!(lines.contains(&format!("output {id} \"{id}\"")));
        assert!(lines.contains(&format!("result {id} Success")));
    }
    assert_eq!(lines.len(), 7);
}

#[tokio::test]
async fn branch_runs_only_true_conditions() {
    let wf = Workflow::builder("w")
        .branch(vec![
            (when(|v| v.as_i64() > Some(0)), add("pos", 100)),
            (when(|v| v.as_i64() < Some(0)), add("neg", -100)),
            (when(|v| v.as_i64() == Some(5)), add("five", 5)),
        ])
        .commit();
    let (out, events) = run(&wf, json!(5)).await;
    assert_eq!(out.result, Some(json!({ "pos": 105, "five": 10 })));
    assert!(!describe_all(&events).iter().any(|l| l.contains("neg")));
    let (out, _) = run(&wf, json!(0)).await;
    assert_eq!(out.result, Some(json!({})));
}

#[tokio::test]
async fn dowhile_and_dountil_iterate_with_counts() {
    let body = || {
        Step::new("inc", |ctx| async move {
            ctx.writer().write(json!(ctx.iteration())).await?;
            Ok(StepOutcome::Done(json!(ctx.input().as_i64().unwrap_or(0) + 1)))
        })
    };
    let wf = Workflow::builder("w").dowhile(body(), |out, _| out.as_i64() < Some(3)).commit();
    let (out, events) = run(&wf, json!(0)).await;
    assert_eq!(out.result, Some(json!(3)));
    assert_eq!(
        describe_all(&events),
        [
            "start w 1",
            "step-start inc #1",
            "output inc 1",
            "result inc Success",
            "step-start inc #2",
            "output inc 2",
            "result inc Success",
            "step-start inc #3",
            "output inc 3",
            "result inc Success",
        ]
    );
    let wf = Workflow::builder("w").dountil(body(), |_, iteration| iteration >= 2).commit();
    let (out, events) = run(&wf, json!(10)).await;
    assert_eq!(out.result, Some(json!(12)));
    assert_eq!(events.len(), 1 + 2 * 3);
    assert!(out.snapshot.control.is_empty());
}

/// A foreach body whose items finish in reverse order: item k waits until all higher items are done.
fn reverse_finisher(done: watch::Sender<usize>, total: usize) -> Step {
    Step::new("sq", move |ctx| {
        let mut rx = done.subscribe();
        let done = done.clone();
        async move {
            let k = ctx.input().as_u64().unwrap_or(0) as usize;
            let _ = rx.wait_for(|n| *n >= total - 1 - k).await;
            ctx.writer().write(json!(k)).await?;
            done.send_modify(|n| *n += 1);
            Ok(StepOutcome::Done(json!(k * k)))
        }
    })
}

#[tokio::test]
async fn foreach_keeps_input_order_and_reports_progress() {
    let (tx, _rx) = watch::channel(0usize);
    let wf = Workflow::builder("w").foreach(reverse_finisher(tx, 4), 4).commit();
    let (out, events) = run(&wf, json!([0, 1, 2, 3])).await;
    assert_eq!(out.status, RunStatus::Success);
    assert_eq!(out.result, Some(json!([0, 1, 4, 9])));
    assert_eq!(
        describe_all(&events),
        [
            "start w 1",
            "step-start sq",
            "output sq 3",
            "progress sq 1/4 @3 Success",
            "output sq 2",
            "progress sq 2/4 @2 Success",
            "output sq 1",
            "progress sq 3/4 @1 Success",
            "output sq 0",
            "progress sq 4/4 @0 Success",
            "result sq Success",
        ]
    );
    match &events[3].kind {
        EventKind::StepProgress { iteration_output, .. } => assert_eq!(iteration_output, &Some(json!(9))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn foreach_respects_the_concurrency_limit() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    let step = Step::new("s", move |_ctx| {
        let (r, p) = (Arc::clone(&r), Arc::clone(&p));
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(StepOutcome::Done(Value::Null))
        }
    });
    let wf = Workflow::builder("w").foreach(step, |input: &Value| input.as_array().map_or(1, |a| a.len() / 4)).commit();
    let (out, _) = run(&wf, json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])).await;
    assert_eq!(out.status, RunStatus::Success);
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn foreach_rejects_non_array_input() {
    let wf = Workflow::builder("w").foreach(add("s", 1), 2).commit();
    let (out, events) = run(&wf, json!({ "not": "array" })).await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.unwrap();
    assert_eq!(error.message, "foreach step 's' needs an array as input, got object");
    assert_eq!(describe_all(&events), ["start w 1", "step-start s", "result s Failed"]);
}

#[tokio::test]
async fn foreach_failure_stops_taking_items() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let step = Step::new("s", move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if ctx.input() == &json!(1) {
                return Err(StepError::new("item 1 is bad").non_retryable());
            }
            Ok(StepOutcome::Done(ctx.input().clone()))
        }
    });
    let wf = Workflow::builder("w").foreach(step, 1).then(add("after", 1)).commit();
    let (out, events) = run(&wf, json!([0, 1, 2, 3])).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let error = out.error.unwrap();
    assert_eq!(error.message, "item 1 is bad");
    assert_eq!(error.details.as_ref().unwrap()["forEachIndex"], json!(1));
    assert_eq!(
        describe_all(&events),
        ["start w 1", "step-start s", "progress s 1/4 @0 Success", "progress s 2/4 @1 Failed", "result s Failed"]
    );
}

#[tokio::test]
async fn retries_are_numbered_and_counted() {
    let step = Step::new("s", |ctx| async move {
        if ctx.attempt() < 2 {
            return Err(StepError::new(format!("try {}", ctx.attempt())));
        }
        Ok(StepOutcome::Done(json!(ctx.attempt())))
    });
    let wf = Workflow::builder("w").then(step.clone().retries(3, Duration::ZERO)).commit();
    let (out, events) = run(&wf, Value::Null).await;
    assert_eq!(out.result, Some(json!(2)));
    // Without a delay there is nothing to wait for: each next attempt just starts, under the same call id.
    assert_eq!(
        describe_all(&events),
        ["start w 1", "step-start s", "step-start s attempt 2", "step-start s attempt 3", "result s Success"]
    );
    let call_ids: HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepStart { step_call_id, .. } => Some(step_call_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(call_ids.len(), 1);
    match &events[4].kind {
        EventKind::StepResult { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("{other:?}"),
    }
    // The workflow default applies to steps without their own policy; a delay is waited out in the open.
    let wf = Workflow::builder("w").retries(3, Duration::from_millis(1)).then(step.clone()).commit();
    let (out, events) = run(&wf, Value::Null).await;
    assert_eq!(out.snapshot.steps["s"].attempts, 3);
    assert_eq!(
        describe_all(&events),
        [
            "start w 1",
            "step-start s",
            "waiting s retry 2",
            "step-start s attempt 2",
            "waiting s retry 3",
            "step-start s attempt 3",
            "result s Success"
        ]
    );
    // Too few attempts: the last error fails the run.
    let wf = Workflow::builder("w").then(step.retries(2, Duration::ZERO)).commit();
    let (out, _) = run(&wf, Value::Null).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.error.as_ref().unwrap().message, "try 1");
    assert_eq!(out.error.as_ref().unwrap().name, "StepError");
    assert_eq!(error_step_id(&out.error).as_deref(), Some("s"));
}

#[tokio::test]
async fn non_retryable_errors_skip_retries() {
    let step =
        Step::new("s", |_ctx| async { Err(StepError::new("no").non_retryable().with_details(json!({"code": 7}))) })
            .retries(5, Duration::ZERO);
    let wf = Workflow::builder("w").then(step).commit();
    let (out, _) = run(&wf, Value::Null).await;
    assert_eq!(out.snapshot.steps["s"].attempts, 1);
    assert_eq!(out.error.unwrap().details.unwrap()["details"], json!({"code": 7}));
}

#[tokio::test]
async fn failure_stops_the_run() {
    let calls = Arc::new(AtomicU32::new(0));
    let wf = Workflow::builder("w")
        .then(Step::new("boom", |_ctx| async { Err("it broke".into()) }))
        .then(counted("after", Arc::clone(&calls)))
        .commit();
    let (out, events) = run(&wf, Value::Null).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.error.as_ref().unwrap().message, "it broke");
    assert_eq!(error_step_id(&out.error).as_deref(), Some("boom"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(describe_all(&events), ["start w 1", "step-start boom", "result boom Failed"]);
    assert_eq!(out.result, None);
}

#[tokio::test]
async fn panics_fail_the_step() {
    let wf = Workflow::builder("w")
        .then(Step::new("p", |ctx| async move {
            if ctx.input().is_null() {
                panic!("oops");
            }
            Ok(StepOutcome::Done(Value::Null))
        }))
        .commit();
    let (out, _) = run(&wf, Value::Null).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.error.unwrap().message, "step panicked: oops");
}

#[tokio::test]
async fn bail_ends_the_run_successfully() {
    let calls = Arc::new(AtomicU32::new(0));
    let wf = Workflow::builder("w")
        .then(add("a", 1))
        .then(Step::new("stop", |ctx| async move { Ok(StepOutcome::bail(json!({ "early": ctx.input() }))) }))
        .then(counted("after", Arc::clone(&calls)))
        .commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Success);
    assert_eq!(out.result, Some(json!({ "early": 2 })));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(describe_all(&events)[3..], ["step-start stop", "result stop Bailed"]);
    match &events[4].kind {
        EventKind::StepResult { output, .. } => assert_eq!(output, &Some(json!({ "early": 2 }))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn map_computes_from_input_and_run_input() {
    let wf = Workflow::builder("w")
        .then(add("a", 1))
        .map("m", |input, run_input| json!({ "input": input, "run": run_input }))
        .commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.result, Some(json!({ "input": 2, "run": 1 })));
    assert_eq!(describe_all(&events)[3..], ["step-start m", "result m Success"]);
}

#[tokio::test]
async fn sleep_waits_and_passes_input_on() {
    let wf = Workflow::builder("w")
        .sleep("nap", Duration::from_millis(5))
        .sleep_until("until", |_| SystemTime::UNIX_EPOCH)
        .commit();
    let before = SystemTime::now();
    let (out, events) = run(&wf, json!("x")).await;
    assert!(SystemTime::now().duration_since(before).unwrap() >= Duration::from_millis(5));
    assert_eq!(out.result, Some(json!("x")));
    assert_eq!(
        describe_all(&events),
        ["start w 1", "waiting nap", "result nap Success", "waiting until", "result until Success"]
    );
    match &events[1].kind {
        EventKind::StepWaiting { wake_at, .. } => assert!(*wake_at >= Some(before + Duration::from_millis(5))),
        other => panic!("{other:?}"),
    }
}

/// Runs `wf` in a task, cancels it once `ready` holds for the events, and returns the outcome and events.
async fn run_and_cancel(
    wf: &Arc<Workflow>,
    input: Value,
    ready: impl Fn(&[crate::engine::Event]) -> bool,
) -> (PhaseOutcome, Vec<String>) {
    let (p, sink, cancel) = phase(wf, input, 1, RunSnapshot::default(), None);
    let task = tokio::spawn(execute_phase(p));
    sink.wait_for(ready).await;
    cancel.cancel();
    let out = task.await.unwrap();
    (out, describe_all(&sink.events()))
}

fn has(events: &[crate::engine::Event], line: &str) -> bool {
    describe_all(events).iter().any(|l| l == line)
}

#[tokio::test]
async fn cancel_during_a_step_drops_it() {
    let calls = Arc::new(AtomicU32::new(0));
    let wf = Workflow::builder("w")
        .then(Step::new("hang", |_ctx| async { std::future::pending().await }))
        .then(counted("after", Arc::clone(&calls)))
        .commit();
    let (out, lines) = run_and_cancel(&wf, Value::Null, |e| has(e, "step-start hang")).await;
    assert_eq!(out.status, RunStatus::Canceled);
    assert_eq!(
        lines,
        [
            "start w 1".to_owned(),
            "step-start hang".into(),
            "result hang Canceled".into(),
            format!("canceled {CANCEL_REASON}")
        ]
    );
    assert_eq!(out.snapshot.steps["hang"].status, StepStatus::Canceled);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cancel_during_a_sleep() {
    let wf = Workflow::builder("w").sleep("nap", Duration::from_secs(3600)).commit();
    let (out, lines) = run_and_cancel(&wf, Value::Null, |e| has(e, "waiting nap")).await;
    assert_eq!(out.status, RunStatus::Canceled);
    assert_eq!(lines, ["start w 1", "waiting nap", "result nap Canceled", "canceled canceled by CancelRun"]);
}

#[tokio::test]
async fn cancel_reaches_every_running_step() {
    let hang = |id: &str| Step::new(id, |_ctx| async { std::future::pending().await });
    let nested = Workflow::builder("child").then(hang("inner")).commit();
    let wf = Workflow::builder("w").parallel(vec![hang("a"), hang("b")]).commit();
    let (out, lines) = run_and_cancel(&wf, Value::Null, |e| has(e, "step-start a") && has(e, "step-start b")).await;
    assert_eq!(out.status, RunStatus::Canceled);
    assert!(lines.contains(&"result a Canceled".to_owned()) && lines.contains(&"result b Canceled".to_owned()));
    let wf = Workflow::builder("w").then_workflow(nested).commit();
    let (_, lines) = run_and_cancel(&wf, Value::Null, |e| has(e, "step-start child.inner")).await;
    assert_eq!(lines[3..], ["result child.inner Canceled", "result child Canceled", "canceled canceled by CancelRun"]);
}

#[tokio::test]
async fn cancel_stops_a_foreach_taking_items() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let step = Step::new("s", move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if ctx.input() == &json!(1) {
                std::future::pending::<()>().await;
            }
            Ok(StepOutcome::Done(Value::Null))
        }
    });
    let wf = Workflow::builder("w").foreach(step, 1).commit();
    let (out, lines) = run_and_cancel(&wf, json!([0, 1, 2, 3]), |e| has(e, "progress s 1/4 @0 Success")).await;
    assert_eq!(out.status, RunStatus::Canceled);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(lines[3..], ["result s Canceled", "canceled canceled by CancelRun"]);
}

#[tokio::test]
async fn cancel_before_start_runs_nothing() {
    let calls = Arc::new(AtomicU32::new(0));
    let wf = Workflow::builder("w").then(counted("a", Arc::clone(&calls))).commit();
    let (p, sink, cancel) = phase(&wf, Value::Null, 1, RunSnapshot::default(), None);
    cancel.cancel();
    let out = execute_phase(p).await;
    assert_eq!(out.status, RunStatus::Canceled);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(describe_all(&sink.events()), ["start w 1", "canceled canceled by CancelRun"]);
}

#[tokio::test]
async fn step_can_observe_cancellation() {
    let wf = Workflow::builder("w")
        .then(Step::new("polite", |ctx| async move {
            ctx.cancelled().await;
            assert!(ctx.is_canceled());
            Ok(StepOutcome::Done(Value::Null))
        }))
        .commit();
    let (out, _) = run_and_cancel(&wf, Value::Null, |e| has(e, "step-start polite")).await;
    assert_eq!(out.status, RunStatus::Canceled);
}

#[tokio::test]
async fn writers_in_loops_foreach_and_parallel_reach_the_sink() {
    let writer = |id: &str| {
        Step::new(id, |ctx| async move {
            ctx.writer()
                .write(json!({ "from": ctx.step_id(), "it": ctx.iteration(), "idx": ctx.for_each_index() }))
                .await?;
            ctx.writer().custom("data-tick", json!(1)).await?;
            Ok(StepOutcome::Done(ctx.input().clone()))
        })
    };
    let inner = Workflow::builder("inner")
        .dountil(writer("loop"), |_, i| i >= 2)
        .foreach(writer("each"), 2)
        .parallel(vec![writer("p")])
        .commit();
    let wf = Workflow::builder("outer").then_workflow(inner).commit();
    let (out, events) = run(&wf, json!([5, 6])).await;
    assert_eq!(out.status, RunStatus::Success);
    let outputs: Vec<(String, Value)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepOutput { step_id, output } => Some((step_id.to_string(), output.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(outputs.len(), 5);
    assert_eq!(outputs[0], ("inner.loop".into(), json!({ "from": "inner.loop", "it": 1, "idx": null })));
    assert_eq!(outputs[1].1["it"], json!(2));
    let each: Vec<&Value> = outputs.iter().filter(|(id, _)| id == "inner.each").map(|(_, v)| &v["idx"]).collect();
    assert_eq!(each.len(), 2);
    assert!(outputs.iter().any(|(id, _)| id == "inner.p"));
    let customs =
        events.iter().filter(|e| matches!(&e.kind, EventKind::Custom { kind, .. } if kind == "data-tick")).count();
    assert_eq!(customs, 5);
}

// ---- suspend / resume ----

#[tokio::test]
async fn suspend_then_resume_skips_finished_steps() {
    let calls = Arc::new(AtomicU32::new(0));
    let wf =
        Workflow::builder("w")
            .then(counted("first", Arc::clone(&calls)))
            .then(gate("g").resume_schema(
                json!({"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}),
            ))
            .then(add("last", 0))
            .commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Suspended);
    assert_eq!(describe_all(&events)[3..], ["step-start g", "suspended g"]);
    match &events[4].kind {
        EventKind::StepSuspended { suspend_payload, resume_schema, .. } => {
            assert_eq!(suspend_payload, &json!({ "at": "g" }));
            assert!(resume_schema.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.snapshot.suspended["g"].path, ["g"]);
    assert_eq!(out.snapshot.steps["g"].status, StepStatus::Suspended);

    let err = resume(&wf, json!(1), &out, req("g", json!({ "ok": "yes" })), 2).await.unwrap_err();
    assert_eq!(
        err,
        ResumeError::InvalidResumeData(crate::engine::SchemaViolation {
            path: "resume_data.ok".into(),
            message: "expected boolean, got string".into()
        })
    );
    let (out2, events) = resume(&wf, json!(1), &out, req("", json!({ "ok": true })), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Success);
    assert_eq!(out2.result, Some(json!(0)), "`last` adds 0 to a non-number");
    assert_eq!(
        describe_all(&events),
        ["start w 2 resumed", "step-start g resumed", "result g Success", "step-start last", "result last Success"]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "`first` is not run again");
    let g = &out2.snapshot.steps["g"];
    assert_eq!(g.resume_data, Some(json!({ "ok": true })));
    assert_eq!(g.suspend_payload, Some(json!({ "at": "g" })));
    assert!(g.resumed_at.is_some());
    assert!(out2.snapshot.suspended.is_empty());
}

/// A step whose resume data depends on what it waits for: it sets the schema when it suspends.
#[tokio::test]
async fn a_resume_schema_named_at_suspension_replaces_the_declared_one_and_survives_json() {
    let ask = |kind: &'static str| {
        Step::new(kind, move |ctx| async move {
            if let Some(data) = ctx.resume_data() {
                return Ok(StepOutcome::Done(data.clone()));
            }
            let field = if kind == "number" { "n" } else { "s" };
            let schema = json!({ "type": "object", "required": [field], "properties": { field: { "type": kind } } });
            let schema = Schema::compile(schema).map_err(StepError::new)?;
            Ok(StepOutcome::suspend(json!({ "wants": field })).with_resume_schema(schema))
        })
        .resume_schema(json!({ "type": "object" }))
    };
    let wf = Workflow::builder("w").then(ask("number")).then(ask("string")).commit();
    let (out, events) = run(&wf, json!(null)).await;
    match &events.last().unwrap().kind {
        EventKind::StepSuspended { resume_schema, .. } => {
            assert_eq!(resume_schema.as_ref().unwrap()["required"], json!(["n"]))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        out.snapshot.suspended["number"].resume_schema.as_ref().map(|s| s.raw()).unwrap()["required"],
        json!(["n"])
    );
    // Checked against the set schema, not the declared one (which any object satisfies).
    let err = resume(&wf, json!(null), &out, req("", json!({ "n": "one" })), 2).await.unwrap_err();
    assert!(matches!(&err, ResumeError::InvalidResumeData(v) if v.path == "resume_data.n"), "{err:?}");

    // The snapshot goes through JSON unchanged (a network keeps a delegated workflow's snapshot so).
    let saved = serde_json::to_value(&out.snapshot).unwrap();
    let restored: RunSnapshot = serde_json::from_value(saved).unwrap();
    assert_eq!(restored, out.snapshot);
    let out = PhaseOutcome { snapshot: restored, ..out };
    let (out2, _) = resume(&wf, json!(null), &out, req("", json!({ "n": 1 })), 2).await.unwrap();
    assert_eq!(
        out2.snapshot.suspended["string"].resume_schema.as_ref().map(|s| s.raw()).unwrap()["required"],
        json!(["s"])
    );
    let (out3, _) = resume(&wf, json!(null), &out2, req("", json!({ "s": "x" })), 3).await.unwrap();
    assert_eq!((out3.status, out3.result), (RunStatus::Success, Some(json!({ "s": "x" }))));
}

#[tokio::test]
async fn a_suspension_may_name_its_own_resume_schema() {
    // The step's schema wants an object; its second suspension asks for a number instead.
    let step = Step::new("ask", |ctx| async move {
        match ctx.resume_data() {
            None => Ok(StepOutcome::suspend(json!({ "ask": "object" }))),
            Some(data) if data.is_object() => {
                let schema = crate::engine::schema::Schema::compile(json!({ "type": "number" })).unwrap();
                Ok(StepOutcome::suspend(json!({ "ask": "number" })).with_resume_schema(schema))
            }
            Some(data) => Ok(StepOutcome::Done(data.clone())),
        }
    })
    .resume_schema(json!({ "type": "object" }));
    let wf = Workflow::builder("w").then(step).commit();
    let (out, _) = run(&wf, json!(0)).await;
    let object_wanted = wf.resolve_resume(&out.snapshot, req("ask", json!(1))).unwrap_err();
    assert!(matches!(object_wanted, ResumeError::InvalidResumeData(_)), "{object_wanted:?}");

    let (out2, events) = resume(&wf, json!(0), &out, req("ask", json!({})), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Suspended);
    match &events.last().map(|e| &e.kind) {
        Some(EventKind::StepSuspended { resume_schema, .. }) => {
            assert_eq!(resume_schema, &Some(json!({ "type": "number" })));
        }
        other => panic!("{other:?}"),
    }
    let number_wanted = wf.resolve_resume(&out2.snapshot, req("ask", json!({}))).unwrap_err();
    assert_eq!(
        number_wanted,
        ResumeError::InvalidResumeData(crate::engine::SchemaViolation {
            path: "resume_data".into(),
            message: "expected number, got object".into()
        })
    );
    let (out3, _) = resume(&wf, json!(0), &out2, req("ask", json!(7)), 3).await.unwrap();
    assert_eq!((out3.status, out3.result), (RunStatus::Success, Some(json!(7))));
}

#[tokio::test]
async fn parallel_double_suspension_resumes_one_at_a_time() {
    let wf =
        Workflow::builder("w").parallel(vec![gate("a"), gate("b")]).then(counted("c", Default::default())).commit();
    let (out, events) = run(&wf, json!(0)).await;
    assert_eq!(out.status, RunStatus::Suspended);
    assert_eq!(out.snapshot.suspended.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(events.len(), 5);

    let ambiguous = wf.resolve_resume(&out.snapshot, req("", json!(1))).unwrap_err();
    assert_eq!(ambiguous, ResumeError::AmbiguousStep { suspended: vec!["a".into(), "b".into()] });

    let (out2, events) = resume(&wf, json!(0), &out, req("b", json!("B")), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Suspended);
    assert_eq!(describe_all(&events), ["start w 2 resumed", "step-start b resumed", "result b Success"]);
    assert_eq!(out2.snapshot.suspended.keys().collect::<Vec<_>>(), ["a"]);

    let (out3, events) = resume(&wf, json!(0), &out2, req("", json!("A")), 3).await.unwrap();
    assert_eq!(out3.status, RunStatus::Success);
    assert_eq!(out3.result, Some(json!({ "a": "A", "b": "B" })));
    assert_eq!(
        describe_all(&events),
        ["start w 3 resumed", "step-start a resumed", "result a Success", "step-start c", "result c Success"]
    );
}

#[tokio::test]
async fn suspend_inside_dowhile_resumes_in_the_same_iteration() {
    let body = Step::new("tick", |ctx| async move {
        let n = ctx.input().as_i64().unwrap_or(0);
        if ctx.iteration() == 2 && ctx.resume_data().is_none() {
            return Ok(StepOutcome::suspend(json!({ "n": n })));
        }
        let bonus = ctx.resume_data().and_then(Value::as_i64).unwrap_or(0);
        Ok(StepOutcome::Done(json!(n + 1 + bonus)))
    });
    let wf = Workflow::builder("w").dowhile(body, |_, iteration| iteration < 3).then(add("after", 0)).commit();
    let (out, events) = run(&wf, json!(0)).await;
    assert_eq!(out.status, RunStatus::Suspended);
    assert_eq!(
        describe_all(&events),
        ["start w 1", "step-start tick #1", "result tick Success", "step-start tick #2", "suspended tick"]
    );
    let (out2, events) = resume(&wf, json!(0), &out, req("tick", json!(100)), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Success);
    // iteration 1: 0 -> 1; iteration 2 (resumed, +100): 1 -> 102; iteration 3: -> 103.
    assert_eq!(out2.result, Some(json!(103)));
    assert_eq!(
        describe_all(&events),
        [
            "start w 2 resumed",
            "step-start tick #2 resumed",
            "result tick Success",
            "step-start tick #3",
            "result tick Success",
            "step-start after",
            "result after Success",
        ]
    );
    assert!(out2.snapshot.control.is_empty());
}

#[tokio::test]
async fn foreach_suspend_and_resume_by_index() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    // Odd items suspend until resumed; resumed items output the resume data.
    let step = Step::new("items", move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let k = ctx.input().as_u64().unwrap_or(0);
            match ctx.resume_data() {
                Some(data) => Ok(StepOutcome::Done(data.clone())),
                None if k % 2 == 1 => Ok(StepOutcome::suspend(json!({ "k": k })).with_label(format!("item-{k}"))),
                None => Ok(StepOutcome::Done(json!(k * 10))),
            }
        }
    })
    .resume_schema(json!({ "type": "string" }));
    let wf = Workflow::builder("w").foreach(step, 2).commit();
    let (out, events) = run(&wf, json!([0, 1, 2, 3])).await;
    assert_eq!(out.status, RunStatus::Suspended);
    let lines = describe_all(&events);
    assert_eq!(lines[..2], ["start w 1", "step-start items"]);
    assert_eq!(lines.iter().filter(|l| l.starts_with("progress")).count(), 4);
    assert!(
        lines.contains(&"progress items 0/4 @1 Suspended".to_owned())
            || lines.contains(&"progress items 1/4 @1 Suspended".to_owned())
    );
    assert_eq!(lines[6..], ["suspended items @1", "suspended items @3"]);
    assert_eq!(out.snapshot.suspended["items"].for_each_index, Some(1));
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // Two iterations wait: an index is needed, and it must be a suspended one.
    assert_eq!(
        wf.resolve_resume(&out.snapshot, req("items", json!("x"))).unwrap_err(),
        ResumeError::AmbiguousStep { suspended: vec!["items[1]".into(), "items[3]".into()] }
    );
    let bad = ResumeRequest { for_each_index: Some(2), ..req("items", json!("x")) };
    assert_eq!(
        wf.resolve_resume(&out.snapshot, bad).unwrap_err(),
        ResumeError::ForEachIndexNotSuspended { step: "items".into(), index: 2, suspended: vec![1, 3] }
    );
    // By label.
    let by_label = ResumeRequest { label: Some("item-3".into()), resume_data: json!("three"), ..Default::default() };
    let target = wf.resolve_resume(&out.snapshot, by_label.clone()).unwrap();
    assert_eq!((target.step_id.as_str(), target.for_each_index), ("items", Some(3)));

    let (out2, events) = resume(&wf, json!([0, 1, 2, 3]), &out, by_label, 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Suspended);
    assert_eq!(
        describe_all(&events),
        ["start w 2 resumed", "step-start items resumed", "progress items 3/4 @3 Success", "suspended items @1"]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5, "finished items are not run again");
    assert_eq!(out2.snapshot.suspended["items"].for_each_index, Some(1));

    // One iteration left: no index needed.
    let (out3, events) = resume(&wf, json!([0, 1, 2, 3]), &out2, req("", json!("one")), 3).await.unwrap();
    assert_eq!(out3.status, RunStatus::Success);
    assert_eq!(out3.result, Some(json!([0, "one", 20, "three"])));
    assert_eq!(
        describe_all(&events),
        ["start w 3 resumed", "step-start items resumed", "progress items 4/4 @1 Success", "result items Success"]
    );
    assert!(out3.snapshot.control.is_empty());
}

#[tokio::test]
async fn nested_suspension_resumes_by_segments_or_by_the_nesting_step() {
    let child = Workflow::builder("child").then(add("pre", 1)).then(gate("approve")).then(add("post", 1)).commit();
    let wf = Workflow::builder("parent").then_workflow(child).then(add("tail", 1)).commit();
    let (out, events) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Suspended);
    assert_eq!(
        describe_all(&events),
        [
            "start parent 1",
            "step-start child",
            "step-start child.pre",
            "result child.pre Success",
            "step-start child.approve",
            "suspended child.approve",
            "suspended child",
        ]
    );
    assert_eq!(out.snapshot.suspended["child.approve"].path, ["child", "approve"]);
    let by_segments =
        ResumeRequest { step: vec!["child".into(), "approve".into()], resume_data: json!(10), ..Default::default() };
    assert_eq!(wf.resolve_resume(&out.snapshot, by_segments).unwrap().step_id, "child.approve");
    let (out2, events) = resume(&wf, json!(1), &out, req("child", json!(10)), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Success);
    assert_eq!(out2.result, Some(json!(12)));
    assert_eq!(
        describe_all(&events),
        [
            "start parent 2 resumed",
            "step-start child resumed",
            "step-start child.approve resumed",
            "result child.approve Success",
            "step-start child.post",
            "result child.post Success",
            "result child Success",
            "step-start tail",
            "result tail Success",
        ]
    );
}

#[tokio::test]
async fn resolve_resume_errors() {
    let wf = Workflow::builder("w")
        .parallel(vec![Step::new("x", |_ctx| async { Ok(StepOutcome::suspend(json!(1)).with_label("lx")) }), gate("y")])
        .commit();
    let (out, _) = run(&wf, Value::Null).await;
    assert_eq!(
        wf.resolve_resume(&out.snapshot, req("zzz", json!(null))).unwrap_err(),
        ResumeError::StepNotSuspended { step: "zzz".into(), suspended: vec!["x".into(), "y".into()] }
    );
    let by_label = |l: &str| ResumeRequest { label: Some(l.into()), ..Default::default() };
    assert_eq!(wf.resolve_resume(&out.snapshot, by_label("lx")).unwrap().step_id, "x");
    assert_eq!(
        wf.resolve_resume(&out.snapshot, by_label("nope")).unwrap_err(),
        ResumeError::UnknownLabel { label: "nope".into(), labels: vec!["lx".into()] }
    );
    // Nothing suspended at all.
    assert!(matches!(
        wf.resolve_resume(&RunSnapshot::default(), req("", json!(1))),
        Err(ResumeError::StepNotSuspended { .. })
    ));
}

#[tokio::test]
async fn resume_of_a_step_that_is_not_suspended_fails_the_phase() {
    let wf = Workflow::builder("w").then(add("a", 1)).commit();
    let target = crate::engine::ResumeTarget { step_id: "a".into(), for_each_index: None, resume_data: json!(1) };
    let (p, _, _) = phase(&wf, json!(1), 2, RunSnapshot::default(), Some(target));
    let out = execute_phase(p).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.error.unwrap().name, "ResumeError");
}

// ---- schemas ----

#[tokio::test]
async fn schema_violations_name_the_field() {
    let wf = Workflow::builder("w")
        .input_schema(json!({"type": "object", "required": ["value"], "properties": {"value": {"type": "number"}}}))
        .then(
            Step::new("s", |ctx| async move { Ok(StepOutcome::Done(json!({ "items": [1, ctx.input()["value"]] }))) })
                .output_schema(
                    json!({"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}}),
                ),
        )
        .commit();
    let v = wf.validate_input(&json!({ "value": "x" })).unwrap_err();
    assert_eq!((v.path.as_str(), v.message.as_str()), ("input.value", "expected number, got string"));
    assert_eq!(wf.validate_input(&json!({})).unwrap_err().path, "input.value");
    assert!(wf.validate_input(&json!({ "value": 1 })).is_ok());

    let (out, _) = run(&wf, json!({ "value": 1.5 })).await;
    assert_eq!(out.status, RunStatus::Failed);
    let error = out.error.unwrap();
    assert_eq!(error.name, "SchemaError");
    assert_eq!(error.message, "step 's': output.items[1]: expected integer, got number");
    assert_eq!(error.details.unwrap()["path"], json!("output.items[1]"));
}

#[tokio::test]
async fn suspend_payload_and_workflow_output_are_checked() {
    let wf = Workflow::builder("w")
        .then(
            Step::new("s", |_ctx| async { Ok(StepOutcome::suspend(json!({}))) })
                .suspend_schema(json!({"required": ["why"]})),
        )
        .commit();
    let (out, _) = run(&wf, Value::Null).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert!(out.error.unwrap().message.contains("suspend_payload.why"));

    let wf = Workflow::builder("w").output_schema(json!({"type": "string"})).then(add("a", 1)).commit();
    let (out, _) = run(&wf, json!(1)).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.error.unwrap().message, "workflow output: expected string, got number");
}

#[test]
#[should_panic(expected = "step 's' input schema: invalid JSON Schema")]
fn invalid_schemas_panic_at_definition() {
    let _ = add("s", 1).input_schema(json!({"type": 5}));
}

#[tokio::test]
async fn saved_state_comes_back_on_resume_and_is_consumed() {
    // Suspends twice, counting in private state; the payload callers see never carries the count.
    let wf = Workflow::builder("w")
        .then(Step::new("s", |ctx| async move {
            let count = ctx.saved_state().and_then(|s| s["count"].as_u64()).unwrap_or(0);
            if count < 2 {
                ctx.save_state(json!({ "count": count + 1 }));
                return Ok(StepOutcome::suspend(json!({ "asked": true })));
            }
            Ok(StepOutcome::Done(json!(count)))
        }))
        .commit();
    let (out, _) = run(&wf, json!(null)).await;
    assert_eq!(out.status, RunStatus::Suspended);
    assert_eq!(out.snapshot.control.get("state:s"), Some(&json!({ "count": 1 })));
    assert_eq!(out.snapshot.suspended["s"].suspend_payload, json!({ "asked": true }));
    let (out2, _) = resume(&wf, json!(null), &out, req("s", json!(1)), 2).await.unwrap();
    assert_eq!(out2.status, RunStatus::Suspended);
    assert_eq!(out2.snapshot.control.get("state:s"), Some(&json!({ "count": 2 })));
    let (out3, _) = resume(&wf, json!(null), &out2, req("s", json!(1)), 3).await.unwrap();
    assert_eq!((out3.status, out3.result), (RunStatus::Success, Some(json!(2))));
    assert!(out3.snapshot.control.is_empty());
}

#[tokio::test]
async fn a_tripwire_ends_the_run_as_tripwire_without_retries() {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&attempts);
    let wf = Workflow::builder("w")
        .then(
            Step::new("guarded", move |_ctx| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { Err::<StepOutcome, _>(StepError::tripwire("blocked by guardrail")) }
            })
            .retries(3, Duration::ZERO),
        )
        .commit();
    let (out, events) = run(&wf, json!(null)).await;
    assert_eq!(out.status, RunStatus::Tripwire);
    let error = out.error.expect("error");
    assert_eq!((error.name.as_str(), error.message.as_str()), (super::TRIPWIRE_ERROR, "blocked by guardrail"));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(describe_all(&events), ["start w 1", "step-start guarded", "result guarded Failed"]);
}

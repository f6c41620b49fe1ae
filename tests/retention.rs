//! Retention over the RPCs, against a real server whose clock the test moves: a finished run is forgotten after
//! the retention time (NOT_FOUND), and a run kept longer loses its old events, so that an older cursor gets
//! OUT_OF_RANGE naming the earliest seq kept (in the message and in `runstream-earliest-seq` metadata), never a
//! silent gap; its newest event stays replayable and it can still be resumed.

mod common;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use common::*;
use runstream::{
    builtin,
    clock::Clock,
    grpc::{ServiceConfig, status::EARLIEST_SEQ_HEADER, wire::WireEncoder},
    pb,
    registry::RunRegistry,
    store::MemoryStore,
};
use serde_json::json;
use tonic::Code;

/// Wall-clock time the test sets; sleeps are real.
struct MovableClock(Mutex<SystemTime>);

impl Clock for MovableClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock")
    }
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_runs_are_not_found_and_expired_cursors_get_out_of_range_with_the_earliest_seq() {
    let start = SystemTime::now();
    let clock = Arc::new(MovableClock(Mutex::new(start)));
    let store = Arc::new(MemoryStore::new());
    let registry =
        RunRegistry::open(builtin::catalog(), clock.clone(), store, Arc::new(WireEncoder::default())).expect("open");
    let server = TestServer::start_with_registry(registry.clone(), ServiceConfig::default()).await;
    let mut client = server.client().await;

    let chain = stream_run(&mut client, stream_request("chain", "c1", json!({ "value": 1 }))).await;
    assert_eq!(finish_status(chain.last().expect("finish")), Some(pb::RunStatus::Success));
    let order = stream_run(&mut client, stream_request("order-approval", "o1", order_input())).await;
    let last = order.len() as u64;
    assert_eq!(finish_status(order.last().expect("finish")), Some(pb::RunStatus::Suspended));

    let day = Duration::from_secs(86_400);
    *clock.0.lock().expect("clock lock") = start + 2 * day;
    assert_eq!(registry.expire(day), (1, 1));

    // The finished run is gone.
    let gone = client.get_result(pb::GetResultRequest { run_id: "c1".into(), ..Default::default() }).await;
    assert_status(gone, Code::NotFound, &["c1"]);

    // The suspended run kept only its newest event: older cursors are refused with the earliest seq kept.
    let observe = |after_seq: u64| pb::ObserveStreamRequest { run_id: "o1".into(), after_seq, ..Default::default() };
    let refused = client.observe_stream(observe(0)).await.expect_err("an expired cursor is refused");
    assert_eq!(refused.code(), Code::OutOfRange);
    assert!(refused.message().contains(&format!("earliest seq kept is {last}")), "{}", refused.message());
    let earliest = refused.metadata().get(EARLIEST_SEQ_HEADER).and_then(|v| v.to_str().ok());
    assert_eq!(earliest, Some(last.to_string().as_str()));
    let kept = collect(client.observe_stream(observe(last - 1)).await.expect("observe").into_inner()).await;
    assert_eq!(seqs(&kept), [last], "the newest event, the suspension's finish, is still replayable");

    // And the run can still be resumed, numbering on.
    let resumed = client.resume_stream(resume_request("o1", approval(true, "ada"))).await.expect("resume");
    let resumed = collect(resumed.into_inner()).await;
    assert_eq!(resumed.first().map(|e| e.seq), Some(last + 1));
    assert_eq!(finish_status(resumed.last().expect("finish")), Some(pb::RunStatus::Success));
    server.stop().await;
}

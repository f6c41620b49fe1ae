//! `writer-flood`: one step writes `count` StepOutput events as fast as it can. The event-path throughput
//! benchmark, so the loop does nothing but build the value and hand it to the writer.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::engine::{Step, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "writer-flood";

/// Writes between cancellation checks and scheduler yields: rare enough to cost nothing, frequent enough that a
/// flood of millions can be canceled and does not monopolize a runtime thread.
///
/// It also bounds how long this run's readers wait for their first (and every next) batch: each write wakes the
/// stream tasks that wait for the log, and tokio puts a task woken from a worker into that worker's LIFO slot, which
/// no other worker may steal. The woken stream therefore runs only when this loop yields; at 16,384 writes between
/// yields that was 10-50 ms before the first event reached the client (docs/performance.md). A yield costs about as
/// much as one write, so every 256 writes it is noise.
const CHECK_EVERY: u64 = 256;

/// The `writer-flood` workflow.
pub fn workflow() -> Arc<Workflow> {
    Workflow::builder(ID)
        .description("Writes `count` step outputs {\"i\": k} from one step; the throughput benchmark.")
        .input_schema(json!({
            "type": "object",
            "required": ["count"],
            "properties": { "count": { "type": "integer", "minimum": 0, "maximum": 10_000_000u64 } },
            "additionalProperties": false
        }))
        .then(flood())
        .commit()
}

fn flood() -> Step {
    Step::new("flood", |ctx| async move {
        let count = ctx.input()["count"].as_u64().unwrap_or(0);
        let writer = ctx.writer();
        for k in 0..count {
            let mut m = Map::new();
            m.insert("i".to_owned(), Value::from(k));
            writer.write(Value::Object(m)).await?;
            if k % CHECK_EVERY == CHECK_EVERY - 1 {
                if ctx.is_canceled() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(StepOutcome::Done(json!({ "written": count })))
    })
    .description("Writes {\"i\": k} for k in 0..count.")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::{
        EventKind, EventSource, RunStatus,
        executor::test_support::{describe_all, run},
    };

    #[tokio::test]
    async fn writes_count_outputs_in_order() {
        let wf = workflow();
        let (out, events) = run(&wf, json!({ "count": 3 })).await;
        assert_eq!(out.status, RunStatus::Success);
        assert_eq!(out.result, Some(json!({ "written": 3 })));
        assert_eq!(
            describe_all(&events),
            [
                "start writer-flood 1",
                "step-start flood",
                "output flood {\"i\":0}",
                "output flood {\"i\":1}",
                "output flood {\"i\":2}",
                "result flood Success",
            ]
        );
        assert!(events[2..5].iter().all(|e| e.source == EventSource::User));
        let (out, events) = run(&wf, json!({ "count": 0 })).await;
        assert_eq!(out.result, Some(json!({ "written": 0 })));
        assert_eq!(events.len(), 3);
    }

    #[tokio::test]
    async fn large_floods_share_one_step_id() {
        let wf = workflow();
        let n = 3 * CHECK_EVERY + 5;
        let (out, events) = run(&wf, json!({ "count": n })).await;
        assert_eq!(out.result, Some(json!({ "written": n })));
        assert_eq!(events.len() as u64, n + 3);
        let ids: Vec<_> = events[2..4].iter().filter_map(|e| e.kind.step_id().cloned()).collect();
        assert!(Arc::ptr_eq(&ids[0], &ids[1]), "step ids are shared, not copied per event");
        match &events.last().map(|e| &e.kind) {
            Some(EventKind::StepResult { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}

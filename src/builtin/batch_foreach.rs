//! `batch-foreach`: squares 0..count with a foreach whose concurrency comes from the run input; shows one
//! StepProgress per item and an output array in input order whatever the completion order.
//!
//! Optional input `delayMs`: each item first waits that many milliseconds (`{"count": 8, "concurrency": 2,
//! "delayMs": 100}`), so a run can be watched, or interrupted, part-way through the foreach (tests/durability.rs).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{delay_schema, input_delay};
use crate::engine::{Step, StepError, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "batch-foreach";

/// The `batch-foreach` workflow.
pub fn workflow() -> Arc<Workflow> {
    Workflow::builder(ID)
        .description("Squares 0..count in a foreach running `concurrency` items at once.")
        .input_schema(json!({
            "type": "object",
            "required": ["count", "concurrency"],
            "properties": {
                // A demo, not a load generator: `count` items are built in memory at once (1e9 of them took the
                // server down before this bound; now such a start gets INVALID_ARGUMENT).
                "count": { "type": "integer", "minimum": 0, "maximum": 100000 },
                "concurrency": { "type": "integer", "minimum": 1 },
                "delayMs": delay_schema()
            },
            "additionalProperties": false
        }))
        .map("items", |input, _run_input| {
            let count = input["count"].as_u64().unwrap_or(0);
            Value::Array((0..count).map(Value::from).collect())
        })
        .foreach(square(), |run_input: &Value| {
            usize::try_from(run_input["concurrency"].as_u64().unwrap_or(1)).unwrap_or(usize::MAX)
        })
        .commit()
}

fn square() -> Step {
    Step::new("square", |ctx| async move {
        input_delay(&ctx).await;
        let Some(k) = ctx.input().as_u64() else {
            return Err(StepError::new(format!("item must be a whole number, got {}", ctx.input())).non_retryable());
        };
        Ok(StepOutcome::Done(json!({ "i": k, "square": k.saturating_mul(k) })))
    })
    .description("{\"i\": k, \"square\": k*k} (after `delayMs`, if the run input has it)")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::{
        EventKind, RunStatus,
        executor::test_support::{describe_all, run},
    };

    #[tokio::test]
    async fn squares_in_input_order_with_one_progress_per_item() {
        let wf = workflow();
        let (out, events) = run(&wf, json!({ "count": 5, "concurrency": 2 })).await;
        assert_eq!(out.status, RunStatus::Success);
        let expected: Vec<Value> = (0..5u64).map(|k| json!({ "i": k, "square": k * k })).collect();
        assert_eq!(out.result, Some(Value::Array(expected)));
        let lines = describe_all(&events);
        assert_eq!(
            lines[..5],
            [
                "start batch-foreach 1",
                "step-start items",
                "result items Success",
                "step-start square",
                "progress square 1/5 @0 Success"
            ]
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("progress square")).count(), 5);
        assert_eq!(lines.last().map(String::as_str), Some("result square Success"));
        assert_eq!(lines.len(), 10);
        let counts: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::StepProgress { completed_count, total_count, .. } => {
                    assert_eq!(*total_count, 5);
                    Some(*completed_count)
                }
                _ => None,
            })
            .collect();
        assert_eq!(counts, [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn zero_items() {
        let (out, events) = run(&workflow(), json!({ "count": 0, "concurrency": 1 })).await;
        assert_eq!(out.result, Some(json!([])));
        assert_eq!(events.len(), 5);
    }
}

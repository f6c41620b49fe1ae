//! `chain`: three steps, each adding 1 to `value`. The smallest complete run: 8 events with the registry's finish.
//!
//! Optional input `delayMs`: each step first waits that many milliseconds (`{"value": 1, "delayMs": 500}`), so a
//! run can be watched, or interrupted, while a step is in progress (tests/durability.rs kills the server mid-step).

use std::sync::Arc;

use serde_json::json;

use super::{delay_schema, input_delay};
use crate::engine::{Step, StepError, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "chain";

/// The `chain` workflow.
pub fn workflow() -> Arc<Workflow> {
    let value_schema = json!({
        "type": "object",
        "required": ["value"],
        "properties": { "value": { "type": "number" } }
    });
    Workflow::builder(ID)
        .description("Adds 1 to `value` three times, one step at a time.")
        .input_schema(json!({
            "type": "object",
            "required": ["value"],
            "properties": { "value": { "type": "number" }, "delayMs": delay_schema() },
            "additionalProperties": false
        }))
        .output_schema(value_schema)
        .then(add_one("step-1"))
        .then(add_one("step-2"))
        .then(add_one("step-3"))
        .commit()
}

fn add_one(id: &str) -> Step {
    Step::new(id, |ctx| async move {
        input_delay(&ctx).await;
        let value = &ctx.input()["value"];
        // Keep integers integers: `{"value": 1}` should give `{"value": 4}`, not `4.0`.
        let next = if let Some(n) = value.as_i64() {
            json!(n.saturating_add(1))
        } else if let Some(x) = value.as_f64() {
            json!(x + 1.0)
        } else {
            return Err(StepError::new(format!("`value` must be a number, got {value}")).non_retryable());
        };
        Ok(StepOutcome::Done(json!({ "value": next })))
    })
    .description("Adds 1 to `value` (after `delayMs`, if the run input has it).")
    .input_schema(json!({ "type": "object", "required": ["value"] }))
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
    async fn adds_three_in_eight_events() {
        let wf = workflow();
        let (out, events) = run(&wf, json!({ "value": 1 })).await;
        assert_eq!(out.status, RunStatus::Success);
        assert_eq!(out.result, Some(json!({ "value": 4 })));
        assert_eq!(
            describe_all(&events),
            [
                "start chain 1",
                "step-start step-1",
                "result step-1 Success",
                "step-start step-2",
                "result step-2 Success",
                "step-start step-3",
                "result step-3 Success",
            ]
        );
        // With the registry's WorkflowFinish this makes the 8 events of a chain run.
        assert_eq!(events.len(), 7);
        match &events[4].kind {
            EventKind::StepResult { output, attempts, .. } => {
                assert_eq!(output, &Some(json!({ "value": 3 })));
                assert_eq!(*attempts, 1);
            }
            other => panic!("{other:?}"),
        }
        let (out, _) = run(&wf, json!({ "value": 0.5 })).await;
        assert_eq!(out.result, Some(json!({ "value": 3.5 })));
    }

    #[tokio::test]
    async fn delay_ms_makes_each_step_wait() {
        let before = std::time::Instant::now();
        let (out, events) = run(&workflow(), json!({ "value": 1, "delayMs": 20 })).await;
        assert_eq!(out.result, Some(json!({ "value": 4 })));
        assert_eq!(events.len(), 7);
        assert!(before.elapsed() >= std::time::Duration::from_millis(60), "{:?}", before.elapsed());
        let v = workflow().validate_input(&json!({ "value": 1, "delayMs": -1 })).unwrap_err();
        assert_eq!(v.path, "input.delayMs");
    }

    #[test]
    fn input_must_have_a_numeric_value() {
        let v = workflow().validate_input(&json!({ "value": "one" })).unwrap_err();
        assert_eq!(v.path, "input.value");
        assert_eq!(v.message, "expected number, got string");
    }
}

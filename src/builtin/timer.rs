//! `timer`: a sleep step of `ms` milliseconds (StepWaiting with its wake-up time), then a report.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use crate::engine::{Step, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "timer";

/// The `timer` workflow.
pub fn workflow() -> Arc<Workflow> {
    Workflow::builder(ID)
        .description("Sleeps `ms` milliseconds, then reports it.")
        .input_schema(json!({
            "type": "object",
            "required": ["ms"],
            // A day at most: a demo's sleep, and far below where a number stops being exact (2^53).
            "properties": { "ms": { "type": "integer", "minimum": 0, "maximum": 86_400_000u64 } },
            "additionalProperties": false
        }))
        .sleep_with("sleep", |input| Duration::from_millis(input["ms"].as_u64().unwrap_or(0)))
        .then(report())
        .commit()
}

fn report() -> Step {
    Step::new("report", |ctx| async move { Ok(StepOutcome::Done(json!({ "sleptMs": ctx.input()["ms"] }))) })
        .description("{\"sleptMs\": ms}")
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::engine::{
        EventKind, RunStatus,
        executor::test_support::{describe_all, run},
    };

    #[tokio::test]
    async fn sleeps_then_reports() {
        let before = SystemTime::now();
        let (out, events) = run(&workflow(), json!({ "ms": 20 })).await;
        assert_eq!(out.status, RunStatus::Success);
        assert_eq!(out.result, Some(json!({ "sleptMs": 20 })));
        assert!(SystemTime::now().duration_since(before).unwrap() >= Duration::from_millis(20));
        assert_eq!(
            describe_all(&events),
            ["start timer 1", "waiting sleep", "result sleep Success", "step-start report", "result report Success"]
        );
        match &events[1].kind {
            EventKind::StepWaiting { wake_at, .. } => {
                let wait = wake_at.expect("a sleep has a wake_at").duration_since(before).unwrap();
                assert!(wait >= Duration::from_millis(20) && wait < Duration::from_secs(5), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
        match &events[2].kind {
            EventKind::StepResult { output, .. } => assert_eq!(output, &Some(json!({ "ms": 20 }))),
            other => panic!("{other:?}"),
        }
    }
}

//! `flaky`: a step that fails its first `failTimes` tries, with `attempts` tries allowed; shows how retries stream
//! (`step_waiting` RETRY_BACKOFF for the delay, then `step_start` of the next attempt) and that the step result
//! counts the attempts.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::engine::{Step, StepError, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "flaky";

/// Short, so that tests and demos of several retries stay fast.
const RETRY_DELAY: Duration = Duration::from_millis(10);

/// The `flaky` workflow.
pub fn workflow() -> Arc<Workflow> {
    Workflow::builder(ID)
        .description("Fails the first `failTimes` tries of its step, which may try `attempts` times.")
        .input_schema(json!({
            "type": "object",
            "required": ["failTimes", "attempts"],
            "properties": {
                "failTimes": { "type": "integer", "minimum": 0, "maximum": 100 },
                "attempts": { "type": "integer", "minimum": 1, "maximum": 100 }
            },
            "additionalProperties": false
        }))
        .then(unreliable())
        .commit()
}

fn attempts(run_input: &Value) -> u32 {
    u32::try_from(run_input["attempts"].as_u64().unwrap_or(1)).unwrap_or(u32::MAX)
}

fn unreliable() -> Step {
    Step::new("unreliable", |ctx| async move {
        let fail_times = ctx.run_input()["failTimes"].as_u64().unwrap_or(0);
        let tried = u64::from(ctx.attempt()) + 1;
        if tried <= fail_times {
            return Err(StepError::new(format!("attempt {tried} of {} failed", attempts(ctx.run_input()))));
        }
        Ok(StepOutcome::Done(json!({ "attempts": tried })))
    })
    .description("Fails its first `failTimes` tries.")
    .retries_from_input(attempts, RETRY_DELAY)
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
    async fn succeeds_when_attempts_suffice() {
        let (out, events) = run(&workflow(), json!({ "failTimes": 2, "attempts": 3 })).await;
        assert_eq!(out.status, RunStatus::Success);
        assert_eq!(out.result, Some(json!({ "attempts": 3 })));
        assert_eq!(
            describe_all(&events),
            [
                "start flaky 1",
                "step-start unreliable",
                "waiting unreliable retry 2",
                "step-start unreliable attempt 2",
                "waiting unreliable retry 3",
                "step-start unreliable attempt 3",
                "result unreliable Success"
            ]
        );
        match &events[6].kind {
            EventKind::StepResult { attempts, .. } => assert_eq!(*attempts, 3),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fails_with_the_last_error_otherwise() {
        let (out, events) = run(&workflow(), json!({ "failTimes": 3, "attempts": 3 })).await;
        assert_eq!(out.status, RunStatus::Failed);
        let error = out.error.unwrap();
        assert_eq!(error.name, "StepError");
        assert_eq!(error.message, "attempt 3 of 3 failed");
        assert_eq!(error.details.unwrap()["stepId"], json!("unreliable"));
        assert_eq!(describe_all(&events).last().map(String::as_str), Some("result unreliable Failed"));
        assert_eq!(describe_all(&events).iter().filter(|e| e.starts_with("step-start")).count(), 3);
        let (out, _) = run(&workflow(), json!({ "failTimes": 0, "attempts": 1 })).await;
        assert_eq!(out.result, Some(json!({ "attempts": 1 })));
    }
}

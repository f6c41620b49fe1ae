//! `order-approval`: the human-in-the-loop demo. `approve` suspends until resumed with a decision
//! (`{"approved": bool, "approver": string}`), then `finalize` reports it.
//!
//! Optional input `delayMs`: the resumed `approve` waits that many milliseconds before it records the decision, so
//! a resume can be watched, or interrupted, while it is in progress (tests/durability.rs kills the server there).

use std::sync::Arc;

use serde_json::json;

use super::{delay_schema, input_delay};
use crate::engine::{Step, StepOutcome, Workflow};

/// The workflow's id.
pub const ID: &str = "order-approval";

/// The `order-approval` workflow.
pub fn workflow() -> Arc<Workflow> {
    Workflow::builder(ID)
        .description("Prepares an order, waits for a human approval, then finalizes it.")
        .input_schema(json!({
            "type": "object",
            "required": ["orderId", "amount"],
            "properties": {
                "orderId": { "type": "string" },
                "amount": { "type": "number" },
                "delayMs": delay_schema()
            },
            "additionalProperties": false
        }))
        .output_schema(json!({
            "type": "object",
            "required": ["status"],
            "properties": { "status": { "type": "string" } }
        }))
        .then(prepare())
        .then(approve())
        .then(finalize())
        .commit()
}

fn prepare() -> Step {
    Step::new("prepare", |ctx| async move { Ok(StepOutcome::Done(ctx.input().clone())) })
        .description("Passes the order on.")
}

fn approve() -> Step {
    Step::new("approve", |ctx| async move {
        match ctx.resume_data() {
            None => {
                ctx.writer().write(json!({ "note": "about to suspend" })).await?;
                Ok(StepOutcome::suspend(json!({ "reason": "needs approval", "amount": ctx.input()["amount"] })))
            }
            Some(decision) => {
                input_delay(&ctx).await;
                Ok(StepOutcome::Done(json!({
                    "orderId": ctx.input()["orderId"],
                    "approved": decision["approved"],
                    "approver": decision["approver"],
                })))
            }
        }
    })
    .description("Suspends until a person approves or rejects the order.")
    .suspend_schema(json!({
        "type": "object",
        "required": ["reason", "amount"],
        "properties": { "reason": { "type": "string" }, "amount": { "type": "number" } }
    }))
    .resume_schema(json!({
        "type": "object",
        "required": ["approved", "approver"],
        "properties": { "approved": { "type": "boolean" }, "approver": { "type": "string" } }
    }))
}

fn finalize() -> Step {
    Step::new("finalize", |ctx| async move {
        let verdict = if ctx.input()["approved"].as_bool().unwrap_or(false) { "approved" } else { "rejected" };
        let approver = ctx.input()["approver"].as_str().unwrap_or("unknown");
        Ok(StepOutcome::Done(json!({ "status": format!("{verdict} by {approver}") })))
    })
    .description("Reports the decision.")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::{
        EventKind, ResumeError, RunStatus, SchemaViolation, StepStatus,
        executor::test_support::{describe_all, req, resume, run},
    };

    #[tokio::test]
    async fn suspends_for_approval_then_finalizes() {
        let wf = workflow();
        let input = json!({ "orderId": "o-1", "amount": 42.5 });
        let (out, events) = run(&wf, input.clone()).await;
        assert_eq!(out.status, RunStatus::Suspended);
        assert_eq!(
            describe_all(&events),
            [
                "start order-approval 1",
                "step-start prepare",
                "result prepare Success",
                "step-start approve",
                "output approve {\"note\":\"about to suspend\"}",
                "suspended approve",
            ]
        );
        match &events[5].kind {
            EventKind::StepSuspended { suspend_payload, resume_schema, resume_label, for_each_index, .. } => {
                assert_eq!(suspend_payload, &json!({ "reason": "needs approval", "amount": 42.5 }));
                assert_eq!(resume_schema.as_ref().unwrap()["required"], json!(["approved", "approver"]));
                assert_eq!((resume_label, for_each_index), (&None, &None));
            }
            other => panic!("{other:?}"),
        }
        let suspended = &out.snapshot.suspended["approve"];
        assert_eq!(suspended.suspend_payload["reason"], json!("needs approval"));

        // Bad resume data is refused before anything runs.
        let err = resume(&wf, input.clone(), &out, req("approve", json!({ "approver": "ann" })), 2).await.unwrap_err();
        assert_eq!(
            err,
            ResumeError::InvalidResumeData(SchemaViolation {
                path: "resume_data.approved".into(),
                message: "required field is missing".into()
            })
        );

        let (out2, events) =
            resume(&wf, input.clone(), &out, req("", json!({ "approved": true, "approver": "ann" })), 2).await.unwrap();
        assert_eq!(out2.status, RunStatus::Success);
        assert_eq!(out2.result, Some(json!({ "status": "approved by ann" })));
        assert_eq!(
            describe_all(&events),
            [
                "start order-approval 2 resumed",
                "step-start approve resumed",
                "result approve Success",
                "step-start finalize",
                "result finalize Success",
            ]
        );
        assert_eq!(out2.snapshot.steps["prepare"].status, StepStatus::Success);
        assert!(out2.snapshot.suspended.is_empty());

        let (out3, _) =
            resume(&wf, input, &out, req("approve", json!({ "approved": false, "approver": "bob" })), 2).await.unwrap();
        assert_eq!(out3.result, Some(json!({ "status": "rejected by bob" })));
    }
}

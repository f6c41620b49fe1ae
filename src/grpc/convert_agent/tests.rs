//! Agent-chunk and network-event conversion tests: every variant to protobuf and back through the wire encoder.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use serde_json::json;

use super::*;
use crate::{
    engine::{ErrorInfo, Event, EventSource, RunStatus, Usage, WaitReason},
    grpc::{convert, wire},
};

fn pbv(value: Value) -> Option<PbValue> {
    Some(json_to_pb(&value))
}

fn usage_1() -> Usage {
    Usage { input_tokens: 10, output_tokens: 5, total_tokens: 15, reasoning_tokens: 2, ..Usage::default() }
}

fn pb_usage_1() -> Option<pb::Usage> {
    Some(pb::Usage { input_tokens: 10, output_tokens: 5, total_tokens: 15, reasoning_tokens: 2, ..Default::default() })
}

fn error_1() -> ErrorInfo {
    ErrorInfo { name: "ToolError".into(), message: "boom".into(), details: Some(json!({ "code": 7 })) }
}

fn pb_error_1() -> Option<pb::ErrorInfo> {
    Some(pb::ErrorInfo { name: "ToolError".into(), message: "boom".into(), details: pbv(json!({ "code": 7 })) })
}

fn approval() -> ToolCallApproval {
    ToolCallApproval {
        tool_call_id: "call-1".into(),
        tool_name: "search".into(),
        args: json!({ "q": "x" }),
        resume_schema: Some(json!({ "type": "object" })),
    }
}

fn pb_approval() -> pb::ToolCallApproval {
    pb::ToolCallApproval {
        tool_call_id: "call-1".into(),
        tool_name: "search".into(),
        args: pbv(json!({ "q": "x" })),
        resume_schema: pbv(json!({ "type": "object" })),
    }
}

fn suspended() -> ToolCallSuspended {
    ToolCallSuspended {
        tool_call_id: "call-2".into(),
        tool_name: "ask".into(),
        suspend_payload: json!({ "question": "?" }),
        args: json!([1]),
        resume_schema: None,
    }
}

fn pb_suspended() -> pb::ToolCallSuspended {
    pb::ToolCallSuspended {
        tool_call_id: "call-2".into(),
        tool_name: "ask".into(),
        suspend_payload: pbv(json!({ "question": "?" })),
        args: pbv(json!([1])),
        resume_schema: None,
    }
}

fn deleg() -> Box<Delegation> {
    Box::new(Delegation {
        task: "write a poem".into(),
        primitive_id: "poet".into(),
        primitive_type: PrimitiveType::Agent,
        prompt: "a poem on rust".into(),
        result: Some(json!("roses")),
        is_complete: true,
        selection_reason: "it writes poems".into(),
        iteration: 2,
    })
}

fn pb_deleg() -> Option<pb::Delegation> {
    Some(pb::Delegation {
        task: "write a poem".into(),
        primitive_id: "poet".into(),
        primitive_type: pb::PrimitiveType::Agent as i32,
        prompt: "a poem on rust".into(),
        result: pbv(json!("roses")),
        is_complete: true,
        selection_reason: "it writes poems".into(),
        iteration: 2,
    })
}

/// Position of each variant, with no wildcard: a new variant fails to compile here until the table covers it.
fn agent_index(chunk: &AgentChunk) -> usize {
    match chunk {
        AgentChunk::AgentStart { .. } => 0,
        AgentChunk::AgentStepStart { .. } => 1,
        AgentChunk::ResponseMetadata { .. } => 2,
        AgentChunk::AgentStepFinish { .. } => 3,
        AgentChunk::AgentFinish { .. } => 4,
        AgentChunk::AgentError { .. } => 5,
        AgentChunk::AgentAbort { .. } => 6,
        AgentChunk::Tripwire { .. } => 7,
        AgentChunk::TextStart { .. } => 8,
        AgentChunk::TextDelta { .. } => 9,
        AgentChunk::TextEnd { .. } => 10,
        AgentChunk::ReasoningStart { .. } => 11,
        AgentChunk::ReasoningDelta { .. } => 12,
        AgentChunk::ReasoningEnd { .. } => 13,
        AgentChunk::ReasoningSignature { .. } => 14,
        AgentChunk::RedactedReasoning { .. } => 15,
        AgentChunk::SourceRef { .. } => 16,
        AgentChunk::FileData { .. } => 17,
        AgentChunk::ToolCallInputStreamingStart { .. } => 18,
        AgentChunk::ToolCallDelta { .. } => 19,
        AgentChunk::ToolCallInputStreamingEnd { .. } => 20,
        AgentChunk::ToolCall { .. } => 21,
        AgentChunk::ToolCallApproval(_) => 22,
        AgentChunk::ToolCallSuspended(_) => 23,
        AgentChunk::ToolResult { .. } => 24,
        AgentChunk::ToolError { .. } => 25,
        AgentChunk::ToolOutputDenied { .. } => 26,
        AgentChunk::ToolOutput { .. } => 27,
        AgentChunk::ObjectPartial { .. } => 28,
        AgentChunk::ObjectResult { .. } => 29,
    }
}
const AGENT_VARIANTS: usize = 30;

fn network_index(event: &NetworkEvent) -> usize {
    match event {
        NetworkEvent::RoutingAgentStart { .. } => 0,
        NetworkEvent::RoutingAgentTextStart => 1,
        NetworkEvent::RoutingAgentTextDelta { .. } => 2,
        NetworkEvent::RoutingAgentEnd { .. } => 3,
        NetworkEvent::AgentExecutionStart { .. } => 4,
        NetworkEvent::AgentExecutionEnd { .. } => 5,
        NetworkEvent::AgentExecutionApproval { .. } => 6,
        NetworkEvent::AgentExecutionSuspended { .. } => 7,
        NetworkEvent::AgentExecutionEvent { .. } => 8,
        NetworkEvent::WorkflowExecutionStart { .. } => 9,
        NetworkEvent::WorkflowExecutionEnd { .. } => 10,
        NetworkEvent::WorkflowExecutionSuspended { .. } => 11,
        NetworkEvent::WorkflowExecutionEvent { .. } => 12,
        NetworkEvent::ToolExecutionStart { .. } => 13,
        NetworkEvent::ToolExecutionEnd { .. } => 14,
        NetworkEvent::ToolExecutionApproval { .. } => 15,
        NetworkEvent::ToolExecutionSuspended { .. } => 16,
        NetworkEvent::PrimitiveAbort { .. } => 17,
        NetworkEvent::NetworkStepFinish { .. } => 18,
        NetworkEvent::NetworkFinish { .. } => 19,
        NetworkEvent::NetworkValidationStart { .. } => 20,
        NetworkEvent::NetworkValidationEnd { .. } => 21,
        NetworkEvent::NetworkObject { .. } => 22,
        NetworkEvent::NetworkObjectResult { .. } => 23,
    }
}
const NETWORK_VARIANTS: usize = 24;

/// Every agent chunk, with the message it must become.
fn agent_table() -> Vec<(AgentChunk, pb::agent_chunk::Chunk)> {
    use pb::agent_chunk::Chunk as C;
    let text_id: Arc<str> = "text-1".into();
    vec![
        (
            AgentChunk::AgentStart { agent_id: "poet".into(), message_id: "msg-1".into() },
            C::AgentStart(pb::AgentStart { agent_id: "poet".into(), message_id: "msg-1".into() }),
        ),
        (
            AgentChunk::AgentStepStart {
                message_id: "msg-1".into(),
                step_number: 1,
                request: Some(json!({ "messages": [] })),
                warnings: vec!["w".into()],
            },
            C::AgentStepStart(pb::AgentStepStart {
                message_id: "msg-1".into(),
                step_number: 1,
                request: pbv(json!({ "messages": [] })),
                warnings: vec!["w".into()],
            }),
        ),
        (
            AgentChunk::ResponseMetadata { id: Some("resp-1".into()), model_id: Some("m".into()), signature: None },
            C::ResponseMetadata(pb::ResponseMetadata {
                id: "resp-1".into(),
                model_id: "m".into(),
                signature: String::new(),
            }),
        ),
        (
            AgentChunk::AgentStepFinish {
                message_id: "msg-1".into(),
                step_number: 1,
                reason: FinishReason::ToolCalls,
                raw_reason: Some("tool_use".into()),
                usage: usage_1(),
                text: "hi".into(),
                is_continued: true,
                warnings: vec![],
            },
            C::AgentStepFinish(pb::AgentStepFinish {
                message_id: "msg-1".into(),
                step_number: 1,
                reason: pb::FinishReason::ToolCalls as i32,
                raw_reason: "tool_use".into(),
                usage: pb_usage_1(),
                text: "hi".into(),
                is_continued: true,
                warnings: vec![],
            }),
        ),
        (
            AgentChunk::AgentFinish {
                reason: FinishReason::Stop,
                usage: usage_1(),
                text: "done".into(),
                steps: 2,
                object: Some(json!({ "a": 1 })),
            },
            C::AgentFinish(pb::AgentFinish {
                reason: pb::FinishReason::Stop as i32,
                usage: pb_usage_1(),
                text: "done".into(),
                steps: 2,
                object: pbv(json!({ "a": 1 })),
            }),
        ),
        (AgentChunk::AgentError { error: error_1() }, C::AgentError(pb::AgentError { error: pb_error_1() })),
        (
            AgentChunk::AgentAbort { reason: "canceled".into() },
            C::AgentAbort(pb::AgentAbort { reason: "canceled".into() }),
        ),
        (
            AgentChunk::Tripwire {
                reason: "pii".into(),
                retry: true,
                metadata: Some(json!({ "k": "v" })),
                processor_id: Some("pii-guard".into()),
            },
            C::Tripwire(pb::Tripwire {
                reason: "pii".into(),
                retry: true,
                metadata: pbv(json!({ "k": "v" })),
                processor_id: "pii-guard".into(),
            }),
        ),
        (AgentChunk::TextStart { id: text_id.clone() }, C::TextStart(pb::TextStart { id: "text-1".into() })),
        (
            AgentChunk::TextDelta { id: text_id.clone(), text: "Hel".into() },
            C::TextDelta(pb::TextDelta { id: "text-1".into(), text: "Hel".into() }),
        ),
        (AgentChunk::TextEnd { id: text_id }, C::TextEnd(pb::TextEnd { id: "text-1".into() })),
        (
            AgentChunk::ReasoningStart { id: "r-1".into(), signature: Some("sig".into()) },
            C::ReasoningStart(pb::ReasoningStart { id: "r-1".into(), signature: "sig".into() }),
        ),
        (
            AgentChunk::ReasoningDelta { id: "r-1".into(), text: "hmm".into() },
            C::ReasoningDelta(pb::ReasoningDelta { id: "r-1".into(), text: "hmm".into() }),
        ),
        (
            AgentChunk::ReasoningEnd { id: "r-1".into(), signature: None },
            C::ReasoningEnd(pb::ReasoningEnd { id: "r-1".into(), signature: String::new() }),
        ),
        (
            AgentChunk::ReasoningSignature { id: "r-1".into(), signature: "sig".into() },
            C::ReasoningSignature(pb::ReasoningSignature { id: "r-1".into(), signature: "sig".into() }),
        ),
        (
            AgentChunk::RedactedReasoning { id: "r-2".into(), data: "xxx".into() },
            C::RedactedReasoning(pb::RedactedReasoning { id: "r-2".into(), data: "xxx".into() }),
        ),
        (
            AgentChunk::SourceRef {
                id: "src-1".into(),
                source_type: "url".into(),
                title: "Rust".into(),
                mime_type: Some("text/html".into()),
                filename: None,
                url: Some("https://www.rust-lang.org".into()),
            },
            C::SourceRef(pb::SourceRef {
                id: "src-1".into(),
                source_type: "url".into(),
                title: "Rust".into(),
                mime_type: "text/html".into(),
                filename: String::new(),
                url: "https://www.rust-lang.org".into(),
            }),
        ),
        (
            AgentChunk::FileData {
                data: vec![0, 1, 255],
                mime_type: "image/png".into(),
                filename: Some("a.png".into()),
            },
            C::File(pb::FileData { data: vec![0, 1, 255], mime_type: "image/png".into(), filename: "a.png".into() }),
        ),
        (
            AgentChunk::ToolCallInputStreamingStart {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                provider_executed: true,
                dynamic: true,
                title: Some("Search".into()),
            },
            C::ToolCallInputStreamingStart(pb::ToolCallInputStreamingStart {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                provider_executed: true,
                dynamic: true,
                title: "Search".into(),
            }),
        ),
        (
            AgentChunk::ToolCallDelta {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args_text_delta: "{\"q\":".into(),
            },
            C::ToolCallDelta(pb::ToolCallDelta {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args_text_delta: "{\"q\":".into(),
            }),
        ),
        (
            AgentChunk::ToolCallInputStreamingEnd { tool_call_id: "call-1".into() },
            C::ToolCallInputStreamingEnd(pb::ToolCallInputStreamingEnd { tool_call_id: "call-1".into() }),
        ),
        (
            AgentChunk::ToolCall {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args: json!({ "q": "x" }),
                provider_executed: false,
                dynamic: true,
                title: None,
            },
            C::ToolCall(pb::ToolCall {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args: pbv(json!({ "q": "x" })),
                provider_executed: false,
                dynamic: true,
                title: String::new(),
            }),
        ),
        (AgentChunk::ToolCallApproval(approval()), C::ToolCallApproval(pb_approval())),
        (AgentChunk::ToolCallSuspended(suspended()), C::ToolCallSuspended(pb_suspended())),
        (
            AgentChunk::ToolResult {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                result: json!(["hit"]),
                is_error: true,
                args: Some(json!({ "q": "x" })),
                provider_executed: true,
                dynamic: true,
            },
            C::ToolResult(pb::ToolResult {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                result: pbv(json!(["hit"])),
                is_error: true,
                args: pbv(json!({ "q": "x" })),
                provider_executed: true,
                dynamic: true,
            }),
        ),
        (
            AgentChunk::ToolError {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args: None,
                error: error_1(),
                provider_executed: true,
            },
            C::ToolError(pb::ToolError {
                tool_call_id: "call-1".into(),
                tool_name: "search".into(),
                args: None,
                error: pb_error_1(),
                provider_executed: true,
            }),
        ),
        (
            AgentChunk::ToolOutputDenied {
                tool_call_id: "call-1".into(),
                tool_name: "delete".into(),
                args: Some(json!({})),
                approval_id: "appr-1".into(),
                reason: Some("no".into()),
            },
            C::ToolOutputDenied(pb::ToolOutputDenied {
                tool_call_id: "call-1".into(),
                tool_name: "delete".into(),
                args: pbv(json!({})),
                approval_id: "appr-1".into(),
                reason: "no".into(),
            }),
        ),
        (
            AgentChunk::ToolOutput { tool_call_id: "call-1".into(), tool_name: "sub".into(), output: json!(3) },
            C::ToolOutput(pb::ToolOutput {
                tool_call_id: "call-1".into(),
                tool_name: "sub".into(),
                output: pbv(json!(3)),
            }),
        ),
        (
            AgentChunk::ObjectPartial { object: json!({ "a": null }) },
            C::Object(pb::ObjectPartial { object: pbv(json!({ "a": null })) }),
        ),
        (
            AgentChunk::ObjectResult { object: json!({ "a": 1 }) },
            C::ObjectResult(pb::ObjectResult { object: pbv(json!({ "a": 1 })) }),
        ),
    ]
}

/// Every network event, with the message it must become.
fn network_table() -> Vec<(NetworkEvent, pb::run_event::Event)> {
    use pb::run_event::Event as E;
    vec![
        (
            NetworkEvent::RoutingAgentStart {
                agent_id: "router".into(),
                network_id: "net".into(),
                task: "write a poem".into(),
                iteration: 3,
                previous: Some(deleg()),
            },
            E::RoutingAgentStart(pb::RoutingAgentStart {
                agent_id: "router".into(),
                network_id: "net".into(),
                task: "write a poem".into(),
                iteration: 3,
                previous: pb_deleg(),
            }),
        ),
        (NetworkEvent::RoutingAgentTextStart, E::RoutingAgentTextStart(pb::RoutingAgentTextStart {})),
        (
            NetworkEvent::RoutingAgentTextDelta { text: "thinking".into() },
            E::RoutingAgentTextDelta(pb::RoutingAgentTextDelta { text: "thinking".into() }),
        ),
        (
            NetworkEvent::RoutingAgentEnd { delegation: deleg(), usage: usage_1() },
            E::RoutingAgentEnd(pb::RoutingAgentEnd { delegation: pb_deleg(), usage: pb_usage_1() }),
        ),
        (
            NetworkEvent::AgentExecutionStart { agent_id: "poet".into(), delegation: deleg() },
            E::AgentExecutionStart(pb::AgentExecutionStart { agent_id: "poet".into(), delegation: pb_deleg() }),
        ),
        (
            NetworkEvent::AgentExecutionEnd { agent_id: "poet".into(), delegation: deleg(), usage: usage_1() },
            E::AgentExecutionEnd(pb::AgentExecutionEnd {
                agent_id: "poet".into(),
                delegation: pb_deleg(),
                usage: pb_usage_1(),
            }),
        ),
        (
            NetworkEvent::AgentExecutionApproval {
                agent_id: "poet".into(),
                approval: Box::new(approval()),
                usage: usage_1(),
                selection_reason: "because".into(),
            },
            E::AgentExecutionApproval(pb::AgentExecutionApproval {
                agent_id: "poet".into(),
                approval: Some(pb_approval()),
                usage: pb_usage_1(),
                selection_reason: "because".into(),
            }),
        ),
        (
            NetworkEvent::AgentExecutionSuspended {
                agent_id: "poet".into(),
                suspended: Box::new(suspended()),
                usage: usage_1(),
                selection_reason: "because".into(),
            },
            E::AgentExecutionSuspended(pb::AgentExecutionSuspended {
                agent_id: "poet".into(),
                suspended: Some(pb_suspended()),
                usage: pb_usage_1(),
                selection_reason: "because".into(),
            }),
        ),
        (
            NetworkEvent::AgentExecutionEvent {
                agent_id: "poet".into(),
                chunk: Box::new(AgentChunk::TextEnd { id: "t".into() }),
            },
            E::AgentExecutionEvent(pb::AgentExecutionEvent {
                agent_id: "poet".into(),
                chunk: Some(pb::AgentChunk {
                    chunk: Some(pb::agent_chunk::Chunk::TextEnd(pb::TextEnd { id: "t".into() })),
                }),
            }),
        ),
        (
            NetworkEvent::WorkflowExecutionStart {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                delegation: deleg(),
            },
            E::WorkflowExecutionStart(pb::WorkflowExecutionStart {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                delegation: pb_deleg(),
            }),
        ),
        (
            NetworkEvent::WorkflowExecutionEnd {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                delegation: deleg(),
                status: RunStatus::Failed,
                usage: usage_1(),
            },
            E::WorkflowExecutionEnd(pb::WorkflowExecutionEnd {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                delegation: pb_deleg(),
                status: pb::RunStatus::Failed as i32,
                usage: pb_usage_1(),
            }),
        ),
        (
            NetworkEvent::WorkflowExecutionSuspended {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                suspend_payload: json!({ "need": "ok" }),
                usage: usage_1(),
                selection_reason: "because".into(),
            },
            E::WorkflowExecutionSuspended(pb::WorkflowExecutionSuspended {
                workflow_id: "wf".into(),
                workflow_run_id: "run-2".into(),
                suspend_payload: pbv(json!({ "need": "ok" })),
                usage: pb_usage_1(),
                selection_reason: "because".into(),
            }),
        ),
        (
            NetworkEvent::WorkflowExecutionEvent {
                workflow_id: "wf".into(),
                event: Box::new(EventKind::WorkflowCanceled { reason: "r".into() }),
            },
            E::WorkflowExecutionEvent(pb::WorkflowExecutionEvent {
                workflow_id: "wf".into(),
                event: Some(pb::WorkflowEvent {
                    step_id: String::new(),
                    event: Some(pb::workflow_event::Event::WorkflowCanceled(pb::WorkflowCanceled {
                        reason: "r".into(),
                    })),
                }),
            }),
        ),
        (
            NetworkEvent::ToolExecutionStart {
                tool_name: "search".into(),
                tool_call_id: "call-9".into(),
                args: Some(json!({ "q": "y" })),
                selection_reason: "because".into(),
            },
            E::ToolExecutionStart(pb::ToolExecutionStart {
                tool_name: "search".into(),
                tool_call_id: "call-9".into(),
                args: pbv(json!({ "q": "y" })),
                selection_reason: "because".into(),
            }),
        ),
        (
            NetworkEvent::ToolExecutionEnd {
                tool_name: "search".into(),
                tool_call_id: "call-9".into(),
                delegation: deleg(),
            },
            E::ToolExecutionEnd(pb::ToolExecutionEnd {
                tool_name: "search".into(),
                tool_call_id: "call-9".into(),
                delegation: pb_deleg(),
            }),
        ),
        (
            NetworkEvent::ToolExecutionApproval { approval: Box::new(approval()), selection_reason: "r".into() },
            E::ToolExecutionApproval(pb::ToolExecutionApproval {
                approval: Some(pb_approval()),
                selection_reason: "r".into(),
            }),
        ),
        (
            NetworkEvent::ToolExecutionSuspended { suspended: Box::new(suspended()), selection_reason: "r".into() },
            E::ToolExecutionSuspended(pb::ToolExecutionSuspended {
                suspended: Some(pb_suspended()),
                selection_reason: "r".into(),
            }),
        ),
        (
            NetworkEvent::PrimitiveAbort { primitive_type: PrimitiveType::RoutingAgent, primitive_id: "router".into() },
            E::PrimitiveAbort(pb::PrimitiveAbort {
                primitive_type: pb::PrimitiveType::RoutingAgent as i32,
                primitive_id: "router".into(),
            }),
        ),
        (
            NetworkEvent::NetworkStepFinish {
                task: "t".into(),
                result: Some(json!("r")),
                is_complete: true,
                iteration: 4,
            },
            E::NetworkStepFinish(pb::NetworkStepFinish {
                task: "t".into(),
                result: pbv(json!("r")),
                is_complete: true,
                iteration: 4,
            }),
        ),
        (
            NetworkEvent::NetworkFinish {
                delegation: deleg(),
                object: None,
                completion_reason: "task complete".into(),
                usage: usage_1(),
            },
            E::NetworkFinish(pb::NetworkFinish {
                delegation: pb_deleg(),
                object: None,
                completion_reason: "task complete".into(),
                usage: pb_usage_1(),
            }),
        ),
        (
            NetworkEvent::NetworkValidationStart { iteration: 2, checks_count: 3 },
            E::NetworkValidationStart(pb::NetworkValidationStart { iteration: 2, checks_count: 3 }),
        ),
        (
            NetworkEvent::NetworkValidationEnd {
                iteration: 2,
                passed: false,
                results: json!([{ "ok": false }]),
                duration_ms: 1500,
                timed_out: true,
                reason: Some("judge said no".into()),
                max_iteration_reached: true,
            },
            E::NetworkValidationEnd(pb::NetworkValidationEnd {
                iteration: 2,
                passed: false,
                results: pbv(json!([{ "ok": false }])),
                duration_ms: 1500,
                timed_out: true,
                reason: "judge said no".into(),
                max_iteration_reached: true,
            }),
        ),
        (
            NetworkEvent::NetworkObject { object: json!({ "p": 1 }) },
            E::NetworkObject(pb::NetworkObject { object: pbv(json!({ "p": 1 })) }),
        ),
        (
            NetworkEvent::NetworkObjectResult { object: json!({ "p": 2 }) },
            E::NetworkObjectResult(pb::NetworkObjectResult { object: pbv(json!({ "p": 2 })) }),
        ),
    ]
}

#[test]
fn every_agent_chunk_becomes_its_message_in_both_oneofs() {
    let table = agent_table();
    let mut covered = [false; AGENT_VARIANTS];
    for (chunk, expected) in &table {
        covered[agent_index(chunk)] = true;
        assert_eq!(&agent_chunk_oneof(chunk), expected, "{chunk:?}");
        assert_eq!(agent_chunk(chunk), pb::AgentChunk { chunk: Some(expected.clone()) }, "{chunk:?}");
        // Same message under the same field number in RunEvent: a RunEvent holding only the chunk encodes to
        // the same bytes as the AgentChunk (field numbers 40..69 in both oneofs).
        let run_event = pb::RunEvent { event: Some(agent_run_event(chunk)), ..Default::default() };
        assert_eq!(run_event.encode_to_vec(), agent_chunk(chunk).encode_to_vec(), "{chunk:?}");
    }
    assert!(covered.iter().all(|c| *c), "variants missing from the table: {covered:?}");
}

#[test]
fn every_network_event_becomes_its_message() {
    let table = network_table();
    let mut covered = [false; NETWORK_VARIANTS];
    for (event, expected) in &table {
        covered[network_index(event)] = true;
        assert_eq!(&network_run_event(event), expected, "{event:?}");
    }
    assert!(covered.iter().all(|c| *c), "variants missing from the table: {covered:?}");
}

#[test]
fn enums_map_one_to_one() {
    use FinishReason as F;
    for (reason, expected) in [
        (F::Stop, pb::FinishReason::Stop),
        (F::Length, pb::FinishReason::Length),
        (F::ContentFilter, pb::FinishReason::ContentFilter),
        (F::ToolCalls, pb::FinishReason::ToolCalls),
        (F::Error, pb::FinishReason::Error),
        (F::Other, pb::FinishReason::Other),
        (F::Tripwire, pb::FinishReason::Tripwire),
        (F::Aborted, pb::FinishReason::Aborted),
    ] {
        assert_eq!(finish_reason(reason), expected);
    }
    use PrimitiveType as P;
    for (primitive, expected) in [
        (P::Agent, pb::PrimitiveType::Agent),
        (P::Workflow, pb::PrimitiveType::Workflow),
        (P::Tool, pb::PrimitiveType::Tool),
        (P::RoutingAgent, pb::PrimitiveType::RoutingAgent),
        (P::None, pb::PrimitiveType::None),
    ] {
        assert_eq!(primitive_type(primitive), expected);
    }
}

#[test]
fn an_agent_execution_event_nests_the_chunk() {
    let event = NetworkEvent::AgentExecutionEvent {
        agent_id: "poet".into(),
        chunk: Box::new(AgentChunk::TextDelta { id: "text-1".into(), text: "Hello".into() }),
    };
    let pb::run_event::Event::AgentExecutionEvent(nested) = network_run_event(&event) else {
        panic!("not an agent_execution_event");
    };
    assert_eq!(nested.agent_id, "poet");
    let Some(pb::agent_chunk::Chunk::TextDelta(delta)) = nested.chunk.and_then(|c| c.chunk) else {
        panic!("not a text_delta");
    };
    assert_eq!(delta, pb::TextDelta { id: "text-1".into(), text: "Hello".into() });
}

#[test]
fn a_workflow_execution_event_nests_the_event_with_its_step_id() {
    let event = NetworkEvent::WorkflowExecutionEvent {
        workflow_id: "wf".into(),
        event: Box::new(EventKind::StepStart {
            step_id: "child.step".into(),
            step_call_id: "call-1".into(),
            input: json!({ "n": 1 }),
            resume_data: None,
            iteration_count: 0,
            attempt: 1,
        }),
    };
    let pb::run_event::Event::WorkflowExecutionEvent(nested) = network_run_event(&event) else {
        panic!("not a workflow_execution_event");
    };
    assert_eq!(nested.workflow_id, "wf");
    let nested = nested.event.expect("nested event");
    assert_eq!(nested.step_id, "child.step");
    assert_eq!(
        nested.event,
        Some(pb::workflow_event::Event::StepStart(pb::StepStart {
            step_id: "child.step".into(),
            step_call_id: "call-1".into(),
            input: pbv(json!({ "n": 1 })),
            resume_data: None,
            iteration_count: 0,
            attempt: 1,
        }))
    );
}

#[test]
fn nested_workflow_events_are_the_run_event_messages() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let kinds = [
        EventKind::WorkflowStart { workflow_id: "wf".into(), phase: 2, resumed: true },
        EventKind::StepOutput { step_id: "s".into(), output: json!([1, 2]) },
        EventKind::StepWaiting {
            step_id: "s".into(),
            wake_at: Some(t0),
            reason: WaitReason::RetryBackoff,
            task_type: Some("t".into()),
            attempt: 2,
        },
        EventKind::WorkflowPaused,
        EventKind::WorkflowFinish { status: RunStatus::Success, result: Some(json!(1)), error: None, usage: usage_1() },
        EventKind::Custom { step_id: "s".into(), kind: "data-x".into(), data: json!({}), id: None, transient: true },
    ];
    for kind in kinds {
        let nested = workflow_event_message(&kind);
        let event = Event { source: EventSource::Workflow, kind: kind.clone() };
        let run_event = convert::run_event("", 0, SystemTime::UNIX_EPOCH, &event);
        assert_eq!(nested.event.and_then(workflow_run_event), run_event.event, "{kind:?}");
        assert_eq!(nested.step_id, run_event.step_id, "{kind:?}");
    }
    // An agent step's chunk nests as `agent_chunk`, with its step, and un-nests to the same RunEvent variant.
    let agent = EventKind::Agent { step_id: Some("s".into()), chunk: AgentChunk::TextEnd { id: "t".into() } };
    let nested = workflow_event_message(&agent);
    assert_eq!(nested.step_id, "s");
    let event = Event { source: EventSource::Agent, kind: agent };
    let run_event = convert::run_event("", 0, SystemTime::UNIX_EPOCH, &event);
    assert!(matches!(nested.event, Some(pb::workflow_event::Event::AgentChunk(_))));
    assert_eq!(nested.event.and_then(workflow_run_event), run_event.event);
}

#[test]
fn a_run_event_of_an_agent_chunk_carries_its_step_id_and_source() {
    let step: Arc<str> = "research.agent".into();
    let event = Event {
        source: EventSource::Agent,
        kind: EventKind::Agent {
            step_id: Some(step.clone()),
            chunk: AgentChunk::TextDelta { id: "text-1".into(), text: "Hi".into() },
        },
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let run_event = convert::run_event("run-1", 42, at, &event);
    assert_eq!(run_event.run_id, "run-1");
    assert_eq!(run_event.seq, 42);
    assert_eq!(run_event.step_id, "research.agent");
    assert_eq!(run_event.source, pb::EventSource::Agent as i32);
    assert_eq!(
        run_event.event,
        Some(pb::run_event::Event::TextDelta(pb::TextDelta { id: "text-1".into(), text: "Hi".into() }))
    );

    // Not a step: no step id. A network event likewise.
    let standalone = Event {
        source: EventSource::Agent,
        kind: EventKind::Agent { step_id: None, chunk: AgentChunk::TextEnd { id: "text-1".into() } },
    };
    assert_eq!(convert::run_event("run-1", 1, at, &standalone).step_id, "");
    let network = Event {
        source: EventSource::Network,
        kind: EventKind::Network { step_id: Some(step), event: NetworkEvent::RoutingAgentTextStart },
    };
    let run_event = convert::run_event("run-1", 2, at, &network);
    assert_eq!((run_event.step_id.as_str(), run_event.source), ("research.agent", pb::EventSource::Network as i32));
}

#[test]
fn the_wire_encoding_of_agent_and_network_events_is_the_reference() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let agent = agent_table()
        .into_iter()
        .map(|(chunk, _)| (EventSource::Agent, EventKind::Agent { step_id: Some("s.agent".into()), chunk }));
    let network = network_table()
        .into_iter()
        .map(|(event, _)| (EventSource::Network, EventKind::Network { step_id: None, event }));
    for (source, kind) in agent.chain(network) {
        let event = Event { source, kind };
        let expected = convert::run_event("run-1", 300, at, &event).encode_to_vec();
        assert_eq!(wire::encode("run-1", 300, at, &event).as_ref(), expected.as_slice(), "{:?}", event.kind);
    }
}

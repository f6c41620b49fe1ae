//! Agent chunks and agent-network events as protobuf messages. Pure functions, no I/O.
//!
//! An agent chunk has two wire forms, the same message in either oneof: a `RunEvent.event` variant (the agent's own
//! chunks) and an `AgentChunk.chunk` variant (nested in a network's `AgentExecutionEvent`). [`agent_chunk_oneof`]
//! builds the message once; `From` moves it from one oneof to the other. Likewise a workflow event nested in a
//! network's `WorkflowExecutionEvent` is built by `convert::workflow_event`, which `convert::run_event` uses too.

use prost_types::Value as PbValue;
use serde_json::Value;

use super::convert::{error_info, json_to_pb, opt_json, run_status, usage, workflow_event};
use crate::{
    engine::{
        EventKind,
        agent_event::{
            AgentChunk, Delegation, FinishReason, NetworkEvent, PrimitiveType, ToolCallApproval, ToolCallSuspended,
        },
    },
    pb,
};

// ---- helpers ----

fn json(value: &Value) -> Option<PbValue> {
    Some(json_to_pb(value))
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

pub fn finish_reason(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        FinishReason::Error => pb::FinishReason::Error,
        FinishReason::Other => pb::FinishReason::Other,
        FinishReason::Tripwire => pb::FinishReason::Tripwire,
        FinishReason::Aborted => pb::FinishReason::Aborted,
    }
}

pub fn primitive_type(primitive: PrimitiveType) -> pb::PrimitiveType {
    match primitive {
        PrimitiveType::Agent => pb::PrimitiveType::Agent,
        PrimitiveType::Workflow => pb::PrimitiveType::Workflow,
        PrimitiveType::Tool => pb::PrimitiveType::Tool,
        PrimitiveType::RoutingAgent => pb::PrimitiveType::RoutingAgent,
        PrimitiveType::None => pb::PrimitiveType::None,
    }
}

fn delegation(d: &Delegation) -> pb::Delegation {
    pb::Delegation {
        task: d.task.clone(),
        primitive_id: d.primitive_id.clone(),
        primitive_type: primitive_type(d.primitive_type) as i32,
        prompt: d.prompt.clone(),
        result: opt_json(&d.result),
        is_complete: d.is_complete,
        selection_reason: d.selection_reason.clone(),
        iteration: d.iteration,
    }
}

fn tool_call_approval(a: &ToolCallApproval) -> pb::ToolCallApproval {
    pb::ToolCallApproval {
        tool_call_id: a.tool_call_id.to_string(),
        tool_name: a.tool_name.to_string(),
        args: json(&a.args),
        resume_schema: opt_json(&a.resume_schema),
    }
}

fn tool_call_suspended(s: &ToolCallSuspended) -> pb::ToolCallSuspended {
    pb::ToolCallSuspended {
        tool_call_id: s.tool_call_id.to_string(),
        tool_name: s.tool_name.to_string(),
        suspend_payload: json(&s.suspend_payload),
        args: json(&s.args),
        resume_schema: opt_json(&s.resume_schema),
    }
}

// ---- agent chunks ----

/// An agent chunk as the `RunEvent.event` variant it is.
pub fn agent_run_event(chunk: &AgentChunk) -> pb::run_event::Event {
    agent_chunk_oneof(chunk).into()
}

/// An agent chunk as a `pb::AgentChunk`, for nesting.
pub fn agent_chunk(chunk: &AgentChunk) -> pb::AgentChunk {
    pb::AgentChunk { chunk: Some(agent_chunk_oneof(chunk)) }
}

/// The message of an agent chunk, in the `AgentChunk.chunk` oneof.
pub fn agent_chunk_oneof(chunk: &AgentChunk) -> pb::agent_chunk::Chunk {
    use pb::agent_chunk::Chunk as C;
    match chunk {
        AgentChunk::AgentStart { agent_id, message_id } => {
            C::AgentStart(pb::AgentStart { agent_id: agent_id.to_string(), message_id: message_id.to_string() })
        }
        AgentChunk::AgentStepStart { message_id, step_number, request, warnings } => {
            C::AgentStepStart(pb::AgentStepStart {
                message_id: message_id.to_string(),
                step_number: *step_number,
                request: opt_json(request),
                warnings: warnings.clone(),
            })
        }
        AgentChunk::ResponseMetadata { id, model_id, signature } => C::ResponseMetadata(pb::ResponseMetadata {
            id: text(id),
            model_id: text(model_id),
            signature: text(signature),
        }),
        AgentChunk::AgentStepFinish {
            message_id,
            step_number,
            reason,
            raw_reason,
            usage: u,
            text: step_text,
            is_continued,
            warnings,
        } => C::AgentStepFinish(pb::AgentStepFinish {
            message_id: message_id.to_string(),
            step_number: *step_number,
            reason: finish_reason(*reason) as i32,
            raw_reason: text(raw_reason),
            usage: Some(usage(u)),
            text: step_text.clone(),
            is_continued: *is_continued,
            warnings: warnings.clone(),
        }),
        AgentChunk::AgentFinish { reason, usage: u, text, steps, object } => C::AgentFinish(pb::AgentFinish {
            reason: finish_reason(*reason) as i32,
            usage: Some(usage(u)),
            text: text.clone(),
            steps: *steps,
            object: opt_json(object),
        }),
        AgentChunk::AgentError { error } => C::AgentError(pb::AgentError { error: Some(error_info(error)) }),
        AgentChunk::AgentAbort { reason } => C::AgentAbort(pb::AgentAbort { reason: reason.clone() }),
        AgentChunk::Tripwire { reason, retry, metadata, processor_id } => C::Tripwire(pb::Tripwire {
            reason: reason.clone(),
            retry: *retry,
            metadata: opt_json(metadata),
            processor_id: text(processor_id),
        }),
        AgentChunk::TextStart { id } => C::TextStart(pb::TextStart { id: id.to_string() }),
        AgentChunk::TextDelta { id, text } => C::TextDelta(pb::TextDelta { id: id.to_string(), text: text.clone() }),
        AgentChunk::TextEnd { id } => C::TextEnd(pb::TextEnd { id: id.to_string() }),
        AgentChunk::ReasoningStart { id, signature } => {
            C::ReasoningStart(pb::ReasoningStart { id: id.to_string(), signature: text(signature) })
        }
        AgentChunk::ReasoningDelta { id, text } => {
            C::ReasoningDelta(pb::ReasoningDelta { id: id.to_string(), text: text.clone() })
        }
        AgentChunk::ReasoningEnd { id, signature } => {
            C::ReasoningEnd(pb::ReasoningEnd { id: id.to_string(), signature: text(signature) })
        }
        AgentChunk::ReasoningSignature { id, signature } => {
            C::ReasoningSignature(pb::ReasoningSignature { id: id.to_string(), signature: signature.clone() })
        }
        AgentChunk::RedactedReasoning { id, data } => {
            C::RedactedReasoning(pb::RedactedReasoning { id: id.to_string(), data: data.clone() })
        }
        AgentChunk::SourceRef { id, source_type, title, mime_type, filename, url } => C::SourceRef(pb::SourceRef {
            id: id.clone(),
            source_type: source_type.clone(),
            title: title.clone(),
            mime_type: text(mime_type),
            filename: text(filename),
            url: text(url),
        }),
        AgentChunk::FileData { data, mime_type, filename } => {
            C::File(pb::FileData { data: data.clone(), mime_type: mime_type.clone(), filename: text(filename) })
        }
        AgentChunk::ToolCallInputStreamingStart { tool_call_id, tool_name, provider_executed, dynamic, title } => {
            C::ToolCallInputStreamingStart(pb::ToolCallInputStreamingStart {
                tool_call_id: tool_call_id.to_string(),
                tool_name: tool_name.to_string(),
                provider_executed: *provider_executed,
                dynamic: *dynamic,
                title: text(title),
            })
        }
        AgentChunk::ToolCallDelta { tool_call_id, tool_name, args_text_delta } => C::ToolCallDelta(pb::ToolCallDelta {
            tool_call_id: tool_call_id.to_string(),
            tool_name: tool_name.to_string(),
            args_text_delta: args_text_delta.clone(),
        }),
        AgentChunk::ToolCallInputStreamingEnd { tool_call_id } => {
            C::ToolCallInputStreamingEnd(pb::ToolCallInputStreamingEnd { tool_call_id: tool_call_id.to_string() })
        }
        AgentChunk::ToolCall { tool_call_id, tool_name, args, provider_executed, dynamic, title } => {
            C::ToolCall(pb::ToolCall {
                tool_call_id: tool_call_id.to_string(),
                tool_name: tool_name.to_string(),
                args: json(args),
                provider_executed: *provider_executed,
                dynamic: *dynamic,
                title: text(title),
            })
        }
        AgentChunk::ToolCallApproval(approval) => C::ToolCallApproval(tool_call_approval(approval)),
        AgentChunk::ToolCallSuspended(suspended) => C::ToolCallSuspended(tool_call_suspended(suspended)),
        AgentChunk::ToolResult { tool_call_id, tool_name, result, is_error, args, provider_executed, dynamic } => {
            C::ToolResult(pb::ToolResult {
                tool_call_id: tool_call_id.to_string(),
                tool_name: tool_name.to_string(),
                result: json(result),
                is_error: *is_error,
                args: opt_json(args),
                provider_executed: *provider_executed,
                dynamic: *dynamic,
            })
        }
        AgentChunk::ToolError { tool_call_id, tool_name, args, error, provider_executed } => {
            C::ToolError(pb::ToolError {
                tool_call_id: tool_call_id.to_string(),
                tool_name: tool_name.to_string(),
                args: opt_json(args),
                error: Some(error_info(error)),
                provider_executed: *provider_executed,
            })
        }
        AgentChunk::ToolOutputDenied { tool_call_id, tool_name, args, approval_id, reason } => {
            C::ToolOutputDenied(pb::ToolOutputDenied {
                tool_call_id: tool_call_id.to_string(),
                tool_name: tool_name.to_string(),
                args: opt_json(args),
                approval_id: approval_id.clone(),
                reason: text(reason),
            })
        }
        AgentChunk::ToolOutput { tool_call_id, tool_name, output } => C::ToolOutput(pb::ToolOutput {
            tool_call_id: tool_call_id.to_string(),
            tool_name: tool_name.to_string(),
            output: json(output),
        }),
        AgentChunk::ObjectPartial { object } => C::Object(pb::ObjectPartial { object: json(object) }),
        AgentChunk::ObjectResult { object } => C::ObjectResult(pb::ObjectResult { object: json(object) }),
    }
}

/// The `AgentChunk` oneof and the agent part of the `RunEvent` oneof hold the same messages.
impl From<pb::agent_chunk::Chunk> for pb::run_event::Event {
    fn from(chunk: pb::agent_chunk::Chunk) -> Self {
        use pb::{agent_chunk::Chunk as C, run_event::Event as E};
        match chunk {
            C::AgentStart(m) => E::AgentStart(m),
            C::AgentStepStart(m) => E::AgentStepStart(m),
            C::ResponseMetadata(m) => E::ResponseMetadata(m),
            C::AgentStepFinish(m) => E::AgentStepFinish(m),
            C::AgentFinish(m) => E::AgentFinish(m),
            C::AgentError(m) => E::AgentError(m),
            C::AgentAbort(m) => E::AgentAbort(m),
            C::Tripwire(m) => E::Tripwire(m),
            C::TextStart(m) => E::TextStart(m),
            C::TextDelta(m) => E::TextDelta(m),
            C::TextEnd(m) => E::TextEnd(m),
            C::ReasoningStart(m) => E::ReasoningStart(m),
            C::ReasoningDelta(m) => E::ReasoningDelta(m),
            C::ReasoningEnd(m) => E::ReasoningEnd(m),
            C::ReasoningSignature(m) => E::ReasoningSignature(m),
            C::RedactedReasoning(m) => E::RedactedReasoning(m),
            C::SourceRef(m) => E::SourceRef(m),
            C::File(m) => E::File(m),
            C::ToolCallInputStreamingStart(m) => E::ToolCallInputStreamingStart(m),
            C::ToolCallDelta(m) => E::ToolCallDelta(m),
            C::ToolCallInputStreamingEnd(m) => E::ToolCallInputStreamingEnd(m),
            C::ToolCall(m) => E::ToolCall(m),
            C::ToolCallApproval(m) => E::ToolCallApproval(m),
            C::ToolCallSuspended(m) => E::ToolCallSuspended(m),
            C::ToolResult(m) => E::ToolResult(m),
            C::ToolError(m) => E::ToolError(m),
            C::ToolOutputDenied(m) => E::ToolOutputDenied(m),
            C::ToolOutput(m) => E::ToolOutput(m),
            C::Object(m) => E::Object(m),
            C::ObjectResult(m) => E::ObjectResult(m),
        }
    }
}

// ---- workflow events, nested ----

/// A workflow event as a `pb::WorkflowEvent`, for nesting; an agent step's chunks nest as `agent_chunk`. Network
/// events have no such form (a network nested in a network's workflow): they give an empty `event`.
pub fn workflow_event_message(kind: &EventKind) -> pb::WorkflowEvent {
    let event = match kind {
        EventKind::Agent { chunk, .. } => Some(pb::workflow_event::Event::AgentChunk(agent_chunk(chunk))),
        kind => workflow_event(kind),
    };
    pb::WorkflowEvent { step_id: kind.step_id().map(|id| id.to_string()).unwrap_or_default(), event }
}

/// The `WorkflowEvent` oneof and the workflow part of the `RunEvent` oneof hold the same messages; a nested agent
/// chunk is its own variant of the `RunEvent` oneof. `None` for an empty agent chunk.
pub fn workflow_run_event(event: pb::workflow_event::Event) -> Option<pb::run_event::Event> {
    use pb::{run_event::Event as E, workflow_event::Event as W};
    Some(match event {
        W::WorkflowStart(m) => E::WorkflowStart(m),
        W::StepStart(m) => E::StepStart(m),
        W::StepOutput(m) => E::StepOutput(m),
        W::StepProgress(m) => E::StepProgress(m),
        W::StepSuspended(m) => E::StepSuspended(m),
        W::StepWaiting(m) => E::StepWaiting(m),
        W::StepResult(m) => E::StepResult(m),
        W::WorkflowPaused(m) => E::WorkflowPaused(m),
        W::WorkflowCanceled(m) => E::WorkflowCanceled(m),
        W::WorkflowFinish(m) => E::WorkflowFinish(m),
        W::Custom(m) => E::Custom(m),
        W::AgentChunk(m) => return m.chunk.map(Into::into),
    })
}

// ---- network events ----

/// A network event as the `RunEvent.event` variant it is.
pub fn network_run_event(event: &NetworkEvent) -> pb::run_event::Event {
    use pb::run_event::Event as E;
    match event {
        NetworkEvent::RoutingAgentStart { agent_id, network_id, task, iteration, previous } => {
            E::RoutingAgentStart(pb::RoutingAgentStart {
                agent_id: agent_id.to_string(),
                network_id: network_id.to_string(),
                task: task.clone(),
                iteration: *iteration,
                previous: previous.as_deref().map(delegation),
            })
        }
        NetworkEvent::RoutingAgentTextStart => E::RoutingAgentTextStart(pb::RoutingAgentTextStart {}),
        NetworkEvent::RoutingAgentTextDelta { text } => {
            E::RoutingAgentTextDelta(pb::RoutingAgentTextDelta { text: text.clone() })
        }
        NetworkEvent::RoutingAgentEnd { delegation: d, usage: u } => {
            E::RoutingAgentEnd(pb::RoutingAgentEnd { delegation: Some(delegation(d)), usage: Some(usage(u)) })
        }
        NetworkEvent::AgentExecutionStart { agent_id, delegation: d } => {
            E::AgentExecutionStart(pb::AgentExecutionStart {
                agent_id: agent_id.to_string(),
                delegation: Some(delegation(d)),
            })
        }
        NetworkEvent::AgentExecutionEnd { agent_id, delegation: d, usage: u } => {
            E::AgentExecutionEnd(pb::AgentExecutionEnd {
                agent_id: agent_id.to_string(),
                delegation: Some(delegation(d)),
                usage: Some(usage(u)),
            })
        }
        NetworkEvent::AgentExecutionApproval { agent_id, approval, usage: u, selection_reason } => {
            E::AgentExecutionApproval(pb::AgentExecutionApproval {
                agent_id: agent_id.to_string(),
                approval: Some(tool_call_approval(approval)),
                usage: Some(usage(u)),
                selection_reason: selection_reason.clone(),
            })
        }
        NetworkEvent::AgentExecutionSuspended { agent_id, suspended, usage: u, selection_reason } => {
            E::AgentExecutionSuspended(pb::AgentExecutionSuspended {
                agent_id: agent_id.to_string(),
                suspended: Some(tool_call_suspended(suspended)),
                usage: Some(usage(u)),
                selection_reason: selection_reason.clone(),
            })
        }
        NetworkEvent::AgentExecutionEvent { agent_id, chunk } => E::AgentExecutionEvent(pb::AgentExecutionEvent {
            agent_id: agent_id.to_string(),
            chunk: Some(agent_chunk(chunk)),
        }),
        NetworkEvent::WorkflowExecutionStart { workflow_id, workflow_run_id, delegation: d } => {
            E::WorkflowExecutionStart(pb::WorkflowExecutionStart {
                workflow_id: workflow_id.to_string(),
                workflow_run_id: workflow_run_id.to_string(),
                delegation: Some(delegation(d)),
            })
        }
        NetworkEvent::WorkflowExecutionEnd { workflow_id, workflow_run_id, delegation: d, status, usage: u } => {
            E::WorkflowExecutionEnd(pb::WorkflowExecutionEnd {
                workflow_id: workflow_id.to_string(),
                workflow_run_id: workflow_run_id.to_string(),
                delegation: Some(delegation(d)),
                status: run_status(*status) as i32,
                usage: Some(usage(u)),
            })
        }
        NetworkEvent::WorkflowExecutionSuspended {
            workflow_id,
            workflow_run_id,
            suspend_payload,
            usage: u,
            selection_reason,
        } => E::WorkflowExecutionSuspended(pb::WorkflowExecutionSuspended {
            workflow_id: workflow_id.to_string(),
            workflow_run_id: workflow_run_id.to_string(),
            suspend_payload: json(suspend_payload),
            usage: Some(usage(u)),
            selection_reason: selection_reason.clone(),
        }),
        NetworkEvent::WorkflowExecutionEvent { workflow_id, event } => {
            E::WorkflowExecutionEvent(pb::WorkflowExecutionEvent {
                workflow_id: workflow_id.to_string(),
                event: Some(workflow_event_message(event)),
            })
        }
        NetworkEvent::ToolExecutionStart { tool_name, tool_call_id, args, selection_reason } => {
            E::ToolExecutionStart(pb::ToolExecutionStart {
                tool_name: tool_name.to_string(),
                tool_call_id: tool_call_id.to_string(),
                args: opt_json(args),
                selection_reason: selection_reason.clone(),
            })
        }
        NetworkEvent::ToolExecutionEnd { tool_name, tool_call_id, delegation: d } => {
            E::ToolExecutionEnd(pb::ToolExecutionEnd {
                tool_name: tool_name.to_string(),
                tool_call_id: tool_call_id.to_string(),
                delegation: Some(delegation(d)),
            })
        }
        NetworkEvent::ToolExecutionApproval { approval, selection_reason } => {
            E::ToolExecutionApproval(pb::ToolExecutionApproval {
                approval: Some(tool_call_approval(approval)),
                selection_reason: selection_reason.clone(),
            })
        }
        NetworkEvent::ToolExecutionSuspended { suspended, selection_reason } => {
            E::ToolExecutionSuspended(pb::ToolExecutionSuspended {
                suspended: Some(tool_call_suspended(suspended)),
                selection_reason: selection_reason.clone(),
            })
        }
        NetworkEvent::PrimitiveAbort { primitive_type: p, primitive_id } => E::PrimitiveAbort(pb::PrimitiveAbort {
            primitive_type: primitive_type(*p) as i32,
            primitive_id: primitive_id.clone(),
        }),
        NetworkEvent::NetworkStepFinish { task, result, is_complete, iteration } => {
            E::NetworkStepFinish(pb::NetworkStepFinish {
                task: task.clone(),
                result: opt_json(result),
                is_complete: *is_complete,
                iteration: *iteration,
            })
        }
        NetworkEvent::NetworkFinish { delegation: d, object, completion_reason, usage: u } => {
            E::NetworkFinish(pb::NetworkFinish {
                delegation: Some(delegation(d)),
                object: opt_json(object),
                completion_reason: completion_reason.clone(),
                usage: Some(usage(u)),
            })
        }
        NetworkEvent::NetworkValidationStart { iteration, checks_count } => {
            E::NetworkValidationStart(pb::NetworkValidationStart { iteration: *iteration, checks_count: *checks_count })
        }
        NetworkEvent::NetworkValidationEnd {
            iteration,
            passed,
            results,
            duration_ms,
            timed_out,
            reason,
            max_iteration_reached,
        } => E::NetworkValidationEnd(pb::NetworkValidationEnd {
            iteration: *iteration,
            passed: *passed,
            results: json(results),
            duration_ms: *duration_ms,
            timed_out: *timed_out,
            reason: text(reason),
            max_iteration_reached: *max_iteration_reached,
        }),
        NetworkEvent::NetworkObject { object } => E::NetworkObject(pb::NetworkObject { object: json(object) }),
        NetworkEvent::NetworkObjectResult { object } => {
            E::NetworkObjectResult(pb::NetworkObjectResult { object: json(object) })
        }
    }
}

#[cfg(test)]
mod tests;

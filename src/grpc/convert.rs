//! Translation between the engine's and registry's types and the protobuf messages. Pure functions, no I/O.

use std::time::SystemTime;

use prost_types::{ListValue, Struct, Timestamp, value::Kind};
use serde_json::{Map, Number, Value};

use super::convert_agent;
use crate::{
    engine::{
        self, ErrorInfo, EventKind, EventSource, RunKind, RunStatus, StepRecord, StepStatus, ToolMeta, Usage,
        WaitReason,
    },
    pb,
    registry::RunView,
};

// ---- JSON <-> google.protobuf.Value ----

/// JSON to protobuf Value. Numbers become doubles: that is all protobuf's Value can hold.
pub fn json_to_pb(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(json_to_pb).collect() }),
        Value::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn map_to_struct(map: &Map<String, Value>) -> Struct {
    Struct { fields: map.iter().map(|(key, value)| (key.clone(), json_to_pb(value))).collect() }
}

/// Protobuf Value to JSON. Whole doubles become integers, so `{"value": 1}` sent by any client reads as the
/// integer 1 it was meant to be (protobuf's Value cannot say "integer"). A non-finite number becomes null, as
/// JSON has no NaN. An unset Value is null.
pub fn pb_to_json(value: prost_types::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(pb_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)),
    }
}

fn number_to_json(n: f64) -> Value {
    // 2^53: beyond it not every integer is representable as a double, so keep the double as is.
    const EXACT_INT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT_INT {
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

pub fn struct_to_map(s: Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(key, value)| (key, pb_to_json(value))).collect()
}

pub fn opt_json(value: &Option<Value>) -> Option<prost_types::Value> {
    value.as_ref().map(json_to_pb)
}

fn time(t: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(t))
}

// ---- enums ----

pub fn run_status(status: RunStatus) -> pb::RunStatus {
    match status {
        RunStatus::Pending => pb::RunStatus::Pending,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Suspended => pb::RunStatus::Suspended,
        RunStatus::Waiting => pb::RunStatus::Waiting,
        RunStatus::Success => pb::RunStatus::Success,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Canceled => pb::RunStatus::Canceled,
        RunStatus::Tripwire => pb::RunStatus::Tripwire,
        RunStatus::Paused => pb::RunStatus::Paused,
    }
}

pub fn run_kind(kind: RunKind) -> pb::RunKind {
    match kind {
        RunKind::Workflow => pb::RunKind::Workflow,
        RunKind::Agent => pb::RunKind::Agent,
        RunKind::Network => pb::RunKind::Network,
    }
}

pub fn tool_info(tool: &ToolMeta) -> pb::ToolInfo {
    pb::ToolInfo {
        name: tool.name.clone(),
        description: tool.description.clone(),
        parameters: Some(json_to_pb(&tool.parameters)),
        requires_approval: tool.requires_approval,
        resume_schema: opt_json(&tool.resume_schema),
    }
}

/// `None` for UNSPECIFIED (no filter).
pub fn run_status_from_pb(status: pb::RunStatus) -> Option<RunStatus> {
    Some(match status {
        pb::RunStatus::Unspecified => return None,
        pb::RunStatus::Pending => RunStatus::Pending,
        pb::RunStatus::Running => RunStatus::Running,
        pb::RunStatus::Suspended => RunStatus::Suspended,
        pb::RunStatus::Waiting => RunStatus::Waiting,
        pb::RunStatus::Success => RunStatus::Success,
        pb::RunStatus::Failed => RunStatus::Failed,
        pb::RunStatus::Canceled => RunStatus::Canceled,
        pb::RunStatus::Tripwire => RunStatus::Tripwire,
        pb::RunStatus::Paused => RunStatus::Paused,
    })
}

pub fn step_status(status: StepStatus) -> pb::StepStatus {
    match status {
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::Success => pb::StepStatus::Success,
        StepStatus::Failed => pb::StepStatus::Failed,
        StepStatus::Suspended => pb::StepStatus::Suspended,
        StepStatus::Waiting => pb::StepStatus::Waiting,
        StepStatus::Bailed => pb::StepStatus::Bailed,
        StepStatus::Canceled => pb::StepStatus::Canceled,
        StepStatus::Paused => pb::StepStatus::Paused,
        StepStatus::Skipped => pb::StepStatus::Skipped,
    }
}

pub fn wait_reason(reason: WaitReason) -> pb::WaitReason {
    match reason {
        WaitReason::Sleep => pb::WaitReason::Sleep,
        WaitReason::NoWorker => pb::WaitReason::NoWorker,
        WaitReason::WorkersBusy => pb::WaitReason::WorkersBusy,
        WaitReason::RetryBackoff => pb::WaitReason::RetryBackoff,
    }
}

pub fn event_source(source: EventSource) -> pb::EventSource {
    match source {
        EventSource::Workflow => pb::EventSource::Workflow,
        EventSource::User => pb::EventSource::User,
        EventSource::Agent => pb::EventSource::Agent,
        EventSource::Network => pb::EventSource::Network,
        EventSource::System => pb::EventSource::System,
    }
}

pub fn error_info(error: &ErrorInfo) -> pb::ErrorInfo {
    pb::ErrorInfo { name: error.name.clone(), message: error.message.clone(), details: opt_json(&error.details) }
}

pub fn usage(usage: &Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        total_tokens: usage.total_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cached_input_tokens: usage.cached_input_tokens,
        cache_creation_input_tokens: usage.cache_creation_input_tokens,
    }
}

// ---- events ----

/// A log entry (`seq`, `time`, `event`) as the protobuf `RunEvent` clients receive. The server writes this
/// encoding directly (`wire::encode`); this is its reference.
pub fn run_event(run_id: &str, seq: u64, at: SystemTime, event: &engine::Event) -> pb::RunEvent {
    let kind = match &event.kind {
        EventKind::Agent { chunk, .. } => Some(convert_agent::agent_run_event(chunk)),
        EventKind::Network { event, .. } => Some(convert_agent::network_run_event(event)),
        EventKind::RunRecovered { .. } => system_event(&event.kind),
        workflow => workflow_event(workflow).and_then(convert_agent::workflow_run_event),
    };
    pb::RunEvent {
        run_id: run_id.to_string(),
        seq,
        time: time(at),
        source: event_source(event.source) as i32,
        step_id: event.kind.step_id().map(|id| id.to_string()).unwrap_or_default(),
        event: kind,
    }
}

/// The message of a runstream event (source `System`); `None` for any other event.
pub fn system_event(kind: &EventKind) -> Option<pb::run_event::Event> {
    match kind {
        EventKind::RunRecovered { interrupted_phase, completed_steps, reason } => {
            Some(pb::run_event::Event::RunRecovered(pb::RunRecovered {
                interrupted_phase: *interrupted_phase,
                completed_steps: completed_steps.clone(),
                reason: reason.clone(),
            }))
        }
        _ => None,
    }
}

/// The message of a workflow event, in the `WorkflowEvent` oneof (`run_event` moves it to the `RunEvent` oneof,
/// `convert_agent` nests it in network events); `None` for agent, network and system events.
pub fn workflow_event(kind: &EventKind) -> Option<pb::workflow_event::Event> {
    use pb::workflow_event::Event as E;
    Some(match kind {
        EventKind::WorkflowStart { workflow_id, phase, resumed } => E::WorkflowStart(pb::WorkflowStart {
            workflow_id: workflow_id.to_string(),
            phase: *phase,
            resumed: *resumed,
        }),
        EventKind::StepStart { step_id, step_call_id, input, resume_data, iteration_count, attempt } => {
            E::StepStart(pb::StepStart {
                step_id: step_id.to_string(),
                step_call_id: step_call_id.clone(),
                input: Some(json_to_pb(input)),
                resume_data: opt_json(resume_data),
                iteration_count: *iteration_count,
                attempt: *attempt,
            })
        }
        EventKind::StepOutput { step_id, output } => {
            E::StepOutput(pb::StepOutput { step_id: step_id.to_string(), output: Some(json_to_pb(output)) })
        }
        EventKind::StepProgress {
            step_id,
            completed_count,
            total_count,
            current_index,
            iteration_status,
            iteration_output,
        } => E::StepProgress(pb::StepProgress {
            step_id: step_id.to_string(),
            completed_count: *completed_count,
            total_count: *total_count,
            current_index: *current_index,
            iteration_status: step_status(*iteration_status) as i32,
            iteration_output: opt_json(iteration_output),
        }),
        EventKind::StepSuspended {
            step_id,
            step_call_id,
            suspend_payload,
            resume_schema,
            resume_label,
            for_each_index,
        } => E::StepSuspended(pb::StepSuspended {
            step_id: step_id.to_string(),
            step_call_id: step_call_id.clone(),
            suspend_payload: Some(json_to_pb(suspend_payload)),
            resume_schema: opt_json(resume_schema),
            resume_label: resume_label.clone().unwrap_or_default(),
            for_each_index: *for_each_index,
        }),
        EventKind::StepWaiting { step_id, wake_at, reason, task_type, attempt } => E::StepWaiting(pb::StepWaiting {
            step_id: step_id.to_string(),
            wake_at: wake_at.and_then(time),
            reason: wait_reason(*reason) as i32,
            task_type: task_type.as_deref().unwrap_or_default().to_owned(),
            attempt: *attempt,
        }),
        EventKind::StepResult { step_id, step_call_id, status, output, error, attempts, started_at, ended_at } => {
            E::StepResult(pb::StepResult {
                step_id: step_id.to_string(),
                step_call_id: step_call_id.clone(),
                status: step_status(*status) as i32,
                output: opt_json(output),
                error: error.as_ref().map(error_info),
                attempts: *attempts,
                started_at: time(*started_at),
                ended_at: time(*ended_at),
            })
        }
        EventKind::WorkflowPaused => E::WorkflowPaused(pb::WorkflowPaused {}),
        EventKind::WorkflowCanceled { reason } => E::WorkflowCanceled(pb::WorkflowCanceled { reason: reason.clone() }),
        EventKind::WorkflowFinish { status, result, error, usage: u } => E::WorkflowFinish(pb::WorkflowFinish {
            status: run_status(*status) as i32,
            result: opt_json(result),
            error: error.as_ref().map(error_info),
            usage: Some(usage(u)),
        }),
        EventKind::Custom { kind, data, id, transient, .. } => E::Custom(pb::CustomData {
            r#type: kind.clone(),
            data: Some(json_to_pb(data)),
            id: id.clone().unwrap_or_default(),
            transient: *transient,
        }),
        EventKind::Agent { .. } | EventKind::Network { .. } | EventKind::RunRecovered { .. } => return None,
    })
}

// ---- runs ----

fn suspended_paths(view: &RunView) -> Vec<pb::StepPath> {
    view.state.snapshot.suspended.values().map(|s| pb::StepPath { segments: s.path.clone() }).collect()
}

pub fn run_info(view: &RunView) -> pb::RunInfo {
    pb::RunInfo {
        run_id: view.run_id.to_string(),
        workflow_id: view.workflow_id.to_string(),
        resource_id: view.resource_id.clone(),
        status: run_status(view.state.status) as i32,
        created_at: time(view.created_at),
        updated_at: time(view.state.updated_at),
        last_seq: view.last_seq,
        suspended: suspended_paths(view),
        phase: view.state.phase,
        kind: run_kind(view.kind) as i32,
    }
}

fn step_record(record: &StepRecord, fields: &ResultFields) -> pb::StepRecord {
    pb::StepRecord {
        status: step_status(record.status) as i32,
        input: fields.step_inputs.then(|| json_to_pb(&record.input)),
        output: if fields.step_outputs { opt_json(&record.output) } else { None },
        error: record.error.as_ref().map(error_info),
        suspend_payload: opt_json(&record.suspend_payload),
        resume_data: opt_json(&record.resume_data),
        attempts: record.attempts,
        started_at: time(record.started_at),
        ended_at: record.ended_at.and_then(time),
        suspended_at: record.suspended_at.and_then(time),
        resumed_at: record.resumed_at.and_then(time),
    }
}

/// Which parts of a run's outcome GetResult returns (`GetResultRequest.fields`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFields {
    pub result: bool,
    pub error: bool,
    pub input: bool,
    pub steps: bool,
    pub step_inputs: bool,
    pub step_outputs: bool,
    pub suspended: bool,
    pub suspend_payload: bool,
    pub usage: bool,
}

impl Default for ResultFields {
    /// Everything but the step records' inputs and outputs, which repeat the run's input, the previous step's
    /// output or the result: a run whose result fits in a message can always be read.
    fn default() -> Self {
        Self {
            result: true,
            error: true,
            input: true,
            steps: true,
            step_inputs: false,
            step_outputs: false,
            suspended: true,
            suspend_payload: true,
            usage: true,
        }
    }
}

impl ResultFields {
    /// The names `fields` may hold.
    pub const NAMES: [&str; 9] =
        ["result", "error", "input", "steps", "steps.input", "steps.output", "suspended", "suspend_payload", "usage"];

    /// The parts `names` asks for; none named: the default. An unknown name is the error, naming it.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::default());
        }
        let mut fields = Self {
            result: false,
            error: false,
            input: false,
            steps: false,
            step_inputs: false,
            step_outputs: false,
            suspended: false,
            suspend_payload: false,
            usage: false,
        };
        for name in names {
            match name.trim() {
                "result" => fields.result = true,
                "error" => fields.error = true,
                "input" | "payload" => fields.input = true,
                "steps" => fields.steps = true,
                "steps.input" => (fields.steps, fields.step_inputs) = (true, true),
                "steps.output" => (fields.steps, fields.step_outputs) = (true, true),
                "suspended" => fields.suspended = true,
                "suspend_payload" | "suspendPayload" => fields.suspend_payload = true,
                "usage" => fields.usage = true,
                other => {
                    return Err(format!("{other:?} is not a part of a result; name any of {}", Self::NAMES.join(", ")));
                }
            }
        }
        Ok(fields)
    }
}

/// The outcome of a run, with the parts `fields` asks for.
pub fn run_result(view: &RunView, wait_expired: bool, fields: &ResultFields) -> pb::RunResult {
    let snapshot: &engine::RunSnapshot = &view.state.snapshot;
    pb::RunResult {
        run_id: view.run_id.to_string(),
        workflow_id: view.workflow_id.to_string(),
        status: run_status(view.state.status) as i32,
        result: if fields.result { opt_json(&view.state.result) } else { None },
        error: if fields.error { view.state.error.as_ref().map(error_info) } else { None },
        steps: if fields.steps {
            snapshot.steps.iter().map(|(id, record)| (id.clone(), step_record(record, fields))).collect()
        } else {
            Default::default()
        },
        suspended: if fields.suspended { suspended_paths(view) } else { Vec::new() },
        suspend_payload: if fields.suspend_payload {
            snapshot
                .suspended
                .iter()
                .map(|(id, suspended)| (id.clone(), json_to_pb(&suspended.suspend_payload)))
                .collect()
        } else {
            Default::default()
        },
        usage: fields.usage.then(|| usage(&snapshot.usage)),
        last_seq: view.last_seq,
        wait_expired,
        input: fields.input.then(|| json_to_pb(&view.input)),
        kind: run_kind(view.kind) as i32,
    }
}

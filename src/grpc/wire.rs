//! Events go on the wire encoded once.
//!
//! The server streams `EncodedRunEvent`s instead of `RunEvent`s (build.rs maps the proto type to this one for the
//! server only; clients decode ordinary `RunEvent`s, the bytes being identical). A run's log keeps each event
//! encoded by [`WireEncoder`] when it is appended: every field of the `RunEvent` but the two a stream adds, the run
//! id (field 1, the same for the whole stream) and the seq (field 2, given by the log). Since protobuf fields are
//! written in tag order, a stream writes field 1, field 2, then the stored bytes: a run with a thousand observers
//! encodes each event once, and the log does not keep the run id once per event.
//!
//! Events are written straight from the engine's event into one buffer, without building the intermediate
//! `pb::RunEvent` (its strings and `google.protobuf.Struct` B-tree maps cost several times more than the encoding
//! itself: see docs/performance.md). The bytes are identical to prost's encoding of `convert::run_event`, which
//! stays the reference: the tests below compare the two for every kind of event.

use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, skip_field},
};
use serde_json::Value;

use super::{convert, convert_agent};
use crate::{
    engine::{Event, EventKind, EventTooLarge},
    registry::{EventEncoder, LoggedEvent},
};

/// A `RunEvent` already encoded in protobuf wire format: `head` (the run id field, shared by a stream), the seq
/// field, then `body`, the bytes the log stored.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EncodedRunEvent {
    head: Bytes,
    /// 0: no seq field (proto3 omits zero), e.g. a message encoded whole into `body`.
    seq: u64,
    body: Bytes,
}

impl EncodedRunEvent {
    /// A logged event of the run whose [`run_id_field`] is `head`.
    pub fn logged(head: &Bytes, entry: &LoggedEvent) -> Self {
        Self { head: head.clone(), seq: entry.seq, body: entry.bytes.clone() }
    }

    /// A complete encoded `RunEvent`.
    pub fn whole(bytes: Bytes) -> Self {
        Self { head: Bytes::new(), seq: 0, body: bytes }
    }
}

/// Field 1 (`run_id`) of every `RunEvent` of a run, encoded once per stream.
pub fn run_id_field(run_id: &str) -> Bytes {
    let mut buf = Vec::with_capacity(run_id.len() + 2);
    Writer { buf: &mut buf }.string(1, run_id);
    buf.into()
}

impl Message for EncodedRunEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        if self.seq != 0 {
            encode_key(2, WireType::Varint, buf);
            encode_varint(self.seq, buf);
        }
        buf.put_slice(&self.body);
    }

    /// The server only ever encodes this type; decoding skips every field rather than misinterpret it.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let seq = if self.seq == 0 { 0 } else { 1 + encoded_len_varint(self.seq) };
        self.head.len() + seq + self.body.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The stored form of events in a run's log: [`encode_body`]; events larger than `max_event_bytes` as streamed
/// are refused.
#[derive(Debug, Clone, Copy)]
pub struct WireEncoder {
    max_event_bytes: usize,
}

impl WireEncoder {
    /// What clients decode by default (gRPC's customary 4 MiB message limit).
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
    /// Room left for what each stream adds to an event (run id, at most 128 bytes, and seq): a refused event is
    /// one that would be larger than the limit as sent.
    const ENVELOPE: usize = 160;

    /// An encoder whose events, as streamed, are at most `max_event_bytes` long.
    pub fn new(max_event_bytes: usize) -> Self {
        Self { max_event_bytes }
    }
}

impl Default for WireEncoder {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_EVENT_BYTES)
    }
}

impl EventEncoder for WireEncoder {
    fn encode(&self, time: SystemTime, event: &Event, out: &mut Vec<u8>) {
        encode_body(time, event, out);
    }

    fn check_size(&self, body_bytes: usize) -> Result<(), EventTooLarge> {
        if body_bytes.saturating_add(Self::ENVELOPE) > self.max_event_bytes {
            return Err(EventTooLarge { size: body_bytes, limit: self.max_event_bytes });
        }
        Ok(())
    }
}

/// The protobuf encoding of `convert::run_event(run_id, seq, time, event)`, byte for byte: what a stream sends
/// for a logged event, in one buffer.
pub fn encode(run_id: &str, seq: u64, time: SystemTime, event: &Event) -> Bytes {
    let mut buf = run_id_field(run_id).to_vec();
    if seq != 0 {
        encode_key(2, WireType::Varint, &mut buf);
        encode_varint(seq, &mut buf);
    }
    encode_body(time, event, &mut buf);
    buf.into()
}

/// Fields 3 and up of `convert::run_event(run_id, seq, time, event)`'s encoding, written straight from the event and
/// appended to `out`.
pub fn encode_body(time: SystemTime, event: &Event, out: &mut Vec<u8>) {
    let mut w = Writer { buf: out };
    w.timestamp(3, time);
    w.enumeration(4, convert::event_source(event.source) as i32);
    w.string(5, event.kind.step_id().map_or("", |id| &**id));
    match &event.kind {
        EventKind::WorkflowStart { workflow_id, phase, resumed } => w.message(10, |w| {
            w.string(1, workflow_id);
            w.uint(2, u64::from(*phase));
            w.bool(3, *resumed);
        }),
        EventKind::StepStart { step_id, step_call_id, input, resume_data, iteration_count, attempt } => {
            w.message(11, |w| {
                w.string(1, step_id);
                w.string(2, step_call_id);
                w.json(3, input);
                if let Some(data) = resume_data {
                    w.json(4, data);
                }
                w.uint(5, u64::from(*iteration_count));
                w.uint(6, u64::from(*attempt));
            })
        }
        EventKind::StepOutput { step_id, output } => w.message(12, |w| {
            w.string(1, step_id);
            w.json(2, output);
        }),
        EventKind::StepProgress {
            step_id,
            completed_count,
            total_count,
            current_index,
            iteration_status,
            iteration_output,
        } => w.message(13, |w| {
            w.string(1, step_id);
            w.uint(2, u64::from(*completed_count));
            w.uint(3, u64::from(*total_count));
            w.uint(4, u64::from(*current_index));
            w.enumeration(5, convert::step_status(*iteration_status) as i32);
            if let Some(output) = iteration_output {
                w.json(6, output);
            }
        }),
        EventKind::StepSuspended {
            step_id,
            step_call_id,
            suspend_payload,
            resume_schema,
            resume_label,
            for_each_index,
        } => w.message(14, |w| {
            w.string(1, step_id);
            w.string(2, step_call_id);
            w.json(3, suspend_payload);
            if let Some(schema) = resume_schema {
                w.json(4, schema);
            }
            w.string(5, resume_label.as_deref().unwrap_or_default());
            if let Some(index) = for_each_index {
                // proto3 `optional`: present even when 0.
                w.key(6, WireType::Varint);
                encode_varint(u64::from(*index), w.buf);
            }
        }),
        EventKind::StepWaiting { step_id, wake_at, reason, task_type, attempt } => w.message(15, |w| {
            w.string(1, step_id);
            if let Some(wake_at) = wake_at {
                w.timestamp(2, *wake_at);
            }
            w.enumeration(3, convert::wait_reason(*reason) as i32);
            w.string(4, task_type.as_deref().unwrap_or_default());
            w.uint(5, u64::from(*attempt));
        }),
        EventKind::StepResult { step_id, step_call_id, status, output, error, attempts, started_at, ended_at } => w
            .message(16, |w| {
                w.string(1, step_id);
                w.string(2, step_call_id);
                w.enumeration(3, convert::step_status(*status) as i32);
                if let Some(output) = output {
                    w.json(4, output);
                }
                if let Some(error) = error {
                    w.error(5, error);
                }
                w.uint(6, u64::from(*attempts));
                w.timestamp(7, *started_at);
                w.timestamp(8, *ended_at);
            }),
        EventKind::WorkflowPaused => w.message(17, |_| {}),
        EventKind::WorkflowCanceled { reason } => w.message(18, |w| w.string(1, reason)),
        EventKind::WorkflowFinish { status, result, error, usage } => w.message(19, |w| {
            w.enumeration(1, convert::run_status(*status) as i32);
            if let Some(result) = result {
                w.json(2, result);
            }
            if let Some(error) = error {
                w.error(3, error);
            }
            w.message(4, |w| {
                w.uint(1, usage.input_tokens);
                w.uint(2, usage.output_tokens);
                w.uint(3, usage.total_tokens);
                w.uint(4, usage.reasoning_tokens);
                w.uint(5, usage.cached_input_tokens);
                w.uint(6, usage.cache_creation_input_tokens);
            });
        }),
        EventKind::Custom { kind, data, id, transient, .. } => w.message(20, |w| {
            w.string(1, kind);
            w.json(2, data);
            w.string(3, id.as_deref().unwrap_or_default());
            w.bool(4, *transient);
        }),
        // Not written directly yet: prost's encoding of the reference message (same bytes, fields in tag order).
        EventKind::Agent { chunk, .. } => convert_agent::agent_run_event(chunk).encode(w.buf),
        EventKind::Network { event, .. } => convert_agent::network_run_event(event).encode(w.buf),
        EventKind::RunRecovered { .. } => {
            if let Some(event) = convert::system_event(&event.kind) {
                event.encode(w.buf);
            }
        }
    }
}

/// Writes protobuf fields in one pass, as prost does: proto3 scalars are omitted when zero or empty, set message
/// fields always written. A nested message's length prefix is written after its body: one byte is reserved, which
/// is all a body under 128 bytes needs (nearly every event); a longer body is moved right to make room for its
/// longer prefix.
struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn key(&mut self, tag: u32, wire_type: WireType) {
        encode_key(tag, wire_type, self.buf);
    }

    fn uint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.key(tag, WireType::Varint);
            encode_varint(v, self.buf);
        }
    }

    /// Enums and int32/int64 fields: negative values are sign-extended to 10 bytes, as protobuf specifies.
    fn enumeration(&mut self, tag: u32, v: i32) {
        self.uint(tag, i64::from(v) as u64);
    }

    fn bool(&mut self, tag: u32, b: bool) {
        self.uint(tag, u64::from(b));
    }

    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.key(tag, WireType::LengthDelimited);
            encode_varint(s.len() as u64, self.buf);
            self.buf.put_slice(s.as_bytes());
        }
    }

    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        self.key(tag, WireType::LengthDelimited);
        let at = self.buf.len();
        self.buf.push(0);
        body(self);
        let len = self.buf.len() - at - 1;
        if len < 0x80 {
            self.buf[at] = len as u8;
        } else {
            let mut prefix = [0u8; 10];
            let mut slice = &mut prefix[..];
            encode_varint(len as u64, &mut slice);
            let n = encoded_len_varint(len as u64);
            self.buf.splice(at..=at, prefix[..n].iter().copied());
        }
    }

    fn timestamp(&mut self, tag: u32, t: SystemTime) {
        let t = prost_types::Timestamp::from(t);
        self.message(tag, |w| {
            w.uint(1, t.seconds as u64);
            w.uint(2, i64::from(t.nanos) as u64);
        });
    }

    fn error(&mut self, tag: u32, error: &crate::engine::ErrorInfo) {
        self.message(tag, |w| {
            w.string(1, &error.name);
            w.string(2, &error.message);
            if let Some(details) = &error.details {
                w.json(3, details);
            }
        });
    }

    /// A JSON value as the message field `tag` of type google.protobuf.Value.
    fn json(&mut self, tag: u32, v: &Value) {
        self.message(tag, |w| w.value(v));
    }

    /// The body of a google.protobuf.Value, as `convert::json_to_pb` then prost would write it: oneof kind
    /// { null_value = 1; number_value = 2; string_value = 3; bool_value = 4; struct_value = 5; list_value = 6 }, the
    /// member written even when it holds its default. Struct: map<string, Value> fields = 1, each entry { key = 1
    /// (omitted when empty); value = 2 }. ListValue: repeated Value values = 1.
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => {
                self.key(1, WireType::Varint);
                encode_varint(prost_types::NullValue::NullValue as u64, self.buf);
            }
            Value::Number(n) => {
                self.key(2, WireType::SixtyFourBit);
                self.buf.put_f64_le(n.as_f64().unwrap_or(f64::NAN));
            }
            Value::String(s) => {
                self.key(3, WireType::LengthDelimited);
                encode_varint(s.len() as u64, self.buf);
                self.buf.put_slice(s.as_bytes());
            }
            Value::Bool(b) => {
                self.key(4, WireType::Varint);
                encode_varint(u64::from(*b), self.buf);
            }
            Value::Object(map) => self.message(5, |w| {
                for (key, value) in map {
                    w.message(1, |w| {
                        w.string(1, key);
                        w.json(2, value);
                    });
                }
            }),
            Value::Array(items) => self.message(6, |w| {
                for item in items {
                    w.json(1, item);
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use serde_json::json;

    use super::*;
    use crate::engine::{ErrorInfo, EventSource, RunStatus, StepStatus, Usage, WaitReason};

    #[test]
    fn direct_encoding_is_byte_identical_to_prost() {
        let step: Arc<str> = "child.flood".into();
        let values = [
            json!({ "i": 0 }),
            json!({ "i": 123_456_789 }),
            json!(null),
            json!(false),
            json!(true),
            json!(-1.5),
            json!(""),
            json!("héllo"),
            json!([]),
            json!({}),
            json!({ "": 1, "a": [1, "x", null, { "b": [[], {}, [true]] }], "long": "x".repeat(300) }),
            json!([[[[{ "deep": [1, 2, { "deeper": { "k": "v".repeat(20_000) } }] }]]], { "z": 0.0 }]),
        ];
        let t0 = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let error = |details: Option<Value>| ErrorInfo { name: "StepError".into(), message: "boom".into(), details };
        let mut events = vec![
            (EventSource::Workflow, EventKind::WorkflowStart { workflow_id: "wf".into(), phase: 1, resumed: false }),
            (EventSource::Workflow, EventKind::WorkflowStart { workflow_id: "".into(), phase: 0, resumed: true }),
            (EventSource::Workflow, EventKind::WorkflowPaused),
            (EventSource::Workflow, EventKind::WorkflowCanceled { reason: "canceled by CancelRun".into() }),
            (EventSource::Workflow, EventKind::WorkflowCanceled { reason: String::new() }),
            (
                EventSource::Workflow,
                EventKind::StepWaiting {
                    step_id: step.clone(),
                    wake_at: Some(t0),
                    reason: WaitReason::Sleep,
                    task_type: None,
                    attempt: 0,
                },
            ),
            (
                EventSource::Workflow,
                EventKind::StepWaiting {
                    step_id: step.clone(),
                    wake_at: None,
                    reason: WaitReason::NoWorker,
                    task_type: Some("resize".into()),
                    attempt: 0,
                },
            ),
            (
                EventSource::Workflow,
                EventKind::StepWaiting {
                    step_id: step.clone(),
                    wake_at: Some(t0),
                    reason: WaitReason::RetryBackoff,
                    task_type: None,
                    attempt: 3,
                },
            ),
            (
                EventSource::Workflow,
                EventKind::WorkflowFinish {
                    status: RunStatus::Success,
                    result: None,
                    error: None,
                    usage: Usage::default(),
                },
            ),
        ];
        for v in &values {
            events.push((EventSource::User, EventKind::StepOutput { step_id: step.clone(), output: v.clone() }));
            events.push((
                EventSource::Workflow,
                EventKind::StepProgress {
                    step_id: step.clone(),
                    completed_count: 3,
                    total_count: 10,
                    current_index: 0,
                    iteration_status: StepStatus::Success,
                    iteration_output: Some(v.clone()),
                },
            ));
            events.push((
                EventSource::Workflow,
                EventKind::StepStart {
                    step_id: step.clone(),
                    step_call_id: "call-1".into(),
                    input: v.clone(),
                    resume_data: Some(v.clone()),
                    iteration_count: 2,
                    attempt: 2,
                },
            ));
            events.push((
                EventSource::Workflow,
                EventKind::StepSuspended {
                    step_id: step.clone(),
                    step_call_id: "call-2".into(),
                    suspend_payload: v.clone(),
                    resume_schema: Some(v.clone()),
                    resume_label: Some("label".into()),
                    for_each_index: Some(0),
                },
            ));
            events.push((
                EventSource::Workflow,
                EventKind::StepResult {
                    step_id: step.clone(),
                    step_call_id: "call-3".into(),
                    status: StepStatus::Failed,
                    output: Some(v.clone()),
                    error: Some(error(Some(v.clone()))),
                    attempts: 3,
                    started_at: t0,
                    ended_at: t0 + Duration::from_millis(5),
                },
            ));
            events.push((
                EventSource::Workflow,
                EventKind::WorkflowFinish {
                    status: RunStatus::Failed,
                    result: Some(v.clone()),
                    error: Some(error(None)),
                    usage: Usage { input_tokens: 1, output_tokens: 2, total_tokens: 3, ..Usage::default() },
                },
            ));
            events.push((
                EventSource::User,
                EventKind::Custom {
                    step_id: step.clone(),
                    kind: "data-x".into(),
                    data: v.clone(),
                    id: Some("id-1".into()),
                    transient: true,
                },
            ));
        }
        events.push((EventSource::User, EventKind::StepOutput { step_id: "".into(), output: json!(1) }));
        events.push((
            EventSource::Workflow,
            EventKind::StepStart {
                step_id: step.clone(),
                step_call_id: String::new(),
                input: json!(null),
                resume_data: None,
                iteration_count: 0,
                attempt: 0,
            },
        ));
        events.push((
            EventSource::Workflow,
            EventKind::StepSuspended {
                step_id: step.clone(),
                step_call_id: String::new(),
                suspend_payload: json!({}),
                resume_schema: None,
                resume_label: None,
                for_each_index: None,
            },
        ));
        events.push((
            EventSource::Workflow,
            EventKind::StepResult {
                step_id: step.clone(),
                step_call_id: String::new(),
                status: StepStatus::Success,
                output: None,
                error: None,
                attempts: 0,
                started_at: SystemTime::UNIX_EPOCH,
                ended_at: SystemTime::UNIX_EPOCH - Duration::from_millis(1500),
            },
        ));
        events.push((
            EventSource::User,
            EventKind::Custom {
                step_id: step.clone(),
                kind: String::new(),
                data: json!(2),
                id: None,
                transient: false,
            },
        ));
        events.push((
            EventSource::Workflow,
            EventKind::StepProgress {
                step_id: step.clone(),
                completed_count: 0,
                total_count: 0,
                current_index: 0,
                iteration_status: StepStatus::Failed,
                iteration_output: None,
            },
        ));
        for time in [SystemTime::UNIX_EPOCH, SystemTime::now(), SystemTime::UNIX_EPOCH - Duration::from_millis(1500)] {
            for (i, (source, kind)) in events.iter().enumerate() {
                let event = Event { source: *source, kind: kind.clone() };
                let seq = [1, 127, 128, 300, 16_384, 1 << 40][i % 6];
                for run_id in ["", "0196a3c4-7e5f-7a1b-9c2d-3e4f5a6b7c8d"] {
                    let expected = convert::run_event(run_id, seq, time, &event).encode_to_vec();
                    assert_eq!(encode(run_id, seq, time, &event).as_ref(), expected.as_slice(), "{kind:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use std::{sync::Arc, time::SystemTime};

    use serde_json::json;

    use super::*;
    use crate::{
        engine::EventSource,
        registry::{LogReader, ReadUntil},
    };

    #[tokio::test]
    async fn a_stream_sends_the_logged_bytes_with_its_run_id_and_seq() {
        let log = Arc::new(crate::registry::EventLog::new(Arc::new(WireEncoder::default())));
        let event = Event {
            source: EventSource::User,
            kind: EventKind::StepOutput { step_id: "s".into(), output: json!({ "i": 1 }) },
        };
        let time = SystemTime::now();
        for _ in 0..300 {
            log.append(&event, time);
        }
        let head = run_id_field("run-1");
        let mut reader = LogReader::new(log, 299, ReadUntil::Run { close_on_suspend: true });
        let entry = reader.next().await.expect("event 300");
        let sent = EncodedRunEvent::logged(&head, &entry);
        let expected = convert::run_event("run-1", 300, time, &event).encode_to_vec();
        assert_eq!(sent.encode_to_vec(), expected);
        assert_eq!(sent.encoded_len(), expected.len());
        assert_eq!(encode("run-1", 300, time, &event), expected);
        assert_eq!(EncodedRunEvent::whole(expected.clone().into()).encode_to_vec(), expected);
    }
}

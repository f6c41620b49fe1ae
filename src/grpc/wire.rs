//! Events go on the wire encoded once.
//!
//! The server streams `EncodedRunEvent`s instead of `RunEvent`s (build.rs maps the proto type to this one for the
//! server only; clients decode ordinary `RunEvent`s, the bytes being identical). Each log entry's encoding is
//! cached in the entry itself, so a run with a thousand observers encodes each event once, not a thousand times.

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

use super::convert;
use crate::registry::LogEntry;

/// A `RunEvent` already encoded in protobuf wire format.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EncodedRunEvent(pub Bytes);

impl EncodedRunEvent {
    /// The entry's encoding, made by the first caller and shared with every later one.
    pub fn of(run_id: &str, entry: &LogEntry) -> Self {
        let bytes = entry.wire_cache().get_or_init(|| convert::run_event(run_id, entry).encode_to_vec().into());
        Self(bytes.clone())
    }
}

impl Message for EncodedRunEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
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
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

//! An incremental decoder of server-sent events (the WHATWG `text/event-stream` format), as much of it as
//! Chat Completions streaming uses.
//!
//! Network reads split the stream anywhere: inside a line, between `\r` and `\n`, inside a UTF-8 character. The
//! decoder buffers bytes and only decodes complete lines (line ends are ASCII, so a complete line never ends
//! inside a character). `data:` lines of one event are joined with `\n`; comments (`:` lines, used as keep-alives)
//! and the `id`/`retry` fields are skipped; the `event` name is kept because some servers send `event: error`.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    /// Bytes not yet decoded: at most one incomplete line.
    buf: Vec<u8>,
    /// How far `buf` has been searched for a line end, so a long line arriving in small reads is scanned once.
    scanned: usize,
    /// At the very start of the stream, where a byte-order mark may appear.
    at_start: bool,
    /// The event being assembled.
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl SseDecoder {
    pub(crate) fn new() -> Self {
        Self { at_start: true, ..Self::default() }
    }

    /// Decodes the complete lines in `bytes` (plus what earlier calls left over) and appends the events they
    /// complete to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        // Taken out of `self` so that lines can be borrowed from it while `self.line` mutates the rest.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        let mut pos = self.scanned;
        loop {
            let Some(offset) = buf[pos..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                pos = buf.len();
                break;
            };
            let end = pos + offset;
            let next = match (buf[end], buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => end + 2,
                // A lone `\r` at the end of the read: its `\n` may come in the next one. Decide then.
                (b'\r', None) => {
                    pos = end;
                    break;
                }
                _ => end + 1,
            };
            self.line(&buf[start..end], out);
            start = next;
            pos = next;
        }
        buf.drain(..start);
        self.scanned = pos - start;
        self.buf = buf;
    }

    /// The stream ended. Returns the event still being assembled (its data lines arrived, but not the blank line
    /// that dispatches it): the spec says to discard it, but servers that close right after `data: [DONE]` are
    /// common, so the caller decides.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.scanned = 0;
            self.line(&line, out);
        }
        self.has_data.then(|| {
            self.has_data = false;
            SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) }
        })
    }

    fn line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) {
        if std::mem::take(&mut self.at_start) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
            } else {
                self.event = None;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> (Vec<SseEvent>, Option<SseEvent>) {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            decoder.feed(chunk, &mut out);
        }
        let rest = decoder.finish(&mut out);
        (out, rest)
    }

    fn data(event: &SseEvent) -> &str {
        &event.data
    }

    const STREAM: &str = "\u{feff}: keep-alive comment\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: message\ndata: first\ndata:second\nid: 7\nretry: 100\n\ndata: caf\u{e9} \u{1f600}\r\rdata: [DONE]\n\n";

    #[test]
    fn every_split_point_decodes_the_same() {
        let (whole, rest) = decode_in_pieces(STREAM.as_bytes(), usize::MAX);
        assert_eq!(rest, None);
        let datas: Vec<&str> = whole.iter().map(data).collect();
        assert_eq!(datas, ["{\"a\":1}", "first\nsecond", "caf\u{e9} \u{1f600}", "[DONE]"]);
        assert_eq!(whole[1].event.as_deref(), Some("message"));
        assert_eq!(whole[0].event, None);
        for piece in 1..STREAM.len() {
            assert_eq!(decode_in_pieces(STREAM.as_bytes(), piece).0, whole, "pieces of {piece} bytes");
        }
        // Every two-piece split, including between `\r` and `\n` and inside multi-byte characters.
        for cut in 0..=STREAM.len() {
            let mut decoder = SseDecoder::new();
            let mut out = Vec::new();
            decoder.feed(&STREAM.as_bytes()[..cut], &mut out);
            decoder.feed(&STREAM.as_bytes()[cut..], &mut out);
            assert_eq!(decoder.finish(&mut out), None);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_handed_back_at_the_end() {
        let (events, rest) = decode_in_pieces(b"data: {\"x\":1}\n\ndata: [DONE]", 3);
        assert_eq!(events.len(), 1);
        assert_eq!(rest.map(|e| e.data), Some("[DONE]".to_owned()));
        let (events, rest) = decode_in_pieces(b"data: [DONE]\r", 1);
        assert!(events.is_empty());
        assert_eq!(rest.map(|e| e.data), Some("[DONE]".to_owned()));
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        let (events, rest) = decode_in_pieces(b"\n\n: ping\n\nevent: x\n\ndata\n\n", 2);
        assert_eq!(events, [SseEvent { event: None, data: String::new() }]);
        assert_eq!(rest, None);
    }
}

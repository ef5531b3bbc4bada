//! An incremental Server-Sent Events parser (the `text/event-stream` format of the WHATWG HTML
//! spec): feed it bytes as they arrive, in chunks split anywhere, and take complete events out.
//!
//! Lines end in `\n`, `\r\n` or `\r`; `data:` lines accumulate (joined by `\n`); a blank line
//! dispatches the event; lines starting with `:` are comments; `id` and `retry` are ignored.
//! An event larger than [`MAX_EVENT_BYTES`] is an error rather than unbounded memory.

use crate::error::{Error, Result};

/// Largest event (or line) accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field (empty when absent: the spec's default type is `message`).
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Incremental parser. See the module docs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for a line end (avoids quadratic rescans).
    scanned: usize,
    event: String,
    data: String,
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` in the next chunk belongs to it.
    skip_lf: bool,
    /// A leading byte-order mark has been checked for.
    bom_checked: bool,
}

impl SseParser {
    /// A new parser.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds a chunk and appends every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        let mut chunk = chunk;
        if self.skip_lf {
            if let Some((&b'\n', rest)) = chunk.split_first() {
                chunk = rest;
            }
            if !chunk.is_empty() {
                self.skip_lf = false;
            }
        }
        self.buf.extend_from_slice(chunk);
        if !self.bom_checked {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(());
            }
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            self.bom_checked = true;
        }
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let line_end = i;
                let mut next = i + 1;
                if b == b'\r' {
                    match self.buf.get(next) {
                        Some(b'\n') => next += 1,
                        Some(_) => {}
                        // The `\n` of a `\r\n` may be in the next chunk.
                        None => self.skip_lf = true,
                    }
                }
                let line = self.buf[start..line_end].to_vec();
                self.line(&line, out)?;
                start = next;
                i = next;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(Error::MalformedResponse(format!(
                "event stream line longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Ends the input: a last event missing its closing blank line is dispatched (leniency for
    /// servers that end the body right after the final `data:` line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, out)?;
        }
        self.scanned = 0;
        self.line(b"", out)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            } else {
                self.event.clear();
            }
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = std::str::from_utf8(value)
            .map_err(|_| Error::MalformedResponse("event stream is not valid UTF-8".into()))?;
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > MAX_EVENT_BYTES {
                    return Err(Error::MalformedResponse(format!(
                        "event stream event larger than {MAX_EVENT_BYTES} bytes"
                    )));
                }
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn basic_events() {
        let evs = parse_all(&[
            b"event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\ndata: y\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "x\ny".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn crlf_split_across_chunks() {
        let evs = parse_all(&[b"data: a\r", b"\n\r", b"\ndata:b\r\r"]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "a");
        assert_eq!(evs[1].data, "b");
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        assert!(parse_all(&[b"data: partial\n"]).is_empty());
        assert!(parse_all(&[b"data: partial"]).is_empty());
    }

    #[test]
    fn finish_dispatches_an_unterminated_last_event() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: [DONE]", &mut out).unwrap();
        assert!(out.is_empty());
        p.finish(&mut out).unwrap();
        assert_eq!(out[0].data, "[DONE]");
    }

    #[test]
    fn bom_and_invalid_utf8() {
        assert_eq!(parse_all(&[b"\xEF\xBB", b"\xBFdata: z\n\n"])[0].data, "z");
        let mut p = SseParser::new();
        assert!(p.feed(b"data: \xff\n\n", &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_events(
            lines in proptest::collection::vec(
                prop_oneof![
                    "data: [a-z {}\":]{0,12}".prop_map(|s| s),
                    Just(String::new()),
                    "event: [a-z_]{1,8}".prop_map(|s| s),
                    Just(": keepalive".to_string()),
                ], 0..20),
            sep in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let text: String = lines.iter().map(|l| format!("{l}{sep}")).collect();
            let bytes = text.as_bytes();
            let whole = parse_all(&[bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&bytes[prev..c]); prev = c; }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }
}

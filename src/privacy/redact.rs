//! Redaction (spans → stable placeholders such as `<EMAIL_1>`) and re-hydration of answers,
//! whole or streamed.
//!
//! Within one request the same value always gets the same placeholder, across messages.
//! Placeholders are numbered per kind (`<EMAIL_1>`, `<EMAIL_2>`, `<PHONE_1>`); a placeholder
//! that already appears literally in the input is never reused for a value, so re-hydration
//! cannot confuse the user's own text with a redacted value.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{PiiSpan, Scanner};
use crate::request::Message;

/// Redacts every message with `scanner`. Returns the redacted messages and the
/// [`Rehydrator`] that maps the placeholders back to the original values.
pub fn redact_messages(messages: &[Message], scanner: &Scanner) -> (Vec<Message>, Rehydrator) {
    redact_messages_with_spans(messages, &scanner.scan_messages(messages))
}

/// Like [`redact_messages`], with spans already found (`(message index, span)`, in order, as
/// [`crate::inspect::Features::pii_spans`] holds them): the router scans a request once.
pub fn redact_messages_with_spans(
    messages: &[Message],
    spans: &[(usize, PiiSpan)],
) -> (Vec<Message>, Rehydrator) {
    let mut r = Redactor::new(messages.iter().map(|m| m.content.as_str()));
    let out = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Message {
            role: m.role,
            content: r.redact(
                &m.content,
                spans.iter().filter(|(at, _)| *at == i).map(|(_, s)| s),
            ),
        })
        .collect();
    (out, r.into_rehydrator())
}

/// Redacts one text (see [`redact_messages`]).
pub fn redact_text(text: &str, scanner: &Scanner) -> (String, Rehydrator) {
    let mut r = Redactor::new(std::iter::once(text));
    let out = r.redact(text, scanner.scan(text).iter());
    (out, r.into_rehydrator())
}

/// Assigns placeholders for one request.
struct Redactor {
    by_value: HashMap<String, String>,
    counters: HashMap<String, usize>,
    /// Placeholder-shaped tokens already present in the input.
    taken: HashSet<String>,
    map: HashMap<String, String>,
}

impl Redactor {
    fn new<'a>(inputs: impl Iterator<Item = &'a str>) -> Self {
        let mut taken = HashSet::new();
        for text in inputs {
            let mut i = 0;
            while let Some(off) = text[i..].find('<') {
                let at = i + off;
                if let Some(len) = placeholder_len(&text[at..]) {
                    taken.insert(text[at..at + len].to_string());
                }
                i = at + 1;
            }
        }
        Redactor {
            by_value: HashMap::new(),
            counters: HashMap::new(),
            taken,
            map: HashMap::new(),
        }
    }

    /// Replaces `spans` (sorted, non-overlapping, as the scanner returns them) in `text`.
    fn redact<'s>(&mut self, text: &str, spans: impl Iterator<Item = &'s PiiSpan>) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for span in spans {
            let (Some(value), Some(gap)) =
                (text.get(span.start..span.end), text.get(last..span.start))
            else {
                continue;
            };
            out.push_str(gap);
            let placeholder = self.placeholder(&span.kind, value);
            out.push_str(&placeholder);
            last = span.end;
        }
        out.push_str(text.get(last..).unwrap_or_default());
        out
    }

    fn placeholder(&mut self, kind: &str, value: &str) -> String {
        if let Some(p) = self.by_value.get(value) {
            return p.clone();
        }
        let label = label(kind);
        let counter = self.counters.entry(label.clone()).or_insert(0);
        let p = loop {
            *counter += 1;
            let p = format!("<{label}_{counter}>");
            if !self.taken.contains(&p) {
                break p;
            }
        };
        self.by_value.insert(value.to_string(), p.clone());
        self.map.insert(p.clone(), value.to_string());
        p
    }

    fn into_rehydrator(self) -> Rehydrator {
        let max_len = self.map.keys().map(String::len).max().unwrap_or(0);
        Rehydrator {
            map: self.map,
            max_len,
            pending: String::new(),
        }
    }
}

/// `credit_card` → `CREDIT_CARD`; anything outside `[A-Z0-9]` becomes `_`.
fn label(kind: &str) -> String {
    let l: String = kind
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if l.is_empty() {
        "PII".into()
    } else {
        l
    }
}

/// Length of a placeholder-shaped token `<[A-Z0-9_]+_[0-9]+>` at the start of `s`.
fn placeholder_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return None;
    }
    let close = b.iter().take(96).position(|&c| c == b'>')?;
    let body = &b[1..close];
    let us = body.iter().rposition(|&c| c == b'_')?;
    let ok = us > 0
        && us + 1 < body.len()
        && body[..us]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        && body[us + 1..].iter().all(u8::is_ascii_digit);
    ok.then_some(close + 1)
}

/// Maps placeholders back to the original values, for a whole answer ([`rehydrate`]) or a
/// streamed one ([`push`] each chunk, then [`finish`]).
///
/// `Debug` shows only how many placeholders it holds, never the values.
///
/// [`rehydrate`]: Rehydrator::rehydrate
/// [`push`]: Rehydrator::push
/// [`finish`]: Rehydrator::finish
#[derive(Clone, Default)]
pub struct Rehydrator {
    map: HashMap<String, String>,
    max_len: usize,
    /// Streamed text held back because it may be the start of a placeholder.
    pending: String,
}

impl fmt::Debug for Rehydrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rehydrator")
            .field("placeholders", &self.map.len())
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

impl Rehydrator {
    /// Number of distinct placeholders (redacted values).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Replaces every known placeholder in `text` with its original value. Unknown
    /// placeholder-shaped text is left as is.
    pub fn rehydrate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let mut i = 0;
        while let Some(off) = text[i..].find('<') {
            let at = i + off;
            let hit = placeholder_len(&text[at..])
                .and_then(|len| self.map.get(&text[at..at + len]).map(|v| (len, v)));
            match hit {
                Some((len, value)) => {
                    out.push_str(&text[last..at]);
                    out.push_str(value);
                    last = at + len;
                    i = last;
                }
                None => i = at + 1,
            }
        }
        out.push_str(&text[last..]);
        out
    }

    /// Streaming: feeds one chunk and returns the re-hydrated text that is safe to show now.
    /// A trailing fragment that could be the start of a placeholder (`<EMA`) is held back until
    /// the next chunk decides it, so a placeholder split across chunks is never shown.
    pub fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let hold = self.pending.rfind('<').filter(|&at| {
            let tail = &self.pending[at..];
            self.map
                .keys()
                .any(|k| k.len() > tail.len() && k.starts_with(tail))
        });
        let ready_len = hold.unwrap_or(self.pending.len());
        let out = self.rehydrate(&self.pending[..ready_len]);
        self.pending.drain(..ready_len);
        out
    }

    /// Streaming: the end of the answer; returns whatever was held back (re-hydrated).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.rehydrate(&rest)
    }

    /// The longest placeholder, in bytes (the most [`push`](Rehydrator::push) ever holds back).
    pub fn max_placeholder_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_shape() {
        assert_eq!(placeholder_len("<EMAIL_1> x"), Some(9));
        assert_eq!(placeholder_len("<CREDIT_CARD_12>"), Some(16));
        assert_eq!(placeholder_len("<EMAIL_>"), None);
        assert_eq!(placeholder_len("<_1>"), None);
        assert_eq!(placeholder_len("<email_1>"), None);
        assert_eq!(placeholder_len("<EMAIL_1"), None);
        assert_eq!(label("credit_card"), "CREDIT_CARD");
        assert_eq!(label("employee-id"), "EMPLOYEE_ID");
    }
}

//! In-process PII and secret detection ([`Scanner`]), redaction and re-hydration.
//!
//! Interface placeholder: the detectors live in `detect.rs`, redaction in `redact.rs`.

use serde::Serialize;

use crate::error::{Error, Result};

/// Built-in detector kinds, as named in policies and in `edgeroute pii scan`.
pub const BUILTIN_KINDS: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "secret",
];

/// A custom regex detector from a policy's `[privacy]` section.
#[derive(Debug, Clone)]
pub struct CustomPattern {
    /// Kind name reported for matches.
    pub kind: String,
    /// The regex source.
    pub regex: String,
}

/// A custom keyword list from a policy's `[privacy]` section.
#[derive(Debug, Clone)]
pub struct KeywordList {
    /// Kind name reported for matches.
    pub kind: String,
    /// Words matched case-insensitively at word boundaries.
    pub words: Vec<String>,
}

/// What the scanner looks for.
#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    /// Built-in kinds enabled (default: all of [`BUILTIN_KINDS`]).
    pub kinds: Vec<String>,
    /// Custom regex detectors.
    pub patterns: Vec<CustomPattern>,
    /// Custom keyword detectors.
    pub keywords: Vec<KeywordList>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            kinds: BUILTIN_KINDS.iter().map(|k| k.to_string()).collect(),
            patterns: Vec::new(),
            keywords: Vec::new(),
        }
    }
}

/// One detected span. `Debug` shows kind and offsets only, never the matched text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PiiSpan {
    /// Detector kind (`email`, `phone`, ... or a custom name).
    pub kind: String,
    /// UTF-8 byte offset of the first byte.
    pub start: usize,
    /// UTF-8 byte offset one past the last byte.
    pub end: usize,
    /// Detector confidence in [0, 1].
    pub confidence: f32,
}

/// A compiled scanner. Cheap to share (`Send + Sync`); build once per policy.
#[derive(Debug, Clone)]
pub struct Scanner {
    email: regex::Regex,
    enabled_email: bool,
}

impl Scanner {
    /// Compiles the detectors. Fails on an invalid custom regex, naming it.
    pub fn new(config: &PrivacyConfig) -> Result<Self> {
        let email = regex::Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
            .map_err(|e| Error::Config(format!("email regex: {e}")))?;
        Ok(Scanner {
            email,
            enabled_email: config.kinds.iter().any(|k| k == "email"),
        })
    }

    /// Finds PII spans in `text`, sorted by start offset, non-overlapping.
    pub fn scan(&self, text: &str) -> Vec<PiiSpan> {
        if !self.enabled_email {
            return Vec::new();
        }
        self.email
            .find_iter(text)
            .map(|m| PiiSpan {
                kind: "email".into(),
                start: m.start(),
                end: m.end(),
                confidence: 0.9,
            })
            .collect()
    }
}

/// Maps placeholders back to the original values (temporary stub until redaction lands).
#[derive(Debug, Clone, Default)]
pub struct Rehydrator {
    pairs: Vec<(String, String)>,
}

impl Rehydrator {
    /// Number of placeholders.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }
    /// True when nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
    /// Replaces placeholders in a whole text.
    pub fn rehydrate(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (p, v) in &self.pairs {
            out = out.replace(p, v);
        }
        out
    }
    /// Streaming: feed a chunk, get what is safe to emit.
    pub fn push(&mut self, chunk: &str) -> String {
        self.rehydrate(chunk)
    }
    /// Streaming: flush.
    pub fn finish(&mut self) -> String {
        String::new()
    }
}

/// Replaces PII spans in messages with placeholders.
pub fn redact_messages(
    messages: &[crate::request::Message],
    scanner: &Scanner,
) -> (Vec<crate::request::Message>, Rehydrator) {
    let mut r = Rehydrator::default();
    let out = messages
        .iter()
        .map(|m| {
            let mut content = m.content.clone();
            for s in scanner.scan(&m.content).iter().rev() {
                let value = m.content[s.start..s.end].to_string();
                let p = format!("<{}_{}>", s.kind.to_uppercase(), r.pairs.len() + 1);
                content.replace_range(s.start..s.end, &p);
                r.pairs.push((p, value));
            }
            crate::request::Message {
                role: m.role,
                content,
            }
        })
        .collect();
    (out, r)
}

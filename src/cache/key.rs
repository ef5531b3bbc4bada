//! The cache key: SHA-256 over a canonical, length-prefixed encoding of everything that changes
//! the answer.
//!
//! The request is *destructured* (no `..`), so adding a field to [`Request`], [`Message`] or
//! [`GenerationParams`] is a compile error here until someone decides whether it belongs in the key.

use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::request::{GenerationParams, Message, Request, Role};

/// Domain-separation tag hashed first; bump the version when the encoding changes.
const DOMAIN: &[u8] = b"edgeroute/cache-key/v1";

/// The privacy class of a request: an answer is never served to a request of another class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyClass {
    /// The request contained no personal data.
    Public,
    /// The request contained personal data (the privacy scanner found PII).
    Private,
}

impl PrivacyClass {
    /// `Private` when the scanner found anything, `Public` otherwise.
    pub fn from_pii(found_pii: bool) -> Self {
        if found_pii {
            PrivacyClass::Private
        } else {
            PrivacyClass::Public
        }
    }

    /// One-byte tag used in the key encoding and the stored record.
    pub(crate) fn tag(self) -> u8 {
        match self {
            PrivacyClass::Public => 1,
            PrivacyClass::Private => 2,
        }
    }

    /// Inverse of [`PrivacyClass::tag`].
    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(PrivacyClass::Public),
            2 => Some(PrivacyClass::Private),
            _ => None,
        }
    }

    /// Lower-case name (`public`, `private`).
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyClass::Public => "public",
            PrivacyClass::Private => "private",
        }
    }
}

/// What the key depends on besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    /// Identity of the model(s) that may answer, as the router knows it before deciding
    /// (e.g. `"local=smollm2-135m@<sha>;cloud=gpt-4o-mini"`). Changing the model changes the key.
    pub model: &'a str,
    /// Version (or content hash) of the compiled policy: a new policy never serves old answers.
    pub policy_version: &'a str,
    /// The request's privacy class.
    pub privacy: PrivacyClass,
    /// Normalise message text (Unicode NFC, line endings, trailing whitespace; see
    /// [`normalize_text`]) before hashing.
    /// Default in [`crate::cache::CacheConfig`]: `true`.
    pub normalize: bool,
}

/// A cache key: the 32-byte digest plus the privacy class it was computed for (the class is
/// hashed into the digest *and* checked against the stored record). `Debug` shows the class
/// only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    digest: [u8; 32],
    privacy: PrivacyClass,
}

impl CacheKey {
    /// Computes the key of `request` in `ctx`.
    pub fn new(request: &Request, ctx: &KeyContext<'_>) -> Self {
        let Request {
            messages,
            params,
            // The deadline, tags and task steer the *decision* (which tier answers), not the
            // answer itself: the same prompt, model, params and policy give the same answer.
            deadline: _,
            tags: _,
            task: _,
            // Whether to use the cache at all (the router's question, not the key's).
            skip_cache: _,
        } = request;
        let GenerationParams {
            max_tokens,
            temperature,
            top_p,
            seed,
            repetition_penalty,
        } = params;
        let KeyContext {
            model,
            policy_version,
            privacy,
            normalize,
        } = *ctx;

        let mut enc = Encoder::default();
        enc.bytes(DOMAIN);
        enc.u8(privacy.tag());
        enc.bytes(model.as_bytes());
        enc.bytes(policy_version.as_bytes());
        enc.opt_u64(max_tokens.map(u64::from));
        enc.opt_f32(*temperature);
        enc.opt_f32(*top_p);
        enc.opt_u64(*seed);
        enc.opt_f32(*repetition_penalty);
        enc.u64(messages.len() as u64);
        let mut scratch = String::new();
        for message in messages {
            let Message { role, content } = message;
            enc.u8(role_tag(*role));
            if normalize {
                normalize_into(content, &mut scratch);
                enc.bytes(scratch.as_bytes());
            } else {
                enc.bytes(content.as_bytes());
            }
        }
        let d = digest::digest(&digest::SHA256, &enc.buf);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        CacheKey {
            digest: out,
            privacy,
        }
    }

    /// The digest bytes. The store files an entry under a keyed hash of them
    /// ([`EncryptionKey::entry_id`](super::EncryptionKey::entry_id)), never under the digest
    /// itself: anyone can recompute it from a guessed prompt.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The privacy class the key was computed for.
    pub fn privacy(&self) -> PrivacyClass {
        self.privacy
    }

    /// Full lower-case hex of the digest. Like [`CacheKey::as_bytes`], it confirms a guessed
    /// prompt: keep it out of logs.
    pub fn to_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Shows the privacy class only: even a prefix of the digest lets whoever reads a log confirm
/// a guessed prompt.
impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("privacy", &self.privacy)
            .field("digest", &"<redacted>")
            .finish()
    }
}

fn role_tag(role: Role) -> u8 {
    match role {
        Role::System => 1,
        Role::User => 2,
        Role::Assistant => 3,
    }
}

/// NFC, line endings as `\n`, each line's trailing whitespace removed, blank lines at both
/// ends removed. Indentation (the first line's too) and the spaces inside a line are kept: they
/// change what a program, a table or a poem says (two snippets that differ only in the
/// indentation of one line are different programs and must not share an answer).
pub fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalize_into(text, &mut out);
    out
}

fn normalize_into(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    // Most prompts are already NFC (all ASCII text is): skip the composing iterator then.
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        tidy_lines(text, out);
    } else {
        tidy_lines(&text.nfc().collect::<String>(), out);
    }
}

fn tidy_lines(text: &str, out: &mut String) {
    // `lines` splits on `\n` and drops a `\r` before it; a lone `\r` (old Mac) ends a line too.
    for line in text.lines().flat_map(|l| l.split('\r')) {
        let line = line.trim_end();
        if out.is_empty() {
            // Leading blank lines go; the first line with text keeps its indentation.
            out.push_str(line);
        } else {
            out.push('\n');
            out.push_str(line);
        }
    }
    out.truncate(out.trim_end().len());
}

/// Length-prefixed, tagged encoding: no two different inputs encode the same.
#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn opt_f32(&mut self, v: Option<f32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                // -0.0 and 0.0 sample identically: one key.
                let v = if v == 0.0 { 0.0f32 } else { v };
                self.u64(u64::from(v.to_bits()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ctx(privacy: PrivacyClass) -> KeyContext<'static> {
        KeyContext {
            model: "m",
            policy_version: "p1",
            privacy,
            normalize: true,
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_text("  a \t\r\n b  \n\n"), "  a\n b");
        assert_eq!(
            normalize_text("\n \n  x = 1  \r\n\r\n  y\r"),
            "  x = 1\n\n  y"
        );
        assert_ne!(
            normalize_text("    if x:\n  y"),
            normalize_text("if x:\n  y")
        );
        assert_eq!(normalize_text("a\rb\r\nc"), "a\nb\nc");
        assert_eq!(normalize_text(" \t\n \u{a0}"), "");
        // Indentation and spaces inside a line are kept: these are different programs.
        let one = "def f():\n    if x:\n        return 1\n    return 2";
        let two = "def f():\n    if x:\n        return 1\n        return 2";
        assert_ne!(normalize_text(one), normalize_text(two));
        assert_eq!(normalize_text("a  b"), "a  b");
        // "é" decomposed (e + U+0301) → composed U+00E9.
        assert_eq!(normalize_text("cafe\u{301}"), "caf\u{e9}");
        assert_eq!(normalize_text(""), "");
    }

    #[test]
    fn debug_output_hides_the_digest() {
        let key = CacheKey::new(
            &Request::new("my salary is 91,000"),
            &ctx(PrivacyClass::Public),
        );
        let shown = format!("{key:?}");
        let hex = key.to_hex();
        // No run of 6 hex digits of the digest (a 24-bit prefix already narrows guesses).
        for start in 0..hex.len() - 6 {
            assert!(
                !shown.contains(&hex[start..start + 6]),
                "{shown} shows {hex}"
            );
        }
        assert!(shown.contains("Public"), "{shown}");
    }

    #[test]
    fn equal_after_normalisation() {
        let c = ctx(PrivacyClass::Public);
        let a = CacheKey::new(&Request::new("What is Rust?  \r\n"), &c);
        let b = CacheKey::new(&Request::new("\n\nWhat is Rust?"), &c);
        assert_eq!(a, b);
        let raw = KeyContext {
            normalize: false,
            ..c
        };
        assert_ne!(
            CacheKey::new(&Request::new("What is  Rust?\n"), &raw),
            CacheKey::new(&Request::new(" What is Rust?"), &raw)
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let c = ctx(PrivacyClass::Public);
        let base = Request::new("hi");
        let k = CacheKey::new(&base, &c);
        let variants = [
            CacheKey::new(&base.clone().with_max_tokens(5), &c),
            CacheKey::new(&base.clone().with_temperature(0.5), &c),
            CacheKey::new(&base.clone().with_seed(1), &c),
            CacheKey::new(&base.clone().with_repetition_penalty(1.3), &c),
            CacheKey::new(&base.clone().with_system("be brief"), &c),
            CacheKey::new(&Request::new("hi!"), &c),
            CacheKey::new(&base, &ctx(PrivacyClass::Private)),
            CacheKey::new(&base, &KeyContext { model: "m2", ..c }),
            CacheKey::new(
                &base,
                &KeyContext {
                    policy_version: "p2",
                    ..c
                },
            ),
            CacheKey::new(&Request::from_messages(vec![Message::assistant("hi")]), &c),
        ];
        for v in variants {
            assert_ne!(k, v);
        }
        let mut top_p = base.clone();
        top_p.params.top_p = Some(0.9);
        assert_ne!(k, CacheKey::new(&top_p, &c));
        // Decision-only fields do not change the key.
        let steer = base
            .clone()
            .with_tag("x")
            .with_task("t")
            .with_deadline(std::time::Duration::from_secs(1));
        assert_eq!(k, CacheKey::new(&steer, &c));
    }

    #[test]
    fn length_prefix_prevents_boundary_collisions() {
        let c = ctx(PrivacyClass::Public);
        let a = Request::from_messages(vec![Message::user("ab"), Message::user("c")]);
        let b = Request::from_messages(vec![Message::user("a"), Message::user("bc")]);
        assert_ne!(CacheKey::new(&a, &c), CacheKey::new(&b, &c));
    }
}

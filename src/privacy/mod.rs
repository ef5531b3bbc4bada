//! In-process PII and secret detection ([`Scanner`]), redaction and re-hydration
//! ([`redact_messages`], [`Rehydrator`]).
//!
//! Layout: `detect` (the detectors), `address` (street addresses), `validate` (Luhn, mod-97,
//! SSN rules, phone formats, secret-likeness), `context` (token boundaries, label words, digit
//! zones), `redact` (placeholders and re-hydration).
//!
//! A scan is one pass per detector family over the text: each built-in detector is a
//! linear-time regex (the `regex` crate: finite automata, no backtracking) that proposes
//! candidates, followed by a validator that removes false positives (Luhn, IBAN mod-97, SSN
//! area rules, octet ranges, E.164 lengths, boundary and label-word checks). Detector families
//! whose trigger bytes are absent (`@`, digits) are skipped. Overlapping detections are resolved
//! by priority (custom > structured secrets > email > IBAN > card > SSN > assigned secrets >
//! IP > phone > street address), then by length. An assigned secret that overlaps a better detection keeps the
//! rest of its span (`password: "<value> (ask <email>)"` gives a secret and an email).
//!
//! Numbers are found whatever separators they are written with: no-break, narrow no-break,
//! figure and thin spaces (U+00A0, U+202F, U+2007, U+2009 and the other Unicode spaces of
//! U+2000–U+200A, U+205F, U+3000) count as a space, the hyphen, non-breaking hyphen, figure
//! dash, en dash and minus sign (U+2010–U+2013, U+2212) as `-`, and a run of spaces between a
//! digit group and the next group as one space (`4111  1111  1111  1111`). The number
//! detectors (all but `email` and `secret`) scan a copy of the text around digits folded that
//! way, made only when a digit is next to such a separator, and report spans in the original
//! text, covering the original separators. The em dash and horizontal bar (U+2014, U+2015)
//! are punctuation, read as `-` only between two digits (`555—0132`, as a word processor
//! autocorrects `555--0132`). Custom patterns and keywords see the text as written and, as
//! the built-in detectors do, with the forms below read as what they stand for; assigned
//! secrets accept the Unicode spaces around `=`, `:` and `is` (`mot de passe\u{a0}: …`).
//!
//! Every built-in detector also reads characters that stand for ASCII ones as those:
//! fullwidth forms (U+FF01–U+FF5E: `４１１１`, `ＤＥ８９`, `ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ`), which
//! CJK input methods type; the decimal digits of other scripts (Arabic-Indic `٤١٥`, Persian
//! `۰۹۱۲`, Devanagari `४१५`, Thai, Myanmar, Khmer …) and mathematical digits (`𝟒𝟏𝟏𝟏`). And it
//! reads past invisible format characters: zero-width spaces and joiners, the soft hyphen,
//! direction marks and isolates, word joiners, variation selectors and the byte order mark
//! (`4111\u{200b}1111…`, `pass\u{ad}word: …`). Spans are again in the original text.
//!
//! Spans are UTF-8 byte offsets into the scanned text. Neither [`PiiSpan`] nor [`Scanner`]
//! ever shows scanned text in `Debug`.
//!
//! What a span covers, per kind:
//!
//! | kind | span | examples |
//! |---|---|---|
//! | `email` | the address (no `mailto:`, no brackets or quotes; an apostrophe inside is part of it) | `ana@example.co.uk`, `john.o'brien@example.com` |
//! | `phone` | from `+`/`00`/`(`/first digit to the last digit, with an extension | `+44 (0)20 7946 0958`, `(415) 555-0132x12`, `06 12 34 56 78`, `+33 6 12 34 56 78` with no-break spaces |
//! | `credit_card` | the digits and their separators (a space, `-`, `.` or `/`, the same throughout; no expiry); 12-digit (Maestro) and unbroken 17–19-digit runs only next to a card label | `4111 1111 1111 1111`, `Maestro 5018 1234 5673` |
//! | `iban` | country code to last character, spaces (any kind above) or dashes included | `DE89 3704 0044 0532 0130 00`, `DE89-3704-…` |
//! | `us_ssn` | `123-45-6789` (or en dashes, `123–45–6789`); spaced, dotted or bare only next to an SSN label | `SSN 536221234`, `SSN 536.22.1234` |
//! | `ip_address` | the address (no port, no prefix length) | `10.0.0.1` in `10.0.0.1/24`, `fe80::1` in `[fe80::1]:443`, `2001:db8::` in `2001:db8::/64` |
//! | `street_address` | house number and street, with a flat or suite and the town, state and postcode that follow on the same line; an English street (`Elm Street`) only with one of those after it, a word that introduces an address before it (`I live at`, `ship to`, `address:`), quotes around it alone, or a line of its own (see `address.rs`) | `42 Elm Street`, `1600 Pennsylvania Avenue NW, Washington, DC 20500`, `Hauptstraße 5, 10115 Berlin`, `12 rue de la Paix`, `Calle Mayor 5` |
//! | `secret` | the token; the whole PEM block, or the BEGIN line and base64 lines of one cut off before its END line; the assigned value without quotes (a quoted one to its closing quote, spaces and `;` included); an `Authorization` header's credential (after its scheme word); a URL's password (to the last `@` of the authority, which ends at the path, the query or the fragment; a `?` or `#` typed in the password is part of it when no `@` or `=` follows it before the final `@`) | `ghp_…`, `password = "<value>"`, `Authorization: Token <value>`, `postgres://admin:<value>@db/app` |
//!
//! Thread safety: [`Scanner`] is `Send + Sync`; clones share the compiled detectors.

mod address;
mod context;
mod detect;
mod fold;
mod redact;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::Serialize;

use crate::error::{Error, Result};
use detect::{kind, priority, Detectors, Found};

pub use redact::{redact_messages, redact_messages_with_spans, redact_text, Rehydrator};

/// Built-in detector kinds, as named in policies and in `edgeroute pii scan`.
pub const BUILTIN_KINDS: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "secret",
    "street_address",
];

/// How many built-in kinds there are.
pub(crate) const BUILTIN_COUNT: usize = BUILTIN_KINDS.len();

/// A custom regex detector from a policy's `[privacy]` section.
#[derive(Debug, Clone)]
pub struct CustomPattern {
    /// Kind name reported for matches.
    pub kind: String,
    /// The regex source (`regex` crate syntax; linear time).
    pub regex: String,
}

/// A custom keyword list from a policy's `[privacy]` section.
#[derive(Debug, Clone)]
pub struct KeywordList {
    /// Kind name reported for matches.
    pub kind: String,
    /// Words matched case-insensitively at word boundaries. The words of a phrase match
    /// across any run of whitespace: `"project x"` matches `Project   X`, `project\nx` and
    /// `project` + U+00A0 + `x`.
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

/// One detected span. It holds offsets, not text: `Debug` cannot leak the matched value.
/// Use [`PiiSpan::text`] to read the value from the scanned string.
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

impl PiiSpan {
    /// The matched value inside `text` (the string that was scanned), if the offsets fit it.
    pub fn text<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.start..self.end)
    }
}

/// A compiled scanner. `Send + Sync`, and `Clone` is an `Arc` bump: build it once per policy
/// and share it. The built-in detectors are compiled once per process.
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kind names by index: the built-ins first (in [`BUILTIN_KINDS`] order), then custom kinds.
    kinds: Vec<String>,
    enabled: [bool; BUILTIN_COUNT],
    builtin: Arc<Detectors>,
    custom: Vec<(u16, Regex)>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enabled: Vec<&str> = BUILTIN_KINDS
            .iter()
            .zip(self.inner.enabled)
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .chain(
                self.inner.kinds[BUILTIN_KINDS.len()..]
                    .iter()
                    .map(String::as_str),
            )
            .collect();
        f.debug_struct("Scanner").field("kinds", &enabled).finish()
    }
}

fn builtin_detectors() -> Result<Arc<Detectors>> {
    static DETECTORS: OnceLock<std::result::Result<Arc<Detectors>, String>> = OnceLock::new();
    DETECTORS
        .get_or_init(|| Detectors::new().map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Config)
}

impl Scanner {
    /// Compiles the detectors for `config`.
    ///
    /// Fails with [`Error::Config`] on an unknown built-in kind in `config.kinds`, or on an
    /// invalid custom regex (naming the kind and the regex error).
    pub fn new(config: &PrivacyConfig) -> Result<Self> {
        let mut kinds: Vec<String> = BUILTIN_KINDS.iter().map(|k| k.to_string()).collect();
        let mut enabled = [false; BUILTIN_COUNT];
        for k in &config.kinds {
            match BUILTIN_KINDS.iter().position(|b| b == k) {
                Some(i) => enabled[i] = true,
                None => {
                    return Err(Error::Config(format!(
                        "unknown built-in PII kind `{k}`; built-in kinds: {}",
                        BUILTIN_KINDS.join(", ")
                    )))
                }
            }
        }
        let mut kind_index = |name: &str| -> Result<u16> {
            if name.trim().is_empty() {
                return Err(Error::Config("a custom PII kind needs a name".into()));
            }
            let i = match kinds.iter().position(|k| k == name) {
                Some(i) => i,
                None => {
                    kinds.push(name.to_string());
                    kinds.len() - 1
                }
            };
            u16::try_from(i).map_err(|_| Error::Config("too many custom PII kinds".into()))
        };
        let mut custom = Vec::new();
        for p in &config.patterns {
            let idx = kind_index(&p.kind)?;
            let re = regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| {
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or("").trim().to_string();
                    Error::Config(format!(
                        "invalid regex for custom PII kind `{}`: {reason}",
                        p.kind
                    ))
                })?;
            custom.push((idx, re));
        }
        for list in &config.keywords {
            let idx = kind_index(&list.kind)?;
            // Word boundaries only on sides that start/end with a word character, so `C++`
            // and `#falcon` still match. The words of a phrase match across any run of
            // whitespace (spaces, tabs, line breaks, no-break spaces).
            let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let words: Vec<String> = list
                .words
                .iter()
                .map(|w| w.trim())
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let pre = if is_word(w.chars().next()) { r"\b" } else { "" };
                    let post = if is_word(w.chars().last()) { r"\b" } else { "" };
                    let body: Vec<String> = w.split_whitespace().map(regex::escape).collect();
                    format!(r"{pre}{}{post}", body.join(r"\s+"))
                })
                .collect();
            if words.is_empty() {
                continue;
            }
            let src = format!(r"(?i)(?:{})", words.join("|"));
            let re = regex::RegexBuilder::new(&src)
                .size_limit(1 << 24)
                .build()
                .map_err(|e| {
                    Error::Config(format!(
                        "keyword list for custom PII kind `{}` is too large: {e}",
                        list.kind
                    ))
                })?;
            custom.push((idx, re));
        }
        Ok(Scanner {
            inner: Arc::new(Inner {
                kinds,
                enabled,
                builtin: builtin_detectors()?,
                custom,
            }),
        })
    }

    /// Finds PII spans in every message: `(message index, span)`, in message order, each
    /// message's spans as [`Scanner::scan`] returns them.
    pub fn scan_messages(&self, messages: &[crate::request::Message]) -> Vec<(usize, PiiSpan)> {
        messages
            .iter()
            .enumerate()
            .flat_map(|(i, m)| self.scan(&m.content).into_iter().map(move |s| (i, s)))
            .collect()
    }

    /// Finds PII spans in `text`: sorted by start offset, non-overlapping, UTF-8 byte offsets.
    pub fn scan(&self, text: &str) -> Vec<PiiSpan> {
        let inner = &*self.inner;
        let mut found = Vec::new();
        // Fullwidth forms, other scripts' digits and invisible characters are read as what
        // they stand for; the spans are mapped back to the original characters.
        let folded = fold::fold_forms(text);
        let scanned = folded.as_ref().map_or(text, |f| f.text());
        inner.builtin.run(scanned, &inner.enabled, &mut found);
        // Custom patterns and keywords see the folded copy (so a zero-width character or
        // another script's digits cannot hide what they match) and the original text (a
        // pattern may name non-ASCII characters itself).
        let custom = |t: &str, out: &mut Vec<Found>| {
            for (kind, re) in &inner.custom {
                for m in re.find_iter(t).filter(|m| m.start() < m.end()) {
                    out.push(Found {
                        start: m.start(),
                        end: m.end(),
                        kind: *kind,
                        priority: priority::CUSTOM,
                        confidence: 0.9,
                    });
                }
            }
        };
        custom(scanned, &mut found);
        if let Some(folded) = &folded {
            for f in &mut found {
                f.start = folded.original(f.start);
                f.end = folded.original(f.end);
            }
            custom(text, &mut found);
        }
        resolve(found, text.as_bytes())
            .into_iter()
            .map(|f| PiiSpan {
                kind: inner
                    .kinds
                    .get(usize::from(f.kind))
                    .cloned()
                    .unwrap_or_default(),
                start: f.start,
                end: f.end,
                confidence: f.confidence,
            })
            .collect()
    }
}

/// Keeps the best of overlapping detections (priority, then length, then leftmost) and returns
/// them sorted by start.
///
/// An assigned secret that overlaps a better detection keeps the rest of its span: a quoted
/// value can hold an address, a card or an IBAN (`password: "Xk9#mP2v (ask ann@example.com)"`),
/// and dropping the whole secret for the email would send the password out. Each piece of it
/// outside the better detections (trimmed of spaces) stays a secret, so the text covered is
/// the union of both. `text` is the scanned text, the spans'
/// offsets are into it.
fn resolve(mut found: Vec<Found>, text: &[u8]) -> Vec<Found> {
    found.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: BTreeMap<usize, Found> = BTreeMap::new();
    for f in found {
        let before = kept.range(..=f.start).next_back();
        let after = kept.range(f.start..).next();
        let clash =
            before.is_some_and(|(_, k)| k.end > f.start) || after.is_some_and(|(&s, _)| s < f.end);
        if !clash {
            kept.insert(f.start, f);
        } else if f.kind == kind::SECRET && f.priority == priority::SECRET_ASSIGNED {
            for (start, end) in uncovered(&kept, &f, text) {
                kept.insert(start, Found { start, end, ..f });
            }
        }
    }
    kept.into_values().collect()
}

/// The pieces of `f` outside every span of `kept` (disjoint, keyed by start), trimmed of ASCII
/// whitespace, that are not empty.
fn uncovered(kept: &BTreeMap<usize, Found>, f: &Found, text: &[u8]) -> Vec<(usize, usize)> {
    let first = kept
        .range(..=f.start)
        .next_back()
        .map_or(f.start, |(&s, _)| s);
    let mut gaps = Vec::new();
    let mut at = f.start;
    for k in kept.range(first..f.end).map(|(_, k)| k) {
        if k.start > at {
            gaps.push((at, k.start));
        }
        at = at.max(k.end);
    }
    if at < f.end {
        gaps.push((at, f.end));
    }
    gaps.into_iter()
        .filter_map(|(mut s, mut e)| {
            let piece = text.get(s..e)?;
            s += piece.iter().take_while(|c| c.is_ascii_whitespace()).count();
            e -= piece
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
            // Any non-space piece: symbols are password characters too (`#!` after an
            // address in `"ann.lee@corp.io#!"`).
            (s < e).then_some((s, e))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

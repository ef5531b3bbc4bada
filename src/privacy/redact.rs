//! Redaction (spans → stable placeholders such as `<EMAIL_1>`) and re-hydration of answers,
//! whole or streamed.
//!
//! Within one request the same value always gets the same placeholder, across messages, and a
//! value found once is replaced wherever else it appears (for a number: with any separators).
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
///
/// Every other place a found value appears is redacted too: written the same way in any
/// message, or, for a number, with the same digits and any separators. Detectors that need a
/// label word near a bare number (a phone, an SSN) find only the labelled occurrence, and the
/// cloud must not get the same number a paragraph later.
pub fn redact_messages_with_spans(
    messages: &[Message],
    spans: &[(usize, PiiSpan)],
) -> (Vec<Message>, Rehydrator) {
    let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let spans = with_repeats(&texts, spans);
    let mut r = Redactor::new(texts.iter().copied());
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
    let found: Vec<(usize, PiiSpan)> = scanner.scan(text).into_iter().map(|s| (0, s)).collect();
    let spans = with_repeats(&[text], &found);
    let mut r = Redactor::new(std::iter::once(text));
    let out = r.redact(text, spans.iter().map(|(_, s)| s));
    (out, r.into_rehydrator())
}

/// The shortest found value whose other occurrences are redacted too.
const MIN_REPEAT_LEN: usize = 4;
/// The fewest digits a number must have for its other spellings to be redacted too.
const MIN_REPEAT_DIGITS: usize = 6;

/// `spans` (per message index, sorted) plus every other occurrence of the values they cover
/// (see [`redact_messages_with_spans`]), sorted and without overlaps: where two overlap, the
/// one that starts first wins (a found span before a repeat at the same place). One pass over
/// each text for all the values (Aho-Corasick), one for the numbers.
fn with_repeats(texts: &[&str], spans: &[(usize, PiiSpan)]) -> Vec<(usize, PiiSpan)> {
    let mut seen = HashSet::new();
    let mut values: Vec<(&str, &str)> = Vec::new();
    let mut numbers: HashMap<String, &str> = HashMap::new();
    for (i, span) in spans {
        let Some(value) = texts.get(*i).and_then(|t| span.text(t)) else {
            continue;
        };
        if value.len() >= MIN_REPEAT_LEN && seen.insert(value) {
            values.push((value, &span.kind));
        }
        // A secret read with spaces (a quoted value, `"Xk9#mP2v (prod)"`, or what is left of
        // one around other PII): each word of it that is a secret on its own is redacted where
        // it appears again too (`psql rejected Xk9#mP2v`).
        if span.kind == "secret" && value.contains(char::is_whitespace) {
            for part in value.split_whitespace() {
                if part.len() >= MIN_REPEAT_LEN
                    && super::validate::looks_like_secret(part.as_bytes())
                    && seen.insert(part)
                {
                    values.push((part, &span.kind));
                }
            }
        }

        if let Some(digits) = number_digits(value).filter(|d| d.len() >= MIN_REPEAT_DIGITS) {
            numbers.entry(digits).or_insert(&span.kind);
        }
    }
    let mut all: Vec<(usize, PiiSpan)> = spans.to_vec();
    let repeat = |i: usize, start: usize, end: usize, kind: &str| {
        (
            i,
            PiiSpan {
                kind: kind.to_string(),
                start,
                end,
                confidence: 1.0,
            },
        )
    };
    let exact = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(values.iter().map(|(v, _)| v))
        .ok()
        .filter(|_| !values.is_empty());
    let lengths: Vec<usize> = {
        let mut l: Vec<usize> = numbers.keys().map(String::len).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    for (i, text) in texts.iter().enumerate() {
        if let Some(ac) = &exact {
            for m in ac.find_iter(text) {
                all.push(repeat(
                    i,
                    m.start(),
                    m.end(),
                    values[m.pattern().as_usize()].1,
                ));
            }
        }
        if !numbers.is_empty() {
            for (start, end, digits) in number_spellings(text, &lengths) {
                if let Some(kind) = numbers.get(&digits) {
                    all.push(repeat(i, start, end, kind));
                }
            }
        }
    }
    all.sort_by_key(|(i, s)| (*i, s.start, std::cmp::Reverse(s.end)));
    let mut out: Vec<(usize, PiiSpan)> = Vec::with_capacity(all.len());
    for (i, span) in all {
        match out.last() {
            Some((j, last)) if *j == i && span.start < last.end => {}
            _ => out.push((i, span)),
        }
    }
    out
}

/// A character that may sit between the digits of a written number.
fn is_number_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '.' | '/' | '(' | ')' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{200b}'
        )
}

/// The value of a decimal digit, ASCII or fullwidth.
fn digit_value(c: char) -> Option<char> {
    match c {
        '0'..='9' => Some(c),
        '\u{ff10}'..='\u{ff19}' => char::from_u32(c as u32 - 0xff10 + u32::from(b'0')),
        _ => None,
    }
}

/// The digits of `value` when it is a number (digits and separators, an optional leading `+`).
fn number_digits(value: &str) -> Option<String> {
    let value = value.strip_prefix('+').unwrap_or(value);
    let mut digits = String::new();
    for c in value.chars() {
        match digit_value(c) {
            Some(d) => digits.push(d),
            None if is_number_separator(c) => {}
            None => return None,
        }
    }
    Some(digits)
}

/// Every way of reading a number of one of `lengths` digits in `text`: runs of digit groups
/// joined by separators, read from the start of a group to the end of a group, and not glued
/// to letters or digits on either side: `(start, end, digits)`.
fn number_spellings(text: &str, lengths: &[usize]) -> Vec<(usize, usize, String)> {
    /// One digit of a run: its value, its bytes, and whether a group starts with it.
    struct Digit {
        value: char,
        start: usize,
        end: usize,
        group_start: bool,
    }
    let mut out = Vec::new();
    let mut read = |run: &[Digit]| {
        for (first, d) in run.iter().enumerate() {
            if !d.group_start
                || text[..d.start]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric)
            {
                continue;
            }
            for &len in lengths {
                let Some(last) = run.get(first + len - 1) else {
                    break;
                };
                let ends_group = run.get(first + len).is_none_or(|next| next.group_start);
                let glued = text[last.end..]
                    .chars()
                    .next()
                    .is_some_and(char::is_alphanumeric);
                if ends_group && !glued {
                    let digits = run[first..first + len].iter().map(|d| d.value).collect();
                    out.push((d.start, last.end, digits));
                }
            }
        }
    };
    let mut run: Vec<Digit> = Vec::new();
    let mut gap = false;
    for (at, c) in text.char_indices() {
        if let Some(value) = digit_value(c) {
            run.push(Digit {
                value,
                start: at,
                end: at + c.len_utf8(),
                group_start: run.is_empty() || gap,
            });
            gap = false;
        } else if is_number_separator(c) && !run.is_empty() {
            gap = true;
        } else {
            read(&run);
            run.clear();
            gap = false;
        }
    }
    read(&run);
    out
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
            word: Word::default(),
            withheld: 0,
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
///
/// A placeholder inside a link — a URL (`https://…?u=<EMAIL_1>`, `//host/…`), a markdown link
/// or image target (`](…<EMAIL_1>)`, `](<… …>)`), a `mailto:`, an HTML attribute a renderer
/// fetches (`src="…"`, `href="…"`, `style="…url(…)"`) — is left as it is: an app that renders
/// the answer would otherwise fetch an address the cloud chose (or a prompt injection chose)
/// with the private value in it. [`Rehydrator::withheld`] counts them;
/// [`Rehydrator::rehydrate_everywhere`] re-hydrates them too.
#[derive(Clone, Default)]
pub struct Rehydrator {
    map: HashMap<String, String>,
    max_len: usize,
    /// Streamed text held back because it may be the start of a placeholder.
    pending: String,
    /// The streamed text's current word, for links that span chunks.
    word: Word,
    withheld: usize,
}

/// Where the streamed answer is, for the placeholders in it: inside a link or not. Read one
/// character at a time, so a whole answer and the same answer streamed in any chunks are read
/// alike.
///
/// A link is a word (text between whitespace) with `://`, `mailto:`, `url(` or `](` in it, or
/// starting with `//` or `www.`; a markdown link or image target (`](…)`, `](<…>)`) and a
/// quoted `href` / `src` / `action` / `poster` / `background` / `style` / … attribute value
/// are links up to their closing `)`, `>` or quote, spaces included; so is the rest of an
/// `<…>` autolink or reference target once a link shows in it.
#[derive(Clone, Default)]
struct Word {
    /// The word's last characters, lower-cased (enough to recognise the markers).
    tail: String,
    /// Characters in the word so far (saturating).
    len: usize,
    /// The word's first character.
    first: Option<char>,
    /// The current word, or the target or value being read, is a link.
    link: bool,
    /// Inside a link target or attribute value that ends at this character (whitespace does
    /// not end it).
    until: Option<char>,
    /// The last character opened a markdown target: a `<` now makes it end at `>`.
    just_opened: bool,
}

/// Characters of the tail kept: the longest marker (`formaction="`) and a little more.
const TAIL: usize = 16;

/// Attributes whose value an HTML renderer fetches or follows.
const URL_ATTRIBUTES: &[&str] = &[
    "href",
    "src",
    "srcset",
    "action",
    "formaction",
    "poster",
    "background",
    "cite",
    "data",
    "style",
    "longdesc",
    "ping",
    "xlink:href",
];

impl Word {
    /// Takes in `text` (shown before the next placeholder).
    fn feed(&mut self, text: &str) {
        text.chars().for_each(|c| self.push(c));
    }

    /// A placeholder stands here: a character of the word, not a marker.
    fn placeholder(&mut self) {
        self.push('x');
    }

    fn push(&mut self, c: char) {
        if let Some(end) = self.until {
            if self.just_opened && c == '<' {
                self.until = Some('>');
            } else if c == end {
                self.until = None;
            }
            self.just_opened = false;
            return;
        }
        if c.is_whitespace() {
            *self = Word::default();
            return;
        }
        self.len = self.len.saturating_add(1);
        if self.len == 1 {
            self.first = Some(c);
        }
        self.tail.push(c.to_ascii_lowercase());
        if self.tail.chars().count() > TAIL {
            self.tail.remove(0);
        }
        let t = self.tail.as_str();
        if t.ends_with("://")
            || t.ends_with("mailto:")
            || t.ends_with("url(")
            || (self.len == 2 && t.ends_with("//"))
            || (self.len == 4 && t.ends_with("www."))
        {
            self.link = true;
            // An autolink or a reference target in angle brackets goes on to its `>`.
            if self.first == Some('<') {
                self.until = Some('>');
            }
        }
        if t.ends_with("](") {
            self.link = true;
            self.until = Some(')');
            self.just_opened = true;
        }
        if let Some(quote) = t.chars().last().filter(|q| *q == '"' || *q == '\'') {
            let attribute = t[..t.len() - 1]
                .strip_suffix('=')
                .is_some_and(|name| URL_ATTRIBUTES.iter().any(|a| name.ends_with(a)));
            if attribute {
                self.link = true;
                self.until = Some(quote);
            }
        }
    }
}

impl fmt::Debug for Rehydrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rehydrator")
            .field("placeholders", &self.map.len())
            .field("pending_bytes", &self.pending.len())
            .field("withheld", &self.withheld)
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

    /// Replaces every known placeholder in `text` with its original value, except inside a
    /// link (see the type's docs). Unknown placeholder-shaped text is left as is.
    pub fn rehydrate(&self, text: &str) -> String {
        self.rehydrate_in(text, Some(&mut Word::default())).0
    }

    /// Like [`rehydrate`](Self::rehydrate), inside links too: for text that is never rendered
    /// or fetched from (a log, a plain terminal), or that the app has checked itself.
    pub fn rehydrate_everywhere(&self, text: &str) -> String {
        self.rehydrate_in(text, None).0
    }

    /// Placeholders withheld so far because they stood in a link ([`push`](Self::push),
    /// [`finish`](Self::finish)).
    pub fn withheld(&self) -> usize {
        self.withheld
    }

    /// [`rehydrate`](Self::rehydrate) continuing the text whose current word is `word` (`None`:
    /// links are not looked for); returns the text and how many placeholders it withheld.
    fn rehydrate_in(&self, text: &str, mut word: Option<&mut Word>) -> (String, usize) {
        let mut out = String::with_capacity(text.len());
        let mut withheld = 0;
        let mut last = 0;
        let mut i = 0;
        while let Some(off) = text[i..].find('<') {
            let at = i + off;
            let hit = placeholder_len(&text[at..])
                .and_then(|len| self.map.get(&text[at..at + len]).map(|v| (len, v)));
            match hit {
                Some((len, value)) => {
                    out.push_str(&text[last..at]);
                    let in_link = word.as_deref_mut().is_some_and(|w| {
                        w.feed(&text[last..at]);
                        let link = w.link || w.until.is_some();
                        w.placeholder();
                        link
                    });
                    if in_link {
                        out.push_str(&text[at..at + len]);
                        withheld += 1;
                    } else {
                        out.push_str(value);
                    }
                    last = at + len;
                    i = last;
                }
                None => i = at + 1,
            }
        }
        if let Some(w) = word {
            w.feed(&text[last..]);
        }
        out.push_str(&text[last..]);
        (out, withheld)
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
        let ready: String = self.pending.drain(..ready_len).collect();
        self.rehydrate_streamed(&ready)
    }

    /// Streaming: the end of the answer; returns whatever was held back (re-hydrated).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.rehydrate_streamed(&rest)
    }

    fn rehydrate_streamed(&mut self, text: &str) -> String {
        let mut word = std::mem::take(&mut self.word);
        let (out, withheld) = self.rehydrate_in(text, Some(&mut word));
        self.word = word;
        self.withheld += withheld;
        out
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

//! Built-in detectors: a linear-time regex proposes candidates, a validator (checksum, structure,
//! boundaries, nearby words) decides. Each detector pushes [`Found`] values; overlaps between
//! detectors are resolved by the scanner.
//!
//! Every regex here runs on the `regex` crate (finite automata, no backtracking). Detectors that
//! retry after a rejected candidate (`retrying`) only use patterns whose matches are bounded in
//! length, so a scan stays linear in the input size.

use regex::Regex;

use super::validate::{
    card_grouping_ok, card_issuer_ok, iban_length, iban_valid, looks_like_secret, luhn, ssn_valid,
};
use crate::error::{Error, Result};

/// Index of each built-in kind in [`super::BUILTIN_KINDS`].
pub(crate) mod kind {
    pub const EMAIL: u16 = 0;
    pub const PHONE: u16 = 1;
    pub const CREDIT_CARD: u16 = 2;
    pub const IBAN: u16 = 3;
    pub const US_SSN: u16 = 4;
    pub const IP_ADDRESS: u16 = 5;
    pub const SECRET: u16 = 6;
}

/// One accepted detection before overlap resolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    /// Index into the scanner's kind table.
    pub kind: u16,
    /// Higher wins when two detections overlap.
    pub priority: u8,
    pub confidence: f32,
}

/// Overlap priorities: structured secrets beat everything built in, checksummed kinds beat
/// format-only kinds, phone numbers (the loosest format) lose to all.
pub(crate) mod priority {
    pub const CUSTOM: u8 = 10;
    pub const SECRET_TOKEN: u8 = 9;
    pub const EMAIL: u8 = 8;
    pub const IBAN: u8 = 7;
    pub const CREDIT_CARD: u8 = 6;
    pub const US_SSN: u8 = 5;
    pub const SECRET_ASSIGNED: u8 = 4;
    pub const IP_ADDRESS: u8 = 3;
    pub const PHONE: u8 = 2;
}

/// The compiled built-in detectors (shared by every scanner in the process).
pub(crate) struct Detectors {
    email: Regex,
    url_credentials: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ssn_bare: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone_intl: Regex,
    phone_us: Regex,
    phone_zero: Regex,
    phone_bare: Regex,
    tokens: Regex,
    pem: Regex,
    assigned: Regex,
    bearer: Regex,
}

fn re(src: &str) -> Result<Regex> {
    Regex::new(src).map_err(|e| Error::Config(format!("built-in privacy regex failed: {e}")))
}

impl Detectors {
    pub(crate) fn new() -> Result<Self> {
        Ok(Detectors {
            email: re(
                r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?){0,8}\.[A-Za-z]{2,24}",
            )?,
            url_credentials: re(
                r"(?i)[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{1,128}:([^\s:/@]{1,256})@",
            )?,
            card: re(r"(?-u:\b)\d(?:[ \-]?\d){12,18}(?-u:\b)")?,
            iban: re(r"(?-u:\b)[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}")?,
            ssn: re(r"(?-u:\b)\d{3}[ \-]\d{2}[ \-]\d{4}(?-u:\b)")?,
            ssn_bare: re(r"(?-u:\b)\d{9}(?-u:\b)")?,
            ipv4: re(r"(?-u:\b)(?:\d{1,3}\.){3}\d{1,3}(?-u:\b)")?,
            ipv6: re(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.\d{1,3}){0,3}")?,
            phone_intl: re(r"\+[1-9][\d ().\-]{6,24}\d")?,
            phone_us: re(
                r"(?:1[ .\-]?)?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .\-]?[2-9]\d{2}[ .\-]\d{4}(?-u:\b)",
            )?,
            phone_zero: re(r"\(?0[1-9]\d{0,4}\)?(?:[ ./\-]?\d{2,8}){1,5}(?-u:\b)")?,
            phone_bare: re(r"(?-u:\b)1?[2-9]\d{2}[2-9]\d{6}(?-u:\b)")?,
            tokens: re(concat!(
                r"(?-u:\b)(?:",
                r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,251}",
                r"|github_pat_[A-Za-z0-9_]{22,255}",
                r"|sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_\-]{20,}",
                r"|xox[abposre]-[A-Za-z0-9\-]{10,}",
                r"|AIza[0-9A-Za-z_\-]{35}",
                r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
                r")",
            ))?,
            pem: re(
                r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?s:.)*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----",
            )?,
            assigned: re(concat!(
                r"(?i)(?:password|passwd|passphrase|pwd|passwort|kennwort|mot de passe|contrase[ñn]a|senha",
                r"|secret|token|api[_\-]?key|access[_\-]?key",
                r"|auth[_\-]?key|private[_\-]?key|credentials?)",
                r#"[a-z0-9_.\-]{0,30}["']?[ \t]{0,4}(?:=>|:=|=|:|[ \t]{1,4}is[ \t]{1,4})[ \t]{0,4}["'`]?"#,
                r#"([^\s"'`,;]{1,200})"#,
            ))?,
            bearer: re(r"(?i)\bbearer[ \t]+([A-Za-z0-9._~+/\-]{16,512}=*)")?,
        })
    }

    /// Runs the enabled built-in detectors over `text`.
    pub(crate) fn run(&self, text: &str, enabled: &[bool; 7], out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let has_digit = b.iter().any(u8::is_ascii_digit);
        let has_at = b.contains(&b'@');
        let on = |k: u16| enabled[usize::from(k)];
        if on(kind::SECRET) {
            self.secrets(text, has_at, out);
        }
        if on(kind::EMAIL) && has_at {
            self.emails(text, out);
        }
        if !has_digit {
            return;
        }
        if on(kind::IBAN) {
            self.ibans(text, out);
        }
        if on(kind::CREDIT_CARD) {
            self.cards(text, out);
        }
        if on(kind::US_SSN) {
            self.ssns(text, out);
        }
        if on(kind::IP_ADDRESS) {
            self.ips(text, out);
        }
        if on(kind::PHONE) {
            self.phones(text, out);
        }
    }

    fn secrets(&self, text: &str, has_at: bool, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let secret = |start, end, priority, confidence| Found {
            start,
            end,
            kind: kind::SECRET,
            priority,
            confidence,
        };
        for m in self.tokens.find_iter(text) {
            let s = &b[m.start()..m.end()];
            // `sk-` and Slack bodies must look random, not like a hyphenated word.
            let loose = s.starts_with(b"sk-") || s.starts_with(b"xox");
            if loose && !(s.iter().any(u8::is_ascii_digit) && s.len() >= 24) {
                continue;
            }
            out.push(secret(m.start(), m.end(), priority::SECRET_TOKEN, 0.97));
        }
        if b.windows(11).any(|w| w == b"PRIVATE KEY") {
            for m in self.pem.find_iter(text) {
                out.push(secret(m.start(), m.end(), priority::SECRET_TOKEN, 0.99));
            }
        }
        for c in self.assigned.captures_iter(text) {
            let Some(v) = c.get(1) else { continue };
            let (s, e) = trim_value(b, v.start(), v.end());
            if looks_like_secret(&b[s..e]) {
                out.push(secret(s, e, priority::SECRET_ASSIGNED, 0.8));
            }
        }
        for c in self.bearer.captures_iter(text) {
            let Some(v) = c.get(1) else { continue };
            if looks_like_secret(v.as_str().as_bytes()) {
                out.push(secret(v.start(), v.end(), priority::SECRET_ASSIGNED, 0.85));
            }
        }
        if has_at {
            for c in self.url_credentials.captures_iter(text) {
                let Some(v) = c.get(1) else { continue };
                let val = v.as_str().as_bytes();
                if val.len() >= 4 && !matches!(val[0], b'$' | b'<' | b'{' | b'*' | b'%') {
                    out.push(secret(v.start(), v.end(), priority::SECRET_TOKEN, 0.9));
                }
            }
        }
    }

    fn emails(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        for m in self.email.find_iter(text) {
            let mut start = m.start();
            while start < m.end() && matches!(b[start], b'.' | b'-') {
                start += 1;
            }
            let end = m.end();
            if b.get(end).is_some_and(|&c| is_word(c) || c == b'@') {
                continue;
            }
            if start > 0 && b[start - 1] == b'@' {
                continue;
            }
            out.push(Found {
                start,
                end,
                kind: kind::EMAIL,
                priority: priority::EMAIL,
                confidence: 0.95,
            });
        }
    }

    fn ibans(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        retrying(&self.iban, text, |s, e| {
            let want = iban_length(&b[s..s + 2])?;
            let mut compact = [0u8; 40];
            let mut n = 0;
            let mut end = s;
            for (i, &c) in b[s..e].iter().enumerate() {
                if c == b' ' {
                    continue;
                }
                if n == want {
                    break;
                }
                *compact.get_mut(n)? = c;
                n += 1;
                end = s + i + 1;
            }
            if n != want || b.get(end).is_some_and(|&c| is_word(c)) {
                return None;
            }
            if !iban_valid(&compact[..n]) {
                return None;
            }
            out.push(Found {
                start: s,
                end,
                kind: kind::IBAN,
                priority: priority::IBAN,
                confidence: 0.99,
            });
            Some(end)
        });
    }

    fn cards(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        retrying(&self.card, text, |s, e| {
            let groups = digit_groups(b, s, e);
            // Digits after the card only split off when they are another field, such as an
            // expiry date (`4111 1111 1111 1111 12/25`); `-041` continues the same number.
            if !clean_before(b, s, true) {
                return None;
            }
            let j = (1..=groups.len()).rev().find(|&j| {
                let split_ok = if j == groups.len() {
                    clean_after(b, groups[j - 1].1, true)
                } else {
                    b[groups[j - 1].1] == b' ' && b.get(groups[j].1) == Some(&b'/')
                };
                split_ok && card_ok(b, &groups[..j])
            })?;
            let end = groups[j - 1].1;
            out.push(Found {
                start: s,
                end,
                kind: kind::CREDIT_CARD,
                priority: priority::CREDIT_CARD,
                confidence: 0.99,
            });
            Some(end)
        });
    }

    fn ssns(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let num = |r: &[u8]| r.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        for m in self.ssn.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            let t = &b[s..e];
            if t[3] != t[6] || !isolated(b, s, e, true) {
                continue;
            }
            if !ssn_valid(num(&t[0..3]), num(&t[4..6]), num(&t[7..11])) {
                continue;
            }
            // Space-separated digits are too common to trust without a nearby label.
            if t[3] == b' ' && context(b, s, 40, SSN_WORDS, &[]) != Some(true) {
                continue;
            }
            out.push(Found {
                start: s,
                end: e,
                kind: kind::US_SSN,
                priority: priority::US_SSN,
                confidence: 0.9,
            });
        }
        for m in self.ssn_bare.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            let t = &b[s..e];
            if !isolated(b, s, e, true)
                || context(b, s, 40, SSN_WORDS, &[]) != Some(true)
                || !ssn_valid(num(&t[0..3]), num(&t[3..5]), num(&t[5..9]))
            {
                continue;
            }
            out.push(Found {
                start: s,
                end: e,
                kind: kind::US_SSN,
                priority: priority::US_SSN,
                confidence: 0.8,
            });
        }
    }

    fn ips(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        for m in self.ipv4.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            // A `:port` may follow an address; other glue means a longer token.
            let port = b.get(e) == Some(&b':');
            let end_ok = port || clean_after(b, e, false);
            if !ipv4_ok(&b[s..e]) || !end_ok || !clean_before(b, s, false) {
                continue;
            }
            if context(b, s, 12, &[], VERSION_WORDS) == Some(false) {
                continue;
            }
            out.push(Found {
                start: s,
                end: e,
                kind: kind::IP_ADDRESS,
                priority: priority::IP_ADDRESS,
                confidence: 0.9,
            });
        }
        if !b.contains(&b':') {
            return;
        }
        retrying(&self.ipv6, text, |s, e| {
            let before_ok = s == 0 || !(is_word(b[s - 1]) || matches!(b[s - 1], b':' | b'.'));
            if !before_ok {
                return None;
            }
            // A trailing `:` belongs to the sentence ("address fe80::1: unreachable").
            let mut end = e;
            loop {
                let cand = &text[s..end];
                if cand.bytes().filter(u8::is_ascii_digit).count() > 0
                    && cand.len() >= 3
                    && cand.parse::<std::net::Ipv6Addr>().is_ok()
                    && !b.get(end).is_some_and(|&c| is_word(c) || c == b':')
                {
                    break;
                }
                if end > s + 2 && b[end - 1] == b':' && b[end - 2] != b':' {
                    end -= 1;
                } else {
                    return None;
                }
            }
            out.push(Found {
                start: s,
                end,
                kind: kind::IP_ADDRESS,
                priority: priority::IP_ADDRESS,
                confidence: 0.9,
            });
            Some(end)
        });
    }

    fn phones(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let mut push = |s, e, confidence| {
            out.push(Found {
                start: s,
                end: e,
                kind: kind::PHONE,
                priority: priority::PHONE,
                confidence,
            })
        };
        retrying(&self.phone_intl, text, |s, e| {
            if s > 0 && (is_word(b[s - 1]) || b[s - 1] == b'+') {
                return None;
            }
            let end = shrink_to_valid(b, s, e, intl_phone_ok)?;
            if !isolated(b, s, end, true) || negative_phone_context(b, s) {
                return None;
            }
            push(s, end, 0.9);
            Some(end)
        });
        for m in self.phone_us.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            if (s > 0 && b[s - 1] == b'+') || !isolated(b, s, e, true) {
                continue;
            }
            if !parens_ok(&b[s..e]) || negative_phone_context(b, s) {
                continue;
            }
            push(s, e, 0.85);
        }
        retrying(&self.phone_zero, text, |s, e| {
            let end = shrink_to_valid(b, s, e, national_phone_ok)?;
            if !isolated(b, s, end, true) || negative_phone_context(b, s) {
                return None;
            }
            // An unbroken run of digits needs a label nearby to be called a phone number.
            let unbroken = b[s..end].iter().all(u8::is_ascii_digit);
            let labelled = context(b, s, 40, PHONE_WORDS, NOT_PHONE_WORDS) == Some(true);
            if unbroken && (!labelled || end - s > 11) {
                return None;
            }
            push(s, end, 0.8);
            Some(end)
        });
        for m in self.phone_bare.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            if !isolated(b, s, e, true)
                || context(b, s, 40, PHONE_WORDS, NOT_PHONE_WORDS) != Some(true)
            {
                continue;
            }
            push(s, e, 0.7);
        }
    }
}

const SSN_WORDS: &[&[u8]] = &[b"ssn", b"social security", b"ss#", b"ss no", b"taxpayer id"];
const VERSION_WORDS: &[&[u8]] = &[
    b"version",
    b"ver ",
    b"ver.",
    b"release",
    b"build",
    b"firmware",
    b"sdk",
    b"v.",
];
const PHONE_WORDS: &[&[u8]] = &[
    b"phone",
    b"tel",
    b"call",
    b"mobile",
    b"cell",
    b"fax",
    b"whatsapp",
    b"sms",
    b"text me",
    b"contact",
    b"reach",
    b"dial",
    b"number",
    b"telefon",
    b"t\xc3\xa9l\xc3\xa9phone",
    b"portable",
    b"handy",
    b"nummer",
    b"ring",
    b"mob",
];
const NOT_PHONE_WORDS: &[&[u8]] = &[
    b"tracking number",
    b"order number",
    b"case number",
    b"account number",
    b"reference number",
    b"serial number",
    b"invoice number",
    b"customer number",
    b"part number",
    b"order",
    b"invoice",
    b"ticket",
    b"tracking",
    b"ref",
    b"id",
    b"#",
    b"no.",
    b"sku",
    b"serial",
    b"build",
    b"version",
    b"account",
    b"acct",
    b"case",
    b"transaction",
    b"txn",
    b"isbn",
    b"zip",
    b"batch",
    b"lot",
    b"commit",
    b"pid",
    b"port",
    b"epoch",
    b"timestamp",
    b"bestell",
    b"commande",
    b"rechnung",
    b"facture",
];

/// Finds matches of `re`, letting `accept` decide (and trim) each. After a rejection the search
/// resumes one character after the rejected start, so a greedy false start cannot hide a real
/// match inside it. Only for patterns with bounded match length (keeps the scan linear).
fn retrying(re: &Regex, text: &str, mut accept: impl FnMut(usize, usize) -> Option<usize>) {
    let mut pos = 0;
    while pos <= text.len() {
        let Some(m) = re.find_at(text, pos) else {
            break;
        };
        pos = match accept(m.start(), m.end()) {
            Some(end) => end.max(next_char(text, m.start())),
            None => next_char(text, m.start()),
        };
    }
}

fn next_char(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// True when `[s, e)` is not glued to a longer token: no word character on either side, no
/// `X-`/`X.`/`X/` code prefix, and no digit group continuing across a separator (the digits
/// inside an IBAN, a card, a date or a version string). `space_joins` also treats a single
/// space between digit groups as joining them.
fn isolated(b: &[u8], s: usize, e: usize, space_joins: bool) -> bool {
    clean_before(b, s, space_joins) && clean_after(b, e, space_joins)
}

fn clean_before(b: &[u8], s: usize, space_joins: bool) -> bool {
    let Some(&c) = s.checked_sub(1).and_then(|i| b.get(i)) else {
        return true;
    };
    let p = if s >= 2 { b[s - 2] } else { b' ' };
    if is_word(c) {
        return false;
    }
    if matches!(c, b'-' | b'.' | b'/' | b'_' | b'+') && is_word(p) || c == b'#' {
        return false;
    }
    if matches!(c, b',' | b':') && p.is_ascii_digit() {
        return false;
    }
    !(space_joins && c == b' ' && p.is_ascii_digit())
}

fn clean_after(b: &[u8], e: usize, space_joins: bool) -> bool {
    let Some(&c) = b.get(e) else {
        return true;
    };
    let n = b.get(e + 1).copied().unwrap_or(b' ');
    if is_word(c) {
        return false;
    }
    if matches!(c, b'-' | b'.' | b'/' | b':' | b',') && n.is_ascii_digit() {
        return false;
    }
    !(space_joins && c == b' ' && n.is_ascii_digit())
}

/// Looks back up to `window` bytes from `s` for label words. Returns `Some(true)` when the
/// nearest label is a positive one, `Some(false)` when it is a negative one, `None` when none.
fn context(b: &[u8], s: usize, window: usize, pos: &[&[u8]], neg: &[&[u8]]) -> Option<bool> {
    let lo = s.saturating_sub(window);
    let hay: Vec<u8> = b[lo..s].iter().map(u8::to_ascii_lowercase).collect();
    let last = |words: &[&[u8]]| {
        // A label counts only at the start of a word ("server" does not contain "ver ").
        words
            .iter()
            .filter_map(|w| {
                (0..hay.len().saturating_sub(w.len() - 1))
                    .rev()
                    .find(|&p| {
                        hay[p..].starts_with(w)
                            && (p == 0 && lo == 0
                                || !is_word(if p == 0 { b[lo - 1] } else { hay[p - 1] }))
                    })
                    .map(|p| p + w.len())
            })
            .max()
    };
    match (last(pos), last(neg)) {
        (Some(p), Some(n)) => Some(p > n),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        (None, None) => None,
    }
}

fn negative_phone_context(b: &[u8], s: usize) -> bool {
    context(b, s, 24, PHONE_WORDS, NOT_PHONE_WORDS) == Some(false)
}

/// Byte ranges of the maximal digit runs in `[s, e)`.
fn digit_groups(b: &[u8], s: usize, e: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut i = s;
    while i < e {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < e && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((start, i));
        } else {
            i += 1;
        }
    }
    groups
}

fn card_ok(b: &[u8], groups: &[(usize, usize)]) -> bool {
    let Some(first) = groups.first() else {
        return false;
    };
    // One separator character used throughout.
    let sep = groups.get(1).map(|g| &b[first.1..g.0]);
    if groups
        .windows(2)
        .any(|w| Some(&b[w[0].1..w[1].0]) != sep || w[1].0 - w[0].1 != 1)
    {
        return false;
    }
    let lens: Vec<usize> = groups.iter().map(|g| g.1 - g.0).collect();
    let total: usize = lens.iter().sum();
    if !(13..=19).contains(&total) || !card_grouping_ok(&lens) {
        return false;
    }
    let digits: Vec<u8> = groups.iter().flat_map(|g| &b[g.0..g.1]).copied().collect();
    luhn(&digits) && card_issuer_ok(&digits)
}

fn ipv4_ok(t: &[u8]) -> bool {
    t.split(|&c| c == b'.').all(|o| {
        let v = o.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        !o.is_empty() && v <= 255 && !(o.len() > 1 && o[0] == b'0')
    })
}

fn parens_ok(t: &[u8]) -> bool {
    let open = t.iter().filter(|&&c| c == b'(').count();
    let close = t.iter().filter(|&&c| c == b')').count();
    open == close && open <= 1
}

/// Shrinks `[s, e)` group by group from the right until `valid` accepts it.
fn shrink_to_valid(b: &[u8], s: usize, e: usize, valid: fn(&[u8]) -> bool) -> Option<usize> {
    let groups = digit_groups(b, s, e);
    (1..=groups.len())
        .rev()
        .map(|j| groups[j - 1].1)
        .find(|&end| valid(&b[s..end]))
}

/// Separator sanity shared by phone formats: no doubled separators (except around a
/// parenthesis), balanced parentheses, at most two separator kinds.
fn phone_shape_ok(t: &[u8]) -> bool {
    if !parens_ok(t) {
        return false;
    }
    let mut kinds = [false; 4];
    let mut prev_sep = false;
    for &c in t {
        let k = match c {
            b' ' => Some(0),
            b'-' => Some(1),
            b'.' => Some(2),
            b'/' => Some(3),
            _ => None,
        };
        match k {
            Some(k) => {
                if prev_sep {
                    return false;
                }
                kinds[k] = true;
                prev_sep = true;
            }
            None => prev_sep = false,
        }
    }
    kinds.iter().filter(|&&k| k).count() <= 2
}

/// Looks like a date at the start (`2024-03-15`, `15.03.2024`, `03/15/24`).
fn date_like(t: &[u8]) -> bool {
    let groups: Vec<&[u8]> = t
        .split(|c| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let seps: Vec<u8> = t.iter().copied().filter(|c| !c.is_ascii_digit()).collect();
    if groups.len() < 3 || seps.len() < 2 || seps[0] != seps[1] || seps[0] == b' ' {
        return false;
    }
    let (a, m, c) = (groups[0].len(), groups[1].len(), groups[2].len());
    // `15.03.24` alone is a date; `06.12.34.56.78` (five pairs) is a French phone number.
    (a == 4 && m <= 2 && c <= 2) || (a <= 2 && m <= 2 && (c == 4 || groups.len() == 3))
}

/// `+CC ...` numbers: E.164 length (8–15 digits) with per-country lengths for the common codes.
fn intl_phone_ok(t: &[u8]) -> bool {
    if !phone_shape_ok(&t[1..]) {
        return false;
    }
    // `(0)` is the national trunk prefix some people write after the country code.
    let trunk = t.windows(3).any(|w| w == b"(0)");
    let digits: Vec<u8> = t.iter().copied().filter(u8::is_ascii_digit).collect();
    let n = digits.len() - usize::from(trunk);
    let cc = |p: &[u8]| digits.starts_with(p);
    if cc(b"1") {
        n == 11 && (b'2'..=b'9').contains(&digits[1])
    } else if cc(b"44") {
        (11..=12).contains(&n)
    } else if cc(b"49") {
        (10..=14).contains(&n)
    } else if cc(b"33") {
        n == 11
    } else {
        (8..=15).contains(&n)
    }
}

/// National numbers with a leading trunk `0` (UK, DE, FR and most of Europe): 10–12 digits.
fn national_phone_ok(t: &[u8]) -> bool {
    let digits = t.iter().filter(|c| c.is_ascii_digit()).count();
    if !(10..=12).contains(&digits) || !phone_shape_ok(t) || date_like(t) {
        return false;
    }
    // A `/` only separates the area code (`030/1234567`).
    let slash = t.iter().position(|&c| c == b'/');
    match slash {
        Some(p) => {
            t[..p]
                .iter()
                .all(|c| c.is_ascii_digit() || *c == b'(' || *c == b')')
                && !t[p + 1..].contains(&b'/')
        }
        None => true,
    }
}

/// Strips sentence punctuation and brackets around an unquoted assigned value.
fn trim_value(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while e > s && matches!(b[e - 1], b'.' | b')' | b']' | b'}' | b'>') {
        e -= 1;
    }
    while s < e && matches!(b[s], b'(' | b'[') {
        s += 1;
    }
    (s, e)
}

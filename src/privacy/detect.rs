//! Built-in detectors: a linear-time regex proposes candidates; the checks in `validate`
//! (checksums, formats) and `context` (boundaries, nearby label words) decide. Each detector
//! pushes [`Found`] values; overlaps between detectors are resolved by the scanner.
//!
//! Every regex here runs on the `regex` crate (finite automata, no backtracking). Detectors that
//! retry after a rejected candidate (`retrying`) only use patterns whose matches are bounded in
//! length, so a scan stays linear in the input size.

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use super::address::address_at;
use super::context::{
    clean_after, clean_before, context, digit_groups, digit_zones, extension_len, is_word,
    isolated, label_after, trim_value, Negative,
};
use super::fold::fold;
use super::validate::{
    card_ok, iban_length, iban_valid, intl_phone_ok, ipv4_ok, looks_like_secret,
    looks_like_secret_after, national_phone_ok, parens_ok, plain_purpose, ssn_valid, word_password,
};
use super::BUILTIN_COUNT;
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
    pub const STREET_ADDRESS: u16 = 7;
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
    pub const STREET_ADDRESS: u8 = 1;
}

/// The compiled built-in detectors (shared by every scanner in the process).
pub(crate) struct Detectors {
    email: Regex,
    url_credentials: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone_intl: Regex,
    phone_us: Regex,
    phone_zero: Regex,
    tokens: Regex,
    pem: Regex,
    pem_begin: Regex,
    labels: AhoCorasick,
    assigned: Regex,
    assigned_head: Regex,
    bearer: Regex,
    bearer_head: Regex,
    authorization: Regex,
    authorization_head: Regex,
}

/// Stems of the words that introduce an assigned secret (`pass` covers password, passwd,
/// passphrase, Passwort; `api` covers api_key, apiKey...; `auth` covers auth_key and the
/// `Authorization` header), and `bearer` for tokens. Searched
/// case-sensitively in lower, UPPER and Capitalised form: few enough patterns for the SIMD
/// multi-literal search, whereas a case-insensitive search is ~100x slower and would dominate
/// the cost of scanning clean prose. The anchored regexes then check the full label.
const LABELS: &[&str] = &[
    "pass",
    "pwd",
    // `pw` only before an operator, a JSON key's quote or a suffix: a two-letter literal
    // would slow the search down (~16%), and so would more literals (past 64 spellings the
    // search loses its SIMD prefilter: clean prose took 2.5x as long).
    "pw:",
    "pw=",
    "pw ",
    "pw\"",
    "pw_",
    "kennwort",
    "mot de passe",
    "contrase",
    "senha",
    "secret",
    "token",
    "api",
    "access",
    "auth",
    "private",
    "credential",
    "bearer",
    "basic",
];

/// The label spellings searched for: each of [`LABELS`] as written, UPPER and Capitalised.
fn label_variants() -> Vec<String> {
    let mut out = Vec::new();
    for l in LABELS {
        let mut cap = l.to_string();
        if let Some(f) = cap.get_mut(0..1) {
            f.make_ascii_uppercase();
        }
        for v in [l.to_string(), l.to_uppercase(), cap] {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// Bytes of context kept around digits for the digit detectors: longer than any digit-bearing
/// match (IBAN ≤ 42 bytes with spaces) plus the label look-back (40 bytes).
const ZONE_MARGIN: usize = 64;

/// The spaces the label patterns allow: ASCII ones and the Unicode ones `fold` leaves in place
/// (`mot de passe\u{a0}: ...` in French), as a regex class.
macro_rules! space {
    () => {
        r"[ \t\x{a0}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"
    };
}

/// A label (any spelling or suffix: `DB_PASSWORD`, `api_key_prod`) and an assignment operator
/// (`=`, `:`, `=>`, `:=`, ` is `, ` is:`). A password or key label may say what it is for first
/// (`password for the wifi is`, `api key for root@db01:`, `password for
/// https://example.com/login is`: up to ten words, a URL of up to 60 characters after its
/// scheme, without a query string, or a `host:port` counting as one (longer repetitions made
/// redaction 7% slower), the shortest reading): `secret`, `token` and a bare `pass`
/// may not, as prose says "the secret to success is", "the token for GPT-4o is" and "pass to
/// the next handler". The value (see [`ASSIGNED_VALUE`]) starts after it.
const ASSIGNED_HEAD: &str = concat!(
    r"(?:(?i:password|passwd|passphrase|passwort|pwd|kennwort|mot de passe|contrase[ñn]a|senha",
    r"|api[_\- ]?key|access[_\- ]?key|auth[_\- ]?key|private[_\- ]?key)",
    r"[A-Za-z0-9_.\-]{0,30}",
    // What it is for: `for the wifi`, `to the staging server`, `of my account`,
    // `for https://example.com/login`, `on db01:5432` (no query string: its `=` would read as
    // the operator).
    "(?:",
    space!(),
    "{1,4}(?i:for|to|of|on|at)(?:",
    space!(),
    r"{1,4}(?:[A-Za-z][A-Za-z0-9+.\-]{0,15}://)?[A-Za-z0-9'._@/\-]{1,60}",
    r"(?::[0-9]{1,5}(?:/[A-Za-z0-9'._@/\-]{0,60})?)?){1,10}?)?",
    r"|(?i:secret|token|credential)[A-Za-z0-9_.\-]{0,30}",
    // A bare `pass` (or `pw`) only as its own word part (`DB_PASS`, `pass.prod`), not
    // `passport`.
    r"|(?i:pass|pw)(?:[_.\-][A-Za-z0-9_.\-]{0,30})?)",
    r#"["']?"#,
    space!(),
    "{0,4}(?:=>|:=|=|:|",
    space!(),
    // ` is `, or ` is:` (`my password is: …`)
    "{1,4}(?i:is)(?:",
    space!(),
    "{1,4}|:))",
    space!(),
    "{0,4}",
);
/// The value: a quoted string to its closing quote on the same line (spaces, `,` and `;`
/// included: `"Xk9#mP2v;L!q7"`); else up to a space, quote, comma or semicolon, after an
/// opening quote that is never closed. Bounded: the detector stays linear.
const ASSIGNED_VALUE: &str = concat!(
    r#"(?:"[^"\r\n]{1,200}"|'[^'\r\n]{1,200}'|`[^`\r\n]{1,200}`"#,
    r#"|["'`]?[^\s"'`,;]{1,200})"#,
);

/// An `Authorization` (or `Proxy-Authorization`) header, found from its `Auth`: `:` or `=`,
/// an optional opening quote and an optional scheme word (`Token`, `Bearer`, `Basic`...).
const AUTHORIZATION_HEAD: &str = concat!(
    r#"^(?i:authorization)["']?"#,
    space!(),
    "{0,4}[:=]",
    space!(),
    r#"{0,4}["']?(?:(?i:token|bearer|basic|digest|apikey|api-key)"#,
    space!(),
    "{1,4})?",
);
/// The credential in an `Authorization` header: a token (hex, base64, a JWT).
const AUTHORIZATION_VALUE: &str = r"[A-Za-z0-9._~+/\-]{16,512}=*";

fn re(src: &str) -> Result<Regex> {
    Regex::new(src).map_err(|e| Error::Config(format!("built-in privacy regex failed: {e}")))
}

impl Detectors {
    pub(crate) fn new() -> Result<Self> {
        // Digits are ASCII `[0-9]`, never `\d` (any Unicode digit): the validators and
        // `digit_groups` read ASCII digits, and `Scanner::scan` has already folded the digits
        // of other scripts it knows to ASCII (`fold::fold_forms`).
        Ok(Detectors {
            email: re(
                // Latin-script letters (`jörg@müller.de`) but not other scripts, so text written
                // without a space before the address (`请发到zhang@x.cn`) stays out of the span.
                r"[\p{Latin}0-9._%+\-'’]{1,64}@[\p{Latin}0-9](?:[\p{Latin}0-9\-]{0,61}[\p{Latin}0-9])?(?:\.[\p{Latin}0-9](?:[\p{Latin}0-9\-]{0,61}[\p{Latin}0-9])?){0,8}\.[A-Za-z]{2,24}",
            )?,
            // The password runs to the last `@` before the path (`p@ss:w0rd` in
            // `postgres://admin:p@ss:w0rd@db/app`), as URL parsers read it, `?` and `#` pasted
            // unencoded included (`Xk9#mP?2`); the user may be empty (`redis://:p4ss@host`).
            // `url_password` cuts off a query that holds an address.
            url_credentials: re(concat!(
                r"(?i)[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{0,128}:",
                r"([^\s/]{0,256})@",
            ))?,
            // Groups separated by a space, `-`, `.` or `/`, the same throughout (`card_ok`).
            card: re(r"(?-u:\b)[0-9](?:[ \-./]?[0-9]){11,18}(?-u:\b)")?,
            // Either case: people type `gb82 west ...` too; the country's length and the
            // mod-97 check keep ordinary words out.
            iban: re(r"(?-u:\b)[A-Za-z]{2}[0-9]{2}[ \-]?[A-Za-z0-9]")?,
            ssn: re(r"(?-u:\b)[0-9]{3}[ \-.]?[0-9]{2}[ \-.]?[0-9]{4}(?-u:\b)")?,
            ipv4: re(r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)")?,
            ipv6: re(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.[0-9]{1,3}){0,3}")?,
            phone_intl: re(r"(?:\+|00)[1-9][0-9 ().\-]{6,24}[0-9]")?,
            phone_us: re(r"(?:1[ .\-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .\-]?[0-9]{3}[ .\-]?[0-9]{4}")?,
            phone_zero: re(r"\(?0[1-9][0-9]{0,4}\)?(?:[ ./\-]?[0-9]{2,8}){1,5}(?-u:\b)")?,
            tokens: re(concat!(
                r"(?-u:\b)(?:",
                r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,251}",
                r"|github_pat_[A-Za-z0-9_]{22,255}",
                r"|sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_\-]{20,}",
                r"|xox[abposre]-[A-Za-z0-9\-]{10,}",
                r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
                r"|https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}",
                r"|glpat-[A-Za-z0-9_\-]{20}",
                r"|npm_[A-Za-z0-9]{36}",
                r"|hf_[A-Za-z0-9]{30,40}",
                r"|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
                r"|AIza[0-9A-Za-z_\-]{35}",
                r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
                r")",
            ))?,
            pem: re(
                r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.)*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
            )?,
            pem_begin: re(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")?,
            labels: AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(label_variants())
                .map_err(|e| Error::Config(format!("built-in privacy labels failed: {e}")))?,
            assigned: re(&format!(r"^{ASSIGNED_HEAD}{ASSIGNED_VALUE}"))?,
            assigned_head: re(&format!(r"^{ASSIGNED_HEAD}"))?,
            bearer: re(r"^(?i:bearer|basic)[ \t\x{a0}\x{202f}]+[A-Za-z0-9._~+/\-]{16,512}=*")?,
            bearer_head: re(r"^(?i:bearer|basic)[ \t\x{a0}\x{202f}]+")?,
            authorization: re(&format!("{AUTHORIZATION_HEAD}{AUTHORIZATION_VALUE}"))?,
            authorization_head: re(AUTHORIZATION_HEAD)?,
        })
    }

    /// Runs the enabled built-in detectors over `text`.
    ///
    /// Detectors that need digits only look at the zones around digits (see [`digit_zones`]),
    /// so prose with a few numbers costs little more than prose without. A zone where a digit
    /// is next to a typographic separator (no-break or thin space, en dash, non-breaking
    /// hyphen, two or more spaces) is scanned as its ASCII [`fold`](super::fold) and the spans
    /// are mapped back to `text`.
    pub(crate) fn run(&self, text: &str, enabled: &[bool; BUILTIN_COUNT], out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let on = |k: u16| enabled[usize::from(k)];
        if on(kind::SECRET) {
            self.secrets(text, out);
        }
        if on(kind::EMAIL) && memchr::memchr(b'@', b).is_some() {
            self.emails(text, out);
        }
        let digit_kinds = [
            kind::IBAN,
            kind::CREDIT_CARD,
            kind::US_SSN,
            kind::IP_ADDRESS,
            kind::PHONE,
            kind::STREET_ADDRESS,
        ];
        if !digit_kinds.iter().any(|&k| on(k)) {
            return;
        }
        for z in digit_zones(b, ZONE_MARGIN) {
            // A street has letters: a zone of digits and punctuation alone (a table of
            // figures, a long date list) cannot hold one.
            if on(kind::STREET_ADDRESS)
                && b[z.start..z.end]
                    .iter()
                    .any(|c| c.is_ascii_alphabetic() || *c >= 0x80)
            {
                addresses(text, z.first_digit, z.past_last_digit, out);
            }
            let Some(zone) = text.get(z.start..z.end) else {
                continue;
            };
            let first = out.len();
            match (z.spaced || z.wide).then(|| fold(zone, z.spaced)).flatten() {
                None => self.numbers(zone, z.digits, enabled, out),
                Some(folded) => {
                    self.numbers(folded.text(), z.digits, enabled, out);
                    for f in &mut out[first..] {
                        f.start = folded.original(f.start);
                        f.end = folded.original(f.end);
                    }
                }
            }
            for f in &mut out[first..] {
                f.start += z.start;
                f.end += z.start;
            }
        }
    }

    /// Runs the enabled digit detectors (but the street address one, which reads the text
    /// around the zone) over one zone holding `digits` digits.
    fn numbers(
        &self,
        zone: &str,
        digits: usize,
        enabled: &[bool; BUILTIN_COUNT],
        out: &mut Vec<Found>,
    ) {
        let on = |k: u16| enabled[usize::from(k)];
        // Each kind needs a minimum number of digits: most zones in prose have a few. A card
        // and an SSN need them in one chain, each digit at most one `-`, `.`, `/` or space from
        // the next (their regexes' shape): `1:1:1:…` holds many digits and no chain.
        let chain = if digits >= 9 {
            longest_digit_chain(zone.as_bytes())
        } else {
            0
        };
        if on(kind::IBAN) && digits >= 8 {
            self.ibans(zone, out);
        }
        if on(kind::CREDIT_CARD) && chain >= 12 {
            self.cards(zone, out);
        }
        if on(kind::US_SSN) && chain >= 9 {
            self.ssns(zone, out);
        }
        if on(kind::IP_ADDRESS) && digits >= 2 && zone.contains(['.', ':']) {
            self.ips(zone, out);
        }
        if on(kind::PHONE) && digits >= 8 {
            self.phones(zone, out);
        }
    }

    fn secrets(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let has_at = memchr::memchr(b'@', b).is_some();
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
        self.private_keys(text, out);
        // Only where a label word occurs (one Aho-Corasick pass): the anchored full pattern
        // finds the assignment, the anchored head pattern (no value) tells where the value
        // starts. Plain DFA searches over a bounded slice; no capture groups.
        let mut pos = 0;
        while let Some(k) = self.labels.find(&b[pos..]) {
            let at = pos + k.start();
            pos += k.end();
            // `pw` is a label only as a word of its own (not `SPW:` or `4.0bpw`).
            let pw = b[at..]
                .get(..2)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"pw"));
            if pw && at > 0 && b[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let rest = &text[at..];
            let bearer = b[at..]
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case(&b'b'));
            let authorization = b
                .get(at..at + 13)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"authorization"));
            let (full, head, conf) = if bearer {
                (&self.bearer, &self.bearer_head, 0.85)
            } else if authorization {
                (&self.authorization, &self.authorization_head, 0.85)
            } else {
                (&self.assigned, &self.assigned_head, 0.8)
            };
            let (Some(m), Some(h)) = (full.find(rest), head.find(rest)) else {
                continue;
            };
            if h.end() >= m.end() {
                continue;
            }
            let (s, e) = (at + h.end(), at + m.end());
            let value = if bearer || (authorization && has_scheme(&rest[..h.end()])) {
                // A credential after its scheme word needs no further evidence.
                Some(trim_value(b, s, e))
            } else if authorization {
                Some(trim_value(b, s, e)).filter(|&(s, e)| looks_like_secret(&b[s..e]))
            } else {
                // A type name stands only unquoted after a `:` (a type annotation).
                let annotation = rest[..h.end()].trim_end().ends_with(':') && !opens_quote(b[s]);
                value_readings(b, s, e)
                    .into_iter()
                    .find(|&(s, e)| s < e && looks_like_secret_after(&b[s..e], annotation))
            };
            // Else perhaps a password of one dictionary word, which is less certain.
            let (value, conf) = match value {
                Some(v) => (Some(v), conf),
                None if !bearer && !authorization => {
                    (said_word_password(text, at, &rest[..h.end()], s, e), 0.7)
                }
                None => (None, conf),
            };
            // The scan resumes after the value found, or after the head when there is none:
            // a rejected quoted value may hold a label of its own (`"rotated; new password:
            // Xk9#mP2v"`).
            match value {
                Some((s, e)) => {
                    out.push(secret(s, e, priority::SECRET_ASSIGNED, conf));
                    pos = pos.max(e);
                }
                None => pos = pos.max(s),
            }
        }
        if has_at {
            for c in self.url_credentials.captures_iter(text) {
                let Some(v) = c.get(1) else { continue };
                let end = self.url_password_end(text, v.start(), v.end());
                let val = &text.as_bytes()[v.start()..end];
                if val.len() >= 4 && !matches!(val[0], b'$' | b'<' | b'{' | b'*' | b'%') {
                    out.push(secret(v.start(), end, priority::SECRET_TOKEN, 0.9));
                }
            }
        }
    }

    /// Where the URL password matched at `start..end` (what `user:` is followed by up to the
    /// last `@` before the path) ends. Its `?`, `#`, `=` and `@` are its own (`Pa55#w=rd`,
    /// `ab12#Xyz@34`, `Xk9@mP?2=z`), unless a host and a query follow an `@` before the first
    /// `?` or `#`; then the password ends at that `@`:
    /// - a query with `=` or `&` after a named host, one with a `.` or a `:port`, or
    ///   `localhost` (`pw1234@host.example?notify=ann@example.com`);
    /// - an address starting in the query (`pw1234@app.example.com#ann@example.com`), unless
    ///   it is the URL's own host going on to a port or a path (`ab12@Xyz#34@db.internal:5432/`).
    ///
    /// Looks at most 256 bytes past `end`, so the scan stays linear.
    fn url_password_end(&self, text: &str, start: usize, end: usize) -> usize {
        let val = &text.as_bytes()[start..end];
        let Some(q) = val.iter().position(|c| matches!(c, b'?' | b'#')) else {
            return end;
        };
        let Some(at) = val[..q].iter().rposition(|&c| c == b'@') else {
            return end;
        };
        let host = &val[at + 1..q];
        let named =
            host.contains(&b'.') || host.contains(&b':') || host.eq_ignore_ascii_case(b"localhost");
        let query = val[q..].contains(&b'=') || val[q..].contains(&b'&');
        if (named && query) || self.address_in_query(text, start + q + 1, end) {
            start + at
        } else {
            end
        }
    }

    /// Whether an email match begins at or after `from` and before `end`, and is not followed
    /// by a port or a path (then it is a URL's own host after its last `@`).
    fn address_in_query(&self, text: &str, from: usize, end: usize) -> bool {
        let mut stop = (end + 256).min(text.len());
        while !text.is_char_boundary(stop) {
            stop -= 1;
        }
        let Some(window) = text.get(from..stop) else {
            return false;
        };
        self.email.find(window).is_some_and(|m| {
            from + m.start() < end && !matches!(window.as_bytes().get(m.end()), Some(b':' | b'/'))
        })
    }

    /// PEM private keys: whole blocks, and keys pasted without their END line (the BEGIN
    /// line and the base64 after it). Text without a BEGIN line costs one literal search.
    fn private_keys(&self, text: &str, out: &mut Vec<Found>) {
        let begins: Vec<_> = self.pem_begin.find_iter(text).map(|m| m.range()).collect();
        if begins.is_empty() {
            return;
        }
        let secret = |start, end, confidence| Found {
            start,
            end,
            kind: kind::SECRET,
            priority: priority::SECRET_TOKEN,
            confidence,
        };
        let mut blocks = Vec::new();
        for m in self.pem.find_iter(text) {
            blocks.push(m.range());
            out.push(secret(m.start(), m.end(), 0.99));
        }
        // Both sorted by start, the blocks disjoint: one merge pass finds the BEGIN lines
        // outside every whole block.
        let mut next = 0;
        for begin in begins {
            while blocks.get(next).is_some_and(|r| r.end <= begin.start) {
                next += 1;
            }
            if blocks.get(next).is_some_and(|r| r.contains(&begin.start)) {
                continue;
            }
            if let Some(end) = pem_body_end(text.as_bytes(), begin.end) {
                out.push(secret(begin.start, end, 0.95));
            }
        }
    }

    fn emails(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        for m in self.email.find_iter(text) {
            // Apostrophes belong to a local part (`john.o'brien@`, or `o’brien` as phones
            // type it), not in front of one (`'ann@example.com'`).
            let mut start = m.start();
            while start < m.end() {
                if matches!(b[start], b'.' | b'-' | b'\'') {
                    start += 1;
                } else if b[start..].starts_with("’".as_bytes()) {
                    start += "’".len();
                } else {
                    break;
                }
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
        // The regex finds only the head (`DE89` + one character at a word start); the body is
        // walked by hand up to the country's length, so a scan never re-reads long runs.
        for m in self.iban.find_iter(text) {
            let s = m.start();
            let country = [b[s].to_ascii_uppercase(), b[s + 1].to_ascii_uppercase()];
            let Some(want) = iban_length(&country) else {
                continue;
            };
            let mut compact = [0u8; 34];
            let mut n = 0;
            let mut i = s;
            while n < want && i < b.len() {
                let c = b[i];
                if c.is_ascii_alphanumeric() {
                    compact[n] = c.to_ascii_uppercase();
                    n += 1;
                } else if !((c == b' ' || c == b'-')
                    && n >= 4
                    && b.get(i + 1).is_some_and(u8::is_ascii_alphanumeric))
                {
                    break;
                }
                i += 1;
            }
            if n != want || b.get(i).is_some_and(|&c| is_word(c)) || !iban_valid(&compact[..n]) {
                continue;
            }
            out.push(Found {
                start: s,
                end: i,
                kind: kind::IBAN,
                priority: priority::IBAN,
                confidence: 0.99,
            });
        }
    }

    fn cards(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        // A card starts where its digit run starts: any later group is glued to the digits
        // before it, so a rejected match never hides a card inside it (plain `find_iter`).
        for m in self.card.find_iter(text) {
            let s = m.start();
            if !clean_before(b, s, true) {
                continue;
            }
            let groups = digit_groups(b, s, m.end());
            // Digits after the card only split off when they are another field, such as an
            // expiry date (`4111 1111 1111 1111 12/25`); `-041` continues the same number.
            let j = (1..=groups.len()).rev().find(|&j| {
                let split_ok = if j == groups.len() {
                    clean_after(b, groups[j - 1].1, true)
                } else {
                    b[groups[j - 1].1] == b' ' && b.get(groups[j].1) == Some(&b'/')
                };
                split_ok && card_ok(b, &groups[..j])
            });
            let Some(j) = j else {
                continue;
            };
            // An unbroken run of 17–19 digits is usually just a big number (constants, ids), and
            // 12 digits (short Maestro cards) are as often an order or account number: call
            // either a card only next to a card label.
            let end = groups[j - 1].1;
            let digits: usize = groups[..j].iter().map(|g| g.1 - g.0).sum();
            let labelled = context(b, s, 40, CARD_WORDS, &Negative::NONE) == Some(true)
                || label_after(b, end, 40, CARD_WORDS);
            if ((j == 1 && digits > 16) || digits == 12) && !labelled {
                continue;
            }
            out.push(Found {
                start: s,
                end: groups[j - 1].1,
                kind: kind::CREDIT_CARD,
                priority: priority::CREDIT_CARD,
                confidence: 0.99,
            });
        }
    }

    fn ssns(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        let num = |r: &[u8]| r.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        for m in self.ssn.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            let t = &b[s..e];
            // `123-45-6789`, `123 45 6789`, `123.45.6789` or `123456789`; one separator style
            // throughout.
            let digits: Vec<u8> = t.iter().copied().filter(u8::is_ascii_digit).collect();
            let seps: Vec<u8> = t.iter().copied().filter(|c| !c.is_ascii_digit()).collect();
            let (dashed, bare) = (seps == b"--", seps.is_empty());
            if !(dashed || bare || seps == b"  " || seps == b"..") || !isolated(b, s, e, true) {
                continue;
            }
            if !ssn_valid(num(&digits[0..3]), num(&digits[3..5]), num(&digits[5..9])) {
                continue;
            }
            // Spaced or bare digits are too common to trust without a nearby label.
            if !dashed && context(b, s, 40, SSN_WORDS, &Negative::NONE) != Some(true) {
                continue;
            }
            out.push(Found {
                start: s,
                end: e,
                kind: kind::US_SSN,
                priority: priority::US_SSN,
                confidence: if dashed { 0.9 } else { 0.8 },
            });
        }
    }

    fn ips(&self, text: &str, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        for m in self.ipv4.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            // A `:port` or a `/prefix` length may follow an address (outside the span); other
            // glue means a longer token.
            let port = b.get(e) == Some(&b':');
            let end_ok = port || prefix_len(b, e).is_some() || clean_after(b, e, false);
            if !ipv4_ok(&b[s..e]) || !end_ok || !clean_before(b, s, false) {
                continue;
            }
            if context(b, s, 12, &[], &VERSION_WORDS) == Some(false) {
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
            let glued = s > 0 && (is_word(b[s - 1]) || matches!(b[s - 1], b':' | b'.' | b'/'));
            if glued {
                return Step::Skip;
            }
            // A trailing `:` belongs to the sentence ("address fe80::1: unreachable").
            let mut end = e;
            loop {
                let cand = &text[s..end];
                let colons = cand.bytes().filter(|&c| c == b':').count();
                if (colons >= 3 || cand.bytes().any(|c| c.is_ascii_digit()))
                    && cand.len() >= 3
                    && cand.parse::<std::net::Ipv6Addr>().is_ok()
                    && !b.get(end).is_some_and(|&c| is_word(c) || c == b':')
                {
                    break;
                }
                if end > s + 2 && b[end - 1] == b':' && b[end - 2] != b':' {
                    end -= 1;
                } else {
                    return Step::Retry;
                }
            }
            out.push(Found {
                start: s,
                end,
                kind: kind::IP_ADDRESS,
                priority: priority::IP_ADDRESS,
                confidence: 0.9,
            });
            Step::Accept(end)
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
            if !clean_before(b, s, true) || (s > 0 && b[s - 1] == b'+') {
                return Step::Skip;
            }
            let Some(end) = shrink_to_valid(b, s, e, intl_phone_ok) else {
                return Step::Retry;
            };
            let end = end + extension_len(b, end);
            if !clean_after(b, end, true) || negative_phone_context(b, s) {
                return Step::Retry;
            }
            push(s, end, 0.9);
            Step::Accept(end)
        });
        for m in self.phone_us.find_iter(text) {
            let s = m.start();
            let e = m.end() + extension_len(b, m.end());
            if (s > 0 && b[s - 1] == b'+') || !isolated(b, s, e, true) {
                continue;
            }
            let t = &b[s..m.end()];
            if !parens_ok(t) || negative_phone_context(b, s) {
                continue;
            }
            // `415-555-0132`, `(415) 555-0132`, `415.555.0132` are phone-shaped enough; bare or
            // space-separated digits must also be valid NANP numbers (area and exchange 2-9),
            // and bare ones need a label nearby.
            let digits: Vec<u8> = t.iter().copied().filter(u8::is_ascii_digit).collect();
            let national = &digits[digits.len() - 10..];
            let nanp = national[0] >= b'2' && national[3] >= b'2';
            let bare = t.iter().all(u8::is_ascii_digit);
            let loose = t.iter().all(|c| c.is_ascii_digit() || *c == b' ');
            if loose && !nanp {
                continue;
            }
            if bare && context(b, s, 40, PHONE_WORDS, &NOT_PHONE_WORDS) != Some(true) {
                continue;
            }
            push(s, e, if bare { 0.7 } else { 0.85 });
        }
        retrying(&self.phone_zero, text, |s, e| {
            if !clean_before(b, s, true) {
                return Step::Skip;
            }
            let Some(end) = shrink_to_valid(b, s, e, national_phone_ok) else {
                return Step::Retry;
            };
            let end = end + extension_len(b, end);
            if !clean_after(b, end, true) || negative_phone_context(b, s) {
                return Step::Retry;
            }
            // An unbroken run of digits needs a label nearby to be called a phone number.
            let unbroken = b[s..end].iter().all(u8::is_ascii_digit);
            if unbroken
                && (end - s > 11 || context(b, s, 40, PHONE_WORDS, &NOT_PHONE_WORDS) != Some(true))
            {
                return Step::Retry;
            }
            push(s, end, 0.8);
            Step::Accept(end)
        });
    }
}

const CARD_WORDS: &[&[u8]] = &[
    b"card",
    b"credit",
    b"debit",
    b"visa",
    b"mastercard",
    b"amex",
    b"maestro",
    b"unionpay",
    b"cc",
    b"pan",
    b"karte",
    b"carte",
    b"tarjeta",
    b"payment",
    b"paid",
    b"pay",
];
const SSN_WORDS: &[&[u8]] = &[b"ssn", b"social security", b"ss#", b"ss no", b"taxpayer id"];
/// Words before a dotted quad that make it a version, not an address (whole words: `update`
/// and `updates`, not `Updated`, which as often says that an address changed).
const VERSION_WORDS: Negative = Negative {
    words: &[
        b"version",
        b"ver ",
        b"ver.",
        b"release",
        b"build",
        b"firmware",
        b"sdk",
        b"v.",
        b"upgrade",
        b"update",
        b"patch",
        b"installed",
        b"bump",
        b"oid",
        // Past tenses that say what happened to a version (not `updated`, see above).
        b"released",
        b"bumped",
        b"upgraded",
    ],
    stems: &[],
};
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
    b"t\xc3\xa9l",
    b"appel",
    b"joindre",
    b"num\xc3\xa9ro",
    b"rufen",
    b"anruf",
    b"erreichbar",
    b"llam",
    b"tel\xc3\xa9fono",
    b"m\xc3\xb3vil",
    b"hotline",
    b"landline",
];
/// Words before a number that make it something other than a phone number. Whole words
/// (`part`, not `partner`; `vin`, not `Vincent`), but the German stems that start compounds
/// and inflections (`Bestellnummer`, `Rechnungsnummer`, `Rechnungen`, `Referenznummer`).
const NOT_PHONE_WORDS: Negative = Negative {
    words: &[
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
        b"account no",
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
        b"commande",
        b"facture",
        b"part",
        b"model",
        b"item",
        b"product",
        b"reference",
        b"confirmation",
        b"booking",
        b"reservation",
        b"policy",
        b"claim",
        b"routing",
        b"license",
        b"licence",
        b"passport",
        b"vin",
        b"meeting id",
        // German `Modell` with its compounds (`Modellnummer`, `Modell-Nr.`); a stem would
        // take `Modelled` too.
        b"modell",
    ],
    stems: &[b"bestell", b"rechnung", b"referenz"],
};

/// What to do after a candidate.
enum Step {
    /// Accepted, ending here; continue after it.
    Accept(usize),
    /// Rejected because its start is glued to the token before it: every position inside the
    /// match is glued too, so continue after the match.
    Skip,
    /// Rejected on content: a real match may start inside it; continue one character later.
    Retry,
}

/// Finds matches of `re`, letting `decide` accept (and trim) or reject each. Only for patterns
/// with bounded match length, which keeps the scan linear.
fn retrying(re: &Regex, text: &str, mut decide: impl FnMut(usize, usize) -> Step) {
    let mut pos = 0;
    while pos <= text.len() {
        let Some(m) = re.find_at(text, pos) else {
            break;
        };
        pos = match decide(m.start(), m.end()) {
            Step::Accept(end) => end.max(next_char(text, m.start())),
            Step::Skip => m.end().max(next_char(text, m.start())),
            Step::Retry => next_char(text, m.start()),
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

/// Length of a CIDR prefix length (`/0` to `/32`) right after an IPv4 address ending at `e`,
/// when nothing but a clean token end follows it (`10.0.0.0/8,`, not `1.2.3.4/5.6`).
fn prefix_len(b: &[u8], e: usize) -> Option<usize> {
    if b.get(e) != Some(&b'/') {
        return None;
    }
    let d = b[e + 1..]
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    let v = b[e + 1..e + 1 + d]
        .iter()
        .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
    let ok = (1..=2).contains(&d)
        && v <= 32
        && !(d == 2 && b[e + 1] == b'0')
        && clean_after(b, e + 1 + d, false);
    ok.then_some(1 + d)
}

fn negative_phone_context(b: &[u8], s: usize) -> bool {
    context(b, s, 24, PHONE_WORDS, &NOT_PHONE_WORDS) == Some(false)
}

/// Shrinks `[s, e)` group by group from the right until `valid` accepts it.
fn shrink_to_valid(b: &[u8], s: usize, e: usize, valid: fn(&[u8]) -> bool) -> Option<usize> {
    let groups = digit_groups(b, s, e);
    (1..=groups.len())
        .rev()
        .map(|j| groups[j - 1].1)
        .find(|&end| valid(&b[s..end]))
}

/// True when an `Authorization` header's head (up to its value) ends in a scheme word
/// (`Authorization: Token `), not in the `:` or a quote.
fn has_scheme(head: &str) -> bool {
    head.trim_end().ends_with(|c: char| c.is_ascii_alphabetic())
}

/// True when an assigned value starting with `c` is quoted (as [`ASSIGNED_VALUE`] quotes).
fn opens_quote(c: u8) -> bool {
    matches!(c, b'"' | b'\'' | b'`')
}

/// The readings of an assigned value `[s, e)` (as [`ASSIGNED_VALUE`] matched it), best first,
/// without quotes: a quoted string whole (`"Xk9#mP2v;L!q7"`, `"correct horse battery staple"`),
/// then its first word, trimmed of sentence punctuation (`'hunter2' is what I use, it's`
/// quoted by mistake up to the apostrophe). An unquoted value has one reading.
fn value_readings(b: &[u8], s: usize, e: usize) -> [(usize, usize); 2] {
    let quote = b[s];
    let quoted = opens_quote(quote);
    let body = s + usize::from(quoted);
    // The first word ends at any whitespace, as the value pattern's `\s` does (a no-break
    // space included), or at a quote, `,` or `;`.
    let ends = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | ';');
    let stop = match std::str::from_utf8(&b[body..e]) {
        Ok(t) => t
            .char_indices()
            .find(|&(_, c)| ends(c))
            .map_or(e, |(i, _)| body + i),
        Err(_) => b[body..e]
            .iter()
            .position(|&c| c.is_ascii() && ends(char::from(c)))
            .map_or(e, |i| body + i),
    };
    let word = trim_value(b, body, stop);
    let closed = quoted && e >= s + 2 && b[e - 1] == quote;
    let whole = if closed { (s + 1, e - 1) } else { word };
    [whole, word]
}

/// Labels that name a password and nothing else: a dictionary word after one of them can be
/// the password (see [`said_word_password`]). Not `pass` (`my boarding pass is ready`), a
/// secret, a token or a key, whose values are never dictionary words.
const PASSWORD_LABELS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"passphrase",
    b"passwort",
    b"pwd",
    b"pw",
    b"kennwort",
    b"mot de passe",
    b"contrase\xc3\xb1a",
    b"contrasena",
    b"senha",
];

/// Endings of adjectives, which prose says of a password (`the password is irrelevant`,
/// `dangerous`, `acceptable`): an unquoted word of six letters or more with one is not read
/// as the password (some passwords are lost with them: `elephant`, `marble`).
const ADJECTIVE_ENDINGS: &[&[u8]] = &[
    b"ant", b"ent", b"ous", b"ble", b"ive", b"ful", b"less", b"ory", b"ary", b"ical",
];

/// Conjunctions after which a password said last in its clause may go on: `my password is
/// sunshine and my user name is bob`.
const CLAUSE_ENDS: &[&[u8]] = &[
    b"and", b"but", b"so", b"or", b"please", b"btw", b"thanks", b"thx", b"lol", b"haha", b"ok",
];

/// The password of one dictionary word in an assignment whose value [`looks_like_secret`]
/// rejected (`my wifi password is sunshine`, `"password": "dragon"`, `pwd: letmein`), given
/// the text, the label's start, the head (label and operator) and the value's span:
/// - after a [`PASSWORD_LABELS`] word with no suffix and no letter or digit before it
///   (`DB_PASSWORD: sunshine` counts; `passwordHash: bcrypt` names a field, `mypassword`
///   is a name), and what it is for, if said, in at most five plain words
///   ([`plain_purpose`]: not `the password for your account with anyone is forbidden`);
/// - quoted (and closed), or unquoted after ` is ` or `: ` and last in its clause (see
///   [`ends_clause`]: `the password is stored in the vault` goes on); `password = secret` is
///   code;
/// - unquoted after ` is `, a label [`told`] as whose or which (`my password`, `the wifi
///   password`), not prose about passwords (`a strong password is essential`);
/// - unquoted after `:`, lower-case (`password: Sunshine` may be a type), after a space
///   (`passwd:gecos` is a name) and not a key right after `{` or `(` (the first field of an
///   object or argument of a call, on its line or the next: `{db_password: word}`); later
///   fields (`{ host, password: word }`) are read as values: a miss there would be worse;
/// - unquoted, not an adjective by its ending ([`ADJECTIVE_ENDINGS`], words of six letters or
///   more);
/// - the word itself (not a participle, a name made from a label, a word said of
///   passwords...): see [`word_password`].
///
/// Out of line: it runs rarely, and inlined into the scan loop it made scanning clean prose
/// 13% slower (`cargo bench --bench pii`).
#[cold]
#[inline(never)]
fn said_word_password(
    text: &str,
    label: usize,
    head: &str,
    s: usize,
    e: usize,
) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let named = PASSWORD_LABELS.iter().find(|l| {
        b.get(label..label + l.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(l))
    })?;
    let after_label = b.get(label + named.len()).copied();
    if after_label.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        || (label > 0 && b[label - 1].is_ascii_alphanumeric())
    {
        return None;
    }
    // The operator, and what the password is for: the words between the label and it (and
    // the ` is` of ` is:`).
    let tail = head.get(named.len()..).unwrap_or("").trim_end();
    let colon = tail.ends_with(':');
    let is = without_is(tail).is_some();
    let purpose = tail.trim_end_matches(['=', '>', ':']);
    let purpose = without_is(purpose).unwrap_or(purpose);
    if !plain_purpose(purpose.trim_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'')) {
        return None;
    }
    let quoted = opens_quote(b[s]);
    let (ws, we) = if quoted {
        if !(e >= s + 2 && b[e - 1] == b[s]) {
            return None; // never closed
        }
        (s + 1, e - 1)
    } else if colon || is {
        let (ws, mut we) = value_readings(b, s, e)[1];
        while we > ws && matches!(b[we - 1], b'!' | b'?') {
            we -= 1;
        }
        (ws, we)
    } else {
        return None;
    };
    let word = &b[ws..we];
    if !word_password(word) {
        return None;
    }
    if is && !quoted && !told(b, label) {
        return None;
    }
    if !quoted {
        // Nor, unquoted, an adjective by its ending (`the password is irrelevant`).
        let lower = word.to_ascii_lowercase();
        if lower.len() >= 6 && ADJECTIVE_ENDINGS.iter().any(|end| lower.ends_with(end)) {
            return None;
        }
        if colon {
            let spaced = text[..ws]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace);
            // The key's start (before a prefix such as `db_`), then back over spaces, line
            // breaks and quotes.
            let key = b[..label]
                .iter()
                .rposition(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')))
                .map_or(0, |i| i + 1);
            let opens_code = b[..key]
                .iter()
                .rev()
                .find(|c| !(c.is_ascii_whitespace() || matches!(c, b'"' | b'\'')))
                .is_some_and(|c| matches!(c, b'{' | b'('));
            if !spaced || opens_code || !word.iter().all(u8::is_ascii_lowercase) {
                return None;
            }
        }
        if !ends_clause(&text[we..]) {
            return None;
        }
    }
    Some((ws, we))
}

/// `s` without its last word when that word is `is` (any case) after a space: the operator
/// ` is` of an assignment's head.
fn without_is(s: &str) -> Option<&str> {
    let cut = s.len().checked_sub(2)?;
    let rest = s.get(..cut)?;
    (s.as_bytes()[cut..].eq_ignore_ascii_case(b"is") && rest.ends_with(char::is_whitespace))
        .then_some(rest)
}

/// True when `rest`, what follows an unquoted value, ends the value's clause: the end of the
/// line, a punctuation mark or a dash, after spaces or not (French writes `soleil !`), or,
/// after a space, a [`CLAUSE_ENDS`] word.
fn ends_clause(rest: &str) -> bool {
    let after_spaces = rest.trim_start_matches(|c: char| c.is_whitespace() && c != '\n');
    let spaced = after_spaces.len() < rest.len();
    let mut chars = after_spaces.chars();
    let first = chars.next();
    let then_not_a_word = || chars.clone().next().is_none_or(|c| !c.is_alphanumeric());
    match first {
        None | Some('\r' | '\n') => true,
        Some('.' | ',' | '!' | '?' | ';' | ')' | '"' | '\'' | '-' | '\u{2013}' | '\u{2014}') => {
            then_not_a_word()
        }
        Some(_) if spaced => {
            let b = after_spaces.as_bytes();
            CLAUSE_ENDS.iter().any(|c| {
                b.len() >= c.len()
                    && b[..c.len()].eq_ignore_ascii_case(c)
                    && b.get(c.len()).is_none_or(|c| !c.is_ascii_alphanumeric())
            })
        }
        _ => false,
    }
}

/// Words that tell whose or which password it is: `my password is`, `the wifi password is`.
const TELLING_WORDS: &[&[u8]] = &[
    b"my", b"our", b"your", b"his", b"her", b"their", b"the", b"this", b"that",
];

/// Words that make a password any password (`a strong password is paramount`, `in every
/// password`): prose about passwords.
const GENERAL_WORDS: &[&[u8]] = &[
    b"a", b"an", b"any", b"every", b"each", b"no", b"some", b"one", b"in", b"of", b"for", b"with",
    b"what", b"whose", b"which",
];

/// True when the password label at `label` is told as whose or which (a [`TELLING_WORDS`]
/// word among the three before it: `the wifi password`, `my new wifi password`), or starts
/// its line or clause, perhaps after a word or two (`Password is sunshine`, `Wifi password
/// is sunshine`), unless a [`GENERAL_WORDS`] word comes first (`a strong password is
/// paramount`, `the key factor in a password is length`: prose about passwords).
fn told(b: &[u8], label: usize) -> bool {
    let mut end = label;
    for _ in 0..3 {
        let gap = b[..end]
            .iter()
            .rev()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count();
        let word_end = end - gap;
        let start = b[..word_end]
            .iter()
            .rposition(|c| !c.is_ascii_alphanumeric())
            .map_or(0, |i| i + 1);
        if start == word_end {
            // No word before: the start of the text, a line or a clause.
            return true;
        }
        let word = b[start..word_end].to_ascii_lowercase();
        if TELLING_WORDS.contains(&word.as_slice()) {
            return true;
        }
        if GENERAL_WORDS.contains(&word.as_slice()) {
            return false;
        }
        end = start;
    }
    false
}

/// True when `c` may be part of a PEM body line (base64).
fn base64_byte(c: &u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')
}

/// The separator before a PEM body line at `i`: spaces, tabs and at most one line break (also
/// written `\n` inside a JSON string, as service-account files hold keys). Its end, or `None`
/// when there is none, it holds a blank line, or the text ends.
fn pem_separator(b: &[u8], i: usize) -> Option<usize> {
    let (mut j, mut breaks) = (i, 0);
    while let Some(&c) = b.get(j) {
        let escaped = c == b'\\' && matches!(b.get(j + 1), Some(b'n' | b'r'));
        if c == b'\n' || (escaped && b[j + 1] == b'n') {
            breaks += 1;
            if breaks > 1 {
                return None;
            }
        } else if !matches!(c, b' ' | b'\t' | b'\r') && !escaped {
            break;
        }
        j += 1 + usize::from(escaped);
    }
    (j > i && j < b.len()).then_some(j)
}

/// Where the body of a PEM block starts after its BEGIN line ending at `i`: past the armor
/// headers (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`, `Version: …`) and one blank line.
fn pem_headers_end(b: &[u8], mut i: usize) -> usize {
    loop {
        let start = match b.get(i..) {
            Some([b'\r', b'\n', ..]) => i + 2,
            Some([b'\n', ..]) => i + 1,
            _ => return i,
        };
        let end = b[start..]
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
            .map_or(b.len(), |k| start + k);
        let line = &b[start..end];
        let header = line.iter().position(|&c| c == b':').is_some_and(|k| {
            line.get(k + 1) == Some(&b' ')
                && line[0].is_ascii_alphabetic()
                && line[..k]
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        });
        match (header, line.is_empty()) {
            (true, _) => i = end,
            (false, true) => return end,
            (false, false) => return i,
        }
    }
}

/// End of the base64 body of a PEM private key whose END line is missing (cut off when
/// pasted), its BEGIN line ending at `i`: the lines after it up to a blank line, a line that is
/// not base64, a short (last) line, or the end of the text. A line that runs into other text
/// (`AAAB...`) ends it too. `None` without key material (fewer than 20 base64 characters).
fn pem_body_end(b: &[u8], i: usize) -> Option<usize> {
    let mut i = pem_headers_end(b, i);
    let (mut end, mut material) = (None, 0);
    while let Some(s) = pem_separator(b, i) {
        let len = b[s..].iter().take_while(|c| base64_byte(c)).count();
        if len == 0 {
            break;
        }
        let e = s + len;
        end = Some(e);
        material += len;
        let line_ends = b
            .get(e)
            .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\\'));
        if len < 40 || b[e - 1] == b'=' || !line_ends {
            break;
        }
        i = e;
    }
    end.filter(|_| material >= 20)
}

/// The most digits in `b` that follow one another with at most one separator (`-`, `.`, `/`
/// or a space) between two of them: an upper bound on the digits a card or an SSN match can
/// hold there.
fn longest_digit_chain(b: &[u8]) -> usize {
    let (mut best, mut run, mut gap) = (0, 0, 0);
    for &c in b {
        if c.is_ascii_digit() {
            run += 1;
            gap = 0;
            best = best.max(run);
        } else if matches!(c, b'-' | b'.' | b'/' | b' ') && gap == 0 && run > 0 {
            gap = 1;
        } else {
            run = 0;
            gap = 0;
        }
    }
    best
}

/// Street addresses whose house number is a digit run in `[s, e)` of `text`.
///
/// Out of line, like [`said_word_password`]: inlined into the scan loop, this made scanning
/// clean prose 15–18% slower, though its own work is about 5% (`cargo bench --bench pii`).
#[cold]
fn addresses(text: &str, s: usize, e: usize, out: &mut Vec<Found>) {
    let b = text.as_bytes();
    let mut i = s;
    while let Some(off) = b[i..e].iter().position(u8::is_ascii_digit) {
        let ds = i + off;
        let de = ds + b[ds..].iter().take_while(|c| c.is_ascii_digit()).count();
        i = de.min(e);
        if let Some(a) = address_at(text, ds, de) {
            i = a.end.clamp(i, e);
            out.push(Found {
                start: a.start,
                end: a.end,
                kind: kind::STREET_ADDRESS,
                priority: priority::STREET_ADDRESS,
                confidence: a.confidence,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    /// The label search stays on its fast path: with 72 spellings (more `pw` forms) clean
    /// prose took 2.5x as long to scan as with 60 (`cargo bench --bench pii`).
    #[test]
    fn the_label_spellings_stay_few() {
        let spellings = super::label_variants();
        assert!(spellings.len() <= 64, "{} spellings", spellings.len());
    }

    /// The chain that decides whether the card and SSN regexes run at all: as long as the
    /// longest digits-and-single-separators stretch, never shorter than what they match.
    #[test]
    fn the_digit_chain_is_what_a_card_or_ssn_can_span() {
        let chain = |t: &str| super::longest_digit_chain(t.as_bytes());
        assert_eq!(chain("card 4111 1111-1111.1111/1111 ok"), 20);
        assert_eq!(chain("SSN 123-45-6789"), 9);
        assert_eq!(chain("1:1:1:1:1:1"), 1);
        assert_eq!(chain("12  34"), 2);
        assert_eq!(chain("12-.34"), 2);
        assert_eq!(chain("-12 34-"), 4);
        assert_eq!(chain(""), 0);
    }
}

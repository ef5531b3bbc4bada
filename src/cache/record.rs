//! The stored form of an answer: a small authenticated header and an AES-256-GCM sealed body.
//!
//! ```text
//! record   = format(1) | class(1) | created_at_ms(8, LE) | nonce(12) | sealed(body) | tag(16)
//! aad      = cache key digest(32) | format | class | created_at_ms
//! body     = len(4) text | route(1) | len(4) model | input_tokens(8) | output_tokens(8)
//!            [| finish(1), absent for a whole answer]
//! ```
//! The header stays in clear (tools can read an entry's age and class without the key), but it
//! is bound to the body through the AAD, and the store trusts it only after authentication: flipping any byte of the record, moving it under another key, or
//! opening it with another encryption key fails authentication.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::NONCE_LEN;

use super::crypt::EncryptionKey;
use super::key::{CacheKey, PrivacyClass};
use crate::backend::FinishReason;
use crate::error::Result;
use crate::request::{Route, Usage};

/// Current record format.
const FORMAT: u8 = 1;
/// Bytes of clear header covered by the AAD.
const HEADER_LEN: usize = 1 + 1 + 8;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// A cached answer: what the Router needs to rebuild a [`crate::request::Response`].
///
/// `Debug` prints the text's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedAnswer {
    /// The answer text.
    pub text: String,
    /// Which tier originally produced it (`Local` or `Cloud`).
    pub route: Route,
    /// The model (backend name) that produced it.
    pub model: String,
    /// Token usage of the original call.
    pub usage: Usage,
    /// When it was produced (stored with millisecond precision).
    pub created_at: SystemTime,
    /// Why the model stopped (an answer cut at the token limit says so when served).
    pub finish: FinishReason,
}

impl std::fmt::Debug for CachedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAnswer")
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("route", &self.route)
            .field("model", &self.model)
            .field("usage", &self.usage)
            .field("created_at", &self.created_at)
            .field("finish", &self.finish)
            .finish()
    }
}

impl CachedAnswer {
    /// An answer produced now.
    pub fn new(
        text: impl Into<String>,
        route: Route,
        model: impl Into<String>,
        usage: Usage,
    ) -> Self {
        CachedAnswer {
            text: text.into(),
            route,
            model: model.into(),
            usage,
            created_at: SystemTime::now(),
            finish: FinishReason::Stop,
        }
    }

    /// The same answer, stopped for `finish` (default: [`FinishReason::Stop`]).
    pub fn finished(mut self, finish: FinishReason) -> Self {
        self.finish = finish;
        self
    }

    /// Encodes the body (everything except `created_at`, which lives in the header).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + self.model.len() + 32 + TAG_LEN);
        put_str(&mut out, &self.text);
        out.push(route_tag(self.route));
        put_str(&mut out, &self.model);
        out.extend_from_slice(&self.usage.input_tokens.to_le_bytes());
        out.extend_from_slice(&self.usage.output_tokens.to_le_bytes());
        // A whole answer's body ends here, as every body did before the finish reason was
        // stored.
        out.extend(finish_tag(self.finish));
        out
    }

    /// Decodes a body produced by [`CachedAnswer::encode_body`]; `None` for anything malformed
    /// (never panics, whatever the input).
    pub fn decode_body(bytes: &[u8], created_at: SystemTime) -> Option<Self> {
        let mut r = Reader(bytes);
        let text = r.string()?;
        let route = route_from_tag(r.u8()?)?;
        let model = r.string()?;
        let input_tokens = r.u64()?;
        let output_tokens = r.u64()?;
        let finish = match r.0 {
            [] => FinishReason::Stop,
            [tag] => finish_from_tag(*tag)?,
            _ => return None,
        };
        Some(CachedAnswer {
            text,
            route,
            model,
            usage: Usage::new(input_tokens, output_tokens),
            created_at,
            finish,
        })
    }
}

/// The byte stored for an answer that is not whole; none for a whole one (one encoding per
/// answer).
fn finish_tag(finish: FinishReason) -> Option<u8> {
    match finish {
        FinishReason::Stop => None,
        FinishReason::Length => Some(1),
        FinishReason::ContentFilter => Some(2),
        FinishReason::Refusal => Some(3),
        FinishReason::ContextFull => Some(4),
    }
}

fn finish_from_tag(tag: u8) -> Option<FinishReason> {
    Some(match tag {
        1 => FinishReason::Length,
        2 => FinishReason::ContentFilter,
        3 => FinishReason::Refusal,
        4 => FinishReason::ContextFull,
        _ => return None,
    })
}

/// The clear header of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The privacy class of the request that produced the answer.
    pub privacy: PrivacyClass,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl Header {
    /// Parses the header of a stored record; `None` when the record is too short or unknown.
    pub fn parse(record: &[u8]) -> Option<Header> {
        if record.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || record[0] != FORMAT {
            return None;
        }
        let privacy = PrivacyClass::from_tag(record[1])?;
        let created_at_ms = u64::from_le_bytes(record[2..10].try_into().ok()?);
        Some(Header {
            privacy,
            created_at_ms,
        })
    }

    /// `created_at` as a `SystemTime`.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_at_ms)
    }

    /// Age at `now` (zero when the clock went backwards).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.created_at()).unwrap_or_default()
    }
}

/// Seals `answer` into the stored record format for `key` (fresh random nonce; the key digest,
/// format and header are the associated data). Public so other [`super::CacheStore`]
/// implementations (e.g. a shared Redis store) use the same authenticated format.
pub fn seal_record(enc: &EncryptionKey, key: &CacheKey, answer: &CachedAnswer) -> Result<Vec<u8>> {
    let created_at_ms = answer
        .created_at
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT;
    header[1] = key.privacy().tag();
    header[2..10].copy_from_slice(&created_at_ms.to_le_bytes());
    let aad = aad(key, &header);
    let mut body = answer.encode_body();
    let nonce = enc.seal(&aad, &mut body)?;
    let mut record = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len());
    record.extend_from_slice(&header);
    record.extend_from_slice(&nonce);
    record.extend_from_slice(&body);
    Ok(record)
}

/// Why a stored record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too short, unknown format, or an unknown class tag.
    BadHeader,
    /// Authentication failed: tampered, truncated, another key's record, or the wrong encryption key.
    Unauthentic,
    /// Authentic but recorded for another privacy class (never served).
    WrongClass,
    /// The decrypted body does not decode.
    BadBody,
}

impl Rejection {
    /// Short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadHeader => "bad header",
            Rejection::Unauthentic => "authentication failed",
            Rejection::WrongClass => "privacy class mismatch",
            Rejection::BadBody => "undecodable body",
        }
    }
}

/// Opens a stored record for `key`: authenticates it, checks the privacy class, decodes it.
/// Never panics, whatever `record` holds.
pub fn open_record(
    enc: &EncryptionKey,
    key: &CacheKey,
    record: &[u8],
) -> std::result::Result<CachedAnswer, Rejection> {
    let header = Header::parse(record).ok_or(Rejection::BadHeader)?;
    let aad = aad(key, &record[..HEADER_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&record[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let mut sealed = record[HEADER_LEN + NONCE_LEN..].to_vec();
    let body = enc
        .open(nonce, &aad, &mut sealed)
        .ok_or(Rejection::Unauthentic)?;
    if header.privacy != key.privacy() {
        return Err(Rejection::WrongClass);
    }
    CachedAnswer::decode_body(body, header.created_at()).ok_or(Rejection::BadBody)
}

fn aad(key: &CacheKey, header: &[u8]) -> [u8; 32 + HEADER_LEN] {
    let mut aad = [0u8; 32 + HEADER_LEN];
    aad[..32].copy_from_slice(key.as_bytes());
    aad[32..].copy_from_slice(&header[..HEADER_LEN]);
    aad
}

fn route_tag(route: Route) -> u8 {
    match route {
        Route::Local => 1,
        Route::Cloud => 2,
        Route::Cache => 3,
    }
}

fn route_from_tag(tag: u8) -> Option<Route> {
    match tag {
        1 => Some(Route::Local),
        2 => Some(Route::Cloud),
        3 => Some(Route::Cache),
        _ => None,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Answers and model names are far below 4 GiB; saturate rather than wrap just in case.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cache::key::KeyContext;
    use crate::request::Request;

    fn key(privacy: PrivacyClass, prompt: &str) -> CacheKey {
        CacheKey::new(
            &Request::new(prompt),
            &KeyContext {
                model: "m",
                policy_version: "v",
                privacy,
                normalize: true,
            },
        )
    }

    fn answer() -> CachedAnswer {
        CachedAnswer::new("Paris.", Route::Cloud, "gpt", Usage::new(3, 2))
    }

    #[test]
    fn roundtrip() {
        let enc = EncryptionKey::generate().unwrap();
        let k = key(PrivacyClass::Public, "q");
        let a = answer();
        let rec = seal_record(&enc, &k, &a).unwrap();
        let back = open_record(&enc, &k, &rec).unwrap();
        assert_eq!(back.text, a.text);
        assert_eq!(back.usage, a.usage);
        assert_eq!(back.route, Route::Cloud);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.created_at), ms(a.created_at));
        assert!(!format!("{back:?}").contains("Paris"));
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let enc = EncryptionKey::generate().unwrap();
        let k = key(PrivacyClass::Public, "q");
        let rec = seal_record(&enc, &k, &answer()).unwrap();
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert!(open_record(&enc, &k, &bad).is_err(), "flip at {i} accepted");
        }
        for n in 0..rec.len() {
            assert!(
                open_record(&enc, &k, &rec[..n]).is_err(),
                "truncation to {n} accepted"
            );
        }
    }

    #[test]
    fn moved_record_and_other_class_rejected() {
        let enc = EncryptionKey::generate().unwrap();
        let rec = seal_record(&enc, &key(PrivacyClass::Public, "a"), &answer()).unwrap();
        assert_eq!(
            open_record(&enc, &key(PrivacyClass::Public, "b"), &rec),
            Err(Rejection::Unauthentic)
        );
        assert!(open_record(&enc, &key(PrivacyClass::Private, "a"), &rec).is_err());
        let other = EncryptionKey::generate().unwrap();
        assert_eq!(
            open_record(&other, &key(PrivacyClass::Public, "a"), &rec),
            Err(Rejection::Unauthentic)
        );
    }

    #[test]
    fn decode_body_rejects_garbage() {
        let body = answer().encode_body();
        for n in 0..body.len() {
            assert!(CachedAnswer::decode_body(&body[..n], UNIX_EPOCH).is_none());
        }
        let mut long = body.clone();
        long.push(0);
        assert!(CachedAnswer::decode_body(&long, UNIX_EPOCH).is_none());
        assert!(CachedAnswer::decode_body(&body, UNIX_EPOCH).is_some());
    }

    /// An answer that is not whole keeps its finish reason; a whole one is stored as before
    /// the reason was stored, so older records read back as whole.
    #[test]
    fn the_finish_reason_round_trips() {
        let whole = answer().encode_body();
        assert_eq!(
            CachedAnswer::decode_body(&whole, UNIX_EPOCH).map(|a| a.finish),
            Some(FinishReason::Stop)
        );
        for finish in [
            FinishReason::Length,
            FinishReason::ContentFilter,
            FinishReason::Refusal,
            FinishReason::ContextFull,
        ] {
            let body = answer().finished(finish).encode_body();
            assert_eq!(body.len(), whole.len() + 1);
            let back = CachedAnswer::decode_body(&body, UNIX_EPOCH).unwrap();
            assert_eq!(back.finish, finish);
            assert_eq!(back.text, answer().text);
        }
        let mut unknown = whole.clone();
        unknown.push(9);
        assert!(CachedAnswer::decode_body(&unknown, UNIX_EPOCH).is_none());
    }
}

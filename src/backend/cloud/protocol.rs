//! What both wire protocols share: the request a call becomes, the streaming decoder that turns
//! server-sent events into deltas and a final [`Generation`], and the mapping of HTTP error
//! statuses to typed errors. Provider specifics live in `openai.rs` and `anthropic.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::config::{CloudConfig, Provider};
use super::sse::SseEvent;
use super::{anthropic, openai};
use crate::backend::{BackendCall, FinishReason, Generation};
use crate::error::{Error, Result};
use crate::request::{Message, Usage};

/// Longest provider error message kept in an error (provider messages are not prompts, but
/// they are kept short anyway).
const MAX_ERROR_MESSAGE: usize = 300;

/// Rough token count of a text, used when the provider reports no usage: the same estimate the
/// router's inspect step uses ([`crate::inspect::estimate_tokens`]).
pub fn estimate_tokens(text: &str) -> u64 {
    u64::from(crate::inspect::estimate_tokens(text))
}

/// Estimated prompt tokens of a conversation (text plus a few tokens of framing per message).
pub fn estimate_prompt_tokens(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + 4)
        .sum()
}

/// The JSON body of a call.
pub(crate) fn request_body(cfg: &CloudConfig, call: &BackendCall, stream: bool) -> Result<Vec<u8>> {
    let body = match cfg.provider {
        Provider::OpenAi => serde_json::to_vec(&openai::RequestBody::new(cfg, call, stream)),
        Provider::Anthropic => serde_json::to_vec(&anthropic::RequestBody::new(cfg, call, stream)),
    };
    body.map_err(|e| Error::InvalidRequest(format!("cannot encode the request: {e}")))
}

/// Parses a complete (non-streaming) response body.
///
/// `estimated_input_tokens` is used when the provider reports no usage, in which case the
/// generation's `usage_estimated` is set.
pub fn parse_response(
    provider: Provider,
    body: &[u8],
    estimated_input_tokens: u64,
) -> Result<Generation> {
    let parsed = match provider {
        Provider::OpenAi => openai::parse_response(body),
        Provider::Anthropic => anthropic::parse_response(body),
    };
    match parsed {
        Ok(parsed) => Ok(parsed.into_generation(estimated_input_tokens)),
        // Some gateways answer a failure with a success status and an error body: its words
        // say more than "malformed".
        Err(Error::MalformedResponse(_)) if has_error_field(body) => Err(error_sent_with_success(
            body,
            "an error with a success status",
        )),
        Err(e) => Err(e),
    }
}

/// The provider's error in `body`, which came with a success status (in a stream, or a whole
/// answer from some gateways), as a server error in its words after `what`.
pub(crate) fn error_sent_with_success(body: &[u8], what: &str) -> Error {
    Error::Server {
        status: 200,
        message: format!("{what}: {}", ErrorDetail::from_body(body).message()),
        retry_after: None,
    }
}

/// Whether `body` is a JSON object with a non-null `error` (or Anthropic's `"type": "error"`).
fn has_error_field(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| !v["error"].is_null() || v["type"] == "error")
}

/// What a provider-specific parser extracts from a response.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub text: String,
    /// Prompt tokens in the provider's input count: all of them (OpenAI), or those neither read
    /// from nor written to its prompt cache (Anthropic).
    pub input_tokens: Option<u64>,
    /// Of `input_tokens`, those read from the provider's prompt cache (OpenAI).
    pub cached_input_tokens: Option<u64>,
    /// Prompt tokens read from the prompt cache, counted apart from `input_tokens` (Anthropic).
    pub cache_read_tokens: Option<u64>,
    /// Prompt tokens written to the prompt cache, counted apart from `input_tokens` (Anthropic).
    pub cache_write_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub finish: Option<FinishReason>,
}

impl Parsed {
    fn into_generation(self, estimated_input_tokens: u64) -> Generation {
        let usage_estimated = self.input_tokens.is_none() || self.output_tokens.is_none();
        let input_tokens = self
            .input_tokens
            .unwrap_or(estimated_input_tokens)
            .saturating_add(self.cache_read_tokens.unwrap_or(0))
            .saturating_add(self.cache_write_tokens.unwrap_or(0));
        let cached = self.cached_input_tokens.or(self.cache_read_tokens);
        let usage = Usage {
            input_tokens,
            output_tokens: self
                .output_tokens
                .unwrap_or_else(|| estimate_tokens(&self.text)),
            cached_input_tokens: cached.unwrap_or(0).min(input_tokens),
        };
        Generation {
            text: self.text,
            usage,
            usage_estimated,
            confidence: None,
            finish: self.finish.unwrap_or(FinishReason::Stop),
        }
    }
}

/// Turns a provider's server-sent events into text deltas and, once the provider's terminator
/// (`[DONE]` / `message_stop`) has arrived, the final [`Generation`].
#[derive(Debug)]
pub struct StreamDecoder {
    provider: Provider,
    estimated_input_tokens: u64,
    pub(crate) acc: Parsed,
    pub(crate) terminated: bool,
    /// Set by the provider's event handler when the event carries a finish reason.
    pub(crate) finish_in_event: bool,
    /// The last event with text or a finish reason had a finish reason: nothing came after
    /// the provider said the answer was done.
    finished_last: bool,
}

impl StreamDecoder {
    /// A decoder for `provider`'s stream format.
    pub fn new(provider: Provider, estimated_input_tokens: u64) -> Self {
        StreamDecoder {
            provider,
            estimated_input_tokens,
            acc: Parsed::default(),
            terminated: false,
            finish_in_event: false,
            finished_last: false,
        }
    }

    /// Applies one event; returns the text it adds, if any. Events after the terminator are
    /// ignored.
    pub fn on_event(&mut self, event: &SseEvent) -> Result<Option<String>> {
        if self.terminated {
            return Ok(None);
        }
        self.finish_in_event = false;
        let delta = match self.provider {
            Provider::OpenAi => openai::on_event(self, event)?,
            Provider::Anthropic => anthropic::on_event(self, event)?,
        };
        if let Some(d) = &delta {
            self.acc.text.push_str(d);
        }
        if self.finish_in_event {
            self.finished_last = true;
        } else if delta.as_deref().is_some_and(|d| !d.is_empty()) {
            // Text after a finish reason: that one was not the end (some servers send a
            // reason on a chunk before the last).
            self.finished_last = false;
        }
        Ok(delta.filter(|d| !d.is_empty()))
    }

    /// True once the provider's terminator has been seen.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// The final generation, once the terminator came or, for a body that ended without
    /// it, once a finish reason had with no text after it (`finish_reason` / `stop_reason`:
    /// the answer is whole; some OpenAI-compatible servers close the stream there, and the
    /// usage that may follow is then estimated). [`Error::TruncatedStream`] otherwise.
    pub fn finish(self) -> Result<Generation> {
        if !self.terminated && !self.finished_last {
            return Err(Error::TruncatedStream(format!(
                "the {} stream ended without {}",
                self.provider,
                match self.provider {
                    Provider::OpenAi => "`data: [DONE]`",
                    Provider::Anthropic => "`message_stop`",
                }
            )));
        }
        Ok(self.acc.into_generation(self.estimated_input_tokens))
    }
}

/// Parses JSON, mapping failures to [`Error::MalformedResponse`] without echoing the body:
/// serde's own words quote the values it could not use ("invalid type: string \"...\""), which
/// may be answer text, and the error reaches logs, decisions and `ask --json`. A missing field
/// is named (the name is ours); otherwise only where the body went wrong is said.
pub(crate) fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    use serde_json::error::Category;
    serde_json::from_slice(bytes).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let detail = match e.classify() {
            Category::Data if e.to_string().starts_with("missing field `") => e.to_string(),
            Category::Data => {
                format!("a value of the wrong type or form at line {line} column {column}")
            }
            Category::Syntax => format!("not valid JSON at line {line} column {column}"),
            Category::Eof => "the JSON ends early".into(),
            Category::Io => "unreadable".into(),
        };
        Error::MalformedResponse(format!("{what}: {detail}"))
    })
}

/// A provider's error: the inner object of the `{"error": {"message", "type", "code"}}` shape
/// both providers use (other shapes: [`ErrorDetail::from_body`]).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorDetail {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

/// The most of a non-JSON error body (an HTML page, plain text) kept as the message.
const MAX_TEXT_ERROR: usize = 200;

impl ErrorDetail {
    /// The error in a provider's error body, whatever its shape: `{"error": {...}}` (OpenAI,
    /// Anthropic), `{"error": "text"}` (Hugging Face TGI, Ollama), a flat
    /// `{"message", "type", "code"}` (vLLM), `{"detail": ...}` (FastAPI servers), or a body
    /// that is not JSON at all (a proxy's HTML or text page: its text, tags removed).
    pub(crate) fn from_body(body: &[u8]) -> ErrorDetail {
        let text = |m: &str| ErrorDetail {
            message: Some(m.to_owned()),
            ..ErrorDetail::default()
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            let page = plain_text(&String::from_utf8_lossy(body));
            return if page.is_empty() {
                ErrorDetail::default()
            } else {
                text(&page)
            };
        };
        let object = |v: &serde_json::Value| {
            serde_json::from_value::<ErrorDetail>(v.clone()).unwrap_or_default()
        };
        match (&value["error"], &value["message"], &value["detail"]) {
            (e @ serde_json::Value::Object(_), _, _) => object(e),
            (serde_json::Value::String(m), _, _) => text(m),
            (_, serde_json::Value::String(_), _) => object(&value),
            (_, _, serde_json::Value::String(m)) => text(m),
            (_, _, serde_json::Value::Array(items)) => text(
                &items
                    .iter()
                    .filter_map(|i| i["msg"].as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => ErrorDetail::default(),
        }
    }

    pub(crate) fn message(&self) -> String {
        let m = self.message.as_deref().unwrap_or("").trim();
        let mut m = if m.is_empty() {
            self.kind.clone().unwrap_or_else(|| "no message".into())
        } else {
            m.to_owned()
        };
        if m.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
            m.push('…');
        }
        m
    }

    /// The `code` as a string (OpenAI sends a string; some compatible servers a number).
    fn code(&self) -> &str {
        self.code.as_ref().and_then(|c| c.as_str()).unwrap_or("")
    }

    /// The account is out of credit or over its spending limit: OpenAI's `insufficient_quota`
    /// (sent with 429) or billing codes, Anthropic's "credit balance is too low" (sent with
    /// 400). Not transient and not a bad request: retrying cannot help, the local tier can.
    fn is_out_of_quota(&self) -> bool {
        let code = self.code();
        matches!(
            code,
            "insufficient_quota" | "billing_hard_limit_reached" | "billing_not_active"
        ) || self.kind.as_deref() == Some("insufficient_quota")
            || self.message.as_deref().is_some_and(|m| {
                let m = m.to_ascii_lowercase();
                m.contains("exceeded your current quota") || m.contains("credit balance is too low")
            })
    }

    /// OpenAI's 403 for a country, region or territory it does not serve: not a problem with
    /// the key.
    fn is_region_block(&self) -> bool {
        self.code() == "unsupported_country_region_territory"
            || self.message.as_deref().is_some_and(|m| {
                m.to_ascii_lowercase()
                    .contains("country, region, or territory not supported")
            })
    }

    fn is_context_too_long(&self) -> bool {
        let code = self.code();
        if code == "context_length_exceeded" || code == "string_above_max_length" {
            return true;
        }
        let m = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        m.contains("context length")
            || m.contains("context window")
            || m.contains("maximum context")
            || m.contains("prompt is too long")
            || m.contains("too many tokens")
    }
}

/// The text of an HTML or plain-text page: tags removed, whitespace collapsed, at most
/// [`MAX_TEXT_ERROR`] bytes.
fn plain_text(page: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in page.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    let mut out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > MAX_TEXT_ERROR {
        let mut cut = MAX_TEXT_ERROR;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Maps a non-success HTTP status and its body to a typed error.
pub(crate) fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let detail = ErrorDetail::from_body(body);
    match status {
        // Not the key: "check the API key" would mislead. The provider's words say what is.
        403 if detail.is_region_block() => Error::TierUnavailable {
            tier: "cloud",
            why: format!(
                "the provider refuses requests from this location (HTTP 403): {}",
                detail.message()
            ),
        },
        401 | 403 => Error::Auth {
            status,
            message: detail.message(),
        },
        // Out of credit is neither a rate limit nor a bad request: not retried, not a sign of
        // an unhealthy provider (the breaker ignores it), reported in the provider's words, and
        // a cloud failure the router falls back from.
        400 | 402 | 429 if detail.is_out_of_quota() => Error::TierUnavailable {
            tier: "cloud",
            why: format!(
                "the provider account is out of credit or quota (HTTP {status}): {}; \
                 check the plan and billing at the provider",
                detail.message()
            ),
        },
        429 => Error::RateLimited {
            retry_after,
            message: detail.message(),
        },
        // 409: a conflict on the provider's side (a lock timeout), which both providers' SDKs retry.
        408 | 409 | 500..=599 => Error::Server {
            status,
            message: detail.message(),
            retry_after,
        },
        _ if detail.is_context_too_long() => Error::ContextTooLong(detail.message()),
        _ => Error::BadRequest {
            status,
            message: detail.message(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert!(matches!(
            status_error(401, b"", None),
            Error::Auth { status: 401, .. }
        ));
        assert!(matches!(
            status_error(403, b"{}", None),
            Error::Auth { status: 403, .. }
        ));
        let ra = Some(Duration::from_secs(2));
        assert!(matches!(
            status_error(429, b"", ra),
            Error::RateLimited { retry_after, .. } if retry_after == ra
        ));
        assert!(matches!(
            status_error(503, br#"{"error":{"message":"overloaded"}}"#, None),
            Error::Server { status: 503, ref message, retry_after: None } if message == "overloaded"
        ));
        assert!(matches!(
            status_error(503, b"", ra),
            Error::Server { status: 503, retry_after, .. } if retry_after == ra
        ));
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            status_error(400, ctx, None),
            Error::ContextTooLong(_)
        ));
        let anth = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 250000 tokens > 200000 maximum"}}"#;
        assert!(matches!(
            status_error(400, anth, None),
            Error::ContextTooLong(_)
        ));
        assert!(matches!(
            status_error(404, b"not json", None),
            Error::BadRequest { status: 404, .. }
        ));
        let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let e = status_error(429, quota, ra);
        assert!(
            matches!(&e, Error::TierUnavailable { tier: "cloud", why } if why.contains("exceeded your current quota")),
            "{e:?}"
        );
        assert!(!e.is_retryable() && e.is_cloud_failure());
        // Anthropic's out-of-credit answer is a 400 "invalid_request_error": a cloud failure
        // (the router falls back), not a bad request; other 400s stay bad requests.
        let credit = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
        let e = status_error(400, credit, None);
        assert!(
            matches!(&e, Error::TierUnavailable { tier: "cloud", why } if why.contains("credit balance is too low") && why.contains("HTTP 400")),
            "{e:?}"
        );
        assert!(!e.is_retryable() && e.is_cloud_failure());
        let billing = br#"{"error":{"message":"Billing hard limit has been reached","type":"invalid_request_error","code":"billing_hard_limit_reached"}}"#;
        assert!(status_error(400, billing, None).is_cloud_failure());
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let e = status_error(400, bad, None);
        assert!(matches!(e, Error::BadRequest { status: 400, .. }), "{e:?}");
        assert!(!e.is_cloud_failure());
        let region = br#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#;
        let e = status_error(403, region, None);
        assert!(
            matches!(&e, Error::TierUnavailable { why, .. } if why.contains("Country, region, or territory not supported")),
            "{e:?}"
        );
    }

    #[test]
    fn long_messages_are_cut_on_char_boundaries() {
        let d = ErrorDetail {
            message: Some("é".repeat(400)),
            ..ErrorDetail::default()
        };
        assert!(d.message().len() <= MAX_ERROR_MESSAGE + '…'.len_utf8());
    }

    use crate::backend::cloud::sse::SseParser;
    use proptest::prelude::*;

    /// Feeds `body` through the SSE parser and a decoder; returns the deltas and the outcome.
    fn decode(provider: Provider, body: &[u8]) -> Result<(String, Generation)> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.feed(body, &mut events)?;
        parser.finish(&mut events)?;
        let mut dec = StreamDecoder::new(provider, 3);
        let mut text = String::new();
        for e in &events {
            if let Some(d) = dec.on_event(e)? {
                text.push_str(&d);
            }
        }
        let terminated = dec.is_terminated();
        let g = dec.finish();
        assert_eq!(
            g.is_ok(),
            terminated,
            "a generation iff the terminator came"
        );
        Ok((text, g?))
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("data: [DONE]".to_string()),
            Just(r#"data: {"type":"message_stop"}"#.to_string()),
            Just(r#"data: {"type":"message_start","message":{"usage":{"input_tokens":4}}}"#.to_string()),
            "[a-z ]{0,6}".prop_map(|t| format!(
                r#"data: {{"type":"content_block_delta","delta":{{"type":"text_delta","text":"{t}"}}}}"#
            )),
            "[a-z ]{0,6}".prop_map(|t| format!(r#"data: {{"choices":[{{"delta":{{"content":"{t}"}}}}]}}"#)),
            Just(r#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#.to_string()),
            Just(r#"data: {"type":"message_delta","usage":{"output_tokens":9}}"#.to_string()),
            Just(r#"data: {"error":{"message":"x"}}"#.to_string()),
            Just("event: ping".to_string()),
            Just(String::new()),
            "[ -~]{0,12}".prop_map(|s| format!("data: {s}")),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            for p in [Provider::OpenAi, Provider::Anthropic] {
                let _ = parse_response(p, &data, 3);
                let _ = decode(p, &data);
            }
        }

        #[test]
        fn event_soup_decodes_consistently(lines in proptest::collection::vec(fragment(), 0..24)) {
            let body = lines.iter().map(|l| format!("{l}\n\n")).collect::<String>();
            for p in [Provider::OpenAi, Provider::Anthropic] {
                if let Ok((text, g)) = decode(p, body.as_bytes()) {
                    prop_assert_eq!(&g.text, &text);
                    if g.usage_estimated {
                        prop_assert!(g.usage.input_tokens == 3 || g.usage.output_tokens == estimate_tokens(&text));
                    }
                }
            }
        }
    }

    /// A success status with an error body (some gateways) is the provider's error in its own
    /// words, not "malformed".
    #[test]
    fn an_error_body_with_a_success_status_keeps_its_message() {
        for (provider, body) in [
            (Provider::OpenAi, &br#"{"error":{"message":"upstream quota hit","type":"server_error"}}"#[..]),
            (Provider::OpenAi, br#"{"error":"upstream quota hit"}"#),
            (
                Provider::Anthropic,
                br#"{"type":"error","error":{"type":"overloaded_error","message":"upstream quota hit"}}"#,
            ),
        ] {
            let e = parse_response(provider, body, 5).unwrap_err();
            assert!(
                matches!(e, Error::Server { status: 200, ref message, .. } if message.contains("upstream quota hit")),
                "{e:?}"
            );
        }
        // Malformed without an error field stays malformed.
        assert!(matches!(
            parse_response(Provider::OpenAi, br#"{"choices":"x"}"#, 5),
            Err(Error::MalformedResponse(_))
        ));
    }

    /// The provider's words survive whatever shape its error body has.
    #[test]
    fn error_messages_are_read_from_every_common_body_shape() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"error":{"message":"model overloaded","type":"server_error"}}"#, "model overloaded"),
            (br#"{"error":"model 'llama9' not found"}"#, "model 'llama9' not found"),
            (
                br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#,
                "The model `x` does not exist.",
            ),
            (br#"{"detail":"Not authenticated"}"#, "Not authenticated"),
            (
                br#"{"detail":[{"loc":["body","model"],"msg":"field required","type":"missing"}]}"#,
                "field required",
            ),
            (
                b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
                "502 Bad Gateway 502 Bad Gateway nginx",
            ),
            (b"upstream connect error or disconnect/reset before headers", "upstream connect error or disconnect/reset before headers"),
            (b"", "no message"),
        ];
        for (body, want) in cases {
            let message = match status_error(404, body, None) {
                Error::BadRequest { message, .. } => message,
                other => panic!("{other:?}"),
            };
            assert_eq!(message, want, "{}", String::from_utf8_lossy(body));
        }
        // A long page is cut.
        let page = format!("<p>{}</p>", "x".repeat(5000));
        let Error::Server { message, .. } = status_error(503, page.as_bytes(), None) else {
            panic!()
        };
        assert!(
            message.len() <= MAX_TEXT_ERROR + '…'.len_utf8(),
            "{}",
            message.len()
        );
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
        // Same estimate as the inspect step: a non-ASCII character counts as a token.
        assert_eq!(estimate_tokens("日本語です"), 5);
        assert_eq!(estimate_prompt_tokens(&[Message::user("abcd")]), 5);
    }
}

//! A fake cloud provider on 127.0.0.1 for integration tests and benchmarks: real HTTP (axum),
//! speaking OpenAI Chat Completions (`POST …/chat/completions`) and Anthropic Messages
//! (`POST …/messages`), streaming and not, and able to misbehave on demand.
//!
//! ```ignore
//! mod support;
//! use support::{Behavior, FakeProvider};
//!
//! let fake = FakeProvider::start().await;
//! fake.push_behaviors([Behavior::RateLimited { retry_after_secs: Some(1) }]); // next request
//! fake.set_behavior(Behavior::Ok);                                           // all others
//! let backend = CloudBackend::new(fake.openai_config())?;
//! // ... call it ...
//! assert_eq!(fake.requests_received(), 2);
//! ```
//!
//! Usage is reported as whitespace-separated word counts: `prompt_tokens` = words in all
//! request messages (plus the Anthropic `system` field), `completion_tokens` = words in the
//! reply. Streams send the reply in word-sized deltas whose concatenation is the reply.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::SinkExt;
use serde_json::{json, Value};

use edgeroute::backend::cloud::{ApiKey, CloudConfig, RetryConfig};

/// The key [`FakeProvider::openai_config`] and [`FakeProvider::anthropic_config`] use.
pub const TEST_KEY: &str = "sk-test-0123456789abcdef";

/// Default reply text.
pub const DEFAULT_REPLY: &str = "The capital of France is Paris.";

/// How the server answers a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// A normal answer, with usage.
    Ok,
    /// A normal answer whose usage is missing (no usage chunk / no usage fields).
    OkWithoutUsage,
    /// HTTP 429 with the provider's rate-limit error and an optional `Retry-After` (seconds).
    RateLimited {
        /// `Retry-After` value in seconds.
        retry_after_secs: Option<u64>,
    },
    /// An error status with the provider's error body (500, 503, 401, 403, 404, 400...).
    Status(u16),
    /// HTTP 503 (overloaded) with a `Retry-After` in seconds.
    Unavailable {
        /// `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// HTTP 400 saying the prompt does not fit the context window.
    ContextTooLong,
    /// Wait this long before sending the headers, then answer normally.
    SlowHeaders(Duration),
    /// Send the body in small pieces with this delay before each.
    Trickle(Duration),
    /// Send the start of the body (for streams: the first token), then abort the connection.
    ResetMidBody,
    /// Streams only: send the start (the first token), go silent this long, then send the rest.
    StallAfterFirstToken(Duration),
    /// A whole JSON answer (`application/json`) even when the request asked for a stream, as
    /// some gateways and self-hosted servers send.
    IgnoresStream,
    /// HTTP 200 with a body that is not valid JSON (for streams: an event with invalid JSON).
    MalformedJson,
    /// A stream whose body ends cleanly after the text, before the finish reason and the
    /// terminator (non-streaming: the JSON cut in half).
    TruncatedStream,
    /// A stream with everything but its terminator: it ends cleanly after the finish reason
    /// (and usage) without `[DONE]` / `message_stop`, as some OpenAI-compatible servers do.
    NoTerminator,
    /// Exactly this status, these headers and this body, whatever the protocol (redirects,
    /// odd headers, provider-specific error bodies).
    Raw {
        /// HTTP status.
        status: u16,
        /// Response headers (name, value).
        headers: Vec<(String, String)>,
        /// Response body.
        body: String,
    },
}

impl Behavior {
    /// A [`Behavior::Raw`] error answer with a JSON body.
    pub fn json_error(status: u16, body: serde_json::Value) -> Behavior {
        Behavior::Raw {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path (`/v1/chat/completions`...).
    pub path: String,
    /// Headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
    /// The raw body.
    pub raw: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    default: Mutex<Option<Behavior>>,
    script: Mutex<VecDeque<Behavior>>,
    reply: Mutex<Option<String>>,
    stop_reason: Mutex<Option<String>>,
    cached_prompt_tokens: AtomicUsize,
    count: AtomicUsize,
    recorded: Mutex<Vec<Recorded>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake provider. Stops accepting connections when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where a provider is down: its port stays bound for as long as this
/// lives, so no other test of the process can be given it, but nothing listens, so connections
/// to it are refused. [`FakeProvider::start_on`] brings the provider up there.
pub struct DownAddr {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl std::fmt::Display for DownAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// A loopback address with nothing listening on it, reserved (see [`DownAddr`]).
pub fn unused_addr() -> DownAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    DownAddr { socket, addr }
}

impl FakeProvider {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        FakeProvider::serve(listener)
    }

    /// Starts where a provider was down (an address from [`unused_addr`]).
    pub async fn start_on(down: DownAddr) -> FakeProvider {
        FakeProvider::serve(down.socket.listen(1024).expect("listen"))
    }

    fn serve(listener: tokio::net::TcpListener) -> FakeProvider {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { addr, shared, task }
    }

    /// The base URL to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// OpenAI config for this server: model `fake-model`, key [`TEST_KEY`], fast retries.
    pub fn openai_config(&self) -> CloudConfig {
        fast(CloudConfig::openai("fake-model").with_base_url(self.url()))
    }

    /// Anthropic config for this server: model `fake-model`, key [`TEST_KEY`], fast retries.
    pub fn anthropic_config(&self) -> CloudConfig {
        fast(CloudConfig::anthropic("fake-model").with_base_url(self.url()))
    }

    /// The behaviour for every request not covered by [`FakeProvider::push_behaviors`].
    /// Default: [`Behavior::Ok`].
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.shared.default) = Some(b);
    }

    /// Behaviours for the next requests, in order; then the default applies again.
    pub fn push_behaviors(&self, bs: impl IntoIterator<Item = Behavior>) {
        lock(&self.shared.script).extend(bs);
    }

    /// The reply text. Default: [`DEFAULT_REPLY`].
    pub fn set_reply(&self, reply: impl Into<String>) {
        *lock(&self.shared.reply) = Some(reply.into());
    }

    /// Ends answers with this stop reason, in the protocol's own words (OpenAI
    /// `finish_reason`: `length`, `content_filter`; Anthropic `stop_reason`: `max_tokens`,
    /// `refusal`) instead of a finished turn.
    pub fn set_stop_reason(&self, reason: impl Into<String>) {
        *lock(&self.shared.stop_reason) = Some(reason.into());
    }

    /// Reports this many of each prompt's tokens (at most all of them) as read from the
    /// provider's prompt cache, in the protocol's own words: OpenAI's
    /// `usage.prompt_tokens_details.cached_tokens` (counted in `prompt_tokens`), Anthropic's
    /// `cache_read_input_tokens` (not counted in `input_tokens`). Default: 0, and no such field.
    pub fn set_cached_prompt_tokens(&self, n: usize) {
        self.shared.cached_prompt_tokens.store(n, Ordering::SeqCst);
    }

    /// How many HTTP requests reached the server (any path, any outcome).
    pub fn requests_received(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.recorded).clone()
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.shared.recorded).last().cloned()
    }

    /// Forgets recorded requests and the count.
    pub fn reset_counts(&self) {
        lock(&self.shared.recorded).clear();
        self.shared.count.store(0, Ordering::SeqCst);
    }
}

/// Test-friendly timings: short backoffs, a retry budget that does not get in the way.
fn fast(cfg: CloudConfig) -> CloudConfig {
    let mut cfg = cfg.with_api_key(ApiKey::new(TEST_KEY));
    cfg.retry = RetryConfig::default();
    cfg.retry.initial_backoff = Duration::from_millis(5);
    cfg.retry.max_backoff = Duration::from_millis(50);
    cfg.retry.budget_min_per_sec = 100.0;
    cfg.retry.budget_max = 100.0;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.first_token_timeout = Duration::from_secs(5);
    cfg.total_timeout = Duration::from_secs(10);
    cfg
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    OpenAi,
    Anthropic,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    shared.count.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    lock(&shared.recorded).push(Recorded {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.clone(),
        raw: raw.to_vec(),
    });
    let proto = if uri.path().ends_with("/chat/completions") {
        Proto::OpenAi
    } else if uri.path().ends_with("/messages") {
        Proto::Anthropic
    } else {
        return respond(
            StatusCode::NOT_FOUND,
            vec![],
            Body::from("no such endpoint"),
        );
    };
    let behavior = lock(&shared.script)
        .pop_front()
        .or_else(|| lock(&shared.default).clone())
        .unwrap_or(Behavior::Ok);
    let reply = lock(&shared.reply)
        .clone()
        .unwrap_or_else(|| DEFAULT_REPLY.to_owned());
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = match proto {
        Proto::OpenAi => {
            body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false)
                || !stream
        }
        Proto::Anthropic => true,
    } && behavior != Behavior::OkWithoutUsage;
    let model = body["model"].as_str().unwrap_or("fake-model").to_owned();
    let prompt_tokens = prompt_words(&body);
    let cached_tokens =
        (shared.cached_prompt_tokens.load(Ordering::SeqCst) as u64).min(prompt_tokens);
    let stop_reason = lock(&shared.stop_reason).clone().unwrap_or_else(|| {
        match proto {
            Proto::OpenAi => "stop",
            Proto::Anthropic => "end_turn",
        }
        .to_owned()
    });
    let answer = Answer {
        proto,
        model,
        stop_reason,
        reply,
        prompt_tokens,
        cached_tokens,
        include_usage,
    };

    match behavior {
        Behavior::Ok | Behavior::OkWithoutUsage => ok(&answer, stream, None, false, Cut::No),
        Behavior::SlowHeaders(d) => {
            tokio::time::sleep(d).await;
            ok(&answer, stream, None, false, Cut::No)
        }
        Behavior::Trickle(d) => ok(&answer, stream, Some(d), false, Cut::No),
        Behavior::IgnoresStream => ok(&answer, false, None, false, Cut::No),
        Behavior::ResetMidBody => ok(&answer, stream, None, true, Cut::No),
        Behavior::StallAfterFirstToken(d) => stalled(&answer, d),
        Behavior::TruncatedStream => ok(&answer, stream, None, false, Cut::BeforeFinish),
        Behavior::NoTerminator => ok(&answer, stream, None, false, Cut::BeforeTerminator),
        Behavior::MalformedJson => {
            if stream {
                let body = "data: {\"choices\": [{\"delta\": {\"content\": \"Hi\"}}]\n\ndata: {not json\n\n";
                let body = match proto {
                    Proto::OpenAi => body.to_owned(),
                    Proto::Anthropic => "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\ndata: oops\n\n".to_owned(),
                };
                respond(StatusCode::OK, sse_headers(), Body::from(body))
            } else {
                respond(
                    StatusCode::OK,
                    json_headers(),
                    Body::from("{\"choices\": [oops"),
                )
            }
        }
        Behavior::RateLimited { retry_after_secs } => {
            let mut h = json_headers();
            if let Some(s) = retry_after_secs {
                h.push(("retry-after", s.to_string()));
            }
            let body = error_body(
                proto,
                "rate_limit_error",
                "rate_limit_exceeded",
                "Rate limit reached",
            );
            respond(StatusCode::TOO_MANY_REQUESTS, h, Body::from(body))
        }
        Behavior::Unavailable { retry_after_secs } => {
            let mut h = json_headers();
            h.push(("retry-after", retry_after_secs.to_string()));
            let body = error_body(
                proto,
                "overloaded_error",
                "overloaded",
                "The server is overloaded",
            );
            respond(StatusCode::SERVICE_UNAVAILABLE, h, Body::from(body))
        }
        Behavior::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (kind, code_s, msg) = match code {
                401 => (
                    "authentication_error",
                    "invalid_api_key",
                    "Incorrect API key provided",
                ),
                403 => ("permission_error", "forbidden", "Not allowed"),
                404 => (
                    "not_found_error",
                    "model_not_found",
                    "The model does not exist",
                ),
                400 => ("invalid_request_error", "invalid_value", "Invalid request"),
                503 | 529 => ("overloaded_error", "overloaded", "The server is overloaded"),
                _ => ("api_error", "server_error", "The server had an error"),
            };
            respond(
                status,
                json_headers(),
                Body::from(error_body(proto, kind, code_s, msg)),
            )
        }
        Behavior::Raw {
            status,
            headers,
            body,
        } => {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(body)).expect("raw response")
        }
        Behavior::ContextTooLong => {
            let body = match proto {
                Proto::OpenAi => error_body(
                    proto,
                    "invalid_request_error",
                    "context_length_exceeded",
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                ),
                Proto::Anthropic => error_body(
                    proto,
                    "invalid_request_error",
                    "",
                    "prompt is too long: 250000 tokens > 200000 maximum",
                ),
            };
            respond(StatusCode::BAD_REQUEST, json_headers(), Body::from(body))
        }
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn prompt_words(body: &Value) -> u64 {
    let msgs: u64 = body["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| words(m["content"].as_str().unwrap_or("")))
                .sum()
        })
        .unwrap_or(0);
    msgs + words(body["system"].as_str().unwrap_or(""))
}

struct Answer {
    proto: Proto,
    model: String,
    reply: String,
    stop_reason: String,
    prompt_tokens: u64,
    cached_tokens: u64,
    include_usage: bool,
}

impl Answer {
    fn completion_tokens(&self) -> u64 {
        words(&self.reply)
    }

    /// The usage object, with `output` generated tokens, in the protocol's own words.
    fn usage(&self, output: u64) -> Value {
        let (p, cached) = (self.prompt_tokens, self.cached_tokens);
        match self.proto {
            Proto::OpenAi => {
                let mut u = json!({"prompt_tokens": p, "completion_tokens": output, "total_tokens": p + output});
                if cached > 0 {
                    u["prompt_tokens_details"] = json!({"cached_tokens": cached});
                }
                u
            }
            Proto::Anthropic => {
                let mut u = json!({"input_tokens": p - cached, "output_tokens": output});
                if cached > 0 {
                    u["cache_read_input_tokens"] = json!(cached);
                    u["cache_creation_input_tokens"] = json!(0);
                }
                u
            }
        }
    }

    fn json(&self) -> String {
        let c = self.completion_tokens();
        let mut v = match self.proto {
            Proto::OpenAi => json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": self.stop_reason}],
                "usage": self.usage(c),
            }),
            Proto::Anthropic => json!({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": self.reply}],
                "stop_reason": self.stop_reason, "stop_sequence": null,
                "usage": self.usage(c),
            }),
        };
        if !self.include_usage {
            if let Some(o) = v.as_object_mut() {
                o.remove("usage");
            }
        }
        v.to_string()
    }

    /// SSE events; the index of the first event carrying text; the index of the event with
    /// the finish reason; the index of the terminator.
    fn events(&self) -> (Vec<String>, usize, usize, usize) {
        let pieces: Vec<&str> = self.reply.split_inclusive(' ').collect();
        let c = self.completion_tokens();
        let mut ev = Vec::new();
        let first_text;
        let finish_at;
        match self.proto {
            Proto::OpenAi => {
                let chunk = |delta: Value, finish: Value| {
                    format!(
                        "data: {}\n\n",
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    )
                };
                ev.push(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ));
                first_text = ev.len();
                for piece in &pieces {
                    ev.push(chunk(json!({"content": piece}), Value::Null));
                }
                finish_at = ev.len();
                ev.push(chunk(json!({}), json!(self.stop_reason)));
                if self.include_usage {
                    ev.push(format!(
                        "data: {}\n\n",
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                               "usage": self.usage(c)})
                    ));
                }
                ev.push("data: [DONE]\n\n".to_owned());
            }
            Proto::Anthropic => {
                let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
                let mut start = json!({"id": "msg_fake", "type": "message", "role": "assistant",
                                       "model": self.model, "content": []});
                let mut delta =
                    json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason}});
                if self.include_usage {
                    start["usage"] = self.usage(1);
                    // As the API does today: the whole usage again, with the final output.
                    delta["usage"] = self.usage(c);
                }
                ev.push(event(
                    "message_start",
                    json!({"type": "message_start", "message": start}),
                ));
                ev.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                ev.push(event("ping", json!({"type": "ping"})));
                first_text = ev.len();
                for piece in &pieces {
                    ev.push(event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                    ));
                }
                ev.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                finish_at = ev.len();
                ev.push(event("message_delta", delta));
                ev.push(event("message_stop", json!({"type": "message_stop"})));
            }
        }
        let terminator = ev.len() - 1;
        (ev, first_text, finish_at, terminator)
    }
}

fn error_body(proto: Proto, kind: &str, code: &str, message: &str) -> String {
    match proto {
        Proto::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Proto::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    }
    .to_string()
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_owned())]
}

fn sse_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "text/event-stream".to_owned()),
        ("cache-control", "no-cache".to_owned()),
    ]
}

fn respond(status: StatusCode, headers: Vec<(&'static str, String)>, body: Body) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(body).expect("response")
}

/// Where a body that ends cleanly ends early.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// It does not.
    No,
    /// Streams: after the text (non-streaming: half-way through the JSON).
    BeforeFinish,
    /// Streams: after the finish reason and usage (non-streaming: it does not).
    BeforeTerminator,
}

/// A normal answer, optionally trickled, cut by a reset, or ending early.
fn ok(a: &Answer, stream: bool, trickle: Option<Duration>, reset: bool, cut: Cut) -> Response {
    // Pieces of the body, and where a reset cuts in.
    let (pieces, reset_after): (Vec<String>, usize) = if stream {
        let (mut ev, first_text, finish_at, terminator) = a.events();
        match cut {
            Cut::No => {}
            Cut::BeforeFinish => ev.truncate(finish_at),
            Cut::BeforeTerminator => ev.truncate(terminator),
        }
        (ev, first_text + 1)
    } else {
        let body = a.json();
        let half = body.len() / 2;
        if cut == Cut::BeforeFinish {
            (vec![body[..half].to_owned()], usize::MAX)
        } else if trickle.is_some() {
            let chars: Vec<char> = body.chars().collect();
            (
                chars.chunks(16).map(|c| c.iter().collect()).collect(),
                usize::MAX,
            )
        } else {
            (vec![body[..half].to_owned(), body[half..].to_owned()], 1)
        }
    };
    let headers = if stream {
        sse_headers()
    } else {
        json_headers()
    };
    if trickle.is_none() && !reset {
        return respond(StatusCode::OK, headers, Body::from(pieces.concat()));
    }
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, io::Error>>(4);
    tokio::spawn(async move {
        for (i, piece) in pieces.into_iter().enumerate() {
            if reset && i == reset_after {
                // Give the client time to read what was sent, then abort the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "reset by fake provider",
                    )))
                    .await;
                return;
            }
            if let Some(d) = trickle {
                tokio::time::sleep(d).await;
            }
            if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                return;
            }
        }
    });
    respond(StatusCode::OK, headers, Body::from_stream(rx))
}

/// A stream that goes silent for `stall` after its first token, then finishes.
fn stalled(a: &Answer, stall: Duration) -> Response {
    let (events, first_text, _, _) = a.events();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, io::Error>>(4);
    tokio::spawn(async move {
        for (i, piece) in events.into_iter().enumerate() {
            if i == first_text + 1 {
                tokio::time::sleep(stall).await;
            }
            if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                return;
            }
        }
    });
    respond(StatusCode::OK, sse_headers(), Body::from_stream(rx))
}

/// A one-turn call with no deadline.
pub fn call(prompt: &str) -> edgeroute::backend::BackendCall {
    edgeroute::backend::BackendCall {
        messages: vec![edgeroute::request::Message::user(prompt)],
        params: Default::default(),
        deadline: None,
    }
}

/// What a stream produced: the deltas received, then the final generation or the error
/// that ended it.
pub struct Collected {
    /// Text deltas, in order.
    pub deltas: Vec<String>,
    /// `Ok` with the final generation, or the error that ended the stream.
    pub outcome: edgeroute::Result<edgeroute::backend::Generation>,
}

/// Drains a stream; a stream that ends without `Done` counts as an error here.
pub async fn collect(stream: edgeroute::backend::EventStream) -> Collected {
    use edgeroute::backend::StreamEvent;
    use futures::StreamExt;
    let mut stream = stream;
    let mut deltas = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Delta(d)) => deltas.push(d),
            Ok(StreamEvent::Done(g)) => {
                return Collected {
                    deltas,
                    outcome: Ok(g),
                }
            }
            Err(e) => {
                return Collected {
                    deltas,
                    outcome: Err(e),
                }
            }
        }
    }
    Collected {
        deltas,
        outcome: Err(edgeroute::Error::TruncatedStream("no Done event".into())),
    }
}

//! The cloud tier: [`CloudBackend`] speaks OpenAI Chat Completions or Anthropic Messages over
//! HTTPS (reqwest + rustls), with timeouts, retries and a circuit breaker.
//!
//! Layers, outermost first, for one call:
//! 1. **credentials**: no API key → [`Error::TierUnavailable`], no network I/O;
//! 2. **deadline**: the call's total time is `min(total_timeout, call.deadline)`; a timeout
//!    caused by the caller's own deadline does not, by itself, count against the provider
//!    in the breaker — unless the provider has been silent for longer than `total_timeout`
//!    (see [Breaker accounting](#breaker-accounting));
//! 3. **retry loop** ([`RetryConfig`]): full-jitter backoff, `Retry-After`, retry budget; an
//!    error answer's `x-should-retry: true|false` (sent by both providers) overrides whether
//!    its status is retried, as their SDKs let it;
//! 4. **circuit breaker** ([`BreakerConfig`]): each attempt needs a permit; an open breaker
//!    fails fast with [`Error::CircuitOpen`];
//! 5. **attempt**: connect (`connect_timeout`), then headers and first token
//!    (`first_token_timeout`), then the rest (the total deadline).
//!
//! [`Backend::stream`] returns once the first token has arrived, so every retry happens before
//! the caller has seen any text; after that, failures end the stream with an error
//! ([`Error::TruncatedStream`] when neither the provider's terminator nor its finish reason
//! came), never with a silently partial answer. [`Backend::generate`] uses the non-streaming
//! endpoint; since a non-streaming response arrives only once the whole answer is generated,
//! `first_token_timeout` does not apply to it (connect and total do).
//!
//! # Breaker accounting
//!
//! Each attempt's outcome is reported to the breaker: a success, or an HTTP answer that says
//! nothing about the provider's health (400, 401, a redirect...), counts as a success;
//! retryable failures (408, 409, 429, 5xx, the configured timeouts, lost connections) and broken answers
//! count as failures, except a 429 the call waits out and retries: a provider pacing a burst
//! is not failing, so only a call's last 429 counts (a brief rate limit would otherwise open
//! the breaker for `open_for` after two calls' retries). A timeout set by the caller's own deadline, shorter than
//! `total_timeout`, is the exception: the provider was cut off before its configured time was
//! up, so one such timeout is not held against it. But a provider that hangs must still open
//! the breaker when every caller is in a hurry, so the breaker also keeps the provider's
//! *silence*: the wall-clock time covered by attempts that ended with no answer (a timeout or a
//! lost connection) since the last attempt that got one (overlapping attempts count once;
//! time with nothing in flight does not count). A caller's timeout counts as a failure once
//! that silence exceeds `total_timeout` — the longest any single call may take, streaming or
//! not — and is released without an outcome before that. So no caller's deadline alone ever
//! counts (it is shorter than `total_timeout` by definition), while a provider that answers
//! nobody keeps failing each caller after `total_timeout` of cumulated silence. A provider
//! whose every answer is slower than every caller's deadline looks the same from here, and
//! is treated the same: the cloud is of no use to those callers. Silence inside answers it
//! has started (from its last bytes until a caller's deadline ends the stream) adds up the
//! same way until its next whole answer, so a provider that starts every answer and then
//! stalls opens the breaker too.
//!
//! While half-open, a streamed probe closes the breaker as soon as its first token arrives
//! (the provider is answering again); the rest of its stream then counts like any call's.
//!
//! Redirects are never followed: they would carry the prompt and the API key (Anthropic's
//! `x-api-key` survives reqwest's cross-host redirect scrubbing) to another address, possibly
//! over plain http. A 3xx answer is an error naming the `Location`.
//!
//! Prompts, answers and the API key are never logged; retries and failures are logged at
//! `debug` with status codes and timings only.

mod anthropic;
mod breaker;
mod config;
mod openai;
mod protocol;
mod retry;
pub mod sse;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

pub use self::breaker::BreakerState;
pub use self::config::{ApiKey, BreakerConfig, CloudConfig, MaxTokensField, Provider, RetryConfig};
pub use self::protocol::{estimate_prompt_tokens, estimate_tokens, parse_response, StreamDecoder};

use self::breaker::{Breaker, Permit};
use self::retry::RetryBudget;
use self::sse::{SseEvent, SseParser};
use crate::backend::{Backend, BackendCall, CallReport, EventStream, Generation, StreamEvent};
use crate::error::{Error, Result, TimeoutPhase};
use crate::policy::without_credentials;
use crate::signals::{CloudHealth, Network};

/// Largest error body read from a failed response.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Largest answer read as one JSON document (a non-streaming call, or a server that ignored
/// `stream: true`): a chat answer is far smaller; a body growing past it is not one.
const MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;

/// Longest redirect target quoted in an error.
const MAX_LOCATION: usize = 200;

/// A cloud model API behind the [`Backend`] trait.
///
/// Cheap to clone (everything is behind an `Arc`); clones share the connection pool, the
/// circuit breaker and the retry budget. `Send + Sync`.
#[derive(Clone)]
pub struct CloudBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cfg: CloudConfig,
    url: reqwest::Url,
    /// `url` without credentials: what messages and `Debug` show.
    shown_url: String,
    headers: HeaderMap,
    client: reqwest::Client,
    breaker: Arc<Breaker>,
    budget: RetryBudget,
}

impl std::fmt::Debug for CloudBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudBackend")
            .field("name", &self.inner.name)
            .field("url", &self.inner.shown_url)
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

impl CloudBackend {
    /// Builds the backend: validates the URL, prepares the headers and the HTTP client.
    ///
    /// Fails with [`Error::Config`] for a malformed `base_url`, a scheme other than `https`
    /// or `http`, plain `http://` to a non-loopback host without `allow_insecure_http`, or an
    /// API key that cannot be sent in a header. A missing key is not an error here: the
    /// backend then reports itself unavailable.
    pub fn new(cfg: CloudConfig) -> Result<Self> {
        let path = match cfg.provider {
            Provider::OpenAi => openai::PATH,
            Provider::Anthropic => anthropic::PATH,
        };
        let url = endpoint_url(&cfg.base_url, path)?;
        let loopback = crate::policy::is_loopback_url(&url);
        match url.scheme() {
            "https" => {}
            "http" if loopback || cfg.allow_insecure_http => {}
            "http" => {
                return Err(Error::Config(format!(
                    "[cloud].base_url `{}` uses plain http:// to a non-loopback host; prompts \
                     would cross the network unencrypted. Use https://, or opt in with \
                     allow_insecure_http",
                    without_credentials(&cfg.base_url)
                )))
            }
            other => {
                return Err(Error::Config(format!(
                    "[cloud].base_url `{}`: unsupported scheme `{other}` (use https://)",
                    without_credentials(&cfg.base_url)
                )))
            }
        }
        let headers = headers(&cfg)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            // Never follow a redirect: see the module docs.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("edgeroute/", env!("CARGO_PKG_VERSION")));
        if loopback {
            // A system proxy must not see loopback traffic.
            builder = builder.no_proxy();
            // Nor may a resolver that sends `*.localhost` upstream (no nss-myhostname, some
            // company DNS) turn a loopback name, trusted with plain http and no proxy, into
            // another machine: such a name is this machine's, whatever DNS says.
            if let Some(url::Host::Domain(name)) = url.host() {
                if !name.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
                    let loopback = [
                        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
                    ];
                    builder = builder.resolve_to_addrs(name, &loopback);
                }
            }
        }
        if let Some(file) = &cfg.ca_file {
            for cert in certificate_authorities(file)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(CloudBackend {
            inner: Arc::new(Inner {
                name: format!("{}:{}", cfg.provider, cfg.model),
                shown_url: without_credentials(url.as_str()),
                url,
                headers,
                client,
                breaker: Arc::new(Breaker::new(cfg.breaker.clone())),
                budget: RetryBudget::new(&cfg.retry),
                cfg,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CloudConfig {
        &self.inner.cfg
    }

    /// The full endpoint URL calls are posted to, without the user name and password a
    /// `base_url` may carry (they are sent, never shown).
    pub fn endpoint(&self) -> &str {
        &self.inner.shown_url
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }
}

fn headers(cfg: &CloudConfig) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let bad_key = || {
        Error::Config(format!(
            "the API key in ${} contains characters that cannot be sent in an HTTP header",
            cfg.api_key_env
        ))
    };
    match cfg.provider {
        Provider::OpenAi => {
            if let Some(key) = &cfg.api_key {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                    .map_err(|_| bad_key())?;
                v.set_sensitive(true);
                h.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        Provider::Anthropic => {
            if let Some(key) = &cfg.api_key {
                let mut v = HeaderValue::from_str(key.expose_secret()).map_err(|_| bad_key())?;
                v.set_sensitive(true);
                h.insert("x-api-key", v);
            }
            let v = HeaderValue::from_str(&cfg.anthropic_version).map_err(|_| {
                Error::Config("anthropic_version is not a valid header value".into())
            })?;
            h.insert("anthropic-version", v);
        }
    }
    Ok(h)
}

/// The time limits of one call.
#[derive(Debug)]
struct Clock {
    start: Instant,
    total_at: Instant,
    first_token: Duration,
    /// Longest silence in a stream once it has started.
    idle: Duration,
    /// `total_at` is the caller's deadline, earlier than the configured `total_timeout`.
    callers_deadline: bool,
    /// The configured `total_timeout`: past that much silence, a caller's timeout counts
    /// against the provider (see the module docs).
    silence_limit: Duration,
    /// The last attempt's error answer said whether to retry it (`x-should-retry`).
    retry_advice: retry::Advice,
}

impl Clock {
    fn new(cfg: &CloudConfig, deadline: Option<Instant>) -> Self {
        let start = Instant::now();
        let configured = breaker::after(start, cfg.total_timeout);
        let (total_at, callers_deadline) = match deadline {
            Some(d) if d < configured => (d, true),
            _ => (configured, false),
        };
        Clock {
            start,
            total_at,
            first_token: cfg.first_token_timeout,
            idle: cfg.idle_timeout,
            callers_deadline,
            silence_limit: cfg.total_timeout,
            retry_advice: retry::Advice::default(),
        }
    }

    /// Whether `e` is the caller's own deadline running out (a `Total` timeout when the
    /// deadline is what set the total): it says nothing about the provider's health.
    fn is_callers_timeout(&self, e: &Error) -> bool {
        self.callers_deadline
            && matches!(
                e,
                Error::Timeout {
                    phase: TimeoutPhase::Total,
                    ..
                }
            )
    }

    /// Reports the failure `e` of the attempt started at `attempt_start` to the breaker
    /// through its permit, and updates the provider's silence. A timeout set by the caller's
    /// deadline counts as a failure only once the provider has been silent for longer than
    /// `total_timeout` (see the module docs); before that it is released without an outcome.
    fn settle(&self, breaker: &Breaker, permit: Permit, e: &Error, attempt_start: Instant) {
        let now = Instant::now();
        let silence = if got_no_answer(e) {
            breaker.unanswered(attempt_start, now)
        } else {
            breaker.answered(now);
            Duration::ZERO
        };
        if self.is_callers_timeout(e) {
            if silence > self.silence_limit {
                tracing::debug!(
                    ?silence,
                    "caller's deadline ran out on a provider silent for longer than total_timeout: counted as a failure"
                );
                permit.failure();
            } else {
                permit.release();
            }
        } else if counts_against_health(e) {
            permit.failure();
        } else {
            permit.success();
        }
    }

    /// When the first token of an attempt started at `attempt_start` is due, and which phase
    /// to blame if it is late.
    fn first_token_at(&self, attempt_start: Instant) -> (Instant, TimeoutPhase) {
        let at = breaker::after(attempt_start, self.first_token);
        if at < self.total_at {
            (at, TimeoutPhase::FirstToken)
        } else {
            (self.total_at, TimeoutPhase::Total)
        }
    }

    fn timeout(&self, phase: TimeoutPhase, attempt_start: Instant) -> Error {
        let since = match phase {
            TimeoutPhase::Total => self.start,
            _ => attempt_start,
        };
        Error::Timeout {
            phase,
            elapsed: since.elapsed(),
        }
    }
}

/// Runs `fut` until `at`; past it, the error is `on_timeout`.
async fn until<T>(
    at: Instant,
    fut: impl Future<Output = Result<T>>,
    on_timeout: impl FnOnce() -> Error,
) -> Result<T> {
    match tokio::time::timeout_at(at.into(), fut).await {
        Ok(r) => r,
        Err(_) => Err(on_timeout()),
    }
}

/// Whether an attempt that failed with `e` ended without an answer from the provider (a
/// timeout, a connection refused or lost) rather than with one (an error status, a broken
/// body).
fn got_no_answer(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. } | Error::Connection(_))
}

/// Whether a failure says something about the provider's health (and so counts in the
/// breaker). Auth and request errors are answers from a healthy server.
fn counts_against_health(e: &Error) -> bool {
    e.is_retryable() || matches!(e, Error::MalformedResponse(_) | Error::TruncatedStream(_))
}

/// The endpoint for `base_url` (the API's root) and the protocol's `path`
/// (`/chat/completions`): the path is appended to the URL's path, keeping its query (Azure's
/// `?api-version=…`); a base URL that already ends with the path (the endpoint pasted whole)
/// is taken as it is.
fn endpoint_url(base_url: &str, path: &str) -> Result<reqwest::Url> {
    let shown = without_credentials(base_url);
    let mut url = reqwest::Url::parse(base_url.trim())
        .map_err(|e| Error::Config(format!("[cloud].base_url `{shown}` is not a URL: {e}")))?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pasted = url.path_segments().is_some_and(|s| {
        s.filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .ends_with(&segments)
    });
    if pasted {
        return Ok(url);
    }
    match url.path_segments_mut() {
        Ok(mut p) => {
            p.pop_if_empty().extend(segments);
        }
        Err(()) => {
            return Err(Error::Config(format!(
                "[cloud].base_url `{shown}` cannot have a path (it needs an http(s) address)"
            )))
        }
    }
    Ok(url)
}

/// Whether a transport error's description (`error_chain`) is a TLS certificate the client
/// does not trust (rustls: "invalid peer certificate: UnknownIssuer", an expired one, a name
/// mismatch), rather than a network failure.
fn is_certificate_error(chain: &str) -> bool {
    chain.contains("invalid peer certificate") || chain.contains("certificate verify failed")
}

/// The certificates in the PEM file `file` ([`CloudConfig::ca_file`]).
fn certificate_authorities(file: &std::path::Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(file).map_err(|e| {
        Error::Config(format!(
            "[cloud].ca_file {}: cannot read it: {e}",
            file.display()
        ))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::Config(format!(
            "[cloud].ca_file {}: not PEM certificates: {e}",
            file.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "[cloud].ca_file {}: holds no certificate (expected PEM blocks starting \
             `-----BEGIN CERTIFICATE-----`)",
            file.display()
        )));
    }
    Ok(certs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        source = inner.source();
    }
    s
}

impl Inner {
    fn ensure_key(&self) -> Result<()> {
        match &self.cfg.api_key {
            Some(_) => Ok(()),
            None => Err(Error::TierUnavailable {
                tier: "cloud",
                why: self.no_key_message(),
            }),
        }
    }

    fn no_key_message(&self) -> String {
        format!("no API key: set ${}", self.cfg.api_key_env)
    }

    /// Maps a transport error (no HTTP status) and updates connectivity.
    fn transport_error(&self, e: &reqwest::Error, attempt_start: Instant) -> Error {
        if e.is_timeout() {
            // No reqwest timeout is set per request: a reqwest timeout is the connect timeout.
            // The host could not be reached in time: offline, as for a refused connection
            // (and a probe's answer: the cloud reads offline again, rather than every call
            // waiting out the connect timeout to find the same).
            self.breaker.mark_offline(Instant::now());
            return Error::Timeout {
                phase: TimeoutPhase::Connect,
                elapsed: attempt_start.elapsed(),
            };
        }
        let host = self.url.host_str().unwrap_or("?");
        let chain = error_chain(e);
        // The network is up and the host answered, but its certificate is not trusted:
        // retrying cannot help, and the device is not offline.
        if is_certificate_error(&chain) {
            return Error::TierUnavailable {
                tier: "cloud",
                why: format!(
                    "the TLS certificate of {host} is not trusted ({chain}); if a company proxy \
                     or a private certificate authority signs it, set [cloud].ca_file to the \
                     authority's PEM file, or add it to the system's trust store"
                ),
            };
        }
        if e.is_connect() {
            self.breaker.mark_offline(Instant::now());
            return Error::Connection(format!("cannot connect to {host}: {chain}"));
        }
        Error::Connection(format!("connection lost: {}", error_chain(e)))
    }

    /// Sends one request; returns the response once its headers are in (by `headers_by`,
    /// else a timeout of that phase), or the typed error. A success status is noted on
    /// `report`, if any: from then on the provider may bill the attempt.
    async fn send(
        &self,
        body: &[u8],
        clock: &Clock,
        attempt_start: Instant,
        headers_by: (Instant, TimeoutPhase),
        report: Option<&CallReport>,
    ) -> Result<reqwest::Response> {
        let (first_at, phase) = headers_by;
        let _probe = ProbeMark {
            breaker: &self.breaker,
            armed: self.breaker.start_attempt(attempt_start),
        };
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body.to_vec())
            .send();
        let response = until(
            first_at,
            async {
                request
                    .await
                    .map_err(|e| self.transport_error(&e, attempt_start))
            },
            || clock.timeout(phase, attempt_start),
        )
        .await?;
        // Any HTTP answer proves the network is up.
        self.breaker.mark_online();
        let status = response.status();
        if status.is_success() {
            if let Some(report) = report {
                report.note_accepted();
            }
            return Ok(response);
        }
        if status.is_redirection() {
            let err = self.redirect_error(status.as_u16(), response.headers());
            tracing::debug!(backend = %self.name, status = status.as_u16(), "cloud call redirected");
            return Err(err);
        }
        let retry_after = retry::parse_retry_after(response.headers());
        clock
            .retry_advice
            .set(retry::parse_should_retry(response.headers()));
        let read_until = clock.total_at.min(Instant::now() + Duration::from_secs(5));
        let body =
            tokio::time::timeout_at(read_until.into(), read_capped(response, MAX_ERROR_BODY))
                .await
                .unwrap_or_default();
        let err = protocol::status_error(status.as_u16(), &body, retry_after);
        tracing::debug!(backend = %self.name, status = status.as_u16(), "cloud call rejected");
        Err(err)
    }

    /// The error for a 3xx answer, which is never followed (see the module docs).
    fn redirect_error(&self, status: u16, headers: &HeaderMap) -> Error {
        let location = match headers.get(reqwest::header::LOCATION) {
            Some(v) => {
                let full = String::from_utf8_lossy(v.as_bytes());
                let mut v: String = full.chars().take(MAX_LOCATION).collect();
                if v.len() < full.len() {
                    v.push('…');
                }
                format!("to `{v}`")
            }
            None => "without a Location".to_owned(),
        };
        Error::TierUnavailable {
            tier: "cloud",
            why: format!(
                "{} answered HTTP {status}, a redirect {location}; redirects are not followed \
                 (they would carry the prompt and the API key to another address): set \
                 [cloud].base_url to the address that answers",
                self.shown_url
            ),
        }
    }

    /// The delay before the next retry, or `None` when the call must fail with `e`. The
    /// provider's own advice on the answer that failed (`x-should-retry`) beats the error's
    /// kind; the retry limit, the budget and the deadline still apply.
    fn retry_delay(&self, e: &Error, retries: u32, clock: &Clock) -> Option<Duration> {
        let cfg = &self.cfg.retry;
        let retryable = clock.retry_advice.get().unwrap_or_else(|| e.is_retryable());
        if !retryable || retries >= cfg.max_retries {
            return None;
        }
        let mut delay = retry::backoff(cfg, retries);
        if let Some(ra) = e.retry_after() {
            if ra > cfg.max_retry_after {
                return None;
            }
            delay = delay.max(ra);
        }
        if breaker::after(Instant::now(), delay) >= clock.total_at {
            return None;
        }
        if !self.budget.try_withdraw() {
            tracing::debug!(backend = %self.name, "retry budget exhausted");
            return None;
        }
        Some(delay)
    }

    /// Runs `attempt` under the breaker and the retry policy. On success, returns the value
    /// with its breaker permit (the caller reports the final outcome).
    ///
    /// With a `report`, a failed attempt is not retried once the caller cannot pay for another
    /// accepted one ([`CallReport::may_retry`]).
    async fn with_retries<T, F, Fut>(
        &self,
        clock: &Clock,
        report: Option<&CallReport>,
        mut attempt: F,
    ) -> Result<(T, Permit)>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.budget.deposit();
        let mut retries = 0;
        let mut last: Option<Error> = None;
        // The permit of an attempt answered with a 429, kept for the retry: its outcome is
        // the last attempt's, and a half-open probe keeps its slot while it waits.
        let mut paced: Option<Permit> = None;
        loop {
            let attempt_start = Instant::now();
            if attempt_start >= clock.total_at {
                let e = last.unwrap_or_else(|| clock.timeout(TimeoutPhase::Total, attempt_start));
                if let Some(permit) = paced.take() {
                    permit.failure();
                }
                return Err(e);
            }
            let permit = match paced.take() {
                Some(p) => p,
                None => match self.breaker.acquire() {
                    Ok(p) => p,
                    // Opened while we were retrying: the real failure is more useful.
                    Err(open) => return Err(last.unwrap_or(open)),
                },
            };
            clock.retry_advice.set(None);
            match attempt(attempt_start).await {
                Ok(v) => {
                    self.breaker.answered(Instant::now());
                    return Ok((v, permit));
                }
                Err(e) => {
                    let Some(delay) = self.retry_delay(&e, retries, clock) else {
                        clock.settle(&self.breaker, permit, &e, attempt_start);
                        tracing::debug!(backend = %self.name, retries, error = %e, "cloud call failed");
                        return Err(e);
                    };
                    // Asked only for a retry that would be made: it may reserve budget.
                    if report.is_some_and(|r| !r.may_retry()) {
                        clock.settle(&self.breaker, permit, &e, attempt_start);
                        tracing::debug!(
                            backend = %self.name,
                            retries,
                            error = %e,
                            "not retried: the budget has no room for another billable attempt"
                        );
                        return Err(e);
                    }
                    if matches!(e, Error::RateLimited { .. }) {
                        // A rate limit the call waits out is the provider pacing it, not
                        // failing: only a call's last 429 counts (see the module docs).
                        self.breaker.answered(Instant::now());
                        paced = Some(permit);
                    } else {
                        clock.settle(&self.breaker, permit, &e, attempt_start);
                    }
                    tracing::debug!(backend = %self.name, retries, ?delay, error = %e, "retrying cloud call");
                    tokio::time::sleep(delay).await;
                    retries += 1;
                    last = Some(e);
                }
            }
        }
    }

    async fn generate_once(
        &self,
        body: &[u8],
        clock: &Clock,
        attempt_start: Instant,
        est: u64,
    ) -> Result<Generation> {
        // A non-streaming answer's headers come only once the whole answer is generated:
        // only the connect and total limits apply.
        let headers_by = (clock.total_at, TimeoutPhase::Total);
        // Only streams report their attempts (`Backend::stream_reporting`).
        let mut response = self
            .send(body, clock, attempt_start, headers_by, None)
            .await?;
        let mut bytes = Vec::new();
        until(
            clock.total_at,
            async {
                read_rest(&mut response, &mut bytes)
                    .await
                    .map_err(|e| self.transport_error(&e, attempt_start))
            },
            || clock.timeout(TimeoutPhase::Total, attempt_start),
        )
        .await??;
        parse_response(self.cfg.provider, &bytes, est)
    }

    async fn stream_once(
        &self,
        body: &[u8],
        clock: &Clock,
        attempt_start: Instant,
        est: u64,
        report: &CallReport,
    ) -> Result<Live> {
        let first_token = clock.first_token_at(attempt_start);
        let mut response = self
            .send(body, clock, attempt_start, first_token, Some(report))
            .await?;
        let (first_at, phase) = first_token;
        let mut held = None;
        if is_whole_json(response.headers()) {
            // The server ignored `stream: true` (some gateways and self-hosted servers do):
            // its answer is one JSON document, which arrives whole as the first token. Unless
            // the body says otherwise: an event stream labelled JSON is read as one.
            let body = until(
                first_at,
                async {
                    let transport = |e: reqwest::Error| self.transport_error(&e, attempt_start);
                    let first = response.chunk().await.map_err(transport)?;
                    let first = first.unwrap_or_default();
                    let text = first.trim_ascii_start();
                    if !text.is_empty() && !text.starts_with(b"{") {
                        return Ok(Err(first.to_vec()));
                    }
                    let mut body = first.to_vec();
                    read_rest(&mut response, &mut body)
                        .await
                        .map_err(transport)??;
                    Ok(Ok(body))
                },
                || clock.timeout(phase, attempt_start),
            )
            .await?;
            match body {
                Ok(body) => {
                    let generation = parse_response(self.cfg.provider, &body, est)?;
                    return Ok(Live::whole(response, generation));
                }
                Err(first_chunk) => held = Some(first_chunk),
            }
        }
        let mut live = Live {
            response,
            held,
            parser: SseParser::new(),
            decoder: Some(StreamDecoder::new(self.cfg.provider, est)),
            pending: VecDeque::new(),
            events: Vec::new(),
            last_bytes: Instant::now(),
        };
        // Until the first token, its own limit applies, not the idle one.
        until(first_at, live.fill(Duration::MAX), || {
            clock.timeout(phase, attempt_start)
        })
        .await?;
        Ok(live)
    }
}

/// Whether a response to a streaming request is a whole JSON answer rather than an event
/// stream (`Content-Type: application/json`, or any `+json` type).
fn is_whole_json(headers: &HeaderMap) -> bool {
    let Some(mime) = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let mime = mime.trim().to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// Reads the rest of an answer's body into `out`, without consuming the response; a body
/// past [`MAX_ANSWER_BODY`] is an error (the inner one: the outer is the transport's).
async fn read_rest(
    response: &mut reqwest::Response,
    out: &mut Vec<u8>,
) -> reqwest::Result<Result<()>> {
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > MAX_ANSWER_BODY {
            return Ok(Err(Error::MalformedResponse(format!(
                "the answer's body is over {} MiB: not a chat answer",
                MAX_ANSWER_BODY >> 20
            ))));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Ok(()))
}

/// While a network probe is in flight: when it ends with no outcome (dropped, or a timeout),
/// the offline mark it re-armed expires again ([`Breaker::probe_without_outcome`]).
struct ProbeMark<'b> {
    breaker: &'b Breaker,
    armed: Option<Instant>,
}

impl Drop for ProbeMark<'_> {
    fn drop(&mut self) {
        if let Some(armed) = self.armed {
            self.breaker.probe_without_outcome(armed, Instant::now());
        }
    }
}

/// Reads at most `cap` bytes of a body (error bodies; failures read as empty).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        out.extend_from_slice(&chunk[..chunk.len().min(cap - out.len())]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

/// An open event stream and its decoding state.
struct Live {
    response: reqwest::Response,
    /// A chunk of the body already read (to tell an event stream from a JSON document),
    /// decoded before anything more is read.
    held: Option<Vec<u8>>,
    parser: SseParser,
    decoder: Option<StreamDecoder>,
    pending: VecDeque<StreamEvent>,
    events: Vec<SseEvent>,
    /// When the provider last sent bytes of this answer.
    last_bytes: Instant,
}

impl Live {
    /// A whole answer already read: its text as one delta, then the end.
    fn whole(response: reqwest::Response, generation: Generation) -> Live {
        let mut pending = VecDeque::new();
        if !generation.text.is_empty() {
            pending.push_back(StreamEvent::Delta(generation.text.clone()));
        }
        pending.push_back(StreamEvent::Done(generation));
        Live {
            response,
            held: None,
            parser: SseParser::new(),
            decoder: None,
            pending,
            events: Vec::new(),
            last_bytes: Instant::now(),
        }
    }

    /// Reads until at least one event is pending (a delta, or the final `Done`). Nothing on
    /// the wire for `idle` (no bytes at all: a provider's keep-alive pings count as something)
    /// is a [`TimeoutPhase::BetweenTokens`] timeout.
    async fn fill(&mut self, idle: Duration) -> Result<()> {
        while self.pending.is_empty() {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(());
            };
            let waited = Instant::now();
            let chunk = match self.held.take() {
                Some(held) => Some(held.into()),
                None => {
                    until(
                        breaker::after(waited, idle),
                        async {
                            self.response.chunk().await.map_err(|e| {
                                Error::Connection(format!(
                                    "connection lost mid-stream: {}",
                                    error_chain(&e)
                                ))
                            })
                        },
                        || Error::Timeout {
                            phase: TimeoutPhase::BetweenTokens,
                            elapsed: waited.elapsed(),
                        },
                    )
                    .await?
                }
            };
            self.last_bytes = Instant::now();
            let Some(chunk) = chunk else {
                // End of body: complete only if the provider's terminator, or at least its
                // finish reason, came.
                self.parser.finish(&mut self.events)?;
                for event in self.events.drain(..) {
                    if let Some(delta) = decoder.on_event(&event)? {
                        self.pending.push_back(StreamEvent::Delta(delta));
                    }
                }
                if let Some(decoder) = self.decoder.take() {
                    self.pending.push_back(StreamEvent::Done(decoder.finish()?));
                }
                return Ok(());
            };
            self.parser.feed(&chunk, &mut self.events)?;
            for event in self.events.drain(..) {
                if let Some(delta) = decoder.on_event(&event)? {
                    self.pending.push_back(StreamEvent::Delta(delta));
                }
                if decoder.is_terminated() {
                    break;
                }
            }
            if decoder.is_terminated() {
                if let Some(decoder) = self.decoder.take() {
                    self.pending.push_back(StreamEvent::Done(decoder.finish()?));
                }
            }
        }
        Ok(())
    }
}

/// What the returned stream carries between items.
struct StreamState {
    live: Live,
    permit: Option<Permit>,
    clock: Clock,
    inner: Arc<Inner>,
}

async fn next_event(mut st: StreamState) -> Option<(Result<StreamEvent>, Option<StreamState>)> {
    if st.live.pending.is_empty() {
        let clock = &st.clock;
        let filled = until(clock.total_at, st.live.fill(clock.idle), || {
            clock.timeout(TimeoutPhase::Total, clock.start)
        })
        .await;
        if let Err(e) = filled {
            if let Some(p) = st.permit.take() {
                if clock.is_callers_timeout(&e) {
                    // The provider had been silent since its last bytes. Such silences add
                    // up until its next whole answer, so one that starts every answer and
                    // then stalls opens the breaker even when every caller is in a hurry (a
                    // first token ends the other silence count, which would never get there).
                    let silence = st.inner.breaker.stalled(st.live.last_bytes, Instant::now());
                    if silence > clock.silence_limit {
                        p.failure();
                    } else {
                        p.release();
                    }
                } else {
                    p.failure();
                }
            }
            tracing::debug!(backend = %st.inner.name, error = %e, "cloud stream failed after the first token");
            return Some((Err(e), None));
        }
    }
    match st.live.pending.pop_front()? {
        StreamEvent::Done(g) => {
            if let Some(p) = st.permit.take() {
                p.success();
            }
            Some((Ok(StreamEvent::Done(g)), None))
        }
        delta => Some((Ok(delta), Some(st))),
    }
}

#[async_trait]
impl Backend for CloudBackend {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn stream(&self, call: BackendCall) -> Result<EventStream> {
        self.stream_reporting(call, &CallReport::new()).await
    }

    /// The endpoint, as a digest: the same model id at another address (another provider
    /// behind an OpenAI-compatible URL, a local server) is another model, and answers cached
    /// from one are not served for the other.
    fn revision(&self) -> Option<String> {
        // Credentials in the URL are not part of what answers.
        let url = &self.inner.shown_url;
        let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
        Some(
            digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Notes every attempt the provider accepted (a 2xx), the retried ones included.
    async fn stream_reporting(
        &self,
        call: BackendCall,
        report: &CallReport,
    ) -> Result<EventStream> {
        let inner = &self.inner;
        inner.ensure_key()?;
        let clock = Clock::new(&inner.cfg, call.deadline);
        let est = estimate_prompt_tokens(&call.messages);
        let body = protocol::request_body(&inner.cfg, &call, true)?;
        let (live, mut permit) = inner
            .with_retries(&clock, Some(report), |attempt_start| {
                inner.stream_once(&body, &clock, attempt_start, est, report)
            })
            .await?;
        // The first token is here: a probe has seen the provider answer.
        permit.answering();
        let state = StreamState {
            live,
            permit: Some(permit),
            clock,
            inner: Arc::clone(inner),
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(state),
            |st| async move { next_event(st?).await },
        )))
    }

    async fn generate(&self, call: BackendCall) -> Result<Generation> {
        let inner = &self.inner;
        inner.ensure_key()?;
        let clock = Clock::new(&inner.cfg, call.deadline);
        let est = estimate_prompt_tokens(&call.messages);
        let body = protocol::request_body(&inner.cfg, &call, false)?;
        let (generation, permit) = inner
            .with_retries(&clock, None, |attempt_start| {
                inner.generate_once(&body, &clock, attempt_start, est)
            })
            .await?;
        permit.success();
        Ok(generation)
    }

    fn availability(&self) -> std::result::Result<(), String> {
        match self.inner.cfg.api_key {
            Some(_) => Ok(()),
            None => Err(self.inner.no_key_message()),
        }
    }

    fn health(&self) -> CloudHealth {
        self.inner.breaker.state().health()
    }

    fn network(&self) -> Network {
        self.inner.breaker.network()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The endpoint keeps the base URL's query, takes a pasted endpoint as it is, and ignores a
    /// trailing slash.
    #[test]
    fn endpoint_urls() {
        let cases = [
            ("https://api.openai.com/v1", openai::PATH, "https://api.openai.com/v1/chat/completions"),
            ("https://api.openai.com/v1/", openai::PATH, "https://api.openai.com/v1/chat/completions"),
            (
                "https://x.openai.azure.com/openai/deployments/d1?api-version=2024-10-21",
                openai::PATH,
                "https://x.openai.azure.com/openai/deployments/d1/chat/completions?api-version=2024-10-21",
            ),
            (
                "https://api.openai.com/v1/chat/completions",
                openai::PATH,
                "https://api.openai.com/v1/chat/completions",
            ),
            ("http://localhost:11434/v1", openai::PATH, "http://localhost:11434/v1/chat/completions"),
            ("https://api.anthropic.com/v1", anthropic::PATH, "https://api.anthropic.com/v1/messages"),
            ("https://api.anthropic.com/v1/messages/", anthropic::PATH, "https://api.anthropic.com/v1/messages/"),
        ];
        for (base, path, want) in cases {
            assert_eq!(endpoint_url(base, path).unwrap().as_str(), want, "{base}");
        }
        assert!(matches!(
            endpoint_url("api.openai.com/v1", openai::PATH),
            Err(Error::Config(_))
        ));
    }
}

//! The tiers that answer: the [`Backend`] trait, and the two slots the router holds them in.
//!
//! A backend only generates; it never decides. The router keeps the cloud backend inside
//! [`CloudTier`], whose only entry points take a [`CloudClearance`]: a request that the
//! policy keeps local has no clearance and therefore no way to reach the cloud backend.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::decision::CloudClearance;
use crate::error::{Error, Result};
use crate::request::{Confidence, GenerationParams, Message, Usage};
use crate::signals::{CloudHealth, Network};

#[cfg(feature = "cloud")]
pub mod cloud;
#[cfg(feature = "onnx")]
pub mod local;

/// Which tier a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// On the device.
    Local,
    /// Over the network.
    Cloud,
}

/// What a backend is asked to do.
#[derive(Debug, Clone)]
pub struct BackendCall {
    /// The conversation (already redacted when the plan says so).
    pub messages: Vec<Message>,
    /// Generation parameters.
    pub params: GenerationParams,
    /// Absolute deadline; backends must stop by then.
    pub deadline: Option<Instant>,
}

/// Why generation stopped. Anything but [`FinishReason::Stop`] is an answer that is not whole,
/// and [`crate::Response::finish`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn / stop token: the model finished its answer.
    Stop,
    /// The output token limit was reached (`max_tokens`; OpenAI `length`, Anthropic
    /// `max_tokens`): the answer is cut short.
    Length,
    /// The provider's content filter stopped the answer (OpenAI `content_filter`).
    ContentFilter,
    /// The model declined to answer (Anthropic `refusal`).
    Refusal,
    /// The model's context window filled up (the prompt and the answer so far): the answer is
    /// cut short, and a higher token limit would not help.
    ContextFull,
}

impl FinishReason {
    /// The name used in `ask --json` and logs: `stop`, `length`, `content_filter`, `refusal`,
    /// `context_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Refusal => "refusal",
            FinishReason::ContextFull => "context_full",
        }
    }

    /// True when the model finished its answer.
    pub fn is_complete(self) -> bool {
        self == FinishReason::Stop
    }

    /// One line for someone reading a cut-short answer: what happened and what to change.
    pub fn explain(self) -> Option<&'static str> {
        match self {
            FinishReason::Stop => None,
            FinishReason::Length => Some(
                "the answer was cut short at the output token limit (raise it: \
                 Request::with_max_tokens, `ask --max-tokens`, [cloud].max_tokens or \
                 [local].max_new_tokens)",
            ),
            FinishReason::ContentFilter => {
                Some("the provider's content filter stopped the answer; it is incomplete")
            }
            FinishReason::Refusal => Some("the model declined to answer"),
            FinishReason::ContextFull => Some(
                "the answer was cut short: the model's context window is full (shorten the \
                 conversation or the prompt; a higher token limit would not help)",
            ),
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The text.
    pub text: String,
    /// Token usage.
    pub usage: Usage,
    /// True when `usage` was estimated rather than reported.
    pub usage_estimated: bool,
    /// Log-probability statistics (local models).
    pub confidence: Option<Confidence>,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// One item of a generation stream.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// The end, with usage and confidence. Always the last item of a successful stream. Its
    /// `text` may be empty when the text came as deltas; a backend that sends no deltas puts
    /// the whole text here, and the router streams it as one delta.
    Done(Generation),
}

/// A stream of generation events. Dropping it cancels the generation.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>;

/// What a backend noted about one call's attempts as it made them. The caller owns it and lends
/// it to [`Backend::stream_reporting`], so it can still be read when the call failed, or was
/// dropped halfway (a hedge's loser). Thread-safe.
#[derive(Default)]
pub struct CallReport {
    accepted: AtomicU32,
    /// The most accepted attempts the caller can pay for; 0: no limit.
    affordable: AtomicU32,
    /// Asked for room for one more accepted attempt when those are used up.
    top_up: std::sync::Mutex<Option<TopUp>>,
}

/// Makes room for one more billable attempt (reserves its estimate); `false` when there is none.
type TopUp = Box<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for CallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallReport")
            .field("accepted", &self.accepted_attempts())
            .field("affordable", &self.affordable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CallReport {
    /// An empty report.
    pub fn new() -> Self {
        CallReport::default()
    }

    /// Notes that the provider accepted an attempt (it answered with a success status): it may
    /// bill that attempt whatever happens to it next — a stream cut short, a first token too
    /// late, a retry.
    pub fn note_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// How many attempts the provider accepted so far (a retried call can have several).
    pub fn accepted_attempts(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The caller can pay for at most `attempts` accepted attempts (its budget reservation
    /// covers that many): a backend must not retry once that many were accepted, since the
    /// next one could be billed too. 0 lifts the limit.
    pub fn afford(&self, attempts: u32) {
        self.affordable.store(attempts, Ordering::Relaxed);
    }

    /// With [`CallReport::afford`]: `top_up` is asked to make room for one more accepted
    /// attempt when those afforded are used up (the router reserves one more estimate).
    pub(crate) fn on_used_up(&self, top_up: TopUp) {
        *self.top_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(top_up);
    }

    /// True when another attempt may be made: fewer were accepted than the caller can pay for,
    /// or the caller made room for one more.
    pub fn may_retry(&self) -> bool {
        let n = self.affordable.load(Ordering::Relaxed);
        if n == 0 || self.accepted_attempts() < n {
            return true;
        }
        let top_up = self.top_up.lock().unwrap_or_else(|p| p.into_inner());
        match top_up.as_ref() {
            Some(more) if more() => {
                self.affordable.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

/// A tier that can answer prompts. Implement it to plug in your own model or provider.
///
/// Implementations must be cheap to share (`Send + Sync`) and must stop work when the returned
/// stream is dropped.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A stable name for logs, attempts and cache keys (e.g. the model id).
    fn name(&self) -> &str;

    /// Starts generating; events arrive as they are produced.
    async fn stream(&self, call: BackendCall) -> Result<EventStream>;

    /// [`Backend::stream`], noting on `report` what becomes of the call's attempts as they are
    /// made (see [`CallReport`]). Backends that may make several billable attempts for one
    /// call (the cloud backend retries) implement it, so that the router charges every attempt
    /// the provider accepted, not only the one that answered. The default runs
    /// [`Backend::stream`] and notes nothing.
    async fn stream_reporting(
        &self,
        call: BackendCall,
        _report: &CallReport,
    ) -> Result<EventStream> {
        self.stream(call).await
    }

    /// Generates the whole answer. The default drains [`Backend::stream`].
    async fn generate(&self, call: BackendCall) -> Result<Generation> {
        let mut stream = self.stream(call).await?;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Delta(d) => text.push_str(&d),
                StreamEvent::Done(mut g) => {
                    if g.text.is_empty() {
                        g.text = text;
                    }
                    return Ok(g);
                }
            }
        }
        Err(Error::TruncatedStream(format!(
            "backend `{}` ended its stream without a final event",
            self.name()
        )))
    }

    /// What identifies this build of the model beyond [`Backend::name`] (e.g. a checksum of its
    /// weights). It is part of the answer-cache key, so answers cached from an older build are
    /// not served once the model changes. Default: none (the name alone identifies it).
    fn revision(&self) -> Option<String> {
        None
    }

    /// Whether the backend can serve at all (credentials present, model installed...).
    /// `Err` carries the reason and the fix. Default: available. For a local backend, `Err`
    /// sends every request the policy does not pin to the device to the cloud instead (the
    /// local gate), so report `Err` only when it cannot serve, not merely when it has not
    /// loaded its model yet: the first request loads it.
    fn availability(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Health as the backend's circuit breaker sees it. Default: healthy.
    fn health(&self) -> CloudHealth {
        CloudHealth::Healthy
    }

    /// Connectivity as last observed by the backend. Default: online.
    fn network(&self) -> Network {
        Network::Online
    }
}

/// `stream`, with the text of a final event that no delta carried (a backend that answers in
/// one piece) sent as a delta first, so every stream the router reads carries its text as
/// deltas.
fn whole_text_as_delta(stream: EventStream) -> EventStream {
    let mut streamed = false;
    // Per token: no allocation beyond the items themselves.
    Box::pin(stream.flat_map(move |item| {
        let first = match &item {
            Ok(StreamEvent::Delta(d)) => {
                streamed |= !d.is_empty();
                None
            }
            Ok(StreamEvent::Done(g)) if !streamed && !g.text.is_empty() => {
                Some(Ok(StreamEvent::Delta(g.text.clone())))
            }
            _ => None,
        };
        futures::stream::iter(first.into_iter().chain(std::iter::once(item)))
    }))
}

/// `name@revision`, or the name alone when the backend reports no revision.
fn identity(backend: &dyn Backend) -> String {
    match backend.revision() {
        Some(r) => format!("{}@{r}", backend.name()),
        None => backend.name().to_string(),
    }
}

/// The router's local slot.
#[derive(Clone)]
pub struct LocalTier(Arc<dyn Backend>);

impl LocalTier {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        LocalTier(backend)
    }
    /// The backend's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }
    /// The backend's name with its [`Backend::revision`], if any (`name@revision`).
    pub fn identity(&self) -> String {
        identity(self.0.as_ref())
    }
    /// See [`Backend::availability`].
    pub fn availability(&self) -> std::result::Result<(), String> {
        self.0.availability()
    }
    /// Streams a local generation.
    pub async fn stream(&self, call: BackendCall) -> Result<EventStream> {
        Ok(whole_text_as_delta(self.0.stream(call).await?))
    }
    /// Runs a local generation.
    pub async fn generate(&self, call: BackendCall) -> Result<Generation> {
        self.0.generate(call).await
    }
}

/// The router's cloud slot. Every call needs a [`CloudClearance`], which only a decision that
/// allows the cloud carries.
#[derive(Clone)]
pub struct CloudTier(Arc<dyn Backend>);

impl CloudTier {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        CloudTier(backend)
    }
    /// The backend's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }
    /// The backend's name with its [`Backend::revision`], if any (`name@revision`).
    pub fn identity(&self) -> String {
        identity(self.0.as_ref())
    }
    /// See [`Backend::availability`].
    pub fn availability(&self) -> std::result::Result<(), String> {
        self.0.availability()
    }
    /// The backend's breaker state.
    pub fn health(&self) -> CloudHealth {
        self.0.health()
    }
    /// The backend's view of connectivity.
    pub fn network(&self) -> Network {
        self.0.network()
    }
    /// Streams a cloud generation, with the decision's clearance, noting on `report` the
    /// attempts the provider accepted ([`Backend::stream_reporting`]).
    pub async fn stream(
        &self,
        _clearance: &CloudClearance,
        call: BackendCall,
        report: &CallReport,
    ) -> Result<EventStream> {
        Ok(whole_text_as_delta(
            self.0.stream_reporting(call, report).await?,
        ))
    }
    /// Runs a cloud generation, with the decision's clearance. Unlike [`CloudTier::stream`], it
    /// reports no attempts: the router streams every call, so that retried attempts are
    /// charged.
    pub async fn generate(
        &self,
        _clearance: &CloudClearance,
        call: BackendCall,
    ) -> Result<Generation> {
        self.0.generate(call).await
    }
}

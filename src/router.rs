//! [`Router`]: the one place a request flows through —
//! inspect → decide → cache → execute → record.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backend::{
    Backend, BackendCall, CallReport, CloudTier, EventStream, FinishReason, Generation, LocalTier,
    StreamEvent,
};
use crate::cache::CachedAnswer;
use crate::decision::{CloudClearance, Decision, HedgeFirst, Plan, Reason};
use crate::error::{Error, Result};
use crate::inspect::{inspect, Features};
use crate::policy::{compile_file, compile_str, decide, CompiledPolicy};
use crate::request::{Attempt, Cost, Request, Response, Role, Route, Timings, Usage};
use crate::signals::{CloudHealth, Network, Signals};
use crate::stats::{RouterStats, StatsRecorder};

/// Where the policy comes from.
enum PolicySource {
    Builtin,
    File(PathBuf),
    Text(String),
    Compiled(Box<CompiledPolicy>),
}

/// Builds a [`Router`]. Every setter documents its default.
pub struct RouterBuilder {
    policy: PolicySource,
    home: Option<PathBuf>,
    local: Option<Arc<dyn Backend>>,
    cloud: Option<Arc<dyn Backend>>,
    load_local: bool,
    load_cloud: bool,
    cloud_url: Option<String>,
    cloud_api_key: Option<String>,
    use_cache: bool,
    cache_key: Option<[u8; 32]>,
    trace_content: bool,
    max_prompt_bytes: usize,
}

/// The default of [`RouterBuilder::max_prompt_bytes`]: 8 MiB, about two million tokens, more
/// than any model's context.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 8 << 20;

impl Default for RouterBuilder {
    fn default() -> Self {
        RouterBuilder {
            policy: PolicySource::Text(String::new()),
            home: None,
            local: None,
            cloud: None,
            load_local: true,
            load_cloud: true,
            cloud_url: None,
            cloud_api_key: None,
            use_cache: true,
            cache_key: None,
            trace_content: false,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
        }
    }
}

impl RouterBuilder {
    /// Loads the policy from a TOML file. Default: an empty policy (everything local).
    pub fn policy_file(mut self, path: impl AsRef<Path>) -> Self {
        self.policy = PolicySource::File(path.as_ref().to_path_buf());
        self
    }

    /// Uses the shipped default policy ([`crate::policy::DEFAULT_POLICY`], built in: no file
    /// to find at run time).
    pub fn default_policy(mut self) -> Self {
        self.policy = PolicySource::Builtin;
        self
    }

    /// Uses policy TOML text (diagnostics name the file `<inline>`).
    pub fn policy_str(mut self, toml: impl Into<String>) -> Self {
        self.policy = PolicySource::Text(toml.into());
        self
    }

    /// Uses an already compiled policy.
    pub fn policy(mut self, policy: CompiledPolicy) -> Self {
        self.policy = PolicySource::Compiled(Box::new(policy));
        self
    }

    /// The edgeroute home (runtime, models, cache). Default: `EDGEROUTE_HOME`, else the user's
    /// data directory (see [`crate::home`]).
    pub fn home(mut self, path: impl AsRef<Path>) -> Self {
        self.home = Some(path.as_ref().to_path_buf());
        self
    }

    /// Uses this backend as the local tier instead of the ONNX model named by `[local]`.
    pub fn local_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.local = Some(backend);
        self
    }

    /// Uses this backend as the cloud tier instead of the provider named by `[cloud]`.
    pub fn cloud_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.cloud = Some(backend);
        self
    }

    /// Whether to load the ONNX model from `[local]` when no local backend is given.
    /// Default: true (the model is loaded on first local use, not at build time).
    pub fn load_local_model(mut self, yes: bool) -> Self {
        self.load_local = yes;
        self
    }

    /// Whether to build the HTTP client from `[cloud]` when no cloud backend is given.
    /// Default: true.
    pub fn load_cloud_provider(mut self, yes: bool) -> Self {
        self.load_cloud = yes;
        self
    }

    /// Overrides `[cloud].base_url` (the API key is sent there). Default: the policy's. The
    /// library reads no environment variable for this, so the process environment cannot move
    /// cloud calls, and the key, to another host; the CLI's `--cloud-url` (or
    /// `EDGEROUTE_CLOUD_URL`) passes its value here.
    pub fn cloud_base_url(mut self, url: impl Into<String>) -> Self {
        self.cloud_url = Some(url.into());
        self
    }

    /// The API key for the cloud tier the policy's `[cloud]` names, for apps that keep it in
    /// their own keystore rather than the environment. Default: read from the variable
    /// `[cloud].api_key_env` names. (Not used with [`RouterBuilder::cloud_backend`], whose
    /// backend has its own configuration.)
    pub fn cloud_api_key(mut self, key: impl Into<String>) -> Self {
        self.cloud_api_key = Some(key.into());
        self
    }

    /// Whether to open the answer cache and cost ledger under `<home>/db`. Default: true
    /// (the policy's `[cache].mode` still applies). Without them, a policy's `[budget]` limits
    /// cannot be enforced, so its cloud budget counts as spent: `on_exhausted` applies to
    /// every cloud plan (answered on the device, or refused).
    pub fn cache(mut self, yes: bool) -> Self {
        self.use_cache = yes;
        self
    }

    /// The answer-cache encryption key. Default: `<home>/cache.key`, created (mode 0600) on
    /// first use. Given here, it also stands in for the teacher log's key file
    /// (`<home>/teacher.key`): that key is derived from this one
    /// ([`crate::distill::teacher_key_for`]).
    pub fn cache_key(mut self, key: [u8; 32]) -> Self {
        self.cache_key = Some(key);
        self
    }

    /// Whether tier spans record the messages sent and the answer received
    /// (`gen_ai.input.messages`, `gen_ai.output.messages`, as JSON in the conventions' shape:
    /// `[{"role", "parts": [{"type": "text", "content"}]}]`). Default: false — spans carry
    /// model, token counts, timings and errors (`error.type` a class such as `timeout`;
    /// `edgeroute.error` the message, which may quote the provider), never prompt or answer
    /// text. What a
    /// cloud tier was sent is recorded as sent (redacted when the decision redacts).
    pub fn trace_content(mut self, yes: bool) -> Self {
        self.trace_content = yes;
        self
    }

    /// The most bytes a request's messages may hold together; a larger request is an
    /// [`Error::InvalidRequest`] before anything runs (the privacy scan, the decision, a
    /// tier). [`Router::explain`] does not check it. The limit applies as given: 0 makes every
    /// request invalid. Default: [`DEFAULT_MAX_PROMPT_BYTES`] (8 MiB).
    pub fn max_prompt_bytes(mut self, bytes: usize) -> Self {
        self.max_prompt_bytes = bytes;
        self
    }

    /// Compiles the policy and assembles the router. Fails on an invalid policy (with
    /// `file:line:col` diagnostics) or an unusable cloud configuration.
    ///
    /// Opens the home's database (answer cache, cost ledger, statistics), which one process at
    /// a time can hold; it waits up to 3 s for another to let go (blocking: call it before
    /// serving, or from `spawn_blocking`). When another process keeps it, or the database
    /// cannot be opened at all (a read-only home), a policy without a `[budget]` limit gets a
    /// router without the cache (a warning is logged); one with a limit fails, as its budget
    /// could not be enforced. Apps that run side by side should each have their own home
    /// ([`RouterBuilder::home`]).
    pub fn build(self) -> Result<Router> {
        let policy = match self.policy {
            PolicySource::Builtin => compile_str(
                crate::policy::DEFAULT_POLICY,
                Path::new("<built-in default.toml>"),
            )
            .map_err(Error::Policy)?,
            PolicySource::File(p) => compile_file(&p).map_err(Error::Policy)?,
            PolicySource::Text(t) => {
                compile_str(&t, Path::new("<inline>")).map_err(Error::Policy)?
            }
            PolicySource::Compiled(p) => *p,
        };
        for w in &policy.warnings {
            tracing::warn!("policy: {}", w.as_warning());
        }
        let home = crate::home::resolve(self.home.as_deref());
        // Each tier with the identity its speed is remembered under (see `latency_memory`).
        let (local, local_speed_id) = match self.local {
            Some(b) => {
                let tier = LocalTier::new(b);
                let id = tier.identity();
                (Some(tier), Some(id))
            }
            None if self.load_local => match crate::wiring::local_from_policy(&policy, &home)? {
                Some((tier, id)) => (Some(tier), Some(id)),
                None => (None, None),
            },
            None => (None, None),
        };
        let cloud = match self.cloud {
            Some(b) => Some(CloudTier::new(b)),
            None if self.load_cloud => crate::wiring::cloud_from_policy(
                &policy,
                self.cloud_url.as_deref(),
                self.cloud_api_key.as_deref(),
            )?,
            None => None,
        };
        let store = if self.use_cache {
            // With the output limits and penalty the policy gives each tier's calls: a policy
            // with an explicit `version` keeps it across edits, and an answer cut at 128
            // tokens must not answer once the limit is 2,048.
            let model_id = format!(
                "local={};cloud={};limits=local-max{}-rp{}/cloud-max{}",
                local.as_ref().map_or_else(|| "-".into(), |l| l.identity()),
                cloud.as_ref().map_or_else(|| "-".into(), |c| c.identity()),
                policy.local.max_new_tokens,
                policy.local.repetition_penalty,
                policy
                    .cloud
                    .as_ref()
                    .map_or_else(|| "-".into(), |c| c.max_tokens.to_string()),
            );
            match crate::wiring::Store::open(&policy, &home, self.cache_key, model_id) {
                Ok(store) => Some(store),
                // The database cannot be used: another process (another app on the same home,
                // or `edgeroute ask`) holds it, or the home is read-only or not a directory.
                // Without a budget to enforce, answer without the cache and the persisted
                // statistics rather than not at all; a budget needs the ledger.
                Err(e @ Error::Storage { .. }) if !policy.budget.has_limits() => {
                    tracing::warn!(error = %e, "answering without the answer cache and persisted statistics");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if policy.distill.collect && store.is_none() {
            tracing::warn!("[distill] collect = true, but this router has no database (`RouterBuilder::cache(false)`, or the database cannot be used): no cloud answers are kept");
        }
        let work = store.as_ref().map(|s| s.work()).unwrap_or_default();
        let speed_ids = SpeedIds {
            local: local_speed_id,
            cloud: cloud.as_ref().map(|c| c.identity()),
        };
        let stats = match store.as_ref().map(|s| speed_ids.memory(s.database())) {
            Some(Ok(memory)) => StatsRecorder::remembering(memory),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "latency estimates start from the policy's [latency] model and are not remembered");
                StatsRecorder::default()
            }
            None => StatsRecorder::default(),
        };
        Ok(Router {
            inner: Arc::new(Inner {
                policy,
                local,
                cloud,
                store,
                work,
                closing: std::sync::atomic::AtomicBool::new(false),
                warned_no_ledger: std::sync::atomic::AtomicBool::new(false),
                stats: Arc::new(stats),
                speed_ids,
                trace_content: self.trace_content,
                max_prompt_bytes: self.max_prompt_bytes,
            }),
        })
    }
}

struct Inner {
    policy: CompiledPolicy,
    local: Option<LocalTier>,
    cloud: Option<CloudTier>,
    store: Option<crate::wiring::Store>,
    /// Requests running and cloud-call reservations not settled yet ([`Router::settled`]).
    work: Arc<crate::wiring::UnsettledWork>,
    /// Set by [`Router::shutdown`]: no new request is taken.
    closing: std::sync::atomic::AtomicBool,
    /// Whether a request was told the budget counts as spent for want of a cost ledger.
    warned_no_ledger: std::sync::atomic::AtomicBool,
    stats: Arc<StatsRecorder>,
    /// What the tiers' remembered speeds are filed under (see [`Router::recall_latency`]).
    speed_ids: SpeedIds,
    /// See [`RouterBuilder::trace_content`].
    trace_content: bool,
    /// See [`RouterBuilder::max_prompt_bytes`].
    max_prompt_bytes: usize,
}

impl Inner {
    /// The local tier, or why there is none.
    fn local_tier(&self) -> Result<&LocalTier> {
        self.local.as_ref().ok_or_else(|| Error::TierUnavailable {
            tier: "local",
            why: format!(
                "no local model is configured; run `{}` to install it, or give the builder a local backend",
                crate::home::SETUP_COMMAND
            ),
        })
    }
}

/// The identities the latency models remember each tier's speed under: what the speed
/// depends on (see `latency_memory`).
struct SpeedIds {
    local: Option<String>,
    cloud: Option<String>,
}

impl SpeedIds {
    fn memory(&self, db: &crate::cache::Database) -> Result<crate::latency_memory::LatencyMemory> {
        crate::latency_memory::LatencyMemory::open(db, self.local.as_deref(), self.cloud.as_deref())
    }
}

/// The hybrid router. Cheap to clone (an `Arc` inside); `Send + Sync`.
///
/// ```no_run
/// # async fn demo() -> edgeroute::Result<()> {
/// use edgeroute::{Request, Router};
/// let router = Router::builder().policy_file("policies/default.toml").build()?;
/// let response = router.complete(Request::new("What is the capital of France?")).await?;
/// println!("{} (answered by {}, rule `{}`)", response.text, response.route, response.decision.rule);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// An item of [`Router::stream`]. `Debug` shows a delta's length, not its text (answers
/// often repeat the personal data of the prompt).
pub enum RouterEvent {
    /// More answer text: as generated for single-tier plans (local, cloud); for a cascade or
    /// a hedge, whose answer is known only once a tier has won, one delta with the whole
    /// answer just before `Done`. A cache hit is one delta too.
    Delta(String),
    /// The final response. `text` holds the whole answer.
    Done(Box<Response>),
}

impl std::fmt::Debug for RouterEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterEvent::Delta(d) => f
                .debug_tuple("Delta")
                .field(&format_args!("<{} bytes>", d.len()))
                .finish(),
            RouterEvent::Done(r) => f.debug_tuple("Done").field(r).finish(),
        }
    }
}

impl Router {
    /// Starts building a router.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// The compiled policy.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.inner.policy
    }

    /// The live signals `decide()` would see for `request`, whose features are `features`
    /// (what [`inspect`] found in it).
    pub fn signals(&self, request: &Request, features: &Features) -> Signals {
        let inner = &self.inner;
        let (network, cloud_health, cloud_available) = match &inner.cloud {
            Some(c) => (c.network(), c.health(), c.availability().is_ok()),
            None => (Network::Online, CloudHealth::Healthy, false),
        };
        Signals {
            network,
            cloud_health,
            budget_left_usd: match &inner.store {
                Some(store) => store.budget_left(),
                // No cost ledger (`RouterBuilder::cache(false)`): nothing could stop the spending,
                // so the budget counts as spent and `on_exhausted` applies.
                None if inner.policy.budget.has_limits() => Some(rust_decimal::Decimal::ZERO),
                None => None,
            },
            cloud_call_usd: inner
                .policy
                .cloud
                .as_ref()
                .map(|c| c.call_estimate(features.prompt_tokens, request.params.max_tokens)),
            cloud_available,
            local_available: inner
                .local
                .as_ref()
                .is_some_and(|l| l.availability().is_ok()),
            latency: inner.stats.latency_estimates(
                &inner.policy.latency,
                features.prompt_tokens,
                self.max_tokens(request),
            ),
        }
    }

    /// Counts work that starts (a request, a calibration) until the returned guard is dropped,
    /// or refuses it with [`Error::ShutDown`] once [`Router::shutdown`] began.
    fn admit(&self) -> Result<crate::wiring::Unsettled> {
        let inner = &self.inner;
        // Checked before counting too, so that refused work does not hold the shutdown up.
        if inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        let counted = inner.work.track();
        // Pairs with `shutdown`'s fence: this work sees `closing`, or `shutdown` sees it counted.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        Ok(counted)
    }

    /// Measures the local model on this device: one warm-up answer (which loads the model
    /// when it is not loaded yet), then `runs` short greedy answers to fixed prompts (1 to
    /// [`MAX_CALIBRATION_RUNS`](crate::calibrate::MAX_CALIBRATION_RUNS)). Each measured
    /// answer feeds the latency estimates the next decisions read, as a real local answer
    /// does; on a router with a database they are remembered for the next router on the
    /// same home. The answers are not requests: not cached, not counted in
    /// [`Router::stats`], not kept. `progress` sees each run as it ends (numbered from 1).
    /// `edgeroute bench` runs this.
    ///
    /// Errors: [`Error::TierUnavailable`] without a local tier; the local model's own
    /// ([`Error::ModelUnavailable`] names the set-up command); [`Error::InvalidRequest`] for
    /// `runs` out of range; [`Error::ShutDown`] once [`Router::shutdown`] began (a
    /// calibration under way then stops before its next run).
    pub async fn calibrate(
        &self,
        runs: usize,
        mut progress: impl FnMut(usize, &crate::calibrate::CalibrationRun) + Send,
    ) -> Result<crate::calibrate::Calibration> {
        let _in_flight = self.admit()?;
        let inner = &self.inner;
        let bench = crate::calibrate::Bench {
            local: inner.local_tier()?,
            stats: &inner.stats,
            policy: &inner.policy,
            closing: &inner.closing,
            identity: inner.speed_ids.local.as_deref().unwrap_or_default(),
        };
        crate::calibrate::calibrate(bench, runs, &mut progress).await
    }

    /// Starts this router's latency estimates from what routers on `db` measured of the same
    /// tiers on this device, as a router with a database does when it is built, without
    /// remembering anything there. For tools that decide without the answer cache
    /// (`edgeroute explain` builds its router with `cache(false)` and reads the home's
    /// database this way). What this router measured so far is replaced. Errors:
    /// [`Error::Storage`] when the statistics cannot be opened.
    pub fn recall_latency(&self, db: &crate::cache::Database) -> Result<()> {
        let memory = self.inner.speed_ids.memory(db)?;
        self.inner.stats.recall(&memory);
        Ok(())
    }

    /// The decision for a request, with no model run, no network and no writes — the same
    /// code the real pipeline runs.
    pub fn explain(&self, request: &Request) -> Decision {
        let features = inspect(&self.inner.policy, request);
        let signals = self.signals(request, &features);
        self.decide(&features, &signals)
    }

    /// Like [`Router::explain`], with signals supplied by the caller ("what if offline?").
    /// Start from [`Router::signals`] and change what the question is about: signals built
    /// from scratch have no [`Signals::cloud_call_usd`], so only a budget with nothing left
    /// counts as exhausted.
    pub fn explain_with(&self, request: &Request, signals: &Signals) -> Decision {
        let features = inspect(&self.inner.policy, request);
        self.decide(&features, signals)
    }

    /// `decide()`, with an unavailable tier's reason saying why this router's tier is
    /// unavailable (which variable has no key, where no model is installed) rather than the
    /// policy's generic words.
    fn decide(&self, features: &Features, signals: &Signals) -> Decision {
        let mut decision = decide(&self.inner.policy, features, signals);
        for reason in &mut decision.reasons {
            let (why, availability) = match reason {
                Reason::CloudUnavailable { why } => {
                    (why, self.inner.cloud.as_ref().map(|t| t.availability()))
                }
                Reason::LocalUnavailable { why } => {
                    (why, self.inner.local.as_ref().map(|t| t.availability()))
                }
                _ => continue,
            };
            match availability {
                Some(Err(specific)) => *why = specific,
                None => *why = "no such tier: the policy or the builder configures none".into(),
                Some(Ok(())) => {}
            }
        }
        decision
    }

    /// Counters and latency figures since the router was built.
    pub fn stats(&self) -> RouterStats {
        self.inner.stats.snapshot()
    }

    /// Whether answers are cached and statistics persisted: `false` when built with
    /// `cache(false)`, or when the home's database could not be opened (another process holds
    /// it, or the home is read-only) and the router, having no budget to enforce, answers
    /// without it.
    pub fn cache_in_use(&self) -> bool {
        self.inner.store.is_some()
    }

    /// Completes once no request is running and every cloud call's budget reservation is
    /// settled, including those of requests dropped midway (a stop button, a timeout in the
    /// app), which settle in the background at the prompt and what had arrived. Await it
    /// before a program exits after dropping requests (on Ctrl-C, at shutdown): a reservation
    /// left open counts the call's whole estimate as spent. Requests still running finish
    /// first; wrap it in a timeout if that may take long.
    pub async fn settled(&self) {
        self.inner.work.none_left().await;
    }

    /// Stops taking requests, waits for those running and for every cloud call's cost to
    /// settle ([`Router::settled`]), then makes everything recorded durable (answer cache,
    /// ledger, statistics, teacher log): what a server calls when it is told to stop (SIGTERM),
    /// before it exits. Requests made from then on, on this router or its clones, fail at once
    /// with [`Error::ShutDown`] (also a `complete` future or a stream made before but not yet
    /// running). Wrap it in a timeout if running requests may take long; calling it again
    /// waits again. Do not await it (or [`Router::settled`]) inside a request, from an app's
    /// [`Backend`]: it would wait for itself.
    pub async fn shutdown(&self) -> Result<()> {
        use std::sync::atomic::{fence, Ordering};
        self.inner.closing.store(true, Ordering::SeqCst);
        // Pairs with the fence in `admit`: a request either sees `closing`, or is counted
        // before `settled` looks.
        fence(Ordering::SeqCst);
        self.settled().await;
        match &self.inner.store {
            Some(store) => store.flush().await,
            None => Ok(()),
        }
    }

    fn record_stats(&self, response: &Response, prompt_tokens: u32) {
        let event = crate::stats::StatsEvent::of(response, &self.inner.policy, prompt_tokens);
        self.inner.stats.record(&event);
        if let Some(store) = &self.inner.store {
            store.stats().record(&event);
        }
    }

    /// The local tier's output limit for `request`, which the latency signals estimate the
    /// local decode time from: the request's own
    /// `max_tokens`, else `[local].max_new_tokens`. Each tier's call gets its own limit.
    pub fn max_tokens(&self, request: &Request) -> u32 {
        request
            .params
            .max_tokens
            .unwrap_or(self.inner.policy.local.max_new_tokens)
    }

    /// Answers a request: inspect → decide → cache → execute → record.
    ///
    /// Dropping the future stops the work: local generation ends, a cloud call is closed and
    /// charged to the budget for the prompt and what had arrived (its whole estimate, the
    /// prompt and `max_tokens` of output, if nothing had). Within a hedge, the cloud leg that
    /// loses keeps its whole estimate (it may have been billed for all of it).
    pub async fn complete(&self, request: Request) -> Result<Response> {
        self.run(request, None).await
    }

    /// Answers a request, streaming text deltas as they are generated (see [`RouterEvent`]).
    /// Dropping the stream stops the work, as for [`Router::complete`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the request runs on a task of the current runtime.
    pub fn stream(
        &self,
        request: Request,
    ) -> futures::stream::BoxStream<'static, Result<RouterEvent>> {
        let (tx, rx) = mpsc::unbounded_channel::<Result<RouterEvent>>();
        let router = self.clone();
        // Counted from now, not from when the task first runs: `settled()` called right after
        // this does not miss the request.
        let in_flight = self.inner.work.track();
        let handle = tokio::spawn(async move {
            let _in_flight = in_flight;
            let (dtx, mut drx) = mpsc::unbounded_channel::<String>();
            let fut = router.run(request, Some(dtx));
            tokio::pin!(fut);
            let result = loop {
                tokio::select! {
                    biased;
                    Some(d) = drx.recv() => {
                        if tx.send(Ok(RouterEvent::Delta(d))).is_err() {
                            return; // the caller dropped the stream: dropping `fut` cancels work
                        }
                    }
                    r = &mut fut => break r,
                }
            };
            while let Ok(d) = drx.try_recv() {
                let _ = tx.send(Ok(RouterEvent::Delta(d)));
            }
            let _ = tx.send(result.map(|r| RouterEvent::Done(Box::new(r))));
        });
        let abort = AbortOnDrop(handle);
        futures::stream::unfold(
            (rx, abort, false),
            |(mut rx, mut abort, ended)| async move {
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Some(item) => {
                        let last = !matches!(item, Ok(RouterEvent::Delta(_)));
                        Some((item, (rx, abort, last)))
                    }
                    // The task ended without its last event: it panicked (a bug, in the router or
                    // an app's backend). Said so, rather than a stream that just stops.
                    None => match (&mut abort.0).await {
                        Err(e) if e.is_panic() => {
                            let error = Error::Inference(
                                "the request's task panicked (a bug; see the panic message on \
                             standard error)"
                                    .into(),
                            );
                            Some((Err(error), (rx, abort, true)))
                        }
                        _ => None,
                    },
                }
            },
        )
        .boxed()
    }

    async fn run(
        &self,
        request: Request,
        sink: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<Response> {
        let inner = &self.inner;
        // Counted until this future is done or dropped, after whatever it reserved (dropped
        // first, as declared later): `settled()` cannot return between a reservation and the
        // guard that settles it.
        let _in_flight = self.admit()?;
        let started = Instant::now();
        // A deadline too far away to represent (`Duration::MAX`) is no deadline.
        let deadline = request.deadline.and_then(|d| started.checked_add(d));
        if request.messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(Error::InvalidRequest(
                "the request has no non-empty message; pass a prompt".into(),
            ));
        }
        // Instructions alone are no conversation (a provider answers them with a 400).
        if request.messages.iter().all(|m| m.role == Role::System) {
            return Err(Error::InvalidRequest(
                "the request has only system messages; add the user's message".into(),
            ));
        }
        let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        if bytes > inner.max_prompt_bytes {
            return Err(Error::InvalidRequest(format!(
                "the request's messages hold {bytes} bytes, over this router's limit of {} \
                 (RouterBuilder::max_prompt_bytes); shorten the conversation or raise the limit",
                inner.max_prompt_bytes
            )));
        }
        // Checked up front whatever the route, so a bad value is an error, not a fallback.
        request.params.check()?;
        let mut timings = Timings::default();

        // inspect
        let t = Instant::now();
        let features = async { inspect(&inner.policy, &request) }
            .instrument(tracing::debug_span!("edgeroute.inspect"))
            .await;
        timings.inspect = t.elapsed();

        // decide (before the cache: a request the policy refuses is refused, whatever an
        // earlier request with other tags or another task left in the cache)
        let t = Instant::now();
        let signals = self.signals(&request, &features);
        if inner.store.is_none()
            && inner.policy.budget.has_limits()
            && inner.cloud.is_some()
            && !inner
                .warned_no_ledger
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("the policy sets [budget] limits, but this router has no cost ledger (`RouterBuilder::cache(false)`): its cloud budget counts as spent, and [budget] on_exhausted applies to every cloud plan");
        }
        let mut decision =
            tracing::debug_span!("edgeroute.decide").in_scope(|| self.decide(&features, &signals));
        timings.decide = t.elapsed();
        tracing::debug!(rule = %decision.rule, route = decision.route(), "edgeroute.decide");

        // cache
        let t = Instant::now();
        // A refused request has no cache class: it is neither looked up nor stored (except one
        // refused only because the budget ran out: what is already cached for its rule's plan
        // costs nothing, and is served); nor is one that skips the cache or asks for a sampled
        // answer.
        let cache_key = match (&inner.store, decision.cache_class()) {
            (Some(s), Some(class)) if request.cacheable() => {
                Some(s.key_for(&inner.policy, &request, &features, &class))
            }
            _ => None,
        };
        let hit =
            tracing::debug_span!("edgeroute.cache").in_scope(|| match (&inner.store, &cache_key) {
                (Some(s), Some(k)) => s.lookup(k),
                _ => None,
            });
        timings.cache = t.elapsed();
        if let Some(answer) = hit {
            let decision = decision.answered_from_cache(&answer);
            let text = answer.text;
            if let Some(sink) = &sink {
                let _ = sink.send(text.clone());
            }
            timings.total = started.elapsed();
            timings.first_token = Some(timings.total);
            let response = Response {
                text,
                route: Route::Cache,
                decision,
                usage: Usage::default(),
                cost: Cost::ZERO,
                timings,
                confidence: None,
                attempts: Vec::new(),
                cached: true,
                finish: answer.finish,
            };
            self.record_stats(&response, features.prompt_tokens);
            return Ok(response);
        }

        // execute
        let t = Instant::now();
        let uncounted = UncountedSpend(SpendNotes::new(inner));
        let exec = Execution {
            router: self,
            request: &request,
            features: &features,
            started,
            deadline,
            sink: sink.as_ref(),
            forward: matches!(decision.plan, Plan::Local { .. } | Plan::Cloud { .. }),
            streamed: false,
            drained: Drained::default(),
            attempts: Vec::new(),
            reasons: Vec::new(),
            notes: uncounted.0.clone(),
        };
        let span = tracing::info_span!(
            "edgeroute.execute",
            edgeroute.rule = %decision.rule,
            edgeroute.route = decision.route(),
        );
        let (outcome, attempts) = exec.run(&mut decision).instrument(span).await;
        timings.execute = t.elapsed();
        let outcome = match outcome {
            Ok(x) => x,
            Err(e) => {
                // Accepted cloud attempts are charged (in the ledger) even when none answered.
                let spent: Decimal = attempts.iter().map(|a| a.cost.usd).sum();
                uncounted.counted();
                inner.stats.record_failure(spent);
                if let Some(store) = &inner.store {
                    store.stats().record_failure(spent);
                }
                return Err(e);
            }
        };

        // record
        let t = Instant::now();
        let record_span =
            tracing::debug_span!("edgeroute.record", edgeroute.route = outcome.route.as_str());
        let _in_record = record_span.enter();
        match (&inner.store, &cache_key) {
            (Some(_), Some(_)) if decision.fell_back() => {
                tracing::debug!("answer not cached: a fallback tier gave it, not the plan's");
            }
            // An empty answer is nothing to replay (a model that stopped at once, or a damaged
            // one): the next request asks again.
            (Some(_), Some(_)) if outcome.text.trim().is_empty() => {
                tracing::debug!("answer not cached: it is empty");
            }
            // A filtered or refused answer may come out differently next time; one cut at the
            // token limit is kept, and says so when it is served.
            (Some(_), Some(_))
                if matches!(
                    outcome.finish,
                    FinishReason::ContentFilter | FinishReason::Refusal
                ) =>
            {
                tracing::debug!(finish = %outcome.finish, "answer not cached: it is not whole");
            }
            (Some(store), Some(key)) => {
                // The attempt that answered (in a hedge, the loser's cancelled one comes last).
                let model = attempts
                    .iter()
                    .rev()
                    .find(|a| a.route == outcome.route && a.error.is_none())
                    .map_or("", |a| a.backend.as_str());
                let answer = CachedAnswer::new(&outcome.text, outcome.route, model, outcome.usage)
                    .finished(outcome.finish);
                store.save(key, &answer);
            }
            _ => {}
        }
        // The teacher log keeps whole cloud answers only (a cut or filtered one would teach
        // the local model to stop short).
        if let (Some(store), Some(sent)) = (&inner.store, outcome.sent) {
            if outcome.finish == FinishReason::Stop && !sent.answer.trim().is_empty() {
                store.teach(&crate::distill::TeacherSample {
                    at_unix_ms: crate::distill::unix_ms(std::time::SystemTime::now()),
                    rule: decision.rule.clone(),
                    model: sent.model,
                    messages: sent.messages,
                    answer: sent.answer,
                    redacted_spans: sent.redacted_spans,
                    pii_in_clear: sent.pii_in_clear,
                    escalated: decision
                        .reasons
                        .iter()
                        .any(|r| matches!(r, Reason::Escalated { .. })),
                    usage: outcome.usage,
                });
            } else {
                tracing::debug!(finish = %outcome.finish, "cloud answer not kept for distillation: it is not whole");
            }
        }
        timings.record = t.elapsed();
        timings.total = started.elapsed();
        timings.first_token = outcome.first_token.map(|at| at.duration_since(started));
        let cost = attempts.iter().fold(Cost::ZERO, |mut acc, a| {
            acc += a.cost;
            acc
        });
        let response = Response {
            text: outcome.text,
            route: outcome.route,
            decision,
            usage: outcome.usage,
            cost,
            timings,
            confidence: attempts.iter().rev().find_map(|a| a.confidence),
            attempts,
            cached: false,
            finish: outcome.finish,
        };
        uncounted.counted();
        self.record_stats(&response, features.prompt_tokens);
        Ok(response)
    }
}

/// A span for one tier call (`tier` = `local` or `cloud`), with OpenTelemetry GenAI
/// semantic-convention field names. Prompt and answer text are recorded only with
/// `trace_content` ([`RouterBuilder::trace_content`]).
fn tier_span(
    tier: &'static str,
    provider: &str,
    model: &str,
    call: &BackendCall,
    trace_content: bool,
) -> tracing::Span {
    let span = tracing::info_span!(
        "edgeroute.tier",
        // The convention's span name and kind, for exporters that read them
        // (tracing-opentelemetry).
        otel.name = format!("chat {model}"),
        otel.kind = "client",
        edgeroute.tier = tier,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        gen_ai.request.max_tokens = call.params.max_tokens,
        gen_ai.request.temperature = call.params.temperature,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.server.time_to_first_token = tracing::field::Empty,
        gen_ai.input.messages = tracing::field::Empty,
        gen_ai.output.messages = tracing::field::Empty,
        error.type = tracing::field::Empty,
        edgeroute.error = tracing::field::Empty,
    );
    if trace_content {
        let messages: Vec<serde_json::Value> = call
            .messages
            .iter()
            .map(|m| text_message(m.role.as_str(), &m.content, None))
            .collect();
        span.record(
            "gen_ai.input.messages",
            serde_json::Value::from(messages).to_string(),
        );
    }
    span
}

/// A message in the GenAI conventions' JSON shape: `{"role", "parts": [{"type": "text",
/// "content"}]}`, with `finish_reason` for an output message.
fn text_message(role: &str, content: &str, finish: Option<FinishReason>) -> serde_json::Value {
    let mut m = serde_json::json!({
        "role": role,
        "parts": [{"type": "text", "content": content}],
    });
    if let Some(f) = finish {
        m["finish_reason"] = f.as_str().into();
    }
    m
}

/// Records a tier call's outcome on its span: usage, time to first token (seconds, as the
/// semantic convention's metric), the answer when content tracing is on, or the error.
fn record_usage(
    span: &tracing::Span,
    result: std::result::Result<&(Generation, Option<Instant>), &Error>,
    started: Instant,
    trace_content: bool,
) {
    match result {
        Ok((g, first_token)) => {
            span.record("gen_ai.usage.input_tokens", g.usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", g.usage.output_tokens);
            if let Some(at) = first_token {
                span.record(
                    "gen_ai.server.time_to_first_token",
                    at.duration_since(started).as_secs_f64(),
                );
            }
            if trace_content {
                let answer = [text_message("assistant", &g.text, Some(g.finish))];
                span.record(
                    "gen_ai.output.messages",
                    serde_json::Value::from(answer.to_vec()).to_string(),
                );
            }
        }
        Err(e) => {
            // A low-cardinality class, as the convention asks; the message apart.
            span.record("error.type", e.kind());
            span.record("edgeroute.error", tracing::field::display(e));
        }
    }
}

/// Ends a hedge leg: notes when, and records a failure on its span (an answer recorded itself).
fn end_leg(
    clock: &LegClock,
    span: &tracing::Span,
    result: Result<Generation>,
    trace_content: bool,
) -> Result<Generation> {
    let _ = clock.ended.set(Instant::now());
    if let Err(e) = &result {
        record_usage(span, Err(e), clock.started(), trace_content);
    }
    result
}

/// One leg of a hedge: a tier's whole call, from start to collected answer.
type Leg<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Generation>> + Send + 'a>>;

/// When a hedge leg started and when its first token came. Kept outside the leg's future, so
/// that a leg dropped mid-stream (the loser) still reports them.
#[derive(Default)]
struct LegClock {
    started: OnceLock<Instant>,
    /// When generation started: the local tier's stream was ready (a first request loads the
    /// model before that, which the latency signals must not count as generating).
    generating: OnceLock<Instant>,
    /// When the leg ended (answered or failed); unset for a leg dropped mid-way.
    ended: OnceLock<Instant>,
    /// Set once the tier accepted the call (for the cloud: an answer is streaming).
    accepted: OnceLock<()>,
    /// The cloud attempts the provider accepted, retried ones included.
    report: Arc<CallReport>,
    /// How much text has arrived (what a cloud leg dropped with the request is charged).
    received: Arc<PendingProgress>,
    first_token: OnceLock<Instant>,
    first_token_notify: tokio::sync::Notify,
    /// Placeholders the answer put inside links, left as they are (see [`Rehydrator`]).
    ///
    /// [`Rehydrator`]: crate::privacy::Rehydrator
    placeholders_in_links: std::sync::atomic::AtomicUsize,
    /// The answer as received, before re-hydration, when the teacher log keeps it.
    raw_answer: OnceLock<String>,
}

impl LegClock {
    fn start(&self) {
        let _ = self.started.set(Instant::now());
    }

    fn accept(&self) {
        let _ = self.accepted.set(());
    }

    /// How many of the leg's cloud attempts the provider accepted (at least one once it
    /// streams, even from a backend that does not report its attempts).
    fn accepted_attempts(&self) -> u32 {
        self.report
            .accepted_attempts()
            .max(u32::from(self.accepted.get().is_some()))
    }

    fn started(&self) -> Instant {
        self.started.get().copied().unwrap_or_else(Instant::now)
    }

    /// When the leg ended, or now for one still running.
    fn end(&self) -> Instant {
        self.ended.get().copied().unwrap_or_else(Instant::now)
    }

    /// How long the leg ran.
    fn elapsed(&self) -> Duration {
        self.end().saturating_duration_since(self.started())
    }

    /// Where the latency signals time the leg from: a cloud leg's start; a local leg's start
    /// of generation (a model load is not generating), `None` while it was still loading.
    fn timed_from(&self, is_cloud: bool) -> Option<Instant> {
        if is_cloud {
            Some(self.started())
        } else {
            self.generating.get().copied()
        }
    }

    fn first_token(&self) -> Option<Instant> {
        self.first_token.get().copied()
    }

    fn note_token(&self) {
        if self.first_token.set(Instant::now()).is_ok() {
            // A stored permit: a waiter that arrives later still wakes.
            self.first_token_notify.notify_one();
        }
    }

    /// Completes when the first token has come.
    async fn first_token_arrived(&self) {
        if self.first_token.get().is_none() {
            self.first_token_notify.notified().await;
        }
    }
}

/// Whether a cloud call was made, and how much of its answer has arrived (characters), for
/// [`PendingCharge`].
#[derive(Default)]
struct PendingProgress {
    sent: std::sync::atomic::AtomicBool,
    chars: std::sync::atomic::AtomicU64,
}

impl PendingProgress {
    /// The call is about to be made: from now on the provider may bill it.
    fn mark_sent(&self) {
        self.sent.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn was_sent(&self) -> bool {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, delta: &str) {
        let n = delta.chars().count() as u64;
        self.chars
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn chars(&self) -> u64 {
        self.chars.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `blocking` (an fsync) from async code without holding up the tasks of the runtime's
/// thread: on a multi-threaded runtime they move to another thread meanwhile
/// (`block_in_place`); on a current-thread runtime, or outside one, it just runs.
fn off_the_runtime<T>(blocking: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(blocking)
        }
        _ => blocking(),
    }
}

/// A cloud call's budget reservation, settled exactly once: with the call's cost when it
/// ends, or, when the request is dropped mid-answer (an app's stop button), with the prompt
/// and what was streamed so far. Left unsettled, the whole estimate (the prompt plus
/// `max_tokens` of output) would count as spent for good.
struct PendingCharge {
    store: crate::wiring::Store,
    reservation: Option<crate::ledger::Reservation>,
    /// Counts the reservation as open ([`Router::settled`]) until it is settled.
    open: Option<crate::wiring::Unsettled>,
    /// One more estimate each, reserved before a retry the provider may bill too.
    retries: Arc<std::sync::Mutex<Vec<crate::ledger::Reservation>>>,
    /// The call's attempts (those the provider accepted are billed).
    report: Arc<CallReport>,
    estimate: Decimal,
    cloud: Option<crate::policy::CloudSection>,
    input_tokens: u64,
    received: Arc<PendingProgress>,
    /// Where the call's cost reaches the statistics if its request is dropped before it
    /// records itself (the ledger is charged either way).
    notes: SpendNotes,
}

/// A request's cloud spend on its way to the statistics. The request counts its cost when it
/// records itself; one dropped before that is counted from here: charges already settled (by
/// [`UncountedSpend`], the request's guard) and charges dropped unsettled (by the charge).
#[derive(Clone)]
struct SpendNotes {
    stats: Arc<StatsRecorder>,
    store: Option<crate::wiring::Store>,
    /// Settled in the ledger, not yet counted in the statistics.
    settled: Arc<std::sync::Mutex<Decimal>>,
}

impl SpendNotes {
    fn new(inner: &Inner) -> Self {
        SpendNotes {
            stats: Arc::clone(&inner.stats),
            store: inner.store.clone(),
            settled: Arc::default(),
        }
    }

    fn add_settled(&self, usd: Decimal) {
        let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        *settled = settled.saturating_add(usd);
    }

    /// Counts `usd` of a request that will not record itself, in memory and on disk.
    fn record(&self, usd: Decimal) {
        self.stats.record_spend(usd);
        if let Some(store) = &self.store {
            store.stats().record_spend(usd);
        }
    }
}

/// Counts, when dropped, the request's settled cloud charges that it did not count itself
/// (it was dropped mid-way): the statistics' spend agrees with the ledger's.
struct UncountedSpend(SpendNotes);

impl UncountedSpend {
    /// The request counts its whole cost itself (its response, or its failure).
    fn counted(&self) {
        *self.0.settled.lock().unwrap_or_else(|p| p.into_inner()) = Decimal::ZERO;
    }
}

impl Drop for UncountedSpend {
    fn drop(&mut self) {
        let usd = std::mem::take(&mut *self.0.settled.lock().unwrap_or_else(|p| p.into_inner()));
        if !usd.is_zero() {
            self.0.record(usd);
        }
    }
}

impl PendingCharge {
    /// Reserves a cloud call's `estimate` in `store`'s ledger for its first attempt, and
    /// tells the backend through `report` to ask for one more estimate before each retry the
    /// provider may bill too (after an attempt it accepted): a retry the budget has no room for
    /// is not made. `received` counts what arrives.
    async fn reserve(
        store: &crate::wiring::Store,
        estimate: Decimal,
        cloud: Option<crate::policy::CloudSection>,
        input_tokens: u64,
        received: Arc<PendingProgress>,
        report: Arc<CallReport>,
        notes: SpendNotes,
    ) -> Result<Self> {
        let reservation = store.reserve(estimate)?;
        let retries = Arc::new(std::sync::Mutex::new(Vec::new()));
        report.afford(1);
        let (more, room) = (store.clone(), Arc::clone(&retries));
        report.on_used_up(Box::new(move || match off_the_runtime(|| more.reserve_durably(estimate)) {
            Ok(r) => {
                room.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "no retry: the budget has no room for another attempt");
                false
            }
        }));
        // Held before the reservation is made durable: a request dropped while it is being
        // written still settles it (at nothing: no call was made).
        let charge = PendingCharge {
            reservation: Some(reservation),
            open: Some(store.unsettled()),
            retries,
            report,
            store: store.clone(),
            estimate,
            cloud,
            input_tokens,
            received,
            notes,
        };
        store.flush_ledger().await?;
        Ok(charge)
    }

    /// The reservations to settle ([`crate::wiring::Store::settle`]): the first attempt's, then
    /// the retries'.
    fn take_reservations(&mut self) -> Vec<crate::ledger::Reservation> {
        let mut all: Vec<_> = self.reservation.take().into_iter().collect();
        all.append(&mut self.retries.lock().unwrap_or_else(|p| p.into_inner()));
        all
    }

    async fn settle(mut self, usd: Decimal) {
        // Noted before the ledger's write, which a dropped request can cut short after it
        // took effect.
        self.notes.add_settled(usd);
        let reservations = self.take_reservations();
        self.store.settle(reservations, usd).await;
        self.open.take();
    }

    /// What a call dropped now has cost: the prompt and the output received (about four
    /// characters a token, rounded up), once any came; before that, the provider may be
    /// generating the whole answer: the estimate.
    ///
    /// Earlier attempts the provider accepted (then retried) are charged their estimate each.
    fn cost_so_far(&self) -> Decimal {
        if !self.received.was_sent() {
            return Decimal::ZERO;
        }
        let chars = self.received.chars();
        let this_attempt = match &self.cloud {
            Some(c) if chars > 0 => c
                .cost(Usage::new(self.input_tokens, chars.div_ceil(4)))
                .min(self.estimate),
            _ => self.estimate,
        };
        let earlier = self.report.accepted_attempts().saturating_sub(1);
        this_attempt.saturating_add(unanswered_cost(earlier, self.estimate).usd)
    }
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        let usd = self.cost_so_far();
        let reservations = self.take_reservations();
        if reservations.is_empty() {
            return;
        }
        let open = self.open.take();
        self.notes.record(usd);
        // Settled here and now (in memory: no runtime needed, even one shutting down), durable
        // with the next flush: asked for at once when a runtime runs, else sled's own periodic
        // flush or its last one when the database closes.
        self.store.settle_now(reservations, usd);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move {
                if let Err(e) = store.flush_ledger().await {
                    tracing::warn!(error = %e, "cost ledger flush failed after a dropped call");
                }
                drop(open);
            });
        }
    }
}

/// What `attempts` cloud attempts that the provider accepted but that did not answer cost
/// against the budget: the call's estimate each. The provider bills an attempt it accepted (a
/// success status) for what it generated, whatever became of it — a stream cut short or timed
/// out before or after its first token, then retried or not, a hedge leg cancelled —, and bills
/// nothing for one it never accepted (no connection, an error status).
fn unanswered_cost(attempts: u32, estimate: Decimal) -> Cost {
    if attempts == 0 {
        return Cost::ZERO;
    }
    Cost {
        // An estimate so large that this overflows is past any budget anyway.
        usd: estimate
            .checked_mul(Decimal::from(attempts))
            .unwrap_or(Decimal::MAX),
        estimated: true,
    }
}

/// How a hedge leg ended.
enum LegEnd<'g> {
    Answered(&'g Generation),
    /// Stopped because the other leg answered; `first_tier`: it was the hedge's first tier
    /// (ran from the start) rather than the one started after the delay.
    Cancelled {
        first_tier: bool,
    },
    Failed(&'g Error),
}

/// `work`, ended at `deadline` (when there is one) with a `Total` timeout of the time it ran;
/// the request's `deadline_error` then reports it as the request's deadline.
async fn within<T>(deadline: Option<Instant>, work: impl Future<Output = Result<T>>) -> Result<T> {
    let Some(d) = deadline else {
        return work.await;
    };
    let started = Instant::now();
    tokio::time::timeout_at(d.into(), work)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                phase: crate::error::TimeoutPhase::Total,
                elapsed: started.elapsed(),
            })
        })
}

/// Collects one hedge leg's stream (nothing reaches the caller until a leg has won) into its
/// generation, noting its first token on `clock`, re-hydrating a redacted answer, and
/// recording the outcome on the leg's (current) span.
async fn collect_leg(
    mut stream: EventStream,
    clock: &LegClock,
    rehydrator: Option<crate::privacy::Rehydrator>,
    keep_raw: bool,
    trace_content: bool,
) -> Result<Generation> {
    let mut text = String::new();
    loop {
        let event = stream.next().await.ok_or_else(|| {
            Error::TruncatedStream("the backend's stream ended without a final event".into())
        })?;
        match event? {
            StreamEvent::Delta(d) => {
                if !d.is_empty() {
                    clock.note_token();
                }
                clock.received.add(&d);
                text.push_str(&d);
            }
            StreamEvent::Done(mut g) => {
                g.text = match rehydrator {
                    Some(mut r) => {
                        if keep_raw {
                            let _ = clock.raw_answer.set(text.clone());
                        }
                        let whole = r.push(&text) + &r.finish();
                        clock
                            .placeholders_in_links
                            .store(r.withheld(), std::sync::atomic::Ordering::Relaxed);
                        whole
                    }
                    None => text,
                };
                let done = (g, clock.first_token());
                let span = tracing::Span::current();
                record_usage(&span, Ok(&done), clock.started(), trace_content);
                return Ok(done.0);
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer of one successful tier.
struct Outcome {
    text: String,
    route: Route,
    usage: Usage,
    /// Why the answering model stopped.
    finish: FinishReason,
    /// When its first token arrived.
    first_token: Option<Instant>,
    /// A cloud answer's exchange as the provider saw it, when the teacher log keeps it.
    sent: Option<SentExchange>,
}

/// A cloud exchange as the provider saw it: the messages as sent (placeholders where the
/// request was redacted) and the answer as received, before re-hydration.
struct SentExchange {
    model: String,
    messages: Vec<crate::request::Message>,
    answer: String,
    redacted_spans: usize,
    pii_in_clear: bool,
}

/// Collects the answer of a cloud exchange the teacher log keeps ([`SentExchange`]).
struct Exchange {
    /// The cloud backend's name.
    model: String,
    messages: Vec<crate::request::Message>,
    /// The raw answer, collected only when it differs from the re-hydrated text (the request
    /// was redacted).
    raw: Option<String>,
    redacted_spans: usize,
    pii_in_clear: bool,
}

impl Exchange {
    /// What a cloud call sends, when the teacher log would keep its answer: it collects, and
    /// the request holds no personal data the scanner found unless that data was redacted
    /// or the policy keeps such requests too (`include_pii`).
    fn for_call(
        store: Option<&crate::wiring::Store>,
        model: &str,
        features: &Features,
        call: &BackendCall,
        rehydrator: Option<&crate::privacy::Rehydrator>,
    ) -> Option<Exchange> {
        let config = store?.teaching()?;
        // The spans found are what redaction replaces: none left in clear when redacted.
        let pii_in_clear = rehydrator.is_none() && !features.pii_spans.is_empty();
        let verdict =
            crate::distill::TeacherVerdict::of_call(&config, pii_in_clear, rehydrator.is_some());
        verdict.keeps().then(|| Exchange {
            model: model.to_string(),
            messages: call.messages.clone(),
            raw: rehydrator.map(|_| String::new()),
            redacted_spans: rehydrator.map_or(0, |r| r.len()),
            pii_in_clear,
        })
    }

    /// Notes a delta as received.
    fn push(&mut self, delta: &str) {
        if let Some(raw) = &mut self.raw {
            raw.push_str(delta);
        }
    }

    /// The exchange, given the answer's final (re-hydrated) text; `None` when the request was
    /// redacted but the answer as received is missing (the re-hydrated text would hold the
    /// data the provider never saw).
    fn sent(self, text: &str) -> Option<SentExchange> {
        let answer = match self.raw {
            Some(raw) => raw,
            None if self.redacted_spans == 0 => text.to_string(),
            None => return None,
        };
        Some(SentExchange {
            model: self.model,
            messages: self.messages,
            answer,
            redacted_spans: self.redacted_spans,
            pii_in_clear: self.pii_in_clear,
        })
    }
}

/// What a drained stream delivered before it ended, however it ended.
#[derive(Debug, Default, Clone, Copy)]
struct Drained {
    /// Non-empty text deltas (about one per generated token).
    deltas: u64,
    /// When the first came.
    first: Option<Instant>,
}

/// One request's execution: runs the plan, keeps every attempt in order.
struct Execution<'a> {
    router: &'a Router,
    request: &'a Request,
    features: &'a Features,
    /// When the request started, and its deadline.
    started: Instant,
    deadline: Option<Instant>,
    sink: Option<&'a mpsc::UnboundedSender<String>>,
    /// Forward deltas as they come (single-tier plans); otherwise the final text is sent whole.
    forward: bool,
    /// True once a delta reached the caller: no fallback after that.
    streamed: bool,
    /// What the latest drained stream delivered, also when it failed.
    drained: Drained,
    attempts: Vec<Attempt>,
    /// Reasons found while executing (fallback, escalation, redaction), appended to the decision.
    reasons: Vec<Reason>,
    /// Where the cloud calls' costs go should the request be dropped.
    notes: SpendNotes,
}

impl Execution<'_> {
    /// Runs the plan: the answer, and every attempt made (also when none answered).
    async fn run(mut self, decision: &mut Decision) -> (Result<Outcome>, Vec<Attempt>) {
        let plan = decision.plan.clone();
        let clearance = decision.cloud_clearance().cloned();
        let result = match plan {
            Plan::Refuse { message } => Err(Error::Refused {
                rule: decision.rule.clone(),
                message,
            }),
            Plan::Local { pin } => self.local_first(pin, clearance.as_ref()).await,
            Plan::Cloud { pin, redact } => self.cloud_first(pin, redact, clearance.as_ref()).await,
            Plan::Cascade {
                min_confidence,
                statistic,
                redact,
            } => {
                self.cascade(min_confidence, statistic, redact, clearance.as_ref())
                    .await
            }
            Plan::Hedge {
                first,
                after,
                redact,
            } => {
                // decide() resolves "p95" to a fixed delay; a hand-built plan that did not is
                // hedged at once.
                let after = after.fixed().unwrap_or(Duration::ZERO);
                self.hedge(first, after, redact, clearance.as_ref()).await
            }
        };
        decision.reasons.append(&mut self.reasons);
        let outcome = result.map_err(|e| self.deadline_error(e));
        if let (Ok(outcome), false, Some(sink)) = (&outcome, self.forward, self.sink) {
            let _ = sink.send(outcome.text.clone());
        }
        (outcome, self.attempts)
    }

    /// The request's deadline has passed: no tier can answer in time, so a failure is final
    /// (falling back would only fail again, and hide the timeout behind "all failed").
    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// A timeout once the request's deadline has passed is the deadline's, timed from the
    /// request's start (a tier times only its own part: a cloud call's total phase, a local
    /// stream cut short).
    fn deadline_error(&self, error: Error) -> Error {
        if error.is_timeout() && self.out_of_time() {
            Error::Timeout {
                phase: crate::error::TimeoutPhase::Deadline,
                elapsed: self.started.elapsed(),
            }
        } else {
            error
        }
    }

    /// Local; on failure, the cloud if the decision allows it (unpinned), nothing was
    /// streamed yet and there is time left. A fallback with PII found is always redacted.
    async fn local_first(
        &mut self,
        pin: bool,
        clearance: Option<&CloudClearance>,
    ) -> Result<Outcome> {
        let error = match self.run_local().await {
            Ok((outcome, _)) => return Ok(outcome),
            Err(e) => e,
        };
        match clearance {
            Some(c)
                if !pin && !self.streamed && !self.out_of_time() && self.cloud_tier().is_ok() =>
            {
                self.reasons.push(Reason::Fallback {
                    from: "local".into(),
                    error: error.to_string(),
                });
                self.run_cloud(c, true)
                    .await
                    .map_err(|cloud_error| self.all_failed(error, cloud_error))
            }
            _ => Err(error),
        }
    }

    /// Cloud; on a cloud failure, the local tier unless pinned, already streaming or out of
    /// time.
    async fn cloud_first(
        &mut self,
        pin: bool,
        redact: bool,
        clearance: Option<&CloudClearance>,
    ) -> Result<Outcome> {
        let Some(c) = clearance else {
            return Err(Error::PrivacyGuard);
        };
        let error = match self.run_cloud(c, redact).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) => e,
        };
        let budget_refuses = matches!(error, Error::BudgetExhausted(_))
            && self.router.inner.policy.budget.on_exhausted == crate::policy::OnExhausted::Refuse;
        if pin
            || budget_refuses
            || self.streamed
            || self.out_of_time()
            || self.router.inner.local.is_none()
            || !error.is_cloud_failure()
        {
            return Err(error);
        }
        self.reasons.push(Reason::Fallback {
            from: "cloud".into(),
            error: error.to_string(),
        });
        match self.run_local().await {
            Ok((outcome, _)) => Ok(outcome),
            Err(local_error) => Err(self.all_failed(error, local_error)),
        }
    }

    /// Local first; escalate when the chosen confidence statistic is under the threshold.
    async fn cascade(
        &mut self,
        threshold: f32,
        statistic: crate::request::ConfidenceStat,
        redact: bool,
        clearance: Option<&CloudClearance>,
    ) -> Result<Outcome> {
        let Some(c) = clearance else {
            return Err(Error::PrivacyGuard);
        };
        let (local, generation) = match self.run_local().await {
            Ok(x) => x,
            Err(e) if self.out_of_time() => return Err(e),
            Err(e) => {
                self.reasons.push(Reason::Fallback {
                    from: "local".into(),
                    error: e.to_string(),
                });
                return self
                    .run_cloud(c, redact)
                    .await
                    .map_err(|ce| self.all_failed(e, ce));
            }
        };
        let confidence = generation
            .confidence
            .map(|x| x.get(statistic))
            .unwrap_or(f32::NEG_INFINITY);
        if confidence >= threshold {
            self.reasons.push(Reason::Confident {
                statistic,
                confidence,
                threshold,
            });
            return Ok(local);
        }
        self.reasons.push(Reason::Escalated {
            statistic,
            confidence,
            threshold,
        });
        match self.run_cloud(c, redact).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.reasons.push(Reason::Fallback {
                    from: "cloud".into(),
                    error: e.to_string(),
                });
                Ok(local)
            }
        }
    }

    /// Starts the `first` tier; if it has produced no token after `after`, starts the other
    /// too. The first good answer wins and the loser is dropped (its generation or HTTP stream
    /// stops, nothing keeps running). When a tier fails, the other one answers.
    async fn hedge(
        &mut self,
        first: HedgeFirst,
        after: Duration,
        redact: bool,
        clearance: Option<&CloudClearance>,
    ) -> Result<Outcome> {
        let Some(c) = clearance else {
            return Err(Error::PrivacyGuard);
        };
        // With one tier missing there is nothing to race: the other answers alone.
        let local = match self.local_tier() {
            Ok(l) => l.clone(),
            Err(e) => {
                self.reasons.push(Reason::Fallback {
                    from: "local".into(),
                    error: e.to_string(),
                });
                return self.run_cloud(c, redact).await;
            }
        };
        let cloud = match self.cloud_tier() {
            Ok(cl) => cl.clone(),
            Err(e) => {
                self.reasons.push(Reason::Fallback {
                    from: "cloud".into(),
                    error: e.to_string(),
                });
                return self.run_local().await.map(|(outcome, _)| outcome);
            }
        };
        let trace_content = self.router.inner.trace_content;
        let (local_call, _) = self.call(Route::Local, false);
        let (cloud_call, rehydrator) = self.call(Route::Cloud, redact || c.must_redact());
        let redacted_spans = rehydrator.as_ref().map(|r| r.len());
        let exchange = Exchange::for_call(
            self.router.inner.store.as_ref(),
            cloud.name(),
            self.features,
            &cloud_call,
            rehydrator.as_ref(),
        );
        let keep_raw = exchange.is_some();
        let provider = self.provider_name();
        let estimate = self.cloud_estimate(&cloud_call);
        let store = self.router.inner.store.clone();
        // Outside the legs, so that a leg dropped mid-stream (the loser) still reports them.
        let (local_clock, cloud_clock) = (LegClock::default(), LegClock::default());
        // The cloud leg's reservation: settled below when the hedge ends, or by the guard
        // when the request is dropped mid-hedge (at the prompt and what had arrived).
        let charge: std::sync::Mutex<Option<PendingCharge>> = std::sync::Mutex::new(None);
        let (cloud_section, input_tokens) = (
            self.router.inner.policy.cloud.clone(),
            u64::from(self.features.prompt_tokens),
        );

        // Each leg opens its span when it starts: a tier that never ran leaves no span. Each
        // ends at the request's deadline, so a leg that never answers cannot hold the other's
        // failure (or the request) past it.
        let deadline = self.deadline;
        let local_leg = {
            let clock = &local_clock;
            async move {
                let span = tier_span(
                    "local",
                    "onnxruntime",
                    local.name(),
                    &local_call,
                    trace_content,
                );
                let result = within(deadline, async move {
                    clock.start();
                    let stream = local.stream(local_call).await?;
                    let _ = clock.generating.set(Instant::now());
                    collect_leg(stream, clock, None, false, trace_content).await
                })
                .instrument(span.clone())
                .await;
                end_leg(clock, &span, result, trace_content)
            }
        };
        let cloud_leg = {
            let (clock, store, charge) = (&cloud_clock, store.clone(), &charge);
            let notes = self.notes.clone();
            async move {
                let span = tier_span("cloud", provider, cloud.name(), &cloud_call, trace_content);
                let result = within(deadline, async move {
                    clock.start();
                    // The budget is only touched when the cloud actually starts.
                    if let Some(s) = &store {
                        let pending = PendingCharge::reserve(
                            s,
                            estimate,
                            cloud_section,
                            input_tokens,
                            clock.received.clone(),
                            Arc::clone(&clock.report),
                            notes,
                        )
                        .await?;
                        *charge.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending);
                    }
                    clock.received.mark_sent();
                    let stream = cloud.stream(c, cloud_call, &clock.report).await?;
                    clock.accept();
                    collect_leg(stream, clock, rehydrator, keep_raw, trace_content).await
                })
                .instrument(span.clone())
                .await;
                end_leg(clock, &span, result, trace_content)
            }
        };
        let (local_leg, cloud_leg): (Leg<'_>, Leg<'_>) = (Box::pin(local_leg), Box::pin(cloud_leg));
        let (tiers, mut primary, mut secondary) = match first {
            HedgeFirst::Local => ([Route::Local, Route::Cloud], local_leg, cloud_leg),
            HedgeFirst::Cloud => ([Route::Cloud, Route::Local], cloud_leg, local_leg),
        };
        let clock = |route: Route| match route {
            Route::Cloud => &cloud_clock,
            _ => &local_clock,
        };

        // The first tier alone, until its first token, its end or the delay.
        let early = tokio::select! {
            r = &mut primary => Some(r),
            () = clock(tiers[0]).first_token_arrived() => Some(primary.as_mut().await),
            () = tokio::time::sleep(after) => None,
        };
        // `answered_by`'s result, and the error of the other tier if it failed first.
        let (answered_by, result, failed) = match early {
            Some(Ok(g)) => (tiers[0], Ok(g), None),
            Some(Err(e)) => (tiers[1], secondary.as_mut().await, Some(e)),
            None => tokio::select! {
                r = &mut primary => match r {
                    Ok(g) => (tiers[0], Ok(g), None),
                    Err(e) => (tiers[1], secondary.as_mut().await, Some(e)),
                },
                r = &mut secondary => match r {
                    Ok(g) => (tiers[1], Ok(g), None),
                    Err(e) => (tiers[0], primary.as_mut().await, Some(e)),
                },
            },
        };
        // The loser stops here: its generation ends, its HTTP stream is dropped.
        drop((primary, secondary));
        let other = if answered_by == tiers[0] {
            tiers[1]
        } else {
            tiers[0]
        };
        // A tier that failed, before the delay or after it, handed over to the other.
        if let Some(e) = &failed {
            self.reasons.push(Reason::Fallback {
                from: other.to_string(),
                error: e.to_string(),
            });
        }

        if let (Some(spans), true) = (redacted_spans, cloud_clock.started.get().is_some()) {
            self.reasons.push(Reason::Redacted { spans });
        }
        let mut cloud_cost = Decimal::ZERO;
        if let Some(e) = &failed {
            cloud_cost += self.hedge_leg(other, clock(other), LegEnd::Failed(e), estimate);
        }
        let outcome = match result {
            Ok(g) => {
                self.reasons.push(Reason::HedgeWinner {
                    winner: answered_by.to_string(),
                });
                let count = clock(answered_by)
                    .placeholders_in_links
                    .load(std::sync::atomic::Ordering::Relaxed);
                if count > 0 {
                    self.reasons.push(Reason::PlaceholdersLeftInLinks { count });
                }
                let end = LegEnd::Answered(&g);
                cloud_cost += self.hedge_leg(answered_by, clock(answered_by), end, estimate);
                if failed.is_none() && clock(other).started.get().is_some() {
                    let end = LegEnd::Cancelled {
                        first_tier: other == tiers[0],
                    };
                    cloud_cost += self.hedge_leg(other, clock(other), end, estimate);
                }
                let sent = match (answered_by, exchange) {
                    (Route::Cloud, Some(mut e)) => {
                        if e.raw.is_some() {
                            e.raw = cloud_clock.raw_answer.get().cloned();
                        }
                        e.sent(&g.text)
                    }
                    _ => None,
                };
                Ok(Outcome {
                    route: answered_by,
                    usage: g.usage,
                    finish: g.finish,
                    first_token: clock(answered_by).first_token(),
                    text: g.text,
                    sent,
                })
            }
            Err(e) => {
                cloud_cost += self.hedge_leg(
                    answered_by,
                    clock(answered_by),
                    LegEnd::Failed(&e),
                    estimate,
                );
                // Past the deadline, the deadline is the answer (the other leg's failure is
                // in the attempts and reasons), as on the other plans.
                Err(match failed {
                    Some(_) if e.is_timeout() && self.out_of_time() => self.deadline_error(e),
                    Some(first_error) => self.all_failed(first_error, e),
                    None => self.deadline_error(e),
                })
            }
        };
        let pending = charge.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pending) = pending {
            pending.settle(cloud_cost).await;
        }
        outcome
    }

    /// The cost of a cloud call if it used the whole prompt and `max_tokens`.
    fn cloud_estimate(&self, call: &BackendCall) -> Decimal {
        self.router
            .inner
            .policy
            .cloud
            .as_ref()
            .map(|c| c.call_estimate(self.features.prompt_tokens, call.params.max_tokens))
            .unwrap_or_default()
    }

    /// Records one hedge leg as an attempt and feeds the latency signals; returns what it
    /// costs against the budget. A cancelled cloud call keeps its estimated cost (it may have
    /// been billed), as the ledger does, and so does every attempt of a cloud leg that the
    /// provider accepted without it answering (see [`unanswered_cost`]). A cancelled leg, local
    /// or cloud, still feeds its tier's first-token p95 with its first token if one came -- or,
    /// for the first tier, with how long it ran without one (a lower bound) -- so that the slow
    /// starts that make hedges fire are not left out of the delay the next hedge waits for.
    fn hedge_leg(
        &mut self,
        route: Route,
        clock: &LegClock,
        end: LegEnd<'_>,
        estimate: Decimal,
    ) -> Decimal {
        let inner = &self.router.inner;
        let started = clock.started();
        let elapsed = clock.elapsed();
        let first_token = clock.first_token().map(|at| at.duration_since(started));
        let is_cloud = route == Route::Cloud;
        let backend = if is_cloud {
            inner.cloud.as_ref().map(|c| c.name().to_string())
        } else {
            inner.local.as_ref().map(|l| l.name().to_string())
        };
        let (usage, cost, confidence, error) = match end {
            LegEnd::Answered(g) => {
                let usd = match (&inner.policy.cloud, is_cloud) {
                    (Some(c), true) => c.cost(g.usage),
                    _ => Decimal::ZERO,
                };
                if is_cloud {
                    inner.stats.observe_cloud(elapsed, first_token);
                } else {
                    let from = clock.timed_from(false).unwrap_or(started);
                    inner.stats.observe_local(
                        clock.end().saturating_duration_since(from),
                        clock
                            .first_token()
                            .map(|at| at.saturating_duration_since(from)),
                        g.usage,
                        self.features.prompt_tokens,
                    );
                }
                let mut cost = Cost {
                    usd,
                    estimated: is_cloud && g.usage_estimated,
                };
                if is_cloud {
                    // The answer came from one accepted attempt; the others were cut short.
                    let retried = clock.accepted_attempts().saturating_sub(1);
                    cost += unanswered_cost(retried, estimate);
                }
                (g.usage, cost, g.confidence, None)
            }
            LegEnd::Cancelled { first_tier } => {
                // Its first token is a measurement either way. How long it ran without one is a
                // lower bound worth keeping only for the first tier, whose slow start made the
                // hedge fire; a second tier cancelled soon after it started would report only
                // that short wait and pull its own p95 down.
                // A local leg still loading the model says nothing of its first token.
                if let Some(from) = clock.timed_from(is_cloud) {
                    let first = clock
                        .first_token()
                        .map(|at| at.saturating_duration_since(from));
                    match (first, first_tier) {
                        (Some(t), _) => inner.stats.observe_cancelled_first_token(route, t),
                        (None, true) => inner
                            .stats
                            .observe_cancelled_first_token(route, from.elapsed()),
                        (None, false) => {}
                    }
                }
                // The attempt in flight may have been billed, accepted yet or not: one
                // estimate at least, one per accepted attempt when more were accepted. (An
                // accepted attempt that failed plus one in flight not accepted yet count once.)
                // A call never sent (cancelled while its reservation was written) cost nothing,
                // as its reservation is settled.
                let cost = if is_cloud && clock.received.was_sent() {
                    unanswered_cost(clock.accepted_attempts().max(1), estimate)
                } else {
                    Cost::ZERO
                };
                let why = "cancelled: the other tier answered first";
                (Usage::default(), cost, None, Some(why.to_string()))
            }
            LegEnd::Failed(e) => {
                let cost = if is_cloud {
                    unanswered_cost(clock.accepted_attempts(), estimate)
                } else {
                    Cost::ZERO
                };
                (Usage::default(), cost, None, Some(e.to_string()))
            }
        };
        let usd = cost.usd;
        self.attempts.push(Attempt {
            route,
            backend: backend.unwrap_or_default(),
            elapsed,
            first_token,
            usage,
            cost,
            confidence,
            error,
        });
        usd
    }

    fn all_failed(&self, first: Error, second: Error) -> Error {
        let mut names = self
            .attempts
            .iter()
            .map(|a| format!("{}:{}", a.route, a.backend));
        let a = names.next().unwrap_or_else(|| "first tier".into());
        let b = names.next().unwrap_or_else(|| "second tier".into());
        Error::AllFailed(vec![(a, first), (b, second)])
    }

    /// The call for `tier` (`Route::Local` or `Route::Cloud`): the request's messages (PII
    /// replaced with placeholders when `redact`) and parameters, with the tier's own output
    /// limit when the request sets none.
    fn call(&self, tier: Route, redact: bool) -> (BackendCall, Option<crate::privacy::Rehydrator>) {
        let max_tokens = match (tier, &self.router.inner.policy.cloud) {
            (Route::Cloud, Some(c)) => self.request.params.max_tokens.unwrap_or(c.max_tokens),
            _ => self.router.max_tokens(self.request),
        };
        let mut params = self.request.params.clone();
        params.max_tokens = Some(max_tokens);
        if tier == Route::Local {
            // The policy's `[local]` governs the local tier, built from it or supplied by the
            // app, as it does the output limit.
            params.repetition_penalty = params
                .repetition_penalty
                .or(Some(self.router.inner.policy.local.repetition_penalty));
        }
        let (messages, rehydrator) = if redact && !self.features.pii_spans.is_empty() {
            // The spans found by inspect: the request is not scanned twice.
            let (m, r) = crate::privacy::redact_messages_with_spans(
                &self.request.messages,
                &self.features.pii_spans,
            );
            (m, Some(r))
        } else {
            (self.request.messages.clone(), None)
        };
        (
            BackendCall {
                messages,
                params,
                deadline: self.deadline,
            },
            rehydrator,
        )
    }

    /// `gen_ai.provider.name` of the cloud tier.
    fn provider_name(&self) -> &'static str {
        self.router
            .inner
            .policy
            .cloud
            .as_ref()
            .map_or("custom", |c| match c.provider {
                crate::policy::ProviderKind::OpenAi => "openai",
                crate::policy::ProviderKind::Anthropic => "anthropic",
            })
    }

    fn local_tier(&self) -> Result<&LocalTier> {
        self.router.inner.local_tier()
    }

    fn cloud_tier(&self) -> Result<&CloudTier> {
        let cloud = self.router.inner.cloud.as_ref().ok_or_else(|| Error::TierUnavailable {
            tier: "cloud",
            why: "the policy has no [cloud] section (or the router was built without a cloud backend)".into(),
        })?;
        cloud
            .availability()
            .map_err(|why| Error::TierUnavailable { tier: "cloud", why })?;
        Ok(cloud)
    }

    /// Runs the local tier, forwarding deltas when streaming.
    async fn run_local(&mut self) -> Result<(Outcome, Generation)> {
        let started = Instant::now();
        let backend = self.local_tier()?.clone();
        let (call, _) = self.call(Route::Local, false);
        let trace_content = self.router.inner.trace_content;
        let span = tier_span("local", "onnxruntime", backend.name(), &call, trace_content);
        let deadline = self.deadline;
        let mut generating = None;
        let result = async {
            // The deadline covers getting the stream too: a first request loads the model.
            let stream = within(deadline, backend.stream(call)).await?;
            generating = Some(Instant::now());
            self.drain(stream, None, None, None).await
        }
        .instrument(span.clone())
        .await;
        record_usage(&span, result.as_ref(), started, trace_content);
        let attempt = |usage, first_token: Option<Instant>, confidence, error| Attempt {
            route: Route::Local,
            backend: backend.name().to_string(),
            elapsed: started.elapsed(),
            first_token: first_token.map(|at| at.duration_since(started)),
            usage,
            cost: Cost::ZERO,
            confidence,
            error,
        };
        match result {
            Ok((g, first_token)) => {
                self.attempts
                    .push(attempt(g.usage, first_token, g.confidence, None));
                // Timed from when generation started: a model load is not generating.
                let generating = generating.unwrap_or(started);
                self.router.inner.stats.observe_local(
                    generating.elapsed(),
                    first_token.map(|at| at.saturating_duration_since(generating)),
                    g.usage,
                    self.features.prompt_tokens,
                );
                Ok((
                    Outcome {
                        text: g.text.clone(),
                        route: Route::Local,
                        usage: g.usage,
                        finish: g.finish,
                        first_token,
                        sent: None,
                    },
                    g,
                ))
            }
            Err(e) => {
                // Cut short by the deadline while generating: the model was slower than the
                // estimate that let the request come here. What it did in that time feeds the
                // estimates, or the same estimate would send every such request here to time
                // out again.
                if let (Error::Timeout { .. }, Some(generating)) = (&e, generating) {
                    let drained = self.drained;
                    self.router.inner.stats.observe_local_cut_short(
                        generating.elapsed(),
                        drained
                            .first
                            .map(|at| at.saturating_duration_since(generating)),
                        drained.deltas,
                        self.features.prompt_tokens,
                    );
                }
                self.attempts
                    .push(attempt(Usage::default(), None, None, Some(e.to_string())));
                Err(e)
            }
        }
    }

    /// Runs the cloud tier with the decision's clearance; redacts and re-hydrates as required.
    async fn run_cloud(&mut self, clearance: &CloudClearance, redact: bool) -> Result<Outcome> {
        let started = Instant::now();
        let backend = self.cloud_tier()?.clone();
        let redact = redact || clearance.must_redact();
        let (call, rehydrator) = self.call(Route::Cloud, redact);
        if let Some(r) = &rehydrator {
            self.reasons.push(Reason::Redacted { spans: r.len() });
        }
        let store = self.router.inner.store.clone();
        let mut exchange = Exchange::for_call(
            store.as_ref(),
            backend.name(),
            self.features,
            &call,
            rehydrator.as_ref(),
        );
        let policy = &self.router.inner.policy;
        let estimate = self.cloud_estimate(&call);
        let report = Arc::new(CallReport::new());
        let charge = match &store {
            Some(s) => Some(
                PendingCharge::reserve(
                    s,
                    estimate,
                    policy.cloud.clone(),
                    u64::from(self.features.prompt_tokens),
                    Arc::default(),
                    Arc::clone(&report),
                    self.notes.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let received = charge.as_ref().map(|c| c.received.clone());
        let trace_content = self.router.inner.trace_content;
        let span = tier_span(
            "cloud",
            self.provider_name(),
            backend.name(),
            &call,
            trace_content,
        );
        let mut streaming = false;
        let deadline = self.deadline;
        let result = async {
            if let Some(r) = &received {
                r.mark_sent();
            }
            // The deadline covers getting the stream too (an app's backend may hang there).
            let stream = within(deadline, backend.stream(clearance, call, &report)).await?;
            streaming = true;
            self.drain(stream, rehydrator, received.as_deref(), exchange.as_mut())
                .await
        }
        .instrument(span.clone())
        .await;
        record_usage(&span, result.as_ref(), started, trace_content);
        let first_token = result.as_ref().ok().and_then(|(_, first)| *first);
        // Every attempt the provider accepted may be billed, the retried ones too; a stream
        // that started was accepted even if the backend does not report its attempts.
        let accepted = report.accepted_attempts().max(u32::from(streaming));
        let (usage, cost, error) = match &result {
            Ok((g, _)) => {
                let usd = policy
                    .cloud
                    .as_ref()
                    .map(|c| c.cost(g.usage))
                    .unwrap_or_default();
                let mut cost = Cost {
                    usd,
                    estimated: g.usage_estimated,
                };
                // The answer came from one accepted attempt; the others were cut short.
                cost += unanswered_cost(accepted.saturating_sub(1), estimate);
                (g.usage, cost, None)
            }
            Err(e) => (
                Usage::default(),
                unanswered_cost(accepted, estimate),
                Some(e.to_string()),
            ),
        };
        if let Some(charge) = charge {
            charge.settle(cost.usd).await;
        }
        self.attempts.push(Attempt {
            route: Route::Cloud,
            backend: backend.name().to_string(),
            elapsed: started.elapsed(),
            first_token: first_token.map(|at| at.duration_since(started)),
            usage,
            cost,
            confidence: None,
            error,
        });
        let (g, _) = result?;
        self.router.inner.stats.observe_cloud(
            started.elapsed(),
            first_token.map(|at| at.duration_since(started)),
        );
        Ok(Outcome {
            sent: exchange.and_then(|e| e.sent(&g.text)),
            text: g.text,
            route: Route::Cloud,
            usage: g.usage,
            finish: g.finish,
            first_token,
        })
    }

    /// Collects a stream into a generation, forwarding (re-hydrated) deltas to the caller.
    async fn drain(
        &mut self,
        mut stream: EventStream,
        mut rehydrator: Option<crate::privacy::Rehydrator>,
        received: Option<&PendingProgress>,
        mut exchange: Option<&mut Exchange>,
    ) -> Result<(Generation, Option<Instant>)> {
        let mut text = String::new();
        let mut first_token = None;
        let started = Instant::now();
        self.drained = Drained::default();
        loop {
            let next = match self.deadline {
                Some(d) => tokio::time::timeout_at(d.into(), stream.next())
                    .await
                    .map_err(|_| Error::Timeout {
                        phase: crate::error::TimeoutPhase::Total,
                        elapsed: started.elapsed(),
                    })?,
                None => stream.next().await,
            };
            match next {
                Some(Ok(StreamEvent::Delta(d))) => {
                    if !d.is_empty() {
                        first_token.get_or_insert_with(Instant::now);
                        self.drained = Drained {
                            deltas: self.drained.deltas + 1,
                            first: first_token,
                        };
                    }
                    if let Some(r) = received {
                        r.add(&d);
                    }
                    if let Some(e) = exchange.as_deref_mut() {
                        e.push(&d);
                    }
                    let d = match rehydrator.as_mut() {
                        Some(r) => r.push(&d),
                        None => d,
                    };
                    self.emit(&d);
                    text.push_str(&d);
                }
                Some(Ok(StreamEvent::Done(mut g))) => {
                    if let Some(r) = rehydrator.as_mut() {
                        let tail = r.finish();
                        self.emit(&tail);
                        text.push_str(&tail);
                        if r.withheld() > 0 {
                            self.reasons.push(Reason::PlaceholdersLeftInLinks {
                                count: r.withheld(),
                            });
                        }
                    }
                    g.text = text;
                    return Ok((g, first_token));
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::TruncatedStream(
                        "the backend's stream ended without a final event".into(),
                    ))
                }
            }
        }
    }

    fn emit(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let (Some(sink), true) = (self.sink, self.forward) {
            let _ = sink.send(delta.to_string());
            self.streamed = true;
        }
    }
}

//! Assembling tiers and stores from a compiled policy, so the router's request path reads top
//! to bottom.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rust_decimal::Decimal;

use crate::backend::{CloudTier, LocalTier};
use crate::cache::{
    CacheKey, CachedAnswer, Database, EncryptionKey, KeyContext, PrivacyClass, SledCache,
};
use crate::distill::{TeacherLog, TeacherSample};
use crate::error::Result;
use crate::inspect::Features;
use crate::ledger::{Reservation, SledLedger};
use crate::policy::CompiledPolicy;
use crate::request::Request;

/// The local tier named by `[local]`, with the identity its speed is remembered under: the
/// model and its installed build, threads and spinning (not the output limit or the repetition
/// penalty, which are in its revision but do not change its speed). The model is loaded on
/// first use (not at build time), so `explain`, cloud-only requests and routers on machines
/// without the model stay cheap; a missing model makes the tier report itself unavailable with
/// the set-up command.
#[cfg(feature = "onnx")]
pub(crate) fn local_from_policy(
    policy: &CompiledPolicy,
    home: &Path,
) -> Result<Option<(LocalTier, String)>> {
    use crate::backend::local::LocalBackend;

    let l = &policy.local;
    let mut builder = LocalBackend::builder()
        .home(home)
        .model(l.model.clone())
        .threads(l.threads as usize)
        .max_new_tokens(l.max_new_tokens)
        .repetition_penalty(l.repetition_penalty)
        .pool_size(l.sessions as usize)
        .intra_op_spinning(l.spinning);
    if let Some(n) = l.max_waiting {
        builder = builder.max_waiting(n as usize);
    }
    if let Some(dir) = &l.model_dir {
        builder = builder.model_dir(dir);
    }
    if let Some(rt) = &l.runtime_path {
        builder = builder.runtime_path(rt);
    }
    let model_dir = l
        .model_dir
        .clone()
        .unwrap_or_else(|| crate::home::model_dir(home, &l.model));
    let name = format!("local/{}", l.model);
    let lazy = lazy_local::LazyLocal::new(builder, name.clone(), model_dir);
    let speed_id = format!(
        "{name}@{}+t{}{}",
        lazy.build().unwrap_or("-"),
        l.threads,
        if l.spinning { "s" } else { "" }
    );
    Ok(Some((LocalTier::new(Arc::new(lazy)), speed_id)))
}

/// Without the `onnx` feature there is no built-in local model (give the builder a backend).
#[cfg(not(feature = "onnx"))]
pub(crate) fn local_from_policy(
    _policy: &CompiledPolicy,
    _home: &Path,
) -> Result<Option<(LocalTier, String)>> {
    Ok(None)
}

#[cfg(feature = "onnx")]
mod lazy_local {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use tokio::sync::OnceCell;

    use crate::backend::local::{LocalBackend, LocalBackendBuilder, Manifest, MANIFEST_FILE};
    use crate::backend::{Backend, BackendCall, EventStream, Generation};
    use crate::error::{Error, Result};

    /// After a failed load, how long calls are told at once that the model is unavailable
    /// (and the router routes around it) before a load is tried again.
    pub(crate) const RETRY_LOAD_AFTER: Duration = Duration::from_secs(10);

    /// Loads the ONNX model on first use; a failed load is tried again by a call
    /// [`RETRY_LOAD_AFTER`] later, not by every call meanwhile (each would wait for a whole
    /// load that fails the same way).
    pub(crate) struct LazyLocal {
        builder: LocalBackendBuilder,
        name: String,
        model_dir: PathBuf,
        /// Read from the manifest when the router is built (the model itself loads on first use).
        revision: Option<String>,
        /// The installed model's build, from the same manifest.
        build: Option<String>,
        /// Shared with the task that loads the model, which outlives a caller that stops
        /// waiting.
        loaded: Arc<OnceCell<LocalBackend>>,
        /// When the last load failed, and why.
        failed: Arc<Mutex<Option<(Instant, String)>>>,
    }

    /// Why the model is unavailable, when a load failed less than [`RETRY_LOAD_AFTER`] ago.
    fn recent_failure(failed: &Mutex<Option<(Instant, String)>>) -> Option<String> {
        let failed = failed.lock().unwrap_or_else(|p| p.into_inner());
        let (at, why) = failed.as_ref()?;
        let left = RETRY_LOAD_AFTER.checked_sub(at.elapsed())?;
        Some(format!(
            "the local model failed to load ({why}); it is tried again in {} s",
            left.as_secs().max(1)
        ))
    }

    impl LazyLocal {
        pub(crate) fn new(builder: LocalBackendBuilder, name: String, model_dir: PathBuf) -> Self {
            let manifest = Manifest::load(&model_dir, false).ok();
            let build = manifest
                .as_ref()
                .and_then(|m| m.installed_build(&model_dir));
            let revision = manifest.map(|_| builder.revision_for(build.as_deref()));
            LazyLocal {
                builder,
                name,
                revision,
                build,
                model_dir,
                loaded: Arc::new(OnceCell::new()),
                failed: Arc::new(Mutex::new(None)),
            }
        }

        /// The installed model's build (`None`: no readable manifest, or no build recorded).
        pub(crate) fn build(&self) -> Option<&str> {
            self.build.as_deref()
        }

        /// The loaded model, loading it first if needed. The load runs in a task of its own, so
        /// a request that stops waiting (its deadline passed, or it was dropped) does not waste
        /// it: the load finishes and the next request finds the model ready. Concurrent first
        /// requests share one load.
        async fn backend(&self) -> Result<&LocalBackend> {
            if let Some(backend) = self.loaded.get() {
                return Ok(backend);
            }
            let cell = Arc::clone(&self.loaded);
            let builder = self.builder.clone();
            let failed = Arc::clone(&self.failed);
            let load = tokio::spawn(async move {
                cell.get_or_try_init(|| async move {
                    // Checked here, where calls queued behind a failing load come one by one.
                    if let Some(why) = recent_failure(&failed) {
                        return Err(Error::TierUnavailable { tier: "local", why });
                    }
                    let loaded = tokio::task::spawn_blocking(move || builder.commit())
                        .await
                        .map_err(load_failed)
                        .and_then(|loaded| loaded);
                    if let Err(e) = &loaded {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), e.to_string()));
                    }
                    loaded
                })
                .await
                .map(|_| ())
            });
            load.await.map_err(load_failed)??;
            self.loaded.get().ok_or_else(|| {
                Error::Inference("the model load reported success but left no model".into())
            })
        }
    }

    /// A model-loading task that panicked or was cancelled.
    fn load_failed(e: tokio::task::JoinError) -> Error {
        Error::Inference(format!("model loading task failed: {e}"))
    }

    #[async_trait]
    impl Backend for LazyLocal {
        fn name(&self) -> &str {
            &self.name
        }

        fn revision(&self) -> Option<String> {
            self.revision.clone()
        }

        async fn stream(&self, call: BackendCall) -> Result<EventStream> {
            self.backend().await?.stream(call).await
        }

        async fn generate(&self, call: BackendCall) -> Result<Generation> {
            self.backend().await?.generate(call).await
        }

        fn availability(&self) -> std::result::Result<(), String> {
            if self.loaded.initialized() {
                return Ok(());
            }
            if let Some(why) = recent_failure(&self.failed) {
                return Err(why);
            }
            if self.model_dir.join(MANIFEST_FILE).is_file() {
                Ok(())
            } else {
                Err(format!(
                    "no local model at {}; run `{}` to install it",
                    self.model_dir.display(),
                    crate::home::setup_command_for(&self.model_dir)
                ))
            }
        }
    }
    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use super::*;

        /// A caller that stops waiting for the first load (its deadline passed) leaves the load
        /// running: the model ends up loaded without another call.
        #[tokio::test]
        async fn a_load_outlives_the_caller_that_started_it() {
            let dir = PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/local/tiny"
            ));
            let builder = LocalBackend::builder()
                .model_dir(&dir)
                .threads(1)
                .pool_size(1);
            let lazy = LazyLocal::new(builder, "local/tiny".into(), dir);
            // A zero timeout polls the load once (it starts) and then gives up on it.
            let gave_up = tokio::time::timeout(Duration::ZERO, lazy.backend()).await;
            assert!(gave_up.is_err(), "the load finished within its first poll");
            for _ in 0..300 {
                if lazy.loaded.initialized() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                lazy.loaded.initialized(),
                "the abandoned load never finished"
            );
            assert!(lazy.backend().await.is_ok());
        }

        /// A model that fails to load is not loaded again by every call: for
        /// `RETRY_LOAD_AFTER`, calls fail at once saying why, and the tier reports itself
        /// unavailable (so unpinned plans go to the cloud up front).
        #[tokio::test]
        async fn a_failed_load_is_not_tried_again_by_every_call() {
            let dir = tempfile::tempdir().unwrap();
            let tiny = PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/local/tiny"
            ));
            for f in ["tokenizer.json", "edgeroute-model.json"] {
                std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
            }
            let len = std::fs::metadata(tiny.join("model.onnx")).unwrap().len() as usize;
            std::fs::write(dir.path().join("model.onnx"), vec![0xAB; len]).unwrap();
            let builder = LocalBackend::builder().model_dir(dir.path()).threads(1);
            let lazy = LazyLocal::new(builder, "local/broken".into(), dir.path().into());
            assert!(
                lazy.availability().is_ok(),
                "installed, as far as anyone knows"
            );
            let call = || BackendCall {
                messages: vec![crate::request::Message::user("hey")],
                params: Default::default(),
                deadline: None,
            };
            let first = lazy.stream(call()).await.err().unwrap();
            assert!(matches!(first, Error::ModelUnavailable { .. }), "{first}");
            for _ in 0..3 {
                let again = lazy.stream(call()).await.err().unwrap();
                assert!(
                    matches!(&again, Error::TierUnavailable { tier: "local", why }
                        if why.contains("failed to load") && why.contains("model.onnx")),
                    "{again}"
                );
            }
            let why = lazy.availability().unwrap_err();
            assert!(why.contains("failed to load"), "{why}");
            // Once the wait is over, the next call loads again.
            let long_ago = Instant::now()
                .checked_sub(RETRY_LOAD_AFTER + Duration::from_secs(1))
                .unwrap();
            lazy.failed.lock().unwrap().as_mut().unwrap().0 = long_ago;
            assert!(lazy.availability().is_ok());
            let retried = lazy.stream(call()).await.err().unwrap();
            assert!(
                matches!(retried, Error::ModelUnavailable { .. }),
                "{retried}"
            );
        }
    }
}

/// The cloud tier named by `[cloud]`, with `url` (from `RouterBuilder::cloud_base_url`)
/// overriding its base URL. The API key is `key` (from the builder) or else comes from the
/// variable `[cloud].api_key_env` names; without one the tier reports itself unavailable and
/// cloud routes run locally.
#[cfg(feature = "cloud")]
pub(crate) fn cloud_from_policy(
    policy: &CompiledPolicy,
    url: Option<&str>,
    key: Option<&str>,
) -> Result<Option<CloudTier>> {
    use crate::backend::cloud::{
        ApiKey, BreakerConfig, CloudBackend, CloudConfig, MaxTokensField, Provider,
    };
    use crate::policy::ProviderKind;

    let Some(c) = &policy.cloud else {
        return Ok(None);
    };
    let provider = match c.provider {
        ProviderKind::OpenAi => Provider::OpenAi,
        ProviderKind::Anthropic => Provider::Anthropic,
    };
    let mut cfg = CloudConfig::new(provider, c.model.clone())
        .with_base_url(url.unwrap_or(&c.base_url))
        .with_api_key_env(c.api_key_env.clone());
    cfg.connect_timeout = c.connect_timeout;
    cfg.first_token_timeout = c.first_token_timeout;
    cfg.idle_timeout = c.idle_timeout;
    cfg.total_timeout = c.total_timeout;
    cfg.allow_insecure_http = c.allow_insecure_http;
    cfg.ca_file = c.ca_file.clone();
    if c.legacy_max_tokens {
        cfg.max_tokens_field = MaxTokensField::MaxTokens;
    }
    cfg.retry.max_retries = c.max_retries;
    cfg.default_max_tokens = c.max_tokens;
    cfg.breaker = BreakerConfig::from_policy(c);
    // A key from the builder replaces the environment's; an empty one means "no key" (an
    // app whose user signed out), never "use the environment's".
    match key.map(str::trim) {
        Some("") => cfg = cfg.without_api_key(),
        Some(key) => cfg = cfg.with_api_key(ApiKey::new(key)),
        None => {}
    }
    Ok(Some(CloudTier::new(Arc::new(CloudBackend::new(cfg)?))))
}

/// Without the `cloud` feature there is no HTTP client: cloud routes run locally.
#[cfg(not(feature = "cloud"))]
pub(crate) fn cloud_from_policy(
    _policy: &CompiledPolicy,
    _url: Option<&str>,
    _key: Option<&str>,
) -> Result<Option<CloudTier>> {
    Ok(None)
}

/// The answer cache and the cost ledger, in one sled database under `<home>/db`.
#[derive(Clone)]
pub(crate) struct Store {
    cache: Arc<SledCache>,
    ledger: Arc<SledLedger>,
    /// Identity of the models that may answer: part of every cache key.
    model_id: Arc<str>,
    budget_configured: bool,
    stats: crate::stats::PersistedStats,
    /// Whole cloud answers kept for distillation (`[distill] collect = true`).
    teacher: Option<Arc<TeacherLog>>,
    /// The database all of them live in.
    db: Database,
    /// Requests running and cloud-call reservations not settled yet (see [`crate::Router::settled`]).
    unsettled: Arc<UnsettledWork>,
}

/// A count of running requests and unsettled reservations, and a way to wait for none.
#[derive(Default)]
pub(crate) struct UnsettledWork {
    count: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

/// One running request or unsettled reservation, counted in [`crate::Router::settled`] until dropped.
pub(crate) struct Unsettled(Arc<UnsettledWork>);

impl UnsettledWork {
    /// Counts a reservation (or a running request) as open until the returned guard is
    /// dropped (once it is settled, or done).
    pub(crate) fn track(self: &Arc<Self>) -> Unsettled {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Unsettled(Arc::clone(self))
    }

    /// Completes once nothing is counted.
    pub(crate) async fn none_left(&self) {
        loop {
            let none_left = self.none_left.notified();
            tokio::pin!(none_left);
            none_left.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            none_left.await;
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store under `<home>/db` with the policy's settings.
    pub(crate) fn open(
        policy: &CompiledPolicy,
        home: &Path,
        key: Option<[u8; 32]>,
        model_id: String,
    ) -> Result<Self> {
        let db_dir = crate::home::db_dir(home);
        crate::cache::restrict_to_owner(&db_dir);
        let db = Database::open(&db_dir)?;
        let key_bytes = key;
        let key = match key {
            Some(k) => EncryptionKey::from_bytes(&k)?,
            None => EncryptionKey::load_or_create(&crate::home::cache_key_file(home))?,
        };
        let cache = SledCache::open(&db, key, policy.cache.clone())?;
        let ledger = SledLedger::open(&db, policy.budget.limits)?;
        match ledger.prune_at(SystemTime::now()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "old settled cost-ledger entries removed"),
            Err(e) => tracing::warn!(error = %e, "old cost-ledger entries not removed"),
        }
        let stats = crate::stats::PersistedStats::open(&db)?;
        let teacher = if policy.distill.collect {
            // An app that keeps its cache key off the disk (`RouterBuilder::cache_key`) gets a
            // teacher key derived from it, and no key file either.
            let key = match key_bytes {
                Some(k) => crate::distill::teacher_key_for(&k)?,
                None => EncryptionKey::load_or_create(&crate::home::teacher_key_file(home))?,
            };
            Some(Arc::new(TeacherLog::open(&db, key, policy.distill)?))
        } else {
            None
        };
        Ok(Store {
            db: db.clone(),
            teacher,
            cache: Arc::new(cache),
            ledger: Arc::new(ledger),
            model_id: model_id.into(),
            budget_configured: policy.budget.has_limits(),
            stats,
            unsettled: Arc::default(),
        })
    }

    /// Counts a reservation (or a running request) as open until the returned guard is
    /// dropped (once it is settled, or done).
    pub(crate) fn unsettled(&self) -> Unsettled {
        self.unsettled.track()
    }

    /// What [`Store::unsettled`] counts, shared with the router's count of running requests.
    pub(crate) fn work(&self) -> Arc<UnsettledWork> {
        Arc::clone(&self.unsettled)
    }

    /// Makes everything recorded so far durable: answer cache (and its counters), ledger,
    /// statistics and teacher log, which share one database.
    pub(crate) async fn flush(&self) -> Result<()> {
        // An fsync: off the runtime's worker threads when there is a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return self.cache.flush();
        }
        let (cache, db) = (Arc::clone(&self.cache), self.db.clone());
        // The flush holds the database open (the `Database`, not only sled's handle), so that
        // a router dropped meanwhile does not leave a handle another open would trip over.
        let flush = move || {
            let _open = db;
            cache.flush()
        };
        match tokio::task::spawn_blocking(flush).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // No blocking thread to be had (the runtime is shutting down): flush here.
            Err(_) => self.cache.flush(),
        }
    }

    /// The cache key of a request decided to `plan_class` ([`Plan::cache_class`]): its
    /// privacy class comes from the PII scan, and the plan is part of the models' identity, so
    /// an answer only ever answers requests decided the same way.
    ///
    /// [`Plan::cache_class`]: crate::decision::Plan::cache_class
    pub(crate) fn key_for(
        &self,
        policy: &CompiledPolicy,
        request: &Request,
        features: &Features,
        plan_class: &str,
    ) -> CacheKey {
        let model = format!("{};plan={plan_class}", self.model_id);
        CacheKey::new(
            request,
            &KeyContext {
                model: &model,
                policy_version: &policy.version,
                privacy: PrivacyClass::from_pii(!features.pii.is_empty()),
                normalize: policy.cache.normalize,
            },
        )
    }

    /// A cached answer for this key (the cache applies the mode and privacy-class rules).
    pub(crate) fn lookup(&self, key: &CacheKey) -> Option<CachedAnswer> {
        match self.cache.get(key) {
            Ok(hit) => hit,
            Err(e) => {
                tracing::warn!(error = %e, "answer cache lookup failed; treating as a miss");
                None
            }
        }
    }

    /// Stores an answer (the cache applies the mode and privacy-class rules). Failures are logged, never
    /// returned: the caller already has its answer.
    pub(crate) fn save(&self, key: &CacheKey, answer: &CachedAnswer) {
        if let Err(e) = self.cache.put(key, answer) {
            tracing::warn!(error = %e, "answer cache write failed");
        }
    }

    /// The teacher log's settings when it collects.
    pub(crate) fn teaching(&self) -> Option<crate::distill::DistillConfig> {
        self.teacher.as_ref().map(|t| t.config())
    }

    /// Keeps a cloud answer in the teacher log (when it collects); a failed write is logged,
    /// not the request's failure.
    pub(crate) fn teach(&self, sample: &TeacherSample) {
        if let Some(t) = &self.teacher {
            if let Err(e) = t.record(sample) {
                tracing::warn!(error = %e, "teacher log write failed");
            }
        }
    }

    /// Reserves the estimated cost of a cloud call, not yet durable: flush with
    /// [`Store::flush_ledger`] before making the call.
    pub(crate) fn reserve(&self, estimate: Decimal) -> Result<Reservation> {
        self.ledger.reserve_now(estimate)
    }

    /// Reserves `estimate` and makes it durable before returning (blocking: an fsync). For the
    /// rare retry of a cloud call, from the backend's retry loop.
    pub(crate) fn reserve_durably(&self, estimate: Decimal) -> Result<Reservation> {
        self.ledger.reserve_at(estimate, SystemTime::now())
    }

    /// Makes the ledger's reservations durable.
    pub(crate) async fn flush_ledger(&self) -> Result<()> {
        self.ledger.flush().await
    }

    /// Settles one call's reservations (its first attempt's, then one per retry) with the
    /// call's actual cost, and makes that durable. See [`Store::settle_now`].
    pub(crate) async fn settle(&self, reservations: Vec<Reservation>, actual: Decimal) {
        self.settle_now(reservations, actual);
        if let Err(e) = self.ledger.flush().await {
            tracing::warn!(error = %e, "cost ledger flush failed after a settlement");
        }
    }

    /// Settles one call's reservations at once, in memory (no runtime needed; durable with the
    /// ledger's next flush): the first takes the actual cost, the others nothing. A failure
    /// leaves that estimate counted as spent (the safe side) and is logged.
    pub(crate) fn settle_now(&self, reservations: Vec<Reservation>, actual: Decimal) {
        let mut cost = actual;
        for reservation in reservations {
            if let Err(e) = self.ledger.settle_now(reservation, cost) {
                tracing::warn!(error = %e, "cost ledger settlement failed; the estimate stays counted");
            }
            cost = Decimal::ZERO;
        }
    }

    /// The remaining budget (`None` without limits).
    pub(crate) fn budget_left(&self) -> Option<Decimal> {
        if !self.budget_configured {
            return None;
        }
        match self.ledger.status_at(SystemTime::now()) {
            Ok(s) => s.left,
            Err(e) => {
                tracing::warn!(error = %e, "cost ledger unreadable; treating the budget as exhausted");
                Some(Decimal::ZERO)
            }
        }
    }

    /// Statistics persisted for `edgeroute stats`.
    pub(crate) fn stats(&self) -> &crate::stats::PersistedStats {
        &self.stats
    }

    /// The database everything lives in.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }
}

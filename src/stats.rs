//! Router statistics: requests by route, cache hit rate, local share, escalations, spend,
//! savings against all-cloud, and latency per route.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;
use sled::transaction::ConflictableTransactionError;

use crate::backend::Tier;
use crate::latency_memory::{LatencyMemory, Remembered, REMEMBERED_SAMPLES};
use crate::policy::{CompiledPolicy, LatencySection};
use crate::request::{Response, Route, Usage};
use crate::signals::LatencyEstimates;

/// How many latency samples per route the percentiles cover.
const WINDOW: usize = 1024;
/// EWMA smoothing for per-token local latency.
const ALPHA: f64 = 0.2;
/// First-token samples a tier needs before its p95 is used (e.g. as a hedge delay).
pub const MIN_P95_SAMPLES: usize = 10;

/// Latency percentiles for one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples in the window.
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
}

/// A snapshot of [`crate::Router::stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouterStats {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests (errors returned to the caller).
    pub failures: u64,
    /// Answered locally.
    pub local: u64,
    /// Answered by the cloud.
    pub cloud: u64,
    /// Served from the cache.
    pub cache_hits: u64,
    /// Cascades that escalated to the cloud.
    pub escalations: u64,
    /// Cache hits / requests.
    pub cache_hit_rate: f64,
    /// (local + cache) / requests.
    pub local_share: f64,
    /// Escalations / requests.
    pub escalation_rate: f64,
    /// Cloud spend, USD.
    #[serde(with = "rust_decimal::serde::str")]
    pub cloud_spend_usd: Decimal,
    /// What the requests answered locally or from cache would have cost in the cloud, less
    /// what those requests spent on the cloud anyway (each at least 0), USD.
    #[serde(with = "rust_decimal::serde::str")]
    pub estimated_savings_usd: Decimal,
    /// Latency of local answers.
    pub local_latency: LatencySummary,
    /// Latency of cloud answers.
    pub cloud_latency: LatencySummary,
    /// Latency of cache answers.
    pub cache_latency: LatencySummary,
    /// Time to first token of local answers (from the request's start).
    pub local_first_token: LatencySummary,
    /// Time to first token of cloud answers (from the request's start).
    pub cloud_first_token: LatencySummary,
}

#[derive(Default)]
struct State {
    stats: RouterStats,
    local_ms: VecDeque<f64>,
    cloud_ms: VecDeque<f64>,
    cache_ms: VecDeque<f64>,
    local_first_ms: VecDeque<f64>,
    cloud_first_ms: VecDeque<f64>,
    local_ms_per_token: Option<f64>,
    cloud_ewma_ms: Option<f64>,
    /// Tokens the local tier adds to a prompt (its chat template, a system prompt): EWMA of
    /// the prompt tokens it reported less the router's estimate of the request's, at least 0.
    /// The local estimates scale with the prompt the model runs, not the request's alone.
    local_prompt_overhead: Option<f64>,
    /// Local answers the local averages were measured from (here and, remembered, earlier).
    local_observations: u64,
    /// Cloud answers the cloud averages were measured from (here and, remembered, earlier).
    cloud_observations: u64,
    /// Per-tier first-token observations (every attempt, whichever route answered).
    tier_first: TierFirstToken,
}

/// What the latency signals know about each tier's time to first token.
#[derive(Default)]
struct TierFirstToken {
    /// Local prefill: ms per input token, EWMA.
    local_ms_per_input_token: Option<f64>,
    local_window: P95Window,
    /// Cloud: peak-sensitive EWMA, ms.
    cloud_ewma_ms: Option<f64>,
    cloud_window: P95Window,
}

/// A window of samples whose p95 every request's signals read: worked out (a sort) once per
/// new sample, not once per read.
#[derive(Default)]
struct P95Window {
    samples: VecDeque<f64>,
    /// The p95 of `samples`, once worked out since the last sample.
    p95: Option<Option<u64>>,
}

impl P95Window {
    fn push(&mut self, v: f64) {
        push(&mut self.samples, v);
        self.p95 = None;
    }

    fn p95(&mut self) -> Option<u64> {
        *self.p95.get_or_insert_with(|| p95(&self.samples))
    }

    /// The latest samples, oldest first, as remembered ([`REMEMBERED_SAMPLES`] at most).
    fn latest(&self) -> Vec<f32> {
        let skip = self.samples.len().saturating_sub(REMEMBERED_SAMPLES);
        self.samples.iter().skip(skip).map(|&v| v as f32).collect()
    }

    /// Starts again from remembered samples (oldest first).
    fn restore(&mut self, samples: &[f32]) {
        self.samples.clear();
        self.p95 = None;
        for &v in samples {
            self.push(f64::from(v));
        }
    }
}

/// Exponentially weighted moving average.
fn ewma(prev: Option<f64>, v: f64) -> f64 {
    match prev {
        Some(prev) => prev + ALPHA * (v - prev),
        None => v,
    }
}

/// Peak-sensitive EWMA (as tower's `PeakEwma`): a slower sample replaces the estimate at once,
/// faster ones pull it down gradually.
fn peak_ewma(prev: Option<f64>, v: f64) -> f64 {
    match prev {
        Some(prev) if v > prev => v,
        _ => ewma(prev, v),
    }
}

/// The p95 of a window once it holds [`MIN_P95_SAMPLES`].
fn p95(window: &VecDeque<f64>) -> Option<u64> {
    (window.len() >= MIN_P95_SAMPLES).then(|| summary(window).p95_ms.ceil() as u64)
}

/// Collects statistics; shared by all clones of a router.
#[derive(Default)]
pub struct StatsRecorder {
    state: Mutex<State>,
    /// Where the latency averages are remembered for the next router on this home.
    memory: Option<LatencyMemory>,
}

fn push(window: &mut VecDeque<f64>, v: f64) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(v);
}

fn summary(window: &VecDeque<f64>) -> LatencySummary {
    if window.is_empty() {
        return LatencySummary::default();
    }
    let mut v: Vec<f64> = window.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least a `q` share of the samples at or below it.
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    LatencySummary {
        samples: v.len(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl StatsRecorder {
    /// A recorder whose latency models start from what `memory` remembers of this device, and
    /// remember every new observation there.
    pub(crate) fn remembering(memory: LatencyMemory) -> Self {
        let recorder = StatsRecorder::default();
        recorder.recall(&memory);
        StatsRecorder {
            memory: Some(memory),
            ..recorder
        }
    }

    /// Whether new observations are remembered for the next router on the home (and every
    /// write so far succeeded).
    pub(crate) fn remembers(&self) -> bool {
        self.memory.as_ref().is_some_and(LatencyMemory::intact)
    }

    /// Starts the latency models from what `memory` remembers (without writing there).
    pub(crate) fn recall(&self, memory: &LatencyMemory) {
        let local = memory.recall(Tier::Local);
        let cloud = memory.recall(Tier::Cloud);
        self.with(|s| {
            if let Some(r) = local {
                s.local_ms_per_token = r.total;
                s.local_prompt_overhead = r.prompt_overhead;
                s.tier_first.local_ms_per_input_token = r.first_token;
                s.tier_first.local_window.restore(&r.first_token_samples);
                s.local_observations = r.observations;
            }
            if let Some(r) = cloud {
                s.cloud_ewma_ms = r.total;
                s.tier_first.cloud_ewma_ms = r.first_token;
                s.tier_first.cloud_window.restore(&r.first_token_samples);
                s.cloud_observations = r.observations;
            }
        });
    }

    /// Remembers a tier's averages, `speed` (written outside the state's lock: decisions
    /// reading the estimates never wait for the disk).
    fn remember(&self, tier: Tier, speed: Option<Remembered>) {
        if let (Some(memory), Some(speed)) = (&self.memory, speed) {
            memory.remember(tier, &speed);
        }
    }

    /// A tier's averages as they are remembered; `None` (and no work) for a recorder that
    /// remembers nothing.
    fn speed(&self, s: &State, tier: Tier) -> Option<Remembered> {
        self.memory.as_ref()?;
        Some(match tier {
            Tier::Local => Remembered {
                total: s.local_ms_per_token,
                first_token: s.tier_first.local_ms_per_input_token,
                prompt_overhead: s.local_prompt_overhead,
                observations: s.local_observations,
                first_token_samples: s.tier_first.local_window.latest(),
            },
            Tier::Cloud => Remembered {
                total: s.cloud_ewma_ms,
                first_token: s.tier_first.cloud_ewma_ms,
                prompt_overhead: None,
                observations: s.cloud_observations,
                first_token_samples: s.tier_first.cloud_window.latest(),
            },
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Records a finished request.
    pub fn record(&self, event: &StatsEvent) {
        self.with(|s| {
            let st = &mut s.stats;
            st.requests += 1;
            match event.route {
                Route::Local => {
                    st.local += 1;
                    st.estimated_savings_usd += event.would_cost_usd;
                    push(&mut s.local_ms, event.latency_ms);
                    if let Some(first) = event.first_token_ms {
                        push(&mut s.local_first_ms, first);
                    }
                }
                Route::Cloud => {
                    st.cloud += 1;
                    push(&mut s.cloud_ms, event.latency_ms);
                    if let Some(first) = event.first_token_ms {
                        push(&mut s.cloud_first_ms, first);
                    }
                }
                Route::Cache => {
                    st.cache_hits += 1;
                    st.estimated_savings_usd += event.would_cost_usd;
                    push(&mut s.cache_ms, event.latency_ms);
                }
            }
            st.escalations += u64::from(event.escalated);
            st.cloud_spend_usd += event.spend_usd;
        });
    }

    /// Records a request that returned an error, and what its cloud attempts cost (an
    /// accepted attempt is charged even when the request fails).
    pub fn record_failure(&self, spend_usd: Decimal) {
        self.with(|s| {
            s.stats.failures += 1;
            s.stats.cloud_spend_usd += spend_usd;
        });
    }

    /// Counts what a cloud call cost whose request was dropped before it ended (it records
    /// nothing else): the spend agrees with the ledger's.
    pub fn record_spend(&self, spend_usd: Decimal) {
        self.with(|s| s.stats.cloud_spend_usd += spend_usd);
    }

    /// Feeds the local latency models: total (ms per token, EWMA), the tokens the model adds
    /// to a prompt (`usage`'s prompt tokens less `prompt_tokens`, the router's estimate of the
    /// request's; EWMA) and, when a token came, time to first token (prefill ms per prompt
    /// token, EWMA; p95 window).
    pub fn observe_local(
        &self,
        elapsed: Duration,
        first_token: Option<Duration>,
        usage: Usage,
        prompt_tokens: u32,
    ) {
        self.observe_local_speed(elapsed, first_token, usage, Some(prompt_tokens));
    }

    /// [`StatsRecorder::observe_local`]; the prompt overhead is learnt only with
    /// `prompt_tokens`.
    fn observe_local_speed(
        &self,
        elapsed: Duration,
        first_token: Option<Duration>,
        usage: Usage,
        prompt_tokens: Option<u32>,
    ) {
        let tokens = (usage.input_tokens / 8 + usage.output_tokens).max(1) as f64;
        let per_token = ms(elapsed) / tokens;
        let speed = self.with(|s| {
            s.local_ms_per_token = Some(ewma(s.local_ms_per_token, per_token));
            if let Some(prompt_tokens) = prompt_tokens {
                let overhead = usage.input_tokens.saturating_sub(u64::from(prompt_tokens));
                s.local_prompt_overhead = Some(ewma(s.local_prompt_overhead, overhead as f64));
            }
            s.local_observations = s.local_observations.saturating_add(1);
            if let Some(first) = first_token {
                let t = &mut s.tier_first;
                let per_input = ms(first) / usage.input_tokens.max(1) as f64;
                t.local_ms_per_input_token = Some(ewma(t.local_ms_per_input_token, per_input));
                t.local_window.push(ms(first));
            }
            self.speed(s, Tier::Local)
        });
        self.remember(Tier::Local, speed);
    }

    /// Feeds the local latency models from an answer the deadline cut short while it was
    /// being generated: `tokens` (text deltas, about one per token) came in `elapsed`, the
    /// first after `first_token`. That measures this device's speed as a whole answer does,
    /// its prompt taken as `prompt_tokens` plus the overhead measured so far (not learnt from
    /// here). Without this, an estimate too low for the device would keep sending requests
    /// with deadlines there to time out, learning nothing. With no token, nothing is learnt:
    /// the time may have gone to waiting for a session as much as to the prompt.
    pub fn observe_local_cut_short(
        &self,
        elapsed: Duration,
        first_token: Option<Duration>,
        tokens: u64,
        prompt_tokens: u32,
    ) {
        if tokens == 0 {
            return;
        }
        let overhead = self.with(|s| s.local_prompt_overhead.unwrap_or(0.0));
        let input = u64::from(prompt_tokens) + overhead.round() as u64;
        self.observe_local_speed(elapsed, first_token, Usage::new(input, tokens), None);
    }

    /// Feeds a tier's first-token p95 window from a call that was cancelled (it lost a hedge):
    /// `first_token` is when its first token came or, when none came and the call was the
    /// hedge's first tier, how long it ran without one -- a lower bound. Leaving out the calls
    /// that lose, which are the slow ones, would bias the p95 low, and the p95 is what
    /// `after_ms = "p95"` waits for. (The router does not report a second tier cancelled
    /// without a token: it only waited since the delay, which says little of its first token.) The averages (EWMAs) are left alone: a cancelled call has no usage and no
    /// end. `Route::Cache` has no first-token signal and is ignored.
    pub fn observe_cancelled_first_token(&self, route: Route, first_token: Duration) {
        self.with(|s| match route {
            Route::Local => s.tier_first.local_window.push(ms(first_token)),
            Route::Cloud => s.tier_first.cloud_window.push(ms(first_token)),
            Route::Cache => {}
        });
    }

    /// Feeds the cloud latency models, total and time to first token: peak-sensitive EWMAs (a
    /// slow call raises the estimate at once; fast calls lower it gradually) and a p95 window.
    pub fn observe_cloud(&self, elapsed: Duration, first_token: Option<Duration>) {
        let speed = self.with(|s| {
            s.cloud_ewma_ms = Some(peak_ewma(s.cloud_ewma_ms, ms(elapsed)));
            s.cloud_observations = s.cloud_observations.saturating_add(1);
            if let Some(first) = first_token {
                let t = &mut s.tier_first;
                t.cloud_ewma_ms = Some(peak_ewma(t.cloud_ewma_ms, ms(first)));
                t.cloud_window.push(ms(first));
            }
            self.speed(s, Tier::Cloud)
        });
        self.remember(Tier::Cloud, speed);
    }

    /// Every latency estimate for a request, as [`Signals`](crate::signals::Signals) carries
    /// them; before any observation (by this router, or remembered from an earlier one on the
    /// same home), the policy's `[latency]` model.
    ///
    /// - total, local: measured ms/token × (model prompt/8 + `max_tokens`);
    /// - total, cloud: peak-sensitive EWMA;
    /// - first token, local: measured prefill ms per prompt token × model prompt tokens;
    /// - first token, cloud: peak-sensitive EWMA;
    /// - first-token p95s: once [`MIN_P95_SAMPLES`] were observed.
    ///
    /// The model prompt is `prompt_tokens` (the router's estimate of the request's) plus the
    /// tokens the local model was measured to add (its chat template, a system prompt).
    pub fn latency_estimates(
        &self,
        latency: &LatencySection,
        prompt_tokens: u32,
        max_tokens: u32,
    ) -> LatencyEstimates {
        let ceil = |v: f64| v.ceil() as u64;
        self.with(|s| {
            let t = &mut s.tier_first;
            let model_prompt = f64::from(prompt_tokens) + s.local_prompt_overhead.unwrap_or(0.0);
            let local_tokens = model_prompt / 8.0 + f64::from(max_tokens);
            LatencyEstimates {
                local_ms: Some(s.local_ms_per_token.map_or_else(
                    || latency.local_estimate_ms(prompt_tokens, max_tokens),
                    |per| ceil(per * local_tokens),
                )),
                cloud_ms: Some(s.cloud_ewma_ms.map_or(latency.cloud_ms, ceil)),
                local_first_token_ms: Some(t.local_ms_per_input_token.map_or_else(
                    || latency.local_estimate_ms(prompt_tokens, 1),
                    |per| ceil(per * model_prompt.max(1.0)),
                )),
                local_first_token_p95_ms: t.local_window.p95(),
                cloud_first_token_ms: Some(t.cloud_ewma_ms.map_or(latency.cloud_ms, ceil)),
                cloud_first_token_p95_ms: t.cloud_window.p95(),
                local_observations: s.local_observations,
                cloud_observations: s.cloud_observations,
            }
        })
    }

    /// A consistent snapshot.
    pub fn snapshot(&self) -> RouterStats {
        self.with(|s| {
            let mut st = s.stats.clone();
            let n = st.requests.max(1) as f64;
            st.cache_hit_rate = st.cache_hits as f64 / n;
            st.local_share = (st.local + st.cache_hits) as f64 / n;
            st.escalation_rate = st.escalations as f64 / n;
            st.local_latency = summary(&s.local_ms);
            st.cloud_latency = summary(&s.cloud_ms);
            st.cache_latency = summary(&s.cache_ms);
            st.local_first_token = summary(&s.local_first_ms);
            st.cloud_first_token = summary(&s.cloud_first_ms);
            st
        })
    }
}

/// What one finished request contributes to the statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsEvent {
    /// What answered.
    pub route: Route,
    /// End-to-end latency, ms.
    pub latency_ms: f64,
    /// Time from the request's start to the first token of the answer, ms.
    pub first_token_ms: Option<f64>,
    /// What the request spent in the cloud.
    pub spend_usd: Decimal,
    /// For an answer from the device or the cache: what it would have cost from the cloud, less
    /// what the request spent there anyway (at least 0); counted as saved. 0 for a cloud answer.
    pub would_cost_usd: Decimal,
    /// Whether a cascade escalated.
    pub escalated: bool,
}

impl StatsEvent {
    /// The event of a response under a policy.
    pub fn of(response: &Response, policy: &CompiledPolicy, prompt_tokens: u32) -> Self {
        let usage = Usage::new(
            u64::from(prompt_tokens),
            u64::from(crate::inspect::estimate_tokens(&response.text)),
        );
        StatsEvent {
            route: response.route,
            latency_ms: ms(response.timings.total),
            first_token_ms: response.timings.first_token.map(ms),
            spend_usd: response.cost.usd,
            // Net of what the request did spend on the cloud (a hedge's cancelled cloud leg,
            // a cascade's failed escalation): a local answer that cost more saved nothing.
            would_cost_usd: match response.route {
                Route::Cloud => Decimal::ZERO,
                Route::Local | Route::Cache => policy
                    .cloud
                    .as_ref()
                    .map(|c| c.cost(usage))
                    .unwrap_or_default()
                    .saturating_sub(response.cost.usd)
                    .max(Decimal::ZERO),
            },
            escalated: response
                .decision
                .reasons
                .iter()
                .any(|r| matches!(r, crate::decision::Reason::Escalated { .. })),
        }
    }
}

/// A tier's speed as remembered on a home (see [`remembered_latency`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RememberedLatency {
    /// `local` or `cloud`.
    pub tier: &'static str,
    /// What the speed was measured for: the local model with its build, threads and spinning,
    /// or the cloud backend with its endpoint's digest.
    pub identity: String,
    /// Local: ms per token of whole answers.
    pub ms_per_token: Option<f64>,
    /// Local: prefill ms per prompt token.
    pub prefill_ms_per_token: Option<f64>,
    /// Local: tokens the model adds to a prompt (chat template, system prompt).
    pub prompt_overhead_tokens: Option<f64>,
    /// Cloud: ms per answer (peak-sensitive average).
    pub answer_ms: Option<f64>,
    /// Cloud: ms to the first token (peak-sensitive average).
    pub first_token_ms: Option<f64>,
    /// How many answers the figures were measured from.
    pub observations: u64,
    /// Seconds since the figures were last updated.
    pub age_secs: u64,
    /// Whether they are recent enough (updated less than a week ago, and not dated in the
    /// future) for a router with this identity to start from them.
    pub in_use: bool,
}

/// Every tier speed remembered on `db` (what routers on the home measured, and start from),
/// local ones first. Errors: [`crate::Error::Storage`] when the statistics cannot be read.
pub fn remembered_latency(db: &crate::cache::Database) -> crate::Result<Vec<RememberedLatency>> {
    let remembered = crate::latency_memory::remembered(db)?;
    Ok(remembered
        .into_iter()
        .map(|listed| {
            let crate::latency_memory::Listed {
                tier,
                identity,
                speed: r,
                age,
                usable,
            } = listed;
            let local = tier == Tier::Local;
            // The same averages mean different things per tier: each goes to its own field.
            let by_tier = |v: Option<f64>| if local { (v, None) } else { (None, v) };
            let (ms_per_token, answer_ms) = by_tier(r.total);
            let (prefill_ms_per_token, first_token_ms) = by_tier(r.first_token);
            RememberedLatency {
                tier: if local { "local" } else { "cloud" },
                identity,
                ms_per_token,
                prefill_ms_per_token,
                prompt_overhead_tokens: r.prompt_overhead,
                answer_ms,
                first_token_ms,
                observations: r.observations,
                age_secs: age.as_secs(),
                in_use: usable,
            }
        })
        .collect())
}

/// The sled tree the statistics, and the remembered latency estimates, live in.
pub(crate) fn stats_tree(db: &crate::cache::Database) -> crate::Result<sled::Tree> {
    db.sled()
        .open_tree("stats")
        .map_err(|e| crate::Error::Storage {
            path: db.path().to_path_buf(),
            message: format!("cannot open the stats tree: {e}"),
        })
}

/// Statistics persisted in the sled database, so `edgeroute stats` sees every process's
/// requests: counters, spend, savings and the last 1,024 latencies per route.
///
/// The counters, spend and savings live in one value (`totals`, replaced with compare-and-swap),
/// so a reader never sees a request counted under `requests` but not yet under its route, and a
/// request costs one counter write plus its latency samples.
#[derive(Clone)]
pub struct PersistedStats {
    tree: sled::Tree,
}

/// The key of the [`Totals`] value.
const TOTALS_KEY: &str = "totals";
/// Keys of earlier versions, one per counter (folded into [`TOTALS_KEY`] on open).
const LEGACY_COUNTERS: [&str; 6] = [
    "requests",
    "failures",
    "local",
    "cloud",
    "cache_hits",
    "escalations",
];
const LEGACY_DECIMALS: [&str; 2] = ["spend", "savings"];
const LEGACY_SEQUENCES: [&str; 3] = ["seq/local", "seq/cloud", "seq/cache"];

/// Every running total of [`PersistedStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    counters: [u64; 6],
    spend: Decimal,
    savings: Decimal,
}

impl Totals {
    const VERSION: u8 = 1;
    const LEN: usize = 1 + 6 * 8 + 2 * 16;
    const REQUESTS: usize = 0;
    const FAILURES: usize = 1;
    const ESCALATIONS: usize = 5;

    /// The counter a route's answers add to (also the index of its latency ring).
    fn route_counter(route: Route) -> usize {
        match route {
            Route::Local => 2,
            Route::Cloud => 3,
            Route::Cache => 4,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.push(Self::VERSION);
        for c in self.counters {
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&self.spend.serialize());
        out.extend_from_slice(&self.savings.serialize());
        out
    }

    /// `None` for a value this version cannot read.
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN || b[0] != Self::VERSION {
            return None;
        }
        let mut t = Totals::default();
        for (i, c) in t.counters.iter_mut().enumerate() {
            *c = u64::from_be_bytes(b[1 + i * 8..9 + i * 8].try_into().ok()?);
        }
        let dec = |at: usize| Some(Decimal::deserialize(b[at..at + 16].try_into().ok()?));
        t.spend = dec(49)?;
        t.savings = dec(65)?;
        Some(t)
    }
}

fn be_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

impl PersistedStats {
    /// Opens the `stats` tree (folding the per-counter keys of earlier versions into one value).
    pub fn open(db: &crate::cache::Database) -> crate::Result<Self> {
        let storage = |e: sled::Error| crate::Error::Storage {
            path: db.path().to_path_buf(),
            message: format!("cannot open the stats tree: {e}"),
        };
        let tree = stats_tree(db)?;
        let stats = PersistedStats { tree };
        stats.migrate().map_err(storage)?;
        Ok(stats)
    }

    /// Earlier versions kept one key per counter. Their values become one `totals` value, in a
    /// transaction so that a crash or a second process cannot count them twice or lose them.
    fn migrate(&self) -> std::result::Result<(), sled::Error> {
        let legacy: Vec<&str> = LEGACY_COUNTERS
            .iter()
            .chain(&LEGACY_DECIMALS)
            .chain(&LEGACY_SEQUENCES)
            .copied()
            .collect();
        if legacy
            .iter()
            .all(|k| !matches!(self.tree.contains_key(k), Ok(true)))
        {
            return Ok(());
        }
        self.tree
            .transaction(|tx| {
                let mut t = match tx.get(TOTALS_KEY)? {
                    // Totals in a format this version cannot read: leave every key alone.
                    Some(b) => match Totals::decode(&b) {
                        Some(t) => t,
                        None => return Err(ConflictableTransactionError::Abort(())),
                    },
                    None => Totals::default(),
                };
                for (i, k) in LEGACY_COUNTERS.iter().enumerate() {
                    if let Some(n) = tx.get(k)?.as_deref().and_then(be_u64) {
                        t.counters[i] += n;
                    }
                }
                let dec = |b: Option<sled::IVec>| {
                    b.and_then(|b| std::str::from_utf8(&b).ok()?.parse::<Decimal>().ok())
                        .unwrap_or_default()
                };
                t.spend += dec(tx.get("spend")?);
                t.savings += dec(tx.get("savings")?);
                for k in &legacy {
                    tx.remove(*k)?;
                }
                tx.insert(TOTALS_KEY, t.encode())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .or_else(|e| match e {
                sled::transaction::TransactionError::Storage(e) => Err(e),
                sled::transaction::TransactionError::Abort(()) => {
                    tracing::warn!(
                        "the persisted statistics were written in a format this version cannot \
                         read; not folding the earlier version's counters into them"
                    );
                    Ok(())
                }
            })
    }

    /// Applies `change` to the totals and returns the new value; `None` (and nothing written)
    /// when the stored totals are unreadable — e.g. written by a newer version sharing this
    /// home — so that they are never overwritten with counts that start again from zero.
    fn update(&self, change: impl Fn(&mut Totals)) -> Option<Totals> {
        let mut after = None;
        let mut unreadable = false;
        let _ = self.tree.update_and_fetch(TOTALS_KEY, |old| {
            after = None;
            unreadable = false;
            let mut t = match old {
                Some(b) => match Totals::decode(b) {
                    Some(t) => t,
                    None => {
                        unreadable = true;
                        return Some(b.to_vec());
                    }
                },
                None => Totals::default(),
            };
            change(&mut t);
            after = Some(t);
            Some(t.encode())
        });
        if unreadable {
            tracing::warn!(
                "the persisted statistics were written in a format this version cannot read; \
                 not recording this request there"
            );
        }
        after
    }

    /// Adds a finished request. Storage errors are ignored: statistics never fail a request.
    pub fn record(&self, e: &StatsEvent) {
        let route_counter = Totals::route_counter(e.route);
        let Some(totals) = self.update(|t| {
            t.counters[Totals::REQUESTS] += 1;
            t.counters[route_counter] += 1;
            if e.escalated {
                t.counters[Totals::ESCALATIONS] += 1;
            }
            t.spend += e.spend_usd;
            if e.route != Route::Cloud {
                t.savings += e.would_cost_usd;
            }
        }) else {
            return;
        };
        // The route's count so far places this request in the route's ring of samples (counted
        // from 1, as earlier versions did, so their samples keep their places).
        let slot = totals.counters[route_counter] % WINDOW as u64;
        let route = e.route.as_str();
        let _ = self.tree.insert(
            format!("lat/{route}/{slot:04}"),
            e.latency_ms.to_be_bytes().to_vec(),
        );
        // A cache hit has no first-token sample worth keeping (it is its whole latency). A
        // request without a first token clears its slot, so no sample a ring older stays.
        if e.route != Route::Cache {
            let key = format!("ttft/{route}/{slot:04}");
            let _ = match e.first_token_ms {
                Some(first) => self.tree.insert(key, first.to_be_bytes().to_vec()),
                None => self.tree.remove(key),
            };
        }
    }

    /// Adds a failed request and what its cloud attempts cost.
    pub fn record_failure(&self, spend_usd: Decimal) {
        self.update(|t| {
            t.counters[Totals::FAILURES] += 1;
            t.spend += spend_usd;
        });
    }

    /// See [`StatsRecorder::record_spend`].
    pub fn record_spend(&self, spend_usd: Decimal) {
        self.update(|t| t.spend += spend_usd);
    }

    /// Everything recorded so far.
    pub fn load(&self) -> RouterStats {
        let totals = self
            .tree
            .get(TOTALS_KEY)
            .ok()
            .flatten()
            .and_then(|b| Totals::decode(&b))
            .unwrap_or_default();
        let window = |prefix: &str| {
            let v: VecDeque<f64> = self
                .tree
                .scan_prefix(prefix)
                .filter_map(|kv| kv.ok())
                .filter_map(|(_, b)| be_u64(&b).map(f64::from_bits))
                .collect();
            summary(&v)
        };
        let [requests, failures, local, cloud, cache_hits, escalations] = totals.counters;
        let n = requests.max(1) as f64;
        RouterStats {
            requests,
            failures,
            local,
            cloud,
            cache_hits,
            escalations,
            cache_hit_rate: cache_hits as f64 / n,
            local_share: (local + cache_hits) as f64 / n,
            escalation_rate: escalations as f64 / n,
            cloud_spend_usd: totals.spend,
            estimated_savings_usd: totals.savings,
            local_latency: window("lat/local/"),
            cloud_latency: window("lat/cloud/"),
            cache_latency: window("lat/cache/"),
            local_first_token: window("ttft/local/"),
            cloud_first_token: window("ttft/cloud/"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The p95 a request's signals read is worked out again after each new sample.
    #[test]
    fn a_p95_window_reads_the_latest_samples() {
        let mut w = P95Window::default();
        for _ in 0..MIN_P95_SAMPLES - 1 {
            w.push(10.0);
        }
        assert_eq!(w.p95(), None, "too few samples");
        w.push(10.0);
        assert_eq!(w.p95(), Some(10));
        assert_eq!(w.p95(), Some(10));
        w.push(400.0);
        assert_eq!(w.p95(), Some(400));
    }

    fn model() -> LatencySection {
        LatencySection {
            local_prefill_ms_per_token: Decimal::new(2, 0),
            local_decode_ms_per_token: Decimal::new(10, 0),
            cloud_ms: 800,
        }
    }

    fn usage(input: u64) -> Usage {
        Usage::new(input, 5)
    }

    #[test]
    fn first_token_estimates_start_from_the_model_then_follow_observations() {
        let rec = StatsRecorder::default();
        let e = rec.latency_estimates(&model(), 100, 16);
        // 100 prompt tokens × 2 ms + one decoded token × 10 ms; cloud from the policy.
        assert_eq!(
            (e.local_first_token_ms, e.cloud_first_token_ms),
            (Some(210), Some(800))
        );
        assert_eq!(
            (e.local_first_token_p95_ms, e.cloud_first_token_p95_ms),
            (None, None)
        );

        // 50 ms for 100 input tokens: 0.5 ms per token, scaled by the prompt.
        let ms = Duration::from_millis;
        rec.observe_local(ms(900), Some(ms(50)), usage(100), 100);
        let first = |prompt| {
            rec.latency_estimates(&model(), prompt, 16)
                .local_first_token_ms
        };
        assert_eq!(first(200), Some(100));
        assert_eq!(first(20), Some(10));
        // An answer without a first token (empty reply) feeds the total model only.
        rec.observe_local(ms(900), None, usage(100), 100);
        assert_eq!(first(200), Some(100));

        // Cloud: peak-sensitive — a slow first token raises the estimate at once.
        rec.observe_cloud(ms(400), Some(ms(100)));
        assert_eq!(
            rec.latency_estimates(&model(), 1, 16).cloud_first_token_ms,
            Some(100)
        );
        rec.observe_cloud(ms(400), Some(ms(300)));
        assert_eq!(
            rec.latency_estimates(&model(), 1, 16).cloud_first_token_ms,
            Some(300)
        );
        rec.observe_cloud(ms(400), Some(ms(100)));
        assert_eq!(
            rec.latency_estimates(&model(), 1, 16).cloud_first_token_ms,
            Some(260)
        );
    }

    /// The local estimates scale with the prompt the model runs: the request's tokens plus
    /// what the model adds (chat template, system prompt), learnt from its reported counts.
    #[test]
    fn local_estimates_count_the_tokens_the_model_adds_to_a_prompt() {
        let rec = StatsRecorder::default();
        let ms = Duration::from_millis;
        // A 10-token request ran as 40 tokens; the first token took 40 ms: 1 ms per token.
        rec.observe_local(ms(1300), Some(ms(40)), Usage::new(40, 125), 10);
        let e = |prompt| rec.latency_estimates(&model(), prompt, 125);
        assert_eq!(e(10).local_first_token_ms, Some(40));
        assert_eq!(e(500).local_first_token_ms, Some(530));
        // 1300 ms for 40/8 + 125 tokens: 10 ms per token, with the same 30 added tokens.
        assert_eq!(e(10).local_ms, Some(1300));
        assert_eq!(e(810).local_ms, Some(2300));
        // A model that adds nothing (or counts fewer tokens than estimated) adds nothing.
        let plain = StatsRecorder::default();
        plain.observe_local(ms(1300), Some(ms(40)), Usage::new(40, 125), 60);
        assert_eq!(
            plain
                .latency_estimates(&model(), 40, 125)
                .local_first_token_ms,
            Some(40)
        );
    }

    /// An answer cut short by the deadline still measures the device, as a whole answer does;
    /// one with no token says nothing (the time may have gone to waiting for a session).
    #[test]
    fn answers_cut_short_by_the_deadline_feed_the_local_estimates() {
        let ms = Duration::from_millis;
        // 10 ms per token measured (130 ms for 40/8 + 8 tokens; the 10-token request ran as
        // 40), then an answer cut at 125 tokens after 1300 ms: 10 ms per token again.
        let rec = StatsRecorder::default();
        rec.observe_local(ms(130), Some(ms(40)), Usage::new(40, 8), 10);
        rec.observe_local_cut_short(ms(1300), Some(ms(40)), 125, 10);
        let e = rec.latency_estimates(&model(), 10, 125);
        assert_eq!(e.local_observations, 2);
        assert_eq!(e.local_ms, Some(1300));
        // Three times as slow: the estimate rises; the learnt overhead stays.
        let slow = StatsRecorder::default();
        slow.observe_local(ms(130), Some(ms(40)), Usage::new(40, 8), 10);
        slow.observe_local_cut_short(ms(3900), Some(ms(40)), 125, 10);
        let e = slow.latency_estimates(&model(), 10, 125);
        assert!(e.local_ms > Some(1300), "{e:?}");
        assert_eq!(slow.with(|s| s.local_prompt_overhead), Some(30.0));
        // Nothing measured yet: no overhead is made up (it stays unknown).
        let fresh = StatsRecorder::default();
        fresh.observe_local_cut_short(ms(1300), Some(ms(40)), 125, 10);
        assert_eq!(fresh.with(|s| s.local_prompt_overhead), None);
        assert_eq!(
            fresh
                .latency_estimates(&model(), 10, 125)
                .local_observations,
            1
        );
        // No token: nothing learnt.
        let before = rec.latency_estimates(&model(), 10, 125);
        rec.observe_local_cut_short(ms(9000), None, 0, 10);
        assert_eq!(rec.latency_estimates(&model(), 10, 125), before);
    }

    #[test]
    fn first_token_p95_needs_enough_samples() {
        let rec = StatsRecorder::default();
        let ms = Duration::from_millis;
        for i in 1..MIN_P95_SAMPLES as u64 {
            rec.observe_local(ms(1000), Some(ms(i * 10)), usage(10), 10);
        }
        let p95 = || {
            rec.latency_estimates(&model(), 10, 16)
                .local_first_token_p95_ms
        };
        assert_eq!(p95(), None);
        rec.observe_local(ms(1000), Some(ms(1000)), usage(10), 10);
        // Ten samples 10..90 and 1000: the p95 (nearest rank) is the slow one.
        assert_eq!(p95(), Some(1000));
    }

    /// Percentiles are nearest rank: the smallest sample with at least that share of the
    /// samples at or below it (of two, the p50 is the lower one).
    #[test]
    fn percentiles_are_nearest_rank() {
        let window = |xs: &[f64]| xs.iter().copied().collect::<VecDeque<f64>>();
        let s = summary(&window(&[300.0, 100.0]));
        assert_eq!((s.p50_ms, s.p95_ms), (100.0, 300.0));
        let s = summary(&window(&[7.0]));
        assert_eq!((s.samples, s.p50_ms, s.p95_ms), (1, 7.0, 7.0));
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = summary(&window(&twenty));
        assert_eq!((s.p50_ms, s.p95_ms), (10.0, 19.0));
        assert_eq!(summary(&window(&[])).samples, 0);
    }

    #[test]
    fn cancelled_calls_count_in_their_tiers_p95_but_not_the_averages() {
        let rec = StatsRecorder::default();
        let ms = Duration::from_millis;
        for _ in 1..MIN_P95_SAMPLES {
            rec.observe_local(ms(1000), Some(ms(50)), usage(10), 10);
            rec.observe_cloud(ms(900), Some(ms(80)));
        }
        let before = rec.latency_estimates(&model(), 10, 16);
        // The tenth local sample is a generation that lost a hedge after 700 ms without a token.
        rec.observe_cancelled_first_token(Route::Local, ms(700));
        let after = rec.latency_estimates(&model(), 10, 16);
        assert_eq!(after.local_first_token_p95_ms, Some(700));
        assert_eq!(after.cloud_first_token_p95_ms, None);
        assert_eq!(after.local_first_token_ms, before.local_first_token_ms);
        assert_eq!(after.local_ms, before.local_ms);
        // Likewise a cloud call that lost after 1.5 s; the cloud EWMAs stay where they were.
        rec.observe_cancelled_first_token(Route::Cloud, ms(1500));
        let after = rec.latency_estimates(&model(), 10, 16);
        assert_eq!(after.cloud_first_token_p95_ms, Some(1500));
        assert_eq!(after.cloud_first_token_ms, before.cloud_first_token_ms);
        assert_eq!(after.cloud_ms, before.cloud_ms);
        assert_eq!(after.local_first_token_p95_ms, Some(700));
        rec.observe_cancelled_first_token(Route::Cache, ms(9000));
        assert_eq!(rec.latency_estimates(&model(), 10, 16), after);
    }

    fn db() -> (tempfile::TempDir, crate::cache::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::cache::Database::open(dir.path()).unwrap();
        (dir, db)
    }

    /// (requests, failures, local, cloud, cache hits, escalations).
    fn counters(s: &RouterStats) -> (u64, u64, u64, u64, u64, u64) {
        (
            s.requests,
            s.failures,
            s.local,
            s.cloud,
            s.cache_hits,
            s.escalations,
        )
    }

    fn event(route: Route, latency_ms: f64, spend: &str, would_cost: &str) -> StatsEvent {
        StatsEvent {
            route,
            latency_ms,
            first_token_ms: (route != Route::Cache).then_some(latency_ms / 2.0),
            spend_usd: spend.parse().unwrap(),
            would_cost_usd: would_cost.parse().unwrap(),
            escalated: route == Route::Cloud,
        }
    }

    /// Restoring a window forgets the p95 worked out from the samples it had.
    #[test]
    fn a_restored_window_works_its_p95_out_again() {
        let mut window = P95Window::default();
        for v in 1..=20 {
            window.push(f64::from(v));
        }
        assert_eq!(window.p95(), Some(19));
        window.restore(&[]);
        assert_eq!(window.p95(), None);
        window.restore(&(1..=10).map(|v| v as f32 * 10.0).collect::<Vec<_>>());
        assert_eq!(window.p95(), Some(100));
    }

    /// The first-token p95 a hedge with `after_ms = "p95"` waits for is remembered too: a new
    /// recorder has it from its first decision.
    #[test]
    fn the_first_token_p95_is_remembered_too() {
        let (_dir, db) = db();
        let memory = || LatencyMemory::open(&db, Some("l"), Some("c")).unwrap();
        let ms = Duration::from_millis;
        let first = StatsRecorder::remembering(memory());
        for i in 1..=20u64 {
            first.observe_local(ms(500), Some(ms(i * 10)), usage(10), 10);
            first.observe_cloud(ms(900), Some(ms(100 + i)));
        }
        let e = first.latency_estimates(&model(), 10, 16);
        assert_eq!(
            (e.local_first_token_p95_ms, e.cloud_first_token_p95_ms),
            (Some(190), Some(119))
        );
        let next = StatsRecorder::remembering(memory());
        assert_eq!(next.latency_estimates(&model(), 10, 16), e);
    }

    /// `remembered_latency` lists each tier's remembered figures under their own names.
    #[test]
    fn remembered_latency_lists_each_tiers_figures() {
        let (_dir, db) = db();
        let memory = LatencyMemory::open(&db, Some("local@1+t2"), Some("cloud@e")).unwrap();
        let rec = StatsRecorder::remembering(memory);
        rec.observe_local(
            Duration::from_millis(1300),
            Some(Duration::from_millis(40)),
            Usage::new(40, 125),
            10,
        );
        rec.observe_cloud(Duration::from_millis(900), Some(Duration::from_millis(300)));
        let listed = remembered_latency(&db).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        let (local, cloud) = (&listed[0], &listed[1]);
        assert_eq!(
            (local.tier, local.identity.as_str()),
            ("local", "local@1+t2")
        );
        assert_eq!(
            (
                local.ms_per_token,
                local.prefill_ms_per_token,
                local.prompt_overhead_tokens
            ),
            (Some(10.0), Some(1.0), Some(30.0))
        );
        assert_eq!((local.answer_ms, local.first_token_ms), (None, None));
        assert_eq!((cloud.tier, cloud.identity.as_str()), ("cloud", "cloud@e"));
        assert_eq!(
            (cloud.answer_ms, cloud.first_token_ms),
            (Some(900.0), Some(300.0))
        );
        assert_eq!(
            (cloud.ms_per_token, cloud.prompt_overhead_tokens),
            (None, None)
        );
        for r in &listed {
            assert_eq!(r.observations, 1);
            assert!(r.in_use && r.age_secs < 60, "{r:?}");
        }
    }

    /// Both tiers' averages, and how many answers made them, are remembered at every
    /// observation and recalled by the next recorder on the same memory.
    #[test]
    fn latency_averages_are_remembered_for_the_next_recorder() {
        let (_dir, db) = db();
        let memory = || LatencyMemory::open(&db, Some("local@1"), Some("cloud@1")).unwrap();
        let estimates = |r: &StatsRecorder| r.latency_estimates(&model(), 40, 100);
        let first = StatsRecorder::remembering(memory());
        let modelled = estimates(&first);
        first.observe_local(
            Duration::from_millis(900),
            Some(Duration::from_millis(80)),
            usage(40),
            10,
        );
        first.observe_cloud(
            Duration::from_millis(1200),
            Some(Duration::from_millis(300)),
        );
        first.observe_cloud(Duration::from_millis(700), Some(Duration::from_millis(200)));
        let measured = estimates(&first);
        assert_eq!(
            (measured.local_observations, measured.cloud_observations),
            (1, 2)
        );
        for (m, p) in [
            (measured.local_ms, modelled.local_ms),
            (measured.local_first_token_ms, modelled.local_first_token_ms),
            (measured.cloud_ms, modelled.cloud_ms),
            (measured.cloud_first_token_ms, modelled.cloud_first_token_ms),
        ] {
            assert_ne!(m, p, "{measured:?}");
        }
        let next = StatsRecorder::remembering(memory());
        assert_eq!(estimates(&next), measured);
        // A recorder that only recalls writes nothing back.
        let reader = StatsRecorder::default();
        reader.recall(&memory());
        reader.observe_local(Duration::from_secs(9), None, usage(40), 40);
        assert_eq!(estimates(&StatsRecorder::remembering(memory())), measured);
    }

    /// A request without a first token clears its ring slot (no sample a ring older stays
    /// counted), and a cache hit keeps no first-token sample (nothing reads one).
    #[test]
    fn persisted_first_token_samples_stay_current() {
        let (_dir, db) = db();
        let stats = PersistedStats::open(&db).unwrap();
        for _ in 0..WINDOW {
            stats.record(&event(Route::Local, 100.0, "0", "0"));
        }
        let key = |k: &str| stats.tree.contains_key(k).unwrap();
        assert!(key("ttft/local/0001"));
        stats.record(&StatsEvent {
            first_token_ms: None,
            ..event(Route::Local, 100.0, "0", "0")
        });
        assert!(!key("ttft/local/0001"), "a sample a ring older stayed");
        stats.record(&StatsEvent {
            first_token_ms: Some(2.0),
            ..event(Route::Cache, 2.0, "0", "0")
        });
        assert!(!stats.tree.scan_prefix("ttft/cache/").any(|_| true));
        assert_eq!(stats.load().local_first_token.samples, WINDOW - 1);
    }

    #[test]
    fn persisted_totals_and_latencies_survive_reopening() {
        let (dir, db) = db();
        let stats = PersistedStats::open(&db).unwrap();
        stats.record(&event(Route::Local, 100.0, "0", "0.002"));
        stats.record(&event(Route::Local, 300.0, "0", "0.002"));
        stats.record(&event(Route::Cloud, 900.0, "0.004", "0.004"));
        stats.record(&event(Route::Cache, 2.0, "0", "0.001"));
        stats.record_failure(Decimal::ZERO);
        // One value holds the totals; each request adds only its latency samples.
        let keys: Vec<String> = stats
            .tree
            .iter()
            .keys()
            .map(|k| String::from_utf8(k.unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "lat/cache/0001",
                "lat/cloud/0001",
                "lat/local/0001",
                "lat/local/0002",
                "totals",
                "ttft/cloud/0001",
                "ttft/local/0001",
                "ttft/local/0002",
            ]
        );
        drop((stats, db));

        let db = crate::cache::Database::open(dir.path()).unwrap();
        let s = PersistedStats::open(&db).unwrap().load();
        assert_eq!(counters(&s), (4, 1, 2, 1, 1, 1));
        assert_eq!(s.cloud_spend_usd, "0.004".parse::<Decimal>().unwrap());
        assert_eq!(s.estimated_savings_usd, "0.005".parse::<Decimal>().unwrap());
        assert_eq!(s.local_latency.samples, 2);
        assert_eq!(s.local_latency.p95_ms, 300.0);
        assert_eq!(s.local_first_token.p95_ms, 150.0);
        assert_eq!(s.cloud_latency.p50_ms, 900.0);
        assert_eq!(s.cache_latency.samples, 1);
        assert_eq!(s.local_share, 0.75);
    }

    #[test]
    fn concurrent_readers_see_consistent_totals() {
        let (_dir, db) = db();
        let stats = PersistedStats::open(&db).unwrap();
        std::thread::scope(|scope| {
            for route in [Route::Local, Route::Cloud, Route::Cache] {
                let stats = stats.clone();
                scope.spawn(move || {
                    for _ in 0..150 {
                        stats.record(&event(route, 10.0, "0.001", "0.001"));
                    }
                });
            }
            let reader = stats.clone();
            scope.spawn(move || {
                for _ in 0..300 {
                    let s = reader.load();
                    assert_eq!(s.requests, s.local + s.cloud + s.cache_hits);
                    assert_eq!(s.escalations, s.cloud);
                    assert_eq!(s.cloud_spend_usd, Decimal::new(s.requests as i64, 3));
                }
            });
        });
        let s = stats.load();
        assert_eq!(
            (s.requests, s.local, s.cloud, s.cache_hits),
            (450, 150, 150, 150)
        );
        assert_eq!(s.local_latency.samples, 150);
    }

    #[test]
    fn counters_of_earlier_versions_are_folded_in_once() {
        let (dir, db) = db();
        // What version 0.x wrote: one key per counter, decimals as text, a sequence per route.
        let tree = db.sled().open_tree("stats").unwrap();
        for (k, n) in [
            ("requests", 5u64),
            ("failures", 2),
            ("local", 3),
            ("cloud", 1),
            ("cache_hits", 1),
            ("escalations", 1),
            ("seq/local", 3),
            ("seq/cloud", 1),
            ("seq/cache", 1),
        ] {
            tree.insert(k, n.to_be_bytes().to_vec()).unwrap();
        }
        tree.insert("spend", b"0.0042".to_vec()).unwrap();
        tree.insert("savings", b"0.0100".to_vec()).unwrap();
        for slot in 1..=3 {
            tree.insert(format!("lat/local/{slot:04}"), 50f64.to_be_bytes().to_vec())
                .unwrap();
        }
        drop(tree);

        let stats = PersistedStats::open(&db).unwrap();
        stats.record(&event(Route::Local, 80.0, "0", "0.001"));
        drop((stats, db));
        // Opening again must not add the old counters a second time.
        let db = crate::cache::Database::open(dir.path()).unwrap();
        let stats = PersistedStats::open(&db).unwrap();
        let s = stats.load();
        assert_eq!(counters(&s), (6, 2, 4, 1, 1, 1));
        assert_eq!(s.cloud_spend_usd, "0.0042".parse::<Decimal>().unwrap());
        assert_eq!(
            s.estimated_savings_usd,
            "0.0110".parse::<Decimal>().unwrap()
        );
        // The new sample went to the next slot of the old ring, not over an old one.
        assert_eq!(s.local_latency.samples, 4);
        assert!(!stats.tree.contains_key("requests").unwrap());
        assert!(!stats.tree.contains_key("seq/local").unwrap());
    }

    #[test]
    fn totals_this_version_cannot_read_are_left_alone() {
        let (_dir, db) = db();
        let future = [2u8; 97];
        let tree = db.sled().open_tree("stats").unwrap();
        tree.insert(TOTALS_KEY, future.to_vec()).unwrap();
        // An earlier version's counter next to them is not folded in either.
        tree.insert("requests", 5u64.to_be_bytes().to_vec())
            .unwrap();
        let stats = PersistedStats::open(&db).unwrap();
        assert!(stats.tree.contains_key("requests").unwrap());
        stats.record(&event(Route::Local, 10.0, "0", "0.001"));
        stats.record_failure(Decimal::ZERO);
        assert_eq!(
            stats.tree.get(TOTALS_KEY).unwrap().unwrap(),
            future.to_vec()
        );
        assert_eq!(stats.load().requests, 0);
    }
}

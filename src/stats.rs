//! Router statistics: requests by route, cache hit rate, local share, escalations, spend,
//! savings against all-cloud, and latency per route.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::policy::{CompiledPolicy, LatencySection};
use crate::request::{Response, Route, Usage};

/// How many latency samples per route the percentiles cover.
const WINDOW: usize = 1024;
/// EWMA smoothing for per-token local latency.
const ALPHA: f64 = 0.2;

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
    /// What the requests answered locally or from cache would have cost in the cloud, USD.
    #[serde(with = "rust_decimal::serde::str")]
    pub estimated_savings_usd: Decimal,
    /// Latency of local answers.
    pub local_latency: LatencySummary,
    /// Latency of cloud answers.
    pub cloud_latency: LatencySummary,
    /// Latency of cache answers.
    pub cache_latency: LatencySummary,
}

#[derive(Default)]
struct State {
    stats: RouterStats,
    local_ms: VecDeque<f64>,
    cloud_ms: VecDeque<f64>,
    cache_ms: VecDeque<f64>,
    local_ms_per_token: Option<f64>,
    cloud_ewma_ms: Option<f64>,
}

/// Collects statistics; shared by all clones of a router.
#[derive(Default)]
pub struct StatsRecorder {
    state: Mutex<State>,
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
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
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
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Records a finished request.
    pub fn record(&self, response: &Response, policy: &CompiledPolicy) {
        let would_cost = policy
            .cloud
            .as_ref()
            .map(|c| c.cost(estimate_cloud_usage(response)))
            .unwrap_or_default();
        self.with(|s| {
            let st = &mut s.stats;
            st.requests += 1;
            let total = ms(response.timings.total);
            match response.route {
                Route::Local => {
                    st.local += 1;
                    st.estimated_savings_usd += would_cost;
                    push(&mut s.local_ms, total);
                }
                Route::Cloud => {
                    st.cloud += 1;
                    push(&mut s.cloud_ms, total);
                }
                Route::Cache => {
                    st.cache_hits += 1;
                    st.estimated_savings_usd += would_cost;
                    push(&mut s.cache_ms, total);
                }
            }
            st.cloud_spend_usd += response.cost.usd;
        });
    }

    /// Records a request that returned an error.
    pub fn record_failure(&self) {
        self.with(|s| s.stats.failures += 1);
    }

    /// Records a cascade escalation.
    pub fn record_escalation(&self) {
        self.with(|s| s.stats.escalations += 1);
    }

    /// Feeds the local latency model (ms per token, EWMA).
    pub fn observe_local(&self, elapsed: Duration, usage: Usage) {
        let tokens = (usage.input_tokens / 8 + usage.output_tokens).max(1) as f64;
        let per_token = ms(elapsed) / tokens;
        self.with(|s| {
            s.local_ms_per_token = Some(match s.local_ms_per_token {
                Some(prev) => prev + ALPHA * (per_token - prev),
                None => per_token,
            })
        });
    }

    /// Feeds the cloud latency model: peak-sensitive EWMA (a slow call raises the estimate at
    /// once; fast calls lower it gradually), as tower's PeakEwma does.
    pub fn observe_cloud(&self, elapsed: Duration) {
        let v = ms(elapsed);
        self.with(|s| {
            s.cloud_ewma_ms = Some(match s.cloud_ewma_ms {
                Some(prev) if v > prev => v,
                Some(prev) => prev + ALPHA * (v - prev),
                None => v,
            })
        });
    }

    /// The local latency estimate for a request: measured ms/token once observed, else the
    /// policy's `[latency]` model.
    pub fn local_estimate_ms(
        &self,
        latency: &LatencySection,
        prompt_tokens: u32,
        max_tokens: u32,
    ) -> u64 {
        match self.with(|s| s.local_ms_per_token) {
            Some(per_token) => {
                let tokens = f64::from(prompt_tokens) / 8.0 + f64::from(max_tokens);
                (per_token * tokens).ceil() as u64
            }
            None => latency.local_estimate_ms(prompt_tokens, max_tokens),
        }
    }

    /// The cloud latency estimate.
    pub fn cloud_estimate_ms(&self, latency: &LatencySection) -> u64 {
        self.with(|s| s.cloud_ewma_ms)
            .map(|v| v.ceil() as u64)
            .unwrap_or(latency.cloud_ms)
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
            st
        })
    }
}

/// The usage a cloud call would have had for this answer (prompt + answer tokens).
fn estimate_cloud_usage(response: &Response) -> Usage {
    if response.usage != Usage::default() {
        return response.usage;
    }
    Usage {
        input_tokens: 0,
        output_tokens: u64::from(crate::inspect::estimate_tokens(&response.text)),
    }
}

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
    pub fn record(&self, event: &StatsEvent) {
        self.with(|s| {
            let st = &mut s.stats;
            st.requests += 1;
            match event.route {
                Route::Local => {
                    st.local += 1;
                    st.estimated_savings_usd += event.would_cost_usd;
                    push(&mut s.local_ms, event.latency_ms);
                }
                Route::Cloud => {
                    st.cloud += 1;
                    push(&mut s.cloud_ms, event.latency_ms);
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

    /// Records a request that returned an error.
    pub fn record_failure(&self) {
        self.with(|s| s.stats.failures += 1);
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

/// What one finished request contributes to the statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsEvent {
    /// What answered.
    pub route: Route,
    /// End-to-end latency, ms.
    pub latency_ms: f64,
    /// What the request spent in the cloud.
    pub spend_usd: Decimal,
    /// What the answer would have cost from the cloud (counted as saved when it did not go there).
    pub would_cost_usd: Decimal,
    /// Whether a cascade escalated.
    pub escalated: bool,
}

impl StatsEvent {
    /// The event of a response under a policy.
    pub fn of(response: &Response, policy: &CompiledPolicy, prompt_tokens: u32) -> Self {
        let usage = Usage {
            input_tokens: u64::from(prompt_tokens),
            output_tokens: u64::from(crate::inspect::estimate_tokens(&response.text)),
        };
        StatsEvent {
            route: response.route,
            latency_ms: ms(response.timings.total),
            spend_usd: response.cost.usd,
            would_cost_usd: policy
                .cloud
                .as_ref()
                .map(|c| c.cost(usage))
                .unwrap_or_default(),
            escalated: response
                .decision
                .reasons
                .iter()
                .any(|r| matches!(r, crate::decision::Reason::Escalated { .. })),
        }
    }
}

/// Statistics persisted in the sled database, so `edgeroute stats` sees every process's
/// requests: counters, spend, savings and the last 1,024 latencies per route.
#[derive(Clone)]
pub struct PersistedStats {
    tree: sled::Tree,
}

const COUNTERS: [&str; 6] = [
    "requests",
    "failures",
    "local",
    "cloud",
    "cache_hits",
    "escalations",
];

impl PersistedStats {
    /// Opens the `stats` tree.
    pub fn open(db: &crate::cache::Database) -> crate::Result<Self> {
        let tree = db
            .sled()
            .open_tree("stats")
            .map_err(|e| crate::Error::Storage {
                path: db.path().to_path_buf(),
                message: format!("cannot open the stats tree: {e}"),
            })?;
        Ok(PersistedStats { tree })
    }

    fn add_u64(&self, key: &str, by: u64) {
        let _ = self.tree.update_and_fetch(key, |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + by).to_be_bytes().to_vec())
        });
    }

    fn add_decimal(&self, key: &str, by: Decimal) {
        let _ = self.tree.update_and_fetch(key, |old| {
            let n = old
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<Decimal>().ok())
                .unwrap_or_default();
            Some((n + by).to_string().into_bytes())
        });
    }

    /// Adds a finished request. Storage errors are ignored: statistics never fail a request.
    pub fn record(&self, e: &StatsEvent) {
        self.add_u64("requests", 1);
        self.add_u64(e.route.as_str_counter(), 1);
        if e.escalated {
            self.add_u64("escalations", 1);
        }
        self.add_decimal("spend", e.spend_usd);
        if e.route != Route::Cloud {
            self.add_decimal("savings", e.would_cost_usd);
        }
        let seq_key = format!("seq/{}", e.route.as_str());
        let seq = self
            .tree
            .update_and_fetch(&seq_key, |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let slot = format!("lat/{}/{:04}", e.route.as_str(), seq % WINDOW as u64);
        let _ = self.tree.insert(slot, e.latency_ms.to_be_bytes().to_vec());
    }

    /// Adds a failed request.
    pub fn record_failure(&self) {
        self.add_u64("failures", 1);
    }

    /// Everything recorded so far.
    pub fn load(&self) -> RouterStats {
        let get_u64 = |k: &str| {
            self.tree
                .get(k)
                .ok()
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        let get_dec = |k: &str| {
            self.tree
                .get(k)
                .ok()
                .flatten()
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<Decimal>().ok())
                .unwrap_or_default()
        };
        let window = |route: &str| {
            let v: VecDeque<f64> = self
                .tree
                .scan_prefix(format!("lat/{route}/"))
                .filter_map(|kv| kv.ok())
                .filter_map(|(_, b)| <[u8; 8]>::try_from(b.as_ref()).ok().map(f64::from_be_bytes))
                .collect();
            summary(&v)
        };
        let [requests, failures, local, cloud, cache_hits, escalations] = COUNTERS.map(get_u64);
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
            cloud_spend_usd: get_dec("spend"),
            estimated_savings_usd: get_dec("savings"),
            local_latency: window("local"),
            cloud_latency: window("cloud"),
            cache_latency: window("cache"),
        }
    }
}

impl Route {
    fn as_str_counter(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Cloud => "cloud",
            Route::Cache => "cache_hits",
        }
    }
}

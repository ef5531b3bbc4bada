//! The live state `decide()` reads: connectivity, cloud health, budget left, latency estimates.
//!
//! `Signals` is a plain value: the router snapshots it once per request, so the decision stays a
//! pure function and `explain` can be given any signals to play "what if".

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Network state as last observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The cloud was reachable (or nothing says otherwise).
    #[default]
    Online,
    /// The last connection attempt was refused or DNS failed.
    Offline,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Online => "online",
            Network::Offline => "offline",
        })
    }
}

/// Cloud health, from the circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudHealth {
    /// Breaker closed.
    #[default]
    Healthy,
    /// Breaker half-open (probing) or recent failures.
    Degraded,
    /// Breaker open.
    Down,
}

impl fmt::Display for CloudHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloudHealth::Healthy => "healthy",
            CloudHealth::Degraded => "degraded",
            CloudHealth::Down => "down",
        })
    }
}

/// Latency estimates per tier, in milliseconds (`None` until observed or configured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyEstimates {
    /// Expected local latency for this request (scaled by prompt/output length).
    pub local_ms: Option<u64>,
    /// Expected cloud latency.
    pub cloud_ms: Option<u64>,
    /// Expected local time to first token for this prompt (prefill rate × prompt length).
    pub local_first_token_ms: Option<u64>,
    /// p95 of recent local times to first token (once enough were observed).
    pub local_first_token_p95_ms: Option<u64>,
    /// Expected cloud time to first token (peak-sensitive moving average).
    pub cloud_first_token_ms: Option<u64>,
    /// p95 of recent cloud times to first token (once enough were observed).
    pub cloud_first_token_p95_ms: Option<u64>,
    /// How many local answers the local estimates were measured from, by this router and, on
    /// the same home, earlier ones (remembered in its database). 0: the estimates are the
    /// policy's `[latency]` model.
    pub local_observations: u64,
    /// How many cloud answers the cloud estimates were measured from (as
    /// [`LatencyEstimates::local_observations`]).
    pub cloud_observations: u64,
}

/// Live state at decision time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Connectivity.
    pub network: Network,
    /// Cloud breaker state.
    pub cloud_health: CloudHealth,
    /// Remaining cloud budget in USD (`None` = no budget configured).
    pub budget_left_usd: Option<Decimal>,
    /// What one cloud call for this request reserves against the budget: the whole prompt and
    /// the cloud's output limit at the policy's prices (`None` = no `[cloud]` prices to go by).
    /// A budget with less left than this is exhausted for the request.
    #[serde(default)]
    pub cloud_call_usd: Option<Decimal>,
    /// Whether a cloud tier is configured and has credentials.
    pub cloud_available: bool,
    /// Whether the local tier can run (configured, and its model installed: the backend's
    /// `availability()`). When it cannot, unpinned plans go to the cloud.
    pub local_available: bool,
    /// Latency estimates.
    pub latency: LatencyEstimates,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            network: Network::Online,
            cloud_health: CloudHealth::Healthy,
            budget_left_usd: None,
            cloud_call_usd: None,
            cloud_available: true,
            local_available: true,
            latency: LatencyEstimates::default(),
        }
    }
}

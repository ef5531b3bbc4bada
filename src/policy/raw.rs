//! Phase one: the policy file exactly as written, deserialised with `deny_unknown_fields`.
//! Nothing here is validated beyond types; `compile.rs` does the semantic checks.

use serde::Deserialize;

/// A number written as a TOML integer, float or string (`"0.15"`), kept for exact decimal parsing.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawNumber {
    /// `5`
    Int(i64),
    /// `0.15`
    Float(f64),
    /// `"0.15"`
    Text(String),
}

/// One value or a list of them (`cloud_health = "down"` or `["degraded", "down"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Display name.
    pub name: Option<String>,
    /// Version string; part of the cache key. Default: a hash of the file.
    pub version: Option<String>,
    /// Free-text description.
    pub description: Option<String>,
    /// `[local]`.
    pub local: Option<RawLocal>,
    /// `[cloud]`.
    pub cloud: Option<RawCloud>,
    /// `[budget]`.
    pub budget: Option<RawBudget>,
    /// `[privacy]`.
    pub privacy: Option<RawPrivacy>,
    /// `[cache]`.
    pub cache: Option<RawCache>,
    /// `[latency]`.
    pub latency: Option<RawLatency>,
    /// `[distill]`.
    pub distill: Option<RawDistill>,
    /// `[defaults]`.
    pub defaults: Option<RawRoute>,
    /// `[[rule]]`.
    #[serde(default)]
    pub rule: Vec<RawRule>,
    /// `[[test]]`.
    #[serde(default)]
    pub test: Vec<RawTest>,
}

/// `[local]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// Model name under `<home>/models/`.
    pub model: Option<String>,
    /// Explicit model directory (overrides `model`).
    pub model_dir: Option<String>,
    /// Explicit ONNX Runtime library path.
    pub runtime_path: Option<String>,
    /// Max new tokens.
    pub max_new_tokens: Option<u32>,
    /// Repetition penalty for requests that set none.
    pub repetition_penalty: Option<f64>,
    /// Intra-op threads.
    pub threads: Option<u32>,
    /// Sessions in the pool.
    pub sessions: Option<u32>,
    /// Let ONNX Runtime's threads busy-wait between operators.
    pub spinning: Option<bool>,
    /// Most requests waiting for a busy local model.
    pub max_waiting: Option<u32>,
}

/// `[cloud]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    /// `openai` or `anthropic`.
    pub provider: Option<String>,
    /// Model id sent to the provider.
    pub model: Option<String>,
    /// API base URL.
    pub base_url: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// USD per million input tokens.
    pub input_usd_per_mtok: Option<RawNumber>,
    /// USD per million output tokens.
    pub output_usd_per_mtok: Option<RawNumber>,
    /// USD per million input tokens read from the provider's prompt cache.
    pub cached_input_usd_per_mtok: Option<RawNumber>,
    /// Connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Time-to-first-token timeout.
    pub first_token_timeout_ms: Option<u64>,
    /// Longest silence mid-answer.
    pub idle_timeout_ms: Option<u64>,
    /// Total timeout.
    pub total_timeout_ms: Option<u64>,
    /// Max retries per call.
    pub max_retries: Option<u32>,
    /// Output limit of a cloud answer when the request sets none.
    pub max_tokens: Option<u32>,
    /// Allow `http://` to non-loopback hosts.
    pub allow_insecure_http: Option<bool>,
    /// A PEM file of certificate authorities to trust besides the system's and the built-in
    /// ones (a company proxy, a private server).
    pub ca_file: Option<String>,
    /// The request field for the output limit: `max_completion_tokens` or `max_tokens`.
    pub max_tokens_field: Option<String>,
    /// `[cloud.breaker]`.
    pub breaker: Option<RawBreaker>,
}

/// `[cloud.breaker]`: when the cloud's circuit breaker opens, and for how long.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: Option<u32>,
    /// Recent outcomes kept for the failure ratio.
    pub window: Option<u32>,
    /// Outcomes needed in the window before the ratio applies.
    pub min_calls: Option<u32>,
    /// Failure share of the window that opens the breaker.
    pub failure_ratio: Option<RawNumber>,
    /// How long the breaker stays open before probing.
    pub open_for_ms: Option<u64>,
    /// Probe calls allowed at once while half-open.
    pub half_open_probes: Option<u32>,
    /// How long a failure to connect marks the network offline.
    pub offline_for_ms: Option<u64>,
}

/// `[budget]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Daily limit in USD.
    pub daily_usd: Option<RawNumber>,
    /// Monthly limit in USD.
    pub monthly_usd: Option<RawNumber>,
    /// `local` or `refuse`.
    pub on_exhausted: Option<String>,
}

/// `[privacy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    /// Built-in kinds to detect (default: all).
    pub detect: Option<Vec<String>>,
    /// `[[privacy.pattern]]`.
    #[serde(default)]
    pub pattern: Vec<RawPattern>,
    /// `[[privacy.keywords]]`.
    #[serde(default)]
    pub keywords: Vec<RawKeywords>,
}

/// `[[privacy.pattern]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPattern {
    /// Kind name.
    pub kind: String,
    /// Regex.
    pub regex: String,
}

/// `[[privacy.keywords]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeywords {
    /// Kind name.
    pub kind: String,
    /// Words.
    pub words: Vec<String>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// `on | off | read_only | write_only`.
    pub mode: Option<String>,
    /// Time to live in seconds.
    pub ttl_secs: Option<u64>,
    /// Byte budget.
    pub max_bytes: Option<u64>,
    /// Cache answers to prompts containing PII.
    pub cache_pii: Option<bool>,
    /// Normalise whitespace/Unicode in the key.
    pub normalize: Option<bool>,
}

/// `[distill]`: the teacher log of cloud answers ([`crate::distill`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDistill {
    /// Keep whole cloud answers.
    pub collect: Option<bool>,
    /// Byte budget of the log.
    pub max_bytes: Option<u64>,
    /// Also keep requests sent with personal data in clear.
    pub include_pii: Option<bool>,
    /// Remove samples older than this many days (0: no age limit).
    pub max_age_days: Option<u32>,
}

/// `[latency]`: the local tier's cost model, used before measurements exist.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    /// Local prefill ms per prompt token.
    pub local_prefill_ms_per_token: Option<RawNumber>,
    /// Local decode ms per output token.
    pub local_decode_ms_per_token: Option<RawNumber>,
    /// Cloud round trip estimate in ms.
    pub cloud_ms: Option<u64>,
}

/// A hedge delay as written: milliseconds (`after_ms = 150`) or a statistic name
/// (`after_ms = "p95"`), checked when compiling.
#[derive(Debug, Clone, PartialEq)]
pub enum RawDelay {
    /// Fixed milliseconds.
    Ms(u64),
    /// A statistic name.
    Named(String),
}

impl<'de> Deserialize<'de> for RawDelay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawDelay;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("milliseconds (a non-negative integer) or \"p95\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDelay, E> {
                Ok(RawDelay::Ms(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDelay, E> {
                u64::try_from(v)
                    .map(RawDelay::Ms)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDelay, E> {
                Ok(RawDelay::Named(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A route with its options (`[defaults]` and the route part of a rule).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `local | cloud | cascade | hedge | refuse`.
    pub route: Option<String>,
    /// Redact PII before the cloud.
    pub redact: Option<bool>,
    /// Cascade threshold (log-probability, ≤ 0).
    pub min_confidence: Option<f64>,
    /// Cascade statistic: `first_sentence | mean | min | p10`.
    pub confidence_stat: Option<String>,
    /// Hedge delay: milliseconds, or `"p95"`.
    pub after_ms: Option<RawDelay>,
    /// The tier a hedge starts with: `local` (default) or `cloud`.
    pub first: Option<String>,
    /// Never fall back across tiers.
    pub pin: Option<bool>,
    /// Refusal message.
    pub message: Option<String>,
}

/// The keys of a `[[rule]]` ([`RawRule`]'s fields), for pointing out one written under
/// `[rule.when]` by mistake.
pub const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "when",
    "route",
    "redact",
    "min_confidence",
    "confidence_stat",
    "after_ms",
    "first",
    "pin",
    "message",
];

/// The keys of a `[rule.when]` table ([`RawWhen`]'s fields), for pointing out a condition
/// written on the rule itself by mistake.
pub const CONDITION_KEYS: &[&str] = &[
    "pii",
    "pii_any",
    "pii_all",
    "pii_none",
    "prompt_tokens_gt",
    "prompt_tokens_lt",
    "deadline_ms_lt",
    "local_too_slow",
    "budget_left_usd_lt",
    "network",
    "cloud_health",
    "tags_any",
    "task",
];

/// `[[rule]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Conditions (all must hold). Absent = always.
    pub when: Option<RawWhen>,
    /// `local | cloud | cascade | hedge | refuse`.
    pub route: Option<String>,
    /// Redact PII before the cloud.
    pub redact: Option<bool>,
    /// Cascade threshold.
    pub min_confidence: Option<f64>,
    /// Cascade statistic.
    pub confidence_stat: Option<String>,
    /// Hedge delay: milliseconds, or `"p95"`.
    pub after_ms: Option<RawDelay>,
    /// The tier a hedge starts with: `local` (default) or `cloud`.
    pub first: Option<String>,
    /// Never fall back across tiers.
    pub pin: Option<bool>,
    /// Refusal message.
    pub message: Option<String>,
}

impl RawRule {
    /// The route part of the rule.
    pub fn route_part(&self) -> RawRoute {
        RawRoute {
            route: self.route.clone(),
            redact: self.redact,
            min_confidence: self.min_confidence,
            confidence_stat: self.confidence_stat.clone(),
            after_ms: self.after_ms.clone(),
            first: self.first.clone(),
            pin: self.pin,
            message: self.message.clone(),
        }
    }
}

/// `[rule.when]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Any PII at all (`true`) or none (`false`).
    pub pii: Option<bool>,
    /// Any of these kinds present.
    pub pii_any: Option<Vec<String>>,
    /// All of these kinds present.
    pub pii_all: Option<Vec<String>>,
    /// None of these kinds present.
    pub pii_none: Option<Vec<String>>,
    /// Prompt token estimate greater than.
    pub prompt_tokens_gt: Option<u32>,
    /// Prompt token estimate less than.
    pub prompt_tokens_lt: Option<u32>,
    /// Request deadline shorter than.
    pub deadline_ms_lt: Option<u64>,
    /// The local tier's latency estimate exceeds the request's deadline.
    pub local_too_slow: Option<bool>,
    /// Remaining budget below.
    pub budget_left_usd_lt: Option<RawNumber>,
    /// `online` or `offline`.
    pub network: Option<String>,
    /// `healthy | degraded | down`, one or a list.
    pub cloud_health: Option<OneOrMany>,
    /// Any of these caller tags.
    pub tags_any: Option<Vec<String>>,
    /// Task name, one or a list.
    pub task: Option<OneOrMany>,
}

/// `[[test]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    /// Test name (default: `test[i]`).
    pub name: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// Caller tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Task name.
    pub task: Option<String>,
    /// Deadline.
    pub deadline_ms: Option<u64>,
    /// `online | offline`.
    pub network: Option<String>,
    /// `healthy | degraded | down`.
    pub cloud_health: Option<String>,
    /// Remaining budget.
    pub budget_left_usd: Option<RawNumber>,
    /// Whether the cloud tier is configured (default: true when `[cloud]` exists).
    pub cloud_available: Option<bool>,
    /// Whether the local model is installed (default: true).
    pub local_available: Option<bool>,
    /// Expected route: `local | cloud | cascade | hedge | refuse`.
    pub expect_route: String,
    /// Expected rule name (or `defaults`).
    pub expect_rule: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde's "unknown field" message lists for `T`.
    fn serde_keys<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let e = toml::from_str::<T>("no_such_key_here = 1").unwrap_err();
        let message = e.message().to_string();
        let listed = message.split("expected one of").nth(1).unwrap_or_default();
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn key_lists_match_the_structs() {
        assert_eq!(serde_keys::<RawRule>(), RULE_KEYS);
        assert_eq!(serde_keys::<RawWhen>(), CONDITION_KEYS);
    }
}

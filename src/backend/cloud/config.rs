//! Configuration of a [`CloudBackend`](super::CloudBackend): provider, endpoint, key, timeouts,
//! retries and circuit breaking. Every field documents its default.

use std::fmt;
use std::time::Duration;

/// Which wire protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// OpenAI Chat Completions (`POST {base_url}/chat/completions`). Also vLLM, llama.cpp
    /// server, Ollama and any other OpenAI-compatible server.
    OpenAi,
    /// Anthropic Messages (`POST {base_url}/messages`).
    Anthropic,
}

impl Provider {
    /// Lower-case name (`openai`, `anthropic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    /// The provider's public endpoint.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::OpenAi => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com/v1",
        }
    }

    /// The environment variable conventionally holding the key.
    pub fn default_api_key_env(self) -> &'static str {
        match self {
            Provider::OpenAi => "OPENAI_API_KEY",
            Provider::Anthropic => "ANTHROPIC_API_KEY",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which field carries the output-token limit in an OpenAI-compatible request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_completion_tokens`: current OpenAI API (required by its reasoning models).
    #[default]
    MaxCompletionTokens,
    /// `max_tokens`: OpenAI-compatible servers that predate `max_completion_tokens`.
    MaxTokens,
}

/// An API key. `Debug` and `Display` print `***`; read it with [`ApiKey::expose_secret`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// Reads the key from the environment variable `var`. `None` when it is unset, empty or
    /// not valid Unicode.
    pub fn from_env(var: &str) -> Option<Self> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(ApiKey(v.trim().to_owned())),
            _ => None,
        }
    }

    /// The secret itself. Only the HTTP layer should call this.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Retry policy: exponential backoff with full jitter, a cap on attempts and a retry budget.
///
/// Only retryable failures are retried (408, 409, 429, 5xx, timeouts, connection failures), not
/// 400/401/403/404 unless the provider's `x-should-retry: true` asks for it (its
/// `x-should-retry: false` likewise stops a retry), and never once a streamed token has reached
/// the caller.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt. Default: `2`.
    pub max_retries: u32,
    /// Backoff ceiling before the first retry; doubles on each retry. Default: 200 ms.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff. Default: 5 s.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the call fails with the answer's
    /// error ([`Error::RateLimited`](crate::Error::RateLimited) for a 429,
    /// [`Error::Server`](crate::Error::Server) for a 503). Default: 30 s.
    pub max_retry_after: Duration,
    /// Retry budget: each first attempt deposits this fraction of a retry; each retry
    /// withdraws one. `0.2` keeps retries under ~20% extra traffic. Default: `0.2`.
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet client can still retry.
    /// Default: `1.0`.
    pub budget_min_per_sec: f64,
    /// Most retries the budget can hold in reserve. Default: `10.0`.
    pub budget_max: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            budget_ratio: 0.2,
            budget_min_per_sec: 1.0,
            budget_max: 10.0,
        }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn disabled() -> Self {
        RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        }
    }
}

/// Circuit breaker policy. The breaker opens on `consecutive_failures` failures in a row, or
/// when at least `min_calls` of the last `window` calls were made and the share of failures
/// reaches `failure_ratio`. After `open_for` it lets `half_open_probes` calls through; a
/// successful probe closes it, a failed one opens it again.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default: `5`.
    pub consecutive_failures: u32,
    /// Size of the sliding window of recent outcomes. Default: `20`.
    pub window: usize,
    /// Outcomes needed in the window before the ratio applies. Default: `10`.
    pub min_calls: usize,
    /// Failure share in the window that opens the breaker. Default: `0.5`.
    pub failure_ratio: f64,
    /// How long the breaker stays open before probing. Default: 30 s.
    pub open_for: Duration,
    /// Concurrent probe calls allowed while half-open. Default: `1`.
    pub half_open_probes: u32,
    /// How long a failure to connect (refused, unreachable, DNS) marks the network offline.
    /// Meanwhile the policy sees `offline` and routes locally, so no request would ever
    /// prove the network back: once this is over the signal reads online again and the next
    /// call probes it (others still see offline while the probe is in flight). Any HTTP
    /// answer marks the network online at once. Default: 30 s (as `open_for`).
    pub offline_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            window: 20,
            min_calls: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
            offline_for: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// The breaker settings of a policy's `[cloud]` section, from its `[cloud.breaker]` table
    /// (validated when the policy compiled; absent keys have the defaults above).
    pub fn from_policy(cloud: &crate::policy::CloudSection) -> Self {
        use rust_decimal::prelude::ToPrimitive;

        let b = &cloud.breaker;
        BreakerConfig {
            consecutive_failures: b.consecutive_failures,
            window: b.window as usize,
            min_calls: b.min_calls as usize,
            failure_ratio: b.failure_ratio.to_f64().unwrap_or(0.5),
            open_for: b.open_for,
            half_open_probes: b.half_open_probes,
            offline_for: b.offline_for,
        }
    }
}

/// Everything a [`CloudBackend`](super::CloudBackend) needs.
///
/// Start from [`CloudConfig::openai`] or [`CloudConfig::anthropic`] and set fields.
/// `Debug` shows neither the key nor credentials in `base_url`.
#[derive(Clone)]
#[non_exhaustive]
pub struct CloudConfig {
    /// Wire protocol.
    pub provider: Provider,
    /// Model id sent to the provider (e.g. `gpt-4o-mini`, `claude-3-5-haiku-latest`).
    pub model: String,
    /// Endpoint root, without the trailing `/chat/completions` or `/messages`.
    /// Default: [`Provider::default_base_url`].
    pub base_url: String,
    /// The key. `None` makes the backend unavailable (no network I/O is attempted).
    /// Default: read from `api_key_env` by the constructors.
    pub api_key: Option<ApiKey>,
    /// Name of the environment variable the key comes from; used in messages.
    /// Default: [`Provider::default_api_key_env`].
    pub api_key_env: String,
    /// `anthropic-version` header (Anthropic only). Default: `2023-06-01`.
    pub anthropic_version: String,
    /// OpenAI only: the field name for the output-token limit.
    /// Default: [`MaxTokensField::MaxCompletionTokens`].
    pub max_tokens_field: MaxTokensField,
    /// `max_tokens` sent to Anthropic when the call does not set one (the field is required
    /// there). Default: `1024`.
    pub default_max_tokens: u32,
    /// TCP + TLS connection timeout. Default: 2 s (as a policy's `[cloud]`).
    pub connect_timeout: Duration,
    /// Per attempt of a streaming call: time until the response headers and the first token
    /// of the answer. Non-streaming calls (whose headers come only with the whole answer) are
    /// bounded by `total_timeout` instead. Default: 15 s (as a policy's `[cloud]`).
    pub first_token_timeout: Duration,
    /// Longest silence in a streamed answer once it has started: time without any bytes from
    /// the provider (its keep-alive comments count as bytes).
    /// Default: 30 s.
    pub idle_timeout: Duration,
    /// The whole call, retries and backoff included. The call's own deadline, when earlier,
    /// caps it (and every other timeout). It is also how long the provider may stay silent —
    /// attempts ending with no answer, cumulated since its last answer — before timeouts set
    /// by callers' deadlines count against it in the breaker (see the
    /// [backend docs](super#breaker-accounting)). Default: 60 s (as a policy's `[cloud]`).
    pub total_timeout: Duration,
    /// Accept plain `http://` to hosts other than loopback. Default: `false`.
    pub allow_insecure_http: bool,
    /// A PEM file of certificate authorities to trust besides the system's trust store and
    /// the built-in Mozilla roots: a company's TLS-inspecting proxy, a private server.
    /// Default: none.
    pub ca_file: Option<std::path::PathBuf>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Circuit breaker policy.
    pub breaker: BreakerConfig,
}

impl std::fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field, `base_url` without the user name and password it may carry.
        let CloudConfig {
            provider,
            model,
            base_url,
            api_key,
            api_key_env,
            anthropic_version,
            max_tokens_field,
            default_max_tokens,
            connect_timeout,
            first_token_timeout,
            idle_timeout,
            total_timeout,
            allow_insecure_http,
            ca_file,
            retry,
            breaker,
        } = self;
        f.debug_struct("CloudConfig")
            .field("provider", provider)
            .field("model", model)
            .field("base_url", &crate::policy::without_credentials(base_url))
            .field("api_key", api_key)
            .field("api_key_env", api_key_env)
            .field("anthropic_version", anthropic_version)
            .field("max_tokens_field", max_tokens_field)
            .field("default_max_tokens", default_max_tokens)
            .field("connect_timeout", connect_timeout)
            .field("first_token_timeout", first_token_timeout)
            .field("idle_timeout", idle_timeout)
            .field("total_timeout", total_timeout)
            .field("allow_insecure_http", allow_insecure_http)
            .field("ca_file", ca_file)
            .field("retry", retry)
            .field("breaker", breaker)
            .finish()
    }
}

impl CloudConfig {
    /// Defaults for `provider` and `model`; the key is read from the provider's conventional
    /// environment variable (`OPENAI_API_KEY` / `ANTHROPIC_API_KEY`).
    pub fn new(provider: Provider, model: impl Into<String>) -> Self {
        let api_key_env = provider.default_api_key_env().to_owned();
        CloudConfig {
            provider,
            model: model.into(),
            base_url: provider.default_base_url().to_owned(),
            api_key: ApiKey::from_env(&api_key_env),
            api_key_env,
            anthropic_version: "2023-06-01".to_owned(),
            max_tokens_field: MaxTokensField::default(),
            default_max_tokens: 1024,
            connect_timeout: Duration::from_secs(2),
            first_token_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            allow_insecure_http: false,
            ca_file: None,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }

    /// OpenAI Chat Completions with the defaults.
    pub fn openai(model: impl Into<String>) -> Self {
        CloudConfig::new(Provider::OpenAi, model)
    }

    /// Anthropic Messages with the defaults.
    pub fn anthropic(model: impl Into<String>) -> Self {
        CloudConfig::new(Provider::Anthropic, model)
    }

    /// Sets the endpoint root.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Sets the key directly.
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Reads the key from the environment variable `var` (and names `var` in messages).
    pub fn with_api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = var.into();
        self.api_key = ApiKey::from_env(&self.api_key_env);
        self
    }

    /// Removes the key (the backend becomes unavailable).
    pub fn without_api_key(mut self) -> Self {
        self.api_key = None;
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_credentials() {
        let cfg = CloudConfig::openai("m")
            .with_base_url("https://user:s3cret@gw.example/v1")
            .with_api_key(ApiKey::new("sk-secret-123"));
        let shown = format!("{cfg:?}");
        assert!(shown.contains("https://gw.example/v1"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("sk-secret"),
            "{shown}"
        );
        let backend = crate::backend::cloud::CloudBackend::new(cfg).unwrap();
        assert_eq!(backend.endpoint(), "https://gw.example/v1/chat/completions");
        let shown = format!("{backend:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn api_key_is_redacted() {
        let k = ApiKey::new("sk-secret-123");
        assert_eq!(format!("{k}"), "***");
        assert_eq!(format!("{k:?}"), "***");
        let cfg = CloudConfig::openai("m").with_api_key(k);
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        assert_eq!(
            cfg.api_key.as_ref().map(ApiKey::expose_secret),
            Some("sk-secret-123")
        );
    }

    /// The `[cloud]` section of a policy that sets only the model: every default.
    fn minimal_policy_cloud() -> crate::policy::CloudSection {
        crate::policy::compile_str("[cloud]\nmodel = \"m\"\n", std::path::Path::new("p.toml"))
            .unwrap()
            .cloud
            .unwrap()
    }

    #[test]
    fn a_policy_without_cloud_breaker_gets_the_default_breaker() {
        let cloud = minimal_policy_cloud();
        assert_eq!(BreakerConfig::from_policy(&cloud), BreakerConfig::default());
    }

    /// An app configuring a `CloudBackend` itself gets the timeouts, retries and output limit a
    /// policy's `[cloud]` section defaults to: one set of defaults, documented once.
    #[test]
    fn direct_configuration_defaults_match_the_policys() {
        let cloud = minimal_policy_cloud();
        let direct = CloudConfig::openai("m");
        assert_eq!(direct.connect_timeout, cloud.connect_timeout);
        assert_eq!(direct.first_token_timeout, cloud.first_token_timeout);
        assert_eq!(direct.idle_timeout, cloud.idle_timeout);
        assert_eq!(direct.total_timeout, cloud.total_timeout);
        assert_eq!(direct.retry.max_retries, cloud.max_retries);
        assert_eq!(direct.default_max_tokens, cloud.max_tokens);
    }

    #[test]
    fn defaults_per_provider() {
        let a = CloudConfig::anthropic("claude").without_api_key();
        assert_eq!(a.base_url, "https://api.anthropic.com/v1");
        assert_eq!(a.api_key_env, "ANTHROPIC_API_KEY");
        let o = CloudConfig::openai("gpt").without_api_key();
        assert_eq!(o.base_url, "https://api.openai.com/v1");
        assert!(o.api_key.is_none());
    }
}

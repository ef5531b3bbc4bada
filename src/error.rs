//! The crate's one error type. Every message says what went wrong *and* what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which limit ran out: a phase of a cloud call, or the request's own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the TCP/TLS connection.
    Connect,
    /// Waiting for the response headers or the first streamed token.
    FirstToken,
    /// The whole call, including the body or the rest of the stream.
    Total,
    /// The request's own deadline ([`Request::deadline`](crate::Request::deadline)) passed,
    /// whichever tier was answering.
    Deadline,
    /// A streamed answer stopped arriving: nothing came for longer than the idle limit after
    /// it had started.
    BetweenTokens,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstToken => "first token",
            TimeoutPhase::Total => "total",
            TimeoutPhase::Deadline => "request deadline",
            TimeoutPhase::BetweenTokens => "between tokens",
        })
    }
}

/// Everything that can go wrong in edgeroute.
///
/// The enum is `#[non_exhaustive]`: match the variants you care about and keep a `_` arm.
/// Helper predicates (`is_timeout`, `is_retryable`, ...) answer the common questions.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy file failed to load or validate. Each diagnostic carries `file:line:col`.
    #[error("{}", crate::policy::render_diagnostics(.0))]
    Policy(Vec<crate::policy::Diagnostic>),

    /// The router was configured inconsistently (builder misuse).
    #[error("configuration error: {0}")]
    Config(String),

    /// The request itself is unusable (no messages, empty prompt, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("ONNX Runtime unavailable: {reason} (looked at {path}). Fix: {fix}")]
    RuntimeUnavailable {
        /// Where we looked.
        path: String,
        /// Why it failed.
        reason: String,
        /// What to do.
        fix: String,
    },

    /// The local model is missing or unusable.
    #[error("local model unavailable at {}: {reason}. Fix: {fix}", .path.display())]
    ModelUnavailable {
        /// The model directory or file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
        /// What to do.
        fix: String,
    },

    /// Local inference failed while running.
    #[error("local inference failed: {0}")]
    Inference(String),

    /// The policy sent the request to a tier that is not configured.
    #[error("{tier} tier is not available: {why}")]
    TierUnavailable {
        /// `local` or `cloud`.
        tier: &'static str,
        /// Why (not configured, no API key, ...), with the fix.
        why: String,
    },

    /// The policy refused this request.
    #[error("refused by policy rule `{rule}`: {message}")]
    Refused {
        /// The rule that refused.
        rule: String,
        /// The policy's message for the caller.
        message: String,
    },

    /// The cloud provider rejected the credentials (401/403).
    #[error("cloud authentication failed (HTTP {status}: {message}); check the API key: the one given to RouterBuilder::cloud_api_key, else the environment variable named by the policy's [cloud].api_key_env")]
    Auth {
        /// HTTP status.
        status: u16,
        /// The provider's own explanation (or its error type).
        message: String,
    },

    /// The cloud provider rate-limited us (429) and retries were exhausted.
    #[error("cloud rate limited (HTTP 429: {message}){}; slow down or raise the provider quota", .retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// The provider's `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// The provider's own explanation (or its error type).
        message: String,
    },

    /// The provider answered 5xx (or 408 or 409) and retries were exhausted.
    #[error("cloud server error (HTTP {status}): {message}{}; the provider is failing: try again later (retries: [cloud].max_retries)", .retry_after.map(|d| format!("; retry after {d:?}")).unwrap_or_default())]
    Server {
        /// HTTP status.
        status: u16,
        /// The provider's message (never the prompt).
        message: String,
        /// The provider's `Retry-After` (common with 503), when given.
        retry_after: Option<Duration>,
    },

    /// The provider rejected the request as malformed (400/404/422).
    #[error("cloud rejected the request (HTTP {status}): {message}; {}", if *status == 404 { "check [cloud].base_url (the API's root, such as https://api.openai.com/v1) and [cloud].model" } else { "check [cloud].model and the request's parameters" })]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },

    /// The prompt does not fit the model's context window.
    #[error("context too long: {0}; shorten the prompt (or the conversation), or lower max_tokens when the prompt fits but not with the answer")]
    ContextTooLong(String),

    /// A deadline or timeout expired.
    #[error("{}", timeout_message(*phase, *elapsed))]
    Timeout {
        /// Which phase.
        phase: TimeoutPhase,
        /// How long we waited: since the request started for [`TimeoutPhase::Deadline`], since
        /// the attempt started otherwise.
        elapsed: Duration,
    },

    /// The connection failed (refused, reset, DNS).
    #[error("connection to the cloud failed: {0}; check the network and [cloud].base_url")]
    Connection(String),

    /// The provider's response could not be understood.
    #[error("malformed response from the cloud: {0}; check that [cloud].base_url is the provider's API and [cloud].provider its protocol")]
    MalformedResponse(String),

    /// A stream ended before its terminator (`[DONE]` / `message_stop`) and before its finish
    /// reason.
    #[error("stream truncated: {0}; the partial answer was discarded (the connection or the provider cut it short: try again)")]
    TruncatedStream(String),

    /// The circuit breaker is open: the cloud failed repeatedly and is being rested.
    #[error("cloud circuit breaker is open after repeated failures; retrying in {retry_in:?}")]
    CircuitOpen {
        /// Time until the next probe is allowed.
        retry_in: Duration,
    },

    /// A call to the cloud was attempted without a clearance (a bug guard; never expected).
    #[error(
        "privacy guard: the cloud tier was called without a clearance from the policy decision"
    )]
    PrivacyGuard,

    /// The budget for cloud spend is exhausted and the policy says refuse.
    #[error("cloud budget exhausted ({0}); raise [budget] limits or wait for the next period")]
    BudgetExhausted(String),

    /// The answer cache or ledger store failed.
    #[error("storage error at {}: {message}", .path.display())]
    Storage {
        /// Database path.
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// Every attempted backend failed; the attempts are listed in order.
    #[error("all backends failed: {}", .0.iter().map(|(b, e)| format!("{b}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(String, Error)>),

    /// The request was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,

    /// The router is shutting down ([`Router::shutdown`](crate::Router::shutdown)) and takes
    /// no new requests.
    #[error("the router is shutting down (Router::shutdown was called) and takes no new requests")]
    ShutDown,

    /// I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The message, as `Display` shows it: what `main() -> edgeroute::Result<()>` and `unwrap()`
/// print is then the error with its fix (and, for a policy, every `file:line:col`), not a
/// dump of the enum.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What timed out, and what to change.
fn timeout_message(phase: TimeoutPhase, elapsed: Duration) -> String {
    match phase {
        TimeoutPhase::Deadline => format!(
            "the request's deadline passed after {elapsed:?} with no answer; allow more time \
             (Request::with_deadline, `ask --deadline-ms`); a first local request also loads the model, \
             which goes on loading for the next request"
        ),
        TimeoutPhase::Connect => format!(
            "timed out connecting to the cloud after {elapsed:?}; check the network and \
             [cloud].base_url (the limit is [cloud].connect_timeout_ms)"
        ),
        TimeoutPhase::FirstToken => format!(
            "timed out after {elapsed:?} waiting for the cloud's first token (the provider is slow \
             or overloaded; the limit is [cloud].first_token_timeout_ms)"
        ),
        TimeoutPhase::BetweenTokens => format!(
            "the cloud's answer stopped arriving: nothing came for {elapsed:?} mid-answer (the \
             limit is [cloud].idle_timeout_ms); the partial answer was discarded, try again"
        ),
        TimeoutPhase::Total => format!(
            "timed out after {elapsed:?} in the whole call (the limit is [cloud].total_timeout_ms, \
             or the request's deadline)"
        ),
    }
}

impl Error {
    /// A short, stable name for the kind of error (`timeout`, `rate_limited`, `server_error`,
    /// ...): the `error.type` of a tier span, for grouping errors without their messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Policy(_) => "policy",
            Error::Config(_) => "config",
            Error::InvalidRequest(_) => "invalid_request",
            Error::RuntimeUnavailable { .. } => "runtime_unavailable",
            Error::ModelUnavailable { .. } => "model_unavailable",
            Error::Inference(_) => "inference",
            Error::TierUnavailable { .. } => "tier_unavailable",
            Error::Refused { .. } => "refused",
            Error::Auth { .. } => "auth",
            Error::RateLimited { .. } => "rate_limited",
            Error::Server { .. } => "server_error",
            Error::BadRequest { .. } => "bad_request",
            Error::ContextTooLong(_) => "context_too_long",
            Error::Timeout { .. } => "timeout",
            Error::Connection(_) => "connection",
            Error::MalformedResponse(_) => "malformed_response",
            Error::TruncatedStream(_) => "truncated_stream",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::PrivacyGuard => "privacy_guard",
            Error::BudgetExhausted(_) => "budget_exhausted",
            Error::Storage { .. } => "storage",
            Error::AllFailed(_) => "all_failed",
            Error::Cancelled => "cancelled",
            Error::ShutDown => "shut_down",
            Error::Io { .. } => "io",
        }
    }

    /// True for timeouts of any phase.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True when the cloud could not answer, for a reason on its side or in getting there:
    /// unreachable, unhealthy, rate-limiting, rejecting our credentials, out of budget, not
    /// configured. These are the failures an unpinned cloud rule falls back to the device from
    /// (a wrong API key should not stop an app that can answer locally; the fallback reason
    /// names the error). Not: a request the provider rejects as malformed, or too long.
    pub fn is_cloud_failure(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Connection(_)
                | Error::MalformedResponse(_)
                | Error::TruncatedStream(_)
                | Error::CircuitOpen { .. }
                | Error::Auth { .. }
                | Error::TierUnavailable { .. }
                | Error::BudgetExhausted(_)
                | Error::AllFailed(_)
        )
    }

    /// True when retrying the same call could succeed (429, 5xx, timeouts, connection resets).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Connection(_)
        )
    }

    /// When the provider asked us to come back (`Retry-After` on a 429 or a 5xx), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Shorthand for an [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `main() -> edgeroute::Result<()>` prints an error with `Debug`: it shows the message
    /// and its fix, not the enum's fields.
    #[test]
    fn debug_shows_the_message() {
        let e = Error::Timeout {
            phase: TimeoutPhase::Deadline,
            elapsed: Duration::from_millis(250),
        };
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(format!("{e:?}").contains("Request::with_deadline"), "{e:?}");
    }
}

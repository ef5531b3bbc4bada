//! Retry mechanics: exponential backoff with full jitter, `Retry-After` parsing, and a
//! token-bucket retry budget (after tower's `TpsBudget`) that keeps retries to a fraction of
//! the traffic so a struggling provider is not hammered.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::config::RetryConfig;

/// Full-jitter backoff before retry number `retry` (0-based): a uniform draw in
/// `[0, min(max_backoff, initial_backoff * 2^retry)]`.
pub(crate) fn backoff(cfg: &RetryConfig, retry: u32) -> Duration {
    let ceiling = cfg
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(retry.min(31)))
        .min(cfg.max_backoff);
    ceiling.mul_f64(unit_random())
}

/// A uniform draw in `[0, 1)`, good enough for jitter (not for anything secret).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses the response headers that say when to come back: OpenAI's `retry-after-ms`, then the
/// standard `Retry-After` (delta-seconds, possibly fractional, or an HTTP date).
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // A malformed value (negative, NaN, or absurdly large) is ignored, not trusted.
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(d) = secs_to_duration(ms / 1000.0) {
            return Some(d);
        }
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What the provider said about retrying an error answer: OpenAI's and Anthropic's
/// `x-should-retry: true|false` (their SDKs follow it over the status). `None` when absent or
/// neither word.
pub(crate) fn parse_should_retry(headers: &reqwest::header::HeaderMap) -> Option<bool> {
    let v = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The provider's retry advice for a call's last failed attempt (see [`parse_should_retry`]),
/// shared by the attempt that reads it and the loop that decides.
#[derive(Debug, Default)]
pub(crate) struct Advice(AtomicU8);

impl Advice {
    const NONE: u8 = 0;
    const RETRY: u8 = 1;
    const DO_NOT: u8 = 2;

    pub(crate) fn set(&self, advice: Option<bool>) {
        let v = match advice {
            None => Self::NONE,
            Some(true) => Self::RETRY,
            Some(false) => Self::DO_NOT,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            Self::RETRY => Some(true),
            Self::DO_NOT => Some(false),
            _ => None,
        }
    }
}

/// Longest `Retry-After` accepted, in seconds (~31 years): anything longer is malformed.
const MAX_RETRY_AFTER_SECS: f64 = 1e9;

/// `secs` as a duration when it is a plausible delay: finite, non-negative and under
/// [`MAX_RETRY_AFTER_SECS`] (so adding it to an `Instant` cannot overflow).
fn secs_to_duration(secs: f64) -> Option<Duration> {
    if (0.0..MAX_RETRY_AFTER_SECS).contains(&secs) {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// Token-bucket retry budget. Each first attempt deposits `ratio` tokens, time adds
/// `min_per_sec` tokens per second, each retry withdraws one; the balance is capped at `max`.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    max: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub(crate) fn new(cfg: &RetryConfig) -> Self {
        let max = cfg.budget_max.max(0.0);
        RetryBudget {
            ratio: cfg.budget_ratio.max(0.0),
            min_per_sec: cfg.budget_min_per_sec.max(0.0),
            max,
            // Start with one call's worth of retries (or one second's, if more): a fresh client
            // (a CLI run, an app's first call) retries as configured, where a start of one
            // second's worth had allowed a single retry; the budget holds back a client whose
            // calls keep failing.
            state: Mutex::new((
                f64::from(cfg.max_retries)
                    .max(cfg.budget_min_per_sec)
                    .clamp(0.0, max),
                Instant::now(),
            )),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut (f64, Instant)) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Records a first attempt.
    pub(crate) fn deposit(&self) {
        let (ratio, max) = (self.ratio, self.max);
        self.with_state(|(balance, _)| *balance = (*balance + ratio).min(max));
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    pub(crate) fn try_withdraw_at(&self, now: Instant) -> bool {
        let (rate, max) = (self.min_per_sec, self.max);
        self.with_state(|(balance, last)| {
            let elapsed = now.saturating_duration_since(*last).as_secs_f64();
            *last = now.max(*last);
            *balance = (*balance + elapsed * rate).min(max);
            if *balance >= 1.0 {
                *balance -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn backoff_is_jittered_and_capped() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..RetryConfig::default()
        };
        let draws: Vec<Duration> = (0..200).map(|_| backoff(&cfg, 5)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(300)));
        // Full jitter: spread over the range, not constant.
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(200)));
        assert!((0..100).all(|_| backoff(&cfg, 0) <= Duration::from_millis(100)));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn should_retry_advice() {
        let advice = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-should-retry", HeaderValue::from_static(v));
            parse_should_retry(&h)
        };
        assert_eq!(parse_should_retry(&HeaderMap::new()), None);
        assert_eq!(advice("true"), Some(true));
        assert_eq!(advice(" FALSE "), Some(false));
        assert_eq!(advice("maybe"), None);
        let a = Advice::default();
        assert_eq!(a.get(), None);
        for v in [Some(true), Some(false), None] {
            a.set(v);
            assert_eq!(a.get(), v);
        }
    }

    #[test]
    fn malformed_retry_after_ms_is_ignored_not_a_panic() {
        for bad in ["1e30", "-5", "NaN", "inf", "1e300", "9999999999999999"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after-ms", HeaderValue::from_static(bad));
            assert_eq!(parse_retry_after(&h), None, "{bad}");
            // The standard header still applies.
            h.insert("retry-after", HeaderValue::from_static("3"));
            assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("1e30"));
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn budget_limits_retries_to_a_fraction_of_traffic() {
        let cfg = RetryConfig {
            budget_ratio: 0.2,
            budget_min_per_sec: 0.0,
            budget_max: 100.0,
            ..RetryConfig::default()
        };
        let b = RetryBudget::new(&cfg);
        let now = Instant::now();
        // The first call's retries (2) are there from the start.
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            // Every call fails and wants to retry.
            if b.try_withdraw_at(now) {
                retries += 1;
            }
        }
        assert!(
            (197..=202).contains(&retries),
            "{retries} retries for 1000 calls"
        );
    }

    #[test]
    fn budget_refills_with_time() {
        let cfg = RetryConfig {
            budget_ratio: 0.0,
            budget_min_per_sec: 2.0,
            budget_max: 2.0,
            ..RetryConfig::default()
        };
        let b = RetryBudget::new(&cfg);
        let t0 = Instant::now();
        assert!(b.try_withdraw_at(t0));
        assert!(b.try_withdraw_at(t0));
        assert!(!b.try_withdraw_at(t0));
        assert!(b.try_withdraw_at(t0 + Duration::from_millis(600)));
        assert!(!b.try_withdraw_at(t0 + Duration::from_millis(600)));
    }
}

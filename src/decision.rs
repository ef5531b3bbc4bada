//! What `decide()` returns and `explain` prints: the [`Plan`], the rule that fired, and typed
//! [`Reason`]s naming the inputs that made it fire.
//!
//! [`CloudClearance`] is the privacy guarantee in type form: the cloud tier cannot be called
//! without one, and only this module can make one — for a decision whose plan allows the cloud.

use std::fmt;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::request::ConfidenceStat;
use crate::signals::CloudHealth;

/// What the executor should do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "route", rename_all = "lowercase")]
pub enum Plan {
    /// Answer on the device.
    Local {
        /// Never fall back to the cloud (privacy pin).
        pin: bool,
    },
    /// Answer in the cloud.
    Cloud {
        /// Replace PII with placeholders before sending; re-hydrate the answer locally.
        redact: bool,
        /// Never fall back to the local tier.
        pin: bool,
    },
    /// Local first; escalate to the cloud when the local confidence is below the threshold.
    Cascade {
        /// Log-probability threshold.
        min_confidence: f32,
        /// Which statistic is compared.
        statistic: ConfidenceStat,
        /// Redact the escalated request.
        redact: bool,
    },
    /// Start one tier; start the other if no first token arrived after `after`.
    Hedge {
        /// The tier started first.
        first: HedgeFirst,
        /// Delay before the second tier starts. In a decision it is always
        /// [`HedgeDelay::Fixed`]: `decide()` resolves `p95` from the signals.
        after: HedgeDelay,
        /// Redact the cloud request.
        redact: bool,
    },
    /// Do not answer.
    Refuse {
        /// Message for the caller.
        message: String,
    },
}

/// The tier a hedge starts with (`first = "local"`, the default, or `"cloud"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HedgeFirst {
    /// Start on the device; start the cloud if no token came in time.
    Local,
    /// Start in the cloud; start the device if no token came in time.
    Cloud,
}

impl HedgeFirst {
    /// `local` or `cloud`.
    pub fn name(self) -> &'static str {
        match self {
            HedgeFirst::Local => "local",
            HedgeFirst::Cloud => "cloud",
        }
    }
}

/// How long a hedge waits for the first tier's first token before starting the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    /// A fixed delay (`after_ms = 150`).
    Fixed(Duration),
    /// The p95 of the first tier's recent times to first token (`after_ms = "p95"`); until
    /// enough were observed, that tier's first-token estimate.
    FirstTokenP95,
}

impl HedgeDelay {
    /// The delay, when fixed.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::FirstTokenP95 => None,
        }
    }
}

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeDelay::Fixed(d) => {
                s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            HedgeDelay::FirstTokenP95 => s.serialize_str("p95"),
        }
    }
}

impl Plan {
    /// The route name as written in policies (`local`, `cloud`, `cascade`, `hedge`, `refuse`).
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Local { .. } => "local",
            Plan::Cloud { .. } => "cloud",
            Plan::Cascade { .. } => "cascade",
            Plan::Hedge { .. } => "hedge",
            Plan::Refuse { .. } => "refuse",
        }
    }

    /// True when this plan may send anything to the cloud: as its primary route, or as the
    /// fallback of an unpinned local plan.
    pub fn allows_cloud(&self) -> bool {
        match self {
            Plan::Local { pin } => !pin,
            Plan::Refuse { .. } => false,
            _ => true,
        }
    }

    /// What of this plan decides which answer a request gets, as part of its cache key: a
    /// request is answered from the cache only with an answer given under the same kind of
    /// plan. So a rule that pins the cloud never gets the device's answer to the same prompt,
    /// a local rule never gets the cloud's, and a cascade never gets an answer that skipped
    /// its confidence check. A hedge's delay only changes how fast the answer comes, and is
    /// left out. `None` for `refuse`, which is never answered.
    pub fn cache_class(&self) -> Option<String> {
        match self {
            Plan::Local { .. } => Some("local".into()),
            Plan::Cloud { redact, .. } => Some(format!("cloud redact={redact}")),
            Plan::Cascade {
                min_confidence,
                statistic,
                redact,
            } => Some(format!(
                "cascade {statistic:?}<{min_confidence:?} redact={redact}"
            )),
            Plan::Hedge { first, redact, .. } => {
                Some(format!("hedge first={} redact={redact}", first.name()))
            }
            Plan::Refuse { .. } => None,
        }
    }

    /// True when the cloud is the plan's primary route or part of it (cloud, cascade, hedge).
    pub fn uses_cloud(&self) -> bool {
        matches!(
            self,
            Plan::Cloud { .. } | Plan::Cascade { .. } | Plan::Hedge { .. }
        )
    }

    /// True when this plan may fall back to the local tier.
    pub fn allows_local(&self) -> bool {
        match self {
            Plan::Cloud { pin, .. } => !pin,
            Plan::Refuse { .. } => false,
            _ => true,
        }
    }

    /// True when the cloud request must be redacted.
    pub fn redacts(&self) -> bool {
        match self {
            Plan::Cloud { redact, .. }
            | Plan::Cascade { redact, .. }
            | Plan::Hedge { redact, .. } => *redact,
            _ => false,
        }
    }
}

/// Why a decision came out the way it did. Each variant carries the inputs that mattered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// PII of these kinds was found in the prompt.
    PiiFound {
        /// Kinds found (sorted).
        kinds: Vec<String>,
    },
    /// None of the listed PII kinds was found.
    PiiAbsent {
        /// Kinds checked.
        kinds: Vec<String>,
    },
    /// The prompt's token estimate is above a threshold.
    PromptLarge {
        /// Estimated prompt tokens.
        tokens: u32,
        /// The rule's threshold.
        threshold: u32,
    },
    /// The prompt's token estimate is below a threshold.
    PromptSmall {
        /// Estimated prompt tokens.
        tokens: u32,
        /// The rule's threshold.
        threshold: u32,
    },
    /// The caller's deadline is tighter than a threshold.
    DeadlineTooTight {
        /// The request's deadline.
        deadline_ms: u64,
        /// The rule's threshold.
        threshold_ms: u64,
    },
    /// The local tier's latency estimate does not fit the deadline.
    LocalTooSlow {
        /// Estimated local latency.
        estimate_ms: u64,
        /// The request's deadline.
        deadline_ms: u64,
    },
    /// Remaining cloud budget is under a threshold.
    BudgetLow {
        /// Budget left.
        #[serde(with = "rust_decimal::serde::str")]
        left_usd: Decimal,
        /// The rule's threshold.
        #[serde(with = "rust_decimal::serde::str")]
        threshold_usd: Decimal,
    },
    /// The budget is used up, or has less left than this request's cloud call would reserve;
    /// the policy's `[budget].on_exhausted` applied.
    BudgetExhausted {
        /// What the policy chose (`local` or `refuse`).
        action: String,
        /// Budget left.
        #[serde(with = "rust_decimal::serde::str")]
        left_usd: Decimal,
        /// What the request's cloud call would reserve, when known.
        #[serde(with = "rust_decimal::serde::str_option")]
        call_usd: Option<Decimal>,
    },
    /// The device is offline.
    Offline,
    /// The device is online.
    Online,
    /// The cloud's circuit breaker is not closed.
    CloudUnhealthy {
        /// Current health.
        health: CloudHealth,
    },
    /// The cloud is healthy.
    CloudHealthy,
    /// A caller tag matched.
    TagMatched {
        /// The tag.
        tag: String,
    },
    /// The task name matched.
    TaskMatched {
        /// The task.
        task: String,
    },
    /// The rule has no conditions (catch-all).
    Always,
    /// No rule matched; `[defaults]` applied.
    Default,
    /// The cloud tier is not configured or has no API key.
    CloudUnavailable {
        /// Why.
        why: String,
    },
    /// The local tier is not available.
    LocalUnavailable {
        /// Why.
        why: String,
    },
    /// A tier failed and the other answered.
    Fallback {
        /// The tier that failed.
        from: String,
        /// Its error.
        error: String,
    },
    /// The cascade escalated because the local confidence was too low.
    Escalated {
        /// The statistic compared.
        statistic: ConfidenceStat,
        /// Its value.
        confidence: f32,
        /// The rule's threshold.
        threshold: f32,
    },
    /// The local tier's latency estimate fits the deadline.
    LocalFits {
        /// Estimated local latency.
        estimate_ms: u64,
        /// The request's deadline.
        deadline_ms: u64,
    },
    /// `local_too_slow = false` held because there was nothing to compare: the request has no
    /// deadline, or there is no local latency estimate.
    LocalNotLimited {
        /// The request's deadline, if any.
        deadline_ms: Option<u64>,
        /// The local latency estimate, if any.
        estimate_ms: Option<u64>,
    },
    /// The cascade kept the local answer.
    Confident {
        /// The statistic compared.
        statistic: ConfidenceStat,
        /// Its value.
        confidence: f32,
        /// The rule's threshold.
        threshold: f32,
    },
    /// How the hedge delay was chosen.
    HedgeDelay {
        /// The delay, ms.
        after_ms: u64,
        /// Where it came from (e.g. "p95 of local first tokens").
        basis: String,
    },
    /// The hedge's winner.
    HedgeWinner {
        /// `local` or `cloud`.
        winner: String,
    },
    /// Served from the answer cache.
    CacheHit {
        /// The tier that first gave the answer: `local` or `cloud`.
        answered_by: String,
        /// Its model (backend name).
        model: String,
        /// How long ago, in seconds.
        age_secs: u64,
    },
    /// PII was replaced with placeholders before the cloud call.
    Redacted {
        /// Number of spans replaced.
        spans: usize,
    },
    /// The cloud's answer put placeholders inside links (a URL, a markdown link or image
    /// target, a `mailto:`): they were left as placeholders, not re-hydrated, so that
    /// rendering the answer cannot send the private values to an address the cloud chose.
    PlaceholdersLeftInLinks {
        /// How many.
        count: usize,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PiiFound { kinds } => write!(f, "PII found: {}", kinds.join(", ")),
            Reason::PiiAbsent { kinds } if kinds.is_empty() => f.write_str("no PII found"),
            Reason::PiiAbsent { kinds } => write!(f, "no PII of kinds {}", kinds.join(", ")),
            Reason::PromptLarge { tokens, threshold } => {
                write!(f, "prompt ~{tokens} tokens > {threshold}")
            }
            Reason::PromptSmall { tokens, threshold } => {
                write!(f, "prompt ~{tokens} tokens < {threshold}")
            }
            Reason::DeadlineTooTight {
                deadline_ms,
                threshold_ms,
            } => write!(f, "deadline {deadline_ms} ms < {threshold_ms} ms"),
            Reason::LocalTooSlow {
                estimate_ms,
                deadline_ms,
            } => write!(
                f,
                "local estimate {estimate_ms} ms exceeds deadline {deadline_ms} ms"
            ),
            Reason::LocalFits {
                estimate_ms,
                deadline_ms,
            } => write!(
                f,
                "local estimate {estimate_ms} ms fits deadline {deadline_ms} ms"
            ),
            Reason::LocalNotLimited {
                deadline_ms: None,
                estimate_ms: Some(e),
            } => write!(
                f,
                "no deadline: the local tier cannot be too slow (local estimate {e} ms)"
            ),
            Reason::LocalNotLimited {
                deadline_ms: None,
                estimate_ms: None,
            } => f.write_str("no deadline: the local tier cannot be too slow"),
            Reason::LocalNotLimited {
                deadline_ms: Some(d),
                ..
            } => write!(
                f,
                "no local latency estimate to compare with deadline {d} ms"
            ),
            Reason::BudgetLow {
                left_usd,
                threshold_usd,
            } => write!(f, "budget left ${left_usd} < ${threshold_usd}"),
            Reason::BudgetExhausted {
                action,
                left_usd,
                call_usd,
            } => {
                write!(f, "cloud budget exhausted (${left_usd} left")?;
                if let Some(call) = call_usd {
                    write!(f, "; a cloud call for this request reserves ${call}")?;
                }
                write!(f, "): policy says {action}")
            }
            Reason::Offline => f.write_str("device is offline"),
            Reason::Online => f.write_str("device is online"),
            Reason::CloudUnhealthy { health } => write!(f, "cloud is {health}"),
            Reason::CloudHealthy => f.write_str("cloud is healthy"),
            Reason::TagMatched { tag } => write!(f, "tag `{tag}`"),
            Reason::TaskMatched { task } => write!(f, "task `{task}`"),
            Reason::Always => f.write_str("rule has no conditions"),
            Reason::Default => f.write_str("no rule matched: [defaults]"),
            Reason::CloudUnavailable { why } => write!(f, "cloud unavailable: {why}"),
            Reason::LocalUnavailable { why } => write!(f, "local unavailable: {why}"),
            Reason::Fallback { from, error } => write!(f, "{from} failed ({error}): fell back"),
            Reason::Escalated {
                statistic,
                confidence,
                threshold,
            } => write!(
                f,
                "local confidence ({statistic}) {confidence:.3} < {threshold}: escalated"
            ),
            Reason::Confident {
                statistic,
                confidence,
                threshold,
            } => write!(
                f,
                "local confidence ({statistic}) {confidence:.3} >= {threshold}: kept"
            ),
            Reason::HedgeDelay { after_ms, basis } => {
                write!(f, "hedge after {after_ms} ms ({basis})")
            }
            Reason::HedgeWinner { winner } => write!(f, "hedge won by {winner}"),
            Reason::CacheHit {
                answered_by,
                model,
                age_secs,
            } => write!(
                f,
                "answer cache hit (first answered by {answered_by}, {model}, {age_secs} s ago)"
            ),
            Reason::Redacted { spans } => write!(f, "{spans} PII span(s) redacted before cloud"),
            Reason::PlaceholdersLeftInLinks { count } => write!(
                f,
                "{count} placeholder(s) left as they are inside links in the answer (not re-hydrated)"
            ),
        }
    }
}

/// Permission to send this request to the cloud.
///
/// Only [`Decision`]s whose plan allows the cloud carry one, and only this module can create it:
/// the cloud tier's entry point takes `&CloudClearance`, so a request the policy keeps local has
/// no value to pass and cannot reach the network, whatever the executor's fallbacks do.
///
/// Code outside this module can only borrow one from a decision:
///
/// ```
/// let router = edgeroute::Router::builder()
///     .policy_str("[defaults]\nroute = \"local\"\n")
///     .load_local_model(false)
///     .cache(false)
///     .build()?;
/// let decision = router.explain(&edgeroute::Request::new("hello"));
/// assert!(decision.cloud_clearance().is_none());
/// # Ok::<(), edgeroute::Error>(())
/// ```
///
/// It cannot build one, take a default one, or read one from data:
///
/// ```compile_fail
/// let forged = edgeroute::decision::CloudClearance { redact: false };
/// ```
///
/// ```compile_fail
/// let forged = edgeroute::decision::CloudClearance::default();
/// ```
///
/// ```compile_fail
/// let forged: edgeroute::decision::CloudClearance = serde_json::from_str("{}").unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CloudClearance {
    redact: bool,
}

impl CloudClearance {
    /// True when the cloud request must be redacted.
    pub fn must_redact(&self) -> bool {
        self.redact
    }
}

/// The outcome of `decide()`: a plan, the rule that fired, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Rule name, or `defaults` when no rule matched.
    pub rule: String,
    /// What to do.
    pub plan: Plan,
    /// The inputs that made the rule fire, then reasons added while executing.
    pub reasons: Vec<Reason>,
    #[serde(skip)]
    clearance: Option<CloudClearance>,
    /// The cache class of the answers this decision may replay, when not its plan's own: a
    /// cloud plan refused only because the budget ran out still serves answers already cached
    /// under it (they cost nothing).
    #[serde(skip)]
    replays: Option<String>,
}

impl Decision {
    /// Builds a decision. The clearance is derived from the plan: present iff the plan allows
    /// the cloud. This is the only place a [`CloudClearance`] is made.
    pub(crate) fn new(rule: impl Into<String>, plan: Plan, reasons: Vec<Reason>) -> Self {
        let clearance = plan.allows_cloud().then(|| CloudClearance {
            redact: plan.redacts(),
        });
        Decision {
            rule: rule.into(),
            plan,
            reasons,
            clearance,
            replays: None,
        }
    }

    /// The same decision, serving answers cached under `plan` (the plan the rule chose before
    /// the budget gate refused it).
    pub(crate) fn replaying(mut self, plan: &Plan) -> Self {
        self.replays = plan.cache_class();
        self
    }

    /// The cache class of the answers this decision may be answered with: its plan's
    /// ([`Plan::cache_class`]), or, for a cloud plan refused only because the budget ran out,
    /// the refused plan's. `None`: neither looked up nor stored.
    pub fn cache_class(&self) -> Option<String> {
        self.replays.clone().or_else(|| self.plan.cache_class())
    }

    /// This decision, answered from the cache: the rule that fired and its inputs stay, with
    /// [`Reason::CacheHit`] added (which tier and model gave `answer`, and when), and the
    /// clearance goes (nothing leaves the device).
    pub(crate) fn answered_from_cache(mut self, answer: &crate::cache::CachedAnswer) -> Self {
        self.reasons.push(Reason::CacheHit {
            answered_by: answer.route.as_str().to_string(),
            model: answer.model.clone(),
            age_secs: answer.created_at.elapsed().map_or(0, |age| age.as_secs()),
        });
        self.clearance = None;
        self
    }

    /// Whether the answer depended on a condition that passes: a fallback after a failure,
    /// the device offline, an unhealthy or unavailable cloud (no API key yet), no local model
    /// installed, a low or
    /// exhausted budget — whether the cloud gate or a rule's own condition brought it in.
    pub fn is_degraded(&self) -> bool {
        self.reasons.iter().any(|r| {
            matches!(
                r,
                Reason::Fallback { .. }
                    | Reason::Offline
                    | Reason::CloudUnhealthy { .. }
                    | Reason::CloudUnavailable { .. }
                    | Reason::LocalUnavailable { .. }
                    | Reason::BudgetLow { .. }
                    | Reason::BudgetExhausted { .. }
            )
        })
    }

    /// Whether a tier other than the plan's answered: a fallback after the planned tier failed.
    /// Such an answer is not cached, since the cache files answers by the plan that gave them
    /// ([`Plan::cache_class`]) and this one did not come from it. Answers under other passing
    /// conditions are cached: the gate that keeps a request local (offline, an unhealthy or
    /// unavailable cloud, the budget) changes its plan to `local` too, so they are filed apart
    /// from what the cloud answers once the condition passes.
    pub fn fell_back(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| matches!(r, Reason::Fallback { .. }))
    }

    /// The clearance to call the cloud, if this decision allows it.
    pub fn cloud_clearance(&self) -> Option<&CloudClearance> {
        self.clearance.as_ref()
    }

    /// The route name of the plan.
    pub fn route(&self) -> &'static str {
        self.plan.name()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rule `{}`", self.plan.name(), self.rule)?;
        for r in &self.reasons {
            write!(f, "; {r}")?;
        }
        f.write_str(")")
    }
}

/// Re-exported for the signals a rule can name.
pub use crate::signals::Signals;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearance_only_for_cloud_plans() {
        let local = Decision::new("r", Plan::Local { pin: true }, vec![]);
        assert!(local.cloud_clearance().is_none());
        let unpinned = Decision::new("r", Plan::Local { pin: false }, vec![]);
        assert!(
            unpinned.cloud_clearance().is_some(),
            "unpinned local may fall back"
        );
        let refuse = Decision::new(
            "r",
            Plan::Refuse {
                message: "no".into(),
            },
            vec![],
        );
        assert!(refuse.cloud_clearance().is_none());
        let cloud = Decision::new(
            "r",
            Plan::Cloud {
                redact: true,
                pin: false,
            },
            vec![],
        );
        assert!(cloud.cloud_clearance().unwrap().must_redact());
    }

    #[test]
    fn network_reason_display() {
        assert_eq!(Reason::Offline.to_string(), "device is offline");
        assert_eq!(Reason::Online.to_string(), "device is online");
    }
}

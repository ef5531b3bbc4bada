//! Phase three: `decide()` — the one place a routing decision is made.
//!
//! A pure function of the compiled policy, the request's features and the live signals: no
//! I/O, no clock, no randomness. `explain` and the real pipeline call the same code.

use super::compile::{CompiledPolicy, Condition, OnExhausted};
use crate::decision::{Decision, HedgeDelay, HedgeFirst, Plan, Reason};
use crate::inspect::Features;
use crate::signals::{CloudHealth, Network, Signals};

/// Decides what to do with a request: the first rule whose conditions all hold, else
/// `[defaults]`; then the local gate (no local model: an unpinned plan goes to the cloud) and
/// the cloud gate (budget, availability, network, breaker: a cloud plan that is not pinned
/// becomes local). A pinned local plan is never sent to the cloud.
pub fn decide(policy: &CompiledPolicy, features: &Features, signals: &Signals) -> Decision {
    let mut reasons = Vec::new();
    for rule in &policy.rules {
        reasons.clear();
        if rule
            .conditions
            .iter()
            .all(|c| holds(policy, c, features, signals, &mut reasons))
        {
            if rule.conditions.is_empty() {
                reasons.push(Reason::Always);
            }
            let decision = gate(policy, &rule.name, rule.plan.clone(), reasons, signals);
            return resolve_hedge_delay(decision, signals);
        }
    }
    let decision = gate(
        policy,
        "defaults",
        policy.defaults.clone(),
        vec![Reason::Default],
        signals,
    );
    resolve_hedge_delay(decision, signals)
}

/// The rules tried before the one that fired (all of them when `[defaults]` answered), each
/// with the first of its conditions that did not hold: what `explain` shows, so that a rule
/// that did not fire can be checked against what it saw. The same evaluation as [`decide`].
pub fn passed_over<'p>(
    policy: &'p CompiledPolicy,
    features: &Features,
    signals: &Signals,
) -> Vec<(&'p str, &'p Condition)> {
    let mut out = Vec::new();
    let mut unused = Vec::new();
    for rule in &policy.rules {
        match rule
            .conditions
            .iter()
            .find(|c| !holds(policy, c, features, signals, &mut unused))
        {
            Some(failed) => out.push((rule.name.as_str(), failed)),
            None => break,
        }
    }
    out
}

/// The cloud-only plan standing in for `plan` when the local tier cannot run, or `None` when
/// `plan` needs no local tier or must not leave the device. An unpinned local plan would fall
/// back to the cloud with its request redacted, so it redacts; a cascade or a hedge keeps its
/// own redaction.
fn without_local(plan: &Plan) -> Option<Plan> {
    match *plan {
        Plan::Local { pin: false } => Some(Plan::Cloud {
            redact: true,
            pin: false,
        }),
        Plan::Cascade { redact, .. } | Plan::Hedge { redact, .. } => {
            Some(Plan::Cloud { redact, pin: false })
        }
        Plan::Local { pin: true } | Plan::Cloud { .. } | Plan::Refuse { .. } => None,
    }
}

/// Turns a hedge's `after_ms = "p95"` into a fixed delay from the latency signals of the tier
/// it starts with — the p95 of its recent first tokens, else its first-token estimate — and
/// says which it used.
fn resolve_hedge_delay(mut decision: Decision, s: &Signals) -> Decision {
    if let Plan::Hedge { first, after, .. } = &mut decision.plan {
        if *after == HedgeDelay::FirstTokenP95 {
            let l = &s.latency;
            let (p95, estimate) = match first {
                HedgeFirst::Local => (l.local_first_token_p95_ms, l.local_first_token_ms),
                HedgeFirst::Cloud => (l.cloud_first_token_p95_ms, l.cloud_first_token_ms),
            };
            let tier = first.name();
            let (ms, basis) = match (p95, estimate) {
                (Some(p95), _) => (p95, format!("p95 of recent {tier} first tokens")),
                (None, Some(estimate)) => (
                    estimate,
                    format!("{tier} first-token estimate: too few first tokens observed for a p95"),
                ),
                (None, None) => (
                    0,
                    format!("no {tier} first-token signal: both tiers start at once"),
                ),
            };
            *after = HedgeDelay::Fixed(std::time::Duration::from_millis(ms));
            decision.reasons.push(Reason::HedgeDelay {
                after_ms: ms,
                basis,
            });
        }
    }
    decision
}

/// Evaluates one condition; when it holds, pushes the reason naming its inputs.
fn holds(
    policy: &CompiledPolicy,
    condition: &Condition,
    f: &Features,
    s: &Signals,
    reasons: &mut Vec<Reason>,
) -> bool {
    let reason = match condition {
        Condition::Pii(want) => (f.pii.is_empty() != *want).then(|| {
            if *want {
                Reason::PiiFound {
                    kinds: policy.kind_names(f.pii),
                }
            } else {
                Reason::PiiAbsent { kinds: Vec::new() }
            }
        }),
        Condition::PiiAny(set) => f.pii.intersects(*set).then(|| Reason::PiiFound {
            kinds: policy.kind_names(super::KindSet(f.pii.0 & set.0)),
        }),
        Condition::PiiAll(set) => f.pii.contains_all(*set).then(|| Reason::PiiFound {
            kinds: policy.kind_names(*set),
        }),
        Condition::PiiNone(set) => (!f.pii.intersects(*set)).then(|| Reason::PiiAbsent {
            kinds: policy.kind_names(*set),
        }),
        Condition::PromptTokensGt(n) => (f.prompt_tokens > *n).then_some(Reason::PromptLarge {
            tokens: f.prompt_tokens,
            threshold: *n,
        }),
        Condition::PromptTokensLt(n) => (f.prompt_tokens < *n).then_some(Reason::PromptSmall {
            tokens: f.prompt_tokens,
            threshold: *n,
        }),
        Condition::DeadlineMsLt(n) => {
            f.deadline_ms
                .filter(|d| d < n)
                .map(|deadline_ms| Reason::DeadlineTooTight {
                    deadline_ms,
                    threshold_ms: *n,
                })
        }
        Condition::LocalTooSlow(want) => match (f.deadline_ms, s.latency.local_ms) {
            (Some(deadline_ms), Some(estimate_ms)) => {
                let too_slow = estimate_ms > deadline_ms;
                (too_slow == *want).then_some(if too_slow {
                    Reason::LocalTooSlow {
                        estimate_ms,
                        deadline_ms,
                    }
                } else {
                    Reason::LocalFits {
                        estimate_ms,
                        deadline_ms,
                    }
                })
            }
            // No deadline (or no estimate): the local tier is never "too slow".
            (deadline_ms, estimate_ms) => (!*want).then_some(Reason::LocalNotLimited {
                deadline_ms,
                estimate_ms,
            }),
        },
        Condition::BudgetLeftLt(threshold) => s
            .budget_left_usd
            .filter(|left| left < threshold)
            .map(|left_usd| Reason::BudgetLow {
                left_usd,
                threshold_usd: *threshold,
            }),
        Condition::Network(n) => (s.network == *n).then_some(match n {
            Network::Online => Reason::Online,
            Network::Offline => Reason::Offline,
        }),
        Condition::CloudHealth(states) => {
            states
                .contains(&s.cloud_health)
                .then_some(match s.cloud_health {
                    CloudHealth::Healthy => Reason::CloudHealthy,
                    health => Reason::CloudUnhealthy { health },
                })
        }
        Condition::TagsAny(tags) => f
            .tags
            .iter()
            .find(|t| tags.contains(t))
            .map(|tag| Reason::TagMatched { tag: tag.clone() }),
        Condition::Task(tasks) => f
            .task
            .as_ref()
            .filter(|t| tasks.contains(t))
            .map(|task| Reason::TaskMatched { task: task.clone() }),
    };
    match reason {
        Some(r) => {
            reasons.push(r);
            true
        }
        None => false,
    }
}

/// The gates, in order. The local gate: with no local model, a plan that may use the cloud
/// goes there (see [`without_local`]). The cloud gate: a plan that uses the cloud is turned
/// local (or refused) when the cloud cannot be used — budget exhausted, not configured,
/// offline, breaker open; a plan pinned to the cloud is never turned local: it fails (or is
/// refused) instead. A local plan decided while no local model is there says so.
fn gate(
    policy: &CompiledPolicy,
    rule: &str,
    plan: Plan,
    reasons: Vec<Reason>,
    s: &Signals,
) -> Decision {
    let mut decision = gates(policy, rule, plan, reasons, s);
    let said = decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::LocalUnavailable { .. }));
    if !s.local_available && matches!(decision.plan, Plan::Local { .. }) && !said {
        decision.reasons.push(local_unavailable());
    }
    decision
}

fn local_unavailable() -> Reason {
    Reason::LocalUnavailable {
        why: "no local model installed or loaded".into(),
    }
}

fn gates(
    policy: &CompiledPolicy,
    rule: &str,
    plan: Plan,
    mut reasons: Vec<Reason>,
    s: &Signals,
) -> Decision {
    // No local model (not installed, or a build without the local tier): a plan that may use
    // the cloud goes there now, said up front, instead of failing locally and falling back.
    // A pinned local plan stays local (and fails with the reason): privacy first.
    let plan = match without_local(&plan) {
        Some(cloud) if !s.local_available => {
            reasons.push(local_unavailable());
            cloud
        }
        _ => plan,
    };
    if !plan.uses_cloud() {
        return Decision::new(rule, plan, reasons);
    }
    let pinned = matches!(plan, Plan::Cloud { pin: true, .. });
    // Exhausted for this request: nothing left, or less than its call would reserve (the
    // ledger would refuse the reservation).
    let exhausted = s.budget_left_usd.filter(|&left| {
        left <= rust_decimal::Decimal::ZERO || s.cloud_call_usd.is_some_and(|call| call > left)
    });
    if let Some(left_usd) = exhausted {
        let refuse = pinned || policy.budget.on_exhausted == OnExhausted::Refuse;
        reasons.push(Reason::BudgetExhausted {
            action: if refuse { "refuse" } else { "local" }.into(),
            left_usd,
            call_usd: s.cloud_call_usd,
        });
        if refuse {
            let message = match s.cloud_call_usd {
                Some(call) if left_usd > rust_decimal::Decimal::ZERO => format!(
                    "the cloud budget has ${left_usd} left, and this request's cloud call \
                     reserves ${call}"
                ),
                _ => "the cloud budget is exhausted".into(),
            };
            let refused = Plan::Refuse { message };
            // An answer already cached under the rule's plan costs nothing: it is served.
            return Decision::new(rule, refused, reasons).replaying(&plan);
        }
        return Decision::new(rule, Plan::Local { pin: true }, reasons);
    }
    let blocked = if !s.cloud_available {
        Some(Reason::CloudUnavailable {
            why: "no cloud tier configured or no API key".into(),
        })
    } else if s.network == Network::Offline {
        Some(Reason::Offline)
    } else if s.cloud_health == CloudHealth::Down {
        Some(Reason::CloudUnhealthy {
            health: CloudHealth::Down,
        })
    } else {
        None
    };
    match blocked {
        Some(why) if !pinned => {
            reasons.push(why);
            Decision::new(rule, Plan::Local { pin: true }, reasons)
        }
        Some(why) => {
            reasons.push(why);
            Decision::new(rule, plan, reasons)
        }
        None => Decision::new(rule, plan, reasons),
    }
}

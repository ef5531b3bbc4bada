//! Running a policy's own `[[test]]` cases: prompt + context → expected route and rule.

use super::compile::{CompiledPolicy, PolicyTest};
use super::eval::decide;
use crate::decision::Decision;
use crate::inspect::inspect;
use crate::request::Request;
use crate::signals::Signals;

/// The result of one `[[test]]` case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// The case.
    pub case: PolicyTest,
    /// What the policy decided.
    pub decision: Decision,
    /// True when route (and rule, if given) matched.
    pub passed: bool,
}

/// The request a test case describes.
pub fn case_request(case: &PolicyTest) -> Request {
    let mut req = Request::new(case.prompt.clone());
    req.tags = case.tags.clone();
    req.task = case.task.clone();
    req.deadline = case.deadline_ms.map(std::time::Duration::from_millis);
    req
}

/// The signals a test case describes; latency estimates come from the policy's `[latency]`.
pub fn case_signals(policy: &CompiledPolicy, case: &PolicyTest, prompt_tokens: u32) -> Signals {
    Signals {
        network: case.network,
        cloud_health: case.cloud_health,
        budget_left_usd: case.budget_left_usd,
        cloud_call_usd: policy
            .cloud
            .as_ref()
            .map(|c| c.call_estimate(prompt_tokens, None)),
        cloud_available: case.cloud_available,
        local_available: case.local_available,
        latency: crate::stats::StatsRecorder::default().latency_estimates(
            &policy.latency,
            prompt_tokens,
            policy.local.max_new_tokens,
        ),
    }
}

/// Runs every `[[test]]` case of a policy.
pub fn run_cases(policy: &CompiledPolicy) -> Vec<CaseOutcome> {
    policy
        .tests
        .iter()
        .map(|case| {
            let features = inspect(policy, &case_request(case));
            let signals = case_signals(policy, case, features.prompt_tokens);
            let decision = decide(policy, &features, &signals);
            let passed = decision.route() == case.expect_route
                && case
                    .expect_rule
                    .as_ref()
                    .is_none_or(|r| *r == decision.rule);
            CaseOutcome {
                case: case.clone(),
                decision,
                passed,
            }
        })
        .collect()
}

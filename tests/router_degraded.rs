//! What a failure leaves behind, against a real HTTP provider on 127.0.0.1 and a real sled
//! home: an answer that stood in for a failed tier is not cached, a cloud answer cut short is
//! charged to the budget, a refused call is not.
#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgeroute::backend::cloud::{CloudBackend, CloudConfig};
use edgeroute::decision::Reason;
use edgeroute::ledger::{BudgetLimits, SledLedger};
use edgeroute::request::{Attempt, Response, Usage};
use edgeroute::{Request, Route, Router};
use rust_decimal::Decimal;
use support::echo::EchoModel;
use support::{Behavior, FakeProvider};

/// $1,000 per million tokens both ways: a call's estimate is visible in the ledger.
const POLICY: &str = "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1000\n\
                      output_usd_per_mtok = 1000\n[budget]\ndaily_usd = \"100\"\n\
                      [defaults]\nroute = \"cloud\"\n";

fn router(home: &std::path::Path, fake: &FakeProvider, local: Arc<EchoModel>) -> Router {
    router_with(POLICY, home, fake, local)
}

fn router_with(
    policy: &str,
    home: &std::path::Path,
    fake: &FakeProvider,
    local: Arc<EchoModel>,
) -> Router {
    router_for(policy, home, fake.openai_config(), local)
}

fn router_for(
    policy: &str,
    home: &std::path::Path,
    cloud: CloudConfig,
    local: Arc<EchoModel>,
) -> Router {
    Router::builder()
        .policy_str(policy)
        .local_backend(local)
        .cloud_backend(Arc::new(CloudBackend::new(cloud).unwrap()))
        .home(home)
        .cache_key([3; 32])
        .build()
        .unwrap()
}

/// `POLICY` with a hedge as its default route.
fn hedge_policy(first: &str, after_ms: u64) -> String {
    POLICY.replace(
        "route = \"cloud\"",
        &format!("route = \"hedge\"\nfirst = \"{first}\"\nafter_ms = {after_ms}"),
    )
}

/// The response's failed cloud attempt, which must have been charged its estimate (prompt +
/// 100 output tokens at $0.001: more than $0.10).
fn charged_cloud_attempt(resp: &Response) -> &Attempt {
    let cloud = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Cloud)
        .unwrap();
    assert!(cloud.error.is_some());
    assert!(cloud.cost.estimated);
    assert!(cloud.cost.usd > Decimal::new(1, 1), "{}", cloud.cost.usd);
    cloud
}

fn spent_today(home: &std::path::Path) -> Decimal {
    let db = edgeroute::cache::open_db(&edgeroute::home::db_dir(home)).unwrap();
    let limits = BudgetLimits {
        daily_usd: Some(Decimal::new(100, 0)),
        monthly_usd: None,
    };
    let ledger = SledLedger::open(&db, limits).unwrap();
    ledger.status_at(SystemTime::now()).unwrap().spent_today
}

#[tokio::test]
async fn an_answer_standing_in_for_a_failed_cloud_is_not_cached() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router(home.path(), &fake, local.clone());

    fake.set_behavior(Behavior::Status(500));
    let first = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(first.route, Route::Local);
    assert!(first.decision.is_degraded(), "{}", first.decision);
    assert!(first
        .decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::Fallback { from, .. } if from == "cloud")));

    // The cloud is back: the same question goes where its rule sends it, not to the
    // stand-in answer.
    fake.set_behavior(Behavior::Ok);
    let second = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(second.route, Route::Cloud);
    assert!(!second.decision.is_degraded());
    // That answer is the rule's own: cached.
    let third = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(third.route, Route::Cache);
    assert_eq!(local.calls(), 1);
}

#[tokio::test]
async fn a_cloud_answer_cut_short_is_charged_its_estimate_and_a_refused_one_nothing() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router(home.path(), &fake, local.clone());

    // Refused with a server error (retried, then given up): the provider bills nothing, nor does the ledger.
    fake.set_behavior(Behavior::Status(500));
    let refused = r
        .complete(Request::new("Explain monads.").with_max_tokens(100))
        .await
        .unwrap();
    assert_eq!(refused.route, Route::Local);
    assert!(refused.cost.usd.is_zero());

    // Accepted, first token sent, then the connection drops: the call was billed for what it
    // produced, so the budget counts its estimate (prompt + max_tokens).
    fake.set_behavior(Behavior::ResetMidBody);
    let cut = r
        .complete(Request::new("Explain functors.").with_max_tokens(100))
        .await
        .unwrap();
    assert_eq!(cut.route, Route::Local, "{}", cut.decision);
    let cloud = charged_cloud_attempt(&cut);
    assert_eq!(cut.cost.usd, cloud.cost.usd);
    drop(r);
    assert_eq!(spent_today(home.path()), cloud.cost.usd);
}

#[tokio::test]
async fn a_hedged_cloud_leg_cut_short_is_charged_its_estimate() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    // The cloud starts; the device joins at once when it fails.
    let policy = hedge_policy("cloud", 60_000);
    let r = router_with(&policy, home.path(), &fake, local.clone());
    fake.set_behavior(Behavior::ResetMidBody);
    let resp = r
        .complete(Request::new("Explain functors.").with_max_tokens(100))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    let cloud = charged_cloud_attempt(&resp);
    drop(r);
    assert_eq!(spent_today(home.path()), cloud.cost.usd);
}

#[tokio::test]
async fn a_hedge_whose_tiers_both_fail_still_charges_the_accepted_cloud_call() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    local.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let policy = hedge_policy("local", 60_000);
    let r = router_with(&policy, home.path(), &fake, local.clone());
    fake.set_behavior(Behavior::ResetMidBody);
    let err = r
        .complete(Request::new("Explain functors.").with_max_tokens(100))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("local"), "{err}");
    drop(r);
    let spent = spent_today(home.path());
    assert!(spent > Decimal::new(1, 1), "{spent}");
}

#[tokio::test]
async fn a_hedge_tier_failing_after_the_delay_is_a_fallback_too() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    local.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // The cloud starts and is slow to its first token; the device joins after 1 ms and fails.
    let policy = hedge_policy("cloud", 1);
    let r = router_with(&policy, home.path(), &fake, local.clone());
    fake.set_behavior(Behavior::Trickle(std::time::Duration::from_millis(30)));
    let resp = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud);
    assert!(
        resp.decision
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::Fallback { from, .. } if from == "local")),
        "{}",
        resp.decision
    );
    // Like any answer that stood in, it is not cached.
    fake.set_behavior(Behavior::Ok);
    local.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_ne!(again.route, Route::Cache);
}

/// A cloud config whose first token must come within 200 ms, with one retry.
fn impatient(fake: &FakeProvider) -> CloudConfig {
    let mut cfg = fake.openai_config();
    cfg.first_token_timeout = Duration::from_millis(200);
    cfg.retry.max_retries = 1;
    cfg
}

/// One cloud attempt's estimate for `request` under `POLICY`'s prices: the prompt plus the
/// request's `max_tokens` of output.
fn estimate(request: &Request) -> Decimal {
    let policy = edgeroute::policy::compile_str(POLICY, std::path::Path::new("<test>")).unwrap();
    let features = edgeroute::inspect::inspect(&policy, request);
    policy.cloud.unwrap().cost(Usage::new(
        u64::from(features.prompt_tokens),
        u64::from(request.params.max_tokens.unwrap()),
    ))
}

/// `POLICY` with its daily limit at `limit` instead of $100.
fn with_daily_limit(limit: Decimal) -> String {
    let tight = POLICY.replace("daily_usd = \"100\"", &format!("daily_usd = \"{limit}\""));
    assert_ne!(tight, POLICY);
    tight
}

/// The provider accepted the first attempt (HTTP 200), but its first token came too late and
/// the attempt was retried: the provider may bill both. What a request costs the budget is
/// its answer plus `attempts` estimates (prompt + the request's `max_tokens` each).
fn answer_plus_estimates(r: &Router, request: &Request, usage: Usage, attempts: u32) -> Decimal {
    let cloud = r.policy().cloud.as_ref().unwrap();
    cloud.cost(usage) + estimate(request) * Decimal::from(attempts)
}

/// Every attempt the provider accepted is charged, not only the one that answered: a first
/// attempt accepted (200) whose first token is late, then a retry that answers, costs the
/// answer plus the first attempt's estimate — in the response, the statistics and the ledger.
/// When no attempt answers, each accepted one is charged its estimate. (On a multi-threaded
/// runtime: the retry's reservation is made durable off the runtime's threads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_attempt_of_a_retried_cloud_call_is_charged() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router_for(POLICY, home.path(), impatient(&fake), local.clone());

    // Accepted, then every event (the first token included) comes a second apart.
    fake.push_behaviors([Behavior::Trickle(Duration::from_secs(1))]);
    let request = Request::new("Explain functors.").with_max_tokens(100);
    let resp = r.complete(request.clone()).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 2);
    let answered = answer_plus_estimates(&r, &request, resp.usage, 1);
    assert_eq!(resp.cost.usd, answered);
    assert!(resp.cost.estimated);
    assert_eq!(r.stats().cloud_spend_usd, answered);

    // Both attempts accepted, neither answers: the device answers, and the budget is charged
    // both estimates.
    fake.set_behavior(Behavior::Trickle(Duration::from_secs(1)));
    let request = Request::new("Explain monads.").with_max_tokens(100);
    let resp = r.complete(request.clone()).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 4);
    let unanswered = answer_plus_estimates(&r, &request, Usage::default(), 2);
    assert_eq!(charged_cloud_attempt(&resp).cost.usd, unanswered);
    drop(r);
    assert_eq!(spent_today(home.path()), answered + unanswered);
}

/// A budget with room for one attempt's estimate, not two: once the provider accepted an
/// attempt, the call is not retried, since the retry could be billed past the limit (with room
/// for more, it is retried: the test above). Spending stays within the limit.
#[tokio::test]
async fn a_call_is_not_retried_past_what_the_budget_could_reserve() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let request = Request::new("Explain functors.").with_max_tokens(100);
    let estimate = estimate(&request);
    let limit = estimate * Decimal::new(15, 1);
    let tight = with_daily_limit(limit);
    let home = tempfile::tempdir().unwrap();
    let r = router_for(&tight, home.path(), impatient(&fake), local.clone());

    // Accepted, then a first token too late for the 200 ms limit: a retryable failure.
    fake.set_behavior(Behavior::Trickle(Duration::from_secs(1)));
    let resp = r.complete(request.clone()).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 1, "retried past the budget");
    assert_eq!(charged_cloud_attempt(&resp).cost.usd, estimate);
    drop(r);
    let spent = spent_today(home.path());
    assert_eq!(spent, estimate);
    assert!(spent <= limit, "{spent} spent, limit {limit}");
}

/// A request that fails after the provider accepted its attempts reports their cost in the
/// statistics as the ledger charges it (`stats` had said $0 while `budget` said more).
#[tokio::test]
async fn a_failed_request_counts_what_its_accepted_attempts_cost() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let policy = POLICY.replace("route = \"cloud\"", "route = \"cloud\"\npin = true");
    let r = router_for(
        &policy,
        home.path(),
        impatient(&fake),
        Arc::new(EchoModel::default()),
    );
    fake.set_behavior(Behavior::Trickle(Duration::from_secs(1)));
    let request = Request::new("Explain monads.").with_max_tokens(100);
    assert!(r.complete(request.clone()).await.is_err());
    assert_eq!(fake.requests_received(), 2);
    let charged = answer_plus_estimates(&r, &request, Usage::default(), 2);
    assert_eq!(r.stats().failures, 1);
    assert_eq!(r.stats().cloud_spend_usd, charged);
    drop(r);
    assert_eq!(spent_today(home.path()), charged);
    // The persisted statistics (`edgeroute stats`) agree.
    let db = edgeroute::cache::open_db(&edgeroute::home::db_dir(home.path())).unwrap();
    let persisted = edgeroute::stats::PersistedStats::open(&db).unwrap().load();
    assert_eq!(persisted.cloud_spend_usd, charged);
}

/// Retries reserve their estimate only when they happen: two calls at once fit a budget with
/// room for two estimates (reserving every possible retry up front had kept the second out).
#[tokio::test]
async fn concurrent_calls_share_a_budget_by_first_attempts() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let request = Request::new("Explain functors.").with_max_tokens(100);
    let tight = with_daily_limit(estimate(&request) * Decimal::new(25, 1));
    let home = tempfile::tempdir().unwrap();
    let r = router_for(&tight, home.path(), fake.openai_config(), local.clone());
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(50)));
    let (a, b) = tokio::join!(r.complete(request.clone()), r.complete(request.clone()));
    for resp in [a.unwrap(), b.unwrap()] {
        assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    }
    assert_eq!(local.calls(), 0);
}

/// The same for a hedge's cloud leg: retried after an accepted attempt, it answers, and costs
/// its answer plus the first attempt's estimate.
#[tokio::test]
async fn a_hedged_cloud_leg_is_charged_every_attempt_the_provider_accepted() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let policy = hedge_policy("cloud", 60_000);
    let r = router_for(&policy, home.path(), impatient(&fake), local.clone());
    fake.push_behaviors([Behavior::Trickle(Duration::from_secs(1))]);
    let request = Request::new("Explain functors.").with_max_tokens(100);
    let resp = r.complete(request.clone()).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 2);
    assert_eq!(local.calls(), 0);
    let expected = answer_plus_estimates(&r, &request, resp.usage, 1);
    assert_eq!(resp.cost.usd, expected);
    drop(r);
    assert_eq!(spent_today(home.path()), expected);
}

/// A request whose deadline passes during the cloud call fails with the deadline's timeout,
/// timed from the request's start, and does not fall back: the local tier would fail at once
/// (no time left), and the app would get "all failed", which `is_timeout()` does not see.
#[tokio::test]
async fn a_deadline_that_passes_in_the_cloud_is_final() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(3)));
    let home = tempfile::tempdir().unwrap();
    let local = Arc::new(EchoModel::default());
    let r = router(home.path(), &fake, local.clone());
    let deadline = Duration::from_millis(300);
    let err = r
        .complete(Request::new("hello").with_deadline(deadline))
        .await
        .unwrap_err();
    match &err {
        edgeroute::Error::Timeout { phase, elapsed } => {
            assert_eq!(*phase, edgeroute::error::TimeoutPhase::Deadline, "{err}");
            assert!(*elapsed >= deadline, "{elapsed:?}");
        }
        other => panic!("expected the deadline's timeout, got {other}"),
    }
    assert!(err.is_timeout());
    assert!(err.to_string().contains("Request::with_deadline"), "{err}");
    assert_eq!(local.calls(), 0, "fell back after the deadline");

    // With time left, the same failure still falls back to the device.
    fake.set_behavior(Behavior::Status(503));
    let resp = r
        .complete(Request::new("hello again").with_deadline(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!(local.calls(), 1);
}

/// Waits (`Router::settled`, up to 10 s) for the $10 reservation of a dropped cloud call to be
/// settled in the background, and checks it was settled at `earlier` (what earlier attempts
/// cost) plus a few cents: the prompt and what had arrived.
async fn assert_settled_at_what_arrived(r: &Router, home: &std::path::Path, earlier: Decimal) {
    tokio::time::timeout(Duration::from_secs(10), r.settled())
        .await
        .expect("the reservation was not settled within 10 s");
    let spent = spent_today(home);
    assert!(
        spent > earlier && spent < earlier + Decimal::new(5, 2),
        "{spent} spent; the earlier attempts cost {earlier}"
    );
    // The statistics count what the ledger charged (the dropped request recorded nothing
    // else): they used to say $0.
    assert_eq!(r.stats().cloud_spend_usd, spent);
}

/// A cloud answer dropped mid-stream (an app's stop button) is charged the prompt and what
/// was streamed, not the whole estimate (prompt + `max_tokens` of output), which stayed
/// counted as spent for good.
#[tokio::test]
async fn a_cloud_answer_dropped_mid_stream_is_charged_what_was_streamed() {
    use futures::StreamExt;
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(300)));
    let r = router(home.path(), &fake, Arc::new(EchoModel::default()));
    // 10,000 output tokens at $0.001 each: a $10 estimate, reserved while the call runs.
    let mut stream = r.stream(Request::new("Tell me a story.").with_max_tokens(10_000));
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, edgeroute::RouterEvent::Delta(_)));
    assert!(spent_today(home.path()) >= Decimal::from(10));
    drop(stream);
    assert_settled_at_what_arrived(&r, home.path(), Decimal::ZERO).await;
}

/// A cloud answer cut off by its runtime shutting down (an app exiting mid-answer) is settled
/// as a dropped one is: the settlement task it spawned had never run, leaving the whole
/// estimate counted as spent for good.
#[test]
fn a_cloud_answer_cut_off_by_the_runtime_shutting_down_is_settled() {
    use futures::StreamExt;
    let home = tempfile::tempdir().unwrap();
    let provider = tokio::runtime::Runtime::new().unwrap();
    let fake = provider.block_on(FakeProvider::start());
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(300)));
    let app = tokio::runtime::Runtime::new().unwrap();
    let r = app.block_on(async { router(home.path(), &fake, Arc::new(EchoModel::default())) });
    let stream = app.block_on(async {
        let mut stream = r.stream(Request::new("Tell me a story.").with_max_tokens(10_000));
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, edgeroute::RouterEvent::Delta(_)));
        stream
    });
    assert!(spent_today(home.path()) >= Decimal::from(10));
    // The app's runtime ends while the answer is still coming.
    drop(app);
    drop(stream);
    let spent = spent_today(home.path());
    assert!(spent < Decimal::new(5, 2), "{spent} still counted");
    drop(r);
    drop(fake);
}

/// A call dropped mid-answer after a retry is charged what arrived plus the estimate of the
/// attempt before, which the provider accepted and may bill.
#[tokio::test]
async fn a_dropped_retried_call_is_charged_its_earlier_accepted_attempt() {
    use futures::StreamExt;
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    // Accepted, but its first token is later than the 200 ms limit: retried; the retry answers
    // slowly, and the request is dropped at its first words.
    fake.push_behaviors([Behavior::Trickle(Duration::from_secs(1))]);
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(40)));
    fake.set_reply(
        "Once upon a time there was a dragon who learned to cook for the whole village.",
    );
    let local = Arc::new(EchoModel::default());
    local.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = router_for(POLICY, home.path(), impatient(&fake), local);
    let request = Request::new("Tell me a story.").with_max_tokens(10_000);
    let earlier = estimate(&request);
    let mut stream = r.stream(request);
    loop {
        match stream.next().await.unwrap().unwrap() {
            edgeroute::RouterEvent::Delta(d) if !d.is_empty() => break,
            edgeroute::RouterEvent::Delta(_) => {}
            edgeroute::RouterEvent::Done(_) => panic!("answered before it was dropped"),
        }
    }
    assert_eq!(fake.requests_received(), 2);
    drop(stream);
    assert_settled_at_what_arrived(&r, home.path(), earlier).await;
}

/// The same for a hedge whose cloud leg is answering when the request is dropped: the
/// reservation is settled at the prompt and what arrived, not kept at the whole estimate.
#[tokio::test]
async fn a_hedge_dropped_while_the_cloud_answers_is_charged_what_arrived() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(200)));
    // The cloud starts; the device would join only after a minute.
    let policy = hedge_policy("cloud", 60_000);
    let local = Arc::new(EchoModel::default());
    let r = router_with(&policy, home.path(), &fake, local.clone());
    let request = Request::new("Tell me a story.").with_max_tokens(10_000);
    let dropped = tokio::time::timeout(Duration::from_millis(700), r.complete(request)).await;
    assert!(dropped.is_err(), "the hedge finished before it was dropped");
    assert_eq!(local.calls(), 0);
    assert_settled_at_what_arrived(&r, home.path(), Decimal::ZERO).await;
}

/// A hedge ends at the request's deadline even when one leg fails and the other never starts
/// answering (a local model still loading, a custom backend that hangs): the request used to
/// wait for the second leg without bound.
#[tokio::test]
async fn a_hedge_whose_legs_fail_and_hang_ends_at_the_deadline() {
    for first in ["local", "cloud"] {
        let home = tempfile::tempdir().unwrap();
        let fake = FakeProvider::start().await;
        fake.set_behavior(Behavior::Status(401));
        let local = Arc::new(EchoModel::default());
        local.stall.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = router_with(&hedge_policy(first, 20), home.path(), &fake, local.clone());
        let request = Request::new("hello").with_deadline(Duration::from_millis(300));
        let err = tokio::time::timeout(Duration::from_secs(20), r.complete(request))
            .await
            .unwrap_or_else(|_| panic!("first = {first}: the request outlived its deadline"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                edgeroute::Error::Timeout {
                    phase: edgeroute::error::TimeoutPhase::Deadline,
                    ..
                }
            ),
            "first = {first}: {err}"
        );
        assert_eq!(fake.requests_received(), 1, "first = {first}");
        assert_eq!(local.calls(), 1, "first = {first}");
    }
}

/// A device answer that won a hedge after the cloud leg was accepted (and charged its $10
/// estimate) saved nothing: the estimated savings are net of what the request spent. They used
/// to count the answer's whole cloud price as saved on top of the spend.
#[tokio::test]
async fn savings_are_net_of_what_the_request_spent_on_the_cloud() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(300)));
    // The local leg starts 500 ms in: long after the cloud accepted the call, long before
    // its trickled answer ends.
    let r = router_with(
        &hedge_policy("cloud", 500),
        home.path(),
        &fake,
        Arc::new(EchoModel::default()),
    );
    let resp = r
        .complete(Request::new("Tell me a story.").with_max_tokens(10_000))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert!(resp.cost.usd >= Decimal::from(10), "{}", resp.cost.usd);
    let stats = r.stats();
    assert_eq!(stats.cloud_spend_usd, resp.cost.usd);
    assert_eq!(stats.estimated_savings_usd, Decimal::ZERO);
}

/// A request dropped after its cloud call was charged and settled (here: accepted, cut short,
/// then a local fallback that the caller abandons) still counts that charge in the
/// statistics, as the ledger does: they said $0.
#[tokio::test]
async fn a_request_dropped_after_a_settled_cloud_charge_counts_it() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::TruncatedStream);
    let local = Arc::new(EchoModel::default());
    local.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = router_with(
        &POLICY.replace(
            "output_usd_per_mtok",
            "max_retries = 0\noutput_usd_per_mtok",
        ),
        home.path(),
        &fake,
        local.clone(),
    );
    let dropped =
        tokio::time::timeout(Duration::from_millis(500), r.complete(Request::new("hi"))).await;
    assert!(dropped.is_err(), "the request ended before it was dropped");
    assert_eq!((fake.requests_received(), local.calls()), (1, 1));
    tokio::time::timeout(Duration::from_secs(10), r.settled())
        .await
        .unwrap();
    let spent = spent_today(home.path());
    assert!(spent > Decimal::ZERO);
    assert_eq!(r.stats().cloud_spend_usd, spent);
}

//! The router with the real local model (ONNX Runtime, installed by `python3 scripts/setup.py`)
//! and a real HTTP provider on 127.0.0.1: a deadline picks the tier that can meet it, a cascade
//! escalates only when the measured confidence is under the rule's threshold, a hedge returns
//! the faster tier and cancels the loser, an exhausted budget stops cloud calls, and the
//! statistics add up.
//!
//! One `LocalBackend` serves the whole binary (ONNX Runtime allows one environment per process),
//! and the tests take turns: latency figures and `active_generations()` only mean something
//! when nothing else is generating.
#![cfg(all(feature = "onnx", feature = "cloud"))]

mod support;

#[path = "support/conn_probe.rs"]
mod conn_probe;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgeroute::backend::cloud::{CloudBackend, CloudConfig};
use edgeroute::backend::local::LocalBackend;
use edgeroute::backend::{Backend, BackendCall, Generation};
use edgeroute::decision::Reason;
use edgeroute::request::{ConfidenceStat, GenerationParams, Message, Usage};
use edgeroute::{Error, Request, Response, Route, Router};
use rust_decimal::Decimal;
use support::{Behavior, FakeProvider};

/// Reply cap for most requests: enough for a first sentence, short enough to keep the file fast.
const MAX_TOKENS: u32 = 16;

/// `[cloud]` with the prices every cost below is checked against.
const CLOUD: &str = "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = \"0.15\"\noutput_usd_per_mtok = \"0.60\"\n";

/// USD for a cloud usage at the prices of [`CLOUD`].
fn price(usage: Usage) -> Decimal {
    (Decimal::from(usage.input_tokens) * Decimal::new(15, 2)
        + Decimal::from(usage.output_tokens) * Decimal::new(60, 2))
        / Decimal::from(1_000_000)
}

/// The one local backend of this binary.
fn local() -> &'static LocalBackend {
    static LOCAL: OnceLock<LocalBackend> = OnceLock::new();
    LOCAL.get_or_init(|| match LocalBackend::builder().commit() {
        Ok(b) => b,
        Err(e) => {
            panic!("local tier not installed or broken ({e}); run `python3 scripts/setup.py`")
        }
    })
}

/// Takes this test's turn; waits until no generation from an earlier test is still running.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = TURN.lock().await;
    let _ = local();
    assert!(
        generations_stop_within(Duration::from_secs(30)).await,
        "a generation from an earlier test never stopped"
    );
    guard
}

/// Polls until no local generation is running; false if one still runs after `limit`.
async fn generations_stop_within(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while local().active_generations() > 0 {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// The provider's config with timeouts far from anything these tests wait for.
fn cloud_config(fake: &FakeProvider) -> CloudConfig {
    let mut cfg = fake.openai_config();
    cfg.first_token_timeout = Duration::from_secs(60);
    cfg.total_timeout = Duration::from_secs(120);
    cfg
}

fn builder(policy: &str, cloud: CloudConfig) -> edgeroute::RouterBuilder {
    Router::builder()
        .policy_str(format!("{CLOUD}{policy}"))
        .local_backend(Arc::new(local().clone()))
        .cloud_backend(Arc::new(CloudBackend::new(cloud).unwrap()))
}

fn router(policy: &str, cloud: CloudConfig) -> Router {
    builder(policy, cloud).cache(false).build().unwrap()
}

/// The latency signals the router's next decision would see (for a short probe prompt).
fn latency_signals(r: &Router) -> edgeroute::signals::LatencyEstimates {
    let request = ask("Name a fruit.");
    let features = edgeroute::inspect::inspect(r.policy(), &request);
    r.signals(&request, &features).latency
}

fn ask(prompt: &str) -> Request {
    Request::new(prompt).with_max_tokens(MAX_TOKENS)
}

/// Runs the local model directly, exactly as the router will call it for `ask(prompt)`.
async fn observe(prompt: &str, max_tokens: u32) -> Generation {
    local()
        .generate(BackendCall {
            messages: vec![Message::user(prompt)],
            params: GenerationParams {
                max_tokens: Some(max_tokens),
                ..Default::default()
            },
            deadline: None,
        })
        .await
        .unwrap()
}

fn cascade_policy(threshold: f64, stat: &str, redact: bool) -> String {
    format!(
        "[defaults]\nroute = \"cascade\"\nmin_confidence = {threshold:?}\nconfidence_stat = \"{stat}\"\nredact = {redact}\n"
    )
}

/// What the policy did about an exhausted budget, when the decision says it was.
fn budget_exhausted(d: &edgeroute::decision::Decision) -> Option<&str> {
    d.reasons.iter().find_map(|r| match r {
        Reason::BudgetExhausted { action, .. } => Some(action.as_str()),
        _ => None,
    })
}

fn escalated(resp: &Response) -> Option<(ConfidenceStat, f32, f32)> {
    resp.decision.reasons.iter().find_map(|r| match r {
        Reason::Escalated {
            statistic,
            confidence,
            threshold,
        } => Some((*statistic, *confidence, *threshold)),
        _ => None,
    })
}

fn confident(resp: &Response) -> Option<(ConfidenceStat, f32, f32)> {
    resp.decision.reasons.iter().find_map(|r| match r {
        Reason::Confident {
            statistic,
            confidence,
            threshold,
        } => Some((*statistic, *confidence, *threshold)),
        _ => None,
    })
}

fn hedge_winner(resp: &Response) -> Option<String> {
    resp.decision.reasons.iter().find_map(|r| match r {
        Reason::HedgeWinner { winner } => Some(winner.clone()),
        _ => None,
    })
}

/// Records the highest `active_generations()` seen until dropped (a plain thread, so it keeps
/// sampling whatever the test's runtime is doing).
struct PeakWatcher {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakWatcher {
    fn start() -> PeakWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(local().active_generations(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        PeakWatcher {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

/// With the policy's `[latency]` model (no measurements yet): a deadline the local estimate
/// exceeds goes to the cloud without running the model; a generous one stays local.
#[tokio::test]
async fn deadline_from_the_latency_model_picks_the_tier() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[latency]\nlocal_prefill_ms_per_token = \"2\"\nlocal_decode_ms_per_token = \"100\"\ncloud_ms = 300\n\
         [[rule]]\nname = \"local-too-slow\"\nroute = \"cloud\"\n[rule.when]\nlocal_too_slow = true\n\
         [[rule]]\nname = \"local-fits\"\nroute = \"local\"\n[rule.when]\nlocal_too_slow = false\n\
         [defaults]\nroute = \"refuse\"\nmessage = \"no rule matched\"\n",
        cloud_config(&fake),
    );
    let prompt = "Give me a synonym for happy.";
    let features = edgeroute::inspect::inspect(r.policy(), &ask(prompt));
    let request = ask(prompt);
    let estimate = r.signals(&request, &features).latency.local_ms.unwrap();
    assert!(
        estimate >= 1600,
        "16 tokens at 100 ms each: estimate {estimate} ms"
    );

    // 1 s: the model says ~1.6 s, so the cloud answers and the local model never runs.
    let tokens_before = local().tokens_generated();
    let resp = r
        .complete(ask(prompt).with_deadline(Duration::from_millis(1000)))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.decision.rule, "local-too-slow");
    assert!(
        resp.decision.reasons.contains(&Reason::LocalTooSlow {
            estimate_ms: estimate,
            deadline_ms: 1000
        }),
        "{:?}",
        resp.decision.reasons
    );
    assert_eq!(resp.attempts.len(), 1);
    assert_eq!(resp.attempts[0].route, Route::Cloud);
    assert_eq!(fake.requests_received(), 1);
    assert_eq!(
        local().tokens_generated(),
        tokens_before,
        "the local model ran"
    );

    // 60 s: the local model fits and answers; the server sees nothing more.
    let resp = r
        .complete(ask(prompt).with_deadline(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(resp.decision.rule, "local-fits");
    assert!(resp.decision.reasons.iter().any(|r| matches!(
        r,
        Reason::LocalFits { estimate_ms, deadline_ms: 60_000 } if *estimate_ms == estimate
    )));
    assert!(!resp.text.trim().is_empty());
    assert!(local().tokens_generated() > tokens_before);
    assert_eq!(fake.requests_received(), 1);
}

/// Once the router has measured the local tier, the measurement replaces a pessimistic
/// `[latency]` model: a deadline the model said was impossible now stays local, and a deadline
/// under the measured estimate goes to the cloud with that estimate as the reason.
#[tokio::test]
async fn measured_local_latency_replaces_the_configured_model() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[latency]\nlocal_prefill_ms_per_token = \"50\"\nlocal_decode_ms_per_token = \"5000\"\n\
         [[rule]]\nname = \"warm-up\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"warm-up\"]\n\
         [[rule]]\nname = \"local-too-slow\"\nroute = \"cloud\"\n[rule.when]\nlocal_too_slow = true\n\
         [[rule]]\nname = \"local-fits\"\nroute = \"local\"\n[rule.when]\nlocal_too_slow = false\n\
         [defaults]\nroute = \"refuse\"\nmessage = \"no rule matched\"\n",
        cloud_config(&fake),
    );
    let prompt = "Name a fruit that is yellow.";
    let features = edgeroute::inspect::inspect(r.policy(), &ask(prompt));
    let request = ask(prompt);
    let modelled = r.signals(&request, &features).latency.local_ms.unwrap();
    assert!(modelled >= 80_000, "modelled {modelled} ms");
    let generous = Duration::from_secs(30);
    assert_eq!(
        r.explain(&ask(prompt).with_deadline(generous)).route(),
        "cloud",
        "before any measurement the model says 80 s"
    );

    let warm = r
        .complete(ask("Name a color of the sky.").with_tag("warm-up"))
        .await
        .unwrap();
    assert_eq!(warm.route, Route::Local);

    let measured = r.signals(&request, &features).latency.local_ms.unwrap();
    assert!(
        measured < modelled && measured < 30_000,
        "measured estimate {measured} ms (model {modelled} ms)"
    );
    let resp = r
        .complete(ask(prompt).with_deadline(generous))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert!(resp.decision.reasons.iter().any(|r| matches!(
        r,
        Reason::LocalFits { estimate_ms, .. } if *estimate_ms == measured
    )));
    assert_eq!(fake.requests_received(), 0);

    // A deadline of half the (updated) measured estimate: the cloud, for that reason.
    let measured = r.signals(&request, &features).latency.local_ms.unwrap();
    let tight = (measured / 2).max(1);
    let resp = r
        .complete(ask(prompt).with_deadline(Duration::from_millis(tight)))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert!(
        resp.decision.reasons.contains(&Reason::LocalTooSlow {
            estimate_ms: measured,
            deadline_ms: tight
        }),
        "{:?}",
        resp.decision.reasons
    );
    assert_eq!(fake.requests_received(), 1);
}

// ---------------------------------------------------------------------------------------------
// Cascade
// ---------------------------------------------------------------------------------------------

/// The threshold is set around the confidence the model actually has on this prompt: just
/// above it the request escalates (both attempts recorded, the cloud one priced), just below
/// it the local answer is kept and the server sees nothing.
#[tokio::test]
async fn cascade_escalates_below_the_threshold_and_keeps_confident_answers() {
    let _turn = turn().await;
    let prompt = "Who wrote the novel War and Peace?";
    let seen = observe(prompt, MAX_TOKENS).await;
    let conf = seen.confidence.expect("the model produced tokens");
    let c = conf.first_sentence;
    eprintln!(
        "observed confidence: first_sentence {c:.4}, mean {:.4}, min {:.4}",
        conf.mean, conf.min
    );
    let above = (f64::from(c) + 0.05).min(0.0);
    let below = f64::from(c) - 0.05;
    assert!(
        f64::from(c) < above,
        "confidence {c} is 0: pick another prompt"
    );

    // Just above: escalate.
    let fake = FakeProvider::start().await;
    let r = router(
        &cascade_policy(above, "first_sentence", false),
        cloud_config(&fake),
    );
    let resp = r.complete(ask(prompt)).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.text, support::DEFAULT_REPLY);
    let (stat, confidence, threshold) = escalated(&resp).expect("Escalated reason");
    assert_eq!(stat, ConfidenceStat::FirstSentence);
    assert!((confidence - c).abs() < 1e-3, "{confidence} vs {c}");
    assert!((f64::from(threshold) - above).abs() < 1e-5);
    assert!(confident(&resp).is_none());
    assert_eq!(resp.attempts.len(), 2, "{:?}", resp.attempts);
    let (l, cl) = (&resp.attempts[0], &resp.attempts[1]);
    assert_eq!(l.route, Route::Local);
    assert!(l.error.is_none());
    assert_eq!(l.cost.usd, Decimal::ZERO);
    assert_eq!(l.usage, seen.usage, "the local attempt is the observed run");
    assert!(l.confidence.is_some());
    assert!(l.elapsed >= l.first_token.expect("the local attempt's first token"));
    assert_eq!(cl.route, Route::Cloud);
    assert!(cl.error.is_none());
    assert!(cl.usage.input_tokens > 0 && cl.usage.output_tokens > 0);
    assert_eq!(cl.cost.usd, price(cl.usage));
    assert!(cl.cost.usd > Decimal::ZERO);
    assert!(cl.elapsed >= cl.first_token.expect("the cloud attempt's first token"));
    assert_eq!(resp.cost.usd, l.cost.usd + cl.cost.usd);
    assert_eq!(fake.requests_received(), 1);
    let stats = r.stats();
    assert_eq!(stats.escalations, 1);
    assert_eq!((stats.local, stats.cloud), (0, 1));

    // Just below: keep the local answer.
    let fake = FakeProvider::start().await;
    let r = router(
        &cascade_policy(below, "first_sentence", false),
        cloud_config(&fake),
    );
    let resp = r.complete(ask(prompt)).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(resp.text, seen.text, "greedy decoding is deterministic");
    let (_, confidence, threshold) = confident(&resp).expect("Confident reason");
    assert!((confidence - c).abs() < 1e-3);
    assert!((f64::from(threshold) - below).abs() < 1e-5);
    assert!(escalated(&resp).is_none());
    assert_eq!(resp.attempts.len(), 1);
    assert_eq!(resp.cost.usd, Decimal::ZERO);
    assert_eq!(fake.requests_received(), 0);
    assert_eq!(r.stats().escalations, 0);

    // The rule's statistic is the one compared: between this reply's minimum and its
    // first-sentence mean, `first_sentence` keeps the answer and `min` escalates.
    assert!(
        f64::from(c) - f64::from(conf.min) > 0.1,
        "the reply's statistics are too close to tell apart: {conf:?}"
    );
    {
        let mid = (f64::from(c) + f64::from(conf.min)) / 2.0;
        let fake = FakeProvider::start().await;
        let r = router(&cascade_policy(mid, "min", false), cloud_config(&fake));
        let resp = r.complete(ask(prompt)).await.unwrap();
        assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
        let (stat, confidence, _) = escalated(&resp).expect("Escalated reason");
        assert_eq!(stat, ConfidenceStat::Min);
        assert!((confidence - conf.min).abs() < 1e-3);
        assert_eq!(fake.requests_received(), 1);
    }
}

/// An escalated request is redacted like any cloud request: the provider sees placeholders,
/// the caller gets the real values back.
#[tokio::test]
async fn escalated_request_can_be_redacted() {
    let _turn = turn().await;
    let prompt = "Write a short note to jane.roe@example.com about lunch on Friday.";
    let c = observe(prompt, MAX_TOKENS)
        .await
        .confidence
        .expect("tokens")
        .first_sentence;
    let fake = FakeProvider::start().await;
    fake.set_reply("I will write to <EMAIL_1> today.");
    let r = router(
        &cascade_policy((f64::from(c) + 0.05).min(0.0), "first_sentence", true),
        cloud_config(&fake),
    );
    let resp = r.complete(ask(prompt)).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert!(escalated(&resp).is_some());
    assert!(resp
        .decision
        .reasons
        .contains(&Reason::Redacted { spans: 1 }));
    assert_eq!(resp.text, "I will write to jane.roe@example.com today.");
    let sent = fake.last_request().unwrap();
    let raw = String::from_utf8_lossy(&sent.raw);
    assert!(!raw.contains("jane.roe@example.com"), "{raw}");
    assert!(raw.contains("<EMAIL_1>"), "{raw}");
}

// ---------------------------------------------------------------------------------------------
// Hedging
// ---------------------------------------------------------------------------------------------

/// The cloud answers at once; the local model has not produced a token after 5 ms: the hedge
/// starts the cloud, takes its answer, and the local generation stops within moments.
#[tokio::test]
async fn hedge_cloud_wins_and_the_local_generation_is_cancelled() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[defaults]\nroute = \"hedge\"\nafter_ms = 5\n",
        cloud_config(&fake),
    );
    // A long reply cap: left alone, the local model would run for seconds.
    let max_tokens = 96;
    let tokens_before = local().tokens_generated();
    let watcher = PeakWatcher::start();
    let resp = r
        .complete(
            Request::new("Write a long story about a dragon who learns to bake bread.")
                .with_max_tokens(max_tokens),
        )
        .await
        .unwrap();
    let answered = Instant::now();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(hedge_winner(&resp).as_deref(), Some("cloud"));
    assert_eq!(resp.text, support::DEFAULT_REPLY);
    assert_eq!(fake.requests_received(), 1);
    let cloud = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Cloud)
        .expect("cloud attempt");
    assert_eq!(cloud.cost.usd, price(cloud.usage));
    assert_eq!(resp.cost.usd, cloud.cost.usd);
    // The cloud leg is streamed: its first token is timed like any other cloud call's.
    let cloud_first = cloud
        .first_token
        .expect("the winning cloud leg's first token");
    assert!(cloud_first <= cloud.elapsed, "{cloud:?}");
    assert!(resp.timings.first_token.is_some());
    assert_eq!(r.stats().cloud_first_token.samples, 1);

    // The local generation was running, and stops promptly.
    assert!(
        generations_stop_within(Duration::from_secs(3)).await,
        "the losing local generation is still running"
    );
    let stopped_after = answered.elapsed();
    assert!(watcher.peak() >= 1, "the local tier never started");
    let tokens_after = local().tokens_generated();
    assert!(
        tokens_after - tokens_before < u64::from(max_tokens),
        "the local generation ran to completion ({} tokens)",
        tokens_after - tokens_before
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        local().tokens_generated(),
        tokens_after,
        "tokens are still being generated after the answer"
    );
    eprintln!(
        "local generation stopped {stopped_after:?} after the cloud answer, {} tokens generated",
        tokens_after - tokens_before
    );
}

/// A local generation that loses a hedge still counts in the local first-token p95: nine
/// local answers leave the p95 undecided (it needs ten samples), and the cancelled tenth --
/// which did produce a first token before the slow cloud answered -- decides it.
#[tokio::test]
async fn a_cancelled_local_leg_still_feeds_the_first_token_p95() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let cloud_delay = Duration::from_millis(1500);
    fake.set_behavior(Behavior::SlowHeaders(cloud_delay));
    let r = router(
        "[[rule]]\nname = \"hedged\"\nroute = \"hedge\"\nafter_ms = 1\n         [rule.when]\ntags_any = [\"hedge\"]\n\
         [defaults]\nroute = \"local\"\n",
        cloud_config(&fake),
    );
    let p95 = || latency_signals(&r).local_first_token_p95_ms;
    for q in [
        "Name a color.",
        "Name an animal.",
        "Name a planet.",
        "Name a tree.",
        "Name a metal.",
        "Name a river.",
        "Name a sport.",
        "Name a flower.",
        "Name a bird.",
    ] {
        let resp = r.complete(ask(q).with_max_tokens(2)).await.unwrap();
        assert_eq!(resp.route, Route::Local);
    }
    assert_eq!(p95(), None, "nine samples must not give a p95 yet");

    // Left alone the local model would run for seconds; the cloud answers after 1.5 s.
    let resp = r
        .complete(
            Request::new("Write a long story about a dragon who learns to bake bread.")
                .with_max_tokens(400)
                .with_tag("hedge"),
        )
        .await
        .unwrap();
    assert_eq!(
        hedge_winner(&resp).as_deref(),
        Some("cloud"),
        "{}",
        resp.decision
    );
    let loser = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Local)
        .expect("the cancelled local attempt");
    assert!(
        loser
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("cancelled"),
        "{loser:?}"
    );
    let first = loser
        .first_token
        .expect("the local leg produced a first token before 1.5 s");
    assert!(first < loser.elapsed && first < cloud_delay, "{loser:?}");
    let p95 = p95().expect("the cancelled leg is the tenth sample");
    assert!(
        p95 as f64 >= first.as_secs_f64() * 1000.0 - 1.0,
        "p95 {p95} ms, loser's first token {first:?}"
    );
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

/// The cloud is slow to send its headers: the local model wins, the HTTP call is abandoned
/// (the connection closes before any byte of answer), and the router did not wait for it.
/// `after_ms = "p95"`: before enough local first tokens were seen, the hedge waits for the
/// local first-token estimate; after ten local answers it waits for their p95, which the
/// decision names and `stats()` shows.
#[tokio::test]
async fn hedge_after_p95_waits_for_the_observed_local_first_token() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[[rule]]\nname = \"hedged\"\nroute = \"hedge\"\nafter_ms = \"p95\"\n         [rule.when]\ntags_any = [\"hedge\"]\n\
         [defaults]\nroute = \"local\"\n",
        cloud_config(&fake),
    );
    let prompt = "Name a fruit that is red.";
    let delay = |resp: &edgeroute::decision::Decision| {
        resp.reasons.iter().find_map(|r| match r {
            Reason::HedgeDelay { after_ms, basis } => Some((*after_ms, basis.clone())),
            _ => None,
        })
    };
    let (_, basis) = delay(&r.explain(&ask(prompt).with_tag("hedge"))).expect("delay reason");
    assert!(basis.starts_with("local first-token estimate"), "{basis}");

    let questions = [
        "Name a color.",
        "Name an animal.",
        "Name a planet.",
        "Name a tree.",
        "Name a metal.",
        "Name a river.",
        "Name a sport.",
        "Name a flower.",
        "Name a bird.",
        "Name a fish.",
    ];
    let mut tier_ms = Vec::new();
    for q in questions {
        let resp = r.complete(ask(q)).await.unwrap();
        assert_eq!(resp.route, Route::Local);
        // The tier's own first token comes no later than the answer's (which adds inspect,
        // cache and decide).
        let tier = resp.attempts[0]
            .first_token
            .expect("the tier's first token");
        let answer = resp.timings.first_token.expect("the answer's first token");
        assert!(tier <= answer, "tier {tier:?} vs answer {answer:?}");
        tier_ms.push(tier.as_secs_f64() * 1000.0);
    }
    let s = r.stats();
    assert_eq!(s.local_first_token.samples, questions.len());
    let features = edgeroute::inspect::inspect(r.policy(), &ask(prompt));
    let request = ask(prompt);
    let p95 = r
        .signals(&request, &features)
        .latency
        .local_first_token_p95_ms
        .expect("p95 after ten local first tokens");
    // The signal is the tier's own first token; the stats measure from the request's start
    // (plus inspect, cache and decide), so the signal is never the later of the two.
    let answers_p95 = s.local_first_token.p95_ms;
    assert!(
        (p95 as f64) <= answers_p95.ceil() + 1.0,
        "signal p95 {p95} ms vs answers' p95 {answers_p95} ms"
    );
    // And it is the slow end of what the tier's attempts took (each sample is an attempt's
    // first token, less a model load the first one may include): not their minimum.
    let mut sorted = tier_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (middle, slowest) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    assert!(
        (p95 as f64) + 1.0 >= middle && (p95 as f64) <= slowest.ceil() + 1.0,
        "signal p95 {p95} ms vs the attempts' first tokens {sorted:?} ms"
    );

    let resp = r.complete(ask(prompt).with_tag("hedge")).await.unwrap();
    assert_eq!(
        delay(&resp.decision),
        Some((p95, "p95 of recent local first tokens".to_string()))
    );
    assert!(hedge_winner(&resp).is_some(), "{}", resp.decision);
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn hedge_local_wins_and_the_slow_http_call_is_dropped() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let slow = Duration::from_secs(20);
    fake.set_behavior(Behavior::SlowHeaders(slow));
    let probe = conn_probe::ConnProbe::start(fake.addr()).await;
    let r = router(
        "[defaults]\nroute = \"hedge\"\nafter_ms = 5\n",
        cloud_config(&fake).with_base_url(probe.url()),
    );
    let started = Instant::now();
    let resp = r
        .complete(ask("What is the boiling point of water?"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(hedge_winner(&resp).as_deref(), Some("local"));
    assert!(!resp.text.trim().is_empty());
    assert!(took < slow / 2, "the router waited for the cloud: {took:?}");
    assert_eq!(
        fake.requests_received(),
        1,
        "the hedge never started the cloud call"
    );
    let local_attempt = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Local)
        .expect("local attempt");
    assert!(local_attempt.confidence.is_some());
    cancelled_cloud_attempt_keeps_its_estimate(&resp);

    http_call_was_dropped(&probe).await;
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

/// The cloud attempt of a hedge the device won: cancelled, and its estimate stays counted (it
/// may have been billed), as in the ledger, marked as an estimate.
fn cancelled_cloud_attempt_keeps_its_estimate(resp: &Response) -> &edgeroute::request::Attempt {
    let cloud_attempt = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Cloud)
        .expect("cancelled cloud attempt");
    assert!(cloud_attempt
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("cancelled")));
    assert_eq!(resp.cost.usd, cloud_attempt.cost.usd);
    assert!(resp.cost.estimated);
    cloud_attempt
}

/// The HTTP call is dropped: its one connection closes with the request unanswered.
async fn http_call_was_dropped(probe: &conn_probe::ConnProbe) {
    let until = Instant::now() + Duration::from_secs(3);
    while (probe.abandoned() < 1 || probe.open() > 0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(probe.abandoned(), 1, "the cloud call was not dropped");
    assert_eq!(
        probe.open(),
        0,
        "a connection to the provider is still open"
    );
}

/// `first = "cloud"`: a cloud that streams its first token in time answers alone -- the local
/// model never runs.
#[tokio::test]
async fn hedge_starting_in_the_cloud_leaves_the_device_idle_when_the_cloud_is_quick() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[defaults]\nroute = \"hedge\"\nfirst = \"cloud\"\nafter_ms = 5000\n",
        cloud_config(&fake),
    );
    let tokens_before = local().tokens_generated();
    let watcher = PeakWatcher::start();
    let resp = r
        .complete(ask("Name a fruit that is yellow."))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(hedge_winner(&resp).as_deref(), Some("cloud"));
    assert_eq!(resp.text, support::DEFAULT_REPLY);
    assert_eq!(resp.attempts.len(), 1, "{:?}", resp.attempts);
    let cloud = &resp.attempts[0];
    assert_eq!(cloud.route, Route::Cloud);
    assert!(cloud.first_token.is_some());
    assert_eq!(resp.cost.usd, price(cloud.usage));
    assert_eq!(watcher.peak(), 0, "the local model ran");
    assert_eq!(local().tokens_generated(), tokens_before);
}

/// `first = "cloud"` with a cloud that sends nothing: after the delay the device starts, wins,
/// and the unanswered HTTP call is dropped; the cancelled call's estimate stays counted.
#[tokio::test]
async fn hedge_starting_in_the_cloud_falls_to_the_device_when_the_cloud_stalls() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let slow = Duration::from_secs(20);
    fake.set_behavior(Behavior::SlowHeaders(slow));
    let probe = conn_probe::ConnProbe::start(fake.addr()).await;
    let after = Duration::from_millis(300);
    let r = router(
        "[defaults]\nroute = \"hedge\"\nfirst = \"cloud\"\nafter_ms = 300\n",
        cloud_config(&fake).with_base_url(probe.url()),
    );
    let started = Instant::now();
    let resp = r
        .complete(ask("What is the boiling point of water?"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(hedge_winner(&resp).as_deref(), Some("local"));
    assert!(took < slow / 2, "the router waited for the cloud: {took:?}");
    assert_eq!(fake.requests_received(), 1);
    let local_attempt = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Local)
        .expect("local attempt");
    // The device started only after the delay: the cloud ran at least `after` longer.
    let cloud_attempt = cancelled_cloud_attempt_keeps_its_estimate(&resp);
    assert!(
        cloud_attempt.elapsed >= local_attempt.elapsed + after,
        "{:?}",
        resp.attempts
    );

    http_call_was_dropped(&probe).await;
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

/// The mirror of `a_cancelled_local_leg_still_feeds_the_first_token_p95`: with the cloud
/// first, a cloud call that loses to the device still counts in the cloud first-token p95 --
/// with how long it ran without a token -- so the stall that made the hedge fire is in the
/// delay the next cloud-first hedge waits for.
#[tokio::test]
async fn a_cancelled_cloud_leg_still_feeds_the_cloud_first_token_p95() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[defaults]\nroute = \"hedge\"\nfirst = \"cloud\"\nafter_ms = 300\n",
        cloud_config(&fake),
    );
    let p95 = || latency_signals(&r).cloud_first_token_p95_ms;
    for _ in 0..9 {
        let resp = r
            .complete(ask("Name a color.").with_max_tokens(2))
            .await
            .unwrap();
        assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    }
    assert_eq!(p95(), None, "nine samples must not give a p95 yet");
    // What the quick answers' first tokens took (their p95, from the response statistics).
    let quick = r.stats().cloud_first_token.p95_ms;
    assert!(quick > 0.0);

    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(20)));
    let resp = r
        .complete(ask("What is the boiling point of water?"))
        .await
        .unwrap();
    assert_eq!(
        hedge_winner(&resp).as_deref(),
        Some("local"),
        "{}",
        resp.decision
    );
    let loser = cancelled_cloud_attempt_keeps_its_estimate(&resp);
    assert_eq!(loser.first_token, None, "{loser:?}");
    let p95 = p95().expect("the cancelled cloud leg is the tenth sample");
    let ran_ms = loser.elapsed.as_secs_f64() * 1000.0;
    assert!(
        p95 as f64 >= ran_ms - 1.0 && p95 as f64 > quick,
        "p95 {p95} ms; the loser ran {ran_ms:.0} ms; quick answers' first-token p95 {quick:.0} ms"
    );
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

/// The other side of the rule: a second tier that is cancelled before its first token only
/// waited since the delay, which says little about its first token, so it is not counted --
/// nine quick cloud first tokens plus that short wait must not make a p95.
#[tokio::test]
async fn a_second_tier_cancelled_without_a_token_does_not_count() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    let r = router(
        "[[rule]]\nname = \"direct\"\nroute = \"cloud\"\n[rule.when]\ntags_any = [\"direct\"]\n\
         [defaults]\nroute = \"hedge\"\nafter_ms = 1\n",
        cloud_config(&fake),
    );
    let p95 = || latency_signals(&r).cloud_first_token_p95_ms;
    for _ in 0..9 {
        let resp = r
            .complete(ask("Name a color.").with_max_tokens(2).with_tag("direct"))
            .await
            .unwrap();
        assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    }
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(20)));
    // Local first; the cloud starts after 1 ms, sends nothing, and is cancelled.
    let resp = r
        .complete(ask("Name a color.").with_max_tokens(4))
        .await
        .unwrap();
    assert_eq!(
        hedge_winner(&resp).as_deref(),
        Some("local"),
        "{}",
        resp.decision
    );
    let loser = cancelled_cloud_attempt_keeps_its_estimate(&resp);
    assert_eq!(loser.first_token, None, "{loser:?}");
    assert_eq!(p95(), None, "the second tier's short wait was counted");
    assert!(generations_stop_within(Duration::from_secs(3)).await);
}

/// A first tier that fails outright hands the request to the other one at once, and the
/// response says so; the failed call is recorded and costs nothing.
#[tokio::test]
async fn hedge_falls_back_when_the_first_tier_fails() {
    let _turn = turn().await;
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(401));
    let r = router(
        "[defaults]\nroute = \"hedge\"\nfirst = \"cloud\"\nafter_ms = 5000\n",
        cloud_config(&fake),
    );
    let started = Instant::now();
    let resp = r.complete(ask("Name a color.")).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the hedge delay after the cloud had failed"
    );
    assert!(resp.decision.reasons.iter().any(
        |r| matches!(r, Reason::Fallback { from, error } if from == "cloud" && error.contains("401"))
    ), "{}", resp.decision);
    let routes: Vec<Route> = resp.attempts.iter().map(|a| a.route).collect();
    assert_eq!(routes, [Route::Cloud, Route::Local]);
    assert!(resp.attempts[0].error.is_some());
    assert!(resp.attempts[0].cost.usd.is_zero());
    assert!(resp.cost.usd.is_zero());
}

// ---------------------------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------------------------

/// Each cloud answer costs ~$0.16 against a $0.35 day: after a few calls the budget is
/// exhausted, the real local model answers with the reason, and the server count stops
/// growing. A router built on the same ledger with `on_exhausted = "refuse"` refuses instead.
#[tokio::test]
async fn exhausted_budget_stops_cloud_calls() {
    let _turn = turn().await;
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("word ".repeat(150).trim_end());
    let policy = |on_exhausted: &str| {
        format!(
            "[budget]\ndaily_usd = \"0.35\"\non_exhausted = \"{on_exhausted}\"\n[cache]\nmode = \"off\"\n\
             [defaults]\nroute = \"cloud\"\n"
        )
    };
    // $1000/Mtok: a 150-word answer costs ~$0.16.
    let r = Router::builder()
        .policy_str(format!(
            "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n{}",
            policy("local")
        ))
        .local_backend(Arc::new(local().clone()))
        .cloud_backend(Arc::new(CloudBackend::new(cloud_config(&fake)).unwrap()))
        .home(home.path())
        .build()
        .unwrap();
    let mut cloud_calls = 0;
    let mut spent = Decimal::ZERO;
    let mut first_local = None;
    for i in 0..8 {
        let before = fake.requests_received();
        let resp = r
            .complete(ask(&format!("Question number {i}: what is {i} plus {i}?")))
            .await
            .unwrap();
        spent += resp.cost.usd;
        match resp.route {
            Route::Cloud => {
                cloud_calls += 1;
                assert_eq!(fake.requests_received(), before + 1);
            }
            Route::Local => {
                first_local = Some(i);
                assert_eq!(
                    budget_exhausted(&resp.decision),
                    Some("local"),
                    "{}",
                    resp.decision
                );
                break;
            }
            Route::Cache => panic!("cache is off"),
        }
    }
    let first_local = first_local.expect("the budget never ran out");
    assert!(
        (1..=3).contains(&cloud_calls),
        "{cloud_calls} cloud calls before exhaustion"
    );
    assert_eq!(first_local, cloud_calls);
    let calls = fake.requests_received();
    assert_eq!(calls, cloud_calls);

    for i in 0..2 {
        let resp = r
            .complete(ask(&format!("Another question, {i}?")))
            .await
            .unwrap();
        assert_eq!(resp.route, Route::Local);
        assert_eq!(resp.attempts.len(), 1);
        assert_eq!(resp.attempts[0].route, Route::Local);
        assert!(!resp.text.trim().is_empty(), "the real model answered");
        assert_eq!(budget_exhausted(&resp.decision), Some("local"));
        assert_eq!(
            fake.requests_received(),
            calls,
            "a cloud call after exhaustion"
        );
    }
    assert_eq!(r.stats().cloud_spend_usd, spent);
    drop(r);

    // Same ledger, a policy that refuses when the budget is gone. (sled releases its lock
    // shortly after the last handle drops, from its background threads: retry briefly.)
    let until = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let built = Router::builder()
            .policy_str(format!(
                "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n{}",
                policy("refuse")
            ))
            .local_backend(Arc::new(local().clone()))
            .cloud_backend(Arc::new(CloudBackend::new(cloud_config(&fake)).unwrap()))
            .home(home.path())
            .build();
        match built {
            Ok(r) => break r,
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the ledger stayed locked after the first router was dropped: {e}"),
        }
    };
    let d = r.explain(&ask("Still there?"));
    assert_eq!(d.route(), "refuse");
    assert_eq!(budget_exhausted(&d), Some("refuse"));
    let tokens_before = local().tokens_generated();
    let err = r.complete(ask("Still there?")).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(fake.requests_received(), calls);
    assert_eq!(local().tokens_generated(), tokens_before);
    assert_eq!(r.stats().failures, 1);
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

/// A mixed run through one router: every answer is counted once under its route, the spend is
/// the sum of the responses' costs, escalations and cache hits match what the responses say.
#[tokio::test]
async fn stats_add_up() {
    let _turn = turn().await;
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    let hard = "Explain why the sky is blue.";
    let c = observe(hard, MAX_TOKENS)
        .await
        .confidence
        .expect("tokens")
        .first_sentence;
    let policy = format!(
        "[cache]\nmode = \"on\"\n\
         [[rule]]\nname = \"refused\"\nroute = \"refuse\"\nmessage = \"no\"\n[rule.when]\ntags_any = [\"refuse\"]\n\
         [[rule]]\nname = \"to-cloud\"\nroute = \"cloud\"\n[rule.when]\ntags_any = [\"cloud\"]\n\
         [[rule]]\nname = \"unsure\"\nroute = \"cascade\"\nmin_confidence = {:?}\nconfidence_stat = \"first_sentence\"\n\
         [rule.when]\ntags_any = [\"cascade\"]\n\
         [defaults]\nroute = \"local\"\n",
        (f64::from(c) + 0.05).min(0.0)
    );
    let r = builder(&policy, cloud_config(&fake))
        .home(home.path())
        .build()
        .unwrap();
    let requests = [
        ask("What is the capital of France?"),
        ask("What is the capital of France?"), // cache hit
        ask("Name a primary color."),
        ask("Summarize the plot of Hamlet.").with_tag("cloud"),
        ask(hard).with_tag("cascade"), // escalates
        ask(hard).with_tag("cascade"), // cache hit
    ];
    let mut responses = Vec::new();
    for req in requests {
        responses.push(r.complete(req).await.unwrap());
    }
    let err = r
        .complete(ask("Tell me a secret.").with_tag("refuse"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");

    let routes: Vec<Route> = responses.iter().map(|r| r.route).collect();
    assert_eq!(
        routes,
        [
            Route::Local,
            Route::Cache,
            Route::Local,
            Route::Cloud,
            Route::Cloud,
            Route::Cache
        ]
    );
    let count = |route| responses.iter().filter(|r| r.route == route).count() as u64;
    let s = r.stats();
    assert_eq!(s.requests, responses.len() as u64);
    assert_eq!(s.failures, 1);
    assert_eq!(s.requests, s.local + s.cloud + s.cache_hits);
    assert_eq!(
        (s.local, s.cloud, s.cache_hits),
        (
            count(Route::Local),
            count(Route::Cloud),
            count(Route::Cache)
        )
    );
    let escalations = responses.iter().filter(|r| escalated(r).is_some()).count() as u64;
    assert_eq!(escalations, 1);
    assert_eq!(s.escalations, escalations);
    let spend: Decimal = responses.iter().map(|r| r.cost.usd).sum();
    assert!(spend > Decimal::ZERO);
    assert_eq!(s.cloud_spend_usd, spend);
    let attempts_spend: Decimal = responses
        .iter()
        .flat_map(|r| r.attempts.iter())
        .map(|a| a.cost.usd)
        .sum();
    assert_eq!(attempts_spend, spend);
    assert_eq!(fake.requests_received(), 2);
    let n = s.requests as f64;
    assert!((s.cache_hit_rate - 2.0 / n).abs() < 1e-9);
    assert!((s.local_share - 4.0 / n).abs() < 1e-9);
    assert!((s.escalation_rate - 1.0 / n).abs() < 1e-9);
    assert_eq!(s.local_latency.samples as u64, s.local);
    assert_eq!(s.cloud_latency.samples as u64, s.cloud);
    assert_eq!(s.cache_latency.samples as u64, s.cache_hits);
    assert!(s.local_latency.p50_ms > 0.0 && s.local_latency.p95_ms >= s.local_latency.p50_ms);
    // Time to first token: every streamed answer has one, earlier than its end; cache hits'
    // first token is their whole answer.
    for resp in &responses {
        let first = resp.timings.first_token.expect("first token");
        assert!(
            first <= resp.timings.total,
            "{first:?} > {:?}",
            resp.timings.total
        );
        let answering = resp.attempts.iter().rev().find(|a| a.error.is_none());
        match resp.route {
            Route::Cache => assert_eq!(first, resp.timings.total),
            _ => {
                let a = answering.expect("answering attempt");
                let attempt_first = a.first_token.expect("attempt first token");
                assert!(attempt_first <= a.elapsed && attempt_first <= first);
                assert!(first < resp.timings.total, "first token at the very end");
            }
        }
    }
    assert_eq!(s.local_first_token.samples as u64, s.local);
    assert_eq!(s.cloud_first_token.samples as u64, s.cloud);
    assert!(s.local_first_token.p50_ms > 0.0);
    assert!(s.local_first_token.p50_ms <= s.local_latency.p50_ms);
    // What the local answers would have cost in the cloud is saved; cache hits save more.
    let local_savings: Decimal = responses
        .iter()
        .filter(|r| r.route == Route::Local)
        .map(|r| price(r.usage))
        .sum();
    assert!(local_savings > Decimal::ZERO);
    assert!(
        s.estimated_savings_usd > local_savings,
        "savings {} vs local {local_savings}",
        s.estimated_savings_usd
    );
}

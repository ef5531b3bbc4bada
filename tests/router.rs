//! The router pipeline with an app-supplied local backend (the `Backend` extension point):
//! routing, explain without side effects, refusals, streaming, errors.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgeroute::decision::Reason;
use edgeroute::error::TimeoutPhase;
use edgeroute::request::Usage;
use edgeroute::{Error, Request, Route, Router, RouterEvent};
use futures::StreamExt;
use support::echo::EchoModel;

const POLICY: &str = r#"
[[rule]]
name = "private"
route = "local"
pin = true
[rule.when]
pii = true

[[rule]]
name = "forbidden"
route = "refuse"
message = "not here"
[rule.when]
tags_any = ["forbidden"]

[defaults]
route = "local"
"#;

fn router(model: Arc<EchoModel>) -> Router {
    Router::builder()
        .policy_str(POLICY)
        .local_backend(model)
        .cache(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn complete_reports_route_rule_reasons_usage_and_timings() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let resp = r
        .complete(Request::new("write to ann@example.com"))
        .await
        .unwrap();
    assert_eq!(resp.text, "echo: write to ann@example.com");
    assert_eq!(resp.route, Route::Local);
    assert_eq!(resp.decision.rule, "private");
    assert_eq!(
        resp.decision.reasons,
        vec![Reason::PiiFound {
            kinds: vec!["email".into()]
        }]
    );
    assert_eq!(resp.usage, Usage::new(7, 3));
    assert!(resp.cost.usd.is_zero());
    assert!(resp.confidence.is_some());
    assert_eq!(resp.attempts.len(), 1);
    assert!(resp.timings.total >= resp.timings.execute);
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);

    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.decision.rule, "defaults");
    assert_eq!(resp.decision.reasons, vec![Reason::Default]);
}

#[tokio::test]
async fn explain_runs_no_model() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let d = r.explain(&Request::new("write to ann@example.com"));
    assert_eq!(d.rule, "private");
    assert_eq!(d.route(), "local");
    assert!(d.cloud_clearance().is_none());
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(r.stats().requests, 0, "explain records nothing");
}

#[tokio::test]
async fn refuse_returns_the_policy_message() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let err = r
        .complete(Request::new("hi").with_tag("forbidden"))
        .await
        .unwrap_err();
    match err {
        Error::Refused { rule, message } => {
            assert_eq!(rule, "forbidden");
            assert_eq!(message, "not here");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(r.stats().failures, 1);
}

#[tokio::test]
async fn pinned_local_failure_does_not_fall_back() {
    let model = Arc::new(EchoModel::default());
    model.fail.store(true, Ordering::SeqCst);
    let r = router(model);
    let err = r
        .complete(Request::new("ann@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Inference(_)), "{err}");
}

/// The deadline covers a tier that has not started answering yet (the first local request loads
/// the model): the request ends with the deadline's error instead of waiting for it.
#[tokio::test]
async fn the_deadline_covers_a_tier_that_never_starts_streaming() {
    let model = Arc::new(EchoModel::default());
    model.stall.store(true, Ordering::SeqCst);
    let r = router(model.clone());
    let request = Request::new("ann@example.com").with_deadline(Duration::from_millis(50));
    fails_at_its_deadline(&r, request).await;
    assert_eq!(model.calls(), 1);
}

/// Runs `request` (which has a deadline) and checks it fails with the deadline's timeout,
/// well before 30 s.
async fn fails_at_its_deadline(r: &Router, request: Request) {
    let err = tokio::time::timeout(Duration::from_secs(30), r.complete(request))
        .await
        .expect("the request outlived its deadline by 30 s")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Deadline,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn stream_yields_deltas_then_the_response() {
    let r = router(Arc::new(EchoModel::default()));
    let mut s = r.stream(Request::new("hello there"));
    let mut deltas = String::new();
    let mut done = None;
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            RouterEvent::Delta(d) => deltas.push_str(&d),
            RouterEvent::Done(resp) => done = Some(resp),
        }
    }
    let done = done.unwrap();
    assert_eq!(deltas, "echo: hello there");
    assert_eq!(done.text, deltas);
}

/// Debug output of a response or a streamed delta shows lengths, not the answer (which often
/// repeats the prompt's personal data), as `Message` does.
#[tokio::test]
async fn debug_output_shows_no_answer_text() {
    let r = router(Arc::new(EchoModel::default()));
    let resp = r
        .complete(Request::new("write to ann@example.com"))
        .await
        .unwrap();
    assert!(resp.text.contains("ann@example.com"));
    let shown = format!("{resp:?}");
    assert!(!shown.contains("ann@example"), "{shown}");
    assert!(shown.contains("bytes>"), "{shown}");
    let mut s = r.stream(Request::new("write to ann@example.com"));
    while let Some(ev) = s.next().await {
        let shown = format!("{:?}", ev.unwrap());
        assert!(!shown.contains("ann@example"), "{shown}");
    }
}

#[tokio::test]
async fn an_unrepresentable_deadline_means_no_deadline() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let mut req = Request::new("hi");
    req.deadline = Some(std::time::Duration::MAX);
    let resp = r.complete(req).await.unwrap();
    assert_eq!(resp.text, "echo: hi");
}

#[tokio::test]
async fn empty_request_is_rejected() {
    let r = router(Arc::new(EchoModel::default()));
    let err = r.complete(Request::new("   ")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)));
}

/// Sets one generation parameter of a request.
type SetParam = fn(&mut edgeroute::request::GenerationParams);

/// Out-of-range generation parameters are errors naming the parameter, before any tier runs
/// (a zero `max_tokens` still made the local model say one token, and was cached; a bad
/// temperature or top_p became a provider's 400 or a silent greedy run).
#[tokio::test]
async fn out_of_range_generation_parameters_are_rejected_before_any_tier_runs() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let with = |f: SetParam| {
        let mut req = Request::new("hello");
        f(&mut req.params);
        req
    };
    let cases: [(SetParam, &str); 7] = [
        (|p| p.max_tokens = Some(0), "max_tokens"),
        (|p| p.temperature = Some(-0.1), "temperature"),
        (|p| p.temperature = Some(2.5), "temperature"),
        (|p| p.temperature = Some(f32::NAN), "temperature"),
        (|p| p.top_p = Some(0.0), "top_p"),
        (|p| p.top_p = Some(1.5), "top_p"),
        (|p| p.top_p = Some(f32::INFINITY), "top_p"),
    ];
    for (set, name) in cases {
        let err = r.complete(with(set)).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(m) if m.contains(name)),
            "{name}: {err}"
        );
    }
    assert_eq!(model.calls(), 0);
    // The edges are fine.
    let ok = |f: SetParam| r.complete(with(f));
    ok(|p| {
        p.max_tokens = Some(1);
        p.temperature = Some(0.0);
        p.top_p = Some(1.0);
    })
    .await
    .unwrap();
    ok(|p| p.temperature = Some(2.0)).await.unwrap();
}

/// An out-of-range repetition penalty is an error before any tier runs (not a local failure
/// that falls back to another tier).
#[tokio::test]
async fn out_of_range_repetition_penalty_is_rejected_before_any_tier_runs() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    for bad in [0.5, 2.5, f32::NAN] {
        let err = r
            .complete(Request::new("hello").with_repetition_penalty(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(m) if m.contains("repetition_penalty")),
            "{err}"
        );
    }
    assert_eq!(model.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    r.complete(Request::new("hello").with_repetition_penalty(1.3))
        .await
        .unwrap();
    assert_eq!(model.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stats_count_routes() {
    let r = router(Arc::new(EchoModel::default()));
    for _ in 0..3 {
        r.complete(Request::new("hello")).await.unwrap();
    }
    let s = r.stats();
    assert_eq!((s.requests, s.local, s.cloud), (3, 3, 0));
    assert_eq!(s.local_latency.samples, 3);
    assert!((s.local_share - 1.0).abs() < 1e-9);
}

#[test]
fn invalid_policy_fails_build_with_location() {
    let err = Router::builder()
        .policy_str("[[rule]]\nname = \"a\"\nroute = \"teleport\"\n")
        .cache(false)
        .load_local_model(false)
        .build()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("<inline>:3:9: rule[0].route: unknown route `teleport`"),
        "{msg}"
    );
}

#[test]
fn router_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Router>();
}

fn cached_router(model: Arc<EchoModel>, home: &std::path::Path, policy: &str) -> Router {
    Router::builder()
        .policy_str(policy)
        .local_backend(model)
        .home(home)
        .cache_key([7; 32])
        .build()
        .unwrap()
}

/// The output limit and penalty the policy gives the tier's calls are part of the key: a
/// policy with an explicit `version` keeps it across edits, and an answer cut at one limit
/// must not answer under another.
#[tokio::test]
async fn answers_made_under_other_output_limits_are_not_served() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let policy =
        |local: &str| format!("version = \"1\"\n[local]\n{local}\n[defaults]\nroute = \"local\"\n");
    let ask = |limits: &str| {
        let r = cached_router(model.clone(), home.path(), &policy(limits));
        async move {
            r.complete(Request::new("What is a monad?"))
                .await
                .unwrap()
                .route
        }
    };
    assert_eq!(ask("max_new_tokens = 128").await, Route::Local);
    assert_eq!(ask("max_new_tokens = 128").await, Route::Cache);
    assert_eq!(ask("max_new_tokens = 2048").await, Route::Local);
    assert_eq!(
        ask("max_new_tokens = 2048\nrepetition_penalty = 1.3").await,
        Route::Local
    );
    assert_eq!(ask("max_new_tokens = 128").await, Route::Cache);
    assert_eq!(model.calls(), 3);
}

#[tokio::test]
async fn repeated_question_is_served_from_the_encrypted_cache() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), POLICY);
    assert!(r.cache_in_use());
    let first = r
        .complete(Request::new("What is the capital of France?"))
        .await
        .unwrap();
    assert_eq!(first.route, Route::Local);
    // Whitespace at the ends and line endings normalise to the same key.
    let second = r
        .complete(Request::new("\n\nWhat is the capital of France? \r\n"))
        .await
        .unwrap();
    assert_eq!(second.route, Route::Cache);
    assert!(second.cached);
    assert_eq!(second.text, first.text);
    // The decision still says which rule fired, and with which inputs; then that the cache
    // answered.
    assert_eq!(second.decision.rule, first.decision.rule);
    let (last, policy_reasons) = second.decision.reasons.split_last().unwrap();
    assert!(
        matches!(last, Reason::CacheHit { answered_by, model, .. } if answered_by == "local" && model == "echo-model"),
        "{last:?}"
    );
    assert_eq!(policy_reasons, first.decision.reasons.as_slice());
    assert!(second.decision.cloud_clearance().is_none());
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats().cache_hits, 1);

    // The answer is on disk, sealed: the plaintext does not appear in the database files
    // (flushed first, so the record is in them).
    drop(r);
    let db = edgeroute::cache::Database::open(&edgeroute::home::db_dir(home.path())).unwrap();
    db.flush().unwrap();
    drop(db);
    let mut found = false;
    for entry in walk(home.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        found |= bytes.windows(13).any(|w| w == b"echo: What is");
    }
    assert!(!found, "cached answer stored in plaintext");

    // A new process (router) with the same home and key still hits.
    let r = cached_router(model.clone(), home.path(), POLICY);
    let third = r
        .complete(Request::new("What is the capital of France?"))
        .await
        .unwrap();
    assert_eq!(third.route, Route::Cache);
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
}

/// A sampled request (temperature above 0, no seed) asks for a new answer each time, and a
/// request can skip the cache ("regenerate"): neither is answered from the cache nor stored.
/// A seeded one is reproducible, so it is cached.
#[tokio::test]
async fn sampled_and_cache_skipping_requests_are_neither_served_nor_stored() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), POLICY);
    let sampled = || Request::new("Write one sentence about cats.").with_temperature(0.8);
    for _ in 0..2 {
        let resp = r.complete(sampled()).await.unwrap();
        assert_eq!(resp.route, Route::Local);
        assert!(!resp.cached);
    }
    assert_eq!(model.calls(), 2);

    let greedy = || Request::new("Write one sentence about dogs.");
    r.complete(greedy()).await.unwrap();
    for _ in 0..2 {
        let resp = r.complete(greedy().without_cache()).await.unwrap();
        assert_eq!(
            resp.route,
            Route::Local,
            "skip_cache was answered from the cache"
        );
    }
    assert_eq!(model.calls(), 5);
    // The cached answer is still there for a request that uses the cache...
    assert_eq!(r.complete(greedy()).await.unwrap().route, Route::Cache);
    // ...and nothing sampled or skipped was stored: the only entry is the greedy one.
    assert_eq!(r.stats().cache_hits, 1);
    assert_eq!(
        r.complete(sampled().with_seed(7)).await.unwrap().route,
        Route::Local
    );
    assert_eq!(
        r.complete(sampled().with_seed(7)).await.unwrap().route,
        Route::Cache
    );
    assert_eq!(model.calls(), 6);
}

/// An empty answer (a model that stopped at once, or a damaged one) is not cached: the next
/// request asks again and gets the real answer.
#[tokio::test]
async fn an_empty_answer_is_not_cached() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), POLICY);
    model.empty.store(true, Ordering::SeqCst);
    let first = r.complete(Request::new("What is 2+2?")).await.unwrap();
    assert_eq!((first.route, first.text.as_str()), (Route::Local, ""));
    model.empty.store(false, Ordering::SeqCst);
    let second = r.complete(Request::new("What is 2+2?")).await.unwrap();
    assert_eq!(second.route, Route::Local, "the empty answer was replayed");
    assert_eq!(second.text, "echo: What is 2+2?");
    assert_eq!(
        r.complete(Request::new("What is 2+2?"))
            .await
            .unwrap()
            .route,
        Route::Cache
    );
}

#[tokio::test]
async fn a_cached_answer_never_overrides_a_refusal() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), POLICY);
    let ask = || Request::new("What is the EUR/USD rate right now?");
    r.complete(ask()).await.unwrap();
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);
    // Tags are not part of the cache key, but the policy refuses this request: the cached
    // answer must not come back instead.
    let err = r.complete(ask().with_tag("forbidden")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused { rule, .. } if rule == "forbidden"),
        "{err}"
    );
    assert_eq!(model.calls(), 1);
}

/// A rule that keeps work local while the budget is low gives a local answer under a local
/// plan: cached under that plan, so it answers the same request while the rule holds, and
/// never one the cloud plan answers once the budget resets (see tests/router_cloud.rs).
#[tokio::test]
async fn answers_under_a_rule_that_keeps_work_local_are_cached_under_its_plan() {
    let policy = "[cloud]\nmodel = \"m\"\napi_key_env = \"EDGEROUTE_TEST_UNSET_KEY\"\n\
         output_usd_per_mtok = 1\n[budget]\ndaily_usd = \"0.05\"\n\
         [[rule]]\nname = \"low-budget\"\nroute = \"local\"\n[rule.when]\nbudget_left_usd_lt = \"1\"\n";
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), policy);
    let first = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(first.route, Route::Local);
    let json = serde_json::to_value(&first.decision.reasons).unwrap();
    assert!(json.to_string().contains("budget_low"), "{json}");
    let second = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(second.route, Route::Cache);
    assert_eq!(second.decision.rule, "low-budget");
    assert_eq!(model.calls(), 1);
}

/// With no API key yet, a cloud route turns local: that answer is cached (the app works
/// offline and fast), under a key of its own, so it never shadows what the cloud answers once
/// the key is set (see tests/router_cloud.rs for that half).
#[tokio::test]
async fn answers_given_while_the_cloud_is_unavailable_are_cached_apart() {
    let policy = "[cloud]\nmodel = \"m\"\napi_key_env = \"EDGEROUTE_TEST_UNSET_KEY\"\n\
         [defaults]\nroute = \"cloud\"\n";
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), policy);
    let first = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(first.route, Route::Local);
    let json = serde_json::to_value(&first.decision.reasons).unwrap();
    assert!(json.to_string().contains("cloud_unavailable"), "{json}");
    let second = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(second.route, Route::Cache);
    assert_eq!(second.text, first.text);
    assert_eq!(model.calls(), 1);
}

/// What a router measured of its local tier is remembered in the home's database: the next
/// router there (the next process) decides with it from its first request and says how many
/// answers made it; another build of the model starts again from the policy's `[latency]`
/// model, and so does a router without the database unless it is given it to read.
#[tokio::test]
async fn measured_latency_is_remembered_for_the_next_router_on_the_home() {
    let home = tempfile::tempdir().unwrap();
    // A model no measurement of the echo model comes near: a second per token.
    let policy = format!(
        "{POLICY}\n[latency]\nlocal_prefill_ms_per_token = 1000\nlocal_decode_ms_per_token = 1000\n"
    );
    let latency = |r: &Router| {
        let request = Request::new("Name a fruit.");
        let features = edgeroute::inspect::inspect(r.policy(), &request);
        r.signals(&request, &features).latency
    };
    let model = Arc::new(EchoModel::default());
    let first = cached_router(model.clone(), home.path(), &policy);
    let modelled = latency(&first);
    assert_eq!(modelled.local_observations, 0);
    for prompt in ["one", "two"] {
        first.complete(Request::new(prompt)).await.unwrap();
    }
    let measured = latency(&first);
    assert_eq!(measured.local_observations, 2);
    assert!(
        measured.local_ms < modelled.local_ms,
        "{measured:?} {modelled:?}"
    );
    drop(first);

    let next = cached_router(model.clone(), home.path(), &policy);
    assert_eq!(latency(&next), measured);
    drop(next);

    let rebuilt = Arc::new(EchoModel {
        revision: Some("another build".into()),
        ..Default::default()
    });
    let other = cached_router(rebuilt, home.path(), &policy);
    assert_eq!(latency(&other), modelled);
    drop(other);

    let without_db = Router::builder()
        .policy_str(&policy)
        .local_backend(model)
        .cache(false)
        .build()
        .unwrap();
    assert_eq!(latency(&without_db), modelled);
    let db = edgeroute::cache::Database::open(&edgeroute::home::db_dir(home.path())).unwrap();
    without_db.recall_latency(&db).unwrap();
    assert_eq!(latency(&without_db), measured);
    // Reading is all it does: what this router measures is not remembered.
    without_db.complete(Request::new("three")).await.unwrap();
    assert_eq!(latency(&without_db).local_observations, 3);
    without_db.recall_latency(&db).unwrap();
    assert_eq!(latency(&without_db), measured);
}

/// `calibrate` runs the local tier once to warm up and then the runs asked for, feeds the
/// latency estimates (remembered on the home) and answers no request: nothing is counted or
/// cached. It checks the run count before running anything, needs a local tier, and is refused
/// once the router shuts down.
#[tokio::test]
async fn calibrate_measures_the_local_tier_without_answering_requests() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(model.clone(), home.path(), POLICY);
    let mut seen = Vec::new();
    let c = r.calibrate(3, |i, run| seen.push((i, *run))).await.unwrap();
    assert_eq!(model.calls(), 4, "one warm-up and three runs");
    assert_eq!(c.backend, "echo-model");
    assert!(c.remembered);
    assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(seen.iter().map(|(_, run)| *run).collect::<Vec<_>>(), c.runs);
    for run in &c.runs {
        assert!(run.output_tokens > 0 && run.prompt_tokens > 0, "{run:?}");
        assert!(run.first_token_ms <= run.total_ms, "{run:?}");
    }
    let stats = r.stats();
    assert_eq!((stats.requests, stats.local), (0, 0));
    // Nor cached; a request's answer is.
    let db = edgeroute::cache::Database::open(&edgeroute::home::db_dir(home.path())).unwrap();
    let cache = edgeroute::cache::SledCache::open(
        &db,
        edgeroute::cache::EncryptionKey::from_bytes(&[7; 32]).unwrap(),
        edgeroute::cache::CacheConfig::default(),
    )
    .unwrap();
    assert_eq!(cache.stats().unwrap().entries, 0);
    r.complete(Request::new("What is the capital of France?"))
        .await
        .unwrap();
    assert_eq!(cache.stats().unwrap().entries, 1);
    assert_eq!(model.calls(), 5);
    let request = Request::new("Name a fruit.");
    let features = edgeroute::inspect::inspect(r.policy(), &request);
    // Three calibration runs and the request's answer.
    assert_eq!(r.signals(&request, &features).latency.local_observations, 4);
    for runs in [0, edgeroute::calibrate::MAX_CALIBRATION_RUNS + 1] {
        let e = r.calibrate(runs, |_, _| {}).await.unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    }
    assert_eq!(model.calls(), 5);

    let no_local = Router::builder()
        .policy_str("[defaults]\nroute = \"local\"\n")
        .load_local_model(false)
        .cache(false)
        .build()
        .unwrap();
    let e = no_local.calibrate(1, |_, _| {}).await.unwrap_err();
    assert!(
        matches!(e, Error::TierUnavailable { tier: "local", .. }),
        "{e}"
    );

    r.shutdown().await.unwrap();
    let e = r.calibrate(1, |_, _| {}).await.unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e}");
    assert_eq!(model.calls(), 5);
    // A shutdown while it runs stops it before its next run.
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let closer = r.clone();
    let e = r
        .calibrate(5, move |i, _| {
            if i == 2 {
                // The shutdown marks the router closing at once, then waits for the calibration.
                let mut shutdown = Box::pin(closer.shutdown());
                let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
                assert!(std::future::Future::poll(shutdown.as_mut(), &mut cx).is_pending());
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e}");
    assert_eq!(model.calls(), 3, "the warm-up and two runs");
}

#[tokio::test]
async fn a_new_model_build_does_not_serve_the_old_builds_cached_answers() {
    let home = tempfile::tempdir().unwrap();
    let build = |rev: &str| {
        Arc::new(EchoModel {
            revision: Some(rev.to_string()),
            ..Default::default()
        })
    };
    let (old, new) = (build("aaaa"), build("bbbb"));
    let ask = || Request::new("What is the capital of France?");

    let r = cached_router(old.clone(), home.path(), POLICY);
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Local);
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);
    drop(r);

    // Same home, key, policy and model name; only the build changed: the new build answers.
    let r = cached_router(new.clone(), home.path(), POLICY);
    let resp = r.complete(ask()).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!((old.calls(), new.calls()), (1, 1));
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);
    drop(r);

    // Going back to the old build finds its answer again.
    let r = cached_router(old.clone(), home.path(), POLICY);
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);
    assert_eq!(old.calls(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn private_answers_are_not_cached_by_default_and_policy_changes_miss() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    {
        let r = cached_router(model.clone(), home.path(), POLICY);
        for _ in 0..2 {
            let resp = r
                .complete(Request::new("write to ann@example.com"))
                .await
                .unwrap();
            assert_eq!(resp.route, Route::Local);
        }
        assert_eq!(
            model.calls.load(Ordering::SeqCst),
            2,
            "PII answers must not be cached"
        );
        r.complete(Request::new("hello")).await.unwrap();
        assert_eq!(model.calls.load(Ordering::SeqCst), 3);
    }
    // Another policy version never serves the old answer.
    let r = cached_router(
        model.clone(),
        home.path(),
        &format!("{POLICY}\n# changed\n"),
    );
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!(model.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn cache_mode_off_never_reads_or_writes() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let r = cached_router(
        model.clone(),
        home.path(),
        &format!("{POLICY}\n[cache]\nmode = \"off\"\n"),
    );
    for _ in 0..2 {
        assert_eq!(
            r.complete(Request::new("hello")).await.unwrap().route,
            Route::Local
        );
    }
    assert_eq!(model.calls.load(Ordering::SeqCst), 2);
}

/// Two routers (two policies, say) on one home in one process share its database: both
/// build, both answer, and the answer cache and statistics are the home's. (The second build
/// failed after 3 s with "locked by another edgeroute process".)
#[tokio::test]
async fn two_routers_in_one_process_share_a_home() {
    let home = tempfile::tempdir().unwrap();
    let model = Arc::new(EchoModel::default());
    let a = cached_router(model.clone(), home.path(), POLICY);
    let b = cached_router(model.clone(), home.path(), POLICY);
    let ask = || Request::new("What is the capital of France?");
    assert_eq!(a.complete(ask()).await.unwrap().route, Route::Local);
    assert_eq!(b.complete(ask()).await.unwrap().route, Route::Cache);
    assert_eq!(model.calls(), 1);
}

/// The home's database directory, made readable by everyone by an earlier version (0755, its
/// files 0644), is restricted to its owner when a router opens it.
#[cfg(unix)]
#[tokio::test]
async fn the_homes_database_directory_is_restricted_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let db_dir = edgeroute::home::db_dir(home.path());
    std::fs::create_dir_all(&db_dir).unwrap();
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _r = cached_router(Arc::new(EchoModel::default()), home.path(), POLICY);
    let mode = std::fs::metadata(&db_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The shipped default policy is built in: a router gets it with no file to find (an app's
/// working directory has no `policies/`), and it is the file in the repository.
#[test]
fn the_default_policy_is_built_in() {
    let r = Router::builder()
        .default_policy()
        .local_backend(Arc::new(EchoModel::default()))
        .cache(false)
        .build()
        .unwrap();
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/default.toml"
    ))
    .unwrap();
    assert_eq!(edgeroute::policy::DEFAULT_POLICY, file);
    assert_eq!(r.policy().name, "default");
    assert_eq!(
        r.explain(&Request::new("mail ann@example.com")).rule,
        "pii-stays-local"
    );
}

/// A home where the database cannot be created (here: under a file; on a device, a read-only
/// data directory) still answers when there is no budget to enforce, without the cache; with
/// a budget it is an error naming the database.
#[tokio::test]
async fn a_home_without_a_usable_database_answers_without_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let home = file.join("home");
    let build = |policy: &str| {
        Router::builder()
            .policy_str(policy)
            .local_backend(Arc::new(EchoModel::default()))
            .home(&home)
            .build()
    };
    let r = build(POLICY).unwrap();
    let resp = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!(
        r.complete(Request::new("What is a monad?"))
            .await
            .unwrap()
            .route,
        Route::Local
    );
    let err = build(&format!(
        "{POLICY}\n[cloud]\nmodel = \"m\"\ninput_usd_per_mtok = 1\n[budget]\ndaily_usd = 1\n"
    ))
    .err()
    .unwrap();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
}

/// A backend that sends its whole answer in the final event, with no deltas (allowed: the
/// trait's own `generate` reads it there), and keeps the parameters of every call.
#[derive(Default)]
struct AnswersInOnePiece {
    calls: std::sync::Mutex<Vec<edgeroute::request::GenerationParams>>,
}

#[async_trait::async_trait]
impl edgeroute::backend::Backend for AnswersInOnePiece {
    fn name(&self) -> &str {
        "one-piece"
    }

    async fn stream(
        &self,
        call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        self.calls.lock().unwrap().push(call.params);
        Ok(answered_in_one_piece())
    }
}

/// "42", in the final event alone.
fn answered_in_one_piece() -> edgeroute::backend::EventStream {
    let done = edgeroute::backend::Generation {
        text: "42".into(),
        usage: Usage::new(3, 1),
        usage_estimated: false,
        confidence: None,
        finish: edgeroute::backend::FinishReason::Stop,
    };
    Box::pin(futures::stream::iter([Ok(
        edgeroute::backend::StreamEvent::Done(done),
    )]))
}

/// The router answers with the text a backend put in its final event when no delta carried it
/// (it used to answer ""), and streams it to the caller as one delta.
#[tokio::test]
async fn a_backend_answering_in_its_final_event_alone_is_answered_and_streamed() {
    let r = Router::builder()
        .policy_str(POLICY)
        .local_backend(Arc::new(AnswersInOnePiece::default()))
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("q")).await.unwrap();
    assert_eq!(resp.text, "42");
    assert!(resp.timings.first_token.is_some());
    let mut s = r.stream(Request::new("q"));
    let mut deltas = Vec::new();
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            RouterEvent::Delta(d) => deltas.push(d),
            RouterEvent::Done(resp) => assert_eq!(resp.text, "42"),
        }
    }
    assert_eq!(deltas, ["42"]);
}

/// A request of system messages alone is refused up front, before any tier runs.
#[tokio::test]
async fn a_request_of_system_messages_alone_is_invalid() {
    let model = Arc::new(EchoModel::default());
    let r = router(model.clone());
    let request = Request::from_messages(vec![edgeroute::Message::system("Be terse.")]);
    let err = r.complete(request).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidRequest(m) if m.contains("only system messages")),
        "{err}"
    );
    assert_eq!(model.calls(), 0);
}

/// Through a router, the policy's `[local]` section sets an app-supplied local backend's output
/// limit and repetition penalty when the request sets none; the request's own values win.
#[tokio::test]
async fn the_policys_local_section_reaches_an_app_supplied_backend() {
    let backend = Arc::new(AnswersInOnePiece::default());
    let r = Router::builder()
        .policy_str(format!(
            "{POLICY}\n[local]\nmax_new_tokens = 77\nrepetition_penalty = 1.3\n"
        ))
        .local_backend(backend.clone())
        .cache(false)
        .build()
        .unwrap();
    r.complete(Request::new("q")).await.unwrap();
    let mut own = Request::new("q").with_max_tokens(5);
    own.params.repetition_penalty = Some(1.05);
    r.complete(own).await.unwrap();
    let calls = backend.calls.lock().unwrap().clone();
    assert_eq!(calls[0].max_tokens, Some(77));
    assert_eq!(calls[0].repetition_penalty, Some(1.3));
    assert_eq!(calls[1].max_tokens, Some(5));
    assert_eq!(calls[1].repetition_penalty, Some(1.05));
}

/// A cloud backend (an app's own, through the `Backend` extension point) whose `stream` never
/// returns. The same deadline over real HTTP, with a provider that never sends its headers,
/// is tested in `router_degraded.rs`.
struct NeverStarts;

#[async_trait::async_trait]
impl edgeroute::backend::Backend for NeverStarts {
    fn name(&self) -> &str {
        "never-starts"
    }

    async fn stream(
        &self,
        _call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        std::future::pending().await
    }
}

/// The deadline covers a cloud plan's wait for its stream, as it does the local plan's and a
/// hedge's: a cloud backend that never starts answering cannot hold the request past it.
#[tokio::test]
async fn the_deadline_covers_a_cloud_tier_that_never_starts_streaming() {
    let r = Router::builder()
        .policy_str("[cloud]\nmodel = \"m\"\n[[rule]]\nname = \"to-cloud\"\nroute = \"cloud\"\npin = true\n[rule.when]\ntags_any = [\"c\"]\n")
        .local_backend(Arc::new(EchoModel::default()))
        .cloud_backend(Arc::new(NeverStarts))
        .cache(false)
        .build()
        .unwrap();
    let request = Request::new("hello")
        .with_tag("c")
        .with_deadline(Duration::from_millis(100));
    fails_at_its_deadline(&r, request).await;
}

/// A local backend whose first `stream` call spends 400 ms loading (as the lazily loaded
/// model does), then answers at once.
#[derive(Default)]
struct SlowToLoad {
    loaded: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl edgeroute::backend::Backend for SlowToLoad {
    fn name(&self) -> &str {
        "slow-to-load"
    }

    async fn stream(
        &self,
        _call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        if !self.loaded.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let done = edgeroute::backend::Generation {
            text: String::new(),
            usage: Usage::new(32, 8),
            usage_estimated: false,
            confidence: None,
            finish: edgeroute::backend::FinishReason::Stop,
        };
        Ok(Box::pin(futures::stream::iter([
            Ok(edgeroute::backend::StreamEvent::Delta("ready".into())),
            Ok(edgeroute::backend::StreamEvent::Done(done)),
        ])))
    }
}

/// The latency signals learn how fast the local tier generates, not how long its first
/// request took to load the model: one 400 ms load used to read as ~40 ms per token, which
/// sent every later request with a deadline to the cloud.
#[tokio::test]
async fn a_model_load_is_not_counted_as_local_generation_time() {
    let r = Router::builder()
        .policy_str(POLICY)
        .local_backend(Arc::new(SlowToLoad::default()))
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    // What the caller waited for includes the load.
    assert!(resp.attempts[0].elapsed >= Duration::from_millis(400));
    let request = Request::new("hello").with_max_tokens(10);
    let features = edgeroute::inspect::inspect(r.policy(), &request);
    let estimate = r.signals(&request, &features).latency.local_ms.unwrap();
    assert!(
        estimate < 200,
        "10 tokens estimated at {estimate} ms after an instant answer"
    );
}

/// An app's backend that panics.
struct Panics;

#[async_trait::async_trait]
impl edgeroute::backend::Backend for Panics {
    fn name(&self) -> &str {
        "panics"
    }

    async fn stream(
        &self,
        _call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        panic!("a bug in an app's backend");
    }
}

/// A panic while a streamed request runs ends the stream with an error saying so; the stream
/// used to just stop, with neither an answer nor an error.
#[tokio::test]
async fn a_panic_while_streaming_ends_the_stream_with_an_error() {
    let r = Router::builder()
        .policy_str(POLICY)
        .local_backend(Arc::new(Panics))
        .cache(false)
        .build()
        .unwrap();
    let events: Vec<_> = r.stream(Request::new("q")).collect().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], Err(Error::Inference(m)) if m.contains("panicked")),
        "{events:?}"
    );
}

/// A local backend that answers "42" (in one piece) once let through: one permit of `gate`
/// per call.
struct Gated {
    gate: tokio::sync::Semaphore,
    started: tokio::sync::Notify,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            gate: tokio::sync::Semaphore::new(0),
            started: tokio::sync::Notify::new(),
        }
    }
}

#[async_trait::async_trait]
impl edgeroute::backend::Backend for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    async fn stream(
        &self,
        _call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        self.started.notify_one();
        self.gate.acquire().await.unwrap().forget();
        Ok(answered_in_one_piece())
    }
}

/// `shutdown` stops new requests at once (`Error::ShutDown`, through clones and streams too),
/// waits for the one running, and returns once it has answered; with the database and
/// without.
#[tokio::test]
async fn shutdown_refuses_new_requests_and_waits_for_running_ones() {
    let home = tempfile::tempdir().unwrap();
    for with_database in [false, true] {
        let model = Arc::new(Gated::default());
        let r = Router::builder()
            .policy_str(POLICY)
            .local_backend(model.clone())
            .cache(with_database)
            .home(home.path())
            .build()
            .unwrap();
        let running = tokio::spawn({
            let r = r.clone();
            async move { r.complete(Request::new("q")).await }
        });
        model.started.notified().await;
        // Its first poll stops new requests, then it waits for the running one.
        let mut shutdown = Box::pin(r.shutdown());
        assert!(futures::poll!(&mut shutdown).is_pending());
        // (Bounded: a late request that ran would wait at the gate for good.)
        let late = tokio::time::timeout(Duration::from_secs(10), r.complete(Request::new("late")))
            .await
            .expect("a late request fails at once");
        assert!(matches!(late, Err(Error::ShutDown)), "{late:?}");
        let streamed: Vec<_> = tokio::time::timeout(
            Duration::from_secs(10),
            r.clone().stream(Request::new("late")).collect(),
        )
        .await
        .expect("a late stream fails at once");
        assert!(
            matches!(streamed.as_slice(), [Err(Error::ShutDown)]),
            "{streamed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            futures::poll!(&mut shutdown).is_pending(),
            "shutdown returned before the running request"
        );
        model.gate.add_permits(1);
        assert_eq!(running.await.unwrap().unwrap().text, "42");
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("shutdown waits no longer than the running request")
            .unwrap();
        assert_eq!(r.stats().requests, 1, "with_database = {with_database}");
    }
}

/// A request over the router's size limit is invalid before anything runs (no tier is
/// called, no statistics recorded); one at the limit is answered. The default limit holds too.
#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_before_any_tier_runs() {
    let model = Arc::new(EchoModel::default());
    let r = Router::builder()
        .policy_str(POLICY)
        .local_backend(model.clone())
        .cache(false)
        .max_prompt_bytes(1024)
        .build()
        .unwrap();
    let over = Request::from_messages(vec![
        edgeroute::Message::system("s".repeat(24)),
        edgeroute::Message::user("u".repeat(1001)),
    ]);
    match r.complete(over).await {
        Err(Error::InvalidRequest(m)) => {
            assert!(m.contains("1025 bytes"), "{m}");
            assert!(m.contains("max_prompt_bytes"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.calls(), 0);
    assert_eq!(r.stats().requests, 0);
    let at = r.complete(Request::new("u".repeat(1024))).await.unwrap();
    assert_eq!(at.route, Route::Local);

    let default = router(model.clone());
    let huge = "a".repeat(edgeroute::router::DEFAULT_MAX_PROMPT_BYTES + 1);
    let e = default.complete(Request::new(huge)).await.unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    assert_eq!(model.calls(), 1);
}

/// A local backend that writes three words, then nothing more (a device far slower than the
/// policy's `[latency]` model says).
struct ThreeWordsThenNothing;

#[async_trait::async_trait]
impl edgeroute::backend::Backend for ThreeWordsThenNothing {
    fn name(&self) -> &str {
        "three-words"
    }
    async fn stream(
        &self,
        _call: edgeroute::backend::BackendCall,
    ) -> edgeroute::Result<edgeroute::backend::EventStream> {
        let words = ["one", " two", " three"]
            .map(|w| Ok(edgeroute::backend::StreamEvent::Delta(w.to_string())));
        Ok(Box::pin(
            futures::stream::iter(words).chain(futures::stream::pending()),
        ))
    }
}

/// A local answer the deadline cuts short still teaches the router this device's speed:
/// otherwise an estimate too low for the device would send every request with a deadline to
/// time out on it again, learning nothing.
#[tokio::test]
async fn a_local_answer_cut_short_by_the_deadline_feeds_the_latency_estimates() {
    let r = Router::builder()
        .policy_str("[defaults]\nroute = \"local\"\n")
        .local_backend(Arc::new(ThreeWordsThenNothing))
        .cache(false)
        .build()
        .unwrap();
    let latency = || {
        let req = Request::new("What is a monad?");
        let features = edgeroute::inspect::inspect(r.policy(), &req);
        r.signals(&req, &features).latency
    };
    let before = latency();
    assert_eq!(before.local_observations, 0);
    let mut req = Request::new("What is a monad?");
    req.deadline = Some(Duration::from_millis(300));
    let err = r.complete(req).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let after = latency();
    assert_eq!(after.local_observations, 1);
    // Three tokens in 300 ms and more: about 100 ms per token, the policy's model 10.
    assert!(after.local_ms > before.local_ms, "{before:?} -> {after:?}");
}

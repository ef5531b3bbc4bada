//! Every way the provider or the network misbehaves, against a real HTTP server on 127.0.0.1:
//! the typed error or the successful retry, how many requests went out, and the breaker state.
#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
#[path = "support/tls_front.rs"]
mod tls_front;

use std::time::{Duration, Instant};

use edgeroute::backend::cloud::{BreakerState, CloudBackend, CloudConfig};
use edgeroute::backend::{Backend, StreamEvent};
use edgeroute::error::TimeoutPhase;
use edgeroute::signals::{CloudHealth, Network};
use edgeroute::Error;
use futures::StreamExt;
use support::{call, collect, unused_addr, Behavior, FakeProvider, DEFAULT_REPLY};

/// Both protocols, for tests that must hold for each.
fn configs(fake: &FakeProvider) -> [CloudConfig; 2] {
    [fake.openai_config(), fake.anthropic_config()]
}

#[tokio::test]
async fn rate_limited_then_retried_after_retry_after() {
    let fake = FakeProvider::start().await;
    for cfg in configs(&fake) {
        fake.reset_counts();
        fake.push_behaviors([Behavior::RateLimited {
            retry_after_secs: Some(1),
        }]);
        let backend = CloudBackend::new(cfg).unwrap();
        let started = Instant::now();
        let g = backend.generate(call("hi")).await.unwrap();
        assert_eq!(g.text, DEFAULT_REPLY);
        assert_eq!(fake.requests_received(), 2);
        // Retry-After was honoured (a lower bound, not a performance goal).
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(backend.breaker_state(), BreakerState::Closed);
    }
}

#[tokio::test]
async fn rate_limited_with_long_retry_after_fails_without_waiting() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::RateLimited {
        retry_after_secs: Some(3600),
    });
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{err:?}"
    );
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn rate_limited_without_retry_after_exhausts_retries() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::RateLimited {
        retry_after_secs: None,
    });
    let backend = CloudBackend::new(fake.anthropic_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Rate limit reached"), "{err}");
    // One attempt + max_retries (2).
    assert_eq!(fake.requests_received(), 3);
}

/// RFC 9110 pairs `Retry-After` with 503 as much as with 429: honoured when short, and a long
/// one fails at once (the router can fall back) instead of sleeping through it.
#[tokio::test]
async fn unavailable_with_retry_after_waits_or_fails_fast() {
    let fake = FakeProvider::start().await;
    for cfg in configs(&fake) {
        fake.reset_counts();
        fake.push_behaviors([Behavior::Unavailable {
            retry_after_secs: 1,
        }]);
        let backend = CloudBackend::new(cfg.clone()).unwrap();
        let started = Instant::now();
        let g = backend.generate(call("hi")).await.unwrap();
        assert_eq!(g.text, DEFAULT_REPLY);
        assert_eq!(fake.requests_received(), 2);
        // The backoff alone is milliseconds; Retry-After (a lower bound) made it wait.
        assert!(started.elapsed() >= Duration::from_secs(1));

        fake.reset_counts();
        fake.set_behavior(Behavior::Unavailable {
            retry_after_secs: 3600,
        });
        let backend = CloudBackend::new(cfg).unwrap();
        let err = backend.generate(call("hi")).await.unwrap_err();
        assert!(
            matches!(err, Error::Server { status: 503, retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
            "{err:?}"
        );
        assert!(err.to_string().contains("retry after"), "{err}");
        assert_eq!(fake.requests_received(), 1);
        fake.set_behavior(Behavior::Ok);
    }
}

/// 5xx answers are retried, and so is 409 (a conflict on the provider's side, which both
/// providers' own SDKs retry).
#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let fake = FakeProvider::start().await;
    for cfg in configs(&fake) {
        fake.reset_counts();
        fake.push_behaviors([Behavior::Status(409), Behavior::Status(503)]);
        let backend = CloudBackend::new(cfg).unwrap();
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        assert_eq!(out.outcome.unwrap().text, DEFAULT_REPLY);
        assert_eq!(fake.requests_received(), 3);
        assert_eq!(backend.breaker_state(), BreakerState::Closed);
    }
}

#[tokio::test]
async fn server_errors_exhaust_retries() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(503));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { status: 503, message, .. } if message.contains("overloaded")),
        "{err:?}"
    );
    assert!(err.is_cloud_failure());
    assert_eq!(fake.requests_received(), 3);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let fake = FakeProvider::start().await;
    for cfg in configs(&fake) {
        for status in [400u16, 401, 403, 404] {
            fake.reset_counts();
            fake.set_behavior(Behavior::Status(status));
            let backend = CloudBackend::new(cfg.clone()).unwrap();
            let err = backend.generate(call("hi")).await.unwrap_err();
            match status {
                401 | 403 => assert!(
                    matches!(err, Error::Auth { status: s, .. } if s == status),
                    "{err:?}"
                ),
                _ => assert!(
                    matches!(err, Error::BadRequest { status: s, .. } if s == status),
                    "{err:?}"
                ),
            }
            assert_eq!(
                fake.requests_received(),
                1,
                "HTTP {status} must not be retried"
            );
            // A server that answers is healthy, whatever it answered.
            assert_eq!(backend.breaker_state(), BreakerState::Closed);
        }
    }
}

#[tokio::test]
async fn unauthorized_says_which_variable_to_fix() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(401));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(matches!(err, Error::Auth { status: 401, .. }));
    assert!(err.to_string().contains("api_key_env"));
    // The provider's own words come along.
    assert!(
        err.to_string().contains("Incorrect API key provided"),
        "{err}"
    );
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn context_too_long_is_typed_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::ContextTooLong);
    for cfg in configs(&fake) {
        fake.reset_counts();
        let backend = CloudBackend::new(cfg).unwrap();
        let err = backend.generate(call("long")).await.unwrap_err();
        assert!(matches!(err, Error::ContextTooLong(_)), "{err:?}");
        let err = backend.stream(call("long")).await.err().unwrap();
        assert!(matches!(err, Error::ContextTooLong(_)), "{err:?}");
        assert_eq!(fake.requests_received(), 2);
    }
}

#[tokio::test]
async fn slow_headers_time_out_in_the_first_token_phase() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(3)));
    let mut cfg = fake.openai_config();
    cfg.first_token_timeout = Duration::from_millis(200);
    cfg.retry.max_retries = 0;
    let backend = CloudBackend::new(cfg.clone()).unwrap();
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::FirstToken,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.requests_received(), 1);

    // Non-streaming: the headers come with the whole answer, so the total limit applies.
    cfg.total_timeout = Duration::from_millis(300);
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.requests_received(), 2);
}

#[tokio::test]
async fn a_slow_non_streaming_answer_is_not_cut_by_the_first_token_timeout() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_millis(400)));
    let mut cfg = fake.openai_config();
    cfg.first_token_timeout = Duration::from_millis(100);
    let backend = CloudBackend::new(cfg).unwrap();
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn slow_headers_then_a_fast_retry_succeeds() {
    let fake = FakeProvider::start().await;
    fake.push_behaviors([Behavior::SlowHeaders(Duration::from_secs(3))]);
    let mut cfg = fake.anthropic_config();
    cfg.first_token_timeout = Duration::from_millis(200);
    let backend = CloudBackend::new(cfg).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert_eq!(out.outcome.unwrap().text, DEFAULT_REPLY);
    assert_eq!(fake.requests_received(), 2);
}

#[tokio::test]
async fn the_call_deadline_caps_every_timeout() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(3)));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let mut c = call("hi");
    c.deadline = Some(Instant::now() + Duration::from_millis(300));
    let started = Instant::now();
    let err = backend.generate(c).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            }
        ),
        "{err:?}"
    );
    // Configured first-token timeout is 5 s: the deadline cut it short, and no retry fits.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.requests_received(), 1);

    // A deadline already past: no request at all.
    let mut c = call("hi");
    c.deadline = Some(Instant::now());
    let err = backend.generate(c).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn a_trickling_stream_hits_the_total_timeout_and_is_not_retried() {
    let fake = FakeProvider::start().await;
    fake.set_reply("one two three four five six seven eight nine ten eleven twelve");
    // 3-4 events before the first text, 12 words, 3 events after: ~1.8 s in all.
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(100)));
    for cfg in configs(&fake) {
        fake.reset_counts();
        let mut cfg = cfg;
        cfg.total_timeout = Duration::from_millis(900);
        let backend = CloudBackend::new(cfg).unwrap();
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        assert!(!out.deltas.is_empty(), "the first tokens arrived in time");
        let err = out.outcome.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    phase: TimeoutPhase::Total,
                    ..
                }
            ),
            "{err:?}"
        );
        // Tokens reached the caller: no retry.
        assert_eq!(fake.requests_received(), 1);
    }
}

#[tokio::test]
async fn a_slow_but_steady_stream_completes() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(5)));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert_eq!(out.outcome.unwrap().text, DEFAULT_REPLY);
    let g = backend.generate(call("hi")).await.unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
}

#[tokio::test]
async fn reset_mid_stream_after_the_first_token_is_an_error_not_a_retry() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::ResetMidBody);
    for cfg in configs(&fake) {
        fake.reset_counts();
        let backend = CloudBackend::new(cfg).unwrap();
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        assert_eq!(out.deltas, vec!["The ".to_string()]);
        let err = out.outcome.unwrap_err();
        assert!(matches!(err, Error::Connection(_)), "{err:?}");
        assert_eq!(fake.requests_received(), 1);
    }
}

#[tokio::test]
async fn reset_mid_body_without_streaming_is_retried() {
    let fake = FakeProvider::start().await;
    fake.push_behaviors([Behavior::ResetMidBody]);
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let g = backend.generate(call("hi")).await.unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
    assert_eq!(fake.requests_received(), 2);

    fake.reset_counts();
    fake.set_behavior(Behavior::ResetMidBody);
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert_eq!(fake.requests_received(), 3);
}

#[tokio::test]
async fn malformed_json_is_typed_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::MalformedJson);
    for cfg in configs(&fake) {
        fake.reset_counts();
        let backend = CloudBackend::new(cfg).unwrap();
        let err = backend.generate(call("hi")).await.unwrap_err();
        assert!(matches!(err, Error::MalformedResponse(_)), "{err:?}");
        let err = match backend.stream(call("hi")).await {
            Ok(s) => collect(s).await.outcome.unwrap_err(),
            Err(e) => e,
        };
        assert!(matches!(err, Error::MalformedResponse(_)), "{err:?}");
        assert_eq!(fake.requests_received(), 2);
    }
}

/// A stream that ends cleanly after its finish reason, without `[DONE]` / `message_stop` (as
/// some OpenAI-compatible servers send it), is a whole answer: not an error, not a failure in
/// the breaker, not a reason to answer again elsewhere.
#[tokio::test]
async fn a_stream_ending_after_its_finish_reason_is_a_whole_answer() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::NoTerminator);
    for cfg in configs(&fake) {
        let mut cfg = cfg;
        cfg.breaker.consecutive_failures = 1;
        let backend = CloudBackend::new(cfg).unwrap();
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        assert_eq!(out.deltas.concat(), DEFAULT_REPLY);
        let g = out.outcome.unwrap();
        assert_eq!(g.text, DEFAULT_REPLY);
        assert!(!g.usage_estimated);
        assert_eq!(backend.breaker_state(), BreakerState::Closed);
    }
}

#[tokio::test]
async fn a_truncated_stream_is_an_error_never_a_partial_answer() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::TruncatedStream);
    for cfg in configs(&fake) {
        fake.reset_counts();
        let backend = CloudBackend::new(cfg).unwrap();
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        // Every token arrived, but without a finish reason or the terminator the answer is
        // not trusted.
        assert_eq!(out.deltas.concat(), DEFAULT_REPLY);
        let err = out.outcome.unwrap_err();
        assert!(matches!(err, Error::TruncatedStream(_)), "{err:?}");
        assert!(err.is_cloud_failure());
        // Non-streaming: a body cut short is malformed.
        let err = backend.generate(call("hi")).await.unwrap_err();
        assert!(matches!(err, Error::MalformedResponse(_)), "{err:?}");
    }
}

#[tokio::test]
async fn breaker_opens_fails_fast_then_probes_and_closes() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(500));
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 0;
    cfg.breaker.consecutive_failures = 3;
    cfg.breaker.open_for = Duration::from_millis(300);
    let backend = CloudBackend::new(cfg).unwrap();

    for _ in 0..3 {
        assert!(matches!(
            backend.generate(call("hi")).await,
            Err(Error::Server { status: 500, .. })
        ));
    }
    assert_eq!(backend.breaker_state(), BreakerState::Open);
    assert_eq!(backend.health(), CloudHealth::Down);
    assert_eq!(fake.requests_received(), 3);

    // Open: fail fast, no network I/O.
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    assert!(matches!(
        backend.stream(call("hi")).await.err().unwrap(),
        Error::CircuitOpen { .. }
    ));
    assert_eq!(fake.requests_received(), 3);

    // Rested: half-open; a failed probe opens it again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(backend.breaker_state(), BreakerState::HalfOpen);
    assert_eq!(backend.health(), CloudHealth::Degraded);
    assert!(backend.generate(call("hi")).await.is_err());
    assert_eq!(fake.requests_received(), 4);
    assert_eq!(backend.breaker_state(), BreakerState::Open);

    // Rested again: a successful probe closes it.
    fake.set_behavior(Behavior::Ok);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
    assert_eq!(backend.health(), CloudHealth::Healthy);
}

/// A streamed probe closes the breaker with its first token, not when its answer ends: a long
/// answer does not keep every other call failing with `CircuitOpen` while it streams.
#[tokio::test]
async fn a_streamed_probe_closes_the_breaker_at_its_first_token() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(500));
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 0;
    cfg.breaker.consecutive_failures = 1;
    cfg.breaker.open_for = Duration::from_millis(200);
    let backend = CloudBackend::new(cfg).unwrap();
    assert!(backend.generate(call("hi")).await.is_err());
    assert_eq!(backend.breaker_state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(backend.breaker_state(), BreakerState::HalfOpen);

    // The probe's answer starts, then stalls.
    fake.set_behavior(Behavior::StallAfterFirstToken(Duration::from_secs(30)));
    let mut probe = backend.stream(call("hi")).await.unwrap();
    assert!(matches!(
        probe.next().await,
        Some(Ok(StreamEvent::Delta(_)))
    ));
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
    // Another call is let through while the probe's answer is still coming.
    let other = backend.stream(call("hi")).await;
    assert!(other.is_ok(), "{:?}", other.err());
    assert_eq!(fake.requests_received(), 3);
}

/// A 429 the call waits out and retries is the provider pacing a burst: only each call's last
/// 429 counts in the breaker, so two rate-limited calls do not open it for everyone.
#[tokio::test]
async fn only_a_calls_last_rate_limit_counts_in_the_breaker() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::RateLimited {
        retry_after_secs: Some(0),
    });
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 2;
    cfg.breaker.consecutive_failures = 3;
    let backend = CloudBackend::new(cfg).unwrap();
    for _ in 0..2 {
        let err = backend.generate(call("hi")).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    }
    assert_eq!(fake.requests_received(), 6);
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
    // A third call rate-limited to its end: three calls failed in a row.
    assert!(backend.generate(call("hi")).await.is_err());
    assert_eq!(backend.breaker_state(), BreakerState::Open);
}

/// A provider that starts every answer and then stalls opens the breaker even when every
/// caller's deadline is shorter than the idle timeout: the silences after first tokens add up
/// until a whole answer, and count once they pass `total_timeout`.
#[tokio::test]
async fn a_provider_stalling_after_first_tokens_opens_the_breaker_for_hurried_callers() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::StallAfterFirstToken(Duration::from_secs(30)));
    let mut cfg = fake.openai_config();
    cfg.total_timeout = Duration::from_millis(600);
    cfg.breaker.consecutive_failures = 1;
    cfg.breaker.open_for = Duration::from_millis(300);
    let backend = CloudBackend::new(cfg).unwrap();
    let mut calls = 0;
    while backend.breaker_state() == BreakerState::Closed && calls < 10 {
        let mut c = call("hi");
        c.deadline = Some(Instant::now() + Duration::from_millis(250));
        let out = collect(backend.stream(c).await.unwrap()).await;
        assert!(
            matches!(out.outcome, Err(Error::Timeout { .. })),
            "{:?}",
            out.outcome
        );
        calls += 1;
    }
    assert_eq!(backend.breaker_state(), BreakerState::Open);
    // No single caller's deadline counts: about 250 ms of silence each, past 600 ms at the third.
    assert!(calls >= 3, "opened after {calls} calls");

    // A whole answer ends the count.
    tokio::time::sleep(Duration::from_millis(350)).await;
    fake.set_behavior(Behavior::Ok);
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    fake.set_behavior(Behavior::StallAfterFirstToken(Duration::from_secs(30)));
    let mut c = call("hi");
    c.deadline = Some(Instant::now() + Duration::from_millis(250));
    assert!(collect(backend.stream(c).await.unwrap())
        .await
        .outcome
        .is_err());
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn retries_count_in_the_breaker_and_stop_when_it_opens() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(502));
    let mut cfg = fake.anthropic_config();
    cfg.retry.max_retries = 10;
    cfg.breaker.consecutive_failures = 4;
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    // The real failure, not CircuitOpen, and no attempts past the opening.
    assert!(matches!(err, Error::Server { status: 502, .. }), "{err:?}");
    assert_eq!(fake.requests_received(), 4);
    assert_eq!(backend.breaker_state(), BreakerState::Open);
}

#[tokio::test]
async fn stream_failures_after_the_first_token_count_in_the_breaker() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::TruncatedStream);
    let mut cfg = fake.openai_config();
    cfg.breaker.consecutive_failures = 2;
    let backend = CloudBackend::new(cfg).unwrap();
    for _ in 0..2 {
        let out = collect(backend.stream(call("hi")).await.unwrap()).await;
        assert!(out.outcome.is_err());
    }
    assert_eq!(backend.breaker_state(), BreakerState::Open);
}

/// A fresh client (a CLI run, an app's first call) gets every retry `max_retries` allows:
/// the retry budget starts with one call's worth.
#[tokio::test]
async fn a_fresh_client_retries_as_often_as_configured() {
    let fake = FakeProvider::start().await;
    fake.push_behaviors([Behavior::Status(500), Behavior::Status(503)]);
    let mut cfg = fake.openai_config();
    assert_eq!(cfg.retry.max_retries, 2);
    // No refill with time: only what the budget starts with counts (with the default refill
    // of one retry a second, whether a second retry fits depends on the backoff's length).
    cfg.retry.budget_min_per_sec = 0.0;
    let backend = CloudBackend::new(cfg).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert!(out.outcome.is_ok(), "{:?}", out.outcome.err());
    assert_eq!(fake.requests_received(), 3);
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(500));
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 5;
    cfg.retry.budget_ratio = 0.5;
    cfg.retry.budget_min_per_sec = 0.0;
    cfg.retry.budget_max = 100.0;
    cfg.breaker.consecutive_failures = 1000;
    cfg.breaker.min_calls = 1000;
    let backend = CloudBackend::new(cfg).unwrap();
    for _ in 0..10 {
        assert!(backend.generate(call("hi")).await.is_err());
    }
    // One call's worth of retries (5) to start, and 10 calls deposit 0.5 retry each: at most
    // 10 retries in all, instead of 50.
    let n = fake.requests_received();
    assert!((15..=20).contains(&n), "{n} requests for 10 calls");
}

#[tokio::test]
async fn connection_refused_marks_the_network_offline_until_a_success() {
    let addr = unused_addr();
    let mut cfg = CloudConfig::openai("fake-model")
        .with_base_url(format!("http://{addr}/v1"))
        .with_api_key(edgeroute::backend::cloud::ApiKey::new("k"));
    cfg.retry.initial_backoff = Duration::from_millis(5);
    let backend = CloudBackend::new(cfg).unwrap();
    assert_eq!(backend.network(), Network::Online);
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(backend.network(), Network::Offline);

    // The provider comes up on that address: the next success marks the network online.
    let fake = FakeProvider::start_on(addr).await;
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    assert_eq!(backend.network(), Network::Online);
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn no_key_means_unavailable_and_no_network_io() {
    let fake = FakeProvider::start().await;
    let cfg = fake.openai_config().without_api_key();
    let mut cfg = cfg;
    cfg.api_key_env = "EDGEROUTE_TEST_KEY_THAT_IS_NOT_SET".into();
    let backend = CloudBackend::new(cfg).unwrap();
    let why = backend.availability().unwrap_err();
    assert_eq!(why, "no API key: set $EDGEROUTE_TEST_KEY_THAT_IS_NOT_SET");
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(err, Error::TierUnavailable { tier: "cloud", .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("EDGEROUTE_TEST_KEY_THAT_IS_NOT_SET"));
    assert!(backend.stream(call("hi")).await.is_err());
    assert_eq!(fake.requests_received(), 0);
}

#[tokio::test]
async fn dns_failure_marks_the_network_offline() {
    // `.invalid` never resolves (RFC 6761).
    let mut cfg = CloudConfig::anthropic("m")
        .with_base_url("https://edgeroute-test.invalid/v1")
        .with_api_key(edgeroute::backend::cloud::ApiKey::new("k"));
    cfg.retry.max_retries = 0;
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.is_cloud_failure());
    assert_eq!(backend.network(), Network::Offline);
}

#[tokio::test]
async fn headers_on_time_but_a_late_first_token_is_a_first_token_timeout_and_retried() {
    let fake = FakeProvider::start().await;
    // Headers go out at once; every event, the first included, waits 400 ms.
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(400)));
    let mut cfg = fake.anthropic_config();
    cfg.first_token_timeout = Duration::from_millis(150);
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::FirstToken,
                ..
            }
        ),
        "{err:?}"
    );
    // No token reached the caller, so every attempt was made.
    assert_eq!(fake.requests_received(), 3);
}

#[tokio::test]
async fn the_call_deadline_ends_a_stream_in_progress() {
    let fake = FakeProvider::start().await;
    fake.set_reply("one two three four five six seven eight nine ten eleven twelve");
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(100)));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let mut c = call("hi");
    c.deadline = Some(Instant::now() + Duration::from_millis(800));
    let out = collect(backend.stream(c).await.unwrap()).await;
    assert!(!out.deltas.is_empty());
    assert!(
        matches!(
            out.outcome,
            Err(Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            })
        ),
        "{:?}",
        out.outcome.err()
    );
    assert_eq!(fake.requests_received(), 1);
}

/// A `retry-after-ms` no delay can represent (here 1e30 ms) is ignored, not a panic: the
/// call is retried as without the header, and `Retry-After` still applies when present.
#[tokio::test]
async fn a_malformed_retry_after_ms_is_ignored() {
    let fake = FakeProvider::start().await;
    let rate_limited = |headers: &[(&str, &str)]| {
        Behavior::Raw {
        status: 429,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
    }
    };
    fake.set_behavior(rate_limited(&[("retry-after-ms", "1e30")]));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RateLimited {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.requests_received(), 3);
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");

    fake.reset_counts();
    fake.set_behavior(Behavior::Ok);
    fake.push_behaviors([rate_limited(&[
        ("retry-after-ms", "-1e300"),
        ("retry-after", "3600"),
    ])]);
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{err:?}"
    );
    assert_eq!(fake.requests_received(), 1);
}

/// A redirect is never followed: it would carry the prompt and the key (Anthropic's
/// `x-api-key` included) elsewhere. The error names the target; the target gets nothing.
#[tokio::test]
async fn redirects_are_not_followed() {
    let fake = FakeProvider::start().await;
    let elsewhere = FakeProvider::start().await;
    for cfg in configs(&fake) {
        for status in [307u16, 308, 302, 301] {
            fake.reset_counts();
            let location = format!("{}/chat/completions", elsewhere.url());
            fake.set_behavior(Behavior::Raw {
                status,
                headers: vec![("location".into(), location.clone())],
                body: String::new(),
            });
            let backend = CloudBackend::new(cfg.clone()).unwrap();
            let err = backend
                .generate(call("a private prompt"))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::TierUnavailable { tier: "cloud", .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&location), "{msg}");
            assert!(msg.contains(&format!("HTTP {status}")), "{msg}");
            assert!(msg.contains("redirect"), "{msg}");
            let err = backend
                .stream(call("a private prompt"))
                .await
                .err()
                .unwrap();
            assert!(err.to_string().contains(&location), "{err}");
            // Not retried, and a server that answers is healthy.
            assert_eq!(fake.requests_received(), 2);
            assert_eq!(backend.breaker_state(), BreakerState::Closed);
            assert_eq!(
                elsewhere.requests_received(),
                0,
                "HTTP {status} was followed"
            );
        }
    }
}

/// A backend (no retries) for a provider that is down at `addr`, after a first call found
/// it so: the network reads offline for `offline_for`.
async fn found_offline(addr: &support::DownAddr, offline_for: Duration) -> CloudBackend {
    let mut cfg = CloudConfig::openai("fake-model")
        .with_base_url(format!("http://{addr}/v1"))
        .with_api_key(edgeroute::backend::cloud::ApiKey::new("k"));
    cfg.retry.max_retries = 0;
    cfg.breaker.offline_for = offline_for;
    let backend = CloudBackend::new(cfg).unwrap();
    assert!(matches!(
        backend.generate(call("hi")).await,
        Err(Error::Connection(_))
    ));
    assert_eq!(backend.network(), Network::Offline);
    backend
}

/// "Offline" is not forever: a failure to connect marks the network offline for
/// `offline_for`, then it reads online again and the next call probes it.
#[tokio::test]
async fn offline_expires_and_the_next_call_probes() {
    let addr = unused_addr();
    let backend = found_offline(&addr, Duration::from_millis(500)).await;

    // Expired: online again, with no request needed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(backend.network(), Network::Online);
    // The probe finds the provider still down: offline again.
    assert!(matches!(
        backend.generate(call("hi")).await,
        Err(Error::Connection(_))
    ));
    assert_eq!(backend.network(), Network::Offline);

    // The provider comes up; once the mark expires, a probe finds it.
    let fake = FakeProvider::start_on(addr).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(backend.network(), Network::Online);
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    assert_eq!(backend.network(), Network::Online);
    assert_eq!(fake.requests_received(), 1);
}

/// A caller's tight deadline running out says nothing about the provider: such timeouts
/// (before or after the first token) never open the breaker. The configured timeouts do.
#[tokio::test]
async fn the_callers_deadline_does_not_count_against_the_provider() {
    let fake = FakeProvider::start().await;
    let mut cfg = fake.openai_config();
    cfg.breaker.consecutive_failures = 2;
    let backend = CloudBackend::new(cfg.clone()).unwrap();
    let tight = || {
        let mut c = call("hi");
        c.deadline = Some(Instant::now() + Duration::from_millis(150));
        c
    };
    let total_timeout = |e: &Error| {
        matches!(
            e,
            Error::Timeout {
                phase: TimeoutPhase::Total,
                ..
            }
        )
    };

    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(3)));
    for _ in 0..3 {
        let err = backend.generate(tight()).await.unwrap_err();
        assert!(total_timeout(&err), "{err:?}");
        let err = backend.stream(tight()).await.err().unwrap();
        assert!(total_timeout(&err), "{err:?}");
    }
    assert_eq!(backend.breaker_state(), BreakerState::Closed);

    // After the first token: the stream ends with the caller's deadline.
    fake.set_reply("one two three four five six seven eight nine ten eleven twelve");
    fake.set_behavior(Behavior::Trickle(Duration::from_millis(60)));
    for _ in 0..3 {
        let mut c = call("hi");
        c.deadline = Some(Instant::now() + Duration::from_millis(400));
        let out = collect(backend.stream(c).await.unwrap()).await;
        let err = out.outcome.unwrap_err();
        assert!(total_timeout(&err), "{err:?}");
    }
    assert_eq!(backend.breaker_state(), BreakerState::Closed);

    // The configured total timeout is the provider being slow: it counts.
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(3)));
    cfg.total_timeout = Duration::from_millis(150);
    let backend = CloudBackend::new(cfg).unwrap();
    for _ in 0..2 {
        let err = backend.generate(call("hi")).await.unwrap_err();
        assert!(total_timeout(&err), "{err:?}");
    }
    assert_eq!(backend.breaker_state(), BreakerState::Open);
}

/// A provider that hangs opens the breaker even when every caller's deadline is tighter than
/// `total_timeout`. One caller's timeout is never held against the provider, even with a
/// threshold of one failure; once the provider has been silent (asked, and answering nothing)
/// for longer than `total_timeout` in all, callers' timeouts count. An answer starts the
/// silence over. Streaming or not.
#[tokio::test]
async fn a_hung_provider_opens_the_breaker_even_when_every_caller_is_in_a_hurry() {
    let fake = FakeProvider::start().await;
    // Hung: the headers would come after a minute.
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(60)));
    let mut cfg = fake.openai_config();
    // Three hurried calls (~450 ms) stay well under it, even on a loaded machine.
    cfg.total_timeout = Duration::from_millis(1500);
    cfg.retry.max_retries = 0;
    cfg.breaker.consecutive_failures = 1;
    for streaming in [false, true] {
        let backend = CloudBackend::new(cfg.clone()).unwrap();
        // One call with a 150 ms deadline, well under total_timeout; its error.
        let hurried = || async {
            let mut c = call("hi");
            c.deadline = Some(Instant::now() + Duration::from_millis(150));
            if streaming {
                backend.stream(c).await.err().unwrap()
            } else {
                backend.generate(c).await.unwrap_err()
            }
        };
        let callers_timeout = |e: &Error| {
            matches!(
                e,
                Error::Timeout {
                    phase: TimeoutPhase::Total,
                    ..
                }
            )
        };
        // ~450 ms of silence: under total_timeout, nothing is held against the provider.
        for _ in 0..3 {
            let err = hurried().await;
            assert!(callers_timeout(&err), "{err:?}");
        }
        assert_eq!(backend.breaker_state(), BreakerState::Closed);

        // It answers once: its silence starts over, and ~450 ms more are still under the limit.
        fake.push_behaviors([Behavior::Ok]);
        assert_eq!(
            backend.generate(call("hi")).await.unwrap().text,
            DEFAULT_REPLY
        );
        for _ in 0..3 {
            let err = hurried().await;
            assert!(callers_timeout(&err), "{err:?}");
        }
        assert_eq!(backend.breaker_state(), BreakerState::Closed);

        // Silent for longer than total_timeout: the next callers' timeouts count, and the
        // breaker (threshold 1) opens.
        let mut more = 0;
        while backend.breaker_state() == BreakerState::Closed {
            more += 1;
            assert!(more <= 25, "still closed after {more} more silent calls");
            let err = hurried().await;
            assert!(callers_timeout(&err), "{err:?}");
        }
        assert_eq!(backend.breaker_state(), BreakerState::Open);
        let err = hurried().await;
        assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    }
}

/// OpenAI's `insufficient_quota` comes as a 429 but is not a rate limit: reported in the
/// provider's words, not retried, not counted against the provider's health.
#[tokio::test]
async fn out_of_quota_is_reported_in_the_providers_words_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::json_error(
        429,
        serde_json::json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
    ));
    let mut cfg = fake.openai_config();
    cfg.breaker.consecutive_failures = 1;
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(err, Error::TierUnavailable { tier: "cloud", .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("You exceeded your current quota"), "{msg}");
    assert!(!msg.contains("slow down"), "{msg}");
    // The router falls back to the local tier on it.
    assert!(err.is_cloud_failure());
    assert_eq!(
        fake.requests_received(),
        1,
        "insufficient_quota was retried"
    );
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(err.to_string().contains("exceeded your current quota"));
    assert_eq!(fake.requests_received(), 2);
    assert_eq!(backend.breaker_state(), BreakerState::Closed);

    // A real rate limit is still one: retried.
    fake.reset_counts();
    fake.push_behaviors([Behavior::RateLimited {
        retry_after_secs: None,
    }]);
    fake.set_behavior(Behavior::Ok);
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
    assert_eq!(fake.requests_received(), 2);
}

/// OpenAI's 403 for an unsupported region is not a key problem: the provider's message is
/// kept, and the error does not send the reader to check the API key.
#[tokio::test]
async fn a_region_block_keeps_the_providers_message() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::json_error(
        403,
        serde_json::json!({"error": {
            "code": "unsupported_country_region_territory",
            "message": "Country, region, or territory not supported",
            "param": null, "type": "request_forbidden"}}),
    ));
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Country, region, or territory not supported"),
        "{msg}"
    );
    assert!(!msg.contains("api_key_env"), "{msg}");
    assert!(err.is_cloud_failure());
    assert_eq!(fake.requests_received(), 1);
}

/// Limits set to `Duration::MAX` through the public config mean "no limit", not an overflow
/// panic when the call starts.
#[tokio::test]
async fn unbounded_timeouts_do_not_panic() {
    let fake = FakeProvider::start().await;
    let mut cfg = fake.openai_config();
    cfg.total_timeout = Duration::MAX;
    cfg.first_token_timeout = Duration::MAX;
    cfg.retry.max_retry_after = Duration::MAX;
    let backend = CloudBackend::new(cfg).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert!(out.outcome.is_ok(), "{:?}", out.outcome.err());
    assert!(backend.generate(call("hi")).await.is_ok());
}

/// A server whose certificate is signed by an authority the client does not trust (a company
/// proxy, a private server) is an error that names the certificate and `[cloud].ca_file`: not
/// retried, and the device is not marked offline (the network is fine). With the authority in
/// `ca_file`, the same server answers.
#[tokio::test]
async fn an_untrusted_certificate_is_a_clear_error_and_ca_file_fixes_it() {
    let fake = FakeProvider::start().await;
    let front = tls_front::TlsFront::start(fake.addr()).await;
    let cfg = fake.openai_config().with_base_url(front.url());
    let backend = CloudBackend::new(cfg.clone()).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, edgeroute::Error::TierUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        text.contains("not trusted") && text.contains("[cloud].ca_file"),
        "{text}"
    );
    assert_eq!(front.connections(), 1, "retried");
    assert_eq!(front.handshakes(), 0);
    assert_eq!(fake.requests_received(), 0);
    assert_eq!(backend.network(), edgeroute::signals::Network::Online);

    let mut trusted = cfg;
    trusted.ca_file = Some(tls_front::fixtures().join("ca.pem"));
    let backend = CloudBackend::new(trusted).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert!(out.outcome.is_ok(), "{:?}", out.outcome.err());
    assert_eq!(fake.requests_received(), 1);

    // A ca_file that is missing or not PEM is a configuration error when the backend is built.
    for (bad, why) in [
        (tls_front::fixtures().join("missing.pem"), "cannot read it"),
        (tls_front::fixtures().join("README.md"), "no certificate"),
    ] {
        let mut cfg = fake.openai_config();
        cfg.ca_file = Some(bad);
        let err = CloudBackend::new(cfg).unwrap_err().to_string();
        assert!(
            err.contains("[cloud].ca_file") && err.contains(why),
            "{err}"
        );
    }
}

/// A streamed answer that goes silent mid-way for longer than `idle_timeout` ends with a
/// between-tokens timeout after what had arrived, instead of holding the call until the total
/// limit; the same silence within the limit is waited out.
#[tokio::test]
async fn an_answer_that_stops_arriving_times_out_between_tokens() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::StallAfterFirstToken(Duration::from_millis(800)));
    let mut cfg = fake.openai_config();
    cfg.idle_timeout = Duration::from_millis(200);
    let backend = CloudBackend::new(cfg.clone()).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert_eq!(out.deltas.len(), 1, "{:?}", out.deltas);
    let err = out.outcome.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                phase: TimeoutPhase::BetweenTokens,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("[cloud].idle_timeout_ms"), "{err}");

    cfg.idle_timeout = Duration::from_secs(5);
    let backend = CloudBackend::new(cfg).unwrap();
    let out = collect(backend.stream(call("hi")).await.unwrap()).await;
    assert!(out.outcome.is_ok(), "{:?}", out.outcome.err());
}

/// An error answer's `x-should-retry` (sent by both providers) beats its status, as their
/// SDKs let it: `false` stops the retries of a 503, `true` retries a 400, within the retry
/// limit. Without it, the status decides. Streaming or not, both protocols.
#[tokio::test]
async fn the_providers_retry_advice_beats_the_status() {
    let answer = |status: u16, advice: Option<&str>| Behavior::Raw {
        status,
        headers: [("content-type", "application/json")]
            .into_iter()
            .chain(advice.map(|a| ("x-should-retry", a)))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        body: r#"{"error":{"message":"busy","type":"server_error"}}"#.into(),
    };
    let fake = FakeProvider::start().await;
    let cases = [
        (503, Some("false"), 1),
        (400, Some("true"), 3),
        (503, None, 3),
        (400, None, 1),
    ];
    for anthropic in [false, true] {
        for streaming in [false, true] {
            for (status, advice, requests) in cases {
                // A backend per case: its breaker and retry budget start fresh.
                let backend = CloudBackend::new(if anthropic {
                    fake.anthropic_config()
                } else {
                    fake.openai_config()
                })
                .unwrap();
                fake.reset_counts();
                fake.set_behavior(answer(status, advice));
                let err = if streaming {
                    backend.stream(call("hi")).await.err().unwrap()
                } else {
                    backend.generate(call("hi")).await.unwrap_err()
                };
                let case =
                    format!("{status} {advice:?} anthropic={anthropic} streaming={streaming}");
                let kind_ok = match status {
                    503 => matches!(err, Error::Server { status: 503, .. }),
                    _ => matches!(err, Error::BadRequest { status: 400, .. }),
                };
                assert!(kind_ok, "{case}: {err:?}");
                assert_eq!(fake.requests_received(), requests, "{case}");
            }
        }
    }
}

/// An answer body far past any chat answer (a misbehaving server streaming JSON for ever) is
/// a malformed answer once past its 16 MiB cap, not read into memory without bound; also
/// when it answers a streaming call as one JSON document.
#[tokio::test]
async fn a_json_answer_past_its_size_cap_is_malformed() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!(r#"{{"padding":"{}"}}"#, "a".repeat(17 << 20)),
    });
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 0;
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(
        matches!(&err, Error::MalformedResponse(m) if m.contains("16 MiB")),
        "{err:?}"
    );
    let err = backend.stream(call("hi")).await.err().unwrap();
    assert!(
        matches!(&err, Error::MalformedResponse(m) if m.contains("16 MiB")),
        "{err:?}"
    );
}

/// A network probe that ends with no outcome (its caller gave up before the provider
/// answered) leaves the network reading online, so the next call probes again: the cloud
/// used to read offline for another `offline_for` on no evidence.
#[tokio::test]
async fn a_probe_cut_short_does_not_keep_the_network_offline() {
    let addr = unused_addr();
    let backend = found_offline(&addr, Duration::from_millis(300)).await;
    // The provider comes back, slow to answer; the mark expires and a call probes it, but
    // its caller leaves before the headers come.
    let fake = FakeProvider::start_on(addr).await;
    fake.set_behavior(Behavior::SlowHeaders(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backend.network(), Network::Online);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), backend.generate(call("hi")));
    assert!(gave_up.await.is_err());
    assert_eq!(
        fake.requests_received(),
        1,
        "the probe reached the provider"
    );
    assert_eq!(backend.network(), Network::Online);
}

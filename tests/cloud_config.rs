//! Configuration guards of the cloud tier: plain http only to loopback, API keys never printed,
//! prompts and answers never in logs.
#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeroute::backend::cloud::{ApiKey, BreakerConfig, BreakerState, CloudBackend, CloudConfig};
use edgeroute::backend::Backend;
use edgeroute::policy::{compile_str, render_diagnostics, CloudSection};
use edgeroute::Error;
use support::{call, collect, Behavior, FakeProvider, TEST_KEY};

fn with_url(url: &str) -> CloudConfig {
    CloudConfig::openai("m")
        .with_base_url(url)
        .with_api_key(ApiKey::new("k"))
}

#[test]
fn plain_http_is_refused_for_non_loopback_hosts() {
    for url in [
        "http://api.example.com/v1",
        "http://10.0.0.5:8000/v1",
        "http://192.168.1.20/v1",
    ] {
        let err = CloudBackend::new(with_url(url)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{url}: {err:?}");
        assert!(err.to_string().contains("allow_insecure_http"), "{err}");
    }
    let mut cfg = with_url("http://10.0.0.5:8000/v1");
    cfg.allow_insecure_http = true;
    assert!(CloudBackend::new(cfg).is_ok());
}

#[test]
fn loopback_http_and_https_are_accepted() {
    for url in [
        "http://127.0.0.1:8080/v1",
        "http://127.3.2.1/v1",
        "http://localhost:11434/v1",
        "http://[::1]:8000/v1/",
        "https://api.openai.com/v1",
    ] {
        let b = CloudBackend::new(with_url(url)).unwrap();
        assert!(
            b.endpoint().ends_with("/v1/chat/completions"),
            "{}",
            b.endpoint()
        );
    }
    let b = CloudBackend::new(CloudConfig::anthropic("m").with_api_key(ApiKey::new("k"))).unwrap();
    assert_eq!(b.endpoint(), "https://api.anthropic.com/v1/messages");
}

#[test]
fn other_schemes_and_garbage_are_refused() {
    for url in ["ftp://127.0.0.1/v1", "not a url", "file:///etc/passwd"] {
        assert!(
            matches!(CloudBackend::new(with_url(url)), Err(Error::Config(_))),
            "{url}"
        );
    }
}

#[test]
fn api_key_never_printed() {
    let secret = "sk-live-SECRET-4242";
    let key = ApiKey::new(secret);
    assert_eq!(key.to_string(), "***");
    assert_eq!(format!("{key:?}"), "***");
    let cfg = CloudConfig::anthropic("m").with_api_key(key);
    assert!(!format!("{cfg:?}").contains(secret));
    let backend = CloudBackend::new(cfg).unwrap();
    assert!(!format!("{backend:?}").contains(secret));
    assert!(!format!("{:?}", backend.config()).contains(secret));
}

/// A log sink shared with the subscriber.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn prompts_answers_and_keys_stay_out_of_logs_and_errors() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread runtime: every task of this test logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let prompt = "PRIVATE-PROMPT my account number is 12345";
    let answer = "PRIVATE-ANSWER your balance is 99";
    let fake = FakeProvider::start().await;
    fake.set_reply(answer);
    let mut errors = Vec::new();
    for cfg in [fake.openai_config(), fake.anthropic_config()] {
        let backend = CloudBackend::new(cfg).unwrap();
        backend.generate(call(prompt)).await.unwrap();
        collect(backend.stream(call(prompt)).await.unwrap())
            .await
            .outcome
            .unwrap();
        for b in [
            Behavior::Status(500),
            Behavior::Status(401),
            Behavior::ContextTooLong,
            Behavior::MalformedJson,
            Behavior::TruncatedStream,
            Behavior::ResetMidBody,
        ] {
            fake.set_behavior(b);
            errors.push(backend.generate(call(prompt)).await.unwrap_err());
            match backend.stream(call(prompt)).await {
                Ok(s) => errors.push(collect(s).await.outcome.unwrap_err()),
                Err(e) => errors.push(e),
            }
        }
        fake.set_behavior(Behavior::Ok);
    }
    // The key did go on the wire.
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.headers.get("authorization").map(String::as_str)
            == Some(&*format!("Bearer {TEST_KEY}"))));

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying cloud call"),
        "debug logs were captured: {logs}"
    );
    for text in [&logs]
        .into_iter()
        .cloned()
        .chain(errors.iter().map(|e| format!("{e} {e:?}")))
    {
        assert!(!text.contains("PRIVATE-PROMPT"), "prompt leaked: {text}");
        assert!(!text.contains("PRIVATE-ANSWER"), "answer leaked: {text}");
        assert!(!text.contains(TEST_KEY), "key leaked: {text}");
    }
}

/// The `[cloud]` section of a policy with this `[cloud.breaker]` table.
fn cloud_section(breaker: &str) -> CloudSection {
    let src = format!("[cloud]\nmodel = \"fake-model\"\n[cloud.breaker]\n{breaker}");
    compile_str(&src, Path::new("p.toml"))
        .unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
        .cloud
        .unwrap()
}

#[test]
fn every_cloud_breaker_key_reaches_the_breaker_config() {
    let cloud = cloud_section(
        "consecutive_failures = 3\nwindow = 40\nmin_calls = 8\nfailure_ratio = \"0.25\"\n\
         open_for_ms = 1500\nhalf_open_probes = 2\noffline_for_ms = 2500\n",
    );
    let mut expected = BreakerConfig::default();
    expected.consecutive_failures = 3;
    expected.window = 40;
    expected.min_calls = 8;
    expected.failure_ratio = 0.25;
    expected.open_for = Duration::from_millis(1500);
    expected.half_open_probes = 2;
    expected.offline_for = Duration::from_millis(2500);
    assert_eq!(BreakerConfig::from_policy(&cloud), expected);
    // Keys left out keep their defaults.
    let mut expected = BreakerConfig::default();
    expected.window = 50;
    assert_eq!(
        BreakerConfig::from_policy(&cloud_section("window = 50\n")),
        expected
    );
}

/// A policy's `[cloud.breaker]` drives the breaker of a backend against a real server: with a
/// threshold of one failure (the default is five) one failed call opens it, and it stays open
/// for `open_for_ms` (the default is 30 s), failing fast without a request.
#[tokio::test]
async fn a_policys_breaker_settings_are_honoured() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(500));
    let cloud = cloud_section("consecutive_failures = 1\nopen_for_ms = 700\n");
    let mut cfg = fake.openai_config();
    cfg.retry.max_retries = 0;
    cfg.breaker = BreakerConfig::from_policy(&cloud);
    let backend = CloudBackend::new(cfg).unwrap();
    let err = backend.generate(call("hi")).await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 500, .. }), "{err:?}");
    assert_eq!(backend.breaker_state(), BreakerState::Open);
    let err = backend.generate(call("hi")).await.unwrap_err();
    match err {
        Error::CircuitOpen { retry_in } => {
            assert!(retry_in <= Duration::from_millis(700), "{retry_in:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests_received(), 1);
}

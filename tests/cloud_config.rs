//! Configuration guards of the cloud tier: plain http only to loopback, API keys never printed,
//! prompts and answers never in logs.
#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use edgeroute::backend::cloud::{ApiKey, CloudBackend, CloudConfig};
use edgeroute::backend::Backend;
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

#[test]
fn api_key_from_env() {
    let var = "EDGEROUTE_CLOUD_TEST_KEY_FROM_ENV";
    std::env::set_var(var, "  sk-from-env  ");
    let key = ApiKey::from_env(var).unwrap();
    assert_eq!(key.expose_secret(), "sk-from-env");
    let cfg = CloudConfig::openai("m").with_api_key_env(var);
    assert_eq!(cfg.api_key_env, var);
    assert!(cfg.api_key.is_some());
    std::env::set_var(var, "");
    assert!(ApiKey::from_env(var).is_none());
    std::env::remove_var(var);
    assert!(ApiKey::from_env(var).is_none());
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

//! Happy paths of both wire protocols against a real HTTP server on 127.0.0.1: what goes on
//! the wire, what comes back, usage reported and estimated.
#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edgeroute::backend::cloud::{estimate_tokens, BreakerState, CloudBackend};
use edgeroute::backend::{Backend, BackendCall, FinishReason, StreamEvent};
use edgeroute::request::{GenerationParams, Message};
use edgeroute::signals::{CloudHealth, Network};
use support::{call, collect, Behavior, FakeProvider, DEFAULT_REPLY, TEST_KEY};

fn full_call() -> BackendCall {
    BackendCall {
        messages: vec![
            Message::system("Answer in one sentence."),
            Message::user("What is the capital of France?"),
        ],
        params: GenerationParams {
            max_tokens: Some(64),
            temperature: Some(0.25),
            top_p: None,
            seed: Some(7),
            repetition_penalty: None,
        },
        deadline: None,
    }
}

/// Words in the call's messages: the fake provider's notion of prompt tokens.
const PROMPT_WORDS: u64 = 4 + 6;
const REPLY_WORDS: u64 = 6;

#[tokio::test]
async fn openai_non_streaming() {
    let fake = FakeProvider::start().await;
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    assert_eq!(backend.name(), "openai:fake-model");
    let g = backend.generate(full_call()).await.unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
    assert_eq!(g.usage.input_tokens, PROMPT_WORDS);
    assert_eq!(g.usage.output_tokens, REPLY_WORDS);
    assert!(!g.usage_estimated);
    assert_eq!(g.finish, FinishReason::Stop);

    let req = fake.last_request().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.headers["authorization"], format!("Bearer {TEST_KEY}"));
    assert_eq!(req.headers["content-type"], "application/json");
    let b = &req.body;
    assert_eq!(b["model"], "fake-model");
    assert_eq!(b["stream"], false);
    assert!(b.get("stream_options").is_none());
    assert_eq!(b["messages"][0]["role"], "system");
    assert_eq!(b["messages"][1]["role"], "user");
    assert_eq!(
        b["messages"][1]["content"],
        "What is the capital of France?"
    );
    assert_eq!(b["max_completion_tokens"], 64);
    assert_eq!(b["temperature"], 0.25);
    assert_eq!(b["seed"], 7);
    assert_eq!(fake.requests_received(), 1);
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
    assert_eq!(backend.health(), CloudHealth::Healthy);
    assert_eq!(backend.network(), Network::Online);
}

/// A `*.localhost` name is trusted as loopback (plain http, no proxy), so it is sent to
/// 127.0.0.1 (or ::1) whatever the system's resolver says (this machine's cannot resolve such names).
#[tokio::test]
async fn a_localhost_subdomain_reaches_this_machine_only() {
    let fake = FakeProvider::start().await;
    let mut cfg = fake.openai_config();
    cfg.base_url = cfg
        .base_url
        .replace("127.0.0.1", "edgeroute-test.localhost");
    assert!(cfg.base_url.starts_with("http://edgeroute-test.localhost:"));
    let backend = CloudBackend::new(cfg).unwrap();
    let g = backend.generate(full_call()).await.unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
    assert_eq!(fake.requests_received(), 1);
}

#[tokio::test]
async fn openai_streaming() {
    let fake = FakeProvider::start().await;
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let out = collect(backend.stream(full_call()).await.unwrap()).await;
    let g = out.outcome.unwrap();
    assert!(out.deltas.len() > 1, "word-sized deltas expected");
    assert_eq!(out.deltas.concat(), DEFAULT_REPLY);
    assert_eq!(g.text, DEFAULT_REPLY);
    assert_eq!(g.usage.input_tokens, PROMPT_WORDS);
    assert_eq!(g.usage.output_tokens, REPLY_WORDS);
    assert!(!g.usage_estimated);
    let b = fake.last_request().unwrap().body;
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn openai_stream_without_usage_is_estimated() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::OkWithoutUsage);
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let g = collect(backend.stream(call("hello there")).await.unwrap())
        .await
        .outcome
        .unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
    assert!(g.usage_estimated);
    assert_eq!(g.usage.output_tokens, estimate_tokens(DEFAULT_REPLY));
    assert!(g.usage.input_tokens >= estimate_tokens("hello there"));

    let g = backend.generate(call("hello there")).await.unwrap();
    assert!(g.usage_estimated);
    assert_eq!(g.usage.output_tokens, estimate_tokens(DEFAULT_REPLY));
}

/// A server that ignores `stream: true` and answers with one JSON document (some gateways and
/// self-hosted servers do) still answers a streaming call, on both protocols: the whole text as
/// one delta, then the end with the provider's usage and finish reason. A cut-short whole
/// answer keeps its reason.
#[tokio::test]
async fn a_whole_json_answer_to_a_streaming_call_is_read_as_the_answer() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::IgnoresStream);
    for config in [fake.openai_config(), fake.anthropic_config()] {
        let backend = CloudBackend::new(config).unwrap();
        let out = collect(backend.stream(full_call()).await.unwrap()).await;
        let g = out.outcome.unwrap();
        assert_eq!(out.deltas, [DEFAULT_REPLY], "{}", backend.name());
        assert_eq!(g.text, DEFAULT_REPLY);
        assert_eq!(g.usage.input_tokens, PROMPT_WORDS);
        assert_eq!(g.usage.output_tokens, REPLY_WORDS);
        assert!(!g.usage_estimated);
        assert_eq!(g.finish, FinishReason::Stop);
        assert_eq!(fake.last_request().unwrap().body["stream"], true);
    }
    fake.set_stop_reason("length");
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let g = collect(backend.stream(full_call()).await.unwrap())
        .await
        .outcome
        .unwrap();
    assert_eq!(g.finish, FinishReason::Length);

    // An event stream labelled JSON is still read as the stream it is.
    fake.set_behavior(Behavior::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
               data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n\
               data: [DONE]\n\n"
            .into(),
    });
    let out = collect(backend.stream(full_call()).await.unwrap()).await;
    assert_eq!(out.deltas, ["Hel", "lo"]);
    assert_eq!(out.outcome.unwrap().text, "Hello");
}

#[tokio::test]
async fn anthropic_non_streaming() {
    let fake = FakeProvider::start().await;
    let backend = CloudBackend::new(fake.anthropic_config()).unwrap();
    assert_eq!(backend.name(), "anthropic:fake-model");
    let g = backend.generate(full_call()).await.unwrap();
    assert_eq!(g.text, DEFAULT_REPLY);
    assert_eq!(g.usage.input_tokens, PROMPT_WORDS);
    assert_eq!(g.usage.output_tokens, REPLY_WORDS);
    assert!(!g.usage_estimated);

    let req = fake.last_request().unwrap();
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.headers["x-api-key"], TEST_KEY);
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    assert!(!req.headers.contains_key("authorization"));
    let b = &req.body;
    assert_eq!(b["system"], "Answer in one sentence.");
    assert_eq!(b["messages"].as_array().unwrap().len(), 1);
    assert_eq!(b["messages"][0]["role"], "user");
    assert_eq!(b["max_tokens"], 64);
    assert_eq!(b["stream"], false);
}

#[tokio::test]
async fn anthropic_streaming() {
    let fake = FakeProvider::start().await;
    fake.set_reply("Paris is the capital and largest city of France.");
    let backend = CloudBackend::new(fake.anthropic_config()).unwrap();
    let out = collect(backend.stream(full_call()).await.unwrap()).await;
    let g = out.outcome.unwrap();
    assert!(out.deltas.len() > 1);
    assert_eq!(
        out.deltas.concat(),
        "Paris is the capital and largest city of France."
    );
    assert_eq!(g.usage.input_tokens, PROMPT_WORDS);
    assert_eq!(g.usage.output_tokens, 9);
    assert!(!g.usage_estimated);
    assert_eq!(fake.last_request().unwrap().body["stream"], true);
}

#[tokio::test]
async fn anthropic_without_usage_is_estimated() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::OkWithoutUsage);
    let backend = CloudBackend::new(fake.anthropic_config()).unwrap();
    let g = collect(backend.stream(call("hi")).await.unwrap())
        .await
        .outcome
        .unwrap();
    assert!(g.usage_estimated);
    assert_eq!(g.usage.output_tokens, estimate_tokens(DEFAULT_REPLY));
    let g = backend.generate(call("hi")).await.unwrap();
    assert!(g.usage_estimated);
}

/// Prompt tokens the provider read from its prompt cache are reported as such, streaming or
/// not, in both protocols' words: OpenAI counts them inside `prompt_tokens`, Anthropic outside
/// `input_tokens`. The usage counts all the prompt's tokens either way.
#[tokio::test]
async fn tokens_from_the_providers_prompt_cache_are_counted_as_cached() {
    let fake = FakeProvider::start().await;
    fake.set_cached_prompt_tokens(6);
    for backend in [
        CloudBackend::new(fake.openai_config()).unwrap(),
        CloudBackend::new(fake.anthropic_config()).unwrap(),
    ] {
        let whole = backend.generate(full_call()).await.unwrap();
        let streamed = collect(backend.stream(full_call()).await.unwrap())
            .await
            .outcome
            .unwrap();
        for g in [whole, streamed] {
            let u = g.usage;
            assert_eq!(
                (u.input_tokens, u.cached_input_tokens, u.output_tokens),
                (PROMPT_WORDS, 6, REPLY_WORDS),
                "{}",
                backend.name()
            );
            assert!(!g.usage_estimated);
        }
    }
}

#[tokio::test]
async fn default_max_tokens_is_sent_to_anthropic_only() {
    let fake = FakeProvider::start().await;
    let a = CloudBackend::new(fake.anthropic_config()).unwrap();
    a.generate(call("hi")).await.unwrap();
    assert_eq!(fake.last_request().unwrap().body["max_tokens"], 1024);
    let o = CloudBackend::new(fake.openai_config()).unwrap();
    o.generate(call("hi")).await.unwrap();
    let b = fake.last_request().unwrap().body;
    assert!(b.get("max_completion_tokens").is_none());
    assert!(b.get("seed").is_none());
}

/// A caller dropping a stream after its first delta is not a failure of the provider: with a
/// breaker that opens on a single failure, it stays closed and the provider healthy.
#[tokio::test]
async fn dropping_a_stream_early_is_clean() {
    use futures::StreamExt;
    let fake = FakeProvider::start().await;
    let mut cfg = fake.openai_config();
    cfg.breaker.consecutive_failures = 1;
    let backend = CloudBackend::new(cfg).unwrap();
    for _ in 0..3 {
        let mut stream = backend.stream(call("hi")).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, StreamEvent::Delta(_)), "{first:?}");
        drop(stream);
    }
    // The backend is still healthy and usable.
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
    assert_eq!(backend.health(), CloudHealth::Healthy);
    assert_eq!(
        backend.generate(call("hi")).await.unwrap().text,
        DEFAULT_REPLY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_backend() {
    let fake = FakeProvider::start().await;
    let backend = CloudBackend::new(fake.anthropic_config()).unwrap();
    let calls = (0..40).map(|i| {
        let b = backend.clone();
        tokio::spawn(async move {
            if i % 2 == 0 {
                b.generate(call("hi")).await.map(|g| g.text)
            } else {
                collect(b.stream(call("hi")).await?)
                    .await
                    .outcome
                    .map(|g| g.text)
            }
        })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().unwrap(), DEFAULT_REPLY);
    }
    assert_eq!(fake.requests_received(), 40);
    assert_eq!(backend.breaker_state(), BreakerState::Closed);
}

//! What the cloud client adds on top of a bare HTTP call: `CloudBackend` (breaker, retry
//! bookkeeping, deadline timers, typed parsing, SSE decoding) vs a raw reqwest POST + JSON
//! parse, both against the same fake provider on 127.0.0.1, in the same run.
//!
//! Prints a p50/p99 table (interleaved samples), then runs criterion.
//! Also: the Router's added overhead (inspect, decide, clearance, in-memory stats) over the bare
//! client, with the answer cache and ledger off (with them on, a cloud call also reserves and
//! settles its budget: two group-committed flushes, see `benches/cache.rs`).
//! Run: `cargo bench --no-default-features --features cloud --bench cloud_overhead`
//! (`CLOUD_BENCH_SAMPLES=5000` for more samples; default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeroute::backend::cloud::CloudBackend;
use edgeroute::backend::{Backend, StreamEvent};
use futures::StreamExt;
use serde_json::{json, Value};

struct Setup {
    rt: tokio::runtime::Runtime,
    _fake: support::FakeProvider,
    backend: CloudBackend,
    router: edgeroute::Router,
    raw: reqwest::Client,
    url: String,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(support::FakeProvider::start());
    let backend = CloudBackend::new(fake.openai_config()).unwrap();
    let raw = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", fake.url());
    // The whole pipeline (inspect, decide, execute with clearance, stats), cache off so every
    // call reaches the server.
    let router = edgeroute::Router::builder()
        .policy_str("[cloud]\nmodel = \"fake-model\"\n[defaults]\nroute = \"cloud\"\n")
        .cloud_backend(std::sync::Arc::new(backend.clone()))
        .load_local_model(false)
        .cache(false)
        .build()
        .unwrap();
    Setup {
        rt,
        _fake: fake,
        router,
        backend,
        raw,
        url,
    }
}

const PROMPT: &str = "What is the capital of France? Answer in one sentence.";

async fn cloud_generate(s: &Setup) -> String {
    s.backend
        .generate(support::call(PROMPT))
        .await
        .unwrap()
        .text
}

async fn raw_generate(s: &Setup) -> String {
    let body = serde_json::to_vec(&json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": false,
    }))
    .unwrap();
    let resp = s
        .raw
        .post(&s.url)
        .header("authorization", format!("Bearer {}", support::TEST_KEY))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn cloud_stream(s: &Setup) -> usize {
    let mut stream = s.backend.stream(support::call(PROMPT)).await.unwrap();
    let mut n = 0;
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            StreamEvent::Delta(d) => n += d.len(),
            StreamEvent::Done(_) => break,
        }
    }
    n
}

async fn raw_stream(s: &Setup) -> usize {
    let body = serde_json::to_vec(&json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": true,
        "stream_options": {"include_usage": true},
    }))
    .unwrap();
    let mut resp = s
        .raw
        .post(&s.url)
        .header("authorization", format!("Bearer {}", support::TEST_KEY))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let mut n = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        n += chunk.len();
    }
    n
}

async fn router_complete(s: &Setup) -> usize {
    let r = s
        .router
        .complete(edgeroute::Request::new(PROMPT))
        .await
        .unwrap();
    assert_eq!(r.route, edgeroute::Route::Cloud);
    r.text.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Interleaved samples of two variants; prints p50/p99 of each and of the difference.
fn table(name: &str, samples: usize, mut a: impl FnMut(), mut b: impl FnMut()) {
    for _ in 0..200 {
        a();
        b();
    }
    let (mut ta, mut tb) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let t = Instant::now();
        a();
        ta.push(t.elapsed());
        let t = Instant::now();
        b();
        tb.push(t.elapsed());
    }
    ta.sort_unstable();
    tb.sort_unstable();
    let (a50, a99, b50, b99) = (
        percentile(&ta, 0.5),
        percentile(&ta, 0.99),
        percentile(&tb, 0.5),
        percentile(&tb, 0.99),
    );
    println!(
        "{name:<28} {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>10.1} {:>10.1}",
        us(a50),
        us(a99),
        us(b50),
        us(b99),
        us(a50) - us(b50),
        us(a99) - us(b99)
    );
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let samples: usize = std::env::var("CLOUD_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    assert_eq!(
        s.rt.block_on(cloud_generate(&s)),
        s.rt.block_on(raw_generate(&s))
    );
    println!("\ncloud client overhead vs raw reqwest, same loopback server, {samples} interleaved samples (µs)");
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "variant", "cloud p50", "cloud p99", "raw p50", "raw p99", "Δ p50", "Δ p99"
    );
    table(
        "generate (non-streaming)",
        samples,
        || {
            s.rt.block_on(cloud_generate(&s));
        },
        || {
            s.rt.block_on(raw_generate(&s));
        },
    );
    table(
        "stream (SSE, 10 events)",
        samples,
        || {
            s.rt.block_on(cloud_stream(&s));
        },
        || {
            s.rt.block_on(raw_stream(&s));
        },
    );
    println!("\nrouter overhead on a cloud call: Router::complete (streams internally) vs the bare client");
    table(
        "router vs CloudBackend",
        samples,
        || {
            s.rt.block_on(router_complete(&s));
        },
        || {
            s.rt.block_on(cloud_stream(&s));
        },
    );
    table(
        "router vs raw reqwest",
        samples,
        || {
            s.rt.block_on(router_complete(&s));
        },
        || {
            s.rt.block_on(raw_stream(&s));
        },
    );
    println!();

    let mut g = c.benchmark_group("cloud_overhead");
    g.bench_function("router_complete", |b| {
        b.iter(|| s.rt.block_on(router_complete(&s)))
    });
    g.bench_function("cloud_backend_generate", |b| {
        b.iter(|| s.rt.block_on(cloud_generate(&s)))
    });
    g.bench_function("raw_reqwest_generate", |b| {
        b.iter(|| s.rt.block_on(raw_generate(&s)))
    });
    g.bench_function("cloud_backend_stream", |b| {
        b.iter(|| s.rt.block_on(cloud_stream(&s)))
    });
    g.bench_function("raw_reqwest_stream", |b| {
        b.iter(|| s.rt.block_on(raw_stream(&s)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

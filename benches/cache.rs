//! Answer-cache benchmarks on a real on-disk sled database.
//!
//! - `cache/key_1kb_prompt`: computing the cache key (normalise + SHA-256) for a 1 KB prompt;
//! - `cache/hit_1kb`: a hit for a 1 KB answer (lookup + decrypt + decode + access-time update);
//! - `cache/key_and_hit_1kb`: the cache's whole share of a `complete()` served from the cache;
//! - `cache/miss`: a lookup that finds nothing;
//! - `cache/insert_1kb`: inserting a 1 KB answer (seal + transaction), as throughput;
//! - `ledger/reserve_settle`: one reservation + settlement including both fsyncs;
//! - `stats/record_persisted`: what one finished request adds to the persisted statistics
//!   (totals + latency samples; sled flushes in the background);
//! - `router/complete_cache_hit_1kb`: a whole `Router::complete()` answered from the cache,
//!   followed by a printed table of the cache stage's share of it (from `Response::timings`).
//!
//! Run: `cargo bench --no-default-features --bench cache`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgeroute::backend::{
    Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent,
};
use edgeroute::cache::{
    CacheConfig, CacheKey, CachedAnswer, Database, EncryptionKey, KeyContext, PrivacyClass,
    SledCache,
};
use edgeroute::ledger::{BudgetLimits, SledLedger};
use edgeroute::request::{Request, Route, Usage};
use edgeroute::stats::{PersistedStats, StatsEvent};
use edgeroute::Router;
use rust_decimal::Decimal;

const CTX: KeyContext<'static> = KeyContext {
    model: "local=smollm2-135m;cloud=gpt-4o-mini",
    policy_version: "bench-1",
    privacy: PrivacyClass::Public,
    normalize: true,
};

fn prompt_1kb(i: usize) -> String {
    let mut p = format!("Question {i}: ");
    while p.len() < 1024 {
        p.push_str("explain how  the router\tdecides between tiers; ");
    }
    p
}

fn answer_1kb() -> CachedAnswer {
    CachedAnswer::new(
        "The answer is forty-two. ".repeat(41), // ~1 KB
        Route::Cloud,
        "gpt-4o-mini",
        Usage::new(256, 250),
    )
}

fn bench_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path()).expect("db");
    let cache = SledCache::open(
        &db,
        EncryptionKey::from_bytes(&[9; 32]).expect("key"),
        CacheConfig {
            ttl: None,
            ..CacheConfig::default()
        },
    )
    .expect("cache");
    let answer = answer_1kb();
    let keys: Vec<CacheKey> = (0..1000)
        .map(|i| CacheKey::new(&Request::new(prompt_1kb(i)), &CTX))
        .collect();
    for k in &keys {
        cache.put(k, &answer).expect("put");
    }
    let request = Request::new(prompt_1kb(7));

    let mut g = c.benchmark_group("cache");
    g.bench_function("key_1kb_prompt", |b| {
        b.iter(|| CacheKey::new(black_box(&request), &CTX))
    });
    let mut i = 0;
    g.bench_function("hit_1kb", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let hit = cache.get(black_box(&keys[i])).expect("get");
            assert!(hit.is_some());
            hit
        })
    });
    g.bench_function("key_and_hit_1kb", |b| {
        b.iter(|| {
            let k = CacheKey::new(black_box(&request), &CTX);
            cache.get(&k).expect("get")
        })
    });
    let missing = CacheKey::new(&Request::new("never stored"), &CTX);
    g.bench_function("miss", |b| b.iter(|| cache.get(black_box(&missing))));
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("insert_1kb", |b| {
        b.iter(|| {
            n += 1;
            let k = CacheKey::new(&Request::new(format!("insert {n}")), &CTX);
            cache.put(&k, &answer).expect("put")
        })
    });
    g.finish();

    // Per-operation percentiles (criterion reports means of batches): a cold hit refreshes the
    // entry's access tick (round-robin over 1000 keys), a hot hit (same key again) skips that.
    let time_each = |f: &mut dyn FnMut()| {
        let mut v: Vec<Duration> = (0..20_000)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        (p(0.5), p(0.9), p(0.99))
    };
    let mut j = 0;
    let cold = time_each(&mut || {
        j = (j + 1) % keys.len();
        black_box(cache.get(&keys[j]).expect("get"));
    });
    let hot = time_each(&mut || {
        black_box(cache.get(&keys[3]).expect("get"));
    });
    let key_only = time_each(&mut || {
        black_box(CacheKey::new(&request, &CTX));
    });
    println!("\nper-operation latency, 20000 calls each (1 KB prompt / answer):");
    println!("{:<34}{:>10}{:>10}{:>10}", "operation", "p50", "p90", "p99");
    for (name, (p50, p90, p99)) in [
        ("hit, access tick refreshed", cold),
        ("hit, recently used (no refresh)", hot),
        ("cache key of a 1 KB prompt", key_only),
    ] {
        println!("{name:<34}{p50:>10.1?}{p90:>10.1?}{p99:>10.1?}");
    }

    let ledger = SledLedger::open(&db, BudgetLimits::default()).expect("ledger");
    let mut g = c.benchmark_group("ledger");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("reserve_settle", |b| {
        b.iter(|| {
            let r = ledger
                .reserve_at(Decimal::new(1, 3), std::time::SystemTime::now())
                .expect("reserve");
            ledger
                .settle_blocking(r, Decimal::new(5, 4))
                .expect("settle")
        })
    });
    g.finish();

    let stats = PersistedStats::open(&db).expect("stats");
    let event = StatsEvent {
        route: Route::Local,
        latency_ms: 412.0,
        first_token_ms: Some(61.0),
        spend_usd: Decimal::ZERO,
        would_cost_usd: Decimal::new(2, 4),
        escalated: false,
    };
    let mut g = c.benchmark_group("stats");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("record_persisted", |b| {
        b.iter(|| stats.record(black_box(&event)))
    });
    g.finish();
}

/// A local "model" answering 1 KB instantly: only the first call runs it, the rest are hits.
struct OneKb;

#[async_trait::async_trait]
impl Backend for OneKb {
    fn name(&self) -> &str {
        "one-kb"
    }
    async fn stream(&self, _call: BackendCall) -> edgeroute::Result<EventStream> {
        let done = Generation {
            text: String::new(),
            usage: Usage::default(),
            usage_estimated: false,
            confidence: None,
            finish: FinishReason::Stop,
        };
        let events = vec![
            Ok(StreamEvent::Delta("The answer is forty-two. ".repeat(41))),
            Ok(StreamEvent::Done(done)),
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

fn bench_router(c: &mut Criterion) {
    let home = tempfile::tempdir().expect("tempdir");
    let router = Router::builder()
        .policy_str("[defaults]\nroute = \"local\"\n")
        .local_backend(Arc::new(OneKb))
        .home(home.path())
        .cache_key([7; 32])
        .build()
        .expect("router");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prompt = prompt_1kb(1);
    let first = rt
        .block_on(router.complete(Request::new(prompt.clone())))
        .expect("first");
    assert_eq!(first.route, Route::Local);

    let mut g = c.benchmark_group("router");
    g.bench_function("complete_cache_hit_1kb", |b| {
        b.iter(|| {
            let r = rt
                .block_on(router.complete(Request::new(prompt.clone())))
                .expect("hit");
            assert!(r.cached);
            r
        })
    });
    g.finish();

    // The cache stage's share of a hit, from the router's own stage timings.
    let mut cache = Vec::new();
    let mut total = Vec::new();
    for _ in 0..5000 {
        let r = rt
            .block_on(router.complete(Request::new(prompt.clone())))
            .expect("hit");
        cache.push(r.timings.cache);
        total.push(r.timings.total);
    }
    cache.sort();
    total.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!("\ncomplete() on a cache hit, 1 KB prompt and answer, 5000 calls:");
    println!("{:<14}{:>12}{:>12}{:>12}", "stage", "p50", "p90", "p99");
    for (name, v) in [("cache stage", &cache), ("total", &total)] {
        println!(
            "{:<14}{:>12.1?}{:>12.1?}{:>12.1?}",
            name,
            p(v, 0.5),
            p(v, 0.9),
            p(v, 0.99)
        );
    }
    println!(
        "cache share of total at p50: {:.0}%",
        100.0 * p(&cache, 0.5).as_secs_f64() / p(&total, 0.5).as_secs_f64()
    );
}

criterion_group!(benches, bench_cache, bench_router);
criterion_main!(benches);

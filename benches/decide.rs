//! `decide()` alone, and inspect + decide, on the default policy with a 1 KB prompt.
//! Run: `cargo bench --bench decide`. Aim: decide < 2 µs, inspect + decide < 20 µs.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeroute::inspect::inspect;
use edgeroute::policy::{compile_file, decide};
use edgeroute::signals::Signals;
use edgeroute::Request;

fn one_kb_prompt() -> String {
    let base = "Could you summarise the main arguments of the attached meeting notes, list the \
                decisions we took about the Q3 roadmap, and suggest three follow-up actions for \
                the team? Keep it short and use bullet points where that helps readability. ";
    base.repeat(1024 / base.len() + 1)[..1024].to_string()
}

fn bench(c: &mut Criterion) {
    let policy = compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml"))
        .unwrap_or_else(|d| panic!("{}", edgeroute::policy::render_diagnostics(&d)));
    let request = Request::new(one_kb_prompt());
    let signals = Signals::default();
    let features = inspect(&policy, &request);

    c.bench_function("decide (default policy, 1 KB prompt)", |b| {
        b.iter(|| {
            decide(
                black_box(&policy),
                black_box(&features),
                black_box(&signals),
            )
        })
    });
    c.bench_function("inspect + decide (default policy, 1 KB prompt)", |b| {
        b.iter(|| {
            let f = inspect(black_box(&policy), black_box(&request));
            decide(&policy, &f, &signals)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

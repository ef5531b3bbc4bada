//! PII scanner throughput (MB/s) on clean prose, PII-dense text and source code, plus the
//! 1 MB adversarial-input goal (< 50 ms each).
//!
//! Run: `cargo bench --no-default-features --bench pii`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgeroute::privacy::{PrivacyConfig, Scanner};

#[path = "../tests/support/corpus.rs"]
mod corpus;

const MB: usize = 1 << 20;

/// Repeats pieces until `size` bytes.
fn fill(pieces: &[String], size: usize) -> String {
    let mut out = String::with_capacity(size + 4096);
    let mut i = 0;
    while out.len() < size {
        out.push_str(&pieces[i % pieces.len()]);
        out.push('\n');
        i += 1;
    }
    out
}

fn prose() -> String {
    let sentences = [
        "The committee reviewed the proposal in detail and asked for a clearer budget.",
        "Could you rewrite the following paragraph so that it sounds more confident?",
        "Die Ergebnisse der Umfrage zeigen, dass die meisten Nutzer zufrieden sind.",
        "Nous avons reçu votre demande et nous vous répondrons dans les plus brefs délais.",
        "After three attempts the team finally shipped the new onboarding flow.",
        "Summarise the key arguments of the essay and list its weaknesses.",
        "She said the meeting would move to Thursday afternoon, around 2 pm.",
        "東京の天気は明日も晴れの予報です。",
        "Please explain the difference between a process and a thread, with an example.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
    ];
    fill(&sentences.map(String::from), MB)
}

fn dense() -> String {
    let docs = corpus::generate(2000, 42);
    let pieces: Vec<String> = docs
        .into_iter()
        .filter(|d| !d.spans.is_empty())
        .map(|d| d.text)
        .collect();
    fill(&pieces, MB)
}

fn source() -> String {
    let mut pieces = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(t) = std::fs::read_to_string(&p) {
                    pieces.push(t);
                }
            }
        }
    }
    pieces.sort();
    fill(&pieces, MB)
}

fn adversarial() -> Vec<(&'static str, String)> {
    let rep = |unit: &str| unit.repeat(MB / unit.len() + 1);
    vec![
        ("digits", rep("1")),
        ("spaced digits", rep("1 ")),
        ("dashed digits", rep("4-")),
        ("at signs", rep("a@")),
        ("colons", rep("1:")),
        ("hex colons", rep("ff:")),
        ("sk- runs", rep("sk-")),
        ("plus runs", rep("+1 ")),
        ("iban-ish", rep("DE89 ")),
        (
            "pem begin",
            format!("-----BEGIN RSA PRIVATE KEY-----{}", rep("A\n")),
        ),
        ("assignments", rep("password=")),
        ("near cards", rep("4111 1111 1111 1112 ")),
        ("near phones", rep("(415) 555-013 ")),
        ("ipv4-ish", rep("1.1.1.")),
        // One line of street-like numbers: each looks back for words that introduce an
        // address, which must not read back to the start of the line.
        ("street words", rep("1 A St x ")),
        ("json addresses", rep("{\"address\":\"1 Elm St Apt\"},")),
    ]
}

fn bench(c: &mut Criterion) {
    let scanner = Scanner::new(&PrivacyConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let inputs = [
        ("clean_prose", prose()),
        ("pii_dense", dense()),
        ("source_code", source()),
    ];
    let mut group = c.benchmark_group("pii_scan");
    for (name, text) in &inputs {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(*name, |b| b.iter(|| scanner.scan(black_box(text))));
    }
    group.finish();

    // Redaction of the PII-dense input: the scan, every other occurrence of each found value
    // (one Aho-Corasick pass, one pass for numbers) and the placeholders.
    let mut group = c.benchmark_group("redact_text");
    let (_, dense_text) = &inputs[1];
    group.throughput(Throughput::Bytes(dense_text.len() as u64));
    group.bench_function("pii_dense", |b| {
        b.iter(|| edgeroute::privacy::redact_text(black_box(dense_text), &scanner))
    });
    group.finish();

    // Goal: every 1 MB adversarial input scans in under 50 ms (best of 5).
    println!("\nadversarial 1 MB inputs (goal < 50 ms):");
    for (name, text) in adversarial() {
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(scanner.scan(black_box(&text)));
                t.elapsed()
            })
            .min()
            .unwrap_or_default();
        let verdict = if best.as_millis() < 50 { "ok" } else { "SLOW" };
        println!(
            "  {name:<14} {:>8.2} ms  {verdict}",
            best.as_secs_f64() * 1e3
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);

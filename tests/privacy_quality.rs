//! Per-kind precision and recall of the PII scanner on the generated labeled corpus
//! (span-exact: kind, start and end must all match). Run with `--nocapture` to see the table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use edgeroute::privacy::{PrivacyConfig, Scanner};
use support::corpus::generate;

#[derive(Default)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
}

#[test]
fn precision_and_recall_per_kind_are_at_least_097() {
    let docs = generate(1000, 0xED6E_2026);
    assert!(docs.len() >= 500);
    let clean = docs.iter().filter(|d| d.spans.is_empty()).count();
    assert!(
        clean * 100 / docs.len() >= 25,
        "hard-negative share {clean}"
    );
    let scanner = Scanner::new(&PrivacyConfig::default()).unwrap();
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let got: Vec<(String, usize, usize)> = scanner
            .scan(&d.text)
            .into_iter()
            .map(|s| (s.kind, s.start, s.end))
            .collect();
        let gold: Vec<(String, usize, usize)> = d
            .spans
            .iter()
            .map(|&(k, s, e)| (k.to_string(), s, e))
            .collect();
        for g in &got {
            let c = counts.entry(g.0.clone()).or_default();
            if gold.contains(g) {
                c.tp += 1;
            } else {
                c.fp += 1;
                errors.push(format!(
                    "FP doc {i} ({}): {} {:?}",
                    d.genre,
                    g.0,
                    &d.text[g.1..g.2]
                ));
            }
        }
        for g in &gold {
            if !got.contains(g) {
                counts.entry(g.0.clone()).or_default().fn_ += 1;
                errors.push(format!(
                    "FN doc {i} ({}): {} {:?}",
                    d.genre,
                    g.0,
                    &d.text[g.1..g.2]
                ));
            }
        }
    }
    println!(
        "{:<12} {:>6} {:>5} {:>5} {:>9} {:>7}",
        "kind", "gold", "fp", "fn", "precision", "recall"
    );
    let mut worst = 1.0f64;
    for (k, c) in &counts {
        let p = c.tp as f64 / (c.tp + c.fp).max(1) as f64;
        let r = c.tp as f64 / (c.tp + c.fn_).max(1) as f64;
        worst = worst.min(p).min(r);
        println!(
            "{k:<12} {:>6} {:>5} {:>5} {p:>9.4} {r:>7.4}",
            c.tp + c.fn_,
            c.fp,
            c.fn_
        );
    }
    for e in errors.iter().take(40) {
        println!("{e}");
    }
    assert_eq!(counts.len(), 7, "every built-in kind is represented");
    assert!(worst >= 0.97, "a kind fell below 0.97 (see table above)");
}

#[test]
fn corpus_is_deterministic_and_has_non_ascii_before_pii() {
    let a = generate(50, 7);
    let b = generate(50, 7);
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.text == y.text && x.spans == y.spans));
    let shifted = a
        .iter()
        .flat_map(|d| d.spans.iter().map(move |s| (d, s)))
        .filter(|(d, s)| d.text[..s.1].chars().count() != s.1)
        .count();
    assert!(shifted > 0);
}

//! Shows: 200 mixed prompts (short facts, hard or long tasks, private ones) routed by `policies/cost-saver.toml`: routes, escalations, cloud calls avoided, p50/p95 latency, cost against all-cloud.
//! Needs: the local model (`python3 scripts/setup.py`); the cloud is a loopback OpenAI-compatible server started here (300–600 ms to first byte, word-by-word stream), so no network or API key.
//! Run: `cargo run --release --example mixed_workload` (options: `-- --prompts 200 --max-tokens 48`).

#[allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/support/provider.rs"]
mod provider;

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/support/conn_probe.rs"]
mod conn_probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeroute::backend::cloud::CloudBackend;
use edgeroute::backend::local::LocalBackend;
use edgeroute::decision::Reason;
use edgeroute::request::Usage;
use edgeroute::{Request, Route, Router};
use rust_decimal::Decimal;

const POLICY: &str = "policies/cost-saver.toml";

/// What kind of prompt a workload item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A short everyday question (some asked more than once).
    Fact,
    /// A few hundred tokens of text to edit.
    Medium,
    /// Hard work the app tags `hard`.
    Hard,
    /// A long document (over 1,200 tokens).
    Long,
    /// A prompt with an e-mail address, phone number, IBAN, card or SSN.
    Private,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fact => "short fact",
            Kind::Medium => "medium edit",
            Kind::Hard => "hard (tagged)",
            Kind::Long => "long document",
            Kind::Private => "private",
        }
    }
}

struct Item {
    kind: Kind,
    prompt: String,
    /// What the fake cloud answers for this prompt.
    reply: String,
}

/// SplitMix64: a repeatable workload without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn words(n: usize, rng: &mut Rng) -> String {
    const VOCAB: &[&str] = &[
        "the",
        "service",
        "request",
        "latency",
        "team",
        "customer",
        "update",
        "report",
        "quarter",
        "growth",
        "system",
        "failure",
        "database",
        "release",
        "review",
        "plan",
        "network",
        "budget",
        "design",
        "metric",
        "incident",
        "owner",
        "deadline",
        "support",
        "migration",
        "cache",
        "traffic",
        "region",
        "feature",
        "risk",
        "and",
        "of",
        "to",
        "was",
        "were",
        "after",
        "before",
        "during",
        "because",
        "while",
    ];
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push(if i % 14 == 0 { '.' } else { ' ' });
            if i % 14 == 0 {
                out.push(' ');
            }
        }
        out.push_str(VOCAB[rng.below(VOCAB.len())]);
    }
    out.push('.');
    out
}

/// The workload: 55% short facts (one in ten a repeat), 5% medium edits, 15% hard tasks,
/// 5% long documents, 20% private prompts, shuffled.
fn workload(n: usize) -> Vec<Item> {
    let mut rng = Rng(0x5EED);
    let facts = [
        "What is the capital of France?",
        "What is the capital of Japan?",
        "What is the capital of Canada?",
        "What is the capital of Australia?",
        "What is the capital of Italy?",
        "What is the capital of Egypt?",
        "What is the capital of Brazil?",
        "What is the capital of Kenya?",
        "How many legs does a spider have?",
        "How many legs does an insect have?",
        "How many days are in a leap year?",
        "How many minutes are in an hour?",
        "What is 12 times 7?",
        "What is 15 plus 27?",
        "What is the square root of 81?",
        "Give me a synonym for happy.",
        "Give me a synonym for quick.",
        "Give me an antonym for cold.",
        "Translate 'good morning' to Spanish.",
        "Translate 'thank you' to French.",
        "Translate 'cat' to German.",
        "Who painted the Mona Lisa?",
        "Who wrote Romeo and Juliet?",
        "Who wrote the novel War and Peace?",
        "What is the chemical symbol for gold?",
        "What is the chemical symbol for water?",
        "What planet is closest to the Sun?",
        "What is the largest ocean on Earth?",
        "What is the tallest mountain in the world?",
        "What color do you get by mixing blue and yellow?",
        "What is the freezing point of water in Celsius?",
        "What is the boiling point of water in Fahrenheit?",
        "In which year did World War II end?",
        "What language is spoken in Brazil?",
        "What is the currency of Japan?",
        "Name a mammal that can fly.",
        "Name three primary colors.",
        "What do bees make?",
        "What gas do plants absorb from the air?",
        "How many continents are there?",
        "What is the opposite of 'ancient'?",
        "Spell the word 'necessary' backwards.",
        "Is a tomato a fruit or a vegetable?",
        "What is the main ingredient of guacamole?",
        "Which animal is known as the king of the jungle?",
        "What is H2O commonly called?",
        "How many sides does a hexagon have?",
        "What is the first letter of the Greek alphabet?",
        "What does a thermometer measure?",
        "Which month has the fewest days?",
    ];
    let hard = [
        "Design a rate limiter for a distributed API and explain the trade-offs between token buckets and sliding windows.",
        "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
        "Write a lock-free single-producer single-consumer queue in Rust and argue why it is correct.",
        "Compare Raft and Paxos for a geo-replicated key-value store, including failure scenarios.",
        "Derive the closed form of the Fibonacci numbers using generating functions.",
        "Plan a zero-downtime migration of a 2 TB PostgreSQL database to a new schema.",
        "Explain how a transformer's attention scales with sequence length and three ways to reduce it.",
        "Write a SQL query that finds the top three customers by revenue per region, with ties.",
        "Analyse the time complexity of Dijkstra's algorithm with a binary heap versus a Fibonacci heap.",
        "Draft a threat model for a mobile banking app's login flow.",
        "Refactor a 500-line God class into cohesive modules; describe the steps and the tests you would add.",
        "Explain the CAP theorem with a concrete example for each trade-off.",
        "Write a parser for arithmetic expressions with precedence climbing, in Python.",
        "Estimate the number of piano tuners in Chicago and explain each assumption.",
        "Design the data model for a multi-tenant invoicing system with audit history.",
    ];
    let private = [
        "Draft a reply to maria.keller{i}@example.com confirming our meeting on Tuesday.",
        "Remind me to call Dr. Osei back at +1 415 555 01{ii} about the test results.",
        "Is my IBAN DE89 3704 0044 0532 0130 00 written correctly for the transfer?",
        "My card 4111 1111 1111 1111 was charged twice; write a short complaint to the bank.",
        "Write a note to hr{i}@acme-corp.com that my SSN is 078-05-1120 for the payroll form.",
        "Text +44 20 7946 09{ii} that I will be ten minutes late.",
        "Summarise this for my landlord, j.smith{i}@mailbox.org: the boiler broke again.",
        "Fill in the form: name Ana Ruiz, phone (212) 555-01{ii}, email ana.ruiz{i}@example.net.",
    ];
    let mut items = Vec::with_capacity(n);
    let mut asked: Vec<usize> = Vec::new();
    for i in 0..n {
        let slot = i % 20;
        let item = match slot {
            0..=9 | 19 => {
                // A repeat of an earlier question one time in ten.
                let f = if !asked.is_empty() && rng.below(10) == 0 {
                    asked[rng.below(asked.len())]
                } else {
                    let f = rng.below(facts.len());
                    asked.push(f);
                    f
                };
                Item {
                    kind: Kind::Fact,
                    prompt: facts[f].to_string(),
                    reply: words(18 + rng.below(20), &mut rng),
                }
            }
            10 => Item {
                kind: Kind::Medium,
                prompt: format!(
                    "Proofread and tighten this paragraph:\n\n{}",
                    words(380 + rng.below(120), &mut rng)
                ),
                reply: words(250 + rng.below(80), &mut rng),
            },
            11..=13 => Item {
                kind: Kind::Hard,
                prompt: hard[rng.below(hard.len())].to_string(),
                reply: words(150 + rng.below(150), &mut rng),
            },
            14 => Item {
                kind: Kind::Long,
                prompt: format!(
                    "Summarise the following incident report in five bullet points:\n\n{}",
                    words(1300 + rng.below(700), &mut rng)
                ),
                reply: words(80 + rng.below(40), &mut rng),
            },
            _ => {
                let t = private[rng.below(private.len())];
                Item {
                    kind: Kind::Private,
                    prompt: t
                        .replace("{ii}", &format!("{:02}", i % 100))
                        .replace("{i}", &(i % 97).to_string()),
                    reply: words(30 + rng.below(30), &mut rng),
                }
            }
        };
        items.push(item);
    }
    // Shuffle (Fisher–Yates), so kinds interleave as they would in an app.
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
    items
}

/// What happened to one request.
struct Outcome {
    kind: Kind,
    /// `local`, `cloud (direct)`, `cloud (escalated)` (cascade → cloud), `cache (device
    /// answer)` or `cache (cloud answer)`.
    path: &'static str,
    rule: String,
    latency: Duration,
    cost: Decimal,
    escalated: bool,
    cascaded: bool,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank, as the router's statistics.
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn latency_row(label: &str, xs: &[&Outcome], total: usize) -> String {
    let mut ms: Vec<f64> = xs.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    format!(
        "{label:<22} {:>5} {:>7.1}% {:>9.0} {:>9.0}",
        xs.len(),
        100.0 * xs.len() as f64 / total.max(1) as f64,
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
    )
}

fn arg(name: &str, default: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()?),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg("--prompts", 200)?;
    let max_tokens = u32::try_from(arg("--max-tokens", 48)?)?;

    // The cloud: a loopback OpenAI-compatible server streaming word by word (12 ms per word),
    // behind a relay that holds each answer's first byte for 300–600 ms.
    let fake = provider::FakeProvider::start().await;
    fake.set_behavior(provider::Behavior::Trickle(Duration::from_millis(12)));
    let relay = conn_probe::ConnProbe::start_delayed(
        fake.addr(),
        Some(conn_probe::Delay {
            min: Duration::from_millis(300),
            max: Duration::from_millis(600),
        }),
    )
    .await;
    let mut cloud_cfg = fake.openai_config().with_base_url(relay.url());
    cloud_cfg.model = "gpt-4o-mini".into();

    // The local tier: the installed model; the answer cache and ledger in a fresh home.
    let home = tempfile::tempdir()?;
    let local = LocalBackend::builder().commit()?;
    let router = Router::builder()
        .policy_file(POLICY)
        .local_backend(Arc::new(local.clone()))
        .cloud_backend(Arc::new(CloudBackend::new(cloud_cfg)?))
        .home(home.path())
        .cache(true)
        .build()?;
    let prices = router
        .policy()
        .cloud
        .clone()
        .ok_or("the policy has no [cloud] section")?;

    let items = workload(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut failures = 0usize;
    let mut all_cloud = Decimal::ZERO;
    let started = Instant::now();
    for (i, item) in items.iter().enumerate() {
        // A real provider stops at the request's max_tokens; so does the fake (a word a token).
        let reply = item
            .reply
            .split_whitespace()
            .take(max_tokens as usize)
            .collect::<Vec<_>>()
            .join(" ");
        // What the same request would cost in the cloud: the fake counts words.
        all_cloud += prices.cost(Usage::new(
            item.prompt.split_whitespace().count() as u64,
            reply.split_whitespace().count() as u64,
        ));
        fake.set_reply(reply);
        let mut request = Request::new(item.prompt.clone()).with_max_tokens(max_tokens);
        if item.kind == Kind::Hard {
            request = request.with_tag("hard");
        }
        match router.complete(request).await {
            Ok(resp) => {
                let escalated = resp
                    .decision
                    .reasons
                    .iter()
                    .any(|r| matches!(r, Reason::Escalated { .. }));
                let cascaded = escalated
                    || resp
                        .decision
                        .reasons
                        .iter()
                        .any(|r| matches!(r, Reason::Confident { .. }));
                outcomes.push(Outcome {
                    kind: item.kind,
                    path: match resp.route {
                        Route::Local => "local",
                        // A cached cloud answer was not answered on the device.
                        Route::Cache if cached_from_cloud(&resp) => "cache (cloud answer)",
                        Route::Cache => "cache (device answer)",
                        Route::Cloud if escalated => "cloud (escalated)",
                        Route::Cloud => "cloud (direct)",
                    },
                    rule: resp.decision.rule.clone(),
                    latency: resp.timings.total,
                    cost: resp.cost.usd,
                    escalated,
                    cascaded,
                });
            }
            Err(e) => {
                failures += 1;
                eprintln!("request {i} ({}) failed: {e}", item.kind.name());
            }
        }
        if (i + 1) % 25 == 0 {
            eprintln!("{}/{} done ({:.0?})", i + 1, n, started.elapsed());
        }
    }
    let wall = started.elapsed();

    // ---- the table ----
    let total = outcomes.len();
    let cloud_calls = fake.requests_received();
    let spent: Decimal = outcomes.iter().map(|o| o.cost).sum();
    let cascades = outcomes.iter().filter(|o| o.cascaded).count();
    let escalations = outcomes.iter().filter(|o| o.escalated).count();
    let local_share = outcomes
        .iter()
        .filter(|o| o.path == "local" || o.path == "cache (device answer)")
        .count();
    let cached_cloud = outcomes
        .iter()
        .filter(|o| o.path == "cache (cloud answer)")
        .count();

    println!(
        "\nmixed workload: {n} requests through {POLICY}, local model {} (max {max_tokens} new tokens, {} threads),\n\
         cloud = loopback OpenAI-compatible server (gpt-4o-mini prices, 300-600 ms to first byte, 12 ms/word)\n",
        local.model_dir().file_name().and_then(|s| s.to_str()).unwrap_or("?"),
        local.threads()
    );
    println!(
        "{:<22} {:>5} {:>8} {:>9} {:>9}",
        "route", "n", "share", "p50 ms", "p95 ms"
    );
    for path in [
        "local",
        "cloud (direct)",
        "cloud (escalated)",
        "cache (device answer)",
        "cache (cloud answer)",
    ] {
        let xs: Vec<&Outcome> = outcomes.iter().filter(|o| o.path == path).collect();
        println!("{}", latency_row(path, &xs, total));
    }
    let all: Vec<&Outcome> = outcomes.iter().collect();
    println!("{}", latency_row("all", &all, total));

    println!(
        "\n{:<16} {:>5} {:>6} {:>6} {:>6} {:>10}",
        "prompt kind", "n", "local", "cloud", "cache", "escalated"
    );
    for kind in [
        Kind::Fact,
        Kind::Medium,
        Kind::Hard,
        Kind::Long,
        Kind::Private,
    ] {
        let xs: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        let count = |p: &str| xs.iter().filter(|o| o.path.starts_with(p)).count();
        println!(
            "{:<16} {:>5} {:>6} {:>6} {:>6} {:>10}",
            kind.name(),
            xs.len(),
            count("local"),
            count("cloud"),
            count("cache"),
            xs.iter().filter(|o| o.escalated).count()
        );
    }

    let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &outcomes {
        *rules.entry(o.rule.as_str()).or_default() += 1;
    }
    println!(
        "\nrules fired: {}",
        rules
            .iter()
            .map(|(r, c)| format!("{r} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "answered on the device (local + cached device answers): {:.1}%; cached cloud answers: {:.1}%",
        100.0 * local_share as f64 / total.max(1) as f64,
        100.0 * cached_cloud as f64 / total.max(1) as f64
    );
    println!(
        "cascades: {cascades}, escalated: {escalations} ({:.1}% of cascades)",
        100.0 * escalations as f64 / cascades.max(1) as f64
    );
    println!(
        "cloud calls: {cloud_calls} made, {} avoided ({:.1}% of an all-cloud run)",
        n.saturating_sub(cloud_calls),
        100.0 * n.saturating_sub(cloud_calls) as f64 / n.max(1) as f64
    );
    let saved = all_cloud - spent;
    let pct = if all_cloud.is_zero() {
        Decimal::ZERO
    } else {
        (saved * Decimal::from(100) / all_cloud).round_dp(1)
    };
    println!(
        "cost: ${} spent vs ${} all-cloud without a cache: ${} saved ({pct}%)",
        spent.round_dp(6),
        all_cloud.round_dp(6),
        saved.round_dp(6)
    );
    let s = router.stats();
    println!(
        "router.stats(): requests {} (local {}, cloud {}, cache {}), failures {}, escalations {}, \
         spend ${}, estimated savings ${}",
        s.requests,
        s.local,
        s.cloud,
        s.cache_hits,
        s.failures,
        s.escalations,
        s.cloud_spend_usd.round_dp(6),
        s.estimated_savings_usd.round_dp(6)
    );
    println!(
        "failures: {failures}; wall time {:.1} s",
        wall.as_secs_f64()
    );
    Ok(())
}

/// Whether a cache hit replayed an answer the cloud first gave.
fn cached_from_cloud(resp: &edgeroute::Response) -> bool {
    resp.decision.reasons.iter().any(
        |r| matches!(r, Reason::CacheHit { answered_by, .. } if answered_by.as_str() == "cloud"),
    )
}

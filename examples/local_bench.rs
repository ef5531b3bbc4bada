//! Local tier benchmark: time to first token (32-token prompt), decode tokens/s and peak RSS,
//! Rust (`LocalBackend`) side by side with the same greedy loop in Python onnxruntime.
//! The Python loop runs three times per round: as is; with its memory moved to 2 MiB pages the
//! way `LocalBackend` does it (`--huge-pages 1`); and with that and the KV cache bound in place
//! as `LocalBackend` keeps it (`--bound-cache 1`), so the table shows how much of the difference
//! each accounts for.
//! Needs `python3 scripts/setup.py`; run: `cargo run --release --no-default-features --features onnx --example local_bench [threads] [max_new_tokens] [runs] [spin 0|1] [huge_pages 1|0] [long prompt 0|1]`.
//! A long prompt (about 700 tokens of notes instead of 32 tokens) measures decoding deep into
//! the context, where the cost of the KV cache shows.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edgeroute::backend::local::{LocalBackend, LocalOutput};
use edgeroute::home;
use edgeroute::request::{GenerationParams, Message};

const SYSTEM: &str = "You are a helpful assistant.";
const PROMPT: &str = "Write a long story about a dragon who learns to cook.";

/// About 700 tokens: forty lines of notes and a question.
fn long_prompt() -> String {
    let mut notes = String::from("Here are my notes from the week:\n");
    for i in 1..=40 {
        notes.push_str(&format!(
            "{i}. Met team {} about project {}; next step: {}.\n",
            ["A", "B", "C", "D", "E", "F", "G", "H"][i % 8],
            i * 7 % 13,
            ["review", "draft", "call", "ship"][i % 4]
        ));
    }
    notes + "Write a long report on what happened with each team."
}

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time of this process's threads, in nanoseconds (the first field of each thread's
/// /proc schedstat; /proc/self/stat counts in 10 ms ticks, too coarse for half a second).
fn cpu_ns_all_threads() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// User + system CPU time of this process (from /proc/self/stat, in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// The median; NaN for no values (a run that generated fewer than two tokens has no rate).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Row {
    prompt_tokens: usize,
    generated: usize,
    ttft_ms: f64,
    tps: f64,
    cpu_ms_per_token: f64,
    rss_mb: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let max_new = args.get(1).copied().unwrap_or(128) as u32;
    let runs = args.get(2).copied().unwrap_or(3).max(1);
    let spin = args.get(3).copied().unwrap_or(0) == 1;
    let huge_pages = args.get(4).copied().unwrap_or(1) == 1;
    let prompt = if args.get(5).copied().unwrap_or(0) == 1 {
        long_prompt()
    } else {
        PROMPT.to_string()
    };

    let t0 = Instant::now();
    let backend = LocalBackend::builder()
        .threads(threads)
        .pool_size(1)
        .intra_op_spinning(spin)
        .huge_pages(huge_pages)
        // Python runs the whole prompt every time; so does this side of the comparison (the
        // prompt cache is measured on its own below).
        .prompt_cache_tokens(0)
        .commit()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // The move to huge pages runs in the background after commit; measure once it is over.
    while !backend.huge_pages_settled() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let huge_ms = t0.elapsed().as_secs_f64() * 1000.0 - load_ms;
    let messages = [Message::system(SYSTEM), Message::user(prompt.clone())];
    let params = GenerationParams {
        max_tokens: Some(max_new),
        ..Default::default()
    };
    let prompt_tokens = backend.encode_prompt(&messages)?.len();

    // The same warm-up as the Python side (an 8-token generation), run right before every
    // measured run: on this VM a CPU that sat idle for a couple of seconds (here: while the
    // Python process runs) makes the next prefill ~4x slower (measured: 2 s pause, 32-token
    // prefill 75 ms -> 300 ms, and tokenizing 0.2 ms -> 23 ms, with no extra page faults), so
    // without it the Rust side would be measured cold and the Python side warm.
    let warm_up = || {
        backend.generate_blocking(
            &messages,
            &GenerationParams {
                max_tokens: Some(8),
                ..Default::default()
            },
            None,
            |_| ControlFlow::Continue(()),
        )
    };
    let home_dir = home::resolve(None);
    let python = std::env::var_os("EDGEROUTE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir.join("tools/venv/bin/python"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_python.py");
    let model_dir = backend.model_dir().display().to_string();
    let (threads_s, max_new_s) = (threads.to_string(), max_new.to_string());
    // One Python run (own process, warmed up) right after each Rust run, so both sides see the
    // same machine load.
    let python_run =
        |huge: bool, bound: bool| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
            let out = Command::new(&python)
                .arg(script)
                .args(["--model-dir", &model_dir, "--threads", &threads_s])
                .args(["--system", SYSTEM, "--prompt", &prompt])
                .args(["--max-new-tokens", &max_new_s, "--runs", "1"])
                .args(["--spin", if spin { "1" } else { "0" }])
                .args(["--huge-pages", if huge { "1" } else { "0" }])
                .args(["--bound-cache", if bound { "1" } else { "0" }])
                .output()?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("{} failed: {err}", python.display()).into());
            }
            Ok(serde_json::from_slice(out.stdout.trim_ascii())?)
        };

    let (mut ttfts, mut tps, mut cpus, mut generated) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut py_runs, mut py_huge_runs, mut py_all_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        warm_up()?;
        let mut stamps = Vec::new();
        let cpu0 = cpu_seconds();
        let out = backend.generate_blocking(&messages, &params, None, |ev| {
            stamps.push(ev.elapsed);
            ControlFlow::Continue(())
        })?;
        generated = out.token_ids.len();
        cpus.push((cpu_seconds() - cpu0) * 1000.0 / generated.max(1) as f64);
        ttfts.push(out.first_token.as_secs_f64() * 1000.0);
        if let (Some(first), Some(last)) = (stamps.first(), stamps.last()) {
            if stamps.len() > 1 {
                tps.push((stamps.len() - 1) as f64 / (*last - *first).as_secs_f64());
            }
        }
        py_runs.push(python_run(false, false)?);
        py_huge_runs.push(python_run(true, false)?);
        py_all_runs.push(python_run(true, true)?);
    }
    // What the process uses while idle right after a generation (threads left spinning would
    // show here).
    warm_up()?;
    let idle_cpu0 = cpu_ns_all_threads();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let idle_cpu = (cpu_ns_all_threads() - idle_cpu0) as f64 / 0.5e9;
    let rust = Row {
        prompt_tokens,
        generated,
        ttft_ms: median(ttfts),
        tps: median(tps),
        cpu_ms_per_token: median(cpus),
        rss_mb: vm_hwm_mb(),
    };
    let python_row = |runs: &[serde_json::Value]| {
        let col = |k: &str| -> Vec<f64> {
            runs.iter()
                .map(|v| v[k].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        Row {
            prompt_tokens: median(col("prompt_tokens")) as usize,
            generated: median(col("generated_tokens")) as usize,
            ttft_ms: median(col("ttft_ms")),
            tps: median(col("decode_tokens_per_s")),
            cpu_ms_per_token: median(col("cpu_ms_per_token")),
            rss_mb: col("peak_rss_mb").into_iter().fold(0.0, f64::max),
        }
    };
    let py = python_row(&py_runs);
    let py_huge = python_row(&py_huge_runs);
    let py_all = python_row(&py_all_runs);
    let py_huge_mib = median(
        py_huge_runs
            .iter()
            .map(|v| v["huge_page_mib"].as_f64().unwrap_or(0.0))
            .collect(),
    );
    println!(
        "local_bench: {} | threads {threads} | max_new_tokens {max_new} | spinning {spin} | median of {runs} interleaved runs | model load {load_ms:.0} ms | weights on 2 MiB pages: {} MiB ({huge_ms:.0} ms more, in the background)",
        backend.model_dir().display(),
        backend.huge_page_bytes() >> 20
    );
    println!(
        "{:<22} {:>8} {:>10} {:>16} {:>17} {:>14} {:>14}",
        "",
        "prompt",
        "generated",
        "first token ms",
        "decode tokens/s",
        "CPU ms/token",
        "peak RSS MiB"
    );
    let py_huge_name = format!("Python + {py_huge_mib:.0} MiB huge");
    for (name, r) in [
        ("Rust (edgeroute)", &rust),
        ("Python onnxruntime", &py),
        (py_huge_name.as_str(), &py_huge),
        ("  + bound KV cache", &py_all),
    ] {
        println!(
            "{:<22} {:>8} {:>10} {:>16.1} {:>17.1} {:>14.1} {:>14.0}",
            name, r.prompt_tokens, r.generated, r.ttft_ms, r.tps, r.cpu_ms_per_token, r.rss_mb
        );
    }
    println!(
        "Rust / Python decode speed: {:.2}x wall, {:.2}x CPU (aim >= 1.2x); vs Python on huge pages {:.2}x wall; vs Python also with the bound cache {:.2}x wall; Rust first token {:.1} ms (aim < 100 ms); Rust idle after a run: {:.0}% of a core; load average {}",
        rust.tps / py.tps,
        py.cpu_ms_per_token / rust.cpu_ms_per_token,
        rust.tps / py_huge.tps,
        rust.tps / py_all.tps,
        rust.ttft_ms,
        idle_cpu * 100.0,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?")
    );
    prompt_cache(&backend, threads, huge_pages)?;
    Ok(())
}

/// First token with and without the prompt cache: different questions after the same system
/// prompt, then the second turn of a conversation (interleaved, median).
fn prompt_cache(
    uncached: &LocalBackend,
    threads: usize,
    huge_pages: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    const QUESTIONS: [&str; 6] = [
        "What is the capital of France?",
        "Name three primary colors.",
        "Who wrote Romeo and Juliet?",
        "What is 12 times 7?",
        "List the days of the week.",
        "Translate 'good morning' into Spanish.",
    ];
    let cached = LocalBackend::builder()
        .threads(threads)
        .pool_size(1)
        .huge_pages(huge_pages)
        .commit()?;
    let params = GenerationParams {
        max_tokens: Some(16),
        ..Default::default()
    };
    let first_token = |b: &LocalBackend, messages: &[Message]| {
        b.generate_blocking(messages, &params, None, |_| ControlFlow::Continue(()))
    };
    first_token(&cached, &[Message::user("Hello!")])?;
    let (mut question, mut turn) = (CacheSamples::default(), CacheSamples::default());
    for q in QUESTIONS {
        let ask = [Message::user(q)];
        let w = question.measure(
            &ask,
            |m| first_token(uncached, m),
            |m| first_token(&cached, m),
        )?;
        let next = [
            Message::user(q),
            Message::assistant(w.text),
            Message::user("Tell me more."),
        ];
        turn.measure(
            &next,
            |m| first_token(uncached, m),
            |m| first_token(&cached, m),
        )?;
    }
    println!(
        "prompt cache, first token (median of {}): a new question after the same system prompt {}; the next turn of a conversation {}",
        QUESTIONS.len(),
        question.summary(),
        turn.summary(),
    );
    Ok(())
}

/// First tokens without and with the prompt cache for one kind of request.
#[derive(Default)]
struct CacheSamples {
    cold_ms: Vec<f64>,
    warm_ms: Vec<f64>,
    reused: Vec<f64>,
    prompt: Vec<f64>,
}

impl CacheSamples {
    /// Runs `messages` on both backends (uncached first) and returns the cached run.
    fn measure(
        &mut self,
        messages: &[Message],
        uncached: impl Fn(&[Message]) -> edgeroute::Result<LocalOutput>,
        cached: impl Fn(&[Message]) -> edgeroute::Result<LocalOutput>,
    ) -> edgeroute::Result<LocalOutput> {
        let c = uncached(messages)?;
        let w = cached(messages)?;
        self.cold_ms.push(c.first_token.as_secs_f64() * 1000.0);
        self.warm_ms.push(w.first_token.as_secs_f64() * 1000.0);
        self.reused.push(w.reused_prompt_tokens as f64);
        self.prompt.push(w.prompt_ids.len() as f64);
        Ok(w)
    }

    fn summary(self) -> String {
        format!(
            "{:.1} ms -> {:.1} ms ({:.0} of {:.0} prompt tokens reused)",
            median(self.cold_ms),
            median(self.warm_ms),
            median(self.reused),
            median(self.prompt)
        )
    }
}

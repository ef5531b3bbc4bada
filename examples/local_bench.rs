//! Local tier benchmark: time to first token (32-token prompt), decode tokens/s and peak RSS,
//! Rust (`LocalBackend`) side by side with the same greedy loop in Python onnxruntime.
//! Needs `python3 scripts/setup.py`; run: `cargo run --release --no-default-features --features onnx --example local_bench [threads] [max_new_tokens] [runs] [spin 0|1]`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edgeroute::backend::local::LocalBackend;
use edgeroute::home;
use edgeroute::request::{GenerationParams, Message};

const SYSTEM: &str = "You are a helpful assistant.";
const PROMPT: &str = "Write a long story about a dragon who learns to cook.";

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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

struct Row {
    prompt_tokens: usize,
    generated: usize,
    ttft_ms: f64,
    tps: f64,
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

    let t0 = Instant::now();
    let backend = LocalBackend::builder()
        .threads(threads)
        .pool_size(1)
        .intra_op_spinning(spin)
        .commit()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let messages = [Message::system(SYSTEM), Message::user(PROMPT)];
    let params = GenerationParams {
        max_tokens: Some(max_new),
        ..Default::default()
    };
    let prompt_tokens = backend.encode_prompt(&messages)?.len();

    backend.generate_blocking(
        &messages,
        &GenerationParams {
            max_tokens: Some(8),
            ..Default::default()
        },
        None,
        |_| ControlFlow::Continue(()),
    )?;
    let (mut ttfts, mut tps, mut generated) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let mut stamps = Vec::new();
        let out = backend.generate_blocking(&messages, &params, None, |ev| {
            stamps.push(ev.elapsed);
            ControlFlow::Continue(())
        })?;
        generated = out.token_ids.len();
        ttfts.push(out.first_token.as_secs_f64() * 1000.0);
        if let (Some(first), Some(last)) = (stamps.first(), stamps.last()) {
            if stamps.len() > 1 {
                tps.push((stamps.len() - 1) as f64 / (*last - *first).as_secs_f64());
            }
        }
    }
    let rust = Row {
        prompt_tokens,
        generated,
        ttft_ms: median(ttfts),
        tps: median(tps),
        rss_mb: vm_hwm_mb(),
    };

    let home_dir = home::resolve(None);
    let python = std::env::var_os("EDGEROUTE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir.join("tools/venv/bin/python"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_python.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--model-dir", &backend.model_dir().display().to_string()])
        .args([
            "--threads",
            &threads.to_string(),
            "--system",
            SYSTEM,
            "--prompt",
            PROMPT,
        ])
        .args([
            "--max-new-tokens",
            &max_new.to_string(),
            "--runs",
            &runs.to_string(),
        ])
        .args(["--spin", if spin { "1" } else { "0" }])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let py = Row {
        prompt_tokens: f("prompt_tokens") as usize,
        generated: f("generated_tokens") as usize,
        ttft_ms: f("ttft_ms"),
        tps: f("decode_tokens_per_s"),
        rss_mb: f("peak_rss_mb"),
    };

    println!("local_bench: {} | threads {threads} | max_new_tokens {max_new} | spinning {spin} | median of {runs} runs | model load {load_ms:.0} ms", backend.model_dir().display());
    println!(
        "{:<22} {:>8} {:>10} {:>16} {:>17} {:>14}",
        "", "prompt", "generated", "first token ms", "decode tokens/s", "peak RSS MiB"
    );
    for (name, r) in [("Rust (edgeroute)", &rust), ("Python onnxruntime", &py)] {
        println!(
            "{:<22} {:>8} {:>10} {:>16.1} {:>17.1} {:>14.0}",
            name, r.prompt_tokens, r.generated, r.ttft_ms, r.tps, r.rss_mb
        );
    }
    println!("Rust / Python decode speed: {:.2}x (aim >= 1.2x); Rust first token {:.1} ms (aim < 100 ms)", rust.tps / py.tps, rust.ttft_ms);
    Ok(())
}

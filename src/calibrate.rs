//! Calibration: measures the local model on this device ([`crate::Router::calibrate`],
//! `edgeroute bench`), so that latency rules and hedge delays decide from the device's own
//! figures from the first request instead of the policy's `[latency]` model.
//!
//! A few short greedy answers to fixed prompts, after one unmeasured warm-up (which loads the
//! model). Each measured answer feeds the router's latency models as a real local answer does,
//! and, on a router with a database, is remembered for the next router on the same home. The
//! answers are not requests: they are not cached, counted in the statistics, or kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::backend::{BackendCall, LocalTier, StreamEvent};
use crate::policy::CompiledPolicy;
use crate::request::{GenerationParams, Message, Request};
use crate::stats::StatsRecorder;

/// Answers longer than this are cut: enough tokens for a steady decode rate.
pub const CALIBRATION_TOKENS: u32 = 64;

/// Most measured runs one calibration makes.
pub const MAX_CALIBRATION_RUNS: usize = 100;

/// The prompts, taken in turn: short everyday questions of different lengths.
const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Explain in a few sentences why the sky is blue.",
    "Give me three tips for writing a clear email to a colleague about a missed deadline.",
    "Name three fruits.",
];

/// One measured answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CalibrationRun {
    /// Prompt tokens (as the model counted them, its chat template included).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// From the start of generation to the first token, ms (the whole answer's time when it
    /// had no text).
    pub first_token_ms: f64,
    /// From the start of generation to the end, ms.
    pub total_ms: f64,
    /// Tokens after the first, per second after the first (`None` for answers of one token).
    pub decode_tokens_per_s: Option<f64>,
}

/// What [`crate::Router::calibrate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Calibration {
    /// What the figures were measured for, and are remembered under: the built-in model with
    /// its build, threads and spinning (`local/<model>@<build>+t<threads>[s]`), or an app's
    /// backend as `name@revision`.
    pub backend: String,
    /// How long the warm-up took (the model's load, when it was not loaded yet), ms.
    pub warm_up_ms: f64,
    /// Each measured answer, in order.
    pub runs: Vec<CalibrationRun>,
    /// Median time to first token, ms.
    pub first_token_ms: f64,
    /// Median decode rate, tokens per second (`None` when no answer had two tokens).
    pub decode_tokens_per_s: Option<f64>,
    /// Whether the figures are remembered in the home's database for the next router there
    /// (false for a router without a database).
    pub remembered: bool,
}

/// Where a calibration runs: the router's local tier, latency models and policy.
pub(crate) struct Bench<'a> {
    pub(crate) local: &'a LocalTier,
    pub(crate) stats: &'a StatsRecorder,
    pub(crate) policy: &'a CompiledPolicy,
    /// True once the router is shutting down: no further run starts.
    pub(crate) closing: &'a AtomicBool,
    /// What the local tier's speed is remembered under.
    pub(crate) identity: &'a str,
}

/// Runs the warm-up and `runs` measured answers (1 to [`MAX_CALIBRATION_RUNS`]) on the bench's
/// local tier, feeding each to its latency models; `progress` sees each run as it ends.
pub(crate) async fn calibrate(
    bench: Bench<'_>,
    runs: usize,
    progress: &mut (dyn FnMut(usize, &CalibrationRun) + Send),
) -> crate::Result<Calibration> {
    let Bench {
        local,
        stats,
        policy,
        closing,
        identity,
    } = bench;
    let repetition_penalty = policy.local.repetition_penalty;
    if !(1..=MAX_CALIBRATION_RUNS).contains(&runs) {
        return Err(crate::Error::InvalidRequest(format!(
            "calibration runs must be from 1 to {MAX_CALIBRATION_RUNS}, not {runs}"
        )));
    }
    let started = Instant::now();
    answer(local, PROMPTS[0], repetition_penalty).await?;
    let warm_up_ms = ms(started.elapsed());
    let mut measured = Vec::with_capacity(runs);
    for i in 0..runs {
        if closing.load(Ordering::SeqCst) {
            return Err(crate::Error::ShutDown);
        }
        let prompt = PROMPTS[(i + 1) % PROMPTS.len()];
        let (run, elapsed, first_token) = answer(local, prompt, repetition_penalty).await?;
        // As the router estimates a request's prompt, so the tokens the model adds are learnt
        // against the same count.
        let request_tokens = crate::inspect::inspect(policy, &Request::new(prompt)).prompt_tokens;
        stats.observe_local(
            elapsed,
            first_token,
            crate::request::Usage::new(run.prompt_tokens, run.output_tokens),
            request_tokens,
        );
        progress(i + 1, &run);
        measured.push(run);
    }
    Ok(Calibration {
        backend: identity.to_string(),
        warm_up_ms,
        first_token_ms: median(measured.iter().map(|r| r.first_token_ms)).unwrap_or(0.0),
        decode_tokens_per_s: median(measured.iter().filter_map(|r| r.decode_tokens_per_s)),
        runs: measured,
        remembered: stats.remembers(),
    })
}

/// One greedy answer to `prompt`, timed from when generation starts (after a model load).
async fn answer(
    local: &LocalTier,
    prompt: &str,
    repetition_penalty: f32,
) -> crate::Result<(CalibrationRun, Duration, Option<Duration>)> {
    let call = BackendCall {
        messages: vec![Message::user(prompt)],
        params: GenerationParams {
            max_tokens: Some(CALIBRATION_TOKENS),
            repetition_penalty: Some(repetition_penalty),
            ..Default::default()
        },
        deadline: None,
    };
    let mut stream = local.stream(call).await?;
    let generating = Instant::now();
    let mut first_token = None;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(text) => {
                if first_token.is_none() && !text.is_empty() {
                    first_token = Some(generating.elapsed());
                }
            }
            StreamEvent::Done(g) => {
                let elapsed = generating.elapsed();
                let first = first_token.unwrap_or(elapsed);
                let after_first = elapsed.saturating_sub(first).as_secs_f64();
                let decoded = g.usage.output_tokens.saturating_sub(1);
                let run = CalibrationRun {
                    prompt_tokens: g.usage.input_tokens,
                    output_tokens: g.usage.output_tokens,
                    first_token_ms: ms(first),
                    total_ms: ms(elapsed),
                    decode_tokens_per_s: (decoded > 0 && after_first > 0.0)
                        .then(|| decoded as f64 / after_first),
                };
                return Ok((run, elapsed, first_token));
            }
        }
    }
    Err(crate::Error::Inference(
        "the local model's answer ended without its final event".into(),
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}

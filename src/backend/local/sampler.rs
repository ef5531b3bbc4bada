//! Choosing the next token: greedy, or temperature + top-p with a seeded generator, after a
//! repetition penalty on tokens that keep recurring.

use crate::request::REPETITION_MIN_COUNT;

/// A small, fast, seedable generator (SplitMix64); sampling needs reproducibility, not crypto.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How tokens are picked.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    temperature: f32,
    top_p: f32,
    /// 1 = off.
    repetition_penalty: f32,
    rng: SplitMix64,
    /// The penalised logits (reused between tokens).
    scores: Vec<f32>,
}

impl Sampler {
    /// `temperature` `None`/`<= 0` means greedy; `top_p` defaults to 1; `repetition_penalty`
    /// (validated by the caller) 1 means none.
    pub(crate) fn new(
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: Option<u64>,
        repetition_penalty: f32,
    ) -> Self {
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED)
        });
        Sampler {
            temperature: temperature
                .filter(|t| t.is_finite() && *t > 0.0)
                .unwrap_or(0.0),
            top_p: top_p
                .filter(|p| p.is_finite() && *p > 0.0)
                .unwrap_or(1.0)
                .min(1.0),
            repetition_penalty,
            rng: SplitMix64(seed),
            scores: Vec::new(),
        }
    }

    /// Picks a token after penalising those that occur at least [`REPETITION_MIN_COUNT`] times
    /// in `recent` (the latest generated ids) and returns it with its log-probability under the
    /// model itself (temperature 1, no penalty), which is what confidence is computed from.
    pub(crate) fn choose(&mut self, logits: &[f32], recent: &[u32]) -> (u32, f32) {
        let (max_i, max) = argmax(logits);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let repeated = if self.repetition_penalty == 1.0 {
            Vec::new()
        } else {
            repeated_at_least(recent, REPETITION_MIN_COUNT)
        };
        let mut scores = std::mem::take(&mut self.scores);
        let id = if !repeated.is_empty() {
            scores.clear();
            scores.extend_from_slice(logits);
            let p = self.repetition_penalty;
            for id in repeated {
                if let Some(s) = scores.get_mut(id as usize) {
                    *s = if *s > 0.0 { *s / p } else { *s * p };
                }
            }
            let (best_i, best) = argmax(&scores);
            if self.temperature == 0.0 {
                best_i
            } else {
                self.sample(&scores, best)
            }
        } else if self.temperature == 0.0 {
            max_i
        } else {
            self.sample(logits, max)
        };
        self.scores = scores;
        let lp = logits.get(id).map_or(f32::NEG_INFINITY, |l| l - lse);
        (id as u32, lp)
    }

    fn sample(&mut self, logits: &[f32], max: f32) -> usize {
        let t = self.temperature;
        // Tokens more than e^-30 below the best cannot matter; skip them before sorting.
        let floor = max - 30.0 * t;
        let mut cands: Vec<(usize, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l >= floor)
            .map(|(i, &l)| (i, ((l - max) / t).exp()))
            .collect();
        cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut keep = cands.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (k, c) in cands.iter().enumerate() {
                acc += c.1 / total;
                if acc >= self.top_p {
                    keep = k + 1;
                    break;
                }
            }
        }
        let cands = &cands[..keep];
        let mass: f32 = cands.iter().map(|c| c.1).sum();
        let mut u = self.rng.next_f64() as f32 * mass;
        for c in cands {
            if u < c.1 {
                return c.0;
            }
            u -= c.1;
        }
        cands.last().map_or(0, |c| c.0)
    }
}

/// The distinct ids occurring at least `min` times in `ids` (ascending).
fn repeated_at_least(ids: &[u32], min: usize) -> Vec<u32> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted
        .chunk_by(|a, b| a == b)
        .filter(|run| run.len() >= min)
        .map(|run| run[0])
        .collect()
}

/// Index and value of the first maximum (NumPy's `argmax` tie rule).
fn argmax(xs: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &x) in xs.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum_and_reports_logprob() {
        let mut s = Sampler::new(None, None, Some(1), 1.0);
        let (id, lp) = s.choose(&[0.0, 2.0, 2.0, -1.0], &[1, 2]);
        assert_eq!(id, 1);
        let expected = 2.0 - (1.0f32 + 2.0 * 2f32.exp() + (-1f32).exp()).ln();
        assert!((lp - expected).abs() < 1e-5);
    }

    #[test]
    fn same_seed_same_samples_and_top_p_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(Some(1.0), Some(1.0), Some(seed), 1.0);
            (0..20)
                .map(|_| s.choose(&logits, &[]).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // top_p tiny: only the single most likely token survives (ties broken by index).
        let mut s = Sampler::new(Some(1.0), Some(1e-6), Some(3), 1.0);
        for _ in 0..20 {
            assert_eq!(s.choose(&logits, &[]).0, 6);
        }
    }

    #[test]
    fn repetition_penalty_demotes_recurring_tokens_but_not_their_logprob() {
        let logits = [1.0, 3.0, 2.9, -1.0];
        let lse = logits.iter().map(|l: &f32| l.exp()).sum::<f32>().ln();
        let mut s = Sampler::new(None, None, Some(1), 1.1);
        // Token 1 twice: below the count, greedy as usual.
        assert_eq!(s.choose(&logits, &[1, 0, 1]).0, 1);
        // Three times: 3.0 / 1.1 = 2.73 < 2.9, so token 2 wins; its logprob is the model's own.
        let (id, lp) = s.choose(&logits, &[1, 0, 1, 2, 1]);
        assert_eq!(id, 2);
        assert!((lp - (logits[2] - lse)).abs() < 1e-6);
        assert!((s.scores[1] - 3.0 / 1.1).abs() < 1e-6, "penalised once");
        // Negative logits are pushed further down, not up.
        s.choose(&logits, &[3, 3, 3]);
        assert!((s.scores[3] + 1.1).abs() < 1e-6);
        // 1 = off; out-of-vocabulary ids are ignored.
        let recent = [1, 1, 1, 99, 99, 99];
        assert_eq!(
            Sampler::new(None, None, Some(1), 1.0)
                .choose(&logits, &recent)
                .0,
            1
        );
        assert_eq!(
            Sampler::new(None, None, Some(1), 1.1)
                .choose(&logits, &[99; 5])
                .0,
            1
        );
    }

    #[test]
    fn recurring_ids_are_counted() {
        assert_eq!(repeated_at_least(&[5, 1, 5, 2, 5, 1, 1], 3), vec![1, 5]);
        assert!(repeated_at_least(&[1, 2, 1], 3).is_empty());
        assert!(repeated_at_least(&[], 3).is_empty());
    }
}

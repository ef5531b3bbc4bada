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
        let lse = max + sum_exp_below(logits, max).ln();
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

/// Lanes of the vectorisable loops below: eight `f32` fill one AVX register.
const LANES: usize = 8;

/// Index and value of the first maximum (NumPy's `argmax` tie rule); `(0, -inf)` when no
/// element is above `-inf` (NaN never wins). Two passes the compiler turns into SIMD (the
/// maximum in `LANES` independent lanes, then the first element equal to it): a one-pass
/// index-tracking loop does not vectorise, and this runs on the 49,152 logits of every token.
fn argmax(xs: &[f32]) -> (usize, f32) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    let at = xs.iter().position(|&x| x == max).unwrap_or(0);
    (at, max)
}

/// `Σ exp(x - max)` over `xs`, whose elements are all `<= max` (the log-sum-exp's sum).
/// [`exp_le0`] has no libm call, so the loop runs in SIMD lanes: faster than
/// `f32::exp` here (~40-60 µs instead of 100-250 µs per token for 49,152 logits on this
/// machine's baseline x86-64 build).
fn sum_exp_below(xs: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            *acc += exp_le0(x - max);
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|&x| exp_le0(x - max)).sum::<f32>()
}

/// `e^x` for `x <= 0`, within 2 ulp of `f32::exp` (Cephes' `expf`: `x = n ln 2 + r`,
/// `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, `2^n` built from its exponent bits).
/// Below -87 (where `e^x` underflows `f32`'s normal range) it returns `e^-87`, ~1.6e-38: a
/// sum of 49,152 of them changes nothing next to the maximum's own 1. NaN stays NaN.
#[inline(always)]
fn exp_le0(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in SIMD.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold n (in [-126, 0]) above ROUND's bits: 2^n is the normal
    // f32 with biased exponent n + 127. Integer lane arithmetic only (an `as i32` conversion
    // would stop the loop vectorising).
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    er * two_n
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
    fn fast_exp_matches_the_standard_library() {
        let mut worst = 0.0f32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (want, got) = (x.exp(), exp_le0(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_37;
        }
        assert!(worst < 3.0 * f32::EPSILON, "worst relative error {worst}");
        assert_eq!(exp_le0(0.0), 1.0);
        assert!(exp_le0(-1000.0) < 1e-37 && exp_le0(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_le0(f32::NAN).is_nan());
    }

    #[test]
    fn fast_argmax_and_logsumexp_agree_with_the_plain_loops() {
        // Lengths around the lane width, ties, -inf and NaN.
        let mut rng = SplitMix64(42);
        for len in [1usize, 7, 8, 9, 31, 1000, 49_152] {
            let mut xs: Vec<f32> = (0..len)
                .map(|_| (rng.next_f64() as f32 - 0.5) * 60.0)
                .collect();
            let plain = |xs: &[f32]| {
                let mut best = (0, f32::NEG_INFINITY);
                for (i, &x) in xs.iter().enumerate() {
                    if x > best.1 {
                        best = (i, x);
                    }
                }
                best
            };
            assert_eq!(argmax(&xs), plain(&xs), "len {len}");
            let max = argmax(&xs).1;
            // Against an f64 sum: a plain f32 loop over 49,152 terms is itself off by ~1e-5.
            let want = xs.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>() as f32;
            let got = sum_exp_below(&xs, max);
            assert!(
                ((got - want) / want).abs() < 1e-5,
                "len {len}: {got} vs {want}"
            );
            if len > 9 {
                xs[len - 1] = max; // a tie: the first one wins
                xs[3] = f32::NAN;
                assert_eq!(argmax(&xs), plain(&xs), "len {len}");
            }
        }
        assert_eq!(argmax(&[]), (0, f32::NEG_INFINITY));
        assert_eq!(argmax(&[f32::NAN; 9]), (0, f32::NEG_INFINITY));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]).1, f32::NEG_INFINITY);
    }

    #[test]
    fn recurring_ids_are_counted() {
        assert_eq!(repeated_at_least(&[5, 1, 5, 2, 5, 1, 1], 3), vec![1, 5]);
        assert!(repeated_at_least(&[1, 2, 1], 3).is_empty());
        assert!(repeated_at_least(&[], 3).is_empty());
    }
}

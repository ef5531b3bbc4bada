//! Choosing the next token: greedy, or temperature + top-p with a seeded generator.

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
    rng: SplitMix64,
}

impl Sampler {
    /// `temperature` `None`/`<= 0` means greedy; `top_p` defaults to 1.
    pub(crate) fn new(temperature: Option<f32>, top_p: Option<f32>, seed: Option<u64>) -> Self {
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
            rng: SplitMix64(seed),
        }
    }

    /// Picks a token and returns it with its log-probability under the model (temperature 1).
    pub(crate) fn choose(&mut self, logits: &[f32]) -> (u32, f32) {
        let (max_i, max) = argmax(logits);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let id = if self.temperature == 0.0 {
            max_i
        } else {
            self.sample(logits, max)
        };
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
        let mut s = Sampler::new(None, None, Some(1));
        let (id, lp) = s.choose(&[0.0, 2.0, 2.0, -1.0]);
        assert_eq!(id, 1);
        let expected = 2.0 - (1.0f32 + 2.0 * 2f32.exp() + (-1f32).exp()).ln();
        assert!((lp - expected).abs() < 1e-5);
    }

    #[test]
    fn same_seed_same_samples_and_top_p_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(Some(1.0), Some(1.0), Some(seed));
            (0..20).map(|_| s.choose(&logits).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // top_p tiny: only the single most likely token survives (ties broken by index).
        let mut s = Sampler::new(Some(1.0), Some(1e-6), Some(3));
        for _ in 0..20 {
            assert_eq!(s.choose(&logits).0, 6);
        }
    }
}

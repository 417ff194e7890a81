//! Next-token selection as the reference does it (REFERENCE §4): argmax at
//! temperature 0, else softmax(logits / temperature) followed by top-p (nucleus)
//! sampling, from a seeded, reproducible random stream; plus log-probabilities.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Validated sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
}

impl SamplingParams {
    /// Checks ranges: temperature finite and ≥ 0, top_p in (0, 1].
    pub fn new(temperature: f32, top_p: f32) -> Result<Self> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "temperature must be a finite number >= 0, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p must be in (0, 1], got {top_p}"
            )));
        }
        Ok(SamplingParams { temperature, top_p })
    }
}

/// A seeded sampler. The same seed, logits and settings always give the same tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose random stream is fixed by `seed` (the reference seeds with 1).
    pub fn new(seed: u64) -> Self {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A sampler on stream `stream` of `seed`'s random sequence: streams are independent,
    /// and stream 0 is [`Sampler::new`]'s. Each row of a batch draws from its own stream,
    /// so its tokens do not depend on its neighbours.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Sampler { rng }
    }

    /// Uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32], params: SamplingParams) -> u32 {
        if params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut probs: Vec<f32> = logits.iter().map(|l| l / params.temperature).collect();
        if !probs.iter().all(|p| p.is_finite()) {
            // A temperature so small that the scaled logits overflow: the limit is greedy.
            return argmax(logits);
        }
        crate::kernels::softmax(&mut probs);
        let (ids, kept) = top_p_filter(&probs, params.top_p);
        let u = self.uniform() * kept.iter().map(|&p| p as f64).sum::<f64>();
        let mut acc = 0.0f64;
        for (&id, &p) in ids.iter().zip(&kept) {
            acc += p as f64;
            if u < acc {
                return id;
            }
        }
        // Rounding can leave `u` a hair above the last sum: the last kept token.
        ids[kept.len() - 1]
    }
}

/// The nucleus of a probability vector: ids sorted by descending probability (ties by
/// id) and their probabilities, keeping each token whose preceding cumulative mass does
/// not exceed `top_p` (so the most likely token is always kept), as the reference's
/// `probs_sum - probs_sort > p` mask does. Probabilities are not renormalised.
pub fn top_p_filter(probs: &[f32], top_p: f32) -> (Vec<u32>, Vec<f32>) {
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    order.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    let mut kept = Vec::new();
    let mut cum = 0.0f32;
    for &id in &order {
        let p = probs[id as usize];
        cum += p;
        // Exactly the reference's float expression: cumsum - prob > p.
        if cum - p > top_p {
            break;
        }
        kept.push(p);
    }
    order.truncate(kept.len());
    (order, kept)
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[token]` at temperature 1 (what the reference's `logprobs` report).
pub fn logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - sum.ln()) as f32
}

/// `ln(sum(exp(logits)))`, max-subtracted, in f64.
fn log_partition(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// `log_softmax(logits)` at each of `ids` (negative infinity outside the vocabulary);
/// empty without ids.
pub fn logprobs_of(logits: &[f32], ids: &[u32]) -> Vec<f32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let log_z = log_partition(logits);
    ids.iter()
        .map(|&id| {
            logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| (l as f64 - log_z) as f32)
        })
        .collect()
}

/// The `k` most likely tokens with their log-probabilities at temperature 1, most
/// likely first (ties by id), as OpenAI's `top_logprobs` reports them.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    let log_z = log_partition(logits);
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(ids.len());
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
        ids.truncate(k);
    }
    ids.sort_by(by_logit);
    ids.into_iter()
        .map(|id| (id, (logits[id as usize] as f64 - log_z) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_validated() {
        assert!(SamplingParams::new(0.6, 0.9).is_ok());
        assert!(SamplingParams::new(0.0, 1.0).is_ok());
        for (t, p) in [
            (-0.1, 0.9),
            (f32::NAN, 0.9),
            (f32::INFINITY, 0.9),
            (0.6, 0.0),
            (0.6, 1.01),
            (0.6, f32::NAN),
        ] {
            assert!(
                matches!(SamplingParams::new(t, p), Err(Error::InvalidArgument(_))),
                "{t} {p}"
            );
        }
    }

    #[test]
    fn nucleus_follows_reference_mask() {
        let probs = [0.1, 0.5, 0.25, 0.15];
        // sorted: 0.5 (1), 0.25 (2), 0.15 (3), 0.1 (0); mass before: 0, .5, .75, .9
        assert_eq!(top_p_filter(&probs, 0.85).0, vec![1, 2, 3]);
        assert_eq!(top_p_filter(&probs, 0.5).0, vec![1, 2]); // 0.5 > 0.5 is false
        assert_eq!(top_p_filter(&probs, 0.4).0, vec![1]);
        assert_eq!(top_p_filter(&probs, 0.6).0, vec![1, 2]);
        assert_eq!(top_p_filter(&probs, 0.01).0, vec![1]);
        assert_eq!(top_p_filter(&probs, 1.0).0, vec![1, 2, 3, 0]);
    }

    #[test]
    fn argmax_and_logprob() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|v| (*v as f64).exp()).sum();
        assert!((logprob(&l, 0) as f64 - (1.0 - z.ln())).abs() < 1e-6);
    }

    /// Statistical check on a fixed distribution: tokens outside the nucleus are never
    /// drawn, and the frequencies inside it match the renormalised probabilities.
    #[test]
    fn top_p_sampling_statistics() {
        // softmax(logits) = probs exactly by construction (logits = ln p).
        let probs = [0.40f32, 0.25, 0.15, 0.10, 0.06, 0.04];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let params = SamplingParams::new(1.0, 0.7).unwrap();
        // mass before each sorted token: 0, .40, .65, .80 -> keep the first three.
        let kept_mass = 0.80f64;
        let mut sampler = Sampler::new(1234);
        let draws = 200_000;
        let mut counts = [0usize; 6];
        for _ in 0..draws {
            counts[sampler.sample(&logits, params) as usize] += 1;
        }
        assert_eq!(
            counts[3] + counts[4] + counts[5],
            0,
            "token outside the nucleus drawn"
        );
        for i in 0..3 {
            let expected = probs[i] as f64 / kept_mass;
            let freq = counts[i] as f64 / draws as f64;
            // 5 standard deviations of a binomial proportion (< 0.006 here).
            let sd = (expected * (1.0 - expected) / draws as f64).sqrt();
            assert!(
                (freq - expected).abs() < 5.0 * sd,
                "token {i}: {freq} vs {expected}"
            );
        }
        // Temperature sharpens: at T=0.5 the top token's share grows to p^2 / sum p^2.
        let params = SamplingParams::new(0.5, 1.0).unwrap();
        let mut top = 0;
        for _ in 0..draws {
            top += (sampler.sample(&logits, params) == 0) as usize;
        }
        let sq: f64 = probs.iter().map(|p| (*p as f64).powi(2)).sum();
        let expected = 0.16 / sq;
        let sd = (expected * (1.0 - expected) / draws as f64).sqrt();
        assert!(((top as f64 / draws as f64) - expected).abs() < 5.0 * sd);
    }

    #[test]
    fn top_logprobs_are_the_k_largest_in_order() {
        let l = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let top = top_logprobs(&l, 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        for (id, lp) in &top {
            assert!((lp - logprob(&l, *id)).abs() < 1e-6);
        }
        assert_eq!(top_logprobs(&l, 9).len(), 5);
        assert!(top_logprobs(&l, 0).is_empty());
    }

    #[test]
    fn streams_are_independent_and_stream_zero_is_the_seed() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams::new(1.0, 1.0).unwrap();
        let draw = |mut s: Sampler| (0..40).map(|_| s.sample(&logits, p)).collect::<Vec<_>>();
        assert_eq!(draw(Sampler::with_stream(5, 0)), draw(Sampler::new(5)));
        assert_ne!(draw(Sampler::with_stream(5, 1)), draw(Sampler::new(5)));
    }

    #[test]
    fn a_vanishing_temperature_is_greedy() {
        let logits = [1.0f32, 3.0, 2.5, -4.0];
        let p = SamplingParams::new(1e-39, 1.0).unwrap();
        let mut s = Sampler::new(3);
        assert!((0..20).all(|_| s.sample(&logits, p) == 1));
    }

    #[test]
    fn seeds_reproduce() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams::new(0.8, 0.95).unwrap();
        let run = |seed| {
            let mut s = Sampler::new(seed);
            (0..50).map(|_| s.sample(&logits, p)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}

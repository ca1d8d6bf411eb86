//! Per-request token sampling: logit bias, repetition / presence / frequency
//! penalties, greedy or temperature + top-k + top-p + min-p, and logprobs.
//!
//! Invariant: a request's sampler draws exactly one uniform number from its own seeded RNG
//! per sampled token, so the same seed gives the same tokens whatever else is batched.

use crate::grammar::Grammar;
use kr_core::SamplingParams;
use kr_model::RowSampling;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};

/// The chosen token's logprob and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// `(token id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    seen: HashSet<u32>,
    output_counts: HashMap<u32, u32>,
    /// The request's output constraint: applied last, so only tokens it allows are drawn.
    grammar: Option<Box<Grammar>>,
}

impl Sampler {
    /// `prompt` seeds the set of tokens the repetition penalty applies to.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params,
            seen,
            output_counts: HashMap::new(),
            grammar: None,
        }
    }

    /// Holds the output to `grammar` (none: unconstrained).
    pub fn with_grammar(mut self, grammar: Option<Box<Grammar>>) -> Self {
        self.grammar = grammar;
        self
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, Option<TokenLogprobs>) {
        self.apply_penalties(logits);
        if let Some(g) = &mut self.grammar {
            g.mask(logits);
        }
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let logprobs = self
            .params
            .logprobs
            .map(|n| token_logprobs(logits, token, n as usize));
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        *self.output_counts.entry(token).or_default() += 1;
        if let Some(g) = &mut self.grammar {
            g.accept(token);
        }
        (token, logprobs)
    }

    /// Whether the next token can be chosen on the device from the raw logits (a grammar's
    /// mask goes with it): nothing of this request needs them on the host (logprobs,
    /// penalties, logit bias).
    pub fn device_samplable(&self) -> bool {
        let p = &self.params;
        p.logprobs.is_none()
            && p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Whether the output is held to a grammar: the next token's mask then needs the token
    /// before it on the host, so its steps cannot be launched ahead.
    pub fn constrained(&self) -> bool {
        self.grammar.is_some()
    }

    /// The next token's parameters for the device sampler over `vocab` logits, drawing this
    /// token's one uniform number from the request's generator (none for greedy, as on the
    /// host), with the grammar's mask of allowed tokens (waiting for it if it is still being
    /// computed).
    pub fn device_draw(&mut self, vocab: usize) -> RowSampling {
        let allowed = self.grammar.as_mut().map(|g| g.allowed(vocab));
        let p = &self.params;
        if p.is_greedy() {
            return RowSampling {
                allowed,
                ..RowSampling::greedy()
            };
        }
        RowSampling {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            uniform: self.rng.random::<f32>(),
            allowed,
        }
    }

    /// Records a token chosen on the device (what `sample` records for a host choice).
    pub fn record(&mut self, token: u32) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        *self.output_counts.entry(token).or_default() += 1;
        if let Some(g) = &mut self.grammar {
            g.accept(token);
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            logits[id as usize] += bias;
        }
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.output_counts {
                logits[t as usize] -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }

    /// Temperature, top-k, top-p and min-p, then one draw from the request's RNG.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < cand.len() {
            cand.select_nth_unstable_by(p.top_k as usize - 1, by_logit_desc);
            cand.truncate(p.top_k as usize);
        }
        cand.sort_unstable_by(by_logit_desc);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            keep = probs
                .iter()
                .position(|&x| {
                    acc += x;
                    acc >= p.top_p
                })
                .map_or(keep, |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f32>() * mass;
        for (i, &pr) in probs[..keep].iter().enumerate() {
            u -= pr;
            if u <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `token`'s logprob under `logits` (log-softmax) and the `n` most likely tokens'.
pub(crate) fn token_logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let desc = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if n > 0 && n < idx.len() {
        idx.select_nth_unstable_by(n - 1, desc);
    }
    idx.truncate(n);
    idx.sort_unstable_by(desc);
    TokenLogprobs {
        logprob: logits[token as usize] - lse,
        top: idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(3),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_takes_argmax_and_logprobs_are_consistent() {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.logprobs = Some(2);
            }),
            &[],
        );
        let (t, lp) = s.sample(&mut [0.0, 2.0, 1.0]);
        assert_eq!(t, 1);
        let lp = lp.unwrap();
        assert_eq!(lp.top[0], (1, lp.logprob));
        assert_eq!(lp.top[1].0, 2);
        let total: f32 = [0.0f32, 2.0, 1.0].iter().map(|l| (l - 2.0f32).exp()).sum();
        assert!((lp.logprob + total.ln()).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| p.seed = Some(seed)), &[]);
            (0..30)
                .map(|_| s.sample(&mut logits.clone()).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut s = Sampler::new(params(|p| p.top_k = 1), &[]);
        assert_eq!(s.sample(&mut logits.clone()).0, 6);
        let mut s = Sampler::new(params(|p| p.min_p = 1.0), &[]);
        assert_eq!(
            s.sample(&mut logits.clone()).0 % 7,
            6,
            "min_p = 1 keeps only the top tokens"
        );
        let mut s = Sampler::new(params(|p| p.top_p = 1e-6), &[]);
        assert_eq!(s.sample(&mut logits.clone()).0, 6);
    }

    #[test]
    fn penalties_and_bias_move_the_choice() {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.logit_bias = vec![(0, 5.0)];
            }),
            &[],
        );
        assert_eq!(s.sample(&mut [0.0, 2.0]).0, 0);
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 2.0;
            }),
            &[1],
        );
        assert_eq!(s.sample(&mut [1.5, 2.0]).0, 0);
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.frequency_penalty = 1.0;
            }),
            &[],
        );
        assert_eq!(s.sample(&mut [0.0, 0.5]).0, 1);
        assert_eq!(s.sample(&mut [0.0, 0.5]).0, 0);
    }
}

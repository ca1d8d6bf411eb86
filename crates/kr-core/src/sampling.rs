//! Sampling parameters, validated once at the edge so the engine can trust them.
//!
//! Invariant: a `SamplingParams` that passed [`SamplingParams::validate`] has every value in
//! the range documented on its field; the sampler relies on this and never re-checks.

use crate::CoreError;
use serde::{Deserialize, Serialize};

/// Most alternatives a request may ask for with `logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most stop strings a request may give, and the longest one in bytes.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;
/// Most `logit_bias` entries and stop token ids a request may give.
pub const MAX_LOGIT_BIAS: usize = 1024;
pub const MAX_STOP_TOKEN_IDS: usize = 256;

/// How one request chooses its next token and when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise 0 < t <= 2.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: u32,
    /// Nucleus sampling mass, 0 < p <= 1; 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p times the top probability; 0..=1.
    pub min_p: f32,
    /// Multiplicative penalty on tokens already seen (prompt and output), 0 < r <= 2; 1 disables.
    pub repetition_penalty: f32,
    /// Additive penalty on tokens present in the output, -2..=2.
    pub presence_penalty: f32,
    /// Penalty per occurrence in the output, -2..=2.
    pub frequency_penalty: f32,
    /// Added to the logit of each listed token id, -100..=100.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the request's own RNG: same seed, same text, whatever else runs.
    pub seed: Option<u64>,
    /// Most tokens to generate, >= 1.
    pub max_tokens: u32,
    /// Token ids that end generation (in addition to the model's EOS unless ignore_eos).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the stop string is not part of the output.
    pub stop: Vec<String>,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Return the chosen token's logprob and this many alternatives (0..=20).
    pub logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 256,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

fn check_range(
    param: &'static str,
    v: f32,
    lo: f32,
    hi: f32,
    allowed: &str,
) -> Result<(), CoreError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(invalid(param, v, allowed))
    }
}

fn invalid(param: &'static str, v: impl std::fmt::Display, allowed: &str) -> CoreError {
    CoreError::InvalidParam {
        param,
        value: v.to_string(),
        allowed: allowed.to_string(),
    }
}

impl SamplingParams {
    /// The lists of a request against their bounds (each named in the error).
    fn check_counts(&self) -> Result<(), CoreError> {
        let count = |param, n: usize, max: usize| match n > max {
            true => Err(invalid(
                param,
                format!("{n} entries"),
                &format!("at most {max}"),
            )),
            false => Ok(()),
        };
        count("stop", self.stop.len(), MAX_STOP_STRINGS)?;
        count("logit_bias", self.logit_bias.len(), MAX_LOGIT_BIAS)?;
        count(
            "stop_token_ids",
            self.stop_token_ids.len(),
            MAX_STOP_TOKEN_IDS,
        )?;
        match self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            Some(s) => Err(invalid(
                "stop",
                format!("a string of {} bytes", s.len()),
                &format!("strings of at most {MAX_STOP_BYTES} bytes"),
            )),
            None => Ok(()),
        }
    }

    /// Greedy decoding with the given token limit.
    pub fn greedy(max_tokens: u32) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// True when the next token is the argmax (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every field against its documented range. `vocab_size` bounds token ids.
    pub fn validate(&self, vocab_size: usize) -> Result<(), CoreError> {
        check_range(
            "temperature",
            self.temperature,
            0.0,
            2.0,
            "0.0..=2.0 (0 = greedy)",
        )?;
        if self.top_p <= 0.0 || !self.top_p.is_finite() || self.top_p > 1.0 {
            return Err(invalid(
                "top_p",
                self.top_p,
                "greater than 0.0 and at most 1.0",
            ));
        }
        check_range("min_p", self.min_p, 0.0, 1.0, "0.0..=1.0")?;
        if self.repetition_penalty <= 0.0
            || !self.repetition_penalty.is_finite()
            || self.repetition_penalty > 2.0
        {
            return Err(invalid(
                "repetition_penalty",
                self.repetition_penalty,
                "greater than 0.0 and at most 2.0",
            ));
        }
        check_range(
            "presence_penalty",
            self.presence_penalty,
            -2.0,
            2.0,
            "-2.0..=2.0",
        )?;
        check_range(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            "-2.0..=2.0",
        )?;
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", 0, "at least 1"));
        }
        if let Some(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(invalid("logprobs", n, "0..=20"));
            }
        }
        self.check_counts()?;
        let id_range = format!("token ids 0..{vocab_size}");
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(invalid("logit_bias", id, &id_range));
            }
            check_range(
                "logit_bias",
                bias,
                -100.0,
                100.0,
                "bias values -100.0..=100.0",
            )?;
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return Err(invalid("stop_token_ids", id, &id_range));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(invalid("stop", "\"\"", "non-empty strings"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SamplingParams::default().validate(100).unwrap();
        SamplingParams::greedy(5).validate(100).unwrap();
    }

    #[test]
    fn each_bad_value_names_its_parameter() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: 2.0,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 3.0,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    max_tokens: 0,
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..Default::default()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(100, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, 101.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    stop_token_ids: vec![100],
                    ..Default::default()
                },
                "stop_token_ids",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
        ];
        for (params, name) in cases {
            let err = params.validate(100).unwrap_err();
            match &err {
                CoreError::InvalidParam { param, .. } => assert_eq!(*param, name),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains("allowed"), "{err}");
        }
    }
}

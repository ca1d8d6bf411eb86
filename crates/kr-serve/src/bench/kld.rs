//! `bench perplexity --kl-divergence-base FILE`: compares kr-serve's next-token distributions
//! with the ones llama.cpp's `llama-perplexity --kl-divergence-base FILE` saved, token by token
//! on the same text and context — either engine on the same file (do the two engines compute
//! the same model?) or a reference file against a quantised one (what does quantising cost?).
//!
//! The file (llama.cpp's format): the 8 bytes `_logits_`, `u32 ctx`, `i32 n_vocab`,
//! `i32 n_chunk`, `i32 tokens[n_chunk · ctx]`,
//! then for every scored token `f32 scale`, `f32 min_log_prob` and `nv − 4` `u16` values `q`
//! with `nv = 2 ⌈n_vocab / 2⌉ + 4`: `log p_i = min_log_prob + scale · q_i` (the log-probs down
//! to 16 nats under the top one, 16-bit resolution; `q = 0` at or below that floor).
//!
//! Statistics as llama-perplexity prints them: mean KL(base ‖ ours) over the base's tokens
//! above the floor, how often the top token agrees, and the largest KL of one position.

use crate::error::{CliError, Result};
use std::io::{BufReader, Read};
use std::path::Path;

/// An open base file positioned at its first scored token.
pub struct KlBase {
    pub vocab: usize,
    pub chunks: usize,
    pub tokens: Vec<u32>,
    rows: BufReader<std::fs::File>,
    row: Vec<u8>,
    path: String,
}

fn bad(path: &str, what: String) -> CliError {
    CliError::Usage(format!("--kl-divergence-base {path}: {what}"))
}

impl KlBase {
    /// Reads the header and tokens; `ctx` must be the base's context.
    pub fn open(path: &Path, ctx: usize) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| bad(&name, e.to_string()))?;
        let mut r = BufReader::new(file);
        let mut magic = [0u8; 8];
        if r.read_exact(&mut magic).is_err() || &magic != b"_logits_" {
            return Err(bad(
                &name,
                "not a file of llama-perplexity --kl-divergence-base (no _logits_ header)".into(),
            ));
        }
        let mut word = || -> Result<i32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| bad(&name, format!("header: {e}")))?;
            Ok(i32::from_le_bytes(b))
        };
        let (base_ctx, vocab, chunks) = (word()?, word()?, word()?);
        if base_ctx as usize != ctx {
            return Err(bad(
                &name,
                format!("written with -c {base_ctx}; pass --ctx {base_ctx}"),
            ));
        }
        if !(1..=1 << 24).contains(&vocab) || !(1..=1 << 20).contains(&chunks) {
            return Err(bad(
                &name,
                format!("not a llama-perplexity KL base (vocab {vocab}, chunks {chunks})"),
            ));
        }
        let (vocab, chunks) = (vocab as usize, chunks as usize);
        let mut raw = vec![0u8; 4 * chunks * ctx];
        r.read_exact(&mut raw).map_err(|_| {
            bad(
                &name,
                format!(
                    "shorter than {chunks} chunks of {ctx} tokens; was it written with -c {ctx}?"
                ),
            )
        })?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let nv = 2 * vocab.div_ceil(2) + 4;
        Ok(Self {
            vocab,
            chunks,
            tokens,
            rows: r,
            row: vec![0u8; 2 * nv],
            path: name,
        })
    }

    /// The base's log-probs of the next scored token: `(scale, min_log_prob, q)`.
    fn next_row(&mut self) -> Result<(f32, f32, Vec<u16>)> {
        self.rows
            .read_exact(&mut self.row)
            .map_err(|_| bad(&self.path, "ends before the last scored token".into()))?;
        let f = |i: usize| {
            f32::from_le_bytes([
                self.row[i],
                self.row[i + 1],
                self.row[i + 2],
                self.row[i + 3],
            ])
        };
        let q = self.row[8..8 + 2 * self.vocab]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Ok((f(0), f(4), q))
    }

    /// Errors unless `ours` (the text's tokens) starts with the base's tokens and the
    /// vocabularies agree.
    pub fn check(&self, ours: &[u32], vocab: usize) -> Result<()> {
        if vocab != self.vocab {
            return Err(bad(
                &self.path,
                format!(
                    "vocabulary of {} tokens, this model has {vocab}",
                    self.vocab
                ),
            ));
        }
        let n = self.tokens.len().min(ours.len());
        if let Some(i) = (0..n).find(|&i| self.tokens[i] != ours[i]) {
            return Err(bad(
                &self.path,
                format!(
                    "token {i} is {} there and {} here: the text or tokenizer differs",
                    self.tokens[i], ours[i]
                ),
            ));
        }
        Ok(())
    }
}

/// Running KL-divergence statistics against a base.
#[derive(Default)]
pub struct Kld {
    sum: f64,
    max: f64,
    same_top: usize,
    count: usize,
}

impl Kld {
    /// Adds one position: our `logits` against the base's next row.
    pub fn add(&mut self, logits: &[f32], base: &mut KlBase) -> Result<()> {
        let (scale, min_lp, q) = base.next_row()?;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let (mut kl, mut top_base, mut top_base_lp) = (0f64, 0usize, f64::NEG_INFINITY);
        for (i, &qi) in q.iter().enumerate() {
            let lp_base = (min_lp + scale * qi as f32) as f64;
            if lp_base > top_base_lp {
                (top_base, top_base_lp) = (i, lp_base);
            }
            if lp_base > -16.0 {
                kl += lp_base.exp() * (lp_base - (logits[i] as f64 - lse));
            }
        }
        let top = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        self.sum += kl;
        self.max = self.max.max(kl);
        self.same_top += usize::from(top == top_base);
        self.count += 1;
        Ok(())
    }

    pub fn report(&self) -> serde_json::Value {
        let n = self.count.max(1) as f64;
        serde_json::json!({
            "positions": self.count,
            "mean_kl_divergence": self.sum / n,
            "max_kl_divergence": self.max,
            "same_top_token": self.same_top as f64 / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base written in llama.cpp's layout from known logits reads back, and KL against the
    /// same logits is ~0 (the 16-bit rounding: 2e-6 here) while shifted logits give a positive KL.
    #[test]
    fn reads_llama_cpp_kl_base_layout() {
        let (vocab, ctx) = (5usize, 4usize);
        let logits = [1.0f32, 3.0, -2.0, 0.5, 2.0];
        let max = 3.0f32;
        let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        let min_logit = logits
            .iter()
            .fold(f32::MAX, |m, &v| m.min(v))
            .max(max - 16.0);
        let scale = (max - min_logit) / 65535.0;
        let mut bytes = b"_logits_".to_vec();
        bytes.extend((ctx as u32).to_le_bytes());
        bytes.extend((vocab as i32).to_le_bytes());
        bytes.extend(1i32.to_le_bytes());
        for t in 0..ctx as i32 {
            bytes.extend(t.to_le_bytes());
        }
        bytes.extend(scale.to_le_bytes());
        bytes.extend((min_logit - lse).to_le_bytes());
        for v in logits {
            bytes.extend((((v - min_logit) / scale).round() as u16).to_le_bytes());
        }
        bytes.extend([0u8; 2]); // nv rounds the vocabulary up to even
        let path = std::env::temp_dir().join(format!("kr-kld-{}.bin", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        assert!(KlBase::open(&path, ctx + 1).is_err(), "other context");
        let mut base = KlBase::open(&path, ctx).unwrap();
        assert_eq!(
            (base.vocab, base.chunks, base.tokens.clone()),
            (5, 1, vec![0, 1, 2, 3])
        );
        base.check(&[0, 1, 2, 3, 9], 5).unwrap();
        assert!(base.check(&[0, 7], 5).is_err());
        let mut same = Kld::default();
        same.add(&logits, &mut base).unwrap();
        let r = same.report();
        assert!(
            r["mean_kl_divergence"].as_f64().unwrap().abs() < 1e-5,
            "{r}"
        );
        assert_eq!(r["same_top_token"], 1.0);
        let mut base = KlBase::open(&path, ctx).unwrap();
        let mut other = Kld::default();
        other.add(&[3.0, 1.0, -2.0, 0.5, 2.0], &mut base).unwrap();
        assert!(other.report()["mean_kl_divergence"].as_f64().unwrap() > 0.1);
        assert!(other.add(&logits, &mut base).is_err(), "past the end");
        std::fs::remove_file(&path).ok();
    }
}

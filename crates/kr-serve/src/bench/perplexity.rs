//! `kr-serve bench perplexity`: the perplexity of a model on a text, computed the way
//! llama.cpp's `llama-perplexity` computes it, so that quantised files can be compared with one
//! command on either engine:
//!
//! - the whole text is tokenised once, BOS first where the model adds one;
//! - it is cut into `len / ctx` chunks of `ctx` tokens (at most `--chunks`), each evaluated
//!   from an empty cache, its first token replaced by BOS where the model adds one;
//! - in each chunk the tokens at positions `ctx/2 .. ctx-1` are scored from the logits of the
//!   position before them (the first half only gives context);
//! - PPL = exp(mean negative log-likelihood), with llama.cpp's standard error.
//!
//! Invariant: the text must hold at least two chunks (llama.cpp's rule). Nothing is sampled:
//! logits come back as f32 and the log-softmax is taken in f64.

use super::kld::{KlBase, Kld};
use super::{build_commit, command_line, commit, emit_json, machine, unix_time};
use crate::cli::BenchPerplexityArgs;
use crate::error::{CliError, Result};
use kr_engine::{load_model, AttnMeta, LoadedModel, Runner, SeqAttn};
use kr_http::config::Inputs;
use serde_json::json;
use std::time::Instant;

/// Running sums of the scored tokens' negative log-likelihoods.
#[derive(Default)]
struct Nll {
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl Nll {
    fn add(&mut self, logits: &[f32], target: u32) {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum_exp: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
        let v = max + sum_exp.ln() - logits[target as usize] as f64;
        self.sum += v;
        self.sum_sq += v * v;
        self.count += 1;
    }

    fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's "±": the standard error of the mean NLL, times the PPL.
    fn ppl_error(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var > 0.0 && n > 1.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            f64::NAN
        }
    }
}

/// Scores one chunk: evaluates `window` in steps of at most `budget` tokens and adds the NLL of
/// every token after position `ctx / 2` (and its KL divergence from `kl`'s base).
fn score_chunk(
    runner: &mut Runner,
    window: &[u32],
    budget: usize,
    nll: &mut Nll,
    mut kl: Option<&mut (KlBase, Kld)>,
) -> Result<()> {
    let ctx = window.len();
    let first = ctx / 2;
    let block_table: Vec<u32> = (0..ctx.div_ceil(BLOCK) as u32).collect();
    let mut done = 0;
    while done < ctx {
        let n = budget.min(ctx - done);
        let mut meta = AttnMeta::default();
        for p in done..done + n {
            meta.positions.push(p as u32);
            meta.slot_mapping
                .push(block_table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32);
            if (first..ctx - 1).contains(&p) {
                meta.logit_rows.push(p - done);
            }
        }
        meta.seqs.push(SeqAttn {
            q_start: 0,
            q_len: n,
            ctx_len: done + n,
            block_table: block_table.clone(),
        });
        let logits = runner.forward(&window[done..done + n], &meta)?;
        let vocab = logits.len() / meta.logit_rows.len().max(1);
        for (row, &r) in logits.chunks_exact(vocab.max(1)).zip(&meta.logit_rows) {
            nll.add(row, window[done + r + 1]);
            if let Some((base, kld)) = kl.as_deref_mut() {
                kld.add(row, base)?;
            }
        }
        done += n;
    }
    Ok(())
}

const BLOCK: usize = 16;

/// The text's tokens (BOS first where the model adds one) and that BOS; at least two
/// contexts' worth, else a usage error saying how many there are.
fn text_tokens(args: &BenchPerplexityArgs, model: &LoadedModel) -> Result<(Vec<u32>, Option<u32>)> {
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| CliError::Usage(format!("--text {}: {e}", args.text.display())))?;
    let tok = &model.tokenizer;
    let tokens = tok
        .encode(&text, tok.add_bos)
        .map_err(kr_engine::EngineError::from)?;
    if tokens.len() < 2 * args.ctx {
        return Err(CliError::Usage(format!(
            "{} tokenises to {} tokens; a context of {} needs at least {} (two chunks)",
            args.text.display(),
            tokens.len(),
            args.ctx,
            2 * args.ctx
        )));
    }
    Ok((tokens, tok.bos_id.filter(|_| tok.add_bos)))
}

pub fn bench_perplexity(args: BenchPerplexityArgs, inputs: &Inputs) -> Result<()> {
    let ctx = args.ctx;
    if ctx < 16 {
        return Err(CliError::Usage("--ctx must be at least 16 tokens".into()));
    }
    let mut c = crate::settings::resolve(inputs)?.config;
    c.device = c.device.resolve();
    let model = load_model(std::path::Path::new(&c.model))?;
    let (mut tokens, bos) = text_tokens(&args, &model)?;
    let mut chunks = (tokens.len() / ctx).min(args.chunks.unwrap_or(usize::MAX));
    let mut kl = match &args.kl_divergence_base {
        Some(path) => {
            let base = KlBase::open(path, ctx)?;
            base.check(&tokens, model.weights.config.vocab_size)?;
            chunks = chunks.min(base.chunks);
            Some((base, Kld::default()))
        }
        None => None,
    };
    let mut cfg = c.engine_config();
    cfg.max_num_seqs = ctx / 2 + 1;
    cfg.cuda_graphs = false;
    let budget = cfg.max_num_batched_tokens.max(1);
    let runner_cfg = cfg.runner_config(ctx + BLOCK);
    let mut runner = Runner::place(&model.weights, &runner_cfg)?;
    let started = Instant::now();
    let mut nll = Nll::default();
    for i in 0..chunks {
        let window = &mut tokens[i * ctx..(i + 1) * ctx];
        if let Some(b) = bos {
            window[0] = b;
        }
        score_chunk(&mut runner, window, budget, &mut nll, kl.as_mut())?;
        eprint!("[{}]{:.4},", i + 1, nll.ppl());
    }
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {ctx}, {} tokens scored, {secs:.1} s)",
        nll.ppl(),
        nll.ppl_error(),
        chunks,
        nll.count
    );
    if let Some((_, k)) = &kl {
        eprintln!("Against the KL base: {}", k.report());
    }
    let report = json!({
        "benchmark": "perplexity",
        "model": c.model,
        "device": runner.describe(),
        "text": args.text.display().to_string(),
        "ctx": ctx,
        "chunks": chunks,
        "tokens_in_text": tokens.len(),
        "tokens_scored": nll.count,
        "add_bos": bos.is_some(),
        "perplexity": nll.ppl(),
        "perplexity_error": nll.ppl_error(),
        "kl_divergence": kl.as_ref().map(|(_, k)| k.report()),
        "seconds": secs,
        "machine": machine(),
        "commit": commit(),
        "build_commit": build_commit(),
        "command": command_line(),
        "unix_time": unix_time(),
    });
    emit_json(&report, args.out.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let mut nll = Nll::default();
        for t in 0..10 {
            nll.add(&[0.5; 50], t);
        }
        assert!((nll.ppl() - 50.0).abs() < 1e-9, "{}", nll.ppl());
        nll.add(&[0.0, 100.0, 0.0], 1);
        assert!(nll.ppl() < 50.0);
    }
}

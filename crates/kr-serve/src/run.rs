//! `kr-serve run`: one prompt, streamed to stdout; timings to stderr.

use crate::cli::{EngineArgs, RunArgs};
use crate::error::{CliError, Result};
use kr_engine::{
    ChatMessage, EngineConfig, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams,
};
use std::io::Write;
use std::time::Instant;

/// Starts an engine from the shared flags.
pub fn start_engine(args: &EngineArgs) -> Result<EngineHandle> {
    start_engine_with(args, |_| {})
}

/// [`start_engine`] with a last say on the engine config (`serve` sets the running cap and
/// the scheduler policies from its config).
pub fn start_engine_with(
    args: &EngineArgs,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Result<EngineHandle> {
    if let Some(n) = args.threads {
        if n == 0 {
            return Err(CliError::Usage("--threads must be at least 1".into()));
        }
        // Only fails if the pool was already built, which cannot happen before this call.
        let _ = rayon_threads(n);
    }
    let mut cfg = EngineConfig::new(args.model_path());
    cfg.kv_cache_mib = args.kv_cache_mib.unwrap_or(1024);
    cfg.max_model_len = args.max_model_len;
    cfg.device = args.device;
    cfg.dtype = args.dtype;
    cfg.gpu_memory_fraction = args.gpu_memory_fraction;
    cfg.cuda_graphs = !args.no_cuda_graphs;
    cfg.overlap_steps = !args.no_overlap;
    tweak(&mut cfg);
    Ok(kr_engine::start(cfg)?)
}

fn rayon_threads(n: usize) -> std::result::Result<(), String> {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

pub fn run(args: RunArgs) -> Result<()> {
    let t0 = Instant::now();
    let engine = start_engine(&args.engine)?;
    let load = t0.elapsed();
    let prompt = if args.raw || !engine.has_chat_template() {
        Prompt::Text(args.prompt.clone())
    } else {
        Prompt::Chat(vec![ChatMessage::new("user", &args.prompt)])
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ..SamplingParams::default()
    };
    let t1 = Instant::now();
    let mut stream = engine.submit(GenerateRequest { prompt, params })?;
    let mut out = std::io::stdout().lock();
    let mut first: Option<f64> = None;
    while let Some(ev) = stream.next_blocking() {
        match ev {
            Event::Token { text, .. } => {
                first.get_or_insert_with(|| t1.elapsed().as_secs_f64());
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Finished { reason, usage } => {
                let _ = writeln!(out);
                let total = t1.elapsed().as_secs_f64();
                let ttft = first.unwrap_or(total);
                let decode_tps =
                    (usage.completion_tokens.saturating_sub(1)) as f64 / (total - ttft).max(1e-9);
                eprintln!(
                    "[load {:.2}s | prompt {} tokens, TTFT {:.1} ms | {} tokens, {:.1} tokens/s decode | finish: {:?}]",
                    load.as_secs_f64(), usage.prompt_tokens, ttft * 1e3, usage.completion_tokens, decode_tps, reason
                );
                return Ok(());
            }
            Event::Error(e) => return Err(CliError::Generation(e)),
        }
    }
    Err(CliError::Generation(
        "the engine stopped before the request finished".into(),
    ))
}

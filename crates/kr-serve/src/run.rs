//! `kr-serve run`: one prompt, streamed to stdout; timings to stderr.

use crate::cli::RunArgs;
use crate::error::{CliError, Result};
use kr_engine::{ChatMessage, EngineHandle, Event, Prompt, RequestDraft, SamplingParams};
use kr_http::config::{Config, Inputs};
use std::io::Write;
use std::time::Instant;

/// Starts an engine from the resolved config; chat templates render in a child process
/// unless `template_sandbox` is `thread`.
pub fn start_engine(c: &Config) -> Result<EngineHandle> {
    crate::settings::apply_process_settings(c);
    let first = c.model_paths().into_iter().next().unwrap_or_default();
    let (_, path) = crate::pull::resolve_model(&first)?;
    Ok(kr_engine::start(engine_config(c, &path))?)
}

/// The engine configuration of the model at `path` under `c`, with the template sandbox
/// `c` names.
pub fn engine_config(c: &Config, path: &str) -> kr_engine::EngineConfig {
    let mut cfg = c.engine_config_for(path);
    if c.template_sandbox == "process" {
        cfg.template_sandbox = Some(std::sync::Arc::new(crate::template_sandbox::ProcessSandbox));
    }
    cfg
}

pub fn run(args: RunArgs, inputs: &Inputs) -> Result<()> {
    let t0 = Instant::now();
    let eff = crate::settings::resolve(inputs)?;
    let engine = start_engine(&eff.config)?;
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
    // On the terminal --max-tokens is an upper bound: a prompt near the context gets what
    // fits rather than an error.
    let draft = RequestDraft {
        prompt: engine.tokenize_prompt(&prompt)?,
        max_tokens: None,
        params,
        options: Default::default(),
    };
    let mut stream = engine.submit_validated(engine.validate(draft, args.max_tokens)?)?;
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
            Event::Embedding { .. } => break,
        }
    }
    Err(CliError::Generation(
        "the engine stopped before the request finished".into(),
    ))
}

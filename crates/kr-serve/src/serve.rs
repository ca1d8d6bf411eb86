//! `kr-serve serve`: loads the model, then serves the HTTP APIs (kr-server) until SIGINT or
//! SIGTERM, after which it stops accepting, lets in-flight requests finish and exits 0.

use crate::cli::{ConfigArgs, EngineArgs, ServeArgs};
use crate::error::{CliError, Result};
use crate::run::start_engine_with;
use kr_server::config::{self, Effective, Inputs};
use kr_server::ServerConfig;
use std::path::PathBuf;

/// The config inputs of the command line: its flags, the env, the `--config` file.
fn inputs(args: &ServeArgs) -> Inputs {
    let e = &args.engine;
    let flags: [(&str, Option<String>); 13] = [
        ("preset", args.preset.clone()),
        ("host", args.host.clone()),
        ("port", args.port.map(|v| v.to_string())),
        ("model", e.model.as_ref().map(|p| p.display().to_string())),
        ("kv_cache_mib", e.kv_cache_mib.map(|v| v.to_string())),
        ("max_model_len", e.max_model_len.map(|v| v.to_string())),
        ("max_running", args.max_running.map(|v| v.to_string())),
        ("max_queue", args.max_queue.map(|v| v.to_string())),
        ("max_body_bytes", args.max_body_bytes.map(|v| v.to_string())),
        ("max_tokens_cap", args.max_tokens_cap.map(|v| v.to_string())),
        (
            "stream_interval",
            args.stream_interval.map(|v| v.to_string()),
        ),
        (
            "request_timeout",
            args.request_timeout.map(|v| v.to_string()),
        ),
        ("strict", args.strict.map(|v| v.to_string())),
    ];
    Inputs {
        flags: flags
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect(),
        env: config::env_vars(),
        file: args.config.clone(),
    }
}

fn resolve(args: &ServeArgs) -> Result<(Effective, Inputs)> {
    let inputs = inputs(args);
    let eff = config::resolve(&inputs).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok((eff, inputs))
}

/// `kr-serve config`: the effective config and the source of each value.
pub fn print_config(args: ConfigArgs) -> Result<()> {
    let (eff, _) = resolve(&args.serve)?;
    if args.json {
        println!("{:#}", eff.to_json());
    } else {
        print!("{}", eff.to_table());
    }
    Ok(())
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let (eff, inputs) = resolve(&args)?;
    let c = &eff.config;
    let model = if args.engine.random_weights {
        args.engine.model_path()
    } else {
        PathBuf::from(&c.model)
    };
    let engine_args = EngineArgs {
        model: Some(model),
        kv_cache_mib: Some(c.kv_cache_mib),
        max_model_len: (c.max_model_len > 0).then_some(c.max_model_len),
        ..args.engine.clone()
    };
    // The engine runs as many sequences as the server admits to run (max_running; also
    // the ceiling of the latency controller) under the configured scheduler policies.
    let engine = start_engine_with(&engine_args, |e| {
        e.max_num_seqs = c.max_running;
        e.policy = c.policy();
    })?;
    let cfg = ServerConfig {
        api_keys: api_keys(&args)?,
        admin_key: args
            .admin_key
            .clone()
            .or_else(|| std::env::var("KR_SERVE_ADMIN_KEY").ok())
            .filter(|k| !k.trim().is_empty()),
        effective: Some(eff.clone()),
        inputs: Some(inputs),
        ..ServerConfig::from_config(c)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Generation(format!("cannot start the async runtime: {e}")))?;
    let addr = format!("{}:{}", c.host, c.port);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))?;
        eprintln!(
            "kr-serve ready: serving {} on http://{local} (OpenAI /v1, Ollama /api)",
            engine.info().name
        );
        kr_server::serve(listener, engine.clone(), cfg, kr_server::shutdown_signal())
            .await
            .map_err(|e| CliError::Generation(format!("the HTTP server failed: {e}")))
    });
    engine.shutdown();
    eprintln!("kr-serve stopped");
    result
}

/// Keys from `--api-key`, `--api-key-file` and env `KR_SERVE_API_KEY`; none means no auth.
fn api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let mut keys = args.api_key.clone();
    keys.extend(std::env::var("KR_SERVE_API_KEY").ok());
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read --api-key-file {}: {e}",
                path.display()
            ))
        })?;
        let lines = text.lines().map(str::trim);
        keys.extend(
            lines
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    keys.retain(|k| !k.trim().is_empty());
    Ok(keys)
}

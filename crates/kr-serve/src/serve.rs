//! `kr-serve serve`: loads the model, then serves the HTTP APIs (kr-http) until SIGINT or
//! SIGTERM, after which it stops accepting, lets in-flight requests finish until
//! `shutdown_timeout`, cancels the rest (freeing their KV blocks) and exits 0.

use crate::cli::{ConfigArgs, ServeArgs};
use crate::error::{CliError, Result};
use crate::run::start_engine;
use crate::settings::resolve;
use kr_http::config::{Config, Inputs};
use kr_http::ServerConfig;

/// `kr-serve config`: the effective config and the source of each value.
pub fn print_config(args: ConfigArgs, inputs: &Inputs) -> Result<()> {
    let eff = resolve(inputs)?;
    let switches = kr_engine::tuning_switches();
    if args.json {
        let mut out = eff.to_json();
        out["gpu_tuning_env"] = serde_json::json!(switches);
        println!("{out:#}");
        return Ok(());
    }
    print!("{}", eff.to_table());
    println!(
        "\nGPU tuning switches (environment; read by the CUDA backend, see docs/gpu-tuning.md):"
    );
    for s in switches {
        let (value, source) = match &s.value {
            Some(v) => (v.as_str(), "env"),
            None => (s.default, "default"),
        };
        println!("{:<29} {:<36} {source:<8} {}", s.name, value, s.allowed);
    }
    Ok(())
}

pub fn serve(args: ServeArgs, inputs: Inputs) -> Result<()> {
    let eff = resolve(&inputs)?;
    let c = &eff.config;
    let api_keys = api_keys(&args, c)?;
    let engine = start_engine(c)?;
    let cfg = ServerConfig {
        api_keys,
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
        kr_http::serve(listener, engine.clone(), cfg, kr_http::shutdown_signal())
            .await
            .map_err(|e| CliError::Generation(format!("the HTTP server failed: {e}")))
    });
    // Cancelled requests' aborts reach the engine before its stop, so their blocks are
    // free when it reports.
    match engine.shutdown_and_wait(std::time::Duration::from_secs(10)) {
        Some(blocks) => eprintln!("kr-serve stopped (KV blocks in use: {blocks})"),
        None => eprintln!("kr-serve stopped (the engine did not stop within 10 s)"),
    }
    drop(rt);
    result
}

/// Keys from `--api-key`, env `KR_SERVE_API_KEY` and the `api_key_file` key; none means
/// no auth.
fn api_keys(args: &ServeArgs, c: &Config) -> Result<Vec<String>> {
    let mut keys = args.api_key.clone();
    keys.extend(std::env::var("KR_SERVE_API_KEY").ok());
    if !c.api_key_file.is_empty() {
        let path = &c.api_key_file;
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read api_key_file {path}: {e}")))?;
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

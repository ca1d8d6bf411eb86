//! `kr-serve serve`: loads the model, then serves the HTTP APIs (kr-server) until SIGINT or
//! SIGTERM, after which it stops accepting, lets in-flight requests finish and exits 0.

use crate::cli::ServeArgs;
use crate::error::{CliError, Result};
use crate::run::start_engine;
use kr_server::ServerConfig;

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.max_running == 0 {
        return Err(CliError::Usage("--max-running must be at least 1".into()));
    }
    let engine = start_engine(&args.engine)?;
    let api_keys = api_keys(&args)?;
    let cfg = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        max_running: args.max_running,
        max_queue: args.max_queue,
        max_tokens_cap: args.max_tokens_cap,
        api_keys,
        strict: args.strict,
        stream_interval: args.stream_interval.max(1),
        request_timeout: request_timeout(args.request_timeout)?,
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Generation(format!("cannot start the async runtime: {e}")))?;
    let addr = format!("{}:{}", args.host, args.port);
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

fn request_timeout(secs: f64) -> Result<Option<std::time::Duration>> {
    if secs == 0.0 {
        return Ok(None);
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| {
            CliError::Usage(format!(
                "--request-timeout {secs}: allowed 0 or more seconds"
            ))
        })
}

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
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("KR_SERVE_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let cfg = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        max_running: args.max_running,
        max_queue: args.max_queue,
        max_tokens_cap: args.max_tokens_cap,
        api_key,
        strict: args.strict,
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

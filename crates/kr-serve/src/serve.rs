//! `kr-serve serve`: sets up the models (`model`, several comma-separated, and those in
//! `models_dir`) under one memory budget, loads those `preload` names, then serves the HTTP
//! APIs (kr-http) until SIGINT or SIGTERM, after which it stops accepting, lets in-flight
//! requests finish until `shutdown_timeout`, cancels the rest (freeing their KV blocks) and
//! exits 0. Other models load on first use (see `kr_engine::pool`).

use crate::cli::{ConfigArgs, ServeArgs};
use crate::error::{CliError, Result};
use crate::settings::resolve;
use kr_engine::{KeepAlive, ModelPool, ModelSpec};
use kr_http::config::{Config, Inputs};
use kr_http::ServerConfig;
use std::path::Path;

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
    crate::settings::apply_process_settings(c);
    // With a `models` list, the built-in default model is not served unless asked for.
    let default_model = eff.sources.get("model") == Some(&kr_http::config::Source::Default);
    let pool = model_pool(c, default_model && !c.models.is_empty())?;
    preload(&pool, &c.preload)?;
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
            pool.names()
        );
        kr_http::serve_models(listener, pool.clone(), cfg, kr_http::shutdown_signal())
            .await
            .map_err(|e| CliError::Generation(format!("the HTTP server failed: {e}")))
    });
    // Cancelled requests' aborts reach the engines before their stop, so their blocks are
    // free when they report.
    let mut in_use = 0;
    for (name, engine) in pool.loaded() {
        match engine.shutdown_and_wait(std::time::Duration::from_secs(10)) {
            Some(blocks) => in_use += blocks,
            None => eprintln!("kr-serve: the engine of {name} did not stop within 10 s"),
        }
    }
    eprintln!("kr-serve stopped (KV blocks in use: {in_use})");
    drop(rt);
    result
}

/// The models of `c`: each path of `model` (unless `skip_model`), each model in
/// `models_dir`, then the `models` list, under the memory budget and keep-alive of `c`.
fn model_pool(c: &Config, skip_model: bool) -> Result<ModelPool> {
    let mut paths = match skip_model {
        true => Vec::new(),
        false => c.model_paths(),
    };
    if !c.models_dir.is_empty() {
        paths.extend(models_in(Path::new(&c.models_dir))?);
    }
    let mut specs = Vec::with_capacity(paths.len());
    for p in &paths {
        let (name, path) = crate::pull::resolve_model(p)?;
        specs.push(ModelSpec::new(name, crate::run::engine_config(c, &path)));
    }
    for entry in &c.models {
        let (name, path) = crate::pull::resolve_model(&entry.model)?;
        let mut spec = ModelSpec::new(
            entry.name.clone().unwrap_or(name),
            crate::run::engine_config(c, &path),
        );
        spec.aliases = entry.aliases.clone();
        spec.sampling = entry.options;
        spec.keep_alive = match &entry.keep_alive {
            Some(k) => Some(
                KeepAlive::parse(&serde_json::Value::String(k.clone())).map_err(CliError::Usage)?,
            ),
            None => None,
        };
        specs.push(spec);
    }
    let keep_alive = KeepAlive::parse(&serde_json::Value::String(c.keep_alive.clone()))
        .map_err(CliError::Usage)?;
    let budget = match c.memory_budget_mib {
        0 => kr_engine::pool::default_memory_budget(),
        mib => (mib as u64) << 20,
    };
    Ok(ModelPool::new(specs, budget, keep_alive)?)
}

/// The GGUF files and Hugging Face model directories (with a config.json) in `dir`, by name.
fn models_in(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("cannot read models_dir {}: {e}", dir.display())))?;
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
                || p.join("config.json").is_file()
        })
        .map(|p| p.display().to_string())
        .collect();
    found.sort();
    Ok(found)
}

/// Loads the models `preload` names (`first`, `all` or `none`) before the server listens.
fn preload(pool: &ModelPool, which: &str) -> Result<()> {
    let names: Vec<String> = pool.specs().iter().map(|s| s.name.clone()).collect();
    let take = match which {
        "all" => names.len(),
        "none" => 0,
        _ => 1,
    };
    for name in names.iter().take(take) {
        drop(pool.acquire(name, None)?);
    }
    Ok(())
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

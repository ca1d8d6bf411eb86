//! The one path from the command line to typed configs: the flags named like config keys
//! (read generically from clap's matches, as typed), env `KR_SERVE_<KEY>` and the
//! `--config` file are resolved once by kr-http's key table into a [`Config`]; the
//! engine's and the server's typed configs are derived from that, never from the flags.

use crate::error::{CliError, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use kr_http::config::{self, Config, Effective, Inputs};
use std::path::PathBuf;

/// The matches of the innermost subcommand (`bench engine` → the `engine` matches).
pub fn leaf(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

/// Switches whose flag turns a boolean key off.
const NEGATED: [(&str, &str); 2] = [
    ("no_cuda_graphs", "cuda_graphs"),
    ("no_overlap", "overlap_steps"),
];

/// The config inputs of a command: every flag given on the command line whose name is a
/// config key (or `preset`), the negated switches, `--random-weights --arch A` as the
/// model `random:A`; the environment; the `--config` file when the command has one.
pub fn inputs(m: &ArgMatches) -> Inputs {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let mut flags = Vec::new();
    for id in m.ids().map(|id| id.as_str()) {
        if !given(id) || (id != "preset" && config::key(id).is_none()) {
            continue;
        }
        // A repeated flag (`--model a --model b`) gives its values joined by commas.
        if let Ok(Some(raw)) = m.try_get_raw(id) {
            let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
            if !values.is_empty() {
                flags.push((id.to_string(), values.join(",")));
            }
        }
    }
    for (flag, key) in NEGATED {
        if m.try_get_one::<bool>(flag).ok().flatten() == Some(&true) {
            flags.push((key.to_string(), "false".to_string()));
        }
    }
    let random = m.try_get_one::<bool>("random_weights").ok().flatten() == Some(&true);
    if let (true, Ok(Some(arch))) = (random, m.try_get_one::<String>("arch")) {
        flags.push((
            "model".into(),
            format!("{}{arch}", kr_engine::RANDOM_PREFIX),
        ));
    }
    Inputs {
        flags,
        env: config::env_vars(),
        file: m.try_get_one::<PathBuf>("config").ok().flatten().cloned(),
    }
}

/// Resolves `inputs` (flag > env > file > preset > default).
pub fn resolve(inputs: &Inputs) -> Result<Effective> {
    config::resolve(inputs).map_err(|e| CliError::Usage(e.to_string()))
}

/// Applies the process-wide settings of `c` that must precede the engine (the CPU thread
/// pool reads `RAYON_NUM_THREADS` when it first starts).
pub fn apply_process_settings(c: &Config) {
    if c.threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", c.threads.to_string());
    }
}

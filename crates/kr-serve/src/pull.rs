//! `kr-serve pull`, `models list` and `models delete`: models from the Hugging Face Hub
//! (kr-hub), and `--model ORG/REPO[:FILE]` resolved to the pulled copy (no network when
//! serving: a model that has not been pulled is an error saying so).

use crate::error::{CliError, Result};
use kr_hub::{Hub, ModelRef, PullEvent};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Downloads `spec` (ORG/REPO[:FILE]) with a progress bar on a terminal, lines otherwise.
pub fn pull(spec: &str) -> Result<PathBuf> {
    let m = ModelRef::parse(spec)
        .ok_or_else(|| CliError::Usage(format!("`{spec}` is not ORG/REPO or ORG/REPO:FILE")))?;
    let hub = Hub::from_env()?;
    let bar = indicatif::ProgressBar::new(0);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_tenth = None;
    let mut on = |ev: PullEvent| match ev {
        PullEvent::Manifest { files } => eprintln!("pulling {}: {}", m.repo, files.join(", ")),
        PullEvent::Progress {
            file,
            completed,
            total,
        } => {
            bar.set_message(file.clone());
            bar.set_length(total);
            bar.set_position(completed);
            let tenth = (completed * 10).checked_div(total).unwrap_or(10);
            if bar.is_hidden() && last_tenth != Some((file.clone(), tenth)) {
                eprintln!(
                    "downloading {file}: {}% ({completed}/{total} bytes)",
                    tenth * 10
                );
                last_tenth = Some((file, tenth));
            }
        }
        PullEvent::Verifying { file, sha256 } => match sha256 {
            Some(d) => eprintln!("verifying {file}: sha256 {d}"),
            None => eprintln!("{file}: the Hub gave no sha256 to check"),
        },
    };
    let path = hub.pull(&m, &mut on)?;
    bar.finish_and_clear();
    eprintln!("pulled {} to {}", m.repo, path.display());
    println!("{}", path.display());
    Ok(path)
}

/// `models list`: the pulled repositories and their size.
pub fn list() -> Result<()> {
    let hub = Hub::from_env()?;
    for (repo, bytes) in hub.list() {
        println!("{repo:<60} {:>10.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// `models delete ORG/REPO`.
pub fn delete(spec: &str) -> Result<()> {
    let m = ModelRef::parse(spec)
        .ok_or_else(|| CliError::Usage(format!("`{spec}` is not ORG/REPO")))?;
    match Hub::from_env()?.delete(&m)? {
        true => eprintln!("deleted {}", m.repo),
        false => eprintln!("{} is not in the cache", m.repo),
    }
    Ok(())
}

/// A `--model` value as a local path: a path that exists stays; ORG/REPO[:FILE] is the
/// pulled copy (an error naming `kr-serve pull` when there is none); the served name
/// comes with it.
pub fn resolve_model(spec: &str) -> Result<(String, String)> {
    let local = || (served_name(spec), spec.to_string());
    if spec.starts_with("builtin:") || spec.starts_with(kr_engine::RANDOM_PREFIX) {
        return Ok(local());
    }
    let Some(m) = ModelRef::parse(spec).filter(|_| !Path::new(spec).exists()) else {
        return Ok(local());
    };
    match Hub::from_env()?.cached(&m) {
        Some(path) => Ok((m.served_name(), path.display().to_string())),
        None => Err(CliError::Usage(format!(
            "model {spec} has not been pulled; run `kr-serve pull {spec}` first (no download happens while serving)"
        ))),
    }
}

/// The name a local model is served under (see [`kr_engine::served_name`]).
pub fn served_name(path: &str) -> String {
    kr_engine::served_name(path)
}

//! kr-hub: models from the Hugging Face Hub, through the `hf-hub` client.
//!
//! [`Hub::pull`] downloads a GGUF file (`ORG/REPO:FILE`, or the repository's one GGUF, its
//! Q4_K_M when it has several) or a Hugging Face model directory (config, tokenizer,
//! safetensors) into the standard Hugging Face cache (`$HF_HOME/hub`), from `$HF_ENDPOINT`
//! (default huggingface.co) with `$HF_TOKEN`. Downloads resume: a file cut off part way
//! keeps what arrived, and the next pull asks only for the rest. Every file whose ETag is a
//! SHA-256 (the Hub's large files) is checked against it once complete; a mismatch deletes
//! the file and is an error naming both digests.
//!
//! Invariant: a file in the cache's snapshot is complete and, where the Hub gave a digest,
//! verified; nothing else is left there.

use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The one error type of kr-hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{0}` is not a Hub model: use ORG/REPO or ORG/REPO:FILE")]
    Spec(String),
    #[error("{repo}: {message}")]
    Repo { repo: String, message: String },
    #[error("downloading {file} from {repo} failed: {message} (run the pull again to resume)")]
    Download {
        repo: String,
        file: String,
        message: String,
    },
    #[error("{file} from {repo}: checksum mismatch: the Hub says sha256 {expected}, the download has {actual}; the file was deleted")]
    Checksum {
        repo: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, HubError>;

/// `ORG/REPO` with an optional `:FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub repo: String,
    pub file: Option<String>,
}

impl ModelRef {
    /// Parses `ORG/REPO[:FILE]`; `None` for anything else (a local path, say).
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, file) = match spec.split_once(':') {
            Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let mut parts = repo.split('/');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
        };
        let valid = ok(parts.next()) && ok(parts.next()) && parts.next().is_none();
        valid.then(|| Self {
            repo: repo.to_string(),
            file,
        })
    }

    /// The name a pulled model is served under: the file's stem, or the repository's name.
    pub fn served_name(&self) -> String {
        match &self.file {
            Some(f) => Path::new(f)
                .file_stem()
                .map_or_else(|| f.clone(), |s| s.to_string_lossy().into_owned()),
            None => self
                .repo
                .rsplit('/')
                .next()
                .unwrap_or(&self.repo)
                .to_string(),
        }
    }
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The files to fetch are known.
    Manifest { files: Vec<String> },
    /// Bytes of `file` on disk so far, of `total`.
    Progress {
        file: String,
        completed: u64,
        total: u64,
    },
    /// `file` is complete and its digest is being checked.
    Verifying {
        file: String,
        sha256: Option<String>,
    },
}

/// The Hub client and the local cache.
pub struct Hub {
    api: Api,
    cache: Cache,
}

/// Files of a Hugging Face model directory that a model needs.
const DIR_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors.index.json",
];

impl Hub {
    /// The Hub of `$HF_ENDPOINT` with the token of `$HF_TOKEN` (else `$HF_HOME/token`), the
    /// cache under `$HF_HOME/hub` (default `~/.cache/huggingface/hub`).
    pub fn from_env() -> Result<Self> {
        let cache = Cache::from_env();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| cache.token());
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .with_token(token)
            .with_retries(0)
            .build()
            .map_err(|e| HubError::Repo {
                repo: String::new(),
                message: format!("cannot start the Hub client: {e}"),
            })?;
        Ok(Self { api, cache })
    }

    fn repo(&self, m: &ModelRef) -> ApiRepo {
        self.api.repo(Repo::new(m.repo.clone(), RepoType::Model))
    }

    /// Downloads `m` (see the module header) and returns the GGUF file or the model
    /// directory in the cache.
    pub fn pull(&self, m: &ModelRef, on: &mut dyn FnMut(PullEvent)) -> Result<PathBuf> {
        let files = self.files(m)?;
        on(PullEvent::Manifest {
            files: files.clone(),
        });
        let mut last = PathBuf::new();
        for file in &files {
            last = self.fetch(m, file, on)?;
        }
        match &m.file {
            Some(_) => Ok(last),
            None if files.iter().all(|f| f.ends_with(".gguf")) => Ok(last),
            None => Ok(last.parent().map(Path::to_path_buf).unwrap_or(last)),
        }
    }

    /// The files `m` needs, from the repository's listing when no file is named.
    fn files(&self, m: &ModelRef) -> Result<Vec<String>> {
        if let Some(f) = &m.file {
            return Ok(vec![f.clone()]);
        }
        let info = self.repo(m).info().map_err(|e| HubError::Repo {
            repo: m.repo.clone(),
            message: format!("cannot list the repository: {e}"),
        })?;
        let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
        match ggufs.len() {
            1 => return Ok(vec![ggufs[0].clone()]),
            0 => {}
            _ => {
                let q4km = ggufs
                    .iter()
                    .find(|n| n.to_ascii_lowercase().contains("q4_k_m"));
                return match q4km {
                    Some(f) => Ok(vec![(*f).clone()]),
                    None => Err(HubError::Repo {
                        repo: m.repo.clone(),
                        message: format!(
                            "several GGUF files; name one as {}:FILE ({})",
                            m.repo,
                            ggufs
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }),
                };
            }
        }
        if !names.iter().any(|n| n == "config.json") {
            return Err(HubError::Repo {
                repo: m.repo.clone(),
                message: "no GGUF file and no config.json: not a model kr-serve can load".into(),
            });
        }
        let wanted = |n: &String| DIR_FILES.contains(&n.as_str()) || n.ends_with(".safetensors");
        Ok(names.into_iter().filter(wanted).collect())
    }

    /// Downloads (or resumes) one file and verifies it.
    fn fetch(&self, m: &ModelRef, file: &str, on: &mut dyn FnMut(PullEvent)) -> Result<PathBuf> {
        let progress = Reporter {
            file: file.to_string(),
            total: 0,
            done: 0,
            on: &mut *on,
        };
        let path = self
            .repo(m)
            .download_with_progress(file, progress)
            .map_err(|e| HubError::Download {
                repo: m.repo.clone(),
                file: file.to_string(),
                message: e.to_string(),
            })?;
        self.verify(m, file, &path, on)?;
        Ok(path)
    }

    /// Checks a downloaded file against the digest its ETag carries (the blob's name).
    fn verify(
        &self,
        m: &ModelRef,
        file: &str,
        path: &Path,
        on: &mut dyn FnMut(PullEvent),
    ) -> Result<()> {
        let io = |source| HubError::Io {
            path: path.to_path_buf(),
            source,
        };
        let blob = std::fs::canonicalize(path).map_err(io)?;
        let etag = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_sha = etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit());
        on(PullEvent::Verifying {
            file: file.to_string(),
            sha256: is_sha.then(|| etag.clone()),
        });
        if !is_sha {
            return Ok(());
        }
        let actual = sha256_of(&blob).map_err(io)?;
        if actual.eq_ignore_ascii_case(&etag) {
            return Ok(());
        }
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(&blob);
        Err(HubError::Checksum {
            repo: m.repo.clone(),
            file: file.to_string(),
            expected: etag,
            actual,
        })
    }

    /// The local copy of `m` if it has been pulled (no network): the GGUF file, or the
    /// directory holding config.json.
    pub fn cached(&self, m: &ModelRef) -> Option<PathBuf> {
        let repo = self.cache.repo(Repo::new(m.repo.clone(), RepoType::Model));
        match &m.file {
            Some(f) => repo.get(f),
            None => {
                if let Some(c) = repo.get("config.json") {
                    return c.parent().map(Path::to_path_buf);
                }
                let snapshots = self.repo_dir(m).join("snapshots");
                let dir = std::fs::read_dir(snapshots).ok()?.flatten().next()?.path();
                let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                    .collect();
                ggufs.sort();
                ggufs.into_iter().next()
            }
        }
    }

    fn repo_dir(&self, m: &ModelRef) -> PathBuf {
        self.cache
            .path()
            .join(format!("models--{}", m.repo.replace('/', "--")))
    }

    /// Every model repository in the cache with its size on disk, by name.
    pub fn list(&self) -> Vec<(String, u64)> {
        let Ok(entries) = std::fs::read_dir(self.cache.path()) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
                Some((repo, dir_bytes(&e.path().join("blobs"))))
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes `m`'s repository from the cache; `false` when it was not there.
    pub fn delete(&self, m: &ModelRef) -> Result<bool> {
        let dir = self.repo_dir(m);
        if !dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir).map_err(|source| HubError::Io { path: dir, source })?;
        Ok(true)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// hf-hub's progress callbacks as [`PullEvent::Progress`] (at most one per MiB).
struct Reporter<'a> {
    file: String,
    total: u64,
    done: u64,
    on: &'a mut dyn FnMut(PullEvent),
}

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
    }

    fn update(&mut self, size: usize) {
        let before = self.done >> 20;
        self.done += size as u64;
        if self.done >> 20 != before || self.done == self.total {
            (self.on)(PullEvent::Progress {
                file: self.file.clone(),
                completed: self.done,
                total: self.total,
            });
        }
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        let m = ModelRef::parse("Qwen/Qwen3-0.6B-GGUF:Qwen3-0.6B-Q8_0.gguf").unwrap();
        assert_eq!(m.repo, "Qwen/Qwen3-0.6B-GGUF");
        assert_eq!(m.served_name(), "Qwen3-0.6B-Q8_0");
        assert_eq!(ModelRef::parse("org/repo").unwrap().served_name(), "repo");
        for not in [
            "./model.gguf",
            "/abs/x.gguf",
            "model.gguf",
            "a/b/c",
            "../x",
            "org/",
            "org/repo:",
        ] {
            assert!(ModelRef::parse(not).is_none(), "{not}");
        }
    }
}

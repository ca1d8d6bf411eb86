//! Loading a model's weights, tokenizer and chat template: GGUF files, Hugging Face
//! directories (config.json + safetensors), llama2.c checkpoints (`.bin`, tokenizer beside
//! it), the built-in stories260K, and random weights of a published shape. Placing the
//! weights on a device is the runner's job (`runner/`).

use crate::engine::embed::Pooling;
use crate::error::{EngineError, Result};
use kr_model::gguf::GgufFile;
use kr_model::gguf_model::weights_from_gguf;
use kr_model::hf;
use kr_model::llama2c;
use kr_model::quant::GgmlType;
use kr_model::random::Storage;
use kr_model::{ChatTemplate, ModelConfig, ModelError, ModelWeights, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything the engine needs about one loaded model.
pub struct LoadedModel {
    pub path: PathBuf,
    /// The weights as loaded (memory-mapped or shared, so keeping them costs no copy); the
    /// runner places them on its device.
    pub weights: ModelWeights,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    pub weight_bytes: usize,
    /// How embedding requests pool the hidden states (the model's own setting, else the
    /// last token's state).
    pub pooling: Pooling,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }
}

/// The model path that selects the model built into the binary: Karpathy's stories260K
/// (llama2.c format, MIT, 1 MiB; `assets/stories260K/`).
pub const BUILTIN_MODEL: &str = "builtin:stories260K";
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../assets/stories260K/stories260K.bin");
const BUILTIN_TOKENIZER: &[u8] = include_bytes!("../assets/stories260K/tok512.bin");

/// Opens a model: [`BUILTIN_MODEL`], a Hugging Face directory (with `config.json`), a GGUF
/// file (`.gguf`) or a llama2.c checkpoint (`.bin`).
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    if path == Path::new(BUILTIN_MODEL) {
        return load_builtin(path);
    }
    if let Some(arch) = path.to_str().and_then(|p| p.strip_prefix(RANDOM_PREFIX)) {
        return load_random(path, arch);
    }
    if path.is_dir() {
        return load_hf(path);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("bin") => load_llama2c(path),
        Some("gguf") => load_gguf(path),
        _ if !path.exists() => load_gguf(path),
        _ => Err(EngineError::UnsupportedFormat {
            path: path.display().to_string(),
        }),
    }
}

fn load_gguf(path: &Path) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let weights = weights_from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let token_str = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let chat_template = match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        Some(src) => Some(Arc::new(ChatTemplate::new(
            src,
            &token_str(tokenizer.bos_id),
            &token_str(tokenizer.eos_ids.first().copied()),
        )?)),
        None => None,
    };
    let mut model = assemble(path, &weights, tokenizer, chat_template);
    model.pooling = gguf_pooling(&file);
    Ok(model)
}

/// GGUF's `{arch}.pooling_type` (llama.cpp: 1 mean, 2 cls, 3 last; none or absent: last).
fn gguf_pooling(file: &GgufFile) -> Pooling {
    let arch = file.get_str("general.architecture").unwrap_or("llama");
    match file
        .get(&format!("{arch}.pooling_type"))
        .and_then(|v| v.as_u64())
    {
        Some(1) => Pooling::Mean,
        Some(2) => Pooling::First,
        _ => Pooling::Last,
    }
}

/// The pooling of a sentence-transformers directory (`modules.json` naming a Pooling module,
/// else `1_Pooling/config.json`); last-token when it has none or one kr-serve lacks (logged).
fn hf_pooling(dir: &Path) -> Pooling {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let module = read(dir.join("modules.json"))
        .and_then(|m| {
            m.as_array()?.iter().find_map(|e| {
                let is_pooling = e["type"].as_str()?.ends_with(".Pooling");
                is_pooling.then(|| e["path"].as_str().map(str::to_string))?
            })
        })
        .unwrap_or_else(|| "1_Pooling".into());
    let Some(cfg) = read(dir.join(&module).join("config.json")) else {
        return Pooling::Last;
    };
    let on = |k: &str| cfg[k].as_bool() == Some(true);
    match () {
        _ if on("pooling_mode_lasttoken") => Pooling::Last,
        _ if on("pooling_mode_mean_tokens") => Pooling::Mean,
        _ if on("pooling_mode_cls_token") => Pooling::First,
        _ => {
            tracing::warn!(
                "{}: a pooling mode kr-serve lacks (it pools last, mean or cls); using the last token",
                dir.join(&module).join("config.json").display()
            );
            Pooling::Last
        }
    }
}

/// A Hugging Face model directory.
fn load_hf(dir: &Path) -> Result<LoadedModel> {
    if !hf::is_hf_dir(dir) {
        return Err(ModelError::Io {
            path: dir.join("config.json"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "a model directory needs a Hugging Face config.json",
            ),
        }
        .into());
    }
    let m = hf::load_hf_dir(dir)?;
    let template = m.chat_template.map(Arc::new);
    let mut model = assemble(dir, &m.weights, m.tokenizer, template);
    model.pooling = hf_pooling(dir);
    Ok(model)
}

/// A llama2.c checkpoint; its tokenizer is `tok{vocab}.bin` or `tokenizer.bin` beside it.
fn load_llama2c(path: &Path) -> Result<LoadedModel> {
    let weights = llama2c::load_llama2c(path)?;
    let tokenizer = llama2c_tokenizer(path, weights.config.vocab_size)?;
    Ok(assemble(path, &weights, tokenizer, None))
}

/// The tokenizer llama2.c would use for the checkpoint at `path`.
pub(crate) fn llama2c_tokenizer(path: &Path, vocab: usize) -> Result<Tokenizer> {
    let tok_path = llama2c::find_tokenizer(path, vocab).ok_or_else(|| {
        ModelError::Tokenizer(format!(
            "{}: no llama2.c tokenizer beside it (looked for tok{vocab}.bin and tokenizer.bin)",
            path.display()
        ))
    })?;
    let bytes = std::fs::read(&tok_path).map_err(|source| ModelError::Io {
        path: tok_path.clone(),
        source,
    })?;
    Ok(llama2c::tokenizer_from_llama2c(&tok_path, &bytes, vocab)?)
}

/// Weights and tokenizer of the built-in model.
pub(crate) fn builtin_parts() -> Result<(ModelWeights, Tokenizer)> {
    let path = Path::new(BUILTIN_MODEL);
    let weights = llama2c::weights_from_llama2c(path, BUILTIN_WEIGHTS)?;
    let tokenizer = llama2c::tokenizer_from_llama2c(
        &path.join("tok512.bin"),
        BUILTIN_TOKENIZER,
        weights.config.vocab_size,
    )?;
    Ok((weights, tokenizer))
}

fn load_builtin(path: &Path) -> Result<LoadedModel> {
    let (weights, tokenizer) = builtin_parts()?;
    Ok(assemble(path, &weights, tokenizer, None))
}

/// Model path prefix of random weights of a published shape: `random:llama-3.1-8b`, with an
/// optional storage after a colon: `random:llama-3.1-8b:q4_k_m` (see [`random_weights`]).
pub const RANDOM_PREFIX: &str = "random:";

/// The name a model is served under when none is configured: `builtin:…` and `random:…`
/// whole, a model directory by its name (`Llama-3.2-1B-Instruct`), a file by its name
/// without the extension (`SmolLM2-135M-Instruct.Q4_1`).
pub fn served_name(path: &str) -> String {
    let p = Path::new(path);
    if path.starts_with("builtin:") || path.starts_with(RANDOM_PREFIX) {
        return path.to_string();
    }
    let part = match p.is_dir() {
        true => p.file_name(),
        false => p.file_stem(),
    };
    part.map_or_else(|| path.to_string(), |s| s.to_string_lossy().into_owned())
}

/// Random weights of `arch`'s shape (bf16 unless `arch` names a storage) with that family's
/// tokenizer from ../shared/models (or `$KR_TOKENIZER`, a tokenizer.json).
fn load_random(path: &Path, arch: &str) -> Result<LoadedModel> {
    let (config, storage) = random_spec(arch, false)?;
    let family = if arch.starts_with("llama") {
        "tokenizer-llama3"
    } else {
        "tokenizer-qwen3"
    };
    let tok_path = std::env::var_os("KR_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("../shared/models")
                .join(family)
                .join("tokenizer.json")
        });
    let tokenizer = Tokenizer::from_tokenizer_json(&tok_path)?;
    let weights = kr_model::random::random_weights_stored(&config, storage, 0);
    Ok(assemble(path, &weights, tokenizer, None))
}

/// The published shape called `arch` (see `kr_model::random::ARCHES`).
fn arch_config(arch: &str) -> Result<ModelConfig> {
    kr_model::random::arch_config(arch).ok_or_else(|| {
        EngineError::Config(format!(
            "unknown --arch '{arch}'; known: {}",
            kr_model::random::ARCHES.join(", ")
        ))
    })
}

/// Seeded random weights of `arch`'s shape without a tokenizer: what benchmarks that feed
/// token ids need. `arch` is a shape, optionally followed by `:STORAGE` (`q4_k_m`, `q8_0`, any
/// GGUF type name); without one the matrices are bf16, or f32 with `f32`.
pub fn random_weights(arch: &str, f32: bool, seed: u64) -> Result<ModelWeights> {
    let (config, storage) = random_spec(arch, f32)?;
    Ok(kr_model::random::random_weights_stored(
        &config, storage, seed,
    ))
}

/// The shape and storage `arch` names (`SHAPE` or `SHAPE:STORAGE`).
fn random_spec(arch: &str, f32: bool) -> Result<(ModelConfig, Storage)> {
    let (shape, storage) = match arch.split_once(':') {
        Some((shape, name)) => {
            let storage = Storage::parse(name).ok_or_else(|| {
                let types: Vec<&str> = GgmlType::ALL
                    .into_iter()
                    .filter(|t| t.is_quantized())
                    .map(GgmlType::name)
                    .collect();
                EngineError::Config(format!(
                    "unknown weight storage '{name}' in --arch {arch}; known: q4_k_m, f32, \
                     bf16 or a quantised GGUF type ({})",
                    types.join(", ")
                ))
            })?;
            (shape, storage)
        }
        None if f32 => (arch, Storage::Uniform(GgmlType::F32)),
        None => (arch, Storage::Uniform(GgmlType::BF16)),
    };
    Ok((arch_config(shape)?, storage))
}

fn assemble(
    path: &Path,
    weights: &ModelWeights,
    tokenizer: Tokenizer,
    chat_template: Option<Arc<ChatTemplate>>,
) -> LoadedModel {
    LoadedModel {
        path: path.to_path_buf(),
        weight_bytes: weights.weight_bytes(),
        weights: weights.clone(),
        tokenizer: Arc::new(tokenizer),
        chat_template,
        pooling: Pooling::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::served_name;

    #[test]
    fn served_names_keep_a_directory_whole_and_drop_a_file_extension() {
        let dir =
            std::env::temp_dir().join(format!("kr-names-{}/Qwen2.5-0.5B", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(served_name(&dir.to_string_lossy()), "Qwen2.5-0.5B");
        assert_eq!(
            served_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(served_name("random:llama-3.1-8b"), "random:llama-3.1-8b");
        assert_eq!(served_name("builtin:stories260k"), "builtin:stories260k");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}

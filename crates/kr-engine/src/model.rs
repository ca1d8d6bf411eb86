//! Loading a model file into a ready-to-run decoder, tokenizer and chat template.

use crate::error::{EngineError, Result};
use kr_cpu::CpuBackend;
use kr_model::gguf::GgufFile;
use kr_model::gguf_model::weights_from_gguf;
use kr_model::{ChatTemplate, Decoder, ModelConfig, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything the engine needs about one loaded model.
pub struct LoadedModel {
    pub path: PathBuf,
    pub decoder: Decoder<CpuBackend>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    pub weight_bytes: usize,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        &self.decoder.config
    }
}

/// Opens a model file. GGUF is the format supported so far.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf && path.exists() {
        return Err(EngineError::UnsupportedFormat {
            path: path.display().to_string(),
        });
    }
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
    Ok(LoadedModel {
        path: path.to_path_buf(),
        weight_bytes: weights.weight_bytes(),
        decoder: Decoder::new(CpuBackend, &weights),
        tokenizer: Arc::new(tokenizer),
        chat_template,
    })
}

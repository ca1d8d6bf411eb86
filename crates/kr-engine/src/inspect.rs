//! A quick look at a model before loading it (`kr-serve models inspect`): architecture,
//! parameters, tensor types, context length, tokenizer, chat template presence and the
//! memory it needs. GGUF files are read from their header and tensor directory only;
//! llama2.c checkpoints (and the built-in model) are parsed in full, which also checks them.

use crate::error::{EngineError, Result};
use crate::model::BUILTIN_MODEL;
use kr_model::gguf::GgufFile;
use kr_model::gguf_model::config_from_gguf;
use kr_model::quant::GgmlType;
use kr_model::{llama2c, ModelConfig, ModelWeights, RawTensor, Tokenizer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The tokenizer part of a [`ModelSummary`].
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerSummary {
    /// "bpe" or "spm".
    pub kind: &'static str,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
}

/// What `models inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: String,
    /// "gguf", "llama2.c" or "huggingface".
    pub format: &'static str,
    pub config: ModelConfig,
    pub parameters: u64,
    /// Tensor encoding name → number of tensors.
    pub tensor_types: BTreeMap<String, usize>,
    /// Bytes of all weights as stored (what the CPU backend keeps in memory).
    pub weight_bytes: u64,
    /// Bytes of weights on a GPU computing in bf16 (quantised matrices stay encoded, float
    /// matrices become bf16, norms f32).
    pub gpu_weight_bytes: u64,
    /// f32 K and V over all layers.
    pub kv_bytes_per_token: u64,
    /// Weights plus a KV cache for one sequence of the full context.
    pub memory_full_context_bytes: u64,
    /// `None` when the tokenizer cannot be built (see `problems`).
    pub tokenizer: Option<TokenizerSummary>,
    pub chat_template: bool,
    /// Things that would stop the model from loading.
    pub problems: Vec<String>,
    /// Mixture-of-Experts models: their experts and the parameters a token uses.
    pub experts: Option<ExpertSummary>,
}

/// The experts of a Mixture-of-Experts model.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertSummary {
    /// Layers whose feed-forward block is experts.
    pub layers: usize,
    /// Experts in each such layer, and how many a token runs.
    pub experts: usize,
    pub top_k: usize,
    /// Parameters one token goes through: everything but the experts it does not use.
    pub active_parameters: u64,
}

/// The experts of `w` and its active parameters, out of `parameters` in all.
fn expert_summary(w: &ModelWeights, parameters: u64) -> Option<ExpertSummary> {
    let sparse: Vec<_> = w.layers.iter().filter_map(|l| l.moe.as_ref()).collect();
    let first = sparse.first()?;
    let unused: usize = sparse
        .iter()
        .map(|m| {
            let per_expert: usize = m
                .experts
                .iter()
                .map(|x| {
                    [&x.gate, &x.up, &x.down]
                        .iter()
                        .map(|t| t.rows * t.cols)
                        .sum::<usize>()
                })
                .sum::<usize>()
                / m.experts.len().max(1);
            per_expert * (m.experts.len() - m.top_k.min(m.experts.len()))
        })
        .sum();
    Some(ExpertSummary {
        layers: sparse.len(),
        experts: first.experts.len(),
        top_k: first.top_k,
        active_parameters: parameters.saturating_sub(unused as u64),
    })
}

fn tokenizer_summary(t: &Tokenizer) -> TokenizerSummary {
    TokenizerSummary {
        kind: t.kind(),
        vocab_size: t.vocab_size,
        bos_id: t.bos_id,
        eos_ids: t.eos_ids.clone(),
        add_bos: t.add_bos,
    }
}

/// Inspects a model path as `load_model` would open it, without starting an engine.
pub fn inspect_model(path: &Path) -> Result<ModelSummary> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if path == Path::new(BUILTIN_MODEL) {
        let (weights, tok) = crate::model::builtin_parts()?;
        return Ok(from_weights(path, &weights, Ok(tok)));
    }
    if path.is_dir() {
        let hf = kr_model::hf::load_hf_dir(path)?;
        let mut s = from_weights(path, &hf.weights, Ok(hf.tokenizer));
        s.format = "huggingface";
        s.chat_template = hf.chat_template.is_some();
        return Ok(s);
    }
    match ext.as_deref() {
        Some("bin") => {
            let weights = llama2c::load_llama2c(path)?;
            let tok = crate::model::llama2c_tokenizer(path, weights.config.vocab_size);
            Ok(from_weights(path, &weights, tok))
        }
        Some("gguf") => inspect_gguf(path),
        _ if !path.exists() => inspect_gguf(path),
        _ => Err(EngineError::UnsupportedFormat {
            path: path.display().to_string(),
        }),
    }
}

fn summary(
    path: &Path,
    format: &'static str,
    config: ModelConfig,
    parameters: u64,
    weight_bytes: u64,
) -> ModelSummary {
    let kv = config.kv_bytes_per_token() as u64;
    ModelSummary {
        path: path.display().to_string(),
        format,
        memory_full_context_bytes: weight_bytes + kv * config.max_context as u64,
        kv_bytes_per_token: kv,
        config,
        parameters,
        tensor_types: BTreeMap::new(),
        weight_bytes,
        gpu_weight_bytes: weight_bytes,
        tokenizer: None,
        chat_template: false,
        problems: vec![],
        experts: None,
    }
}

fn inspect_gguf(path: &Path) -> Result<ModelSummary> {
    let f = GgufFile::open(path)?;
    let config = config_from_gguf(&f)?;
    let parameters = f.tensors.values().map(|t| t.num_elements() as u64).sum();
    let bytes = f.tensors.values().map(|t| t.size as u64).sum();
    let mut s = summary(path, "gguf", config, parameters, bytes);
    s.gpu_weight_bytes = f
        .tensors
        .values()
        .map(|t| match t.dims.len() {
            1 => 4 * t.num_elements() as u64,
            _ => gpu_bytes(t.ty, t.num_elements(), t.size),
        })
        .sum();
    for t in f.tensors.values() {
        *s.tensor_types.entry(t.ty.name().to_string()).or_default() += 1;
    }
    match Tokenizer::from_gguf(&f) {
        Ok(t) => s.tokenizer = Some(tokenizer_summary(&t)),
        Err(e) => s.problems.push(e.to_string()),
    }
    s.chat_template = f.get("tokenizer.chat_template").is_some();
    // The matrices borrow the map: this reads the norms and checks every shape.
    match kr_model::gguf_model::weights_from_gguf(&f) {
        Ok(w) => s.experts = expert_summary(&w, parameters),
        Err(e) => s.problems.push(e.to_string()),
    }
    Ok(s)
}

fn from_weights(
    path: &Path,
    w: &ModelWeights,
    tok: std::result::Result<Tokenizer, EngineError>,
) -> ModelSummary {
    let norms = w.layers.len() * 2 * w.config.hidden_size + w.final_norm.len();
    let mats: Vec<&RawTensor> = std::iter::once(&w.embedding)
        .chain(w.layer_matrices())
        .chain(w.lm_head.as_ref())
        .collect();
    let params = norms + mats.iter().map(|m| m.rows * m.cols).sum::<usize>();
    let stored = 4 * norms + mats.iter().map(|m| m.bytes.as_slice().len()).sum::<usize>();
    let mut s = summary(
        path,
        "llama2.c",
        w.config.clone(),
        params as u64,
        stored as u64,
    );
    s.gpu_weight_bytes = 4 * norms as u64
        + mats
            .iter()
            .map(|m| gpu_bytes(m.ty, m.rows * m.cols, m.bytes.as_slice().len()))
            .sum::<u64>();
    s.tensor_types.insert("F32".into(), 1 + 2 * w.layers.len());
    for m in mats {
        *s.tensor_types.entry(m.ty.name().to_string()).or_default() += 1;
    }
    match tok {
        Ok(t) => s.tokenizer = Some(tokenizer_summary(&t)),
        Err(e) => s.problems.push(e.to_string()),
    }
    s.experts = expert_summary(w, params as u64);
    s
}

/// Bytes a matrix of `n` values stored as `ty` in `stored` bytes takes on a GPU in bf16:
/// quantised types stay encoded, floats become bf16.
fn gpu_bytes(ty: GgmlType, n: usize, stored: usize) -> u64 {
    if ty.is_quantized() {
        stored as u64
    } else {
        2 * n as u64
    }
}

//! Tokenizers: GGUF gpt2-style BPE vocabularies rebuilt as a `tokenizers::Tokenizer` (with
//! the pre-tokenizer named by `tokenizer.ggml.pre`), and incremental UTF-8-safe decoding.
//!
//! Invariant: control tokens (GGUF token type 3) are registered as special added tokens, so
//! chat-template markers like `<|im_start|>` encode to their single id and are dropped when
//! decoding output text.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the special ids the engine needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    /// Prepend BOS to raw (non-template) prompts.
    pub add_bos: bool,
    pub vocab_size: usize,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn regex_split(pattern: &str) -> Result<PreTokenizerWrapper> {
    Ok(Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?
    .into())
}

/// The pre-tokenizer llama.cpp uses for a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level_no_regex = || ByteLevel::new(false, false, false).into();
    let parts: Vec<PreTokenizerWrapper> = match pre {
        "gpt-2" | "default" => vec![ByteLevel::new(false, false, true).into()],
        "smollm" | "starcoder" | "refact" => vec![Digits::new(true).into(), ByteLevel::new(false, false, true).into()],
        "llama-bpe" | "llama3" => vec![regex_split(LLAMA3_PATTERN)?, byte_level_no_regex()],
        "qwen2" => vec![regex_split(QWEN2_PATTERN)?, byte_level_no_regex()],
        other => return Err(ModelError::Tokenizer(format!("GGUF pre-tokenizer '{other}' is not supported; supported: gpt-2, smollm, llama-bpe, qwen2"))),
    };
    Ok(Sequence::new(parts).into())
}

fn string_array(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    f.get_array(key)?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| tok_err(format!("{key} holds a non-string")))
        })
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(format!("{}: GGUF tokenizer model '{model}' is not supported yet; supported: gpt2 (byte-level BPE)", f.path.display())));
        }
        let tokens = string_array(f, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = f
            .get_array("tokenizer.ggml.token_type")
            .map(|a| {
                a.iter()
                    .map(|v| match v {
                        Value::I64(i) => *i,
                        Value::U64(u) => *u as i64,
                        _ => 1,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let merges = string_array(f, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("bad merge '{m}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = f
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, &t)| AddedToken::from(s.clone(), t == 3))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |k: &str| f.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let mut eos_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
            if !eos_ids.contains(&eot) {
                eos_ids.push(eot);
            }
        }
        let add_bos = matches!(
            f.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            vocab_size: tokens.len(),
        })
    }

    /// Encodes text. `parse_special` lets marker strings like `<|im_start|>` become their ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// The text of one token as stored in the vocabulary (for logprob displays).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Turns a growing list of ids into text deltas without ever splitting a UTF-8 character
/// (the approach of TGI's and vLLM's detokenisers: decode a small window twice).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Starts after `prompt_len` ids, which are never part of the output.
    pub fn new(prompt_len: usize) -> Self {
        Self {
            prefix_offset: prompt_len,
            read_offset: prompt_len,
        }
    }

    /// The new text that `ids` (all ids so far) adds, or "" while a character is incomplete.
    pub fn step(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<String> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            return Ok(full[prefix.len()..].to_string());
        }
        Ok(String::new())
    }

    /// Whatever is still held back at the end of generation (an incomplete character).
    pub fn flush(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<String> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&ids[self.prefix_offset..])?;
        self.prefix_offset = ids.len();
        self.read_offset = ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}

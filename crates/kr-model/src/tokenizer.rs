//! Tokenizers: GGUF gpt2-style BPE vocabularies rebuilt as a `tokenizers::Tokenizer` (with
//! the pre-tokenizer named by `tokenizer.ggml.pre`), SentencePiece-style scored vocabularies
//! (GGUF `llama` model, llama2.c `tokenizer.bin`; see [`crate::spm`]), and incremental
//! UTF-8-safe decoding.
//!
//! Invariant: control tokens (GGUF token type 3) are registered as special added tokens, so
//! chat-template markers like `<|im_start|>` encode to their single id and are dropped when
//! decoding output text.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};
use crate::spm::{SpmVocab, TokenKind};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The two tokenizer families.
enum Inner {
    /// Byte-level BPE through the `tokenizers` crate.
    Bpe(Box<tokenizers::Tokenizer>),
    /// SentencePiece-style scored vocabulary.
    Spm(Box<SpmVocab>),
}

/// A tokenizer with the special ids the engine needs.
pub struct Tokenizer {
    inner: Inner,
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

fn token_types(f: &GgufFile, n: usize) -> Vec<i64> {
    let mut types: Vec<i64> = f
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
    types.resize(n, 1);
    types
}

/// The BOS id, end-of-generation ids and add-BOS flag of a GGUF vocabulary.
fn special_ids(f: &GgufFile, add_bos_default: bool) -> (Option<u32>, Vec<u32>, bool) {
    let id = |k: &str| f.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let bos_id = id("tokenizer.ggml.bos_token_id");
    let mut eos_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
        if !eos_ids.contains(&eot) {
            eos_ids.push(eot);
        }
    }
    let add_bos = match f.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => add_bos_default,
    };
    (bos_id, eos_ids, add_bos)
}

fn bpe_from_gguf(f: &GgufFile, tokens: &[String], types: &[i64]) -> Result<tokenizers::Tokenizer> {
    let merges = string_array(f, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    tok_err(format!(
                        "{}: bad merge '{m}' in tokenizer.ggml.merges",
                        f.path.display()
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    // llama.cpp (like Llama 3's tokenizer.json) emits a pre-token that is itself in the
    // vocabulary as one id, without applying merges, for the llama3 pre-tokenizer.
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(matches!(pre, "llama-bpe" | "llama3"))
        .build()
        .map_err(tok_err)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, &t)| AddedToken::from(s.clone(), t == 3))
        .collect();
    inner.add_special_tokens(&specials);
    Ok(inner)
}

fn spm_from_gguf(
    f: &GgufFile,
    tokens: Vec<String>,
    types: &[i64],
    bos_id: Option<u32>,
) -> Result<SpmVocab> {
    let key = "tokenizer.ggml.scores";
    let scores = f
        .get_array(key)?
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| tok_err(format!("{}: {key} holds a non-number", f.path.display())))
        })
        .collect::<Result<Vec<f32>>>()?;
    if scores.len() != tokens.len() {
        return Err(tok_err(format!(
            "{}: {key} has {} entries for {} tokens",
            f.path.display(),
            scores.len(),
            tokens.len()
        )));
    }
    let kinds = types.iter().map(|&t| TokenKind::from_gguf(t)).collect();
    let add_space_prefix = !matches!(
        f.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(false))
    );
    Ok(SpmVocab::new(
        tokens,
        scores,
        kinds,
        bos_id,
        add_space_prefix,
    ))
}

/// Runs a call into the `tokenizers` library, turning its error, or a panic (it panics on
/// some malformed vocabularies, found by fuzzing), into an error: a model file must never
/// crash the engine thread.
fn guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> std::result::Result<T, E>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| tok_err(e.to_string())),
        Err(_) => Err(tok_err(
            "the tokenizers library failed on this input".to_string(),
        )),
    }
}

/// The bytes of a BPE vocabulary piece: byte-level pieces map each character back to its byte
/// (GPT-2's printable stand-ins); other BPE vocabularies (SentencePiece-style, byte fallback)
/// use `▁` for a space and `<0xXX>` for raw bytes.
fn bpe_piece_bytes(piece: &str, byte_level: bool) -> Vec<u8> {
    if byte_level {
        return piece.chars().map(byte_level_char_to_byte).collect();
    }
    if let Some(b) = piece
        .strip_prefix("<0x")
        .and_then(|h| h.strip_suffix('>'))
        .filter(|h| h.len() == 2)
        .and_then(|h| u8::from_str_radix(h, 16).ok())
    {
        return vec![b];
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

/// GPT-2's byte-to-character table, inverted: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes for the characters U+0100.. in byte order.
fn byte_level_char_to_byte(c: char) -> u8 {
    static TABLE: std::sync::OnceLock<[u8; 512]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let printable = |b: u32| {
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
        };
        let mut t = [b'?'; 512];
        let mut next = 256;
        for b in 0u32..256 {
            if printable(b) {
                t[b as usize] = b as u8;
            } else {
                t[next] = b as u8;
                next += 1;
            }
        }
        t
    });
    table.get(c as usize).copied().unwrap_or(b'?')
}

/// Whether a byte-level BPE vocabulary with pre-tokenizer `pre` adds BOS when the file has no
/// `tokenizer.ggml.add_bos_token` (llama.cpp's defaults: Llama 3's and a few others do).
fn bpe_adds_bos_by_default(pre: &str) -> bool {
    matches!(
        pre,
        "llama-v3"
            | "llama-bpe"
            | "falcon3"
            | "falcon-h1"
            | "pixtral"
            | "midm-2.0"
            | "lfm2"
            | "jina-v5-nano"
            | "tekken"
            | "chameleon"
    )
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata: `gpt2` (byte-level BPE with
    /// merges) or `llama` (SentencePiece with scores and byte fallback).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f.get_str("tokenizer.ggml.model")?.to_string();
        let tokens = string_array(f, "tokenizer.ggml.tokens")?;
        let types = token_types(f, tokens.len());
        let vocab_size = tokens.len();
        let (inner, (bos_id, eos_ids, add_bos)) = match model.as_str() {
            "gpt2" => {
                let pre = f.get_str("tokenizer.ggml.pre").unwrap_or_default();
                let ids = special_ids(f, bpe_adds_bos_by_default(pre));
                (Inner::Bpe(Box::new(bpe_from_gguf(f, &tokens, &types)?)), ids)
            }
            "llama" => {
                let ids = special_ids(f, true);
                (Inner::Spm(Box::new(spm_from_gguf(f, tokens, &types, ids.0)?)), ids)
            }
            _ => return Err(tok_err(format!("{}: GGUF tokenizer model '{model}' is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)", f.path.display()))),
        };
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            vocab_size,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. Its special ids (BOS, EOS, add-BOS) live in
    /// tokenizer_config.json / generation_config.json, so they start empty here for the
    /// directory loader to fill.
    pub fn from_tokenizer_json(path: &std::path::Path) -> Result<Self> {
        // The tokenizers library panics on some malformed files (a truncated `decoder`
        // object); a model file must give an error, not a crash.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(path));
        let inner = match parsed {
            Ok(r) => r.map_err(|e| tok_err(format!("{}: {e}", path.display())))?,
            Err(_) => {
                return Err(tok_err(format!(
                    "{}: malformed tokenizer.json (the tokenizers library could not parse it)",
                    path.display()
                )))
            }
        };
        Ok(Self {
            vocab_size: inner.get_vocab_size(true),
            inner: Inner::Bpe(Box::new(inner)),
            bos_id: None,
            eos_ids: vec![],
            add_bos: false,
        })
    }

    /// Wraps a SentencePiece-style vocabulary.
    pub fn from_spm(
        vocab: SpmVocab,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: bool,
    ) -> Self {
        Self {
            vocab_size: vocab.len(),
            inner: Inner::Spm(Box::new(vocab)),
            bos_id,
            eos_ids,
            add_bos,
        }
    }

    /// Encodes text, BOS first when `add_bos`. Special-token strings in the text (like
    /// `<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        match &self.inner {
            Inner::Bpe(t) => {
                let enc = guarded(|| t.encode_fast(text, false))?;
                ids.extend_from_slice(enc.get_ids())
            }
            Inner::Spm(v) => ids.extend(v.encode(text, true)),
        }
        Ok(ids)
    }

    /// Encodes several texts at once: one call of the `tokenizers` crate's batch encoder
    /// (which spreads the texts over its threads) for BPE, a loop for SentencePiece. Gives
    /// exactly what [`Tokenizer::encode`] gives for each text.
    pub fn encode_batch(&self, texts: &[&str], add_bos: bool) -> Result<Vec<Vec<u32>>> {
        let bos: Vec<u32> = self.bos_id.filter(|_| add_bos).into_iter().collect();
        let with_bos = |ids: &[u32]| [bos.as_slice(), ids].concat();
        match &self.inner {
            // Batch padding would make the ids differ from single encodes.
            Inner::Bpe(t) if t.get_padding().is_some() => {
                texts.iter().map(|s| self.encode(s, add_bos)).collect()
            }
            Inner::Bpe(t) => Ok(guarded(|| t.encode_batch_fast(texts.to_vec(), false))?
                .iter()
                .map(|e| with_bos(e.get_ids()))
                .collect()),
            Inner::Spm(v) => Ok(texts.iter().map(|t| with_bos(&v.encode(t, true))).collect()),
        }
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Bpe(t) => guarded(|| t.decode(ids, true)),
            Inner::Spm(v) => Ok(v.decode(ids, true)),
        }
    }

    /// The text of one token as stored in the vocabulary (for logprob displays).
    pub fn token_text(&self, id: u32) -> String {
        match &self.inner {
            Inner::Bpe(t) => guarded(|| t.decode(&[id], false)).unwrap_or_default(),
            Inner::Spm(v) => v.decode(&[id], false),
        }
    }

    /// The exact bytes token `id` adds to output text (a byte-level BPE token's bytes, a
    /// SentencePiece piece with `▁` as a space, a byte token's byte) and whether it is a special
    /// token (control and added special tokens, never part of text); `None` past the
    /// vocabulary. For grammars, which must know what every token spells.
    pub fn token_bytes(&self, id: u32) -> Option<(Vec<u8>, bool)> {
        match &self.inner {
            Inner::Spm(v) => v.token_bytes(id),
            Inner::Bpe(t) => {
                if let Some(added) = t.get_added_tokens_decoder().get(&id) {
                    return Some((added.content.clone().into_bytes(), added.special));
                }
                let piece = t.id_to_token(id)?;
                let byte_level = matches!(
                    t.get_decoder(),
                    Some(tokenizers::DecoderWrapper::ByteLevel(_))
                );
                Some((bpe_piece_bytes(&piece, byte_level), false))
            }
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Bpe(t) => t.token_to_id(token),
            Inner::Spm(v) => v.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Bpe(t) => t.id_to_token(id),
            Inner::Spm(v) => v.piece(id).map(str::to_string),
        }
    }

    /// "bpe" or "spm": which family this tokenizer belongs to (for `models inspect`).
    pub fn kind(&self) -> &'static str {
        match &self.inner {
            Inner::Bpe(_) => "bpe",
            Inner::Spm(_) => "spm",
        }
    }
}

/// Prompt ids decoded before the first output id by [`IncrementalDecoder`].
const PROMPT_CONTEXT: usize = 5;

/// Turns a growing list of ids into text deltas without ever splitting a UTF-8 character
/// (the approach of TGI's and vLLM's detokenisers: decode a small window twice).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Starts after `prompt_len` ids, which are never part of the output. The last few
    /// prompt ids are decoded as context (as vLLM does), so that a tokenizer whose text
    /// depends on the previous token (SentencePiece strips the space after BOS) gets its
    /// first output piece right.
    pub fn new(prompt_len: usize) -> Self {
        Self {
            prefix_offset: prompt_len.saturating_sub(PROMPT_CONTEXT),
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

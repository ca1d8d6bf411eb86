//! The llama2.c checkpoint format (Karpathy's `run.c`, "version 0" export) and its
//! `tokenizer.bin`.
//!
//! Model file: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//! vocab_size — negative when the classifier is not shared with the embedding — and
//! seq_len), then f32 weights in this order: token_embedding_table, rms_att_weight (all
//! layers), wq, wk, wv, wo (all layers each), rms_ffn_weight, w1, w2, w3, rms_final_weight,
//! two legacy RoPE tables of seq_len·head_size/2 floats each (skipped), then wcls when
//! unshared. Matrices are row-major `[out, in]` (Meta orientation, Q/K not permuted), and
//! run.c rotates pairs (2i, 2i+1), so the decoder uses [`RopeStyle::Interleaved`], theta
//! 10000, RMSNorm eps 1e-5. w1 is the gate, w3 the up and w2 the down projection.
//!
//! Tokenizer file: int32 max_token_length, then per token: f32 score, int32 length, bytes.
//! Spaces are stored as ' ' (we store them as SentencePiece's '▁'), ids 0/1/2 are
//! unk/BOS/EOS and ids 3..259 the bytes `<0x00>`..`<0xFF>`.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::spm::{SpmVocab, TokenKind, SPACE};
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights, RawTensor};
use std::path::{Path, PathBuf};

/// The header of a llama2.c checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// The output classifier is the token embedding.
    pub shared_classifier: bool,
}

impl Llama2cHeader {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }
}

fn corrupt(path: &Path, what: String) -> ModelError {
    ModelError::Truncated {
        path: path.to_path_buf(),
        what,
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Parses and checks the 7-int32 header.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Llama2cHeader> {
    const NAMES: [&str; 7] = [
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "seq_len",
    ];
    let mut v = [0i64; 7];
    for (i, name) in NAMES.iter().enumerate() {
        let x = read_i32(bytes, 4 * i).ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "llama2.c header field '{name}' is missing ({} bytes)",
                    bytes.len()
                ),
            )
        })?;
        let x = if i == 5 { (x as i64).abs() } else { x as i64 };
        if x <= 0 || x > 1 << 24 {
            return Err(corrupt(
                path,
                format!("llama2.c header field '{name}' = {x} is out of range 1..=16777216"),
            ));
        }
        v[i] = x;
    }
    let h = Llama2cHeader {
        dim: v[0] as usize,
        hidden_dim: v[1] as usize,
        n_layers: v[2] as usize,
        n_heads: v[3] as usize,
        n_kv_heads: v[4] as usize,
        vocab_size: v[5] as usize,
        seq_len: v[6] as usize,
        shared_classifier: read_i32(bytes, 20).is_some_and(|x| x > 0),
    };
    // Written without `%` so that clippy's is_multiple_of hint (Rust 1.87) stays quiet on
    // our 1.85 floor.
    let whole = |a: usize, b: usize| a / b * b == a;
    if !whole(h.dim, h.n_heads) || !whole(h.n_heads, h.n_kv_heads) || !whole(h.head_dim(), 2) {
        return Err(corrupt(path, format!("llama2.c header: dim {} / n_heads {} / n_kv_heads {} do not give an even head size shared by whole KV groups", h.dim, h.n_heads, h.n_kv_heads)));
    }
    Ok(h)
}

/// The model configuration of a llama2.c checkpoint.
pub fn config_from_header(h: &Llama2cHeader) -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        vocab_size: h.vocab_size,
        hidden_size: h.dim,
        num_layers: h.n_layers,
        num_heads: h.n_heads,
        num_kv_heads: h.n_kv_heads,
        head_dim: h.head_dim(),
        intermediate_size: h.hidden_dim,
        rope_theta: 10_000.0,
        rope_style: RopeStyle::Interleaved,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        max_context: h.seq_len,
        tie_embeddings: h.shared_classifier,
        attention: Default::default(),
    }
}

/// Walks the weights in file order, naming each block for error messages.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// The next `n` floats, called `name` in errors.
    fn floats(&mut self, name: &str, n: usize) -> Result<Vec<f32>> {
        let end = n
            .checked_mul(4)
            .and_then(|b| b.checked_add(self.pos))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                corrupt(self.path, format!("tensor '{name}' ({n} f32 from byte {}) runs past the end of the file ({} bytes)", self.pos, self.bytes.len()))
            })?;
        let out = self.bytes[self.pos..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.pos = end;
        Ok(out)
    }

    /// One block holding `n_layers` matrices of `rows × cols`, split per layer.
    fn per_layer(
        &mut self,
        name: &str,
        layers: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<RawTensor>> {
        let all = self.floats(name, layers * rows * cols)?;
        Ok(all
            .chunks_exact(rows * cols)
            .enumerate()
            .map(|(l, m)| RawTensor::from_f32(&format!("layers.{l}.{name}"), rows, cols, m))
            .collect())
    }

    fn vectors(&mut self, name: &str, layers: usize, len: usize) -> Result<Vec<Vec<f32>>> {
        let all = self.floats(name, layers * len)?;
        Ok(all.chunks_exact(len).map(<[f32]>::to_vec).collect())
    }
}

/// Builds the weights of a llama2.c checkpoint held in `bytes` (`path` names it in errors).
pub fn weights_from_llama2c(path: &Path, bytes: &[u8]) -> Result<ModelWeights> {
    let h = parse_header(path, bytes)?;
    let config = config_from_header(&h);
    let (d, f, nl, v) = (h.dim, h.hidden_dim, h.n_layers, h.vocab_size);
    let kv = h.n_kv_heads * h.head_dim();
    let mut r = Reader {
        path,
        bytes,
        pos: 28,
    };
    let embedding = RawTensor::from_f32(
        "token_embedding_table",
        v,
        d,
        &r.floats("token_embedding_table", v * d)?,
    );
    let attn_norm = r.vectors("rms_att_weight", nl, d)?;
    let wq = r.per_layer("wq", nl, d, d)?;
    let wk = r.per_layer("wk", nl, kv, d)?;
    let wv = r.per_layer("wv", nl, kv, d)?;
    let wo = r.per_layer("wo", nl, d, d)?;
    let ffn_norm = r.vectors("rms_ffn_weight", nl, d)?;
    let w1 = r.per_layer("w1", nl, f, d)?;
    let w2 = r.per_layer("w2", nl, d, f)?;
    let w3 = r.per_layer("w3", nl, f, d)?;
    let final_norm = r.floats("rms_final_weight", d)?;
    r.floats("freq_cis_real", h.seq_len * h.head_dim() / 2)?;
    r.floats("freq_cis_imag", h.seq_len * h.head_dim() / 2)?;
    let lm_head = match h.shared_classifier {
        true => None,
        false => Some(RawTensor::from_f32("wcls", v, d, &r.floats("wcls", v * d)?)),
    };
    let mut layers = Vec::with_capacity(nl);
    let mats = wq
        .into_iter()
        .zip(wk)
        .zip(wv)
        .zip(wo)
        .zip(w1)
        .zip(w2)
        .zip(w3);
    for (l, ((((((wq, wk), wv), wo), w1), w2), w3)) in mats.enumerate() {
        layers.push(LayerWeights {
            attn_norm: attn_norm[l].clone(),
            wq,
            wk,
            wv,
            wo,
            q_bias: None,
            k_bias: None,
            v_bias: None,
            q_norm: None,
            k_norm: None,
            ffn_norm: ffn_norm[l].clone(),
            w_gate: w1,
            w_up: w3,
            w_down: w2,
            moe: None,
            post_attn_norm: None,
            post_ffn_norm: None,
        });
    }
    Ok(ModelWeights {
        config,
        embedding,
        layers,
        final_norm,
        lm_head,
    })
}

/// Reads a llama2.c checkpoint from disk.
pub fn load_llama2c(path: &Path) -> Result<ModelWeights> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    weights_from_llama2c(path, &bytes)
}

/// True when `bytes` start like a llama2.c checkpoint (a plausible header, no GGUF magic).
pub fn looks_like_llama2c(bytes: &[u8]) -> bool {
    !bytes.starts_with(b"GGUF") && parse_header(Path::new(""), bytes).is_ok()
}

/// The tokenizer file llama2.c would use beside `model`: `tok{vocab}.bin`, else
/// `tokenizer.bin`.
pub fn find_tokenizer(model: &Path, vocab_size: usize) -> Option<PathBuf> {
    let dir = model.parent().unwrap_or(Path::new("."));
    [format!("tok{vocab_size}.bin"), "tokenizer.bin".to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Parses a llama2.c `tokenizer.bin` of `vocab_size` tokens.
pub fn tokenizer_from_llama2c(path: &Path, bytes: &[u8], vocab_size: usize) -> Result<Tokenizer> {
    let mut pos = 4;
    let (mut pieces, mut scores, mut kinds) = (vec![], vec![], vec![]);
    for id in 0..vocab_size {
        let bad = || {
            corrupt(path, format!("llama2.c tokenizer entry {id} of {vocab_size} runs past the end of the file ({} bytes)", bytes.len()))
        };
        let score = read_i32(bytes, pos)
            .map(|b| f32::from_bits(b as u32))
            .ok_or_else(bad)?;
        let len = read_i32(bytes, pos + 4).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| {
            corrupt(
                path,
                format!("llama2.c tokenizer entry {id} has length {len}"),
            )
        })?;
        let raw = bytes.get(pos + 8..pos + 8 + len).ok_or_else(bad)?;
        pos += 8 + len;
        let text = String::from_utf8_lossy(raw);
        let (piece, kind) = match id {
            0 => ("<unk>".to_string(), TokenKind::Unknown),
            1 => ("<s>".to_string(), TokenKind::Control),
            2 => ("</s>".to_string(), TokenKind::Control),
            _ if text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') => {
                (text.into_owned(), TokenKind::Byte)
            }
            _ => (text.replace(' ', &SPACE.to_string()), TokenKind::Normal),
        };
        pieces.push(piece);
        scores.push(score);
        kinds.push(kind);
    }
    let vocab = SpmVocab::new(pieces, scores, kinds, Some(1), true);
    // run.c ends generation when the model emits BOS (it delimits stories) and never adds EOS.
    Ok(Tokenizer::from_spm(vocab, Some(1), vec![2, 1], true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: [i32; 7]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn bad_headers_name_the_field() {
        let p = Path::new("m.bin");
        let e = parse_header(p, &header([64, 172, 5, 0, 4, 512, 512])).unwrap_err();
        assert!(e.to_string().contains("n_heads"), "{e}");
        let e = parse_header(p, &[1, 2, 3]).unwrap_err();
        assert!(
            e.to_string().contains("m.bin") && e.to_string().contains("dim"),
            "{e}"
        );
        let h = parse_header(p, &header([64, 172, 5, 8, 4, -512, 512])).unwrap();
        assert!(!h.shared_classifier && h.vocab_size == 512);
    }

    #[test]
    fn a_truncated_file_names_the_tensor() {
        let mut bytes = header([8, 16, 2, 2, 1, 4, 4]);
        bytes.extend(std::iter::repeat_n(0u8, 4 * (4 * 8 + 2 * 8 + 10)));
        let e = weights_from_llama2c(Path::new("m.bin"), &bytes).unwrap_err();
        assert!(e.to_string().contains("'wq'"), "{e}");
    }

    #[test]
    fn a_truncated_tokenizer_names_the_entry() {
        let mut bytes = 8i32.to_le_bytes().to_vec();
        bytes.extend(0f32.to_le_bytes());
        bytes.extend(5i32.to_le_bytes());
        bytes.extend(b"<unk>");
        let e = tokenizer_from_llama2c(Path::new("t.bin"), &bytes, 2)
            .err()
            .unwrap();
        assert!(e.to_string().contains("entry 1 of 2"), "{e}");
    }
}

//! The contract between the decoder and a compute backend (CPU now, CUDA next).
//!
//! The decoder calls only these fused operations; a backend owns its tensors, weights and
//! KV cache. Models never own their cache. Shapes: activations are 2-D `[tokens, features]`
//! in a packed batch (all scheduled tokens of all sequences, sequence after sequence).

use crate::config::ModelConfig;
use crate::weights::RawTensor;

/// Layout of the paged KV cache: per layer, `num_blocks` blocks of `block_size` slots, each
/// slot holding `num_kv_heads × head_dim` keys and as many values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The factor on attention logits ([`ModelConfig::attention_scale`]).
    pub attn_scale: f32,
    /// Keys a query sees on sliding layers (itself included); 0: no window.
    pub sliding_window: usize,
    /// `cap · tanh(score / cap)` on scaled attention logits (Gemma 2); 0: none.
    pub softcap: f32,
    /// Bit `i` set: layer `i` slides (at most 128 layers may; see [`KvLayout::for_model`]).
    pub sliding_layers: u128,
}

impl KvLayout {
    /// The layout of `c`'s cache in `num_blocks` blocks of `block_size` tokens. Model readers
    /// refuse a window on a model deeper than 128 layers, so every sliding layer has its bit.
    pub fn for_model(c: &ModelConfig, num_blocks: usize, block_size: usize) -> Self {
        let sliding_layers = (0..c.num_layers.min(128))
            .filter(|&layer| c.window_of_layer(layer).is_some())
            .fold(0u128, |mask, layer| mask | 1 << layer);
        Self {
            num_layers: c.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            attn_scale: c.attention_scale(),
            softcap: c.attention.attn_logit_softcap.unwrap_or(0.0),
            sliding_window: c.attention.sliding_window.unwrap_or(0),
            sliding_layers,
        }
    }

    /// A layout without a window, with the usual `1/sqrt(head_dim)` scale (tests, benches).
    pub fn plain(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            num_layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            sliding_window: 0,
            sliding_layers: 0,
        }
    }

    /// The first position a query at `pos` of layer `layer` attends to.
    pub fn first_key(&self, layer: usize, pos: usize) -> usize {
        match self.window(layer) {
            0 => 0,
            w => (pos + 1).saturating_sub(w),
        }
    }

    /// The keys a query of layer `layer` sees (itself included) if the layer slides, else 0.
    pub fn window(&self, layer: usize) -> usize {
        let slides = layer < 128 && self.sliding_layers >> layer & 1 == 1;
        if slides {
            self.sliding_window
        } else {
            0
        }
    }
}

/// One sequence's part of a packed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqAttn {
    /// First row of this sequence's queries in the packed batch.
    pub q_start: usize,
    pub q_len: usize,
    /// Tokens in the cache once this step's keys are written (cached prefix + new tokens).
    pub ctx_len: usize,
    pub block_table: Vec<u32>,
}

/// Attention metadata of a packed batch, shared by every layer of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttnMeta {
    /// Absolute position of each token (for RoPE).
    pub positions: Vec<u32>,
    /// Cache slot (`block * block_size + offset`) each token's key and value go to.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqAttn>,
    /// Rows whose logits are wanted (the last token of each sampled sequence).
    pub logit_rows: Vec<usize>,
}

/// Rotary embedding parameters, precomputed once per model.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub style: crate::config::RopeStyle,
    /// A factor on cos and sin: the RoPE attention factor when only part of each head
    /// rotates (it then cannot fold into the logit scale); otherwise 1.
    pub scale: f32,
}

impl Rope {
    pub fn from_config(c: &ModelConfig) -> Self {
        Self {
            inv_freq: c.rope_inv_freq(),
            style: c.rope_style,
            scale: match c.partial_rotary() {
                true => c.attention.rope_attention_factor.unwrap_or(1.0),
                false => 1.0,
            },
        }
    }
}

/// The operations a decoder step needs. Every method works on the whole packed batch.
/// How one logits row is sampled on a device that samples (only token ids come back).
/// The engine's sampler fills it from a request's validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSampling {
    /// At or below 0: greedy (the lowest index among the largest logits); the rest is ignored.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely; 0 keeps all.
    pub min_p: f32,
    /// In [0, 1): where the draw falls in the kept tokens' probability mass.
    pub uniform: f32,
    /// The tokens allowed (a grammar's next-token mask): bit `t % 32` of word `t / 32` set
    /// allows token `t`; tokens past the words are not allowed. `None` allows every token.
    pub allowed: Option<std::sync::Arc<[u32]>>,
}

impl RowSampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
            allowed: None,
        }
    }
}

impl Default for RowSampling {
    fn default() -> Self {
        Self::greedy()
    }
}

pub trait Backend: Send {
    type Tensor;
    type Weight: Send + Sync;
    type Vector: Send + Sync;
    type KvCache: Send;
    /// A backend's table of one Mixture-of-Experts block's experts for
    /// [`Self::experts_add`]; `()` where it routes on the host only.
    type Experts: Send + Sync;

    fn name(&self) -> &'static str;
    fn load_weight(&self, t: &RawTensor) -> Self::Weight;
    fn load_vector(&self, v: &[f32]) -> Self::Vector;
    /// Whether the decoder should fold each RMSNorm's gain into the projections that read the
    /// norm (their weights loaded with [`RawTensor::with_column_gain`], the gain then all ones),
    /// so that the backend may fuse a gain-less norm into those projections
    /// ([`Self::rms_norm_qkv`], [`Self::rms_norm_gate_up`]). Only for weights of type `ty`
    /// that the backend keeps as plain floats: folding dequantises.
    fn folds_norm_gains(&self, _ty: crate::quant::GgmlType) -> bool {
        false
    }
    fn new_kv_cache(&self, layout: KvLayout) -> Self::KvCache;

    /// Called once before each step's operations with the whole batch, so a device backend can
    /// upload the step's metadata in one go (the CPU backend reads `meta` directly).
    fn begin_step(&self, _ids: &[u32], _meta: &AttnMeta) {}

    /// Rows of `table` for each id.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Self::Tensor;
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32) -> Self::Tensor;
    fn add_inplace(&self, x: &mut Self::Tensor, delta: &Self::Tensor);
    /// `x · Wᵀ (+ bias)`: `[t, cols] -> [t, rows]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Vector>,
    ) -> Self::Tensor;
    /// The attention input projections `(x·Wqᵀ + bq, x·Wkᵀ + bk, x·Wvᵀ + bv)`. A device backend
    /// may compute the three in one pass over the input (one launch instead of three).
    fn linear_qkv(
        &self,
        x: &Self::Tensor,
        w: [&Self::Weight; 3],
        bias: [Option<&Self::Vector>; 3],
    ) -> [Self::Tensor; 3] {
        [0, 1, 2].map(|i| self.linear(x, w[i], bias[i]))
    }
    /// [`Self::linear_qkv`] of `rms_norm(x, gain, eps)`. A device backend may fold the norm
    /// into the projections (see [`Self::folds_norm_gains`]).
    fn rms_norm_qkv(
        &self,
        x: &Self::Tensor,
        gain: &Self::Vector,
        eps: f32,
        w: [&Self::Weight; 3],
        bias: [Option<&Self::Vector>; 3],
    ) -> [Self::Tensor; 3] {
        self.linear_qkv(&self.rms_norm(x, gain, eps), w, bias)
    }
    /// [`Self::linear_gate_up`] of `rms_norm(x, gain, eps)`, which a device backend may fuse
    /// like [`Self::rms_norm_qkv`].
    fn rms_norm_gate_up(
        &self,
        x: &Self::Tensor,
        gain: &Self::Vector,
        eps: f32,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
    ) -> Self::Tensor {
        self.linear_gate_up(&self.rms_norm(x, gain, eps), w_gate, w_up)
    }
    /// The gated feed-forward input `silu(x·W_gateᵀ) * (x·W_upᵀ)`; a device backend may fuse
    /// both projections and the activation.
    fn linear_gate_up(
        &self,
        x: &Self::Tensor,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
    ) -> Self::Tensor {
        self.silu_mul(&self.linear(x, w_gate, None), &self.linear(x, w_up, None))
    }
    /// `x += a · Wᵀ`: an output projection added into the residual stream. A device backend
    /// adds in the projection's epilogue instead of writing `a · Wᵀ` out and reading it back.
    fn linear_add(&self, x: &mut Self::Tensor, a: &Self::Tensor, w: &Self::Weight) {
        let delta = self.linear(a, w, None);
        self.add_inplace(x, &delta);
    }
    /// RMSNorm over each head of width `head_dim` (Qwen3's q/k norm).
    fn head_rms_norm(&self, x: &mut Self::Tensor, w: &Self::Vector, head_dim: usize, eps: f32);
    /// Rotates `q` and `k` in place by their positions, then writes `k` and `v` into the
    /// cache of `layer` at `meta.slot_mapping`.
    #[allow(clippy::too_many_arguments)]
    fn rope_and_write_kv(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        rope: &Rope,
        meta: &AttnMeta,
        layer: usize,
        cache: &mut Self::KvCache,
    );
    /// Causal attention of each sequence's queries over its cached keys and values.
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        meta: &AttnMeta,
        layer: usize,
        cache: &Self::KvCache,
        num_heads: usize,
    ) -> Self::Tensor;
    /// [`Self::rope_and_write_kv`] then [`Self::paged_attention`]. A device backend may do the
    /// rotation and the cache write inside the attention kernel, so afterwards `q` and `k` may
    /// hold either the rotated or the original values.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        rope: &Rope,
        meta: &AttnMeta,
        layer: usize,
        cache: &mut Self::KvCache,
        num_heads: usize,
    ) -> Self::Tensor {
        self.rope_and_write_kv(q, k, v, rope, meta, layer, cache);
        self.paged_attention(q, meta, layer, cache, num_heads)
    }
    /// `silu(gate) * up`, elementwise.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// `gelu(gate) * up` with GELU's tanh approximation, elementwise (Gemma's GeGLU).
    fn gelu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// `x *= s`, elementwise (Gemma's scaled embeddings).
    fn scale_inplace(&self, x: &mut Self::Tensor, s: f32);
    /// `x = cap · tanh(x / cap)`, elementwise (Gemma's soft-capped logits).
    fn softcap_inplace(&self, x: &mut Self::Tensor, cap: f32);
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor;
    /// `x[rows[i]] += scales[i] · src[i]` for every row `i` of `src` (the weighted output of a
    /// Mixture-of-Experts expert added back to its tokens' rows).
    fn scatter_add_scaled(
        &self,
        x: &mut Self::Tensor,
        rows: &[usize],
        src: &Self::Tensor,
        scales: &[f32],
    );
    /// Copies a tensor to host memory, row-major.
    fn to_host(&self, x: &Self::Tensor) -> Vec<f32>;

    /// The table of `experts` (gate, up and down of each; `top_k` chosen per token) for
    /// [`Self::experts_add`], or `None`: the decoder then routes on the host, one batched
    /// pass per expert.
    fn prepare_experts(
        &self,
        _experts: &[[Self::Weight; 3]],
        _top_k: usize,
    ) -> Option<Self::Experts> {
        None
    }

    /// `x += Σ_j p_j · down_j(silu(gate_j(h)) * up_j(h))` over each row's `top_k` experts by
    /// `router_logits`, chosen and weighted as [`crate::weights::route_tokens`] does (softmax,
    /// the largest first, ties to the lower index; p renormalised over the chosen where
    /// `norm_topk_prob`), without a round trip to the host. Called only with a table from
    /// [`Self::prepare_experts`].
    fn experts_add(
        &self,
        _x: &mut Self::Tensor,
        _h: &Self::Tensor,
        _router_logits: &Self::Tensor,
        _experts: &Self::Experts,
        _routing: (usize, bool),
    ) {
    }
}

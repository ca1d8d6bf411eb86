//! The one decoder-only transformer (Llama / Qwen2 / Qwen3 / Mistral / Phi-3 / SmolLM, dense
//! or Mixture-of-Experts), written against [`Backend`]. Weight names follow the GGUF /
//! Hugging Face layout verbatim.
//!
//! Invariant: `forward` touches only the KV slots named in `meta.slot_mapping` and reads only
//! the blocks in each sequence's block table.

use crate::backend::{AttnMeta, Backend, KvLayout, Rope};
use crate::config::ModelConfig;
use crate::weights::{route_tokens, LayerWeights, ModelWeights, RawTensor};

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    q_bias: Option<B::Vector>,
    k_bias: Option<B::Vector>,
    v_bias: Option<B::Vector>,
    q_norm: Option<B::Vector>,
    k_norm: Option<B::Vector>,
    ffn_norm: B::Vector,
    w_gate: B::Weight,
    w_up: B::Weight,
    w_down: B::Weight,
    moe: Option<Moe<B>>,
    post_attn_norm: Option<B::Vector>,
    post_ffn_norm: Option<B::Vector>,
}

/// A Mixture-of-Experts block on the backend: the router and each expert's gate, up, down.
struct Moe<B: Backend> {
    router: B::Weight,
    experts: Vec<[B::Weight; 3]>,
    /// The backend's table of `experts` where it routes on the device.
    device_table: Option<B::Experts>,
    top_k: usize,
    norm_topk_prob: bool,
}

/// A model whose weights live on backend `B`.
pub struct Decoder<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    rope: Rope,
    /// The rotation of sliding-window layers when it differs (Gemma 3's local layers).
    local_rope: Option<Rope>,
    embedding: B::Weight,
    layers: Vec<Layer<B>>,
    final_norm: B::Vector,
    lm_head: Option<B::Weight>,
}

impl<B: Backend> Decoder<B> {
    /// Moves the weights onto the backend.
    pub fn new(backend: B, w: &ModelWeights) -> Self {
        let layers = w.layers.iter().map(|l| load_layer(&backend, l)).collect();
        Self {
            config: w.config.clone(),
            rope: Rope::from_config(&w.config),
            local_rope: w.config.local_rope_config().map(|c| Rope::from_config(&c)),
            embedding: backend.load_weight(&w.embedding),
            final_norm: backend.load_vector(&w.final_norm),
            lm_head: w.lm_head.as_ref().map(|t| backend.load_weight(t)),
            layers,
            backend,
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether some Mixture-of-Experts block routes its tokens on the host (reading the
    /// router's logits back each step), which a captured graph cannot replay.
    pub fn routes_experts_on_host(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.moe.as_ref().is_some_and(|m| m.device_table.is_none()))
    }

    /// A KV cache with `num_blocks` blocks of `block_size` tokens for this model.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> B::KvCache {
        let c = &self.config;
        self.backend
            .new_kv_cache(KvLayout::for_model(c, num_blocks, block_size))
    }

    /// Runs one packed batch and returns the logits of `meta.logit_rows`, row-major
    /// `[logit_rows.len(), vocab_size]`.
    pub fn forward(&self, ids: &[u32], meta: &AttnMeta, cache: &mut B::KvCache) -> Vec<f32> {
        self.forward_with_hidden(ids, meta, &[], cache).0
    }

    /// Like [`Self::forward`], and also the final-normed hidden states (the model's output
    /// before the vocabulary projection: what embedding models pool) of `hidden_rows`,
    /// row-major `[hidden_rows.len(), hidden_size]`.
    pub fn forward_with_hidden(
        &self,
        ids: &[u32],
        meta: &AttnMeta,
        hidden_rows: &[usize],
        cache: &mut B::KvCache,
    ) -> (Vec<f32>, Vec<f32>) {
        self.backend.begin_step(ids, meta);
        let x = self.residual_stream(ids, meta, cache);
        let host = |t: Option<B::Tensor>| t.map(|t| self.backend.to_host(&t)).unwrap_or_default();
        let n = ids.len();
        let hidden = host(self.final_rows(&x, hidden_rows, n));
        (host(self.logits(&x, &meta.logit_rows, n)), hidden)
    }

    /// The step's operations after `begin_step`, leaving the logits of `meta.logit_rows` on the
    /// backend (a device backend captures exactly this part in a graph); `None` when the step
    /// wants no logits (a prefill chunk that samples nothing: no 0-row matmul is asked for).
    pub fn forward_device(
        &self,
        ids: &[u32],
        meta: &AttnMeta,
        cache: &mut B::KvCache,
    ) -> Option<B::Tensor> {
        let x = self.residual_stream(ids, meta, cache);
        self.logits(&x, &meta.logit_rows, ids.len())
    }

    /// Every layer over the batch: the residual stream after the last one.
    fn residual_stream(&self, ids: &[u32], meta: &AttnMeta, cache: &mut B::KvCache) -> B::Tensor {
        let (be, eps) = (&self.backend, self.config.rms_norm_eps);
        // `x` is the residual stream: each output projection adds into it (`linear_add`).
        let mut x = be.embed(&self.embedding, ids);
        if let Some(s) = self.config.attention.embed_scale {
            be.scale_inplace(&mut x, s);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let ctx = self.attention(l, &x, meta, i, cache);
            self.project_add(&mut x, &ctx, &l.wo, l.post_attn_norm.as_ref());
            match &l.moe {
                Some(moe) => self.experts_add(&mut x, &l.ffn_norm, moe, ids.len()),
                None if self.config.attention.gelu_ffn => {
                    let h = be.rms_norm(&x, &l.ffn_norm, eps);
                    let act = be.gelu_mul(
                        &be.linear(&h, &l.w_gate, None),
                        &be.linear(&h, &l.w_up, None),
                    );
                    self.project_add(&mut x, &act, &l.w_down, l.post_ffn_norm.as_ref());
                }
                None => {
                    let act = be.rms_norm_gate_up(&x, &l.ffn_norm, eps, &l.w_gate, &l.w_up);
                    self.project_add(&mut x, &act, &l.w_down, l.post_ffn_norm.as_ref());
                }
            }
        }
        x
    }

    /// `x += a · Wᵀ`, through `post_norm` first when the family norms a block's output
    /// (Gemma) before it joins the residual stream.
    fn project_add(
        &self,
        x: &mut B::Tensor,
        a: &B::Tensor,
        w: &B::Weight,
        post_norm: Option<&B::Vector>,
    ) {
        let be = &self.backend;
        match post_norm {
            None => be.linear_add(x, a, w),
            Some(norm) => {
                let out = be.rms_norm(&be.linear(a, w, None), norm, self.config.rms_norm_eps);
                be.add_inplace(x, &out);
            }
        }
    }

    /// A Mixture-of-Experts block over the `n` rows of `x`, added into it: each token's
    /// normed row goes through its `top_k` experts (one batched pass per expert over the
    /// tokens routed to it), their outputs weighted by the router's probabilities.
    fn experts_add(&self, x: &mut B::Tensor, norm: &B::Vector, moe: &Moe<B>, n: usize) {
        let be = &self.backend;
        let h = be.rms_norm(x, norm, self.config.rms_norm_eps);
        let router_logits = be.linear(&h, &moe.router, None);
        if let Some(table) = &moe.device_table {
            let routing = (moe.top_k, moe.norm_topk_prob);
            return be.experts_add(x, &h, &router_logits, table, routing);
        }
        let logits = be.to_host(&router_logits);
        let e = moe.experts.len();
        // Each expert's tokens and weights, in token order, gathered in one pass.
        let mut routed: Vec<(Vec<usize>, Vec<f32>)> = vec![Default::default(); e];
        for (token, expert, weight) in route_tokens(&logits, n, e, moe.top_k, moe.norm_topk_prob) {
            routed[expert].0.push(token);
            routed[expert].1.push(weight);
        }
        for ([gate, up, down], (rows, scales)) in moe.experts.iter().zip(&routed) {
            if rows.is_empty() {
                continue;
            }
            let act = be.linear_gate_up(&be.gather_rows(&h, rows), gate, up);
            be.scatter_add_scaled(x, rows, &be.linear(&act, down, None), scales);
        }
    }

    /// The final norm of `rows` of the residual stream `x` of `n` rows (`None` for no rows).
    fn final_rows(&self, x: &B::Tensor, rows: &[usize], n: usize) -> Option<B::Tensor> {
        let (be, eps) = (&self.backend, self.config.rms_norm_eps);
        if rows.is_empty() {
            return None;
        }
        let every_row_in_order = rows.iter().copied().eq(0..n);
        Some(if every_row_in_order {
            be.rms_norm(x, &self.final_norm, eps)
        } else {
            be.rms_norm(&be.gather_rows(x, rows), &self.final_norm, eps)
        })
    }

    /// Logits of `rows`: only they go through the final norm and the vocabulary projection.
    fn logits(&self, x: &B::Tensor, rows: &[usize], n: usize) -> Option<B::Tensor> {
        let h = self.final_rows(x, rows, n)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embedding);
        let mut logits = self.backend.linear(&h, head, None);
        if let Some(cap) = self.config.attention.final_logit_softcap {
            self.backend.softcap_inplace(&mut logits, cap);
        }
        Some(logits)
    }

    /// Layer `layer`'s attention norm, q/k/v projections, RoPE and attention over the cache:
    /// the context rows, before the output projection.
    fn attention(
        &self,
        l: &Layer<B>,
        x: &B::Tensor,
        meta: &AttnMeta,
        layer: usize,
        cache: &mut B::KvCache,
    ) -> B::Tensor {
        let (be, c) = (&self.backend, &self.config);
        let [mut q, mut k, v] = be.rms_norm_qkv(
            x,
            &l.attn_norm,
            c.rms_norm_eps,
            [&l.wq, &l.wk, &l.wv],
            [l.q_bias.as_ref(), l.k_bias.as_ref(), l.v_bias.as_ref()],
        );
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            be.head_rms_norm(&mut q, qn, c.head_dim, c.rms_norm_eps);
            be.head_rms_norm(&mut k, kn, c.head_dim, c.rms_norm_eps);
        }
        let rope = match (&self.local_rope, c.window_of_layer(layer)) {
            (Some(local), Some(_)) => local,
            _ => &self.rope,
        };
        be.rope_attention(&mut q, &mut k, &v, rope, meta, layer, cache, c.num_heads)
    }
}

/// Moves one layer's weights onto the backend.
fn load_layer<B: Backend>(backend: &B, l: &LayerWeights) -> Layer<B> {
    let vec = |v: &Option<Vec<f32>>| v.as_ref().map(|v| backend.load_vector(v));
    // Load order is wq, wk, wv, wo, w_gate, w_up, w_down: a device backend may run
    // weights loaded one after another as one matrix.
    let (attn_norm, [wq, wk, wv]) = load_after_norm(backend, &l.attn_norm, [&l.wq, &l.wk, &l.wv]);
    let wo = backend.load_weight(&l.wo);
    // A Mixture-of-Experts block reads the norm itself (its gain cannot fold into a router
    // and every expert at once).
    let (ffn_norm, [w_gate, w_up]) = match &l.moe {
        None => load_after_norm(backend, &l.ffn_norm, [&l.w_gate, &l.w_up]),
        Some(_) => (
            backend.load_vector(&l.ffn_norm),
            [&l.w_gate, &l.w_up].map(|t| backend.load_weight(t)),
        ),
    };
    let moe = l.moe.as_ref().map(|m| {
        let experts: Vec<_> = m
            .experts
            .iter()
            .map(|x| [&x.gate, &x.up, &x.down].map(|t| backend.load_weight(t)))
            .collect();
        Moe {
            router: backend.load_weight(&m.router),
            device_table: backend.prepare_experts(&experts, m.top_k),
            experts,
            top_k: m.top_k,
            norm_topk_prob: m.norm_topk_prob,
        }
    });
    Layer {
        attn_norm,
        wq,
        wk,
        wv,
        wo,
        q_bias: vec(&l.q_bias),
        k_bias: vec(&l.k_bias),
        v_bias: vec(&l.v_bias),
        q_norm: vec(&l.q_norm),
        k_norm: vec(&l.k_norm),
        ffn_norm,
        w_gate,
        w_up,
        w_down: backend.load_weight(&l.w_down),
        moe,
        post_attn_norm: vec(&l.post_attn_norm),
        post_ffn_norm: vec(&l.post_ffn_norm),
    }
}

/// The gain of an RMSNorm and the weights of the projections that read its output. Where the
/// backend folds gains ([`Backend::folds_norm_gains`]) and this one is not already all ones,
/// the weights carry it (`W diag g`) and the norm gets a gain of ones, which computes the same
/// projections up to rounding.
fn load_after_norm<B: Backend, const N: usize>(
    backend: &B,
    gain: &[f32],
    weights: [&RawTensor; N],
) -> (B::Vector, [B::Weight; N]) {
    let folds = weights.iter().all(|t| backend.folds_norm_gains(t.ty));
    if folds && gain.iter().any(|&g| g != 1.0) {
        let folded = weights.map(|t| backend.load_weight(&t.with_column_gain(gain)));
        (backend.load_vector(&vec![1.0; gain.len()]), folded)
    } else {
        (
            backend.load_vector(gain),
            weights.map(|t| backend.load_weight(t)),
        )
    }
}

//! Sampling on the GPU: one token per logits row from per-row parameters, so that only token
//! ids cross PCIe (semantics in kernels/sample.cu: the CPU sampler's candidate set, drawn in
//! vocabulary order).
//!
//! Invariant: a row's uniform number comes from the host (the request's own seeded
//! generator), so a seed gives the same tokens again on the same device.

//! The launch itself is in `step_slots.rs`, whose buffers carry the parameters and tokens.

/// How one logits row is sampled on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
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
}

impl RowSampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
        }
    }
}

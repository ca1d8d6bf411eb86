//! Sampling on the GPU: one token per logits row from per-row parameters, so that only token
//! ids cross PCIe (semantics in kernels/sample.cu: the CPU sampler's candidate set, drawn in
//! vocabulary order).
//!
//! Invariant: a row's uniform number comes from the host (the request's own seeded
//! generator), so a seed gives the same tokens again on the same device.

//! The launch itself is in `step_slots.rs`, whose buffers carry the parameters and tokens.

pub use kr_model::RowSampling;

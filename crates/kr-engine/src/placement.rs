//! Where a model runs and how far its context goes: the device `auto` settles on for the
//! model (the CPU for what the GPU kernels do not do yet), the context limit, which LongRoPE
//! factors that context calls for, and whether the scheduler may release KV blocks behind a
//! sliding window.

use super::EngineConfig;
use crate::runner::DeviceChoice;

/// The window of a model whose every layer slides: its KV blocks behind the window can be
/// released (with some layers global, every block stays needed).
pub(super) fn window_on_every_layer(c: &kr_model::ModelConfig) -> Option<usize> {
    let w = c.attention.sliding_window?;
    (0..c.num_layers)
        .all(|l| c.window_of_layer(l).is_some())
        .then_some(w)
}

/// The device `model` runs on and its context limit under `cfg`: `auto` means the GPU if it
/// can run the model (what its kernels do not do yet, `ModelWeights::beyond_the_gpu_kernels`,
/// runs on the CPU). Every attention kernel honours sliding windows and soft-capped logits.
pub(super) fn device_and_context(
    cfg: &EngineConfig,
    model: &crate::LoadedModel,
) -> (DeviceChoice, usize) {
    let mc = model.config();
    let max_model_len = cfg
        .max_model_len
        .unwrap_or(mc.max_context)
        .min(mc.max_context);
    let mut device = cfg.device;
    if let (DeviceChoice::Auto, Some(what)) = (device, model.weights.beyond_the_gpu_kernels()) {
        if matches!(device.resolve(), DeviceChoice::Cuda(_)) {
            tracing::warn!("the GPU backend cannot run this model: {what}; running on the CPU");
        }
        device = DeviceChoice::Cpu;
    }
    (device, max_model_len)
}

/// LongRoPE rotates with its long factors only when sequences can pass the original context:
/// a context limited to it keeps the short ones (as llama.cpp does for `n_ctx` within the
/// original context, and transformers for sequences within it).
pub(super) fn rotate_for_context(c: &mut kr_model::ModelConfig, max_model_len: usize) {
    if matches!(c.attention.rope, kr_model::RopeExtension::LongRope { .. }) {
        c.max_context = c.max_context.min(max_model_len);
    }
}

#[cfg(test)]
mod tests {
    use super::rotate_for_context;
    use kr_model::RopeExtension;

    #[test]
    fn longrope_keeps_its_short_factors_within_the_original_context() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/reference/hf-tiny/phi3-longrope-f32/config.json");
        let json = serde_json::from_str(&std::fs::read_to_string(&dir).unwrap()).unwrap();
        let full = kr_model::hf::config_from_json(&json, &dir).unwrap();
        let RopeExtension::LongRope {
            short_factor,
            long_factor,
            ..
        } = full.attention.rope.clone()
        else {
            panic!("LongRoPE expected")
        };
        let base = |c: &kr_model::ModelConfig, i: usize, f: f32| c.rope_inv_freq()[i] * f;
        let mut short = full.clone();
        rotate_for_context(&mut short, 32);
        let mut long = full.clone();
        rotate_for_context(&mut long, 48);
        for i in 0..short_factor.len() {
            // inv_freq × factor is the unscaled frequency either way.
            assert!(
                (base(&short, i, short_factor[i]) - base(&long, i, long_factor[i])).abs() < 1e-6
            );
        }
        assert_ne!(short.rope_inv_freq(), long.rope_inv_freq());
    }
}

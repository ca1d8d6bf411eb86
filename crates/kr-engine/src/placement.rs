//! Where a model runs and how far its context goes: the device `auto` settles on for the
//! model (the CPU for what the GPU kernels do not do yet), the context limit a device can
//! honour exactly, and whether the scheduler may release KV blocks behind a sliding window.

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
/// can run the model (what its kernels do not do yet — Gemma, experts, partial rotation —
/// runs on the CPU), and on the GPU, whose attention kernels see every cached key, a sliding
/// window is exact only while the context fits in it.
pub(super) fn device_and_context(
    cfg: &EngineConfig,
    model: &crate::LoadedModel,
) -> (DeviceChoice, usize) {
    let mc = model.config();
    let mut max_model_len = cfg
        .max_model_len
        .unwrap_or(mc.max_context)
        .min(mc.max_context);
    let mut device = cfg.device;
    if let (DeviceChoice::Auto, Some(what)) = (device, model.weights.beyond_the_gpu_kernels()) {
        if matches!(device.resolve(), DeviceChoice::Cuda(_)) {
            tracing::warn!("the GPU backend does not support {what} yet; running on the CPU");
        }
        device = DeviceChoice::Cpu;
    }
    if let (DeviceChoice::Cuda(_), Some(w)) = (device.resolve(), mc.attention.sliding_window) {
        if w < max_model_len {
            tracing::warn!(window = w, "sliding-window attention is not implemented on the GPU yet: the context is limited to the window");
            max_model_len = w;
        }
    }
    (device, max_model_len)
}

//! The host and device buffers of steps in flight: two slots, taken by alternate
//! steps, so that the host can write and launch step N+1 while the GPU still runs step N, and
//! read step N's tokens after that. A sampled step's tokens can feed the next step's input
//! ids on the device (`CudaBackend::feed_ids_from`), so the host never waits for them first.
//!
//! Invariants:
//! - the host writes a slot's pinned buffers only after the GPU has passed every copy that
//!   reads them: the slot's event is recorded after `begin_step`'s metadata copies (and again
//!   after a sampled step's token copy), and `begin_step` waits for it before reusing the
//!   slot;
//! - a slot's pinned tokens are read only after its event (`collect_tokens`);
//! - a slot's device tokens stay until its next sampled step, in stream order, so a copy of
//!   them queued before that step reads the values of the step that wrote them.

use super::{grid1, CudaBackend, CudaTensor, RowSampling};
use crate::device::{DeviceBuffer, Gpu, PinnedWords};
use crate::error::{driver, CudaError, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, LaunchConfig};

/// Words per row in the sampling kernel's parameter array (SAMPLE_PARAMS in sample.cu): five
/// floats, then the index of the row's mask of allowed tokens (NO_MASK: none).
pub(super) const SAMPLE_PARAMS: usize = 6;
const NO_MASK: u32 = u32::MAX;
const SLOTS: usize = 2;

struct Slot {
    /// Step metadata in the layout of `meta.rs`.
    staging: PinnedWords,
    /// Sampling parameters (f32 bits), `SAMPLE_PARAMS` per row.
    params: PinnedWords,
    /// The sampled tokens, copied back.
    tokens: PinnedWords,
    /// Masks of allowed tokens of the step's masked rows, packed, `mask_words` each.
    masks: PinnedWords,
    dev_masks: DeviceBuffer,
    dev_params: DeviceBuffer,
    dev_tokens: DeviceBuffer,
    /// Recorded after the slot's last copy of a step the host has not waited for.
    done: CudaEvent,
    outstanding: bool,
}

impl Slot {
    /// Records `done` after the copies queued so far that use this slot.
    fn mark(&mut self, gpu: &Gpu) -> Result<()> {
        self.done
            .record(&gpu.stream)
            .map_err(driver("recording an event"))?;
        self.outstanding = true;
        Ok(())
    }

    /// Waits until the GPU is past the last `mark` (at once if nothing is outstanding).
    fn wait(&mut self, what: &str) -> Result<()> {
        if self.outstanding {
            self.done.synchronize().map_err(driver(what))?;
            self.outstanding = false;
        }
        Ok(())
    }
}

/// A sampled step whose tokens are on their way to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledTokens {
    slot: usize,
    rows: usize,
}

impl SampledTokens {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

pub(super) struct StepSlots {
    slots: Vec<Slot>,
    current: usize,
    /// Rows a slot holds (sampled tokens per step).
    max_rows: usize,
    /// Masked rows a slot holds (one per sequence), and words per mask (vocab / 32).
    max_masked: usize,
    mask_words: usize,
}

/// What a slot holds: metadata words, sampled rows, masked rows and the vocabulary.
pub(super) struct SlotSizes {
    pub meta_words: usize,
    pub max_rows: usize,
    pub max_masked: usize,
    pub vocab: usize,
}

impl StepSlots {
    pub(super) fn new(gpu: &Gpu, sizes: SlotSizes) -> Result<Self> {
        let (max_rows, max_masked) = (sizes.max_rows, sizes.max_masked);
        let mask_words = sizes.vocab.div_ceil(32);
        let slot = || -> Result<Slot> {
            Ok(Slot {
                staging: PinnedWords::new(gpu, sizes.meta_words)?,
                params: PinnedWords::new(gpu, max_rows * SAMPLE_PARAMS)?,
                tokens: PinnedWords::new(gpu, max_rows)?,
                masks: PinnedWords::new(gpu, max_masked * mask_words)?,
                dev_masks: gpu.alloc(max_masked * mask_words * 4)?,
                dev_params: gpu.alloc(max_rows * SAMPLE_PARAMS * 4)?,
                dev_tokens: gpu.alloc(max_rows * 4)?,
                done: gpu
                    .ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(driver("creating an event"))?,
                outstanding: false,
            })
        };
        Ok(Self {
            slots: (0..SLOTS).map(|_| slot()).collect::<Result<_>>()?,
            current: 0,
            max_rows,
            max_masked,
            mask_words,
        })
    }

    /// Moves to the other slot for a new step and returns its staging words, once the GPU
    /// is done reading them.
    pub(super) fn next_staging(&mut self) -> Result<&mut [u32]> {
        self.current = (self.current + 1) % SLOTS;
        let slot = &mut self.slots[self.current];
        slot.wait("waiting for an earlier step")?;
        Ok(slot.staging.as_mut_slice())
    }

    /// Marks the GPU's reads of the current slot's staging (the step's metadata copies,
    /// queued just before): the slot's next `next_staging` waits for them. Without it, steps
    /// that sample nothing (prefill chunks) never wait, and a third one in a row could
    /// rewrite the words the first one's copy has yet to read.
    pub(super) fn fence_current(&mut self, gpu: &Gpu) -> Result<()> {
        self.slots[self.current].mark(gpu)
    }

    /// The device tokens of a sampled step (to feed the next step's ids).
    pub(super) fn device_tokens(&self, step: SampledTokens) -> u64 {
        self.slots[step.slot].dev_tokens.ptr
    }
}

/// Each row's parameters into `params` (SAMPLE_PARAMS words each) and the masks of the masked
/// ones, `words` each, packed in order into `masks`, each row naming its mask's index.
fn pack_rows(rows: &[RowSampling], params: &mut [u32], masks: &mut [u32], words: usize) {
    let mut next = 0;
    for (p, r) in params.chunks_exact_mut(SAMPLE_PARAMS).zip(rows) {
        let values = [r.temperature, r.top_k as f32, r.top_p, r.min_p, r.uniform];
        for (w, v) in p.iter_mut().zip(values) {
            *w = v.to_bits();
        }
        p[5] = match &r.allowed {
            Some(a) => {
                let dst = &mut masks[next * words..(next + 1) * words];
                dst.fill(0);
                let k = a.len().min(words);
                dst[..k].copy_from_slice(&a[..k]);
                next += 1;
                (next - 1) as u32
            }
            None => NO_MASK,
        };
    }
}

impl CudaBackend {
    /// Queues sampling one token for each of the first `rows.len()` rows of `logits` and
    /// their copy to the host; [`CudaBackend::collect_tokens`] reads them. At most as many
    /// rows as a step has tokens.
    pub fn sample_async(&self, logits: &CudaTensor, rows: &[RowSampling]) -> SampledTokens {
        let n = logits.rows.min(rows.len());
        self.queue_sample(logits.ptr, logits.cols, &rows[..n])
    }

    /// `sample_async` of rows of `cols` logits from `x` (one per entry of `rows`).
    fn queue_sample(&self, x: u64, cols: usize, rows: &[RowSampling]) -> SampledTokens {
        let n = rows.len();
        let mut slots = self.step_slots.borrow_mut();
        let (max_rows, current) = (slots.max_rows, slots.current);
        let (max_masked, mask_words) = (slots.max_masked, slots.mask_words);
        let masked = rows.iter().filter(|r| r.allowed.is_some()).count();
        if n > max_rows || masked > max_masked || (masked > 0 && cols.div_ceil(32) > mask_words) {
            self.record(Err(CudaError::Unsupported(format!(
                "{n} sampled rows ({masked} masked, {cols} columns) in one step (at most \
                 {max_rows}, {max_masked} masked, {} columns)",
                32 * mask_words
            ))));
            return SampledTokens {
                slot: current,
                rows: 0,
            };
        }
        let slot = &mut slots.slots[current];
        let words = cols.div_ceil(32);
        let (params, masks) = (slot.params.as_mut_slice(), slot.masks.as_mut_slice());
        pack_rows(rows, params, masks, words);
        let (out, pp, mp) = (slot.dev_tokens.ptr, slot.dev_params.ptr, slot.dev_masks.ptr);
        if self.error.borrow().is_none() {
            self.record(self.gpu.copy_to_device(pp, &params[..n * SAMPLE_PARAMS]));
            if masked > 0 {
                self.record(self.gpu.copy_to_device(mp, &masks[..masked * words]));
            }
        }
        let cols = cols as i32;
        if masked > 0 {
            let grid = LaunchConfig {
                grid_dim: (n as u32, words.div_ceil(256) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "mask_logits", grid, x, cols, pp, mp);
        }
        launch!(self, "sample", grid1(n, 1024), out, x, cols, pp);
        if self.error.borrow().is_none() {
            let host = &mut slot.tokens.as_mut_slice()[..n];
            self.record(self.gpu.copy_to_host_async(host, out));
            self.record(slot.mark(&self.gpu));
        }
        SampledTokens {
            slot: current,
            rows: n,
        }
    }

    /// Waits for a step queued by [`CudaBackend::sample_async`] and returns its tokens.
    /// Call it before the slot's next use but one (the model keeps at most two steps out).
    pub fn collect_tokens(&self, step: SampledTokens) -> Vec<u32> {
        let mut slots = self.step_slots.borrow_mut();
        let slot = &mut slots.slots[step.slot];
        self.record(slot.wait("waiting for sampled tokens"));
        slot.tokens.as_mut_slice()[..step.rows].to_vec()
    }

    /// One token for each of the first `rows.len()` rows of `logits` (any number of rows:
    /// more than a slot holds, or more masked ones, go in several rounds).
    pub fn sample(&self, logits: &CudaTensor, rows: &[RowSampling]) -> Vec<u32> {
        let n = logits.rows.min(rows.len());
        let per_round = {
            let slots = self.step_slots.borrow();
            match rows.iter().any(|r| r.allowed.is_some()) {
                true => slots.max_rows.min(slots.max_masked),
                false => slots.max_rows,
            }
        };
        let row_bytes = (logits.cols * self.dtype.size()) as u64;
        let mut tokens = Vec::with_capacity(n);
        for (i, chunk) in rows[..n].chunks(per_round).enumerate() {
            let x = logits.ptr + (i * per_round) as u64 * row_bytes;
            let step = self.queue_sample(x, logits.cols, chunk);
            tokens.extend(self.collect_tokens(step));
        }
        tokens
    }

    /// Makes the next `begin_step` copy `step`'s tokens over the first `step.rows()` input
    /// ids on the device (after its own upload, in stream order), so that a step can start
    /// before its inputs reach the host.
    pub fn feed_ids_from(&self, step: SampledTokens) {
        let src = self.step_slots.borrow().device_tokens(step);
        self.feed.set(Some((src, step.rows)));
    }
}

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
use cudarc::driver::CudaEvent;

/// Floats per row in the sampling kernel's parameter array (SAMPLE_PARAMS in sample.cu).
pub(super) const SAMPLE_PARAMS: usize = 5;
const SLOTS: usize = 2;

struct Slot {
    /// Step metadata in the layout of `meta.rs`.
    staging: PinnedWords,
    /// Sampling parameters (f32 bits), `SAMPLE_PARAMS` per row.
    params: PinnedWords,
    /// The sampled tokens, copied back.
    tokens: PinnedWords,
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
}

impl StepSlots {
    pub(super) fn new(gpu: &Gpu, meta_words: usize, max_rows: usize) -> Result<Self> {
        let slot = || -> Result<Slot> {
            Ok(Slot {
                staging: PinnedWords::new(gpu, meta_words)?,
                params: PinnedWords::new(gpu, max_rows * SAMPLE_PARAMS)?,
                tokens: PinnedWords::new(gpu, max_rows)?,
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
        if n > max_rows {
            self.record(Err(CudaError::Unsupported(format!(
                "{n} sampled rows in one step (at most {max_rows})"
            ))));
            return SampledTokens {
                slot: current,
                rows: 0,
            };
        }
        let slot = &mut slots.slots[current];
        let params = slot.params.as_mut_slice();
        for (p, r) in params.chunks_exact_mut(SAMPLE_PARAMS).zip(rows) {
            let values = [r.temperature, r.top_k as f32, r.top_p, r.min_p, r.uniform];
            for (w, v) in p.iter_mut().zip(values) {
                *w = v.to_bits();
            }
        }
        let (out, pp) = (slot.dev_tokens.ptr, slot.dev_params.ptr);
        if self.error.borrow().is_none() {
            let words = &params[..n * SAMPLE_PARAMS];
            self.record(self.gpu.copy_to_device(pp, words));
        }
        let cols = cols as i32;
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
    /// more than a slot holds go in several rounds).
    pub fn sample(&self, logits: &CudaTensor, rows: &[RowSampling]) -> Vec<u32> {
        let n = logits.rows.min(rows.len());
        let per_round = self.step_slots.borrow().max_rows;
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

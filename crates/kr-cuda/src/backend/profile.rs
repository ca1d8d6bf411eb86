//! Per-launch GPU timing for the benchmark's kernel breakdown: when enabled, every kernel
//! launch and cuBLASLt product is bracketed by two events on the stream.
//!
//! Invariants: off by default and never on inside a graph capture (events would be captured);
//! enabling costs two event creations per launch, so it is for eager profiling steps only.

use super::{grid1, CudaBackend};
use crate::device::DeviceBuffer;
use crate::error::{driver, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{result, CudaEvent, CudaStream};
use std::sync::Arc;

/// A `spin_wait` kernel holding the backend's stream, and what releases it.
pub struct StreamHold {
    flag: DeviceBuffer,
    stream: Arc<CudaStream>,
}

/// Launches recorded while profiling: name, start event, end event.
pub(super) type Timings = Vec<(&'static str, CudaEvent, CudaEvent)>;

impl CudaBackend {
    /// Starts (`true`) or stops recording per-launch timings; starting clears old ones.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.borrow_mut() = on.then(Vec::new);
    }

    /// The recorded launches as `(name, microseconds)`, in launch order (waits for the GPU).
    pub fn take_profile(&self) -> Result<Vec<(&'static str, f64)>> {
        let timings = self
            .profile
            .borrow_mut()
            .replace(Vec::new())
            .unwrap_or_default();
        if let Some((_, _, last)) = timings.last() {
            last.synchronize().map_err(driver("waiting for an event"))?;
        }
        timings
            .iter()
            .map(|(name, start, end)| {
                let ms = start.elapsed_ms(end).map_err(driver("reading an event"))?;
                Ok((*name, ms as f64 * 1e3))
            })
            .collect()
    }

    /// Queues a kernel that holds the stream until [`Self::release_stream`] (or about a
    /// second), so that launches queued meanwhile run back to back and their events time the
    /// kernels rather than the host's launch latency. Nothing may wait on the stream before
    /// the release.
    pub fn hold_stream(&self) -> Result<StreamHold> {
        let flag = self.gpu.upload(&[0u32])?;
        let stream = self
            .gpu
            .ctx
            .new_stream()
            .map_err(driver("creating a stream"))?;
        let fp = flag.ptr;
        launch!(self, "spin_wait", grid1(1, 1), fp);
        Ok(StreamHold { flag, stream })
    }

    /// Lets a held stream run (the flag is written from another stream).
    pub fn release_stream(&self, hold: &StreamHold) -> Result<()> {
        let cu = hold.stream.cu_stream();
        // SAFETY: the flag buffer holds one u32 and outlives the copy (synchronised below).
        unsafe { result::memcpy_htod_async(hold.flag.ptr, &[1u32], cu) }
            .map_err(driver("releasing the stream"))?;
        hold.stream
            .synchronize()
            .map_err(driver("releasing the stream"))
    }

    /// An event recorded before a launch, when profiling.
    pub(super) fn profile_begin(&self) -> Option<CudaEvent> {
        if self.profile.borrow().is_none() {
            return None;
        }
        self.recorded_event()
    }

    /// Records the end of the launch `name` began at `start`.
    pub(super) fn profile_end(&self, name: &'static str, start: Option<CudaEvent>) {
        let Some(start) = start else { return };
        if let Some(end) = self.recorded_event() {
            if let Some(t) = self.profile.borrow_mut().as_mut() {
                t.push((name, start, end));
            }
        }
    }

    fn recorded_event(&self) -> Option<CudaEvent> {
        let ev = self
            .gpu
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .ok()?;
        ev.record(&self.gpu.stream).ok()?;
        Some(ev)
    }
}

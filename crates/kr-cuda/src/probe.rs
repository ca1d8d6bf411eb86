//! Device measurements a benchmark needs beside the model's own steps: copy bandwidth,
//! GEMM peak, GEMV weight bandwidth, and GPU-side event marks between launches. They
//! allocate their own buffers (never inside a step) and leave the model's state alone.

use crate::backend::{CudaBackend, DType};
use crate::device::Gpu;
use crate::error::{driver, Result};
use crate::gemm::GemmType;
use crate::model::CudaModel;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use std::sync::Arc;
use std::time::Instant;

/// The shortest of `times` (a probe reports the peak the device reaches).
fn fastest(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Events recorded on the model's stream: `mark(i)` between launches, `seconds(i, j)` the
/// GPU time between two marks once both have run.
pub struct EventMarks {
    gpu: Arc<Gpu>,
    events: Vec<CudaEvent>,
}

impl EventMarks {
    pub fn mark(&self, i: usize) -> Result<()> {
        self.events[i]
            .record(&self.gpu.stream)
            .map_err(driver("recording an event"))
    }

    pub fn seconds(&self, i: usize, j: usize) -> Result<f64> {
        let ms = self.events[i]
            .elapsed_ms(&self.events[j])
            .map_err(driver("reading an event"))?;
        Ok(ms as f64 / 1e3)
    }
}

impl CudaModel {
    /// `n` event marks on this model's stream.
    pub fn event_marks(&self, n: usize) -> Result<EventMarks> {
        let gpu = self.backend().gpu.clone();
        let events = (0..n)
            .map(|_| {
                gpu.ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(driver("creating an event"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EventMarks { gpu, events })
    }

    /// Device-to-device copy bandwidth (read + write bytes per second) over 2 GiB, best of 5.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let be = self.backend();
        let bytes = 1usize << 30;
        let a = be.gpu.alloc(bytes)?;
        let b = be.gpu.alloc(bytes)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            be.gpu.copy_on_device(b.ptr, a.ptr, bytes)?;
            be.gpu.synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        Ok(2.0 * bytes as f64 / fastest(&times))
    }

    /// GEMM throughput in FLOP/s of a `tokens × hidden → intermediate` product in the
    /// compute dtype (the shape of the FFN's up projection), best of 5 after a warm-up.
    pub fn gemm_peak(&self, tokens: usize) -> Result<f64> {
        let be = self.backend();
        let c = self.config();
        let (rows, cols) = (c.intermediate_size, c.hidden_size);
        let e = be.dtype.size();
        let w = be.gpu.alloc(rows * cols * e)?;
        let x = be.gpu.alloc(tokens * cols * e)?;
        let y = be.gpu.alloc(tokens * rows * e)?;
        let ty = match be.dtype {
            DType::Bf16 => GemmType::Bf16,
            DType::F32 => GemmType::F32,
        };
        let lt = crate::gemm::Lt::new(&be.gpu)?;
        let mut times = Vec::new();
        for i in 0..6 {
            let t0 = Instant::now();
            lt.matmul(
                &be.gpu,
                ty,
                y.ptr,
                x.ptr,
                w.ptr,
                (tokens, rows, cols),
                rows,
                false,
            )?;
            be.gpu.synchronize()?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * (tokens * rows * cols) as f64 / fastest(&times))
    }

    /// Weight bytes per second the batch-1 GEMV kernel streams for the model's largest
    /// matrix shape (the FFN's `intermediate × hidden`), over 20 back-to-back products.
    pub fn gemv_bandwidth(&self) -> Result<f64> {
        use kr_model::Backend;
        let be: &CudaBackend = self.backend();
        let c = self.config();
        let (rows, cols) = (c.intermediate_size, c.hidden_size);
        let probe = kr_model::RawTensor::from_f32("probe", rows, cols, &vec![0.01; rows * cols]);
        let w = be.load_weight(&probe);
        let x = be.upload_tensor(1, cols, &vec![0.5; cols]);
        be.linear(&x, &w, None);
        be.gpu.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..20 {
            be.linear(&x, &w, None);
        }
        be.gpu.synchronize()?;
        let secs = t0.elapsed().as_secs_f64();
        if let Some(e) = be.take_error() {
            return Err(e);
        }
        Ok(20.0 * (rows * cols * be.dtype.size()) as f64 / secs)
    }
}

//! kr-cuda: the CUDA backend. Built without any CUDA toolkit: cudarc opens
//! the driver, NVRTC and cuBLASLt at run time, so the one binary runs with or without a GPU.
//!
//! - [`device`]: context, stream, NVRTC-compiled kernels (cached on disk), buffers;
//! - [`pool`]: the step workspace (no device allocation inside a step);
//! - [`meta`]: step metadata at fixed device addresses; padding decode batches to a bucket;
//! - [`gemm`]: cuBLASLt products with per-shape plans;
//! - [`backend`]: the Backend operations;
//! - [`model`]: a decoder + KV cache on the GPU, with CUDA graphs for decode steps;
//! - [`probe`]: device measurements for benchmarks (bandwidth, GEMM peak, event marks);
//! - [`tuning`]: the environment switches for comparison runs, declared in one table.

pub mod backend;
pub mod device;
pub mod error;
pub mod gemm;
pub mod meta;
pub mod model;
pub mod pool;
pub mod probe;
pub mod tuning;

pub use backend::{CudaBackend, CudaLimits, DType, RowSampling};
pub use device::{probe, DeviceInfo, Gpu};
pub use error::{CudaError, Result};
pub use model::{CudaModel, CudaModelOptions};
pub use probe::EventMarks;

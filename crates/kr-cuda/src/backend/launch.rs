//! Kernel launches through `cuLaunchKernelEx`, with programmatic dependent launch (PDL) on
//! compute capability 9.0+: a kernel may be scheduled while the one before it in the stream
//! is still running, which hides most of the launch latency between the ~10 small kernels
//! of each layer (also inside CUDA graphs, where the edges become programmatic).
//!
//! Invariants: every kernel runs `PDL_ENTRY()` (kernels.cu, `griddepcontrol.wait`) before it
//! reads anything the previous kernels write, so it sees all of it, exactly as with plain
//! stream order; before it a kernel only reads what no step writes (weights, step metadata,
//! RoPE frequencies) or what only earlier steps wrote (the decode attention's cached keys
//! of earlier tokens: a kernel starts only after the one two before it has finished, so
//! every earlier step is done). `KR_CUDA_PDL=0` turns PDL off (plain launches) for
//! comparison. A launch may also ask for thread-block clusters along z (sm_90+).

use super::CudaBackend;
use crate::device::Gpu;
use crate::tuning::switched_off;
use cudarc::driver::sys::{
    CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig,
};
use cudarc::driver::{CudaFunction, DriverError, LaunchConfig};
use std::ffi::c_void;

/// Whether to launch with PDL on this GPU (9.0+, unless `KR_CUDA_PDL=0`).
pub(super) fn pdl_wanted(gpu: &Gpu) -> bool {
    gpu.info.compute_capability.0 >= 9 && !switched_off("KR_CUDA_PDL")
}

/// `KR_CUDA_SKIP_KERNELS=name,name`: kernels (names without the dtype suffix) that are not
/// launched, so that the time a kernel really costs inside a CUDA graph can be read off as a
/// difference of step times. The outputs are then wrong; a warning says so.
pub(super) fn skipped_kernels() -> Vec<String> {
    let names: Vec<String> = crate::tuning::value("KR_CUDA_SKIP_KERNELS")
        .unwrap_or_default()
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if !names.is_empty() {
        tracing::warn!("KR_CUDA_SKIP_KERNELS: not launching {names:?}; outputs will be wrong");
    }
    names
}

/// A launch's grid and blocks, and the cluster size along z (1: no clusters).
#[derive(Clone, Copy)]
pub(super) struct KernelLaunch {
    pub cfg: LaunchConfig,
    pub cluster_z: u32,
}

impl From<LaunchConfig> for KernelLaunch {
    fn from(cfg: LaunchConfig) -> Self {
        KernelLaunch { cfg, cluster_z: 1 }
    }
}

impl CudaBackend {
    /// Whether `name` is skipped (see [`skipped_kernels`]).
    pub(super) fn skipped(&self, name: &str) -> bool {
        self.skip_kernels.iter().any(|k| k == name)
    }

    /// Launches `f` on the backend's stream with `params` (one pointer per kernel parameter).
    ///
    /// # Safety
    /// `params` must match the kernel's parameters in number, order and type, and every
    /// device pointer among them must cover what the kernel accesses.
    pub(super) unsafe fn launch_raw(
        &self,
        f: &CudaFunction,
        launch: impl Into<KernelLaunch>,
        params: &mut [*mut c_void],
    ) -> Result<(), DriverError> {
        let KernelLaunch { cfg, cluster_z } = launch.into();
        self.gpu.ctx.bind_to_thread()?;
        // SAFETY: plain C structs of integers and unions; unused slots are never read.
        let mut attrs: [CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut used = 0;
        if self.pdl {
            // SAFETY: a plain C union of attribute values; the PDL flag is its `int` member.
            let mut value: CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
            value.programmaticStreamSerializationAllowed = 1;
            attrs[used] = CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            };
            used += 1;
        }
        if cluster_z > 1 {
            // SAFETY: as above; the cluster shape is its `clusterDim` member.
            let mut value: CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
            value.clusterDim.x = 1;
            value.clusterDim.y = 1;
            value.clusterDim.z = cluster_z;
            attrs[used] = CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value,
            };
            used += 1;
        }
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.gpu.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: used as u32,
        };
        // SAFETY: the config and attribute live across the call; the caller vouches for
        // `params` (see above).
        unsafe {
            cudarc::driver::sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
        }
    }
}

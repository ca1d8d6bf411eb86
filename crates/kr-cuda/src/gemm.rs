//! Matrix products through cuBLASLt: `y[t, rows] = x[t, cols] · W[rows, cols]ᵀ` with row-major
//! activations and weights, f32 accumulation. One plan (descriptors + the heuristic's chosen
//! algorithm) per shape, made on first use and kept, so a step does no planning after warm-up
//! and a captured graph replays the same algorithm.
//!
//! In cuBLASLt's column-major terms this is `Yᵀ = op(W)·Xᵀ` with `op = transpose`:
//! A = W seen as `cols × rows` (ld = cols), B = X seen as `cols × t`, C = Y seen as `rows × t`.

use crate::device::{DeviceBuffer, Gpu};
use crate::error::{blas, CudaError, Result};
use cudarc::cublaslt::{result, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

const WORKSPACE_BYTES: usize = 32 << 20;

/// Element type of a product's operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmType {
    F32,
    Bf16,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are plain handles used from the engine thread only, one call at a time
// (the plan map is behind a mutex).
unsafe impl Send for Plan {}

/// What a plan is made for: tokens, rows, cols, the output's row stride, element type.
type PlanKey = (usize, usize, usize, usize, GemmType);

/// A cuBLASLt handle, its workspace and the plans made so far.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: see Plan; the handle is used under the plans mutex.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        gpu.bind()?;
        let handle = crate::device::quietly(result::create_handle)
            .map_err(|_| {
                CudaError::Unavailable(
                    "the cuBLASLt library (libcublasLt.so) could not be loaded; add the CUDA \
                     lib64 directory to LD_LIBRARY_PATH"
                        .into(),
                )
            })?
            .map_err(blas("creating the cuBLASLt handle"))?;
        Ok(Self {
            handle,
            workspace: gpu.alloc(WORKSPACE_BYTES)?,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// `y = x · wᵀ` (`y += x · wᵀ` where `accumulate`, in place: cuBLASLt allows C = D with
    /// one layout) for `(t, rows, cols)`: `t` rows of `cols` inputs and `rows` outputs, all
    /// device pointers; each row of `y` starts `ldy` elements after the previous one (`rows`
    /// for a whole product, more when `w` is a slice of a larger matrix's rows).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        gpu: &Gpu,
        ty: GemmType,
        y: u64,
        x: u64,
        w: u64,
        (t, rows, cols): (usize, usize, usize),
        ldy: usize,
        accumulate: bool,
    ) -> Result<()> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| CudaError::Unsupported("a poisoned cuBLASLt plan cache".into()))?;
        let key = (t, rows, cols, ldy, ty);
        if !plans.contains_key(&key) {
            let plan = self.plan(ty, (t, rows, cols), ldy)?;
            plans.insert(key, plan);
        }
        let p = &plans[&key];
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        // SAFETY: pointers cover the shapes of the plan; workspace is ours; one stream.
        unsafe {
            result::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                p.layouts[0],
                x as *const c_void,
                p.layouts[1],
                y as *const c_void,
                p.layouts[2],
                y as *mut c_void,
                p.layouts[2],
                &p.algo,
                self.workspace.ptr as *mut c_void,
                self.workspace.bytes,
                gpu.stream.cu_stream() as *mut _,
            )
        }
        .map_err(blas("matmul"))
    }

    fn plan(
        &self,
        ty: GemmType,
        (t, rows, cols): (usize, usize, usize),
        ldy: usize,
    ) -> Result<Plan> {
        let dt = match ty {
            GemmType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            GemmType::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        let (t, rows, cols) = (t as u64, rows as u64, cols as u64);
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(blas("creating a matmul descriptor"))?;
        // cublasOperation_t is an int32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let trans: i32 = 1;
        // SAFETY: the attribute buffer is a live cublasOperation_t.
        unsafe {
            result::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const _ as *const c_void,
                std::mem::size_of_val(&trans),
            )
        }
        .map_err(blas("setting transpose"))?;
        let layout = |r, c, ld| result::create_matrix_layout(dt, r, c, ld);
        let a = layout(cols, rows, cols as i64).map_err(blas("layout of W"))?;
        let b = layout(cols, t, cols as i64).map_err(blas("layout of x"))?;
        let c = layout(rows, t, ldy as i64).map_err(blas("layout of y"))?;
        let pref = result::create_matmul_pref().map_err(blas("creating a preference"))?;
        let ws = self.workspace.bytes as u64;
        // SAFETY: live handles and a live u64 attribute; pref is destroyed once below.
        let heuristic = unsafe {
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .and_then(|_| result::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref))
            .inspect(|_| {
                let _ = result::destroy_matmul_pref(pref);
            })
        }
        .map_err(blas("choosing an algorithm"))?;
        Ok(Plan {
            desc,
            layouts: [a, b, c],
            algo: heuristic.algo,
        })
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            for (_, p) in plans.drain() {
                // SAFETY: each handle was created once by `plan` and is destroyed once here.
                unsafe {
                    let _ = result::destroy_matmul_desc(p.desc);
                    for l in p.layouts {
                        let _ = result::destroy_matrix_layout(l);
                    }
                }
            }
        }
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

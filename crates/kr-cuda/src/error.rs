//! The one error type of the CUDA backend. Driver, NVRTC and cuBLASLt failures keep the
//! library's own message; `Unavailable` says what is missing on a machine without a GPU.

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU: the driver library cannot be loaded, or it reports no device.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("CUDA driver error during {context}: {message}")]
    Driver { context: String, message: String },
    #[error("NVRTC could not compile the kernels: {0}")]
    Compile(String),
    #[error("cuBLASLt error during {context}: {message}")]
    Blas { context: String, message: String },
    /// The model or request needs something this backend does not implement.
    #[error("the CUDA backend does not support {0}")]
    Unsupported(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;

/// Driver results after which the CUDA context is corrupt: every later call fails.
const FATAL_DRIVER_RESULTS: &[&str] = &[
    "ILLEGAL_ADDRESS",
    "ILLEGAL_INSTRUCTION",
    "MISALIGNED_ADDRESS",
    "INVALID_ADDRESS_SPACE",
    "INVALID_PC",
    "LAUNCH_FAILED",
    "HARDWARE_STACK_ERROR",
    "ECC_UNCORRECTABLE",
    "ASSERT",
    "DEVICE_UNAVAILABLE",
    "CONTEXT_IS_DESTROYED",
];

impl CudaError {
    /// Whether the device context is lost (illegal address, launch failure, ECC error…):
    /// nothing on this GPU can run in this process any more.
    pub fn is_fatal(&self) -> bool {
        match self {
            CudaError::Driver { message, .. } => {
                FATAL_DRIVER_RESULTS.iter().any(|r| message.contains(r))
            }
            _ => false,
        }
    }
}

/// Attaches what was being done to a driver error.
pub(crate) fn driver(context: &str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver {
        context: context.to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn blas(
    context: &str,
) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> CudaError + '_ {
    move |e| CudaError::Blas {
        context: context.to_string(),
        message: format!("{e:?}"),
    }
}

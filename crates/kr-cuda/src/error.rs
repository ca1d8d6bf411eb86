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

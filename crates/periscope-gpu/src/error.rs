//! Errors of GPU sources and the resource tracker.

/// Why a GPU source could not produce a sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The GPU library or driver cannot be used on this machine (no NVIDIA driver, no
    /// `libnvidia-ml.so.1`, no permission). The collector backs off and retries rarely.
    #[error(
        "GPU readings are unavailable: {reason}; with NVIDIA GPUs, check that the driver is \
         installed and loaded, matches its library (libnvidia-ml.so.1) and lets this process \
         in (`nvidia-smi` run as the service's user tells); without, leave the GPU collector off"
    )]
    Unavailable {
        /// What the library or driver said.
        reason: String,
    },
    /// The library works but reading the devices failed this time (a lost GPU, a driver error).
    #[error("reading the GPUs failed: {reason}; check `nvidia-smi` and the driver logs")]
    Read {
        /// What the library said.
        reason: String,
    },
}

impl GpuError {
    /// An [`GpuError::Unavailable`] with this reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
        }
    }

    /// A [`GpuError::Read`] with this reason.
    pub fn read(reason: impl Into<String>) -> Self {
        Self::Read {
            reason: reason.into(),
        }
    }
}

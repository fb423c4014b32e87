//! The [`GpuSource`] trait: where samples come from.

use crate::{GpuError, GpuSample};

/// What one sample should include beyond the cheap per-device readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleRequest {
    /// List the processes on each device with their memory.
    pub processes: bool,
    /// Measure PCIe throughput (NVML spends about 20 ms per device and direction on it).
    pub pcie: bool,
}

/// A source of GPU readings: NVML ([`NvmlSource`](crate::NvmlSource)) or a fake
/// ([`FakeSource`](crate::FakeSource)).
///
/// `sample` may block (driver calls): it runs on the sampling thread, never on a request path.
pub trait GpuSource: Send + 'static {
    /// A short name for logs and `/debug/status` (`"nvml"`, `"fake"`).
    fn name(&self) -> &'static str;

    /// Reads every device. A value a device does not support is `None`, not an error; an error
    /// means nothing could be read.
    fn sample(&mut self, request: SampleRequest) -> Result<GpuSample, GpuError>;
}

impl GpuSource for Box<dyn GpuSource> {
    fn name(&self) -> &'static str {
        self.as_ref().name()
    }

    fn sample(&mut self, request: SampleRequest) -> Result<GpuSample, GpuError> {
        self.as_mut().sample(request)
    }
}

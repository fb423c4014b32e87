//! A [`GpuSource`] that returns what it is told: for tests, demos and machines without a GPU.

use std::sync::{Arc, Mutex, PoisonError};

use crate::{
    DeviceSample, GpuError, GpuProcess, GpuSample, GpuSource, SampleRequest, ThrottleReason,
};

/// A fake GPU source. Its [`FakeControl`] changes what it returns while a collector runs it.
///
/// Like NVML, it leaves out process lists and PCIe throughput unless the request asks for them.
///
/// ```
/// use periscope_gpu::{FakeSource, GpuSource, SampleRequest};
///
/// let mut source = FakeSource::demo(2);
/// let sample = source.sample(SampleRequest::default()).unwrap();
/// assert_eq!(sample.devices.len(), 2);
/// assert!(sample.devices[0].processes.is_none()); // not requested
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeSource {
    control: FakeControl,
}

/// Changes what a [`FakeSource`] returns, and tells how often it was asked.
#[derive(Debug, Clone, Default)]
pub struct FakeControl {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
struct FakeState {
    sample: GpuSample,
    failure: Option<GpuError>,
    calls: u64,
    last_request: Option<SampleRequest>,
}

impl FakeSource {
    /// A source that returns `sample` (process lists and PCIe only when requested).
    pub fn new(sample: GpuSample) -> Self {
        let source = Self::default();
        source.control.set_sample(sample);
        source
    }

    /// `count` plausible devices with every reading filled in, each running this process.
    pub fn demo(count: u32) -> Self {
        Self::new(GpuSample {
            driver_version: Some("550.54.15".to_owned()),
            devices: (0..count).map(demo_device).collect(),
            unreadable_devices: 0,
        })
    }

    /// The handle that changes this source.
    pub fn control(&self) -> FakeControl {
        self.control.clone()
    }
}

impl FakeControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Return `sample` from now on.
    pub fn set_sample(&self, sample: GpuSample) {
        self.lock().sample = sample;
    }

    /// Fail every sample with `error` from now on (`None`: succeed again).
    pub fn set_failure(&self, error: Option<GpuError>) {
        self.lock().failure = error;
    }

    /// How many times the source was asked for a sample.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// The last request the source was asked with.
    pub fn last_request(&self) -> Option<SampleRequest> {
        self.lock().last_request
    }
}

impl GpuSource for FakeSource {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn sample(&mut self, request: SampleRequest) -> Result<GpuSample, GpuError> {
        let mut state = self.control.lock();
        state.calls += 1;
        state.last_request = Some(request);
        if let Some(error) = &state.failure {
            return Err(error.clone());
        }
        let mut sample = state.sample.clone();
        for device in &mut sample.devices {
            if !request.processes {
                device.processes = None;
            }
            if !request.pcie {
                device.pcie_tx_bytes_per_second = None;
                device.pcie_rx_bytes_per_second = None;
            }
        }
        Ok(sample)
    }
}

/// A plausible 80 GB data-centre GPU with every reading filled in, running this process.
pub fn demo_device(index: u32) -> DeviceSample {
    const GIB: u64 = 1 << 30;
    let step = f64::from(index);
    DeviceSample {
        id: index.to_string(),
        uuid: format!("GPU-00000000-0000-4000-8000-{index:012x}"),
        name: "Fake GPU 80GB".to_owned(),
        pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x3B + index)),
        mig_parent: None,
        utilization_ratio: Some(0.37 + 0.1 * step),
        memory_utilization_ratio: Some(0.12),
        memory_used_bytes: Some(20 * GIB + u64::from(index) * GIB),
        memory_total_bytes: Some(80 * GIB),
        temperature_celsius: Some(41.0 + step),
        power_usage_watts: Some(123.5),
        power_limit_watts: Some(400.0),
        energy_joules_total: Some(1_234_567.891),
        sm_clock_hertz: Some(1_410_000_000.0),
        memory_clock_hertz: Some(1_593_000_000.0),
        ecc_corrected_total: Some(3),
        ecc_uncorrected_total: Some(0),
        throttle_reasons: ThrottleReason::ALL
            .iter()
            .map(|&reason| (reason, reason == ThrottleReason::SwPowerCap))
            .collect(),
        processes: Some(vec![GpuProcess {
            pid: std::process::id(),
            used_memory_bytes: Some(8 * GIB),
        }]),
        pcie_tx_bytes_per_second: Some(1_048_576.0),
        pcie_rx_bytes_per_second: Some(4_194_304.0),
    }
}

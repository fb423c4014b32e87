//! [`NvmlSource`]: real NVIDIA GPUs through NVML.
//!
//! `libnvidia-ml.so.1` is loaded at run time on the first sample, so this builds and runs on
//! machines without NVIDIA; there the first sample returns [`GpuError::Unavailable`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{Device, Nvml};

use crate::{
    DeviceSample, GpuError, GpuProcess, GpuSample, GpuSource, SampleRequest, ThrottleReason,
};

/// NVML's value for "MIG mode enabled" (`NVML_DEVICE_MIG_ENABLE`).
const MIG_ENABLED: u32 = 1;
/// NVML reports PCIe throughput in KiB/s.
const KIB: f64 = 1024.0;

/// Reads NVIDIA GPUs through NVML.
///
/// NVML is initialised once per process and shared by every `NvmlSource` (the collector and
/// a resource tracker share it); it is loaded lazily by the first [`GpuSource::sample`].
#[derive(Debug, Default)]
pub struct NvmlSource {
    nvml: Option<Arc<Nvml>>,
    driver_version: Option<String>,
}

impl NvmlSource {
    /// A source that loads NVML on its first sample.
    pub fn new() -> Self {
        Self::default()
    }

    fn nvml(&mut self) -> Result<Arc<Nvml>, GpuError> {
        if let Some(nvml) = &self.nvml {
            return Ok(Arc::clone(nvml));
        }
        // Any failure to start NVML is "cannot work here" and backs off: no device was read
        // yet. "Unknown Error" in particular is how a container that lost its device rules
        // fails, until it restarts; retried every interval, it would only count errors. (On
        // a machine without NVML: `tests/nvml_absent.rs`.)
        let nvml = shared_nvml().map_err(|error| GpuError::unavailable(error.to_string()))?;
        self.driver_version = nvml.sys_driver_version().ok();
        self.nvml = Some(Arc::clone(&nvml));
        Ok(nvml)
    }
}

/// One NVML initialisation for the whole process, kept while any source holds it.
fn shared_nvml() -> Result<Arc<Nvml>, NvmlError> {
    static SHARED: Mutex<Weak<Nvml>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(nvml) = shared.upgrade() {
        return Ok(nvml);
    }
    let nvml = Arc::new(Nvml::init()?);
    *shared = Arc::downgrade(&nvml);
    Ok(nvml)
}

/// A reading, or `None` when the device does not give it. A function the driver's NVML does
/// not have (`nvmlDeviceGetMemoryInfo_v2` and the `_v3` process lists came with driver R510)
/// is warned of once per process, naming it: its readings are missing for good, which a
/// device that lacks a sensor is not worth a warning for.
fn readable<T>(result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::FailedToLoadSymbol(symbol)) => {
            warn_missing_function(&symbol);
            None
        }
        Err(_) => None,
    }
}

#[cold]
fn warn_missing_function(symbol: &str) {
    // A handful of names at most: the functions this file calls.
    static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    if warned.iter().any(|name| name == symbol) {
        return;
    }
    warned.push(symbol.to_owned());
    tracing::warn!(
        function = symbol,
        "the NVIDIA driver's NVML lacks a function: the readings it gives are left out \
         (GPU memory and process lists need driver R510 or later)"
    );
}

/// Errors that mean "NVML cannot work here" (back off) versus "this read failed" (retry).
fn classify(error: NvmlError) -> GpuError {
    let reason = error.to_string();
    classify_as(error, reason)
}

/// [`classify`], with the reason given.
fn classify_as(error: NvmlError, reason: String) -> GpuError {
    match error {
        NvmlError::LibloadingError(_)
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::DriverNotLoaded
        | NvmlError::LibraryNotFound
        | NvmlError::FunctionNotFound
        | NvmlError::NoPermission
        | NvmlError::Uninitialized
        | NvmlError::LibRmVersionMismatch => GpuError::unavailable(reason),
        _ => GpuError::read(reason),
    }
}

/// Reads the devices `0..count` with `read` into `sample`. When none could be read, the first
/// one's error, naming the GPU and classified as [`classify`] does (a device this process may
/// not open backs off as a library it may not use does): a GPU that cannot be read for want of
/// permission is not reported as a lost one.
fn read_devices(
    count: u32,
    mut read: impl FnMut(u32) -> Result<(DeviceSample, Vec<DeviceSample>), NvmlError>,
    sample: &mut GpuSample,
) -> Result<(), GpuError> {
    let mut first_error = None;
    for index in 0..count {
        match read(index) {
            Ok((device, migs)) => {
                sample.devices.push(device);
                sample.devices.extend(migs);
            }
            Err(error) => {
                sample.unreadable_devices += 1;
                first_error.get_or_insert((index, error));
            }
        }
    }
    match first_error {
        Some((index, error)) if sample.devices.is_empty() => {
            let reason = format!("GPU {index}: {error}");
            Err(classify_as(error, reason))
        }
        _ => Ok(()),
    }
}

impl GpuSource for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self, request: SampleRequest) -> Result<GpuSample, GpuError> {
        let nvml = self.nvml()?;
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(error) => {
                let error = classify(error);
                if matches!(error, GpuError::Unavailable { .. }) {
                    // The driver went away: load NVML afresh on the next attempt.
                    self.nvml = None;
                }
                return Err(error);
            }
        };
        let mut sample = GpuSample {
            driver_version: self.driver_version.clone(),
            ..GpuSample::default()
        };
        let read = read_devices(
            count,
            |index| {
                nvml.device_by_index(index)
                    .and_then(|device| read_device(&device, index.to_string(), None, request))
            },
            &mut sample,
        );
        if matches!(read, Err(GpuError::Unavailable { .. })) {
            // As above: load NVML afresh on the next attempt.
            self.nvml = None;
        }
        read.map(|()| sample)
    }
}

/// Reads one device and, on a GPU in MIG mode, its MIG devices. Only the name and UUID are
/// required; every other reading is `None` when the device does not give it.
fn read_device(
    device: &Device<'_>,
    id: String,
    mig_parent: Option<String>,
    request: SampleRequest,
) -> Result<(DeviceSample, Vec<DeviceSample>), NvmlError> {
    let utilization = device.utilization_rates().ok();
    let memory = readable(device.memory_info());
    let sample = DeviceSample {
        uuid: device.uuid()?,
        name: device.name()?,
        pci_bus_id: device.pci_info().ok().map(|pci| pci.bus_id),
        utilization_ratio: utilization.as_ref().map(|u| percent(u.gpu)),
        memory_utilization_ratio: utilization.as_ref().map(|u| percent(u.memory)),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        temperature_celsius: device
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .map(f64::from),
        power_usage_watts: device.power_usage().ok().map(milli),
        power_limit_watts: device.enforced_power_limit().ok().map(milli),
        energy_joules_total: device
            .total_energy_consumption()
            .ok()
            .map(|mj| mj as f64 / 1000.0),
        sm_clock_hertz: device.clock_info(Clock::SM).ok().map(mega),
        memory_clock_hertz: device.clock_info(Clock::Memory).ok().map(mega),
        ecc_corrected_total: device
            .total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
            .ok(),
        ecc_uncorrected_total: device
            .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)
            .ok(),
        throttle_reasons: throttle_reasons(device),
        processes: request.processes.then(|| processes(device)).flatten(),
        pcie_tx_bytes_per_second: pcie(device, request, PcieUtilCounter::Send),
        pcie_rx_bytes_per_second: pcie(device, request, PcieUtilCounter::Receive),
        mig_parent,
        id,
    };
    let migs = if sample.mig_parent.is_none() {
        mig_devices(device, &sample.id, request)
    } else {
        Vec::new()
    };
    Ok((sample, migs))
}

/// The MIG devices of a GPU in MIG mode; empty slots and unreadable instances are skipped.
fn mig_devices(device: &Device<'_>, parent: &str, request: SampleRequest) -> Vec<DeviceSample> {
    let enabled = device
        .mig_mode()
        .is_ok_and(|mode| mode.current == MIG_ENABLED);
    let slots = if enabled {
        device.mig_device_count().unwrap_or(0)
    } else {
        0
    };
    (0..slots)
        .filter_map(|slot| {
            let mig = device.mig_device_by_index(slot).ok()?;
            let id = format!("{parent}:mig{slot}");
            read_device(&mig, id, Some(parent.to_owned()), request)
                .ok()
                .map(|(sample, _)| sample)
        })
        .collect()
}

fn throttle_reasons(device: &Device<'_>) -> Vec<(ThrottleReason, bool)> {
    let (Ok(supported), Ok(active)) = (
        device.supported_throttle_reasons(),
        device.current_throttle_reasons(),
    ) else {
        return Vec::new();
    };
    ThrottleReason::ALL
        .iter()
        .filter_map(|&reason| {
            let flag = throttle_flag(reason);
            supported
                .contains(flag)
                .then(|| (reason, active.contains(flag)))
        })
        .collect()
}

fn throttle_flag(reason: ThrottleReason) -> ThrottleReasons {
    match reason {
        ThrottleReason::GpuIdle => ThrottleReasons::GPU_IDLE,
        ThrottleReason::ApplicationsClocksSetting => ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        ThrottleReason::SwPowerCap => ThrottleReasons::SW_POWER_CAP,
        ThrottleReason::HwSlowdown => ThrottleReasons::HW_SLOWDOWN,
        ThrottleReason::SyncBoost => ThrottleReasons::SYNC_BOOST,
        ThrottleReason::SwThermalSlowdown => ThrottleReasons::SW_THERMAL_SLOWDOWN,
        ThrottleReason::HwThermalSlowdown => ThrottleReasons::HW_THERMAL_SLOWDOWN,
        ThrottleReason::HwPowerBrakeSlowdown => ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        ThrottleReason::DisplayClockSetting => ThrottleReasons::DISPLAY_CLOCK_SETTING,
    }
}

/// Compute and graphics processes, merged by pid; `None` when neither list can be read.
fn processes(device: &Device<'_>) -> Option<Vec<GpuProcess>> {
    let compute = readable(device.running_compute_processes());
    let graphics = readable(device.running_graphics_processes());
    if compute.is_none() && graphics.is_none() {
        return None;
    }
    let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    for info in compute.into_iter().chain(graphics).flatten() {
        let ProcessInfo {
            pid,
            used_gpu_memory,
            ..
        } = info;
        let used = match used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        };
        let entry = by_pid.entry(pid).or_insert(None);
        *entry = (*entry).max(used);
    }
    Some(
        by_pid
            .into_iter()
            .map(|(pid, used_memory_bytes)| GpuProcess {
                pid,
                used_memory_bytes,
            })
            .collect(),
    )
}

fn pcie(device: &Device<'_>, request: SampleRequest, counter: PcieUtilCounter) -> Option<f64> {
    if !request.pcie {
        return None;
    }
    device
        .pcie_throughput(counter)
        .ok()
        .map(|kib| f64::from(kib) * KIB)
}

fn percent(value: u32) -> f64 {
    f64::from(value) / 100.0
}

fn milli(value: u32) -> f64 {
    f64::from(value) / 1000.0
}

fn mega(value: u32) -> f64 {
    f64::from(value) * 1_000_000.0
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Warnings written, as their `function` field.
    #[derive(Clone, Default)]
    struct Warned(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warned {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Function(String);
            impl tracing::field::Visit for Function {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "function" {
                        self.0 = value.to_owned();
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut function = Function(String::new());
                event.record(&mut function);
                self.0.lock().unwrap().push(function.0);
            }
        }
    }

    #[test]
    fn a_function_missing_from_an_old_driver_is_warned_of_once() {
        let warned = Warned::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(warned.clone()));
        let missing = || {
            Err::<u64, _>(NvmlError::FailedToLoadSymbol(
                "nvmlDeviceGetMemoryInfo_v2: undefined symbol".to_owned(),
            ))
        };
        assert_eq!(readable(missing()), None);
        assert_eq!(readable(missing()), None);
        assert_eq!(readable(Err::<u64, _>(NvmlError::NotSupported)), None);
        assert_eq!(readable(Ok::<u64, NvmlError>(7)), Some(7));
        assert_eq!(
            *warned.0.lock().unwrap(),
            ["nvmlDeviceGetMemoryInfo_v2: undefined symbol"]
        );
    }
}

#[cfg(test)]
mod read_devices_tests {
    use super::*;

    /// A GPU this process may not open (`/dev/nvidia0` closed to it), the only one: the
    /// sample fails as unavailable, naming the GPU and the permission (the collector backs
    /// off), not as "none of the GPUs could be read (a lost GPU?)". A GPU that fell off the
    /// bus fails as a read, naming it. One GPU read of two: the sample, one unreadable.
    #[test]
    fn a_gpu_that_cannot_be_read_names_why() {
        let read = |error: fn() -> NvmlError| {
            let mut sample = GpuSample::default();
            let result = read_devices(1, |_| Err(error()), &mut sample);
            (result, sample.unreadable_devices)
        };
        let (result, unreadable) = read(|| NvmlError::NoPermission);
        assert_eq!(unreadable, 1);
        match result {
            Err(GpuError::Unavailable { reason }) => {
                assert!(reason.starts_with("GPU 0: "), "{reason}");
                assert!(reason.to_lowercase().contains("permission"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match read(|| NvmlError::GpuLost).0 {
            Err(GpuError::Read { reason }) => {
                assert!(reason.starts_with("GPU 0: "), "{reason}");
                assert!(reason.contains("bus"), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        let mut sample = GpuSample::default();
        let result = read_devices(
            2,
            |index| match index {
                0 => Ok((crate::fake::demo_device(0), Vec::new())),
                _ => Err(NvmlError::GpuLost),
            },
            &mut sample,
        );
        assert!(result.is_ok());
        assert_eq!((sample.devices.len(), sample.unreadable_devices), (1, 1));
    }
}

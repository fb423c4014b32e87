//! What a GPU source reads: one [`GpuSample`] per sampling tick, in base units.

use std::collections::{HashMap, HashSet};

/// One reading of every GPU a source sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// The driver version (`gpu_info{driver_version}`), when the source knows it.
    pub driver_version: Option<String>,
    /// The devices, physical GPUs first, each followed by its MIG devices.
    pub devices: Vec<DeviceSample>,
    /// Devices the source saw but could not read at all this time (each one counts as a
    /// collector error, and the device is left out of this sample).
    pub unreadable_devices: u32,
}

/// One device's readings. Every value a device does not support is `None` and its metric is
/// absent: never a sentinel number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSample {
    /// The `gpu` label: the device index (`"0"`), or `"<parent>:mig<n>"` for a MIG device.
    pub id: String,
    /// The device UUID (`GPU-…`, or `MIG-…` for a MIG device).
    pub uuid: String,
    /// The product name.
    pub name: String,
    /// PCI bus id such as `00000000:3B:00.0`.
    pub pci_bus_id: Option<String>,
    /// For a MIG device, the `id` of its physical GPU.
    pub mig_parent: Option<String>,
    /// Fraction of the last sample period in which a kernel ran, 0–1.
    pub utilization_ratio: Option<f64>,
    /// Fraction of the last sample period in which device memory was read or written, 0–1.
    pub memory_utilization_ratio: Option<f64>,
    /// Device memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory installed, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Die temperature, degrees Celsius.
    pub temperature_celsius: Option<f64>,
    /// Power draw, watts.
    pub power_usage_watts: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_watts: Option<f64>,
    /// Energy used since the driver loaded, joules (a counter).
    pub energy_joules_total: Option<f64>,
    /// Current SM clock, hertz.
    pub sm_clock_hertz: Option<f64>,
    /// Current memory clock, hertz.
    pub memory_clock_hertz: Option<f64>,
    /// Corrected ECC errors over the device's life (a counter).
    pub ecc_corrected_total: Option<u64>,
    /// Uncorrected ECC errors over the device's life (a counter).
    pub ecc_uncorrected_total: Option<u64>,
    /// Each throttle reason the device reports, with whether it is active now; empty when
    /// the device does not report throttle reasons.
    pub throttle_reasons: Vec<(ThrottleReason, bool)>,
    /// Processes using the device with their memory; `None` when not read (opt-in) or not
    /// supported. The collector keeps only this service's own processes.
    pub processes: Option<Vec<GpuProcess>>,
    /// PCIe transmit throughput, bytes per second (opt-in).
    pub pcie_tx_bytes_per_second: Option<f64>,
    /// PCIe receive throughput, bytes per second (opt-in).
    pub pcie_rx_bytes_per_second: Option<f64>,
}

impl DeviceSample {
    /// Memory this device's listed processes use, summed; `None` when processes were not read
    /// or no listed process reports its memory.
    pub fn process_memory_used_bytes(&self) -> Option<u64> {
        let processes = self.processes.as_ref()?;
        sum_known(processes.iter().map(|p| p.used_memory_bytes))
    }
}

impl GpuSample {
    /// Removes what no exposition can carry, whatever the source (NVML never returns it; a
    /// custom source might): a device whose `id` or non-empty `uuid` repeats a device kept
    /// before it (an empty `uuid` is unknown, not shared), a negative energy counter, a throttle reason listed twice (the first reading wins) and a
    /// pid listed twice on one device (merged, keeping the larger memory figure, as the NVML
    /// source merges compute and graphics processes). One duplicate series makes a scraper
    /// reject the whole page, the service's other metrics with it.
    ///
    /// Returns how many devices were dropped; the collector counts them as errors.
    pub(crate) fn drop_inconsistencies(&mut self) -> u32 {
        let mut ids = HashSet::new();
        let mut uuids = HashSet::new();
        let before = self.devices.len();
        self.devices.retain(|d| {
            let repeat = ids.contains(&d.id) || (!d.uuid.is_empty() && uuids.contains(&d.uuid));
            // Only kept devices are recorded: a dropped repeat makes no later device one.
            if !repeat {
                ids.insert(d.id.clone());
                uuids.insert(d.uuid.clone());
            }
            !repeat
        });
        for device in &mut self.devices {
            device.energy_joules_total = device.energy_joules_total.filter(|j| *j >= 0.0);
            let mut reasons = HashSet::new();
            device
                .throttle_reasons
                .retain(|(reason, _)| reasons.insert(*reason));
            if let Some(processes) = &mut device.processes {
                merge_by_pid(processes);
            }
        }
        u32::try_from(before - self.devices.len()).unwrap_or(u32::MAX)
    }
}

/// One entry per pid, in first-seen order, with the largest memory figure reported for it.
/// Linear: a shared node with `ProcessFilter::All` can list many processes.
fn merge_by_pid(processes: &mut Vec<GpuProcess>) {
    let mut merged: Vec<GpuProcess> = Vec::with_capacity(processes.len());
    let mut index: HashMap<u32, usize> = HashMap::with_capacity(processes.len());
    for process in processes.drain(..) {
        match index.get(&process.pid) {
            Some(&at) => {
                let kept = &mut merged[at];
                kept.used_memory_bytes = kept.used_memory_bytes.max(process.used_memory_bytes);
            }
            None => {
                index.insert(process.pid, merged.len());
                merged.push(process);
            }
        }
    }
    *processes = merged;
}

/// The sum of the known values; `None` when none is known (absent, not zero). Saturates: a
/// driver reporting `u64::MAX` must not take the sampler or a request down.
pub(crate) fn sum_known(values: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    values.into_iter().flatten().fold(None, |sum, value| {
        Some(sum.unwrap_or(0).saturating_add(value))
    })
}

/// A process holding a context on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Process id, as the driver sees it (the host's pid namespace).
    pub pid: u32,
    /// Device memory the process uses, bytes; `None` when the driver does not say.
    pub used_memory_bytes: Option<u64>,
}

/// Why a GPU's clocks are held down (`gpu_throttle_reason_active{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThrottleReason {
    /// Nothing runs: clocks are idle.
    GpuIdle,
    /// Clocks limited by the applications clocks setting.
    ApplicationsClocksSetting,
    /// Software power cap.
    SwPowerCap,
    /// Hardware slowdown (temperature or power brake).
    HwSlowdown,
    /// Sync boost with other GPUs.
    SyncBoost,
    /// Software thermal slowdown.
    SwThermalSlowdown,
    /// Hardware thermal slowdown.
    HwThermalSlowdown,
    /// Hardware power brake slowdown.
    HwPowerBrakeSlowdown,
    /// Display clock setting.
    DisplayClockSetting,
}

impl ThrottleReason {
    /// Every reason, in label order.
    pub const ALL: [ThrottleReason; 9] = [
        Self::GpuIdle,
        Self::ApplicationsClocksSetting,
        Self::SwPowerCap,
        Self::HwSlowdown,
        Self::SyncBoost,
        Self::SwThermalSlowdown,
        Self::HwThermalSlowdown,
        Self::HwPowerBrakeSlowdown,
        Self::DisplayClockSetting,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GpuIdle => "gpu_idle",
            Self::ApplicationsClocksSetting => "applications_clocks_setting",
            Self::SwPowerCap => "sw_power_cap",
            Self::HwSlowdown => "hw_slowdown",
            Self::SyncBoost => "sync_boost",
            Self::SwThermalSlowdown => "sw_thermal_slowdown",
            Self::HwThermalSlowdown => "hw_thermal_slowdown",
            Self::HwPowerBrakeSlowdown => "hw_power_brake_slowdown",
            Self::DisplayClockSetting => "display_clock_setting",
        }
    }
}

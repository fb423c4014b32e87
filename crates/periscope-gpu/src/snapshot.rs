//! [`GpuSnapshot`]: the GPU section of `/debug/status`, as serde JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::DeviceSample;
use crate::collector::Published;

const MIB: u64 = 1 << 20;

/// The GPU section of `/debug/status`: the collector's health and, per device, what an
/// on-call engineer looks at first. Unsupported values are `null`.
///
/// ```json
/// {"up":true,"source":"nvml","driver_version":"550.54.15","sampled_at_unix_s":1738238400.5,
///  "age_s":3.2,"errors_total":0,"last_error":null,
///  "devices":[{"gpu":"0","name":"NVIDIA A100-SXM4-80GB","uuid":"GPU-…","mig_parent":null,
///    "utilization_percent":37.0,"memory_used_mib":20480,"memory_total_mib":81920,
///    "temperature_celsius":41.0,"power_watts":123.5,"power_limit_watts":400.0,
///    "process_memory_used_mib":8192,"processes":[{"pid":4242,"memory_used_mib":8192}]}]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// Whether the last sample succeeded (`gpu_collector_up`).
    pub up: bool,
    /// The source: `"nvml"` or `"fake"`.
    pub source: String,
    /// The NVIDIA driver version.
    pub driver_version: Option<String>,
    /// Unix time of the last successful sample.
    pub sampled_at_unix_s: Option<f64>,
    /// Seconds since the last successful sample.
    pub age_s: Option<f64>,
    /// Failed samples, unreadable devices and devices a source listed twice, since start
    /// (`gpu_collector_errors_total`).
    pub errors_total: u64,
    /// Why the last sample failed, while the collector is down.
    pub last_error: Option<String>,
    /// The devices of the last successful sample; empty while down.
    pub devices: Vec<DeviceSnapshot>,
}

/// One device in a [`GpuSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// The `gpu` label: index, or `"<parent>:mig<n>"` for a MIG device.
    pub gpu: String,
    /// Product name.
    pub name: String,
    /// Device UUID.
    pub uuid: String,
    /// For a MIG device, the `gpu` of its physical GPU.
    pub mig_parent: Option<String>,
    /// GPU utilisation, percent (0–100).
    pub utilization_percent: Option<f64>,
    /// Memory in use, MiB.
    pub memory_used_mib: Option<u64>,
    /// Memory installed, MiB.
    pub memory_total_mib: Option<u64>,
    /// Die temperature, °C.
    pub temperature_celsius: Option<f64>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_watts: Option<f64>,
    /// GPU memory this service's processes use on this device, MiB; `null` when process
    /// listing is off or unsupported, or when none of them is listed on this device (or none
    /// of their memory).
    pub process_memory_used_mib: Option<u64>,
    /// This service's processes on this device.
    pub processes: Vec<ProcessSnapshot>,
}

/// One of this service's processes on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    /// Process id.
    pub pid: u32,
    /// GPU memory it uses, MiB.
    pub memory_used_mib: Option<u64>,
}

impl GpuSnapshot {
    pub(crate) fn from_published(published: &Published) -> Self {
        let sampled_at = published
            .last_success
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let age = published
            .last_success
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        let sample = published.sample.as_ref();
        Self {
            up: published.up,
            source: published.source.to_owned(),
            driver_version: sample.and_then(|s| s.driver_version.clone()),
            sampled_at_unix_s: sampled_at.map(|d| d.as_secs_f64()),
            age_s: age.map(|d| d.as_secs_f64()),
            errors_total: published.errors_total,
            last_error: published.last_error.clone(),
            devices: sample
                .map(|s| s.devices.iter().map(DeviceSnapshot::from_device).collect())
                .unwrap_or_default(),
        }
    }
}

impl DeviceSnapshot {
    fn from_device(device: &DeviceSample) -> Self {
        Self {
            gpu: device.id.clone(),
            name: device.name.clone(),
            uuid: device.uuid.clone(),
            mig_parent: device.mig_parent.clone(),
            // NVML reports whole percents; rounding hides the ratio's float noise.
            utilization_percent: device
                .utilization_ratio
                .map(|r| (r * 1000.0).round() / 10.0),
            memory_used_mib: device.memory_used_bytes.map(mib),
            memory_total_mib: device.memory_total_bytes.map(mib),
            temperature_celsius: device.temperature_celsius,
            power_watts: device.power_usage_watts,
            power_limit_watts: device.power_limit_watts,
            process_memory_used_mib: device.process_memory_used_bytes().map(mib),
            processes: device
                .processes
                .iter()
                .flatten()
                .map(|p| ProcessSnapshot {
                    pid: p.pid,
                    memory_used_mib: p.used_memory_bytes.map(mib),
                })
                .collect(),
        }
    }
}

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

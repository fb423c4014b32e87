//! `/debug/memory`: the process's memory, read now. On Linux, `procfs` reads it all from
//! `/proc/self/status` and `/proc/self/limits`; elsewhere `metrics-process` (the same reader as
//! the `process_*` metrics) gives resident and virtual size.

use serde::Serialize;

/// Every key is always present; `null` where the platform cannot tell.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Memory {
    resident_bytes: Option<u64>,
    peak_resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    peak_virtual_bytes: Option<u64>,
    /// The address-space limit (`RLIMIT_AS`); 0 means unlimited.
    virtual_max_bytes: Option<u64>,
    swap_bytes: Option<u64>,
    resident_anon_bytes: Option<u64>,
    resident_file_bytes: Option<u64>,
    resident_shmem_bytes: Option<u64>,
    data_bytes: Option<u64>,
    /// GPU memory of this service's processes, per device (feature `gpu`, collector attached).
    gpu: Option<GpuMemory>,
}

impl Memory {
    /// Reads the figures now (a few small reads of `/proc` on Linux, no blocking I/O).
    pub(crate) fn read(gpu: Option<crate::status::GpuSnapshot>) -> Self {
        #[cfg(feature = "gpu")]
        let gpu = gpu.map(GpuMemory::from);
        let mut memory = Memory {
            gpu,
            ..Memory::default()
        };
        memory.add_process_figures();
        memory
    }

    /// Two small reads. Not `metrics-process`'s collector: it also lists every open descriptor
    /// (`/proc/self/fd`), work that grows with the connections a service holds.
    #[cfg(target_os = "linux")]
    fn add_process_figures(&mut self) {
        use procfs::process::{LimitValue, Process};
        let Ok(process) = Process::myself() else {
            return;
        };
        if let Ok(limits) = process.limits() {
            self.virtual_max_bytes = Some(match limits.max_address_space.soft_limit {
                LimitValue::Value(bytes) => bytes,
                LimitValue::Unlimited => 0,
            });
        }
        let Ok(status) = process.status() else { return };
        // `/proc/self/status` counts in KiB.
        let bytes = |kib: Option<u64>| kib.map(|kib| kib.saturating_mul(1024));
        self.resident_bytes = bytes(status.vmrss);
        self.virtual_bytes = bytes(status.vmsize);
        self.peak_resident_bytes = bytes(status.vmhwm);
        self.peak_virtual_bytes = bytes(status.vmpeak);
        self.swap_bytes = bytes(status.vmswap);
        self.resident_anon_bytes = bytes(status.rssanon);
        self.resident_file_bytes = bytes(status.rssfile);
        self.resident_shmem_bytes = bytes(status.rssshmem);
        self.data_bytes = bytes(status.vmdata);
    }

    #[cfg(not(target_os = "linux"))]
    fn add_process_figures(&mut self) {
        let process = metrics_process::collector::collect();
        self.resident_bytes = process.resident_memory_bytes;
        self.virtual_bytes = process.virtual_memory_bytes;
        self.virtual_max_bytes = process.virtual_memory_max_bytes;
    }
}

/// The `gpu` key of `/debug/memory`: per device, what this service's processes hold.
#[cfg(feature = "gpu")]
#[derive(Debug, Serialize)]
pub(crate) struct GpuMemory {
    up: bool,
    devices: Vec<DeviceMemory>,
}

#[cfg(feature = "gpu")]
#[derive(Debug, Serialize)]
struct DeviceMemory {
    gpu: String,
    uuid: String,
    memory_used_mib: Option<u64>,
    memory_total_mib: Option<u64>,
    process_memory_used_mib: Option<u64>,
    processes: Vec<periscope_gpu::ProcessSnapshot>,
}

#[cfg(feature = "gpu")]
impl From<periscope_gpu::GpuSnapshot> for GpuMemory {
    fn from(snapshot: periscope_gpu::GpuSnapshot) -> Self {
        let devices = snapshot
            .devices
            .into_iter()
            .map(|device| DeviceMemory {
                gpu: device.gpu,
                uuid: device.uuid,
                memory_used_mib: device.memory_used_mib,
                memory_total_mib: device.memory_total_mib,
                process_memory_used_mib: device.process_memory_used_mib,
                processes: device.processes,
            })
            .collect();
        GpuMemory {
            up: snapshot.up,
            devices,
        }
    }
}

/// Without the `gpu` feature the key is always `null`.
#[cfg(not(feature = "gpu"))]
pub(crate) type GpuMemory = ();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_live_figures() {
        let memory = serde_json::to_value(Memory::read(None)).unwrap();
        let object = memory.as_object().unwrap();
        assert_eq!(object.len(), 11, "{memory}");
        if cfg!(target_os = "linux") {
            let resident = memory["resident_bytes"].as_u64().unwrap();
            assert!(resident > 1_000_000, "{memory}");
            assert!(memory["peak_resident_bytes"].as_u64().unwrap() >= resident);
            assert!(memory["virtual_bytes"].as_u64().unwrap() >= resident);
        }
    }
}

//! Running statistics over the readings, the end-of-run summary and the recommendation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::probe::Reading;

/// Headroom on the peaks for the memory and VRAM recommendations.
const HEADROOM: f64 = 1.2;

/// What a run used, from its readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSummary {
    /// Wall-clock time from start to finish, seconds.
    pub duration_s: f64,
    /// Readings taken (CSV rows).
    pub samples: u64,
    /// Most processes seen in the tree at once.
    pub processes_max: u32,
    /// Mean CPU use of the tree, in cores (1.0 = one core busy).
    pub cpu_cores_mean: f64,
    /// Peak CPU use of the tree, in cores.
    pub cpu_cores_max: f64,
    /// Mean resident memory of the tree, bytes.
    pub memory_bytes_mean: f64,
    /// Peak resident memory of the tree, bytes.
    pub memory_bytes_max: u64,
    /// Bytes the tree read from storage.
    pub disk_read_bytes: u64,
    /// Bytes the tree wrote to storage.
    pub disk_written_bytes: u64,
    /// Bytes the host received (every interface but loopback).
    pub net_rx_bytes: u64,
    /// Bytes the host sent (every interface but loopback).
    pub net_tx_bytes: u64,
    /// Mean host CPU use, percent of all cores.
    pub host_cpu_percent_mean: f64,
    /// Peak host memory in use, bytes.
    pub host_memory_used_bytes_max: u64,
    /// GPUs the source saw (0 without a GPU source or driver).
    pub gpu_count: u32,
    /// Mean GPU utilisation across the devices, percent; `None` without GPU readings.
    pub gpu_utilization_percent_mean: Option<f64>,
    /// Peak GPU utilisation (mean across the devices at one reading), percent.
    pub gpu_utilization_percent_max: Option<f64>,
    /// Peak VRAM: the tree's own GPU memory when the driver lists any of its processes,
    /// otherwise the devices' memory in use; bytes.
    pub gpu_memory_bytes_max: Option<u64>,
    /// GPUs the tree's processes were seen on.
    pub gpus_used: u32,
}

/// What to request for the next run of the same job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecommendation {
    /// CPU cores: the mean rounded, at least 1.
    pub cpu_cores: u32,
    /// Memory: the peak × 1.2, bytes.
    pub memory_bytes: u64,
    /// GPUs: those the tree used (or, when the driver lists none of its processes, those that
    /// were busy: NVML's host pids are never the tree's in a container without the host pid
    /// namespace; a job that used no GPU gets the busy ones too, so check `gpus_used`).
    pub gpus: u32,
    /// VRAM per run: the peak × 1.2, bytes; `None` when `gpus` is 0.
    pub gpu_memory_bytes: Option<u64>,
}

/// The summary and recommendation returned by `ResourceTracker::finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceReport {
    /// What the run used.
    pub summary: ResourceSummary,
    /// What to request next time.
    pub recommendation: ResourceRecommendation,
}

/// Statistics kept while the run goes on: constant memory, however long the run.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    samples: u64,
    processes_max: u32,
    cpu_sum: f64,
    cpu_max: f64,
    memory_sum: f64,
    memory_max: u64,
    disk_read: u64,
    disk_written: u64,
    net_rx: u64,
    net_tx: u64,
    host_cpu_sum: f64,
    host_memory_max: u64,
    gpu_count: u32,
    /// A running mean: a sum of huge (finite) readings would overflow to `inf`.
    gpu_util_mean: f64,
    gpu_util_samples: u64,
    gpu_util_max: Option<f64>,
    tree_vram_max: Option<u64>,
    device_vram_max: Option<u64>,
    /// Bounded by the number of GPUs.
    used_by_tree: BTreeSet<String>,
    busy: BTreeSet<String>,
}

impl Stats {
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    pub(crate) fn add(&mut self, r: &Reading) {
        self.samples += 1;
        self.processes_max = self.processes_max.max(r.processes);
        self.cpu_sum += r.cpu_cores;
        self.cpu_max = self.cpu_max.max(r.cpu_cores);
        self.memory_sum += r.memory_bytes as f64;
        self.memory_max = self.memory_max.max(r.memory_bytes);
        self.disk_read += r.disk_read_bytes;
        self.disk_written += r.disk_written_bytes;
        self.net_rx += r.host_net_rx_bytes;
        self.net_tx += r.host_net_tx_bytes;
        self.host_cpu_sum += r.host_cpu_percent;
        self.host_memory_max = self.host_memory_max.max(r.host_memory_used_bytes);
        let Some(gpu) = &r.gpu else { return };
        self.gpu_count = self.gpu_count.max(gpu.devices);
        if let Some(util) = gpu.utilization_percent {
            self.gpu_util_samples += 1;
            self.gpu_util_mean += (util - self.gpu_util_mean) / self.gpu_util_samples as f64;
            self.gpu_util_max = Some(self.gpu_util_max.map_or(util, |max| max.max(util)));
        }
        self.tree_vram_max = self.tree_vram_max.max(gpu.tree_memory_bytes);
        self.device_vram_max = self.device_vram_max.max(gpu.memory_used_bytes);
        self.used_by_tree.extend(gpu.used_by_tree.iter().cloned());
        self.busy.extend(gpu.busy.iter().cloned());
    }

    pub(crate) fn report(&self, duration_s: f64) -> ResourceReport {
        let n = self.samples.max(1) as f64;
        let gpus_used = count(&self.used_by_tree);
        let vram_max = self.tree_vram_max.or(self.device_vram_max);
        let summary = ResourceSummary {
            duration_s,
            samples: self.samples,
            processes_max: self.processes_max,
            cpu_cores_mean: self.cpu_sum / n,
            cpu_cores_max: self.cpu_max,
            memory_bytes_mean: self.memory_sum / n,
            memory_bytes_max: self.memory_max,
            disk_read_bytes: self.disk_read,
            disk_written_bytes: self.disk_written,
            net_rx_bytes: self.net_rx,
            net_tx_bytes: self.net_tx,
            host_cpu_percent_mean: self.host_cpu_sum / n,
            host_memory_used_bytes_max: self.host_memory_max,
            gpu_count: self.gpu_count,
            gpu_utilization_percent_mean: (self.gpu_util_samples > 0).then_some(self.gpu_util_mean),
            gpu_utilization_percent_max: self.gpu_util_max,
            gpu_memory_bytes_max: vram_max,
            gpus_used,
        };
        // Without process lists the busy GPUs are the best guess at what the job used.
        let gpus = if self.tree_vram_max.is_some() || gpus_used > 0 {
            gpus_used
        } else {
            count(&self.busy)
        };
        let recommendation = ResourceRecommendation {
            cpu_cores: (summary.cpu_cores_mean.round() as u32).max(1),
            memory_bytes: with_headroom(summary.memory_bytes_max),
            gpus,
            gpu_memory_bytes: (gpus > 0).then(|| vram_max.map(with_headroom)).flatten(),
        };
        ResourceReport {
            summary,
            recommendation,
        }
    }
}

fn count(set: &BTreeSet<String>) -> u32 {
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

fn with_headroom(bytes: u64) -> u64 {
    (bytes as f64 * HEADROOM).ceil() as u64
}

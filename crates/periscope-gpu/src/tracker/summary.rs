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
    /// Mean memory of the tree, bytes (proportional set sizes on Linux, else resident).
    pub memory_bytes_mean: f64,
    /// Peak memory of the tree, bytes (proportional set sizes on Linux, else resident).
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
    /// Peak VRAM, bytes: the tree's own GPU memory when the driver lists any of its processes;
    /// 0 when the tree is known to have used no GPU ([`GpuAttribution::NoGpu`]); otherwise the
    /// devices' memory in use.
    pub gpu_memory_bytes_max: Option<u64>,
    /// GPUs the tree's processes were seen on.
    pub gpus_used: u32,
    /// Which rule gave the GPU figures and the recommended `gpus`, so how far to trust them;
    /// `None` when no GPU was seen (`gpu_count` 0). Absent from older reports.
    #[serde(default)]
    pub gpu_attribution: Option<GpuAttribution>,
}

/// How the tracker told which GPUs a job used (`gpu_attribution` in the summary's JSON).
///
/// The tree's processes are found on the GPUs by pid, and NVML reports host pids: they are the
/// tree's only when the tracker runs in the host's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GpuAttribution {
    /// `"processes"`: the tree's own processes were seen on the GPUs; `gpus` counts those GPUs
    /// and the VRAM is the tree's (the devices' in use if the driver gives none of its
    /// processes' memory).
    Processes,
    /// `"none"`: the job used no GPU. The tracker runs in the host pid namespace, every GPU
    /// that was busy listed processes, and none of them was ever the tree's (at the readings:
    /// a GPU process that lives only between two readings is not seen).
    #[serde(rename = "none")]
    NoGpu,
    /// `"busy_gpus"`: a guess. None of the tree's processes was seen where they might not be
    /// seen even if there (another pid namespace, one that cannot be told, or a busy GPU that
    /// listed no process: MIG, permissions): `gpus` counts the busy GPUs and the VRAM is their
    /// memory in use. Right for a job in a container, wrong for a job that used no GPU. Where
    /// the driver reads no utilisation (a GPU in MIG mode, its instances), an instance that
    /// lists a process, or cannot list them, counts as busy.
    BusyGpus,
}

/// What to request for the next run of the same job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecommendation {
    /// CPU cores: the mean rounded, at least 1.
    pub cpu_cores: u32,
    /// Memory: the peak × 1.2, bytes.
    pub memory_bytes: u64,
    /// GPUs: those the tree used; 0 when it is known to have used none; otherwise (none of
    /// its processes seen where they might not be seen even if there) those that were busy.
    /// The summary's [`gpu_attribution`](ResourceSummary::gpu_attribution) says which.
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
    /// Readings that found the tree (not one taken after its root exited): the tree's means
    /// are over these.
    tree_samples: u64,
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
    listing: BTreeSet<String>,
}

impl Stats {
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    pub(crate) fn add(&mut self, r: &Reading) {
        self.samples += 1;
        self.processes_max = self.processes_max.max(r.processes);
        // A reading after the tree has gone (the job waited for, then `finish`) says nothing of
        // its use: counted as zero it would lower the means and the recommendation.
        if r.processes > 0 {
            self.tree_samples += 1;
            self.cpu_sum += r.cpu_cores;
            self.memory_sum += r.memory_bytes as f64;
        }
        self.cpu_max = self.cpu_max.max(r.cpu_cores);
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
        self.listing.extend(gpu.listing.iter().cloned());
    }

    /// `host_pid_namespace`: whether the driver's pids are known to be the tree's.
    pub(crate) fn report(&self, duration_s: f64, host_pid_namespace: bool) -> ResourceReport {
        let n = self.samples.max(1) as f64;
        let tree_n = self.tree_samples.max(1) as f64;
        let gpus_used = count(&self.used_by_tree);
        let attribution = self.attribution(host_pid_namespace);
        let (gpus, vram_max) = match attribution {
            Some(GpuAttribution::Processes) => {
                (gpus_used, self.tree_vram_max.or(self.device_vram_max))
            }
            Some(GpuAttribution::NoGpu) => (0, Some(0)),
            // Without usable process lists the busy GPUs are the best guess at what the job
            // used.
            Some(GpuAttribution::BusyGpus) | None => (count(&self.busy), self.device_vram_max),
        };
        let summary = ResourceSummary {
            duration_s,
            samples: self.samples,
            processes_max: self.processes_max,
            cpu_cores_mean: self.cpu_sum / tree_n,
            cpu_cores_max: self.cpu_max,
            memory_bytes_mean: self.memory_sum / tree_n,
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
            gpu_attribution: attribution,
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

    fn attribution(&self, host_pid_namespace: bool) -> Option<GpuAttribution> {
        if self.gpu_count == 0 {
            return None;
        }
        if !self.used_by_tree.is_empty() || self.tree_vram_max.is_some() {
            return Some(GpuAttribution::Processes);
        }
        // In the host pid namespace a busy GPU whose list named processes (at any reading:
        // listing works there) would have named the tree's. A busy GPU that never listed one
        // may hide them (MIG, permissions), so the guess stays.
        let listing_works = !self.listing.is_empty() && self.busy.is_subset(&self.listing);
        if host_pid_namespace && listing_works {
            Some(GpuAttribution::NoGpu)
        } else {
            Some(GpuAttribution::BusyGpus)
        }
    }
}

fn count(set: &BTreeSet<String>) -> u32 {
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

fn with_headroom(bytes: u64) -> u64 {
    (bytes as f64 * HEADROOM).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading taken after the tracked job exited (`child.wait()`, then `finish`) finds no
    /// process: it leaves the tree's means, and the recommendation, as the live readings made
    /// them.
    #[test]
    fn readings_after_the_tree_exited_leave_its_means() {
        let mut stats = Stats::default();
        let live = Reading {
            processes: 1,
            cpu_cores: 2.0,
            memory_bytes: 1 << 30,
            ..Reading::default()
        };
        stats.add(&live);
        stats.add(&live);
        stats.add(&Reading::default());
        let report = stats.report(3.0, true);
        assert_eq!(report.summary.samples, 3);
        assert_eq!(report.summary.cpu_cores_mean, 2.0);
        assert_eq!(report.summary.memory_bytes_mean, f64::from(1 << 30));
        assert_eq!(report.recommendation.cpu_cores, 2);
    }
}

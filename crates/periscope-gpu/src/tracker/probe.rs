//! One reading of a process tree, the host and the GPUs, through sysinfo and a GPU source.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System, ThreadKind};

use super::usage::{self, TreeTotals};
use crate::sample::sum_known;
use crate::{GpuError, GpuSample, GpuSource, SampleRequest};

/// One row of the tracker's CSV. Byte counts marked "interval" cover the time since the
/// previous reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reading {
    pub(crate) timestamp_unix_s: f64,
    pub(crate) elapsed_s: f64,
    /// Processes in the tree (the root and, when enabled, its descendants).
    pub(crate) processes: u32,
    pub(crate) cpu_cores: f64,
    pub(crate) memory_bytes: u64,
    /// Interval.
    pub(crate) disk_read_bytes: u64,
    /// Interval.
    pub(crate) disk_written_bytes: u64,
    pub(crate) host_cpu_percent: f64,
    pub(crate) host_memory_used_bytes: u64,
    pub(crate) host_memory_total_bytes: u64,
    /// Interval, every interface but loopback.
    pub(crate) host_net_rx_bytes: u64,
    /// Interval, every interface but loopback.
    pub(crate) host_net_tx_bytes: u64,
    pub(crate) gpu: Option<GpuReading>,
}

/// The GPU part of a [`Reading`], present when a GPU source answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GpuReading {
    pub(crate) devices: u32,
    /// Mean over the devices that report it.
    pub(crate) utilization_percent: Option<f64>,
    /// Summed over the devices.
    pub(crate) memory_used_bytes: Option<u64>,
    /// GPU memory of the tree's processes; `None` when the driver lists none of them (or none
    /// of their memory).
    pub(crate) tree_memory_bytes: Option<u64>,
    /// UUIDs of the devices the tree's processes are on.
    pub(crate) used_by_tree: Vec<String>,
    /// UUIDs of the devices with non-zero utilisation, or, where the driver reads none (MIG),
    /// that list a process or cannot list them.
    pub(crate) busy: Vec<String>,
    /// UUIDs of the devices whose process list names at least one process (anyone's): the
    /// driver's listing visibly works there.
    pub(crate) listing: Vec<String>,
}

pub(crate) struct Probe {
    system: System,
    networks: Networks,
    root: Pid,
    children: bool,
    gpu: Option<GpuReader>,
    /// How the GPU reads have gone, for what an `Unavailable` means.
    gpu_state: GpuState,
    started: Instant,
    /// The totals of the tree's processes at the previous reading, and when it was taken.
    previous: (TreeTotals, Instant),
}

/// How the GPU reads of a run have gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GpuState {
    /// None answered yet: an `Unavailable` means no driver, and the run stops asking.
    NotYet,
    /// The last read answered.
    Read,
    /// Readings answered before, the last said `Unavailable`.
    Unavailable,
}

impl Probe {
    /// Fails only when the GPU reading thread cannot be started.
    pub(crate) fn new(
        root: u32,
        children: bool,
        gpu: Option<Box<dyn GpuSource>>,
        gpu_timeout: Duration,
    ) -> std::io::Result<Self> {
        let gpu = gpu
            .map(|source| GpuReader::spawn(source, gpu_timeout))
            .transpose()?;
        let mut probe = Self {
            system: System::new(),
            networks: Networks::new_with_refreshed_list(),
            root: Pid::from_u32(root),
            children,
            gpu,
            gpu_state: GpuState::NotYet,
            started: Instant::now(),
            previous: (TreeTotals::new(), Instant::now()),
        };
        // CPU and storage use are differences between two readings: this is the first one.
        probe.refresh();
        probe.previous = (probe.tree_totals(&probe.tree()), Instant::now());
        Ok(probe)
    }

    /// Whether the root process exists (checked after a refresh).
    pub(crate) fn root_exists(&self) -> bool {
        self.system.process(self.root).is_some()
    }

    fn refresh(&mut self) {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .without_tasks()
                .with_cpu()
                .with_memory()
                .with_disk_usage(),
        );
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.networks.refresh(true);
    }

    pub(crate) fn read(&mut self) -> Reading {
        self.refresh();
        let tree = self.tree();
        let mut reading = Reading {
            timestamp_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            // An ended process not yet reaped (`finish_at_exit`) counts its CPU time and
            // storage I/O up to its end below, but is no process running, and holds no memory.
            processes: u32::try_from(
                tree.iter()
                    .filter_map(|pid| self.system.process(*pid))
                    .filter(|process| process.status() != sysinfo::ProcessStatus::Zombie)
                    .count(),
            )
            .unwrap_or(u32::MAX),
            host_cpu_percent: f64::from(self.system.global_cpu_usage()),
            host_memory_used_bytes: self.system.used_memory(),
            host_memory_total_bytes: self.system.total_memory(),
            ..Reading::default()
        };
        for process in tree.iter().filter_map(|pid| self.system.process(*pid)) {
            reading.memory_bytes += usage::memory_bytes(process);
        }
        let (now, at) = (self.tree_totals(&tree), Instant::now());
        let used = usage::used_between(&self.previous.0, &now, &self.system);
        let seconds = at.duration_since(self.previous.1).as_secs_f64();
        if seconds > 0.0 {
            reading.cpu_cores = used.cpu_seconds / seconds;
        }
        reading.disk_read_bytes = used.read_bytes;
        reading.disk_written_bytes = used.written_bytes;
        self.previous = (now, at);
        for (name, data) in self.networks.list() {
            if name != "lo" {
                reading.host_net_rx_bytes += data.received();
                reading.host_net_tx_bytes += data.transmitted();
            }
        }
        let pids: HashSet<u32> = tree.iter().map(|pid| pid.as_u32()).collect();
        reading.gpu = self.read_gpu(&pids);
        reading
    }

    fn tree_totals(&self, tree: &[Pid]) -> TreeTotals {
        tree.iter()
            .filter_map(|pid| {
                let process = self.system.process(*pid)?;
                Some((
                    *pid,
                    (usage::totals(process, self.children), process.parent()),
                ))
            })
            .collect()
    }

    /// The root and, when enabled, all its descendants (threads are not processes here).
    fn tree(&self) -> Vec<Pid> {
        if !self.root_exists() {
            return Vec::new();
        }
        let mut tree = vec![self.root];
        if !self.children {
            return tree;
        }
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, process) in self.system.processes() {
            if process.thread_kind() == Some(ThreadKind::Userland) {
                continue;
            }
            if let Some(parent) = process.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let mut next = 0;
        while let Some(&pid) = tree.get(next) {
            next += 1;
            tree.extend(children.get(&pid).into_iter().flatten());
        }
        tree
    }

    fn read_gpu(&mut self, tree: &HashSet<u32>) -> Option<GpuReading> {
        // `None`: a read still stuck from an earlier reading, or this one's ran past the timeout.
        let result = self.gpu.as_mut()?.read()?;
        match result {
            Ok(mut sample) => {
                if self.gpu_state == GpuState::Unavailable {
                    tracing::info!("resource tracker: GPU readings resume");
                }
                self.gpu_state = GpuState::Read;
                // A custom source's repeated devices and pids would be counted twice.
                sample.drop_inconsistencies();
                Some(gpu_reading(&sample, tree))
            }
            Err(error @ GpuError::Unavailable { .. }) if self.gpu_state == GpuState::NotYet => {
                // No driver from the start: stop asking for the rest of this run.
                tracing::info!(%error, "resource tracker runs without GPU readings");
                self.gpu = None;
                None
            }
            Err(error @ GpuError::Unavailable { .. }) => {
                // Gone after readings (a driver reloaded, a permission lost for a while):
                // this reading's GPU cells stay empty, and later readings ask again.
                if self.gpu_state == GpuState::Read {
                    tracing::info!(%error, "resource tracker: GPU readings unavailable for now");
                }
                self.gpu_state = GpuState::Unavailable;
                None
            }
            Err(error) => {
                tracing::debug!(%error, "resource tracker: GPU reading failed");
                None
            }
        }
    }

    /// How long a refresh should be apart from the previous one for CPU usage to mean much.
    pub(crate) const MIN_INTERVAL: Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
}

fn gpu_reading(sample: &GpuSample, tree: &HashSet<u32>) -> GpuReading {
    let utilizations: Vec<f64> = sample
        .devices
        .iter()
        .filter_map(|d| d.utilization_ratio)
        .map(|ratio| ratio * 100.0)
        // A NaN (or a ratio too large to be a percent) from a source would spoil every
        // device's mean and reach the CSV as `NaN` or `inf`.
        .filter(|percent| percent.is_finite())
        .collect();
    // A GPU in MIG mode reports its instances' memory and processes again, in aggregate:
    // each figure is taken once, memory from the GPU, processes from its instances.
    let with_memory: HashSet<&str> = sample
        .devices
        .iter()
        .filter(|d| d.memory_used_bytes.is_some())
        .map(|d| d.id.as_str())
        .collect();
    let listing_migs: HashSet<&str> = sample
        .devices
        .iter()
        .filter(|d| d.processes.is_some())
        .filter_map(|d| d.mig_parent.as_deref())
        .collect();
    let mig_parents: HashSet<&str> = sample
        .devices
        .iter()
        .filter_map(|d| d.mig_parent.as_deref())
        .collect();
    let memory_used = sum_known(sample.devices.iter().map(|d| {
        let counted_by_parent = d
            .mig_parent
            .as_deref()
            .is_some_and(|parent| with_memory.contains(parent));
        d.memory_used_bytes.filter(|_| !counted_by_parent)
    }));
    let mut used_by_tree = Vec::new();
    let mut tree_memory = Vec::new();
    for device in &sample.devices {
        if listing_migs.contains(device.id.as_str()) {
            continue;
        }
        let mine: Vec<_> = device
            .processes
            .iter()
            .flatten()
            .filter(|p| tree.contains(&p.pid))
            .collect();
        if !mine.is_empty() {
            used_by_tree.push(device.uuid.clone());
        }
        tree_memory.extend(mine.iter().map(|p| p.used_memory_bytes));
    }
    GpuReading {
        devices: u32::try_from(sample.devices.len()).unwrap_or(u32::MAX),
        // Divided before adding up, so that finite percents cannot add up to `inf`.
        utilization_percent: (!utilizations.is_empty()).then(|| {
            let n = utilizations.len() as f64;
            utilizations.iter().map(|percent| percent / n).sum::<f64>()
        }),
        memory_used_bytes: memory_used,
        tree_memory_bytes: sum_known(tree_memory),
        used_by_tree,
        busy: sample
            .devices
            .iter()
            .filter(|d| match d.utilization_ratio {
                Some(ratio) => ratio > 0.0,
                // NVML reads no utilisation on a GPU in MIG mode nor on its instances: an
                // instance is busy when it lists a process, or may be when it cannot list
                // them; the GPU itself is left to its instances, which it holds.
                None => {
                    !mig_parents.contains(d.id.as_str())
                        && d.processes.as_ref().is_none_or(|p| !p.is_empty())
                }
            })
            .map(|d| d.uuid.clone())
            .collect(),
        listing: sample
            .devices
            .iter()
            .filter(|d| d.processes.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|d| d.uuid.clone())
            .collect(),
    }
}

/// The tracker's GPU reads, on a thread of their own (`periscope-tracker-gpu`), one at a time:
/// a hung driver call costs the GPU cells of the readings while it hangs, not the run.
struct GpuReader {
    /// One message per read; `None` once dropping, to end the thread.
    requests: Option<Sender<()>>,
    answers: Receiver<Result<GpuSample, GpuError>>,
    timeout: Duration,
    /// When the read that ran past the timeout started; no other starts until it answers.
    stuck_since: Option<Instant>,
    thread: Option<JoinHandle<()>>,
}

impl GpuReader {
    fn spawn(mut source: Box<dyn GpuSource>, timeout: Duration) -> std::io::Result<Self> {
        let (requests, to_read) = mpsc::channel::<()>();
        let (answer, answers) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("periscope-tracker-gpu".to_owned())
            .spawn(move || {
                let request = SampleRequest {
                    processes: true,
                    pcie: false,
                };
                for () in to_read {
                    // A panicking source must not end the thread: later readings would lose
                    // their GPU cells for good.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        source.sample(request)
                    }))
                    .unwrap_or_else(|_| Err(GpuError::read("the GPU source panicked")));
                    if answer.send(result).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            answers,
            timeout,
            stuck_since: None,
            thread: Some(thread),
        })
    }

    /// One GPU read, waiting up to the timeout; `None` when it has not answered by then, or
    /// when an earlier read is still stuck (no second read is started meanwhile).
    fn read(&mut self) -> Option<Result<GpuSample, GpuError>> {
        if let Some(since) = self.stuck_since {
            match self.answers.try_recv() {
                // Too old for this reading; an `Unavailable` still counts (before any reading
                // answered, it ends the GPU reads; after, the next reading asks again).
                Ok(Err(error @ GpuError::Unavailable { .. })) => {
                    self.stuck_since = None;
                    return Some(Err(error));
                }
                Ok(_) => {
                    tracing::info!(
                        after_s = since.elapsed().as_secs_f64(),
                        "resource tracker: the stuck GPU read answered; GPU readings resume"
                    );
                    self.stuck_since = None;
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return Some(Err(ended())),
            }
        }
        let sent = self.requests.as_ref().is_some_and(|r| r.send(()).is_ok());
        if !sent {
            return Some(Err(ended()));
        }
        let started = Instant::now();
        match self.answers.recv_timeout(self.timeout) {
            Ok(result) => Some(result),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    timeout_s = self.timeout.as_secs_f64(),
                    "resource tracker: a GPU read ran past the GPU timeout (a hung driver \
                     call?); GPU cells stay empty until it answers"
                );
                self.stuck_since = Some(started);
                None
            }
            Err(RecvTimeoutError::Disconnected) => Some(Err(ended())),
        }
    }
}

impl Drop for GpuReader {
    fn drop(&mut self) {
        // Ends the thread once it is idle; the source is dropped there.
        self.requests = None;
        let thread = self.thread.take();
        // A thread stuck in a hung driver call is left to end on its own; an idle one ends at
        // once, so the source is gone before `finish` returns.
        if self.stuck_since.is_none()
            && let Some(thread) = thread
        {
            let _ = thread.join();
        }
    }
}

/// The GPU thread ended (it cannot, short of a bug): GPU readings stop for this run.
fn ended() -> GpuError {
    GpuError::unavailable("the resource tracker's GPU reading thread ended")
}

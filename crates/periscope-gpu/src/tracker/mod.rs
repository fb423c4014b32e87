//! [`ResourceTracker`]: what a run or job used, sampled into CSV, summarised at the end.

mod pid_namespace;
mod probe;
mod summary;
mod usage;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use summary::{GpuAttribution, ResourceRecommendation, ResourceReport, ResourceSummary};

use crate::GpuSource;
use probe::{Probe, Reading};
use summary::Stats;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// NVML answers in milliseconds; a GPU read running this long is a hung driver call.
const DEFAULT_GPU_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_GPU_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_GPU_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The CSV header: one row per reading. The disk and network byte columns count the interval
/// since the previous row; the memory columns are the amounts in use at the reading. An empty
/// cell means "not available".
pub const CSV_HEADER: &str = "timestamp_unix_s,elapsed_s,processes,cpu_cores,memory_bytes,\
disk_read_bytes,disk_written_bytes,host_cpu_percent,host_memory_used_bytes,\
host_memory_total_bytes,host_net_rx_bytes,host_net_tx_bytes,gpu_count,\
gpu_utilization_percent,gpu_memory_used_bytes,gpu_process_memory_bytes";

/// Why a tracker could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The process to track does not exist.
    #[error("process {pid} does not exist (or cannot be read); pass the pid of a running process")]
    ProcessNotFound {
        /// The pid asked for.
        pid: u32,
    },
    /// The CSV file could not be created or written.
    #[error(
        "writing the resource CSV failed: {0}; check that the directory exists, is writable and has space"
    )]
    Csv(#[source] std::io::Error),
    /// The sampling thread (or its GPU reading thread) could not be started.
    #[error("starting the resource tracker thread failed: {0}")]
    Spawn(#[source] std::io::Error),
    /// The sampling thread panicked (a bug: please report it).
    #[error("the resource tracker thread panicked; the run's summary is lost")]
    Panicked,
}

enum CsvTarget {
    None,
    Path(PathBuf),
    Writer(Box<dyn Write + Send>),
}

/// Configures and starts a [`ResourceTracker`].
pub struct ResourceTrackerBuilder {
    pid: u32,
    children: bool,
    interval: Duration,
    csv: CsvTarget,
    gpu: Option<Box<dyn GpuSource>>,
    gpu_timeout: Duration,
    /// `None`: detected at start.
    host_pid_namespace: Option<bool>,
}

impl std::fmt::Debug for ResourceTrackerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceTrackerBuilder")
            .field("pid", &self.pid)
            .field("children", &self.children)
            .field("interval", &self.interval)
            .field("gpu_timeout", &self.gpu_timeout)
            .field("host_pid_namespace", &self.host_pid_namespace)
            .finish_non_exhaustive()
    }
}

impl Default for ResourceTrackerBuilder {
    fn default() -> Self {
        Self {
            pid: std::process::id(),
            children: true,
            interval: DEFAULT_INTERVAL,
            csv: CsvTarget::None,
            gpu: None,
            gpu_timeout: DEFAULT_GPU_TIMEOUT,
            host_pid_namespace: None,
        }
    }
}

impl ResourceTrackerBuilder {
    /// The process to track (default: this process).
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// Count the process's descendants too (default: yes).
    pub fn children(mut self, enabled: bool) -> Self {
        self.children = enabled;
        self
    }

    /// Time between readings (default 1 s; at least sysinfo's minimum CPU interval, 200 ms on
    /// Linux).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Probe::MIN_INTERVAL);
        self
    }

    /// Write the readings as CSV to this file (created or truncated at start).
    pub fn csv_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.csv = CsvTarget::Path(path.into());
        self
    }

    /// Write the readings as CSV to this writer.
    pub fn csv_writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.csv = CsvTarget::Writer(Box::new(writer));
        self
    }

    /// Read GPUs from this source at every reading (with process lists, to find the tree's
    /// VRAM). Without one the GPU columns stay empty.
    pub fn gpu_source(mut self, source: impl GpuSource) -> Self {
        self.gpu = Some(Box::new(source));
        self
    }

    /// How long one GPU read may take (default 30 s; at least 100 ms, at most a day). GPU
    /// reads run on their own thread, one at a time: a reading whose GPU read has not answered
    /// by then (a hung driver call) is recorded with empty GPU cells, and so are the next ones
    /// until that read answers, so [`finish`](ResourceTracker::finish) still returns.
    pub fn gpu_timeout(mut self, timeout: Duration) -> Self {
        self.gpu_timeout = timeout.clamp(MIN_GPU_TIMEOUT, MAX_GPU_TIMEOUT);
        self
    }

    /// Whether the tracker shares the host's pid namespace, so that the pids the GPU driver
    /// lists (host pids) are the tree's. Default: detected at [`start`](Self::start), `true`
    /// only where `/proc/self/ns/pid` names the kernel's initial pid namespace; in another
    /// namespace, or where it cannot be read, `false`.
    ///
    /// When none of the tree's processes is ever listed on a GPU, `true` lets the report say
    /// that the job used no GPU ([`GpuAttribution::NoGpu`]) if every busy GPU listed processes;
    /// `false` keeps the busy-GPU guess ([`GpuAttribution::BusyGpus`]).
    pub fn host_pid_namespace(mut self, host: bool) -> Self {
        self.host_pid_namespace = Some(host);
        self
    }

    /// Starts the readings on a thread named `periscope-tracker` (and, with a GPU source, its
    /// GPU reads on one named `periscope-tracker-gpu`).
    ///
    /// Blocks the calling thread briefly: it creates the CSV file, writes its header and
    /// reads the process table once (milliseconds; more with thousands of processes or a
    /// slow file system). From async code, call it with `spawn_blocking`, like `finish`.
    pub fn start(self) -> Result<ResourceTracker, TrackerError> {
        let probe = Probe::new(self.pid, self.children, self.gpu, self.gpu_timeout)
            .map_err(TrackerError::Spawn)?;
        if !probe.root_exists() {
            return Err(TrackerError::ProcessNotFound { pid: self.pid });
        }
        // Created only once the process is known to exist: a tracker that cannot start must
        // not truncate the CSV an earlier run left at the same path.
        let writer: Option<Box<dyn Write + Send>> = match self.csv {
            CsvTarget::None => None,
            CsvTarget::Path(path) => Some(Box::new(File::create(path).map_err(TrackerError::Csv)?)),
            CsvTarget::Writer(writer) => Some(writer),
        };
        let mut csv = writer.map(BufWriter::new);
        if let Some(csv) = &mut csv {
            writeln!(csv, "{CSV_HEADER}")
                .and_then(|()| csv.flush())
                .map_err(TrackerError::Csv)?;
        }
        let stop = Arc::new(Stop::default());
        let run = Run {
            probe,
            host_pid_namespace: self
                .host_pid_namespace
                .unwrap_or_else(pid_namespace::detect),
            csv,
            interval: self.interval,
            stop: Arc::clone(&stop),
            started: Instant::now(),
            stats: Stats::default(),
        };
        let thread = std::thread::Builder::new()
            .name("periscope-tracker".to_owned())
            .spawn(move || run.run())
            .map_err(TrackerError::Spawn)?;
        Ok(ResourceTracker {
            pid: self.pid,
            stop,
            thread: Some(thread),
        })
    }
}

/// Samples a process tree (CPU, memory, disk I/O), the host (CPU, memory, network) and the
/// GPUs at an interval into CSV while a run or job goes on; [`finish`](Self::finish) returns
/// a [`ResourceReport`] with summary statistics and a resource recommendation.
///
/// ```no_run
/// use periscope_gpu::{NvmlSource, ResourceTracker};
///
/// let tracker = ResourceTracker::builder()
///     .csv_path("run-resources.csv")
///     .gpu_source(NvmlSource::new())
///     .start()?;
/// // ... run the job ...
/// let report = tracker.finish()?;
/// println!("request {} cores, {} bytes", report.recommendation.cpu_cores,
///     report.recommendation.memory_bytes);
/// # Ok::<(), periscope_gpu::TrackerError>(())
/// ```
///
/// Dropping a tracker without `finish` stops its thread after at most one reading.
#[derive(Debug)]
pub struct ResourceTracker {
    /// The tree's root.
    pid: u32,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<Result<ResourceReport, TrackerError>>>,
}

impl ResourceTracker {
    /// A builder: this process and its children, every second, no CSV, no GPU.
    pub fn builder() -> ResourceTrackerBuilder {
        ResourceTrackerBuilder::default()
    }

    /// Takes a last reading, stops, and returns the report. Blocks for at most one reading,
    /// whose GPU read waits no longer than the [GPU timeout](ResourceTrackerBuilder::gpu_timeout)
    /// (run it with `spawn_blocking` from async code).
    pub fn finish(mut self) -> Result<ResourceReport, TrackerError> {
        self.stop.set();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            Some(Err(_)) | None => Err(TrackerError::Panicked),
        }
    }

    /// Waits for the tracked process to end, then takes the last reading and returns the
    /// report, as [`finish`](Self::finish) does.
    ///
    /// For a process this one started (`Command::spawn`), call it instead of `child.wait()`
    /// then `finish()`, and reap the child afterwards (`child.wait()` then returns at once,
    /// with its exit status): on Linux the last reading comes before the child is reaped,
    /// while its totals can still be read, so the CPU time and storage I/O of its last
    /// interval (all of a job shorter than one interval) are counted; once reaped they are
    /// gone with it. A process this one did not start is waited for until it is gone. For
    /// the tracker's own process (the default [`pid`](ResourceTrackerBuilder::pid)) it is
    /// `finish`. Blocks the calling thread: use `spawn_blocking` from async code.
    ///
    /// ```no_run
    /// use std::process::Command;
    /// use periscope_gpu::ResourceTracker;
    ///
    /// let mut child = Command::new("python3").arg("train.py").spawn()?;
    /// let tracker = ResourceTracker::builder().pid(child.id()).start()?;
    /// let report = tracker.finish_at_exit()?;
    /// let status = child.wait()?;
    /// # let _ = (report, status);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish_at_exit(self) -> Result<ResourceReport, TrackerError> {
        if self.pid != std::process::id() {
            wait_for_exit(self.pid);
        }
        self.finish()
    }
}

/// Returns once `pid` has ended: at its exit, before it is reaped, for a child of this process
/// on Linux; else once it is gone.
fn wait_for_exit(pid: u32) {
    #[cfg(target_os = "linux")]
    if let Some(child) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        loop {
            match waitid(WaitId::Pid(child), options) {
                Ok(_) => return,
                Err(rustix::io::Errno::INTR) => continue,
                // Not a child of this process (or reaped already): wait until it is gone.
                Err(_) => break,
            }
        }
    }
    let pid = sysinfo::Pid::from_u32(pid);
    let mut system = sysinfo::System::new();
    let kind = sysinfo::ProcessRefreshKind::nothing();
    while system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::Some(&[pid]), true, kind)
        > 0
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for ResourceTracker {
    fn drop(&mut self) {
        self.stop.set();
    }
}

#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout`; `true` when stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, timeout, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}

struct Run {
    probe: Probe,
    host_pid_namespace: bool,
    csv: Option<BufWriter<Box<dyn Write + Send>>>,
    interval: Duration,
    stop: Arc<Stop>,
    started: Instant,
    stats: Stats,
}

impl Run {
    fn run(mut self) -> Result<ResourceReport, TrackerError> {
        let mut last = Instant::now();
        loop {
            let stopped = self.stop.wait(self.interval);
            // A last reading on finish, unless the previous one is too recent to measure CPU.
            if !stopped || last.elapsed() >= Probe::MIN_INTERVAL || self.stats_empty() {
                let reading = self.probe.read();
                last = Instant::now();
                self.stats.add(&reading);
                if let Some(csv) = &mut self.csv
                    && let Err(error) = write_row(csv, &reading)
                {
                    // Said now: a tracker dropped without `finish` would otherwise stop its
                    // readings (a full disk) in silence.
                    tracing::warn!(
                        %error,
                        samples = self.stats.samples(),
                        "resource tracker: writing the CSV failed (disk full?); the readings \
                         stop and `finish()` returns the error"
                    );
                    return Err(TrackerError::Csv(error));
                }
            }
            if stopped {
                return Ok(self.stats.report(
                    self.started.elapsed().as_secs_f64(),
                    self.host_pid_namespace,
                ));
            }
        }
    }

    fn stats_empty(&self) -> bool {
        self.stats.samples() == 0
    }
}

fn write_row(csv: &mut impl Write, r: &Reading) -> std::io::Result<()> {
    let gpu = r.gpu.as_ref();
    writeln!(
        csv,
        "{:.3},{:.3},{},{:.3},{},{},{},{:.1},{},{},{},{},{},{},{},{}",
        r.timestamp_unix_s,
        r.elapsed_s,
        r.processes,
        r.cpu_cores,
        r.memory_bytes,
        r.disk_read_bytes,
        r.disk_written_bytes,
        r.host_cpu_percent,
        r.host_memory_used_bytes,
        r.host_memory_total_bytes,
        r.host_net_rx_bytes,
        r.host_net_tx_bytes,
        cell(gpu.map(|g| g.devices)),
        cell(
            gpu.and_then(|g| g.utilization_percent)
                .map(|u| format!("{u:.1}"))
        ),
        cell(gpu.and_then(|g| g.memory_used_bytes)),
        cell(gpu.and_then(|g| g.tree_memory_bytes)),
    )?;
    // Flushed per row: a crashed job still leaves its readings behind.
    csv.flush()
}

fn cell(value: Option<impl std::fmt::Display>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

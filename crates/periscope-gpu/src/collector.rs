//! [`GpuCollector`]: background sampling of a [`GpuSource`], read by scrapes and snapshots.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::{DeviceSample, GpuError, GpuSample, GpuSnapshot, GpuSource, SampleRequest};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_EXPENSIVE_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_RETRY: Duration = Duration::from_secs(60);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Shorter intervals would make the sampler itself a load on the driver.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// NVML answers in milliseconds; a sample running this long is a hung driver call.
const DEFAULT_SAMPLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which GPU processes count as "this service's own" for `gpu_process_memory_used_bytes`
/// and the snapshot.
#[derive(Clone, Default)]
pub enum ProcessFilter {
    /// Only this process (`std::process::id()`).
    #[default]
    OwnProcess,
    /// Every process on the GPU (a dedicated GPU host; beware the `pid` label's cardinality).
    All,
    /// The pids this function accepts (for example a worker pool the service spawned).
    Custom(Arc<dyn Fn(u32) -> bool + Send + Sync>),
}

impl ProcessFilter {
    fn keeps(&self, pid: u32, own: u32) -> bool {
        match self {
            Self::OwnProcess => pid == own,
            Self::All => true,
            Self::Custom(keep) => keep(pid),
        }
    }
}

impl std::fmt::Debug for ProcessFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OwnProcess => "OwnProcess",
            Self::All => "All",
            Self::Custom(_) => "Custom(..)",
        })
    }
}

/// Configures and starts a [`GpuCollector`].
///
/// ```
/// use std::time::Duration;
/// use periscope_gpu::{FakeSource, GpuCollector};
///
/// let gpu = GpuCollector::builder()
///     .interval(Duration::from_secs(5))
///     .processes(true) // list this service's GPU processes (opt-in)
///     .start(FakeSource::demo(1))
///     .expect("spawn the sampling thread");
/// let mut registry = prometheus_client::registry::Registry::default();
/// registry.register_collector(Box::new(gpu.clone()));
/// ```
#[derive(Debug, Clone)]
pub struct GpuCollectorBuilder {
    interval: Duration,
    expensive_interval: Duration,
    processes: bool,
    pcie: bool,
    process_filter: ProcessFilter,
    retry: Duration,
    retry_max: Duration,
    sample_timeout: Duration,
}

impl Default for GpuCollectorBuilder {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            expensive_interval: DEFAULT_EXPENSIVE_INTERVAL,
            processes: false,
            pcie: false,
            process_filter: ProcessFilter::default(),
            retry: DEFAULT_RETRY,
            retry_max: DEFAULT_RETRY_MAX,
            sample_timeout: DEFAULT_SAMPLE_TIMEOUT,
        }
    }
}

impl GpuCollectorBuilder {
    /// Time between samples (default 10 s, at least 100 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(MIN_INTERVAL);
        self
    }

    /// Time between the expensive readings (process lists, PCIe) when enabled (default 30 s;
    /// never more often than `interval`). Between them the last expensive values are kept.
    pub fn expensive_interval(mut self, interval: Duration) -> Self {
        self.expensive_interval = interval;
        self
    }

    /// List the processes on each GPU and export this service's own
    /// (`gpu_process_memory_used_bytes`, the snapshot's `processes`). Off by default.
    pub fn processes(mut self, enabled: bool) -> Self {
        self.processes = enabled;
        self
    }

    /// Measure PCIe throughput (`gpu_pcie_throughput_bytes_per_second`). Off by default: NVML
    /// spends about 20 ms per GPU and direction on it.
    pub fn pcie(mut self, enabled: bool) -> Self {
        self.pcie = enabled;
        self
    }

    /// Which processes count as this service's own (default: this process).
    pub fn process_filter(mut self, filter: ProcessFilter) -> Self {
        self.process_filter = filter;
        self
    }

    /// Back-off when the source is unavailable (no driver): the first retry waits `initial`,
    /// each further one twice as long, up to `max` (defaults 60 s and 1 h).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry = initial.max(MIN_INTERVAL);
        self.retry_max = max.max(self.retry);
        self
    }

    /// How long one sample may run before the collector reports itself down (default 30 s,
    /// at least 100 ms). A hung driver call then shows as `gpu_collector_up 0` with the device
    /// series absent and one error counted, instead of the last readings frozen as if current.
    pub fn sample_timeout(mut self, timeout: Duration) -> Self {
        self.sample_timeout = timeout.clamp(MIN_INTERVAL, LONGEST_WAIT);
        self
    }

    /// The collector and its sampler, without a thread: drive [`GpuSampler::run`] or
    /// [`GpuSampler::sample_once`] yourself (for example in a blocking task).
    pub fn build<S: GpuSource>(self, source: S) -> (GpuCollector, GpuSampler) {
        let shared = Arc::new(Shared {
            published: RwLock::new(Arc::new(Published {
                source: source.name(),
                ..Published::default()
            })),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            sample_timeout: self.sample_timeout,
        });
        let sampler = GpuSampler {
            source: Box::new(source),
            shared: Arc::clone(&shared),
            retry: self.retry,
            own_pid: std::process::id(),
            last_expensive: None,
            warned: false,
            config: self,
        };
        let collector = GpuCollector {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(None),
            }),
        };
        (collector, sampler)
    }

    /// Starts sampling on a thread named `periscope-gpu`; the first sample is taken at once.
    /// The thread stops when the last [`GpuCollector`] clone is dropped, or on
    /// [`GpuCollector::shutdown`].
    pub fn start<S: GpuSource>(self, source: S) -> std::io::Result<GpuCollector> {
        let (collector, sampler) = self.build(source);
        let thread = std::thread::Builder::new()
            .name("periscope-gpu".to_owned())
            .spawn(move || sampler.run())?;
        *lock(&collector.inner.thread) = Some(thread);
        Ok(collector)
    }

    /// [`start`](Self::start) with an [`NvmlSource`](crate::NvmlSource): real NVIDIA GPUs, or
    /// `gpu_collector_up 0` and one warning on machines without them.
    #[cfg(feature = "nvml")]
    pub fn start_nvml(self) -> std::io::Result<GpuCollector> {
        self.start(crate::NvmlSource::new())
    }
}

/// The GPU collector: a cheap, cloneable handle on the last sample.
///
/// It is a prometheus-client [`Collector`](prometheus_client::collector::Collector): register a
/// clone with any `Registry` and each scrape encodes the last sample (no driver call on the
/// scrape). [`snapshot`](Self::snapshot) gives the same facts as JSON for `/debug/status`.
#[derive(Clone)]
pub struct GpuCollector {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Signal only: joining could block an async task for a whole driver call.
        self.shared.stop();
    }
}

impl std::fmt::Debug for GpuCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let published = self.published();
        f.debug_struct("GpuCollector")
            .field("source", &published.source)
            .field("up", &published.up)
            .finish_non_exhaustive()
    }
}

impl GpuCollector {
    /// A builder with the defaults: 10 s interval, no process lists, no PCIe.
    pub fn builder() -> GpuCollectorBuilder {
        GpuCollectorBuilder::default()
    }

    /// The state the last sample left; a cheap `Arc` clone, never a driver call. While a
    /// sample runs past the sample timeout, the collector is shown down instead.
    pub(crate) fn published(&self) -> Arc<Published> {
        let shared = &self.inner.shared;
        // Read under the control lock, which the sampler holds while it publishes, so that a
        // stalled view and the sample that ends the stall are never mixed.
        let control = lock(&shared.control);
        let published = shared.published();
        let running = control
            .under_way_since
            .map(|since| since.elapsed())
            .filter(|running| *running > shared.sample_timeout);
        drop(control);
        let Some(running) = running else {
            return published;
        };
        Arc::new(Published {
            source: published.source,
            up: false,
            // The sampler counts the stalled sample when it ends: the counter never goes back.
            errors_total: published.errors_total.saturating_add(1),
            last_success: published.last_success,
            last_error: Some(format!(
                "the GPU source has not answered for {:.0} s (a hung driver call?); readings \
                 are withheld until it does",
                running.as_secs_f64()
            )),
            sample: None,
        })
    }

    /// The last sample as the `/debug/status` GPU section.
    pub fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot::from_published(&self.published())
    }

    /// The last successful sample (only this service's processes), if the collector is up.
    pub fn last_sample(&self) -> Option<GpuSample> {
        self.published().sample.clone()
    }

    /// Whether the last sample succeeded (`gpu_collector_up`).
    pub fn is_up(&self) -> bool {
        self.published().up
    }

    /// Asks the sampling thread for a sample now and waits up to `timeout` for it; `true` when
    /// a sample that started after this call completed; `false` at once after
    /// [`shutdown`](Self::shutdown). Blocks the calling thread: not for async request handlers.
    pub fn refresh(&self, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let deadline = deadline_after(timeout);
        let mut control = lock(&shared.control);
        // A sample already under way may have read the GPUs before this call: wait for the next.
        let under_way = control.started > control.completed;
        let target = control.completed + if under_way { 2 } else { 1 };
        control.refresh = true;
        shared.wake.notify_all();
        while control.completed < target {
            // Stopped (shut down): no sample will come, so waiting out the timeout is pointless.
            if control.stop {
                return false;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            control = shared
                .done
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Stops the sampling thread and waits for it: at most for the sample under way, and no
    /// longer than the sample timeout (a hung driver call leaves the thread behind). Blocks.
    pub fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.stop();
        let Some(thread) = lock(&self.inner.thread).take() else {
            return;
        };
        let mut control = lock(&shared.control);
        while let Some(since) = control.under_way_since {
            let Some(left) = shared.sample_timeout.checked_sub(since.elapsed()) else {
                drop(control);
                tracing::warn!(
                    source = shared.published().source,
                    "GPU collector shutdown: a sample ran past the sample timeout (a hung \
                     driver call?); the sampling thread is left to end on its own"
                );
                return;
            };
            control = shared
                .done
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(control);
        // No sample is under way and none starts after `stop`: the thread ends at once. A
        // panicking source already logged its panic; nothing is left to do about it.
        let _ = thread.join();
    }
}

/// What the sampler publishes after each attempt; scrapes and snapshots read it.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) source: &'static str,
    pub(crate) up: bool,
    pub(crate) errors_total: u64,
    pub(crate) last_success: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    /// The last sample, filtered to this service's processes; `None` while down.
    pub(crate) sample: Option<GpuSample>,
}

struct Shared {
    published: RwLock<Arc<Published>>,
    control: Mutex<Control>,
    /// Wakes the sampler early (refresh or stop).
    wake: Condvar,
    /// Tells `refresh` callers that a sample completed.
    done: Condvar,
    /// A sample running longer than this shows the collector down.
    sample_timeout: Duration,
}

#[derive(Default)]
struct Control {
    stop: bool,
    refresh: bool,
    /// Samples started and completed by the thread.
    started: u64,
    completed: u64,
    /// When the sample under way started.
    under_way_since: Option<Instant>,
}

impl Shared {
    fn published(&self) -> Arc<Published> {
        Arc::clone(
            &self
                .published
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn publish(&self, published: Published) {
        *self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(published);
    }

    fn stop(&self) {
        lock(&self.control).stop = true;
        self.wake.notify_all();
        // Refresh callers waiting for a sample that will not come.
        self.done.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes samples from a source and publishes them to its [`GpuCollector`].
pub struct GpuSampler {
    source: Box<dyn GpuSource>,
    shared: Arc<Shared>,
    config: GpuCollectorBuilder,
    /// The wait before the next attempt while the source is unavailable.
    retry: Duration,
    own_pid: u32,
    last_expensive: Option<Instant>,
    /// Whether the current outage was already logged at warn level.
    warned: bool,
}

impl std::fmt::Debug for GpuSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSampler")
            .field("source", &self.source.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GpuSampler {
    /// Samples until the collector is shut down or dropped: at once, then every interval (or
    /// on the unavailable back-off), or early on [`GpuCollector::refresh`].
    pub fn run(mut self) {
        loop {
            {
                // Checked under the lock that starts the sample: `shutdown` never waits on a
                // sample begun after it.
                let mut control = lock(&self.shared.control);
                if control.stop {
                    return;
                }
                begin(&mut control);
            }
            let wait = self.complete();
            let deadline = deadline_after(wait);
            let mut control = lock(&self.shared.control);
            while !control.stop && !control.refresh {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                control = self
                    .shared
                    .wake
                    .wait_timeout(control, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// Takes one sample and publishes it; returns how long to wait before the next one. A
    /// [`GpuCollector::refresh`] waiting meanwhile is answered by it, whoever drives the
    /// sampler.
    pub fn sample_once(&mut self) -> Duration {
        begin(&mut lock(&self.shared.control));
        self.complete()
    }

    /// Takes the sample [`begin`] announced and publishes it.
    fn complete(&mut self) -> Duration {
        let (mut next, wait) = self.sample();
        let took = {
            let mut control = lock(&self.shared.control);
            let took = control.under_way_since.take().map(|since| since.elapsed());
            // Scrapes showed this sample as one error once it ran past the timeout; counting
            // it in the same step keeps the counter they saw from going back.
            if took.is_some_and(|took| took > self.shared.sample_timeout) {
                next.errors_total += 1;
            }
            self.shared.publish(next);
            control.completed += 1;
            took
        };
        self.shared.done.notify_all();
        if let Some(took) = took.filter(|took| *took > self.shared.sample_timeout) {
            tracing::warn!(
                source = self.source.name(),
                took_s = took.as_secs_f64(),
                "a GPU sample ran past the sample timeout; the collector showed down meanwhile"
            );
        }
        wait
    }

    /// Reads the source; returns what to publish and the wait before the next sample.
    fn sample(&mut self) -> (Published, Duration) {
        let now = Instant::now();
        let expensive_due = self
            .last_expensive
            .is_none_or(|last| now.duration_since(last) >= self.config.expensive_interval);
        let request = SampleRequest {
            processes: self.config.processes && expensive_due,
            pcie: self.config.pcie && expensive_due,
        };
        let previous = self.shared.published();
        // Built field by field: cloning `previous` would copy the whole last sample.
        let mut next = Published {
            source: previous.source,
            up: false,
            errors_total: previous.errors_total,
            last_success: previous.last_success,
            last_error: None,
            sample: None,
        };
        // A panicking source must not leave a stale `up 1` behind: it counts as a failed read.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.source.sample(request)))
                .unwrap_or_else(|_| Err(GpuError::read("the GPU source panicked")));
        // No device to export is down, never `up 1` with no device at all: devices listed but
        // none readable (NVML counts a GPU that fell off the bus, then cannot open it) is a
        // lost GPU; none listed (a driver without a GPU, or a container given none) is a
        // machine without GPUs, retried on the back-off like a missing driver.
        let result = result.and_then(|sample| {
            if !sample.devices.is_empty() {
                Ok(sample)
            } else if sample.unreadable_devices > 0 {
                Err(GpuError::read(format!(
                    "none of the {} GPUs listed could be read (a lost GPU?)",
                    sample.unreadable_devices
                )))
            } else {
                Err(GpuError::unavailable(
                    "the GPU source lists no GPU (none installed, or none visible to this \
                     container)",
                ))
            }
        });
        // A panicking custom filter would otherwise end the sampling thread, freezing the
        // last published sample (`up 1`) for good.
        let result = result.and_then(|mut sample| {
            let filter = &self.config.process_filter;
            let own_pid = self.own_pid;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                keep_own_processes(filter, own_pid, &mut sample);
            }))
            .map(|()| sample)
            .map_err(|_| GpuError::read("the process filter panicked"))
        });
        let wait = match result {
            Ok(mut sample) => {
                if request.processes || request.pcie {
                    self.last_expensive = Some(now);
                }
                let dropped = sample.drop_inconsistencies();
                if dropped > 0 {
                    tracing::debug!(
                        source = self.source.name(),
                        dropped,
                        "GPU source listed devices twice (same id or uuid); counted as errors"
                    );
                }
                carry_expensive(&mut sample, previous.sample.as_ref(), request);
                self.recovered();
                next.errors_total += u64::from(sample.unreadable_devices) + u64::from(dropped);
                next.up = true;
                next.last_success = Some(SystemTime::now());
                next.sample = Some(sample);
                self.retry = self.config.retry;
                self.config.interval
            }
            Err(error) => {
                let wait = match error {
                    GpuError::Unavailable { .. } => self.retry,
                    GpuError::Read { .. } => self.config.interval,
                };
                self.failed(&error, wait);
                // Nothing to carry over any more: the next good sample takes them afresh.
                self.last_expensive = None;
                if matches!(error, GpuError::Unavailable { .. }) {
                    self.retry = self.retry.saturating_mul(2).min(self.config.retry_max);
                }
                next.errors_total += 1;
                next.last_error = Some(error.to_string());
                wait
            }
        };
        (next, wait)
    }

    /// One warning per outage; repeats go to debug so a missing driver never floods the log.
    fn failed(&mut self, error: &GpuError, retry_in: Duration) {
        let source = self.source.name();
        if self.warned {
            tracing::debug!(source, %error, retry_in_s = retry_in.as_secs_f64(), "GPU collector still down");
        } else {
            self.warned = true;
            tracing::warn!(
                source,
                %error,
                retry_in_s = retry_in.as_secs_f64(),
                "GPU collector is down (gpu_collector_up 0); the service keeps running"
            );
        }
    }

    fn recovered(&mut self) {
        if self.warned {
            tracing::info!(source = self.source.name(), "GPU collector is up again");
        }
        self.warned = false;
    }
}

/// Marks a sample as started.
fn begin(control: &mut Control) {
    // A refresh asked before this point is answered by this sample.
    control.refresh = false;
    control.started += 1;
    control.under_way_since = Some(Instant::now());
}

fn keep_own_processes(filter: &ProcessFilter, own_pid: u32, sample: &mut GpuSample) {
    for device in &mut sample.devices {
        if let Some(processes) = &mut device.processes {
            processes.retain(|p| filter.keeps(p.pid, own_pid));
        }
    }
}

/// Between expensive samples, keep the last process lists and PCIe values so the metrics do
/// not flap between present and absent.
fn carry_expensive(sample: &mut GpuSample, previous: Option<&GpuSample>, request: SampleRequest) {
    let Some(previous) = previous else { return };
    for device in &mut sample.devices {
        // By UUID, so readings follow the physical device; by `gpu` id when it is unknown.
        let same = |d: &&DeviceSample| {
            d.uuid == device.uuid && (!device.uuid.is_empty() || d.id == device.id)
        };
        let Some(before) = previous.devices.iter().find(same) else {
            continue;
        };
        if !request.processes && device.processes.is_none() {
            device.processes.clone_from(&before.processes);
        }
        if !request.pcie && device.pcie_tx_bytes_per_second.is_none() {
            device.pcie_tx_bytes_per_second = before.pcie_tx_bytes_per_second;
            device.pcie_rx_bytes_per_second = before.pcie_rx_bytes_per_second;
        }
    }
}

/// Waits longer than this are cut to it: a day between samples is already "never", and
/// `Instant + Duration::MAX` would panic.
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// The instant `wait` from now, `wait` cut to [`LONGEST_WAIT`].
fn deadline_after(wait: Duration) -> Instant {
    Instant::now() + wait.min(LONGEST_WAIT)
}

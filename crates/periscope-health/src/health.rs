//! [`Health`], the shared state behind every probe, and its builder.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::check::{Check, HealthCheck, check_fn};
use crate::gate::{DrainHandle, StartupGate};
use crate::render::{Details, Probe};
use crate::report::{Report, Status, status_of};
use crate::runner::{NoRuntime, Poller, Runner};

/// The timeout a check gets unless it sets its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a run's results answer probes unless changed.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

/// Liveness, readiness and startup state for one service. Cheap to clone: clones share the
/// checks, the cache, the gates and the drain switch.
///
/// ```
/// use std::time::Duration;
/// use periscope_health::{Health, HealthCheck, StartupGate, Status, check_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), periscope_health::BuildError> {
/// let model_loaded = StartupGate::new("model_loaded");
/// let health = Health::builder()
///     .version("1.4.2")
///     .check("database", || async { Ok::<_, std::io::Error>(()) })
///     .add_check(
///         HealthCheck::new("s3", check_fn(|| async { Err::<(), _>("bucket unreachable") }))
///             .non_critical()
///             .timeout(Duration::from_millis(500)),
///     )
///     .startup_gate(model_loaded.clone())
///     .build()?;
///
/// assert_eq!(health.readiness().await.status(), Status::Starting);
/// model_loaded.open();
/// assert_eq!(health.readiness().await.status(), Status::Degraded); // only s3 failed
///
/// health.drain_handle().drain();
/// assert_eq!(health.readiness().await.status(), Status::Draining);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runner: Arc<Runner>,
    gates: Vec<StartupGate>,
    drain: DrainHandle,
    version: Option<Arc<str>>,
    started: Instant,
    details: Details,
}

impl Health {
    /// Starts building: no checks, no gates, 2 s default timeout, 1 s cache, full details.
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// Liveness: always `ok` while the process can answer. Never touches a dependency, so a
    /// database outage never gets the process restarted.
    pub fn liveness(&self) -> Report {
        self.report(Status::Ok, Vec::new(), None)
    }

    /// Startup: `starting` while a startup gate is closed, `ok` after. Runs no check.
    pub fn startup(&self) -> Report {
        let waiting_for = self.closed_gates();
        let status = if waiting_for.is_empty() {
            Status::Ok
        } else {
            Status::Starting
        };
        self.report(status, waiting_for, None)
    }

    /// Readiness: `draining`, else `starting` while a gate is closed, else the checks' result
    /// (`ok`, `degraded` or `fail`), from the cache, the run in flight, or a new run.
    pub async fn readiness(&self) -> Report {
        let mut epoch = self.epoch();
        loop {
            if let Some(report) = self.readiness_at(epoch) {
                return report;
            }
            // A run of this epoch or a later one: never one taken before a gate closed or a
            // drain began. A drain that begins meanwhile is answered at once, not after the
            // checks.
            let latest = self.inner.runner.latest(epoch);
            let Some(run) = self.inner.drain.unless_drained(latest).await else {
                return self.report(Status::Draining, Vec::new(), None);
            };
            // Draining (or a gate closing) while the checks ran wins: once draining has begun,
            // no probe may still answer 200.
            if let Some(report) = self.held_back() {
                return report;
            }
            // A gate that closed and opened again while the checks ran (a model reloaded): the
            // run was taken before, and says nothing of what was loaded since. Asked again, in
            // the new epoch (a run another probe started since is joined, not repeated).
            let now = self.epoch();
            if now == epoch {
                let status = status_of(&run.outcomes);
                return self.report(status, Vec::new(), Some(run));
            }
            epoch = now;
        }
    }

    /// `draining` or `starting`, when either holds: readiness then runs no check.
    fn held_back(&self) -> Option<Report> {
        if self.inner.drain.is_draining() {
            return Some(self.report(Status::Draining, Vec::new(), None));
        }
        let waiting_for = self.closed_gates();
        if !waiting_for.is_empty() {
            return Some(self.report(Status::Starting, waiting_for, None));
        }
        None
    }

    /// The readiness answer when it needs no waiting: draining, starting, or a fresh cache.
    pub(crate) fn readiness_now(&self) -> Option<Report> {
        self.readiness_at(self.epoch())
    }

    /// [`readiness_now`](Self::readiness_now) with the epoch read before the switches.
    fn readiness_at(&self, epoch: u64) -> Option<Report> {
        if let Some(report) = self.held_back() {
            return Some(report);
        }
        let run = self.inner.runner.cached(epoch)?;
        Some(self.report(status_of(&run.outcomes), Vec::new(), Some(run)))
    }

    /// How many times a gate has closed or a drain begun: a run of the checks answers only the
    /// probes of its epoch (or of an earlier one), so a gate opening or a drain ending is never answered from a run
    /// taken before (a model reloaded because a check failed is not held unready by that
    /// failure, a pod back from a drain does not answer from its dependencies' state before it).
    /// Read before the switches themselves, which are counted after they flip.
    fn epoch(&self) -> u64 {
        epoch(&self.inner.drain, &self.inner.gates)
    }

    /// The names of the startup gates still closed.
    pub fn waiting_for(&self) -> Vec<String> {
        self.closed_gates()
            .iter()
            .map(|name| name.to_string())
            .collect()
    }

    fn closed_gates(&self) -> Vec<Arc<str>> {
        self.inner
            .gates
            .iter()
            .filter(|gate| !gate.is_open())
            .map(|gate| Arc::from(gate.name()))
            .collect()
    }

    fn report(
        &self,
        status: Status,
        waiting_for: Vec<Arc<str>>,
        run: Option<Arc<crate::report::CheckRun>>,
    ) -> Report {
        Report {
            status,
            version: self.inner.version.clone(),
            uptime: self.inner.started.elapsed(),
            waiting_for,
            run,
        }
    }

    /// The switch that flips readiness to 503 `draining` (wire it to SIGTERM).
    pub fn drain_handle(&self) -> DrainHandle {
        self.inner.drain.clone()
    }

    /// The startup gate registered under `name`.
    pub fn startup_gate(&self, name: &str) -> Option<StartupGate> {
        self.inner
            .gates
            .iter()
            .find(|gate| gate.name() == name)
            .cloned()
    }

    /// Whether responses carry error texts.
    pub fn details(&self) -> Details {
        self.inner.details
    }

    /// Background mode: starts a run of the checks every `every` (at least 100 ms; a run that
    /// outlasts it is followed at once by the next) in a task, and probes
    /// answer from the last run whatever its age, so no probe waits on a dependency, except the
    /// first after a startup gate opens or a drain ends: a run taken before the gate closed or
    /// the drain began answers no probe after. No check runs while a startup gate is closed or
    /// the service drains, as for probes.
    /// Polling stops when the returned [`Poller`] is dropped.
    ///
    /// # Errors
    ///
    /// [`NoRuntime`] when called outside a Tokio runtime.
    pub fn spawn_poller(&self, every: Duration) -> Result<Poller, NoRuntime> {
        // While starting or draining readiness runs no check; neither does the poller.
        // The switches, not the `Health`: the task must not keep the runner alive.
        let drain = self.inner.drain.clone();
        let gates = self.inner.gates.clone();
        self.inner.runner.spawn_poller(every, move || {
            let epoch = epoch(&drain, &gates);
            let held_back = drain.is_draining() || gates.iter().any(|gate| !gate.is_open());
            (!held_back).then_some(epoch)
        })
    }

    /// Registers `health_check_status{check}` (1 pass, 0 fail) and
    /// `health_check_duration_seconds{check}` into `registry`; both are updated after every run
    /// (and show the last run at once when registered after it).
    /// Use `registry.sub_registry_with_prefix(..)` for other names.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.runner.metrics().register(registry);
    }

    /// The names [`register_metrics`](Self::register_metrics) registers, with their types:
    /// reserve them in a registry that checks names (`MetricsRegistry::reserve` in
    /// periscope-metrics), so that no other metric can take them.
    #[cfg(feature = "metrics")]
    pub fn metric_names() -> [(&'static str, prometheus_client::metrics::MetricType); 2] {
        crate::metrics::NAMES
    }

    pub(crate) fn respond(&self, probe: Probe) -> Option<Report> {
        match probe {
            Probe::Liveness => Some(self.liveness()),
            Probe::Startup => Some(self.startup()),
            Probe::Readiness => self.readiness_now(),
        }
    }

    /// The report of `probe`, waiting for a run of the checks when readiness needs one.
    #[cfg(feature = "grpc")]
    pub(crate) async fn report_for(&self, probe: Probe) -> Report {
        match self.respond(probe) {
            Some(report) => report,
            None => self.readiness().await,
        }
    }
}

/// See [`Health::epoch`]: each count only grows, so their sum changes whenever one does.
fn epoch(drain: &DrainHandle, gates: &[StartupGate]) -> u64 {
    gates
        .iter()
        .map(StartupGate::closings)
        .fold(drain.drains(), u64::wrapping_add)
}

/// Builds a [`Health`].
#[derive(Debug)]
#[must_use]
pub struct HealthBuilder {
    checks: Vec<HealthCheck>,
    gates: Vec<StartupGate>,
    version: Option<String>,
    default_timeout: Duration,
    cache_ttl: Duration,
    details: Details,
    redactor: Option<periscope_log::Redactor>,
}

impl Default for HealthBuilder {
    fn default() -> Self {
        Self {
            checks: Vec::new(),
            gates: Vec::new(),
            version: None,
            default_timeout: DEFAULT_TIMEOUT,
            cache_ttl: DEFAULT_CACHE_TTL,
            details: Details::default(),
            redactor: None,
        }
    }
}

impl HealthBuilder {
    /// The service version shown by `/ready` (for example `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Adds a critical check from an async closure, under the default timeout.
    ///
    /// The closure's future may return any `Result<T, E>` whose error converts into
    /// `Box<dyn Error + Send + Sync>` (`String`, `&str`, any error type, `anyhow::Error`).
    pub fn check<F, Fut, T, E>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.add_check(HealthCheck::new(name, check_fn(f)))
    }

    /// Adds a non-critical check from an async closure: its failure makes readiness `degraded`.
    pub fn non_critical_check<F, Fut, T, E>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.add_check(HealthCheck::new(name, check_fn(f)).non_critical())
    }

    /// Adds a critical check implemented as a [`Check`] (a trait object or a ready-made check
    /// from [`checks`](crate::checks)).
    pub fn check_with(self, name: impl Into<String>, check: impl Check) -> Self {
        self.add_check(HealthCheck::new(name, check))
    }

    /// Adds a check with its options.
    pub fn add_check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds a startup gate: readiness and startup answer `starting` until it is opened.
    pub fn startup_gate(mut self, gate: StartupGate) -> Self {
        self.gates.push(gate);
        self
    }

    /// The timeout of checks that set none (default 2 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How long a run's results answer later probes (default 1 s; zero keeps only the
    /// sharing of one run between concurrent probes).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Whether error texts appear in responses (default [`Details::Full`]).
    pub fn details(mut self, details: Details) -> Self {
        self.details = details;
        self
    }

    /// The masking rules for check errors and panic messages, in `/ready` and in the log
    /// (default: periscope-log's default rules, which [`CheckError`](crate::CheckError) applies
    /// when it is made). Give the log layer's, so that a key made sensitive there
    /// (`.sensitive_key("pwd")`) is masked in `/ready` as in the log lines.
    ///
    /// ```
    /// let (log_layer, _guard) = periscope_log::LogLayer::builder().sensitive_key("pwd").build();
    /// let health = periscope_health::Health::builder()
    ///     .redactor(log_layer.redactor())
    ///     .build()
    ///     .unwrap();
    /// # drop(health);
    /// ```
    pub fn redactor(mut self, redactor: periscope_log::Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// Checks the configuration and builds.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for an empty or repeated check or gate name, or a zero timeout.
    pub fn build(self) -> Result<Health, BuildError> {
        let mut names = HashSet::new();
        for check in &self.checks {
            if check.name().is_empty() {
                return Err(BuildError::EmptyName);
            }
            if !names.insert(check.name()) {
                return Err(BuildError::DuplicateCheck(check.name().to_owned()));
            }
            if check.timeout.unwrap_or(self.default_timeout).is_zero() {
                return Err(BuildError::ZeroTimeout(check.name().to_owned()));
            }
        }
        let mut gate_names = HashSet::new();
        for gate in &self.gates {
            if gate.name().is_empty() {
                return Err(BuildError::EmptyName);
            }
            if !gate_names.insert(gate.name()) {
                return Err(BuildError::DuplicateGate(gate.name().to_owned()));
            }
        }
        let runner = Runner::new(
            self.checks,
            self.default_timeout,
            self.cache_ttl,
            self.redactor,
        );
        Ok(Health {
            inner: Arc::new(Inner {
                runner: Arc::new(runner),
                gates: self.gates,
                drain: DrainHandle::default(),
                version: self.version.map(Arc::from),
                started: Instant::now(),
                details: self.details,
            }),
        })
    }
}

/// Why [`HealthBuilder::build`] refused the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// A check or gate has an empty name.
    #[error(
        "a health check or startup gate has an empty name: give each a name such as \"database\""
    )]
    EmptyName,
    /// Two checks share a name.
    #[error(
        "two health checks are named {0:?}: names key the response and the metrics, make them unique"
    )]
    DuplicateCheck(String),
    /// Two gates share a name.
    #[error("two startup gates are named {0:?}: make gate names unique")]
    DuplicateGate(String),
    /// A check's timeout is zero.
    #[error(
        "health check {0:?} has a zero timeout, so it could never pass: give it at least a few milliseconds"
    )]
    ZeroTimeout(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rejects_bad_configuration() {
        let ok = || async { Ok::<_, String>(()) };
        assert_eq!(
            Health::builder()
                .check("db", ok)
                .check("db", ok)
                .build()
                .err(),
            Some(BuildError::DuplicateCheck("db".into()))
        );
        assert_eq!(
            Health::builder().check("", ok).build().err(),
            Some(BuildError::EmptyName)
        );
        assert_eq!(
            Health::builder()
                .default_timeout(Duration::ZERO)
                .check("db", ok)
                .build()
                .err(),
            Some(BuildError::ZeroTimeout("db".into()))
        );
        assert_eq!(
            Health::builder()
                .startup_gate(StartupGate::new("model"))
                .startup_gate(StartupGate::new("model"))
                .build()
                .err(),
            Some(BuildError::DuplicateGate("model".into()))
        );
    }
}

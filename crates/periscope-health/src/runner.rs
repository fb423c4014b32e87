//! Running the readiness checks: concurrently, each in its own task under its own timeout, with
//! a short result cache, one shared run for concurrent probes, and optional background polling.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, join_all};
use periscope_context::{RequestContext, WithContext};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::check::{CheckError, HealthCheck};
use crate::report::{CheckOutcome, CheckRun};

type SharedRun = Shared<BoxFuture<'static, Arc<CheckRun>>>;

/// Runs the checks; shared by every probe of one [`Health`](crate::Health).
pub(crate) struct Runner {
    checks: Vec<HealthCheck>,
    default_timeout: Duration,
    cache_ttl: Duration,
    state: Mutex<RunState>,
    /// Held by a run from publishing its results until it has logged them, so that a later
    /// run (started once this one is published) is published and logged after it: the log's
    /// last word on a check is then the run `/ready` answers from.
    publishing: tokio::sync::Mutex<()>,
    /// Background pollers alive: while one is, probes answer from its last run whatever its age.
    pollers: AtomicUsize,
    /// The service's own masking rules, applied to error and panic texts beyond the defaults
    /// `CheckError` applied when it was made.
    redactor: Option<periscope_log::Redactor>,
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<crate::metrics::HealthMetrics>,
}

#[derive(Default)]
struct RunState {
    last: Option<Arc<CheckRun>>,
    /// The run in flight, with the epoch it was started in.
    in_flight: Option<(u64, SharedRun)>,
    /// Each check's panic message on the last run (masked and cut), so that a steady panic is
    /// logged once, as a steady failure is.
    last_panics: Vec<Option<String>>,
}

impl RunState {
    /// Forgets the run in flight if it is the run of `epoch` (a later one may have started
    /// beside it).
    fn end_flight(&mut self, epoch: u64) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(running, _)| *running == epoch)
        {
            self.in_flight = None;
        }
    }
}

impl Runner {
    pub(crate) fn new(
        checks: Vec<HealthCheck>,
        default_timeout: Duration,
        cache_ttl: Duration,
        redactor: Option<periscope_log::Redactor>,
    ) -> Self {
        Self {
            checks,
            default_timeout,
            cache_ttl,
            state: Mutex::default(),
            publishing: tokio::sync::Mutex::const_new(()),
            pollers: AtomicUsize::new(0),
            redactor,
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, RunState> {
        // The lock is never held across an await or user code, so a poisoned lock still holds
        // consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last run when it is still fresh (or kept fresh by a poller) and was taken in `epoch`
    /// or later (after the last gate closing or drain), without waiting.
    pub(crate) fn cached(&self, epoch: u64) -> Option<Arc<CheckRun>> {
        self.fresh(&self.state(), epoch)
    }

    fn fresh(&self, state: &RunState, epoch: u64) -> Option<Arc<CheckRun>> {
        let polled = self.pollers.load(Ordering::Acquire) > 0;
        state
            .last
            .as_ref()
            .filter(|run| run.epoch >= epoch)
            .filter(|run| polled || run.finished.elapsed() < self.cache_ttl)
            .cloned()
    }

    /// The cached run, or the run in flight, or a new run: concurrent callers share one.
    pub(crate) async fn latest(self: &Arc<Self>, epoch: u64) -> Arc<CheckRun> {
        if let Some(run) = self.cached(epoch) {
            return run;
        }
        self.join_or_start(Some(epoch), epoch).await
    }

    /// Joins the run in flight, or starts one in `epoch`; with `fresh_will_do`, first takes a
    /// fresh run of that epoch or a later one under the same lock (one may have finished since
    /// the caller looked: it is not run again).
    ///
    /// A run in flight from an earlier epoch (started before a gate closed or a drain began) is
    /// not joined: it cannot answer, and waiting for it, then for a run of one's own, would take
    /// up to twice the longest timeout. A new run starts beside it; the old one still answers the
    /// probes that joined it.
    fn join_or_start(self: &Arc<Self>, fresh_will_do: Option<u64>, epoch: u64) -> SharedRun {
        let mut state = self.state();
        if let Some(wanted) = fresh_will_do
            && let Some(run) = self.fresh(&state, wanted)
        {
            return async move { run }.boxed().shared();
        }
        if let Some((running, run)) = &state.in_flight
            && *running >= epoch
        {
            return run.clone();
        }
        let run = match Handle::try_current() {
            Ok(handle) => {
                // The run is its own task, so a probe that gives up (client gone) does not
                // cancel the run the other probes wait on.
                let task = handle.spawn(Arc::clone(self).execute(epoch, checks_context()));
                let runner = Arc::downgrade(self);
                async move {
                    match task.await {
                        Ok(run) => run,
                        Err(error) => aborted_run(&runner, epoch, &run_failure(error)),
                    }
                }
                .boxed()
                .shared()
            }
            Err(_) => {
                let outcomes = self
                    .checks
                    .iter()
                    .map(|check| failed(check, Duration::ZERO, NO_RUNTIME.to_owned()))
                    .collect();
                let run = Arc::new(CheckRun {
                    outcomes,
                    finished: Instant::now(),
                    epoch,
                });
                return async move { run }.boxed().shared();
            }
        };
        state.in_flight = Some((epoch, run.clone()));
        run
    }

    /// Runs every check concurrently, stores the result as the last run and reports it.
    async fn execute(self: Arc<Self>, epoch: u64, ctx: Arc<RequestContext>) -> Arc<CheckRun> {
        let (outcomes, panics): (Vec<_>, Vec<_>) = join_all(self.checks.iter().map(|check| {
            run_one(
                check,
                check.timeout.unwrap_or(self.default_timeout),
                Arc::clone(&ctx),
                self.redactor.as_ref(),
            )
        }))
        .await
        .into_iter()
        .unzip();
        let run = Arc::new(CheckRun {
            outcomes,
            finished: Instant::now(),
            epoch,
        });
        let _publishing = self.publishing.lock().await;
        let (previous, previous_panics) = {
            let mut state = self.state();
            state.end_flight(epoch);
            // A run of a later epoch published first: this one answers only the probes that
            // joined it, and must not replace it (nor the gauges and the log's last word).
            if state.last.as_ref().is_some_and(|last| last.epoch > epoch) {
                return run;
            }
            // Recorded as the run is published, under the same locks: the gauges always show
            // the run `/ready` answers from.
            #[cfg(feature = "metrics")]
            if let Some(metrics) = self.metrics.get() {
                metrics.record(&run.outcomes);
            }
            (
                state.last.replace(Arc::clone(&run)),
                std::mem::replace(&mut state.last_panics, panics.clone()),
            )
        };
        for (index, panic) in panics.iter().enumerate() {
            if let Some(panic) = panic
                && previous_panics.get(index).and_then(Option::as_deref) != Some(panic.as_str())
            {
                let check = &run.outcomes[index].name;
                tracing::error!(check = %check, panic = %panic, "health check panicked");
            }
        }
        log_changes(previous.as_deref(), &run);
        run
    }

    /// The gauges, created on first use and filled from the last run if there is one: a
    /// registry that arrives after the first run shows it at once, not after the next run.
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> &crate::metrics::HealthMetrics {
        let metrics = self.metrics.get_or_init(Default::default);
        // Under the lock that publishes runs, so an older run never overwrites a newer one.
        let state = self.state();
        if let Some(last) = &state.last {
            metrics.record(&last.outcomes);
        }
        metrics
    }

    /// Starts a task that runs the checks every `every` (at least [`MIN_POLL_INTERVAL`]) in the
    /// epoch `epoch` gives, but not while it gives none (starting or draining: readiness runs
    /// no check then); stopped when the returned [`Poller`] is dropped.
    pub(crate) fn spawn_poller(
        self: &Arc<Self>,
        every: Duration,
        epoch: impl Fn() -> Option<u64> + Send + 'static,
    ) -> Result<Poller, NoRuntime> {
        let handle = Handle::try_current().map_err(|_| NoRuntime)?;
        let every = every.max(MIN_POLL_INTERVAL);
        let runner = Arc::downgrade(self);
        self.pollers.fetch_add(1, Ordering::AcqRel);
        let task = handle.spawn(async move {
            // Runs start every `every`, however long one takes (a check hanging to its
            // timeout): a reading is at most `every` plus a run old, as probes are sized on.
            // One that outlasts the period is followed at once by the next, then the period.
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(runner) = runner.upgrade() else {
                    return;
                };
                if let Some(epoch) = epoch() {
                    let run = runner.join_or_start(None, epoch);
                    drop(runner);
                    run.await;
                }
            }
        });
        Ok(Poller {
            task: task.abort_handle(),
            runner: Arc::downgrade(self),
        })
    }
}

/// The context the checks of a run are made under: the probe's that started it (a probe path's
/// context, unsampled), else a new trace's (a background poller); never sampled either way. A
/// check that calls a dependency through periscope's client layer sends the ids on with the
/// sampled flag off: under a parent-based sampler, neither side exports a span for a probe.
fn checks_context() -> Arc<RequestContext> {
    let mut ctx = match RequestContext::current() {
        Some(current) => Arc::unwrap_or_clone(current),
        None => RequestContext::new_root(),
    };
    ctx.trace_flags = ctx.trace_flags.with_sampled(false);
    Arc::new(ctx)
}

/// The shortest interval a [`Poller`] runs the checks at.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

const NO_RUNTIME: &str = "no Tokio runtime: serve the probes from inside a Tokio runtime";

/// Returned when background polling is asked for outside a Tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("no Tokio runtime: start the health poller from inside a Tokio runtime")]
pub struct NoRuntime;

/// Keeps background polling alive; dropping it stops the polling, and probes go back to running
/// the checks on demand.
#[derive(Debug)]
#[must_use = "polling stops when the Poller is dropped"]
pub struct Poller {
    task: AbortHandle,
    runner: Weak<Runner>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(runner) = self.runner.upgrade() {
            runner.pollers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("checks", &self.checks)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// Why the run task ended without a run: cancelled (the runtime is shutting down), or a panic
/// of the runner itself, whose message says what to fix (a runtime built without
/// `enable_time` panics at the first timeout: "timers are disabled. Call `enable_time`...").
fn run_failure(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "check run was cancelled".to_owned();
    }
    let payload = error.into_panic();
    let message = format!("check run failed: {}", panic_text(&payload));
    CheckError::msg(message).message().to_owned()
}

/// The run task ended without a run (`reason`): every check failed, nothing cached.
fn aborted_run(runner: &Weak<Runner>, epoch: u64, reason: &str) -> Arc<CheckRun> {
    let outcomes = match runner.upgrade() {
        Some(runner) => {
            runner.state().end_flight(epoch);
            runner
                .checks
                .iter()
                .map(|check| failed(check, Duration::ZERO, reason.to_owned()))
                .collect()
        }
        None => Vec::new(),
    };
    Arc::new(CheckRun {
        outcomes,
        finished: Instant::now(),
        epoch,
    })
}

/// Runs one check in its own task: a panic is caught by the task, and at the timeout the task is
/// aborted. (A check that blocks its thread instead of awaiting cannot be cut off reliably: the
/// `Check` docs ask for `spawn_blocking` around blocking work.)
/// Also returns the panic message (masked and cut as an error text is) when the check panicked:
/// the caller logs it when it changes.
async fn run_one(
    check: &HealthCheck,
    timeout: Duration,
    ctx: Arc<RequestContext>,
    redactor: Option<&periscope_log::Redactor>,
) -> (CheckOutcome, Option<String>) {
    let started = Instant::now();
    let inner = Arc::clone(&check.check);
    // Polled inside `panic::catch`, as the error layer polls a handler: a panic is reported by
    // the runner's line alone (masked, and once while it stays the same), not also by the
    // process's panic hook on every run (the default one's text on stderr, or
    // `Observability::init`'s line), which would print it whole.
    periscope_context::panic::install_hook();
    let check_task = async move {
        let mut running = None;
        std::future::poll_fn(|cx| {
            periscope_context::panic::catch(|| {
                running
                    .get_or_insert_with(|| inner.check())
                    .as_mut()
                    .poll(cx)
            })
            .map_or_else(|caught| Poll::Ready(Err(caught)), |poll| poll.map(Ok))
        })
        .await
    };
    let mut task = tokio::spawn(WithContext::new(ctx, check_task));
    let mut panic = None;
    // Masked and cut as a check's error text: a driver's panic (`expect` on a connect error)
    // often names its connection string.
    let masked = |text: &str| match redactor {
        Some(redactor) => CheckError::masked_with(text, redactor),
        None => CheckError::msg(text),
    };
    let mut panicked = |message: &str| {
        panic = Some(masked(message).message().to_owned());
        Some("check panicked".to_owned())
    };
    let error = match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(Ok(Ok(())))) => None,
        // Masked by the default rules when made; the service's own may hide more.
        Ok(Ok(Ok(Err(error)))) if redactor.is_some() => {
            Some(masked(error.message()).message().to_owned())
        }
        Ok(Ok(Ok(Err(error)))) => Some(error.message().to_owned()),
        Ok(Ok(Err(caught))) => panicked(&caught.message),
        // A panic outside the catch: the check's future panicking in its drop.
        Ok(Err(join_error)) if join_error.is_panic() => {
            panicked(panic_text(&join_error.into_panic()))
        }
        Ok(Err(_)) => Some("check was cancelled".to_owned()),
        Err(_) => {
            task.abort();
            Some(format!("timed out after {}", format_duration(timeout)))
        }
    };
    let duration = started.elapsed();
    let outcome = match error {
        None => CheckOutcome {
            name: Arc::clone(&check.name),
            critical: check.critical,
            duration,
            error: None,
        },
        Some(error) => failed(check, duration, error),
    };
    (outcome, panic)
}

fn failed(check: &HealthCheck, duration: Duration, error: String) -> CheckOutcome {
    CheckOutcome {
        name: Arc::clone(&check.name),
        critical: check.critical,
        duration,
        error: Some(error),
    }
}

fn panic_text(payload: &Box<dyn Any + Send>) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}

/// `2s`, `100ms`, or Debug form for finer durations.
pub(crate) fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{duration:?}")
    }
}

/// Logs a check when it starts failing, fails differently, or recovers: the log always holds the
/// full error text, even when responses withhold it, without repeating it on every probe.
fn log_changes(previous: Option<&CheckRun>, run: &CheckRun) {
    for (index, outcome) in run.outcomes.iter().enumerate() {
        let before = previous.and_then(|previous| previous.outcomes.get(index));
        let before_error = before.and_then(|before| before.error.as_deref());
        match (&outcome.error, before_error) {
            (Some(error), before) if before != Some(error.as_str()) => tracing::warn!(
                check = %outcome.name,
                critical = outcome.critical,
                duration_ms = duration_ms(outcome.duration),
                error = %error,
                "health check failed"
            ),
            (None, Some(_)) => tracing::info!(check = %outcome.name, "health check recovered"),
            _ => {}
        }
    }
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_config() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
    }
}

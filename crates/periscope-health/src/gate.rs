//! Switches the service flips: startup gates ("model loaded") and draining.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A startup condition the service opens when it is met, for example "model loaded".
///
/// While any gate is closed, `/startup` and `/ready` answer 503 `starting` and the readiness
/// checks are not run. Clones share one switch: keep one in the code that loads the model.
///
/// ```
/// use periscope_health::{Health, StartupGate};
///
/// let model_loaded = StartupGate::new("model_loaded");
/// let health = Health::builder().startup_gate(model_loaded.clone()).build()?;
/// assert_eq!(health.waiting_for(), vec!["model_loaded".to_owned()]);
/// model_loaded.open();
/// assert!(health.waiting_for().is_empty());
/// # Ok::<(), periscope_health::BuildError>(())
/// ```
#[derive(Clone)]
pub struct StartupGate {
    name: Arc<str>,
    open: Arc<AtomicBool>,
    /// How many times the gate has closed: a run of the checks taken before a closing no longer
    /// describes the service once the gate opens again (a reloaded model).
    closings: Arc<AtomicU64>,
}

impl StartupGate {
    /// A closed gate with this name (shown in `waiting_for` while closed).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: Arc::from(name.into()),
            open: Arc::new(AtomicBool::new(false)),
            closings: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Marks the condition met.
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
    }

    /// Marks the condition unmet again, for example while a model reloads.
    pub fn close(&self) {
        // Counted after the switch, so that a probe that sees the gate open again sees the count.
        if self.open.swap(false, Ordering::AcqRel) {
            self.closings.fetch_add(1, Ordering::Release);
        }
    }

    /// How many times the gate has closed (read before the switch by readiness).
    pub(crate) fn closings(&self) -> u64 {
        self.closings.load(Ordering::Acquire)
    }

    /// Whether the condition is met.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The gate's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for StartupGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupGate")
            .field("name", &self.name)
            .field("open", &self.is_open())
            .finish()
    }
}

/// Flips readiness to 503 `draining` before a graceful shutdown, so the load balancer stops
/// sending new traffic while requests in flight finish. Liveness stays 200.
///
/// Get one from [`Health::drain_handle`](crate::Health::drain_handle); clones share one switch.
///
/// ```no_run
/// # async fn shutdown(health: periscope_health::Health) {
/// use std::time::Duration;
/// // On SIGTERM: fail readiness, give the load balancer time to notice, then stop the server.
/// health.drain_handle().drain_for(Duration::from_secs(5)).await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DrainHandle {
    draining: Arc<AtomicBool>,
    /// How many drains have begun: a run of the checks taken before one no longer describes the
    /// service once it is resumed.
    drains: Arc<AtomicU64>,
    /// Wakes those waiting for a drain to begin (a probe waiting on the checks, a gRPC watch).
    began: Arc<tokio::sync::Notify>,
}

impl DrainHandle {
    /// Starts draining: `/ready` answers 503 `draining` from now on.
    pub fn drain(&self) {
        // Counted after the switch, so that a probe that sees the drain ended sees the count.
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.drains.fetch_add(1, Ordering::Release);
            self.began.notify_waiters();
        }
    }

    /// Starts draining, then waits `grace` (at least two readiness probe periods is the rule of
    /// thumb) so load balancers take the instance out before the server stops.
    pub async fn drain_for(&self, grace: Duration) {
        self.drain();
        tokio::time::sleep(grace).await;
    }

    /// Stops draining (a cancelled shutdown).
    pub fn resume(&self) {
        self.draining.store(false, Ordering::Release);
    }

    /// Whether the service is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// How many drains have begun (read before the switch by readiness).
    pub(crate) fn drains(&self) -> u64 {
        self.drains.load(Ordering::Acquire)
    }

    /// Completes once the service drains (at once when it already does).
    pub(crate) async fn drained(&self) {
        loop {
            let began = self.began.notified();
            let mut began = std::pin::pin!(began);
            // Registered before the switch is read, so a drain in between is not missed.
            began.as_mut().enable();
            if self.is_draining() {
                return;
            }
            began.await;
        }
    }

    /// `work`'s output, or `None` once the service drains first.
    pub(crate) async fn unless_drained<F: std::future::Future>(
        &self,
        work: F,
    ) -> Option<F::Output> {
        let work = std::pin::pin!(work);
        let drained = std::pin::pin!(self.drained());
        match futures_util::future::select(work, drained).await {
            futures_util::future::Either::Left((output, _)) => Some(output),
            futures_util::future::Either::Right(((), _)) => None,
        }
    }
}

impl fmt::Debug for DrainHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainHandle")
            .field("draining", &self.is_draining())
            .finish()
    }
}

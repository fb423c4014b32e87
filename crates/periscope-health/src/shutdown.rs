//! Graceful shutdown: a stop signal, then readiness draining for a grace period, then stop.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{Either, select};
use tokio::sync::watch;

use crate::DrainHandle;

/// Graceful shutdown in the order Kubernetes needs it: on the stop signal `/ready` answers 503
/// `draining` for the grace period, so load balancers take the instance out while it still
/// serves, and only then does every clone's [`wait`](Self::wait) return: the moment to stop
/// accepting connections and finish the requests in flight.
///
/// Clones share the one shutdown; hand one to each listener.
///
/// ```no_run
/// use std::time::Duration;
/// use periscope_health::{Health, Shutdown};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let health = Health::builder().build()?;
/// // SIGTERM or Ctrl-C: /ready answers draining for 5 s, then `wait()` returns.
/// let shutdown = Shutdown::on_signal(health.drain_handle(), Duration::from_secs(5));
/// // axum: `axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().wait())`;
/// // hyper: stop the accept loop when `shutdown.clone().wait()` returns, then finish the
/// // connections (hyper-util's `GracefulShutdown`).
/// shutdown.wait().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Shutdown {
    stopped: watch::Receiver<bool>,
}

impl Shutdown {
    /// Shuts down on SIGTERM (Unix) or Ctrl-C (SIGINT), logged as the `cause`. The handlers are
    /// in place when this returns, so a signal sent right after is not missed. Call it inside a
    /// Tokio runtime with I/O and time enabled (`#[tokio::main]` is: the grace period is a
    /// timer). When no handler can be installed
    /// the error is logged and the service runs on, without graceful shutdown.
    ///
    /// A second signal during the grace period ends it at once: `/ready` keeps answering
    /// `draining`, and [`wait`](Self::wait) returns. The requests in flight then have the
    /// server's own shutdown timeout to finish (`periscope::Server`: 10 s); signals after the
    /// grace period are not listened for.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn on_signal(drain: DrainHandle, grace: Duration) -> Self {
        let mut signals = StopSignals::install();
        Self::spawn(drain, grace, async move {
            let cause = signals.next().await;
            (cause, async move { signals.next().await })
        })
    }

    /// Shuts down when `trigger` completes (a signal of your own, an admin call, a test); its
    /// output names the cause in the log line.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn on<F>(trigger: F, drain: DrainHandle, grace: Duration) -> Self
    where
        F: Future<Output = &'static str> + Send + 'static,
    {
        Self::spawn(drain, grace, async move {
            (trigger.await, std::future::pending())
        })
    }

    /// Runs the shutdown: `signals` yields the cause of the stop and a future that completes
    /// on a second stop request, which cuts the grace period short.
    fn spawn<S, F>(drain: DrainHandle, grace: Duration, signals: S) -> Self
    where
        S: Future<Output = (&'static str, F)> + Send + 'static,
        F: Future<Output = &'static str> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let (cause, again) = signals.await;
            tracing::info!(
                target: SHUTDOWN_TARGET,
                cause,
                grace_s = grace.as_secs_f64(),
                "shutting down: /ready answers draining"
            );
            let drained = std::pin::pin!(drain.drain_for(grace));
            if let Either::Right((cause, _)) = select(drained, std::pin::pin!(again)).await {
                tracing::info!(
                    target: SHUTDOWN_TARGET,
                    cause,
                    "second stop signal: the rest of the grace period is skipped"
                );
            }
            tracing::info!(
                target: SHUTDOWN_TARGET,
                "drained: stopping the listeners, finishing the requests in flight"
            );
            // A `resume()` during the grace period does not cancel the shutdown: `/ready`
            // must not send traffic back to listeners that are closing.
            drain.drain();
            let _ = stop.send(true);
        });
        Self { stopped }
    }

    /// Whether the grace period is over (the moment [`wait`](Self::wait) returns).
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Returns once the signal has come and the grace period is over; also when the shutdown
    /// task is gone (its runtime shut down), since nothing could then end the wait.
    pub async fn wait(mut self) {
        let _ = self.stopped.wait_for(|stopped| *stopped).await;
    }
}

/// The tracing target of the shutdown's log lines.
pub const SHUTDOWN_TARGET: &str = "periscope_health::shutdown";

/// The process's stop signals: SIGTERM and SIGINT (Unix), Ctrl-C elsewhere.
struct StopSignals {
    #[cfg(unix)]
    streams: std::io::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Installs the handlers now, so a signal sent right after is not missed.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Tokio panics, rather than failing, when its runtime has no I/O driver (the signal
            // driver is part of it): that is an error to log too, not a reason to stop.
            let install = || {
                signal(SignalKind::terminate())
                    .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)))
            };
            let streams = std::panic::catch_unwind(install).unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "the Tokio runtime has no I/O driver, so no signal driver",
                ))
            });
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next stop signal's name; if no handler could be installed, logs the error and never
    /// completes.
    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        match &mut self.streams {
            // Without `tokio::select!`, which would need tokio's macros in every build.
            Ok((terminate, interrupt)) => {
                std::future::poll_fn(|cx| {
                    if terminate.poll_recv(cx).is_ready() {
                        return std::task::Poll::Ready("SIGTERM");
                    }
                    interrupt.poll_recv(cx).map(|_| "SIGINT")
                })
                .await
            }
            Err(error) => never_without_handlers(error).await,
        }
    }

    /// The next Ctrl-C; if no handler can be installed, logs the error and never completes.
    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(error) => never_without_handlers(&error).await,
        }
    }
}

async fn never_without_handlers(error: &std::io::Error) -> &'static str {
    tracing::error!(
        target: SHUTDOWN_TARGET,
        error = %error,
        "cannot listen for stop signals, graceful shutdown is off: \
         build the Tokio runtime with I/O enabled"
    );
    std::future::pending().await
}

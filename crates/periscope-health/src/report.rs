//! The results of a probe: each check's outcome and the status rules that combine them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

/// The overall status of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Every check passed (and every startup gate is open).
    Ok,
    /// Only non-critical checks failed: still serving, answered 200.
    Degraded,
    /// A critical check failed: answered 503.
    Fail,
    /// A startup gate is still closed: answered 503.
    Starting,
    /// The service is shutting down: answered 503.
    Draining,
}

impl Status {
    /// The word used on the wire: `ok`, `degraded`, `fail`, `starting`, `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Fail => "fail",
            Status::Starting => "starting",
            Status::Draining => "draining",
        }
    }

    /// 200 for `ok` and `degraded`, 503 for the rest.
    pub fn http_status(self) -> StatusCode {
        if self.is_serving() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// Whether traffic should be sent: `ok` or `degraded`.
    pub fn is_serving(self) -> bool {
        matches!(self, Status::Ok | Status::Degraded)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check in one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The check's name.
    pub name: Arc<str>,
    /// Whether a failure fails readiness.
    pub critical: bool,
    /// How long the check ran (its timeout when it was cut off).
    pub duration: Duration,
    /// `None` when the check passed; the error text when it failed, timed out or panicked.
    pub error: Option<String>,
}

impl CheckOutcome {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
    }
}

/// One run of every readiness check, shared by all the probes it answers.
#[derive(Debug)]
pub(crate) struct CheckRun {
    pub(crate) outcomes: Vec<CheckOutcome>,
    pub(crate) finished: Instant,
    /// The gate closings and drains counted before the run started: a run taken before a gate
    /// closed or a drain began answers no probe after the gate opens or the drain ends.
    pub(crate) epoch: u64,
}

/// Combines outcomes into `ok`, `degraded` or `fail`.
pub(crate) fn status_of(outcomes: &[CheckOutcome]) -> Status {
    let mut status = Status::Ok;
    for outcome in outcomes.iter().filter(|outcome| !outcome.passed()) {
        if outcome.critical {
            return Status::Fail;
        }
        status = Status::Degraded;
    }
    status
}

/// The answer to a probe: overall status, version, uptime, startup gates still closed, and
/// each check's outcome.
#[derive(Clone, Debug)]
pub struct Report {
    pub(crate) status: Status,
    pub(crate) version: Option<Arc<str>>,
    pub(crate) uptime: Duration,
    pub(crate) waiting_for: Vec<Arc<str>>,
    pub(crate) run: Option<Arc<CheckRun>>,
}

impl Report {
    /// The overall status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The service version given to the builder.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Time since the [`Health`](crate::Health) was built.
    pub fn uptime(&self) -> Duration {
        self.uptime
    }

    /// The startup gates still closed (empty unless the status is `starting`).
    pub fn waiting_for(&self) -> impl Iterator<Item = &str> {
        self.waiting_for.iter().map(|name| &**name)
    }

    /// Each check's outcome, in registration order; empty when checks did not run
    /// (`starting`, `draining`, or a startup probe).
    pub fn checks(&self) -> &[CheckOutcome] {
        self.run.as_deref().map_or(&[], |run| &run.outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(critical: bool, passed: bool) -> CheckOutcome {
        CheckOutcome {
            name: Arc::from("c"),
            critical,
            duration: Duration::ZERO,
            error: (!passed).then(|| "down".to_owned()),
        }
    }

    #[test]
    fn status_rules() {
        assert_eq!(status_of(&[]), Status::Ok);
        assert_eq!(status_of(&[outcome(true, true)]), Status::Ok);
        assert_eq!(
            status_of(&[outcome(true, true), outcome(false, false)]),
            Status::Degraded
        );
        assert_eq!(
            status_of(&[outcome(false, false), outcome(true, false)]),
            Status::Fail
        );
        for (status, code) in [
            (Status::Ok, 200),
            (Status::Degraded, 200),
            (Status::Fail, 503),
            (Status::Starting, 503),
            (Status::Draining, 503),
        ] {
            assert_eq!(status.http_status().as_u16(), code, "{status}");
        }
    }
}

//! Catching panics of the inner service and of its response body, with their message,
//! location and backtrace kept for the log (the catching itself is periscope-context's, shared
//! with periscope-trace's job spans).

/// Re-exported at the crate's root.
pub use periscope_context::panic::is_catching_panics;
pub(crate) use periscope_context::panic::{CaughtPanic, catch, install_hook};

use crate::code::codes;
use crate::render::Ids;

/// The one log line of a caught panic, with the request's ids.
pub(crate) trait LogPanic {
    /// Logs the panic as `handler panicked`.
    fn log(self, ids: &Ids);
}

impl LogPanic for CaughtPanic {
    fn log(self, ids: &Ids) {
        log_caught(self, ids, "handler panicked");
    }
}

/// Runs `drop` (dropping a failed or timed-out request's future or body) inside a catch: a
/// destructor that panics in turn (a guard that panics when its work is abandoned) is logged,
/// as `handler panicked while dropped`, rather than lost.
pub(crate) fn drop_caught(ids: &Ids, drop: impl FnOnce()) {
    if let Err(caught) = catch(drop) {
        log_caught(caught, ids, "handler panicked while dropped");
    }
}

fn log_caught(caught: CaughtPanic, ids: &Ids, what: &'static str) {
    tracing::error!(
        request_id = ids.request_id.as_str(),
        trace_id = ids.trace_id.map(tracing::field::display),
        code = codes::INTERNAL_ERROR.name(),
        panic.message = caught.message,
        panic.location = caught.location,
        panic.backtrace = caught.backtrace,
        "{what}"
    );
}

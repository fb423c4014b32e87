//! Catching panics of the inner service and of its response body, with their message,
//! location and backtrace kept for the log.
//!
//! `catch_unwind` hands back only the payload; the location and backtrace exist only inside
//! the panic hook. So the layer installs, once per process, a hook that records them for panics
//! raised while it polls the inner service or a body, and hands every other panic to the hook
//! that was installed before. A panic the layer catches is reported by the layer's log line
//! instead of the default hook's text on stderr.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo, catch_unwind};
use std::sync::Once;

use crate::code::codes;
use crate::render::Ids;

/// A panic caught while polling the inner service or its response body.
#[derive(Debug)]
pub(crate) struct CaughtPanic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) backtrace: Option<String>,
}

impl CaughtPanic {
    /// The one log line of a caught panic, with the request's ids.
    pub(crate) fn log(self, ids: &Ids) {
        tracing::error!(
            request_id = ids.request_id.as_str(),
            trace_id = ids.trace_id.map(tracing::field::display),
            code = codes::INTERNAL_ERROR.name(),
            panic.message = self.message,
            panic.location = self.location,
            panic.backtrace = self.backtrace,
            "handler panicked"
        );
    }
}

thread_local! {
    /// Whether this thread is inside [`catch`]: the hook then records instead of printing.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Location and backtrace of the last panic recorded by the hook on this thread.
    static RECORDED: RefCell<Option<(Option<String>, Option<String>)>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// Installs the recording hook once per process (idempotent, cheap after the first call).
pub(crate) fn install_hook() {
    INSTALL.call_once(|| {
        // `take_hook` may not be called while panicking; the location is then simply missing.
        if std::thread::panicking() {
            return;
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                record(info);
            } else {
                previous(info);
            }
        }));
    });
}

fn record(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    // Captured only when RUST_BACKTRACE / RUST_LIB_BACKTRACE ask for it.
    let backtrace = Backtrace::capture();
    let backtrace =
        (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
    RECORDED.with(|recorded| *recorded.borrow_mut() = Some((location, backtrace)));
}

/// Runs `f`, turning a panic into a [`CaughtPanic`].
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, CaughtPanic> {
    let was_catching = CATCHING.with(|catching| catching.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(was_catching));
    result.map_err(|payload| {
        let (location, backtrace) = RECORDED
            .with(|recorded| recorded.borrow_mut().take())
            .unwrap_or_default();
        CaughtPanic {
            message: payload_message(payload),
            location,
            backtrace,
        }
    })
}

fn payload_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic with a non-string payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_location_are_kept() {
        install_hook();
        let caught = catch(|| -> u8 { panic!("boom {}", 42) }).unwrap_err();
        assert_eq!(caught.message, "boom 42");
        let location = caught.location.unwrap();
        assert!(location.contains("panic.rs:"), "{location}");
        assert_eq!(catch(|| 7).unwrap(), 7);
    }

    #[test]
    fn static_and_foreign_payloads() {
        install_hook();
        assert_eq!(catch(|| panic!("static")).unwrap_err().message, "static");
        let caught = catch(|| std::panic::panic_any(17_u32)).unwrap_err();
        assert_eq!(caught.message, "a panic with a non-string payload");
    }
}

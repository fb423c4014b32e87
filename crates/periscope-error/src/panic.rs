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
    /// The last panic recorded by the hook on this thread, until [`catch`] claims it.
    static RECORDED: RefCell<Option<Recorded>> = const { RefCell::new(None) };
    /// Whether [`RECORDED`] holds a record: a plain flag, checked before taking it. `RECORDED`
    /// has a destructor, so each access checks its registration and moves the whole `Option`
    /// out; [`catch`] takes it twice per call, and panics are rare (about 70 instructions
    /// a take, eight takes per request through the layer).
    static HAS_RECORDED: Cell<bool> = const { Cell::new(false) };
}

/// What the hook saw of a panic: its message (when the payload is a string), location and
/// backtrace.
struct Recorded {
    message: Option<String>,
    location: Option<String>,
    backtrace: Option<String>,
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

/// Whether a panic raised on this thread now is caught by an [`ErrorLayer`](crate::ErrorLayer)
/// and reported by its `handler panicked` line (or its `a panic was caught inside the service`
/// line): a panic hook of the service's own can leave such panics to it instead of reporting
/// them twice.
pub fn is_catching_panics() -> bool {
    CATCHING.try_with(Cell::get).unwrap_or(false)
}

fn record(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    // Captured only when RUST_BACKTRACE / RUST_LIB_BACKTRACE ask for it.
    let backtrace = Backtrace::capture();
    let backtrace =
        (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned());
    let panic = Recorded {
        message,
        location,
        backtrace,
    };
    // A record nobody claimed is of a panic the service caught itself: reported, not dropped.
    let unclaimed = RECORDED.with(|recorded| recorded.borrow_mut().replace(panic));
    HAS_RECORDED.with(|has| has.set(true));
    if let Some(unclaimed) = unclaimed {
        report_caught_by_the_service(unclaimed);
    }
}

/// Reports a panic that the hook recorded while the layer polled the service, but that the
/// service caught itself (its own `catch_unwind`): the hook did not pass it to the previous
/// hook, so it is logged here instead of vanishing.
fn report_caught_by_the_service(panic: Recorded) {
    tracing::warn!(
        panic.message = panic.message,
        panic.location = panic.location,
        panic.backtrace = panic.backtrace,
        "a panic was caught inside the service"
    );
}

/// Takes the record of this thread's last panic, if any.
#[inline]
fn take_recorded() -> Option<Recorded> {
    if !HAS_RECORDED.with(|has| has.replace(false)) {
        return None;
    }
    take_record()
}

#[inline(never)]
fn take_record() -> Option<Recorded> {
    RECORDED.with(|recorded| recorded.borrow_mut().take())
}

/// Runs `f`, turning a panic into a [`CaughtPanic`].
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, CaughtPanic> {
    // A record left over is of an earlier panic the service caught itself; it must not be
    // taken for a panic of this call (`resume_unwind` raises one without calling the hook).
    if let Some(unclaimed) = take_recorded() {
        report_caught_by_the_service(unclaimed);
    }
    let was_catching = CATCHING.with(|catching| catching.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|catching| catching.set(was_catching));
    let recorded = take_recorded();
    match result {
        Ok(value) => {
            if let Some(unclaimed) = recorded {
                report_caught_by_the_service(unclaimed);
            }
            Ok(value)
        }
        Err(payload) => {
            let message = payload_message(payload);
            // The record is this panic's only when the hook saw the same message: a panic
            // re-raised with `resume_unwind` skips the hook, and the record is then another's.
            let (location, backtrace) = match recorded {
                Some(recorded) if recorded.message == message => {
                    (recorded.location, recorded.backtrace)
                }
                Some(unclaimed) => {
                    report_caught_by_the_service(unclaimed);
                    (None, None)
                }
                None => (None, None),
            };
            Err(CaughtPanic {
                message: message.unwrap_or_else(|| "a panic with a non-string payload".to_owned()),
                location,
                backtrace,
            })
        }
    }
}

/// The payload's text, when it is a string (as every `panic!` message is).
fn payload_message(payload: Box<dyn Any + Send>) -> Option<String> {
    match payload.downcast::<String>() {
        Ok(message) => Some(*message),
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => Some((*message).to_owned()),
            Err(payload) => {
                // A payload's destructor may panic too (`catch_unwind`'s known trap): that
                // panic must not unwind out of the layer either, nor its payload's.
                if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                    std::mem::forget(again);
                }
                None
            }
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
    fn a_re_raised_panic_never_takes_the_location_of_a_panic_caught_before() {
        install_hook();
        // The service catches a panic itself while the layer polls it ...
        let recovered = catch(|| std::panic::catch_unwind(|| -> u8 { panic!("first") }).is_err());
        assert!(recovered.unwrap());
        // ... and a later poll re-raises another one, which skips the hook.
        let caught = catch(|| std::panic::resume_unwind(Box::new("re-raised"))).unwrap_err();
        assert_eq!(caught.message, "re-raised");
        assert_eq!(
            caught.location, None,
            "the location of `first` is not this panic's"
        );
    }

    #[test]
    fn static_and_foreign_payloads() {
        install_hook();
        assert_eq!(catch(|| panic!("static")).unwrap_err().message, "static");
        let caught = catch(|| std::panic::panic_any(17_u32)).unwrap_err();
        assert_eq!(caught.message, "a panic with a non-string payload");
    }
}

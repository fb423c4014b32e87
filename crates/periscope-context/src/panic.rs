//! Catching panics with their message, location and backtrace kept for the log: shared by
//! periscope-error's `ErrorLayer` (a handler's panic) and periscope-trace's `JobSpan` (a job's).
//!
//! `catch_unwind` hands back only the payload; the location and backtrace exist only inside
//! the panic hook. So [`install_hook`] installs, once per process, a hook that records them for
//! panics raised inside [`catch`], and hands every other panic to the hook that was installed
//! before. A panic caught here is reported by its catcher's log line instead of the default
//! hook's text on stderr.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, PanicHookInfo, catch_unwind};
use std::sync::{Mutex, Once, PoisonError};

/// A panic caught by [`catch`]: what it said, where, and its payload, to re-raise it.
pub struct CaughtPanic {
    /// The panic's message (`a panic with a non-string payload` when it had none).
    pub message: String,
    /// `file:line:column`, when the recording hook saw the panic.
    pub location: Option<String>,
    /// The backtrace, when `RUST_BACKTRACE` / `RUST_LIB_BACKTRACE` ask for one.
    pub backtrace: Option<String>,
    /// Always `Some` until [`CaughtPanic::resume`] or the drop takes it. In a `Mutex` (never
    /// locked: only reached through `&mut self`) so that a caught panic is `Sync`, as the
    /// futures and bodies that hold one must be.
    payload: Mutex<Option<Box<dyn Any + Send>>>,
}

impl CaughtPanic {
    /// Goes on unwinding with the original payload (without calling the panic hook again), so
    /// whoever catches it next (`catch_unwind`, a task's `JoinError`) sees the same panic.
    pub fn resume(mut self) -> ! {
        let payload = self
            .payload()
            .take()
            .unwrap_or_else(|| Box::new(self.message.clone()));
        std::panic::resume_unwind(payload)
    }
}

impl CaughtPanic {
    fn payload(&mut self) -> &mut Option<Box<dyn Any + Send>> {
        self.payload
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CaughtPanic {
    fn drop(&mut self) {
        // A payload's destructor may panic too (`catch_unwind`'s known trap): that panic must
        // not unwind out of the catcher either, nor its payload's.
        if let Some(payload) = self.payload().take()
            && let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload)))
        {
            std::mem::forget(again);
        }
    }
}

impl fmt::Debug for CaughtPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaughtPanic")
            .field("message", &self.message)
            .field("location", &self.location)
            .finish_non_exhaustive()
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
    /// a take, eight takes per request through the error layer).
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
pub fn install_hook() {
    // `take_hook` may not be called while panicking: a call made then (from a `Drop` run by
    // an unwinding panic) installs nothing and leaves the next call to install it, rather
    // than using up the `Once` and leaving every later panic without its location.
    if std::thread::panicking() {
        return;
    }
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Built with `panic = "abort"`, no panic is caught: the process ends with this
            // one, which must be told where the hook before would tell it.
            if CATCHING.with(Cell::get) && !cfg!(panic = "abort") {
                record(info);
            } else {
                previous(info);
            }
        }));
    });
}

/// Whether a panic raised on this thread now is caught by [`catch`] (an `ErrorLayer` or a
/// `JobSpan`) and reported by its catcher's line: a panic hook of the service's own can leave
/// such panics to it instead of reporting them twice. Never in a build with `panic = "abort"`,
/// where no panic is caught.
pub fn is_catching_panics() -> bool {
    !cfg!(panic = "abort") && CATCHING.try_with(Cell::get).unwrap_or(false)
}

fn record(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    // Captured only when RUST_BACKTRACE / RUST_LIB_BACKTRACE ask for it.
    let backtrace = Backtrace::capture();
    let backtrace =
        (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string());
    let message = payload_message(info.payload()).map(str::to_owned);
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

/// Reports a panic that the hook recorded inside [`catch`], but that the code it ran caught
/// itself (its own `catch_unwind`): the hook did not pass it to the previous hook, so it is
/// logged here instead of vanishing.
fn report_caught_by_the_service(panic: Recorded) {
    tracing::warn!(
        // The target this line had when only the error layer caught panics.
        target: "periscope_error::panic",
        {
            panic.message = panic.message,
            panic.location = panic.location,
            panic.backtrace = panic.backtrace,
        },
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
#[inline]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, CaughtPanic> {
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
        Err(payload) => Err(caught(payload, recorded)),
    }
}

#[cold]
fn caught(payload: Box<dyn Any + Send>, recorded: Option<Recorded>) -> CaughtPanic {
    let message = payload_message(&*payload);
    // The record is this panic's only when the hook saw the same message: a panic re-raised
    // with `resume_unwind` skips the hook, and the record is then another's.
    let (location, backtrace) = match recorded {
        Some(recorded) if recorded.message.as_deref() == message => {
            (recorded.location, recorded.backtrace)
        }
        Some(unclaimed) => {
            report_caught_by_the_service(unclaimed);
            (None, None)
        }
        None => (None, None),
    };
    CaughtPanic {
        message: message
            .unwrap_or("a panic with a non-string payload")
            .to_owned(),
        location,
        backtrace,
        payload: Mutex::new(Some(payload)),
    }
}

/// The payload's text, when it is a string (as every `panic!` message is).
fn payload_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_location_are_kept() {
        install_hook();
        let caught = catch(|| -> u8 { panic!("boom {}", 42) }).unwrap_err();
        assert_eq!(caught.message, "boom 42");
        let location = caught.location.clone().unwrap();
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

    #[test]
    fn a_resumed_panic_keeps_its_payload() {
        install_hook();
        let caught = catch(|| std::panic::panic_any(17_u32)).unwrap_err();
        let again = std::panic::catch_unwind(AssertUnwindSafe(|| caught.resume())).unwrap_err();
        assert_eq!(again.downcast_ref::<u32>(), Some(&17));
    }

    #[test]
    fn a_payload_whose_drop_panics_does_not_unwind() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("payload drop");
            }
        }
        install_hook();
        let caught = catch(|| std::panic::panic_any(Bomb)).unwrap_err();
        drop(caught);
    }
}

//! What periscope's layers leave for each other to tell when they are composed in another
//! order than the documented one (`docs/ordering.md`): correlation, metrics, access log,
//! errors, outermost first. Each misordering found is warned once per process, at `warn`
//! under [`ORDER_TARGET`], by the layer that sees it. The checks run only where something
//! unusual is seen, so a stack in the documented order pays nothing for them.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The `tracing` target of the warnings about layers composed out of order.
pub const ORDER_TARGET: &str = "periscope::order";

/// The documented order, outermost first.
pub const DOCUMENTED_ORDER: &str = "CorrelationLayer → MetricsLayer → AccessLogLayer → ErrorLayer";

/// In a request's extensions: the [`RequestContext`](crate::RequestContext) beside it was made
/// by periscope-error's `ErrorLayer`, which found none (no correlation layer outside it). A
/// correlation layer inside takes its ids, so the envelope and the log lines agree.
#[derive(Clone, Copy, Debug)]
pub struct ContextFromErrorLayer;

thread_local! {
    static ERROR_LAYER_DROPPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, the error layer dropping the inner future of a request it answers itself (a
/// panic, a timeout): a periscope layer dropped meanwhile is inside the error layer.
pub fn error_layer_dropping<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = ERROR_LAYER_DROPPING.try_with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(
        ERROR_LAYER_DROPPING
            .try_with(|flag| flag.replace(true))
            .unwrap_or(false),
    );
    f()
}

/// Whether the error layer is dropping the future being dropped now (see
/// [`error_layer_dropping`]).
pub fn dropped_by_error_layer() -> bool {
    ERROR_LAYER_DROPPING.try_with(Cell::get).unwrap_or(false)
}

/// Two periscope layers found in the wrong order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misordering {
    /// `ErrorLayer` outside `AccessLogLayer`.
    ErrorOutsideAccessLog,
    /// `ErrorLayer` outside `MetricsLayer`.
    ErrorOutsideMetrics,
    /// `ErrorLayer` outside `CorrelationLayer`.
    ErrorOutsideCorrelation,
    /// `AccessLogLayer` outside `CorrelationLayer`.
    AccessLogOutsideCorrelation,
}

static WARNED: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

impl Misordering {
    /// The layer found outside.
    pub fn outer(self) -> &'static str {
        match self {
            Self::ErrorOutsideAccessLog
            | Self::ErrorOutsideMetrics
            | Self::ErrorOutsideCorrelation => "ErrorLayer",
            Self::AccessLogOutsideCorrelation => "AccessLogLayer",
        }
    }

    /// The layer found inside.
    pub fn inner(self) -> &'static str {
        match self {
            Self::ErrorOutsideAccessLog => "AccessLogLayer",
            Self::ErrorOutsideMetrics => "MetricsLayer",
            Self::ErrorOutsideCorrelation | Self::AccessLogOutsideCorrelation => "CorrelationLayer",
        }
    }

    /// What goes wrong.
    fn effect(self) -> &'static str {
        match self {
            Self::ErrorOutsideAccessLog => {
                "a panic or timeout answered with an envelope is logged without its status \
                 (a panic as a failure, a timeout `aborted`)"
            }
            Self::ErrorOutsideMetrics => {
                "a timeout answered with a 504 envelope is counted `cancelled`, not as a server error"
            }
            Self::ErrorOutsideCorrelation => {
                "the error layer makes the request's context itself, and a panic unwinds through the correlation layer and the layers inside it"
            }
            Self::AccessLogOutsideCorrelation => {
                "access lines are written outside the request span, without request_id and trace_id"
            }
        }
    }

    /// True the first time it is asked for this misordering in the process: the caller warns.
    pub fn first_time(self) -> bool {
        !WARNED[self as usize].swap(true, Ordering::Relaxed)
    }
}

/// The warning's message: the two layers, the order found, the documented order and the
/// document.
impl fmt::Display for Misordering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (outer, inner) = (self.outer(), self.inner());
        write!(
            f,
            "periscope layers out of order: {outer} is outside {inner} (found {outer} → {inner}, \
             outermost first; documented: {DOCUMENTED_ORDER}): {}; see docs/ordering.md",
            self.effect()
        )
    }
}

/// Warns, once per process, that two periscope layers are composed out of order: a
/// [`Misordering`]'s one `warn` line under [`ORDER_TARGET`]. A macro, so the line is logged
/// through the calling layer's `tracing` (this crate does not log).
#[doc(hidden)]
#[macro_export]
macro_rules! warn_misordered {
    ($misordering:expr) => {{
        let misordering: $crate::order::Misordering = $misordering;
        if misordering.first_time() {
            tracing::warn!(
                target: $crate::order::ORDER_TARGET,
                outer = misordering.outer(),
                inner = misordering.inner(),
                "{misordering}"
            );
        }
    }};
}

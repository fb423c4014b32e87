//! Which propagation formats the layers read and write (`OTEL_PROPAGATORS`).

use std::sync::atomic::{AtomicU8, Ordering};

/// The propagation formats in use. W3C Trace Context (`traceparent`, `tracestate`) and W3C
/// Baggage (`baggage`) are the ones periscope speaks; `x-request-id` and the tenant headers are
/// always propagated.
///
/// ```
/// use periscope_trace::Propagators;
///
/// let only_trace = Propagators::default().with_baggage(false);
/// assert!(only_trace.trace_context() && !only_trace.baggage());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagators {
    trace_context: bool,
    baggage: bool,
}

impl Default for Propagators {
    /// Both: `tracecontext,baggage`, as OpenTelemetry's default.
    fn default() -> Self {
        Self::BOTH
    }
}

impl Propagators {
    const BOTH: Self = Self {
        trace_context: true,
        baggage: true,
    };

    /// Neither format (`OTEL_PROPAGATORS=none`): every request starts a new trace and nothing
    /// but the request id and tenant headers is sent on.
    pub const fn none() -> Self {
        Self {
            trace_context: false,
            baggage: false,
        }
    }

    /// With or without W3C Trace Context.
    pub const fn with_trace_context(self, on: bool) -> Self {
        Self {
            trace_context: on,
            ..self
        }
    }

    /// With or without W3C Baggage.
    pub const fn with_baggage(self, on: bool) -> Self {
        Self {
            baggage: on,
            ..self
        }
    }

    /// What [`from_list`](Self::from_list) accepts, for error messages.
    pub const ACCEPTED: &'static str = "expected a comma-separated list of tracecontext and baggage, or none alone (B3, Jaeger and X-Ray are not supported)";

    /// The formats an `OTEL_PROPAGATORS` value names: `tracecontext`, `baggage` (either
    /// case, a name given twice counted once), or `none` alone. `None` for any other name,
    /// `none` beside another, or a list of commas only. It names what is propagated, not what
    /// is exported, so it applies with OpenTelemetry export or without.
    ///
    /// ```
    /// use periscope_trace::Propagators;
    ///
    /// assert_eq!(Propagators::from_list("TraceContext"), Some(Propagators::default().with_baggage(false)));
    /// assert_eq!(Propagators::from_list("none"), Some(Propagators::none()));
    /// assert_eq!(Propagators::from_list("tracecontext,b3"), None);
    /// ```
    pub fn from_list(list: &str) -> Option<Self> {
        let mut names: Vec<String> = list
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        // Duplicates count once, as the OpenTelemetry specification asks: `none,none` is `none`.
        names.sort();
        names.dedup();
        // Only separators: turning propagation off takes an explicit `none`. `none` beside
        // another name says two contrary things: refused, as other SDKs do, rather than guessed.
        if names.is_empty() || (names.len() > 1 && names.iter().any(|name| name == "none")) {
            return None;
        }
        let mut propagators = Self::none();
        for name in &names {
            propagators = match name.as_str() {
                "tracecontext" => propagators.with_trace_context(true),
                "baggage" => propagators.with_baggage(true),
                "none" => propagators,
                _ => return None,
            };
        }
        Some(propagators)
    }

    /// The `OTEL_PROPAGATORS` value naming these formats, which
    /// [`from_list`](Self::from_list) reads back.
    ///
    /// ```
    /// use periscope_trace::Propagators;
    ///
    /// assert_eq!(Propagators::default().as_list(), "tracecontext,baggage");
    /// assert_eq!(Propagators::none().as_list(), "none");
    /// ```
    pub const fn as_list(self) -> &'static str {
        match (self.trace_context, self.baggage) {
            (true, true) => "tracecontext,baggage",
            (true, false) => "tracecontext",
            (false, true) => "baggage",
            (false, false) => "none",
        }
    }

    /// Removes from `carrier` (headers, a job's carrier) what these formats do not send.
    pub(crate) fn strip<C: periscope_context::Injector + ?Sized>(self, carrier: &mut C) {
        if !self.trace_context {
            carrier.remove(&periscope_context::headers::TRACEPARENT);
            carrier.remove(&periscope_context::headers::TRACESTATE);
        }
        if !self.baggage {
            carrier.remove(&periscope_context::headers::BAGGAGE);
        }
    }

    /// Whether both formats are propagated (nothing to strip).
    pub(crate) const fn all(self) -> bool {
        self.trace_context && self.baggage
    }

    /// Whether `traceparent` / `tracestate` are read and written.
    pub const fn trace_context(self) -> bool {
        self.trace_context
    }

    /// Whether `baggage` is read and written.
    pub const fn baggage(self) -> bool {
        self.baggage
    }

    /// Makes these the process's formats: what [`inject`](crate::inject), [`ClientSpan`],
    /// [`ClientTraceLayer`] and [`CorrelationLayer`] use unless told otherwise, the way
    /// OpenTelemetry's global propagator serves every instrumented library.
    /// `OtelConfig::install` (feature `otel`) and periscope's `init` call it with
    /// `OTEL_PROPAGATORS`.
    ///
    /// [`ClientSpan`]: crate::ClientSpan
    /// [`ClientTraceLayer`]: crate::ClientTraceLayer
    /// [`CorrelationLayer`]: crate::CorrelationLayer
    ///
    /// ```
    /// use periscope_trace::Propagators;
    ///
    /// Propagators::default().with_baggage(false).set_global();
    /// assert!(!Propagators::global().baggage());
    /// ```
    pub fn set_global(self) {
        GLOBAL.store(self.bits(), Ordering::Relaxed);
    }

    /// The process's formats: both, unless [`set_global`](Self::set_global) said otherwise.
    // Inlined into `Correlation::call`, compiled in the service's crate (every request).
    #[inline]
    pub fn global() -> Self {
        Self::from_bits(GLOBAL.load(Ordering::Relaxed))
    }

    const fn bits(self) -> u8 {
        self.trace_context as u8 | (self.baggage as u8) << 1
    }

    const fn from_bits(bits: u8) -> Self {
        Self {
            trace_context: bits & 1 != 0,
            baggage: bits & 2 != 0,
        }
    }
}

/// The process's formats, as bits (see [`Propagators::bits`]): one relaxed load per request.
static GLOBAL: AtomicU8 = AtomicU8::new(Propagators::BOTH.bits());

//! Which propagation formats the layers read and write (`OTEL_PROPAGATORS`).

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
        Self {
            trace_context: true,
            baggage: true,
        }
    }
}

impl Propagators {
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

    /// Whether `traceparent` / `tracestate` are read and written.
    pub const fn trace_context(self) -> bool {
        self.trace_context
    }

    /// Whether `baggage` is read and written.
    pub const fn baggage(self) -> bool {
        self.baggage
    }
}

//! With feature `otel`: a line that no request, job or context gave a trace id, logged inside
//! a span that OpenTelemetry exports (work at startup, a background loop), carries the ids of
//! that span, so the line and the exported span can be found from each other.
//!
//! The ids are those of OpenTelemetry's current context, which tracing-opentelemetry makes the
//! innermost exported span's while it is entered. Read from that thread-local, a line costs no
//! span entry anything and takes no lock: reading them from the span's own OpenTelemetry data
//! could deadlock, as tracing-opentelemetry holds that data's lock while it starts the span,
//! and a sampler or span processor that logs then would wait for it.

use opentelemetry::trace::TraceContextExt;

/// The trace id and span id (lower-case hex) of the span of this thread's current
/// OpenTelemetry context, if it is a local span (a remote parent attached by hand is not this
/// service's span).
pub(crate) fn current_span_ids() -> Option<(String, String)> {
    opentelemetry::Context::map_current(|context| {
        let span = context.span();
        let span_context = span.span_context();
        (span_context.is_valid() && !span_context.is_remote()).then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    })
}

//! With feature `otel`: a line that no request, job or context gave a trace id, logged inside
//! a span that OpenTelemetry exports (work at startup, a background loop), carries the ids of
//! that span, so the line and the exported span can be found from each other.

use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;

/// The ids of OpenTelemetry's spans, read through the dispatch the log layer is part of.
#[derive(Default)]
pub(crate) struct ExportedSpans {
    /// Weak: the dispatch owns the layer that holds this.
    dispatch: OnceLock<WeakDispatch>,
}

impl ExportedSpans {
    pub(crate) fn register(&self, dispatch: &Dispatch) {
        // A layer serves one dispatch: the first to register it.
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    /// The trace id and span id (lower-case hex) of the innermost span of `spans` (innermost
    /// first) that OpenTelemetry exports; `None` without an OpenTelemetry layer, or when no
    /// span in scope is exported (below its level).
    pub(crate) fn ids(&self, mut spans: impl Iterator<Item = Id>) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        spans.find_map(|id| {
            let context = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
            let span = context.span();
            let span_context = span.span_context();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            })
        })
    }
}

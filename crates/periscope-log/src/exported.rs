//! With feature `otel`: a line that no request, job or context gave a trace id, logged inside
//! a span that OpenTelemetry exports (work at startup, a background loop), carries the ids of
//! that span, so the line and the exported span can be found from each other.
//!
//! The ids are read once, as the span is first entered, and kept in its extensions; a line
//! only reads them there. Reading them from tracing-opentelemetry while a line is logged
//! could deadlock: tracing-opentelemetry holds a span's lock while it starts the span, and a
//! sampler or span processor that logs then would log into a lookup of that same lock.

use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The ids of OpenTelemetry's spans, read through the dispatch the log layer is part of.
#[derive(Default)]
pub(crate) struct ExportedSpans {
    /// Weak: the dispatch owns the layer that holds this.
    dispatch: OnceLock<WeakDispatch>,
}

/// A span's exported ids, or `None` when OpenTelemetry does not export it; in the span's
/// extensions from its first entry on.
struct ExportedIds(Option<(TraceId, SpanId)>);

impl ExportedSpans {
    pub(crate) fn register(&self, dispatch: &Dispatch) {
        // A layer serves one dispatch: the first to register it.
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    /// Keeps the exported ids of `span`, entered, unless they are kept already.
    pub(crate) fn on_enter<'a, S: LookupSpan<'a> + 'a>(&self, span: &SpanRef<'a, S>) {
        if span.extensions().get::<ExportedIds>().is_some() {
            return;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        // No lock of the span's is held here: tracing-opentelemetry takes them (and may start
        // the span, which its own entry does anyway).
        let ids = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch).and_then(|cx| {
            let span = cx.span();
            let span_context = span.span_context();
            span_context
                .is_valid()
                .then(|| (span_context.trace_id(), span_context.span_id()))
        });
        // `replace`, not `insert`: another thread entering the span may have kept them since.
        span.extensions_mut().replace(ExportedIds(ids));
    }

    /// The trace id and span id (lower-case hex) of the innermost span of `spans` (innermost
    /// first) that OpenTelemetry exports; `None` without an OpenTelemetry layer, or when no
    /// span in scope is exported (below its level) or was ever entered.
    pub(crate) fn ids<'a, S: LookupSpan<'a> + 'a>(
        &self,
        mut spans: impl Iterator<Item = SpanRef<'a, S>>,
    ) -> Option<(String, String)> {
        spans.find_map(|span| {
            let (trace_id, span_id) = span.extensions().get::<ExportedIds>()?.0?;
            Some((trace_id.to_string(), span_id.to_string()))
        })
    }
}

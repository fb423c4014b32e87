//! Makes the ids in the logs, the exported span and the outgoing `traceparent` one and the same.
//!
//! Without OpenTelemetry the [`RequestContext`] is the only source of ids. With the `otel`
//! feature and an OpenTelemetry layer in the subscriber, the span is started right away under
//! the context's parent, and the ids the OpenTelemetry SDK chose for it (and its sampling
//! decision) are written back into the context before anything else sees it. Either way the
//! ids are then recorded on the span, so log lines, the exported span, the response and every
//! outgoing call agree by construction.

use periscope_context::{RequestContext, TraceParent};
use tracing::Span;

use crate::sampler::Sampler;

/// Whether the parent named by `ctx.parent_span_id` lives in another process (a `traceparent`
/// or a job carrier) or in this one (the request span of an outgoing call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParentKind {
    Remote,
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    Local,
}

/// Binds `span` and `ctx` to the same ids and records them (and the tenant) on the span.
/// `link` is a trace this span is linked to rather than a child of (trust boundary).
/// `sampler` decides `ctx`'s sampled flag where no OpenTelemetry layer took the span (and so
/// its sampler's decision): after that layer had its say, so it is told the caller's own flag.
pub(crate) fn bind(
    span: &Span,
    ctx: &mut RequestContext,
    parent: ParentKind,
    link: Option<&TraceParent>,
    sampler: Option<Sampler>,
) {
    #[cfg(feature = "otel")]
    let exported = otel::adopt_exported_ids(span, ctx, parent, link);
    #[cfg(not(feature = "otel"))]
    let exported = {
        let _ = parent;
        false
    };
    if !exported && let Some(sampler) = sampler {
        sampler.apply(ctx);
    }
    if let Some(link) = link {
        span.record("link.trace_id", link.trace_id.to_hex().as_str());
        span.record("link.span_id", link.parent_id.to_hex().as_str());
    }
    if cfg!(feature = "otel") {
        crate::fields::record_ids(span, ctx);
    }
    crate::fields::record_tenant(span, &ctx.tenant);
}

/// The context to name as the parent of work handed on from here without a span of its own
/// (a job's carrier): `ctx`, or, with OpenTelemetry, `ctx` under the id of the span current
/// on this thread when that span belongs to `ctx`'s trace (a span of the service's own inside
/// the request, `enqueue_receipt`), so the work nests under it in the export as a client call
/// made there does.
pub(crate) fn handing_on(ctx: &RequestContext) -> std::borrow::Cow<'_, RequestContext> {
    #[cfg(feature = "otel")]
    if let Some(span_id) = otel::enclosing_span_id(ctx) {
        let mut inner = ctx.clone();
        inner.span_id = span_id;
        return std::borrow::Cow::Owned(inner);
    }
    std::borrow::Cow::Borrowed(ctx)
}

/// The value of an id field when the span is created: the id itself without OpenTelemetry
/// (nothing can change it, and recording it up front is cheaper); with OpenTelemetry, nothing
/// yet, since [`bind`] records the exported span's ids. A `Display` value, so its hex form is
/// written only by a layer that reads it.
pub(crate) fn early_id<T: std::fmt::Display>(id: T) -> Option<tracing::field::DisplayValue<T>> {
    (!cfg!(feature = "otel")).then(|| tracing::field::display(id))
}

/// A text field of the server and client spans as it is best recorded: without OpenTelemetry
/// a `Display` value, which a formatting layer writes as it is (text it quotes and escapes
/// character by character: about 570 instructions a request for the server span's method,
/// route, path and scheme, 46 for its `otel.kind`); with OpenTelemetry the text itself, which
/// its layer copies (a `Display` value it formats: about 1,400 more a request). Both give JSON
/// layers and exporters the same string.
#[cfg(not(feature = "otel"))]
pub(crate) fn span_text(text: &str) -> tracing::field::DisplayValue<&str> {
    tracing::field::display(text)
}

/// See the version without OpenTelemetry.
#[cfg(feature = "otel")]
pub(crate) fn span_text(text: &str) -> &str {
    text
}

/// Renames `span` where it is exported (`otel.name`). The OpenTelemetry span is started when
/// the server span is bound, and a later `otel.name` changes only the builder it no longer
/// reads: the started span is renamed as well.
#[cold]
#[inline(never)]
pub(crate) fn rename(span: &Span, name: &'static str) {
    span.record("otel.name", name);
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if !span.is_disabled() {
            span.context().span().update_name(name);
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use super::ParentKind;
    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use periscope_context::{RequestContext, TraceParent};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The trace state for the OpenTelemetry span. OpenTelemetry checks keys by the Level 1
    /// grammar, stricter than Level 2 (`foo@@bar` is refused): when the whole state is refused,
    /// the members it accepts are kept, in order, rather than none.
    pub(super) fn otel_trace_state(state: &periscope_context::TraceState) -> TraceState {
        if state.is_empty() {
            return TraceState::NONE;
        }
        state.as_str().parse().unwrap_or_else(|_| {
            let accepted = state
                .iter()
                .filter(|member| TraceState::from_key_value([*member]).is_ok());
            TraceState::from_key_value(accepted).unwrap_or(TraceState::NONE)
        })
    }

    /// The exported id of the span current on this thread, when it is valid, belongs to
    /// `ctx`'s trace and is not `ctx`'s own span.
    pub(super) fn enclosing_span_id(ctx: &RequestContext) -> Option<periscope_context::SpanId> {
        let current = Span::current();
        if current.is_disabled() {
            return None;
        }
        let cx = current.context();
        let span = cx.span();
        let enclosing = span.span_context();
        if !enclosing.is_valid() || enclosing.trace_id().to_bytes() != ctx.trace_id.to_bytes() {
            return None;
        }
        periscope_context::SpanId::from_bytes(enclosing.span_id().to_bytes())
            .filter(|id| *id != ctx.span_id)
    }

    /// Tells once per process that the OpenTelemetry layer's tracer makes no spans: most
    /// often its provider was shut down by an `OtelGuard` dropped early (a temporary in
    /// `OtelConfig::install()?.layer()`), and nothing is exported from then on.
    #[cold]
    fn warn_no_spans() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                target: "periscope_trace::otel",
                "the OpenTelemetry layer's tracer makes no spans, so nothing is exported: was \
                 its tracer provider shut down? Keep the OtelGuard in a variable until the end \
                 of main (a temporary, as in `install()?.layer()`, is dropped at once)"
            );
        });
    }

    /// A call's span no subscriber takes (a global filter quietening client spans) while
    /// the span it is made in is exported: the call goes out under that span, which the
    /// backend has, rather than under an id no exported span has. Without an exported span
    /// around it (no export), the call keeps a span id of its own.
    fn under_exported_span(ctx: &mut RequestContext) -> bool {
        let current = Span::current().context();
        let enclosing = current.span().span_context().clone();
        if !enclosing.is_valid() || enclosing.trace_id().to_bytes() != ctx.trace_id.to_bytes() {
            return false;
        }
        match periscope_context::SpanId::from_bytes(enclosing.span_id().to_bytes()) {
            Some(span_id) => {
                ctx.span_id = span_id;
                true
            }
            None => false,
        }
    }

    /// Whether the span is exported's: `ctx` then has its ids and sampling decision.
    pub(super) fn adopt_exported_ids(
        span: &Span,
        ctx: &mut RequestContext,
        parent: ParentKind,
        link: Option<&TraceParent>,
    ) -> bool {
        if span.is_disabled() {
            return parent == ParentKind::Local && under_exported_span(ctx);
        }
        let parent_span_id = ctx.parent_span_id;
        // A call made inside a span of the service's own (`db_lookup`) nests under it, as
        // tracing nests it, when that span belongs to the context's trace; a call outside any
        // request joins the trace of the span it is made in, if any.
        let enclosing = (parent == ParentKind::Local)
            .then(|| Span::current().context())
            .filter(|cx| {
                let enclosing = cx.span().span_context().clone();
                enclosing.is_valid()
                    && (parent_span_id.is_none()
                        || enclosing.trace_id().to_bytes() == ctx.trace_id.to_bytes())
            });
        // Joining the enclosing span's trace (no context of its own): that trace's id may be
        // a caller's, which the W3C `random` flag must not vouch for.
        let joined = enclosing
            .as_ref()
            .filter(|_| parent_span_id.is_none())
            .map(|cx| cx.span().span_context().clone());
        // The exported span a call of a request or job is made under (the enclosing one, of
        // the same trace, else the request's). None for a call outside any: its trace is its
        // own, and no span of another trace may stand in for its parent.
        let exported_parent = match (&enclosing, parent_span_id) {
            (_, None) => None,
            (Some(cx), Some(_)) => {
                periscope_context::SpanId::from_bytes(cx.span().span_context().span_id().to_bytes())
            }
            (None, parent) => parent,
        };
        let parent_cx = match (enclosing, parent_span_id) {
            (Some(enclosing), _) => enclosing,
            (None, Some(parent_id)) => {
                let state = otel_trace_state(&ctx.trace_state);
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(ctx.trace_id.to_bytes()),
                    SpanId::from_bytes(parent_id.to_bytes()),
                    TraceFlags::new(ctx.trace_flags.propagated().to_u8()),
                    parent == ParentKind::Remote,
                    state,
                ))
            }
            // An explicit empty parent: a new trace must not attach to whatever OpenTelemetry
            // context happens to be current on this thread.
            (None, None) => Context::new(),
        };
        if span.set_parent(parent_cx).is_err() {
            // No OpenTelemetry layer (or the span was started already): our ids stand.
            return false;
        }
        if let Some(link) = link {
            span.add_link(SpanContext::new(
                TraceId::from_bytes(link.trace_id.to_bytes()),
                SpanId::from_bytes(link.parent_id.to_bytes()),
                TraceFlags::new(link.flags.propagated().to_u8()),
                true,
                TraceState::NONE,
            ));
        }
        let started = span.context();
        let exported = started.span().span_context().clone();
        let (Some(trace_id), Some(span_id)) = (
            periscope_context::TraceId::from_bytes(exported.trace_id().to_bytes()),
            periscope_context::SpanId::from_bytes(exported.span_id().to_bytes()),
        ) else {
            // A call's span the OpenTelemetry layer left out (a filter of its own) while the
            // span it is made under is exported: the call goes out under that span, which the
            // backend has, not under an id no exported span has; outside any request, in that
            // span's trace.
            if parent == ParentKind::Local
                && let Some(parent_id) = exported_parent
            {
                ctx.span_id = parent_id;
                return true;
            }
            if parent == ParentKind::Local
                && let Some(enclosing) = &joined
                && join(ctx, enclosing)
            {
                return true;
            }
            // A span the layer left out has no OpenTelemetry data: our ids stand, rightly.
            // One with data but no ids comes from a tracer that makes no spans (shut down, or
            // a no-op tracer): our ids stand, and the service is told.
            let left_out = span
                .with_subscriber(|(id, dispatch)| {
                    tracing_opentelemetry::get_otel_context(id, dispatch).is_none()
                })
                .unwrap_or(true);
            if !left_out {
                warn_no_spans();
            }
            return false;
        };
        if Some(span_id) == parent_span_id {
            // A no-op tracer hands the parent back as the "new" span: not a span of ours.
            return false;
        }
        ctx.trace_id = trace_id;
        ctx.span_id = span_id;
        ctx.trace_flags = ctx.trace_flags.with_sampled(exported.is_sampled());
        if joined.is_some() {
            ctx.trace_flags = ctx.trace_flags.with_random(false);
        }
        true
    }

    /// Puts `ctx` under the exported span `enclosing`, in its trace: a call outside any
    /// request whose own span is not exported. That trace's id may be a caller's, which the
    /// W3C `random` flag must not vouch for.
    fn join(ctx: &mut RequestContext, enclosing: &SpanContext) -> bool {
        let (Some(trace_id), Some(span_id)) = (
            periscope_context::TraceId::from_bytes(enclosing.trace_id().to_bytes()),
            periscope_context::SpanId::from_bytes(enclosing.span_id().to_bytes()),
        ) else {
            return false;
        };
        ctx.trace_id = trace_id;
        ctx.span_id = span_id;
        ctx.trace_flags = (ctx.trace_flags)
            .with_sampled(enclosing.is_sampled())
            .with_random(false);
        true
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use periscope_context::TraceState;

    #[test]
    fn trace_state_members_opentelemetry_refuses_are_dropped_alone() {
        let level2 = TraceState::parse("rojo=1,foo@@bar=2,congo=3").unwrap();
        assert_eq!(level2.len(), 3);
        assert_eq!(
            super::otel::otel_trace_state(&level2).header(),
            "rojo=1,congo=3"
        );
        let plain = TraceState::parse("rojo=1,congo=2").unwrap();
        assert_eq!(
            super::otel::otel_trace_state(&plain).header(),
            "rojo=1,congo=2"
        );
        assert_eq!(
            super::otel::otel_trace_state(&TraceState::new()).header(),
            ""
        );
    }
}

//! The warnings about context headers (or carrier entries) that were sent but could not be
//! used, shared by the server layer and jobs.

/// One warning for each part of the context that was sent but rejected: an invalid request id
/// (replaced, or stood in for by a valid `x-correlation-id`), each invalid tenant field, and,
/// when `$trace` is given, an invalid `traceparent`. Each warning carries the ids itself: a
/// probe path has no span to lift them from. A macro because `tracing` needs the target at
/// compile time.
macro_rules! warn_rejected {
    ($target:expr, $span:expr, $ctx:expr, $request_id:expr, $rejected_tenant:expr, $trace:expr) => {{
        use periscope_context::{RequestIdOrigin, TraceOrigin};
        let (span, ctx): (&tracing::Span, &periscope_context::RequestContext) = ($span, $ctx);
        let rejected_id = match $request_id {
            RequestIdOrigin::Replaced(reason) => Some((
                reason,
                "replaced the invalid incoming request id with a generated one",
            )),
            RequestIdOrigin::KeptCorrelationId(reason) => Some((
                reason,
                "ignored the invalid incoming x-request-id; kept the valid x-correlation-id",
            )),
            _ => None,
        };
        let trace: Option<&TraceOrigin> = $trace;
        let restarted = match trace {
            Some(TraceOrigin::Restarted(reason)) => Some(reason),
            _ => None,
        };
        let rejected_tenant: &[(periscope_context::TenantKey, periscope_context::InvalidId)] =
            $rejected_tenant;
        if rejected_id.is_some() || restarted.is_some() || !rejected_tenant.is_empty() {
            let trace_id = ctx.trace_id.to_hex();
            let trace_id = trace_id.as_str();
            let request_id = ctx.request_id.as_str();
            if let Some((reason, message)) = rejected_id {
                tracing::warn!(target: $target, parent: span, request_id, trace_id, reason = %reason, "{message}");
            }
            if let Some(reason) = restarted {
                tracing::warn!(
                    target: $target,
                    parent: span,
                    request_id,
                    trace_id,
                    reason = %reason,
                    "started a new trace: the incoming traceparent is invalid"
                );
            }
            for (key, reason) in rejected_tenant {
                tracing::warn!(
                    target: $target,
                    parent: span,
                    request_id,
                    trace_id,
                    header = key.header().as_str(),
                    reason = %reason,
                    "ignored an invalid tenant header"
                );
            }
        }
    }};
}

pub(crate) use warn_rejected;

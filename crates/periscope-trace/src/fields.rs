//! Span fields shared by the server, client and job spans: OpenTelemetry HTTP semantic
//! conventions plus periscope's context fields (`request_id`, `trace_id`, `span_id`, tenant).

use http::Method;
use periscope_context::{RequestContext, Tenant};
use tracing::Span;

/// Tenant fields recorded under their own name on every span (tracing needs field names at
/// compile time). Other declared tenant keys are recorded together in the `tenant` field.
pub const SPAN_TENANT_FIELDS: [&str; 5] =
    ["org_id", "project_id", "team_id", "user_id", "tenant_id"];

/// `http.request.method`: the standard methods as themselves, anything else as `_OTHER`
/// (the original goes to `http.request.method_original`), so a flood of made-up methods cannot
/// create unbounded span names.
pub(crate) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The original method, only when it was folded into `_OTHER`.
pub(crate) fn method_original(method: &Method) -> Option<&str> {
    (method_name(method) == "_OTHER").then(|| method.as_str())
}

/// Records the context's ids on `span`.
pub(crate) fn record_ids(span: &Span, ctx: &RequestContext) {
    span.record("trace_id", ctx.trace_id.to_hex().as_str());
    span.record("span_id", ctx.span_id.to_hex().as_str());
}

/// Records the tenant fields on `span`.
pub(crate) fn record_tenant(span: &Span, tenant: &Tenant) {
    let mut others = String::new();
    for (key, value) in tenant.iter() {
        if SPAN_TENANT_FIELDS.contains(&key.field()) {
            span.record(key.field(), value);
        } else {
            if !others.is_empty() {
                others.push(',');
            }
            others.push_str(key.field());
            others.push('=');
            others.push_str(value);
        }
    }
    if !others.is_empty() {
        span.record("tenant", others.as_str());
    }
}

/// Records the response status; `otel.status_code` is `ERROR` from `error_from` up (5xx for a
/// server span, 4xx for a client span, as the HTTP semantic conventions say).
pub(crate) fn record_status(span: &Span, status: http::StatusCode, error_from: u16) {
    span.record("http.response.status_code", status.as_u16());
    if status.as_u16() >= error_from {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records a failed call (no response at all).
pub(crate) fn record_failure(span: &Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_fold_into_other() {
        assert_eq!(method_name(&Method::GET), "GET");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_name(&custom), "_OTHER");
        assert_eq!(method_original(&custom), Some("PURGE"));
        assert_eq!(method_original(&Method::GET), None);
    }
}

//! Request ids and W3C context for periscope: the types every other periscope crate shares.
//!
//! - [`RequestId`]: validation of incoming ids (1–128 characters of `A-Z a-z 0-9 - _ . :`) and
//!   generation of new ones (`req_` + a lower-case ULID: time-ordered, URL-safe, unique).
//! - [`TraceParent`], [`TraceState`]: W3C Trace Context Level 2 headers.
//! - [`Baggage`]: W3C Baggage, bounded to 64 members and 8192 bytes.
//! - [`RequestContext`]: all of the above plus tenant fields, stored in `http::Extensions`,
//!   and reachable from deep inside a handler through [`RequestContext::current`].
//! - [`extract`], [`inject`] and [`Carrier`]: moving a context through headers, queue messages
//!   and job payloads, so a background job continues the request's trace.
//! - [`TrustedProxies`], [`ForwardingHeader`], [`ClientAddr`]: the client's address behind the
//!   proxies a service trusts, from the header they set (`X-Forwarded-For` or `Forwarded`),
//!   which no other caller can set.
//! - [`grpc`]: the status of a gRPC answer, which the layers count, trace and log by the HTTP
//!   status it stands for.
//! - The lists the layers share: [`DEFAULT_QUIET_PATHS`] (the probe and scrape paths, the
//!   gRPC health service's [`GRPC_HEALTH_PATHS`] among them), [`SENSITIVE_KEY_PARTS`] and
//!   [`SIGNATURE_QUERY_PARAMS`] (what redaction masks).
//!
//! This crate has no Tower dependency; `periscope-trace` builds the layers on top of it.
//!
//! ```
//! use http::HeaderMap;
//! use periscope_context::{extract, inject, ExtractOptions};
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let ctx = extract(&incoming, &ExtractOptions::default()).context;
//!
//! // An outgoing call: same trace and request id, a fresh parent id.
//! let mut outgoing = HeaderMap::new();
//! inject(&ctx.child(), &mut outgoing);
//! assert!(outgoing["traceparent"].to_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! ```
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod baggage;
mod carrier;
mod client;
mod context;
pub mod grpc;
mod ids;
// How periscope's own layers tell each other they are composed out of order: public for
// them, not a stable API (the warnings' target, `periscope::order`, is what users see).
#[doc(hidden)]
pub mod order;
// Panic catching shared by periscope-error's layer and periscope-trace's job spans: public
// for them, not a stable API (their log lines are what users see).
#[doc(hidden)]
pub mod panic;
mod peer;
mod request_id;
mod route;
mod tenant;
// Text cut to a bound, shared by periscope-error, -trace, -log and -admin: public for them, not
// a stable API (the bounds each of them documents are what users see).
#[doc(hidden)]
pub mod text;
mod traceparent;
mod tracestate;

pub use baggage::{Baggage, BaggageError, BaggageMember, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};
pub use carrier::{
    Carrier, CarrierValue, ExtractOptions, Extracted, Extractor, Injector, RequestIdOrigin,
    TraceOrigin, extract, inject, remove_absent_tenants,
};
pub use client::{
    ClientAddr, ForwardingHeader, InvalidForwardingHeader, InvalidProxyNet, MAX_FORWARDED_HOPS,
    TrustedProxies,
};
pub use context::{RequestContext, WithContext};
pub use ids::{HexId, SpanId, TraceFlags, TraceId};
pub use peer::PeerAddr;
pub use request_id::{InvalidId, MAX_REQUEST_ID_LEN, RequestId, validate_id};
pub use route::{MatchedRoute, RouteTemplateError, RouteTemplates};
pub use tenant::{
    InvalidTenantKey, SPAN_TENANT_FIELDS, SPAN_TENANT_OTHERS, Tenant, TenantKey, TenantSpanFields,
};
pub use traceparent::{TRACEPARENT_LEN, TraceParent, TraceParentError};
pub use tracestate::{MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS, TraceState, TraceStateError};

/// The error code of an answer periscope rendered as an error envelope, in its response's
/// extensions: the error layer puts it there, so the layers above it (the access log) can say
/// which error a 4xx or 5xx was without reading the body.
///
/// ```
/// use periscope_context::AnsweredError;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(AnsweredError::new("order_not_found"));
/// let answered = response.extensions().get::<AnsweredError>().unwrap();
/// assert_eq!(answered.code(), "order_not_found");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnsweredError(std::borrow::Cow<'static, str>);

impl AnsweredError {
    /// The answer's error code.
    pub fn new(code: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self(code.into())
    }

    /// The code (`order_not_found`).
    pub fn code(&self) -> &str {
        &self.0
    }
}

/// An error answered after the response's head went out: a layer that may end a streamed
/// body with an error of its own puts one in the response's extensions and fills it when it
/// does (periscope-error's, for a gRPC stream whose service panics: `INTERNAL` trailers), so
/// the layers above it (the access log) can say which error it was, as [`AnsweredError`] says
/// of an answer rendered at its head.
///
/// ```
/// use periscope_context::{AnsweredError, AnsweredLater};
///
/// let later = AnsweredLater::default();
/// let seen = later.clone();
/// assert!(seen.get().is_none());
/// later.set(AnsweredError::new("internal_error"));
/// assert_eq!(seen.get().unwrap().code(), "internal_error");
/// ```
#[derive(Clone, Debug, Default)]
pub struct AnsweredLater(std::sync::Arc<std::sync::OnceLock<AnsweredError>>);

impl AnsweredLater {
    /// Records the error answered; a second one is ignored (the body ended with the first).
    pub fn set(&self, answered: AnsweredError) {
        let _ = self.0.set(answered);
    }

    /// The error answered, once one was.
    pub fn get(&self) -> Option<&AnsweredError> {
        self.0.get()
    }
}

/// Whether an answer goes out without a body whatever its handler set: one to a `HEAD`
/// request, or a 1xx, 204 or 304 status (RFC 9110). Servers drop such a body unread, so the
/// layers that count bytes or wait for a body's end take the answer as complete at once.
///
/// ```
/// use http::StatusCode;
///
/// assert!(periscope_context::is_bodiless(true, StatusCode::OK));
/// assert!(periscope_context::is_bodiless(false, StatusCode::NOT_MODIFIED));
/// assert!(!periscope_context::is_bodiless(false, StatusCode::OK));
/// ```
#[inline]
pub fn is_bodiless(head_request: bool, status: http::StatusCode) -> bool {
    head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
}

/// The host a URI names, as OpenTelemetry's `server.address` takes it: an IPv6 literal
/// without the brackets a URI needs around it (`server.port` stands apart), a name in lower
/// case and without its root dot (`Models.Internal.` is `models.internal`: one server, one
/// series), `None` for a URI without a host. The client span's `server.address` and the
/// client metrics' `server_address` label are this.
///
/// ```
/// use http::Uri;
/// use periscope_context::server_address;
///
/// let address = |uri| server_address(&Uri::from_static(uri)).map(|a| a.into_owned());
/// assert_eq!(address("http://[::1]:8080/v1").as_deref(), Some("::1"));
/// assert_eq!(address("https://models.internal/").as_deref(), Some("models.internal"));
/// assert_eq!(address("https://Models.Internal./").as_deref(), Some("models.internal"));
/// assert_eq!(address("/v1/jobs"), None);
/// ```
pub fn server_address(uri: &http::Uri) -> Option<std::borrow::Cow<'_, str>> {
    let host = uri.host().filter(|host| !host.is_empty())?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    let host = host
        .strip_suffix('.')
        .filter(|name| !name.is_empty())
        .unwrap_or(host);
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// The `tracing` target and name of periscope-trace's server span, by which the layers inside
/// it know it: its `Correlation` future and body hold the span until after they have dropped
/// the layers inside, so those may name it as a parent by its id without a handle of their
/// own. For periscope's layers, not a stable API.
#[doc(hidden)]
pub const SERVER_SPAN_TARGET: &str = "periscope_trace::server";
/// See [`SERVER_SPAN_TARGET`].
#[doc(hidden)]
pub const SERVER_SPAN_NAME: &str = "http_request";

/// Which periscope layers already observe a request, kept in its extensions: the same layer
/// applied again inside (the stack on a nested router and on the outer one) leaves the request
/// to the copy outside. One value for the access log and the metrics layers, so the stack
/// inserts one per request rather than one each. For periscope's layers, not a stable API.
///
/// ```
/// let mut observed = periscope_context::Observed::default();
/// assert!(observed.record(1) && observed.record(2));
/// assert!(!observed.record(1) && !observed.record(2));
/// ```
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// An access log writes the request's line (a second one inside passes it through; a
    /// correlation layer inside warns: it belongs outside).
    pub logged: bool,
    /// The metrics layers that record the request, by the address of their shared state.
    recorded: Option<usize>,
    more_recorded: Vec<usize>,
}

impl Observed {
    /// Notes that the metrics layer `id` records the request; false when it already does.
    pub fn record(&mut self, id: usize) -> bool {
        match self.recorded {
            Some(first) if first == id => false,
            None => {
                self.recorded = Some(id);
                true
            }
            Some(_) if self.more_recorded.contains(&id) => false,
            Some(_) => {
                self.more_recorded.push(id);
                true
            }
        }
    }
}

/// The body length a message's `Content-Length` announces, when it has exactly one valid value
/// (a streamed body with one is over, for the server, once that many bytes are sent). For
/// periscope's layers, not a stable API.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(periscope_context::content_length(&headers), None);
/// headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("42"));
/// assert_eq!(periscope_context::content_length(&headers), Some(42));
/// headers.append(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("43"));
/// assert_eq!(periscope_context::content_length(&headers), None);
/// // `1*DIGIT` only: no sign, no blank.
/// for odd in ["+42", "-1", " 42", ""] {
///     headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static(odd));
///     assert_eq!(periscope_context::content_length(&headers), None, "{odd:?}");
/// }
/// ```
#[doc(hidden)]
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let value = values.next()?.as_bytes();
    // `1*DIGIT` (RFC 9110): `u64::from_str` would also take `+42`.
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length = std::str::from_utf8(value).ok()?.parse().ok()?;
    values.next().is_none().then_some(length)
}

/// The header names periscope reads and writes.
pub mod headers {
    use http::HeaderName;

    /// The request (correlation) id, echoed on every response.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// Accepted as the request id when `x-request-id` is absent.
    pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
    /// W3C Trace Context `traceparent`.
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// W3C Trace Context `tracestate`.
    pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    /// W3C Baggage.
    pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
}

/// The paths of the standard gRPC health service's two methods (`grpc.health.v1.Health`):
/// probes like `/ready`, so quiet by default, and labelled by their own path in the facade's
/// metrics (with axum, when each is routed on its own path: a wildcard route's template wins).
pub const GRPC_HEALTH_PATHS: [&str; 2] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// The probe and scrape paths periscope's layers keep quiet by default (no span, access lines
/// at `debug`): liveness, readiness and startup probes, the metrics scrape and the standard gRPC
/// health service's two methods. Orchestrators and scrapers call them every few seconds; a span
/// or an `info` line per call would drown the real traffic.
pub const DEFAULT_QUIET_PATHS: [&str; 6] = [
    "/health",
    "/ready",
    "/startup",
    "/metrics",
    GRPC_HEALTH_PATHS[0],
    GRPC_HEALTH_PATHS[1],
];

/// The log line's own top-level keys (the contract's "Log line"): no field lifted to the top
/// level may take one of these names, since the line would hold it twice or let it forge one.
pub const LOG_LINE_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "message",
    "target",
    "service",
    "environment",
    "version",
    "span",
    "data",
];

/// The contract's sensitive key fragments: a field, parameter or header name that contains one
/// holds a secret. The log redaction hides such values; a tenant field may not be named so.
pub const SENSITIVE_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "session",
    "passphrase",
    "signing_key",
    "encryption_key",
];

/// Query parameters that carry a URL's signature or key without a sensitive name (compared
/// case-insensitively): the list of the OpenTelemetry HTTP semantic conventions, and AWS's
/// presigned-URL signature (`sig` is also Azure's SAS signature). Redacted in a client span's
/// `url.full` and in URLs the log redaction finds in free text, beside every parameter whose
/// name holds one of the [`SENSITIVE_KEY_PARTS`].
pub const SIGNATURE_QUERY_PARAMS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
];

//! Writing an [`ErrorBody`] into an HTTP response: the envelope or RFC 9457 problem details,
//! `Retry-After`, `x-request-id`, and the [`RenderedError`] marker other layers read.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use periscope_context::grpc::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode, is_grpc_content_type};
use periscope_context::text::{cut, prefix};
use periscope_context::{RequestContext, RequestId, TraceId, headers::X_REQUEST_ID};

use crate::envelope::MAX_MESSAGE_LEN;
use serde::Serialize;

use crate::code::codes;
use crate::envelope::{BoundedDetails, ErrorBody, Violation};

/// The media type of the envelope.
pub const APPLICATION_JSON: &str = "application/json";
/// The media type of RFC 9457 problem details.
pub const APPLICATION_PROBLEM_JSON: &str = "application/problem+json";

/// Longest request path written as the problem's `instance`, in bytes.
const MAX_INSTANCE_LEN: usize = 512;

/// A response extension on every error response periscope renders, so that the layers above
/// (access log, metrics) and an outer [`ErrorLayer`](crate::ErrorLayer) can see the error
/// without parsing the body.
///
/// ```
/// use periscope_error::{HttpError, RenderedError, codes};
///
/// let response: http::Response<Vec<u8>> = HttpError::from(codes::TIMEOUT).into_http_response();
/// let rendered = response.extensions().get::<RenderedError>().unwrap();
/// assert_eq!(rendered.body().code, "timeout");
/// ```
#[derive(Clone, Debug)]
pub struct RenderedError {
    body: Arc<ErrorBody>,
    ids_from_context: bool,
    /// The status the error was rendered with (HTTP 200 for a gRPC answer).
    status: StatusCode,
    /// `retryable` is the code's default, not set on the error: a `Retry-After` header put
    /// beside it says the condition is temporary after all.
    retryable_by_default: bool,
}

impl RenderedError {
    /// The members that were rendered.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// Whether the ids came from a request context (rather than a generated request id).
    pub(crate) fn ids_from_context(&self) -> bool {
        self.ids_from_context
    }

    pub(crate) fn shared_body(&self) -> Arc<ErrorBody> {
        self.body.clone()
    }

    /// The status the error was rendered with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// Whether `retryable` is the code's default (see [`HttpError::with_retryable`]).
    pub(crate) fn retryable_by_default(&self) -> bool {
        self.retryable_by_default
    }

    pub(crate) fn set_retryable_by_default(&mut self, by_default: bool) {
        self.retryable_by_default = by_default;
    }
}

/// The request id and trace id an error is rendered with.
#[derive(Clone, Debug)]
pub(crate) struct Ids {
    pub(crate) request_id: RequestId,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) from_context: bool,
}

impl Ids {
    pub(crate) fn of(ctx: &RequestContext) -> Ids {
        Ids {
            request_id: ctx.request_id.clone(),
            trace_id: Some(ctx.trace_id),
            from_context: true,
        }
    }

    /// The current context's ids; outside any context, a fresh request id (echoed in the
    /// response header and the log so the client and the log still agree).
    pub(crate) fn current_or_generated() -> Ids {
        match RequestContext::current() {
            Some(ctx) => Ids::of(&ctx),
            None => Ids {
                request_id: RequestId::generate(),
                trace_id: None,
                from_context: false,
            },
        }
    }
}

/// Envelope, problem details, or a gRPC answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Problem,
    /// A gRPC call: the error goes in `grpc-status` and `grpc-message` of an HTTP 200, the
    /// only shape a gRPC client reads; `web` for gRPC-Web, answered in its own media type.
    Grpc {
        /// gRPC-Web (`application/grpc-web...`).
        web: bool,
    },
}

impl Format {
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        RequestHeaders::scan(headers).format()
    }

    /// [`Format::negotiate`] for a server that answers no gRPC: `Accept` alone decides.
    pub(crate) fn negotiate_http(headers: &HeaderMap) -> Format {
        if accepts_problem_json(headers.get_all(header::ACCEPT)) {
            Format::Problem
        } else {
            Format::Json
        }
    }

    /// Whether errors are answered as gRPC answers.
    pub(crate) fn is_grpc(self) -> bool {
        matches!(self, Format::Grpc { .. })
    }
}

/// The format of a request's error answers as far as the layer decides it before handing the
/// request on: a gRPC call's at once; an HTTP request's `Accept` header is kept (a reference
/// count) and read only when an error is rendered, since most answers are not errors and
/// reading `Accept` costs some 500 instructions for `application/json` alone.
#[derive(Clone, Debug)]
pub(crate) enum Negotiation {
    Known(Format),
    /// The request's one `Accept` value.
    Accept(HeaderValue),
}

impl Negotiation {
    /// The format to render an error in.
    pub(crate) fn format(&self) -> Format {
        match self {
            Negotiation::Known(format) => *format,
            Negotiation::Accept(accept) if accepts_problem_json([accept]) => Format::Problem,
            Negotiation::Accept(_) => Format::Json,
        }
    }

    /// `Some(web)` for a gRPC call (`web` for gRPC-Web), `None` for an HTTP request.
    pub(crate) fn grpc(&self) -> Option<bool> {
        match self {
            Negotiation::Known(Format::Grpc { web }) => Some(*web),
            _ => None,
        }
    }

    /// Whether errors are answered as gRPC answers.
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc().is_some()
    }
}

/// What rendering needs from a request's headers, read in one pass: every request pays for it,
/// and comparing the names of a request's few headers costs less than hashing three names for
/// lookups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestHeaders<'a> {
    headers: &'a HeaderMap,
    /// gRPC's content type, and whether it is gRPC-Web's.
    grpc: Option<bool>,
    /// The first `Accept` value, and whether there are more.
    accept: Option<&'a HeaderValue>,
    more_accept: bool,
    /// Whether the request carries `Authorization`.
    pub(crate) authorization: bool,
    /// Whether the request names a protocol to switch to (`Upgrade`).
    pub(crate) upgrade: bool,
}

impl<'a> RequestHeaders<'a> {
    /// Up to this many headers, a scan; beyond, lookups.
    const SCAN_LIMIT: usize = 12;

    pub(crate) fn scan(headers: &'a HeaderMap) -> Self {
        if headers.len() > Self::SCAN_LIMIT {
            let mut accept = headers.get_all(header::ACCEPT).iter();
            return Self {
                headers,
                grpc: headers
                    .get(header::CONTENT_TYPE)
                    .filter(|value| is_grpc_content_type(value))
                    .map(is_grpc_web),
                accept: accept.next(),
                more_accept: accept.next().is_some(),
                authorization: headers.contains_key(header::AUTHORIZATION),
                upgrade: headers.contains_key(header::UPGRADE),
            };
        }
        let mut found = Self {
            headers,
            grpc: None,
            accept: None,
            more_accept: false,
            authorization: false,
            upgrade: false,
        };
        let mut content_type = false;
        for (name, value) in headers {
            if name == header::CONTENT_TYPE {
                // The first value, as a lookup reads it.
                if !content_type && is_grpc_content_type(value) {
                    found.grpc = Some(is_grpc_web(value));
                }
                content_type = true;
            } else if name == header::ACCEPT {
                found.more_accept = found.accept.is_some();
                found.accept = found.accept.or(Some(value));
            } else if name == header::AUTHORIZATION {
                found.authorization = true;
            } else if name == header::UPGRADE {
                found.upgrade = true;
            }
        }
        found
    }

    /// The format of the error answers to this request.
    pub(crate) fn format(self) -> Format {
        self.negotiation().format()
    }

    /// [`format`](Self::format), with `Accept` read only when an error is rendered (several
    /// `Accept` headers, which are rare, are read now).
    pub(crate) fn negotiation(self) -> Negotiation {
        let format = match (self.grpc, self.accept) {
            (Some(web), _) => Format::Grpc { web },
            (None, None) => Format::Json,
            (None, Some(accept)) if !self.more_accept => {
                return Negotiation::Accept(accept.clone());
            }
            (None, Some(_)) if prefers_problem_json(self.headers) => Format::Problem,
            (None, Some(_)) => Format::Json,
        };
        Negotiation::Known(format)
    }
}

/// Whether the request's `Accept` header prefers `application/problem+json`: listed with a
/// q-value above 0 and at least that of `application/json`, or reached by a wildcard
/// (`*/*`, `application/*`) whose q-value is above that of a listed `application/json` (refused
/// with `q=0`, or merely ranked lower).
///
/// A type's q-value is the one of the most specific range that matches it (RFC 9110, section
/// 12.5.1): `application/json` takes the q-value of `application/*`, else of `*/*`, when it is
/// not listed itself, so `application/problem+json;q=0.5, */*;q=0.9` prefers the envelope. A
/// q-value that is not a number from 0 to 1 counts as 0.
///
/// ```
/// use http::HeaderMap;
/// use periscope_error::prefers_problem_json;
///
/// let mut headers = HeaderMap::new();
/// assert!(!prefers_problem_json(&headers));
/// headers.insert("accept", "application/problem+json, application/json;q=0.5".parse().unwrap());
/// assert!(prefers_problem_json(&headers));
/// headers.insert("accept", "application/json, application/problem+json;q=0.9".parse().unwrap());
/// assert!(!prefers_problem_json(&headers));
/// headers.insert("accept", "application/problem+json;q=0.5, */*;q=0.9".parse().unwrap());
/// assert!(!prefers_problem_json(&headers));
/// // Not listed, problem details take the wildcard's 0.8, above the envelope's 0.5.
/// headers.insert("accept", "*/*;q=0.8, application/json;q=0.5".parse().unwrap());
/// assert!(prefers_problem_json(&headers));
/// // A browser's `Accept`: the wildcard ranks both alike, and the envelope is the default.
/// headers.insert("accept", "text/html,application/xhtml+xml,*/*;q=0.8".parse().unwrap());
/// assert!(!prefers_problem_json(&headers));
/// ```
pub fn prefers_problem_json(headers: &HeaderMap) -> bool {
    accepts_problem_json(headers.get_all(header::ACCEPT))
}

/// [`prefers_problem_json`] for a request's `Accept` values.
fn accepts_problem_json<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let mut problem: Option<f32> = None;
    let mut json: Option<f32> = None;
    let mut application: Option<f32> = None;
    let mut any: Option<f32> = None;
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim();
            let q = params
                .find_map(|param| {
                    // Parameter names are case-insensitive (RFC 9110): `Q=0` refuses too.
                    let (name, value) = param.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then_some(value)
                })
                .map_or(1.0, |q| {
                    // `NaN`, `inf` and `1.5` are no q-values: refused, like other junk.
                    q.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0)
                });
            let slot = if media.eq_ignore_ascii_case(APPLICATION_PROBLEM_JSON) {
                &mut problem
            } else if media.eq_ignore_ascii_case(APPLICATION_JSON) {
                &mut json
            } else if media.eq_ignore_ascii_case("application/*") {
                &mut application
            } else if media == "*/*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |seen| seen.max(q)));
        }
    }
    // The most specific range that matches `application/json` gives its q-value.
    let wildcard = application.or(any);
    let json = json.or(wildcard);
    match problem {
        Some(p) => p > 0.0 && json.is_none_or(|j| p >= j),
        // Not listed: the wildcard's q-value, when above the envelope's (refused, or ranked
        // lower); a tie keeps the envelope, the default.
        None => wildcard.is_some_and(|w| w > 0.0 && json.is_some_and(|j| w > j)),
    }
}

/// A new error response.
pub(crate) fn response<B: From<Bytes>>(
    status: StatusCode,
    body: ErrorBody,
    format: Format,
    instance: Option<&str>,
    ids: &Ids,
) -> Response<B> {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    let bytes = write(&mut parts, Arc::new(body), format, instance, ids);
    Response::from_parts(parts, B::from(bytes))
}

/// Turns `parts` (a fresh response, or one being replaced) into an error response for `body`
/// and returns the bytes to send. Headers unrelated to the body (`Allow`, `WWW-Authenticate`)
/// are kept.
pub(crate) fn write(
    parts: &mut http::response::Parts,
    body: Arc<ErrorBody>,
    format: Format,
    instance: Option<&str>,
    ids: &Ids,
) -> Bytes {
    let (bytes, media) = match format {
        Format::Grpc { web } => return write_grpc(parts, body, ids, web),
        Format::Json => (
            serde_json::to_vec(&EnvelopeRef { error: &body }),
            APPLICATION_JSON,
        ),
        Format::Problem => (
            serde_json::to_vec(&Problem::new(&body, parts.status, instance)),
            APPLICATION_PROBLEM_JSON,
        ),
    };
    // Serialising strings, numbers and `serde_json::Value`s cannot fail; stay well-formed anyway.
    let bytes = bytes.map(Bytes::from).unwrap_or_else(|_| {
        Bytes::from_static(br#"{"error":{"code":"internal_error","message":"An internal error occurred","request_id":""}}"#)
    });
    // A 416's `Content-Range: bytes */length` tells the resource's length, not the body's range.
    let unsatisfied_range = (parts.status == http::StatusCode::RANGE_NOT_SATISFIABLE)
        .then(|| parts.headers.get(header::CONTENT_RANGE).cloned())
        .flatten()
        .filter(|range| {
            // Range units are case-insensitive (RFC 9110, 14.1).
            let value = range.as_bytes();
            value.len() > 8 && value[..8].eq_ignore_ascii_case(b"bytes */")
        });
    let headers = &mut parts.headers;
    remove_representation(headers);
    // A relayed gRPC failure's status and message (`grpc-message` names internals as a body
    // does) are no part of an HTTP envelope.
    for name in [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS] {
        headers.remove(name);
    }
    if let Some(range) = unsatisfied_range {
        headers.insert(header::CONTENT_RANGE, range);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    // The envelope names this request's ids: a cache must not hand it to another request.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = body.retry_after_s {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    headers.insert(X_REQUEST_ID, ids.request_id.header_value().clone());
    remember(parts, body, ids);
    bytes
}

/// Leaves the rendered error in the response's extensions: whole, for an error layer above
/// that re-renders it, and its code for the access log.
fn remember(parts: &mut http::response::Parts, body: Arc<ErrorBody>, ids: &Ids) {
    parts
        .extensions
        .insert(periscope_context::AnsweredError::new(body.code.clone()));
    let status = parts.status;
    parts.extensions.insert(RenderedError {
        body,
        ids_from_context: ids.from_context,
        status,
        retryable_by_default: false,
    });
}

/// A gRPC error answer ("trailers-only"): HTTP 200 without a body, the code that the error's
/// status stands for in `grpc-status` and its message in `grpc-message`.
fn write_grpc(
    parts: &mut http::response::Parts,
    body: Arc<ErrorBody>,
    ids: &Ids,
    web: bool,
) -> Bytes {
    // No route for the path (or not for POST) means the service has no such method: gRPC's
    // `UNIMPLEMENTED`, what tonic's own router answers and what clients probing for an
    // optional service (health, reflection) look for, not a resource's `NOT_FOUND`.
    let no_method = [codes::ROUTE_NOT_FOUND, codes::METHOD_NOT_ALLOWED]
        .iter()
        .any(|code| body.code == code.name());
    let code = if no_method {
        GrpcCode::UNIMPLEMENTED
    } else {
        GrpcCode::from_http_status(parts.status)
    };
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    // What described the replaced body or status goes; the rest (CORS, which a gRPC-Web client
    // in a browser needs to read the answer at all) stays, as on the HTTP path.
    remove_representation(headers);
    for name in [
        header::RETRY_AFTER,
        GRPC_STATUS,
        GRPC_MESSAGE,
        GRPC_STATUS_DETAILS,
    ] {
        headers.remove(name);
    }
    let media = if web {
        APPLICATION_GRPC_WEB
    } else {
        APPLICATION_GRPC
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    headers.insert(GRPC_STATUS, HeaderValue::from(code.value()));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(&body.message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    headers.insert(X_REQUEST_ID, ids.request_id.header_value().clone());
    remember(parts, body, ids);
    Bytes::new()
}

/// The trailers that end a gRPC stream whose body panicked after its head: `INTERNAL` with
/// the message a panicking handler's answer has, so the client gets the same status either way,
/// and the request id: a client's status is made of the trailers alone (tonic's is), so the id
/// in the head is not in its metadata.
pub(crate) fn grpc_panic_trailers(ids: &Ids) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(3);
    trailers.insert(GRPC_STATUS, HeaderValue::from(GrpcCode::INTERNAL.value()));
    let message = grpc_message(codes::INTERNAL_ERROR.default_message());
    if let Ok(message) = HeaderValue::from_str(&message) {
        trailers.insert(GRPC_MESSAGE, message);
    }
    trailers.insert(X_REQUEST_ID, ids.request_id.header_value().clone());
    trailers
}

/// `trailers` as gRPC-Web sends them, the body's last message: the flag `0x80`, the block's
/// length (4 bytes, big-endian) and the block, `name:value` lines ended by CRLF; base64
/// (standard, padded) for `application/grpc-web-text`, whose whole body is base64.
pub(crate) fn grpc_web_trailer_frame(trailers: &HeaderMap, text: bool) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let length = u32::try_from(block.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.push(0x80);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&block);
    if text {
        frame = base64(&frame).into_bytes();
    }
    Bytes::from(frame)
}

/// Standard base64 with padding: a gRPC-Web trailer frame of some fifty bytes, once per
/// stream that panicked, is all this encodes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// What gRPC's `grpc-message` must percent-encode: controls, `%` and (always) non-ASCII.
const GRPC_MESSAGE_SET: &AsciiSet = &CONTROLS.add(b'%');

/// The longest `grpc-message` written, in bytes once percent-encoded. It is a header: proxies
/// refuse a response whose headers pass their buffer (nginx's 4 or 8 KiB) and HTTP/2 clients
/// one past their header list limit (hyper's 16 KiB), and the call would lose its code.
const MAX_GRPC_MESSAGE: usize = 1024;

/// `message` percent-encoded for `grpc-message`, cut at a character's end so that it stays
/// within [`MAX_GRPC_MESSAGE`] bytes and still decodes as UTF-8.
fn grpc_message(message: &str) -> String {
    let mut end = 0;
    let mut encoded = 0;
    for (at, c) in message.char_indices() {
        // Printable ASCII but `%` is written as is; every other byte as `%XX`.
        let width = if c.is_ascii() && !c.is_ascii_control() && c != '%' {
            1
        } else {
            3 * c.len_utf8()
        };
        if encoded + width > MAX_GRPC_MESSAGE {
            break;
        }
        encoded += width;
        end = at + c.len_utf8();
    }
    utf8_percent_encode(&message[..end], GRPC_MESSAGE_SET).to_string()
}

/// Removes the headers that described the body being replaced (its length, encoding, version,
/// range, file name, language and digest): sent with the error, they would make a cache keep
/// it under the old version, a browser save it as the old file, or a client reject it.
fn remove_representation(headers: &mut HeaderMap) {
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::CONTENT_DISPOSITION,
        header::CONTENT_LANGUAGE,
        header::CONTENT_LOCATION,
        header::ETAG,
        header::LAST_MODIFIED,
        header::EXPIRES,
        header::CACHE_CONTROL,
        header::ACCEPT_RANGES,
        CONTENT_DIGEST,
        REPR_DIGEST,
        DIGEST,
        CONTENT_MD5,
    ] {
        headers.remove(name);
    }
}

const CONTENT_DIGEST: header::HeaderName = header::HeaderName::from_static("content-digest");
const REPR_DIGEST: header::HeaderName = header::HeaderName::from_static("repr-digest");
const DIGEST: header::HeaderName = header::HeaderName::from_static("digest");
const CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");

/// The media type of a gRPC answer.
const APPLICATION_GRPC: &str = "application/grpc";
/// The rich error details of a gRPC status, which an answer rewritten here no longer matches.
const GRPC_STATUS_DETAILS: header::HeaderName =
    header::HeaderName::from_static("grpc-status-details-bin");
/// The media type of a gRPC-Web answer (a trailers-only answer has no body to encode, so
/// `-text` clients read it too).
const APPLICATION_GRPC_WEB: &str = "application/grpc-web+proto";

/// Whether a gRPC `content-type` is gRPC-Web's.
fn is_grpc_web(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .get(b"application/grpc".len()..b"application/grpc-web".len())
        .is_some_and(|rest| rest.eq_ignore_ascii_case(b"-web"))
}

/// Whether an answer's `content-type` is gRPC-Web's text form (`application/grpc-web-text`,
/// any suffix or parameters), whose body is base64.
pub(crate) fn is_grpc_web_text(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        value
            .as_bytes()
            .get(..b"application/grpc-web-text".len())
            .is_some_and(|start| start.eq_ignore_ascii_case(b"application/grpc-web-text"))
    })
}

/// Adds `Vary: Accept` to a response whose format was negotiated, so that a shared cache (a
/// CDN may cache a 404) never serves problem details to a client that asked for the envelope,
/// or the reverse. Kept as is when `Vary` already names `accept` or `*`.
pub(crate) fn vary_accept(headers: &mut HeaderMap) {
    let named = headers.get_all(header::VARY).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .any(|field| field == "*" || field.eq_ignore_ascii_case(header::ACCEPT.as_str()))
        })
    });
    if !named {
        headers.append(header::VARY, HeaderValue::from_static("accept"));
    }
}

/// A `Retry-After` header as seconds from now: delta-seconds, or an HTTP date (RFC 9110
/// section 10.2.3) less the answer's own `Date`, 0 when the date is before it. The two dates
/// are the same server's clock; this machine's may be minutes or hours off it, so it stands in
/// only for an answer without a valid `Date`.
pub(crate) fn retry_after_seconds(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse() {
        return Some(seconds);
    }
    // More digits than a u64 holds: the longest delay, not none (a caller would retry at
    // once), as RFC 9111 wants of delta-seconds too large to represent.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(u64::MAX);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let sent = headers
        .get(header::DATE)
        .and_then(|date| date.to_str().ok())
        .and_then(|date| httpdate::parse_http_date(date.trim()).ok())
        .unwrap_or_else(SystemTime::now);
    Some(at.duration_since(sent).map_or(0, whole_seconds))
}

/// A delay in whole seconds, rounded up: a client never retries early.
pub(crate) fn whole_seconds(delay: Duration) -> u64 {
    delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0))
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    error: &'a ErrorBody,
}

/// RFC 9457 problem details, with the envelope's members as extension members.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    code: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<BoundedDetails<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    docs_url: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Violation]>::is_empty")]
    violations: &'a [Violation],
}

impl<'a> Problem<'a> {
    fn new(body: &'a ErrorBody, status: StatusCode, instance: Option<&'a str>) -> Self {
        Problem {
            // The code's documentation is its problem type; without one, RFC 9457's default.
            kind: body.docs_url.as_deref().unwrap_or("about:blank"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            // Bounded as the envelope's `message` and `help` are: the body's fields are public.
            detail: cut(&body.message, MAX_MESSAGE_LEN),
            instance: instance.map(|path| prefix(path, MAX_INSTANCE_LEN)),
            code: &body.code,
            request_id: &body.request_id,
            trace_id: body.trace_id.as_deref(),
            details: body.details.as_ref().map(BoundedDetails),
            help: body.help.as_deref().map(|help| cut(help, MAX_MESSAGE_LEN)),
            retryable: body.retryable,
            retry_after_s: body.retry_after_s,
            docs_url: body.docs_url.as_deref(),
            violations: &body.violations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn request_headers_are_read_alike_in_small_and_large_requests() {
        for others in [
            0,
            2,
            RequestHeaders::SCAN_LIMIT,
            RequestHeaders::SCAN_LIMIT + 3,
        ] {
            let mut headers = HeaderMap::new();
            for n in 0..others {
                headers.insert(
                    header::HeaderName::from_bytes(format!("x-other-{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert_eq!(Format::negotiate(&headers), Format::Json, "{others}");
            assert!(!RequestHeaders::scan(&headers).authorization);
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("application/problem+json"),
            );
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
            assert_eq!(Format::negotiate(&headers), Format::Problem, "{others}");
            assert!(RequestHeaders::scan(&headers).authorization, "{others}");
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            assert_eq!(
                Format::negotiate(&headers),
                Format::Grpc { web: false },
                "{others}"
            );
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc-web-text"),
            );
            assert_eq!(
                Format::negotiate(&headers),
                Format::Grpc { web: true },
                "{others}"
            );
            // The first `content-type` decides, as a lookup reads it.
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.append(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            assert_eq!(Format::negotiate(&headers), Format::Problem, "{others}");
        }
    }

    /// One `Accept` is kept and read when an error is rendered, several are read at once:
    /// either way the format is the one `prefers_problem_json` gives for all of them.
    #[test]
    fn accept_is_read_when_an_error_is_rendered_and_agrees() {
        let cases: [&[&str]; 6] = [
            &["application/json"],
            &["application/problem+json"],
            &["application/problem+json;q=0.5, */*;q=0.9"],
            &["application/json;q=0", "*/*"],
            &["application/json", "application/problem+json"],
            &["text/html", "application/problem+json;q=0.2"],
        ];
        for others in [0, RequestHeaders::SCAN_LIMIT + 3] {
            for values in cases {
                let mut headers = HeaderMap::new();
                for n in 0..others {
                    headers.insert(
                        header::HeaderName::from_bytes(format!("x-other-{n}").as_bytes()).unwrap(),
                        HeaderValue::from_static("1"),
                    );
                }
                for value in values {
                    headers.append(header::ACCEPT, HeaderValue::from_static(value));
                }
                let negotiation = RequestHeaders::scan(&headers).negotiation();
                assert_eq!(
                    matches!(negotiation, Negotiation::Accept(_)),
                    values.len() == 1,
                    "{values:?}, {others} others"
                );
                let expected = if prefers_problem_json(&headers) {
                    Format::Problem
                } else {
                    Format::Json
                };
                assert_eq!(
                    negotiation.format(),
                    expected,
                    "{values:?}, {others} others"
                );
            }
        }
        let expected = [false, true, false, true, true, true];
        let found = cases.map(|values| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT, HeaderValue::from_static(value));
            }
            prefers_problem_json(&headers)
        });
        assert_eq!(found, expected);
    }

    #[test]
    fn negotiation_follows_q_values() {
        assert!(prefers_problem_json(&accept("application/problem+json")));
        assert!(prefers_problem_json(&accept(
            "text/html, Application/Problem+JSON; q=0.8"
        )));
        assert!(prefers_problem_json(&accept(
            "application/json;q=0.5,application/problem+json"
        )));
        assert!(!prefers_problem_json(&accept("application/json")));
        assert!(!prefers_problem_json(&accept("*/*")));
        assert!(!prefers_problem_json(&accept(
            "application/problem+json;q=0"
        )));
        assert!(!prefers_problem_json(&accept(
            "application/problem+json;q=nonsense"
        )));
        assert!(!prefers_problem_json(&accept(
            "application/problem+json;q=0.2, application/json;q=0.3"
        )));
        // Parameter names are case-insensitive.
        assert!(!prefers_problem_json(&accept(
            "application/problem+json;Q=0, application/json"
        )));
        assert!(prefers_problem_json(&accept(
            "application/json;Q=0.1, application/problem+json"
        )));
    }

    /// A wildcard gives `application/json` its q-value when it is not listed itself.
    #[test]
    fn negotiation_counts_wildcards_for_the_envelope() {
        for (value, problem) in [
            ("application/problem+json;q=0.5, */*;q=0.9", false),
            ("application/problem+json;q=0.5, application/*;q=0.9", false),
            // The more specific `application/*` wins over `*/*`.
            (
                "application/problem+json;q=0.5, application/*;q=0.1, */*",
                true,
            ),
            ("application/problem+json, */*", true),
            ("application/problem+json;q=0.9, */*;q=0.9", true),
            // Refused by name, reached by a wildcard: problem details.
            ("application/json;q=0, */*", true),
            ("application/json;q=0, application/*;q=0.2", true),
            ("application/json;q=0", false),
            // Wildcards alone: the envelope, as before.
            ("*/*", false),
            ("application/*", false),
            // No q-values: refused.
            ("application/problem+json;q=inf, application/json", false),
            ("application/problem+json;q=NaN", false),
            ("application/problem+json;q=1.5", false),
        ] {
            assert_eq!(prefers_problem_json(&accept(value)), problem, "{value}");
        }
    }

    #[test]
    fn problem_details_carry_every_fact_of_the_envelope() {
        let mut body = ErrorBody::new("rate_limited", "Too many requests", "req_1");
        body.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        body.retryable = Some(true);
        body.retry_after_s = Some(7);
        let ids = Ids {
            request_id: RequestId::parse("req_1").unwrap(),
            trace_id: None,
            from_context: true,
        };
        let response: Response<Vec<u8>> = response(
            StatusCode::TOO_MANY_REQUESTS,
            body,
            Format::Problem,
            Some("/v1/jobs"),
            &ids,
        );
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["x-request-id"], "req_1");
        let json: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "about:blank", "title": "Too Many Requests", "status": 429,
                "detail": "Too many requests", "instance": "/v1/jobs",
                "code": "rate_limited", "request_id": "req_1",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "retryable": true, "retry_after_s": 7
            })
        );
    }

    /// A code's `help` and a message longer than 1,024 bytes are cut in problem details as in
    /// the envelope.
    #[test]
    fn problem_details_cut_a_long_message_and_help() {
        let mut body = ErrorBody::new("quota", "m".repeat(5000), "req_1");
        body.help = Some("h".repeat(5000).into());
        let ids = Ids {
            request_id: RequestId::parse("req_1").unwrap(),
            trace_id: None,
            from_context: true,
        };
        for format in [Format::Json, Format::Problem] {
            let response: Response<Vec<u8>> =
                response(StatusCode::CONFLICT, body.clone(), format, None, &ids);
            let json: Value = serde_json::from_slice(response.body()).unwrap();
            let (message, help) = match format {
                Format::Problem => (&json["detail"], &json["help"]),
                _ => (&json["error"]["message"], &json["error"]["help"]),
            };
            for text in [message, help] {
                let text = text.as_str().unwrap();
                assert!(
                    text.len() <= MAX_MESSAGE_LEN && text.ends_with('…'),
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(3001)), 4);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn grpc_message_is_encoded_whole_or_cut_within_its_limit() {
        assert_eq!(grpc_message("a b%c\n\u{7f}é"), "a b%25c%0A%7F%C3%A9");
        let ascii = "x".repeat(MAX_GRPC_MESSAGE + 10);
        assert_eq!(grpc_message(&ascii), ascii[..MAX_GRPC_MESSAGE]);
        // 170 characters of 6 encoded bytes fit; the 171st would pass the limit.
        assert_eq!(grpc_message(&"é".repeat(1000)), "%C3%A9".repeat(170));
    }
}

//! gRPC answers: their outcome travels in `grpc-status`, while the HTTP status stays 200.
//!
//! A tonic service answers a failed call with HTTP 200 and `grpc-status: 13` in the headers (a
//! "trailers-only" answer), or in the trailers after streamed messages. Counted by their HTTP
//! status, every failed call would look like a success; the layers count, trace and log a gRPC
//! answer by the HTTP status its code stands for ([`GrpcCode::http_status`]), so the 5xx error
//! ratio, alerts and span status mean the same for gRPC and HTTP services.
//!
//! [`head_outcome`] tells, from an answer's head, whether its outcome is its HTTP status, the
//! code in its head, or the code in its trailers; [`StreamEnd`] gives the code a streamed
//! answer ended with, trailers or not, and a [`StreamEndWatch`] hands that end from the layer
//! that reads the body (the access log) to the layers that record it (metrics, server span).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The header (or trailer) that carries a gRPC call's status code.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The header (or trailer) that carries a gRPC call's error message, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A gRPC status code, as sent in `grpc-status`.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use periscope_context::grpc::GrpcCode;
///
/// let mut trailers = HeaderMap::new();
/// trailers.insert("grpc-status", "14".parse().unwrap());
/// let code = GrpcCode::of(&trailers).unwrap();
/// assert_eq!(code, GrpcCode::UNAVAILABLE);
/// assert_eq!(code.name(), "UNAVAILABLE");
/// assert_eq!(code.http_status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcCode(u16);

impl GrpcCode {
    /// 0: not an error.
    pub const OK: Self = Self(0);
    /// 1: the caller cancelled the call.
    pub const CANCELLED: Self = Self(1);
    /// 2: an error of no known kind.
    pub const UNKNOWN: Self = Self(2);
    /// 3: the caller sent an invalid argument.
    pub const INVALID_ARGUMENT: Self = Self(3);
    /// 4: the deadline passed before the call completed.
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    /// 5: the entity asked for does not exist.
    pub const NOT_FOUND: Self = Self(5);
    /// 6: the entity to create exists already.
    pub const ALREADY_EXISTS: Self = Self(6);
    /// 7: the caller may not do this.
    pub const PERMISSION_DENIED: Self = Self(7);
    /// 8: a quota or resource ran out.
    pub const RESOURCE_EXHAUSTED: Self = Self(8);
    /// 9: the system is not in the state the call needs.
    pub const FAILED_PRECONDITION: Self = Self(9);
    /// 10: the call was aborted (a concurrency conflict).
    pub const ABORTED: Self = Self(10);
    /// 11: a value was past the valid range.
    pub const OUT_OF_RANGE: Self = Self(11);
    /// 12: the method is not implemented.
    pub const UNIMPLEMENTED: Self = Self(12);
    /// 13: an internal error.
    pub const INTERNAL: Self = Self(13);
    /// 14: the service is unavailable for now; retry.
    pub const UNAVAILABLE: Self = Self(14);
    /// 15: data was lost.
    pub const DATA_LOSS: Self = Self(15);
    /// 16: the caller is not authenticated.
    pub const UNAUTHENTICATED: Self = Self(16);

    /// The code for `value`. A number gRPC does not define (over 16) is `UNKNOWN`, as
    /// [`parse`](Self::parse) reads it, so `value()` and the `rpc.grpc.status_code` it feeds
    /// stay within 0 to 16.
    pub const fn new(value: u16) -> Self {
        if value <= 16 {
            Self(value)
        } else {
            Self::UNKNOWN
        }
    }

    /// The code's number.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// Reads a `grpc-status` value: ASCII digits only, else `None`. A number gRPC does not
    /// define (over 16), or one written with a leading zero (`00`, `016`), reads as `UNKNOWN`,
    /// as tonic gives it to the caller and as OpenTelemetry's `rpc.grpc.status_code` (one of 0
    /// to 16) wants it.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if bytes.len() > 1 && bytes[0] == b'0' {
            return Some(Self::UNKNOWN);
        }
        let value = bytes.iter().fold(0u32, |n, &b| {
            n.saturating_mul(10).saturating_add(u32::from(b - b'0'))
        });
        Some(match u16::try_from(value) {
            Ok(value @ 0..=16) => Self(value),
            _ => Self::UNKNOWN,
        })
    }

    /// The `grpc-status` in `headers` (a trailers-only answer's headers, or trailers).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        headers.get(GRPC_STATUS).and_then(Self::parse)
    }

    /// The code's name (`INTERNAL`); `UNKNOWN` for a number gRPC does not define.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "OK",
            1 => "CANCELLED",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "UNKNOWN",
        }
    }

    /// The HTTP status the code stands for (the mapping gRPC-gateway and Google's APIs use):
    /// `NOT_FOUND` 404, `UNAVAILABLE` 503, `CANCELLED` 499 (client closed the request), and so
    /// on; 500 for a number gRPC does not define. The server errors (5xx) are exactly the codes
    /// OpenTelemetry's gRPC conventions mark a server span failed for: `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`.
    pub fn http_status(self) -> StatusCode {
        match self.0 {
            0 => StatusCode::OK,
            1 => CLIENT_CLOSED_REQUEST,
            3 | 9 | 11 => StatusCode::BAD_REQUEST,
            4 => StatusCode::GATEWAY_TIMEOUT,
            5 => StatusCode::NOT_FOUND,
            6 | 10 => StatusCode::CONFLICT,
            7 => StatusCode::FORBIDDEN,
            8 => StatusCode::TOO_MANY_REQUESTS,
            12 => StatusCode::NOT_IMPLEMENTED,
            14 => StatusCode::SERVICE_UNAVAILABLE,
            16 => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl GrpcCode {
    /// The code for an error answered with HTTP `status`, the inverse of
    /// [`http_status`](Self::http_status) where one exists: 504 `DEADLINE_EXCEEDED` (and 408,
    /// a timeout too: the `timeout` error code, retryable, where `FAILED_PRECONDITION` would
    /// tell a client not to retry), 503
    /// `UNAVAILABLE`, 429 and 413 `RESOURCE_EXHAUSTED`, other 4xx `INVALID_ARGUMENT` or
    /// `FAILED_PRECONDITION`, other 5xx `INTERNAL`; `OK` below 400.
    pub fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            ..400 => Self::OK,
            400 | 414 | 415 | 422 | 431 => Self::INVALID_ARGUMENT,
            401 => Self::UNAUTHENTICATED,
            403 => Self::PERMISSION_DENIED,
            404 | 410 => Self::NOT_FOUND,
            501 => Self::UNIMPLEMENTED,
            408 | 504 => Self::DEADLINE_EXCEEDED,
            409 => Self::ABORTED,
            // gRPC's own answer to a message over the size limit.
            413 | 429 => Self::RESOURCE_EXHAUSTED,
            499 => Self::CANCELLED,
            502 | 503 => Self::UNAVAILABLE,
            400..=499 => Self::FAILED_PRECONDITION,
            _ => Self::INTERNAL,
        }
    }
}

/// Whether an answer is a gRPC server's: HTTP 200 with a gRPC `content-type` (gRPC-Web's too).
/// Any other answer to a gRPC call is none, and its caller reads the code
/// [`GrpcCode::of_plain_answer`] gives; a gRPC-Web answer, whose code travels at the end of its
/// body, is judged by its head as the 200 it is.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use periscope_context::grpc::is_grpc_answer;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "application/grpc-web+proto".parse().unwrap());
/// assert!(is_grpc_answer(StatusCode::OK, &headers));
/// assert!(!is_grpc_answer(StatusCode::SERVICE_UNAVAILABLE, &headers));
/// headers.insert("content-type", "text/html".parse().unwrap());
/// assert!(!is_grpc_answer(StatusCode::OK, &headers));
/// ```
pub fn is_grpc_answer(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK && content_type(headers).is_some_and(is_grpc_content_type)
}

impl GrpcCode {
    /// The code a gRPC client reads from an answer that is no gRPC answer at all (no gRPC
    /// `content-type`: a proxy's page, an ingress's error), by gRPC's mapping of HTTP statuses:
    /// 400 `INTERNAL`, 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404 `UNIMPLEMENTED`, 429,
    /// 502, 503 and 504 `UNAVAILABLE`, any other (a 200 included) `UNKNOWN`.
    ///
    /// ```
    /// use http::StatusCode;
    /// use periscope_context::grpc::GrpcCode;
    ///
    /// assert_eq!(GrpcCode::of_plain_answer(StatusCode::SERVICE_UNAVAILABLE), GrpcCode::UNAVAILABLE);
    /// assert_eq!(GrpcCode::of_plain_answer(StatusCode::OK), GrpcCode::UNKNOWN);
    /// ```
    pub fn of_plain_answer(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::INTERNAL,
            401 => Self::UNAUTHENTICATED,
            403 => Self::PERMISSION_DENIED,
            404 => Self::UNIMPLEMENTED,
            429 | 502 | 503 | 504 => Self::UNAVAILABLE,
            _ => Self::UNKNOWN,
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.name())
    }
}

/// 499, nginx's "client closed request": what `CANCELLED` stands for.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Marks, in a response's extensions, an answer of a server that speaks HTTP only (health
/// probes, the admin surface, a metrics scrape): an error layer outside keeps it the HTTP answer
/// it is, even to a request with a gRPC `content-type`, rather than turn a refusal (a 401 to a
/// guessed token) into a gRPC answer, an HTTP 200 that access logs, proxies and status-keyed
/// rate limits count as a success.
///
/// ```
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(periscope_context::grpc::HttpOnly);
/// assert!(response.extensions().get::<periscope_context::grpc::HttpOnly>().is_some());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpOnly;

/// Whether a request is a gRPC call: its `content-type` is `application/grpc`, with or without
/// a `+format` or parameters (`application/grpc+proto`, gRPC-Web's `application/grpc-web`).
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    find(headers, &http::header::CONTENT_TYPE).is_some_and(is_grpc_content_type)
}

/// The first value of `name`. Every request and response pays for the gRPC checks, in several
/// layers: comparing the names of a message's few headers costs less than hashing one for a
/// lookup.
fn find<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    // The header is almost always absent: the names alone are compared, and only a name found
    // is looked up.
    if headers.len() > SCAN_LIMIT || headers.keys().any(|key| key == name) {
        headers.get(name)
    } else {
        None
    }
}

/// Up to this many headers, [`find`] compares names rather than looking one up.
const SCAN_LIMIT: usize = 12;

/// Whether a `content-type` value is gRPC's (see [`is_grpc_request`]).
pub fn is_grpc_content_type(value: &HeaderValue) -> bool {
    let value = value.as_bytes();
    let Some(rest) = strip_prefix_ignore_case(value, b"application/grpc") else {
        return false;
    };
    // gRPC-Web: `application/grpc-web`, `application/grpc-web-text`.
    let rest = strip_prefix_ignore_case(rest, b"-web").map_or(rest, |web| {
        strip_prefix_ignore_case(web, b"-text").unwrap_or(web)
    });
    matches!(rest.first(), None | Some(b'+' | b';' | b' ' | b'\t'))
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// The gRPC code of an answer known from its head: a 200 with a gRPC `content-type` carrying
/// `grpc-status` (a trailers-only answer, the shape of a failed unary call); `UNKNOWN` when
/// that `grpc-status` is not a number (what a gRPC client reads then, as from trailers). An
/// answer whose status comes in trailers has none here, nor has an HTTP answer that merely
/// passes on a `grpc-status` header (a proxy's).
pub fn answer_code(status: StatusCode, headers: &HeaderMap) -> Option<GrpcCode> {
    if status != StatusCode::OK {
        return None;
    }
    let code = find(headers, &GRPC_STATUS).map(head_code)?;
    // Checked only once a code is found: the usual answer pays for one scan.
    find(headers, &http::header::CONTENT_TYPE)
        .is_some_and(is_grpc_content_type)
        .then_some(code)
}

/// The `grpc-status` in an answer's head, whatever its HTTP status or `content-type`: what a
/// gRPC client (tonic, grpc-go) reads first, so the code that an answer such as NGINX's gRPC
/// error pages (`204`, no `content-type`, `grpc-status: 14`) gives the caller; `UNKNOWN` for a
/// value that is not a number. For the client side: a server's own non-gRPC answer that passes
/// on such a header is judged by [`answer_code`].
pub fn head_grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    find(headers, &GRPC_STATUS).map(head_code)
}

/// The HTTP status an answer stands for: its gRPC code's ([`GrpcCode::http_status`]) for a
/// trailers-only gRPC answer, else its own.
pub fn answer_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    answer_code(status, headers).map_or(status, GrpcCode::http_status)
}

/// What an answer's head says about how to judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOutcome {
    /// Not a gRPC answer (or one whose outcome cannot be read at all): judged by its HTTP
    /// status.
    Status,
    /// A trailers-only gRPC answer: its code, in its head ([`answer_code`]).
    Code(GrpcCode),
    /// A gRPC answer (HTTP 200, `content-type: application/grpc`, no `grpc-status` in its
    /// head) whose code comes in the trailers after its messages: its outcome is known only at
    /// the end of its body ([`StreamEnd`]). gRPC-Web answers are never this: their trailers
    /// travel inside the body, so they are judged by their head.
    Trailers,
}

/// How to judge an answer from its head: by its HTTP status, by the gRPC code in its head, or
/// only once its trailers come ([`HeadOutcome`]). One scan of the headers for the usual HTTP
/// answer, which has no gRPC `content-type`.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use periscope_context::grpc::{GrpcCode, HeadOutcome, head_outcome};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "application/grpc".parse().unwrap());
/// assert_eq!(head_outcome(StatusCode::OK, &headers), HeadOutcome::Trailers);
/// headers.insert("grpc-status", "5".parse().unwrap());
/// assert_eq!(head_outcome(StatusCode::OK, &headers), HeadOutcome::Code(GrpcCode::NOT_FOUND));
/// assert_eq!(head_outcome(StatusCode::OK, &HeaderMap::new()), HeadOutcome::Status);
/// ```
pub fn head_outcome(status: StatusCode, headers: &HeaderMap) -> HeadOutcome {
    if status != StatusCode::OK {
        return HeadOutcome::Status;
    }
    // `application/grpc...`: byte 12 tells it from the usual `application/json` or
    // `text/...`; the rest is looked at only then, out of the usual answer's way.
    match content_type(headers) {
        Some(value)
            if value
                .as_bytes()
                .get(12)
                .is_some_and(|b| b.eq_ignore_ascii_case(&b'g')) =>
        {
            grpc_outcome(headers, value)
        }
        _ => HeadOutcome::Status,
    }
}

/// [`head_outcome`] of a 200 whose `content-type` may be gRPC's.
#[inline(never)]
fn grpc_outcome(headers: &HeaderMap, content_type: &HeaderValue) -> HeadOutcome {
    if !is_grpc_content_type(content_type) {
        return HeadOutcome::Status;
    }
    match find(headers, &GRPC_STATUS) {
        Some(value) => HeadOutcome::Code(head_code(value)),
        // gRPC-Web sends its trailers as the body's last message, not as HTTP trailers.
        None if strip_prefix_ignore_case(content_type.as_bytes(), b"application/grpc-web")
            .is_some() =>
        {
            HeadOutcome::Status
        }
        None => HeadOutcome::Trailers,
    }
}

/// The code a `grpc-status` in an answer's head stands for: `UNKNOWN` when it is not a number,
/// as a gRPC client reads it (the call failed, it did not succeed with the HTTP 200 it came
/// with), and as [`StreamEnd::code`] reads such trailers.
fn head_code(value: &HeaderValue) -> GrpcCode {
    GrpcCode::parse(value).unwrap_or(GrpcCode::UNKNOWN)
}

/// The first `content-type`, found by comparing names rather than by a lookup (see [`find`]):
/// the usual answer has one, so the value is taken where the name is found. A lookup hashes the
/// name, which costs as much as comparing a dozen names: the scan is kept for every map.
fn content_type(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers
        .iter()
        .find_map(|(key, value)| (key == http::header::CONTENT_TYPE).then_some(value))
}

/// How the body of a gRPC answer whose code comes in its trailers ([`HeadOutcome::Trailers`])
/// ended, and so the code the call ended with ([`code`](Self::code)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The trailers came, with this `grpc-status` (`None`: they carry none, or not a number);
    /// see [`StreamEnd::trailers`].
    Trailers(Option<GrpcCode>),
    /// The body ended without trailers.
    NoTrailers,
    /// The body failed: the server resets the stream.
    Failed,
    /// The body was dropped before its end: the client cancelled the call or went away.
    Dropped,
}

impl StreamEnd {
    /// The end of a body whose last frame was `trailers`.
    pub fn trailers(trailers: &HeaderMap) -> Self {
        Self::Trailers(GrpcCode::of(trailers))
    }

    /// The code the call ended with: the trailers' `grpc-status`; `UNKNOWN` when the body
    /// ended without one (no trailers, or trailers without `grpc-status`: the client gets no
    /// status); `INTERNAL` when the body failed (the stream is reset with `INTERNAL_ERROR`,
    /// which a client reads as `INTERNAL`); `CANCELLED` when it was dropped before its end.
    pub fn code(self) -> GrpcCode {
        match self {
            Self::Trailers(code) => code.unwrap_or(GrpcCode::UNKNOWN),
            Self::NoTrailers => GrpcCode::UNKNOWN,
            Self::Failed => GrpcCode::INTERNAL,
            Self::Dropped => GrpcCode::CANCELLED,
        }
    }
}

/// A hook run when a watched stream ends.
type Hook = Box<dyn FnOnce(StreamEnd) + Send>;

/// The end of a gRPC answer whose code comes in its trailers, handed from the layer that reads
/// its body to the layers above that record it.
///
/// The access log (periscope-log's `AccessLogLayer`) already watches every response body to
/// the end for its line. For such an answer ([`HeadOutcome::Trailers`]) it puts a watch in the
/// response's extensions and [`end`](Self::end)s it when the body ends; a layer outside it
/// (the RED metrics, the server span) finds the watch at the response head and registers a
/// hook with [`on_end`](Self::on_end) to record the call then. No other answer gets one: plain
/// HTTP pays nothing, and a call that waits for its trailers pays a few small allocations (the
/// watch, and a box per hook).
///
/// Clones share one watch. The first [`end`](Self::end) counts, later ones are ignored; a hook
/// registered after the end runs at once, with that end; each hook runs exactly once. If every
/// handle is dropped before the watch was ended (the body's reader went away without telling),
/// the hooks run with [`StreamEnd::Dropped`], as for a client that cancelled: a hook is never
/// lost, unless it holds a handle of its own watch (a cycle: the watch is then never dropped,
/// so hold none). Hooks run on the thread that ends the watch (or registers late), outside its
/// lock, so a hook may use the watch; a hook that panics does not stop the others: all run,
/// then the first panic goes on.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use periscope_context::grpc::{GrpcCode, StreamEnd, StreamEndWatch};
///
/// let watch = StreamEndWatch::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let hook = seen.clone();
/// watch.on_end(move |end| hook.lock().unwrap().push(end.code()));
/// watch.clone().end(StreamEnd::Trailers(Some(GrpcCode::INTERNAL)));
/// watch.end(StreamEnd::Dropped); // too late: ignored
/// assert_eq!(*seen.lock().unwrap(), [GrpcCode::INTERNAL]);
/// ```
#[derive(Clone, Default)]
pub struct StreamEndWatch(Arc<Mutex<WatchState>>);

#[derive(Default)]
struct WatchState {
    end: Option<StreamEnd>,
    hooks: Vec<Hook>,
}

impl StreamEndWatch {
    /// A watch not ended yet, with no hooks.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        // Hooks never run under the lock: it cannot be poisoned by one.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `hook` with the stream's end: when [`end`](Self::end) is called, or at once if it
    /// was already.
    pub fn on_end(&self, hook: impl FnOnce(StreamEnd) + Send + 'static) {
        let mut state = self.lock();
        match state.end {
            Some(end) => {
                drop(state);
                hook(end);
            }
            None => state.hooks.push(Box::new(hook)),
        }
    }

    /// Ends the watch: runs every hook registered with `end`, once. Returns `false`, and does
    /// nothing, when it was ended already.
    pub fn end(&self, end: StreamEnd) -> bool {
        let hooks = {
            let mut state = self.lock();
            if state.end.is_some() {
                return false;
            }
            state.end = Some(end);
            std::mem::take(&mut state.hooks)
        };
        if let Some(panic) = run_hooks(hooks, end) {
            std::panic::resume_unwind(panic);
        }
        true
    }

    /// How the stream ended, once it has.
    pub fn ended(&self) -> Option<StreamEnd> {
        self.lock().end
    }
}

impl Drop for WatchState {
    fn drop(&mut self) {
        // The last handle is gone and nobody ended the watch: the body was dropped unseen.
        if self.end.is_none() {
            self.end = Some(StreamEnd::Dropped);
            let panic = run_hooks(std::mem::take(&mut self.hooks), StreamEnd::Dropped);
            // A second panic while unwinding would abort the process: that one is dropped.
            if let Some(panic) = panic
                && !std::thread::panicking()
            {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Runs every hook, also when one panics: each layer's hook records its own signal (the
/// metrics' recording, the span), and one that panics must not lose the others. The first
/// panic is handed back, to go on once all have run.
fn run_hooks(hooks: Vec<Hook>, end: StreamEnd) -> Option<Box<dyn std::any::Any + Send>> {
    let mut first = None;
    for hook in hooks {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(end))) {
            first.get_or_insert(panic);
        }
    }
    first
}

impl fmt::Debug for StreamEndWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("StreamEndWatch")
            .field("end", &state.end)
            .field("hooks", &state.hooks.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_from_digits_only() {
        let parse = |s: &str| GrpcCode::parse(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("0"), Some(GrpcCode::OK));
        assert_eq!(parse("13"), Some(GrpcCode::INTERNAL));
        assert_eq!(parse("16"), Some(GrpcCode::UNAUTHENTICATED));
        // As tonic reads them: a leading zero is no code of gRPC's (`00` is no success).
        assert_eq!(parse("016"), Some(GrpcCode::UNKNOWN));
        assert_eq!(parse("00"), Some(GrpcCode::UNKNOWN));
        assert_eq!(parse("01"), Some(GrpcCode::UNKNOWN));
        for undefined in ["17", "99", "99999", "123456", "99999999999999999999999"] {
            assert_eq!(parse(undefined), Some(GrpcCode::UNKNOWN), "{undefined}");
        }
        for bad in ["", " 1", "1 ", "-1", "+1", "1a", "1.0", "x"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn server_errors_are_the_codes_opentelemetry_marks_failed() {
        let failed = [2, 4, 12, 13, 14, 15];
        for value in 0..=17 {
            let code = GrpcCode::new(value);
            assert_eq!(
                code.http_status().is_server_error(),
                failed.contains(&value) || value > 16,
                "{code}"
            );
        }
        assert_eq!(GrpcCode::CANCELLED.http_status().as_u16(), 499);
        assert_eq!(GrpcCode::new(40).name(), "UNKNOWN");
        assert_eq!(GrpcCode::new(17), GrpcCode::UNKNOWN);
        assert_eq!(GrpcCode::new(17).to_string(), "2 UNKNOWN");
        assert_eq!(GrpcCode::new(16).value(), 16);
        assert_eq!(GrpcCode::NOT_FOUND.to_string(), "5 NOT_FOUND");
    }

    #[test]
    fn errors_answered_over_grpc_keep_their_class() {
        for status in 100..=599 {
            let Ok(status) = StatusCode::from_u16(status) else {
                continue;
            };
            let code = GrpcCode::from_http_status(status);
            let back = code.http_status();
            if status == StatusCode::REQUEST_TIMEOUT {
                // A timeout, as the layer's own: `DEADLINE_EXCEEDED`, judged as its 504.
                assert_eq!(code, GrpcCode::DEADLINE_EXCEEDED);
                continue;
            }
            // A server error stays one, a client error stays one, the rest is OK.
            assert_eq!(
                back.is_server_error(),
                status.is_server_error(),
                "{status} {code}"
            );
            assert_eq!(
                back.is_client_error(),
                status.is_client_error(),
                "{status} {code}"
            );
        }
        for (status, code) in [
            (504, GrpcCode::DEADLINE_EXCEEDED),
            (503, GrpcCode::UNAVAILABLE),
            (500, GrpcCode::INTERNAL),
            (404, GrpcCode::NOT_FOUND),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(GrpcCode::from_http_status(status), code);
            assert_eq!(code.http_status(), status);
        }
        assert_eq!(
            GrpcCode::from_http_status(StatusCode::PAYLOAD_TOO_LARGE),
            GrpcCode::RESOURCE_EXHAUSTED
        );
        // A bare 408 (tower-http's `TimeoutLayer`) is a timeout, retryable: not
        // `FAILED_PRECONDITION`, which tells a client not to retry.
        assert_eq!(
            GrpcCode::from_http_status(StatusCode::REQUEST_TIMEOUT),
            GrpcCode::DEADLINE_EXCEEDED
        );
    }

    #[test]
    fn headers_are_found_in_small_and_large_maps() {
        for others in [0, 3, SCAN_LIMIT, SCAN_LIMIT + 5] {
            let mut headers = HeaderMap::new();
            for n in 0..others {
                headers.insert(
                    HeaderName::from_bytes(format!("x-other-{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert_eq!(answer_code(StatusCode::OK, &headers), None, "{others}");
            headers.append(GRPC_STATUS, HeaderValue::from_static("14"));
            headers.append(GRPC_STATUS, HeaderValue::from_static("0"));
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            // The first value, as a lookup gives it.
            assert_eq!(
                answer_code(StatusCode::OK, &headers),
                Some(GrpcCode::UNAVAILABLE),
                "{others}"
            );
            assert!(is_grpc_request(&headers), "{others}");
        }
    }

    #[test]
    fn grpc_requests_are_known_by_content_type() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            headers
        };
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; charset=utf-8",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert!(is_grpc_request(&headers(grpc)), "{grpc}");
        }
        for other in [
            "application/json",
            "application/grpcx",
            "application/grpc-foo",
            "application/grpc-webx",
            "text/grpc",
            "",
        ] {
            assert!(!is_grpc_request(&headers(other)), "{other}");
        }
        assert!(!is_grpc_request(&HeaderMap::new()));
    }

    #[test]
    fn only_a_grpc_200_with_grpc_status_stands_for_another_status() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        // An HTTP answer passing on a backend's `grpc-status` is judged by its own status.
        assert_eq!(answer_status(StatusCode::OK, &headers), StatusCode::OK);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(
            answer_status(StatusCode::OK, &headers),
            StatusCode::NOT_FOUND
        );
        // A proxy's own error keeps its status.
        assert_eq!(
            answer_status(StatusCode::BAD_GATEWAY, &headers),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            answer_status(StatusCode::OK, &HeaderMap::new()),
            StatusCode::OK
        );
        // Not a number: the gRPC client reads `UNKNOWN`, a failure (as from trailers).
        headers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(
            answer_status(StatusCode::OK, &headers),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            answer_code(StatusCode::OK, &headers),
            Some(GrpcCode::UNKNOWN)
        );
    }

    #[test]
    fn only_a_grpc_200_without_a_head_status_waits_for_its_trailers() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            headers
        };
        let grpc = headers(&[("content-type", "application/grpc+proto")]);
        assert_eq!(head_outcome(StatusCode::OK, &grpc), HeadOutcome::Trailers);
        // A proxy's own error, an HTTP answer, gRPC-Web (trailers in the body): the head.
        assert_eq!(
            head_outcome(StatusCode::BAD_GATEWAY, &grpc),
            HeadOutcome::Status
        );
        for other in [
            headers(&[]),
            headers(&[("content-type", "text/plain"), ("grpc-status", "13")]),
            headers(&[("content-type", "application/grpc-web+proto")]),
        ] {
            assert_eq!(
                head_outcome(StatusCode::OK, &other),
                HeadOutcome::Status,
                "{other:?}"
            );
        }
        for content_type in ["application/grpc", "application/grpc-web-text"] {
            let trailers_only = headers(&[("content-type", content_type), ("grpc-status", "5")]);
            assert_eq!(
                head_outcome(StatusCode::OK, &trailers_only),
                HeadOutcome::Code(GrpcCode::NOT_FOUND)
            );
            // A `grpc-status` that is not a number: what a gRPC client reads, `UNKNOWN`.
            let garbled = headers(&[("content-type", content_type), ("grpc-status", "x")]);
            assert_eq!(
                head_outcome(StatusCode::OK, &garbled),
                HeadOutcome::Code(GrpcCode::UNKNOWN)
            );
        }
        // A large map too.
        let mut large = grpc.clone();
        for n in 0..=SCAN_LIMIT {
            large.insert(
                HeaderName::from_bytes(format!("x-other-{n}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert_eq!(head_outcome(StatusCode::OK, &large), HeadOutcome::Trailers);
    }

    #[test]
    fn a_stream_ends_with_its_trailers_code_or_the_one_its_end_stands_for() {
        let mut trailers = HeaderMap::new();
        assert_eq!(StreamEnd::trailers(&trailers).code(), GrpcCode::UNKNOWN);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
        assert_eq!(StreamEnd::trailers(&trailers).code(), GrpcCode::INTERNAL);
        assert_eq!(StreamEnd::NoTrailers.code(), GrpcCode::UNKNOWN);
        assert_eq!(StreamEnd::Failed.code(), GrpcCode::INTERNAL);
        assert_eq!(StreamEnd::Dropped.code(), GrpcCode::CANCELLED);
    }

    /// A hook that pushes what it saw, tagged.
    fn recorder(
        seen: &Arc<Mutex<Vec<(&'static str, StreamEnd)>>>,
        tag: &'static str,
    ) -> impl FnOnce(StreamEnd) + Send + 'static {
        let seen = seen.clone();
        move |end| seen.lock().unwrap().push((tag, end))
    }

    #[test]
    fn a_watch_runs_each_hook_once_with_its_first_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let watch = StreamEndWatch::new();
        let other = watch.clone();
        watch.on_end(recorder(&seen, "a"));
        other.on_end(recorder(&seen, "b"));
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(watch.ended(), None);
        let end = StreamEnd::Trailers(Some(GrpcCode::NOT_FOUND));
        assert!(other.end(end));
        assert!(!watch.end(StreamEnd::Failed));
        // Registered after the end: runs at once, with that end.
        watch.on_end(recorder(&seen, "late"));
        drop((watch, other));
        assert_eq!(
            *seen.lock().unwrap(),
            [("a", end), ("b", end), ("late", end)]
        );
    }

    /// A hook that panics does not cost the others their signal: all run, then the panic
    /// goes on.
    #[test]
    fn a_hook_that_panics_does_not_stop_the_others() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let watch = StreamEndWatch::new();
        watch.on_end(|_| panic!("a hook failed"));
        watch.on_end(recorder(&seen, "after"));
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            watch.end(StreamEnd::NoTrailers)
        }));
        assert!(ended.is_err(), "the panic goes on once every hook ran");
        assert_eq!(*seen.lock().unwrap(), [("after", StreamEnd::NoTrailers)]);
    }

    #[test]
    fn a_watch_dropped_before_its_end_ends_as_cancelled() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let watch = StreamEndWatch::new();
        let other = watch.clone();
        watch.on_end(recorder(&seen, "a"));
        drop(watch);
        // A handle is left: not ended yet.
        assert!(seen.lock().unwrap().is_empty());
        drop(other);
        assert_eq!(*seen.lock().unwrap(), [("a", StreamEnd::Dropped)]);
        assert_eq!(StreamEnd::Dropped.code(), GrpcCode::CANCELLED);
    }

    #[test]
    fn a_hook_may_use_its_watch() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let watch = StreamEndWatch::new();
        let inner = watch.clone();
        let late = recorder(&seen, "from a hook");
        watch.on_end(move |_| inner.on_end(late));
        watch.end(StreamEnd::NoTrailers);
        assert_eq!(
            *seen.lock().unwrap(),
            [("from a hook", StreamEnd::NoTrailers)]
        );
    }
}

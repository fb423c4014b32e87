//! The client side: decoding an error response into a typed [`ApiError`], whatever the body.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::HeaderMap;
use http::{Response, StatusCode};
use http_body::Body;
use periscope_context::headers::X_REQUEST_ID;
use serde_json::{Map, Value};

use crate::class::ErrorClass;
use crate::code::{self, ErrorCode, MAX_CODE_LEN};
use crate::envelope::{self, ErrorBody, Violation};
use crate::layer::MAX_FRAMES_PER_POLL;
use crate::render;

/// How much of a body the decoder reads and parses by default, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a body that is not an envelope the decoder keeps by default, in bytes.
pub const DEFAULT_MAX_RAW_BODY_BYTES: usize = 4 * 1024;
/// The longest request id or trace id the decoder takes, in bytes, from an envelope or from
/// the `x-request-id` header: a longer one is no id (a cut id would name another request), and
/// is not taken.
pub const MAX_ID_LEN: usize = 256;
/// The longest retry delay reported: a server's `retry_after_s: 1e30` must not make the
/// caller's `Instant::now() + delay` overflow and panic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Decodes error responses, knowing the service's own codes so their class and retryability
/// are exact, and bounding how much of a body is read and kept.
///
/// A response without an envelope gets the built-in code of its status
/// ([`ErrorCode::for_status`]). A redirect (3xx) that reached the decoder was not followed:
/// not the upstream's internal error, but a call that must change, so it decodes as
/// `invalid_request` (validation, not retryable), its message naming the `Location`:
/// `HTTP 301 Moved Permanently: redirected to https://api.example.com/v2/jobs, and the client
/// did not follow the redirect`.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use periscope_error::{Decoder, ErrorClass, ErrorCode, error_codes};
///
/// error_codes! {
///     /// The jobs service's codes.
///     pub const JOB_CODES = [
///         NODE_DRAINING = ErrorCode::new("node_draining", ErrorClass::Provisioning)
///             .with_status(http::StatusCode::CONFLICT),
///     ];
/// }
/// const DECODER: Decoder = Decoder::new().with_codes(JOB_CODES);
///
/// let body = br#"{"error":{"code":"node_draining","message":"Node is draining","request_id":"req_9"}}"#;
/// let error = DECODER.decode(StatusCode::CONFLICT, &HeaderMap::new(), body);
/// assert_eq!(error.class(), ErrorClass::Provisioning);
/// assert!(error.is_retryable());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    codes: &'static [ErrorCode],
    max_body: usize,
    max_raw_body: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that knows the built-in codes, reads up to 64 KiB and keeps up to 4 KiB of a
    /// body that is not an envelope.
    pub const fn new() -> Self {
        Self {
            codes: &[],
            max_body: DEFAULT_MAX_BODY_BYTES,
            max_raw_body: DEFAULT_MAX_RAW_BODY_BYTES,
        }
    }

    /// Also knows `codes` (a service's [`error_codes!`](crate::error_codes) list).
    pub const fn with_codes(mut self, codes: &'static [ErrorCode]) -> Self {
        self.codes = codes;
        self
    }

    /// Reads and parses at most `bytes` of a body; a longer body is not parsed. A body
    /// compressed with `gzip` or `deflate` (its `Content-Encoding`) is inflated to at most
    /// `bytes` too, so a small body that inflates to gigabytes is cut like a long one.
    pub const fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Keeps at most `bytes` of a body that is not an envelope.
    pub const fn max_raw_body_bytes(mut self, bytes: usize) -> Self {
        self.max_raw_body = bytes;
        self
    }

    /// Decodes a response whose body is already in memory.
    pub fn decode(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
        let read = if body.len() > self.max_body {
            Read::TooLong
        } else {
            Read::Complete
        };
        self.decode_read(status, headers, body, read)
    }

    /// Reads at most the configured number of bytes of `response`'s body, then decodes it. A
    /// body that fails midway is decoded from what arrived. No time limit of its own: a body
    /// that stalls is bounded by the client's timeout around the call. The read yields to the
    /// runtime every 64 frames, so that timeout also fires for a body that always has a frame
    /// ready but never ends (endless empty chunks). A body compressed with `gzip` or `deflate`
    /// (a proxy's, when the caller forwarded an `Accept-Encoding`) is inflated before decoding;
    /// other codings (`br`, `zstd`) are not, and decode as a body that is not an envelope.
    ///
    /// ```
    /// use http_body_util::Full;
    /// use periscope_error::{Decoder, ErrorClass};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    /// let response = http::Response::builder()
    ///     .status(502)
    ///     .header("x-request-id", "req_7")
    ///     .body(Full::new(bytes::Bytes::from(html)))
    ///     .unwrap();
    /// let error = Decoder::new().decode_response(response).await;
    /// assert_eq!(error.class(), ErrorClass::Unavailable);
    /// assert!(error.is_retryable());
    /// assert_eq!(error.request_id(), Some("req_7"));
    /// assert_eq!(error.raw_body(), Some(html.as_bytes()));
    /// # }
    /// ```
    pub async fn decode_response<B: Body>(&self, response: Response<B>) -> ApiError {
        let (parts, body) = response.into_parts();
        let mut body = std::pin::pin!(body);
        let mut read = Vec::new();
        let outcome =
            std::future::poll_fn(|cx| read_body(body.as_mut(), &mut read, self.max_body, cx)).await;
        self.decode_read(parts.status, &parts.headers, &read, outcome)
    }

    /// Decodes `body`, as far as `read` says it arrived.
    fn decode_read(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        read: Read,
    ) -> ApiError {
        // A body a proxy compressed (the caller forwarded an `Accept-Encoding`, or the proxy
        // ignored it) is inflated first, to the same bound, so its envelope is not lost and
        // `raw_body` is its text, not gzip bytes.
        let inflated = inflate(headers, body, read, self.max_body);
        let (body, read) = match &inflated {
            Some((text, read)) => (text.as_slice(), *read),
            None => (body, read),
        };
        // A body that failed midway is still parsed: the start of a JSON object is never a
        // whole JSON object, so only an envelope that arrived in full decodes (a connection
        // cut after the last byte, before the end of the chunked encoding).
        let incomplete = read != Read::Complete;
        let json = if read == Read::TooLong {
            None
        } else {
            parse_json(body)
        };
        let envelope = json.as_ref().and_then(envelope_from_json);
        let known = envelope
            .as_ref()
            .and_then(|envelope| ErrorCode::find(&envelope.code, self.codes));
        let code_name: Cow<'static, str> = match &envelope {
            Some(envelope) => envelope.code.clone(),
            None => Cow::Borrowed(ErrorCode::for_status(status).name()),
        };
        let class = known
            .map(|code| code.class())
            .or_else(|| code::class_of_family(&code_name))
            .unwrap_or_else(|| ErrorClass::from_status(status));
        let retry_after = envelope
            .as_ref()
            .and_then(|envelope| envelope.retry_after_s)
            .or_else(|| render::retry_after_seconds(headers))
            .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
        // As `ErrorLayer` renders it: what the envelope says, else a delay to retry after makes
        // it temporary, else the code's, its family's or the status's class.
        let retryable = envelope
            .as_ref()
            .and_then(|envelope| envelope.retryable)
            .or(retry_after.map(|_| true))
            .or(known.map(|code| code.is_retryable()))
            .unwrap_or(class.is_retryable());
        let request_id = envelope
            .as_ref()
            .map(|envelope| envelope.request_id.clone())
            .filter(|id| !id.is_empty())
            .or_else(|| json.as_ref().and_then(request_id_from_json))
            .or_else(|| request_id_header(headers));
        let (message, raw_body) = match &envelope {
            Some(envelope) => (envelope.message.to_string(), None),
            None => {
                // A status without a reason phrase (599) gets no empty word in its place.
                let mut message = match status.canonical_reason() {
                    Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
                    None => format!("HTTP {}", status.as_u16()),
                };
                // A redirect's body is a stub page: where it points is what the caller needs.
                if let Some(location) = redirected_to(status, headers) {
                    message.push_str(": redirected to ");
                    push_bounded(&mut message, &location, MAX_WORDS_LEN);
                    message.push_str(", and the client did not follow the redirect");
                } else {
                    message.push_str(" without an error envelope");
                    if let Some(words) =
                        json.as_ref().and_then(|json| words_from_json(json, status))
                    {
                        message.push_str(": ");
                        push_bounded(&mut message, words, MAX_WORDS_LEN);
                    }
                }
                let kept = &body[..body.len().min(self.max_raw_body)];
                let truncated = incomplete || kept.len() < body.len();
                (message, Some((Bytes::copy_from_slice(kept), truncated)))
            }
        };
        ApiError {
            status,
            code: code_name,
            message,
            class,
            retryable,
            retry_after,
            request_id,
            envelope,
            raw_body,
        }
    }
}

/// How much of a body arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// All of it.
    Complete,
    /// More than the bound: not parsed.
    TooLong,
    /// The body failed midway: what arrived.
    Failed,
}

/// Reads `body` into `read` until it ends, fails, or passes `max` bytes (then `read` holds
/// one byte more than `max`: that tells "exactly at the bound" from "longer").
///
/// A body that always has a frame ready but never reaches the bound (empty chunks, trailers,
/// without end) would keep the thread forever, and a timeout around the decoder would never
/// fire: past [`MAX_FRAMES_PER_POLL`] frames, the read yields (and is polled again at once),
/// as the layer's own body read does.
fn read_body<B: Body>(
    mut body: Pin<&mut B>,
    read: &mut Vec<u8>,
    max: usize,
    cx: &mut Context<'_>,
) -> Poll<Read> {
    let limit = max.saturating_add(1);
    for _ in 0..MAX_FRAMES_PER_POLL {
        match ready!(body.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Read::Complete),
            Some(Err(_)) => return Poll::Ready(Read::Failed),
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                while data.has_remaining() && read.len() < limit {
                    let chunk = data.chunk();
                    let take = chunk.len().min(limit - read.len());
                    read.extend_from_slice(&chunk[..take]);
                    data.advance(take);
                }
                if read.len() > max {
                    return Poll::Ready(Read::TooLong);
                }
            }
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// `body` inflated, when its `Content-Encoding` is `gzip` (or `x-gzip`) or `deflate`, to at
/// most `max` bytes (then one more, and [`Read::TooLong`]: a small body that inflates to
/// gigabytes is cut like a plain one); `None` for any other body. What arrived of a body that
/// failed, or of a stream that is corrupt or cut, is kept as [`Read::Failed`]; a body that is
/// not compressed at all, whatever its header says, is read as sent. A body too long
/// to be read whole is not inflated (its start is kept as it came).
fn inflate(headers: &HeaderMap, body: &[u8], read: Read, max: usize) -> Option<(Vec<u8>, Read)> {
    use std::io::Read as _;

    let coding = headers
        .get(http::header::CONTENT_ENCODING)?
        .to_str()
        .ok()?
        .trim();
    let mut decoder: Box<dyn std::io::Read + '_> =
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(body))
        } else if coding.eq_ignore_ascii_case("deflate") {
            // HTTP's `deflate` is the zlib format (RFC 9110, 8.4.1.2).
            Box::new(flate2::read::ZlibDecoder::new(body))
        } else {
            return None;
        };
    if read == Read::TooLong {
        return None;
    }
    let limit = max.saturating_add(1);
    let mut text = Vec::new();
    let mut chunk = [0; 8 * 1024];
    let mut outcome = read;
    while text.len() < limit {
        match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n.min(limit - text.len())]),
            // Not compressed after all (a server that labels plain JSON `gzip`): read as sent.
            Err(_) if text.is_empty() => return None,
            Err(_) => {
                outcome = Read::Failed;
                break;
            }
        }
    }
    if text.len() > max {
        outcome = Read::TooLong;
    }
    Some((text, outcome))
}

/// An error response decoded on the client side: the envelope's facts when the server sent
/// one, and sensible answers from the status and headers when it did not (an HTML page from a
/// proxy, an empty or truncated body).
///
/// Its `Display` is what a support engineer asks for first:
/// `code: message (request_id: ...)`, on one line (control characters escaped).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use periscope_error::{ApiError, ErrorClass};
///
/// let body = br#"{"error":{"code":"rate_limited","message":"Too many requests",
///     "request_id":"req_1","retryable":true,"retry_after_s":30}}"#;
/// let error = ApiError::from_parts(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
/// assert_eq!(error.code(), "rate_limited");
/// assert_eq!(error.class(), ErrorClass::RateLimited);
/// assert!(error.is_retryable());
/// assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(30)));
/// assert_eq!(error.to_string(), "rate_limited: Too many requests (request_id: req_1)");
///
/// let empty = ApiError::from_parts(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"");
/// assert_eq!(empty.code(), "service_unavailable");
/// assert!(empty.is_retryable());
/// assert_eq!(empty.request_id(), None);
/// ```
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    class: ErrorClass,
    retryable: bool,
    retry_after: Option<Duration>,
    request_id: Option<String>,
    envelope: Option<ErrorBody>,
    /// The start of a body that was not an envelope, and whether it was cut.
    raw_body: Option<(Bytes, bool)>,
}

impl ApiError {
    /// Decodes with the default [`Decoder`] (built-in codes, 64 KiB parsed, 4 KiB kept).
    pub fn from_parts(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        Decoder::new().decode(status, headers, body)
    }

    /// Decodes a response whose body is in memory, with the default [`Decoder`].
    pub fn from_response<B: AsRef<[u8]>>(response: &Response<B>) -> Self {
        Self::from_parts(
            response.status(),
            response.headers(),
            response.body().as_ref(),
        )
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code: the envelope's, or for a response without one the built-in code of its
    /// status (`upstream_error` for a 502 page from a proxy). A `code` longer than
    /// [`MAX_CODE_LEN`] bytes, which no service can declare, is no code:
    /// the body is then decoded as one that is not an envelope, as without a `code`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The class: of the known code, else of its family (`token_*` is auth), else of the status.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Whether the same request may succeed later: the envelope's `retryable`, else `true` when
    /// a delay to retry after is given, else the known code's, else the class's.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// How long to wait before retrying: `retry_after_s`, else a `Retry-After` header (seconds,
    /// or an HTTP date less the answer's own `Date`, by the server's clock as RFC 9110 says;
    /// less this machine's clock when `Date` is missing or not a date; zero for a date before
    /// it), at most [`MAX_RETRY_AFTER`] (a year).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The request id to quote to support: the envelope's, else the `request_id` of a JSON body
    /// that is not quite an envelope (`{"error": {"request_id": ...}}` without a string `code`,
    /// or a top-level one), else the `x-request-id` header. Each of at most [`MAX_ID_LEN`]
    /// bytes of text: a longer one is not taken. A `request_id` sent as a JSON number is its
    /// decimal text (`"90210"`).
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The trace id, when the envelope carried one of at most [`MAX_ID_LEN`] bytes.
    pub fn trace_id(&self) -> Option<&str> {
        self.envelope.as_ref()?.trace_id.as_deref()
    }

    /// The message: the envelope's, or a description of the bare response and the words of
    /// a JSON body that is not an envelope (`detail`, `message`, ...), or for a redirect where
    /// its `Location` points. At most [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes: a
    /// longer one is cut as the server cuts what it renders (on a character boundary, ending
    /// with `…`), as are the envelope's `help` and violations.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The envelope's `details`: its members in order while their JSON stays within
    /// [`MAX_DETAILS_LEN`](crate::MAX_DETAILS_LEN) bytes (a member that would pass it is left
    /// out), as the server renders them.
    pub fn details(&self) -> Option<&Map<String, Value>> {
        self.envelope.as_ref()?.details.as_ref()
    }

    /// The envelope's `help`.
    pub fn help(&self) -> Option<&str> {
        self.envelope.as_ref()?.help.as_deref()
    }

    /// The envelope's `docs_url`, when it is at most [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN)
    /// bytes (a longer one is left out: cut, it would point elsewhere).
    pub fn docs_url(&self) -> Option<&str> {
        self.envelope.as_ref()?.docs_url.as_deref()
    }

    /// The envelope's invalid fields.
    pub fn violations(&self) -> &[Violation] {
        self.envelope
            .as_ref()
            .map_or(&[], |envelope| &envelope.violations)
    }

    /// The decoded envelope (or problem details), when the body was one; its `message`, `help`
    /// and violations cut to [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes.
    pub fn envelope(&self) -> Option<&ErrorBody> {
        self.envelope.as_ref()
    }

    /// The start of the body when it was not an envelope (an HTML page, plain text, truncated
    /// JSON), bounded by [`Decoder::max_raw_body_bytes`]; for support tickets.
    pub fn raw_body(&self) -> Option<&[u8]> {
        self.raw_body.as_ref().map(|(bytes, _)| bytes.as_ref())
    }

    /// Whether [`raw_body`](ApiError::raw_body) is only the start of a longer (or broken) body.
    pub fn is_raw_body_truncated(&self) -> bool {
        self.raw_body
            .as_ref()
            .is_some_and(|(_, truncated)| *truncated)
    }
}

impl fmt::Display for ApiError {
    /// One line, whatever the server sent: control characters in the code, message or request
    /// id are escaped (`\n`, `\u{1b}`), so a response cannot forge lines in a text log or
    /// drive a terminal. The accessors return the text unescaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.code)?;
        f.write_str(": ")?;
        write_escaped(f, &self.message)?;
        match &self.request_id {
            Some(id) => {
                f.write_str(" (request_id: ")?;
                write_escaped(f, id)?;
                f.write_str(")")
            }
            None => f.write_str(" (no request_id)"),
        }
    }
}

/// Writes `text` with control characters and line separators escaped.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let breaks_line = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    let mut rest = text;
    while let Some(at) = rest.find(breaks_line) {
        f.write_str(&rest[..at])?;
        let mut chars = rest[at..].chars();
        if let Some(c) = chars.next() {
            write!(f, "{}", c.escape_debug())?;
        }
        rest = chars.as_str();
    }
    f.write_str(rest)
}

impl std::error::Error for ApiError {}

/// `body` as JSON, skipping a UTF-8 byte order mark (RFC 8259 lets a parser ignore one; some
/// servers and proxies write it). Bytes that are not UTF-8 (a message in Latin-1) are read as
/// U+FFFD rather than losing the whole envelope, and with it the code and request id.
pub(crate) fn parse_json(body: &[u8]) -> Option<Value> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match serde_json::from_slice(body) {
        Ok(json) => Some(json),
        // Only a body that is not UTF-8 is read again: at most ~3 times the bounded body.
        Err(_) => match String::from_utf8_lossy(body) {
            Cow::Owned(text) => serde_json::from_str(&text).ok(),
            Cow::Borrowed(_) => None,
        },
    }
}

/// The envelope in `json`: `{"error": {...}}`, or RFC 9457 problem details that carry a `code`.
/// Lenient: members of the wrong type are ignored rather than failing the whole body.
pub(crate) fn envelope_from_json(json: &Value) -> Option<ErrorBody> {
    let object = json.as_object()?;
    if let Some(error) = object.get("error").and_then(Value::as_object) {
        return body_from_members(error, &["message"]);
    }
    // Problem details say what went wrong in a `title` or a `detail`: a `status` or `type`
    // alone is as likely another shape (JSend's `{"status": "error", "message": ..}`), whose
    // words are read as any body's are, not lost to a problem without them.
    let is_problem = ["title", "detail"]
        .iter()
        .any(|member| object.get(*member).is_some_and(Value::is_string));
    if is_problem {
        // `detail` is optional in RFC 9457: without it, the `title` says what went wrong.
        return body_from_members(object, &["detail", "title"]);
    }
    None
}

/// Every member is bounded, as a service relays or logs what it decodes: texts for humans are
/// cut (`bound_texts`); a code, an id or a URL is not cut (a cut one names something else),
/// but one longer than it can be is not taken: a `code` over [`MAX_CODE_LEN`] bytes (the
/// longest a service can declare) makes the body no envelope, as a missing code does; a
/// `request_id` or `trace_id` over [`MAX_ID_LEN`], a `docs_url` over
/// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN), are left out. `details` keeps its members in
/// order within [`MAX_DETAILS_LEN`](crate::MAX_DETAILS_LEN).
/// The message is the first of `message_keys` present, else empty.
fn body_from_members(members: &Map<String, Value>, message_keys: &[&str]) -> Option<ErrorBody> {
    let text = |key: &str, max: usize| {
        let text = members.get(key)?.as_str()?;
        (text.len() <= max).then(|| text.to_owned())
    };
    let code = text("code", MAX_CODE_LEN).filter(|code| !code.is_empty())?;
    let mut body = ErrorBody::new(
        code,
        message_keys
            .iter()
            .find_map(|key| text(key, usize::MAX))
            .unwrap_or_default(),
        members
            .get("request_id")
            .and_then(request_id_text)
            .unwrap_or_default(),
    );
    body.trace_id = text("trace_id", MAX_ID_LEN);
    body.details = members
        .get("details")
        .and_then(Value::as_object)
        .map(|details| {
            let kept = envelope::kept_details(details);
            kept.map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        });
    body.help = text("help", usize::MAX).map(Cow::Owned);
    body.retryable = members.get("retryable").and_then(Value::as_bool);
    body.retry_after_s = members.get("retry_after_s").and_then(seconds);
    body.docs_url = text("docs_url", envelope::MAX_MESSAGE_LEN).map(Cow::Owned);
    body.violations = members
        .get("violations")
        .and_then(Value::as_array)
        // As many as a service lists (`MAX_VIOLATIONS`): a body of thousands of tiny ones
        // would be many times its size once decoded, and again once relayed.
        .map(|list| {
            list.iter()
                .filter_map(violation_from_json)
                .take(crate::MAX_VIOLATIONS)
                .collect()
        })
        .unwrap_or_default();
    // Cut as the server side cuts what it renders: a service relays or logs what it decodes.
    body.bound_texts();
    Some(body)
}

fn violation_from_json(json: &Value) -> Option<Violation> {
    let object = json.as_object()?;
    let text = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // A reason is a snake_case word, as a code is: one longer than a code can be is left out
    // rather than cut (cut, it would say something else).
    let mut reason = text("reason");
    if reason.len() > MAX_CODE_LEN {
        reason.clear();
    }
    Some(Violation::new(text("field"), reason, text("message")))
}

/// Whole seconds from an integer, or a non-negative finite number rounded up.
fn seconds(json: &Value) -> Option<u64> {
    json.as_u64().or_else(|| {
        let value = json.as_f64()?;
        // `as` saturates at u64::MAX for values past it.
        (value.is_finite() && value >= 0.0).then(|| value.ceil() as u64)
    })
}

/// The `request_id` of a JSON body that is not an envelope (its `code` missing or not a
/// string, RFC 9457 without a `code`): the id support asks for is not lost with the rest.
fn request_id_from_json(json: &Value) -> Option<String> {
    let object = json.as_object()?;
    let inner = object.get("error").and_then(Value::as_object);
    [inner, Some(object)]
        .into_iter()
        .flatten()
        .find_map(|members| {
            let id = request_id_text(members.get("request_id")?)?;
            (!id.is_empty()).then_some(id)
        })
}

/// A `request_id` member as text: a string as sent, a number (servers that count their
/// requests) as its decimal text; any other type, or a text over [`MAX_ID_LEN`] bytes, is not
/// an id.
fn request_id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(id) if id.len() <= MAX_ID_LEN => Some(id.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The most text of a server's own words (or of a redirect's `Location`) kept in a message:
/// the whole body is in [`ApiError::raw_body`]. With the words around them (at most 87
/// bytes), the message stays within [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN).
const MAX_WORDS_LEN: usize = 896;

/// The server's own words in a JSON body that is not an envelope: RFC 9457's `detail`, else a
/// `title` that says more than the reason phrase, else the `message` of an `error` object or of
/// the body, else OAuth's `error_description` or `error` (RFC 6749).
fn words_from_json(json: &Value, status: StatusCode) -> Option<&str> {
    let object = json.as_object()?;
    fn text<'a>(members: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        let words = members.get(key)?.as_str()?.trim();
        (!words.is_empty()).then_some(words)
    }
    let title = text(object, "title").filter(|title| {
        status
            .canonical_reason()
            .is_none_or(|reason| !title.eq_ignore_ascii_case(reason))
    });
    let error = object.get("error").and_then(Value::as_object);
    text(object, "detail")
        .or(title)
        .or_else(|| error.and_then(|error| text(error, "message")))
        .or_else(|| text(object, "message"))
        .or_else(|| text(object, "error_description"))
        .or_else(|| text(object, "error"))
}

/// Appends `words`, cut as an envelope's message is cut, to at most `max` bytes.
fn push_bounded(out: &mut String, words: &str, max: usize) {
    out.push_str(&periscope_context::text::cut(words, max));
}

/// Where a 3xx points: its `Location`, as text (bytes that are not UTF-8 as U+FFFD); `None`
/// for any other status, or a 3xx without one (a 304).
fn redirected_to(status: StatusCode, headers: &HeaderMap) -> Option<Cow<'_, str>> {
    if !status.is_redirection() {
        return None;
    }
    let location = headers.get(http::header::LOCATION)?.as_bytes().trim_ascii();
    (!location.is_empty()).then(|| String::from_utf8_lossy(location))
}

fn request_id_header(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(X_REQUEST_ID)?.to_str().ok()?.trim();
    (!value.is_empty() && value.len() <= MAX_ID_LEN).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::SystemTime;

    fn decode(status: u16, body: &[u8]) -> ApiError {
        ApiError::from_parts(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body,
        )
    }

    #[test]
    fn html_from_a_proxy_maps_the_status_and_keeps_the_page() {
        let page = b"<html><head><title>504 Gateway Time-out</title></head></html>";
        let error = decode(504, page);
        assert_eq!(error.code(), "timeout");
        assert_eq!(error.class(), ErrorClass::Unavailable);
        assert!(error.is_retryable());
        assert_eq!(error.raw_body(), Some(&page[..]));
        assert!(!error.is_raw_body_truncated());
        assert!(error.envelope().is_none());
        assert_eq!(
            error.to_string(),
            "timeout: HTTP 504 Gateway Timeout without an error envelope (no request_id)"
        );
    }

    /// A delay to retry after makes an answer retryable, as `ErrorLayer` renders it: a proxy's
    /// bare 413 or 500 with `Retry-After`, an envelope with `retry_after_s` and no `retryable`.
    /// What an envelope says itself stands.
    #[test]
    fn a_delay_to_retry_after_decodes_retryable() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "30".parse().unwrap());
        for status in [
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let error = ApiError::from_parts(status, &headers, b"busy");
            assert!(error.is_retryable(), "{status}");
            assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
        }
        let error = decode(
            500,
            br#"{"error":{"code":"internal_error","message":"Maintenance","retry_after_s":120}}"#,
        );
        assert!(error.is_retryable());
        let error = decode(
            500,
            br#"{"error":{"code":"internal_error","message":"No","retryable":false,"retry_after_s":120}}"#,
        );
        assert!(!error.is_retryable());
        assert!(!decode(500, b"oops").is_retryable());
    }

    #[test]
    fn a_body_labelled_gzip_that_is_not_is_read_as_sent() {
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", "gzip".parse().unwrap());
        let body =
            br#"{"error":{"code":"node_draining","message":"Draining","request_id":"req_1"}}"#;
        let error = ApiError::from_parts(StatusCode::CONFLICT, &headers, body);
        assert_eq!(error.code(), "node_draining");
        assert_eq!(error.request_id(), Some("req_1"));
    }

    #[test]
    fn truncated_json_is_not_an_envelope() {
        let error = decode(409, br#"{"error":{"code":"job_already_terminal","mess"#);
        assert_eq!(error.code(), "conflict");
        assert_eq!(error.class(), ErrorClass::Conflict);
        assert!(error.raw_body().unwrap().starts_with(b"{\"error\""));
    }

    #[test]
    fn huge_bodies_are_not_parsed_and_kept_bounded() {
        let mut huge = br#"{"error":{"code":"conflict","message":""#.to_vec();
        huge.resize(1 << 20, b'x');
        huge.extend_from_slice(br#""}}"#);
        let error = decode(500, &huge);
        assert!(error.envelope().is_none());
        assert_eq!(error.raw_body().unwrap().len(), DEFAULT_MAX_RAW_BODY_BYTES);
        assert!(error.is_raw_body_truncated());
    }

    #[test]
    fn wrong_member_types_are_ignored() {
        let error = decode(
            429,
            br#"{"error":{"code":"rate_limited","message":7,"retryable":"yes","retry_after_s":2.5,"violations":[1,{"field":"a"}]}}"#,
        );
        assert_eq!(error.code(), "rate_limited");
        assert_eq!(error.message(), "");
        assert!(error.is_retryable(), "from the code");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(error.violations(), &[Violation::new("a", "", "")]);
    }

    #[test]
    fn an_envelope_after_a_byte_order_mark_decodes() {
        let body = "\u{feff}{\"error\":{\"code\":\"node_draining\",\"message\":\"Draining\",\"request_id\":\"req_1\"}}";
        let error = decode(409, body.as_bytes());
        assert_eq!(error.code(), "node_draining");
        assert!(error.is_retryable());
        assert_eq!(error.request_id(), Some("req_1"));
    }

    #[test]
    fn an_envelope_with_bytes_that_are_not_utf8_still_decodes() {
        // A message in Latin-1 (`Caf\xe9`): the code, and with it the class, stay.
        let body = b"{\"error\":{\"code\":\"node_draining\",\"message\":\"Caf\xe9 node\",\"request_id\":\"req_2\"}}";
        let error = decode(409, body);
        assert_eq!(error.code(), "node_draining");
        assert_eq!(error.class(), ErrorClass::Provisioning);
        assert!(error.is_retryable());
        assert_eq!(error.message(), "Caf\u{fffd} node");
        assert_eq!(error.request_id(), Some("req_2"));
    }

    #[test]
    fn the_request_id_of_a_json_body_that_is_not_an_envelope_is_kept() {
        for body in [
            &br#"{"error":{"code":4001,"message":"Bad","request_id":"req_3"}}"#[..],
            br#"{"error":{"message":"Bad","request_id":"req_3"}}"#,
            br#"{"error":"invalid_grant","request_id":"req_3"}"#,
            br#"{"type":"about:blank","title":"Bad Request","status":400,"request_id":"req_3"}"#,
        ] {
            let error = decode(400, body);
            assert!(error.envelope().is_none());
            assert_eq!(error.code(), "invalid_request");
            let text = String::from_utf8_lossy(body);
            assert_eq!(error.request_id(), Some("req_3"), "{text}");
            assert_eq!(error.raw_body(), Some(body));
        }
        // The header still stands in when the body has none.
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "req_4".parse().unwrap());
        let body = br#"{"error":{"message":"Bad"}}"#;
        let error = ApiError::from_parts(StatusCode::BAD_REQUEST, &headers, body);
        assert_eq!(error.request_id(), Some("req_4"));
    }

    /// Servers that number their requests send the id as a JSON number: support still gets
    /// it, as its decimal text; other types are not an id.
    #[test]
    fn a_request_id_that_is_a_json_number_is_kept_as_its_decimal_text() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "req_header".parse().unwrap());
        for (body, id) in [
            (
                &br#"{"error":{"code":"node_draining","message":"Draining","request_id":1234567890123}}"#[..],
                "1234567890123",
            ),
            (
                br#"{"error":{"code":"node_draining","message":"Draining","request_id":-7}}"#,
                "-7",
            ),
            (
                br#"{"type":"about:blank","title":"Conflict","status":409,"code":"node_draining","request_id":42}"#,
                "42",
            ),
            // Not quite an envelope: the id is still the body's.
            (br#"{"error":{"message":"Bad","request_id":99}}"#, "99"),
            (
                br#"{"error":{"code":"node_draining","message":"Draining","request_id":"007"}}"#,
                "007",
            ),
        ] {
            let text = String::from_utf8_lossy(body);
            let error = ApiError::from_parts(StatusCode::CONFLICT, &headers, body);
            assert_eq!(error.request_id(), Some(id), "{text}");
            if let Some(envelope) = error.envelope() {
                assert_eq!(envelope.request_id, id, "{text}");
            }
            assert!(error.to_string().ends_with(&format!("(request_id: {id})")));
        }
        // Other types are ignored: the header stands in.
        for id in ["true", "null", "[1]", r#"{"n":1}"#] {
            let body = format!(
                r#"{{"error":{{"code":"node_draining","message":"D","request_id":{id}}}}}"#
            );
            let error = ApiError::from_parts(StatusCode::CONFLICT, &headers, body.as_bytes());
            assert_eq!(error.code(), "node_draining", "{id}");
            assert_eq!(error.request_id(), Some("req_header"), "{id}");
        }
    }

    /// Problem details without a `code` (as many frameworks write them), an error object
    /// without one, or an OAuth error: the server's own words are what a person reads first.
    #[test]
    fn the_message_of_a_json_body_that_is_not_an_envelope_is_kept() {
        for (body, words) in [
            (
                &br#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"name is required"}"#[..],
                "name is required",
            ),
            (
                br#"{"type":"https://x/out-of-credit","title":"You do not have enough credit.","status":400}"#,
                "You do not have enough credit.",
            ),
            (br#"{"error":{"message":"Bad name","code":4001}}"#, "Bad name"),
            (br#"{"message":"Bad name"}"#, "Bad name"),
            (
                br#"{"error":"invalid_grant","error_description":"Code expired"}"#,
                "Code expired",
            ),
            (br#"{"error":"invalid_grant"}"#, "invalid_grant"),
        ] {
            let error = decode(400, body);
            assert!(error.envelope().is_none());
            assert_eq!(
                error.message(),
                format!("HTTP 400 Bad Request without an error envelope: {words}"),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(error.raw_body(), Some(body));
        }
        // A title that only repeats the reason phrase, or no words at all, adds nothing.
        for body in [
            &br#"{"type":"about:blank","title":"bad request","status":400}"#[..],
            br#"{"error":{"message":"   "}}"#,
            br#"{"message":7}"#,
            b"[\"a\"]",
        ] {
            let error = decode(400, body);
            assert_eq!(
                error.message(),
                "HTTP 400 Bad Request without an error envelope"
            );
        }
        // Long words are cut on a character boundary.
        let long = format!(r#"{{"detail":"{}"}}"#, "é".repeat(2000));
        let message = decode(400, long.as_bytes()).message().to_owned();
        assert!(message.len() <= crate::MAX_MESSAGE_LEN, "{}", message.len());
        assert!(message.ends_with("é…"), "{message}");
    }

    #[test]
    fn a_status_without_a_reason_phrase_reads_cleanly() {
        let error = decode(599, b"");
        assert_eq!(error.message(), "HTTP 599 without an error envelope");
        assert_eq!(error.class(), ErrorClass::Internal);
    }

    #[test]
    fn a_redirect_the_client_did_not_follow_is_not_an_internal_error() {
        let redirect = |status: u16, location: Option<&str>, body: &[u8]| {
            let mut headers = HeaderMap::new();
            if let Some(location) = location {
                headers.insert("location", location.parse().unwrap());
            }
            headers.insert("x-request-id", "req_moved".parse().unwrap());
            ApiError::from_parts(StatusCode::from_u16(status).unwrap(), &headers, body)
        };
        let moved = "https://api.example.com/v2/jobs";
        for status in [301, 302, 303, 307, 308] {
            let error = redirect(status, Some(moved), b"<html>Moved</html>");
            assert_eq!(error.code(), "invalid_request", "{status}");
            assert_eq!(error.class(), ErrorClass::Validation, "{status}");
            assert!(!error.is_retryable(), "{status}");
            assert_eq!(error.request_id(), Some("req_moved"));
            let message = error.message();
            assert!(message.starts_with(&format!("HTTP {status} ")), "{message}");
            assert!(
                message.ends_with(&format!(
                    ": redirected to {moved}, and the client did not follow the redirect"
                )),
                "{message}"
            );
            assert_eq!(error.raw_body(), Some(&b"<html>Moved</html>"[..]));
        }
        // Without a `Location` (a 304 to a conditional request): the status says it all.
        let error = redirect(304, None, b"");
        assert_eq!(error.code(), "invalid_request");
        assert!(!error.is_retryable());
        assert_eq!(
            error.message(),
            "HTTP 304 Not Modified without an error envelope"
        );
        // A long `Location` is cut, one that is not UTF-8 read as far as it is.
        let long = format!("https://example.com/{}", "a".repeat(4000));
        for status in [301, 302, 307, 308] {
            let message = redirect(status, Some(&long), b"").message().to_owned();
            assert!(message.len() <= crate::MAX_MESSAGE_LEN, "{}", message.len());
            assert!(message.ends_with("a…, and the client did not follow the redirect"));
        }
        let mut headers = HeaderMap::new();
        let latin1 = http::HeaderValue::from_bytes(b"/caf\xe9").unwrap();
        headers.insert("location", latin1);
        let error = ApiError::from_parts(StatusCode::FOUND, &headers, b"");
        assert!(
            error.message().contains("redirected to /caf\u{fffd}"),
            "{}",
            error.message()
        );
        // An envelope on a 3xx is taken as sent.
        let error = redirect(
            303,
            Some(moved),
            br#"{"error":{"code":"job_moved","message":"See the new job","request_id":"r"}}"#,
        );
        assert_eq!(error.code(), "job_moved");
        assert_eq!(error.message(), "See the new job");
    }

    #[test]
    fn problem_details_decode_too() {
        let error = decode(
            404,
            br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"No route matches GET /x","code":"route_not_found","request_id":"r1"}"#,
        );
        assert_eq!(error.code(), "route_not_found");
        assert_eq!(error.message(), "No route matches GET /x");
        assert_eq!(error.request_id(), Some("r1"));
        // `detail` is optional (RFC 9457): the title says what went wrong, as the error
        // layer relaying the same answer says.
        let error = decode(
            502,
            br#"{"type":"about:blank","title":"Bad Gateway","status":502,"code":"upstream_error","request_id":"r1"}"#,
        );
        assert_eq!(error.message(), "Bad Gateway");
        assert_eq!(
            error.to_string(),
            "upstream_error: Bad Gateway (request_id: r1)"
        );
    }

    /// A JSON body with a `status` or `type` but no `title` or `detail` is no problem details:
    /// decoded as a body without an envelope, its words stay in the message (JSend's shape, a
    /// `type` naming the error kind), where an empty problem lost them.
    #[test]
    fn a_json_body_with_status_code_and_message_keeps_its_message() {
        for body in [
            &br#"{"status":"error","code":"bad_input","message":"name is required"}"#[..],
            br#"{"type":"validation","code":"bad_input","message":"name is required"}"#,
        ] {
            let error = decode(400, body);
            assert!(error.envelope().is_none(), "{error}");
            assert!(error.message().ends_with(": name is required"), "{error}");
        }
    }

    #[test]
    fn unknown_codes_fall_back_to_family_then_status() {
        let error = decode(401, br#"{"error":{"code":"token_revoked","message":"m"}}"#);
        assert_eq!(error.class(), ErrorClass::Auth);
        let error = decode(409, br#"{"error":{"code":"node_cordoned","message":"m"}}"#);
        assert_eq!(error.class(), ErrorClass::Provisioning);
        assert!(error.is_retryable());
        let error = decode(
            409,
            br#"{"error":{"code":"job_already_terminal","message":"m"}}"#,
        );
        assert_eq!(error.class(), ErrorClass::Conflict);
        assert!(!error.is_retryable());
    }

    #[test]
    fn headers_fill_in_for_a_bare_response() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "17".parse().unwrap());
        headers.insert("x-request-id", "req_abc".parse().unwrap());
        let error = ApiError::from_parts(StatusCode::TOO_MANY_REQUESTS, &headers, b"slow down");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(17)));
        assert_eq!(error.request_id(), Some("req_abc"));
        assert_eq!(error.code(), "rate_limited");
    }

    #[test]
    fn retry_after_as_an_http_date_counts_from_now() {
        let retry_after = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", value.parse().unwrap());
            ApiError::from_parts(StatusCode::SERVICE_UNAVAILABLE, &headers, b"").retry_after()
        };
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let seconds = retry_after(&in_a_minute).unwrap().as_secs();
        assert!((58..=61).contains(&seconds), "{in_a_minute}: {seconds} s");
        // A date in the past means now; the obsolete formats of RFC 9110 are read too.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(" 5 "), Some(Duration::from_secs(5)));
        for garbage in ["soon", "-3", "1.5", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(retry_after(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn retry_after_as_an_http_date_counts_from_the_answers_date() {
        let retry_after = |date: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("date", date.parse().unwrap());
            headers.insert("retry-after", value.parse().unwrap());
            ApiError::from_parts(StatusCode::SERVICE_UNAVAILABLE, &headers, b"").retry_after()
        };
        let at = |time: SystemTime| httpdate::fmt_http_date(time);
        let hour = Duration::from_secs(3600);
        let minute = Duration::from_secs(60);
        // The server's clock an hour ahead of this machine's, then an hour behind.
        for server_now in [SystemTime::now() + hour, SystemTime::now() - hour] {
            let date = at(server_now);
            assert_eq!(retry_after(&date, &at(server_now + minute)), Some(minute));
            // Before the answer's date: no delay.
            assert_eq!(
                retry_after(&date, &at(server_now - minute)),
                Some(Duration::ZERO)
            );
            // Clamped as the seconds form is.
            let far = at(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799));
            assert_eq!(retry_after(&date, &far), Some(MAX_RETRY_AFTER));
        }
        // The obsolete date formats count for `Date` too.
        assert_eq!(
            retry_after(
                "Sunday, 06-Nov-94 08:49:37 GMT",
                "Sun, 06 Nov 1994 08:50:07 GMT"
            ),
            Some(Duration::from_secs(30))
        );
        // A `Date` that is not a date: this machine's clock, as without one.
        let in_a_minute = at(SystemTime::now() + minute);
        for date in ["yesterday", ""] {
            let seconds = retry_after(date, &in_a_minute).unwrap().as_secs();
            assert!((58..=61).contains(&seconds), "{date:?}: {seconds} s");
        }
    }

    #[test]
    fn absurd_retry_delays_are_capped_so_deadlines_never_overflow() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", u64::MAX.to_string().parse().unwrap());
        let from_header = ApiError::from_parts(StatusCode::SERVICE_UNAVAILABLE, &headers, b"");
        let body =
            br#"{"error":{"code":"rate_limited","message":"Slow down","retry_after_s":1e30}}"#;
        let from_body =
            ApiError::from_parts(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
        for error in [from_header, from_body] {
            let delay = error.retry_after().unwrap();
            assert_eq!(delay, MAX_RETRY_AFTER);
            // What an SDK does with it.
            let _deadline = std::time::Instant::now() + delay;
        }
    }

    /// A body that never ends: it always has a frame ready, made by its function (1 KiB of
    /// data; or, a body with a bug, an empty data frame or trailers, as a stream that keeps
    /// yielding empty chunks).
    struct Endless(fn() -> http_body::Frame<Bytes>);

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(Some(Ok((self.0)())))
        }
    }

    #[tokio::test]
    async fn streaming_decode_stops_reading_at_the_bound() {
        let kilobyte = || http_body::Frame::data(Bytes::from_static(&[b'<'; 1024]));
        let response = Response::builder()
            .status(502)
            .body(Endless(kilobyte))
            .unwrap();
        let error = Decoder::new()
            .max_body_bytes(10_000)
            .max_raw_body_bytes(100)
            .decode_response(response)
            .await;
        assert_eq!(error.code(), "upstream_error");
        assert_eq!(error.raw_body().unwrap().len(), 100);
        assert!(error.is_raw_body_truncated());
    }

    /// A body of endless empty frames never reaches the read bound: the read yields to the
    /// runtime now and then, so the caller's `tokio::time::timeout` fires instead of the
    /// decoder spinning on the thread forever.
    #[test]
    fn a_timeout_around_decoding_a_body_of_endless_empty_frames_fires() {
        let empty_data = || http_body::Frame::data(Bytes::new());
        let trailers = || http_body::Frame::trailers(HeaderMap::new());
        for (frames, frame) in [("data", empty_data as fn() -> _), ("trailers", trailers)] {
            // On a thread of its own: a decoder that spins must fail the test, not hang it.
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let response = Response::builder()
                    .status(502)
                    .body(Endless(frame))
                    .unwrap();
                let decoded = runtime.block_on(async {
                    let decoder = Decoder::new();
                    let decode = decoder.decode_response(response);
                    tokio::time::timeout(Duration::from_millis(100), decode).await
                });
                let _ = sender.send(decoded.is_err());
            });
            let timed_out = receiver
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|error| panic!("{frames} frames: no answer within 10 s: {error}"));
            assert!(timed_out, "{frames} frames: decoded an endless body");
        }
    }

    #[test]
    fn display_is_one_line_whatever_the_server_sent() {
        let body = serde_json::json!({"error": {
            "code": "job_failed\r\nINFO forged",
            "message": "Done\n2025-01-30 INFO admin logged in\u{1b}[2J\u{2028}é",
            "request_id": "req_1\u{7}",
        }});
        let error = decode(500, body.to_string().as_bytes());
        let line = error.to_string();
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{line:?}"
        );
        assert_eq!(
            line,
            r"job_failed\r\nINFO forged: Done\n2025-01-30 INFO admin logged in\u{1b}[2J\u{2028}é (request_id: req_1\u{7})"
        );
        // The accessors keep the text as sent.
        assert!(error.message().starts_with("Done\n"));
        assert_eq!(error.request_id(), Some("req_1\u{7}"));
    }

    /// A body that sends `data`, then fails, as a connection cut before the chunked
    /// encoding's last chunk does.
    struct ThenFails(Option<Bytes>);

    impl Body for ThenFails {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let frame = match self.0.take() {
                Some(data) => Ok(http_body::Frame::data(data)),
                None => Err(std::io::Error::other("connection reset")),
            };
            std::task::Poll::Ready(Some(frame))
        }
    }

    #[tokio::test]
    async fn a_body_that_fails_after_the_whole_envelope_still_decodes() {
        let envelope = br#"{"error":{"code":"job_already_terminal","message":"Already done","request_id":"req_5"}}"#;
        let response = Response::builder()
            .status(409)
            .body(ThenFails(Some(Bytes::from_static(envelope))))
            .unwrap();
        let error = Decoder::new().decode_response(response).await;
        assert_eq!(error.code(), "job_already_terminal");
        assert_eq!(error.message(), "Already done");
        assert_eq!(error.request_id(), Some("req_5"));
        assert!(error.raw_body().is_none());

        // Cut inside the envelope: what arrived is kept, marked as cut.
        let response = Response::builder()
            .status(409)
            .body(ThenFails(Some(Bytes::from_static(&envelope[..40]))))
            .unwrap();
        let error = Decoder::new().decode_response(response).await;
        assert_eq!(error.code(), "conflict");
        assert_eq!(error.raw_body(), Some(&envelope[..40]));
        assert!(error.is_raw_body_truncated());
    }

    proptest! {
        #[test]
        fn any_body_decodes_without_panicking(status in 400u16..600, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let decoder = Decoder::new().max_raw_body_bytes(512);
            let error = decoder.decode(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body);
            prop_assert!(!error.code().is_empty());
            if let Some(raw) = error.raw_body() {
                prop_assert!(raw.len() <= 512);
            }
            let _ = error.to_string();
        }

        #[test]
        fn json_shaped_bodies_decode_without_panicking(
            code in "[a-z_]{0,12}",
            message in any::<String>(),
            retry in any::<f64>(),
            retryable in any::<bool>(),
        ) {
            let body = serde_json::json!({"error": {"code": code, "message": message, "retry_after_s": retry, "retryable": retryable}});
            let error = decode(503, body.to_string().as_bytes());
            if !code.is_empty() {
                prop_assert_eq!(error.code(), code.as_str());
                prop_assert_eq!(error.message(), message.as_str());
                prop_assert_eq!(error.is_retryable(), retryable);
            }
        }
    }
}

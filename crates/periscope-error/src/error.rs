//! The server-side error a handler returns: [`HttpError`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::code::{ErrorCode, codes};
use crate::envelope::{ErrorBody, Violation, bounded};
use crate::render::{self, Format, Ids};
use crate::validation::{MAX_VIOLATIONS, MAX_VIOLATIONS_LEN, VIOLATIONS_OMITTED};

/// A boxed error that can cross threads: what services and bodies fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error a handler returns; rendered as the error envelope with the right status.
///
/// The request id and trace id are filled in when the error is rendered, from the request's
/// [`RequestContext`](periscope_context::RequestContext): a handler never passes them. A
/// cause attached with [`with_source`](HttpError::with_source) (or by `?` on any error) is
/// logged with its chain and never sent to the client.
///
/// ```
/// use periscope_error::{HttpError, codes};
///
/// fn cancel(status: &str) -> Result<(), HttpError> {
///     if status == "completed" {
///         return Err(HttpError::new(codes::CONFLICT, "Cannot cancel job that is already completed")
///             .with_detail("current_status", status));
///     }
///     Ok(())
/// }
///
/// let error = cancel("completed").unwrap_err();
/// assert_eq!(error.status(), http::StatusCode::CONFLICT);
/// let response: http::Response<Vec<u8>> = error.into_http_response();
/// let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
/// assert_eq!(body["error"]["code"], "conflict");
/// assert_eq!(body["error"]["details"]["current_status"], "completed");
/// assert!(body["error"]["request_id"].is_string());
/// ```
///
/// `?` turns any error into a 500 `internal_error` whose chain goes to the log only:
///
/// ```
/// use periscope_error::HttpError;
///
/// fn load() -> Result<String, HttpError> {
///     Ok(std::fs::read_to_string("/no/such/file")?)
/// }
/// assert_eq!(load().unwrap_err().code().name(), "internal_error");
/// ```
///
/// `HttpError` deliberately does not implement `std::error::Error`, so that `?` can convert
/// every error into it.
pub struct HttpError {
    // Boxed so `Result<T, HttpError>` stays one pointer wide on the happy path.
    inner: Box<Inner>,
}

struct Inner {
    code: ErrorCode,
    status: StatusCode,
    message: Cow<'static, str>,
    details: Option<Map<String, Value>>,
    help: Option<Cow<'static, str>>,
    /// Set by [`with_retryable`](HttpError::with_retryable); else the code's, or `true` with a
    /// retry delay (a delay says when to retry).
    retryable: Option<bool>,
    retry_after: Option<Duration>,
    violations: Vec<Violation>,
    source: Option<BoxError>,
}

impl HttpError {
    /// An error of `code` with `message`; status, retryability and help come from the code.
    ///
    /// A message over [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes (1,024) is cut there, on a character
    /// boundary, and ends with `…`: a handler that echoes a huge input into it sends and logs
    /// a bounded error.
    ///
    /// ```
    /// use periscope_error::{HttpError, MAX_MESSAGE_LEN, codes};
    ///
    /// let error = HttpError::new(codes::INVALID_REQUEST, "x".repeat(1 << 20));
    /// assert_eq!(error.message().len(), MAX_MESSAGE_LEN);
    /// assert!(error.message().ends_with('…'));
    /// ```
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Box::new(Inner {
                code,
                status: code.status(),
                message: bounded(message.into()),
                details: None,
                help: code.help().map(Cow::Borrowed),
                retryable: None,
                retry_after: None,
                violations: Vec::new(),
                source: None,
            }),
        }
    }

    /// A 500 `internal_error` caused by `source`: the client sees a generic message, the log
    /// gets the error and its chain.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        HttpError::from(codes::INTERNAL_ERROR).with_source(source)
    }

    /// Replaces the message; one over [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes is cut as in
    /// [`new`](HttpError::new).
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.message = bounded(message.into());
        self
    }

    /// Adds `key` to `details`. A value that cannot be represented as JSON is left out.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        if let Ok(value) = serde_json::to_value(value) {
            self.inner
                .details
                .get_or_insert_with(Map::new)
                .insert(key.into(), value);
        }
        self
    }

    /// Replaces `details`.
    pub fn with_details(mut self, details: Map<String, Value>) -> Self {
        self.inner.details = Some(details);
        self
    }

    /// Replaces the help text (by default the code's); one over [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes is
    /// cut as in [`new`](HttpError::new).
    pub fn with_help(mut self, help: impl Into<Cow<'static, str>>) -> Self {
        self.inner.help = Some(bounded(help.into()));
        self
    }

    /// Sends the error with another status than its code's. Only 4xx and 5xx are taken: any
    /// other status is ignored and the code's stays, so an error never goes out as a success.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        if status.is_client_error() || status.is_server_error() {
            self.inner.status = status;
        }
        self
    }

    /// Overrides the code's retryability for this error (and the `true` a retry delay
    /// implies).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = Some(retryable);
        self
    }

    /// How long the client should wait before retrying: sent as `retry_after_s` and as the
    /// `Retry-After` header (whole seconds, rounded up). The error is then retryable, unless
    /// [`with_retryable(false)`](HttpError::with_retryable) says otherwise (as a bare answer
    /// with a `Retry-After` header is).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.inner.retry_after = Some(delay);
        self
    }

    /// Adds one invalid field. Its `field` and `message` over [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) bytes are
    /// cut as the message is in [`new`](HttpError::new). Past [`MAX_VIOLATIONS`] listed, a
    /// violation is counted in `details.violations_omitted` instead, as
    /// [`Violations`](crate::Violations) does: the body stays bounded however many a
    /// validator reports.
    pub fn with_violation(self, violation: Violation) -> Self {
        self.with_violations([violation])
    }

    /// Adds invalid fields, each bounded as in [`with_violation`](HttpError::with_violation),
    /// at most [`MAX_VIOLATIONS`] listed in all, in at most [`MAX_VIOLATIONS_LEN`] bytes of
    /// JSON, and the rest counted: every envelope periscope renders fits what the client
    /// [`Decoder`](crate::Decoder) reads by default.
    pub fn with_violations(mut self, violations: impl IntoIterator<Item = Violation>) -> Self {
        let mut omitted: u64 = 0;
        let mut listed_len: usize = self.inner.violations.iter().map(json_len).sum();
        for mut violation in violations {
            if self.inner.violations.len() < MAX_VIOLATIONS {
                violation.bound_texts();
                let len = json_len(&violation);
                if listed_len.saturating_add(len) <= MAX_VIOLATIONS_LEN {
                    listed_len += len;
                    self.inner.violations.push(violation);
                    continue;
                }
            }
            omitted += 1;
        }
        if omitted > 0 {
            let before = self
                .details()
                .and_then(|details| details.get(VIOLATIONS_OMITTED))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self = self.with_detail(VIOLATIONS_OMITTED, before.saturating_add(omitted));
        }
        self
    }

    /// The cause, logged with its chain when the error is rendered and never sent.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.inner.code
    }

    /// The HTTP status the error is sent with.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether the client may retry the same request: as set with
    /// [`with_retryable`](HttpError::with_retryable), else the code's, or `true` with a retry
    /// delay.
    pub fn is_retryable(&self) -> bool {
        self.inner
            .retryable
            .unwrap_or_else(|| self.inner.code.is_retryable() || self.inner.retry_after.is_some())
    }

    /// The retry delay, if one was set.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The `details` member, if any.
    pub fn details(&self) -> Option<&Map<String, Value>> {
        self.inner.details.as_ref()
    }

    /// The invalid fields.
    pub fn violations(&self) -> &[Violation] {
        &self.inner.violations
    }

    /// The cause, if one was attached.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// Renders the envelope (`application/json`) with the ids of the current
    /// [`RequestContext`](periscope_context::RequestContext), or a generated request id when
    /// there is none. Logs the error (with its cause) at `error` level for 5xx statuses.
    ///
    /// Works with any body that can be built from [`Bytes`] (axum's `Body`, `Full<Bytes>`,
    /// `Vec<u8>`).
    pub fn into_http_response<B: From<Bytes>>(self) -> Response<B> {
        let ids = Ids::current_or_generated();
        self.render(ids, Format::Json, None)
    }

    /// Like [`into_http_response`](HttpError::into_http_response), for code that holds the
    /// request: ids come from its extensions when present, and `Accept:
    /// application/problem+json` selects RFC 9457 with the request path as `instance`.
    pub fn into_http_response_for<B: From<Bytes>, T>(self, request: &Request<T>) -> Response<B> {
        let format = Format::negotiate(request.headers());
        self.render_for(request, format)
    }

    /// Like [`into_http_response_for`](HttpError::into_http_response_for), for a server that
    /// speaks HTTP only (a probe or admin listener): never rendered as a gRPC answer, whatever
    /// the request's `Content-Type`. A gRPC answer is an HTTP 200 with `grpc-status`: a refused
    /// request would count as a success in access logs and in limits keyed on statuses. The
    /// response carries [`HttpOnly`](periscope_context::grpc::HttpOnly), so an
    /// [`ErrorLayer`](crate::ErrorLayer) outside keeps it HTTP too.
    ///
    /// ```
    /// use periscope_error::{HttpError, codes};
    ///
    /// let request = http::Request::post("/ready")
    ///     .header("content-type", "application/grpc")
    ///     .body(())
    ///     .unwrap();
    /// let error = HttpError::new(codes::METHOD_NOT_ALLOWED, "Probes answer GET and HEAD");
    /// let response: http::Response<Vec<u8>> = error.into_http_only_response_for(&request);
    /// assert_eq!(response.status(), 405);
    /// assert_eq!(response.headers()["content-type"], "application/json");
    /// ```
    pub fn into_http_only_response_for<B: From<Bytes>, T>(
        self,
        request: &Request<T>,
    ) -> Response<B> {
        let format = Format::negotiate_http(request.headers());
        let mut response: Response<B> = self.render_for(request, format);
        // So an error layer outside keeps it HTTP too.
        response
            .extensions_mut()
            .insert(periscope_context::grpc::HttpOnly);
        response
    }

    /// Renders in `format` with the ids of `request`'s context (or the current ones).
    fn render_for<B: From<Bytes>, T>(self, request: &Request<T>, format: Format) -> Response<B> {
        let ids = request
            .extensions()
            .get::<periscope_context::RequestContext>()
            .map(Ids::of)
            .unwrap_or_else(Ids::current_or_generated);
        let mut response: Response<B> = self.render(ids, format, Some(request.uri().path()));
        if !format.is_grpc() {
            render::vary_accept(response.headers_mut());
        }
        response
    }

    fn render<B: From<Bytes>>(
        self,
        ids: Ids,
        format: Format,
        instance: Option<&str>,
    ) -> Response<B> {
        self.log(&ids);
        let status = self.inner.status;
        let retryable_by_default = self.inner.retryable.is_none();
        let body = self.into_body(&ids);
        let mut response: Response<B> = render::response(status, body, format, instance, &ids);
        if let Some(rendered) = response.extensions_mut().get_mut::<render::RenderedError>() {
            rendered.set_retryable_by_default(retryable_by_default);
        }
        response
    }

    /// The envelope members of this error, with the given ids.
    pub(crate) fn into_body(self, ids: &Ids) -> ErrorBody {
        let retryable = self.is_retryable();
        let inner = *self.inner;
        let mut body = ErrorBody::new(inner.code.name(), inner.message, ids.request_id.as_str());
        body.trace_id = ids.trace_id.map(|id| id.to_string());
        body.details = inner.details;
        body.help = inner.help;
        body.retryable = Some(retryable);
        body.retry_after_s = inner.retry_after.map(render::whole_seconds);
        body.docs_url = inner.code.docs_url().map(Cow::Borrowed);
        body.violations = inner.violations;
        body
    }

    fn log(&self, ids: &Ids) {
        let inner = &self.inner;
        let request_id = ids.request_id.as_str();
        let trace_id = ids.trace_id.map(tracing::field::display);
        let error = inner.source.as_deref();
        if inner.status.is_server_error() {
            tracing::error!(
                request_id,
                trace_id,
                code = inner.code.name(),
                status = inner.status.as_u16(),
                error,
                "request failed: {}",
                inner.message
            );
        } else {
            tracing::debug!(
                request_id,
                trace_id,
                code = inner.code.name(),
                status = inner.status.as_u16(),
                error,
                "request rejected: {}",
                inner.message
            );
        }
    }
}

impl From<ErrorCode> for HttpError {
    /// An error of `code` with the code's default message.
    fn from(code: ErrorCode) -> Self {
        HttpError::new(code, code.default_message())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HttpError {
    /// A 500 `internal_error` caused by `error`.
    fn from(error: E) -> Self {
        HttpError::internal(error)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.inner.message)
    }
}

impl fmt::Debug for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("HttpError")
            .field("code", &inner.code.name())
            .field("status", &inner.status)
            .field("message", &inner.message)
            .field("details", &inner.details)
            .field("retryable", &self.is_retryable())
            .field("retry_after", &inner.retry_after)
            .field("violations", &inner.violations)
            .field("source", &inner.source)
            .finish()
    }
}

/// The bytes `violation` takes in an envelope's list: its JSON and a comma.
fn json_len(violation: &Violation) -> usize {
    serde_json::to_vec(violation).map_or(usize::MAX, |json| json.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_context::RequestContext;

    fn json(response: Response<Vec<u8>>) -> Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    fn json_status(error: HttpError) -> StatusCode {
        error.into_http_response::<Vec<u8>>().status()
    }

    #[test]
    fn a_status_outside_4xx_and_5xx_is_ignored() {
        let error = HttpError::new(codes::CONFLICT, "taken").with_status(StatusCode::OK);
        assert_eq!(json_status(error), StatusCode::CONFLICT);
        let error = HttpError::new(codes::CONFLICT, "taken").with_status(StatusCode::GONE);
        assert_eq!(json_status(error), StatusCode::GONE);
    }

    #[test]
    fn an_error_lists_at_most_max_violations_and_counts_the_rest() {
        let violation = |i: usize| Violation::new(format!("items[{i}]"), "invalid", "bad item");
        let error = HttpError::new(codes::INVALID_REQUEST, "bad items")
            .with_violations((0..1_000).map(violation))
            .with_violation(violation(1_000));
        assert_eq!(error.violations().len(), crate::MAX_VIOLATIONS);
        let body = json(error.into_http_response());
        let listed = body["error"]["violations"].as_array().unwrap();
        assert_eq!(listed.len(), crate::MAX_VIOLATIONS);
        assert_eq!(listed[0]["field"], "items[0]");
        assert_eq!(body["error"]["details"]["violations_omitted"], 901);

        // A list of `Violations`, already bounded, adds its own count to the same detail.
        let mut violations = crate::Violations::new();
        for i in 0..150 {
            violations.add(format!("f{i}"), "required", "missing");
        }
        let error = violations
            .into_result()
            .unwrap_err()
            .with_violation(violation(0));
        assert_eq!(error.violations().len(), crate::MAX_VIOLATIONS);
        assert_eq!(error.details().unwrap()["violations_omitted"], 51);
    }

    /// A hundred violations, each echoing a long rejected value: the envelope keeps as many as
    /// fit [`MAX_VIOLATIONS_LEN`] and counts the rest, so the client's default decoder reads
    /// it whole (past its 64 KiB it would read no envelope at all).
    #[test]
    fn long_violations_are_listed_within_a_byte_bound_the_decoder_reads() {
        let mut violations = crate::Violations::new();
        for i in 0..120 {
            let value = "x".repeat(700);
            violations.add(
                format!("items[{i}].url"),
                "format",
                format!("{value} is not a URL"),
            );
        }
        let response: Response<Vec<u8>> =
            violations.into_result().unwrap_err().into_http_response();
        assert!(
            response.body().len() <= crate::DEFAULT_MAX_BODY_BYTES,
            "{}",
            response.body().len()
        );
        let listed = json(response.clone())["error"]["violations"]
            .as_array()
            .unwrap()
            .len();
        assert!((30..MAX_VIOLATIONS).contains(&listed), "{listed}");
        let decoded = crate::ApiError::from_response(&response);
        assert_eq!(decoded.violations().len(), listed);
        assert_eq!(
            decoded.message(),
            "120 fields are invalid: items[0].url, items[1].url, items[2].url, items[3].url, items[4].url and 115 more"
        );
        assert_eq!(
            decoded.details().unwrap()["violations_omitted"],
            120 - listed as u64
        );
    }

    #[test]
    fn ids_come_from_the_current_context() {
        let ctx = RequestContext::new_root();
        let response = ctx.in_scope(|| HttpError::from(codes::NOT_FOUND).into_http_response());
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-request-id"], ctx.request_id.as_str());
        let body = json(response);
        assert_eq!(body["error"]["request_id"], ctx.request_id.as_str());
        assert_eq!(body["error"]["trace_id"], ctx.trace_id.to_string());
    }

    #[test]
    fn without_context_a_request_id_is_generated_and_echoed() {
        let response: Response<Vec<u8>> = HttpError::from(codes::CONFLICT).into_http_response();
        let header = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = json(response);
        assert!(header.starts_with("req_"));
        assert_eq!(body["error"]["request_id"], header.as_str());
        assert!(body["error"].get("trace_id").is_none());
    }

    #[test]
    fn request_extensions_and_accept_are_honoured() {
        let ctx = RequestContext::new_root();
        let mut request = Request::get("/jobs/7?secret=1")
            .header("accept", "application/problem+json")
            .body(())
            .unwrap();
        request.extensions_mut().insert(ctx.clone());
        let response: Response<Vec<u8>> =
            HttpError::from(codes::NOT_FOUND).into_http_response_for(&request);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        // The format depends on `Accept`: caches must know.
        assert_eq!(response.headers()["vary"], "accept");
        let body = json(response);
        assert_eq!(body["instance"], "/jobs/7");
        assert_eq!(body["request_id"], ctx.request_id.as_str());
    }

    #[test]
    fn the_cause_is_never_rendered() {
        let error = HttpError::internal(std::io::Error::other("password=hunter2"));
        assert!(error.source().is_some());
        let response: Response<Vec<u8>> = error.into_http_response();
        let text = String::from_utf8(response.into_body()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("\"internal_error\""));
    }

    #[test]
    fn builder_members_are_rendered() {
        let response: Response<Vec<u8>> = HttpError::from(codes::RATE_LIMITED)
            .with_retry_after(Duration::from_millis(2500))
            .with_detail("limit", 100)
            .with_help("Slow down")
            .into_http_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
        let body = json(response);
        assert_eq!(body["error"]["retry_after_s"], 3);
        assert_eq!(body["error"]["retryable"], true);
        assert_eq!(body["error"]["details"]["limit"], 100);
        assert_eq!(body["error"]["help"], "Slow down");
    }

    #[test]
    fn result_with_http_error_stays_small() {
        assert_eq!(
            std::mem::size_of::<HttpError>(),
            std::mem::size_of::<usize>()
        );
    }
}

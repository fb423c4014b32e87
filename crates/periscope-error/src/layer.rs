//! The catch-all layer: every failure below it leaves as an error envelope.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use periscope_context::grpc::{HeadOutcome, HttpOnly, head_outcome};
use periscope_context::{
    AnsweredLater, ExtractOptions, RequestContext, WithContext, extract, headers::X_REQUEST_ID,
    order,
};
use pin_project::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{GrpcEnding, ResponseBody};
use crate::code::{ErrorCode, codes};
use crate::error::{BoxError, HttpError};
use crate::panic::{self, CaughtPanic, LogPanic};
use crate::render::{self, Format, Ids, Negotiation, RenderedError, RequestHeaders};

/// The longest plain-text 4xx body read to become the envelope's message, in bytes.
const MAX_TEXT_BODY: usize = 1024;
/// The longest JSON 5xx body read to check it is an envelope, in bytes; a longer one is
/// replaced.
const MAX_JSON_BODY: usize = 64 * 1024;
/// The longest text of a 5xx body logged: a plain-text one is read this far, and of a JSON one
/// the layer gave up reading (too long, or not ended in time) this much is logged. Its first
/// words say what went wrong, and the line stays short.
const MAX_LOGGED_BODY_START: usize = 4 * 1024;

/// How long a body the layer reads may take without a [`ErrorLayer::timeout`]: a handful of
/// bytes that have not come in this long are not coming.
pub const BODY_READ_LIMIT: Duration = Duration::from_secs(5);

/// A response extension that makes [`ErrorLayer`] pass an error response through untouched:
/// for a body that is deliberate although it is not an envelope, such as a readiness report's
/// 503 or a protocol's own error format.
///
/// Without it, a 5xx with a JSON body that is not an envelope is replaced by one (the body
/// goes to the log), as internals in a handler's own JSON must not reach the client.
///
/// ```
/// use http::{Response, StatusCode};
/// use periscope_error::PassThrough;
///
/// let mut response = Response::new(r#"{"status":"fail"}"#.to_owned());
/// *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
/// response.extensions_mut().insert(PassThrough);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassThrough;
/// What axum's `Multipart` answers (a bare 500) when reading the request body failed.
const MULTIPART_READ_FAILED: &str = "failed to read stream";
/// The longest request path quoted in a `route_not_found` or `method_not_allowed` message.
const MAX_PATH_IN_MESSAGE: usize = 256;
/// The longest method quoted there: HTTP sets no limit on a method's length.
const MAX_METHOD_IN_MESSAGE: usize = 32;

/// Turns every failure of the inner service into an error envelope: a panic becomes a 500
/// `internal_error` (message and location go to the log only), a timeout a 504 `timeout` (a
/// 408 `timeout` when the handler was waiting for the client's request body, `axum` feature), the
/// router's 404 and 405 `route_not_found` and `method_not_allowed`, a 413 `payload_too_large`,
/// a body the framework could not parse a 400 `invalid_request` (422 `validation_error` for
/// JSON of the wrong shape; 400 `request_body_incomplete` when the client stopped sending an
/// axum body, and 408 `timeout` when it sent one too slowly for tower-http's
/// `RequestBodyTimeoutLayer`, inside or outside this layer, `axum` feature), and any other
/// bare 4xx/5xx the code of its status. An interim
/// (1xx) status answered as the final one, which no server can send (hyper would send a bare
/// 500 without the request id), becomes a 500 `internal_error` too, and so does a `101
/// Switching Protocols` to an HTTP/2 request, which has no upgrade (hyper would reset the
/// stream); a 101 to an HTTP/1.1 request passes, as the upgrade it is. A 4xx with
/// a JSON body and a response marked [`PassThrough`] pass through untouched. An envelope
/// rendered by [`HttpError`] passes through too, but is re-rendered to honour
/// `Accept: application/problem+json`, or with this request's ids when it was rendered outside
/// the request's context. A 5xx whose JSON body is an envelope not rendered here (an
/// upstream's, or one written by hand) keeps its facts but is rendered again with this
/// request's `request_id` and `trace_id`; a 5xx whose JSON body is not an envelope is replaced
/// (the body goes to the log). The responses whose format depends on `Accept` carry
/// `Vary: Accept`.
///
/// A panic while a passed-through body streams (a `Body::from_stream` whose stream panics
/// after the status went out) is caught too and logged the same way, as `handler panicked`;
/// the status cannot change any more, so the body ends with an error instead and the server
/// aborts the response: the client sees it truncated, never complete. A panic in the `Drop` of
/// a body the layer replaces is caught like one while it reads it; one in the `Drop` of a body
/// passed through, or in a body's `size_hint` or `is_end_stream`, is not.
///
/// The request id and trace id come from the [`RequestContext`] in the request's extensions
/// (put there by periscope-trace's server layer) or the current one. Used alone, the layer
/// extracts the context from the request headers itself, makes it current for the handler,
/// and echoes `x-request-id` on every response.
///
/// Place it innermost (closest to the handlers), so that the access log and metrics layers
/// above see and count the envelope. A periscope access log, metrics or correlation layer found
/// inside it is warned about once per process (`docs/ordering.md`). The timeout needs a Tokio
/// runtime with its time driver.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use periscope_error::ErrorLayer;
///
/// async fn boom() -> &'static str {
///     panic!("this message never reaches the client")
/// }
///
/// let app: Router = Router::new()
///     .route("/boom", get(boom))
///     .layer(ErrorLayer::new().timeout(Duration::from_secs(30)));
/// ```
///
/// With plain Tower and any body type:
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use periscope_error::ErrorLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = ServiceBuilder::new().layer(ErrorLayer::new()).service(service_fn(
///     |_request: Request<Full<Bytes>>| async {
///         Ok::<_, Infallible>(Response::builder().status(404).body(Full::new(Bytes::new())).unwrap())
///     },
/// ));
/// let response = service.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(response.status(), StatusCode::NOT_FOUND);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ErrorLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    timeout: Option<Duration>,
    /// Paths `timeout` does not apply to ([`ErrorLayer::untimed_paths`]).
    untimed: Vec<Cow<'static, str>>,
    extract: ExtractOptions,
}

impl ErrorLayer {
    /// A layer without a timeout. Installs, once per process, the panic hook that records the
    /// location of panics it catches (other panics still reach the previous hook).
    pub fn new() -> Self {
        panic::install_hook();
        Self {
            config: Arc::new(Config {
                timeout: None,
                untimed: Vec::new(),
                extract: ExtractOptions::default(),
            }),
        }
    }

    /// Answers 504 `timeout` when the inner service has not responded within `timeout`, and
    /// drops (cancels) its future.
    ///
    /// With the `axum` feature, when the handler was still waiting for the request body's
    /// next bytes at that moment (the client stalled its upload), the answer is the client's
    /// 408 `timeout` instead, as tower-http's `RequestBodyTimeoutLayer` would get: retryable,
    /// `details.received_bytes` and `expected_bytes`, `Connection: close` over HTTP/1.1,
    /// logged at info. Not for a gRPC call, whose deadline stays `DEADLINE_EXCEEDED`.
    ///
    /// A gRPC call (a gRPC `content-type`) with a valid `grpc-timeout` header (1 to 8 ASCII
    /// digits and a unit, `H`, `M`, `S`, `m`, `u` or `n`, as the gRPC over HTTP/2 spec has it)
    /// shorter than `timeout`, or any, without a `timeout`, gets the client's deadline instead:
    /// answered `DEADLINE_EXCEEDED` with a message naming it, as tonic's own server does. Any
    /// other value is ignored; the header never lengthens `timeout`.
    ///
    /// The deadline also bounds the reading of an error body the layer replaces (a short text
    /// body, a JSON 5xx), which is given up after [`BODY_READ_LIMIT`] or at the deadline,
    /// whichever comes first.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).timeout = Some(timeout);
        self
    }

    /// Paths the [`timeout`](Self::timeout) does not apply to, compared whole with the
    /// request's path: health probes, which answer within their checks' own timeouts (a
    /// `degraded` readiness, a check's error) where a request timeout shorter than those
    /// would answer 504 instead. A gRPC client's `grpc-timeout` still applies.
    ///
    /// ```
    /// use std::time::Duration;
    /// use periscope_error::ErrorLayer;
    ///
    /// let layer = ErrorLayer::new()
    ///     .timeout(Duration::from_secs(1))
    ///     .untimed_paths(["/health", "/ready", "/startup"]);
    /// # let _ = layer;
    /// ```
    pub fn untimed_paths<P: Into<Cow<'static, str>>>(
        mut self,
        paths: impl IntoIterator<Item = P>,
    ) -> Self {
        Arc::make_mut(&mut self.config).untimed = paths.into_iter().map(Into::into).collect();
        self
    }

    /// How a context is read from the headers when no periscope-trace layer provided one
    /// (tenant fields, sampling of new traces).
    pub fn extract_options(mut self, options: ExtractOptions) -> Self {
        Arc::make_mut(&mut self.config).extract = options;
        self
    }
}

impl Default for ErrorLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ErrorLayer {
    type Service = ErrorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorService {
            inner,
            config: self.config.clone(),
            not_ready: None,
        }
    }
}

/// The service of [`ErrorLayer`]. It never fails: every error of the inner service becomes a
/// response.
#[derive(Debug)]
pub struct ErrorService<S> {
    inner: S,
    config: Arc<Config>,
    /// A failure of the inner `poll_ready`, answered on the next call.
    not_ready: Option<Failure>,
}

impl<S: Clone> Clone for ErrorService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            not_ready: None,
        }
    }
}

/// What went wrong below the layer, besides a bare error response.
#[derive(Debug)]
enum Failure {
    Panic(CaughtPanic),
    Error(BoxError),
    TimedOut(Limit),
    /// The timeout fired while the service waited for the client's request body: the bytes
    /// received, the declared length, and the timeout.
    #[cfg(feature = "axum")]
    BodyStalled {
        received: u64,
        expected: Option<u64>,
        after: Duration,
    },
}

/// How long the inner service has to answer, and whose limit that is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limit {
    after: Duration,
    /// The client's `grpc-timeout`, shorter than the layer's own timeout (or without one).
    client: bool,
}

impl Limit {
    /// The shorter of the layer's `timeout` and, for a gRPC call, the client's `grpc-timeout`.
    fn of(timeout: Option<Duration>, grpc: bool, headers: &HeaderMap) -> Option<Self> {
        let own = timeout.map(|after| Limit {
            after,
            client: false,
        });
        let Some(deadline) = grpc.then(|| grpc_timeout(headers)).flatten() else {
            return own;
        };
        match own {
            Some(own) if own.after <= deadline => Some(own),
            _ => Some(Limit {
                after: deadline,
                client: true,
            }),
        }
    }
}

/// The longest `grpc-timeout` value: 8 digits, as the gRPC over HTTP/2 spec allows.
const MAX_GRPC_TIMEOUT_DIGITS: usize = 8;

/// The client's deadline in `grpc-timeout`: `TimeoutValue TimeoutUnit`, 1 to 8 ASCII digits,
/// then `H`, `M`, `S`, `m`, `u` or `n`; `None` for a missing header or any other value (a
/// sign, spaces, more digits, another unit), which the spec leaves to be ignored.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty()
        || digits.len() > MAX_GRPC_TIMEOUT_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // At most 99,999,999: no overflow below, even in hours (about 3.6e11 seconds).
    let value = digits
        .iter()
        .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// What the layer needs to know about the request once it has been handed on.
#[derive(Debug)]
struct RequestFacts {
    method: Method,
    uri: Uri,
    version: Version,
    format: Negotiation,
    has_credentials: bool,
    /// An HTTP/1.1 request naming a protocol to switch to: a 101 may answer it.
    upgradable: bool,
    route_matched: bool,
}

impl RequestFacts {
    fn of<B>(request: &Request<B>) -> Self {
        let headers = RequestHeaders::scan(request.headers());
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            format: headers.negotiation(),
            has_credentials: headers.authorization,
            upgradable: headers.upgrade && request.version() == Version::HTTP_11,
            route_matched: route_matched(request),
        }
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    /// The request target as a message quotes it: the path, or for a `CONNECT` (whose target
    /// is an authority, `example.com:443`, and whose path is empty) the authority.
    fn target(&self) -> &str {
        match self.uri.path() {
            "" => self
                .uri
                .authority()
                .map_or("", |authority| authority.as_str()),
            path => path,
        }
    }
}

/// Whether the router matched a route, so a bare 404 is the handler's, not the router's.
#[cfg(feature = "axum")]
fn route_matched<B>(request: &Request<B>) -> bool {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some()
}

#[cfg(not(feature = "axum"))]
fn route_matched<B>(_request: &Request<B>) -> bool {
    false
}

/// The ids to render with, the context to make current if nobody did, and whether the layer
/// created the context itself (then it also echoes `x-request-id`).
fn resolve_context<B>(
    request: &mut Request<B>,
    options: &ExtractOptions,
) -> (Ids, Option<Arc<RequestContext>>, bool) {
    if let Some(ctx) = request.extensions().get::<RequestContext>() {
        let scope = (!RequestContext::has_current()).then(|| Arc::new(ctx.clone()));
        return (Ids::of(ctx), scope, false);
    }
    if let Some(ctx) = RequestContext::current() {
        return (Ids::of(&ctx), None, false);
    }
    let ctx = extract(request.headers(), options).context;
    request.extensions_mut().insert(ctx.clone());
    // No correlation layer outside: a correlation layer inside (out of the documented order)
    // takes this context's ids instead of making others.
    request
        .extensions_mut()
        .insert(order::ContextFromErrorLayer);
    (Ids::of(&ctx), Some(Arc::new(ctx)), true)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ErrorService<S>
where
    // `'static`: an axum body is recognised (by its type) to watch it for a cut.
    ReqBody: 'static,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match panic::catch(|| self.inner.poll_ready(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            Ok(Poll::Ready(Err(error))) => {
                self.not_ready = Some(Failure::Error(error.into()));
                Poll::Ready(Ok(()))
            }
            Err(caught) => {
                self.not_ready = Some(Failure::Panic(caught));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let facts = RequestFacts::of(&request);
        let config = &*self.config;
        let path = request.uri().path();
        let timeout = config
            .timeout
            .filter(|_| !config.untimed.iter().any(|untimed| untimed == path));
        let limit = Limit::of(timeout, facts.format.is_grpc(), request.headers());
        let (ids, scope, echo_request_id) = resolve_context(&mut request, &self.config.extract);
        #[cfg(feature = "axum")]
        let body = crate::request_body::watch(&mut request);
        let handled = Handled {
            facts,
            ids,
            echo_request_id,
            #[cfg(feature = "axum")]
            body,
        };
        if let Some(failure) = self.not_ready.take() {
            let response = handled.failure(failure);
            return ResponseFuture::done(handled, response);
        }
        // With no layer above that made the request's context current, it is current while
        // the inner service's `call` runs too: what that `call` logs or renders (an early
        // rejection) carries the ids the client gets.
        let inner = &mut self.inner;
        let called = panic::catch(|| match scope {
            Some(ctx) => Scoped::Entered(WithContext::new_in_scope(ctx, || inner.call(request))),
            None => Scoped::Current(inner.call(request)),
        });
        match called {
            Ok(future) => {
                ResponseFuture {
                    state: State::Running { future },
                    // `tokio::time::sleep` takes any duration (a deadline past its clock's
                    // range waits forever), so a client's 99,999,999 hours is harmless.
                    sleep: limit.and_then(|limit| deadline(limit.after)),
                    timeout: limit,
                    handled,
                }
            }
            Err(caught) => {
                let response = handled.failure(Failure::Panic(caught));
                ResponseFuture::done(handled, response)
            }
        }
    }
}

/// The inner future, made to run with the request's context as the current one when nobody
/// above did that.
#[pin_project(project = ScopedProj)]
enum Scoped<F> {
    Current(#[pin] F),
    Entered(#[pin] WithContext<F>),
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            ScopedProj::Current(future) => future.poll(cx),
            ScopedProj::Entered(future) => future.poll(cx),
        }
    }
}

/// Response future of [`ErrorService`].
#[pin_project]
pub struct ResponseFuture<F, B> {
    #[pin]
    state: State<F, B>,
    /// The deadline, while the response is not known yet. Boxed: a `Sleep` is over 100 bytes,
    /// and this future is a part of every request's future, which axum boxes per request (a
    /// box past 1,032 bytes misses the allocator's per-thread cache); only requests with a
    /// deadline pay the allocation.
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Option<Limit>,
    handled: Handled,
}

#[pin_project(project = StateProj)]
enum State<F, B> {
    /// The inner service is working.
    Running {
        #[pin]
        future: Scoped<F>,
    },
    /// A bare plain-text error response is being read, a 4xx to become the envelope's message
    /// and a 5xx to be logged, or a JSON 5xx to check whether it is an envelope.
    Reading {
        #[pin]
        body: B,
        parts: Option<http::response::Parts>,
        text: Vec<u8>,
        code: ErrorCode,
        json: bool,
        /// How many bytes are read at most.
        limit: usize,
        /// The body's length, when it was announced: logged when the read is given up.
        length: Option<u64>,
    },
    /// The response is known.
    Done {
        response: Option<Response<ResponseBody<B>>>,
    },
}

impl<F, B> ResponseFuture<F, B> {
    fn done(handled: Handled, response: Response<ResponseBody<B>>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
            sleep: None,
            timeout: None,
            handled,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Running { future } => {
                    let failure = match panic::catch(|| future.poll(cx)) {
                        Ok(Poll::Ready(Ok(response))) => match this.handled.inspect(response) {
                            Inspected::Done(response) => return Poll::Ready(Ok(response)),
                            Inspected::Read {
                                parts,
                                body,
                                code,
                                json,
                                limit,
                            } => {
                                // A few bytes that have not come within the read limit
                                // are not coming, however long the deadline would still
                                // wait: the envelope goes out at the sooner of the two.
                                match this.sleep.as_mut() {
                                    None => *this.sleep = read_deadline(),
                                    Some(sleep) => {
                                        let limit = tokio::time::Instant::now() + BODY_READ_LIMIT;
                                        if sleep.deadline() > limit {
                                            sleep.as_mut().reset(limit);
                                        }
                                    }
                                }
                                let length = body_length(&body, &parts.headers);
                                this.state.set(State::Reading {
                                    body,
                                    parts: Some(parts),
                                    text: Vec::new(),
                                    code,
                                    json,
                                    limit,
                                    length,
                                });
                                continue;
                            }
                            Inspected::Panicked(caught) => Failure::Panic(caught),
                        },
                        Ok(Poll::Ready(Err(error))) => {
                            return Poll::Ready(Ok(this
                                .handled
                                .failure(Failure::Error(error.into()))));
                        }
                        Ok(Poll::Pending) => match *this.timeout {
                            Some(timeout) if expired(this.sleep, cx) => {
                                this.handled.timed_out(timeout)
                            }
                            _ => return Poll::Pending,
                        },
                        Err(caught) => Failure::Panic(caught),
                    };
                    // Drop the failed future now, in case its destructor panics too. A
                    // periscope access log or metrics layer dropped here is inside this one,
                    // out of the documented order: it warns (docs/ordering.md).
                    panic::drop_caught(&this.handled.ids, || {
                        order::error_layer_dropping(|| {
                            this.state.set(State::Done { response: None })
                        })
                    });
                    return Poll::Ready(Ok(this.handled.failure(failure)));
                }
                StateProj::Reading {
                    body,
                    parts,
                    text,
                    code,
                    json,
                    limit,
                    length,
                } => {
                    // Past the deadline, the envelope goes out without the body's text.
                    let limit = *limit;
                    // The body is the service's code too: a panic while it is read is the
                    // handler's panic, answered like one instead of unwinding out of the layer.
                    let complete = match panic::catch(|| read_text(body, text, limit, cx)) {
                        Ok(Poll::Ready(complete)) => complete,
                        Ok(Poll::Pending) if expired(this.sleep, cx) => false,
                        Ok(Poll::Pending) => return Poll::Pending,
                        Err(caught) => {
                            // Drop the body now, in case its destructor panics too.
                            panic::drop_caught(&this.handled.ids, || {
                                this.state.set(State::Done { response: None })
                            });
                            return Poll::Ready(Ok(this.handled.failure(Failure::Panic(caught))));
                        }
                    };
                    let Some(parts) = parts.take() else {
                        panic!("periscope_error::ResponseFuture polled after completion");
                    };
                    let (code, json, length) = (*code, *json, *length);
                    let text = std::mem::take(text);
                    // Drop the body here, where a panic in its destructor is caught and answered
                    // like one while it is read, not later with this future, by the server.
                    if let Err(caught) =
                        panic::catch(|| this.state.set(State::Done { response: None }))
                    {
                        return Poll::Ready(Ok(this.handled.failure(Failure::Panic(caught))));
                    }
                    if json
                        && complete
                        && let Some(error) = parse_envelope(&text)
                    {
                        // Another service's (or a hand-written) envelope: its facts kept, with
                        // this request's ids and in the format this client asked for.
                        return Poll::Ready(Ok(this.handled.readopt(parts, error)));
                    }
                    let read = if complete {
                        BodyText::Whole(String::from_utf8_lossy(&text).trim().to_owned())
                    } else if parts.status.is_server_error() {
                        // Given up: what the service said is in its first words.
                        BodyText::Start(body_start(&text), length)
                    } else {
                        // A 4xx's cut text is no message, and 4xx bodies are not logged.
                        BodyText::None
                    };
                    return Poll::Ready(Ok(this.handled.bare(parts, code, read)));
                }
                StateProj::Done { response } => match response.take() {
                    Some(response) => return Poll::Ready(Ok(response)),
                    None => panic!("periscope_error::ResponseFuture polled after completion"),
                },
            }
        }
    }
}

/// Why a final answer with the interim (1xx) `status` cannot reach the client, if it cannot:
/// an interim status only comes before the final one (hyper sends a bare 500 instead, and
/// closes the connection), HTTP/2 has no 101 (RFC 9113, section 8.6: hyper resets the
/// stream), and HTTP/1.0 no 1xx at all (RFC 9110, section 15.2). A 101 is an upgrade, and
/// goes out, only to an HTTP/1.1 request that named a protocol in `Upgrade` (`upgradable`):
/// to any other, hyper writes it and switches to nothing, leaving the client without an answer.
#[cold]
fn unsendable(status: StatusCode, version: Version, upgradable: bool) -> Option<BoxError> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Some(
            format!(
                "the service answered {status} as its final answer: an interim status can only \
                 come before one"
            )
            .into(),
        );
    }
    if upgradable {
        return None;
    }
    if version == Version::HTTP_11 {
        return Some(
            format!(
                "the service answered {status} to a request that asked for no upgrade (it has \
                 no `Upgrade` header)"
            )
            .into(),
        );
    }
    Some(
        format!(
            "the service answered {status} to an {version:?} request, which has no upgrade \
             (WebSocket over HTTP/2 is an extended CONNECT answered 200)"
        )
        .into(),
    )
}

fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Tells that the service put a success status over a rendered error, which goes out with its
/// own status instead.
#[cold]
fn overridden_status(status: StatusCode, rendered: StatusCode) {
    tracing::warn!(
        status = status.as_u16(),
        error_status = rendered.as_u16(),
        "the service answered an error with a success status: the error's own status is sent"
    );
}

/// Drops a body the layer replaces unread. Its destructor is the service's code too: a panic
/// there is answered like one while the body is read, instead of unwinding out of the layer
/// and costing the client its answer.
fn discard<B>(body: B) -> Result<(), CaughtPanic> {
    panic::catch(move || drop(body))
}

/// The deadline for reading a body without the layer's own: [`BODY_READ_LIMIT`] from now, on
/// a Tokio runtime (elsewhere none, as without a timeout).
fn read_deadline() -> Option<Pin<Box<Sleep>>> {
    tokio::runtime::Handle::try_current().ok()?;
    deadline(BODY_READ_LIMIT)
}

/// A sleep of `after`, or `None` off a Tokio runtime or on one built without its time driver
/// (`enable_io` alone is enough for `axum::serve`), where `tokio::time::sleep` panics: a
/// client's `grpc-timeout`, or an error body to read, must not panic the layer whose job is
/// to stop panics. Warned once: a deadline was wanted and no timer can keep it.
fn deadline(after: Duration) -> Option<Pin<Box<Sleep>>> {
    thread_local! {
        /// This thread's runtime was found without timers: later requests here go without a
        /// deadline at once, not through a panic each. A worker thread belongs to one runtime;
        /// a thread that blocks on a timerless runtime and later on another keeps the first
        /// answer (rare, and the warning has said deadlines do not apply).
        static NO_TIMERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if NO_TIMERS.with(std::cell::Cell::get) {
        return None;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        no_timers();
        return None;
    }
    let timers = panic::catch(|| tokio::time::sleep(after)).ok();
    if timers.is_none() {
        NO_TIMERS.with(|no_timers| no_timers.set(true));
        no_timers();
    }
    timers.map(Box::pin)
}

#[cold]
fn no_timers() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "ErrorLayer: no Tokio timer here (outside a Tokio runtime, or on one built without \
             `enable_time`): its timeout, a gRPC client's `grpc-timeout` and the limit on \
             reading an error body do not apply; build the runtime with `enable_all()`"
        );
    });
}

/// Whether the deadline, if any, has passed.
fn expired(sleep: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    sleep
        .as_mut()
        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
}

/// The length a body announces: its exact size hint, else its `Content-Length`.
fn body_length<B: Body>(body: &B, headers: &HeaderMap) -> Option<u64> {
    body.size_hint().exact().or_else(|| {
        headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// What the layer read of a body it replaces.
enum BodyText {
    /// Nothing: not read, or a 4xx body given up.
    None,
    /// The whole body, trimmed.
    Whole(String),
    /// The start of a 5xx body the layer gave up reading (longer than it reads, failed, or not
    /// ended in time), and the body's length when it was announced: for the log only.
    Start(String, Option<u64>),
}

/// The text logged of a 5xx body the layer gave up reading: its first
/// [`MAX_LOGGED_BODY_START`] bytes, cut on a character boundary, bytes that are not UTF-8
/// replaced (U+FFFD).
fn body_start(bytes: &[u8]) -> String {
    let start = without_split_char(&bytes[..bytes.len().min(MAX_LOGGED_BODY_START)]);
    let text = String::from_utf8_lossy(start);
    // A replaced byte takes three: cut again, on a character boundary.
    periscope_context::text::prefix(&text, MAX_LOGGED_BODY_START).to_owned()
}

/// `bytes` without the start of a character that the read bound or the body's end split: it is
/// left out whole, as a cut on a `str` does, instead of showing as U+FFFD.
fn without_split_char(bytes: &[u8]) -> &[u8] {
    // A UTF-8 character is at most 4 bytes: a split one starts in the last 3.
    for at in bytes.len().saturating_sub(3)..bytes.len() {
        if let Err(error) = std::str::from_utf8(&bytes[at..])
            && error.valid_up_to() == 0
            && error.error_len().is_none()
        {
            return &bytes[..at];
        }
    }
    bytes
}

/// The most frames of a body read in one poll. A body that always has a frame ready but
/// never reaches the bound (empty chunks, trailers, without end) would otherwise keep the
/// thread forever: past this many, the read yields (and is polled again at once), so the
/// deadline is checked and the thread's other tasks run.
pub(crate) const MAX_FRAMES_PER_POLL: usize = 64;

/// Reads a body up to `limit` bytes; `false` when it is longer (`text` then holds its first
/// `limit` bytes) or fails.
fn read_text<B: Body<Data = Bytes>>(
    mut body: Pin<&mut B>,
    text: &mut Vec<u8>,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    for _ in 0..MAX_FRAMES_PER_POLL {
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if text.len() + data.len() > limit {
                        text.extend_from_slice(&data[..limit - text.len()]);
                        return Poll::Ready(false);
                    }
                    text.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return Poll::Ready(false),
            None => return Poll::Ready(true),
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

enum Inspected<B> {
    Done(Response<ResponseBody<B>>),
    Read {
        parts: http::response::Parts,
        body: B,
        code: ErrorCode,
        /// A JSON 5xx, kept when it is an envelope.
        json: bool,
        /// How many bytes to read at most.
        limit: usize,
    },
    /// The body to replace panicked when it was dropped.
    Panicked(CaughtPanic),
}

/// A request being handled: what the layer renders its responses with.
struct Handled {
    facts: RequestFacts,
    ids: Ids,
    echo_request_id: bool,
    /// The request body's watch: whether the client stopped sending it.
    #[cfg(feature = "axum")]
    body: Option<Arc<crate::request_body::BodyWatch>>,
}

impl Handled {
    /// The bytes received of a request body the client stopped sending, if it did, and the
    /// length its `Content-Length` declared.
    fn body_cut_after(&self) -> Option<(u64, Option<u64>)> {
        #[cfg(feature = "axum")]
        return self.body.as_ref().and_then(|watch| watch.cut_after());
        #[cfg(not(feature = "axum"))]
        None
    }

    /// The bytes received of a request body whose client stalled past a body timeout, if it
    /// did, and the declared length; `read_failed`: the rejection says a body error ended the
    /// read.
    fn body_stalled_after(&self, read_failed: bool) -> Option<(u64, Option<u64>)> {
        #[cfg(feature = "axum")]
        return (self.body.as_ref()).and_then(|watch| watch.stalled_after(read_failed));
        #[cfg(not(feature = "axum"))]
        {
            let _ = read_failed;
            None
        }
    }

    /// What the request timeout `limit` means, asked while the service's future (and the body
    /// it reads) is still there: a 504 of the service's, unless the service was waiting for
    /// the client's request body (axum's, watched), which is the client's pace, answered as a
    /// body timeout would be. Not for gRPC, whose client streams at the pace it likes within
    /// the deadline it set.
    fn timed_out(&self, limit: Limit) -> Failure {
        #[cfg(feature = "axum")]
        if !self.facts.format.is_grpc()
            && let Some(watch) = &self.body
            && let Some((received, expected)) = crate::request_body::BodyWatch::awaited_after(watch)
        {
            return Failure::BodyStalled {
                received,
                expected,
                after: limit.after,
            };
        }
        Failure::TimedOut(limit)
    }

    /// Decides what to do with the inner service's response.
    fn inspect<B: Body>(&self, response: Response<B>) -> Inspected<B> {
        let status = response.status();
        let (mut parts, body) = response.into_parts();
        if status.is_informational()
            && let Some(error) = unsendable(status, self.facts.version, self.facts.upgradable)
        {
            if let Err(caught) = discard(body) {
                return Inspected::Panicked(caught);
            }
            return Inspected::Done(self.failure(Failure::Error(error)));
        }
        // An error rendered, then given another status over it (axum's
        // `(StatusCode::NOT_MODIFIED, error)`): an error never goes out as a success, as
        // `HttpError::with_status` has it, and every signal of the request tells the same.
        let status = match parts.extensions.get::<RenderedError>() {
            // A redirect made over it (a middleware sending a refused caller to its login
            // page) is that middleware's answer, not the error's: it goes out as made, and no
            // signal names the error any more.
            Some(_) if status.is_redirection() && status != StatusCode::NOT_MODIFIED => {
                parts.extensions.remove::<RenderedError>();
                parts
                    .extensions
                    .remove::<periscope_context::AnsweredError>();
                status
            }
            Some(rendered) if rendered.status() != status && !is_error(status) => {
                overridden_status(status, rendered.status());
                parts.status = rendered.status();
                parts.status
            }
            _ => status,
        };
        // An answer of a server that speaks HTTP only (a probe, the admin, a scrape) stays
        // one, whatever `content-type` the request claimed: a refused token guess answered in
        // gRPC would be an HTTP 200. It was rendered for the request's ids and `Accept`.
        if self.facts.format.is_grpc() && parts.extensions.get::<HttpOnly>().is_some() {
            self.echo(&mut parts);
            return Inspected::Done(Response::from_parts(parts, self.pass(body)));
        }
        // A gRPC service's own answers (HTTP 200) pass as they are. An HTTP error to a gRPC
        // call is scrubbed like any and answered in gRPC, whatever it carries: the client
        // chose its `content-type`, so claiming gRPC must not let internals through.
        if !is_error(status)
            && self.facts.format.is_grpc()
            && status != StatusCode::SWITCHING_PROTOCOLS
            && !periscope_context::grpc::is_grpc_answer(status, &parts.headers)
        {
            return self.not_grpc(parts, body);
        }
        // A gRPC call whose client cut its request stream (a reset, the connection gone)
        // before the message came whole: tonic reads the cut as the request's end and fails
        // the call (`INTERNAL`, "Missing request message") to a client already gone. The
        // client's doing, answered (and logged, counted, traced) as a cut body is.
        if self.facts.format.is_grpc()
            && let Some(code) = parts
                .headers
                .get("grpc-status")
                .and_then(periscope_context::grpc::GrpcCode::parse)
            && code.http_status().is_server_error()
            && let Some((received, expected)) = self.body_cut_after()
        {
            if let Err(caught) = discard(body) {
                return Inspected::Panicked(caught);
            }
            return Inspected::Done(self.body_incomplete(parts, received, expected));
        }
        if !is_error(status) {
            self.echo(&mut parts);
            // A gRPC stream's code comes in its trailers: a panic mid-stream must end it with
            // one too. Looked at only for gRPC calls, so plain HTTP pays nothing.
            let stream = match self.facts.format.grpc() {
                Some(false) if head_outcome(status, &parts.headers) == HeadOutcome::Trailers => {
                    Some(GrpcEnding::Trailers)
                }
                // gRPC-Web: the code is the body's last message, unless the head has it.
                Some(true)
                    if periscope_context::grpc::is_grpc_answer(status, &parts.headers)
                        && !parts.headers.contains_key("grpc-status") =>
                {
                    Some(GrpcEnding::WebFrame {
                        text: render::is_grpc_web_text(&parts.headers),
                    })
                }
                _ => None,
            };
            let body = match stream {
                Some(ending) => {
                    let answered = AnsweredLater::default();
                    parts.extensions.insert(answered.clone());
                    ResponseBody::grpc_stream(body, self.ids.clone(), answered, ending)
                }
                None => self.pass(body),
            };
            return Inspected::Done(Response::from_parts(parts, body));
        }
        if let Some(rendered) = parts.extensions.get::<RenderedError>() {
            let up_to_date = rendered.ids_from_context() || !self.ids.from_context;
            // A `Retry-After` the handler put beside its error (axum's
            // `(StatusCode, [(RETRY_AFTER, "30")], error)`): the body says the same delay, and
            // that it is retryable, as for any other answer, unless the error said not to
            // retry (`with_retryable(false)`; a code not retryable by default did not).
            let header_delay = (rendered.body().retry_after_s.is_none()
                && (rendered.body().retryable != Some(false) || rendered.retryable_by_default()))
            .then(|| render::retry_after_seconds(&parts.headers))
            .flatten();
            if self.facts.format.format() == Format::Json && up_to_date && header_delay.is_none() {
                // Kept because of the `Accept` header: another one would get problem details.
                render::vary_accept(&mut parts.headers);
                return Inspected::Done(Response::from_parts(parts, self.pass(body)));
            }
            let mut error = rendered.shared_body();
            if !rendered.ids_from_context() {
                let error = Arc::make_mut(&mut error);
                error.request_id = self.ids.request_id.as_str().to_owned();
                error.trace_id = self.ids.trace_id.map(|id| id.to_string());
            }
            if header_delay.is_some() {
                let error = Arc::make_mut(&mut error);
                error.retry_after_s = header_delay;
                error.retryable = Some(true);
            }
            if let Err(caught) = discard(body) {
                return Inspected::Panicked(caught);
            }
            return Inspected::Done(self.rewrite(parts, error));
        }
        let code = self.code_for(status);
        let deliberate = parts.extensions.get::<PassThrough>().is_some();
        // A compressed body is not text or JSON as it stands: never read it as such.
        let readable = !is_encoded(&parts.headers);
        // A gRPC client reads neither JSON nor a deliberate HTTP body: its answer is rendered.
        if (is_json(&parts.headers) || deliberate) && !self.facts.format.is_grpc() {
            // The head of a `HEAD` answer relayed as it is (an upstream's 503, its length
            // declared, no body): nothing to read or render, and no sign of a handler's
            // answer without an envelope.
            let bodiless_head =
                self.facts.method == Method::HEAD && body.size_hint().exact() == Some(0);
            if status.is_server_error() && !deliberate && !bodiless_head {
                if !readable {
                    if let Err(caught) = discard(body) {
                        return Inspected::Panicked(caught);
                    }
                    return Inspected::Done(self.bare(parts, code, BodyText::None));
                }
                // A handler's own JSON may hold internals: kept only when it is an envelope.
                return Inspected::Read {
                    parts,
                    body,
                    code,
                    json: true,
                    limit: MAX_JSON_BODY,
                };
            }
            self.echo(&mut parts);
            return Inspected::Done(Response::from_parts(parts, self.pass(body)));
        }
        if readable && is_plain_text(&parts.headers) {
            // A 4xx's text becomes the message when it is short; a 5xx's start goes to the log
            // whatever its length, as what the service said is in its first words.
            let limit = if status.is_server_error() {
                Some(MAX_LOGGED_BODY_START)
            } else {
                Some(MAX_TEXT_BODY).filter(|&limit| body.size_hint().lower() <= limit as u64)
            };
            if let Some(limit) = limit {
                return Inspected::Read {
                    parts,
                    body,
                    code,
                    json: false,
                    limit,
                };
            }
        }
        if let Err(caught) = discard(body) {
            return Inspected::Panicked(caught);
        }
        Inspected::Done(self.bare(parts, code, BodyText::None))
    }

    /// The inner body, passed through: a panic while it streams is caught and logged with the
    /// request's ids.
    fn pass<B>(&self, body: B) -> ResponseBody<B> {
        ResponseBody::inner(body, self.ids.clone())
    }

    /// Echoes the request id on a response passed through, when this layer is the one to: in
    /// place of any the handler's response carries (an upstream's, copied with its headers),
    /// which names a request this service never logged.
    fn echo(&self, parts: &mut http::response::Parts) {
        if self.echo_request_id {
            let id = self.ids.request_id.header_value().clone();
            parts.headers.insert(X_REQUEST_ID, id);
        }
    }

    /// The code of a bare error status.
    fn code_for(&self, status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::NOT_FOUND if !self.facts.route_matched => codes::ROUTE_NOT_FOUND,
            StatusCode::UNAUTHORIZED if !self.facts.has_credentials => codes::TOKEN_MISSING,
            _ => ErrorCode::for_status(status),
        }
    }

    /// A gRPC call answered with no gRPC answer at all: a success or a redirect that is not
    /// gRPC (a single-page app's fallback page, a `204`). No gRPC client can read it, so it is
    /// answered as a method the service does not serve, `UNIMPLEMENTED`, and recorded so by
    /// every layer above (the span keeps no name a client made up).
    #[cold]
    fn not_grpc<B: Body>(&self, mut parts: http::response::Parts, body: B) -> Inspected<B> {
        if let Err(caught) = discard(body) {
            return Inspected::Panicked(caught);
        }
        let facts = &self.facts;
        let path = periscope_context::text::prefix(facts.target(), MAX_PATH_IN_MESSAGE);
        let method = periscope_context::text::prefix(facts.method.as_str(), MAX_METHOD_IN_MESSAGE);
        let message = format!(
            "No gRPC method serves {method} {path}: the service answered HTTP {}, not gRPC",
            parts.status.as_u16()
        );
        parts.status = StatusCode::NOT_FOUND;
        let error =
            HttpError::new(codes::ROUTE_NOT_FOUND, message).with_status(StatusCode::NOT_FOUND);
        Inspected::Done(self.rewrite(parts, Arc::new(error.into_body(&self.ids))))
    }

    /// Replaces a bare error response (no envelope) with an envelope, keeping its status and
    /// headers. The body's whole text, if any, becomes the message for 4xx; what was read is
    /// logged for 5xx.
    fn bare<B>(
        &self,
        parts: http::response::Parts,
        code: ErrorCode,
        read: BodyText,
    ) -> Response<ResponseBody<B>> {
        let status = parts.status;
        let (text, cut) = match read {
            BodyText::None => (None, None),
            BodyText::Whole(text) => (Some(text), None),
            BodyText::Start(start, length) => (Some(start), Some(length)),
        };
        let text = text.filter(|text| !text.is_empty());
        // Only a whole body's text is the client's message.
        let message_text = text.as_ref().filter(|_| cut.is_none());
        // An extractor's 400 for a body the client stopped sending: not a malformed request.
        // axum's `Multipart` answers the same cut with a bare 500 ("failed to read stream"):
        // not the service's fault either, so not an `internal_error` logged at error.
        let cut_rejection = (status == StatusCode::BAD_REQUEST && code == codes::INVALID_REQUEST)
            || (status == StatusCode::INTERNAL_SERVER_ERROR && code == codes::INTERNAL_ERROR);
        if cut_rejection && let Some((received, expected)) = self.body_cut_after() {
            return self.body_incomplete(parts, received, expected);
        }
        // The same rejections for a body the client sent too slowly: a body timeout ended the
        // read. Seen as tower-http's error when its layer is outside this one; when it is
        // inside, as a read left waiting for the client's bytes, then rejected (the
        // extractors' 400; `Multipart`'s 500 only with its own words, as a handler's 500 is
        // the handler's).
        let read_failed =
            status == StatusCode::BAD_REQUEST || text.as_deref() == Some(MULTIPART_READ_FAILED);
        if cut_rejection && let Some((received, expected)) = self.body_stalled_after(read_failed) {
            return self.body_timed_out(parts, received, expected, None);
        }
        let facts = &self.facts;
        let path = periscope_context::text::prefix(facts.target(), MAX_PATH_IN_MESSAGE);
        let method = periscope_context::text::prefix(facts.method.as_str(), MAX_METHOD_IN_MESSAGE);
        let message = match message_text {
            Some(text) if status.is_client_error() => text.clone(),
            _ if code == codes::ROUTE_NOT_FOUND => {
                format!("No route matches {method} {path}")
            }
            _ if code == codes::METHOD_NOT_ALLOWED => {
                format!("{method} is not allowed on {path}")
            }
            // A decoder's 415 lists the codings it reads (RFC 7694): the type may be right.
            _ if code == codes::UNSUPPORTED_MEDIA_TYPE && refused_coding(&parts.headers) => {
                "The request body's content encoding is not supported".to_owned()
            }
            // A status folded into the catch-all codes (431, 451, 501, 511, ...): its own reason
            // phrase says more than "The request is malformed", and reveals nothing.
            _ if (code == codes::INVALID_REQUEST && status != StatusCode::BAD_REQUEST)
                || (code == codes::INTERNAL_ERROR
                    && status != StatusCode::INTERNAL_SERVER_ERROR) =>
            {
                status
                    .canonical_reason()
                    .unwrap_or(code.default_message())
                    .to_owned()
            }
            _ => code.default_message().to_owned(),
        };
        let request_id = self.ids.request_id.as_str();
        let trace_id = self.ids.trace_id.map(tracing::field::display);
        if status.is_server_error() {
            tracing::error!(
                request_id,
                trace_id,
                code = code.name(),
                status = status.as_u16(),
                body = text.as_deref(),
                body_truncated = cut.is_some().then_some(true),
                body_bytes = cut.flatten(),
                "the service answered {status} without an error envelope"
            );
        } else {
            tracing::debug!(
                request_id,
                trace_id,
                code = code.name(),
                status = status.as_u16(),
                "request rejected: {message}"
            );
        }
        let mut error = HttpError::new(code, message).with_status(status);
        if code == codes::VALIDATION_ERROR {
            // A framework's 422 names the field in its text; there is no `violations` list to
            // point to, as the code's own help does.
            error = error.with_help("Fix the request body; the message says which field is wrong");
        }
        if code == codes::UNSUPPORTED_MEDIA_TYPE {
            // The code's own help asks for JSON: wrong for a body whose encoding was refused,
            // and for an extractor that named another type (axum's `Form`).
            if refused_coding(&parts.headers) {
                error = error.with_help(
                    "Send the body uncompressed, or in an encoding the Accept-Encoding header \
                     of this answer lists",
                );
            } else if message_text.is_some() {
                error = error.with_help("Send the body in the content type the message names");
            }
        }
        if let Some(seconds) = render::retry_after_seconds(&parts.headers) {
            // A delay to retry after says the condition is temporary (RFC 9110 §10.2.3: a
            // 413's, a maintenance 500's): the envelope says retryable, not both ways.
            error = error
                .with_retry_after(Duration::from_secs(seconds))
                .with_retryable(true);
        }
        self.rewrite(parts, Arc::new(error.into_body(&self.ids)))
    }

    /// The 400 `request_body_incomplete` that replaces an extractor's 400 (`Multipart`'s 500) when the client
    /// stopped sending the body: logged at info (the client went away; nothing to fix here),
    /// with the bytes received and the declared length.
    fn body_incomplete<B>(
        &self,
        mut parts: http::response::Parts,
        received: u64,
        expected: Option<u64>,
    ) -> Response<ResponseBody<B>> {
        // Multipart's 500 becomes the code's 400.
        parts.status = StatusCode::BAD_REQUEST;
        tracing::info!(
            request_id = self.ids.request_id.as_str(),
            trace_id = self.ids.trace_id.map(tracing::field::display),
            code = codes::REQUEST_BODY_INCOMPLETE.name(),
            received_bytes = received,
            expected_bytes = expected,
            "the client stopped sending the request body"
        );
        let message = match expected {
            Some(expected) => format!(
                "The request body ended after {received} of its {expected} bytes: the client \
                 stopped sending it"
            ),
            None => format!(
                "The request body ended after {received} bytes: the client stopped sending it"
            ),
        };
        let mut error = HttpError::new(codes::REQUEST_BODY_INCOMPLETE, message)
            .with_detail("received_bytes", received);
        if let Some(expected) = expected {
            error = error.with_detail("expected_bytes", expected);
        }
        self.rewrite(parts, Arc::new(error.into_body(&self.ids)))
    }

    /// The 408 `timeout` that replaces an extractor's rejection (`Multipart`'s 500) when the
    /// client sent the body too slowly for a body timeout, or the request timeout's 504 when
    /// it fired while the service waited for the body (`request_timeout`): retryable, logged
    /// at info (the client's pace; nothing to fix here), with the bytes received and the
    /// declared length.
    /// The connection is closed after it (RFC 9110, 15.5.9), as the rest of the body may
    /// still come.
    fn body_timed_out<B>(
        &self,
        mut parts: http::response::Parts,
        received: u64,
        expected: Option<u64>,
        request_timeout: Option<Duration>,
    ) -> Response<ResponseBody<B>> {
        parts.status = StatusCode::REQUEST_TIMEOUT;
        // HTTP/2 has no `Connection` header: its stream ends with the answer anyway.
        if self.facts.version <= Version::HTTP_11 {
            parts.headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        tracing::info!(
            request_id = self.ids.request_id.as_str(),
            trace_id = self.ids.trace_id.map(tracing::field::display),
            code = codes::TIMEOUT.name(),
            received_bytes = received,
            expected_bytes = expected,
            // The request timeout's, when it stopped waiting (else a body timeout did).
            timeout_ms =
                request_timeout.map(|after| u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
            "the client did not send the request body in time"
        );
        let message = match expected {
            Some(expected) => format!(
                "The request body did not arrive in time: {received} of its {expected} bytes \
                 came before the server stopped waiting"
            ),
            None => format!(
                "The request body did not arrive in time: {received} bytes came before the \
                 server stopped waiting"
            ),
        };
        let mut error = HttpError::new(codes::TIMEOUT, message)
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .with_help(
                "Send the body again without pausing: the server stops waiting for one that stalls",
            )
            .with_detail("received_bytes", received);
        if let Some(expected) = expected {
            error = error.with_detail("expected_bytes", expected);
        }
        self.rewrite(parts, Arc::new(error.into_body(&self.ids)))
    }

    /// The response for a panic, an error or a timeout of the inner service.
    fn failure<B>(&self, failure: Failure) -> Response<ResponseBody<B>> {
        let request_id = self.ids.request_id.as_str();
        let trace_id = self.ids.trace_id.map(tracing::field::display);
        let code = match failure {
            Failure::Panic(caught) => {
                caught.log(&self.ids);
                codes::INTERNAL_ERROR
            }
            Failure::TimedOut(Limit {
                after: timeout,
                client,
            }) => {
                tracing::warn!(
                    request_id,
                    trace_id,
                    code = codes::TIMEOUT.name(),
                    timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    // Whose limit passed: the client's `grpc-timeout`, else the layer's own.
                    grpc_timeout = client.then_some(true),
                    "request timed out after {timeout:?}"
                );
                let message = if client {
                    format!(
                        "The request did not complete within the client's deadline of \
                         {timeout:?} (grpc-timeout)"
                    )
                } else {
                    format!("The request did not complete within {timeout:?}")
                };
                return self.fresh(HttpError::from(codes::TIMEOUT).with_message(message));
            }
            #[cfg(feature = "axum")]
            Failure::BodyStalled {
                received,
                expected,
                after,
            } => {
                let (parts, ()) = Response::new(()).into_parts();
                return self.body_timed_out(parts, received, expected, Some(after));
            }
            Failure::Error(error) => {
                let code = if error.is::<tower::timeout::error::Elapsed>() {
                    codes::TIMEOUT
                } else if error.is::<tower::load_shed::error::Overloaded>() {
                    codes::SERVICE_UNAVAILABLE
                } else {
                    codes::INTERNAL_ERROR
                };
                // The error is the service's code: a `Display` (or `Drop`) that panics while
                // it is logged is caught like the service's panic, so the answer still goes out.
                let logged = panic::catch(|| {
                    let error: &(dyn std::error::Error + 'static) = &*error;
                    if code == codes::INTERNAL_ERROR {
                        tracing::error!(
                            request_id,
                            trace_id,
                            code = code.name(),
                            error,
                            "the service failed"
                        );
                    } else {
                        // A timeout or load shedding layer inside gave up by design: logged
                        // as this layer's own timeout is, not as a failure of the service
                        // (a shedder answers many requests at once, just when the service is
                        // under pressure).
                        tracing::warn!(
                            request_id,
                            trace_id,
                            code = code.name(),
                            error,
                            "a layer inside gave up on the request"
                        );
                    }
                });
                if let Err(caught) = logged {
                    tracing::error!(
                        request_id,
                        trace_id,
                        code = code.name(),
                        panic.message = caught.message,
                        panic.location = caught.location,
                        "the service failed with an error that panicked when it was formatted"
                    );
                }
                let _ = panic::catch(move || drop(error));
                code
            }
        };
        self.fresh(HttpError::from(code))
    }

    /// A new response for `error`.
    fn fresh<B>(&self, error: HttpError) -> Response<ResponseBody<B>> {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = error.status();
        self.rewrite(parts, Arc::new(error.into_body(&self.ids)))
    }

    /// Renders an envelope the service sent as its own, under this request's ids.
    fn readopt<B>(
        &self,
        parts: http::response::Parts,
        mut error: crate::ErrorBody,
    ) -> Response<ResponseBody<B>> {
        error.request_id = self.ids.request_id.as_str().to_owned();
        error.trace_id = self.ids.trace_id.map(|id| id.to_string());
        // Bounded like an `HttpError`'s, whatever the service wrote.
        error.bound_texts();
        // What periscope renders always says whether to retry: an envelope without it gets
        // what a client would conclude (the code's, else its family's class, else the
        // status's), so the answer does not depend on which decoder reads it.
        let retry_after = render::retry_after_seconds(&parts.headers);
        if error.retryable.is_none() && (retry_after.is_some() || error.retry_after_s.is_some()) {
            // A delay to retry after (the header's or the envelope's own) says the condition
            // is temporary, as for a bare answer.
            error.retryable = Some(true);
        }
        if error.retryable.is_none() {
            let known = ErrorCode::find_builtin(&error.code);
            let class = known
                .map(|code| code.class())
                .or_else(|| crate::code::class_of_family(&error.code))
                .unwrap_or_else(|| crate::ErrorClass::from_status(parts.status));
            error.retryable = Some(known.map_or(class.is_retryable(), |code| code.is_retryable()));
        }
        // The `Retry-After` header stays; the body says the same delay, unless the service's
        // envelope said not to retry at all.
        if error.retry_after_s.is_none() && error.retryable != Some(false) {
            error.retry_after_s = retry_after;
        }
        self.rewrite(parts, Arc::new(error))
    }

    /// `parts` with `error` as the negotiated body.
    fn rewrite<B>(
        &self,
        mut parts: http::response::Parts,
        error: Arc<crate::ErrorBody>,
    ) -> Response<ResponseBody<B>> {
        let instance = Some(self.facts.path());
        let bytes = render::write(
            &mut parts,
            error,
            self.facts.format.format(),
            instance,
            &self.ids,
        );
        if !self.facts.format.is_grpc() {
            render::vary_accept(&mut parts.headers);
        }
        Response::from_parts(parts, ResponseBody::full(bytes))
    }
}

/// The error envelope in `body`: `{"error":{"code":..,"message":..}}`, or its RFC 9457
/// rendering, which carries the same `code` as an extension member beside its `title` (the
/// message is its `detail`, else its `title`); `None` for any other body. Only these shapes
/// count: a 5xx body with a `code` and a `detail` alone is a handler's own JSON, whose
/// internals stay in the log.
/// Whether a 415 refused the body's content coding rather than its type: RFC 7694 has such an
/// answer list the codings the server reads in `Accept-Encoding`, as tower-http's
/// `RequestDecompressionLayer` does.
fn refused_coding(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::ACCEPT_ENCODING)
}

fn parse_envelope(body: &[u8]) -> Option<crate::ErrorBody> {
    // Read as the client decoder reads one: a byte order mark or a Latin-1 byte in a message
    // does not turn an upstream's envelope into an unknown 5xx body.
    let json = crate::client::parse_json(body)?;
    let text = |object: &serde_json::Value, key: &str| object.get(key)?.as_str().map(str::to_owned);
    let is_envelope = match json.get("error") {
        Some(error) if error.is_object() => {
            text(error, "code").is_some() && text(error, "message").is_some()
        }
        _ => text(&json, "code").is_some() && text(&json, "title").is_some(),
    };
    if !is_envelope {
        return None;
    }
    crate::client::envelope_from_json(&json)
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// `application/json`, `application/problem+json` and any other `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let media = content_type(headers)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    media.eq_ignore_ascii_case(render::APPLICATION_JSON)
        || media
            .get(media.len().saturating_sub(5)..)
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
}

/// Whether the body carries a `Content-Encoding` other than `identity` (gzip, br, ...).
fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|value| {
            value.to_str().map_or(true, |value| {
                value
                    .split(',')
                    .map(str::trim)
                    .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
            })
        })
}

fn is_plain_text(headers: &HeaderMap) -> bool {
    let media = content_type(headers)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    media.eq_ignore_ascii_case("text/plain")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;
    use tower::{ServiceExt, service_fn};

    /// Installs `subscriber` as this thread's default, for a test that reads the events it
    /// captures.
    ///
    /// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
    /// that meets a callsite first whether it is enabled, and caches the answer for every thread:
    /// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
    /// cached as never enabled, and a test capturing events at the same time misses them. Two
    /// dispatchers kept for the whole run make tracing-core ask every live one instead (see
    /// docs/development.md).
    fn set_default(
        subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    ) -> tracing::subscriber::DefaultGuard {
        static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
        KEPT.get_or_init(|| {
            [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
        });
        tracing::subscriber::set_default(subscriber)
    }

    type Res = Response<Full<Bytes>>;

    async fn call<F, Fut>(request: Request<Full<Bytes>>, handler: F) -> (Response<()>, Value)
    where
        F: FnMut(Request<Full<Bytes>>) -> Fut,
        Fut: Future<Output = Result<Res, BoxError>>,
    {
        let service = ErrorLayer::new()
            .timeout(Duration::from_millis(100))
            .layer(service_fn(handler));
        let response = service.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (Response::from_parts(parts, ()), json)
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::default()).unwrap()
    }

    fn respond(status: u16, content_type: &str, body: &'static str) -> Result<Res, BoxError> {
        Ok(Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap())
    }

    fn text(status: u16, body: &'static str) -> Result<Res, BoxError> {
        respond(status, "text/plain; charset=utf-8", body)
    }

    fn json_response(status: u16, body: &'static str) -> Result<Res, BoxError> {
        respond(status, "application/json", body)
    }

    #[tokio::test]
    async fn standalone_layer_makes_a_context_current_and_echoes_its_id() {
        let request = Request::get("/")
            .header("x-request-id", "client-id-1")
            .body(Full::default())
            .unwrap();
        let (parts, _) = call(request, |_| async {
            let seen = RequestContext::current().map(|ctx| ctx.request_id.to_string());
            assert_eq!(seen.as_deref(), Some("client-id-1"));
            Ok(Response::new(Full::default()))
        })
        .await;
        assert_eq!(parts.status(), StatusCode::OK);
        assert_eq!(parts.headers()["x-request-id"], "client-id-1");
    }

    /// The context is current in the inner service's own `call` too, not only while its future
    /// runs: an early rejection made there (a circuit breaker's, an auth check's) is rendered,
    /// and logged, with the id the client gets.
    #[tokio::test]
    async fn the_context_is_current_in_the_inner_call() {
        let request = Request::get("/")
            .header("x-request-id", "client-id-9")
            .body(Full::default())
            .unwrap();
        let (parts, json) = call(request, |_| {
            let seen = RequestContext::current().map(|ctx| ctx.request_id.to_string());
            let rejected = crate::HttpError::from(crate::codes::SERVICE_UNAVAILABLE)
                .into_http_response::<Full<Bytes>>();
            async move {
                assert_eq!(seen.as_deref(), Some("client-id-9"));
                Ok(rejected)
            }
        })
        .await;
        assert_eq!(parts.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["error"]["request_id"], "client-id-9");
        assert_eq!(parts.headers()["x-request-id"], "client-id-9");
    }

    #[tokio::test]
    async fn success_and_json_responses_pass_through() {
        let request = Request::get("/")
            .header("x-request-id", "client-id-2")
            .body(Full::default())
            .unwrap();
        let (parts, json) = call(request, |_| async {
            let mut relayed = json_response(409, r#"{"mine":true}"#)?;
            // An upstream's answer relayed with its headers.
            relayed
                .headers_mut()
                .insert("x-request-id", http::HeaderValue::from_static("upstream-7"));
            Ok(relayed)
        })
        .await;
        assert_eq!(parts.status(), StatusCode::CONFLICT);
        assert_eq!(json, serde_json::json!({"mine": true}));
        // Passed through, it still gets this request's id, like every response.
        assert_eq!(parts.headers()["x-request-id"], "client-id-2");
        assert_eq!(parts.headers().get_all("x-request-id").iter().count(), 1);
    }

    /// An interim status as the final answer never reaches the client as such (hyper sends a
    /// bare 500, or resets an HTTP/2 stream answered 101, and switches an HTTP/1.0 request, or
    /// one without `Upgrade`, to nothing): it becomes the 500 envelope. A 101 to an HTTP/1.1
    /// request asking for an upgrade passes as it is.
    #[tokio::test]
    async fn an_interim_status_passes_only_as_an_http1_upgrade() {
        let request = |version, upgrade: bool| {
            let mut request = Request::get("/ws").version(version);
            if upgrade {
                request = request
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket");
            }
            request.body(Full::default()).unwrap()
        };
        let cases = [
            (Version::HTTP_11, true, 101, 101),
            (Version::HTTP_11, false, 101, 500),
            (Version::HTTP_10, true, 101, 500),
            (Version::HTTP_2, true, 101, 500),
            (Version::HTTP_11, true, 103, 500),
            (Version::HTTP_11, false, 100, 500),
            (Version::HTTP_2, false, 103, 500),
        ];
        for (version, upgrade, status, answered) in cases {
            let (parts, json) = call(request(version, upgrade), move |_| async move {
                Ok(Response::builder()
                    .status(status)
                    .body(Full::default())
                    .unwrap())
            })
            .await;
            assert_eq!(parts.status(), answered, "{version:?} {status}");
            if answered == 500 {
                assert_eq!(
                    json["error"]["code"], "internal_error",
                    "{version:?} {status}"
                );
            } else {
                assert_eq!(json, Value::Null, "{version:?} {status}");
            }
        }
    }

    #[tokio::test]
    async fn json_5xx_is_kept_only_when_it_is_an_envelope_or_marked() {
        // A handler's own JSON error: its internals stay in the log.
        let (parts, json) = call(get("/"), |_| async {
            json_response(503, r#"{"detail":"db password=hunter2 at 10.0.0.7"}"#)
        })
        .await;
        assert_eq!(parts.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["error"]["code"], "service_unavailable");
        assert!(!json.to_string().contains("hunter2"), "{json}");
        assert!(parts.headers().contains_key("x-request-id"));

        // A `code` beside a `detail` alone is not an envelope: the detail stays in the log.
        let (_, json) = call(get("/"), |_| async {
            json_response(
                500,
                r#"{"status":500,"code":"db_error","detail":"password authentication failed for admin at 10.0.0.5"}"#,
            )
        })
        .await;
        assert_eq!(json["error"]["code"], "internal_error");
        assert!(!json.to_string().contains("10.0.0.5"), "{json}");

        // Not JSON at all, though labelled so: replaced too.
        let (_, json) = call(get("/"), |_| async { json_response(500, "{oops") }).await;
        assert_eq!(json["error"]["code"], "internal_error");

        // An envelope (from an upstream, say) and its RFC 9457 rendering keep their facts, under
        // this request's ids (the header's and the body's agree) and in the format asked for.
        let envelope = r#"{"error":{"code":"upstream_error","message":"The model server failed","request_id":"req_up","details":{"model":"m1"},"retryable":true}}"#;
        let (parts, json) = call(get("/"), |_| async move { json_response(502, envelope) }).await;
        assert_eq!(parts.status(), StatusCode::BAD_GATEWAY);
        let error = &json["error"];
        assert_eq!(error["code"], "upstream_error");
        assert_eq!(error["message"], "The model server failed");
        assert_eq!(error["details"]["model"], "m1");
        assert_eq!(error["retryable"], true);
        assert_eq!(
            error["request_id"],
            parts.headers()["x-request-id"].to_str().unwrap()
        );
        assert_eq!(parts.headers()["cache-control"], "no-store");
        let problem =
            r#"{"type":"about:blank","title":"Bad Gateway","status":502,"code":"upstream_error"}"#;
        let (_, json) = call(get("/"), |_| async move { json_response(502, problem) }).await;
        assert_eq!(json["error"]["code"], "upstream_error");
        assert_eq!(json["error"]["message"], "Bad Gateway");
        // Asked for problem details, the envelope is rendered so.
        let mut request = get("/");
        request
            .headers_mut()
            .insert("accept", "application/problem+json".parse().unwrap());
        let (parts, json) = call(request, |_| async move { json_response(502, envelope) }).await;
        assert_eq!(parts.headers()["content-type"], "application/problem+json");
        assert_eq!(json["code"], "upstream_error");
        assert_eq!(json["detail"], "The model server failed");
        assert_eq!(
            json["request_id"],
            parts.headers()["x-request-id"].to_str().unwrap()
        );

        // A deliberate body, marked: kept, whatever its shape.
        let (parts, json) = call(get("/"), |_| async {
            let mut response = json_response(503, r#"{"status":"fail"}"#)?;
            response.extensions_mut().insert(PassThrough);
            Ok(response)
        })
        .await;
        assert_eq!(parts.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json, serde_json::json!({"status": "fail"}));
        assert!(parts.headers().contains_key("x-request-id"));

        // Over the size bound, a body cannot be checked: replaced.
        let big: &'static str = Box::leak(
            format!(
                r#"{{"error":{{"code":"x","message":"{}"}}}}"#,
                "a".repeat(MAX_JSON_BODY)
            )
            .into_boxed_str(),
        );
        let (_, json) = call(get("/"), move |_| async move { json_response(500, big) }).await;
        assert_eq!(json["error"]["code"], "internal_error");
    }

    /// "Over 64 KiB" is replaced: an envelope of exactly the limit is still read, and JSON
    /// nested past serde_json's depth limit is replaced, never overflowing the stack.
    #[tokio::test]
    async fn a_json_5xx_at_the_limit_is_read_and_one_nested_too_deep_is_replaced() {
        let head = r#"{"error":{"code":"upstream_error","message":"The model server failed"}}"#;
        let padded = format!("{head}{}", " ".repeat(MAX_JSON_BODY - head.len()));
        let padded: &'static str = Box::leak(padded.into_boxed_str());
        let (_, json) = call(get("/"), move |_| async move { json_response(502, padded) }).await;
        assert_eq!(json["error"]["message"], "The model server failed");

        let nested = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        let nested: &'static str = Box::leak(nested.into_boxed_str());
        let (parts, json) =
            call(get("/"), move |_| async move { json_response(500, nested) }).await;
        assert_eq!(parts.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "internal_error");
    }

    #[tokio::test]
    async fn plain_text_4xx_becomes_the_message_and_5xx_text_stays_in_the_log() {
        let (parts, json) = call(get("/"), |_| async {
            text(
                400,
                "Failed to parse the request body as JSON: EOF at line 1",
            )
        })
        .await;
        assert_eq!(parts.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "invalid_request");
        assert_eq!(
            json["error"]["message"],
            "Failed to parse the request body as JSON: EOF at line 1"
        );

        let (parts, json) = call(get("/"), |_| async { text(500, "db password=hunter2") }).await;
        assert_eq!(parts.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "internal_error");
        assert!(!json.to_string().contains("hunter2"));
    }

    /// The logged start of a body given up is at most 4 KiB and ends on a character boundary:
    /// a character split by the bound (or by the body's end) is left out, not replaced, while a
    /// byte that is not UTF-8 is replaced wherever it is.
    #[test]
    fn the_logged_start_of_a_body_is_cut_on_a_character_boundary() {
        let fire = "\u{1F525}".as_bytes();
        for inside in 0..fire.len() {
            let mut bytes = vec![b'a'; MAX_LOGGED_BODY_START - inside];
            bytes.extend_from_slice(fire);
            let start = body_start(&bytes);
            assert_eq!(start.len(), MAX_LOGGED_BODY_START - inside, "{inside}");
            assert!(start.bytes().all(|b| b == b'a'), "{inside}");
            // Split by the body's end (a read given up early), not by the bound.
            let start = body_start(&bytes[..bytes.len() - 1]);
            assert!(!start.contains('\u{FFFD}'), "{inside}");
        }
        // Latin-1 bytes take three each once replaced: still at most 4 KiB.
        let start = body_start(&[0xfc; 2 * MAX_LOGGED_BODY_START]);
        assert_eq!(start, "\u{FFFD}".repeat(MAX_LOGGED_BODY_START / 3));
        // A lone lead byte inside the text is replaced, one at the very end left out.
        assert_eq!(body_start(b"a\xe2b\xe2"), "a\u{FFFD}b");
        assert_eq!(body_start(b""), "");
    }

    #[tokio::test]
    async fn bare_statuses_get_their_codes_and_keep_headers() {
        for (status, code) in [
            (401, "token_missing"),
            (403, "insufficient_permissions"),
            (404, "route_not_found"),
            (405, "method_not_allowed"),
            (413, "payload_too_large"),
            (429, "rate_limited"),
            (502, "upstream_error"),
            (503, "service_unavailable"),
        ] {
            let (parts, json) = call(get("/x"), move |_| async move {
                Ok(Response::builder()
                    .status(status)
                    .header("retry-after", "12")
                    .header("allow", "GET")
                    .body(Full::default())
                    .unwrap())
            })
            .await;
            assert_eq!(parts.status().as_u16(), status);
            assert_eq!(json["error"]["code"], code, "{status}");
            assert_eq!(parts.headers()["allow"], "GET");
            assert_eq!(parts.headers()["retry-after"], "12");
            assert_eq!(json["error"]["retry_after_s"], 12);
            assert_eq!(
                json["error"]["request_id"].as_str().unwrap(),
                parts.headers()["x-request-id"]
            );
        }
    }

    /// A 415's help tells the client what to change: the encoding when a decoder refused it
    /// (it lists those it reads in `Accept-Encoding`), the type the extractor's own words
    /// name (axum's `Form`), JSON only when nothing says otherwise.
    #[tokio::test]
    async fn a_415_helps_with_what_was_refused() {
        let (_, json) = call(get("/x"), |_| async {
            Ok(Response::builder()
                .status(415)
                .header("accept-encoding", "gzip,br")
                .body(Full::default())
                .unwrap())
        })
        .await;
        let error = &json["error"];
        assert_eq!(error["code"], "unsupported_media_type");
        assert_eq!(
            error["message"],
            "The request body's content encoding is not supported"
        );
        assert!(error["help"].as_str().unwrap().contains("Accept-Encoding"));

        let form = "Form requests must have `Content-Type: application/x-www-form-urlencoded`";
        let (_, json) = call(get("/x"), move |_| async move { text(415, form) }).await;
        assert_eq!(json["error"]["message"], form);
        assert_eq!(
            json["error"]["help"],
            "Send the body in the content type the message names"
        );

        let (_, json) = call(get("/x"), |_| async {
            Ok(Response::builder()
                .status(415)
                .body(Full::default())
                .unwrap())
        })
        .await;
        assert_eq!(
            json["error"]["help"],
            "Send the body as JSON with `Content-Type: application/json`"
        );
    }

    /// An error given a success status over it (axum's `(StatusCode::NOT_MODIFIED, error)`)
    /// goes out with its own: an envelope never goes out as a success (the access line's code
    /// and the metrics' class would disagree, and a cache would keep a 304 carrying the
    /// envelope's headers). A status of another error is the service's to choose.
    #[tokio::test]
    async fn an_error_given_a_success_status_goes_out_with_its_own() {
        for (set, sent) in [(304, 404), (200, 404), (409, 409)] {
            let (parts, json) = call(get("/x"), move |_| async move {
                let mut response = HttpError::from(codes::NOT_FOUND)
                    .into_http_response()
                    .map(|body: Vec<u8>| Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::from_u16(set).unwrap();
                Ok(response)
            })
            .await;
            assert_eq!(parts.status().as_u16(), sent, "{set}");
            assert_eq!(json["error"]["code"], "not_found", "{set}");
            assert_eq!(parts.headers()["content-type"], "application/json");
        }
    }

    /// A middleware that turns a refused caller's error into a redirect to its login page
    /// (status, `Location` and an empty body set over the rendered error): the redirect goes
    /// out as made, not forced back to the error's 401.
    #[tokio::test]
    async fn a_redirect_made_over_an_error_goes_out_as_made() {
        let (parts, json) = call(get("/account"), |_| async {
            let response = HttpError::from(codes::TOKEN_MISSING).into_http_response::<Vec<u8>>();
            let (mut head, _) = response.into_parts();
            head.status = StatusCode::SEE_OTHER;
            head.headers
                .insert("location", http::HeaderValue::from_static("/login"));
            head.headers.remove("content-type");
            Ok(Response::from_parts(head, Full::default()))
        })
        .await;
        assert_eq!(parts.status(), StatusCode::SEE_OTHER);
        assert_eq!(parts.headers()["location"], "/login");
        assert_eq!(json, Value::Null);
        assert!(
            parts
                .extensions()
                .get::<periscope_context::AnsweredError>()
                .is_none()
        );
    }

    /// A body that never delivers a frame.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_text_body_does_not_outlive_the_timeout() {
        let service = ErrorLayer::new()
            .timeout(Duration::from_millis(50))
            .layer(service_fn(|_: Request<Full<Bytes>>| async {
                let response = Response::builder()
                    .status(400)
                    .header("content-type", "text/plain")
                    .body(Stalled)
                    .unwrap();
                Ok::<_, Infallible>(response)
            }));
        let response = service.oneshot(get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "invalid_request");
        assert_eq!(json["error"]["message"], "The request is malformed");
    }

    /// Without a `timeout`, a body the layer reads (a short text error, a JSON 5xx) that never
    /// ends must not hold the answer for good: after `BODY_READ_LIMIT` the envelope goes out
    /// from the status alone.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_without_a_timeout_is_answered_after_the_read_limit() {
        for (status, content_type, code) in [
            (400, "text/plain", "invalid_request"),
            (502, "application/json", "upstream_error"),
        ] {
            let service = ErrorLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| {
                let response = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(Stalled)
                    .unwrap();
                async move { Ok::<_, Infallible>(response) }
            }));
            let started = tokio::time::Instant::now();
            let response = tokio::time::timeout(2 * BODY_READ_LIMIT, service.oneshot(get("/")))
                .await
                .expect("answered after the read limit")
                .unwrap();
            assert_eq!(started.elapsed(), BODY_READ_LIMIT, "{status}");
            assert_eq!(response.status().as_u16(), status);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["error"]["code"], code, "{status}");
        }
    }

    /// With a long `timeout`, a stalled error body is still given up after `BODY_READ_LIMIT`:
    /// a relayed 502 whose upstream stalled after its head is answered in seconds, not when
    /// the request's deadline comes.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_error_body_is_given_up_after_the_read_limit_even_with_a_long_timeout() {
        let service = ErrorLayer::new()
            .timeout(Duration::from_secs(300))
            .layer(service_fn(move |_: Request<Full<Bytes>>| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let response = Response::builder()
                    .status(502)
                    .header("content-type", "application/json")
                    .body(Stalled)
                    .unwrap();
                Ok::<_, Infallible>(response)
            }));
        let started = tokio::time::Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(60), service.oneshot(get("/")))
            .await
            .expect("answered after the read limit")
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1) + BODY_READ_LIMIT);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "upstream_error");
    }

    /// Off a Tokio runtime (no timeout asked for), reading a body sets no deadline rather than
    /// panicking for want of a timer.
    #[test]
    fn reading_a_body_off_a_runtime_sets_no_deadline() {
        let mut service = ErrorLayer::new().layer(service_fn(|_: Request<Full<Bytes>>| {
            let response = Response::builder()
                .status(400)
                .header("content-type", "text/plain")
                .body(Stalled)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(response))
        }));
        let mut future = std::pin::pin!(service.call(get("/")));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }

    /// A body that panics when it is read, as a buggy streaming body does.
    struct PanicsWhenRead;

    impl Body for PanicsWhenRead {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            panic!("body exploded: password=hunter2")
        }
    }

    #[tokio::test]
    async fn a_body_that_panics_while_read_becomes_internal_error() {
        for (status, content_type) in [(400, "text/plain"), (503, "application/json")] {
            let service =
                ErrorLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| async move {
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .header("x-secret", "kept-out")
                        .body(PanicsWhenRead)
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }));
            // Spawned, so a panic escaping the layer fails the join instead of the test thread.
            let response = tokio::spawn(service.oneshot(get("/")))
                .await
                .expect("the panic stays inside the layer")
                .unwrap();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!response.headers().contains_key("x-secret"));
            assert!(response.headers().contains_key("x-request-id"));
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["error"]["code"], "internal_error", "{status}");
            assert!(!json.to_string().contains("hunter2"), "{json}");
        }
    }

    /// A streaming body that sends one frame, then panics, as a buggy stream does.
    struct PanicsOnSecondFrame(bool);

    impl Body for PanicsOnSecondFrame {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if std::mem::replace(&mut self.0, true) {
                panic!("stream exploded: password=hunter2")
            }
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"first",
            )))))
        }
    }

    #[tokio::test]
    async fn a_passed_through_body_that_panics_ends_with_an_error() {
        for status in [200, 409] {
            let service =
                ErrorLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| async move {
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(PanicsOnSecondFrame(false))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }));
            let response = service.oneshot(get("/")).await.unwrap();
            assert_eq!(response.status().as_u16(), status);
            let mut body = response.into_body();
            // Spawned, so a panic escaping the body fails the join instead of the test thread.
            let (first, second, body) = tokio::spawn(async move {
                let first = body.frame().await;
                let second = body.frame().await;
                (first, second, body)
            })
            .await
            .expect("the panic stays inside the body");
            let first = first.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, "first");
            let error = second.unwrap().unwrap_err();
            assert!(!error.to_string().contains("hunter2"), "{error}");
            assert!(body.is_end_stream());
        }
    }

    /// A gRPC stream (its code to come in the trailers) that panics after a message ends with
    /// the trailers of a panicking handler's answer, which a gRPC client reads as the call's
    /// `INTERNAL`, with the request id (a client's status is made of the trailers alone); a
    /// gRPC-Web stream ends with the same trailers as its body's last message.
    #[tokio::test]
    async fn a_grpc_stream_that_panics_ends_with_internal_trailers() {
        /// The trailer block a gRPC-Web body ends with, and its frame's bytes.
        const WEB_BLOCK: &[u8] = b"grpc-status:13\r\ngrpc-message:An internal error occurred\r\nx-request-id:stream-panic\r\n";
        let web_frame = || {
            let mut frame = vec![0x80];
            frame.extend_from_slice(&(WEB_BLOCK.len() as u32).to_be_bytes());
            frame.extend_from_slice(WEB_BLOCK);
            frame
        };
        for (content_type, trailers) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web+proto", false),
            ("application/grpc-web-text", false),
        ] {
            let service =
                ErrorLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| async move {
                    let response = Response::builder()
                        .header("content-type", content_type)
                        .body(PanicsOnSecondFrame(false))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }));
            let call = Request::post("/pkg.Service/Stream")
                .header("content-type", content_type)
                .header("x-request-id", "stream-panic")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let mut body = service.oneshot(call).await.unwrap().into_body();
            let (first, second, end) = tokio::spawn(async move {
                let first = body.frame().await;
                let second = body.frame().await;
                (first, second, body.frame().await)
            })
            .await
            .expect("the panic stays inside the body");
            assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first");
            let second = second.unwrap().unwrap();
            if trailers {
                let trailers = second.into_trailers().unwrap();
                assert_eq!(trailers["grpc-status"], "13");
                assert_eq!(trailers["grpc-message"], "An internal error occurred");
                assert_eq!(trailers["x-request-id"], "stream-panic");
            } else {
                // gRPC-Web: the trailers are the body's last message, flagged 0x80; base64
                // for the text form.
                let frame = second.into_data().unwrap();
                let expected = web_frame();
                if content_type.ends_with("-text") {
                    let decoded = decode_base64(&frame);
                    assert_eq!(decoded, expected, "{content_type}: {frame:?}");
                } else {
                    assert_eq!(frame, expected, "{content_type}");
                }
            }
            assert!(end.is_none(), "{content_type}");
        }
    }

    /// Standard padded base64, decoded: what a gRPC-Web text client does.
    fn decode_base64(text: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for quad in text.chunks(4) {
            let mut n = 0u32;
            let mut digits: u32 = 0;
            for &c in quad.iter().filter(|&&c| c != b'=') {
                let value = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
                n |= value << (18 - 6 * digits);
                digits += 1;
            }
            for i in 0..digits.saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_compressed_error_body_is_never_read_as_text() {
        // "hello", gzip-compressed.
        const GZIP: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x106\x05\x00\x00\x00";
        let compressed = |status: u16, content_type: &'static str, encoding: &'static str| {
            move |_| async move {
                Ok(Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .header("content-encoding", encoding)
                    .body(Full::new(Bytes::from_static(GZIP)))
                    .unwrap())
            }
        };
        let (parts, json) = call(get("/"), compressed(400, "text/plain", "gzip")).await;
        assert_eq!(parts.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "invalid_request");
        assert_eq!(json["error"]["message"], "The request is malformed");
        assert!(!parts.headers().contains_key("content-encoding"));

        let (parts, json) = call(get("/"), compressed(502, "application/json", "GZIP")).await;
        assert_eq!(parts.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(json["error"]["code"], "upstream_error");
        assert!(!parts.headers().contains_key("content-encoding"));

        // `identity` is no encoding: the text is still the message.
        let (_, json) = call(get("/"), |_| async {
            let mut response = text(400, "Missing field `name`")?;
            let identity = http::HeaderValue::from_static("identity");
            response.headers_mut().insert("content-encoding", identity);
            Ok(response)
        })
        .await;
        assert_eq!(json["error"]["message"], "Missing field `name`");
    }

    #[tokio::test]
    async fn service_errors_are_classified() {
        let (parts, json) = call(get("/"), |_| async {
            Err::<Res, _>(BoxError::from(tower::timeout::error::Elapsed::new()))
        })
        .await;
        assert_eq!(parts.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json["error"]["code"], "timeout");

        let (parts, json) = call(get("/"), |_| async {
            Err::<Res, _>(BoxError::from("connection pool exhausted: secret"))
        })
        .await;
        assert_eq!(parts.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json.to_string().contains("secret"));
    }

    /// An error whose `Display` panics, as a buggy error type's does.
    #[derive(Debug)]
    struct DisplayPanics;

    impl std::fmt::Display for DisplayPanics {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("display exploded: password=hunter2")
        }
    }

    impl std::error::Error for DisplayPanics {}

    /// A subscriber that formats every error it is given, as a log layer does.
    struct FormatsErrors;

    impl tracing::Subscriber for FormatsErrors {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Format;
            impl tracing::field::Visit for Format {
                fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    let _ = format!("{value:?}");
                }
                fn record_error(
                    &mut self,
                    _: &tracing::field::Field,
                    value: &(dyn std::error::Error + 'static),
                ) {
                    let _ = value.to_string();
                }
            }
            event.record(&mut Format);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// A panic payload whose destructor panics too.
    struct PanicsWhenDropped;

    impl Drop for PanicsWhenDropped {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("payload drop exploded")
            }
        }
    }

    #[tokio::test]
    async fn an_error_that_panics_when_logged_or_a_payload_when_dropped_stays_inside() {
        let _log = set_default(FormatsErrors);
        let service = ErrorLayer::new().layer(service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Res, _>(BoxError::from(DisplayPanics))
        }));
        // Spawned on this thread (its subscriber), so an escaping panic fails the join.
        let local = tokio::task::LocalSet::new();
        let response = local
            .run_until(async { tokio::task::spawn_local(service.oneshot(get("/"))).await })
            .await
            .expect("the panic stays inside the layer")
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("hunter2"));

        let service = ErrorLayer::new().layer(service_fn(|_: Request<Full<Bytes>>| async {
            if true {
                std::panic::panic_any(PanicsWhenDropped);
            }
            Ok::<Res, Infallible>(Response::new(Full::default()))
        }));
        let response = tokio::spawn(service.oneshot(get("/")))
            .await
            .expect("the payload's panic stays inside the layer")
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// An upstream's (or a hand-written) 5xx envelope is re-rendered as periscope renders one:
    /// `retryable` always, and `retry_after_s` agreeing with the `Retry-After` header it keeps.
    #[tokio::test]
    async fn a_readopted_envelope_says_whether_and_when_to_retry() {
        let (parts, json) = call(get("/"), |_| async {
            Ok(Response::builder()
                .status(503)
                .header("content-type", "application/json")
                .header("retry-after", "30")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":{"code":"db_down","message":"The database is down"}}"#,
                )))
                .unwrap())
        })
        .await;
        assert_eq!(parts.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["error"]["code"], "db_down");
        assert_eq!(json["error"]["retryable"], true, "{json}");
        assert_eq!(json["error"]["retry_after_s"], 30, "{json}");
        assert_eq!(parts.headers()["retry-after"], "30");

        let (_, json) = call(get("/"), |_| async {
            json_response(
                500,
                r#"{"error":{"code":"ledger_corrupt","message":"Ledger check failed"}}"#,
            )
        })
        .await;
        assert_eq!(json["error"]["retryable"], false, "{json}");
        assert!(json["error"].get("retry_after_s").is_none(), "{json}");

        // A delay in the envelope alone (no header) says retryable as the header does.
        let (parts, json) = call(get("/"), |_| async {
            json_response(
                500,
                r#"{"error":{"code":"internal_error","message":"Down for maintenance","retry_after_s":120}}"#,
            )
        })
        .await;
        assert_eq!(json["error"]["retryable"], true, "{json}");
        assert_eq!(json["error"]["retry_after_s"], 120, "{json}");
        assert_eq!(parts.headers()["retry-after"], "120");
    }

    /// A relayed gRPC failure's `grpc-status` and `grpc-message` (internals, as a body holds)
    /// do not go out beside the HTTP envelope that replaces its answer.
    #[tokio::test]
    async fn an_http_envelope_drops_the_replaced_answers_grpc_headers() {
        let (parts, json) = call(get("/"), |_| async {
            Ok(Response::builder()
                .status(500)
                .header("content-type", "text/plain")
                .header("grpc-status", "13")
                .header("grpc-message", "pq:%20password%20authentication%20failed")
                .header("grpc-status-details-bin", "CAI")
                .body(Full::new(Bytes::from_static(
                    b"pq: password authentication failed",
                )))
                .unwrap())
        })
        .await;
        assert_eq!(parts.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "internal_error", "{json}");
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(
                parts.headers().get(name).is_none(),
                "{name}: {:?}",
                parts.headers()
            );
        }
    }

    /// An upstream's envelope with a byte order mark, or a Latin-1 byte in its message, is
    /// still the upstream's envelope (its code kept), as the client decoder reads it.
    #[tokio::test]
    async fn an_upstream_envelope_with_a_byte_order_mark_or_latin1_is_readopted() {
        for body in [
            "\u{feff}{\"error\":{\"code\":\"db_down\",\"message\":\"The database is down\"}}"
                .as_bytes(),
            b"{\"error\":{\"code\":\"db_down\",\"message\":\"Caf\xe9 database down\"}}",
        ] {
            let (parts, json) = call(get("/"), move |_| async move {
                Ok(Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body)))
                    .unwrap())
            })
            .await;
            assert_eq!(parts.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(json["error"]["code"], "db_down", "{json}");
        }
    }

    #[tokio::test]
    async fn slow_inner_service_times_out() {
        let (parts, json) = call(get("/"), |_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Response::new(Full::default()))
        })
        .await;
        assert_eq!(parts.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json["error"]["code"], "timeout");
        assert_eq!(json["error"]["retryable"], true);
    }

    fn timeout_header(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "grpc-timeout",
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    #[test]
    fn grpc_timeout_is_read_as_the_spec_writes_it() {
        for (value, expected) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("200m", Duration::from_millis(200)),
            ("5u", Duration::from_micros(5)),
            ("7n", Duration::from_nanos(7)),
            ("0m", Duration::ZERO),
            ("0000200m", Duration::from_millis(200)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            let parsed = grpc_timeout(&timeout_header(value.as_bytes()));
            assert_eq!(parsed, Some(expected), "{value}");
        }
    }

    #[test]
    fn a_hostile_grpc_timeout_is_ignored() {
        for value in [
            &b""[..],
            b"m",
            b"S",
            b"200",
            b"+200m",
            b"-200m",
            b" 200m",
            b"200m ",
            b"200 m",
            b"2 00m",
            b"123456789m",
            b"000000200m",
            b"999999999999999999999H",
            b"18446744073709551616n",
            b"200x",
            b"200ms",
            b"200h",
            b"200s",
            b"200N",
            b"0x10m",
            b"1e3m",
            b"2.5S",
            b"200m200m",
            b"\xef\xbc\x91m",
            b"2\xff",
            b"\xff",
            b"\xd9\xa3m",
        ] {
            assert_eq!(
                grpc_timeout(&timeout_header(value)),
                None,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn the_shorter_limit_wins_and_the_header_counts_for_grpc_only() {
        let own = Some(Duration::from_secs(30));
        let short = timeout_header(b"200m");
        let client = |after| {
            Some(Limit {
                after,
                client: true,
            })
        };
        let server = |after| {
            Some(Limit {
                after,
                client: false,
            })
        };
        assert_eq!(
            Limit::of(own, true, &short),
            client(Duration::from_millis(200))
        );
        assert_eq!(
            Limit::of(own, false, &short),
            server(Duration::from_secs(30))
        );
        // Never longer than the layer's own timeout; equal is the layer's own.
        for long in [&b"1H"[..], b"30S", b"99999999H"] {
            assert_eq!(
                Limit::of(own, true, &timeout_header(long)),
                server(Duration::from_secs(30))
            );
        }
        assert_eq!(
            Limit::of(own, true, &timeout_header(b"+1m")),
            server(Duration::from_secs(30))
        );
        // Without a timeout of its own, the layer keeps the client's deadline.
        assert_eq!(
            Limit::of(None, true, &short),
            client(Duration::from_millis(200))
        );
        assert_eq!(Limit::of(None, true, &HeaderMap::new()), None);
        assert_eq!(Limit::of(None, false, &short), None);
    }

    /// A call (over a layer with a 300 ms timeout) to a service that sleeps, then answers OK.
    async fn grpc_call(
        timeout: Option<&str>,
        content_type: &str,
        sleep: Duration,
    ) -> http::response::Parts {
        let service = ErrorLayer::new()
            .timeout(Duration::from_millis(300))
            .layer(service_fn(move |_: Request<Full<Bytes>>| async move {
                tokio::time::sleep(sleep).await;
                Ok::<Res, BoxError>(
                    Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Full::default())
                        .unwrap(),
                )
            }));
        let mut request = Request::post("/pkg.Svc/Method")
            .header("content-type", content_type)
            .body(Full::default())
            .unwrap();
        if let Some(timeout) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", timeout.parse().unwrap());
        }
        service.oneshot(request).await.unwrap().into_parts().0
    }

    #[tokio::test]
    async fn a_grpc_call_gets_the_clients_deadline_when_it_is_shorter() {
        let grpc = |parts: &http::response::Parts| {
            (
                parts.headers["grpc-status"].to_str().unwrap().to_owned(),
                parts.headers["grpc-message"].to_str().unwrap().to_owned(),
            )
        };
        let client = grpc_call(Some("50m"), "application/grpc", Duration::from_secs(10)).await;
        assert_eq!(
            grpc(&client),
            (
                "4".to_owned(),
                "The request did not complete within the client's deadline of 50ms \
                 (grpc-timeout)"
                    .to_owned()
            )
        );
        // Longer than the layer's own timeout, or not a valid value: the layer's own.
        for timeout in [Some("1H"), Some("+50m"), Some("50 m"), None] {
            let own = grpc_call(timeout, "application/grpc", Duration::from_secs(10)).await;
            assert_eq!(
                grpc(&own),
                (
                    "4".to_owned(),
                    "The request did not complete within 300ms".to_owned()
                ),
                "{timeout:?}"
            );
        }
        // Not a gRPC call: the header means nothing.
        let plain = grpc_call(Some("50m"), "application/json", Duration::from_secs(10)).await;
        assert_eq!(plain.status, StatusCode::GATEWAY_TIMEOUT);
        // A call answered within the client's deadline passes.
        let answered = grpc_call(Some("5S"), "application/grpc", Duration::from_millis(10)).await;
        assert_eq!(answered.headers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn the_largest_grpc_timeout_without_a_timeout_of_its_own_is_harmless() {
        let service = ErrorLayer::new().layer(service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<Res, BoxError>(Response::new(Full::default()))
        }));
        let request = Request::post("/pkg.Svc/Method")
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "99999999H")
            .body(Full::default())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn panics_in_call_and_in_poll_ready_are_caught() {
        #[derive(Clone)]
        struct PanicsOnCall;
        impl Service<Request<Full<Bytes>>> for PanicsOnCall {
            type Response = Res;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Res, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
                panic!("in call")
            }
        }
        let response = ErrorLayer::new()
            .layer(PanicsOnCall)
            .oneshot(get("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

        let failing = tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<Res, BoxError>(Response::new(Full::default()))
        });
        let not_ready =
            tower::load_shed::LoadShed::new(tower::limit::ConcurrencyLimit::new(failing, 0));
        let response = ErrorLayer::new()
            .layer(not_ready)
            .oneshot(get("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn problem_json_is_negotiated_for_layer_errors() {
        let request = Request::get("/nowhere")
            .header("accept", "application/problem+json")
            .body(Full::default())
            .unwrap();
        let (parts, json) = call(request, |_| async {
            Ok(Response::builder()
                .status(404)
                .body(Full::default())
                .unwrap())
        })
        .await;
        assert_eq!(parts.headers()["content-type"], "application/problem+json");
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], "Not Found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["detail"], "No route matches GET /nowhere");
        assert_eq!(json["instance"], "/nowhere");
        assert_eq!(json["code"], "route_not_found");
    }

    /// A `CONNECT` names an authority, not a path (`CONNECT example.com:443`): the router's 404
    /// quotes the target as sent, not an empty path.
    #[tokio::test]
    async fn a_connect_without_a_route_names_its_authority() {
        let request = Request::connect("example.com:443")
            .body(Full::default())
            .unwrap();
        let (_, json) = call(request, |_| async {
            Ok(Response::builder()
                .status(404)
                .body(Full::default())
                .unwrap())
        })
        .await;
        assert_eq!(json["error"]["code"], "route_not_found");
        assert_eq!(
            json["error"]["message"],
            "No route matches CONNECT example.com:443"
        );
    }

    /// A status folded into a catch-all code keeps its own reason as the message.
    #[tokio::test]
    async fn folded_statuses_say_their_own_reason() {
        for (status, code, message) in [
            (431, "invalid_request", "Request Header Fields Too Large"),
            (451, "invalid_request", "Unavailable For Legal Reasons"),
            (400, "invalid_request", "The request is malformed"),
            (501, "internal_error", "Not Implemented"),
            (511, "internal_error", "Network Authentication Required"),
            (500, "internal_error", "An internal error occurred"),
            (599, "internal_error", "An internal error occurred"),
        ] {
            let (parts, json) = call(get("/"), move |_| async move {
                Ok(Response::builder()
                    .status(status)
                    .body(Full::default())
                    .unwrap())
            })
            .await;
            assert_eq!(parts.status().as_u16(), status);
            assert_eq!(json["error"]["code"], code, "{status}");
            assert_eq!(json["error"]["message"], message, "{status}");
        }
    }

    /// The `Vary` header values of a response.
    fn vary(parts: &Response<()>) -> Vec<&str> {
        parts
            .headers()
            .get_all("vary")
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn negotiated_error_responses_vary_on_accept() {
        let problem = || {
            Request::get("/x")
                .header("accept", "application/problem+json")
                .body(Full::default())
                .unwrap()
        };
        let bare_404 = |_| async {
            Ok(Response::builder()
                .status(404)
                .header("vary", "origin")
                .body(Full::default())
                .unwrap())
        };
        for request in [get("/x"), problem()] {
            let (parts, _) = call(request, bare_404).await;
            assert_eq!(vary(&parts), ["origin", "accept"]);
        }
        // A handler's envelope, kept or re-rendered, depends on `Accept` too.
        let handler = |_| async { Ok(HttpError::from(codes::CONFLICT).into_http_response()) };
        for request in [get("/x"), problem()] {
            let (parts, _) = call(request, handler).await;
            assert_eq!(vary(&parts), ["accept"]);
        }
        // Named once, whatever its case; `*` already covers it.
        for already in ["Accept", "accept-encoding, ACCEPT", "*"] {
            let (parts, _) = call(get("/x"), move |_| async move {
                Ok(Response::builder()
                    .status(500)
                    .header("vary", already)
                    .body(Full::default())
                    .unwrap())
            })
            .await;
            assert_eq!(vary(&parts), [already]);
        }
        // Responses that do not depend on `Accept` are left alone.
        let (parts, _) = call(get("/x"), |_| async { json_response(409, "{}") }).await;
        assert!(vary(&parts).is_empty());
        let (parts, _) = call(get("/x"), |_| async { Ok(Response::new(Full::default())) }).await;
        assert!(vary(&parts).is_empty());
    }

    #[tokio::test]
    async fn handler_envelopes_pass_through_or_are_re_rendered_as_problems() {
        let handler = |_| async {
            Ok(HttpError::from(codes::CONFLICT)
                .with_detail("job_id", "job_1")
                .into_http_response())
        };
        let (parts, json) = call(get("/jobs/1"), handler).await;
        assert_eq!(parts.status(), StatusCode::CONFLICT);
        assert_eq!(json["error"]["details"]["job_id"], "job_1");
        assert_eq!(
            json["error"]["request_id"].as_str().unwrap(),
            parts.headers()["x-request-id"]
        );

        let request = Request::get("/jobs/1")
            .header("accept", "application/problem+json")
            .body(Full::default())
            .unwrap();
        let (parts, json) = call(request, handler).await;
        assert_eq!(parts.headers()["content-type"], "application/problem+json");
        assert_eq!(json["code"], "conflict");
        assert_eq!(json["details"]["job_id"], "job_1");
    }
}

//! The access log: one line per completed request, as a Tower layer.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Buf;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use periscope_context::grpc::{GrpcCode, HeadOutcome, StreamEnd, StreamEndWatch, head_outcome};
use periscope_context::{
    AnsweredError, AnsweredLater, ClientAddr, HexId, Observed, RequestContext, RequestId,
    SERVER_SPAN_NAME, SERVER_SPAN_TARGET, SpanId, Tenant, TenantSpanFields, TraceId,
    TrustedProxies,
    order::{self, Misordering},
};
use pin_project::{pin_project, pinned_drop};

use crate::peer_text::PeerText;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Id, Level, Span};

/// Probe and scrape paths whose lines are quiet (logged at debug) by default (periscope-context's
/// list, shared with the trace layer).
pub use periscope_context::DEFAULT_QUIET_PATHS;

/// The `tracing` target of access-log lines: filter it like any other
/// (`periscope::access=warn` keeps only failures).
pub const ACCESS_LOG_TARGET: &str = "periscope::access";

/// Logs one line per completed request: method, route, path, status, `duration_ms`,
/// `bytes_out`, with the request's context fields.
///
/// The line is written when the response body has been sent (or dropped, as `aborted`),
/// inside the span that was current when the request arrived, so the log layer lifts the
/// request's context fields from it. A response future dropped before the response (a client
/// disconnect, an outer timeout) also gives an `aborted` line, without `status`. Without a
/// request span (a quiet path), the request id, trace id, span id and tenant fields come from
/// the [`RequestContext`] in the request's extensions (or the current one) when there is one.
/// Level by outcome: 5xx `error`, 4xx `warn`, the rest `info`; a response future dropped
/// before the response `warn`, a body that fails while it is sent `error`; quiet paths at
/// `debug` whatever the outcome.
/// The query string is never logged (it may hold secrets).
///
/// A gRPC answer whose code comes in its trailers (HTTP 200, `application/grpc`, no
/// `grpc-status` in its head) is logged with the trailers' code. For such an answer the layer
/// also puts a [`StreamEndWatch`] in the response's extensions and ends it when the body ends
/// (with the trailers' code; `UNKNOWN` when none comes, `INTERNAL` when the body fails,
/// `CANCELLED` when it is dropped first): the layers outside it, periscope's RED metrics and
/// server span, record the call then. No other answer gets one.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use periscope_log::AccessLogLayer;
/// use tower::ServiceBuilder;
///
/// // Outermost first: the correlation/trace layer goes above it, error rendering below it.
/// let service = ServiceBuilder::new()
///     .layer(AccessLogLayer::new().quiet_paths(["/health", "/livez"]))
///     .service_fn(|_req: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::from("hello")))
///     });
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct AccessLogLayer {
    quiet_paths: Arc<[Box<str>]>,
    trusted_proxies: TrustedProxies,
}

impl Default for AccessLogLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogLayer {
    /// An access log with the default quiet paths.
    pub fn new() -> Self {
        Self {
            quiet_paths: DEFAULT_QUIET_PATHS.iter().map(|p| (*p).into()).collect(),
            trusted_proxies: TrustedProxies::none(),
        }
    }

    /// The networks of the proxies in front of the service and the header they set (default:
    /// none). With some, the line has `client` beside `peer`: the client's address (no port),
    /// from the one forwarding header chosen with [`TrustedProxies::with_forwarding_header`], by the rule of
    /// [`TrustedProxies::client_addr`], the one a layer above put in the request as a
    /// [`ClientAddr`] (periscope-trace's `CorrelationLayer` with the same networks), else
    /// worked out here. Without networks, no `client` and nothing read.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Paths (exact match) logged at debug instead of by outcome; an empty list logs every
    /// request by outcome.
    pub fn quiet_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.quiet_paths = paths.into_iter().map(|p| p.as_ref().into()).collect();
        self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

/// What the line needs, taken when the request arrives.
struct RequestInfo {
    /// Where the connection comes from, when the server told ([`peer_addr`]).
    peer: Option<std::net::SocketAddr>,
    /// The client behind trusted proxies, when any are configured and the peer is known.
    client: Option<std::net::IpAddr>,
    method: Method,
    /// The request's path and query, shared with the request rather than copied (an
    /// allocation per request); `None` where the URI has no path (an authority-form target).
    path: Option<PathAndQuery>,
    route: Option<Route>,
    ids: Option<(RequestId, TraceId, SpanId)>,
    /// The context's tenant fields, taken with `ids` (no request span records them) when
    /// there are any; boxed, as it is rare.
    tenant: Option<Box<Tenant>>,
    quiet: bool,
    /// Whether the request came over HTTP/1: there the server drops a body whose
    /// `Content-Length` is sent without polling its end; over HTTP/2 it polls on, and an error
    /// after the last byte resets the stream.
    http1: bool,
    /// The answer's status and gRPC code (from its head when trailers-only, else from its
    /// trailers), set when it comes. Kept here, next to `quiet`, where they fit in its
    /// padding: the body that carries this moves through every layer above.
    status: StatusCode,
    grpc: Option<GrpcCode>,
    started: Instant,
    parent: Parent,
}

/// The span the line is logged in: the one current when the request arrived.
enum Parent {
    /// periscope-trace's server span: the correlation layer outside holds it until after this
    /// layer's future and body are dropped, so its id is enough (a handle of this layer's own
    /// would cost a clone and a close, some 700 instructions a request).
    Server(Id),
    /// Any other span (or none), held so that it is still open when the line is written.
    Held(Span),
}

impl Parent {
    /// The span current now, and whether it records the request's ids.
    fn current() -> (Self, bool) {
        let server = tracing::dispatcher::get_default(|dispatch| {
            let current = dispatch.current_span();
            let metadata = current.metadata()?;
            let server =
                metadata.target() == SERVER_SPAN_TARGET && metadata.name() == SERVER_SPAN_NAME;
            current.id().filter(|_| server).cloned()
        });
        if let Some(id) = server {
            return (Self::Server(id), true);
        }
        let span = Span::current();
        let has_ids = span
            .metadata()
            .is_some_and(|metadata| metadata.fields().field("request_id").is_some());
        (Self::Held(span), has_ids)
    }

    /// The line's parent; `None` (a line of its own) where no span was current.
    fn id(&self) -> Option<Id> {
        match self {
            Self::Server(id) => Some(id.clone()),
            Self::Held(span) => span.id(),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display + 'static,
    ResBody: Body,
{
    type Response = Response<AccessLogBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Applied twice (the stack on a nested router and on the outer one): the layer
        // outside writes the request's line; a second would count it twice in every query.
        // The mark is shared with the metrics layer outside, which has usually put it there.
        match request.extensions_mut().get_mut::<Observed>() {
            Some(observed) if observed.logged => {
                return ResponseFuture {
                    inner: self.inner.call(request),
                    info: None,
                    logged_outside: true,
                };
            }
            Some(observed) => observed.logged = true,
            None => {
                let mut observed = Observed::default();
                observed.logged = true;
                request.extensions_mut().insert(observed);
            }
        }
        let path = request.uri().path();
        // Inside the request span the line lifts the ids from it: recording them again on
        // the event would only repeat the work. Without one (the layer alone, or a quiet
        // path), the event carries them itself.
        let (parent, span_has_ids) = Parent::current();
        let (ids, tenant) = if span_has_ids {
            (None, None)
        } else {
            let context = |ctx: &RequestContext| {
                let tenant = (!ctx.tenant.is_empty()).then(|| Box::new(ctx.tenant.clone()));
                (
                    Some((ctx.request_id.clone(), ctx.trace_id, ctx.span_id)),
                    tenant,
                )
            };
            match request.extensions().get::<RequestContext>() {
                Some(ctx) => context(ctx),
                None => RequestContext::current()
                    .map(|ctx| context(&ctx))
                    .unwrap_or_default(),
            }
        };
        let peer = peer_addr(&request);
        let client = if self.layer.trusted_proxies.is_empty() {
            None
        } else {
            client_addr(&request, peer, &self.layer.trusted_proxies)
        };
        let info = RequestInfo {
            peer,
            client,
            method: request.method().clone(),
            // `Uri::path` is the path of `path_and_query` but where the URI has none (then
            // empty, where `PathAndQuery::path` would say `/`).
            path: request
                .uri()
                .path_and_query()
                .filter(|shared| shared.path().len() == path.len())
                .cloned(),
            route: matched_path(&request),
            ids,
            tenant,
            quiet: self.layer.quiet_paths.iter().any(|p| **p == *path),
            http1: request.version() <= http::Version::HTTP_11,
            status: StatusCode::OK,
            grpc: None,
            started: Instant::now(),
            parent,
        };
        ResponseFuture {
            inner: self.inner.call(request),
            info: Some(info),
            logged_outside: false,
        }
    }
}

/// Warns, once per process, that two periscope layers are composed out of order.
#[cold]
#[inline(never)]
fn warn_misordered(misordering: Misordering) {
    periscope_context::warn_misordered!(misordering);
}

/// Where the connection comes from: what the server put in the request, periscope's
/// [`PeerAddr`](periscope_context::PeerAddr) or axum's `ConnectInfo<SocketAddr>` (what
/// `into_make_service_with_connect_info` gives under `axum::serve`).
fn peer_addr<B>(request: &Request<B>) -> Option<std::net::SocketAddr> {
    let peer = periscope_context::PeerAddr::of(request);
    #[cfg(feature = "axum")]
    let peer = peer.or_else(|| {
        request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0)
    });
    peer
}

/// The client's address: the one a layer above worked out, else by the rule of `proxies`.
#[inline(never)]
fn client_addr<B>(
    request: &Request<B>,
    peer: Option<std::net::SocketAddr>,
    proxies: &TrustedProxies,
) -> Option<std::net::IpAddr> {
    ClientAddr::of(request).or_else(|| Some(proxies.client_addr(peer?.ip(), request.headers())))
}

/// The route template: axum's matched route, or the one an outer layer matched
/// ([`MatchedRoute`](periscope_context::MatchedRoute)), shared rather than copied.
fn matched_path<B>(request: &Request<B>) -> Option<Route> {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return Some(Route::Axum(matched.clone()));
    }
    request
        .extensions()
        .get::<periscope_context::MatchedRoute>()
        .cloned()
        .map(Route::Declared)
}

/// A request's route template, as the router or an outer layer left it.
#[derive(Debug)]
enum Route {
    #[cfg(feature = "axum")]
    Axum(axum::extract::MatchedPath),
    Declared(periscope_context::MatchedRoute),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            #[cfg(feature = "axum")]
            Self::Axum(matched) => matched.as_str(),
            Self::Declared(matched) => matched.as_str(),
        }
    }
}

/// The future of [`AccessLog`]: wraps the response body so the line is written when it ends.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    info: Option<RequestInfo>,
    /// An access log outside writes the line: the response passes through.
    logged_outside: bool,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display + 'static,
    B: Body,
{
    type Output = Result<Response<AccessLogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _watch = PanicWatch {
                line: &mut *this.info,
                log: Some(|info: RequestInfo| {
                    info.log_error(&MessageOnly(SERVICE_PANICKED.into()));
                }),
            };
            ready!(this.inner.poll(cx))
        };
        if *this.logged_outside {
            return Poll::Ready(result.map(|response| {
                response.map(|inner| AccessLogBody {
                    inner,
                    pending: None,
                })
            }));
        }
        let Some(info) = this.info.take() else {
            // Polled after completion: the inner future decides what that means.
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(mut response) => {
                let mut info = info;
                info.status = response.status();
                // An empty body may never be polled, and the server drops the body of a
                // HEAD, 1xx, 204 or 304 answer unread: such a request is complete now.
                let bodiless =
                    periscope_context::is_bodiless(info.method == Method::HEAD, info.status);
                let watch = match head_outcome(info.status, response.headers()) {
                    HeadOutcome::Status => None,
                    HeadOutcome::Code(code) => {
                        info.grpc = Some(code);
                        None
                    }
                    // The layers outside record the call when its body ends (see the type's
                    // documentation); a body that is over already ends it now, without
                    // trailers. An answer that sends no body (to a HEAD) has no trailers to
                    // wait for: it gets no watch and is judged by its head.
                    HeadOutcome::Trailers if !bodiless => Some(watch(response.extensions_mut())),
                    HeadOutcome::Trailers => None,
                };
                // A body with a `Content-Length` is over for the server once that many bytes
                // are sent: hyper (HTTP/1.1) then drops it without polling its end, so the
                // line is written when they are. Not for an answer whose trailers are awaited,
                // nor for one that is over already. A body that knows its exact size is the
                // length hyper sends (and what an explicit header must say): the header is
                // looked up only for a body that does not.
                let over = bodiless || response.body().is_end_stream();
                let length = if over || watch.is_some() {
                    None
                } else {
                    response
                        .body()
                        .size_hint()
                        .exact()
                        .or_else(|| periscope_context::content_length(response.headers()))
                };
                // Looked for only on a gRPC stream, the one answer that gets it.
                let answered_later = watch
                    .is_some()
                    .then(|| response.extensions().get::<AnsweredLater>().cloned())
                    .flatten();
                let pending = Pending {
                    answered: response.extensions().get::<AnsweredError>().cloned(),
                    info,
                    bytes: 0,
                    length,
                    watch,
                    answered_later,
                };
                let pending = if over || length == Some(0) {
                    pending.log(false);
                    None
                } else {
                    Some(pending)
                };
                Ok(response.map(|inner| AccessLogBody { inner, pending }))
            }
            Err(error) => {
                match error_chain(&error) {
                    Some(chained) => info.log_error(chained),
                    None => info.log_error(&MessageOnly(error.to_string())),
                }
                Err(error)
            }
        })
    }
}

/// A watch for the layers outside, put in `extensions`; the other handle is the body's.
#[inline(never)]
fn watch(extensions: &mut http::Extensions) -> StreamEndWatch {
    let watch = StreamEndWatch::new();
    extensions.insert(watch.clone());
    watch
}

#[pinned_drop]
impl<F> PinnedDrop for ResponseFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(info) = self.project().info.take() {
            // Dropped before the response: the client went away, or an outer timeout fired.
            if order::dropped_by_error_layer() {
                // An error layer outside answers the request with an envelope this line
                // never sees.
                warn_misordered(Misordering::ErrorOutsideAccessLog);
            }
            info.log_completed(Answer::default(), 0, true, None);
        }
    }
}

/// The service's (or body's) error as `&dyn Error`, for its `chain`, when its type is one that
/// tells: the boxed errors Tower middleware returns, `io::Error`, axum's body error. A generic
/// `Display` type cannot be asked for its causes.
fn error_chain<E: fmt::Display + 'static>(error: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn Any = error;
    #[cfg(feature = "axum")]
    if let Some(error) = any.downcast_ref::<axum::Error>() {
        return Some(error);
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn Error + Send + Sync>>() {
        return Some(&**boxed);
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn Error + Send>>() {
        return Some(&**boxed);
    }
    if let Some(boxed) = any.downcast_ref::<Box<dyn Error>>() {
        return Some(&**boxed);
    }
    any.downcast_ref::<std::io::Error>()
        .map(|error| error as &(dyn Error + 'static))
}

/// An error known only by its message: logged as `{"message": ..., "chain": []}` like any
/// other, so the field keeps one type from line to line.
#[derive(Debug)]
struct MessageOnly(String);

/// The causes of a line written while a panic unwinds out of the service's future or body.
const SERVICE_PANICKED: &str = "the service panicked before answering";
const BODY_PANICKED: &str = "the service's body panicked while it was sent";

/// Writes the line of a request whose service (or body) panics while polled, as the panic
/// unwinds through the poll: a panic catcher outside (tower-http's `CatchPanicLayer`, a
/// runtime's task boundary) then drops the future or body, which would otherwise tell the
/// line of a client that went away (`aborted`, at `warn` or `info`) for what was a failure.
/// periscope's error layer, inside, catches the panic itself and answers it; one outside is
/// out of the documented order, and warned of.
struct PanicWatch<'a, T, L: FnOnce(T)> {
    line: &'a mut Option<T>,
    log: Option<L>,
}

impl<T, L: FnOnce(T)> Drop for PanicWatch<'_, T, L> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let (Some(line), Some(log)) = (self.line.take(), self.log.take())
        {
            if periscope_context::panic::is_catching_panics() {
                // An error layer outside catches this panic and answers it with an envelope
                // this line never sees (its status and `error_code`).
                warn_misordered(Misordering::ErrorOutsideAccessLog);
            }
            log(line);
        }
    }
}

impl fmt::Display for MessageOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for MessageOnly {}

/// A response whose line is not written yet.
struct Pending {
    info: RequestInfo,
    /// The error envelope periscope rendered, if any: its code goes on the line.
    answered: Option<AnsweredError>,
    bytes: u64,
    /// The answer's `Content-Length`, when it has one (and no trailers are awaited): the body
    /// is over when that many bytes are sent.
    length: Option<u64>,
    /// For a gRPC answer whose code comes in its trailers: the watch the layers outside wait
    /// on, ended when the body ends.
    watch: Option<StreamEndWatch>,
    /// For such an answer: the error an error layer inside ends its stream with, if it does
    /// (a panic mid-stream answered `INTERNAL`), whose code goes on the line.
    answered_later: Option<AnsweredLater>,
}

/// What the line says about the answer: its status (none when it never came), its gRPC code,
/// and the code of the error envelope periscope rendered for it.
#[derive(Default)]
struct Answer<'a> {
    status: Option<StatusCode>,
    grpc: Option<GrpcCode>,
    error_code: Option<&'a str>,
}

/// The response body of [`AccessLog`]: counts the bytes sent and writes the line at its end.
#[pin_project(PinnedDrop)]
pub struct AccessLogBody<B> {
    #[pin]
    inner: B,
    pending: Option<Pending>,
}

impl<B> fmt::Debug for AccessLogBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogBody").finish_non_exhaustive()
    }
}

impl<B> Body for AccessLogBody<B>
where
    B: Body,
    B::Error: fmt::Display + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = {
            let _watch = PanicWatch {
                line: &mut *this.pending,
                log: Some(|pending: Pending| {
                    pending.log_failed(&MessageOnly(BODY_PANICKED.into()));
                }),
            };
            ready!(inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(pending) = this.pending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        pending.bytes += data.remaining() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && pending.info.status == StatusCode::OK
                    {
                        pending.info.grpc = GrpcCode::of(trailers).or(pending.info.grpc);
                        if let Some(watch) = pending.watch.take() {
                            // The line tells the code the metrics and the span record:
                            // `UNKNOWN` for trailers without a status.
                            let end = StreamEnd::trailers(trailers);
                            pending.info.grpc = Some(end.code());
                            watch.end(end);
                        }
                    }
                }
            }
            Some(Err(error)) => {
                if let Some(pending) = this.pending.take() {
                    // The answer was cut short by the service, not the client: a failure,
                    // with its cause.
                    match error_chain(error) {
                        Some(chained) => pending.log_failed(chained),
                        None => pending.log_failed(&MessageOnly(error.to_string())),
                    }
                }
            }
            None => {}
        }
        // Trailers are the last frame, and so is the one that completes the `Content-Length`
        // over HTTP/1: the server may drop the body after them unpolled.
        let last = match &frame {
            None => true,
            Some(Ok(frame)) => {
                frame.is_trailers()
                    || this.pending.as_ref().is_some_and(|pending| {
                        pending.info.http1
                            && pending.length.is_some_and(|length| pending.bytes >= length)
                    })
            }
            Some(Err(_)) => false,
        };
        if (last || inner.is_end_stream())
            && let Some(pending) = this.pending.take()
        {
            match pending.length.filter(|&length| pending.bytes < length) {
                // Ended before the length its head announced: the server closes the connection
                // and the client holds a cut answer, the service's failure.
                Some(length) => {
                    let short = length - pending.bytes;
                    pending.log_failed(&MessageOnly(format!(
                        "the response body ended {short} bytes short of its Content-Length \
                         ({length})"
                    )));
                }
                None => pending.log(false),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[pinned_drop]
impl<B> PinnedDrop for AccessLogBody<B> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(pending) = self.project().pending.take() {
            // Dropped before its end: the client went away or the server stopped.
            pending.log(true);
        }
    }
}

/// Writes the line with `$line` (a macro taking the `client` fields, then the tenant fields, each
/// in brackets): with those fields when the line has any ([`RequestInfo::has_extra_fields`]),
/// else from a second callsite without them, as each field of an event costs its subscriber a
/// visit even when empty.
macro_rules! with_extra_fields {
    ($info:expr, $line:ident) => {
        if $info.has_extra_fields() {
            let client = $info.client.map(PeerText::ip);
            let tenant = $info.tenant_fields();
            $line!(
                [client = client.as_ref().map(PeerText::as_str),]
                [
                    org_id = tenant.named[0],
                    project_id = tenant.named[1],
                    team_id = tenant.named[2],
                    user_id = tenant.named[3],
                    tenant_id = tenant.named[4],
                    tenant = tenant.others.as_deref(),
                ]
            );
        } else {
            $line!([] []);
        }
    };
}

/// Emits the access event at a level chosen at run time (`tracing` macros need a constant),
/// as a child of `$parent` (an `Option<Id>`), the span current when the request came in:
/// named rather than entered, which costs a subscriber two calls per line for the same result.
macro_rules! access_event {
    ($level:expr, $parent:expr, $($rest:tt)*) => {
        match $level {
            Level::ERROR => {
                tracing::event!(target: ACCESS_LOG_TARGET, parent: $parent, Level::ERROR, $($rest)*)
            }
            Level::WARN => {
                tracing::event!(target: ACCESS_LOG_TARGET, parent: $parent, Level::WARN, $($rest)*)
            }
            Level::INFO => {
                tracing::event!(target: ACCESS_LOG_TARGET, parent: $parent, Level::INFO, $($rest)*)
            }
            _ => tracing::event!(target: ACCESS_LOG_TARGET, parent: $parent, Level::DEBUG, $($rest)*),
        }
    };
}

impl RequestInfo {
    /// The request's path, as `Uri::path` gave it.
    fn path(&self) -> &str {
        self.path.as_ref().map_or("", PathAndQuery::path)
    }

    fn level(&self, failed: bool) -> Level {
        if self.quiet {
            Level::DEBUG
        } else if failed {
            Level::ERROR
        } else {
            Level::INFO
        }
    }

    fn duration_ms(&self) -> f64 {
        self.started.elapsed().as_micros() as f64 / 1000.0
    }

    /// The ids as text (hex on the stack: no allocation).
    fn ids(&self) -> (Option<&str>, Option<HexId<32>>, Option<HexId<16>>) {
        match &self.ids {
            Some((request_id, trace_id, span_id)) => (
                Some(request_id.as_str()),
                Some(trace_id.to_hex()),
                Some(span_id.to_hex()),
            ),
            None => (None, None, None),
        }
    }

    fn log_error(&self, error: &(dyn Error + 'static)) {
        let (request_id, trace_id, span_id) = self.ids();
        let trace_id = trace_id.as_ref().map(HexId::as_str);
        let span_id = span_id.as_ref().map(HexId::as_str);
        let peer = self.peer.map(PeerText::new);
        // `client` and the tenant fields are inserted where the brackets are.
        macro_rules! access_line {
            ([$($client:tt)*] [$($tenant:tt)*]) => {
                access_event!(
                    self.level(true),
                    self.parent.id(),
                    method = self.method.as_str(),
                    route = self.route.as_ref().map(Route::as_str),
                    path = self.path(),
                    peer = peer.as_ref().map(PeerText::as_str),
                    $($client)*
                    duration_ms = self.duration_ms(),
                    error,
                    request_id,
                    trace_id,
                    span_id,
                    $($tenant)*
                    "request failed"
                )
            };
        }
        with_extra_fields!(self, access_line);
    }

    /// Whether the line has `client` (trusted proxies configured) or tenant fields (no
    /// request span records them). Most lines have neither: they are written by a callsite
    /// without those fields, as each field of an event costs its subscriber a visit even
    /// when empty.
    fn has_extra_fields(&self) -> bool {
        self.client.is_some() || self.tenant.is_some()
    }

    /// The tenant fields the line records itself (none inside the request span).
    fn tenant_fields(&self) -> TenantSpanFields<'_> {
        self.tenant
            .as_deref()
            .map(Tenant::span_fields)
            .unwrap_or_default()
    }
}

impl Pending {
    fn log(self, aborted: bool) {
        self.log_with(aborted, None);
    }

    /// The body failed while it was sent: the line says so at error, with the cause.
    fn log_failed(self, error: &(dyn Error + 'static)) {
        self.log_with(true, Some(error));
    }

    fn log_with(mut self, aborted: bool, error: Option<&(dyn Error + 'static)>) {
        // The trailers, when they came, ended the watch already. Otherwise the line tells
        // the code the metrics and the span record (`UNKNOWN`, `INTERNAL`, `CANCELLED`).
        if let Some(watch) = &self.watch {
            self.info.grpc = Some(end_without_trailers(watch, aborted, error.is_some()));
        }
        let answer = Answer {
            status: Some(self.info.status),
            grpc: self.info.grpc,
            error_code: self
                .answered
                .as_ref()
                .or_else(|| self.answered_later.as_ref()?.get())
                .map(AnsweredError::code),
        };
        self.info.log_completed(answer, self.bytes, aborted, error);
    }
}

/// Ends `watch` for a body that ended before trailers came: it failed, it was dropped, or it
/// simply ended.
#[inline(never)]
fn end_without_trailers(watch: &StreamEndWatch, aborted: bool, failed: bool) -> GrpcCode {
    let end = if failed {
        StreamEnd::Failed
    } else if aborted {
        StreamEnd::Dropped
    } else {
        StreamEnd::NoTrailers
    };
    watch.end(end);
    end.code()
}

impl RequestInfo {
    /// The access line: `status` is `None` when the response never came (its future dropped).
    /// A gRPC answer's level follows the HTTP status its code stands for; a body that failed
    /// (`error`) is logged at error whatever its status.
    fn log_completed(
        &self,
        answer: Answer<'_>,
        bytes_out: u64,
        aborted: bool,
        error: Option<&(dyn Error + 'static)>,
    ) {
        let Answer {
            status,
            grpc,
            error_code,
        } = answer;
        let judged = grpc.map(GrpcCode::http_status).or(status);
        let level = match judged.map(|status| status.as_u16()) {
            _ if error.is_some() => self.level(true),
            Some(500..) => self.level(true),
            Some(400..500) | None if !self.quiet => Level::WARN,
            _ => self.level(false),
        };
        let (request_id, trace_id, span_id) = self.ids();
        let trace_id = trace_id.as_ref().map(HexId::as_str);
        let span_id = span_id.as_ref().map(HexId::as_str);
        let peer = self.peer.map(PeerText::new);
        // `client` and the tenant fields are inserted where the brackets are.
        macro_rules! access_line {
            ([$($client:tt)*] [$($tenant:tt)*]) => {
                access_event!(
                    level,
                    self.parent.id(),
                    method = self.method.as_str(),
                    route = self.route.as_ref().map(Route::as_str),
                    path = self.path(),
                    peer = peer.as_ref().map(PeerText::as_str),
                    $($client)*
                    status = status.map(|status| status.as_u16()),
                    grpc_status = grpc.map(GrpcCode::value),
                    error_code,
                    duration_ms = self.duration_ms(),
                    bytes_out,
                    aborted = aborted.then_some(true),
                    error,
                    request_id,
                    trace_id,
                    span_id,
                    $($tenant)*
                    "request completed"
                )
            };
        }
        with_extra_fields!(self, access_line);
    }
}

//! The client side: a Tower layer for outgoing HTTP calls, a span for any other client, and a
//! plain [`inject`].

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use periscope_context::grpc::{
    GrpcCode, HeadOutcome, head_grpc_status, head_outcome, is_grpc_answer, is_grpc_request,
};
use periscope_context::{RequestContext, TenantKey, remove_absent_tenants};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use crate::binding::{ParentKind, bind, early_id, span_text};
use crate::client_body::{CLIENT_ERROR_FROM, ClientBody, Pending};
use crate::fields::{
    CLIENT_FIELDS, MAX_SERVER_ADDRESS_LEN, RedactedUrl, method_name, method_original,
    record_failure, record_grpc_code, record_plain_answer, record_status, server_port, span_method,
};
use crate::propagation::Propagators;
use crate::rpc::RpcName;
use crate::sampler::Sampler;

/// The tracing target of client spans.
pub const CLIENT_TARGET: &str = "periscope_trace::client";

/// Writes the current request's context into `headers` for a call made with any HTTP client
/// (reqwest and the like): `traceparent` naming the request's span as the parent, `tracestate`,
/// `baggage`, `x-request-id` and the tenant headers, in the process's formats
/// ([`Propagators::global`], `OTEL_PROPAGATORS`). Returns `false` (and writes nothing) outside
/// a request or job.
///
/// The callee's parent is then the request span itself. For a span of its own per call (a
/// fresh parent id per call, timed and exported), use [`ClientSpan`] instead.
///
/// ```
/// use http::HeaderMap;
/// use periscope_context::RequestContext;
///
/// let ctx = RequestContext::new_root();
/// let mut headers = HeaderMap::new();
/// assert!(ctx.in_scope(|| periscope_trace::inject(&mut headers)));
/// assert_eq!(headers["x-request-id"], ctx.request_id.as_str());
/// assert_eq!(headers["traceparent"], ctx.traceparent().to_string().as_str());
/// ```
///
/// The headers of the default tenant keys (`x-org-id`, `x-project-id`) the context has no
/// value for are removed, so a forwarded request does not carry its caller's tenant on; for
/// the service's other tenant keys use [`inject_with_tenant_keys`].
pub fn inject(headers: &mut HeaderMap) -> bool {
    inject_with_tenant_keys(headers, &[])
}

/// [`inject`] for a service with tenant keys of its own (`team_id`): the headers of `keys`
/// the context has no value for are removed too, as [`ClientTraceLayer::tenant_keys`] does,
/// so a request forwarded past a trust boundary (its headers copied) does not carry its
/// caller's `x-team-id` on.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use periscope_context::{RequestContext, TenantKey};
///
/// let team = TenantKey::new("team_id").unwrap();
/// let mut forwarded = HeaderMap::new();
/// forwarded.insert("x-team-id", HeaderValue::from_static("the-callers-team"));
/// let ctx = RequestContext::new_root();
/// assert!(ctx.in_scope(|| periscope_trace::inject_with_tenant_keys(&mut forwarded, &[team])));
/// assert!(forwarded.get("x-team-id").is_none());
/// ```
pub fn inject_with_tenant_keys(headers: &mut HeaderMap, keys: &[TenantKey]) -> bool {
    match RequestContext::current() {
        Some(ctx) => {
            periscope_context::inject(&ctx, headers);
            remove_absent_tenants(&ctx, headers, keys);
            Propagators::global().strip(headers);
            true
        }
        None => false,
    }
}

/// A client span for one outgoing call: its own span id (the parent id the callee receives),
/// timed from creation to drop, with the OpenTelemetry HTTP client fields.
///
/// [`ClientTraceLayer`] uses it for Tower clients; use it directly with any other client.
///
/// ```
/// use http::{HeaderMap, Method, StatusCode, Uri};
/// use periscope_context::RequestContext;
/// use periscope_trace::ClientSpan;
///
/// let request_ctx = RequestContext::new_root();
/// let uri: Uri = "http://inventory.internal/items/7".parse().unwrap();
///
/// let call = ClientSpan::child_of(&request_ctx, &Method::GET, &uri);
/// let mut headers = HeaderMap::new();
/// call.inject(&mut headers);
/// // ... send the request with these headers ...
/// call.record_status(StatusCode::OK);
///
/// assert_eq!(call.context().trace_id, request_ctx.trace_id);
/// assert_eq!(call.context().parent_span_id, Some(request_ctx.span_id));
/// assert_eq!(headers["traceparent"], call.context().traceparent().to_string().as_str());
/// ```
#[derive(Debug)]
pub struct ClientSpan {
    span: Span,
    context: RequestContext,
    /// `None`: the process's formats, [`Propagators::global`].
    propagators: Option<Propagators>,
    tenant_keys: Option<Arc<[TenantKey]>>,
}

impl ClientSpan {
    /// A span for a call made while handling the current request or job. Outside of one (a
    /// background task, startup code) the call starts a trace of its own, with a generated
    /// request id and this span as its root, so the sampler decides for it as for any new trace;
    /// with OpenTelemetry, a call made inside a span of the service's own that is exported
    /// joins that span's trace instead, as its child (its trace id not vouched random, so the
    /// W3C `random` flag is off).
    pub fn new(method: &Method, uri: &Uri) -> Self {
        Self::for_call(None, method, uri, None)
    }

    /// A span for a call made on behalf of `parent`.
    pub fn child_of(parent: &RequestContext, method: &Method, uri: &Uri) -> Self {
        Self::for_call(Some(parent), method, uri, None)
    }

    /// The span of a call made on behalf of `parent`, else of the current request or job, else
    /// of no one (a new trace); `rpc` names a gRPC call.
    fn for_call(
        parent: Option<&RequestContext>,
        method: &Method,
        uri: &Uri,
        rpc: Option<RpcName<'_>>,
    ) -> Self {
        let context = match parent {
            Some(parent) => parent.child(),
            None => match RequestContext::current() {
                Some(parent) => parent.child(),
                None => {
                    let mut root = RequestContext::new_root();
                    Sampler::global().apply(&mut root);
                    root
                }
            },
        };
        Self::with_context(context, method, uri, rpc)
    }

    /// The span for `context`, whose span id is the call's own.
    fn with_context(
        mut context: RequestContext,
        method: &Method,
        uri: &Uri,
        rpc: Option<RpcName<'_>>,
    ) -> Self {
        let method_original = method_original(method);
        let server_address = periscope_context::server_address(uri).map(|address| match address {
            Cow::Borrowed(address) => periscope_context::text::cut(address, MAX_SERVER_ADDRESS_LEN),
            Cow::Owned(address) => Cow::Owned(
                periscope_context::text::cut(&address, MAX_SERVER_ADDRESS_LEN).into_owned(),
            ),
        });
        let span = tracing::info_span!(
            target: CLIENT_TARGET,
            "http_client_request",
            otel.name = span_text(span_method(method_name(method))),
            otel.kind = span_text("client"),
            otel.status_code = Empty,
            http.request.method = span_text(method_name(method)),
            http.request.method_original = method_original.as_deref(),
            http.response.status_code = Empty,
            rpc.system = Empty,
            rpc.service = Empty,
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
            server.address = server_address.as_deref().map(span_text),
            server.port = server_port(uri).map(i64::from),
            // Only an absolute URL: a client that adds the server below this layer (a tonic
            // `Channel` without `with_origin`) sends a bare path, which is no `url.full`.
            url.full = uri.host().map(|_| tracing::field::display(RedactedUrl(uri))),
            error.type = Empty,
            request_id = %context.request_id,
            trace_id = early_id(context.trace_id),
            span_id = early_id(context.span_id),
            org_id = Empty,
            project_id = Empty,
            team_id = Empty,
            user_id = Empty,
            tenant_id = Empty,
            tenant = Empty,
        );
        if let Some(rpc) = rpc {
            rpc.record(&span);
            span.record("otel.name", tracing::field::display(rpc));
        }
        // A call inside a request keeps the request's decision; a new trace's was taken above.
        bind(&span, &mut context, ParentKind::Local, None, None);
        Self {
            span,
            context,
            propagators: None,
            tenant_keys: None,
        }
    }

    /// Sends only these formats (default: the process's, [`Propagators::global`]).
    pub fn with_propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = Some(propagators);
        self
    }

    /// The tenant keys whose headers belong to the context: removed from the outgoing request
    /// when the context has no value for them (default: `org_id`, `project_id`). Declare the
    /// same keys as the server layer's `tenant_keys`.
    pub fn with_tenant_keys(mut self, keys: impl IntoIterator<Item = TenantKey>) -> Self {
        self.tenant_keys = Some(keys.into_iter().collect());
        self
    }

    /// The context the callee receives: same trace and request id, this span as the parent.
    pub fn context(&self) -> &RequestContext {
        &self.context
    }

    /// The tracing span (to instrument the call's future with).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Writes `traceparent` (this span as the parent), `tracestate`, `baggage`,
    /// `x-request-id` and the tenant headers, replacing any already there; those the context
    /// has no value for are removed (a forwarded request's `tracestate`, say, belongs to the
    /// caller's trace, not to this call's).
    pub fn inject(&self, headers: &mut HeaderMap) {
        periscope_context::inject(&self.context, headers);
        if let Some(keys) = &self.tenant_keys {
            remove_absent_tenants(&self.context, headers, keys);
        }
        self.propagators
            .unwrap_or_else(Propagators::global)
            .strip(headers);
    }

    /// Records the response status (`otel.status_code` is `ERROR` for 4xx and 5xx).
    pub fn record_status(&self, status: StatusCode) {
        record_status(&self.span, &CLIENT_FIELDS, status, &HeaderMap::new(), 400);
    }

    /// Records the response status and, for a trailers-only gRPC answer (200 with a gRPC
    /// `content-type` and `grpc-status` in `headers`), `rpc.grpc.status_code`; any code but
    /// `OK` is an error, as the gRPC conventions want for client spans. A `grpc-status` without
    /// a gRPC `content-type` (a proxy's plain HTTP answer) is not read: the status judges it.
    ///
    /// ```
    /// use http::{HeaderMap, Method, StatusCode, Uri};
    /// use periscope_trace::ClientSpan;
    ///
    /// let uri: Uri = "http://inventory.internal/inventory.v1.Items/Get".parse().unwrap();
    /// let call = ClientSpan::new(&Method::POST, &uri);
    /// let mut headers = HeaderMap::new();
    /// headers.insert("content-type", "application/grpc".parse().unwrap());
    /// headers.insert("grpc-status", "5".parse().unwrap()); // NOT_FOUND
    /// call.record_response(StatusCode::OK, &headers);
    /// ```
    pub fn record_response(&self, status: StatusCode, headers: &HeaderMap) {
        record_status(&self.span, &CLIENT_FIELDS, status, headers, 400);
    }

    /// Records a call that got no response (connection refused, timeout, ...).
    pub fn record_error(&self) {
        record_failure(&self.span, &CLIENT_FIELDS, "_OTHER");
    }
}

/// Propagates the request's context on outgoing calls made through a Tower HTTP client
/// (hyper-util's client, tonic channels, ...), each call under a [`ClientSpan`] of its own.
///
/// The parent is the [`RequestContext`] in the outgoing request's extensions when there is
/// one, else the [current](RequestContext::current) one (the request or job being handled).
/// While the client below takes the call, the call's own context (its trace, its span as the
/// parent) is [current](RequestContext::current), for the layers under this one.
/// Put this layer outermost, outside `tower::buffer::Buffer` and anything else that calls the
/// inner service on another task, where no request is current.
///
/// A gRPC call (a `POST` with a gRPC `content-type`, as a tonic channel sends) to
/// `/package.Service/Method` (each segment at most 128 ASCII letters, digits, `_` or `.`) is
/// named `package.Service/Method` and records `rpc.system`, `rpc.service` and `rpc.method`, as the
/// OpenTelemetry RPC conventions want; any other call keeps the HTTP name (`{method}`).
///
/// The span covers the whole answer, as tower-http's trace layer does: the answer's body is a
/// [`ClientBody`], polled inside the span, which ends when the body does (at once for an
/// answer without one: `HEAD`, 204, 304). The head records the status (and the code of a
/// trailers-only gRPC answer); the body records what comes after it: the code a gRPC call's
/// trailers bring, a body that fails, a gRPC call cancelled by dropping its body (see
/// [`ClientBody`]). A body kept unread keeps its span open: read it to its end or drop it.
/// Only a call sent as gRPC (a gRPC `content-type`) is judged by gRPC's rules: a plain call
/// whose answer says `application/grpc` (a misconfigured proxy) is judged by its status.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use periscope_context::{RequestContext, TraceParent};
/// use periscope_trace::ClientTraceLayer;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // Stands in for hyper-util's client: answers with the traceparent it was sent.
/// let transport = service_fn(|request: Request<String>| async move {
///     let sent = request.headers()["traceparent"].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(Response::new(sent))
/// });
/// let client = ClientTraceLayer::new().layer(transport);
///
/// let ctx = RequestContext::new_root();
/// let request = Request::get("http://callee.internal/").body(String::new()).unwrap();
/// let response = ctx.clone().scope(client.oneshot(request)).await.unwrap();
/// // The answer's body is a `ClientBody`, which keeps the call's span until it ends.
/// let sent = TraceParent::parse(response.body().get_ref()).unwrap();
/// assert_eq!(sent.trace_id, ctx.trace_id);
/// assert_ne!(sent.parent_id, ctx.span_id); // the client span's own id
/// # });
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClientTraceLayer {
    propagators: Option<Propagators>,
    tenant_keys: Option<Arc<[TenantKey]>>,
}

impl ClientTraceLayer {
    /// The layer, sending the process's formats ([`Propagators::global`]: W3C Trace Context
    /// and Baggage unless `OTEL_PROPAGATORS` said otherwise).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends only these formats, whatever the process's are.
    pub fn propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = Some(propagators);
        self
    }

    /// The tenant keys whose headers belong to the context (default: `org_id`, `project_id`):
    /// each call sends the context's values and removes the headers it has none for. Declare
    /// the same keys as the server layer's `tenant_keys`.
    pub fn tenant_keys(mut self, keys: impl IntoIterator<Item = TenantKey>) -> Self {
        self.tenant_keys = Some(keys.into_iter().collect());
        self
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace {
            inner,
            propagators: self.propagators,
            tenant_keys: self.tenant_keys.clone(),
        }
    }
}

/// The service made by [`ClientTraceLayer`].
#[derive(Clone, Debug)]
pub struct ClientTrace<S> {
    inner: S,
    propagators: Option<Propagators>,
    tenant_keys: Option<Arc<[TenantKey]>>,
}

impl<S, B, ResBody> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ClientBody<ResBody>>;
    type Error = S::Error;
    type Future = ClientResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let rpc = RpcName::of_request(
            request.method(),
            request.headers(),
            None,
            request.uri().path(),
        );
        let grpc = is_grpc_request(request.headers());
        let mut call = ClientSpan::for_call(
            request.extensions().get::<RequestContext>(),
            request.method(),
            request.uri(),
            rpc,
        );
        call.propagators = self.propagators;
        call.tenant_keys.clone_from(&self.tenant_keys);
        call.inject(request.headers_mut());
        // Still armed if the client's `call` panics: the call failed without an answer (as
        // `ClientMetricsLayer` counts it), its span must not close without an outcome.
        let unwinding = FailOnDrop(&call.span);
        // The call's own context is current while the client below takes the call, so a
        // layer there (`ClientMetricsLayer`'s exemplar) sees the call's trace, also the one it
        // starts outside any request, where no other context is current.
        let future = call
            .context
            .in_scope(|| call.span.in_scope(|| self.inner.call(request)));
        std::mem::forget(unwinding);
        ClientResponseFuture {
            inner: future,
            call,
            grpc,
            done: false,
            in_client: false,
        }
    }
}

/// Records a failed call (`_OTHER`) on the span when dropped.
struct FailOnDrop<'a>(&'a Span);

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        record_failure(self.0, &CLIENT_FIELDS, "_OTHER");
    }
}

/// The response future of [`ClientTrace`].
#[pin_project::pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct ClientResponseFuture<F> {
    #[pin]
    inner: F,
    call: ClientSpan,
    /// Whether the call was sent as gRPC: only then is its answer judged by gRPC's rules.
    grpc: bool,
    done: bool,
    /// Set while the client's future is polled: still set when the future is dropped, the
    /// client panicked, whether or not the panic is still unwinding (a layer that catches
    /// panics around a poll drops the future afterwards).
    in_client: bool,
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for ClientResponseFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if !*this.done {
            // Dropped before the answer: the client panicked (a failure without an answer,
            // as for a transport error), else a timeout or a cancellation around the call.
            // Either way the call failed; its span must not read as a success. A gRPC call
            // cancelled so is `CANCELLED`, as one whose answer is dropped before its trailers
            // and as the server's span records it.
            if *this.in_client {
                record_failure(&this.call.span, &CLIENT_FIELDS, "_OTHER");
            } else if *this.grpc {
                record_grpc_code(
                    &this.call.span,
                    &CLIENT_FIELDS,
                    GrpcCode::CANCELLED,
                    CLIENT_ERROR_FROM,
                );
            } else {
                record_failure(&this.call.span, &CLIENT_FIELDS, "cancelled");
            }
        }
    }
}

impl<F, ResBody, E> Future for ClientResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ClientBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.call.span.enter();
        *this.in_client = true;
        let result = this.inner.poll(cx);
        *this.in_client = false;
        let result = ready!(result);
        *this.done = true;
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                this.call.record_error();
                return Poll::Ready(Err(error));
            }
        };
        let span = &this.call.span;
        // A plain call's answer that calls itself gRPC (a misconfigured proxy) is judged by
        // its status, as any HTTP answer: its `grpc-status`, or the trailers it lacks, are no
        // outcome of a call that was not gRPC.
        let no_headers = HeaderMap::new();
        let head = if *this.grpc {
            response.headers()
        } else {
            &no_headers
        };
        let outcome = head_outcome(response.status(), head);
        let failed = if *this.grpc
            && outcome == HeadOutcome::Status
            && !is_grpc_answer(response.status(), head)
        {
            // A gRPC call answered by no gRPC server (a proxy's page, an ingress's 503): the
            // code its caller reads, the head's `grpc-status` (NGINX's gRPC error pages) or
            // else gRPC's mapping of the HTTP status. A gRPC-Web answer, whose code comes at
            // the end of its body, is judged as the 200 it is.
            let code = head_grpc_status(head)
                .unwrap_or_else(|| GrpcCode::of_plain_answer(response.status()));
            record_plain_answer(span, &CLIENT_FIELDS, response.status(), code);
            true
        } else {
            record_status(
                span,
                &CLIENT_FIELDS,
                response.status(),
                head,
                CLIENT_ERROR_FROM,
            )
        };
        let pending = match outcome {
            // The code comes in the trailers, after the messages: recorded by the body.
            HeadOutcome::Trailers => Pending::GrpcCode,
            HeadOutcome::Status | HeadOutcome::Code(_) => Pending::End { failed },
        };
        drop(entered);
        // The body keeps the span, which ends with it: a streamed answer's frames come after
        // this future is done.
        let span = std::mem::replace(&mut this.call.span, Span::none());
        Poll::Ready(Ok(response.map(|body| ClientBody::new(body, span, pending))))
    }
}

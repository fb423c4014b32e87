//! The server layer: request id, W3C trace context, tenant fields and one span per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use periscope_context::grpc::{
    GrpcCode, HeadOutcome, StreamEndWatch, answer_code, head_outcome, is_grpc_content_type,
    is_grpc_request,
};
use periscope_context::{
    Baggage, ClientAddr, ExtractOptions, Extracted, MatchedRoute, PeerAddr, RequestContext,
    RequestId, RequestIdOrigin, RouteTemplates, TenantKey, TraceId, TrustedProxies, WithContext,
    extract,
    headers::X_REQUEST_ID,
    order::{ContextFromErrorLayer, Misordering},
};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use crate::binding::{ParentKind, bind, early_id, rename, span_text};
use crate::body::CorrelationBody;
use crate::fields::{
    MAX_URL_PATH_LEN, SERVER_FIELDS, method_name, method_original, record_failure,
    record_grpc_code, record_status, span_method,
};
use crate::propagation::Propagators;
use crate::rejected::warn_rejected;
use crate::rpc::RpcName;
use crate::sampler::Sampler;
use crate::selector::PathSelector;
use crate::trust::Trust;

/// The tracing target of the server span and of the layer's warnings.
pub const SERVER_TARGET: &str = periscope_context::SERVER_SPAN_TARGET;

/// The name of the server span (`otel.name` carries the name it is exported under).
const SERVER_SPAN: &str = periscope_context::SERVER_SPAN_NAME;

/// Correlation and tracing for incoming HTTP requests: the outermost periscope layer.
///
/// For every request it:
/// - keeps a valid `x-request-id` (else `x-correlation-id`), or generates one; an invalid id is
///   replaced and the replacement logged once at warn; the request's `x-request-id` header is
///   set to the id chosen, so code inside that reads the header sees it too;
/// - continues a valid W3C `traceparent` (with its `tracestate` and `baggage`) under a new
///   span, or starts a new trace; see [`Trust`] for public endpoints;
/// - reads the tenant headers (`x-org-id`, `x-project-id` by default), validated like the
///   request id;
/// - opens a server span named `{method} {route}` (or `{method}` when no route template is
///   known; `HTTP` for a method recorded as `_OTHER`) with the OpenTelemetry HTTP fields and
///   `request_id`, `trace_id`, `span_id` and the tenant fields; with the `otel` feature the
///   `trace_id` / `span_id` are those of the exported span. A gRPC call (a `POST` with a gRPC
///   `content-type`) to `/package.Service/Method` (the route template, else the path; each
///   segment at most 128 ASCII letters, digits, `_` or `.`) is named `package.Service/Method`
///   instead and records `rpc.system`, `rpc.service` and `rpc.method` too (named after its
///   path rather than a route template, a call answered `UNIMPLEMENTED` in its head is
///   renamed `POST`, so made-up methods add no span names);
/// - with [`trusted_proxies`](CorrelationLayer::trusted_proxies), works out the client's
///   address ([`TrustedProxies::client_addr`]), records it as `client.address` and puts it in
///   the request extensions as a [`ClientAddr`] (the access log's `client`);
/// - stores the [`RequestContext`] in the request extensions and makes it
///   [current](RequestContext::current) while the inner service runs;
/// - echoes the request id in `x-request-id` on every response the inner service returns
///   (compose a panic catcher inside this layer so panics become responses too; without one,
///   a panic of the service or of its body fails the span, a gRPC call's as `INTERNAL`);
/// - keeps the span and the context with the response body, a [`CorrelationBody`]: the body is
///   polled inside the span with the context current (what a streamed body logs while its
///   frames are made carries the request's ids), and the span ends when the body does.
///
/// A gRPC answer is judged by the HTTP status its code stands for. When that code comes in
/// the trailers, after streamed messages (HTTP 200, `application/grpc`, no `grpc-status` in
/// its head), the span stays open until the body ends and then records `rpc.grpc.status_code`,
/// and `otel.status_code` `ERROR` with `error.type` the code's name for the server-error codes
/// (`UNKNOWN` when no code comes, `INTERNAL` when the body fails, `CANCELLED`, not a failure,
/// when it is dropped first). The trailers are read by periscope-log's `AccessLogLayer`, which
/// tells this layer through a [`StreamEndWatch`] in the response's extensions: compose it
/// inside, as `periscope`'s `obs.layer()` does. Without it such a call is judged by its head,
/// as the 200 it was then. The body's frames are the inner service's, untouched.
///
/// Probe and scrape paths get the request id and context but no span (see [`PathSelector`]).
///
/// Composed out of the documented order (`docs/ordering.md`), it warns once per process under
/// the target `periscope::order`: with periscope-log's
/// `AccessLogLayer` outside it, and with periscope-error's `ErrorLayer` outside it, whose
/// request id (and, for a trace started here, trace id) it then takes so the envelope and the
/// log lines agree.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use periscope_context::RequestContext;
/// use periscope_trace::CorrelationLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let service = ServiceBuilder::new()
///     .layer(CorrelationLayer::new())
///     .service(service_fn(|request: Request<String>| async move {
///         let ctx = request.extensions().get::<RequestContext>().unwrap();
///         assert_eq!(ctx.request_id.as_str(), "order-42");
///         // Deep inside the handler, without the request at hand:
///         assert_eq!(RequestContext::current().unwrap().request_id.as_str(), "order-42");
///         Ok::<_, Infallible>(Response::new(String::new()))
///     }));
///
/// let request = Request::builder()
///     .uri("/orders")
///     .header("x-request-id", "order-42")
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .body(String::new())
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["x-request-id"], "order-42");
/// # });
/// ```
#[derive(Clone, Debug, Default)]
pub struct CorrelationLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug, Default)]
struct Config {
    extract: ExtractOptions,
    quiet: PathSelector,
    trust: Trust,
    /// `None`: the process's formats, [`Propagators::global`].
    propagators: Option<Propagators>,
    /// `None`: the process's sampler, [`Sampler::global`].
    sampler: Option<Sampler>,
    routes: RouteTemplates,
    forwarded_scheme: bool,
    trusted_proxies: TrustedProxies,
}

impl CorrelationLayer {
    /// The defaults: trust incoming traces, tenant fields `org_id` and `project_id`, sampling
    /// by the process's sampler ([`Sampler::global`]: new traces sampled unless set otherwise),
    /// probe and scrape paths quiet.
    pub fn new() -> Self {
        Self::default()
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The tenant fields to read, record and propagate (default: `org_id`, `project_id`).
    pub fn tenant_keys(mut self, keys: impl IntoIterator<Item = TenantKey>) -> Self {
        self.config_mut().extract.tenant_keys = keys.into_iter().collect();
        self
    }

    /// Whether traces started here are sampled when no OpenTelemetry sampler decides: a
    /// shorthand for [`sampler`](Self::sampler) with `parentbased_always_on` or
    /// `parentbased_always_off`.
    pub fn sample_new_traces(self, sampled: bool) -> Self {
        self.sampler(if sampled {
            Sampler::ParentBasedAlwaysOn
        } else {
            Sampler::ParentBasedAlwaysOff
        })
    }

    /// Which requests are sampled where no OpenTelemetry sampler decides (a build without the
    /// `otel` feature, or one that exports nothing): the `sampled` flag of the context, of the
    /// `traceparent` sent downstream and of the exemplars (default: the process's,
    /// [`Sampler::global`], which periscope's `init` sets from `OTEL_TRACES_SAMPLER`). Where
    /// an OpenTelemetry layer exports the span, its tracer provider's sampler decides.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.config_mut().sampler = Some(sampler);
        self
    }

    /// The requests that get no span (default: [`PathSelector::default`]).
    pub fn quiet(mut self, selector: PathSelector) -> Self {
        self.config_mut().quiet = selector;
        self
    }

    /// The formats read from requests (default: the process's, [`Propagators::global`]: W3C
    /// Trace Context and Baggage unless `OTEL_PROPAGATORS` said otherwise).
    pub fn propagators(mut self, propagators: Propagators) -> Self {
        self.config_mut().propagators = Some(propagators);
        self
    }

    /// The route templates of a service without axum (`/users/{id}`): the span is named after
    /// the template a request matches, and the match goes into the request's extensions as a
    /// [`MatchedRoute`] for the layers inside (metrics, access log). axum's
    /// `MatchedPath` comes first when present.
    pub fn route_templates(mut self, routes: RouteTemplates) -> Self {
        self.config_mut().routes = routes;
        self
    }

    /// Whether incoming traces are continued (default: [`Trust::Incoming`]).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.config_mut().trust = trust;
        self
    }

    /// Behind a TLS-terminating proxy: take `url.scheme` from the first element of
    /// `Forwarded: proto=`, else of `X-Forwarded-Proto`, when it is `http` or `https`
    /// (default: off, the request URI's scheme when it is `http` or `https`, else `http`).
    /// Turn it on where a proxy you run sets these headers: any client can send them, and the
    /// lookups cost every request.
    pub fn forwarded_scheme(mut self, on: bool) -> Self {
        self.config_mut().forwarded_scheme = on;
        self
    }

    /// The networks of the proxies in front of the service and the header they set (default:
    /// none). With some, the span records the client's address as `client.address`, by the
    /// rule of [`TrustedProxies::client_addr`] (the one forwarding header chosen with
    /// [`TrustedProxies::with_forwarding_header`], read only from a trusted peer), and
    /// the request's extensions hold it as a [`ClientAddr`]. The peer comes from
    /// [`PeerAddr`] (`periscope::Server`) or axum's `ConnectInfo`; without one, nothing is
    /// recorded. Without networks the layer reads neither the peer nor the headers.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.config_mut().trusted_proxies = proxies;
        self
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = Correlation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Correlation {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`CorrelationLayer`].
#[derive(Clone, Debug)]
pub struct Correlation<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, ResBody> Service<Request<B>> for Correlation<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<CorrelationBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Applied twice (the stack on a nested router and on the outer one): the layer
        // outside already made the request's context and span. A second span would start a
        // second trace for the same request (no `traceparent` came with it), so the request
        // goes through under the context it has. Looked for only where a context is already
        // there: a marker of its own would cost every request an insertion.
        let mut from_error_layer = None;
        match request.extensions().get::<RequestContext>() {
            // On a quiet path no server span is opened, so the outer layer is told by its
            // context alone (one made by an error layer outside is taken below instead).
            Some(ctx)
                if in_server_span()
                    || request.extensions().get::<MadeWithoutSpan>().is_some()
                    || made_by_current_layer(&request, ctx)
                    || (self.config.quiet.is_quiet(request.uri().path())
                        && request
                            .extensions()
                            .get::<ContextFromErrorLayer>()
                            .is_none()) =>
            {
                let ctx = ctx.clone();
                let inner = &mut self.inner;
                return ResponseFuture {
                    inner: WithContext::new_in_scope(Arc::new(ctx), || inner.call(request)),
                    span: Span::none(),
                    named_by_client: false,
                    grpc_unanswered: false,
                    in_service: false,
                };
            }
            Some(_) => from_error_layer = error_layer_context(&request),
            // An access log outside this layer writes its line outside the request span,
            // without the ids (one lookup: no insertion, no allocation). Not looked for under
            // a context: the stack applied twice on a quiet path (no span) has one outside.
            None => {
                let observed = request.extensions().get::<periscope_context::Observed>();
                if observed.is_some_and(|observed| observed.logged) {
                    warn_misordered(Misordering::AccessLogOutsideCorrelation);
                }
            }
        }
        let config = &*self.config;
        // Kept in place rather than taken apart: the context moved out is copied (160 bytes).
        let mut extracted = extract(request.headers(), &config.extract);
        let Extracted {
            context: ctx,
            request_id: request_id_origin,
            request_id_from_header,
            incoming,
            rejected_tenant,
            ..
        } = &mut extracted;
        let request_id_from_header = *request_id_from_header;
        // A trace started here is sampled or not by the sampler, when the span is bound.
        let sample_new = true;
        let propagators = config.propagators.unwrap_or_else(Propagators::global);
        let mut link = None;
        if !config.trust.continues(request.headers()) {
            // A trust boundary: a new trace under the kept request id, the caller's as a link
            // (when trace context is read at all). Every tenant header is dropped here, valid
            // or not: none is worth a warning.
            *ctx = RequestContext::start(ctx.request_id.clone(), sample_new);
            link = incoming.filter(|_| propagators.trace_context());
            rejected_tenant.clear();
        } else if !propagators.trace_context() {
            // Trace context is not propagated: a new trace, the rest of the context kept.
            let mut fresh = RequestContext::start(ctx.request_id.clone(), sample_new);
            fresh.baggage = std::mem::take(&mut ctx.baggage);
            fresh.tenant = std::mem::take(&mut ctx.tenant);
            *ctx = fresh;
        }
        if !propagators.baggage() {
            ctx.baggage = Baggage::new();
        }
        if let Some(outer) = from_error_layer {
            adopt_ids(ctx, outer);
        }

        let path = request.uri().path();
        let known = route_template(&request);
        let matched = match known {
            None if !config.routes.is_empty() => config.routes.matched(path),
            _ => None,
        };
        let mut named_by_client = false;
        let mut grpc = false;
        let span = if config.quiet.is_quiet(path) {
            // No span is exported for a probe, so calls it makes must not be sampled either:
            // they would be exported under a parent that does not exist.
            ctx.trace_flags = ctx.trace_flags.with_sampled(false);
            Span::none()
        } else {
            let route = known.or(matched.as_ref().map(MatchedRoute::as_str));
            let scheme = if config.forwarded_scheme {
                forwarded_scheme(request.headers())
            } else {
                None
            };
            // A gRPC call to any path, shaped `/package.Service/Method` or not: one dropped
            // before its head was cancelled by its client, which its span says.
            grpc = request.method() == http::Method::POST && is_grpc_request(request.headers());
            let rpc = grpc.then(|| RpcName::of(route, path)).flatten();
            named_by_client = rpc.is_some() && route.and_then(RpcName::parse).is_none();
            let span = server_span(&request, path, route, rpc, scheme, ctx);
            let sampler = config.sampler.unwrap_or_else(Sampler::global);
            bind(&span, ctx, ParentKind::Remote, link.as_ref(), Some(sampler));
            span
        };
        if let Some(matched) = matched {
            request.extensions_mut().insert(matched);
        }
        // `is_disabled`, not `is_none`: a span the subscriber turned down is no span either
        // (with tracing's `log` feature it is not `Span::none()`).
        if span.is_disabled() {
            made_without_span(&mut request);
        }
        if !config.trusted_proxies.is_empty() {
            client_addr(&mut request, &config.trusted_proxies, &span);
        }
        if !matches!(
            request_id_origin,
            RequestIdOrigin::Kept | RequestIdOrigin::Generated
        ) || !rejected_tenant.is_empty()
        {
            warn_rejected_headers(&span, ctx, request_id_origin, rejected_tenant);
        }

        if !request_id_from_header {
            // Code inside (tower-http's request-id layers, a proxy forwarding the headers)
            // reads the id every periscope signal carries, not a missing, invalid or other one.
            request
                .headers_mut()
                .insert(X_REQUEST_ID, ctx.request_id.header_value().clone());
        }
        request.extensions_mut().insert(ctx.clone());
        let shared = Arc::new(extracted.context);
        let inner = &mut self.inner;
        // Entered here rather than through `Span::in_scope`, which is not inlined: its closure
        // would move the request once more (some 60 instructions a request).
        let entered = span.enter();
        let future = WithContext::new_in_scope(shared, || inner.call(request));
        drop(entered);
        ResponseFuture {
            inner: future,
            span,
            named_by_client,
            grpc_unanswered: grpc,
            in_service: false,
        }
    }
}

/// Marks a request whose context this layer made without a server span (a quiet path, or a
/// span no subscriber takes): a layer applied again inside, on a nested router that sees the
/// path without its prefix (not quiet to it), knows the context is the outer layer's. Only
/// such requests pay for the insertion.
#[derive(Clone, Copy, Debug)]
struct MadeWithoutSpan;

#[cold]
#[inline(never)]
fn made_without_span<B>(request: &mut Request<B>) {
    request.extensions_mut().insert(MadeWithoutSpan);
}

/// Whether the current span is a server span of this layer: the request is being served by
/// a [`Correlation`] outside, which made its context (a layer that only puts a context in the
/// extensions, such as the error layer on its own, opens no such span).
#[cold]
fn in_server_span() -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .current_span()
            .metadata()
            .is_some_and(|span| span.target() == SERVER_TARGET && span.name() == SERVER_SPAN)
    })
}

/// Whether `ctx` is the context a layer outside made current for this request: with a layer
/// between the two that enters a span of its own (tower-http's `TraceLayer`), the current span
/// is that one, not the outer server span, while the outer context is still current. An error
/// layer outside makes its own context current too; that one is taken below instead.
#[cold]
fn made_by_current_layer<B>(request: &Request<B>, ctx: &RequestContext) -> bool {
    request
        .extensions()
        .get::<ContextFromErrorLayer>()
        .is_none()
        && RequestContext::current().is_some_and(|current| {
            current.span_id == ctx.span_id
                && current.trace_id == ctx.trace_id
                && current.request_id == ctx.request_id
        })
}

/// The context an error layer outside made, out of the documented order (it found none):
/// warned once; its ids are taken, so the envelope and the log lines agree. Its trace id only
/// when it started the trace: one it continued is the caller's, which this layer may not
/// continue (a trust boundary, trace context not propagated).
#[cold]
#[inline(never)]
fn error_layer_context<B>(request: &Request<B>) -> Option<(RequestId, Option<TraceId>)> {
    request.extensions().get::<ContextFromErrorLayer>()?;
    warn_misordered(Misordering::ErrorOutsideCorrelation);
    let ctx = request.extensions().get::<RequestContext>()?;
    let started = ctx.parent_span_id.is_none().then_some(ctx.trace_id);
    Some((ctx.request_id.clone(), started))
}

/// Takes the request id an error layer outside chose (kept from the same header, or generated)
/// and, for a trace both started, its trace id: the ids its envelope carries.
/// With the `otel` feature the exported span's trace id wins.
#[cold]
#[inline(never)]
fn adopt_ids(ctx: &mut RequestContext, (request_id, trace_id): (RequestId, Option<TraceId>)) {
    ctx.request_id = request_id;
    if let Some(trace_id) = trace_id
        && ctx.parent_span_id.is_none()
    {
        ctx.trace_id = trace_id;
    }
}

/// Warns, once per process, that two periscope layers are composed out of order.
#[cold]
#[inline(never)]
fn warn_misordered(misordering: Misordering) {
    periscope_context::warn_misordered!(misordering);
}

/// Puts the client's address in the request's extensions and records it on `span`; out of
/// line, as only services behind trusted proxies do it.
#[inline(never)]
fn client_addr<B>(request: &mut Request<B>, proxies: &TrustedProxies, span: &Span) {
    let peer = PeerAddr::of(request);
    #[cfg(feature = "axum")]
    let peer = peer.or_else(|| {
        request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0)
    });
    let Some(peer) = peer else { return };
    let client = proxies.client_addr(peer.ip(), request.headers());
    span.record("client.address", tracing::field::display(client));
    request.extensions_mut().insert(ClientAddr(client));
}

/// The warnings about headers that were sent but could not be used: out of line, since
/// nearly every request has none. A client may send any `traceparent`: restarting is the W3C
/// rule, not worth a warning.
#[cold]
#[inline(never)]
fn warn_rejected_headers(
    span: &Span,
    ctx: &RequestContext,
    request_id: &RequestIdOrigin,
    rejected_tenant: &[(TenantKey, periscope_context::InvalidId)],
) {
    warn_rejected!(SERVER_TARGET, span, ctx, request_id, rejected_tenant, None);
}

fn server_span<B>(
    request: &Request<B>,
    path: &str,
    route: Option<&str>,
    rpc: Option<RpcName<'_>>,
    forwarded_scheme: Option<&'static str>,
    ctx: &RequestContext,
) -> Span {
    let method = method_name(request.method());
    // The client's own text, bounded: it is kept (and exported) with the span.
    let method_original = method_original(request.method());
    let path = periscope_context::text::cut(path, MAX_URL_PATH_LEN);
    let span = tracing::info_span!(
        target: SERVER_TARGET,
        SERVER_SPAN,
        otel.name = %SpanName { method, route, rpc },
        otel.kind = span_text("server"),
        otel.status_code = Empty,
        http.request.method = span_text(method),
        http.request.method_original = method_original.as_deref(),
        http.route = route.map(span_text),
        http.response.status_code = Empty,
        rpc.system = Empty,
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
        url.path = span_text(&path),
        // Recorded only behind trusted proxies (`CorrelationLayer::trusted_proxies`).
        client.address = Empty,
        // An absolute-form target names any scheme the client likes (`javascript://x/`):
        // only `http` and `https` are taken from it, as from the proxy headers.
        url.scheme = span_text(
            forwarded_scheme
                .or_else(|| known_scheme(request.uri().scheme_str()?.as_bytes()))
                .unwrap_or("http")
        ),
        error.type = Empty,
        request_id = %ctx.request_id,
        trace_id = early_id(ctx.trace_id),
        span_id = early_id(ctx.span_id),
        org_id = Empty,
        project_id = Empty,
        team_id = Empty,
        user_id = Empty,
        tenant_id = Empty,
        tenant = Empty,
        link.trace_id = Empty,
        link.span_id = Empty,
    );
    if let Some(rpc) = rpc {
        rpc.record(&span);
    }
    span
}

/// The scheme a proxy says the client used: the first, client-side element of
/// `Forwarded: proto=`, else of `X-Forwarded-Proto`; only `http` and `https` are taken, so a
/// caller cannot put arbitrary text in the field.
fn forwarded_scheme(headers: &http::HeaderMap) -> Option<&'static str> {
    headers
        .get(http::header::FORWARDED)
        .and_then(|value| forwarded_proto(value.as_bytes()))
        .or_else(|| {
            let value = headers.get(X_FORWARDED_PROTO)?.as_bytes();
            let first = value.split(|&b| b == b',').next()?;
            known_scheme(first.trim_ascii())
        })
}

const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// The `proto` parameter of the first element of a `Forwarded` header (RFC 7239).
fn forwarded_proto(value: &[u8]) -> Option<&'static str> {
    let first = value.split(|&b| b == b',').next()?;
    first.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let at = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
        if !name.eq_ignore_ascii_case(b"proto") {
            return None;
        }
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        known_scheme(value)
    })
}

fn known_scheme(value: &[u8]) -> Option<&'static str> {
    if value.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if value.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// `{method} {route}`, or `{method}` without a route template (`HTTP` for a method recorded as
/// `_OTHER`), or a gRPC call's `package.Service/Method`: formatted only by a layer that reads
/// `otel.name`, not on every request.
struct SpanName<'a> {
    method: &'static str,
    route: Option<&'a str>,
    rpc: Option<RpcName<'a>>,
}

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(rpc) = self.rpc {
            return rpc.fmt(f);
        }
        match self.route {
            Some(route) => write!(f, "{} {route}", span_method(self.method)),
            None => f.write_str(span_method(self.method)),
        }
    }
}

/// The route template already known: axum's matched route, or one an outer layer matched.
fn route_template<B>(request: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    MatchedRoute::of(request.extensions())
}

/// The response future of [`Correlation`].
#[pin_project::pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F> {
    // Declared before `span`, so dropped first: the access log inside names the span as its
    // line's parent by id alone, without a handle that would keep it open
    // (`periscope_context::SERVER_SPAN_TARGET`).
    #[pin]
    inner: WithContext<F>,
    span: Span,
    /// The span is named after a gRPC path no route template vouches for.
    named_by_client: bool,
    /// A gRPC call with a span, not answered yet: dropped so, the client cancelled it.
    grpc_unanswered: bool,
    /// Set while the inner future is polled: still set when the future is dropped, the
    /// service panicked (with no panic catcher inside this layer), whether the panic still
    /// unwinds or a layer outside caught it.
    in_service: bool,
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for ResponseFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if *this.in_service {
            // No answer, and not the client's doing: a failure, as the metrics count it (a
            // gRPC call as the `INTERNAL` its client is told).
            if *this.grpc_unanswered {
                record_grpc_code(this.span, &SERVER_FIELDS, GrpcCode::INTERNAL, 500);
            } else {
                record_failure(this.span, &SERVER_FIELDS, "_OTHER");
            }
        } else if *this.grpc_unanswered {
            // Dropped before its head: the client cancelled the call (its deadline, a reset),
            // which its server span says as a stream cancelled mid-way does, code 1 and not
            // failed, agreeing with the metrics' `cancelled`.
            record_grpc_code(this.span, &SERVER_FIELDS, GrpcCode::CANCELLED, 500);
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<CorrelationBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let entered = this.span.enter();
        *this.in_service = true;
        let result = this.inner.as_mut().poll(cx);
        *this.in_service = false;
        let result = ready!(result);
        let grpc = std::mem::replace(this.grpc_unanswered, false);
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                record_failure(this.span, &SERVER_FIELDS, "_OTHER");
                return Poll::Ready(Err(error));
            }
        };
        let span = &*this.span;
        if *this.named_by_client && !answers_the_method(&response) {
            // A method the service does not have keeps the HTTP name: named by its path, any
            // caller could add span names without end.
            rename(span, "POST");
        }
        let mut watched = false;
        let mut failed = false;
        match response.extensions().get::<StreamEndWatch>() {
            // A gRPC call whose code comes in its trailers, after its messages: the access log
            // inside watches its body (the watch, in the response's extensions, comes with no
            // other answer) and records the code when the body ends.
            Some(watch)
                if head_outcome(response.status(), response.headers()) == HeadOutcome::Trailers =>
            {
                span.record(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
                if !span.is_disabled() {
                    let span = span.clone();
                    watch.on_end(move |end| {
                        record_grpc_code(&span, &SERVER_FIELDS, end.code(), 500)
                    });
                    watched = true;
                }
            }
            // Judged by its head: without a watch, a call whose code comes in its trailers is
            // the 200 it was then.
            _ => {
                // An answer already failed by its head keeps that status as its `error.type`
                // when its body is cut after it (an upstream's 502 relayed), as a client span
                // does: recorded twice, the exported span would carry the attribute twice.
                // An interim status as the final answer never reaches the client as such:
                // hyper sends a 500 (or resets an HTTP/2 stream), as the metrics count it.
                let status = match response.status() {
                    status
                        if status.is_informational()
                            && status != http::StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    }
                    status => status,
                };
                failed = record_status(span, &SERVER_FIELDS, status, response.headers(), 500);
            }
        }
        // Handed over rather than cloned: the future completed, so its wrapper is done with it
        // (the clone stands in for an `expect`, which the crate's lints refuse).
        let context = match this.inner.as_mut().take_context() {
            Some(context) => context,
            None => Arc::clone(this.inner.context()),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, context.request_id.header_value().clone());
        drop(entered);
        // The body keeps the span, which ends with it, and the context: a streamed body's
        // frames are made, and may log, after this future is done.
        let span = std::mem::replace(this.span, Span::none());
        Poll::Ready(Ok(response.map(|body| {
            CorrelationBody::new(body, context, span, !watched && !failed, grpc)
        })))
    }
}

/// Whether a gRPC call's answer comes from a method of the service: not `UNIMPLEMENTED`, nor
/// a router's plain refusal of the path (404, 405 or 501 without a gRPC `content-type`: no
/// error layer answered it as gRPC).
fn answers_the_method<B>(response: &Response<B>) -> bool {
    use http::StatusCode;

    let status = response.status();
    let routing_refusal = matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    ) && !response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(is_grpc_content_type);
    !routing_refusal && answer_code(status, response.headers()) != Some(GrpcCode::UNIMPLEMENTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `otel`, the server and client spans' text fields are `Display` values: a
    /// formatting layer writes them as they are, not quoted and escaped character by character
    /// as text (what that costs, per field, is in `span_text`'s note). With it they are text,
    /// which the OpenTelemetry layer copies as it is.
    #[test]
    fn a_formatting_layer_writes_the_span_text_fields_unquoted() {
        use std::convert::Infallible;
        use std::sync::Mutex;
        use std::task::Waker;
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Written(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Written {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let written = Written::default();
        let out = written.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || out.clone()),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        let mut service = CorrelationLayer::new().layer(tower::service_fn(|_: Request<()>| {
            tracing::info!("handled");
            std::future::ready(Ok::<_, Infallible>(Response::new(())))
        }));
        let request = Request::get("/v1/jobs/42").body(()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let answered = std::pin::pin!(service.call(request)).poll(&mut cx);
        assert!(matches!(answered, Poll::Ready(Ok(_))));
        let uri: http::Uri = "http://inventory.internal/items".parse().unwrap();
        let call = crate::ClientSpan::new(&http::Method::POST, &uri);
        call.span().in_scope(|| tracing::info!("calling"));
        // A host a URL chose, past any DNS name: cut, as the metrics' label is folded.
        let long_host = "a".repeat(60_000);
        let long: http::Uri = format!("http://{long_host}.example/").parse().unwrap();
        let call = crate::ClientSpan::new(&http::Method::GET, &long);
        call.span().in_scope(|| tracing::info!("calling far"));

        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        for (name, value) in [
            ("otel.kind", "server"),
            ("http.request.method", "GET"),
            ("url.path", "/v1/jobs/42"),
            ("url.scheme", "http"),
            ("otel.name", "POST"),
            ("otel.kind", "client"),
            ("http.request.method", "POST"),
            ("server.address", "inventory.internal"),
        ] {
            let field = if cfg!(feature = "otel") {
                format!("{name}=\"{value}\"")
            } else {
                format!("{name}={value}")
            };
            assert!(text.contains(&field), "{field} in {text}");
        }
        let cut = format!(
            "{}…",
            &long_host[..crate::MAX_SERVER_ADDRESS_LEN - '…'.len_utf8()]
        );
        let field = if cfg!(feature = "otel") {
            format!("server.address=\"{cut}\"")
        } else {
            format!("server.address={cut} ")
        };
        assert!(
            text.contains(&field),
            "the cut host in {}",
            &text[text.len() - 400..]
        );
    }

    #[test]
    fn forwarded_proto_reads_the_first_element_only() {
        for (value, proto) in [
            ("for=192.0.2.60;proto=https;by=203.0.113.43", Some("https")),
            ("Proto=\"HTTPS\"", Some("https")),
            (" for=a ; proto = http ", Some("http")),
            ("for=a;proto=https, for=b;proto=http", Some("https")),
            ("for=a, for=b;proto=https", None),
            ("proto=gopher", None),
            ("proto", None),
            ("", None),
        ] {
            assert_eq!(forwarded_proto(value.as_bytes()), proto, "{value}");
        }
    }
}

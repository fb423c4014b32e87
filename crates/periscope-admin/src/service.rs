//! [`Admin`]: the admin surface as one Tower service.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use periscope_error::BoxError;
use serde_json::Value;
use tower_service::Service;

use crate::access::Gate;
use crate::endpoint::{DEBUG_PREFIX, Endpoint};
use crate::memory::Memory;
use crate::reply::{self, AdminBody};
use crate::status::{GpuSnapshot, InFlightSource, Section, ServiceInfo, Started, StatusParts};

/// The admin surface: `/health`, `/ready`, `/startup`, `/metrics` and the gated `/debug/*`
/// endpoints as one `Clone` Tower service over `http::Request<B>` for any body.
///
/// Unknown paths get a 404 `route_not_found` envelope, a wrong method a 405
/// `method_not_allowed` envelope with `Allow`, a debug request without the right token a 401
/// `token_missing` or `token_invalid` envelope with `WWW-Authenticate: Bearer`. Debug
/// endpoints are absent (404) unless [`DebugAccess`](crate::DebugAccess) turns them on; once
/// on, every `/debug/` path asks for the token before anything else, so a caller without it
/// cannot tell which debug endpoints exist.
///
/// Serve it on its own listener, or merge [`Admin::router`] (feature `axum`) into an app.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

/// Everything the endpoints read.
pub(crate) struct Inner {
    pub(crate) info: ServiceInfo,
    pub(crate) started: Started,
    pub(crate) gate: Gate,
    #[cfg(feature = "health")]
    pub(crate) health: Option<periscope_health::Health>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<periscope_metrics::MetricsService>,
    pub(crate) in_flight: Option<Arc<dyn InFlightSource>>,
    #[cfg(feature = "log")]
    pub(crate) logs: Option<periscope_log::RecentLogs>,
    #[cfg(feature = "log")]
    pub(crate) level_control: Option<periscope_log::LevelControl>,
    /// `/debug/config`, masked and encoded when built.
    #[cfg(feature = "log")]
    pub(crate) config: Option<bytes::Bytes>,
    #[cfg(feature = "log")]
    pub(crate) redactor: periscope_log::Redactor,
    #[cfg(feature = "gpu")]
    pub(crate) gpu: Option<periscope_gpu::GpuCollector>,
    pub(crate) sections: Vec<(String, Section)>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("info", &self.inner.info)
            .field("endpoints", &self.endpoints().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Admin {
    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether this admin service answers `endpoint`: its source was given and, for a debug
    /// endpoint, debug access is on.
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        let inner = &self.inner;
        if endpoint.is_debug() && inner.gate.is_closed() {
            return false;
        }
        #[allow(unreachable_patterns)] // with every feature on, each endpoint has its arm
        match endpoint {
            Endpoint::Status | Endpoint::Memory => true,
            #[cfg(feature = "health")]
            Endpoint::Health | Endpoint::Ready | Endpoint::Startup => inner.health.is_some(),
            #[cfg(feature = "metrics")]
            Endpoint::Metrics => inner.metrics.is_some(),
            #[cfg(feature = "log")]
            Endpoint::Logs => inner.logs.is_some(),
            #[cfg(feature = "log")]
            Endpoint::LogLevel => inner.level_control.is_some(),
            #[cfg(feature = "log")]
            Endpoint::Config => inner.config.is_some(),
            _ => false,
        }
    }

    /// Whether debug access is on (a token or a separate listener).
    pub(crate) fn debug_enabled(&self) -> bool {
        !self.inner.gate.is_closed()
    }

    /// The endpoints this admin service answers, probes first.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        Endpoint::ALL.into_iter().filter(|e| self.serves(*e))
    }

    /// Whether a request for `path` belongs to this admin service, for routing without axum
    /// the way [`router`](Self::router) routes: an endpoint it [`serves`](Self::serves), and,
    /// while debug access is on, every path under `/debug/`, served or not, so that a caller
    /// without the token gets 401 on all of them and cannot tell which exist.
    ///
    /// ```
    /// use periscope_admin::{Admin, DebugAccess};
    ///
    /// let admin = Admin::builder().debug(DebugAccess::Token("t0ken-0123456789abcdef".into())).build();
    /// assert!(admin.handles("/debug/status"));
    /// assert!(admin.handles("/debug/not-served")); // asks for the token too
    /// assert!(!admin.handles("/debugger"));
    /// assert!(!admin.handles("/orders"));
    /// ```
    pub fn handles(&self, path: &str) -> bool {
        Endpoint::from_path(path).is_some_and(|endpoint| self.serves(endpoint))
            || (self.debug_enabled() && path.starts_with(DEBUG_PREFIX))
    }

    fn handle<B>(&self, request: Request<B>) -> ResponseFuture
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // The token first, for every path under /debug/ while debug access is on: a 404 for
        // some and a 401 for others would tell a caller which debug endpoints exist.
        if request.uri().path().starts_with(DEBUG_PREFIX)
            && self.debug_enabled()
            && let Err(denied) = self.inner.gate.check(request.uri(), request.headers())
        {
            return ResponseFuture::ready(reply::unauthorized(denied, &request));
        }
        let endpoint = Endpoint::from_path(request.uri().path()).filter(|e| self.serves(*e));
        let Some(endpoint) = endpoint else {
            return ResponseFuture::ready(reply::not_found(&request, self.endpoints()));
        };
        if !endpoint.methods().contains(request.method()) {
            return ResponseFuture::ready(reply::method_not_allowed(endpoint, &request));
        }
        self.answer(endpoint, request)
    }

    /// Answers a request already routed, authorised and of an allowed method.
    fn answer<B>(&self, endpoint: Endpoint, request: Request<B>) -> ResponseFuture
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        #[allow(unreachable_patterns)] // with every feature on, each endpoint has its arm
        let response = match endpoint {
            // Sections run the service's own code, which may block: read them on a thread of
            // their own. A worker thread of the runtime that blocks stalls more than its own
            // request (tokio's I/O driver can be parked with it: every connection waits).
            Endpoint::Status if !self.inner.sections.is_empty() => {
                let admin = self.clone();
                // A section's panic is logged with the request's subscriber and span.
                let dispatch = tracing::dispatcher::get_default(Clone::clone);
                let span = tracing::Span::current();
                let read = crate::status::on_own_thread(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        span.in_scope(|| admin.status())
                    })
                });
                return ResponseFuture::boxed(async move {
                    read.await.unwrap_or_else(|| {
                        reply::internal("the thread reading the status sections ended first")
                    })
                });
            }
            Endpoint::Status => self.status(),
            Endpoint::Memory => reply::json(&Memory::read(self.gpu_snapshot())),
            #[cfg(feature = "health")]
            Endpoint::Health | Endpoint::Ready | Endpoint::Startup => {
                if let Some(health) = &self.inner.health {
                    return ResponseFuture::probe(health.answer(probe_of(endpoint), &request));
                }
                reply::not_found(&request, self.endpoints())
            }
            #[cfg(feature = "metrics")]
            Endpoint::Metrics => match &self.inner.metrics {
                // Encoded on a thread of its own (`MetricsService::scrape`).
                Some(metrics) => {
                    let scrape = metrics.scrape(request.method(), request.headers());
                    return ResponseFuture::boxed(async move {
                        match scrape.await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    });
                }
                None => reply::not_found(&request, self.endpoints()),
            },
            #[cfg(feature = "log")]
            Endpoint::Logs => self.logs(&request),
            #[cfg(feature = "log")]
            Endpoint::Config => match &self.inner.config {
                Some(config) => reply::json_bytes(config.clone()),
                None => reply::not_found(&request, self.endpoints()),
            },
            #[cfg(feature = "log")]
            Endpoint::LogLevel => match &self.inner.level_control {
                Some(control) if request.method() == http::Method::POST => {
                    return ResponseFuture::boxed(crate::log_level::change(
                        control.clone(),
                        request,
                    ));
                }
                Some(control) => crate::log_level::current(control),
                None => reply::not_found(&request, self.endpoints()),
            },
            _ => reply::not_found(&request, self.endpoints()),
        };
        ResponseFuture::ready(response)
    }

    fn status(&self) -> Response<AdminBody> {
        let inner = &self.inner;
        #[cfg(feature = "log")]
        let mask = |value: &mut Value| inner.redactor.mask_value(value);
        #[cfg(not(feature = "log"))]
        let mask = |_: &mut Value| {};
        let parts = StatusParts {
            info: &inner.info,
            started: inner.started,
            in_flight: inner.in_flight.as_deref(),
            gpu: self.gpu_snapshot(),
            sections: &inner.sections,
            mask: &mask,
        };
        match parts.to_json() {
            Ok(body) => reply::json_bytes(body),
            Err(error) => reply::internal(error),
        }
    }

    #[cfg(feature = "log")]
    fn logs<B>(&self, request: &Request<B>) -> Response<AdminBody> {
        let Some(recent) = &self.inner.logs else {
            return reply::not_found(request, self.endpoints());
        };
        match crate::logs::LogsQuery::parse(request.uri().query()) {
            Ok(query) => reply::json_bytes(query.answer(recent)),
            Err(violations) => reply::invalid(
                "The /debug/logs parameters are not valid",
                violations,
                request,
            ),
        }
    }

    /// The GPU collector's last sample; `None` without a collector.
    fn gpu_snapshot(&self) -> Option<GpuSnapshot> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = &self.inner.gpu {
            return Some(gpu.snapshot());
        }
        None
    }
}

#[cfg(feature = "health")]
fn probe_of(endpoint: Endpoint) -> periscope_health::Probe {
    match endpoint {
        Endpoint::Ready => periscope_health::Probe::Readiness,
        Endpoint::Startup => periscope_health::Probe::Startup,
        _ => periscope_health::Probe::Liveness,
    }
}

impl<B> Service<Request<B>> for Admin
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        self.handle(request)
    }
}

/// The future of an admin answer: ready at once, except readiness probes that run checks, a
/// `/debug/status` with sections (read on a thread of their own) and a log-level change that
/// reads its body.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Ready(Option<Response<AdminBody>>),
    #[cfg(feature = "health")]
    Probe(periscope_health::ResponseFuture),
    #[cfg_attr(not(feature = "log"), allow(dead_code))]
    Boxed(Pin<Box<dyn Future<Output = Response<AdminBody>> + Send>>),
}

impl ResponseFuture {
    fn ready(response: Response<AdminBody>) -> Self {
        Self {
            state: State::Ready(Some(response)),
        }
    }

    #[cfg(feature = "health")]
    fn probe(future: periscope_health::ResponseFuture) -> Self {
        Self {
            state: State::Probe(future),
        }
    }

    #[cfg_attr(not(feature = "log"), allow(dead_code))]
    fn boxed(future: impl Future<Output = Response<AdminBody>> + Send + 'static) -> Self {
        Self {
            state: State::Boxed(Box::pin(future)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<AdminBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled after completion: answer rather than panic.
                None => Poll::Ready(Ok(reply::internal(
                    "admin response polled after completion",
                ))),
            },
            #[cfg(feature = "health")]
            State::Probe(future) => Pin::new(future).poll(cx),
            State::Boxed(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

//! Tower services answering the probes, usable with any Tower HTTP stack (hyper, axum, ...).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::health::Health;
use crate::render::{Format, Probe, Refusal, plain, refusal, render};

/// The response body of every probe answer.
pub type ProbeBody = Full<Bytes>;

/// Answers the probes: one probe on any path ([`Health::probe_service`], to mount on the route
/// of your choice), or the three probes by path ([`Health::service`], 404 elsewhere).
///
/// `GET` and `HEAD` are answered; other methods get 405.
///
/// ```
/// use http::Request;
/// use periscope_health::{Health, Probe};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let health = Health::builder().check("db", || async { Ok::<_, String>(()) }).build()?;
/// let ready = health.probe_service(Probe::Readiness);
/// let response = ready.oneshot(Request::get("/ready").body(())?).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
///
/// A whole probe server with hyper:
///
/// ```no_run
/// # async fn serve(health: periscope_health::Health) -> Result<(), Box<dyn std::error::Error>> {
/// use hyper_util::rt::TokioIo;
/// use hyper_util::service::TowerToHyperService;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let service = TowerToHyperService::new(health.service());
///     tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ProbeService {
    health: Health,
    routing: Routing,
}

#[derive(Clone, Debug)]
enum Routing {
    One(Probe),
    Paths(ProbePaths),
}

impl ProbeService {
    /// Answers the three probes on these paths (404 elsewhere).
    pub fn paths(mut self, paths: ProbePaths) -> Self {
        self.routing = Routing::Paths(paths);
        self
    }
}

impl Health {
    /// A service answering `probe` on any path.
    pub fn probe_service(&self, probe: Probe) -> ProbeService {
        ProbeService {
            health: self.clone(),
            routing: Routing::One(probe),
        }
    }

    /// A service answering `/health`, `/ready` and `/startup` (see [`ProbePaths`]), 404 on
    /// any other path: a whole probe server for hyper.
    pub fn service(&self) -> ProbeService {
        ProbeService {
            health: self.clone(),
            routing: Routing::Paths(ProbePaths::default()),
        }
    }

    /// Answers `probe` for `request` (its method, `?verbose` and `Accept` header).
    pub fn answer<B>(&self, probe: Probe, request: &Request<B>) -> ResponseFuture {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ResponseFuture::ready(refusal(Refusal::Method, request));
        }
        let format = Format::of(request);
        let details = self.details();
        if let Some(report) = self.respond(probe) {
            return ResponseFuture::ready(render(probe, &report, details, format));
        }
        let health = self.clone();
        ResponseFuture {
            state: State::Waiting(Box::pin(async move {
                render(probe, &health.readiness().await, details, format)
            })),
        }
    }
}

impl<B> Service<Request<B>> for ProbeService {
    type Response = Response<ProbeBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let probe = match &self.routing {
            Routing::One(probe) => Some(*probe),
            Routing::Paths(paths) => paths.probe_for(request.uri().path()),
        };
        match probe {
            Some(probe) => self.health.answer(probe, &request),
            None => ResponseFuture::ready(refusal(Refusal::NoProbe, &request)),
        }
    }
}

/// The paths the probes answer on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePaths {
    /// Liveness, default `/health`.
    pub liveness: Cow<'static, str>,
    /// Readiness, default `/ready`.
    pub readiness: Cow<'static, str>,
    /// Startup, default `/startup`.
    pub startup: Cow<'static, str>,
}

impl Default for ProbePaths {
    fn default() -> Self {
        Self {
            liveness: Cow::Borrowed("/health"),
            readiness: Cow::Borrowed("/ready"),
            startup: Cow::Borrowed("/startup"),
        }
    }
}

impl ProbePaths {
    /// The probe answering on `path`.
    pub fn probe_for(&self, path: &str) -> Option<Probe> {
        if path == self.liveness {
            Some(Probe::Liveness)
        } else if path == self.readiness {
            Some(Probe::Readiness)
        } else if path == self.startup {
            Some(Probe::Startup)
        } else {
            None
        }
    }
}

/// The future of a probe answer: ready at once unless the checks must run.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Ready(Option<Response<ProbeBody>>),
    Waiting(BoxFuture<'static, Response<ProbeBody>>),
}

impl ResponseFuture {
    fn ready(response: Response<ProbeBody>) -> Self {
        Self {
            state: State::Ready(Some(response)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProbeBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = match &mut self.state {
            State::Ready(response) => match response.take() {
                Some(response) => response,
                // Polled again after completion: answer something rather than panic.
                None => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "probe future polled after completion\n",
                ),
            },
            State::Waiting(future) => std::task::ready!(future.as_mut().poll(cx)),
        };
        // Probes speak HTTP only: an error layer outside keeps their answers so, whatever
        // `content-type` a request claims.
        response
            .extensions_mut()
            .insert(periscope_context::grpc::HttpOnly);
        Poll::Ready(Ok(response))
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

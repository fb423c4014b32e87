//! HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on the server's port: what gRPC clients,
//! and proxies that speak HTTP/2 to their upstreams, open.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use periscope_health::DrainHandle;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::write_stall::WriteStallGuard;

/// What an HTTP/2 client sends first, before any frame (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again at a preface that came in part: clients send it in
/// one write, so this is the rare split packet, not a loop that spins.
const SPLIT_PREFACE_PAUSE: Duration = Duration::from_millis(5);

/// Whether the connection opens with the HTTP/2 preface, judged by its first bytes (peeked:
/// they stay for the protocol that reads them). A client that sends nothing for `timeout` is an
/// error (`TimedOut`), as a request head that does not come is for HTTP/1.1.
pub(crate) async fn opens_with_preface(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let look = async {
        let mut first = [0; PREFACE.len()];
        loop {
            let n = stream.peek(&mut first).await?;
            // Closed, or not the preface: HTTP/1.1, whose parser answers or closes.
            if n == 0 || first[..n] != PREFACE[..n] {
                return Ok(false);
            }
            if n == PREFACE.len() {
                return Ok(true);
            }
            tokio::time::sleep(SPLIT_PREFACE_PAUSE).await;
        }
    };
    tokio::time::timeout(timeout, look)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The limits an HTTP/2 connection is served with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http2Limits {
    /// A connection with no stream open or started for this long is closed (GOAWAY): the
    /// request-head timeout, which is the idle timeout of an HTTP/1.1 connection too.
    pub(crate) idle_timeout: Duration,
    /// The largest header list a request may send (HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub(crate) max_header_size: usize,
}

/// Serves one HTTP/2 connection until the client closes it, the server stops (`stopping`), the
/// connection has been idle for the idle timeout, or it answered while `drain` drains; the last
/// three end it gracefully: GOAWAY, then the streams open finish.
pub(crate) async fn serve_http2<S, B>(
    io: TokioIo<WriteStallGuard<TcpStream>>,
    service: S,
    drain: Option<DrainHandle>,
    limits: Http2Limits,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let streams = Arc::new(Streams::default());
    let service = TrackStreams {
        inner: service,
        streams: Arc::clone(&streams),
        drain,
    };
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut seen = streams.events.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            // The guard `wait_for` returns is dropped at once (it is not `Send`).
            _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            () = streams.retire.notified() => break,
            () = tokio::time::sleep(limits.idle_timeout) => {
                // Idle: no stream opened or finished for a whole timeout, and none open.
                let now = streams.events.load(Ordering::Relaxed);
                if now == seen && streams.open.load(Ordering::Relaxed) == 0 {
                    break;
                }
                seen = now;
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// The streams of one HTTP/2 connection.
#[derive(Default)]
struct Streams {
    /// Streams opened or finished on the connection, ever: activity, for the idle timeout.
    events: AtomicU64,
    /// Requests whose answer has not been sent whole (or dropped) yet.
    open: AtomicUsize,
    /// Told when an answer went out while the service drains: the connection is retired.
    retire: Notify,
}

/// Counts a connection's streams and retires the connection once it answers while the service
/// drains (HTTP/2's way to say what `Connection: close` says in HTTP/1.1).
#[derive(Clone)]
struct TrackStreams<S> {
    inner: S,
    streams: Arc<Streams>,
    drain: Option<DrainHandle>,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for TrackStreams<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        self.streams.events.fetch_add(1, Ordering::Relaxed);
        self.streams.open.fetch_add(1, Ordering::Relaxed);
        TrackedFuture {
            inner: self.inner.call(request),
            open: Some(OpenStream(Arc::clone(&self.streams))),
            drain: self.drain.clone(),
        }
    }
}

/// One open stream, until dropped with the answer's body (or the answer, or the request).
struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// The response future of [`TrackStreams`].
#[pin_project::pin_project]
struct TrackedFuture<F> {
    #[pin]
    inner: F,
    open: Option<OpenStream>,
    drain: Option<DrainHandle>,
}

impl<F, ResBody, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<Tracked<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let open = this.open.take();
        if this.drain.as_ref().is_some_and(DrainHandle::is_draining)
            && let Some(open) = &open
        {
            // A permit when the connection task is not waiting yet: it is not lost.
            open.0.retire.notify_one();
        }
        Poll::Ready(Ok(response.map(|inner| Tracked { inner, _open: open })))
    }
}

/// An answer's body, which keeps its stream counted as open until it is dropped.
#[pin_project::pin_project]
pub(crate) struct Tracked<B> {
    #[pin]
    inner: B,
    _open: Option<OpenStream>,
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

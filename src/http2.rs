//! HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on the server's port: what gRPC clients,
//! and proxies that speak HTTP/2 to their upstreams, open.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use periscope_health::DrainHandle;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::idle::NEVER;
use crate::write_stall::{WriteStallGuard, Written};

/// How often a connection told to go away at the shutdown signal is checked for no stream
/// open and nothing written since the last check (its client's acknowledgement not come):
/// about a second in all for a client gone silent (the GOAWAY itself is written in the first
/// period), time enough for a request sent just before the GOAWAY to arrive, and short
/// enough that such a client does not hold the shutdown.
const GOAWAY_CHECK_AT_SHUTDOWN: Duration = Duration::from_millis(500);

/// The fewest bytes of answers the client must take in a write timeout while an answer waits
/// on it (other frames are not counted: a client sending PINGs has each acknowledged).
const MIN_PROGRESS: u64 = 1024;

/// How long a connection retired while the service drains waits for the answers under way to
/// go out whole before its GOAWAY (see `serve_http2`).
const RETIRE_SETTLE: Duration = Duration::from_millis(100);

/// How often that wait looks whether they have.
const RETIRE_SETTLE_TICK: Duration = Duration::from_millis(2);

/// What an HTTP/2 client sends first, before any frame (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again at a preface that came in part, at first, then twice
/// as long each time up to [`SPLIT_PREFACE_MAX_PAUSE`]: clients send it in one write, so a
/// split is a rare packet boundary, or a client that stops there (which must not cost a wake-up
/// every few milliseconds until the head timeout).
const SPLIT_PREFACE_PAUSE: Duration = Duration::from_millis(5);
const SPLIT_PREFACE_MAX_PAUSE: Duration = Duration::from_millis(250);

/// Whether the connection opens with the HTTP/2 preface, judged by its first bytes (peeked:
/// they stay for the protocol that reads them). A client that sends nothing for `timeout` is an
/// error (`TimedOut`), as a request head that does not come is for HTTP/1.1.
pub(crate) async fn opens_with_preface(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let look = async {
        let mut first = [0; PREFACE.len()];
        let mut pause = SPLIT_PREFACE_PAUSE;
        loop {
            let n = stream.peek(&mut first).await?;
            // Closed, or not the preface: HTTP/1.1, whose parser answers or closes.
            if n == 0 || first[..n] != PREFACE[..n] {
                return Ok(false);
            }
            if n == PREFACE.len() {
                return Ok(true);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SPLIT_PREFACE_MAX_PAUSE);
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
    /// keep-alive idle timeout, as for an HTTP/1.1 connection.
    pub(crate) idle_timeout: Duration,
    /// A connection that sends no frame for this long is sent a PING, and closed when that
    /// goes unanswered as long: the request-head timeout.
    pub(crate) ping_timeout: Duration,
    /// The largest header list a request may send (HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub(crate) max_header_size: usize,
    /// How long an answer may wait for the client to take more of it (flow control) before
    /// the connection is closed: the write timeout, which the socket alone cannot tell on
    /// HTTP/2 (a client that opens no window leaves the server nothing to write).
    pub(crate) write_timeout: Duration,
}

/// Serves one HTTP/2 connection until the client closes it, the server stops (`stopping`), the
/// connection has been idle for the idle timeout, or it answered while `drain` drains; the last
/// three end it gracefully: GOAWAY, then the streams open finish. An answer the client has
/// taken nothing of for the write timeout closes it at once, as a stalled write does in
/// HTTP/1.1 (the result says so, for the server's warning).
pub(crate) async fn serve_http2<S, B>(
    stream: TcpStream,
    service: S,
    drain: Option<DrainHandle>,
    limits: Http2Limits,
    mut stopping: watch::Receiver<bool>,
) -> Result<Http2End, hyper::Error>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    // The bytes the client took: what tells an answer waiting on a stalled client from one
    // draining to a slow reader (hyper holds a whole chunk until the window lets it out).
    let written = Arc::new(Written::default());
    let io = TokioIo::new(
        WriteStallGuard::new(stream, limits.write_timeout).counting(Arc::clone(&written)),
    );
    let streams = Arc::new(Streams::new(Arc::clone(&written)));
    // Outside the Tower service: a stream counts from its request's head, not from when the
    // service was ready for it (one waiting for a concurrency limit is not an idle connection).
    let service = TrackStreams {
        inner: TowerToHyperService::new(service),
        streams: Arc::clone(&streams),
        drain,
    };
    // A PING after a head timeout without a request frame from the client, and the connection
    // closed when it goes unanswered as long: a client gone silent (or that never sends the
    // rest of its request) does not hold the connection; a live one answers by itself. Its
    // answer waits behind the answer bytes queued before the PING, which a slow download takes
    // up to the write timeout to drain (its floor: 128 KiB per write timeout), so it is given
    // at least that long; a peer gone with answers pending is the write timeout's to close.
    let keep_alive = limits.ping_timeout.min(NEVER);
    let ping_answer = limits.ping_timeout.max(limits.write_timeout).min(NEVER);
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(keep_alive)
        .keep_alive_timeout(ping_answer)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .serve_connection(io, service);
    tokio::pin!(connection);
    // `Duration::MAX` is "never".
    let write_check = (limits.write_timeout != Duration::MAX).then_some(limits.write_timeout);
    // Bytes of answers the client took since the last tick of each timer (a PING's
    // acknowledgement, made at the client's will, shows nothing).
    let mut written_for_write = Progress::new(&written.answer_bytes);
    let mut written_for_idle = Progress::new(&written.answer_bytes);
    let mut stalled = || {
        let moved = written_for_write.moved();
        write_check.is_some_and(|timeout| {
            let stalled = !moved && streams.waits_for_client_longer_than(timeout);
            if stalled {
                tracing::debug!(
                    timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    "HTTP/2 connection closed: an answer waited for the client longer than the \
                     write timeout"
                );
            }
            stalled
        })
    };
    // Timers that keep their pace whichever branch wakes first (a sleep made anew in each
    // turn of the loop would be put off by the other).
    let mut idle_ticks = ticks(limits.idle_timeout);
    let mut write_ticks = ticks(write_check.unwrap_or(limits.idle_timeout));
    let mut seen = streams.events.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            result = connection.as_mut() => return ended(result, &written),
            // The guard `wait_for` returns is dropped at once (it is not `Send`).
            _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            () = streams.retire.notified() => {
                // The answer that retired the connection (and any other under way) goes out
                // whole first: hyper's client fails a request whose answer a GOAWAY
                // interrupts, though the service answered it (a long stream gets its GOAWAY
                // after `RETIRE_SETTLE`, its head long delivered).
                let settle_until = tokio::time::Instant::now() + RETIRE_SETTLE;
                let mut flushed = false;
                while tokio::time::Instant::now() < settle_until && !flushed {
                    // One more turn once no answer is open: its last frame is written then.
                    flushed = streams.open.load(Ordering::Relaxed) == 0;
                    tokio::select! {
                        result = connection.as_mut() => return ended(result, &written),
                        () = tokio::time::sleep(RETIRE_SETTLE_TICK) => {}
                    }
                }
                break;
            }
            _ = idle_ticks.tick() => {
                // Idle: no stream opened or finished for a whole timeout, none open, and
                // nothing sent (an answer whose body is done may still be draining from
                // hyper's buffers).
                let now = streams.events.load(Ordering::Relaxed);
                let moved = written_for_idle.moved();
                if now == seen && !moved && streams.open.load(Ordering::Relaxed) == 0 {
                    break;
                }
                seen = now;
            }
            _ = write_ticks.tick(), if write_check.is_some() => if stalled() {
                return Ok(Http2End::WriteStalled);
            },
        }
    }
    connection.as_mut().graceful_shutdown();
    // The connection closes once the client acknowledges the GOAWAY's PING: one that never
    // does would hold it for good, so it is dropped once no stream is left (an answer whose
    // bytes still wait for the client's window keeps its stream: see `Tracked`) and nothing
    // moves for a PING's timeout (the idle timeout may be many minutes); at the shutdown
    // signal, for `GOAWAY_CHECK_AT_SHUTDOWN` at most, so that a peer gone silent does not
    // hold the shutdown.
    let grace = |at_shutdown: bool| {
        if at_shutdown {
            limits.ping_timeout.min(GOAWAY_CHECK_AT_SHUTDOWN)
        } else {
            limits.ping_timeout
        }
    };
    let mut stopped = *stopping.borrow();
    let mut goaway_ticks = ticks(grace(stopped));
    loop {
        tokio::select! {
            result = connection.as_mut() => return ended(result, &written),
            _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) }, if !stopped => {
                stopped = true;
                goaway_ticks = ticks(grace(true));
            }
            _ = goaway_ticks.tick() => {
                let moved = written_for_idle.moved();
                if !moved && streams.open.load(Ordering::Relaxed) == 0 {
                    return Ok(Http2End::Closed);
                }
            }
            _ = write_ticks.tick(), if write_check.is_some() => if stalled() {
                return Ok(Http2End::WriteStalled);
            },
        }
    }
}

/// How a connection that hyper ended with `result` ended: a write that stalled for the write
/// timeout (the guard's error reaches hyper as text only) is a [`Http2End::WriteStalled`].
fn ended(result: Result<(), hyper::Error>, written: &Written) -> Result<Http2End, hyper::Error> {
    match result {
        Ok(()) => Ok(Http2End::Closed),
        Err(_) if written.stalled.load(Ordering::Relaxed) => Ok(Http2End::WriteStalled),
        Err(error) => Err(error),
    }
}

/// How an HTTP/2 connection ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Http2End {
    /// Closed by the client, or gracefully by the server.
    Closed,
    /// Cut off: an answer waited on the client for the write timeout.
    WriteStalled,
}

/// The bytes written on a connection, as one timer sees them.
struct Progress<'a> {
    written: &'a AtomicU64,
    last: u64,
}

impl<'a> Progress<'a> {
    fn new(written: &'a AtomicU64) -> Self {
        Self {
            written,
            last: written.load(Ordering::Relaxed),
        }
    }

    /// Whether the client took at least [`MIN_PROGRESS`] bytes since the last call: less is
    /// a trickle that shows nothing moving.
    fn moved(&mut self) -> bool {
        let now = self.written.load(Ordering::Relaxed);
        let moved = now.saturating_sub(self.last) >= MIN_PROGRESS;
        self.last = now;
        moved
    }
}

/// Ticks every `period`, the first one `period` from now.
fn ticks(period: Duration) -> tokio::time::Interval {
    let period = period.min(NEVER);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// The streams of one HTTP/2 connection.
struct Streams {
    /// Streams opened or finished on the connection, ever: activity, for the idle timeout.
    events: AtomicU64,
    /// Requests whose answer's body hyper still holds (it may keep sending a last chunk from
    /// its own buffers after dropping the body: the bytes written tell that).
    open: AtomicUsize,
    /// Told when an answer went out while the service drains: the connection is retired.
    retire: Notify,
    /// When the connection started: the clocks of the answers count from it.
    started: Instant,
    /// The answers' bodies still alive, to find one the client has left waiting.
    bodies: Mutex<Vec<Weak<BodyClock>>>,
    /// The bytes written on the connection: a body hands its next frame, or its end, only
    /// once its last frame has gone out (see [`Tracked`]).
    written: Arc<Written>,
}

impl Streams {
    fn new(written: Arc<Written>) -> Self {
        Self {
            written,
            events: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            retire: Notify::new(),
            started: Instant::now(),
            bodies: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the connection started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A clock for a new answer's body, waiting for hyper's first poll.
    fn clock(&self) -> Arc<BodyClock> {
        let clock = Arc::new(BodyClock(AtomicU64::new(self.now_ms())));
        let mut bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        // Dropped bodies leave when the list would grow: it stays about as long as the
        // number of answers alive.
        if bodies.len() == bodies.capacity() {
            bodies.retain(|body| body.strong_count() > 0);
        }
        bodies.push(Arc::downgrade(&clock));
        clock
    }

    /// Whether a body has been waiting for hyper to take more of it (the client to open its
    /// flow-control window) for longer than `timeout`.
    fn waits_for_client_longer_than(&self, timeout: Duration) -> bool {
        let now = self.now_ms();
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies.retain(|body| body.strong_count() > 0);
        bodies.iter().filter_map(Weak::upgrade).any(|clock| {
            let since = clock.0.load(Ordering::Relaxed);
            since != BodyClock::NOT_WAITING && now.saturating_sub(since) > timeout
        })
    }
}

/// Since when (milliseconds after the connection started) an answer's body has been waiting
/// for hyper to poll it, which hyper does when the client's flow-control window lets it send.
struct BodyClock(AtomicU64);

impl BodyClock {
    /// The body is being polled, or waits on itself (a stream with nothing to send yet).
    const NOT_WAITING: u64 = u64::MAX;
}

/// Counts a connection's streams and retires the connection once it answers while the service
/// drains (HTTP/2's way to say what `Connection: close` says in HTTP/1.1).
#[derive(Clone)]
struct TrackStreams<S> {
    inner: S,
    streams: Arc<Streams>,
    drain: Option<DrainHandle>,
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for TrackStreams<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        self.streams.events.fetch_add(1, Ordering::Relaxed);
        self.streams.open.fetch_add(1, Ordering::Relaxed);
        TrackedFuture {
            head: request.method() == http::Method::HEAD,
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
    /// Whether the request is a `HEAD`, whose answer has no content.
    head: bool,
}

impl<F, ResBody, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
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
        // hyper's HTTP/1.1 server leaves out the body of such an answer, its HTTP/2 server
        // sends it, and the client resets the stream (RFC 9113, section 8.1.1).
        let bodiless = *this.head
            || matches!(
                response.status(),
                http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
            );
        let mut response = response;
        if *this.head {
            head_content_length(&mut response);
        }
        let clock = open.as_ref().map(|open| open.0.clock());
        Poll::Ready(Ok(response.map(|inner| Tracked {
            inner,
            clock,
            open,
            out_at: None,
            bodiless,
        })))
    }
}

/// Gives a `HEAD` answer without a `content-length` the length its body would have (one
/// known exactly and not empty), as hyper's HTTP/1.1 server does: its HTTP/2 server takes the
/// length from the body only when the body is not ended, and this answer's is (it is not sent).
fn head_content_length<B: Body>(response: &mut Response<B>) {
    let status = response.status();
    if status.is_informational()
        || matches!(
            status,
            http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
        )
        || response
            .headers()
            .contains_key(http::header::CONTENT_LENGTH)
    {
        return;
    }
    if let Some(len) = response.body().size_hint().exact().filter(|&len| len > 0) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
}

/// An answer's body, which keeps its stream counted as open until it is dropped, and tells
/// its clock when it waits for hyper (and so for the client) to take more of it.
///
/// hyper takes a frame as soon as the client's window has room for one byte of it, and h2
/// keeps the rest until the window lets it out: a body whose last frame (an axum `Vec` or
/// `String` body is one frame) is taken would be dropped, its stream no longer open and its
/// clock gone, while the client holds the answer, and the connection, by opening no window.
/// So the body hands its next frame, its trailers or its end only once the connection has
/// written as many bytes as its last frame holds since that frame was handed over (a bound
/// other streams' bytes may reach sooner), and its clock keeps waiting until then.
#[pin_project::pin_project]
pub(crate) struct Tracked<B> {
    #[pin]
    inner: B,
    clock: Option<Arc<BodyClock>>,
    open: Option<OpenStream>,
    /// The connection's count of written bytes by which the last frame handed over is out.
    out_at: Option<u64>,
    /// An answer that has no content (to a `HEAD`, a 204, a 304): its body is not sent.
    bodiless: bool,
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.bodiless {
            return Poll::Ready(None);
        }
        let (Some(clock), Some(open)) = (this.clock, this.open) else {
            return poll_skipping_empty(this.inner, cx);
        };
        if let Some(out_at) = *this.out_at {
            // The last frame may still wait in h2's buffers for the client's window: its clock
            // runs on (a reset stream drops the body).
            ready!(open.0.written.poll_written(out_at, cx));
            *this.out_at = None;
        }
        let frame = poll_skipping_empty(this.inner.as_mut(), cx);
        // A frame handed over: the next poll is up to hyper, and so to the client's window.
        let since = match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(hyper::body::Buf::remaining(data)).unwrap_or(u64::MAX);
                    if len > 0 {
                        let written = open.0.written.bytes.load(Ordering::SeqCst);
                        *this.out_at = Some(written.saturating_add(len));
                    }
                }
                open.0.now_ms()
            }
            _ => BodyClock::NOT_WAITING,
        };
        clock.0.store(since, Ordering::Relaxed);
        frame
    }

    fn is_end_stream(&self) -> bool {
        if self.bodiless {
            return true;
        }
        // Not while the last frame may wait for the client: hyper would drop the body with it.
        self.inner.is_end_stream()
            && self.out_at.is_none_or(|out_at| {
                self.open
                    .as_ref()
                    .is_none_or(|open| open.0.written.bytes.load(Ordering::SeqCst) >= out_at)
            })
    }

    fn size_hint(&self) -> SizeHint {
        if self.bodiless {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

/// What polling a body for its next frame gives.
type PolledFrame<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// The body's next frame, past any empty data frame. hyper sends each as a DATA frame without
/// END_STREAM, which carries nothing, and which h2 clients (0.4.16 on) count for the whole
/// connection: after 100 they close it with `ENHANCE_YOUR_CALM`. A handler relaying another
/// HTTP/2 answer yields one per relayed stream (hyper's client hands a stream's end as an
/// empty chunk). The end of the body still goes out as an empty DATA frame with END_STREAM.
/// A body that keeps yielding empty chunks gets the task's turn back now and then, rather
/// than holding its thread.
fn poll_skipping_empty<B: Body>(mut body: Pin<&mut B>, cx: &mut Context<'_>) -> PolledFrame<B> {
    for _ in 0..EMPTY_CHUNKS_PER_POLL {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame)))
                if frame
                    .data_ref()
                    .is_some_and(|data| !hyper::body::Buf::has_remaining(data)) => {}
            polled => return polled,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Empty chunks skipped in one poll before the task yields.
const EMPTY_CHUNKS_PER_POLL: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Yields `empty` empty chunks, then one of data, then ends; `usize::MAX`: empty for good.
    struct EmptyChunks {
        empty: usize,
        data_sent: bool,
    }

    impl Body for EmptyChunks {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            if self.empty > 0 {
                self.empty = self
                    .empty
                    .saturating_sub(usize::from(self.empty != usize::MAX));
                return Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::new()))));
            }
            if std::mem::replace(&mut self.data_sent, true) {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"x")))))
        }
    }

    /// Counts the wake-ups it is asked for.
    struct CountWakes(AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn empty_chunks_are_skipped_and_an_endless_run_of_them_yields_the_task() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut body = std::pin::pin!(EmptyChunks {
            empty: 100,
            data_sent: false,
        });
        let mut polls = 0;
        let data = loop {
            polls += 1;
            match poll_skipping_empty(body.as_mut(), &mut cx) {
                Poll::Ready(Some(Ok(frame))) => break frame.into_data().unwrap(),
                Poll::Pending => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(&data[..], b"x");
        assert_eq!((polls, wakes.0.load(Ordering::Relaxed)), (4, 3));
        assert!(matches!(
            poll_skipping_empty(body.as_mut(), &mut cx),
            Poll::Ready(None)
        ));

        let mut endless = std::pin::pin!(EmptyChunks {
            empty: usize::MAX,
            data_sent: false,
        });
        for _ in 0..10 {
            assert!(poll_skipping_empty(endless.as_mut(), &mut cx).is_pending());
        }
        assert_eq!(wakes.0.load(Ordering::Relaxed), 13);
    }

    /// A client that takes nothing from its socket (its flow-control windows wide open) stalls
    /// the connection's writes: the connection ends as `WriteStalled`, which the server's
    /// warning counts, not as an error logged at debug (h2 keeps only the text of the guard's
    /// error).
    #[tokio::test]
    async fn a_client_whose_socket_takes_nothing_ends_its_connection_as_write_stalled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        crate::write_stall::limit_unsent(&server);
        let mut frames = PREFACE.to_vec();
        // SETTINGS: INITIAL_WINDOW_SIZE 2^31-1; WINDOW_UPDATE on the connection to the same.
        frames.extend_from_slice(b"\0\0\x06\x04\0\0\0\0\0\0\x04\x7f\xff\xff\xff");
        frames.extend_from_slice(b"\0\0\x04\x08\0\0\0\0\0");
        frames.extend_from_slice(&(0x7fff_ffff_u32 - 65_535).to_be_bytes());
        // HEADERS (END_STREAM, END_HEADERS): GET http://a/.
        let block = b"\x82\x86\x84\x01\x01a";
        frames.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
        frames.extend_from_slice(block);
        client.write_all(&frames).await.unwrap();
        let service = tower::service_fn(|_request: Request<Incoming>| async {
            let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 4 << 20]));
            Ok::<_, std::convert::Infallible>(Response::new(body))
        });
        let limits = Http2Limits {
            idle_timeout: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(60),
            max_header_size: 64 << 10,
            write_timeout: Duration::from_millis(300),
        };
        let (_stop, stopping) = watch::channel(false);
        let served = serve_http2(server, service, None, limits, stopping);
        let end = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stalled connection ends");
        assert_eq!(end.unwrap(), Http2End::WriteStalled);
        drop(client);
    }
}

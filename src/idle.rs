//! An HTTP/1.1 connection waiting for its next request: how long it may stay idle between
//! requests (the keep-alive idle timeout), apart from how long a request head may take once it
//! has begun (the request-head timeout).
//!
//! hyper has one timer for both: its `header_read_timeout` starts as soon as hyper waits for
//! the next head, so it also closes every idle kept-alive connection after the head timeout,
//! before the load balancers in front (which keep idle upstream connections for 60 s and more)
//! let go of theirs: their next request on such a connection fails with a 502. Here the
//! connection's stream tells the two waits apart, by whether a byte of the next head has come.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A year stands for "never" in the connection's timers (`Duration::MAX` would overflow the
/// clock).
pub(crate) const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The error a request head that began but was not finished within the head timeout fails
/// with, told apart from other `TimedOut` errors by its type.
#[derive(Debug)]
pub(crate) struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client did not finish its request head within the head timeout")
    }
}

impl std::error::Error for HeadTimedOut {}

/// hyper's own request-head timer, set to never fire: [`IdleGuard`] times heads and idle
/// connections. One must be set: with none, hyper whose last read waited (while the service
/// worked on a request) does not read again once the answer is done, but at the client's next
/// byte, so the guard's idle clock would never run. It must not fire either: hyper starts it
/// as soon as it has read off the rest of a request body the service left unread, which can be
/// while a large answer is still going out to a slow reader, and it would cut that answer off.
pub(crate) const HYPER_HEAD_TIMER: Duration = NEVER;

/// What one HTTP/1.1 connection's service tells its stream: whether an answer is under way,
/// since when the connection has been idle, whether it was upgraded.
#[derive(Debug)]
pub(crate) struct Activity {
    /// When the connection was accepted: the first head counts from it.
    accepted: Instant,
    /// Requests handed to the service.
    started: AtomicU64,
    /// Requests whose answer is done (its body dropped by hyper, or the answer never made).
    finished: AtomicU64,
    /// When the last answer was done, in nanoseconds after `accepted`.
    idle_since: AtomicU64,
    /// An answer switched protocols (101, or 2xx to `CONNECT`): the stream is the service's.
    upgraded: AtomicBool,
    /// The server stops: no new request is waited for.
    stopping: AtomicBool,
}

impl Activity {
    pub(crate) fn new(accepted: Instant) -> Arc<Self> {
        Arc::new(Self {
            accepted,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        })
    }

    /// The server stops: a wait for a head ends at once, a head begun included (hyper's
    /// graceful shutdown closes an idle connection, but waits for a connection's first head
    /// to come whole, which a slow client could make last the whole shutdown timeout).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.idle_since.load(Ordering::Relaxed))
    }
}

/// An answer under way, until dropped (with the answer's body, or with a future that made no
/// answer).
#[derive(Debug)]
struct Answer(Arc<Activity>);

impl Drop for Answer {
    fn drop(&mut self) {
        let since = self.0.accepted.elapsed().as_nanos();
        self.0
            .idle_since
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Release);
    }
}

/// The connection's service, which tells [`Activity`] when a request comes and when its
/// answer is done (no allocation: the answer holds a reference count).
///
/// A hyper service (around `TowerToHyperService`), not a Tower one: hyper calls it as soon as
/// it has parsed a head, while a Tower service inside `TowerToHyperService` is only called
/// once it is ready (a concurrency limit, a full buffer): the request counts from its head
/// on, so a request waiting for the service is not timed as a head that did not come.
#[derive(Clone, Debug)]
pub(crate) struct TrackAnswers<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> TrackAnswers<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for TrackAnswers<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Answered<ResBody>>;
    type Error = S::Error;
    type Future = AnswerFuture<S::Future>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        let connect = request.method() == Method::CONNECT;
        AnswerFuture {
            inner: self.inner.call(request),
            answer: Some(Answer(Arc::clone(&self.activity))),
            connect,
        }
    }
}

/// The response future of [`TrackAnswers`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub(crate) struct AnswerFuture<F> {
    #[pin]
    inner: F,
    answer: Option<Answer>,
    /// A `CONNECT` request, which a 2xx upgrades (as hyper judges it).
    connect: bool,
}

impl<F, ResBody, E> Future for AnswerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<Answered<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let answer = this.answer.take();
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS || (*this.connect && status.is_success()) {
            // hyper reads no head after such an answer: the connection upgrades or closes.
            if let Some(answer) = &answer {
                answer.0.upgraded.store(true, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(response.map(|inner| Answered { inner, answer })))
    }
}

/// An answer's body, which keeps its answer under way until hyper drops it (at its end, or
/// when the connection gives up on it).
#[pin_project]
#[derive(Debug)]
pub(crate) struct Answered<B> {
    #[pin]
    inner: B,
    answer: Option<Answer>,
}

impl<B: Body> Body for Answered<B> {
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

/// Wraps an HTTP/1.1 connection's stream so that, while no answer is under way, reads end:
///
/// - quietly (end of stream: hyper closes the connection without an error) once the
///   connection has been idle for the idle timeout since its last answer with no byte of a
///   new head, or a new connection has sent nothing for the head timeout;
/// - with [`HeadTimedOut`] (`TimedOut`) once a head that began is not finished within the
///   head timeout: from its first byte, or from the accept for a connection's first head.
///
/// Blank lines between requests (which hyper skips) do not begin a head, nor do the bytes a
/// first read after an answer finds waiting: they may be the rest of a request body the
/// service left unread (a 404 to a `POST`), which hyper reads off then; only bytes that come
/// after a read found nothing begin a head. Reads while an answer is under way (the request's
/// body) and after an upgrade are not timed. Bytes of a pipelined request that came during or
/// right after the previous answer are in hyper's buffer already: such a head, if unfinished,
/// has the idle timeout, then the head timeout once more of it comes.
///
/// At the shutdown ([`Activity::stop`]) a wait for a head ends at once, unless an answer's
/// last bytes still wait for the client (the shutdown timeout bounds those).
///
/// The idle timeout counts from the previous answer's last bytes written, not from the end of
/// its body: hyper drops a body once it has taken its last chunk, and a large one sent in one
/// chunk reaches a slow reader long after (hyper keeps it in its buffer meanwhile, and reads to
/// see whether the client leaves). While some bytes still wait for the client, the idle clock
/// does not run: the write timeout judges a client that takes none.
#[pin_project(project = IdleGuardProj)]
pub(crate) struct IdleGuard<S> {
    #[pin]
    inner: S,
    activity: Arc<Activity>,
    head_timeout: Duration,
    idle_timeout: Duration,
    /// The requests started when `head_began` was last judged: a new one starts a new wait.
    requests: u64,
    /// When the first byte of the head waited for came.
    head_began: Option<Instant>,
    /// A read since the last answer found nothing to read: bytes from now on are a new head's.
    waited: bool,
    /// The clock: boxed (hyper wants an `Unpin` stream), made on the first wait, reset when
    /// the deadline changes.
    clock: Option<Pin<Box<Sleep>>>,
    /// The deadline the clock is set to.
    deadline: Option<Instant>,
    /// When bytes were last written with no answer under way: an answer's last ones, which
    /// hyper writes after it dropped the answer's body.
    wrote_at: Instant,
    /// The last write waited for the client to take bytes.
    write_blocked: bool,
}

impl<S> IdleGuard<S> {
    pub(crate) fn new(
        inner: S,
        activity: Arc<Activity>,
        head_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            wrote_at: activity.accepted,
            inner,
            activity,
            head_timeout: head_timeout.min(NEVER),
            idle_timeout: idle_timeout.min(NEVER),
            requests: 0,
            head_began: None,
            waited: false,
            clock: None,
            deadline: None,
            write_blocked: false,
        }
    }
}

/// Whether no answer is under way on the connection, nor was it upgraded: its stream waits
/// for a head, or writes the last bytes of an answer whose body hyper dropped.
fn between_answers(activity: &Activity) -> bool {
    !activity.upgraded.load(Ordering::Relaxed)
        && activity.finished.load(Ordering::Acquire) == activity.started.load(Ordering::Relaxed)
}

impl<S> IdleGuardProj<'_, S> {
    /// Notes a write's (or a flush's) outcome for the idle clock: whether it waits for the
    /// client, and when bytes were written (a flush writes none: hyper flushes on every turn).
    fn wrote(&mut self, blocked: bool, bytes: bool) {
        *self.write_blocked = blocked;
        if bytes && between_answers(self.activity) {
            *self.wrote_at = Instant::now();
        }
    }
}

impl<S: AsyncRead> AsyncRead for IdleGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        let activity = &**this.activity;
        if activity.upgraded.load(Ordering::Relaxed) {
            return read;
        }
        let started = activity.started.load(Ordering::Relaxed);
        if activity.finished.load(Ordering::Acquire) != started {
            // An answer under way: not waiting for a head.
            return read;
        }
        if *this.requests != started {
            *this.requests = started;
            *this.head_began = None;
            *this.waited = false;
        }
        match read {
            Poll::Ready(Ok(())) => {
                // Bytes that were there at the first read after an answer may be the rest of
                // a request body the service left unread, which hyper reads off now: only
                // bytes that come after a wait begin a head (a pipelined head among the first
                // ones has the idle timeout, as when it came during the answer).
                if this.head_began.is_none()
                    && (started == 0 || *this.waited)
                    && buf.filled()[before..]
                        .iter()
                        .any(|byte| !matches!(byte, b'\r' | b'\n'))
                {
                    *this.head_began = Some(Instant::now());
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => *this.waited = true,
        }
        if activity.stopping.load(Ordering::Relaxed) && !*this.write_blocked {
            // The end of the stream: a head begun is not finished, its client can send it
            // again elsewhere (the service never saw it). Not while an answer's last bytes
            // still wait for the client: the shutdown timeout bounds those.
            return Poll::Ready(Ok(()));
        }
        let idle_from = || activity.idle_since().max(*this.wrote_at);
        let mut deadline = match *this.head_began {
            _ if started == 0 => activity.accepted + *this.head_timeout,
            Some(began) => began + *this.head_timeout,
            None => idle_from() + *this.idle_timeout,
        };
        loop {
            if *this.deadline != Some(deadline) {
                match this.clock {
                    Some(clock) => clock.as_mut().reset(deadline),
                    None => *this.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                *this.deadline = Some(deadline);
            }
            if let Some(clock) = this.clock {
                ready!(clock.as_mut().poll(cx));
            }
            if started == 0 || this.head_began.is_some() {
                break;
            }
            // The idle clock, set before the answer's last bytes were written: put off while
            // some wait for the client, or until the idle timeout after the last ones.
            let now = Instant::now();
            deadline = if *this.write_blocked {
                now + *this.idle_timeout
            } else {
                idle_from() + *this.idle_timeout
            };
            if deadline <= now {
                break;
            }
        }
        if this.head_began.is_some() {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)))
        } else {
            // Nothing read: the end of the stream, which hyper takes for the client's close.
            Poll::Ready(Ok(()))
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for IdleGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let written = this.inner.as_mut().poll_write(cx, buf);
        this.wrote(
            written.is_pending(),
            matches!(written, Poll::Ready(Ok(1..))),
        );
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let written = this.inner.as_mut().poll_write_vectored(cx, bufs);
        this.wrote(
            written.is_pending(),
            matches!(written, Poll::Ready(Ok(1..))),
        );
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let flushed = this.inner.as_mut().poll_flush(cx);
        this.wrote(flushed.is_pending(), false);
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEAD: Duration = Duration::from_secs(30);
    const IDLE: Duration = Duration::from_secs(75);

    /// A connection served as `Server` serves one (`ok` to every request), and the client's end.
    fn serve() -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ) {
        let (client, server) = tokio::io::duplex(4096);
        let activity = Activity::new(Instant::now());
        let io = IdleGuard::new(server, Arc::clone(&activity), HEAD, IDLE);
        let service = TrackAnswers::new(
            hyper_util::service::TowerToHyperService::new(tower::service_fn(
                |_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
                },
            )),
            activity,
        );
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HYPER_HEAD_TIMER)
            .serve_connection(TokioIo::new(io), service);
        (client, tokio::spawn(connection))
    }

    /// Sends `GET /` and reads its whole answer.
    async fn get(client: &mut DuplexStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0; 256];
            let n = client.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Idle for longer than the head timeout, a kept-alive connection still takes its next
    /// request; idle for the idle timeout, it is closed without an error.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_has_the_idle_timeout() {
        let (mut client, connection) = serve();
        get(&mut client).await;
        tokio::time::sleep(HEAD * 2).await;
        get(&mut client).await;
        let idle_from = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        let waited = idle_from.elapsed();
        assert!(waited >= IDLE && waited < IDLE + HEAD, "{waited:?}");
        connection.await.unwrap().unwrap();
    }

    /// A head begun and stopped fails after the head timeout from its first byte, however long
    /// the connection was idle before; blank lines between requests begin no head.
    #[tokio::test(start_paused = true)]
    async fn a_head_begun_has_the_head_timeout_from_its_first_byte() {
        let (mut client, connection) = serve();
        get(&mut client).await;
        tokio::time::sleep(IDLE / 2).await;
        client.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(IDLE / 3).await;
        client.write_all(b"GET / HT").await.unwrap();
        let began = Instant::now();
        let error = connection.await.unwrap().unwrap_err();
        let waited = began.elapsed();
        assert!(waited >= HEAD && waited < IDLE, "{waited:?}");
        let io = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<io::Error>())
            .expect("an I/O error");
        assert!(
            io.get_ref().is_some_and(|inner| inner.is::<HeadTimedOut>()),
            "{error}"
        );
    }

    /// A new connection has the head timeout from its accept: closed quietly when it sent
    /// nothing, failed when it began a head.
    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_head_timeout() {
        let started = Instant::now();
        let (_client, connection) = serve();
        connection.await.unwrap().unwrap();
        let waited = started.elapsed();
        assert!(waited >= HEAD && waited < IDLE, "{waited:?}");

        let started = Instant::now();
        let (mut client, connection) = serve();
        tokio::time::sleep(HEAD / 2).await;
        client.write_all(b"GET / HT").await.unwrap();
        connection.await.unwrap().unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= HEAD && waited < HEAD + HEAD / 4, "{waited:?}");
    }

    /// A body that takes longer than both timeouts is not cut off: the wait for a head starts
    /// after the answer.
    #[tokio::test(start_paused = true)]
    async fn an_answer_under_way_is_not_timed() {
        let (client, server) = tokio::io::duplex(4096);
        let activity = Activity::new(Instant::now());
        let io = IdleGuard::new(server, Arc::clone(&activity), HEAD, IDLE);
        let service = TrackAnswers::new(
            hyper_util::service::TowerToHyperService::new(tower::service_fn(
                |_request: Request<hyper::body::Incoming>| async {
                    tokio::time::sleep(IDLE * 2).await;
                    Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
                },
            )),
            activity,
        );
        let connection = tokio::spawn(
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HYPER_HEAD_TIMER)
                .serve_connection(TokioIo::new(io), service),
        );
        let mut client = client;
        get(&mut client).await;
        drop(client);
        connection.await.unwrap().unwrap();
    }
}

//! Serving a Tower HTTP service on a TCP listener, with the request-head, keep-alive idle and
//! write timeouts that `axum::serve` leaves out.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use periscope_health::DrainHandle;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::draining::CloseWhenDraining;
use crate::idle::{Activity, IdleGuard, TrackAnswers};
use crate::peer::WithPeer;
use crate::rejected::RejectedRequests;
use crate::write_stall::{WriteStallGuard, limit_unsent};

/// How long a client may take to send a request's head by default, from its first byte (or
/// from the accept, for a connection's first request).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a kept-alive connection may wait for its next request by default: nginx's
/// `keepalive_timeout`, above the 60 s for which AWS load balancers and nginx's upstream
/// keep-alive hold idle connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// How long the requests in flight may take to finish after the shutdown signal by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write to a client may make no progress by default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line and headers) accepted by default, in bytes: larger
/// ones are answered 431 by hyper. Without a limit hyper buffers about 400 KiB per connection,
/// so a few hundred slow clients could hold a hundred megabytes.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;

/// The most hyper's HTTP/1 connection buffers of a request by default (8 KiB and 400 times
/// 4 KiB): a head larger than this is refused 431 whatever `max_header_size` says.
const HYPER_READ_BUFFER: usize = 8192 + 4096 * 100;

/// What the read buffer holds beyond a head of `max_header_size`: the start of a body read
/// with it.
const READ_BUFFER_SLACK: usize = 8192;

/// Pause after a failed `accept` (out of file descriptors, most likely) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one warning per this long about failed `accept`s, with the count since the last.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Serves a Tower HTTP service (an axum `Router`, a `ServiceBuilder` stack) over HTTP/1.1 on a
/// TCP listener until a shutdown signal, then finishes the requests in flight.
///
/// Unlike `axum::serve`, a client that never finishes its request head is disconnected after
/// [`header_read_timeout`](Self::header_read_timeout) (30 s by default), one that stops
/// reading its answers after [`write_timeout`](Self::write_timeout) (30 s without progress by
/// default), and a kept-alive connection with no request after
/// [`idle_timeout`](Self::idle_timeout) (75 s by default: behind a load balancer, keep it
/// above the balancer's own idle timeout): without them, slow clients (slowloris) and idle
/// ones hold connections, file descriptors and the shutdown without limit. A request head
/// over [`max_header_size`](Self::max_header_size) (64 KiB by default) is answered 431.
/// Requests hyper turns away itself (too large, not parsable, an HTTP/2 client on this port)
/// reach no access line and no count: the server warns about them, the first at once, then
/// those of the next 10 s together. After the shutdown signal, connections still open after
/// [`shutdown_timeout`](Self::shutdown_timeout) (10 s by default: a client stalled in the
/// middle of its body, a long stream: end server-sent events on the shutdown signal, as with
/// `stream.take_until(shutdown.clone().wait())`) are closed, so the process always stops; idle
/// connections, and HTTP/1.1 ones whose next request head has not come whole, are closed at
/// the signal (the service never saw that request: its client can send it elsewhere).
/// HTTP/1.1, and with the `http2` feature HTTP/2 with prior knowledge (h2c: gRPC clients, and
/// proxies that speak HTTP/2 to their upstreams) on the same port, told apart by the client's
/// first bytes. An HTTP/2 connection keeps the write timeout (an answer whose client opens no
/// flow-control window for it counts as a stalled write, and closes the connection), the
/// header size limit (as `SETTINGS_MAX_HEADER_LIST_SIZE`; hyper refuses a larger header list
/// itself, stream by stream, with no warning, up to about 1.25 times the limit: h2 takes one
/// far larger, sent in more CONTINUATION frames than that needs, for a flood and closes the
/// whole connection) and hyper's limit of 200 concurrent streams; it
/// is closed gracefully (GOAWAY, then its open streams finish) once it has had no stream for
/// the idle timeout, after an answer while the service drains, and at the shutdown
/// signal, and dropped when the client does not let the GOAWAY complete (with no stream open
/// and nothing written for the PING timeout, or for about a second at the shutdown signal). A request sent just as
/// its connection is retired can fail in hyper-based clients (tonic's among them) with
/// `GoAway(NO_ERROR)`: the service never saw it, so it is safe to retry.
/// Without the feature an HTTP/2 client is closed and warned about.
/// It needs a Tokio runtime with I/O and time enabled (`#[tokio::main]` enables both).
/// Connection upgrades (WebSocket) are handed to the service as hyper hands them: an upgraded
/// connection is the service's from the 101 on, so the server neither waits for it nor closes
/// it at shutdown, and it keeps the write timeout.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let obs = periscope::Observability::from_env()?;
/// let _guard = obs.init()?;
/// let app = axum::Router::new()
///     .route("/hello", axum::routing::get(|| async { "hello" }))
///     .merge(obs.admin().router())
///     .layer(obs.layer());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// // `Server::new(listener)`, told when the service drains.
/// obs.server(listener)
///     .serve(app, obs.shutdown_on_signal().wait())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "call serve() to answer requests"]
pub struct Server {
    listener: TcpListener,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    max_header_size: usize,
    max_connections: usize,
    /// The service's drain, when told about it.
    drain: Option<DrainHandle>,
}

impl Server {
    /// A server on `listener`, with the default timeouts and limits.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_connections: usize::MAX,
            drain: None,
        }
    }

    /// The most connections served at once (default: no limit; at least 1). At the limit the
    /// server accepts no more until one closes: the next waits in the listen queue (the
    /// kernel's backlog, past which connections are refused), and a warning says so, the
    /// first at once, then at most one every 10 s with how often the limit was reached since
    /// (`times`). Each
    /// connection costs up to [`max_header_size`](Self::max_header_size) of buffered head
    /// and its task, so the limit bounds what slow or idle clients can hold together; kept-alive
    /// connections count until the [idle timeout](Self::idle_timeout) closes them, and an
    /// upgraded one (WebSocket) no longer counts once it is handed to the service.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// The largest request head (request line and headers) accepted, in bytes (default
    /// 64 KiB; a value under 1 KiB counts as 1 KiB, though browsers with cookies send 4 to
    /// 8 KiB): a larger one is answered `431 Request Header Fields Too Large`, and counted in
    /// the server's warning about requests rejected before the service saw them (HTTP/1.1;
    /// HTTP/2 refuses it per stream, unwarned). It bounds a chunked body's trailers too. Over
    /// HTTP/1.1 a head of more than 100 header fields is answered 431 too, whatever its size
    /// (hyper's limit; HTTP/2 has none); a limit over hyper's own read buffer (about 408 KiB)
    /// raises that buffer with it.
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.max_header_size = bytes.max(1024);
        self
    }

    /// How long a client may take to send a request's head (default 30 s; at least 1 ms):
    /// on a new connection from the accept, so one that sends nothing is closed after it too
    /// (quietly: browsers open connections they may never use); on a kept-alive one from the
    /// head's first byte, the wait before it being the [idle timeout](Self::idle_timeout).
    /// Bytes of a next head that are already there when an answer is done (pipelined, or
    /// sent right behind the answer's request) cannot be told from the rest of a request body
    /// the service left unread, which hyper reads off then: such a head begins no clock until
    /// the server has waited for more of it, so it has the idle timeout and then this long.
    /// A request whose head has come whole is not timed while it waits for the service to be
    /// ready (a concurrency limit, a full buffer). A head begun and not finished in time is counted in the server's warning about
    /// requests rejected before the service saw them (`head_timeout`). An HTTP/2 connection
    /// (feature `http2`) that sends no request frame (headers or data) for this long is sent a
    /// PING and closed when that goes unanswered as long, or as long as the
    /// [write timeout](Self::write_timeout) when that is longer (the PING's answer waits behind
    /// the answer bytes queued before it, which a slow download drains slowly): a client
    /// paused for over twice this long is cut off, mid-stream too. A request body that the service still reads after its answer has been
    /// sent (an upload handed to a task after a `202`) is timed as the next request's head
    /// once it pauses: what comes after the pause must come whole within this long (the
    /// server cannot tell such a body from a new head; a body the service leaves unread,
    /// which hyper reads off after the answer, is told apart).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a kept-alive connection may wait for its next request, with no byte of it
    /// come, before the server closes it (default 75 s, nginx's `keepalive_timeout`; at least
    /// 1 ms; `Duration::MAX` for never). Behind a load balancer or a proxy that keeps
    /// connections to this server open between requests, make it longer than the balancer's
    /// idle timeout (AWS ALB's is 60 s, nginx's upstream `keepalive_timeout` 60 s, Google
    /// Cloud's load balancers' 600 s, so about 620 s there): otherwise the balancer can send a
    /// request on a connection at the moment the server closes it, and its client gets a 502.
    /// Such closes are not warned about. A new connection that has sent nothing has the
    /// [head timeout](Self::header_read_timeout) instead, so that idle clients that never send
    /// a request do not hold file descriptors for long. An HTTP/2 connection (feature
    /// `http2`) with no stream for this long (checked on a tick of this period, so after one to
    /// two periods) is closed gracefully (GOAWAY).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a write to a client may make no progress before the connection is closed
    /// (default 30 s; at least 1 ms; `Duration::MAX` for never), as nginx's `send_timeout`: a
    /// client that stops reading its answers would otherwise hold its connection for good.
    /// Progress is the client taking bytes; on Linux the server keeps at most 128 KiB unsent
    /// (`TCP_NOTSENT_LOWAT`), so a download that moves faster than 128 KiB per timeout keeps
    /// going (4 KiB/s with the default). Elsewhere the kernel reports progress in coarser
    /// steps: give slow clients a longer timeout there. Clients cut off so are counted in the
    /// server's warning about closed connections (`write_stalled`): their access line tells
    /// the bytes handed over, not those received.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Stops keeping connections alive once `drain` drains (`obs.health().drain_handle()`, which
    /// `obs.shutdown_on_signal()` drains on SIGTERM): from then on every HTTP/1.x answer (to a
    /// request in flight too) but a 101 (an upgrade) carries `Connection: close`, so clients retire their pooled connections to this
    /// instance during the grace period instead of sending a request on one the server closes
    /// when the listener stops (the keep-alive race behind connection resets at a rollout);
    /// an HTTP/2 connection (feature `http2`) is sent GOAWAY after such an answer instead.
    /// Idle connections are left open until then (closing one could cut off a request already
    /// on its way); new connections are answered until the shutdown signal.
    pub fn drain_handle(mut self, drain: DrainHandle) -> Self {
        self.drain = Some(drain);
        self
    }

    /// How long the requests in flight may take to finish once the shutdown signal came
    /// (default 10 s); the connections still open then are closed. Keep it under Kubernetes'
    /// `terminationGracePeriodSeconds` less the readiness drain.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers connections with `service` until `shutdown` completes (for example
    /// `obs.shutdown_on_signal().wait()`, which first drains `/ready`), then stops accepting,
    /// finishes the requests in flight (for at most the shutdown timeout) and closes idle
    /// connections. Connection errors are logged at debug; they never end the server.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>) -> io::Result<()>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Self {
            listener,
            header_read_timeout,
            idle_timeout,
            write_timeout,
            shutdown_timeout,
            max_header_size,
            max_connections,
            drain,
        } = self;
        let mut accept_failures = AcceptFailures::default();
        let mut held_back = EveryInterval::default();
        let rejected = RejectedRequests::default();
        tokio::pin!(shutdown);
        // Tells every connection to finish its request in flight and close.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        // Owned here, so the connections still open after the shutdown timeout are closed.
        let mut tasks = JoinSet::new();
        loop {
            // Finished connections leave the set as the server goes, so it stays small.
            while tasks.try_join_next().is_some() {}
            if tasks.len() >= max_connections {
                if let Some(count) = held_back.count() {
                    tracing::warn!(
                        max_connections,
                        times = count,
                        "connection limit reached: new connections wait in the listen queue"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // One connection's own failure (reset while queued): the next at once.
                    Err(error) if is_connection_error(&error) => continue,
                    Err(error) => {
                        accept_failures.failed(&error);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // A connection's first request head counts from here.
            let accepted = tokio::time::Instant::now();
            // Small answers go out at once rather than waiting for more to send.
            let _ = stream.set_nodelay(true);
            limit_unsent(&stream);
            let service = WithPeer::new(service.clone(), peer);
            let drain = drain.clone();
            let mut stopping = stopping.clone();
            let rejected = rejected.clone();
            tasks.spawn(async move {
                #[cfg(feature = "http2")]
                {
                    let opens_with_preface = tokio::select! {
                        // The client's bytes first: a request already come whole when the
                        // task first runs after the signal is answered, not dropped unread.
                        biased;
                        opens = crate::http2::opens_with_preface(&stream, header_read_timeout) => opens,
                        _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => return,
                    };
                    match opens_with_preface {
                        Ok(false) => {}
                        Ok(true) => {
                            let limits = crate::http2::Http2Limits {
                                idle_timeout,
                                ping_timeout: header_read_timeout,
                                max_header_size,
                                write_timeout,
                            };
                            let served =
                                crate::http2::serve_http2(stream, service, drain, limits, stopping);
                            match served.await {
                                Ok(crate::http2::Http2End::WriteStalled) => {
                                    rejected.write_stalled(peer);
                                }
                                Ok(crate::http2::Http2End::Closed) => {}
                                Err(error) => rejected.connection_failed(&error, peer),
                            }
                            return;
                        }
                        Err(error) => {
                            tracing::debug!(error = %error, %peer, "connection closed before its first request");
                            return;
                        }
                    }
                }
                // The idle and head timeouts are the stream's, which the service tells when an
                // answer is under way.
                let activity = Activity::new(accepted);
                let io = IdleGuard::new(
                    WriteStallGuard::new(stream, write_timeout),
                    Arc::clone(&activity),
                    header_read_timeout,
                    idle_timeout,
                );
                // Outside the Tower service: a request counts from its head, not from when the
                // service was ready for it.
                let service = TrackAnswers::new(
                    TowerToHyperService::new(CloseWhenDraining::new(service, drain)),
                    Arc::clone(&activity),
                );
                let mut http1 = http1::Builder::new();
                http1
                    .timer(TokioTimer::new())
                    .header_read_timeout(crate::idle::HYPER_HEAD_TIMER)
                    .max_header_size(max_header_size);
                // A head must fit hyper's read buffer too, whose own limit is about 408 KiB.
                if max_header_size > HYPER_READ_BUFFER - READ_BUFFER_SLACK {
                    http1.max_buf_size(max_header_size.saturating_add(READ_BUFFER_SLACK));
                }
                let connection = http1
                    .serve_connection(TokioIo::new(io), service)
                    // An upgraded connection (WebSocket) leaves hyper, and this server, once the
                    // 101 is sent: the service's upgrade task owns it from then on.
                    .with_upgrades();
                tokio::pin!(connection);
                let result = tokio::select! {
                    // The connection first: hyper's graceful shutdown closes a connection that
                    // has read nothing yet, though a whole request may wait in its socket; once
                    // read, it is answered (a head still unfinished ends at the signal: see
                    // `Activity::stop`).
                    biased;
                    result = connection.as_mut() => result,
                    // The guard `wait_for` returns is dropped at once (it is not `Send`).
                    _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => {
                        activity.stop();
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = result {
                    rejected.connection_failed(&error, peer);
                }
            });
        }
        drop(listener);
        let _ = stop.send(true);
        let finished = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(shutdown_timeout, finished)
            .await
            .is_err()
        {
            // Only the connections still running: the finished ones leave the set first.
            while tasks.try_join_next().is_some() {}
            tracing::warn!(
                open = tasks.len(),
                timeout_ms = u64::try_from(shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
                "connections still open after the shutdown timeout: closing them"
            );
        }
        tasks.shutdown().await;
        Ok(())
    }
}

/// Failed `accept`s (out of file descriptors, most likely, which lasts): warned about at most
/// once per [`ACCEPT_WARNING_INTERVAL`], with how many failed since, instead of ten lines a
/// second.
#[derive(Default)]
struct AcceptFailures(EveryInterval);

impl AcceptFailures {
    fn failed(&mut self, error: &io::Error) {
        if let Some(failures) = self.0.count() {
            tracing::warn!(
                error = %error,
                failures,
                "accept failed: new connections wait in the listen queue"
            );
        }
    }
}

/// Counts a recurring condition and says when to warn about it: at once, then at most once
/// per [`ACCEPT_WARNING_INTERVAL`], with the count since the last warning.
#[derive(Default)]
struct EveryInterval {
    last_warning: Option<tokio::time::Instant>,
    since_warning: u64,
}

impl EveryInterval {
    /// Counts one; the count to warn with, when it is time.
    fn count(&mut self) -> Option<u64> {
        self.since_warning += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < ACCEPT_WARNING_INTERVAL)
        {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.since_warning))
    }
}

/// An accept error about the connection it would have given (aborted or reset by its client
/// while it waited in the queue), not about the listener: no reason to wait or warn.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events it sees.
    struct Count(&'static AtomicUsize);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            _event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A service whose requests may take 30 s gives those under way at the shutdown signal
    /// 30 s too, not the default 10; a shorter request timeout keeps the default.
    #[tokio::test]
    async fn the_facades_server_gives_requests_their_timeout_at_shutdown() {
        for (request_timeout, shutdown_timeout) in [
            (Some(30), 30),
            (Some(5), DEFAULT_SHUTDOWN_TIMEOUT.as_secs()),
            (None, DEFAULT_SHUTDOWN_TIMEOUT.as_secs()),
        ] {
            let mut builder = crate::Observability::builder().log_writer(std::io::sink());
            if let Some(seconds) = request_timeout {
                builder = builder.request_timeout(Duration::from_secs(seconds));
            }
            let obs = builder.build().unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = obs.server(listener);
            assert_eq!(
                server.shutdown_timeout,
                Duration::from_secs(shutdown_timeout),
                "{request_timeout:?}"
            );
        }
    }

    /// Out of file descriptors, `accept` fails ten times a second for as long as it lasts: one
    /// warning per interval, not one per failure.
    #[tokio::test]
    async fn failed_accepts_are_warned_about_once_per_interval() {
        static WARNINGS: AtomicUsize = AtomicUsize::new(0);
        let subscriber = tracing_subscriber::registry().with(Count(&WARNINGS));
        let _default = crate::test_support::set_default(subscriber);
        let mut failures = AcceptFailures::default();
        let error = io::Error::from_raw_os_error(24); // EMFILE
        for _ in 0..100 {
            failures.failed(&error);
        }
        assert_eq!(WARNINGS.load(Ordering::Relaxed), 1);
        assert_eq!(failures.0.since_warning, 99);
    }

    /// A client that gave up while queued is its own failure, skipped at once; running out of
    /// descriptors or memory is the listener's, waited out and warned about.
    #[test]
    fn connection_errors_are_told_from_the_listeners() {
        use io::ErrorKind::*;
        for kind in [ConnectionAborted, ConnectionReset, ConnectionRefused] {
            assert!(is_connection_error(&io::Error::from(kind)), "{kind:?}");
        }
        let emfile = io::Error::from_raw_os_error(24);
        let enomem = io::Error::from(OutOfMemory);
        for error in [emfile, enomem, io::Error::other("x")] {
            assert!(!is_connection_error(&error), "{error:?}");
        }
    }
}

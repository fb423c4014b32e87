//! Requests hyper answers or drops itself, before the service sees them: no access line, no
//! count and no span tell about them, so the server warns: the first at once, then those that
//! follow within an interval together when it is over. Clients cut off for reading nothing of
//! their answers are warned about the same way: their access line tells the bytes handed
//! over, not those the client received; and so are request heads begun and not finished
//! within the head timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most one warning per this long, with the counts since the last.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why hyper turned a request away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    /// A request head over the size limit: answered 431.
    TooLarge,
    /// An HTTP/2 connection preface (a gRPC or h2c client) on this HTTP/1.1 port: closed.
    Http2,
    /// A request head that does not parse: answered 400.
    Malformed,
    /// A client that stopped reading its answer for the write timeout: cut off.
    WriteStalled,
    /// A request head begun and not finished within the head timeout: closed.
    HeadTimeout,
}

impl Rejection {
    /// The rejections worth an operator's attention; idle connections closed (quietly, with
    /// no error), hyper's own timeouts and clients that leave stay at debug.
    fn of(error: &hyper::Error) -> Option<Self> {
        if error.is_parse_too_large() {
            Some(Self::TooLarge)
        } else if error.is_parse_version_h2() {
            Some(Self::Http2)
        } else if error.is_parse() {
            Some(Self::Malformed)
        } else if io_failed_with::<crate::write_stall::WriteStalled>(error) {
            Some(Self::WriteStalled)
        } else if io_failed_with::<crate::idle::HeadTimedOut>(error) {
            Some(Self::HeadTimeout)
        } else {
            None
        }
    }
}

/// Whether the connection's I/O failed with `E`, the error of one of the server's guards
/// ([`WriteStalled`](crate::write_stall::WriteStalled),
/// [`HeadTimedOut`](crate::idle::HeadTimedOut)); a service's or a body's own errors are the
/// user's, and not counted.
fn io_failed_with<E: std::error::Error + 'static>(error: &hyper::Error) -> bool {
    if error.is_user() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.get_ref().is_some_and(|inner| inner.is::<E>());
        }
        source = error.source();
    }
    false
}

/// The tally of rejected requests, shared by every connection of one server.
#[derive(Clone, Default)]
pub(crate) struct RejectedRequests(Arc<Mutex<Tally>>);

#[derive(Default)]
struct Tally {
    last_warning: Option<Instant>,
    /// Whether a task will report what comes in before the interval is over.
    report_pending: bool,
    counts: Counts,
}

/// The rejections since the last warning, and the latest one's peer and error.
#[derive(Default)]
struct Counts {
    too_large: u64,
    http2: u64,
    malformed: u64,
    write_stalled: u64,
    head_timeout: u64,
    latest: Option<(SocketAddr, String)>,
}

impl Counts {
    fn warn(self) {
        let Some((peer, error)) = self.latest else {
            return;
        };
        tracing::warn!(
            too_large = self.too_large,
            http2 = self.http2,
            malformed = self.malformed,
            write_stalled = self.write_stalled,
            head_timeout = self.head_timeout,
            %peer,
            error,
            "connections the server closed: requests rejected before the service saw them (no \
             access line, not counted): heads over the size limit (431), HTTP/2 clients on this \
             HTTP/1.1 port (periscope's `http2` feature serves them), requests that do not \
             parse (400), heads begun and not finished within the head timeout \
             (head_timeout); or clients that stopped reading their answer for the write timeout \
             (write_stalled: their access line counts the bytes handed over, not those the \
             client received); the counts are since the last such warning, the peer and error \
             the latest's"
        );
    }
}

impl RejectedRequests {
    /// Takes note of a connection that ended with `error`: a rejection is warned about (the
    /// first at once; those within [`WARNING_INTERVAL`] of a warning together when it is
    /// over), the rest is logged at debug.
    pub(crate) fn connection_failed(&self, error: &hyper::Error, peer: SocketAddr) {
        let Some(rejection) = Rejection::of(error) else {
            tracing::debug!(error = %error, %peer, "connection closed with an error");
            return;
        };
        self.count(rejection, peer, error.to_string());
    }

    /// Takes note of an HTTP/2 connection cut off because an answer waited on its client for
    /// the write timeout (no error: the server closed it).
    #[cfg(feature = "http2")]
    pub(crate) fn write_stalled(&self, peer: SocketAddr) {
        self.count(
            Rejection::WriteStalled,
            peer,
            crate::write_stall::WriteStalled.to_string(),
        );
    }

    fn count(&self, rejection: Rejection, peer: SocketAddr, error: String) {
        let now = Instant::now();
        let due = {
            let mut tally = self.lock();
            let counts = &mut tally.counts;
            match rejection {
                Rejection::TooLarge => counts.too_large += 1,
                Rejection::Http2 => counts.http2 += 1,
                Rejection::Malformed => counts.malformed += 1,
                Rejection::WriteStalled => counts.write_stalled += 1,
                Rejection::HeadTimeout => counts.head_timeout += 1,
            }
            counts.latest = Some((peer, error));
            match tally.last_warning {
                Some(last) if now.duration_since(last) < WARNING_INTERVAL => {
                    if tally.report_pending {
                        return;
                    }
                    tally.report_pending = true;
                    Some(last + WARNING_INTERVAL)
                }
                _ => None,
            }
        };
        match due {
            // Reported when the interval is over, whether more come or not.
            Some(due) => {
                let rejected = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(due).await;
                    rejected.report(due);
                });
            }
            None => self.report(now),
        }
    }

    /// Warns about the rejections counted so far, if any (outside the lock: the output may
    /// block).
    fn report(&self, now: Instant) {
        let counts = {
            let mut tally = self.lock();
            tally.report_pending = false;
            if tally.counts.latest.is_none() {
                return;
            }
            tally.last_warning = Some(now);
            std::mem::take(&mut tally.counts)
        };
        counts.warn();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tracing_subscriber::layer::SubscriberExt;

    /// The error hyper ends a connection with after reading `sent`, and what it answered.
    async fn rejection(sent: &[u8]) -> (hyper::Error, String) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let connection = tokio::spawn(
            http1::Builder::new()
                .max_header_size(4096)
                .serve_connection(TokioIo::new(server), service),
        );
        client.write_all(sent).await.unwrap();
        // Nothing more comes: a head cut short ends the connection instead of waiting.
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        let error = connection.await.unwrap().unwrap_err();
        (error, String::from_utf8_lossy(&answer).into_owned())
    }

    /// Warnings, with their fields, as `name=value` text.
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    self.0.push_str(&format!("{}={value:?} ", field.name()));
                }
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.0);
            }
        }
    }

    /// A head over the limit (431), an HTTP/2 preface and a request that does not parse (400)
    /// never reach the service: the first is warned about at once, the next two are counted
    /// for the next warning; a client that leaves is not warned about.
    #[tokio::test(start_paused = true)]
    async fn requests_hyper_turns_away_are_warned_about_once_per_interval() {
        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let _default = crate::test_support::set_default(subscriber);
        let rejected = RejectedRequests::default();
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();

        let big = format!(
            "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
            "a".repeat(8192)
        );
        let (error, answer) = rejection(big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        rejected.connection_failed(&error, peer);
        let (error, _) = rejection(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        rejected.connection_failed(&error, peer);
        let (error, answer) = rejection(b"NOT A REQUEST\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        rejected.connection_failed(&error, peer);
        // A head cut short: the client left, nothing to warn about.
        let (error, _) = rejection(b"GET / HTTP/1.1\r\nhost").await;
        assert_eq!(Rejection::of(&error), None, "{error}");
        rejected.connection_failed(&error, peer);

        let seen = warnings.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("too_large=1 http2=0 malformed=0 write_stalled=0")
                && seen[0].contains("peer=192.0.2.7:40000"),
            "{seen:?}"
        );
        // The two within the interval are reported when it is over, with no more coming.
        tokio::time::sleep(WARNING_INTERVAL + Duration::from_secs(1)).await;
        let seen = warnings.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[1].contains("too_large=0 http2=1 malformed=1 write_stalled=0"),
            "{seen:?}"
        );
    }

    /// A client that reads nothing of its answer is cut off after the write timeout and
    /// warned about (its access line alone would show a 200 with every byte handed over).
    #[tokio::test(start_paused = true)]
    async fn clients_cut_off_for_reading_nothing_are_warned_about() {
        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let _default = crate::test_support::set_default(subscriber);
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("x".repeat(1 << 20)))
        });
        let error = error_of_one_get(service, |server| {
            crate::write_stall::WriteStallGuard::new(server, Duration::from_secs(1))
        })
        .await;
        assert_eq!(
            Rejection::of(&error),
            Some(Rejection::WriteStalled),
            "{error}"
        );
        let rejected = RejectedRequests::default();
        rejected.connection_failed(&error, "192.0.2.7:40000".parse().unwrap());
        let seen = warnings.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("too_large=0 http2=0 malformed=0 write_stalled=1"),
            "{seen:?}"
        );

        // A service's own `TimedOut` (an upstream that timed out) is not a stalled client.
        let failing = hyper::service::service_fn(|_request| async {
            Err::<http::Response<String>, _>(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upstream timed out",
            ))
        });
        let error = error_of_one_get(failing, |server| server).await;
        assert_eq!(Rejection::of(&error), None, "{error}");
    }

    /// A request head begun and not finished within the head timeout is warned about; a
    /// kept-alive connection closed for being idle ends without an error, so it never is.
    #[tokio::test(start_paused = true)]
    async fn request_heads_not_finished_in_time_are_warned_about() {
        use crate::idle::{Activity, IdleGuard};

        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let _default = crate::test_support::set_default(subscriber);
        let (mut client, server) = tokio::io::duplex(4096);
        let head = Duration::from_secs(30);
        let server = IdleGuard::new(
            server,
            Activity::new(Instant::now()),
            head,
            Duration::from_secs(75),
        );
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let connection = tokio::spawn(
            http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::idle::HYPER_HEAD_TIMER)
                .serve_connection(TokioIo::new(server), service),
        );
        client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        let error = connection.await.unwrap().unwrap_err();
        assert_eq!(
            Rejection::of(&error),
            Some(Rejection::HeadTimeout),
            "{error}"
        );
        RejectedRequests::default().connection_failed(&error, "192.0.2.7:40000".parse().unwrap());
        let seen = warnings.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        for field in ["write_stalled=0", "head_timeout=1", "malformed=0"] {
            assert!(seen[0].contains(field), "{field}: {seen:?}");
        }
    }

    /// The error a connection ends with after `GET /`, its server side wrapped by `wrap`; the
    /// client stays, reading nothing, until it has ended.
    async fn error_of_one_get<S, I>(
        service: S,
        wrap: impl FnOnce(tokio::io::DuplexStream) -> I,
    ) -> hyper::Error
    where
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<String>,
            > + Send
            + 'static,
        S::Future: Send,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut client, server) = tokio::io::duplex(4096);
        let connection = tokio::spawn(
            http1::Builder::new().serve_connection(TokioIo::new(wrap(server)), service),
        );
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let error = connection.await.unwrap().unwrap_err();
        drop(client);
        error
    }
}

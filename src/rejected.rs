//! Requests hyper answers or drops itself, before the service sees them: no access line, no
//! count and no span tell about them, so the server warns, at most once per interval.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most one warning per this long, with the counts since the last.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why hyper turned a request away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    /// A request head over the size limit: answered 431 (414 for the request line).
    TooLarge,
    /// An HTTP/2 connection preface (a gRPC or h2c client) on this HTTP/1.1 port: closed.
    Http2,
    /// A request head that does not parse: answered 400.
    Malformed,
}

impl Rejection {
    /// The rejections worth an operator's attention; timeouts (an idle kept-alive connection
    /// ends by the head timeout too) and clients that leave stay at debug.
    fn of(error: &hyper::Error) -> Option<Self> {
        if error.is_parse_too_large() {
            Some(Self::TooLarge)
        } else if error.is_parse_version_h2() {
            Some(Self::Http2)
        } else if error.is_parse() {
            Some(Self::Malformed)
        } else {
            None
        }
    }
}

/// The tally of rejected requests, shared by every connection of one server.
#[derive(Clone, Default)]
pub(crate) struct RejectedRequests(Arc<Mutex<Tally>>);

#[derive(Default)]
struct Tally {
    last_warning: Option<Instant>,
    too_large: u64,
    http2: u64,
    malformed: u64,
}

impl RejectedRequests {
    /// Takes note of a connection that ended with `error`: a rejection is warned about (the
    /// first at once, then at most once per [`WARNING_INTERVAL`] with the counts since), the
    /// rest is logged at debug.
    pub(crate) fn connection_failed(&self, error: &hyper::Error, peer: SocketAddr) {
        let Some(rejection) = Rejection::of(error) else {
            tracing::debug!(error = %error, %peer, "connection closed with an error");
            return;
        };
        let mut tally = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match rejection {
            Rejection::TooLarge => tally.too_large += 1,
            Rejection::Http2 => tally.http2 += 1,
            Rejection::Malformed => tally.malformed += 1,
        }
        let now = Instant::now();
        if tally
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            too_large = tally.too_large,
            http2 = tally.http2,
            malformed = tally.malformed,
            %peer,
            error = %error,
            "requests rejected before the service saw them (no access line, not counted): \
             heads over the size limit (431), HTTP/2 clients on this HTTP/1.1 port, or \
             requests that do not parse (400); the counts are since the last such warning, \
             the peer and error the latest's"
        );
        *tally = Tally {
            last_warning: Some(now),
            ..Tally::default()
        };
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
    #[tokio::test]
    async fn requests_hyper_turns_away_are_warned_about_once_per_interval() {
        let warnings = Warnings::default();
        let subscriber = tracing_subscriber::registry().with(warnings.clone());
        let _default = tracing::subscriber::set_default(subscriber);
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
            seen[0].contains("too_large=1 http2=0 malformed=0")
                && seen[0].contains("peer=192.0.2.7:40000"),
            "{seen:?}"
        );
        let tally = rejected.0.lock().unwrap();
        assert_eq!((tally.too_large, tally.http2, tally.malformed), (0, 1, 1));
    }
}

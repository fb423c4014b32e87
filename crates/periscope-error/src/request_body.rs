//! A request body that the client stopped sending, or sent too slowly: told apart from a
//! malformed one, so that a client that goes away mid-upload is answered (and logged) as
//! `request_body_incomplete`, and one whose upload stalls past a body timeout (or, without
//! one, past the request timeout while the service waits for it) as a 408 `timeout`, rather
//! than `invalid_request` (or the request timeout's 504).

use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// Whether `error`, or an error in its source chain, says that the client stopped sending the
/// request body: the connection closed or was reset before the body's end (hyper's
/// [`is_incomplete_message`](hyper::Error::is_incomplete_message), an I/O error such as
/// `UnexpectedEof` or `ConnectionReset`), or, over HTTP/2, the client reset its stream or
/// the connection (with the `http2` feature).
///
/// A body the client finished but that is malformed (bad JSON, invalid UTF-8, broken chunked
/// framing, an HTTP/2 stream that ends before its `Content-Length`) is not cut: `false`. Nor is
/// a body that a layer decodes (tower-http's `RequestDecompressionLayer`) and that ends in
/// the middle of its gzip stream: the decoder's `UnexpectedEof`, deeper in the chain than the
/// error itself and not the source of hyper's error, is the body's fault, not the
/// connection's.
/// Handlers that read the body themselves use it to answer [`codes::REQUEST_BODY_INCOMPLETE`]
/// instead of `invalid_request`; [`ErrorLayer`](crate::ErrorLayer) does it for the bare
/// rejections of axum's extractors (`Bytes`, `Json`, `String`, `Form`, `Multipart`).
///
/// [`codes::REQUEST_BODY_INCOMPLETE`]: crate::codes::REQUEST_BODY_INCOMPLETE
///
/// ```
/// use periscope_error::is_request_body_cut;
///
/// let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
/// assert!(is_request_body_cut(&eof));
/// let malformed = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid chunk size");
/// assert!(!is_request_body_cut(&malformed));
/// // A truncated gzip body, as the body's reader sees it through a decoder.
/// let truncated = axum::Error::new(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
/// assert!(!is_request_body_cut(&truncated));
/// ```
pub fn is_request_body_cut(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    // An I/O error tells of the connection only as the error itself or as hyper's cause;
    // further down another error's chain it is that layer's (a decoder's `UnexpectedEof`).
    let mut from_connection = true;
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            if error.is_incomplete_message() {
                return true;
            }
            from_connection = true;
            cause = error.source();
            continue;
        }
        if let Some(error) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return from_connection
                && matches!(
                    error.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                );
        }
        #[cfg(feature = "http2")]
        if let Some(error) = error.downcast_ref::<h2::Error>() {
            // The connection closed or broke under the stream (the client's process died, the
            // network dropped, the server dropped a stalled connection): h2 gives every open
            // stream the connection's I/O error.
            if let Some(io) = error.get_io() {
                use std::io::ErrorKind::*;
                return matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                );
            }
            // The client cancelled the stream (RST_STREAM) or went away (GOAWAY); a reset h2
            // sent itself (a stream shorter than its `Content-Length`, flow control) is the
            // client's protocol error, not a cut.
            return error.is_remote() && (error.is_reset() || error.is_go_away());
        }
        from_connection = false;
        cause = error.source();
    }
    false
}

/// Whether `error`, or an error in its source chain, is tower-http's body timeout
/// (`RequestBodyTimeoutLayer`, `TimeoutBody`, `DeadlineBody`): the client did not send the
/// body's next bytes in time.
fn is_body_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// What [`ErrorLayer`](crate::ErrorLayer) saw of the request body while the service read it.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch {
    received: AtomicU64,
    cut: AtomicBool,
    /// tower-http's body timeout, inside this watch, ended the read.
    timed_out: AtomicBool,
    /// The last read found no bytes and was left waiting for the client's next ones: when the
    /// service rejects the body then, something between this watch and the handler stopped
    /// waiting (tower-http's body timeout placed inside the layer); when the request timeout
    /// fires then, the service was waiting for the client.
    waiting: AtomicBool,
    /// The length the request's `Content-Length` declares, read here (only for a body that
    /// is not empty) rather than for every request.
    expected: Option<u64>,
    /// An HTTP/2 request that asked for `100 Continue`, which hyper's HTTP/2 server never
    /// sends: a client holding its whole body back until then is right to, so a wait on its
    /// first byte is not the client's pace.
    held_back_for_continue: bool,
}

impl BodyWatch {
    /// The bytes received before the body was cut, if it was, and the declared length.
    pub(crate) fn cut_after(&self) -> Option<(u64, Option<u64>)> {
        self.cut
            .load(Ordering::Relaxed)
            .then(|| (self.received.load(Ordering::Relaxed), self.expected))
    }

    /// The bytes received before the client's upload stalled past a body timeout, if it did,
    /// and the declared length: when tower-http's timeout error came through the watch, or
    /// when the read was left waiting for the client's bytes and the service's rejection says
    /// that a body error ended it (`read_failed`): only a layer between the watch and the
    /// handler that stopped waiting (a body timeout inside the error layer) ends it so.
    pub(crate) fn stalled_after(&self, read_failed: bool) -> Option<(u64, Option<u64>)> {
        let stalled = self.timed_out.load(Ordering::Relaxed)
            || (read_failed && self.waiting.load(Ordering::Relaxed));
        stalled.then(|| (self.received.load(Ordering::Relaxed), self.expected))
    }

    /// The bytes received while the service is left waiting for the client's next ones, and
    /// the declared length: its last read of the body found none, and it still holds the body
    /// (`watch` is shared with the body alone: one count is the body's). Asked when the
    /// request timeout fires: the client's pace stopped the request, not the service's work.
    pub(crate) fn awaited_after(watch: &Arc<Self>) -> Option<(u64, Option<u64>)> {
        let waiting = watch.waiting.load(Ordering::Relaxed) && Arc::strong_count(watch) > 1;
        let received = watch.received.load(Ordering::Relaxed);
        (waiting && !(watch.held_back_for_continue && received == 0))
            .then_some((received, watch.expected))
    }
}

/// Puts a watch on the request's body when it is an `axum::body::Body` (what a `Router`'s
/// layers get): the only way to tell a cut body once an extractor has turned its error into a
/// plain-text 400.
pub(crate) fn watch<B: 'static>(request: &mut Request<B>) -> Option<Arc<BodyWatch>> {
    let body = (request.body_mut() as &mut dyn std::any::Any).downcast_mut::<axum::body::Body>()?;
    // A request without a body (most GETs) costs nothing more.
    if body.is_end_stream() {
        return None;
    }
    let inner = std::mem::take(body);
    let watch = Arc::new(BodyWatch {
        expected: periscope_context::content_length(request.headers()),
        held_back_for_continue: request.version() >= http::Version::HTTP_2
            && request
                .headers()
                .get(http::header::EXPECT)
                .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        ..BodyWatch::default()
    });
    let body = (request.body_mut() as &mut dyn std::any::Any).downcast_mut::<axum::body::Body>()?;
    *body = axum::body::Body::new(Watched {
        inner,
        watch: Arc::clone(&watch),
    });
    Some(watch)
}

/// The request body, counting its bytes and noting a cut.
#[pin_project]
struct Watched {
    #[pin]
    inner: axum::body::Body,
    watch: Arc<BodyWatch>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let watch = this.watch;
        watch.waiting.store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    watch
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(error))) if is_request_body_cut(error) => {
                watch.cut.store(true, Ordering::Relaxed);
            }
            Poll::Ready(Some(Err(error))) if is_body_timeout(error) => {
                watch.timed_out.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(all(test, feature = "http2"))]
mod tests {
    use super::is_request_body_cut;

    /// The error an HTTP/2 request body ends with when its connection closes under it (the
    /// client's process died, the network dropped): h2 fails the open stream with the
    /// connection's I/O error, which is a cut, as the same loss over HTTP/1.1 is.
    #[tokio::test]
    async fn an_http2_body_whose_connection_closed_is_cut() {
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            let (request, _respond) = connection.accept().await.unwrap().unwrap();
            let mut body = request.into_body();
            // Drives the connection while the body is read.
            let driver = tokio::spawn(async move { while connection.accept().await.is_some() {} });
            let mut error = None;
            while let Some(frame) = body.data().await {
                if let Err(e) = frame {
                    error = Some(e);
                    break;
                }
            }
            driver.abort();
            error.expect("the body failed")
        });
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::post("http://example/upload")
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let (_response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[b' '; 1000]), false)
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The client goes: its end of the connection is dropped with the stream open.
        connection.abort();
        drop((client, body));
        let error = server.await.unwrap();
        assert!(error.is_io(), "{error:?}");
        assert!(is_request_body_cut(&error), "{error:?}");
    }
}

//! The access line is written when the body ends: bytes counted across frames, aborted bodies
//! and service errors reported.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::capture;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use periscope_log::AccessLogLayer;
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A body of `n` frames of `size` bytes each.
struct Frames {
    left: usize,
    size: usize,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

fn poll_now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the test service is ready at once"),
    }
}

fn service(
    frames: usize,
    status: StatusCode,
) -> impl Service<
    Request<()>,
    Response = Response<periscope_log::AccessLogBody<Frames>>,
    Error = Infallible,
> {
    ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service_fn(move |_req: Request<()>| async move {
            let mut response = Response::new(Frames {
                left: frames,
                size: 10,
            });
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        })
}

#[test]
fn bytes_are_counted_across_frames_and_the_line_waits_for_the_end() {
    let out = capture(
        |b| b,
        |_| {
            let request = Request::get("/stream?secret=1").body(()).unwrap();
            let response = poll_now(service(3, StatusCode::OK).oneshot(request)).unwrap();
            let mut body = std::pin::pin!(response.into_body());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx) {}
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    let data = &lines[0]["data"];
    assert_eq!(
        (&data["bytes_out"], &data["status"]),
        (&json!(30), &json!(200))
    );
    assert_eq!(data["path"], "/stream");
    assert!(data.get("aborted").is_none());
}

/// The line's `path` is what `Uri::path` says for every form of request target: the path
/// alone (no query), `/` for an absolute URI without one, `*`, and empty for an authority
/// (a `CONNECT` target), where the URI has no path.
#[test]
fn the_path_is_the_uris_path_for_every_form_of_target() {
    for (target, path) in [
        ("/v1/items?q=1", "/v1/items"),
        ("http://example.com/v1/items?q=1", "/v1/items"),
        ("http://example.com", "/"),
        ("*", "*"),
        ("example.com:443", ""),
    ] {
        let uri: http::Uri = target.parse().unwrap();
        assert_eq!(uri.path(), path, "{target}");
        let out = capture(
            |b| b,
            |_| {
                let request = Request::get(uri).body(()).unwrap();
                let response = poll_now(service(0, StatusCode::OK).oneshot(request)).unwrap();
                let mut body = std::pin::pin!(response.into_body());
                let mut cx = Context::from_waker(std::task::Waker::noop());
                while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx) {}
            },
        );
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{target}");
        assert_eq!(lines[0]["data"]["path"], path, "{target}: {}", lines[0]);
    }
}

#[test]
fn a_body_dropped_before_its_end_is_logged_as_aborted() {
    let out = capture(
        |b| b,
        |_| {
            let request = Request::get("/big").body(()).unwrap();
            let response =
                poll_now(service(5, StatusCode::SERVICE_UNAVAILABLE).oneshot(request)).unwrap();
            let mut body = Box::pin(response.into_body());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(body.as_mut().poll_frame(&mut cx).is_ready());
            drop(body);
        },
    );
    let line = &out.lines()[0];
    assert_eq!(line["level"], "error");
    assert_eq!(line["data"]["aborted"], true);
    assert_eq!(line["data"]["bytes_out"], 10);
}

#[test]
fn a_service_error_is_an_error_line() {
    let out = capture(
        |b| b,
        |_| {
            let failing = ServiceBuilder::new()
                .layer(AccessLogLayer::new())
                .service_fn(|_req: Request<()>| async {
                    Err::<Response<String>, _>("upstream refused")
                });
            let request = Request::post("/jobs").body(()).unwrap();
            assert!(poll_now(failing.oneshot(request)).is_err());
        },
    );
    let line = &out.lines()[0];
    assert_eq!(line["level"], "error");
    assert_eq!(line["message"], "request failed");
    // An error renders as everywhere else, even when its type can tell only its message.
    assert_eq!(
        line["data"]["error"],
        json!({"message": "upstream refused", "chain": []})
    );
    assert_eq!(line["data"]["method"], "POST");
}

#[test]
fn a_boxed_service_error_keeps_its_chain() {
    let out = capture(
        |b| b,
        |_| {
            let failing = ServiceBuilder::new()
                .layer(AccessLogLayer::new())
                .service_fn(|_req: Request<()>| async {
                    let cause = std::io::Error::other("connection reset");
                    let error: tower::BoxError = Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        Wrapped(cause),
                    ));
                    Err::<Response<String>, _>(error)
                });
            let request = Request::get("/jobs").body(()).unwrap();
            assert!(poll_now(failing.oneshot(request)).is_err());
        },
    );
    let line = &out.lines()[0];
    assert_eq!(
        line["data"]["error"],
        json!({"message": "upstream call failed", "chain": ["connection reset"]})
    );
}

/// An error with a cause.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream call failed")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn a_response_future_dropped_before_the_response_is_logged_as_aborted() {
    let out = capture(
        |b| b,
        |_| {
            let slow = ServiceBuilder::new()
                .layer(AccessLogLayer::new())
                .service_fn(|_req: Request<()>| {
                    std::future::pending::<Result<Response<String>, Infallible>>()
                });
            let request = Request::put("/jobs/7?token=x").body(()).unwrap();
            let mut future = Box::pin(slow.oneshot(request));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(future.as_mut().poll(&mut cx).is_pending());
            // The client went away, or an outer timeout fired.
            drop(future);
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "warn");
    assert_eq!(line["message"], "request completed");
    let data = &line["data"];
    assert_eq!(data["aborted"], true);
    assert_eq!(data["method"], "PUT");
    assert_eq!(data["path"], "/jobs/7");
    assert_eq!(data["bytes_out"], 0);
    assert!(data.get("status").is_none(), "{data}");
    assert!(data["duration_ms"].is_number());
}

#[test]
fn a_completed_request_is_logged_once_even_when_its_future_is_dropped_after() {
    let out = capture(
        |b| b,
        |_| {
            let request = Request::get("/done").body(()).unwrap();
            let mut future = Box::pin(service(1, StatusCode::OK).oneshot(request));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
                panic!("the test service answers at once");
            };
            drop(future);
            let mut body = std::pin::pin!(response.into_body());
            while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx) {}
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0]["data"].get("aborted").is_none());
    assert_eq!(lines[0]["data"]["bytes_out"], 10);
}

/// A body whose frames panic after its first.
struct PanicsAfterOne(bool);

impl Body for PanicsAfterOne {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            panic!("the stream broke");
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
    }
}

/// A panic in the service's future or body, caught outside the layer (tower-http's
/// `CatchPanicLayer`, a runtime's task boundary) and the future or body then dropped, is a
/// failure at `error`, not the line of a client that went away.
#[test]
fn a_panic_caught_outside_is_an_error_line_not_an_aborted_request() {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    let out = capture(
        |b| b,
        |_| {
            let panicking = ServiceBuilder::new()
                .layer(AccessLogLayer::new())
                .service_fn(|_req: Request<()>| async {
                    if true {
                        panic!("the handler broke");
                    }
                    Ok::<Response<String>, Infallible>(Response::new(String::new()))
                });
            let request = Request::get("/panics").body(()).unwrap();
            let mut future = Box::pin(panicking.oneshot(request));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))).is_err());
            drop(future);

            let streaming = ServiceBuilder::new()
                .layer(AccessLogLayer::new())
                .service_fn(|_req: Request<()>| async {
                    Ok::<_, Infallible>(Response::new(PanicsAfterOne(false)))
                });
            let request = Request::get("/streams").body(()).unwrap();
            let response = poll_now(streaming.oneshot(request)).unwrap();
            let mut body = Box::pin(response.into_body());
            assert!(body.as_mut().poll_frame(&mut cx).is_ready());
            assert!(catch_unwind(AssertUnwindSafe(|| body.as_mut().poll_frame(&mut cx))).is_err());
            drop(body);
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["level"], "error");
    assert_eq!(lines[0]["message"], "request failed");
    assert_eq!(
        lines[0]["data"]["error"]["message"],
        "the service panicked before answering"
    );
    assert_eq!(lines[1]["level"], "error");
    assert_eq!(lines[1]["data"]["status"], 200);
    assert_eq!(lines[1]["data"]["bytes_out"], 4);
    assert_eq!(
        lines[1]["data"]["error"]["message"],
        "the service's body panicked while it was sent"
    );
}

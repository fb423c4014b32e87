//! Bare answers and timers. On a Tokio runtime built without its time driver (`enable_io` alone serves axum), the error
//! layer with no timeout of its own still answers: an error body it reads, or a gRPC client's
//! `grpc-timeout`, needs no timer, where `tokio::time::sleep` would panic the layer whose job
//! is to stop panics.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use periscope_error::ErrorLayer;
use tower::{Layer, ServiceExt, service_fn};

type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

fn answering(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> impl Fn(Request<Full<Bytes>>) -> Answer + Clone {
    move |_| {
        let response = Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

/// A gRPC call to `path`, as a gRPC client sends it.
fn grpc_call(path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

#[test]
fn a_runtime_without_timers_gets_its_answers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A text error the layer reads to put in the envelope.
        let service = ErrorLayer::new().layer(service_fn(answering(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "bad field",
        )));
        let request = Request::post("/orders").body(Full::default()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(envelope["error"]["message"], "bad field", "{envelope}");

        // A gRPC call with the client's deadline: the call goes through.
        let service = ErrorLayer::new().layer(service_fn(answering(
            StatusCode::OK,
            "application/grpc",
            "",
        )));
        let mut request = grpc_call("/pkg.Jobs/Get");
        request
            .headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
}

/// A bare 408 to a gRPC call (tower-http's `TimeoutLayer` firing inside) is a timeout to its
/// client too: `DEADLINE_EXCEEDED`, as the envelope's `timeout` code says, not
/// `FAILED_PRECONDITION` ("do not retry until the system is fixed").
#[tokio::test]
async fn a_bare_408_to_a_grpc_call_is_deadline_exceeded() {
    let service = ErrorLayer::new().layer(service_fn(answering(
        StatusCode::REQUEST_TIMEOUT,
        "text/plain",
        "",
    )));
    let request = grpc_call("/pkg.Jobs/Get");
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Trailers-only (the code in the head), else in the trailers.
    let mut status = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(trailers) = frame.unwrap().into_trailers() {
            status = trailers.get("grpc-status").cloned();
        }
    }
    assert_eq!(status.as_ref().map(|s| s.to_str().unwrap()), Some("4"));
}

/// An answer that gives a delay to retry after (a 413 or a maintenance 500 with `Retry-After`)
/// says the condition is temporary: the envelope says retryable with that delay, never
/// `retryable: false` beside `retry_after_s`. A service's envelope that says not to retry
/// keeps its word, without a delay.
#[tokio::test]
async fn a_retry_after_makes_the_answer_retryable() {
    async fn envelope(response: Response<Full<Bytes>>) -> serde_json::Value {
        let service = ErrorLayer::new().layer(service_fn(move |_: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, Infallible>(response.clone()))
        }));
        let request = Request::post("/upload").body(Full::default()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
    let answer = |status: u16, content_type: &str, body: &'static str| {
        Response::builder()
            .status(status)
            .header("retry-after", "30")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    for status in [413, 500] {
        let error = &envelope(answer(status, "text/plain", "")).await["error"];
        assert_eq!(error["retryable"], true, "{status}: {error}");
        assert_eq!(error["retry_after_s"], 30, "{status}: {error}");
    }
    let own = r#"{"error":{"code":"payload_too_large","message":"too big","retryable":false}}"#;
    let error = &envelope(answer(413, "application/json", own)).await["error"];
    assert_eq!(error["retryable"], false, "{error}");
    assert!(error.get("retry_after_s").is_none(), "{error}");
}

/// A gRPC call answered with no gRPC answer at all (a single-page app's fallback page, a 204):
/// no gRPC client can read it, so it gets what a method the service lacks gets,
/// `UNIMPLEMENTED`, trailers-only, with its request id.
#[tokio::test]
async fn a_grpc_call_answered_without_grpc_is_unimplemented() {
    for (status, content_type) in [
        (StatusCode::OK, "text/html"),
        (StatusCode::NO_CONTENT, "text/plain"),
        (StatusCode::FOUND, "text/html"),
    ] {
        let service =
            ErrorLayer::new().layer(service_fn(answering(status, content_type, "<p>app</p>")));
        let mut request = grpc_call("/pkg.Jobs/Nope");
        request
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("grpc-7"));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{status}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "application/grpc", "{status}");
        assert_eq!(headers["grpc-status"], "12", "{status}");
        assert_eq!(headers["x-request-id"], "grpc-7", "{status}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "{status}: {body:?}");
    }
    // A gRPC service's own answer passes as it is.
    let service = ErrorLayer::new().layer(service_fn(answering(
        StatusCode::OK,
        "application/grpc",
        "",
    )));
    let request = grpc_call("/pkg.Jobs/Get");
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.headers().get("grpc-status"), None);
}

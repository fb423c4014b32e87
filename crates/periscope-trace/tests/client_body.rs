//! The client span of `ClientTraceLayer` lasts until the answer's body ends, over real sockets
//! on 127.0.0.1: a streamed HTTP answer is timed to its last chunk, a body cut by the server
//! fails the span, a body dropped half-read closes it without failing it, an answer with no body
//! (`HEAD`, 204) closes it at once; a gRPC call through a tonic channel records the code its
//! trailers bring (`OK` of a unary call, a failure after a message, a stream reset, trailers
//! missing, a body the caller drops).

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use periscope_context::RequestContext;
use periscope_trace::ClientTraceLayer;
use support::{Capture, ClosedSpan, traced_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

const CLIENT_SPAN: &str = "http_client_request";

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    (capture.clone(), support::set_default(subscriber))
}

/// The client spans of request `id` closed so far.
fn closed(capture: &Capture, id: &str) -> Vec<ClosedSpan> {
    capture.spans_for(CLIENT_SPAN, id)
}

/// The one closed client span of request `id`, waited for (a stream reset reaches the server
/// after the client's drop returns, but the client span closes in the drop itself: the wait is
/// only a margin).
async fn closed_span(capture: &Capture, id: &str) -> ClosedSpan {
    for _ in 0..100 {
        let mut spans = closed(capture, id);
        if !spans.is_empty() {
            assert_eq!(spans.len(), 1, "{spans:?}");
            return spans.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the client span of {id} did not close");
}

/// An HTTP/1.1 server on 127.0.0.1 answering each connection's one request by its path:
/// `/stream` three chunks 100 ms apart, `/cut` one chunk and then the connection closed
/// mid-body, `/hold` one chunk and then nothing until the client goes, `/204` no content, and
/// a `HEAD` a head announcing five bytes.
async fn http_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(answer(stream));
        }
    });
    addr
}

async fn answer(mut stream: tokio::net::TcpStream) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut request_line = head.split(' ');
    let (method, path) = (request_line.next().unwrap(), request_line.next().unwrap());
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    match (method, path) {
        ("HEAD", _) => {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n";
            stream.write_all(head).await.unwrap();
        }
        (_, "/204") => {
            let head = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
            stream.write_all(head).await.unwrap();
        }
        (_, "/stream") => {
            stream.write_all(CHUNKED).await.unwrap();
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stream.write_all(b"5\r\ntoken\r\n").await.unwrap();
            }
            stream.write_all(b"0\r\n\r\n").await.unwrap();
        }
        (_, "/cut") => {
            stream.write_all(CHUNKED).await.unwrap();
            stream.write_all(b"5\r\ntoken\r\n").await.unwrap();
            // Closed without the last chunk: the body is cut short.
        }
        (_, "/grpc-typed") => {
            // A plain HTTP answer that calls itself gRPC (a misconfigured proxy), once without
            // a code and once with a failing one in its head.
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
            stream.write_all(head).await.unwrap();
        }
        (_, "/grpc-typed-failing") => {
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
            stream.write_all(head).await.unwrap();
        }
        (_, "/pkg.Svc/Html") => {
            // A gRPC call answered by a proxy's page, and by an ingress's 503.
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>";
            stream.write_all(head).await.unwrap();
        }
        (_, "/pkg.Svc/Unavailable") => {
            let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown";
            stream.write_all(head).await.unwrap();
        }
        (_, "/pkg.Svc/Nginx") => {
            // NGINX's gRPC error page (`error_page 502 = @grpc_unavailable`): no gRPC
            // `content-type`, the code in the head, which the caller reads.
            let head = b"HTTP/1.1 204 No Content\r\ngrpc-status: 14\r\ngrpc-message: unavailable\r\nconnection: close\r\n\r\n";
            stream.write_all(head).await.unwrap();
        }
        (_, "/pkg.Svc/Web") => {
            // A gRPC-Web server's answer: its code comes at the end of the body.
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            stream.write_all(head).await.unwrap();
        }
        (_, "/hold") => {
            stream.write_all(CHUNKED).await.unwrap();
            stream.write_all(b"5\r\ntoken\r\n").await.unwrap();
            // Held until the client closes the connection.
            let mut rest = [0; 64];
            while stream.read(&mut rest).await.unwrap_or(0) > 0 {}
        }
        _ => panic!("no script for {method} {path}"),
    }
    stream.flush().await.unwrap();
}

fn get(addr: SocketAddr, method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A streamed answer (tokens 100 ms apart): the client span stays open after the head, and
/// closes once the body has been read to its end, its duration covering the stream, as the
/// callee's server span does.
#[tokio::test]
async fn a_streamed_answer_keeps_the_client_span_until_its_last_chunk() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    let ctx = RequestContext::new_root();
    let id = ctx.request_id.as_str();

    let response = ctx
        .clone()
        .scope(traced_client().oneshot(get(addr, Method::GET, "/stream")))
        .await
        .unwrap();
    let head_at = Instant::now();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(closed(&capture, id).is_empty(), "closed at the head");

    let mut body = response.into_body();
    let mut chunks = 0;
    let mut last_chunk_at = head_at;
    while let Some(frame) = body.frame().await {
        assert_eq!(frame.unwrap().into_data().unwrap(), "token");
        chunks += 1;
        last_chunk_at = Instant::now();
        assert!(closed(&capture, id).is_empty(), "closed before the end");
    }
    assert_eq!(chunks, 3);

    let span = closed_span(&capture, id).await;
    assert!(
        span.closed_at >= last_chunk_at,
        "closed before the last chunk"
    );
    assert!(span.closed_at > head_at);
    assert!(
        span.duration >= Duration::from_millis(300),
        "{:?}",
        span.duration
    );
    assert_eq!(span.get("http.response.status_code"), Some("200"));
    assert_eq!(span.get("otel.status_code"), None, "{span:?}");
}

/// A body the server cuts short (the connection closed before the last chunk) fails the call:
/// its span is an error, though its head said 200.
#[tokio::test]
async fn a_body_cut_by_the_server_fails_the_client_span() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    let ctx = RequestContext::new_root();

    let response = ctx
        .clone()
        .scope(traced_client().oneshot(get(addr, Method::GET, "/cut")))
        .await
        .unwrap();
    let read = response.into_body().collect().await;
    assert!(read.is_err(), "the body was not cut");

    let span = closed_span(&capture, ctx.request_id.as_str()).await;
    assert_eq!(span.get("http.response.status_code"), Some("200"));
    assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
    assert_eq!(span.get("error.type"), Some("_OTHER"), "{span:?}");
}

/// A plain HTTP call (not a gRPC request) whose 200 answer says it is gRPC (a misconfigured
/// proxy): judged by its status, as any HTTP call, not failed as a gRPC call without a code
/// (`UNKNOWN`) or with the `grpc-status` of its head.
#[tokio::test]
async fn a_plain_call_answered_with_a_grpc_content_type_is_judged_by_its_status() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    for path in ["/grpc-typed", "/grpc-typed-failing"] {
        let ctx = RequestContext::new_root();
        let response = ctx
            .clone()
            .scope(traced_client().oneshot(get(addr, Method::GET, path)))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");

        let span = closed_span(&capture, ctx.request_id.as_str()).await;
        assert_eq!(span.get("http.response.status_code"), Some("200"), "{path}");
        assert_eq!(span.get("otel.status_code"), None, "{path}: {span:?}");
        assert_eq!(span.get("error.type"), None, "{path}: {span:?}");
        assert_eq!(span.get("rpc.grpc.status_code"), None, "{path}: {span:?}");
    }
}

/// A gRPC call answered by something that is no gRPC server (a proxy's page, an ingress's
/// 503): judged as a gRPC client judges it, by gRPC's mapping of the HTTP status, so its span
/// carries the code the caller gets and fails, a 200 included.
#[tokio::test]
async fn a_grpc_call_answered_without_grpc_gets_the_code_grpc_maps_its_status_to() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    let call = async |path: &str, content_type: &str| {
        let ctx = RequestContext::new_root();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", content_type)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = ctx
            .clone()
            .scope(traced_client().oneshot(request))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        closed_span(&capture, ctx.request_id.as_str()).await
    };
    for (path, status, code, name) in [
        ("/pkg.Svc/Html", "200", "2", "UNKNOWN"),
        ("/pkg.Svc/Unavailable", "503", "14", "UNAVAILABLE"),
        ("/pkg.Svc/Nginx", "204", "14", "UNAVAILABLE"),
    ] {
        let span = call(path, "application/grpc").await;
        assert_eq!(
            span.get("http.response.status_code"),
            Some(status),
            "{span:?}"
        );
        assert_eq!(span.get("rpc.grpc.status_code"), Some(code), "{span:?}");
        assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
        assert_eq!(span.get("error.type"), Some(name), "{span:?}");
    }

    // A gRPC-Web server's answer is one: judged by its head, the 200 it is.
    let span = call("/pkg.Svc/Web", "application/grpc-web+proto").await;
    assert_eq!(span.get("http.response.status_code"), Some("200"));
    assert_eq!(span.get("otel.status_code"), None, "{span:?}");
    assert_eq!(span.get("error.type"), None, "{span:?}");
}

/// A body the caller drops half-read: the span stays open while it is read and closes when it
/// is dropped, without an error (not reading on is the caller's choice).
#[tokio::test]
async fn a_body_dropped_half_read_closes_the_client_span_without_an_error() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    let ctx = RequestContext::new_root();
    let id = ctx.request_id.as_str();

    let response = ctx
        .clone()
        .scope(traced_client().oneshot(get(addr, Method::GET, "/hold")))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "token");
    assert!(closed(&capture, id).is_empty(), "closed before the body");
    drop(body);

    let span = closed_span(&capture, id).await;
    assert_eq!(span.get("http.response.status_code"), Some("200"));
    assert_eq!(span.get("otel.status_code"), None, "{span:?}");
    assert_eq!(span.get("error.type"), None, "{span:?}");
}

/// Answers without a body (`HEAD`, 204): hyper hands an empty body that is at its end, and the
/// span closes with the head, while the caller still holds the body unread.
#[tokio::test]
async fn answers_without_a_body_close_the_client_span_at_once() {
    let (capture, _guard) = capture();
    let addr = http_server().await;
    for (method, path, status) in [
        (Method::HEAD, "/", StatusCode::OK),
        (Method::GET, "/204", StatusCode::NO_CONTENT),
    ] {
        let ctx = RequestContext::new_root();
        let response = ctx
            .clone()
            .scope(traced_client().oneshot(get(addr, method.clone(), path)))
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let body = response.into_body();
        assert!(body.is_end_stream(), "{method}");
        let spans = closed(&capture, ctx.request_id.as_str());
        assert_eq!(spans.len(), 1, "{method} {path}: not closed with its head");
        let status = status.as_str();
        assert_eq!(spans[0].get("http.response.status_code"), Some(status));
        assert_eq!(spans[0].get("otel.status_code"), None, "{spans:?}");
        drop(body);
    }
}

/// The request metadata that picks the answer's shape (see [`scripted`]).
const ANSWER: &str = "x-test-answer";
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A tonic service answering every call `OK`, passing the request's [`ANSWER`] on to the
/// answer's head for [`scripted`].
struct Exporter;

#[tonic::async_trait]
impl TraceService for Exporter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut response = tonic::Response::new(ExportTraceServiceResponse::default());
        if let Some(answer) = request.metadata().get(ANSWER) {
            response.metadata_mut().insert(ANSWER, answer.clone());
        }
        Ok(response)
    }
}

/// How an answer marked with [`ANSWER`] goes on after its one message.
#[derive(Clone, Copy)]
enum After {
    /// Trailers with this `grpc-status`.
    Trailers(&'static str),
    /// The body fails: the server resets the stream.
    Fails,
    /// The body ends without trailers.
    Ends,
    /// Nothing more, until the client goes.
    Holds,
}

/// One empty message (an `ExportTraceServiceResponse`), then, 50 ms later, what `after`
/// says (an end that came at once could reach the client with the head, and a reset before
/// it: the call would fail without an answer).
struct OneMessage {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
    after: Option<After>,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[0; 5])))));
        }
        std::task::ready!(self.pause.as_mut().poll(cx));
        if let Some(After::Holds) = self.after {
            return Poll::Pending;
        }
        Poll::Ready(match self.after.take() {
            Some(After::Trailers(code)) => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", code.parse().unwrap());
                Some(Ok(Frame::trailers(trailers)))
            }
            Some(After::Fails) => Some(Err(std::io::Error::other("the stream failed"))),
            Some(After::Ends | After::Holds) | None => None,
        })
    }
}

/// The tonic service's answer, with the body of a marked one replaced by [`OneMessage`].
fn scripted(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let Some(answer) = response.headers_mut().remove(ANSWER) else {
        return response;
    };
    let after = match answer.to_str().unwrap() {
        "fails" => After::Fails,
        "ends" => After::Ends,
        "holds" => After::Holds,
        "13" => After::Trailers("13"),
        "99" => After::Trailers("99"),
        other => panic!("no answer {other}"),
    };
    let body = OneMessage {
        sent: false,
        pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
        after: Some(after),
    };
    *response.body_mut() = tonic::body::Body::new(body);
    response
}

/// A tonic server on 127.0.0.1 (HTTP/2) and a channel to it.
async fn grpc_server() -> (tonic::transport::Channel, http::Uri) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(scripted))
        .add_service(TraceServiceServer::new(Exporter))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let channel = tonic::transport::Endpoint::from(origin.clone())
        .connect()
        .await
        .unwrap();
    (channel, origin)
}

/// Makes one call through a tonic client over the channel in `ClientTraceLayer`, marked with
/// `answer` when given, and returns the code the caller got and the call's closed client span.
async fn call(capture: &Capture, answer: Option<&'static str>) -> (tonic::Code, ClosedSpan) {
    let (channel, origin) = grpc_server().await;
    let mut client =
        TraceServiceClient::with_origin(ClientTraceLayer::new().layer(channel), origin);
    let mut request = tonic::Request::new(ExportTraceServiceRequest::default());
    if let Some(answer) = answer {
        request
            .metadata_mut()
            .insert(ANSWER, answer.parse().unwrap());
    }
    let ctx = RequestContext::new_root();
    let code = match ctx.clone().scope(client.export(request)).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let span = closed_span(capture, ctx.request_id.as_str()).await;
    assert_eq!(span.get("otel.name"), Some(&EXPORT[1..]));
    assert_eq!(span.get("rpc.system"), Some("grpc"));
    assert_eq!(
        span.get("http.response.status_code"),
        Some("200"),
        "{code:?} {span:?}"
    );
    (code, span)
}

/// Every unary call tonic answers with a message brings its `OK` in the trailers: the client
/// span records `rpc.grpc.status_code` 0, as the RPC conventions require, and is no error.
#[tokio::test]
async fn a_unary_grpc_call_records_the_ok_of_its_trailers() {
    let (capture, _guard) = capture();
    let (code, span) = call(&capture, None).await;
    assert_eq!(code, tonic::Code::Ok);
    assert_eq!(span.get("rpc.grpc.status_code"), Some("0"), "{span:?}");
    assert_eq!(span.get("otel.status_code"), None, "{span:?}");
    assert_eq!(span.get("error.type"), None, "{span:?}");
}

/// A call that fails in its trailers after a message (HTTP 200 and a message first): the
/// client span is an error with the trailers' code, as the caller's status says.
#[tokio::test]
async fn a_grpc_call_failing_in_its_trailers_fails_the_client_span() {
    let (capture, _guard) = capture();
    let (code, span) = call(&capture, Some("13")).await;
    assert_eq!(code, tonic::Code::Internal);
    assert_eq!(span.get("rpc.grpc.status_code"), Some("13"), "{span:?}");
    assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
    assert_eq!(span.get("error.type"), Some("INTERNAL"), "{span:?}");
}

/// A gRPC answer whose body fails (the server resets the stream), ends without a
/// `grpc-status`, or ends with a number gRPC does not define: the span records the code the
/// caller gets, `INTERNAL`, `UNKNOWN` and `UNKNOWN` (OpenTelemetry's `rpc.grpc.status_code` is
/// one of 0 to 16).
#[tokio::test]
async fn a_grpc_body_that_fails_or_ends_without_a_code_records_the_callers_code() {
    let (capture, _guard) = capture();
    for (answer, expected, name) in [
        ("fails", tonic::Code::Internal, "INTERNAL"),
        ("ends", tonic::Code::Unknown, "UNKNOWN"),
        ("99", tonic::Code::Unknown, "UNKNOWN"),
    ] {
        let (code, span) = call(&capture, Some(answer)).await;
        assert_eq!(code, expected, "{answer}");
        let value = (expected as i32).to_string();
        assert_eq!(span.get("rpc.grpc.status_code"), Some(value.as_str()));
        assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
        assert_eq!(span.get("error.type"), Some(name), "{span:?}");
    }
}

/// A raw `Export` call (one empty message) whose answer sends one message and then holds.
fn held_export(origin: &http::Uri) -> Request<tonic::body::Body> {
    Request::post(format!("{origin}{}", &EXPORT[1..]))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(ANSWER, "holds")
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(
            &[0; 5],
        ))))
        .unwrap()
}

/// A gRPC answer the caller stops reading after its first message (a server stream it gives
/// up on): its code never comes, the call is cancelled (its stream reset), and the span closes
/// when the body is dropped with `CANCELLED`, as the server's span records it.
#[tokio::test]
async fn a_grpc_body_dropped_before_its_code_is_cancelled() {
    let (capture, _guard) = capture();
    let (channel, origin) = grpc_server().await;
    let mut client = ClientTraceLayer::new().layer(channel);
    let request = held_export(&origin);
    let ctx = RequestContext::new_root();
    let id = ctx.request_id.as_str();
    let client = client.ready().await.unwrap();
    // The call's span is made in `call`: the request's context must be current there.
    let response = ctx.in_scope(|| client.call(request)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut body = response.into_body();
    let message = body.frame().await.unwrap().unwrap();
    assert_eq!(message.into_data().unwrap(), Bytes::from_static(&[0; 5]));
    assert!(closed(&capture, id).is_empty(), "closed before its code");
    drop(body);

    let span = closed_span(&capture, id).await;
    assert_eq!(span.get("rpc.grpc.status_code"), Some("1"), "{span:?}");
    assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
    assert_eq!(span.get("error.type"), Some("CANCELLED"), "{span:?}");
}

/// A body that logs while its frames are made (a client's decoder, a stand-in transport
/// here): its lines carry the call's client span, polled inside it.
#[tokio::test]
async fn the_body_is_read_inside_the_client_span() {
    struct Logs(bool);
    impl http_body::Body for Logs {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            tracing::info!("frame made");
            let first = !std::mem::replace(&mut self.0, true);
            Poll::Ready(first.then(|| Ok(Frame::data(Bytes::from_static(b"token")))))
        }
    }

    let (capture, _guard) = capture();
    let transport = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Logs(false)))
    });
    let ctx = RequestContext::new_root();
    let request = get("127.0.0.1:9".parse().unwrap(), Method::GET, "/");
    let response = ctx
        .clone()
        .scope(ClientTraceLayer::new().layer(transport).oneshot(request))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "token");

    let span = closed_span(&capture, ctx.request_id.as_str()).await;
    let lines = capture.lines_for(ctx.request_id.as_str());
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        assert_eq!(line.message, "frame made");
        assert_eq!(line.ctx("span_id"), span.get("span_id"), "{line:?}");
    }
}

/// The client's body, panicking when polled after its first frame (a decoder below the layer
/// with a bug).
struct PanicsAfterOneFrame<B> {
    inner: B,
    polled: bool,
}

impl<B: http_body::Body + Unpin> http_body::Body for PanicsAfterOneFrame<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if self.polled {
            panic!("the client's body panicked on purpose");
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        self.polled = frame.is_ready();
        frame
    }
}

/// The answer's body, panicking when polled after its first frame.
fn panics_after_one_frame<B>(
    response: http::Response<B>,
) -> http::Response<PanicsAfterOneFrame<B>> {
    response.map(|inner| PanicsAfterOneFrame {
        inner,
        polled: false,
    })
}

/// A client's body that panics while it is read (caught around the poll, the body dropped
/// afterwards, as a task-level `catch_unwind` does): the client failed, as when its future
/// panics, so the span is an error (`_OTHER`): not a success for a plain HTTP answer, not
/// `CANCELLED` for a gRPC call, which the caller did not cancel. The span is not left entered:
/// the next line logged on the thread carries no ids of the call.
#[tokio::test]
async fn a_client_body_that_panics_fails_the_client_span() {
    let (capture, _guard) = capture();
    let http = http_server().await;
    let client = ClientTraceLayer::new().layer(
        tower::util::MapResponseLayer::new(panics_after_one_frame).layer(support::plain_client()),
    );
    body_panics(&capture, client, get(http, Method::GET, "/stream")).await;

    let (channel, origin) = grpc_server().await;
    let client = ClientTraceLayer::new()
        .layer(tower::util::MapResponseLayer::new(panics_after_one_frame).layer(channel));
    let request = held_export(&origin);
    body_panics(&capture, client, request).await;
}

/// Calls `client`, reads the answer's first frame, has the next poll panic, and checks the
/// call's span and the line logged next.
async fn body_panics<S, B, R>(capture: &Capture, mut client: S, request: Request<R>)
where
    S: Service<Request<R>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let ctx = RequestContext::new_root();
    let id = ctx.request_id.as_str();
    let client = client.ready().await.unwrap();
    // The call's span is made in `call`: the request's context must be current there.
    let response = ctx.in_scope(|| client.call(request)).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Pin::new(&mut body).poll_frame(&mut cx).is_ready()
    }));
    assert!(polled.is_err(), "{id}: the body did not panic");
    tracing::info!(call = id, "after the panic");
    drop(body);

    let span = closed_span(capture, id).await;
    assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
    assert_eq!(span.get("error.type"), Some("_OTHER"), "{span:?}");
    assert_eq!(span.get("rpc.grpc.status_code"), None, "{span:?}");
    let after = capture
        .lines()
        .into_iter()
        .find(|line| line.fields.get("call").map(String::as_str) == Some(id))
        .unwrap();
    assert_eq!(after.ctx("span_id"), None, "{after:?}");
}

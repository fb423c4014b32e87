//! A tonic service behind `obs.layer()`, called by tonic clients over HTTP/2 on 127.0.0.1: every
//! kind of call (unary, server streaming, client streaming, bidirectional), answered with
//! messages, with an error status before or after them, by a panic, or left by the client;
//! tonic's interceptors, `Routes` and server settings beside the stack. What the client gets
//! and what the server logs, traces and counts are read back from the real outputs.

#![cfg(all(feature = "axum", feature = "http2", feature = "grpc"))]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut};
use futures_util::Stream;
use periscope::Observability;
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status, Streaming};

mod capture;
use capture::{Captured, capture_lines};
mod recorded;
use recorded::{counted, eventually, record};

/// A codec of UTF-8 strings: a service with a method of each kind needs no generated code.
#[derive(Clone, Copy, Default)]
struct Text;

impl Codec for Text {
    type Encode = String;
    type Decode = String;
    type Encoder = Text;
    type Decoder = Text;
    fn encoder(&mut self) -> Text {
        Text
    }
    fn decoder(&mut self) -> Text {
        Text
    }
}

impl Encoder for Text {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Text {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Status::invalid_argument("not UTF-8"))
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<String, Status>> + Send>>;

const UNARY: &str = "/audit.Echo/Unary";
const SERVER_STREAM: &str = "/audit.Echo/ServerStream";
const CLIENT_STREAM: &str = "/audit.Echo/ClientStream";
const BIDI: &str = "/audit.Echo/Bidi";
const METHODS: [&str; 4] = [UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI];

/// The status a message names (`not_found`, `internal`, ...), if any.
fn named_status(what: &str) -> Option<Status> {
    Some(match what {
        "not_found" => Status::not_found("no such thing"),
        "invalid_argument" => Status::invalid_argument("bad thing"),
        "unavailable" => Status::unavailable("down"),
        "internal" => Status::internal("broke"),
        "cancelled" => Status::cancelled("gave up"),
        "deadline" => Status::deadline_exceeded("too slow downstream"),
        _ => return None,
    })
}

/// Echoes its message, or fails as it names (a status, `panic`), or takes 3 s (`slow`).
async fn unary(request: Request<String>) -> Result<Response<String>, Status> {
    let what = request.into_inner();
    if let Some(status) = named_status(&what) {
        return Err(status);
    }
    match what.as_str() {
        "panic" => panic!("unary panicked on purpose"),
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    Ok(Response::new(what))
}

/// `n:end`: `n` messages, then `end`: `ok`, a status (trailers-only when `n` is 0), or `panic`
/// (once the messages have gone out).
async fn server_stream(request: Request<String>) -> Result<Response<Messages>, Status> {
    let what = request.into_inner();
    let (n, end) = what.split_once(':').unwrap_or(("0", what.as_str()));
    let n: usize = n.parse().unwrap_or(0);
    if n == 0
        && let Some(status) = named_status(end)
    {
        return Err(status);
    }
    let end = end.to_owned();
    let stream = futures_util::stream::unfold((0, end), move |(i, end)| async move {
        if i < n {
            return Some((Ok(format!("message {i}")), (i + 1, end)));
        }
        if end == "panic" {
            // Pending for a while first, so that the messages are sent before the panic.
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("the stream panicked on purpose");
        }
        // The stream ends after the status (`i` past `n`).
        named_status(&end)
            .filter(|_| i == n)
            .map(|status| (Err(status), (i + 1, end)))
    });
    Ok(Response::new(Box::pin(stream) as Messages))
}

/// Counts the messages; one naming a status (or `panic`) fails the call there.
async fn client_stream(request: Request<Streaming<String>>) -> Result<Response<String>, Status> {
    let mut messages = request.into_inner();
    let mut count = 0;
    while let Some(message) = messages.message().await? {
        if let Some(status) = named_status(&message) {
            return Err(status);
        }
        if message == "panic" {
            panic!("the handler panicked on purpose");
        }
        count += 1;
    }
    Ok(Response::new(format!("{count} messages")))
}

/// Echoes each message as it comes; one naming a status ends the call with it.
async fn bidi(request: Request<Streaming<String>>) -> Result<Response<Messages>, Status> {
    let messages = request.into_inner();
    let stream = futures_util::stream::unfold(Some(messages), |messages| async move {
        let mut messages = messages?;
        match messages.message().await {
            Ok(Some(message)) => match named_status(&message) {
                Some(status) => Some((Err(status), None)),
                None => Some((Ok(message), Some(messages))),
            },
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    });
    Ok(Response::new(Box::pin(stream) as Messages))
}

/// `audit.Echo`, served as tonic's generated servers are: a method of each kind, told by the
/// last segment of the path (so that it serves under another service name too).
#[derive(Clone, Default)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "audit.Echo";
}

impl<B> tower::Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut grpc = tonic::server::Grpc::new(Text);
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let method = method.to_owned();
        Box::pin(async move {
            use tower::service_fn;
            Ok(match method.as_str() {
                "Unary" => grpc.unary(service_fn(unary), request).await,
                "ServerStream" => {
                    grpc.server_streaming(service_fn(server_stream), request)
                        .await
                }
                "ClientStream" => {
                    grpc.client_streaming(service_fn(client_stream), request)
                        .await
                }
                "Bidi" => grpc.streaming(service_fn(bidi), request).await,
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn connect(addr: SocketAddr) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

/// A request carrying `id` as its `x-request-id` metadata.
fn with_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// A stream of messages the test sends one by one.
fn channel_stream() -> (
    tokio::sync::mpsc::UnboundedSender<String>,
    impl Stream<Item = String> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|message| (message, rx))
    });
    (tx, stream)
}

/// One call of the test: its method and what it sends.
#[derive(Clone, Copy, Debug)]
enum Call {
    Unary(&'static str),
    ServerStream(&'static str),
    ClientStream(&'static [&'static str]),
    Bidi(&'static [&'static str]),
}

impl Call {
    fn path(self) -> &'static str {
        match self {
            Call::Unary(_) => UNARY,
            Call::ServerStream(_) => SERVER_STREAM,
            Call::ClientStream(_) => CLIENT_STREAM,
            Call::Bidi(_) => BIDI,
        }
    }
}

/// What the client got: the code and message, the request id in the answer's metadata (its
/// head's, or the status's for a trailers-only answer), and how many messages came first.
#[derive(Debug, PartialEq)]
struct Got {
    code: Code,
    message: String,
    request_id: Option<String>,
    received: usize,
}

fn request_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let id = metadata.get("x-request-id")?;
    Some(id.to_str().unwrap().to_owned())
}

/// Reads a streamed answer to its end.
async fn read_stream(answer: Result<Response<Streaming<String>>, Status>) -> Got {
    let response = match answer {
        Ok(response) => response,
        Err(status) => return failed(status, None, 0),
    };
    let head_id = request_id(response.metadata());
    let mut stream = response.into_inner();
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => return answered(String::new(), head_id, received),
            Err(status) => return failed(status, head_id, received),
        }
    }
}

fn answered(message: String, request_id: Option<String>, received: usize) -> Got {
    Got {
        code: Code::Ok,
        message,
        request_id,
        received,
    }
}

fn failed(status: Status, head_id: Option<String>, received: usize) -> Got {
    Got {
        code: status.code(),
        message: status.message().to_owned(),
        request_id: head_id.or_else(|| request_id(status.metadata())),
        received,
    }
}

async fn call(client: &mut Client, id: &str, call: Call) -> Got {
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(call.path());
    let own =
        |messages: &[&str]| -> Vec<String> { messages.iter().map(|m| m.to_string()).collect() };
    match call {
        Call::Unary(what) => match client.unary(with_id(what.to_owned(), id), path, Text).await {
            Ok(response) => {
                let id = request_id(response.metadata());
                answered(response.into_inner(), id, 1)
            }
            Err(status) => failed(status, None, 0),
        },
        Call::ServerStream(what) => {
            let request = with_id(what.to_owned(), id);
            read_stream(client.server_streaming(request, path, Text).await).await
        }
        Call::ClientStream(messages) => {
            let request = with_id(futures_util::stream::iter(own(messages)), id);
            match client.client_streaming(request, path, Text).await {
                Ok(response) => {
                    let id = request_id(response.metadata());
                    answered(response.into_inner(), id, 1)
                }
                Err(status) => failed(status, None, 0),
            }
        }
        Call::Bidi(messages) => {
            let request = with_id(futures_util::stream::iter(own(messages)), id);
            read_stream(client.streaming(request, path, Text).await).await
        }
    }
}

/// How a code is judged on the server: the access line's level, the metrics' status class
/// and the span's `error.type` when it is failed (the codes OpenTelemetry's gRPC conventions
/// call server errors), written out here rather than asked of the code under test.
fn judged(code: Code) -> (&'static str, &'static str, Option<&'static str>) {
    match code {
        Code::Ok => ("info", "2xx", None),
        Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::ResourceExhausted
        | Code::Unauthenticated => ("warn", "4xx", None),
        Code::DeadlineExceeded => ("error", "5xx", Some("DEADLINE_EXCEEDED")),
        Code::Unimplemented => ("error", "5xx", Some("UNIMPLEMENTED")),
        Code::Internal => ("error", "5xx", Some("INTERNAL")),
        Code::Unavailable => ("error", "5xx", Some("UNAVAILABLE")),
        other => panic!("no expectation for {other:?}"),
    }
}

/// The access lines of the request `id`.
fn access_lines(out: &Captured, id: &str) -> Vec<Value> {
    out.lines()
        .into_iter()
        .filter(|l| l["target"] == "periscope::access" && l["request_id"] == id)
        .collect()
}

/// Waits for the one access line of the request `id` (a stream's is written when it ends).
async fn access_line(out: &Captured, id: &str) -> Value {
    let mut lines = eventually(id, || {
        let lines = access_lines(out, id);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 1, "one access line per call: {lines:#?}");
    lines.remove(0)
}

/// `http_server_requests_total` of `route` and `status`.
fn server_count(obs: &Observability, route: &str, status: &str) -> f64 {
    let text = obs.registry().encode_prometheus().unwrap();
    let labels = [("route", route), ("status", status)];
    counted(&text, "http_server_requests_total", &labels)
}

/// Each kind of call on tonic's own server behind `obs.layer()` (the methods declared as route
/// templates, as docs/grpc.md asks there): the client gets the handler's code and message (the
/// standard one for a panic) and the request id; the server writes one access line with the
/// call's `grpc_status` at the level its code stands for, counts the call once under its
/// method and that status's class, and names its span after the method, failed exactly for
/// the codes OpenTelemetry's gRPC conventions call server errors.
#[tokio::test(flavor = "current_thread")]
async fn every_kind_of_call_is_logged_counted_and_traced_by_its_code() {
    let (out, spans, log_guard, _default) = record();
    let obs = with_methods("grpc-audit");
    let (listener, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(obs.layer())
            .add_service(Echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = connect(addr).await;

    const PANICKED: &str = "An internal error occurred";
    // (request id, call, the code and message the client gets, the messages before them)
    #[rustfmt::skip]
    let cases: &[(&str, Call, Code, &str, usize)] = &[
        ("u-ok", Call::Unary("ok"), Code::Ok, "ok", 1),
        ("u-404", Call::Unary("not_found"), Code::NotFound, "no such thing", 0),
        ("u-400", Call::Unary("invalid_argument"), Code::InvalidArgument, "bad thing", 0),
        ("u-503", Call::Unary("unavailable"), Code::Unavailable, "down", 0),
        ("u-500", Call::Unary("internal"), Code::Internal, "broke", 0),
        // The service's own CANCELLED and DEADLINE_EXCEEDED: its answers, judged by their code.
        ("u-499", Call::Unary("cancelled"), Code::Cancelled, "gave up", 0),
        ("u-504", Call::Unary("deadline"), Code::DeadlineExceeded, "too slow downstream", 0),
        ("u-panic", Call::Unary("panic"), Code::Internal, PANICKED, 0),
        ("ss-ok", Call::ServerStream("3:ok"), Code::Ok, "", 3),
        ("ss-503", Call::ServerStream("0:unavailable"), Code::Unavailable, "down", 0),
        ("ss-500", Call::ServerStream("3:internal"), Code::Internal, "broke", 3),
        ("ss-404", Call::ServerStream("3:not_found"), Code::NotFound, "no such thing", 3),
        ("cs-ok", Call::ClientStream(&["a", "b", "c"]), Code::Ok, "3 messages", 1),
        ("cs-400", Call::ClientStream(&["a", "invalid_argument"]), Code::InvalidArgument, "bad thing", 0),
        ("cs-panic", Call::ClientStream(&["a", "panic"]), Code::Internal, PANICKED, 0),
        ("bidi-ok", Call::Bidi(&["a", "b", "c"]), Code::Ok, "", 3),
        ("bidi-404", Call::Bidi(&["a", "b", "not_found"]), Code::NotFound, "no such thing", 2),
        ("bidi-500", Call::Bidi(&["a", "internal"]), Code::Internal, "broke", 1),
    ];
    let mut counts: HashMap<(&str, &str), f64> = HashMap::new();
    for &(id, kind, code, message, received) in cases {
        let got = call(&mut client, id, kind).await;
        let expected = Got {
            code,
            message: message.to_owned(),
            request_id: Some(id.to_owned()),
            received,
        };
        assert_eq!(got, expected, "{id}");

        let (level, class, error_type) = judged(code);
        *counts.entry((kind.path(), class)).or_default() += 1.0;
        let line = access_line(&out, id).await;
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(line["data"]["status"], 200, "{line}");
        assert_eq!(line["data"]["grpc_status"], code as i32, "{line}");
        assert_eq!(line["data"]["route"], kind.path(), "{line}");
        assert_eq!(line["data"].get("aborted"), None, "{line}");

        let span = spans.of("http_request", id);
        assert_eq!(span.len(), 1, "{id}: {span:?}");
        let span = &span[0];
        let (service, method) = kind.path()[1..].split_once('/').unwrap();
        assert_eq!(span["otel.name"], kind.path()[1..], "{id}");
        assert_eq!(span["http.route"], kind.path(), "{id}");
        assert_eq!(span["rpc.system"], "grpc", "{id}");
        assert_eq!(span["rpc.service"], service, "{id}");
        assert_eq!(span["rpc.method"], method, "{id}");
        assert_eq!(
            span["rpc.grpc.status_code"],
            (code as i32).to_string(),
            "{id}"
        );
        assert_eq!(
            span.get("error.type").map(String::as_str),
            error_type,
            "{id}: {span:?}"
        );
        let failed = error_type.map(|_| "ERROR");
        assert_eq!(
            span.get("otel.status_code").map(String::as_str),
            failed,
            "{id}"
        );
    }

    // A method the service does not have: tonic's UNIMPLEMENTED, counted apart from the
    // methods, its span not named after the made-up method.
    let unknown = with_id("x".to_owned(), "unknown-method");
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/audit.Echo/Newer");
    let status = client
        .unary::<_, String, _>(unknown, path, Text)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let line = access_line(&out, "unknown-method").await;
    assert_eq!(
        (&line["level"], &line["data"]["grpc_status"]),
        (&"error".into(), &12.into())
    );
    let span = &spans.of("http_request", "unknown-method")[0];
    assert_eq!(span["otel.name"], "POST", "{span:?}");
    assert_eq!(span["error.type"], "UNIMPLEMENTED", "{span:?}");
    assert_eq!(server_count(&obs, "__unmatched__", "5xx"), 1.0);

    // Each call counted once, under its method and the class of its code.
    for ((route, class), count) in &counts {
        assert_eq!(server_count(&obs, route, class), *count, "{route} {class}");
    }
    let text = obs.registry().encode_prometheus().unwrap();
    let all = counted(&text, "http_server_requests_total", &[]);
    assert_eq!(all, cases.len() as f64 + 1.0);
    drop(log_guard);
}

/// A panic in a server stream after its first messages (the stream tonic polls for the
/// answer's body, past the handler): the messages already sent stay with the client, and the
/// call ends as a panicking handler's does, with `INTERNAL` and the standard message in its
/// trailers, not a reset stream (which tonic's client reads as `INTERNAL` "h2 protocol
/// error"). The server logs the panic with the request's ids, and the call once.
#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_a_grpc_stream_ends_it_with_internal_in_its_trailers() {
    let (out, spans, log_guard, _default) = record();
    let obs = with_methods("grpc-audit");
    let (listener, addr) = listen().await;
    let app = axum::Router::new()
        .route_service(SERVER_STREAM, Echo)
        .layer(obs.layer());
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));
    let mut client = connect(addr).await;

    let got = call(&mut client, "ss-panic", Call::ServerStream("2:panic")).await;
    let expected = Got {
        code: Code::Internal,
        message: "An internal error occurred".to_owned(),
        request_id: Some("ss-panic".to_owned()),
        received: 2,
    };
    assert_eq!(got, expected);
    // The status tonic gives the client is made of the trailers alone: the request id is
    // there, not only in the head.
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(SERVER_STREAM);
    let request = with_id("2:panic".to_owned(), "ss-panic-trailers");
    let mut stream = client
        .server_streaming(request, path, Text)
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without its panic"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        request_id(status.metadata()).as_deref(),
        Some("ss-panic-trailers"),
        "{status:?}"
    );
    // The connection is fine: the next call on it is answered.
    let next = call(&mut client, "ss-next", Call::ServerStream("1:ok")).await;
    assert_eq!((next.code, next.received), (Code::Ok, 1));

    let line = access_line(&out, "ss-panic").await;
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["data"]["grpc_status"], 13, "{line}");
    // The code of the error periscope answered, as a unary call's panic has it.
    assert_eq!(line["data"]["error_code"], "internal_error", "{line}");
    assert_eq!(
        line["data"].get("aborted"),
        None,
        "the call was answered: {line}"
    );
    let panicked: Vec<Value> = out
        .lines()
        .into_iter()
        .filter(|l| l["message"] == "handler panicked" && l["request_id"] == "ss-panic")
        .collect();
    assert_eq!(panicked.len(), 1, "{panicked:?}");
    let span = &spans.of("http_request", "ss-panic")[0];
    assert_eq!(span["rpc.grpc.status_code"], "13", "{span:?}");
    assert_eq!(span["error.type"], "INTERNAL", "{span:?}");
    // The two panicking calls, the one answered.
    assert_eq!(server_count(&obs, SERVER_STREAM, "5xx"), 2.0);
    assert_eq!(server_count(&obs, SERVER_STREAM, "2xx"), 1.0);
    drop(log_guard);
}

/// An auth interceptor, its refusal logged with the call's ids.
fn check_token(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get("authorization") {
        Some(token) if token == "Bearer good" => Ok(request),
        _ => {
            tracing::warn!("refused a call without a token");
            Err(Status::unauthenticated("no token"))
        }
    }
}

/// What a gRPC team composes around its service, in an axum app on `periscope::Server`: a
/// tonic interceptor refusing a call (`UNAUTHENTICATED`, a client error), its own log line
/// carrying the call's ids; tonic's `Routes` merged as an axum router (every method under the
/// service's `{*rest}` route); a caller's `traceparent` continued; and calls the client
/// cancels mid-way, client streaming and bidirectional, each logged once as `aborted` and
/// counted `cancelled`.
#[tokio::test(flavor = "current_thread")]
async fn interceptors_routes_and_cancelled_streams_in_an_axum_app() {
    let (out, spans, log_guard, _default) = record();
    let obs = Observability::builder()
        .service_name("grpc-audit")
        .build()
        .unwrap();
    let guarded = tonic::service::interceptor::InterceptedService::new(Echo, check_token);
    let app = axum::Router::new()
        .route_service("/guarded.Echo/Unary", guarded)
        .merge(tonic::service::Routes::new(Echo).into_axum_router())
        .layer(obs.layer());
    let (listener, addr) = listen().await;
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));
    let mut client = connect(addr).await;

    // The interceptor's refusal.
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/guarded.Echo/Unary");
    let refused = client
        .unary::<_, String, _>(with_id("x".to_owned(), "no-token"), path, Text)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(request_id(refused.metadata()).as_deref(), Some("no-token"));
    let line = access_line(&out, "no-token").await;
    assert_eq!(line["level"], "warn", "{line}");
    assert_eq!(line["data"]["grpc_status"], 16, "{line}");
    let span = &spans.of("http_request", "no-token")[0];
    assert_eq!(span["otel.name"], "guarded.Echo/Unary", "{span:?}");
    assert_eq!(
        span.get("otel.status_code"),
        None,
        "a client error: {span:?}"
    );
    let warned = out
        .lines()
        .into_iter()
        .find(|l| l["message"] == "refused a call without a token")
        .unwrap();
    assert_eq!(warned["request_id"], "no-token", "{warned}");
    assert_eq!(warned["trace_id"], line["trace_id"], "{warned}");
    assert_eq!(server_count(&obs, "/guarded.Echo/Unary", "4xx"), 1.0);

    // `Routes`: the calls reach the service, its methods share the wildcard route.
    for (id, kind) in [
        ("r-unary", Call::Unary("ok")),
        ("r-stream", Call::ServerStream("2:ok")),
    ] {
        assert_eq!(call(&mut client, id, kind).await.code, Code::Ok, "{id}");
        let line = access_line(&out, id).await;
        assert_eq!(line["data"]["route"], "/audit.Echo/{*rest}", "{line}");
        let span = &spans.of("http_request", id)[0];
        assert_eq!(
            span["otel.name"],
            kind.path()[1..],
            "named by the path: {span:?}"
        );
    }
    assert_eq!(server_count(&obs, "/audit.Echo/{*rest}", "2xx"), 2.0);

    // The caller's trace, continued.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut traced = with_id("ok".to_owned(), "traced");
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    traced
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(UNARY);
    client
        .unary::<_, String, _>(traced, path, Text)
        .await
        .unwrap();
    let line = access_line(&out, "traced").await;
    assert_eq!(line["trace_id"], trace_id, "{line}");
    assert_ne!(
        line["span_id"], "00f067aa0ba902b7",
        "a span of its own: {line}"
    );

    // Streams the client leaves mid-way: a client stream still sending, a bidirectional call
    // after its first answer.
    let in_flight = async |count: i64, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while obs.in_flight() != count {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    for (id, path) in [("cs-left", CLIENT_STREAM), ("bidi-left", BIDI)] {
        in_flight(0, "the call before ended").await;
        let (tx, messages) = channel_stream();
        tx.send("first".to_owned()).unwrap();
        let mut caller = client.clone();
        let path = http::uri::PathAndQuery::from_static(path);
        let call = tokio::spawn(async move {
            caller.ready().await.unwrap();
            let answer =
                caller.streaming::<_, String, String, _>(with_id(messages, id), path, Text);
            let mut stream = answer.await.unwrap().into_inner();
            stream.message().await.unwrap();
            std::future::pending::<()>().await;
        });
        // Left once the server is handling it (a fixed wait raced a loaded machine).
        in_flight(1, "the call never arrived").await;
        call.abort();
        drop(tx);
        let line = access_line(&out, id).await;
        assert_eq!(line["level"], "warn", "{line}");
        assert_eq!(line["data"]["aborted"], true, "{line}");
    }
    let route = "/audit.Echo/{*rest}";
    eventually("both counted", || {
        (server_count(&obs, route, "cancelled") == 2.0).then_some(())
    })
    .await;
    drop(log_guard);
}

/// A unary call the client cancels before its request message came whole (a large message
/// on a slow link, a deadline the client gave up on): tonic reads the reset as the request's
/// end and answers `INTERNAL` "Missing request message" to a stream already gone. That is the
/// client's doing, not the service's failure: not logged at `error`, not counted `5xx`, the
/// span not failed.
#[tokio::test(flavor = "current_thread")]
async fn a_unary_call_cancelled_before_its_message_is_not_a_server_failure() {
    let (out, spans, log_guard, _default) = record();
    let obs = Observability::builder()
        .service_name("grpc-audit")
        .build()
        .unwrap();
    let app = axum::Router::new()
        .merge(tonic::service::Routes::new(Echo).into_axum_router())
        .layer(obs.layer());
    let (listener, addr) = listen().await;
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));
    let client = connect(addr).await;

    let (tx, messages) = channel_stream();
    let mut caller = client.clone();
    let call = tokio::spawn(async move {
        caller.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(UNARY);
        let _ = caller
            .streaming::<_, String, String, _>(with_id(messages, "u-left"), path, Text)
            .await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while obs.in_flight() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    drop(tx);
    let line = access_line(&out, "u-left").await;
    assert_ne!(line["level"], "error", "{line}");
    assert_ne!(line["data"]["grpc_status"], 13, "{line}");
    let route = "/audit.Echo/{*rest}";
    eventually("counted", || {
        (server_count(&obs, route, "5xx")
            + server_count(&obs, route, "4xx")
            + server_count(&obs, route, "cancelled")
            > 0.0)
            .then_some(())
    })
    .await;
    assert_eq!(server_count(&obs, route, "5xx"), 0.0);
    let span = &spans.of("http_request", "u-left")[0];
    assert_eq!(span.get("otel.status_code"), None, "{span:?}");
    drop(log_guard);
}

/// tonic's own server settings act outside `obs.layer()` (tonic wraps the layers it is given
/// in them): a call past `Server::timeout` is dropped under the stack and answered by tonic
/// (`CANCELLED` "Timeout expired", without the request id), so periscope logs it `aborted` and
/// counts it `cancelled`, as a client leaving; a call shed by `load_shed` never reaches the
/// stack at all. docs/grpc.md says to use periscope's request timeout instead.
#[tokio::test(flavor = "current_thread")]
async fn tonics_own_timeout_and_load_shedding_act_outside_the_stack() {
    let (out, log_guard, _default) = capture_lines(None);
    let obs = with_methods("grpc-audit");
    let (listener, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_millis(300))
            .concurrency_limit_per_connection(1)
            .load_shed(true)
            .layer(obs.layer())
            .add_service(Echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = connect(addr).await;

    let got = call(&mut client, "past-timeout", Call::Unary("slow")).await;
    assert_eq!(
        (got.code, got.message.as_str()),
        (Code::Cancelled, "Timeout expired")
    );
    assert_eq!(got.request_id, None);
    let line = access_line(&out, "past-timeout").await;
    assert_eq!(line["data"]["aborted"], true, "{line}");
    assert_eq!(line["data"].get("grpc_status"), None, "{line}");
    assert_eq!(server_count(&obs, UNARY, "cancelled"), 1.0);

    // One call at a time on the connection: the second is shed while the first runs, surely
    // in the stack (its 300 ms timeout is no window to race on a loaded machine: the first is
    // cut off there, ending it before the second comes).
    let mut first = client.clone();
    let slow = tokio::spawn(async move { call(&mut first, "holds", Call::Unary("slow")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while obs.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = call(&mut client, "shed", Call::Unary("ok")).await;
    assert_eq!(
        (shed.code, shed.request_id),
        (Code::ResourceExhausted, None)
    );
    let held = slow.await.unwrap();
    assert_eq!(
        held.code,
        Code::Cancelled,
        "the first call ran to its timeout"
    );
    assert!(access_lines(&out, "shed").is_empty());
    let text = obs.registry().encode_prometheus().unwrap();
    let all = counted(&text, "http_server_requests_total", &[]);
    assert_eq!(all, 2.0, "the shed call is not counted");
    drop(log_guard);
}

/// Streaming calls through `obs.client_layer()` on a tonic channel: a bidirectional call
/// whose messages go one at a time (nothing waits for the request stream to end), and a
/// client stream failing, each counted once by its code on the caller's side and sent with
/// the caller's request id and trace.
#[tokio::test(flavor = "current_thread")]
async fn streaming_calls_through_the_client_layer() {
    use tower::Layer;

    let (out, spans, log_guard, _default) = record();
    let callee = with_methods("callee");
    let (listener, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(callee.layer())
            .add_service(Echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let caller = Observability::builder()
        .service_name("caller")
        .build()
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let mut client = tonic::client::Grpc::with_origin(caller.client_layer().layer(channel), origin);

    let ctx = periscope::context::RequestContext::new_root();
    let id = ctx.request_id.as_str().to_owned();
    let (tx, messages) = channel_stream();
    let echoed = ctx
        .clone()
        .scope(async {
            tx.send("first".to_owned()).unwrap();
            client.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(BIDI);
            let answer =
                client.streaming::<_, String, String, _>(Request::new(messages), path, Text);
            let mut stream = answer.await.unwrap().into_inner();
            let first = stream.message().await.unwrap();
            tx.send("second".to_owned()).unwrap();
            let second = stream.message().await.unwrap();
            drop(tx);
            let end = stream.message().await.unwrap();
            (first, second, end)
        })
        .await;
    assert_eq!(
        echoed,
        (Some("first".to_owned()), Some("second".to_owned()), None)
    );
    let line = access_line(&out, &id).await;
    assert_eq!(line["trace_id"], ctx.trace_id.to_string(), "{line}");
    assert_eq!(line["data"]["grpc_status"], 0, "{line}");

    let failing = ctx
        .clone()
        .scope(async {
            client.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(CLIENT_STREAM);
            let messages = futures_util::stream::iter(["a".to_owned(), "internal".to_owned()]);
            client
                .client_streaming::<_, String, String, _>(Request::new(messages), path, Text)
                .await
        })
        .await;
    assert_eq!(failing.unwrap_err().code(), Code::Internal);

    let client_spans: Vec<_> = spans.of("http_client_request", &id);
    let outcomes: Vec<_> = client_spans
        .iter()
        .map(|span| {
            let code = span.get("rpc.grpc.status_code").map(String::as_str);
            (
                span["otel.name"].as_str(),
                code,
                span.get("error.type").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("audit.Echo/Bidi", Some("0"), None),
            ("audit.Echo/ClientStream", Some("13"), Some("INTERNAL")),
        ]
    );
    let text = caller.registry().encode_prometheus().unwrap();
    let calls = |status| counted(&text, "http_client_requests_total", &[("status", status)]);
    assert_eq!((calls("2xx"), calls("5xx")), (1.0, 1.0));
    assert_eq!(counted(&text, "http_client_requests_total", &[]), 2.0);
    let served = |route, status| server_count(&callee, route, status);
    assert_eq!(
        (served(BIDI, "2xx"), served(CLIENT_STREAM, "5xx")),
        (1.0, 1.0)
    );
    drop(log_guard);
}

/// A service's observability with the audit service's methods as its route templates.
fn with_methods(service_name: &str) -> Observability {
    Observability::builder()
        .service_name(service_name)
        .route_templates(METHODS)
        .build()
        .unwrap()
}

/// A listener on a free port of 127.0.0.1, and its address.
async fn listen() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

//! HTTP/2 end to end over 127.0.0.1: a real tonic client, its channel wrapped in
//! `obs.client_layer()`, calling gRPC services behind `obs.layer()` on `periscope::Server`; and
//! hyper's HTTP/2 client with many streams on one connection. What each side logs, traces and
//! counts is read back from the real outputs (JSON lines, span fields, exposition text).

#![cfg(all(feature = "axum", feature = "http2", feature = "grpc"))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use periscope::Observability;
use periscope::context::{RequestContext, TenantKey, TraceParent};
use serde_json::Value;

mod capture;
use capture::capture_lines;
mod recorded;
use recorded::{counted, eventually, record};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// What a caller's side and the server's side should tell of one kind of call.
struct Expected {
    /// The caller's `http_client_requests_total` status.
    client_status: &'static str,
    /// The client span's `rpc.grpc.status_code` and `error.type` when failed.
    client_failure: Option<(Option<&'static str>, &'static str)>,
    /// The server's access line: `grpc_status` and whether `aborted`.
    access: (Option<u64>, bool),
}

/// A tonic client whose channel is wrapped in `obs.client_layer()`, calling services behind
/// `obs.layer()` on `periscope::Server` over HTTP/2: each call's client span, the headers the
/// server received, the server's span and access line, and both sides' RED counts agree, for
/// calls answered `OK` (in turn and concurrently on the one connection), failed trailers-only
/// (`NOT_FOUND`, `UNAVAILABLE`), failed in the trailers after a message, a server stream the
/// client cancels, a call the caller drops and a deadline that expires.
#[tokio::test(flavor = "current_thread")]
async fn a_tonic_channel_in_the_client_layer_agrees_with_the_server_it_calls() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use periscope::health::tonic_health::pb::HealthCheckRequest;
    use periscope::health::tonic_health::pb::health_check_response::ServingStatus;
    use periscope::health::tonic_health::pb::health_client::HealthClient;
    use tower::Layer;

    /// What `export` does is chosen by the request's size.
    struct Exporter;
    #[tonic::async_trait]
    impl TraceService for Exporter {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            match request.get_ref().resource_spans.len() {
                0 => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
                1 => Err(tonic::Status::not_found("no such tenant")),
                2 => Err(tonic::Status::unavailable("the store is down")),
                3 => {
                    let mut response = tonic::Response::new(ExportTraceServiceResponse::default());
                    response
                        .metadata_mut()
                        .insert(THEN_FAIL, "13".parse().unwrap());
                    Ok(response)
                }
                _ => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
                }
            }
        }
    }

    /// A stand-in for a call that fails after its messages: the answer the handler marks
    /// sends its message, then trailers with the marked code instead of `OK`.
    const THEN_FAIL: &str = "x-test-then-fail";
    fn fail_in_trailers(
        mut response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = response.headers_mut().remove(THEN_FAIL) {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code);
            let body = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                .with_trailers(async move { Some(Ok(trailers)) });
            *response.body_mut() = tonic::body::Body::new(body);
        }
        response
    }

    let (out, spans, log_guard, _default) = record();
    // The callee: every path traced (the health methods are quiet by default).
    let callee = Observability::builder()
        .service_name("callee")
        .correlation(|layer| layer.quiet(periscope::trace::PathSelector::none()))
        .build()
        .unwrap();
    let health = callee.health().grpc().into_service();
    // The headers each call arrived with, before any layer of the server saw them. The
    // deadline a call sends is taken off: the client alone enforces it here, so that no race
    // with the server's own enforcing of it (tested in `tests/facade.rs`) decides the outcome.
    let received = Arc::new(Mutex::new(Vec::<http::HeaderMap>::new()));
    let received_in = received.clone();
    let app = Router::new()
        .route_service(CHECK, health.clone())
        .route_service(WATCH, health)
        .route_service(
            EXPORT,
            tower::ServiceBuilder::new()
                .map_response(fail_in_trailers)
                .service(TraceServiceServer::new(Exporter)),
        )
        .layer(callee.layer())
        .layer(tower::util::MapRequestLayer::new(
            move |mut request: http::Request<axum::body::Body>| {
                received_in.lock().unwrap().push(request.headers().clone());
                request.headers_mut().remove("grpc-timeout");
                request
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let port = addr.port().to_string();
    tokio::spawn(callee.server(listener).serve(app, std::future::pending()));

    // The caller: tonic's channel in the client layer, given its origin so that the layers
    // know the server (a channel adds it only below them).
    let caller = Observability::builder()
        .service_name("caller")
        .build()
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = caller.client_layer().layer(channel);
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let mut exporter = TraceServiceClient::with_origin(channel.clone(), origin.clone());
    let mut health = HealthClient::with_origin(channel, origin);

    let org = TenantKey::new("org_id").unwrap();
    // A request of the caller's, with its tenant.
    let request_ctx = |org_id: &str| {
        let mut ctx = RequestContext::new_root();
        ctx.tenant.insert(org.clone(), org_id).unwrap();
        ctx
    };
    let export = |spans: usize| ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans::default(); spans],
    };
    let ok = Expected {
        client_status: "2xx",
        client_failure: None,
        access: (Some(0), false),
    };
    let mut calls = Vec::new();

    // Two calls while handling one request: one trace, a parent of its own each.
    let ctx = request_ctx("org_ok");
    let twice = ctx
        .clone()
        .scope(async {
            let first = exporter.export(export(0)).await.map(|_| ());
            let second = exporter.export(export(0)).await.map(|_| ());
            (first, second)
        })
        .await;
    assert!(twice.0.is_ok() && twice.1.is_ok(), "{twice:?}");
    calls.push((ctx, EXPORT, 2, ok));

    // Calls of many requests at once, as streams of the channel's one connection.
    let mut concurrent = tokio::task::JoinSet::new();
    for i in 0..16 {
        let ctx = request_ctx(&format!("org_{i}"));
        let mut exporter = exporter.clone();
        let call = ctx.clone().scope(async move {
            let call = exporter.export(ExportTraceServiceRequest::default()).await;
            call.map(|_| ())
        });
        concurrent.spawn(async move { (ctx, call.await) });
    }
    for (ctx, answer) in concurrent.join_all().await {
        assert!(answer.is_ok(), "{answer:?}");
        let ok = Expected {
            client_status: "2xx",
            client_failure: None,
            access: (Some(0), false),
        };
        calls.push((ctx, EXPORT, 1, ok));
    }

    let ctx = request_ctx("org_404");
    let status = ctx.clone().scope(exporter.export(export(1))).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::NotFound);
    let not_found = Expected {
        client_status: "4xx",
        client_failure: Some((Some("5"), "NOT_FOUND")),
        access: (Some(5), false),
    };
    calls.push((ctx, EXPORT, 1, not_found));

    let ctx = request_ctx("org_503");
    let status = ctx.clone().scope(exporter.export(export(2))).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::Unavailable);
    let unavailable = Expected {
        client_status: "5xx",
        client_failure: Some((Some("14"), "UNAVAILABLE")),
        access: (Some(14), false),
    };
    calls.push((ctx, EXPORT, 1, unavailable));

    // Failed after a message: both sides count, and both spans record, the code of the
    // trailers.
    let ctx = request_ctx("org_trailers");
    let status = ctx.clone().scope(exporter.export(export(3))).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::Internal);
    let in_trailers = Expected {
        client_status: "5xx",
        client_failure: Some((Some("13"), "INTERNAL")),
        access: (Some(13), false),
    };
    calls.push((ctx, EXPORT, 1, in_trailers));

    // tonic-health's own server refuses an unknown name trailers-only.
    let ctx = request_ctx("org_unknown");
    let unknown_name = HealthCheckRequest {
        service: "no.such.Service".into(),
    };
    let status = ctx.clone().scope(health.check(unknown_name)).await;
    assert_eq!(status.unwrap_err().code(), tonic::Code::NotFound);
    let unknown = Expected {
        client_status: "4xx",
        client_failure: Some((Some("5"), "NOT_FOUND")),
        access: (Some(5), false),
    };
    calls.push((ctx, CHECK, 1, unknown));

    // A server stream: its first message, then the client gives up on it. A cancellation
    // for both sides' metrics and spans.
    let ctx = request_ctx("org_watch");
    let first = ctx
        .clone()
        .scope(async {
            let watch = HealthCheckRequest {
                service: String::new(),
            };
            let mut stream = health.watch(watch).await.unwrap().into_inner();
            stream.message().await.unwrap().unwrap()
        })
        .await;
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let watched = Expected {
        client_status: "cancelled",
        client_failure: Some((Some("1"), "CANCELLED")),
        access: (Some(1), true),
    };
    calls.push((ctx, WATCH, 1, watched));

    // A call its caller stops waiting for: the stream is reset, and the server drops it.
    let ctx = request_ctx("org_dropped");
    let gone = tokio::time::timeout(
        Duration::from_millis(200),
        ctx.clone().scope(exporter.export(export(4))),
    )
    .await;
    assert!(gone.is_err(), "{gone:?}");
    // Dropped before its answer's head: `CANCELLED` on the client span, as the watch dropped
    // after its head above and as the server's span records it.
    let dropped = Expected {
        client_status: "cancelled",
        client_failure: Some((Some("1"), "CANCELLED")),
        access: (None, true),
    };
    calls.push((ctx, EXPORT, 1, dropped));

    // A deadline the handler cannot meet: the channel gives up on the call itself (tonic's
    // `CANCELLED`, "Timeout expired"), an error without an answer for the client layer.
    let ctx = request_ctx("org_late");
    let mut call = tonic::Request::new(export(4));
    call.set_timeout(Duration::from_millis(200));
    let status = ctx.clone().scope(exporter.export(call)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    let late = Expected {
        client_status: "error",
        client_failure: Some((None, "_OTHER")),
        access: (None, true),
    };
    let id = ctx.request_id.as_str();
    let deadline = received
        .lock()
        .unwrap()
        .iter()
        .find(|h| h["x-request-id"] == id)
        .cloned();
    assert!(deadline.unwrap().contains_key("grpc-timeout"));
    calls.push((ctx, EXPORT, 1, late));

    let mut client_counts: HashMap<&str, f64> = HashMap::new();
    for (ctx, route, count, expected) in &calls {
        let id = ctx.request_id.as_str();
        let org_id = ctx.tenant.get("org_id").unwrap();
        *client_counts.entry(expected.client_status).or_default() += *count as f64;
        // What the server received: the caller's ids and tenant, each call its own client
        // span as the parent.
        let sent: Vec<TraceParent> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|headers| headers["x-request-id"] == id)
            .map(|headers| {
                assert_eq!(headers["x-org-id"], org_id, "{headers:?}");
                TraceParent::parse(headers["traceparent"].to_str().unwrap()).unwrap()
            })
            .collect();
        let client = spans.of("http_client_request", id);
        assert_eq!((sent.len(), client.len()), (*count, *count), "{id}");
        for (parent, span) in sent.iter().zip(&client) {
            assert_eq!(parent.trace_id, ctx.trace_id, "{id}");
            assert_eq!(span["trace_id"], ctx.trace_id.to_string(), "{id}");
            assert_eq!(span["span_id"], parent.parent_id.to_string(), "{id}");
            assert_ne!(parent.parent_id, ctx.span_id, "{id}");
            assert_eq!(span["otel.name"], route.trim_start_matches('/'), "{id}");
            assert_eq!(span["rpc.system"], "grpc", "{id}");
            assert_eq!(span["server.address"], "127.0.0.1", "{id}");
            assert_eq!(span["server.port"], port, "{id}");
            match expected.client_failure {
                Some((code, error)) => {
                    assert_eq!(span.get("rpc.grpc.status_code").map(String::as_str), code);
                    assert_eq!(span["otel.status_code"], "ERROR", "{id}: {span:?}");
                    assert_eq!(span["error.type"], error, "{id}: {span:?}");
                }
                None => {
                    // `OK`, in the trailers of every answered call.
                    assert_eq!(span["rpc.grpc.status_code"], "0", "{id}: {span:?}");
                    assert_eq!(span.get("otel.status_code"), None, "{id}: {span:?}");
                }
            }
        }
        if *count == 2 {
            assert_ne!(sent[0].parent_id, sent[1].parent_id, "a parent per call");
        }

        // The server's span and access line continue the caller's trace, with its tenant.
        let lines = eventually(id, || {
            let lines: Vec<Value> = out
                .lines()
                .into_iter()
                .filter(|l| l["target"] == "periscope::access" && l["request_id"] == id)
                .collect();
            (lines.len() == *count).then_some(lines)
        })
        .await;
        for line in &lines {
            assert_eq!(line["trace_id"], ctx.trace_id.to_string(), "{line}");
            assert_eq!(line["org_id"], org_id, "{line}");
            assert_eq!(line["data"]["route"], *route, "{line}");
            let (grpc_status, aborted) = expected.access;
            assert_eq!(line["data"]["grpc_status"].as_u64(), grpc_status, "{line}");
            assert_eq!(line["data"]["aborted"].as_bool(), aborted.then_some(true));
        }
        let server = spans.of("http_request", id);
        assert_eq!(server.len(), *count, "{id}");
        for span in &server {
            assert_eq!(span["trace_id"], ctx.trace_id.to_string(), "{id}");
            assert_ne!(span["span_id"], client[0]["span_id"], "{id}");
        }
    }

    // Each call counted once on each side, as its code did.
    let caller_text = caller.registry().encode_prometheus().unwrap();
    for (status, count) in &client_counts {
        let labels = [
            ("method", "POST"),
            ("server_address", "127.0.0.1"),
            ("server_port", port.as_str()),
            ("status", status),
        ];
        let counted = counted(&caller_text, "http_client_requests_total", &labels);
        assert_eq!(counted, *count, "{status}");
    }
    let all = counted(&caller_text, "http_client_requests_total", &[]);
    assert_eq!(all, client_counts.values().sum::<f64>());
    let callee_text = callee.registry().encode_prometheus().unwrap();
    let server = |route: &str, status: &str| {
        counted(
            &callee_text,
            "http_server_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(server(EXPORT, "2xx"), 18.0);
    assert_eq!(server(EXPORT, "4xx"), 1.0);
    assert_eq!(server(EXPORT, "5xx"), 2.0);
    assert_eq!(server(EXPORT, "cancelled"), 2.0);
    assert_eq!(server(CHECK, "4xx"), 1.0);
    assert_eq!(server(WATCH, "cancelled"), 1.0);
    let all = counted(&callee_text, "http_server_requests_total", &[]);
    assert_eq!(all, 25.0);
    drop(log_guard);
}

/// An answer that never ends, sent as fast as the client takes it.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let chunk = Bytes::from_static(&[b'x'; 16 << 10]);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

type Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

/// `GET path` with these headers on an HTTP/2 connection.
async fn send(
    mut sender: Sender,
    path: &str,
    headers: &[(&str, String)],
) -> http::Response<hyper::body::Incoming> {
    let mut request = http::Request::get(format!("http://a{path}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    sender.ready().await.unwrap();
    let request = request.body(http_body_util::Empty::new()).unwrap();
    sender.send_request(request).await.unwrap()
}

/// Many streams at once on one HTTP/2 connection to `periscope::Server` (hyper's client, prior
/// knowledge): each gets its own request id back and in its handler's context, and one access
/// line; a large header within the limit passes, one over it is refused on its stream alone,
/// and a stream the client resets mid-answer is logged `aborted` while the others go on.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_http2_streams_keep_their_own_request_ids() {
    use axum::routing::get;

    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder().service_name("h2").build().unwrap();
    let app = Router::new()
        .route(
            "/echo",
            get(|headers: http::HeaderMap| async move {
                // Held a while, so that the streams are open together.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ctx = RequestContext::current().unwrap();
                let large = headers.get("x-large").map_or(0, |value| value.len());
                format!("{} {large}", ctx.request_id)
            }),
        )
        .route("/endless", get(|| async { axum::body::Body::new(Endless) }))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut streams = tokio::task::JoinSet::new();
    for i in 0..64 {
        let sender = sender.clone();
        streams.spawn(async move {
            let id = format!("stream-{i}");
            let mut headers = vec![("x-request-id", id.clone())];
            // 40 KB, within the 64 KiB limit.
            if i == 7 {
                headers.push(("x-large", "a".repeat(40_000)));
            }
            let response = send(sender, "/echo", &headers).await;
            let echoed = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (id, echoed, String::from_utf8(body.to_vec()).unwrap())
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(30), streams.join_all())
        .await
        .expect("every stream answered");
    let mut ids = Vec::new();
    for (id, echoed, body) in answers {
        assert_eq!(echoed, id);
        let large = if id == "stream-7" { 40_000 } else { 0 };
        assert_eq!(body, format!("{id} {large}"));
        ids.push(id);
    }

    // Over the limit: refused by hyper on its stream, the connection kept.
    let headers = [
        ("x-request-id", "too-large".to_owned()),
        ("x-large", "a".repeat(70_000)),
    ];
    let refused = send(sender.clone(), "/echo", &headers).await;
    assert_eq!(refused.status(), 431);

    // Reset by the client after its first chunk.
    let headers = [("x-request-id", "reset-mid-answer".to_owned())];
    let mut body = send(sender.clone(), "/endless", &headers).await.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    let headers = [("x-request-id", "after-reset".to_owned())];
    let after = send(sender.clone(), "/echo", &headers).await;
    assert_eq!(after.headers()["x-request-id"], "after-reset");
    ids.push("after-reset".to_owned());

    let reset = eventually("the reset stream's access line", || {
        out.lines()
            .into_iter()
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == "reset-mid-answer")
    })
    .await;
    assert_eq!(reset["data"]["aborted"], true, "{reset}");
    assert_eq!(reset["data"]["status"], 200, "{reset}");
    drop(log_guard);

    // One access line per stream, each in its stream's own trace.
    let lines = out.lines();
    let mut traces = std::collections::HashSet::new();
    for id in &ids {
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| l["target"] == "periscope::access" && l["request_id"] == id.as_str())
            .collect();
        assert_eq!(access.len(), 1, "{id}: {access:?}");
        assert_eq!(access[0]["data"]["status"], 200, "{id}");
        assert!(traces.insert(access[0]["trace_id"].as_str().unwrap().to_owned()));
    }
    let text = obs.registry().encode_prometheus().unwrap();
    let echo = [("route", "/echo"), ("status", "2xx")];
    assert_eq!(counted(&text, "http_server_requests_total", &echo), 65.0);
}

/// A handler body with empty chunks, as one relaying another HTTP/2 answer has (hyper's client
/// hands the end of a stream as an empty chunk): the server sends no empty DATA frame for them,
/// which HTTP/2 clients count against the connection (h2 closes it with `ENHANCE_YOUR_CALM`
/// after 100), so a long-lived connection keeps answering.
#[tokio::test(flavor = "current_thread")]
async fn empty_chunks_do_not_cost_an_http2_client_its_connection() {
    use axum::routing::get;

    let obs = Observability::builder().service_name("h2").build().unwrap();
    let app = Router::new()
        .route(
            "/relay",
            get(|| async {
                let chunks =
                    ["a", "", "b", ""].map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for i in 0..120 {
        let response = send(sender.clone(), "/relay", &[]).await;
        let body = response.into_body().collect().await;
        let body = body
            .unwrap_or_else(|e| panic!("answer {i}: {e:?}"))
            .to_bytes();
        assert_eq!(body, "ab", "answer {i}");
    }
}

/// An answer that may have no content (to a `HEAD`, a 204, a 304) goes out without its body
/// even when the service gives it one, as over HTTP/1.1 (hyper's HTTP/2 server would send it,
/// and an HTTP/2 client take the stream for broken); its `content-length` stays, and the
/// connection serves on. A `HEAD` answer whose service set no `content-length` gets the
/// length its body would have, as over HTTP/1.1 (RFC 9110, section 9.3.2).
#[tokio::test(flavor = "current_thread")]
async fn an_http2_answer_that_has_no_content_goes_out_without_the_body_it_was_given() {
    let service = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
        let status = match request.uri().path() {
            "/no-content" => 204,
            "/not-modified" => 304,
            _ => 200,
        };
        let mut response = http::Response::builder().status(status);
        if request.uri().path() != "/implicit" {
            response = response.header("content-length", "3");
        }
        let response = response
            .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(service, std::future::pending()));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for (method, path, status, body) in [
        ("HEAD", "/x", 200, ""),
        ("HEAD", "/implicit", 200, ""),
        ("GET", "/implicit", 200, "abc"),
        ("GET", "/no-content", 204, ""),
        ("GET", "/not-modified", 304, ""),
        ("GET", "/x", 200, "abc"),
    ] {
        sender.ready().await.unwrap();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://a{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        if status != 204 {
            assert_eq!(response.headers()["content-length"], "3", "{method} {path}");
        }
        let taken = response.into_body().collect().await;
        let taken = taken.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        assert_eq!(taken.to_bytes(), body, "{method} {path}");
    }
}

/// An upload the client stalls over HTTP/2, past the request timeout while the handler waits
/// for its bytes: the client's 408 `timeout` on its stream (the bytes that came in `details`),
/// with no `connection` header (HTTP/2 has none: hyper would drop it and warn), logged once at
/// info by the error layer and at warn in the access line; the connection serves the next
/// stream. A stream that asked for `100 Continue` (never sent over HTTP/2) and sent nothing is
/// the service's 504, not the client's 408.
#[tokio::test(flavor = "current_thread")]
async fn an_http2_upload_the_client_stalls_is_a_408_on_its_stream_alone() {
    use axum::routing::post;
    use futures_util::StreamExt;
    use http_body::Frame;

    type Stalling = http_body_util::StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder()
        .service_name("h2")
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/bytes",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Stalling>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let upload = |id: &str, body: Bytes, stall: bool| {
        let frames = futures_util::stream::iter([Ok(Frame::data(body))]);
        let body = if stall {
            frames.chain(futures_util::stream::pending()).boxed()
        } else {
            frames.boxed()
        };
        http::Request::post("http://a/bytes")
            .header("x-request-id", id)
            .header("content-length", "1000")
            .body(http_body_util::StreamBody::new(body))
            .unwrap()
    };

    sender.ready().await.unwrap();
    let request = upload("stalled-h2", Bytes::from_static(b"{\"name\":\""), true);
    let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered while the client stalls")
        .unwrap();
    assert_eq!(answer.status(), 408);
    assert_eq!(answer.headers()["x-request-id"], "stalled-h2");
    assert!(answer.headers().get("connection").is_none(), "{answer:?}");
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    let error = &json["error"];
    assert_eq!(error["code"], "timeout", "{json}");
    assert_eq!(error["retryable"], true, "{json}");
    assert_eq!(error["request_id"], "stalled-h2", "{json}");
    assert_eq!(error["details"]["received_bytes"], 9, "{json}");
    assert_eq!(error["details"]["expected_bytes"], 1000, "{json}");

    // The same connection serves the next stream.
    sender.ready().await.unwrap();
    let whole = Bytes::from("x".repeat(1000));
    let next = sender
        .send_request(upload("after-stall", whole, false))
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    let body = next.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "1000");

    // A client that asked for `100 Continue` holds its body back until then, and hyper's HTTP/2
    // server never sends it: the wait is the service's timeout (504), not the client's pace.
    sender.ready().await.unwrap();
    let held_back = http::Request::post("http://a/bytes")
        .header("x-request-id", "continue-h2")
        .header("expect", "100-continue")
        .header("content-length", "1000")
        .body(http_body_util::StreamBody::new(
            futures_util::stream::pending().boxed(),
        ))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(held_back))
        .await
        .expect("answered while the client waits for its 100")
        .unwrap();
    assert_eq!(answer.status(), 504);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "timeout", "{json}");

    let access = eventually("the stalled stream's access line", || {
        out.lines()
            .into_iter()
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == "stalled-h2")
    })
    .await;
    drop(log_guard);
    assert_eq!(access["data"]["status"], 408, "{access}");
    assert_eq!(access["level"], "warn", "{access}");
    let lines: Vec<Value> = (out.lines().into_iter())
        .filter(|l| l["request_id"] == "stalled-h2")
        .collect();
    let said: Vec<&Value> = (lines.iter())
        .filter(|l| l["message"] == "the client did not send the request body in time")
        .collect();
    assert_eq!(said.len(), 1, "{lines:#?}");
    assert_eq!(said[0]["level"], "info", "{lines:#?}");
    assert!(lines.iter().all(|l| l["level"] != "error"), "{lines:#?}");
}

/// What a scripted `Health/Watch` answer does, picked by the request's `service`.
fn watch_script(service: &str) -> Vec<Step> {
    match service {
        "internal" => vec![Step::Message, Step::Fail(tonic::Status::internal("lost"))],
        "not_found" => vec![Step::Message, Step::Fail(tonic::Status::not_found("gone"))],
        // Three messages 100 ms apart, then `OK`.
        "slow" => vec![
            Step::Message,
            Step::Pause(Duration::from_millis(100)),
            Step::Message,
            Step::Pause(Duration::from_millis(100)),
            Step::Message,
        ],
        "endless" => vec![Step::Message, Step::Hold],
        other => panic!("no script for {other}"),
    }
}

/// One step of a scripted server stream.
enum Step {
    Message,
    Pause(Duration),
    Fail(tonic::Status),
    /// Nothing more, until the caller goes.
    Hold,
}

/// Marks a `Health/Watch` answer whose body the server fails after its first message (see
/// [`reset_after_a_message`]).
const RESET: &str = "x-test-reset";

/// A gRPC health service whose `Watch` streams what [`watch_script`] says, or, for the service
/// `reset`, one message and then a reset of the stream; `Check` answers `SERVING`.
struct ScriptedHealth;

#[tonic::async_trait]
impl periscope::health::tonic_health::pb::health_server::Health for ScriptedHealth {
    async fn check(
        &self,
        _: tonic::Request<periscope::health::tonic_health::pb::HealthCheckRequest>,
    ) -> Result<
        tonic::Response<periscope::health::tonic_health::pb::HealthCheckResponse>,
        tonic::Status,
    > {
        Ok(tonic::Response::new(serving()))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<
                        periscope::health::tonic_health::pb::HealthCheckResponse,
                        tonic::Status,
                    >,
                > + Send,
        >,
    >;

    async fn watch(
        &self,
        request: tonic::Request<periscope::health::tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let service = request.into_inner().service;
        if service == "reset" {
            let stream: Self::WatchStream = Box::pin(futures_util::stream::iter([Ok(serving())]));
            let mut response = tonic::Response::new(stream);
            response.metadata_mut().insert(RESET, "1".parse().unwrap());
            return Ok(response);
        }
        let steps = watch_script(&service).into_iter();
        let stream = futures_util::stream::unfold(steps, |mut steps| async move {
            loop {
                match steps.next()? {
                    Step::Message => return Some((Ok(serving()), steps)),
                    Step::Pause(pause) => tokio::time::sleep(pause).await,
                    Step::Fail(status) => return Some((Err(status), steps)),
                    Step::Hold => std::future::pending::<()>().await,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

fn serving() -> periscope::health::tonic_health::pb::HealthCheckResponse {
    use periscope::health::tonic_health::pb::health_check_response::ServingStatus;

    periscope::health::tonic_health::pb::HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

/// The answer marked [`RESET`]: its one message, then, 50 ms later, a failing body (the
/// server resets the stream; the pause keeps the reset from overtaking the head).
fn reset_after_a_message(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if response.headers_mut().remove(RESET).is_some() {
        let message = futures_util::stream::once(async {
            let mut message = vec![0, 0, 0, 0, 2];
            message.extend_from_slice(&[0x08, 0x01]);
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(message)))
        });
        let reset = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("the stream failed"))
        });
        let body = http_body_util::StreamBody::new(futures_util::StreamExt::chain(message, reset));
        *response.body_mut() = tonic::body::Body::new(body);
    }
    response
}

/// The count and the duration histogram's sum of the client calls under `status`.
fn client_calls(exposition: &str, status: &str) -> (f64, f64) {
    if exposition.is_empty() {
        return (0.0, 0.0);
    }
    let parsed = openmetrics_parser::prometheus::parse_prometheus(exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut sum = 0.0;
    if let Some(family) = parsed.families.get("http_client_request_duration_seconds") {
        for sample in family.iter_samples() {
            if sample.get_labelset().unwrap().get_label_value("status") != Some(status) {
                continue;
            }
            match &sample.value {
                openmetrics_parser::PrometheusValue::Histogram(histogram) => {
                    sum += histogram.sum.as_ref().unwrap().as_f64();
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let count = counted(
        exposition,
        "http_client_requests_total",
        &[("status", status)],
    );
    (count, sum)
}

/// Makes `call` and checks that it was counted once, under `status`, with a duration of at
/// least `at_least`.
async fn counted_once<F: Future>(
    exposition: &dyn Fn() -> String,
    status: &str,
    at_least: Duration,
    call: F,
) -> F::Output {
    let before = exposition();
    let all_before = counted(&before, "http_client_requests_total", &[]);
    let (count_before, sum_before) = client_calls(&before, status);
    let output = call.await;
    let after = exposition();
    let all = counted(&after, "http_client_requests_total", &[]);
    let (count, sum) = client_calls(&after, status);
    assert_eq!(
        all - all_before,
        1.0,
        "{status}: counted once in all: {after}"
    );
    assert_eq!(count - count_before, 1.0, "{status}: {after}");
    assert!(
        sum - sum_before >= at_least.as_secs_f64(),
        "{status}: timed {} s, not to the end of the call",
        sum - sum_before
    );
    output
}

/// Calls a tonic health server through `client` (a tonic channel in the client layers) and
/// checks each call's count and duration in `exposition`.
async fn grpc_calls_are_counted_by_their_code<T>(
    mut client: periscope::health::tonic_health::pb::health_client::HealthClient<T>,
    exposition: &dyn Fn() -> String,
) where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use periscope::health::tonic_health::pb::HealthCheckRequest;

    let request = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    // A unary call answered `OK` in its trailers.
    let ok = counted_once(exposition, "2xx", Duration::ZERO, client.check(request("")));
    assert!(ok.await.is_ok());

    // A server stream failing in its trailers after a message.
    for (service, status, code) in [
        ("internal", "5xx", tonic::Code::Internal),
        ("not_found", "4xx", tonic::Code::NotFound),
        ("reset", "5xx", tonic::Code::Internal),
    ] {
        let streamed = async {
            let mut stream = client.watch(request(service)).await.unwrap().into_inner();
            assert!(stream.message().await.unwrap().is_some(), "{service}");
            stream.message().await.unwrap_err()
        };
        let failed = counted_once(exposition, status, Duration::ZERO, streamed).await;
        assert_eq!(failed.code(), code, "{service}: {failed:?}");
    }

    // Messages 100 ms apart: timed to the stream's end.
    let slow = async {
        let mut stream = client.watch(request("slow")).await.unwrap().into_inner();
        let mut messages = 0;
        while stream.message().await.unwrap().is_some() {
            messages += 1;
        }
        messages
    };
    let messages = counted_once(exposition, "2xx", Duration::from_millis(200), slow).await;
    assert_eq!(messages, 3);

    // A server stream the caller drops half-read.
    let dropped = async {
        let mut stream = client.watch(request("endless")).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().is_some());
        drop(stream);
    };
    counted_once(exposition, "cancelled", Duration::ZERO, dropped).await;
}

/// The caller's RED metrics of a gRPC call whose code comes in the trailers (every call tonic
/// answers with a message) wait for that code: a unary `OK` counts `2xx`, a server stream
/// failing after a message with `INTERNAL` `5xx` and with `NOT_FOUND` `4xx`, one the server
/// resets `5xx`, one the caller drops half-read `cancelled`; a stream of messages 100 ms apart
/// is timed to its end. Each call counted once, with `ClientMetricsLayer` inside
/// `ClientTraceLayer` (`obs.client_layer()`) and outside it.
#[tokio::test(flavor = "current_thread")]
async fn the_callers_grpc_metrics_wait_for_the_code_in_the_trailers() {
    use periscope::health::tonic_health::pb::health_client::HealthClient;
    use periscope::health::tonic_health::pb::health_server::HealthServer;
    use tower::Layer;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(reset_after_a_message))
        .add_service(HealthServer::new(ScriptedHealth))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let channel = tonic::transport::Endpoint::from(origin.clone())
        .connect()
        .await
        .unwrap();

    let obs = Observability::builder()
        .service_name("caller")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let facade = obs.client_layer().layer(channel.clone());
    let text = || obs.registry().encode_prometheus().unwrap();
    grpc_calls_are_counted_by_their_code(HealthClient::with_origin(facade, origin.clone()), &text)
        .await;

    let registry = periscope::metrics::MetricsRegistry::new();
    let outside = tower::ServiceBuilder::new()
        .layer(periscope::metrics::ClientMetricsLayer::new(&registry).unwrap())
        .layer(periscope::trace::ClientTraceLayer::new())
        .service(channel);
    let text = || registry.encode_prometheus().unwrap();
    grpc_calls_are_counted_by_their_code(HealthClient::with_origin(outside, origin), &text).await;
}

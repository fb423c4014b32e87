//! The client layer around hyper-util's client, calling a real server on 127.0.0.1: each call
//! counted and timed once by method, server and status, failures without an answer as
//! `error`, calls dropped first as `cancelled`, trailers-only gRPC failures by their code.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::{parse_openmetrics, points, serve, sum_where, total};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope_metrics::{ClientMetricsLayer, MetricsRegistry, UNKNOWN_SERVER};
use tower::{Layer, ServiceExt};

fn upstream() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/grpc-unavailable",
            post(|| async {
                // A trailers-only gRPC failure: HTTP 200, the code in the head.
                (
                    [("content-type", "application/grpc"), ("grpc-status", "14")],
                    "",
                )
                    .into_response()
            }),
        )
}

#[tokio::test]
async fn each_call_is_counted_once_by_method_server_and_status() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let client =
        layer.layer(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>());
    let addr = serve(upstream()).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let call = |method: &str, uri: String| {
        // A gRPC call is sent as one, as a gRPC client does.
        let content_type = if uri.contains("/grpc-") {
            "application/grpc"
        } else {
            "text/plain"
        };
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(Empty::new())
            .unwrap();
        client.clone().oneshot(request)
    };

    for _ in 0..2 {
        assert_eq!(
            call("GET", format!("http://{addr}/ok"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        call("POST", format!("http://{addr}/busy"))
            .await
            .unwrap()
            .status(),
        503
    );
    call("POST", format!("http://{addr}/grpc-unavailable"))
        .await
        .unwrap();
    assert!(call("GET", format!("http://{closed}/ok")).await.is_err());
    assert!(
        call("GET", "/ok".to_owned()).await.is_err(),
        "no host to call"
    );
    let slow = tokio::time::timeout(
        Duration::from_millis(100),
        call("GET", format!("http://{addr}/slow")),
    );
    assert!(slow.await.is_err(), "the caller gave up first");

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let port = addr.port().to_string();
    let closed_port = closed.port().to_string();
    for family in [
        "http_client_requests",
        "http_client_request_duration_seconds",
    ] {
        let calls = points(&exposition, family);
        let count = |method, address, port: &str, status| {
            sum_where(
                &calls,
                &[
                    ("method", method),
                    ("server_address", address),
                    ("server_port", port),
                    ("status", status),
                ],
            )
        };
        assert_eq!(
            count("GET", "127.0.0.1", &port, "2xx"),
            2.0,
            "{family}: {calls:#?}"
        );
        assert_eq!(
            count("POST", "127.0.0.1", &port, "5xx"),
            2.0,
            "{family}: 503 and UNAVAILABLE"
        );
        assert_eq!(
            count("GET", "127.0.0.1", &closed_port, "error"),
            1.0,
            "{family}"
        );
        assert_eq!(
            count("GET", UNKNOWN_SERVER, UNKNOWN_SERVER, "error"),
            1.0,
            "{family}"
        );
        assert_eq!(
            count("GET", "127.0.0.1", &port, "cancelled"),
            1.0,
            "{family}"
        );
        let all: f64 = calls.iter().map(|point| point.value).sum();
        assert_eq!(all, 7.0, "{family}: each call once: {calls:#?}");
    }
}

#[tokio::test]
async fn the_default_port_is_the_schemes_and_hosts_are_lower_case() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let answered = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
    });
    for uri in [
        "https://Models.Internal/v1/predict",
        "http://models.internal/health",
        // The root dot names the same server.
        "https://models.internal./v1/predict",
    ] {
        let request = http::Request::get(uri).body(()).unwrap();
        layer.layer(answered).oneshot(request).await.unwrap();
    }
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_requests");
    let at = |port| {
        sum_where(
            &calls,
            &[("server_address", "models.internal"), ("server_port", port)],
        )
    };
    assert_eq!(at("443"), 2.0, "{calls:#?}");
    assert_eq!(at("80"), 1.0, "{calls:#?}");
}

/// An IPv6 server is counted under its bare address, as the client span names it: the
/// brackets belong to the URL, not to the address (`server_port` stands apart).
#[tokio::test]
async fn an_ipv6_server_is_counted_without_brackets() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let answered = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
    });
    for uri in ["http://[::1]:8080/v1/predict", "http://[FD00::7]/health"] {
        let request = http::Request::get(uri).body(()).unwrap();
        layer.layer(answered).oneshot(request).await.unwrap();
    }
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_requests");
    let at = |address, port| {
        sum_where(
            &calls,
            &[("server_address", address), ("server_port", port)],
        )
    };
    assert_eq!(at("::1", "8080"), 1.0, "{calls:#?}");
    assert_eq!(at("fd00::7", "80"), 1.0, "{calls:#?}");
}

/// A client calling URLs its users choose fills the `server_address` cap; the layer's own
/// fallbacks must still be told apart from the folded hosts: a call without a host stays
/// `__unknown__`, a failed one `error`, and the two families keep the same hosts.
#[tokio::test]
async fn the_layers_own_values_stay_outside_the_caps() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::builder()
        .caps(
            periscope_metrics::Caps::default()
                .label("server_address", 3)
                .label("server_port", 3)
                .label("status", 1),
        )
        .register(&registry)
        .unwrap();
    let answered = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
    }));
    for i in 0..10 {
        let request = http::Request::get(format!("http://h{i}.example:{}/", 1000 + i))
            .body(())
            .unwrap();
        answered.clone().oneshot(request).await.unwrap();
    }
    let request = http::Request::get("/no-host").body(()).unwrap();
    answered.clone().oneshot(request).await.unwrap();
    let failing = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Err::<http::Response<Empty<bytes::Bytes>>, _>(std::io::Error::other("refused"))
    }));
    let request = http::Request::get("http://h0.example:1000/")
        .body(())
        .unwrap();
    assert!(failing.oneshot(request).await.is_err());

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    for family in [
        "http_client_requests",
        "http_client_request_duration_seconds",
    ] {
        let calls = points(&exposition, family);
        let unknown = sum_where(
            &calls,
            &[
                ("server_address", UNKNOWN_SERVER),
                ("server_port", UNKNOWN_SERVER),
                ("status", "2xx"),
            ],
        );
        assert_eq!(unknown, 1.0, "{family}: {calls:#?}");
        let failed = sum_where(
            &calls,
            &[("server_address", "h0.example"), ("status", "error")],
        );
        assert_eq!(failed, 1.0, "{family}: {calls:#?}");
        let folded = sum_where(&calls, &[("server_address", "__overflow__")]);
        assert_eq!(folded, 7.0, "{family}: h3 to h9: {calls:#?}");
        let all: f64 = calls.iter().map(|point| point.value).sum();
        assert_eq!(all, 12.0, "{family}");
    }
}

/// A client that panics failed without an answer: `error`, not `cancelled` (which says the
/// caller gave up).
#[tokio::test]
async fn a_panicking_client_counts_as_an_error() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let panicking = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        panic!("the client panicked on purpose");
        #[allow(unreachable_code)]
        Ok::<http::Response<Empty<bytes::Bytes>>, std::convert::Infallible>(http::Response::new(
            Empty::<bytes::Bytes>::new(),
        ))
    }));
    let request = http::Request::get("http://models.internal/")
        .body(())
        .unwrap();
    let joined = tokio::spawn(panicking.oneshot(request)).await;
    assert!(joined.unwrap_err().is_panic());

    assert_one_call_failed(&registry);
}

/// A call made for a sampled trace links its duration to that trace (an OpenMetrics exemplar),
/// so a slow dependency call leads to its trace; an unsampled one links nothing.
#[tokio::test]
async fn a_sampled_calls_duration_links_its_trace() {
    use periscope_context::{RequestContext, RequestId};

    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let answered = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<bytes::Bytes>::new()))
    }));
    let sampled = RequestContext::start(RequestId::generate(), true);
    let trace_id = sampled.trace_id.to_string();
    let request = http::Request::get("http://sampled.internal/")
        .body(())
        .unwrap();
    sampled
        .scope(answered.clone().oneshot(request))
        .await
        .unwrap();
    let unsampled = RequestContext::start(RequestId::generate(), false);
    let request = http::Request::get("http://unsampled.internal/")
        .body(())
        .unwrap();
    unsampled.scope(answered.oneshot(request)).await.unwrap();

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_request_duration_seconds");
    let exemplars = |host: &str| {
        calls
            .iter()
            .find(|point| point.label("server_address") == host)
            .unwrap_or_else(|| panic!("{host}: {calls:#?}"))
            .exemplars
            .clone()
    };
    assert_eq!(exemplars("sampled.internal"), [trace_id]);
    assert!(exemplars("unsampled.internal").is_empty());
}

/// A client whose poll panics is still an `error` when the panic is caught around that poll
/// and the call dropped afterwards, as a handler behind a panic-catching layer (periscope's
/// `ErrorLayer`, `futures::FutureExt::catch_unwind`) is: no unwinding is under way by then.
#[test]
fn a_client_panic_caught_around_its_poll_counts_as_an_error() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let mut panicking = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        panic!("the client panicked on purpose");
        #[allow(unreachable_code)]
        Ok::<http::Response<Empty<bytes::Bytes>>, std::convert::Infallible>(http::Response::new(
            Empty::<bytes::Bytes>::new(),
        ))
    }));
    let request = http::Request::get("http://models.internal/")
        .body(())
        .unwrap();
    let mut call = Box::pin(tower::Service::call(&mut panicking, request));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        call.as_mut().poll(&mut cx).is_ready()
    }));
    assert!(polled.is_err());
    drop(call);

    assert_one_call_failed(&registry);
}

/// Answers a server gives that are not plain successes: a redirect counts as `3xx` (the client
/// does not follow it), a head cut off or bytes that are no HTTP as `error`, and an answer whose
/// body is cut off after its head as the status its head gave (the count ends at the head).
#[tokio::test]
async fn redirects_and_broken_answers_are_counted_by_what_came_back() {
    use http_body_util::BodyExt;

    let addr = raw_upstream(|head| {
        let answer: &[u8] = match head.split(' ').nth(1) {
            Some("/moved") => b"HTTP/1.1 301 Moved\r\nlocation: /\r\ncontent-length: 0\r\n\r\n",
            Some("/cut-head") => b"HTTP/1.1 200 OK\r\ncontent-len",
            Some("/cut-body") => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
            _ => b"NOT HTTP\r\n\r\n",
        };
        answer.to_vec()
    })
    .await;
    let registry = MetricsRegistry::new();
    let client = metered_client(&registry);
    let call = |path: &str| {
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap();
        client.clone().oneshot(request)
    };

    assert_eq!(call("/moved").await.unwrap().status(), 301);
    assert!(call("/cut-head").await.is_err());
    assert!(call("/garbage").await.is_err());
    let cut = call("/cut-body").await.unwrap();
    assert!(cut.into_body().collect().await.is_err(), "the body was cut");

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let port = addr.port().to_string();
    for family in [
        "http_client_requests",
        "http_client_request_duration_seconds",
    ] {
        let calls = points(&exposition, family);
        let count = |status| {
            sum_where(
                &calls,
                &[
                    ("method", "GET"),
                    ("server_address", "127.0.0.1"),
                    ("server_port", &port),
                    ("status", status),
                ],
            )
        };
        assert_eq!(count("3xx"), 1.0, "{family}: {calls:#?}");
        assert_eq!(count("error"), 2.0, "{family}: {calls:#?}");
        assert_eq!(count("2xx"), 1.0, "{family}: {calls:#?}");
        let all: f64 = calls.iter().map(|point| point.value).sum();
        assert_eq!(all, 4.0, "{family}: each call once: {calls:#?}");
    }
}

/// A plain HTTP call (not a gRPC request) whose 200 answer says it is gRPC (a misconfigured
/// proxy), without a code or with a failing one in its head: counted by its status, `2xx`, as
/// any HTTP call, at its head; not as a gRPC call ending without a code (`5xx`) or failing.
#[tokio::test]
async fn a_plain_call_answered_with_a_grpc_content_type_counts_by_its_status() {
    use http_body_util::BodyExt;

    let addr = raw_upstream(|head| {
        let code = if head.starts_with("GET /failing") {
            "grpc-status: 14\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n{code}content-length: 2\r\n\r\nok"
        )
        .into_bytes()
    })
    .await;
    let registry = MetricsRegistry::new();
    let client = metered_client(&registry);
    for path in ["/plain", "/failing"] {
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    for family in [
        "http_client_requests",
        "http_client_request_duration_seconds",
    ] {
        let calls = points(&exposition, family);
        assert_eq!(
            sum_where(&calls, &[("method", "GET"), ("status", "2xx")]),
            2.0,
            "{family}: {calls:#?}"
        );
        let all: f64 = calls.iter().map(|point| point.value).sum();
        assert_eq!(all, 2.0, "{family}: each call once: {calls:#?}");
    }
}

/// A gRPC call answered by no gRPC server (a proxy's page, an ingress's 503) counts by the code
/// its caller reads, by gRPC's mapping of the HTTP status: a 200 page is `UNKNOWN` (5xx), a 503
/// `UNAVAILABLE` (5xx), a 404 `UNIMPLEMENTED` (5xx); not the success its 200 would say. A
/// `grpc-status` in the head wins, as it does for the caller (NGINX's gRPC error pages).
#[tokio::test]
async fn a_grpc_call_answered_without_grpc_counts_by_the_code_grpc_maps_it_to() {
    use http_body_util::BodyExt;

    let addr = raw_upstream(|head| {
        if head.starts_with("POST /pkg.Svc/Web") {
            // A gRPC-Web server's answer: its code comes at the end of the body, so the head
            // is all a layer sees of it.
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\n\
                     content-length: 0\r\n\r\n"
                .to_vec();
        }
        if head.starts_with("POST /pkg.Svc/Denied") {
            // NGINX's gRPC error page: no gRPC `content-type`, the code in the head, which
            // the caller reads (`PERMISSION_DENIED`: a 4xx, not the 204's success).
            return b"HTTP/1.1 204 No Content\r\ngrpc-status: 7\r\n\r\n".to_vec();
        }
        let status = if head.starts_with("POST /pkg.Svc/Down") {
            "503 Service Unavailable"
        } else if head.starts_with("POST /pkg.Svc/Gone") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        format!("HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: 6\r\n\r\n<html>")
            .into_bytes()
    })
    .await;
    let registry = MetricsRegistry::new();
    let client = metered_client(&registry);
    for path in [
        "/pkg.Svc/Page",
        "/pkg.Svc/Down",
        "/pkg.Svc/Gone",
        "/pkg.Svc/Web",
        "/pkg.Svc/Denied",
    ] {
        let request = grpc_request(&format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_requests");
    assert_eq!(sum_where(&calls, &[("status", "5xx")]), 3.0, "{calls:#?}");
    assert_eq!(sum_where(&calls, &[("status", "2xx")]), 1.0, "{calls:#?}");
    assert_eq!(sum_where(&calls, &[("status", "4xx")]), 1.0, "{calls:#?}");
    assert_eq!(calls.iter().map(|point| point.value).sum::<f64>(), 5.0);
}

/// hyper-util's client for requests without a body, under the metrics layer recording into
/// `registry`.
fn metered_client(
    registry: &MetricsRegistry,
) -> periscope_metrics::ClientMetrics<
    Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
> {
    ClientMetricsLayer::new(registry)
        .unwrap()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>())
}

/// The registry holds exactly one call, to `models.internal`, counted as `error`.
fn assert_one_call_failed(registry: &MetricsRegistry) {
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_requests");
    assert_eq!(
        sum_where(
            &calls,
            &[("server_address", "models.internal"), ("status", "error")]
        ),
        1.0,
        "{calls:#?}"
    );
    assert_eq!(calls.iter().map(|point| point.value).sum::<f64>(), 1.0);
}

/// A body of `left` chunks, each sent 100 ms after the one before.
struct Paced {
    left: u32,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    fn new(chunks: u32) -> Self {
        Self {
            left: chunks,
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        }
    }
}

impl http_body::Body for Paced {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.pause.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(100);
        self.pause.as_mut().reset(next);
        let chunk = bytes::Bytes::from_static(b"token");
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

/// The count and the duration histogram's sum of the calls under `status`.
fn count_and_sum(registry: &MetricsRegistry, status: &str) -> (f64, f64) {
    let text = registry.encode_openmetrics().unwrap();
    // No call counted yet: no family is written (and the text does not parse).
    if !text.contains("http_client_requests_total") {
        return (0.0, 0.0);
    }
    let exposition = parse_openmetrics(&text);
    let count = sum_where(
        &points(&exposition, "http_client_requests"),
        &[("status", status)],
    );
    let mut sum = 0.0;
    for sample in exposition.families["http_client_request_duration_seconds"].iter_samples() {
        let labels = sample.get_labelset().unwrap();
        if labels.get_label_value("status") != Some(status) {
            continue;
        }
        match &sample.value {
            openmetrics_parser::OpenMetricsValue::Histogram(histogram) => {
                sum += histogram.sum.as_ref().unwrap().as_f64();
            }
            other => panic!("{other:?}"),
        }
    }
    (count, sum)
}

/// A plain HTTP answer streamed in chunks 100 ms apart is counted and timed at its head, as
/// OpenTelemetry's `http.client.request.duration`: counted before its body is read, its
/// duration not covering the stream.
#[tokio::test]
async fn a_plain_http_stream_is_still_timed_to_its_head() {
    use http_body_util::BodyExt;

    let app = Router::new().route(
        "/stream",
        get(|| async { axum::body::Body::new(Paced::new(3)) }),
    );
    let addr = serve(app).await;
    let registry = MetricsRegistry::new();
    let client = metered_client(&registry);
    let request = http::Request::get(format!("http://{addr}/stream"))
        .body(Empty::new())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(
        count_and_sum(&registry, "2xx").0,
        1.0,
        "counted at its head"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "tokentokentoken");

    let (count, sum) = count_and_sum(&registry, "2xx");
    assert_eq!(count, 1.0);
    // The body takes at least 0.3 s (three chunks 0.1 s apart); its head comes at once.
    assert!(sum < 0.25, "timed to the end of its body: {sum} s");
}

/// A gRPC answer (HTTP 200, `application/grpc`, no `grpc-status` in its head) whose code comes
/// in its trailers, from a client answering `body`.
fn grpc_client<B>(
    layer: &ClientMetricsLayer,
    body: impl Fn() -> B + Clone + Send + 'static,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Unpin,
    >,
    Error = std::convert::Infallible,
> + Clone
where
    B: http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible>
        + Unpin
        + Send
        + 'static,
{
    layer.layer(tower::service_fn(move |_: http::Request<()>| {
        let body = body.clone();
        async move {
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(body())
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    }))
}

/// A gRPC call to `uri`, sent as gRPC clients send one: a `POST` of `application/grpc`.
fn grpc_request(uri: &str) -> http::request::Builder {
    http::Request::post(uri).header("content-type", "application/grpc")
}

type FrameSender = tokio::sync::mpsc::UnboundedSender<http_body::Frame<bytes::Bytes>>;

/// A body whose frames the test sends; it ends when the sender is dropped.
struct Script(tokio::sync::mpsc::UnboundedReceiver<http_body::Frame<bytes::Bytes>>);

impl http_body::Body for Script {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A gRPC call whose code comes in its trailers is counted when they come, under the exact
/// code its `grpc-status` stands for with the status switch (`NOT_FOUND`: 404), and its
/// duration links the sampled trace of the call, as one counted at its head does.
#[tokio::test]
async fn a_grpc_call_is_counted_when_its_trailers_come() {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use periscope_context::{RequestContext, RequestId};

    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::builder()
        .status_label(periscope_metrics::StatusLabel::Code)
        .register(&registry)
        .unwrap();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let receiver = std::sync::Arc::new(std::sync::Mutex::new(Some(receiver)));
    let client = grpc_client(&layer, move || {
        Script(receiver.lock().unwrap().take().unwrap())
    });
    let sender: FrameSender = sender;
    let ctx = RequestContext::start(RequestId::generate(), true);
    let request = grpc_request("http://models.internal/pkg.Svc/Run")
        .body(())
        .unwrap();
    let response = ctx.clone().scope(client.oneshot(request)).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(
        count_and_sum(&registry, "200").0,
        0.0,
        "counted at its head"
    );

    sender
        .send(http_body::Frame::data(bytes::Bytes::from_static(&[0; 5])))
        .unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert!(!body.is_end_stream());
    assert_eq!(
        count_and_sum(&registry, "200").0,
        0.0,
        "counted at a message"
    );

    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "5".parse().unwrap());
    sender.send(http_body::Frame::trailers(trailers)).unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    drop((sender, body));

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    for family in [
        "http_client_requests",
        "http_client_request_duration_seconds",
    ] {
        let calls = points(&exposition, family);
        assert_eq!(sum_where(&calls, &[("status", "404")]), 1.0, "{calls:#?}");
        assert_eq!(total(&exposition, family), 1.0, "{family}: once");
    }
    let calls = points(&exposition, "http_client_request_duration_seconds");
    assert_eq!(calls[0].exemplars, [ctx.trace_id.to_string()]);
}

/// A gRPC answer whose body ends without a code is `UNKNOWN` (500), as the caller reads it:
/// when its last message ends it, and at once when its body is empty at the head (nothing
/// more will come). Its size hint and end of stream are the inner body's.
#[tokio::test]
async fn a_grpc_answer_ending_without_a_code_counts_as_unknown() {
    use http_body::Body as _;
    use http_body_util::{BodyExt, Full};

    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let request = || {
        grpc_request("http://models.internal/pkg.Svc/Run")
            .body(())
            .unwrap()
    };

    let empty = grpc_client(&layer, Empty::<bytes::Bytes>::new);
    let response = empty.oneshot(request()).await.unwrap();
    assert!(response.body().is_end_stream());
    assert_eq!(response.body().size_hint().exact(), Some(0));
    assert_eq!(count_and_sum(&registry, "5xx").0, 1.0, "counted at once");
    drop(response);

    let message = || Full::new(bytes::Bytes::from_static(&[0; 5]));
    let one_message = grpc_client(&layer, message);
    let response = one_message.oneshot(request()).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(body.size_hint().exact(), Some(5));
    assert!(!body.is_end_stream());
    assert_eq!(count_and_sum(&registry, "5xx").0, 1.0, "the empty one only");
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert!(body.is_end_stream());
    assert_eq!(count_and_sum(&registry, "5xx").0, 2.0, "counted at its end");
    drop(body);

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    assert_eq!(total(&exposition, "http_client_requests"), 2.0, "each once");
}

/// A trailers-only gRPC answer whose `grpc-status` is not a number fails the call as
/// `UNKNOWN` (500), what a gRPC client reads from it, not the success of its HTTP 200; the same
/// value in the trailers already counted so.
#[tokio::test]
async fn a_grpc_status_that_is_not_a_number_counts_as_unknown() {
    let registry = MetricsRegistry::new();
    let client = ClientMetricsLayer::new(&registry)
        .unwrap()
        .layer(tower::service_fn(|_: http::Request<()>| async {
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "not-a-code")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }));
    let request = grpc_request("http://models.internal/pkg.Svc/Run")
        .body(())
        .unwrap();
    drop(client.oneshot(request).await.unwrap());
    assert_eq!(count_and_sum(&registry, "5xx").0, 1.0);
    assert_eq!(count_and_sum(&registry, "2xx").0, 0.0);
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
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        if self.polled {
            panic!("the client's body panicked on purpose");
        }
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        self.polled = frame.is_ready();
        frame
    }
}

/// A gRPC call waiting for the code in its trailers whose body panics in the client below the
/// layer (the reading task dies, the body dropped while unwinding): the client failed, as
/// when its future panics: `error`, not `cancelled` (which says the caller gave up), counted
/// once.
#[tokio::test]
async fn a_grpc_body_panicking_in_the_client_counts_as_an_error() {
    use http_body_util::BodyExt;

    let app = Router::new().route(
        "/pkg.Svc/Watch",
        post(|| async {
            let body = axum::body::Body::new(Paced::new(3));
            ([("content-type", "application/grpc")], body)
        }),
    );
    let addr = serve(app).await;
    let registry = MetricsRegistry::new();
    let panics = tower::util::MapResponseLayer::new(|response: http::Response<_>| {
        response.map(|inner| PanicsAfterOneFrame {
            inner,
            polled: false,
        })
    });
    let client = ClientMetricsLayer::new(&registry).unwrap().layer(
        panics.layer(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>()),
    );
    let request = grpc_request(&format!("http://{addr}/pkg.Svc/Watch"))
        .body(Empty::new())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(
        count_and_sum(&registry, "2xx").0,
        0.0,
        "counted at a message"
    );
    let read = tokio::spawn(async move { while body.frame().await.is_some() {} }).await;
    assert!(read.unwrap_err().is_panic());

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let calls = points(&exposition, "http_client_requests");
    assert_eq!(sum_where(&calls, &[("status", "error")]), 1.0, "{calls:#?}");
    assert_eq!(
        total(&exposition, "http_client_requests"),
        1.0,
        "{calls:#?}"
    );
}

/// A server on 127.0.0.1 that reads each request's head and writes the bytes `answer` gives
/// for it, then closes the connection: one answer per connection, right or broken.
async fn raw_upstream(answer: fn(&str) -> Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0; 1];
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            socket.write_all(&answer(&head)).await.unwrap();
        }
    });
    addr
}

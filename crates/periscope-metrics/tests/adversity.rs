//! Hostile or odd traffic against the cardinality guard and `/metrics`, over real sockets on
//! 127.0.0.1: label values that need escaping, thousands of servers behind the client layer,
//! scrapes in every format while requests keep arriving.

mod common;

use std::collections::HashSet;
use std::io::Read;

use axum::Router;
use axum::routing::get;
use common::{parse_openmetrics, points, promtool_check, request, serve, total};
use openmetrics_parser::prometheus::parse_prometheus;
use periscope_metrics::{
    Caps, ClientMetricsLayer, MetricsLayer, MetricsRegistry, MetricsService, OVERFLOW,
};
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, ServiceExt};

/// Values a service may hand a custom label (a model name from a request, an upstream's
/// error text): each must come back as itself, one series each, none forging a line.
const HOSTILE: [&str; 9] = [
    "quote\"",
    "back\\slash",
    "trailing\\",
    "new\nline",
    "carriage\rreturn",
    "ünïcødé ✓ 日本",
    "x\"} 1\nforged_total 99\n# EOF\n",
    "",
    "__unmatched__",
];

/// The parser in dev-dependencies reads a bare CR as a line break, which neither format does
/// (OpenMetrics allows it in a label value, `promtool` accepts it): mark it for the parser.
fn without_cr(text: &str) -> String {
    text.replace('\r', "<CR>")
}

/// Any path answered, counted under its own path as the route (client-sent paths as labels),
/// and `/metrics` of `registry`, served on 127.0.0.1.
async fn serve_paths_as_routes(registry: &MetricsRegistry) -> std::net::SocketAddr {
    let layer = MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .register(registry)
        .unwrap();
    let app = Router::new()
        .fallback(get(|| async { "x" }))
        .layer(layer)
        .route_service("/metrics", MetricsService::new(registry.clone()));
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_label_values_round_trip_in_both_formats_without_forged_series() {
    let registry = MetricsRegistry::new();
    let family = registry
        .guarded_family::<Counter, 2>("odd", "Odd values", ["value", "kind"], Caps::default())
        .unwrap();
    for value in HOSTILE {
        family.get_or_create([value, "k"]).inc();
    }
    // Over the length limit: folded, not written.
    family.get_or_create([&"é".repeat(200), "k"]).inc();
    let addr = serve_paths_as_routes(&registry).await;
    // Client-sent paths as routes: percent-encoded as sent, and a bare quote the URI parser
    // lets through.
    for path in ["/a%22b", "/a%5Cb", "/%E6%97%A5", "/a%0A%0Db", "/a\"}b"] {
        request(addr, "GET", path, &[]).await.unwrap();
    }
    let expected: HashSet<String> = HOSTILE
        .iter()
        .map(|value| without_cr(value))
        .chain([OVERFLOW.to_owned()])
        .collect();

    let accept = [("accept", "application/openmetrics-text")];
    let text = request(addr, "GET", "/metrics", &accept)
        .await
        .unwrap()
        .text();
    let exposition = parse_openmetrics(&without_cr(&text));
    let values: HashSet<String> = points(&exposition, "odd")
        .iter()
        .map(|point| point.label("value").to_owned())
        .collect();
    assert_eq!(values, expected);
    assert!(!exposition.families.contains_key("forged"), "{text}");
    let routes: HashSet<String> = points(&exposition, "http_server_requests")
        .iter()
        .map(|point| point.label("route").to_owned())
        .collect();
    assert_eq!(
        routes,
        HashSet::from(["/a%22b", "/a%5Cb", "/%E6%97%A5", "/a%0A%0Db", "/a\"}b"].map(String::from))
    );

    let text = request(addr, "GET", "/metrics", &[]).await.unwrap().text();
    promtool_check(&text);
    let exposition = parse_prometheus(&without_cr(&text))
        .unwrap_or_else(|err| panic!("invalid Prometheus text: {err:?}\n{text}"));
    let values: HashSet<String> = exposition.families["odd_total"]
        .iter_samples()
        .map(|sample| {
            let labels = sample.get_labelset().unwrap();
            labels
                .get_label_value("value")
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(values, expected);
    assert!(!exposition.families.contains_key("forged_total"), "{text}");
}

#[tokio::test]
async fn thousands_of_servers_and_methods_fold_at_the_client_caps() {
    let registry = MetricsRegistry::new();
    let layer = ClientMetricsLayer::new(&registry).unwrap();
    let client = layer.layer(tower::service_fn(|_: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    const CALLS: usize = 3_000;
    for i in 0..CALLS {
        let method = if i % 2 == 0 {
            "GET".to_owned()
        } else {
            format!("M{i}")
        };
        let request = http::Request::builder()
            .method(method.as_str())
            .uri(format!("http://H{i}.example:{}/x", 1_000 + i % 500))
            .body(String::new())
            .unwrap();
        client.clone().oneshot(request).await.unwrap();
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    assert_eq!(total(&exposition, "http_client_requests"), CALLS as f64);
    let calls = points(&exposition, "http_client_requests");
    let values = |label: &str| -> HashSet<String> {
        calls
            .iter()
            .map(|point| point.label(label).to_owned())
            .collect()
    };
    let (hosts, ports) = (values("server_address"), values("server_port"));
    assert_eq!(hosts.len(), 101, "100 kept hosts and {OVERFLOW}");
    assert!(hosts.contains(OVERFLOW) && hosts.contains("h0.example"));
    assert_eq!(ports.len(), 101, "100 kept ports and {OVERFLOW}");
    assert_eq!(
        values("method"),
        HashSet::from(["GET", "_OTHER"].map(String::from))
    );
    let overflow = points(&exposition, "periscope_label_overflow");
    let folds = |label: &str| -> f64 {
        overflow
            .iter()
            .filter(|point| {
                point.label("metric") == "http_client_requests_total"
                    && point.label("label") == label
            })
            .map(|point| point.value)
            .sum()
    };
    assert_eq!(folds("server_address"), (CALLS - 100) as f64);
    assert_eq!(
        folds("server_port"),
        (CALLS - 600) as f64,
        "ports repeat every 500 calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrapes_in_every_format_during_heavy_traffic_parse_and_only_grow() {
    let registry = MetricsRegistry::new();
    let addr = serve_paths_as_routes(&registry).await;
    // One request first: a registry with no series yet is `# EOF` alone, valid OpenMetrics
    // that the parser in dev-dependencies refuses.
    request(addr, "GET", "/first", &[]).await.unwrap();
    let clients: Vec<_> = (0..8)
        .map(|client| {
            tokio::spawn(async move {
                for i in 0..250 {
                    request(addr, "GET", &format!("/c{client}/{i}"), &[])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();

    let mut last = 0.0;
    for i in 0..45 {
        let (accept, encoding, openmetrics) = match i % 3 {
            0 => (
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                "gzip",
                true,
            ),
            1 => ("text/plain;version=0.0.4", "identity", false),
            _ => ("*/*", "GZIP;q=0.5, br", false),
        };
        let headers = [("accept", accept), ("accept-encoding", encoding)];
        let response = request(addr, "GET", "/metrics", &headers).await.unwrap();
        assert_eq!(response.status, 200);
        let gzip = response.header("content-encoding") == Some("gzip");
        assert_eq!(gzip, encoding != "identity");
        let text = if gzip {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&response.body[..])
                .read_to_string(&mut text)
                .unwrap();
            text
        } else {
            response.text()
        };
        let counted = if openmetrics {
            total(&parse_openmetrics(&text), "http_server_requests")
        } else {
            let exposition = parse_prometheus(&text)
                .unwrap_or_else(|err| panic!("invalid Prometheus text: {err:?}\n{text}"));
            exposition.families["http_server_requests_total"]
                .iter_samples()
                .map(|sample| match &sample.value {
                    openmetrics_parser::PrometheusValue::Counter(counter) => counter.value.as_f64(),
                    other => panic!("{other:?}"),
                })
                .sum()
        };
        assert!(
            counted >= last,
            "a scrape went back from {last} to {counted}"
        );
        last = counted;

        let head = request(addr, "HEAD", "/metrics", &headers).await.unwrap();
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-type"), response.header("content-type"));
        assert_eq!(
            head.header("content-encoding"),
            response.header("content-encoding")
        );
    }
    for client in clients {
        client.await.unwrap();
    }
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    assert_eq!(total(&exposition, "http_server_requests"), 2_001.0);
    let routes = points(&exposition, "http_server_requests").len();
    assert!(routes <= 101, "{routes} routes past the cap of 100");
}

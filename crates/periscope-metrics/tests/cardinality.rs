//! A cardinality attack: random paths and invented methods cannot grow the series past the
//! caps, and every request is still counted.
// Test code: helpers outside #[test] functions may unwrap too.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;

use axum::Router;
use common::{parse_openmetrics, points, request, serve, sum_where, total};
use http::{Method, Request, Response, StatusCode};
use periscope_metrics::{
    DEFAULT_LABEL_CAP, DEFAULT_SERIES_CAP, MetricsLayer, MetricsRegistry, OTHER_METHOD, OVERFLOW,
    StatusLabel, UNMATCHED,
};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

const REQUESTS: usize = 100_000;
const BOGUS_METHODS: usize = 1_000;
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// xorshift64*: reproducible "random" paths without a dependency.
struct Paths(u64);

impl Paths {
    fn next(&mut self) -> String {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        format!(
            "/{:x}/{}",
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d),
            self.0 % 97
        )
    }
}

fn method(i: usize) -> Method {
    if i.is_multiple_of(3) {
        Method::from_bytes(format!("BOGUS{}", i % BOGUS_METHODS).as_bytes()).unwrap()
    } else {
        Method::GET
    }
}

/// Sends `REQUESTS` requests with distinct random paths in process, through the layer.
async fn attack(layer: MetricsLayer) {
    let app = layer.layer(service_fn(|request: Request<String>| async move {
        let status = match request.uri().path().len() % 3 {
            0 => StatusCode::OK,
            1 => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = Response::new(String::new());
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    }));
    let mut paths = Paths(0x9e37_79b9_7f4a_7c15);
    let mut seen = HashSet::new();
    for i in 0..REQUESTS {
        let path = paths.next();
        seen.insert(path.clone());
        let request = Request::builder()
            .method(method(i))
            .uri(path)
            .body(String::new())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();
    }
    assert!(seen.len() > REQUESTS * 99 / 100, "paths are distinct");
}

#[tokio::test]
async fn raw_paths_as_routes_fold_past_the_cap_and_totals_stay_exact() {
    // The worst configuration: a route function that returns the raw path.
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .status_label(StatusLabel::Code)
        .register(&registry)
        .unwrap();
    attack(layer.clone()).await;
    assert_eq!(layer.in_flight(), 0);

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    assert_eq!(total(&exposition, "http_server_requests"), REQUESTS as f64);
    assert_eq!(
        total(&exposition, "http_server_request_duration_seconds"),
        REQUESTS as f64
    );
    assert!(
        requests.len() <= DEFAULT_SERIES_CAP + 1,
        "{} series",
        requests.len()
    );
    let routes: HashSet<&str> = requests.iter().map(|point| point.label("route")).collect();
    assert!(
        routes.len() <= DEFAULT_LABEL_CAP + 1,
        "{} routes",
        routes.len()
    );
    assert!(routes.contains(OVERFLOW));
    let methods: HashSet<&str> = requests.iter().map(|point| point.label("method")).collect();
    assert_eq!(methods, HashSet::from(["GET", OTHER_METHOD]));
    let statuses: HashSet<&str> = requests.iter().map(|point| point.label("status")).collect();
    assert_eq!(statuses, HashSet::from(["200", "404", "500"]));

    // Every folded request is counted in the overflow counter, per family.
    let folded: f64 = requests
        .iter()
        .filter(|point| point.label("route") == OVERFLOW)
        .map(|point| point.value)
        .sum();
    assert!(folded >= (REQUESTS - DEFAULT_LABEL_CAP) as f64 * 0.99);
    let overflow = points(&exposition, "periscope_label_overflow");
    let overflow_of =
        |metric: &str, label: &str| sum_where(&overflow, &[("metric", metric), ("label", label)]);
    assert_eq!(overflow_of("http_server_requests_total", "route"), folded);
    assert_eq!(
        overflow_of("http_server_requests_in_flight", "route"),
        folded
    );
    assert_eq!(overflow_of("http_server_requests_total", "method"), 0.0);

    let in_flight = points(&exposition, "http_server_requests_in_flight");
    assert!(in_flight.len() <= 2 * (DEFAULT_LABEL_CAP + 1));
    assert!(in_flight.iter().all(|point| point.value == 0.0));
}

#[tokio::test]
async fn with_the_default_routes_random_paths_are_one_unmatched_route() {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_templates(["/users/{id}"])
        .register(&registry)
        .unwrap();
    attack(layer).await;
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    assert_eq!(total(&exposition, "http_server_requests"), REQUESTS as f64);
    // 2 methods (GET, _OTHER) x 1 route x 3 status classes.
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|point| point.label("route") == UNMATCHED)
    );
    assert!(points(&exposition, "periscope_label_overflow").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attack_over_a_real_socket_stays_bounded() {
    const SOCKET_REQUESTS: usize = 2_000;
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder().register(&registry).unwrap();
    let app = Router::new()
        .route("/known/{id}", axum::routing::get(|| async { "known" }))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(layer.clone());
    let addr = serve(app).await;

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        tasks.spawn(async move {
            let mut paths = Paths(worker as u64 + 1);
            for i in (worker..SOCKET_REQUESTS).step_by(16) {
                let method = method(i);
                let path = if i % 10 == 0 {
                    format!("/known/{i}")
                } else {
                    paths.next()
                };
                let response = request(addr, method.as_str(), &path, &[]).await.unwrap();
                let expected = if i % 10 == 0 && method == Method::GET {
                    200
                } else {
                    404
                };
                assert!(
                    response.status == expected || response.status == 405,
                    "{method} {path}: {}",
                    response.status
                );
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    assert_eq!(
        total(&exposition, "http_server_requests"),
        SOCKET_REQUESTS as f64
    );
    let requests = points(&exposition, "http_server_requests");
    for point in &requests {
        let route = point.label("route");
        assert!(route == UNMATCHED || route == "/known/{id}", "{route}");
        let method = point.label("method");
        assert!(
            method == OTHER_METHOD || STANDARD_METHODS.contains(&method),
            "{method}"
        );
    }
    assert!(requests.len() <= 2 * 2 * 5, "{requests:?}");
    assert_eq!(layer.in_flight(), 0);
}

/// A family that hits its series cap folds the whole series: counted as `__series__` for that
/// family only, never as a fold of a label that has room (the runbook's advice, "raise the cap
/// of the label that hit it", must point at the right cap).
#[tokio::test]
async fn a_full_family_is_counted_as_its_series_cap_not_as_a_route_fold() {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .caps(periscope_metrics::Caps::default().series(2))
        .register(&registry)
        .unwrap();
    let app = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    for path in ["/a", "/b", "/c", "/d", "/e"] {
        let request = Request::get(path).body(String::new()).unwrap();
        app.clone().oneshot(request).await.unwrap();
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let overflow = points(&exposition, "periscope_label_overflow");
    let overflow_of =
        |metric: &str, label: &str| sum_where(&overflow, &[("metric", metric), ("label", label)]);
    for metric in [
        "http_server_requests_total",
        "http_server_requests_in_flight",
    ] {
        assert_eq!(
            overflow_of(metric, "__series__"),
            3.0,
            "{metric}: {overflow:?}"
        );
        assert_eq!(overflow_of(metric, "route"), 0.0, "{metric}: {overflow:?}");
    }
    assert_eq!(total(&exposition, "http_server_requests"), 5.0);
}

/// The first fold of each label, and of the series cap, is logged once, naming the metric, the
/// label (`__series__` for the series cap) and the cap: what the runbook's query shows.
#[tokio::test(flavor = "current_thread")]
async fn the_first_fold_of_each_cap_is_logged_once_with_metric_label_and_cap() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Captured::default();
    let (log, _log_guard) = periscope_log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let _default = common::set_default(tracing_subscriber::registry().with(log));

    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .caps(
            periscope_metrics::Caps::default()
                .label("route", 2)
                .series(3),
        )
        .register(&registry)
        .unwrap();
    let app = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    // Routes past the cap of 2 fold into `__overflow__`; methods then fill the series cap.
    for (method, path) in [
        ("GET", "/a"),
        ("GET", "/b"),
        ("GET", "/c"),
        ("GET", "/d"),
        ("POST", "/a"),
        ("PUT", "/a"),
        ("DELETE", "/a"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(String::new())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();
    }

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| {
            line["level"] == "warn" && line["data"]["metric"] == "http_server_requests_total"
        })
        .collect();
    let fold = |label: &str| {
        warnings
            .iter()
            .filter(|line| line["data"]["label"] == label)
            .collect::<Vec<_>>()
    };
    let route = fold("route");
    assert_eq!(route.len(), 1, "{text}");
    assert_eq!(route[0]["data"]["cap"], 2, "{text}");
    let series = fold("__series__");
    assert_eq!(series.len(), 1, "{text}");
    assert_eq!(series[0]["data"]["cap"], 3, "{text}");
}

/// The caps bound how many values a label takes, and its values must be bounded in length too:
/// with a route function that names gRPC methods by their path (the documented recipe), a
/// client sending a few hundred requests with long random paths would otherwise make every
/// scrape write each path once per sample line (18 per histogram series), some hundreds of
/// megabytes of exposition, and keep them all in memory for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_label_values_fold_so_the_exposition_stays_small() {
    const LONG: usize = 8_000;
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_fn(|uri, _| Some(uri.path()))
        .register(&registry)
        .unwrap();
    let app = Router::new()
        .route("/pkg.Svc/Run", axum::routing::post(|| async { "ran" }))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(layer.clone());
    let addr = serve(app).await;

    let padding = "x".repeat(LONG);
    let mut sent = 0;
    for i in 0..60 {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let path = format!("/pkg.Svc/{i}{padding}");
            let response = request(addr, method, &path, &[]).await.unwrap();
            assert_eq!(response.status, 404);
            sent += 1;
        }
    }
    request(addr, "POST", "/pkg.Svc/Run", &[]).await.unwrap();
    sent += 1;

    let text = registry.encode_openmetrics().unwrap();
    let exposition = parse_openmetrics(&text);
    assert_eq!(total(&exposition, "http_server_requests"), f64::from(sent));
    let requests = points(&exposition, "http_server_requests");
    assert!(
        requests
            .iter()
            .all(|point| point.label("route").len() < LONG),
        "a {LONG}-byte path became a route label"
    );
    assert_eq!(
        sum_where(&requests, &[("route", OVERFLOW)]),
        f64::from(sent - 1),
        "{requests:?}"
    );
    assert_eq!(sum_where(&requests, &[("route", "/pkg.Svc/Run")]), 1.0);
    assert!(
        text.len() < 1024 * 1024,
        "{sent} requests made a {} MB exposition",
        text.len() / (1024 * 1024)
    );
    assert_eq!(layer.in_flight(), 0);
}

/// A cap on a label the family does not have (the label renamed, or misspelt) is refused at
/// registration, naming the labels there are: left unnoticed, the label it meant would keep
/// the default cap.
#[test]
fn a_cap_on_a_label_the_family_lacks_is_refused() {
    use periscope_metrics::{Caps, MetricsError};

    let registry = MetricsRegistry::new();
    let error = MetricsLayer::builder()
        .route_label("endpoint")
        .caps(Caps::default().label("route", 20))
        .register(&registry)
        .unwrap_err();
    assert!(
        matches!(&error, MetricsError::CapForUnknownLabel { label, .. } if label == "route"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("method, endpoint, status"),
        "{error}"
    );
    // Nothing was registered: the layer can be built again, its cap named as renamed.
    MetricsLayer::builder()
        .route_label("endpoint")
        .caps(Caps::default().label("endpoint", 20))
        .register(&registry)
        .unwrap();

    let refused = registry.guarded_family::<prometheus_client::metrics::counter::Counter, 1>(
        "predictions",
        "Predictions by model",
        ["model"],
        Caps::default().label("modle", 5),
    );
    assert!(
        matches!(&refused, Err(MetricsError::CapForUnknownLabel { label, .. }) if label == "modle"),
        "{refused:?}"
    );
}

/// The layer's own fallbacks stay apart from the overflow once the cap is full: a request no
/// route matched is `__unmatched__`, an invented method `_OTHER`, however many declared routes
/// came before, so "no such route" and "too many routes" remain distinguishable.
#[tokio::test(flavor = "current_thread")]
async fn fallback_labels_are_kept_outside_the_caps() {
    let registry = MetricsRegistry::new();
    let layer = MetricsLayer::builder()
        .route_templates(["/a", "/b", "/c"])
        .caps(
            periscope_metrics::Caps::default()
                .label("route", 2)
                .label("method", 1),
        )
        .register(&registry)
        .unwrap();
    let app = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    for (method, path) in [
        ("GET", "/a"),
        ("GET", "/b"),
        ("GET", "/c"),
        ("GET", "/nowhere"),
        ("BREW", "/a"),
    ] {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .body(String::new())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();
    }

    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    let requests = points(&exposition, "http_server_requests");
    let count =
        |method: &str, route: &str| sum_where(&requests, &[("method", method), ("route", route)]);
    assert_eq!(count("GET", "/a"), 1.0, "{requests:?}");
    assert_eq!(count("GET", "/b"), 1.0, "{requests:?}");
    assert_eq!(
        count("GET", OVERFLOW),
        1.0,
        "/c is past the route cap: {requests:?}"
    );
    assert_eq!(count("GET", UNMATCHED), 1.0, "{requests:?}");
    assert_eq!(count(OTHER_METHOD, "/a"), 1.0, "{requests:?}");
    assert_eq!(total(&exposition, "http_server_requests"), 5.0);
}

/// A guarded family without labels is one series, written as a plain sample (`name 3`) in both
/// formats, not with an empty label set (`name{} 3`) that some parsers and tools trip over.
#[test]
fn a_family_without_labels_is_written_without_braces() {
    use periscope_metrics::Caps;
    use prometheus_client::metrics::counter::Counter;

    let registry = MetricsRegistry::new();
    let jobs = registry
        .guarded_family::<Counter, 0>("jobs_done", "Jobs done", [], Caps::default())
        .unwrap();
    for _ in 0..3 {
        jobs.get_or_create([]).inc();
    }
    let prometheus = registry.encode_prometheus().unwrap();
    assert!(
        prometheus.lines().any(|l| l == "jobs_done_total 3"),
        "{prometheus}"
    );
    assert!(!prometheus.contains("{}"), "{prometheus}");
    let openmetrics = registry.encode_openmetrics().unwrap();
    assert!(
        openmetrics.lines().any(|l| l == "jobs_done_total 3"),
        "{openmetrics}"
    );
    assert_eq!(total(&parse_openmetrics(&openmetrics), "jobs_done"), 3.0);
}

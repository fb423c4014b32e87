//! Counts stay exact under concurrency over a real socket, with requests that complete, time
//! out above the layer, lose their client, or panic; the in-flight gauge returns to 0.
// Test code: helpers outside #[test] functions may unwrap too.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{parse_openmetrics, points, request, request_and_abort, serve, sum_where, total};
use periscope_metrics::{CANCELLED, MetricsLayer, MetricsRegistry};

const FAST: usize = 200;
const ITEMS: usize = 80;
const TIMED_OUT: usize = 40;
const ABORTED: usize = 40;
const PANICS: usize = 10;

/// A timeout above the metrics layer: it drops the inner future, as `tower::timeout` would.
async fn timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(Duration::from_millis(100), next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

async fn item(Path(id): Path<u32>) -> StatusCode {
    if id % 2 == 0 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_are_exact_and_in_flight_returns_to_zero() {
    let registry = MetricsRegistry::new();
    // The templates name the same routes as axum's MatchedPath (feature `axum`), so the test
    // holds with and without the feature.
    let metrics = MetricsLayer::builder()
        .route_templates(["/fast", "/items/{id}", "/slow", "/hang", "/panic"])
        .register(&registry)
        .unwrap();
    let hanging = Arc::new(AtomicUsize::new(0));
    let started = hanging.clone();
    let app = Router::new()
        .route("/fast", get(|| async { "ok" }))
        .route("/items/{id}", get(item))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "late"
            }),
        )
        .route(
            "/hang",
            get(move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                "late"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panicked on purpose");
                }
                "unreachable"
            }),
        )
        .layer(metrics.clone())
        .layer(from_fn(timeout));
    let addr = serve(app).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FAST {
        tasks.spawn(async move {
            let response = request(addr, "GET", "/fast", &[]).await.unwrap();
            assert_eq!(response.status, 200, "request {i}");
        });
    }
    for i in 0..ITEMS {
        tasks.spawn(async move {
            let response = request(addr, "GET", &format!("/items/{i}"), &[])
                .await
                .unwrap();
            assert_eq!(response.status, if i % 2 == 0 { 200 } else { 404 });
        });
    }
    for _ in 0..TIMED_OUT {
        tasks.spawn(async move {
            // The long path with a query: the timeout answers 504 after 100 ms.
            let response = request(addr, "GET", "/slow?x=1", &[]).await.unwrap();
            assert_eq!(response.status, 504);
        });
    }
    for _ in 0..ABORTED {
        let hanging = hanging.clone();
        tasks.spawn(async move {
            // Hang up only once every such request reached its handler, so each one counts.
            let all_started = async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while hanging.load(Ordering::SeqCst) < ABORTED {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "not every /hang request reached its handler within 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            request_and_abort(addr, "/hang", all_started).await
        });
    }
    for _ in 0..PANICS {
        tasks.spawn(async move {
            assert!(
                request(addr, "GET", "/panic", &[]).await.is_none(),
                "no answer to a panic"
            );
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }

    // Aborted clients leave handlers running until they finish or are dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.in_flight() != 0 {
        assert!(
            Instant::now() < deadline,
            "in-flight stuck at {}",
            metrics.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = (FAST + ITEMS + TIMED_OUT + ABORTED + PANICS) as f64;
    let exposition = parse_openmetrics(&registry.encode_openmetrics().unwrap());
    assert_eq!(total(&exposition, "http_server_requests"), sent);
    assert_eq!(
        total(&exposition, "http_server_request_duration_seconds"),
        sent,
        "histogram count equals the requests"
    );
    let in_flight = points(&exposition, "http_server_requests_in_flight");
    assert!(!in_flight.is_empty());
    assert!(
        in_flight.iter().all(|point| point.value == 0.0),
        "{in_flight:?}"
    );

    let requests = points(&exposition, "http_server_requests");
    let count =
        |route: &str, status: &str| sum_where(&requests, &[("route", route), ("status", status)]);
    assert_eq!(count("/fast", "2xx"), FAST as f64);
    assert_eq!(count("/items/{id}", "2xx"), (ITEMS / 2) as f64);
    assert_eq!(count("/items/{id}", "4xx"), (ITEMS / 2) as f64);
    assert_eq!(count("/panic", "5xx"), PANICS as f64);
    assert_eq!(count("/slow", CANCELLED), TIMED_OUT as f64);
    // A client hanging up is a cancellation if the server drops the handler, or a late
    // completion otherwise: either way each request counts once.
    assert_eq!(
        count("/hang", CANCELLED) + count("/hang", "2xx"),
        ABORTED as f64
    );
    assert!(requests.iter().all(|point| point.label("method") == "GET"));
}

/// A gauge whose encoding waits until the test releases it: a scrape caught in the middle of
/// encoding a family.
#[derive(Clone, Debug)]
struct HeldEncoding {
    entered: std::sync::mpsc::SyncSender<()>,
    release: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl prometheus_client::encoding::EncodeMetric for HeldEncoding {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let _ = self.entered.try_send(());
        let (released, wake) = &*self.release;
        // Bounded, so the test fails rather than hangs if the new series never comes.
        let _ = wake
            .wait_timeout_while(released.lock().unwrap(), Duration::from_secs(20), |r| !*r)
            .unwrap();
        prometheus_client::metrics::gauge::ConstGauge::new(1_i64).encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

impl prometheus_client::metrics::TypedMetric for HeldEncoding {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_in_progress_does_not_hold_back_new_series() {
    let registry = MetricsRegistry::new();
    let (entered, entered_rx) = std::sync::mpsc::sync_channel(8);
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let metric = HeldEncoding {
        entered,
        release: release.clone(),
    };
    let family = registry
        .guarded_family_with(
            "held",
            "A family whose encoding the test holds",
            ["key"],
            periscope_metrics::Caps::default(),
            move || metric.clone(),
        )
        .unwrap();
    family.get_or_create(["a"]);
    let app = Router::new().route_service(
        "/metrics",
        periscope_metrics::MetricsService::new(registry.clone()),
    );
    let addr = serve(app).await;
    let accept = [("accept", "application/openmetrics-text")];
    let scrape = tokio::spawn(async move { request(addr, "GET", "/metrics", &accept).await });

    // The scrape is now encoding the family; a request needing a new series of it must not
    // wait for the scrape to end (the encoder used to hold the family's lock throughout).
    let created = tokio::task::spawn_blocking(move || {
        entered_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let (done, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            family.get_or_create(["b"]);
            let _ = done.send(());
        });
        done_rx.recv_timeout(Duration::from_secs(10)).is_ok()
    })
    .await
    .unwrap();
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
    assert!(
        created,
        "creating a series waited for the scrape encoding its family"
    );

    let response = scrape.await.unwrap().unwrap();
    assert_eq!(response.status, 200);
    let exposition = parse_openmetrics(&response.text());
    assert!(!points(&exposition, "held").is_empty());
}

/// A full family folds each new combination into its overflow series without building a
/// metric to throw away (or taking its write lock) for every request that brings one: the
/// constructor runs once per series kept, as past a label's cap, and the counts stay exact.
#[test]
fn a_full_family_folds_new_combinations_without_building_their_metrics() {
    use prometheus_client::metrics::counter::Counter;

    let registry = MetricsRegistry::new();
    let built = Arc::new(AtomicUsize::new(0));
    let counted = built.clone();
    let family = registry
        .guarded_family_with(
            "jobs",
            "Jobs by kind",
            ["kind"],
            periscope_metrics::Caps::default().series(2),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Counter::<u64>::default()
            },
        )
        .unwrap();
    family.get_or_create(["a"]).inc();
    family.get_or_create(["b"]).inc();
    for i in 0..1_000 {
        family.get_or_create([["c", "d", "e"][i % 3]]).inc();
    }
    // `a`, `b` and the overflow series.
    assert_eq!(built.load(Ordering::SeqCst), 3);
    let text = registry
        .encode(periscope_metrics::Format::OpenMetrics)
        .unwrap();
    assert!(
        text.contains("jobs_total{kind=\"__overflow__\"} 1000"),
        "{text}"
    );
}

/// The label sets of the samples of `family` (its `_count` lines for a histogram).
fn label_sets(text: &str, sample: &str) -> Vec<String> {
    let mut sets: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix('{'))
        .map(|rest| rest.split('}').next().unwrap_or_default().to_owned())
        .collect();
    sets.sort();
    sets
}

/// Two calls to two hosts racing for the client families' last series: each call's count and
/// duration land in the same series (the one kept, or the overflow), never the count under
/// one host and the duration under the other.
#[test]
fn a_calls_count_and_duration_take_the_same_series_at_the_cap() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use periscope_metrics::{Caps, ClientMetricsLayer, Format};
    use tower::{Layer, Service};

    for _ in 0..300 {
        let registry = MetricsRegistry::new();
        let layer = ClientMetricsLayer::builder()
            .caps(Caps::default().series(1))
            .register(&registry)
            .unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = ["alpha.internal", "beta.internal"]
            .into_iter()
            .map(|host| {
                let (layer, start) = (layer.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    type Empty = http_body_util::Empty<bytes::Bytes>;
                    let mut client = layer.layer(tower::service_fn(|_: http::Request<Empty>| {
                        std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                            Empty::new(),
                        )))
                    }));
                    let request = http::Request::get(format!("http://{host}/jobs"))
                        .body(Empty::new())
                        .unwrap();
                    start.wait();
                    let mut cx = Context::from_waker(Waker::noop());
                    let answered = std::pin::pin!(client.call(request)).poll(&mut cx);
                    assert!(matches!(answered, Poll::Ready(Ok(_))));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = registry.encode(Format::Prometheus).unwrap();
        assert_eq!(
            label_sets(&text, "http_client_requests_total"),
            label_sets(&text, "http_client_request_duration_seconds_count"),
            "{text}"
        );
        // One fold, counted once, under the count family's name (docs/metrics.md).
        assert_eq!(
            label_sets(&text, "periscope_label_overflow_total"),
            ["metric=\"http_client_requests_total\",label=\"__series__\""],
            "{text}"
        );
    }
}

/// Registering the RED layer is all or nothing even against a registration racing it: one
/// that takes a name of the layer's first makes the layer fail with nothing of its own left
/// registered, so a retry with another name succeeds. (Checked first and claimed one by one,
/// the families registered before the clash kept their names, and every retry failed.)
#[test]
fn a_layer_racing_a_clashing_registration_leaves_nothing_behind() {
    use prometheus_client::metrics::gauge::Gauge;
    use std::sync::Barrier;

    let mut layer_lost = 0;
    for _ in 0..2000 {
        let registry = MetricsRegistry::new();
        let barrier = Arc::new(Barrier::new(2));
        let racing = {
            let (registry, barrier) = (registry.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                registry.register("x", "a gauge of the service's own", Gauge::<i64>::default())
            })
        };
        barrier.wait();
        let layer = MetricsLayer::builder()
            .in_flight_name("x")
            .register(&registry);
        let gauge = racing.join().unwrap();
        assert!(layer.is_ok() != gauge.is_ok(), "exactly one gets the name");
        if layer.is_err() {
            layer_lost += 1;
            MetricsLayer::builder()
                .in_flight_name("y")
                .register(&registry)
                .expect("nothing of the failed layer left registered");
        }
    }
    // Each side won some rounds, or the race was not run.
    assert!(layer_lost > 0, "the layer never lost the race");
}

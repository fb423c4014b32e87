//! The probes inside other stacks: an axum app, `ProbeLayer` in front of a hyper service, and the
//! Prometheus metrics.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use http::{Request, Response};
use periscope_health::{Health, ProbeLayer};
use support::{get, serve};

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_router_merges_into_an_app() {
    let gate = periscope_health::StartupGate::new("warm_cache");
    let health = Health::builder()
        .check("database", || async { Ok::<_, String>(()) })
        .startup_gate(gate.clone())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .merge(health.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(get(addr, "/hello").await.body, "hello");
    assert_eq!(get(addr, "/health").await.json()["status"], "ok");
    assert_eq!(get(addr, "/startup").await.status, 503);
    assert_eq!(get(addr, "/ready").await.json()["status"], "starting");
    gate.open();
    assert_eq!(get(addr, "/startup").await.status, 200);
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["database"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_answers_probes_and_passes_everything_else_through() {
    let health = Health::builder().build().unwrap();
    let app = tower::ServiceBuilder::new()
        .layer(ProbeLayer::new(health.clone()))
        .service(tower::service_fn(
            |request: Request<hyper::body::Incoming>| async move {
                let body = format!("app saw {} {}", request.method(), request.uri().path());
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            },
        ));
    let addr = serve(app).await;

    assert_eq!(get(addr, "/ready").await.json()["status"], "ok");
    assert_eq!(get(addr, "/health").await.json()["status"], "ok");
    assert_eq!(get(addr, "/orders").await.body, "app saw GET /orders");
    let post = support::request(addr, "POST", "/ready", &[("content-length", "0")]).await;
    assert_eq!(
        post.body, "app saw POST /ready",
        "only GET and HEAD are probes"
    );
}

/// An app at its concurrency limit: not ready until `open`.
#[derive(Clone, Default)]
struct Saturated {
    open: Arc<AtomicBool>,
    waker: Arc<AtomicWaker>,
}

impl<B> tower::Service<Request<B>> for Saturated {
    type Response = Response<http_body_util::Full<bytes::Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.waker.register(cx.waker());
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::ready(Ok(Response::new("app".into())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_answers_probes_while_the_app_is_saturated() {
    let health = Health::builder().build().unwrap();
    let saturated = Saturated::default();
    let app = tower::ServiceBuilder::new()
        .layer(ProbeLayer::new(health))
        .service(saturated.clone());
    let addr = serve(app).await;

    let waiting = tokio::spawn(async move { get(addr, "/orders").await });
    for path in ["/health", "/ready", "/startup"] {
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path} waited on the app's backpressure"));
        assert_eq!(answer.status, 200, "{path}");
    }
    assert!(!waiting.is_finished());

    // Once the app has room, the request it held is served.
    saturated.open.store(true, Ordering::SeqCst);
    saturated.waker.wake();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the app answers once ready")
        .unwrap();
    assert_eq!(answer.body, "app");
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_metrics_are_exposed_in_the_registry() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    let health = Health::builder()
        .check("database", || async { Ok::<_, String>(()) })
        .non_critical_check("s3", || async { Err::<(), _>("down") })
        .build()
        .unwrap();
    let mut registry = Registry::default();
    health.register_metrics(&mut registry);
    health.readiness().await;

    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let value = |series: &str| -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(series))
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("health_check_status{check=\"database\"}"), 1.0);
    assert_eq!(value("health_check_status{check=\"s3\"}"), 0.0);
    let duration = value("health_check_duration_seconds{check=\"database\"}");
    assert!(duration > 0.0 && duration < 5.0, "{duration}");
    assert!(text.contains("# TYPE health_check_status gauge"));
    assert!(text.contains("# TYPE health_check_duration_seconds gauge"));
    assert!(
        text.contains("# UNIT health_check_duration_seconds seconds"),
        "{text}"
    );
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_added_after_a_run_shows_that_run_at_once() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    let health = Health::builder()
        .check("database", || async { Err::<(), _>("connection refused") })
        .build()
        .unwrap();
    assert_eq!(health.readiness().await.status().as_str(), "fail");

    // Registered after the run (and within the cache interval, so no probe runs the checks
    // again): the gauges show that run at once.
    let mut registry = Registry::default();
    health.register_metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|line| line == "health_check_status{check=\"database\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_error_layer_a_failing_report_reaches_the_prober_as_it_is() {
    let health = Health::builder()
        .check("database", || async { Err::<(), _>("connection refused") })
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(periscope_error::ErrorLayer::new())
        .service(health.service());
    let addr = serve(service).await;

    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "fail");
    assert_eq!(ready.json()["checks"]["database"]["status"], "fail");
    let health_json =
        support::get_with(addr, "/ready", &[("accept", "application/health+json")]).await;
    assert_eq!(health_json.status, 503);
    assert_eq!(health_json.json()["status"], "fail");
    let verbose = get(addr, "/ready?verbose").await;
    assert_eq!(verbose.status, 503);
    assert!(verbose.body.contains("database"), "{}", verbose.body);
}

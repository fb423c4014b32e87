//! The `/metrics` endpoint over a real socket: OpenMetrics and Prometheus text parsed back by
//! a real parser, `promtool check metrics` on the Prometheus text, gzip, negotiation over
//! headers split across lines, HEAD without encoding, and 405.
// Test code: helpers outside #[test] functions may unwrap too.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use axum::routing::{get, post};
use common::{parse_openmetrics, points, promtool_check, request, request_with_body, serve, total};
use openmetrics_parser::{PrometheusType, PrometheusValue};
use periscope_context::{RequestContext, RequestId, TraceParent, TraceState};
use periscope_metrics::{Caps, MetricsLayer, MetricsRegistry, MetricsService, ServiceInfo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::Gauge;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Help text with everything that needs escaping: it must not break either format.
const QUEUE_HELP: &str = "Jobs waiting for a GPU (\"queue\" in C:\\jobs)\nsee the runbook";

/// What the trace layer does: the request's context in its extensions.
async fn with_context(mut request: Request, next: Next) -> Response {
    let parent = TraceParent::parse(&format!("00-{TRACE_ID}-00f067aa0ba902b7-01")).unwrap();
    let ctx = RequestContext::continue_from(RequestId::generate(), &parent, TraceState::new());
    request.extensions_mut().insert(ctx);
    next.run(request).await
}

/// A service with every kind of family the crate produces, and a few requests recorded.
async fn service() -> (std::net::SocketAddr, MetricsRegistry) {
    let registry = MetricsRegistry::new();
    registry
        .register_service_info(&ServiceInfo::new("inference-api", "1.4.2", "production"))
        .unwrap();
    registry.register_process_metrics().unwrap();
    let queue = Gauge::<i64>::default();
    registry
        .register("inference_queue_depth", QUEUE_HELP, queue.clone())
        .unwrap();
    queue.set(3);
    let predictions = registry
        .guarded_family::<Counter, 1>(
            "model_predictions_total",
            "Predictions served, by predicted label",
            ["label"],
            Caps::default().label("label", 2),
        )
        .unwrap();
    for label in [
        "cat",
        "dog",
        "axolotl",
        "cat",
        "quote\"back\\slash\nnewline",
    ] {
        predictions.get_or_create([label]).inc();
    }

    let layer = MetricsLayer::builder()
        .route_templates(["/v1/models/{model}/predict", "/health"])
        .request_size()
        .response_size()
        .ignore_path("/metrics")
        .register(&registry)
        .unwrap();
    let app = Router::new()
        .route(
            "/v1/models/{model}/predict",
            post(|body: String| async move { body }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(layer)
        .layer(from_fn(with_context))
        .route_service("/metrics", MetricsService::new(registry.clone()));
    let addr = serve(app).await;

    for path in ["/v1/models/resnet/predict", "/v1/models/bert/predict"] {
        let response = request_with_body(addr, "POST", path, &[], "hello")
            .await
            .unwrap();
        assert_eq!(response.text(), "hello");
    }
    let response = request(addr, "GET", "/health", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    (addr, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_scrape_parses_back_with_exemplars() {
    let (addr, _registry) = service().await;
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let response = request(addr, "GET", "/metrics", &[("accept", prometheus_accept)])
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(OPENMETRICS));
    let text = response.text();
    assert!(text.ends_with("# EOF\n"));
    let exposition = parse_openmetrics(&text);

    assert_eq!(total(&exposition, "http_server_requests"), 1.0 + 2.0 * 1.0);
    let durations = points(&exposition, "http_server_request_duration_seconds");
    assert!(
        durations
            .iter()
            .flat_map(|point| &point.exemplars)
            .any(|trace| trace == TRACE_ID),
        "a trace_id exemplar links the histogram to the trace: {durations:?}"
    );
    let health: Vec<_> = points(&exposition, "http_server_requests")
        .into_iter()
        .filter(|point| point.label("route") == "/health")
        .collect();
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].label("method"), "GET");
    assert_eq!(health[0].label("status"), "2xx");
    assert_eq!(
        total(&exposition, "http_server_response_body_size_bytes"),
        3.0,
        "every response had a known length"
    );
    assert_eq!(
        total(&exposition, "http_server_request_body_size_bytes"),
        3.0,
        "every request had a known length, 0 included"
    );

    let info = points(&exposition, "service_info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].value, 1.0);
    assert_eq!(info[0].label("service"), "inference-api");
    assert_eq!(info[0].label("version"), "1.4.2");
    assert_eq!(info[0].label("environment"), "production");

    assert_eq!(total(&exposition, "inference_queue_depth"), 3.0);
    assert!(
        text.contains(
            "# HELP inference_queue_depth Jobs waiting for a GPU (\\\"queue\\\" in C:\\\\jobs)\\nsee the runbook.\n"
        ),
        "help escaped as OpenMetrics says: {text}"
    );
    assert!(total(&exposition, "process_resident_memory_bytes") > 0.0);
    assert!(exposition.families.contains_key("process_cpu_seconds"));
    assert!(
        exposition
            .families
            .contains_key("process_start_time_seconds")
    );

    // Past the cap of 2 labels, the rest folded; the odd label value was escaped correctly.
    let predictions = points(&exposition, "model_predictions");
    assert_eq!(total(&exposition, "model_predictions"), 5.0);
    assert_eq!(predictions.len(), 3);
    let overflow = points(&exposition, "periscope_label_overflow");
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].label("metric"), "model_predictions_total");
    assert_eq!(overflow[0].label("label"), "label");
    assert_eq!(overflow[0].value, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_passes_promtool_and_parses_back() {
    let (addr, _registry) = service().await;
    let response = request(addr, "GET", "/metrics", &[("accept", "*/*")])
        .await
        .unwrap();
    assert_eq!(response.header("content-type"), Some(PROMETHEUS));
    let text = response.text();
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    assert!(!text.contains(TRACE_ID), "no exemplars in 0.0.4");

    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|err| panic!("invalid Prometheus text: {err:?}\n{text}"));
    let requests = &exposition.families["http_server_requests_total"];
    assert_eq!(requests.family_type, PrometheusType::Counter);
    let counted: f64 = requests
        .iter_samples()
        .map(|sample| match &sample.value {
            PrometheusValue::Counter(counter) => counter.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(counted, 3.0);
    assert_eq!(
        exposition.families["http_server_request_duration_seconds"].family_type,
        PrometheusType::Histogram
    );
    assert_eq!(
        exposition.families["process_cpu_seconds_total"].family_type,
        PrometheusType::Counter
    );
    assert_eq!(
        exposition.families["service_info"].family_type,
        PrometheusType::Gauge
    );
    assert!(
        text.contains(
            "# HELP inference_queue_depth Jobs waiting for a GPU (\"queue\" in C:\\\\jobs)\\nsee the runbook.\n"
        ),
        "help escaped as 0.0.4 says, the quote bare: {text}"
    );

    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_head_and_other_methods() {
    let (addr, _registry) = service().await;
    let response = request(addr, "GET", "/metrics", &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(response.header("content-type"), Some(PROMETHEUS));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&response.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("# TYPE http_server_requests_total counter\n"),
        "{text}"
    );
    assert!(response.body.len() * 3 < text.len(), "compressed");

    let plain = request(addr, "GET", "/metrics", &[]).await.unwrap();
    assert_eq!(plain.header("content-encoding"), None);
    assert!(
        plain
            .text()
            .contains("# TYPE http_server_requests_total counter\n")
    );

    let head = request(addr, "HEAD", "/metrics", &[]).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(PROMETHEUS));
    assert!(head.body.is_empty());

    let post = request(addr, "POST", "/metrics", &[]).await.unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

fn gunzip(body: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// `Accept` and `Accept-Encoding` split over several lines, as a proxy may send them: the
/// lines form one list (RFC 9110 §5.3), negotiated exactly as the same values on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_and_accept_encoding_over_several_lines_are_one_list() {
    let (addr, _registry) = service().await;

    let split = [
        ("accept", "text/plain;q=0.5"),
        ("accept", "application/openmetrics-text;version=1.0.0"),
    ];
    let response = request(addr, "GET", "/metrics", &split).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(OPENMETRICS));
    let exposition = parse_openmetrics(&response.text());
    assert_eq!(total(&exposition, "http_server_requests"), 3.0);

    // A later line may also rank OpenMetrics lower than the first did.
    let split = [
        ("accept", "application/openmetrics-text;q=0.3"),
        ("accept", "text/plain;version=0.0.4"),
    ];
    let response = request(addr, "GET", "/metrics", &split).await.unwrap();
    assert_eq!(response.header("content-type"), Some(PROMETHEUS));
    promtool_check(&response.text());

    let split = [("accept-encoding", "identity"), ("accept-encoding", "gzip")];
    let response = request(addr, "GET", "/metrics", &split).await.unwrap();
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(response.header("content-type"), Some(PROMETHEUS));
    promtool_check(&gunzip(&response.body));

    // Both split at once, with the values on one line as the reference.
    let split = [
        ("accept", "text/plain;version=0.0.4;q=0.5"),
        ("accept-encoding", "br"),
        (
            "accept",
            "*/*;q=0.1, application/openmetrics-text;version=1.0.0",
        ),
        ("accept-encoding", "gzip;q=0.8"),
    ];
    let joined = [
        (
            "accept",
            "text/plain;version=0.0.4;q=0.5, */*;q=0.1, application/openmetrics-text;version=1.0.0",
        ),
        ("accept-encoding", "br, gzip;q=0.8"),
    ];
    for headers in [&split[..], &joined[..]] {
        let response = request(addr, "GET", "/metrics", headers).await.unwrap();
        assert_eq!(
            response.header("content-type"),
            Some(OPENMETRICS),
            "{headers:?}"
        );
        assert_eq!(
            response.header("content-encoding"),
            Some("gzip"),
            "{headers:?}"
        );
        let exposition = parse_openmetrics(&gunzip(&response.body));
        assert!(exposition.families.contains_key("http_server_requests"));
    }
}

/// A collector that counts the scrapes that encode the registry, writing one counter.
#[derive(Debug)]
struct CountEncodes(Arc<AtomicUsize>);

impl Collector for CountEncodes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let calls = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let metric = ConstCounter::new(calls as u64);
        let family = encoder.encode_descriptor(
            "test_encodes",
            "Times the registry was encoded",
            None,
            metric.metric_type(),
        )?;
        metric.encode(family)
    }
}

/// `HEAD /metrics` (a monitoring check) gets the status and headers a `GET` gets, negotiated
/// the same way, and no body, without encoding the registry: it costs no scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_negotiated_headers_without_encoding() {
    let (addr, registry) = service().await;
    registry
        .reserve(
            "test_encodes_total",
            prometheus_client::metrics::MetricType::Counter,
        )
        .unwrap();
    let encodes = Arc::new(AtomicUsize::new(0));
    registry.register_collector(Box::new(CountEncodes(encodes.clone())));

    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("accept-encoding", "gzip")],
        &[("accept", "application/openmetrics-text;version=1.0.0")],
        &[
            ("accept", "text/plain;q=0.5"),
            ("accept", "application/openmetrics-text;version=1.0.0"),
            ("accept-encoding", "identity"),
            ("accept-encoding", "gzip"),
        ],
    ];
    for (scrapes, headers) in cases.into_iter().enumerate() {
        let get = request(addr, "GET", "/metrics", headers).await.unwrap();
        assert_eq!(get.status, 200);
        assert_eq!(
            encodes.load(Ordering::SeqCst),
            scrapes + 1,
            "a GET encodes once"
        );
        let text = match get.header("content-encoding") {
            Some(_) => gunzip(&get.body),
            None => get.text(),
        };
        assert!(text.contains("test_encodes_total"), "{text}");

        let head = request(addr, "HEAD", "/metrics", headers).await.unwrap();
        assert_eq!(
            encodes.load(Ordering::SeqCst),
            scrapes + 1,
            "{headers:?}: HEAD encoded the registry"
        );
        assert_eq!(head.status, get.status, "{headers:?}");
        for name in ["content-type", "vary", "content-encoding"] {
            assert_eq!(head.header(name), get.header(name), "{headers:?}: {name}");
        }
        assert!(head.body.is_empty(), "{headers:?}");
        // Left out (RFC 9110 §9.3.2), never a `0` that would claim an empty exposition.
        assert_eq!(head.header("content-length"), None, "{headers:?}");
    }
}

/// A metric prometheus-client cannot write in the text formats (a native-only histogram, which
/// has no classic buckets) leaves out its own samples, not every other series of the scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_the_text_formats_cannot_hold_leaves_the_rest_of_the_scrape() {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{Histogram, NativeHistogramConfig};

    let registry = MetricsRegistry::new();
    let jobs = Counter::<u64>::default();
    registry
        .register("jobs_total", "Jobs done", jobs.clone())
        .unwrap();
    let native = Histogram::new_native(NativeHistogramConfig::new(1.1));
    registry
        .register("latency_seconds", "Native only", native.clone())
        .unwrap();
    let by_model: Family<[(&str, &str); 1], Histogram> =
        Family::new_with_constructor(|| Histogram::new_native(NativeHistogramConfig::new(1.1)));
    registry
        .register("queue_wait_seconds", "Native only", by_model.clone())
        .unwrap();
    jobs.inc();
    native.observe(0.2);
    by_model.get_or_create(&[("model", "m")]).observe(0.3);

    let addr =
        serve(Router::new().route_service("/metrics", MetricsService::new(registry.clone()))).await;
    for accept in [OPENMETRICS, PROMETHEUS] {
        let response = request(addr, "GET", "/metrics", &[("accept", accept)])
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{accept}: {}", response.text());
        let text = response.text();
        assert!(text.contains("jobs_total 1"), "{text}");
        assert!(!text.contains("latency_seconds_count"), "{text}");
        // The families left without samples keep their `# HELP` and `# TYPE`, as any family
        // without series does (valid in both formats; the OpenMetrics parser the other tests
        // use refuses two such families in a row, promtool reads the Prometheus text).
        if accept == OPENMETRICS {
            assert!(text.ends_with("# EOF\n"), "{text}");
        } else {
            promtool_check(&text);
        }
    }
}

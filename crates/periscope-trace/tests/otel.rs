//! OpenTelemetry on: real OTLP export to a collector on 127.0.0.1, and the ids in the logs,
//! the exported spans and the `traceparent` sent downstream compared one by one.
// The span names and `http.route` asserted come from axum's `MatchedPath` (feature `axum`).
#![cfg(all(feature = "otel", feature = "axum"))]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use http::StatusCode;
use periscope_context::{Carrier, RequestContext, TraceParent};
use periscope_trace::job::JobSpan;
use periscope_trace::otel::{OtelConfig, OtelGuard, Sampler};
use periscope_trace::{CorrelationLayer, Trust};
use support::services::{app, by_hop, chain, get, hop_state};
use support::{Capture, attr, serve};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn config(pairs: &[(&str, &str)]) -> OtelConfig {
    OtelConfig::from_lookup(|name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    })
    .unwrap()
}

/// Flushes the exporter (a blocking call, so off the async workers) and collects what the
/// collector received.
async fn exported(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
    at_least: usize,
) -> Vec<ExportedSpan> {
    let guard = guard.clone();
    tokio::task::spawn_blocking(move || guard.flush().unwrap())
        .await
        .unwrap();
    collector
        .exported_spans(at_least, Duration::from_secs(5))
        .await
}

/// One runtime, one collector and one global subscriber for every export scenario: the gRPC
/// exporter lives on the runtime it was built in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_logs_and_downstream_traceparents_agree() {
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let guard = config(&[
        ("OTEL_SERVICE_NAME", "periscope-test"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .install()
    .unwrap();
    assert!(guard.is_exporting());
    let capture = Capture::default();
    // No level filter at all: the transport crates' own spans must not feed the export.
    let subscriber = tracing_subscriber::registry()
        .with(guard.layer())
        .with(capture.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let guard = Arc::new(guard);

    chain_ids_are_the_exported_ids(&guard, &mut collector, &capture).await;
    root_trace_ids_come_from_the_exported_span(&guard, &mut collector, &capture).await;
    server_errors_are_exported_as_errors(&guard, &mut collector).await;
    sampled_out_requests_are_not_exported_but_propagate(&guard, &mut collector, &capture).await;
    trust_boundary_exports_a_link(&guard, &mut collector).await;
    jobs_export_a_consumer_span_under_the_request(&guard, &mut collector, &capture).await;
    debug_spans_and_events_stay_out_of_the_export(&guard, &mut collector).await;
}

/// The export takes spans and events from `info` up: a library's (or the service's) debug
/// spans and lines are not exported, nor turned on everywhere by the export, whatever the log
/// level.
async fn debug_spans_and_events_stay_out_of_the_export(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
) {
    let root = tracing::info_span!("level_root");
    root.in_scope(|| {
        tracing::debug_span!("debug_child").in_scope(|| tracing::info!("inside debug child"));
        tracing::info_span!("info_child").in_scope(|| {});
        tracing::debug!("a detail");
        tracing::info!("a step");
    });
    drop(root);
    let spans = exported(guard, collector, 2).await;
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert!(names.contains(&"level_root"), "{names:?}");
    assert!(names.contains(&"info_child"), "{names:?}");
    assert!(!names.contains(&"debug_child"), "{names:?}");
    let root = spans.iter().find(|span| span.name == "level_root").unwrap();
    let events: Vec<&str> = root
        .events
        .iter()
        .map(|event| event.name.as_str())
        .collect();
    assert_eq!(events, ["inside debug child", "a step"], "{root:#?}");
}

async fn chain_ids_are_the_exported_ids(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
    capture: &Capture,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = chain(&seen).await;
    let response = get(
        a,
        "/hop",
        &[
            ("x-request-id", "otel-chain"),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=opaque"),
            ("x-org-id", "org_7"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let spans = exported(guard, collector, 5).await;
    let spans: Vec<_> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    assert_eq!(spans.len(), 5, "{spans:#?}");

    let hops = by_hop(&seen);
    let mut expected_parent = PARENT.to_owned();
    for (index, seen) in hops.iter().enumerate() {
        let ctx = &seen.ctx;
        let span_id = ctx.span_id.to_string();
        // The exported server span is the handler's context, by id and by parent.
        let server = spans
            .iter()
            .find(|s| s.span_id == span_id)
            .unwrap_or_else(|| {
                panic!(
                    "hop {} span {span_id} was not exported: {spans:#?}",
                    seen.hop
                )
            });
        assert_eq!(server.kind, "SPAN_KIND_SERVER");
        // The route template comes from axum's matched path (feature `axum`).
        let name = if cfg!(feature = "axum") {
            "GET /hop"
        } else {
            "GET"
        };
        assert_eq!(server.name, name);
        assert_eq!(server.parent_span_id, expected_parent, "hop {}", seen.hop);
        assert_eq!(ctx.parent_span_id.unwrap().to_string(), expected_parent);
        assert_eq!(server.trace_state, "vendor=opaque");
        assert!(attr(server, "http.request.method").contains("\"GET\""));
        assert!(attr(server, "url.path").contains("\"/hop\""));
        assert!(attr(server, "http.route").contains("\"/hop\""));
        assert!(attr(server, "http.response.status_code").contains("200"));
        assert!(attr(server, "request_id").contains("\"otel-chain\""));
        assert!(attr(server, "org_id").contains("\"org_7\""));
        assert!(
            server
                .status
                .as_ref()
                .is_none_or(|s| s.code != "STATUS_CODE_ERROR"),
            "{server:?}"
        );
        // The log line of the handler carries the same ids.
        let line = capture.line("otel-chain", "handling the hop", Some(seen.hop));
        assert_eq!(line.ctx("trace_id"), Some(TRACE));
        assert_eq!(line.ctx("span_id"), Some(span_id.as_str()));

        if let Some(next) = hops.get(index + 1) {
            // The next hop's parent is an exported client span under this hop's span, and is
            // what the traceparent it received names.
            let sent = TraceParent::parse(next.headers["traceparent"].to_str().unwrap()).unwrap();
            let client = spans
                .iter()
                .find(|s| s.span_id == sent.parent_id.to_string())
                .unwrap();
            assert_eq!(client.kind, "SPAN_KIND_CLIENT");
            assert_eq!(client.name, "GET");
            assert_eq!(client.parent_span_id, span_id);
            assert!(attr(client, "http.response.status_code").contains("200"));
            expected_parent = client.span_id.clone();
        }
    }
}

async fn root_trace_ids_come_from_the_exported_span(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
    capture: &Capture,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("root", None, &seen), CorrelationLayer::new())).await;
    get(addr, "/hop", &[("x-request-id", "otel-root")]).await;
    let ctx = seen.lock().unwrap()[0].ctx.clone();
    let spans = exported(guard, collector, 1).await;
    let server = spans
        .iter()
        .find(|s| s.span_id == ctx.span_id.to_string())
        .unwrap();
    assert_eq!(server.trace_id, ctx.trace_id.to_string());
    assert_eq!(server.parent_span_id, "");
    // A sampled request's lines are its span's events: the export filter, which keeps those of
    // requests not sampled from the layer, keeps these.
    let events: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"handling the hop"), "{server:#?}");
    let line = capture.line("otel-root", "handling the hop", None);
    assert_eq!(line.ctx("trace_id"), Some(server.trace_id.as_str()));
    assert_eq!(line.ctx("span_id"), Some(server.span_id.as_str()));
}

async fn server_errors_are_exported_as_errors(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("err", None, &seen), CorrelationLayer::new())).await;
    let trace = "11111111111111111111111111111111";
    let response = get(
        addr,
        "/fail",
        &[
            ("x-request-id", "otel-500"),
            ("traceparent", &format!("00-{trace}-{PARENT}-01")),
        ],
    )
    .await;
    assert_eq!(response.headers()["x-request-id"], "otel-500");
    let spans = exported(guard, collector, 1).await;
    let server = spans.iter().find(|s| s.trace_id == trace).unwrap();
    assert_eq!(server.name, "GET /fail");
    assert_eq!(server.status.as_ref().unwrap().code, "STATUS_CODE_ERROR");
    assert!(attr(server, "http.response.status_code").contains("500"));
}

async fn sampled_out_requests_are_not_exported_but_propagate(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
    capture: &Capture,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = chain(&seen).await;
    let trace = "22222222222222222222222222222222";
    get(
        a,
        "/hop",
        &[
            ("x-request-id", "otel-unsampled"),
            ("traceparent", &format!("00-{trace}-{PARENT}-00")),
        ],
    )
    .await;
    // The server spans end with their bodies, maybe after the answer was read: waited for, so
    // the flush below comes after every span of the request ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while capture.spans_for("http_request", "otel-unsampled").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 3 server spans did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hops = by_hop(&seen);
    // A sampled request after it: once its spans are exported, the unsampled ones would be too.
    let sentinel = "33333333333333333333333333333333";
    get(
        a,
        "/hop",
        &[
            ("x-request-id", "otel-sentinel"),
            ("traceparent", &format!("00-{sentinel}-{PARENT}-01")),
        ],
    )
    .await;
    while capture.spans_for("http_request", "otel-sentinel").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sentinel's spans did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut spans = Vec::new();
    while !spans.iter().any(|s: &ExportedSpan| s.trace_id == sentinel) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sentinel was not exported"
        );
        spans.extend(exported(guard, collector, 1).await);
    }
    assert!(spans.iter().all(|s| s.trace_id != trace), "{spans:#?}");
    assert_eq!(hops.len(), 3);
    for seen in &hops {
        assert_eq!(seen.ctx.trace_id.to_string(), trace);
        assert!(!seen.ctx.is_sampled());
        let line = capture.line("otel-unsampled", "handling the hop", Some(seen.hop));
        assert_eq!(line.ctx("trace_id"), Some(trace));
        assert_eq!(
            line.ctx("span_id"),
            Some(seen.ctx.span_id.to_string().as_str())
        );
    }
    for pair in hops.windows(2) {
        let sent = TraceParent::parse(pair[1].headers["traceparent"].to_str().unwrap()).unwrap();
        assert!(!sent.flags.is_sampled());
        assert_ne!(sent.parent_id, pair[0].ctx.span_id);
        assert_eq!(Some(sent.parent_id), pair[1].ctx.parent_span_id);
    }
}

async fn trust_boundary_exports_a_link(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(
        hop_state("public", None, &seen),
        CorrelationLayer::new().trust(Trust::Boundary),
    ))
    .await;
    let trace = "33333333333333333333333333333333";
    get(
        addr,
        "/hop",
        &[
            ("x-request-id", "otel-public"),
            ("traceparent", &format!("00-{trace}-{PARENT}-01")),
        ],
    )
    .await;
    let ctx = seen.lock().unwrap()[0].ctx.clone();
    assert_ne!(ctx.trace_id.to_string(), trace);
    let spans = exported(guard, collector, 1).await;
    let server = spans
        .iter()
        .find(|s| s.span_id == ctx.span_id.to_string())
        .unwrap();
    assert_eq!(server.trace_id, ctx.trace_id.to_string());
    assert_eq!(server.parent_span_id, "");
    assert_eq!(server.links.len(), 1);
    assert_eq!(server.links[0].trace_id, trace);
    assert_eq!(server.links[0].span_id, PARENT);
}

async fn jobs_export_a_consumer_span_under_the_request(
    guard: &Arc<OtelGuard>,
    collector: &mut FakeCollectorServer,
    capture: &Capture,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut state = hop_state("api", None, &seen);
    state.jobs = Some(jobs_tx);
    let addr = serve(app(state, CorrelationLayer::new())).await;
    let worker = tokio::spawn(async move {
        let payload = jobs_rx.recv().await.unwrap();
        let carrier: Carrier = serde_json::from_str(&payload).unwrap();
        let job = JobSpan::from_carrier("send_receipt", &carrier);
        let ctx: RequestContext = job.context().clone();
        job.run(async { tracing::info!("job ran") }).await;
        ctx
    });
    let trace = "44444444444444444444444444444444";
    get(
        addr,
        "/hop",
        &[
            ("x-request-id", "otel-job"),
            ("traceparent", &format!("00-{trace}-{PARENT}-01")),
        ],
    )
    .await;
    let job_ctx = worker.await.unwrap();
    let request_ctx = seen.lock().unwrap()[0].ctx.clone();
    let spans = exported(guard, collector, 2).await;
    let job = spans
        .iter()
        .find(|s| s.span_id == job_ctx.span_id.to_string())
        .unwrap();
    assert_eq!(job.kind, "SPAN_KIND_CONSUMER");
    assert_eq!(job.name, "send_receipt");
    assert_eq!(job.trace_id, trace);
    assert_eq!(job.parent_span_id, request_ctx.span_id.to_string());
    let line = capture.line("otel-job", "job ran", None);
    assert_eq!(line.ctx("span_id"), Some(job.span_id.as_str()));
    assert_eq!(line.ctx("trace_id"), Some(trace));
}

/// A client through the client layer whose transport answers with the traceparent it was sent.
fn echoing_client() -> impl tower::Service<
    http::Request<String>,
    Response = http::Response<periscope_trace::ClientBody<String>>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    use tower::{Layer, service_fn};
    let transport = service_fn(|request: http::Request<String>| async move {
        let sent = request.headers()["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        Ok::<_, std::convert::Infallible>(http::Response::new(sent))
    });
    periscope_trace::ClientTraceLayer::new().layer(transport)
}

/// Runs one request through the server layer and a client call, with `sampler` deciding, and
/// returns the traceparent sent downstream.
async fn downstream_traceparent(sampler: Sampler, incoming: Option<&str>) -> TraceParent {
    use http::Request;
    use tower::{Layer, ServiceExt, service_fn};

    let mut config = config(&[]);
    config.sampler = sampler;
    let guard = config.install().unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(guard.tracer().clone()));
    let _default = support::set_default(subscriber);

    let client = echoing_client();
    let server = CorrelationLayer::new().layer(service_fn(move |_request: Request<String>| {
        let client = client.clone();
        async move {
            let call = Request::get("http://next.internal/")
                .body(String::new())
                .unwrap();
            client.oneshot(call).await
        }
    }));
    let mut request = Request::get("/").body(String::new()).unwrap();
    if let Some(incoming) = incoming {
        request
            .headers_mut()
            .insert("traceparent", incoming.parse().unwrap());
    }
    let response = server.oneshot(request).await.unwrap();
    // The server's body holds the client's answer, whose body holds the text.
    let sent = response.body().get_ref().unwrap().get_ref();
    TraceParent::parse(sent).unwrap()
}

#[tokio::test]
async fn the_sampler_decision_is_what_goes_downstream() {
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let ratio_zero = Sampler::ParentBasedTraceIdRatio(0.0);
    // parentbased_traceidratio: new traces by ratio, continued traces as the caller decided.
    assert!(
        !downstream_traceparent(ratio_zero, None)
            .await
            .flags
            .is_sampled()
    );
    assert!(
        downstream_traceparent(ratio_zero, Some(&sampled))
            .await
            .flags
            .is_sampled()
    );
    let ratio_one = Sampler::ParentBasedTraceIdRatio(1.0);
    assert!(
        downstream_traceparent(ratio_one, None)
            .await
            .flags
            .is_sampled()
    );
    assert!(
        !downstream_traceparent(ratio_one, Some(&unsampled))
            .await
            .flags
            .is_sampled()
    );
    // traceidratio alone ignores the caller.
    let plain_zero = Sampler::TraceIdRatio(0.0);
    assert!(
        !downstream_traceparent(plain_zero, Some(&sampled))
            .await
            .flags
            .is_sampled()
    );
    assert!(
        !downstream_traceparent(Sampler::AlwaysOff, None)
            .await
            .flags
            .is_sampled()
    );
    // Whatever the decision, the trace continues.
    let continued = downstream_traceparent(Sampler::AlwaysOff, Some(&sampled)).await;
    assert_eq!(continued.trace_id.to_string(), TRACE);
    assert_ne!(continued.parent_id.to_string(), PARENT);
}

/// Export over gRPC runs on the exporter's own thread: built outside any runtime, or on a
/// current-thread runtime and dropped inside its async code (where the runtime cannot run
/// anything while the guard's flush blocks it), the last span still reaches the collector.
#[test]
fn grpc_export_needs_no_runtime_of_the_application() {
    use opentelemetry::trace::{Span as _, Tracer as _};

    let collector_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = collector_runtime
        .block_on(FakeCollectorServer::start())
        .unwrap();
    let endpoint = collector.endpoint();
    let build = || {
        config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .build()
        .unwrap()
    };
    let mut exported = |name: &str| {
        collector_runtime
            .block_on(collector.exported_spans(1, Duration::from_secs(10)))
            .into_iter()
            .map(|span| span.name)
            .find(|exported| exported == name)
    };

    let guard = build();
    guard.tracer().start("outside-any-runtime").end();
    drop(guard);
    assert_eq!(
        exported("outside-any-runtime").as_deref(),
        Some("outside-any-runtime")
    );

    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current_thread.block_on(async {
        let guard = build();
        guard.tracer().start("on-a-current-thread-runtime").end();
        drop(guard);
    });
    assert_eq!(
        exported("on-a-current-thread-runtime").as_deref(),
        Some("on-a-current-thread-runtime")
    );
}

#[test]
fn without_an_endpoint_nothing_is_exported() {
    let guard = config(&[]).install().unwrap();
    assert!(!guard.is_exporting());
    assert!(guard.layer::<tracing_subscriber::Registry>().is_none());
    let disabled = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .install()
    .unwrap();
    assert!(!disabled.is_exporting());
}

/// Keeps finished spans in memory, exported as they end.
#[derive(Clone, Debug, Default)]
struct Kept(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for Kept {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

/// Runs `service` once for a request to `path` under an OpenTelemetry layer whose sampler is
/// `sampler`; the service makes one call through the client layer. Returns the traceparent
/// that call sent and the spans exported.
async fn one_call(
    sampler: opentelemetry_sdk::trace::Sampler,
    path: &str,
    through_server: bool,
) -> (TraceParent, Vec<opentelemetry_sdk::trace::SpanData>) {
    one_call_in(sampler, path, through_server, None).await
}

/// [`one_call`], the call made inside a span of the service's own named `user_span`.
async fn one_call_in(
    sampler: opentelemetry_sdk::trace::Sampler,
    path: &str,
    through_server: bool,
    user_span: Option<&'static str>,
) -> (TraceParent, Vec<opentelemetry_sdk::trace::SpanData>) {
    use http::Request;
    use tower::{Layer, ServiceExt, service_fn};
    use tracing::Instrument;

    let within = move || match user_span {
        Some(name) => tracing::info_span!("user", otel.name = name),
        None => tracing::Span::none(),
    };

    let (kept, provider, _default) = export_in_process(sampler);

    let client = echoing_client();
    let call = || {
        Request::get("http://dependency.internal/")
            .body(String::new())
            .unwrap()
    };
    let response = if through_server {
        let server = CorrelationLayer::new().layer(service_fn(move |_: Request<String>| {
            let span = within();
            let call = span.in_scope(|| client.clone().oneshot(call()));
            call.instrument(span)
        }));
        let request = Request::get(path).body(String::new()).unwrap();
        server
            .oneshot(request)
            .await
            // The body's text; the wrappers, and the request's and the call's spans with
            // them, end here.
            .map(|response| response.map(|body| body.get_ref().unwrap().get_ref().clone()))
    } else {
        let span = within();
        let call = span.in_scope(|| client.oneshot(call()));
        // The text; the call's span ends with its body, here.
        let response = call.instrument(span).await;
        response.map(|response| response.map(|body| body.get_ref().clone()))
    };
    let sent = TraceParent::parse(response.unwrap().body()).unwrap();
    provider.force_flush().unwrap();
    let spans = kept.0.lock().unwrap().clone();
    (sent, spans)
}

/// A call from a background task (no request or job around it) starts a trace of its own: its
/// client span is the root, so no span names a parent that was never exported, and the
/// sampler decides for it as for any new trace.
#[tokio::test]
async fn a_call_outside_any_request_is_the_root_of_a_new_trace() {
    use opentelemetry_sdk::trace::Sampler as Sdk;

    let (sent, spans) = one_call(Sdk::ParentBased(Box::new(Sdk::AlwaysOn)), "", false).await;
    assert_eq!(spans.len(), 1);
    let client = &spans[0];
    assert_eq!(client.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(client.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert_eq!(
        client.span_context.span_id().to_string(),
        sent.parent_id.to_string()
    );
    assert_eq!(
        client.span_context.trace_id().to_string(),
        sent.trace_id.to_string()
    );
    assert!(sent.flags.is_sampled());

    let (sent, spans) = one_call(Sdk::ParentBased(Box::new(Sdk::AlwaysOff)), "", false).await;
    assert!(spans.is_empty(), "{spans:#?}");
    assert!(!sent.flags.is_sampled(), "{sent}");
}

/// A call made inside a span of the service's own nests under that span in the export, as
/// tracing nests it; outside any request, it joins the trace of the span it is made in.
#[tokio::test]
async fn a_call_nests_under_the_services_own_span() {
    use opentelemetry_sdk::trace::Sampler as Sdk;

    use opentelemetry::trace::SpanKind;

    let find = |spans: &[opentelemetry_sdk::trace::SpanData], name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|span| span.name == name && span.span_kind == kind)
            .unwrap_or_else(|| panic!("no {name} span: {spans:#?}"))
            .clone()
    };
    let always = || Sdk::ParentBased(Box::new(Sdk::AlwaysOn));
    let (sent, spans) = one_call_in(always(), "/v1/jobs", true, Some("db_lookup")).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = find(&spans, "GET", SpanKind::Server);
    let lookup = find(&spans, "db_lookup", SpanKind::Internal);
    let client = &find(&spans, "GET", SpanKind::Client);
    assert_eq!(lookup.parent_span_id, server.span_context.span_id());
    assert_eq!(client.parent_span_id, lookup.span_context.span_id());
    assert_eq!(
        sent.parent_id.to_string(),
        client.span_context.span_id().to_string()
    );
    for span in [&lookup, client] {
        assert_eq!(span.span_context.trace_id(), server.span_context.trace_id());
    }

    let (sent, spans) = one_call_in(always(), "", false, Some("background_poll")).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let poll = find(&spans, "background_poll", SpanKind::Internal);
    let client = find(&spans, "GET", SpanKind::Client);
    assert_eq!(client.parent_span_id, poll.span_context.span_id());
    assert_eq!(client.span_context.trace_id(), poll.span_context.trace_id());
    assert_eq!(
        sent.trace_id.to_string(),
        poll.span_context.trace_id().to_string()
    );
}

/// A call that joins the trace of the span it is made in, without the request's context (a
/// task spawned with `.in_current_span()` alone), keeps the caller's trace id: it must not
/// claim the W3C `random` flag for an id the caller chose, which did not claim it.
#[tokio::test]
async fn a_call_joining_a_continued_trace_does_not_claim_its_id_is_random() {
    use http::Request;
    use tower::{Layer, ServiceExt, service_fn};
    use tracing::Instrument;

    let (_kept, _provider, _default) = export_in_process(parent_based_always_on());

    let client = echoing_client();
    let server = CorrelationLayer::new().layer(service_fn(move |_: Request<String>| {
        let client = client.clone();
        async move {
            let call = Request::get("http://dependency.internal/")
                .body(String::new())
                .unwrap();
            let task = async move { client.oneshot(call).await.unwrap() }.in_current_span();
            let response = tokio::spawn(task).await.unwrap();
            Ok::<_, std::convert::Infallible>(response.map(|body| body.get_ref().clone()))
        }
    }));
    let request = Request::get("/v1/orders")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(String::new())
        .unwrap();
    let response = server.oneshot(request).await.unwrap();
    let sent = TraceParent::parse(response.into_body().get_ref().unwrap()).unwrap();
    assert_eq!(sent.trace_id.to_string(), TRACE, "{sent}");
    assert!(sent.flags.is_sampled(), "{sent}");
    assert!(!sent.flags.is_random(), "{sent}");
}

/// Probe paths export nothing, and neither do the calls they make.
#[tokio::test]
async fn calls_from_probe_paths_are_not_exported() {
    use opentelemetry_sdk::trace::Sampler as Sdk;

    let parent_based = || Sdk::ParentBased(Box::new(Sdk::AlwaysOn));
    let (sent, spans) = one_call(parent_based(), "/ready", true).await;
    assert!(spans.is_empty(), "{spans:#?}");
    assert!(!sent.flags.is_sampled(), "{sent}");
    // A span of the service's own there (a check's `#[instrument]`) is no root of a trace of
    // its own, exported on every probe, and the call made in it is not exported either.
    let (sent, spans) = one_call_in(parent_based(), "/ready", true, Some("check_db")).await;
    assert!(spans.is_empty(), "{spans:#?}");
    assert!(!sent.flags.is_sampled(), "{sent}");

    let (sent, spans) = one_call(parent_based(), "/v1/jobs", true).await;
    assert_eq!(
        spans.len(),
        2,
        "the request's server span and its client span"
    );
    assert!(sent.flags.is_sampled());
}

/// docs/trace.md: a job's parent is the span that enqueued it. Enqueued inside a span of the
/// service's own (`enqueue_receipt`), the job's consumer span is exported under that span, as
/// a client call made there is, not beside it under the request span.
#[tokio::test]
async fn a_job_enqueued_inside_a_span_of_the_services_own_nests_under_it() {
    use http::Request;
    use opentelemetry::trace::SpanKind;
    use tower::{Layer, ServiceExt, service_fn};

    let (kept, provider, _default) = export_in_process(parent_based_always_on());

    let server = CorrelationLayer::new().layer(service_fn(|_: Request<String>| async {
        let step = tracing::info_span!("user", otel.name = "enqueue_receipt");
        let in_step = step.in_scope(periscope_trace::job::carrier).unwrap();
        let direct = periscope_trace::job::carrier().unwrap();
        Ok::<_, std::convert::Infallible>(http::Response::new((in_step, direct)))
    }));
    let request = Request::get("/v1/orders").body(String::new()).unwrap();
    let (carrier, direct) = server
        .oneshot(request)
        .await
        .unwrap()
        .into_body()
        .get_ref()
        .unwrap()
        .clone();
    let payload = serde_json::to_string(&carrier).unwrap();
    let carrier: Carrier = serde_json::from_str(&payload).unwrap();
    JobSpan::from_carrier("send_receipt", &carrier)
        .run(async {})
        .await;
    provider.force_flush().unwrap();

    let spans = kept.0.lock().unwrap().clone();
    let find = |name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|span| span.name == name && span.span_kind == kind)
            .unwrap_or_else(|| panic!("no {name} span: {spans:#?}"))
    };
    let server = find("GET", SpanKind::Server);
    let step = find("enqueue_receipt", SpanKind::Internal);
    let job = find("send_receipt", SpanKind::Consumer);
    assert_eq!(step.parent_span_id, server.span_context.span_id());
    assert_eq!(job.parent_span_id, step.span_context.span_id());
    assert_eq!(job.span_context.trace_id(), server.span_context.trace_id());

    // Enqueued in the request's own span, the job's parent is the request span.
    let sent = TraceParent::parse(&direct.as_map()["traceparent"]).unwrap();
    assert_eq!(
        sent.parent_id.to_string(),
        server.span_context.span_id().to_string()
    );
}

/// The OpenTelemetry RPC conventions, as exported: a gRPC call's server span and the client
/// span of a gRPC call it makes are named `package.Service/Method` (recorded after the client
/// span was opened, which the export must follow) with `rpc.system`, `rpc.service` and
/// `rpc.method`; the same calls without a gRPC `content-type` keep the HTTP names and none of
/// these attributes.
#[tokio::test]
async fn grpc_calls_are_exported_with_the_rpc_fields() {
    use http::Request;
    use opentelemetry::trace::SpanKind;
    use tower::{Layer, ServiceExt, service_fn};

    let (kept, provider, _default) = export_in_process(parent_based_always_on());

    let client = echoing_client();
    let server = CorrelationLayer::new().layer(service_fn(move |request: Request<String>| {
        let content_type = request.headers()["content-type"].clone();
        let call = Request::post("http://dependency.internal/stock.v2.Ledger/Reserve")
            .header("content-type", content_type)
            .body(String::new())
            .unwrap();
        client.clone().oneshot(call)
    }));
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    for (content_type, grpc) in [("application/grpc", true), ("application/json", false)] {
        kept.0.lock().unwrap().clear();
        let request = Request::post("/inventory.v1.Items/Get")
            .header("content-type", content_type)
            .body(String::new())
            .unwrap();
        server.clone().oneshot(request).await.unwrap();
        provider.force_flush().unwrap();
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let of_kind = |kind: SpanKind| spans.iter().find(|s| s.span_kind == kind).unwrap();
        let (server, client) = (of_kind(SpanKind::Server), of_kind(SpanKind::Client));
        assert_eq!(
            attribute(server, "http.request.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            attribute(client, "http.request.method").as_deref(),
            Some("POST")
        );
        for (span, name, service, method) in [
            (
                server,
                "inventory.v1.Items/Get",
                "inventory.v1.Items",
                "Get",
            ),
            (
                client,
                "stock.v2.Ledger/Reserve",
                "stock.v2.Ledger",
                "Reserve",
            ),
        ] {
            if grpc {
                assert_eq!(span.name, name, "{span:#?}");
                assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
                assert_eq!(attribute(span, "rpc.service").as_deref(), Some(service));
                assert_eq!(attribute(span, "rpc.method").as_deref(), Some(method));
            } else {
                assert_eq!(span.name, "POST", "{span:#?}");
                for key in ["rpc.system", "rpc.service", "rpc.method"] {
                    assert_eq!(attribute(span, key), None, "{key}: {span:#?}");
                }
            }
        }
    }
}

/// A gRPC call to a method the service does not have (answered `UNIMPLEMENTED`) is exported
/// under the HTTP name, `POST`, not under the path the caller made up: callers cannot add span
/// names without end. A method it has keeps its name.
#[tokio::test]
async fn a_grpc_method_the_service_lacks_is_exported_as_post() {
    use http::{Request, Response};
    use tower::{Layer, ServiceExt, service_fn};

    let (kept, provider, _default) = export_in_process(parent_based_always_on());
    let server = CorrelationLayer::new().layer(service_fn(|request: Request<String>| async move {
        let code = if request.uri().path().ends_with("/Get") {
            "0"
        } else {
            "12"
        };
        let response = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .body(String::new())
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    }));
    for (path, name) in [
        ("/inventory.v1.Items/Made1Up", "POST"),
        ("/inventory.v1.Items/Get", "inventory.v1.Items/Get"),
    ] {
        kept.0.lock().unwrap().clear();
        let request = Request::post(path)
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap();
        server.clone().oneshot(request).await.unwrap();
        provider.force_flush().unwrap();
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0].name, name, "{path}: {:#?}", spans[0]);
    }
}

/// The numeric attributes are exported as integers, as the semantic conventions type them:
/// `http.response.status_code` and `rpc.grpc.status_code` on server and client spans,
/// `server.port` on client spans. (tracing-opentelemetry exports an unsigned field as its
/// text, `"503"`, which a backend's `http.response.status_code >= 500` never matches.)
#[tokio::test]
async fn numeric_attributes_are_exported_as_integers() {
    use http::Request;
    use opentelemetry::Value;
    use opentelemetry::trace::SpanKind;
    use tower::{Layer, ServiceExt, service_fn};

    let (kept, provider, _default) = export_in_process(parent_based_always_on());

    // A dependency that answers a gRPC call `UNAVAILABLE` (14) in its head.
    let unavailable = service_fn(|_: Request<String>| async {
        let answer = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(String::new())
            .unwrap();
        Ok::<_, std::convert::Infallible>(answer)
    });
    let client = periscope_trace::ClientTraceLayer::new().layer(unavailable);
    let server = CorrelationLayer::new().layer(service_fn(move |_: Request<String>| {
        let call = Request::post("http://dependency.internal:8443/stock.v2.Ledger/Reserve")
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap();
        client.clone().oneshot(call)
    }));
    let request = Request::post("/inventory.v1.Items/Get")
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    server.oneshot(request).await.unwrap();
    provider.force_flush().unwrap();

    let spans = kept.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let attribute = |kind: SpanKind, key: &str| {
        let span = spans.iter().find(|s| s.span_kind == kind).unwrap();
        let found = span.attributes.iter().find(|kv| kv.key.as_str() == key);
        found.map(|kv| kv.value.clone())
    };
    let exported = [
        (SpanKind::Server, "http.response.status_code"),
        (SpanKind::Server, "rpc.grpc.status_code"),
        (SpanKind::Client, "http.response.status_code"),
        (SpanKind::Client, "rpc.grpc.status_code"),
        (SpanKind::Client, "server.port"),
    ]
    .map(|(kind, key)| attribute(kind, key));
    let expected = [200, 14, 200, 14, 8443].map(|n| Some(Value::I64(n)));
    assert_eq!(exported, expected);
}

/// periscope's layer exports a span's code location but not what costs every request without
/// telling anything about it: `tracing-opentelemetry`'s busy and idle times (clock reads on
/// each entry and exit) and the thread the span started on (a name copied per span).
#[tokio::test]
async fn exported_spans_leave_out_busy_time_and_thread() {
    use http::Request;
    use tower::{Layer, ServiceExt, service_fn};

    let (kept, provider, _default) = export_in_process(parent_based_always_on());
    let server = CorrelationLayer::new().layer(service_fn(|_: Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    server
        .oneshot(Request::get("/orders").body(String::new()).unwrap())
        .await
        .unwrap();
    provider.force_flush().unwrap();

    let spans = kept.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let keys: Vec<&str> = spans[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    for absent in ["busy_ns", "idle_ns", "thread.id", "thread.name"] {
        assert!(!keys.contains(&absent), "{absent} exported: {keys:?}");
    }
    for present in [
        "code.file.path",
        "code.line.number",
        "http.request.method",
        "url.path",
    ] {
        assert!(keys.contains(&present), "{present} missing: {keys:?}");
    }
}

/// Spans exported in process under `sampler` (in `Kept` once the provider is flushed), with
/// the OpenTelemetry layer in this thread's subscriber while the guard lives.
fn export_in_process(
    sampler: opentelemetry_sdk::trace::Sampler,
) -> (
    Kept,
    opentelemetry_sdk::trace::SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    use opentelemetry::trace::TracerProvider as _;

    let kept = Kept::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(kept.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(periscope_trace::otel::layer_for(provider.tracer("test")));
    let default = support::set_default(subscriber);
    (kept, provider, default)
}

/// The SDK's default sampler.
fn parent_based_always_on() -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler;
    Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
}

/// A call whose span the export leaves out (a filter on the OpenTelemetry layer of the
/// service's own, or one that quietens client spans for every layer) goes out under the
/// request's exported span: the callee's spans hang under a span the backend has, not under
/// an id no exported span has.
#[tokio::test]
async fn a_call_whose_span_is_left_out_goes_out_under_the_exported_request_span() {
    use http::Request;
    use opentelemetry::trace::TracerProvider as _;
    use tower::{Layer, ServiceExt, service_fn};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::filter_fn;

    for filtered_for_all in [false, true] {
        let kept = Kept::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(parent_based_always_on())
            .with_simple_exporter(kept.clone())
            .build();
        let otel = periscope_trace::otel::layer_for(provider.tracer("test"));
        let not_client =
            || filter_fn(|meta| meta.target() != periscope_trace::client::CLIENT_TARGET);
        let _default = if filtered_for_all {
            support::set_default(tracing_subscriber::registry().with(otel).with(not_client()))
        } else {
            // A log layer takes the client spans; the export alone leaves them out.
            let logs = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
            support::set_default(
                tracing_subscriber::registry()
                    .with(otel.with_filter(not_client()))
                    .with(logs),
            )
        };

        let client = echoing_client();
        let server = CorrelationLayer::new().layer(service_fn(move |_: Request<String>| {
            let call = Request::get("http://dependency.internal/")
                .body(String::new())
                .unwrap();
            client.clone().oneshot(call)
        }));
        let request = Request::get("/v1/jobs").body(String::new()).unwrap();
        let response = server.oneshot(request).await.unwrap();
        let sent = TraceParent::parse(response.body().get_ref().unwrap().get_ref()).unwrap();
        drop(response);
        provider.force_flush().unwrap();
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1, "the server span alone: {spans:#?}");
        assert_eq!(
            sent.parent_id.to_string(),
            spans[0].span_context.span_id().to_string(),
            "filtered for every layer: {filtered_for_all}"
        );
        assert_eq!(
            sent.trace_id.to_string(),
            spans[0].span_context.trace_id().to_string()
        );
    }
}

/// Outside any request, a call whose span the export leaves out (a filter on the
/// OpenTelemetry layer) made inside an exported span of the service's own (`model_load`)
/// joins that span's trace and goes out under it, as the call with its span exported would;
/// and no warning says the tracer makes no spans, which it does.
#[tokio::test]
async fn a_left_out_client_span_outside_any_request_joins_the_enclosing_trace_without_warning() {
    use opentelemetry::trace::TracerProvider as _;
    use tower::ServiceExt;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::filter_fn;

    let kept = Kept::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(parent_based_always_on())
        .with_simple_exporter(kept.clone())
        .build();
    let otel =
        periscope_trace::otel::layer_for(provider.tracer("test")).with_filter(filter_fn(|meta| {
            meta.target() != periscope_trace::client::CLIENT_TARGET
        }));
    // The capture takes the client spans the export leaves out, and the warnings.
    let capture = support::Capture::default();
    let _default = support::set_default(
        tracing_subscriber::registry()
            .with(otel)
            .with(capture.clone()),
    );

    let model_load = tracing::info_span!("model_load");
    let call = http::Request::get("http://weights.internal/")
        .body(String::new())
        .unwrap();
    let response = {
        let _entered = model_load.enter();
        echoing_client().oneshot(call).await.unwrap()
    };
    let sent = TraceParent::parse(response.body().get_ref()).unwrap();
    drop(response);
    drop(model_load);
    provider.force_flush().unwrap();
    let spans = kept.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "model_load alone: {spans:#?}");
    assert_eq!(
        sent.trace_id.to_string(),
        spans[0].span_context.trace_id().to_string()
    );
    assert_eq!(
        sent.parent_id.to_string(),
        spans[0].span_context.span_id().to_string()
    );
    let warned: Vec<_> = (capture.lines().into_iter())
        .filter(|line| line.level == tracing::Level::WARN)
        .collect();
    assert!(
        !warned
            .iter()
            .any(|line| line.target == "periscope_trace::otel"),
        "{warned:?}"
    );
}

//! OpenTelemetry on with the default protocol, OTLP over HTTP with protobuf bodies: real export
//! to a receiver on 127.0.0.1 that decodes what it is sent as a collector does, and the ids in
//! the exported span, the logs and the response compared one by one.
#![cfg(feature = "otel")]

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use fake_opentelemetry_collector::ExportedSpan;
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use periscope_trace::CorrelationLayer;
use periscope_trace::otel::{OtelConfig, OtelGuard, Protocol};
use prost::Message;
use support::services::{app, get, hop_state};
use support::{Capture, attr, serve};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One export request to `/v1/traces` (the only path the receiver answers) as it saw it.
#[derive(Clone, Debug)]
struct Export {
    content_type: String,
    service_names: Vec<String>,
    /// The resource's string attributes.
    resource: Vec<(String, String)>,
    spans: Vec<ExportedSpan>,
    /// The `api-key` header, as an `OTEL_EXPORTER_OTLP_HEADERS` list would set it.
    api_key: Option<String>,
    /// The `x-stale` header, which only a test's process environment names.
    x_stale: Option<String>,
}

type Exports = Arc<Mutex<Vec<Export>>>;

/// A collector's OTLP/HTTP traces endpoint: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered with an (empty) `ExportTraceServiceResponse`.
async fn start_receiver() -> (String, Exports) {
    let exports = Exports::default();
    let router = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(exports.clone());
    (format!("http://{}", serve(router).await), exports)
}

async fn receive(
    State(exports): State<Exports>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let mut export = Export {
        content_type,
        service_names: Vec::new(),
        resource: Vec::new(),
        spans: Vec::new(),
        api_key: header("api-key"),
        x_stale: header("x-stale"),
    };
    for resource_spans in request.resource_spans {
        let attributes = resource_spans.resource.map(|r| r.attributes);
        for attribute in attributes.into_iter().flatten() {
            if let Some(any_value::Value::StringValue(value)) =
                attribute.value.and_then(|value| value.value)
            {
                if attribute.key == "service.name" {
                    export.service_names.push(value.clone());
                }
                export.resource.push((attribute.key, value));
            }
        }
        for scope_spans in resource_spans.scope_spans {
            export
                .spans
                .extend(scope_spans.spans.into_iter().map(ExportedSpan::from));
        }
    }
    exports.lock().unwrap().push(export);
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// The export holding a span of `trace`, and that span. The guard's flush and shutdown return
/// only once the receiver has answered, so it is there at once or never.
/// Ends one span named `name` under `guard`, drops the guard (which flushes), and returns the
/// export that carried it and the span as exported.
fn export_one(
    guard: periscope_trace::otel::OtelGuard,
    name: &'static str,
    exports: &Exports,
) -> (Export, ExportedSpan) {
    use opentelemetry::trace::{Span as _, Tracer as _};

    let mut span = guard.tracer().start(name);
    let trace = span.span_context().trace_id().to_string();
    span.end();
    drop(guard);
    export_of(exports, &trace)
}

fn export_of(exports: &Exports, trace: &str) -> (Export, ExportedSpan) {
    let exports = exports.lock().unwrap();
    exports
        .iter()
        .find_map(|export| {
            let span = export.spans.iter().find(|s| s.trace_id == trace)?;
            Some((export.clone(), span.clone()))
        })
        .unwrap_or_else(|| panic!("no span of trace {trace} reached the receiver: {exports:#?}"))
}

/// The guard's flush and shutdown block on the export: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_protocol_exports_protobuf_over_http() {
    let (endpoint, exports) = start_receiver().await;
    // No protocol set: `http/protobuf` is the default, and `/v1/traces` is appended.
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_SERVICE_NAME" => Some("periscope-http-test".to_owned()),
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        // Values are percent-encoded; the collector gets them decoded.
        "OTEL_RESOURCE_ATTRIBUTES" => {
            Some("deployment.environment=eu%20west,team=pay%2Cments".to_owned())
        }
        _ => None,
    })
    .unwrap()
    .install()
    .unwrap();
    assert!(guard.is_exporting());
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(guard.layer())
        .with(capture.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("http", None, &seen), CorrelationLayer::new())).await;
    let response = get(
        addr,
        "/hop",
        &[
            ("x-request-id", "otel-http"),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("x-org-id", "org_9"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "otel-http");
    let guard = blocking(move || {
        guard.flush().unwrap();
        guard
    })
    .await;

    let (export, server) = export_of(&exports, TRACE);
    assert_eq!(export.content_type, "application/x-protobuf");
    assert_eq!(export.service_names, ["periscope-http-test"]);
    for (key, value) in [("deployment.environment", "eu west"), ("team", "pay,ments")] {
        assert!(
            export
                .resource
                .contains(&(key.to_owned(), value.to_owned())),
            "{key}: {:?}",
            export.resource
        );
    }
    let ctx = seen.lock().unwrap()[0].ctx.clone();
    assert_eq!(server.span_id, ctx.span_id.to_string());
    assert_eq!(server.parent_span_id, PARENT);
    // The route template comes from axum's matched path (feature `axum`).
    let name = if cfg!(feature = "axum") {
        "GET /hop"
    } else {
        "GET"
    };
    assert_eq!(server.name, name);
    assert_eq!(server.kind, "SPAN_KIND_SERVER");
    assert!(attr(&server, "http.request.method").contains("\"GET\""));
    if cfg!(feature = "axum") {
        assert!(attr(&server, "http.route").contains("\"/hop\""));
    }
    assert!(attr(&server, "http.response.status_code").contains("200"));
    assert!(attr(&server, "request_id").contains("\"otel-http\""));
    assert!(attr(&server, "org_id").contains("\"org_9\""));
    let line = capture.line("otel-http", "handling the hop", None);
    assert_eq!(line.ctx("trace_id"), Some(TRACE));
    assert_eq!(line.ctx("span_id"), Some(server.span_id.as_str()));

    // Spans still buffered when the guard goes are sent before it is gone.
    let failing = "55555555555555555555555555555555";
    let response = get(
        addr,
        "/fail",
        &[
            ("x-request-id", "otel-http-500"),
            ("traceparent", &format!("00-{failing}-{PARENT}-01")),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    blocking(move || drop::<OtelGuard>(guard)).await;
    let (_, failed) = export_of(&exports, failing);
    let name = if cfg!(feature = "axum") {
        "GET /fail"
    } else {
        "GET"
    };
    assert_eq!(failed.name, name);
    assert_eq!(failed.status.as_ref().unwrap().code, "STATUS_CODE_ERROR");
    assert!(attr(&failed, "http.response.status_code").contains("500"));
}

/// HTTP export runs on the exporter's own thread, as gRPC export does: built outside any
/// runtime and dropped inside async code on a current-thread runtime (which the guard's flush
/// blocks), the last span still reaches the receiver.
#[test]
fn http_export_needs_no_runtime_of_the_application() {
    use opentelemetry::trace::{Span as _, Tracer as _};

    let (_receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    let build = || {
        OtelConfig::from_lookup(|name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone())
        })
        .unwrap()
        .build()
        .unwrap()
    };
    let trace_of =
        |span: &opentelemetry_sdk::trace::Span| span.span_context().trace_id().to_string();

    let guard = build();
    let mut span = guard.tracer().start("outside-any-runtime");
    let outside = trace_of(&span);
    span.end();
    drop(guard);
    assert_eq!(export_of(&exports, &outside).1.name, "outside-any-runtime");

    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inside = current_thread.block_on(async {
        let guard = build();
        let mut span = guard.tracer().start("on-a-current-thread-runtime");
        let inside = trace_of(&span);
        span.end();
        drop(guard);
        inside
    });
    assert_eq!(
        export_of(&exports, &inside).1.name,
        "on-a-current-thread-runtime"
    );
}

/// A receiver served by a runtime of its own (returned: the receiver lives as long as it).
fn receiver_on_its_own_runtime() -> (tokio::runtime::Runtime, String, Exports) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (endpoint, exports) = runtime.block_on(start_receiver());
    (runtime, endpoint, exports)
}

/// Settings read from another source than the process environment (a configuration file,
/// through `OtelConfig::from_lookup` or the facade's `env_from`) apply to the export too: the
/// header an API key goes in was checked there, then never sent, and the collector refused
/// every export.
#[test]
fn export_headers_from_a_lookup_are_sent() {
    let (_receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=from%20a%20file".to_owned()),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();
    let (export, _) = export_one(guard, "with-looked-up-headers", &exports);
    assert_eq!(export.api_key.as_deref(), Some("from a file"));
}

/// Runs the test `name` of this binary in a child process, its switch `switch` set and the
/// variables `env` set (`None`: removed), and returns what it printed; it must succeed.
fn run_child(name: &str, switch: &str, env: &[(&str, Option<&str>)]) -> String {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", name, "--nocapture"])
        .env(switch, "1");
    for (var, value) in env {
        match value {
            Some(value) => child.env(var, value),
            None => child.env_remove(var),
        };
    }
    let output = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} {env:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const HEADERS_CHILD: &str = "PERISCOPE_TEST_HEADERS_CHILD";

/// In a child process: a receiver, and the provider built from the environment exporting to
/// it (the runtime serving the receiver goes with them).
fn exporting_from_env() -> (
    tokio::runtime::Runtime,
    Exports,
    periscope_trace::otel::OtelGuard,
) {
    let (receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    let mut config = OtelConfig::from_env().unwrap();
    config.endpoint = Some(endpoint);
    let guard = config.build().unwrap();
    (receiver_runtime, exports, guard)
}

/// Run by `a_blank_traces_headers_variable_leaves_the_general_headers_in_force` in a child
/// process with the variables set: prints the `api-key` header the receiver got.
#[test]
fn headers_child() {
    if std::env::var_os(HEADERS_CHILD).is_none() {
        return;
    }
    let (_receiver_runtime, exports, guard) = exporting_from_env();
    let (export, _) = export_one(guard, "with-headers", &exports);
    println!("API-KEY {:?}", export.api_key);
}

/// Empty counts as unset, as for every variable: an empty `OTEL_EXPORTER_OTLP_TRACES_HEADERS=`
/// (a manifest's placeholder) took the place of `OTEL_EXPORTER_OTLP_HEADERS` in the exporter,
/// and every export went without its API key.
#[test]
fn a_blank_traces_headers_variable_leaves_the_general_headers_in_force() {
    for (traces, sent) in [
        (None, "Some(\"k1\")"),
        (Some(""), "Some(\"k1\")"),
        (Some("  "), "Some(\"k1\")"),
        (Some("api-key=k2"), "Some(\"k2\")"),
    ] {
        let stdout = run_child(
            "headers_child",
            HEADERS_CHILD,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", Some("api-key=k1")),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", traces),
            ],
        );
        assert!(
            stdout.contains(&format!("API-KEY {sent}")),
            "{traces:?}: {stdout}"
        );
    }
}

const LOOKUP_HEADERS_CHILD: &str = "PERISCOPE_TEST_LOOKUP_HEADERS_CHILD";

/// Run by `headers_from_a_lookup_win_over_the_process_environments` in a child process whose
/// environment has stale header lists: exports with the lists its lookup gives
/// (`LOOKUP_GENERAL`, `LOOKUP_TRACES`), and prints the headers the receiver got.
#[test]
fn lookup_headers_child() {
    if std::env::var_os(LOOKUP_HEADERS_CHILD).is_none() {
        return;
    }
    let (_receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_HEADERS" => std::env::var("LOOKUP_GENERAL").ok(),
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => std::env::var("LOOKUP_TRACES").ok(),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();
    let (export, _) = export_one(guard, "with-looked-up-headers", &exports);
    println!("API-KEY {:?} X-STALE {:?}", export.api_key, export.x_stale);
}

/// Headers given through a lookup (`env_from`: a vault, a file) are the ones sent: the
/// exporter's own reading of the process environment's lists (a stale token left in the pod's
/// environment) neither replaces them nor adds a header they do not name.
#[test]
fn headers_from_a_lookup_win_over_the_process_environments() {
    for (lookup_general, lookup_traces, sent) in [
        (
            Some("api-key=fresh"),
            None,
            "API-KEY Some(\"fresh\") X-STALE None",
        ),
        (
            None,
            Some("api-key=k2"),
            "API-KEY Some(\"k2\") X-STALE None",
        ),
    ] {
        let stdout = run_child(
            "lookup_headers_child",
            LOOKUP_HEADERS_CHILD,
            &[
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    Some("api-key=stale,x-stale=1"),
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", Some("x-stale=2")),
                ("LOOKUP_GENERAL", lookup_general),
                ("LOOKUP_TRACES", lookup_traces),
            ],
        );
        assert!(
            stdout.contains(sent),
            "{lookup_general:?} {lookup_traces:?}: {stdout}"
        );
    }
}

const BATCH_CHILD: &str = "PERISCOPE_TEST_BATCH_CHILD";

/// Run by `a_padded_batch_setting_is_used_as_checked` in a child process with the variables
/// set: prints how many exports reached the receiver within a second, the guard still alive.
#[test]
fn batch_child() {
    use opentelemetry::trace::{Span as _, Tracer as _};

    if std::env::var_os(BATCH_CHILD).is_none() {
        return;
    }
    let (_receiver_runtime, exports, guard) = exporting_from_env();
    guard.tracer().start("scheduled").end();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    println!("EXPORTS {}", exports.lock().unwrap().len());
    drop(guard);
}

/// The value checked is the value used: `OTEL_BSP_SCHEDULE_DELAY=" 100"` passed the check
/// (values are trimmed), and the batch processor, reading it as it is, kept its 5 s.
#[test]
fn a_padded_batch_setting_is_used_as_checked() {
    for delay in ["100", " 100", "100 "] {
        let stdout = run_child(
            "batch_child",
            BATCH_CHILD,
            &[("OTEL_BSP_SCHEDULE_DELAY", Some(delay))],
        );
        assert!(stdout.contains("EXPORTS 1"), "{delay:?}: {stdout}");
    }
}

/// Settings set in code are used as a lookup's are: a span queue too large to allocate
/// panicked (`capacity overflow`) in `build`, and one of 0 dropped every span.
#[test]
fn a_span_queue_set_in_code_is_kept_within_what_the_lookup_accepts() {
    let (_receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    for size in [usize::MAX, 0] {
        let mut config = OtelConfig::default();
        config.endpoint = Some(endpoint.clone());
        config.export.max_queue_size = Some(size);
        let (_, exported) = export_one(config.build().unwrap(), "queued", &exports);
        assert_eq!(exported.name, "queued", "{size}");
    }
}

/// Endpoints set in code get the checks the environment's get: an `https://` URL (this build
/// has no TLS), one with credentials (never sent) or port 0 fails `build`, named by its field,
/// its credentials and query masked, instead of failing every export.
#[test]
fn an_endpoint_set_in_code_that_cannot_be_sent_to_fails_build_masked() {
    for (field, url) in [
        ("endpoint", "https://collector:4318"),
        ("endpoint", "http://user:hunter2@collector:4318"),
        ("endpoint", "http://collector:0"),
        (
            "traces_endpoint_override",
            "https://collector:4318/v1/traces?api_key=k3y",
        ),
    ] {
        let mut config = OtelConfig::default();
        config.protocol = Protocol::HttpProtobuf;
        if field == "endpoint" {
            config.endpoint = Some(url.to_owned());
        } else {
            config.traces_endpoint_override = Some(url.to_owned());
        }
        let error = config.build().expect_err(url).to_string();
        assert!(error.contains(field), "{url}: {error}");
        assert!(
            !error.contains("hunter2") && !error.contains("k3y"),
            "{error}"
        );
    }
}

const IDLE_CHILD: &str = "PERISCOPE_TEST_IDLE_CHILD";

/// The CPU time this process has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Run by `a_schedule_delay_of_zero_does_not_keep_a_core_busy` in a child process, alone in
/// it: exports a span with the delay the parent sets, then prints the CPU time the idle
/// process used over two seconds.
#[test]
fn idle_child() {
    use opentelemetry::trace::{Span as _, Tracer as _};

    let Some(delay) = std::env::var_os(IDLE_CHILD) else {
        return;
    };
    let (_receiver_runtime, endpoint, exports) = receiver_on_its_own_runtime();
    let delay = delay.into_string().unwrap();
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_BSP_SCHEDULE_DELAY" => Some(delay.clone()),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();
    let mut span = guard.tracer().start("soon");
    let trace = span.span_context().trace_id().to_string();
    span.end();
    // Exported without a flush: the delay is short.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !exports
        .lock()
        .unwrap()
        .iter()
        .any(|export| export.spans.iter().any(|s| s.trace_id == trace))
    {
        assert!(std::time::Instant::now() < deadline, "never exported");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!("TICKS {}", cpu_ticks() - before);
    drop(guard);
}

/// `OTEL_BSP_SCHEDULE_DELAY=0` (export at once) passes the check, and the batch processor's
/// thread then polled for spans without pause: a whole core busy while the service idled.
/// Measured in CPU time, so ignored by default (the clamp itself is tested by
/// `a_zero_schedule_delay_is_taken_as_one_millisecond`); run it with
/// `cargo test -p periscope-trace --features otel --test otel_http -- --ignored a_schedule_delay_of_zero`.
#[test]
#[ignore = "measures CPU time over 2 s; the clamp has a unit test"]
fn a_schedule_delay_of_zero_does_not_keep_a_core_busy() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "idle_child", "--nocapture"])
        .env(IDLE_CHILD, "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ticks: u64 = stdout
        .split("TICKS ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    // Busy, it used about 200 ticks (two seconds of one core); idle, next to none.
    assert!(ticks < 40, "{ticks} ticks of CPU in 2 s idle");
}

//! A collector that cannot be reached is said in the log: the first failed export at once, then
//! at most once a minute, and the first export that succeeds again. Alone in its binary: the
//! export runs on the batch processor's thread, which logs through the global subscriber.
#![cfg(feature = "otel")]

mod support;

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use opentelemetry::trace::{Span as _, Tracer as _};
use periscope_trace::otel::{EXPORT_TARGET, OtelConfig, OtelGuard};
use support::{Capture, Line};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

fn export_lines(capture: &Capture) -> Vec<Line> {
    capture
        .lines()
        .into_iter()
        .filter(|line| line.target == EXPORT_TARGET)
        .collect()
}

/// Ends one span and waits for its export, which fails or not.
fn export_one(guard: &OtelGuard, name: &'static str) -> bool {
    let mut span = guard.tracer().start(name);
    span.end();
    guard.flush().is_ok()
}

#[test]
fn a_collector_that_cannot_be_reached_is_warned_about_and_its_return_noted() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();
    // A port nothing listens on, until the receiver takes it below.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{addr}");
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("2000".to_owned()),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();

    assert!(!export_one(&guard, "lost-1"), "nothing listens there");
    let lines = export_lines(&capture);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let warning = &lines[0];
    assert_eq!(warning.level, Level::WARN);
    assert!(
        warning.message.starts_with("OTLP export failed"),
        "{warning:?}"
    );
    assert_eq!(warning.fields["endpoint"], format!("{endpoint}/v1/traces"));
    assert_eq!(warning.fields["lost_spans"], "1");
    assert!(!warning.fields["error"].is_empty());

    // Within the minute: counted, not warned again.
    assert!(!export_one(&guard, "lost-2"));
    assert_eq!(export_lines(&capture).len(), 1);

    // The collector comes up on that port: the next export says so, with what was lost since.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let receiver = Router::new().route(
            "/v1/traces",
            // An empty body is an empty `ExportTraceServiceResponse`: all spans accepted.
            post(|| async { (StatusCode::OK, [("content-type", "application/x-protobuf")]) }),
        );
        axum::serve(listener, receiver).await.unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !export_one(&guard, "delivered") {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lines = export_lines(&capture);
    let back = lines.last().unwrap();
    assert_eq!(back.level, Level::INFO, "{lines:#?}");
    assert_eq!(back.message, "OTLP export works again");
    assert!(
        back.fields["lost_spans"].parse::<u64>().unwrap() >= 1,
        "{back:?}"
    );
    drop(guard);
}

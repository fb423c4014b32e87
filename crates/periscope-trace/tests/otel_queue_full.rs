//! Spans dropped because the batch processor's queue is full are said in the log, with how
//! many: the first drops at once, later ones at most once a minute, the rest at shutdown.
//! Alone in its binary: the warnings come from the batch processor's thread, which logs
//! through the global subscriber.
#![cfg(feature = "otel")]

mod support;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use opentelemetry::trace::{Span as _, Tracer as _};
use periscope_trace::otel::{EXPORT_TARGET, OtelConfig, OtelGuard};
use support::{Capture, Line};
use tokio::sync::Semaphore;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

/// Generous: the machine running the tests may be busy.
const DEADLINE: Duration = Duration::from_secs(60);

fn drop_warnings(capture: &Capture) -> Vec<Line> {
    capture
        .lines()
        .into_iter()
        .filter(|line| {
            line.target == EXPORT_TARGET && line.message.starts_with("OTLP export queue full")
        })
        .collect()
}

/// Waits until `capture` holds `count` drop warnings, and returns them.
fn wait_for_warnings(capture: &Capture, count: usize) -> Vec<Line> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let warnings = drop_warnings(capture);
        if warnings.len() >= count {
            return warnings;
        }
        assert!(
            Instant::now() < deadline,
            "no drop warning number {count}; lines: {:#?}",
            capture.lines()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn end_spans(guard: &OtelGuard, count: usize) {
    for _ in 0..count {
        guard.tracer().start("burst").end();
    }
}

/// Waits until the collector has received one more export.
fn next_export(received: &Receiver<()>) {
    received
        .recv_timeout(DEADLINE)
        .expect("the collector received no export");
}

/// A collector on 127.0.0.1 that answers each export only when `answers` gives it a permit,
/// after telling `received` the export arrived.
fn stalling_collector(
    runtime: &tokio::runtime::Runtime,
    received: Sender<()>,
    answers: Arc<Semaphore>,
) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Router::new().route(
        "/v1/traces",
        post(move || {
            let received = received.clone();
            let answers = answers.clone();
            async move {
                let _ = received.send(());
                answers.acquire().await.unwrap().forget();
                // An empty body is an empty `ExportTraceServiceResponse`: all spans accepted.
                (StatusCode::OK, [("content-type", "application/x-protobuf")])
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    format!("http://{addr}")
}

#[test]
fn spans_dropped_on_a_full_queue_are_warned_about_with_their_count_at_most_once_a_minute() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (received, exports) = std::sync::mpsc::channel();
    let answers = Arc::new(Semaphore::new(0));
    let endpoint = stalling_collector(&runtime, received, answers.clone());
    let guard = OtelConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
        // Longer than the test: an export waits for the collector's answer, never times out.
        "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("600000".to_owned()),
        "OTEL_BSP_MAX_QUEUE_SIZE" => Some("1".to_owned()),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();

    // The first span's export waits in the collector, so the queue of one fills behind it:
    // one span waits there, the other 99 find it full.
    end_spans(&guard, 1);
    next_export(&exports);
    end_spans(&guard, 100);
    // The collector answers; the export of the waiting span says what was dropped.
    answers.add_permits(1);
    next_export(&exports);
    let warnings = wait_for_warnings(&capture, 1);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let warning = &warnings[0];
    assert_eq!(warning.level, Level::WARN);
    assert!(
        warning.message.contains("OTEL_BSP_MAX_QUEUE_SIZE"),
        "says what to do: {warning:?}"
    );
    assert_eq!(warning.fields["dropped_spans"], "99", "{warning:?}");
    assert_eq!(warning.fields["max_queue_size"], "1", "{warning:?}");
    assert_eq!(warning.fields["endpoint"], format!("{endpoint}/v1/traces"));

    // The same again within the minute: counted, not warned.
    end_spans(&guard, 100);
    answers.add_permits(1);
    next_export(&exports);
    assert_eq!(drop_warnings(&capture).len(), 1, "{:#?}", capture.lines());

    // Shutting down says what was dropped since the last warning.
    answers.add_permits(Semaphore::MAX_PERMITS / 2);
    drop(guard);
    let warnings = wait_for_warnings(&capture, 2);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(warnings[1].fields["dropped_spans"], "99", "{warnings:#?}");
    // Exports that succeeded are not failures.
    assert!(
        capture
            .lines()
            .iter()
            .all(|line| line.target != EXPORT_TARGET
                || line.message.starts_with("OTLP export queue full")),
        "{:#?}",
        capture.lines()
    );
}

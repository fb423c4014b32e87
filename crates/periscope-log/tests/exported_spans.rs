//! Feature `otel`: a line outside any request, inside a span OpenTelemetry exports, carries
//! that span's ids; lines of requests keep their request's ids.
#![cfg(feature = "otel")]

mod common;

use common::Captured;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use periscope_log::{Directives, LogLayer};
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// Runs `f` under the log layer and an OpenTelemetry layer that takes INFO spans and up (as
/// periscope-trace's export does), and returns the lines.
fn with_export(f: impl FnOnce()) -> Vec<Value> {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .directives(Directives::level(LevelFilter::DEBUG))
        .build();
    let provider = SdkTracerProvider::builder().build();
    let export = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(LevelFilter::INFO);
    let subscriber = tracing_subscriber::registry().with(layer).with(export);
    common::with_default(subscriber, f);
    drop(guard);
    out.lines()
}

/// The exported ids of `span`, as lower-case hex.
fn ids(span: &tracing::Span) -> (String, String) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (
        span_context.trace_id().to_string(),
        span_context.span_id().to_string(),
    )
}

fn ids_of(line: &Value) -> (&str, &str) {
    (
        line["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}")),
        line["span_id"].as_str().unwrap_or_else(|| panic!("{line}")),
    )
}

#[test]
fn a_line_in_an_exported_span_outside_requests_carries_its_ids() {
    let mut load = None;
    let mut step = None;
    let lines = with_export(|| {
        let span = tracing::info_span!("model_load");
        span.in_scope(|| {
            tracing::info!("loading");
            // A span below the export's level is not exported: its lines take the span
            // around it that is.
            tracing::debug_span!("read_weights").in_scope(|| tracing::info!("reading"));
            let inner = tracing::info_span!("compile");
            inner.in_scope(|| tracing::info!("compiling"));
            step = Some(ids(&inner));
        });
        // A line naming its parent rather than logged in the spans entered: no ids here.
        tracing::info!(parent: &span, "loaded");
        span.in_scope(|| tracing::info!(parent: None, "detached"));
        load = Some(ids(&span));
        tracing::info!("outside any span");
    });
    let (load, step) = (load.unwrap(), step.unwrap());
    let (load, step) = (
        (load.0.as_str(), load.1.as_str()),
        (step.0.as_str(), step.1.as_str()),
    );
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(ids_of(&lines[0]), load, "{}", lines[0]);
    assert_eq!(ids_of(&lines[1]), load, "{}", lines[1]);
    assert_eq!(ids_of(&lines[2]), step, "{}", lines[2]);
    assert_eq!(step.0, load.0, "one trace");
    for line in &lines[3..] {
        for key in ["trace_id", "span_id", "request_id"] {
            assert!(line.get(key).is_none(), "{line}");
        }
    }
    assert!(lines[0].get("request_id").is_none(), "{}", lines[0]);
}

#[test]
fn a_request_line_keeps_its_requests_ids_with_export_on() {
    let lines = with_export(|| {
        let request = tracing::info_span!(
            "request",
            request_id = "req_1",
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id = "00f067aa0ba902b7",
        );
        request.in_scope(|| {
            tracing::info_span!("inner").in_scope(|| tracing::info!("in a request"));
        });
    });
    assert_eq!(
        ids_of(&lines[0]),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["request_id"], "req_1");
}

#[test]
fn without_an_export_layer_a_line_outside_requests_has_no_ids() {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    // Another layer that keeps extensions, so the lookup finds spans but no exported data.
    let other = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(filter_fn(|_| true));
    common::with_default(
        tracing_subscriber::registry().with(layer).with(other),
        || {
            tracing::info_span!("model_load").in_scope(|| tracing::info!("loading"));
        },
    );
    drop(guard);
    let lines = out.lines();
    assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
    assert!(lines[0].get("span_id").is_none(), "{}", lines[0]);
}

/// A span processor that logs, through tracing, each span it starts.
#[derive(Debug)]
struct LoggingProcessor;

impl opentelemetry_sdk::trace::SpanProcessor for LoggingProcessor {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {
        tracing::info!("span started");
    }
    fn on_end(&self, _: opentelemetry_sdk::trace::SpanData) {}
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(
        &self,
        _: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

#[test]
fn a_processor_logging_as_a_span_starts_does_not_deadlock() {
    // The span's lock is held while OpenTelemetry starts it: a line logged then must not wait
    // on it.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = Captured::default();
        let (layer, guard) = LogLayer::builder()
            .writer(out.clone())
            .blocking(true)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LoggingProcessor)
            .build();
        let export = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer).with(export);
        common::with_default(subscriber, || {
            tracing::info_span!("outer").in_scope(|| {
                tracing::info_span!("job").in_scope(|| tracing::info!("working"));
            });
        });
        drop(guard);
        let _ = done.send(out.lines());
    });
    let lines = finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("logging from a span processor deadlocked");
    let working = lines
        .iter()
        .find(|line| line["message"] == "working")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    ids_of(working);
}

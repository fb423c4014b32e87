//! One event with five fields inside a span carrying request context, formatted into
//! `io::sink` by periscope-log, tracing-subscriber's `fmt().json()` and json-subscriber.

use criterion::{Criterion, criterion_group, criterion_main};
use periscope_log::LogLayer;
use tracing::Dispatch;
use tracing_subscriber::prelude::*;

fn event_in_request_span(c: &mut Criterion, name: &str, dispatch: Dispatch) {
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!(
            "request",
            request_id = "req_01jjh7yv9h8e3k3m0d2q4r5s6t",
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id = "00f067aa0ba902b7",
            org_id = "org_9",
        );
        let _enter = span.enter();
        c.bench_function(name, |b| {
            b.iter(|| {
                tracing::info!(
                    job_id = "job_789",
                    old_status = "processing",
                    new_status = "completed",
                    attempt = 3u64,
                    elapsed_ms = 12.5,
                    "Job status changed"
                )
            })
        });
    });
}

fn formatters(c: &mut Criterion) {
    let (layer, _guard) = LogLayer::builder()
        .service("framecast-api")
        .writer(std::io::sink())
        .blocking(true)
        .build();
    let periscope = Dispatch::new(tracing_subscriber::registry().with(layer));
    event_in_request_span(c, "periscope-log", periscope);

    let (layer, _guard) = LogLayer::builder()
        .service("framecast-api")
        .writer(std::io::sink())
        .build();
    let periscope_queued = Dispatch::new(tracing_subscriber::registry().with(layer));
    event_in_request_span(c, "periscope-log (non-blocking writer)", periscope_queued);

    let fmt_json = Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .finish(),
    );
    event_in_request_span(c, "tracing-subscriber fmt().json()", fmt_json);

    let json_subscriber = Dispatch::new(json_subscriber::fmt().with_writer(std::io::sink).finish());
    event_in_request_span(c, "json-subscriber", json_subscriber);
}

/// A 64 KiB JSON request body logged as a field (parsed and redacted by key): thousands of
/// `name` and `value` members, beside a body of the same size with distinct keys. Redaction
/// should cost the body's length, not names times values.
fn request_bodies(c: &mut Criterion) {
    let (layer, _guard) = LogLayer::builder()
        .writer(std::io::sink())
        .blocking(true)
        .max_value_bytes(128 * 1024)
        .build();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let body = |member: &dyn Fn(usize) -> String| {
        let mut body = String::from("{");
        let mut i = 0;
        while body.len() < 64 * 1024 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&member(i));
            i += 1;
        }
        body.push('}');
        body
    };
    let names_and_values = body(&|i| {
        if i % 2 == 0 {
            r#""name":"a""#.to_owned()
        } else {
            r#""value":1"#.to_owned()
        }
    });
    let distinct = body(&|i| format!(r#""k{i}":1"#));
    let mut group = c.benchmark_group("request_body_field");
    tracing::dispatcher::with_default(&dispatch, || {
        for (name, text) in [
            ("names_and_values", &names_and_values),
            ("distinct_keys", &distinct),
        ] {
            group.bench_function(name, |b| {
                b.iter(|| tracing::info!(body = text.as_str(), "request"))
            });
        }
    });
    group.finish();
}

criterion_group!(benches, formatters, request_bodies);
criterion_main!(benches);

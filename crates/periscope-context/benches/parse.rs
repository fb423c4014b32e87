//! Parsing incoming trace context, side by side with OpenTelemetry's `TraceContextPropagator`;
//! and a hostile `baggage` header beside an ordinary one of the same length.
//!
//! Run: `cargo bench -p periscope-context --bench parse`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use opentelemetry::propagation::{Extractor as OtelExtractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use periscope_context::{
    Baggage, ExtractOptions, RequestId, TraceParent, TraceState, extract, headers,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// The same `HeaderMap` read through OpenTelemetry's extractor trait.
struct OtelHeaders<'a>(&'a HeaderMap);

impl OtelExtractor for OtelHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

fn incoming() -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(headers::TRACEPARENT, TRACEPARENT.parse().unwrap());
    map.insert(headers::TRACESTATE, TRACESTATE.parse().unwrap());
    map
}

fn parse(c: &mut Criterion) {
    let map = incoming();
    let mut group = c.benchmark_group("extract_trace_context");
    group.bench_function("periscope_parse_and_generate_request_id", |b| {
        b.iter(|| {
            let tp = TraceParent::parse_bytes(black_box(&map)[&headers::TRACEPARENT].as_bytes());
            let ts = TraceState::parse_headers(
                map.get_all(headers::TRACESTATE)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
            black_box((tp, ts, RequestId::generate()))
        })
    });
    let options = ExtractOptions::default();
    group.bench_function("periscope_extract_full_context", |b| {
        b.iter(|| black_box(extract(black_box(&map), &options)))
    });
    let propagator = TraceContextPropagator::new();
    group.bench_function("opentelemetry_trace_context_propagator", |b| {
        b.iter(|| {
            let cx = propagator.extract(&OtelHeaders(black_box(&map)));
            black_box(cx.span().span_context().trace_id())
        })
    });
    group.finish();

    let mut parts = c.benchmark_group("parts");
    parts.bench_function("traceparent_parse", |b| {
        b.iter(|| black_box(TraceParent::parse(black_box(TRACEPARENT))))
    });
    parts.bench_function("tracestate_parse", |b| {
        b.iter(|| black_box(TraceState::parse(black_box(TRACESTATE))))
    });
    parts.bench_function("request_id_generate", |b| {
        b.iter(|| black_box(RequestId::generate()))
    });
    parts.finish();

    // A hostile `baggage` header of 64 KiB (the server's head limit): one member filling the
    // 8192 bytes, then thousands of members with an `=` in their value, each refused at the
    // limit; beside the same length of members without one. Each refusal should cost its own
    // bytes, not a pass over the kept member.
    let filled = format!("k={}", "%20".repeat(2730));
    let header = |member: &str| {
        let mut header = filled.clone();
        while header.len() + member.len() < 64 * 1024 {
            header.push(',');
            header.push_str(member);
        }
        header
    };
    let (hostile, ordinary) = (header("a=="), header("a=b"));
    let mut baggage = c.benchmark_group("baggage_refused_at_the_limit");
    baggage.bench_function("members_with_an_equals_sign", |b| {
        b.iter(|| black_box(Baggage::parse(black_box(&hostile))))
    });
    baggage.bench_function("members_without_one", |b| {
        b.iter(|| black_box(Baggage::parse(black_box(&ordinary))))
    });
    baggage.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);

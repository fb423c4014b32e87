//! With feature `otel`: a thread that entered an exported span but logged no line of its own
//! (OpenTelemetry's context first used by the span, after a thread-local of the service's), and
//! whose thread-local then logs from its destructor: the line is written, not a read of the
//! destroyed context that aborts the process. In its own file: it needs the global default
//! subscriber, the only one a dying thread's destructors still reach.
#![cfg(feature = "otel")]

mod common;

use common::Captured;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use periscope_log::LogLayer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Logs, outside any request, when the thread that holds it ends.
struct LogsOnDrop;

impl Drop for LogsOnDrop {
    fn drop(&mut self) {
        tracing::warn!(pool = "db", "connection pool closed");
    }
}

thread_local! {
    static LOGS_ON_DROP: LogsOnDrop = const { LogsOnDrop };
}

#[test]
fn a_line_from_a_thread_local_destructor_after_an_exported_span_is_written() {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let provider = SdkTracerProvider::builder().build();
    let export = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(LevelFilter::INFO);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(layer).with(export),
    )
    .unwrap();
    std::thread::spawn(|| {
        tracing::dispatcher::get_default(|dispatch| dispatch.current_span());
        // The service's thread-local first, then an exported span, and no line of its own.
        LOGS_ON_DROP.with(|_| {});
        tracing::info_span!("warm_up").in_scope(|| {});
    })
    .join()
    .expect("the thread ends cleanly");
    drop(guard);
    let lines = out.lines();
    let messages: Vec<_> = lines.iter().map(|l| l["message"].clone()).collect();
    assert_eq!(messages, ["connection pool closed"]);
    assert_eq!(lines[0]["data"]["pool"], "db");
}

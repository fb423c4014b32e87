//! The log level is the log's alone: at `LOG_LEVEL=warn` (or after `/debug/log-level` set
//! `warn`), the `info` spans and events the OpenTelemetry export takes are still exported. A
//! binary of its own: `init` installs the global subscriber.
#![cfg(feature = "otel")]

#[allow(dead_code)] // the writer alone: this binary installs the global subscriber
mod capture;

use std::time::Duration;

use capture::Captured;
use fake_opentelemetry_collector::FakeCollectorServer;
use periscope::Observability;

#[test]
fn info_spans_are_exported_whatever_the_log_level() {
    let collector_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = collector_runtime
        .block_on(FakeCollectorServer::start())
        .unwrap();
    let endpoint = collector.endpoint();
    let written = Captured::default();
    let obs = Observability::builder()
        .log_writer(written.clone())
        .env_from(|name| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
            "LOG_LEVEL" => Some("warn".to_owned()),
            _ => None,
        })
        .unwrap()
        .build()
        .unwrap();
    let guard = obs.init().unwrap();
    tracing::info_span!("model_load").in_scope(|| tracing::info!("model loaded"));
    // Quieter still at runtime, as `/debug/log-level` sets it.
    obs.level_control().set("error".parse().unwrap());
    tracing::info_span!("warm_cache").in_scope(|| tracing::warn!("cache cold"));
    drop(guard);

    let exported = collector_runtime.block_on(collector.exported_spans(2, Duration::from_secs(10)));
    for (span, event) in [("model_load", "model loaded"), ("warm_cache", "cache cold")] {
        let exported_span = exported
            .iter()
            .find(|exported| exported.name == span)
            .unwrap_or_else(|| panic!("{span} not exported: {exported:?}"));
        assert!(
            exported_span.events.iter().any(|e| e.name == event),
            "{exported:?}"
        );
    }
    // The log itself kept to its level.
    let log = String::from_utf8(written.bytes()).unwrap();
    assert!(!log.contains("model loaded"), "{log}");
    assert!(!log.contains("cache cold"), "{log}");
}

//! The NVML collector on a machine without NVIDIA (CI): it starts, reports
//! `gpu_collector_up 0`, warns once with the reason, and scrapes still succeed.
//! On a machine with a GPU the same test checks the opposite: up, with devices.
//! Its own test binary: it installs a global tracing subscriber to count warnings.
#![cfg(feature = "nvml")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use periscope_gpu::{GpuCollector, GpuError, GpuSource, NvmlSource, SampleRequest};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(String);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().starts_with("periscope_gpu") {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().expect("not poisoned").push(fields.0);
        }
    }
}

#[test]
fn nvml_collector_without_a_driver_is_down_warns_once_and_scrapes() {
    let warnings = Warnings::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings.clone()))
        .expect("only test in this binary to set the subscriber");

    let has_gpu = match NvmlSource::new().sample(SampleRequest::default()) {
        Ok(sample) => !sample.devices.is_empty(),
        Err(GpuError::Unavailable { reason }) => {
            assert!(!reason.is_empty());
            false
        }
        Err(other) => panic!("NVML loaded but failed to read: {other}"),
    };

    // Retries every 100 ms so the test sees several failed attempts.
    let gpu = GpuCollector::builder()
        .interval(Duration::from_millis(100))
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(100))
        .start_nvml()
        .expect("the collector starts with or without a driver");
    for _ in 0..3 {
        assert!(
            gpu.refresh(Duration::from_secs(10)),
            "the sampler keeps running"
        );
    }
    let (text, exp) = common::scrape(&gpu);
    let snapshot = gpu.snapshot();

    if has_gpu {
        assert_eq!(exp.value("gpu_collector_up", &[]), Some(1.0), "{text}");
        assert!(!exp.named("gpu_info").is_empty(), "{text}");
        assert!(warnings.0.lock().unwrap().is_empty());
        return;
    }
    assert_eq!(exp.value("gpu_collector_up", &[]), Some(0.0), "{text}");
    assert!(
        exp.value("gpu_collector_errors_total", &[]).unwrap() >= 3.0,
        "{text}"
    );
    assert!(
        exp.named("gpu_collector_last_success_timestamp_seconds")
            .is_empty()
    );
    assert!(!exp.has_family("gpu_info"), "{text}");
    assert!(!snapshot.up);
    assert_eq!(snapshot.source, "nvml");
    assert!(snapshot.devices.is_empty());
    assert!(snapshot.last_error.unwrap().contains("unavailable"));

    let warnings = warnings.0.lock().unwrap().clone();
    assert_eq!(
        warnings.len(),
        1,
        "exactly one warning per outage: {warnings:?}"
    );
    assert!(
        warnings[0].contains("GPU readings are unavailable"),
        "{warnings:?}"
    );
    gpu.shutdown();
}

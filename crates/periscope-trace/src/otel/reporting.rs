//! Failed exports said in the log. The SDK drops a batch it could not send without a word (its
//! own logs are off in this build), so a collector that is down, unreachable or refusing the
//! spans would go unnoticed until someone looked for a trace and found none.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The tracing target of the export's warnings (`OTLP export failed`, at `warn`) and of the
/// line saying it works again (`OTLP export works again`, at `info`).
pub const EXPORT_TARGET: &str = "periscope_trace::otel";

/// At most one warning per interval while exports keep failing, with the counts since the last.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Wraps the OTLP exporter: the first failed export is warned about at once, later ones at
/// most once a minute with how many batches and spans were lost since, and the first export
/// that succeeds again says so at `info`.
#[derive(Debug)]
pub(super) struct ReportingExporter<E> {
    inner: E,
    /// The traces endpoint, its credentials masked.
    endpoint: String,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    failing: bool,
    last_warning: Option<Instant>,
    /// Lost since the last warning.
    batches: u64,
    spans: u64,
}

impl<E> ReportingExporter<E> {
    pub(super) fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            failures: Mutex::default(),
        }
    }

    fn failed(&self, spans: usize, error: &OTelSdkError) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.failing = true;
        failures.batches += 1;
        failures.spans += spans as u64;
        let now = Instant::now();
        if failures
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            target: EXPORT_TARGET,
            endpoint = %self.endpoint,
            error = %error,
            lost_batches = failures.batches,
            lost_spans = failures.spans,
            "OTLP export failed: spans were dropped; check the collector and OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        failures.last_warning = Some(now);
        failures.batches = 0;
        failures.spans = 0;
    }

    fn succeeded(&self) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !failures.failing {
            return;
        }
        tracing::info!(
            target: EXPORT_TARGET,
            endpoint = %self.endpoint,
            lost_batches = failures.batches,
            lost_spans = failures.spans,
            "OTLP export works again"
        );
        *failures = Failures::default();
    }
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            match &result {
                Ok(()) => self.succeeded(),
                Err(error) => self.failed(spans, error),
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

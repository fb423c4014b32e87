//! Failed exports, and spans dropped on a full queue, said in the log. The SDK drops a batch
//! it could not send, or a span its queue has no room for, without a word (its own logs are off
//! in this build), so a collector that is down, unreachable or refusing the spans, or more spans
//! than export keeps up with, would go unnoticed until someone looked for a trace and found none.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::queue::SpanQueue;

/// The tracing target of the export's warnings (`OTLP export failed` and `OTLP export queue
/// full`, at `warn`) and of the line saying export works again (`OTLP export works again`, at
/// `info`).
pub const EXPORT_TARGET: &str = "periscope_trace::otel";

/// At most one warning of a kind per interval while the trouble lasts, with the counts since
/// the last.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a warning last given at `last` may be given again.
fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL)
}

/// Wraps the OTLP exporter: the first failed export is warned about at once, later ones at
/// most once a minute with how many batches and spans were lost since, and the first export
/// that succeeds again says so at `info`. Spans dropped because the queue was full are warned
/// about the same way, on the next export (the queue is full, so one follows), and those not
/// yet said at shutdown.
#[derive(Debug)]
pub(super) struct ReportingExporter<E> {
    inner: E,
    /// The traces endpoint, its credentials masked.
    endpoint: String,
    failures: Mutex<Failures>,
    queue: Arc<SpanQueue>,
    /// When spans dropped on a full queue were last warned about.
    last_drop_warning: Mutex<Option<Instant>>,
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
    pub(super) fn new(inner: E, endpoint: String, queue: Arc<SpanQueue>) -> Self {
        Self {
            inner,
            endpoint,
            failures: Mutex::default(),
            queue,
            last_drop_warning: Mutex::default(),
        }
    }

    fn failed(&self, spans: usize, error: &OTelSdkError) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.failing = true;
        failures.batches += 1;
        failures.spans += spans as u64;
        let now = Instant::now();
        if !due(failures.last_warning, now) {
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

    /// Warns about the spans dropped on a full queue since the last warning, when one is due
    /// (or `always`, at shutdown).
    fn report_drops(&self, always: bool) {
        if !self.queue.has_dropped() {
            return;
        }
        let mut last = self
            .last_drop_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !always && !due(*last, now) {
            return;
        }
        let dropped = self.queue.take_dropped();
        if dropped == 0 {
            return;
        }
        tracing::warn!(
            target: EXPORT_TARGET,
            endpoint = %self.endpoint,
            dropped_spans = dropped,
            max_queue_size = self.queue.capacity(),
            "OTLP export queue full: spans were dropped; raise OTEL_BSP_MAX_QUEUE_SIZE, sample fewer traces (OTEL_TRACES_SAMPLER_ARG) or check the collector"
        );
        *last = Some(now);
    }
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        // Out of the queue: room for as many spans again.
        self.queue.taken(spans);
        self.report_drops(false);
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
        // The last export is done: no drop goes unsaid.
        self.report_drops(true);
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

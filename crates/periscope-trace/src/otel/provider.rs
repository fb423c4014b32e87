//! Building the tracer provider and keeping it alive: the guard.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::resource::{
    ResourceDetector, SdkProvidedResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::registry::LookupSpan;

use super::config::{ExportSettings, OtelConfig, Protocol};
use super::filter::{ExportFilter, export_filter};
use super::queue::{QueueGuard, SpanQueue};
use super::reporting::ReportingExporter;
use crate::propagation::Propagators;
use crate::sampler::Sampler;

/// The tracing layer that turns periscope's spans (and the application's) into exported
/// OpenTelemetry spans, from `info` up and with the transport crates' own spans filtered out
/// (see [`OtelGuard::layer`]).
pub type OtelLayer<S> = Filtered<OpenTelemetryLayer<S, Tracer>, ExportFilter<S>, S>;

/// The layer [`OtelGuard::layer`] gives, exporting through `tracer`: for a tracer provider
/// built by hand (an in-memory exporter in a test, a provider with processors of its own).
///
/// Filtered by [`export_filter`]. The spans it exports carry neither `tracing-opentelemetry`'s
/// `busy_ns` / `idle_ns` (two clock reads each time a span is entered and exited, and
/// periscope enters the request span for each poll of the response and its body) nor
/// `thread.id` / `thread.name` (the thread a request's span happened to start on, a name
/// copied for every span): together about 2,500 to 3,000 instructions per exported request.
/// Their code location (`code.file.path`, `code.module.name`, `code.line.number`) is kept.
/// A layer built from [`OtelGuard::tracer`] with `tracing_opentelemetry::layer()` has them all.
///
/// ```
/// use periscope_trace::otel::{layer_for, opentelemetry::trace::TracerProvider as _};
/// use periscope_trace::otel::opentelemetry_sdk::trace::SdkTracerProvider;
/// use tracing_subscriber::{Registry, layer::SubscriberExt};
///
/// let provider = SdkTracerProvider::builder().build();
/// let _subscriber = Registry::default().with(layer_for(provider.tracer("my-service")));
/// ```
pub fn layer_for<S>(tracer: Tracer) -> OtelLayer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(export_filter())
}

/// Why the tracer provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The runtime that runs OTLP export over gRPC, or its thread, could not be started.
    #[error("could not start the OTLP export runtime or its thread: {0}")]
    ExportThread(#[source] std::io::Error),
    /// An endpoint set in code is not one the exporter can send to (the environment's are
    /// checked when read): named by its field, `endpoint` or `traces_endpoint_override`.
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// The exporter rejected its settings.
    #[error("could not build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The traces endpoint, its credentials and query masked.
        endpoint: String,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The Tokio runtime OTLP export runs on: one thread of its own, stopped when the guard drops.
/// tonic's connection, or hyper's requests, live there rather than on the application's
/// runtime, so `install` works from any thread, and the guard's last flush neither waits on a
/// current-thread runtime it is blocking nor on one already shut down.
#[derive(Debug)]
struct ExportThread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ExportThread {
    fn start() -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        // The runtime is made, run and dropped on its own thread, never in the caller's
        // (which may be async code, where dropping a runtime panics).
        std::thread::Builder::new()
            .name("periscope-otlp".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        // Until the guard drops (or its sender is gone).
                        let _ = runtime.block_on(stopped);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })?;
        let runtime = handle
            .recv()
            .map_err(|_| std::io::Error::other("the OTLP export thread ended at once"))??;
        Ok(Self {
            runtime,
            stop: Some(stop),
        })
    }
}

/// OTLP over HTTP sent by hyper on the export thread's runtime; the SDK's batch thread, outside
/// any runtime, awaits the answer.
#[derive(Debug)]
struct ExportHttpClient {
    runtime: tokio::runtime::Handle,
    hyper: HyperClient,
    headers: ExportHeaders,
}

/// The headers every export sends: those of the settings, read from the source they were
/// given by (`env_from(lookup)` included). The exporter also adds the process environment's
/// `_HEADERS` list itself, over the ones it is given: a stale token there would replace the
/// settings' fresh one. Set last, they win, and a header only the process environment names is
/// taken out.
#[derive(Clone, Debug)]
struct ExportHeaders {
    settings: std::sync::Arc<[(http::HeaderName, http::HeaderValue)]>,
    /// Names the process environment's lists give that the settings do not.
    process_only: std::sync::Arc<[http::HeaderName]>,
}

impl ExportHeaders {
    fn new(settings: Vec<(http::HeaderName, http::HeaderValue)>) -> Self {
        let process_only = [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok())
        .flat_map(|list| super::config::header_names(&list))
        .filter(|name| !settings.iter().any(|(given, _)| given == name))
        .collect();
        Self {
            settings: settings.into(),
            process_only,
        }
    }

    /// Makes `headers` carry the settings' headers, whatever the exporter put there.
    fn settle(&self, headers: &mut http::HeaderMap) {
        for name in self.process_only.iter() {
            headers.remove(name);
        }
        for (name, _) in self.settings.iter() {
            headers.remove(name);
        }
        for (name, value) in self.settings.iter() {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl HttpClient for ExportHttpClient {
    // `HttpClient` is an `async_trait`: this is the signature it expands `async fn` to.
    fn send_bytes<'client, 'future>(
        &'client self,
        request: http::Request<bytes::Bytes>,
    ) -> Pin<
        Box<dyn Future<Output = Result<http::Response<bytes::Bytes>, HttpError>> + Send + 'future>,
    >
    where
        'client: 'future,
        Self: 'future,
    {
        let mut request = request;
        self.headers.settle(request.headers_mut());
        let hyper = self.hyper.clone();
        let sent = self
            .runtime
            .spawn(async move { hyper.send_bytes(request).await });
        Box::pin(async move {
            sent.await
                .map_err(|stopped| Box::new(stopped) as HttpError)?
        })
    }
}

/// The batch processor's settings: those [`OtelConfig::from_lookup`] read, over the SDK's
/// defaults. (The SDK reads `OTEL_BSP_*` itself, as they are, and would ignore a value with a
/// space around it, `OTEL_BSP_SCHEDULE_DELAY=" 100"`, without a word; set here, they win.)
fn batch_config(export: &ExportSettings) -> opentelemetry_sdk::trace::BatchConfig {
    let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_queue_size(queue_size(export))
        .with_scheduled_delay(scheduled_delay(export));
    if let Some(size) = export.max_export_batch_size {
        config = config.with_max_export_batch_size(size);
    }
    config.build()
}

/// The batch processor's queue: the configured size, else what the SDK would read from the
/// process environment itself, else its default. Always given to the processor, so that
/// [`SpanQueue`] guards a queue of exactly this size. Kept from 1 to what `from_lookup`
/// accepts, wherever it comes from (set in code, or the process environment under another
/// lookup): the processor allocates the whole queue at once (a larger one panicked on
/// `capacity overflow` or aborted), and one of 0 drops every span.
fn queue_size(export: &ExportSettings) -> usize {
    use opentelemetry_sdk::trace::{OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT};
    let largest = usize::try_from(super::config::MAX_SPAN_QUEUE).unwrap_or(usize::MAX);
    export
        .max_queue_size
        .or_else(|| std::env::var(OTEL_BSP_MAX_QUEUE_SIZE).ok()?.parse().ok())
        .unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT)
        .clamp(1, largest)
}

/// The shortest wait between the batch processor's rounds: with none, its thread polls for
/// spans without pause, a whole core busy while the service idles.
const MIN_SCHEDULED_DELAY: Duration = Duration::from_millis(1);

/// The wait between exports: the configured one, else what the SDK would read from the
/// process environment itself, else its default; at least [`MIN_SCHEDULED_DELAY`].
fn scheduled_delay(export: &ExportSettings) -> Duration {
    use opentelemetry_sdk::trace::{OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_SCHEDULE_DELAY_DEFAULT};
    export
        .scheduled_delay
        .or_else(|| {
            let millis = std::env::var(OTEL_BSP_SCHEDULE_DELAY).ok()?.parse().ok()?;
            Some(Duration::from_millis(millis))
        })
        .unwrap_or(OTEL_BSP_SCHEDULE_DELAY_DEFAULT)
        .max(MIN_SCHEDULED_DELAY)
}

/// The OTLP exporters' default timeout.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for ExportThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl OtelConfig {
    /// Builds the tracer provider, registers it and the propagators as OpenTelemetry's
    /// globals (so other instrumented libraries agree) and the propagators and the sampler as
    /// periscope's ([`Propagators::set_global`], [`Sampler::set_global`]), and returns the
    /// guard that keeps it.
    ///
    /// Without an endpoint, or with `OTEL_SDK_DISABLED=true`, nothing is exported and
    /// [`OtelGuard::layer`] is `None`: ids and sampling then come from the periscope layers,
    /// which decide by the same sampler.
    pub fn install(self) -> Result<OtelGuard, InstallError> {
        let guard = self.build()?;
        guard.register_globals();
        Ok(guard)
    }

    /// Builds the tracer provider and its exporter as [`install`](Self::install) does, but
    /// registers nothing global yet: call [`OtelGuard::register_globals`] once the tracing
    /// subscriber is installed. A process whose subscriber could not be installed (another one
    /// was first) then keeps OpenTelemetry's globals as they were, instead of a provider that
    /// is shut down when the guard drops.
    pub fn build(self) -> Result<OtelGuard, InstallError> {
        if !self.disabled {
            // Fields set in code get the checks the environment's values got when read: an
            // `https://` URL or one with credentials would otherwise fail every export.
            for (field, url) in [
                ("endpoint", &self.endpoint),
                ("traces_endpoint_override", &self.traces_endpoint_override),
            ] {
                if let Some(url) = url {
                    super::config::check_url(field, url.clone())?;
                }
            }
        }
        let endpoint = self.traces_endpoint().filter(|_| !self.disabled);
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(super::config::sdk_sampler(self.sampler))
            .with_resource(self.resource());
        let mut export_thread = None;
        if let Some(endpoint) = &endpoint {
            let thread = ExportThread::start().map_err(InstallError::ExportThread)?;
            let timeout = self.export.timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT);
            let headers = ExportHeaders::new(self.export.headers.clone());
            let exporter = match self.protocol {
                Protocol::Grpc => {
                    // tonic puts its connection on the runtime current while it is built.
                    let _on_export_thread = thread.runtime.enter();
                    let metadata = headers.clone();
                    SpanExporter::builder()
                        .with_tonic()
                        .with_timeout(timeout)
                        // Runs after the exporter added its metadata, the process
                        // environment's included.
                        .with_interceptor(move |mut request: tonic::Request<()>| {
                            let mut sent = std::mem::take(request.metadata_mut()).into_headers();
                            metadata.settle(&mut sent);
                            *request.metadata_mut() =
                                tonic::metadata::MetadataMap::from_headers(sent);
                            Ok(request)
                        })
                        .with_endpoint(endpoint.clone())
                        .build()
                }
                Protocol::HttpProtobuf => SpanExporter::builder()
                    .with_http()
                    .with_http_client(ExportHttpClient {
                        runtime: thread.runtime.clone(),
                        hyper: HyperClient::with_default_connector(timeout, None),
                        headers,
                    })
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(timeout)
                    .with_endpoint(endpoint.clone())
                    .build(),
            }
            .map_err(|source| InstallError::Exporter {
                endpoint: super::config::without_credentials(endpoint).into_owned(),
                source,
            })?;
            let queue = SpanQueue::new(queue_size(&self.export));
            let exporter = ReportingExporter::new(
                exporter,
                super::config::without_credentials(endpoint).into_owned(),
                queue.clone(),
            );
            builder = builder.with_span_processor(QueueGuard::new(
                opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch_config(&self.export))
                    .build(),
                queue,
            ));
            export_thread = Some(thread);
        }
        let provider = builder.build();
        let exporting = endpoint.is_some();
        Ok(OtelGuard {
            tracer: provider.tracer("periscope"),
            provider,
            propagators: self.propagators,
            sampler: self.sampler,
            exporting,
            _export_thread: export_thread,
        })
    }
}

impl OtelConfig {
    /// The SDK's own attributes, then `OTEL_RESOURCE_ATTRIBUTES` as read by `from_lookup`
    /// (the SDK's reader would not percent-decode it), then the service name.
    fn resource(&self) -> Resource {
        let detectors: [Box<dyn ResourceDetector>; 2] = [
            Box::new(SdkProvidedResourceDetector),
            Box::new(TelemetryResourceDetector),
        ];
        let mut resource = Resource::builder_empty()
            .with_detectors(&detectors)
            .with_attributes(
                self.resource_attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            );
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        resource.build()
    }
}

fn set_global_propagator(propagators: Propagators) {
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    let mut formats: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    if propagators.trace_context() {
        formats.push(Box::new(TraceContextPropagator::new()));
    }
    if propagators.baggage() {
        formats.push(Box::new(BaggagePropagator::new()));
    }
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(formats));
}

/// Keeps the tracer provider alive; flushes the spans still buffered and shuts the exporter
/// down when dropped.
///
/// Drop it (or call [`OtelGuard::shutdown`]) at the end of `main`, after the server has
/// stopped: flushing waits for the export to finish, at most about 10 s (the SDK waits 5 s
/// for the flush, then 5 s for the shutdown; less when `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// shorter). Export, over gRPC or HTTP, runs on threads of its own, so the flush works on any
/// runtime, inside async code or after the runtime is gone.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the tracer provider down: nothing is exported after; keep \
              it in a variable until the end of `main`"]
pub struct OtelGuard {
    provider: SdkTracerProvider,
    tracer: Tracer,
    propagators: Propagators,
    /// Made the process's sampler by `register_globals`: the layers decide with it where no
    /// OpenTelemetry layer does (nothing exported).
    sampler: Sampler,
    exporting: bool,
    /// Declared last: stopped only once the provider has flushed and shut down.
    _export_thread: Option<ExportThread>,
}

impl OtelGuard {
    /// The layer to add to the tracing subscriber; `None` when nothing is exported.
    ///
    /// Spans and events are exported from `info` up (debug spans and lines are not, and the
    /// export does not turn their callsites on); those of the crates the export runs on (`h2`,
    /// `hyper`, `tonic`, `tower`, the `opentelemetry` crates:
    /// [`ExportLevels`](super::ExportLevels)) from `warn` up, so exporting can never feed
    /// on its own telemetry; the events of a request whose trace is not sampled are not given
    /// to the layer at all ([`export_filter`]). For another filter,
    /// build a layer from [`OtelGuard::tracer`].
    ///
    /// With this layer, the `trace_id` and `span_id` that periscope's spans record (and so
    /// the log lines) are the ids of the exported spans, and the `sampled` flag sent
    /// downstream is the sampler's decision.
    pub fn layer<S>(&self) -> Option<OtelLayer<S>>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        self.exporting.then(|| layer_for(self.tracer.clone()))
    }

    /// Registers the provider (when it exports) and the propagators as OpenTelemetry's
    /// globals, so other instrumented libraries agree, and the propagators and the sampler as
    /// periscope's ([`Propagators::set_global`], [`Sampler::set_global`]: without export the
    /// layers decide sampling with it). [`OtelConfig::install`] calls it; call it yourself after
    /// [`OtelConfig::build`].
    pub fn register_globals(&self) {
        if self.exporting {
            opentelemetry::global::set_tracer_provider(self.provider.clone());
        }
        set_global_propagator(self.propagators);
        self.propagators.set_global();
        self.sampler.set_global();
    }

    /// Whether spans are exported (an endpoint is set and the SDK is not disabled).
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// The tracer periscope's layer exports through.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The tracer provider (for a custom layer, or more tracers).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// The propagation formats (`OTEL_PROPAGATORS`), for
    /// [`CorrelationLayer::propagators`](crate::CorrelationLayer::propagators) and
    /// [`ClientTraceLayer::propagators`](crate::ClientTraceLayer::propagators).
    pub fn propagators(&self) -> Propagators {
        self.propagators
    }

    /// Exports every span still buffered, waiting for the exporter.
    pub fn flush(&self) -> OTelSdkResult {
        self.provider.force_flush()
    }

    /// Flushes, then shuts the exporter down, reporting what failed.
    pub fn shutdown(self) -> OTelSdkResult {
        let flushed = self.provider.force_flush();
        let shut = self.provider.shutdown();
        flushed.and(shut)
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        // Shutting down twice (after `shutdown`) only reports an error, which is ignored here:
        // there is nobody left to tell.
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

#[cfg(test)]
mod tests {
    /// A schedule delay of 0 (export at once) is taken as 1 ms: at 0 the batch processor's
    /// thread polled for spans without pause, a whole core busy while the service idled
    /// (`a_schedule_delay_of_zero_does_not_keep_a_core_busy` measures that, ignored by
    /// default). A delay given is kept.
    #[test]
    fn a_zero_schedule_delay_is_taken_as_one_millisecond() {
        let settings = |delay| ExportSettings {
            scheduled_delay: Some(delay),
            ..ExportSettings::default()
        };
        assert_eq!(
            scheduled_delay(&settings(Duration::ZERO)),
            MIN_SCHEDULED_DELAY
        );
        assert_eq!(MIN_SCHEDULED_DELAY, Duration::from_millis(1));
        let delay = Duration::from_millis(100);
        assert_eq!(scheduled_delay(&settings(delay)), delay);
    }

    use super::*;
    use opentelemetry::{Key, Value};

    #[test]
    fn the_resource_holds_the_decoded_attributes_and_the_service_name_wins() {
        let config = OtelConfig::from_lookup(|name| match name {
            "OTEL_RESOURCE_ATTRIBUTES" => {
                Some("service.name=from-attributes,deployment.environment=eu%20west".to_owned())
            }
            "SERVICE_NAME" => Some("checkout".to_owned()),
            _ => None,
        })
        .unwrap();
        let resource = config.resource();
        assert_eq!(
            resource.get(&Key::new("deployment.environment")),
            Some(Value::from("eu west"))
        );
        assert_eq!(
            resource.get(&Key::new("service.name")),
            Some(Value::from("checkout"))
        );
        assert!(resource.get(&Key::new("telemetry.sdk.name")).is_some());
    }
}

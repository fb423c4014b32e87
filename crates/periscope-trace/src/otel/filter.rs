//! What the OpenTelemetry layer is given: the export's own filter.

use periscope_context::RequestContext;
use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::filter::combinator::And;
use tracing_subscriber::filter::{FilterExt, LevelFilter};
use tracing_subscriber::layer::{Context, Filter};

/// The crates the exporter itself runs on. Their debug spans would be exported by the export
/// they describe, feeding on themselves: only their warnings and errors are kept.
const TRANSPORT_CRATES: [&str; 10] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
    "opentelemetry_proto",
];

/// The filter of [`OtelGuard::layer`](super::OtelGuard::layer): spans and events from `info`
/// up, the transport crates' from `warn` up ([`ExportLevels`]), and no events of a request
/// whose trace is not sampled ([`SampledEvents`]).
pub type ExportFilter<S> = And<ExportLevels, SampledEvents, S>;

/// The filter [`OtelGuard::layer`](super::OtelGuard::layer) puts on its layer, for a layer
/// built from [`OtelGuard::tracer`](super::OtelGuard::tracer) to filter the same way.
///
/// Spans and events are exported from `info` up (as periscope's own spans are), so the export
/// neither sends every library's debug spans and lines nor turns their callsites on (and with
/// them the `log` crate's records) whatever the log level; those of the crates the export
/// runs on (`h2`, `hyper`, `hyper_util`, `tonic`, `tower` and the `opentelemetry` crates) from
/// `warn` up, so exporting can never feed on its own telemetry.
///
/// ```
/// use periscope_trace::otel::{export_filter, opentelemetry::trace::TracerProvider as _};
/// use periscope_trace::otel::{opentelemetry_sdk::trace::SdkTracerProvider, tracing_opentelemetry};
/// use tracing_subscriber::{Layer, Registry, layer::SubscriberExt};
///
/// let provider = SdkTracerProvider::builder().build();
/// let layer = tracing_opentelemetry::layer()
///     .with_tracer(provider.tracer("my-service"))
///     .with_filter(export_filter());
/// let _subscriber = Registry::default().with(layer);
/// ```
pub fn export_filter<S>() -> ExportFilter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    ExportLevels.and(SampledEvents)
}

/// The levels exported: `info` up, and `warn` up for the crates the export runs on. A crate is
/// told by its whole name (`hyper`, `hyper::proto`), not by a prefix as `tracing`'s target
/// filters do: a service crate named `hyperswitch` or `towerd` keeps its `info` spans.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportLevels;

impl ExportLevels {
    fn level_for(target: &str) -> LevelFilter {
        let of_crate = |name: &str| {
            target
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        };
        if TRANSPORT_CRATES.iter().any(|name| of_crate(name)) {
            LevelFilter::WARN
        } else {
            LevelFilter::INFO
        }
    }
}

impl<S> Filter<S> for ExportLevels {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        *metadata.level() <= Self::level_for(metadata.target())
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if *metadata.level() <= Self::level_for(metadata.target()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

/// Keeps from the OpenTelemetry layer the events of a request whose trace is not sampled (the
/// current [`RequestContext`]'s flag): the SDK drops them with the span they would belong to,
/// after `tracing-opentelemetry` has turned each of their fields into an attribute (about
/// 5,900 instructions for the access line alone). Spans are let through, but for one that
/// would be the root of a trace of its own under such a context: a span of the service's own
/// opened outside any span while an unsampled context is current (a probe path's work, a
/// health check run in a task of its own), which the export would otherwise sample as a new
/// trace on every probe, under ids no log line carries. A span the layer did not see has no
/// OpenTelemetry context, so code that propagates the trace from a span
/// (`OpenTelemetrySpanExt::context`) sends none downstream from those; periscope's own spans
/// (server, client, job), which take their parent from the context, are always let through.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampledEvents;

impl<S> Filter<S> for SampledEvents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        if RequestContext::current_is_sampled() != Some(false) {
            return true;
        }
        !metadata.is_event()
            && (metadata.target().starts_with(PERISCOPE_SPANS) || cx.lookup_current().is_some())
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
}

/// The target prefix of periscope's own spans (server, client, job).
const PERISCOPE_SPANS: &str = "periscope_trace::";

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use periscope_context::{RequestContext, TraceFlags};
    use tracing::span;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, Registry};

    use super::export_filter;

    /// The names of the spans and the messages of the events a layer was given.
    #[derive(Clone, Default)]
    struct Given(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Given {
        fn on_new_span(
            &self,
            attrs: &span::Attributes<'_>,
            _: &span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(format!("span {}", attrs.metadata().name()));
        }

        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(format!("event {}", message.0));
        }
    }

    fn context(sampled: bool) -> RequestContext {
        let mut ctx = RequestContext::new_root();
        ctx.trace_flags = TraceFlags::default().with_sampled(sampled);
        ctx
    }

    #[test]
    fn events_of_requests_not_sampled_are_kept_from_the_layer_and_spans_are_not() {
        let given = Given::default();
        let subscriber = Registry::default().with(given.clone().with_filter(export_filter()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any request");
            context(true).in_scope(|| {
                let _span = tracing::info_span!("sampled_span").entered();
                tracing::info!("in a sampled request");
            });
            context(false).in_scope(|| {
                let _span = tracing::info_span!("unsampled_span").entered();
                tracing::info!("in a request not sampled");
                tracing::error!("an error in a request not sampled");
            });
            // The rest of the filter: `info` up, the transport crates' from `warn` up.
            tracing::debug!("a detail");
            tracing::info!(target: "hyper::proto", "a transport step");
            tracing::warn!(target: "hyper::proto", "a transport warning");
            tracing::info!(target: "opentelemetry_sdk", "an export step");
            // A crate is told by its whole name: these are not the transport crates.
            tracing::info!(target: "hyperswitch_router::payments", "a service's line");
            let _span = tracing::info_span!(target: "towerd", "a_service_span").entered();
        });
        assert_eq!(
            *given.0.lock().unwrap(),
            [
                "event outside any request",
                "span sampled_span",
                "event in a sampled request",
                "span unsampled_span",
                "event a transport warning",
                "event a service's line",
                "span a_service_span",
            ]
        );
    }
}

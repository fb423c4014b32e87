//! What the OpenTelemetry layer is given: the export's own filter.

use periscope_context::RequestContext;
use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::filter::combinator::And;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter};

/// The crates the exporter itself runs on. Their debug spans would be exported by the export
/// they describe, feeding on themselves: only their warnings and errors are kept.
const TRANSPORT_TARGETS: [&str; 6] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
];

/// The filter of [`OtelGuard::layer`](super::OtelGuard::layer): spans and events from `info`
/// up, the transport crates' from `warn` up, and no events of a request whose trace is not
/// sampled ([`SampledEvents`]).
pub type ExportFilter<S> = And<Targets, SampledEvents, S>;

/// The filter [`OtelGuard::layer`](super::OtelGuard::layer) puts on its layer, for a layer
/// built from [`OtelGuard::tracer`](super::OtelGuard::tracer) to filter the same way.
///
/// Spans and events are exported from `info` up (as periscope's own spans are), so the export
/// neither sends every library's debug spans and lines nor turns their callsites on (and with
/// them the `log` crate's records) whatever the log level; those of the crates the export
/// runs on (`h2`, `hyper`, `tonic`, `tower`, `opentelemetry`) from `warn` up, so exporting can
/// never feed on its own telemetry.
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
pub fn export_filter<S>() -> ExportFilter<S> {
    let targets = TRANSPORT_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::INFO),
        |targets, target| targets.with_target(*target, LevelFilter::WARN),
    );
    targets.and(SampledEvents)
}

/// Keeps from the OpenTelemetry layer the events of a request whose trace is not sampled (the
/// current [`RequestContext`]'s flag): the SDK drops them with the span they would belong to,
/// after `tracing-opentelemetry` has turned each of their fields into an attribute (about
/// 5,900 instructions for the access line alone). Spans are all let through: a span the layer
/// did not see would have no OpenTelemetry context, and code that propagates the trace from a
/// span (`OpenTelemetrySpanExt::context`) would send none downstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampledEvents;

impl<S> Filter<S> for SampledEvents {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !metadata.is_event() || RequestContext::current_is_sampled() != Some(false)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_event() {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

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
        });
        assert_eq!(
            *given.0.lock().unwrap(),
            [
                "event outside any request",
                "span sampled_span",
                "event in a sampled request",
                "span unsampled_span",
                "event a transport warning",
            ]
        );
    }
}

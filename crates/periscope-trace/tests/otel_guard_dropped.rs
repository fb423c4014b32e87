//! A tracer provider shut down while its layer still serves (an `OtelGuard` dropped at once,
//! as a temporary in `install()?.layer()`) exports nothing: said once, in a warning that tells
//! what to do, rather than in silence. Alone in its binary: the warning is once per process.
#![cfg(feature = "otel")]

mod support;

use http::{Method, Uri};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use periscope_trace::ClientSpan;
use periscope_trace::otel::layer_for;
use support::Capture;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn a_layer_whose_provider_was_shut_down_says_so_once() {
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer("periscope-test");
    provider.shutdown().unwrap();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(layer_for(tracer))
        .with(capture.clone());
    let _default = support::set_default(subscriber);
    let uri: Uri = "http://inventory.internal/items".parse().unwrap();
    for _ in 0..3 {
        let call = ClientSpan::new(&Method::GET, &uri);
        // The ids are periscope's own, still valid and sent on.
        assert_ne!(call.context().trace_id.to_string(), "0".repeat(32));
    }
    let warnings: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|line| line.target == "periscope_trace::otel")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .message
            .contains("Keep the OtelGuard in a variable"),
        "{}",
        warnings[0].message
    );
}

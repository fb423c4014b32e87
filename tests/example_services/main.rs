//! The example services end to end: each test starts an example as its own process on an
//! ephemeral port of 127.0.0.1, talks to it over real sockets, reads its JSON log lines from
//! its stdout and its `/metrics` with a real parser, and stops it with a real SIGTERM.
//!
//! The examples' code is compiled into this test binary (`#[path]` modules below), and a test
//! starts a service by running this binary again with only the ignored `example_process`
//! test selected: no other build is needed, and `cargo test --all-targets` (which builds the
//! examples as test harnesses, not as programs) finds nothing missing.

// The examples, as modules. Their `main` is unused here: `example_process` calls `run`.
#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../../examples/inference_gateway/main.rs"]
mod gateway_app;
#[allow(dead_code)]
#[path = "../../examples/hyper_minimal/main.rs"]
mod hyper_minimal_app;
#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../../examples/multi_service/main.rs"]
mod multi_service_app;
#[allow(dead_code)]
#[path = "../../examples/trace_context_harness/main.rs"]
mod trace_context_harness_app;

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
mod support;

#[cfg(feature = "axum")]
mod gateway_otlp;
mod hyper_minimal;
#[cfg(feature = "axum")]
mod inference_gateway;
#[cfg(feature = "axum")]
mod multi_service;
#[cfg(all(feature = "axum", feature = "otel"))]
mod multi_service_otlp;
#[cfg(feature = "otel")]
mod otlp;
mod trace_context_harness;

/// The body of a service process: runs the example named by `PERISCOPE_EXAMPLE` until it
/// stops. Ignored, so a plain `cargo test` never runs it; `support::Service::start` runs it.
#[test]
#[ignore = "the process of an example service, started by the other tests"]
fn example_process() {
    let result = match std::env::var(support::EXAMPLE_VAR).as_deref() {
        #[cfg(feature = "axum")]
        Ok("inference_gateway") => gateway_app::run(),
        #[cfg(feature = "axum")]
        Ok("multi_service") => multi_service_app::run(),
        Ok("hyper_minimal") => hyper_minimal_app::run(),
        Ok("trace_context_harness") => trace_context_harness_app::run(),
        _ => return,
    };
    if let Err(error) = result {
        // What the example's own `main` prints, with the status it exits with.
        eprintln!("{error}");
        std::process::exit(1);
    }
}

//! Correlation and W3C trace propagation for Tower services, across services and jobs, with
//! optional OpenTelemetry export.
//!
//! - [`CorrelationLayer`]: the server layer. Request id kept or generated and echoed, W3C
//!   `traceparent` / `tracestate` / `baggage` continued (or linked, at a [`Trust`] boundary),
//!   tenant headers, one span per request with the OpenTelemetry HTTP fields and the
//!   `request_id`, `trace_id`, `span_id` and tenant fields that the log layer lifts into every
//!   log line, and the [`RequestContext`](periscope_context::RequestContext) in the request
//!   extensions.
//! - [`ClientTraceLayer`], [`ClientSpan`] and [`inject`]: outgoing calls carry the context, each
//!   under its own client span; through the layer the span lasts until the answer's body ends
//!   ([`ClientBody`]), with the code a gRPC call's trailers bring.
//! - [`job`]: a job enqueued from a request continues its trace and request id.
//! - `otel` (feature): a tracer provider from the `OTEL_*` environment, OTLP export over gRPC
//!   or HTTP/protobuf, and the re-exported OpenTelemetry crates.
//!
//! The ids are one and the same everywhere: the `trace_id` / `span_id` recorded on the server
//! span (and so in the log lines) are the ids of the exported OpenTelemetry span and the
//! parent of every outgoing call, with OpenTelemetry on or off.
//!
//! Layer order, outermost first: this layer, then metrics, access log, and panic catching /
//! error envelope innermost, so every later layer and the panic response see the ids.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod binding;
mod body;
pub mod client;
mod client_body;
mod fields;
pub mod job;
#[cfg(feature = "otel")]
pub mod otel;
mod propagation;
mod rejected;
mod rpc;
mod sampler;
mod selector;
pub mod server;
mod trust;

pub use body::CorrelationBody;
pub use client::{ClientSpan, ClientTrace, ClientTraceLayer, inject, inject_with_tenant_keys};
pub use client_body::ClientBody;
pub use fields::{
    MAX_METHOD_ORIGINAL_LEN, MAX_SERVER_ADDRESS_LEN, MAX_URL_FULL_LEN, MAX_URL_PATH_LEN,
    SPAN_TENANT_FIELDS,
};
pub use propagation::Propagators;
pub use sampler::{InvalidSampler, Sampler};
pub use selector::{DEFAULT_QUIET_PATHS, PathSelector};
pub use server::{Correlation, CorrelationLayer};
pub use trust::Trust;

/// The context crate, re-exported: `RequestContext`, `Carrier`, ids and headers.
pub use periscope_context as context;

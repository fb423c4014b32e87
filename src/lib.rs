//! periscope: production observability for Tower services.
//!
//! This facade re-exports the periscope crates as they land. Today:
//!
//! - [`context`]: request ids, W3C Trace Context and Baggage, the request context and carriers.
//! - [`health`]: liveness, readiness and startup probes.
//! - [`trace`]: the correlation/trace server layer, client propagation, jobs, OpenTelemetry.
//! - [`error`]: the error envelope, code taxonomy, catch-all layer and client-side decoding.
//! - [`metrics`]: RED metrics with cardinality guards, the registry, `/metrics` exposition.
//! - [`gpu`] (feature `gpu`): NVIDIA GPU collectors, the GPU snapshot, the resource tracker.
//! - [`log`]: the JSON log layer, redaction, runtime level control, recent lines, access log.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use periscope_context as context;
pub use periscope_error as error;
#[cfg(feature = "gpu")]
pub use periscope_gpu as gpu;
pub use periscope_health as health;
pub use periscope_log as log;
pub use periscope_metrics as metrics;
pub use periscope_trace as trace;

// The README's Rust examples compile and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

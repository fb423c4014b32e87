//! periscope: production observability for Tower services.
//!
//! This facade re-exports the periscope crates as they land. Today:
//!
//! - [`context`]: request ids, W3C Trace Context and Baggage, the request context and carriers.
//! - [`health`]: liveness, readiness and startup probes.
//! - [`log`]: the JSON log layer, redaction, runtime level control, recent lines, access log.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use periscope_context as context;
pub use periscope_health as health;
pub use periscope_log as log;

// The README's Rust examples compile and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

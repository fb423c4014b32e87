//! periscope: production observability for Tower services.
//!
//! This facade re-exports the periscope crates as they land. Today:
//!
//! - [`context`]: request ids, W3C Trace Context and Baggage, the request context and carriers.
#![deny(missing_docs)]

pub use periscope_context as context;

// The README's Rust examples compile and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

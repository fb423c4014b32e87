//! Structured JSON logs for periscope: a `tracing-subscriber` layer that writes one JSON
//! object per line, with the request's context fields, redaction, runtime level control, a
//! buffer of recent lines, a non-blocking writer, and an access log for Tower services.
//!
//! ```
//! use periscope_log::LogLayer;
//! use tracing_subscriber::prelude::*;
//!
//! let (layer, _guard) = LogLayer::builder().service("framecast-api").build();
//! let subscriber = tracing_subscriber::registry().with(layer);
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("cancel_job", request_id = "req_1", job_id = "job_789");
//!     let _enter = span.enter();
//!     tracing::info!(old_status = "processing", new_status = "completed", "Job status changed");
//! });
//! // {"timestamp":"...","level":"info","message":"Job status changed","target":"...",
//! //  "service":"framecast-api","request_id":"req_1","job_id":"job_789","span":"cancel_job",
//! //  "data":{"old_status":"processing","new_status":"completed"}}
//! ```
//!
//! - [`LogLayer::builder`] returns the layer and a [`LogGuard`] that flushes on drop; the layer
//!   hands out a [`LevelControl`], [`RecentLogs`] and [`DroppedLines`] for the admin surface.
//! - [`LogConfig::from_env`] reads `LOG_FORMAT`, `LOG_LEVEL` and `RUST_LOG`.
//! - [`AccessLogLayer`] logs one line per completed request.
//!
//! The schema, the redaction rules and level control are described in `docs/logging.md`.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod access;
mod builder;
mod config;
#[cfg(feature = "otel")]
mod exported;
mod fields;
mod filter;
mod json;
mod layer;
mod mask;
mod peer_text;
mod recent;
mod redact;
mod span_plan;
mod static_text;
mod timestamp;
mod writer;

pub use access::{
    ACCESS_LOG_TARGET, AccessLog, AccessLogBody, AccessLogLayer, DEFAULT_QUIET_PATHS,
    ResponseFuture,
};
pub use builder::{ContextFieldError, DEFAULT_MAX_VALUE_BYTES, LogLayerBuilder};
pub use config::{ConfigError, LogConfig, LogFormat};
pub use fields::{DEFAULT_CONTEXT_FIELDS, Json, json};
pub use filter::{
    DirectiveError, Directives, LEVEL_CHANGE_TARGET, LevelChange, LevelControl, LevelStatus,
};
pub use layer::LogLayer;
pub use recent::{DEFAULT_RECENT_BYTES, DEFAULT_RECENT_LINES, RecentLine, RecentLogs};
pub use redact::{
    DEFAULT_ALLOWED_KEYS, DEFAULT_SENSITIVE_KEYS, DEFAULT_SENSITIVE_WORDS, REDACTED, Redactor,
};
pub use writer::{
    DEFAULT_FLUSH_TIMEOUT, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LINES, DroppedLines, LogFlusher,
    LogGuard,
};

/// Re-exported so callers can name levels without depending on `tracing` directly.
pub use tracing::level_filters::LevelFilter;

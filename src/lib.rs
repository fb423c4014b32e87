//! periscope: production observability for Tower services (axum, hyper, tonic) in a few lines.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let obs = periscope::Observability::from_env()?; // SERVICE_NAME, LOG_LEVEL, OTEL_*, ...
//! let _guard = obs.init()?; // JSON logs on stdout, OTLP export when an endpoint is set
//! let app: axum::Router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hello" }))
//!     .layer(obs.layer()); // ids, trace, RED metrics, access log, error envelopes
//! # Ok(()) }
//! ```
//!
//! A whole service also merges `obs.admin().router()` ([`Observability::admin`]: `/health`,
//! `/ready`, `/startup`, `/metrics`, and `/debug/*` behind `ADMIN_TOKEN`) and serves with
//! `obs.server(listener)` and `obs.shutdown_on_signal()` (features `serve` and `signal`, on by
//! default), which drain `/ready` on SIGTERM before stopping.
//!
//! Where to start, in the repository (periscope is not published; depend on it by path or
//! git): `README.md` has the command that runs the template service and the one that runs
//! every test; `docs/getting-started.md` goes from a fresh clone to a service of your own
//! (every endpoint of the template, `examples/inference_gateway`, the ten-line setup, and how
//! to copy the template); `docs/configuration.md` lists every environment variable that
//! [`Observability::from_env`] and [`ObservabilityBuilder::env`] read. The rest of `docs/`
//! (its `README.md` lists the pages) is the reference: logging, metrics, errors, trace,
//! health, admin, gRPC, layer ordering, and migrating from tower-http, `tracing-subscriber`
//! and axum-prometheus.
//!
//! The facade sets the crates up together; each is also usable alone:
//!
//! - [`context`]: request ids, W3C Trace Context and Baggage, the request context and carriers.
//! - [`trace`]: the correlation/trace server layer, client propagation, jobs, OpenTelemetry.
//! - [`error`]: the error envelope, code taxonomy, catch-all layer and client-side decoding.
//! - [`metrics`]: RED metrics with cardinality guards, the registry, `/metrics` exposition.
//! - [`log`]: the JSON log layer, redaction, runtime level control, recent lines, access log.
//! - [`health`]: liveness, readiness and startup probes; with feature `grpc`, the standard
//!   gRPC health service (`grpc.health.v1`) over them.
//! - [`admin`]: `/health`, `/ready`, `/startup`, `/metrics` and the gated `/debug/*` endpoints.
//! - [`gpu`] (feature `gpu`): NVIDIA GPU collectors, the GPU snapshot, the resource tracker.
//! - [`Server`] (feature `serve`): serves a Tower service with request-head, keep-alive idle
//!   and write timeouts and a graceful stop; over HTTP/1.1, and HTTP/2 with prior knowledge
//!   too with feature `http2`.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod collectors;
mod config;
#[cfg(feature = "serve")]
mod draining;
pub mod env;
#[cfg(feature = "http2")]
mod http2;
#[cfg(feature = "serve")]
mod idle;
mod observability;
#[cfg(feature = "serve")]
mod peer;
#[cfg(feature = "serve")]
mod rejected;
#[cfg(feature = "serve")]
mod serve;
mod stack;
#[cfg(feature = "serve")]
mod write_stall;

/// What the unit tests share.
#[cfg(all(test, feature = "serve"))]
mod test_support {
    /// Installs `subscriber` as this thread's default, for a test that reads the events it
    /// captures.
    ///
    /// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
    /// that meets a callsite first whether it is enabled, and caches the answer for every thread:
    /// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
    /// cached as never enabled, and a test capturing events at the same time misses them. Two
    /// dispatchers kept for the whole run make tracing-core ask every live one instead (see
    /// docs/development.md).
    pub(crate) fn set_default(
        subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    ) -> tracing::subscriber::DefaultGuard {
        static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
        KEPT.get_or_init(|| {
            [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
        });
        tracing::subscriber::set_default(subscriber)
    }
}

pub use config::{
    ConfigError, DEFAULT_SHUTDOWN_DRAIN, GpuProcesses, MAX_SHUTDOWN_DRAIN, MIN_ADMIN_TOKEN_LEN,
    Settings,
};
pub use observability::{Error, Observability, ObservabilityBuilder, ObservabilityGuard};
#[cfg(feature = "serve")]
pub use serve::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Server,
};
pub use stack::{
    ClientLayer, ClientService, MaybeMetrics, MaybeMetricsFuture, ObservabilityLayer,
    ObservabilityService,
};

pub use periscope_admin as admin;
pub use periscope_context as context;
pub use periscope_error as error;
#[cfg(feature = "gpu")]
pub use periscope_gpu as gpu;
pub use periscope_health as health;
pub use periscope_log as log;
pub use periscope_metrics as metrics;
pub use periscope_trace as trace;
/// The OpenTelemetry crates periscope builds on, so a service uses the same versions.
#[cfg(feature = "otel")]
pub use periscope_trace::otel as opentelemetry;

// The Rust examples of the README and of docs/ compile and run as doc tests, so they stay true.
#[cfg(doctest)]
mod doc_pages {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../docs/configuration.md")]
    struct Configuration;
    #[doc = include_str!("../docs/context.md")]
    struct Context;
    // Pages with an example that needs a feature are compiled when it is on (CI turns all on).
    #[cfg(feature = "otel")]
    #[doc = include_str!("../docs/trace.md")]
    struct Trace;
    #[doc = include_str!("../docs/logging.md")]
    struct Logging;
    #[doc = include_str!("../docs/metrics.md")]
    struct Metrics;
    #[cfg(all(feature = "axum", feature = "signal"))]
    #[doc = include_str!("../docs/health.md")]
    struct Health;
    #[cfg(feature = "gpu-tracker")]
    #[doc = include_str!("../docs/gpu.md")]
    struct Gpu;
    #[doc = include_str!("../docs/admin.md")]
    struct Admin;
    #[cfg(all(feature = "axum", feature = "serve", feature = "signal"))]
    #[doc = include_str!("../docs/migrating.md")]
    struct Migrating;
    #[cfg(all(
        feature = "axum",
        feature = "serve",
        feature = "signal",
        feature = "grpc"
    ))]
    #[doc = include_str!("../docs/grpc.md")]
    struct Grpc;
    // docs/errors.md is compiled by periscope-error's own doc tests.
}

//! Liveness, readiness and startup probes for Tower services that never lie and never hang.
//!
//! - `GET /health` (liveness) answers `{"status":"ok"}` while the process can answer; it never
//!   touches a dependency.
//! - `GET /ready` (readiness) runs the named checks concurrently, each in its own task under its
//!   own timeout (2 s unless set), and answers the periscope contract JSON: `ok` and `degraded`
//!   (only non-critical checks failed) with 200, `fail`, `starting` (a [`StartupGate`] still
//!   closed) and `draining` (see [`DrainHandle`]) with 503.
//! - `GET /startup` answers `starting` (503) until every startup gate is open, then `ok`.
//! - With the `grpc` feature, `Health::grpc()` is the standard `grpc.health.v1.Health`
//!   service (`Check` and `Watch`) over the same probes, for Kubernetes `grpc:` probes and gRPC
//!   clients.
//!
//! Results are cached for a short interval (1 s unless set) and concurrent probes share one run,
//! so a probe storm runs each check once; [`Health::spawn_poller`] runs them in the background
//! instead. A check that hangs is cut off at its timeout, a check that panics is reported failed:
//! neither takes the probe down. `?verbose` asks for Kubernetes-style text and
//! `Accept: application/health+json` for draft-inadarei-api-health-check JSON.
//!
//! ```
//! use periscope_health::{Health, StartupGate};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model_loaded = StartupGate::new("model_loaded");
//! let health = Health::builder()
//!     .version(env!("CARGO_PKG_VERSION"))
//!     .check("database", || async { Ok::<_, std::io::Error>(()) })
//!     .non_critical_check("cache", || async { Err::<(), _>("redis: connection refused") })
//!     .startup_gate(model_loaded.clone())
//!     .build()?;
//!
//! // Any Tower stack: `health.service()` answers the three paths, `ProbeLayer` puts them in front
//! // of an app, `health.probe_service(Probe::Readiness)` answers one probe on any route, and with
//! // the `axum` feature `health.router()` is a Router to merge.
//! let probes = health.service();
//! # let _ = probes;
//!
//! model_loaded.open(); // once the model is loaded
//! let report = health.readiness().await;
//! assert_eq!(report.status().as_str(), "degraded");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
mod axum;
mod check;
pub mod checks;
mod gate;
#[cfg(feature = "grpc")]
mod grpc;
mod health;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod render;
mod report;
mod runner;
mod service;
#[cfg(feature = "signal")]
mod shutdown;

pub use check::{Check, CheckError, CheckFuture, FnCheck, HealthCheck, MAX_ERROR_LEN, check_fn};
pub use gate::{DrainHandle, StartupGate};
#[cfg(feature = "grpc")]
pub use grpc::{DEFAULT_WATCH_INTERVAL, GrpcHealth, WatchStream};
pub use health::{BuildError, DEFAULT_CACHE_TTL, DEFAULT_TIMEOUT, Health, HealthBuilder};
pub use layer::{InnerFuture, ProbeLayer, ProbeRouter, RouterFuture};
pub use render::{Details, Probe};
pub use report::{CheckOutcome, Report, Status};
pub use runner::{MIN_POLL_INTERVAL, NoRuntime, Poller};
pub use service::{ProbeBody, ProbePaths, ProbeService, ResponseFuture};
#[cfg(feature = "signal")]
pub use shutdown::{SHUTDOWN_TARGET, Shutdown};
/// The `grpc.health.v1` types and client this crate's [`GrpcHealth`] is built on, so a service
/// uses the same version (feature `grpc`).
#[cfg(feature = "grpc")]
pub use tonic_health;

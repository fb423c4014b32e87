//! The admin surface of a Tower service as one `Clone` Tower service: the health probes,
//! `/metrics`, and the debug endpoints an on-call engineer reaches for, gated.
//!
//! | path | what | access |
//! | --- | --- | --- |
//! | `/health`, `/ready`, `/startup` | the probes (feature `health`) | open |
//! | `/metrics` | Prometheus / OpenMetrics text (feature `metrics`) | open |
//! | `/debug/status` | service, version, environment, uptime, pid, in-flight requests, GPU snapshot, the service's own sections (read on a thread of their own) | debug |
//! | `/debug/logs?lines=N&level=L` | recent log lines (feature `log`) | debug |
//! | `/debug/config` | the configuration, secrets masked (feature `log`) | debug |
//! | `GET`/`POST /debug/log-level` | the log filter, changed at run time, optionally for a while (feature `log`) | debug |
//! | `/debug/memory` | resident, virtual, peak and swap memory; GPU memory (feature `gpu`) | debug |
//!
//! Debug endpoints are off by default (404, as if absent). [`DebugAccess::Token`] serves them
//! to requests carrying `Authorization: Bearer <token>` (compared in constant time; 401
//! `token_missing` / `token_invalid` otherwise); [`DebugAccess::SeparateListener`] serves them
//! without a token on an admin listener the caller binds to a private interface. Every error
//! is the periscope error envelope.
//!
//! ```
//! use http::Request;
//! use http_body_util::{BodyExt, Empty};
//! use bytes::Bytes;
//! use periscope_admin::{Admin, DebugAccess};
//! use tower::ServiceExt;
//!
//! # #[cfg(not(all(feature = "metrics", feature = "log")))] fn main() {}
//! # #[cfg(all(feature = "metrics", feature = "log"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = periscope_metrics::MetricsRegistry::new();
//! let admin = Admin::builder()
//!     .service_info("inference-gateway", "1.4.2", "production")
//!     .metrics(registry)
//!     .in_flight(|| 3)
//!     .config(serde_json::json!({"port": 8000, "database": {"password": "hunter2"}}))
//!     .status_section("queue", || serde_json::json!({"depth": 3}))
//!     .debug(DebugAccess::Token("a-long-random-admin-token".into()))
//!     .build();
//!
//! let request = Request::get("/debug/status")
//!     .header("authorization", "Bearer a-long-random-admin-token")
//!     .body(Empty::<Bytes>::new())?;
//! let response = admin.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! let status: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(status["service"], "inference-gateway");
//! assert_eq!(status["sections"]["queue"]["depth"], 3);
//!
//! // Without the token: a 401 envelope.
//! let response = admin.oneshot(Request::get("/debug/config").body(Empty::<Bytes>::new())?).await?;
//! assert_eq!(response.status(), 401);
//! # Ok(())
//! # }
//! ```
//!
//! The endpoints, their JSON and the access rules are described in `docs/admin.md`.
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod access;
#[cfg(feature = "axum")]
mod axum;
mod builder;
#[cfg(feature = "log")]
mod config;
mod endpoint;
#[cfg(feature = "log")]
mod log_level;
#[cfg(feature = "log")]
mod logs;
mod memory;
mod reply;
mod service;
mod status;

pub use access::DebugAccess;
pub use builder::AdminBuilder;
pub use endpoint::Endpoint;
#[cfg(feature = "log")]
pub use log_level::{MAX_BODY_BYTES, MAX_TTL_S, MIN_TTL_S};
#[cfg(feature = "log")]
pub use logs::{DEFAULT_LOG_LINES, MAX_LOG_LINES};
pub use reply::AdminBody;
pub use service::{Admin, ResponseFuture};
pub use status::InFlightSource;

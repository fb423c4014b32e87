//! RED metrics for Tower services that cannot explode in cardinality, and the `/metrics`
//! endpoint that real Prometheus accepts. Built on prometheus-client.
//!
//! - [`MetricsLayer`]: `http_server_requests_total`, `http_server_request_duration_seconds`
//!   (OpenTelemetry buckets, `trace_id` exemplars) by `method`, `route` and `status`, and
//!   `http_server_requests_in_flight` by `method` and `route`; optional body-size histograms;
//!   names and labels configurable.
//! - [`ClientMetricsLayer`]: the same for the calls the service makes,
//!   `http_client_requests_total` and `http_client_request_duration_seconds` by `method`,
//!   `server_address`, `server_port` and `status`.
//! - Bounded labels: `route` is axum's matched route (feature `axum`), a declared
//!   [`RouteTemplates`] template, or `__unmatched__`, never the raw path; `method` outside the
//!   standard nine is `_OTHER`; `status` is the class (`2xx`) unless exact codes are asked for.
//! - The cardinality guard ([`Caps`], [`GuardedFamily`]): past a cap, values fold into
//!   `__overflow__`, totals stay exact, and `periscope_label_overflow_total{metric,label}`
//!   counts the folds. The service's own families can use it too.
//! - [`MetricsRegistry`]: one registry per service, with `service_info` and the standard
//!   process metrics, open to other crates' metrics and collectors.
//! - [`MetricsService`]: the scrape endpoint, OpenMetrics or Prometheus 0.0.4 text by the
//!   `Accept` header, gzip when accepted.
//!
//! ```
//! use periscope_metrics::{MetricsLayer, MetricsRegistry, MetricsService, ServiceInfo};
//! use tower_layer::Layer;
//! # use std::convert::Infallible;
//!
//! let registry = MetricsRegistry::new();
//! registry.register_service_info(&ServiceInfo::new("inference-api", "1.4.2", "production")).unwrap();
//! registry.register_process_metrics().unwrap();
//!
//! let app = tower::service_fn(|_request: http::Request<String>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::new()))
//! });
//! let app = MetricsLayer::builder()
//!     .route_templates(["/v1/models/{model}/predict"])
//!     .register(&registry)
//!     .unwrap()
//!     .layer(app);
//! let scrape = MetricsService::new(registry); // serve at /metrics
//! ```
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod body;
mod client;
mod error;
mod exposition;
mod guard;
mod labels;
mod layer;
mod names;
mod process;
mod prometheus_text;
mod red;
mod registry;
mod sync;

pub use body::MetricsBody;
pub use client::{
    CALL_ERROR, ClientMetrics, ClientMetricsLayer, ClientMetricsLayerBuilder, ClientResponseFuture,
    UNKNOWN_SERVER,
};
pub use error::MetricsError;
pub use exposition::{Format, MAX_SCRAPE_THREADS, MetricsService, ScrapeFuture};
pub use guard::{
    Caps, DEFAULT_LABEL_CAP, DEFAULT_SERIES_CAP, GuardedFamily, MAX_LABEL_VALUE_LEN,
    SERIES_OVERFLOW,
};
pub use labels::{CANCELLED, OTHER_METHOD, OVERFLOW, StatusLabel, UNMATCHED, method_label};
pub use layer::{
    DURATION_BUCKETS, Metrics, MetricsLayer, MetricsLayerBuilder, ResponseFuture, SIZE_BUCKETS,
};
pub use periscope_context::{MatchedRoute, RouteTemplates};
pub use red::RouteFn;
pub use registry::{MetricsRegistry, OVERFLOW_METRIC, ServiceInfo};

/// The prometheus-client crate this one builds on, for metric types and collectors.
pub use prometheus_client;

//! OpenTelemetry: a tracer provider configured from the environment, OTLP export over gRPC or
//! HTTP/protobuf, and a guard that flushes on drop.
//!
//! ```no_run
//! use periscope_trace::otel::OtelConfig;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Fails at startup, naming the variable, when a setting is malformed. Export runs on
//! // threads of its own, so this works inside any Tokio runtime or outside one.
//! let otel = OtelConfig::from_env()?.install()?;
//! let subscriber = tracing_subscriber::registry().with(otel.layer());
//! tracing::subscriber::set_global_default(subscriber)?;
//! // ... serve; dropping `otel` at the end of main flushes the spans still buffered.
//! # Ok(())
//! # }
//! ```
//!
//! The crates are re-exported ([`opentelemetry`], [`opentelemetry_sdk`],
//! [`opentelemetry_otlp`], [`tracing_opentelemetry`]) so an application uses the same versions
//! as periscope and never mixes two.

mod config;
mod filter;
mod provider;
mod queue;
mod reporting;

pub use config::{ConfigError, ExportSettings, OtelConfig, Protocol, Sampler};
pub use filter::{ExportFilter, ExportLevels, SampledEvents, export_filter};
pub use provider::{InstallError, OtelGuard, OtelLayer, layer_for};
pub use reporting::EXPORT_TARGET;

pub use opentelemetry;
pub use opentelemetry_otlp;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;

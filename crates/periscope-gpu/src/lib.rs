//! NVIDIA GPU metrics for periscope, a GPU snapshot for `/debug/status`, and a resource
//! tracker for jobs — all of which degrade gracefully on machines without a GPU.
//!
//! - [`GpuSource`] reads GPUs: [`NvmlSource`] (feature `nvml`, default) loads
//!   `libnvidia-ml.so.1` at run time, so the crate builds and runs without NVIDIA;
//!   [`FakeSource`] serves tests and demos.
//! - [`GpuCollector`] samples a source on its own thread (default every 10 s). Scrapes and
//!   snapshots read the last sample: no driver call ever runs on a request path. It is a
//!   prometheus-client [`Collector`](prometheus_client::collector::Collector) exporting the
//!   `gpu_*` families, and [`GpuCollector::snapshot`] gives the `/debug/status` section.
//! - Without a driver the collector reports `gpu_collector_up 0`, logs one warning with the
//!   reason, retries rarely (60 s doubling to 1 h), and the service keeps running.
//! - [`ResourceTracker`] (feature `tracker`) samples a process tree, the host and the GPUs
//!   into CSV during a run and returns summary statistics and a resource recommendation.
//!
//! ```
//! use periscope_gpu::{FakeSource, GpuCollector};
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//! use std::time::Duration;
//!
//! // In a service: `GpuCollector::builder().start_nvml()`.
//! let gpu = GpuCollector::builder().start(FakeSource::demo(1)).unwrap();
//! gpu.refresh(Duration::from_secs(5)); // tests only: wait for the first sample
//!
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(gpu.clone()));
//! let mut text = String::new();
//! encode(&mut text, &registry).unwrap();
//! assert!(text.contains("gpu_collector_up 1"));
//! assert!(text.contains("gpu_memory_used_bytes{gpu=\"0\""));
//!
//! let status = gpu.snapshot(); // serde: the `gpu` section of /debug/status
//! assert_eq!(status.devices[0].memory_total_mib, Some(81920));
//! ```
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod collector;
mod error;
mod fake;
mod metrics;
#[cfg(feature = "nvml")]
mod nvml;
mod sample;
mod snapshot;
mod source;
#[cfg(feature = "tracker")]
mod tracker;

pub use collector::{GpuCollector, GpuCollectorBuilder, GpuSampler, ProcessFilter};
pub use error::GpuError;
pub use fake::{FakeControl, FakeSource, demo_device};
#[cfg(feature = "nvml")]
pub use nvml::NvmlSource;
pub use sample::{DeviceSample, GpuProcess, GpuSample, ThrottleReason};
pub use snapshot::{DeviceSnapshot, GpuSnapshot, ProcessSnapshot};
pub use source::{GpuSource, SampleRequest};
#[cfg(feature = "tracker")]
pub use tracker::{
    CSV_HEADER, GpuAttribution, ResourceRecommendation, ResourceReport, ResourceSummary,
    ResourceTracker, ResourceTrackerBuilder, TrackerError,
};

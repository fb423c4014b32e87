//! [`AdminBuilder`]: what the admin service shows, and who may see the debug endpoints.

use std::fmt;
use std::sync::Arc;

use crate::access::{DebugAccess, Gate};
use crate::service::{Admin, Inner};
use crate::status::{InFlightSource, Section, ServiceInfo, Started};

/// Builds an [`Admin`]; start with [`Admin::builder`].
///
/// Every part is optional: an endpoint whose source was not given does not exist (404). With
/// the `health` feature and no [`health`](Self::health), the probes answer from a `Health`
/// without checks (`ok` while the process answers).
#[derive(Default)]
#[must_use]
pub struct AdminBuilder {
    info: ServiceInfo,
    #[cfg(feature = "health")]
    health: Option<periscope_health::Health>,
    #[cfg(feature = "metrics")]
    metrics: Option<periscope_metrics::MetricsRegistry>,
    in_flight: Option<Arc<dyn InFlightSource>>,
    #[cfg(feature = "log")]
    logs: Option<periscope_log::RecentLogs>,
    #[cfg(feature = "log")]
    level_control: Option<periscope_log::LevelControl>,
    #[cfg(feature = "log")]
    redactor: Option<periscope_log::Redactor>,
    #[cfg(feature = "log")]
    config: Option<serde_json::Value>,
    #[cfg(feature = "gpu")]
    gpu: Option<periscope_gpu::GpuCollector>,
    sections: Vec<(String, Section)>,
    debug: DebugAccess,
    debug_hosts: Vec<String>,
}

impl fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("info", &self.info)
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Starts building: no parts, debug endpoints disabled.
    pub fn builder() -> AdminBuilder {
        AdminBuilder::default()
    }
}

impl AdminBuilder {
    /// The service's name, version and environment, shown by `/debug/status`.
    pub fn service_info(
        mut self,
        service: impl Into<String>,
        version: impl Into<String>,
        environment: impl Into<String>,
    ) -> Self {
        self.info = ServiceInfo {
            service: Some(service.into()),
            version: Some(version.into()),
            environment: Some(environment.into()),
        };
        self
    }

    /// `/health`, `/ready` and `/startup` from this `Health`.
    #[cfg(feature = "health")]
    pub fn health(mut self, health: periscope_health::Health) -> Self {
        self.health = Some(health);
        self
    }

    /// `/metrics` from this registry (OpenMetrics or Prometheus text by `Accept`, gzip when
    /// accepted).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, registry: periscope_metrics::MetricsRegistry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// The in-flight request count of `/debug/status`: a `MetricsLayer` (feature `metrics`) or
    /// any `Fn() -> i64`. A source that panics shows `null`; the panic goes to the log.
    pub fn in_flight(mut self, source: impl InFlightSource) -> Self {
        self.in_flight = Some(Arc::new(source));
        self
    }

    /// `/debug/logs` from this buffer of recent lines.
    #[cfg(feature = "log")]
    pub fn logs(mut self, recent: periscope_log::RecentLogs) -> Self {
        self.logs = Some(recent);
        self
    }

    /// `GET`/`POST /debug/log-level` through this control.
    #[cfg(feature = "log")]
    pub fn level_control(mut self, control: periscope_log::LevelControl) -> Self {
        self.level_control = Some(control);
        self
    }

    /// The rules that mask `/debug/config` and the status sections; the log layer's redactor
    /// (`log_layer.redactor()`) keeps them the same as the logs'. Default:
    /// `Redactor::default()`. Either way, the values of the OTLP exporter's header variables
    /// (`OTEL_EXPORTER_OTLP_HEADERS` and its per-signal forms) are masked whole too.
    #[cfg(feature = "log")]
    pub fn redactor(mut self, redactor: periscope_log::Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// `/debug/config`: the service's configuration, masked once when built.
    #[cfg(feature = "log")]
    pub fn config(mut self, config: serde_json::Value) -> Self {
        self.config = Some(config);
        self
    }

    /// The GPU snapshot in `/debug/status` and this process's GPU memory in `/debug/memory`.
    #[cfg(feature = "gpu")]
    pub fn gpu(mut self, collector: periscope_gpu::GpuCollector) -> Self {
        self.gpu = Some(collector);
        self
    }

    /// A section of `/debug/status` under `sections.<name>`, read on each request: the current
    /// job, the queue depth, a cache's size. Keep `read` quick and non-blocking. It runs on a
    /// thread of its own (never blocking a runtime worker), by one request at a time: while a
    /// read is still running, other requests show an error in its section and answer at once.
    /// A panic in it shows as an error in its section. With the `log`
    /// feature its value is masked like `/debug/config` (the whole value when `name` is a
    /// sensitive key, such as `api_token`). A second section with the same name
    /// replaces the first.
    pub fn status_section<F>(mut self, name: impl Into<String>, read: F) -> Self
    where
        F: Fn() -> serde_json::Value + Send + Sync + 'static,
    {
        let name = name.into();
        self.sections.retain(|(existing, _)| *existing != name);
        self.sections.push((name, Section::new(read)));
        self
    }

    /// Who may call the debug endpoints (default [`DebugAccess::Disabled`]).
    pub fn debug(mut self, access: DebugAccess) -> Self {
        self.debug = access;
        self
    }

    /// Host names that a [`DebugAccess::SeparateListener`] answers debug requests for, besides
    /// IP addresses and `localhost`: the name operators use to reach it, such as
    /// `my-service-admin.ops.svc` (a port given with it is left out, as requests' ports are).
    /// A debug request addressed to any other name gets 403: a web page that rebinds its own
    /// name to the listener's address would otherwise read it from the operator's browser.
    pub fn debug_hosts<I, T>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.debug_hosts.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// The admin service.
    pub fn build(self) -> Admin {
        #[cfg(feature = "log")]
        let redactor = crate::config::admin_redactor(self.redactor.unwrap_or_default());
        Admin::from_inner(Inner {
            started: Started::now(),
            gate: Gate::new(self.debug, &self.debug_hosts),
            #[cfg(feature = "health")]
            health: self.health.or_else(|| default_health(&self.info)),
            #[cfg(feature = "metrics")]
            metrics: self.metrics.map(periscope_metrics::MetricsService::new),
            in_flight: self.in_flight,
            #[cfg(feature = "log")]
            logs: self.logs,
            #[cfg(feature = "log")]
            level_control: self.level_control,
            #[cfg(feature = "log")]
            config: self
                .config
                .and_then(|config| masked_config(config, &redactor)),
            #[cfg(feature = "log")]
            redactor,
            #[cfg(feature = "gpu")]
            gpu: self.gpu,
            sections: self.sections,
            info: self.info,
        })
    }
}

/// Probes for a service that gave no `Health`: liveness `ok`, readiness `ok`, no checks.
#[cfg(feature = "health")]
fn default_health(info: &ServiceInfo) -> Option<periscope_health::Health> {
    let mut builder = periscope_health::Health::builder();
    if let Some(version) = &info.version {
        builder = builder.version(version.clone());
    }
    builder.build().ok()
}

#[cfg(feature = "log")]
fn masked_config(
    config: serde_json::Value,
    redactor: &periscope_log::Redactor,
) -> Option<bytes::Bytes> {
    match crate::config::masked(config, redactor) {
        Ok(bytes) => Some(bytes.into()),
        Err(error) => {
            tracing::error!(%error, "the configuration could not be encoded; /debug/config is off");
            None
        }
    }
}

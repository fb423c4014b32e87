//! [`Observability`]: one object that sets up every periscope crate from one configuration.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use periscope_admin::{Admin, AdminBuilder, DebugAccess};
use periscope_context::{Carrier, ExtractOptions, RouteTemplates, TenantKey};
use periscope_error::ErrorLayer;
use periscope_health::Health;
#[cfg(feature = "signal")]
use periscope_health::Shutdown;
use periscope_log::{
    AccessLogLayer, DroppedLines, LevelControl, LogFormat, LogGuard, LogLayer, RecentLogs, Redactor,
};
use periscope_metrics::{
    ClientMetricsLayer, MetricsLayer, MetricsLayerBuilder, MetricsRegistry, ServiceInfo,
};
use periscope_trace::job::JobSpan;
use periscope_trace::{ClientTraceLayer, CorrelationLayer};
use tracing_subscriber::layer::SubscriberExt;

use crate::collectors::{DROPPED_LINES_METRIC, DroppedLinesCollector};
use crate::config::{
    ConfigError, Settings, VARIABLES, checked_drain, checked_name, checked_timeout, checked_token,
};
use crate::stack::{ClientLayer, ObservabilityLayer};
use periscope_metrics::prometheus_client::metrics::MetricType;

/// gRPC's health check method: a probe too where the service routes it under the stack.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// What can go wrong while setting periscope up.
///
/// `Debug` writes the message too, so `main() -> Result<(), Box<dyn Error>>` prints
/// `Error: LOG_FORMAT="xml" is invalid: use json or pretty`, not the struct.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is malformed; the message names the variable and the accepted values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A metric could not be registered (usually a name registered twice).
    #[error("metrics: {0}")]
    Metrics(#[from] periscope_metrics::MetricsError),
    /// The health probes could not be built.
    #[error("health: {0}")]
    Health(#[from] periscope_health::BuildError),
    /// A route template is malformed or conflicts with another (see
    /// [`route_templates`](ObservabilityBuilder::route_templates)).
    #[error(transparent)]
    RouteTemplate(#[from] periscope_context::RouteTemplateError),
    /// [`Observability::init`] was called twice, or another global subscriber is installed.
    #[error(
        "a global tracing subscriber is already installed: call Observability::init once, and \
         do not install another subscriber beside it"
    )]
    AlreadyInitialized,
    /// The OpenTelemetry exporter could not be set up.
    #[cfg(feature = "otel")]
    #[error("OpenTelemetry: {0}")]
    Otel(#[from] periscope_trace::otel::InstallError),
    /// The GPU collector's sampling thread could not be started.
    #[cfg(feature = "gpu")]
    #[error("GPU collector: could not start its sampling thread: {0}")]
    Gpu(std::io::Error),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Builds an [`Observability`]: code sets the defaults, [`env`](Self::env) applies the
/// environment on top.
///
/// ```
/// let obs = periscope::Observability::builder()
///     .service_name("inference-gateway")
///     .version("1.4.2")
///     .env()? // SERVICE_NAME, ENVIRONMENT, LOG_LEVEL, ... override what code set
///     .build()?;
/// assert_eq!(obs.settings().version, "1.4.2");
/// # Ok::<(), periscope::Error>(())
/// ```
#[must_use = "call build() to get the Observability"]
pub struct ObservabilityBuilder {
    settings: Settings,
    health: Option<Health>,
    tenant_keys: Vec<TenantKey>,
    route_templates: Vec<String>,
    log_writer: Option<Box<dyn Write + Send>>,
    status_sections: Vec<(String, StatusSection)>,
    config_sections: Vec<(String, serde_json::Value)>,
    red_metrics: Option<ConfigureRed>,
    correlation: Option<ConfigureCorrelation>,
    /// Probes on the service's own paths ([`probe_paths`](Self::probe_paths)).
    probe_paths: Vec<Cow<'static, str>>,
    /// A network given to [`trusted_proxies`](Self::trusted_proxies) that is not one.
    invalid_proxies: Option<ConfigError>,
}

/// What the service changes in the RED layer's names, labels and buckets.
type ConfigureRed = Box<dyn FnOnce(MetricsLayerBuilder) -> MetricsLayerBuilder + Send>;

/// What the service changes in the server layer: its trust, quiet paths, scheme source.
type ConfigureCorrelation = Box<dyn FnOnce(CorrelationLayer) -> CorrelationLayer + Send>;

/// A section of `/debug/status` the service registers (its queue, its current job, ...).
type StatusSection = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl std::fmt::Debug for ObservabilityBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservabilityBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ObservabilityBuilder {
    /// The service's name (`SERVICE_NAME` overrides it).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.settings.service_name = name.into();
        self.settings.forget(&["SERVICE_NAME", "OTEL_SERVICE_NAME"]);
        self
    }

    /// The deployment environment (`ENVIRONMENT` overrides it).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.settings.environment = environment.into();
        self
    }

    /// The service's version, usually `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.settings.version = version.into();
        self
    }

    /// JSON (the default) or pretty lines (`LOG_FORMAT` overrides it).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.settings.log_format = format;
        self
    }

    /// A level (`debug`) or directives such as `info,my_crate::db=debug`, read like
    /// `LOG_LEVEL` (`LOG_LEVEL` / `RUST_LOG` override them).
    pub fn log_level(mut self, directives: &str) -> Result<Self, ConfigError> {
        // Read as `LOG_LEVEL` is: a lone word that is no level (a typo, or an empty string) is
        // an error, not a target at `trace` with every other line turned off.
        self.settings.log_directives = periscope_log::Directives::parse_log_level(directives)
            .map_err(|e| ConfigError::new("log_level", directives, e.to_string()))?;
        self.settings.forget(&["LOG_LEVEL", "RUST_LOG"]);
        Ok(self)
    }

    /// Turns the RED layer and `/metrics` on or off (default on; `ENABLE_METRICS`).
    pub fn metrics(mut self, on: bool) -> Self {
        self.settings.metrics = on;
        self
    }

    /// Turns OpenTelemetry export on or off (default on when an endpoint is set;
    /// `ENABLE_TRACING`).
    pub fn tracing(mut self, on: bool) -> Self {
        self.settings.tracing = on;
        self
    }

    /// The OTLP collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it (for
    /// `http/protobuf`, `/v1/traces` is appended) and checked as that variable is; the
    /// environment applied after ([`env`](Self::env)) overrides it. Feature `otel`.
    ///
    /// ```
    /// let obs = periscope::Observability::builder()
    ///     .otlp_endpoint("http://collector.observability:4318")?
    ///     .env()? // OTEL_EXPORTER_OTLP_ENDPOINT, when set, wins
    ///     .build()?;
    /// # Ok::<(), periscope::Error>(())
    /// ```
    #[cfg(feature = "otel")]
    pub fn otlp_endpoint(self, url: &str) -> Result<Self, ConfigError> {
        // The traces-only variable of an earlier source would win over the value set here.
        self.variables(
            "otlp_endpoint",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(url.to_owned())),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
            ],
        )
    }

    /// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` gives it (default
    /// `http/protobuf`), which overrides it. Feature `otel`.
    #[cfg(feature = "otel")]
    pub fn otlp_protocol(
        self,
        protocol: periscope_trace::otel::Protocol,
    ) -> Result<Self, ConfigError> {
        self.variables(
            "otlp_protocol",
            &[
                (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    Some(protocol.as_str().to_owned()),
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None),
            ],
        )
    }

    /// Which traces are sampled, as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` give it
    /// (default `parentbased_always_on`), which override it: the exporter's sampler and, in any
    /// build, the `sampled` flag the layers send downstream. A ratio outside 0 to 1 is an
    /// error, as the variable's would be.
    ///
    /// ```
    /// use periscope::trace::Sampler;
    ///
    /// let obs = periscope::Observability::builder()
    ///     .traces_sampler(Sampler::ParentBasedTraceIdRatio(0.1))?
    ///     .build()?;
    /// assert_eq!(obs.settings().sampler, Sampler::ParentBasedTraceIdRatio(0.1));
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn traces_sampler(self, sampler: periscope_trace::Sampler) -> Result<Self, ConfigError> {
        let (name, arg) = sampler.env_values();
        self.variables(
            "traces_sampler",
            &[
                ("OTEL_TRACES_SAMPLER", Some(name.to_owned())),
                ("OTEL_TRACES_SAMPLER_ARG", arg),
            ],
        )
    }

    /// The propagation formats the layers read and send, as `OTEL_PROPAGATORS` gives them
    /// (default W3C Trace Context and Baggage), which overrides them.
    pub fn propagators(
        self,
        propagators: periscope_trace::Propagators,
    ) -> Result<Self, ConfigError> {
        self.variables(
            "propagators",
            &[("OTEL_PROPAGATORS", Some(propagators.as_list().to_owned()))],
        )
    }

    /// Sets OpenTelemetry variables from code: read as the environment's are (the same checks;
    /// an error names `method`, not a variable nobody set), and kept by a later source that
    /// leaves them unset.
    fn variables(
        mut self,
        method: &'static str,
        values: &[(&str, Option<String>)],
    ) -> Result<Self, ConfigError> {
        self.settings = self.settings.apply_code(values).map_err(|mut error| {
            if values.iter().any(|(name, _)| *name == error.var) {
                error.var = method;
            }
            error
        })?;
        Ok(self)
    }

    /// Turns the NVIDIA GPU collector on (default off; `ENABLE_GPU`). Needs the `gpu` feature.
    pub fn gpu(mut self, on: bool) -> Self {
        self.settings.gpu = on;
        self
    }

    /// Whose GPU memory the GPU collector reports (default
    /// [`GpuProcesses::Own`](crate::GpuProcesses::Own); `GPU_PROCESSES`): in a container
    /// without the host's pid namespace, only [`GpuProcesses::All`](crate::GpuProcesses::All)
    /// reports any.
    pub fn gpu_processes(mut self, processes: crate::GpuProcesses) -> Self {
        self.settings.gpu_processes = processes;
        self
    }

    /// Turns the `/debug/*` endpoints on behind this bearer token (`ADMIN_TOKEN`).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.settings.admin_token = Some(token.into());
        self
    }

    /// Requests whose answer's head has not come within this get a 504 `timeout` envelope
    /// (`REQUEST_TIMEOUT_S`), or a 408 `timeout` when the handler was waiting for a request
    /// body the client stalled; a streamed body may run longer once its head is out.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = Some(timeout);
        self
    }

    /// Paths of probes mounted on the service's own paths with
    /// [`Health::probe_service`](periscope_health::Health::probe_service) (`/livez`,
    /// `/readyz`), treated as the default probe paths are: left out of the request timeout
    /// (they answer within their checks' own timeouts), not traced, and their access lines at
    /// `debug` rather than by outcome (a failing readiness probe is not an `error` line every
    /// few seconds). Whole paths, matched exactly; repeated calls add to the list. A
    /// [`correlation`](Self::correlation) change that sets its own `quiet(..)` selector
    /// replaces the tracing part.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let obs = periscope::Observability::builder()
    ///     .request_timeout(Duration::from_secs(2))
    ///     .probe_paths(["/livez", "/readyz"])
    ///     .build()?;
    /// # let _ = obs.layer();
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn probe_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Cow<'static, str>>,
    {
        self.probe_paths.extend(paths.into_iter().map(Into::into));
        self
    }

    /// How long `/ready` answers `draining` after SIGTERM or Ctrl-C before the listeners close
    /// (`SHUTDOWN_DRAIN_S`; default 5 s, at most 300 s). See [`Observability::shutdown_on_signal`].
    pub fn shutdown_drain(mut self, drain: Duration) -> Self {
        self.settings.shutdown_drain = drain;
        self
    }

    /// The networks (CIDR notation, or single addresses; IPv4 and IPv6) of the proxies in
    /// front of the service (`TRUSTED_PROXIES`; default none): a request whose connection
    /// comes from one of them has the client's address its forwarding header tells (the one
    /// [`trusted_proxies_header`](Self::trusted_proxies_header) names, `X-Forwarded-For` by
    /// default), as `client` on the access line and `client.address` on the span; one from
    /// anywhere else, whatever it sends, its own. See
    /// [`TrustedProxies::client_addr`](periscope_context::TrustedProxies::client_addr) for the
    /// rule. `build` fails on a malformed network.
    ///
    /// ```
    /// let obs = periscope::Observability::builder()
    ///     .trusted_proxies(["10.0.0.0/8", "fd00::/8"])
    ///     .build()?;
    /// assert_eq!(obs.settings().trusted_proxies.to_string(), "10.0.0.0/8,fd00::/8");
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn trusted_proxies<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        match periscope_context::TrustedProxies::parse(networks) {
            Ok(proxies) => {
                // The header chosen stays, whichever is set first.
                let header = self.settings.trusted_proxies.forwarding_header();
                self.settings.trusted_proxies = proxies.with_forwarding_header(header);
                self.invalid_proxies = None;
            }
            Err(error) => {
                self.invalid_proxies = Some(ConfigError::new(
                    "trusted_proxies",
                    error.value.clone(),
                    error.to_string(),
                ));
            }
        }
        self
    }

    /// The forwarding header the [trusted proxies](Self::trusted_proxies) set
    /// (`TRUSTED_PROXIES_HEADER`): [`XForwardedFor`](periscope_context::ForwardingHeader::XForwardedFor)
    /// by default, or [`Forwarded`](periscope_context::ForwardingHeader::Forwarded) (RFC 7239).
    /// Only this header is read; a client's own copy of the other one, which many proxies
    /// pass through untouched, is ignored.
    ///
    /// ```
    /// use periscope::context::ForwardingHeader;
    ///
    /// let obs = periscope::Observability::builder()
    ///     .trusted_proxies(["10.0.0.0/8"])
    ///     .trusted_proxies_header(ForwardingHeader::Forwarded)
    ///     .build()?;
    /// assert_eq!(obs.settings().trusted_proxies.forwarding_header(), ForwardingHeader::Forwarded);
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn trusted_proxies_header(mut self, header: periscope_context::ForwardingHeader) -> Self {
        self.settings.trusted_proxies = self
            .settings
            .trusted_proxies
            .clone()
            .with_forwarding_header(header);
        self
    }

    /// The health probes to serve (default: liveness and readiness with no checks).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Reads, logs and propagates another tenant field besides `org_id` and `project_id`.
    pub fn tenant_key(mut self, key: TenantKey) -> Self {
        if !self.tenant_keys.contains(&key) {
            self.tenant_keys.push(key);
        }
        self
    }

    /// Route templates such as `/v1/jobs/{id}` for services without axum: the request span's
    /// name, the access line's `route` and the `route` label all say the template a request
    /// matches (axum's matched route is used when present). The admin paths (`/health`,
    /// `/metrics`, ...) are declared already; a template given twice counts once. `build`
    /// fails on a malformed or conflicting template.
    pub fn route_templates<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.route_templates
            .extend(templates.into_iter().map(Into::into));
        self
    }

    /// Adds a section to `/debug/status`, read on every request (keep it cheap and
    /// non-blocking): the service's queue depth, its current job, its model.
    pub fn status_section<F>(mut self, name: impl Into<String>, read: F) -> Self
    where
        F: Fn() -> serde_json::Value + Send + Sync + 'static,
    {
        self.status_sections.push((name.into(), Arc::new(read)));
        self
    }

    /// Adds the service's own settings to `/debug/config`, as a member `name` beside
    /// periscope's (masked by the same rules: secrets under sensitive keys, passwords in URLs):
    /// the port, the model, the limits it was started with. A later section of the same name
    /// replaces an earlier one; a name periscope's settings use is refused by
    /// [`build`](Self::build).
    ///
    /// ```
    /// let obs = periscope::Observability::builder()
    ///     .service_name("gateway")
    ///     .config_section("gateway", serde_json::json!({"port": 8000, "model": "resnet18"}))
    ///     .build()?;
    /// # let _ = obs;
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn config_section(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        let name = name.into();
        self.config_sections.retain(|(kept, _)| *kept != name);
        self.config_sections.push((name, value));
        self
    }

    /// Changes the RED metrics that [`layer`](Observability::layer) records: their names,
    /// label names, status rendering, buckets and caps (the defaults are
    /// `http_server_requests_total`, `http_server_request_duration_seconds` and
    /// `http_server_requests_in_flight` with `method`, `route` and the status class). `change`
    /// gets the builder the facade set up (its route templates: the admin paths and
    /// [`route_templates`](Self::route_templates)) and returns it changed; `build` fails when
    /// the result is refused (a malformed name, one the facade's own metrics use). Routes
    /// given here (`route_templates`, `route_fn`) label the metrics only: declare them with
    /// [`route_templates`](Self::route_templates), which the span and the access line follow
    /// too. With metrics off (`ENABLE_METRICS=false`) `change` is not called. Called more than
    /// once, every change applies, in the order given. The operations kit in `deploy/`
    /// (dashboard, alerts, runbooks) queries the default names.
    ///
    /// ```
    /// use periscope::metrics::StatusLabel;
    ///
    /// // Dashboards built on axum-prometheus keep working:
    /// // axum_http_requests_total{method,endpoint,status="200"}, ...
    /// let obs = periscope::Observability::builder()
    ///     .red_metrics(|red| {
    ///         red.prefix("axum")
    ///             .requests_name("http_requests_total")
    ///             .duration_name("http_requests_duration_seconds")
    ///             .in_flight_name("http_requests_pending")
    ///             .route_label("endpoint")
    ///             .status_label(StatusLabel::Code)
    ///     })
    ///     .build()?;
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn red_metrics<F>(mut self, change: F) -> Self
    where
        F: FnOnce(MetricsLayerBuilder) -> MetricsLayerBuilder + Send + 'static,
    {
        // Called again, both apply, in order (a helper adding its own change keeps the
        // service's).
        self.red_metrics = Some(match self.red_metrics.take() {
            Some(earlier) => Box::new(move |layer| change(earlier(layer))),
            None => Box::new(change),
        });
        self
    }

    /// Changes the server layer (request ids, trace context and the request span) that
    /// [`layer`](Observability::layer) puts outermost: a public endpoint's
    /// [`Trust::Boundary`](periscope_trace::Trust) (new traces, the caller's kept as a link),
    /// the paths that get no span ([`quiet`](CorrelationLayer::quiet)), the scheme a
    /// TLS-terminating proxy reports ([`forwarded_scheme`](CorrelationLayer::forwarded_scheme)).
    /// `change` gets the layer the facade set up, with its tenant keys, route templates and
    /// propagators. `tenant_keys`, `route_templates` and `propagators` called here replace the
    /// facade's, and the log and metrics layers (and the outgoing propagation) do not follow
    /// them: declare tenant fields and routes with [`tenant_key`](Self::tenant_key) and
    /// [`route_templates`](Self::route_templates) instead, and the formats with
    /// [`propagators`](Self::propagators) or `OTEL_PROPAGATORS`. Paths made quiet here still get an access line.
    /// Called more than once, every change applies, in the order given.
    ///
    /// ```
    /// use periscope::trace::Trust;
    ///
    /// // A public API: callers do not choose its trace ids or sampling.
    /// let obs = periscope::Observability::builder()
    ///     .correlation(|layer| layer.trust(Trust::Boundary))
    ///     .build()?;
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn correlation<F>(mut self, change: F) -> Self
    where
        F: FnOnce(CorrelationLayer) -> CorrelationLayer + Send + 'static,
    {
        // Called again, both apply, in order: a later call must not drop an earlier
        // `Trust::Boundary`.
        self.correlation = Some(match self.correlation.take() {
            Some(earlier) => Box::new(move |layer| change(earlier(layer))),
            None => Box::new(change),
        });
        self
    }

    /// Writes log lines here instead of stdout (tests, or a file).
    pub fn log_writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.log_writer = Some(Box::new(writer));
        self
    }

    /// Applies the process environment on top of what was set so far. A variable that is not
    /// UTF-8 is an error naming it.
    pub fn env(self) -> Result<Self, ConfigError> {
        let not_unicode = std::cell::RefCell::new(None);
        let applied = self.env_from(|name| {
            let value = std::env::var_os(name)?;
            match value.into_string() {
                Ok(value) => Some(value),
                Err(value) => match VARIABLES.iter().find(|var| **var == name) {
                    Some(var) => {
                        not_unicode
                            .borrow_mut()
                            .get_or_insert_with(|| ConfigError::not_unicode(var, &value));
                        None
                    }
                    None => Some(value.to_string_lossy().into_owned()),
                },
            }
        });
        // Reported before anything else: a mangled value would fail with a misleading message,
        // or pass with replacement characters in it.
        match not_unicode.into_inner() {
            Some(error) => Err(error),
            None => applied,
        }
    }

    /// Applies variables read through `lookup` (tests, or another configuration source).
    /// With the `otel` feature, the OTLP exporter's headers and timeout and the batch
    /// processor's queue, batch size and delay are taken from `lookup` too.
    pub fn env_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        self.settings = self.settings.apply_env(lookup)?;
        Ok(self)
    }

    /// Checks the settings and builds every component. Nothing global is installed until
    /// [`Observability::init`].
    pub fn build(self) -> Result<Observability, Error> {
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut settings = self.settings;
        if let Some(error) = self.invalid_proxies {
            return Err(error.into());
        }
        checked_name("service_name", settings.service_name.clone())?;
        checked_name("environment", settings.environment.clone())?;
        // The same rules as `ADMIN_TOKEN`, whichever way the token came: one read from a file
        // with its line break could never be sent in a header. The environment's values were
        // checked by `env()`: what fails here was set in code, so the error names the method.
        if let Some(token) = &settings.admin_token {
            checked_token("admin_token", token.clone())?;
        }
        // A zero timeout would answer 504 to every request that waits at all.
        if let Some(timeout) = settings.request_timeout {
            checked_timeout(timeout)?;
        }
        checked_drain(settings.shutdown_drain)?;
        // One service name everywhere, set last: the log lines', the metrics' and the spans'.
        #[cfg(feature = "otel")]
        {
            settings.otel.service_name = Some(settings.service_name.clone());
        }
        // With the settings final, before anything is registered or started.
        let config = debug_config(&settings, self.config_sections)?;
        // `ENABLE_GPU` was refused by `env()`: turned on here, it was set in code.
        #[cfg(not(feature = "gpu"))]
        if settings.gpu {
            return Err(ConfigError::new("gpu", "true", crate::config::NO_GPU_SUPPORT).into());
        }

        let tenant_keys = self.tenant_keys;
        let mut log = LogLayer::builder()
            .service(settings.service_name.clone())
            .environment(settings.environment.clone())
            .version(settings.version.clone())
            .format(settings.log_format)
            .directives(settings.log_directives.clone())
            .tenant_keys(&tenant_keys);
        if let Some(writer) = self.log_writer {
            log = log.writer(writer);
        }
        let (log_layer, log_guard) = log.build();

        let health = match self.health {
            Some(health) => health,
            None => Health::builder()
                .version(settings.version.clone())
                .build()?,
        };

        // The admin paths and the gRPC health service's count under their own route, with axum
        // or without (tonic's router gives no matched path).
        let mut templates: Vec<&str> = Vec::new();
        for template in periscope_admin::Endpoint::ALL
            .iter()
            .map(|endpoint| endpoint.path())
            .chain(periscope_context::GRPC_HEALTH_PATHS)
            .chain(self.route_templates.iter().map(String::as_str))
        {
            // A set: one given twice, or an admin path the service declares too, is no
            // conflict (the matcher refuses a second insertion of the same template).
            if !templates.contains(&template) {
                templates.push(template);
            }
        }
        let routes = RouteTemplates::new(&templates)?;

        let registry = MetricsRegistry::new();
        let mut metrics_layer = None;
        let mut client_metrics = None;
        if settings.metrics {
            registry.register_service_info(&ServiceInfo::new(
                settings.service_name.clone(),
                settings.version.clone(),
                settings.environment.clone(),
            ))?;
            registry.register_process_metrics()?;
            let mut red = MetricsLayer::builder().route_templates(templates.iter().copied());
            if let Some(change) = self.red_metrics {
                red = change(red);
            }
            metrics_layer = Some(red.register(&registry)?);
            client_metrics = Some(ClientMetricsLayer::new(&registry)?);
            // Names written outside `register` are reserved, so the service cannot take them.
            registry.reserve(DROPPED_LINES_METRIC, MetricType::Counter)?;
            registry.register_collector(Box::new(DroppedLinesCollector(log_layer.dropped_lines())));
            #[cfg(feature = "metrics")]
            {
                for (name, metric_type) in Health::metric_names() {
                    registry.reserve(name, metric_type)?;
                }
                registry.with_registry(|r| health.register_metrics(r));
            }
        }

        #[cfg(feature = "gpu")]
        let gpu = if settings.gpu {
            let processes = settings.gpu_processes;
            let collector = periscope_gpu::GpuCollector::builder()
                .processes(processes != crate::GpuProcesses::Off)
                .process_filter(if processes == crate::GpuProcesses::All {
                    periscope_gpu::ProcessFilter::All
                } else {
                    periscope_gpu::ProcessFilter::OwnProcess
                })
                .start_nvml()
                .map_err(Error::Gpu)?;
            if settings.metrics {
                for (name, metric_type) in periscope_gpu::GpuCollector::metric_names() {
                    registry.reserve(&name, metric_type)?;
                }
                registry.register_collector(Box::new(collector.clone()));
            }
            Some(collector)
        } else {
            None
        };

        // Outgoing calls send the same tenant fields the server layer reads.
        let mut all_tenant_keys = TenantKey::defaults();
        for key in &tenant_keys {
            if !all_tenant_keys.contains(key) {
                all_tenant_keys.push(key.clone());
            }
        }
        // One propagation setting for incoming and outgoing context (OTEL_PROPAGATORS), with
        // export or without.
        let client_trace = ClientTraceLayer::new()
            .tenant_keys(all_tenant_keys.iter().cloned())
            .propagators(settings.propagators);
        // With metrics off, the calls are not counted (nor warned of at a cap nobody can
        // raise).
        let client_metrics = client_metrics.unwrap_or_else(ClientMetricsLayer::disabled);

        // Jobs read the tenant fields their requests carried, the declared ones too.
        let job_options = ExtractOptions {
            tenant_keys: all_tenant_keys.clone(),
            ..ExtractOptions::default()
        };
        // The server layer matches the route once; the layers inside read its match.
        let quiet = self
            .probe_paths
            .iter()
            .cloned()
            .fold(periscope_trace::PathSelector::default(), |quiet, path| {
                quiet.with_path(path)
            });
        let correlation = CorrelationLayer::new()
            .quiet(quiet)
            .tenant_keys(all_tenant_keys)
            .route_templates(routes)
            .trusted_proxies(settings.trusted_proxies.clone())
            .propagators(settings.propagators)
            .sampler(settings.sampler);
        let correlation = match self.correlation {
            Some(change) => change(correlation),
            None => correlation,
        };

        Ok(Observability {
            level_control: log_layer.level_control(),
            recent_logs: log_layer.recent_logs(),
            redactor: log_layer.redactor(),
            dropped_lines: log_layer.dropped_lines(),
            pending_log: Mutex::new(Some((log_layer, log_guard))),
            status_sections: self.status_sections,
            config,
            settings,
            registry,
            metrics_layer,
            client: ClientLayer::new(client_metrics, client_trace),
            health,
            correlation,
            job_options,
            probe_paths: self.probe_paths,
            #[cfg(feature = "gpu")]
            gpu,
        })
    }
}

/// periscope, set up: JSON logs, trace propagation and export, RED metrics, error envelopes,
/// health probes and the admin surface, from one configuration.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let obs = periscope::Observability::from_env()?;
/// let _guard = obs.init()?; // flushes logs and traces when dropped
/// let app: axum::Router = axum::Router::new()
///     .route("/hello", axum::routing::get(|| async { "hello" }))
///     .layer(obs.layer());
/// # Ok(()) }
/// ```
pub struct Observability {
    settings: Settings,
    registry: MetricsRegistry,
    metrics_layer: Option<MetricsLayer>,
    client: ClientLayer,
    health: Health,
    correlation: CorrelationLayer,
    /// How jobs read their carriers: with the service's tenant keys.
    job_options: ExtractOptions,
    /// Probes on the service's own paths, besides the default ones.
    probe_paths: Vec<Cow<'static, str>>,
    level_control: LevelControl,
    recent_logs: RecentLogs,
    redactor: Redactor,
    dropped_lines: DroppedLines,
    /// The log layer and its guard until `init` installs them.
    pending_log: Mutex<Option<(LogLayer, LogGuard)>>,
    status_sections: Vec<(String, StatusSection)>,
    /// `/debug/config`: periscope's settings and the service's sections.
    config: serde_json::Value,
    #[cfg(feature = "gpu")]
    gpu: Option<periscope_gpu::GpuCollector>,
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Observability {
    /// A builder with the defaults (see `docs/configuration.md`).
    pub fn builder() -> ObservabilityBuilder {
        ObservabilityBuilder {
            settings: Settings::default(),
            health: None,
            tenant_keys: Vec::new(),
            route_templates: Vec::new(),
            log_writer: None,
            status_sections: Vec::new(),
            config_sections: Vec::new(),
            red_metrics: None,
            correlation: None,
            probe_paths: Vec::new(),
            invalid_proxies: None,
        }
    }

    /// Everything from the environment, the rest at its defaults.
    pub fn from_env() -> Result<Self, Error> {
        Self::builder().env()?.build()
    }

    /// Installs the global subscriber (the JSON or pretty log layer, and the OpenTelemetry
    /// layer when tracing is on and an endpoint is set). Keep the guard until the end of
    /// `main`: dropping it flushes traces, then every queued log line.
    ///
    /// It can run on any thread, inside a Tokio runtime or not: OTLP export over gRPC runs on
    /// a thread of its own. Fails with [`Error::AlreadyInitialized`] when a global subscriber
    /// is already installed, before anything global is changed.
    ///
    /// It also installs, once per process, a panic hook that logs panics outside requests and
    /// job spans (in `main`, a thread, a spawned task) as an `error` line with target `periscope::panic`,
    /// waits (up to the flush timeout) until that line is written, as a panic may abort the
    /// process next, then calls the hook before it. `std::process::exit` runs no destructors: drop the guard
    /// before calling it, or the lines still queued are lost.
    pub fn init(&self) -> Result<ObservabilityGuard, Error> {
        let mut pending = self
            .pending_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.is_none() {
            return Err(Error::AlreadyInitialized);
        }

        // The log layer is taken only once the exporter is up, so a failed install (the
        // export thread could not start) can be retried.
        // Built, not registered: OpenTelemetry's globals are set only once the subscriber is
        // in, so a failed `init` (another subscriber was first) leaves them as they were.
        #[cfg(feature = "otel")]
        let otel = if self.settings.tracing && self.settings.otel.traces_endpoint().is_some() {
            Some(self.settings.otel.clone().build()?)
        } else {
            None
        };
        // A GPU collector that failed before the subscriber was in warned nobody: said again
        // once the log is there.
        #[cfg(feature = "gpu")]
        let gpu_down = self
            .gpu
            .as_ref()
            .map(periscope_gpu::GpuCollector::snapshot)
            .filter(|snapshot| !snapshot.up && snapshot.last_error.is_some());
        let Some((log_layer, log_guard)) = pending.take() else {
            return Err(Error::AlreadyInitialized);
        };
        drop(pending);
        #[cfg(feature = "otel")]
        let otel_layer = otel.as_ref().and_then(|guard| guard.layer());
        #[cfg(not(feature = "otel"))]
        let otel_layer: Option<tracing_subscriber::layer::Identity> = None;

        // Beside an OpenTelemetry export the log level is the log's alone: as the whole
        // subscriber's, `LOG_LEVEL=warn` (or `/debug/log-level` during an incident) would also
        // keep from the export the `info` spans and events it takes. Without one the global
        // filter is kept, which costs less per request.
        let (global_log, own_log) = if otel_layer.is_some() {
            (None, Some(log_layer.with_own_filter()))
        } else {
            (Some(log_layer), None)
        };
        let subscriber = tracing_subscriber::registry()
            .with(global_log)
            .with(own_log)
            .with(otel_layer);
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|_| Error::AlreadyInitialized)?;
        // A callsite another thread met for the first time while the subscriber was going in
        // was asked of that thread's default, still no subscriber (tracing-core's shortcut
        // while one `Dispatch` exists), and cached as never enabled: its lines would be lost
        // until the next level change. Ask every callsite again now that the global is set.
        tracing::callsite::rebuild_interest_cache();
        // Outgoing calls (`inject`, `ClientTraceLayer`) send what `OTEL_PROPAGATORS` names,
        // as the server layer reads it, and the traces they and jobs start are sampled by
        // `OTEL_TRACES_SAMPLER`, as the server layer samples.
        #[cfg(feature = "otel")]
        match &otel {
            Some(otel) => otel.register_globals(),
            None => {
                self.settings.propagators.set_global();
                self.settings.sampler.set_global();
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            self.settings.propagators.set_global();
            self.settings.sampler.set_global();
        }
        #[cfg(feature = "gpu")]
        if let Some(snapshot) = gpu_down {
            tracing::warn!(
                target: "periscope_gpu::collector",
                source = snapshot.source,
                error = snapshot.last_error,
                "GPU collector is down (gpu_collector_up 0); the service keeps running"
            );
        }
        log_panics(log_guard.flusher());
        // Libraries that write through the `log` crate reach the same lines, with their own
        // target and level, and the request's ids when they log inside one.
        if tracing_log::LogTracer::init().is_err() {
            tracing::warn!(
                target: "periscope",
                "records of the `log` crate are not bridged into the JSON log: another `log` \
                 logger is installed (remove it; periscope writes those records itself)"
            );
        }
        Ok(ObservabilityGuard {
            #[cfg(feature = "otel")]
            otel,
            log: Some(log_guard),
        })
    }

    /// For the service's own outgoing HTTP calls (hyper-util's `Client`, a tonic `Channel`, any
    /// Tower HTTP client): `ClientTraceLayer` (the call's span, and the request id, trace
    /// context, baggage and tenant headers it sends, with this service's tenant keys and
    /// propagators) over `ClientMetricsLayer` (`http_client_requests_total` and
    /// `http_client_request_duration_seconds` in [`registry`](Self::registry), when metrics
    /// are on). Clones share the families.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use hyper_util::client::legacy::Client;
    /// use hyper_util::rt::TokioExecutor;
    /// use tower::Layer;
    ///
    /// let obs = periscope::Observability::from_env()?;
    /// let client = obs
    ///     .client_layer()
    ///     .layer(Client::builder(TokioExecutor::new()).build_http::<String>());
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    pub fn client_layer(&self) -> ClientLayer {
        self.client.clone()
    }

    /// The span of a job handed over with [`job::carrier`](periscope_trace::job::carrier):
    /// continues the request's trace, request id and tenant fields, the ones declared with
    /// [`tenant_key`](ObservabilityBuilder::tenant_key) too, which
    /// [`JobSpan::from_carrier`] alone does not read (it knows only `org_id` and `project_id`),
    /// so the job's lines and the calls it makes would go without them. For a worker set up
    /// apart from `Observability`, [`job_options`](Self::job_options) with
    /// [`JobSpan::from_carrier_with`] does the same.
    ///
    /// ```no_run
    /// # async fn run(carrier: periscope::context::Carrier) -> Result<(), Box<dyn std::error::Error>> {
    /// let obs = periscope::Observability::builder()
    ///     .tenant_key(periscope::context::TenantKey::new("workspace_id")?)
    ///     .build()?;
    /// obs.job_span("index_text", &carrier)
    ///     .with_job_id("job_789")
    ///     .run(async { tracing::info!("indexing") }) // carries `workspace_id`
    ///     .await;
    /// # Ok(()) }
    /// ```
    pub fn job_span(&self, name: &str, carrier: &Carrier) -> JobSpan {
        JobSpan::from_carrier_with(name, carrier, &self.job_options)
    }

    /// The options jobs read their carriers with: the service's tenant keys (`org_id`,
    /// `project_id` and the declared ones). See [`job_span`](Self::job_span).
    pub fn job_options(&self) -> ExtractOptions {
        self.job_options.clone()
    }

    /// The composed middleware stack; see [`ObservabilityLayer`] for the order. The request
    /// timeout (`REQUEST_TIMEOUT_S`) leaves out the probes (`/health`, `/ready`, `/startup`,
    /// and gRPC's `/grpc.health.v1.Health/Check` where the service routes it), which answer
    /// within their checks' timeouts, and the paths given to
    /// [`ObservabilityBuilder::probe_paths`].
    pub fn layer(&self) -> ObservabilityLayer {
        let mut errors = ErrorLayer::new();
        if let Some(timeout) = self.settings.request_timeout {
            // Probes answer within their checks' own timeouts: under a shorter request
            // timeout a hung non-critical check would make `/ready` a 504, not `degraded`.
            let probes = periscope_health::ProbePaths::default();
            let defaults = [
                probes.liveness,
                probes.readiness,
                probes.startup,
                GRPC_HEALTH_CHECK.into(),
            ];
            errors = errors
                .timeout(timeout)
                .untimed_paths(defaults.into_iter().chain(self.probe_paths.clone()));
        }
        ObservabilityLayer {
            correlation: self.correlation.clone(),
            metrics: self.metrics_layer.clone(),
            access_log: AccessLogLayer::new()
                .quiet_paths(
                    periscope_log::DEFAULT_QUIET_PATHS
                        .iter()
                        .copied()
                        .chain(self.probe_paths.iter().map(|path| path.as_ref())),
                )
                .trusted_proxies(self.settings.trusted_proxies.clone()),
            errors,
        }
    }

    /// The admin surface: `/health`, `/ready`, `/startup`, `/metrics`, and the `/debug/*`
    /// endpoints behind `ADMIN_TOKEN` (absent without one). Serve it on the service's port
    /// (`app.merge(obs.admin().router())` with axum) or on a port of its own.
    pub fn admin(&self) -> Admin {
        self.admin_with(DebugAccess::from_token(self.settings.admin_token.clone()))
    }

    /// The admin surface with explicit debug access, for example
    /// [`DebugAccess::SeparateListener`] on a listener bound to a private interface only.
    pub fn admin_with(&self, access: DebugAccess) -> Admin {
        self.admin_builder(access).build()
    }

    /// The builder behind [`admin_with`](Self::admin_with), filled in with this stack's parts,
    /// for what only the service knows: the host names a separate listener is reached by
    /// ([`AdminBuilder::debug_hosts`]), more status sections.
    ///
    /// ```
    /// use periscope::admin::DebugAccess;
    ///
    /// let obs = periscope::Observability::builder().build()?;
    /// let private = obs
    ///     .admin_builder(DebugAccess::SeparateListener)
    ///     .debug_hosts(["checkout-admin.ops.svc"])
    ///     .build();
    /// # let _ = private;
    /// # Ok::<(), periscope::Error>(())
    /// ```
    pub fn admin_builder(&self, access: DebugAccess) -> AdminBuilder {
        let settings = &self.settings;
        let mut admin = Admin::builder()
            .service_info(
                settings.service_name.clone(),
                settings.version.clone(),
                settings.environment.clone(),
            )
            .health(self.health.clone())
            .logs(self.recent_logs.clone())
            .level_control(self.level_control.clone())
            .redactor(self.redactor.clone())
            .config(self.config.clone())
            .debug(access);
        if let Some(metrics) = &self.metrics_layer {
            admin = admin
                .metrics(self.registry.clone())
                .in_flight(metrics.clone());
        }
        #[cfg(feature = "gpu")]
        if let Some(gpu) = &self.gpu {
            admin = admin.gpu(gpu.clone());
        }
        for (name, read) in &self.status_sections {
            let read = Arc::clone(read);
            admin = admin.status_section(name.clone(), move || read());
        }
        admin
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The metrics registry: register the service's own families here.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    /// The health probes (startup gates, drain handle).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Graceful shutdown on SIGTERM or Ctrl-C: `/ready` answers `draining` for the
    /// [`shutdown_drain`](Settings::shutdown_drain) period (`SHUTDOWN_DRAIN_S`), so load
    /// balancers stop sending traffic, then [`Shutdown::wait`] returns and the servers stop. A
    /// second signal skips the rest of the drain. Call it inside the Tokio runtime; see
    /// [`Shutdown::on_signal`].
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
    /// let obs = periscope::Observability::from_env()?;
    /// let shutdown = obs.shutdown_on_signal();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(shutdown.wait())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "signal")]
    pub fn shutdown_on_signal(&self) -> Shutdown {
        Shutdown::on_signal(self.health.drain_handle(), self.settings.shutdown_drain)
    }

    /// A [`Server`](crate::Server) on `listener` that stops keeping connections alive once this
    /// service drains ([`Server::drain_handle`](crate::Server::drain_handle)): clients retire
    /// their pooled connections during the grace period of
    /// [`shutdown_on_signal`](Self::shutdown_on_signal). With a request timeout longer than
    /// the server's default shutdown timeout (10 s), the shutdown timeout is the request
    /// timeout: a request under way when the service stops has the time any request has
    /// (`terminationGracePeriodSeconds` must cover it, with the drain and the final flush).
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
    /// let obs = periscope::Observability::from_env()?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    /// obs.server(listener)
    ///     .serve(app, obs.shutdown_on_signal().wait())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "serve")]
    pub fn server(&self, listener: tokio::net::TcpListener) -> crate::Server {
        let server = crate::Server::new(listener).drain_handle(self.health.drain_handle());
        match self.settings.request_timeout {
            Some(timeout) if timeout > crate::serve::DEFAULT_SHUTDOWN_TIMEOUT => {
                server.shutdown_timeout(timeout)
            }
            _ => server,
        }
    }

    /// Changes log levels at runtime.
    pub fn level_control(&self) -> &LevelControl {
        &self.level_control
    }

    /// The recent log lines (what `/debug/logs` shows).
    pub fn recent_logs(&self) -> &RecentLogs {
        &self.recent_logs
    }

    /// The redaction rules of the log lines (also used for `/debug/config`).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Log lines dropped so far because the output could not keep up.
    pub fn dropped_log_lines(&self) -> u64 {
        self.dropped_lines.get()
    }

    /// Requests in flight right now, open streams included until their body ends (0 when
    /// metrics are off).
    pub fn in_flight(&self) -> i64 {
        self.metrics_layer
            .as_ref()
            .map_or(0, MetricsLayer::in_flight)
    }

    /// The GPU collector, when `ENABLE_GPU` is on.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&periscope_gpu::GpuCollector> {
        self.gpu.as_ref()
    }
}

/// The writer of the log that `init` set up last, flushed after a panic's line.
static PANIC_FLUSHER: std::sync::Mutex<Option<periscope_log::LogFlusher>> =
    std::sync::Mutex::new(None);

/// Installs, once per process, a panic hook that logs every panic the error layer or a job
/// span does not catch (in `main`, a thread, a spawned task) as an `error` line with target
/// `periscope::panic`, then hands it to the hook installed before (the default one still
/// prints it on stderr). Without it such a panic reaches stderr only, as plain text outside
/// the JSON log and `/debug/logs`.
fn log_panics(flusher: periscope_log::LogFlusher) {
    *PANIC_FLUSHER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(flusher);
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // `take_hook` may not be called while panicking.
        if std::thread::panicking() {
            return;
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic the error layer catches gets the request's `handler panicked` line, one
            // a job span catches the job's `job panicked` line.
            if !periscope_error::is_catching_panics() {
                log_panic(info);
                // The line is only queued: a panic while unwinding, or under
                // `panic = "abort"`, aborts the process once the hooks return.
                let flusher = match PANIC_FLUSHER.try_lock() {
                    Ok(flusher) => flusher.clone(),
                    Err(std::sync::TryLockError::Poisoned(flusher)) => flusher.into_inner().clone(),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                };
                if let Some(flusher) = flusher {
                    flusher.flush();
                }
            }
            previous(info);
        }));
    });
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    thread_local! {
        /// Set while a panic is being logged: a panic while logging it is left to the hook
        /// before, not logged in turn.
        static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOGGING.try_with(|logging| logging.replace(true)) != Ok(false) {
        return;
    }
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a non-string payload");
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    // Captured only when RUST_BACKTRACE / RUST_LIB_BACKTRACE ask for it.
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    let thread = std::thread::current();
    tracing::error!(
        target: "periscope::panic",
        {
            panic.message = message,
            panic.location = location,
            panic.backtrace = backtrace,
            thread.name = thread.name(),
        },
        "panicked"
    );
    let _ = LOGGING.try_with(|logging| logging.set(false));
}

/// Flushes traces, then logs, when dropped. Returned by [`Observability::init`].
#[must_use = "dropping the guard at once flushes and stops the log writer: keep it until main ends"]
pub struct ObservabilityGuard {
    #[cfg(feature = "otel")]
    otel: Option<periscope_trace::otel::OtelGuard>,
    log: Option<LogGuard>,
}

impl std::fmt::Debug for ObservabilityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservabilityGuard").finish_non_exhaustive()
    }
}

impl Drop for ObservabilityGuard {
    fn drop(&mut self) {
        // Traces first: the exporter may still log while it flushes.
        #[cfg(feature = "otel")]
        drop(self.otel.take());
        drop(self.log.take());
    }
}

/// `/debug/config`: periscope's settings, and each of the service's sections as a member of
/// its name; a name of periscope's settings is refused.
fn debug_config(
    settings: &Settings,
    sections: Vec<(String, serde_json::Value)>,
) -> Result<serde_json::Value, ConfigError> {
    let mut config = settings.to_json();
    let Some(members) = config.as_object_mut() else {
        return Ok(config);
    };
    let own: Vec<String> = members.keys().cloned().collect();
    for (name, value) in sections {
        if own.contains(&name) {
            return Err(ConfigError::new(
                "config_section",
                name,
                format!(
                    "a name periscope's own settings do not use (they use {})",
                    own.join(", ")
                ),
            ));
        }
        members.insert(name, value);
    }
    Ok(config)
}

//! The settings periscope reads from the environment, each with a default and a clear error.

use std::collections::HashMap;
use std::time::Duration;

use periscope_context::{ForwardingHeader, TrustedProxies};
use periscope_log::{Directives, LogConfig, LogFormat};

/// Every environment variable periscope reads (through [`Settings::apply_env`]).
pub(crate) const VARIABLES: &[&str] = &[
    "SERVICE_NAME",
    "OTEL_SERVICE_NAME",
    "ENVIRONMENT",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "RUST_LOG",
    "ENABLE_METRICS",
    "ENABLE_TRACING",
    "ENABLE_GPU",
    "GPU_PROCESSES",
    "ADMIN_TOKEN",
    "REQUEST_TIMEOUT_S",
    "SHUTDOWN_DRAIN_S",
    "TRUSTED_PROXIES",
    "TRUSTED_PROXIES_HEADER",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PROPAGATORS",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
];

/// A setting that cannot be used, naming the variable (or builder method) and what it accepts.
/// `Debug` writes the message too (see [`Error`](crate::Error)).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {expected}")]
pub struct ConfigError {
    /// The environment variable (or builder method) that was wrong.
    pub var: &'static str,
    /// The value it had.
    pub value: String,
    /// What it accepts.
    pub expected: String,
}

impl std::fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ConfigError {
    /// A variable of the process environment that holds bytes that are not UTF-8.
    pub(crate) fn not_unicode(var: &'static str, value: &std::ffi::OsStr) -> Self {
        // Credentials are never echoed, not even mangled ones: periscope's own that hold them,
        // and any name the log layer would redact (`DB_PASSWORD`, `API_KEY`).
        let secret = ["TOKEN", "HEADERS", "ENDPOINT"]
            .iter()
            .any(|part| var.contains(part))
            || periscope_log::Redactor::default().hides_field(var);
        let value = if secret {
            "[REDACTED]".to_owned()
        } else {
            value.to_string_lossy().into_owned()
        };
        Self::new(
            var,
            value,
            "the value is not valid UTF-8 (check the encoding of the file or secret it comes from)",
        )
    }

    /// The error for `var` holding `value`. It ends up on stderr and in logs, so the value is
    /// shown only as far as nothing in it is a secret: not at all under a sensitive name
    /// (`DB_PASSWORD`, `API_KEY`, `PROXY_AUTH`, as log fields are redacted), else with the secrets of the
    /// URLs, `key=value` pairs and JSON in it masked (a connection string given to the wrong
    /// variable).
    pub(crate) fn new(
        var: &'static str,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        let redactor = periscope_log::Redactor::default();
        let raw = value.into();
        let value = if redactor.hides_field(var) {
            periscope_log::REDACTED.to_owned()
        } else {
            redactor.mask_text(&raw).unwrap_or_else(|| raw.clone())
        };
        // The reason may quote the value (a log directive that is not one), or a part of it
        // that the masking hid (`"hunter2" is not a log level` for `token=hunter2`).
        let mut expected = expected.into();
        if !raw.is_empty() && value != raw {
            expected = replace_whole(&expected, &raw, &value);
            expected = hide_quoted_parts(&expected, &raw, &value);
        }
        let expected = redactor.mask_text(&expected).unwrap_or(expected);
        Self {
            var,
            value,
            expected,
        }
    }
}

/// `text` with each occurrence of `raw` that stands alone (not inside a longer run of letters
/// and digits) replaced by `with`: a short value hidden under a sensitive name (`0` for
/// `MAX_SESSIONS`) leaves the accepted values (`1 to 100`) as they are.
fn replace_whole(text: &str, raw: &str, with: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(raw) {
        let end = at + raw.len();
        let joined_before =
            raw.starts_with(char::is_alphanumeric) && is_word(text[..at].chars().last());
        let joined_after =
            raw.ends_with(char::is_alphanumeric) && is_word(text[end..].chars().next());
        if !(joined_before || joined_after) {
            out.push_str(&text[copied..at]);
            out.push_str(with);
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// `reason` with each quoted part (`"..."`) that the raw value holds but its masked form does
/// not replaced by `[REDACTED]`.
fn hide_quoted_parts(reason: &str, raw: &str, masked: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(open) = rest.find('"') {
        let Some(close) = rest[open + 1..].find('"').map(|at| open + 1 + at) else {
            break;
        };
        let quoted = &rest[open + 1..close];
        out.push_str(&rest[..=open]);
        if !quoted.is_empty() && raw.contains(quoted) && !masked.contains(quoted) {
            out.push_str(periscope_log::REDACTED);
        } else {
            out.push_str(quoted);
        }
        out.push('"');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

impl From<periscope_log::ConfigError> for ConfigError {
    fn from(error: periscope_log::ConfigError) -> Self {
        Self::new(error.var, error.value, error.reason)
    }
}

#[cfg(feature = "otel")]
impl From<periscope_trace::otel::ConfigError> for ConfigError {
    fn from(error: periscope_trace::otel::ConfigError) -> Self {
        Self::new(error.var, error.value, error.expected)
    }
}

/// The drain period when `SHUTDOWN_DRAIN_S` is not set.
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// The longest drain period accepted: past it, an orchestrator kills the process anyway
/// (Kubernetes' default grace period is 30 s).
pub const MAX_SHUTDOWN_DRAIN: Duration = Duration::from_secs(300);

/// The shortest `ADMIN_TOKEN` accepted: a bearer token guessable by brute force is no gate.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Everything the environment (or the builder) can set. See `docs/configuration.md`.
///
/// Its `Debug` output never shows the admin token (nor credentials in an OTLP endpoint).
#[derive(Clone)]
#[non_exhaustive]
pub struct Settings {
    /// `SERVICE_NAME` (or `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
    /// with the `otel` feature): the `service` of every log line, metric and exported span.
    pub service_name: String,
    /// `ENVIRONMENT`: `production`, `staging`, ... (default `development`).
    pub environment: String,
    /// The service's version (set in code, usually `env!("CARGO_PKG_VERSION")`).
    pub version: String,
    /// `LOG_FORMAT`: JSON (default) or pretty.
    pub log_format: LogFormat,
    /// `LOG_LEVEL` or `RUST_LOG` directives (default `info`).
    pub log_directives: Directives,
    /// `ENABLE_METRICS` (default `true`): the RED layer and `/metrics`.
    pub metrics: bool,
    /// `ENABLE_TRACING` (default `true`): OpenTelemetry export when an endpoint is set.
    pub tracing: bool,
    /// `ENABLE_GPU` (default `false`): the NVIDIA GPU collector.
    pub gpu: bool,
    /// `GPU_PROCESSES` (default `own`): whose GPU memory the collector reports.
    pub gpu_processes: GpuProcesses,
    /// `ADMIN_TOKEN`: turns the `/debug/*` endpoints on behind this bearer token.
    pub admin_token: Option<String>,
    /// `REQUEST_TIMEOUT_S`: requests whose answer's head has not come within it get a 504
    /// envelope, a 408 when the handler was waiting for a request body the client stalled
    /// (default: none); a streamed body may run longer.
    pub request_timeout: Option<Duration>,
    /// `SHUTDOWN_DRAIN_S`: how long `/ready` answers `draining` after SIGTERM or Ctrl-C before
    /// the listeners close (default 5 s, at most [`MAX_SHUTDOWN_DRAIN`]).
    pub shutdown_drain: Duration,
    /// `TRUSTED_PROXIES`: the networks of the proxies in front of the service, whose
    /// forwarding header tells the client's address (the access line's `client`, the span's
    /// `client.address`); default none. `TRUSTED_PROXIES_HEADER`: which header they set
    /// ([`TrustedProxies::forwarding_header`], `x-forwarded-for` by default, or `forwarded`),
    /// the only one read. See [`TrustedProxies::client_addr`].
    pub trusted_proxies: TrustedProxies,
    /// `OTEL_PROPAGATORS`: the formats the layers read and send (W3C Trace Context and Baggage
    /// by default). Read in every build, with the `otel` feature or without: it names what is
    /// propagated, not what is exported.
    pub propagators: periscope_trace::Propagators,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which traces are sampled
    /// (`parentbased_always_on` by default). Read in every build: where no OpenTelemetry
    /// sampler decides (a build without the `otel` feature, or one that exports nothing),
    /// the layers decide with it, so the `sampled` flag sent downstream follows it.
    pub sampler: periscope_trace::Sampler,
    /// The OpenTelemetry settings (`OTEL_*`).
    #[cfg(feature = "otel")]
    pub otel: periscope_trace::otel::OtelConfig,
    /// The variables read as sets, by earlier sources: the OpenTelemetry settings, and the
    /// pairs where one variable wins over the other (`SERVICE_NAME` over `OTEL_SERVICE_NAME`,
    /// `LOG_LEVEL` over `RUST_LOG`). A later source (`.env()` after `.env_from(..)`) that leaves
    /// one unset keeps its earlier value, as for every other variable, rather than letting the
    /// variable it sets win over one it did not. Never shown (headers).
    layered_variables: HashMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service_name: "unknown_service".to_owned(),
            environment: "development".to_owned(),
            version: "0.0.0".to_owned(),
            log_format: LogFormat::Json,
            log_directives: Directives::default(),
            metrics: true,
            tracing: true,
            gpu: false,
            gpu_processes: GpuProcesses::Own,
            admin_token: None,
            request_timeout: None,
            shutdown_drain: DEFAULT_SHUTDOWN_DRAIN,
            trusted_proxies: TrustedProxies::none(),
            propagators: periscope_trace::Propagators::default(),
            sampler: periscope_trace::Sampler::default(),
            #[cfg(feature = "otel")]
            otel: periscope_trace::otel::OtelConfig::default(),
            layered_variables: HashMap::new(),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Settings");
        debug
            .field("service_name", &self.service_name)
            .field("environment", &self.environment)
            .field("version", &self.version)
            .field("log_format", &self.log_format)
            .field("log_directives", &self.log_directives)
            .field("metrics", &self.metrics)
            .field("tracing", &self.tracing)
            .field("gpu", &self.gpu)
            .field("gpu_processes", &self.gpu_processes)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_drain", &self.shutdown_drain)
            .field("trusted_proxies", &self.trusted_proxies.to_string())
            .field(
                "trusted_proxies_header",
                &self.trusted_proxies.forwarding_header().as_str(),
            )
            .field("propagators", &self.propagators)
            .field("sampler", &self.sampler);
        #[cfg(feature = "otel")]
        debug.field("otel", &self.otel);
        debug.finish()
    }
}

impl Settings {
    /// Forgets what earlier sources set for `names` (a pair where one wins over the other):
    /// called by a builder setter for the setting they make, so that a later source setting
    /// only the other of the pair is read over the code's value, not over the earlier
    /// source's value the code replaced.
    pub(crate) fn forget(&mut self, names: &[&str]) {
        for name in names {
            self.layered_variables.remove(*name);
        }
    }

    /// Sets the variables of `values` (`None` unsets one) as a source of their own, applied on
    /// top of these settings: what the builder's OpenTelemetry setters give in code.
    pub(crate) fn apply_code(self, values: &[(&str, Option<String>)]) -> Result<Self, ConfigError> {
        let mut settings = self;
        for (name, value) in values {
            match value {
                Some(value) => settings
                    .layered_variables
                    .insert((*name).to_owned(), value.clone()),
                None => settings.layered_variables.remove(*name),
            };
        }
        // Every other variable unset: the layered ones are read again, these among them.
        let names: Vec<&str> = values.iter().map(|(name, _)| *name).collect();
        let from_code = settings.layered_variables.clone();
        // Read again, `OTEL_RESOURCE_ATTRIBUTES` would name the service anew, over a
        // `.service_name(..)` called since: the name stays as it is.
        let service_name = settings.service_name.clone();
        let mut settings = settings.apply_env(|name| {
            names
                .contains(&name)
                .then(|| from_code.get(name).cloned())
                .flatten()
        })?;
        #[cfg(feature = "otel")]
        {
            settings.otel.service_name = Some(service_name.clone());
        }
        settings.service_name = service_name;
        Ok(settings)
    }

    /// Applies every variable `lookup` knows on top of these settings. Empty values count as
    /// unset; anything malformed is an error that names the variable and what it accepts.
    pub fn apply_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        // Each variable of a set as this source sets it, else as an earlier one did.
        let earlier = std::mem::take(&mut self.layered_variables);
        let read = std::cell::RefCell::new(earlier.clone());
        let merged = |name: &str| {
            let value = get(name).or_else(|| earlier.get(name).cloned())?;
            read.borrow_mut().insert(name.to_owned(), value.clone());
            Some(value)
        };
        let sets_any = |names: &[&str]| names.iter().any(|name| get(name).is_some());

        // The error names the variable the value came from.
        if sets_any(&["SERVICE_NAME", "OTEL_SERVICE_NAME"]) {
            if let Some(name) = merged("SERVICE_NAME") {
                self.service_name = checked_name("SERVICE_NAME", name)?;
            } else if let Some(name) = merged("OTEL_SERVICE_NAME") {
                self.service_name = checked_name("OTEL_SERVICE_NAME", name)?;
            }
        }
        if let Some(environment) = get("ENVIRONMENT") {
            self.environment = checked_name("ENVIRONMENT", environment)?;
        }
        if get("LOG_FORMAT").is_some() {
            // The format alone: this source's `RUST_LOG` may be one that an earlier source's
            // `LOG_LEVEL` overrides, never to be read.
            let format_only = |name: &str| (name == "LOG_FORMAT").then(|| lookup(name)).flatten();
            self.log_format = LogConfig::from_lookup(format_only)?.format;
        }
        if sets_any(&["LOG_LEVEL", "RUST_LOG"]) {
            self.log_directives = LogConfig::from_lookup(merged)?.directives;
        }
        if let Some(value) = get("ENABLE_METRICS") {
            self.metrics = parse_bool("ENABLE_METRICS", &value)?;
        }
        if let Some(value) = get("ENABLE_TRACING") {
            self.tracing = parse_bool("ENABLE_TRACING", &value)?;
        }
        if let Some(value) = get("ENABLE_GPU") {
            self.gpu = parse_bool("ENABLE_GPU", &value)?;
            #[cfg(not(feature = "gpu"))]
            if self.gpu {
                return Err(ConfigError::new("ENABLE_GPU", value, NO_GPU_SUPPORT));
            }
        }
        if let Some(value) = get("GPU_PROCESSES") {
            self.gpu_processes = GpuProcesses::parse("GPU_PROCESSES", &value)?;
        }
        if let Some(token) = get("ADMIN_TOKEN") {
            self.admin_token = Some(checked_token("ADMIN_TOKEN", token)?);
        }
        if let Some(value) = get("REQUEST_TIMEOUT_S") {
            self.request_timeout = Some(parse_seconds("REQUEST_TIMEOUT_S", &value)?);
        }
        if let Some(value) = get("SHUTDOWN_DRAIN_S") {
            self.shutdown_drain = parse_drain(&value)?;
        }
        if let Some(value) = get("TRUSTED_PROXIES") {
            let header = self.trusted_proxies.forwarding_header();
            self.trusted_proxies =
                parse_trusted_proxies("TRUSTED_PROXIES", &value)?.with_forwarding_header(header);
        }
        if let Some(value) = get("TRUSTED_PROXIES_HEADER") {
            let header = parse_forwarding_header("TRUSTED_PROXIES_HEADER", &value)?;
            self.trusted_proxies = self.trusted_proxies.clone().with_forwarding_header(header);
        }
        // The resource attributes name the service only from the source that sets them: read
        // again from an earlier source, they would undo a `.service_name(..)` called since.
        let resource_attributes_here = get("OTEL_RESOURCE_ATTRIBUTES").is_some();
        self.apply_otel_env(&merged, resource_attributes_here)?;
        self.layered_variables = read.into_inner();
        Ok(self)
    }

    #[cfg(feature = "otel")]
    fn apply_otel_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
        resource_attributes_here: bool,
    ) -> Result<(), ConfigError> {
        let mut otel = periscope_trace::otel::OtelConfig::from_lookup(lookup)?;
        self.propagators = otel.propagators;
        self.sampler = otel.sampler;
        // Without SERVICE_NAME or OTEL_SERVICE_NAME, `service.name` in OTEL_RESOURCE_ATTRIBUTES
        // names the service, as OpenTelemetry specifies (the last one wins, as in the resource).
        let named = ["SERVICE_NAME", "OTEL_SERVICE_NAME"]
            .iter()
            .any(|var| lookup(var).is_some_and(|v| !v.trim().is_empty()));
        if !named
            && resource_attributes_here
            && let Some((_, name)) = otel
                .resource_attributes
                .iter()
                .rev()
                .find(|(key, _)| key == "service.name")
        {
            // The value shown is the pair, not the bare name: `""` for `service.name=` named
            // nothing that is in the variable.
            self.service_name =
                checked_name("OTEL_RESOURCE_ATTRIBUTES", name.clone()).map_err(|error| {
                    ConfigError::new(error.var, format!("service.name={name}"), error.expected)
                })?;
        }
        // One service name everywhere: the log lines', the metrics' and the exported spans'.
        otel.service_name = Some(self.service_name.clone());
        self.otel = otel;
        Ok(())
    }

    #[cfg(not(feature = "otel"))]
    fn apply_otel_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
        _resource_attributes_here: bool,
    ) -> Result<(), ConfigError> {
        // What is propagated does not depend on export: honoured (and checked) in this build
        // too, or `none` would be ignored without a word.
        if let Some(value) = lookup("OTEL_PROPAGATORS")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        {
            self.propagators =
                periscope_trace::Propagators::from_list(&value).ok_or_else(|| {
                    ConfigError::new(
                        "OTEL_PROPAGATORS",
                        value.clone(),
                        periscope_trace::Propagators::ACCEPTED,
                    )
                })?;
        }
        // Sampling decides the `sampled` flag sent downstream, with export or without.
        let value = |var: &str| {
            lookup(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (name, arg) = (
            value("OTEL_TRACES_SAMPLER"),
            value("OTEL_TRACES_SAMPLER_ARG"),
        );
        self.sampler = periscope_trace::Sampler::from_env_values(name.as_deref(), arg.as_deref())
            .map_err(|error| ConfigError::new(error.var, error.value, error.expected))?;
        // Export switched off the standard ways needs no exporter.
        let is = |var: &str, off: &str| {
            lookup(var).is_some_and(|value| value.trim().eq_ignore_ascii_case(off))
        };
        if !self.tracing || is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
            return Ok(());
        }
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            if let Some(value) = lookup(var).filter(|v| !v.trim().is_empty()) {
                return Err(ConfigError::new(
                    var,
                    value,
                    "this build has no OpenTelemetry export: enable periscope's `otel` feature, \
                     or unset the variable (or set ENABLE_TRACING=false, OTEL_SDK_DISABLED=true \
                     or OTEL_TRACES_EXPORTER=none)",
                ));
            }
        }
        Ok(())
    }

    /// The settings as JSON for `/debug/config`: the admin token shows as `[REDACTED]` when
    /// set, and secrets in the OTLP endpoint's query (`?api_key=...`) are masked, so the value
    /// is safe to log too.
    pub fn to_json(&self) -> serde_json::Value {
        #[allow(unused_mut)]
        let mut json = serde_json::json!({
            "service_name": self.service_name,
            "environment": self.environment,
            "version": self.version,
            "log_format": match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
            },
            "log_level": self.log_directives.to_string(),
            "enable_metrics": self.metrics,
            "enable_tracing": self.tracing,
            "enable_gpu": self.gpu,
            "gpu_processes": self.gpu_processes.as_str(),
            "admin_token": self.admin_token.as_ref().map(|_| "[REDACTED]"),
            "request_timeout_s": self.request_timeout.map(|t| t.as_secs_f64()),
            "shutdown_drain_s": self.shutdown_drain.as_secs_f64(),
            "trusted_proxies": self.trusted_proxies.to_string(),
            "trusted_proxies_header": self.trusted_proxies.forwarding_header().as_str(),
            // What the layers read and send, and the `sampled` flag where no exporter decides:
            // an operator can tell why downstream sees no `traceparent`, or `sampled` off.
            "propagators": self.propagators.as_list(),
            "sampler": format!("{:?}", self.sampler),
        });
        #[cfg(feature = "otel")]
        if let Some(map) = json.as_object_mut() {
            // A key in the endpoint's query (`?api_key=...`) is masked here, not only by the
            // admin surface: the value is logged as it is.
            let endpoint = self.otel.traces_endpoint().map(|endpoint| {
                periscope_log::Redactor::default()
                    .mask_text(&endpoint)
                    .unwrap_or(endpoint)
            });
            map.insert(
                "otel".to_owned(),
                serde_json::json!({
                    "traces_endpoint": endpoint,
                    "protocol": format!("{:?}", self.otel.protocol),
                    "sampler": format!("{:?}", self.otel.sampler),
                    "disabled": self.otel.disabled,
                }),
            );
        }
        json
    }
}

/// Names end up in every log line and as metric label values: keep them short and printable.
pub(crate) fn checked_name(var: &'static str, value: String) -> Result<String, ConfigError> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(value)
    } else {
        Err(ConfigError::new(
            var,
            value,
            "use 1-128 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// Comma-separated networks in CIDR notation (or single addresses).
pub(crate) fn parse_trusted_proxies(
    var: &'static str,
    value: &str,
) -> Result<TrustedProxies, ConfigError> {
    value
        .parse()
        .map_err(|error: periscope_context::InvalidProxyNet| {
            ConfigError::new(
                var,
                value,
                format!("{error}; list networks separated by commas, as in 10.0.0.0/8,fd00::/8"),
            )
        })
}

/// `x-forwarded-for` or `forwarded`, in any case.
pub(crate) fn parse_forwarding_header(
    var: &'static str,
    value: &str,
) -> Result<ForwardingHeader, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            var,
            value,
            "use x-forwarded-for (the default) or forwarded: the header your proxies set",
        )
    })
}

/// `token` under `ADMIN_TOKEN`'s rules; an error names `var` (the variable, or the builder
/// method that set it).
pub(crate) fn checked_token(var: &'static str, token: String) -> Result<String, ConfigError> {
    if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        // Never echo a secret back, not even a bad one.
        return Err(ConfigError::new(
            var,
            "[REDACTED]",
            format!(
                "use at least {MIN_ADMIN_TOKEN_LEN} printable characters without spaces \
                 (for example the output of `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(token)
}

/// Whose GPU memory the GPU collector reports (`gpu_process_memory_used_bytes`, the
/// `/debug/status` snapshot's `processes`). NVML names processes by their pid in the host's
/// pid namespace: in a container without it (a Kubernetes pod without `hostPID`) this process's
/// own pid is never listed, so [`Own`](Self::Own) reports nothing there, and
/// [`All`](Self::All) is the way to see the memory of a GPU the container has to itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuProcesses {
    /// This process (`own`, the default).
    #[default]
    Own,
    /// Every process on the service's GPUs (`all`): for a GPU given to this service alone, as
    /// a device plugin gives one to a container; each process is a `pid` label value.
    All,
    /// None: the processes are not listed at all (`off`).
    Off,
}

impl GpuProcesses {
    /// The setting's value as written in `GPU_PROCESSES`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::All => "all",
            Self::Off => "off",
        }
    }

    fn parse(var: &'static str, value: &str) -> Result<Self, ConfigError> {
        match value.to_ascii_lowercase().as_str() {
            "own" => Ok(Self::Own),
            "all" => Ok(Self::All),
            "off" => Ok(Self::Off),
            _ => Err(ConfigError::new(var, value, "use own, all or off")),
        }
    }
}

pub(crate) fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            value,
            "use true or false (also 1/0, yes/no, on/off)",
        )),
    }
}

/// The request timeouts accepted: below a millisecond every request would time out at once.
const REQUEST_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(86_400);

fn parse_seconds(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|timeout| REQUEST_TIMEOUTS.contains(timeout))
        .ok_or_else(|| timeout_error(var, value))
}

/// Why the GPU collector cannot be turned on in a build without the `gpu` feature.
#[cfg(not(feature = "gpu"))]
pub(crate) const NO_GPU_SUPPORT: &str =
    "this build has no GPU support: enable periscope's `gpu` feature";

/// The same bounds as `REQUEST_TIMEOUT_S`, for a timeout set in code (`request_timeout`).
pub(crate) fn checked_timeout(timeout: Duration) -> Result<Duration, ConfigError> {
    if REQUEST_TIMEOUTS.contains(&timeout) {
        Ok(timeout)
    } else {
        Err(ConfigError::new(
            "request_timeout",
            format!("{timeout:?}"),
            "use a duration from 1 ms to 86400 s (REQUEST_TIMEOUT_S has the same bounds)",
        ))
    }
}

/// The same bound as `SHUTDOWN_DRAIN_S`, for a drain set in code (`shutdown_drain`).
pub(crate) fn checked_drain(drain: Duration) -> Result<Duration, ConfigError> {
    if drain <= MAX_SHUTDOWN_DRAIN {
        Ok(drain)
    } else {
        Err(ConfigError::new(
            "shutdown_drain",
            format!("{drain:?}"),
            "use a duration of at most 300 s (SHUTDOWN_DRAIN_S has the same bound)",
        ))
    }
}

fn timeout_error(var: &'static str, value: impl Into<String>) -> ConfigError {
    ConfigError::new(
        var,
        value,
        "use a number of seconds from 0.001 to 86400 (for example 30 or 2.5)",
    )
}

fn parse_drain(value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|drain| *drain <= MAX_SHUTDOWN_DRAIN)
        .ok_or_else(|| drain_error(value))
}

fn drain_error(value: impl Into<String>) -> ConfigError {
    ConfigError::new(
        "SHUTDOWN_DRAIN_S",
        value,
        "use a number of seconds from 0 to 300 (for example 15)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `main() -> Result<(), Box<dyn Error>>` prints an error with `Debug`: the message, not
    /// the struct.
    #[test]
    fn a_setting_error_returned_from_main_reads_as_its_message() {
        let error = env(&[("LOG_FORMAT", "xml")]).unwrap_err();
        let boxed: Box<dyn std::error::Error> = Box::new(crate::Error::from(error.clone()));
        assert_eq!(format!("{boxed:?}"), error.to_string());
        assert!(
            format!("{error:?}").starts_with("LOG_FORMAT=\"xml\" is invalid"),
            "{error:?}"
        );
    }

    fn env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::default().apply_env(lookup(vars))
    }

    /// A source holding `vars`.
    fn lookup<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// A short value hidden under a sensitive name is not hidden again inside the accepted
    /// values: they stay readable, while the value itself, standing alone, is hidden.
    #[test]
    fn a_hidden_value_leaves_the_accepted_values_readable() {
        for (var, value, expected) in [
            (
                "MAX_SESSIONS",
                "0",
                "use a number of sessions from 1 to 100",
            ),
            ("SESSION_TTL_S", "0", "use seconds from 60 to 86400"),
            (
                "USE_SESSION_CACHE",
                "n",
                "use true or false (also 1/0, yes/no, on/off)",
            ),
        ] {
            let error = ConfigError::new(var, value, expected);
            assert_eq!(error.value, "[REDACTED]");
            assert_eq!(error.expected, expected);
        }
        let error = ConfigError::new("API_TOKEN", "s3cr3t", "s3cr3t is too short; s3cr3t2 too");
        assert_eq!(error.expected, "[REDACTED] is too short; s3cr3t2 too");
        let error = ConfigError::new("API_TOKEN", "ab-cd", "got x/ab-cd/y");
        assert_eq!(error.expected, "got x/[REDACTED]/y");
    }

    /// A second source applied on top (`env_from(file)?.env()?`) replaces only what it sets,
    /// the OpenTelemetry variables as every other.
    #[test]
    fn a_later_source_keeps_the_otel_settings_it_does_not_set() {
        let mut vars = vec![
            ("SERVICE_NAME", "checkout"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_PROPAGATORS", "baggage"),
        ];
        // A build without export refuses an endpoint.
        if cfg!(feature = "otel") {
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"));
        }
        let first = env(&vars).unwrap();
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let second = first
            .clone()
            .apply_env(lookup(&[
                ("LOG_LEVEL", "debug"),
                ("OTEL_TRACES_SAMPLER", ""),
            ]))
            .unwrap();
        assert_eq!(second.sampler, periscope_trace::Sampler::AlwaysOff);
        assert_eq!(second.propagators, first.propagators);
        assert!(!second.propagators.trace_context());
        assert_eq!(second.service_name, "checkout");
        #[cfg(feature = "otel")]
        assert_eq!(
            second.otel.endpoint.as_deref(),
            Some("http://collector:4317")
        );
        // What the later source sets wins.
        let third = second
            .apply_env(lookup(&[("OTEL_TRACES_SAMPLER", "always_on")]))
            .unwrap();
        assert_eq!(third.sampler, periscope_trace::Sampler::AlwaysOn);
        assert!(!third.propagators.trace_context());
    }

    /// Of a pair where one variable wins (`SERVICE_NAME` over `OTEL_SERVICE_NAME`, `LOG_LEVEL`
    /// over `RUST_LOG`), a later source setting only the weaker one (a platform injecting
    /// `OTEL_SERVICE_NAME` into the process's environment) does not override the stronger one
    /// an earlier source set: each source replaces only the variables it sets.
    /// A later source's `LOG_FORMAT` reads the format alone: its `RUST_LOG`, which an earlier
    /// `LOG_LEVEL` overrides, is not read (nor refused) because of it.
    #[test]
    fn a_later_log_format_leaves_an_overridden_rust_log_unread() {
        let file = env(&[("LOG_LEVEL", "debug")]).unwrap();
        let process = [
            ("LOG_FORMAT", "pretty"),
            ("RUST_LOG", "info,tower_http[request]=debug"),
        ];
        let settings = file.apply_env(lookup(&process)).unwrap();
        assert_eq!(settings.log_format, LogFormat::Pretty);
        assert_eq!(settings.log_directives.to_string(), "debug");
        // A bad format is still refused, naming its variable.
        let error = env(&[])
            .unwrap()
            .apply_env(|name| (name == "LOG_FORMAT").then(|| "yaml".to_owned()))
            .unwrap_err();
        assert!(error.to_string().contains("LOG_FORMAT"), "{error}");
    }

    #[test]
    fn a_later_source_setting_the_weaker_of_a_pair_keeps_the_stronger() {
        let file = env(&[("SERVICE_NAME", "checkout"), ("LOG_LEVEL", "debug")]).unwrap();
        let process = [("OTEL_SERVICE_NAME", "auto"), ("RUST_LOG", "warn")];
        let both = file.clone().apply_env(lookup(&process)).unwrap();
        assert_eq!(both.service_name, "checkout");
        assert_eq!(both.log_directives.to_string(), "debug");
        #[cfg(feature = "otel")]
        assert_eq!(both.otel.service_name.as_deref(), Some("checkout"));
        // The stronger one set later wins, as the weaker one does over nothing.
        let later = both
            .apply_env(|name| (name == "SERVICE_NAME").then(|| "billing".to_owned()))
            .unwrap();
        assert_eq!(later.service_name, "billing");
        let weaker_only = env(&[("OTEL_SERVICE_NAME", "auto")]).unwrap();
        assert_eq!(weaker_only.service_name, "auto");
        let weaker_later = env(&[])
            .unwrap()
            .apply_env(|name| (name == "RUST_LOG").then(|| "warn".to_owned()))
            .unwrap();
        assert_eq!(weaker_later.log_directives.to_string(), "warn");
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let s = env(&[]).unwrap();
        assert_eq!(s.service_name, "unknown_service");
        assert_eq!(s.environment, "development");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_directives.to_string(), "info");
        assert!(s.metrics && s.tracing && !s.gpu);
        assert_eq!(s.gpu_processes, GpuProcesses::Own);
        assert!(s.admin_token.is_none() && s.request_timeout.is_none());
    }

    #[test]
    fn every_variable_is_read() {
        let s = env(&[
            ("SERVICE_NAME", "inference-gateway"),
            ("ENVIRONMENT", "production"),
            ("LOG_FORMAT", "pretty"),
            ("LOG_LEVEL", "debug"),
            ("ENABLE_METRICS", "false"),
            ("ENABLE_TRACING", "0"),
            ("ENABLE_GPU", "yes"),
            ("GPU_PROCESSES", "All"),
            ("ADMIN_TOKEN", "0123456789abcdef0123"),
            ("REQUEST_TIMEOUT_S", "2.5"),
        ])
        .unwrap();
        assert_eq!(s.service_name, "inference-gateway");
        assert_eq!(s.environment, "production");
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(s.log_directives.to_string(), "debug");
        assert!(!s.metrics && !s.tracing && s.gpu);
        assert_eq!(s.gpu_processes, GpuProcesses::All);
        assert_eq!(s.to_json()["gpu_processes"], "all");
        assert_eq!(s.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(s.request_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            env(&[("OTEL_SERVICE_NAME", "svc")]).unwrap().service_name,
            "svc"
        );
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_accepted_values() {
        let cases: &[(&str, &str, &str)] = &[
            ("ENABLE_METRICS", "maybe", "true or false"),
            ("ENABLE_TRACING", "2", "true or false"),
            ("LOG_FORMAT", "xml", "json or pretty"),
            ("GPU_PROCESSES", "mine", "own, all or off"),
            ("LOG_LEVEL", "loud", ""),
            ("REQUEST_TIMEOUT_S", "-1", "seconds"),
            ("REQUEST_TIMEOUT_S", "soon", "seconds"),
            ("REQUEST_TIMEOUT_S", "1e-12", "from 0.001"),
            ("REQUEST_TIMEOUT_S", "NaN", "seconds"),
            ("SERVICE_NAME", "my service", "A-Z"),
            ("ENVIRONMENT", "prod env", "A-Z"),
        ];
        for (var, value, expected) in cases {
            let error = env(&[(var, value)]).unwrap_err();
            assert_eq!(error.var, *var, "{error}");
            let text = error.to_string();
            assert!(text.starts_with(var) && text.contains(expected), "{text}");
        }
    }

    #[test]
    fn every_variable_read_is_listed() {
        // `env()` names a variable that is not UTF-8 only if it is listed.
        let read = std::cell::RefCell::new(Vec::new());
        Settings::default()
            .apply_env(|name| {
                read.borrow_mut().push(name.to_owned());
                None
            })
            .unwrap();
        for name in read.into_inner() {
            assert!(VARIABLES.contains(&name.as_str()), "{name} is not listed");
        }
    }

    #[test]
    fn a_weak_admin_token_is_refused_without_being_echoed() {
        let error = env(&[("ADMIN_TOKEN", "hunter2")]).unwrap_err();
        assert_eq!(error.var, "ADMIN_TOKEN");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn an_otlp_endpoint_without_the_otel_feature_is_an_error() {
        let error = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")]).unwrap_err();
        assert_eq!(error.var, "OTEL_EXPORTER_OTLP_ENDPOINT");
        // Export switched off any standard way needs no exporter.
        for off in [
            ("ENABLE_TRACING", "false"),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"), off]).is_ok(),
                "{off:?}"
            );
        }
        // The error never shows the endpoint's credentials.
        let error =
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:hunter2@h:4318")]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    /// The sampler is read and checked with the `otel` feature and without it: the layers
    /// decide the `sampled` flag with it where nothing is exported.
    #[test]
    fn the_trace_sampler_is_read_in_every_build() {
        use periscope_trace::Sampler;
        assert_eq!(env(&[]).unwrap().sampler, Sampler::ParentBasedAlwaysOn);
        let s = env(&[
            ("OTEL_TRACES_SAMPLER", " parentbased_traceidratio "),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(s.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        let error = env(&[("OTEL_TRACES_SAMPLER", "sometimes")]).unwrap_err();
        assert_eq!(error.var, "OTEL_TRACES_SAMPLER");
        let error = env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ])
        .unwrap_err();
        assert_eq!(error.var, "OTEL_TRACES_SAMPLER_ARG");
    }

    #[cfg(feature = "otel")]
    #[test]
    fn otel_settings_are_read_and_checked() {
        let s = env(&[
            ("SERVICE_NAME", "api"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(
            s.otel.traces_endpoint().as_deref(),
            Some("http://localhost:4317")
        );
        assert_eq!(s.otel.service_name.as_deref(), Some("api"));
        let error = env(&[("OTEL_TRACES_SAMPLER", "sometimes")]).unwrap_err();
        assert_eq!(error.var, "OTEL_TRACES_SAMPLER");
    }

    /// A `service.name` in `OTEL_RESOURCE_ATTRIBUTES` that cannot name the service shows the
    /// pair it came from: `OTEL_RESOURCE_ATTRIBUTES=""` for `service.name=` named nothing the
    /// variable holds.
    #[cfg(feature = "otel")]
    #[test]
    fn a_bad_service_name_attribute_shows_its_pair() {
        for (value, shown) in [
            ("team=a,service.name=", "service.name="),
            ("service.name=my%20shop", "service.name=my shop"),
        ] {
            let error = env(&[("OTEL_RESOURCE_ATTRIBUTES", value)]).unwrap_err();
            assert_eq!(error.var, "OTEL_RESOURCE_ATTRIBUTES");
            assert_eq!(error.value, shown);
            assert!(error.expected.contains("A-Z a-z 0-9"), "{error}");
        }
    }
}

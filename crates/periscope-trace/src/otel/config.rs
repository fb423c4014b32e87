//! OpenTelemetry settings, read from the standard `OTEL_*` environment variables.

use std::time::Duration;

use crate::propagation::Propagators;

/// A malformed setting, named with the variable that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The value it held.
    pub value: String,
    /// What is accepted.
    pub expected: &'static str,
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`), usually on port 4317.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`, the default), usually on port 4318.
    #[default]
    HttpProtobuf,
}

impl Protocol {
    /// The value `OTEL_EXPORTER_OTLP_PROTOCOL` gives it by: `grpc` or `http/protobuf`.
    ///
    /// ```
    /// use periscope_trace::otel::Protocol;
    ///
    /// assert_eq!(Protocol::Grpc.as_str(), "grpc");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

pub use crate::sampler::Sampler;

/// The OpenTelemetry SDK's sampler for `sampler`.
pub(crate) fn sdk_sampler(sampler: Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as Sdk;
    match sampler {
        Sampler::AlwaysOn => Sdk::AlwaysOn,
        Sampler::AlwaysOff => Sdk::AlwaysOff,
        Sampler::TraceIdRatio(ratio) => Sdk::TraceIdRatioBased(ratio),
        Sampler::ParentBasedAlwaysOn => Sdk::ParentBased(Box::new(Sdk::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => Sdk::ParentBased(Box::new(Sdk::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(ratio) => {
            Sdk::ParentBased(Box::new(Sdk::TraceIdRatioBased(ratio)))
        }
    }
}

/// Everything the tracer provider is built from. [`OtelConfig::from_env`] reads the standard
/// variables; every field can also be set in code.
///
/// ```
/// use periscope_trace::otel::{OtelConfig, Protocol, Sampler};
///
/// let env = [
///     ("OTEL_SERVICE_NAME", "checkout"),
///     ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
///     ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
///     ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
///     ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
/// ];
/// let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
/// let config = OtelConfig::from_lookup(lookup).unwrap();
/// assert_eq!(config.protocol, Protocol::Grpc);
/// assert_eq!(config.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
/// assert_eq!(config.traces_endpoint().as_deref(), Some("http://collector:4317"));
///
/// let bad = |name: &str| match name {
///     "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_string()),
///     "OTEL_TRACES_SAMPLER_ARG" => Some("half".to_string()),
///     _ => None,
/// };
/// let error = OtelConfig::from_lookup(bad).unwrap_err();
/// assert!(error.to_string().starts_with("OTEL_TRACES_SAMPLER_ARG=\"half\""));
/// ```
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct OtelConfig {
    /// `service.name` (`SERVICE_NAME`, else `OTEL_SERVICE_NAME`; else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`; else the SDK's default, `unknown_service`).
    pub service_name: Option<String>,
    /// The resource's attributes (`OTEL_RESOURCE_ATTRIBUTES`: `key=value,...`, the values
    /// percent-decoded); a later key wins over an earlier one.
    pub resource_attributes: Vec<(String, String)>,
    /// The collector's base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`); for HTTP, `/v1/traces` is
    /// appended. No endpoint at all means no export.
    pub endpoint: Option<String>,
    /// The full traces URL, used as is (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); wins over
    /// `endpoint`.
    pub traces_endpoint_override: Option<String>,
    /// The transport (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`; default `http/protobuf`).
    pub protocol: Protocol,
    /// The sampler (default `parentbased_always_on`).
    pub sampler: Sampler,
    /// The propagation formats (`OTEL_PROPAGATORS`; default `tracecontext,baggage`).
    pub propagators: Propagators,
    /// Nothing exported (`OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    pub disabled: bool,
    /// The exporter's headers and timeout and the batch processor's sizes, as read from the
    /// same source as the rest (default: the SDK's).
    pub export: ExportSettings,
}

/// The exporter's and the batch processor's settings that [`OtelConfig::from_lookup`] reads,
/// so a configuration source other than the process environment sets them too (the SDK reads
/// only the environment). `None` or empty leaves the SDK's default: for the batch processor,
/// what the SDK reads from the process environment; for the timeout, 10 s, which wins over
/// the process environment's.
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ExportSettings {
    /// Sent with every export (`OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else
    /// `OTEL_EXPORTER_OTLP_HEADERS`, values percent-decoded); `Debug` does not show values.
    /// The exporter also adds the process environment's list itself, which wins for a header
    /// named in both.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; default 10 s).
    pub timeout: Option<Duration>,
    /// Spans kept waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`, from 1 to 1 000 000: the
    /// whole queue is allocated at startup). Set in code, a size outside that range is taken
    /// as the nearest bound.
    pub max_queue_size: Option<usize>,
    /// Spans sent in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_export_batch_size: Option<usize>,
    /// The wait between exports (`OTEL_BSP_SCHEDULE_DELAY`, in milliseconds). 0 is taken as
    /// 1 ms: spans are exported as soon as they end, and the export thread still sleeps
    /// between its rounds.
    pub scheduled_delay: Option<Duration>,
}

impl std::fmt::Debug for ExportSettings {
    // Header values are credentials (an API key): `Debug` output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, _)| format!("{name}=[REDACTED]"))
            .collect();
        f.debug_struct("ExportSettings")
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("max_queue_size", &self.max_queue_size)
            .field("max_export_batch_size", &self.max_export_batch_size)
            .field("scheduled_delay", &self.scheduled_delay)
            .finish()
    }
}

impl OtelConfig {
    /// Reads the process environment. Each field of [`OtelConfig`] and [`ExportSettings`]
    /// names the variables it is read from. A value that is not UTF-8 is an error naming the
    /// variable, as a malformed one is.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_os_lookup(|name| std::env::var_os(name))
    }

    /// [`from_lookup`](Self::from_lookup) over values that may not be UTF-8: the first such
    /// value is the error. Read as unset, it would pass without a word (an endpoint that is
    /// not UTF-8 turned export off, a sampler fell back to the default).
    fn from_os_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        let not_unicode = std::cell::RefCell::new(None);
        let config = Self::from_lookup(|name| match lookup(name)?.into_string() {
            Ok(value) => Some(value),
            Err(value) => {
                let var = VARIABLES.iter().find(|var| **var == name)?;
                not_unicode
                    .borrow_mut()
                    .get_or_insert_with(|| not_unicode_error(var, &value.to_string_lossy()));
                None
            }
        });
        match not_unicode.into_inner() {
            Some(error) => Err(error),
            None => config,
        }
    }

    /// Reads the variables through `lookup` (tests, or configuration from another source).
    /// Empty values count as unset, as the OpenTelemetry specification asks.
    ///
    /// The exporter's headers and timeout and the batch processor's queue, batch size and delay
    /// are read here too ([`ExportSettings`]). The exporter's compression and the processor's
    /// `OTEL_BSP_EXPORT_TIMEOUT` and `OTEL_BSP_MAX_CONCURRENT_EXPORTS` are only checked: this
    /// build neither compresses nor uses them.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The design's order, as the facade and the log line read it: the name on the
        // exported spans is the name on the log lines.
        let service_name = get("SERVICE_NAME").or_else(|| get("OTEL_SERVICE_NAME"));
        let resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
            .map(parse_resource_attributes)
            .transpose()?
            .unwrap_or_default();
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|v| check_url("OTEL_EXPORTER_OTLP_ENDPOINT", v))
            .transpose()?;
        let traces_endpoint_override = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|v| check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v))
            .transpose()?;
        // Both are checked, so a typo in the general one fails even while the other wins.
        let general = get("OTEL_EXPORTER_OTLP_PROTOCOL")
            .map(|value| parse_protocol("OTEL_EXPORTER_OTLP_PROTOCOL", value))
            .transpose()?;
        let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|value| parse_protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", value))
            .transpose()?
            .or(general)
            .unwrap_or_default();
        // The exporter reads these itself and drops a malformed pair without a word, so every
        // export would then be refused by a collector that wants the header.
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(value) = get(var) {
                check_headers(var, &value)?;
            }
        }
        // Also read by the exporter and the batch processor themselves, which ignore a value
        // they cannot use without a word (`10s` would leave the default timeout) or take one
        // that loses every span (a timeout of 0, a queue of 0).
        for (var, min, max, expected) in [
            (
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                1,
                u64::MAX,
                "expected whole milliseconds, such as 10000",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                1,
                u64::MAX,
                "expected whole milliseconds, such as 10000",
            ),
            (
                "OTEL_BSP_EXPORT_TIMEOUT",
                1,
                u64::MAX,
                "expected whole milliseconds, such as 30000",
            ),
            (
                "OTEL_BSP_SCHEDULE_DELAY",
                0,
                u64::MAX,
                "expected whole milliseconds, such as 5000",
            ),
            (
                "OTEL_BSP_MAX_QUEUE_SIZE",
                1,
                MAX_SPAN_QUEUE,
                "expected a number of spans from 1 to 1000000, such as 2048 (the whole queue is allocated at startup)",
            ),
            (
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                1,
                u64::MAX,
                "expected a number of spans, such as 512",
            ),
            (
                "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
                1,
                u64::MAX,
                "expected a number of exports, such as 1",
            ),
        ] {
            if let Some(value) = get(var)
                && value
                    .parse::<u64>()
                    .map_or(true, |number| number < min || number > max)
            {
                return Err(invalid(var, value, expected));
            }
        }
        for var in [
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ] {
            if let Some(value) = get(var)
                && !matches!(
                    value.to_ascii_lowercase().as_str(),
                    "none" | "gzip" | "zstd"
                )
            {
                return Err(invalid(var, value, "expected none, gzip or zstd"));
            }
        }
        let sampler = parse_sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        let propagators = get("OTEL_PROPAGATORS")
            .map(parse_propagators)
            .transpose()?
            .unwrap_or_default();
        // Traces are the only signal exported: `none` turns export off like OTEL_SDK_DISABLED.
        let no_exporter = match get("OTEL_TRACES_EXPORTER") {
            None => false,
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "otlp" => false,
                "none" => true,
                _ => {
                    return Err(invalid(
                        "OTEL_TRACES_EXPORTER",
                        value,
                        "expected otlp or none (this build exports OTLP only)",
                    ));
                }
            },
        };
        let disabled = get("OTEL_SDK_DISABLED")
            .map(|value| parse_bool("OTEL_SDK_DISABLED", value))
            .transpose()?
            .unwrap_or(false)
            || no_exporter;
        // Checked above; kept here so a source other than the environment sets them too.
        let number = |var: &str| get(var).and_then(|value| value.parse::<u64>().ok());
        let to_usize = |number: u64| usize::try_from(number).unwrap_or(usize::MAX);
        let export = ExportSettings {
            // A blank traces list counts as unset (`get`): the general list's headers (an API
            // key) are still sent, where the exporter would take the blank one as the list.
            headers: get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                .or_else(|| get("OTEL_EXPORTER_OTLP_HEADERS"))
                .and_then(|list| header_pairs(&list))
                .unwrap_or_default(),
            timeout: number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| number("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .map(Duration::from_millis),
            max_queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE").map(to_usize),
            max_export_batch_size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map(to_usize),
            scheduled_delay: number("OTEL_BSP_SCHEDULE_DELAY").map(Duration::from_millis),
        };
        Ok(Self {
            service_name,
            resource_attributes,
            endpoint,
            traces_endpoint_override,
            protocol,
            sampler,
            propagators,
            disabled,
            export,
        })
    }

    /// Where spans are sent, if anywhere: the traces endpoint as is, else the base endpoint
    /// (with `/v1/traces` appended to its path for HTTP, a query string kept after it).
    pub fn traces_endpoint(&self) -> Option<String> {
        if let Some(url) = &self.traces_endpoint_override {
            return Some(url.clone());
        }
        let base = self.endpoint.as_deref()?;
        Some(match self.protocol {
            Protocol::Grpc => base.to_owned(),
            Protocol::HttpProtobuf => {
                let (path, query) = match base.split_once('?') {
                    Some((path, query)) => (path, format!("?{query}")),
                    None => (base, String::new()),
                };
                format!("{}/v1/traces{query}", path.trim_end_matches('/'))
            }
        })
    }
}

impl std::fmt::Debug for OtelConfig {
    // Endpoints may carry credentials: `Debug` output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn masked(url: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
            url.as_deref().map(without_credentials)
        }
        f.debug_struct("OtelConfig")
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("endpoint", &masked(&self.endpoint))
            .field(
                "traces_endpoint_override",
                &masked(&self.traces_endpoint_override),
            )
            .field("protocol", &self.protocol)
            .field("sampler", &self.sampler)
            .field("propagators", &self.propagators)
            .field("disabled", &self.disabled)
            .field("export", &self.export)
            .finish()
    }
}

/// The largest `OTEL_BSP_MAX_QUEUE_SIZE` accepted: the batch processor allocates the whole
/// queue when it starts (about 370 bytes a span, so 370 MB at this size), and a larger one
/// aborted the process or panicked on `capacity overflow` instead of naming the variable.
pub(super) const MAX_SPAN_QUEUE: u64 = 1_000_000;

/// `url` with its `user:password@` part, if any, replaced by `[REDACTED]@`, and its query and
/// fragment (`?api_key=...`) by `?[REDACTED]`, for messages and `Debug`. Everything up to the
/// last `@` counts, so a password holding `/` is masked whole.
pub(super) fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let (url, query) = match url[start..].rfind('@') {
        Some(at) => (
            std::borrow::Cow::Owned(format!("{}[REDACTED]{}", &url[..start], &url[start + at..])),
            start + "[REDACTED]".len(),
        ),
        None => (std::borrow::Cow::Borrowed(url), start),
    };
    match url[query..].find(['?', '#']) {
        Some(at) => format!("{}?[REDACTED]", &url[..query + at]).into(),
        None => url,
    }
}

/// Every variable [`OtelConfig::from_lookup`] reads.
const VARIABLES: &[&str] = &[
    "SERVICE_NAME",
    "OTEL_SERVICE_NAME",
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
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PROPAGATORS",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
];

/// The error for `var` holding bytes that are not UTF-8 (`lossy`, as replacement characters
/// show them): the headers are never shown, an endpoint's credentials are masked.
fn not_unicode_error(var: &'static str, lossy: &str) -> ConfigError {
    let value = if var.contains("HEADERS") {
        "[REDACTED]".to_owned()
    } else if var.contains("ENDPOINT") {
        without_credentials(lossy).into_owned()
    } else {
        lossy.to_owned()
    };
    invalid(
        var,
        value,
        "expected valid UTF-8 (check the encoding of the file or secret it comes from)",
    )
}

fn invalid(var: &'static str, value: String, expected: &'static str) -> ConfigError {
    ConfigError {
        var,
        value,
        expected,
    }
}

pub(super) fn check_url(var: &'static str, value: String) -> Result<String, ConfigError> {
    const NO_CREDENTIALS: &str = "expected an http:// URL without user:password@: the exporter never sends a URL's credentials (every export would be refused, and the HTTP client logs them at trace level); give them as a header in OTEL_EXPORTER_OTLP_HEADERS, such as authorization=Basic%20<base64 of user:password>";
    if let Ok(uri) = value.parse::<http::Uri>()
        && uri
            .authority()
            .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(invalid(
            var,
            without_credentials(&value).into_owned(),
            NO_CREDENTIALS,
        ));
    }
    const EXPECTED: &str = "expected an http:// URL with a host, a port from 1 to 65535 and no #fragment, such as http://localhost:4317 (this build has no TLS: use a local collector or agent)";
    match value.parse::<http::Uri>() {
        // A fragment would end up before the appended `/v1/traces`, sending every span to `/`.
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.host().is_some_and(|host| !host.is_empty())
                && port_fits(&uri)
                && !value.contains('#') =>
        {
            Ok(value)
        }
        _ => Err(invalid(
            var,
            without_credentials(&value).into_owned(),
            EXPECTED,
        )),
    }
}

/// Whether the URL's port, if any, is one a socket can connect to: `Uri` takes any digits as a
/// port (`:70000`, `:0`), and the exporter would then fail on every batch.
fn port_fits(uri: &http::Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return false;
    };
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    if host_and_port.ends_with(']') {
        return true; // an IPv6 address without a port
    }
    match host_and_port.rsplit_once(':') {
        Some((_, port)) => port.is_empty() || port.parse::<u16>().is_ok_and(|port| port != 0),
        None => true,
    }
}

// Enum values are read without regard to case, as the OpenTelemetry specification asks.

fn parse_protocol(var: &'static str, value: String) -> Result<Protocol, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err(invalid(var, value, "expected grpc or http/protobuf")),
    }
}

fn parse_sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, ConfigError> {
    Sampler::from_env_values(name.as_deref(), arg.as_deref())
        .map_err(|error| invalid(error.var, error.value, error.expected))
}

fn parse_propagators(value: String) -> Result<Propagators, ConfigError> {
    match Propagators::from_list(&value) {
        Some(propagators) => Ok(propagators),
        None => Err(invalid("OTEL_PROPAGATORS", value, Propagators::ACCEPTED)),
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: the values are percent-encoded (W3C Baggage octets), and the
/// OpenTelemetry specification asks for a malformed list to be refused whole.
fn parse_resource_attributes(value: String) -> Result<Vec<(String, String)>, ConfigError> {
    const EXPECTED: &str = "expected comma-separated key=value pairs with percent-encoded values, such as deployment.environment=eu%20west,team=payments";
    let mut attributes = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let decoded = entry.split_once('=').and_then(|(key, raw)| {
            let key = key.trim();
            let value = percent_decode(raw.trim())?;
            (!key.is_empty()).then(|| (key.to_owned(), value))
        });
        match decoded {
            Some(attribute) => attributes.push(attribute),
            None => return Err(invalid("OTEL_RESOURCE_ATTRIBUTES", value, EXPECTED)),
        }
    }
    Ok(attributes)
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs, values percent-encoded. The values are
/// credentials more often than not: the error shows the names only.
fn check_headers(var: &'static str, value: &str) -> Result<(), ConfigError> {
    const EXPECTED: &str = "expected comma-separated name=value pairs with valid header names and percent-encoded values, such as api-key=KEY,x-scope=team%20a (values not shown)";
    if header_pairs(value).is_some() {
        return Ok(());
    }
    // A name is shown only when it is one: `Authorization: Basic dXNlcjpw==` (header style
    // where `name=value` was wanted) has no name before its first `=`, only the secret.
    let masked: Vec<String> = value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() => {
                format!("{}=[REDACTED]", name.trim())
            }
            _ => "[REDACTED]".to_owned(),
        })
        .collect();
    Err(invalid(var, masked.join(","), EXPECTED))
}

/// The header names of a list such as `OTEL_EXPORTER_OTLP_HEADERS`, read leniently (a pair
/// that does not name a valid header is skipped): what the exporter may add from it.
pub(crate) fn header_names(value: &str) -> Vec<http::HeaderName> {
    value
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(name, _)| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The headers of a list such as `OTEL_EXPORTER_OTLP_HEADERS` (`name=value` pairs, values
/// percent-encoded, empty pairs skipped); `None` when a pair is malformed.
fn header_pairs(value: &str) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, raw) = pair.split_once('=')?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            // The exporter drops an empty value.
            let value = percent_decode(raw.trim()).filter(|value| !value.is_empty())?;
            Some((name, http::HeaderValue::from_str(&value).ok()?))
        })
        .collect()
}

/// `%XX` sequences to bytes; `None` for a `%` without two hex digits (which the decoder
/// would keep as it is) or a result that is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let well_formed = value.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    let decoded = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()?;
    well_formed.then(|| decoded.into_owned())
}

fn parse_bool(var: &'static str, value: String) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(var, value, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<OtelConfig, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtelConfig::from_lookup(|name| env.get(name).cloned())
    }

    /// A value that is not UTF-8 was read as unset: an endpoint turned export off without a
    /// word. Now it names the variable, the value masked as any other.
    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_fails_naming_the_variable() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        let read = |name: &'static str, bytes: &[u8]| {
            let bytes = bytes.to_vec();
            OtelConfig::from_os_lookup(move |var| {
                (var == name).then(|| OsString::from_vec(bytes.clone()))
            })
        };
        for (var, bytes, shown) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &b"http://user:s3cret@collector:43\xff18"[..],
                "http://[REDACTED]@collector:43\u{fffd}18",
            ),
            ("OTEL_TRACES_SAMPLER", b"always_o\xff", "always_o\u{fffd}"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                b"api-key=s3cr\xffet",
                "[REDACTED]",
            ),
        ] {
            let error = read(var, bytes).unwrap_err();
            assert_eq!(error.var, var);
            assert_eq!(error.value, shown);
            assert!(error.to_string().contains("UTF-8"), "{error}");
            assert!(!error.to_string().contains("s3cr"), "{error}");
        }
        assert!(read("OTEL_TRACES_SAMPLER", b"always_off").is_ok());
    }

    #[test]
    fn every_variable_read_is_listed() {
        let read = std::cell::RefCell::new(Vec::new());
        OtelConfig::from_lookup(|name| {
            read.borrow_mut().push(name.to_owned());
            None
        })
        .unwrap();
        let read = read.into_inner();
        for name in &read {
            assert!(VARIABLES.contains(&name.as_str()), "{name} is not listed");
        }
        for name in VARIABLES {
            assert!(read.iter().any(|read| read == name), "{name} is not read");
        }
    }

    #[test]
    fn service_name_is_read_in_the_design_order() {
        let both = [("SERVICE_NAME", "checkout"), ("OTEL_SERVICE_NAME", "other")];
        assert_eq!(
            config(&both).unwrap().service_name.as_deref(),
            Some("checkout")
        );
        let otel_only = [("SERVICE_NAME", " "), ("OTEL_SERVICE_NAME", "other")];
        assert_eq!(
            config(&otel_only).unwrap().service_name.as_deref(),
            Some("other")
        );
    }

    #[test]
    fn defaults_export_nothing_and_follow_the_caller() {
        let config = config(&[]).unwrap();
        assert_eq!(config.traces_endpoint(), None);
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert_eq!(config.sampler, Sampler::ParentBasedAlwaysOn);
        assert_eq!(config.propagators, Propagators::default());
        assert!(!config.disabled);
    }

    #[test]
    fn endpoints_resolve_per_protocol() {
        let http = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(
            http.traces_endpoint().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let grpc = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(
            grpc.traces_endpoint().as_deref(),
            Some("http://collector:4317")
        );
        let specific = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(specific.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            specific.traces_endpoint().as_deref(),
            Some("http://traces:9999/custom")
        );
    }

    #[test]
    fn samplers_and_their_argument() {
        let ratio = config(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ])
        .unwrap();
        assert_eq!(ratio.sampler, Sampler::ParentBasedTraceIdRatio(0.1));
        let no_arg = config(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap();
        assert_eq!(no_arg.sampler, Sampler::TraceIdRatio(1.0));
        let ignored_arg = config(&[
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_TRACES_SAMPLER_ARG", "nonsense"),
        ])
        .unwrap();
        assert_eq!(ignored_arg.sampler, Sampler::AlwaysOff);
    }

    #[test]
    fn propagators_list() {
        let only_trace = config(&[("OTEL_PROPAGATORS", "tracecontext")]).unwrap();
        assert!(only_trace.propagators.trace_context() && !only_trace.propagators.baggage());
        let none = config(&[("OTEL_PROPAGATORS", "none")]).unwrap();
        assert_eq!(none.propagators, Propagators::none());
        let both = config(&[("OTEL_PROPAGATORS", " baggage , tracecontext ")]).unwrap();
        assert_eq!(both.propagators, Propagators::default());
    }

    /// A name given twice counts once, as the specification asks: `none,none` was refused as
    /// `none` mixed with another.
    #[test]
    fn propagators_given_twice_count_once() {
        for (value, expected) in [
            ("none,none", Propagators::none()),
            (" NONE , none ", Propagators::none()),
            (
                "tracecontext,TraceContext",
                Propagators::none().with_trace_context(true),
            ),
            ("baggage,tracecontext,baggage", Propagators::default()),
        ] {
            let config = config(&[("OTEL_PROPAGATORS", value)]).unwrap();
            assert_eq!(config.propagators, expected, "{value}");
        }
        assert!(config(&[("OTEL_PROPAGATORS", "none,none,baggage")]).is_err());
    }

    #[test]
    fn an_endpoint_query_stays_after_the_traces_path() {
        let http = config(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318/tenant-a/?token=t1",
        )])
        .unwrap();
        assert_eq!(
            http.traces_endpoint().as_deref(),
            Some("http://collector:4318/tenant-a/v1/traces?token=t1")
        );
    }

    #[test]
    fn names_are_read_without_regard_to_case() {
        let config = config(&[
            ("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_PROPAGATORS", "TraceContext"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC"),
        ])
        .unwrap();
        assert_eq!(config.sampler, Sampler::ParentBasedTraceIdRatio(0.5));
        assert_eq!(
            config.propagators,
            Propagators::none().with_trace_context(true)
        );
        assert_eq!(config.protocol, Protocol::Grpc);
    }

    #[test]
    fn endpoint_credentials_stay_out_of_errors_and_debug() {
        let error = config(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:hunter2@collector:4318",
        )])
        .unwrap_err();
        assert_eq!(error.value, "https://[REDACTED]@collector:4318");
        assert!(!error.to_string().contains("hunter2"), "{error}");

        // A `/` in a password must be percent-encoded; unencoded, it is refused, masked.
        let error = config(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://user:pa/ss@collector:4318",
        )])
        .unwrap_err();
        assert_eq!(error.value, "http://[REDACTED]@collector:4318");

        // Credentials the exporter would never send are refused, masked, pointing to the
        // headers: a collector that wants them refused every export without a word.
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let error = config(&[(var, "http://user:pa%2Fss@collector:4318")]).unwrap_err();
            assert_eq!(error.var, var);
            assert_eq!(error.value, "http://[REDACTED]@collector:4318");
            assert!(!error.to_string().contains("pa%2Fss"), "{error}");
            assert!(
                error.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"),
                "{error}"
            );
        }
        // Set in code, they are still masked in `Debug`.
        let config = OtelConfig {
            endpoint: Some("http://user:pa%2Fss@collector:4318".to_owned()),
            ..OtelConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("pa%2Fss"), "{debug}");
        assert!(
            debug.contains("http://[REDACTED]@collector:4318"),
            "{debug}"
        );
        assert_eq!(
            without_credentials("http://collector:4318"),
            "http://collector:4318"
        );
        assert_eq!(without_credentials("u:p@host"), "[REDACTED]@host");
    }

    /// The exporter's and batch processor's settings come from the lookup, as the rest does,
    /// the traces-specific ones first; header values never show in `Debug`.
    #[test]
    fn export_settings_are_read_from_the_lookup() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=general"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                " api-key=k%2F1 , x-team=pay ",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "7000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", " 2500 "),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "256"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        let config = OtelConfig::from_lookup(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .unwrap();
        let export = &config.export;
        let headers: Vec<(&str, &str)> = export
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(headers, [("api-key", "k/1"), ("x-team", "pay")]);
        assert_eq!(export.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(export.max_queue_size, Some(4096));
        assert_eq!(export.max_export_batch_size, Some(256));
        assert_eq!(export.scheduled_delay, Some(Duration::from_millis(100)));
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("k/1") && !debug.contains("pay\""),
            "{debug}"
        );
        assert!(debug.contains("api-key=[REDACTED]"), "{debug}");

        // A blank traces list counts as unset: the general headers are sent.
        let config = OtelConfig::from_lookup(|name| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=general".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("  ".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.export.headers.len(), 1);
        assert_eq!(config.export.headers[0].1, "general");
        assert_eq!(
            OtelConfig::from_lookup(|_| None).unwrap().export,
            ExportSettings::default()
        );
    }

    /// A secret in the query of a refused URL (a fragment is refused) is not shown either.
    #[test]
    fn endpoint_query_secrets_stay_out_of_errors() {
        let error = config(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces?api_key=SECRETQ#x",
        )])
        .unwrap_err();
        assert_eq!(error.value, "http://collector:4318/v1/traces?[REDACTED]");
        assert_eq!(
            without_credentials("http://u:p@h/x?next=a#b"),
            "http://[REDACTED]@h/x?[REDACTED]"
        );
    }

    #[test]
    fn resource_attributes_are_percent_decoded() {
        let decoded = config(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            " deployment.environment=eu%20west , team=pay%2Cments,note=caf%C3%A9=%25ok,",
        )])
        .unwrap();
        assert_eq!(
            decoded.resource_attributes,
            [
                ("deployment.environment".to_owned(), "eu west".to_owned()),
                ("team".to_owned(), "pay,ments".to_owned()),
                ("note".to_owned(), "café=%ok".to_owned()),
            ]
        );
        for bad in ["team", "=x", "a=%zz", "a=50%", "a=%E2%82", "ok=1,broken"] {
            let error = config(&[("OTEL_RESOURCE_ATTRIBUTES", bad)]).unwrap_err();
            assert_eq!(error.var, "OTEL_RESOURCE_ATTRIBUTES", "{bad}");
            assert!(error.to_string().contains("percent-encoded"), "{error}");
        }
    }

    #[test]
    fn exporter_timeouts_and_compression_the_exporter_would_ignore_fail() {
        for var in [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ] {
            assert!(config(&[(var, "5000")]).is_ok(), "{var}");
            // 0 would time every export out.
            for bad in ["10s", "-1", "1.5", "ten", "0"] {
                let error = config(&[(var, bad)]).unwrap_err();
                assert_eq!(error.var, var, "{bad}");
                assert!(error.to_string().contains("milliseconds"), "{error}");
            }
        }
        // The batch processor's own: a queue of 0 drops every span without a word.
        for (var, fine, bad) in [
            ("OTEL_BSP_SCHEDULE_DELAY", "0", "5s"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "30000", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2048", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512", "-1"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "1", "0"),
        ] {
            assert!(config(&[(var, fine)]).is_ok(), "{var}={fine}");
            let error = config(&[(var, bad)]).unwrap_err();
            assert_eq!(error.var, var, "{bad}");
            assert!(error.to_string().contains("expected"), "{error}");
        }
        for var in [
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ] {
            for fine in ["none", "gzip", "ZSTD"] {
                assert!(config(&[(var, fine)]).is_ok(), "{var}={fine}");
            }
            let error = config(&[(var, "zip")]).unwrap_err();
            assert_eq!(error.var, var);
            assert!(error.to_string().contains("none, gzip or zstd"), "{error}");
        }
    }

    /// The batch processor allocates its whole queue at startup: a huge size aborted the
    /// process (`memory allocation of ... bytes failed`) or panicked (`capacity overflow`)
    /// instead of naming the variable.
    #[test]
    fn a_span_queue_too_large_to_allocate_fails_naming_the_variable() {
        for fine in ["1", "2048", "1000000"] {
            assert!(
                config(&[("OTEL_BSP_MAX_QUEUE_SIZE", fine)]).is_ok(),
                "{fine}"
            );
        }
        for bad in ["1000001", "100000000000", "18446744073709551615"] {
            let error = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", bad)]).unwrap_err();
            assert_eq!(error.var, "OTEL_BSP_MAX_QUEUE_SIZE", "{bad}");
            assert!(error.to_string().contains("1000000"), "{error}");
        }
    }

    #[test]
    fn malformed_exporter_headers_fail_without_showing_their_values() {
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let fine = "api-key=s3cret, x-scope=team%20a,authorization=Bearer%20abc==,";
            assert!(config(&[(var, fine)]).is_ok(), "{var}");
            for bad in [
                "api-key=s3cret,Bearer s3cret",
                "api key=s3cret",
                "api-key=s3cret%zz",
                "=s3cret",
                "api-key=",
                "api-key=s3cret%0A",
            ] {
                let error = config(&[(var, bad)]).unwrap_err();
                assert_eq!(error.var, var, "{bad}");
                assert!(error.to_string().contains("expected"), "{error}");
                assert!(!error.to_string().contains("s3cret"), "{error}");
            }
        }
        let error = config(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret,token")]).unwrap_err();
        assert_eq!(error.value, "api-key=[REDACTED],[REDACTED]");
        // Header style, where name=value is wanted: what comes before the base64 padding is
        // the secret, not a name.
        let error = config(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization: Basic dXNlcjpodW50ZXIy==",
        )])
        .unwrap_err();
        assert_eq!(error.value, "[REDACTED]");
    }

    #[test]
    fn traces_exporter_none_turns_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        for (value, disabled) in [("otlp", false), ("OTLP", false), ("none", true)] {
            let config = config(&[endpoint, ("OTEL_TRACES_EXPORTER", value)]).unwrap();
            assert_eq!(config.disabled, disabled, "{value}");
        }
        assert!(!config(&[endpoint]).unwrap().disabled);
    }

    #[test]
    fn malformed_settings_name_their_variable() {
        let cases: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:70000"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pw@[::1]:65536"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:99999/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
            // Would send every span to `/`, to nowhere, to port 0.
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://127.0.0.1:4318#collector",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:0"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/v1/traces#x",
            ),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_EXPORTER", "otlp,console"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_PROPAGATORS", "tracecontext,b3"),
            ("OTEL_PROPAGATORS", " , "),
            ("OTEL_PROPAGATORS", "none,tracecontext"),
            ("OTEL_PROPAGATORS", "baggage, NONE"),
            ("OTEL_SDK_DISABLED", "yes"),
        ];
        for (var, value) in cases {
            let error = config(&[(var, value)]).unwrap_err();
            assert_eq!(error.var, *var, "{value}");
            assert!(error.to_string().contains("expected"), "{error}");
        }
        // A typo in the general protocol fails even while the traces protocol wins.
        let error = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobf"),
        ])
        .unwrap_err();
        assert_eq!(error.var, "OTEL_EXPORTER_OTLP_PROTOCOL");
        for fits in [
            "http://[::1]:4318",
            "http://[::1]",
            "http://collector:65535",
        ] {
            assert!(
                config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", fits)]).is_ok(),
                "{fits}"
            );
        }
        for arg in ["2", "-0.5", "half", "NaN"] {
            let error = config(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", arg),
            ])
            .unwrap_err();
            assert_eq!(error.var, "OTEL_TRACES_SAMPLER_ARG");
        }
    }
}

/// The layers' own sampling decision (used where nothing is exported) is the SDK's, for the
/// same trace id: a trace is sampled alike by the services that export it and those that
/// only pass its flag on.
#[cfg(test)]
mod sampling_agrees_with_the_sdk {
    use opentelemetry::trace::{SpanKind, TraceId};
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    use super::{Sampler, sdk_sampler};

    #[test]
    fn ratio_decisions_match_for_every_trace_id() {
        for ratio in [0.0, 1e-9, 0.01, 0.25, 0.5, 0.75, 0.999_999, 1.0] {
            let sampler = Sampler::TraceIdRatio(ratio);
            let sdk = sdk_sampler(sampler);
            let mut sampled = 0;
            for _ in 0..20_000 {
                let id = periscope_context::TraceId::random();
                let theirs = sdk
                    .should_sample(
                        None,
                        TraceId::from_bytes(id.to_bytes()),
                        "s",
                        &SpanKind::Server,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(sampler.samples(id, None), theirs, "{ratio} {id}");
                sampled += usize::from(theirs);
            }
            // Not all one way by accident of the ids drawn.
            if ratio == 0.5 {
                assert!((9_000..11_000).contains(&sampled), "{sampled}");
            }
        }
    }
}

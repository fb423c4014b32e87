//! `/debug/config`: the service's configuration with its secrets masked
//! ([`Redactor::mask_value`]), once, when the admin service is built (the unmasked value is not
//! kept).

use periscope_log::Redactor;
use serde_json::Value;

/// Key fragments of the OTLP exporter's header variables (`OTEL_EXPORTER_OTLP_HEADERS` and its
/// per-signal forms). They exist to carry credentials, under header names no rule can know
/// (Honeycomb's `x-honeycomb-team=<api key>`), so their values are masked whole.
const OTLP_HEADER_KEYS: &[&str] = &[
    "otlp_headers",
    "otlp_traces_headers",
    "otlp_metrics_headers",
    "otlp_logs_headers",
];

/// The rules that mask `/debug/config` and the status sections: `redactor`'s, and the OTLP
/// header variables.
pub(crate) fn admin_redactor(redactor: Redactor) -> Redactor {
    OTLP_HEADER_KEYS
        .iter()
        .fold(redactor, |redactor, key| redactor.with_sensitive_key(key))
}

/// The masked configuration, encoded.
pub(crate) fn masked(mut config: Value, redactor: &Redactor) -> Result<Vec<u8>, serde_json::Error> {
    redactor.mask_value(&mut config);
    serde_json::to_vec(&config)
}

//! `LOG_FORMAT`, `LOG_LEVEL` and `RUST_LOG`.

use std::str::FromStr;

use crate::filter::Directives;

/// The line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines parse).
    #[default]
    Json,
    /// Human-readable text for local development.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("use json or pretty".to_owned()),
        }
    }
}

/// A malformed environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// The logging settings the environment can give.
///
/// - `LOG_FORMAT`: `json` (default) or `pretty`.
/// - `LOG_LEVEL`: a level (`debug`) or directives (`info,my_crate::db=debug`); wins over
///   `RUST_LOG`.
/// - `RUST_LOG`: directives, used when `LOG_LEVEL` is not set.
/// - Neither: `info`.
///
/// Empty values count as unset.
///
/// ```
/// use periscope_log::{LogConfig, LogFormat};
///
/// let env = |name: &str| match name {
///     "LOG_FORMAT" => Some("pretty".to_owned()),
///     "RUST_LOG" => Some("warn,my_crate=debug".to_owned()),
///     _ => None,
/// };
/// let config = LogConfig::from_lookup(env).unwrap();
/// assert_eq!(config.format, LogFormat::Pretty);
/// assert_eq!(config.directives.to_string(), "warn,my_crate=debug");
///
/// let err = LogConfig::from_lookup(|n| (n == "LOG_LEVEL").then(|| "loud".to_owned())).unwrap_err();
/// assert_eq!(err.var, "LOG_LEVEL");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// `LOG_FORMAT`.
    pub format: LogFormat,
    /// `LOG_LEVEL` or `RUST_LOG`.
    pub directives: Directives,
}

impl LogConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Reads variables through `lookup` (for tests and other sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let invalid =
            |var: &'static str, value: String, reason: String| ConfigError { var, value, reason };
        let format = match get("LOG_FORMAT") {
            Some(value) => value
                .parse()
                .map_err(|reason| invalid("LOG_FORMAT", value, reason))?,
            None => LogFormat::Json,
        };
        let directives = if let Some(value) = get("LOG_LEVEL") {
            Directives::parse_log_level(&value)
                .map_err(|e| invalid("LOG_LEVEL", value, e.to_string()))?
        } else if let Some(value) = get("RUST_LOG") {
            Directives::parse(&value).map_err(|e| invalid("RUST_LOG", value, e.to_string()))?
        } else {
            Directives::default()
        };
        Ok(Self { format, directives })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<LogConfig, ConfigError> {
        LogConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_and_precedence() {
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.format, c.directives.to_string()),
            (LogFormat::Json, "info".into())
        );
        let c = config(&[("LOG_LEVEL", "DEBUG"), ("RUST_LOG", "trace")]).unwrap();
        assert_eq!(c.directives.to_string(), "debug");
        let c = config(&[("LOG_LEVEL", " "), ("RUST_LOG", "my_crate=trace")]).unwrap();
        assert_eq!(c.directives.to_string(), "my_crate=trace");
        let c = config(&[("LOG_FORMAT", "Pretty"), ("LOG_LEVEL", "warning")]).unwrap();
        assert_eq!(
            (c.format, c.directives.to_string()),
            (LogFormat::Pretty, "warn".into())
        );
    }

    #[test]
    fn errors_name_the_variable() {
        for (vars, var) in [
            (&[("LOG_FORMAT", "xml")][..], "LOG_FORMAT"),
            (&[("LOG_LEVEL", "verbose")][..], "LOG_LEVEL"),
            (&[("LOG_LEVEL", "info,db=loud")][..], "LOG_LEVEL"),
            (&[("RUST_LOG", "x[span]=debug")][..], "RUST_LOG"),
        ] {
            let err = config(vars).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
        }
        let err = config(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LOG_FORMAT=\"xml\" is invalid: use json or pretty"
        );
    }
}

//! A service's own settings, read from the environment the way periscope reads its own: unset
//! or empty is the default, and a malformed value (one that does not parse, is out of range or
//! is not UTF-8) is a [`ConfigError`] naming the variable, the value and what is accepted, so
//! the service fails at startup with a message that says what to fix.
//!
//! ```
//! # fn run() -> Result<(), periscope::ConfigError> {
//! let port: u16 = periscope::env::var("PORT", 8000, "a port number 0-65535")?;
//! let warmup = periscope::env::flag("MODEL_WARMUP", true)?;
//! let buffer_mib = periscope::env::var_within("BUFFER_MIB", 64, 10..=65536, "MiB from 10 to 65536")?;
//! let admin_port: Option<u16> = periscope::env::optional("ADMIN_PORT", "a port number 0-65535")?;
//! # let _ = (port, warmup, buffer_mib, admin_port);
//! # Ok(()) }
//! ```

use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::config::{ConfigError, parse_bool};

/// `name`'s value parsed, `None` when unset or empty (surrounding whitespace is ignored). A
/// value that does not parse is an error: `NAME="x" is invalid: use {accepted}` (the value
/// left out under a sensitive name, a URL's credentials masked).
pub fn optional<T: FromStr>(name: &'static str, accepted: &str) -> Result<Option<T>, ConfigError> {
    let Some(value) = text(name)? else {
        return Ok(None);
    };
    match value.parse() {
        Ok(parsed) => Ok(Some(parsed)),
        Err(_) => Err(invalid(name, &value, accepted)),
    }
}

/// `name`'s value parsed, `default` when unset or empty; see [`optional`].
pub fn var<T: FromStr>(name: &'static str, default: T, accepted: &str) -> Result<T, ConfigError> {
    Ok(optional(name, accepted)?.unwrap_or(default))
}

/// [`var`], and within `range` (`accepted` should say so).
pub fn var_within<T: FromStr + PartialOrd>(
    name: &'static str,
    default: T,
    range: RangeInclusive<T>,
    accepted: &str,
) -> Result<T, ConfigError> {
    let Some(value) = text(name)? else {
        return Ok(default);
    };
    match value.parse() {
        Ok(parsed) if range.contains(&parsed) => Ok(parsed),
        _ => Err(invalid(name, &value, accepted)),
    }
}

/// The error for a value that cannot be used (its secrets masked by [`ConfigError`]).
fn invalid(name: &'static str, value: &str, accepted: &str) -> ConfigError {
    ConfigError::new(name, value, format!("use {accepted}"))
}

/// A switch: `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, in any case), as
/// periscope's own `ENABLE_*`; `default` when unset or empty.
pub fn flag(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match text(name)? {
        Some(value) => parse_bool(name, &value),
        None => Ok(default),
    }
}

/// The trimmed value, `None` when unset or empty; not UTF-8 is malformed, not unset.
fn text(name: &'static str) -> Result<Option<String>, ConfigError> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = value
        .into_string()
        .map_err(|value| ConfigError::not_unicode(name, &value))?;
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What stderr and the logs get of a value that cannot be used: no secret, whatever the
    /// variable and wherever the secret sits in it.
    #[test]
    fn errors_show_no_secret() {
        let error = invalid("DATABASE_URL", "postgres://app:hunter2@db:5432/x", "a URL");
        assert_eq!(error.value, "postgres://app:[REDACTED]@db:5432/x");
        let error = invalid("OPENAI_API_KEY", "sk-live-123", "a key");
        assert_eq!(error.value, "[REDACTED]");
        // A name whose last word is `auth` holds a credential, as a log field so named does.
        let error = invalid("PROXY_AUTH", "user:S3cret", "user:password");
        assert_eq!(error.value, "[REDACTED]");
        assert!(!error.to_string().contains("S3cret"), "{error}");
        let error = invalid("PORT", "eighty", "a port number 0-65535");
        assert_eq!(
            error.to_string(),
            r#"PORT="eighty" is invalid: use a port number 0-65535"#
        );
        // A password holding `/` or `?`, a secret in the query, a key=value pair: masked.
        for (value, shown) in [
            (
                "postgres://app:hunt/er2@db/app",
                "postgres://app:[REDACTED]@db/app",
            ),
            (
                "http://user:pa?ss@collector:4318",
                "http://user:[REDACTED]@collector:4318",
            ),
            (
                "http://collector:4318/v1/traces?api_key=SECRETQ",
                "http://collector:4318/v1/traces?api_key=[REDACTED]",
            ),
            ("host=db password=hunter2", "host=db password=[REDACTED]"),
        ] {
            assert_eq!(invalid("PORT", value, "a port").value, shown, "{value}");
        }
        // A reason that quotes the value, whole or in part, masks it too.
        for (value, reason) in [
            (
                "postgres://app:hunter2@db/app",
                "\"postgres://app:hunter2@db/app\" is not a log level",
            ),
            (
                "host=db password=hunter2",
                "\"db password=hunter2\" is not a log level",
            ),
            ("info,token=hunter2x", "\"hunter2x\" is not a log level"),
        ] {
            let error = ConfigError::new("LOG_LEVEL", value, reason);
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
        let error = ConfigError::new("DB_PASSWORD", "hunter2", "\"hunter2\" is too short");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        // A switch given a connection string by mistake.
        let error = crate::config::parse_bool("ENABLE_GPU", "postgres://app:hunter2@db/app");
        assert_eq!(error.unwrap_err().value, "postgres://app:[REDACTED]@db/app");
    }
}

//! Metric and label name rules, checked once when a metric is set up.

use crate::error::MetricsError;

/// Checks a metric name against `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn check_metric_name(name: &str) -> Result<(), MetricsError> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if valid {
        Ok(())
    } else {
        Err(MetricsError::InvalidMetricName {
            name: name.to_owned(),
        })
    }
}

/// Checks a label name against `[a-zA-Z_][a-zA-Z0-9_]*`, without the reserved `__` prefix.
pub(crate) fn check_label_name(name: &str) -> Result<(), MetricsError> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.starts_with("__")
        // Histogram buckets and summary quantiles carry these: a second one breaks the scrape.
        && !matches!(name, "le" | "quantile")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(MetricsError::InvalidLabelName {
            name: name.to_owned(),
        })
    }
}

/// Checks every label name of `metric` and that none repeats.
pub(crate) fn check_label_names(metric: &str, names: &[&str]) -> Result<(), MetricsError> {
    for (i, name) in names.iter().enumerate() {
        check_label_name(name)?;
        if names[..i].contains(name) {
            return Err(MetricsError::DuplicateLabel {
                metric: metric.to_owned(),
                name: (*name).to_owned(),
            });
        }
    }
    Ok(())
}

/// A counter's family name: the exposition adds `_total` to the samples, so a name given
/// with the suffix is registered without it.
pub(crate) fn counter_family_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert!(check_metric_name("http_server_requests_total").is_ok());
        assert!(check_metric_name("ns:rule_name").is_ok());
        assert!(check_metric_name("").is_err());
        assert!(check_metric_name("1abc").is_err());
        assert!(check_metric_name("with-dash").is_err());
        assert!(check_metric_name("spaß").is_err());
    }

    #[test]
    fn label_names() {
        assert!(check_label_name("route").is_ok());
        assert!(check_label_name("_private").is_ok());
        assert!(check_label_name("__reserved").is_err());
        assert!(check_label_name("a:b").is_err());
        assert!(check_label_name("le").is_err());
        assert!(check_label_name("quantile").is_err());
        assert!(check_label_name("level").is_ok());
        assert!(check_label_names("m", &["a", "b", "a"]).is_err());
        assert_eq!(counter_family_name("api_requests_total"), "api_requests");
        assert_eq!(counter_family_name("api_requests"), "api_requests");
    }
}

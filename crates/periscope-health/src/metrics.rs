//! `health_check_status{check}` and `health_check_duration_seconds{check}` (feature `metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::CheckOutcome;

type CheckLabel = [(&'static str, String); 1];

/// The two gauge families, updated after every check run.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthMetrics {
    status: Family<CheckLabel, Gauge>,
    duration: Family<CheckLabel, Gauge<f64, AtomicU64>>,
}

/// The families registered, with their types.
pub(crate) const NAMES: [(&str, MetricType); 2] = [
    ("health_check_status", MetricType::Gauge),
    ("health_check_duration_seconds", MetricType::Gauge),
];

impl HealthMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let [(status, _), (duration, _)] = NAMES;
        registry.register(
            status,
            "Whether the readiness check passed on its last run (1) or failed (0)",
            self.status.clone(),
        );
        // With its unit, so OpenMetrics scrapes carry `# UNIT ... seconds`; the name is the same.
        let base = duration.strip_suffix("_seconds").unwrap_or(duration);
        registry.register_with_unit(
            base,
            "How long the readiness check took on its last run, in seconds",
            prometheus_client::registry::Unit::Seconds,
            self.duration.clone(),
        );
    }

    pub(crate) fn record(&self, outcomes: &[CheckOutcome]) {
        for outcome in outcomes {
            let label = [("check", outcome.name.to_string())];
            self.status
                .get_or_create(&label)
                .set(i64::from(outcome.passed()));
            self.duration
                .get_or_create(&label)
                .set(outcome.duration.as_secs_f64());
        }
    }
}

//! The errors of building metrics: each says what was wrong and what to do.

/// Why a metric, a family or a layer could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsError {
    /// A metric name outside `[a-zA-Z_:][a-zA-Z0-9_:]*`, or a counter name that is only
    /// `_total` or ends in `_total` twice (the exposition adds the suffix once).
    #[error(
        "invalid metric name {name:?}: use ASCII letters, digits, `_` and `:`, not starting with a digit; a counter's name ends in `_total` at most once, with a name before it"
    )]
    InvalidMetricName {
        /// The rejected name.
        name: String,
    },
    /// A label name outside `[a-zA-Z_][a-zA-Z0-9_]*`, one starting with the reserved `__`, or
    /// `le` or `quantile` (the exposition's own bucket and quantile labels).
    #[error(
        "invalid label name {name:?}: use ASCII letters, digits and `_`, not starting with a digit or `__`, and not `le` or `quantile` (the exposition's own bucket and quantile labels)"
    )]
    InvalidLabelName {
        /// The rejected name.
        name: String,
    },
    /// Two labels of one family share a name.
    #[error("label {name:?} appears twice in metric {metric:?}: give each label its own name")]
    DuplicateLabel {
        /// The metric.
        metric: String,
        /// The repeated label name.
        name: String,
    },
    /// A metric of that name is already registered.
    #[error(
        "metric {name:?} is already registered: pick another name or prefix, or reuse the registered one"
    )]
    AlreadyRegistered {
        /// The name registered twice.
        name: String,
    },
    /// A metric whose exposition would write a sample name another metric already writes
    /// (a gauge `jobs_total` beside a counter `jobs`, a gauge `latency_count` beside a
    /// histogram `latency`): scrapers reject the whole page.
    #[error(
        "metric {name:?} would write samples named {sample:?}, as metric {other:?} already does: pick a name that differs by more than a suffix"
    )]
    SampleNameTaken {
        /// The metric being registered.
        name: String,
        /// The sample name both would write.
        sample: String,
        /// The registered metric that writes it.
        other: String,
    },
    /// Histogram buckets that are empty, not finite or not strictly increasing.
    #[error(
        "invalid buckets for {metric:?}: give at least one finite upper bound, in strictly increasing order"
    )]
    InvalidBuckets {
        /// The histogram.
        metric: String,
    },
    /// A cap set on a label the family does not have (a cap for `route` after the label was
    /// renamed `endpoint`): it would be silently ignored, the label kept at the default cap.
    #[error(
        "a cap is set on label {label:?}, which metric {metric:?} does not have (its labels: {labels}): name one of its labels, as renamed"
    )]
    CapForUnknownLabel {
        /// The metric.
        metric: String,
        /// The label named by the cap.
        label: String,
        /// The metric's labels, comma-separated.
        labels: String,
    },
    /// A route template that is malformed or conflicts with one declared before.
    #[error("invalid route template {template:?}: {reason}")]
    RouteTemplate {
        /// The template.
        template: String,
        /// What the matcher reported.
        reason: String,
    },
}

impl From<periscope_context::RouteTemplateError> for MetricsError {
    fn from(error: periscope_context::RouteTemplateError) -> Self {
        Self::RouteTemplate {
            template: error.template,
            reason: error.reason,
        }
    }
}

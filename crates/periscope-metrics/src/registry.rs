//! The shared registry: every family of the service, checked names, and the overflow counter.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::error::MetricsError;
use crate::exposition::{Format, encode};
use crate::guard::{Caps, GuardedFamily, OverflowCounter};
use crate::names::{check_label_names, check_metric_name, counter_family_name};
use crate::sync::{read, write};

/// The name of the counter of values folded by the cardinality guard.
pub const OVERFLOW_METRIC: &str = "periscope_label_overflow_total";

/// The registry of a service's metrics, cheap to clone and share: the RED layer, the
/// service's own families, and collectors from other crates (health checks, GPUs) all
/// register here, and [`MetricsService`](crate::MetricsService) exposes it.
///
/// Names are checked, and registering a name twice is an error rather than a broken
/// exposition. Counter names may be given with or without `_total`, info names with or
/// without `_info`; a counter or gauge whose name ends in a unit (`_seconds`, `_bytes`...)
/// gets an OpenMetrics `# UNIT` line.
///
/// ```
/// use periscope_metrics::{MetricsRegistry, ServiceInfo};
/// use prometheus_client::metrics::gauge::Gauge;
///
/// let registry = MetricsRegistry::new();
/// registry.register_service_info(&ServiceInfo::new("inference-api", "1.4.2", "production")).unwrap();
/// registry.register_process_metrics().unwrap();
///
/// let queue_depth = Gauge::<i64>::default();
/// registry.register("inference_queue_depth", "Jobs waiting for a GPU", queue_depth.clone()).unwrap();
/// queue_depth.set(3);
///
/// let text = registry.encode_prometheus().unwrap();
/// assert!(text.contains("inference_queue_depth 3\n"));
/// assert!(text.contains(r#"service_info{service="inference-api",version="1.4.2",environment="production"} 1"#));
/// ```
#[derive(Clone)]
pub struct MetricsRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: RwLock<Registry>,
    names: Mutex<Names>,
    overflow: OverflowCounter,
}

/// The names taken so far: family names, and every sample name their types write (a counter
/// `jobs` writes `jobs_total`, so a gauge `jobs_total` would break the scrape).
#[derive(Clone, Default)]
struct Names {
    families: HashSet<String>,
    /// Sample name to the name of the metric that writes it.
    samples: HashMap<String, String>,
}

impl Names {
    fn claim(
        &mut self,
        name: &str,
        family: &str,
        metric_type: MetricType,
    ) -> Result<(), MetricsError> {
        if self.families.contains(family) {
            return Err(MetricsError::AlreadyRegistered {
                name: name.to_owned(),
            });
        }
        if let Some((sample, owner)) = sample_names(family, metric_type)
            .iter()
            .find_map(|sample| Some((sample, self.samples.get(sample)?)))
        {
            return Err(MetricsError::SampleNameTaken {
                name: name.to_owned(),
                sample: sample.clone(),
                other: owner.clone(),
            });
        }
        self.insert(name, family, metric_type);
        Ok(())
    }

    fn insert(&mut self, name: &str, family: &str, metric_type: MetricType) {
        self.families.insert(family.to_owned());
        for sample in sample_names(family, metric_type) {
            self.samples.insert(sample, name.to_owned());
        }
    }
}

/// The family name itself and every sample name a family of `metric_type` writes, in either
/// exposition format.
fn sample_names(family: &str, metric_type: MetricType) -> Vec<String> {
    let suffixes: &[&str] = match metric_type {
        MetricType::Counter => &["", "_total", "_created"],
        MetricType::Histogram => &["", "_bucket", "_count", "_sum", "_created"],
        MetricType::Info => &["", "_info"],
        _ => &[""],
    };
    suffixes
        .iter()
        .map(|suffix| format!("{family}{suffix}"))
        .collect()
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.names();
        f.debug_struct("MetricsRegistry")
            .field("families", &names.families.len())
            .finish()
    }
}

impl MetricsRegistry {
    /// An empty registry, holding only `periscope_label_overflow_total` (shown once a value
    /// overflows).
    pub fn new() -> Self {
        let overflow = OverflowCounter::default();
        let mut registry = Registry::default();
        let family = counter_family_name(OVERFLOW_METRIC);
        registry.register(
            family,
            "Label values folded into __overflow__ by the cardinality guard, by metric and label",
            overflow.clone(),
        );
        let mut names = Names::default();
        names.insert(OVERFLOW_METRIC, family, MetricType::Counter);
        Self {
            inner: Arc::new(Inner {
                registry: RwLock::new(registry),
                names: Mutex::new(names),
                overflow,
            }),
        }
    }

    /// Registers `metric` (any prometheus-client metric, a `Family` included) as `name`.
    ///
    /// `help` may hold any text: backslashes, quotes and line breaks are escaped so they
    /// cannot break the exposition.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl Metric,
    ) -> Result<(), MetricsError> {
        self.claim(name, metric.metric_type())?;
        self.add_claimed(name, help, metric)
    }

    /// Registers `metric` under `name`, which [`claim_all`](Self::claim_all) reserved.
    pub(crate) fn add_claimed(
        &self,
        name: &str,
        help: &str,
        metric: impl Metric,
    ) -> Result<(), MetricsError> {
        let metric_type = metric.metric_type();
        let family = family_name(name, metric_type)?;
        let help = escape_help(help);
        // `# UNIT` only on counters and gauges: some OpenMetrics parsers reject it elsewhere.
        let unit = match (metric_type, split_unit(family)) {
            // prometheus-client asserts (in debug builds) that a counter's name before its
            // unit does not end in `_total`: `jobs_total_seconds_total` goes without `# UNIT`,
            // its samples the same.
            (MetricType::Counter, (base, Some(_))) if base.ends_with("_total") => (family, None),
            (MetricType::Counter | MetricType::Gauge, unit) => unit,
            _ => (family, None),
        };
        let metric = OwnSamples {
            name: family.to_owned(),
            metric,
            reported: AtomicBool::new(false),
        };
        let mut registry = write(&self.inner.registry);
        match unit {
            (base, Some(unit)) => registry.register_with_unit(base, help, unit, metric),
            (base, None) => registry.register(base, help, metric),
        }
        Ok(())
    }

    /// Registers a collector, called on every scrape: the way to export values read at
    /// scrape time (health check results, GPU readings). The collector's names are its own
    /// to keep unique: [`reserve`](Self::reserve) them, so that nothing registered later can
    /// write the same samples.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        write(&self.inner.registry).register_collector(collector);
    }

    /// Reserves `name` for a metric written outside [`register`](Self::register) (by a
    /// collector, or through [`with_registry`](Self::with_registry)), checked and refused
    /// like a registration: a later `register` of a name whose samples would clash is an
    /// error instead of a broken scrape. Give the name as `register` takes it
    /// (`gpu_collector_errors_total`, `gpu_memory_used_bytes`).
    ///
    /// ```
    /// use periscope_metrics::{MetricsError, MetricsRegistry};
    /// use prometheus_client::metrics::MetricType;
    /// use prometheus_client::metrics::gauge::Gauge;
    ///
    /// let registry = MetricsRegistry::new();
    /// registry.reserve("jobs_total", MetricType::Counter).unwrap();
    /// let clash = registry.register("jobs_total", "Jobs", Gauge::<i64>::default());
    /// assert!(matches!(clash, Err(MetricsError::SampleNameTaken { .. })));
    /// ```
    pub fn reserve(&self, name: &str, metric_type: MetricType) -> Result<(), MetricsError> {
        self.claim(name, metric_type).map(drop)
    }

    /// Runs `f` on the underlying prometheus-client registry, for what this type does not
    /// wrap (sub-registries with a prefix or constant labels). Names registered there are not
    /// checked for duplicates, and go to prometheus-client as given: name a counter without
    /// `_total` there (the exposition adds it; prometheus-client panics on the suffix in
    /// debug builds).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut write(&self.inner.registry))
    }

    /// A family of `M` under the cardinality guard, registered as `name`, its metrics made
    /// with `M::default()`. See [`GuardedFamily`].
    pub fn guarded_family<M, const N: usize>(
        &self,
        name: &str,
        help: &str,
        label_names: [&str; N],
        caps: Caps,
    ) -> Result<GuardedFamily<M, N>, MetricsError>
    where
        M: Metric + TypedMetric + Default,
    {
        self.guarded_family_with(name, help, label_names, caps, M::default)
    }

    /// Like [`guarded_family`](Self::guarded_family), with metrics made by `new_metric`
    /// (a histogram with its buckets, for example).
    pub fn guarded_family_with<M, const N: usize>(
        &self,
        name: &str,
        help: &str,
        label_names: [&str; N],
        caps: Caps,
        new_metric: impl Fn() -> M + Send + Sync + 'static,
    ) -> Result<GuardedFamily<M, N>, MetricsError>
    where
        M: Metric + TypedMetric,
    {
        check_metric_name(name)?;
        check_label_names(name, &label_names)?;
        caps.check_labels(name, &label_names)?;
        let family = GuardedFamily::new(
            name,
            label_names,
            &caps,
            self.overflow(),
            Box::new(new_metric),
        );
        self.register(name, help, family.clone())?;
        Ok(family)
    }

    /// Registers `service_info{service,version,environment} 1`, the series dashboards join on
    /// to show which version runs where.
    pub fn register_service_info(&self, info: &ServiceInfo) -> Result<(), MetricsError> {
        self.register(
            "service_info",
            "Service identity: always 1, labelled with service, version and environment",
            info.clone(),
        )
    }

    /// Registers the standard process metrics (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, `process_open_fds`...), read on every scrape.
    pub fn register_process_metrics(&self) -> Result<(), MetricsError> {
        // All or none: a name taken (a gauge of the service's own) must not leave the others
        // reserved with no collector to write them.
        self.claim_all(&crate::process::FAMILIES)?;
        self.register_collector(Box::new(crate::process::ProcessCollector));
        Ok(())
    }

    /// The registry in `format`, as a scrape would return it.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        encode(&read(&self.inner.registry), format)
    }

    /// The registry in Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        self.encode(Format::Prometheus)
    }

    /// The registry in OpenMetrics text format 1.0.0.
    pub fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        self.encode(Format::OpenMetrics)
    }

    pub(crate) fn overflow(&self) -> OverflowCounter {
        self.inner.overflow.clone()
    }

    /// Checks `name` and reserves its family name and sample names; returns the family name.
    pub(crate) fn claim<'n>(
        &self,
        name: &'n str,
        metric_type: MetricType,
    ) -> Result<&'n str, MetricsError> {
        let family = family_name(name, metric_type)?;
        self.names().claim(name, family, metric_type)?;
        Ok(family)
    }

    /// Reserves every one of `metrics`, or none when one is refused: at once, so a set
    /// registered together (then with [`add_claimed`](Self::add_claimed)) cannot be left
    /// half registered by a registration racing it.
    pub(crate) fn claim_all(&self, metrics: &[(&str, MetricType)]) -> Result<(), MetricsError> {
        let mut names = self.names();
        let mut trial = names.clone();
        for &(name, metric_type) in metrics {
            trial.claim(name, family_name(name, metric_type)?, metric_type)?;
        }
        *names = trial;
        Ok(())
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.inner
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The checked name of the family that `name` registers: counters and infos lose the suffix
/// their samples get back.
fn family_name(name: &str, metric_type: MetricType) -> Result<&str, MetricsError> {
    check_metric_name(name)?;
    let family = match metric_type {
        MetricType::Counter => counter_family_name(name),
        // Info samples get `_info` appended: `build_info` would write `build_info_info`.
        MetricType::Info => name.strip_suffix("_info").unwrap_or(name),
        _ => name,
    };
    // A counter named `_total` would be a family with no name: `# TYPE  counter`. One named
    // `jobs_total_total` keeps a family ending in `_total`, which prometheus-client (0.26)
    // asserts against in debug builds: refused here rather than a panic.
    let counter_still_total =
        matches!(metric_type, MetricType::Counter) && family.ends_with("_total");
    if family.is_empty() || counter_still_total {
        return Err(MetricsError::InvalidMetricName {
            name: name.to_owned(),
        });
    }
    Ok(family)
}

/// Help text as OpenMetrics writes it: `\\`, `\n` and `\"` escaped, so a line break or a
/// backslash cannot end the line or the scrape. The Prometheus rendering unescapes the quote.
fn escape_help(help: &str) -> String {
    let mut escaped = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' => escaped.push_str("\\\""),
            '\r' => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Splits a recognised unit suffix off a family name, so the exposition carries its
/// `# UNIT` line and the name keeps the suffix exactly once.
pub(crate) fn split_unit(name: &str) -> (&str, Option<Unit>) {
    const UNITS: [&str; 11] = [
        "seconds", "bytes", "joules", "celsius", "watts", "hertz", "ratio", "volts", "amperes",
        "meters", "grams",
    ];
    for unit in UNITS {
        if let Some(base) = name
            .strip_suffix(unit)
            .and_then(|rest| rest.strip_suffix('_'))
            .filter(|base| !base.is_empty())
        {
            let unit = match unit {
                "seconds" => Unit::Seconds,
                "bytes" => Unit::Bytes,
                "joules" => Unit::Joules,
                "celsius" => Unit::Celsius,
                "volts" => Unit::Volts,
                "amperes" => Unit::Amperes,
                "meters" => Unit::Meters,
                "grams" => Unit::Grams,
                other => Unit::Other(other.to_owned()),
            };
            return (base, Some(unit));
        }
    }
    (name, None)
}

/// A registered metric whose encoding failure costs its own samples, not the scrape:
/// prometheus-client writes some metrics in neither text format (a native-only histogram has
/// no classic buckets), and its error would otherwise fail the whole exposition, every other
/// series with it. A failure is reported once; the family's `# HELP` and `# TYPE` stay, with
/// the series written before the one that failed, each whole.
#[derive(Debug)]
struct OwnSamples<M> {
    name: String,
    metric: M,
    reported: AtomicBool,
}

impl<M: EncodeMetric> EncodeMetric for OwnSamples<M> {
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        if self.metric.encode(encoder).is_err() && !self.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                metric = %self.name,
                "a registered metric cannot be written in the text exposition formats and is left out of every scrape: a histogram needs classic buckets (`Histogram::new` or `new_with_native`, not `new_native`)"
            );
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.metric.metric_type()
    }

    // A family without series is written without its descriptor.
    fn is_empty(&self) -> bool {
        self.metric.is_empty()
    }
}

/// Who is running: the labels of `service_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The service name (`SERVICE_NAME`).
    pub service: String,
    /// The running version.
    pub version: String,
    /// The deployment environment (`production`, `staging`...).
    pub environment: String,
}

impl ServiceInfo {
    /// The identity of a service.
    pub fn new(
        service: impl Into<String>,
        version: impl Into<String>,
        environment: impl Into<String>,
    ) -> Self {
        Self {
            service: service.into(),
            version: version.into(),
            environment: environment.into(),
        }
    }
}

impl EncodeLabelSet for ServiceInfo {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        [
            ("service", self.service.as_str()),
            ("version", self.version.as_str()),
            ("environment", self.environment.as_str()),
        ]
        .encode(encoder)
    }
}

impl EncodeMetric for ServiceInfo {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        ConstGauge::new(1_i64).encode(encoder.encode_family(self)?)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn a_name_registered_twice_is_an_error_not_a_broken_exposition() {
        let registry = MetricsRegistry::new();
        registry
            .register("jobs_total", "jobs", Counter::<u64>::default())
            .unwrap();
        let err = registry
            .register("jobs", "jobs", Counter::<u64>::default())
            .unwrap_err();
        assert_eq!(
            err,
            MetricsError::AlreadyRegistered {
                name: "jobs".into()
            }
        );
        assert!(
            registry
                .register("bad name", "x", Counter::<u64>::default())
                .is_err()
        );
    }

    /// A process metric name the service already has refuses the whole set, leaving the other
    /// names free: reserved without a collector, nothing would ever write them.
    #[test]
    fn process_metrics_are_registered_all_or_none() {
        let registry = MetricsRegistry::new();
        registry
            .register("process_threads", "ours", Gauge::<i64>::default())
            .unwrap();
        assert_eq!(
            registry.register_process_metrics(),
            Err(MetricsError::AlreadyRegistered {
                name: "process_threads".into()
            })
        );
        registry
            .register("process_open_fds", "ours too", Gauge::<i64>::default())
            .unwrap();
        let text = registry.encode_prometheus().unwrap();
        assert!(!text.contains("process_cpu_seconds_total"), "{text}");
    }

    #[test]
    fn a_counter_named_only_total_is_refused() {
        let registry = MetricsRegistry::new();
        assert_eq!(
            registry.register("_total", "x", Counter::<u64>::default()),
            Err(MetricsError::InvalidMetricName {
                name: "_total".into()
            })
        );
        let layer = crate::MetricsLayer::builder()
            .requests_name("_total")
            .register(&registry);
        assert!(
            matches!(layer, Err(MetricsError::InvalidMetricName { .. })),
            "{layer:?}"
        );
        let text = registry.encode_openmetrics().unwrap();
        assert!(!text.contains("# TYPE  counter"), "{text}");
    }

    #[test]
    fn a_counter_name_with_total_twice_is_refused_not_a_panic() {
        let registry = MetricsRegistry::new();
        let refused = |name: &str| {
            Err(MetricsError::InvalidMetricName {
                name: name.to_owned(),
            })
        };
        // Its family would still end in `_total`, which prometheus-client asserts against.
        assert_eq!(
            registry.register("jobs_total_total", "x", Counter::<u64>::default()),
            refused("jobs_total_total")
        );
        assert_eq!(
            registry.reserve("jobs_total_total", MetricType::Counter),
            refused("jobs_total_total")
        );
        let family = registry.guarded_family::<Counter, 1>(
            "calls_total_total",
            "x",
            ["kind"],
            Caps::default(),
        );
        assert!(
            matches!(family, Err(MetricsError::InvalidMetricName { .. })),
            "{family:?}"
        );
        let layer = crate::MetricsLayer::builder()
            .requests_name("http_requests_total_total")
            .register(&registry);
        assert!(
            matches!(layer, Err(MetricsError::InvalidMetricName { .. })),
            "{layer:?}"
        );
        // Refused, nothing half-registered: the name without the doubled suffix is still free,
        // and a gauge may keep `_total` twice (its samples get no suffix).
        registry
            .register("jobs_total", "x", Counter::<u64>::default())
            .unwrap();
        registry
            .register("queue_total_total", "x", Gauge::<i64>::default())
            .unwrap();
        let text = registry.encode_prometheus().unwrap();
        assert!(text.contains("# TYPE jobs_total counter\n"), "{text}");
        assert!(!text.contains("_total_total_total"), "{text}");
    }

    /// A counter whose name ends in `_total` before its unit (`jobs_total_seconds_total`):
    /// registered and written in both formats, not a debug-build panic of prometheus-client
    /// (which sees the name without the unit, `jobs_total`).
    #[test]
    fn a_counter_with_total_before_its_unit_is_registered() {
        let registry = MetricsRegistry::new();
        let counter = Counter::<u64>::default();
        registry
            .register("jobs_total_seconds_total", "x", counter.clone())
            .unwrap();
        counter.inc_by(3);
        let text = registry.encode_openmetrics().unwrap();
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("{e:?}: {text}"));
        let family = &parsed.families["jobs_total_seconds"];
        let values: Vec<f64> = family
            .iter_samples()
            .map(|sample| match &sample.value {
                openmetrics_parser::OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(values, [3.0], "{text}");
        let text = registry.encode_prometheus().unwrap();
        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("{e:?}: {text}"));
        assert!(
            parsed.families.contains_key("jobs_total_seconds_total"),
            "{text}"
        );
        assert!(text.contains("\njobs_total_seconds_total 3\n"), "{text}");
    }

    #[test]
    fn names_that_would_write_the_same_samples_are_refused() {
        use prometheus_client::metrics::histogram::Histogram;
        use prometheus_client::metrics::info::Info;

        let registry = MetricsRegistry::new();
        let histogram = || Histogram::new([0.1, 1.0]);
        registry
            .register("jobs", "jobs", Counter::<u64>::default())
            .unwrap();
        registry
            .register("latency", "latency", histogram())
            .unwrap();
        registry
            .register("build", "build", Info::new(vec![("v", "1")]))
            .unwrap();
        let clash = |name: &str, sample: &str, other: &str| MetricsError::SampleNameTaken {
            name: name.into(),
            sample: sample.into(),
            other: other.into(),
        };
        let gauge = || Gauge::<i64>::default();
        assert_eq!(
            registry.register("jobs_total", "x", gauge()),
            Err(clash("jobs_total", "jobs_total", "jobs"))
        );
        assert_eq!(
            registry.register("latency_count", "x", gauge()),
            Err(clash("latency_count", "latency_count", "latency"))
        );
        assert_eq!(
            registry.register("build_info", "x", gauge()),
            Err(clash("build_info", "build_info", "build"))
        );
        // The other way round: a gauge first, then a counter whose samples would take its name.
        registry.register("queue_total", "x", gauge()).unwrap();
        assert_eq!(
            registry.register("queue", "x", Counter::<u64>::default()),
            Err(clash("queue", "queue_total", "queue_total"))
        );
        assert_eq!(
            registry.register("periscope_label_overflow_total", "x", gauge()),
            Err(clash(
                "periscope_label_overflow_total",
                "periscope_label_overflow_total",
                OVERFLOW_METRIC
            ))
        );
        // Names that only share a prefix are fine, and the refused ones left nothing behind.
        registry.register("jobs_waiting", "x", gauge()).unwrap();
        registry.register("latency_p99", "x", gauge()).unwrap();
        registry.register("queue_depth", "x", gauge()).unwrap();
        registry.register_process_metrics().unwrap();
        assert!(
            registry
                .register("process_cpu_seconds_total", "x", gauge())
                .is_err()
        );
        let text = registry.encode_prometheus().unwrap();
        assert!(!text.contains("TYPE jobs_total gauge"), "{text}");
    }

    #[test]
    fn info_names_may_be_given_with_their_suffix() {
        use prometheus_client::metrics::info::Info;

        let registry = MetricsRegistry::new();
        registry
            .register("build_info", "Build", Info::new(vec![("version", "1.2")]))
            .unwrap();
        let om = registry.encode_openmetrics().unwrap();
        assert!(om.contains("# TYPE build info\n"), "{om}");
        assert!(om.contains("build_info{version=\"1.2\"} 1\n"), "{om}");
        assert!(!om.contains("build_info_info"), "{om}");
        let text = registry.encode_prometheus().unwrap();
        assert!(text.contains("# TYPE build_info gauge\n"), "{text}");
        assert!(
            registry
                .register("build", "x", Info::new(vec![("v", "1")]))
                .is_err()
        );
        assert!(
            registry
                .register("_info", "x", Info::new(vec![("v", "1")]))
                .is_err()
        );
    }

    #[test]
    fn help_text_is_escaped() {
        assert_eq!(
            escape_help("a \"b\" c:\\d\r\ne"),
            "a \\\"b\\\" c:\\\\d \\ne"
        );
    }

    #[test]
    fn counter_suffix_and_units_are_written_once() {
        let registry = MetricsRegistry::new();
        let counter = Counter::<f64>::default();
        registry
            .register("energy_joules_total", "energy", counter.clone())
            .unwrap();
        counter.inc_by(2.5);
        let om = registry.encode_openmetrics().unwrap();
        assert!(om.contains("# TYPE energy_joules counter\n"), "{om}");
        assert!(om.contains("# UNIT energy_joules joules\n"), "{om}");
        assert!(om.contains("energy_joules_total 2.5\n"), "{om}");
    }

    #[test]
    fn units_are_recognised_only_as_a_whole_suffix() {
        assert!(matches!(
            split_unit("latency_seconds"),
            ("latency", Some(Unit::Seconds))
        ));
        assert!(matches!(split_unit("seconds"), ("seconds", None)));
        assert!(matches!(split_unit("kiloseconds"), ("kiloseconds", None)));
        assert!(matches!(
            split_unit("gpu_utilization_ratio"),
            ("gpu_utilization", Some(Unit::Other(_)))
        ));
    }
}

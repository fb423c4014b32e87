//! The cardinality guard: caps on distinct label values and on series per family.
//!
//! Past a cap, values fold into [`OVERFLOW`], so every observation still lands in exactly one
//! series and totals stay exact; each fold is counted in `periscope_label_overflow_total` and
//! the first one per metric and label is logged at warn.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, RwLock};

use hashbrown::HashTable;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::error::MetricsError;
use crate::labels::OVERFLOW;
use crate::sync::{read, write};

/// The `label` value of `periscope_label_overflow_total` when a family reached its cap of
/// series (rather than one label its cap of values).
pub const SERIES_OVERFLOW: &str = "__series__";

/// The default cap of distinct values per label.
pub const DEFAULT_LABEL_CAP: usize = 100;

/// The default cap of series per family.
pub const DEFAULT_SERIES_CAP: usize = 2000;

/// The longest label value kept, in bytes; a longer one folds into [`OVERFLOW`] like a value
/// past its label's cap. The caps bound how many values a label takes; this bounds their
/// size, so a route function handing out client-sent paths cannot make every scrape write
/// megabytes per series.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// Caps of one metric family: distinct values per label, and series in all.
///
/// ```
/// use periscope_metrics::Caps;
///
/// let caps = Caps::default()       // 100 values per label, 2000 series
///     .label("model", 10)          // at most 10 models, the rest fold into `__overflow__`
///     .series(500);
/// assert_eq!(caps.label_cap("model"), 10);
/// assert_eq!(caps.label_cap("route"), 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    default_label_cap: usize,
    per_label: Vec<(String, usize)>,
    series_cap: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            default_label_cap: DEFAULT_LABEL_CAP,
            per_label: Vec::new(),
            series_cap: DEFAULT_SERIES_CAP,
        }
    }
}

impl Caps {
    /// The cap of every label that has none of its own.
    pub fn every_label(mut self, cap: usize) -> Self {
        self.default_label_cap = cap;
        self
    }

    /// The cap of distinct values of `label`.
    pub fn label(mut self, label: impl Into<String>, cap: usize) -> Self {
        let label = label.into();
        self.per_label.retain(|(name, _)| *name != label);
        self.per_label.push((label, cap));
        self
    }

    /// The cap of series in the family; past it, new series fold into the one series whose
    /// labels are all `__overflow__`.
    pub fn series(mut self, cap: usize) -> Self {
        self.series_cap = cap;
        self
    }

    /// The cap that applies to `label`.
    pub fn label_cap(&self, label: &str) -> usize {
        self.per_label
            .iter()
            .find(|(name, _)| name == label)
            .map_or(self.default_label_cap, |(_, cap)| *cap)
    }

    /// The cap of series.
    pub fn series_cap(&self) -> usize {
        self.series_cap
    }

    /// Refuses a cap on a label `metric` does not have, which would otherwise be ignored.
    pub(crate) fn check_labels(&self, metric: &str, labels: &[&str]) -> Result<(), MetricsError> {
        match self
            .per_label
            .iter()
            .find(|(name, _)| !labels.contains(&name.as_str()))
        {
            None => Ok(()),
            Some((label, _)) => Err(MetricsError::CapForUnknownLabel {
                metric: metric.to_owned(),
                label: label.clone(),
                labels: labels.join(", "),
            }),
        }
    }
}

/// The distinct values admitted for one label, up to its cap. Shared between families that
/// must agree on which values are kept (the RED layer's families share their `route`).
#[derive(Debug)]
pub(crate) struct LabelGuard {
    cap: usize,
    /// Values always kept, outside the cap: the layer's own fallbacks (`__unmatched__`), which
    /// must stay apart from `__overflow__` however many other values came first.
    reserved: &'static [&'static str],
    admitted: RwLock<HashSet<Arc<str>>>,
}

impl LabelGuard {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Self::reserving(cap, &[])
    }

    /// A guard that keeps `reserved` whatever the cap.
    pub(crate) fn reserving(cap: usize, reserved: &'static [&'static str]) -> Arc<Self> {
        Arc::new(Self {
            cap,
            reserved,
            admitted: RwLock::default(),
        })
    }

    /// Whether `value` is (or now becomes) one of the kept values.
    fn admit(&self, value: &str) -> bool {
        if self.reserved.contains(&value) {
            return true;
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            return false;
        }
        {
            let admitted = read(&self.admitted);
            if admitted.contains(value) {
                return true;
            }
            // Full for good (values are never let go): a flood of new values, each folded,
            // takes no write lock.
            if admitted.len() >= self.cap {
                return false;
            }
        }
        let mut admitted = write(&self.admitted);
        if admitted.contains(value) {
            return true;
        }
        if admitted.len() >= self.cap {
            return false;
        }
        admitted.insert(Arc::from(value));
        true
    }
}

/// The labels of `periscope_label_overflow_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct OverflowLabels {
    metric: Arc<str>,
    label: Arc<str>,
}

impl EncodeLabelSet for OverflowLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        [("metric", &*self.metric), ("label", &*self.label)].encode(encoder)
    }
}

/// `periscope_label_overflow_total{metric,label}`, shared by every guarded family of a registry.
pub(crate) type OverflowCounter = Family<OverflowLabels, Counter>;

/// One series: its label values and its metric.
#[derive(Debug)]
pub(crate) struct Series<M, const N: usize> {
    hash: u64,
    pub(crate) values: [Arc<str>; N],
    pub(crate) metric: M,
}

struct FamilyInner<M, const N: usize> {
    name: Arc<str>,
    label_names: [Arc<str>; N],
    guards: [Arc<LabelGuard>; N],
    series_cap: usize,
    series: RwLock<HashTable<Arc<Series<M, N>>>>,
    hasher: hashbrown::DefaultHashBuilder,
    new_metric: Box<dyn Fn() -> M + Send + Sync>,
    overflow: OverflowCounter,
    /// One counter per label, then one for the series cap; set on the first fold, which is
    /// also when the warning is logged, so it is logged once.
    overflow_slots: Vec<OnceLock<Counter>>,
}

/// A metric family whose label values and series are capped: the same guard the RED layer
/// uses, for the service's own families (for example `model_predictions_total{label}`).
///
/// `N` is the number of labels, so a call with the wrong number of values does not compile.
/// Create one with [`MetricsRegistry::guarded_family`](crate::MetricsRegistry::guarded_family).
///
/// ```
/// use periscope_metrics::{Caps, MetricsRegistry, OVERFLOW};
/// use prometheus_client::metrics::counter::Counter;
///
/// let registry = MetricsRegistry::new();
/// let predictions = registry
///     .guarded_family::<Counter, 1>(
///         "model_predictions_total",
///         "Predictions served, by predicted label",
///         ["label"],
///         Caps::default().label("label", 2),
///     )
///     .unwrap();
/// predictions.get_or_create(["cat"]).inc();
/// predictions.get_or_create(["dog"]).inc();
/// predictions.get_or_create(["axolotl"]).inc(); // past the cap of 2 labels
/// assert_eq!(predictions.get_or_create([OVERFLOW]).get(), 1);
/// assert_eq!(predictions.len(), 3);
/// ```
pub struct GuardedFamily<M, const N: usize> {
    inner: Arc<FamilyInner<M, N>>,
}

impl<M, const N: usize> Clone for GuardedFamily<M, N> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M, const N: usize> std::fmt::Debug for GuardedFamily<M, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedFamily")
            .field("name", &self.inner.name)
            .field("labels", &self.inner.label_names)
            .field("series", &self.len())
            .finish()
    }
}

impl<M, const N: usize> GuardedFamily<M, N> {
    /// A family named `name` (as reported in `periscope_label_overflow_total`) whose labels
    /// use the given guards. Names are checked by the caller.
    pub(crate) fn with_guards(
        name: &str,
        label_names: [&str; N],
        guards: [Arc<LabelGuard>; N],
        series_cap: usize,
        overflow: OverflowCounter,
        new_metric: Box<dyn Fn() -> M + Send + Sync>,
    ) -> Self {
        Self {
            inner: Arc::new(FamilyInner {
                name: Arc::from(name),
                label_names: label_names.map(Arc::from),
                guards,
                series_cap,
                series: RwLock::new(HashTable::new()),
                hasher: hashbrown::DefaultHashBuilder::default(),
                new_metric,
                overflow,
                overflow_slots: (0..=N).map(|_| OnceLock::new()).collect(),
            }),
        }
    }

    /// A family with its own guards, capped by `caps`.
    pub(crate) fn new(
        name: &str,
        label_names: [&str; N],
        caps: &Caps,
        overflow: OverflowCounter,
        new_metric: Box<dyn Fn() -> M + Send + Sync>,
    ) -> Self {
        let guards = label_names.map(|label| LabelGuard::new(caps.label_cap(label)));
        Self::with_guards(
            name,
            label_names,
            guards,
            caps.series_cap(),
            overflow,
            new_metric,
        )
    }

    /// How many series the family holds.
    pub fn len(&self) -> usize {
        read(&self.inner.series).len()
    }

    /// Whether the family holds no series yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series for `values`, folded past the caps; created on first use.
    pub(crate) fn series(&self, values: [&str; N]) -> Arc<Series<M, N>> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(values);
        if let Some(series) = self.find(hash, &values) {
            return series;
        }

        // A new combination: fold each value its label does not keep. A value that is
        // already `__overflow__` was folded (and counted) upstream.
        let mut folded = values;
        for (i, value) in folded.iter_mut().enumerate() {
            if *value != OVERFLOW && !inner.guards[i].admit(value) {
                *value = OVERFLOW;
                self.report_overflow(i);
            }
        }
        let mut hash = if folded == values {
            hash
        } else {
            let hash = inner.hasher.hash_one(folded);
            if let Some(series) = self.find(hash, &folded) {
                return series;
            }
            hash
        };

        // A full family folds every new combination into the series whose labels all
        // overflowed: found under the shared lock, as a label fold is, without building a
        // metric to throw away or taking the write lock on every such request.
        let overflow = [OVERFLOW; N];
        let overflow_hash = inner.hasher.hash_one(overflow);
        let full = {
            let table = read(&inner.series);
            (table.len() >= inner.series_cap)
                .then(|| {
                    table
                        .find(overflow_hash, |series| {
                            same_values(&series.values, &overflow)
                        })
                        .cloned()
                })
                .flatten()
        };
        if let Some(series) = full {
            self.report_overflow(N);
            return series;
        }

        // Built before the lock: the constructor is the caller's code.
        let metric = (inner.new_metric)();
        let mut table = write(&inner.series);
        if let Some(series) = table.find(hash, |series| same_values(&series.values, &folded)) {
            return series.clone();
        }
        if table.len() >= inner.series_cap {
            // The family is full: this series joins the one whose labels all overflowed, the
            // only series allowed past the cap.
            self.report_overflow(N);
            folded = overflow;
            hash = overflow_hash;
            if let Some(series) = table.find(hash, |series| same_values(&series.values, &folded)) {
                return series.clone();
            }
        }
        let series = Arc::new(Series {
            hash,
            values: folded.map(Arc::from),
            metric,
        });
        table.insert_unique(hash, series.clone(), |series| series.hash);
        series
    }

    fn find(&self, hash: u64, values: &[&str; N]) -> Option<Arc<Series<M, N>>> {
        read(&self.inner.series)
            .find(hash, |series| same_values(&series.values, values))
            .cloned()
    }

    /// Counts one fold of label `slot` (or of the series cap, for `slot == N`).
    pub(crate) fn report_overflow(&self, slot: usize) {
        let inner = &*self.inner;
        let label: Arc<str> = match inner.label_names.get(slot) {
            Some(label) => label.clone(),
            None => Arc::from(SERIES_OVERFLOW),
        };
        let Some(once) = inner.overflow_slots.get(slot) else {
            return;
        };
        once.get_or_init(|| {
            if slot < N {
                let cap = inner.guards.get(slot).map_or(0, |guard| guard.cap);
                tracing::warn!(
                    metric = %inner.name,
                    label = %label,
                    cap,
                    "label reached its cap of distinct values (or got a value over \
                     {MAX_LABEL_VALUE_LEN} bytes); further values are recorded as {OVERFLOW} \
                     (raise the cap or bound the values)"
                );
            } else {
                tracing::warn!(
                    metric = %inner.name,
                    label = SERIES_OVERFLOW,
                    cap = inner.series_cap,
                    "metric family reached its cap of series; further series are recorded with \
                     every label {OVERFLOW} (raise the cap or bound the labels)"
                );
            }
            inner.overflow.get_or_create_owned(&OverflowLabels {
                metric: inner.name.clone(),
                label,
            })
        })
        .inc();
    }

    /// Calls `f` with the metric of every series.
    pub(crate) fn for_each_metric(&self, mut f: impl FnMut(&M)) {
        for series in read(&self.inner.series).iter() {
            f(&series.metric);
        }
    }

    /// Encodes every series with `encode_one`, each under its labels.
    pub(crate) fn encode_each(
        &self,
        mut encoder: MetricEncoder,
        encode_one: impl Fn(&M, MetricEncoder) -> std::fmt::Result,
    ) -> std::fmt::Result {
        // Encode from a snapshot, not under the table's lock: a new series waits for the write
        // lock, and every lookup queues behind that writer, so holding the lock through a big
        // family's encoding (tens of milliseconds for 10,000 histograms) stalled all requests.
        let snapshot: Vec<Arc<Series<M, N>>> = read(&self.inner.series).iter().cloned().collect();
        if N == 0 {
            // A family without labels has one series, written `name 1`, not `name{} 1`.
            return match snapshot.first() {
                Some(series) => encode_one(&series.metric, encoder),
                None => Ok(()),
            };
        }
        for series in &snapshot {
            let labels = NamedLabels {
                names: &self.inner.label_names,
                values: &series.values,
            };
            let series_encoder = encoder.encode_family(&labels)?;
            encode_one(&series.metric, series_encoder)?;
        }
        Ok(())
    }
}

impl<M: Clone, const N: usize> GuardedFamily<M, N> {
    /// The metric for `values` (a cheap handle), created on first use. A value past its
    /// label's cap is recorded as `__overflow__`; a new series past the family's cap, with
    /// every label `__overflow__`.
    pub fn get_or_create(&self, values: [&str; N]) -> M {
        self.series(values).metric.clone()
    }
}

impl<M, const N: usize> EncodeMetric for GuardedFamily<M, N>
where
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        self.encode_each(encoder, |metric, encoder| metric.encode(encoder))
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        GuardedFamily::is_empty(self)
    }
}

impl<M: TypedMetric, const N: usize> TypedMetric for GuardedFamily<M, N> {
    const TYPE: MetricType = M::TYPE;
}

fn same_values<const N: usize>(stored: &[Arc<str>; N], values: &[&str; N]) -> bool {
    stored
        .iter()
        .zip(values)
        .all(|(stored, value)| **stored == **value)
}

/// Label names and values of one series, encoded side by side.
struct NamedLabels<'a, const N: usize> {
    names: &'a [Arc<str>; N],
    values: &'a [Arc<str>; N],
}

impl<const N: usize> EncodeLabelSet for NamedLabels<'_, N> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        for (name, value) in self.names.iter().zip(self.values) {
            prometheus_client::encoding::EncodeLabel::encode(
                &(&**name, &**value),
                encoder.encode_label(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(caps: Caps) -> (GuardedFamily<Counter, 2>, OverflowCounter) {
        let overflow = OverflowCounter::default();
        let family = GuardedFamily::new(
            "jobs",
            ["kind", "queue"],
            &caps,
            overflow.clone(),
            Box::new(Counter::default),
        );
        (family, overflow)
    }

    fn overflow_count(overflow: &OverflowCounter, label: &str) -> u64 {
        overflow
            .get(&OverflowLabels {
                metric: Arc::from("jobs"),
                label: Arc::from(label),
            })
            .map_or(0, |counter| counter.get())
    }

    #[test]
    fn values_past_a_label_cap_fold_and_totals_stay_exact() {
        let (family, overflow) = family(Caps::default().label("kind", 3));
        for i in 0..10 {
            family.get_or_create([&format!("kind{i}"), "default"]).inc();
        }
        family.get_or_create(["kind0", "default"]).inc();
        assert_eq!(family.len(), 4, "3 kept kinds + the overflow series");
        assert_eq!(family.get_or_create([OVERFLOW, "default"]).get(), 7);
        assert_eq!(family.get_or_create(["kind0", "default"]).get(), 2);
        assert_eq!(overflow_count(&overflow, "kind"), 7);
        assert_eq!(overflow_count(&overflow, "queue"), 0);
    }

    #[test]
    fn series_past_the_family_cap_fold_into_the_all_overflow_series() {
        let (family, overflow) = family(Caps::default().series(5));
        for i in 0..50 {
            family.get_or_create(["k", &format!("q{i}")]).inc();
        }
        assert_eq!(family.len(), 6, "5 series + the all-overflow series");
        assert_eq!(family.get_or_create([OVERFLOW, OVERFLOW]).get(), 45);
        assert_eq!(overflow_count(&overflow, SERIES_OVERFLOW), 45);
    }

    #[test]
    fn a_zero_cap_folds_everything() {
        let (family, _) = family(Caps::default().every_label(0));
        family.get_or_create(["a", "b"]).inc();
        family.get_or_create(["c", "d"]).inc();
        assert_eq!(family.len(), 1);
        assert_eq!(family.get_or_create([OVERFLOW, OVERFLOW]).get(), 2);
    }

    #[test]
    fn concurrent_recording_is_exact_and_bounded() {
        let (family, _) = family(Caps::default().label("kind", 8).series(20));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let family = family.clone();
                scope.spawn(move || {
                    for i in 0..2_000 {
                        family
                            .get_or_create([
                                &format!("k{}", (i * 7 + t) % 50),
                                &format!("q{}", i % 5),
                            ])
                            .inc();
                    }
                });
            }
        });
        assert!(family.len() <= 21, "{} series", family.len());
        // Sum through the real encoder, so every series is visited once.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("jobs", "jobs", family.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let total: u64 = text
            .lines()
            .filter(|line| line.starts_with("jobs_total"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 8_000);
    }
}

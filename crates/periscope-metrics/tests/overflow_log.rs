//! The first fold per metric and label is logged once at warn, and no more. Alone in its test
//! binary: tracing caches per-callsite interest process-wide, so a concurrent test hitting the
//! same callsites without a subscriber could hide events from this one.
// Test code: helpers outside #[test] functions may unwrap too.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use periscope_metrics::{Caps, MetricsRegistry};
use prometheus_client::metrics::counter::Counter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Counts the warnings logged while it is the default subscriber.
struct CountWarnings(Arc<AtomicUsize>);

impl Subscriber for CountWarnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn overflow_is_logged_once_per_metric_and_label() {
    let warnings = Arc::new(AtomicUsize::new(0));
    {
        let _default = common::set_default(CountWarnings(warnings.clone()));
        let registry = MetricsRegistry::new();
        let labels_capped = registry
            .guarded_family::<Counter, 2>(
                "jobs_total",
                "Jobs",
                ["kind", "queue"],
                Caps::default().every_label(1).series(3),
            )
            .unwrap();
        for i in 0..100 {
            labels_capped.get_or_create([&format!("k{i}"), "q"]).inc();
            labels_capped.get_or_create(["k0", &format!("q{i}")]).inc();
        }
        assert_eq!(
            warnings.load(Ordering::SeqCst),
            2,
            "one for kind, one for queue"
        );

        let series_capped = registry
            .guarded_family::<Counter, 1>(
                "tasks_total",
                "Tasks",
                ["task"],
                Caps::default().series(1),
            )
            .unwrap();
        for i in 0..100 {
            series_capped.get_or_create([&format!("t{i}")]).inc();
        }
        assert_eq!(
            warnings.load(Ordering::SeqCst),
            3,
            "and one for the series cap"
        );
    }
}

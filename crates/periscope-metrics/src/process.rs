//! The standard process metrics, read on each scrape by the `metrics-process` crate (the same
//! set and semantics as the official Go client) and encoded through prometheus-client.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The names the collector writes, with their types, reserved when it is registered.
pub(crate) const FAMILIES: [(&str, MetricType); 8] = [
    ("process_cpu_seconds_total", MetricType::Counter),
    ("process_open_fds", MetricType::Gauge),
    ("process_max_fds", MetricType::Gauge),
    ("process_virtual_memory_bytes", MetricType::Gauge),
    ("process_virtual_memory_max_bytes", MetricType::Gauge),
    ("process_resident_memory_bytes", MetricType::Gauge),
    ("process_start_time_seconds", MetricType::Gauge),
    ("process_threads", MetricType::Gauge),
];

/// Reads the running process's CPU, memory, file descriptors, threads and start time on each
/// scrape. A value the platform cannot provide is left out rather than reported as 0.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let m = metrics_process::collector::collect();
        if let Some(cpu) = m.cpu_seconds_total {
            let metric = ConstCounter::new(cpu);
            metric.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                m.max_fds.map(limit),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                m.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max",
                "Maximum amount of virtual memory available in bytes",
                Some(Unit::Bytes),
                m.virtual_memory_max_bytes.map(limit),
            ),
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                m.resident_memory_bytes,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch in seconds",
                Some(Unit::Seconds),
                m.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                None,
                m.threads,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// A resource limit as the Go client reports it: `metrics-process` reads "unlimited" as 0,
/// which no running process can have as a limit, and `process_open_fds / process_max_fds`
/// would then be infinite (and an "over 80 % of the limit" alert would fire). The Go client
/// reports the kernel's unlimited value, 2^64 − 1.
fn limit(value: u64) -> u64 {
    if value == 0 { u64::MAX } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn unlimited_reads_as_the_go_client_writes_it() {
        assert_eq!(limit(0), 18_446_744_073_709_551_615);
        assert_eq!(limit(1024), 1024);
    }

    #[test]
    fn process_metrics_carry_the_standard_names_and_live_values() {
        // Some CPU time for the counter to show (the kernel counts it in 10 ms ticks).
        let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut spin = 0u64;
        while std::time::Instant::now() < busy_until {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |sample: &str| -> f64 {
            let line = text
                .lines()
                .find(|line| line.starts_with(&format!("{sample} ")))
                .unwrap_or_else(|| panic!("{sample} missing from\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(text.contains("# TYPE process_cpu_seconds counter\n"));
        // This process has run the test (and the work below): some CPU time, in seconds.
        let cpu = value("process_cpu_seconds_total");
        assert!(cpu > 0.0 && cpu < 3600.0, "{cpu}");
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }
}

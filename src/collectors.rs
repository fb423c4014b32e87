//! Metrics of periscope itself that live outside the metrics crate.

use periscope_metrics::prometheus_client::collector::Collector;
use periscope_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use periscope_metrics::prometheus_client::metrics::counter::ConstCounter;

use periscope_log::DroppedLines;

/// The counter [`DroppedLinesCollector`] writes, as a registry takes its name.
pub(crate) const DROPPED_LINES_METRIC: &str = "periscope_log_dropped_lines_total";

/// `periscope_log_dropped_lines_total`: log lines dropped because the output could not keep up.
#[derive(Debug)]
pub(crate) struct DroppedLinesCollector(pub(crate) DroppedLines);

impl Collector for DroppedLinesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.get());
        let metric = encoder.encode_descriptor(
            "periscope_log_dropped_lines",
            "Log lines dropped: the queue to the log output was full, a write failed (a closed \
             stdout), or lines were still queued when the output was closed.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

//! A scrape is encoded off the executor's thread. A binary of its own: the scrape threads are
//! counted for the whole process, and scrapes of other tests running beside this one could
//! take them all (their scrapes are then encoded in the task, as past the bound).

use std::sync::Mutex;
use std::time::Duration;

use periscope_metrics::MetricsRegistry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// A collector that cannot finish encoding until a task of the executor has run: it waits
/// (up to 10 s) for that task's word, as a slow encoding would keep the thread it runs on.
#[derive(Debug)]
struct WaitsForTheExecutor(Mutex<std::sync::mpsc::Receiver<()>>);

impl Collector for WaitsForTheExecutor {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ran = self
            .0
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .is_ok();
        let metric = ConstCounter::new(u64::from(ran));
        let family = encoder.encode_descriptor(
            "test_executor_ran",
            "Whether a task of the executor ran while the registry was encoded",
            None,
            metric.metric_type(),
        )?;
        metric.encode(family)
    }
}

/// A scrape is encoded off the executor's thread: on a runtime with one thread, a task of the
/// service runs while the registry is encoded (encoded on that thread, the collector would
/// wait for the task in vain, and the scrape would say 0).
#[test]
fn a_scrape_is_encoded_off_the_executors_thread() {
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let registry = MetricsRegistry::new();
        registry
            .reserve(
                "test_executor_ran_total",
                prometheus_client::metrics::MetricType::Counter,
            )
            .unwrap();
        let (ran, wait) = std::sync::mpsc::channel();
        registry.register_collector(Box::new(WaitsForTheExecutor(Mutex::new(wait))));
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = ran.send(());
        });
        let scrape = http::Request::get("/metrics").body(()).unwrap();
        let response = periscope_metrics::MetricsService::new(registry)
            .oneshot(scrape)
            .await
            .unwrap();
        task.await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("test_executor_ran_total 1"), "{text}");
    });
}

//! Runs that finish close together are published, logged and measured in order: the log's last
//! word and the check gauges follow the run `/ready` answers from.
//! One test alone in its binary: it holds an event of the global subscriber.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use periscope_health::{Health, Status};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Records each event's message, and holds the first "health check failed" event until
/// released: the run logging it stays between publishing its results and finishing.
#[derive(Clone, Default)]
struct Holdup {
    held: Arc<AtomicBool>,
    released: Arc<(Mutex<bool>, Condvar)>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Holdup {
    fn release(&self) {
        let (released, condvar) = &*self.released;
        *released.lock().unwrap() = true;
        condvar.notify_all();
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Holdup {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0 == "health check failed" && !self.held.swap(true, Ordering::SeqCst) {
            let (released, condvar) = &*self.released;
            let guard = released.lock().unwrap();
            // Bounded, so a regression cannot hang the test.
            let _ = condvar
                .wait_timeout_while(guard, Duration::from_secs(10), |released| !*released)
                .unwrap();
        }
        self.messages.lock().unwrap().push(message.0);
    }
}

#[cfg(feature = "metrics")]
fn status_gauge(registry: &prometheus_client::registry::Registry) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("health_check_status{check=\"database\"} "))
        .unwrap_or_else(|| panic!("no health_check_status in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_finishing_while_the_previous_one_logs_is_logged_and_measured_after_it() {
    let holdup = Holdup::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(holdup.clone()))
        .unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let health = Health::builder()
        .check("database", move || {
            let healthy = flag.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(())
                } else {
                    Err("connection refused")
                }
            }
        })
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();
    #[cfg(feature = "metrics")]
    let mut registry = prometheus_client::registry::Registry::default();
    #[cfg(feature = "metrics")]
    health.register_metrics(&mut registry);

    // The first run fails and is held while it logs the failure, its results already published.
    let readiness = |health: &Health| {
        let health = health.clone();
        tokio::spawn(async move { health.readiness().await.status() })
    };
    let first = readiness(&health);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !holdup.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first run reached the held check");
    // Meanwhile the database recovers and the next run passes (it may wait for the first run to
    // finish; give it time to overtake the first if it can).
    healthy.store(true, Ordering::SeqCst);
    let mut second = readiness(&health);
    let overtook = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    holdup.release();
    assert_eq!(first.await.unwrap(), Status::Fail);
    let second = match overtook {
        Ok(second) => second,
        Err(_) => second.await,
    };
    assert_eq!(second.unwrap(), Status::Ok);

    // `/ready` now answers from the passing run: the log's last word is the recovery...
    let messages = holdup.messages.lock().unwrap().clone();
    assert_eq!(
        messages.last().map(String::as_str),
        Some("health check recovered"),
        "{messages:?}"
    );
    // ...and the gauge shows the pass.
    #[cfg(feature = "metrics")]
    assert_eq!(status_gauge(&registry), 1.0);
}

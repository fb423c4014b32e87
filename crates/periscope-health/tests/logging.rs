//! What reaches the log: withheld error texts, panics, and failures logged once per change.

mod support;

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use periscope_health::{Details, Health, Status};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Every event as `LEVEL message k=v ...`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
}

impl Captured {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

// A current-thread runtime runs every task on this thread, under this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn withheld_errors_are_logged_once_per_change() {
    let captured = Captured::default();
    let _guard = support::set_default(tracing_subscriber::registry().with(captured.clone()));
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let health = Health::builder()
        .check("database", move || {
            let healthy = flag.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(())
                } else {
                    Err("password authentication failed for user svc")
                }
            }
        })
        .cache_ttl(std::time::Duration::ZERO)
        .details(Details::Withheld)
        .build()
        .unwrap();

    assert_eq!(health.readiness().await.status(), Status::Fail);
    let lines = captured.take();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN health check failed "),
        "{lines:?}"
    );
    assert!(lines[0].contains("check=database"), "{lines:?}");
    assert!(
        lines[0].contains("password authentication failed for user svc"),
        "{lines:?}"
    );

    health.readiness().await;
    assert!(
        captured.take().is_empty(),
        "the same failure is not logged again"
    );

    healthy.store(true, Ordering::SeqCst);
    assert_eq!(health.readiness().await.status(), Status::Ok);
    let lines = captured.take();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("INFO health check recovered "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_message_goes_to_the_log_not_the_response() {
    let captured = Captured::default();
    let _guard = support::set_default(tracing_subscriber::registry().with(captured.clone()));
    let health = Health::builder()
        .check("buggy", || async {
            if std::env::var_os("PERISCOPE_NEVER_SET").is_none() {
                panic!("invariant broken: queue id 42 missing");
            }
            Ok::<_, String>(())
        })
        .build()
        .unwrap();

    let report = health.readiness().await;
    assert_eq!(report.checks()[0].error.as_deref(), Some("check panicked"));
    let lines = captured.take();
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("ERROR health check panicked ")
                && line.contains("invariant broken: queue id 42 missing")),
        "{lines:?}"
    );
}

/// A steady panic is a steady failure: logged once, not on every run. Its message is masked and
/// cut as a check's error text is, since a driver's panic often names its connection string.
#[tokio::test(flavor = "current_thread")]
async fn a_steady_panic_is_logged_once_masked_and_bounded() {
    let captured = Captured::default();
    let _guard = support::set_default(tracing_subscriber::registry().with(captured.clone()));
    let health = Health::builder()
        .check("database", || async {
            if std::env::var_os("PERISCOPE_NEVER_SET").is_none() {
                panic!(
                    "connect to postgres://svc:hunter2@db:5432/app failed: {}",
                    "x".repeat(100_000)
                );
            }
            Ok::<_, String>(())
        })
        .cache_ttl(std::time::Duration::ZERO)
        .build()
        .unwrap();

    for _ in 0..3 {
        assert_eq!(health.readiness().await.status(), Status::Fail);
    }
    let lines = captured.take();
    let panics: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("ERROR health check panicked "))
        .collect();
    assert_eq!(panics.len(), 1, "logged once, not on every run: {lines:?}");
    assert!(!panics[0].contains("hunter2"), "{}", &panics[0][..200]);
    // Masked, not dropped: the host and database an operator needs stay.
    assert!(
        panics[0].contains("connect to postgres://svc:[REDACTED]@db:5432/app failed: xxx"),
        "{}",
        &panics[0][..200]
    );
    assert!(panics[0].len() < 2 * 1024, "{} bytes", panics[0].len());
}

//! ResourceTracker: a CSV that can no longer be written mid-run (a full disk) is said in the
//! log at once, not only by `finish()`, which a dropped tracker never calls.
//! Its own test binary: it installs a global tracing subscriber to count warnings.
#![cfg(feature = "tracker")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use periscope_gpu::ResourceTracker;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(String);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().starts_with("periscope_gpu") {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

/// Takes `room` bytes, then fails every write as a full disk does.
#[derive(Clone)]
struct FillingDisk(Arc<Mutex<usize>>);

impl Write for FillingDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut room = self.0.lock().unwrap();
        if buf.len() > *room {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        *room -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_csv_write_failure_mid_run_is_warned_at_once() {
    let warnings = Warnings::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings.clone()))
        .expect("only test in this binary to set the subscriber");

    // Room for the header and about two rows.
    let header = periscope_gpu::CSV_HEADER.len() + 1;
    let tracker = ResourceTracker::builder()
        .interval(Duration::from_millis(200))
        .csv_writer(FillingDisk(Arc::new(Mutex::new(header + 200))))
        .start()
        .expect("the header fits");

    let deadline = Instant::now() + Duration::from_secs(30);
    while warnings.0.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dropped, as a job that ends early would: the warning is all the service ever hears.
    drop(tracker);
    let seen = warnings.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("CSV"), "{seen:?}");
    assert!(seen[0].contains("No space left"), "{seen:?}");
}

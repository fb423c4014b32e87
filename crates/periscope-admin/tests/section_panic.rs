//! A `/debug/status` section (or in-flight source) that panics is reported once, by the admin's own line, as the
//! error layer reports a handler's panic: not also by the process's panic hook (the default
//! one's text on stderr, or `Observability::init`'s line). A binary of its own: it installs
//! the process's panic hook and the global subscriber.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use periscope_admin::{Admin, DebugAccess};
use support::{TOKEN, get_authorised, serve};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The error lines written: their message and `panic.message`.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(String, String)>>>);

#[derive(Default)]
struct Fields {
    message: String,
    panic_message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "panic.message" => self.panic_message = value.to_owned(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((fields.message, fields.panic_message));
        }
    }
}

static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test]
async fn a_panicking_section_is_reported_once_by_the_admins_line() {
    // The process's hook, as the default one or `Observability::init`'s would report.
    std::panic::set_hook(Box::new(|_| {
        HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    let errors = Errors::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(errors.clone()))
        .unwrap();
    let admin = Admin::builder()
        .status_section("broken", || panic!("the queue is gone"))
        .status_section("queue", || serde_json::json!({"depth": 3}))
        .in_flight(|| -> i64 { panic!("the counter is poisoned") })
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let answer = get_authorised(addr, "/debug/status").await;
    assert_eq!(answer.status, 200);
    let sections = &answer.json()["sections"];
    assert_eq!(
        sections["broken"]["error"],
        "this section panicked; see the service log"
    );
    assert_eq!(sections["queue"]["depth"], 3);
    assert!(answer.json()["in_flight"].is_null(), "{}", answer.json());
    let mut errors = errors.0.lock().unwrap().clone();
    errors.sort();
    assert_eq!(
        errors,
        [
            (
                "a /debug/status section panicked".to_owned(),
                "the queue is gone".to_owned()
            ),
            (
                "the /debug/status in-flight source panicked".to_owned(),
                "the counter is poisoned".to_owned()
            )
        ]
    );
    assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 0);
}

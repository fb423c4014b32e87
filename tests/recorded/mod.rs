//! What a test server recorded, read back: the fields of its spans, its log lines (with the
//! spans, from [`record`]) and its counters in the exposition text; and the two servers a test
//! serves its app on (shared by the facade's test binaries that serve the whole stack).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::capture::{Captured, OpenSpans, set_default};

/// The fields of every span opened while recording, in order; a span id the registry reuses
/// starts a new entry.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<SpanLog>>);

#[derive(Default)]
struct SpanLog {
    spans: Vec<(&'static str, HashMap<&'static str, String>)>,
    live: HashMap<u64, usize>,
}

impl Spans {
    /// The fields of every span named `name`.
    #[allow(dead_code)] // not every binary sharing this module reads them all
    pub fn named(&self, name: &str) -> Vec<HashMap<&'static str, String>> {
        let log = self.0.lock().unwrap();
        (log.spans.iter())
            .filter(|(n, _)| *n == name)
            .map(|(_, fields)| fields.clone())
            .collect()
    }

    /// The fields of the spans named `name` whose `request_id` is `request_id`.
    pub fn of(&self, name: &str, request_id: &str) -> Vec<HashMap<&'static str, String>> {
        let log = self.0.lock().unwrap();
        log.spans
            .iter()
            .filter(|(n, fields)| {
                *n == name && fields.get("request_id").map(String::as_str) == Some(request_id)
            })
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut log = self.0.lock().unwrap();
        log.spans.push((attrs.metadata().name(), fields));
        let at = log.spans.len() - 1;
        log.live.insert(id.into_u64(), at);
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut log = self.0.lock().unwrap();
        if let Some(&at) = log.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut log.spans[at].1));
        }
    }
}

/// The log lines (access lines at `debug` too, for the quiet health paths) and the spans of
/// this thread, while the guards live: `capture_lines` with the spans beside.
pub fn record() -> (
    Captured,
    Spans,
    periscope::log::LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    let (out, spans, _, log_guard, default) = record_counting_open();
    (out, spans, log_guard, default)
}

/// [`record`], and how many request spans are open.
pub fn record_counting_open() -> (
    Captured,
    Spans,
    OpenSpans,
    periscope::log::LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    use tracing_subscriber::prelude::*;

    let out = Captured::default();
    let spans = Spans::default();
    let open = OpenSpans::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .directives(periscope::log::Directives::parse("info,periscope::access=debug").unwrap())
        .build();
    let default = set_default(
        tracing_subscriber::registry()
            .with(log)
            .with(spans.clone())
            .with(open.clone()),
    );
    (out, spans, open, log_guard, default)
}

/// Which server serves a test's app.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(dead_code)] // not every binary sharing this module serves its app on both
pub enum Serve {
    Periscope,
    Axum,
}

/// Both servers, for what must hold on each.
#[allow(dead_code)]
pub const SERVERS: [Serve; 2] = [Serve::Periscope, Serve::Axum];

#[allow(dead_code)]
impl Serve {
    /// Serves `app` on 127.0.0.1 from a task of its own; the address.
    pub async fn spawn(self, app: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match self {
            Serve::Periscope => {
                tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));
            }
            Serve::Axum => {
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
        }
        addr
    }
}

/// A counter family's samples summed over the series whose labels match `labels`.
pub fn counted(exposition: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    // A registry with no samples yet encodes as no text at all.
    if exposition.is_empty() {
        return 0.0;
    }
    let exposition = openmetrics_parser::prometheus::parse_prometheus(exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let Some(family) = exposition.families.get(family) else {
        return 0.0;
    };
    family
        .iter_samples()
        .filter(|sample| {
            let set = sample.get_labelset().unwrap();
            labels
                .iter()
                .all(|(name, value)| set.get_label_value(name) == Some(*value))
        })
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum()
}

/// Polls `found` every 10 ms for up to 10 s (the server records a call once its stream has
/// ended, which a client that left first does not wait for).
pub async fn eventually<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let poll = async {
        loop {
            if let Some(value) = found() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

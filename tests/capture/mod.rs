//! Log lines captured by a test: a writer into memory, read back as JSON, and the scoped
//! subscriber that must be installed with it (shared by the facade's test binaries).

use std::io::Write;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// A log writer into memory; clones write to the same buffer.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every byte written so far, as written.
    #[allow(dead_code)] // not every binary sharing this module reads the raw bytes
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// Every line written so far, parsed.
    pub fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

/// Installs `subscriber` as this thread's default, for a test that reads the lines it writes.
///
/// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
/// that meets a callsite first whether it is enabled, and caches the answer for every thread:
/// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
/// cached as never enabled, and a test capturing lines at the same time misses them. Two
/// dispatchers kept for the whole run make tracing-core ask every live one instead (see
/// docs/development.md).
pub fn set_default(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static KEPT: OnceLock<[tracing::Dispatch; 2]> = OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    tracing::subscriber::set_default(subscriber)
}

/// The lines periscope's log layer writes on this thread while the guards live, at the default
/// level or under `directives` (such as `"debug"`); drop the log guard before reading them.
pub fn capture_lines(
    directives: Option<&str>,
) -> (
    Captured,
    periscope::log::LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    use tracing_subscriber::prelude::*;

    let out = Captured::default();
    let mut builder = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true);
    if let Some(directives) = directives {
        builder = builder.directives(periscope::log::Directives::parse(directives).unwrap());
    }
    let (log, log_guard) = builder.build();
    let default = set_default(tracing_subscriber::registry().with(log));
    (out, log_guard, default)
}

/// How many `http_request` spans are open (a request that ended must have closed its span),
/// as a layer of a test's subscriber.
#[derive(Clone, Default)]
#[allow(dead_code)] // not every binary sharing this module counts spans
pub struct OpenSpans(Arc<AtomicIsize>);

#[allow(dead_code)]
impl OpenSpans {
    pub fn count(&self) -> isize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S> tracing_subscriber::Layer<S> for OpenSpans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "http_request" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn on_close(&self, id: tracing::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if ctx
            .span(&id)
            .is_some_and(|span| span.name() == "http_request")
        {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

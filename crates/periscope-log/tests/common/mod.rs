//! Capturing what the layer writes, and parsing it back.
#![allow(dead_code)] // each test file uses a part of it

use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};

use periscope_log::{DroppedLines, LevelControl, LogLayer, LogLayerBuilder, RecentLogs};
use serde_json::Value;
use tracing_subscriber::prelude::*;

/// A writer whose bytes the test can read.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("output is UTF-8")
    }

    /// Every line, each parsed as one JSON object.
    pub fn lines(&self) -> Vec<Value> {
        let text = self.text();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "lines end in a newline"
        );
        text.lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON object: {e}: {line:?}"));
                assert!(value.is_object(), "{line}");
                value
            })
            .collect()
    }
}

/// The handles a test reads while logging.
pub struct Handles {
    pub level: LevelControl,
    pub recent: RecentLogs,
    pub dropped: DroppedLines,
}

impl Handles {
    pub fn of(layer: &LogLayer) -> Self {
        Self {
            level: layer.level_control(),
            recent: layer.recent_logs(),
            dropped: layer.dropped_lines(),
        }
    }
}

/// Runs `f` under a subscriber with the layer `configure` builds (writing synchronously into
/// a buffer), and returns the buffer.
pub fn capture(
    configure: impl FnOnce(LogLayerBuilder) -> LogLayerBuilder,
    f: impl FnOnce(&Handles),
) -> Captured {
    let out = Captured::default();
    let (layer, guard) = configure(LogLayer::builder().writer(out.clone()).blocking(true)).build();
    let handles = Handles::of(&layer);
    let subscriber = tracing_subscriber::registry().with(layer);
    with_default(subscriber, || f(&handles));
    drop(guard);
    out
}

/// The one line `f` logs.
pub fn one_line(f: impl FnOnce()) -> Value {
    let mut lines = capture(|b| b, |_| f()).lines();
    assert_eq!(lines.len(), 1, "exactly one line");
    lines.remove(0)
}

/// Installs `subscriber` (a subscriber or a `Dispatch`) as this thread's default, for a test
/// that reads the lines it captures.
///
/// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
/// that meets a callsite first whether it is enabled, and caches the answer for every thread:
/// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
/// cached as never enabled, and a test capturing lines at the same time misses them. Two
/// dispatchers kept for the whole run make tracing-core ask every live one instead (see
/// docs/development.md).
pub fn set_default(subscriber: impl Into<tracing::Dispatch>) -> tracing::subscriber::DefaultGuard {
    static KEPT: OnceLock<[tracing::Dispatch; 2]> = OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    tracing::dispatcher::set_default(&subscriber.into())
}

/// Runs `f` with `subscriber` as this thread's default, installed by [`set_default`].
pub fn with_default<T>(subscriber: impl Into<tracing::Dispatch>, f: impl FnOnce() -> T) -> T {
    let _default = set_default(subscriber);
    f()
}

/// Waits (5 s at most) until `done` holds.
pub fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// The lines of a thread running `body` and then ending, its thread-local destructors
/// included, with the log layer as the process's default subscriber (the only one a dying
/// thread's destructors still reach: call it once per test binary). Before `body`, the
/// registry's thread-local is set up, so it outlives those `body` sets up.
#[allow(dead_code)]
pub fn lines_of_an_ending_thread(body: impl FnOnce() + Send + 'static) -> Vec<Value> {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
    std::thread::spawn(|| {
        tracing::dispatcher::get_default(|dispatch| dispatch.current_span());
        body();
    })
    .join()
    .expect("the thread ends cleanly");
    drop(guard);
    out.lines()
}

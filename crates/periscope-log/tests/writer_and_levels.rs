//! Nothing lost before the guard drops; a full queue counts what it drops; runtime levels.

mod common;

use std::io::{self, Write};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Captured, Handles, capture, wait_until};
use periscope_log::LogLayer;
use tracing_subscriber::prelude::*;

#[test]
fn every_line_logged_from_several_threads_is_written_when_the_guard_drops() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 5_000;
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder().writer(out.clone()).build();
    let dropped = layer.dropped_lines();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dispatch, start) = (dispatch.clone(), start.clone());
            std::thread::spawn(move || {
                common::with_default(dispatch, || {
                    start.wait();
                    for i in 0..PER_THREAD {
                        tracing::info!(thread = t as u64, i = i as u64, "line");
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop(guard);
    assert_eq!(dropped.get(), 0);
    let lines = out.lines();
    assert_eq!(lines.len(), THREADS * PER_THREAD);
    // Each thread's lines arrive complete and in order.
    let mut next = [0u64; THREADS];
    for line in &lines {
        let t = line["data"]["thread"].as_u64().unwrap() as usize;
        assert_eq!(line["data"]["i"].as_u64().unwrap(), next[t]);
        next[t] += 1;
    }
}

/// A writer that blocks until the test opens it, then counts lines.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Default)]
struct GateState {
    open: bool,
    lines: usize,
    /// Writes begun, done or not.
    writes: usize,
}

impl Gate {
    fn open(&self) {
        let (lock, cond) = &*self.state;
        lock.lock().unwrap().open = true;
        cond.notify_all();
    }

    fn lines(&self) -> usize {
        self.state.0.lock().unwrap().lines
    }

    fn writes(&self) -> usize {
        self.state.0.lock().unwrap().writes
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (lock, cond) = &*self.state;
        lock.lock().unwrap().writes += 1;
        let mut state = cond.wait_while(lock.lock().unwrap(), |s| !s.open).unwrap();
        state.lines += buf.iter().filter(|b| **b == b'\n').count();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    const LINES: usize = 1_000;
    let gate = Gate::default();
    let (layer, guard) = LogLayer::builder()
        .writer(gate.clone())
        .queue_limits(16, usize::MAX)
        .build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    let (done, finished) = std::sync::mpsc::channel();
    let logging = std::thread::spawn(move || {
        common::with_default(subscriber, || {
            for i in 0..LINES {
                tracing::info!(i = i as u64, "line");
            }
        });
        let _ = done.send(());
    });
    // The output is stuck, yet logging goes on to its end: a blocked thread would never send.
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("logging blocked behind the stuck output");
    logging.join().unwrap();
    assert!(dropped.get() > 0);
    gate.open();
    drop(guard);
    assert_eq!(gate.lines() as u64 + dropped.get(), LINES as u64);
    assert!(
        gate.lines() >= 16,
        "the queue's lines were written: {}",
        gate.lines()
    );
}

#[test]
fn a_level_change_applies_to_the_next_event_and_reverts_after_its_ttl() {
    let out = capture(
        |b| b,
        |Handles { level, .. }| {
            tracing::debug!("hidden before");
            // Two seconds: long enough for the next event on a loaded machine.
            level.set_for("debug".parse().unwrap(), Duration::from_secs(2));
            tracing::debug!("shown during");
            assert_eq!(level.status().current, "debug");
            let reverts_in = level.status().reverts_in.unwrap();
            assert!(reverts_in <= Duration::from_secs(2));
            let deadline = Instant::now() + Duration::from_secs(10);
            while level.status().reverts_in.is_some() {
                assert!(Instant::now() < deadline, "never reverted");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(level.status().current, "info");
            tracing::debug!("hidden after");
            level.set("warn,my_target=trace".parse().unwrap());
            tracing::info!("hidden by warn");
            tracing::trace!(target: "my_target::db", "shown by target");
        },
    );
    let messages: Vec<String> = out
        .lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["shown during", "shown by target"]);
}

#[test]
fn level_change_lines_pass_every_directive() {
    let out = capture(
        |b| {
            b.directives(
                "off,periscope=off,periscope::log_level=off"
                    .parse()
                    .unwrap(),
            )
        },
        |_| {
            tracing::error!("hidden by off");
            tracing::warn!(target: periscope_log::LEVEL_CHANGE_TARGET, "shown: a change");
            // Reserved for the change lines, which are `warn`: not a way around the filter.
            tracing::info!(target: periscope_log::LEVEL_CHANGE_TARGET, "hidden info");
        },
    );
    let lines = out.lines();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["shown: a change"]);
    assert_eq!(lines[0]["target"], "periscope::log_level");
    assert!(
        "off"
            .parse::<periscope_log::Directives>()
            .unwrap()
            .max_level_hint()
            >= periscope_log::LevelFilter::WARN
    );
}

#[test]
fn a_later_temporary_change_replaces_the_pending_one() {
    let out = capture(
        |b| b,
        |Handles { level, .. }| {
            level.set_for("trace".parse().unwrap(), Duration::from_millis(50));
            level.set_for("debug".parse().unwrap(), Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(200));
            tracing::debug!("still debug");
            tracing::trace!("not trace");
            level.reset();
            tracing::debug!("back to info");
        },
    );
    let messages: Vec<String> = out
        .lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["still debug"]);
}

#[test]
fn lines_keep_their_request_context_when_the_level_hides_info() {
    let out = capture(
        |b| b.directives("warn".parse().unwrap()),
        |_| {
            let request = tracing::info_span!(
                "http_request",
                request_id = "req_1",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            let _entered = request.enter();
            let plain = tracing::info_span!("plain_work", step = 1);
            let _plain = plain.enter();
            tracing::info!("hidden by warn");
            tracing::warn!("shown with its ids");
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["message"], "shown with its ids");
    assert_eq!(lines[0]["request_id"], "req_1");
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // A span without context fields follows the directives like any other.
    assert_eq!(lines[0]["span"], "http_request");
}

/// A writer that panics on every write.
struct Panicking;

impl Write for Panicking {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        panic!("the output broke");
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_writer_that_panics_drops_and_counts_every_line_from_then_on() {
    let (layer, guard) = LogLayer::builder().writer(Panicking).build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("first");
        // The first batch (this one line) is counted when the write panics.
        assert!(wait_until(|| dropped.get() == 1), "{}", dropped.get());
        // From then on lines are counted at once instead of queued for a dead writer.
        for i in 0..100u64 {
            tracing::info!(i, "after");
        }
        assert_eq!(dropped.get(), 101);
    });
    drop(guard);
    assert_eq!(dropped.get(), 101);
}

#[test]
fn a_writer_that_panics_in_blocking_mode_counts_the_line_and_does_not_panic_the_caller() {
    let (layer, guard) = LogLayer::builder().writer(Panicking).blocking(true).build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("one");
        tracing::info!("two");
    });
    drop(guard);
    assert_eq!(dropped.get(), 2);
}

/// An output that holds what it is given until flushed, whose first flush finds the pipe
/// behind it full (`WouldBlock`, as an output left non-blocking by another process).
#[derive(Clone, Default)]
struct Buffered {
    held: Arc<Mutex<Vec<u8>>>,
    flushed: Captured,
    flushes: Arc<Mutex<usize>>,
}

impl Write for Buffered {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.held.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut flushes = self.flushes.lock().unwrap();
        *flushes += 1;
        if *flushes == 1 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        self.flushed.write_all(&held)
    }
}

/// In blocking mode the lines are written at once, maybe into a buffer in front of the
/// output: a flusher flushes it, and the guard's flush waits out a full pipe, as the
/// background writer's does, rather than leaving the lines in the buffer for good.
#[test]
fn a_blocking_writers_flush_reaches_the_output_past_a_full_pipe() {
    let out = Buffered::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("before the flush");
        guard.flusher().flush();
        assert!(out.flushed.text().contains("before the flush"));
        tracing::info!("before the guard's drop");
    });
    drop(guard);
    assert!(out.flushed.text().contains("before the guard's drop"));
}

/// "As long as it takes" is a flush timeout too: the guard's drop and a flusher wait, and
/// write every line, rather than panicking on a deadline past what an `Instant` holds.
#[test]
fn a_flush_timeout_without_end_writes_every_line() {
    let out = Captured::default();
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .flush_timeout(Duration::MAX)
        .build();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("first");
        guard.flusher().flush();
        tracing::info!("second");
    });
    drop(guard);
    let text = out.text();
    assert!(text.contains("first") && text.contains("second"), "{text}");
}

#[test]
fn lines_still_queued_when_the_guard_gives_up_are_counted() {
    let gate = Gate::default();
    let (layer, guard) = LogLayer::builder()
        .writer(gate.clone())
        .flush_timeout(Duration::from_millis(50))
        .build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("stuck in the write");
        assert!(wait_until(|| gate.writes() == 1));
        for _ in 0..5 {
            tracing::info!("queued behind it");
        }
    });
    drop(guard);
    // The five queued and the one the output is stuck on: the process usually ends now.
    assert_eq!(dropped.get(), 6);
    gate.open();
    assert!(wait_until(|| gate.lines() == 1));
    // Written late, it is not counted twice.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(dropped.get(), 6);
}

/// What [`Scripted`] does on a write call; once its steps run out it takes everything.
#[derive(Clone)]
enum Step {
    /// Takes at most this many bytes.
    Take(usize),
    /// Takes all but the last byte (a line's newline).
    AllButLast,
    /// Fails with this error, taking nothing.
    Fail(io::ErrorKind),
    /// Panics, taking nothing.
    Panic,
    /// Meets the test at the first barrier (the write has begun), waits at the second, then
    /// takes everything: lines logged in between queue up.
    Gate(Arc<[std::sync::Barrier; 2]>),
}

/// A writer that follows a script of short writes and errors, into a buffer.
#[derive(Clone, Default)]
struct Scripted {
    out: Captured,
    steps: Arc<Mutex<std::collections::VecDeque<Step>>>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let scripted = Self::default();
        scripted.steps.lock().unwrap().extend(steps);
        scripted
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let step = self.steps.lock().unwrap().pop_front();
        match step {
            Some(Step::Fail(kind)) => Err(kind.into()),
            Some(Step::Panic) => panic!("the output panicked"),
            Some(Step::Take(n)) => self.out.write(&buf[..n.min(buf.len())]),
            Some(Step::AllButLast) => self.out.write(&buf[..buf.len().saturating_sub(1)]),
            Some(Step::Gate(barriers)) => {
                barriers[0].wait();
                barriers[1].wait();
                self.out.write(buf)
            }
            None => self.out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Logs `log` through a layer writing to `out` (on the caller's thread when `blocking`), drops
/// the guard, and returns the lines counted as dropped.
fn logged_to(out: &Scripted, blocking: bool, log: impl FnOnce()) -> u64 {
    let (layer, guard) = LogLayer::builder()
        .writer(out.clone())
        .blocking(blocking)
        .build();
    let dropped = layer.dropped_lines();
    common::with_default(tracing_subscriber::registry().with(layer), log);
    drop(guard);
    dropped.get()
}

/// A pipe that another process made non-blocking answers `WouldBlock` when full: the lines
/// wait for room instead of being dropped, and none is cut in two.
#[test]
fn an_output_that_would_block_is_waited_for_and_no_line_is_lost_or_cut() {
    for blocking in [false, true] {
        let steps = (0..200).flat_map(|_| [Step::Take(7), Step::Fail(io::ErrorKind::WouldBlock)]);
        let out = Scripted::new(steps);
        let dropped = logged_to(&out, blocking, || {
            for i in 0..20u64 {
                tracing::info!(i, "line");
            }
        });
        assert_eq!(dropped, 0, "blocking: {blocking}");
        let lines = out.out.lines();
        let numbers: Vec<u64> = lines
            .iter()
            .map(|l| l["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..20).collect::<Vec<_>>(), "blocking: {blocking}");
    }
}

/// A write that fails inside a line (a full disk) leaves a fragment of it in the output: the
/// lines after it still start on a line of their own, and the lost line is counted.
#[test]
fn a_write_that_fails_inside_a_line_breaks_only_that_line() {
    for blocking in [false, true] {
        let out = Scripted::default();
        let (layer, guard) = LogLayer::builder()
            .writer(out.clone())
            .blocking(blocking)
            .build();
        let dropped = layer.dropped_lines();
        let subscriber = tracing_subscriber::registry().with(layer);
        common::with_default(subscriber, || {
            tracing::info!("one");
            assert!(wait_until(|| out.out.text().lines().count() == 1));
            out.steps
                .lock()
                .unwrap()
                .extend([Step::Take(20), Step::Fail(io::ErrorKind::StorageFull)]);
            tracing::info!("two");
            assert!(wait_until(|| dropped.get() == 1));
            tracing::info!("three");
        });
        drop(guard);
        assert_eq!(dropped.get(), 1, "blocking: {blocking}");
        let text = out.out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1].len(), 20, "the fragment of the lost line: {text}");
        for (line, message) in [(lines[0], "one"), (lines[2], "three")] {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["message"], message);
        }
    }
}

/// A write that fails inside a line of a batch (lines queued while the writer was busy)
/// loses that line alone: the lines after it in the batch are written, not dropped with it.
#[test]
fn a_write_that_fails_inside_a_line_of_a_batch_loses_only_that_line() {
    let gate = Arc::new([std::sync::Barrier::new(2), std::sync::Barrier::new(2)]);
    let out = Scripted::new([
        Step::Gate(Arc::clone(&gate)),
        Step::Take(20),
        Step::Fail(io::ErrorKind::StorageFull),
    ]);
    let (layer, guard) = LogLayer::builder().writer(out.clone()).build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        // The writer holds "one" at the gate while the others queue: one batch after it.
        tracing::info!("one");
        gate[0].wait();
        for message in ["two", "three", "four"] {
            tracing::info!("{message}");
        }
        gate[1].wait();
    });
    drop(guard);
    assert_eq!(dropped.get(), 1);
    let text = out.out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[1].len(), 20, "the fragment of the lost line: {text}");
    for (line, message) in [(lines[0], "one"), (lines[2], "three"), (lines[3], "four")] {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["message"], message, "{text}");
    }
}

/// A line taken whole but for its newline (the disk full at its last byte) is in the output,
/// not lost: when nothing else is logged after it, dropping the guard ends it, so the output
/// holds whole lines a shipper reading by line passes on.
#[test]
fn a_line_written_but_for_its_newline_is_ended_when_the_guard_is_dropped() {
    for blocking in [false, true] {
        let out = Scripted::new([Step::AllButLast, Step::Fail(io::ErrorKind::StorageFull)]);
        let dropped = logged_to(&out, blocking, || tracing::info!("the last words"));
        assert_eq!(dropped, 0, "blocking: {blocking}");
        let text = out.out.text();
        assert!(text.ends_with('\n'), "blocking: {blocking}: {text:?}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["message"], "the last words");
    }
}

/// A blocking output that panics after taking part of a line is used again: the next line
/// still starts on a line of its own instead of being glued to the fragment.
#[test]
fn a_blocking_writer_that_panics_inside_a_line_breaks_only_that_line() {
    let out = Scripted::new([Step::Take(20), Step::Panic]);
    let dropped = logged_to(&out, true, || {
        tracing::info!("one");
        tracing::info!("two");
    });
    assert_eq!(dropped, 1);
    let text = out.out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].len(), 20, "the fragment of the lost line: {text}");
    let value: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(value["message"], "two");
}

/// An output whose writes fail a given number of times first, then take everything.
#[derive(Clone, Default)]
struct FailsFirst {
    out: Captured,
    failures_left: Arc<Mutex<usize>>,
}

impl Write for FailsFirst {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut left = self.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(io::Error::other("the disk is busy"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A flush that fails loses nothing the output took: a `BufWriter` keeps the lines it
/// buffered and writes them on its next flush, so none of them is counted as dropped.
#[test]
fn a_failed_flush_counts_no_line_the_output_took() {
    let out = FailsFirst {
        failures_left: Arc::new(Mutex::new(1)),
        ..FailsFirst::default()
    };
    let (layer, guard) = LogLayer::builder()
        .writer(io::BufWriter::new(out.clone()))
        .build();
    let dropped = layer.dropped_lines();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || {
        tracing::info!("one");
        tracing::info!("two");
    });
    drop(guard);
    assert_eq!(
        *out.failures_left.lock().unwrap(),
        0,
        "the flush failed once"
    );
    let messages: Vec<String> = out
        .out
        .lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["one", "two"]);
    assert_eq!(dropped.get(), 0, "every line was written");
}

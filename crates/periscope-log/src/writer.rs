//! Where lines go: a background thread behind a bounded queue, or a locked writer.

use std::cell::Cell;
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bound of the queue in lines.
pub const DEFAULT_QUEUE_LINES: usize = 65_536;
/// Default bound of the queue in bytes.
pub const DEFAULT_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Default time the guard waits for the queue to drain.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer thread waits for more lines before it sleeps until woken: the most a
/// line waits in the queue while the service logs steadily.
const BATCH_NAP: Duration = Duration::from_millis(5);
/// A batch buffer larger than this is shrunk after a burst.
const KEEP_BATCH_CAPACITY: usize = 1024 * 1024;

/// Takes finished lines (each ending in `\n`).
pub(crate) trait LineSink: Send + Sync {
    fn write_line(&self, line: &[u8]);
}

/// How many lines were lost: the queue was full, the output refused them (a write failed)
/// or panicked, or the guard of the background writer was gone. A failed flush counts nothing: the output took those
/// lines.
///
/// Cheap to clone; read it for a metric (`periscope_log_dropped_lines_total`).
#[derive(Clone, Debug, Default)]
pub struct DroppedLines(Arc<AtomicU64>);

impl DroppedLines {
    /// Lines dropped so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs an output call, a panic in the writer reported as `None`: it must neither unwind into
/// the code that logged nor end the writer thread with lines still queued and uncounted.
fn guarded<T>(write: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(write)).ok()
}

/// How long to wait before trying again an output that said `WouldBlock`.
const WOULD_BLOCK_PAUSE: Duration = Duration::from_millis(1);

/// An output and whether what it was last given stops inside a line.
struct Output {
    out: Box<dyn Write + Send>,
    /// Kept up to date after every write call that took bytes, so it is right even when a
    /// later call panics (a blocking output is used again after a panic).
    mid_line: bool,
}

impl Output {
    fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            mid_line: false,
        }
    }

    /// Writes `bytes` (whole lines), then flushes when asked; when a write fails, the number
    /// of its lines the output did not take whole. An output left non-blocking (by a process
    /// sharing the pipe) is waited for instead of failing. A write that fails inside a line
    /// leaves a fragment: it is ended before the next write, so only that one line is broken,
    /// not the next as well. The lines after it are written still (a full disk freed, one
    /// `EIO`); only when the very next write fails too is the rest given up as lost.
    fn write_lines(&mut self, bytes: &[u8], flush: bool) -> Result<(), u64> {
        let lines = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        let mut rest = bytes;
        let mut lost = 0;
        let mut just_failed = false;
        while !rest.is_empty() {
            if self.mid_line && self.write_retrying(b"\n") != 1 {
                return Err(lost + lines(rest));
            }
            let written = self.write_retrying(rest);
            if written == rest.len() {
                break;
            }
            if written == 0 && just_failed {
                // Failing again at once: the output is down, and the rest is lost.
                return Err(lost + lines(rest));
            }
            just_failed = true;
            // A line that went out whole but for its newline is ended by the next write (it
            // is `mid_line`): it is in the output, so it is not counted as lost.
            let cut = &rest[written..];
            let only_newline_missing = written > 0 && cut[0] == b'\n';
            lost += u64::from(!only_newline_missing);
            let line_end = cut
                .iter()
                .position(|&b| b == b'\n')
                .map_or(cut.len(), |at| at + 1);
            rest = &cut[line_end..];
        }
        if flush {
            self.flush_retrying();
        }
        if lost > 0 { Err(lost) } else { Ok(()) }
    }

    /// Ends a line the output took but for its newline (its write failed there), so that the
    /// output ends with whole lines when nothing more comes; then flushes.
    fn end_and_flush(&mut self) {
        if self.mid_line {
            let _ = self.write_retrying(b"\n");
        }
        self.flush_retrying();
    }

    /// Flushes the output, waiting out `WouldBlock` (an output left non-blocking by a process
    /// sharing the pipe) and `Interrupted`. A failed flush loses no line the output took:
    /// those bytes are the output's to keep and write again (a `BufWriter` keeps them for its
    /// next flush), so none is counted.
    fn flush_retrying(&mut self) {
        loop {
            match self.out.flush() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(WOULD_BLOCK_PAUSE);
                }
                Ok(()) | Err(_) => return,
            }
        }
    }

    /// `write_all`, waiting out `WouldBlock`: how many bytes were written before an error.
    fn write_retrying(&mut self, bytes: &[u8]) -> usize {
        let mut written = 0;
        while written < bytes.len() {
            match self.out.write(&bytes[written..]) {
                Ok(0) => break,
                Ok(n) => {
                    written = (written + n).min(bytes.len());
                    self.mid_line = bytes[written - 1] != b'\n';
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(WOULD_BLOCK_PAUSE);
                }
                Err(_) => break,
            }
        }
        written
    }
}

/// Writes on the caller's thread under a lock: for tests, tools and short-lived programs.
pub(crate) struct Blocking {
    writer: Mutex<Output>,
    dropped: DroppedLines,
}

impl Blocking {
    pub(crate) fn new(writer: Box<dyn Write + Send>, dropped: DroppedLines) -> Self {
        Self {
            writer: Mutex::new(Output::new(writer)),
            dropped,
        }
    }

    pub(crate) fn flush(&self) {
        let _ = self.with_output(|out| guarded(|| out.end_and_flush()));
    }

    /// Runs `f` on the locked output; `None` when this thread holds the lock already. A line
    /// logged while the output writes, on the same thread (by the output itself, or by a
    /// panic hook while it panics; the global default subscriber passes such lines on), would
    /// otherwise wait for that lock forever.
    fn with_output<T>(&self, f: impl FnOnce(&mut Output) -> T) -> Option<T> {
        let this = std::ptr::from_ref(self) as usize;
        let outer = WRITING.with(|writing| writing.replace(this));
        if outer == this {
            return None;
        }
        let result = f(&mut lock(&self.writer));
        WRITING.with(|writing| writing.set(outer));
        Some(result)
    }
}

thread_local! {
    /// The [`Blocking`] output this thread is writing to (its address), 0 when none. No
    /// destructor: still there for lines logged while the thread ends.
    static WRITING: Cell<usize> = const { Cell::new(0) };
}

impl LineSink for Blocking {
    fn write_line(&self, line: &[u8]) {
        match self
            .with_output(|out| guarded(|| out.write_lines(line, false)))
            .flatten()
        {
            Some(Ok(())) => {}
            Some(Err(lost)) => self.dropped.add(lost),
            // The output panicked, or this line was logged from inside it.
            None => self.dropped.add(1),
        }
    }
}

/// Queues lines for a background thread; never blocks the logging thread on output.
pub(crate) struct NonBlocking {
    shared: Arc<Queue>,
}

struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer thread.
    work: Condvar,
    /// Wakes the guard when the writer thread has finished.
    finished: Condvar,
    max_lines: usize,
    max_bytes: usize,
    dropped: DroppedLines,
}

#[derive(Default)]
struct QueueState {
    bytes: Vec<u8>,
    lines: usize,
    /// The lines of the batch the writer thread is writing; 0 once the guard has counted them
    /// as dropped (it gave up waiting for them).
    in_flight: usize,
    writer_waiting: bool,
    closed: bool,
    finished: bool,
    /// Lines ever queued, and lines written or given up: a [`LogFlusher`] waits for the
    /// second to reach what the first was when it was called.
    queued_total: u64,
    done_total: u64,
}

impl LineSink for NonBlocking {
    fn write_line(&self, line: &[u8]) {
        let queue = &self.shared;
        let mut state = lock(&queue.state);
        let full =
            state.lines >= queue.max_lines || state.bytes.len() + line.len() > queue.max_bytes;
        if full || state.closed {
            drop(state);
            queue.dropped.add(1);
            return;
        }
        let bytes_before = state.bytes.len();
        state.bytes.extend_from_slice(line);
        state.lines += 1;
        state.queued_total += 1;
        let wake = state.writer_waiting
            || half_filled(state.lines - 1, state.lines, queue.max_lines)
            || half_filled(bytes_before, state.bytes.len(), queue.max_bytes);
        if wake {
            state.writer_waiting = false;
            queue.work.notify_one();
        }
    }
}

/// Whether a queue that held `before` (lines or bytes) and now holds `after`, of `max`, has
/// just become half full: only a sleeping writer, or a napping one facing such a queue, needs
/// the (system call) wake-up. Bytes count as lines do: long lines fill the bytes first.
fn half_filled(before: usize, after: usize, max: usize) -> bool {
    before < max / 2 && after >= max / 2
}

impl Queue {
    /// Counts the queued lines, and those of the batch being written, as dropped and empties
    /// the queue.
    fn drop_queued(&self, state: &mut QueueState) {
        let lines = std::mem::take(&mut state.lines) + std::mem::take(&mut state.in_flight);
        self.dropped.add(lines as u64);
        state.done_total += lines as u64;
        state.bytes = Vec::new();
    }

    /// Tells the guard the thread is done.
    fn finish(&self, mut state: MutexGuard<'_, QueueState>) {
        state.finished = true;
        self.finished.notify_all();
    }

    fn run(&self, out: Box<dyn Write + Send>) {
        let mut out = Output::new(out);
        let mut batch = Vec::new();
        loop {
            let mut state = lock(&self.state);
            if state.lines == 0 && !state.closed {
                // Under steady logging, nap instead of asking for a wake-up per line (a
                // system call on the logging thread); sleep for good only once idle.
                state = self
                    .work
                    .wait_timeout(state, BATCH_NAP)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            while state.lines == 0 && !state.closed {
                state.writer_waiting = true;
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.lines == 0 {
                drop(state);
                let _ = guarded(|| out.end_and_flush());
                self.finish(lock(&self.state));
                return;
            }
            std::mem::swap(&mut state.bytes, &mut batch);
            let lines = std::mem::take(&mut state.lines);
            state.in_flight = lines;
            drop(state);
            let written = guarded(|| out.write_lines(&batch, true));
            // A guard that gave up waiting has counted the whole batch already.
            let counted = {
                let mut state = lock(&self.state);
                state.done_total += lines as u64;
                std::mem::take(&mut state.in_flight) == 0
            };
            match written {
                Some(Ok(())) => {}
                Some(Err(_)) if counted => {}
                Some(Err(lost)) => self.dropped.add(lost),
                None => {
                    // The writer panicked: it may be in any state, so it is not used again.
                    // Its batch, what is queued and every later line are counted as dropped.
                    if !counted {
                        self.dropped.add(lines as u64);
                    }
                    let mut state = lock(&self.state);
                    state.closed = true;
                    self.drop_queued(&mut state);
                    self.finish(state);
                    return;
                }
            }
            batch.clear();
            batch.shrink_to(KEEP_BATCH_CAPACITY);
        }
    }
}

/// Flushes every queued line when dropped: keep it alive until the program ends.
///
/// Dropping it closes the queue, waits (up to the flush timeout) until the background thread
/// has written every line logged before, and stops that thread. Lines still queued when it
/// gives up (the output stuck past the timeout, or its thread gone), the lines the output was
/// still writing then (the process usually ends next; written late, they stay counted), and
/// lines logged after it is dropped are counted as dropped. With a
/// [`blocking`](crate::LogLayerBuilder::blocking) writer, dropping it only flushes the output:
/// each line is written as it is logged, after the drop too.
#[must_use = "dropping the guard stops the log writer: keep it until the program ends"]
pub struct LogGuard {
    kind: GuardKind,
    timeout: Duration,
}

enum GuardKind {
    Thread(Arc<Queue>, Option<JoinHandle<()>>),
    Blocking(Arc<Blocking>),
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LogGuard {
    /// A handle that waits for the lines logged so far to be written, for code that cannot
    /// reach the guard: a panic hook, before the process may abort.
    pub fn flusher(&self) -> LogFlusher {
        let thread = match &self.kind {
            GuardKind::Thread(queue, handle) => Some((
                Arc::downgrade(queue),
                handle.as_ref().map(|handle| handle.thread().id()),
            )),
            GuardKind::Blocking(_) => None,
        };
        let blocking = match &self.kind {
            GuardKind::Blocking(sink) => Some(Arc::downgrade(sink)),
            GuardKind::Thread(..) => None,
        };
        LogFlusher {
            thread,
            blocking,
            timeout: self.timeout,
        }
    }
}

/// Waits, up to the flush timeout, until the background writer has written the lines logged
/// before the call ([`LogGuard::flusher`]): a panic that aborts the process (a panic while
/// unwinding, `panic = "abort"`) ends it before the writer thread gets to its line otherwise.
/// The guard itself still flushes at the end of the program.
#[derive(Clone, Debug)]
pub struct LogFlusher {
    thread: Option<(std::sync::Weak<Queue>, Option<std::thread::ThreadId>)>,
    /// A blocking writer's output, flushed: its lines are written, maybe not yet out of a
    /// buffer in front of it (`BufWriter`).
    blocking: Option<std::sync::Weak<Blocking>>,
    timeout: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl LogFlusher {
    /// Returns once every line logged before is written or given up, the writer has stopped,
    /// or the flush timeout has passed; at once on the writer thread itself (which would wait
    /// for itself). With a blocking writer, whose lines are written already, it flushes the
    /// output (a `BufWriter` in front of a pipe), waiting out `WouldBlock`.
    pub fn flush(&self) {
        if let Some(sink) = self.blocking.as_ref().and_then(std::sync::Weak::upgrade) {
            sink.flush();
            return;
        }
        let Some((queue, writer)) = &self.thread else {
            return;
        };
        let Some(queue) = queue.upgrade() else { return };
        if *writer == Some(std::thread::current().id()) {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        let mut state = lock(&queue.state);
        let target = state.queued_total;
        state.writer_waiting = false;
        queue.work.notify_one();
        while state.done_total < target && !state.finished {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            drop(state);
            // The writer signals nothing per batch: a short nap is enough for a rare call.
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
            state = lock(&queue.state);
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        match &mut self.kind {
            GuardKind::Blocking(sink) => sink.flush(),
            GuardKind::Thread(queue, handle) => {
                let deadline = Instant::now() + self.timeout;
                let mut state = lock(&queue.state);
                state.closed = true;
                queue.work.notify_one();
                while !state.finished {
                    let now = Instant::now();
                    let thread_gone = handle.as_ref().is_none_or(JoinHandle::is_finished);
                    if now >= deadline || thread_gone {
                        // The output is stuck or its thread died: do not hang, and count what
                        // will now never be written.
                        queue.drop_queued(&mut state);
                        return;
                    }
                    state = queue
                        .finished
                        .wait_timeout(state, (deadline - now).min(Duration::from_millis(100)))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(state);
                if let Some(handle) = handle.take() {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// How the builder sets up the output.
pub(crate) struct WriterConfig {
    pub(crate) non_blocking: bool,
    pub(crate) max_lines: usize,
    pub(crate) max_bytes: usize,
    pub(crate) flush_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            non_blocking: true,
            max_lines: DEFAULT_QUEUE_LINES,
            max_bytes: DEFAULT_QUEUE_BYTES,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Starts the output: a writer thread behind a queue, or a locked writer when asked for (or
/// when no thread can be started).
pub(crate) fn start(
    out: Box<dyn Write + Send>,
    config: &WriterConfig,
    dropped: DroppedLines,
) -> (Arc<dyn LineSink>, LogGuard) {
    let blocking = |out| {
        let sink = Arc::new(Blocking::new(out, dropped.clone()));
        let guard = LogGuard {
            kind: GuardKind::Blocking(sink.clone()),
            timeout: config.flush_timeout,
        };
        (sink as Arc<dyn LineSink>, guard)
    };
    if !config.non_blocking {
        return blocking(out);
    }
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        work: Condvar::new(),
        finished: Condvar::new(),
        max_lines: config.max_lines.max(1),
        max_bytes: config.max_bytes.max(1),
        dropped: dropped.clone(),
    });
    // The thread gets the writer through a slot so a failed spawn can hand it back.
    let slot = Arc::new(Mutex::new(Some(out)));
    let (thread_queue, thread_slot) = (queue.clone(), slot.clone());
    let spawned = std::thread::Builder::new()
        .name("periscope-log-writer".into())
        .spawn(move || {
            if let Some(out) = lock(&thread_slot).take() {
                thread_queue.run(out);
            }
        });
    match spawned {
        Ok(handle) => {
            let guard = LogGuard {
                kind: GuardKind::Thread(queue.clone(), Some(handle)),
                timeout: config.flush_timeout,
            };
            (Arc::new(NonBlocking { shared: queue }), guard)
        }
        Err(_) => match lock(&slot).take() {
            Some(out) => blocking(out),
            None => blocking(Box::new(std::io::sink())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::half_filled;

    /// Long lines fill the bytes bound long before the lines bound: a burst of them must wake
    /// a napping writer when the bytes reach half, or the queue overflows while it naps.
    #[test]
    fn a_queue_half_filled_by_lines_or_bytes_wakes_the_writer() {
        // 64 KiB of 4 KiB lines: the 8th line crosses half, the 7th and the 9th do not.
        let max_bytes = 64 * 1024;
        let line = 4 * 1024;
        let crossing: Vec<usize> = (1..=16)
            .filter(|&n| half_filled((n - 1) * line, n * line, max_bytes))
            .collect();
        assert_eq!(crossing, [8]);
        // Lines as before: the 32 768th of 65 536.
        assert!(half_filled(32_767, 32_768, 65_536));
        assert!(!half_filled(32_768, 32_769, 65_536));
        // A bound of 1 (or 0) never asks for an extra wake-up.
        assert!(!half_filled(0, 1, 1));
        assert!(!half_filled(0, 1, 0));
    }
}

//! A connection's stream whose writes may not stall for longer than a timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The error a stalled write fails with, told apart from other `TimedOut` errors (a service's
/// own, the kernel's) by its type.
#[derive(Debug)]
pub(crate) struct WriteStalled;

impl std::fmt::Display for WriteStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client took nothing of its answer for the write timeout")
    }
}

impl std::error::Error for WriteStalled {}

/// Wraps a connection's stream so that a write making no progress for `timeout` fails with
/// `TimedOut`: a client that stops reading its answers (its receive window full) is cut off
/// instead of holding the connection, and a file descriptor, for good. Any progress restarts
/// the clock, so a slow but steady reader keeps its connection.
///
/// The kernel tells a waiting writer about room in the send buffer in steps; on Linux a step
/// is a third of a buffer that grows to 4 MiB, so a reader slower than 1.3 MiB per timeout
/// would look stalled. [`limit_unsent`] makes the steps 128 KiB.
#[pin_project]
pub(crate) struct WriteStallGuard<S> {
    #[pin]
    inner: S,
    timeout: Duration,
    /// The stall clock: boxed (hyper wants an `Unpin` stream), made on the first write that
    /// has to wait and reset on later ones.
    clock: Option<Pin<Box<Sleep>>>,
    /// Whether a write is waiting (the clock runs).
    waiting: bool,
    /// What an HTTP/2 connection's task is told (see [`counting`](Self::counting)).
    written: Option<Arc<Written>>,
    /// Where the bytes written are in their HTTP/2 frames.
    frames: FrameReader,
}

/// What the guard of an HTTP/2 connection tells its connection task.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// The bytes written.
    pub(crate) bytes: AtomicU64,
    /// Of them, the bytes of answers (HEADERS, CONTINUATION and DATA frames): what shows a
    /// connection's answers moving. The rest a client can make the server write at will (a
    /// PING's acknowledgement for each of its PINGs), so it shows nothing.
    pub(crate) answer_bytes: AtomicU64,
    /// Whether a write stalled for the timeout: h2 keeps only the text of the I/O error a
    /// connection ends with, so hyper's error cannot tell it ([`WriteStalled`] is lost).
    pub(crate) stalled: AtomicBool,
    /// Whether `waiting` holds any (so that a write looks at the lock only then).
    anyone_waiting: AtomicBool,
    /// Who waits for which count of bytes to be written (see
    /// [`poll_written`](Self::poll_written)).
    waiting: std::sync::Mutex<Vec<(u64, std::task::Waker)>>,
}

impl Written {
    /// Ready once `bytes` have been written; until then `cx` is woken by the write that
    /// reaches them.
    #[cfg(feature = "http2")]
    pub(crate) fn poll_written(&self, bytes: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.bytes.load(Ordering::SeqCst) >= bytes {
            return Poll::Ready(());
        }
        {
            let mut waiting = self.lock_waiting();
            match waiting
                .iter_mut()
                .find(|(_, waker)| waker.will_wake(cx.waker()))
            {
                Some(slot) => slot.0 = bytes,
                None => waiting.push((bytes, cx.waker().clone())),
            }
            self.anyone_waiting.store(true, Ordering::SeqCst);
        }
        // Again: a write between the first look and the registration woke no one.
        if self.bytes.load(Ordering::SeqCst) >= bytes {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn wrote(&self, bytes: u64, answer_bytes: u64) {
        self.answer_bytes.fetch_add(answer_bytes, Ordering::SeqCst);
        let total = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if self.anyone_waiting.load(Ordering::SeqCst) {
            let mut reached = Vec::new();
            {
                let mut waiting = self.lock_waiting();
                waiting.retain(|(until, waker)| {
                    let done = *until <= total;
                    if done {
                        reached.push(waker.clone());
                    }
                    !done
                });
                self.anyone_waiting
                    .store(!waiting.is_empty(), Ordering::SeqCst);
            }
            // Woken outside the lock: a woken body may wait again at once.
            reached.into_iter().for_each(std::task::Waker::wake);
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<(u64, std::task::Waker)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S> WriteStallGuard<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            clock: None,
            waiting: false,
            written: None,
            frames: FrameReader::default(),
        }
    }

    /// Counts the bytes written into `written`: an HTTP/2 connection's answers may wait on the
    /// client's flow-control window with nothing to write, which the stall clock cannot see,
    /// and the count tells such a wait from a slow but steady reader.
    #[cfg(feature = "http2")]
    pub(crate) fn counting(mut self, written: Arc<Written>) -> Self {
        self.written = Some(written);
        self
    }

    /// Counts the bytes just written, the first of `bufs`.
    fn count<'b>(
        self: Pin<&mut Self>,
        result: &Poll<io::Result<usize>>,
        bufs: impl IntoIterator<Item = &'b [u8]>,
    ) {
        let this = self.project();
        let (Some(written), Poll::Ready(Ok(bytes))) = (this.written.as_ref(), result) else {
            return;
        };
        let mut left = *bytes;
        let mut answer_bytes = 0;
        for buf in bufs {
            let part = &buf[..left.min(buf.len())];
            answer_bytes += this.frames.answer_bytes(part);
            left -= part.len();
        }
        written.wrote(*bytes as u64, answer_bytes);
    }
}

/// Follows the HTTP/2 frames a server writes (each a 9-byte header giving its length and
/// type, then its payload) to tell the bytes of answers from the rest.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 9],
    /// How much of the next frame's header came.
    have: usize,
    /// How much of the current frame's payload is still to come.
    left: usize,
    /// Whether the current frame is part of an answer.
    answer: bool,
}

impl FrameReader {
    /// The bytes of answers among `bytes`, the next ones written.
    fn answer_bytes(&mut self, mut bytes: &[u8]) -> u64 {
        /// DATA, HEADERS and CONTINUATION (RFC 9113, section 6).
        const ANSWER_FRAMES: [u8; 3] = [0x0, 0x1, 0x9];
        let mut answer = 0;
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                if self.answer {
                    answer += n as u64;
                }
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header.len() {
                self.have = 0;
                let [a, b, c, kind, ..] = self.header;
                self.left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                self.answer = ANSWER_FRAMES.contains(&kind);
                if self.answer {
                    answer += self.header.len() as u64;
                }
            }
        }
        answer
    }
}

impl<S: AsyncWrite> WriteStallGuard<S> {
    /// Runs one write operation of the inner stream under the stall clock.
    fn guarded<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        operation: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        if let Poll::Ready(result) = operation(this.inner, cx) {
            *this.waiting = false;
            return Poll::Ready(result);
        }
        if !std::mem::replace(this.waiting, true) {
            // A timeout too long for the clock (`Duration::MAX`) never fires.
            if let Some(deadline) = tokio::time::Instant::now().checked_add(*this.timeout) {
                match this.clock {
                    Some(clock) => clock.as_mut().reset(deadline),
                    None => *this.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        }
        match this.clock.as_mut().map(|clock| clock.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                if let Some(written) = this.written {
                    written.stalled.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteStalled)))
            }
            Some(Poll::Pending) | None => Poll::Pending,
        }
    }
}

impl<S: AsyncRead> AsyncRead for WriteStallGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteStallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self
            .as_mut()
            .guarded(cx, |inner, cx| inner.poll_write(cx, buf));
        self.as_mut().count(&result, [buf]);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self
            .as_mut()
            .guarded(cx, |inner, cx| inner.poll_write_vectored(cx, bufs));
        self.as_mut().count(&result, bufs.iter().map(|buf| &**buf));
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// The most bytes a connection keeps queued in the kernel unsent: a waiting writer is woken
/// each time the client has taken about this much, so the write timeout sees a slow reader's
/// progress (and a slow reader holds less memory in the kernel).
const UNSENT_LIMIT: u32 = 128 * 1024;

/// Sets `TCP_NOTSENT_LOWAT` on `stream` (Linux): see [`WriteStallGuard`]. Elsewhere, and when
/// the option is refused, the kernel's own steps apply.
pub(crate) fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, UNSENT_LIMIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections keep at most 128 KiB unsent, so a slow reader's progress shows.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn connections_keep_little_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        limit_unsent(&stream);
        let lowat = socket2::SockRef::from(&stream).tcp_notsent_lowat().unwrap();
        assert_eq!(lowat, UNSENT_LIMIT);
    }

    /// The bytes of HEADERS, CONTINUATION and DATA frames are answers', headers included,
    /// however the frames are cut into writes; SETTINGS, PING, WINDOW_UPDATE and GOAWAY
    /// frames are not.
    #[test]
    fn the_frame_reader_counts_the_bytes_of_answers_alone() {
        let frame = |kind: u8, len: usize| {
            let mut frame = vec![0, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 1];
            frame.resize(9 + len, 0xaa);
            frame
        };
        let stream: Vec<u8> = [
            frame(0x4, 6),    // SETTINGS
            frame(0x6, 8),    // PING ack
            frame(0x1, 40),   // HEADERS
            frame(0x9, 10),   // CONTINUATION
            frame(0x8, 4),    // WINDOW_UPDATE
            frame(0x0, 1000), // DATA
            frame(0x0, 0),    // DATA, END_STREAM alone
            frame(0x7, 8),    // GOAWAY
        ]
        .concat();
        let answers = (9 + 40) + (9 + 10) + (9 + 1000) + 9;
        for cut in [1, 2, 7, 9, 10, 64, stream.len()] {
            let mut reader = FrameReader::default();
            let counted: u64 = stream
                .chunks(cut)
                .map(|part| reader.answer_bytes(part))
                .sum();
            assert_eq!(counted, answers, "written {cut} bytes at a time");
        }
    }

    /// `Duration::MAX` turns the clock off rather than overflowing it.
    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_never_fires() {
        let (client, mut server) = tokio::io::duplex(8);
        let mut guarded = std::pin::pin!(WriteStallGuard::new(client, Duration::MAX));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // Fill the pipe, then a write has to wait: no panic, no error.
        assert!(matches!(
            guarded.as_mut().poll_write(&mut cx, &[0; 8]),
            Poll::Ready(Ok(8))
        ));
        assert!(guarded.as_mut().poll_write(&mut cx, &[0; 8]).is_pending());
        let mut buf = [0; 8];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
            .await
            .unwrap();
    }
}

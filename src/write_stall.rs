//! A connection's stream whose writes may not stall for longer than a timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a connection's stream so that a write making no progress for `timeout` fails with
/// `TimedOut`: a client that stops reading its answers (its receive window full) is cut off
/// instead of holding the connection, and a file descriptor, for good. Any progress restarts
/// the clock, so a slow but steady reader keeps its connection.
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
}

impl<S> WriteStallGuard<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            clock: None,
            waiting: false,
        }
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
            let deadline = tokio::time::Instant::now() + *this.timeout;
            match this.clock {
                Some(clock) => clock.as_mut().reset(deadline),
                None => *this.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match this.clock.as_mut().map(|clock| clock.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
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

//! The pace an upload must keep: a body that stalls, or trickles, gives back its share of the
//! upload buffer instead of holding it until the request timeout.
//!
//! A `/predict` reserves its declared length of the buffer before reading a byte; without a
//! pace, a few clients that announce 10 MiB and send nothing more hold the whole buffer, and
//! every honest upload waits behind them.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

/// The slowest average pace any upload may keep once its first `idle` window has passed.
pub const MIN_UPLOAD_BYTES_PER_S: u64 = 16 * 1024;

/// The pace an upload of `declared` bytes must keep: enough to arrive within `window` (the
/// request timeout less the first idle window), at least [`MIN_UPLOAD_BYTES_PER_S`]. A body
/// that would miss the request timeout anyway is cut as soon as it falls behind, rather than
/// holding its share of the buffer until then; one that keeps it is never cut earlier than
/// the timeout would cut it.
pub fn min_pace(declared: Option<u64>, window: Option<Duration>) -> u64 {
    let needed = match (declared, window) {
        (Some(declared), Some(window)) if !window.is_zero() => {
            (declared as f64 / window.as_secs_f64()) as u64
        }
        _ => 0,
    };
    needed.max(MIN_UPLOAD_BYTES_PER_S)
}

/// The upload stopped (no bytes for `idle`) or fell behind its pace.
#[derive(Debug)]
pub struct UploadStalled {
    pub received: u64,
    pub after: Duration,
}

impl fmt::Display for UploadStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the upload stalled: {} bytes in {:.1} s",
            self.received,
            self.after.as_secs_f64()
        )
    }
}

impl Error for UploadStalled {}

/// A request body that fails with [`UploadStalled`] when no bytes come for `idle`, or when,
/// after the first `idle`, fewer have come than `pace` bytes a second allows.
#[pin_project]
pub struct Paced<B> {
    #[pin]
    inner: B,
    idle: Duration,
    pace: u64,
    started: Instant,
    last_frame: Instant,
    received: u64,
    #[pin]
    deadline: Sleep,
}

impl<B> Paced<B> {
    pub fn new(inner: B, idle: Duration, pace: u64) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            pace: pace.max(1),
            started: now,
            last_frame: now,
            received: 0,
            deadline: tokio::time::sleep_until(now + idle),
        }
    }
}

impl<B> Paced<B> {
    /// When the body is late: the idle window after the last frame, or the moment the bytes
    /// received so far stop covering the minimum pace.
    fn due(
        idle: Duration,
        pace: u64,
        started: Instant,
        last_frame: Instant,
        received: u64,
    ) -> Instant {
        let covered = Duration::from_secs_f64(received as f64 / pace as f64);
        (last_frame + idle).min(started + idle + covered)
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                }
                *this.last_frame = Instant::now();
                let due = Self::due(
                    *this.idle,
                    *this.pace,
                    *this.started,
                    *this.last_frame,
                    *this.received,
                );
                this.deadline.reset(due);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
            Poll::Pending => match this.deadline.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(UploadStalled {
                    received: *this.received,
                    after: this.started.elapsed(),
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The stall behind a body error, if that is what it was.
pub fn stalled<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a UploadStalled> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(stalled) = error.downcast_ref::<UploadStalled>() {
            return Some(stalled);
        }
        cause = error.source();
    }
    None
}

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

/// The time an upload has to arrive in, once its first `idle` window has passed: what is left
/// of the request timeout after `waited` (for its share of the buffer), less that window.
/// `None` without a request timeout.
pub fn upload_window(
    request_timeout: Option<Duration>,
    waited: Duration,
    idle: Duration,
) -> Option<Duration> {
    request_timeout.map(|timeout| timeout.saturating_sub(waited).saturating_sub(idle))
}

/// The pace an upload of `declared` bytes must keep: enough to arrive within `window` (see
/// [`upload_window`]), at least [`MIN_UPLOAD_BYTES_PER_S`]. A body that would miss the request
/// timeout anyway is cut as soon as it falls behind, rather than holding its share of the
/// buffer until then; one that keeps it is never cut earlier than the timeout would cut it.
/// No time left at all: no pace makes it, so the body is cut after its first idle window.
pub fn min_pace(declared: Option<u64>, window: Option<Duration>) -> u64 {
    let needed = match (declared, window) {
        (Some(0), _) | (_, None) | (None, _) => 0,
        (Some(_), Some(window)) if window.is_zero() => u64::MAX,
        (Some(declared), Some(window)) => (declared as f64 / window.as_secs_f64()) as u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The time spent waiting for a share of the buffer is time the request timeout already
    /// counted: the pace is set on what is left, so an upload that cannot arrive in time is
    /// cut once it falls behind, not held until the timeout.
    #[test]
    fn the_pace_is_set_on_the_time_left_after_waiting_for_the_buffer() {
        const MIB: u64 = 1 << 20;
        let (timeout, idle) = (Some(Duration::from_secs(30)), Duration::from_secs(5));
        let fresh = upload_window(timeout, Duration::ZERO, idle);
        let waited = upload_window(timeout, Duration::from_secs(20), idle);
        assert_eq!(fresh, Some(Duration::from_secs(25)));
        assert_eq!(waited, Some(Duration::from_secs(5)));
        assert_eq!(min_pace(Some(10 * MIB), fresh), 10 * MIB / 25);
        assert_eq!(min_pace(Some(10 * MIB), waited), 2 * MIB);
        // Out of time: no pace makes it.
        let late = upload_window(timeout, Duration::from_secs(29), idle);
        assert_eq!(min_pace(Some(10 * MIB), late), u64::MAX);
        // Without a timeout or a length, the floor.
        assert_eq!(upload_window(None, Duration::from_secs(29), idle), None);
        assert_eq!(min_pace(Some(10 * MIB), None), MIN_UPLOAD_BYTES_PER_S);
        assert_eq!(min_pace(None, late), MIN_UPLOAD_BYTES_PER_S);
        assert_eq!(min_pace(Some(0), late), MIN_UPLOAD_BYTES_PER_S);
    }

    /// At the pace no body can keep, one is due at the end of its first idle window.
    #[test]
    fn a_body_out_of_time_is_due_after_its_first_idle_window() {
        let started = Instant::now();
        let idle = Duration::from_secs(5);
        let due = Paced::<()>::due(idle, u64::MAX, started, started, 1 << 20);
        assert_eq!(due, started + idle);
    }
}

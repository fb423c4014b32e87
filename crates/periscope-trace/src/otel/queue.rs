//! Spans lost to a full export queue, counted. The SDK's batch processor drops a span whose
//! queue is full without a word (its one warning, once per lifetime, is an internal log this
//! build leaves off) and keeps the count to itself until shutdown. So the queue is guarded here,
//! in front of the processor: a span enters only while the queue has room, and one that finds it
//! full is dropped and counted here; the exporter's reporting says how many.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// The batch processor's queue as seen from outside: the spans handed to it that no export has
/// taken yet, and those dropped because it was full.
#[derive(Debug)]
pub(super) struct SpanQueue {
    /// The processor's `max_queue_size`: it must be given the same.
    capacity: usize,
    /// From a span's end until an export takes it. At least what the processor's queue holds
    /// (a span is counted before it is handed over, and uncounted after the processor took it
    /// out), so the processor itself never finds its queue full.
    queued: AtomicUsize,
    /// Dropped since the reporting last took the count.
    dropped: AtomicU64,
}

impl SpanQueue {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes a place in the queue, if one is free. (Relaxed: the processor's channel orders a
    /// span's count before its uncount.)
    fn enter(&self) -> bool {
        self.queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued < self.capacity).then_some(queued + 1)
            })
            .is_ok()
    }

    /// `spans` left the queue for an export.
    pub(super) fn taken(&self, spans: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(spans))
            });
    }

    /// Whether spans were dropped since the count was last taken.
    pub(super) fn has_dropped(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) > 0
    }

    /// The spans dropped since the last call, the count starting again from zero.
    pub(super) fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// In front of the batch processor: hands it a span only while its queue has room, and counts
/// the others as dropped (which the processor would have done, silently).
#[derive(Debug)]
pub(super) struct QueueGuard<P> {
    inner: P,
    queue: Arc<SpanQueue>,
    /// Once shut down, the processor's queue is gone and nothing uncounts a span: spans pass
    /// through, for the processor to refuse, rather than be counted as a full queue's.
    shut_down: AtomicBool,
}

impl<P> QueueGuard<P> {
    pub(super) fn new(inner: P, queue: Arc<SpanQueue>) -> Self {
        Self {
            inner,
            queue,
            shut_down: AtomicBool::new(false),
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for QueueGuard<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.shut_down.load(Ordering::Relaxed) || self.queue.enter() {
            self.inner.on_end(span);
        } else {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shut_down.store(true, Ordering::Relaxed);
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_enters_only_while_the_queue_has_room() {
        let queue = SpanQueue::new(2);
        assert!(queue.enter());
        assert!(queue.enter());
        assert!(!queue.enter(), "full");
        queue.taken(1);
        assert!(queue.enter(), "room again once an export took one");
        queue.taken(5);
        assert!(queue.enter(), "more taken than counted never wraps around");
    }

    #[test]
    fn a_queue_of_zero_never_has_room() {
        assert!(!SpanQueue::new(0).enter());
    }
}

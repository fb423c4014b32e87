//! The request context and the "current context" of the running task.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rand::rngs::ThreadRng;

use crate::baggage::Baggage;
use crate::ids::{SpanId, TraceFlags, TraceId};
use crate::request_id::RequestId;
use crate::tenant::Tenant;
use crate::traceparent::TraceParent;
use crate::tracestate::TraceState;

/// Everything that identifies one request (or job) across services: its request id, its place
/// in the trace, the vendor trace state, baggage, and tenant fields.
///
/// The server layer stores one in the request's `http::Extensions` and makes it the
/// [current](RequestContext::current) context while the handler runs; the client layer and
/// [`Carrier`](crate::Carrier) send it on.
///
/// ```
/// use periscope_context::RequestContext;
///
/// let ctx = RequestContext::new_root();
/// let header = ctx.traceparent();
/// assert_eq!(header.trace_id, ctx.trace_id);
/// assert_eq!(header.parent_id, ctx.span_id);
///
/// // A downstream call or a job continues the trace under a new span.
/// let child = ctx.child();
/// assert_eq!(child.trace_id, ctx.trace_id);
/// assert_eq!(child.parent_span_id, Some(ctx.span_id));
/// assert_eq!(child.request_id, ctx.request_id);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestContext {
    /// The request (correlation) id, kept from the caller or generated.
    pub request_id: RequestId,
    /// The trace this request belongs to.
    pub trace_id: TraceId,
    /// This service's span for the request: the id in log lines and the parent of calls it makes.
    pub span_id: SpanId,
    /// The caller's span, when the trace was continued rather than started here.
    pub parent_span_id: Option<SpanId>,
    /// Sampled and random flags.
    pub trace_flags: TraceFlags,
    /// Vendor trace state, propagated unchanged.
    pub trace_state: TraceState,
    /// W3C baggage, propagated unchanged.
    pub baggage: Baggage,
    /// Tenant fields (`org_id`, `project_id`, ...).
    pub tenant: Tenant,
}

impl RequestContext {
    /// A new request: a generated request id and a new sampled trace.
    pub fn new_root() -> Self {
        Self::start(RequestId::generate(), true)
    }

    /// A new trace for `request_id`, sampled or not.
    // Inlined into `extract`, so the context is written where it is returned, not copied.
    #[inline]
    pub fn start(request_id: RequestId, sampled: bool) -> Self {
        Self::start_with(request_id, sampled, &mut rand::rng())
    }

    /// [`RequestContext::start`] with the ids drawn from a handle the caller holds: `extract`
    /// takes the thread's generator once for the request id, the trace id and the span id.
    #[inline]
    pub(crate) fn start_with(request_id: RequestId, sampled: bool, rng: &mut ThreadRng) -> Self {
        let root = TraceParent::new_root_with(sampled, rng);
        Self {
            request_id,
            trace_id: root.trace_id,
            span_id: root.parent_id,
            parent_span_id: None,
            trace_flags: root.flags,
            trace_state: TraceState::new(),
            baggage: Baggage::new(),
            tenant: Tenant::new(),
        }
    }

    /// Continues the caller's trace under a new span of this service.
    // Inlined into `extract`, so the context is written where it is returned, not copied.
    #[inline]
    pub fn continue_from(
        request_id: RequestId,
        parent: &TraceParent,
        trace_state: TraceState,
    ) -> Self {
        Self::continue_from_with(request_id, parent, trace_state, &mut rand::rng())
    }

    /// [`RequestContext::continue_from`] with the span id drawn from a handle the caller holds.
    #[inline]
    pub(crate) fn continue_from_with(
        request_id: RequestId,
        parent: &TraceParent,
        trace_state: TraceState,
        rng: &mut ThreadRng,
    ) -> Self {
        Self {
            request_id,
            trace_id: parent.trace_id,
            span_id: SpanId::random_with(rng),
            parent_span_id: Some(parent.parent_id),
            trace_flags: parent.flags.propagated(),
            trace_state,
            baggage: Baggage::new(),
            tenant: Tenant::new(),
        }
    }

    /// The same request under a new span whose parent is this one: for an outgoing call, a
    /// job, or any unit of work that should appear as its own span.
    pub fn child(&self) -> Self {
        Self {
            span_id: SpanId::random(),
            parent_span_id: Some(self.span_id),
            ..self.clone()
        }
    }

    /// The `traceparent` that names this span as the parent: what a callee receives.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent::new(self.trace_id, self.span_id, self.trace_flags.propagated())
    }

    /// Whether the trace is sampled.
    pub fn is_sampled(&self) -> bool {
        self.trace_flags.is_sampled()
    }

    /// The context of the request or job running on this task, if any.
    ///
    /// Set by the server layer around every handler, and by [`RequestContext::scope`] and
    /// [`RequestContext::in_scope`]. A task spawned from a handler does not inherit it: wrap
    /// the spawned future with `scope`.
    ///
    /// ```
    /// use periscope_context::RequestContext;
    ///
    /// fn deep_inside_a_handler() -> Option<String> {
    ///     RequestContext::current().map(|ctx| ctx.request_id.to_string())
    /// }
    ///
    /// let ctx = RequestContext::new_root();
    /// let id = ctx.request_id.to_string();
    /// assert_eq!(ctx.in_scope(deep_inside_a_handler), Some(id));
    /// assert_eq!(deep_inside_a_handler(), None);
    /// ```
    pub fn current() -> Option<Arc<RequestContext>> {
        // `try_with`: a thread winding down may log from a destructor after its slot is gone,
        // and a panic there aborts the process.
        CURRENT.try_with(clone_current).ok().flatten()
    }

    /// Whether a context is current on this thread, asked without cloning it (a clone and its
    /// drop are two atomic operations): for a layer that only needs to know.
    ///
    /// ```
    /// use periscope_context::RequestContext;
    ///
    /// assert!(!RequestContext::has_current());
    /// assert!(RequestContext::new_root().in_scope(RequestContext::has_current));
    /// ```
    pub fn has_current() -> bool {
        CURRENT
            .try_with(|current| {
                let ctx = current.take();
                let some = ctx.is_some();
                current.set(ctx);
                some
            })
            .unwrap_or(false)
    }

    /// Whether the current context's trace is sampled (`None` outside any request), read
    /// without cloning the context: cheap enough for a filter asked about every event.
    ///
    /// ```
    /// use periscope_context::{RequestContext, TraceFlags};
    ///
    /// let mut ctx = RequestContext::new_root();
    /// ctx.trace_flags = TraceFlags::SAMPLED;
    /// assert_eq!(ctx.in_scope(RequestContext::current_is_sampled), Some(true));
    /// ctx.trace_flags = TraceFlags::default();
    /// assert_eq!(ctx.in_scope(RequestContext::current_is_sampled), Some(false));
    /// assert_eq!(RequestContext::current_is_sampled(), None);
    /// ```
    pub fn current_is_sampled() -> Option<bool> {
        CURRENT
            .try_with(|current| {
                let ctx = current.take();
                let sampled = ctx.as_ref().map(|ctx| ctx.trace_flags.is_sampled());
                current.set(ctx);
                sampled
            })
            .ok()
            .flatten()
    }

    /// Runs `f` with this context as the current one.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = enter(Arc::new(self.clone()));
        f()
    }

    /// Makes this context current while `future` runs, on whatever thread polls it.
    pub fn scope<F: Future>(self, future: F) -> WithContext<F> {
        WithContext::new(Arc::new(self), future)
    }
}

thread_local! {
    /// A `Cell` rather than a `RefCell`: entered and left several times a request, where a
    /// `RefCell`'s borrow flag is checked and set each time.
    static CURRENT: Cell<Option<Arc<RequestContext>>> = const { Cell::new(None) };
}

/// The context in `current`, which keeps it.
fn clone_current(current: &Cell<Option<Arc<RequestContext>>>) -> Option<Arc<RequestContext>> {
    let ctx = current.take();
    current.set(ctx.clone());
    ctx
}

/// Restores the previous current context when dropped, even while unwinding.
struct ScopeGuard {
    previous: Option<Arc<RequestContext>>,
}

/// Once the thread has dropped its slot, nothing is entered and `current()` stays `None`.
/// Inlined, as the guard's drop is, into the generic futures that enter on every poll.
#[inline]
fn enter(ctx: Arc<RequestContext>) -> ScopeGuard {
    let previous = CURRENT
        .try_with(|current| current.replace(Some(ctx)))
        .ok()
        .flatten();
    ScopeGuard { previous }
}

impl Drop for ScopeGuard {
    #[inline]
    fn drop(&mut self) {
        let previous = self.previous.take();
        // The context left is dropped once the slot holds the previous one again.
        let _ = CURRENT.try_with(|current| current.replace(previous));
    }
}

/// A [`WithContext`]'s context moved into the thread's slot while it is entered, and moved
/// back when the guard drops (even while unwinding): no reference count is touched, where a
/// clone put in the slot costs two atomic operations each time a request's future or body is
/// polled.
struct MovedIn<'a> {
    /// The wrapper's slot: `None` while its context is in the thread's.
    home: &'a mut Option<Arc<RequestContext>>,
    previous: Option<Arc<RequestContext>>,
}

/// Once the thread has dropped its slot, the context stays home and `current()` stays `None`.
#[inline]
fn enter_moved(home: &mut Option<Arc<RequestContext>>) -> MovedIn<'_> {
    let previous = CURRENT
        .try_with(|current| current.replace(home.take()))
        .ok()
        .flatten();
    MovedIn { home, previous }
}

impl Drop for MovedIn<'_> {
    #[inline]
    fn drop(&mut self) {
        let previous = self.previous.take();
        // Scopes entered inside have each put back what they found, so the slot holds this
        // wrapper's context again.
        let _ = CURRENT.try_with(|current| *self.home = current.replace(previous));
    }
}

/// A future that runs with a [`RequestContext`] as the current one.
/// Created by [`RequestContext::scope`] or [`WithContext::new`].
///
/// The context is current while the future is polled, and while it is dropped: a future that
/// completes is dropped at once, inside the poll that completed it; one dropped before (a
/// client that went away, an aborted task) is dropped with the context made current again, so
/// what its destructors log carries the request's ids too.
#[pin_project::pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct WithContext<F> {
    /// `None` only while entered (moved into the thread's slot, see [`MovedIn`]): never seen
    /// from outside, where the wrapper is borrowed by whatever entered it.
    context: Option<Arc<RequestContext>>,
    /// `None` once finished: the future completed, or [`finish`](Self::finish) was called.
    #[pin]
    inner: Option<F>,
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for WithContext<F> {
    fn drop(self: Pin<&mut Self>) {
        self.finish();
    }
}

impl<F> WithContext<F> {
    /// Wraps `future` so `context` is current while it is polled.
    pub fn new(context: Arc<RequestContext>, future: F) -> Self {
        Self {
            context: Some(context),
            inner: Some(future),
        }
    }

    /// Makes the future with `make` while `context` is current, then wraps it like
    /// [`new`](Self::new): for a Tower service's `call`, so the inner services see the context
    /// in their own `call` as they do while their futures are polled (and a layer below finds
    /// it current instead of scoping a copy of its own).
    // Inlined: called out of line, it is handed the closure, and the request in it, by copy.
    #[inline]
    pub fn new_in_scope(context: Arc<RequestContext>, make: impl FnOnce() -> F) -> Self {
        let mut context = Some(context);
        let future = {
            let _guard = enter_moved(&mut context);
            make()
        };
        Self {
            context,
            inner: Some(future),
        }
    }

    /// The context this future runs with.
    ///
    /// # Panics
    ///
    /// Once the context was handed over by [`take_context`](Self::take_context).
    pub fn context(&self) -> &Arc<RequestContext> {
        match &self.context {
            Some(context) => context,
            None => panic!("the context of a `WithContext` was taken"),
        }
    }

    /// Hands over the context of a finished wrapper (its future completed, or
    /// [`finish`](Self::finish) was called): for a layer that passes it on with the response,
    /// as periscope-trace's server layer does to the response body, without the clone and drop
    /// of a reference count (two atomic operations). `None` while the wrapped value is not
    /// finished, whose drop needs the context, and once taken; after that
    /// [`context`](Self::context) panics.
    ///
    /// ```
    /// use std::future::Future;
    /// use std::pin::pin;
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Waker};
    /// use periscope_context::{RequestContext, WithContext};
    ///
    /// let ctx = Arc::new(RequestContext::new_root());
    /// let mut wrapped = pin!(WithContext::new(ctx.clone(), async { 42 }));
    /// assert!(wrapped.as_mut().take_context().is_none());
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert_eq!(wrapped.as_mut().poll(&mut cx), Poll::Ready(42));
    /// let taken = wrapped.as_mut().take_context().unwrap();
    /// assert!(Arc::ptr_eq(&taken, &ctx));
    /// assert!(wrapped.take_context().is_none());
    /// ```
    pub fn take_context(self: Pin<&mut Self>) -> Option<Arc<RequestContext>> {
        let this = self.project();
        if this.inner.is_some() {
            return None;
        }
        this.context.take()
    }

    /// The wrapped value; `None` once finished (a future that completed).
    pub fn get_ref(&self) -> Option<&F> {
        self.inner.as_ref()
    }

    /// Runs `f` on the wrapped value while the context is current: for a wrapped value that is
    /// not a future, such as a response body whose frames are made as they are sent (a stream
    /// of server-sent events, a gRPC server stream), so the lines they log carry the request's
    /// ids. `f` is given `None` once the value is finished.
    ///
    /// ```
    /// use std::pin::pin;
    /// use std::sync::Arc;
    /// use periscope_context::{RequestContext, WithContext};
    ///
    /// let ctx = Arc::new(RequestContext::new_root());
    /// let mut wrapped = pin!(WithContext::new(ctx.clone(), "a body"));
    /// let seen = wrapped.as_mut().in_scope(|_body| RequestContext::current());
    /// assert_eq!(seen.unwrap().request_id, ctx.request_id);
    /// assert!(RequestContext::current().is_none());
    /// ```
    pub fn in_scope<R>(self: Pin<&mut Self>, f: impl FnOnce(Option<Pin<&mut F>>) -> R) -> R {
        let this = self.project();
        let _guard = enter_moved(this.context);
        f(this.inner.as_pin_mut())
    }

    /// Drops the wrapped value now, with the context current (a body that has ended): the
    /// wrapper's own drop then has nothing left to do.
    pub fn finish(self: Pin<&mut Self>) {
        let mut this = self.project();
        if this.inner.is_some() {
            // Restored after the drop, even when the drop panics.
            let _guard = enter_moved(this.context);
            this.inner.set(None);
        }
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _guard = enter_moved(this.context);
        let Some(future) = this.inner.as_mut().as_pin_mut() else {
            panic!("`WithContext` polled after completion");
        };
        let output = std::task::ready!(future.poll(cx));
        // Dropped here, where its context is current, rather than later without it.
        this.inner.set(None);
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::task::Waker;

    /// Asks for the current context from its destructor, as a log line written while a thread
    /// winds down does.
    struct AsksOnDrop(std::sync::mpsc::Sender<Option<bool>>, RequestContext);

    impl Drop for AsksOnDrop {
        fn drop(&mut self) {
            let seen = self.1.in_scope(|| RequestContext::current().is_some());
            let _ = self.0.send(RequestContext::current().map(|_| seen));
        }
    }

    thread_local! {
        static ASKS_ON_DROP: RefCell<Option<AsksOnDrop>> = const { RefCell::new(None) };
    }

    #[test]
    fn the_current_context_is_none_once_the_thread_has_dropped_it() {
        let (sender, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Registered before the current context's slot, so dropped after it.
            let asks = AsksOnDrop(sender, RequestContext::new_root());
            ASKS_ON_DROP.with(|slot| *slot.borrow_mut() = Some(asks));
            RequestContext::new_root().in_scope(|| ());
        })
        .join()
        .expect("the thread exits cleanly");
        assert_eq!(answers.recv(), Ok(None));
    }

    #[test]
    fn scope_sets_and_restores_current() {
        assert!(RequestContext::current().is_none());
        let outer = RequestContext::new_root();
        let inner = outer.child();
        outer.in_scope(|| {
            assert_eq!(RequestContext::current().unwrap().span_id, outer.span_id);
            inner.in_scope(|| {
                assert_eq!(RequestContext::current().unwrap().span_id, inner.span_id);
            });
            assert_eq!(RequestContext::current().unwrap().span_id, outer.span_id);
        });
        assert!(RequestContext::current().is_none());
    }

    #[test]
    fn a_future_made_in_scope_sees_its_context_when_made_and_polled() {
        let ctx = Arc::new(RequestContext::new_root());
        let expected = ctx.request_id.clone();
        let mut scoped = std::pin::pin!(WithContext::new_in_scope(ctx, || {
            let made_with = RequestContext::current().map(|c| c.request_id.clone());
            std::future::poll_fn(move |_| {
                let polled_with = RequestContext::current().map(|c| c.request_id.clone());
                Poll::Ready((made_with.clone(), polled_with))
            })
        }));
        assert!(RequestContext::current().is_none());
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready((made, polled)) = scoped.as_mut().poll(&mut cx) else {
            panic!("ready at once")
        };
        assert_eq!(
            (made.as_ref(), polled.as_ref()),
            (Some(&expected), Some(&expected))
        );
        assert!(RequestContext::current().is_none());
    }

    #[test]
    fn scope_is_restored_after_a_panic() {
        let ctx = RequestContext::new_root();
        let result = std::panic::catch_unwind(|| ctx.in_scope(|| panic!("boom")));
        assert!(result.is_err());
        assert!(RequestContext::current().is_none());
    }

    #[test]
    fn future_sees_its_context_on_every_poll() {
        let ctx = RequestContext::new_root();
        let expected = ctx.request_id.clone();
        let mut polls = 0;
        let future = std::future::poll_fn(|_| {
            polls += 1;
            assert_eq!(RequestContext::current().unwrap().request_id, expected);
            if polls < 3 {
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        let mut scoped = std::pin::pin!(ctx.scope(future));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(scoped.as_mut().poll(&mut cx).is_pending());
        assert!(
            RequestContext::current().is_none(),
            "not current between polls"
        );
        assert!(scoped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(scoped.as_mut().poll(&mut cx), Poll::Ready(3));
    }

    /// Notes the request current when it is dropped.
    struct NotesOnDrop(Arc<std::sync::Mutex<Vec<Option<RequestId>>>>);

    impl Drop for NotesOnDrop {
        fn drop(&mut self) {
            let current = RequestContext::current().map(|ctx| ctx.request_id.clone());
            self.0.lock().unwrap().push(current);
        }
    }

    #[test]
    fn a_cancelled_future_is_dropped_with_its_context_current() {
        let noted = Arc::default();
        let ctx = RequestContext::new_root();
        let outer = RequestContext::new_root();
        let guard = NotesOnDrop(Arc::clone(&noted));
        let mut scoped = Box::pin(ctx.clone().scope(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(scoped.as_mut().poll(&mut cx).is_pending());
        // Dropped inside another request's scope (a `select!` in its handler, say): that
        // request is current again afterwards.
        outer.in_scope(|| {
            drop(scoped);
            assert_eq!(
                RequestContext::current().map(|c| c.request_id.clone()),
                Some(outer.request_id.clone())
            );
        });
        assert!(RequestContext::current().is_none());
        assert_eq!(*noted.lock().unwrap(), [Some(ctx.request_id.clone())]);

        // Never polled: dropped in its context all the same.
        let guard = NotesOnDrop(Arc::clone(&noted));
        drop(WithContext::new(Arc::new(ctx.clone()), guard));
        assert!(RequestContext::current().is_none());
        assert_eq!(noted.lock().unwrap()[1], Some(ctx.request_id));
    }

    /// Panics when dropped.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a destructor panicked");
        }
    }

    #[test]
    fn a_panic_while_dropping_or_polling_restores_the_outer_context() {
        let outer = RequestContext::new_root();
        let inner = Arc::new(RequestContext::new_root());
        let scoped = WithContext::new(inner.clone(), PanicsOnDrop);
        outer.in_scope(|| {
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(scoped)));
            assert!(dropped.is_err());
            assert_eq!(RequestContext::current().unwrap().span_id, outer.span_id);
        });
        assert!(RequestContext::current().is_none());

        // Nested scopes, the innermost poll panicking and caught between the two: the outer
        // request is current again, and none once the outer poll returns.
        let panicking = WithContext::new(
            inner,
            std::future::poll_fn(|_| -> Poll<()> { panic!("a poll panicked") }),
        );
        let outer_span = outer.span_id;
        let mut panicking = Box::pin(panicking);
        let mut scoped = std::pin::pin!(outer.scope(std::future::poll_fn(move |cx| {
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                panicking.as_mut().poll(cx)
            }));
            assert!(polled.is_err());
            Poll::Ready(RequestContext::current().map(|ctx| ctx.span_id))
        })));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(scoped.as_mut().poll(&mut cx), Poll::Ready(Some(outer_span)));
        assert!(RequestContext::current().is_none());
    }

    /// Entering moves the wrapper's context into the thread's slot and back: polling, scoping a
    /// body's work and dropping never clone it (two atomic operations each), and the wrapper
    /// has its context again afterwards, also after a poll that panicked.
    #[test]
    fn a_wrapper_enters_its_context_without_cloning_it() {
        let ctx = Arc::new(RequestContext::new_root());
        let held = Arc::clone(&ctx);
        // While polled: this test's handle and the one in the thread's slot, no third.
        let probe = std::future::poll_fn(move |_| {
            Poll::Ready(RequestContext::current_is_sampled().map(|_| Arc::strong_count(&held)))
        });
        let mut scoped = std::pin::pin!(WithContext::new(Arc::clone(&ctx), probe));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(scoped.as_mut().poll(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(scoped.context().span_id, ctx.span_id);
        assert!(RequestContext::current().is_none());

        // This test's handle, `scoped`'s and the one in the thread's slot.
        let made = WithContext::new_in_scope(Arc::clone(&ctx), || Arc::strong_count(&ctx));
        assert_eq!(made.get_ref(), Some(&3));
        let mut made = std::pin::pin!(made);
        let in_scope = made.as_mut().in_scope(|_| Arc::strong_count(&ctx));
        assert_eq!(in_scope, 3);
        assert_eq!(made.context().span_id, ctx.span_id);

        let mut panicking = Box::pin(WithContext::new(
            Arc::clone(&ctx),
            std::future::poll_fn(|_| -> Poll<()> { panic!("a poll panicked") }),
        ));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            panicking.as_mut().poll(&mut cx)
        }));
        assert!(polled.is_err());
        assert_eq!(panicking.context().span_id, ctx.span_id);
        assert!(RequestContext::current().is_none());
    }

    /// A finished wrapper hands its context over as it is (no clone), and dropping the wrapper
    /// afterwards leaves it alone; an unfinished one keeps it for its value's drop.
    #[test]
    fn a_finished_wrapper_hands_its_context_over() {
        let ctx = Arc::new(RequestContext::new_root());
        let mut cx = Context::from_waker(Waker::noop());
        let mut pending = Box::pin(WithContext::new(
            Arc::clone(&ctx),
            std::future::pending::<()>(),
        ));
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        assert!(pending.as_mut().take_context().is_none());
        assert_eq!(pending.context().span_id, ctx.span_id);

        let mut done = Box::pin(WithContext::new(Arc::clone(&ctx), async {}));
        assert!(done.as_mut().poll(&mut cx).is_ready());
        let taken = done.as_mut().take_context().expect("finished");
        assert!(Arc::ptr_eq(&taken, &ctx));
        // This test's handle, `pending`'s and the one taken: none left in `done`.
        assert_eq!(Arc::strong_count(&ctx), 3);
        assert!(done.as_mut().take_context().is_none());
        let context =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done.context().span_id));
        assert!(context.is_err());
        drop(done);
        drop(pending);
        assert_eq!(Arc::strong_count(&ctx), 2);
        assert!(RequestContext::current().is_none());
    }

    #[test]
    fn continued_context_keeps_the_trace_and_clears_reserved_flags() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        let ctx = RequestContext::continue_from(RequestId::generate(), &parent, TraceState::new());
        assert_eq!(ctx.trace_id, parent.trace_id);
        assert_eq!(ctx.parent_span_id, Some(parent.parent_id));
        assert_ne!(ctx.span_id, parent.parent_id);
        assert_eq!(ctx.trace_flags.to_u8(), 0x03);
    }
}

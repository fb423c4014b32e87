//! With feature `otel`: a line that no request, job or context gave a trace id, logged inside
//! a span that OpenTelemetry exports (work at startup, a background loop), carries the ids of
//! that span, so the line and the exported span can be found from each other.
//!
//! The ids are those of OpenTelemetry's current context, which tracing-opentelemetry makes the
//! innermost exported span's while it is entered. Read from that thread-local, a line costs no
//! span entry anything and takes no lock: reading them from the span's own OpenTelemetry data
//! could deadlock, as tracing-opentelemetry holds that data's lock while it starts the span,
//! and a sampler or span processor that logs then would wait for it.

use opentelemetry::trace::TraceContextExt;

/// The trace id and span id (lower-case hex) of the span of this thread's current
/// OpenTelemetry context, if it is a local span (a remote parent attached by hand is not this
/// service's span).
pub(crate) fn current_span_ids() -> Option<(String, String)> {
    match CONTEXT_STATE.get() {
        ContextState::Alive => span_ids(),
        // The thread is ending: OpenTelemetry's context may be destroyed already, and reading
        // it then panics, which in a thread-local destructor (a pool logging that it closed)
        // aborts the process. Such a line goes without these ids.
        ContextState::Ending => None,
        ContextState::Untouched => watch(),
    }
}

/// Called on every line, every new span and every span entered: on a thread's first, reads
/// OpenTelemetry's context and then sets up the guard that tells when the thread ends.
/// Thread-locals are destroyed in the reverse order of their first use, so the guard goes (and
/// says so) before the context does, when a span (tracing-opentelemetry's use of the context)
/// or a line first used it, and before any thread-local first used before (whose destructor
/// may log). A context first used by hand, before any span or line, is not covered.
#[inline]
pub(crate) fn watch_thread() {
    if CONTEXT_STATE.get() == ContextState::Untouched {
        watch();
    }
}

#[cold]
fn watch() -> Option<(String, String)> {
    let ids = span_ids();
    let _ = CONTEXT_GUARD.try_with(|_| CONTEXT_STATE.set(ContextState::Alive));
    ids
}

fn span_ids() -> Option<(String, String)> {
    opentelemetry::Context::map_current(|context| {
        let span = context.span();
        let span_context = span.span_context();
        (span_context.is_valid() && !span_context.is_remote()).then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    })
}

/// Whether this thread's OpenTelemetry context can be read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContextState {
    /// Not read yet on this thread.
    Untouched,
    /// Read, and [`CONTEXT_GUARD`] not destroyed: the context is not either.
    Alive,
    /// The guard was destroyed: the thread is ending.
    Ending,
}

/// Marks the thread ending when destroyed, before OpenTelemetry's context is.
struct ContextGuard;

impl Drop for ContextGuard {
    fn drop(&mut self) {
        CONTEXT_STATE.set(ContextState::Ending);
    }
}

thread_local! {
    // No destructor: readable while the thread's other thread-locals are destroyed.
    static CONTEXT_STATE: std::cell::Cell<ContextState> =
        const { std::cell::Cell::new(ContextState::Untouched) };
    static CONTEXT_GUARD: ContextGuard = const { ContextGuard };
}

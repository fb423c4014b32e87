//! Whether an incoming trace is continued or only linked (public endpoints).

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;

/// Whether the server layer continues the caller's trace.
///
/// Behind a public endpoint the caller's `traceparent` is not to be trusted: anyone can pick
/// the trace id (and so attach their requests to someone else's trace) or force sampling on.
/// At a trust boundary the layer starts a new trace with its own sampling decision and keeps
/// the caller's trace only as a span link (and the `link.trace_id` / `link.span_id` span
/// fields); the caller's `tracestate`, `baggage` and tenant headers are ignored. The request
/// id is still kept when valid: it is what the caller quotes to support.
///
/// ```
/// use periscope_trace::{CorrelationLayer, Trust};
///
/// // A public API: never continue a caller's trace.
/// let public = CorrelationLayer::new().trust(Trust::Boundary);
///
/// // Continue only calls that carry the internal gateway's marker header.
/// let mixed = CorrelationLayer::new()
///     .trust(Trust::when(|headers| headers.contains_key("x-internal-caller")));
/// # let _ = (public, mixed);
/// ```
#[derive(Clone, Default)]
pub enum Trust {
    /// Continue the caller's trace and propagate its trace state, baggage and tenant (default).
    #[default]
    Incoming,
    /// Start a new trace for every request and link the caller's.
    Boundary,
    /// Continue the caller's trace when the predicate holds for the request headers; otherwise
    /// behave as [`Trust::Boundary`].
    When(Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>),
}

impl Trust {
    /// [`Trust::When`] from a closure.
    pub fn when(predicate: impl Fn(&HeaderMap) -> bool + Send + Sync + 'static) -> Self {
        Self::When(Arc::new(predicate))
    }

    /// Whether a request with these headers continues the caller's trace.
    // Inlined into `Correlation::call`, compiled in the service's crate (every request).
    #[inline]
    pub fn continues(&self, headers: &HeaderMap) -> bool {
        match self {
            Self::Incoming => true,
            Self::Boundary => false,
            Self::When(predicate) => predicate(headers),
        }
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incoming => f.write_str("Trust::Incoming"),
            Self::Boundary => f.write_str("Trust::Boundary"),
            Self::When(_) => f.write_str("Trust::When(..)"),
        }
    }
}

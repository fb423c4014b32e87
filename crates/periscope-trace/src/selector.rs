//! Which requests are traced: probe and scrape paths are quiet by default.

use std::borrow::Cow;
use std::sync::Arc;

/// The paths that are not traced by default (periscope-context's list, shared with the access
/// log).
pub use periscope_context::DEFAULT_QUIET_PATHS;

/// Chooses the requests that get no span (probe and scrape paths).
///
/// A quiet request still gets its request id kept or generated, echoed on the response, and a
/// [`RequestContext`](periscope_context::RequestContext) in its extensions: only the span (and
/// so the exported trace) is skipped.
///
/// ```
/// use periscope_trace::PathSelector;
///
/// let probes = PathSelector::default();
/// assert!(probes.is_quiet("/health"));
/// assert!(!probes.is_quiet("/v1/jobs"));
///
/// let custom = PathSelector::none().with_path("/livez").with_prefix("/internal/");
/// assert!(custom.is_quiet("/livez"));
/// assert!(custom.is_quiet("/internal/debug"));
/// assert!(!custom.is_quiet("/health"));
/// ```
#[derive(Clone, Debug)]
pub struct PathSelector {
    exact: Arc<[Cow<'static, str>]>,
    prefixes: Arc<[Cow<'static, str>]>,
}

impl Default for PathSelector {
    /// [`DEFAULT_QUIET_PATHS`].
    fn default() -> Self {
        Self::paths(DEFAULT_QUIET_PATHS)
    }
}

impl PathSelector {
    /// Traces every request.
    pub fn none() -> Self {
        Self {
            exact: Arc::new([]),
            prefixes: Arc::new([]),
        }
    }

    /// Quiet exactly these paths.
    pub fn paths<I, P>(paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Cow<'static, str>>,
    {
        Self {
            exact: paths.into_iter().map(Into::into).collect(),
            prefixes: Arc::new([]),
        }
    }

    /// Also quiets `path` (exact match).
    pub fn with_path(self, path: impl Into<Cow<'static, str>>) -> Self {
        Self {
            exact: self.exact.iter().cloned().chain([path.into()]).collect(),
            prefixes: self.prefixes,
        }
    }

    /// Also quiets every path that starts with `prefix`.
    pub fn with_prefix(self, prefix: impl Into<Cow<'static, str>>) -> Self {
        Self {
            exact: self.exact,
            prefixes: self
                .prefixes
                .iter()
                .cloned()
                .chain([prefix.into()])
                .collect(),
        }
    }

    /// Whether a request for `path` is left untraced.
    pub fn is_quiet(&self, path: &str) -> bool {
        self.exact.iter().any(|quiet| quiet == path)
            || self
                .prefixes
                .iter()
                .any(|prefix| path.starts_with(&**prefix))
    }
}

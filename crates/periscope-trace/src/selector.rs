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
    /// Bit `n` is set when an exact path is `n` bytes long (bit 63: 63 or more): nearly every
    /// request is not a probe, and its path's length alone rules it out, without comparing
    /// it with each path in turn.
    exact_lengths: u64,
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
        Self::new(Arc::new([]), Arc::new([]))
    }

    fn new(exact: Arc<[Cow<'static, str>]>, prefixes: Arc<[Cow<'static, str>]>) -> Self {
        let exact_lengths = exact
            .iter()
            .fold(0, |lengths, path| lengths | length_bit(path));
        Self {
            exact,
            prefixes,
            exact_lengths,
        }
    }

    /// Quiet exactly these paths.
    pub fn paths<I, P>(paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Cow<'static, str>>,
    {
        Self::new(paths.into_iter().map(Into::into).collect(), Arc::new([]))
    }

    /// Also quiets `path` (exact match).
    pub fn with_path(self, path: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            self.exact.iter().cloned().chain([path.into()]).collect(),
            self.prefixes,
        )
    }

    /// Also quiets every path that starts with `prefix`.
    pub fn with_prefix(self, prefix: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            self.exact,
            self.prefixes
                .iter()
                .cloned()
                .chain([prefix.into()])
                .collect(),
        )
    }

    /// Whether a request for `path` is left untraced.
    #[inline]
    pub fn is_quiet(&self, path: &str) -> bool {
        // Inlined for the answer of nearly every request: no exact path of its length, and
        // no prefixes to compare.
        if self.exact_lengths & length_bit(path) == 0 && self.prefixes.is_empty() {
            return false;
        }
        self.compare(path)
    }

    fn compare(&self, path: &str) -> bool {
        self.exact.iter().any(|quiet| quiet == path)
            || self
                .prefixes
                .iter()
                .any(|prefix| path.starts_with(&**prefix))
    }
}

/// The bit of [`PathSelector`]'s `exact_lengths` for a path of this length.
#[inline]
fn length_bit(path: &str) -> u64 {
    1 << path.len().min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length mask only skips comparisons: every path is quiet exactly when it equals an
    /// exact path or starts with a prefix, long paths (past the mask's last bit) included.
    #[test]
    fn the_length_mask_answers_as_the_comparisons_do() {
        let long = |n: usize| format!("/{}", "a".repeat(n - 1));
        let exact = [
            String::new(),
            "/".to_owned(),
            "/health".to_owned(),
            long(62),
            long(63),
            long(64),
            long(200),
        ];
        let mut selector = PathSelector::none().with_prefix("/internal/");
        for path in &exact {
            selector = selector.with_path(path.clone());
        }
        let mut paths: Vec<String> = (1..=210).map(long).collect();
        paths.extend(
            [
                "",
                "/",
                "/healtH",
                "/health",
                "/healthz",
                "/internal/x",
                "/internal",
            ]
            .map(str::to_owned),
        );
        paths.extend((60..70).map(|n| format!("{}b", &long(n)[..n - 1])));
        for path in &paths {
            let expected = exact.contains(path) || path.starts_with("/internal/");
            assert_eq!(selector.is_quiet(path), expected, "{path:?}");
        }
        let probes = PathSelector::default();
        for path in DEFAULT_QUIET_PATHS {
            assert!(probes.is_quiet(path), "{path}");
            assert!(!probes.is_quiet(&format!("{path}/")), "{path}");
        }
        assert!(!PathSelector::none().is_quiet(""));
    }
}

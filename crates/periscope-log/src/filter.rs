//! Filter directives (`info,my_crate::db=debug`) and the runtime level control.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::level_filters::LevelFilter;
use tracing_core::Metadata;

/// The `tracing` target of the lines that record a change of the log filter
/// (`POST /debug/log-level`, a temporary change reverting). Reserved: its events at `warn` or
/// more severe pass every [`Directives`], `off` and `periscope::log_level=off` included, so
/// the change that silences the log is still in it.
pub const LEVEL_CHANGE_TARGET: &str = "periscope::log_level";

/// The level of the level change lines; [`Directives::max_level_hint`] never goes below it.
const LEVEL_CHANGE_LEVEL: LevelFilter = LevelFilter::WARN;

/// Parsed filter directives: a default level and levels per target prefix.
///
/// The syntax is the common subset of `RUST_LOG`: comma-separated `LEVEL`, `target=LEVEL` or
/// a bare `target` (all levels). Levels are `off`, `error`, `warn`, `info`, `debug`, `trace`.
/// The longest matching target prefix wins; targets no directive names use the default level
/// (off when there is none). Span and field filters (`target[span{field}]`) are not supported.
/// Events with the reserved target [`LEVEL_CHANGE_TARGET`] at `warn` or more severe always
/// pass.
///
/// ```
/// use periscope_log::Directives;
///
/// let d: Directives = "info, my_crate::db=debug".parse().unwrap();
/// assert_eq!(d.to_string(), "info,my_crate::db=debug");
/// assert!("info,my_crate=loud".parse::<Directives>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    default: Option<LevelFilter>,
    /// Longest target first, so the first match is the most specific.
    targets: Vec<(String, LevelFilter)>,
    /// In the order given, for display.
    written: Vec<(String, LevelFilter)>,
}

/// A directive string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    /// A level name that is not one of off, error, warn, info, debug, trace.
    #[error(
        "{0:?} is not a log level: use off, error, warn, info, debug or trace (for example \"info,my_crate=debug\")"
    )]
    UnknownLevel(String),
    /// A target with characters a module path cannot have.
    #[error(
        "{0:?} is not a valid target: use a module path such as my_crate::db (letters, digits, _ : - .)"
    )]
    InvalidTarget(String),
    /// Span or field filters, which this filter does not support.
    #[error(
        "{0:?} uses span or field filters, which are not supported: use target=level directives"
    )]
    Unsupported(String),
}

/// A level by name, or by the number `tracing`'s own filters read (`0` off to `5` trace): a
/// `RUST_LOG=4` kept from `EnvFilter` means debug, not a target named `4`.
pub(crate) fn parse_level(text: &str) -> Result<LevelFilter, DirectiveError> {
    match text.to_ascii_lowercase().as_str() {
        "off" | "0" => Ok(LevelFilter::OFF),
        "error" | "1" => Ok(LevelFilter::ERROR),
        "warn" | "warning" | "2" => Ok(LevelFilter::WARN),
        "info" | "3" => Ok(LevelFilter::INFO),
        "debug" | "4" => Ok(LevelFilter::DEBUG),
        "trace" | "5" => Ok(LevelFilter::TRACE),
        _ => Err(DirectiveError::UnknownLevel(text.to_owned())),
    }
}

/// Whether `word` is a level name cut short (`inf`, `deb`) or one letter away from one, left
/// out, doubled or swapped (`debg`, `infoo`, `wran`): a typo rather than a target. Changed
/// letters are not counted, as crates are named so (`want`).
fn near_level(word: &str) -> bool {
    let word = word.to_ascii_lowercase().into_bytes();
    let without = |text: &[u8], at: usize| [&text[..at], &text[at + 1..]].concat();
    word.len() >= 3
        && ["off", "error", "warn", "warning", "info", "debug", "trace"]
            .iter()
            .map(|level| level.as_bytes())
            .any(|level| {
                level.starts_with(&word)
                    || (word.len() + 1 == level.len()
                        && (0..level.len()).any(|at| without(level, at) == word))
                    || (word.len() == level.len() + 1
                        && (0..word.len()).any(|at| without(&word, at) == level))
                    || (word.len() == level.len()
                        && (1..word.len()).any(|at| {
                            let mut swapped = word.clone();
                            swapped.swap(at - 1, at);
                            swapped == level
                        }))
            })
}

fn level_name(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::OFF => "off",
        LevelFilter::ERROR => "error",
        LevelFilter::WARN => "warn",
        LevelFilter::INFO => "info",
        LevelFilter::DEBUG => "debug",
        _ => "trace",
    }
}

fn valid_target(target: &str) -> bool {
    !target.is_empty()
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.'))
}

impl Directives {
    /// Everything at `level` and above.
    pub fn level(level: LevelFilter) -> Self {
        Self {
            default: Some(level),
            targets: Vec::new(),
            written: Vec::new(),
        }
    }

    /// Parses `info,my_crate::db=debug`.
    pub fn parse(text: &str) -> Result<Self, DirectiveError> {
        let mut default = None;
        let mut written: Vec<(String, LevelFilter)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains(['[', ']', '{', '}']) {
                return Err(DirectiveError::Unsupported(part.to_owned()));
            }
            let (target, level) = match part.split_once('=') {
                Some((target, level)) => (target.trim(), parse_level(level.trim())?),
                None => match parse_level(part) {
                    Ok(level) => {
                        default = Some(level);
                        continue;
                    }
                    Err(_) => (part, LevelFilter::TRACE),
                },
            };
            if !valid_target(target) {
                return Err(DirectiveError::InvalidTarget(target.to_owned()));
            }
            written.retain(|(t, _)| t != target);
            written.push((target.to_owned(), level));
        }
        let mut targets = written.clone();
        targets.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        Ok(Self {
            default,
            targets,
            written,
        })
    }

    /// Parses a level setting as `LOG_LEVEL` and `POST /debug/log-level` read it: a single
    /// word must be a level (`debug`), since a typo such as `debg` taken as a bare target would
    /// silence every other line; a list or `target=level` is read as [`parse`](Self::parse)
    /// reads it.
    ///
    /// ```
    /// use periscope_log::Directives;
    ///
    /// assert_eq!(Directives::parse_log_level("DEBUG").unwrap().to_string(), "debug");
    /// assert!(Directives::parse_log_level("debg").is_err());
    /// // Without a level, a word a typo away from one is not taken as a target.
    /// assert!(Directives::parse_log_level("inf,hyper=warn").is_err());
    /// assert!(Directives::parse_log_level("my_crate,hyper=warn").is_ok());
    /// assert!(Directives::parse_log_level("info,my_crate").is_ok());
    /// ```
    pub fn parse_log_level(text: &str) -> Result<Self, DirectiveError> {
        if !text.contains([',', '=']) {
            return parse_level(text.trim()).map(Self::level);
        }
        let directives = Self::parse(text)?;
        if directives.default.is_none() {
            // Without a level every other line is off, so a bare word there must be meant as
            // a target: a list without a `target=level` (`debg,`, a stray `,,`), or a word a
            // typo away from a level (`inf,hyper=warn`), turns the service's lines off.
            let mut bare = text
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty() && !part.contains('='));
            let typo = if text.contains('=') {
                bare.find(|part| near_level(part))
            } else {
                Some(bare.next().unwrap_or_default())
            };
            if let Some(typo) = typo {
                return Err(DirectiveError::UnknownLevel(typo.to_owned()));
            }
        }
        Ok(directives)
    }

    /// The level that applies to `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(prefix, _)| target.starts_with(prefix.as_str()))
            .map(|(_, level)| *level)
            .or(self.default)
            .unwrap_or(LevelFilter::OFF)
    }

    /// Whether an event or span with this metadata passes. Spans that carry request context
    /// (a `request_id`, `trace_id` or `job_id` field) always pass: they cost little, and
    /// without them the lines that do pass would lose their ids (and OpenTelemetry its spans).
    /// Events of [`LEVEL_CHANGE_TARGET`] at `warn` or more severe always pass: a filter change
    /// cannot hide itself.
    pub fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level_for(metadata.target())
            || carries_context(metadata)
            || records_level_change(metadata)
    }

    /// The most verbose level any directive allows.
    pub fn max_level(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, level)| *level)
            .chain(self.default)
            .max()
            .unwrap_or(LevelFilter::OFF)
    }

    /// The hint for `tracing`'s global level: [`max_level`](Self::max_level), but never below
    /// `info`, so context spans (created at `info`) and the level change lines (`warn`, see
    /// [`LEVEL_CHANGE_TARGET`]) still reach [`enabled`](Self::enabled).
    pub fn max_level_hint(&self) -> LevelFilter {
        // `tracing` skips the callsites above the hint without asking the filter.
        self.max_level()
            .max(LevelFilter::INFO)
            .max(LEVEL_CHANGE_LEVEL)
    }
}

/// The events that record a change of the filter.
fn records_level_change(metadata: &Metadata<'_>) -> bool {
    metadata.is_event()
        && metadata.target() == LEVEL_CHANGE_TARGET
        && *metadata.level() <= LEVEL_CHANGE_LEVEL
}

/// Spans whose callsite declares a request context field.
fn carries_context(metadata: &Metadata<'_>) -> bool {
    metadata.is_span()
        && ["request_id", "trace_id", "job_id"]
            .iter()
            .any(|name| metadata.fields().field(name).is_some())
}

impl Default for Directives {
    /// `info`.
    fn default() -> Self {
        Self::level(LevelFilter::INFO)
    }
}

impl FromStr for Directives {
    type Err = DirectiveError;

    fn from_str(text: &str) -> Result<Self, DirectiveError> {
        Self::parse(text)
    }
}

impl fmt::Display for Directives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(level) = self.default {
            f.write_str(level_name(level))?;
            sep = ",";
        }
        for (target, level) in &self.written {
            write!(f, "{sep}{target}={}", level_name(*level))?;
            sep = ",";
        }
        if sep.is_empty() {
            f.write_str(level_name(LevelFilter::OFF))?;
        }
        Ok(())
    }
}

/// Changes the log filter of a running service, optionally for a limited time.
///
/// Cheap to clone; every clone controls the same filter. A change takes effect on the next
/// event. A temporary change ([`set_for`](Self::set_for)) reverts to the permanent directives
/// when its time is up, even if nothing else happens, and the revert is logged at `warn` with
/// target [`LEVEL_CHANGE_TARGET`] (which no directive filters out), with the directives it
/// ended (`from`) and those in force again (`to`).
///
/// ```
/// use std::time::Duration;
/// use periscope_log::{Directives, LevelControl};
///
/// let control = LevelControl::new(Directives::default());
/// control.set_for("debug,hyper=info".parse().unwrap(), Duration::from_secs(300));
/// let status = control.status();
/// assert_eq!(status.current, "debug,hyper=info");
/// assert_eq!(status.permanent, "info");
/// assert!(status.reverts_in.is_some());
/// control.reset();
/// assert_eq!(control.current().to_string(), "info");
/// ```
#[derive(Clone, Debug)]
pub struct LevelControl {
    shared: Arc<Controls>,
}

/// The controls' hold on their shared state: the revert thread holds the state alone, and is
/// told to stop when the last control goes (a layer rebuilt, a test's), rather than sleeping
/// out a change of a day and then logging its revert into whatever subscriber is current.
#[derive(Debug)]
struct Controls(Arc<Shared>);

impl std::ops::Deref for Controls {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for Controls {
    fn drop(&mut self) {
        lock(&self.0.state).abandoned = true;
        self.0.changed.notify_all();
    }
}

#[derive(Debug)]
struct Shared {
    /// What the filter reads: the temporary directives while they last, else the permanent.
    current: RwLock<Arc<Directives>>,
    state: Mutex<State>,
    /// Wakes the revert thread when a temporary change is made or replaced.
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    permanent: Directives,
    temporary: Option<(Directives, Instant)>,
    reverter_running: bool,
    /// Every control is gone: no change can be read or made any more.
    abandoned: bool,
}

/// What one change did, read under the lock that orders changes: concurrent changes (two
/// operators, a temporary change reverting) cannot mix into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelChange {
    /// The directives in force just before the change.
    pub from: String,
    /// Where the control stands just after it: `status.current` is the directives it put in
    /// force.
    pub status: LevelStatus,
}

/// Where the level control stands, for an admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LevelStatus {
    /// The directives in force now.
    pub current: String,
    /// The directives that apply when no temporary change is active.
    pub permanent: String,
    /// How long until the temporary change reverts, when one is active.
    #[serde(serialize_with = "serialize_secs")]
    pub reverts_in: Option<Duration>,
}

fn serialize_secs<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&d.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LevelControl {
    /// A control whose permanent directives are `directives`.
    pub fn new(directives: Directives) -> Self {
        Self {
            shared: Arc::new(Controls(Arc::new(Shared {
                current: RwLock::new(Arc::new(directives.clone())),
                state: Mutex::new(State {
                    permanent: directives,
                    temporary: None,
                    reverter_running: false,
                    abandoned: false,
                }),
                changed: Condvar::new(),
            }))),
        }
    }

    /// The directives in force now.
    pub fn current(&self) -> Arc<Directives> {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` with the directives in force, without cloning them.
    pub(crate) fn with_current<R>(&self, f: impl FnOnce(&Directives) -> R) -> R {
        f(&self
            .shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The current, permanent and temporary state.
    pub fn status(&self) -> LevelStatus {
        self.status_of(&lock(&self.shared.state))
    }

    /// The status, with the state lock held: the directives in force are only replaced under
    /// it.
    fn status_of(&self, state: &State) -> LevelStatus {
        LevelStatus {
            current: self.current().to_string(),
            permanent: state.permanent.to_string(),
            reverts_in: state
                .temporary
                .as_ref()
                .map(|(_, deadline)| deadline.saturating_duration_since(Instant::now())),
        }
    }

    /// Replaces the permanent directives and ends any temporary change.
    pub fn set(&self, directives: Directives) -> LevelChange {
        let mut state = lock(&self.shared.state);
        let from = self.current().to_string();
        state.permanent = directives;
        state.temporary = None;
        self.shared.apply(&state);
        self.shared.changed.notify_all();
        LevelChange {
            from,
            status: self.status_of(&state),
        }
    }

    /// Applies `directives` for `ttl`, then reverts to the permanent directives.
    pub fn set_for(&self, directives: Directives, ttl: Duration) -> LevelChange {
        let mut state = lock(&self.shared.state);
        let from = self.current().to_string();
        let deadline = Instant::now()
            .checked_add(ttl)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        state.temporary = Some((directives, deadline));
        self.shared.apply(&state);
        if state.reverter_running {
            self.shared.changed.notify_all();
        } else {
            Shared::start_reverter(&self.shared.0, &mut state);
        }
        LevelChange {
            from,
            status: self.status_of(&state),
        }
    }

    /// Ends a temporary change now.
    pub fn reset(&self) -> LevelChange {
        let mut state = lock(&self.shared.state);
        let from = self.current().to_string();
        state.temporary = None;
        self.shared.apply(&state);
        self.shared.changed.notify_all();
        LevelChange {
            from,
            status: self.status_of(&state),
        }
    }
}

/// As a per-layer filter: `other_layer.with_filter(control.clone())` follows the same
/// directives.
impl<S> tracing_subscriber::layer::Filter<S> for LevelControl {
    fn enabled(
        &self,
        metadata: &Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.with_current(|d| d.enabled(metadata))
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> tracing_core::Interest {
        if self.with_current(|d| d.enabled(metadata)) {
            tracing_core::Interest::always()
        } else {
            tracing_core::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.with_current(Directives::max_level_hint))
    }
}

impl Shared {
    /// Publishes the directives in force and makes `tracing` ask every callsite again.
    fn apply(&self, state: &State) {
        let directives = state
            .temporary
            .as_ref()
            .map(|(d, _)| d)
            .unwrap_or(&state.permanent)
            .clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(directives);
        tracing_core::callsite::rebuild_interest_cache();
    }

    /// Starts the thread that reverts the pending temporary change, with the state locked.
    /// Without a thread the change cannot revert by itself: the permanent directives are kept.
    fn start_reverter(shared: &Arc<Shared>, state: &mut State) {
        let reverter = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("periscope-log-level".into())
            .spawn(move || reverter.revert_when_due());
        state.reverter_running = spawned.is_ok();
        if spawned.is_err() {
            state.temporary = None;
            shared.apply(state);
        }
    }

    /// Runs on its own thread while a temporary change is pending.
    fn revert_when_due(self: Arc<Self>) {
        // Declared before the state's guard, so it runs after the lock is released.
        let _exit = ReverterExit(self.clone());
        let mut state = lock(&self.state);
        loop {
            let Some((_, deadline)) = state.temporary.as_ref().filter(|_| !state.abandoned) else {
                state.reverter_running = false;
                return;
            };
            let deadline = *deadline;
            let now = Instant::now();
            if now >= deadline {
                let ended = state.temporary.take().map(|(directives, _)| directives);
                self.apply(&state);
                let restored = state.permanent.to_string();
                // Logged without the lock: the line goes through layers that may read the
                // control (`status`), and a slow output must not hold up a new change.
                drop(state);
                if let Some(ended) = ended {
                    // A layer of the application's that panics on this line must not end the
                    // thread: changes made meanwhile still have to revert.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        tracing::warn!(
                            target: LEVEL_CHANGE_TARGET,
                            from = %ended,
                            to = %restored,
                            "temporary log filter change reverted"
                        );
                    }));
                }
                state = lock(&self.state);
            } else {
                state = self
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

/// When the reverter's thread unwinds all the same (a layer of the application's that panics
/// while callsites are asked again): a change made meanwhile gets a new reverter, and a later
/// one starts its own, instead of counting on a thread that is gone.
struct ReverterExit(Arc<Shared>);

impl Drop for ReverterExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = lock(&self.0.state);
            state.reverter_running = false;
            if state.temporary.is_some() {
                Shared::start_reverter(&self.0, &mut state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary change's thread holds the control's state until it reverts (a day, at
    /// most a year): it ends when the last control goes instead, and logs no revert of a
    /// change no one can see any more.
    #[test]
    fn the_revert_thread_ends_with_the_last_control() {
        let control = LevelControl::new(Directives::default());
        control.set_for(
            Directives::parse("debug").unwrap(),
            Duration::from_secs(3600),
        );
        let state = Arc::downgrade(&control.shared.0);
        let other = control.clone();
        drop(control);
        std::thread::sleep(Duration::from_millis(20));
        assert!(state.upgrade().is_some(), "a control is left");
        assert!(lock(&other.shared.state).reverter_running);
        drop(other);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the revert thread still holds the state"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn most_specific_target_wins() {
        let d = Directives::parse("warn,my_crate=info,my_crate::db=trace,noisy=off").unwrap();
        assert_eq!(d.level_for("other"), LevelFilter::WARN);
        assert_eq!(d.level_for("my_crate::api"), LevelFilter::INFO);
        assert_eq!(d.level_for("my_crate::db::pool"), LevelFilter::TRACE);
        assert_eq!(d.level_for("noisy"), LevelFilter::OFF);
        assert_eq!(d.max_level(), LevelFilter::TRACE);
        assert_eq!(
            d.to_string(),
            "warn,my_crate=info,my_crate::db=trace,noisy=off"
        );
    }

    #[test]
    fn bare_target_means_all_levels_and_no_default_means_off() {
        let d = Directives::parse("my_crate").unwrap();
        assert_eq!(d.level_for("my_crate::x"), LevelFilter::TRACE);
        assert_eq!(d.level_for("other"), LevelFilter::OFF);
        assert_eq!(Directives::parse("").unwrap().to_string(), "off");
    }

    /// The numbers `tracing`'s `EnvFilter` reads as levels mean the same here: a `RUST_LOG=4`
    /// kept from it is debug, not a target named `4` that turns every other line off.
    #[test]
    fn numbered_levels_read_as_tracing_reads_them() {
        let d = Directives::parse("4").unwrap();
        assert_eq!(d.level_for("my_crate"), LevelFilter::DEBUG);
        assert_eq!(d.to_string(), "debug");
        let d = Directives::parse("2,my_crate=5,noisy=0").unwrap();
        assert_eq!(d.to_string(), "warn,my_crate=trace,noisy=off");
        assert_eq!(
            Directives::parse_log_level("1").unwrap().to_string(),
            "error"
        );
        assert_eq!(
            Directives::parse_log_level("3").unwrap().to_string(),
            "info"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = Directives::parse("info,db=loud").unwrap_err();
        assert_eq!(err, DirectiveError::UnknownLevel("loud".into()));
        assert!(
            err.to_string()
                .contains("off, error, warn, info, debug or trace")
        );
        assert!(matches!(
            Directives::parse("a[span]=debug"),
            Err(DirectiveError::Unsupported(_))
        ));
        assert!(matches!(
            Directives::parse("my crate=debug"),
            Err(DirectiveError::InvalidTarget(_))
        ));
    }
}

//! What a readiness check is: the [`Check`] trait, its error, and a named check with its options.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The future a [`Check`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'a>>;

/// The longest error text kept from a check, in bytes; longer text is cut there (on a character
/// boundary) and ends with `…`, so a chatty dependency cannot grow a probe response without
/// bound.
pub const MAX_ERROR_LEN: usize = 1024;

/// A readiness check: asks one dependency whether it can serve.
///
/// Closures are the short way (see [`HealthBuilder::check`](crate::HealthBuilder::check));
/// implement this trait for a check that carries state:
///
/// ```
/// use periscope_health::{Check, CheckError, CheckFuture};
///
/// struct QueueDepth { limit: usize }
///
/// impl Check for QueueDepth {
///     fn check(&self) -> CheckFuture<'_> {
///         Box::pin(async move {
///             let depth = 3; // ask the queue
///             if depth > self.limit {
///                 return Err(CheckError::msg(format!("queue depth {depth} above {}", self.limit)));
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
///
/// A check does not need its own timeout: the runner cuts it off at the check's timeout, and a
/// panic inside it is caught and reported as a failure. A check must not block its thread
/// (synchronous I/O, `std::thread::sleep`): wrap blocking work in
/// `tokio::task::spawn_blocking` (or a thread of its own, as the ready-made file-system checks
/// do, for a call that can hang for good: the runtime's drop waits for its blocking tasks), or
/// a stuck call can stall the runtime thread that would have enforced the timeout.
pub trait Check: Send + Sync + 'static {
    /// Runs the check once: `Ok(())` when the dependency is usable.
    fn check(&self) -> CheckFuture<'_>;
}

impl<C: Check + ?Sized> Check for Arc<C> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}

impl<C: Check + ?Sized> Check for Box<C> {
    fn check(&self) -> CheckFuture<'_> {
        (**self).check()
    }
}

/// Why a check failed: the error's text, with its `source()` chain joined by `": "`, its
/// secrets masked (a connection string's password, `password=...`: see
/// [`Redactor::mask_text`](periscope_log::Redactor::mask_text)), cut at [`MAX_ERROR_LEN`]
/// bytes (then `…`). `/ready` shows it to anyone who can reach the port (unless
/// [`Details::Withheld`](crate::Details::Withheld)), and the log keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckError {
    message: String,
}

impl CheckError {
    /// An error with this text.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::masked_with(&message.into(), &periscope_log::Redactor::default())
    }

    /// `text` masked by `redactor`'s rules and cut as [`CheckError::msg`] cuts.
    pub(crate) fn masked_with(text: &str, redactor: &periscope_log::Redactor) -> Self {
        let mut message = redactor.mask_text(text).unwrap_or_else(|| text.to_owned());
        truncate(&mut message);
        Self { message }
    }

    /// An error with the text of `error` and of each error in its `source()` chain.
    pub fn from_error(error: &(dyn StdError + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        // Bounded: an error whose `source()` returns itself would otherwise loop forever.
        let mut depth = 0;
        while let Some(cause) = source.filter(|_| depth < MAX_SOURCES) {
            depth += 1;
            let text = cause.to_string();
            // Wrappers such as anyhow already print their cause: do not repeat it.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            if message.len() > MAX_ERROR_LEN {
                break;
            }
            source = cause.source();
        }
        Self::msg(message)
    }

    /// The error text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The most `source()` levels followed.
const MAX_SOURCES: usize = 32;

fn truncate(message: &mut String) {
    if message.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CheckError").field(&self.message).finish()
    }
}

impl StdError for CheckError {}

impl From<Box<dyn StdError + Send + Sync>> for CheckError {
    fn from(error: Box<dyn StdError + Send + Sync>) -> Self {
        match error.downcast::<CheckError>() {
            Ok(check_error) => *check_error,
            Err(error) => Self::from_error(&*error),
        }
    }
}

/// A [`Check`] made from an async closure; built by [`check_fn`].
#[derive(Clone)]
pub struct FnCheck<F> {
    f: F,
}

/// Turns an async closure into a [`Check`].
///
/// The closure's future may return any `Result<T, E>` whose error converts into
/// `Box<dyn Error + Send + Sync>`: `String`, `&str`, any error type, `anyhow::Error`.
///
/// ```
/// use periscope_health::{check_fn, Check};
///
/// let check = check_fn(|| async { Ok::<_, std::io::Error>(()) });
/// # let _ = check.check();
/// ```
pub fn check_fn<F, Fut, T, E>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    FnCheck { f }
}

impl<F, Fut, T, E> Check for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    fn check(&self) -> CheckFuture<'_> {
        let future = (self.f)();
        Box::pin(async move {
            future
                .await
                .map(|_| ())
                .map_err(|error| CheckError::from(error.into()))
        })
    }
}

/// A named readiness check with its options: critical or not, and its timeout.
///
/// ```
/// use std::time::Duration;
/// use periscope_health::{check_fn, HealthCheck};
///
/// let s3 = HealthCheck::new("s3", check_fn(|| async { Ok::<_, String>(()) }))
///     .non_critical()
///     .timeout(Duration::from_millis(500));
/// assert!(!s3.is_critical());
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    pub(crate) name: Arc<str>,
    pub(crate) check: Arc<dyn Check>,
    pub(crate) critical: bool,
    pub(crate) timeout: Option<Duration>,
}

impl HealthCheck {
    /// A critical check under the builder's default timeout (2 s unless changed).
    pub fn new(name: impl Into<String>, check: impl Check) -> Self {
        Self::from_arc(name, Arc::new(check))
    }

    /// Like [`HealthCheck::new`], for a check already shared behind an `Arc`.
    pub fn from_arc(name: impl Into<String>, check: Arc<dyn Check>) -> Self {
        Self {
            name: Arc::from(name.into()),
            check,
            critical: true,
            timeout: None,
        }
    }

    /// A failure of this check makes readiness `degraded` (200) instead of `fail` (503).
    pub fn non_critical(self) -> Self {
        self.critical(false)
    }

    /// Sets whether a failure of this check fails readiness (`true`, the default).
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// This check's own timeout, instead of the builder's default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The check's name, as it appears in the response and the metric label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a failure of this check fails readiness.
    pub fn is_critical(&self) -> bool {
        self.critical
    }
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .field("critical", &self.critical)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_text_joins_the_source_chain() {
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            CheckError::from_error(&error).message(),
            "connect failed: connection refused"
        );
    }

    /// `/ready` shows the text to anyone who reaches the port: a driver's error that names
    /// its connection string does not show the password.
    #[test]
    fn secrets_in_error_text_are_masked() {
        let error = Outer(std::io::Error::other(
            "postgres://app:hunter2@db:5432/app refused (password=hunter2 sslmode=require)",
        ));
        let message = CheckError::from_error(&error).message().to_owned();
        assert_eq!(
            message,
            "connect failed: postgres://app:[REDACTED]@db:5432/app refused \
             (password=[REDACTED] sslmode=require)"
        );
        assert_eq!(CheckError::msg("timed out").message(), "timed out");
    }

    #[test]
    fn long_error_text_is_cut_on_a_char_boundary() {
        let error = CheckError::msg("é".repeat(MAX_ERROR_LEN));
        assert!(error.message().len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(error.message().ends_with('…'));
    }

    #[test]
    fn a_source_chain_that_loops_ends() {
        #[derive(Debug)]
        struct Loop;
        impl fmt::Display for Loop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stuck")
            }
        }
        impl StdError for Loop {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(self)
            }
        }
        // On a thread, so that a loop fails the test instead of hanging it.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(CheckError::from_error(&Loop));
        });
        let error = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the chain is walked in bounded time");
        assert_eq!(error.message(), "stuck");
    }

    #[test]
    fn boxed_check_error_keeps_its_text() {
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(CheckError::msg("disk full"));
        assert_eq!(CheckError::from(boxed).message(), "disk full");
    }
}

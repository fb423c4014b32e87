//! Collecting field violations into one validation error.

use std::borrow::Cow;

use crate::code::{ErrorCode, codes};
use crate::envelope::Violation;
use crate::error::HttpError;

/// Collects every invalid field of a request, so the client learns about all of them at once
/// in a single 422 `validation_error` (or a 400 `invalid_request` with
/// [`into_result_with`](Violations::into_result_with)).
///
/// ```
/// use periscope_error::{HttpError, Violations};
///
/// fn validate(name: &str, gpus: u32) -> Result<(), HttpError> {
///     let mut violations = Violations::new();
///     violations.check(!name.is_empty(), "name", "required", "name is required");
///     violations.check(gpus <= 8, "gpus", "out_of_range", "gpus must be between 0 and 8");
///     violations.into_result()
/// }
///
/// assert!(validate("train", 2).is_ok());
/// let error = validate("", 16).unwrap_err();
/// assert_eq!(error.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
/// assert_eq!(error.code().name(), "validation_error");
/// assert_eq!(error.message(), "2 fields are invalid: name, gpus");
/// assert_eq!(error.violations()[1].reason, "out_of_range");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Violations {
    list: Vec<Violation>,
    /// Those past [`MAX_VIOLATIONS`]: counted, not kept.
    omitted: usize,
}

/// The most violations kept and listed in the error: a request with thousands of bad items (a
/// client's bug, or an attacker's) gets a bounded error body, and the server holds a bounded
/// list. The rest are counted: the message says how many fields are invalid, and the error's
/// `details.violations_omitted` how many are not listed.
pub const MAX_VIOLATIONS: usize = 100;

/// The most bytes of JSON the listed violations take in an envelope: those that would pass it
/// are counted in `details.violations_omitted` like those past [`MAX_VIOLATIONS`], so that an
/// envelope with a hundred long messages (each echoing a rejected value) still fits the 64 KiB
/// the client [`Decoder`](crate::Decoder) reads by default, with its other members at their
/// own bounds.
pub const MAX_VIOLATIONS_LEN: usize = 32 * 1024;

/// The detail that counts the violations not listed.
pub(crate) const VIOLATIONS_OMITTED: &str = "violations_omitted";

/// How many field names the summary message lists before "and N more".
const NAMED_IN_MESSAGE: usize = 5;

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid for `reason` (a snake_case word such as `required`).
    pub fn add(
        &mut self,
        field: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> &mut Self {
        self.push(Violation::new(field, reason, message));
        self
    }

    fn push(&mut self, violation: Violation) {
        if self.list.len() < MAX_VIOLATIONS {
            self.list.push(violation);
        } else {
            self.omitted += 1;
        }
    }

    /// Records the violation unless `valid` holds.
    pub fn check(
        &mut self,
        valid: bool,
        field: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> &mut Self {
        if !valid {
            self.add(field, reason, message);
        }
        self
    }

    /// Whether every field was valid.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many violations were recorded (those past [`MAX_VIOLATIONS`] included).
    pub fn len(&self) -> usize {
        self.list.len() + self.omitted
    }

    /// The violations kept (the first [`MAX_VIOLATIONS`]), in order.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.list.iter()
    }

    /// `Ok` when nothing was recorded, else a 422 `validation_error` listing the violations.
    pub fn into_result(self) -> Result<(), HttpError> {
        self.into_result_with(codes::VALIDATION_ERROR)
    }

    /// `Ok` when nothing was recorded, else an error of `code` (for example
    /// [`codes::INVALID_REQUEST`] for a 400) listing the violations.
    pub fn into_result_with(self, code: ErrorCode) -> Result<(), HttpError> {
        if self.list.is_empty() {
            return Ok(());
        }
        let message = self.summary();
        let mut error = HttpError::new(code, message);
        if self.omitted > 0 {
            error = error.with_detail(VIOLATIONS_OMITTED, self.omitted);
        }
        // Adds those it cannot list to the count.
        Err(error.with_violations(self.list))
    }

    /// "2 fields are invalid: name, gpus".
    fn summary(&self) -> String {
        let count = self.len();
        let mut message = if count == 1 {
            String::from("1 field is invalid: ")
        } else {
            format!("{count} fields are invalid: ")
        };
        for (i, violation) in self.list.iter().take(NAMED_IN_MESSAGE).enumerate() {
            if i > 0 {
                message.push_str(", ");
            }
            message.push_str(&violation.field);
        }
        if count > NAMED_IN_MESSAGE {
            message.push_str(&format!(" and {} more", count - NAMED_IN_MESSAGE));
        }
        message
    }
}

impl Extend<Violation> for Violations {
    fn extend<I: IntoIterator<Item = Violation>>(&mut self, iter: I) {
        iter.into_iter().for_each(|violation| self.push(violation));
    }
}

impl FromIterator<Violation> for Violations {
    fn from_iter<I: IntoIterator<Item = Violation>>(iter: I) -> Self {
        let mut violations = Self::default();
        violations.extend(iter);
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// Thousands of bad items give a bounded list and body, and say how many there were.
    #[test]
    fn violations_past_the_bound_are_counted_not_kept() {
        let mut violations = Violations::new();
        for i in 0..150 {
            violations.add(format!("items[{i}]"), "required", "required");
        }
        violations.extend((0..50).map(|i| Violation::new(format!("more[{i}]"), "x", "x")));
        assert_eq!(violations.len(), 200);
        assert_eq!(violations.iter().count(), MAX_VIOLATIONS);
        let error = violations.into_result().unwrap_err();
        assert_eq!(error.violations().len(), MAX_VIOLATIONS);
        assert_eq!(
            error.message(),
            "200 fields are invalid: items[0], items[1], items[2], items[3], items[4] and 195 more"
        );
        assert_eq!(error.details().unwrap()["violations_omitted"], 100);
        let collected: Violations = (0..120)
            .map(|i| Violation::new(format!("f{i}"), "x", "x"))
            .collect();
        assert_eq!(
            (collected.len(), collected.iter().count()),
            (120, MAX_VIOLATIONS)
        );
    }

    #[test]
    fn no_violation_is_ok() {
        let mut violations = Violations::new();
        violations.check(true, "name", "required", "name is required");
        assert!(violations.is_empty());
        assert!(violations.into_result().is_ok());
    }

    #[test]
    fn one_error_for_all_violations_with_400_on_request() {
        let violations: Violations = (0..7)
            .map(|i| Violation::new(format!("f{i}"), "required", "required"))
            .collect();
        assert_eq!(violations.len(), 7);
        let error = violations
            .into_result_with(codes::INVALID_REQUEST)
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.violations().len(), 7);
        assert_eq!(
            error.message(),
            "7 fields are invalid: f0, f1, f2, f3, f4 and 2 more"
        );
    }

    #[test]
    fn single_violation_message() {
        let mut violations = Violations::new();
        violations.add("email", "format", "email must be an address");
        assert_eq!(
            violations.into_result().unwrap_err().message(),
            "1 field is invalid: email"
        );
    }
}

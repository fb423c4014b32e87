//! Error codes: the built-in catalogue and the way a service declares its own.

use std::fmt;
use std::hash::{Hash, Hasher};

use http::StatusCode;

use crate::class::ErrorClass;

/// The longest code accepted, in bytes.
pub const MAX_CODE_LEN: usize = 64;

/// A machine-readable error code (`job_already_terminal`) with its class, HTTP status,
/// retryability, default message, help text and documentation link.
///
/// Codes are `const`: a service declares all of its codes in one place, usually with
/// [`error_codes!`](crate::error_codes), and a mistake (a name that is not snake_case, a name
/// that is already a built-in code, a `token_*` code outside the auth class, two codes with
/// one name) fails the build instead of surprising a client.
///
/// ```
/// use http::StatusCode;
/// use periscope_error::{ErrorClass, ErrorCode, codes};
///
/// const JOB_ALREADY_TERMINAL: ErrorCode =
///     ErrorCode::new("job_already_terminal", ErrorClass::Conflict)
///         .with_message("The job has already finished")
///         .with_help("Jobs can only be canceled while queued or processing")
///         .with_docs_url("https://docs.example.com/errors#job_already_terminal");
///
/// assert_eq!(JOB_ALREADY_TERMINAL.status(), StatusCode::CONFLICT);
/// assert!(!JOB_ALREADY_TERMINAL.is_retryable());
/// assert_eq!(codes::TIMEOUT.status(), StatusCode::GATEWAY_TIMEOUT);
/// assert!(codes::TIMEOUT.is_retryable());
/// ```
///
/// A built-in name does not compile as a service code:
///
/// ```compile_fail
/// use periscope_error::{ErrorClass, ErrorCode};
/// const MINE: ErrorCode = ErrorCode::new("not_found", ErrorClass::NotFound);
/// ```
///
/// Two codes are equal when their names are equal.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode {
    name: &'static str,
    class: ErrorClass,
    status: StatusCode,
    retryable: bool,
    message: Option<&'static str>,
    help: Option<&'static str>,
    docs_url: Option<&'static str>,
}

/// Why a service code was refused by [`ErrorCode::try_new`] (and so by [`ErrorCode::new`] at
/// compile time).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCode {
    /// The name was empty.
    #[error("the error code is empty; use a snake_case name such as `job_already_terminal`")]
    Empty,
    /// The name was longer than [`MAX_CODE_LEN`].
    #[error("the error code is {0} bytes long; use at most 64")]
    TooLong(usize),
    /// The name was not snake_case (`a-z`, `0-9` and single inner `_`, starting with a letter).
    #[error(
        "the error code is not snake_case at byte {0}; use a-z, 0-9 and single inner underscores, starting with a letter"
    )]
    NotSnakeCase(usize),
    /// The name is one of the built-in codes.
    #[error(
        "`{0}` is a built-in error code; use the built-in constant from `periscope_error::codes`, or pick another name"
    )]
    Builtin(&'static str),
    /// The name starts with a reserved family prefix (`token_`, `allocation_`, `node_`, `sku_`)
    /// but the code is declared in another class.
    #[error(
        "codes starting with `{prefix}` belong to the `{class}` class; declare the code in that class or rename it"
    )]
    WrongFamily {
        /// The reserved prefix.
        prefix: &'static str,
        /// The class that prefix belongs to.
        class: ErrorClass,
    },
    /// The same name was declared twice in one list of codes.
    #[error("the error code `{0}` is declared twice; each code needs its own name")]
    Duplicate(&'static str),
    /// The status is not an error status.
    #[error("an error code's status must be 4xx or 5xx, not {0}")]
    NotAnErrorStatus(u16),
}

impl InvalidCode {
    /// The message a `const` declaration fails with (formatting is not available in `const`).
    const fn const_message(&self) -> &'static str {
        match self {
            InvalidCode::Empty => "the error code is empty",
            InvalidCode::TooLong(_) => "the error code is longer than 64 bytes",
            InvalidCode::NotSnakeCase(_) => {
                "the error code is not snake_case (a-z, 0-9, single inner underscores)"
            }
            InvalidCode::Builtin(_) => {
                "the error code is a built-in code; use periscope_error::codes or another name"
            }
            InvalidCode::WrongFamily { .. } => {
                "token_* codes must be auth, allocation_*/node_*/sku_* codes provisioning"
            }
            InvalidCode::Duplicate(_) => "the same error code is declared twice",
            InvalidCode::NotAnErrorStatus(_) => "an error code's status must be 4xx or 5xx",
        }
    }
}

/// Name prefixes that belong to one class, so a client can class a code it does not know.
const FAMILIES: [(&str, ErrorClass); 4] = [
    ("token_", ErrorClass::Auth),
    ("allocation_", ErrorClass::Provisioning),
    ("node_", ErrorClass::Provisioning),
    ("sku_", ErrorClass::Provisioning),
];

impl ErrorCode {
    /// Declares a service code of `class`, with the class's default status and retryability.
    ///
    /// # Panics
    ///
    /// When [`ErrorCode::try_new`] refuses the name. Declare codes in `const` items (or with
    /// [`error_codes!`](crate::error_codes)) so that this is a compile error, never a
    /// runtime panic; use `try_new` for names known only at run time.
    #[track_caller]
    pub const fn new(name: &'static str, class: ErrorClass) -> ErrorCode {
        match ErrorCode::try_new(name, class) {
            Ok(code) => code,
            Err(error) => panic!("{}", error.const_message()),
        }
    }

    /// Declares a service code, refusing names that are not snake_case, that are built-in
    /// codes, or that use a reserved family prefix (`token_`, `allocation_`, `node_`, `sku_`)
    /// outside its class.
    ///
    /// ```
    /// use periscope_error::{ErrorClass, ErrorCode, InvalidCode};
    ///
    /// assert!(ErrorCode::try_new("quota_exceeded", ErrorClass::RateLimited).is_ok());
    /// assert_eq!(
    ///     ErrorCode::try_new("timeout", ErrorClass::Unavailable).unwrap_err(),
    ///     InvalidCode::Builtin("timeout"),
    /// );
    /// assert!(ErrorCode::try_new("JobFailed", ErrorClass::Internal).is_err());
    /// assert!(ErrorCode::try_new("token_revoked", ErrorClass::Permission).is_err());
    /// ```
    pub const fn try_new(name: &'static str, class: ErrorClass) -> Result<ErrorCode, InvalidCode> {
        if let Err(error) = check_snake_case(name) {
            return Err(error);
        }
        let mut i = 0;
        while i < BUILTIN.len() {
            if str_eq(BUILTIN[i].name, name) {
                return Err(InvalidCode::Builtin(BUILTIN[i].name));
            }
            i += 1;
        }
        if let Some((prefix, family)) = family_class(name)
            && family as u8 != class as u8
        {
            return Err(InvalidCode::WrongFamily {
                prefix,
                class: family,
            });
        }
        Ok(ErrorCode::builtin(name, class))
    }

    /// A code of the built-in catalogue; no checks (the catalogue's tests make them).
    const fn builtin(name: &'static str, class: ErrorClass) -> ErrorCode {
        ErrorCode {
            name,
            class,
            status: class.default_status(),
            retryable: class.is_retryable(),
            message: None,
            help: None,
            docs_url: None,
        }
    }

    /// The same code with another HTTP status (it must be 4xx or 5xx).
    ///
    /// # Panics
    ///
    /// When `status` is not 4xx or 5xx: a compile error in a `const` declaration.
    #[track_caller]
    pub const fn with_status(mut self, status: StatusCode) -> ErrorCode {
        let code = status.as_u16();
        if code < 400 || code > 599 {
            panic!("{}", InvalidCode::NotAnErrorStatus(code).const_message());
        }
        self.status = status;
        self
    }

    /// The same code, retryable or not regardless of its class.
    pub const fn with_retryable(mut self, retryable: bool) -> ErrorCode {
        self.retryable = retryable;
        self
    }

    /// The message an error of this code carries when it is created without one.
    pub const fn with_message(mut self, message: &'static str) -> ErrorCode {
        self.message = Some(message);
        self
    }

    /// Help text for the caller: what to change so the request succeeds.
    pub const fn with_help(mut self, help: &'static str) -> ErrorCode {
        self.help = Some(help);
        self
    }

    /// A link to the documentation of this code; also the RFC 9457 `type` of its problems.
    pub const fn with_docs_url(mut self, docs_url: &'static str) -> ErrorCode {
        self.docs_url = Some(docs_url);
        self
    }

    /// The snake_case name sent as `code`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The class of the code.
    pub const fn class(&self) -> ErrorClass {
        self.class
    }

    /// The HTTP status an error of this code is sent with.
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// Whether the same request may succeed later.
    pub const fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message used when an error of this code is created without one.
    pub const fn default_message(&self) -> &'static str {
        match self.message {
            Some(message) => message,
            None => class_message(self.class),
        }
    }

    /// Help text for the caller, if the code has some.
    pub const fn help(&self) -> Option<&'static str> {
        self.help
    }

    /// The documentation link, if the code has one.
    pub const fn docs_url(&self) -> Option<&'static str> {
        self.docs_url
    }

    /// Whether this is one of the built-in codes of [`codes`].
    pub fn is_builtin(&self) -> bool {
        ErrorCode::find_builtin(self.name).is_some()
    }

    /// The built-in code named `name`.
    ///
    /// ```
    /// use periscope_error::{ErrorCode, codes};
    /// assert_eq!(ErrorCode::find_builtin("rate_limited"), Some(codes::RATE_LIMITED));
    /// assert_eq!(ErrorCode::find_builtin("job_already_terminal"), None);
    /// ```
    pub fn find_builtin(name: &str) -> Option<ErrorCode> {
        BUILTIN.iter().find(|code| code.name == name).copied()
    }

    /// The code named `name` among `service` codes, then among the built-in ones.
    pub fn find(name: &str, service: &[ErrorCode]) -> Option<ErrorCode> {
        service
            .iter()
            .find(|code| code.name == name)
            .copied()
            .or_else(|| ErrorCode::find_builtin(name))
    }

    /// The built-in code that stands for a bare error status (a response without an envelope):
    /// 400 `invalid_request`, 401 `token_invalid`, 403 `insufficient_permissions`,
    /// 404 and 410 `not_found`, 405 `method_not_allowed`, 408 and 504 `timeout`, 409 and 412 `conflict`,
    /// 413 `payload_too_large`, 415 `unsupported_media_type`, 422 `validation_error`,
    /// 429 `rate_limited`, 502 `upstream_error`, 503 `service_unavailable`; other 4xx
    /// `invalid_request`, and a 3xx too (a redirect that reached error handling was not
    /// followed: the call needs its `Location`, not a retry); anything else `internal_error`.
    pub const fn for_status(status: StatusCode) -> ErrorCode {
        use codes::*;
        match status.as_u16() {
            401 => TOKEN_INVALID,
            403 => INSUFFICIENT_PERMISSIONS,
            404 | 410 => NOT_FOUND,
            405 => METHOD_NOT_ALLOWED,
            408 | 504 => TIMEOUT,
            409 | 412 => CONFLICT,
            413 => PAYLOAD_TOO_LARGE,
            415 => UNSUPPORTED_MEDIA_TYPE,
            422 => VALIDATION_ERROR,
            429 => RATE_LIMITED,
            502 => UPSTREAM_ERROR,
            503 => SERVICE_UNAVAILABLE,
            300..=499 => INVALID_REQUEST,
            _ => INTERNAL_ERROR,
        }
    }

    /// Panics (a compile error in `const`) when two of `codes` share a name, or one of them
    /// is invalid. Used by [`error_codes!`](crate::error_codes).
    #[track_caller]
    pub const fn assert_distinct(codes: &[ErrorCode]) {
        if let Err(error) = ErrorCode::check_distinct(codes) {
            panic!("{}", error.const_message());
        }
    }

    /// Checks that no two of `codes` share a name.
    pub const fn check_distinct(codes: &[ErrorCode]) -> Result<(), InvalidCode> {
        let mut i = 0;
        while i < codes.len() {
            let mut j = i + 1;
            while j < codes.len() {
                if str_eq(codes[i].name, codes[j].name) {
                    return Err(InvalidCode::Duplicate(codes[i].name));
                }
                j += 1;
            }
            i += 1;
        }
        Ok(())
    }
}

impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ErrorCode {}

impl Hash for ErrorCode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The class a code name's reserved prefix implies, for codes a client does not know.
pub(crate) fn class_of_family(name: &str) -> Option<ErrorClass> {
    family_class(name).map(|(_, class)| class)
}

const fn family_class(name: &str) -> Option<(&'static str, ErrorClass)> {
    let mut i = 0;
    while i < FAMILIES.len() {
        if starts_with(name, FAMILIES[i].0) {
            return Some(FAMILIES[i]);
        }
        i += 1;
    }
    None
}

/// The message of a code declared without one.
const fn class_message(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Auth => "Authentication failed",
        ErrorClass::Permission => "You do not have permission to do this",
        ErrorClass::Validation => "The request is invalid",
        ErrorClass::NotFound => "The requested resource was not found",
        ErrorClass::Conflict => "The request conflicts with the current state of the resource",
        ErrorClass::RateLimited => "Too many requests",
        ErrorClass::Provisioning => "The requested capacity is not available right now",
        ErrorClass::Unavailable => "The service is temporarily unavailable",
        ErrorClass::Internal => "An internal error occurred",
    }
}

const fn check_snake_case(name: &str) -> Result<(), InvalidCode> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidCode::Empty);
    }
    if bytes.len() > MAX_CODE_LEN {
        return Err(InvalidCode::TooLong(bytes.len()));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = match b {
            b'a'..=b'z' => true,
            b'0'..=b'9' => i > 0,
            // Not first, not last, not doubled.
            b'_' => i > 0 && i + 1 < bytes.len() && bytes[i - 1] != b'_',
            _ => false,
        };
        if !ok {
            return Err(InvalidCode::NotSnakeCase(i));
        }
        i += 1;
    }
    Ok(())
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn starts_with(name: &str, prefix: &str) -> bool {
    let (name, prefix) = (name.as_bytes(), prefix.as_bytes());
    if name.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares a service's error codes in one place: one `const` per code, plus a list of all
/// of them for the client decoder and the docs. A name that is not snake_case, that is a
/// built-in code, that breaks a reserved family, or that is declared twice fails the build.
///
/// ```
/// use http::StatusCode;
/// use periscope_error::{ErrorClass, ErrorCode, error_codes};
///
/// error_codes! {
///     /// Every code of the jobs service.
///     pub const JOB_CODES = [
///         /// Cancel on a job that has already finished.
///         JOB_ALREADY_TERMINAL = ErrorCode::new("job_already_terminal", ErrorClass::Conflict)
///             .with_help("Jobs can only be canceled while queued or processing"),
///         /// No job has this id.
///         JOB_NOT_FOUND = ErrorCode::new("job_not_found", ErrorClass::NotFound),
///         /// The account has used its GPU-hours.
///         GPU_QUOTA_EXCEEDED = ErrorCode::new("gpu_quota_exceeded", ErrorClass::RateLimited)
///             .with_status(StatusCode::PAYMENT_REQUIRED)
///             .with_retryable(false),
///     ];
/// }
///
/// assert_eq!(JOB_CODES.len(), 3);
/// assert_eq!(JOB_NOT_FOUND.status(), StatusCode::NOT_FOUND);
/// ```
///
/// Declaring a name twice does not compile:
///
/// ```compile_fail
/// use periscope_error::{ErrorClass, ErrorCode, error_codes};
/// error_codes! {
///     pub const CODES = [
///         A = ErrorCode::new("job_failed", ErrorClass::Internal),
///         B = ErrorCode::new("job_failed", ErrorClass::Conflict),
///     ];
/// }
/// ```
#[macro_export]
macro_rules! error_codes {
    (
        $(#[$list_meta:meta])*
        $vis:vis const $list:ident = [
            $( $(#[$meta:meta])* $name:ident = $code:expr ),* $(,)?
        ];
    ) => {
        $( $(#[$meta])* $vis const $name: $crate::ErrorCode = $code; )*
        $(#[$list_meta])*
        $vis const $list: &[$crate::ErrorCode] = &[$($name),*];
        const _: () = $crate::ErrorCode::assert_distinct($list);
    };
}

/// The built-in codes. Services add their own with [`ErrorCode::new`] or
/// [`error_codes!`](crate::error_codes); the catalogue with when each is used is in
/// `docs/errors.md`.
pub mod codes {
    use http::StatusCode;

    use super::ErrorCode;
    use crate::class::ErrorClass::*;

    /// No credentials were sent.
    pub const TOKEN_MISSING: ErrorCode = ErrorCode::builtin("token_missing", Auth)
        .with_message("Authentication is required")
        .with_help("Send a token in the Authorization header: `Authorization: Bearer <token>`");
    /// The token was valid but has expired.
    pub const TOKEN_EXPIRED: ErrorCode = ErrorCode::builtin("token_expired", Auth)
        .with_message("The access token has expired")
        .with_help("Refresh the token and retry the request");
    /// The token is malformed, revoked or signed by an unknown key.
    pub const TOKEN_INVALID: ErrorCode = ErrorCode::builtin("token_invalid", Auth)
        .with_message("The access token is invalid")
        .with_help("Obtain a new token; check that it is sent unmodified");
    /// The caller lacks a permission the action needs.
    pub const INSUFFICIENT_PERMISSIONS: ErrorCode =
        ErrorCode::builtin("insufficient_permissions", Permission)
            .with_message("You do not have permission to do this")
            .with_help("Ask an administrator of the account for the needed role");
    /// The action is reserved to administrators.
    pub const ADMIN_REQUIRED: ErrorCode = ErrorCode::builtin("admin_required", Permission)
        .with_message("This action requires administrator rights")
        .with_help("Use an administrator account");
    /// The request is malformed: unparsable body, bad query string, bad header.
    pub const INVALID_REQUEST: ErrorCode = ErrorCode::builtin("invalid_request", Validation)
        .with_message("The request is malformed")
        .with_help("Fix the request; the message says what could not be read");
    /// The request is well-formed but fields are invalid (see `violations`).
    pub const VALIDATION_ERROR: ErrorCode = ErrorCode::builtin("validation_error", Validation)
        .with_status(StatusCode::UNPROCESSABLE_ENTITY)
        .with_message("The request has invalid fields")
        .with_help("Fix the fields listed in `violations`");
    /// The client stopped sending the request body before its end: the connection closed or
    /// was reset, or the HTTP/2 stream was cancelled, mid-upload. Retryable: the request was
    /// never handled.
    pub const REQUEST_BODY_INCOMPLETE: ErrorCode =
        ErrorCode::builtin("request_body_incomplete", Validation)
            .with_retryable(true)
            .with_message("The request body ended before it was complete")
            .with_help(
                "The client stopped sending the body (it closed the connection or cancelled \
                 the request mid-upload); send the whole body again",
            );
    /// The request body is over the service's limit.
    pub const PAYLOAD_TOO_LARGE: ErrorCode = ErrorCode::builtin("payload_too_large", Validation)
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_message("The request body is too large")
        .with_help("Send a smaller body, or split the request");
    /// The route exists but not with this method.
    pub const METHOD_NOT_ALLOWED: ErrorCode = ErrorCode::builtin("method_not_allowed", Validation)
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .with_message("This method is not allowed on this route")
        .with_help("Use one of the methods in the Allow header");
    /// The body's content type is not one the endpoint reads.
    pub const UNSUPPORTED_MEDIA_TYPE: ErrorCode =
        ErrorCode::builtin("unsupported_media_type", Validation)
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_message("The request body has an unsupported content type")
            .with_help("Send the body as JSON with `Content-Type: application/json`");
    /// The addressed resource does not exist.
    pub const NOT_FOUND: ErrorCode = ErrorCode::builtin("not_found", NotFound)
        .with_message("The requested resource was not found")
        .with_help("Check the resource id");
    /// No route matches the request's path.
    pub const ROUTE_NOT_FOUND: ErrorCode = ErrorCode::builtin("route_not_found", NotFound)
        .with_message("No route matches this path")
        .with_help("Check the URL and the API version");
    /// The request conflicts with the resource's current state.
    pub const CONFLICT: ErrorCode = ErrorCode::builtin("conflict", Conflict)
        .with_message("The request conflicts with the current state of the resource")
        .with_help("Fetch the resource again and decide whether the request still applies");
    /// Too many requests: retry after `retry_after_s`.
    pub const RATE_LIMITED: ErrorCode = ErrorCode::builtin("rate_limited", RateLimited)
        .with_message("Too many requests")
        .with_help("Wait for the Retry-After delay, then retry with backoff");
    /// Capacity could not be allocated now.
    pub const ALLOCATION_FAILED: ErrorCode = ErrorCode::builtin("allocation_failed", Provisioning)
        .with_message("The requested capacity could not be allocated")
        .with_help("Retry later, or request a smaller or different allocation");
    /// The resource already holds an allocation that conflicts with this one.
    pub const ALLOCATION_CONFLICT: ErrorCode =
        ErrorCode::builtin("allocation_conflict", Provisioning)
            .with_status(StatusCode::CONFLICT)
            .with_retryable(false)
            .with_message("A conflicting allocation already exists")
            .with_help("Release the existing allocation first");
    /// The requested SKU (instance or GPU type) is not available.
    pub const SKU_UNAVAILABLE: ErrorCode = ErrorCode::builtin("sku_unavailable", Provisioning)
        .with_message("The requested SKU is not available right now")
        .with_help("Retry later, or choose another SKU or region");
    /// No node can take the work now.
    pub const NODE_UNAVAILABLE: ErrorCode = ErrorCode::builtin("node_unavailable", Provisioning)
        .with_message("No node is available right now")
        .with_help("Retry later with backoff");
    /// The service is overloaded, starting or draining.
    pub const SERVICE_UNAVAILABLE: ErrorCode =
        ErrorCode::builtin("service_unavailable", Unavailable)
            .with_message("The service is temporarily unavailable")
            .with_help("Retry with backoff");
    /// A dependency of the service failed.
    pub const UPSTREAM_ERROR: ErrorCode = ErrorCode::builtin("upstream_error", Unavailable)
        .with_status(StatusCode::BAD_GATEWAY)
        .with_message("An upstream service failed")
        .with_help("Retry with backoff");
    /// The request took longer than the service allows.
    pub const TIMEOUT: ErrorCode = ErrorCode::builtin("timeout", Unavailable)
        .with_status(StatusCode::GATEWAY_TIMEOUT)
        .with_message("The request timed out")
        .with_help("Retry with backoff; if it keeps timing out, send less work per request");
    /// A bug or unexpected failure; the details are in the service's log under the request id.
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode::builtin("internal_error", Internal)
        .with_message("An internal error occurred")
        .with_help("Report the request_id to support");
}

/// The built-in catalogue, in documentation order.
pub const BUILTIN: &[ErrorCode] = {
    use codes::*;
    &[
        TOKEN_MISSING,
        TOKEN_EXPIRED,
        TOKEN_INVALID,
        INSUFFICIENT_PERMISSIONS,
        ADMIN_REQUIRED,
        INVALID_REQUEST,
        VALIDATION_ERROR,
        REQUEST_BODY_INCOMPLETE,
        PAYLOAD_TOO_LARGE,
        METHOD_NOT_ALLOWED,
        UNSUPPORTED_MEDIA_TYPE,
        NOT_FOUND,
        ROUTE_NOT_FOUND,
        CONFLICT,
        RATE_LIMITED,
        ALLOCATION_FAILED,
        ALLOCATION_CONFLICT,
        SKU_UNAVAILABLE,
        NODE_UNAVAILABLE,
        SERVICE_UNAVAILABLE,
        UPSTREAM_ERROR,
        TIMEOUT,
        INTERNAL_ERROR,
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalogue as `docs/errors.md` states it: name, class, status, retryable.
    const CATALOGUE: &[(&str, ErrorClass, u16, bool)] = &[
        ("token_missing", ErrorClass::Auth, 401, false),
        ("token_expired", ErrorClass::Auth, 401, false),
        ("token_invalid", ErrorClass::Auth, 401, false),
        (
            "insufficient_permissions",
            ErrorClass::Permission,
            403,
            false,
        ),
        ("admin_required", ErrorClass::Permission, 403, false),
        ("invalid_request", ErrorClass::Validation, 400, false),
        ("validation_error", ErrorClass::Validation, 422, false),
        ("request_body_incomplete", ErrorClass::Validation, 400, true),
        ("payload_too_large", ErrorClass::Validation, 413, false),
        ("method_not_allowed", ErrorClass::Validation, 405, false),
        ("unsupported_media_type", ErrorClass::Validation, 415, false),
        ("not_found", ErrorClass::NotFound, 404, false),
        ("route_not_found", ErrorClass::NotFound, 404, false),
        ("conflict", ErrorClass::Conflict, 409, false),
        ("rate_limited", ErrorClass::RateLimited, 429, true),
        ("allocation_failed", ErrorClass::Provisioning, 503, true),
        ("allocation_conflict", ErrorClass::Provisioning, 409, false),
        ("sku_unavailable", ErrorClass::Provisioning, 503, true),
        ("node_unavailable", ErrorClass::Provisioning, 503, true),
        ("service_unavailable", ErrorClass::Unavailable, 503, true),
        ("upstream_error", ErrorClass::Unavailable, 502, true),
        ("timeout", ErrorClass::Unavailable, 504, true),
        ("internal_error", ErrorClass::Internal, 500, false),
    ];

    #[test]
    fn builtin_catalogue_matches_the_documented_table() {
        assert_eq!(BUILTIN.len(), CATALOGUE.len());
        for (code, &(name, class, status, retryable)) in BUILTIN.iter().zip(CATALOGUE) {
            assert_eq!(code.name(), name);
            assert_eq!(code.class(), class, "{name}");
            assert_eq!(code.status().as_u16(), status, "{name}");
            assert_eq!(code.is_retryable(), retryable, "{name}");
            assert!(code.help().is_some(), "{name} has help text");
            assert!(check_snake_case(name).is_ok(), "{name}");
            if let Some(family) = class_of_family(name) {
                assert_eq!(family, class, "{name} is in its family's class");
            }
        }
        ErrorCode::check_distinct(BUILTIN).unwrap();
    }

    #[test]
    fn service_codes_cannot_take_a_builtin_name() {
        for code in BUILTIN {
            assert_eq!(
                ErrorCode::try_new(code.name(), code.class()),
                Err(InvalidCode::Builtin(code.name()))
            );
        }
    }

    #[test]
    fn service_code_names_must_be_snake_case() {
        for bad in [
            "",
            "Job",
            "job-failed",
            "_job",
            "job_",
            "job__failed",
            "9job",
            "jöb",
        ] {
            assert!(
                ErrorCode::try_new(bad, ErrorClass::Internal).is_err(),
                "{bad:?}"
            );
        }
        let long: &'static str = "a".repeat(65).leak();
        assert_eq!(
            ErrorCode::try_new(long, ErrorClass::Internal),
            Err(InvalidCode::TooLong(65))
        );
        for good in ["job_failed", "gpu2_oom", "a"] {
            assert!(
                ErrorCode::try_new(good, ErrorClass::Internal).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn reserved_families_keep_their_class() {
        assert!(ErrorCode::try_new("token_revoked", ErrorClass::Auth).is_ok());
        assert_eq!(
            ErrorCode::try_new("node_draining", ErrorClass::Unavailable),
            Err(InvalidCode::WrongFamily {
                prefix: "node_",
                class: ErrorClass::Provisioning
            })
        );
        // `tokens_exhausted` is not in the `token_` family.
        assert!(ErrorCode::try_new("tokens_exhausted", ErrorClass::RateLimited).is_ok());
    }

    #[test]
    fn service_code_gets_its_class_defaults_and_overrides() {
        const CODE: ErrorCode = ErrorCode::new("gpu_oom", ErrorClass::Unavailable);
        assert_eq!(CODE.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(CODE.is_retryable());
        assert_eq!(
            CODE.default_message(),
            "The service is temporarily unavailable"
        );
        let custom = CODE
            .with_status(StatusCode::INSUFFICIENT_STORAGE)
            .with_retryable(false);
        assert_eq!(custom.status().as_u16(), 507);
        assert!(!custom.is_retryable());
        assert_eq!(custom, CODE, "codes compare by name");
    }

    #[test]
    fn duplicates_are_found() {
        const A: ErrorCode = ErrorCode::new("job_failed", ErrorClass::Internal);
        const B: ErrorCode = ErrorCode::new("job_lost", ErrorClass::Internal);
        assert_eq!(ErrorCode::check_distinct(&[A, B]), Ok(()));
        assert_eq!(
            ErrorCode::check_distinct(&[A, B, A]),
            Err(InvalidCode::Duplicate("job_failed"))
        );
    }

    #[test]
    fn every_error_status_has_a_code_of_its_class() {
        // A redirect too: one that reaches a decoder was not followed.
        for status in 300..600u16 {
            let status = StatusCode::from_u16(status).unwrap();
            let code = ErrorCode::for_status(status);
            assert_eq!(
                code.class(),
                ErrorClass::from_status(status),
                "{status} → {code}"
            );
        }
    }

    #[test]
    fn lookup_prefers_service_codes_then_builtins() {
        const MINE: ErrorCode = ErrorCode::new("job_failed", ErrorClass::Internal);
        assert_eq!(ErrorCode::find("job_failed", &[MINE]), Some(MINE));
        assert_eq!(ErrorCode::find("timeout", &[MINE]), Some(codes::TIMEOUT));
        assert_eq!(ErrorCode::find("nope", &[MINE]), None);
    }
}

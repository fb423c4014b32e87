//! One JSON error envelope for every failure of a Tower service, on the server and in clients.
//!
//! - [`ErrorCode`] and [`ErrorClass`]: the code taxonomy. Built-in codes live in [`codes`];
//!   a service declares its own in one place with [`error_codes!`], checked at compile time.
//! - [`HttpError`]: what a handler returns. Rendered as the [`Envelope`] with the request id
//!   and trace id of the request's context, `Retry-After` when a delay is known, and
//!   `IntoResponse` behind the `axum` feature.
//! - [`ErrorLayer`]: the catch-all layer: panics, timeouts, the router's 404/405, oversized
//!   and unparsable bodies each become an envelope; internals go to the log only.
//!   `Accept: application/problem+json` gets RFC 9457 problem details.
//! - [`Violations`]: collects invalid fields into one 422 (or 400) error.
//! - [`ApiError`] and [`Decoder`]: the client side, for SDKs: any error response (envelope,
//!   problem details, an HTML page from a proxy, an empty or truncated body) decoded into a
//!   typed error with its class, retryability and request id.
//!
//! ```
//! use http::StatusCode;
//! use periscope_error::{ApiError, ErrorClass, ErrorCode, HttpError, error_codes};
//!
//! error_codes! {
//!     /// Every code of the jobs service.
//!     pub const JOB_CODES = [
//!         /// Cancel on a job that has already finished.
//!         JOB_ALREADY_TERMINAL = ErrorCode::new("job_already_terminal", ErrorClass::Conflict)
//!             .with_help("Jobs can only be canceled while queued or processing"),
//!     ];
//! }
//!
//! // Server: a handler returns the error; the ids are filled in when it is rendered.
//! let error = HttpError::new(JOB_ALREADY_TERMINAL, "Cannot cancel job that is already completed")
//!     .with_detail("job_id", "job_456");
//! let response: http::Response<Vec<u8>> = error.into_http_response();
//! assert_eq!(response.status(), StatusCode::CONFLICT);
//!
//! // Client: the SDK decodes it.
//! let error = ApiError::from_parts(response.status(), response.headers(), response.body());
//! assert_eq!(error.code(), "job_already_terminal");
//! assert_eq!(error.class(), ErrorClass::Conflict);
//! assert!(!error.is_retryable());
//! assert!(error.request_id().is_some());
//! ```
#![deny(missing_docs)]
// Library code reports errors instead of panicking; tests, benches and examples may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
mod axum;
mod body;
mod class;
mod client;
mod code;
mod envelope;
mod error;
mod layer;
mod panic;
mod render;
#[cfg(feature = "axum")]
mod request_body;
mod validation;

pub use body::ResponseBody;
pub use class::ErrorClass;
pub use client::{
    ApiError, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RAW_BODY_BYTES, Decoder, MAX_ID_LEN,
    MAX_RETRY_AFTER,
};
pub use code::{BUILTIN, ErrorCode, InvalidCode, MAX_CODE_LEN, codes};
pub use envelope::{Envelope, ErrorBody, MAX_DETAILS_LEN, MAX_MESSAGE_LEN, Violation};
pub use error::{BoxError, HttpError};
pub use layer::{BODY_READ_LIMIT, ErrorLayer, ErrorService, PassThrough, ResponseFuture};
pub use panic::is_catching_panics;
pub use render::{APPLICATION_JSON, APPLICATION_PROBLEM_JSON, RenderedError, prefers_problem_json};
#[cfg(feature = "axum")]
pub use request_body::is_request_body_cut;
pub use validation::{MAX_VIOLATIONS, MAX_VIOLATIONS_LEN, Violations};

// The Rust examples of the crate's guide compile and run as doc tests.
#[doc = include_str!("../../../docs/errors.md")]
#[cfg(doctest)]
pub struct ErrorsGuideDoctests;

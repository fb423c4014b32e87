//! axum integration: handlers return `Result<T, HttpError>`.

use crate::error::HttpError;

/// Renders the envelope with the ids of the current request context (set by periscope-trace's
/// server layer, or by [`ErrorLayer`](crate::ErrorLayer) used alone).
///
/// ```
/// use axum::{Router, routing::get, extract::Path};
/// use periscope_error::{ErrorClass, ErrorCode, ErrorLayer, HttpError, error_codes};
///
/// error_codes! {
///     /// The jobs service's codes.
///     pub const JOB_CODES = [
///         /// No job has this id.
///         JOB_NOT_FOUND = ErrorCode::new("job_not_found", ErrorClass::NotFound),
///     ];
/// }
///
/// async fn job(Path(id): Path<String>) -> Result<String, HttpError> {
///     Err(HttpError::new(JOB_NOT_FOUND, "No job has this id").with_detail("job_id", id))
/// }
///
/// let app: Router = Router::new().route("/jobs/{id}", get(job)).layer(ErrorLayer::new());
/// ```
impl axum::response::IntoResponse for HttpError {
    fn into_response(self) -> axum::response::Response {
        self.into_http_response()
    }
}

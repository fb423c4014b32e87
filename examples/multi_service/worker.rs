//! The worker service: processes the api's calls. `obs.layer()` around it continues the
//! request id and trace the api sent, so its lines carry the client's ids.

use axum::routing::post;
use axum::{Json, Router};
use periscope::error::HttpError;
use serde::Deserialize;
use serde_json::{Value, json};

/// The worker's routes.
pub fn routes() -> Router {
    Router::new().route("/v1/process", post(process))
}

#[derive(Deserialize)]
struct Work {
    text: String,
    #[serde(default)]
    fail: bool,
}

/// `POST /v1/process`: the text in upper case and its word count, or (with `fail`) a 500
/// envelope whose cause goes to this service's log only.
async fn process(Json(work): Json<Work>) -> Result<Json<Value>, HttpError> {
    tracing::info!(chars = work.text.chars().count(), "processing");
    if work.fail {
        return Err(HttpError::internal(std::io::Error::other(
            "simulated failure: the worker's model crashed on this input",
        )));
    }
    Ok(Json(json!({
        "upper": work.text.to_uppercase(),
        "words": work.text.split_whitespace().count(),
    })))
}

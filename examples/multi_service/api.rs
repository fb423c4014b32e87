//! The api service: takes a task, has the worker process it over HTTP, enqueues a job.

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::Request;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use periscope::context::RequestContext;
use periscope::error::{Decoder, HttpError, codes};
use periscope::{ClientLayer, ClientService};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

use super::jobs::JobQueue;

/// How long the api waits for the worker.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ApiState {
    pub worker: WorkerClient,
    pub queue: JobQueue,
}

/// The api's routes.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/tasks", post(create_task))
        .with_state(state)
}

#[derive(Deserialize)]
struct NewTask {
    text: String,
    /// Asks the worker to fail, to see a downstream failure reach the client.
    #[serde(default)]
    fail: bool,
}

/// `POST /v1/tasks`: the worker's result and the id of the job enqueued for it.
async fn create_task(
    State(state): State<ApiState>,
    Json(task): Json<NewTask>,
) -> Result<Json<Value>, HttpError> {
    tracing::info!(chars = task.text.len(), "task received");
    // The queue's place first: a full queue refuses before the worker does the work.
    let slot = state.queue.reserve()?;
    let result = state.worker.process(&task.text, task.fail).await?;
    let job_id = slot.enqueue(task.text);
    Ok(Json(json!({
        "request_id": RequestContext::current().map(|ctx| ctx.request_id.to_string()),
        "result": result,
        "job_id": job_id,
    })))
}

/// The worker's HTTP client, under `obs.client_layer()`: each call sends the request's
/// `x-request-id`, `traceparent` (with a client span of its own as the parent), `tracestate`
/// and `baggage`, and is counted and timed in `http_client_requests_total` and
/// `http_client_request_duration_seconds`.
#[derive(Clone)]
pub struct WorkerClient {
    client: ClientService<Client<HttpConnector, Full<Bytes>>>,
    base_url: String,
}

impl WorkerClient {
    pub fn new(base_url: String, layer: &ClientLayer) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            client: layer.layer(client),
            base_url,
        }
    }

    /// Calls `POST /v1/process`. A worker error becomes a 502 `upstream_error` whose details
    /// name the worker's code; the request id stays the client's.
    async fn process(&self, text: &str, fail: bool) -> Result<Value, HttpError> {
        let body = serde_json::to_vec(&json!({"text": text, "fail": fail}))?;
        let request = Request::post(format!("{}/v1/process", self.base_url))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = tokio::time::timeout(WORKER_TIMEOUT, self.client.clone().oneshot(request))
            .await
            .map_err(|_| {
                HttpError::new(codes::TIMEOUT, "The worker did not answer in time")
                    .with_detail("upstream", "worker")
            })?
            .map_err(|error| {
                HttpError::new(codes::UPSTREAM_ERROR, "The worker could not be reached")
                    .with_detail("upstream", "worker")
                    .with_source(error)
            })?;

        if response.status().is_success() {
            let body = response.into_body().collect().await?.to_bytes();
            return Ok(serde_json::from_slice(&body)?);
        }
        // The worker answered with an envelope: keep its code for the client and the log.
        let error = Decoder::new().decode_response(response).await;
        tracing::warn!(
            upstream_status = error.status().as_u16(),
            upstream_code = error.code(),
            "the worker failed"
        );
        Err(HttpError::new(
            codes::UPSTREAM_ERROR,
            format!("The worker failed: {}", error.message()),
        )
        .with_detail("upstream", "worker")
        .with_detail("upstream_status", error.status().as_u16())
        .with_detail("upstream_code", error.code()))
    }
}

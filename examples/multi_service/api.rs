//! The api service: takes a task, has the worker process it over HTTP, enqueues a job.

use std::str::FromStr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use periscope::context::RequestContext;
use periscope::error::{Decoder, HttpError, Violations, codes};
use periscope::{ClientLayer, ClientService, ConfigError, env};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

use super::jobs::JobQueue;

/// The most of a worker's successful answer the api reads.
const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// How long an idle connection to the worker is kept: below the worker's server's idle timeout
/// ([`periscope::DEFAULT_IDLE_TIMEOUT`], 75 s).
const WORKER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest text the api takes, in bytes. The worker's answer holds the text in upper case
/// (up to three times as many bytes, six once JSON escapes control characters): a longer text
/// would get an answer over [`MAX_RESULT_BYTES`], which the api would refuse after the worker
/// did the work, as the worker's failure.
const MAX_TEXT_BYTES: usize = 64 * 1024;

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
    tracing::info!(chars = task.text.chars().count(), "task received");
    if task.text.len() > MAX_TEXT_BYTES {
        let message = format!("text must be at most {MAX_TEXT_BYTES} bytes of UTF-8");
        let mut violations = Violations::new();
        violations.add("text", "too_long", message);
        violations.into_result()?;
    }
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

/// `WORKER_URL`: the worker the api calls, when it is not the in-process one.
pub fn worker_url() -> Result<Option<String>, ConfigError> {
    let url: Option<WorkerUrl> = env::optional(
        "WORKER_URL",
        "the worker's http:// URL, such as http://127.0.0.1:8002",
    )?;
    Ok(url.map(|url| url.0))
}

/// A worker's base URL: `http://host[:port]`, without a path (the api adds `/v1/process`).
struct WorkerUrl(String);

impl FromStr for WorkerUrl {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let uri: Uri = text.parse().map_err(|_| ())?;
        let plain = uri.scheme_str() == Some("http")
            && uri.authority().is_some()
            && matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/"));
        plain
            .then(|| WorkerUrl(text.trim_end_matches('/').to_owned()))
            .ok_or(())
    }
}

/// The worker's HTTP client, under `obs.client_layer()`: each call sends the request's
/// `x-request-id`, `traceparent` (with a client span of its own as the parent), `tracestate`
/// and `baggage`, and is counted and timed in `http_client_requests_total` and
/// `http_client_request_duration_seconds`.
#[derive(Clone)]
pub struct WorkerClient {
    client: ClientService<Client<HttpConnector, Full<Bytes>>>,
    base_url: String,
    timeout: Duration,
}

impl WorkerClient {
    /// A client of the worker at `base_url`, giving up on an answer not read whole within
    /// `timeout`.
    pub fn new(base_url: String, timeout: Duration, layer: &ClientLayer) -> Self {
        // Idle connections are given up before the worker's server closes them (periscope's
        // `Server` after 75 s; hyper-util keeps them 90 s by default): a call sent on one the
        // server is closing at that moment would fail as the worker's error.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(WORKER_IDLE_TIMEOUT)
            .build_http();
        Self {
            client: layer.layer(client),
            base_url,
            timeout,
        }
    }

    /// Calls `POST /v1/process`. A worker error becomes a 502 `upstream_error` whose details
    /// name the worker's code; the request id stays the client's. The whole exchange, the
    /// answer's body included, is bounded by the timeout: a worker that stalls after its head
    /// is a 504 `timeout` like one that never answers.
    async fn process(&self, text: &str, fail: bool) -> Result<Value, HttpError> {
        let body = serde_json::to_vec(&json!({"text": text, "fail": fail}))?;
        let request = Request::post(format!("{}/v1/process", self.base_url))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| {
                HttpError::new(codes::TIMEOUT, "The worker did not answer in time")
                    .with_detail("upstream", "worker")
            })?
    }

    /// One call, its answer read whole and turned into the result or the error to answer.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Value, HttpError> {
        let unusable = |message: &'static str| {
            HttpError::new(codes::UPSTREAM_ERROR, message).with_detail("upstream", "worker")
        };
        let response = self
            .client
            .clone()
            .oneshot(request)
            .await
            .map_err(|error| unusable("The worker could not be reached").with_source(error))?;

        if response.status().is_success() {
            // The worker's fault, not the client's: a cut or oversized answer, or one that is
            // not JSON, is a 502 like a worker error (the cause is logged, never sent).
            let body = Limited::new(response.into_body(), MAX_RESULT_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    unusable("The worker's answer could not be read").with_source(error)
                })?
                .to_bytes();
            return serde_json::from_slice(&body).map_err(|error| {
                unusable("The worker's answer is not its result").with_source(error)
            });
        }
        // The worker answered with an envelope: keep its code for the client and the log.
        let error = Decoder::new().decode_response(response).await;
        tracing::warn!(
            upstream_status = error.status().as_u16(),
            upstream_code = error.code(),
            upstream_message = error.message(),
            "the worker failed"
        );
        // A redirect is the worker's deployment, not the client's request (this client follows
        // none): where it points, an address of the worker's, stays in the log line above.
        let message = if error.status().is_redirection() {
            format!(
                "The worker redirected the call (HTTP {}), which is not followed",
                error.status().as_u16()
            )
        } else {
            format!("The worker failed: {}", error.message())
        };
        let mut failed = HttpError::new(codes::UPSTREAM_ERROR, message)
            .with_detail("upstream", "worker")
            .with_detail("upstream_status", error.status().as_u16())
            .with_detail("upstream_code", error.code());
        // A worker that refused the request (4xx) would refuse it again, and one that
        // redirected it would redirect it again: retrying helps only where the worker says so
        // (429), and then no sooner than it says.
        if (error.status().is_client_error() || error.status().is_redirection())
            && !error.is_retryable()
        {
            failed = failed.with_retryable(false).with_help(
                "The worker refused or redirected this request: sent again unchanged, it fails again",
            );
        }
        if let Some(delay) = error.retry_after() {
            failed = failed.with_retry_after(delay);
        }
        Err(failed)
    }
}

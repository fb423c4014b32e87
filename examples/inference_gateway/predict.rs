//! The gateway's routes: `POST /predict` and `GET /v1/models`, with the model's own metrics.

use std::error::Error;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use periscope::context::RequestContext;
use periscope::error::{ErrorClass, ErrorCode, HttpError, codes, is_request_body_cut};
use periscope::metrics::prometheus_client::metrics::counter::Counter;
use periscope::metrics::prometheus_client::metrics::histogram::Histogram;
use periscope::metrics::{Caps, GuardedFamily, MetricsError, MetricsRegistry};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;

use super::model::{self, Input, ModelHandle};
use super::upload::{Paced, min_pace, stalled};

/// The largest request body `/predict` reads.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// The largest image side decoded: a small file can claim a huge image.
const MAX_IMAGE_SIDE: u32 = 8192;
/// The most memory a decoder may allocate for one image.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// The gateway's own error code: the body is not an image the model can read.
pub const INVALID_IMAGE: ErrorCode = ErrorCode::new("invalid_image", ErrorClass::Validation)
    .with_message("The body is not a PNG or JPEG image")
    .with_help(
        "Send a PNG or JPEG image of at most 8192x8192 pixels, as the body or as the `image` \
         field of a multipart form",
    );

/// The gateway's own error code: the upload paused too long or trickled (see
/// [`upload`](crate::upload)); its share of the upload buffer goes back to the others.
pub const UPLOAD_STALLED: ErrorCode = ErrorCode::new("upload_stalled", ErrorClass::Validation)
    .with_status(StatusCode::REQUEST_TIMEOUT)
    .with_retryable(true)
    .with_message("The upload stalled")
    .with_help(
        "Send the body without pausing: an upload may not pause longer than UPLOAD_IDLE_S \
         seconds (5 by default), and after that must keep the pace that brings it in within \
         the request timeout",
    );

/// The inference histogram's bounds, in seconds: 50 µs to 5 s, about three to a decade (a
/// forward pass is far shorter than a request). Written out so that the `le` labels read as
/// typed (`le="0.0015"`); computed bounds carry float noise (`0.00015000000000000001`) that a
/// query for `le="0.00015"` never matches.
const INFERENCE_BUCKETS: [f64; 11] = [
    0.000_05, 0.000_15, 0.000_5, 0.001_5, 0.005, 0.015, 0.05, 0.15, 0.5, 1.5, 5.0,
];

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub model: ModelHandle,
    pub metrics: ModelMetrics,
    /// Decodes that may run at once: one per CPU.
    pub decodes: Arc<Semaphore>,
    /// Memory for decoded images, in MiB: a 250 KiB PNG can ask for a 256 MiB image, so without
    /// a bound a burst of them (one per CPU, on a host without a CPU limit) takes the memory of
    /// the host. A decode reserves what the image's header says it will take.
    pub decode_memory: Arc<Semaphore>,
    /// Memory for request bodies, in KiB: a body is held whole until its decode ends, so
    /// without a bound a crowd of slow uploads holds 10 MiB each. A request reserves its
    /// declared length (the 10 MiB limit without `Content-Length`) before reading, and waits
    /// here, its bytes left unread on the socket, until its share is free; the request timeout
    /// (30 s in this template) bounds both the wait and how long a share is held.
    pub uploads: Arc<Semaphore>,
    /// The longest pause an upload may take (and the window before its pace is checked).
    pub upload_idle: Duration,
    /// The request timeout, which the pace an upload must keep is reckoned against.
    pub request_timeout: Option<Duration>,
}

impl AppState {
    /// The state with one decode at a time per CPU, `upload_mib` MiB of bodies in memory at
    /// once (at least [`MAX_BODY_BYTES`], so that any accepted body fits) and `decode_mib` MiB
    /// of decoded images (at least [`MAX_DECODE_BYTES`], so that any accepted image fits).
    pub fn new(
        model: ModelHandle,
        metrics: ModelMetrics,
        upload_mib: usize,
        decode_mib: usize,
        upload_idle: Duration,
        request_timeout: Option<Duration>,
    ) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            model,
            metrics,
            decodes: Arc::new(Semaphore::new(cpus)),
            decode_memory: Arc::new(Semaphore::new(decode_mib.max(MAX_DECODE_MIB as usize))),
            uploads: Arc::new(Semaphore::new((upload_mib * KIB).max(MAX_BODY_BYTES / KIB))),
            upload_idle,
            request_timeout,
        }
    }
}

const KIB: usize = 1024;

/// [`MAX_DECODE_BYTES`] in MiB.
const MAX_DECODE_MIB: u32 = (MAX_DECODE_BYTES >> 20) as u32;

/// The MiB a decode of `body` may take, from the image's header: its pixels at 8 bytes each
/// (16-bit RGBA, the widest PNG), at most what the decoder may allocate. A header that cannot
/// be read, or that claims more than [`MAX_IMAGE_SIDE`], costs 1: its decode fails at once.
fn decode_mib(body: &[u8]) -> u32 {
    let dimensions = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok());
    let Some((width, height)) = dimensions else {
        return 1;
    };
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return 1;
    }
    let bytes = u64::from(width) * u64::from(height) * 8;
    let mib = bytes.div_ceil(1 << 20).clamp(1, u64::from(MAX_DECODE_MIB));
    u32::try_from(mib).unwrap_or(MAX_DECODE_MIB)
}

/// The model's metrics, both through the cardinality guard: a new model version or label can
/// never grow the series without bound.
#[derive(Clone)]
pub struct ModelMetrics {
    inference: GuardedFamily<Histogram, 1>,
    predictions: GuardedFamily<Counter, 1>,
}

impl ModelMetrics {
    /// Registers `model_inference_duration_seconds{model}` and `model_predictions_total{label}`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let inference = registry.guarded_family_with(
            "model_inference_duration_seconds",
            "Time of the model's forward pass, by model",
            ["model"],
            Caps::default().label("model", 8),
            || Histogram::new(INFERENCE_BUCKETS),
        )?;
        let predictions = registry.guarded_family(
            "model_predictions_total",
            "Predictions served, by predicted label",
            ["label"],
            Caps::default().label("label", 32),
        )?;
        Ok(Self {
            inference,
            predictions,
        })
    }
}

/// The routes, with `/predict`'s body limit.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/predict",
            post(predict).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/v1/models", get(list_models))
        .with_state(state)
}

/// `POST /predict`: classifies the image.
async fn predict(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Value>, HttpError> {
    let (body, upload) = read_image(request, &state).await?;
    let model = state.model.get().await.map_err(|error| {
        HttpError::new(codes::SERVICE_UNAVAILABLE, "The model is not available").with_source(error)
    })?;

    // Waits its turn, then for the memory its image takes (a decode slot is cheap to hold
    // while waiting; memory is not): the request's own timeout bounds both waits.
    let decoding = state
        .decodes
        .clone()
        .acquire_owned()
        .await
        .map_err(HttpError::internal)?;
    let memory = state
        .decode_memory
        .clone()
        .acquire_many_owned(decode_mib(&body))
        .await
        .map_err(HttpError::internal)?;
    let input = preprocess(body, [decoding, memory, upload]).await?;

    // The stand-in's forward pass takes microseconds, so it runs here, on the async thread. A
    // real one takes milliseconds of CPU (or blocks on a GPU) and would stall every request on
    // this thread, probes included: run it on the blocking pool as `preprocess` runs the decode,
    // holding a `decodes` slot so that at most one runs per CPU.
    let span = tracing::info_span!("inference", model = model::NAME);
    let started = Instant::now();
    let scores = span.in_scope(|| model.infer(&input));
    state
        .metrics
        .inference
        .get_or_create([model::NAME])
        .observe(started.elapsed().as_secs_f64());

    let (prediction, confidence) = tracing::info_span!("postprocess").in_scope(|| {
        let prediction = model.postprocess(&scores);
        // Four decimals, in the log line as in the answer: more would only show f32 rounding.
        let confidence = (f64::from(prediction.confidence) * 1e4).round() / 1e4;
        state
            .metrics
            .predictions
            .get_or_create([prediction.label])
            .inc();
        tracing::info!(label = prediction.label, confidence, "prediction");
        (prediction, confidence)
    });

    // The same id as the `x-request-id` header and every log line of this request.
    let request_id = RequestContext::current().map(|ctx| ctx.request_id.to_string());
    Ok(Json(json!({
        "label": prediction.label,
        "confidence": confidence,
        "model": {"name": model::NAME, "version": model::VERSION},
        "request_id": request_id,
    })))
}

/// `GET /v1/models`: what is served (cheap: no model work).
async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "models": [{
            "name": model::NAME,
            "version": model::VERSION,
            "labels": model::labels().collect::<Vec<_>>(),
            "loaded": state.model.is_loaded(),
        }]
    }))
}

/// The image bytes: the body, or the `image` field (else the first file) of a multipart form,
/// with the share of `uploads` they hold until their decode ends.
async fn read_image(
    request: Request,
    state: &AppState,
) -> Result<(Bytes, OwnedSemaphorePermit), HttpError> {
    // Refuse a declared oversize before reading a byte: a client that sent
    // `Expect: 100-continue` (curl does for large files) never uploads it.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > MAX_BODY_BYTES as u64) {
        return Err(too_large().with_detail("content_length", length));
    }
    // The declared length, else the most a body may be (the limit stops it there).
    let kib = declared
        .map_or(MAX_BODY_BYTES, |length| length as usize)
        .div_ceil(KIB);
    let upload = state
        .uploads
        .clone()
        .acquire_many_owned(kib.max(1) as u32)
        .await
        .map_err(HttpError::internal)?;
    // The share is held while the body comes: a body that stalls, or falls behind the pace it
    // needs to arrive within the request timeout, gives it back.
    let idle = state.upload_idle;
    let window = state
        .request_timeout
        .map(|timeout| timeout.saturating_sub(idle));
    let pace = min_pace(declared, window);
    let request = request.map(|body| axum::body::Body::new(Paced::new(body, idle, pace)));
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        // Media types are case-insensitive: `Multipart/Form-Data` is a form too.
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/form-data"));
    let image = if multipart {
        from_multipart(request).await?
    } else {
        Bytes::from_request(request, &())
            .await
            .map_err(|rejection| {
                body_error(rejection.status(), rejection.body_text(), &rejection)
            })?
    };
    if image.is_empty() {
        return Err(HttpError::from(INVALID_IMAGE).with_message("The request has no image"));
    }
    Ok((image, upload))
}

/// The form's `image` field, wherever it is; without one, the first file. A file before the
/// `image` field is kept until the form ends: the upload's share covers the whole body.
async fn from_multipart(request: Request) -> Result<Bytes, HttpError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| body_error(rejection.status(), rejection.body_text(), &rejection))?;
    let multipart_error =
        |e: axum::extract::multipart::MultipartError| body_error(e.status(), e.body_text(), &e);
    let mut first_file = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        if field.name() == Some("image") {
            return field.bytes().await.map_err(multipart_error);
        }
        if first_file.is_none() && field.file_name().is_some() {
            first_file = Some(field.bytes().await.map_err(multipart_error)?);
        }
    }
    first_file.ok_or_else(|| {
        HttpError::from(INVALID_IMAGE).with_message("The multipart form has no `image` field")
    })
}

fn too_large() -> HttpError {
    HttpError::new(
        codes::PAYLOAD_TOO_LARGE,
        "The image is larger than the 10 MiB limit",
    )
    .with_detail("limit_bytes", MAX_BODY_BYTES)
}

/// A body that could not be read: stalled, cut off by the client, too large, or malformed.
fn body_error(status: StatusCode, text: String, error: &(dyn Error + 'static)) -> HttpError {
    if let Some(stall) = stalled(error) {
        HttpError::from(UPLOAD_STALLED)
            .with_detail("received_bytes", stall.received)
            .with_detail("after_ms", stall.after.as_millis() as u64)
    } else if is_request_body_cut(error) {
        // The client went away mid-upload: not a malformed request.
        HttpError::from(codes::REQUEST_BODY_INCOMPLETE)
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        HttpError::new(codes::INVALID_REQUEST, text)
    }
}

/// Decodes the image and makes the model's input, on the blocking pool: decoding a large JPEG
/// takes milliseconds of CPU that must not stall other requests.
///
/// The decode holds `permits` (its decode slot, its image's memory and its body's) until it ends: a client
/// that disconnects (or a request that times out) drops this future, but not the decode
/// already running on the pool, so releasing them with the future would let the next request
/// start another decode, or buffer another body, beside it.
async fn preprocess(body: Bytes, permits: [OwnedSemaphorePermit; 3]) -> Result<Input, HttpError> {
    // Numbers as `i64`: an unsigned field is exported to OpenTelemetry as text.
    let span = tracing::info_span!(
        "preprocess",
        bytes = body.len() as i64,
        format = Empty,
        width = Empty,
        height = Empty
    );
    tokio::task::spawn_blocking(move || {
        let _permits = permits;
        span.in_scope(|| {
            let (format, image) = decode(&body)?;
            let span = tracing::Span::current();
            span.record("format", format.extensions_str().first().copied());
            span.record("width", i64::from(image.width()));
            span.record("height", i64::from(image.height()));
            tracing::debug!("image decoded");
            Ok(model::Model::preprocess(&image))
        })
    })
    .await
    .map_err(HttpError::internal)?
}

fn decode(body: &[u8]) -> Result<(ImageFormat, DynamicImage), HttpError> {
    let reader = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .map_err(HttpError::internal)?;
    let format = match reader.format() {
        Some(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => format,
        _ => return Err(HttpError::from(INVALID_IMAGE)),
    };
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|error| {
        HttpError::from(INVALID_IMAGE)
            .with_message(format!("The image could not be decoded: {error}"))
            .with_detail("format", format.extensions_str().first().copied())
    })?;
    Ok((format, image))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(width, height)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// A decode reserves what its image's header says it takes, not what its file weighs.
    #[test]
    fn a_decode_reserves_the_memory_its_header_claims() {
        assert_eq!(decode_mib(&png(16, 16)), 1);
        // 640 × 480 × 8 bytes = 2.3 MiB.
        assert_eq!(decode_mib(&png(640, 480)), 3);
        // 2048 × 2048 × 8 = 32 MiB, from a file of a few KiB.
        let large = png(2048, 2048);
        assert!(large.len() < 1 << 20, "{}", large.len());
        assert_eq!(decode_mib(&large), 32);
        // Beyond the side limit, or not an image: its decode fails at once.
        assert_eq!(decode_mib(&png(MAX_IMAGE_SIDE + 1, 1)), 1);
        assert_eq!(decode_mib(b"not an image"), 1);
        assert_eq!(decode_mib(b""), 1);
    }
}

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
use image::error::{
    ImageFormatHint, LimitError, LimitErrorKind, UnsupportedError, UnsupportedErrorKind,
};
use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, ImageResult, Limits,
};
use periscope::context::RequestContext;
use periscope::error::{ErrorClass, ErrorCode, HttpError, codes, is_request_body_cut};
use periscope::metrics::prometheus_client::metrics::counter::Counter;
use periscope::metrics::prometheus_client::metrics::histogram::Histogram;
use periscope::metrics::{Caps, GuardedFamily, MetricsError, MetricsRegistry};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;

use super::model::{self, Input, ModelHandle};
use super::upload::{Paced, min_pace, stalled, upload_window};

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
        "Send a PNG or JPEG image of at most 8192x8192 pixels and 256 MiB decoded (an 8-bit \
         PNG or a baseline JPEG of that size fits; a 16-bit colour PNG, or a progressive colour \
         JPEG over about 30 megapixels, does not), as the body or as the `image` field of a \
         multipart form",
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
    /// The request timeout, which the pace an upload must keep is reckoned against: what is
    /// left of it once the upload has its share of the buffer.
    pub request_timeout: Option<Duration>,
}

impl AppState {
    /// The state with one decode at a time per CPU, `upload_mib` MiB of bodies in memory at
    /// once (at least [`MAX_BODY_BYTES`], so that any accepted body fits) and `decode_mib` MiB
    /// of decoded images (at least [`MAX_RESERVED_MIB`], so that any accepted image fits).
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
            decode_memory: Arc::new(Semaphore::new(decode_mib.max(MAX_RESERVED_MIB as usize))),
            uploads: Arc::new(Semaphore::new((upload_mib * KIB).max(MAX_BODY_BYTES / KIB))),
            upload_idle,
            request_timeout,
        }
    }
}

const KIB: usize = 1024;

/// [`MAX_DECODE_BYTES`] in MiB.
const MAX_DECODE_MIB: u32 = (MAX_DECODE_BYTES >> 20) as u32;

/// The most one decode reserves: the largest image and the decoder's allowance (260 MiB).
pub const MAX_RESERVED_MIB: u32 = MAX_DECODE_MIB + (DECODER_ALLOWANCE >> 20) as u32;

/// What a decoder may allocate besides the pixels, to read the header and to decode: a PNG's
/// chunks before its pixels (its colour profile, compressed, can inflate to hundreds of MiB
/// from a file of a few hundred KiB; one larger is left out) and its rows. The pixels, which
/// the header announces, are reserved apart.
const DECODER_ALLOWANCE: u64 = 4 * 1024 * 1024;

/// The bounds of a read of an image: its sides, and what the decoder may allocate.
fn limits(max_alloc: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(max_alloc);
    limits
}

/// The decoder of a PNG or JPEG `body`, its header read within [`DECODER_ALLOWANCE`].
fn decoder(body: &[u8]) -> ImageResult<(ImageFormat, Box<dyn ImageDecoder + '_>)> {
    let mut reader = ImageReader::new(Cursor::new(body)).with_guessed_format()?;
    let format = match reader.format() {
        Some(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => format,
        _ => {
            return Err(ImageError::Unsupported(
                UnsupportedError::from_format_and_kind(
                    ImageFormatHint::Unknown,
                    UnsupportedErrorKind::Format(ImageFormatHint::Unknown),
                ),
            ));
        }
    };
    reader.limits(limits(DECODER_ALLOWANCE));
    Ok((format, Box::new(reader.into_decoder()?)))
}

/// The MiB a decode of `body` takes, from the image's header: the decoded pixels as they come,
/// and [`DECODER_ALLOWANCE`]; for a JPEG also the coefficients a decode keeps (see
/// [`jpeg_coefficient_bytes`]) and the file, which the decoder copies first. Reading the header
/// takes milliseconds of CPU (a JPEG's copy, a PNG's chunks checked): call it on the blocking
/// pool. A header that cannot be read, or that claims more than [`MAX_IMAGE_SIDE`], costs 1:
/// its decode fails at once. An image that would take more than [`MAX_DECODE_BYTES`] is
/// refused.
fn decode_mib(body: &[u8]) -> Result<u32, HttpError> {
    let cost = decoder(body).ok().map(|(format, decoder)| {
        let pixels = decoder.total_bytes();
        match format {
            ImageFormat::Jpeg => {
                // A header the decoder reads but the coefficient count does not: every
                // coefficient of four components, the most any JPEG keeps.
                let (width, height) = decoder.dimensions();
                let coefficients = jpeg_coefficient_bytes(body)
                    .unwrap_or_else(|| all_coefficients(4, width, height));
                pixels
                    .saturating_add(coefficients)
                    .saturating_add(body.len() as u64)
            }
            _ => pixels,
        }
    });
    let Some(bytes) = cost else {
        return Ok(1);
    };
    // The image against its budget, the decoder's own buffers apart: an 8-bit RGBA image of
    // the largest sides takes the whole 256 MiB and is decoded.
    if bytes > MAX_DECODE_BYTES {
        let mib = bytes.div_ceil(1 << 20);
        return Err(HttpError::from(INVALID_IMAGE)
            .with_message(format!(
                "The image is too large to decode: it takes about {mib} MiB, over the \
                 {MAX_DECODE_MIB} MiB one decode may take"
            ))
            .with_detail("decode_mib", mib));
    }
    let mib = bytes.saturating_add(DECODER_ALLOWANCE).div_ceil(1 << 20);
    Ok(u32::try_from(mib).unwrap_or(MAX_RESERVED_MIB))
}

/// What a decode of a JPEG keeps of its coefficients: nothing for a baseline file whose first
/// scan holds every component (what cameras and phones write: decoded a row of blocks at a
/// time); else, as a progressive file, 16 bits for each component of each pixel (see
/// [`all_coefficients`]). The header is read as the image decoder reads it, leniently (an
/// `APP14` segment not from Adobe, fill bytes between segments).
fn jpeg_coefficient_bytes(body: &[u8]) -> Option<u64> {
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut header = zune_jpeg::JpegDecoder::new_with_options(body, options);
    header.decode_headers().ok()?;
    let info = header.info()?;
    if !info.sof.is_progressive() && first_scan_components(body) == Some(info.components) {
        return Some(0);
    }
    Some(all_coefficients(
        info.components,
        u32::from(info.width),
        u32::from(info.height),
    ))
}

/// 16 bits for each of `components` of each pixel, the sides rounded up to whole 16-pixel
/// blocks (subsampled components take less; counted in full, as a CMYK file's four are).
fn all_coefficients(components: u8, width: u32, height: u32) -> u64 {
    let block = |side: u32| u64::from(side).next_multiple_of(16);
    2 * u64::from(components) * block(width) * block(height)
}

/// How many components the first scan of a JPEG holds (`None` when its markers cannot be
/// walked to it): a walk over the segments before the first `SOS`.
fn first_scan_components(jpeg: &[u8]) -> Option<u8> {
    let mut at = 2;
    loop {
        // Fill bytes before a marker.
        while jpeg.get(at) == Some(&0xFF) && jpeg.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if jpeg.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *jpeg.get(at + 1)?;
        at += 2;
        match marker {
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => {}
            // Start of scan: its length, then the number of its components.
            0xDA => return jpeg.get(at + 2).copied(),
            _ => {
                let length = u16::from_be_bytes([*jpeg.get(at)?, *jpeg.get(at + 1)?]);
                at += usize::from(length);
            }
        }
    }
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
    // The header is read off the async threads, holding the decode slot (moved in and back,
    // as `preprocess` does: a request dropped meanwhile does not free it while the read runs).
    let header = body.clone();
    let (mib, decoding) = tokio::task::spawn_blocking(move || (decode_mib(&header), decoding))
        .await
        .map_err(HttpError::internal)?;
    let mib = mib?;
    let memory = state
        .decode_memory
        .clone()
        .acquire_many_owned(mib)
        .await
        .map_err(HttpError::internal)?;
    let input = preprocess(body, mib, [decoding, memory, upload]).await?;

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
    let waiting = tokio::time::Instant::now();
    let upload = state
        .uploads
        .clone()
        .acquire_many_owned(kib.max(1) as u32)
        .await
        .map_err(HttpError::internal)?;
    // The share is held while the body comes: a body that stalls, or falls behind the pace it
    // needs to arrive within the request timeout, gives it back.
    let idle = state.upload_idle;
    // The request timeout counted the wait for the share: the pace is set on what is left.
    let window = upload_window(state.request_timeout, waiting.elapsed(), idle);
    // Paced on the share it holds: a body without a length (chunked) holds a share of the
    // most a body may be, and must keep the pace of that, or trickle past the defence.
    let pace = min_pace(Some((kib * KIB) as u64), window);
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
async fn preprocess(
    body: Bytes,
    mib: u32,
    permits: [OwnedSemaphorePermit; 3],
) -> Result<Input, HttpError> {
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
            let (format, image) = decode(&body, u64::from(mib) << 20)?;
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

/// Decodes `body`, allocating at most `max_bytes` (the memory reserved for it) for its pixels,
/// and at most [`DECODER_ALLOWANCE`] besides.
fn decode(body: &[u8], max_bytes: u64) -> Result<(ImageFormat, DynamicImage), HttpError> {
    let undecodable = |format: Option<ImageFormat>, error: ImageError| {
        HttpError::from(INVALID_IMAGE)
            .with_message(format!("The image could not be decoded: {error}"))
            .with_detail(
                "format",
                format.and_then(|format| format.extensions_str().first().copied()),
            )
    };
    let (format, decoder) = match decoder(body) {
        Ok(found) => found,
        Err(ImageError::Unsupported(_)) => return Err(HttpError::from(INVALID_IMAGE)),
        Err(error) => return Err(undecodable(None, error)),
    };
    // The pixels are allocated by the image, outside the decoder's allowance: bounded here.
    if decoder.total_bytes() > max_bytes.min(MAX_DECODE_BYTES) {
        let over = LimitError::from_kind(LimitErrorKind::InsufficientMemory);
        return Err(undecodable(Some(format), ImageError::Limits(over)));
    }
    let image =
        DynamicImage::from_decoder(decoder).map_err(|error| undecodable(Some(format), error))?;
    Ok((format, image))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A black RGB image of `width` × `height` in `format`.
    fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(width, height)
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        encoded(width, height, ImageFormat::Png)
    }

    /// A PNG chunk: its length, type, data and the CRC of type and data.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let len = u32::try_from(data.len()).unwrap().to_be_bytes();
        [&len[..], kind, data, &crc.sum().to_be_bytes()].concat()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A PNG of 16-bit RGBA pixels, all zero, with `before_pixels` chunks after its header.
    /// A PNG's header alone (no pixels) for an image of `colour` type and bit `depth`.
    fn png_with(width: u32, height: u32, colour: u8, depth: u8) -> Vec<u8> {
        let mut ihdr = [width.to_be_bytes(), height.to_be_bytes()].concat();
        ihdr.extend([depth, colour, 0, 0, 0]);
        [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"IDAT", &zlib(&[])),
            &chunk(b"IEND", &[]),
        ]
        .concat()
    }

    fn rgba16_png(width: u32, height: u32, before_pixels: &[Vec<u8>], rows: bool) -> Vec<u8> {
        let mut ihdr = [width.to_be_bytes(), height.to_be_bytes()].concat();
        ihdr.extend([16, 6, 0, 0, 0]);
        // Each row: its filter byte, then 8 bytes a pixel. Left out, only the header is whole.
        let row = 1 + 8 * width as usize;
        let pixels = if rows {
            vec![0; row * height as usize]
        } else {
            Vec::new()
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        before_pixels.iter().for_each(|extra| png.extend(extra));
        png.extend(chunk(b"IDAT", &zlib(&pixels)));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    /// A decode reserves what its image's header says it takes, not what its file weighs.
    #[test]
    fn a_decode_reserves_the_memory_its_header_claims() {
        let mib = |body: &[u8]| decode_mib(body).unwrap();
        // The pixels' bytes, and the decoder's 4 MiB.
        assert_eq!(mib(&png(16, 16)), 5);
        // 2048 × 2048 × 3 bytes = 12 MiB, from a file of a few KiB.
        let large = png(2048, 2048);
        assert!(large.len() < 1 << 20, "{}", large.len());
        assert_eq!(mib(&large), 16);
        // A baseline JPEG (one scan of its three components, as cameras write them) keeps
        // no coefficients: its 3 MiB of pixels, its file, which its decoder copies, and the
        // decoder's 4 MiB.
        let jpeg = encoded(1024, 1024, ImageFormat::Jpeg);
        let expected = ((7 << 20) + jpeg.len() as u64).div_ceil(1 << 20);
        assert_eq!(u64::from(mib(&jpeg)), expected);
        // Beyond the side limit, or not an image: its decode fails at once.
        assert_eq!(mib(&png(MAX_IMAGE_SIDE + 1, 1)), 1);
        assert_eq!(mib(b"not an image"), 1);
        assert_eq!(mib(b""), 1);
    }

    /// A baseline CMYK JPEG of `width` × `height` (multiples of 8), every block zero: four
    /// components, one quantization table, and Huffman tables of one code each (a zero DC
    /// difference, an end of block), so each block is two bits, all zero. Interleaved, one
    /// scan holds the four components; else each has a scan of its own.
    fn cmyk_jpeg(width: u16, height: u16, interleaved: bool) -> Vec<u8> {
        let segment = |marker: u8, body: &[u8]| {
            let length = u16::try_from(body.len() + 2).unwrap().to_be_bytes();
            [&[0xFF, marker][..], &length, body].concat()
        };
        let [h1, h0] = height.to_be_bytes();
        let [w1, w0] = width.to_be_bytes();
        let mut frame = vec![8, h1, h0, w1, w0, 4];
        for component in 1..=4 {
            frame.extend([component, 0x11, 0]);
        }
        let scan = |components: &[u8]| {
            let mut scan = vec![u8::try_from(components.len()).unwrap()];
            for &component in components {
                scan.extend([component, 0x00]);
            }
            scan.extend([0, 63, 0]);
            scan
        };
        let one_code = |class: u8, symbol: u8| {
            let mut table = vec![class, 1];
            table.extend([0; 15]);
            table.push(symbol);
            table
        };
        let blocks = usize::from(width / 8) * usize::from(height / 8);
        let mut jpeg = [
            vec![0xFF, 0xD8],
            segment(0xDB, &[[0].as_slice(), &[1; 64]].concat()),
            segment(0xC0, &frame),
            segment(0xC4, &one_code(0x00, 0)),
            segment(0xC4, &one_code(0x10, 0)),
        ]
        .concat();
        let scans: Vec<Vec<u8>> = if interleaved {
            vec![vec![1, 2, 3, 4]]
        } else {
            (1..=4).map(|component| vec![component]).collect()
        };
        for components in scans {
            jpeg.extend(segment(0xDA, &scan(&components)));
            jpeg.extend(vec![0; (blocks * components.len() * 2).div_ceil(8)]);
        }
        jpeg.extend([0xFF, 0xD9]);
        jpeg
    }

    /// A CMYK JPEG is decoded to RGB (3 bytes a pixel) from four components, whose
    /// coefficients a decode keeps when its first scan lacks some (as a progressive decode
    /// does): 8 bytes a pixel, not the 6 of its output's three channels. With all four in its
    /// first scan, none are kept.
    #[test]
    fn a_cmyk_jpeg_reserves_the_coefficients_of_its_four_components() {
        let scans = cmyk_jpeg(512, 512, false);
        assert_eq!(first_scan_components(&scans), Some(1));
        assert_eq!(jpeg_coefficient_bytes(&scans), Some(2 * 4 * 512 * 512));
        // 768 KiB of RGB pixels, 2 MiB of coefficients, the file, the decoder's 4 MiB.
        let expected = ((3 << 18) + (2 << 20) + (4 << 20) + scans.len() as u64).div_ceil(1 << 20);
        assert_eq!(u64::from(decode_mib(&scans).unwrap()), expected);
        let (_, image) = decode(&scans, expected << 20).unwrap();
        assert_eq!((image.width(), image.height()), (512, 512));

        let one_scan = cmyk_jpeg(512, 512, true);
        assert_eq!(first_scan_components(&one_scan), Some(4));
        assert_eq!(jpeg_coefficient_bytes(&one_scan), Some(0));
        let expected = ((3 << 18) + (4 << 20) + one_scan.len() as u64).div_ceil(1 << 20);
        assert_eq!(u64::from(decode_mib(&one_scan).unwrap()), expected);
        let (_, image) = decode(&one_scan, expected << 20).unwrap();
        assert_eq!((image.width(), image.height()), (512, 512));
    }

    /// An `APP14` segment not from Adobe (photo tools write their own there) is read past as
    /// the image decoder reads it: the file is reserved for and decoded as without it (it was
    /// reserved 1 MiB, as if its decode would fail at once, and the decode then failed for
    /// want of memory).
    #[test]
    fn a_jpeg_with_a_foreign_app14_segment_is_reserved_for_in_full() {
        let plain = encoded(1024, 1024, ImageFormat::Jpeg);
        let mut app14 = vec![0xFF, 0xEE, 0x00, 0x10];
        app14.extend(b"http://ns.exam.");
        app14.truncate(4 + 14);
        let spliced = [&plain[..2], &app14, &plain[2..]].concat();
        let expected = ((7 << 20) + spliced.len() as u64).div_ceil(1 << 20);
        assert_eq!(u64::from(decode_mib(&spliced).unwrap()), expected);
        let (_, image) = decode(&spliced, expected << 20).unwrap();
        assert_eq!((image.width(), image.height()), (1024, 1024));
    }

    /// An image that would take more than one decode may is refused before any decode.
    #[test]
    fn an_image_over_the_decode_budget_is_refused_from_its_header() {
        // 8192 × 4200 × 8 bytes = 262.5 MiB, in a file of a few hundred bytes.
        let error = decode_mib(&rgba16_png(MAX_IMAGE_SIDE, 4200, &[], false)).unwrap_err();
        assert_eq!(error.code(), INVALID_IMAGE);
        assert!(
            error.message().contains("too large to decode"),
            "{}",
            error.message()
        );
        assert_eq!(error.details().unwrap()["decode_mib"], 263);
    }

    /// An 8-bit RGBA image of the largest sides takes exactly the decode budget, 256 MiB: it
    /// is decoded, with the decoder's allowance reserved besides; a 16-bit one is not.
    #[test]
    fn an_rgba_image_of_the_largest_sides_fits_the_decode_budget() {
        let rgba8 = png_with(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, 6, 8);
        assert_eq!(decode_mib(&rgba8).unwrap(), MAX_RESERVED_MIB);
        let over = png_with(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, 6, 16);
        assert_eq!(
            decode_mib(&over).unwrap_err().details().unwrap()["decode_mib"],
            512
        );
    }

    /// A colour profile that inflates to 16 MiB in a 1 × 1 PNG, and one of 8 MiB beside 8 MiB
    /// of pixels: the header is read, and the image decoded, within the decoder's allowance,
    /// which leaves such a profile out; the pixels are reserved apart.
    #[test]
    fn a_compressed_colour_profile_cannot_outgrow_the_memory_reserved() {
        let profile_read = |body: &[u8], max_alloc: Option<u64>| {
            let mut decoder = match max_alloc {
                Some(max_alloc) => {
                    let mut reader = ImageReader::new(Cursor::new(body))
                        .with_guessed_format()
                        .unwrap();
                    reader.limits(limits(max_alloc));
                    Box::new(reader.into_decoder().unwrap())
                }
                None => decoder(body).unwrap().1,
            };
            decoder.icc_profile().unwrap().map(|profile| profile.len())
        };
        let profile = [&b"bomb\0\0"[..], &zlib(&vec![0; 16 << 20])].concat();
        let bomb = rgba16_png(1, 1, &[chunk(b"iCCP", &profile)], true);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        // Under the decoder's whole budget the profile is inflated, all 16 MiB of it.
        assert_eq!(profile_read(&bomb, Some(MAX_DECODE_BYTES)), Some(16 << 20));
        assert_eq!(profile_read(&bomb, None), None);
        let reserved = decode_mib(&bomb).unwrap();
        assert_eq!(reserved, 5);
        let (_, image) = decode(&bomb, u64::from(reserved) << 20).unwrap();
        assert_eq!((image.width(), image.height()), (1, 1));

        // 1024 × 1024 × 8 bytes of pixels reserved: a profile as large again is left out, not
        // inflated beside them.
        let profile = [&b"big\0\0"[..], &zlib(&vec![0; 8 << 20])].concat();
        let large = rgba16_png(1024, 1024, &[chunk(b"iCCP", &profile)], true);
        let reserved = decode_mib(&large).unwrap();
        assert_eq!(reserved, 12);
        assert_eq!(
            profile_read(&large, Some(u64::from(reserved) << 20)),
            Some(8 << 20),
            "what the whole reservation would let the decoder inflate"
        );
        assert_eq!(profile_read(&large, None), None);
        let (_, image) = decode(&large, u64::from(reserved) << 20).unwrap();
        assert_eq!((image.width(), image.height()), (1024, 1024));
        // Pixels beyond the reservation are not allocated.
        let error = decode(&large, 4 << 20).unwrap_err();
        assert!(
            error.message().contains("could not be decoded"),
            "{}",
            error.message()
        );
    }
}

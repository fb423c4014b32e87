//! The model: a small deterministic colour classifier standing in for a real network. It has
//! the same life cycle as one (loaded once, behind a startup gate, shared by every request) and
//! the same three stages per request: preprocess (decoded image → input), inference
//! (input → scores), postprocess (scores → label and confidence).
//!
//! When copying the template: replace `Model` (and `NAME`, `VERSION`, `labels`) with your own
//! model, reading its weights in `Model::load`; keep `ModelHandle`, which loads it once behind
//! the startup gate and reports it in `/debug/status`. `load_delay` (`MODEL_LOAD_DELAY_MS`)
//! only simulates a slow load: drop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::DynamicImage;
use periscope::health::StartupGate;
use tokio::sync::OnceCell;
use tracing::Instrument;

/// The model's name, in responses, logs and the `model` label.
pub const NAME: &str = "color-classifier";
/// The model's version.
pub const VERSION: &str = "1.0.0";

/// The side of the square thumbnail the model reads: its input size.
const INPUT_SIDE: u32 = 32;

/// How peaked the confidence is: lower is more confident.
const TEMPERATURE: f32 = 0.05;

/// The "weights": one prototype colour (sRGB, 0 to 1) per label.
const PROTOTYPES: [(&str, [f32; 3]); 12] = [
    ("red", [0.85, 0.10, 0.10]),
    ("orange", [0.95, 0.55, 0.10]),
    ("yellow", [0.95, 0.90, 0.15]),
    ("green", [0.15, 0.65, 0.20]),
    ("cyan", [0.10, 0.80, 0.85]),
    ("blue", [0.12, 0.25, 0.85]),
    ("purple", [0.50, 0.20, 0.70]),
    ("pink", [0.95, 0.55, 0.75]),
    ("brown", [0.45, 0.28, 0.12]),
    ("white", [0.95, 0.95, 0.95]),
    ("gray", [0.50, 0.50, 0.50]),
    ("black", [0.05, 0.05, 0.05]),
];

/// The labels the model can answer, in order.
pub fn labels() -> impl Iterator<Item = &'static str> {
    PROTOTYPES.iter().map(|(label, _)| *label)
}

/// A loaded model.
pub struct Model {
    prototypes: Vec<(&'static str, [f32; 3])>,
}

/// The model's input: the mean colour of the image's thumbnail.
pub struct Input {
    mean: [f32; 3],
}

/// What the model answers.
pub struct Prediction {
    pub label: &'static str,
    pub confidence: f32,
}

impl Model {
    /// Builds the model (a real one reads its weights here).
    fn load() -> Self {
        Self {
            prototypes: PROTOTYPES.to_vec(),
        }
    }

    /// Shrinks the image to the input size and averages its colour.
    pub fn preprocess(image: &DynamicImage) -> Input {
        let thumbnail = image.thumbnail(INPUT_SIDE, INPUT_SIDE).to_rgb8();
        let mut sum = [0.0_f32; 3];
        for pixel in thumbnail.pixels() {
            for (total, channel) in sum.iter_mut().zip(pixel.0) {
                *total += f32::from(channel) / 255.0;
            }
        }
        let count = (thumbnail.width() * thumbnail.height()).max(1) as f32;
        Input {
            mean: sum.map(|total| total / count),
        }
    }

    /// One score per label: the closer the input to the label's prototype, the higher.
    pub fn infer(&self, input: &Input) -> Vec<f32> {
        self.prototypes
            .iter()
            .map(|(_, prototype)| {
                let distance: f32 = prototype
                    .iter()
                    .zip(input.mean)
                    .map(|(p, x)| (p - x) * (p - x))
                    .sum();
                -distance / TEMPERATURE
            })
            .collect()
    }

    /// The best label, and its softmax probability as the confidence.
    pub fn postprocess(&self, scores: &[f32]) -> Prediction {
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(index, _)| index);
        let top = scores.get(best).copied().unwrap_or_default();
        let total: f32 = scores.iter().map(|score| (score - top).exp()).sum();
        Prediction {
            label: self.prototypes[best].0,
            confidence: 1.0 / total.max(1.0),
        }
    }
}

/// The model shared by every request: loaded once (at startup, or by the first request with
/// `MODEL_WARMUP=false`), with the startup gate opened once it is.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<Inner>,
}

struct Inner {
    model: OnceCell<Arc<Model>>,
    gate: StartupGate,
    load_delay: Duration,
    loading: AtomicBool,
    load_ms: std::sync::OnceLock<u128>,
}

/// The model could not be loaded: what failed, and why (its `source()`, so that the log line
/// records the cause chain, `data.error.chain`, not one flattened text).
#[derive(Debug)]
pub struct LoadError {
    what: &'static str,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl LoadError {
    fn caused(
        what: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            what,
            cause: cause.into(),
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model could not be loaded: {}", self.what)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

impl ModelHandle {
    /// A model not loaded yet; `load_delay` stands for reading large weights.
    pub fn new(load_delay: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                model: OnceCell::new(),
                gate: StartupGate::new("model_loaded"),
                load_delay,
                loading: AtomicBool::new(false),
                load_ms: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The gate `/ready` and `/startup` wait for.
    pub fn gate(&self) -> StartupGate {
        self.inner.gate.clone()
    }

    /// Loads the model in the background now; the gate opens when it is loaded.
    pub fn warm_up(&self) {
        // Said here, not in the task: a line that tells, in order with the others, when the
        // load was asked for.
        tracing::info!(model = NAME, "model warm-up started in the background");
        let handle = self.clone();
        tokio::spawn(async move {
            if let Err(error) = handle.get().await {
                // The gate stays closed: the pod never turns ready and its startup probe
                // restarts it.
                // As an error, not its text: the line keeps the cause chain.
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "model warm-up failed"
                );
            }
        });
    }

    /// Leaves loading to the first request, and reports ready at once.
    pub fn defer(&self) {
        self.inner.gate.open();
        tracing::info!(
            model = NAME,
            "model loading deferred to the first request (MODEL_WARMUP=false)"
        );
    }

    /// The model, loading it first if needed; concurrent callers share one load.
    pub async fn get(&self) -> Result<Arc<Model>, LoadError> {
        if let Some(model) = self.inner.model.get() {
            return Ok(model.clone());
        }
        // The load runs in a task of its own: a request that gives up (its timeout, its client
        // gone) must not cancel it, or every later request would start it over and none would
        // ever see it finish.
        let handle = self.clone();
        tokio::spawn(async move {
            let inner = &handle.inner;
            inner.model.get_or_try_init(|| handle.load()).await.cloned()
        })
        .await
        .map_err(|e| LoadError::caused("the load task ended", e))?
    }

    async fn load(&self) -> Result<Arc<Model>, LoadError> {
        let inner = &self.inner;
        inner.loading.store(true, Ordering::Release);
        let span = tracing::info_span!("model_load", model = NAME, version = VERSION);
        let loaded = async {
            tracing::info!("loading the model");
            let started = Instant::now();
            // Reading weights and building a real model is blocking work, often for minutes:
            // on a thread of its own, off the request threads, and not on the runtime's
            // blocking pool, whose shutdown at the end of `main` waits for every task in it
            // (a SIGTERM during the load would keep the process until the kubelet kills it).
            let (sender, loaded) = tokio::sync::oneshot::channel();
            let delay = inner.load_delay;
            std::thread::Builder::new()
                .name("model-load".to_owned())
                .spawn(move || {
                    // The stand-in for reading large weights (`MODEL_LOAD_DELAY_MS`).
                    std::thread::sleep(delay);
                    let _ = sender.send(Model::load());
                })
                .map_err(|e| LoadError::caused("no thread for the model load", e))?;
            let model = loaded
                .await
                .map_err(|e| LoadError::caused("the model load ended without a model", e))?;
            let duration_ms = started.elapsed().as_millis();
            let _ = inner.load_ms.set(duration_ms);
            inner.gate.open();
            tracing::info!(duration_ms, "model loaded");
            Ok(Arc::new(model))
        }
        .instrument(span)
        .await;
        inner.loading.store(false, Ordering::Release);
        loaded
    }

    /// Whether the model is in memory.
    pub fn is_loaded(&self) -> bool {
        self.inner.model.initialized()
    }

    /// The `model` section of `/debug/status`.
    pub fn status(&self) -> serde_json::Value {
        let state = if self.is_loaded() {
            "loaded"
        } else if self.inner.loading.load(Ordering::Acquire) {
            "loading"
        } else {
            "not_loaded"
        };
        serde_json::json!({
            "name": NAME,
            "version": VERSION,
            "state": state,
            "load_duration_ms": self.inner.load_ms.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::LoadError;

    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The warm-up's failure line keeps what failed and why apart (`data.error.message` and
    /// `data.error.chain`), as the log contract has errors: a real loader's cause (a weights
    /// file missing) is not flattened into one text.
    #[test]
    fn a_failed_load_is_logged_with_its_cause_chain() {
        let written = Written::default();
        let (layer, _guard) = periscope::log::LogLayer::builder()
            .writer(written.clone())
            .blocking(true)
            .build();
        let error = LoadError::caused(
            "no thread for the model load",
            std::io::Error::other("Resource temporarily unavailable"),
        );
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "model warm-up failed"
            );
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            line["data"]["error"]["message"],
            "the model could not be loaded: no thread for the model load",
            "{line}"
        );
        assert_eq!(
            line["data"]["error"]["chain"],
            serde_json::json!(["Resource temporarily unavailable"]),
            "{line}"
        );
    }
}

//! The template service: an image-classification gateway with periscope's whole stack.
//!
//! ```sh
//! cargo run --example inference_gateway          # http://127.0.0.1:8000, JSON logs on stdout
//! curl -s -X POST -H 'content-type: image/png' --data-binary @examples/inference_gateway/red.png http://127.0.0.1:8000/predict
//! curl -s -F image=@examples/inference_gateway/red.png http://127.0.0.1:8000/predict   # multipart works too
//! ```
//!
//! | endpoint | what it shows |
//! | --- | --- |
//! | `POST /predict` | the image (raw body or the `image` field of a multipart form, 10 MiB at most, PNG or JPEG) classified: `{"label","confidence","model","request_id"}`; errors are envelopes (413 `payload_too_large`, 400 `invalid_image`) |
//! | `GET /v1/models` | the model, its labels and whether it is loaded (cheap: the load test's route) |
//! | `GET /health`, `/ready`, `/startup` | liveness; readiness (503 `starting` until the model is loaded, 503 `draining` on shutdown); startup |
//! | `GET /metrics` | RED metrics, `model_inference_duration_seconds{model}`, `model_predictions_total{label}`, process and (with `ENABLE_GPU`) GPU metrics |
//! | `/debug/*` | status (with a `model` section), logs, config, log level, memory: behind `ADMIN_TOKEN`, or on `ADMIN_PORT` |
//!
//! Every request gets a request id (kept from `x-request-id` when valid) and a W3C trace;
//! both are on every log line and every error envelope, and the request id is in the
//! `x-request-id` response header.
//!
//! The gateway's own settings (periscope's, such as `SERVICE_NAME`, `LOG_LEVEL`, `LOG_FORMAT`,
//! `ADMIN_TOKEN`, `ENABLE_GPU`, `REQUEST_TIMEOUT_S`, `OTEL_*`, are in `docs/configuration.md`;
//! the template sets a 30 s request timeout where periscope sets none):
//!
//! | variable | default | accepted values |
//! | --- | --- | --- |
//! | `HOST` | `127.0.0.1` | an IP address to listen on (`::` in a container: every IPv6 and IPv4 address) |
//! | `PORT` | `8000` | a port; `0` picks a free one (the `listening` log line names it) |
//! | `ADMIN_PORT` | unset: the admin surface shares `PORT` | a port for the admin surface, served on 127.0.0.1 only, debug endpoints included (still behind `ADMIN_TOKEN` when one is set); `PORT` then keeps the probes and `/metrics` but no `/debug/*` |
//! | `MODEL_WARMUP` | `true` | `false` loads the model on the first `/predict` instead of at startup |
//! | `MODEL_LOAD_DELAY_MS` | `0` | extra milliseconds the model load takes (to watch `/ready` answer `starting`) |
//! | `UPLOAD_BUFFER_MIB` | `64` | MiB of request bodies held in memory at once, `10` to `65536`: a `/predict` reserves its `Content-Length` (10 MiB without one) and beyond it waits, unread, for its share (the request timeout bounds the wait) |
//! | `UPLOAD_IDLE_S` | `5` | seconds an upload may pause, `1` to `300`; past its first such window it must also keep the pace that brings its `Content-Length` in within the request timeout (16 KiB/s at least; a body without a length, chunked, the pace of the 10 MiB share it holds). A body that stalls or falls behind is answered 408 `upload_stalled` and gives its share of the upload buffer back (a client announcing 10 MiB and sending nothing more held its share until the request timeout) |
//! | `DECODE_MEMORY_MIB` | `512` | MiB of decoded images in memory at once, `260` to `65536`: a decode reserves what the image's header says it will take (a 250 KiB PNG can claim 256 MiB; a JPEG also its components' coefficients, which a progressive decode keeps (a baseline one, as cameras write, keeps none), and its file, which the decoder copies; 4 MiB for the decoder's own buffers), may allocate no more, and waits for its share, so the memory a burst of uploads takes does not grow with the CPU count |
//! | `SHUTDOWN_DRAIN_S` | `5` | seconds `/ready` answers `draining` after SIGTERM or Ctrl-C before the listeners close |
//! | `PERISCOPE_BARE` | `false` | `true` serves the same routes without `obs.layer()` (overhead comparisons) |
//!
//! `ENABLE_GPU=true` adds the NVIDIA collector (`gpu_*` metrics, the GPU in `/debug/status`);
//! without a driver it reports `gpu_collector_up 0` and the service runs on. OTLP export needs
//! the `otel` feature: `cargo run --example inference_gateway --features otel` with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set.
//!
//! Copying this template into a service of your own (`docs/getting-started.md`, "Copy the
//! template", lists the dependencies):
//!
//! | file | keep | change |
//! | --- | --- | --- |
//! | `main.rs` | the `Observability` setup, the startup gate in `Health`, the admin router or admin port, the drain on SIGTERM, the `listening` line | `service_name`, the `status_section`s, the `config_section`, the request timeout, the settings of `GatewayConfig` |
//! | `model.rs` | `ModelHandle`: one shared load behind the startup gate, off the request threads, the `/debug/status` section | `Model`, `NAME`, `VERSION`: load your weights in `Model::load`, your own `preprocess` / `infer` / `postprocess` (a real `infer` goes on the blocking pool: see `predict.rs`); drop `MODEL_LOAD_DELAY_MS`, which only simulates a slow load |
//! | `predict.rs` | the body limit and the early `Content-Length` check, the upload and decode budgets, decoding on the blocking pool, one span per stage, metrics through `guarded_family`, error codes declared once | the routes, the response, your own error codes and metric names |
//! | `upload.rs` | the pace an upload must keep | `MIN_UPLOAD_BYTES_PER_S`, if your clients are slower |

mod model;
mod predict;
mod upload;

use std::error::Error;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use periscope::admin::DebugAccess;
use periscope::health::Health;
use periscope::{Observability, env};
use tokio::net::TcpListener;

use self::model::ModelHandle;
use self::predict::{AppState, ModelMetrics};

/// Starts the gateway; a configuration error is printed and exits with status 1.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("inference_gateway: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains readiness and stops.
#[tokio::main]
pub async fn run() -> Result<(), Box<dyn Error>> {
    let config = GatewayConfig::from_env()?;

    // The model loads behind a startup gate: /ready and /startup answer 503 `starting` until
    // it is open.
    let model = ModelHandle::new(config.model_load_delay);
    let health = Health::builder()
        .version(env!("CARGO_PKG_VERSION"))
        .startup_gate(model.gate())
        .build()?;
    let obs = Observability::builder()
        .service_name("inference-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .health(health)
        .status_section("model", {
            let model = model.clone();
            move || model.status()
        })
        // The gateway's own settings in `/debug/config`, beside periscope's.
        .config_section("gateway", config.to_json())
        // Bounds every request, the wait for upload memory and a decode slot included: a
        // client that sends its head and never its body holds its share of the upload
        // buffer this long at most (`REQUEST_TIMEOUT_S` overrides it).
        .request_timeout(Duration::from_secs(30))
        .env()? // SERVICE_NAME, LOG_LEVEL, ADMIN_TOKEN, ENABLE_GPU, OTEL_*, ... win over the code
        .build()?;
    let _guard = obs.init()?; // JSON logs from here on; flushed when main returns

    let state = AppState::new(
        model.clone(),
        ModelMetrics::register(obs.registry())?,
        config.upload_buffer_mib,
        config.decode_memory_mib,
        config.upload_idle,
        obs.settings().request_timeout,
    );
    let mut app = predict::routes(state);
    let mut admin_app = None;
    match config.admin_port {
        // Probes and /metrics stay on the public port for the kubelet and Prometheus; the debug
        // endpoints live only on the admin listener.
        Some(port) => {
            app = app.merge(obs.admin_with(DebugAccess::Disabled).router());
            let access = match &obs.settings().admin_token {
                Some(token) => DebugAccess::Token(token.clone()),
                None => DebugAccess::SeparateListener,
            };
            let admin = Router::new()
                .merge(obs.admin_with(access).router())
                .layer(obs.layer());
            admin_app = Some((port, admin));
        }
        None => app = app.merge(obs.admin().router()),
    }
    if !config.bare {
        app = app.layer(obs.layer()); // ids and trace, RED metrics, access log, error envelopes
    }

    let shutdown = obs.shutdown_on_signal();
    let mut admin_server = None;
    if let Some((port, admin)) = admin_app {
        // Loopback only: whoever reaches this port reaches the debug endpoints.
        let listener = bind(
            "admin",
            "ADMIN_PORT",
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
        .await?;
        let stop = shutdown.clone();
        admin_server = Some(tokio::spawn(obs.server(listener).serve(admin, stop.wait())));
    }
    let listener = bind("http", "PORT", SocketAddr::from((config.host, config.port))).await?;
    // The model loads once both listeners are bound, so a port that is taken stops the service
    // at once instead of after the warm-up; until it is loaded, the startup gate keeps /ready
    // and /startup at 503 `starting`.
    if config.model_warmup {
        model.warm_up();
    } else {
        model.defer();
    }
    // Unlike `axum::serve`, a client that never finishes its request head is cut off (30 s),
    // and once draining, answers carry `Connection: close` so clients let go of this instance.
    obs.server(listener).serve(app, shutdown.wait()).await?;
    if let Some(admin) = admin_server {
        admin.await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds a listener and logs its address (the one to use when the port was 0); `port_var` is
/// the variable that sets its port, named in the error when the port is taken.
async fn bind(
    listener: &'static str,
    port_var: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, Box<dyn Error>> {
    let bound = match TcpListener::bind(addr).await {
        // `::` listens on every IPv6 and IPv4 address (the pod's IP on any cluster). A node
        // without IPv6 (booted with `ipv6.disable=1`) refuses it: every IPv4 address instead.
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            tracing::warn!(listener, error = %e, "IPv6 is not available here: listening on IPv4 only");
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))).await
        }
        bound => bound,
    };
    let bound = bound.map_err(|e| {
        let what_to_do = match e.kind() {
            ErrorKind::AddrInUse => {
                format!(": set {port_var} to a free port (0 picks one), or stop what holds it")
            }
            ErrorKind::AddrNotAvailable => {
                ": set HOST to an address of this machine (:: for all of them)".to_owned()
            }
            _ => String::new(),
        };
        format!("cannot listen on {addr} ({listener}): {e}{what_to_do}")
    })?;
    tracing::info!(listener, addr = %bound.local_addr()?, "listening");
    Ok(bound)
}

/// Whether binding `::` failed for want of IPv6 (a node booted with `ipv6.disable=1` has no
/// IPv6 sockets: `EAFNOSUPPORT`), not for a reason IPv4 would share (a port in use, a
/// privileged port).
fn no_ipv6(error: &std::io::Error) -> bool {
    // The code differs by system; Linux's is the one nodes run.
    const EAFNOSUPPORT: i32 = if cfg!(any(target_os = "linux", target_os = "android")) {
        97
    } else if cfg!(windows) {
        10047 // WSAEAFNOSUPPORT
    } else {
        47 // macOS and the BSDs
    };
    matches!(
        error.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::Unsupported
    ) || error.raw_os_error() == Some(EAFNOSUPPORT)
}

/// The gateway's own settings, from the environment.
struct GatewayConfig {
    host: IpAddr,
    port: u16,
    admin_port: Option<u16>,
    model_warmup: bool,
    model_load_delay: Duration,
    upload_buffer_mib: usize,
    upload_idle: Duration,
    decode_memory_mib: usize,
    bare: bool,
}

impl GatewayConfig {
    /// The settings as `/debug/config` shows them.
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.host.to_string(),
            "port": self.port,
            "admin_port": self.admin_port,
            "model_warmup": self.model_warmup,
            "model_load_delay_ms": self.model_load_delay.as_millis() as u64,
            "upload_buffer_mib": self.upload_buffer_mib,
            "upload_idle_s": self.upload_idle.as_secs(),
            "decode_memory_mib": self.decode_memory_mib,
            "bare": self.bare,
        })
    }

    /// Read as periscope reads its own: unset or empty is the default, anything malformed
    /// stops the service naming the variable.
    fn from_env() -> Result<Self, periscope::ConfigError> {
        let config = Self {
            host: env::var("HOST", IpAddr::V4(Ipv4Addr::LOCALHOST), "an IP address")?,
            port: env::var("PORT", 8000, "a port number 0-65535")?,
            admin_port: env::optional("ADMIN_PORT", "a port number 0-65535")?,
            model_warmup: env::flag("MODEL_WARMUP", true)?,
            model_load_delay: Duration::from_millis(env::var(
                "MODEL_LOAD_DELAY_MS",
                0,
                "a whole number of milliseconds",
            )?),
            // At least one whole body (10 MiB); at most 64 GiB, so that the count of KiB
            // fits a `u32`.
            upload_buffer_mib: env::var_within(
                "UPLOAD_BUFFER_MIB",
                64,
                10..=65536,
                "a whole number of MiB from 10 to 65536",
            )?,
            upload_idle: Duration::from_secs(env::var_within(
                "UPLOAD_IDLE_S",
                5,
                1..=300,
                "a whole number of seconds from 1 to 300",
            )?),
            // At least what the largest image decoded reserves (260 MiB), so that any
            // accepted image fits.
            decode_memory_mib: env::var_within(
                "DECODE_MEMORY_MIB",
                512,
                predict::MAX_RESERVED_MIB as usize..=65536,
                "a whole number of MiB from 260 to 65536",
            )?,
            bare: env::flag("PERISCOPE_BARE", false)?,
        };
        // The admin listener on 127.0.0.1 and the service's on HOST cannot share a port there
        // (binding the second would blame a process that is not there).
        let shared_address = config.host.is_unspecified() || config.host.is_loopback();
        if let Some(admin_port) = config.admin_port
            && admin_port != 0
            && admin_port == config.port
            && shared_address
        {
            return Err(periscope::ConfigError {
                var: "ADMIN_PORT",
                value: admin_port.to_string(),
                expected: "use a port other than PORT's (the admin surface listens on a port of \
                           its own), or leave it unset"
                    .to_owned(),
            });
        }
        Ok(config)
    }
}

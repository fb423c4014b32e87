//! Two services and a job queue, with one request id and one trace through all of them: the
//! example to copy to see the whole path of a request through a team's services.
//!
//! ```text
//! client ──POST /v1/tasks──▶ api ──POST /v1/process──▶ worker
//!                             │  (ClientTraceLayer: x-request-id, traceparent)
//!                             └──job (Carrier)──▶ in-process queue ──▶ job consumer
//! ```
//!
//! ```sh
//! cargo run --example multi_service      # api on 127.0.0.1:8001, worker on 127.0.0.1:8002
//! curl -s -H 'x-request-id: my-request' -H 'content-type: application/json' \
//!      -d '{"text":"hello periscope"}' http://127.0.0.1:8001/v1/tasks
//! curl -s -H 'content-type: application/json' -d '{"text":"x","fail":true}' http://127.0.0.1:8001/v1/tasks
//! ```
//!
//! Every log line of the request, in the api, in the worker and in the job, carries the same
//! `request_id` and `trace_id` (grep the log for the id). A worker failure reaches the client as
//! a 502 `upstream_error` envelope with the client's request id and the worker's error code in
//! `details`, retryable unless the worker refused the task (a 4xx it does not mark retryable)
//! or redirected it (a 3xx, which the api does not follow; where it points stays in the log).
//! A text over 64 KiB is the client's error, a 422 `validation_error`, refused before
//! the worker is called: the worker's answer to it would not fit the 1 MiB the api reads of it.
//!
//! Both services run in this one process to keep the example small: they share one
//! `Observability` (one log stream, one `/metrics`; the `target` of a line, `::api`,
//! `::worker` or `::jobs`, and the access line's `route` tell them apart). In production each
//! is its own process with its own `SERVICE_NAME`, built the same way.
//!
//! When copying it, split it: each service gets its own `main`, built like
//! `examples/inference_gateway`'s with `obs.server(listener)` and `obs.shutdown_on_signal()`
//! (the worker's plain `Server::new`, stopped after the api, is only for sharing this process);
//! the api reads the worker's URL from its configuration (`WORKER_URL` here); and the in-process queue becomes your
//! broker: serialise the job's `Carrier` into the message (it is a flat JSON object of
//! header-named strings) and read it back in the consumer for its `JobSpan`.
//!
//! | variable | default | accepted values |
//! | --- | --- | --- |
//! | `HOST` | `127.0.0.1` | the IP address both services listen on |
//! | `PORT_API` | `8001` | the api's port (`0`: a free one, named in the `listening` line) |
//! | `PORT_WORKER` | `8002` | the worker's port (`0`: a free one) |
//! | `SHUTDOWN_DRAIN_S` | `5` | seconds `/ready` answers `draining` after SIGTERM or Ctrl-C |
//! | `WORKER_URL` | the in-process worker | the worker the api calls, `http://host:port` (the in-process one still serves) |
//! | `WORKER_TIMEOUT_S` | `5` | seconds the api waits for the worker's whole answer, 0.001 to 3600; the api's shutdown waits as long (and a second more) for a task in flight, so a pod's `terminationGracePeriodSeconds` must cover `SHUTDOWN_DRAIN_S`, this and the job drain |
//!
//! and periscope's own variables (`LOG_LEVEL`, `ADMIN_TOKEN`, ...; see `docs/configuration.md`).

mod api;
mod jobs;
mod worker;

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use periscope::{Observability, Server, env};
use tokio::net::TcpListener;

/// How long the queued jobs may take to finish once the services have stopped.
const JOB_DRAIN: Duration = Duration::from_secs(10);

/// Starts both services; a configuration error is printed and exits with status 1.
pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("multi_service: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains, stops the api, then the worker (the api's
/// requests in flight still call it), and finishes the queued jobs.
#[tokio::main]
pub async fn run() -> Result<(), Box<dyn Error>> {
    let host: IpAddr = env::var("HOST", IpAddr::V4(Ipv4Addr::LOCALHOST), "an IP address")?;
    let api_port: u16 = env::var("PORT_API", 8001, "a port number 0-65535")?;
    let worker_port: u16 = env::var("PORT_WORKER", 8002, "a port number 0-65535")?;
    let worker_url = api::worker_url()?;
    let worker_timeout = Duration::from_secs_f64(env::var_within(
        "WORKER_TIMEOUT_S",
        5.0,
        0.001..=3600.0,
        "a number of seconds from 0.001 to 3600",
    )?);

    let (queue, consumer) = jobs::queue(64);
    let counts = queue.counts();
    let obs = Observability::builder()
        .service_name("multi-service")
        .version(env!("CARGO_PKG_VERSION"))
        .status_section("jobs", {
            let counts = queue.counts();
            move || counts.status()
        })
        .env()?
        .build()?;
    let _guard = obs.init()?;
    // Before the `listening` lines: a SIGTERM sent as soon as one shows is a clean stop too.
    let shutdown = obs.shutdown_on_signal();

    // The worker first: the api needs its address.
    let worker_listener = bind(
        "worker",
        "PORT_WORKER",
        SocketAddr::from((host, worker_port)),
    )
    .await?;
    let worker_url = match worker_url {
        Some(url) => url,
        None => format!("http://{}", worker_listener.local_addr()?),
    };
    let worker_app = worker::routes()
        .merge(obs.admin().router())
        .layer(obs.layer());
    let api_app = api::routes(api::ApiState {
        worker: api::WorkerClient::new(worker_url, worker_timeout, &obs.client_layer()),
        queue,
    })
    .merge(obs.admin().router())
    .layer(obs.layer());
    let api_listener = bind("api", "PORT_API", SocketAddr::from((host, api_port))).await?;
    // The consumer drains the queue once the api has stopped, for at most JOB_DRAIN (a pod is
    // killed after its grace period anyway).
    let (api_done, api_done_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(consumer.reading_with(obs.job_options()).run(async {
        let _ = api_done_rx.await;
        tokio::time::sleep(JOB_DRAIN).await;
    }));

    // The worker stops only once the api has: the api's requests in flight still call it.
    let (api_stopped, worker_stop) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Server::new(worker_listener).serve(worker_app, async {
        let _ = worker_stop.await;
    }));
    // A task in flight at shutdown may still wait for the worker's whole answer: the api gives
    // it that long, and a second to answer, beyond the request timeout's rule.
    let shutdown_timeout = (worker_timeout + Duration::from_secs(1))
        .max(obs.settings().request_timeout.unwrap_or_default())
        .max(periscope::DEFAULT_SHUTDOWN_TIMEOUT);
    let api = obs
        .server(api_listener)
        .shutdown_timeout(shutdown_timeout)
        .serve(api_app, shutdown.wait())
        .await;
    drop(api_stopped);
    drop(api_done);
    worker.await??;
    api?;
    // The api is stopped and its queue handle dropped: the consumer finishes what is queued,
    // and past JOB_DRAIN cancels the running job and names each one left, before `stopped`
    // (after it, the log takes no more lines).
    consumer.await?;
    tracing::info!(pending = counts.pending(), "stopped");
    Ok(())
}

/// Binds a listener and logs its address; `port_var` sets its port, named in the error when
/// the port is taken.
async fn bind(
    listener: &'static str,
    port_var: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, Box<dyn Error>> {
    let bound = TcpListener::bind(addr).await.map_err(|e| {
        let what_to_do = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(": set {port_var} to a free port (0 picks one), or stop what holds it")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                ": set HOST to an address of this machine (0.0.0.0 for all of them)".to_owned()
            }
            _ => String::new(),
        };
        format!("cannot listen on {addr} ({listener}): {e}{what_to_do}")
    })?;
    tracing::info!(listener, addr = %bound.local_addr()?, "listening");
    Ok(bound)
}

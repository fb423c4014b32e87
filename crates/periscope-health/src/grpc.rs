//! The probes over gRPC: the standard `grpc.health.v1.Health` service (feature `grpc`), for
//! Kubernetes' `grpc` probes, `grpc_health_probe`, Envoy and client-side health checking.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::health::Health;
use crate::render::Probe;
use crate::runner::MIN_POLL_INTERVAL;

/// How often a `Watch` call looks at its probe again, unless set.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The `grpc.health.v1.Health` service answering the same probes as `/health`, `/ready` and
/// `/startup`, with the same checks, cache, single flight, gates and draining.
///
/// The service name asked for chooses the probe:
///
/// | service name | probe |
/// | --- | --- |
/// | `""` (the server as a whole) and `readiness` | readiness: `SERVING` for `ok` and `degraded` |
/// | `liveness` | liveness: always `SERVING` while the process answers |
/// | `startup` | startup: `SERVING` once every startup gate is open |
/// | a name added with [`service`](Self::service) | the probe given there |
///
/// Any other name is answered `NOT_FOUND` by `Check`, and `SERVICE_UNKNOWN` by `Watch`, as the
/// protocol asks. Point a Kubernetes liveness probe at `service: liveness`: the empty name
/// stands for readiness, which a database outage fails.
///
/// `Watch` sends the status at once, then again whenever it changes, looking every
/// [`watch_interval`](Self::watch_interval) (the checks themselves run at most once per cache
/// interval however many watch). It ends with `UNAVAILABLE` once the service drains (after
/// sending `NOT_SERVING` for readiness), so a graceful shutdown never waits on a watcher; a
/// `Watch` begun while the service drains ends so at once, without a message, so that clients
/// back off rather than call again at once (they do after a call that sent one).
///
/// With tonic (an axum `Router` takes it too, one route per method so that metrics count
/// `Check` and the long `Watch` calls apart:
/// `.route_service("/grpc.health.v1.Health/Check", grpc_health.clone())` and
/// `.route_service("/grpc.health.v1.Health/Watch", grpc_health)`):
///
/// ```no_run
/// use periscope_health::{Health, Probe};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let health = Health::builder().check("db", || async { Ok::<_, String>(()) }).build()?;
/// let grpc_health = health
///     .grpc()
///     .service("helloworld.Greeter", Probe::Readiness)
///     .into_service();
/// tonic::transport::Server::builder()
///     .add_service(grpc_health)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcHealth {
    health: Health,
    names: Arc<HashMap<String, Probe>>,
    watch_interval: Duration,
}

impl Health {
    /// The `grpc.health.v1.Health` service over these probes (see [`GrpcHealth`]).
    pub fn grpc(&self) -> GrpcHealth {
        let names = [
            ("", Probe::Readiness),
            ("readiness", Probe::Readiness),
            ("liveness", Probe::Liveness),
            ("startup", Probe::Startup),
        ];
        GrpcHealth {
            health: self.clone(),
            names: Arc::new(
                names
                    .into_iter()
                    .map(|(name, probe)| (name.to_owned(), probe))
                    .collect(),
            ),
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

impl GrpcHealth {
    /// Also answers `name` (a service of yours, such as `helloworld.Greeter`, which clients
    /// doing client-side health checking ask about) with `probe`.
    pub fn service(mut self, name: impl Into<String>, probe: Probe) -> Self {
        Arc::make_mut(&mut self.names).insert(name.into(), probe);
        self
    }

    /// How often a `Watch` looks at its probe again (default 1 s; at least
    /// [`MIN_POLL_INTERVAL`]).
    pub fn watch_interval(mut self, every: Duration) -> Self {
        self.watch_interval = every.max(MIN_POLL_INTERVAL);
        self
    }

    /// The tonic service to add to a tonic `Server` or route in an axum `Router`.
    pub fn into_service(self) -> HealthServer<GrpcHealth> {
        HealthServer::new(self)
    }

    /// The status of `probe` now: from the cache, the run in flight or a new run.
    async fn status(&self, probe: Probe) -> ServingStatus {
        if self.health.report_for(probe).await.status().is_serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

/// The answer to a name no probe stands for; the name itself is not echoed.
fn unknown_service() -> Status {
    Status::not_found("unknown service: ask for \"\", \"readiness\", \"liveness\" or \"startup\"")
}

/// The stream a `Watch` call answers with.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let probe = *self
            .names
            .get(request.get_ref().service.as_str())
            .ok_or_else(unknown_service)?;
        Ok(Response::new(response(self.status(probe).await)))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let probe = self.names.get(request.get_ref().service.as_str()).copied();
        Ok(Response::new(Box::pin(watch(self.clone(), probe))))
    }
}

/// Where a watch stands between two messages.
enum Next {
    /// Look at the probe (again), having sent this status last.
    Look(Option<ServingStatus>),
    /// The service drains: end the call.
    End,
    Done,
}

fn draining() -> Status {
    Status::unavailable("the service is draining")
}

/// The statuses of `probe` (`None`: an unknown name) as they change, until the service drains.
fn watch(
    grpc: GrpcHealth,
    probe: Option<Probe>,
) -> impl Stream<Item = Result<HealthCheckResponse, Status>> + Send {
    futures_util::stream::unfold(Next::Look(None), move |next| {
        let grpc = grpc.clone();
        async move {
            let last = match next {
                Next::Look(last) => last,
                Next::End => return Some((Err(draining()), Next::Done)),
                Next::Done => return None,
            };
            let drain = grpc.health.drain_handle();
            if last.is_none() && drain.is_draining() {
                // A watch begun while the service drains ends at once, with no message:
                // clients retry a watch that sent one without backing off (grpc-go, C-core),
                // so a status sent before each end would make them call again and again for
                // the whole grace period. Ended so, they back off as for any failed call.
                return Some((Err(draining()), Next::Done));
            }
            loop {
                if last.is_some() {
                    // Woken by a drain: a graceful shutdown does not wait out the interval.
                    let pause = tokio::time::sleep(grpc.watch_interval);
                    let _ = drain.unless_drained(pause).await;
                }
                // Read before the status, so that a drain in between is seen in the status
                // (`NOT_SERVING` sent) before the stream ends.
                let is_draining = drain.is_draining();
                let status = match probe {
                    Some(probe) => grpc.status(probe).await,
                    None => ServingStatus::ServiceUnknown,
                };
                if last != Some(status) {
                    let next = if is_draining {
                        Next::End
                    } else {
                        Next::Look(Some(status))
                    };
                    return Some((Ok(response(status)), next));
                }
                if is_draining {
                    return Some((Err(draining()), Next::Done));
                }
            }
        }
    })
}

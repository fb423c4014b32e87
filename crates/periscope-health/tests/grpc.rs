//! The standard gRPC health service (`grpc.health.v1`) over the probes, asked by tonic-health's
//! own client over HTTP/2 on 127.0.0.1.
#![cfg(feature = "grpc")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use periscope_health::tonic_health::pb::HealthCheckRequest;
use periscope_health::tonic_health::pb::health_check_response::ServingStatus;
use periscope_health::tonic_health::pb::health_client::HealthClient;
use periscope_health::{GrpcHealth, Health, Probe, StartupGate};
use tonic::transport::Channel;

/// Serves `grpc` with tonic on an ephemeral port and connects tonic-health's client to it.
async fn serve(grpc: GrpcHealth) -> HealthClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc.into_service())
            .serve_with_incoming(incoming),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = client.check(request).await?.into_inner();
    Ok(ServingStatus::try_from(response.status).unwrap())
}

/// Checks each service name and compares its status with the expected one.
async fn expect(client: &mut HealthClient<Channel>, expected: &[(&str, ServingStatus)]) {
    for (name, status) in expected {
        assert_eq!(check(client, name).await.unwrap(), *status, "{name:?}");
    }
}

/// A critical check that passes while `up` holds.
fn switchable(up: &Arc<AtomicBool>) -> Health {
    let up = Arc::clone(up);
    Health::builder()
        .check("model", move || {
            let up = up.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("model unloaded") } }
        })
        .cache_ttl(Duration::from_millis(1))
        .build()
        .unwrap()
}

#[tokio::test]
async fn check_answers_each_probe_by_its_service_name() {
    let up = Arc::new(AtomicBool::new(true));
    let health = switchable(&up);
    let mut client = serve(
        health
            .grpc()
            .service("helloworld.Greeter", Probe::Readiness),
    )
    .await;

    expect(
        &mut client,
        &[
            ("", ServingStatus::Serving),
            ("readiness", ServingStatus::Serving),
            ("liveness", ServingStatus::Serving),
            ("startup", ServingStatus::Serving),
            ("helloworld.Greeter", ServingStatus::Serving),
        ],
    )
    .await;

    // A failed critical check fails readiness, never liveness (a database outage must not get
    // the pod restarted).
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    expect(
        &mut client,
        &[
            ("", ServingStatus::NotServing),
            ("readiness", ServingStatus::NotServing),
            ("helloworld.Greeter", ServingStatus::NotServing),
        ],
    )
    .await;
    expect(
        &mut client,
        &[
            ("liveness", ServingStatus::Serving),
            ("startup", ServingStatus::Serving),
        ],
    )
    .await;

    // Draining fails readiness at once.
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    health.drain_handle().drain();
    expect(
        &mut client,
        &[
            ("", ServingStatus::NotServing),
            ("liveness", ServingStatus::Serving),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_closed_startup_gate_is_not_serving_until_opened() {
    let gate = StartupGate::new("model_loaded");
    let health = Health::builder()
        .startup_gate(gate.clone())
        .build()
        .unwrap();
    let mut client = serve(health.grpc()).await;

    expect(
        &mut client,
        &[
            ("startup", ServingStatus::NotServing),
            ("", ServingStatus::NotServing),
            ("liveness", ServingStatus::Serving),
        ],
    )
    .await;
    gate.open();
    expect(
        &mut client,
        &[
            ("startup", ServingStatus::Serving),
            ("", ServingStatus::Serving),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_service_name_is_not_found_without_echoing_it() {
    let health = Health::builder().build().unwrap();
    let mut client = serve(health.grpc()).await;

    let status = check(&mut client, "no.such.Service\r\nx-evil: 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        !status.message().contains("no.such"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("liveness"),
        "says what to ask: {}",
        status.message()
    );
}

#[tokio::test]
async fn watch_sends_each_change_and_ends_when_the_service_drains() {
    let up = Arc::new(AtomicBool::new(true));
    let health = switchable(&up);
    let mut client = serve(health.grpc().watch_interval(Duration::from_millis(20))).await;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut watch = client.watch(request).await.unwrap().into_inner();
    let mut next = async || {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a watch message within 10 s");
        message.map(|message| message.map(|m| ServingStatus::try_from(m.status).unwrap()))
    };

    assert_eq!(next().await.unwrap(), Some(ServingStatus::Serving));
    up.store(false, Ordering::SeqCst);
    assert_eq!(next().await.unwrap(), Some(ServingStatus::NotServing));
    up.store(true, Ordering::SeqCst);
    assert_eq!(next().await.unwrap(), Some(ServingStatus::Serving));

    // Draining: NOT_SERVING once, then the call ends, so a graceful shutdown never waits on it.
    health.drain_handle().drain();
    assert_eq!(next().await.unwrap(), Some(ServingStatus::NotServing));
    let end = next().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable);
}

/// A drain is not left for the next look, however long the watch interval: the watcher gets
/// `NOT_SERVING` and the end of its call at once, so a graceful shutdown never waits out the
/// interval.
#[tokio::test]
async fn a_drain_reaches_a_watcher_at_once_whatever_the_interval() {
    let health = Health::builder().build().unwrap();
    let mut client = serve(health.grpc().watch_interval(Duration::from_secs(600))).await;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut watch = client.watch(request).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    health.drain_handle().drain();
    let told = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("told within 10 s, not after the 600 s interval");
    assert_eq!(
        told.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the call ends once the service drains");
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
}

/// A watch begun while the service drains ends at once with `UNAVAILABLE` and no message:
/// grpc-go and C-core clients retry without backing off after a call that sent one, so a
/// status before each end would have them call again and again for the whole grace period.
#[tokio::test]
async fn a_watch_begun_while_draining_ends_at_once_without_a_message() {
    let health = Health::builder().build().unwrap();
    let mut client = serve(health.grpc().watch_interval(Duration::from_millis(20))).await;
    health.drain_handle().drain();
    for service in ["", "liveness", "no.such.Service"] {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let mut watch = client.watch(request).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the call ends at once");
        assert_eq!(
            first.unwrap_err().code(),
            tonic::Code::Unavailable,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn watching_an_unknown_service_says_so_and_keeps_the_call_open() {
    let health = Health::builder().build().unwrap();
    let mut client = serve(health.grpc().watch_interval(Duration::from_millis(20))).await;
    let request = HealthCheckRequest {
        service: "no.such.Service".to_owned(),
    };
    let mut watch = client.watch(request).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // Open, and silent, for a few intervals: the protocol keeps the call.
    let more = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(more.is_err(), "no second message: {more:?}");
    health.drain_handle().drain();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the call ends once the service drains");
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_liveness_watch_stays_serving_and_ends_when_the_service_drains() {
    // Liveness does not change at a drain: no NOT_SERVING, but the call still ends, so a
    // graceful shutdown does not wait on a watcher of it.
    let health = Health::builder().build().unwrap();
    let mut client = serve(health.grpc().watch_interval(Duration::from_millis(20))).await;
    let request = HealthCheckRequest {
        service: "liveness".to_owned(),
    };
    let mut watch = client.watch(request).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    health.drain_handle().drain();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the call ends once the service drains");
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
}

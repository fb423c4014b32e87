//! Graceful shutdown over a real socket: after the trigger `/ready` answers 503 `draining` while
//! the server still serves, and the server stops only once the grace period is over.
#![cfg(all(feature = "signal", feature = "axum"))]

mod support;

use std::time::{Duration, Instant};

use periscope_health::{Health, Shutdown};
use support::get;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drains_for_the_grace_period_then_the_server_stops() {
    let health = Health::builder().build().unwrap();
    let (trigger, triggered) = oneshot::channel::<()>();
    // Long enough for the probes below on a loaded machine.
    let grace = Duration::from_secs(2);
    let shutdown = Shutdown::on(
        async move {
            let _ = triggered.await;
            "test"
        },
        health.drain_handle(),
        grace,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().merge(health.router());
    let stopped = shutdown.clone().wait();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    });

    assert_eq!(get(addr, "/ready").await.status, 200);
    assert!(!shutdown.is_stopped());

    let triggered_at = Instant::now();
    trigger.send(()).unwrap();
    // Draining shows at once, while the server still answers every probe.
    let ready = loop {
        let ready = get(addr, "/ready").await;
        if ready.status == 503 || triggered_at.elapsed() > Duration::from_secs(5) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(get(addr, "/health").await.status, 200, "liveness stays ok");
    assert!(!shutdown.is_stopped());

    // Every clone's wait returns after the grace period, and the server stops accepting.
    tokio::time::timeout(Duration::from_secs(10), shutdown.clone().wait())
        .await
        .expect("the shutdown completes");
    assert!(
        triggered_at.elapsed() >= grace,
        "stopped before the grace period was over"
    );
    assert!(shutdown.is_stopped());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[test]
fn a_shutdown_whose_task_is_gone_does_not_wait_forever() {
    let health = Health::builder().build().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let shutdown = first.block_on(async {
        Shutdown::on(
            std::future::pending(),
            health.drain_handle(),
            Duration::ZERO,
        )
    });
    drop(first); // the shutdown task goes with its runtime
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("wait returns once nothing can end it");
    });
}

/// A `resume()` during the grace period does not cancel the shutdown: once the listeners stop,
/// `/ready` drains again rather than sending traffic back to a closing instance.
#[tokio::test]
async fn a_resume_during_the_grace_period_does_not_leave_ready_open_at_the_stop() {
    let health = Health::builder().build().unwrap();
    let drain = health.drain_handle();
    let (trigger, triggered) = oneshot::channel::<()>();
    let shutdown = Shutdown::on(
        async move {
            let _ = triggered.await;
            "test"
        },
        drain.clone(),
        Duration::from_millis(300),
    );
    trigger.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !drain.is_draining() {
        assert!(Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain.resume();
    assert!(!drain.is_draining());
    tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
        .await
        .expect("the shutdown goes on");
    assert!(
        drain.is_draining(),
        "/ready would answer ok while the listeners stop"
    );
}

/// `Shutdown::on_signal` in a Tokio runtime without I/O (so without its signal driver): the
/// handlers cannot be installed, the error is logged and the service runs on without a
/// graceful shutdown, as documented, instead of panicking (Tokio panics there rather than
/// failing).
#[cfg(unix)]
#[test]
fn without_a_signal_driver_on_signal_runs_on() {
    let health = Health::builder().build().unwrap();
    // Time only: the grace period's timer works, the signal driver (part of I/O) does not.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let shutdown = Shutdown::on_signal(health.drain_handle(), Duration::from_secs(1));
        // No signal can ever come, so the wait does not end.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), shutdown.wait())
                .await
                .is_err()
        );
        assert!(!health.drain_handle().is_draining());
    });
}

//! A second stop signal during the drain skips the rest of it: Ctrl-C twice stops a service
//! now, not after its grace period. Its own test binary, so no other test sees the signals.
#![cfg(all(feature = "signal", unix))]

use std::time::{Duration, Instant};

use periscope_health::{Health, Shutdown};

fn send(signal: &str) {
    // The shell's own `kill`: a machine with only the Rust toolchain may lack `/bin/kill`.
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            "kill \"$1\" \"$2\"",
            "sh",
            signal,
            &std::process::id().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_skips_the_rest_of_it() {
    let health = Health::builder().build().unwrap();
    let drain = health.drain_handle();
    let shutdown = Shutdown::on_signal(drain.clone(), Duration::from_secs(120));
    let started = Instant::now();
    send("-INT");
    while !drain.is_draining() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the first signal starts the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One signal only drains: the grace period is still running.
    let waiting = shutdown.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.wait())
            .await
            .is_err()
    );
    send("-INT");
    tokio::time::timeout(Duration::from_secs(10), shutdown.wait())
        .await
        .expect("the second signal ends the drain long before its 120 s");
    assert!(drain.is_draining(), "/ready keeps answering draining");
}

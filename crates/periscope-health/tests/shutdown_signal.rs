//! `Shutdown::on_signal` with a real SIGTERM sent to this test process (its own binary, so no
//! other test sees the signal).
#![cfg(all(feature = "signal", unix))]

use std::time::Duration;

use periscope_health::{Health, Shutdown};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_stops() {
    let health = Health::builder().build().unwrap();
    let drain = health.drain_handle();
    // The handlers are in place when on_signal returns: the signal below cannot be missed (and
    // does not end the process).
    let shutdown = Shutdown::on_signal(drain.clone(), Duration::from_millis(200));
    assert!(!drain.is_draining());
    let status = std::process::Command::new("sh")
        // The shell's own `kill`: a machine with only the Rust toolchain may lack `/bin/kill`.
        .args([
            "-c",
            "kill -TERM \"$1\"",
            "sh",
            &std::process::id().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), shutdown.wait())
        .await
        .expect("SIGTERM ends the wait");
    assert!(drain.is_draining());
}

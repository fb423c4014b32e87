//! The ready-made checks against real sockets and a real file system.

mod support;

use std::time::Duration;

use periscope_health::{Health, HealthCheck, Status, checks};
use tokio::net::TcpListener;

async fn outcome(check: HealthCheck) -> Option<String> {
    let health = Health::builder().add_check(check).build().unwrap();
    let report = health.readiness().await;
    report.checks()[0].error.clone()
}

async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passes_while_the_port_accepts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    assert_eq!(
        outcome(HealthCheck::new("db", checks::tcp(addr))).await,
        None
    );

    let closed = closed_port().await;
    let error = outcome(HealthCheck::new("db", checks::tcp(closed.clone())))
        .await
        .unwrap();
    assert!(
        error.starts_with(&format!("connect to {closed} failed")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_passes_on_2xx_and_fails_otherwise() {
    let upstream = Health::builder()
        .check("dependency", || async { Err::<(), _>("down") })
        .build()
        .unwrap();
    let addr = support::serve(upstream.service()).await;

    let live = checks::http_get(&format!("http://{addr}/health")).unwrap();
    assert_eq!(outcome(HealthCheck::new("upstream", live)).await, None);

    // The error, which `/ready` may show, names the URL without the key in its query.
    let url = format!("http://{addr}/ready");
    let ready = checks::http_get(&format!("{url}?api_key=s3cret")).unwrap();
    assert_eq!(
        outcome(HealthCheck::new("upstream", ready)).await,
        Some(format!("GET {url} answered 503"))
    );

    let closed = format!("http://{}/health", closed_port().await);
    let refused = checks::http_get(&closed).unwrap();
    let error = outcome(HealthCheck::new("upstream", refused))
        .await
        .unwrap();
    assert!(
        error.starts_with(&format!("GET {closed}: connect failed")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_reports_a_server_that_is_not_http() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    });
    let url = format!("http://{addr}/");
    let error = outcome(HealthCheck::new("x", checks::http_get(&url).unwrap())).await;
    assert_eq!(
        error,
        Some(format!("GET {url}: the answer is not HTTP/1.x"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_to_a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and never answers.
    let _held = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let check = HealthCheck::new("x", checks::http_get(&format!("http://{addr}/")).unwrap())
        .timeout(Duration::from_millis(200));
    assert_eq!(
        outcome(check).await,
        Some("timed out after 200ms".to_owned())
    );
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("periscope-health-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_checks_directories_and_files_and_leaves_nothing_behind() {
    let dir = scratch_dir("writable");
    assert_eq!(
        outcome(HealthCheck::new("dir", checks::writable(&dir))).await,
        None
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the probe file is removed"
    );

    let file = dir.join("state.db");
    std::fs::write(&file, b"data").unwrap();
    assert_eq!(
        outcome(HealthCheck::new("file", checks::writable(&file))).await,
        None
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"data",
        "the file is left unchanged"
    );

    let missing = dir.join("missing");
    let error = outcome(HealthCheck::new("missing", checks::writable(&missing)))
        .await
        .unwrap();
    assert!(error.contains("is not writable: stat failed"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_never_removes_a_file_it_did_not_create() {
    // Another process's files in a shared directory, named as this process would name its
    // probe files (replicas in containers often share a pid).
    let dir = scratch_dir("writable-shared");
    let theirs: Vec<_> = (0..1000)
        .map(|n| dir.join(format!(".periscope-health-{}-{n}", std::process::id())))
        .collect();
    for file in &theirs {
        std::fs::write(file, b"theirs").unwrap();
    }
    for _ in 0..3 {
        assert_eq!(
            outcome(HealthCheck::new("dir", checks::writable(&dir))).await,
            None
        );
    }
    for file in &theirs {
        assert_eq!(
            std::fs::read(file).unwrap(),
            b"theirs",
            "{}",
            file.display()
        );
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), theirs.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A blocking call stuck in the kernel (here: opening a FIFO nobody reads, as a hung NFS mount
/// would) outlives the timeout; later runs must report it at once instead of piling up threads.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_check_stuck_in_the_kernel_is_not_started_again() {
    let dir = scratch_dir("stuck");
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Unblocks the stuck open even when an assertion fails, or the runtime's shutdown would wait
    // for that thread forever (on Linux, opening a FIFO read-write never blocks).
    struct Unblock(std::path::PathBuf);
    impl Drop for Unblock {
        fn drop(&mut self) {
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0);
        }
    }
    let unblock = Unblock(fifo.clone());
    let health = Health::builder()
        .add_check(
            HealthCheck::new("fifo", checks::writable(&fifo)).timeout(Duration::from_millis(100)),
        )
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();

    let first = health.readiness().await;
    assert_eq!(
        first.checks()[0].error.as_deref(),
        Some("timed out after 100ms")
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let again = health.readiness().await;
        let error = again.checks()[0].error.clone().unwrap();
        assert!(
            error.contains("the previous check is still blocked"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    // A reader unblocks the stuck open; the check then runs again.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = health.readiness().await;
        if report.checks()[0].error.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((reader, unblock));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_space_compares_against_the_threshold() {
    let dir = scratch_dir("disk");
    assert_eq!(
        outcome(HealthCheck::new("disk", checks::disk_space(&dir, 1))).await,
        None
    );
    let error = outcome(HealthCheck::new("disk", checks::disk_space(&dir, u64::MAX)))
        .await
        .unwrap();
    assert!(
        error.ends_with("available, below the 16.0 EiB threshold"),
        "{error}"
    );

    let health = Health::builder()
        .add_check(
            HealthCheck::new("disk", checks::disk_space(dir.join("missing"), 1)).non_critical(),
        )
        .build()
        .unwrap();
    let report = health.readiness().await;
    assert_eq!(report.status(), Status::Degraded);
    assert!(
        report.checks()[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("free space of")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

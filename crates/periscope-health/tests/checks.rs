//! The ready-made checks against real sockets and a real file system.

mod support;

use std::time::Duration;

use periscope_health::{Check, CheckError, Health, HealthCheck, Status, checks};
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
async fn http_get_fails_an_answer_cut_short_and_says_how() {
    const CUT: &[&[u8]] = &[b"HTTP/1.1 200"];
    const NOTHING: &[&[u8]] = &[];
    for (pieces, what) in [
        (
            CUT,
            "the connection closed in the middle of the status line",
        ),
        (NOTHING, "the connection closed without an answer"),
    ] {
        let url = answer_once(pieces).await;
        let error = outcome(HealthCheck::new("x", checks::http_get(&url).unwrap())).await;
        assert_eq!(error, Some(format!("GET {url}: {what}")));
    }
    // A reason phrase past the status line's limit is not a cut: the code is read.
    let long = format!(
        "HTTP/1.1 200 {}\r\ncontent-length: 0\r\n\r\n",
        "O".repeat(1100)
    );
    let pieces: &'static [&'static [u8]] = Box::leak(Box::new([long.leak().as_bytes()]));
    let url = answer_once(pieces).await;
    let error = outcome(HealthCheck::new("x", checks::http_get(&url).unwrap())).await;
    assert_eq!(error, None);
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

/// Serves one connection on 127.0.0.1: reads the request head, then writes what `answer` writes.
async fn serve_once<F, Fut>(answer: F) -> String
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut chunk = [0_u8; 256];
        while !request.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut chunk).await.unwrap();
            assert_ne!(read, 0, "the request head is complete");
            request.extend_from_slice(&chunk[..read]);
        }
        answer(stream).await;
    });
    format!("http://{addr}/health")
}

/// Answers `head` once, in pieces, flushed one by one.
async fn answer_once(pieces: &'static [&'static [u8]]) -> String {
    serve_once(move |mut stream| async move {
        use tokio::io::AsyncWriteExt;
        for piece in pieces {
            stream.write_all(piece).await.unwrap();
            stream.flush().await.unwrap();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_skips_interim_responses() {
    // RFC 9110 §15.2: `103 Early Hints` and `100 Continue` come before the final response.
    let url = answer_once(&[
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n",
        b"Link: </app.js>; rel=preload; as=script\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ])
    .await;
    let check = HealthCheck::new("early-hints", checks::http_get(&url).unwrap());
    assert_eq!(outcome(check).await, None);

    // The final status counts, not the interim ones.
    let url = answer_once(&[
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r",
        b"\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    ])
    .await;
    let check = HealthCheck::new("upstream", checks::http_get(&url).unwrap());
    assert_eq!(
        outcome(check).await,
        Some(format!("GET {url} answered 503"))
    );

    // A connection closed after an interim response has no final status.
    let url =
        answer_once(&[b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"]).await;
    let check = HealthCheck::new("upstream", checks::http_get(&url).unwrap());
    assert_eq!(
        outcome(check).await,
        Some(format!(
            "GET {url}: the connection closed after an interim (1xx) response"
        ))
    );
}

/// A server that sends interim responses without end cannot hold the check, or make it buffer
/// without bound: it gives up after a few, well before its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_gives_up_on_endless_interim_responses() {
    use tokio::io::AsyncWriteExt;
    let url = serve_once(|mut stream| async move {
        while stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_ok()
        {}
    })
    .await;
    let check =
        HealthCheck::new("x", checks::http_get(&url).unwrap()).timeout(Duration::from_secs(30));
    assert_eq!(
        outcome(check).await,
        Some(format!("GET {url}: more than 8 interim (1xx) responses"))
    );

    // Nor one interim response with endless header fields.
    let url = serve_once(|mut stream| async move {
        stream
            .write_all(b"HTTP/1.1 103 Early Hints\r\n")
            .await
            .unwrap();
        while stream
            .write_all(b"Link: </a.css>; rel=preload\r\n")
            .await
            .is_ok()
        {}
    })
    .await;
    let check =
        HealthCheck::new("x", checks::http_get(&url).unwrap()).timeout(Duration::from_secs(30));
    assert_eq!(
        outcome(check).await,
        Some(format!(
            "GET {url}: the interim (1xx) responses exceed 16 KiB"
        ))
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

/// A file and a directory that exist but cannot be written, whoever runs the test (root
/// included: sysfs's read-only files and directories) fail, saying which step did.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_fails_for_a_file_or_directory_that_cannot_be_written() {
    const READ_ONLY: &str = "/sys/devices/system/cpu/online";
    if !std::path::Path::new(READ_ONLY).exists() {
        println!("no sysfs here: skipping the unwritable-path test");
        return;
    }
    let error = outcome(HealthCheck::new("file", checks::writable(READ_ONLY)))
        .await
        .expect("a read-only sysfs file cannot be opened for appending");
    assert!(
        error.contains(&format!(
            "{READ_ONLY} is not writable: open for append failed"
        )),
        "{error}"
    );
    let error = outcome(HealthCheck::new("dir", checks::writable("/sys/kernel")))
        .await
        .expect("no file can be created under sysfs");
    assert!(
        error.contains("/sys/kernel is not writable: create a probe file failed"),
        "{error}"
    );
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

/// A FIFO in `dir`: opening it to write blocks in the kernel until someone opens it to read, as a
/// call on a hung NFS mount would.
#[cfg(unix)]
fn make_fifo(dir: &std::path::Path) -> std::path::PathBuf {
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    fifo
}

/// Unblocks an open stuck on the FIFO even when an assertion fails, or the runtime's shutdown
/// would wait for that thread forever (on Linux, opening a FIFO read-write never blocks). The
/// reader is left open, so an open whose thread has not got there yet does not block either.
#[cfg(unix)]
struct Unblock(std::path::PathBuf);

#[cfg(unix)]
impl Drop for Unblock {
    fn drop(&mut self) {
        if let Ok(reader) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0)
        {
            std::mem::forget(reader);
        }
    }
}

/// A file-system check stuck in the kernel does not keep the process from exiting: the runtime
/// `#[tokio::main]` drops at the end of `main` waits for every `spawn_blocking` task still
/// running, so the call must not be one (a service drained and stopped after SIGTERM, then
/// hung until killed).
#[cfg(unix)]
#[test]
fn a_file_system_check_stuck_in_the_kernel_does_not_hold_the_runtime_at_exit() {
    let dir = scratch_dir("exit");
    let fifo = make_fifo(&dir);
    let _unblock = Unblock(fifo.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let health = Health::builder()
        .add_check(
            HealthCheck::new("fifo", checks::writable(&fifo)).timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let report = runtime.block_on(health.readiness());
    assert_eq!(
        report.checks()[0].error.as_deref(),
        Some("timed out after 200ms")
    );
    let (dropped, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = dropped.send(());
    });
    assert!(
        done.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the runtime's drop waits for the stuck file-system call"
    );
}

/// A blocking call stuck in the kernel (here: opening a FIFO nobody reads, as a hung NFS mount
/// would) outlives the timeout; later runs must report it at once instead of piling up threads.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_check_stuck_in_the_kernel_is_not_started_again() {
    let dir = scratch_dir("stuck");
    let fifo = make_fifo(&dir);
    let unblock = Unblock(fifo.clone());
    let health = Health::builder()
        .add_check(
            HealthCheck::new("fifo", checks::writable(&fifo)).timeout(Duration::from_secs(2)),
        )
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();

    let first = health.readiness().await;
    assert_eq!(
        first.checks()[0].error.as_deref(),
        Some("timed out after 2s")
    );
    let mut errors = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let again = health.readiness().await;
        let error = again.checks()[0].error.clone().unwrap();
        assert!(
            error.contains("the previous check is still blocked"),
            "{error}"
        );
        // At once, not after the check's timeout, with room for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(1));
        errors.push(error);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same text each time: a steady failure is logged once, not on every probe.
    assert!(
        errors.windows(2).all(|pair| pair[0] == pair[1]),
        "{errors:?}"
    );

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

/// The same check cloned into two `Health`es: their runs overlap, and neither is failed as
/// "still blocked" because the other's file-system call is in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_runs_of_a_cloned_file_system_check_both_pass() {
    let dir = scratch_dir("overlap");
    let writable = checks::writable(&dir);
    let disk = checks::disk_space(&dir, 1);
    let build = || {
        Health::builder()
            .add_check(HealthCheck::new("dir", writable.clone()).timeout(Duration::from_secs(30)))
            .add_check(HealthCheck::new("disk", disk.clone()).timeout(Duration::from_secs(30)))
            .cache_ttl(Duration::ZERO)
            .build()
            .unwrap()
    };
    let (one, two) = (build(), build());
    for _ in 0..20 {
        let (a, b) = tokio::join!(one.readiness(), two.readiness());
        for report in [a, b] {
            assert_eq!(report.status(), Status::Ok, "{report:?}");
        }
        let (a, b) = tokio::join!(writable.check(), writable.check());
        assert_eq!(a.err().map(|error| error.message().to_owned()), None);
        assert_eq!(b.err().map(|error| error.message().to_owned()), None);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run that finds the check's call in progress waits for it, then makes its own; once the run
/// that started the call gives up on it (its timeout), the waiting run fails as "still blocked".
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_overlapping_a_file_system_call_in_progress_waits_for_it() {
    use std::task::Poll;
    let dir = scratch_dir("overlap-fifo");
    let fifo = make_fifo(&dir);
    let unblock = Unblock(fifo.clone());
    let check = checks::writable(&fifo);
    let clone = check.clone();
    let message =
        |result: Result<(), CheckError>| result.err().map(|error| error.message().to_owned());

    let (mut first, mut second) = (check.check(), clone.check());
    // The first run's call blocks opening the FIFO; the second finds it in progress.
    std::future::poll_fn(|cx| {
        assert!(first.as_mut().poll(cx).is_pending());
        if let Poll::Ready(result) = second.as_mut().poll(cx) {
            panic!("the second run did not wait: {:?}", message(result));
        }
        Poll::Ready(())
    })
    .await;
    // A reader unblocks the call; then the second run makes its own.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(first, second)
    });
    let (a, b) = both
        .await
        .expect("both runs finish once the FIFO has a reader");
    assert_eq!((message(a), message(b)), (None, None));
    drop(reader);

    let (mut first, mut second) = (check.check(), clone.check());
    std::future::poll_fn(|cx| {
        assert!(first.as_mut().poll(cx).is_pending());
        assert!(second.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    // The first run gives up (as at its timeout) while its call is stuck: the waiting run fails
    // at once instead of starting another blocked call.
    drop(first);
    let error = std::future::poll_fn(|cx| match second.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(message(result)),
        Poll::Pending => panic!("the waiting run still waits on an abandoned call"),
    })
    .await
    .unwrap();
    assert!(
        error.contains("the previous check is still blocked"),
        "{error}"
    );
    drop(second);

    // A reader unblocks the stuck call (whenever its thread gets to the open); the check then
    // runs again.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(error) = message(check.check().await) {
        assert!(std::time::Instant::now() < deadline, "{error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((reader, unblock));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The threshold is weighed against the space available to unprivileged users: half of it
/// passes, and a threshold between it and the free space (which counts the blocks reserved
/// for root) or the total fails, where those differ enough to tell apart from the space that
/// other processes' writes take meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_space_weighs_the_space_available_to_unprivileged_users() {
    const MARGIN: u64 = 64 << 20;
    let dir = scratch_dir("disk-available");
    let available = fs4::available_space(&dir).unwrap();
    let free = fs4::free_space(&dir).unwrap();
    let total = fs4::total_space(&dir).unwrap();
    let passes = async |threshold: u64| {
        outcome(HealthCheck::new(
            "disk",
            checks::disk_space(&dir, threshold),
        ))
        .await
        .is_none()
    };
    assert!(passes(available / 2).await, "half the available space");
    if total - available > MARGIN {
        assert!(
            !passes(available + (total - available) / 2).await,
            "total: {total}"
        );
    }
    if free - available > MARGIN {
        assert!(
            !passes(available + (free - available) / 2).await,
            "free: {free}"
        );
    } else {
        println!(
            "no reserved blocks on {}: the free-space case is not told apart",
            dir.display()
        );
    }
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
    // No figure of the space left, which changes with every write: a steady failure reads the
    // same on every probe, so it is logged once, not on every probe.
    assert_eq!(
        error,
        format!(
            "{} has less than the 16.0 EiB threshold available",
            dir.display()
        )
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

/// On a runtime built without timers the checks cannot be timed: the report says so, with
/// tokio's own words on what to enable, instead of calling the run cancelled.
#[test]
fn a_runtime_without_timers_is_named_as_the_cause() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let error = runtime.block_on(async {
        let check = periscope_health::check_fn(|| async { Ok::<_, String>(()) });
        outcome(HealthCheck::new("db", check))
            .await
            .expect("the check cannot pass")
    });
    assert!(error.contains("enable_time"), "{error}");
    assert!(!error.contains("cancelled"), "{error}");
}

/// A check runs under an unsampled context: the probe's that started the run (its request id
/// and trace), else a new trace's (a run with no request around it, as a background poller's).
/// A call it makes through periscope's client layer then goes out with the sampled flag off,
/// so no span is exported for a probe on either side.
#[tokio::test]
async fn checks_run_under_the_probes_context_unsampled() {
    use std::sync::{Arc, Mutex};

    use periscope_context::{RequestContext, RequestId, TraceFlags};

    /// What each run's check saw: its request id and whether it is sampled.
    type Seen = Vec<Option<(String, bool)>>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = Arc::clone(&seen);
    let health = periscope_health::Health::builder()
        .check("dependency", move || {
            let record = Arc::clone(&record);
            async move {
                let ctx = RequestContext::current();
                record
                    .lock()
                    .unwrap()
                    .push(ctx.map(|ctx| (ctx.request_id.as_str().to_owned(), ctx.is_sampled())));
                Ok::<_, String>(())
            }
        })
        .cache_ttl(std::time::Duration::ZERO)
        .build()
        .unwrap();

    let mut probe = RequestContext::new_root();
    probe.request_id = RequestId::parse("probe-1").unwrap();
    probe.trace_flags = TraceFlags::SAMPLED;
    probe.scope(health.readiness()).await;
    health.readiness().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], Some(("probe-1".to_owned(), false)));
    let (request_id, sampled) = seen[1].clone().expect("a context of its own");
    assert!(
        request_id.starts_with("req_") && !sampled,
        "{request_id} {sampled}"
    );
}

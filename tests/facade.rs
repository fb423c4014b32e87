//! The facade end to end over a real socket: `Observability` installs the log layer, and its
//! composed layer gives every response a request id, every failure an envelope, every request
//! a log line and a count. One test per binary calls `init`, which installs the global
//! subscriber once; another runs `Server` alone; the third checks every signal of each kind of
//! outcome under a subscriber of its own thread.

#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::Observability;
use periscope::error::{HttpError, codes};
use serde_json::Value;

mod capture;
use capture::{Captured, capture_lines, set_default};

/// A callsite another test's thread (with no subscriber of its own) meets first is still
/// enabled for a test capturing lines: see [`set_default`].
#[test]
fn a_line_whose_callsite_another_thread_met_first_is_captured() {
    fn log() {
        tracing::info!(target: "periscope::first_met", "once per thread");
    }
    let (out, log_guard, default) = capture_lines(None);
    std::thread::spawn(log).join().unwrap();
    log();
    drop(default);
    drop(log_guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["message"], "once per thread");
}

struct Answer {
    status: u16,
    request_id: String,
    body: String,
}

async fn get_path(addr: SocketAddr, path: &str, request_id: Option<&str>) -> Answer {
    get_with(addr, path, request_id, None).await
}

async fn get_with(
    addr: SocketAddr,
    path: &str,
    request_id: Option<&str>,
    token: Option<&str>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    // Bounded, so a server that never answers fails the test instead of holding it.
    let exchange = async {
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            request_id,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within 30 s"))
}

async fn conflict() -> Result<&'static str, HttpError> {
    Err(
        HttpError::new(codes::CONFLICT, "the job is already completed")
            .with_detail("job_id", "job_1"),
    )
}

async fn boom() -> &'static str {
    panic!("secret panic text")
}

/// Serves `app` with axum on a port of 127.0.0.1.
async fn serve_on_loopback(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_setup_gives_ids_envelopes_logs_and_metrics() {
    let out = Captured::default();
    let obs = Observability::builder()
        .service_name("facade-test")
        .version("9.9.9")
        .log_writer(out.clone())
        .env_from(|name| match name {
            "ENVIRONMENT" => Some("test".to_owned()),
            "LOG_LEVEL" => Some("info".to_owned()),
            "ADMIN_TOKEN" => Some("facade-test-token-0123456789".to_owned()),
            _ => None,
        })
        .unwrap()
        .request_timeout(Duration::from_secs(1))
        .gpu(cfg!(feature = "gpu"))
        .build()
        .unwrap();
    // The GPU collector's first sample, before the log is in: where there is no GPU, its
    // warning would have reached nobody.
    #[cfg(feature = "gpu")]
    let gpu_up = {
        let gpu = obs.gpu().unwrap();
        assert!(gpu.refresh(Duration::from_secs(10)));
        gpu.is_up()
    };
    let guard = obs.init().unwrap();
    assert!(matches!(
        obs.init(),
        Err(periscope::Error::AlreadyInitialized)
    ));

    let app = Router::new()
        .route(
            "/jobs/{id}",
            get(|| async {
                log::info!(target: "legacy_client", "answered through the log crate: {}", 42);
                log::debug!(target: "legacy_client", "below the level: never written");
                "ok"
            }),
        )
        .route("/conflict", get(conflict))
        .route("/panic", get(boom))
        .route("/slow", get(slow))
        .merge(obs.admin().router())
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let ok = get_path(addr, "/jobs/42", Some("client-id-1")).await;
    assert_eq!(
        (ok.status, ok.request_id.as_str(), ok.body.as_str()),
        (200, "client-id-1", "ok")
    );

    let conflict = get_path(addr, "/conflict", None).await;
    assert_eq!(conflict.status, 409);
    let envelope: Value = serde_json::from_str(&conflict.body).unwrap();
    assert_eq!(envelope["error"]["code"], "conflict");
    assert_eq!(
        envelope["error"]["request_id"],
        conflict.request_id.as_str()
    );
    assert_eq!(envelope["error"]["details"]["job_id"], "job_1");

    let panic = get_path(addr, "/panic", None).await;
    assert_eq!(panic.status, 500);
    assert!(!panic.body.contains("secret panic text"));
    let envelope: Value = serde_json::from_str(&panic.body).unwrap();
    assert_eq!(envelope["error"]["code"], "internal_error");
    assert_eq!(envelope["error"]["request_id"], panic.request_id.as_str());

    // A timeout is answered like any failure: the caller's id echoed, in the envelope too.
    let timed_out = get_path(addr, "/slow", Some("client-id-slow")).await;
    assert_eq!(
        (timed_out.status, timed_out.request_id.as_str()),
        (504, "client-id-slow")
    );
    let envelope: Value = serde_json::from_str(&timed_out.body).unwrap();
    assert_eq!(envelope["error"]["code"], "timeout");
    assert_eq!(envelope["error"]["request_id"], "client-id-slow");

    let missing = get_path(addr, "/no/such/route", None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("route_not_found"));

    let ready = get_path(addr, "/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    // The debug endpoints sit behind ADMIN_TOKEN.
    assert_eq!(get_path(addr, "/debug/status", None).await.status, 401);
    let wrong = get_with(addr, "/debug/status", None, Some("not-the-token-at-all")).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("token_invalid"), "{}", wrong.body);
    let status = get_with(
        addr,
        "/debug/status",
        None,
        Some("facade-test-token-0123456789"),
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.body);
    let status: Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["service"], "facade-test");
    let config = get_with(
        addr,
        "/debug/config",
        None,
        Some("facade-test-token-0123456789"),
    )
    .await;
    assert!(
        !config.body.contains("facade-test-token"),
        "{}",
        config.body
    );

    let metrics = get_path(addr, "/metrics", None).await.body;
    let count = |route: &str, status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("http_server_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(
        count("/jobs/{id}", "2xx").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(count("/panic", "5xx").as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("/slow", "5xx").as_deref(), Some("1"), "{metrics}");
    assert_eq!(
        count("__unmatched__", "4xx").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert!(metrics.contains("service_info{"), "{metrics}");
    assert!(
        metrics.contains("periscope_log_dropped_lines_total 0"),
        "{metrics}"
    );
    // Its help names every cause an on-call engineer may find, a failed write among them.
    let help = metrics
        .lines()
        .find(|line| line.starts_with("# HELP periscope_log_dropped_lines"))
        .unwrap();
    assert!(help.contains("a write failed"), "{help}");

    drop(guard);
    let lines = out.lines();
    for line in &lines {
        assert_eq!(line["service"], "facade-test");
        assert_eq!(line["environment"], "test");
        assert_eq!(line["version"], "9.9.9");
    }
    let access = |request_id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no access line for {request_id}: {lines:#?}"))
    };
    let ok_line = access("client-id-1");
    assert_eq!(ok_line["data"]["status"], 200);
    assert_eq!(access("client-id-slow")["data"]["status"], 504);
    // A record of the `log` crate: its own target and level, the request's ids, no `log.*`.
    let bridged: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "legacy_client")
        .collect();
    assert_eq!(bridged.len(), 1, "{bridged:#?}");
    assert_eq!(bridged[0]["level"], "info");
    assert_eq!(bridged[0]["message"], "answered through the log crate: 42");
    assert_eq!(bridged[0]["request_id"], "client-id-1");
    assert_eq!(bridged[0]["trace_id"], ok_line["trace_id"]);
    assert!(!bridged[0].to_string().contains("log."), "{}", bridged[0]);
    assert_eq!(ok_line["data"]["route"], "/jobs/{id}");
    assert_eq!(ok_line["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(access(&panic.request_id)["level"], "error");
    let panic_log = lines
        .iter()
        .find(|l| {
            l["request_id"] == panic.request_id.as_str()
                && l.to_string().contains("secret panic text")
        })
        .expect("the panic message goes to the log");
    assert_eq!(panic_log["level"], "error");
    assert_eq!(panic_log["trace_id"], access(&panic.request_id)["trace_id"]);
    // A GPU collector down from its first sample is warned about once the log is in.
    #[cfg(feature = "gpu")]
    {
        let gpu_down: Vec<_> = lines
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("GPU collector is down"))
            })
            .collect();
        assert_eq!(gpu_down.len(), usize::from(!gpu_up), "{gpu_down:#?}");
        if let Some(line) = gpu_down.first() {
            assert_eq!(line["level"], "warn");
            assert!(line["data"]["error"].as_str().is_some(), "{line}");
        }
    }
}

/// The app of the server tests: `/hello` at once, `/slow` after 300 ms.
#[cfg(feature = "serve")]
fn hello_and_slow() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
}

/// What the server sends on `stream` until it closes the connection (within 5 s).
#[cfg(feature = "serve")]
async fn read_until_closed(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;

    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .expect("the server closed the connection in time")
        .unwrap();
    answer
}

/// `Server` hands an upgraded connection (WebSocket's handshake, here a byte echo) to the
/// service: the 101 keeps its `Connection: upgrade` while draining, the bytes after it reach
/// the service's task, silence on it for longer than the head and idle timeouts does not close
/// it, and the shutdown neither waits for the connection nor closes it.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_hands_upgraded_connections_to_the_service() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = Router::new().route(
        "/echo",
        get(|mut request: axum::extract::Request| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                let mut buffer = [0; 64];
                loop {
                    match io.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => io.write_all(&buffer[..n]).await.unwrap(),
                    }
                }
            });
            http::Response::builder()
                .status(http::StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(axum::body::Body::empty())
                .unwrap()
        }),
    );
    let drain = periscope::health::DrainHandle::default();
    drain.drain();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        periscope::Server::new(listener)
            .drain_handle(drain)
            .header_read_timeout(Duration::from_millis(200))
            .idle_timeout(Duration::from_millis(300))
            .serve(app, async {
                let _ = stopped.await;
            }),
    );

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed after {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");

    // Silent for longer than both timeouts: the connection is the service's, not timed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut echoed = [0; 5];
    stream.write_all(b"ping1").await.unwrap();
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping1");

    // The shutdown is not held by the upgraded connection, which goes on.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped without waiting for the upgraded connection")
        .unwrap()
        .unwrap();
    stream.write_all(b"ping2").await.unwrap();
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping2");
}

/// `Server` answers a request head over 64 KiB with 431 itself (hyper would buffer about
/// 400 KiB per connection otherwise); one under it reaches the service.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_request_heads_over_its_limit() {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(hello_and_slow(), std::future::pending()));
    // A limit raised past hyper's own read buffer (about 408 KiB) holds over HTTP/1.1 too.
    let raised = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raised_addr = raised.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(raised)
            .max_header_size(1 << 20)
            .serve(hello_and_slow(), std::future::pending()),
    );
    for (addr, header, status) in [
        (addr, 60 << 10, "200"),
        (addr, 100 << 10, "431"),
        (raised_addr, 500 << 10, "200"),
        (raised_addr, 1100 << 10, "431"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /hello HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-big: {}\r\n\r\n",
            "a".repeat(header)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_until_closed(stream).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{header} bytes: {answer}"
        );
    }
}

/// `Server::max_connections`: past the cap a new connection waits in the listen queue, and is
/// served as soon as one of those open closes.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_at_most_max_connections_at_once() {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .max_connections(2)
            .serve(hello_and_slow(), std::future::pending()),
    );
    let request = b"GET /hello HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    // Two connections held open: each answered (so surely accepted), then kept.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0; 12];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer)
            .await
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    // A third waits: its request is not answered while both are open.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut first_byte = [0; 1];
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut third, &mut first_byte),
    )
    .await;
    assert!(waited.is_err(), "answered past the cap: {waited:?}");
    // One closes: the third is served.
    drop(held.pop());
    let answer = read_until_closed(third).await;
    assert!(answer.ends_with("hello"), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `Server`: a client that never finishes its request head is cut off, and does not hold the
/// shutdown; requests in flight at the signal still get their answer.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cuts_off_slow_request_heads_and_finishes_requests_in_flight() {
    use tokio::io::AsyncWriteExt;

    // `/slow` says when it has started, so the signal surely comes while it is in flight.
    let slow_started = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get({
                let slow_started = slow_started.clone();
                || async move {
                    slow_started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(200))
            .serve(app, async {
                let _ = stopped.await;
            }),
    );

    let exchange = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        read_until_closed(stream).await
    };
    let hello = exchange("GET /hello HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    assert!(
        hello.starts_with("HTTP/1.1 200") && hello.ends_with("hello"),
        "{hello}"
    );

    // Half a request head, then silence: closed after the timeout, not held open.
    let started = std::time::Instant::now();
    exchange("GET /hello HTTP/1.1\r\nhost: a\r\n").await;
    assert!(started.elapsed() < Duration::from_secs(3));

    // A request in flight when the signal comes still gets its answer; then the server stops,
    // a silent connection left open notwithstanding.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(exchange(
        "GET /slow HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    ));
    tokio::time::timeout(Duration::from_secs(10), slow_started.notified())
        .await
        .expect("/slow was called");
    drop(stop);
    let slow = slow.await.unwrap();
    assert!(
        slow.starts_with("HTTP/1.1 200") && slow.ends_with("done"),
        "{slow}"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

/// A server of [`hello_and_slow`] with the request-head and idle timeouts given, whose log
/// (warnings: the rejected requests) goes to the `Captured` returned; the subscriber is this
/// thread's (a current-thread runtime's tasks) while the guard lives.
#[cfg(feature = "serve")]
async fn server_with_timeouts(
    head: Duration,
    idle: Duration,
) -> (
    SocketAddr,
    Captured,
    periscope::log::LogGuard,
    tracing::subscriber::DefaultGuard,
) {
    let (out, log_guard, default) = capture_lines(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(head)
            .idle_timeout(idle)
            .serve(hello_and_slow(), std::future::pending()),
    );
    (addr, out, log_guard, default)
}

/// Waits (5 s at most) for the server's first warning, then ends the capture: its warnings.
#[cfg(feature = "serve")]
async fn warnings_once_one_came(
    out: &Captured,
    log_guard: periscope::log::LogGuard,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !out.lines().iter().any(|line| line["level"] == "warn") {
        assert!(std::time::Instant::now() < deadline, "{:?}", out.lines());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(log_guard);
    out.lines()
        .into_iter()
        .filter(|line| line["level"] == "warn")
        .collect()
}

/// Sends `GET path` `count` times in one write (pipelined), and reads their `count` answers,
/// each `body`.
#[cfg(feature = "serve")]
async fn pipelined_gets(stream: &mut tokio::net::TcpStream, path: &str, body: &str, count: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let requests = format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").repeat(count);
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    while String::from_utf8_lossy(&answers)
        .matches(&format!("\r\n\r\n{body}"))
        .count()
        < count
    {
        let mut chunk = [0; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("answered in time");
        // An error (a reset) or an end: the server closed the connection.
        let n = read.unwrap_or(0);
        assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&answers));
        answers.extend_from_slice(&chunk[..n]);
    }
}

/// A kept-alive connection waits for its next request for the idle timeout, not the (shorter)
/// request-head timeout: idle for longer than the head timeout, it still takes requests
/// (pipelined too); idle for the idle timeout, the server closes it, without a warning.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_keeps_idle_connections_for_the_idle_timeout() {
    use tokio::io::AsyncReadExt;

    const HEAD: Duration = Duration::from_millis(200);
    // Wide of the 700 ms idle below, so a late wake-up on a loaded machine does not miss it.
    const IDLE: Duration = Duration::from_millis(3000);
    let (addr, out, log_guard, _default) = server_with_timeouts(HEAD, IDLE).await;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    pipelined_gets(&mut stream, "/hello", "hello", 2).await;
    // Idle for over three head timeouts, and under a quarter of the idle timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Taken before the last request: the server's idle clock starts after its answer, so the
    // close cannot come sooner than the idle timeout after this, however late this task runs.
    let before_last_request = std::time::Instant::now();
    // One that takes a while: hyper waits on the stream while the service works.
    pipelined_gets(&mut stream, "/slow", "done", 1).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(IDLE + Duration::from_secs(5), stream.read_to_end(&mut rest));
    assert!(
        closed.await.expect("closed in time").is_ok(),
        "an end, not a reset"
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let waited = before_last_request.elapsed();
    assert!(waited >= IDLE, "{waited:?}");

    // The rejection warning would be written at once: none came for the idle close. A head
    // over the size limit, sent last, is warned about: the capture sees the server's lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut oversized = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /hello HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    tokio::io::AsyncWriteExt::write_all(&mut oversized, head.as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(oversized).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let warnings = warnings_once_one_came(&out, log_guard).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["data"]["too_large"], 1, "{warnings:?}");
}

/// The request-head timeout counts from a head's first byte: a head begun after the connection
/// was idle for longer than the head timeout (and blank lines, which begin none) is cut off
/// the head timeout after it began, long before the idle timeout (its count in the server's
/// warning is tested in `rejected.rs`). A new connection that sends nothing is closed after the
/// head timeout (not the idle timeout), quietly.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_cuts_off_a_request_head_the_head_timeout_after_it_began() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_secs(60);
    let (addr, out, log_guard, _default) = server_with_timeouts(HEAD, IDLE).await;

    // Sends nothing at all: closed after the head timeout, without a warning.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connected = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest));
    assert!(closed.await.is_ok(), "closed long before the idle timeout");
    let waited = connected.elapsed();
    assert!(waited >= HEAD, "{waited:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !out.lines().iter().any(|line| line["level"] == "warn"),
        "{:?}",
        out.lines()
    );

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    pipelined_gets(&mut stream, "/hello", "hello", 1).await;
    // Idle for over two head timeouts; a blank line (which begins no head) amid.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Taken before the first byte: the server's head clock cannot start sooner.
    let before_head = std::time::Instant::now();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
    // Closed with bytes unread, the connection may end in a reset rather than an end.
    assert!(closed.await.is_ok(), "closed long before the idle timeout");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let waited = before_head.elapsed();
    assert!(waited >= HEAD, "{waited:?}");
    // The head cut off is warned about, at once: the only warning, so the silent connection
    // above (looked for in the same capture) got none.
    let warnings = warnings_once_one_came(&out, log_guard).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["data"]["head_timeout"], 1, "{warnings:?}");
}

/// A 4 MiB answer in one chunk (a `Vec`: hyper takes it whole at once) from a server with a
/// 200 ms head timeout and a 300 ms idle timeout, to a client with a small receive buffer,
/// and the shutdown signal's sender.
#[cfg(feature = "serve")]
async fn big_answer_to_a_slow_reader() -> (
    tokio::net::TcpStream,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    big_answer_to_a_slow_reader_of(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n").await
}

/// [`big_answer_to_a_slow_reader`], the answer asked for by `request`.
#[cfg(feature = "serve")]
async fn big_answer_to_a_slow_reader_of(
    request: &[u8],
) -> (
    tokio::net::TcpStream,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;

    let big = || async { vec![b'x'; BIG_ANSWER] };
    let app = Router::new().route("/big", get(big).post(big));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(200))
            .idle_timeout(Duration::from_millis(300))
            .serve(app, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    // A small receive buffer: the answer waits in the server, not in this socket.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    (stream, stop, server)
}

#[cfg(feature = "serve")]
const BIG_ANSWER: usize = 4 << 20;

/// Reads `stream` at about 1.6 MB/s until the server closes it (the 4 MiB answer takes over
/// two seconds, several idle timeouts), calling `at_quarter_mib` once 256 KiB came; asserts
/// the whole answer came.
#[cfg(feature = "serve")]
async fn read_the_big_answer_slowly(
    mut stream: tokio::net::TcpStream,
    mut at_quarter_mib: impl FnMut(),
) {
    use tokio::io::AsyncReadExt;

    let mut answer = Vec::new();
    let mut chunk = vec![0; 64 << 10];
    loop {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the server sent or closed in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if answer.len() >= 256 << 10 {
            at_quarter_mib();
        }
    }
    let head_end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an answer")
        + 4;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(answer.len() - head_end, BIG_ANSWER, "the whole body");
}

/// The idle timeout counts from an answer's last bytes written, not from the end of its body:
/// a body sent in one chunk ends for hyper at once, and reaches a slow reader long after; the
/// connection is not closed under it, and its client gets it whole.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_does_not_cut_off_an_answer_still_going_out_for_the_idle_timeout() {
    let (stream, _stop, _server) = big_answer_to_a_slow_reader().await;
    read_the_big_answer_slowly(stream, || {}).await;
}

/// Nor when the request had a body the service left unread: hyper reads it off while the
/// answer is still going out and waits for the next head from then, which must not time the
/// connection out under the answer.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn an_answer_still_going_out_after_an_unread_request_body_is_not_cut_off() {
    let mut request = b"POST /big HTTP/1.1\r\nhost: a\r\ncontent-length: 12000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 12000]);
    let (stream, _stop, _server) = big_answer_to_a_slow_reader_of(&request).await;
    read_the_big_answer_slowly(stream, || {}).await;
}

/// The shutdown signal does not cut off an answer still going out either (its body over for
/// hyper, its bytes not): the shutdown timeout bounds it.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_finishes_an_answer_still_going_out_at_the_shutdown_signal() {
    let (stream, stop, server) = big_answer_to_a_slow_reader().await;
    let addr = stream.peer_addr().unwrap();
    let mut stop = Some(stop);
    read_the_big_answer_slowly(stream, || drop(stop.take())).await;
    // The signal came: the server stops once the answer is out, and takes no new connection.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped after the answer went out")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A request body the service left unread (a 404 to a `POST`), which hyper reads off after the
/// answer, is not taken for the next request's head: the connection still waits the idle
/// timeout for it, not the head timeout.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn a_request_body_left_unread_does_not_shorten_the_idle_wait() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_secs(5))
            .serve(hello_and_slow(), std::future::pending()),
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        b"POST /nowhere HTTP/1.1\r\nhost: a\r\ncontent-length: 12000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 12000]);
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("answered in time")
            .unwrap();
        assert_ne!(n, 0, "closed before its answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{answer:?}");
    // Over three head timeouts, well within the idle timeout.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pipelined_gets(&mut stream, "/hello", "hello", 1).await;
}

/// `Duration::MAX` for the head and idle timeouts means "never" rather than overflowing the
/// clock (which failed every connection in hyper's head timer).
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_takes_timeouts_too_long_for_the_clock() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::MAX)
            .idle_timeout(Duration::MAX)
            .serve(hello_and_slow(), std::future::pending()),
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    pipelined_gets(&mut stream, "/hello", "hello", 2).await;
}

/// A client that stops reading its answer is cut off once the writes have made no progress for
/// the write timeout, instead of holding its connection (and a file descriptor) for good.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cuts_off_a_client_that_stops_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BODY: usize = 64 << 20; // far more than the socket buffers hold
    const STEADY: usize = 2 << 20;
    let app = Router::new()
        .route("/export", get(|| async { vec![b'x'; BODY] }))
        .route("/steady", get(|| async { vec![b'y'; STEADY] }));
    // Small send buffers (accepted sockets inherit them), so a reader's pace shows in the
    // server's writes.
    let listener = tokio::net::TcpSocket::new_v4().unwrap();
    listener.set_send_buffer_size(64 << 10).unwrap();
    listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listener.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .write_timeout(Duration::from_secs(1))
            .serve(app, std::future::pending()),
    );

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /export HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for well past the write timeout, then take what is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closed the connection");
    assert!(
        read.is_err() || received.len() < BODY,
        "the whole answer came through ({} bytes)",
        received.len()
    );
    assert!(received.starts_with(b"HTTP/1.1 200"));

    // A slow reader that keeps reading gets its whole answer: progress restarts the clock.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /steady HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = 0;
    let mut chunk = vec![0; 64 << 10];
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match stream.read(&mut chunk).await.unwrap() {
            0 => break,
            n => received += n,
        }
    }
    assert!(received > STEADY, "cut off after {received} bytes");
}

/// Once the service drains, the server stops keeping connections alive: the next answer on a
/// kept-alive connection, and the answer on a new one, carry `Connection: close` and the
/// connection closes after it. Clients retire their pooled connections during the grace period
/// instead of racing the listener's close; an idle connection is not closed under a request
/// that may be on its way.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_stops_keeping_connections_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let drain = periscope::health::DrainHandle::default();
    // `/slow` tells when it is under way, so the drain begins with it in flight.
    let entered = Arc::new(tokio::sync::Notify::new());
    let slow_entered = Arc::clone(&entered);
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(move || {
                let entered = Arc::clone(&slow_entered);
                async move {
                    entered.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .drain_handle(drain.clone())
            .serve(app, std::future::pending()),
    );
    let hello = b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n";
    let read_to_end = |stream: tokio::net::TcpStream| async move {
        read_until_closed(stream).await.to_lowercase()
    };
    // A 200 with `body`, marked to close its connection.
    let closing = |answer: &str, body: &str| {
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(
            answer.contains("connection: close") && answer.ends_with(body),
            "{answer}"
        );
    };

    // Before the drain: kept alive.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(hello).await.unwrap();
    let mut first = vec![0; 4096];
    let n = kept.read(&mut first).await.unwrap();
    let first = String::from_utf8_lossy(&first[..n]).to_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");

    // A request in flight when the drain begins gets it too.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;

    drain.drain();
    closing(&read_to_end(busy).await, "done");
    // The kept-alive connection is still open: its next request is answered, then it closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    kept.write_all(hello).await.unwrap();
    closing(&read_to_end(kept).await, "hello");
    // A new connection is still answered, then closed.
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    late.write_all(hello).await.unwrap();
    closing(&read_to_end(late).await, "hello");
    // An HTTP/1.0 client asking for keep-alive gets a plain `close`, not `close, keep-alive`.
    let mut old = tokio::net::TcpStream::connect(addr).await.unwrap();
    old.write_all(b"GET /hello HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let old = read_to_end(old).await;
    assert!(old.contains("connection: close\r\n"), "{old}");
    assert!(!old.contains("keep-alive"), "{old}");
}

/// One request, one truth: for every kind of outcome, served by `periscope::Server` through
/// `Observability::layer()`, the status on the wire is the one the metrics count (counter and
/// duration histogram), the access line and the server span record, and the envelope's code
/// belongs to; the `x-request-id` the client gets is the envelope's and every line's. A request
/// that never got its answer counts as `cancelled` and logs `aborted` without a status. The
/// subscriber is this thread's (the current-thread runtime runs server and client here), so
/// it sees the server span's fields, which the JSON log leaves out.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn every_signal_of_a_request_tells_what_the_client_got() {
    use std::collections::BTreeMap;

    use axum::http::StatusCode;
    use axum::routing::post;
    use openmetrics_parser::PrometheusValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::registry::LookupSpan;

    /// The fields of every closed `http_request` span.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<BTreeMap<String, String>>>>);
    struct Fields(BTreeMap<String, String>);
    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }
    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::Id,
            ctx: Context<'_, S>,
        ) {
            if attrs.metadata().name() == "http_request" {
                let mut fields = Fields(BTreeMap::new());
                attrs.record(&mut fields);
                ctx.span(id).unwrap().extensions_mut().insert(fields);
            }
        }
        fn on_record(
            &self,
            id: &tracing::Id,
            values: &tracing::span::Record<'_>,
            ctx: Context<'_, S>,
        ) {
            if let Some(fields) = ctx.span(id).unwrap().extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
        fn on_close(&self, id: tracing::Id, ctx: Context<'_, S>) {
            if let Some(fields) = ctx.span(&id).unwrap().extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(fields.0);
            }
        }
    }

    /// An endless body, a chunk per tick, until the client goes away.
    struct Drip(tokio::time::Interval);
    impl http_body::Body for Drip {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::ready!(self.0.poll_tick(cx));
            let chunk = http_body::Frame::data(Bytes::from_static(b"chunk\n"));
            std::task::Poll::Ready(Some(Ok(chunk)))
        }
    }

    let out = Captured::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let spans = Spans::default();
    let _default = set_default(tracing_subscriber::registry().with(log).with(spans.clone()));
    let obs = Observability::builder()
        .service_name("one-truth")
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/items/{id}", get(|| async { "item" }))
        .route("/json", post(|_: axum::Json<Value>| async { "parsed" }))
        .route(
            "/unavailable",
            get(|| async { Err::<(), _>(HttpError::new(codes::SERVICE_UNAVAILABLE, "down")) }),
        )
        .route(
            "/bare500",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/panic", get(boom))
        .route("/slow", get(slow))
        .route(
            "/stream",
            get(|| async {
                axum::body::Body::new(Drip(tokio::time::interval(Duration::from_millis(10))))
            }),
        )
        .route("/not-modified", get(|| async { StatusCode::NOT_MODIFIED }))
        .route("/no-content", get(|| async { StatusCode::NO_CONTENT }))
        .merge(obs.admin().router())
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01\r\n");
    struct Case {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        headers: String,
        body: &'static str,
        /// The wire status; `None`: the client leaves before the answer.
        status: Option<u16>,
        route: &'static str,
        code: Option<&'static str>,
    }
    let case = |name, method, path, status, route, code| Case {
        name,
        method,
        path,
        headers: format!("x-request-id: id-{name}\r\n"),
        body: "",
        status,
        route,
        code,
    };
    let mut cases = vec![
        case("ok", "GET", "/ok", Some(200), "/ok", None),
        case(
            "unmatched",
            "GET",
            "/no/such",
            Some(404),
            "__unmatched__",
            Some("route_not_found"),
        ),
        case(
            "wrong-method",
            "DELETE",
            "/items/7",
            Some(405),
            "/items/{id}",
            Some("method_not_allowed"),
        ),
        case(
            "bad-json",
            "POST",
            "/json",
            Some(400),
            "/json",
            Some("invalid_request"),
        ),
        case(
            "unavailable",
            "GET",
            "/unavailable",
            Some(503),
            "/unavailable",
            Some("service_unavailable"),
        ),
        case(
            "bare500",
            "GET",
            "/bare500",
            Some(500),
            "/bare500",
            Some("internal_error"),
        ),
        case(
            "panic",
            "GET",
            "/panic",
            Some(500),
            "/panic",
            Some("internal_error"),
        ),
        case(
            "timeout",
            "GET",
            "/slow",
            Some(504),
            "/slow",
            Some("timeout"),
        ),
        case("head", "HEAD", "/ok", Some(200), "/ok", None),
        case(
            "head-unmatched",
            "HEAD",
            "/no/such",
            Some(404),
            "__unmatched__",
            None,
        ),
        case(
            "not-modified",
            "GET",
            "/not-modified",
            Some(304),
            "/not-modified",
            None,
        ),
        case(
            "no-content",
            "GET",
            "/no-content",
            Some(204),
            "/no-content",
            None,
        ),
        case("stream", "GET", "/stream", Some(200), "/stream", None),
        // Gone while the handler still works, before the timeout answers.
        case("cancelled", "GET", "/slow", None, "/slow", None),
    ];
    cases[3]
        .headers
        .push_str("content-type: application/json\r\ncontent-length: 5\r\n");
    cases[3].body = "{bad}";
    // An invalid id is replaced: the new one is everywhere. A traceparent is continued.
    let mut bad_id = case("bad-id", "GET", "/items/1", Some(200), "/items/{id}", None);
    bad_id.headers = "x-request-id: not valid!\r\n".to_owned();
    let mut traced = case(
        "traced",
        "GET",
        "/bare500",
        Some(500),
        "/bare500",
        Some("internal_error"),
    );
    traced.headers.push_str(&traceparent);
    cases.extend([bad_id, traced]);
    let mut answers = BTreeMap::new();
    for case in &cases {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{} {} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{}\r\n{}",
            case.method, case.path, case.headers, case.body
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        match case.name {
            // Gone as soon as the handler runs, well before the timeout.
            "cancelled" => {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while obs.in_flight() == 0 {
                    assert!(std::time::Instant::now() < deadline, "never in flight");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            "stream" => {
                // The head and a first chunk, then the client goes away.
                while !String::from_utf8_lossy(&answer).contains("chunk") {
                    let mut buf = [0; 256];
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the stream ended early");
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            _ => {
                stream.read_to_end(&mut answer).await.unwrap();
            }
        }
        drop(stream);
        answers.insert(case.name, String::from_utf8(answer).unwrap());
    }
    // The server notices the departed clients.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while obs.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests left in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A margin for the layers outside the count (the span's close, the access line).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let exposition = obs.registry().encode_prometheus().unwrap();
    drop(log_guard);
    let lines = out.lines();
    let spans = spans.0.lock().unwrap().clone();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let sample = |family: &str, method: &str, route: &str, status: &str| {
        exposition.families[family]
            .iter_samples()
            .find_map(|sample| {
                let set = sample.get_labelset().unwrap();
                let matches = set.get_label_value("method") == Some(method)
                    && set.get_label_value("route") == Some(route)
                    && set.get_label_value("status") == Some(status);
                match &sample.value {
                    PrometheusValue::Counter(c) if matches => Some(c.value.as_f64()),
                    PrometheusValue::Histogram(h) if matches => h.count.map(|c| c as f64),
                    _ => None,
                }
            })
    };

    for case in &cases {
        let name = case.name;
        let answer = &answers[name];
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or((answer.as_str(), ""));
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(": ")?;
                key.eq_ignore_ascii_case(name).then(|| value.to_owned())
            })
        };
        let wire_status: Option<u16> = head.get(9..12).and_then(|s| s.parse().ok());
        assert_eq!(wire_status, case.status, "{name}: {answer}");

        // The request id the client got back (or, gone before the answer, the one it sent).
        let request_id = match case.status {
            Some(_) => header("x-request-id").unwrap_or_else(|| panic!("{name}: {answer}")),
            None => format!("id-{name}"),
        };
        match name {
            "bad-id" => assert!(request_id.starts_with("req_"), "{request_id}"),
            _ => assert_eq!(request_id, format!("id-{name}")),
        }

        // The server span.
        let span = spans
            .iter()
            .find(|s| s.get("request_id") == Some(&request_id))
            .unwrap_or_else(|| panic!("{name}: no span in {spans:#?}"));
        let trace_id = span["trace_id"].clone();
        if name == "traced" {
            assert_eq!(trace_id, TRACE);
        }
        let status_text = case.status.map(|s| s.to_string());
        assert_eq!(
            span.get("http.response.status_code"),
            status_text.as_ref(),
            "{name}"
        );
        let error = case.status.is_some_and(|s| s >= 500);
        assert_eq!(
            span.get("otel.status_code").map(String::as_str),
            error.then_some("ERROR"),
            "{name}"
        );

        // The envelope: the code of the status, the ids of the header and the span.
        if let Some(code) = case.code {
            let envelope: Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"));
            assert_eq!(envelope["error"]["code"], code, "{name}");
            assert_eq!(
                envelope["error"]["request_id"],
                request_id.as_str(),
                "{name}"
            );
            assert_eq!(envelope["error"]["trace_id"], trace_id.as_str(), "{name}");
        }

        // The access line: one, with the same status and ids.
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                l["target"] == "periscope::access" && l["request_id"] == request_id.as_str()
            })
            .collect();
        assert_eq!(access.len(), 1, "{name}: {lines:#?}");
        let access = access[0];
        assert_eq!(access["trace_id"], trace_id.as_str(), "{name}");
        // Written in the request's span, even where the client left first (the span stays
        // open until the layers inside it are done).
        assert_eq!(access["span"], "http_request", "{name}: {access}");
        assert_eq!(
            access["data"]["status"].as_u64(),
            case.status.map(u64::from),
            "{name}"
        );
        // The envelope's code, so the line says which error a 4xx or 5xx was (a HEAD answer
        // has its envelope rendered, then dropped by the server).
        let rendered = if name == "head-unmatched" {
            Some("route_not_found")
        } else {
            case.code
        };
        assert_eq!(
            access["data"]["error_code"].as_str(),
            rendered,
            "{name}: {access}"
        );
        let aborted = matches!(name, "stream" | "cancelled");
        assert_eq!(
            access["data"]["aborted"].as_bool(),
            aborted.then_some(true),
            "{name}"
        );
        // Every other line of the request carries the same ids.
        for line in lines
            .iter()
            .filter(|l| l["request_id"] == request_id.as_str())
        {
            assert_eq!(line["trace_id"], trace_id.as_str(), "{name}: {line}");
        }

        // The metrics: the status class of the wire, or `cancelled`.
        let label = match case.status {
            Some(status) => format!("{}xx", status / 100),
            None => "cancelled".to_owned(),
        };
        let count = sample(
            "http_server_requests_total",
            case.method,
            case.route,
            &label,
        );
        let timed = sample(
            "http_server_request_duration_seconds",
            case.method,
            case.route,
            &label,
        );
        assert!(count.is_some_and(|c| c >= 1.0), "{name}: {label}");
        assert_eq!(count, timed, "{name}");
    }
    // The replaced id: the warning about it carries the new id, not the one sent.
    assert!(!lines.iter().any(|l| l.to_string().contains("not valid!")));
    let bad_id = answers["bad-id"]
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .expect("the bad id's answer has an id");
    let warnings: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["level"] == "warn"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("replaced the invalid incoming request id"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert_eq!(warnings[0]["request_id"], bad_id, "{}", warnings[0]);
}

/// `http_server_requests_total` summed over the series with this `status` (and `route`).
fn requests_counted(
    exposition: &openmetrics_parser::MetricsExposition<
        openmetrics_parser::PrometheusType,
        openmetrics_parser::PrometheusValue,
    >,
    route: Option<&str>,
    status: &str,
) -> f64 {
    exposition.families["http_server_requests_total"]
        .iter_samples()
        .filter(|sample| {
            let labels = sample.get_labelset().unwrap();
            labels.get_label_value("status") == Some(status)
                && route.is_none_or(|route| labels.get_label_value("route") == Some(route))
        })
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum()
}

/// A tonic service behind the stack, called by a tonic client over HTTP/2: gRPC failures are
/// HTTP 200 on the wire, yet the metrics, the access lines and the answers to a panic or a
/// timeout tell what the client got.
#[tokio::test(flavor = "current_thread")]
async fn a_tonic_service_is_counted_logged_and_answered_by_its_grpc_status() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use tonic::{Code, Request, Response, Status};

    /// Any generated service would do; what `export` does is chosen by the request's size.
    struct Exporter;
    #[tonic::async_trait]
    impl TraceService for Exporter {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            match request.get_ref().resource_spans.len() {
                0 => Ok(Response::new(ExportTraceServiceResponse::default())),
                1 => Err(Status::not_found("no such tenant")),
                2 => Err(Status::internal("the store failed")),
                3 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Response::new(ExportTraceServiceResponse::default()))
                }
                // Answered, then failed in the trailers (see `fail_in_trailers`).
                5 => {
                    let mut response = Response::new(ExportTraceServiceResponse::default());
                    response
                        .metadata_mut()
                        .insert(THEN_FAIL, "13".parse().unwrap());
                    Ok(response)
                }
                _ => panic!("export panicked on purpose"),
            }
        }
    }

    /// A stand-in for a streaming call that fails after its messages: the answer the handler
    /// marks sends a message, then trailers with the marked code instead of `OK`.
    const THEN_FAIL: &str = "x-test-then-fail";
    fn fail_in_trailers(
        mut response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = response.headers_mut().remove(THEN_FAIL) {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code);
            trailers.insert("grpc-message", "the stream failed".parse().unwrap());
            // One empty message (its 5-byte prefix), then the trailers.
            let body = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                .with_trailers(async move { Some(Ok(trailers)) });
            *response.body_mut() = tonic::body::Body::new(body);
        }
        response
    }

    let (out, log_guard, _default) = capture_lines(None);
    // tonic's router gives no matched path: the method is declared as a route template.
    const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let obs = Observability::builder()
        .service_name("grpc-service")
        .request_timeout(Duration::from_millis(300))
        .route_templates([EXPORT])
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(obs.layer())
        .layer(tower::util::MapResponseLayer::new(fail_in_trailers))
        .add_service(TraceServiceServer::new(Exporter))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for (spans, id) in [
        (0, "grpc-ok"),
        (1, "grpc-404"),
        (2, "grpc-500"),
        (3, "grpc-slow"),
        (4, "grpc-panic"),
        (5, "grpc-stream-500"),
    ] {
        let mut request = Request::new(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default(); spans],
        });
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        let outcome = match client.export(request).await {
            Ok(response) => (Code::Ok, String::new(), response.metadata().clone()),
            Err(status) => (
                status.code(),
                status.message().to_owned(),
                status.metadata().clone(),
            ),
        };
        // Every answer, failures included, echoes the request id; a status that came in the
        // trailers carries their metadata, not the head's.
        if spans != 5 {
            assert_eq!(outcome.2.get("x-request-id").unwrap(), id, "{id}");
        }
        outcomes.push((outcome.0, outcome.1));
    }
    assert_eq!(
        outcomes,
        [
            (Code::Ok, String::new()),
            (Code::NotFound, "no such tenant".to_owned()),
            (Code::Internal, "the store failed".to_owned()),
            (
                Code::DeadlineExceeded,
                "The request did not complete within 300ms".to_owned()
            ),
            (Code::Internal, "An internal error occurred".to_owned()),
            (Code::Internal, "the stream failed".to_owned()),
        ]
    );

    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let count = |status: &str| requests_counted(&exposition, None, status);
    // The call that failed in its trailers counts as the failure it was, once.
    assert_eq!((count("2xx"), count("4xx"), count("5xx")), (1.0, 1.0, 4.0));
    let in_flight: f64 = exposition.families["http_server_requests_in_flight"]
        .iter_samples()
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Gauge(g) => g.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(in_flight, 0.0);
    assert!(
        exposition.families["http_server_requests_total"]
            .iter_samples()
            .all(|sample| sample.get_labelset().unwrap().get_label_value("route") == Some(EXPORT)),
        "every call counted under its method"
    );

    drop(log_guard);
    let lines = out.lines();
    for (id, grpc_status, level) in [
        ("grpc-ok", 0, "info"),
        ("grpc-404", 5, "warn"),
        ("grpc-500", 13, "error"),
        ("grpc-slow", 4, "error"),
        ("grpc-panic", 13, "error"),
        ("grpc-stream-500", 13, "error"),
    ] {
        let access = lines
            .iter()
            .find(|line| line["target"] == "periscope::access" && line["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}"));
        assert_eq!(access["data"]["status"], 200, "{access}");
        assert_eq!(access["data"]["grpc_status"], grpc_status, "{access}");
        assert_eq!(access["level"], level, "{access}");
        assert_eq!(access["data"].get("aborted"), None, "{access}");
    }
}

/// A client stalled in the middle of its body holds its request forever, and with it the
/// graceful shutdown: the server closes what is still open after the shutdown timeout, and
/// says how many connections that was.
#[tokio::test(flavor = "current_thread")]
async fn the_server_stops_after_its_shutdown_timeout_whatever_the_clients_do() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (out, log_guard, _default) = capture_lines(None);

    let app = Router::new().route(
        "/upload",
        axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        periscope::Server::new(listener)
            .shutdown_timeout(Duration::from_millis(300))
            .serve(app, async {
                let _ = stopped.await;
            }),
    );
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    // Connections that came and went since (the last one after the server's last accept)
    // are not counted as open.
    for _ in 0..3 {
        let mut done = tokio::net::TcpStream::connect(addr).await.unwrap();
        done.write_all(
            b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        done.read_to_end(&mut answer).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = std::time::Instant::now();
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops despite the stalled client")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Its connection was closed, not left behind.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest));
    assert!(read.await.expect("the connection is closed").is_ok());
    drop(log_guard);
    let warning = out
        .lines()
        .into_iter()
        .find(|line| line["level"] == "warn")
        .expect("the closing is logged");
    assert_eq!(warning["data"]["open"], 1, "{warning}");
}

/// At the shutdown, a connection's first request head begun and not finished (a slow or
/// stalled client) is closed at once, as an idle connection is, instead of holding the
/// shutdown until the head or shutdown timeout: the service never saw it, so its client can
/// send it again elsewhere.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_at_once_when_a_first_request_head_is_unfinished() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_secs(60))
            .shutdown_timeout(Duration::from_secs(30))
            .serve(hello_and_slow(), async {
                let _ = stopped.await;
            }),
    );
    let mut first_head = tokio::net::TcpStream::connect(addr).await.unwrap();
    first_head
        .write_all(b"GET /hello HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    // A control: hyper itself closes a kept-alive connection at once, a next head begun too.
    let mut kept_alive = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept_alive
        .write_all(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\nGET /hello HTTP/1.1\r\nho")
        .await
        .unwrap();
    let mut answer = [0; 64];
    let read = kept_alive.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    // Time for the server to read the first head's bytes (the kept-alive connection's answer
    // shows it accepts and reads): had it read none, hyper would close that connection at
    // once too, as one that sent nothing (the test then passes without the fix: it fails
    // without it when the bytes were read, as they are here).
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops long before its head and shutdown timeouts")
        .unwrap()
        .unwrap();
    // Closed (an end, or a reset where bytes were left unread), with no answer to the
    // unfinished heads.
    for (mut stream, answers) in [(first_head, 0), (kept_alive, 1)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        let _ = read.await.expect("the connection is closed");
        let rest = String::from_utf8_lossy(&rest);
        let got = rest.matches("HTTP/1.1").count() + usize::from(answers == 1);
        assert_eq!(got, answers, "{rest}");
    }
}

/// A client that sends nothing, or the start of an HTTP/2 preface and then nothing, is cut
/// off after the request-head timeout, as one that stops in the middle of its request head.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cuts_off_clients_that_send_nothing_or_half_a_preface() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(200))
            .serve(hello_and_slow(), std::future::pending()),
    );
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        // Closed with the bytes unread, the connection may end in a reset rather than an end.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(
            closed.await.is_ok(),
            "the server closed the connection in time"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            String::from_utf8_lossy(sent)
        );
    }
}

/// An HTTP/2 connection (prior knowledge: what a proxy's or a gRPC client's is) to the server
/// of `app`, with the task that drives it: the task ends when the server closes it.
#[cfg(feature = "http2")]
async fn http2_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    http2_connection_with_window(addr, None).await
}

/// [`http2_connection`], with the stream window given (fixed) instead of hyper's.
#[cfg(feature = "http2")]
async fn http2_connection_with_window(
    addr: SocketAddr,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(window) = window {
        builder
            .initial_stream_window_size(window)
            .adaptive_window(false);
    }
    let (sender, connection) = builder
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driven)
}

/// `GET path` on an HTTP/2 connection: the status, the version and the body.
#[cfg(feature = "http2")]
async fn http2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, http::Version, String, http::HeaderMap) {
    sender.ready().await.unwrap();
    let request = http::Request::get(format!("http://a{path}"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (head, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        head.status.as_u16(),
        head.version,
        String::from_utf8_lossy(&body).into_owned(),
        head.headers,
    )
}

/// `GET path` on an HTTP/2 connection whose stream window is 64 KiB (fixed): the answer's
/// body, to read at the test's pace, and the task that drives the connection.
#[cfg(feature = "http2")]
async fn http2_slow_get(
    addr: SocketAddr,
    path: &str,
) -> (hyper::body::Incoming, tokio::task::JoinHandle<()>) {
    let (mut sender, driven) = http2_connection_with_window(addr, Some(65_535)).await;
    sender.ready().await.unwrap();
    let request = http::Request::get(format!("http://a{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = sender.send_request(request).await.unwrap().into_body();
    (body, driven)
}

/// With the `http2` feature, `Server` answers HTTP/2 with prior knowledge beside HTTP/1.1 on
/// one port: plain requests and a tonic service behind `obs.layer()` get their request ids,
/// counts and gRPC outcomes, as over HTTP/1.1 or under tonic's own server.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_http2_with_prior_knowledge_beside_http1() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

    /// Exports nothing: an empty request is accepted, any other refused as `NOT_FOUND`.
    struct Exporter;
    #[tonic::async_trait]
    impl TraceService for Exporter {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            if request.get_ref().resource_spans.is_empty() {
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            } else {
                Err(tonic::Status::not_found("no such tenant"))
            }
        }
    }

    const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let obs = Observability::builder()
        .service_name("h2-service")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let app = hello_and_slow()
        .route_service(EXPORT, TraceServiceServer::new(Exporter))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let (mut sender, _driven) = http2_connection(addr).await;
    for _ in 0..2 {
        let (status, version, body, headers) = http2_get(&mut sender, "/hello").await;
        assert_eq!(
            (status, version, body.as_str()),
            (200, http::Version::HTTP_2, "hello")
        );
        assert!(
            headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
    }
    // HTTP/1.1 on the same port.
    let http1 = get_path(addr, "/hello", Some("over-http1")).await;
    assert_eq!(
        (http1.status, http1.request_id.as_str()),
        (200, "over-http1")
    );

    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut accepted = tonic::Request::new(ExportTraceServiceRequest::default());
    accepted
        .metadata_mut()
        .insert("x-request-id", "grpc-call".parse().unwrap());
    let answer = client.export(accepted).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "grpc-call");
    let refused = client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);

    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let count = |route: &str, status: &str| requests_counted(&exposition, Some(route), status);
    assert_eq!(count("/hello", "2xx"), 3.0);
    assert_eq!((count(EXPORT, "2xx"), count(EXPORT, "4xx")), (1.0, 1.0));
}

/// A tonic client calling a method the server has no route for (a client built from a newer
/// `.proto`, a probe for an optional service) gets `UNIMPLEMENTED`, as from tonic's own
/// router, not `NOT_FOUND`, which it would take for a missing resource.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_to_an_unknown_method_is_unimplemented() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let obs = Observability::builder()
        .service_name("h2-service")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let app = hello_and_slow().layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    // The generated client, its calls sent to a method this server does not have.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let renamed = tower::ServiceBuilder::new()
        .map_request(|mut request: http::Request<tonic::body::Body>| {
            *request.uri_mut() = format!("http://{addr}/pkg.Newer/Method").parse().unwrap();
            request
        })
        .service(channel);
    let mut client = TraceServiceClient::new(renamed);
    let mut call = tonic::Request::new(ExportTraceServiceRequest::default());
    call.metadata_mut()
        .insert("x-request-id", "unknown-method".parse().unwrap());
    let status = client.export(call).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "No route matches POST /pkg.Newer/Method");
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "unknown-method"
    );
}

/// A gRPC client's deadline (`grpc-timeout`) shorter than the request timeout is the server's
/// too, as under tonic's own server: a call to a handler that takes 2 s, sent with a 200 ms
/// deadline, is answered `DEADLINE_EXCEEDED` by the server, logged and counted as a timeout.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "current_thread")]
async fn a_grpc_clients_deadline_shorter_than_the_request_timeout_is_kept() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    struct Slow;
    #[tonic::async_trait]
    impl TraceService for Slow {
        async fn export(
            &self,
            _: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let (out, log_guard, _default) = capture_lines(None);
    const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let obs = Observability::builder()
        .service_name("grpc-deadline")
        .build()
        .unwrap();
    let app = hello_and_slow()
        .route_service(EXPORT, TraceServiceServer::new(Slow))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    // The generated client over a plain HTTP/2 client: tonic's own channel would enforce the
    // deadline itself (answering `CANCELLED`, "Timeout expired"), so only the server does here.
    let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let mut client =
        TraceServiceClient::with_origin(http2, format!("http://{addr}").parse().unwrap());
    let mut call = tonic::Request::new(ExportTraceServiceRequest::default());
    call.set_timeout(Duration::from_millis(200));
    call.metadata_mut()
        .insert("x-request-id", "grpc-deadline".parse().unwrap());
    let status = client.export(call).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "The request did not complete within the client's deadline of 200ms (grpc-timeout)"
    );
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "grpc-deadline"
    );

    // Counted and logged as the request timeout is, with whose deadline it was.
    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(requests_counted(&exposition, Some(EXPORT), "5xx"), 1.0);
    // Its access line (`grpc_status` 4, at `error`) is the request timeout's, checked in
    // `a_tonic_service_is_counted_logged_and_answered_by_its_grpc_status`.
    drop(log_guard);
    let lines = out.lines();
    let timed_out = lines
        .iter()
        .find(|line| line["data"]["code"] == "timeout" && line["request_id"] == "grpc-deadline")
        .unwrap_or_else(|| panic!("no timeout line: {lines:?}"));
    assert_eq!(timed_out["level"], "warn", "{timed_out}");
    assert_eq!(timed_out["data"]["timeout_ms"], 200, "{timed_out}");
    assert_eq!(timed_out["data"]["grpc_timeout"], true, "{timed_out}");
}

/// The standard gRPC health service routed in the app behind the stack: a Kubernetes `grpc`
/// probe (tonic-health's client here) gets the readiness of the service's own checks and
/// gates, and its calls are quiet like `/ready`'s (access lines at `debug`, no span).
#[cfg(all(feature = "http2", feature = "grpc"))]
#[tokio::test(flavor = "current_thread")]
async fn the_grpc_health_service_behind_the_stack_answers_the_probes_quietly() {
    use periscope::health::tonic_health::pb::HealthCheckRequest;
    use periscope::health::tonic_health::pb::health_check_response::ServingStatus;
    use periscope::health::tonic_health::pb::health_client::HealthClient;

    let (out, log_guard, _default) = capture_lines(Some("debug"));
    let model_loaded = periscope::health::StartupGate::new("model_loaded");
    let health = periscope::health::Health::builder()
        .startup_gate(model_loaded.clone())
        .build()
        .unwrap();
    let obs = Observability::builder()
        .service_name("grpc-health")
        .health(health)
        .build()
        .unwrap();
    // Each method on its own route, as docs/grpc.md routes them: a wildcard route would count
    // the `Watch` calls (open until the drain) and the probes' `Check` calls as one series.
    let grpc_health = obs.health().grpc().into_service();
    let app = hello_and_slow()
        .route_service("/grpc.health.v1.Health/Check", grpc_health.clone())
        .route_service("/grpc.health.v1.Health/Watch", grpc_health)
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut check = async |service: &str| {
        let mut call = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        call.metadata_mut()
            .insert("x-request-id", "grpc-probe".parse().unwrap());
        let response = client.check(call).await.unwrap();
        assert_eq!(
            response.metadata().get("x-request-id").unwrap(),
            "grpc-probe"
        );
        ServingStatus::try_from(response.into_inner().status).unwrap()
    };
    assert_eq!(check("").await, ServingStatus::NotServing);
    assert_eq!(check("liveness").await, ServingStatus::Serving);
    model_loaded.open();
    assert_eq!(check("").await, ServingStatus::Serving);
    drop(log_guard);

    let lines = out.lines();
    let probes: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    assert_eq!(probes.len(), 3, "{lines:#?}");
    for line in probes {
        assert_eq!(line["level"], "debug", "{line}");
        assert_eq!(
            line["data"]["path"], "/grpc.health.v1.Health/Check",
            "{line}"
        );
        assert_eq!(line["request_id"], "grpc-probe", "{line}");
        assert!(line.get("span").is_none(), "no server span: {line}");
    }

    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        requests_counted(&exposition, Some("/grpc.health.v1.Health/Check"), "2xx"),
        3.0
    );
}

/// The gRPC health service on tonic's own server behind `obs.layer()`: tonic's router gives no
/// matched path, so its calls would count under `__unmatched__`, mixed with scanners' calls;
/// they count under their own path.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "current_thread")]
async fn grpc_health_calls_on_tonics_server_count_under_their_own_path() {
    use periscope::health::tonic_health::pb::HealthCheckRequest;
    use periscope::health::tonic_health::pb::health_client::HealthClient;

    let obs = Observability::builder()
        .service_name("tonic-health")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(obs.layer())
            .add_service(obs.health().grpc().into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..3 {
        let request = HealthCheckRequest {
            service: "readiness".to_owned(),
        };
        client.check(request).await.unwrap();
    }

    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        requests_counted(&exposition, Some("/grpc.health.v1.Health/Check"), "2xx"),
        3.0
    );
    assert_eq!(
        requests_counted(&exposition, Some("__unmatched__"), "2xx"),
        0.0
    );
}

/// With metrics off, `obs.client_layer()` counts nothing: calls to more hosts than a label's
/// cap do not warn of a cap on families nobody serves (and the facade cannot change).
#[tokio::test(flavor = "current_thread")]
async fn with_metrics_off_the_client_layer_counts_nothing_and_warns_of_no_cap() {
    use tower::{Layer, ServiceExt};

    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder()
        .service_name("webhooks")
        .metrics(false)
        .build()
        .unwrap();
    let answering = tower::service_fn(|_request: http::Request<Empty<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
    });
    let client = obs.client_layer().layer(answering);
    for host in 0..150 {
        let request = http::Request::get(format!("http://h{host}.example/hook"))
            .body(Empty::new())
            .unwrap();
        let answer = client.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    drop(log_guard);
    let lines = out.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("cap"))),
        "{lines:#?}"
    );
    assert!(
        !obs.registry()
            .encode_prometheus()
            .unwrap()
            .contains("http_client")
    );
}

/// `obs.client_layer()` on a service with a tenant field of its own: a call made while handling
/// a request sends the request's ids and that tenant field, a call whose context has none sends
/// none (a forwarded request's header is removed: a bare `ClientTraceLayer` knows only the
/// default tenant fields and would pass it on), and each call is counted in the service's
/// registry by the server called.
#[tokio::test(flavor = "current_thread")]
async fn the_client_layer_sends_the_services_tenant_fields_and_counts_the_call() {
    use periscope::context::{RequestContext, TenantKey};
    use tower::{Layer, ServiceExt};

    let team = TenantKey::new("team_id").unwrap();
    let obs = Observability::builder()
        .service_name("caller")
        .tenant_key(team.clone())
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let (addr, seen) = serve_recording_headers("/v1/work").await;

    let client = obs
        .client_layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let mut ctx = RequestContext::new_root();
    ctx.tenant.insert(team, "tm_456").unwrap();
    let request_id = ctx.request_id.to_string();
    let request = http::Request::get(format!("http://{addr}/v1/work"))
        .body(Empty::new())
        .unwrap();
    let answer = ctx.scope(client.clone().oneshot(request)).await.unwrap();
    assert_eq!(answer.status(), 200);

    let headers = seen.lock().unwrap().take().unwrap();
    assert_eq!(headers["x-request-id"], request_id.as_str());
    assert_eq!(headers["x-team-id"], "tm_456", "{headers:?}");

    let forwarded = http::Request::get(format!("http://{addr}/v1/work"))
        .header("x-team-id", "tm_of_another_request")
        .body(Empty::new())
        .unwrap();
    let answer = RequestContext::new_root()
        .scope(client.oneshot(forwarded))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let headers = seen.lock().unwrap().take().unwrap();
    assert!(headers.get("x-team-id").is_none(), "{headers:?}");
    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let port = addr.port().to_string();
    let counted: f64 = exposition.families["http_client_requests_total"]
        .iter_samples()
        .filter(|sample| {
            let labels = sample.get_labelset().unwrap();
            labels.get_label_value("server_address") == Some("127.0.0.1")
                && labels.get_label_value("server_port") == Some(port.as_str())
                && labels.get_label_value("status") == Some("2xx")
        })
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(counter) => counter.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(counted, 2.0);
}

/// `OTEL_PROPAGATORS` is honoured in every build, not only with the `otel` feature (it names
/// what is propagated, not what is exported): with `none`, `obs.layer()` starts a new trace
/// whatever `traceparent` came in, and `obs.client_layer()` sends neither trace context nor
/// baggage, only the request id. A malformed value stops the service at startup.
#[tokio::test(flavor = "current_thread")]
async fn otel_propagators_none_stops_trace_propagation_in_every_build() {
    const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let error = Observability::builder()
        .log_writer(std::io::sink())
        .env_from(|name| (name == "OTEL_PROPAGATORS").then(|| "b3".to_owned()))
        .unwrap_err();
    assert_eq!(error.var, "OTEL_PROPAGATORS", "{error}");

    let obs = Observability::builder()
        .log_writer(std::io::sink())
        .env_from(|name| (name == "OTEL_PROPAGATORS").then(|| "none".to_owned()))
        .unwrap()
        .build()
        .unwrap();
    let (upstream, seen) = serve_recording_headers("/v1/work").await;
    let addr = serve_calling_upstream(&obs, upstream).await;

    let caller = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{addr}/call"))
        .header("x-request-id", "prop-none-1")
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-00f067aa0ba902b7-01"),
        )
        .header("baggage", "user_tier=gold")
        .body(Empty::new())
        .unwrap();
    let answer = caller.request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    let trace_id = answer.into_body().collect().await.unwrap().to_bytes();
    assert_ne!(
        &trace_id[..],
        INCOMING_TRACE.as_bytes(),
        "the trace was continued"
    );

    let headers = seen.lock().unwrap().take().unwrap();
    assert_eq!(headers["x-request-id"], "prop-none-1");
    assert!(headers.get("traceparent").is_none(), "{headers:?}");
    assert!(headers.get("baggage").is_none(), "{headers:?}");
}

/// `OTEL_TRACES_SAMPLER` decides the `sampled` flag where no OpenTelemetry sampler does (a
/// build without the `otel` feature, or one that exports nothing, as here): it is what the
/// `traceparent` sent downstream says, so the services after this one sample as configured.
/// A malformed value stops the service at startup, naming the variable.
#[tokio::test(flavor = "current_thread")]
async fn otel_traces_sampler_decides_the_sampled_flag_in_every_build() {
    for (name, arg, var) in [
        ("sometimes", None, "OTEL_TRACES_SAMPLER"),
        ("traceidratio", Some("2"), "OTEL_TRACES_SAMPLER_ARG"),
    ] {
        let error = Observability::builder()
            .log_writer(std::io::sink())
            .env_from(move |key| match key {
                "OTEL_TRACES_SAMPLER" => Some(name.to_owned()),
                "OTEL_TRACES_SAMPLER_ARG" => arg.map(str::to_owned),
                _ => None,
            })
            .unwrap_err();
        assert_eq!(error.var, var, "{error}");
    }

    // Whether the `traceparent` the upstream receives is sampled, for a request sent with
    // `incoming` (a `traceparent`'s flags, or none).
    async fn sampled_sent(sampler: &'static str, incoming: Option<&str>) -> bool {
        let obs = Observability::builder()
            .log_writer(std::io::sink())
            .env_from(move |key| (key == "OTEL_TRACES_SAMPLER").then(|| sampler.to_owned()))
            .unwrap()
            .build()
            .unwrap();
        let (upstream, seen) = serve_recording_headers("/v1/work").await;
        let addr = serve_calling_upstream(&obs, upstream).await;
        let mut request = http::Request::get(format!("http://{addr}/call"));
        if let Some(flags) = incoming {
            request = request.header(
                "traceparent",
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"),
            );
        }
        let caller = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let answer = caller
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let headers = seen.lock().unwrap().take().unwrap();
        let traceparent = headers["traceparent"].to_str().unwrap();
        let flags = u8::from_str_radix(traceparent.rsplit('-').next().unwrap(), 16).unwrap();
        flags & 1 == 1
    }

    // Parent-based: a new trace as the sampler says, a continued one as its caller said.
    assert!(!sampled_sent("parentbased_always_off", None).await);
    assert!(sampled_sent("parentbased_always_off", Some("01")).await);
    assert!(!sampled_sent("parentbased_always_on", Some("00")).await);
    // Not parent-based: whatever the caller said.
    assert!(!sampled_sent("always_off", Some("01")).await);
    assert!(sampled_sent("always_on", Some("00")).await);
    // The default samples new traces.
    assert!(sampled_sent("", None).await);
}

/// `ClientMetricsLayer` composes with `ClientTraceLayer` in either order: outside it (the
/// reverse of `obs.client_layer()`), it counts the call at its head all the same, and hands on
/// the client span's body in its own, which the caller reads to its end.
#[tokio::test(flavor = "current_thread")]
async fn the_client_metrics_compose_outside_the_client_span_too() {
    use tower::ServiceExt;

    let registry = periscope::metrics::MetricsRegistry::new();
    let metrics = periscope::metrics::ClientMetricsLayer::builder()
        .register(&registry)
        .unwrap();
    let (addr, seen) = serve_recording_headers("/v1/work").await;
    let client = tower::ServiceBuilder::new()
        .layer(metrics)
        .layer(periscope::trace::ClientTraceLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let request = http::Request::get(format!("http://{addr}/v1/work"))
        .body(Empty::new())
        .unwrap();
    let ctx = periscope::context::RequestContext::new_root();
    let answer: http::Response<
        periscope::metrics::MetricsBody<periscope::trace::ClientBody<hyper::body::Incoming>>,
    > = ctx.clone().scope(client.oneshot(request)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done");
    let headers = seen.lock().unwrap().take().unwrap();
    assert_eq!(headers["x-request-id"], ctx.request_id.as_str());

    let exposition = registry.encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let counted: Vec<f64> = exposition.families["http_client_requests_total"]
        .iter_samples()
        .filter(|sample| sample.get_labelset().unwrap().get_label_value("status") == Some("2xx"))
        .map(|sample| match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(counter) => counter.value.as_f64(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(counted, [1.0]);
}

/// A call made outside any request (a background task) starts a trace of its own, sampled
/// here (OpenTelemetry off): its duration links that trace, the one the callee was sent, as a
/// call made while handling a request links the request's.
#[tokio::test(flavor = "current_thread")]
async fn a_call_outside_any_request_links_the_trace_it_started() {
    use tower::{Layer, ServiceExt};

    let obs = Observability::builder()
        .service_name("caller")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let (addr, seen) = serve_recording_headers("/v1/refresh").await;

    let client = obs
        .client_layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let request = http::Request::get(format!("http://{addr}/v1/refresh"))
        .body(Empty::new())
        .unwrap();
    assert!(periscope::context::RequestContext::current().is_none());
    let answer = client.oneshot(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    let headers = seen.lock().unwrap().take().unwrap();
    let sent =
        periscope::context::TraceParent::parse(headers["traceparent"].to_str().unwrap()).unwrap();
    assert!(sent.flags.is_sampled(), "{headers:?}");

    let exposition = obs.registry().encode_openmetrics().unwrap();
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let exemplars: Vec<String> = exposition.families["http_client_request_duration_seconds"]
        .iter_samples()
        .flat_map(|sample| match &sample.value {
            openmetrics_parser::OpenMetricsValue::Histogram(histogram) => histogram
                .buckets
                .iter()
                .filter_map(|bucket| bucket.exemplar.as_ref())
                .filter_map(|exemplar| exemplar.labels.get("trace_id").cloned())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(exemplars, [sent.trace_id.to_string()]);
}

/// An HTTP/2 connection is closed gracefully (GOAWAY) once it has had no stream for the
/// idle timeout, but not while a stream is open; while the service drains, after its
/// next answer (HTTP/2's `Connection: close`), a new connection still being answered.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_retires_http2_connections_when_idle_or_draining() {
    let drain = periscope::health::DrainHandle::default();
    let serve = |idle: Duration, drain: periscope::health::DrainHandle| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            periscope::Server::new(listener)
                .idle_timeout(idle)
                .drain_handle(drain)
                .serve(hello_and_slow(), std::future::pending()),
        );
        addr
    };
    let addr = serve(Duration::from_millis(150), Default::default()).await;
    let closes_within = |driven: tokio::task::JoinHandle<()>, within: Duration| async move {
        tokio::time::timeout(within, driven).await.is_ok()
    };

    // A stream open for 300 ms, twice the idle timeout: the connection stays, and takes the
    // next request; once idle, it is closed.
    let (mut sender, driven) = http2_connection(addr).await;
    assert_eq!(http2_get(&mut sender, "/slow").await.2, "done");
    // Taken before the last request: the server's idle clock starts after its answer, so the
    // close cannot come sooner than the timeout after this, however late this task runs.
    let before_last_request = std::time::Instant::now();
    assert_eq!(http2_get(&mut sender, "/hello").await.2, "hello");
    assert!(closes_within(driven, Duration::from_secs(3)).await);
    assert!(before_last_request.elapsed() >= Duration::from_millis(150));

    // Draining: the next answer on a connection is its last, long before its idle timeout.
    let addr = serve(Duration::from_secs(60), drain.clone()).await;
    let (mut kept, kept_driven) = http2_connection(addr).await;
    assert_eq!(http2_get(&mut kept, "/hello").await.0, 200);
    drain.drain();
    assert_eq!(http2_get(&mut kept, "/hello").await.0, 200);
    assert!(closes_within(kept_driven, Duration::from_secs(10)).await);
    let (mut late, _late_driven) = http2_connection(addr).await;
    assert_eq!(http2_get(&mut late, "/hello").await.0, 200);
}

/// An answer given while the service drains reaches the client whole before the GOAWAY that
/// retires its connection: a GOAWAY read in the middle of an answer makes hyper's client fail
/// the request, though the service answered it (a retry would run it twice). A race: a few
/// hundred rounds, each a new connection, one request before the drain and one after.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_while_draining_is_not_cut_by_the_goaway_after_it() {
    async fn get_hello(
        sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    ) -> Result<u16, String> {
        sender.ready().await.map_err(|e| format!("ready: {e:?}"))?;
        let request = http::Request::get("http://a/hello")
            .body(Empty::new())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("answer: {e:?}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await;
        body.map_err(|e| format!("body: {e:?}"))?;
        Ok(status)
    }
    for round in 0..300 {
        let drain = periscope::health::DrainHandle::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            periscope::Server::new(listener)
                .drain_handle(drain.clone())
                .serve(hello_and_slow(), std::future::pending()),
        );
        let (mut sender, driven) = http2_connection(addr).await;
        assert_eq!(get_hello(&mut sender).await, Ok(200), "round {round}");
        drain.drain();
        assert_eq!(get_hello(&mut sender).await, Ok(200), "round {round}");
        // Retired after that answer.
        let closed = tokio::time::timeout(Duration::from_secs(10), driven).await;
        assert!(closed.is_ok(), "round {round}: not retired");
        server.abort();
    }
}

/// [`hello_and_slow`] behind a service that is not ready until `open_at` once it has let
/// `free` requests through: what a concurrency limit or a full buffer does to a request
/// whose head has come whole.
#[cfg(feature = "serve")]
#[derive(Clone)]
struct NotReadyUntil {
    inner: Router,
    free: usize,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    open_at: tokio::time::Instant,
}

#[cfg(feature = "serve")]
impl tower::Service<http::Request<hyper::body::Incoming>> for NotReadyUntil {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower::Service<http::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        use std::sync::atomic::Ordering;

        if self.calls.load(Ordering::SeqCst) >= self.free
            && tokio::time::Instant::now() < self.open_at
        {
            // A wake-up at the opening (a spawned timer: the service keeps no state per poll).
            let (waker, open_at) = (cx.waker().clone(), self.open_at);
            tokio::spawn(async move {
                tokio::time::sleep_until(open_at).await;
                waker.wake();
            });
            return std::task::Poll::Pending;
        }
        tower::Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.call(request)
    }
}

/// A request whose head has come whole waits for its service to be ready (a concurrency
/// limit) for longer than the head timeout, and longer than the idle timeout: it is answered
/// then, on a new connection and on a kept-alive one, not cut off as a head that did not come.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_service_is_not_timed_as_a_head() {
    for free in [0, 1] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = NotReadyUntil {
            inner: hello_and_slow(),
            free,
            calls: Arc::default(),
            open_at: tokio::time::Instant::now() + Duration::from_millis(1200),
        };
        let open_at = service.open_at;
        tokio::spawn(
            periscope::Server::new(listener)
                .header_read_timeout(Duration::from_millis(200))
                .idle_timeout(Duration::from_millis(400))
                .serve(service, std::future::pending()),
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // `free` requests answered at once, then one that waits for the service: its answer
        // comes once the service is ready, after both timeouts would have run out.
        pipelined_gets(&mut stream, "/hello", "hello", free + 1).await;
        assert!(
            tokio::time::Instant::now() >= open_at,
            "answered before the service was ready"
        );
    }
}

/// Over HTTP/2 too: a stream waiting for its service is a stream, not an idle connection.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_waiting_for_its_service_does_not_leave_its_connection_idle() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = NotReadyUntil {
        inner: hello_and_slow(),
        free: 0,
        calls: Arc::default(),
        open_at: tokio::time::Instant::now() + Duration::from_millis(1500),
    };
    let open_at = service.open_at;
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(200))
            .idle_timeout(Duration::from_millis(200))
            .serve(service, std::future::pending()),
    );
    let (mut sender, _driven) = http2_connection(addr).await;
    assert_eq!(http2_get(&mut sender, "/hello").await.2, "hello");
    assert!(
        tokio::time::Instant::now() >= open_at,
        "answered before the service was ready"
    );
}

/// `Server` tells who is calling: the connection's address is the access line's `peer`, and
/// axum's `ConnectInfo` extractor reads it, as under `axum::serve` with
/// `into_make_service_with_connect_info`.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_server_gives_the_peer_address_to_the_service_and_the_access_log() {
    use axum::extract::ConnectInfo;
    use tokio::io::AsyncWriteExt;

    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder().build().unwrap();
    let app = Router::new()
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(app, std::future::pending()));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    stream
        .write_all(
            b"GET /whoami HTTP/1.1\r\nhost: a\r\nx-request-id: who\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&me.to_string()), "{answer}");
    drop(log_guard);
    let lines = out.lines();
    let access = lines
        .iter()
        .find(|line| line["target"] == "periscope::access" && line["request_id"] == "who")
        .expect("an access line");
    assert_eq!(access["data"]["peer"], me.to_string(), "{access}");
}

/// HTTP/2 clients that hold a connection by doing nothing are closed: one that opens no
/// flow-control window for its answer after the write timeout (it leaves the server nothing to
/// write, so the socket alone never stalls), one that never acknowledges the GOAWAY's PING
/// once the connection is idle.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_http2_connections_held_by_doing_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = Router::new()
        .route("/big", get(|| async { vec![b'x'; 1 << 20] }))
        .route(
            "/upload",
            axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(400))
            .idle_timeout(Duration::from_millis(400))
            .write_timeout(Duration::from_millis(600))
            .serve(app, std::future::pending()),
    );

    // A slow but steady reader, 64 KiB of window at a time, takes the whole 1 MiB answer
    // (handed to hyper in one chunk, which it keeps until the window lets it all out) over
    // several write timeouts: not cut.
    let (mut body, _driven) = http2_slow_get(addr, "/big").await;
    let (mut taken, started) = (0, std::time::Instant::now());
    while let Some(frame) = body.frame().await {
        taken += frame.unwrap().into_data().map_or(0, |data| data.len());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(taken, 1 << 20);
    assert!(
        started.elapsed() > Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );

    // A window of 0 for every stream: the answer's head comes, its body never can.
    let (mut sender, driven) = http2_connection_with_window(addr, Some(0)).await;
    sender.ready().await.unwrap();
    let request = http::Request::get("http://a/big")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), driven)
        .await
        .expect("the stalled connection is closed")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );

    // The preface and an empty SETTINGS frame, then nothing: no SETTINGS or PING ack.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut taken = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut taken));
    assert!(closed.await.is_ok(), "the connection is closed, not held");

    // The head of an upload (`POST /upload`, END_HEADERS, no END_STREAM), then silence: the
    // handler waits for a body that never comes, and the client answers no PING.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    // HPACK: :method POST, :scheme http, :path /upload, :authority a.
    let block = b"\x83\x86\x04\x07/upload\x01\x01a";
    frames.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
    frames.extend_from_slice(block);
    stalled.write_all(&frames).await.unwrap();
    let mut taken = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut taken));
    assert!(
        closed.await.is_ok(),
        "a silent client's upload does not hold the connection"
    );

    // No stream, and a PING every 2 ms from a client that acknowledges the server's own, as
    // any HTTP/2 stack does: each acknowledged (17 bytes, some 3,000 an idle timeout), none of
    // it an answer, so the connection is idle all the same.
    let mut pinging = tokio::net::TcpStream::connect(addr).await.unwrap();
    pinging
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .unwrap();
    let held = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(2));
        let (mut taken, mut chunk) = (Vec::new(), [0; 4096]);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if pinging.write_all(b"\0\0\x08\x06\0\0\0\0\0pingpong").await.is_err() {
                        return;
                    }
                }
                read = pinging.read(&mut chunk) => {
                    let Ok(n @ 1..) = read else { return };
                    taken.extend_from_slice(&chunk[..n]);
                    // Whole frames: acknowledge the server's PINGs (type 6, no ACK flag).
                    while taken.len() >= 9 {
                        let len = usize::from(taken[1]) << 8 | usize::from(taken[2]);
                        if taken.len() < 9 + len {
                            break;
                        }
                        let frame: Vec<u8> = taken.drain(..9 + len).collect();
                        if frame[3] == 0x6 && frame[4] & 0x1 == 0 {
                            let mut ack = frame;
                            ack[4] = 0x1;
                            if pinging.write_all(&ack).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .is_ok(),
        "a client's PINGs do not hold an idle connection"
    );
}

/// An HTTP/2 answer that hyper took whole (its body over, so no stream counts as open) waits
/// in h2's buffers for a client that has paused its window for longer than the idle and PING
/// timeouts, well within the write timeout: the connection is retired (GOAWAY), but the
/// answer comes whole once the client reads on.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_answer_waiting_for_a_paused_client_comes_whole() {
    const SIZE: usize = 4 << 20;
    let app = Router::new().route("/big", get(|| async { vec![b'x'; SIZE] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(200))
            .idle_timeout(Duration::from_millis(200))
            .write_timeout(Duration::from_secs(10))
            .serve(app, std::future::pending()),
    );
    let (mut body, _driven) = http2_slow_get(addr, "/big").await;
    let mut taken = 0;
    let mut paused = false;
    while let Some(frame) = body.frame().await {
        taken += frame
            .unwrap_or_else(|error| panic!("cut off after {taken} bytes: {error}"))
            .into_data()
            .map_or(0, |data| data.len());
        if !paused && taken >= 128 << 10 {
            paused = true;
            // Several idle and PING timeouts; a tenth of the write timeout.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }
    assert_eq!(taken, SIZE);
}

/// A download through a slow link, which sends the server nothing but window updates: the
/// server's PING waits behind the answer bytes queued before it, so its answer takes longer
/// than the head timeout. Given the write timeout, it comes, and the download is whole.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_download_through_a_slow_link_outlives_the_ping_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SIZE: usize = 768 << 10;
    /// The link's pace, server to client: a chunk every few milliseconds.
    const CHUNK: usize = 8 << 10;
    const PAUSE: Duration = Duration::from_millis(40);
    let app = Router::new().route("/big", get(|| async { vec![b'x'; SIZE] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(300))
            .write_timeout(Duration::from_secs(20))
            .serve(app, std::future::pending()),
    );
    // The link: client to server as fast as it goes, server to client a chunk per pause, read
    // through a small receive buffer so the server's bytes wait on its side.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = relay.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = relay.accept().await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let upstream = socket.connect(server).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut upstream_read, mut upstream_write) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        });
        let mut chunk = vec![0; CHUNK];
        while let Ok(n @ 1..) = upstream_read.read(&mut chunk).await {
            if client_write.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            tokio::time::sleep(PAUSE).await;
        }
    });
    let (mut sender, _driven) = http2_connection_with_window(link, Some(4 << 20)).await;
    sender.ready().await.unwrap();
    let request = http::Request::get("http://a/big")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    let (mut taken, started) = (0, std::time::Instant::now());
    while let Some(frame) = body.frame().await {
        taken += frame
            .unwrap_or_else(|error| panic!("cut off after {taken} bytes: {error}"))
            .into_data()
            .map_or(0, |data| data.len());
    }
    assert_eq!(taken, SIZE);
    // Several head timeouts: a PING was answered late, not skipped.
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// An answer handed to hyper in one chunk (axum's `Vec` body: hyper drops the body at once,
/// its bytes wait in h2's buffers), of which the client takes a first window and then nothing:
/// the write timeout closes the connection, as for a client that opens no window at all, and
/// long before the idle timeout.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_taking_a_one_chunk_answer_is_cut_off() {
    let app = Router::new().route("/big", get(|| async { vec![b'x'; 1 << 20] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        periscope::Server::new(listener)
            .header_read_timeout(Duration::from_millis(400))
            .idle_timeout(Duration::from_secs(60))
            .write_timeout(Duration::from_millis(600))
            .serve(app, std::future::pending()),
    );
    let (mut sender, driven) = http2_connection_with_window(addr, Some(65_535)).await;
    sender.ready().await.unwrap();
    let request = http::Request::get("http://a/big")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    // One frame taken (its window given back), then nothing.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty());
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), driven)
        .await
        .expect("the stalled connection is closed after the write timeout")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
}

/// At the shutdown signal an idle HTTP/2 connection is closed within about a second, even
/// when its client does not acknowledge the GOAWAY's PING (a peer gone away): the server does
/// not wait for the shutdown timeout.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_does_not_hold_the_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        periscope::Server::new(listener)
            .shutdown_timeout(Duration::from_secs(5))
            .serve(hello_and_slow(), async {
                let _ = stopped.await;
            }),
    );
    // The preface, an empty SETTINGS and the server's SETTINGS acknowledged; then silence.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .unwrap();
    let mut first = [0; 9];
    silent.read_exact(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the server stopped after {:?}",
        started.elapsed()
    );
}

/// A team moving from axum-prometheus keeps its dashboards: the facade's RED families take the
/// old names, route label and exact status codes, and nothing is written under the default
/// names. A name the facade's own metrics use is refused when the facade is built.
#[tokio::test(flavor = "current_thread")]
async fn the_facade_writes_red_metrics_under_the_names_a_service_gives() {
    use periscope::metrics::StatusLabel;

    let obs = Observability::builder()
        .service_name("renamed")
        .log_writer(std::io::sink())
        .red_metrics(|red| {
            red.prefix("axum")
                .requests_name("http_requests_total")
                .duration_name("http_requests_duration_seconds")
                .in_flight_name("http_requests_pending")
        })
        // A second change (another helper's) applies after the first, not instead of it:
        // its route label wins over the first's.
        .red_metrics(|red| red.route_label("path"))
        .red_metrics(|red| {
            red.route_label("endpoint")
                .status_label(StatusLabel::Code)
                .duration_buckets([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "order" }))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(get_path(addr, "/orders/7", None).await.status, 200);
    assert_eq!(get_path(addr, "/nowhere", None).await.status, 404);

    let text = obs.registry().encode_prometheus().unwrap();
    let exposition =
        openmetrics_parser::prometheus::parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let counted = |endpoint: &str, status: &str| -> f64 {
        exposition.families["axum_http_requests_total"]
            .iter_samples()
            .filter(|sample| {
                let labels = sample.get_labelset().unwrap();
                labels.get_label_value("endpoint") == Some(endpoint)
                    && labels.get_label_value("status") == Some(status)
                    && labels.get_label_value("method") == Some("GET")
            })
            .map(|sample| match &sample.value {
                openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
                other => panic!("{other:?}"),
            })
            .sum()
    };
    assert_eq!(counted("/orders/{id}", "200"), 1.0, "{text}");
    assert_eq!(counted("__unmatched__", "404"), 1.0, "{text}");
    assert!(!text.contains("path=\""), "{text}");
    for family in [
        "axum_http_requests_duration_seconds",
        "axum_http_requests_pending",
    ] {
        assert!(exposition.families.contains_key(family), "{family}: {text}");
    }
    // Eleven bounds and +Inf per series, as axum-prometheus wrote them.
    let bounds = text
        .lines()
        .filter(|line| line.starts_with("axum_http_requests_duration_seconds_bucket{"))
        .filter(|line| line.contains("status=\"200\""))
        .count();
    assert_eq!(bounds, 12, "{text}");
    assert!(!text.contains("http_server_request"), "{text}");

    let refused = Observability::builder()
        .log_writer(std::io::sink())
        .red_metrics(|red| red.requests_name("periscope_log_dropped_lines_total"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("periscope_log_dropped_lines_total"),
        "{refused}"
    );
}

/// A public API's facade at a trust boundary: a caller's `traceparent` starts no trace of its
/// own there (the request id is still kept), where the default facade continues it.
#[tokio::test(flavor = "current_thread")]
async fn the_facade_server_layer_takes_a_trust_boundary() {
    use periscope::context::RequestContext;
    use periscope::trace::Trust;

    const INCOMING: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    async fn trace_of(obs: &Observability) -> (String, String) {
        let app = Router::new()
            .route(
                "/ctx",
                get(|| async {
                    let ctx = RequestContext::current().expect("inside a request");
                    format!("{} {}", ctx.trace_id.to_hex(), ctx.request_id)
                }),
            )
            .layer(obs.layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let request = http::Request::get(format!("http://{addr}/ctx"))
            .header("x-request-id", "order-42")
            .header("traceparent", format!("00-{INCOMING}-00f067aa0ba902b7-01"))
            .body(Empty::new())
            .unwrap();
        let exchange = async {
            let response = client.request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        };
        let body = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("an answer within 30 s");
        let (trace_id, request_id) = body.split_once(' ').unwrap();
        (trace_id.to_owned(), request_id.to_owned())
    }

    let continued = Observability::builder()
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    assert_eq!(
        trace_of(&continued).await,
        (INCOMING.to_owned(), "order-42".to_owned())
    );
    let boundary = Observability::builder()
        .log_writer(std::io::sink())
        .correlation(|layer| layer.trust(Trust::Boundary))
        .build()
        .unwrap();
    let (trace_id, request_id) = trace_of(&boundary).await;
    assert_ne!(trace_id, INCOMING);
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert_eq!(request_id, "order-42");

    // A second change (another helper's) keeps the first: the boundary stays.
    let changed_twice = Observability::builder()
        .log_writer(std::io::sink())
        .correlation(|layer| layer.trust(Trust::Boundary))
        .correlation(|layer| layer.forwarded_scheme(true))
        .build()
        .unwrap();
    let (trace_id, _) = trace_of(&changed_twice).await;
    assert_ne!(
        trace_id, INCOMING,
        "a later .correlation(..) dropped the trust boundary"
    );
    // Changes apply in the order given: a later trust setting wins over an earlier one.
    for (first, last, continues) in [
        (Trust::Boundary, Trust::Incoming, true),
        (Trust::Incoming, Trust::Boundary, false),
    ] {
        let obs = Observability::builder()
            .log_writer(std::io::sink())
            .correlation(move |layer| layer.trust(first))
            .correlation(move |layer| layer.trust(last))
            .build()
            .unwrap();
        let (trace_id, _) = trace_of(&obs).await;
        assert_eq!(
            trace_id == INCOMING,
            continues,
            "the later trust did not win"
        );
    }
}

/// A service declaring the tenant field `workspace_id`, its lines captured (for this thread)
/// by a log layer that lifts the field too; keep the guards for the test.
fn declaring_workspace_id() -> (
    Captured,
    Observability,
    (tracing::subscriber::DefaultGuard, periscope::log::LogGuard),
) {
    use tracing_subscriber::prelude::*;

    let workspace = periscope::context::TenantKey::new("workspace_id").unwrap();
    let out = Captured::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .tenant_keys(std::slice::from_ref(&workspace))
        .build();
    let default = set_default(tracing_subscriber::registry().with(log));
    let obs = Observability::builder()
        .tenant_key(workspace)
        .build()
        .unwrap();
    (out, obs, (default, log_guard))
}

/// A tenant field the service declares beyond the five the request span names (`org_id`,
/// `project_id`, `team_id`, `user_id`, `tenant_id`) is recorded in the span's `tenant` field;
/// every line logged in the request still carries it at the top level, as the other context
/// fields.
#[tokio::test(flavor = "current_thread")]
async fn a_declared_tenant_field_is_lifted_into_every_line_of_the_request() {
    let (out, obs, _guards) = declaring_workspace_id();
    let app = Router::new()
        .route(
            "/jobs",
            get(|| async {
                tracing::info!("listing jobs");
                "[]"
            }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{addr}/jobs"))
        .header("x-request-id", "ws-1")
        .header("x-org-id", "org_1")
        .header("x-workspace-id", "ws_42")
        .body(Empty::new())
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("an answer within 30 s");

    let lines: Vec<Value> = out
        .lines()
        .into_iter()
        .filter(|line| line["request_id"] == "ws-1")
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|line| line["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["listing jobs", "request completed"], "{lines:?}");
    for line in &lines {
        assert_eq!(line["org_id"], "org_1", "{line}");
        assert_eq!(line["workspace_id"], "ws_42", "{line}");
    }
}

/// A job handed over by a request of a service that declares a tenant field: run under
/// `job_span`, its lines carry the field and the calls it makes send it on (read with
/// `JobSpan::from_carrier`'s defaults, the job had no such field, and its calls removed the
/// header).
#[tokio::test(flavor = "current_thread")]
async fn a_declared_tenant_field_travels_through_a_job() {
    use periscope::context::Carrier;
    use tower::{Layer, ServiceExt};

    let (out, obs, _guards) = declaring_workspace_id();
    let obs = Arc::new(obs);

    // Downstream: answers with the tenant header it was sent.
    let downstream = Router::new().route(
        "/index",
        get(|headers: http::HeaderMap| async move {
            headers
                .get("x-workspace-id")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let downstream_addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(downstream, std::future::pending()));

    let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Carrier>();
    let app = Router::new()
        .route(
            "/jobs",
            axum::routing::post(move || async move {
                jobs.send(periscope::trace::job::carrier().unwrap())
                    .unwrap();
                "queued"
            }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::post(format!("http://{addr}/jobs"))
        .header("x-request-id", "ws-job-1")
        .header("x-workspace-id", "ws_42")
        .body(Empty::new())
        .unwrap();
    let worker_obs = Arc::clone(&obs);
    let exchange = async {
        let response = client.request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let carrier = queue.recv().await.unwrap();
        let calls = worker_obs.client_layer().layer(client.clone());
        worker_obs
            .job_span("index_text", &carrier)
            .with_job_id("job_1")
            .run(async move {
                tracing::info!("indexing");
                let call = http::Request::get(format!("http://{downstream_addr}/index"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let answer = calls.oneshot(call).await.unwrap();
                answer.into_body().collect().await.unwrap().to_bytes()
            })
            .await
    };
    let sent_on = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the job within 30 s");
    assert_eq!(sent_on, "ws_42");

    let lines = out.lines();
    let indexing = lines
        .iter()
        .find(|line| line["message"] == "indexing")
        .expect("the job's line");
    assert_eq!(indexing["request_id"], "ws-job-1", "{indexing}");
    assert_eq!(indexing["job_id"], "job_1", "{indexing}");
    assert_eq!(indexing["workspace_id"], "ws_42", "{indexing}");
}

/// One request on a connection of its own, as raw HTTP/1.1: the status line and headers, and
/// the body (`Connection: close`, so the body is all that follows the head).
async fn raw_get(addr: SocketAddr, path: &str, request_id: &str) -> (String, String) {
    raw_get_with(addr, path, request_id, "").await
}

/// [`raw_get`] with more header lines (each ending in `\r\n`).
async fn raw_get_with(
    addr: SocketAddr,
    path: &str,
    request_id: &str,
    headers: &str,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: a\r\nx-request-id: {request_id}\r\n{headers}connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    (head.to_owned(), body.to_owned())
}

/// `obs.layer()` on a nested router and again on the outer one (a team's sub-router that
/// brings the stack along, or a move to the outer router half done): each request still gets
/// one access line, one trace, one count and one `x-request-id`; another metrics layer
/// inside still records it.
#[tokio::test(flavor = "current_thread")]
async fn a_stack_applied_twice_observes_each_request_once() {
    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder().build().unwrap();
    let other_registry = periscope::metrics::MetricsRegistry::new();
    let other_metrics = periscope::metrics::MetricsLayer::builder()
        .prefix("other")
        .register(&other_registry)
        .unwrap();
    let api = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/boom", get(boom))
        .layer(other_metrics)
        .layer(obs.layer());
    let app = Router::new().nest("/api", api).layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (head, _) = raw_get(addr, "/api/items/5", "twice-ok").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(head.matches("x-request-id: ").count(), 1, "{head}");
    let (head, body) = raw_get(addr, "/api/boom", "twice-boom").await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    let envelope: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope["error"]["request_id"], "twice-boom", "{body}");
    drop(log_guard);

    let lines = out.lines();
    for id in ["twice-ok", "twice-boom"] {
        let of_request: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
        let access = of_request
            .iter()
            .filter(|l| l["target"] == "periscope::access")
            .count();
        assert_eq!(access, 1, "{of_request:#?}");
        let traces: std::collections::BTreeSet<String> = of_request
            .iter()
            .map(|l| l["trace_id"].to_string())
            .collect();
        assert_eq!(traces.len(), 1, "one trace per request: {of_request:#?}");
    }
    let count = |registry: &periscope::metrics::MetricsRegistry, name: &str, route: &str| {
        let text = registry
            .encode(periscope::metrics::Format::Prometheus)
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("route=\"{route}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    for route in ["/api/items/{id}", "/api/boom"] {
        assert_eq!(
            count(obs.registry(), "http_server_requests_total", route),
            1.0
        );
        assert_eq!(
            count(&other_registry, "other_http_server_requests_total", route),
            1.0
        );
    }
    assert_eq!(obs.in_flight(), 0);
}

/// The stack applied twice on a quiet path (`/health`): no server span is opened there, so
/// the inner `CorrelationLayer` must still see the outer one's context in the extensions and
/// keep it; a second context gave the handler (and the inner error layer's envelope) a trace
/// id the access line did not carry.
#[tokio::test(flavor = "current_thread")]
async fn a_stack_applied_twice_keeps_one_context_on_a_quiet_path() {
    let (out, log_guard, _default) = capture_lines(Some("debug"));
    let obs = Observability::builder().build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_in = seen.clone();
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let seen = seen_in.clone();
                async move {
                    let ctx = periscope::context::RequestContext::current().unwrap();
                    seen.lock()
                        .unwrap()
                        .push((ctx.request_id.to_string(), ctx.trace_id.to_string()));
                    HttpError::new(codes::SERVICE_UNAVAILABLE, "down")
                }
            }),
        )
        .layer(obs.layer())
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (head, body) = raw_get(addr, "/health", "twice-quiet").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(head.matches("x-request-id: ").count(), 1, "{head}");
    let envelope: Value = serde_json::from_str(&body).unwrap();
    drop(log_guard);

    let (request_id, trace_id) = seen.lock().unwrap()[0].clone();
    assert_eq!(request_id, "twice-quiet");
    assert_eq!(envelope["error"]["request_id"], "twice-quiet", "{body}");
    assert_eq!(envelope["error"]["trace_id"], trace_id.as_str(), "{body}");
    let lines = out.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "periscope::access")
        .collect();
    assert_eq!(access.len(), 1, "{lines:#?}");
    assert_eq!(access[0]["request_id"], "twice-quiet", "{access:#?}");
    assert_eq!(access[0]["trace_id"], trace_id.as_str(), "{access:#?}");
    let text = obs
        .registry()
        .encode(periscope::metrics::Format::Prometheus)
        .unwrap();
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("http_server_requests_total") && l.contains("/health"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    // Counted once: not twice by the stack applied twice, and not left out.
    assert_eq!(counted, 1.0, "{text}");
    assert_eq!(obs.in_flight(), 0);
}

/// Under `axum::serve` with `into_make_service_with_connect_info`, the access line's `peer`
/// comes from axum's `ConnectInfo`.
#[tokio::test(flavor = "current_thread")]
async fn the_access_line_reads_the_peer_from_axum_connect_info() {
    let (out, log_guard, _default) = capture_lines(None);
    let obs = Observability::builder().build().unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /hello HTTP/1.1\r\nhost: a\r\nx-request-id: peer-ci\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(log_guard);
    let lines = out.lines();
    let access = lines
        .iter()
        .find(|l| l["target"] == "periscope::access" && l["request_id"] == "peer-ci")
        .expect("an access line");
    assert_eq!(access["data"]["peer"], me.to_string(), "{access}");
}

/// How an [`Upload`] goes on after its bytes.
#[cfg(feature = "http2")]
#[derive(Clone, Copy)]
enum UploadEnd {
    /// The body ends.
    End,
    /// The body fails: hyper's client resets the stream.
    Fail,
    /// Nothing more comes, ever.
    Stall,
}

/// A request body: its bytes, then its [`UploadEnd`].
#[cfg(feature = "http2")]
struct Upload(Option<Bytes>, UploadEnd);

#[cfg(feature = "http2")]
impl Upload {
    fn then(bytes: Vec<u8>, end: UploadEnd) -> Self {
        Self(Some(Bytes::from(bytes)), end)
    }
}

#[cfg(feature = "http2")]
impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        match (self.0.take(), self.1) {
            (Some(data), _) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            (None, UploadEnd::End) => Poll::Ready(None),
            (None, UploadEnd::Fail) => {
                Poll::Ready(Some(Err(std::io::Error::other("the client gave up"))))
            }
            (None, UploadEnd::Stall) => Poll::Pending,
        }
    }
}

/// A service named `name` behind the stack, with a `Json` route at `/json`, served by
/// `periscope::Server` (which takes HTTP/2 with prior knowledge) on 127.0.0.1.
#[cfg(feature = "http2")]
async fn json_route_over_h2(name: &str) -> (Observability, std::net::SocketAddr) {
    use axum::routing::post;

    let obs = Observability::builder().service_name(name).build().unwrap();
    let app = Router::new()
        .route("/json", post(|_: axum::Json<Value>| async { "parsed" }))
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));
    (obs, addr)
}

/// The access line of the request `id`, once written (within 10 s).
#[cfg(feature = "http2")]
async fn access_line_eventually(out: &Captured, id: &str) -> Value {
    let line = async {
        loop {
            let lines = out.lines();
            if let Some(line) = lines
                .into_iter()
                .find(|l| l["target"] == "periscope::access" && l["request_id"] == id)
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .unwrap_or_else(|_| panic!("no access line for {id}"))
}

/// An HTTP/2 client that cancels its upload mid-body (RST_STREAM after 1,000 of a declared
/// 100,000 bytes) is logged and counted as `request_body_incomplete`, the stream `aborted`
/// (the answer never reached it); a complete body that is not JSON is still
/// `invalid_request`, and answered.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "current_thread")]
async fn an_http2_upload_the_client_cancels_is_not_a_malformed_request() {
    let (out, log_guard, _default) = capture_lines(None);
    let (_obs, addr) = json_route_over_h2("cut-h2").await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = |id: &str, length: usize| {
        http::Request::post(format!("http://{addr}/json"))
            .header("content-type", "application/json")
            .header("content-length", length)
            .header("x-request-id", id)
    };
    let cut = Upload::then(vec![b' '; 1000], UploadEnd::Fail);
    let cut = request("h2-cut", 100_000).body(cut).unwrap();
    assert!(
        sender.send_request(cut).await.is_err(),
        "the stream is reset"
    );
    // For contrast, on the same connection: a complete body that is not JSON.
    let bad = Upload::then(b"{not json".to_vec(), UploadEnd::End);
    let bad = request("h2-bad", 9).body(bad).unwrap();
    let bad = sender.send_request(bad).await.unwrap();
    assert_eq!(bad.status(), 400);

    let cut = access_line_eventually(&out, "h2-cut").await;
    assert_eq!(
        cut["data"]["error_code"], "request_body_incomplete",
        "{cut}"
    );
    assert_eq!(cut["data"]["aborted"], true, "{cut}");
    let bad = access_line_eventually(&out, "h2-bad").await;
    assert_eq!(bad["data"]["error_code"], "invalid_request", "{bad}");
    assert_eq!(bad["data"]["status"], 400, "{bad}");
    drop(log_guard);
}

/// An HTTP/2 upload cut by the connection closing (the client's process died, the network
/// dropped), not by a reset of its stream: h2 fails the stream with the connection's I/O
/// error, which is a cut body as over HTTP/1.1, `request_body_incomplete`, not a malformed
/// request.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "current_thread")]
async fn an_http2_upload_cut_by_its_connection_closing_is_not_a_malformed_request() {
    let (out, log_guard, _default) = capture_lines(None);
    let (obs, addr) = json_route_over_h2("cut-h2-connection").await;

    // Closed with a reset (no lingering), as a connection a crashed client or a dropped
    // network leaves is.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_zero_linger().unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/json"))
        .header("content-type", "application/json")
        .header("content-length", 100_000)
        .header("x-request-id", "h2-conn-cut")
        .body(Upload::then(vec![b' '; 1000], UploadEnd::Stall))
        .unwrap();
    let call = tokio::spawn(async move { sender.send_request(request).await });
    let began = async {
        while obs.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), began)
        .await
        .expect("the upload began");
    // Its first bytes read, the rest awaited.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The client goes: its connection closes with the stream open.
    connection.abort();
    call.abort();

    let line = access_line_eventually(&out, "h2-conn-cut").await;
    assert_eq!(
        line["data"]["error_code"], "request_body_incomplete",
        "{line}"
    );
    assert_ne!(line["level"], "error", "{line}");
    drop(log_guard);
}

/// The server span's `client.address` and `request_id`, by span.
#[cfg(feature = "serve")]
#[derive(Clone, Default)]
struct ClientAddresses(Arc<Mutex<std::collections::HashMap<u64, SpanClient>>>);

/// A server span's `request_id` and `client.address`.
#[cfg(feature = "serve")]
type SpanClient = (String, Option<String>);

#[cfg(feature = "serve")]
impl ClientAddresses {
    /// The `client.address` of the span of the request `request_id`; `None` when not recorded.
    fn of(&self, request_id: &str) -> Option<String> {
        let spans = self.0.lock().unwrap();
        let (_, client) = spans
            .values()
            .find(|(id, _)| id == request_id)
            .unwrap_or_else(|| panic!("no span for {request_id}"));
        client.clone()
    }
}

#[cfg(feature = "serve")]
struct FieldVisitor<'a>(&'a mut (String, Option<String>));

#[cfg(feature = "serve")]
impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &value);
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}").trim_matches('"').to_owned();
        match field.name() {
            "request_id" => self.0.0 = text,
            "client.address" => self.0.1 = Some(text),
            _ => {}
        }
    }
}

#[cfg(feature = "serve")]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientAddresses {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "http_request" {
            let mut fields = (String::new(), None);
            attrs.record(&mut FieldVisitor(&mut fields));
            self.0.lock().unwrap().insert(id.into_u64(), fields);
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut FieldVisitor(fields));
        }
    }
}

/// Behind trusted proxies (here 127.0.0.1), the access line's `client` and the span's
/// `client.address` are the client's address as the proxies tell it, walked from the right,
/// in the one header they set (X-Forwarded-For by default, `Forwarded` when chosen; the
/// other, which a client may have sent through them, is ignored); from an untrusted peer the
/// forwarding headers are ignored (no spoofing); a hostile header costs a bounded walk and
/// never yields an address the client chose; without trusted proxies nothing changes.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "current_thread")]
async fn the_client_address_is_read_only_from_trusted_proxies() {
    use tokio::io::AsyncWriteExt;
    use tracing_subscriber::prelude::*;

    let out = Captured::default();
    let spans = ClientAddresses::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let _default = set_default(tracing_subscriber::registry().with(log).with(spans.clone()));
    let serve = |obs: Observability| async move {
        let app = hello_and_slow().layer(obs.layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(obs.server(listener).serve(app, std::future::pending()));
        addr
    };
    let trusting = serve(
        Observability::builder()
            .trusted_proxies(["127.0.0.1/32", "fd00::/8"])
            .build()
            .unwrap(),
    )
    .await;
    // The environment's way: here 127.0.0.1 is not among the proxies.
    let elsewhere = serve(
        Observability::builder()
            .env_from(|name| (name == "TRUSTED_PROXIES").then(|| "10.0.0.0/8, ::1".to_owned()))
            .unwrap()
            .build()
            .unwrap(),
    )
    .await;
    // Proxies that set `Forwarded`, chosen through the environment.
    let forwarding = serve(
        Observability::builder()
            .env_from(|name| match name {
                "TRUSTED_PROXIES" => Some("127.0.0.1".to_owned()),
                "TRUSTED_PROXIES_HEADER" => Some("Forwarded".to_owned()),
                _ => None,
            })
            .unwrap()
            .build()
            .unwrap(),
    )
    .await;
    let unconfigured = serve(Observability::builder().build().unwrap()).await;

    let hostile_xff = format!("6.6.6.6{}", ", 127.0.0.1".repeat(1000));
    let hostile_forwarded = format!("for=6.6.6.6{}", ", for=127.0.0.1".repeat(1000));
    let garbage = "x".repeat(4000);
    let cases: Vec<(SocketAddr, &str, String, Option<&str>)> = vec![
        // A chain of trusted hops: the first untrusted address from the right.
        (trusting, "chain", "x-forwarded-for: 6.6.6.6, 198.51.100.7, 127.0.0.1\r\nx-forwarded-for: 127.0.0.1".into(), Some("198.51.100.7")),
        // X-Forwarded-For proxies pass a client's own `Forwarded` through: never read.
        (trusting, "fwd-through-xff-proxy", "forwarded: for=6.6.6.6\r\nx-forwarded-for: 198.51.100.7".into(), Some("198.51.100.7")),
        (trusting, "fwd-alone", "forwarded: for=6.6.6.6".into(), Some("127.0.0.1")),
        // `Forwarded` chosen: read, and X-Forwarded-For ignored.
        (forwarding, "forwarded-v6", "forwarded: for=\"[2001:db8::7]:4711\";proto=https, for=127.0.0.1\r\nx-forwarded-for: 6.6.6.6".into(), Some("2001:db8::7")),
        (forwarding, "xff-ignored", "x-forwarded-for: 6.6.6.6".into(), Some("127.0.0.1")),
        (forwarding, "unknown", "forwarded: for=6.6.6.6, for=unknown".into(), Some("127.0.0.1")),
        (trusting, "direct", String::new(), Some("127.0.0.1")),
        // Hostile headers: a thousand trusted hops hide the spoofed one; garbage stops the walk.
        (trusting, "hostile-xff", format!("x-forwarded-for: {hostile_xff}"), Some("127.0.0.1")),
        (forwarding, "hostile-fwd", format!("forwarded: {hostile_forwarded}"), Some("127.0.0.1")),
        (trusting, "garbage", format!("x-forwarded-for: 6.6.6.6, {garbage}"), Some("127.0.0.1")),
        // Spoof attempts from a peer that is no trusted proxy.
        (elsewhere, "spoof-xff", "x-forwarded-for: 6.6.6.6".into(), Some("127.0.0.1")),
        (elsewhere, "spoof-fwd", "forwarded: for=6.6.6.6".into(), Some("127.0.0.1")),
        // Not configured: no `client`, no `client.address`.
        (unconfigured, "plain", "x-forwarded-for: 6.6.6.6".into(), None),
    ];
    for (addr, id, headers, _) in &cases {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let extra = if headers.is_empty() {
            String::new()
        } else {
            format!("{headers}\r\n")
        };
        let request = format!(
            "GET /hello HTTP/1.1\r\nhost: a\r\nx-request-id: {id}\r\n{extra}connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{id}: {answer}");
    }
    drop(log_guard);
    let lines = out.lines();
    for (_, id, _, client) in &cases {
        let access = lines
            .iter()
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == *id)
            .unwrap_or_else(|| panic!("no access line for {id}"));
        let peer = access["data"]["peer"].as_str().unwrap();
        assert!(peer.starts_with("127.0.0.1:"), "{access}");
        assert_eq!(access["data"]["client"].as_str(), *client, "{access}");
        assert_eq!(spans.of(id).as_deref(), *client, "{id}");
    }
}

/// Serves `GET /call` behind `obs.layer()` on 127.0.0.1: one call through `obs.client_layer()`
/// to `upstream`'s `/v1/work`, answered with the request's trace id.
async fn serve_calling_upstream(obs: &Observability, upstream: SocketAddr) -> SocketAddr {
    use tower::{Layer, ServiceExt};

    let client = obs
        .client_layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let app = Router::new()
        .route(
            "/call",
            get(move || async move {
                let request = http::Request::get(format!("http://{upstream}/v1/work"))
                    .body(Empty::new())
                    .unwrap();
                client.oneshot(request).await.unwrap();
                let ctx = periscope::context::RequestContext::current().unwrap();
                ctx.trace_id.to_string()
            }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An upstream on 127.0.0.1 answering `GET path` with `done`, and the headers of the last call.
async fn serve_recording_headers(
    path: &str,
) -> (SocketAddr, Arc<Mutex<Option<axum::http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(None));
    let seen_in = seen.clone();
    let upstream = Router::new().route(
        path,
        get(move |headers: axum::http::HeaderMap| {
            let seen = seen_in.clone();
            async move {
                *seen.lock().unwrap() = Some(headers);
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    (addr, seen)
}

/// A response body whose chunks are made as they are sent (server-sent events, a model's
/// tokens, a gRPC server stream): what it logs while it makes them carries the request's ids
/// and span, and `RequestContext::current()` answers there as in the handler.
#[tokio::test(flavor = "current_thread")]
async fn lines_logged_while_a_streamed_body_is_made_carry_the_request_ids() {
    use periscope::context::RequestContext;
    use tracing_subscriber::prelude::*;

    /// Three chunks, each logged as it is made, one per poll.
    struct Tokens {
        left: u8,
        seen: Arc<Mutex<Vec<Option<String>>>>,
    }

    impl http_body::Body for Tokens {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            tracing::info!(left = self.left, "token sent");
            let current = RequestContext::current().map(|ctx| ctx.request_id.to_string());
            self.seen.lock().unwrap().push(current);
            // The next token comes on a later poll, as from a model.
            cx.waker().wake_by_ref();
            let token = http_body::Frame::data(Bytes::from_static(b"data: token\n\n"));
            std::task::Poll::Ready(Some(Ok(token)))
        }
    }

    let out = Captured::default();
    let (log, _log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let _default = set_default(tracing_subscriber::registry().with(log));
    let obs = Observability::builder().build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/events",
            get({
                let seen = seen.clone();
                move || async move {
                    let body = Tokens { left: 3, seen };
                    (
                        [("content-type", "text/event-stream")],
                        axum::body::Body::new(body),
                    )
                }
            }),
        )
        .layer(obs.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(periscope::Server::new(listener).serve(app, std::future::pending()));

    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        get_path(addr, "/events", Some("stream-1")),
    )
    .await
    .expect("an answer within 30 s");
    assert_eq!(answer.body, "data: token\n\n".repeat(3));

    assert_eq!(*seen.lock().unwrap(), vec![Some("stream-1".to_owned()); 3]);
    let lines = out.lines();
    let tokens: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "token sent")
        .collect();
    let access = lines
        .iter()
        .find(|line| line["message"] == "request completed")
        .expect("an access line");
    assert_eq!(tokens.len(), 3, "{lines:#?}");
    for line in tokens {
        assert_eq!(line["request_id"], "stream-1", "{line}");
        assert_eq!(line["trace_id"], access["trace_id"], "{line}");
        assert_eq!(line["span_id"], access["span_id"], "{line}");
    }
}

/// A service without axum declares its routes, and may name one the facade declares itself
/// (an admin path such as `/health`) or one twice: the templates are a set, so `build`
/// succeeds and each request is counted under its template.
#[tokio::test(flavor = "current_thread")]
async fn route_templates_given_twice_or_naming_an_admin_path_are_accepted() {
    let obs = Observability::builder()
        .log_writer(std::io::sink())
        .route_templates(["/health", "/v1/jobs/{id}"])
        .route_templates(["/v1/jobs/{id}"])
        .build()
        .expect("a template declared twice is no conflict");
    let service = tower::ServiceBuilder::new()
        .layer(obs.layer())
        .service(tower::service_fn(
            |_request: http::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::from("job")))
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(obs.server(listener).serve(service, std::future::pending()));

    let answer = get_path(addr, "/v1/jobs/7", None).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "job"));
    let exposition = obs.registry().encode_prometheus().unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&exposition)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        requests_counted(&exposition, Some("/v1/jobs/{id}"), "2xx"),
        1.0
    );
}

/// A non-critical check `cache` that never answers (cut at its 800 ms timeout), run on every
/// probe.
fn with_a_hung_cache_check(
    health: periscope::health::HealthBuilder,
) -> periscope::health::HealthBuilder {
    health
        .add_check(
            periscope::health::HealthCheck::new(
                "cache",
                periscope::health::check_fn(std::future::pending::<Result<(), String>>),
            )
            .timeout(Duration::from_millis(800))
            .non_critical(),
        )
        .cache_ttl(Duration::ZERO)
}

/// The request timeout leaves the probes out: they answer within their checks' own timeouts,
/// so a hung non-critical check under a shorter request timeout leaves `/ready` `degraded`
/// (200, naming the check), not a 504 that takes the pod out of rotation. Other routes still
/// get the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_non_critical_check_stays_degraded_under_a_shorter_request_timeout() {
    let health = with_a_hung_cache_check(periscope::health::Health::builder())
        .build()
        .unwrap();
    let obs = Observability::builder()
        .service_name("probe-timeouts")
        .request_timeout(Duration::from_millis(300))
        .health(health)
        .build()
        .unwrap();
    let addr = serve_on_loopback(
        Router::new()
            .route("/slow", get(slow))
            .merge(obs.admin().router())
            .layer(obs.layer()),
    )
    .await;

    let ready = get_path(addr, "/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body: Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["cache"]["status"], "fail", "{body}");
    assert_eq!(get_path(addr, "/slow", None).await.status, 504);
}

/// Probes mounted on paths of the service's own (`probe_service`), named with `probe_paths`,
/// are treated as the default probe paths are: left out of the request timeout, not traced,
/// and their access lines at `debug` even when failing; the same probe on a path not named
/// still gets the timeout and its line by outcome.
#[tokio::test(flavor = "current_thread")]
async fn probes_on_paths_named_probe_paths_are_untimed_untraced_and_quiet() {
    use periscope::health::Probe;
    use periscope::log::Directives;
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;

    let out = Captured::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .directives(Directives::level(LevelFilter::DEBUG))
        .build();
    let _default = set_default(tracing_subscriber::registry().with(log));
    let gate = periscope::health::StartupGate::new("warm-up");
    let health = with_a_hung_cache_check(periscope::health::Health::builder())
        .startup_gate(gate.clone())
        .build()
        .unwrap();
    let obs = Observability::builder()
        .service_name("probe-paths")
        .request_timeout(Duration::from_millis(300))
        .probe_paths(["/livez", "/span"])
        .probe_paths([String::from("/readyz")])
        .health(health.clone())
        .build()
        .unwrap();
    let span_name = || async {
        tracing::Span::current()
            .metadata()
            .map_or("none", |metadata| metadata.name())
    };
    let addr = serve_on_loopback(
        Router::new()
            .route_service("/readyz", health.probe_service(Probe::Readiness))
            .route_service("/ready-timed", health.probe_service(Probe::Readiness))
            .route("/span", get(span_name))
            .route("/traced", get(span_name))
            .layer(obs.layer()),
    )
    .await;

    // Starting: 503, yet quiet; and past the request timeout, a check still running.
    let ready = get_path(addr, "/readyz", Some("probe-1")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    gate.open();
    let ready = get_path(addr, "/readyz", Some("probe-2")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body: Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        get_path(addr, "/ready-timed", Some("probe-3")).await.status,
        504
    );
    assert_eq!(get_path(addr, "/span", None).await.body, "none");
    assert_eq!(get_path(addr, "/traced", None).await.body, "http_request");

    drop(log_guard);
    let lines = out.lines();
    let level = |id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "periscope::access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {lines:#?}"))["level"]
            .clone()
    };
    assert_eq!(level("probe-1"), "debug");
    assert_eq!(level("probe-2"), "debug");
    assert_eq!(level("probe-3"), "error");
}

/// Behind the stack's error layer, the probes', the scrape's and the admin's answers stay the
/// HTTP answers they are to a request claiming a gRPC `content-type`: a guessed token is a
/// 401 with its `WWW-Authenticate`, not a gRPC answer (an HTTP 200 that access logs and
/// status-keyed limits count as a success), and `/ready` is the probe's JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_only_refusal_stays_http_behind_the_error_layer() {
    let obs = Observability::builder()
        .service_name("http-only")
        .admin_token("http-only-token-0123456789abcdef")
        .build()
        .unwrap();
    let addr =
        serve_on_loopback(Router::new().merge(obs.admin().router()).layer(obs.layer())).await;
    let grpc = "content-type: application/grpc\r\n";
    let guess = format!("{grpc}authorization: Bearer guessed-token-0123456789abcdef\r\n");
    for (path, headers, status) in [
        ("/debug/config", guess.as_str(), "401"),
        ("/ready", grpc, "200"),
        ("/health", grpc, "200"),
        ("/metrics", grpc, "200"),
    ] {
        let (head, body) = raw_get_with(addr, path, "http-only-1", headers).await;
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{path}: {head}"
        );
        assert!(!head.contains("grpc-status"), "{path}: {head}");
        assert!(head.contains("x-request-id: http-only-1"), "{path}: {head}");
        if status == "401" {
            assert!(head.contains("www-authenticate: bearer"), "{head}");
            let envelope: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(envelope["error"]["request_id"], "http-only-1", "{body}");
        }
    }
}

/// The service's own settings show in `/debug/config` beside periscope's, masked by the same
/// rules; a section named like one of periscope's settings is refused when built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_own_settings_show_in_debug_config_masked() {
    const TOKEN: &str = "config-section-token-0123456789";
    let obs = Observability::builder()
        .service_name("sections")
        .admin_token(TOKEN)
        .config_section("gateway", serde_json::json!({"port": 1}))
        .config_section(
            "gateway",
            serde_json::json!({
                "port": 8000,
                "database_url": "postgres://app:hunter2@db/app",
                "api_key": "sk-live-1234",
            }),
        )
        .build()
        .unwrap();
    let addr =
        serve_on_loopback(Router::new().merge(obs.admin().router()).layer(obs.layer())).await;
    let config = get_with(addr, "/debug/config", None, Some(TOKEN)).await;
    assert_eq!(config.status, 200, "{}", config.body);
    assert!(
        !config.body.contains("hunter2") && !config.body.contains("sk-live"),
        "{}",
        config.body
    );
    let config: Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(config["service_name"], "sections");
    assert_eq!(config["gateway"]["port"], 8000);
    assert_eq!(
        config["gateway"]["database_url"],
        "postgres://app:[REDACTED]@db/app"
    );
    assert_eq!(config["gateway"]["api_key"], "[REDACTED]");

    let clash = Observability::builder()
        .config_section("service_name", serde_json::json!("mine"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        clash.starts_with("config_section=\"service_name\" is invalid"),
        "{clash}"
    );
}

//! The facade end to end over a real socket: `Observability` installs the log layer, and its
//! composed layer gives every response a request id, every failure an envelope, every request
//! a log line and a count. One test per binary calls `init`, which installs the global
//! subscriber once; the other runs `Server` alone.

#![cfg(feature = "axum")]

use std::io::Write;
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

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
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
        .build()
        .unwrap();
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
}

/// `Server`: a client that never finishes its request head is cut off, and does not hold the
/// shutdown; requests in flight at the signal still get their answer.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cuts_off_slow_request_heads_and_finishes_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
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
        let mut answer = String::new();
        let read = stream.read_to_string(&mut answer);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the connection is closed in time")
            .unwrap();
        answer
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
    tokio::time::sleep(Duration::from_millis(100)).await;
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

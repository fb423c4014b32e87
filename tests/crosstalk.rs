//! Cross-talk under real concurrency: many requests at once over real sockets, on a
//! multi-thread and on a current-thread runtime, each with its own `x-request-id` and trace,
//! whose handlers log between yields and sleeps, from a streamed body, from tasks spawned with
//! `ctx.scope(..)` and from `spawn_blocking` with `ctx.in_scope(..)`, call another service
//! through `obs.client_layer()` (and stream its body back), panic, fail, or are left by their
//! client mid-way. Every line is read back: a line carries the ids of the request that logged
//! it and no other's, and no context or span stays current on a thread between tasks.
//!
//! The same exchange runs over HTTP/1.1 and (feature `http2`) over HTTP/2 with prior knowledge:
//! then the requests are concurrent streams on a few connections, the front calls its upstream
//! over HTTP/2 too, and a request left mid-way is a stream the client resets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::Observability;
use periscope::context::RequestContext;
use periscope::error::{HttpError, codes};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};
use tracing_subscriber::prelude::*;

#[allow(dead_code)]
mod capture;
use capture::Captured;

/// The id of the request current on this thread, or `""`.
fn seen() -> String {
    RequestContext::current().map_or_else(String::new, |ctx| ctx.request_id.to_string())
}

/// The trace each test request continues: one per request, so a line's `trace_id` names it.
fn trace_of(id: &str) -> String {
    let n: u64 = id[2..].parse().unwrap();
    format!("{:032x}", 0x5eed_0000_u64 + n)
}

fn request_id(n: usize) -> String {
    format!("xt{n:05}")
}

/// Logs, when dropped, that the handler or body holding it was dropped.
struct LogOnDrop {
    id: String,
    dropped: Arc<Mutex<HashSet<String>>>,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        tracing::info!(marker = %self.id, seen = %seen(), "dropped");
        self.dropped.lock().unwrap().insert(self.id.clone());
    }
}

/// How the test client talks to the front, and the front to its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1: a connection per request in flight; leaving mid-way closes it.
    Http1,
    /// HTTP/2 with prior knowledge (h2c): requests are streams sharing a connection; leaving
    /// mid-way drops the response future or body, which resets the stream alone.
    #[cfg(feature = "http2")]
    Http2,
}

impl Protocol {
    /// The version every answer comes in.
    fn version(self) -> http::Version {
        match self {
            Protocol::Http1 => http::Version::HTTP_11,
            #[cfg(feature = "http2")]
            Protocol::Http2 => http::Version::HTTP_2,
        }
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// A client that speaks `protocol`: over HTTP/2, every request to one address is a stream on
/// the same connection.
fn client(protocol: Protocol) -> HttpClient {
    match protocol {
        Protocol::Http1 => Client::builder(TokioExecutor::new()).build_http(),
        #[cfg(feature = "http2")]
        Protocol::Http2 => Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    }
}

type CallClient = <periscope::ClientLayer as Layer<HttpClient>>::Service;

#[derive(Clone)]
struct App {
    client: CallClient,
    upstream: SocketAddr,
    protocol: Protocol,
    started: Arc<Mutex<HashSet<String>>>,
    dropped: Arc<Mutex<HashSet<String>>>,
}

async fn steps(Path(id): Path<String>) -> String {
    for step in 0..3 {
        tracing::info!(marker = %id, seen = %seen(), step, "step");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    id
}

async fn stream(Path(id): Path<String>) -> axum::body::Body {
    let chunks = futures_util::stream::unfold(0, move |chunk| {
        let id = id.clone();
        async move {
            if chunk == 4 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::task::yield_now().await;
            tracing::info!(marker = %id, seen = %seen(), chunk, "chunk");
            Some((
                Ok::<_, Infallible>(Bytes::from(format!("{id}\n"))),
                chunk + 1,
            ))
        }
    });
    axum::body::Body::from_stream(chunks)
}

async fn spawn(Path(id): Path<String>) -> &'static str {
    let ctx = RequestContext::current().expect("a handler runs in its request's context");
    let scoped = id.clone();
    tokio::spawn(RequestContext::clone(&ctx).scope(async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::task::yield_now().await;
        tracing::info!(marker = %scoped, seen = %seen(), "spawned");
    }));
    let blocking = id.clone();
    tokio::task::spawn_blocking(move || {
        ctx.in_scope(|| tracing::info!(marker = %blocking, seen = %seen(), "blocking"))
    });
    // Spawned without a scope: belongs to no request.
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        tracing::info!(marker = "none", seen = %seen(), "plain");
    });
    "spawned"
}

async fn call(State(app): State<App>, Path(id): Path<String>) -> String {
    let request = http::Request::get(format!("http://{}/echo/{id}", app.upstream))
        .body(Empty::new())
        .unwrap();
    let response = app.client.oneshot(request).await.unwrap();
    assert_eq!(response.version(), app.protocol.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let (got_request_id, got_traceparent) = body.split_once(' ').unwrap();
    tracing::info!(
        marker = %id,
        seen = %seen(),
        got_request_id,
        got_traceparent,
        "called"
    );
    body
}

async fn proxy(State(app): State<App>, Path(id): Path<String>) -> axum::body::Body {
    let request = http::Request::get(format!("http://{}/drip/{id}", app.upstream))
        .body(Empty::new())
        .unwrap();
    let upstream = app.client.oneshot(request).await.unwrap().into_body();
    let relayed = futures_util::stream::unfold((upstream, id), |(mut body, id)| async move {
        let data = body.frame().await?.ok()?.into_data().ok()?;
        tracing::info!(marker = %id, seen = %seen(), "relayed");
        Some((Ok::<_, Infallible>(data), (body, id)))
    });
    axum::body::Body::from_stream(relayed)
}

async fn panics(Path(id): Path<String>) -> &'static str {
    tracing::info!(marker = %id, seen = %seen(), "about to panic");
    tokio::task::yield_now().await;
    panic!("handler for {id} panicked");
}

async fn fails(Path(id): Path<String>) -> Result<&'static str, HttpError> {
    tracing::info!(marker = %id, seen = %seen(), "failing");
    tokio::task::yield_now().await;
    Err(HttpError::new(codes::CONFLICT, "already done"))
}

async fn hang(State(app): State<App>, Path(id): Path<String>) -> &'static str {
    let _guard = LogOnDrop {
        id: id.clone(),
        dropped: app.dropped.clone(),
    };
    tracing::info!(marker = %id, seen = %seen(), "hang started");
    app.started.lock().unwrap().insert(id);
    std::future::pending().await
}

async fn drip_hang(State(app): State<App>, Path(id): Path<String>) -> axum::body::Body {
    let guard = LogOnDrop {
        id: id.clone(),
        dropped: app.dropped.clone(),
    };
    let chunks = futures_util::stream::unfold(guard, |guard| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!(marker = %guard.id, seen = %seen(), "drip");
        Some((Ok::<_, Infallible>(Bytes::from_static(b"drip\n")), guard))
    });
    axum::body::Body::from_stream(chunks)
}

/// The service called through `obs.client_layer()`: answers with the headers it was sent, or
/// streams a few chunks that log as they are made.
fn upstream(obs: &Observability) -> Router {
    async fn echo(Path(id): Path<String>, headers: http::HeaderMap) -> String {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        tracing::info!(marker = %id, seen = %seen(), "echo");
        format!("{} {}", header("x-request-id"), header("traceparent"))
    }
    async fn drip(Path(id): Path<String>) -> axum::body::Body {
        let chunks = futures_util::stream::unfold(0, move |chunk| {
            let id = id.clone();
            async move {
                if chunk == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                tracing::info!(marker = %id, seen = %seen(), chunk, "upstream chunk");
                Some((
                    Ok::<_, Infallible>(Bytes::from(format!("{id}\n"))),
                    chunk + 1,
                ))
            }
        });
        axum::body::Body::from_stream(chunks)
    }
    Router::new()
        .route("/echo/{id}", get(echo))
        .route("/drip/{id}", get(drip))
        .layer(obs.layer())
}

fn front(obs: &Observability, app: App) -> Router {
    Router::new()
        .route("/steps/{id}", get(steps))
        .route("/stream/{id}", get(stream))
        .route("/spawn/{id}", get(spawn))
        .route("/call/{id}", get(call))
        .route("/proxy/{id}", get(proxy))
        .route("/panic/{id}", get(panics))
        .route("/error/{id}", get(fails))
        .route("/hang/{id}", get(hang))
        .route("/drip-hang/{id}", get(drip_hang))
        .with_state(app)
        .layer(obs.layer())
}

const KINDS: [&str; 7] = [
    "steps", "stream", "spawn", "call", "proxy", "panic", "error",
];

fn kind_of(id: &str) -> &'static str {
    let n: usize = id[2..].parse().unwrap();
    KINDS[n % KINDS.len()]
}

thread_local! {
    static DEFAULT: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// What a test sees: the lines, and what was found current on a thread going idle.
struct Observed {
    lines: Captured,
    dispatch: tracing::Dispatch,
    _log_guard: periscope::log::LogGuard,
    left_current: Arc<Mutex<Vec<String>>>,
}

fn observe() -> Observed {
    // See `capture::set_default`: more than one live dispatcher, so no callsite's interest is
    // cached from a thread without this one.
    static KEPT: OnceLock<[tracing::Dispatch; 2]> = OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    let lines = Captured::default();
    let (log, log_guard) = periscope::log::LogLayer::builder()
        .writer(lines.clone())
        .blocking(true)
        .build();
    Observed {
        lines,
        dispatch: tracing::Dispatch::new(tracing_subscriber::registry().with(log)),
        _log_guard: log_guard,
        left_current: Arc::default(),
    }
}

/// A runtime whose threads log to `observed`, and which notes any context or span still
/// current on a thread about to park (between tasks, no request's may be).
fn runtime(multi_thread: bool, observed: &Observed) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(4);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let dispatch = observed.dispatch.clone();
    let left = observed.left_current.clone();
    builder
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            DEFAULT.with(|slot| *slot.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| {
            DEFAULT.with(|slot| slot.borrow_mut().take());
        })
        .on_thread_park(move || {
            if let Some(ctx) = RequestContext::current() {
                left.lock()
                    .unwrap()
                    .push(format!("context {}", ctx.request_id));
            }
            let span = tracing::Span::current();
            if let Some(metadata) = span.metadata() {
                left.lock()
                    .unwrap()
                    .push(format!("span {}", metadata.name()));
            }
        })
        .build()
        .unwrap()
}

async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Starts the upstream service and the front service, both with `obs.layer()` on
/// `periscope::Server`, the front calling the upstream over `protocol`; the front's address
/// and its shared state.
async fn start(obs: &Observability, protocol: Protocol) -> (SocketAddr, App) {
    let (listener, upstream_addr) = listen().await;
    tokio::spawn(periscope::Server::new(listener).serve(upstream(obs), std::future::pending()));
    let client = obs.client_layer().layer(client(protocol));
    let app = App {
        client,
        upstream: upstream_addr,
        protocol,
        started: Arc::default(),
        dropped: Arc::default(),
    };
    let (listener, addr) = listen().await;
    let service = front(obs, app.clone());
    tokio::spawn(periscope::Server::new(listener).serve(service, std::future::pending()));
    (addr, app)
}

/// `GET path` on the front with request `id`'s own `x-request-id` and trace.
fn request_to(addr: SocketAddr, path: &str, id: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .header("x-request-id", id)
        .header(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", trace_of(id)),
        )
        .body(Empty::new())
        .unwrap()
}

/// Sends requests `ids` (at most 64 at once), each with its own id and trace, request `n`
/// through `clients[n % clients.len()]`; checks each answer echoes its id.
async fn drive(
    protocol: Protocol,
    clients: &[HttpClient],
    addr: SocketAddr,
    ids: std::ops::Range<usize>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for n in ids {
        let (client, permits) = (clients[n % clients.len()].clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let id = request_id(n);
            let kind = kind_of(&id);
            let request = request_to(addr, &format!("/{kind}/{id}"), &id);
            let response = client.request(request).await.unwrap();
            assert_eq!(response.version(), protocol.version());
            assert_eq!(response.headers()["x-request-id"], id.as_str());
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            match kind {
                "panic" => assert_eq!(status, 500, "{id}: {body}"),
                "error" => assert_eq!(status, 409, "{id}: {body}"),
                _ => assert_eq!(status, 200, "{id}: {body}"),
            }
            if matches!(kind, "panic" | "error") {
                let envelope: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(envelope["error"]["request_id"], id.as_str(), "{body}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Sends `path`, waits until the handler is running (or the first chunk came), and goes away:
/// over HTTP/1.1 by closing a connection of its own, over HTTP/2 by dropping the response
/// future or body (`client`'s connection, shared with other requests, stays open).
async fn leave_mid_way(
    protocol: Protocol,
    client: &HttpClient,
    addr: SocketAddr,
    app: &App,
    path: &str,
    id: &str,
    wait_for_chunk: bool,
) {
    match protocol {
        // On a connection of its own, not `client`'s.
        Protocol::Http1 => close_mid_way(addr, app, path, id, wait_for_chunk).await,
        #[cfg(feature = "http2")]
        Protocol::Http2 => reset_mid_way(client, addr, app, path, id, wait_for_chunk).await,
    }
    let _ = client;
    eventually(&format!("{path} dropped"), || {
        app.dropped.lock().unwrap().contains(id)
    })
    .await;
}

/// Opens a connection for `path`, waits until the handler is running (or the first chunk
/// came), and closes it.
async fn close_mid_way(addr: SocketAddr, app: &App, path: &str, id: &str, wait_for_chunk: bool) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: front\r\nx-request-id: {id}\r\n\
         traceparent: 00-{}-00f067aa0ba902b7-01\r\n\r\n",
        trace_of(id)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    if wait_for_chunk {
        let mut received = Vec::new();
        let mut buffer = [0; 1024];
        while !String::from_utf8_lossy(&received).contains("drip") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert_ne!(read, 0, "{path}: closed before its first chunk");
            received.extend_from_slice(&buffer[..read]);
        }
    } else {
        eventually(&format!("{path} started"), || {
            app.started.lock().unwrap().contains(id)
        })
        .await;
    }
    drop(stream);
}

/// Sends `path` as a stream on `client`'s connection, waits until the handler is running (or
/// the first chunk came), and drops what it holds: the client resets the stream.
#[cfg(feature = "http2")]
async fn reset_mid_way(
    client: &HttpClient,
    addr: SocketAddr,
    app: &App,
    path: &str,
    id: &str,
    wait_for_chunk: bool,
) {
    let response = client.request(request_to(addr, path, id));
    if wait_for_chunk {
        let mut body = response.await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "drip\n", "{path}");
        drop(body);
    } else {
        let what = format!("{path} started");
        let started = eventually(&what, || app.started.lock().unwrap().contains(id));
        tokio::select! {
            response = response => panic!("{path} answered: {response:?}"),
            () = started => {}
        }
    }
}

/// Waits (polling, up to 30 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The test ids (`xt` and five digits) a line mentions anywhere.
fn ids_in(text: &str) -> HashSet<&str> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(6))
        .filter(|&at| {
            bytes[at..].starts_with(b"xt")
                && bytes[at + 2..at + 7].iter().all(u8::is_ascii_digit)
                && bytes.get(at + 7).is_none_or(|b| !b.is_ascii_digit())
        })
        .map(|at| &text[at..at + 7])
        .collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// Every line that names a test request carries that request's ids and no other's; the lines
/// of no request carry none; every line a handler, body or scoped task logs saw its own request
/// current. Returns the lines by (request id, message).
fn check_lines(lines: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut by_request = BTreeMap::new();
    let mut faults = Vec::new();
    for line in lines {
        let text = line.to_string();
        let named = ids_in(&text);
        let request_id = line["request_id"].as_str();
        let marker = line["data"]["marker"].as_str();
        if marker == Some("none") {
            if request_id.is_some() || line["data"]["seen"] != "" {
                faults.push(format!("a line of no request carries ids: {text}"));
            }
            continue;
        }
        if named.is_empty() {
            continue;
        }
        let Some(request_id) = request_id else {
            faults.push(format!("no request_id: {text}"));
            continue;
        };
        if named.len() != 1 || !named.contains(request_id) {
            faults.push(format!("another request's id: {text}"));
            continue;
        }
        if line["trace_id"] != trace_of(request_id).as_str() {
            faults.push(format!("another trace: {text}"));
        }
        if let Some(marker) = marker
            && line["data"]["seen"] != marker
        {
            faults.push(format!("another current context: {text}"));
        }
        if let Some(sent) = line["data"]["got_traceparent"].as_str()
            && !sent.contains(&trace_of(request_id))
        {
            faults.push(format!("another trace sent: {text}"));
        }
        // The access log's lines are counted under `access`, whatever their message.
        let what = if line["target"] == periscope::log::ACCESS_LOG_TARGET {
            "access"
        } else {
            message(line)
        };
        *by_request
            .entry((request_id.to_owned(), what.to_owned()))
            .or_insert(0) += 1;
    }
    assert!(
        faults.is_empty(),
        "{} faults, the first: {:#?}",
        faults.len(),
        &faults[..faults.len().min(10)]
    );
    by_request
}

/// The lines each kind of request must have written.
fn check_counts(by_request: &BTreeMap<(String, String), usize>, ids: impl Iterator<Item = usize>) {
    let lines = |id: &str, message: &str| {
        by_request
            .get(&(id.to_owned(), message.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for n in ids {
        let id = request_id(n);
        let expected: &[(&str, usize)] = match kind_of(&id) {
            "steps" => &[("step", 3)],
            "stream" => &[("chunk", 4)],
            "spawn" => &[("spawned", 1), ("blocking", 1)],
            "call" => &[("called", 1), ("echo", 1)],
            "proxy" => &[("upstream chunk", 3)],
            "panic" => &[("about to panic", 1)],
            _ => &[("failing", 1)],
        };
        for &(message, times) in expected {
            assert_eq!(lines(&id, message), times, "{id}: {message}");
        }
        if kind_of(&id) == "proxy" {
            assert!(lines(&id, "relayed") >= 1, "{id}: relayed");
        }
        // The access log line of the front service (and of the upstream, for a call).
        let calls_upstream = matches!(kind_of(&id), "call" | "proxy");
        let access = 1 + usize::from(calls_upstream);
        assert_eq!(lines(&id, "access"), access, "{id}: access lines");
    }
}

/// Runs the whole exchange on a runtime of the flavour given; `count` requests over
/// `protocol`, on `connections` clients (over HTTP/2, a connection each).
fn crosstalk(multi_thread: bool, count: usize, protocol: Protocol, connections: usize) {
    let observed = observe();
    let _default = tracing::dispatcher::set_default(&observed.dispatch);
    let runtime = runtime(multi_thread, &observed);
    // Two rounds: `0..count`, then, while some requests are left mid-way (ids `count..+4`),
    // `second`.
    let second = count + 4..count + 4 + count.min(70);
    let spawned = (0..count)
        .chain(second.clone())
        .filter(|&n| kind_of(&request_id(n)) == "spawn")
        .count();
    runtime.block_on(async {
        let obs = Observability::builder()
            .service_name("crosstalk")
            .build()
            .unwrap();
        let (addr, app) = start(&obs, protocol).await;
        let clients: Vec<HttpClient> = (0..connections).map(|_| client(protocol)).collect();
        drive(protocol, &clients, addr, 0..count).await;
        // Requests left by their client mid-way, while others run.
        let cancelled = [
            (count, "hang", false),
            (count + 1, "drip-hang", true),
            (count + 2, "hang", false),
            (count + 3, "drip-hang", true),
        ];
        let leaving = cancelled.map(|(n, kind, wait_for_chunk)| {
            let (app, client) = (app.clone(), clients[n % connections].clone());
            tokio::spawn(async move {
                let id = request_id(n);
                let path = format!("/{kind}/{id}");
                leave_mid_way(protocol, &client, addr, &app, &path, &id, wait_for_chunk).await;
            })
        });
        drive(protocol, &clients, addr, second.clone()).await;
        for leaving in leaving {
            leaving.await.unwrap();
        }
        // The tasks spawned with `ctx.scope(..)` and `spawn_blocking` have all logged.
        eventually("the spawned tasks' lines", || {
            let lines = observed.lines.lines();
            let logged = |wanted: &str| lines.iter().filter(|l| message(l) == wanted).count();
            logged("spawned") == spawned
                && logged("blocking") == spawned
                && logged("plain") == spawned
        })
        .await;
        // A task spawned without a scope, on any worker, sees no request and logs no ids.
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..64 {
            probes.spawn(async {
                tokio::task::yield_now().await;
                tracing::info!(marker = "none", seen = %seen(), "probe");
                RequestContext::current().map(|ctx| ctx.request_id.to_string())
            });
        }
        while let Some(probe) = probes.join_next().await {
            assert_eq!(probe.unwrap(), None);
        }
    });
    drop(runtime);
    let left = observed.left_current.lock().unwrap().clone();
    assert!(left.is_empty(), "left current between tasks: {left:?}");
    assert!(RequestContext::current().is_none());

    let lines = observed.lines.lines();
    let by_request = check_lines(&lines);
    check_counts(&by_request, (0..count).chain(second));
    for n in count..count + 4 {
        let id = request_id(n);
        let dropped = lines
            .iter()
            .find(|line| message(line) == "dropped" && line["data"]["marker"] == id.as_str())
            .unwrap_or_else(|| panic!("{id}: no line when dropped"));
        assert_eq!(dropped["request_id"], id.as_str(), "{dropped}");
    }
}

#[test]
fn no_line_carries_another_requests_ids_on_a_multi_thread_runtime() {
    crosstalk(true, 1500, Protocol::Http1, 1);
}

#[test]
fn no_line_carries_another_requests_ids_on_a_current_thread_runtime() {
    crosstalk(false, 350, Protocol::Http1, 1);
}

/// Over HTTP/2: the requests are streams, 64 at once on two connections (hyper serves each
/// stream as a task of its own), and the front calls its upstream over HTTP/2.
#[cfg(feature = "http2")]
#[test]
fn no_line_carries_another_requests_ids_over_http2_on_a_multi_thread_runtime() {
    crosstalk(true, 1500, Protocol::Http2, 2);
}

#[cfg(feature = "http2")]
#[test]
fn no_line_carries_another_requests_ids_over_http2_on_a_current_thread_runtime() {
    crosstalk(false, 350, Protocol::Http2, 2);
}

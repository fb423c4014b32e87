//! The ids on the lines a handler's own code logs, for each way of running that code that
//! docs/trace.md ("Code inside a handler") says keeps them: in spans of the service's own,
//! after an `.await` resumed on another worker thread, in a spawned task and on the blocking
//! pool wrapped as documented, in a streamed body's frames, in a body's destructor, in a job
//! run by a worker; and the calls made there. One service behind `obs.layer()` on 127.0.0.1,
//! on a multi-thread runtime, with `init()` (the only test of this binary: it installs the
//! global subscriber). With the `otel` feature the spans are exported to a collector on
//! 127.0.0.1 and every line is checked against them, for a sampled and an unsampled caller.
#![cfg(feature = "axum")]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use periscope::context::{Carrier, RequestContext, TraceParent, WithContext};
use periscope::trace::job::{self, JobSpan};
use serde_json::Value;
use tower::{Layer, ServiceExt};
use tracing::Instrument;

#[allow(dead_code)]
mod capture;
use capture::Captured;

/// What the upstream was sent: for each call, its path, `x-request-id` and `traceparent`.
type Sent = Arc<Mutex<Vec<(String, String, TraceParent)>>>;

/// An upstream on 127.0.0.1 that keeps the ids each call carried.
async fn upstream(sent: Sent) -> SocketAddr {
    let app = Router::new().route(
        "/{*path}",
        get(move |uri: http::Uri, headers: http::HeaderMap| {
            let sent = sent.clone();
            async move {
                let header = |name: &str| headers[name].to_str().unwrap().to_owned();
                let traceparent = TraceParent::parse(&header("traceparent")).unwrap();
                let call = (uri.path().to_owned(), header("x-request-id"), traceparent);
                sent.lock().unwrap().push(call);
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Resumes after a wake from outside the runtime, which any idle worker may pick up.
async fn woken_from_another_thread() {
    let (done, woken) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1));
        done.send(()).unwrap();
    });
    woken.await.unwrap();
}

#[tracing::instrument]
async fn instrumented_step() {
    tokio::task::yield_now().await;
    tracing::info!(pattern = "instrument_attribute", "logged");
}

/// A one-frame body that logs when the server drops it, after sending it.
struct LogsWhenDropped(Option<Bytes>);

impl http_body::Body for LogsWhenDropped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |data| data.len() as u64))
    }
}

impl Drop for LogsWhenDropped {
    fn drop(&mut self) {
        tracing::info!(pattern = "body_dropped", "logged");
    }
}

/// The routes: each logs `logged` lines with a `pattern` field naming how its code ran.
fn app(obs: &periscope::Observability, upstream: SocketAddr) -> Router {
    let client = obs
        .client_layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let call = move |path: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::get(format!("http://{upstream}/{path}"))
                .body(Empty::new())
                .unwrap();
            let response = client.oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    // A worker that runs the jobs handlers enqueue, each under the carrier it came with.
    let (queue, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Carrier>();
    tokio::spawn(async move {
        while let Some(carrier) = jobs.recv().await {
            JobSpan::from_carrier("send_receipt", &carrier)
                .run(async { tracing::info!(pattern = "job", "logged") })
                .await;
        }
    });
    let in_task = call.clone();
    Router::new()
        .route(
            "/own_spans",
            get(|| async {
                tracing::info!(pattern = "handler", "logged");
                tracing::info_span!("validate")
                    .in_scope(|| tracing::info!(pattern = "in_scope", "logged"));
                async {
                    tokio::task::yield_now().await;
                    tracing::info!(pattern = "instrument", "logged");
                }
                .instrument(tracing::info_span!("lookup"))
                .await;
                instrumented_step().await;
            }),
        )
        .route(
            "/other_thread",
            get(|| async {
                let first = std::thread::current().id();
                // Until the task resumes on another thread (a few wakes at most, in practice).
                for _ in 0..200 {
                    woken_from_another_thread().await;
                    tracing::info!(pattern = "other_thread", "logged");
                    if std::thread::current().id() != first {
                        return "moved";
                    }
                }
                "stayed"
            }),
        )
        .route(
            "/spawned",
            get(move || {
                let call = in_task.clone();
                async move {
                    let ctx = RequestContext::current().unwrap();
                    let task = async move {
                        tokio::task::yield_now().await;
                        tracing::info!(pattern = "spawned", "logged");
                        call("from_task").await;
                        let carrier = job::carrier();
                        tracing::info!(pattern = "spawned", carrier = carrier.is_some(), "logged");
                    };
                    // docs/trace.md's wrapping: the request's context and a span of the task's own.
                    let task = WithContext::new(ctx, task).instrument(tracing::info_span!("task"));
                    tokio::spawn(task).await.unwrap();
                }
            }),
        )
        .route(
            "/blocking",
            get(|| async {
                let ctx = RequestContext::current().unwrap();
                let span = tracing::info_span!("decode");
                let work = || tracing::info!(pattern = "blocking", "logged");
                tokio::task::spawn_blocking(move || ctx.in_scope(|| span.in_scope(work)))
                    .await
                    .unwrap();
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let frames = futures_util::stream::unfold(0, |n| async move {
                    if n == 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    tracing::info!(pattern = "stream", n, "logged");
                    Some((Ok::<_, Infallible>(Bytes::from("frame\n")), n + 1))
                });
                axum::body::Body::from_stream(frames)
            }),
        )
        .route(
            "/dropped_body",
            get(|| async { axum::body::Body::new(LogsWhenDropped(Some(Bytes::from("done")))) }),
        )
        .route(
            "/job",
            get(move || {
                let queue = queue.clone();
                async move { queue.send(job::carrier().unwrap()).unwrap() }
            }),
        )
        .route(
            "/call_in_span",
            get(move || {
                let call = call.clone();
                async move {
                    call("from_span")
                        .instrument(tracing::info_span!("db_lookup"))
                        .await
                }
            }),
        )
        .layer(obs.layer())
}

const PATHS: [&str; 8] = [
    "/own_spans",
    "/other_thread",
    "/spawned",
    "/blocking",
    "/stream",
    "/dropped_body",
    "/job",
    "/call_in_span",
];

/// The trace a request continues: one per path and sampled flag, so a line's `trace_id` names
/// its request.
/// The upstream path the handler of `path` calls.
fn called_by(path: &str) -> Option<&'static str> {
    match path {
        "/spawned" => Some("/from_task"),
        "/call_in_span" => Some("/from_span"),
        _ => None,
    }
}

fn trace_of(index: usize, sampled: bool) -> String {
    format!("{:032x}", 0x7e57_0000 + index * 2 + usize::from(sampled))
}

fn request_id(path: &str, sampled: bool) -> String {
    format!(
        "{}-{}",
        &path[1..],
        if sampled { "sampled" } else { "unsampled" }
    )
}

/// Each path once from a sampled caller and once from an unsampled one; the lines logged,
/// and (with `otel`) the spans exported.
struct Run {
    lines: Vec<Value>,
    sent: Vec<(String, String, TraceParent)>,
    #[cfg(feature = "otel")]
    spans: Vec<fake_opentelemetry_collector::ExportedSpan>,
}

fn run() -> Run {
    let out = Captured::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    #[cfg(feature = "otel")]
    let mut collector = runtime
        .block_on(fake_opentelemetry_collector::FakeCollectorServer::start())
        .unwrap();
    #[cfg(feature = "otel")]
    let endpoint = collector.endpoint();
    let obs = periscope::Observability::builder()
        .service_name("handler-code")
        .log_writer(out.clone())
        .env_from(|name| match name {
            #[cfg(feature = "otel")]
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            #[cfg(feature = "otel")]
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
            _ => None,
        })
        .unwrap()
        .build()
        .unwrap();
    let guard = obs.init().unwrap();
    let sent = Sent::default();
    runtime.block_on(async {
        let app = app(&obs, upstream(sent.clone()).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        for (index, path) in PATHS.into_iter().enumerate() {
            for sampled in [true, false] {
                let flags = if sampled { "01" } else { "00" };
                let request = http::Request::get(format!("http://{addr}{path}"))
                    .header("x-request-id", request_id(path, sampled))
                    .header(
                        "traceparent",
                        format!("00-{}-00f067aa0ba902b7-{flags}", trace_of(index, sampled)),
                    )
                    .body(Empty::new())
                    .unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), 200, "{path}");
                let body = response.into_body().collect().await.unwrap().to_bytes();
                if path == "/other_thread" {
                    assert_eq!(body, "moved", "the task never resumed on another thread");
                }
            }
        }
        // The jobs run after their requests are answered: waited for, by their lines.
        let jobs_logged = async {
            while out
                .lines()
                .iter()
                .filter(|line| line["data"]["pattern"] == "job")
                .count()
                < 2
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), jobs_logged)
            .await
            .expect("the jobs ran within 10 s");
    });
    // Flushes the spans, then every line.
    drop(guard);
    let sent = sent.lock().unwrap().clone();
    Run {
        lines: out.lines(),
        sent,
        #[cfg(feature = "otel")]
        spans: runtime.block_on(collector.exported_spans(1, Duration::from_secs(10))),
    }
}

#[test]
fn lines_of_a_handlers_own_code_carry_its_requests_ids() {
    let run = run();
    for (index, path) in PATHS.into_iter().enumerate() {
        for sampled in [true, false] {
            let id = request_id(path, sampled);
            let trace_id = trace_of(index, sampled);
            let of_request: Vec<&Value> = run
                .lines
                .iter()
                .filter(|line| line["request_id"] == id.as_str())
                .collect();
            let access = of_request
                .iter()
                .find(|line| line["target"] == "periscope::access")
                .unwrap_or_else(|| panic!("{id}: no access line"));
            let request_span = access["span_id"].as_str().unwrap();
            let logged: Vec<&Value> = of_request
                .iter()
                .filter(|line| line["message"] == "logged")
                .copied()
                .collect();
            let patterns: BTreeSet<&str> = logged
                .iter()
                .map(|line| line["data"]["pattern"].as_str().unwrap())
                .collect();
            let expected: &[&str] = match path {
                "/own_spans" => &["handler", "in_scope", "instrument", "instrument_attribute"],
                "/other_thread" => &["other_thread"],
                "/spawned" => &["spawned"],
                "/blocking" => &["blocking"],
                "/stream" => &["stream"],
                "/dropped_body" => &["body_dropped"],
                "/job" => &["job"],
                _ => &[],
            };
            assert_eq!(patterns, expected.iter().copied().collect(), "{id}");
            for line in &logged {
                assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
                // A job's lines carry its own span; every other line the request's span, the
                // one its caller and its access line know (in a span of the service's own too).
                if path == "/job" {
                    assert_ne!(line["span_id"], request_span, "{line}");
                } else {
                    assert_eq!(line["span_id"], request_span, "{line}");
                }
            }
            if path == "/spawned" {
                let carried = logged.iter().any(|line| line["data"]["carrier"] == true);
                assert!(
                    carried,
                    "{id}: a job enqueued from the task has the request's carrier"
                );
            }
            // The calls made in a spawned task and in a span of the service's own carry the
            // request id and the trace, sampled as the caller said.
            if let Some(called) = called_by(path) {
                let (_, _, traceparent) = run
                    .sent
                    .iter()
                    .find(|(to, sent_id, _)| to == called && *sent_id == id)
                    .unwrap_or_else(|| panic!("{id}: no call to {called} with its request id"));
                assert_eq!(traceparent.trace_id.to_string(), trace_id, "{id}");
                assert_eq!(
                    traceparent.flags.is_sampled(),
                    sampled,
                    "{id}: {traceparent}"
                );
            }
        }
    }
    #[cfg(feature = "otel")]
    exported_spans_agree(&run);
}

/// Feature `otel`: each sampled request's lines name its exported server span; the spans
/// of the service's own, the spawned task's span, the calls' client spans and the job's
/// consumer span are exported under it; the unsampled requests export nothing.
#[cfg(feature = "otel")]
fn exported_spans_agree(run: &Run) {
    use fake_opentelemetry_collector::ExportedSpan;

    let spans = &run.spans;
    let by_id = |span_id: &str| {
        spans
            .iter()
            .find(|span| span.span_id == span_id)
            .unwrap_or_else(|| panic!("span {span_id} was not exported: {spans:#?}"))
    };
    let child = |parent: &ExportedSpan, name: &str| {
        spans
            .iter()
            .find(|span| span.parent_span_id == parent.span_id && span.name == name)
            .unwrap_or_else(|| panic!("no {name} span under {}: {spans:#?}", parent.name))
    };
    for (index, path) in PATHS.into_iter().enumerate() {
        let unsampled = trace_of(index, false);
        assert!(
            spans.iter().all(|span| span.trace_id != unsampled),
            "{path}: the unsampled request exported spans"
        );
        let id = request_id(path, true);
        let access = run
            .lines
            .iter()
            .find(|line| line["request_id"] == id.as_str() && line["target"] == "periscope::access")
            .unwrap();
        let server = by_id(access["span_id"].as_str().unwrap());
        assert_eq!(server.name, format!("GET {path}"));
        assert_eq!(server.kind, "SPAN_KIND_SERVER");
        assert_eq!(server.trace_id, trace_of(index, true));
        assert_eq!(server.parent_span_id, "00f067aa0ba902b7");
        let own_spans: &[&str] = match path {
            "/own_spans" => &["validate", "lookup", "instrumented_step"],
            "/spawned" => &["task"],
            "/blocking" => &["decode"],
            "/call_in_span" => &["db_lookup"],
            _ => &[],
        };
        for name in own_spans {
            let own = child(server, name);
            assert_eq!(own.trace_id, server.trace_id, "{name}");
            if let Some(called) = called_by(path) {
                // The call's client span is the child of the span it was made in, and the
                // parent the upstream was sent.
                let client = child(own, "GET");
                assert_eq!(client.kind, "SPAN_KIND_CLIENT");
                let (_, _, traceparent) = run
                    .sent
                    .iter()
                    .find(|(to, sent_id, _)| to == called && *sent_id == id)
                    .unwrap();
                assert_eq!(traceparent.parent_id.to_string(), client.span_id);
            }
        }
        if path == "/job" {
            let line = run
                .lines
                .iter()
                .find(|line| line["request_id"] == id.as_str() && line["message"] == "logged")
                .unwrap();
            let job = by_id(line["span_id"].as_str().unwrap());
            assert_eq!(job.name, "send_receipt");
            assert_eq!(job.kind, "SPAN_KIND_CONSUMER");
            assert_eq!(job.parent_span_id, server.span_id);
        }
    }
}

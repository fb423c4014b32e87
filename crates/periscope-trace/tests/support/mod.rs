//! Test support: a subscriber layer that keeps every log line with the context fields lifted
//! from its spans (as the JSON log layer does), real servers on 127.0.0.1, and a traced client.
#![allow(dead_code, clippy::unwrap_used)]

pub mod services;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use periscope_trace::{ClientTrace, ClientTraceLayer};
use tower::{Layer as _, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The fields a log line takes from the spans in scope (innermost wins).
pub const CONTEXT_FIELDS: [&str; 8] = [
    "request_id",
    "trace_id",
    "span_id",
    "org_id",
    "project_id",
    "user_id",
    "team_id",
    "job_id",
];

/// One log line: the event's own fields and the context fields lifted from its spans.
#[derive(Clone, Debug)]
pub struct Line {
    pub level: Level,
    pub target: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    pub context: BTreeMap<String, String>,
}

impl Line {
    pub fn ctx(&self, key: &str) -> Option<&str> {
        self.context.get(key).map(String::as_str)
    }
}

/// A closed span: its name, every field it recorded, and when it was open.
#[derive(Clone, Debug)]
pub struct ClosedSpan {
    pub name: String,
    pub fields: BTreeMap<String, String>,
    /// From its creation to its close.
    pub duration: Duration,
    pub closed_at: Instant,
}

impl ClosedSpan {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct Capture {
    lines: Arc<Mutex<Vec<Line>>>,
    spans: Arc<Mutex<Vec<ClosedSpan>>>,
}

impl Capture {
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    pub fn spans(&self) -> Vec<ClosedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Log lines whose lifted `request_id` is `id`.
    pub fn lines_for(&self, id: &str) -> Vec<Line> {
        self.lines()
            .into_iter()
            .filter(|line| line.ctx("request_id") == Some(id))
            .collect()
    }

    /// The line of request `id` with this message (and, when given, this `hop` field).
    pub fn line(&self, id: &str, message: &str, hop: Option<&str>) -> Line {
        self.lines_for(id)
            .into_iter()
            .find(|l| {
                l.message == message
                    && hop.is_none_or(|hop| l.fields.get("hop").map(String::as_str) == Some(hop))
            })
            .unwrap_or_else(|| panic!("no line {message:?} for {id} (hop {hop:?})"))
    }

    /// Closed spans named `name` whose `request_id` is `id`.
    pub fn spans_for(&self, name: &str, id: &str) -> Vec<ClosedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.name == name && span.get("request_id") == Some(id))
            .collect()
    }
}

struct Fields(BTreeMap<String, String>);

/// When a span was created.
struct Opened(Instant);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            extensions.insert(fields);
            extensions.insert(Opened(Instant::now()));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        let mut context = BTreeMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    for key in CONTEXT_FIELDS {
                        if let Some(value) = span_fields.0.get(key) {
                            context
                                .entry(key.to_owned())
                                .or_insert_with(|| value.clone());
                        }
                    }
                }
            }
        }
        let message = fields.0.remove("message").unwrap_or_default();
        self.lines.lock().unwrap().push(Line {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message,
            fields: fields.0,
            context,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let closed_at = Instant::now();
            let extensions = span.extensions();
            let fields = extensions
                .get::<Fields>()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            let opened = extensions.get::<Opened>().map_or(closed_at, |o| o.0);
            self.spans.lock().unwrap().push(ClosedSpan {
                name: span.name().to_owned(),
                fields,
                duration: closed_at - opened,
                closed_at,
            });
        }
    }
}

/// An exported span's attribute as the collector crate renders it (`""` when absent).
pub fn attr<'a>(span: &'a fake_opentelemetry_collector::ExportedSpan, key: &str) -> &'a str {
    span.attributes.get(key).map(String::as_str).unwrap_or("")
}

/// Serves `router` on an ephemeral port of 127.0.0.1.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

pub type TracedClient = ClientTrace<Client<HttpConnector, Full<Bytes>>>;

/// hyper-util's client behind the client layer.
pub fn traced_client() -> TracedClient {
    ClientTraceLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

/// A plain client, standing in for an outside caller.
pub fn plain_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` and reads the whole response.
pub async fn send<C, B>(client: C, request: Request<Full<Bytes>>) -> Response<Bytes>
where
    C: tower::Service<Request<Full<Bytes>>, Response = Response<B>>,
    C::Error: fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    let response = client.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}

/// Installs `subscriber` as this thread's default, for a test that reads the lines it
/// captures.
///
/// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
/// that meets a callsite first whether it is enabled, and caches the answer for every thread:
/// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
/// cached as never enabled, and a test capturing lines at the same time misses them. Two
/// dispatchers kept for the whole run make tracing-core ask every live one instead (see
/// docs/development.md).
pub fn set_default(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    tracing::subscriber::set_default(subscriber)
}

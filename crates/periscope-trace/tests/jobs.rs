//! Jobs end to end: the carrier as a queue stores it (JSON), carriers from older, newer,
//! broken or hostile writers, retries, jobs enqueued by jobs or outside any request, sampling,
//! the worker's JSON log lines, failing and panicking jobs, and (with `otel`) the exported job
//! spans.

mod support;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::Request;
use periscope_context::{Carrier, ExtractOptions, RequestContext, TraceParent, extract};
use periscope_log::LogLayer;
use periscope_trace::job::{self, JobSpan};
use serde_json::Value;
use support::{send, serve, traced_client};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What the JSON log layer writes, parsed back line by line.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl Write for Written {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Written {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// The lines whose top-level `request_id` is `id`.
    fn lines_for(&self, id: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["request_id"] == id)
            .collect()
    }

    fn bytes(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The service's JSON log layer (writing each line as it is logged) as this thread's
/// subscriber.
fn json_logs() -> (Written, impl Sized) {
    let (out, _, guards) = json_logs_and_fields();
    (out, guards)
}

/// [`json_logs`], and the span fields recorded after creation.
fn json_logs_and_fields() -> (Written, RecordedFields, impl Sized) {
    let out = Written::default();
    let (layer, guard) = LogLayer::builder()
        .service("worker")
        .writer(out.clone())
        .blocking(true)
        .build();
    let recorded = RecordedFields::default();
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(recorded.clone());
    let default = support::set_default(subscriber);
    (out, recorded, (default, guard))
}

/// A request's context the way the server layer makes it from these headers.
fn request(traceparent: &str, request_id: &str) -> RequestContext {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", traceparent.parse().unwrap());
    headers.insert("x-request-id", request_id.parse().unwrap());
    headers.insert("x-org-id", "org_7".parse().unwrap());
    extract(&headers, &ExtractOptions::default()).context
}

/// The carrier as a queue stores it and a worker reads it back.
fn through_json(carrier: &Carrier) -> Carrier {
    serde_json::from_str(&serde_json::to_string(carrier).unwrap()).unwrap()
}

/// A server on 127.0.0.1 that answers with the `traceparent` and `x-request-id` it received.
async fn echo() -> SocketAddr {
    let router = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        format!("{} {}", get("traceparent"), get("x-request-id"))
    });
    serve(router).await
}

/// One call through the client layer: the `traceparent` and request id the server received.
async fn call(addr: SocketAddr) -> (TraceParent, String) {
    let request = Request::get(format!("http://{addr}/work"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = send(traced_client(), request).await;
    let text = String::from_utf8(response.into_body().to_vec()).unwrap();
    let (traceparent, request_id) = text.split_once(' ').unwrap();
    (
        TraceParent::parse(traceparent).unwrap(),
        request_id.to_owned(),
    )
}

/// As a queue stores it: a flat JSON object of strings, read back equal, and a worker's job
/// continues the request from it.
#[test]
fn a_carrier_read_back_from_json_continues_the_request() {
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-json-1");
    let carrier = request.in_scope(job::carrier).unwrap();
    let stored = serde_json::to_value(&carrier).unwrap();
    let object = stored.as_object().unwrap();
    assert!(object.values().all(Value::is_string), "{stored}");
    assert_eq!(object["x-request-id"], "req-json-1");
    assert_eq!(object["x-org-id"], "org_7");
    let read: Carrier = serde_json::from_value(stored).unwrap();
    assert_eq!(read, carrier);

    let job = JobSpan::from_carrier("send_receipt", &read);
    let ctx = job.context();
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert_eq!(ctx.request_id.as_str(), "req-json-1");
    assert_eq!(ctx.parent_span_id, Some(request.span_id));
    assert_eq!(ctx.tenant.org_id(), Some("org_7"));
}

/// A newer writer adds keys this version does not know; an older one leaves keys out. Unknown
/// keys are ignored; a missing `traceparent` starts a trace (no warning: nothing was
/// dropped), a missing request id is generated.
#[test]
fn carriers_from_older_and_newer_writers() {
    let (logs, _guard) = json_logs();
    let newer = format!(
        r#"{{"traceparent":"00-{TRACE}-{PARENT}-01","x-request-id":"req-new","x-priority":"high","sentry-trace":"abc-def"}}"#
    );
    let carrier: Carrier = serde_json::from_str(&newer).unwrap();
    let ctx = JobSpan::from_carrier("j", &carrier).context().clone();
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert_eq!(ctx.request_id.as_str(), "req-new");

    let only_id: Carrier = serde_json::from_str(r#"{"x-request-id":"req-old"}"#).unwrap();
    let job = JobSpan::from_carrier("j", &only_id);
    assert_eq!(job.context().request_id.as_str(), "req-old");
    assert_eq!(job.context().parent_span_id, None);
    let only_trace: Carrier =
        serde_json::from_str(&format!(r#"{{"traceparent":"00-{TRACE}-{PARENT}-01"}}"#)).unwrap();
    let job = JobSpan::from_carrier("j", &only_trace);
    assert_eq!(job.context().trace_id.to_string(), TRACE);
    assert!(job.context().request_id.as_str().starts_with("req_"));
    let empty: Carrier = serde_json::from_str("{}").unwrap();
    let job = JobSpan::from_carrier("j", &empty);
    assert!(job.context().request_id.as_str().starts_with("req_"));
    let warnings: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "warn")
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A writer that puts a value other than a string in the object (a number, `true`, `null`
/// for an absent value, a list): the carrier is still read, so the job is not lost for its
/// trace context; such entries are left out, and each one that is not `null` is named in a
/// warning.
#[test]
fn a_carrier_with_values_that_are_not_strings_is_still_read() {
    let (logs, _guard) = json_logs();
    let tp = format!("00-{TRACE}-{PARENT}-01");
    for (extra, warned) in [
        (r#""x-attempt":3"#, Some("x-attempt")),
        (r#""baggage":null"#, None),
        (r#""tracestate":["a=1"]"#, Some("tracestate")),
        (r#""x-org-id":{"id":1}"#, Some("x-org-id")),
        (r#""x-sampled":true"#, Some("x-sampled")),
    ] {
        let json = format!(r#"{{"traceparent":"{tp}","x-request-id":"r-1",{extra}}}"#);
        let carrier: Carrier =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(carrier.as_map().len(), 2, "{json}");
        let before = logs.lines().len();
        let job = JobSpan::from_carrier("j", &carrier);
        assert_eq!(job.context().trace_id.to_string(), TRACE, "{json}");
        assert_eq!(job.context().request_id.as_str(), "r-1", "{json}");
        // Told when the job runs, or, as here, when its span is dropped unrun.
        drop(job);
        let warnings: Vec<Value> = logs.lines()[before..].to_vec();
        match warned {
            None => assert!(warnings.is_empty(), "{json}: {warnings:#?}"),
            Some(key) => {
                assert_eq!(warnings.len(), 1, "{json}: {warnings:#?}");
                assert_eq!(warnings[0]["level"], "warn");
                assert_eq!(
                    warnings[0]["message"],
                    "ignored carrier entries whose values are not strings"
                );
                assert_eq!(warnings[0]["data"]["keys"], key, "{json}");
                assert_eq!(warnings[0]["request_id"], "r-1");
            }
        }
    }
    // A `traceparent` that is not a string: a new trace, and the warning says which entry.
    let carrier: Carrier =
        serde_json::from_str(r#"{"traceparent":5,"x-request-id":"r-2"}"#).unwrap();
    let job = JobSpan::from_carrier("j", &carrier);
    assert_ne!(job.context().trace_id.to_string(), TRACE);
    assert_eq!(job.context().request_id.as_str(), "r-2");
    drop(job);
    let warning = logs.lines_for("r-2").pop().unwrap();
    assert_eq!(warning["data"]["keys"], "traceparent");
    // A carrier that is not an object at all is still an error: the payload is not one.
    for json in [r#""00-abc""#, "[1,2]", "7"] {
        assert!(serde_json::from_str::<Carrier>(json).is_err(), "{json}");
    }
    // As a field of the job's payload, where `null` is no carrier.
    let payload: Value =
        serde_json::from_str(r#"{"id":"job_1","trace":{"traceparent":null,"x-retry":2}}"#).unwrap();
    let trace: Option<Carrier> = serde_json::from_value(payload["trace"].clone()).unwrap();
    assert!(trace.unwrap().as_map().is_empty());
    let none: Option<Carrier> = serde_json::from_value(Value::Null).unwrap();
    assert!(none.is_none());
}

/// Runs a job's future to its end on a runtime of its own (for the tests that are not async).
trait AwaitSync: std::future::Future + Sized {
    fn await_sync(self) -> Self::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(self)
    }
}

impl<F: std::future::Future> AwaitSync for F {}

/// Hostile or broken entries: each falls back as documented, says at warn what it dropped
/// (an invalid `tracestate` is dropped alone and without a word, as on the server), and keeps
/// what it could.
#[test]
fn broken_carriers_fall_back_and_warn() {
    let (logs, _guard) = json_logs();
    let good = format!("00-{TRACE}-{PARENT}-01");
    const RESTARTED: &str = "started a new trace: the incoming traceparent is invalid";
    const REPLACED: &str = "replaced the invalid incoming request id with a generated one";
    const TENANT: &str = "ignored an invalid tenant header";
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(&str, String)>, bool, &[&str])> = vec![
        (
            "invalid",
            vec![("traceparent", "00-zz".into())],
            false,
            &[RESTARTED],
        ),
        (
            "all-zero trace id",
            vec![("traceparent", format!("00-{}-{PARENT}-01", "0".repeat(32)))],
            false,
            &[RESTARTED],
        ),
        (
            "all-zero parent id",
            vec![("traceparent", format!("00-{TRACE}-{}-01", "0".repeat(16)))],
            false,
            &[RESTARTED],
        ),
        (
            "upper-case hex",
            vec![("traceparent", good.to_uppercase())],
            false,
            &[RESTARTED],
        ),
        (
            "version ff",
            vec![("traceparent", good.replacen("00-", "ff-", 1))],
            false,
            &[RESTARTED],
        ),
        (
            "huge tracestate",
            vec![
                ("traceparent", good.clone()),
                ("tracestate", "k=v,".repeat(100_000)),
            ],
            true,
            &[],
        ),
        (
            "huge baggage",
            vec![
                ("traceparent", good.clone()),
                ("baggage", "k=v,".repeat(200_000)),
            ],
            true,
            &[],
        ),
        (
            "request id too long",
            vec![
                ("traceparent", good.clone()),
                ("x-request-id", "r".repeat(129)),
            ],
            true,
            &[REPLACED],
        ),
        (
            "request id forging a line",
            vec![
                ("traceparent", good.clone()),
                ("x-request-id", "r\n{\"level\":\"error\"}".into()),
            ],
            true,
            &[REPLACED],
        ),
        (
            "tenant breaking the id rules",
            vec![
                ("traceparent", good.clone()),
                ("x-org-id", "org 7; drop".into()),
                ("x-project-id", "p".repeat(200)),
            ],
            true,
            &[TENANT, TENANT],
        ),
    ];
    for (name, entries, continued, warnings) in cases {
        let before = logs.lines().len();
        let carrier = Carrier::from(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let job = JobSpan::from_carrier("j", &through_json(&carrier)).with_job_id("job_9");
        let ctx = job.context().clone();
        assert_eq!(ctx.trace_id.to_string() == TRACE, continued, "{name}");
        assert!(ctx.trace_state.as_str().len() <= 512, "{name}");
        assert!(ctx.baggage.len() <= 64, "{name}");
        assert!(ctx.tenant.is_empty(), "{name}");
        job.run(async { tracing::info!("ran") }).await_sync();
        let lines = logs.lines()[before..].to_vec();
        let (ran, warned) = lines.split_last().unwrap();
        assert_eq!(ran["message"], "ran", "{name}");
        let messages: Vec<&str> = warned
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, warnings, "{name}: {warned:#?}");
        for line in &lines {
            // The job's ids on every line, the warnings included; a request id that was
            // replaced is a generated one, never the carrier's.
            assert_eq!(line["request_id"], ctx.request_id.as_str(), "{name}");
            assert_eq!(line["trace_id"], ctx.trace_id.to_string(), "{name}");
            assert_eq!(line["span_id"], ctx.span_id.to_string(), "{name}");
            // And the id of the job: the one to look the message up by in its queue.
            assert_eq!(line["job_id"], "job_9", "{name}: {line}");
        }
        if name == "huge baggage" {
            assert_eq!(ctx.baggage.len(), 64);
        }
    }
}

/// A tenant key listed twice (a service declaring `org_id` beside the defaults): an invalid
/// value is read once, and warned of once.
#[test]
fn a_tenant_key_listed_twice_warns_once() {
    let (logs, _guard) = json_logs();
    use periscope_context::TenantKey;
    let options = ExtractOptions {
        tenant_keys: vec![TenantKey::ORG_ID, TenantKey::PROJECT_ID, TenantKey::ORG_ID],
        ..ExtractOptions::default()
    };
    let carrier = Carrier::from(std::collections::BTreeMap::from([
        ("x-request-id".to_owned(), "r-dup".to_owned()),
        ("x-org-id".to_owned(), "org 7; drop".to_owned()),
    ]));
    JobSpan::from_carrier_with("j", &carrier, &options)
        .run(async {})
        .await_sync();
    let warned = logs
        .lines()
        .iter()
        .filter(|line| line["message"] == "ignored an invalid tenant header")
        .count();
    assert_eq!(warned, 1, "{:#?}", logs.lines());
}

/// A carrier of megabytes from the queue: read, used and dropped with bounded results.
#[test]
fn a_carrier_of_megabytes() {
    let (logs, _guard) = json_logs();
    let mut object = serde_json::Map::new();
    object.insert(
        "traceparent".into(),
        format!("00-{TRACE}-{PARENT}-01").into(),
    );
    object.insert("x-request-id".into(), "r".repeat(4 << 20).into());
    object.insert("tracestate".into(), "a=b,".repeat(1 << 20).into());
    object.insert("baggage".into(), "k=v,".repeat(1 << 20).into());
    object.insert("x-org-id".into(), "o".repeat(4 << 20).into());
    for i in 0..50_000 {
        object.insert(format!("x-unknown-{i}"), "v".into());
    }
    let json = serde_json::to_string(&object).unwrap();
    let started = std::time::Instant::now();
    let carrier: Carrier = serde_json::from_str(&json).unwrap();
    let job = JobSpan::from_carrier("j", &carrier);
    let handed_on = job.run(async { job::carrier().unwrap() }).await_sync();
    eprintln!(
        "{} MB carrier: {:?}; logs {} bytes; handed on {} bytes",
        json.len() >> 20,
        started.elapsed(),
        logs.bytes(),
        serde_json::to_string(&handed_on).unwrap().len()
    );
    let lines = logs.lines();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "replaced the invalid incoming request id with a generated one",
            "ignored an invalid tenant header"
        ]
    );
    // Nothing of the megabytes is kept or logged: the warnings give the length, the job
    // hands on a carrier of ordinary size.
    assert!(logs.bytes() < 2048, "{lines:#?}");
    let handed_on = serde_json::to_string(&handed_on).unwrap();
    assert!(handed_on.len() < 1024, "{handed_on}");
    assert!(handed_on.contains(TRACE));
}

/// A job retried: every attempt has the request's trace id and request id, a span id of its
/// own, and the calls it makes carry that attempt's trace.
#[tokio::test]
async fn each_attempt_of_a_retried_job_continues_the_request() {
    let addr = echo().await;
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-retry");
    let stored = serde_json::to_string(&request.in_scope(job::carrier).unwrap()).unwrap();
    let mut spans = vec![request.span_id];
    let mut sent_parents = Vec::new();
    for attempt in 0..3 {
        let carrier: Carrier = serde_json::from_str(&stored).unwrap();
        let job = JobSpan::from_carrier("charge", &carrier).with_job_id("job_1");
        let ctx = job.context().clone();
        assert_eq!(ctx.trace_id.to_string(), TRACE, "attempt {attempt}");
        assert_eq!(ctx.request_id.as_str(), "req-retry");
        assert_eq!(ctx.parent_span_id, Some(request.span_id));
        assert!(!spans.contains(&ctx.span_id), "attempt {attempt}");
        spans.push(ctx.span_id);
        let (sent, request_id) = job.run(call(addr)).await;
        assert_eq!(sent.trace_id.to_string(), TRACE);
        assert_eq!(request_id, "req-retry");
        assert!(sent.flags.is_sampled());
        assert!(!spans.contains(&sent.parent_id));
        assert!(!sent_parents.contains(&sent.parent_id));
        sent_parents.push(sent.parent_id);
    }
}

/// Outside any request (a cron task, startup code) `carrier()` is `None`; `carrier_or_new()`
/// gives a carrier with a request id of its own and no parent: every attempt of the job
/// shares that request id and starts a trace of its own.
#[tokio::test]
async fn a_job_enqueued_outside_any_request() {
    assert!(job::carrier().is_none());
    let stored = serde_json::to_string(&outside_carrier()).unwrap();
    let attempts: Vec<RequestContext> = (0..2)
        .map(|_| {
            let carrier: Carrier = serde_json::from_str(&stored).unwrap();
            JobSpan::from_carrier("nightly", &carrier).context().clone()
        })
        .collect();
    assert_eq!(attempts[0].request_id, attempts[1].request_id);
    assert!(attempts[0].request_id.as_str().starts_with("req_"));
    assert!(attempts.iter().all(|ctx| ctx.parent_span_id.is_none()));
    assert_ne!(attempts[0].trace_id, attempts[1].trace_id);
    // Inside a request it is the request's carrier.
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-in");
    assert_eq!(
        request.in_scope(job::carrier_or_new),
        request.in_scope(job::carrier).unwrap()
    );
}

/// The carrier the docs tell a team to enqueue outside any request.
fn outside_carrier() -> Carrier {
    job::carrier_or_new()
}

/// The caller's sampled flag is the job's, and the calls it makes send it.
#[tokio::test]
async fn the_callers_sampled_flag_is_honoured() {
    let addr = echo().await;
    for (flags, sampled) in [("01", true), ("00", false)] {
        let request = request(&format!("00-{TRACE}-{PARENT}-{flags}"), "req-s");
        let carrier = through_json(&request.in_scope(job::carrier).unwrap());
        let job = JobSpan::from_carrier("j", &carrier);
        assert_eq!(job.context().is_sampled(), sampled);
        let (sent, _) = job.run(call(addr)).await;
        assert_eq!(sent.flags.is_sampled(), sampled, "{flags}");
    }
}

/// The worker's lines, as the JSON log layer writes them: the job's ids at the top.
#[tokio::test]
async fn the_workers_lines_carry_the_jobs_ids() {
    let (logs, _guard) = json_logs();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-lines");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let job = JobSpan::from_carrier("send_receipt", &carrier).with_job_id("job_42");
    let ctx = job.context().clone();
    job.run(async {
        tracing::info!(step = 1, "job started");
        tracing::info_span!("render").in_scope(|| tracing::info!("rendered"));
    })
    .await;
    let lines = logs.lines_for("req-lines");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        eprintln!("{line}");
        assert_eq!(line["job_id"], "job_42", "{line}");
        assert_eq!(line["job_name"], "send_receipt", "{line}");
        assert_eq!(line["trace_id"], TRACE, "{line}");
        assert_eq!(line["span_id"], ctx.span_id.to_string(), "{line}");
        assert_eq!(line["org_id"], "org_7", "{line}");
    }
}

/// A bug's panic whose message is JSON with a secret in it (masked by key in the log, as the
/// log layer masks any JSON text, a handler's panic message included).
const SECRET_PANIC: &str = r#"{"card":"4242","password":"hunter2"}"#;

/// A job that panics: one `error` line inside its span, with the job's ids and the panic's
/// message (masked by the log layer) and location; the panic still ends the worker's task, with
/// its own payload, for the worker's retry logic.
#[tokio::test]
async fn a_panicking_job_is_logged_once_with_its_ids_and_still_unwinds() {
    let (logs, _guard) = json_logs();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-panic");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let job = JobSpan::from_carrier("charge", &carrier).with_job_id("job_9");
    let ctx = job.context().clone();
    let joined = tokio::spawn(job.run(async {
        tracing::info!("charging");
        panic!("{SECRET_PANIC}");
    }))
    .await;
    let payload = joined.unwrap_err().into_panic();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), SECRET_PANIC);

    let lines = logs.lines_for("req-panic");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let line = &lines[1];
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["message"], "job panicked", "{line}");
    assert_eq!(line["job_id"], "job_9", "{line}");
    assert_eq!(line["job_name"], "charge", "{line}");
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["span_id"], ctx.span_id.to_string(), "{line}");
    assert_eq!(line["org_id"], "org_7", "{line}");
    let message = line["data"]["panic.message"].as_str().unwrap();
    let message: Value = serde_json::from_str(message).unwrap();
    assert_eq!(message["card"], "4242", "{line}");
    assert_eq!(message["password"], "[REDACTED]", "{line}");
    let location = line["data"]["panic.location"].as_str().unwrap();
    assert!(location.contains("jobs.rs:"), "{location}");
}

/// Span fields recorded after creation, as `name=value`.
#[derive(Clone, Default)]
struct RecordedFields(Arc<Mutex<Vec<String>>>);

impl tracing::field::Visit for RecordedFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{}={value:?}", field.name());
        self.0.lock().unwrap().push(text.replace('"', ""));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecordedFields {
    fn on_record(
        &self,
        _span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        values.record(&mut self.clone());
    }
}

/// A job dropped before it finished (a timeout around it, the worker stopping) is a failure:
/// its span says so, and a warning with the job's ids tells it, not a span closed as a success
/// without a word.
#[tokio::test]
async fn a_job_dropped_before_it_finished_is_logged_and_marked_cancelled() {
    let (out, recorded, _guards) = json_logs_and_fields();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-dropped");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let job = JobSpan::from_carrier("resize", &carrier).with_job_id("job_3");
    let timed_out = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        job.run(std::future::pending::<()>()),
    )
    .await;
    assert!(timed_out.is_err());
    let lines = out.lines_for("req-dropped");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["level"], "warn", "{}", lines[0]);
    assert_eq!(lines[0]["job_id"], "job_3", "{}", lines[0]);
    assert_eq!(lines[0]["trace_id"], TRACE, "{}", lines[0]);
    let fields = recorded.0.lock().unwrap().clone();
    assert!(
        fields.contains(&"otel.status_code=ERROR".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"error.type=cancelled".to_owned()),
        "{fields:?}"
    );

    // A job that ends, or whose panic was logged, is not also told as dropped.
    let job = JobSpan::from_carrier("resize", &carrier).with_job_id("job_4");
    job.run(async {}).await;
    let job = JobSpan::from_carrier("resize", &carrier).with_job_id("job_5");
    let panicked = tokio::spawn(job.run(async { panic!("boom") })).await;
    assert!(panicked.is_err());
    let messages: Vec<_> = out
        .lines_for("req-dropped")
        .iter()
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[1], "job panicked", "{messages:?}");
}

/// A job that fails marks its span failed with an `error.type`, as one dropped does: `panic`
/// for a panic, the error's type for an `Err`, `_OTHER` for a boxed one.
#[tokio::test]
async fn a_failed_job_records_what_failed_it() {
    let (_out, recorded, _guards) = json_logs_and_fields();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-failed");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let job = || JobSpan::from_carrier("resize", &carrier);
    let error_types = || {
        let fields = recorded.0.lock().unwrap().clone();
        recorded.0.lock().unwrap().clear();
        fields
            .into_iter()
            .filter(|field| field.starts_with("error.type=") || field.starts_with("otel.status"))
            .collect::<Vec<_>>()
    };
    error_types();
    let panicked = tokio::spawn(job().run(async { panic!("boom") })).await;
    assert!(panicked.is_err());
    assert_eq!(
        error_types(),
        ["otel.status_code=ERROR", "error.type=panic"]
    );
    let failed = job()
        .run_fallible(async { Err::<(), _>(std::io::Error::other("disk full")) })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        error_types(),
        ["otel.status_code=ERROR", "error.type=std::io::error::Error"]
    );
    let boxed: Result<(), Box<dyn std::error::Error + Send + Sync>> = job()
        .run_fallible_dyn(async { Err("no such model".into()) })
        .await;
    assert!(boxed.is_err());
    assert_eq!(
        error_types(),
        ["otel.status_code=ERROR", "error.type=_OTHER"]
    );
    job().run(async {}).await;
    assert_eq!(error_types(), Vec::<String>::new());
}

/// The panic reaches `catch_unwind` around the worker's own poll with its payload unchanged,
/// whatever it is; the line says what it can of it, and a long message is cut as any value.
#[test]
fn a_panic_reaches_catch_unwind_with_its_payload() {
    #[derive(Debug, PartialEq)]
    struct Retry(u32);

    let (logs, _guard) = json_logs();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let carrier = Carrier::from_context(&request(&format!("00-{TRACE}-{PARENT}-01"), "req-any"));
    let job = JobSpan::from_carrier("sync", &carrier).with_job_id("job_any");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(job.run(async { std::panic::panic_any(Retry(3)) }))
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<Retry>(), Some(&Retry(3)));

    let long = "x".repeat(100_000);
    let job = JobSpan::from_carrier("sync", &carrier).with_job_id("job_long");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(job.run(async { panic!("{long}") }))
    }))
    .unwrap_err();
    assert_eq!(caught.downcast_ref::<String>(), Some(&long));

    let lines = logs.lines_for("req-any");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["job_id"], "job_any");
    assert_eq!(
        lines[0]["data"]["panic.message"],
        "a panic with a non-string payload"
    );
    assert_eq!(lines[1]["job_id"], "job_long");
    let message = lines[1]["data"]["panic.message"].as_str().unwrap();
    assert!(
        message.len() < 17 * 1024 && message.starts_with("xxx"),
        "{} bytes",
        message.len()
    );
}

/// A job's error with a cause: what `run_fallible` and `run_fallible_dyn` log with its chain.
#[derive(Debug)]
struct StepFailed {
    step: &'static str,
    cause: std::io::Error,
}

impl StepFailed {
    fn new(step: &'static str, cause: &str) -> Self {
        Self {
            step,
            cause: std::io::Error::other(cause.to_string()),
        }
    }
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.step)
    }
}

impl std::error::Error for StepFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// A job that returns `Err` through `run_fallible`: one `error` line inside its span with the
/// error and its chain, and the result unchanged. Through `run`, an `Err` is the job's value
/// and nothing is logged for it.
#[tokio::test]
async fn a_fallible_jobs_err_is_logged_once_with_its_chain() {
    let (logs, _guard) = json_logs();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-err");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let result: Result<(), &str> = JobSpan::from_carrier("charge", &carrier)
        .run(async { Err("card declined") })
        .await;
    assert_eq!(result, Err("card declined"));
    assert!(logs.lines_for("req-err").is_empty());

    let job = JobSpan::from_carrier("charge", &carrier).with_job_id("job_10");
    let ctx = job.context().clone();
    let result: Result<u8, StepFailed> = job
        .run_fallible(async { Err(StepFailed::new("charge failed", "gateway timed out")) })
        .await;
    let error = result.unwrap_err();
    assert_eq!(error.cause.to_string(), "gateway timed out");

    let line = the_job_failed_line(&logs, "req-err", "job_10", &ctx);
    assert_eq!(line["job_name"], "charge", "{line}");
    assert_eq!(
        line["data"]["error"],
        serde_json::json!({"message": "charge failed", "chain": ["gateway timed out"]}),
        "{line}"
    );
}

/// The one line logged for `request_id`: `job failed` at error, with the job's ids.
fn the_job_failed_line(
    logs: &Written,
    request_id: &str,
    job_id: &str,
    ctx: &RequestContext,
) -> Value {
    let lines = logs.lines_for(request_id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = lines.into_iter().next().unwrap();
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["message"], "job failed", "{line}");
    assert_eq!(line["job_id"], job_id, "{line}");
    assert_eq!(line["trace_id"], TRACE, "{line}");
    assert_eq!(line["span_id"], ctx.span_id.to_string(), "{line}");
    line
}

/// A job whose error is boxed (`Box<dyn Error + Send + Sync>`, as anyhow's and eyre's errors
/// are pointers to one) is logged as a concrete error is: once, with the chain it points to.
#[tokio::test]
async fn a_boxed_jobs_err_is_logged_once_with_its_chain() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    let (logs, _guard) = json_logs();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-boxed");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());
    let job = JobSpan::from_carrier("upload", &carrier).with_job_id("job_11");
    let ctx = job.context().clone();
    let result: Result<u8, BoxError> = job
        .run_fallible_dyn(async {
            Err(StepFailed::new("upload failed", "bucket is read-only").into())
        })
        .await;
    assert_eq!(result.unwrap_err().to_string(), "upload failed");

    let line = the_job_failed_line(&logs, "req-boxed", "job_11", &ctx);
    assert_eq!(
        line["data"]["error"],
        serde_json::json!({"message": "upload failed", "chain": ["bucket is read-only"]}),
        "{line}"
    );

    // Success logs nothing, as through `run_fallible`.
    let done: Result<u8, BoxError> = JobSpan::from_carrier("upload", &carrier)
        .run_fallible_dyn(async { Ok(3) })
        .await;
    assert_eq!(done.unwrap(), 3);
    assert_eq!(logs.lines_for("req-boxed").len(), 1);
}

/// A job that succeeds, through either form, logs nothing of its own.
#[tokio::test]
async fn a_job_that_succeeds_logs_nothing_new() {
    let (logs, _guard) = json_logs();
    let carrier = Carrier::from_context(&request(&format!("00-{TRACE}-{PARENT}-01"), "req-ok"));
    let done = JobSpan::from_carrier("plain", &carrier)
        .run(async { 7 })
        .await;
    assert_eq!(done, 7);
    let done: Result<u8, std::io::Error> = JobSpan::from_carrier("fallible", &carrier)
        .run_fallible(async { Ok(8) })
        .await;
    assert_eq!(done.unwrap(), 8);
    assert!(logs.lines_for("req-ok").is_empty(), "{:#?}", logs.lines());
}

/// A worker hands the job's future to a multi-threaded runtime: it is `Send` when the job is.
#[test]
fn a_jobs_future_is_send() {
    fn send<T: Send>(_: &T) {}
    let carrier = job::carrier_or_new();
    send(&JobSpan::from_carrier("plain", &carrier).run(async {}));
    let fallible = JobSpan::from_carrier("fallible", &carrier)
        .run_fallible(async { Ok::<(), std::io::Error>(()) });
    send(&fallible);
}

#[cfg(feature = "otel")]
mod otel {
    use super::*;
    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry_sdk::trace::{Sampler as Sdk, SdkTracerProvider, SpanData};
    use tower::{Layer, ServiceExt, service_fn};

    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Kept {
        fn export(
            &self,
            batch: Vec<SpanData>,
        ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send
        {
            self.0.lock().unwrap().extend(batch);
            std::future::ready(Ok(()))
        }
    }

    /// Spans exported to memory, the JSON log layer beside the OpenTelemetry layer.
    fn export(sampler: Sdk) -> (Kept, SdkTracerProvider, Written, impl Sized) {
        use opentelemetry::trace::TracerProvider as _;
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(kept.clone())
            .build();
        let out = Written::default();
        let (layer, guard) = LogLayer::builder()
            .writer(out.clone())
            .blocking(true)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(layer);
        let default = support::set_default(subscriber);
        (kept, provider, out, (default, guard))
    }

    fn always() -> Sdk {
        Sdk::ParentBased(Box::new(Sdk::AlwaysOn))
    }

    /// A request through the server layer that enqueues a job: the stored carrier.
    async fn enqueue_in_a_request(flags: &str) -> String {
        let server = periscope_trace::CorrelationLayer::new().layer(service_fn(
            |_: Request<String>| async {
                let carrier = job::carrier().unwrap();
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    serde_json::to_string(&carrier).unwrap(),
                ))
            },
        ));
        let request = Request::get("/v1/orders")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-{flags}"))
            .header("x-request-id", "req-otel")
            .body(String::new())
            .unwrap();
        // The request's span ends with its body, here.
        let body = server.oneshot(request).await.unwrap().into_body();
        body.get_ref().unwrap().clone()
    }

    fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:#?}"))
    }

    /// A job run after its request ended: its consumer span is exported in the request's
    /// trace under the server span, starting when the worker took the job; the lines carry
    /// the exported ids. A retry is another consumer span under the same parent, and a job
    /// it enqueues nests under it.
    #[tokio::test]
    async fn a_job_run_after_its_request_is_exported_under_the_requests_span() {
        let (kept, provider, logs, _guard) = export(always());
        let stored = enqueue_in_a_request("01").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut attempts = Vec::new();
        let mut next = None;
        for attempt in 0..2 {
            let carrier: Carrier = serde_json::from_str(&stored).unwrap();
            let job = JobSpan::from_carrier("charge", &carrier).with_job_id("job_1");
            attempts.push(job.context().clone());
            let handed_on = job
                .run(async move {
                    tracing::info!(attempt, "charging");
                    job::carrier().unwrap()
                })
                .await;
            next = Some(serde_json::to_string(&handed_on).unwrap());
        }
        let carrier: Carrier = serde_json::from_str(&next.unwrap()).unwrap();
        JobSpan::from_carrier("notify", &carrier)
            .run(async {})
            .await;
        provider.force_flush().unwrap();

        let spans = kept.0.lock().unwrap().clone();
        let server = find(&spans, "GET");
        let charges: Vec<&SpanData> = spans.iter().filter(|s| s.name == "charge").collect();
        assert_eq!(charges.len(), 2, "{spans:#?}");
        for (charge, ctx) in charges.iter().zip(&attempts) {
            assert_eq!(charge.span_kind, SpanKind::Consumer);
            assert_eq!(charge.span_context.trace_id().to_string(), TRACE);
            assert_eq!(charge.parent_span_id, server.span_context.span_id());
            assert_eq!(
                charge.span_context.span_id().to_string(),
                ctx.span_id.to_string()
            );
            assert!(
                charge.start_time >= server.end_time,
                "started after the request ended"
            );
            assert_eq!(charge.status, Status::Unset);
        }
        let notify = find(&spans, "notify");
        assert_eq!(notify.parent_span_id, charges[1].span_context.span_id());
        for (line, ctx) in logs.lines_for("req-otel").iter().zip(&attempts) {
            assert_eq!(line["span_id"], ctx.span_id.to_string());
            assert_eq!(line["trace_id"], TRACE);
            assert_eq!(line["job_id"], "job_1");
        }
    }

    /// What marks an exported job span failed: an error-level line inside it, a panic, or an
    /// `Err` through `run_fallible`; an `Err` through `run`, or success, does not.
    #[tokio::test]
    async fn a_failing_job_is_exported_as_an_error() {
        let (kept, provider, _logs, _guard) = export(always());
        let carrier = Carrier::from_context(&request(&format!("00-{TRACE}-{PARENT}-01"), "r"));
        JobSpan::from_carrier("logs_error", &carrier)
            .run(async { tracing::error!("failed") })
            .await;
        let _: Result<(), &str> = JobSpan::from_carrier("returns_err", &carrier)
            .run(async { Err("no") })
            .await;
        let _: Result<(), std::io::Error> = JobSpan::from_carrier("fallible_err", &carrier)
            .run_fallible(async { Err(std::io::Error::other("no")) })
            .await;
        let _: Result<(), std::io::Error> = JobSpan::from_carrier("fallible_ok", &carrier)
            .run_fallible(async { Ok(()) })
            .await;
        let job = JobSpan::from_carrier("panics", &carrier);
        assert!(
            tokio::spawn(job.run(async { panic!("a bug") }))
                .await
                .unwrap_err()
                .is_panic()
        );
        provider.force_flush().unwrap();

        let spans = kept.0.lock().unwrap().clone();
        let error = |name| matches!(find(&spans, name).status, Status::Error { .. });
        assert!(error("logs_error"));
        assert!(!error("returns_err"));
        assert!(error("fallible_err"));
        assert!(!error("fallible_ok"));
        assert!(error("panics"));
        let panics = find(&spans, "panics");
        let event = panics
            .events
            .iter()
            .find(|event| event.name == "job panicked")
            .unwrap_or_else(|| panic!("{panics:#?}"));
        assert!(
            event
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "panic.message" && kv.value.as_str() == "a bug"),
            "{event:#?}"
        );
    }

    /// A sampled-out caller: the job is not exported, and its calls say so downstream.
    #[tokio::test]
    async fn a_sampled_out_callers_job_is_not_exported() {
        let (kept, provider, _logs, _guard) = export(always());
        let addr = echo().await;
        let stored = enqueue_in_a_request("00").await;
        let carrier: Carrier = serde_json::from_str(&stored).unwrap();
        let job = JobSpan::from_carrier("quiet", &carrier);
        assert!(!job.context().is_sampled());
        let (sent, request_id) = job.run(call(addr)).await;
        assert!(!sent.flags.is_sampled());
        assert_eq!(sent.trace_id.to_string(), TRACE);
        assert_eq!(request_id, "req-otel");
        provider.force_flush().unwrap();
        assert!(kept.0.lock().unwrap().is_empty());
    }

    /// Enqueued outside any request: the exported job span is the root of its trace, never
    /// the child of a span no one exported.
    #[tokio::test]
    async fn a_job_enqueued_outside_any_request_is_a_root() {
        let (kept, provider, _logs, _guard) = export(always());
        let stored = serde_json::to_string(&outside_carrier()).unwrap();
        for _ in 0..2 {
            let carrier: Carrier = serde_json::from_str(&stored).unwrap();
            JobSpan::from_carrier("nightly", &carrier)
                .run(async {})
                .await;
        }
        provider.force_flush().unwrap();
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2);
        for span in &spans {
            assert_eq!(
                span.parent_span_id,
                opentelemetry::trace::SpanId::INVALID,
                "{span:#?}"
            );
        }
        assert_ne!(
            spans[0].span_context.trace_id(),
            spans[1].span_context.trace_id()
        );
    }
}

/// A job span is a root in this process (its parent is the carrier's): made inside another
/// span, a job enqueued by a job, its lines do not take that span's `job_id`. A `job_id` is
/// cut at `MAX_JOB_ID_LEN`. A job polled again after its output is the caller's mistake, not
/// the job's failure: no `job panicked` line, no failed span.
#[tokio::test]
async fn a_job_span_stands_alone_and_bounds_its_id() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let (out, recorded, _guards) = json_logs_and_fields();
    let request = request(&format!("00-{TRACE}-{PARENT}-01"), "req-alone");
    let carrier = through_json(&request.in_scope(job::carrier).unwrap());

    let outer = tracing::info_span!("job", job_id = "job_A");
    let inner = outer.in_scope(|| JobSpan::from_carrier("child", &carrier));
    inner.run(async { tracing::info!("child ran") }).await;
    let long = JobSpan::from_carrier("long", &carrier).with_job_id(&"j".repeat(1_000));
    long.run(async { tracing::info!("long ran") }).await;

    let lines = out.lines_for("req-alone");
    let line = |message: &str| {
        lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
            .clone()
    };
    assert!(
        line("child ran").get("job_id").is_none(),
        "{}",
        line("child ran")
    );
    let id = line("long ran")["job_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), periscope_trace::job::MAX_JOB_ID_LEN, "{id}");
    assert!(id.ends_with('…'));

    recorded.0.lock().unwrap().clear();
    let job = JobSpan::from_carrier("twice", &carrier).run(async { 7 });
    let mut job = Box::pin(job);
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(job.as_mut().poll(&mut cx), Poll::Ready(7));
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = job.as_mut().poll(&mut cx);
    }));
    assert!(again.is_err(), "polled after completion");
    drop(job);
    let lines = out.lines_for("req-alone");
    assert!(
        !lines.iter().any(|line| line["message"] == "job panicked"),
        "{lines:#?}"
    );
    let fields = recorded.0.lock().unwrap().clone();
    assert!(
        !fields.iter().any(|field| field.starts_with("error.type=")),
        "{fields:?}"
    );
}

//! `examples/multi_service` with OTLP export on: the api's call to the worker and the job it
//! enqueues, as exported and as logged. The `traceparent` the worker receives names the api's
//! exported client span; each place's log lines carry the ids of its own exported span.

use serde_json::Value;

use crate::otlp::{Exported, SpanKind, SpanStatus, start_receiver};
use crate::support::{Service, send};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The one span of `trace` with `span_id`.
fn span<'a>(spans: &'a [Exported], trace: &str, span_id: &Value) -> &'a Exported {
    spans
        .iter()
        .find(|s| s.trace_id == trace && *span_id == s.span_id.as_str())
        .unwrap_or_else(|| panic!("span {span_id} of {trace} not exported: {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_downstream_and_the_job_are_exported_with_the_ids_of_their_lines() {
    let (endpoint, spans) = start_receiver().await;
    let mut service = Service::start(
        "multi_service",
        &[
            ("PORT_API", "0"),
            ("PORT_WORKER", "0"),
            ("SHUTDOWN_DRAIN_S", "0.2"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let api = service.addr("api").await;
    let traceparent = format!("00-{TRACE_ID}-{PARENT}-01");
    let json = ("content-type", "application/json");
    let answer = send(
        api,
        "POST",
        "/v1/tasks",
        &[
            json,
            ("x-request-id", "ms-otlp-1"),
            ("traceparent", &traceparent),
        ],
        r#"{"text":"one request through three places"}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let job_id = answer.json()["job_id"].as_str().unwrap().to_owned();
    service
        .wait_for_line("job done", |line| {
            line["message"] == "job done" && line["job_id"] == job_id.as_str()
        })
        .await;
    // The worker fails: the api answers 502, both server spans and the client span fail.
    let failed = send(
        api,
        "POST",
        "/v1/tasks",
        &[json, ("x-request-id", "ms-otlp-fail")],
        r#"{"text":"x","fail":true}"#,
    )
    .await;
    failed.envelope(502, "upstream_error");

    let ok_lines = service.lines_of("ms-otlp-1", 2).await;
    let failed_lines = service.lines_of("ms-otlp-fail", 2).await;
    service.terminate();
    let status = service.exit_status().await;
    assert!(status.success(), "{status}\n{}", service.stderr());
    let spans = spans.lock().unwrap().clone();

    for (lines, error) in [(&ok_lines, false), (&failed_lines, true)] {
        let trace = lines[0]["trace_id"].as_str().unwrap().to_owned();
        let access = |route: &str| {
            lines
                .iter()
                .find(|l| l["target"] == "periscope::access" && l["data"]["route"] == route)
                .unwrap_or_else(|| panic!("no access line for {route}: {lines:#?}"))
        };
        let api_span = span(&spans, &trace, &access("/v1/tasks")["span_id"]);
        let worker_span = span(&spans, &trace, &access("/v1/process")["span_id"]);
        assert_eq!(
            (api_span.kind, api_span.name.as_str()),
            (SpanKind::Server, "POST /v1/tasks")
        );
        assert_eq!(
            (worker_span.kind, worker_span.name.as_str()),
            (SpanKind::Server, "POST /v1/process")
        );
        // The worker's parent, the traceparent it received, is the api's exported client
        // span, itself a child of the api's server span.
        let client = spans
            .iter()
            .find(|s| s.span_id == worker_span.parent_span_id)
            .unwrap_or_else(|| panic!("the worker's parent was not exported: {spans:#?}"));
        assert_eq!(
            (client.kind, client.name.as_str()),
            (SpanKind::Client, "POST")
        );
        assert_eq!(client.trace_id, trace);
        assert_eq!(client.parent_span_id, api_span.span_id, "{client:#?}");
        // Each child lies within its parent in time: the worker's server span within the
        // api's client span (which lasts until the worker's answer has been read), and that
        // within the api's server span.
        for (parent, child) in [(api_span, client), (client, worker_span)] {
            assert!(
                parent.start_unix_nano <= child.start_unix_nano
                    && child.end_unix_nano <= parent.end_unix_nano,
                "{child:#?} outside {parent:#?}"
            );
        }
        let expected = if error {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        };
        for exported in [api_span, client, worker_span] {
            assert_eq!(exported.status, expected, "{exported:#?}");
        }
        // Every line of a place carries the ids of that place's span.
        for line in lines.iter() {
            let target = line["target"].as_str().unwrap();
            if target.ends_with("::api") {
                assert_eq!(line["span_id"], api_span.span_id.as_str(), "{line}");
            } else if target.ends_with("::worker") {
                assert_eq!(line["span_id"], worker_span.span_id.as_str(), "{line}");
            }
            assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        }
        if error {
            continue;
        }
        assert_eq!(trace, TRACE_ID);
        assert_eq!(api_span.parent_span_id, PARENT);
        // The job: a consumer span under the api's request, with the ids of its lines.
        let job_line = lines
            .iter()
            .find(|l| l["message"] == "job done")
            .unwrap_or_else(|| panic!("no job line: {lines:#?}"));
        let job = span(&spans, &trace, &job_line["span_id"]);
        assert_eq!(
            (job.kind, job.name.as_str()),
            (SpanKind::Consumer, "index_text")
        );
        assert!(
            spans
                .iter()
                .any(|s| s.trace_id == trace && s.span_id == job.parent_span_id),
            "the job's parent was not exported: {job:#?}"
        );
        for line in lines.iter().filter(|l| l["span"] == "job") {
            assert_eq!(line["span_id"], job.span_id.as_str(), "{line}");
        }
    }
}

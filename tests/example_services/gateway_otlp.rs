//! `examples/inference_gateway` with OpenTelemetry export on and off, end to end: the template
//! runs as its own process and (with the `otel` feature) exports over OTLP/HTTP, the default
//! protocol, to a receiver on 127.0.0.1 that decodes the spans as a collector does. For every
//! route, error path, probe and the shutdown, the ids in its log lines, its responses and its
//! exported spans must agree.
//!
//! The template makes no calls downstream: there is no outgoing `traceparent` to compare.

use axum::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Answer, PATIENCE, Service, get, png, send, wait_for_status};

const TOKEN: &str = "a-test-admin-token-0123456789";

/// What one request should have produced.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
struct Case {
    what: &'static str,
    answer: Answer,
    /// The exported server span's name.
    name: &'static str,
    /// Whether that span failed (a 5xx).
    error: bool,
    /// The incoming `traceparent`'s trace id and parent id, when one was sent.
    incoming: Option<(&'static str, &'static str)>,
}

/// The ids of a request's log lines: every line carries the same trace and span id.
async fn ids_in_logs(service: &Service, case: &Case) -> (String, String) {
    let request_id = case.answer.request_id();
    let lines = service.lines_of(request_id, 1).await;
    let first = &lines[0];
    let (trace_id, span_id) = (&first["trace_id"], &first["span_id"]);
    assert!(
        trace_id.as_str().is_some_and(|t| t.len() == 32) && span_id.as_str().is_some(),
        "{}: {first}",
        case.what
    );
    for line in &lines {
        assert_eq!(&line["trace_id"], trace_id, "{}: {line}", case.what);
        assert_eq!(&line["span_id"], span_id, "{}: {line}", case.what);
    }
    (
        trace_id.as_str().unwrap().to_owned(),
        span_id.as_str().unwrap().to_owned(),
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
const PROBES: [&str; 4] = ["/health", "/ready", "/startup", "/metrics"];

fn start(env: &[(&str, &str)]) -> Service {
    let mut all = vec![
        ("PORT", "0"),
        ("SHUTDOWN_DRAIN_S", "1"),
        ("ADMIN_TOKEN", TOKEN),
        ("REQUEST_TIMEOUT_S", "2"),
        // Debug lines inside the request's own spans must carry its ids too.
        ("LOG_LEVEL", "debug"),
    ];
    all.extend_from_slice(env);
    Service::start("inference_gateway", &all)
}

/// What [`drive`] sent.
struct Driven {
    /// The traced requests.
    cases: Vec<Case>,
    /// Probes and the scrape, with and without a sampled caller's `traceparent`.
    quiet: Vec<(&'static str, Answer)>,
    /// A `/v1/models` request from an unsampled caller (trace [`UNSAMPLED`]).
    unsampled: Answer,
}

/// Every route of the template, its error paths, its probes, with and without an incoming
/// `traceparent`.
async fn drive(addr: std::net::SocketAddr) -> Driven {
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let image = [("content-type", "image/png")];
    let mut cases = vec![
        Case {
            what: "a prediction without traceparent",
            answer: send(addr, "POST", "/predict", &image, png(8, 8, [220, 20, 25])).await,
            name: "POST /predict",
            error: false,
            incoming: None,
        },
        Case {
            what: "a prediction continuing the caller's trace",
            answer: send(
                addr,
                "POST",
                "/predict",
                &[
                    ("content-type", "image/png"),
                    ("traceparent", &traceparent),
                    ("x-request-id", "gw-otlp-continued"),
                ],
                png(8, 8, [20, 50, 210]),
            )
            .await,
            name: "POST /predict",
            error: false,
            incoming: Some((TRACE, PARENT)),
        },
        Case {
            what: "not an image (400)",
            answer: send(addr, "POST", "/predict", &image, "not an image").await,
            name: "POST /predict",
            error: false,
            incoming: None,
        },
        Case {
            what: "the models",
            answer: get(addr, "/v1/models").await,
            name: "GET /v1/models",
            error: false,
            incoming: None,
        },
        Case {
            what: "a method the route does not serve (405)",
            answer: get(addr, "/predict").await,
            name: "GET /predict",
            error: false,
            incoming: None,
        },
        Case {
            what: "no such route (404)",
            answer: get(addr, "/no-such-route").await,
            name: "GET",
            error: false,
            incoming: None,
        },
        Case {
            what: "a debug endpoint without its token (401)",
            answer: get(addr, "/debug/status").await,
            name: "GET /debug/status",
            error: false,
            incoming: None,
        },
        Case {
            what: "a debug endpoint with its token",
            answer: send(
                addr,
                "GET",
                "/debug/status",
                &[("authorization", &format!("Bearer {TOKEN}"))],
                Bytes::new(),
            )
            .await,
            name: "GET /debug/status",
            error: false,
            incoming: None,
        },
    ];
    assert_eq!(cases[0].answer.status, 200, "{}", cases[0].answer.text());
    assert_eq!(cases[1].answer.status, 200, "{}", cases[1].answer.text());
    cases[2].answer.envelope(400, "invalid_image");
    assert_eq!(cases[3].answer.status, 200);
    cases[4].answer.envelope(405, "method_not_allowed");
    cases[5].answer.envelope(404, "route_not_found");
    cases[6].answer.envelope(401, "token_missing");
    assert_eq!(cases[7].answer.status, 200, "{}", cases[7].answer.text());

    // A body that never comes: the request timeout fires while the handler waits for it, the
    // client's 408, and the span is not failed (a 4xx).
    cases.push(Case {
        what: "an upload cut by the request timeout (408)",
        answer: stalled_upload(addr).await,
        name: "POST /predict",
        error: false,
        incoming: None,
    });
    cases.last().unwrap().answer.envelope(408, "timeout");

    let mut quiet = Vec::new();
    for path in PROBES {
        quiet.push((path, get(addr, path).await));
        let headers = [("traceparent", traceparent.as_str())];
        quiet.push((path, send(addr, "GET", path, &headers, Bytes::new()).await));
    }
    let unsampled = send(
        addr,
        "GET",
        "/v1/models",
        &[(
            "traceparent",
            &format!("00-{UNSAMPLED}-b7ad6b7169203331-00"),
        )],
        Bytes::new(),
    )
    .await;
    assert_eq!(unsampled.status, 200);
    Driven {
        cases,
        quiet,
        unsampled,
    }
}

/// What holds with export on or off: one request id in the response, its envelope and its
/// log lines; one trace and span id on all its lines (the caller's trace continued under a
/// span of its own), named by its envelope; probes traced in the log alike.
async fn check_logs(service: &Service, driven: &Driven) {
    for case in &driven.cases {
        let what = case.what;
        let (trace_id, span_id) = ids_in_logs(service, case).await;
        if let Some((trace, parent)) = case.incoming {
            assert_eq!(trace_id, trace, "{what}");
            assert_ne!(span_id, parent, "{what}");
        }
        if case.answer.status >= 400 {
            let error = &case.answer.json()["error"];
            assert_eq!(error["request_id"], case.answer.request_id(), "{what}");
            assert_eq!(error["trace_id"], trace_id, "{what}");
        }
    }
    for (path, answer) in &driven.quiet {
        let lines = service.lines_of(answer.request_id(), 1).await;
        for line in &lines {
            assert!(line["trace_id"].is_string(), "{path}: {line}");
            assert!(line["span_id"].is_string(), "{path}: {line}");
        }
    }
    let lines = service.lines_of(driven.unsampled.request_id(), 1).await;
    assert!(lines.iter().all(|line| line["trace_id"] == UNSAMPLED));
}

/// With export on, each request's exported server span has the ids of its log lines, its
/// caller's span as parent, the name, kind and status of docs/trace.md; its own spans hang
/// under it; probes, the scrape and unsampled callers export nothing. The batch delay is a
/// minute, so nothing goes out before SIGTERM: the shutdown must flush every span, those of
/// a request served after the signal included.
#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_carry_the_ids_of_the_log_lines_and_responses() {
    use crate::otlp::{Exported, SpanKind, SpanStatus, start_receiver};
    use serde_json::{Value, json};

    let (endpoint, spans) = start_receiver().await;
    let mut service = start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    let mut driven = drive(addr).await;
    check_logs(&service, &driven).await;
    assert!(spans.lock().unwrap().is_empty(), "exported before shutdown");

    // The last request comes after SIGTERM, while `/ready` drains.
    service.terminate();
    let last = Case {
        what: "a request after SIGTERM",
        answer: get(addr, "/v1/models").await,
        name: "GET /v1/models",
        error: false,
        incoming: None,
    };
    assert_eq!(last.answer.status, 200);
    driven.cases.push(last);
    let status = service.exit_status().await;
    assert!(status.success(), "{status}\n{}", service.stderr());

    let spans = spans.lock().unwrap().clone();
    for case in &driven.cases {
        let what = case.what;
        let (trace_id, span_id) = ids_in_logs(&service, case).await;
        let of_trace: Vec<&Exported> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let servers: Vec<&&Exported> = of_trace
            .iter()
            .filter(|s| s.kind == SpanKind::Server)
            .collect();
        let [server] = servers[..] else {
            panic!("{what}: not one server span: {of_trace:#?}");
        };
        assert_eq!(server.span_id, span_id, "{what}: {server:#?}");
        assert_eq!(server.service, "inference-gateway", "{what}");
        assert_eq!(server.name, case.name, "{what}: {server:#?}");
        assert_eq!(
            server.attributes["request_id"],
            case.answer.request_id(),
            "{what}"
        );
        // An integer, as the semantic conventions type it (a string defeats a backend's
        // `http.response.status_code >= 500`).
        let status = i64::from(case.answer.status);
        assert_eq!(
            server.attributes["http.response.status_code"], status,
            "{what}: {server:#?}"
        );
        if case.error {
            assert_eq!(server.status, SpanStatus::Error, "{what}: {server:#?}");
            assert_eq!(
                server.attributes["error.type"],
                status.to_string(),
                "{what}"
            );
        } else {
            assert_eq!(server.status, SpanStatus::Unset, "{what}: {server:#?}");
        }
        match case.incoming {
            Some((_, parent)) => assert_eq!(server.parent_span_id, parent, "{what}"),
            None => assert_eq!(server.parent_span_id, "", "{what}"),
        }
        // The request's own spans hang under its server span.
        for span in of_trace.iter().filter(|s| s.kind != SpanKind::Server) {
            assert_eq!(span.kind, SpanKind::Internal, "{what}: {span:#?}");
            assert_eq!(span.parent_span_id, span_id, "{what}: {span:#?}");
        }
    }
    // A prediction's stages are its server span's children.
    let (trace_id, _) = ids_in_logs(&service, &driven.cases[0]).await;
    let mut stages: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.kind == SpanKind::Internal)
        .map(|s| s.name.as_str())
        .collect();
    stages.sort_unstable();
    assert_eq!(stages, ["inference", "postprocess", "preprocess"]);
    let preprocess = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "preprocess")
        .unwrap();
    let image: Vec<&Value> = ["bytes", "width", "height", "format"]
        .iter()
        .map(|key| &preprocess.attributes[*key])
        .collect();
    let bytes = png(8, 8, [220, 20, 25]).len();
    assert_eq!(image, [&json!(bytes), &json!(8), &json!(8), &json!("png")]);

    // Probes, the scrape and the unsampled request: no span.
    let quiet = driven.quiet.iter().map(|(path, answer)| (*path, answer));
    for (path, answer) in quiet.chain([("/v1/models", &driven.unsampled)]) {
        for line in service.lines_of(answer.request_id(), 1).await {
            assert!(
                !spans.iter().any(|s| line["span_id"] == s.span_id.as_str()),
                "{path}: exported: {line}"
            );
        }
    }
    assert!(
        !spans.iter().any(|s| s.trace_id == UNSAMPLED
            || s.attributes
                .get("url.path")
                .and_then(Value::as_str)
                .is_some_and(|p| PROBES.contains(&p))),
        "{spans:#?}"
    );
    // The model's load at startup is no request's: a trace of its own.
    let loads: Vec<&Exported> = spans.iter().filter(|s| s.name == "model_load").collect();
    let [load] = loads[..] else {
        panic!("not one model_load span: {spans:#?}");
    };
    assert_eq!(load.parent_span_id, "", "{load:#?}");
    assert!(
        spans.iter().filter(|s| s.trace_id == load.trace_id).count() == 1,
        "{spans:#?}"
    );
    // Its lines carry the ids of the span exported for it, though no request made them.
    let lines = service.log_lines();
    for message in ["loading the model", "model loaded"] {
        let line = lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?}"));
        assert_eq!(line["trace_id"], load.trace_id.as_str(), "{line}");
        assert_eq!(line["span_id"], load.span_id.as_str(), "{line}");
        assert!(line.get("request_id").is_none(), "{line}");
    }
}

/// With export off (the default), the same ids agree in the log lines, the responses and
/// the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_the_log_lines_carry_the_same_ids() {
    let service = start(&[]);
    let addr = service.addr("http").await;
    wait_for_status(addr, "/ready", 200).await;
    let driven = drive(addr).await;
    check_logs(&service, &driven).await;
}

/// Sends a `/predict` head announcing a body, and a few bytes of it: the request timeout
/// (2 s here) answers before the upload's idle limit (5 s) does.
async fn stalled_upload(addr: std::net::SocketAddr) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: image/png\r\n\
                content-length: 1000\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[0; 10]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let mut headers = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    Answer {
        status,
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

//! `examples/trace_context_harness`, the W3C Trace Context test service.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;

use crate::support::{Service, send};

/// What a callee of the harness received: its headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, bytes::Bytes)>>>;

/// A callee on 127.0.0.1 that records what the harness sends it.
async fn callee() -> (std::net::SocketAddr, Received) {
    let received = Received::default();
    let kept = received.clone();
    let app = Router::new().route(
        "/called",
        post(move |headers: HeaderMap, body: bytes::Bytes| async move {
            kept.lock().unwrap().push((headers, body));
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// Its lines are JSON like every example's, it still runs the suite's calls in order with
/// the trace propagated, and SIGTERM stops it cleanly (status 0, as a test runner expects).
#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn the_harness_logs_json_propagates_the_trace_and_stops_cleanly_on_sigterm() {
    let mut service = Service::start("trace_context_harness", &[("PORT", "0")]);
    let addr = service.addr("http").await;
    let (callee, received) = callee().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let calls = serde_json::json!([
        {"url": format!("http://{callee}/called"), "arguments": [1, {"a": 2}]},
        {"url": format!("http://{callee}/called"), "arguments": []},
    ]);
    let answer = send(
        addr,
        "POST",
        "/test",
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", "foo=bar"),
        ],
        calls.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].1, r#"[1,{"a":2}]"#);
    assert_eq!(received[1].1, "[]");
    for (headers, _) in &received {
        assert_eq!(headers["content-type"], "application/json");
        let sent = headers["traceparent"].to_str().unwrap();
        let fields: Vec<&str> = sent.split('-').collect();
        assert_eq!(fields.len(), 4, "{sent}");
        assert_eq!((fields[0], fields[1], fields[3]), ("00", trace_id, "01"));
        assert_ne!(fields[2], "00f067aa0ba902b7", "a span of its own");
        assert_eq!(headers["tracestate"], "foo=bar");
    }

    // Not a list of calls: refused.
    let refused = send(
        addr,
        "POST",
        "/test",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(refused.status, 400);

    service.terminate();
    let status = service.exit_status().await;
    assert!(status.success(), "{status}");
    let lines = service.log_lines();
    let stopping = lines
        .iter()
        .find(|line| line["message"] == "shutting down: /ready answers draining")
        .expect("the shutdown line");
    assert_eq!(stopping["data"]["cause"], "SIGTERM");
    let last = lines.last().unwrap();
    assert_eq!(last["message"], "stopped");
    assert_eq!(last["service"], "trace-context-harness");
}

/// A taken port stops the harness at once, saying which variable to change.
#[tokio::test]
async fn a_listener_that_cannot_bind_fails_naming_the_variable_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut service = Service::start("trace_context_harness", &[("PORT", port.as_str())]);
    let status = service.exit_status().await;
    assert_eq!(status.code(), Some(1));
    let stderr = service.stderr();
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("set PORT to a free port"),
        "{stderr}"
    );
    drop(taken);
}

/// What the suite sends is checked whole before any call: an element that is no instruction
/// refuses the list (400) with no call made. A call that fails, or that its callee never
/// answers, is logged at `warn`, and the next is made; the harness answers all the same. Both
/// layers speak W3C Trace Context whatever `OTEL_PROPAGATORS` says: the suite tests it.
#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn the_harness_checks_its_instructions_first_and_tells_of_calls_that_fail() {
    let mut service = Service::start(
        "trace_context_harness",
        &[("PORT", "0"), ("OTEL_PROPAGATORS", "baggage")],
    );
    let addr = service.addr("http").await;
    let (callee, received) = callee().await;
    let called = format!("http://{callee}/called");
    let json = [("content-type", "application/json")];
    for bad in [
        serde_json::json!([{"url": called, "arguments": [1]}, {"arguments": []}]),
        serde_json::json!([{"url": called}, {"url": "https://127.0.0.1/x"}]),
        serde_json::json!([{"url": called}, {"url": "/relative"}]),
        serde_json::json!([{"url": called}, {"url": "http://bad host/"}]),
    ] {
        let answer = send(addr, "POST", "/test", &json, bad.to_string()).await;
        assert_eq!(answer.status, 400, "{bad}");
    }
    assert!(
        received.lock().unwrap().is_empty(),
        "a call made before the refusal"
    );

    // A callee that accepts and never answers, one that refuses, then one that answers.
    let silent_addr = silent_callee().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}/x", closed.local_addr().unwrap());
    drop(closed);
    let calls = serde_json::json!([
        {"url": format!("http://{silent_addr}/never"), "arguments": []},
        {"url": refused, "arguments": []},
        {"url": called, "arguments": [7]},
    ]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = send(
        addr,
        "POST",
        "/test",
        &[json[0], ("traceparent", traceparent)],
        calls.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1, "[7]");
    let sent = received[0].0["traceparent"].to_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    let timed_out = service
        .wait_for_line("the silent callee's warning", |line| {
            line["message"] == "call timed out"
        })
        .await;
    assert_eq!(timed_out["level"], "warn");
    assert!(
        timed_out.to_string().contains(&silent_addr.to_string()),
        "{timed_out}"
    );
    let failed = service
        .wait_for_line("the refused call's warning", |line| {
            line["message"] == "call failed"
        })
        .await;
    assert_eq!(failed["level"], "warn");
    assert!(failed.to_string().contains(&refused), "{failed}");

    service.terminate();
    assert!(service.exit_status().await.success());
}

/// `REQUEST_TIMEOUT_S` does not apply to the harness, nor lengthen its shutdown: a suite
/// request still making its calls (three to a callee that never answers, 10 s each) when
/// SIGTERM comes is cut at the server's 10 s shutdown timeout, not waited for to its end.
#[cfg(unix)] // stopped with a real SIGTERM
#[tokio::test]
async fn a_request_timeout_in_the_environment_does_not_lengthen_the_shutdown() {
    let mut service = Service::start(
        "trace_context_harness",
        &[("PORT", "0"), ("REQUEST_TIMEOUT_S", "120")],
    );
    let addr = service.addr("http").await;
    let silent_addr = silent_callee().await;
    let never = serde_json::json!({"url": format!("http://{silent_addr}/never"), "arguments": []});
    let calls = serde_json::json!([never, never, never]).to_string();
    let json = [("content-type", "application/json")];
    let in_flight = tokio::spawn(async move { send(addr, "POST", "/test", &json, calls).await });
    // The request is in, making its first call.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    service.terminate();
    assert!(service.exit_status().await.success());
    let took = stopping.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "stopped after {took:?}"
    );
    in_flight.abort();
}

/// A callee that accepts connections and never answers.
async fn silent_callee() -> std::net::SocketAddr {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    addr
}

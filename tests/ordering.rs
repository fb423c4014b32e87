//! Each crate's layers composed by hand in an order other than the documented one
//! (docs/ordering.md) over a real socket: what a user sees, and the one warning per
//! misordering that names it. Each misordering is made by one test only: the warnings are
//! written once per process (so the documented order, warned of by none, is tested in a binary
//! of its own, `ordering_documented`).

#![cfg(feature = "axum")]

use std::time::Duration;

use periscope::error::ErrorLayer;
use periscope::log::AccessLogLayer;
use periscope::metrics::{Format, MetricsRegistry};
use periscope::trace::{CorrelationLayer, Trust};
use serde_json::Value;

mod capture;
mod ordering_support;
use ordering_support::{get_raw, get_with, metrics, routes, serve};

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn count(registry: &MetricsRegistry, route: &str, status: &str) -> f64 {
    let text = registry.encode(Format::Prometheus).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("http_server_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn assert_one_warning(warnings: &[Value], outer: &str, inner: &str) {
    let of_pair: Vec<&Value> = warnings
        .iter()
        .filter(|w| w["data"]["outer"] == outer && w["data"]["inner"] == inner)
        .collect();
    assert_eq!(of_pair.len(), 1, "{warnings:#?}");
    let warning = of_pair[0];
    assert_eq!(warning["level"], "warn", "{warning}");
    let message = warning["message"].as_str().unwrap();
    assert!(message.contains("docs/ordering.md"), "{message}");
    assert!(
        message.contains(outer) && message.contains(inner),
        "{message}"
    );
}

/// The error layer outside the access log: a panic or a timeout is answered with an envelope
/// the access log never sees. The panic's line says the service failed, without the status;
/// the timeout's says `aborted`. Either alone is warned of: the panic first, on a server of
/// its own, then the timeout (the warning, once per process, is not repeated).
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_access_log_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(AccessLogLayer::new())
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new());
    let (addr, out, guards) = serve(app.clone()).await;
    let (head, _) = get_raw(addr, "/boom", Some("boom-1")).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    drop(guards);
    let boom = out.access_lines("/boom");
    assert_eq!(boom[0]["level"], "error", "{boom:#?}");
    assert!(boom[0]["data"].get("status").is_none(), "{boom:#?}");
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "AccessLogLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());

    let (addr, out, guards) = serve(app).await;
    let (head, body) = get_raw(addr, "/slow", Some("slow-1")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let envelope: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envelope["error"]["code"], "timeout", "{body}");
    get_raw(addr, "/slow", Some("slow-2")).await;
    drop(guards);

    let slow = out.access_lines("/slow");
    assert_eq!(slow[0]["data"]["aborted"], true, "{slow:#?}");
    assert!(slow[0]["data"].get("status").is_none(), "{slow:#?}");
    assert!(
        out.order_warnings().is_empty(),
        "{:#?}",
        out.order_warnings()
    );
}

/// The error layer outside the metrics: a timeout the client got as a 504 envelope counts as
/// `cancelled`.
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_metrics_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(metrics(&registry))
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, _) = get_raw(addr, "/slow", Some("slow-1")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    get_raw(addr, "/slow", Some("slow-2")).await;
    drop(guards);

    assert_eq!(count(&registry, "/slow", "cancelled"), 2.0);
    assert_eq!(count(&registry, "/slow", "5xx"), 0.0);
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "MetricsLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

/// The error layer outside the correlation layer: both make a request id for a request that
/// came without one. The correlation layer takes the error layer's, so the envelope, the
/// response header and the log lines agree.
#[tokio::test(flavor = "current_thread")]
async fn error_layer_outside_the_correlation_layer_shares_its_ids_and_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(AccessLogLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new())
        .layer(ErrorLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, body) = get_raw(addr, "/missing", None).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    get_raw(addr, "/ok", None).await;
    drop(guards);

    let envelope: Value = serde_json::from_str(&body).unwrap();
    let envelope_id = envelope["error"]["request_id"].as_str().unwrap();
    let line = &out.access_lines("/missing")[0];
    assert_eq!(header(&head, "x-request-id"), Some(envelope_id), "{head}");
    assert_eq!(line["request_id"], envelope_id, "{line}");
    assert_eq!(line["trace_id"], envelope["error"]["trace_id"], "{line}");
    assert_one_warning(&out.order_warnings(), "ErrorLayer", "CorrelationLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());

    // At a trust boundary the error layer outside has continued the caller's trace: its trace
    // id is not taken, or the caller's trace would go on past the boundary.
    let boundary = routes()
        .layer(AccessLogLayer::new())
        .layer(CorrelationLayer::new().trust(Trust::Boundary))
        .layer(ErrorLayer::new());
    let (addr, out, guards) = serve(boundary).await;
    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller}-00f067aa0ba902b7-01");
    let (head, _) = get_with(addr, "/ok", &[("traceparent", &traceparent)]).await;
    drop(guards);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = &out.access_lines("/ok")[0];
    let trace_id = line["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32, "{line}");
    assert_ne!(trace_id, caller, "{line}");
}

/// The access log outside the correlation layer: its line is written outside the request
/// span, without the request's ids.
#[tokio::test(flavor = "current_thread")]
async fn access_log_outside_the_correlation_layer_is_warned_once() {
    let registry = MetricsRegistry::new();
    let app = routes()
        .layer(ErrorLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new())
        .layer(AccessLogLayer::new());
    let (addr, out, guards) = serve(app).await;
    let (head, _) = get_raw(addr, "/ok", Some("ok-1")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    get_raw(addr, "/ok", Some("ok-2")).await;
    drop(guards);

    // What the user sees: a line without the request's ids.
    let line = &out.access_lines("/ok")[0];
    assert!(line.get("request_id").is_none(), "{line}");
    assert!(line.get("trace_id").is_none(), "{line}");
    assert_one_warning(&out.order_warnings(), "AccessLogLayer", "CorrelationLayer");
    assert_eq!(out.order_warnings().len(), 1, "{:#?}", out.order_warnings());
}

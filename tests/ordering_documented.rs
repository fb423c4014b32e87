//! The documented order of the layers (docs/ordering.md) warns of nothing. In a binary of its
//! own: the warnings are written once per process, and `tests/ordering.rs` makes each
//! misordering on purpose, so there a wrong warning here would go unseen.

#![cfg(feature = "axum")]

use std::time::Duration;

use axum::Router;
use periscope::error::ErrorLayer;
use periscope::log::AccessLogLayer;
use periscope::metrics::MetricsRegistry;
use periscope::trace::CorrelationLayer;
use serde_json::Value;

mod capture;
mod ordering_support;
use ordering_support::{get_raw, metrics, routes, serve};

/// The documented order, by hand and as `obs.layer()`, applied once and twice: no warning,
/// whatever the outcome.
#[tokio::test(flavor = "current_thread")]
async fn the_documented_order_is_not_warned() {
    let registry = MetricsRegistry::new();
    let by_hand = routes()
        .layer(ErrorLayer::new().timeout(Duration::from_millis(200)))
        .layer(AccessLogLayer::new())
        .layer(metrics(&registry))
        .layer(CorrelationLayer::new());
    let obs = periscope::Observability::builder()
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let twice = Router::new()
        .nest("/api", routes().layer(obs.layer()))
        .layer(obs.layer());
    let (a, out, guards) = serve(by_hand).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, twice).await.unwrap() });
    for (addr, prefix) in [(a, ""), (b, "/api")] {
        for path in ["/ok", "/boom", "/slow", "/missing", "/health"] {
            for id in [None, Some("given")] {
                get_raw(addr, &format!("{prefix}{path}"), id).await;
            }
        }
    }
    drop(guards);
    assert!(out.access_lines("/ok").len() == 2, "{:#?}", out.lines());
    assert_eq!(out.order_warnings(), Vec::<Value>::new());
}

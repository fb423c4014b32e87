//! Correlation and propagation over real sockets on 127.0.0.1: a chain of services a → b → c,
//! error and panic responses, probes, trust boundaries, invalid ids and jobs.

mod support;

use std::sync::{Arc, Mutex};

use http::StatusCode;
use periscope_context::{Carrier, TraceParent};
use periscope_context::{RequestContext, TenantKey};
use periscope_trace::job::JobSpan;
use periscope_trace::{ClientTraceLayer, CorrelationLayer, Propagators, Trust};
use support::services::{Seen, app, by_hop, chain, get, hop_state};
use support::{Capture, plain_client, send, serve};
use tower::Layer;
use tracing_subscriber::layer::SubscriberExt;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = support::set_default(subscriber);
    (capture, guard)
}

#[tokio::test]
async fn chain_keeps_trace_and_request_id_with_a_new_parent_per_hop() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = chain(&seen).await;

    let response = get(
        a,
        "/hop",
        &[
            ("x-request-id", "chain-1"),
            ("traceparent", INCOMING),
            ("tracestate", "vendor=opaque"),
            ("baggage", "user_tier=gold"),
            ("x-org-id", "org_7"),
            ("x-project-id", "prj_9"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "chain-1");

    let hops = by_hop(&seen);
    assert_eq!(
        hops.iter().map(|s| s.hop).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let mut parents = Vec::new();
    for seen in &hops {
        let ctx = &seen.ctx;
        assert_eq!(ctx.request_id.as_str(), "chain-1", "{}", seen.hop);
        assert_eq!(ctx.trace_id.to_string(), INCOMING_TRACE, "{}", seen.hop);
        assert_eq!(ctx.tenant.org_id(), Some("org_7"), "{}", seen.hop);
        assert_eq!(ctx.tenant.project_id(), Some("prj_9"), "{}", seen.hop);
        assert_eq!(ctx.trace_state.as_str(), "vendor=opaque", "{}", seen.hop);
        assert_eq!(ctx.baggage.get("user_tier"), Some("gold"), "{}", seen.hop);
        assert!(ctx.is_sampled());
        parents.push(ctx.parent_span_id.unwrap());
    }
    // Each hop's parent is the previous hop's client span: distinct, and never the caller's
    // span itself.
    assert_eq!(parents[0].to_string(), INCOMING_PARENT);
    assert!(parents[0] != parents[1] && parents[1] != parents[2] && parents[0] != parents[2]);
    for pair in hops.windows(2) {
        assert_ne!(pair[1].ctx.parent_span_id, Some(pair[0].ctx.span_id));
        let sent = TraceParent::parse(pair[1].headers["traceparent"].to_str().unwrap()).unwrap();
        assert_eq!(Some(sent.parent_id), pair[1].ctx.parent_span_id);
    }

    // The ids in the log lines are the ids of each hop's span and context.
    let lines = capture.lines_for("chain-1");
    for seen in &hops {
        let line = lines
            .iter()
            .find(|l| l.message == "handling the hop" && l.fields["hop"] == seen.hop)
            .unwrap();
        assert_eq!(line.ctx("trace_id"), Some(INCOMING_TRACE));
        assert_eq!(
            line.ctx("span_id"),
            Some(seen.ctx.span_id.to_string().as_str())
        );
        assert_eq!(line.ctx("org_id"), Some("org_7"));
        assert_eq!(line.ctx("project_id"), Some("prj_9"));
    }

    // The client spans carry the parent ids the next hops received, under the caller's span.
    let client_spans = capture.spans_for("http_client_request", "chain-1");
    assert_eq!(client_spans.len(), 2);
    for (caller, callee) in [(&hops[0], &hops[1]), (&hops[1], &hops[2])] {
        let parent = callee.ctx.parent_span_id.unwrap().to_string();
        let client = client_spans
            .iter()
            .find(|s| s.get("span_id") == Some(parent.as_str()))
            .unwrap_or_else(|| panic!("no client span with id {parent}"));
        assert_eq!(client.get("trace_id"), Some(INCOMING_TRACE));
        assert_eq!(client.get("http.response.status_code"), Some("200"));
        assert_eq!(client.get("otel.kind"), Some("client"));
        assert_ne!(
            client.get("span_id"),
            Some(caller.ctx.span_id.to_string().as_str())
        );
    }

    // One server span per hop, with the semantic-convention fields.
    let server_spans = capture.spans_for("http_request", "chain-1");
    assert_eq!(server_spans.len(), 3);
    for span in &server_spans {
        assert_eq!(span.get("http.request.method"), Some("GET"));
        assert_eq!(span.get("url.path"), Some("/hop"));
        assert_eq!(span.get("http.response.status_code"), Some("200"));
        assert_eq!(span.get("otel.kind"), Some("server"));
        assert_eq!(span.get("otel.status_code"), None);
        if cfg!(feature = "axum") {
            assert_eq!(span.get("otel.name"), Some("GET /hop"));
            assert_eq!(span.get("http.route"), Some("/hop"));
        }
    }
}

#[tokio::test]
async fn request_id_is_echoed_on_a_500_and_on_a_panic() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;

    let failed = get(addr, "/fail", &[("x-request-id", "fail-1")]).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.headers()["x-request-id"], "fail-1");

    let panicked = get(addr, "/panic", &[("x-request-id", "panic-1")]).await;
    assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(panicked.headers()["x-request-id"], "panic-1");

    // A generated id is echoed too, and is the one in the logs.
    let generated = get(addr, "/fail", &[]).await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"), "{id}");
    let line = capture.line(&id, "the handler failed", None);
    assert!(line.ctx("trace_id").is_some() && line.ctx("span_id").is_some());

    for id in ["fail-1", "panic-1"] {
        let span = &capture.spans_for("http_request", id)[0];
        assert_eq!(span.get("http.response.status_code"), Some("500"));
        assert_eq!(span.get("otel.status_code"), Some("ERROR"));
        assert_eq!(span.get("error.type"), Some("500"));
    }
}

#[tokio::test]
async fn sampled_out_requests_still_propagate_and_log_their_ids() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = chain(&seen).await;
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    let response = get(
        a,
        "/hop",
        &[("x-request-id", "unsampled-1"), ("traceparent", unsampled)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let hops = by_hop(&seen);
    assert_eq!(hops.len(), 3);
    for seen in &hops {
        assert_eq!(seen.ctx.trace_id.to_string(), INCOMING_TRACE);
        assert!(!seen.ctx.is_sampled(), "{}", seen.hop);
        if seen.hop != "a" {
            let sent = seen.headers["traceparent"].to_str().unwrap();
            assert!(sent.ends_with("-00"), "{sent}");
            assert!(sent.contains(INCOMING_TRACE), "{sent}");
        }
        let line = capture.line("unsampled-1", "handling the hop", Some(seen.hop));
        assert_eq!(line.ctx("trace_id"), Some(INCOMING_TRACE));
        assert_eq!(
            line.ctx("span_id"),
            Some(seen.ctx.span_id.to_string().as_str())
        );
    }
}

#[tokio::test]
async fn invalid_request_id_is_replaced_and_logged_once_at_warn() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;

    let response = get(
        addr,
        "/hop",
        &[
            ("x-request-id", "not valid!"),
            ("x-org-id", "org with spaces"),
        ],
    )
    .await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(seen.lock().unwrap()[0].ctx.request_id.as_str(), id);
    assert_eq!(seen.lock().unwrap()[0].ctx.tenant.org_id(), None);

    let warnings: Vec<_> = capture
        .lines_for(&id)
        .into_iter()
        .filter(|l| l.level == tracing::Level::WARN)
        .collect();
    let replaced: Vec<_> = warnings
        .iter()
        .filter(|l| l.message.contains("request id"))
        .collect();
    assert_eq!(replaced.len(), 1, "{warnings:#?}");
    assert!(
        replaced[0].fields["reason"].contains("0x20"),
        "{replaced:?}"
    );
    // The warning carries the request's ids, like every other line of the request.
    assert!(replaced[0].ctx("trace_id").is_some() && replaced[0].ctx("span_id").is_some());
    let tenant: Vec<_> = warnings
        .iter()
        .filter(|l| l.message.contains("tenant"))
        .collect();
    assert_eq!(tenant.len(), 1);
    assert_eq!(tenant[0].fields["header"], "x-org-id");
}

/// A caller whose `x-request-id` is invalid but whose `x-correlation-id` is valid keeps its
/// correlation: the correlation id is the request's id, and the invalid header is named once
/// at warn.
#[tokio::test]
async fn a_valid_correlation_id_stands_in_for_an_invalid_request_id() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;

    let response = get(
        addr,
        "/hop",
        &[
            ("x-request-id", "{8a2f-bad id}"),
            ("x-correlation-id", "corr-77"),
        ],
    )
    .await;
    assert_eq!(response.headers()["x-request-id"], "corr-77");
    assert_eq!(seen.lock().unwrap()[0].ctx.request_id.as_str(), "corr-77");
    let warnings: Vec<_> = capture
        .lines_for("corr-77")
        .into_iter()
        .filter(|l| l.level == tracing::Level::WARN)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].message.contains("x-request-id")
            && warnings[0].fields["reason"].contains("0x7b"),
        "{warnings:?}"
    );
}

/// The code inside the layer (tower-http's request-id layers a team is migrating from, a
/// proxy forwarding the headers, a handler reading them) sees in `x-request-id` the id every
/// periscope signal carries: generated, replaced or taken from `x-correlation-id` alike.
#[tokio::test]
async fn the_request_header_carries_the_id_the_client_gets_back() {
    let router = axum::Router::new()
        .route(
            "/echo",
            axum::routing::get(|headers: http::HeaderMap| async move {
                let sent: Vec<_> = headers
                    .get_all("x-request-id")
                    .iter()
                    .map(|value| value.to_str().unwrap().to_owned())
                    .collect();
                sent.join("|")
            }),
        )
        .layer(CorrelationLayer::new());
    let addr = serve(router).await;
    // The id expected back: the one given, else a generated one (`None`).
    for (headers, expected) in [
        (&[][..], None),
        (&[("x-request-id", "has space")][..], None),
        (&[("x-correlation-id", "corr-5")][..], Some("corr-5")),
        (
            &[("x-request-id", "{bad}"), ("x-correlation-id", "corr-6")][..],
            Some("corr-6"),
        ),
        (&[("x-request-id", "kept-1")][..], Some("kept-1")),
        // Several: the first is kept, and the others do not stay beside it.
        (
            &[("x-request-id", "kept-2"), ("x-request-id", "bad id")][..],
            Some("kept-2"),
        ),
    ] {
        let response = get(addr, "/echo", headers).await;
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        match expected {
            Some(id) => assert_eq!(echoed, id, "{headers:?}"),
            None => assert!(echoed.starts_with("req_"), "{headers:?}: {echoed}"),
        }
        assert_eq!(response.body(), echoed.as_bytes(), "{headers:?}");
    }
}

/// A probe path has no request span to lift the ids from: the warnings about its rejected
/// headers carry them themselves, so they are found by the id the client got back.
#[tokio::test]
async fn rejected_headers_on_probe_paths_are_logged_with_the_requests_ids() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;

    let response = get(
        addr,
        "/health",
        &[
            ("x-request-id", "not valid!"),
            ("x-org-id", "org with spaces"),
            ("traceparent", INCOMING),
        ],
    )
    .await;
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_"), "{id}");
    let warnings: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|l| {
            l.target == periscope_trace::server::SERVER_TARGET && l.level == tracing::Level::WARN
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    for line in &warnings {
        let field = |key: &str| line.fields.get(key).map(String::as_str);
        assert_eq!(field("request_id"), Some(id), "{line:#?}");
        assert_eq!(field("trace_id"), Some(INCOMING_TRACE), "{line:#?}");
    }
}

#[tokio::test]
async fn probe_paths_are_not_traced_but_keep_their_request_id() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;

    let response = get(addr, "/health", &[("x-request-id", "probe-1")]).await;
    assert_eq!(response.headers()["x-request-id"], "probe-1");
    assert!(capture.spans_for("http_request", "probe-1").is_empty());

    let traced = serve(app(
        hop_state("a", None, &seen),
        CorrelationLayer::new().quiet(periscope_trace::PathSelector::none()),
    ))
    .await;
    get(traced, "/health", &[("x-request-id", "probe-2")]).await;
    assert_eq!(capture.spans_for("http_request", "probe-2").len(), 1);
}

/// The layer applied twice, on a nested router and on the outer one, with a quiet prefix: the
/// nested router sees the path stripped of its prefix (`/hop`), not quiet to it, and must
/// still pass the request through under the outer layer's context: no span, not sampled.
#[tokio::test]
async fn a_quiet_path_under_a_nested_router_gets_no_span_from_the_inner_layer() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let quiet = || {
        CorrelationLayer::new()
            .quiet(periscope_trace::PathSelector::default().with_prefix("/internal/"))
    };
    let nested = axum::Router::new()
        .nest("/internal", app(hop_state("inner", None, &seen), quiet()))
        .layer(quiet());
    let addr = serve(nested).await;

    let response = get(addr, "/internal/hop", &[("x-request-id", "nested-quiet")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "nested-quiet");
    assert!(capture.spans_for("http_request", "nested-quiet").is_empty());
    let ctx = seen.lock().unwrap()[0].ctx.clone();
    assert_eq!(ctx.request_id.as_str(), "nested-quiet");
    assert!(!ctx.is_sampled(), "{ctx:?}");
}

/// The layer applied twice, under a subscriber that turns the server span down (a `WARN`
/// filter): the span the outer layer got is disabled, not `Span::none()` (tracing's `log`
/// feature), and the inner layer must still pass the request through under the outer
/// context, not start a second trace.
#[tokio::test]
async fn a_nested_router_under_a_disabled_server_span_keeps_the_outer_context() {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::sink)
        .finish();
    let _guard = support::set_default(subscriber);
    assert_a_nested_router_keeps_the_outer_context(|router| router).await;
}

/// The layer applied twice with a layer that enters a span of its own between the two
/// (tower-http's `TraceLayer`): the current span is not the outer server span, yet the
/// outer layer's context is current, and the inner layer passes the request through under
/// it rather than start a second trace.
#[tokio::test]
async fn a_nested_router_behind_a_span_entering_layer_keeps_the_outer_trace() {
    let (_capture, _guard) = capture();
    assert_a_nested_router_keeps_the_outer_context(|router| {
        router.layer(tower_http::trace::TraceLayer::new_for_http())
    })
    .await;
}

/// Serves a router with the layer, nested under `/api` in a router with `between` and the
/// layer again, and asserts that the inner layer ran under the outer one's context.
async fn assert_a_nested_router_keeps_the_outer_context(
    between: impl FnOnce(axum::Router) -> axum::Router,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let outer_ctx: Arc<Mutex<Vec<RequestContext>>> = Arc::default();
    let record = {
        let outer_ctx = Arc::clone(&outer_ctx);
        axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let outer_ctx = Arc::clone(&outer_ctx);
                async move {
                    let ctx = request.extensions().get::<RequestContext>().cloned();
                    outer_ctx.lock().unwrap().extend(ctx);
                    next.run(request).await
                }
            },
        )
    };
    let nested = axum::Router::new().nest(
        "/api",
        app(hop_state("inner", None, &seen), CorrelationLayer::new()),
    );
    let addr = serve(between(nested).layer(record).layer(CorrelationLayer::new())).await;

    let response = get(addr, "/api/hop", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let outer = outer_ctx.lock().unwrap()[0].clone();
    let inner = seen.lock().unwrap()[0].ctx.clone();
    assert_eq!(
        inner.trace_id, outer.trace_id,
        "a second trace: {inner:?} {outer:?}"
    );
    assert_eq!(inner.span_id, outer.span_id);
    assert_eq!(inner.request_id, outer.request_id);
    assert_eq!(
        response.headers()["x-request-id"],
        outer.request_id.as_str()
    );
}

/// A readiness check that calls a dependency: the probe has no span, so the call goes out
/// unsampled (nobody would export its parent), still with the trace and request id.
#[tokio::test]
async fn calls_from_probe_paths_keep_their_ids_but_are_not_sampled() {
    let (_capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dependency = serve(app(hop_state("dep", None, &seen), CorrelationLayer::new())).await;
    let probe = serve(app(
        hop_state("probe", Some(format!("http://{dependency}")), &seen),
        CorrelationLayer::new().quiet(periscope_trace::PathSelector::paths(["/hop"])),
    ))
    .await;

    get(
        probe,
        "/hop",
        &[("x-request-id", "probe-call"), ("traceparent", INCOMING)],
    )
    .await;
    let hops = by_hop(&seen);
    assert_eq!(hops.len(), 2);
    let sent = TraceParent::parse(hops[0].headers["traceparent"].to_str().unwrap()).unwrap();
    assert_eq!(hops[0].hop, "dep");
    assert_eq!(sent.trace_id.to_string(), INCOMING_TRACE);
    assert!(!sent.flags.is_sampled(), "{sent}");
    assert_eq!(hops[0].headers["x-request-id"], "probe-call");
    assert!(!hops[1].ctx.is_sampled());
}

/// At a trust boundary the caller's trace, trace state, baggage and tenant are dropped, and its
/// trace is a link; whatever formats are propagated (with trace context off, no `traceparent`
/// is read, so none is linked, and the rest is still dropped).
#[tokio::test]
async fn trust_boundary_starts_a_new_trace_and_links_the_caller() {
    let (capture, _guard) = capture();
    for (propagators, id, linked) in [
        (Propagators::default(), "public-1", true),
        (Propagators::none(), "public-2", false),
        (Propagators::none().with_baggage(true), "public-3", false),
    ] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = serve(app(
            hop_state("public", None, &seen),
            CorrelationLayer::new()
                .trust(Trust::Boundary)
                .propagators(propagators),
        ))
        .await;

        get(
            addr,
            "/hop",
            &[
                ("x-request-id", id),
                ("traceparent", INCOMING),
                ("tracestate", "vendor=opaque"),
                ("baggage", "user_tier=gold"),
                ("x-org-id", "org_spoofed"),
                ("x-project-id", "not a valid id"),
            ],
        )
        .await;
        let ctx = seen.lock().unwrap()[0].ctx.clone();
        assert_eq!(ctx.request_id.as_str(), id);
        // Every tenant header is dropped at the boundary, so an invalid one is not warned about.
        let warnings: Vec<_> = capture
            .lines_for(id)
            .into_iter()
            .filter(|l| l.level == tracing::Level::WARN)
            .collect();
        assert!(warnings.is_empty(), "{id}: {warnings:#?}");
        assert_ne!(ctx.trace_id.to_string(), INCOMING_TRACE);
        assert_eq!(ctx.parent_span_id, None);
        assert!(
            ctx.trace_state.is_empty() && ctx.baggage.is_empty() && ctx.tenant.is_empty(),
            "{id}: {ctx:?}"
        );

        let span = &capture.spans_for("http_request", id)[0];
        assert_eq!(
            span.get("trace_id"),
            Some(ctx.trace_id.to_string().as_str())
        );
        assert_eq!(span.get("org_id"), None, "{id}");
        let link = (span.get("link.trace_id"), span.get("link.span_id"));
        if linked {
            assert_eq!(link, (Some(INCOMING_TRACE), Some(INCOMING_PARENT)));
        } else {
            assert_eq!(link, (None, None), "{id}");
        }
    }
}

/// A gateway behind a trust boundary that forwards the caller's request as it came: the
/// callee must get the gateway's trace and nothing of the caller's trace state, baggage or
/// tenant, and the client span must not keep the URL's signature.
#[tokio::test]
async fn a_forwarded_request_carries_only_the_gateways_context() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = serve(app(
        hop_state("backend", None, &seen),
        CorrelationLayer::new(),
    ))
    .await;
    let team = TenantKey::new("team_id").unwrap();
    let client = ClientTraceLayer::new()
        .tenant_keys([TenantKey::ORG_ID, TenantKey::PROJECT_ID, team])
        .layer(plain_client());
    let forward = move |request: axum::extract::Request| {
        let client = client.clone();
        async move {
            let (mut parts, _) = request.into_parts();
            parts.uri = format!("http://{backend}/hop?sig=s3cret").parse().unwrap();
            let body = http_body_util::Full::new(bytes::Bytes::new());
            send(client, http::Request::from_parts(parts, body))
                .await
                .status()
        }
    };
    let gateway = serve(
        axum::Router::new()
            .route("/hop", axum::routing::get(forward))
            .layer(CorrelationLayer::new().trust(Trust::Boundary)),
    )
    .await;

    let response = get(
        gateway,
        "/hop",
        &[
            ("x-request-id", "forwarded-1"),
            ("traceparent", INCOMING),
            ("tracestate", "attacker=1"),
            ("baggage", "role=admin"),
            ("x-org-id", "victim_org"),
            ("x-team-id", "victim_team"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let backend_saw = seen.lock().unwrap()[0].clone();
    for stale in ["tracestate", "baggage", "x-org-id", "x-team-id"] {
        assert!(
            !backend_saw.headers.contains_key(stale),
            "{stale} was forwarded: {:?}",
            backend_saw.headers
        );
    }
    let ctx: &RequestContext = &backend_saw.ctx;
    assert_eq!(ctx.request_id.as_str(), "forwarded-1");
    assert_ne!(ctx.trace_id.to_string(), INCOMING_TRACE);
    assert!(ctx.trace_state.is_empty() && ctx.baggage.is_empty() && ctx.tenant.is_empty());

    let call = &capture.spans_for("http_client_request", "forwarded-1")[0];
    let url = call.get("url.full").unwrap();
    assert_eq!(url, format!("http://{backend}/hop?sig=REDACTED"));
}

#[tokio::test]
async fn a_job_continues_the_request_trace_and_request_id() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut state = hop_state("api", None, &seen);
    state.jobs = Some(jobs_tx);
    let addr = serve(app(state, CorrelationLayer::new())).await;

    // The worker: a separate task that only has the payload.
    let worker = tokio::spawn(async move {
        let payload = jobs_rx.recv().await.unwrap();
        let carrier: Carrier = serde_json::from_str(&payload).unwrap();
        let job = JobSpan::from_carrier("send_receipt", &carrier).with_job_id("job_1");
        let ctx = job.context().clone();
        job.run(async { tracing::info!("job ran") }).await;
        ctx
    });

    get(
        addr,
        "/hop",
        &[
            ("x-request-id", "job-req-1"),
            ("traceparent", INCOMING),
            ("x-org-id", "org_7"),
        ],
    )
    .await;
    let job_ctx = worker.await.unwrap();
    let request_ctx = seen.lock().unwrap()[0].ctx.clone();
    assert_eq!(job_ctx.trace_id, request_ctx.trace_id);
    assert_eq!(job_ctx.request_id, request_ctx.request_id);
    assert_eq!(job_ctx.parent_span_id, Some(request_ctx.span_id));
    assert_eq!(job_ctx.tenant.org_id(), Some("org_7"));

    let line = capture.line("job-req-1", "job ran", None);
    assert_eq!(line.ctx("trace_id"), Some(INCOMING_TRACE));
    assert_eq!(
        line.ctx("span_id"),
        Some(job_ctx.span_id.to_string().as_str())
    );
    assert_eq!(line.ctx("job_id"), Some("job_1"));
    assert_eq!(line.ctx("org_id"), Some("org_7"));
}

/// A job carrier whose entries cannot be used (a bug or a tampered payload upstream) starts
/// the job afresh, and says so once per entry at warn, with the job's ids.
#[tokio::test]
async fn a_job_with_a_bad_carrier_warns_about_each_entry_it_could_not_use() {
    let (capture, _guard) = capture();
    let carrier = Carrier::from(std::collections::BTreeMap::from([
        ("traceparent".to_owned(), "00-zz".to_owned()),
        ("x-request-id".to_owned(), "bad id with spaces".to_owned()),
        ("x-org-id".to_owned(), "bad org".to_owned()),
    ]));
    let job = JobSpan::from_carrier("send_receipt", &carrier);
    let id = job.context().request_id.as_str().to_owned();
    assert!(id.starts_with("req_"), "{id}");
    job.run(async { tracing::info!("job ran") }).await;

    let warnings: Vec<_> = capture
        .lines_for(&id)
        .into_iter()
        .filter(|l| l.level == tracing::Level::WARN)
        .collect();
    let messages: Vec<&str> = warnings.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "replaced the invalid incoming request id with a generated one",
            "started a new trace: the incoming traceparent is invalid",
            "ignored an invalid tenant header",
        ],
        "{warnings:#?}"
    );
    assert_eq!(warnings[2].fields["header"], "x-org-id");
    for warning in &warnings {
        assert!(warning.ctx("trace_id").is_some(), "{warning:?}");
    }
    // A good carrier: no warning at all.
    let good = RequestContext::new_root();
    let job = JobSpan::from_carrier("send_receipt", &Carrier::from_context(&good));
    job.run(async {}).await;
    assert!(
        capture
            .lines_for(good.request_id.as_str())
            .iter()
            .all(|l| l.level != tracing::Level::WARN)
    );
}

/// A job that enqueues the next (a worker's pipeline): every hop keeps the trace id, the
/// request id, the sampling decision, the trace state, baggage and tenant, names the previous
/// job's span as its parent under a fresh span of its own, and its carrier does not grow.
#[tokio::test]
async fn a_job_enqueued_by_a_job_keeps_the_trace_with_a_new_parent_per_hop() {
    for flags in ["00", "01"] {
        let mut headers = http::HeaderMap::new();
        let traceparent = format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-{flags}");
        headers.insert("traceparent", traceparent.parse().unwrap());
        headers.insert("x-request-id", "pipeline-1".parse().unwrap());
        headers.insert("tracestate", "vendor=1".parse().unwrap());
        headers.insert("baggage", "k=v".parse().unwrap());
        headers.insert("x-org-id", "org_7".parse().unwrap());
        let request =
            periscope_context::extract(&headers, &periscope_context::ExtractOptions::default())
                .context;
        let mut carrier = request.in_scope(periscope_trace::job::carrier).unwrap();
        let entries = carrier.as_map().len();
        let mut spans = vec![request.span_id];
        for hop in 0..4 {
            let payload = serde_json::to_string(&carrier).unwrap();
            let job = JobSpan::from_carrier("step", &serde_json::from_str(&payload).unwrap());
            let ctx = job.context().clone();
            assert_eq!(ctx.trace_id, request.trace_id, "{flags} hop {hop}");
            assert_eq!(ctx.request_id.as_str(), "pipeline-1");
            assert_eq!(ctx.is_sampled(), flags == "01", "{flags} hop {hop}");
            assert_eq!(
                ctx.parent_span_id,
                spans.last().copied(),
                "{flags} hop {hop}"
            );
            assert!(!spans.contains(&ctx.span_id), "{flags} hop {hop}");
            assert_eq!(ctx.trace_state.as_str(), "vendor=1");
            assert_eq!(ctx.baggage.get("k"), Some("v"));
            assert_eq!(ctx.tenant.org_id(), Some("org_7"));
            spans.push(ctx.span_id);
            carrier = job
                .run(async { periscope_trace::job::carrier().unwrap() })
                .await;
            assert_eq!(carrier.as_map().len(), entries, "{carrier:?}");
        }
    }
}

/// Without a router's matched path, the declared templates name the span and reach the inner
/// layers as a `MatchedRoute`; an unmatched path gets neither.
#[tokio::test]
async fn route_templates_name_the_span_without_a_router() {
    use periscope_context::{MatchedRoute, RouteTemplates};

    let (capture, _guard) = capture();
    let layer = CorrelationLayer::new()
        .route_templates(RouteTemplates::new(["/users/{id}", "/users/me"]).unwrap());
    let inner = tower::service_fn(|request: http::Request<axum::body::Body>| async move {
        let route = MatchedRoute::of(request.extensions())
            .unwrap_or("none")
            .to_owned();
        Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from(route)))
    });
    let service = tower::ServiceBuilder::new().layer(layer).service(inner);
    let addr = serve(axum::Router::new().fallback_service(service)).await;

    for (path, id, route) in [
        ("/users/42", "route-1", Some("/users/{id}")),
        ("/users/me", "route-2", Some("/users/me")),
        ("/elsewhere", "route-3", None),
    ] {
        let response = get(addr, path, &[("x-request-id", id)]).await;
        assert_eq!(response.body(), route.unwrap_or("none"), "{path}");
        let spans = capture.spans_for("http_request", id);
        assert_eq!(spans.len(), 1, "{path}");
        let name = route.map_or("GET".to_owned(), |route| format!("GET {route}"));
        assert_eq!(spans[0].get("otel.name"), Some(name.as_str()), "{path}");
        assert_eq!(spans[0].get("http.route"), route, "{path}");
    }
}

/// A client shared through `tower::buffer::Buffer` calls its inner service on the buffer's
/// worker task, where no request is current: with `ClientTraceLayer` outside the buffer, as
/// docs/trace.md says, the calls still carry the request's trace and request id.
#[tokio::test]
async fn a_buffered_client_keeps_the_trace_with_the_layer_outside() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use tower::ServiceBuilder;

    // A subscriber as in every test here: a thread without one races the others' callsite
    // registration in tracing, and their spans can go unrecorded.
    let (_capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dependency = serve(app(hop_state("dep", None, &seen), CorrelationLayer::new())).await;
    let shared = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .buffer(16)
        .service(plain_client());
    let front = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let shared = shared.clone();
                async move {
                    let call = Request::get(format!("http://{dependency}/hop"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    send(shared, call).await.status()
                }
            }),
        )
        .layer(CorrelationLayer::new());
    let front = serve(front).await;

    get(
        front,
        "/",
        &[("x-request-id", "buffered"), ("traceparent", INCOMING)],
    )
    .await;
    let received = &seen.lock().unwrap()[0];
    assert_eq!(received.ctx.trace_id.to_string(), INCOMING_TRACE);
    assert_eq!(received.ctx.request_id.as_str(), "buffered");
}

/// Sends every request twice, as a retry layer does after a failed attempt: the second copy
/// carries the first one's headers, as a retry policy's clone of the request does.
#[derive(Clone)]
struct TwoAttempts<S>(S);

impl<S> tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> for TwoAttempts<S>
where
    S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<http_body_util::Full<bytes::Bytes>>) -> Self::Future {
        use tower::ServiceExt;
        let mut again = http::Request::builder()
            .method(request.method().clone())
            .uri(request.uri().clone())
            .body(request.body().clone())
            .unwrap();
        *again.headers_mut() = request.headers().clone();
        let first = self.0.call(request);
        let inner = self.0.clone();
        Box::pin(async move {
            drop(first.await?);
            inner.oneshot(again).await
        })
    }
}

/// docs/trace.md: a retry layer inside `ClientTraceLayer` sends every attempt under the one
/// client span (one `parent-id`); outside it, each attempt has a client span of its own.
#[tokio::test]
async fn a_retry_inside_the_client_layer_shares_its_span_and_outside_gets_one_per_attempt() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use tower::ServiceBuilder;

    let (_capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dependency = serve(app(hop_state("dep", None, &seen), CorrelationLayer::new())).await;
    let inside = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .layer_fn(TwoAttempts)
        .service(plain_client());
    let outside = ServiceBuilder::new()
        .layer_fn(TwoAttempts)
        .layer(ClientTraceLayer::new())
        .service(plain_client());
    let front = axum::Router::new()
        .route(
            "/{placement}",
            axum::routing::get(
                move |axum::extract::Path(placement): axum::extract::Path<String>| {
                    let (inside, outside) = (inside.clone(), outside.clone());
                    async move {
                        let call = Request::get(format!("http://{dependency}/hop"))
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        match placement.as_str() {
                            "inside" => send(inside, call).await.status(),
                            _ => send(outside, call).await.status(),
                        }
                    }
                },
            ),
        )
        .layer(CorrelationLayer::new());
    let front = serve(front).await;

    for placement in ["inside", "outside"] {
        seen.lock().unwrap().clear();
        get(
            front,
            &format!("/{placement}"),
            &[("traceparent", INCOMING)],
        )
        .await;
        let attempts = seen.lock().unwrap().clone();
        assert_eq!(attempts.len(), 2, "{placement}");
        for attempt in &attempts {
            assert_eq!(
                attempt.ctx.trace_id.to_string(),
                INCOMING_TRACE,
                "{placement}"
            );
        }
        let parents: Vec<_> = attempts
            .iter()
            .map(|attempt| attempt.ctx.parent_span_id.expect("a parent"))
            .collect();
        assert_eq!(
            parents[0] == parents[1],
            placement == "inside",
            "{placement}: {parents:?}"
        );
    }
}

/// docs/trace.md: outside any request, the attempts of a retry made outside the client layer
/// are a trace each; run in one context (`RequestContext::new_root().scope(..)`), they share
/// its trace id and request id, each with a parent id of its own.
#[tokio::test]
async fn a_retry_outside_any_request_keeps_together_in_one_context() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use tower::ServiceBuilder;

    let (_capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dependency = serve(app(hop_state("dep", None, &seen), CorrelationLayer::new())).await;
    let outside = ServiceBuilder::new()
        .layer_fn(TwoAttempts)
        .layer(ClientTraceLayer::new())
        .service(plain_client());
    let call = || {
        Request::get(format!("http://{dependency}/hop"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let ids = |attempts: &[Seen]| {
        attempts
            .iter()
            .map(|attempt| (attempt.ctx.trace_id, attempt.ctx.request_id.to_string()))
            .collect::<Vec<_>>()
    };

    send(outside.clone(), call()).await;
    let apart = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(apart.len(), 2);
    let apart = ids(&apart);
    assert_ne!(apart[0], apart[1], "no context: a trace each");

    let ctx = periscope_context::RequestContext::new_root();
    ctx.clone().scope(send(outside, call())).await;
    let together = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(together.len(), 2);
    assert_ne!(
        together[0].ctx.parent_span_id,
        together[1].ctx.parent_span_id
    );
    for (trace_id, request_id) in ids(&together) {
        assert_eq!(trace_id, ctx.trace_id);
        assert_eq!(request_id, ctx.request_id.as_str());
    }
}

/// docs/trace.md: baggage for one call goes in a copy of the context put in the call's
/// extensions; the request's own baggage and trace go along with it.
#[tokio::test]
async fn baggage_for_one_call_rides_in_a_context_in_its_extensions() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    let (_capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dependency = serve(app(hop_state("dep", None, &seen), CorrelationLayer::new())).await;
    let client = ClientTraceLayer::new().layer(plain_client());
    let front = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let client = client.clone();
                async move {
                    let mut ctx = (*RequestContext::current().expect("inside the request")).clone();
                    ctx.baggage.insert("attempt", "2").unwrap();
                    let call = Request::get(format!("http://{dependency}/hop"))
                        .extension(ctx)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    send(client, call).await.status()
                }
            }),
        )
        .layer(CorrelationLayer::new());
    let front = serve(front).await;

    get(
        front,
        "/",
        &[("traceparent", INCOMING), ("baggage", "tenant_tier=gold")],
    )
    .await;
    let received = &seen.lock().unwrap()[0];
    assert_eq!(received.ctx.trace_id.to_string(), INCOMING_TRACE);
    assert_eq!(received.ctx.baggage.get("tenant_tier"), Some("gold"));
    assert_eq!(received.ctx.baggage.get("attempt"), Some("2"));
}

/// A method outside the standard set is recorded as `_OTHER` (the original beside it), and
/// the HTTP semantic conventions name its span `HTTP`, never `_OTHER`: on the server span
/// (`HTTP {route}`) and on the client span (`HTTP`). HTTP methods are case-sensitive, so a
/// lowercase `get` is such a method too.
#[cfg(feature = "axum")] // the route template comes from axum's MatchedPath
#[tokio::test]
async fn non_standard_methods_name_their_spans_http() {
    use axum::routing;
    use bytes::Bytes;
    use http_body_util::Full;

    let (capture, _guard) = capture();
    let router = axum::Router::new()
        .route("/items/{id}", routing::any(|| async { "done" }))
        .layer(CorrelationLayer::new());
    let addr = serve(router).await;

    let span_of = |name: &str, method: &str| {
        capture
            .spans()
            .into_iter()
            .find(|span| {
                span.name == name && span.get("http.request.method_original") == Some(method)
            })
            .unwrap_or_else(|| panic!("no {name} span for {method}"))
    };
    for method in ["PURGE", "get"] {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}/items/7"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(support::traced_client(), request).await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");

        let server = span_of("http_request", method);
        assert_eq!(
            server.get("otel.name"),
            Some("HTTP /items/{id}"),
            "{method}"
        );
        assert_eq!(server.get("http.request.method"), Some("_OTHER"));
        assert_eq!(server.get("http.route"), Some("/items/{id}"));

        let client = span_of("http_client_request", method);
        assert_eq!(client.get("otel.name"), Some("HTTP"), "{method}");
        assert_eq!(client.get("http.request.method"), Some("_OTHER"));
    }
}

/// `method target` with `x-request-id: id`, written as sent on a new connection (what a client
/// library would refuse or rewrite), answered 200 (within 30 s).
async fn raw_ok(addr: std::net::SocketAddr, method: &str, target: &str, id: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-request-id: {id}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("an answer within 30 s")
    .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{id}");
}

/// The path and the method are the client's to choose, at any length its server lets through
/// (about 64 KiB of path, and a method as long as the head): the server span keeps at most
/// 2,048 bytes of the one (`url.path`) and 32 of the other (`http.request.method_original`),
/// cut on a character boundary and ending with `…`, so a scanner's requests cannot fill the
/// export queue with megabytes of attributes. Shorter ones are recorded whole.
#[tokio::test]
async fn client_sent_path_and_method_are_bounded_on_the_server_span() {
    let (capture, _guard) = capture();
    let router = axum::Router::new()
        .route("/items/{id}", axum::routing::any(|| async { "done" }))
        .layer(CorrelationLayer::new());
    let addr = serve(router).await;
    // Two-byte characters, so the cut falls inside one.
    let long_path = format!("/items/{}", "é".repeat(30 * 1024));
    let long_method = "M".repeat(30 * 1024);
    let fits_path = format!(
        "/items/{}",
        "a".repeat(periscope_trace::MAX_URL_PATH_LEN - 7)
    );
    let fits_method = "M".repeat(periscope_trace::MAX_METHOD_ORIGINAL_LEN);
    for (id, method, path) in [
        ("long-path", "GET", long_path.as_str()),
        ("long-method", long_method.as_str(), "/items/7"),
        ("fits", fits_method.as_str(), fits_path.as_str()),
    ] {
        raw_ok(addr, method, path, id).await;
    }
    let field = |id: &str, name: &str| {
        let spans = capture.spans_for("http_request", id);
        assert_eq!(spans.len(), 1, "{id}");
        spans[0]
            .get(name)
            .unwrap_or_else(|| panic!("{id}: no {name}"))
            .to_owned()
    };
    let path = field("long-path", "url.path");
    let max = periscope_trace::MAX_URL_PATH_LEN;
    assert!(path.len() <= max && path.len() > max - 5, "{}", path.len());
    let kept = path.strip_suffix('…').expect("the cut is marked");
    assert!(long_path.starts_with(kept), "{kept}");
    let method = field("long-method", "http.request.method_original");
    let max = periscope_trace::MAX_METHOD_ORIGINAL_LEN;
    assert_eq!(method, format!("{}…", "M".repeat(max - '…'.len_utf8())));
    assert_eq!(field("long-method", "http.request.method"), "_OTHER");
    assert_eq!(field("fits", "url.path"), fits_path);
    assert_eq!(field("fits", "http.request.method_original"), fits_method);
}

/// Behind a TLS-terminating proxy the request arrives over plain HTTP: `url.scheme` is the
/// client's scheme as the proxy reports it (HTTP semantic conventions), and only `http` or
/// `https` is taken from a header.
#[tokio::test]
async fn url_scheme_is_the_clients_behind_a_proxy() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = CorrelationLayer::new().forwarded_scheme(true);
    let addr = serve(app(hop_state("a", None, &seen), layer)).await;
    // Off by default: the headers are not looked at.
    let plain = serve(app(hop_state("b", None, &seen), CorrelationLayer::new())).await;
    let id = "scheme-not-trusted";
    get(
        plain,
        "/hop",
        &[("x-forwarded-proto", "https"), ("x-request-id", id)],
    )
    .await;
    let span = &capture.spans_for("http_request", id)[0];
    assert_eq!(span.get("url.scheme"), Some("http"));

    for (id, headers, scheme) in [
        ("scheme-xfp", &[("x-forwarded-proto", "https")][..], "https"),
        (
            "scheme-xfp-list",
            &[("x-forwarded-proto", "HTTPS, http")],
            "https",
        ),
        (
            "scheme-forwarded",
            &[("forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")],
            "https",
        ),
        (
            "scheme-bogus",
            &[("x-forwarded-proto", "javascript")],
            "http",
        ),
        ("scheme-direct", &[], "http"),
    ] {
        let mut headers = headers.to_vec();
        headers.push(("x-request-id", id));
        get(addr, "/hop", &headers).await;
        let span = &capture.spans_for("http_request", id)[0];
        assert_eq!(span.get("url.scheme"), Some(scheme), "{id}");
    }
}

/// A request target in absolute form names its own scheme (`GET javascript://x/hop`): the
/// client chooses it, so only `http` and `https` are taken from it, as from a header.
#[tokio::test]
async fn url_scheme_takes_only_http_or_https_from_the_request_target() {
    let (capture, _guard) = capture();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve(app(hop_state("a", None, &seen), CorrelationLayer::new())).await;
    for (id, target, scheme) in [
        ("target-bogus", "javascript://evil.example/hop", "http"),
        ("target-https", "https://a/hop", "https"),
        ("target-origin", "/hop", "http"),
    ] {
        raw_ok(addr, "GET", target, id).await;
        let span = &capture.spans_for("http_request", id)[0];
        assert_eq!(span.get("url.scheme"), Some(scheme), "{id}");
    }
}

/// A gRPC server answers a failed call with HTTP 200 and `grpc-status` in its headers: the
/// server span fails for the codes the gRPC conventions name (here `INTERNAL`, not
/// `NOT_FOUND`), the client span for every code but `OK`, and both record the code.
#[tokio::test]
async fn grpc_answers_are_judged_by_their_status_code() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    let (capture, _guard) = capture();
    let grpc = |code: &'static str| {
        axum::routing::post(move || async move {
            (
                [("content-type", "application/grpc"), ("grpc-status", code)],
                "",
            )
        })
    };
    let server = axum::Router::new()
        .route("/pkg.Svc/Internal", grpc("13"))
        .route("/pkg.Svc/Missing", grpc("5"))
        .route("/pkg.Svc/Ok", grpc("0"))
        .layer(CorrelationLayer::new());
    let addr = serve(server).await;
    let client = ClientTraceLayer::new().layer(plain_client());
    for method in ["Internal", "Missing", "Ok"] {
        let call = Request::post(format!("http://{addr}/pkg.Svc/{method}"))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(client.clone(), call).await.status(), StatusCode::OK);
    }

    for (method, code, server_failed, client_failed) in [
        ("Internal", "13", true, true),
        ("Missing", "5", false, true),
        ("Ok", "0", false, false),
    ] {
        let path = format!("/pkg.Svc/{method}");
        let spans = capture.spans();
        let find = |name: &str, field: &str| {
            spans
                .iter()
                .find(|span| {
                    span.name == name && span.get(field).is_some_and(|url| url.ends_with(&path))
                })
                .unwrap()
        };
        let (server, client) = (
            find("http_request", "url.path"),
            find("http_client_request", "url.full"),
        );
        // One call: the server span continues the client span's trace and request id.
        assert_eq!(server.get("request_id"), client.get("request_id"));
        assert_eq!(server.get("http.response.status_code"), Some("200"));
        assert_eq!(server.get("rpc.grpc.status_code"), Some(code), "{method}");
        let error = |failed: bool| failed.then_some("ERROR");
        assert_eq!(
            server.get("otel.status_code"),
            error(server_failed),
            "{method}"
        );
        assert_eq!(client.get("rpc.grpc.status_code"), Some(code), "{method}");
        assert_eq!(
            client.get("otel.status_code"),
            error(client_failed),
            "{method}"
        );
        // A failed call names its code.
        let name = periscope_context::grpc::GrpcCode::new(code.parse().unwrap()).name();
        assert_eq!(server.get("error.type"), server_failed.then_some(name));
        assert_eq!(client.get("error.type"), client_failed.then_some(name));
    }
}

/// A call given up by a timeout around the client layer failed: its span says so, it does
/// not read as a success without a status. A gRPC call given up before its answer's head is
/// `CANCELLED`, as one whose answer is dropped before its trailers, and as the server's span
/// records it.
#[tokio::test]
async fn a_call_cut_off_by_a_timeout_is_a_failed_client_span() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    let slow = || async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        "late"
    };
    let server = axum::Router::new()
        .route("/slow", axum::routing::get(slow))
        .route("/pkg.Svc/Slow", axum::routing::post(slow));
    let addr = serve(server).await;
    for (grpc, error_type, code) in [(false, "cancelled", None), (true, "CANCELLED", Some("1"))] {
        let (capture, _guard) = capture();
        let client = ClientTraceLayer::new().layer(plain_client());
        let call = if grpc {
            Request::post(format!("http://{addr}/pkg.Svc/Slow"))
                .header("content-type", "application/grpc")
        } else {
            Request::get(format!("http://{addr}/slow"))
        };
        let call = call.body(Full::new(Bytes::new())).unwrap();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            tower::ServiceExt::oneshot(client, call),
        )
        .await;
        assert!(outcome.is_err(), "the call was not cut off");

        let spans = capture.spans();
        let call = spans
            .iter()
            .find(|span| span.name == "http_client_request")
            .unwrap();
        assert_eq!(call.get("otel.status_code"), Some("ERROR"), "{call:?}");
        assert_eq!(call.get("error.type"), Some(error_type), "{call:?}");
        assert_eq!(call.get("rpc.grpc.status_code"), code, "{call:?}");
        assert_eq!(call.get("http.response.status_code"), None);
    }
}

/// A client that panics (in its `call` or while its future is polled) failed without an
/// answer: its span records a failure as for a transport error (`_OTHER`, as the client metrics
/// count it `error`), not `cancelled` (which says the caller gave up) and not no outcome at all.
#[tokio::test]
async fn a_panicking_client_is_a_failed_client_span() {
    use std::convert::Infallible;
    use std::task::{Context, Poll};
    use tower::{Service, ServiceExt};

    #[derive(Clone)]
    struct PanicsInCall;
    impl tower::Service<http::Request<()>> for PanicsInCall {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<String>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            panic!("the client panics in call")
        }
    }

    let (capture, _guard) = capture();
    let ctx = RequestContext::new_root();
    let panics_in_poll = tower::service_fn(|_: http::Request<()>| async {
        panic!("the client panics in its future");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let call = |path: &str| http::Request::get(format!("http://inventory.internal{path}")).body(());
    let polled = ClientTraceLayer::new()
        .layer(panics_in_poll)
        .oneshot(call("/poll").unwrap());
    assert!(tokio::spawn(ctx.clone().scope(polled)).await.is_err());
    let mut called = ClientTraceLayer::new().layer(PanicsInCall);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.in_scope(|| drop(called.call(call("/call").unwrap())))
    }));
    assert!(unwound.is_err());

    let spans = capture.spans_for("http_client_request", ctx.request_id.as_str());
    assert_eq!(spans.len(), 2, "{spans:?}");
    for span in &spans {
        assert_eq!(span.get("otel.status_code"), Some("ERROR"), "{span:?}");
        assert_eq!(span.get("error.type"), Some("_OTHER"), "{span:?}");
    }
}

/// hyper-util's client against a server that answers a redirect, a 404, a head it cuts off
/// and bytes that are no HTTP: a client span each, the `traceparent` it sent naming it as the
/// parent; a 3xx is no error (the client does not follow it), a 4xx is (`error.type` the
/// code), and an answer that never came whole is a transport error (`_OTHER`).
#[tokio::test]
async fn client_spans_judge_redirects_client_errors_and_broken_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (capture, _guard) = capture();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = sent.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0; 1];
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let answer: &[u8] = match head.split(' ').nth(1) {
                Some("/moved") => b"HTTP/1.1 302 Found\r\nlocation: /\r\ncontent-length: 0\r\n\r\n",
                Some("/missing") => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                Some("/cut") => b"HTTP/1.1 200 OK\r\ncontent-len",
                _ => b"NOT HTTP\r\n\r\n",
            };
            heads.lock().unwrap().push(head);
            socket.write_all(answer).await.unwrap();
            // Closed: one answer per connection.
        }
    });

    let ctx = RequestContext::new_root();
    let client = support::traced_client();
    for (path, answered) in [
        ("/moved", true),
        ("/missing", true),
        ("/cut", false),
        ("/garbage", false),
    ] {
        let request = support::services::get_request(format!("http://{addr}{path}"), &[]);
        let outcome = ctx
            .clone()
            .scope(tower::ServiceExt::oneshot(client.clone(), request))
            .await;
        assert_eq!(outcome.is_ok(), answered, "{path}: {outcome:?}");
    }

    let spans = capture.spans_for("http_client_request", ctx.request_id.as_str());
    let outcomes: Vec<_> = spans
        .iter()
        .map(|span| {
            (
                span.get("http.response.status_code"),
                span.get("otel.status_code"),
                span.get("error.type"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("302"), None, None),
            (Some("404"), Some("ERROR"), Some("404")),
            (None, Some("ERROR"), Some("_OTHER")),
            (None, Some("ERROR"), Some("_OTHER")),
        ]
    );
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 4);
    for (head, span) in sent.iter().zip(&spans) {
        let traceparents: Vec<_> = head
            .lines()
            .filter_map(|line| line.strip_prefix("traceparent: "))
            .collect();
        let [traceparent] = traceparents[..] else {
            panic!("one traceparent: {head}");
        };
        let traceparent = TraceParent::parse(traceparent).unwrap();
        assert_eq!(traceparent.trace_id, ctx.trace_id);
        assert_eq!(
            Some(traceparent.parent_id.to_hex().as_str()),
            span.get("span_id")
        );
    }
}

/// The HTTP client conventions require `server.port` on a client span: a URL without a port
/// goes to its scheme's default (80 for `http`, 443 for `https`), and the span says so; an
/// explicit port (a real call on 127.0.0.1) is the one recorded.
#[tokio::test]
async fn a_client_span_always_names_the_server_port() {
    let (capture, _guard) = capture();
    let addr = serve(axum::Router::new().route("/", axum::routing::get(|| async { "ok" }))).await;
    let ctx = RequestContext::new_root();
    let response = ctx
        .clone()
        .scope(send(
            support::traced_client(),
            support::services::get_request(format!("http://{addr}/"), &[]),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    call_without_network(
        &ctx,
        &[
            "http://inventory.internal/items",
            "https://inventory.internal/items",
        ],
    )
    .await;

    let spans = capture.spans_for("http_client_request", ctx.request_id.as_str());
    let ports: Vec<(&str, Option<&str>)> = spans
        .iter()
        .map(|span| (span.get("url.full").unwrap(), span.get("server.port")))
        .collect();
    let real = addr.port().to_string();
    assert_eq!(
        ports,
        [
            (format!("http://{addr}/").as_str(), Some(real.as_str())),
            ("http://inventory.internal/items", Some("80")),
            ("https://inventory.internal/items", Some("443")),
        ],
    );
}

/// A client that adds the server below the layer (a tonic `Channel` built without
/// `with_origin` sends a bare path through it) gives no absolute URL: `url.full` is left out
/// rather than holding a relative one the conventions do not allow, as are the server's
/// address and port.
#[tokio::test]
async fn a_call_without_an_absolute_url_records_no_url_full() {
    let (capture, _guard) = capture();
    let ctx = RequestContext::new_root();
    call_without_network(&ctx, &["/pkg.Svc/Get?page=2", "http://h.internal/x"]).await;
    let spans = capture.spans_for("http_client_request", ctx.request_id.as_str());
    let urls: Vec<Option<&str>> = spans.iter().map(|span| span.get("url.full")).collect();
    assert_eq!(urls, [None, Some("http://h.internal/x")]);
    assert_eq!(spans[0].get("server.address"), None);
    assert_eq!(spans[0].get("server.port"), None);
}

/// `server.address` is an address or a name on its own, beside `server.port`: an IPv6 literal
/// loses the brackets its URL needs (as the conventions list bare addresses, and as the
/// OpenTelemetry instrumentations of other languages record it), so spans of calls to the same
/// host group together whatever form the URL took.
#[tokio::test]
async fn a_client_span_names_an_ipv6_server_without_brackets() {
    let (capture, _guard) = capture();
    let ctx = RequestContext::new_root();
    call_without_network(
        &ctx,
        &[
            "http://[::1]:8080/items",
            "https://[FD00::7]/items",
            "http://inventory.internal/items",
            // As the client metrics' `server_address` label: lower case, no root dot.
            "http://Inventory.Internal./items",
        ],
    )
    .await;

    let spans = capture.spans_for("http_client_request", ctx.request_id.as_str());
    let servers: Vec<(Option<&str>, Option<&str>)> = spans
        .iter()
        .map(|span| (span.get("server.address"), span.get("server.port")))
        .collect();
    assert_eq!(
        servers,
        [
            (Some("::1"), Some("8080")),
            (Some("fd00::7"), Some("443")),
            (Some("inventory.internal"), Some("80")),
            (Some("inventory.internal"), Some("80")),
        ],
    );
}

/// Calls each of `urls` under `ctx` through `ClientTraceLayer` over a stand-in transport that
/// answers at once: for the span fields that depend on the URL alone (hosts that do not
/// resolve, ports nothing listens on).
async fn call_without_network(ctx: &RequestContext, urls: &[&str]) {
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    let transport = service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let client = ClientTraceLayer::new().layer(transport);
    for url in urls {
        let request = http::Request::get(*url).body(()).unwrap();
        ctx.clone()
            .scope(client.clone().oneshot(request))
            .await
            .unwrap();
    }
}

/// The server span covers the whole answer, a streamed body included: it ends when the body
/// is dropped, not when the head is ready, and the body is polled inside it with the request's
/// context current.
#[tokio::test]
async fn the_server_span_ends_with_the_response_body() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let (capture, _guard) = capture();
    let service =
        CorrelationLayer::new().layer(tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"streamed"),
            )))
        }));
    let request = http::Request::get("/stream")
        .header("x-request-id", "body-1")
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.body().context().request_id.as_str(), "body-1");
    assert!(
        capture.spans_for("http_request", "body-1").is_empty(),
        "the span outlives the head while the body is unsent"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "streamed");
    assert_eq!(capture.spans_for("http_request", "body-1").len(), 1);
}

//! The process's propagation formats (`Propagators::set_global`, what `OTEL_PROPAGATORS` sets)
//! reach every layer, `inject` and job carrier that was not told otherwise. One test in its own
//! binary: it changes a process-wide setting.

use std::convert::Infallible;

use http::{HeaderMap, Request, Response};
use periscope_context::{Carrier, RequestContext, TraceParent};
use periscope_trace::job::{self, JobSpan};
use periscope_trace::{ClientTraceLayer, CorrelationLayer, Propagators, inject};
use tower::{Layer, ServiceExt, service_fn};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The headers an outgoing call through `client` carries, made inside `ctx`.
async fn sent_through(client: ClientTraceLayer, ctx: &RequestContext) -> HeaderMap {
    // Answers with the headers it was sent.
    let transport = service_fn(|request: Request<()>| async move {
        let mut response = Response::new(String::new());
        *response.headers_mut() = request.headers().clone();
        Ok::<_, Infallible>(response)
    });
    let request = Request::get("http://callee.internal/").body(()).unwrap();
    let response = ctx
        .clone()
        .scope(client.layer(transport).oneshot(request))
        .await
        .unwrap();
    response.headers().clone()
}

/// The context the server layer hands its service for a request continuing `INCOMING`.
async fn served(server: &CorrelationLayer) -> RequestContext {
    let service = server.layer(service_fn(|request: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(
            request
                .extensions()
                .get::<RequestContext>()
                .cloned()
                .unwrap(),
        ))
    }));
    let request = Request::get("/orders")
        .header("traceparent", INCOMING)
        .header("baggage", "k=v")
        .body(())
        .unwrap();
    service
        .oneshot(request)
        .await
        .unwrap()
        .into_body()
        .get_ref()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn the_process_formats_reach_every_layer_not_told_otherwise() {
    let incoming = TraceParent::parse(INCOMING).unwrap();
    let mut ctx = RequestContext::new_root();
    ctx.baggage = periscope_context::Baggage::parse("k=v");
    // Built before the formats change: the layers read them per call.
    let client = ClientTraceLayer::new();
    let server = CorrelationLayer::new();

    // The default: both formats.
    assert_eq!(Propagators::global(), Propagators::default());
    let mut headers = HeaderMap::new();
    assert!(ctx.in_scope(|| inject(&mut headers)));
    assert!(headers.contains_key("traceparent") && headers.contains_key("baggage"));
    let sent = sent_through(client.clone(), &ctx).await;
    assert!(sent.contains_key("traceparent") && sent.contains_key("baggage"));
    let continued = served(&server).await;
    assert_eq!(continued.trace_id, incoming.trace_id);
    assert_eq!(continued.baggage.get("k"), Some("v"));
    // A job's carrier, written and read: the whole context.
    let all = ctx.in_scope(job::carrier).unwrap();
    assert!(all.as_map().contains_key("traceparent") && all.as_map().contains_key("baggage"));
    let worker = JobSpan::from_carrier("resize", &all);
    assert_eq!(worker.context().trace_id, ctx.trace_id);
    assert_eq!(worker.context().baggage.get("k"), Some("v"));

    // `OTEL_PROPAGATORS=none`: only the request id and tenant headers travel.
    Propagators::none().set_global();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", INCOMING.parse().unwrap());
    assert!(ctx.in_scope(|| inject(&mut headers)));
    assert_eq!(headers["x-request-id"], ctx.request_id.as_str());
    for name in ["traceparent", "tracestate", "baggage"] {
        assert!(!headers.contains_key(name), "inject sent {name}");
    }
    let sent = sent_through(client.clone(), &ctx).await;
    assert_eq!(sent["x-request-id"], ctx.request_id.as_str());
    for name in ["traceparent", "baggage"] {
        assert!(!sent.contains_key(name), "the client layer sent {name}");
    }
    let fresh = served(&server).await;
    assert_ne!(fresh.trace_id, incoming.trace_id);
    assert!(fresh.baggage.is_empty());
    // A job is enqueued with the request id alone, and a carrier that holds more (written by
    // a producer set otherwise) is read by the same formats: a trace of the job's own.
    let enqueued = ctx.in_scope(job::carrier).unwrap();
    assert_eq!(enqueued.as_map()["x-request-id"], ctx.request_id.as_str());
    for name in ["traceparent", "tracestate", "baggage"] {
        assert!(
            !enqueued.as_map().contains_key(name),
            "the job carrier held {name}"
        );
    }
    let worker = JobSpan::from_carrier("resize", &Carrier::from_context(&ctx));
    assert_eq!(worker.context().request_id, ctx.request_id);
    assert_ne!(worker.context().trace_id, ctx.trace_id);
    assert_eq!(worker.context().parent_span_id, None);
    assert!(worker.context().baggage.is_empty());

    // Formats set on a layer win over the process's.
    let sent = sent_through(client.propagators(Propagators::default()), &ctx).await;
    assert!(sent.contains_key("traceparent") && sent.contains_key("baggage"));
    let continued = served(&server.propagators(Propagators::default())).await;
    assert_eq!(continued.trace_id, incoming.trace_id);

    // Baggage alone.
    Propagators::none().with_baggage(true).set_global();
    let mut headers = HeaderMap::new();
    assert!(ctx.in_scope(|| inject(&mut headers)));
    assert!(!headers.contains_key("traceparent") && headers.contains_key("baggage"));
    let worker = JobSpan::from_carrier("resize", &Carrier::from_context(&ctx));
    assert_ne!(worker.context().trace_id, ctx.trace_id);
    assert_eq!(worker.context().baggage.get("k"), Some("v"));
}

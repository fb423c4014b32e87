//! A collector's OTLP/HTTP traces endpoint on 127.0.0.1 (`POST /v1/traces`), decoding the
//! spans it is sent as a collector does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use serde_json::{Value, json};

/// One exported span, as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct Exported {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub status: SpanStatus,
    /// String, integer and boolean attributes, as JSON values.
    pub attributes: BTreeMap<String, Value>,
    /// When the span started and ended, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

pub type Spans = Arc<Mutex<Vec<Exported>>>;

/// A collector's OTLP/HTTP traces endpoint on 127.0.0.1.
pub async fn start_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let router = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), spans)
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| r.attributes);
        let service = attributes(&resource.unwrap_or_default())
            .remove("service.name")
            .and_then(|name| name.as_str().map(str::to_owned))
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.push(Exported {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name.clone(),
                kind: span.kind(),
                status: span.status.as_ref().map_or(SpanStatus::Unset, |s| s.code()),
                attributes: attributes(&span.attributes),
                start_unix_nano: span.start_time_unix_nano,
                end_unix_nano: span.end_time_unix_nano,
            });
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    (StatusCode::OK, answer)
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, Value> {
    list.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => json!(s),
                Any::IntValue(i) => json!(i),
                Any::BoolValue(b) => json!(b),
                Any::DoubleValue(d) => json!(d),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Span fields shared by the server, client and job spans: OpenTelemetry HTTP semantic
//! conventions plus periscope's context fields (`request_id`, `trace_id`, `span_id`, tenant).

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use http::{Method, Uri};
use periscope_context::grpc::{GrpcCode, answer_code};
use periscope_context::text::cut;
use periscope_context::{RequestContext, Tenant};
use tracing::Metadata;
use tracing::Span;
use tracing::callsite::Identifier;
use tracing::field::{Field, Value};

/// Tenant fields recorded under their own name on every span (tracing needs field names at
/// compile time). Other declared tenant keys are recorded together in the `tenant` field.
pub use periscope_context::SPAN_TENANT_FIELDS;

/// `http.request.method`: the standard methods as themselves, anything else as `_OTHER`
/// (the original goes to `http.request.method_original`), so a flood of made-up methods cannot
/// create unbounded span names.
// Inlined into `Correlation::call`, compiled in the service's crate (every request).
#[inline]
pub(crate) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The `{method}` part of a span name: the method, or `HTTP` for one folded into `_OTHER`, as
/// the HTTP semantic conventions require.
pub(crate) fn span_method(method_name: &'static str) -> &'static str {
    if method_name == "_OTHER" {
        "HTTP"
    } else {
        method_name
    }
}

/// The longest `url.path` the server span records, in bytes. The path is the client's to
/// choose, up to about 64 KiB (the request head's limit): a longer one is cut on a character
/// boundary and ends with `…` (counted in the bound), so requests with huge paths cannot fill
/// the span export queue (2,048 spans by default) with megabytes of attributes.
pub const MAX_URL_PATH_LEN: usize = 2048;

/// The longest `http.request.method_original` a span records, in bytes (the longest method
/// HTTP defines has 17 characters; a client may send one as long as the request head): a
/// longer one is cut as [`MAX_URL_PATH_LEN`] says.
pub const MAX_METHOD_ORIGINAL_LEN: usize = 32;

/// The original method, only when it was folded into `_OTHER`, within
/// [`MAX_METHOD_ORIGINAL_LEN`] bytes.
// Inlined into `Correlation::call`, compiled in the service's crate (every request).
#[inline]
pub(crate) fn method_original(method: &Method) -> Option<Cow<'_, str>> {
    (method_name(method) == "_OTHER").then(|| cut(method.as_str(), MAX_METHOD_ORIGINAL_LEN))
}

/// Whether a query parameter of this name holds a secret: a signature or key of the shared list
/// (`X-Amz-Signature`, `sig`), or any name holding one of the contract's sensitive key parts
/// (`X-Amz-Security-Token`, `access_token`, `api_key`, ...), as the log redaction reads keys.
/// The name is read percent-decoded, as the server reads it: `access%5Ftoken` is
/// `access_token`.
fn sensitive_query_key(key: &str) -> bool {
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
    let key = key.as_ref();
    // The list the log redaction masks in URLs in free text too.
    periscope_context::SIGNATURE_QUERY_PARAMS
        .iter()
        .any(|param| param.eq_ignore_ascii_case(key))
        || periscope_context::SENSITIVE_KEY_PARTS.iter().any(|part| {
            key.as_bytes()
                .windows(part.len())
                .any(|window| window.eq_ignore_ascii_case(part.as_bytes()))
        })
}

/// The longest `url.full` a client span records, in bytes: a URL longer (a gateway forwarding
/// a client's 60 KiB query) is cut as [`MAX_URL_PATH_LEN`] says, so such calls cannot fill the
/// span export queue with megabytes of attributes.
pub const MAX_URL_FULL_LEN: usize = 4096;

/// The longest `server.address` a client span records, in bytes (a DNS name has at most 253):
/// a longer host, a URL's to choose, is cut as [`MAX_URL_PATH_LEN`] says, as the client
/// metrics' label is folded past 256 bytes.
pub const MAX_SERVER_ADDRESS_LEN: usize = 256;

/// `url.full` as the HTTP semantic conventions want it: user and password replaced by
/// `REDACTED:REDACTED`, and the values of signature and secret query parameters by
/// `REDACTED`, within [`MAX_URL_FULL_LEN`]. Formatted only by a layer that reads the field.
pub(crate) struct RedactedUrl<'a>(pub(crate) &'a Uri);

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        let written = |part: Option<&str>| part.map_or(0, str::len);
        // Redaction makes a URL at most about 2.6 times as long (`sig=&` becomes
        // `sig=REDACTED&`; the userinfo `REDACTED:REDACTED@`): one within a third of the bound
        // is written as it goes, a longer one made and cut first.
        let source = written(uri.authority().map(|authority| authority.as_str()))
            + written(uri.path_and_query().map(|path| path.as_str()));
        if source <= MAX_URL_FULL_LEN / 3 - 32 {
            return self.write(f);
        }
        let mut full = String::new();
        self.write(&mut full)?;
        f.write_str(&periscope_context::text::cut(&full, MAX_URL_FULL_LEN))
    }
}

impl RedactedUrl<'_> {
    fn write(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            match authority.as_str().rsplit_once('@') {
                Some((_, host)) => write!(f, "REDACTED:REDACTED@{host}")?,
                None => f.write_str(authority.as_str())?,
            }
        }
        f.write_str(uri.path())?;
        let Some(query) = uri.query() else {
            return Ok(());
        };
        f.write_str("?")?;
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((key, _)) if sensitive_query_key(key) => {
                    write!(f, "{key}=REDACTED")?;
                }
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// `server.port` of a client span, which the HTTP semantic conventions require: the URI's
/// port, else the default port of its scheme (80 for `http`, 443 for `https`), where the
/// request goes.
pub(crate) fn server_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or_else(|| match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => Some(80),
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Some(443),
        _ => None,
    })
}

/// Records the context's ids on `span` (with OpenTelemetry, once the exported span has them).
/// As text, where the span's creation records `Display` values: the OpenTelemetry layer turns
/// every value into a string attribute, and copies text for less than it formats a value
/// (about 1,800 instructions per request in the exporting full stack).
pub(crate) fn record_ids(span: &Span, ctx: &RequestContext) {
    // One record of both: each layer takes a record at a cost of its own (the log layer
    // formats and merges its kept values, the OpenTelemetry layer updates its span data).
    tracing::record_all!(
        span,
        trace_id = ctx.trace_id.to_hex().as_str(),
        span_id = ctx.span_id.to_hex().as_str(),
    );
}

/// Records the tenant fields on `span`.
pub(crate) fn record_tenant(span: &Span, tenant: &Tenant) {
    if tenant.is_empty() {
        return;
    }
    let fields = tenant.span_fields();
    for (name, value) in SPAN_TENANT_FIELDS.iter().zip(fields.named) {
        if let Some(value) = value {
            span.record(*name, value);
        }
    }
    if let Some(others) = fields.others {
        span.record(periscope_context::SPAN_TENANT_OTHERS, others.as_str());
    }
}

/// The fields the status is recorded in, found once for the spans of one callsite: recorded
/// by name, a field is found by comparing the name with each of the span's (26 on the server
/// span); recorded by its `Field`, by comparing one callsite. A `Field` records only on spans
/// of the callsite it was found on (tracing ignores it on any other), so the fields of a span
/// from another callsite are found by name, as before.
pub(crate) struct StatusFields(OnceLock<Found>);

/// The server span's status fields.
pub(crate) static SERVER_FIELDS: StatusFields = StatusFields(OnceLock::new());
/// The client span's status fields.
pub(crate) static CLIENT_FIELDS: StatusFields = StatusFields(OnceLock::new());
/// The status fields of job spans.
pub(crate) static JOB_FIELDS: StatusFields = StatusFields(OnceLock::new());

/// The status fields of one callsite's spans (none for a disabled span).
#[derive(Clone, Default)]
struct Found {
    callsite: Option<Identifier>,
    status_code: Option<Field>,
    grpc_code: Option<Field>,
    otel_status: Option<Field>,
    error_type: Option<Field>,
}

impl Found {
    fn of(meta: &Metadata<'_>) -> Self {
        let fields = meta.fields();
        Self {
            callsite: Some(meta.callsite()),
            status_code: fields.field("http.response.status_code"),
            grpc_code: fields.field("rpc.grpc.status_code"),
            otel_status: fields.field("otel.status_code"),
            error_type: fields.field("error.type"),
        }
    }
}

impl StatusFields {
    /// The fields of `span`: those found on this callsite's first span where `span` is of the
    /// same callsite, else found now.
    #[inline]
    fn of(&self, span: &Span) -> Cow<'_, Found> {
        let Some(meta) = span.metadata() else {
            return Cow::Owned(Found::default());
        };
        let found = self.0.get_or_init(|| Found::of(meta));
        if found.callsite == Some(meta.callsite()) {
            Cow::Borrowed(found)
        } else {
            Cow::Owned(Found::of(meta))
        }
    }
}

fn record(span: &Span, field: &Option<Field>, value: impl Value) {
    if let Some(field) = field {
        span.record(field, value);
    }
}

/// Records the response status; `otel.status_code` is `ERROR` from `error_from` up (5xx for a
/// server span, 4xx for a client span, as the HTTP semantic conventions say), with `error.type`
/// the status code as text. A trailers-only gRPC answer (200 with `grpc-status`) also records
/// `rpc.grpc.status_code` and is judged by the HTTP status its code stands for: for a server
/// span that fails exactly the codes the gRPC conventions name, for a client span every code
/// but `OK`; its `error.type` is the code's name (`UNAVAILABLE`). Returns whether the span
/// failed.
pub(crate) fn record_status(
    span: &Span,
    fields: &StatusFields,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    error_from: u16,
) -> bool {
    let fields = fields.of(span);
    record(span, &fields.status_code, i64::from(status.as_u16()));
    let grpc = answer_code(status, headers);
    let judged = match grpc {
        Some(code) => {
            record(span, &fields.grpc_code, i64::from(code.value()));
            code.http_status()
        }
        None => status,
    };
    let failed = judged.as_u16() >= error_from;
    if failed {
        record(span, &fields.otel_status, "ERROR");
        match grpc {
            Some(code) => record(span, &fields.error_type, code.name()),
            None => record(span, &fields.error_type, status.as_str()),
        };
    }
    failed
}

/// Records the code a gRPC call ended with, known after its head (its trailers'):
/// `rpc.grpc.status_code`, and `otel.status_code` `ERROR` with `error.type` the code's name
/// when the HTTP status the code stands for is `error_from` or above, as [`record_status`] does
/// for a trailers-only answer.
pub(crate) fn record_grpc_code(
    span: &Span,
    fields: &StatusFields,
    code: GrpcCode,
    error_from: u16,
) {
    let fields = fields.of(span);
    record(span, &fields.grpc_code, i64::from(code.value()));
    if code.http_status().as_u16() >= error_from {
        record(span, &fields.otel_status, "ERROR");
        record(span, &fields.error_type, code.name());
    }
}

/// Records a gRPC call answered without gRPC (no gRPC `content-type`): its HTTP status, and
/// `code`, what its caller reads from that status, as the call's failure.
pub(crate) fn record_plain_answer(
    span: &Span,
    fields: &StatusFields,
    status: http::StatusCode,
    code: GrpcCode,
) {
    let fields = fields.of(span);
    record(span, &fields.status_code, i64::from(status.as_u16()));
    record(span, &fields.grpc_code, i64::from(code.value()));
    record(span, &fields.otel_status, "ERROR");
    record(span, &fields.error_type, code.name());
}

/// Records a failed call (no response at all).
pub(crate) fn record_failure(span: &Span, fields: &StatusFields, error_type: &str) {
    let fields = fields.of(span);
    record(span, &fields.otel_status, "ERROR");
    record(span, &fields.error_type, error_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One recorded field: `(span name, field, value)`.
    type RecordedField = (String, String, String);

    /// The span fields recorded after creation, one list per record.
    #[derive(Clone, Default)]
    struct Recorded(std::sync::Arc<std::sync::Mutex<Vec<Vec<RecordedField>>>>);

    impl<S> tracing_subscriber::Layer<S> for Recorded
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visitor<'a>(&'a str, &'a mut Vec<RecordedField>);
            impl tracing::field::Visit for Visitor<'_> {
                fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                    let entry = (
                        self.0.to_owned(),
                        field.name().to_owned(),
                        format!("{value:?}"),
                    );
                    self.1.push(entry);
                }
            }
            let name = ctx.span(id).map_or("?", |span| span.name());
            let mut record = Vec::new();
            values.record(&mut Visitor(name, &mut record));
            self.0.lock().unwrap().push(record);
        }
    }

    #[test]
    fn status_fields_found_on_one_callsite_record_on_spans_of_another() {
        use tracing::field::Empty;
        use tracing_subscriber::layer::SubscriberExt;

        let recorded = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(recorded.clone());
        tracing::subscriber::with_default(subscriber, || {
            let fields = StatusFields(OnceLock::new());
            let server = || {
                tracing::info_span!(
                    "server",
                    otel.status_code = Empty,
                    http.response.status_code = Empty,
                    rpc.grpc.status_code = Empty,
                    error.type = Empty,
                )
            };
            // Another callsite, its fields in another order.
            let other = tracing::info_span!(
                "other",
                error.type = Empty,
                rpc.grpc.status_code = Empty,
                http.response.status_code = Empty,
                otel.status_code = Empty,
            );
            let none = http::HeaderMap::new();
            assert!(record_status(
                &server(),
                &fields,
                http::StatusCode::BAD_GATEWAY,
                &none,
                500
            ));
            assert!(record_status(
                &other,
                &fields,
                http::StatusCode::SERVICE_UNAVAILABLE,
                &none,
                500
            ));
            record_grpc_code(&other, &fields, GrpcCode::UNAVAILABLE, 500);
            record_failure(&server(), &fields, "_OTHER");
            let disabled = Span::none();
            assert!(!record_status(
                &disabled,
                &fields,
                http::StatusCode::OK,
                &none,
                500
            ));
        });
        let recorded = recorded.0.lock().unwrap().concat();
        let expected = [
            ("server", "http.response.status_code", "502"),
            ("server", "otel.status_code", "\"ERROR\""),
            ("server", "error.type", "\"502\""),
            ("other", "http.response.status_code", "503"),
            ("other", "otel.status_code", "\"ERROR\""),
            ("other", "error.type", "\"503\""),
            ("other", "rpc.grpc.status_code", "14"),
            ("other", "otel.status_code", "\"ERROR\""),
            ("other", "error.type", "\"UNAVAILABLE\""),
            ("server", "otel.status_code", "\"ERROR\""),
            ("server", "error.type", "\"_OTHER\""),
        ]
        .map(|(span, field, value)| (span.to_owned(), field.to_owned(), value.to_owned()));
        assert_eq!(recorded, expected);
    }

    /// The ids go onto the span in one record, as text: each layer takes a record at a cost
    /// of its own (two records of one id each cost the exporting full stack about 2,000
    /// instructions more per request when sampled out, 3,100 when sampled).
    #[test]
    fn the_ids_are_recorded_together_as_text() {
        use tracing::field::Empty;
        use tracing_subscriber::layer::SubscriberExt;

        let recorded = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(recorded.clone());
        let ctx = RequestContext::new_root();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("server", trace_id = Empty, span_id = Empty);
            record_ids(&span, &ctx);
        });
        let field = |name: &str, value: String| ("server".to_owned(), name.to_owned(), value);
        let expected = vec![vec![
            field("trace_id", format!("{:?}", ctx.trace_id.to_string())),
            field("span_id", format!("{:?}", ctx.span_id.to_string())),
        ]];
        assert_eq!(*recorded.0.lock().unwrap(), expected);
    }

    #[test]
    fn unknown_methods_fold_into_other() {
        assert_eq!(method_name(&Method::GET), "GET");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_name(&custom), "_OTHER");
        assert_eq!(method_original(&custom).as_deref(), Some("PURGE"));
        assert_eq!(method_original(&Method::GET), None);
        assert_eq!(span_method(method_name(&custom)), "HTTP");
        assert_eq!(span_method(method_name(&Method::PATCH)), "PATCH");
    }

    /// A parameter's name is the same to the server percent-encoded or not, so an encoded
    /// secret name (as some URL builders write every character they were given) must not
    /// carry its value into the span.
    #[test]
    fn percent_encoded_secret_names_are_redacted() {
        let redacted = |uri: &str| RedactedUrl(&uri.parse().unwrap()).to_string();
        assert_eq!(
            redacted("http://h/cb?access%5Ftoken=t&%61pi_key=k&%53ignature=s&page=%32&a%20b=c"),
            "http://h/cb?access%5Ftoken=REDACTED&%61pi_key=REDACTED&%53ignature=REDACTED\
             &page=%32&a%20b=c"
        );
        // A name that decodes to no valid UTF-8 is read lossily, never refused.
        assert_eq!(
            redacted("http://h/?%FFtoken=t&%FF=x"),
            "http://h/?%FFtoken=REDACTED&%FF=x"
        );
    }

    #[test]
    fn urls_lose_credentials_and_signatures() {
        let redacted = |uri: &str| RedactedUrl(&uri.parse().unwrap()).to_string();
        assert_eq!(
            redacted("http://alice:s3cret@inventory.internal:8080/items?id=7&sig=abc&Signature=x"),
            "http://REDACTED:REDACTED@inventory.internal:8080/items?id=7&sig=REDACTED&Signature=REDACTED"
        );
        assert_eq!(redacted("https://token@h/"), "https://REDACTED:REDACTED@h/");
        // An AWS presigned URL, and parameters named as the log redaction reads secrets.
        assert_eq!(
            redacted(
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Security-Token=tok\
                 &X-Amz-Signature=abc&X-Amz-Expires=60"
            ),
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=REDACTED\
             &X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60"
        );
        assert_eq!(
            redacted("/cb?access_token=t&API_KEY=k&state=xyz&page=2"),
            "/cb?access_token=REDACTED&API_KEY=REDACTED&state=xyz&page=2"
        );
        // Everything else is written as the URI itself writes it.
        for plain in [
            "http://inventory.internal/items/7?a=1&&b&c=",
            "https://h:443",
            "/relative?x=1",
            "h.internal:443",
        ] {
            let uri: Uri = plain.parse().unwrap();
            assert_eq!(RedactedUrl(&uri).to_string(), uri.to_string());
        }
    }

    /// A URL a gateway forwards with a client's huge query is cut to the bound, on a character
    /// boundary, its secrets redacted first; one within the bound is written whole.
    #[test]
    fn url_full_is_cut_to_its_bound() {
        let long: Uri = format!(
            "http://up.internal/v1?token=S3cr3t&q={}",
            "%C3%A9".repeat(10_000)
        )
        .parse()
        .unwrap();
        let written = RedactedUrl(&long).to_string();
        assert_eq!(written.len(), MAX_URL_FULL_LEN);
        assert!(written.starts_with("http://up.internal/v1?token=REDACTED&q=%C3%A9"));
        assert!(written.ends_with('…'), "{}", &written[written.len() - 8..]);
        let within: Uri = format!(
            "http://up.internal/?q={}",
            "a".repeat(MAX_URL_FULL_LEN - 30)
        )
        .parse()
        .unwrap();
        assert_eq!(RedactedUrl(&within).to_string(), within.to_string());
        // Parameters whose redaction lengthens them most, empty values of secret keys: the
        // bound holds whatever the source's length.
        for pairs in [100, 409, 600, 5_000] {
            let empty: Uri = format!("http://h/?{}", "sig=&".repeat(pairs))
                .parse()
                .unwrap();
            let written = RedactedUrl(&empty).to_string();
            assert!(
                written.len() <= MAX_URL_FULL_LEN,
                "{pairs}: {}",
                written.len()
            );
        }
    }
}

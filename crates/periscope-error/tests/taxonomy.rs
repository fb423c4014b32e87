//! Every built-in code renders with its status, class and retryability, and round-trips
//! through the client decoder, as the envelope and as problem details.

use std::time::Duration;

use http::{Request, Response};
use periscope_context::RequestContext;
use periscope_error::{ApiError, BUILTIN, Decoder, ErrorClass, ErrorCode, HttpError, error_codes};
use serde_json::Value;

error_codes! {
    /// Codes of an imaginary GPU scheduler.
    pub const SCHEDULER_CODES = [
        /// The node is being drained.
        NODE_DRAINING = ErrorCode::new("node_draining", ErrorClass::Provisioning)
            .with_status(http::StatusCode::CONFLICT)
            .with_retryable(true),
        /// The job spec asks for more GPUs than a node has.
        TOO_MANY_GPUS = ErrorCode::new("too_many_gpus", ErrorClass::Validation)
            .with_status(http::StatusCode::UNPROCESSABLE_ENTITY),
    ];
}

fn render(code: ErrorCode, ctx: &RequestContext, problem: bool) -> Response<Vec<u8>> {
    let mut error = HttpError::from(code);
    if code.is_retryable() {
        error = error.with_retry_after(Duration::from_secs(9));
    }
    let mut request = Request::get("/v1/thing");
    if problem {
        request = request.header("accept", "application/problem+json");
    }
    let mut request = request.body(()).unwrap();
    request.extensions_mut().insert(ctx.clone());
    error.into_http_response_for(&request)
}

fn check_round_trip(code: ErrorCode, decoder: &Decoder) {
    let ctx = RequestContext::new_root();
    for problem in [false, true] {
        let response = render(code, &ctx, problem);
        assert_eq!(response.status(), code.status(), "{code}");
        let json: Value = serde_json::from_slice(response.body()).unwrap();
        let members = if problem { &json } else { &json["error"] };
        assert_eq!(members["code"], code.name());
        assert_eq!(members["retryable"], code.is_retryable(), "{code}");
        assert_eq!(members["request_id"], ctx.request_id.as_str());
        assert_eq!(
            response.headers().get("retry-after").is_some(),
            code.is_retryable(),
            "{code}: Retry-After with a known delay"
        );

        let decoded = decoder.decode(response.status(), response.headers(), response.body());
        assert_eq!(decoded.code(), code.name());
        assert_eq!(decoded.class(), code.class(), "{code}");
        assert_eq!(decoded.is_retryable(), code.is_retryable(), "{code}");
        assert_eq!(decoded.status(), code.status());
        assert_eq!(decoded.message(), code.default_message());
        assert_eq!(decoded.help(), code.help());
        assert_eq!(decoded.request_id(), Some(ctx.request_id.as_str()));
        assert_eq!(decoded.trace_id(), Some(ctx.trace_id.to_string().as_str()));
        let expected_delay = code.is_retryable().then(|| Duration::from_secs(9));
        assert_eq!(decoded.retry_after(), expected_delay);
        assert!(decoded.raw_body().is_none());
        assert_eq!(
            decoded.to_string(),
            format!(
                "{}: {} (request_id: {})",
                code.name(),
                code.default_message(),
                ctx.request_id
            )
        );
    }
}

#[test]
fn every_builtin_code_round_trips() {
    assert_eq!(BUILTIN.len(), 23);
    for code in BUILTIN {
        check_round_trip(*code, &Decoder::new());
    }
}

#[test]
fn service_codes_round_trip_with_a_decoder_that_knows_them() {
    let decoder = Decoder::new().with_codes(SCHEDULER_CODES);
    for code in SCHEDULER_CODES {
        check_round_trip(*code, &decoder);
    }
}

#[test]
fn a_decoder_without_the_service_codes_still_classes_them() {
    let ctx = RequestContext::new_root();
    let response = render(NODE_DRAINING, &ctx, false);
    let decoded = ApiError::from_response(&response);
    // The `node_` family says provisioning even though the status is 409.
    assert_eq!(decoded.class(), ErrorClass::Provisioning);
    // The envelope's `retryable` wins over the class.
    assert!(decoded.is_retryable());

    let response = render(TOO_MANY_GPUS, &ctx, false);
    let decoded = ApiError::from_response(&response);
    assert_eq!(
        decoded.class(),
        ErrorClass::Validation,
        "from the 422 status"
    );
}

//! Building the answers: JSON bodies and error envelopes, never cached by a proxy.

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use http::{Request, Response};
use http_body_util::Full;
use periscope_error::{BoxError, HttpError, codes};
use serde::Serialize;

use crate::access::Denied;
use crate::endpoint::Endpoint;

/// The response body of every admin answer.
pub type AdminBody = Full<Bytes>;

/// A `200` JSON answer of `body`, already encoded.
pub(crate) fn json_bytes(body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body.into()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    guarded(response)
}

/// `response` marked for what it is: debug answers describe this instant and may be
/// sensitive, so no cache may keep them, and no browser may read them as anything but their
/// content type.
fn guarded(mut response: Response<AdminBody>) -> Response<AdminBody> {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The admin speaks HTTP only: an error layer outside keeps its answers so.
    response
        .extensions_mut()
        .insert(periscope_context::grpc::HttpOnly);
    response
}

/// A `200` JSON answer of `value`.
pub(crate) fn json(value: &impl Serialize) -> Response<AdminBody> {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(body),
        // Only a map with non-string keys or a failing `Serialize` impl gets here.
        Err(error) => internal(error),
    }
}

/// The error envelope for `error`, with the ids of `request`'s context when it has one.
pub(crate) fn error<T>(error: HttpError, request: &Request<T>) -> Response<AdminBody> {
    // The admin speaks HTTP and JSON only: a gRPC content type must not turn a refused token
    // guess into a gRPC answer, an HTTP 200.
    guarded(error.into_http_only_response_for(request))
}

/// 500 `internal_error`; `source` goes to the log only.
pub(crate) fn internal(source: impl Into<BoxError>) -> Response<AdminBody> {
    guarded(HttpError::internal(source).into_http_response())
}

/// 404 `route_not_found`: an unknown path, or a debug path while debug endpoints are off. The
/// help names the probe and metrics paths `served`, never a debug one: a caller without the
/// token must not learn which debug endpoints exist.
pub(crate) fn not_found<T>(
    request: &Request<T>,
    served: impl Iterator<Item = Endpoint>,
) -> Response<AdminBody> {
    let paths: Vec<&str> = served
        .filter(|endpoint| !endpoint.is_debug())
        .map(Endpoint::path)
        .collect();
    let help = if paths.is_empty() {
        "This admin service serves no endpoint".to_owned()
    } else {
        format!("The admin paths here are {}", paths.join(", "))
    };
    error(
        HttpError::new(
            codes::ROUTE_NOT_FOUND,
            "No admin endpoint answers on this path",
        )
        .with_help(help),
        request,
    )
}

/// 405 `method_not_allowed` with the endpoint's `Allow` header.
pub(crate) fn method_not_allowed<T>(
    endpoint: Endpoint,
    request: &Request<T>,
) -> Response<AdminBody> {
    let message = format!(
        "{} answers {} only",
        endpoint.path(),
        endpoint.allow_header()
    );
    let mut response = error(HttpError::new(codes::METHOD_NOT_ALLOWED, message), request);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(endpoint.allow_header()));
    response
}

/// 401 `token_missing` or `token_invalid`, or 400 `invalid_request` for a malformed header, with
/// the `WWW-Authenticate` challenge of RFC 6750;
/// 403 `insufficient_permissions` for a separate listener's request to a host it does not know.
pub(crate) fn unauthorized<T>(denied: Denied, request: &Request<T>) -> Response<AdminBody> {
    let (code, message, challenge) = match denied {
        Denied::Host => {
            let refused = HttpError::new(
                codes::INSUFFICIENT_PERMISSIONS,
                "This admin listener answers debug requests addressed to an IP address, \
                 `localhost`, or a host name it was given",
            )
            .with_help(
                "Use the listener's IP address, or add the name you use with \
                 `AdminBuilder::debug_hosts` (names are checked against DNS rebinding)",
            );
            return error(refused, request);
        }
        Denied::Missing => (
            codes::TOKEN_MISSING,
            "Debug endpoints need an `Authorization: Bearer <admin token>` header",
            "Bearer realm=\"admin\"",
        ),
        Denied::Invalid => (
            codes::TOKEN_INVALID,
            "The admin token is not valid: send `Authorization: Bearer <admin token>`",
            "Bearer realm=\"admin\", error=\"invalid_token\"",
        ),
        // RFC 6750 §3.1: a malformed request is a 400 `invalid_request`.
        Denied::Malformed => (
            codes::INVALID_REQUEST,
            "Send one `Authorization: Bearer <admin token>` header, with the token",
            "Bearer realm=\"admin\", error=\"invalid_request\"",
        ),
    };
    let mut response = error(HttpError::new(code, message), request);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

/// 400 `invalid_request` listing what is wrong.
#[cfg(feature = "log")]
pub(crate) fn invalid<T>(
    message: &'static str,
    violations: Vec<periscope_error::Violation>,
    request: &Request<T>,
) -> Response<AdminBody> {
    error(
        HttpError::new(codes::INVALID_REQUEST, message).with_violations(violations),
        request,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn refusals_carry_their_challenge_and_allow_headers() {
        let request = Request::get("/debug/status").body(()).unwrap();
        let missing = unauthorized(Denied::Missing, &request);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"admin\""
        );
        let invalid = unauthorized(Denied::Invalid, &request);
        assert!(
            invalid.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        let wrong = method_not_allowed(Endpoint::LogLevel, &request);
        assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.headers()[ALLOW], "GET, HEAD, POST");
        assert_eq!(wrong.headers()[CACHE_CONTROL], "no-store");
        for answer in [&missing, &invalid, &wrong, &json_bytes("{}")] {
            assert_eq!(answer.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }
}

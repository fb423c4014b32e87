//! The OpenTelemetry RPC fields of a gRPC call's server and client spans: `rpc.system`,
//! `rpc.service`, `rpc.method`, and the span name `{service}/{method}`.
//!
//! The path of a call comes from the client: its segments are taken only when they are short
//! and made of the characters a proto name can have, so no untrusted text goes into span
//! names or these fields.

use std::fmt;

use http::{HeaderMap, Method};
use periscope_context::grpc::is_grpc_request;
use tracing::Span;

/// The longest `package.Service` or `Method` taken from a path.
const MAX_SEGMENT: usize = 128;

/// The service and method of a gRPC call, from its `/package.Service/Method` path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RpcName<'a> {
    service: &'a str,
    method: &'a str,
}

impl<'a> RpcName<'a> {
    /// `/package.Service/Method`, both segments at most [`MAX_SEGMENT`] bytes of ASCII
    /// letters, digits, `_` and `.`; `None` for any other path.
    pub(crate) fn parse(path: &'a str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        (proto_name(service) && proto_name(method)).then_some(Self { service, method })
    }

    /// The name of a call to `path`: from the route template when it has the shape (it is the
    /// service's, not the client's), else from the path.
    pub(crate) fn of(route: Option<&'a str>, path: &'a str) -> Option<Self> {
        route.and_then(Self::parse).or_else(|| Self::parse(path))
    }

    /// The name of a request, when it is a gRPC call (a `POST` with a gRPC `content-type`)
    /// whose route template or path has the shape. A plain HTTP request costs the method
    /// comparison, and for a `POST` the `content-type` check: nothing is allocated.
    // Inlined into `Correlation::call`, compiled in the service's crate (every request).
    #[inline]
    pub(crate) fn of_request(
        method: &Method,
        headers: &HeaderMap,
        route: Option<&'a str>,
        path: &'a str,
    ) -> Option<Self> {
        // gRPC and gRPC-Web calls are always POSTs.
        if method == Method::POST && is_grpc_request(headers) {
            Self::of(route, path)
        } else {
            None
        }
    }

    /// Records `rpc.system = "grpc"`, `rpc.service` and `rpc.method` on `span`, which declares
    /// them.
    pub(crate) fn record(self, span: &Span) {
        span.record("rpc.system", "grpc");
        span.record("rpc.service", self.service);
        span.record("rpc.method", self.method);
    }
}

/// The span name the RPC conventions want: `package.Service/Method`.
impl fmt::Display for RpcName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

fn proto_name(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proto_shaped_paths_name_a_call() {
        let name = RpcName::parse("/inventory.v1.Items/Get_2").unwrap();
        assert_eq!((name.service, name.method), ("inventory.v1.Items", "Get_2"));
        assert_eq!(name.to_string(), "inventory.v1.Items/Get_2");
        assert!(RpcName::parse("/Greeter/SayHello").is_some());
        let long = "A".repeat(MAX_SEGMENT);
        assert!(RpcName::parse(&format!("/{long}/{long}")).is_some());
        for path in [
            "",
            "/",
            "/pkg.Svc",
            "/pkg.Svc/",
            "//Get",
            "pkg.Svc/Get",
            "/pkg.Svc/Get/more",
            "/a b/c",
            "/a%20b/c",
            "/pkg.Svc/Get?x=1",
            "/pkg-svc/Get",
            "/pkg.Svc/{*rest}",
            "/pkg.Svc/Gét",
            &format!("/pkg.Svc/{long}A"),
            &format!("/{}/Get", "A".repeat(1024)),
        ] {
            assert_eq!(RpcName::parse(path), None, "{path}");
        }
    }

    #[test]
    fn the_route_template_comes_first() {
        let from_route = RpcName::of(Some("/pkg.Svc/Get"), "/other.Svc/Put").unwrap();
        assert_eq!(from_route.to_string(), "pkg.Svc/Get");
        // A template with parameters has not the shape: the path names the call.
        let from_path = RpcName::of(Some("/pkg.Svc/{*rest}"), "/pkg.Svc/Put").unwrap();
        assert_eq!(from_path.to_string(), "pkg.Svc/Put");
        assert_eq!(RpcName::of(None, "/a b/c"), None);
    }

    #[test]
    fn only_grpc_posts_are_calls() {
        let mut headers = HeaderMap::new();
        let path = "/pkg.Svc/Get";
        assert_eq!(
            RpcName::of_request(&Method::POST, &headers, None, path),
            None
        );
        headers.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(RpcName::of_request(&Method::POST, &headers, None, path).is_some());
        assert_eq!(
            RpcName::of_request(&Method::GET, &headers, None, path),
            None
        );
        headers.insert("content-type", "application/grpcx".parse().unwrap());
        assert_eq!(
            RpcName::of_request(&Method::POST, &headers, None, path),
            None
        );
    }
}

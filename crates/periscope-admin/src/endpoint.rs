//! The admin paths and the methods each answers.

use http::Method;

/// One path of the admin surface.
///
/// [`Admin::endpoints`](crate::Admin::endpoints) lists the ones a given admin service serves,
/// for example to keep them out of access logs; to route requests to it without axum, use
/// [`Admin::handles`](crate::Admin::handles), which also takes every `/debug/` path while
/// debug access is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /health`: liveness.
    Health,
    /// `GET /ready`: readiness.
    Ready,
    /// `GET /startup`: startup gates.
    Startup,
    /// `GET /metrics`: Prometheus or OpenMetrics text.
    Metrics,
    /// `GET /debug/status`: service, version, uptime, in-flight requests, GPU, sections.
    Status,
    /// `GET /debug/logs?lines=N&level=L`: recent log lines.
    Logs,
    /// `GET /debug/config`: the configuration with secrets masked.
    Config,
    /// `GET` and `POST /debug/log-level`: the log filter, changed at run time.
    LogLevel,
    /// `GET /debug/memory`: process memory figures.
    Memory,
}

/// The path prefix of every debug endpoint: the namespace the token guards.
pub(crate) const DEBUG_PREFIX: &str = "/debug/";

const READ: &[Method] = &[Method::GET, Method::HEAD];
const READ_WRITE: &[Method] = &[Method::GET, Method::HEAD, Method::POST];

impl Endpoint {
    /// Every endpoint, probes first.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Health,
        Endpoint::Ready,
        Endpoint::Startup,
        Endpoint::Metrics,
        Endpoint::Status,
        Endpoint::Logs,
        Endpoint::Config,
        Endpoint::LogLevel,
        Endpoint::Memory,
    ];

    /// The path it answers on.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Health => "/health",
            Endpoint::Ready => "/ready",
            Endpoint::Startup => "/startup",
            Endpoint::Metrics => "/metrics",
            Endpoint::Status => "/debug/status",
            Endpoint::Logs => "/debug/logs",
            Endpoint::Config => "/debug/config",
            Endpoint::LogLevel => "/debug/log-level",
            Endpoint::Memory => "/debug/memory",
        }
    }

    /// Whether it is a debug endpoint: off by default, behind the token when on.
    pub const fn is_debug(self) -> bool {
        !matches!(
            self,
            Endpoint::Health | Endpoint::Ready | Endpoint::Startup | Endpoint::Metrics
        )
    }

    /// The endpoint answering on `path`.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The methods it answers.
    pub fn methods(self) -> &'static [Method] {
        match self {
            Endpoint::LogLevel => READ_WRITE,
            _ => READ,
        }
    }

    /// The `Allow` header of a 405 answer.
    pub(crate) fn allow_header(self) -> &'static str {
        match self {
            Endpoint::LogLevel => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_allow_lists_match_the_methods() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
            let listed: Vec<&str> = endpoint.methods().iter().map(Method::as_str).collect();
            assert_eq!(listed.join(", "), endpoint.allow_header());
            assert_eq!(endpoint.is_debug(), endpoint.path().starts_with("/debug/"));
        }
        assert_eq!(Endpoint::from_path("/debug/status/"), None);
        assert_eq!(Endpoint::from_path("/debug"), None);
    }
}

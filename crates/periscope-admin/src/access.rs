//! Who may call the debug endpoints: nobody (the default), holders of a bearer token, or anyone
//! who can reach a separate admin listener.

use std::fmt;
use std::sync::Arc;

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, Uri};
use subtle::{Choice, ConstantTimeEq};

/// Tokens shorter than this get a warning when the admin service is built.
const SHORT_TOKEN: usize = 16;

/// Access to the `/debug/*` endpoints. Probes and `/metrics` never need a token.
///
/// ```
/// use periscope_admin::DebugAccess;
///
/// // From the environment: no ADMIN_TOKEN (or an empty one) keeps the debug endpoints off.
/// let access = DebugAccess::from_token(std::env::var("ADMIN_TOKEN").ok());
/// # let _ = access;
/// ```
#[derive(Clone, Default)]
pub enum DebugAccess {
    /// The debug endpoints do not exist: they answer 404 `route_not_found` like any unknown
    /// path. The default.
    #[default]
    Disabled,
    /// The debug endpoints answer requests carrying `Authorization: Bearer <token>`, compared
    /// in constant time; others get 401 `token_missing` or `token_invalid`. An empty token
    /// keeps the endpoints disabled.
    Token(String),
    /// The debug endpoints answer without a token, because this admin service runs on its own
    /// listener that only operators can reach. The caller must bind that listener to a private
    /// interface (`127.0.0.1`, a pod-internal or management network), never to a public one,
    /// and must not expose its port through a public load balancer or Kubernetes Service.
    ///
    /// Only requests addressed to an IP address, `localhost`, or a name given to
    /// [`AdminBuilder::debug_hosts`](crate::AdminBuilder::debug_hosts) are answered (403
    /// otherwise), so a web page cannot reach the listener through DNS rebinding.
    SeparateListener,
}

impl DebugAccess {
    /// `Token(token)` for a non-empty token, `Disabled` for `None` or an empty (or blank) one:
    /// the natural reading of an optional `ADMIN_TOKEN` variable.
    pub fn from_token(token: Option<String>) -> Self {
        match token {
            Some(token) if !token.trim().is_empty() => DebugAccess::Token(token),
            _ => DebugAccess::Disabled,
        }
    }
}

/// Tokens are compared in constant time, as a request's token is: comparing a configured
/// access with one built from input must not tell the token byte by byte.
impl PartialEq for DebugAccess {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DebugAccess::Token(a), DebugAccess::Token(b)) => {
                tokens_equal(a.as_bytes(), b.as_bytes())
            }
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for DebugAccess {}

impl fmt::Debug for DebugAccess {
    // The token never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebugAccess::Disabled => f.write_str("Disabled"),
            DebugAccess::Token(_) => f.write_str("Token([REDACTED])"),
            DebugAccess::SeparateListener => f.write_str("SeparateListener"),
        }
    }
}

/// The access rule as the service applies it.
#[derive(Clone)]
pub(crate) enum Gate {
    Closed,
    Token(Arc<[u8]>),
    /// Open to requests addressed to an IP address, `localhost` or one of these names.
    Open(Arc<[String]>),
}

/// Why a debug request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `Authorization` header.
    Missing,
    /// `Bearer` with a token that is not the admin token.
    Invalid,
    /// Two `Authorization` headers, or `Bearer` without a token (RFC 6750 `invalid_request`).
    Malformed,
    /// A separate listener's request addressed to a host name it does not know.
    Host,
}

impl Gate {
    pub(crate) fn new(access: DebugAccess, hosts: &[String]) -> Self {
        match access {
            DebugAccess::Disabled => Gate::Closed,
            DebugAccess::SeparateListener => {
                Gate::Open(hosts.iter().filter_map(|host| known_name(host)).collect())
            }
            DebugAccess::Token(token) => {
                let token = token.trim();
                if token.is_empty() {
                    tracing::error!(
                        "the admin token is empty: the debug endpoints stay disabled; set a long random token"
                    );
                    return Gate::Closed;
                }
                if token.len() < SHORT_TOKEN {
                    tracing::warn!(
                        length = token.len(),
                        "the admin token is short: use at least 32 random characters"
                    );
                }
                Gate::Token(Arc::from(token.as_bytes()))
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self, Gate::Closed)
    }

    /// Whether a request to `uri` with `headers` may reach a debug endpoint.
    pub(crate) fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Denied> {
        let expected = match self {
            Gate::Open(hosts) => return addressed_to_known_host(uri, headers, hosts),
            // Unreachable in practice: closed endpoints are not routed.
            Gate::Closed => return Err(Denied::Invalid),
            Gate::Token(expected) => expected,
        };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(Denied::Missing);
        };
        if values.next().is_some() {
            return Err(Denied::Malformed);
        }
        match bearer_token(value.as_bytes()) {
            // Another scheme (`Basic ...`) sends no bearer token at all: answered as a request
            // without one, with no error code (RFC 6750 §3.1), so a client does not take it
            // for a bad token to refresh.
            Credentials::OtherScheme => Err(Denied::Missing),
            Credentials::Malformed => Err(Denied::Malformed),
            Credentials::Token(given) if tokens_equal(given, expected) => Ok(()),
            Credentials::Token(_) => Err(Denied::Invalid),
        }
    }
}

/// Whether the request names a host DNS rebinding cannot forge: an IP address, `localhost`
/// (`*.localhost` resolves to loopback in browsers), or a configured name. A request naming
/// none (no `Host`, as from some tools) is not a browser's, and passes.
fn addressed_to_known_host(uri: &Uri, headers: &HeaderMap, known: &[String]) -> Result<(), Denied> {
    let mut values = headers.get_all(HOST).iter();
    let host = match (uri.host(), values.next()) {
        (Some(host), _) => host,
        (None, None) => return Ok(()),
        (None, Some(value)) => {
            if values.next().is_some() {
                return Err(Denied::Host);
            }
            let value = value.to_str().map_err(|_| Denied::Host)?;
            host_of(value).ok_or(Denied::Host)?
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let literal = host
        .strip_prefix('[')
        .and_then(|v6| v6.strip_suffix(']'))
        .map_or_else(
            || host.parse::<Ipv4Addr>().is_ok(),
            |v6| v6.parse::<Ipv6Addr>().is_ok(),
        );
    if literal || host == "localhost" || host.ends_with(".localhost") || known.contains(&host) {
        Ok(())
    } else {
        Err(Denied::Host)
    }
}

/// A name given to `debug_hosts` as requests' hosts are compared: its port left out (a
/// `Host` header's is), without a trailing dot, lower case.
fn known_name(name: &str) -> Option<String> {
    let host = host_of(name)?;
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The host of a `Host` header value, without its port (`[::1]:9000` gives `[::1]`).
fn host_of(value: &str) -> Option<&str> {
    let value = value.trim();
    let host = match value.rfind(':') {
        Some(colon) if !value[colon..].contains(']') => {
            let port = &value[colon + 1..];
            port.bytes()
                .all(|b| b.is_ascii_digit())
                .then_some(&value[..colon])?
        }
        _ => value,
    };
    (!host.is_empty()).then_some(host)
}

/// What an `Authorization` header holds.
enum Credentials<'a> {
    /// A scheme other than `Bearer`.
    OtherScheme,
    /// Nothing, `Bearer` alone, or `Bearer` not followed by a space.
    Malformed,
    /// The credentials of `Bearer <token>`.
    Token(&'a [u8]),
}

/// Reads `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Credentials<'_> {
    let value = value.trim_ascii();
    let Some((scheme, rest)) = value.split_at_checked(6) else {
        return match value {
            b"" => Credentials::Malformed,
            _ if b"bearer".starts_with(&value.to_ascii_lowercase()) => Credentials::Malformed,
            _ => Credentials::OtherScheme,
        };
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Credentials::OtherScheme;
    }
    match rest.strip_prefix(b" ").map(<[u8]>::trim_ascii) {
        Some(token) if !token.is_empty() => Credentials::Token(token),
        _ => Credentials::Malformed,
    }
}

/// Compares in time that depends only on the length of `given` (which the caller already
/// knows), never on the bytes or the length of `expected`. `expected` is never empty.
fn tokens_equal(given: &[u8], expected: &[u8]) -> bool {
    let mut equal: Choice = (given.len() as u64).ct_eq(&(expected.len() as u64));
    for (a, b) in given.iter().zip(expected.iter().cycle()) {
        equal &= a.ct_eq(b);
    }
    equal.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let gate = Gate::new(DebugAccess::Token("s3cret-token-0123456789".into()), &[]);
        let check =
            |values: &[&str]| gate.check(&Uri::from_static("/debug/status"), &headers(values));
        assert_eq!(check(&["Bearer s3cret-token-0123456789"]), Ok(()));
        assert_eq!(check(&["bearer   s3cret-token-0123456789 "]), Ok(()));
        assert_eq!(check(&[]), Err(Denied::Missing));
        assert_eq!(
            check(&["Bearer s3cret-token-012345678"]),
            Err(Denied::Invalid)
        );
        assert_eq!(
            check(&["Bearer s3cret-token-01234567890"]),
            Err(Denied::Invalid)
        );
        assert_eq!(
            check(&["Bearer S3cret-token-0123456789"]),
            Err(Denied::Invalid)
        );
        // Another scheme, or none, sends no bearer token (RFC 6750 §3.1).
        assert_eq!(
            check(&["Basic s3cret-token-0123456789"]),
            Err(Denied::Missing)
        );
        assert_eq!(check(&["s3cret-token-0123456789"]), Err(Denied::Missing));
        assert_eq!(check(&["Bear"]), Err(Denied::Malformed));
        assert_eq!(check(&[""]), Err(Denied::Malformed));
        assert_eq!(
            check(&["Bearer\ts3cret-token-0123456789"]),
            Err(Denied::Malformed)
        );
        assert_eq!(
            check(&["Bearers3cret-token-0123456789"]),
            Err(Denied::Malformed)
        );
        assert_eq!(check(&["Bearer"]), Err(Denied::Malformed));
        assert_eq!(check(&["Bearer "]), Err(Denied::Malformed));
        assert_eq!(
            check(&[
                "Bearer s3cret-token-0123456789",
                "Bearer s3cret-token-0123456789"
            ]),
            Err(Denied::Malformed)
        );
    }

    #[test]
    fn a_token_repeating_a_prefix_of_the_real_one_fails() {
        // The comparison cycles over the expected token; a repeated prefix must still fail.
        assert!(!tokens_equal(b"abab", b"ab"));
        assert!(!tokens_equal(b"a", b"ab"));
        assert!(tokens_equal(b"ab", b"ab"));
    }

    #[test]
    fn empty_tokens_keep_the_endpoints_closed_and_debug_hides_the_token() {
        assert!(Gate::new(DebugAccess::Token("  ".into()), &[]).is_closed());
        assert_eq!(
            DebugAccess::from_token(Some(String::new())),
            DebugAccess::Disabled
        );
        assert_eq!(DebugAccess::from_token(None), DebugAccess::Disabled);
        let access = DebugAccess::from_token(Some("hunter2".into()));
        assert_eq!(format!("{access:?}"), "Token([REDACTED])");
    }

    /// Equal accesses are equal by value, tokens compared in constant time.
    #[test]
    fn accesses_compare_by_value() {
        let token = |t: &str| DebugAccess::Token(t.to_string());
        assert_eq!(token("s3cret"), token("s3cret"));
        assert_ne!(token("s3cret"), token("s3cres"));
        assert_ne!(token("s3cret"), token("s3cret!"));
        assert_ne!(token("s3cret"), token(""));
        assert_eq!(token(""), token(""));
        assert_ne!(token("s3cret"), DebugAccess::Disabled);
        assert_ne!(DebugAccess::SeparateListener, DebugAccess::Disabled);
        assert_eq!(DebugAccess::SeparateListener, DebugAccess::SeparateListener);
    }

    #[test]
    fn a_separate_listener_answers_only_hosts_rebinding_cannot_forge() {
        let gate = Gate::new(
            DebugAccess::SeparateListener,
            &[" My-Service-Admin.ops.svc. ".to_owned()],
        );
        let check = |uri: &'static str, hosts: &[&str]| {
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(HOST, host.parse().unwrap());
            }
            gate.check(&Uri::from_static(uri), &headers)
        };
        for fine in [
            "127.0.0.1:9000",
            "10.1.2.3",
            "[::1]:9000",
            "[fe80::1]",
            "localhost:9000",
            "LOCALHOST.",
            "admin.localhost:9000",
            "my-service-admin.ops.svc:9000",
        ] {
            assert_eq!(check("/debug/status", &[fine]), Ok(()), "{fine}");
        }
        // No host at all: not a browser.
        assert_eq!(check("/debug/status", &[]), Ok(()));
        for refused in [
            "attacker.example:9000",
            "attacker.example",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "[::1",
            "127.0.0.1:90x",
            "",
        ] {
            assert_eq!(
                check("/debug/status", &[refused]),
                Err(Denied::Host),
                "{refused}"
            );
        }
        assert_eq!(
            check("/debug/status", &["127.0.0.1", "attacker.example"]),
            Err(Denied::Host)
        );
        // HTTP/2 names the host in the URI.
        assert_eq!(
            check("http://attacker.example:9000/debug/status", &["127.0.0.1"]),
            Err(Denied::Host)
        );
        assert_eq!(check("http://127.0.0.1:9000/debug/status", &[]), Ok(()));
    }
}

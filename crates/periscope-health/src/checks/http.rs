//! An HTTP endpoint answering 2xx: a minimal HTTP/1.1 `GET` over a Tokio `TcpStream`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::check::{Check, CheckError, CheckFuture};
use crate::checks::Connector;

/// The most bytes read while looking for a status line.
const MAX_STATUS_LINE: usize = 1024;

/// The most interim (1xx) responses skipped before the final one.
const MAX_INTERIM_RESPONSES: usize = 8;

/// The most bytes read while skipping interim (1xx) responses: Early Hints may carry long `Link`
/// header fields, but a server cannot make the check buffer without bound.
const MAX_HEAD: usize = 16 * 1024;

const CLOSED_AFTER_INTERIM: &str = "the connection closed after an interim (1xx) response";

/// Passes when `GET url` answers a 2xx status. Plain `http://` only (a sidecar, a model server,
/// another service's `/health`); for `https://` write a check with your HTTP client.
///
/// Interim responses (`100 Continue`, `103 Early Hints`) are skipped: the final status counts.
/// A server that sends more than 8 of them, or more than 16 KiB of them, fails the check.
///
/// Failure messages, which `/ready` may show, name the URL without its query string and
/// fragment: a query often carries a key.
///
/// # Errors
///
/// [`InvalidUrl`] when `url` is not an `http://host[:port][/path]` URL.
pub fn http_get(url: &str) -> Result<HttpCheck, InvalidUrl> {
    let shown = without_query(url);
    let invalid = |reason| InvalidUrl {
        url: without_credentials(url),
        reason,
    };
    let rest = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("URLs cannot contain spaces or control characters"));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    let parse_port = |port: &str| {
        // An empty port is the default (RFC 3986, section 3.2.3): `http://host:/health`.
        if port.is_empty() {
            return Ok(80);
        }
        // Digits only: `u16::from_str` would take `+80`.
        port.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| port.parse::<u16>().ok())
            .flatten()
            // Port 0 names no service: every run would fail to connect, a setting's mistake
            // (`PORT=0` in a template) found only as a failing check.
            .filter(|&port| port != 0)
            .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        // An IPv6 address: `[::1]`, `[::1]:8080`.
        let (address, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("an IPv6 address lacks its closing `]`"))?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("the host in brackets is not an IPv6 address"));
        }
        let port = match after {
            "" => 80,
            _ => parse_port(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| invalid("only a `:port` may follow an IPv6 address"))?,
            )?,
        };
        (&authority[..address.len() + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || (!host.starts_with('[') && host.contains([':', '[', ']'])) {
        return Err(invalid("the host is missing or malformed"));
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    Ok(HttpCheck {
        url: shown.to_owned(),
        connect_to: format!("{host}:{port}"),
        connector: Connector::default(),
        host_header: authority.to_owned(),
        path,
    })
}

/// `url` up to its query string or fragment, the part safe to show.
fn without_query(url: &str) -> &str {
    url.find(['?', '#']).map_or(url, |at| &url[..at])
}

/// `url` without its query string and fragment, and with the credentials of its authority
/// (`user:password@`) replaced by `[REDACTED]`: a refused URL is named in an error that reaches
/// startup logs. The credentials are found on the whole URL first: a password holding `/`, `?`
/// or `#` (base64, generated) ends at the URL's last `@`, and no part of it is shown.
fn without_credentials(url: &str) -> String {
    let start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo_end = authority.rfind('@').or_else(|| {
        // `user:pass` before the first `/`, `?` or `#`, where a host would have a port.
        let password = !authority.starts_with('[')
            && authority
                .rsplit_once(':')
                .is_some_and(|(_, port)| !port.bytes().all(|b| b.is_ascii_digit()));
        password.then(|| rest.rfind('@')).flatten()
    });
    let masked = match userinfo_end {
        Some(at) => format!(
            "{}{}{}",
            &url[..start],
            periscope_log::REDACTED,
            &rest[at..]
        ),
        None => url.to_owned(),
    };
    without_query(&masked).to_owned()
}

/// Why [`http_get`] refused a URL (named without its query string and credentials).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid health check URL {url:?}: {reason}; expected http://host[:port][/path]")]
pub struct InvalidUrl {
    url: String,
    reason: &'static str,
}

/// The check [`http_get`] builds.
#[derive(Clone)]
pub struct HttpCheck {
    /// The URL without its query string: what messages show.
    url: String,
    connect_to: String,
    connector: Connector,
    host_header: String,
    path: String,
}

impl std::fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCheck")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpCheck {
    async fn status(&self) -> Result<u16, CheckError> {
        let fail = |what: &str, error: std::io::Error| {
            CheckError::msg(format!("GET {}: {what} failed: {error}", self.url))
        };
        let mut stream = self
            .connector
            .connect(&self.connect_to, |error| fail("connect", error))
            .await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: periscope-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path, self.host_header
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| fail("send", error))?;
        let mut head = Vec::with_capacity(256);
        let mut read_total = 0;
        let mut interim = 0;
        loop {
            // The status line of the next response.
            while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
                if !read_more(&mut stream, &mut head, &mut read_total)
                    .await
                    .map_err(|error| fail("read", error))?
                {
                    break;
                }
            }
            // A status line cut off by the end of the stream is no answer, whatever it began
            // with; one longer than the limit (a long reason phrase) is read from its start.
            let cut_short = !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE;
            let status = parse_status(&head).filter(|_| !cut_short).ok_or_else(|| {
                let what = if head.is_empty() && interim > 0 {
                    CLOSED_AFTER_INTERIM
                } else if head.is_empty() {
                    "the connection closed without an answer"
                } else if cut_short {
                    "the connection closed in the middle of the status line"
                } else {
                    "the answer is not HTTP/1.x"
                };
                CheckError::msg(format!("GET {}: {what}", self.url))
            })?;
            // RFC 9110 §15.2: an interim response (`100 Continue`, `103 Early Hints`) is followed
            // by another response. (`101 Switching Protocols` is final: this request asks for no
            // upgrade, so it fails the check as a non-2xx status.)
            if !(100..200).contains(&status) || status == 101 {
                return Ok(status);
            }
            interim += 1;
            if interim > MAX_INTERIM_RESPONSES {
                return Err(CheckError::msg(format!(
                    "GET {}: more than {MAX_INTERIM_RESPONSES} interim (1xx) responses",
                    self.url
                )));
            }
            // Skip its header fields, up to the empty line.
            loop {
                if let Some(end) = head_end(&head) {
                    head.drain(..end);
                    break;
                }
                if read_total >= MAX_HEAD {
                    return Err(CheckError::msg(format!(
                        "GET {}: the interim (1xx) responses exceed {} KiB",
                        self.url,
                        MAX_HEAD / 1024
                    )));
                }
                if !read_more(&mut stream, &mut head, &mut read_total)
                    .await
                    .map_err(|error| fail("read", error))?
                {
                    return Err(CheckError::msg(format!(
                        "GET {}: {CLOSED_AFTER_INTERIM}",
                        self.url
                    )));
                }
            }
        }
    }
}

/// Reads what `stream` has (at most 256 bytes) onto `head`; `false` at the end of the stream.
async fn read_more(
    stream: &mut TcpStream,
    head: &mut Vec<u8>,
    read_total: &mut usize,
) -> std::io::Result<bool> {
    let mut chunk = [0_u8; 256];
    let read = stream.read(&mut chunk).await?;
    head.extend_from_slice(&chunk[..read]);
    *read_total += read;
    Ok(read > 0)
}

/// Where the head of a response (status line and header fields) ends: after its first empty
/// line.
fn head_end(head: &[u8]) -> Option<usize> {
    head.iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == b'\n')
        .find_map(|(at, _)| match &head[at + 1..] {
            [b'\n', ..] => Some(at + 2),
            [b'\r', b'\n', ..] => Some(at + 3),
            _ => None,
        })
}

/// The status code of `HTTP/1.x NNN ...`, read from bytes: the reason phrase may be in any
/// encoding (RFC 9112 allows Latin-1) or cut by the read limit, and is ignored.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&byte| byte == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    // The minor version digit, a space, three digits, then a space or the line's end.
    let [minor, b' ', code @ ..] = rest else {
        return None;
    };
    if !minor.is_ascii_digit() || code.len() < 3 {
        return None;
    }
    let (digits, after) = code.split_at(3);
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(after.first(), None | Some(b' ' | b'\r'))
    {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0, |code, digit| code * 10 + u16::from(digit - b'0')),
    )
}

impl Check for HttpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            match self.status().await? {
                200..=299 => Ok(()),
                status => Err(CheckError::msg(format!(
                    "GET {} answered {status}",
                    self.url
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let check = http_get("http://127.0.0.1:9000/health?deep=1#x").unwrap();
        assert_eq!(check.connect_to, "127.0.0.1:9000");
        assert_eq!(check.host_header, "127.0.0.1:9000");
        assert_eq!(check.path, "/health?deep=1");
        let check = http_get("HTTP://[::1]").unwrap();
        assert_eq!(check.connect_to, "[::1]:80");
        assert_eq!(check.path, "/");
        let check = http_get("http://[fe80::1]:8080/ready").unwrap();
        assert_eq!(check.connect_to, "[fe80::1]:8080");
        assert_eq!(http_get("http://svc?x").unwrap().path, "/?x");
        // An empty port is the default one (RFC 3986).
        assert_eq!(
            http_get("http://127.0.0.1:/h").unwrap().connect_to,
            "127.0.0.1:80"
        );
        assert_eq!(http_get("http://[::1]:/h").unwrap().connect_to, "[::1]:80");
    }

    #[test]
    fn messages_and_debug_leave_the_query_out() {
        let check = http_get("http://127.0.0.1:9/health?api_key=s3cret#frag").unwrap();
        assert_eq!(check.path, "/health?api_key=s3cret", "the request keeps it");
        assert_eq!(check.url, "http://127.0.0.1:9/health");
        assert!(!format!("{check:?}").contains("s3cret"));
        let error = http_get("http://host:99999/?token=s3cret").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert_eq!(without_query("http://svc#a?b"), "http://svc");
    }

    /// A refused URL is named in the build error (often printed at startup): credentials in
    /// its authority must not show, whatever the reason for refusing it.
    #[test]
    fn refused_urls_are_named_without_their_credentials() {
        for url in [
            "http://admin:hunter2@db:8080/health",
            "https://admin:hunter2@db/health",
            "http://hunter2@db/",
            "HTTP://admin:hunter2@db",
        ] {
            let error = http_get(url).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
            assert!(error.contains("[REDACTED]@db"), "{error}");
        }
        // A password holding `/`, `?` or `#` (base64, generated): no part of it shows.
        for (url, secret) in [
            ("http://monitor:Zm9v/YmFy@db:8080/health", ["Zm9v", "YmFy"]),
            ("http://admin:hun?ter2@db/", ["hun", "ter2"]),
            ("http://admin:hun#ter2@db/", ["hun", "ter2"]),
        ] {
            let error = http_get(url).unwrap_err();
            for shown in [error.to_string(), format!("{error:?}")] {
                assert!(!secret.iter().any(|part| shown.contains(part)), "{shown}");
            }
        }
        assert_eq!(
            without_credentials("http://svc/a@b"),
            "http://svc/a@b",
            "an `@` in the path is not userinfo"
        );
    }

    #[test]
    fn refuses_bad_urls() {
        for url in [
            "https://example.com/",
            "http://",
            "http://host:99999/",
            "http://user:pw@host/",
            "http://host/a b",
            "http://host/\r\nX-Injected: 1",
            "",
            "é",
            "http://[::1",
            "http://[::1]x/",
            "http://[zz]/",
            "http://[]/",
            "http://host:+80/",
            "http://a:b:80/",
            "http://host:0/",
            "http://[::1]:0/",
            "http://host:00/",
        ] {
            assert!(http_get(url).is_err(), "{url:?}");
        }
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
        // A reason phrase in Latin-1, or cut in the middle of a character by the read limit,
        // does not hide a healthy status.
        assert_eq!(parse_status(b"HTTP/1.1 200 \xC7a va\r\n\r\n"), Some(200));
        let long = [
            b"HTTP/1.1 200 ".as_slice(),
            &"é".repeat(800).as_bytes()[..1023],
        ]
        .concat();
        assert_eq!(parse_status(&long), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 200\n"), Some(200));
        for not_a_status in [
            b"HTTP/1.1 +20 OK\r\n".as_slice(),
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 20\r\n",
            b"HTTP/1.x 200 OK\r\n",
        ] {
            assert_eq!(parse_status(not_a_status), None, "{not_a_status:?}");
        }
    }

    #[test]
    fn finds_the_end_of_a_response_head() {
        assert_eq!(head_end(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1"), Some(25));
        assert_eq!(
            head_end(b"HTTP/1.1 103 Early Hints\nLink: </a>\n\nX"),
            Some(37)
        );
        assert_eq!(head_end(b"HTTP/1.1 100 Continue\r\nLink: </a>\r\n"), None);
        assert_eq!(head_end(b"HTTP/1.1 100 Continue\r\n\r"), None);
    }
}

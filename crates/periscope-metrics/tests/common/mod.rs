//! Helpers shared by the integration tests: a real server on 127.0.0.1, a raw HTTP/1.1 client,
//! and reading values back from a parsed exposition.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `app` on an ephemeral port of 127.0.0.1.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// A response read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Sends one request on its own connection and reads the response to the end; `None` when the
/// server closed the connection without answering (a panicking handler).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<RawResponse> {
    request_with_body(addr, method, path, headers, "").await
}

/// Like [`request`], with a body (and its `content-length`).
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A reset connection reads as an error: no response. Bounded, so a server that never
    // closes fails the test instead of holding it.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: not answered within 30 s"))
        .ok()?;
    parse_response(&raw, method == "HEAD")
}

/// Sends a request and drops the connection, unanswered, once `before_close` completes.
pub async fn request_and_abort(
    addr: SocketAddr,
    path: &str,
    before_close: impl Future<Output = ()>,
) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    before_close.await;
    drop(stream);
}

fn parse_response(raw: &[u8], head_only: bool) -> Option<RawResponse> {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    if chunked && !head_only {
        body = dechunk(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|window| window == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

pub type OpenMetrics = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Parses OpenMetrics text with a real parser, failing the test on any error.
pub fn parse_openmetrics(text: &str) -> OpenMetrics {
    openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|err| panic!("invalid OpenMetrics: {err:?}\n{text}"))
}

/// One labelled value of a family: `labels` (name, value) pairs and the number.
#[derive(Debug, Clone)]
pub struct Point {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub exemplars: Vec<String>,
}

impl Point {
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no label {name} in {:?}", self.labels))
    }
}

/// The points of a counter or gauge family (for a histogram: its count, with the trace ids of
/// its exemplars).
pub fn points(exposition: &OpenMetrics, family: &str) -> Vec<Point> {
    let Some(family) = exposition.families.get(family) else {
        return Vec::new();
    };
    let names = family.get_label_names().to_vec();
    family
        .iter_samples()
        .map(|sample| {
            let labels = sample.get_labelset().unwrap();
            let labels = names
                .iter()
                .map(|name| {
                    (
                        name.clone(),
                        labels.get_label_value(name).unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let (value, exemplars) = match &sample.value {
                OpenMetricsValue::Counter(counter) => (
                    counter.value.as_f64(),
                    counter.exemplar.iter().map(trace_id).collect(),
                ),
                OpenMetricsValue::Gauge(value) | OpenMetricsValue::Unknown(value) => {
                    (value.as_f64(), Vec::new())
                }
                OpenMetricsValue::Histogram(histogram) => (
                    histogram.count.unwrap_or_default() as f64,
                    histogram
                        .buckets
                        .iter()
                        .filter_map(|bucket| bucket.exemplar.as_ref())
                        .map(trace_id)
                        .collect(),
                ),
                other => panic!("unexpected value {other:?}"),
            };
            Point {
                labels,
                value,
                exemplars,
            }
        })
        .collect()
}

fn trace_id(exemplar: &openmetrics_parser::Exemplar) -> String {
    exemplar.labels.get("trace_id").cloned().unwrap_or_default()
}

/// The sum of a family's points.
/// The sum of the points whose labels have these values.
pub fn sum_where(points: &[Point], labels: &[(&str, &str)]) -> f64 {
    points
        .iter()
        .filter(|point| {
            labels
                .iter()
                .all(|(name, value)| point.label(name) == *value)
        })
        .map(|point| point.value)
        .sum()
}

pub fn total(exposition: &OpenMetrics, family: &str) -> f64 {
    points(exposition, family)
        .iter()
        .map(|point| point.value)
        .sum()
}

/// Installs `subscriber` as this thread's default, for a test that reads the events it
/// captures.
///
/// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
/// that meets a callsite first whether it is enabled, and caches the answer for every thread:
/// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
/// cached as never enabled, and a test capturing events at the same time misses them. Two
/// dispatchers kept for the whole run make tracing-core ask every live one instead (see
/// docs/development.md).
pub fn set_default(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
    });
    tracing::subscriber::set_default(subscriber)
}

/// Runs `promtool check metrics`: it must accept the text with no problem reported. Without
/// promtool the check is skipped locally and fails in CI (`CI` set), where it is installed.
pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed: CI must install Debian's `prometheus` package"
            );
            println!(
                "promtool not found: skipping `promtool check metrics` (install `prometheus`)"
            );
            return;
        }
        Err(err) => panic!("running promtool failed: {err}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\n{text}",
        output.status
    );
}

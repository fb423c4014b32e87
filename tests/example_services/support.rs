//! Starting an example as a process, reading its log lines, and talking HTTP to it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The variable naming the example `example_process` runs.
pub const EXAMPLE_VAR: &str = "PERISCOPE_EXAMPLE";

/// How long anything may take before a test gives up: generous, for a loaded 2-core machine.
/// Tests only wait this long when something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// An example service running as a child process; killed when dropped.
pub struct Service {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts `example` with only `env` set (nothing inherited, so the machine's
    /// `LOG_LEVEL` or `ADMIN_TOKEN` cannot change what is tested).
    pub fn start<V: AsRef<std::ffi::OsStr>>(example: &str, env: &[(&str, V)]) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "example_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env_clear()
            .env(EXAMPLE_VAR, example)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let out = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let text = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            let mut buffer = [0_u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buffer) {
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// The address a listener of the service bound (from its `listening` log line).
    pub async fn addr(&self, listener: &str) -> SocketAddr {
        let line = self
            .wait_for_line(&format!("listening on {listener}"), |line| {
                line["message"] == "listening" && line["data"]["listener"] == listener
            })
            .await;
        line["data"]["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Every log line so far, parsed. Every line of stdout is JSON, except the few lines the
    /// test harness running the service prints around it.
    pub fn log_lines(&self) -> Vec<Value> {
        let stdout = self.stdout.lock().unwrap();
        stdout
            .iter()
            .filter(|line| !is_harness_line(line))
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a stdout line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The log lines of one request, in order, once its `accesses` access lines (one per
    /// service it went through) are written: lines reach stdout from a background writer,
    /// possibly after the response.
    pub async fn lines_of(&self, request_id: &str, accesses: usize) -> Vec<Value> {
        let written = async || {
            let lines: Vec<Value> = self
                .log_lines()
                .into_iter()
                .filter(|line| line["request_id"] == request_id)
                .collect();
            let access = |line: &&Value| line["target"] == "periscope::access";
            (lines.iter().filter(access).count() >= accesses).then_some(lines)
        };
        eventually(written).await.unwrap_or_else(|| {
            panic!(
                "fewer than {accesses} access lines for {request_id}\n{}",
                self.output()
            )
        })
    }

    /// Waits for a log line matching `matches`.
    pub async fn wait_for_line(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        eventually(async || self.log_lines().into_iter().find(&matches))
            .await
            .unwrap_or_else(|| panic!("no log line {what}\n{}", self.output()))
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        // The shell's own `kill`: a machine with only the Rust toolchain may lack `/bin/kill`.
        let status = Command::new("sh")
            .args([
                "-c",
                "kill -TERM \"$1\"",
                "sh",
                &self.child.id().to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit by itself, and for the last of its output.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let status = eventually(async || child.try_wait().unwrap()).await;
        let Some(status) = status else {
            panic!("the service did not exit\n{}", self.output());
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap(); // both pipes are at their end once the process is gone
        }
        status
    }

    /// What the service wrote on stderr.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the service wrote, for failure messages.
    fn output(&self) -> String {
        // Also after a panic while a lock was held (a line that is not JSON): poisoned is fine.
        let stdout = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        format!("--- stdout\n{}\n--- stderr\n{stderr}", stdout.join("\n"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// What libtest prints around the one test run in the service process (`--quiet`).
fn is_harness_line(line: &str) -> bool {
    let line = line.trim();
    line.is_empty()
        || line == "."
        || line.starts_with("running 1 test")
        || line.starts_with("test result:")
}

/// A response, read to the end.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-request-id` header.
    pub fn request_id(&self) -> &str {
        self.headers["x-request-id"].to_str().unwrap()
    }

    /// Checks that this is the error envelope with `status` and `code`, carrying the
    /// response's request id; returns its `error` object.
    pub fn envelope(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let error = self.json()["error"].clone();
        assert_eq!(error["code"], code, "{error}");
        assert_eq!(error["request_id"], self.request_id(), "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        error
    }
}

/// Sends one request on a new connection; fails the test after [`PATIENCE`] without an answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let exchange = async {
        let response = client
            .request(request.body(Full::new(body.into())).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {PATIENCE:?}"))
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, &[], Bytes::new()).await
}

/// Polls `path` until its status is `status`; returns that answer.
pub async fn wait_for_status(addr: SocketAddr, path: &str, status: u16) -> Answer {
    let mut last = None;
    let answer = eventually(async || {
        let answer = get(addr, path).await;
        if answer.status == status {
            return Some(answer);
        }
        last = Some(format!("{} {}", answer.status, answer.text()));
        None
    })
    .await;
    answer.unwrap_or_else(|| panic!("{path} still answers {last:?}, not {status}"))
}

/// Retries `attempt` every 20 ms until it gives a value; `None` after [`PATIENCE`].
async fn eventually<T>(mut attempt: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample of `/metrics` (Prometheus text, parsed by a real parser): a
/// counter's or gauge's value, a histogram's count; `None` when there is no such sample.
pub async fn metric(addr: SocketAddr, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use openmetrics_parser::PrometheusValue;

    let text = get(addr, "/metrics").await.text();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("invalid exposition ({e:?}):\n{text}"));
    let family = exposition.families.get(family)?;
    family.iter_samples().find_map(|sample| {
        let set = sample.get_labelset().unwrap();
        if !labels
            .iter()
            .all(|(name, value)| set.get_label_value(name) == Some(*value))
        {
            return None;
        }
        match &sample.value {
            PrometheusValue::Counter(counter) => Some(counter.value.as_f64()),
            PrometheusValue::Gauge(value) | PrometheusValue::Unknown(value) => Some(value.as_f64()),
            PrometheusValue::Histogram(histogram) => histogram.count.map(|count| count as f64),
            PrometheusValue::Summary(_) => None,
        }
    })
}

/// A `width`×`height` PNG of one colour.
pub fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(width, height, rgb, image::ImageFormat::Png)
}

/// A `width`×`height` JPEG of one colour.
pub fn jpeg(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(width, height, rgb, image::ImageFormat::Jpeg)
}

fn encode(width: u32, height: u32, rgb: [u8; 3], format: image::ImageFormat) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

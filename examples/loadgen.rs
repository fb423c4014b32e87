//! A small closed-loop HTTP/1.1 load generator for the load test (`scripts/loadtest.sh`).
//!
//! ```sh
//! cargo run --release --example loadgen -- http://127.0.0.1:8000/v1/models \
//!     --connections 32 --requests 200000 --duration 10 --warmup 2
//! ```
//!
//! Each connection sends one `GET` at a time on a kept-alive connection and waits for the whole
//! response, until `--requests` have been answered or `--duration` seconds have passed,
//! whichever comes first (after `--warmup` seconds that are not counted). It runs on one
//! thread, so pinning it to a core (`taskset -c 1`) leaves the other cores to the server.
//! Prints one line: `requests=… errors=… seconds=… rps=… p50_us=… p99_us=… max_us=…`
//! (`requests`, `rps` and the latencies count 2xx answers only, so fast errors cannot pass for
//! throughput; `errors`: responses other than 2xx; a broken connection stops the run with an
//! error). Closed loop: a connection sends nothing while it waits, so a stall of the server
//! shows once per connection, not once per request a client population would have sent then;
//! the percentiles are service times, optimistic about the tail (coordinated omission), and
//! the throughput comparison is what the tool is for.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn Error + Send + Sync>;

struct Options {
    host: String,
    port: u16,
    path: String,
    connections: usize,
    requests: u64,
    duration: Duration,
    warmup: Duration,
}

const USAGE: &str = "usage: loadgen http://HOST:PORT/PATH [--connections N] [--requests N] \
                     [--duration SECONDS] [--warmup SECONDS]";

fn options() -> Result<Options, BoxError> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or(USAGE)?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or("the URL needs a port: http://HOST:PORT/PATH")?;
    let mut options = Options {
        host: host.to_owned(),
        port: port.parse()?,
        path: if path.is_empty() { "/" } else { path }.to_owned(),
        connections: 32,
        requests: 200_000,
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--connections" => options.connections = value.parse()?,
            "--requests" => options.requests = value.parse()?,
            "--duration" => options.duration = seconds(&flag, &value)?,
            "--warmup" => options.warmup = seconds(&flag, &value)?,
            _ => return Err(format!("unknown option {flag}; {USAGE}").into()),
        }
    }
    Ok(options)
}

/// A number of seconds from 0 to a day: more would overflow the deadline arithmetic.
fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .filter(|duration| *duration <= Duration::from_secs(86_400))
        .ok_or_else(|| format!("{flag} {value:?}: use a number of seconds from 0 to 86400"))
}

/// One kept-alive connection: sends the request, reads one whole response.
struct Connection {
    stream: TcpStream,
    request: Arc<[u8]>,
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects, retrying for a few seconds while the server starts.
    async fn open(options: &Options, request: Arc<[u8]>) -> Result<Self, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect((options.host.as_str(), options.port)).await {
                Ok(stream) => break stream,
                Err(error) if Instant::now() > deadline => return Err(error.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request,
            buffer: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends the request and returns the response's status code.
    async fn exchange(&mut self) -> Result<u16, BoxError> {
        self.stream.write_all(&self.request).await?;
        self.buffer.clear();
        let (head, body) = loop {
            if let Some(head) = find(&self.buffer, b"\r\n\r\n") {
                break (head + 4, content_length(&self.buffer[..head])?);
            }
            self.read_more().await?;
        };
        while self.buffer.len() < head + body {
            self.read_more().await?;
        }
        let status = std::str::from_utf8(self.buffer.get(9..12).ok_or("short status line")?)?;
        Ok(status.parse()?)
    }

    async fn read_more(&mut self) -> Result<(), BoxError> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Result<usize, BoxError> {
    let head = std::str::from_utf8(head)?;
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| "responses need a content-length (no chunked bodies)".into())
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// Sends requests until `budget` runs out or `until`; records nothing when `tally` is `None`.
async fn drive(
    connection: &mut Connection,
    budget: &AtomicU64,
    until: Instant,
    mut tally: Option<&mut Tally>,
) -> Result<(), BoxError> {
    while Instant::now() < until {
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            break;
        }
        let started = Instant::now();
        let status = connection.exchange().await?;
        if let Some(tally) = tally.as_deref_mut() {
            if (200..300).contains(&status) {
                let micros = started.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            } else {
                tally.errors += 1;
            }
        }
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn run(options: Options) -> Result<(), BoxError> {
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nhost: {}:{}\r\nuser-agent: periscope-loadgen\r\n\r\n",
        options.path, options.host, options.port
    )
    .into_bytes()
    .into();
    let options = Arc::new(options);
    let warm_until = Instant::now() + options.warmup;
    let budget = Arc::new(AtomicU64::new(options.requests));
    let started = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    for _ in 0..options.connections {
        let (options, request, budget, started) = (
            options.clone(),
            request.clone(),
            budget.clone(),
            started.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            let mut connection = Connection::open(&options, request).await?;
            drive(&mut connection, &AtomicU64::new(u64::MAX), warm_until, None).await?;
            // The measured run starts when the first connection is done warming up.
            let start: &Instant = started.get_or_init(Instant::now);
            let mut tally = Tally::default();
            let until = *start + options.duration;
            drive(&mut connection, &budget, until, Some(&mut tally)).await?;
            Ok::<_, BoxError>(tally)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await??;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
    }
    let seconds = started
        .get()
        .map_or(0.0, |start: &Instant| start.elapsed().as_secs_f64());
    latencies.sort_unstable();
    println!(
        "requests={} errors={errors} seconds={seconds:.3} rps={:.0} p50_us={} p99_us={} max_us={}",
        latencies.len(),
        latencies.len() as f64 / seconds.max(f64::MIN_POSITIVE),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = options().and_then(|options| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(tokio::task::LocalSet::new().run_until(run(options)))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

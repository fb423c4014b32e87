//! A flood of requests to random distinct paths, with invented methods, random request ids
//! and tenant values, through the full stack: the exposed series and the resident memory stay
//! flat once the first requests have warmed the stack up.
//!
//! CI runs 50,000 requests; the full run is 1,000,000 (`FLOOD_REQUESTS` to change):
//! `cargo test --release --test memory -- --ignored --nocapture`

#![cfg(all(feature = "axum", target_os = "linux"))]

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request};
use http_body_util::BodyExt;
use periscope::{Observability, ObservabilityGuard};
use tower::ServiceExt;

/// Requests that warm the stack up (series created, buffers at their working size) before
/// memory is measured.
const WARM_UP: u64 = 10_000;

/// The stack under test: `init` installs the global subscriber, once per test binary.
fn observability() -> &'static Observability {
    static OBS: OnceLock<(Observability, ObservabilityGuard)> = OnceLock::new();
    &OBS.get_or_init(|| {
        let obs = Observability::builder()
            .service_name("flood")
            .log_writer(std::io::sink())
            .build()
            .unwrap();
        let guard = obs.init().unwrap();
        (obs, guard)
    })
    .0
}

/// xorshift64*: random enough for paths, ids and methods, and no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One request of the flood: a random path (a third of them on a real route with a random
/// id), a standard or invented method, a valid or invalid request id, a random tenant.
fn random_request(random: &mut Random, i: u64) -> Request<Body> {
    let r = random.next();
    let path = match r % 3 {
        0 => format!("/v1/jobs/{:x}", random.next()),
        1 => format!("/{:x}/{i}", random.next()),
        _ => format!("/static/{:x}/%7e{i}.png?x={r}", random.next()),
    };
    let method = match (r >> 8) % 4 {
        0 => Method::GET,
        1 => Method::POST,
        _ => Method::from_bytes(format!("X{:x}", random.next() % 1_000_000).as_bytes()).unwrap(),
    };
    let mut request = Request::builder().method(method).uri(path);
    match (r >> 16) % 3 {
        0 => request = request.header("x-request-id", format!("req-{:x}", random.next())),
        1 => request = request.header("x-request-id", "not a valid id!"),
        _ => {}
    }
    request
        .header("x-org-id", format!("org-{:x}", random.next()))
        .body(Body::empty())
        .unwrap()
}

/// Resident memory of this process, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Series in the exposition (lines that are neither comments nor blank).
fn exposed_series(obs: &Observability) -> usize {
    let text = obs.registry().encode_prometheus().unwrap();
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// Series of the request counter, the family every request lands in.
fn request_series(obs: &Observability) -> usize {
    let text = obs.registry().encode_prometheus().unwrap();
    text.lines()
        .filter(|line| line.starts_with("http_server_requests_total{"))
        .count()
}

struct Figures {
    requests: u64,
    seconds: f64,
    rss_warm: u64,
    rss_end: u64,
    series_warm: usize,
    series_end: usize,
    request_series: usize,
}

fn flood(requests: u64) -> Figures {
    let obs = observability();
    let app = Router::new()
        .route(
            "/v1/jobs/{id}",
            get(|| async { "ok" }).post(|| async { "created" }),
        )
        .merge(obs.admin().router())
        .layer(obs.layer());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let (mut rss_warm, mut series_warm) = (0, 0);
    runtime.block_on(async {
        for i in 0..requests {
            if i == WARM_UP {
                rss_warm = resident_bytes();
                series_warm = exposed_series(obs);
            }
            let response = app
                .clone()
                .oneshot(random_request(&mut random, i))
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert!(matches!(status, 200 | 404 | 405), "{status}");
            assert!(response.headers().contains_key("x-request-id"));
            response.into_body().collect().await.unwrap();
        }
    });
    Figures {
        requests,
        seconds: started.elapsed().as_secs_f64(),
        rss_warm,
        rss_end: resident_bytes(),
        series_warm,
        series_end: exposed_series(obs),
        request_series: request_series(obs),
    }
}

fn check(figures: &Figures, max_growth_bytes: u64) {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{} requests in {:.1} s ({:.0}/s): resident {:.1} MiB after {WARM_UP} requests, \
         {:.1} MiB at the end; {} series exposed after {WARM_UP} requests, {} at the end \
         ({} of http_server_requests_total)",
        figures.requests,
        figures.seconds,
        figures.requests as f64 / figures.seconds,
        mib(figures.rss_warm),
        mib(figures.rss_end),
        figures.series_warm,
        figures.series_end,
        figures.request_series,
    );
    // Random paths fold into their route or `__unmatched__`, invented methods into `_OTHER`:
    // nothing new after the warm-up, far below the caps (100 values a label, 2000 series a
    // family).
    assert_eq!(figures.series_end, figures.series_warm);
    assert!(figures.request_series <= 20, "{}", figures.request_series);
    let growth = figures.rss_end.saturating_sub(figures.rss_warm);
    assert!(
        growth <= max_growth_bytes,
        "resident memory grew by {:.1} MiB",
        mib(growth)
    );
}

#[test]
fn a_flood_of_random_paths_and_methods_keeps_series_and_memory_flat() {
    check(&flood(50_000), 16 << 20);
}

#[test]
#[ignore = "a million requests: run with --release --ignored"]
fn a_million_random_requests_keep_series_and_memory_flat() {
    let requests = std::env::var("FLOOD_REQUESTS").map_or(1_000_000, |n| n.parse().unwrap());
    check(&flood(requests), 16 << 20);
}

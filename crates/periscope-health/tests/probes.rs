//! The probes over a real socket on 127.0.0.1: status rules, timeouts, single flight, panics,
//! draining, startup gates, withheld details and the three renderings.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use periscope_health::{Details, Health, HealthBuilder, HealthCheck, Probe, StartupGate, check_fn};
use support::{get, get_with, serve};

/// Builds the health and serves it on 127.0.0.1.
async fn serve_health(builder: HealthBuilder) -> (Health, SocketAddr) {
    let health = builder.build().unwrap();
    let addr = serve(health.service()).await;
    (health, addr)
}

/// A passing check that counts its runs.
fn counting(
    runs: &Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    let runs = Arc::clone(runs);
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

fn ok_check() -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    || std::future::ready(Ok(()))
}

fn failing(
    error: &'static str,
) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    move || std::future::ready(Err(error.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_checks_passing_answer_200_ok() {
    let (_, addr) = serve_health(
        Health::builder()
            .version("1.4.2")
            .check("database", ok_check())
            .non_critical_check("s3", ok_check()),
    )
    .await;

    let response = get(addr, "/ready").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    // The format follows `Accept`.
    assert_eq!(response.header("vary"), Some("accept"));
    let json = response.json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], "1.4.2");
    assert!(json["uptime_s"].is_u64());
    assert_eq!(json["checks"]["database"]["status"], "ok");
    assert!(json["checks"]["database"]["duration_ms"].is_u64());
    assert!(json["checks"]["database"].get("critical").is_none());
    assert!(json["checks"]["database"].get("error").is_none());
    assert_eq!(json["checks"]["s3"]["critical"], false);

    let live = get(addr, "/health").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_non_critical_check_answers_200_degraded() {
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", ok_check())
            .non_critical_check("s3", failing("bucket unreachable")),
    )
    .await;

    let response = get(addr, "/ready").await;
    assert_eq!(response.status, 200);
    let json = response.json();
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["checks"]["database"]["status"], "ok");
    assert_eq!(json["checks"]["s3"]["status"], "fail");
    assert_eq!(json["checks"]["s3"]["critical"], false);
    assert_eq!(json["checks"]["s3"]["error"], "bucket unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_critical_check_answers_503_fail() {
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", failing("connection refused"))
            .non_critical_check("s3", ok_check()),
    )
    .await;

    let response = get(addr, "/ready").await;
    assert_eq!(response.status, 503);
    let json = response.json();
    assert_eq!(json["status"], "fail");
    assert_eq!(json["checks"]["database"]["error"], "connection refused");
    // Liveness never looks at dependencies.
    assert_eq!(get(addr, "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_startup_gate_answers_503_starting_until_opened() {
    let runs = Arc::new(AtomicUsize::new(0));
    let model_loaded = StartupGate::new("model_loaded");
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", counting(&runs))
            .startup_gate(model_loaded.clone()),
    )
    .await;

    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503);
    let json = ready.json();
    assert_eq!(json["status"], "starting");
    assert_eq!(json["waiting_for"], serde_json::json!(["model_loaded"]));
    assert_eq!(json["checks"], serde_json::json!({}));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "checks do not run while starting"
    );

    let startup = get(addr, "/startup").await;
    assert_eq!(startup.status, 503);
    assert_eq!(startup.json()["status"], "starting");
    assert_eq!(get(addr, "/health").await.status, 200);

    model_loaded.open();
    let startup = get(addr, "/startup").await;
    assert_eq!(startup.status, 200);
    assert_eq!(startup.json()["status"], "ok");
    assert!(startup.json().get("waiting_for").is_none());
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["database"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_503_while_liveness_stays_200() {
    let (health, addr) = serve_health(Health::builder().check("database", ok_check())).await;
    assert_eq!(get(addr, "/ready").await.status, 200);

    let drain = health.drain_handle();
    drain.drain();
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(get(addr, "/health").await.status, 200);

    drain.resume();
    assert_eq!(get(addr, "/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_waiting_on_the_checks_when_draining_begins_answers_draining_at_once() {
    let started = Arc::new(tokio::sync::Notify::new());
    let check_started = started.clone();
    // A check that hangs under a timeout of 30 s: the probe answers at the drain, or not for
    // 30 s (a run ended by its timeout would answer `draining` too, so the time tells).
    let (health, addr) = serve_health(
        Health::builder().add_check(
            HealthCheck::new(
                "database",
                check_fn(move || {
                    let check_started = check_started.clone();
                    async move {
                        check_started.notify_one();
                        std::future::pending::<Result<(), String>>().await
                    }
                }),
            )
            .timeout(Duration::from_secs(30)),
        ),
    )
    .await;

    // The probe arrives before the drain and waits on the slow check, surely started.
    let probe = tokio::spawn(async move { get(addr, "/ready").await });
    started.notified().await;
    let drained = Instant::now();
    health.drain_handle().drain();
    let ready = probe.await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["status"], "draining");
    // Not at the check's timeout: the drain ended the wait.
    let waited = drained.elapsed();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_check_is_cut_off_at_its_timeout() {
    let (_, addr) = serve_health(
        Health::builder().check("database", ok_check()).add_check(
            HealthCheck::new(
                "slow",
                check_fn(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, String>(())
                }),
            )
            .timeout(Duration::from_millis(100)),
        ),
    )
    .await;

    let started = Instant::now();
    let response = get(addr, "/ready").await;
    let elapsed = started.elapsed();
    // Far below the check's 10 s, with room for a loaded machine.
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    assert_eq!(response.status, 503);
    let json = response.json();
    assert_eq!(json["checks"]["slow"]["status"], "fail");
    assert_eq!(json["checks"]["slow"]["error"], "timed out after 100ms");
    assert!(json["checks"]["slow"]["duration_ms"].as_u64().unwrap() >= 100);
    assert_eq!(json["checks"]["database"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_probes_run_each_check_once() {
    let database_runs = Arc::new(AtomicUsize::new(0));
    let cache_runs = Arc::new(AtomicUsize::new(0));
    // The checks hold their run until every probe has been sent, and no result is cached:
    // only the sharing of one run between the probes in flight keeps the count at one.
    let (open, gate) = tokio::sync::watch::channel(false);
    let held = |runs: &Arc<AtomicUsize>| {
        let (runs, gate) = (Arc::clone(runs), gate.clone());
        check_fn(move || {
            runs.fetch_add(1, Ordering::SeqCst);
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, String>(())
            }
        })
    };
    let health = Health::builder()
        .add_check(
            HealthCheck::new("database", held(&database_runs)).timeout(Duration::from_secs(30)),
        )
        .add_check(
            HealthCheck::new("cache", held(&cache_runs))
                .non_critical()
                .timeout(Duration::from_secs(30)),
        )
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();
    // Counts the probes that have joined the run: a probe's answer, polled once, has started
    // the run or joined the one in flight.
    let joined = Arc::new(AtomicUsize::new(0));
    let counted = {
        let (service, joined) = (health.service(), Arc::clone(&joined));
        tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut answer = Box::pin(tower::ServiceExt::oneshot(service.clone(), request));
            let joined = Arc::clone(&joined);
            async move {
                let first = std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await;
                joined.fetch_add(1, Ordering::SeqCst);
                match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => answer.await,
                }
            }
        })
    };
    let addr = serve(counted).await;

    let probes: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { get(addr, "/ready").await }))
        .collect();
    // Every probe in before the run may end.
    wait_until(|| joined.load(Ordering::SeqCst) == 100).await;
    open.send(true).unwrap();
    for probe in probes {
        let response = probe.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["status"], "ok");
    }
    assert_eq!(database_runs.load(Ordering::SeqCst), 1);
    assert_eq!(cache_runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_check_fails_and_the_server_stays_up() {
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", ok_check())
            .check("buggy", || async {
                let numbers: Vec<u32> = Vec::new();
                let first = numbers[0];
                Ok::<_, String>(first)
            })
            .cache_ttl(Duration::ZERO),
    )
    .await;

    for _ in 0..2 {
        let response = get(addr, "/ready").await;
        assert_eq!(response.status, 503);
        let json = response.json();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["checks"]["buggy"]["status"], "fail");
        assert_eq!(json["checks"]["buggy"]["error"], "check panicked");
        assert_eq!(json["checks"]["database"]["status"], "ok");
    }
    assert_eq!(get(addr, "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_details_never_show_the_error_text() {
    const SECRET: &str = "password authentication failed for user svc at db.internal:5432";
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", failing(SECRET))
            .non_critical_check("s3", failing(SECRET))
            .details(Details::Withheld),
    )
    .await;

    for (path, accept) in [
        ("/ready", None),
        ("/ready", Some("application/health+json")),
        ("/ready?verbose", None),
    ] {
        let response = match accept {
            Some(accept) => get_with(addr, path, &[("accept", accept)]).await,
            None => get(addr, path).await,
        };
        assert_eq!(response.status, 503, "{path} {accept:?}");
        assert!(
            !response.body.contains("password"),
            "{path} {accept:?}: {}",
            response.body
        );
        assert!(
            !response.body.contains("db.internal"),
            "{path} {accept:?}: {}",
            response.body
        );
    }
    let json = get(addr, "/ready").await.json();
    assert_eq!(json["checks"]["database"]["status"], "fail");
    assert!(json["checks"]["database"].get("error").is_none());
}

/// A key the service made sensitive on its log layer is masked in `/ready` too, with the
/// default rules still applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_own_sensitive_keys_are_masked_in_ready() {
    const LOOKUP: &str = "lookup failed: region=eu;ssn=078-05-1120;";
    let (log_layer, _guard) = periscope_log::LogLayer::builder()
        .sensitive_key("ssn")
        .writer(std::io::sink())
        .build();
    let (_, addr) = serve_health(
        Health::builder()
            .redactor(log_layer.redactor())
            .check("lookup", failing(LOOKUP))
            .check("url", failing("GET https://svc:s3cret@db.internal/ failed")),
    )
    .await;
    let json = get(addr, "/ready").await.json();
    let checks = &json["checks"];
    let lookup = checks["lookup"]["error"].as_str().unwrap();
    assert!(
        !lookup.contains("078-05") && lookup.contains("region=eu"),
        "{lookup}"
    );
    let url = checks["url"]["error"].as_str().unwrap();
    assert!(
        !url.contains("s3cret") && url.contains("db.internal"),
        "{url}"
    );

    // Without the service's rules, the default ones alone: the same text shows its `ssn`.
    let (_, addr) = serve_health(Health::builder().check("lookup", failing(LOOKUP))).await;
    let json = get(addr, "/ready").await.json();
    assert_eq!(json["checks"]["lookup"]["error"], LOOKUP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_json_is_served_on_request() {
    let (health, addr) = serve_health(
        Health::builder()
            .version("2.0.0")
            .check("database", ok_check())
            .non_critical_check("s3", failing("bucket unreachable")),
    )
    .await;

    let response = get_with(addr, "/ready", &[("accept", "application/health+json")]).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/health+json")
    );
    let json = response.json();
    assert_eq!(json["status"], "warn");
    assert_eq!(json["releaseId"], "2.0.0");
    assert_eq!(json["checks"]["database:responseTime"][0]["status"], "pass");
    assert_eq!(
        json["checks"]["database:responseTime"][0]["observedUnit"],
        "ms"
    );
    assert_eq!(json["checks"]["s3:responseTime"][0]["status"], "warn");
    assert_eq!(
        json["checks"]["s3:responseTime"][0]["output"],
        "bucket unreachable"
    );
    assert_eq!(json["checks"]["uptime"][0]["observedUnit"], "s");

    let live = get_with(addr, "/health", &[("accept", "application/health+json")]).await;
    assert_eq!(live.json(), serde_json::json!({"status": "pass"}));

    health.drain_handle().drain();
    let draining = get_with(addr, "/ready", &[("accept", "application/health+json")]).await;
    assert_eq!(draining.status, 503);
    assert_eq!(draining.json()["status"], "fail");
    assert_eq!(draining.json()["output"], "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_text_lists_each_check() {
    let gate = StartupGate::new("model_loaded");
    let (_, addr) = serve_health(
        Health::builder()
            .check("database", ok_check())
            .non_critical_check("s3", failing("bucket\nunreachable"))
            .startup_gate(gate.clone()),
    )
    .await;

    let starting = get(addr, "/ready?verbose").await;
    assert_eq!(starting.status, 503);
    assert_eq!(
        starting.body,
        "[-]startup:model_loaded waiting\nready check failed: starting\n"
    );

    gate.open();
    let ready = get(addr, "/ready?verbose").await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        ready.body,
        "[+]database ok\n[-]s3 failed (non-critical): bucket unreachable\nready check passed (degraded)\n"
    );
    assert_eq!(
        get(addr, "/health?verbose").await.body,
        "[+]ping ok\nhealth check passed\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_and_methods_are_refused() {
    let health = Health::builder().build().unwrap();
    let addr = serve(health.service()).await;
    let missing = get(addr, "/nope").await;
    assert_eq!(missing.status, 404);
    // A 404 may be cached by default (RFC 9111): the probe server's never is.
    assert_eq!(missing.header("cache-control"), Some("no-store"));
    let post = support::request(addr, "POST", "/ready", &[("content-length", "0")]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(post.header("cache-control"), Some("no-store"));
    // Both in the error envelope every periscope error response has, even with no error
    // layer in front of the probe server.
    for (answer, code) in [(missing, "route_not_found"), (post, "method_not_allowed")] {
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let error = &answer.json()["error"];
        assert_eq!(error["code"], code, "{error}");
        assert!(
            error["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let probe = health.probe_service(Probe::Readiness);
    let addr = serve(probe).await;
    let put = support::request(addr, "PUT", "/anything", &[("content-length", "0")]).await;
    assert_eq!(put.status, 405);
    assert_eq!(put.json()["error"]["code"], "method_not_allowed");
}

/// The probe server speaks HTTP only: rendered as gRPC, a refusal would be an HTTP 200 with
/// `grpc-status`, counted a success by access logs and limits keyed on statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_content_type_does_not_turn_probe_refusals_into_successes() {
    let health = Health::builder().build().unwrap();
    let addrs = [
        serve(health.service()).await,
        serve(health.probe_service(Probe::Readiness)).await,
    ];
    for content_type in ["application/grpc", "application/grpc-web+proto"] {
        let grpc = [("content-type", content_type), ("content-length", "0")];
        for addr in addrs {
            let post = support::request(addr, "POST", "/ready", &grpc).await;
            assert_eq!(post.status, 405, "{content_type}");
            assert_eq!(post.header("allow"), Some("GET, HEAD"));
            assert_eq!(post.header("grpc-status"), None);
            assert_eq!(post.json()["error"]["code"], "method_not_allowed");
        }
        let missing = support::request(addrs[0], "GET", "/nope", &grpc).await;
        assert_eq!(missing.status, 404, "{content_type}");
        assert_eq!(missing.json()["error"]["code"], "route_not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_cached_for_the_configured_interval() {
    // Within the interval (a minute: no stall of a loaded machine outlasts it), one run.
    let runs = Arc::new(AtomicUsize::new(0));
    let health = Health::builder()
        .check("database", counting(&runs))
        .cache_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    health.readiness().await;
    health.readiness().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the second probe hits the cache"
    );

    // Past it (the sleep lasts at least the interval, however slow the machine), a new run.
    let runs = Arc::new(AtomicUsize::new(0));
    let health = Health::builder()
        .check("database", counting(&runs))
        .cache_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    health.readiness().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    health.readiness().await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "an expired cache runs the checks again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_poller_answers_probes_without_running_checks() {
    let runs = Arc::new(AtomicUsize::new(0));
    let (health, addr) = serve_health(
        Health::builder()
            .check("database", counting(&runs))
            .cache_ttl(Duration::ZERO),
    )
    .await;

    // The poller runs the checks at once, then only every hour.
    let poller = health.spawn_poller(Duration::from_secs(3600)).unwrap();
    wait_until(|| runs.load(Ordering::SeqCst) == 1).await;
    for _ in 0..5 {
        assert_eq!(get(addr, "/ready").await.json()["status"], "ok");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "probes answer from the poller's run"
    );

    // Without a poller (and no cache), each probe runs the checks again.
    drop(poller);
    get(addr, "/ready").await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // A poller repeats on its interval, and stops when dropped.
    let poller = health.spawn_poller(Duration::from_millis(100)).unwrap();
    wait_until(|| runs.load(Ordering::SeqCst) >= 5).await;
    drop(poller);
    // A run the poller began just before the drop may still finish on a loaded machine: the
    // count must come to rest (a poller still running adds one every 100 ms, so no 300 ms
    // window would pass without a run).
    let mut at_rest = false;
    for _ in 0..20 {
        let before = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if runs.load(Ordering::SeqCst) == before {
            at_rest = true;
            break;
        }
    }
    assert!(at_rest, "polling stops with the Poller");
}

/// Runs start every `every`, not `every` after the last one ended: a check that hangs to its
/// timeout does not stretch the period probes are sized on.
#[tokio::test(start_paused = true)]
async fn the_poller_keeps_its_period_when_a_check_hangs() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let health = Health::builder()
        .add_check(
            HealthCheck::new(
                "cache",
                check_fn(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Result<(), String>>()
                }),
            )
            .timeout(Duration::from_secs(2)),
        )
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let _poller = health.spawn_poller(Duration::from_secs(5)).unwrap();
    // Runs start at 0, 5, 10 and 15 s (each ending at its 2 s timeout); waiting 5 s after
    // each ended, the fourth would start at 21 s.
    tokio::time::sleep(Duration::from_millis(19_500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

/// While starting or draining readiness runs no check, and neither does the poller: a pod
/// loading or shutting down does not load its dependencies with probe traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_runs_no_check_while_starting_or_draining() {
    let runs = Arc::new(AtomicUsize::new(0));
    let model_loaded = StartupGate::new("model_loaded");
    let health = Health::builder()
        .check("database", counting(&runs))
        .startup_gate(model_loaded.clone())
        .cache_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let _poller = health.spawn_poller(Duration::from_millis(100)).unwrap();
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "ran while starting");

    model_loaded.open();
    wait_until(|| runs.load(Ordering::SeqCst) >= 2).await;

    health.drain_handle().drain();
    // A run under way when the drain began may still finish.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let drained = runs.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(runs.load(Ordering::SeqCst), drained, "ran while draining");
}

/// Waits (up to 10 s) for a condition the runtime makes true in the background.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_poller_needs_a_runtime() {
    let health = Health::builder().build().unwrap();
    assert!(health.spawn_poller(Duration::from_secs(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_chain_is_reported() {
    #[derive(Debug, thiserror::Error)]
    #[error("query failed")]
    struct QueryError(#[source] std::io::Error);

    let health = Health::builder()
        .check("database", || async {
            Err::<(), _>(QueryError(std::io::Error::other("connection reset")))
        })
        .build()
        .unwrap();
    let report = health.readiness().await;
    assert_eq!(
        report.checks()[0].error.as_deref(),
        Some("query failed: connection reset")
    );
}

/// A check that fails while `broken` is set.
fn broken_while(
    broken: &Arc<std::sync::atomic::AtomicBool>,
) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    let broken = Arc::clone(broken);
    move || {
        std::future::ready(if broken.load(Ordering::SeqCst) {
            Err("model broken".to_owned())
        } else {
            Ok(())
        })
    }
}

/// `/ready` over the socket, within a generous bound.
async fn ready_now(addr: SocketAddr) -> support::Answer {
    tokio::time::timeout(Duration::from_secs(10), get(addr, "/ready"))
        .await
        .expect("/ready answered within 10 s")
}

/// With a poller on a long interval, a gate opening or a drain ending is seen by the next probe,
/// which never answers from a run taken before the change (a model reloaded because a check
/// failed must not stay unready until the next poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_poller_gate_and_drain_changes_take_effect_at_the_next_probe() {
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let model_loaded = StartupGate::new("model_loaded");
    let (health, addr) = serve_health(
        Health::builder()
            .check("model", broken_while(&broken))
            .startup_gate(model_loaded.clone()),
    )
    .await;
    let _poller = health.spawn_poller(Duration::from_secs(60)).unwrap();

    assert_eq!(ready_now(addr).await.json()["status"], "starting");
    model_loaded.open();
    let ready = ready_now(addr).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, "ok".into())
    );

    // The model breaks and is reloaded behind the gate: the poller's passing run, taken before,
    // must not answer once the gate opens again.
    broken.store(true, Ordering::SeqCst);
    model_loaded.close();
    assert_eq!(ready_now(addr).await.json()["status"], "starting");
    model_loaded.open();
    let ready = ready_now(addr).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (503, "fail".into()),
        "the run taken before the gate closed answered after it opened"
    );

    // Reloaded: close, fix, open → the next probe answers 200 at once.
    model_loaded.close();
    broken.store(false, Ordering::SeqCst);
    model_loaded.open();
    let ready = ready_now(addr).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, "ok".into()),
        "the failing run taken before the reload answered after it"
    );

    // Draining answers 503 at once; a drain ended answers from a run taken after it.
    health.drain_handle().drain();
    let ready = ready_now(addr).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (503, "draining".into())
    );
    broken.store(true, Ordering::SeqCst);
    health.drain_handle().resume();
    let ready = ready_now(addr).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (503, "fail".into()),
        "the passing run taken before the drain answered after it ended"
    );
}

/// A gate that closes and opens again (a model reloaded) while a probe waits on the checks:
/// the run it waited on was taken before the reload, so it answers from a run taken after,
/// as every later probe does, not 200 from the model that was unloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_waiting_on_a_run_taken_before_a_reload_answers_from_one_after_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let model_loaded = StartupGate::new("model_loaded");
    model_loaded.open();
    let counted = Arc::clone(&runs);
    let reloaded = Arc::new(tokio::sync::Notify::new());
    let first_run_ends = Arc::clone(&reloaded);
    let (_, addr) = serve_health(
        Health::builder()
            .add_check(HealthCheck::new(
                "model",
                check_fn(move || {
                    let run = counted.fetch_add(1, Ordering::SeqCst);
                    let first_run_ends = Arc::clone(&first_run_ends);
                    async move {
                        // The model loaded before the reload is fine (its run ends once the
                        // reload is done); the one after is not.
                        if run == 0 {
                            first_run_ends.notified().await;
                            Ok(())
                        } else {
                            Err("model broken".to_owned())
                        }
                    }
                }),
            ))
            .startup_gate(model_loaded.clone())
            .cache_ttl(Duration::from_secs(60)),
    )
    .await;

    let first = tokio::spawn(async move { get(addr, "/ready").await });
    wait_until(|| runs.load(Ordering::SeqCst) == 1).await;
    model_loaded.close();
    model_loaded.open();
    reloaded.notify_one();

    let first = first.await.unwrap();
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.json()["checks"]["model"]["error"], "model broken");
    assert_eq!(get(addr, "/ready").await.status, 503);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run after the reload");
}

/// A gate that closes and opens again (a model reloaded) while a check hangs: the first probe
/// after it must not wait for the run taken before the reload and then for a run of its own
/// (twice the timeout, past a kubelet's `timeoutSeconds: 3` with the default 2 s), but answer
/// from a run started for it, within one timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_probe_after_a_reload_during_a_hung_run_answers_within_one_timeout() {
    let runs = Arc::new(AtomicUsize::new(0));
    let model_loaded = StartupGate::new("model_loaded");
    model_loaded.open();
    let counted = Arc::clone(&runs);
    let (_, addr) = serve_health(
        Health::builder()
            .add_check(
                HealthCheck::new(
                    "database",
                    check_fn(move || {
                        counted.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<(), String>>()
                    }),
                )
                .timeout(Duration::from_secs(2)),
            )
            .startup_gate(model_loaded.clone())
            .cache_ttl(Duration::from_secs(60)),
    )
    .await;

    // A probe starts a run, which hangs until its 2 s timeout.
    let first = tokio::spawn(async move { get(addr, "/ready").await });
    wait_until(|| runs.load(Ordering::SeqCst) == 1).await;
    // The model reloads meanwhile.
    model_loaded.close();
    model_loaded.open();

    let started = Instant::now();
    let ready = get(addr, "/ready").await;
    let elapsed = started.elapsed();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json()["checks"]["database"]["error"],
        "timed out after 2s"
    );
    // One timeout (2 s) plus room for a loaded machine; two would be about 4 s.
    assert!(
        elapsed < Duration::from_millis(3500),
        "answered after {elapsed:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run after the reload");
    assert_eq!(first.await.unwrap().status, 503);
}

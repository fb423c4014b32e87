//! Every endpoint over a real socket: the JSON parsed back, the access rules, the envelopes.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use periscope_admin::{Admin, DebugAccess, Endpoint};
use periscope_gpu::{FakeSource, GpuCollector};
use periscope_health::{Health, StartupGate};
use periscope_log::{LogLayer, Redactor};
use periscope_metrics::{MetricsLayer, MetricsRegistry, ServiceInfo};
use serde_json::{Value, json};
use support::{TOKEN, get, get_authorised, send, serve};
use tokio::sync::Notify;
use tower::Layer;

const DEBUG_PATHS: [&str; 5] = [
    "/debug/status",
    "/debug/logs",
    "/debug/config",
    "/debug/log-level",
    "/debug/memory",
];

/// A fully equipped admin service, as the facade builds it.
fn full_admin(access: DebugAccess) -> (Admin, StartupGate) {
    let model_loaded = StartupGate::new("model_loaded");
    let health = Health::builder()
        .version("1.4.2")
        .check("database", || async { Ok::<_, String>(()) })
        .non_critical_check("cache", || async { Err::<(), _>("connection refused") })
        .startup_gate(model_loaded.clone())
        .build()
        .unwrap();
    let registry = MetricsRegistry::new();
    registry
        .register_service_info(&ServiceInfo::new(
            "inference-gateway",
            "1.4.2",
            "production",
        ))
        .unwrap();
    registry.register_process_metrics().unwrap();
    let (layer, _guard) = LogLayer::builder().writer(std::io::sink()).build();
    let gpu = GpuCollector::builder().start(FakeSource::demo(2)).unwrap();
    assert!(gpu.refresh(Duration::from_secs(5)));
    let jobs = Arc::new(AtomicI64::new(3));
    let admin = Admin::builder()
        .service_info("inference-gateway", "1.4.2", "production")
        .health(health)
        .metrics(registry)
        .in_flight(|| 2)
        .logs(layer.recent_logs())
        .level_control(layer.level_control())
        .redactor(layer.redactor())
        .gpu(gpu)
        .config(json!({"port": 8000, "database": {"url": "postgres://app:hunter2@db/app"}}))
        .status_section(
            "queue",
            move || json!({"depth": jobs.load(Ordering::Relaxed)}),
        )
        .status_section(
            "current_job",
            || json!({"job_id": "job_789", "api_token": "tok_live_1"}),
        )
        .debug(access)
        .build();
    (admin, model_loaded)
}

#[tokio::test]
async fn probes_and_metrics_answer_without_a_token() {
    let (admin, model_loaded) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let startup = get(addr, "/startup").await;
    assert_eq!(startup.status, 503);
    assert_eq!(startup.json()["waiting_for"], json!(["model_loaded"]));
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "starting");

    model_loaded.open();
    assert_eq!(get(addr, "/startup").await.status, 200);
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["version"], "1.4.2");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert_eq!(ready["checks"]["cache"]["error"], "connection refused");

    // OpenMetrics, parsed by a real parser.
    let scrape = send(
        addr,
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        "",
    )
    .await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&scrape.text()).unwrap();
    let info = &exposition.families["service_info"];
    let labels = format!("{:?}", info);
    assert!(labels.contains("inference-gateway"), "{labels}");
    assert!(
        exposition
            .families
            .contains_key("process_resident_memory_bytes")
    );

    // The Prometheus 0.0.4 text, parsed too.
    let scrape = get(addr, "/metrics").await;
    assert_eq!(scrape.status, 200);
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&scrape.text()).unwrap();
    assert!(
        exposition
            .families
            .contains_key("process_resident_memory_bytes")
    );
}

#[tokio::test]
async fn debug_endpoints_are_absent_when_disabled() {
    let (admin, _) = full_admin(DebugAccess::Disabled);
    assert!(admin.endpoints().all(|e| !e.is_debug()));
    let addr = serve(admin).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in DEBUG_PATHS {
        let answer = send(addr, "GET", path, &[("authorization", &bearer)], "").await;
        answer.envelope(404, "route_not_found");
        assert_eq!(answer.header("www-authenticate"), None);
    }
    // Identical to a path that never existed; the help names only the paths served.
    let error = get(addr, "/debug/nothing")
        .await
        .envelope(404, "route_not_found");
    let help = error["help"].as_str().unwrap();
    assert!(
        help.contains("/health") && help.contains("/metrics"),
        "{help}"
    );
    assert!(!help.contains("/debug"), "{help}");
    assert_eq!(get(addr, "/health").await.status, 200);
}

#[tokio::test]
async fn an_empty_token_keeps_debug_endpoints_disabled() {
    let (admin, _) = full_admin(DebugAccess::Token("   ".into()));
    let addr = serve(admin).await;
    let answer = send(
        addr,
        "GET",
        "/debug/status",
        &[("authorization", "Bearer ")],
        "",
    )
    .await;
    answer.envelope(404, "route_not_found");
}

#[tokio::test]
async fn debug_endpoints_refuse_a_missing_or_wrong_token() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    let wrong = format!("Bearer {TOKEN}x");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    for path in DEBUG_PATHS {
        let missing = get(addr, path).await;
        missing.envelope(401, "token_missing");
        assert_eq!(
            missing.header("www-authenticate"),
            Some("Bearer realm=\"admin\"")
        );
        // Another scheme sends no bearer token: answered as none, without an error code
        // (RFC 6750 §3.1), so a client does not take it for a bad token to refresh.
        let other_scheme = send(addr, "GET", path, &[("authorization", &basic)], "").await;
        other_scheme.envelope(401, "token_missing");
        assert_eq!(
            other_scheme.header("www-authenticate"),
            Some("Bearer realm=\"admin\"")
        );
        // Malformed: `invalid_request`, a 400.
        for headers in [
            &[("authorization", "Bearer ")][..],
            &[("authorization", &*wrong), ("authorization", &*wrong)],
        ] {
            let malformed = send(addr, "GET", path, headers, "").await;
            malformed.envelope(400, "invalid_request");
            assert_eq!(
                malformed.header("www-authenticate"),
                Some("Bearer realm=\"admin\", error=\"invalid_request\"")
            );
        }
        for header in [&wrong, &short, &format!("Bearer  {}", TOKEN.to_uppercase())] {
            let refused = send(addr, "GET", path, &[("authorization", header)], "").await;
            refused.envelope(401, "token_invalid");
            assert!(
                refused
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer")
            );
            // Nothing of the endpoint leaks into a refusal.
            assert!(!refused.text().contains("hunter2") && !refused.text().contains("1.4.2"));
        }
    }
    // An unknown path's help, open to anyone, names no debug endpoint either.
    let error = get(addr, "/nothing").await.envelope(404, "route_not_found");
    let help = error["help"].as_str().unwrap();
    assert!(
        help.contains("/health") && !help.contains("/debug"),
        "{help}"
    );
    // A POST without the token changes nothing and is refused before its method or body count.
    let change = send(
        addr,
        "POST",
        "/debug/log-level",
        &[("content-type", "application/json")],
        r#"{"directives":"trace"}"#,
    )
    .await;
    change.envelope(401, "token_missing");
    let level = get_authorised(addr, "/debug/log-level").await.json();
    assert_eq!(level["current"], "info");
    send(addr, "DELETE", "/debug/status", &[], "")
        .await
        .envelope(401, "token_missing");
}

#[tokio::test]
async fn the_right_token_opens_every_debug_endpoint() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;

    let status = get_authorised(addr, "/debug/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("cache-control"), Some("no-store"));
    let status = status.json();
    assert_eq!(status["service"], "inference-gateway");
    assert_eq!(status["version"], "1.4.2");
    assert_eq!(status["environment"], "production");
    assert_eq!(status["pid"], std::process::id());
    assert!(status["uptime_s"].is_u64());
    assert!(status["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["in_flight"], 2);
    assert_eq!(status["gpu"]["up"], true);
    assert_eq!(status["gpu"]["source"], "fake");
    assert_eq!(status["gpu"]["devices"].as_array().unwrap().len(), 2);
    assert_eq!(status["sections"]["queue"], json!({"depth": 3}));
    assert_eq!(status["sections"]["current_job"]["job_id"], "job_789");
    assert_eq!(status["sections"]["current_job"]["api_token"], "[REDACTED]");

    let memory = get_authorised(addr, "/debug/memory").await;
    assert_eq!(memory.status, 200);
    let memory = memory.json();
    if cfg!(target_os = "linux") {
        let resident = memory["resident_bytes"].as_u64().unwrap();
        assert!(resident > 1_000_000, "{memory}");
        assert!(memory["peak_resident_bytes"].as_u64().unwrap() >= resident);
        assert!(memory["virtual_bytes"].as_u64().unwrap() >= resident);
    }
    let devices = memory["gpu"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices[0]["memory_total_mib"].as_u64().unwrap() > 0);

    let config = get_authorised(addr, "/debug/config").await;
    assert_eq!(config.status, 200);
    assert_eq!(
        config.json(),
        json!({"port": 8000, "database": {"url": "postgres://app:[REDACTED]@db/app"}})
    );

    let logs = get_authorised(addr, "/debug/logs").await;
    assert_eq!(logs.status, 200);
    let logs = logs.json();
    assert!(logs["lines"].is_array());
    assert!(logs["buffered"].is_u64());

    let level = get_authorised(addr, "/debug/log-level").await;
    assert_eq!(level.status, 200);
    assert_eq!(
        level.json(),
        json!({"current": "info", "permanent": "info", "reverts_in_s": null})
    );
}

#[tokio::test]
async fn a_separate_listener_serves_debug_endpoints_without_a_token() {
    let (admin, _) = full_admin(DebugAccess::SeparateListener);
    assert_eq!(admin.endpoints().count(), Endpoint::ALL.len());
    let addr = serve(admin).await;
    for path in DEBUG_PATHS {
        let answer = get(addr, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        answer.json();
    }
}

#[tokio::test]
async fn a_separate_listener_refuses_names_a_rebinding_page_would_use() {
    let (admin, _) = full_admin(DebugAccess::SeparateListener);
    let addr = serve(admin).await;
    let port = addr.port();
    // A page on attacker.example that rebinds its name to 127.0.0.1 sends its own name.
    let rebound = format!("attacker.example:{port}");
    for path in DEBUG_PATHS {
        let answer = send(addr, "GET", path, &[("host", &rebound)], "").await;
        answer.envelope(403, "insufficient_permissions");
    }
    // Probes and /metrics are no debug endpoints: any name reaches them.
    let health = send(addr, "GET", "/health", &[("host", &rebound)], "").await;
    assert_eq!(health.status, 200);
    let localhost = format!("localhost:{port}");
    let answer = send(addr, "GET", "/debug/status", &[("host", &localhost)], "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // The name operators use, once given.
    let admin = Admin::builder()
        .debug(DebugAccess::SeparateListener)
        .debug_hosts(["svc-admin.ops.svc"])
        .build();
    let addr = serve(admin).await;
    let named = format!("SVC-ADMIN.ops.svc:{}", addr.port());
    let answer = send(addr, "GET", "/debug/status", &[("host", &named)], "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let other = send(
        addr,
        "GET",
        "/debug/status",
        &[("host", "other.ops.svc")],
        "",
    )
    .await;
    other.envelope(403, "insufficient_permissions");

    // Written as operators type it, with the port (and a trailing dot): the name still matches.
    let admin = Admin::builder()
        .debug(DebugAccess::SeparateListener)
        .debug_hosts(["svc-admin.ops.svc.:9000"])
        .build();
    let addr = serve(admin).await;
    for host in ["svc-admin.ops.svc:9000", "svc-admin.ops.svc"] {
        let answer = send(addr, "GET", "/debug/status", &[("host", host)], "").await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.text());
    }
}

#[tokio::test]
async fn config_never_shows_a_secret_value() {
    let secrets = [
        "hunter2",
        "sk-live-abc",
        "ghp_tokenvalue",
        "s3cr3t-session",
        "AKIAEXAMPLE",
        "pa55word",
        "cookie-value",
        "-----BEGIN PRIVATE KEY-----",
        "dsn-secret",
    ];
    let config = json!({
        "database": {"host": "db", "password": "hunter2", "url": "postgres://app:dsn-secret@db:5432/app"},
        "openai": {"apiKey": "sk-live-abc", "model": "gpt"},
        "github_token": "ghp_tokenvalue",
        "session_secret": "s3cr3t-session",
        "aws": [{"access_key_id": "AKIA", "secret_access_key": "AKIAEXAMPLE"}],
        "smtp": {"auth": {"passwd": "pa55word"}},
        "cookie": "cookie-value",
        "tls": {"private_key": "-----BEGIN PRIVATE KEY-----"},
        "limits": {"max_tokens": 4096},
    });
    let admin = Admin::builder()
        .config(config)
        .redactor(Redactor::default())
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let answer = get_authorised(addr, "/debug/config").await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} shown in {text}");
    }
    let config = answer.json();
    assert_eq!(config["database"]["host"], "db");
    assert_eq!(config["database"]["password"], "[REDACTED]");
    assert_eq!(config["openai"]["model"], "gpt");
    assert_eq!(config["aws"][0]["secret_access_key"], "[REDACTED]");
    assert_eq!(config["limits"]["max_tokens"], 4096);
}

#[tokio::test]
async fn config_and_sections_mask_the_otlp_exporter_headers_whole() {
    // The OTLP exporter's header variables exist to carry credentials, under header names no
    // rule can know: Honeycomb's `x-honeycomb-team=<api key>` is the documented setup.
    let config = json!({
        "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=hc-key-1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-honeycomb-team=hc-key-2,x-honeycomb-dataset=prod",
        "otel_exporter_otlp_metrics_headers": "x-honeycomb-team=hc-key-3",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": {"x-honeycomb-team": "hc-key-4"},
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://api.honeycomb.io",
        "env": "OTEL_EXPORTER_OTLP_HEADERS=x-honeycomb-team=hc-key-5 PORT=8000",
    });
    let admin = Admin::builder()
        .config(config)
        .status_section(
            "exporter",
            || json!({"OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=hc-key-6"}),
        )
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let config = get_authorised(addr, "/debug/config").await;
    let status = get_authorised(addr, "/debug/status").await;
    for answer in [&config, &status] {
        assert_eq!(answer.status, 200);
        assert!(!answer.text().contains("hc-key-"), "{}", answer.text());
    }
    let config = config.json();
    for key in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "otel_exporter_otlp_metrics_headers",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ] {
        assert_eq!(config[key], "[REDACTED]", "{key}: {config}");
    }
    assert_eq!(
        config["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "https://api.honeycomb.io"
    );
    assert!(
        config["env"].as_str().unwrap().ends_with(" PORT=8000"),
        "{config}"
    );
    assert_eq!(
        status.json()["sections"]["exporter"]["OTEL_EXPORTER_OTLP_HEADERS"],
        "[REDACTED]"
    );
}

#[tokio::test]
async fn status_sections_mask_url_secrets_like_config() {
    // A section showing a pool's or a job's URLs is as likely to hold a password as the
    // configuration; under neutral keys, only the URL rules catch it.
    let admin = Admin::builder()
        .status_section(
            "db_pool",
            || json!({"url": "postgres://app:hunter2@db:5432/app", "size": 10}),
        )
        .status_section("current_job", || {
            json!({"inputs": ["https://ghp_tok3n@github.com/org/repo.git",
                              "https://hooks.example/x?api_key=abc123&team=core"]})
        })
        // A section named like a secret is masked whole, as a key of the configuration is.
        .status_section("upstream_api_token", || json!("sk-live-42"))
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let answer = get_authorised(addr, "/debug/status").await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    for secret in ["hunter2", "ghp_tok3n", "abc123", "sk-live-42"] {
        assert!(!text.contains(secret), "{secret} shown in {text}");
    }
    let sections = &answer.json()["sections"];
    assert_eq!(
        sections["db_pool"],
        json!({"url": "postgres://app:[REDACTED]@db:5432/app", "size": 10})
    );
    assert_eq!(
        sections["current_job"]["inputs"],
        json!([
            "https://[REDACTED]@github.com/org/repo.git",
            "https://hooks.example/x?api_key=[REDACTED]&team=core"
        ])
    );
    assert_eq!(sections["upstream_api_token"], "[REDACTED]");
}

#[tokio::test]
async fn status_sections_keep_their_registration_order() {
    // docs/admin.md: one key per section, in registration order; a section given again
    // replaces the first, and goes last.
    let admin = Admin::builder()
        .status_section("queue", || json!({"depth": 3}))
        .status_section("current_job", || json!({"job_id": "job_789"}))
        .status_section("b_cache", || json!(1))
        .status_section("api_token", || json!("sk-live-42"))
        .status_section("a_model", || json!("loaded"))
        .status_section("b_cache", || json!(2))
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let answer = get_authorised(addr, "/debug/status").await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let sections = &text[text.find("\"sections\":").unwrap()..];
    assert_eq!(
        sections,
        r#""sections":{"queue":{"depth":3},"current_job":{"job_id":"job_789"},"api_token":"[REDACTED]","a_model":"loaded","b_cache":2}}"#
    );
}

#[tokio::test]
async fn status_sections_named_by_a_url_keep_their_place_masked() {
    // A section named after the connection it describes: its masked name took it out of the
    // answer, looked up under the name it was registered by.
    let admin = Admin::builder()
        .status_section(
            "redis://cacheuser@redis:6379",
            || json!({"connected": true}),
        )
        .status_section("queue", || json!({"depth": 3}))
        .status_section(
            "redis://otheruser@redis:6379",
            || json!({"connected": false}),
        )
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let answer = get_authorised(addr, "/debug/status").await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(
        !text.contains("cacheuser") && !text.contains("otheruser"),
        "{text}"
    );
    let sections = &text[text.find("\"sections\":").unwrap()..];
    assert_eq!(
        sections,
        r#""sections":{"redis://[REDACTED]@redis:6379":{"connected":true},"queue":{"depth":3},"redis://[REDACTED]@redis:6379#2":{"connected":false}}}"#
    );
}

/// `GET path` over a plain socket, off any runtime: the status code and the body.
fn blocking_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

#[test]
fn a_blocked_section_holds_neither_the_service_nor_other_requests() {
    // A section waiting on a lock a long job holds: on a worker thread of the runtime it
    // stalled every connection (tokio's I/O driver parked with it), `/health` included, and
    // each refresh blocked again. The wait gives up after 30 s only so that a regression fails
    // instead of hanging.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicI64::new(0));
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let admin = Admin::builder()
        .status_section("current_job", {
            let calls = Arc::clone(&calls);
            move || {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut released = true;
                if call == 1 {
                    entered_tx.send(()).unwrap();
                    let wait = release_rx
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(30));
                    released = wait.is_ok();
                }
                json!({ "call": call, "released": released })
            }
        })
        .status_section("queue", || json!({"depth": 3}))
        .debug(DebugAccess::SeparateListener)
        .build();
    let addr = runtime.block_on(serve(admin));
    let first = std::thread::spawn(move || blocking_get(addr, "/debug/status"));
    entered_rx.recv().unwrap();

    // While the first read is blocked: the probes answer, and so does the status, saying
    // the section is still being read instead of waiting on it.
    assert_eq!(blocking_get(addr, "/health").0, 200);
    let (status, second) = blocking_get(addr, "/debug/status");
    assert_eq!(status, 200, "{second}");
    let second: Value = serde_json::from_str(&second).unwrap();
    assert!(
        second["sections"]["current_job"]["error"].is_string(),
        "{second}"
    );
    assert_eq!(second["sections"]["queue"]["depth"], 3);

    release_tx.send(()).unwrap();
    let first: Value = serde_json::from_str(&first.join().unwrap().1).unwrap();
    assert_eq!(
        first["sections"]["current_job"],
        json!({"call": 1, "released": true})
    );
    // Once the read returns, the section is read again.
    let third: Value = serde_json::from_str(&blocking_get(addr, "/debug/status").1).unwrap();
    assert_eq!(third["sections"]["current_job"]["call"], 2);
}

#[tokio::test]
async fn a_panicking_in_flight_source_does_not_take_the_status_down() {
    // A poisoned mutex behind the count, say: the answer still comes, with `null`.
    let admin = Admin::builder()
        .in_flight(|| -> i64 { panic!("in-flight source bug") })
        .status_section("queue", || json!({"depth": 3}))
        .debug(DebugAccess::SeparateListener)
        .build();
    let addr = serve(admin).await;
    let status = get(addr, "/debug/status").await;
    assert_eq!(status.status, 200, "{}", status.text());
    let status = status.json();
    assert_eq!(status["in_flight"], Value::Null);
    assert_eq!(status["sections"]["queue"]["depth"], 3);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_envelopes() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    get(addr, "/").await.envelope(404, "route_not_found");
    get(addr, "/healthz").await.envelope(404, "route_not_found");
    get(addr, "/health/").await.envelope(404, "route_not_found");

    let post = send(addr, "POST", "/health", &[], "").await;
    post.envelope(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let put = send(addr, "PUT", "/metrics", &[], "").await;
    put.envelope(405, "method_not_allowed");

    let bearer = format!("Bearer {TOKEN}");
    let delete = send(
        addr,
        "DELETE",
        "/debug/log-level",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    delete.envelope(405, "method_not_allowed");
    assert_eq!(delete.header("allow"), Some("GET, HEAD, POST"));
    let post = send(
        addr,
        "POST",
        "/debug/status",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    post.envelope(405, "method_not_allowed");

    // Without a trace layer in front, the envelope still carries a request id, echoed in the
    // `x-request-id` header (checked by `envelope`).
    let answer = get(addr, "/nope").await;
    let error = answer.envelope(404, "route_not_found");
    assert!(error["request_id"].as_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn without_parts_only_the_default_probes_exist() {
    let admin = Admin::builder().service_info("api", "2.0.0", "dev").build();
    let endpoints: Vec<Endpoint> = admin.endpoints().collect();
    assert_eq!(
        endpoints,
        [Endpoint::Health, Endpoint::Ready, Endpoint::Startup]
    );
    let addr = serve(admin).await;
    assert_eq!(get(addr, "/health").await.json(), json!({"status": "ok"}));
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["version"], "2.0.0");
    let error = get(addr, "/metrics").await.envelope(404, "route_not_found");
    assert_eq!(
        error["help"], "The admin paths here are /health, /ready, /startup",
        "{error}"
    );

    // Debug on, but no log parts: status and memory only.
    let admin = Admin::builder()
        .debug(DebugAccess::SeparateListener)
        .build();
    let addr = serve(admin).await;
    let status = get(addr, "/debug/status").await.json();
    assert_eq!(status["service"], Value::Null);
    assert_eq!(status["in_flight"], Value::Null);
    assert_eq!(status["gpu"], Value::Null);
    assert_eq!(status["sections"], json!({}));
    assert_eq!(get(addr, "/debug/memory").await.status, 200);
    get(addr, "/debug/logs")
        .await
        .envelope(404, "route_not_found");
    get(addr, "/debug/config")
        .await
        .envelope(404, "route_not_found");
    get(addr, "/debug/log-level")
        .await
        .envelope(404, "route_not_found");
}

#[tokio::test]
async fn without_the_token_no_debug_path_reveals_whether_it_exists() {
    // Status and memory exist; logs and config were not given; the last is no endpoint at all.
    let admin = Admin::builder()
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    for path in ["/debug/status", "/debug/logs", "/debug/config", "/debug/x"] {
        get(addr, path).await.envelope(401, "token_missing");
        send(addr, "GET", path, &[("authorization", "Bearer nope")], "")
            .await
            .envelope(401, "token_invalid");
    }
    assert_eq!(get_authorised(addr, "/debug/status").await.status, 200);
    for path in ["/debug/logs", "/debug/config", "/debug/x"] {
        get_authorised(addr, path)
            .await
            .envelope(404, "route_not_found");
    }
    // Outside /debug/, unknown paths stay plain 404s.
    get(addr, "/debugger")
        .await
        .envelope(404, "route_not_found");
}

/// Routed by hand (no axum) with `handles`, in front of an app whose other paths answer 418:
/// every `/debug/` path reaches the admin and asks for the token, served or not; with debug
/// access off none does, and the probes still do.
#[tokio::test]
async fn a_hand_router_using_handles_keeps_every_debug_path_behind_the_token() {
    use tower::ServiceExt;

    let in_front = |admin: Admin| {
        tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            async move {
                if admin.handles(request.uri().path()) {
                    let response = admin.oneshot(request).await?;
                    return Ok::<_, Infallible>(response.map(http_body_util::Either::Left));
                }
                let teapot = Response::builder()
                    .status(418)
                    .body(http_body_util::Either::Right(Full::new(Bytes::new())))
                    .unwrap();
                Ok(teapot)
            }
        })
    };
    let admin = Admin::builder()
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(in_front(admin)).await;
    for path in ["/debug/status", "/debug/logs", "/debug/x", "/debug/"] {
        get(addr, path).await.envelope(401, "token_missing");
    }
    assert_eq!(get(addr, "/health").await.status, 200);
    for path in ["/debug", "/debugger", "/orders"] {
        assert_eq!(get(addr, path).await.status, 418, "{path}");
    }

    let closed = serve(in_front(Admin::builder().build())).await;
    for path in ["/debug/status", "/debug/x"] {
        assert_eq!(get(closed, path).await.status, 418, "{path}");
    }
    assert_eq!(get(closed, "/ready").await.status, 200);
}

#[tokio::test]
async fn in_flight_counts_the_requests_the_metrics_layer_is_serving() {
    let registry = MetricsRegistry::new();
    let metrics = MetricsLayer::new(&registry).unwrap();
    let release = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let app = {
        let (release, entered) = (release.clone(), entered.clone());
        tower::service_fn(move |_request: Request<hyper::body::Incoming>| {
            let (release, entered) = (release.clone(), entered.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        })
    };
    let app_addr = serve(metrics.layer(app)).await;
    let admin = Admin::builder()
        .metrics(registry)
        .in_flight(metrics.clone())
        .debug(DebugAccess::SeparateListener)
        .build();
    let addr = serve(admin).await;
    assert_eq!(get(addr, "/debug/status").await.json()["in_flight"], 0);

    let slow = tokio::spawn(async move { get(app_addr, "/slow").await });
    entered.notified().await;
    assert_eq!(get(addr, "/debug/status").await.json()["in_flight"], 1);
    release.notify_one();
    assert_eq!(slow.await.unwrap().text(), "done");
    assert_eq!(get(addr, "/debug/status").await.json()["in_flight"], 0);
}

#[tokio::test]
async fn head_requests_are_answered_without_a_body() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    let bearer = format!("Bearer {TOKEN}");
    for (path, headers) in [
        ("/health", &[][..]),
        ("/debug/status", &[("authorization", bearer.as_str())][..]),
    ] {
        // Answered as a GET would be, not refused (405) nor taken for another route: the same
        // status and representation headers (hyper sends no body for a HEAD, whatever the
        // service gives it), and the length of the GET body.
        let head = send(addr, "HEAD", path, headers, "").await;
        let get = send(addr, "GET", path, headers, "").await;
        assert_eq!(head.status, 200, "{path}");
        assert!(!get.body.is_empty(), "{path}");
        if path == "/health" {
            let length = get.body.len().to_string();
            assert_eq!(
                head.headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap()),
                Some(length.as_str()),
                "{path}"
            );
        }
        for name in ["content-type", "cache-control"] {
            assert_eq!(
                head.headers.get(name),
                get.headers.get(name),
                "{path}: {name}"
            );
        }
        assert!(head.headers.contains_key("content-type"), "{path}");
    }
}

#[tokio::test]
async fn a_grpc_content_type_does_not_turn_refusals_into_successes() {
    // The admin speaks HTTP and JSON. Rendered as gRPC, a refusal would be an HTTP 200 with
    // `grpc-status`: token guesses would count as successes in the access log's statuses.
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    let bearer = format!("Bearer {TOKEN}");
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc-web",
    ] {
        let grpc = ("content-type", content_type);
        for path in DEBUG_PATHS {
            send(addr, "GET", path, &[grpc], "")
                .await
                .envelope(401, "token_missing");
            send(
                addr,
                "GET",
                path,
                &[grpc, ("authorization", "Bearer nope")],
                "",
            )
            .await
            .envelope(401, "token_invalid");
        }
        send(addr, "GET", "/nothing", &[grpc], "")
            .await
            .envelope(404, "route_not_found");
        let authorised = [grpc, ("authorization", bearer.as_str())];
        send(addr, "POST", "/debug/status", &authorised, "")
            .await
            .envelope(405, "method_not_allowed");
        send(addr, "POST", "/debug/log-level", &authorised, "{}")
            .await
            .envelope(415, "unsupported_media_type");
    }
    // The request's context still names the error: its ids, and problem+json when asked.
    let answer = send(
        addr,
        "GET",
        "/debug/status",
        &[
            ("content-type", "application/grpc"),
            ("accept", "application/problem+json"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(answer.json()["code"], "token_missing");
}

#[tokio::test]
async fn the_token_counts_only_in_the_authorization_header() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("token={TOKEN}");
    for path in [
        format!("/debug/config?access_token={TOKEN}"),
        format!("/debug/config?token={TOKEN}"),
    ] {
        let refused = get(addr, &path).await;
        refused.envelope(401, "token_missing");
        assert!(!refused.text().contains(TOKEN));
    }
    // Nor does a header that claims a local client: the token is the only key.
    for header in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("forwarded", "for=127.0.0.1"),
        ("proxy-authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
    ] {
        send(addr, "GET", "/debug/config", &[header], "")
            .await
            .envelope(401, "token_missing");
    }
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let header = format!("{scheme} {TOKEN}");
        let answer = send(
            addr,
            "GET",
            "/debug/status",
            &[("authorization", &header)],
            "",
        )
        .await;
        assert_eq!(answer.status, 200, "{scheme}");
    }
    for (almost, status, code) in [
        (format!("Bearer\t{TOKEN}"), 400, "invalid_request"),
        (format!("Bearer{TOKEN}"), 400, "invalid_request"),
        (format!("Bearer \"{TOKEN}\""), 401, "token_invalid"),
        (format!("Bearer {TOKEN},"), 401, "token_invalid"),
        (String::new(), 400, "invalid_request"),
    ] {
        send(
            addr,
            "GET",
            "/debug/status",
            &[("authorization", &almost)],
            "",
        )
        .await
        .envelope(status, code);
    }
}

/// Sends `request` as written on a new connection and returns the status line.
async fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("hunter2"), "{answer}");
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_debug_endpoint_without_the_token() {
    let (admin, _) = full_admin(DebugAccess::Token(TOKEN.into()));
    let addr = serve(admin).await;
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    // Paths are not normalised: a path under /debug/ asks for the token, any other is no
    // debug endpoint, however it would resolve.
    for (target, token, status) in [
        ("/debug/../metrics", "", 401),
        ("/debug/./config", "", 401),
        ("/debug/%63onfig", "", 401),
        ("/debug/%63onfig", bearer.as_str(), 404),
        ("/debug/config/", bearer.as_str(), 404),
        ("/debug/config;x", "", 401),
        ("/metrics/../debug/config", "", 404),
        ("/metrics/../debug/config", bearer.as_str(), 404),
        ("//debug/config", "", 404),
        ("/%64ebug/config", "", 404),
        ("/DEBUG/config", "", 404),
        ("http://127.0.0.1/debug/config", "", 401),
        ("http://127.0.0.1/debug/config", bearer.as_str(), 200),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n{token}Connection: close\r\n\r\n");
        let line = raw_status(addr, &request).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{target} (token: {}): {line}",
            !token.is_empty()
        );
    }
    // Any method, known or not, asks for the token first, then gets the endpoint's 405.
    for method in ["OPTIONS", "TRACE", "PATCH", "FOO"] {
        let request =
            format!("{method} /debug/config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(
            raw_status(addr, &request)
                .await
                .starts_with("HTTP/1.1 401 ")
        );
        let request = format!(
            "{method} /debug/config HTTP/1.1\r\nHost: x\r\n{bearer}Connection: close\r\n\r\n"
        );
        assert!(
            raw_status(addr, &request)
                .await
                .starts_with("HTTP/1.1 405 ")
        );
    }
}

//! What the builder checks and what the built stack guarantees before anything is served:
//! secrets stay out of `Debug`, tokens follow one rule, names are reserved, one service name.

use periscope::Observability;
use periscope::metrics::prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

const TOKEN: &str = "s3cr3t-admin-token-0123456789";

fn quiet() -> periscope::ObservabilityBuilder {
    Observability::builder().log_writer(std::io::sink())
}

#[test]
fn debug_output_never_shows_the_admin_token() {
    let builder = quiet().service_name("api").admin_token(TOKEN);
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains(TOKEN) && shown.contains("[REDACTED]"),
        "{shown}"
    );
    let obs = builder.build().unwrap();
    let json = obs.settings().to_json().to_string();
    for shown in [format!("{obs:?}"), format!("{:?}", obs.settings()), json] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    // That a token is set still shows.
    assert_eq!(obs.settings().to_json()["admin_token"], "[REDACTED]");
}

#[test]
fn a_token_set_in_code_follows_the_rules_of_admin_token() {
    for token in ["short", "abcdefgh ijklmnop qrs", "abcdefghijklmnopqrs\n"] {
        let error = quiet().admin_token(token).build().unwrap_err().to_string();
        // Set in code: the error names the method, not a variable nobody set.
        assert!(error.starts_with("admin_token="), "{error}");
        assert!(
            error.contains("at least 16 printable characters"),
            "{error}"
        );
        assert!(
            !error.contains("abcdefgh"),
            "the token is never echoed: {error}"
        );
    }
    assert!(quiet().admin_token(TOKEN).build().is_ok());
}

#[test]
fn the_stacks_own_metric_names_are_reserved() {
    let obs = quiet().build().unwrap();
    let mut names = vec![
        "periscope_log_dropped_lines_total",
        "process_cpu_seconds_total",
        "service_info",
        "http_server_requests_total",
    ];
    // The health metrics exist with the `metrics` feature only.
    if cfg!(feature = "metrics") {
        names.extend(["health_check_status", "health_check_duration_seconds"]);
    }
    for name in names {
        let result = obs
            .registry()
            .register(name, "taken", Gauge::<i64>::default());
        assert!(result.is_err(), "{name} could be registered twice");
    }
    let text = obs.registry().encode_prometheus().unwrap();
    assert_eq!(
        text.matches("# TYPE periscope_log_dropped_lines_total ")
            .count(),
        1,
        "{text}"
    );
}

/// `Settings::to_json` is documented as safe to log: a secret in an OTLP endpoint's query
/// (user info is refused when read) is masked there, not only by `/debug/config`.
#[cfg(feature = "otel")]
#[test]
fn the_settings_json_never_shows_the_otlp_endpoints_credentials() {
    for (var, url) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318?token=hunter2",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces?api_key=hunter2",
        ),
    ] {
        let obs = quiet()
            .env_from(|name| (name == var).then(|| url.to_owned()))
            .unwrap()
            .build()
            .unwrap();
        let json = obs.settings().to_json();
        let endpoint = json["otel"]["traces_endpoint"].as_str().unwrap();
        assert!(!endpoint.contains("hunter2"), "{json}");
        assert!(endpoint.contains("collector:4318"), "{json}");
    }
}

/// The endpoint and the protocol set in code after a source replace that source's
/// traces-only variables too, which would otherwise win over them, silently; a source after
/// the code still wins.
#[cfg(feature = "otel")]
#[test]
fn the_otlp_endpoint_and_protocol_set_in_code_win_over_an_earlier_sources() {
    use periscope::trace::otel::Protocol;

    let earlier = |var: &'static str, value: &'static str| {
        quiet()
            .env_from(move |name| (name == var).then(|| value.to_owned()))
            .unwrap()
    };
    let obs = earlier(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://old:4318/v1/traces",
    )
    .otlp_endpoint("http://new:4318")
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(
        obs.settings().otel.traces_endpoint().as_deref(),
        Some("http://new:4318/v1/traces")
    );
    let obs = earlier("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        .otlp_protocol(Protocol::Grpc)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(obs.settings().otel.protocol, Protocol::Grpc);

    let obs = quiet()
        .otlp_endpoint("http://new:4318")
        .unwrap()
        .env_from(|name| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://later:4318/x".into())
        })
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        obs.settings().otel.traces_endpoint().as_deref(),
        Some("http://later:4318/x")
    );
}

#[cfg(feature = "otel")]
#[test]
fn the_exported_spans_take_the_service_name_set_last() {
    let obs = quiet()
        .env_from(|name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4318".to_owned())
        })
        .unwrap()
        .service_name("billing-api")
        .build()
        .unwrap();
    assert_eq!(obs.settings().service_name, "billing-api");
    assert_eq!(
        obs.settings().otel.service_name.as_deref(),
        Some("billing-api")
    );
}

#[test]
fn the_drain_period_comes_from_shutdown_drain_s_within_bounds() {
    use std::time::Duration;

    let env = |value: &str| {
        let value = value.to_owned();
        quiet().env_from(move |name| (name == "SHUTDOWN_DRAIN_S").then(|| value.clone()))
    };
    let built = |builder: periscope::ObservabilityBuilder| builder.build().unwrap();
    assert_eq!(
        built(quiet()).settings().shutdown_drain,
        periscope::DEFAULT_SHUTDOWN_DRAIN
    );
    assert_eq!(
        built(env("15").unwrap()).settings().shutdown_drain,
        Duration::from_secs(15)
    );
    assert_eq!(
        built(env("0").unwrap()).settings().shutdown_drain,
        Duration::ZERO
    );
    for bad in ["-1", "nan", "inf", "300.5", "1e30", "soon"] {
        let error = env(bad).unwrap_err().to_string();
        assert!(error.starts_with("SHUTDOWN_DRAIN_S="), "{bad}: {error}");
        assert!(error.contains("from 0 to 300"), "{bad}: {error}");
    }
    let too_long = quiet()
        .shutdown_drain(Duration::from_secs(301))
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(
        too_long,
        "shutdown_drain=\"301s\" is invalid: use a duration of at most 300 s \
         (SHUTDOWN_DRAIN_S has the same bound)"
    );
    let obs = built(quiet().shutdown_drain(Duration::from_millis(2500)));
    assert_eq!(obs.settings().to_json()["shutdown_drain_s"], 2.5);
}

#[test]
fn an_invalid_otel_service_name_is_reported_under_its_own_name() {
    let error = quiet()
        .env_from(|name| (name == "OTEL_SERVICE_NAME").then(|| "my service".to_owned()))
        .unwrap_err();
    assert_eq!(error.var, "OTEL_SERVICE_NAME", "{error}");
    assert!(
        error.to_string().starts_with("OTEL_SERVICE_NAME="),
        "{error}"
    );
}

/// A name or level set in code between two sources replaces the earlier source's: a later
/// source setting only the other variable of the pair (`OTEL_SERVICE_NAME`, `RUST_LOG`) is read
/// over the code's value, not over the value the code replaced.
#[test]
fn a_setting_made_in_code_between_sources_replaces_the_earlier_ones() {
    let only = |var: &'static str, value: &'static str| {
        move |name: &str| (name == var).then(|| value.to_owned())
    };
    let json =
        |builder: periscope::ObservabilityBuilder| builder.build().unwrap().settings().to_json();

    let named = || {
        quiet()
            .env_from(only("SERVICE_NAME", "from-file"))
            .unwrap()
            .service_name("orders")
    };
    assert_eq!(json(named())["service_name"], "orders");
    let renamed = named().env_from(only("OTEL_SERVICE_NAME", "auto")).unwrap();
    assert_eq!(json(renamed)["service_name"], "auto");

    let levelled = quiet()
        .env_from(only("LOG_LEVEL", "debug"))
        .unwrap()
        .log_level("warn")
        .unwrap()
        .env_from(only("RUST_LOG", "info"))
        .unwrap();
    assert_eq!(json(levelled)["log_level"], "info");
}

/// `/debug/config` shows the formats propagated and the sampler in force, in every build.
#[test]
fn the_settings_show_the_propagators_and_the_sampler_in_force() {
    let settings = quiet()
        .env_from(|name| match name {
            "OTEL_PROPAGATORS" => Some("none".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("always_off".to_owned()),
            _ => None,
        })
        .unwrap()
        .build()
        .unwrap()
        .settings()
        .to_json();
    assert_eq!(settings["propagators"], "none", "{settings}");
    assert_eq!(settings["sampler"], "AlwaysOff", "{settings}");
    let defaults = quiet().build().unwrap().settings().to_json();
    assert_eq!(
        defaults["propagators"], "tracecontext,baggage",
        "{defaults}"
    );
    assert_eq!(defaults["sampler"], "ParentBasedAlwaysOn", "{defaults}");
}

#[test]
fn a_log_level_set_in_code_is_read_like_log_level() {
    let level = |text: &str| {
        quiet()
            .log_level(text)
            .map(|builder| builder.build().unwrap().settings().to_json()["log_level"].clone())
    };
    assert_eq!(level("warning").unwrap(), "warn");
    assert_eq!(level("DEBUG").unwrap(), "debug");
    assert_eq!(
        level("info,my_crate::db=debug").unwrap(),
        "info,my_crate::db=debug"
    );
    // A typo or an empty value would otherwise turn every line off but one target's.
    for typo in ["verbose", "", " "] {
        let error = level(typo).unwrap_err();
        assert_eq!(error.var, "log_level", "{typo:?}: {error}");
    }
}

/// A list with no level and no `target=level` in it (`debg,`, a stray `,,`) turned every line
/// off, errors included, but a typo's: the very case a lone typo is refused for.
#[test]
fn a_log_level_list_with_no_level_in_it_is_refused() {
    // Nor a typo of a level beside targets given theirs: the same silence (`inf,hyper=warn`).
    for value in [
        "debg,",
        ",,,",
        " , ",
        "verbose,my_crate",
        "inf,hyper=warn",
        "hyper=warn, debg",
        "Wran,my_crate=debug",
        "infoo,h2=off",
        "trce,h2=off",
    ] {
        let error = quiet()
            .env_from(|name| (name == "LOG_LEVEL").then(|| value.to_owned()))
            .unwrap_err();
        assert_eq!(error.var, "LOG_LEVEL", "{value:?}: {error}");
        assert!(error.to_string().contains("not a log level"), "{error}");
        let error = quiet().log_level(value).unwrap_err();
        assert_eq!(error.var, "log_level", "{value:?}: {error}");
    }
    // A level, or a target given its level, still reads as before.
    for (value, read) in [
        ("info,my_crate", "info,my_crate=trace"),
        ("my_crate=debug", "my_crate=debug"),
        ("debug,", "debug"),
        // Targets that are no typo of a level (a changed letter names crates: `want`).
        ("my_crate,hyper=warn", "my_crate=trace,hyper=warn"),
        ("want,hyper=warn", "want=trace,hyper=warn"),
        ("inf=debug,hyper=warn", "inf=debug,hyper=warn"),
    ] {
        let obs = quiet()
            .env_from(|name| (name == "LOG_LEVEL").then(|| value.to_owned()))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(obs.settings().to_json()["log_level"], read, "{value:?}");
    }
}

#[test]
fn a_request_timeout_set_in_code_follows_the_rules_of_request_timeout_s() {
    use std::time::Duration;

    for bad in [
        Duration::ZERO,
        Duration::from_micros(500),
        Duration::from_secs(86_401),
        Duration::MAX,
    ] {
        let error = quiet()
            .request_timeout(bad)
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("request_timeout="), "{bad:?}: {error}");
        assert!(error.contains("from 1 ms to 86400 s"), "{bad:?}: {error}");
    }
    for good in [Duration::from_millis(1), Duration::from_secs(86_400)] {
        let obs = quiet().request_timeout(good).build().unwrap();
        assert_eq!(obs.settings().request_timeout, Some(good));
    }
    let env = |value: &str| {
        let value = value.to_owned();
        quiet().env_from(move |name| (name == "REQUEST_TIMEOUT_S").then(|| value.clone()))
    };
    assert!(env("0.001").is_ok() && env("86400").is_ok());
    assert!(env("0.0009").is_err() && env("inf").is_err());
}

/// Every variable the facade reads is in the configuration reference.
#[test]
fn every_variable_read_is_documented() {
    let reference = include_str!("../docs/configuration.md");
    let read = std::sync::Mutex::new(Vec::new());
    let _ = quiet()
        .env_from(|name| {
            read.lock().unwrap().push(name.to_owned());
            None
        })
        .unwrap();
    let read = read.into_inner().unwrap();
    assert!(read.len() > 10, "{read:?}");
    let missing: Vec<_> = read
        .iter()
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

/// Set in the child processes that run `not_utf8_child`.
#[cfg(unix)]
const CHILD_MARKER: &str = "PERISCOPE_TEST_NOT_UNICODE_CHILD";

/// Run by `a_variable_that_is_not_utf8_is_an_error_naming_it` in a child process, whose
/// environment holds bytes that are not UTF-8: prints what `env()` made of it.
#[cfg(unix)]
#[test]
fn not_utf8_child() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let outcome = match quiet().env() {
        Ok(_) => serde_json::json!({"ok": true}),
        Err(error) => serde_json::json!({"var": error.var, "message": error.to_string()}),
    };
    println!("OUTCOME {outcome}");
}

#[cfg(unix)]
#[test]
fn a_variable_that_is_not_utf8_is_an_error_naming_it() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let mut cases: Vec<(&str, &[u8])> = vec![
        ("LOG_LEVEL", b"de\xffbug"),
        ("SERVICE_NAME", b"caf\xe9"),
        ("ADMIN_TOKEN", b"0123456789abcdef\xff0123456789"),
    ];
    // Read only with the `otel` feature; accepted with a replacement character before.
    if cfg!(feature = "otel") {
        cases.push(("OTEL_RESOURCE_ATTRIBUTES", b"team=caf\xe9"));
    }
    for (var, value) in cases {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "not_utf8_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_MARKER, "1")
            .env(var, OsStr::from_bytes(value));
        for other in ["SERVICE_NAME", "OTEL_SERVICE_NAME", "LOG_LEVEL", "RUST_LOG"] {
            if other != var {
                child.env_remove(other);
            }
        }
        let output = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let outcome: Value = stdout
            .lines()
            .find_map(|line| line.split_once("OUTCOME ").map(|(_, json)| json))
            .map(|json| serde_json::from_str(json).unwrap())
            .unwrap_or_else(|| panic!("no outcome for {var}: {stdout}"));
        assert_eq!(outcome["var"], var, "{outcome}");
        let message = outcome["message"].as_str().unwrap();
        assert!(message.contains("not valid UTF-8"), "{message}");
        assert!(!message.contains("0123456789abcdef"), "{message}");
    }
}

#[cfg(feature = "otel")]
#[test]
fn service_name_in_otel_resource_attributes_names_the_service() {
    let env = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        quiet()
            .service_name("from-code")
            .env_from(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let attributes = (
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.name=checkout,team=payments",
    );
    let obs = env(&[attributes]).unwrap().build().unwrap();
    assert_eq!(obs.settings().service_name, "checkout");
    assert_eq!(
        obs.settings().otel.service_name.as_deref(),
        Some("checkout")
    );
    // SERVICE_NAME and OTEL_SERVICE_NAME win over the attribute.
    for var in ["SERVICE_NAME", "OTEL_SERVICE_NAME"] {
        let obs = env(&[attributes, (var, "api")]).unwrap().build().unwrap();
        assert_eq!(obs.settings().service_name, "api", "{var}");
    }
    let error = env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=my%20shop")]).unwrap_err();
    assert_eq!(error.var, "OTEL_RESOURCE_ATTRIBUTES", "{error}");
}

/// The only test of this binary that installs the global subscriber (and sets the process's
/// propagation formats: no other test here sends a request).
#[cfg(feature = "otel")]
#[test]
fn a_second_init_leaves_the_first_services_export_and_formats_alone() {
    use fake_opentelemetry_collector::FakeCollectorServer;
    use periscope::trace::Propagators;

    let collector_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = collector_runtime
        .block_on(FakeCollectorServer::start())
        .unwrap();
    let endpoint = collector.endpoint();
    let obs = quiet()
        .env_from(|name| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
            "OTEL_PROPAGATORS" => Some("baggage".to_owned()),
            _ => None,
        })
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(Propagators::global(), Propagators::default());
    // Outside any Tokio runtime: gRPC export runs on a thread of its own.
    let guard = obs.init().unwrap();
    // Outgoing calls (`inject`, `ClientTraceLayer`) now send what OTEL_PROPAGATORS names.
    assert_eq!(
        Propagators::global(),
        Propagators::none().with_baggage(true)
    );
    assert!(matches!(
        obs.init(),
        Err(periscope::Error::AlreadyInitialized)
    ));

    // A second service's `init` in the same process fails before it touches OpenTelemetry's
    // globals: the first one's tracer provider still records and exports, its formats still
    // apply.
    let second = quiet()
        .env_from(|name| match name {
            // Nothing listens there; the second service never exports.
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:9".to_owned()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
            "OTEL_PROPAGATORS" => Some("tracecontext".to_owned()),
            _ => None,
        })
        .unwrap()
        .build()
        .unwrap();
    assert!(matches!(
        second.init(),
        Err(periscope::Error::AlreadyInitialized)
    ));
    {
        use opentelemetry::trace::{Span, Tracer};
        let span = opentelemetry::global::tracer("after-second-init").start("probe");
        assert!(
            span.is_recording(),
            "the first service's provider was shut down"
        );
    }
    assert_eq!(
        Propagators::global(),
        Propagators::none().with_baggage(true)
    );
    // Dropping the guard flushes the probe span to the first service's collector.
    drop(guard);
    let exported =
        collector_runtime.block_on(collector.exported_spans(1, std::time::Duration::from_secs(10)));
    assert!(
        exported.iter().any(|span| span.name == "probe"),
        "{exported:?}"
    );
}

const ENV_CHILD_MARKER: &str = "PERISCOPE_TEST_ENV_CHILD";

/// Run by `a_services_own_settings_read_as_documented` in a child process with the variables
/// set: prints what `periscope::env` made of each.
#[test]
fn env_child() {
    use periscope::env;

    if std::env::var_os(ENV_CHILD_MARKER).is_none() {
        return;
    }
    let text = |result: Result<String, periscope::ConfigError>| match result {
        Ok(value) => format!("ok {value}"),
        Err(error) => format!("err {error}"),
    };
    let outcome = serde_json::json!({
        "unset": text(env::var::<u16>("T_UNSET", 7, "a port").map(|v| v.to_string())),
        "empty": text(env::var::<u16>("T_EMPTY", 7, "a port").map(|v| v.to_string())),
        "blank": text(env::var::<u16>("T_BLANK", 7, "a port").map(|v| v.to_string())),
        "padded": text(env::var::<u16>("T_PADDED", 7, "a port").map(|v| v.to_string())),
        "bad": text(env::var::<u16>("T_BAD", 7, "a port").map(|v| v.to_string())),
        "optional": text(env::optional::<u16>("T_UNSET", "a port").map(|v| format!("{v:?}"))),
        "range": text(env::var_within("T_RANGE", 15, 10..=20, "from 10 to 20").map(|v: u32| v.to_string())),
        "flag": text(env::flag("T_FLAG", false).map(|v| v.to_string())),
        "flag_bad": text(env::flag("T_FLAG_BAD", false).map(|v| v.to_string())),
        "secret": text(env::var::<u16>("T_DB_PASSWORD", 7, "a number").map(|v| v.to_string())),
        "url": text(env::var::<u16>("T_DSN", 7, "a number").map(|v| v.to_string())),
        "not_unicode": text(env::var::<u16>("T_API_KEY", 7, "a number").map(|v| v.to_string())),
    });
    println!("OUTCOME {outcome}");
}

/// `periscope::env` as documented: unset, empty and blank are the default, values are trimmed,
/// malformed and out-of-range ones name the variable, and no secret reaches the message.
#[cfg(unix)]
#[test]
fn a_services_own_settings_read_as_documented() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
        .env(ENV_CHILD_MARKER, "1")
        .env_remove("T_UNSET")
        .env("T_EMPTY", "")
        .env("T_BLANK", "   ")
        .env("T_PADDED", " 8080 ")
        .env("T_BAD", "eighty")
        .env("T_RANGE", "9")
        .env("T_FLAG", " Yes ")
        .env("T_FLAG_BAD", "maybe")
        .env("T_DB_PASSWORD", "hunter2")
        .env("T_DSN", "postgres://app:hunter3@db/x")
        .env("T_API_KEY", OsStr::from_bytes(b"sk-live-\xff"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outcome: Value = stdout
        .lines()
        .find_map(|line| line.split_once("OUTCOME ").map(|(_, json)| json))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no outcome: {stdout}"));
    let said = |key: &str| outcome[key].as_str().unwrap().to_owned();
    for key in ["unset", "empty", "blank"] {
        assert_eq!(said(key), "ok 7", "{key}");
    }
    assert_eq!(said("padded"), "ok 8080");
    assert_eq!(said("bad"), r#"err T_BAD="eighty" is invalid: use a port"#);
    assert_eq!(said("optional"), "ok None");
    assert_eq!(
        said("range"),
        r#"err T_RANGE="9" is invalid: use from 10 to 20"#
    );
    assert_eq!(said("flag"), "ok true");
    assert!(said("flag_bad").starts_with("err T_FLAG_BAD"), "{outcome}");
    for (key, secret) in [
        ("secret", "hunter2"),
        ("url", "hunter3"),
        ("not_unicode", "sk-live"),
    ] {
        let message = said(key);
        assert!(message.starts_with("err T_"), "{key}: {message}");
        assert!(!message.contains(secret), "{key}: {message}");
    }
}

#[test]
fn trusted_proxies_come_from_trusted_proxies_or_the_builder() {
    let env = |value: &str| {
        let value = value.to_owned();
        quiet().env_from(move |name| (name == "TRUSTED_PROXIES").then(|| value.clone()))
    };
    let obs = env(" 10.0.0.0/8, fd00::/8 ,192.0.2.7")
        .unwrap()
        .build()
        .unwrap();
    let proxies = &obs.settings().trusted_proxies;
    assert_eq!(proxies.to_string(), "10.0.0.0/8,fd00::/8,192.0.2.7/32");
    assert_eq!(
        obs.settings().to_json()["trusted_proxies"],
        proxies.to_string()
    );
    assert!(
        quiet()
            .build()
            .unwrap()
            .settings()
            .trusted_proxies
            .is_empty()
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0/8;fd00::/8",
        "proxy.internal",
        "10.0.0.0/8, 300.1.1.1",
    ] {
        let error = env(bad).unwrap_err().to_string();
        assert!(error.starts_with("TRUSTED_PROXIES="), "{bad}: {error}");
        assert!(error.contains("CIDR notation"), "{bad}: {error}");
    }
    let error = quiet()
        .trusted_proxies(["10.0.0.0/8", "everyone"])
        .build()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("trusted_proxies=\"everyone\""),
        "{error}"
    );
    let obs = quiet().trusted_proxies(["::1"]).build().unwrap();
    assert!(
        obs.settings()
            .trusted_proxies
            .contains("::1".parse().unwrap())
    );
}

#[test]
fn the_forwarding_header_comes_from_trusted_proxies_header_or_the_builder() {
    use periscope::context::ForwardingHeader;

    let env = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        quiet().env_from(move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let header = |obs: &Observability| obs.settings().trusted_proxies.forwarding_header();
    // The default: X-Forwarded-For, shown in Debug and /debug/config.
    let obs = env(&[("TRUSTED_PROXIES", "10.0.0.0/8")])
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(header(&obs), ForwardingHeader::XForwardedFor);
    assert_eq!(
        obs.settings().to_json()["trusted_proxies_header"],
        "x-forwarded-for"
    );
    let debug = format!("{:?}", obs.settings());
    assert!(
        debug.contains("trusted_proxies_header: \"x-forwarded-for\""),
        "{debug}"
    );
    for (value, expected) in [
        ("forwarded", ForwardingHeader::Forwarded),
        (" Forwarded ", ForwardingHeader::Forwarded),
        ("X-FORWARDED-FOR", ForwardingHeader::XForwardedFor),
    ] {
        let obs = env(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
            ("TRUSTED_PROXIES_HEADER", value),
        ])
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(header(&obs), expected, "{value}");
        assert_eq!(obs.settings().trusted_proxies.to_string(), "10.0.0.0/8");
        assert_eq!(
            obs.settings().to_json()["trusted_proxies_header"],
            expected.to_string()
        );
    }
    for bad in ["x-real-ip", "xff", "forwarded,x-forwarded-for"] {
        let error = env(&[("TRUSTED_PROXIES_HEADER", bad)])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!("TRUSTED_PROXIES_HEADER={bad:?}")),
            "{bad}: {error}"
        );
        assert!(error.contains("x-forwarded-for"), "{bad}: {error}");
    }
    // The builder, in either order with the networks, and the environment over it.
    let obs = quiet()
        .trusted_proxies_header(ForwardingHeader::Forwarded)
        .trusted_proxies(["10.0.0.0/8"])
        .build()
        .unwrap();
    assert_eq!(header(&obs), ForwardingHeader::Forwarded);
    assert!(!obs.settings().trusted_proxies.is_empty());
    let obs = quiet()
        .trusted_proxies(["10.0.0.0/8"])
        .trusted_proxies_header(ForwardingHeader::Forwarded)
        .env_from(|name| (name == "TRUSTED_PROXIES").then(|| "192.0.2.0/24".to_owned()))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(header(&obs), ForwardingHeader::Forwarded);
    assert_eq!(obs.settings().trusted_proxies.to_string(), "192.0.2.0/24");
}

/// Set in the child of `a_panic_outside_a_request_is_an_error_line_of_the_log`: the file its
/// log lines go to.
const PANIC_CHILD_FILE: &str = "PERISCOPE_TEST_PANIC_CHILD_FILE";

/// Run in a child process: panics in a request, in a job, in a thread, then in its own thread
/// with the guard alive, as a failing `main` does.
#[test]
fn panic_child() {
    use tower::{Layer, ServiceExt};

    let Some(path) = std::env::var_os(PANIC_CHILD_FILE) else {
        return;
    };
    let file = std::fs::File::create(path).unwrap();
    let obs = Observability::builder().log_writer(file).build().unwrap();
    // The error layer's hook is installed first here, so the one `init` adds runs before it.
    let layer = obs.layer();
    let _guard = obs.init().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = layer.layer(tower::service_fn(|_: http::Request<String>| async {
        if true {
            panic!("handler boom");
        }
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let request = http::Request::builder()
        .uri("/boom")
        .body(String::new())
        .unwrap();
    let response = runtime.block_on(service.oneshot(request)).unwrap();
    assert_eq!(response.status(), 500);
    let carrier = periscope::trace::job::carrier_or_new();
    let job =
        periscope::trace::job::JobSpan::from_carrier("reindex", &carrier).with_job_id("job_1");
    let joined =
        runtime.block_on(async { tokio::spawn(job.run(async { panic!("job boom") })).await });
    assert!(joined.unwrap_err().is_panic());
    std::thread::Builder::new()
        .name("worker".into())
        .spawn(|| panic!("worker died"))
        .unwrap()
        .join()
        .unwrap_err();
    panic!("main failed");
}

#[test]
fn a_panic_outside_a_request_is_an_error_line_of_the_log() {
    let path = std::env::temp_dir().join(format!("periscope-panic-{}.log", std::process::id()));
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "panic_child", "--test-threads=1"])
        .env(PANIC_CHILD_FILE, &path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child ends with its panic");
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let handler: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "handler panicked")
        .collect();
    assert_eq!(handler.len(), 1, "{text}");
    // A job's panic: its job span's line, not the hook's as well.
    let job: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "job panicked")
        .collect();
    assert_eq!(job.len(), 1, "{text}");
    assert_eq!(job[0]["job_id"], "job_1", "{text}");
    assert_eq!(job[0]["data"]["panic.message"], "job boom", "{text}");
    let location = job[0]["data"]["panic.location"].as_str().unwrap();
    assert!(location.starts_with("tests/settings.rs:"), "{location}");
    let panics: Vec<&Value> = lines
        .iter()
        .filter(|line| line["target"] == "periscope::panic")
        .collect();
    // The panics the error layer and the job span caught are not logged a second time.
    assert_eq!(panics.len(), 2, "{text}");
    for (line, message) in panics.iter().zip(["worker died", "main failed"]) {
        assert_eq!(line["level"], "error", "{line}");
        assert_eq!(line["message"], "panicked", "{line}");
        assert_eq!(line["data"]["panic.message"], message, "{line}");
        let location = line["data"]["panic.location"].as_str().unwrap();
        assert!(location.starts_with("tests/settings.rs:"), "{location}");
    }
    assert_eq!(panics[0]["data"]["thread.name"], "worker", "{}", panics[0]);
}

/// Set in the child of `a_panic_that_aborts_is_still_logged`: the file its log lines go to.
const ABORT_CHILD_FILE: &str = "PERISCOPE_TEST_ABORT_CHILD_FILE";

struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("second panic in drop");
    }
}

/// Run in a child process: a panic while unwinding another aborts the process.
#[test]
fn abort_child() {
    let Some(path) = std::env::var_os(ABORT_CHILD_FILE) else {
        return;
    };
    let file = std::fs::File::create(path).unwrap();
    let obs = Observability::builder().log_writer(file).build().unwrap();
    let _guard = obs.init().unwrap();
    let _bomb = PanicsOnDrop;
    panic!("first panic");
}

#[test]
fn a_panic_that_aborts_is_still_logged() {
    let path = std::env::temp_dir().join(format!("periscope-abort-{}.log", std::process::id()));
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_child", "--test-threads=1", "--nocapture"])
        .env(ABORT_CHILD_FILE, &path)
        // The backtraces the hooks capture give the process more time to abort in.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child aborts");
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let messages: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|line| line["target"] == "periscope::panic")
        .map(|line| line["data"]["panic.message"].clone())
        .collect();
    // Every panic the standard hook reported, the last one (that aborts) too: the hook waits
    // for each line to be written.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reported =
        stderr.matches("' panicked at ").count() + stderr.matches(") panicked at ").count();
    assert!(reported >= 2, "{stderr}");
    assert_eq!(messages.len(), reported, "{text}\n{stderr}");
    assert_eq!(messages[0], "first panic", "{text}");
    assert_eq!(messages[1], "second panic in drop", "{text}");
}

/// Without the `gpu` feature the collector cannot be turned on: the error names where it was
/// asked for, the variable (with its value as written) or the builder method.
#[cfg(not(feature = "gpu"))]
#[test]
fn the_gpu_collector_asked_for_in_a_build_without_it_names_where() {
    let error = quiet()
        .env_from(|name| (name == "ENABLE_GPU").then(|| "yes".to_owned()))
        .unwrap_err();
    assert_eq!(error.var, "ENABLE_GPU");
    assert!(error.to_string().contains("\"yes\""), "{error}");
    assert!(error.to_string().contains("`gpu` feature"), "{error}");
    // Off in the environment is fine.
    let off = quiet().env_from(|name| (name == "ENABLE_GPU").then(|| "false".to_owned()));
    assert!(off.is_ok());

    let error = quiet().gpu(true).build().unwrap_err().to_string();
    assert!(error.starts_with("gpu=\"true\" is invalid"), "{error}");
    assert!(!error.contains("ENABLE_GPU"), "{error}");
}

/// What the environment sets of OpenTelemetry, the builder sets in code: the sampler and the
/// propagation formats in every build. The environment applied after wins for what it sets
/// and keeps the rest; a bad value is refused under the method's name.
#[test]
fn the_sampler_and_propagators_are_set_in_code_and_the_environment_overrides_them() {
    use periscope::trace::{Propagators, Sampler};

    let in_code = || {
        quiet()
            .traces_sampler(Sampler::ParentBasedTraceIdRatio(0.25))
            .unwrap()
            .propagators(Propagators::default().with_baggage(false))
            .unwrap()
    };
    let obs = in_code().env_from(|_| None).unwrap().build().unwrap();
    let settings = obs.settings();
    assert_eq!(settings.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
    assert!(settings.propagators.trace_context() && !settings.propagators.baggage());
    #[cfg(feature = "otel")]
    assert_eq!(
        settings.otel.sampler,
        Sampler::ParentBasedTraceIdRatio(0.25)
    );

    let overridden = in_code()
        .env_from(|name| (name == "OTEL_TRACES_SAMPLER").then(|| "always_off".to_owned()))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(overridden.settings().sampler, Sampler::AlwaysOff);
    assert!(!overridden.settings().propagators.baggage(), "kept");

    let error = quiet()
        .traces_sampler(Sampler::TraceIdRatio(1.5))
        .unwrap_err();
    assert_eq!(error.var, "traces_sampler", "{error}");
    assert!(error.to_string().contains("between 0 and 1"), "{error}");
}

#[cfg(feature = "otel")]
#[test]
fn the_otlp_endpoint_and_protocol_are_set_in_code() {
    use periscope::trace::otel::Protocol;

    let obs = quiet()
        .otlp_endpoint("http://collector.observability:4317")
        .unwrap()
        .otlp_protocol(Protocol::Grpc)
        .unwrap()
        .env_from(|_| None)
        .unwrap()
        .build()
        .unwrap();
    let otel = &obs.settings().otel;
    assert_eq!(otel.protocol, Protocol::Grpc);
    assert_eq!(
        otel.traces_endpoint().as_deref(),
        Some("http://collector.observability:4317")
    );
    let error = quiet().otlp_endpoint("collector:4317").unwrap_err();
    assert_eq!(error.var, "otlp_endpoint", "{error}");

    // A source naming the service by its resource attributes alone.
    let resource_named = |service: &'static str| {
        move |name: &str| {
            (name == "OTEL_RESOURCE_ATTRIBUTES").then(|| format!("service.name={service}"))
        }
    };
    let named_in_code = |obs: &periscope::Observability| {
        assert_eq!(obs.settings().service_name, "orders");
        assert_eq!(obs.settings().otel.service_name.as_deref(), Some("orders"));
    };
    // A name set in code after the environment stays, whatever setter comes after it: the
    // environment's `service.name` resource attribute is not read anew over it.
    let obs = quiet()
        .env_from(resource_named("from-resource"))
        .unwrap()
        .service_name("orders")
        .traces_sampler(periscope::trace::Sampler::AlwaysOn)
        .unwrap()
        .build()
        .unwrap();
    named_in_code(&obs);
    // Nor by a later source that sets no name (the process environment after a file): only
    // the source that sets the resource attributes names the service by them.
    let obs = quiet()
        .env_from(resource_named("from-file"))
        .unwrap()
        .service_name("orders")
        .env_from(|name| (name == "LOG_FORMAT").then(|| "json".to_owned()))
        .unwrap()
        .build()
        .unwrap();
    named_in_code(&obs);
    // A later source that sets them names it anew.
    let obs = quiet()
        .service_name("orders")
        .env_from(resource_named("from-env"))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(obs.settings().service_name, "from-env");
}

//! What the builder checks and what the built stack guarantees before anything is served:
//! secrets stay out of `Debug`, tokens follow one rule, names are reserved, one service name.

use periscope::Observability;
use periscope::metrics::prometheus_client::metrics::gauge::Gauge;

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
    for shown in [format!("{obs:?}"), format!("{:?}", obs.settings())] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
}

#[test]
fn a_token_set_in_code_follows_the_rules_of_admin_token() {
    for token in ["short", "abcdefgh ijklmnop qrs", "abcdefghijklmnopqrs\n"] {
        let error = quiet().admin_token(token).build().unwrap_err().to_string();
        assert!(error.starts_with("ADMIN_TOKEN="), "{error}");
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
    for name in [
        "periscope_log_dropped_lines_total",
        "health_check_status",
        "health_check_duration_seconds",
        "process_cpu_seconds_total",
        "service_info",
        "http_server_requests_total",
    ] {
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
    let too_long = quiet().shutdown_drain(Duration::from_secs(301)).build();
    assert!(
        too_long
            .unwrap_err()
            .to_string()
            .starts_with("SHUTDOWN_DRAIN_S=")
    );
    let obs = built(quiet().shutdown_drain(Duration::from_millis(2500)));
    assert_eq!(obs.settings().to_json()["shutdown_drain_s"], 2.5);
}

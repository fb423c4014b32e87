//! `/debug/logs` over a real socket, reading the buffer of a real log layer.

mod support;

use periscope_admin::{Admin, DebugAccess, MAX_LOG_LINES};
use periscope_log::LogLayer;
use serde_json::Value;
use support::{get_authorised, serve};
use tracing_subscriber::prelude::*;

/// The messages of the answer's lines, oldest first.
fn messages(answer: &Value) -> Vec<String> {
    answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn debug_logs_filters_by_level_and_bounds_lines() {
    let (layer, _guard) = LogLayer::builder()
        .service("logs-test")
        .writer(std::io::sink())
        .build();
    let recent = layer.recent_logs();
    tracing_subscriber::registry().with(layer).init();
    let admin = Admin::builder()
        .logs(recent)
        .debug(DebugAccess::Token(support::TOKEN.into()))
        .build();
    let addr = serve(admin).await;

    for i in 0..5 {
        tracing::info!("info {i}");
        tracing::warn!("warn {i}");
    }
    tracing::error!(password = "hunter2", "error 0");
    tracing::debug!("debug 0"); // below the default `info`: never buffered

    let all = get_authorised(addr, "/debug/logs").await;
    assert_eq!(all.status, 200);
    let all = all.json();
    assert_eq!(all["buffered"], 11);
    let messages_all = messages(&all);
    assert_eq!(messages_all.len(), 11);
    assert_eq!(messages_all.first().unwrap(), "info 0");
    assert_eq!(messages_all.last().unwrap(), "error 0");
    // Lines are the log lines as written: JSON objects with the schema, secrets redacted.
    let error_line = &all["lines"][10];
    assert_eq!(error_line["level"], "error");
    assert_eq!(error_line["service"], "logs-test");
    assert_eq!(error_line["data"]["password"], "[REDACTED]");

    let warn = get_authorised(addr, "/debug/logs?level=warn").await.json();
    assert_eq!(
        messages(&warn),
        ["warn 0", "warn 1", "warn 2", "warn 3", "warn 4", "error 0"]
    );
    let newest = get_authorised(addr, "/debug/logs?lines=2&level=WARN")
        .await
        .json();
    assert_eq!(messages(&newest), ["warn 4", "error 0"]);
    let errors = get_authorised(addr, "/debug/logs?level=error&lines=100")
        .await
        .json();
    assert_eq!(messages(&errors), ["error 0"]);
    let none = get_authorised(addr, "/debug/logs?lines=0").await.json();
    assert_eq!(none["lines"], Value::Array(Vec::new()));

    let over = get_authorised(addr, &format!("/debug/logs?lines={}", MAX_LOG_LINES + 1)).await;
    let error = over.envelope(400, "invalid_request");
    assert_eq!(error["violations"][0]["field"], "query.lines");
    assert!(
        error["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1000")
    );
    let bad = get_authorised(addr, "/debug/logs?lines=ten&level=loud&follow=1").await;
    let error = bad.envelope(400, "invalid_request");
    let fields: Vec<&str> = error["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["query.lines", "query.level", "query.follow"]);
}

#[tokio::test]
async fn debug_logs_decodes_parameter_names_like_values() {
    let (layer, _guard) = LogLayer::builder().writer(std::io::sink()).build();
    let recent = layer.recent_logs();
    // This thread's subscriber only: the other test of this binary installs the global one.
    let _default = support::set_default(tracing_subscriber::registry().with(layer));
    let admin = Admin::builder()
        .logs(recent)
        .debug(DebugAccess::Token(support::TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    tracing::info!("quiet");
    tracing::warn!("loud 0");
    tracing::warn!("loud 1");

    // `%6C` is `l`: the names are `level` and `lines`, encoded as a client may send them.
    let answer = get_authorised(addr, "/debug/logs?%6Cevel=warn&%6C%69nes=1").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(messages(&answer.json()), ["loud 1"]);
    // A name given twice is a duplicate whichever way it is spelt.
    let twice = get_authorised(addr, "/debug/logs?lines=1&%6Cines=2").await;
    let error = twice.envelope(400, "invalid_request");
    assert_eq!(error["violations"][0]["field"], "query.lines");
    assert_eq!(error["violations"][0]["reason"], "duplicate");
    // An unknown name is reported decoded.
    let unknown = get_authorised(addr, "/debug/logs?f%6Fllow=1").await;
    let error = unknown.envelope(400, "invalid_request");
    assert_eq!(error["violations"][0]["field"], "query.follow");
}

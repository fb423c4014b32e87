//! `GET`/`POST /debug/log-level` over a real socket, changing the filter of a real log layer.

mod support;

use std::time::{Duration, Instant};

use periscope_admin::{Admin, DebugAccess, MAX_BODY_BYTES};
use periscope_log::{Directives, LevelControl, LevelStatus, RecentLogs};
use serde_json::json;
use support::{TOKEN, get_authorised, post_json, send, serve, serve_global_logs};

fn buffered(recent: &RecentLogs, marker: &str) -> bool {
    recent
        .lines(usize::MAX, None)
        .iter()
        .any(|line| line.text.contains(marker))
}

/// An admin service with a fresh level control behind the token, served on 127.0.0.1.
async fn serve_level_control() -> (LevelControl, std::net::SocketAddr) {
    let control = LevelControl::new(Directives::default());
    let admin = Admin::builder()
        .level_control(control.clone())
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    (control, serve(admin).await)
}

/// The level is still the default `info`, for good: a refused change changed nothing.
fn assert_unchanged(control: &LevelControl) {
    assert_eq!(
        control.status(),
        LevelStatus {
            current: "info".into(),
            permanent: "info".into(),
            reverts_in: None
        }
    );
}

#[tokio::test]
async fn a_change_takes_effect_on_the_next_event_and_reverts_after_its_ttl() {
    let (recent, addr, _guard) = serve_global_logs().await;

    tracing::debug!("marker-before");
    assert!(!buffered(&recent, "marker-before"));

    let changed = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"info,log_level=debug","ttl_s":2}"#,
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    let changed = changed.json();
    assert_eq!(changed["current"], "info,log_level=debug");
    assert_eq!(changed["permanent"], "info");
    let reverts_in = changed["reverts_in_s"].as_f64().unwrap();
    // Two seconds: long enough for the next event on a loaded machine, short for the test.
    assert!(reverts_in > 0.0 && reverts_in <= 2.0, "{changed}");

    tracing::debug!("marker-during");
    assert!(buffered(&recent, "marker-during"));
    // The change itself is logged, with what was asked (the other tests of this binary log
    // their changes here too: this one's own words are looked for).
    assert!(buffered(
        &recent,
        r#""change":"set info,log_level=debug for 2s""#
    ));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let level = get_authorised(addr, "/debug/log-level").await.json();
        if level["current"] == "info" {
            assert_eq!(level["reverts_in_s"], serde_json::Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "never reverted: {level}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!("marker-after");
    assert!(!buffered(&recent, "marker-after"));

    // A permanent change, then a temporary one ended early by a reset.
    let permanent = post_json(addr, "/debug/log-level", r#"{"directives":"warn"}"#).await;
    assert_eq!(
        permanent.json(),
        json!({"current": "warn", "permanent": "warn", "reverts_in_s": null})
    );
    // Logged once.
    let logged = recent
        .lines(usize::MAX, None)
        .iter()
        .filter(|line| line.text.contains(r#""change":"set warn""#))
        .count();
    assert_eq!(logged, 1);
    tracing::info!("marker-quiet");
    assert!(!buffered(&recent, "marker-quiet"));
    post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"trace","ttl_s":300}"#,
    )
    .await;
    let reset = post_json(addr, "/debug/log-level", r#"{"reset":true}"#).await;
    assert_eq!(reset.json()["current"], "warn");

    // Invalid changes: 400 envelopes naming the problem, and nothing changes.
    for (body, field, says) in [
        (
            r#"{"directives":"info,db=loud"}"#,
            "directives",
            "not a log level",
        ),
        // A typo of a level, not a bare target that would silence every other line.
        (r#"{"directives":"debg"}"#, "directives", "not a log level"),
        (
            r#"{"directives":"debg,hyper=info"}"#,
            "directives",
            "not a log level",
        ),
        (r#"{"directives":"debug","ttl_s":0}"#, "ttl_s", "from 0.001"),
        (
            r#"{"directives":"debug","ttl_s":1e12}"#,
            "ttl_s",
            "to 86400",
        ),
        (
            r#"{"directive":"debug"}"#,
            "body",
            "unknown field `directive`",
        ),
        (r#"{"ttl_s":5}"#, "directives", "required"),
        ("debug", "body", "expected"),
    ] {
        let refused = post_json(addr, "/debug/log-level", body).await;
        let error = refused.envelope(400, "invalid_request");
        let violation = &error["violations"][0];
        assert_eq!(violation["field"], field, "{body}: {error}");
        assert!(
            violation["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    assert_eq!(
        get_authorised(addr, "/debug/log-level").await.json()["current"],
        "warn"
    );

    // Not JSON by its content type (a browser form, a plain `curl -d`): 415.
    let bearer = format!("Bearer {TOKEN}");
    let form = send(
        addr,
        "POST",
        "/debug/log-level",
        &[
            ("authorization", &bearer),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        r#"{"directives":"trace"}"#,
    )
    .await;
    form.envelope(415, "unsupported_media_type");
    // Over the body limit: 413.
    let huge = format!(r#"{{"directives":"{}"}}"#, "a".repeat(MAX_BODY_BYTES));
    post_json(addr, "/debug/log-level", &huge)
        .await
        .envelope(413, "payload_too_large");
    assert_eq!(
        get_authorised(addr, "/debug/log-level").await.json()["current"],
        "warn"
    );

    // Turning logging up from a quiet filter leaves a line saying so too: `error` does not
    // filter out the change lines.
    post_json(addr, "/debug/log-level", r#"{"directives":"error"}"#).await;
    let louder = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"info,audit_marker=debug","ttl_s":300}"#,
    )
    .await;
    assert_eq!(louder.status, 200, "{}", louder.text());
    assert!(buffered(&recent, "set info,audit_marker=debug for 300s"));
}

#[tokio::test]
async fn a_null_ttl_is_refused_rather_than_made_permanent() {
    // `"ttl_s": null` (a script's unset variable through `jq --argjson`) is not a number of
    // seconds: taken as "no ttl_s", it would leave `trace` on for good.
    let (control, addr) = serve_level_control().await;
    let refused = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"trace","ttl_s":null}"#,
    )
    .await;
    let error = refused.envelope(400, "invalid_request");
    assert_eq!(error["violations"][0]["field"], "body", "{error}");
    assert_unchanged(&control);
    // Leaving it out is still the way to a permanent change.
    // (A directive of its own: the other test counts the change lines it caused.)
    let permanent = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"warn,null_ttl=debug"}"#,
    )
    .await;
    assert_eq!(permanent.json()["permanent"], "warn,null_ttl=debug");
}

#[tokio::test]
async fn a_later_change_outlives_the_deadline_of_the_temporary_one_it_replaced() {
    // Directives of their own: the change lines reach the global subscriber of the test
    // above, which counts its own.
    let control = LevelControl::new(Directives::parse("info").unwrap());
    let admin = Admin::builder()
        .level_control(control)
        .debug(DebugAccess::Token(TOKEN.into()))
        .build();
    let addr = serve(admin).await;
    let short = r#"{"directives":"info,overlap=debug","ttl_s":0.05}"#;
    assert_eq!(post_json(addr, "/debug/log-level", short).await.status, 200);
    let long = r#"{"directives":"info,overlap=trace","ttl_s":300}"#;
    assert_eq!(post_json(addr, "/debug/log-level", long).await.status, 200);
    // The first change's deadline passes: it must not end the second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let level = get_authorised(addr, "/debug/log-level").await.json();
    assert_eq!(level["current"], "info,overlap=trace", "{level}");
    assert!(level["reverts_in_s"].as_f64().unwrap() > 200.0, "{level}");

    // A permanent change ends the temporary one, and a later temporary change reverts to it.
    let permanent = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"warn,overlap=info"}"#,
    )
    .await;
    assert_eq!(
        permanent.json(),
        json!({"current": "warn,overlap=info", "permanent": "warn,overlap=info", "reverts_in_s": null})
    );
    assert_eq!(post_json(addr, "/debug/log-level", short).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let level = get_authorised(addr, "/debug/log-level").await.json();
        if level["reverts_in_s"].is_null() {
            assert_eq!(level["current"], "warn,overlap=info", "{level}");
            break;
        }
        assert!(Instant::now() < deadline, "never reverted: {level}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_changes_nothing() {
    // serde reads a struct from a JSON array too (`["trace"]` as `{"directives":"trace"}`):
    // a body of the wrong type must be refused like any other, not made a permanent change.
    let (control, addr) = serve_level_control().await;
    for body in [
        r#"["trace"]"#,
        r#" ["trace", 300]"#,
        r#"["trace", 300, false]"#,
        "[]",
        r#""trace""#,
        "null",
        "7",
    ] {
        let refused = post_json(addr, "/debug/log-level", body).await;
        let error = refused.envelope(400, "invalid_request");
        let violation = &error["violations"][0];
        assert_eq!(
            (&violation["field"], &violation["reason"]),
            (&json!("body"), &json!("format")),
            "{body}: {error}"
        );
        assert!(
            violation["message"]
                .as_str()
                .unwrap()
                .contains("invalid type"),
            "{body}: {error}"
        );
    }
    assert_unchanged(&control);
}

//! `POST /debug/log-level` cannot switch off its own audit: the change and the revert of a
//! temporary change are logged whatever the filter says.

mod support;

use std::time::{Duration, Instant};

use periscope_log::RecentLogs;
use serde_json::Value;
use support::{post_json, serve_global_logs};

/// The buffered lines whose message is `message`, parsed.
fn lines_saying(recent: &RecentLogs, message: &str) -> Vec<Value> {
    recent
        .lines(usize::MAX, None)
        .iter()
        .map(|line| serde_json::from_str::<Value>(&line.text).unwrap())
        .filter(|line| line["message"] == message)
        .collect()
}

const CHANGED: &str = "log filter changed through /debug/log-level";
const REVERTED: &str = "temporary log filter change reverted";

#[tokio::test]
async fn changes_and_reverts_are_logged_after_the_filter_turns_logging_off() {
    // Global: the revert is logged from the control's own thread.
    let (recent, addr, _guard) = serve_global_logs().await;

    // Each change silences the admin crate, then more, then everything: each is logged once,
    // with what was asked, the filter before and the filter after.
    let mut from = "info".to_owned();
    for directives in [
        "info,periscope_admin=off",
        "trace,periscope_admin=off,periscope::access=off",
        "off",
        "off,periscope=off,periscope::log_level=off",
    ] {
        let body = serde_json::json!({ "directives": directives }).to_string();
        let changed = post_json(addr, "/debug/log-level", &body).await;
        assert_eq!(changed.status, 200, "{}", changed.text());
        let change = format!("set {directives}");
        let logged: Vec<Value> = lines_saying(&recent, CHANGED)
            .into_iter()
            .filter(|line| line["data"]["change"] == change.as_str())
            .collect();
        assert_eq!(logged.len(), 1, "{directives}: {logged:?}");
        assert_eq!(logged[0]["level"], "warn");
        assert_eq!(logged[0]["target"], "periscope::log_level");
        assert_eq!(logged[0]["data"]["from"], from.as_str());
        assert_eq!(logged[0]["data"]["to"], directives);
        from = directives.to_owned();
    }
    // The filter is off for everything else.
    tracing::error!("marker-silenced");
    assert!(lines_saying(&recent, "marker-silenced").is_empty());

    // A temporary change made while logging is off, and its revert, are logged too.
    let temporary = post_json(
        addr,
        "/debug/log-level",
        r#"{"directives":"error,periscope_admin=off","ttl_s":0.2}"#,
    )
    .await;
    assert_eq!(temporary.status, 200, "{}", temporary.text());
    assert_eq!(
        lines_saying(&recent, CHANGED)
            .iter()
            .filter(|line| line["data"]["change"] == "set error,periscope_admin=off for 0.2s")
            .count(),
        1
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let reverted = loop {
        let reverted = lines_saying(&recent, REVERTED);
        if !reverted.is_empty() {
            break reverted;
        }
        assert!(Instant::now() < deadline, "the revert was not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reverted.len(), 1, "{reverted:?}");
    assert_eq!(reverted[0]["level"], "warn");
    assert_eq!(reverted[0]["target"], "periscope::log_level");
    assert_eq!(reverted[0]["data"]["from"], "error,periscope_admin=off");
    assert_eq!(
        reverted[0]["data"]["to"],
        "off,periscope=off,periscope::log_level=off"
    );
}

//! Concurrent `POST /debug/log-level` calls: each change is logged, and answered, with its own
//! `from` and `to`, however the calls interleave.

mod support;

use std::collections::HashSet;

use serde_json::Value;
use support::{post_json, serve_global_logs};

const CHANGED: &str = "log filter changed through /debug/log-level";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_are_each_logged_and_answered_with_their_own_directives() {
    let (recent, addr, _guard) = serve_global_logs().await;
    const CHANGES: usize = 200;
    let tasks: Vec<_> = (0..CHANGES)
        .map(|i| {
            tokio::spawn(async move {
                let directives = format!("info,target_{i}=trace");
                let body = serde_json::json!({ "directives": directives }).to_string();
                let answer = post_json(addr, "/debug/log-level", &body).await;
                assert_eq!(answer.status, 200, "{}", answer.text());
                (directives, answer.json())
            })
        })
        .collect();
    for task in tasks {
        let (directives, answer) = task.await.unwrap();
        // The answer is the state this change made, not a later one's.
        assert_eq!(answer["current"], directives.as_str(), "{answer}");
    }

    let lines: Vec<Value> = recent
        .lines(usize::MAX, None)
        .iter()
        .map(|line| serde_json::from_str::<Value>(&line.text).unwrap())
        .filter(|line| line["message"] == CHANGED)
        .collect();
    assert_eq!(lines.len(), CHANGES);
    let mut left = HashSet::new();
    for line in &lines {
        let data = &line["data"];
        let (from, to) = (data["from"].as_str().unwrap(), data["to"].as_str().unwrap());
        // `to` is what this change asked for ...
        assert_eq!(data["change"], format!("set {to}"), "{line}");
        // ... and every filter in force is left by exactly one change: each line's `from` is
        // the `to` of the change before it.
        assert!(
            left.insert(from.to_owned()),
            "two changes from {from}: {lines:#?}"
        );
    }
    let mut entered: HashSet<String> = lines
        .iter()
        .map(|line| line["data"]["to"].as_str().unwrap().to_owned())
        .collect();
    entered.insert("info".to_owned());
    assert!(
        left.is_subset(&entered),
        "a change from a filter never in force"
    );
}

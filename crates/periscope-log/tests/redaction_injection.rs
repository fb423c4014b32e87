//! Secrets never reach the output; no value can break a line or forge a field.

mod common;

use std::collections::BTreeMap;

use common::capture;
use periscope_log::LogLayerBuilder;
use serde_json::{Value, json};

const SECRETS: &[&str] = &[
    "hunter2",
    "sk-live-1234",
    "Bearer abc.def",
    "sess-cookie-9",
    "span-secret-7",
    "nested-token-5",
    "json-pw-3",
    "struct-key-1",
    "PRIVATE-KEY-BYTES",
];

#[derive(serde::Serialize)]
struct Credentials {
    user: &'static str,
    #[serde(rename = "apiKey")]
    api_key: &'static str,
    nested: Vec<BTreeMap<&'static str, &'static str>>,
}

#[test]
fn sensitive_keys_are_redacted_at_any_depth_in_events_and_spans() {
    let out = capture(
        |b| b.sensitive_key("ssn"),
        |_| {
            let span = tracing::info_span!("request", api_key = "span-secret-7", user_id = "usr_1");
            let _enter = span.enter();
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", "Bearer abc.def".parse().unwrap());
            headers.insert("cookie", "sess-cookie-9".parse().unwrap());
            headers.insert("accept", "*/*".parse().unwrap());
            let body = r#"{"user":"ann","auth":{"Password":"json-pw-3","list":[{"refresh_token":"nested-token-5"}]}}"#;
            let creds = Credentials {
                user: "ann",
                api_key: "struct-key-1",
                nested: vec![BTreeMap::from([("Private-Key", "PRIVATE-KEY-BYTES")])],
            };
            tracing::info!(
                password = "hunter2",
                Client_Secret = "sk-live-1234",
                user_ssn = 123456789u64,
                headers = ?headers,
                body = body,
                creds = periscope_log::json(&creds),
                prompt_tokens = 12u64,
                "login"
            );
        },
    );
    let text = out.text();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(!text.contains("123456789"), "extended key leaked: {text}");
    let line = &out.lines()[0];
    let data = &line["data"];
    assert_eq!(data["password"], "[REDACTED]");
    assert_eq!(data["Client_Secret"], "[REDACTED]");
    assert_eq!(data["user_ssn"], "[REDACTED]");
    // The span's own field is redacted where it lands (data), its context field is kept.
    assert_eq!(data["api_key"], "[REDACTED]");
    assert_eq!(line["user_id"], "usr_1");
    // Debug of a header map is JSON text: kept as a string, with its secrets redacted.
    let headers: Value = serde_json::from_str(data["headers"].as_str().unwrap()).unwrap();
    assert_eq!(
        headers,
        json!({"authorization": "[REDACTED]", "cookie": "[REDACTED]", "accept": "*/*"})
    );
    let body: Value = serde_json::from_str(data["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"user": "ann", "auth": {"Password": "[REDACTED]", "list": [{"refresh_token": "[REDACTED]"}]}})
    );
    assert_eq!(
        data["creds"],
        json!({"user": "ann", "apiKey": "[REDACTED]", "nested": [{"Private-Key": "[REDACTED]"}]})
    );
    // A count whose name contains "token" is not a secret.
    assert_eq!(data["prompt_tokens"], 12);
}

/// The usage figures of the common LLM APIs keep their numbers (OpenAI's detail objects
/// included, still redacted key by key inside), as OpenTelemetry's GenAI fields do.
#[test]
fn llm_usage_figures_of_common_providers_keep_their_numbers() {
    let openai = json!({
        "prompt_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0, "session_token": "nested-token-5"},
        "completion_tokens_details": {"reasoning_tokens": 7, "accepted_prediction_tokens": 1},
        "total_tokens": 17
    });
    let gemini = json!({"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8});
    let line = common::one_line(|| {
        tracing::info!(
            openai = periscope_log::json(&openai),
            gemini = periscope_log::json(&gemini),
            gen_ai.usage.input_tokens = 42u64,
            gen_ai.usage.output_tokens = 9u64,
            "usage"
        );
    });
    let data = &line["data"];
    let details = &data["openai"]["prompt_tokens_details"];
    assert_eq!(details["cached_tokens"], 4, "{line}");
    assert_eq!(details["session_token"], "[REDACTED]", "{line}");
    assert_eq!(
        data["openai"]["completion_tokens_details"]["reasoning_tokens"],
        7
    );
    assert_eq!(data["gemini"], gemini);
    assert_eq!(data["gen_ai.usage.input_tokens"], 42, "{line}");
    assert_eq!(data["gen_ai.usage.output_tokens"], 9, "{line}");
}

#[test]
fn error_and_debug_values_under_sensitive_keys_are_never_formatted() {
    let out = capture(
        |b| b,
        |_| {
            let error = std::io::Error::other("hunter2");
            tracing::warn!(session_error = &error as &dyn std::error::Error, token = ?"hunter2", "x");
        },
    );
    let text = out.text();
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(out.lines()[0]["data"]["session_error"], "[REDACTED]");
}

/// Values that try to break out of their string.
const HOSTILE: &[&str] = &[
    "line one\nline two\r\n",
    "quote \" close \"}, \"level\":\"error\", \"x\":{\"",
    "nul \u{0} byte",
    "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}",
    "backslash \\\" \\u0000",
    "next line \u{85} line sep \u{2028} para sep \u{2029} del \u{7f}",
    "tab\tand\u{8}backspace\u{c}formfeed",
];

#[test]
fn hostile_messages_and_fields_give_exactly_one_valid_line_each() {
    let invalid_utf8: &[u8] = b"bad \xff\xfe utf8 \xc3\x28 \n end";
    let out = capture(
        |b| b,
        |_| {
            for value in HOSTILE {
                tracing::info!(field = *value, debug = ?value, "{}", value);
            }
            tracing::info!(
                raw = invalid_utf8,
                "{}",
                String::from_utf8_lossy(invalid_utf8)
            );
            tracing::info!("evil\"key\n" = 1u64, "hostile key");
            let span = tracing::info_span!("request", request_id = "a\"\n}{\"level\":\"error");
            let _enter = span.enter();
            tracing::info!("in a hostile span");
        },
    );
    let text = out.text();
    let lines = out.lines();
    assert_eq!(lines.len(), HOSTILE.len() + 3, "{text}");
    for line in text.lines() {
        assert!(!line.contains('\u{1b}') && !line.contains('\u{0}') && !line.contains('\u{85}'));
        assert!(!line.contains('\u{2028}') && !line.contains('\r') && !line.contains('\u{7f}'));
    }
    for (line, value) in lines.iter().zip(HOSTILE) {
        assert_eq!(line["message"], *value);
        assert_eq!(line["data"]["field"], *value);
        assert_eq!(line["data"]["debug"], format!("{value:?}"));
        assert_eq!(line["level"], "info");
        assert_eq!(
            line.as_object().unwrap().len(),
            5,
            "no forged field: {line}"
        );
    }
    let lossy = String::from_utf8_lossy(invalid_utf8);
    assert_eq!(lines[HOSTILE.len()]["message"], *lossy);
    assert_eq!(lines[HOSTILE.len()]["data"]["raw"], *lossy);
    assert_eq!(lines[HOSTILE.len() + 1]["data"]["evil\"key\n"], 1);
    let last = &lines[HOSTILE.len() + 2];
    assert_eq!(last["request_id"], "a\"\n}{\"level\":\"error");
    assert_eq!(last["level"], "info");
}

#[derive(serde::Serialize, Debug)]
struct Login {
    user: String,
    password: String,
    blob: String,
}

fn login(blob_len: usize) -> Login {
    Login {
        user: "ann".into(),
        password: "hunter2".into(),
        blob: "x".repeat(blob_len),
    }
}

/// Structured values that cannot be redacted key by key (too big to parse, or `Debug` text that
/// is not quite JSON) are hidden whole when they mention a sensitive key: redaction fails
/// closed. Values that mention none are still written.
#[test]
fn structured_values_that_cannot_be_parsed_fail_closed() {
    let mut map = std::collections::HashMap::new();
    map.insert("password", "hunter2");
    map.insert("note", "esc\u{1b}[0m"); // Debug writes \u{1b}: not JSON
    let mut escaped = http::HeaderMap::new();
    escaped.insert("authorization", "Bearer hunter2".parse().unwrap());
    escaped.insert("user-agent", http::HeaderValue::from_static("x\\y")); // not a JSON escape
    let mut marked = http::HeaderMap::new();
    let mut auth = http::HeaderValue::from_static("Bearer abc");
    auth.set_sensitive(true); // Debug writes a bare `Sensitive`
    marked.insert("authorization", auth);
    marked.insert("cookie", "sid=hunter2".parse().unwrap());
    let big_body = format!(
        r#"{{"password":"hunter2","blob":"{}"}}"#,
        "x".repeat(70_000)
    );
    let mut harmless = std::collections::HashMap::new();
    harmless.insert("note", "esc\u{1b}[0m");

    let out = capture(
        |b| b,
        |_| {
            tracing::info!(login = periscope_log::json(&login(70_000)), "big json");
            tracing::info!(body = big_body.as_str(), "big text");
            tracing::info!(params = ?map, "map");
            tracing::info!(headers = ?escaped, "escaped");
            tracing::info!(headers = ?marked, "marked");
            tracing::info!(login = ?Some(periscope_log::Json(&login(0))), "wrapped");
            tracing::info!(params = ?harmless, "harmless");
        },
    );
    assert!(!out.text().contains("hunter2"), "a secret was written");
    let lines = out.lines();
    let field = |i: usize, key: &str| lines[i]["data"][key].clone();
    // The oversized `json` object stays an object, its text hidden inside.
    assert_eq!(
        field(0, "login"),
        serde_json::json!({"_truncated": "[REDACTED]"})
    );
    for (line, key) in [
        (1, "body"),
        (2, "params"),
        (3, "headers"),
        (4, "headers"),
        (5, "login"),
    ] {
        assert!(
            field(line, key) == "[REDACTED]",
            "line {line}: {key} not hidden"
        );
    }
    assert_eq!(field(6, "params"), r#"{"note": "esc\u{1b}[0m"}"#);
}

/// Within the size bound a big `json` value is still redacted key by key.
#[test]
fn big_json_values_within_the_bound_are_redacted_key_by_key() {
    let out = capture(
        |b| b.max_value_bytes(1 << 20),
        |_| tracing::info!(login = periscope_log::json(&login(70_000)), "big json"),
    );
    let login = &out.lines()[0]["data"]["login"];
    assert!(login["password"] == "[REDACTED]" && login["user"] == "ann");
    assert_eq!(login["blob"].as_str().map(str::len), Some(70_000));
}

/// JSON text above 64 KiB but within a raised size bound is redacted key by key, as a `json`
/// value of that size is: not hidden whole because its prose mentions a session or a token.
#[test]
fn json_text_within_a_raised_size_bound_is_redacted_key_by_key() {
    let body = json!({
        "password": "hunter2",
        "prompt": format!("summarise the session token docs {}", "x".repeat(100_000)),
    })
    .to_string();
    let out = capture(
        |b| b.max_value_bytes(1 << 20),
        |_| tracing::info!(body = body.as_str(), "big body"),
    );
    assert!(!out.text().contains("hunter2"), "a secret was written");
    let written: Value = serde_json::from_str(out.lines()[0]["data"]["body"].as_str().unwrap())
        .expect("the body, redacted key by key");
    assert_eq!(written["password"], "[REDACTED]");
    assert!(
        written["prompt"]
            .as_str()
            .unwrap()
            .starts_with("summarise the session")
    );
}

/// serde writes a `(String, String)` as a two-element array: a form's or a query's fields
/// (`url::Url::query_pairs()` collected) logged with `json(..)`, or as JSON text, hide the
/// value of a pair whose first element names a secret, as `?form` hides the whole value.
#[test]
fn json_pairs_naming_a_secret_are_redacted() {
    let form = [
        ("user", "ann"),
        ("password", "hunter2"),
        ("smtp_pass", "sk-live-1234"),
    ];
    let text = serde_json::to_string(&form).unwrap();
    let settings = json!([
        ["require_auth", true],
        ["api_key", null],
        ["invalid token", "kept"]
    ]);
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(form = periscope_log::json(&form), "as a json value");
            tracing::info!(form = text.as_str(), "as JSON text");
            tracing::info!(settings = periscope_log::json(&settings), "not secrets");
        },
    );
    assert!(!out.text().contains("hunter2"), "a secret was written");
    assert!(!out.text().contains("sk-live-1234"), "a secret was written");
    let lines = out.lines();
    let expected = json!([
        ["user", "ann"],
        ["password", "[REDACTED]"],
        ["smtp_pass", "[REDACTED]"]
    ]);
    assert_eq!(lines[0]["data"]["form"], expected);
    let from_text: Value =
        serde_json::from_str(lines[1]["data"]["form"].as_str().unwrap()).unwrap();
    assert_eq!(from_text, expected);
    // A setting, a secret not set and words are no pairs hiding a secret.
    assert_eq!(lines[2]["data"]["settings"], settings);

    let mut value = json!({"form": form, "triple": ["password", "a", "b"]});
    periscope_log::Redactor::default().redact_value(&mut value);
    assert_eq!(
        value,
        json!({"form": expected, "triple": ["password", "a", "b"]})
    );
}

/// An object naming a secret in its `name` or `key` (Kubernetes' `EnvVar`, a header in a list
/// of them, AWS's tags) hides its `value`, in a log line and in a value masked for
/// `/debug/config`; other entries, and a secret not set, stay.
#[test]
fn name_value_entries_naming_a_secret_are_masked() {
    let config = json!({
        "env": [
            {"name": "DB_PASSWORD", "value": "hunter2"},
            {"name": "LOG_LEVEL", "value": "info"},
            {"value": "sk-live-1234", "name": "api_key"},
            {"name": "ADMIN_TOKEN", "value": null},
            // Both a `key` (read first: the map is sorted) and a `name`, either naming it.
            {"name": "DB_PASSWORD", "key": "primary", "value": "hunter3"},
            {"Name": "db", "Key": "SECRET_KEY", "Value": "hunter4"},
        ],
        "tags": [{"Key": "Authorization", "Value": "Bearer abc.def", "note": "x"}],
    });
    let expected = json!({
        "env": [
            {"name": "DB_PASSWORD", "value": "[REDACTED]"},
            {"name": "LOG_LEVEL", "value": "info"},
            {"value": "[REDACTED]", "name": "api_key"},
            {"name": "ADMIN_TOKEN", "value": null},
            {"name": "DB_PASSWORD", "key": "primary", "value": "[REDACTED]"},
            {"Name": "db", "Key": "SECRET_KEY", "Value": "[REDACTED]"},
        ],
        "tags": [{"Key": "Authorization", "Value": "[REDACTED]", "note": "x"}],
    });
    let mut masked = config.clone();
    periscope_log::Redactor::default().mask_value(&mut masked);
    assert_eq!(masked, expected);
    let text = config.to_string();
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(config = periscope_log::json(&config), "as a json value");
            tracing::info!(config = text.as_str(), "as JSON text");
        },
    );
    for secret in [
        "hunter2",
        "hunter3",
        "hunter4",
        "sk-live-1234",
        "Bearer abc.def",
    ] {
        assert!(!out.text().contains(secret), "{secret} was written");
    }
    let lines = out.lines();
    assert_eq!(lines[0]["data"]["config"], expected);
    let from_text: Value =
        serde_json::from_str(lines[1]["data"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(from_text, expected);
}

/// A name/value entry with a key written twice (JSON text, a flattened map): a reader may take
/// either, so every `value` is hidden when any `name` names a secret.
#[test]
fn named_value_with_repeated_keys_is_redacted() {
    /// Writes `name`, then `value` twice, as a flattened map repeating a key does.
    struct Twice;
    impl serde::Serialize for Twice {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(None)?;
            map.serialize_entry("name", "DB_PASSWORD")?;
            map.serialize_entry("value", "a")?;
            map.serialize_entry("value", "hunter2")?;
            map.end()
        }
    }
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(env = r#"{"name":"DB_PASSWORD","value":"a","value":"hunter2"}"#);
            tracing::info!(env = r#"{"name":"x","name":"DB_PASSWORD","value":"hunter2"}"#);
            tracing::info!(env = periscope_log::json(&Twice));
        },
    );
    assert!(!out.text().contains("hunter2"), "{}", out.text());
    let lines = out.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[2]["data"]["env"],
        json!({"name": "DB_PASSWORD", "value": "[REDACTED]"})
    );
}

/// Many values under one secret name, between other members and nested objects (JSON text, so
/// every member is kept): every value hidden, every other member kept whole, the line valid.
/// The object is rewritten in one pass, not once per hidden value.
#[test]
fn many_values_under_a_secret_name_are_hidden_and_the_rest_kept() {
    let mut text = String::from(r#"{"name":"password""#);
    for i in 0..300 {
        text.push_str(&format!(
            r#","value":"secret-{i}","note{i}":{{"value":"plain-{i}","n":[{i}]}},"value":{i}"#
        ));
    }
    text.push('}');
    let out = capture(
        |b| b.max_value_bytes(1 << 20),
        |_| tracing::info!(env = text.as_str()),
    );
    let line = &out.lines()[0];
    assert!(!out.text().contains("secret-"), "a value shown");
    let rewritten = line["data"]["env"].as_str().unwrap();
    // Valid JSON still (a repeated key is kept in a string, as sent).
    let _: Value = serde_json::from_str(rewritten).unwrap();
    for i in [0, 1, 150, 299] {
        let note = format!(r#""note{i}":{{"value":"plain-{i}","n":[{i}]}}"#);
        assert!(rewritten.contains(&note), "{note} in {rewritten}");
    }
    assert_eq!(rewritten.matches(r#""value":"[REDACTED]""#).count(), 600);
}

/// A key can hold a secret too: pools or replicas keyed by their connection string show in
/// `/debug/status` and `/debug/config` masked as any string is, each entry kept.
#[test]
fn mask_value_masks_secrets_in_object_keys() {
    let mut pools = json!({
        "postgres://app:hunter2@db-ro/app": {"idle": 3},
        "postgres://app:sk-live-1234@db-ro/app": {"idle": 1},
        "redis://cache:6379": {"idle": 2},
    });
    periscope_log::Redactor::default().mask_value(&mut pools);
    let text = pools.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("sk-live-1234"),
        "{text}"
    );
    let keys: Vec<&str> = pools
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.contains(&"postgres://app:[REDACTED]@db-ro/app"),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"postgres://app:[REDACTED]@db-ro/app#2"),
        "{keys:?}"
    );
    assert_eq!(pools["redis://cache:6379"]["idle"], 2);
}

/// Free text that opens with a bracket is no structure that failed to parse: it stays
/// readable where it mentions a session or a token in its prose, while a `Debug` list naming
/// a secret as a key, and cut JSON, are still hidden.
#[test]
fn bracket_prefixed_free_text_is_not_redacted() {
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Rejected(&'static str);
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Login {
        password: &'static str,
    }
    let out = capture(
        |b| b,
        |_| {
            tracing::warn!(note = "[nightly] rotate session keys", "free text");
            tracing::warn!(rejected = ?vec![Rejected("invalid token: expired")], "a list");
            tracing::warn!(logins = ?vec![Login { password: "hunter2" }], "structs");
            tracing::warn!(body = r#"{"password":"hunter2""#, "cut json");
            tracing::warn!(
                body = r#"[{"db password": "hunter2"}, oops]"#,
                "broken json"
            );
        },
    );
    assert!(!out.text().contains("hunter2"), "a secret was written");
    let lines = out.lines();
    assert_eq!(lines[0]["data"]["note"], "[nightly] rotate session keys");
    assert_eq!(
        lines[1]["data"]["rejected"],
        r#"[Rejected("invalid token: expired")]"#
    );
    for (line, key) in [(2, "logins"), (3, "body"), (4, "body")] {
        assert_eq!(lines[line]["data"][key], "[REDACTED]", "line {line}");
    }
}

/// JSON text cut at the bound after it was compacted and redacted says how long the logged
/// value was, not its rewrite.
#[test]
fn cut_json_text_records_the_original_length() {
    let items: Vec<String> = (0..400).map(|i| format!("item-{i:04}")).collect();
    let pretty = serde_json::to_string_pretty(&json!({"items": items})).unwrap();
    let compact_len = serde_json::to_string(&json!({"items": items}))
        .unwrap()
        .len();
    assert!(compact_len > 1024 && pretty.len() > compact_len + 1000);
    let line = capture(
        |b| b.max_value_bytes(1024),
        |_| tracing::info!(body = pretty.as_str(), "pretty"),
    )
    .lines()
    .remove(0);
    let body = line["data"]["body"].as_str().unwrap();
    let marker = format!("…[truncated, original {} bytes]", pretty.len());
    assert!(body.ends_with(&marker), "{body}");
}

/// Over the size bound, a `json` value without secrets keeps its type: an object stays an
/// object and an array an array, their text truncated inside; a string stays a string.
#[test]
fn oversized_json_values_keep_their_type() {
    let items: Vec<u32> = (0..20_000).collect();
    let text = "y".repeat(100_000);
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                report = periscope_log::json(serde_json::json!({"blob": text})),
                items = periscope_log::json(&items),
                note = periscope_log::json(&text),
                "big"
            );
        },
    );
    let data = &out.lines()[0]["data"];
    let report = data["report"]["_truncated"].as_str().unwrap();
    assert!(report.starts_with(r#"{"blob":"yyy"#), "{report:.40}");
    assert!(
        report.contains("…[truncated, original "),
        "{}",
        &report[report.len() - 60..]
    );
    let items = data["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].as_str().unwrap().starts_with("[0,1,2,"));
    assert!(data["note"].as_str().unwrap().starts_with("\"yyy"));
}

/// A context field named like one of the line's own keys cannot duplicate or forge it.
#[test]
fn context_fields_cannot_take_the_lines_own_keys() {
    let out = capture(
        |b| {
            b.service("api")
                .context_field("level")
                .context_field("service")
        },
        |_| tracing::error!(level = "info", service = "forged", "boom"),
    );
    let text = out.text();
    let line = text.lines().next().unwrap();
    // `data` comes last: before it, each of the line's keys appears once.
    let top = &line[..line.find("\"data\":").unwrap_or(line.len())];
    assert_eq!(top.matches("\"level\":").count(), 1, "{line}");
    assert_eq!(top.matches("\"service\":").count(), 1, "{line}");
    let parsed = &out.lines()[0];
    assert_eq!(parsed["level"], "error");
    assert_eq!(parsed["service"], "api");
    assert_eq!(parsed["data"]["service"], "forged");
}

/// Counts `"key":` in a raw line: a parser keeps one value of a repeated key, so the line must
/// not have two.
fn occurrences(line: &str, key: &str) -> usize {
    line.matches(&format!("\"{key}\":")).count()
}

/// A field named twice keeps its last value, in an event as in a span (and as a value
/// recorded again replaces the old one); the event's own fields still win over the spans'.
#[test]
fn a_key_is_written_once_the_last_value_winning_in_events_as_in_spans() {
    let out = capture(
        |b| b,
        |_| {
            let span = tracing::info_span!(
                "job",
                s = 1,
                s = 2,
                b = "span",
                request_id = "req_span_1",
                request_id = "req_span_2"
            );
            let _entered = span.enter();
            tracing::info!(a = 1, a = 2, "twice");
            tracing::info!(
                user_id = "usr_1",
                user_id = "usr_2",
                request_id = "req_event_1",
                request_id = "req_event_2",
                s = 8,
                s = 9,
                "context twice"
            );
        },
    );
    let text = out.text();
    for line in text.lines() {
        for key in ["a", "s", "b", "request_id", "user_id"] {
            assert!(occurrences(line, key) <= 1, "{key}: {line}");
        }
    }
    let lines = out.lines();
    assert_eq!(lines[0]["data"]["a"], 2, "the event's last value: {text}");
    assert_eq!(lines[0]["data"]["s"], 2, "the span's last value: {text}");
    assert_eq!(lines[0]["data"]["b"], "span");
    assert_eq!(lines[0]["request_id"], "req_span_2", "{text}");
    assert_eq!(lines[1]["user_id"], "usr_2", "{text}");
    assert_eq!(
        lines[1]["request_id"], "req_event_2",
        "the event wins: {text}"
    );
    assert_eq!(lines[1]["data"]["s"], 9, "the event wins: {text}");

    // Flattened, `level` is written as `data.level`: a field named `data.level` is that key.
    let out = capture(
        |b| b.flatten_data(true),
        |_| tracing::info!(level = 1, data.level = 2, "flattened"),
    );
    let line = out.text();
    assert_eq!(occurrences(&line, "data.level"), 1, "{line}");
    assert_eq!(occurrences(&line, "level"), 1, "{line}");
    let parsed = &out.lines()[0];
    assert_eq!(parsed["level"], "info");
    assert_eq!(parsed["data.level"], 2, "{line}");

    // Not flattened, `level` and `data.level` are two keys of `data`.
    let out = capture(
        |b| b,
        |_| tracing::info!(level = 1, data.level = 2, "nested"),
    );
    let parsed = &out.lines()[0];
    assert_eq!(parsed["data"]["level"], 1);
    assert_eq!(parsed["data"]["data.level"], 2);
}

/// Distinct names that share a bit of the line's mask of written keys (`method` and
/// `aborted`, `status` and `client`: the layer's unit tests pin that they do) are all written,
/// from the event and from a span alike, while a name repeated among them keeps one value.
#[test]
fn distinct_keys_sharing_a_bit_of_the_key_mask_are_all_written() {
    let out = capture(
        |b| b,
        |_| {
            let span = tracing::info_span!("s", client = "span", aborted = "span", status = "span");
            let _entered = span.enter();
            tracing::info!(
                method = "GET",
                aborted = true,
                status = 200,
                status = 201,
                "own"
            );
            tracing::info!(method = "GET", "spans");
        },
    );
    let text = out.text();
    for line in text.lines() {
        for key in ["method", "aborted", "status", "client"] {
            assert_eq!(occurrences(line, key), 1, "{key}: {line}");
        }
    }
    let lines = out.lines();
    assert_eq!(
        lines[0]["data"],
        json!({"method": "GET", "aborted": true, "status": 201, "client": "span"}),
        "{text}"
    );
    assert_eq!(
        lines[1]["data"],
        json!({"method": "GET", "client": "span", "aborted": "span", "status": "span"}),
        "{text}"
    );
}

/// `message` recorded twice is one key like any other: the last value wins, and is not glued
/// onto the first.
#[test]
fn a_message_recorded_twice_keeps_the_last() {
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(message = "first", message = "second");
            tracing::info!(message = "not empty", message = "");
            // `tracing` records the format string before the fields.
            tracing::info!(message = "field", "text");
            tracing::info!("after");
        },
    );
    let messages: Vec<Value> = out.lines().iter().map(|l| l["message"].clone()).collect();
    assert_eq!(messages, ["second", "", "field", "after"]);
}

/// The redacted JSON a string field holds, parsed back.
fn json_in(field: &Value) -> Value {
    let text = field
        .as_str()
        .unwrap_or_else(|| panic!("a string: {field}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn json_bodies_are_redacted_whether_displayed_debugged_as_string_or_bytes_or_bom_prefixed() {
    let body = String::from(r#"{"user":"ann","password":"hunter2","note":"a \"quoted\" é\n"}"#);
    let bytes = bytes::Bytes::from(body.clone());
    let with_bom = format!("\u{feff}{body}");
    let bytes_with_bom = bytes::Bytes::from(with_bom.clone());
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                shown = %body,
                debugged = ?body,
                raw = ?bytes,
                bom = with_bom.as_str(),
                debugged_bom = ?with_bom,
                raw_bom = ?bytes_with_bom,
                "bodies"
            );
        },
    );
    assert!(!out.text().contains("hunter2"), "{}", out.text());
    let data = &out.lines()[0]["data"];
    let expected = json!({"user": "ann", "password": "[REDACTED]", "note": "a \"quoted\" é\n"});
    for key in ["shown", "debugged", "raw", "bom", "debugged_bom", "raw_bom"] {
        assert_eq!(json_in(&data[key]), expected, "{key}");
    }
}

#[test]
fn debugged_literals_that_cannot_be_decoded_fail_closed() {
    let out = capture(
        |b| b,
        |_| {
            // A Debug impl that writes a string-like literal Rust never would (`\q`).
            struct Odd;
            impl std::fmt::Debug for Odd {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(r#""{\"password\":\"hunter2\",\"x\":\"\q\"}""#)
                }
            }
            tracing::info!(odd = ?Odd, plain = ?"not json", "x");
        },
    );
    assert!(!out.text().contains("hunter2"), "{}", out.text());
    let data = &out.lines()[0]["data"];
    assert_eq!(data["odd"], "[REDACTED]");
    assert_eq!(data["plain"], "\"not json\"");
}

/// `Debug` text that is not JSON but names a sensitive key (a struct field, a map key, a key of
/// JSON quoted inside a literal) cannot be redacted key by key: the whole value is hidden.
#[test]
fn debug_values_naming_a_sensitive_key_are_hidden_whole() {
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Login {
        user: &'static str,
        password: &'static str,
    }
    #[derive(Debug)]
    #[allow(dead_code)]
    enum AuthError {
        Rejected(&'static str),
    }
    let body = String::from(r#"{"user":"ann","password":"hunter2"}"#);
    let request = http::Request::builder()
        .uri("/login")
        .header("authorization", "Bearer hunter2")
        .body(())
        .unwrap();
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                login = ?Login { user: "ann", password: "hunter2" },
                maybe_body = ?Some(body.clone()),
                request = ?request,
                // Free text that merely mentions a key word stays readable.
                error = ?AuthError::Rejected("invalid token: expired"),
                usage = ?Some([("max_tokens", 5)]),
                "debugged"
            );
        },
    );
    assert!(!out.text().contains("hunter2"), "{}", out.text());
    let data = &out.lines()[0]["data"];
    for key in ["login", "maybe_body", "request"] {
        assert_eq!(data[key], "[REDACTED]", "{key}");
    }
    assert_eq!(data["error"], r#"Rejected("invalid token: expired")"#);
    assert_eq!(data["usage"], r#"Some([("max_tokens", 5)])"#);
}

#[test]
fn json_text_inside_a_string_value_is_redacted_too() {
    let body = r#"{"user":"ann","password":"hunter2"}"#;
    let mut map = std::collections::HashMap::new();
    map.insert("body", body);
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                req = periscope_log::json(json!({"path": "/login", "body": body})),
                params = ?map,
                "nested"
            );
            // Not JSON, so not redactable key by key: hidden when it mentions a secret.
            let broken = r#"{"password": "hunter2""#;
            tracing::info!(
                req = periscope_log::json(json!({"body": broken, "tag": "[x]"})),
                "broken"
            );
        },
    );
    assert!(!out.text().contains("hunter2"), "{}", out.text());
    let lines = out.lines();
    let expected = json!({"user": "ann", "password": "[REDACTED]"});
    let req = &lines[0]["data"]["req"];
    assert_eq!(req["path"], "/login");
    assert_eq!(json_in(&req["body"]), expected);
    let params = json_in(&lines[0]["data"]["params"]);
    assert_eq!(json_in(&params["body"]), expected);
    assert_eq!(
        lines[1]["data"]["req"],
        json!({"body": "[REDACTED]", "tag": "[x]"})
    );
}

/// Flattened, an event field `level` is written `data.level`: a context field of that name
/// would write the key a second time, so it is refused like the line's own keys.
#[test]
fn context_fields_cannot_take_the_data_form_of_the_lines_own_keys() {
    let out = capture(
        |b| b.flatten_data(true).context_field("data.level"),
        |_| {
            let span = tracing::info_span!("job", data.level = "from the span");
            let _entered = span.enter();
            tracing::info!(level = "forged", "flattened");
        },
    );
    let line = out.text();
    assert_eq!(occurrences(&line, "data.level"), 1, "{line}");
    assert_eq!(out.lines()[0]["data.level"], "forged", "{line}");

    let error = periscope_log::LogLayer::builder()
        .try_context_field("data.level")
        .unwrap_err();
    assert_eq!(error.name(), "data.level");
    assert!(
        error
            .to_string()
            .starts_with("context field \"data.level\" is refused: "),
        "{error}"
    );
    let error = periscope_log::LogLayer::builder()
        .try_context_field("service")
        .unwrap_err();
    assert_eq!(error.name(), "service");
    assert!(
        periscope_log::LogLayer::builder()
            .try_context_field("data.region")
            .is_ok()
    );
}

/// A map key in `Debug` text is everything inside its quotes: a space or a symbol in it
/// (`"db password"`, `"auth/token"`) or a letter outside ASCII does not hide the secret.
#[test]
fn debug_map_keys_with_separators_or_symbols_are_hidden() {
    use std::collections::BTreeMap;
    let creds = BTreeMap::from([("db password", "hunter2")]);
    let headers = BTreeMap::from([("auth/token", "hunter3")]);
    let accented = BTreeMap::from([("éPassword", "hunter4")]);
    let out = common::capture(
        |b| b,
        |_| {
            tracing::info!(v = ?Some(&creds), "a");
            tracing::info!(v = ?(1, &headers), "b");
            tracing::info!(v = ?Some(&accented), "c");
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 3);
    for line in lines {
        assert_eq!(line["data"]["v"], "[REDACTED]", "{line}");
    }
}

/// What the key-byte rule caught before a quoted key became "everything inside its quotes"
/// still is: JSON text cut inside a literal (`Chunk("password\": ..")`), and a map key holding
/// an escaped quote or ending in a backslash.
#[test]
fn debug_keys_cut_or_escaped_are_still_hidden() {
    use std::collections::BTreeMap;
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Chunk(&'static str);
    let out = common::capture(
        |b| b,
        |_| {
            tracing::info!(v = ?Chunk("password\": \"hunter2\"}"), "a");
            tracing::info!(v = ?(1, "password\":\"hunter2\""), "b");
            tracing::info!(v = ?Some(BTreeMap::from([("my token\\", "hunter2")])), "c");
            tracing::info!(v = ?Some(BTreeMap::from([("x\"password", "hunter2")])), "d");
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 4);
    for line in lines {
        assert_eq!(line["data"]["v"], "[REDACTED]", "{line}");
    }
}

#[test]
fn an_empty_password_does_not_swallow_the_next_secrets_key() {
    let redactor = periscope_log::Redactor::default();
    for text in [
        "login password= Authorization: Bearer S3cr3tXYZ",
        "login password= db_password: S3cr3tXYZ",
        "login password= cookie: S3cr3tXYZ",
    ] {
        let masked = redactor.mask_text(text).expect("a secret is masked");
        assert!(!masked.contains("S3cr3tXYZ"), "{text:?} became {masked:?}");
    }
    // A value after spaces is still masked, also one that ends like a key.
    assert_eq!(
        redactor.mask_text("password = c2VjcmV0==").as_deref(),
        Some("password = [REDACTED]")
    );
    assert_eq!(
        redactor.mask_text("password = my_secret:").as_deref(),
        Some("password = [REDACTED]")
    );
}

/// Secrets that `/debug/config` and error texts showed before: an ODBC connection string's
/// `Pwd`, the signature of an Azure SAS, S3 presigned or GCS signed URL, a webhook's path, a
/// command line's `--password <value>`, a key named `auth`.
#[test]
fn connection_strings_signed_urls_webhooks_and_options_are_masked() {
    let redactor = periscope_log::Redactor::default();
    for (text, expected) in [
        (
            "Driver={ODBC Driver 18};Server=db;Uid=app;Pwd=S3cr3t;",
            "Driver={ODBC Driver 18};Server=db;Uid=app;Pwd=[REDACTED];",
        ),
        (
            "Server=db;UID=app;PWD=S3cr3t",
            "Server=db;UID=app;PWD=[REDACTED]",
        ),
        (
            "Server=db; Uid=app; Pwd={S3c;r}}3t};Database=x",
            "Server=db; Uid=app; Pwd=[REDACTED];Database=x",
        ),
        ("password=/S3cr3t user=app", "password=[REDACTED] user=app"),
        // Azure Storage's and Service Bus's connection strings.
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0==;EndpointSuffix=core.windows.net",
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=[REDACTED];EndpointSuffix=core.windows.net",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0=",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=[REDACTED]",
        ),
        (
            "https://acct.blob.core.windows.net/c?sv=2022&sig=S3cr3t",
            "https://acct.blob.core.windows.net/c?sv=2022&sig=[REDACTED]",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=S3cr3t&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]&X-Amz-Expires=60",
        ),
        (
            "GET https://b.s3.amazonaws.com/k?AWSAccessKeyId=AK&Signature=S3cr3t&Expires=1 failed",
            "GET https://b.s3.amazonaws.com/k?AWSAccessKeyId=[REDACTED]&Signature=[REDACTED]&Expires=1 failed",
        ),
        (
            "https://storage.googleapis.com/b/o?X-Goog-Signature=S3cr3t",
            "https://storage.googleapis.com/b/o?X-Goog-Signature=[REDACTED]",
        ),
        (
            "post to https://hooks.slack.com/services/T000/B000/S3cr3t failed",
            "post to https://hooks.slack.com/[REDACTED] failed",
        ),
        (
            "https://discord.com/api/webhooks/123/S3cr3t?wait=true",
            "https://discord.com/api/webhooks/123/[REDACTED]?wait=true",
        ),
        (
            "exec db-tool --password S3cr3t --user app",
            "exec db-tool --password [REDACTED] --user app",
        ),
        (
            "exec db-tool -api-token 'S3 cr3t' -v",
            "exec db-tool -api-token [REDACTED] -v",
        ),
        (
            "exec db-tool --token=S3cr3t",
            "exec db-tool --token=[REDACTED]",
        ),
        ("auth=S3cr3t host=db", "auth=[REDACTED] host=db"),
    ] {
        assert_eq!(
            redactor.mask_text(text).as_deref(),
            Some(expected),
            "{text}"
        );
    }
    let mut config = serde_json::json!({
        "auth": "S3cr3t",
        "proxy": {"basic_auth": "u:S3cr3t", "proxyAuth": "S3cr3t"},
        "http_auth": {"type": "basic", "password": "S3cr3t"},
        "oauth_callback_url": "https://app/cb",
        "OAuth": {"client_id": "app"},
        "author": "ann",
        "auth_url": "https://idp/authorize",
        "pwd": "/srv/app",
    });
    redactor.mask_value(&mut config);
    assert_eq!(
        config,
        serde_json::json!({
            "auth": "[REDACTED]",
            "proxy": {"basic_auth": "[REDACTED]", "proxyAuth": "[REDACTED]"},
            "http_auth": {"type": "basic", "password": "[REDACTED]"},
            "oauth_callback_url": "https://app/cb",
            "OAuth": {"client_id": "app"},
            "author": "ann",
            "auth_url": "https://idp/authorize",
            "pwd": "/srv/app",
        })
    );
}

/// What merely looks like those secrets stays readable: a shell's `PWD`, `auth` inside a word,
/// `signature` in prose, options about a secret, a webhook endpoint without a path after it.
#[test]
fn pwd_directories_oauth_settings_and_prose_stay_readable() {
    let redactor = periscope_log::Redactor::default();
    for text in [
        "PWD=/home/app HOME=/root",
        "oauth_callback_url=https://app/cb author=ann auth_url=https://idp/x",
        "invalid signature: expected Signature header",
        "https://example.com/x?signed=1&sv=2022",
        "https://app.example/webhooks",
        "run --no-password --user app",
        "run --password-file /run/s --tokenizer bpe --session-timeout 30",
        "a - b -- c",
    ] {
        assert_eq!(redactor.mask_text(text), None, "{text}");
    }
}

/// A quote left open earlier in a text does not close at a later value's opening quote and
/// show that value: a quote closes a value only before whitespace, `;`, `,`, `&`, a closing
/// bracket or the end.
#[test]
fn an_unclosed_quote_does_not_show_a_later_quoted_secret() {
    let redactor = periscope_log::Redactor::default();
    for text in [
        "password='x\nPassword='S3cr3t';",
        "password='x Password='S3cr3t' next",
        "--password 'x --token 'S3cr3t'",
        r#"{"password":"x, "token":"S3cr3t"}"#,
    ] {
        let masked = redactor.mask_text(text).expect("a secret is masked");
        assert!(!masked.contains("S3cr3t"), "{text:?} became {masked:?}");
    }
    // SQL's doubled quote stays inside the value; closed values end where they did.
    assert_eq!(
        redactor.mask_text("password='it''s' user=app").as_deref(),
        Some("password=[REDACTED] user=app")
    );
    assert_eq!(
        redactor
            .mask_text(r#"Config { token: "a", api_key: Some("b") }"#)
            .as_deref(),
        Some("Config { token: [REDACTED], api_key: Some([REDACTED]) }")
    );
}

#[test]
fn an_empty_password_before_a_word_only_some_rules_mask_hides_what_follows() {
    // `token:` before a plain word is free text for its own rule (only a password's name, a
    // credential header or a quoted value counts after `:`): skipping the empty password's
    // value for it would show the secret after it.
    let redactor = periscope_log::Redactor::default();
    for text in [
        "login password= token: S3cr3tXYZ",
        "login password= api_key: S3cr3tXYZ",
        "login password= secret: S3cr3tXYZ",
    ] {
        let masked = redactor.mask_text(text).expect("a secret is masked");
        assert_eq!(masked, "login password= [REDACTED]", "{text:?}");
    }
}

/// A Teams webhook's path holds an `@` (`/webhookb2/<id>@<id>/IncomingWebhook/<secret>/..`):
/// taken for the end of user information, it hid the host and showed the secret.
#[test]
fn an_at_sign_in_a_webhook_path_does_not_show_its_secret() {
    let redactor = periscope_log::Redactor::default();
    for (text, expected) in [
        (
            "post https://org.webhook.office.com/webhookb2/a-b@c-d/IncomingWebhook/S3cr3t/e-f failed",
            "post https://org.webhook.office.com/[REDACTED] failed",
        ),
        (
            "https://outlook.office.com/webhook/a-b@c-d/IncomingWebhook/S3cr3t/e-f",
            "https://outlook.office.com/webhook/[REDACTED]",
        ),
        (
            "https://app:pw@outlook.office.com/webhook/a@b/IncomingWebhook/S3cr3t/c",
            "https://app:[REDACTED]@outlook.office.com/webhook/[REDACTED]",
        ),
        // A token holding `/` before the host is still user information.
        (
            "https://ab/cd+ef@github.com/org/repo.git",
            "https://[REDACTED]@github.com/org/repo.git",
        ),
    ] {
        assert_eq!(
            redactor.mask_text(text).as_deref(),
            Some(expected),
            "{text}"
        );
    }
}

/// An empty `password=` before an option naming a secret (`--token x`) took the option for
/// its value and masked it, so the option's own rule no longer saw it and showed its value.
#[test]
fn an_empty_password_before_a_secret_option_does_not_show_its_value() {
    let redactor = periscope_log::Redactor::default();
    for (text, expected) in [
        (
            "login password= --token S3cr3t x",
            "login password= --token [REDACTED] x",
        ),
        (
            "login password=  -api-key 'S3 cr3t' -v",
            "login password=  -api-key [REDACTED] -v",
        ),
        // Not followed by a value: the option is the empty password's value, as before.
        ("login password= --token", "login password= [REDACTED]"),
    ] {
        assert_eq!(
            redactor.mask_text(text).as_deref(),
            Some(expected),
            "{text}"
        );
    }
}

/// A command line printed as a list of quoted arguments (a `Command`'s `Debug`, a `Vec`'s, a
/// JSON array) masks the item after an option naming a secret, as it does on a shell's line.
#[test]
fn quoted_argument_lists_mask_a_secret_options_value() {
    let redactor = periscope_log::Redactor::default();
    for (text, expected) in [
        (
            r#"failed to spawn "db-tool" "--password" "S3cr3t" "--user" "app""#,
            r#"failed to spawn "db-tool" "--password" [REDACTED] "--user" "app""#,
        ),
        (
            r#"args: ["--password", "S3 cr3t", "--user", "app"]"#,
            r#"args: ["--password", [REDACTED], "--user", "app"]"#,
        ),
        (
            r#"exec ['tool', '-api-token', 'S3cr3t']"#,
            r#"exec ['tool', '-api-token', [REDACTED]]"#,
        ),
        (r#"["--token","S3cr3t"]"#, r#"["--token",[REDACTED]]"#),
    ] {
        assert_eq!(
            redactor.mask_text(text).as_deref(),
            Some(expected),
            "{text}"
        );
    }
    // An option without a value, followed by the next one, hides nothing.
    for text in [
        r#"["psql", "--password", "--username", "app"]"#,
        r#"["--no-password", "--user", "app"]"#,
    ] {
        assert_eq!(redactor.mask_text(text), None, "{text}");
    }
}

/// A boolean under a key ending in `auth` is a setting an operator checks in `/debug/config`
/// (is authentication required?), not a secret.
#[test]
fn a_boolean_auth_setting_stays_readable() {
    let redactor = periscope_log::Redactor::default();
    let mut config = serde_json::json!({
        "require_auth": true,
        "proxy": {"disable_auth": false, "basic_auth": "u:S3cr3t"},
    });
    redactor.mask_value(&mut config);
    assert_eq!(
        config,
        serde_json::json!({
            "require_auth": true,
            "proxy": {"disable_auth": false, "basic_auth": "[REDACTED]"},
        })
    );
}

/// An array under a key ending in `auth` or `pass` is a credential as a string there is: serde
/// writes `basic_auth: Option<(String, String)>` as `["admin", "hunter2"]`. Hidden in a value
/// masked for `/debug/config`, in a `json(..)` field, and in JSON text, as its `Debug` form
/// is hidden.
#[test]
fn an_array_under_an_auth_key_is_hidden_whole() {
    let redactor = periscope_log::Redactor::default();
    let mut config = serde_json::json!({
        "upstream": {"basic_auth": ["admin", "hunter2"], "smtp_pass": [1, 2]},
    });
    redactor.mask_value(&mut config);
    assert_eq!(
        config,
        serde_json::json!({
            "upstream": {"basic_auth": "[REDACTED]", "smtp_pass": "[REDACTED]"},
        })
    );
    let out = common::Captured::default();
    let (layer, guard) = periscope_log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    let value = serde_json::json!({"basic_auth": ["admin", "hunter2"], "region": "eu"});
    let text = value.to_string();
    common::with_default(
        tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer),
        || {
            tracing::info!(client = periscope_log::json(&value), "as a json value");
            tracing::info!(body = text.as_str(), "as JSON text");
        },
    );
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let written = line.to_string();
        assert!(!written.contains("hunter2"), "{written}");
        assert!(written.contains("eu"), "{written}");
    }
}

/// Pairs in `Debug` text (a form as reqwest's `.form(..)` takes it) whose first element names
/// a secret hide the value, wherever the pairs sit: in an `Option`, in a struct.
#[test]
fn a_form_pair_naming_a_secret_is_hidden() {
    let out = common::Captured::default();
    let (layer, guard) = periscope_log::LogLayer::builder()
        .writer(out.clone())
        .blocking(true)
        .build();
    #[derive(Debug)]
    #[allow(dead_code)]
    struct TokenRequest {
        form: Vec<(&'static str, &'static str)>,
    }
    common::with_default(
        tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer),
        || {
            tracing::info!(form = ?Some(vec![("password", "hunter2")]), "in an option");
            let request = TokenRequest {
                form: vec![("grant_type", "password"), ("password", "hunter2")],
            };
            tracing::info!(request = ?request, "in a struct");
            tracing::info!(form = ?Some(vec![("scope", "read")]), "no secret");
        },
    );
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 3);
    for line in &lines[..2] {
        let written = line.to_string();
        assert!(!written.contains("hunter2"), "{written}");
    }
    assert_eq!(lines[2]["data"]["form"], r#"Some([("scope", "read")])"#);
}

/// A number after `hooks` is a hook's id, not its secret: GitHub's and GitLab's API URLs stay
/// readable in an error, while the secret after Discord's id is still masked.
#[test]
fn a_hook_id_in_a_path_stays_readable() {
    let redactor = periscope_log::Redactor::default();
    for text in [
        "GET https://api.github.com/repos/org/repo/hooks/123 failed: 404",
        "https://gitlab.example.com/api/v4/projects/7/hooks/42",
    ] {
        assert_eq!(redactor.mask_text(text), None, "{text}");
    }
    assert_eq!(
        redactor
            .mask_text("https://discord.com/api/webhooks/123/S3cr3t")
            .as_deref(),
        Some("https://discord.com/api/webhooks/123/[REDACTED]")
    );
}

/// A command line kept in the configuration as a list shows its options, not the values of
/// those that name a secret.
#[test]
fn a_command_line_kept_as_a_list_hides_its_secret_options_values() {
    let mut config = serde_json::json!({
        "args": ["serve", "--password", "S3cr3t", "--port", "8080", "-token", "abc", "--debug"],
        "nested": [["--api-key", "k-123"], ["--password", "--verbose"]],
    });
    periscope_log::Redactor::default().mask_value(&mut config);
    assert_eq!(
        config["args"],
        serde_json::json!([
            "serve",
            "--password",
            "[REDACTED]",
            "--port",
            "8080",
            "-token",
            "[REDACTED]",
            "--debug"
        ])
    );
    assert_eq!(config["nested"][0][1], "[REDACTED]");
    // An option right after a secret's option is the next option, not its value.
    assert_eq!(config["nested"][1][1], "--verbose");
}

/// A log field whose last word is `auth` holds a credential (`auth = "Basic ..."`), as in
/// `mask_value`; `author`, `oauth_url` and `auth_url` are not.
#[test]
fn a_field_ending_in_auth_is_redacted_in_log_lines() {
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                auth = "Basic dXNlcjpodW50ZXIy",
                proxy_auth = "Basic cHJveHk6c2VjcmV0",
                author = "alice",
                oauth_url = "https://idp.example/authorize",
                auth_url = "https://idp.example/token",
                "calling upstream"
            );
        },
    );
    let lines = out.lines();
    let data = &lines[0]["data"];
    assert_eq!(data["auth"], "[REDACTED]", "{data}");
    assert_eq!(data["proxy_auth"], "[REDACTED]", "{data}");
    assert_eq!(data["author"], "alice");
    assert_eq!(data["oauth_url"], "https://idp.example/authorize");
    assert_eq!(data["auth_url"], "https://idp.example/token");
}

/// The `auth` / `pass` rule holds at any depth, as the key rules do: inside a `json(..)`
/// value, in JSON text logged as a string, and in `Debug` output, where a credential under such
/// a key hides the whole text. A boolean there is a setting and stays, as does an object,
/// redacted key by key.
#[test]
fn keys_ending_in_auth_or_pass_are_redacted_at_any_depth() {
    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug` only
    struct Upstream {
        url: &'static str,
        proxy_auth: &'static str,
    }
    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug` only
    struct Settings {
        require_auth: bool,
        smtp_pass: Option<&'static str>,
        author: &'static str,
    }
    let upstream = json!({
        "url": "https://models.example",
        "auth": "Bearer sk-json-auth-1",
        "basicAuth": "Basic anNvbi1iYXNpYy0y",
        "retries": {"DB_PASS": 31337},
        "require_auth": true,
        "auth_url": "https://idp.example/token",
        "oauth": {"client": "app", "password": "json-pw-in-auth-3"},
        "author": "alice",
    });
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                upstream = periscope_log::json(&upstream),
                body = r#"{"user":"ann","smtp_pass":"body-pass-4","proxyAuth":"Basic Ym9keS01"}"#,
                debug = ?Upstream { url: "https://x.example", proxy_auth: "Basic ZGVidWctNg==" },
                settings = ?Settings { require_auth: true, smtp_pass: None, author: "bob" },
                require_auth = true,
                skip_auth = false,
                smtp_pass = "field-pass-8",
                db_pass = 4242u64,
                "calling upstream"
            );
        },
    );
    let text = out.text();
    for secret in [
        "sk-json-auth-1",
        "anNvbi1iYXNpYy0y",
        "31337",
        "json-pw-in-auth-3",
        "body-pass-4",
        "Ym9keS01",
        "ZGVidWctNg==",
        "field-pass-8",
        "4242",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let data = &out.lines()[0]["data"];
    assert_eq!(
        data["upstream"],
        json!({
            "url": "https://models.example",
            "auth": "[REDACTED]",
            "basicAuth": "[REDACTED]",
            "retries": {"DB_PASS": "[REDACTED]"},
            "require_auth": true,
            "auth_url": "https://idp.example/token",
            "oauth": {"client": "app", "password": "[REDACTED]"},
            "author": "alice",
        }),
        "{data}"
    );
    let body: Value = serde_json::from_str(data["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"user": "ann", "smtp_pass": "[REDACTED]", "proxyAuth": "[REDACTED]"})
    );
    assert_eq!(data["debug"], "[REDACTED]");
    // A setting, no value and a name: nothing to hide.
    assert_eq!(
        data["settings"],
        r#"Settings { require_auth: true, smtp_pass: None, author: "bob" }"#
    );
    // An event's own fields alike: a boolean is a setting and keeps its type, a string or
    // number is hidden.
    assert_eq!(data["require_auth"], true, "{data}");
    assert_eq!(data["skip_auth"], false, "{data}");
    assert_eq!(data["smtp_pass"], "[REDACTED]");
    assert_eq!(data["db_pass"], "[REDACTED]");
}

/// Tenant ids reach the top level of every line from the `tenant` span field (the declared
/// tenant fields without a span field of their own) as from their own fields. One the service
/// configured as sensitive is masked at the top level and inside `data.tenant` alike: the
/// line must not show it at all.
#[test]
fn tenant_fields_show_unless_configured_sensitive_and_then_nowhere() {
    let keys = [
        periscope_context::TenantKey::new("workspace_id").unwrap(),
        periscope_context::TenantKey::new("region_id").unwrap(),
    ];
    let log = |configure: fn(LogLayerBuilder) -> LogLayerBuilder| {
        capture(
            |b| configure(b.tenant_keys(&keys)),
            |_| {
                // As periscope-trace's server span records them.
                let span = tracing::info_span!(
                    target: "periscope_trace::server",
                    "request",
                    org_id = "org_1",
                    project_id = "prj_1",
                    tenant = "workspace_id=ws_1,region_id=eu_1"
                );
                let _entered = span.enter();
                tracing::info!("inside");
            },
        )
    };

    let out = log(|b| b);
    let line = &out.lines()[0];
    assert_eq!(line["org_id"], "org_1", "{line}");
    assert_eq!(line["project_id"], "prj_1", "{line}");
    assert_eq!(line["workspace_id"], "ws_1", "{line}");
    assert_eq!(line["region_id"], "eu_1", "{line}");
    assert_eq!(line["data"]["tenant"], "workspace_id=ws_1,region_id=eu_1");

    let out = log(|b| b.sensitive_key("workspace"));
    assert!(!out.text().contains("ws_1"), "{}", out.text());
    let line = &out.lines()[0];
    assert_eq!(line["workspace_id"], "[REDACTED]", "{line}");
    assert_eq!(line["region_id"], "eu_1", "{line}");
    assert_eq!(line["org_id"], "org_1", "{line}");
    assert_eq!(
        line["data"]["tenant"],
        "workspace_id=[REDACTED],region_id=eu_1"
    );
}

/// `pass` names a password as a key's last word (`DB_PASS`, `smtp_pass`, `mysqlPass`, as
/// connection settings often spell it), in a configuration and in free text; inside a word
/// (`bypass`, `compass`, `passenger`) or as a flag it names nothing secret.
#[test]
fn a_key_ending_in_the_word_pass_is_a_password() {
    let redactor = periscope_log::Redactor::default();
    let mut config = serde_json::json!({
        "DB_PASS": "S3cr3t",
        "smtp": {"smtp_pass": "S3cr3t", "mysqlPass": 1234, "pass": "S3cr3t"},
        "bypass": "cache",
        "compass": "north",
        "passenger": "ann",
        "first_pass": true,
    });
    redactor.mask_value(&mut config);
    assert_eq!(
        config,
        serde_json::json!({
            "DB_PASS": "[REDACTED]",
            "smtp": {"smtp_pass": "[REDACTED]", "mysqlPass": "[REDACTED]", "pass": "[REDACTED]"},
            "bypass": "cache",
            "compass": "north",
            "passenger": "ann",
            "first_pass": true,
        })
    );
    for (text, expected) in [
        ("DB_PASS=S3cr3t psql", "DB_PASS=[REDACTED] psql"),
        ("bypass=cache compass=north", "bypass=cache compass=north"),
    ] {
        assert_eq!(
            redactor.mask_text(text).as_deref().unwrap_or(text),
            expected,
            "{text}"
        );
    }
    assert!(redactor.hides_field("SMTP_PASS") && !redactor.hides_field("bypass"));
}

/// A key is found after any whitespace JSON allows (a pretty-printed body, a tab), so the
/// fail-closed rules see it; a sensitive key whose value says none is set (`password: None`,
/// as `url::Url`'s `Debug` always prints) hides nothing; and an allowed key (`max_tokens`) is
/// not read as a mention of a secret in JSON text too large to redact key by key.
#[test]
fn keys_are_found_after_any_whitespace_and_allowed_or_empty_ones_hide_nothing() {
    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug` only
    struct Conn {
        host: &'static str,
        password: Option<&'static str>,
    }
    let pretty = serde_json::to_string_pretty(&json!({
        "auth": "Basic cHJldHR5LTE=",
        "blob": "x".repeat(70_000),
    }))
    .unwrap();
    let tabbed = "{\"a\":1,\t\"smtp_pass\":\"tabbed-2\",}";
    let large = json!({"max_tokens": 256, "prompt": "y".repeat(70_000)});
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                pretty = pretty.as_str(),
                tabbed,
                conn = ?Conn { host: "db.internal", password: None },
                request = periscope_log::json(&large),
                "calling upstream"
            );
        },
    );
    let text = out.text();
    for secret in ["cHJldHR5LTE=", "tabbed-2"] {
        assert!(!text.contains(secret), "{secret} leaked: {text:.300}");
    }
    let data = &out.lines()[0]["data"];
    let conn = data["conn"].as_str().unwrap();
    assert!(conn.contains("db.internal"), "{conn}");
    let request = data["request"]["_truncated"].as_str().unwrap();
    assert!(
        request.starts_with(r#"{"max_tokens":256"#),
        "{request:.100}"
    );
}

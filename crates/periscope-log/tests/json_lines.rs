//! The line schema: parsed back with serde_json and compared field by field.

mod common;

use std::error::Error;
use std::fmt;

use common::{capture, one_line};
use http::HeaderMap;
use periscope_context::{ExtractOptions, RequestContext, extract};
use periscope_log::{LogFormat, LogLayer, RecentLogs};
use serde_json::{Value, json};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

/// A request context the way the server layer makes it: from incoming headers.
fn request_context() -> RequestContext {
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    headers.insert("x-request-id", "req_01jjabc".parse().unwrap());
    headers.insert("x-org-id", "org_9".parse().unwrap());
    extract(&headers, &ExtractOptions::default()).context
}

/// The span the trace layer records, with the contract's field names.
fn request_span(ctx: &RequestContext) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = ctx.request_id.as_str(),
        trace_id = %ctx.trace_id,
        span_id = %ctx.span_id,
        org_id = tracing::field::Empty,
        project_id = tracing::field::Empty,
    )
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn a_line_in_a_request_has_exactly_the_contract_schema() {
    let ctx = request_context();
    let out = capture(
        |b| {
            b.service("framecast-api")
                .environment("production")
                .version("1.4.2")
        },
        |_| {
            let request = request_span(&ctx);
            // The trace layer records tenant fields once validated.
            request.record("org_id", "org_9");
            let _request = request.enter();
            let job = tracing::info_span!("cancel_job", user_id = "usr_123", job_id = "job_789");
            let _job = job.enter();
            tracing::info!(
                target: "framecast::jobs",
                old_status = "processing",
                new_status = "completed",
                attempts = 3u64,
                ratio = 0.5,
                forced = false,
                "Job status changed"
            );
        },
    );
    let text = out.text();
    assert!(text.starts_with("{\"timestamp\":\""), "{text}");
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(
        keys(line),
        [
            "data",
            "environment",
            "job_id",
            "level",
            "message",
            "org_id",
            "request_id",
            "service",
            "span",
            "span_id",
            "target",
            "timestamp",
            "trace_id",
            "user_id",
            "version"
        ]
    );
    // RFC 3339 UTC with milliseconds.
    let ts = line["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    assert_eq!(line["level"], "info");
    assert_eq!(line["message"], "Job status changed");
    assert_eq!(line["target"], "framecast::jobs");
    assert_eq!(line["service"], "framecast-api");
    assert_eq!(line["environment"], "production");
    assert_eq!(line["version"], "1.4.2");
    assert_eq!(line["request_id"], "req_01jjabc");
    assert_eq!(line["trace_id"], ctx.trace_id.to_string());
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["span_id"], ctx.span_id.to_string());
    assert_eq!(line["org_id"], "org_9");
    assert_eq!(line["user_id"], "usr_123");
    assert_eq!(line["job_id"], "job_789");
    assert_eq!(line["span"], "cancel_job");
    assert_eq!(
        line["data"],
        json!({"old_status": "processing", "new_status": "completed", "attempts": 3,
               "ratio": 0.5, "forced": false})
    );
}

#[test]
fn outside_any_span_there_is_no_span_and_data_is_an_empty_object() {
    let line = one_line(|| tracing::warn!("plain"));
    assert_eq!(
        keys(&line),
        ["data", "level", "message", "target", "timestamp"]
    );
    assert_eq!(line["data"], json!({}));
    assert_eq!(line["level"], "warn");
}

/// `message` given as a number, a flag or an error is the message, as text: a line whose
/// message is empty and whose `data.message` holds it reads as if it had none.
#[test]
fn a_message_that_is_not_text_is_the_message_as_text() {
    let line = one_line(|| tracing::info!(message = 5));
    assert_eq!(line["message"], "5");
    assert_eq!(line["data"], json!({}));
    let line = one_line(|| tracing::info!(message = true, attempt = 2));
    assert_eq!(line["message"], "true");
    assert_eq!(line["data"], json!({"attempt": 2}));
    let error = std::io::Error::other("disk full");
    let line = one_line(|| tracing::error!(message = &error as &dyn std::error::Error));
    assert_eq!(line["message"], "disk full");
}

#[test]
fn the_innermost_span_wins_and_the_event_wins_over_spans() {
    let line = one_line(|| {
        let outer = tracing::info_span!("outer", request_id = "req_outer", team_id = "tm_1");
        let _outer = outer.enter();
        let inner = tracing::info_span!("inner", request_id = "req_inner");
        let _inner = inner.enter();
        tracing::info!(job_id = "job_from_event", "x");
    });
    assert_eq!(line["request_id"], "req_inner");
    assert_eq!(line["team_id"], "tm_1");
    assert_eq!(line["job_id"], "job_from_event");
    assert_eq!(line["span"], "inner");
    assert_eq!(line["data"], json!({}));
}

#[test]
fn fields_recorded_later_on_a_span_are_lifted() {
    let line = one_line(|| {
        let span = tracing::info_span!("request", user_id = tracing::field::Empty);
        let _enter = span.enter();
        span.record("user_id", "usr_late");
        tracing::info!("x");
    });
    assert_eq!(line["user_id"], "usr_late");
}

/// A line logged outside the request's span but inside its context (a task spawned with
/// `ctx.scope(..)`, feeding a stream; a blocking closure in `ctx.in_scope(..)`) carries the
/// context's ids and tenant fields; a span in scope that records them still wins.
#[test]
fn a_line_in_a_request_context_without_its_span_carries_the_contexts_ids() {
    let ctx = request_context();
    let line = one_line(|| ctx.in_scope(|| tracing::info!("token produced")));
    assert_eq!(line["request_id"], "req_01jjabc");
    assert_eq!(line["trace_id"], ctx.trace_id.to_string());
    assert_eq!(line["span_id"], ctx.span_id.to_string());
    assert_eq!(line["org_id"], "org_9");
    assert_eq!(line.get("span"), None);
    assert_eq!(line["data"], json!({}));

    let line = one_line(|| {
        ctx.in_scope(|| {
            let job = tracing::info_span!("job", request_id = "req_job", job_id = "job_1");
            let _job = job.enter();
            tracing::info!(org_id = "org_event", "x");
        })
    });
    assert_eq!(line["request_id"], "req_job");
    assert_eq!(line["job_id"], "job_1");
    assert_eq!(line["org_id"], "org_event");
    assert_eq!(line["span"], "job");
}

/// A value whose `Debug` logs (and opens a span of its own) while it is being formatted.
struct Chatty(&'static str);

impl fmt::Debug for Chatty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nested = tracing::info_span!("nested", detail = ?"inner");
        let _nested = nested.enter();
        tracing::info!(who = self.0, "formatting");
        f.write_str(self.0)
    }
}

/// The layer reuses per-thread buffers for span and event fields; a value that logs while it is
/// formatted (tracing drops such nested events under the default dispatcher) must not panic or
/// mix its text into the line being written.
#[test]
fn a_value_that_logs_while_formatted_leaves_every_line_whole() {
    let lines = capture(
        |b| b,
        |_| {
            let span = tracing::info_span!("outer", payload = ?Chatty("span-value"));
            let _enter = span.enter();
            tracing::info!(payload = ?Chatty("event-value"), "done");
            tracing::info!("plain");
        },
    )
    .lines();
    let line = |message: &str| {
        let found: Vec<&Value> = lines.iter().filter(|l| l["message"] == message).collect();
        assert_eq!(found.len(), 1, "{message}: {lines:?}");
        found[0]
    };
    assert_eq!(line("done")["data"]["payload"], "event-value");
    assert_eq!(line("plain")["data"]["payload"], "span-value");
    assert_eq!(line("plain")["span"], "outer");
}

#[test]
fn span_fields_join_data_with_the_event_and_inner_spans_winning() {
    let line = one_line(|| {
        let outer = tracing::info_span!(
            "outer",
            model = "small",
            queue = "a",
            otel.kind = "server",
            http.route = "/v1/jobs/{id}"
        );
        let _outer = outer.enter();
        let inner = tracing::info_span!("inner", queue = "b");
        let _inner = inner.enter();
        tracing::info!(model = "large", "x");
    });
    assert_eq!(line["data"], json!({"model": "large", "queue": "b"}));
}

#[derive(Debug)]
struct Outer(Inner);
#[derive(Debug)]
struct Inner;

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot cancel job")
    }
}
impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database \"jobs\" unreachable")
    }
}
impl Error for Outer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}
impl Error for Inner {}

#[test]
fn errors_render_as_message_and_chain() {
    let line = one_line(|| {
        let error = Outer(Inner);
        tracing::error!(error = &error as &dyn Error, "cancel failed");
    });
    assert_eq!(
        line["data"]["error"],
        json!({"message": "cannot cancel job", "chain": ["database \"jobs\" unreachable"]})
    );
}

/// A wrapper that shows its source's message as its own (axum's `Error`,
/// `#[error(transparent)]`).
#[derive(Debug)]
struct Transparent(Box<dyn Error + Send + Sync>);

impl fmt::Display for Transparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl Error for Transparent {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[test]
fn a_cause_that_repeats_the_message_before_it_is_left_out() {
    let line = one_line(|| {
        let io = std::io::Error::other(Outer(Inner));
        let error = Transparent(Box::new(Transparent(Box::new(io))));
        tracing::error!(error = &error as &dyn Error, "upload failed");
    });
    // io::Error::other shows its payload and has it as its source: the same text, once.
    assert_eq!(
        line["data"]["error"],
        json!({"message": "cannot cancel job", "chain": ["database \"jobs\" unreachable"]})
    );
}

#[test]
fn long_strings_are_truncated_with_their_original_length() {
    let long = "é".repeat(100); // 200 bytes
    let out = capture(
        |b| b.max_value_bytes(11),
        |_| tracing::info!(body = long.as_str(), debug = ?long, "{}", long),
    );
    let line = &out.lines()[0];
    let marker = "…[truncated, original 200 bytes]";
    assert_eq!(line["data"]["body"], format!("{}{marker}", "é".repeat(5)));
    assert_eq!(line["message"], format!("{}{marker}", "é".repeat(5)));
    // Debug quotes the string: 202 bytes.
    assert_eq!(
        line["data"]["debug"],
        format!("\"{}…[truncated, original 202 bytes]", "é".repeat(5))
    );
}

/// JSON text cut to the bound says its own length, the same whether it is a field of the line
/// or a string inside a `json(..)` value (where it is compacted and redacted before the cut).
#[test]
fn json_text_cut_inside_a_json_value_says_its_original_length() {
    let text = "{\n  \"model\": \"resnet-50\",\n  \"note\": \"a request body, pretty\"\n}";
    assert_eq!(text.len(), 62);
    let out = capture(
        |b| b.max_value_bytes(40),
        |_| {
            tracing::info!(
                body = text,
                wrapped = periscope_log::json(&json!({ "body": text })),
                "m"
            )
        },
    );
    let line = &out.lines()[0];
    for value in [&line["data"]["body"], &line["data"]["wrapped"]["body"]] {
        let value = value.as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.ends_with("…[truncated, original 62 bytes]"),
            "{value}"
        );
    }
}

/// A context field recorded as a `Display` or `Debug` value is cut while it is formatted: the
/// marker says how long it was, as for the same text recorded as a `&str`.
#[test]
fn context_fields_over_the_bound_record_their_original_length() {
    let out = capture(
        |b| b.max_value_bytes(8),
        |_| {
            let id = "usr_0123456789abcdef"; // 20 bytes
            let span = tracing::info_span!("s", user_id = %id, org_id = id);
            span.in_scope(|| tracing::info!("m"));
        },
    );
    let line = &out.lines()[0];
    let cut = "usr_0123…[truncated, original 20 bytes]";
    assert_eq!(line["user_id"], cut, "{line}");
    assert_eq!(line["org_id"], cut, "{line}");
}

#[test]
fn a_display_value_is_written_as_the_same_text_would_be() {
    // Plain words take a shorter path than other `Display` / `Debug` output (ids recorded as
    // `Display` values by periscope-trace): the line must not tell them apart.
    let values = [
        "",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "01hq3v5k7w9yb2c4d6e8f0g1h2",
        "a-b_c.d",
        &"x".repeat(41),
        "a\"b",
        "a\\b",
        "a:b",
        "{\"a\":1}",
        "[1,2]",
        " {",
        "line\nbreak",
        "é",
        "\u{7f}",
    ];
    for value in values {
        let out = capture(
            |b| b.max_value_bytes(40),
            |_| {
                let span = tracing::info_span!("s", text = value, shown = %value);
                span.in_scope(|| tracing::info!(event_text = value, event_shown = %value, "m"));
            },
        );
        let line = &out.lines()[0];
        assert!(line["data"]["text"].is_string(), "{line}");
        assert!(line["data"]["event_text"].is_string(), "{line}");
        assert_eq!(line["data"]["text"], line["data"]["shown"], "{value:?}");
        assert_eq!(
            line["data"]["event_text"], line["data"]["event_shown"],
            "{value:?}"
        );
    }
}

#[test]
fn nested_json_is_logged_as_an_object() {
    #[derive(serde::Serialize)]
    struct Usage {
        model: &'static str,
        prompt_tokens: u32,
        limits: Vec<u32>,
    }
    let usage = Usage {
        model: "small",
        prompt_tokens: 12,
        limits: vec![1, 2],
    };
    let line = one_line(|| tracing::info!(usage = periscope_log::json(&usage), "done"));
    assert_eq!(
        line["data"]["usage"],
        json!({"model": "small", "prompt_tokens": 12, "limits": [1, 2]})
    );
}

#[test]
fn flattened_mode_puts_fields_at_the_top_without_overwriting_reserved_keys() {
    let out = capture(
        |b| b.flatten_data(true).service("svc"),
        |_| tracing::info!(status = 200u64, level = "forged", service = "forged", "x"),
    );
    let line = &out.lines()[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["level"], "info");
    assert_eq!(line["service"], "svc");
    assert_eq!(line["data.level"], "forged");
    assert_eq!(line["data.service"], "forged");
    assert!(line.get("data").is_none());
}

#[test]
fn declared_context_fields_are_lifted() {
    let out = capture(
        |b| b.context_field("tenant_id"),
        |_| {
            let span = tracing::info_span!("job", tenant_id = "t_1");
            let _enter = span.enter();
            tracing::info!("x");
        },
    );
    assert_eq!(out.lines()[0]["tenant_id"], "t_1");
}

/// Context fields are 64 at most, the defaults included: `try_context_field` refuses one more
/// (a name already declared is still fine), and `context_field` ignores it, its field staying
/// in `data`.
#[test]
fn context_fields_past_the_cap_are_refused_and_stay_in_data() {
    let room = 64 - periscope_log::DEFAULT_CONTEXT_FIELDS.len();
    assert_eq!(
        room, 55,
        "the span below names the last field that fits and the next"
    );
    let builder = (0..room).fold(LogLayer::builder(), |b, i| {
        b.try_context_field(format!("ctx_{i}")).unwrap()
    });
    let builder = builder.try_context_field("ctx_0").unwrap();
    let error = builder.try_context_field("one_too_many").unwrap_err();
    assert_eq!(error.name(), "one_too_many");
    assert!(error.to_string().contains("64"), "{error}");

    let out = capture(
        |b| (0..=room).fold(b, |b, i| b.context_field(format!("ctx_{i}"))),
        |_| {
            let span = tracing::info_span!("job", ctx_54 = "lifted", ctx_55 = "kept");
            let _enter = span.enter();
            tracing::info!("x");
        },
    );
    let line = &out.lines()[0];
    assert_eq!(line[format!("ctx_{}", room - 1)], "lifted");
    assert_eq!(line["data"][format!("ctx_{room}")], "kept");
}

#[test]
fn pretty_format_is_one_readable_line_per_event() {
    let out = capture(
        |b| b.format(LogFormat::Pretty).ansi(false),
        |_| {
            let span = tracing::info_span!("request", request_id = "req_1");
            let _enter = span.enter();
            tracing::info!(target: "app", status = 200u64, note = "two\nlines", "served");
        },
    );
    let text = out.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    let line = text.trim_end();
    assert!(
        line.ends_with(
            " INFO request app: served status=200 note=\"two\\nlines\" request_id=\"req_1\""
        ),
        "{line}"
    );
}

/// Set in the child of [`pretty_lines_to_a_file_have_no_colour_when_stdout_is_a_terminal`]:
/// the file it writes its lines to.
const ANSI_CHILD_FILE: &str = "PERISCOPE_TEST_ANSI_CHILD_FILE";

#[test]
fn ansi_child() {
    let Some(path) = std::env::var_os(ANSI_CHILD_FILE) else {
        return;
    };
    use std::io::IsTerminal;
    let file = std::fs::File::create(&path).unwrap();
    let (layer, guard) = periscope_log::LogLayer::builder()
        .format(LogFormat::Pretty)
        .writer(file)
        .blocking(true)
        .build();
    let subscriber = tracing_subscriber::registry().with(layer);
    common::with_default(subscriber, || tracing::warn!("to a file"));
    drop(guard);
    // Told to the parent after the line, so it knows the test could see the defect.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    use std::io::Write;
    writeln!(
        file,
        "stdout_is_terminal={}",
        std::io::stdout().is_terminal()
    )
    .unwrap();
}

#[test]
fn pretty_lines_to_a_file_have_no_colour_when_stdout_is_a_terminal() {
    // `script` gives the child a terminal as stdout, as a developer's shell does.
    let exe = std::env::current_exe().unwrap();
    let path = std::env::temp_dir().join(format!("periscope-ansi-{}.log", std::process::id()));
    let command = format!(
        "'{}' --exact ansi_child --test-threads=1 --quiet",
        exe.display()
    );
    let Ok(status) = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env(ANSI_CHILD_FILE, &path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
    else {
        eprintln!("skipped: no `script` to give the child a terminal");
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    if !text.contains("stdout_is_terminal=true") {
        // A machine without pseudo-terminals (some containers): `script` could not give the
        // child one (it failed, or the child's stdout was no terminal), so there is nothing
        // to check here.
        assert!(
            !status.success() || text.contains("stdout_is_terminal=false"),
            "{status}: {text:?}"
        );
        eprintln!("skipped: `script` could not give the child a terminal ({status})");
        return;
    }
    assert!(status.success(), "{status}");
    assert!(!text.contains('\x1b'), "colour escapes in a file: {text:?}");
    assert!(text.contains(" WARN "), "{text:?}");
}

#[test]
fn recent_lines_are_kept_and_filtered_by_level() {
    let mut recent: Option<RecentLogs> = None;
    let out = capture(
        |b| b.directives("debug".parse().unwrap()),
        |handles| {
            recent = Some(handles.recent.clone());
            tracing::debug!("one");
            tracing::error!("two");
            tracing::info!("three");
        },
    );
    let recent = recent.unwrap();
    let all = recent.lines(10, None);
    assert_eq!(all.len(), 3);
    // The buffer holds exactly what was written.
    let text = out.text();
    let written: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = all.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(kept, written);
    let errors = recent.lines(10, Some(Level::INFO));
    assert_eq!(errors.len(), 2);
    let array: Value = serde_json::from_str(&recent.to_json_array(1, Some(Level::WARN))).unwrap();
    assert_eq!(array[0]["message"], "two");
    assert_eq!(array.as_array().unwrap().len(), 1);
}

#[test]
fn without_span_fields_data_holds_only_the_event_fields() {
    let out = capture(
        |b| b.span_fields(false),
        |_| {
            let span = tracing::info_span!("work", model = "small", request_id = "req_9");
            let _entered = span.enter();
            tracing::info!(step = 2, "x");
        },
    );
    let lines = out.lines();
    assert_eq!(lines[0]["data"], json!({"step": 2}));
    assert_eq!(
        lines[0]["request_id"], "req_9",
        "context fields are still lifted"
    );
}

#[test]
fn two_log_layers_each_write_their_line_with_their_own_context_fields() {
    use periscope_log::LogLayer;
    use tracing_subscriber::prelude::*;

    let (first_out, second_out) = (common::Captured::default(), common::Captured::default());
    // Each layer has its own context fields, so the same span field sits in different slots.
    let (first, first_guard) = LogLayer::builder()
        .context_field("tenant_id")
        .writer(first_out.clone())
        .blocking(true)
        .build();
    let (second, second_guard) = LogLayer::builder()
        .context_field("region")
        .context_field("tenant_id")
        .writer(second_out.clone())
        .blocking(true)
        .build();
    let subscriber = tracing_subscriber::registry().with(first).with(second);
    common::with_default(subscriber, || {
        let span = tracing::info_span!(
            "job",
            tenant_id = "t_1",
            region = "eu",
            step = tracing::field::Empty
        );
        let _entered = span.enter();
        span.record("step", 2u64);
        tracing::info!(n = 1u64, "both");
    });
    drop((first_guard, second_guard));
    let (first_line, second_line) = (&first_out.lines()[0], &second_out.lines()[0]);
    for line in [first_line, second_line] {
        assert_eq!(line["message"], "both");
        assert_eq!(line["tenant_id"], "t_1", "{line}");
        assert_eq!(line["data"]["step"], 2, "{line}");
        assert_eq!(line["data"]["n"], 1, "{line}");
    }
    assert_eq!(first_line["data"]["region"], "eu", "{first_line}");
    assert!(first_line.get("region").is_none(), "{first_line}");
    assert_eq!(second_line["region"], "eu", "{second_line}");
    assert!(second_line["data"].get("region").is_none(), "{second_line}");
    assert_eq!((first_out.lines().len(), second_out.lines().len()), (1, 1));
}

/// A value whose formatting panics.
struct PanicsWhenFormatted;

impl fmt::Display for PanicsWhenFormatted {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("a Display that panics")
    }
}

impl fmt::Debug for PanicsWhenFormatted {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("a Debug that panics")
    }
}

#[derive(Debug)]
struct PanickingError;

impl fmt::Display for PanickingError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("an error whose message panics")
    }
}

impl Error for PanickingError {}

/// A field, message or span field whose `Display` or `Debug` panics neither unwinds into the
/// code that logged (a request handler) nor loses the line: the value is a placeholder, the
/// rest of the line, the request's context included, is whole.
#[test]
fn a_value_whose_formatting_panics_leaves_the_line_whole_and_does_not_unwind() {
    let out = capture(
        |b| b,
        |_| {
            let logged = std::panic::catch_unwind(|| {
                let span = tracing::info_span!(
                    "request",
                    request_id = "req_1",
                    broken = ?PanicsWhenFormatted,
                    later = tracing::field::Empty,
                );
                span.record("later", tracing::field::display(PanicsWhenFormatted));
                let _entered = span.enter();
                tracing::info!(a = %PanicsWhenFormatted, b = 1, "display");
                tracing::info!(e = &PanickingError as &dyn Error, "error");
                tracing::info!("{}", PanicsWhenFormatted);
            });
            assert!(
                logged.is_ok(),
                "a panic in a value unwound out of the log call"
            );
        },
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 3);
    let placeholder = "[panicked while formatting]";
    for line in &lines {
        assert_eq!(line["request_id"], "req_1", "{line}");
        assert_eq!(line["data"]["broken"], placeholder, "{line}");
        assert_eq!(line["data"]["later"], placeholder, "{line}");
    }
    assert_eq!(lines[0]["data"]["a"], placeholder);
    assert_eq!(lines[0]["data"]["b"], 1);
    assert_eq!(lines[1]["data"]["e"], placeholder);
    assert_eq!(lines[2]["message"], placeholder);
}

/// 128-bit integers are written as JSON numbers digit for digit, `-0.0` stays a number, odd
/// field names (empty, quoted, escaped, control, non-ASCII) are keys that parse back to the
/// same text on events and spans alike, a field never recorded is absent, and `{}` in a
/// message's arguments is text.
#[test]
fn extreme_numbers_and_odd_field_names_parse_back() {
    let out = capture(
        |b| b,
        |_| {
            let span = tracing::info_span!(
                "odd",
                "" = 1,
                "q\"uote" = 2,
                "ctl\u{1}\u{2028}" = 3,
                "日本" = 4,
                never = tracing::field::Empty,
            );
            let _enter = span.enter();
            tracing::info!(
                imin = i128::MIN,
                umax = u128::MAX,
                zero = -0.0f64,
                "back\\slash" = 5,
                "{} {{}} {:?}",
                "{x}",
                "{}"
            );
        },
    );
    let text = out.text();
    assert!(text.contains(&format!("\"imin\":{}", i128::MIN)), "{text}");
    assert!(text.contains(&format!("\"umax\":{}", u128::MAX)), "{text}");
    let line = &out.lines()[0];
    assert_eq!(line["message"], "{x} {} \"{}\"");
    let data = &line["data"];
    assert!(
        data["zero"].as_f64().is_some_and(f64::is_sign_negative),
        "{data}"
    );
    assert!(
        data["imin"].is_number() && data["umax"].is_number(),
        "{data}"
    );
    for (key, value) in [
        ("", 1),
        ("q\"uote", 2),
        ("ctl\u{1}\u{2028}", 3),
        ("日本", 4),
    ] {
        assert_eq!(data[key], value, "{key:?}: {data}");
    }
    assert_eq!(data["back\\slash"], 5);
    assert!(data.get("never").is_none(), "{data}");
}

/// The server span's shape: OpenTelemetry attributes (never on a line), context fields, a
/// data field, the tenant list, and fields recorded later.
fn server_like_span() -> tracing::Span {
    tracing::info_span!(
        target: "periscope_trace::server",
        "request",
        otel.kind = "server",
        url.path = "/v1/jobs/42",
        http.response.status_code = tracing::field::Empty,
        request_id = "req_1",
        region = "eu",
        step = tracing::field::Empty,
        tenant = "workspace_id=ws_1",
    )
}

/// A field named `tenant` outside periscope-trace's spans is the service's own text (a tenant's
/// slug from a path): its `key=value` members are not lifted, so it cannot set the line's
/// request id, or any context field. Only periscope-trace's spans record the tenant list.
#[test]
fn a_tenant_field_of_the_services_own_cannot_forge_context_fields() {
    use tracing_subscriber::prelude::*;

    let out = common::Captured::default();
    let (layer, guard) = LogLayer::builder()
        .context_field("workspace_id")
        .writer(out.clone())
        .blocking(true)
        .build();
    let forged = "acme,request_id=req_forged,user_id=admin,workspace_id=ws_9";
    common::with_default(tracing_subscriber::registry().with(layer), || {
        let request = tracing::info_span!("http_request", request_id = "req_real");
        let _request = request.enter();
        tracing::info!(tenant = forged, "from an event");
        let own = tracing::info_span!("lookup", tenant = forged);
        own.in_scope(|| tracing::info!("inside a span of the service's own"));
    });
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["request_id"], "req_real", "{line}");
        assert!(line.get("user_id").is_none(), "{line}");
        assert!(line.get("workspace_id").is_none(), "{line}");
        assert_eq!(line["data"]["tenant"], forged, "{line}");
    }
}

/// Which span fields a layer keeps is worked out once per callsite and set of rules: every
/// layer, whatever its context fields and `span_fields` setting, still gets its own answer,
/// on the first span of a callsite and on the later ones.
#[test]
fn one_span_callsite_under_two_differently_configured_layers() {
    use tracing_subscriber::prelude::*;

    let (data_out, quiet_out) = (common::Captured::default(), common::Captured::default());
    let (data, data_guard) = LogLayer::builder()
        .context_field("workspace_id")
        .writer(data_out.clone())
        .blocking(true)
        .build();
    let (quiet, quiet_guard) = LogLayer::builder()
        .context_field("region")
        .context_field("workspace_id")
        .span_fields(false)
        .writer(quiet_out.clone())
        .blocking(true)
        .build();
    let subscriber = tracing_subscriber::registry().with(data).with(quiet);
    common::with_default(subscriber, || {
        for n in 0..3u64 {
            let span = server_like_span();
            let _entered = span.enter();
            span.record("http.response.status_code", 200);
            span.record("step", n);
            span.record("step", n + 10);
            tracing::info!(n, "done");
        }
    });
    drop((data_guard, quiet_guard));
    let (data_lines, quiet_lines) = (data_out.lines(), quiet_out.lines());
    assert_eq!((data_lines.len(), quiet_lines.len()), (3, 3));
    for (n, (data_line, quiet_line)) in data_lines.iter().zip(&quiet_lines).enumerate() {
        for line in [data_line, quiet_line] {
            assert_eq!(line["request_id"], "req_1", "{line}");
            assert_eq!(line["workspace_id"], "ws_1", "{line}");
        }
        assert_eq!(
            data_line["data"],
            json!({"n": n, "region": "eu", "step": n + 10, "tenant": "workspace_id=ws_1"}),
        );
        assert!(data_line.get("region").is_none(), "{data_line}");
        assert_eq!(quiet_line["region"], "eu", "{quiet_line}");
        assert_eq!(quiet_line["data"], json!({"n": n}));
    }
}

/// A request id whose first segment reads like a secret's key (`web-auth:`, `session:`) is a
/// valid id (the contract allows `:`): recorded as the server layer records it, a `Display`
/// value, it is written as sent, on every line of its request, not hidden as free text naming
/// a key would be. The header and the error envelope echo it; the lines must let it be found.
#[test]
fn a_request_id_whose_first_segment_names_a_secret_is_logged_as_sent() {
    for id in ["web-auth:8f2c", "session:1f9c", "db.password:7"] {
        let request_id = periscope_context::RequestId::parse(id).unwrap();
        let line = one_line(|| {
            let span = tracing::info_span!("request", request_id = %request_id, org_id = %"auth:1");
            span.in_scope(|| tracing::info!("handled"));
        });
        assert_eq!(line["request_id"], id, "{line}");
        assert_eq!(line["org_id"], "auth:1", "{line}");
    }
}

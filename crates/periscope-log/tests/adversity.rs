//! Hostile input and a misbehaving output: every line written is one valid JSON object, no
//! field is forged, sizes stay bounded, and every line not written is counted.

mod common;

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{capture, one_line, wait_until};
use periscope_log::LogLayer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

/// Parses `line` as one JSON object, failing on a key written twice in any object (serde_json
/// keeps the last one silently, which would hide a forged field).
fn strict(line: &str) -> Value {
    struct NoDuplicates;
    impl<'de> Visitor<'de> for NoDuplicates {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
                map.next_value_seed(Strict)?;
            }
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Strict)?.is_some() {}
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    #[derive(Clone, Copy)]
    struct Strict;
    impl<'de> serde::de::DeserializeSeed<'de> for Strict {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(NoDuplicates)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    serde::de::DeserializeSeed::deserialize(Strict, &mut de)
        .unwrap_or_else(|e| panic!("not one strict JSON object: {e}: {:.300}", line));
    let value: Value = serde_json::from_str(line).unwrap();
    assert!(value.is_object());
    value
}

/// Every line of `out`, each parsed strictly.
fn strict_lines(text: &str) -> Vec<Value> {
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines().map(strict).collect()
}

fn every_control_character() -> String {
    let mut s: String = (0u32..0x20).filter_map(char::from_u32).collect();
    s.push('\u{7f}');
    s.extend((0x80u32..0xa0).filter_map(char::from_u32));
    s.push_str("\u{2028}\u{2029}\u{1b}[31m\"},\"level\":\"error\"}\n{\"x\":\"");
    s
}

#[test]
fn every_control_character_in_values_messages_and_names_parses_back_unchanged() {
    let hostile = every_control_character();
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(value = %hostile, debug = ?hostile, "{hostile}");
            tracing::info!(
                "a\"b\n}{" = 1,
                "level" = "forged",
                "timestamp" = 0,
                "message"
            );
            tracing::info!(target: "t\"arget\n", "targeted");
            let span = tracing::info_span!("s\"pan\n", v = %hostile);
            span.in_scope(|| tracing::info!("in span"));
        },
    );
    let text = out.text();
    // No raw control character or line separator anywhere in the output.
    assert_eq!(text.matches('\n').count(), 4, "one newline per event");
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && (c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')))
        .collect();
    assert!(raw.is_empty(), "{raw:?}");
    let lines = strict_lines(&text);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["data"]["value"], hostile.as_str());
    assert_eq!(lines[0]["message"], hostile.as_str());
    assert_eq!(lines[0]["level"], "info");
    assert_eq!(lines[1]["data"]["a\"b\n}{"], 1);
    assert_eq!(lines[1]["level"], "info");
    assert_eq!(lines[1]["data"]["level"], "forged");
    assert_eq!(lines[2]["target"], "t\"arget\n");
    assert_eq!(lines[3]["span"], "s\"pan\n");
    assert_eq!(lines[3]["data"]["v"], hostile.as_str());
}

/// Targets and span names are checked for escapes once per string and thread, then copied:
/// lines from the same callsites again and again, plain or not, and a bridged `log` record
/// (its own target, not the callsite's) are written right every time.
#[test]
fn targets_and_span_names_are_written_right_on_every_line_of_their_callsite() {
    let out = capture(
        |b| b,
        |_| {
            for _ in 0..3 {
                let odd = tracing::info_span!("s\"pan\n");
                odd.in_scope(|| tracing::info!(target: "t\"arget\n", "odd"));
                let plain = tracing::info_span!("plain_span");
                plain.in_scope(|| tracing::info!(target: "plain::target", "plain"));
                let record = tracing_log::log::Record::builder()
                    .target("l\"og\n")
                    .level(tracing_log::log::Level::Warn)
                    .args(format_args!("bridged"))
                    .build();
                plain.in_scope(|| tracing_log::format_trace(&record).unwrap());
            }
        },
    );
    let text = out.text();
    assert_eq!(text.matches('\n').count(), 9, "{text}");
    let lines = strict_lines(&text);
    for round in lines.chunks(3) {
        assert_eq!(round[0]["target"], "t\"arget\n", "{text}");
        assert_eq!(round[0]["span"], "s\"pan\n", "{text}");
        assert_eq!(round[1]["target"], "plain::target", "{text}");
        assert_eq!(round[1]["span"], "plain_span", "{text}");
        assert_eq!(round[2]["target"], "l\"og\n", "{text}");
        assert_eq!(round[2]["level"], "warn", "{text}");
        assert_eq!(round[2]["span"], "plain_span", "{text}");
    }
}

#[test]
fn names_of_top_level_keys_never_overwrite_them_flattened_or_not() {
    for flatten in [false, true] {
        let out = capture(
            |b| b.service("svc").flatten_data(flatten),
            |_| {
                let span = tracing::info_span!("s", level = "span", service = "span");
                span.in_scope(|| {
                    tracing::info!(
                        level = "forged",
                        timestamp = "forged",
                        target = "forged",
                        service = "forged",
                        span = "forged",
                        data = "forged",
                        "data.level" = "dotted",
                        "real"
                    );
                });
            },
        );
        let lines = strict_lines(&out.text());
        let line = &lines[0];
        assert_eq!(line["level"], "info", "flatten {flatten}: {line}");
        assert_eq!(line["service"], "svc", "flatten {flatten}: {line}");
        assert_eq!(line["span"], "s", "flatten {flatten}: {line}");
        assert_ne!(line["timestamp"], "forged");
        assert_ne!(line["target"], "forged");
        if !flatten {
            assert!(line["data"].is_object(), "{line}");
            assert_eq!(line["data"]["level"], "forged");
        }
    }
}

#[test]
fn invalid_utf8_bytes_are_replaced() {
    let bytes: &[u8] = b"ok \xff\xfe \xc0\x80 \xed\xa0\x80 \"\n end";
    let line = one_line(|| tracing::info!(body = bytes, "bytes"));
    let text = line["data"]["body"].as_str().unwrap();
    assert!(text.starts_with("ok \u{fffd}"), "{text}");
    assert!(text.ends_with("\"\n end"), "{text}");
}

/// A `Debug` that writes what a lone surrogate looks like in each notation.
struct Surrogates;

impl fmt::Debug for Surrogates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"a":"\ud800","b":"\udc00x","c":"\ud800\u0041"}"#)
    }
}

struct QuotedSurrogate;

impl fmt::Debug for QuotedSurrogate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#""{\"password\":\"\u{d800}\"}""#)
    }
}

#[test]
fn lone_surrogate_escapes_in_debug_text_never_reach_the_line_unpaired() {
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(v = ?Surrogates, "json-like");
            tracing::info!(v = ?QuotedSurrogate, "quoted");
            tracing::info!(v = %r#"{"password":"\ud800"}"#, "secret");
            tracing::info!(
                v = periscope_log::json(serde_json::json!({"s": "{\"a\":\"\\ud800\"}"})),
                "nested"
            );
        },
    );
    let lines = strict_lines(&out.text());
    assert_eq!(lines.len(), 4);
    // Text that cannot be parsed key by key and names a secret fails closed.
    assert_eq!(lines[1]["data"]["v"], "[REDACTED]");
    assert_eq!(lines[2]["data"]["v"], "[REDACTED]");
    // Otherwise it stays the text it was, escaped (the backslash is a backslash).
    assert_eq!(
        lines[0]["data"]["v"],
        r#"{"a":"\ud800","b":"\udc00x","c":"\ud800\u0041"}"#
    );
}

#[test]
fn ten_megabyte_values_are_cut_to_the_bound() {
    let big = "x".repeat(10 << 20);
    let big_json = format!("{{\"k\":\"{}\"}}", "y".repeat(10 << 20));
    let big_bytes = vec![b'z'; 10 << 20];
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(s = big.as_str(), "str");
            tracing::info!(d = %big, "display");
            tracing::info!(g = ?big, "debug");
            tracing::info!(b = big_bytes.as_slice(), "bytes");
            tracing::info!(j = big_json.as_str(), "json text");
            tracing::info!(
                j = periscope_log::json(serde_json::json!({"k": big})),
                "json value"
            );
            tracing::info!("{big}");
            let span = tracing::info_span!("s", f = %big);
            span.in_scope(|| tracing::info!("in span"));
        },
    );
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    for line in &lines {
        assert!(
            line.len() < 40 * 1024,
            "a line of {} bytes: {:.200}",
            line.len(),
            line
        );
        strict(line);
    }
    let first = strict(lines[0]);
    let cut = first["data"]["s"].as_str().unwrap();
    assert!(
        cut.ends_with("…[truncated, original 10485760 bytes]"),
        "{:.100}",
        cut
    );
    assert!(
        strict(lines[5])["data"]["j"].is_object(),
        "a json value keeps its type"
    );
}

/// A value nested `depth` levels deep, serialized without building it.
struct Nest(usize);

impl serde::Serialize for Nest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        if self.0 == 0 {
            map.serialize_entry("leaf", "password")?;
        } else {
            map.serialize_entry("n", &Nest(self.0 - 1))?;
        }
        map.end()
    }
}

/// A value whose serialization writes keys twice, as `#[serde(flatten)]` does when the flattened
/// map holds a key of the struct's own: `model` twice at the top, `k` twice inside, and ten
/// keys written twice over (the larger object's path).
struct Twice;

impl serde::Serialize for Twice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Inner;
        impl serde::Serialize for Inner {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("k", &1)?;
                map.serialize_entry("j", &2)?;
                map.serialize_entry("k", &3)?;
                map.end()
            }
        }
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("model", "first")?;
        map.serialize_entry("inner", &Inner)?;
        map.serialize_entry("model", "last")?;
        for round in 0..2 {
            for i in 0..10 {
                map.serialize_entry(&format!("w{i}"), &round)?;
            }
        }
        map.end()
    }
}

/// Every key of a line is written once, inside a `json(..)` value too: of a key written twice
/// the last value stays, as JSON readers take it (some stores refuse a document with a key
/// twice, and the line would be lost there).
#[test]
fn a_json_value_with_a_key_written_twice_keeps_the_last() {
    let out = capture(
        |b| b,
        |_| tracing::info!(v = periscope_log::json(Twice), "twice"),
    );
    let lines = strict_lines(&out.text());
    let v = &lines[0]["data"]["v"];
    assert_eq!(v["model"], "last", "{v}");
    assert_eq!(v["inner"], serde_json::json!({"j": 2, "k": 3}), "{v}");
    assert_eq!(v["w9"], 1, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 12, "{v}");
}

/// JSON kept in a string (a `HeaderMap` logged with `?`, which lists a header sent twice
/// twice) keeps every member: in a string a key written twice breaks nothing, and dropping
/// one would lose a value.
#[test]
fn json_text_in_a_string_keeps_a_key_written_twice() {
    let mut headers = http::HeaderMap::new();
    headers.append("accept", "text/html".parse().unwrap());
    headers.append("accept", "application/json".parse().unwrap());
    headers.append("authorization", "Bearer S3cr3t".parse().unwrap());
    let out = capture(|b| b, |_| tracing::info!(headers = ?headers, "headers"));
    let lines = strict_lines(&out.text());
    let written = lines[0]["data"]["headers"].as_str().unwrap();
    assert!(written.contains("text/html"), "{written}");
    assert!(written.contains("application/json"), "{written}");
    assert!(!written.contains("S3cr3t"), "{written}");
}

#[test]
fn deeply_nested_values_keep_the_line_valid() {
    let deep_text = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let out = capture(
        |b| b,
        |_| {
            tracing::info!(
                v = periscope_log::json(Nest(200)),
                password = 1,
                "deep json"
            );
            tracing::info!(v = periscope_log::json(Nest(2_000)), "deeper json");
            tracing::info!(v = deep_text.as_str(), "deep text");
        },
    );
    let lines = strict_lines(&out.text());
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["data"]["password"], "[REDACTED]");
    assert!(lines[2]["data"]["v"].is_string());
}

/// A `json(..)` value nested just under the depth a strict parser takes (serde_json's 128
/// levels): the line, and the `/debug/logs` answer that holds it, still parse (a value too deep
/// to be written nested is written as a string), with flattened data too.
#[test]
fn json_values_near_the_parsers_depth_keep_the_line_and_the_recent_answer_valid() {
    for flatten in [false, true] {
        let mut answer = String::new();
        let out = capture(
            |b| b.flatten_data(flatten),
            |handles| {
                for depth in 120..=130 {
                    tracing::info!(v = periscope_log::json(Nest(depth)), depth, "deep");
                }
                answer = format!(
                    "{{\"buffered\":1,\"lines\":{}}}",
                    handles.recent.to_json_array(100, None)
                );
            },
        );
        let lines = strict_lines(&out.text());
        assert_eq!(lines.len(), 11, "flatten {flatten}");
        let recent: Value = serde_json::from_str(&answer).expect("the recent lines parse");
        assert_eq!(recent["lines"].as_array().unwrap().len(), 11);
    }
}

#[test]
fn thousands_of_fields_across_spans_are_all_written_once() {
    const SPANS: usize = 200;
    let out = capture(
        |b| b,
        |_| {
            let mut entered = Vec::new();
            for i in 0..SPANS {
                let span = tracing::info_span!(
                    "s",
                    a0 = i,
                    a1 = i,
                    a2 = i,
                    a3 = i,
                    a4 = i,
                    a5 = i,
                    a6 = i,
                    a7 = i,
                    a8 = i,
                    a9 = i,
                    b0 = i,
                    b1 = i,
                    b2 = i,
                    b3 = i,
                    b4 = i,
                    b5 = i,
                    b6 = i,
                    b7 = i,
                    b8 = i,
                    b9 = i
                );
                entered.push(span.entered());
            }
            tracing::info!(a0 = "event", "many");
        },
    );
    let lines = strict_lines(&out.text());
    assert_eq!(lines.len(), 1);
    let data = lines[0]["data"].as_object().unwrap();
    assert_eq!(data.len(), 20);
    assert_eq!(data["a0"], "event");
    assert_eq!(data["a1"], SPANS - 1);
    let wide: serde_json::Map<String, Value> = (0..5_000)
        .map(|i| (format!("k{i}"), Value::from(i)))
        .collect();
    let line = one_line(|| tracing::info!(v = periscope_log::json(&wide), "wide"));
    // An object keeps its type, whole or over the size bound (docs/logging.md): indexers that
    // map the field as an object must not reject the line.
    let v = line["data"]["v"].as_object().expect("an object");
    match v.get("_truncated") {
        Some(text) => {
            assert_eq!(v.len(), 1, "{v:?}");
            assert!(
                text.as_str().is_some_and(|t| t.starts_with("{\"k0\":0")),
                "{text}"
            );
        }
        None => {
            assert_eq!(v.len(), 5_000);
            assert!((0..5_000).all(|i| v[&format!("k{i}")] == i));
        }
    }
}

/// An output that takes a few bytes at a time, slowly, or fails now and then.
#[derive(Clone, Default)]
struct Flaky {
    out: Arc<Mutex<Vec<u8>>>,
    calls: Arc<AtomicUsize>,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if call % 97 == 13 {
            return Err(io::Error::other("disk full"));
        }
        if call.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = buf.len().min(1 + call % 700);
        self.out.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A flood from many threads into a small queue over a slow, failing output: every line is
/// either written whole or counted, and the lines around a broken one stay whole.
#[test]
fn a_flood_from_many_threads_into_a_flaky_output_loses_nothing_uncounted() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 5_000;
    for blocking in [false, true] {
        let flaky = Flaky::default();
        let (layer, guard) = LogLayer::builder()
            .writer(flaky.clone())
            .blocking(blocking)
            .queue_limits(256, 64 * 1024)
            .build();
        let dropped = layer.dropped_lines();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let dispatch = dispatch.clone();
                scope.spawn(move || {
                    common::with_default(dispatch, || {
                        for i in 0..PER_THREAD {
                            tracing::info!(t, i, pad = "p", "flood");
                        }
                    });
                });
            }
        });
        drop(dispatch);
        drop(guard);
        let text = String::from_utf8(flaky.out.lock().unwrap().clone()).unwrap();
        let mut whole = 0u64;
        for line in text.lines() {
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                assert_eq!(value["message"], "flood");
                whole += 1;
            }
        }
        let total = (THREADS * PER_THREAD) as u64;
        assert_eq!(
            whole + dropped.get(),
            total,
            "blocking {blocking}: {whole} written + {} dropped",
            dropped.get()
        );
    }
}

/// An output that takes all of its first write but the last byte, then fails once.
#[derive(Clone, Default)]
struct ShortThenFail {
    out: Arc<Mutex<Vec<u8>>>,
    calls: Arc<AtomicUsize>,
}

impl Write for ShortThenFail {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.calls.fetch_add(1, Ordering::Relaxed) {
            0 => buf.len() - 1,
            1 => return Err(io::Error::other("disk full")),
            _ => buf.len(),
        };
        self.out.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A write that fails after the whole line but its newline leaves the line whole once the
/// next write ends it: it is written, not dropped (the count would say a line was lost that
/// is in the output).
#[test]
fn a_line_missing_only_its_newline_is_not_counted_as_dropped() {
    for blocking in [true, false] {
        let output = ShortThenFail::default();
        let (layer, guard) = LogLayer::builder()
            .writer(output.clone())
            .blocking(blocking)
            .build();
        let dropped = layer.dropped_lines();
        let subscriber = tracing_subscriber::registry().with(layer);
        common::with_default(subscriber, || {
            tracing::info!("first");
            if !blocking {
                // The first line written (short, then its newline) before the second comes.
                assert!(wait_until(|| output.calls.load(Ordering::Relaxed) >= 2));
            }
            tracing::info!("second");
        });
        drop(guard);
        let text = String::from_utf8(output.out.lock().unwrap().clone()).unwrap();
        let lines = strict_lines(&text);
        assert_eq!(lines.len(), 2, "blocking {blocking}: {text}");
        assert_eq!(
            dropped.get(),
            0,
            "blocking {blocking}: both lines are whole"
        );
    }
}

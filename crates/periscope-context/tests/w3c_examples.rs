//! The W3C Trace Context test suite's header cases, applied to the parsers directly: each
//! incoming header set must be continued (same trace id) or restarted (new trace id), and
//! tracestate must be inherited or discarded exactly as the suite expects.

use http::{HeaderMap, HeaderName, HeaderValue};
use periscope_context::{ExtractOptions, TraceOrigin, extract};

const TRACE_ID: &str = "12345678901234567890123456789012";

fn extract_from(pairs: &[(&str, &str)]) -> periscope_context::Extracted {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    extract(&map, &ExtractOptions::default())
}

fn continued(traceparent: &str) -> bool {
    let e = extract_from(&[("traceparent", traceparent)]);
    let same = e.context.trace_id.to_string() == TRACE_ID;
    assert_eq!(same, e.trace == TraceOrigin::Continued, "{traceparent:?}");
    same
}

#[test]
fn valid_traceparents_are_continued() {
    for tp in [
        "00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-00",
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        "cc-12345678901234567890123456789012-1234567890123456-01",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    ] {
        assert!(continued(tp), "{tp:?} should be continued");
    }
}

#[test]
fn invalid_traceparents_restart_the_trace() {
    for tp in [
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        "ff-12345678901234567890123456789012-1234567890123456-01",
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
        "00-ABCDEF78901234567890123456789012-1234567890123456-01",
    ] {
        assert!(!continued(tp), "{tp:?} should restart the trace");
    }
}

#[test]
fn two_traceparent_headers_restart_the_trace() {
    let e = extract_from(&[
        (
            "traceparent",
            "00-12345678901234567890123456789011-1234567890123456-01",
        ),
        (
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        ),
    ]);
    assert!(matches!(e.trace, TraceOrigin::Restarted(_)));
    let id = e.context.trace_id.to_string();
    assert!(id != TRACE_ID && id != "12345678901234567890123456789011");
}

#[test]
fn header_names_are_case_insensitive_and_exact() {
    // HeaderMap lowercases names, so every casing of `traceparent` is the same header.
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let e = extract_from(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(e.trace, TraceOrigin::Continued);
    }
    for name in ["trace-parent", "trace.parent"] {
        let e = extract_from(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(e.trace, TraceOrigin::Started);
    }
}

#[test]
fn random_flag_is_propagated() {
    let e = extract_from(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-02",
    )]);
    let sent = e.context.child().traceparent();
    assert!(sent.flags.is_random());
    assert!(!sent.flags.is_sampled());
    assert_eq!(sent.trace_id.to_string(), TRACE_ID);
    assert_ne!(sent.parent_id.to_string(), "1234567890123456");
}

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-00";

fn tracestate(values: &[&str]) -> String {
    let mut pairs = vec![("traceparent", TP)];
    pairs.extend(values.iter().map(|v| ("tracestate", *v)));
    extract_from(&pairs).context.trace_state.to_string()
}

#[test]
fn tracestate_is_inherited_when_valid() {
    assert_eq!(tracestate(&["foo=1,bar=2"]), "foo=1,bar=2");
    assert_eq!(tracestate(&[""]), "");
    assert_eq!(tracestate(&["foo=1", ""]), "foo=1");
    assert_eq!(tracestate(&["", "foo=1"]), "foo=1");
    assert_eq!(
        tracestate(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]),
        "foo=1,bar=2,rojo=1,congo=2,baz=3"
    );
    assert_eq!(
        tracestate(&["foo=1 \t , \t bar=2, \t baz=3"]),
        "foo=1,bar=2,baz=3"
    );
    assert_eq!(
        tracestate(&["foo=1\t \t,\t \tbar=2,\t \tbaz=3"]),
        "foo=1,bar=2,baz=3"
    );
    for ows in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        assert_eq!(tracestate(&[ows]), "foo=1", "{ows:?}");
    }
    assert_eq!(tracestate(&["foo@=1,bar=2"]), "foo@=1,bar=2");
    assert_eq!(tracestate(&["foo@@bar=1,bar=2"]), "foo@@bar=1,bar=2");
    assert_eq!(tracestate(&["foo@bar@baz=1,bar=2"]), "foo@bar@baz=1,bar=2");
    let key = "z".repeat(256);
    assert_eq!(
        tracestate(&["foo=1", &format!("{key}=1")]),
        format!("foo=1,{key}=1")
    );
    for key in [
        format!("{}@{}", "t".repeat(241), "v".repeat(14)),
        format!("{}@v", "t".repeat(242)),
    ] {
        assert!(tracestate(&["foo=1", &format!("{key}=1")]).contains(&key));
    }
}

#[test]
fn tracestate_duplicates_keep_one() {
    for values in [
        &["foo=1,foo=1"][..],
        &["foo=1,foo=2"],
        &["foo=1", "foo=1"],
        &["foo=1", "foo=2"],
    ] {
        assert_eq!(tracestate(values), "foo=1");
    }
}

#[test]
fn tracestate_is_discarded_when_invalid() {
    for value in [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "@foo=1,bar=2",
        "foo=bar=baz",
        "foo=,bar=3",
    ] {
        assert_eq!(tracestate(&[value]), "", "{value:?}");
    }
    assert_eq!(
        tracestate(&["foo=1", &format!("{}=1", "z".repeat(257))]),
        ""
    );
    let members = |range: std::ops::RangeInclusive<u32>| {
        range
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let inherited = tracestate(&[
        &members(1..=10),
        &members(11..=20),
        &members(21..=30),
        &members(31..=32),
    ]);
    assert_eq!(inherited.split(',').count(), 32);
    assert_eq!(
        tracestate(&[
            &members(1..=10),
            &members(11..=20),
            &members(21..=30),
            &members(31..=33)
        ]),
        ""
    );
}

#[test]
fn tracestate_without_traceparent_is_discarded() {
    let e = extract_from(&[("tracestate", "foo=1,bar=2")]);
    assert!(e.context.trace_state.is_empty());
}

//! Property tests: formatting then parsing gives back the value, no input panics, and what
//! periscope sends, OpenTelemetry's propagators read back unchanged.

use std::collections::HashMap;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::BaggagePropagator;

use periscope_context::{
    Baggage, ExtractOptions, RequestContext, RequestId, SpanId, TraceFlags, TraceId, TraceParent,
    TraceState, extract, inject, validate_id,
};
use proptest::prelude::*;

fn trace_parent() -> impl Strategy<Value = TraceParent> {
    (any::<u128>(), any::<u64>(), 0u8..4).prop_filter_map("non-zero ids", |(t, s, f)| {
        Some(TraceParent::new(
            TraceId::from_bytes(t.to_be_bytes())?,
            SpanId::from_bytes(s.to_be_bytes())?,
            TraceFlags::from_u8(f),
        ))
    })
}

fn trace_state() -> impl Strategy<Value = TraceState> {
    let key = "[a-z0-9][a-z0-9_*/@-]{0,20}";
    let value = "[ -+--<>-~]{0,20}[!-+--<>-~]";
    proptest::collection::vec((key, value), 0..40).prop_map(|members| {
        let mut state = TraceState::new();
        for (k, v) in members {
            state.insert(&k, &v).unwrap();
        }
        state
    })
}

proptest! {
    #[test]
    fn traceparent_round_trips(tp in trace_parent()) {
        prop_assert_eq!(TraceParent::parse(&tp.to_string()), Ok(tp));
    }

    #[test]
    fn tracestate_round_trips(state in trace_state()) {
        prop_assert!(state.len() <= 32);
        prop_assert!(state.as_str().len() <= 512);
        prop_assert_eq!(TraceState::parse(&state.to_string()), Ok(state));
    }

    #[test]
    fn baggage_round_trips(members in proptest::collection::vec(("[A-Za-z0-9!#$&'*+.^_`|~-]{1,12}", any::<String>()), 0..80)) {
        let mut baggage = Baggage::new();
        // What the baggage should hold: each member accepted, replacing its key's earlier one.
        let mut kept: Vec<(&str, &str)> = Vec::new();
        for (k, v) in &members {
            if baggage.insert(k, v).is_ok() {
                kept.retain(|(key, _)| key != k);
                kept.push((k, v));
            }
        }
        // A first member always fits (a few hundred bytes encoded at most).
        prop_assert!(members.is_empty() || !kept.is_empty());
        let held: Vec<(&str, &str)> = baggage.iter().map(|m| (m.key(), m.value())).collect();
        prop_assert_eq!(&held, &kept);
        let text = baggage.to_string();
        prop_assert!(baggage.len() <= 64);
        prop_assert!(text.len() <= 8192);
        prop_assert_eq!(Baggage::parse(&text), baggage);
    }

    #[test]
    fn request_ids_round_trip(id in "[A-Za-z0-9._:-]{1,128}") {
        let parsed = RequestId::parse(&id).unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
    }

    #[test]
    fn no_bytes_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = TraceParent::parse_bytes(&bytes);
        let _ = TraceState::parse_headers([bytes.as_slice()]);
        let _ = Baggage::parse_headers([bytes.as_slice()]);
        let _ = validate_id(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = RequestId::parse(text);
        }
    }

    #[test]
    fn extract_never_panics_and_always_yields_valid_ids(values in proptest::collection::vec(any::<Vec<u8>>(), 0..6)) {
        let names = ["traceparent", "tracestate", "baggage", "x-request-id", "x-org-id", "x-correlation-id"];
        let mut map = http::HeaderMap::new();
        for (name, value) in names.iter().zip(&values) {
            if let Ok(value) = http::HeaderValue::from_bytes(value) {
                map.append(*name, value);
            }
        }
        let ctx = extract(&map, &ExtractOptions::default()).context;
        prop_assert!(validate_id(ctx.request_id.as_str().as_bytes()).is_ok());
        prop_assert!(TraceParent::parse(&ctx.traceparent().to_string()).is_ok());
        prop_assert!(ctx.trace_state.as_str().len() <= 512);
    }

    #[test]
    fn near_valid_traceparents_never_panic(s in "[0-9a-fA-F. -]{50,60}") {
        let _ = TraceParent::parse(&s);
    }

    /// A valid traceparent with one edit (a byte changed, put in or taken out; another version;
    /// a suffix, as a later version may add): read exactly when W3C Trace Context's rules
    /// accept it, so every branch of the parser is reached, not only its first checks.
    #[test]
    fn edited_traceparents_are_read_by_the_specs_rules(
        tp in trace_parent(),
        edit in 0u8..6,
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"0123456789abcdefABCDEF- .".to_vec()),
        version in prop::sample::select(vec!["00", "01", "cc", "fe", "ff", "0g"]),
        suffix in "-?[0-9a-z-]{0,6}",
    ) {
        let mut text = tp.to_string().into_bytes();
        let at = at.index(text.len());
        match edit {
            0 => text[at] = byte,
            1 => text.insert(at, byte),
            2 => drop(text.remove(at)),
            3 => text.splice(..2, version.bytes()).for_each(drop),
            4 => {
                text.splice(..2, version.bytes()).for_each(drop);
                text.extend(suffix.bytes());
            }
            _ => text.extend(suffix.bytes()),
        }
        let text = String::from_utf8(text).unwrap();
        prop_assert_eq!(
            TraceParent::parse(&text).is_ok(),
            w3c_accepts(&text),
            "{:?}",
            text
        );
    }

    /// A continued trace's `tracestate`, sent over several header lines of more than 512
    /// characters in all: kept within 512, the trace continued.
    #[test]
    fn a_long_tracestate_over_several_lines_is_bounded(
        tp in trace_parent(),
        lines in proptest::collection::vec(trace_state(), 2..6),
    ) {
        let mut map = http::HeaderMap::new();
        map.insert("traceparent", tp.to_string().parse().unwrap());
        for state in &lines {
            if !state.as_str().is_empty() {
                map.append("tracestate", state.as_str().parse().unwrap());
            }
        }
        let ctx = extract(&map, &ExtractOptions::default()).context;
        prop_assert_eq!(ctx.trace_id, tp.trace_id);
        prop_assert!(ctx.trace_state.as_str().len() <= 512);
        prop_assert!(ctx.trace_state.len() <= 32);
    }
}

/// W3C Trace Context's rules for a `traceparent` value (level 2): a two-digit lower-case hex
/// version other than `ff`; a trace id, a parent id and flags of lower-case hex, the ids not all
/// zero; version `00` exactly that long, a later version longer only after another `-`.
fn w3c_accepts(text: &str) -> bool {
    let text = text.trim_matches([' ', '\t']);
    let b = text.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|part| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    let zeros = |range: std::ops::Range<usize>| b[range].iter().all(|&c| c == b'0');
    if b.len() < 55
        || !hex(0..2)
        || &b[..2] == b"ff"
        || b[2] != b'-'
        || !hex(3..35)
        || b[35] != b'-'
        || !hex(36..52)
        || b[52] != b'-'
        || !hex(53..55)
        || zeros(3..35)
        || zeros(36..52)
    {
        return false;
    }
    if &b[..2] == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    }
}

#[test]
fn opentelemetry_reads_every_baggage_value_periscope_sends() {
    let values = [
        ("token", "dGVzdA=="),
        ("filter", "a=b&c=d"),
        ("spaces", " padded value "),
        ("punctuation", "a,b;c\"d\\e%f"),
        ("unicode", "Zoë 東京"),
    ];
    let mut ctx = RequestContext::new_root();
    for (key, value) in values {
        ctx.baggage.insert(key, value).unwrap();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    inject(&ctx, &mut carrier);

    let otel = BaggagePropagator::new().extract(&carrier);
    for (key, value) in values {
        let got = otel.baggage().get(key).map(|v| v.as_str().to_owned());
        // OpenTelemetry trims what it decodes; the rest must arrive as it was inserted.
        assert_eq!(got.as_deref(), Some(value.trim()), "{key}");
    }
}

proptest::proptest! {
    /// Any value, any characters: OpenTelemetry decodes what periscope encodes. (Keys stay
    /// clear of `%`: they are tokens, sent as they are, where OpenTelemetry percent-decodes them.)
    #[test]
    fn opentelemetry_decodes_any_value(
        members in proptest::collection::btree_map("[A-Za-z0-9!#$&'*+.^_`|~-]{1,12}", r#"([a-z=%,; "\\]|.){0,40}"#, 0..10),
    ) {
        let mut ctx = RequestContext::new_root();
        for (key, value) in &members {
            ctx.baggage.insert(key, value).unwrap();
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        inject(&ctx, &mut carrier);
        let otel = BaggagePropagator::new().extract(&carrier);
        for (key, value) in &members {
            let got = otel.baggage().get(key.as_str()).map(|v| v.as_str().to_owned());
            proptest::prop_assert_eq!(got.as_deref(), Some(value.trim()), "{}", key);
        }
    }
}

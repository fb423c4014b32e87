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

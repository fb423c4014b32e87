//! Feeds arbitrary bytes to every header parser and checks what comes out is well-formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope_context::{Baggage, ExtractOptions, TraceParent, TraceState, extract, validate_id};

fuzz_target!(|data: &[u8]| {
    if let Ok(tp) = TraceParent::parse_bytes(data) {
        // Whatever parses re-emits as a valid version-00 header that parses to the same ids.
        let again = TraceParent::parse(&tp.to_string()).expect("formatted traceparent parses");
        assert_eq!((again.trace_id, again.parent_id), (tp.trace_id, tp.parent_id));
    }
    if let Ok(state) = TraceState::parse_headers(data.split(|b| *b == b'\n')) {
        assert!(state.len() <= 32 && state.as_str().len() <= 512);
        assert_eq!(TraceState::parse(state.as_str()).as_ref(), Ok(&state));
    }
    let baggage = Baggage::parse_headers(data.split(|b| *b == b'\n'));
    assert!(baggage.len() <= 64 && baggage.to_string().len() <= 8192);
    assert_eq!(Baggage::parse(&baggage.to_string()), baggage);
    let _ = validate_id(data);

    let mut headers = http::HeaderMap::new();
    for (name, value) in ["traceparent", "tracestate", "baggage", "x-request-id"]
        .iter()
        .zip(data.split(|b| *b == 0))
    {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.append(*name, value);
        }
    }
    let ctx = extract(&headers, &ExtractOptions::default()).context;
    assert!(validate_id(ctx.request_id.as_str().as_bytes()).is_ok());
});

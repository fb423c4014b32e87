//! Moving a [`RequestContext`] across a process boundary: HTTP headers, queue messages, job
//! payloads.

use std::collections::{BTreeMap, HashMap};

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::ThreadRng;

use crate::baggage::Baggage;
use crate::context::RequestContext;
use crate::headers;
use crate::request_id::{InvalidId, RequestId, validate_id};
use crate::tenant::{Tenant, TenantKey};
use crate::traceparent::{TraceParent, TraceParentError};
use crate::tracestate::TraceStateParser;

/// Reads context values from a carrier. Keys are the lower-case header names
/// (`traceparent`, `x-request-id`, ...).
pub trait Extractor {
    /// Calls `f` with every value stored under `key`, in order.
    fn for_each(&self, key: &HeaderName, f: &mut dyn FnMut(&[u8]));

    /// The first value stored under `key`. Carriers that hold `HeaderValue`s lend them, so an
    /// id read from a request is shared rather than copied.
    fn first(&self, key: &HeaderName) -> Option<CarrierValue<'_>>;

    /// Calls `f` with every entry the carrier holds (a key and one of its values; a key's
    /// values in order) and returns `true`, or returns `false` without calling it when listing
    /// the entries is not cheaper than looking each key up (the default). [`extract`] then reads
    /// every context header in that one pass instead of hashing a lookup per header. Entries
    /// whose key cannot name a context header may be left out: `HeaderMap`'s implementation
    /// passes over the names (all lower case there) that start with neither `x`, `t` nor `b`.
    fn for_each_entry<'a>(&'a self, f: &mut dyn FnMut(&'a str, CarrierValue<'a>)) -> bool {
        let _ = f;
        false
    }
}

/// One value read from a carrier.
#[derive(Clone, Copy, Debug)]
pub enum CarrierValue<'a> {
    /// A header value, shared when kept.
    Header(&'a HeaderValue),
    /// Raw bytes, copied when kept.
    Bytes(&'a [u8]),
}

impl CarrierValue<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Header(value) => value.as_bytes(),
            Self::Bytes(bytes) => bytes,
        }
    }

    /// The value as a header value after the id rules: shared when it already is one.
    fn to_id_header(self) -> Result<HeaderValue, InvalidId> {
        validate_id(self.as_bytes())?;
        match self {
            Self::Header(value) => Ok(value.clone()),
            // Valid ids are visible ASCII, which every header value accepts.
            Self::Bytes(bytes) => HeaderValue::from_bytes(bytes).map_err(|_| InvalidId::Empty),
        }
    }
}

/// Writes context values into a carrier.
pub trait Injector {
    /// Stores `value` under `key`, replacing what was there.
    fn set(&mut self, key: &HeaderName, value: &HeaderValue);

    /// Removes what is stored under `key`: [`inject`] calls it for the context headers the
    /// context has no value for, so a carrier that already held some (a forwarded request)
    /// does not send another trace's state on. The default does nothing, which is right for
    /// carriers that start empty.
    fn remove(&mut self, key: &HeaderName) {
        let _ = key;
    }
}

impl Extractor for HeaderMap {
    fn for_each(&self, key: &HeaderName, f: &mut dyn FnMut(&[u8])) {
        for value in self.get_all(key) {
            f(value.as_bytes());
        }
    }

    fn first(&self, key: &HeaderName) -> Option<CarrierValue<'_>> {
        self.get(key).map(CarrierValue::Header)
    }

    fn for_each_entry<'a>(&'a self, f: &mut dyn FnMut(&'a str, CarrierValue<'a>)) -> bool {
        // A lookup hashes the name; a pass over the entries of an ordinary request is cheaper
        // than the five to seven lookups of `extract`, a pass over hundreds is not.
        if self.keys_len() > MAX_NAMES_SCANNED {
            return false;
        }
        for (name, value) in self {
            let name = name.as_str();
            if may_be_context_header(name) {
                f(name, CarrierValue::Header(value));
            }
        }
        true
    }
}

/// Whether a header named `name` can be one [`extract`] reads: each starts with `x` (the
/// request and correlation ids, the tenant headers, all `x-…`), `t` (`traceparent`,
/// `tracestate`) or `b` (`baggage`). A request's other headers (`host`, `accept`,
/// `user-agent`, cookies, ...) are passed over before the call made for each entry: about 35
/// instructions fewer for each.
fn may_be_context_header(name: &str) -> bool {
    matches!(name.as_bytes().first(), Some(b'x' | b't' | b'b'))
}

/// Above this many distinct header names, [`extract`] looks each context header up instead.
const MAX_NAMES_SCANNED: usize = 32;

impl Injector for HeaderMap {
    fn set(&mut self, key: &HeaderName, value: &HeaderValue) {
        self.insert(key.clone(), value.clone());
    }

    fn remove(&mut self, key: &HeaderName) {
        HeaderMap::remove(self, key);
    }
}

/// Removes the keys that spell `key` in another case (`Traceparent`, as Go's header carrier
/// writes it): the same header to a reader that ignores case, such as a [`Carrier`] read from
/// the map, which would keep whichever comes first instead of the injected value.
macro_rules! remove_other_cases {
    ($map:expr, $key:expr) => {
        let key = $key.as_str();
        if $map
            .keys()
            .any(|k| k.len() == key.len() && k != key && k.eq_ignore_ascii_case(key))
        {
            $map.retain(|k, _| k == key || !k.eq_ignore_ascii_case(key));
        }
    };
}

macro_rules! string_map_carrier {
    ($map:ident) => {
        /// Keys are read without regard to case: the lower-case one, else the first in sort
        /// order of those in another case.
        impl Extractor for $map<String, String> {
            fn for_each(&self, key: &HeaderName, f: &mut dyn FnMut(&[u8])) {
                if let Some(value) = self.first(key) {
                    f(value.as_bytes());
                }
            }

            fn first(&self, key: &HeaderName) -> Option<CarrierValue<'_>> {
                let key = key.as_str();
                self.get(key)
                    .or_else(|| in_any_case(self, key))
                    .map(|v| CarrierValue::Bytes(v.as_bytes()))
            }
        }

        impl Injector for $map<String, String> {
            fn set(&mut self, key: &HeaderName, value: &HeaderValue) {
                remove_other_cases!(self, key);
                if let Ok(value) = value.to_str() {
                    self.insert(key.as_str().to_owned(), value.to_owned());
                }
            }

            fn remove(&mut self, key: &HeaderName) {
                remove_other_cases!(self, key);
                $map::remove(self, key.as_str());
            }
        }
    };
}
string_map_carrier!(HashMap);
string_map_carrier!(BTreeMap);

/// The value of a key that spells `key` in another case (`Traceparent`, as Go's header carrier
/// writes it, in a map filled by another SDK); of several, the first in sort order, so that a
/// `HashMap` reads the same whatever its order.
fn in_any_case<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
    key: &str,
) -> Option<&'a String> {
    map.into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .min_by(|a, b| a.0.cmp(b.0))
        .map(|(_, value)| value)
}

/// What [`extract`] reads besides the standard headers.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Tenant fields to read (default: `org_id`, `project_id`).
    pub tenant_keys: Vec<TenantKey>,
    /// Whether a trace started here (no valid `traceparent`) is sampled (default: `true`).
    pub sample_new_traces: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            tenant_keys: TenantKey::defaults(),
            sample_new_traces: true,
        }
    }
}

/// Where the request id of an extracted context came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestIdOrigin {
    /// The caller's valid `x-request-id` (or `x-correlation-id`) was kept.
    Kept,
    /// The caller's `x-request-id` was invalid (the reason); its valid `x-correlation-id` was
    /// kept, so the caller's correlation still holds.
    KeptCorrelationId(InvalidId),
    /// None was sent; one was generated.
    Generated,
    /// The caller's id was invalid and replaced by a generated one (the reason is the
    /// `x-request-id`'s when both headers were sent and both were invalid).
    Replaced(InvalidId),
}

/// Whether an extracted context continues the caller's trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOrigin {
    /// A valid `traceparent` was continued.
    Continued,
    /// No `traceparent` was sent; a new trace started.
    Started,
    /// The `traceparent` was invalid; a new trace started and `tracestate` was dropped.
    Restarted(TraceParentError),
}

/// The result of [`extract`]: the context and how each part of it was obtained.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Extracted {
    /// The context to run the request or job with.
    pub context: RequestContext,
    /// Where the request id came from.
    pub request_id: RequestIdOrigin,
    /// Whether the request id is the carrier's own, single `x-request-id`: where it is not
    /// (generated, replaced, taken from `x-correlation-id`, or one of several sent), a server
    /// that wants the code inside it to read the id from the header rewrites it.
    pub request_id_from_header: bool,
    /// Whether the trace was continued.
    pub trace: TraceOrigin,
    /// The caller's valid `traceparent`, when one was sent (for a span link at a trust boundary).
    pub incoming: Option<TraceParent>,
    /// Tenant fields that were sent but rejected, with the reason.
    pub rejected_tenant: Vec<(TenantKey, InvalidId)>,
}

/// Reads a [`RequestContext`] from a carrier, applying the wire rules: a valid request id is
/// kept (`x-request-id`, else `x-correlation-id`), otherwise one is generated; exactly one valid
/// `traceparent` is continued under a new span, otherwise a new trace starts and `tracestate`
/// is ignored; an invalid `tracestate` is dropped alone; baggage keeps its valid members within
/// the limits; tenant fields are kept when valid.
///
/// ```
/// use std::collections::HashMap;
/// use periscope_context::{extract, ExtractOptions, TraceOrigin};
///
/// let mut message = HashMap::new();
/// message.insert("traceparent".to_string(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string());
/// message.insert("x-request-id".to_string(), "req-1".to_string());
///
/// let extracted = extract(&message, &ExtractOptions::default());
/// assert_eq!(extracted.trace, TraceOrigin::Continued);
/// assert_eq!(extracted.context.request_id.as_str(), "req-1");
/// assert_eq!(extracted.context.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// ```
pub fn extract<C: Extractor + ?Sized>(carrier: &C, options: &ExtractOptions) -> Extracted {
    // Filled in place: the reader is large, and moving it costs more than reading it.
    let mut sent = Sent::new();
    sent.read(carrier, options);
    // One `x-request-id`, kept (only when valid: else the origin says otherwise). Beside
    // others, it is rewritten alone, so no code inside reads (or forwards) one not kept.
    let request_id_sent_once = sent.request_ids == 1;
    // Every request draws at least a span id: one handle on the thread's generator serves the
    // request id, the trace id and the span id (each `rand::rng()` clones and drops an `Rc`).
    let mut rng = rand::rng();
    let (request_id, request_id_origin) =
        request_id(sent.request_id, sent.correlation_id, &mut rng);
    let request_id_from_header = request_id_sent_once && request_id_origin == RequestIdOrigin::Kept;
    let parsed = match sent.traceparents {
        0 | 1 => sent.traceparent.take(),
        _ => Some(Err(TraceParentError::Duplicated)),
    };
    let (trace, incoming) = match parsed {
        Some(Ok(parent)) => (TraceOrigin::Continued, Some(parent)),
        Some(Err(error)) => (TraceOrigin::Restarted(error), None),
        None => (TraceOrigin::Started, None),
    };

    let mut tenant = Tenant::new();
    let mut rejected_tenant = Vec::new();
    for (index, key) in options.tenant_keys.iter().enumerate() {
        // A key listed twice (`org_id` declared beside the defaults) is read once: its
        // rejection warned once.
        if !sent.tenants.has(index) || options.tenant_keys[..index].contains(key) {
            continue;
        }
        if let Some(value) = carrier.first(key.header()) {
            match value.to_id_header() {
                Ok(value) => tenant.insert_validated(key.clone(), value),
                Err(error) => rejected_tenant.push((key.clone(), error)),
            }
        }
    }

    // Made where it is returned, from its parts: a context made first and then moved into the
    // result is copied (160 bytes) on the way.
    let mut context = match &incoming {
        // An invalid tracestate is dropped alone; the trace continues.
        Some(parent) => RequestContext::continue_from_with(
            request_id,
            parent,
            std::mem::take(&mut sent.tracestate)
                .finish()
                .unwrap_or_default(),
            &mut rng,
        ),
        None => RequestContext::start_with(request_id, options.sample_new_traces, &mut rng),
    };
    context.baggage = std::mem::take(&mut sent.baggage);
    context.tenant = tenant;
    Extracted {
        context,
        request_id: request_id_origin,
        request_id_from_header,
        trace,
        incoming,
        rejected_tenant,
    }
}

/// The valid `x-request-id`, else the valid `x-correlation-id`, else a generated id.
fn request_id(
    request_id: Option<CarrierValue<'_>>,
    correlation_id: Option<CarrierValue<'_>>,
    rng: &mut ThreadRng,
) -> (RequestId, RequestIdOrigin) {
    match request_id.map(|value| value.to_id_header()) {
        Some(Ok(id)) => (RequestId::from_validated(id), RequestIdOrigin::Kept),
        Some(Err(error)) => match correlation_id.and_then(|value| value.to_id_header().ok()) {
            Some(id) => (
                RequestId::from_validated(id),
                RequestIdOrigin::KeptCorrelationId(error),
            ),
            None => (
                RequestId::generate_with(rng),
                RequestIdOrigin::Replaced(error),
            ),
        },
        None => match correlation_id.map(|value| value.to_id_header()) {
            Some(Ok(id)) => (RequestId::from_validated(id), RequestIdOrigin::Kept),
            Some(Err(error)) => (
                RequestId::generate_with(rng),
                RequestIdOrigin::Replaced(error),
            ),
            None => (RequestId::generate_with(rng), RequestIdOrigin::Generated),
        },
    }
}

/// The context headers a carrier sent, read in one pass over its entries where it can list
/// them, else by one lookup per header.
struct Sent<'a> {
    request_id: Option<CarrierValue<'a>>,
    /// How many `x-request-id` values were sent.
    request_ids: usize,
    correlation_id: Option<CarrierValue<'a>>,
    traceparents: usize,
    /// The first `traceparent`, parsed.
    traceparent: Option<Result<TraceParent, TraceParentError>>,
    tracestate: TraceStateParser,
    baggage: Baggage,
    /// Whether the baggage limits leave room for more members.
    baggage_room: bool,
    tenants: TenantsSent,
}

impl<'a> Sent<'a> {
    fn new() -> Self {
        Self {
            request_id: None,
            request_ids: 0,
            correlation_id: None,
            traceparents: 0,
            traceparent: None,
            tracestate: TraceStateParser::default(),
            baggage: Baggage::new(),
            baggage_room: true,
            tenants: TenantsSent(0),
        }
    }

    fn read<C: Extractor + ?Sized>(&mut self, carrier: &'a C, options: &ExtractOptions) {
        let listed = carrier.for_each_entry(&mut |name, value| self.entry(options, name, value));
        if !listed {
            self.look_up(carrier);
        }
    }

    fn entry(&mut self, options: &ExtractOptions, name: &str, value: CarrierValue<'a>) {
        match name {
            "x-request-id" => {
                self.request_ids += 1;
                self.request_id.get_or_insert(value);
            }
            "x-correlation-id" => {
                self.correlation_id.get_or_insert(value);
            }
            "traceparent" => self.traceparent(value.as_bytes()),
            "tracestate" => self.tracestate.push(value.as_bytes()),
            "baggage" => self.baggage(value.as_bytes()),
            // Tenant headers are all `x-…`, and none is one of the above: `TenantKey::new`
            // refuses `request_id` and `correlation_id`.
            _ if name.starts_with("x-") => self.tenants.0 |= TenantsSent::bits(options, name),
            _ => {}
        }
    }

    fn look_up<C: Extractor + ?Sized>(&mut self, carrier: &'a C) {
        self.request_id = carrier.first(&headers::X_REQUEST_ID);
        let request_ids = &mut self.request_ids;
        carrier.for_each(&headers::X_REQUEST_ID, &mut |_| *request_ids += 1);
        self.correlation_id = carrier.first(&headers::X_CORRELATION_ID);
        carrier.for_each(&headers::TRACEPARENT, &mut |value| self.traceparent(value));
        if matches!(self.traceparent, Some(Ok(_))) {
            let state = &mut self.tracestate;
            carrier.for_each(&headers::TRACESTATE, &mut |value| state.push(value));
        }
        carrier.for_each(&headers::BAGGAGE, &mut |value| self.baggage(value));
        self.tenants = TenantsSent(u64::MAX);
    }

    fn traceparent(&mut self, value: &[u8]) {
        self.traceparents += 1;
        if self.traceparents == 1 {
            self.traceparent = Some(TraceParent::parse_bytes(value));
        }
    }

    fn baggage(&mut self, value: &[u8]) {
        if self.baggage_room {
            self.baggage_room = self.baggage.extend_from_header(value);
        }
    }
}

/// Which tenant headers a carrier holds: tenant key `i` is bit `i`; every bit is set when the
/// carrier cannot list its entries, and keys past the last bit are always looked up.
#[derive(Clone, Copy)]
struct TenantsSent(u64);

impl TenantsSent {
    fn bits(options: &ExtractOptions, name: &str) -> u64 {
        let mut bits = 0;
        for (index, key) in options.tenant_keys.iter().take(64).enumerate() {
            if key.header().as_str() == name {
                bits |= 1 << index;
            }
        }
        bits
    }

    fn has(self, index: usize) -> bool {
        index >= 64 || self.0 & (1 << index) != 0
    }
}

/// Writes `ctx` into a carrier: `traceparent` naming `ctx.span_id` as the parent,
/// `tracestate` and `baggage` when not empty, `x-request-id`, and the tenant fields.
///
/// The context owns these headers: what the carrier held under them is replaced (in a string
/// map, under any case of the name: `Traceparent` too), and a `tracestate`, `baggage`,
/// `x-org-id` or `x-project-id` the context has no value for is removed, so a forwarded request
/// never carries the caller's trace state, baggage or tenant past a trust boundary. (Headers of
/// other tenant keys: see the client layer's `tenant_keys`.)
///
/// For an outgoing call that should appear as its own span, inject `ctx.child()`.
///
/// ```
/// use http::HeaderMap;
/// use periscope_context::{inject, RequestContext};
///
/// let ctx = RequestContext::new_root();
/// let mut headers = HeaderMap::new();
/// inject(&ctx, &mut headers);
/// assert_eq!(headers["x-request-id"], ctx.request_id.as_str());
/// assert_eq!(headers["traceparent"], ctx.traceparent().to_string().as_str());
/// ```
pub fn inject<C: Injector + ?Sized>(ctx: &RequestContext, carrier: &mut C) {
    carrier.set(&headers::TRACEPARENT, &ctx.traceparent().to_header_value());
    match ctx.trace_state.to_header_value() {
        Some(state) => carrier.set(&headers::TRACESTATE, &state),
        None => carrier.remove(&headers::TRACESTATE),
    }
    match ctx.baggage.to_header_value() {
        Some(baggage) => carrier.set(&headers::BAGGAGE, &baggage),
        None => carrier.remove(&headers::BAGGAGE),
    }
    carrier.set(&headers::X_REQUEST_ID, ctx.request_id.header_value());
    remove_absent_tenants(ctx, carrier, &[TenantKey::ORG_ID, TenantKey::PROJECT_ID]);
    for (key, value) in ctx.tenant.header_values() {
        carrier.set(key.header(), value);
    }
}

/// Removes the headers of the tenant `keys` that `ctx` has no value for.
pub fn remove_absent_tenants<C: Injector + ?Sized>(
    ctx: &RequestContext,
    carrier: &mut C,
    keys: &[TenantKey],
) {
    for key in keys {
        if ctx.tenant.get(key.field()).is_none() {
            carrier.remove(key.header());
        }
    }
}

/// A string map that carries a [`RequestContext`] inside a queue message or job payload.
///
/// Serialises as a flat JSON object of header-named keys, so any queue can hold it. Read back
/// (or made from a map), keys are taken without regard to case (`Traceparent`, Go's canonical
/// header form, is `traceparent`); read back, a key given twice keeps its first value, as a
/// header does (made from a map, the lower-case key's, as [`extract`] reads the map). An entry
/// whose value is not a string (a number, a list, `null` for an absent value) is left out
/// rather than failing the whole payload, so a job is never lost for its trace context; the
/// keys of those that are not `null` are kept in [`Carrier::ignored_keys`] for the worker to
/// warn about (`JobSpan` does). A carrier that is not a JSON object is still an error.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use periscope_context::{Carrier, RequestContext};
///
/// // The handler enqueues a job.
/// let ctx = RequestContext::new_root();
/// let carrier = Carrier::from_context(&ctx);
/// let payload = serde_json::to_string(&carrier).unwrap();
///
/// // The worker continues the same trace and request id under its own span.
/// let carrier: Carrier = serde_json::from_str(&payload).unwrap();
/// let job = carrier.to_context();
/// assert_eq!(job.request_id, ctx.request_id);
/// assert_eq!(job.trace_id, ctx.trace_id);
/// assert_eq!(job.parent_span_id, Some(ctx.span_id));
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct Carrier(
    BTreeMap<String, String>,
    /// The keys read whose values were not strings (nor `null`), at most
    /// [`MAX_IGNORED_KEYS`], each cut to [`MAX_IGNORED_KEY_LEN`] bytes.
    #[cfg_attr(feature = "serde", serde(skip))]
    Vec<String>,
);

/// At most this many keys of ignored entries are kept (a hostile payload may hold millions).
#[cfg(feature = "serde")]
const MAX_IGNORED_KEYS: usize = 8;
/// Keys of ignored entries are kept up to this many bytes.
#[cfg(feature = "serde")]
const MAX_IGNORED_KEY_LEN: usize = 64;

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Carrier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Carrier;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of header names to string values")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Carrier, A::Error> {
                let mut entries = BTreeMap::new();
                let mut ignored = Vec::new();
                while let Some(mut key) = map.next_key::<String>()? {
                    key.make_ascii_lowercase();
                    match map.next_value::<Value>()? {
                        Value::Text(value) => {
                            entries.entry(key).or_insert(value);
                        }
                        Value::Null => {}
                        Value::Other if ignored.len() < MAX_IGNORED_KEYS => {
                            key.truncate(crate::text::prefix(&key, MAX_IGNORED_KEY_LEN).len());
                            ignored.push(key);
                        }
                        Value::Other => {}
                    }
                }
                Ok(Carrier(entries, ignored))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

/// An entry's value: text kept, anything else left out.
#[cfg(feature = "serde")]
enum Value {
    Text(String),
    Null,
    Other,
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyValue;

        impl<'de> serde::de::Visitor<'de> for AnyValue {
            type Value = Value;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E>(self, value: &str) -> Result<Value, E> {
                Ok(Value::Text(value.to_owned()))
            }

            fn visit_string<E>(self, value: String) -> Result<Value, E> {
                Ok(Value::Text(value))
            }

            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }

            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
                Ok(Value::Other)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
                Ok(Value::Other)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
                Ok(Value::Other)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
                Ok(Value::Other)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Value::Other)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Value::Other)
            }
        }

        // A self-describing format (JSON, which every human-readable one is) says what each
        // value is; a compact one (bincode) cannot, and keeps reading strings only. CBOR is
        // self-describing but not human-readable: read as strings too (docs/trace.md, "As
        // stored"), since bincode and postcard refuse `deserialize_any`.
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(AnyValue)
        } else {
            deserializer.deserialize_string(AnyValue)
        }
    }
}

impl Carrier {
    /// A carrier holding `ctx` (see [`inject`]).
    pub fn from_context(ctx: &RequestContext) -> Self {
        let mut carrier = Self::default();
        inject(ctx, &mut carrier.0);
        carrier
    }

    /// The context it carries, with the default options (see [`extract`]): of the tenant fields,
    /// only `org_id` and `project_id` are read. For fields a service declares, pass its options:
    /// `extract(&carrier, &options).context`.
    pub fn to_context(&self) -> RequestContext {
        extract(&self.0, &ExtractOptions::default()).context
    }

    /// The raw entries.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The keys of the entries left out when the carrier was read because their values were
    /// not strings (`null` aside): at most 8, each cut to 64 bytes. Empty for a carrier made
    /// here or read from an object of strings.
    ///
    /// ```
    /// # #[cfg(feature = "serde")] {
    /// use periscope_context::Carrier;
    ///
    /// let carrier: Carrier =
    ///     serde_json::from_str(r#"{"x-request-id":"req-1","traceparent":5,"baggage":null}"#).unwrap();
    /// assert_eq!(carrier.as_map().len(), 1);
    /// assert_eq!(carrier.ignored_keys(), ["traceparent"]);
    /// # }
    /// ```
    pub fn ignored_keys(&self) -> &[String] {
        &self.1
    }
}

impl From<BTreeMap<String, String>> for Carrier {
    /// Keys are taken without regard to case, as [`extract`] reads the same map: of keys that
    /// differ only in case, the lower-case one stays, else the first in the map's order.
    fn from(map: BTreeMap<String, String>) -> Self {
        let has_upper = |key: &String| key.bytes().any(|b| b.is_ascii_uppercase());
        if !map.keys().any(has_upper) {
            return Self(map, Vec::new());
        }
        let (mut entries, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
            map.into_iter().partition(|(key, _)| !has_upper(key));
        for (mut key, value) in others {
            key.make_ascii_lowercase();
            entries.entry(key).or_insert(value);
        }
        Self(entries, Vec::new())
    }
}

/// Its keys are lower case already (made so when read or made from a map; written so by
/// [`inject`]): a lookup is enough.
impl Extractor for Carrier {
    fn for_each(&self, key: &HeaderName, f: &mut dyn FnMut(&[u8])) {
        if let Some(value) = self.first(key) {
            f(value.as_bytes());
        }
    }

    fn first(&self, key: &HeaderName) -> Option<CarrierValue<'_>> {
        self.0
            .get(key.as_str())
            .map(|v| CarrierValue::Bytes(v.as_bytes()))
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &HeaderName, value: &HeaderValue) {
        self.0.set(key, value);
    }

    fn remove(&mut self, key: &HeaderName) {
        Injector::remove(&mut self.0, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

    #[test]
    fn the_pass_over_headers_keeps_every_context_header() {
        let tenants = [
            TenantKey::ORG_ID,
            TenantKey::PROJECT_ID,
            TenantKey::new("team_id").unwrap(),
        ];
        let context = [
            headers::X_REQUEST_ID,
            headers::X_CORRELATION_ID,
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::BAGGAGE,
        ];
        for name in context.iter().chain(tenants.iter().map(TenantKey::header)) {
            assert!(may_be_context_header(name.as_str()), "{name} passed over");
        }
        for name in [
            "host",
            "accept",
            "user-agent",
            "content-type",
            "cookie",
            "authorization",
        ] {
            assert!(!may_be_context_header(name), "{name} kept");
        }
        // Passed over, the ordinary headers around them change nothing.
        let mut request = HeaderMap::new();
        for (name, value) in [
            ("host", "api.example.com"),
            ("x-request-id", "order-42"),
            ("accept", "application/json"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("user-agent", "curl/8"),
            ("x-org-id", "acme"),
        ] {
            request.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let extracted = extract(&request, &ExtractOptions::default());
        assert_eq!(extracted.context.request_id.as_str(), "order-42");
        assert_eq!(
            extracted.context.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(extracted.context.tenant.get("org_id"), Some("acme"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn run(pairs: &[(&str, &str)]) -> Extracted {
        extract(&headers(pairs), &ExtractOptions::default())
    }

    /// A header map that hides its entries, so `extract` looks every header up.
    struct LookupsOnly(HeaderMap);

    impl Extractor for LookupsOnly {
        fn for_each(&self, key: &HeaderName, f: &mut dyn FnMut(&[u8])) {
            self.0.for_each(key, f);
        }

        fn first(&self, key: &HeaderName) -> Option<CarrierValue<'_>> {
            self.0.first(key)
        }
    }

    /// The one pass over the entries and the lookups read the same context (the pass matches
    /// names as text, so a typo there would make a header look absent).
    #[test]
    fn the_entry_pass_reads_what_the_lookups_read() {
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("x-request-id", "r-1"),
                ("traceparent", TP),
                ("accept", "*/*"),
            ],
            &[("x-correlation-id", "c-1"), ("tracestate", "a=1")],
            &[("x-request-id", "bad id"), ("x-correlation-id", "c-2")],
            &[
                ("traceparent", TP),
                ("tracestate", "foo=1"),
                ("tracestate", "bar=2"),
            ],
            &[
                ("traceparent", TP),
                ("traceparent", TP),
                ("tracestate", "foo=1"),
            ],
            &[("traceparent", "00-bogus"), ("tracestate", "foo=1")],
            &[
                ("baggage", "k=v,bad"),
                ("baggage", "k2=v2"),
                ("x-org-id", "o-1"),
            ],
            &[
                ("x-project-id", "bad value"),
                ("x-org-id", "o-2"),
                ("x-org-id", "o-3"),
            ],
        ];
        let options = ExtractOptions::default();
        for pairs in cases {
            let map = headers(pairs);
            let one_pass = extract(&map, &options);
            let lookups = extract(&LookupsOnly(map), &options);
            assert_eq!(one_pass.request_id, lookups.request_id, "{pairs:?}");
            assert_eq!(one_pass.trace, lookups.trace, "{pairs:?}");
            assert_eq!(one_pass.incoming, lookups.incoming, "{pairs:?}");
            assert_eq!(
                one_pass.rejected_tenant, lookups.rejected_tenant,
                "{pairs:?}"
            );
            let (a, b) = (&one_pass.context, &lookups.context);
            if !matches!(
                one_pass.request_id,
                RequestIdOrigin::Generated | RequestIdOrigin::Replaced(_)
            ) {
                assert_eq!(a.request_id, b.request_id, "{pairs:?}");
            }
            if one_pass.trace == TraceOrigin::Continued {
                assert_eq!(a.trace_id, b.trace_id, "{pairs:?}");
            }
            assert_eq!(a.trace_state, b.trace_state, "{pairs:?}");
            assert_eq!(a.baggage, b.baggage, "{pairs:?}");
            assert_eq!(a.tenant, b.tenant, "{pairs:?}");
        }
        let e = run(cases[3]);
        assert_eq!(e.context.trace_state.as_str(), "foo=1,bar=2");
        assert_eq!(run(cases[6]).context.tenant.get("org_id"), Some("o-1"));
    }

    /// The pass reads tenant headers only among the names that are no other context header:
    /// no tenant key can name one (`x-request-id`, `x-correlation-id`), and tenant headers
    /// among the context headers, in any order, are read as the lookups read them.
    #[test]
    fn tenant_headers_are_never_context_headers() {
        for name in [headers::TRACEPARENT, headers::TRACESTATE, headers::BAGGAGE] {
            assert!(!name.as_str().starts_with("x-"), "{name}");
        }
        for field in ["request_id", "correlation_id"] {
            assert!(TenantKey::new(field).is_err(), "{field}");
        }
        let team = TenantKey::new("team_id").unwrap();
        let options = ExtractOptions {
            tenant_keys: vec![TenantKey::ORG_ID, team, TenantKey::PROJECT_ID],
            ..ExtractOptions::default()
        };
        let pairs = [
            ("x-request-id", "r-1"),
            ("x-team-id", "t-1"),
            ("traceparent", TP),
            ("x-correlation-id", "c-1"),
            ("x-project-id", "p-1"),
            ("baggage", "k=v"),
        ];
        for rotation in 0..pairs.len() {
            let mut rotated = pairs;
            rotated.rotate_left(rotation);
            let map = headers(&rotated);
            let (one_pass, lookups) = (
                extract(&map, &options),
                extract(&LookupsOnly(map.clone()), &options),
            );
            assert_eq!(
                one_pass.context.tenant, lookups.context.tenant,
                "{rotated:?}"
            );
            assert_eq!(one_pass.context.tenant.get("team_id"), Some("t-1"));
            assert_eq!(one_pass.context.tenant.project_id(), Some("p-1"));
            assert_eq!(one_pass.context.tenant.org_id(), None);
            assert_eq!(one_pass.context.request_id.as_str(), "r-1");
        }
    }

    /// Past the pass's limit of names, and for tenant keys past the last bit, lookups decide.
    #[test]
    fn many_headers_and_many_tenant_keys_are_still_read() {
        let mut pairs: Vec<(String, String)> = (0..40)
            .map(|i| (format!("x-filler-{i}"), "v".to_string()))
            .collect();
        pairs.push(("traceparent".into(), TP.into()));
        pairs.push(("x-request-id".into(), "kept-1".into()));
        pairs.push(("x-key-69".into(), "t69".into()));
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        let options = ExtractOptions {
            tenant_keys: (0..70)
                .map(|i| TenantKey::new(&format!("key_{i}")).unwrap())
                .collect(),
            ..ExtractOptions::default()
        };
        for map in [headers(&borrowed), headers(&borrowed[38..])] {
            let e = extract(&map, &options);
            assert_eq!(e.trace, TraceOrigin::Continued);
            assert_eq!(e.context.request_id.as_str(), "kept-1");
            assert_eq!(e.context.tenant.get("key_69"), Some("t69"));
        }
    }

    #[test]
    fn continues_a_valid_trace() {
        let e = run(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "bar=2"),
        ]);
        assert_eq!(e.trace, TraceOrigin::Continued);
        assert_eq!(
            e.context.trace_id.to_string(),
            "12345678901234567890123456789012"
        );
        assert_eq!(
            e.context.parent_span_id.unwrap().to_string(),
            "1234567890123456"
        );
        assert_ne!(e.context.span_id.to_string(), "1234567890123456");
        assert_eq!(e.context.trace_state.as_str(), "foo=1,bar=2");
        assert!(e.context.is_sampled());
    }

    #[test]
    fn invalid_or_duplicated_traceparent_restarts_and_drops_tracestate() {
        let e = run(&[("traceparent", "00-zz"), ("tracestate", "foo=1")]);
        assert!(matches!(
            e.trace,
            TraceOrigin::Restarted(TraceParentError::TooShort(5))
        ));
        assert!(e.context.trace_state.is_empty());
        assert!(e.context.parent_span_id.is_none());
        let e = run(&[("traceparent", TP), ("traceparent", TP)]);
        assert_eq!(
            e.trace,
            TraceOrigin::Restarted(TraceParentError::Duplicated)
        );
        assert_ne!(
            e.context.trace_id.to_string(),
            "12345678901234567890123456789012"
        );
    }

    #[test]
    fn invalid_tracestate_is_dropped_alone() {
        let e = run(&[("traceparent", TP), ("tracestate", "foo=1,BAD=2")]);
        assert_eq!(e.trace, TraceOrigin::Continued);
        assert!(e.context.trace_state.is_empty());
    }

    #[test]
    fn request_id_kept_generated_or_replaced() {
        assert_eq!(
            run(&[("x-request-id", "abc")]).request_id,
            RequestIdOrigin::Kept
        );
        let e = run(&[("x-correlation-id", "corr-1")]);
        assert_eq!(
            (e.request_id, e.context.request_id.as_str()),
            (RequestIdOrigin::Kept, "corr-1")
        );
        let e = run(&[("x-request-id", "abc"), ("x-correlation-id", "corr-1")]);
        assert_eq!(e.context.request_id.as_str(), "abc");
        assert_eq!(run(&[]).request_id, RequestIdOrigin::Generated);
        let e = run(&[("x-request-id", "has space")]);
        assert!(matches!(
            e.request_id,
            RequestIdOrigin::Replaced(InvalidId::InvalidByte { .. })
        ));
        assert!(e.context.request_id.as_str().starts_with("req_"));
        // Only a kept `x-request-id` is already where a server's inner code reads it.
        for (pairs, from_header) in [
            (&[("x-request-id", "abc")][..], true),
            (
                &[("x-request-id", "abc"), ("x-correlation-id", "c")][..],
                true,
            ),
            (
                &[("x-request-id", "abc"), ("x-request-id", "bad id")][..],
                false,
            ),
            (&[("x-correlation-id", "corr-1")][..], false),
            (
                &[("x-request-id", "bad id"), ("x-correlation-id", "c")][..],
                false,
            ),
            (&[("x-request-id", "bad id")][..], false),
            (&[][..], false),
        ] {
            assert_eq!(run(pairs).request_id_from_header, from_header, "{pairs:?}");
        }
    }

    /// An invalid `x-request-id` beside a valid `x-correlation-id`: the caller's correlation
    /// id is kept (with the request id's fault), in either header order; with both invalid the
    /// request id's fault is the one reported.
    #[test]
    fn a_valid_correlation_id_stands_in_for_an_invalid_request_id() {
        for pairs in [
            [
                ("x-request-id", "has space"),
                ("x-correlation-id", "corr-7"),
            ],
            [
                ("x-correlation-id", "corr-7"),
                ("x-request-id", "has space"),
            ],
        ] {
            for e in [
                run(&pairs),
                extract(&LookupsOnly(headers(&pairs)), &ExtractOptions::default()),
            ] {
                assert_eq!(e.context.request_id.as_str(), "corr-7", "{pairs:?}");
                assert!(
                    matches!(
                        e.request_id,
                        RequestIdOrigin::KeptCorrelationId(InvalidId::InvalidByte {
                            position: 3,
                            ..
                        })
                    ),
                    "{pairs:?}: {:?}",
                    e.request_id
                );
            }
        }
        let e = run(&[("x-request-id", ""), ("x-correlation-id", "bad id")]);
        assert_eq!(e.request_id, RequestIdOrigin::Replaced(InvalidId::Empty));
        let e = run(&[("x-correlation-id", "bad id")]);
        assert!(matches!(e.request_id, RequestIdOrigin::Replaced(_)));
        assert!(e.context.request_id.as_str().starts_with("req_"));
    }

    #[test]
    fn tenant_fields_are_validated() {
        let e = run(&[("x-org-id", "org_1"), ("x-project-id", "bad value")]);
        assert_eq!(e.context.tenant.org_id(), Some("org_1"));
        assert_eq!(e.context.tenant.project_id(), None);
        assert_eq!(e.rejected_tenant.len(), 1);
        assert_eq!(e.rejected_tenant[0].0, TenantKey::PROJECT_ID);
    }

    #[test]
    fn unsampled_new_traces_on_request() {
        let options = ExtractOptions {
            sample_new_traces: false,
            ..Default::default()
        };
        assert!(!extract(&HeaderMap::new(), &options).context.is_sampled());
    }

    #[test]
    fn inject_then_extract_round_trips_through_every_carrier() {
        let mut ctx = extract(
            &headers(&[
                ("traceparent", TP),
                ("tracestate", "foo=1"),
                ("baggage", "user=alice"),
                ("x-request-id", "abc"),
                ("x-org-id", "org_1"),
            ]),
            &ExtractOptions::default(),
        )
        .context;
        ctx.tenant.insert(TenantKey::PROJECT_ID, "prj_2").unwrap();

        let mut map = HashMap::new();
        inject(&ctx, &mut map);
        let mut header_map = HeaderMap::new();
        inject(&ctx, &mut header_map);
        let carrier = Carrier::from_context(&ctx);

        for extracted in [
            extract(&map, &ExtractOptions::default()),
            extract(&header_map, &ExtractOptions::default()),
            extract(&carrier, &ExtractOptions::default()),
        ] {
            assert_eq!(extracted.trace, TraceOrigin::Continued);
            let got = extracted.context;
            assert_eq!(got.request_id, ctx.request_id);
            assert_eq!(got.trace_id, ctx.trace_id);
            assert_eq!(got.parent_span_id, Some(ctx.span_id));
            assert_eq!(got.trace_state, ctx.trace_state);
            assert_eq!(got.baggage.get("user"), Some("alice"));
            assert_eq!(got.tenant, ctx.tenant);
        }
    }

    /// Keys are read without regard to case (`Traceparent`, Go's canonical header form), and a
    /// key given twice keeps its first value, as a header does.
    #[cfg(feature = "serde")]
    #[test]
    fn a_carrier_reads_keys_in_any_case_and_the_first_of_twins() {
        let json = format!(
            r#"{{"Traceparent":"{TP}","X-Request-Id":"up-1","x-request-id":"up-2","X-Org-Id":"o-1"}}"#
        );
        let carrier: Carrier = serde_json::from_str(&json).unwrap();
        let extracted = extract(&carrier, &ExtractOptions::default());
        assert_eq!(extracted.trace, TraceOrigin::Continued);
        assert_eq!(extracted.context.request_id.as_str(), "up-1");
        assert_eq!(extracted.context.tenant.get("org_id"), Some("o-1"));
        // Made from a map, the same.
        let map = BTreeMap::from([
            ("Traceparent".to_owned(), TP.to_owned()),
            ("X-Request-Id".to_owned(), "up-3".to_owned()),
        ]);
        let extracted = extract(&Carrier::from(map), &ExtractOptions::default());
        assert_eq!(extracted.trace, TraceOrigin::Continued);
        assert_eq!(extracted.context.request_id.as_str(), "up-3");
        // A value that is not a string is left out, its key kept for a warning; a carrier
        // that is not an object is an error that says what was expected.
        let carrier = serde_json::from_str::<Carrier>(r#"{"traceparent":5}"#).unwrap();
        assert!(carrier.as_map().is_empty());
        assert_eq!(carrier.ignored_keys(), ["traceparent"]);
        // A payload of many such entries keeps a few keys, each cut short.
        let many: String = (0..100)
            .map(|i| format!(r#""{i}{}":1,"#, "k".repeat(100)))
            .collect();
        let carrier = serde_json::from_str::<Carrier>(&format!("{{{many}\"a\":\"b\"}}")).unwrap();
        assert_eq!(carrier.as_map().len(), 1);
        assert_eq!(carrier.ignored_keys().len(), 8);
        assert!(carrier.ignored_keys().iter().all(|key| key.len() == 64));
        let error = serde_json::from_str::<Carrier>(r#""traceparent""#).unwrap_err();
        assert!(error.to_string().contains("map"), "{error}");
    }

    /// A plain string map (message attributes, a job payload's headers written by another SDK)
    /// is read without regard to case too, as a `Carrier` is: Go's header carrier writes
    /// `Traceparent`. The lower-case key wins over another case; of other cases only, the first
    /// in sort order, whatever the map's order.
    #[test]
    fn a_string_map_is_read_in_any_case_of_its_keys() {
        let upper = [
            ("Traceparent", TP),
            ("X-Request-Id", "job-1"),
            ("X-Org-Id", "o-1"),
            ("Tracestate", "vendor=1"),
        ];
        let hash: HashMap<String, String> = upper
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let btree: BTreeMap<String, String> = hash.clone().into_iter().collect();
        for extracted in [
            extract(&hash, &ExtractOptions::default()),
            extract(&btree, &ExtractOptions::default()),
        ] {
            assert_eq!(extracted.trace, TraceOrigin::Continued);
            assert_eq!(extracted.context.request_id.as_str(), "job-1");
            assert_eq!(extracted.context.tenant.get("org_id"), Some("o-1"));
            assert_eq!(extracted.context.trace_state.to_string(), "vendor=1");
        }
        for pairs in [
            [
                ("X-REQUEST-ID", "b"),
                ("x-request-id", "a"),
                ("X-Request-Id", "c"),
            ],
            [
                ("X-Request-Id", "c"),
                ("X-REQUEST-ID", "b"),
                ("x-request-id", "a"),
            ],
        ] {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let extracted = extract(&map, &ExtractOptions::default());
            assert_eq!(extracted.context.request_id.as_str(), "a");
            let mut others = map.clone();
            others.remove("x-request-id");
            let extracted = extract(&others, &ExtractOptions::default());
            assert_eq!(extracted.context.request_id.as_str(), "b");
            // A carrier made from the same map reads it as `extract` does.
            for map in [map, others] {
                let btree: BTreeMap<String, String> = map.clone().into_iter().collect();
                assert_eq!(
                    Carrier::from(btree).to_context().request_id,
                    extract(&map, &ExtractOptions::default()).context.request_id,
                    "{map:?}"
                );
            }
        }
    }

    /// As documented: `to_context` reads the default tenant fields; the service's options read
    /// the ones it declares, from the same carrier after a trip through JSON.
    #[cfg(feature = "serde")]
    #[test]
    fn a_carrier_keeps_declared_tenant_fields_for_the_services_options() {
        let team = TenantKey::new("team_id").unwrap();
        let mut ctx = RequestContext::new_root();
        ctx.tenant.insert(TenantKey::ORG_ID, "org_1").unwrap();
        ctx.tenant.insert(team.clone(), "team:7").unwrap();
        let json = serde_json::to_string(&Carrier::from_context(&ctx)).unwrap();
        let carrier: Carrier = serde_json::from_str(&json).unwrap();

        let job = carrier.to_context();
        assert_eq!(job.tenant.org_id(), Some("org_1"));
        assert_eq!(job.tenant.get("team_id"), None);

        let options = ExtractOptions {
            tenant_keys: vec![TenantKey::ORG_ID, TenantKey::PROJECT_ID, team],
            ..ExtractOptions::default()
        };
        let job = extract(&carrier, &options).context;
        assert_eq!(job.tenant, ctx.tenant);
        assert_eq!(job.parent_span_id, Some(ctx.span_id));
    }

    /// A carrier sent on through JSON, hop after hop, at the limits of every part (32
    /// tracestate members, 64 baggage members whose values are re-encoded longer than they
    /// came, 128-character ids): nothing changes or grows from one hop to the next, and each
    /// hop names the previous one as its parent.
    #[cfg(feature = "serde")]
    #[test]
    fn a_carrier_sent_on_through_json_settles_and_never_grows() {
        let state: Vec<String> = (0..32).map(|i| format!("k{i}=v{i}")).collect();
        let baggage: Vec<String> = (0..64).map(|i| format!("b{i}=%FF%zz=a")).collect();
        let id = "i".repeat(128);
        for flags in ["00", "01"] {
            let traceparent =
                format!("00-12345678901234567890123456789012-1234567890123456-{flags}");
            let mut ctx = run(&[
                ("traceparent", &traceparent),
                ("tracestate", &state.join(",")),
                ("baggage", &baggage.join(",")),
                ("x-request-id", &id),
                ("x-org-id", &id),
            ])
            .context;
            assert_eq!((ctx.trace_state.len(), ctx.baggage.len()), (32, 64));
            let first = ctx.clone();
            for hop in 0..4 {
                let json = serde_json::to_string(&Carrier::from_context(&ctx)).unwrap();
                let next = serde_json::from_str::<Carrier>(&json).unwrap().to_context();
                assert_eq!(next.parent_span_id, Some(ctx.span_id), "hop {hop}");
                assert_ne!(next.span_id, ctx.span_id, "hop {hop}");
                assert_eq!(next.trace_id, first.trace_id);
                assert_eq!(next.trace_flags, first.trace_flags, "{flags}");
                assert_eq!(next.request_id, first.request_id);
                assert_eq!(next.trace_state, first.trace_state);
                assert_eq!(next.baggage, first.baggage, "hop {hop}");
                assert_eq!(next.tenant, first.tenant);
                ctx = next;
            }
        }
    }

    /// A string map that already holds context keys in another case (a message from another
    /// SDK, re-enqueued): `inject` leaves only its own, so a reader that ignores case (a
    /// `Carrier` read from the map, which keeps the first of twins) sees the injected context.
    #[cfg(feature = "serde")]
    #[test]
    fn inject_replaces_context_keys_of_any_case_in_a_string_map() {
        let stale = [
            ("Traceparent", TP),
            ("TRACEPARENT", TP),
            ("Tracestate", "stale=1"),
            ("Baggage", "role=admin"),
            ("X-Request-Id", "theirs"),
            ("X-Org-Id", "victim_org"),
            ("Content-Type", "application/json"),
        ];
        let fresh = RequestContext::new_root();
        let mut btree: BTreeMap<String, String> = stale
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        inject(&fresh, &mut btree);
        let mut map: HashMap<String, String> = stale
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        inject(&fresh, &mut map);
        for json in [
            serde_json::to_string(&btree).unwrap(),
            serde_json::to_string(&map).unwrap(),
        ] {
            let got = serde_json::from_str::<Carrier>(&json).unwrap().to_context();
            assert_eq!(got.trace_id, fresh.trace_id, "{json}");
            assert_eq!(got.request_id, fresh.request_id, "{json}");
            assert!(got.trace_state.is_empty(), "{json}");
            assert!(got.baggage.is_empty(), "{json}");
            assert!(got.tenant.is_empty(), "{json}");
        }
        let keys: Vec<&str> = btree.keys().map(String::as_str).collect();
        assert_eq!(keys, ["Content-Type", "traceparent", "x-request-id"]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn inject_replaces_a_forwarded_requests_context_headers() {
        let stale = [
            ("traceparent", TP),
            ("tracestate", "attacker=1"),
            ("baggage", "role=admin"),
            ("x-request-id", "theirs"),
            ("x-org-id", "victim_org"),
            ("x-project-id", "victim_prj"),
            ("x-team-id", "custom"),
        ];
        let fresh = RequestContext::new_root();
        let mut header_map = headers(&stale);
        inject(&fresh, &mut header_map);
        let mut map: HashMap<String, String> = stale
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        inject(&fresh, &mut map);
        let mut btree: BTreeMap<String, String> = map.clone().into_iter().collect();
        inject(&fresh, &mut btree);
        let carrier = Carrier::from_context(&fresh);

        for extracted in [
            extract(&header_map, &ExtractOptions::default()),
            extract(&map, &ExtractOptions::default()),
            extract(&btree, &ExtractOptions::default()),
            extract(&carrier, &ExtractOptions::default()),
        ] {
            let got = extracted.context;
            assert_eq!(got.trace_id, fresh.trace_id);
            assert_eq!(got.request_id, fresh.request_id);
            assert!(got.trace_state.is_empty(), "{:?}", got.trace_state);
            assert!(got.baggage.is_empty());
            assert!(got.tenant.is_empty(), "{:?}", got.tenant);
        }
        for gone in ["tracestate", "baggage", "x-org-id", "x-project-id"] {
            assert!(!header_map.contains_key(gone), "{gone}");
            assert!(!map.contains_key(gone), "{gone}");
        }
        // Only the tenant keys named are the context's; others are the caller's business.
        assert_eq!(header_map["x-team-id"], "custom");
        let team = TenantKey::new("team_id").unwrap();
        remove_absent_tenants(&fresh, &mut header_map, &[team]);
        assert!(!header_map.contains_key("x-team-id"));
    }
}

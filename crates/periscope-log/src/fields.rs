//! Turning `tracing` field values into JSON: one value writer shared by events and spans.

use std::borrow::Cow;
use std::cell::Cell;
use std::error::Error;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tracing::field::{DebugValue, Field, Visit};

use crate::json::{self, CappedString, EscapeWriter};
use crate::layer::key_bit;
use crate::redact::{REDACTED, Redactor, looks_like_json, looks_structured};

/// Longest text that is checked as JSON for sensitive keys; longer text stays a string.
const JSON_CHECK_LIMIT: usize = 64 * 1024;
/// Most causes listed in an error's `chain`.
const MAX_CHAIN: usize = 32;
/// Written instead of a value whose `Debug`, `Display` or `Serialize` panicked.
pub(crate) const PANICKED: &str = "[panicked while formatting]";

/// Runs `write`, which formats a value with the caller's code (`Debug`, `Display`, an error's
/// chain, `Serialize`) into `out`: a panic there is caught, whatever it wrote is taken back and
/// [`PANICKED`] written instead (as a JSON string, or its inside when `quoted` by the caller),
/// so it neither unwinds into the code that logged nor loses or cuts the line.
pub(crate) fn formatting(out: &mut Vec<u8>, quoted: bool, write: impl FnOnce(&mut Vec<u8>)) {
    let mark = out.len();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(&mut *out)));
    if caught.is_err() {
        out.truncate(mark);
        if quoted {
            json::write_escaped(out, PANICKED);
        } else {
            json::write_str(out, PANICKED, usize::MAX);
        }
    }
}

/// The context fields lifted to the top level by default.
pub const DEFAULT_CONTEXT_FIELDS: &[&str] = &[
    "request_id",
    "trace_id",
    "span_id",
    "user_id",
    "team_id",
    "org_id",
    "project_id",
    "job_id",
    "job_name",
];

/// At most this many context fields (they are tracked in a 64-bit mask).
pub(crate) const MAX_CONTEXT_FIELDS: usize = 64;

thread_local! {
    /// Bumped by [`Json`]'s formatting: tells the value writer the text it just got is JSON
    /// meant to be embedded as an object, not a string.
    static JSON_VALUES: Cell<u64> = const { Cell::new(0) };
}

/// Logs a `serde::Serialize` value as a nested JSON object under `data`, redacted by key at
/// any depth. Use it through [`json()`], or as `?Json(value)` / `%Json(value)`.
///
/// ```
/// # use serde::Serialize;
/// #[derive(Serialize)]
/// struct Login<'a> { user: &'a str, password: &'a str }
///
/// let login = Login { user: "ann", password: "hunter2" };
/// tracing::info!(login = periscope_log::json(&login), "signed in");
/// // data: {"login": {"user": "ann", "password": "[REDACTED]"}}
/// ```
pub struct Json<T>(pub T);

/// Wraps `value` so the log line holds it as a nested JSON object: see [`Json`].
pub fn json<T: Serialize>(value: T) -> DebugValue<Json<T>> {
    tracing::field::debug(Json(value))
}

impl<T: Serialize> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(text) => {
                JSON_VALUES.with(|count| count.set(count.get().wrapping_add(1)));
                f.write_str(&text)
            }
            Err(error) => write!(f, "<not serializable: {error}>"),
        }
    }
}

impl<T: Serialize> fmt::Display for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How values are written: redaction, the size bound, the context field names. Never changed
/// once made: the per-thread cache of field plans relies on it.
#[derive(Clone, Debug)]
pub(crate) struct ValueRules {
    pub(crate) redactor: Redactor,
    /// Strings longer than this many bytes are truncated.
    pub(crate) max_value_bytes: usize,
    /// Names of the fields lifted to the top level.
    pub(crate) context_fields: Vec<Box<str>>,
    /// Names these rules in [`FIELD_PLANS`]; never 0.
    id: u64,
}

/// Entries in [`FIELD_PLANS`] (a power of two); it is emptied when three quarters are used.
const FIELD_PLAN_SLOTS: usize = 256;

/// What the line does with a `tracing` field, by name and set of rules: see
/// [`ValueRules::plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FieldPlan {
    pub(crate) slot: Slot,
    /// The value is redacted.
    pub(crate) sensitive: bool,
    /// A boolean value is kept all the same: the name is sensitive by its last word alone
    /// (`require_auth`), as a boolean inside JSON is kept under it.
    pub(crate) keeps_bool: bool,
    pub(crate) name: NameShape,
}

/// What writing a field name as a key needs to know of it, worked out once with its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NameShape {
    /// Written in JSON as it is (nearly every name): the line then copies it rather than
    /// escaping it, some 80 instructions a field.
    pub(crate) plain: bool,
    /// Which bit of a line's mask of written keys stands for it (see [`key_bit`]).
    pub(crate) key_bit: u8,
}

impl NameShape {
    pub(crate) fn of(name: &str) -> Self {
        Self {
            plain: json::is_plain(name),
            key_bit: key_bit(name),
        }
    }
}

/// A cached field plan: (rules id, name address, name length, plan).
type PlanEntry = (u64, usize, usize, FieldPlan);

const NO_PLAN: PlanEntry = (
    0,
    0,
    0,
    FieldPlan {
        slot: Slot::Data,
        sensitive: false,
        keeps_bool: false,
        name: NameShape {
            plain: false,
            key_bit: 0,
        },
    },
);

thread_local! {
    /// Where each `tracing` field name goes and whether it is redacted, per set of rules: an
    /// open-addressing table, so two names never keep evicting each other. Field names are
    /// `&'static str`: never freed, so address and length name the same text for good, and
    /// the same few names come back on every request. Rules id 0: a free entry.
    static FIELD_PLANS: ([Cell<PlanEntry>; FIELD_PLAN_SLOTS], Cell<usize>) =
        const { ([const { Cell::new(NO_PLAN) }; FIELD_PLAN_SLOTS], Cell::new(0)) };
}

/// Where a field goes in the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Message,
    Context(usize),
    Data,
}

impl ValueRules {
    pub(crate) fn new(
        redactor: Redactor,
        max_value_bytes: usize,
        context_fields: Vec<Box<str>>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            redactor,
            max_value_bytes,
            context_fields,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Names these rules in per-thread caches: never shared by two sets of rules made apart.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// [`slot`](Self::slot), whether the value is redacted, and the name's shape as a key,
    /// for a `tracing` field name: read from the per-thread cache, worked out on a miss.
    fn plan(&self, name: &'static str) -> FieldPlan {
        let key = (self.id, name.as_ptr() as usize, name.len());
        // Fibonacci hashing of address and rules: the top bits pick the first entry to look at.
        let hash = (key.1 as u64 ^ key.0.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let first = (hash >> (64 - FIELD_PLAN_SLOTS.trailing_zeros())) as usize;
        // The usual case, the name found at its first entry, in a closure small enough to be
        // inlined with the thread-local access (about 20 instructions saved per field, some
        // 16 fields a request); the rest of the probe, and a miss, out of line.
        let hit = FIELD_PLANS.with(|(plans, _)| {
            let (id, ptr, len, plan) = plans[first].get();
            ((id, ptr, len) == key).then_some(plan)
        });
        hit.unwrap_or_else(|| self.plan_probe(key, first, name))
    }

    /// [`plan`](Self::plan) past the first entry: probes on, and works the plan out on a miss.
    #[inline(never)]
    fn plan_probe(&self, key: (u64, usize, usize), first: usize, name: &str) -> FieldPlan {
        FIELD_PLANS.with(|(plans, used)| {
            let mut index = first;
            loop {
                let (id, ptr, len, plan) = plans[index].get();
                if (id, ptr, len) == key {
                    return plan;
                }
                if id == 0 {
                    break;
                }
                index = (index + 1) % FIELD_PLAN_SLOTS;
            }
            let plan = FieldPlan {
                slot: self.slot(name),
                sensitive: self.redactor.hides_field(name),
                keeps_bool: self.redactor.hides_by_word_alone(name),
                name: NameShape::of(name),
            };
            if used.get() >= FIELD_PLAN_SLOTS / 4 * 3 {
                plans.iter().for_each(|entry| entry.set(NO_PLAN));
                used.set(0);
                index = first;
            }
            plans[index].set((key.0, key.1, key.2, plan));
            used.set(used.get() + 1);
            plan
        })
    }

    pub(crate) fn slot(&self, name: &str) -> Slot {
        if name == "message" {
            return Slot::Message;
        }
        match self.context_fields.iter().position(|c| **c == *name) {
            Some(index) => Slot::Context(index),
            None => Slot::Data,
        }
    }

    /// A text value: a string, or JSON text kept as a string with its secrets redacted.
    pub(crate) fn write_text(&self, out: &mut Vec<u8>, text: &str, scratch: &mut Vec<u8>) {
        if !looks_like_json(text) {
            json::write_str(out, text, self.max_value_bytes);
            return;
        }
        // As for a `Debug` value: a raised size bound raises the size redacted key by key.
        if text.len() <= JSON_CHECK_LIMIT.max(self.max_value_bytes) {
            scratch.clear();
            if self
                .redactor
                .rewrite_json(text, self.max_value_bytes, scratch, false)
            {
                // Rewritten JSON is ASCII-safe UTF-8: we only ever wrote &str pieces into it.
                let rewritten = String::from_utf8_lossy(scratch);
                json::write_str_of(out, &rewritten, self.max_value_bytes, text.len());
                return;
            }
        }
        self.write_unparsed(out, text, scratch);
    }

    /// A [`TENANT_FIELD`] value (`key=value,...`) with the value of each member whose key is
    /// sensitive masked, as [`Visitor::lift_tenant_fields`] masks it at the top level: a tenant
    /// field the service configured as sensitive must not show in `data.tenant` either.
    fn masked_tenant<'v>(&self, value: &'v str) -> Cow<'v, str> {
        let sensitive = |pair: &str| {
            pair.split_once('=')
                .is_some_and(|(key, _)| self.redactor.is_sensitive(key))
        };
        // JSON text is not a list of members; `write_text` redacts it by its keys.
        if looks_like_json(value) || !value.split(',').any(sensitive) {
            return Cow::Borrowed(value);
        }
        let masked: Vec<Cow<'_, str>> = value
            .split(',')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if sensitive(pair) => Cow::Owned(format!("{key}={REDACTED}")),
                _ => Cow::Borrowed(pair),
            })
            .collect();
        Cow::Owned(masked.join(","))
    }

    /// Structured text that could not be redacted key by key (too big, or not quite JSON, as a
    /// `Debug` map with a non-JSON escape): hidden whole when it mentions a sensitive key, so
    /// redaction fails closed. Free text that only opens with a bracket (`[db] session 42
    /// closed`) is hidden only where it names a secret as a key.
    fn write_unparsed(&self, out: &mut Vec<u8>, text: &str, scratch: &mut Vec<u8>) {
        let shown = if (looks_structured(text)
            && self.redactor.mentions_sensitive_key(text, scratch))
            || self.redactor.names_sensitive_key(text)
        {
            REDACTED
        } else {
            text
        };
        json::write_str(out, shown, self.max_value_bytes);
    }

    /// A context field's `Debug` (or `Display`) value, an id: written as a string as it is,
    /// bounded, without the free-text checks of [`write_debug`](Self::write_debug).
    fn write_id(&self, out: &mut Vec<u8>, value: &dyn fmt::Debug, text: &mut String) {
        let mut capped = CappedString::new(text, self.max_value_bytes);
        let _ = write!(capped, "{value:?}");
        if capped.truncated() {
            // Cut while formatted: the marker says how long it was, as for any other value.
            out.push(b'"');
            json::write_escaped(out, capped.text);
            json::write_truncation(out, capped.len);
            out.push(b'"');
        } else {
            json::write_str(out, capped.text, usize::MAX);
        }
    }

    /// A `Debug` value: formatted once, then written as a string, or nested when it came from
    /// [`Json`].
    fn write_debug(
        &self,
        out: &mut Vec<u8>,
        value: &dyn fmt::Debug,
        text: &mut String,
        scratch: &mut Vec<u8>,
    ) {
        let before = JSON_VALUES.with(Cell::get);
        let mut capped = CappedString::new(text, JSON_CHECK_LIMIT.max(self.max_value_bytes));
        let _ = write!(capped, "{value:?}");
        let is_json = JSON_VALUES.with(Cell::get) != before;
        if !is_json
            && capped.len <= self.max_value_bytes
            && json::is_plain_word(capped.text.as_bytes())
        {
            // An id, a number or an enum variant (the span's `trace_id` recorded as a
            // `Display` value): no JSON, quote, escape or key in it, so written as it is.
            out.push(b'"');
            out.extend_from_slice(capped.text.as_bytes());
            out.push(b'"');
        } else if capped.truncated() {
            let len = capped.len;
            // A `json` object or array keeps its type, its text inside: a field that is an
            // object on one line and a string on the next gets lines rejected by indexers.
            let (open, close): (&[u8], &[u8]) = match text.as_bytes().first() {
                Some(b'{') if is_json => (b"{\"_truncated\":", b"}"),
                Some(b'[') if is_json => (b"[", b"]"),
                _ => (b"", b""),
            };
            out.extend_from_slice(open);
            // Too big to redact key by key: structured text that mentions a secret is hidden.
            if ((is_json || looks_structured(text) || json_literal(text).is_some())
                && self.redactor.mentions_sensitive_key(text, scratch))
                || self.redactor.names_sensitive_key(text)
            {
                json::write_str(out, REDACTED, usize::MAX);
            } else {
                out.push(b'"');
                json::write_escaped(
                    out,
                    periscope_context::text::prefix(text, self.max_value_bytes),
                );
                json::write_truncation(out, len);
                out.push(b'"');
            }
            out.extend_from_slice(close);
        } else if is_json {
            // Nested JSON; text around it (`Some({...})`) is not JSON and is written as text.
            if !self
                .redactor
                .rewrite_json(text, self.max_value_bytes, out, true)
            {
                self.write_unparsed(out, text, scratch);
            }
        } else if let Some((content, bytes)) = json_literal(text) {
            // `?body` on a `String` or `Bytes` holding JSON: the Debug text is a quoted literal,
            // so the JSON inside is found only once the literal is decoded.
            match decode_literal(content, bytes) {
                Some(inner) => self.write_text(out, &inner, scratch),
                None => self.write_unparsed(out, text, scratch),
            }
        } else if !looks_like_json(text) && self.redactor.names_sensitive_key(text) {
            // Not JSON, so not redactable key by key: a struct or map naming a secret is
            // hidden whole.
            json::write_str(out, REDACTED, usize::MAX);
        } else {
            self.write_text(out, text, scratch);
        }
    }

    fn write_error(&self, out: &mut Vec<u8>, error: &(dyn Error + 'static)) {
        out.extend_from_slice(b"{\"message\":\"");
        let start = out.len();
        self.write_display(out, error);
        // The text last written: a wrapper that shows its source's message as its own (axum's
        // `Error`, `#[error(transparent)]`) would repeat it, so a cause that says the same is
        // left out.
        let mut previous = start..out.len();
        out.extend_from_slice(b"\",\"chain\":[");
        let mut written = 0;
        // Bounded in steps as well as in entries: a chain of repeats never ends otherwise.
        let causes = std::iter::successors(error.source(), |&cause| cause.source());
        for cause in causes.take(4 * MAX_CHAIN) {
            if written == MAX_CHAIN {
                break;
            }
            let mark = out.len();
            if written > 0 {
                out.push(b',');
            }
            out.push(b'"');
            let text = out.len();
            self.write_display(out, cause);
            if out[text..] == out[previous.clone()] {
                out.truncate(mark);
                continue;
            }
            previous = text..out.len();
            out.push(b'"');
            written += 1;
        }
        out.extend_from_slice(b"]}");
    }

    /// Streams `value`'s `Display` output escaped (inside quotes the caller writes).
    pub(crate) fn write_display(&self, out: &mut Vec<u8>, value: &dyn fmt::Display) {
        let mut writer = EscapeWriter::new(out, self.max_value_bytes);
        let _ = write!(writer, "{value}");
        writer.finish();
    }
}

/// A `Debug` string or byte-string literal (`"..."`, `b"..."`) whose content starts like JSON
/// (after escaped whitespace or a byte order mark): the content after the opening quote, and
/// whether it is a byte string.
fn json_literal(text: &str) -> Option<(&str, bool)> {
    let (content, bytes) = match text.strip_prefix("b\"") {
        Some(content) => (content, true),
        None => (text.strip_prefix('"')?, false),
    };
    let mut rest = content;
    loop {
        let skipped = [
            " ",
            "\\n",
            "\\r",
            "\\t",
            "\\u{feff}",
            "\u{feff}",
            "\\xef\\xbb\\xbf",
        ]
        .iter()
        .find_map(|prefix| rest.strip_prefix(prefix));
        match skipped {
            Some(after) => rest = after,
            None => break,
        }
    }
    matches!(rest.as_bytes().first(), Some(b'{' | b'[')).then_some((content, bytes))
}

/// The text of a `Debug` literal's `content` (after its opening quote, up to and including its
/// closing one), Rust's escapes decoded: `None` when it is not exactly one well-formed literal.
fn decode_literal(content: &str, bytes: bool) -> Option<String> {
    let mut out = Vec::with_capacity(content.len());
    let mut rest = content.as_bytes();
    loop {
        let at = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        out.extend_from_slice(&rest[..at]);
        if rest[at] == b'"' {
            if at + 1 != rest.len() {
                return None;
            }
            return if bytes {
                Some(String::from_utf8_lossy(&out).into_owned())
            } else {
                String::from_utf8(out).ok()
            };
        }
        let escape = rest.get(at + 1)?;
        rest = &rest[at + 2..];
        match escape {
            b'"' | b'\\' | b'\'' => out.push(*escape),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'x' if bytes => {
                let hex = std::str::from_utf8(rest.get(..2)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[2..];
            }
            b'u' if !bytes => {
                let close = rest.iter().position(|&b| b == b'}')?;
                let hex = std::str::from_utf8(rest.get(1..close)?).ok()?;
                if rest.first() != Some(&b'{') || hex.is_empty() || hex.len() > 6 {
                    return None;
                }
                let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                rest = &rest[close + 1..];
            }
            _ => return None,
        }
    }
}

/// Receives one field's JSON value.
pub(crate) trait FieldSink {
    /// The buffer for the value of field `name` in `slot`, or `None` to skip the field;
    /// `shape`: what its plan knows of `name` as a key.
    fn begin(&mut self, name: &'static str, slot: Slot, shape: NameShape) -> Option<&mut Vec<u8>>;
    /// Receives the event's message.
    fn message(&mut self, rules: &ValueRules, value: &dyn fmt::Debug);
}

/// Adapts a [`FieldSink`] to [`tracing::field::Visit`].
pub(crate) struct Visitor<'a, S> {
    pub(crate) rules: &'a ValueRules,
    pub(crate) sink: &'a mut S,
    pub(crate) text: &'a mut String,
    pub(crate) scratch: &'a mut Vec<u8>,
    /// Whether a [`TENANT_FIELD`] value is periscope's list of the tenant fields it validated,
    /// whose members are lifted: only in periscope-trace's spans ([`is_periscope_span`]) and
    /// on the access line. Anywhere else a field of that name is the service's own text,
    /// which must not set the line's ids.
    pub(crate) lifts_tenant: bool,
}

/// Whether a span is one of periscope-trace's (server, client, job), which record the tenant
/// fields they validated in [`TENANT_FIELD`].
pub(crate) fn is_periscope_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target().starts_with("periscope_trace::")
}

impl<S: FieldSink> Visitor<'_, S> {
    /// The output for `field` unless it is skipped; `None` also when it was redacted, and for
    /// a `message` that is not text (`info!(message = 5)`), which becomes the message as
    /// `as_message` writes it. Inlined: it runs for every field of every event.
    #[inline(always)]
    fn value_out(&mut self, field: &Field, as_message: &dyn fmt::Debug) -> Option<&mut Vec<u8>> {
        value_out(self.rules, self.sink, field, as_message, false)
    }
}

/// [`Visitor::value_out`] borrowing only the rules and the sink, so the visitor's text and
/// scratch buffers stay free to use beside the output (and are not moved out and back for a
/// field that is skipped: most of a span's, when only context fields are kept).
#[inline(always)]
fn value_out<'o, S: FieldSink>(
    rules: &ValueRules,
    sink: &'o mut S,
    field: &Field,
    as_message: &dyn fmt::Debug,
    boolean: bool,
) -> Option<&'o mut Vec<u8>> {
    value_out_in_slot(rules, sink, field, as_message, boolean).map(|(out, _)| out)
}

/// [`value_out`], with the slot the value goes to. Inlined as `value_out` always was: it runs
/// for every field of every line.
#[inline(always)]
fn value_out_in_slot<'o, S: FieldSink>(
    rules: &ValueRules,
    sink: &'o mut S,
    field: &Field,
    as_message: &dyn fmt::Debug,
    boolean: bool,
) -> Option<(&'o mut Vec<u8>, Slot)> {
    let name = field.name();
    let plan = rules.plan(name);
    if plan.slot == Slot::Message {
        sink.message(rules, as_message);
        return None;
    }
    let out = sink.begin(name, plan.slot, plan.name)?;
    if plan.sensitive && !(boolean && plan.keeps_bool) {
        json::write_str(out, REDACTED, usize::MAX);
        return None;
    }
    Some((out, plan.slot))
}

/// The span field in which periscope-trace records the declared tenant fields that have no
/// span field of their own, as `key=value,...` (tracing needs field names at compile time).
pub(crate) const TENANT_FIELD: &str = periscope_context::SPAN_TENANT_OTHERS;

impl<S: FieldSink> Visitor<'_, S> {
    /// Lifts the members of a [`TENANT_FIELD`] value whose keys are context fields
    /// (`workspace_id=ws_1` when the service declared `workspace_id`), so a declared tenant
    /// field reaches the top level of every line as the named ones do.
    #[cold]
    fn lift_tenant_fields(&mut self, value: &str) {
        for (key, member) in value.split(',').filter_map(|pair| pair.split_once('=')) {
            let Slot::Context(slot) = self.rules.slot(key) else {
                continue;
            };
            let sensitive = self.rules.redactor.is_sensitive(key);
            let shape = NameShape::of(TENANT_FIELD);
            if let Some(out) = self.sink.begin(TENANT_FIELD, Slot::Context(slot), shape) {
                let shown = if sensitive { REDACTED } else { member };
                json::write_str(out, shown, self.rules.max_value_bytes);
            }
        }
    }
}

impl<S: FieldSink> Visit for Visitor<'_, S> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if let Some(out) = self.value_out(field, &value) {
            json::write_f64(out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Some(out) = self.value_out(field, &value) {
            json::write_i64(out, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Some(out) = self.value_out(field, &value) {
            json::write_u64(out, value);
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        if let Some(out) = self.value_out(field, &value) {
            let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        if let Some(out) = self.value_out(field, &value) {
            let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if let Some(out) = value_out(self.rules, self.sink, field, &value, true) {
            out.extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.record_str(field, &String::from_utf8_lossy(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.sink.message(self.rules, &format_args!("{value}"));
            return;
        }
        if field.name() == TENANT_FIELD {
            if let Some(out) = value_out(self.rules, self.sink, field, &value, false) {
                match self.rules.masked_tenant(value) {
                    Cow::Owned(masked) => json::write_str(out, &masked, self.rules.max_value_bytes),
                    Cow::Borrowed(_) => self.rules.write_text(out, value, self.scratch),
                }
            }
            if self.lifts_tenant {
                self.lift_tenant_fields(value);
            }
            return;
        }
        if let Some(out) = value_out(self.rules, self.sink, field, &value, false) {
            self.rules.write_text(out, value, self.scratch);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        let rules = self.rules;
        if let Some(out) = self.value_out(field, &format_args!("{value}")) {
            formatting(out, false, |out| rules.write_error(out, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.sink.message(self.rules, value);
            return;
        }
        let Self {
            rules,
            sink,
            text,
            scratch,
            ..
        } = self;
        match value_out_in_slot(rules, *sink, field, value, false) {
            // A context field (`request_id = %ctx.request_id`, the trace ids, tenant values) is
            // a validated id, written as it is: read as free text, `web-auth:8f2c` would look
            // like a struct's `auth` key and hide the id every line is searched by.
            Some((out, Slot::Context(_))) => {
                formatting(out, false, |out| rules.write_id(out, value, text));
            }
            Some((out, _)) => {
                formatting(out, false, |out| {
                    rules.write_debug(out, value, text, scratch)
                });
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(redactor: Redactor, context: &[&str]) -> ValueRules {
        ValueRules::new(redactor, 64, context.iter().map(|&c| c.into()).collect())
    }

    /// A plan's (slot, redacted, plain name), the parts the rules decide.
    fn answer(plan: FieldPlan) -> (Slot, bool, bool) {
        (plan.slot, plan.sensitive, plan.name.plain)
    }

    #[test]
    fn field_plans_answer_for_the_rules_that_ask() {
        let plain = rules(Redactor::default(), &["request_id"]);
        let strict = rules(Redactor::default().with_sensitive_key("ssn"), &["user_ssn"]);
        for _ in 0..2 {
            // The second round reads the per-thread cache.
            assert_eq!(answer(plain.plan("user_ssn")), (Slot::Data, false, true));
            assert_eq!(
                answer(strict.plan("user_ssn")),
                (Slot::Context(0), true, true)
            );
            assert_eq!(
                answer(plain.plan("request_id")),
                (Slot::Context(0), false, true)
            );
            assert_eq!(answer(strict.plan("request_id")), (Slot::Data, false, true));
            assert_eq!(answer(plain.plan("db_password")), (Slot::Data, true, true));
            assert_eq!(answer(plain.plan("message")), (Slot::Message, false, true));
        }
        // Rules made after others were dropped never read their answers.
        drop((plain, strict));
        let fresh = rules(Redactor::new(&["user"], &[]), &[]);
        assert_eq!(answer(fresh.plan("user_ssn")), (Slot::Data, true, true));
        assert_eq!(answer(fresh.plan("db_password")), (Slot::Data, false, true));
        // A name with a byte JSON escapes is escaped, however many times it is planned.
        for _ in 0..2 {
            assert_eq!(answer(fresh.plan("a\"b\n")), (Slot::Data, false, false));
        }
    }

    #[test]
    fn debug_literals_decode_to_their_text_or_not_at_all() {
        let decode = |text: &str| {
            let (content, bytes) = match text.strip_prefix("b\"") {
                Some(content) => (content, true),
                None => (&text[1..], false),
            };
            decode_literal(content, bytes)
        };
        for original in [
            "{\"a\":\"\\ \" ' \n\r\t\0 é 🎉 \u{feff} \u{1b} \u{200b}\"}",
            "",
        ] {
            assert_eq!(decode(&format!("{original:?}")).as_deref(), Some(original));
            let bytes = bytes::Bytes::from(original.to_owned());
            assert_eq!(decode(&format!("{bytes:?}")).as_deref(), Some(original));
        }
        for broken in [
            r#""{\q}""#,
            r#""{\x41}""#,
            r#"b"{\u{41}}""#,
            r#""{\u{110000}}""#,
            r#""{\u{}}""#,
            r#""{\u41}""#,
            r#"b"{\x4""#,
            r#""{}" + "{}""#,
            r#""{"#,
            "\"{\\",
        ] {
            assert_eq!(decode(broken), None, "{broken}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_debug_literal_decodes_back(text in "\\PC*|[\\x00-\\x7f]*") {
            proptest::prop_assert_eq!(decode_literal(&format!("{text:?}")[1..], false), Some(text));
        }
    }

    #[test]
    fn field_plans_stay_right_when_the_table_fills_and_empties() {
        // More names than the table holds: every answer is still the rules' own.
        let names: Vec<&'static str> = (0..FIELD_PLAN_SLOTS * 2)
            .map(|i| &*Box::leak(format!("field_{i}_token").into_boxed_str()))
            .collect();
        let rules = rules(Redactor::new(&["7_token"], &[]), &["field_3_token"]);
        for _ in 0..2 {
            for (i, name) in names.iter().enumerate() {
                let slot = if i == 3 { Slot::Context(0) } else { Slot::Data };
                assert_eq!(
                    answer(rules.plan(name)),
                    (slot, i % 10 == 7, true),
                    "{name}"
                );
                assert_eq!(rules.plan(name).name, NameShape::of(name), "{name}");
            }
        }
    }
}

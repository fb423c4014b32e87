//! The `tracing-subscriber` layer: one line per event, in JSON or the `pretty` format.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use periscope_context::RequestContext;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::subscriber::Interest;
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{Extensions, LookupSpan};

use crate::config::LogFormat;
use crate::fields::{
    FieldSink, NameShape, Slot, ValueRules, Visitor, formatting, is_periscope_span,
};
use crate::filter::LevelControl;
use crate::json::{self, EscapeWriter};
use crate::recent::RecentLogs;
use crate::redact::{REDACTED, Redactor};
use crate::span_plan::{AnyKept, KeptFields, SpanPlan};
use crate::static_text;
use crate::timestamp;
use crate::writer::{DroppedLines, LineSink};

/// Per-thread buffers keep at most this capacity between events.
const KEEP_BUFFER_CAPACITY: usize = 64 * 1024;

/// Top-level keys of a JSON line: in flattened mode, event fields with these names are written
/// as `data.<name>` so they cannot overwrite them.
pub(crate) const RESERVED_KEYS: &[&str] = periscope_context::LOG_LINE_KEYS;

/// The layer that formats events into lines: build it with [`LogLayer::builder`].
///
/// Add it to a `tracing_subscriber::registry()`; keep the [`LogGuard`](crate::LogGuard) the
/// builder returns alive until the program ends. Before adding it, take the handles the admin
/// surface needs: [`level_control`](Self::level_control), [`recent_logs`](Self::recent_logs),
/// [`dropped_lines`](Self::dropped_lines).
pub struct LogLayer {
    /// Tells this layer's span data from another `LogLayer`'s in the same registry.
    pub(crate) id: LayerId,
    pub(crate) rules: ValueRules,
    pub(crate) format: LogFormat,
    /// `,"request_id":` (JSON) or ` request_id=` (pretty), by context slot.
    pub(crate) context_keys: Vec<Vec<u8>>,
    /// The slot of `request_id`: a line that no span in scope gave one takes the ids of the
    /// current [`RequestContext`], if any.
    pub(crate) request_id_slot: Option<usize>,
    /// `,"service":"...","environment":"...","version":"..."` (JSON) or empty (pretty).
    pub(crate) static_fields: Vec<u8>,
    pub(crate) flatten: bool,
    pub(crate) span_fields: bool,
    pub(crate) ansi: bool,
    pub(crate) filter: Option<LevelControl>,
    pub(crate) level_control: LevelControl,
    pub(crate) sink: Arc<dyn LineSink>,
    pub(crate) recent: RecentLogs,
    pub(crate) dropped: DroppedLines,
}

impl fmt::Debug for LogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLayer")
            .field("format", &self.format)
            .field("filter", &self.level_control.current().to_string())
            .finish_non_exhaustive()
    }
}

impl LogLayer {
    /// The handle that changes the filter at runtime.
    pub fn level_control(&self) -> LevelControl {
        self.level_control.clone()
    }

    /// The buffer of recent lines.
    pub fn recent_logs(&self) -> RecentLogs {
        self.recent.clone()
    }

    /// The count of lines lost (full queue, failed output).
    pub fn dropped_lines(&self) -> DroppedLines {
        self.dropped.clone()
    }

    /// The key rules used for redaction (to mask configuration the same way).
    pub fn redactor(&self) -> Redactor {
        self.rules.redactor.clone()
    }

    /// This layer with its directives as its own filter, not the whole subscriber's: what
    /// [`global_filter(false)`](crate::LogLayerBuilder::global_filter) and
    /// `with_filter(level_control())` make, for a layer already built. The other layers (an
    /// OpenTelemetry export taking `info` spans) then see what the log leaves out at `warn`.
    /// A global filter costs less per request (about 1,200 instructions less for a request
    /// through periscope's stack): keep it where no other layer wants more than the log.
    ///
    /// ```
    /// use periscope_log::LogLayer;
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// let (layer, _guard) = LogLayer::builder().directives("warn".parse().unwrap()).build();
    /// let subscriber = tracing_subscriber::registry().with(layer.with_own_filter());
    /// # drop(subscriber);
    /// ```
    pub fn with_own_filter<S>(mut self) -> Filtered<Self, LevelControl, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.filter = None;
        let level = self.level_control.clone();
        tracing_subscriber::Layer::with_filter(self, level)
    }

    fn passes(&self, metadata: &Metadata<'_>) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.with_current(|d| d.enabled(metadata)))
    }
}

/// Names one built [`LogLayer`]: span data is kept per layer, since each layer has its own
/// context slots and rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LayerId(u64);

impl LayerId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a span recorded, formatted once when recorded: kept in the span's extensions.
///
/// The JSON values sit one after another in one buffer (one allocation per span, not one per
/// field); each entry names its field and the range of its value.
#[derive(Debug)]
struct SpanFields {
    /// The layer that wrote it: a second `LogLayer` keeps its own in [`OtherLayersFields`].
    owner: LayerId,
    values: Vec<u8>,
    entries: Vec<(FieldKey, Range<usize>)>,
    /// The entry whose value is being written at the end of `values`.
    open: Option<usize>,
    /// Bytes of `values` no entry points at any more (replaced values).
    garbage: usize,
    /// How many fields the span or record declares: the room taken when the first is kept.
    fields: usize,
    /// Whether non-context fields are kept (for `data`); otherwise they are not even formatted.
    keep_data: bool,
}

/// The span data of every `LogLayer` but the first to see the span (one extension per type:
/// the common single-layer case stays one lookup).
#[derive(Debug, Default)]
struct OtherLayersFields(Vec<SpanFields>);

/// This layer's data among a span's extensions.
fn fields_of<'a>(extensions: &'a Extensions<'_>, owner: LayerId) -> Option<&'a SpanFields> {
    match extensions.get::<SpanFields>() {
        Some(fields) if fields.owner == owner => Some(fields),
        Some(_) => extensions
            .get::<OtherLayersFields>()?
            .0
            .iter()
            .find(|fields| fields.owner == owner),
        None => None,
    }
}

/// Which field a span value belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKey {
    /// A context field, by slot.
    Context(usize),
    /// Any other field, by name (and its shape as a key, for the line).
    Data(&'static str, NameShape),
}

impl SpanFields {
    /// Room for the values of `fields` fields, taken when the first is kept (so recording them
    /// rarely grows the buffers), and not at all when none is: a `record` of fields this layer
    /// does not keep (`http.response.status_code`) allocates nothing.
    fn with_capacity(owner: LayerId, fields: usize, keep_data: bool) -> Self {
        Self {
            owner,
            values: Vec::new(),
            entries: Vec::new(),
            open: None,
            garbage: 0,
            fields,
            keep_data,
        }
    }

    /// Starts the value of `key` at the end of the buffer (a field recorded again keeps its
    /// place), closing the value before it.
    fn start(&mut self, key: FieldKey) -> &mut Vec<u8> {
        self.close();
        if self.entries.capacity() == 0 {
            self.values.reserve(self.fields.max(1) * 24);
            self.entries.reserve(self.fields.max(1));
        }
        let end = self.values.len();
        let index = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(index) => {
                self.garbage += self.entries[index].1.len();
                self.entries[index].1 = end..end;
                index
            }
            None => {
                self.entries.push((key, end..end));
                self.entries.len() - 1
            }
        };
        self.open = Some(index);
        &mut self.values
    }

    /// Ends the value being written.
    fn close(&mut self) {
        if let Some(index) = self.open.take() {
            self.entries[index].1.end = self.values.len();
        }
    }

    fn value(&self, range: &Range<usize>) -> &[u8] {
        &self.values[range.clone()]
    }

    /// Context values: (slot, JSON value).
    fn context(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.entries.iter().filter_map(|(key, range)| match key {
            FieldKey::Context(slot) => Some((*slot, self.value(range))),
            FieldKey::Data(..) => None,
        })
    }

    /// Other values: (field name, its shape, JSON value).
    fn data(&self) -> impl Iterator<Item = (&'static str, NameShape, &[u8])> {
        self.entries.iter().filter_map(|(key, range)| match key {
            FieldKey::Data(name, shape) => Some((*name, *shape, self.value(range))),
            FieldKey::Context(_) => None,
        })
    }

    /// Takes the values `update` recorded, replacing those of the same fields.
    fn merge(&mut self, mut update: SpanFields) {
        update.close();
        for (key, range) in &update.entries {
            self.start(*key)
                .extend_from_slice(&update.values[range.clone()]);
        }
        self.close();
        // A span recording the same fields again and again must not grow without bound.
        if self.garbage > self.values.len() / 2 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut values = Vec::with_capacity(self.values.len() - self.garbage);
        for (_, range) in &mut self.entries {
            let start = values.len();
            values.extend_from_slice(&self.values[range.clone()]);
            *range = start..values.len();
        }
        self.values = values;
        self.garbage = 0;
    }
}

impl FieldSink for SpanFields {
    fn begin(&mut self, name: &'static str, slot: Slot, shape: NameShape) -> Option<&mut Vec<u8>> {
        match slot {
            Slot::Context(index) => Some(self.start(FieldKey::Context(index))),
            // Dotted names are attributes for OpenTelemetry: `otel.*` instructions (span kind,
            // name, status) and semantic-convention fields (`http.route`, `url.path`, ...),
            // which the request's access line already states in its own words.
            Slot::Data | Slot::Message if !self.keep_data || name.contains('.') => None,
            Slot::Data | Slot::Message => Some(self.start(FieldKey::Data(name, shape))),
        }
    }

    fn message(&mut self, rules: &ValueRules, value: &dyn fmt::Debug) {
        let out = self.start(FieldKey::Data("message", NameShape::of("message")));
        out.push(b'"');
        write_message(out, rules, value);
        out.push(b'"');
    }
}

fn write_message(out: &mut Vec<u8>, rules: &ValueRules, value: &dyn fmt::Debug) {
    formatting(out, true, |out| {
        let mut writer = EscapeWriter::new(out, rules.max_value_bytes);
        let _ = write!(writer, "{value:?}");
        writer.finish();
    });
}

/// Per-thread buffers, reused by every event on the thread.
#[derive(Default)]
struct Buffers {
    line: Vec<u8>,
    parts: Parts,
    text: String,
    scratch: Vec<u8>,
}

/// An event's pieces before assembly.
#[derive(Default)]
struct Parts {
    /// Escaped, without quotes.
    message: Vec<u8>,
    /// Context fragments, each starting with its key.
    context: Vec<u8>,
    /// Which context slots are filled (the innermost value wins).
    context_mask: u64,
    /// The slot of each context fragment and where it starts, in order.
    context_starts: Vec<(usize, usize)>,
    /// Data fragments, each starting with its key.
    data: Vec<u8>,
    /// The name of each data fragment and where it starts, in order.
    data_keys: Vec<(&'static str, usize)>,
    /// The [`key_bit`]s of the data keys written: a key whose bit is not set is not written
    /// yet, so the look for it in `data_keys` is left out (nearly every field).
    data_mask: u64,
}

impl Parts {
    fn clear(&mut self) {
        self.message.clear();
        self.context.clear();
        self.context_mask = 0;
        self.context_starts.clear();
        self.data.clear();
        self.data_keys.clear();
        self.data_mask = 0;
    }
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// The event's fields go into [`Parts`].
struct EventSink<'a> {
    layer: &'a LogLayer,
    parts: &'a mut Parts,
    /// A `log` record bridged by `tracing-log`: its `log.*` fields (target, module, file,
    /// line) are metadata, restored from them, not data.
    bridged: bool,
    /// Whether the event's own fields are being recorded: one named again replaces the value
    /// before it (the last wins, as in a span), while a span's never replaces the event's.
    own: bool,
}

/// Removes fragment `index` of `out`, whose fragments start where `starts` says, in order.
/// Only for a field named twice in one event: rare, so a copy of the tail is fine.
fn remove_fragment<K>(out: &mut Vec<u8>, starts: &mut Vec<(K, usize)>, index: usize) {
    let start = starts[index].1;
    let end = starts.get(index + 1).map_or(out.len(), |next| next.1);
    out.drain(start..end);
    starts.remove(index);
    for later in &mut starts[index..] {
        later.1 -= end - start;
    }
}

impl EventSink<'_> {
    /// Starts the value of context slot `slot`; `None` when it is filled already and this is
    /// not the event's own field: the event's value wins over the spans', an inner span's over
    /// an outer one's.
    fn context(&mut self, slot: usize) -> Option<&mut Vec<u8>> {
        let bit = 1u64 << slot;
        let parts = &mut *self.parts;
        if parts.context_mask & bit != 0 {
            if !self.own {
                return None;
            }
            if let Some(index) = parts.context_starts.iter().position(|&(s, _)| s == slot) {
                remove_fragment(&mut parts.context, &mut parts.context_starts, index);
            }
        }
        parts.context_mask |= bit;
        parts.context_starts.push((slot, parts.context.len()));
        parts
            .context
            .extend_from_slice(&self.layer.context_keys[slot]);
        Some(&mut parts.context)
    }

    /// Starts the data field `name`; `None` when the line already has a field of that key and
    /// this is not the event's own field. A field the event names twice (`info!(a = 1, a = 2)`,
    /// or `level` and `data.level` when flattened) replaces the value before it, so one key is
    /// never written twice. `shape`: what its plan knows of `name` as a key.
    fn data(&mut self, name: &'static str, shape: NameShape) -> Option<&mut Vec<u8>> {
        let flattened = self.layer.flatten && self.layer.format == LogFormat::Json;
        let parts = &mut *self.parts;
        let bit = 1u64 << shape.key_bit;
        if parts.data_mask & bit != 0
            && let Some(index) = parts
                .data_keys
                .iter()
                .position(|&(written, _)| same_key(flattened, written, name))
        {
            if !self.own {
                return None;
            }
            remove_fragment(&mut parts.data, &mut parts.data_keys, index);
        }
        parts.data_mask |= bit;
        parts.data_keys.push((name, parts.data.len()));
        let out = &mut parts.data;
        match self.layer.format {
            LogFormat::Json => {
                out.extend_from_slice(b",\"");
                if flattened && RESERVED_KEYS.contains(&name) {
                    out.extend_from_slice(b"data.");
                }
                if shape.plain {
                    out.extend_from_slice(name.as_bytes());
                } else {
                    json::write_escaped(out, name);
                }
                out.extend_from_slice(b"\":");
            }
            LogFormat::Pretty => {
                out.push(b' ');
                json::write_escaped(out, name);
                out.push(b'=');
            }
        }
        Some(out)
    }
}

/// Whether data fields `a` and `b` write the same key: the same name, or, when flattened, a
/// reserved name (written `data.<name>`) and that `data.<name>` itself.
fn same_key(flattened: bool, a: &str, b: &str) -> bool {
    let is_data_form = |dotted: &str, plain: &str| {
        dotted.strip_prefix("data.") == Some(plain) && RESERVED_KEYS.contains(&plain)
    };
    a == b || (flattened && (is_data_form(a, b) || is_data_form(b, a)))
}

/// Which of 64 bits stands for data field `name` in a line's mask of written keys: names that
/// [`same_key`] may find the same, flattened or not, get the same bit (`data.<name>` that of
/// `<name>` for a reserved name), so a key whose bit is not set yet cannot be written yet.
/// Worked out once per name, with its field plan: a hash of the text, the same on every run.
pub(crate) fn key_bit(name: &str) -> u8 {
    let key = name
        .strip_prefix("data.")
        .filter(|rest| RESERVED_KEYS.contains(rest))
        .unwrap_or(name);
    // FNV-1a; its top six bits pick the bit.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash >> 58) as u8
}

impl FieldSink for EventSink<'_> {
    fn begin(&mut self, name: &'static str, slot: Slot, shape: NameShape) -> Option<&mut Vec<u8>> {
        match slot {
            Slot::Context(index) => self.context(index),
            Slot::Data if self.bridged && name.starts_with("log.") => None,
            Slot::Data | Slot::Message => self.data(name, shape),
        }
    }

    fn message(&mut self, rules: &ValueRules, value: &dyn fmt::Debug) {
        // Only the event records a message: one recorded twice keeps its last value, as any
        // other field.
        self.parts.message.clear();
        write_message(&mut self.parts.message, rules, value);
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        _ => "trace",
    }
}

/// Gives back what a thread's buffer grew past [`KEEP_BUFFER_CAPACITY`], so one huge value
/// does not pin its memory to the thread for good. `shrink_to` keeps the length, so the buffer
/// is emptied first: every buffer is cleared before its next use anyway.
fn release(buffer: &mut Vec<u8>) {
    if buffer.capacity() > KEEP_BUFFER_CAPACITY {
        buffer.clear();
        buffer.shrink_to(KEEP_BUFFER_CAPACITY);
    }
}

/// [`release`] for the buffers `Debug` values are formatted in.
fn shrink_formatting_buffers(text: &mut String, scratch: &mut Vec<u8>) {
    if text.capacity() > KEEP_BUFFER_CAPACITY {
        *text = String::with_capacity(KEEP_BUFFER_CAPACITY);
    }
    release(scratch);
}

impl LogLayer {
    /// Formats what a span records (`fields` of them at most).
    fn span_fields(
        &self,
        metadata: &Metadata<'_>,
        fields: usize,
        record: impl FnOnce(&mut Visitor<'_, SpanFields>),
    ) -> SpanFields {
        let mut span_fields = SpanFields::with_capacity(self.id, fields, self.span_fields);
        let record = |text: &mut String, scratch: &mut Vec<u8>| {
            record(&mut Visitor {
                rules: &self.rules,
                sink: &mut span_fields,
                text,
                scratch,
                lifts_tenant: is_periscope_span(metadata),
            });
        };
        // The thread's buffers, so that formatting a span's `Debug` and `Display` values does
        // not allocate a buffer per span. Fresh ones when they are in use (a value's Debug impl
        // opened a span while this thread was formatting) or already destroyed (a span opened
        // from a thread-local destructor: `with` would panic there, and abort the process).
        let mut record = Some(record);
        let _ = BUFFERS.try_with(|cell| {
            if let Ok(mut buffers) = cell.try_borrow_mut() {
                let Buffers { text, scratch, .. } = &mut *buffers;
                if let Some(record) = record.take() {
                    record(text, scratch);
                }
                shrink_formatting_buffers(text, scratch);
            }
        });
        if let Some(record) = record {
            record(&mut String::new(), &mut Vec::new());
        }
        span_fields.close();
        span_fields
    }

    fn emit<S>(&self, buffers: &mut Buffers, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Buffers {
            line,
            parts,
            text,
            scratch,
        } = buffers;
        parts.clear();
        // A record of the `log` crate arrives under tracing-log's own callsite (target `log`);
        // its real target and level are restored from its fields.
        let normalized = event.normalized_metadata();
        let mut sink = EventSink {
            layer: self,
            parts,
            bridged: normalized.is_some(),
            own: true,
        };
        event.record(&mut Visitor {
            rules: &self.rules,
            sink: &mut sink,
            text,
            scratch,
            // The access line of a request without a span carries its context's tenant list.
            lifts_tenant: event.metadata().target() == crate::access::ACCESS_LOG_TARGET,
        });
        sink.own = false;

        // Context and data from the spans in scope, innermost first: the first value wins.
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                span_name.get_or_insert(span.name());
                let extensions = span.extensions();
                let Some(fields) = fields_of(&extensions, self.id) else {
                    continue;
                };
                for (slot, value) in fields.context() {
                    if let Some(out) = sink.context(slot) {
                        out.extend_from_slice(value);
                    }
                }
                if self.span_fields {
                    for (name, shape, value) in fields.data() {
                        if let Some(out) = sink.data(name, shape) {
                            out.extend_from_slice(value);
                        }
                    }
                }
            }
        }

        // No span in scope said which request the line belongs to: the request's context may
        // (a task spawned with `ctx.scope(..)`, a closure run in `ctx.in_scope(..)`).
        if self
            .request_id_slot
            .is_some_and(|slot| sink.parts.context_mask & (1 << slot) == 0)
        {
            self.lift_current_context(&mut sink);
            // Nor the context: work outside any request, inside a span that is exported.
            #[cfg(feature = "otel")]
            self.lift_exported_span(&mut sink, event);
        }

        line.clear();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        match self.format {
            LogFormat::Json => {
                // A bridged `log` record's target is its own, not the callsite's static text.
                let static_target = normalized.is_none().then(|| event.metadata().target());
                self.assemble_json(line, metadata, static_target, parts, span_name);
            }
            LogFormat::Pretty => self.assemble_pretty(line, metadata, parts, span_name),
        }
        line.push(b'\n');
        if self.recent.is_enabled() {
            self.recent.push(*metadata.level(), &line[..line.len() - 1]);
        }
        self.sink.write_line(line);
        for buffer in [
            line,
            &mut parts.data,
            &mut parts.message,
            &mut parts.context,
        ] {
            release(buffer);
        }
        shrink_formatting_buffers(text, scratch);
    }

    /// Fills the context fields still empty from the current [`RequestContext`], if any: its
    /// ids (the span id being the request's span, the line's parent) and its tenant fields.
    fn lift_current_context(&self, sink: &mut EventSink<'_>) {
        let Some(ctx) = RequestContext::current() else {
            return;
        };
        self.lift(sink, "request_id", ctx.request_id.as_str());
        self.lift(sink, "trace_id", ctx.trace_id.to_hex().as_str());
        self.lift(sink, "span_id", ctx.span_id.to_hex().as_str());
        for (key, value) in ctx.tenant.iter() {
            self.lift(sink, key.field(), value);
        }
    }

    /// Fills `trace_id` and `span_id`, if still empty, with the ids of the exported span
    /// entered innermost (OpenTelemetry's current context), for a line logged in the spans
    /// entered on its thread: one that names its parent (or none) may belong elsewhere.
    #[cfg(feature = "otel")]
    fn lift_exported_span(&self, sink: &mut EventSink<'_>, event: &Event<'_>) {
        let Slot::Context(trace_slot) = self.rules.slot("trace_id") else {
            return;
        };
        if sink.parts.context_mask & (1 << trace_slot) != 0 || !event.is_contextual() {
            return;
        }
        if let Some((trace_id, span_id)) = crate::exported::current_span_ids() {
            self.lift(sink, "trace_id", &trace_id);
            self.lift(sink, "span_id", &span_id);
        }
    }

    /// Writes context field `name` unless the line has it already.
    fn lift(&self, sink: &mut EventSink<'_>, name: &str, value: &str) {
        if let Slot::Context(slot) = self.rules.slot(name)
            && let Some(out) = sink.context(slot)
        {
            let shown = if self.rules.redactor.is_sensitive(name) {
                REDACTED
            } else {
                value
            };
            json::write_str(out, shown, self.rules.max_value_bytes);
        }
    }

    /// `static_target`: the target when it is the callsite's (`metadata`'s otherwise).
    fn assemble_json(
        &self,
        line: &mut Vec<u8>,
        metadata: &Metadata<'_>,
        static_target: Option<&'static str>,
        parts: &Parts,
        span_name: Option<&'static str>,
    ) {
        line.extend_from_slice(b"{\"timestamp\":\"");
        timestamp::write_rfc3339_millis(line, SystemTime::now());
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(level_name(metadata.level()).as_bytes());
        line.extend_from_slice(b"\",\"message\":\"");
        line.extend_from_slice(&parts.message);
        line.extend_from_slice(b"\",\"target\":\"");
        match static_target {
            Some(target) => static_text::write(line, target),
            None => json::write_escaped(line, metadata.target()),
        }
        line.push(b'"');
        line.extend_from_slice(&self.static_fields);
        line.extend_from_slice(&parts.context);
        if let Some(name) = span_name {
            line.extend_from_slice(b",\"span\":\"");
            static_text::write(line, name);
            line.push(b'"');
        }
        if self.flatten {
            line.extend_from_slice(&parts.data);
        } else {
            line.extend_from_slice(b",\"data\":{");
            line.extend_from_slice(parts.data.get(1..).unwrap_or_default());
            line.push(b'}');
        }
        line.push(b'}');
    }

    fn assemble_pretty(
        &self,
        line: &mut Vec<u8>,
        metadata: &Metadata<'_>,
        parts: &Parts,
        span_name: Option<&str>,
    ) {
        timestamp::write_rfc3339_millis(line, SystemTime::now());
        line.push(b' ');
        let level = metadata.level();
        let (name, color) = match *level {
            Level::ERROR => ("ERROR", "31"),
            Level::WARN => (" WARN", "33"),
            Level::INFO => (" INFO", "32"),
            Level::DEBUG => ("DEBUG", "34"),
            _ => ("TRACE", "35"),
        };
        if self.ansi {
            let _ = write!(line, "\x1b[{color}m{name}\x1b[0m ");
        } else {
            let _ = write!(line, "{name} ");
        }
        if let Some(span) = span_name {
            json::write_escaped(line, span);
            line.push(b' ');
        }
        json::write_escaped(line, metadata.target());
        line.extend_from_slice(b": ");
        line.extend_from_slice(&parts.message);
        line.extend_from_slice(&parts.data);
        line.extend_from_slice(&parts.context);
    }
}

impl<S> tracing_subscriber::Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.passes(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.passes(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.filter
            .as_ref()
            .map(|f| f.with_current(|d| d.max_level_hint()))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // A span is where OpenTelemetry's export first uses its context on a thread: the
        // guard set up now is destroyed before that context, even on a thread that never
        // logs a line before a thread-local's destructor does.
        #[cfg(feature = "otel")]
        crate::exported::watch_thread();
        let Some(span) = ctx.span(id) else {
            return;
        };
        let kept = SpanPlan::of(&self.rules, attrs.metadata()).kept(self.span_fields);
        let fields = self.span_fields(attrs.metadata(), kept.count(), |visitor| {
            attrs.record(&mut KeptFields {
                kept,
                inner: visitor,
            })
        });
        let mut extensions = span.extensions_mut();
        // `insert` panics when the type is there already: another `LogLayer` saw the span first.
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(fields);
        } else if let Some(others) = extensions.get_mut::<OtherLayersFields>() {
            others.0.retain(|other| other.owner != self.id);
            others.0.push(fields);
        } else {
            extensions.insert(OtherLayersFields(vec![fields]));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let kept = SpanPlan::of(&self.rules, span.metadata()).kept(self.span_fields);
        // Nothing kept (the server layer's `http.response.status_code` on every request):
        // nothing is set up to format it.
        let mut any = AnyKept { kept, found: false };
        values.record(&mut any);
        if !any.found {
            return;
        }
        // Format before taking the span's lock: a value's Debug impl may itself log.
        let update = self.span_fields(span.metadata(), kept.count().min(values.len()), |visitor| {
            values.record(&mut KeptFields {
                kept,
                inner: visitor,
            })
        });
        if update.entries.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>()
            && fields.owner == self.id
        {
            fields.merge(update);
            return;
        }
        if let Some(fields) = extensions
            .get_mut::<OtherLayersFields>()
            .and_then(|others| others.0.iter_mut().find(|f| f.owner == self.id))
        {
            fields.merge(update);
        }
    }

    #[cfg(feature = "otel")]
    fn on_enter(&self, _id: &Id, _ctx: Context<'_, S>) {
        // As in `on_new_span`: a span made on another thread is entered here first.
        crate::exported::watch_thread();
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        #[cfg(feature = "otel")]
        crate::exported::watch_thread();
        // Fresh buffers when the thread's are in use (a value's Debug impl logged while this
        // thread was formatting) or destroyed (logging from a thread-local destructor, where
        // `with` would panic and abort the process).
        let done = BUFFERS
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut buffers) => {
                    self.emit(&mut buffers, event, &ctx);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !done {
            self.emit(&mut Buffers::default(), event, &ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Installs `subscriber` as this thread's default, for a test that reads the lines it
    /// captures.
    ///
    /// While a process holds a single `Dispatch`, tracing-core asks only the default of the thread
    /// that meets a callsite first whether it is enabled, and caches the answer for every thread:
    /// a test that runs with no subscriber of its own, meeting a shared callsite first, has it
    /// cached as never enabled, and a test capturing lines at the same time misses them. Two
    /// dispatchers kept for the whole run make tracing-core ask every live one instead (see
    /// docs/development.md).
    fn set_default(
        subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    ) -> tracing::subscriber::DefaultGuard {
        static KEPT: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
        KEPT.get_or_init(|| {
            [(); 2].map(|()| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()))
        });
        tracing::subscriber::set_default(subscriber)
    }

    #[test]
    fn values_recorded_again_replace_the_old_in_place_within_bounded_memory() {
        let owner = LayerId::next();
        let mut fields = SpanFields::with_capacity(owner, 3, true);
        fields
            .begin("a", Slot::Data, NameShape::of("a"))
            .unwrap()
            .extend_from_slice(b"1");
        fields
            .begin("request_id", Slot::Context(0), NameShape::of("request_id"))
            .unwrap()
            .extend_from_slice(b"\"req_1\"");
        fields
            .begin("b", Slot::Data, NameShape::of("b"))
            .unwrap()
            .extend_from_slice(b"true");
        fields.close();
        for i in 0..1000 {
            let mut update = SpanFields::with_capacity(owner, 1, true);
            let value = i.to_string();
            update
                .begin("a", Slot::Data, NameShape::of("a"))
                .unwrap()
                .extend_from_slice(value.as_bytes());
            fields.merge(update);
        }
        let data: Vec<_> = fields
            .data()
            .map(|(name, _, value)| (name, value))
            .collect();
        assert_eq!(data, [("a", &b"999"[..]), ("b", &b"true"[..])]);
        assert_eq!(
            fields.context().collect::<Vec<_>>(),
            [(0, &b"\"req_1\""[..])]
        );
        assert!(fields.values.len() < 64, "{}", fields.values.len());
    }

    #[test]
    fn names_of_one_key_share_a_bit_of_the_key_mask() {
        // Flattened, a reserved name and `data.<name>` are one key: the mask must not tell
        // them apart, or the second would be written without looking for the first.
        for reserved in RESERVED_KEYS {
            assert_eq!(key_bit(&format!("data.{reserved}")), key_bit(reserved));
        }
        // Distinct names sharing a bit, as the integration tests rely on (they are still
        // looked for among the keys written, and so told apart).
        assert_eq!(key_bit("method"), key_bit("aborted"));
        assert_eq!(key_bit("status"), key_bit("client"));
        assert!((0..64).contains(&key_bit("")));
    }

    #[test]
    fn one_huge_debug_value_does_not_keep_its_memory_on_the_thread() {
        use tracing_subscriber::prelude::*;
        struct Big(usize);
        impl fmt::Debug for Big {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let chunk = "y".repeat(1024);
                (0..self.0 / 1024).try_for_each(|_| f.write_str(&chunk))
            }
        }
        /// Counts what is written: the huge line did go through the thread's buffers.
        struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl std::io::Write for Counting {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .fetch_add(buf.len(), std::sync::atomic::Ordering::Relaxed);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let written = std::sync::Arc::default();
        let (layer, guard) = LogLayer::builder()
            .max_value_bytes(16 << 20)
            .writer(Counting(std::sync::Arc::clone(&written)))
            .blocking(true)
            .recent_limits(0, 0)
            .build();
        let subscriber = tracing_subscriber::registry().with(layer);
        {
            let _default = set_default(subscriber);
            let span = tracing::info_span!("work", v = ?Big(8 << 20));
            let _entered = span.enter();
            tracing::info!(v = ?Big(8 << 20), "huge");
        }
        drop(guard);
        // The value written whole (the event's `v`, which the span's field of the same name
        // yields to): 8 MiB went through this thread's buffers.
        let written = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(written >= 8 << 20, "{written}");
        let capacities = BUFFERS.with(|buffers| {
            let buffers = buffers.borrow();
            [
                buffers.line.capacity(),
                buffers.text.capacity(),
                buffers.scratch.capacity(),
            ]
        });
        assert!(
            capacities.iter().all(|&c| c <= KEEP_BUFFER_CAPACITY),
            "{capacities:?}"
        );
    }
}

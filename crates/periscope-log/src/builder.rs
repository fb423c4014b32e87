//! [`LogLayerBuilder`]: everything the layer can be told, with the defaults.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use periscope_context::TenantKey;

use crate::config::{LogConfig, LogFormat};
use crate::fields::{DEFAULT_CONTEXT_FIELDS, MAX_CONTEXT_FIELDS, ValueRules};
use crate::filter::{Directives, LevelControl};
use crate::json;
use crate::layer::{LayerId, LogLayer};
use crate::recent::{DEFAULT_RECENT_BYTES, DEFAULT_RECENT_LINES, RecentLogs};
use crate::redact::Redactor;
use crate::writer::{self, DroppedLines, LogGuard, WriterConfig};

/// Default bound of one string value (and of the message) in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024;

/// Builds a [`LogLayer`] and its [`LogGuard`].
///
/// ```
/// use periscope_log::{LogConfig, LogLayer};
/// use tracing_subscriber::prelude::*;
///
/// let config = LogConfig::from_lookup(|_| None).unwrap(); // LogConfig::from_env()? in a service
/// let (layer, guard) = LogLayer::builder()
///     .service("framecast-api")
///     .environment("production")
///     .version("1.4.2")
///     .config(&config)
///     .context_field("tenant_id")
///     .sensitive_key("ssn")
///     .writer(std::io::stdout())
///     .build();
/// let levels = layer.level_control(); // for POST /debug/log-level
/// let recent = layer.recent_logs(); // for /debug/logs
/// let dropped = layer.dropped_lines(); // for a metric
/// let subscriber = tracing_subscriber::registry().with(layer);
/// tracing::subscriber::with_default(subscriber, || tracing::info!(user_id = "usr_1", "ready"));
/// drop(guard); // at shutdown: writes every queued line
/// ```
#[must_use = "call build() to get the layer and its guard"]
pub struct LogLayerBuilder {
    service: Option<String>,
    environment: Option<String>,
    version: Option<String>,
    format: LogFormat,
    directives: Directives,
    level_control: Option<LevelControl>,
    global_filter: bool,
    context_fields: Vec<String>,
    redactor: Redactor,
    max_value_bytes: usize,
    flatten: bool,
    span_fields: bool,
    ansi: Option<bool>,
    writer: Option<Box<dyn Write + Send>>,
    /// Whether the writer given is a terminal: the default of `ansi` follows the output the
    /// lines go to, not stdout.
    writer_is_terminal: bool,
    writer_config: WriterConfig,
    recent_lines: usize,
    recent_bytes: usize,
}

impl std::fmt::Debug for LogLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLayerBuilder")
            .field("service", &self.service)
            .field("format", &self.format)
            .field("directives", &self.directives.to_string())
            .finish_non_exhaustive()
    }
}

impl Default for LogLayerBuilder {
    fn default() -> Self {
        Self {
            service: None,
            environment: None,
            version: None,
            format: LogFormat::Json,
            directives: Directives::default(),
            level_control: None,
            global_filter: true,
            context_fields: DEFAULT_CONTEXT_FIELDS
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            redactor: Redactor::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            flatten: false,
            span_fields: true,
            ansi: None,
            writer: None,
            writer_is_terminal: false,
            writer_config: WriterConfig::default(),
            recent_lines: DEFAULT_RECENT_LINES,
            recent_bytes: DEFAULT_RECENT_BYTES,
        }
    }
}

/// A context field name the builder refuses: see [`LogLayerBuilder::try_context_field`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("context field {name:?} is refused: {reason}")]
pub struct ContextFieldError {
    name: String,
    reason: &'static str,
}

impl ContextFieldError {
    /// The refused name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why `name` cannot be a context field, if it cannot.
fn refusal(name: &str) -> Option<&'static str> {
    let reserved = |key: &str| crate::layer::RESERVED_KEYS.contains(&key);
    if reserved(name) {
        Some("it is one of the line's own keys, which a field must never write twice or forge")
    } else if name.strip_prefix("data.").is_some_and(reserved) {
        Some(
            "with flatten_data(true) an event field named like one of the line's own keys is \
             written under this name, so the line would hold it twice",
        )
    } else {
        None
    }
}

impl LogLayer {
    /// A builder with the defaults: JSON on stdout through the non-blocking writer, `info`,
    /// the contract's context fields and redaction rules.
    pub fn builder() -> LogLayerBuilder {
        LogLayerBuilder::default()
    }
}

impl LogLayerBuilder {
    /// The `service` field of every JSON line (the `pretty` format leaves it out).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The `environment` field of every JSON line (the `pretty` format leaves it out).
    pub fn environment(mut self, name: impl Into<String>) -> Self {
        self.environment = Some(name.into());
        self
    }

    /// The `version` field of every JSON line (the `pretty` format leaves it out).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// JSON (default) or pretty.
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// The filter directives the service starts with (default `info`).
    pub fn directives(mut self, directives: Directives) -> Self {
        self.directives = directives;
        self
    }

    /// The format and directives read from the environment.
    pub fn config(self, config: &LogConfig) -> Self {
        self.format(config.format)
            .directives(config.directives.clone())
    }

    /// Uses an existing level control (its directives win over [`directives`](Self::directives)).
    pub fn level_control(mut self, control: LevelControl) -> Self {
        self.level_control = Some(control);
        self
    }

    /// Whether the layer filters for the whole subscriber (default `true`). Turn it off to
    /// use [`LogLayer::level_control`] as a per-layer filter instead.
    pub fn global_filter(mut self, on: bool) -> Self {
        self.global_filter = on;
        self
    }

    /// Lifts a span field of this name to the top level, like `request_id`.
    ///
    /// There are at most 64 context fields, the defaults ([`DEFAULT_CONTEXT_FIELDS`]) included:
    /// a name past them is ignored and its field stays in `data`. A name the line cannot hold
    /// once at the top level is ignored too and the field stays in `data`: one of the line's
    /// own keys (`timestamp`, `level`, `message`, `target`,
    /// `service`, `environment`, `version`, `span`, `data`), which a field must never write a
    /// second time or forge, or such a key after `data.` (`data.level`), which
    /// [`flatten_data`](Self::flatten_data) writes for an event field named `level`. Use
    /// [`try_context_field`](Self::try_context_field) to get an error instead.
    pub fn context_field(self, name: impl Into<String>) -> Self {
        let name = name.into();
        if self.refusal(&name).is_some() {
            return self;
        }
        self.push_context_field(name)
    }

    /// [`context_field`](Self::context_field), with an error naming the field and the reason
    /// when the name is refused, or comes past the 64 context fields (for names that come from
    /// configuration).
    ///
    /// ```
    /// let error = periscope_log::LogLayer::builder()
    ///     .try_context_field("data.level")
    ///     .unwrap_err();
    /// assert_eq!(error.name(), "data.level");
    /// ```
    pub fn try_context_field(self, name: impl Into<String>) -> Result<Self, ContextFieldError> {
        let name = name.into();
        match self.refusal(&name) {
            Some(reason) => Err(ContextFieldError { name, reason }),
            None => Ok(self.push_context_field(name)),
        }
    }

    /// Why `name` cannot be added as a context field, if it cannot.
    fn refusal(&self, name: &str) -> Option<&'static str> {
        refusal(name).or_else(|| {
            // The filled context slots are tracked in a 64-bit mask.
            let full = self.context_fields.len() >= MAX_CONTEXT_FIELDS
                && !self.context_fields.iter().any(|field| field == name);
            full.then_some("there are 64 context fields already, the defaults included")
        })
    }

    fn push_context_field(mut self, name: String) -> Self {
        if !self.context_fields.contains(&name) {
            self.context_fields.push(name);
        }
        self
    }

    /// Lifts these tenant fields (`TenantKey::field()`, such as `org_id`).
    pub fn tenant_keys(self, keys: &[TenantKey]) -> Self {
        keys.iter()
            .fold(self, |b, key| b.context_field(key.field()))
    }

    /// Also redacts keys containing `fragment`.
    pub fn sensitive_key(mut self, fragment: &str) -> Self {
        self.redactor = self.redactor.with_sensitive_key(fragment);
        self
    }

    /// Never redacts this exact key.
    pub fn allowed_key(mut self, key: &str) -> Self {
        self.redactor = self.redactor.with_allowed_key(key);
        self
    }

    /// Replaces the redaction rules.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Strings (and messages) longer than this are truncated, their length recorded
    /// (default 16 KiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes.max(1);
        self
    }

    /// Writes event fields at the top level instead of under `data` (default off). Fields
    /// named like a top-level key become `data.<name>`.
    pub fn flatten_data(mut self, on: bool) -> Self {
        self.flatten = on;
        self
    }

    /// Adds the non-context fields of the spans in scope to `data` (default on; the event's
    /// own fields and inner spans win).
    pub fn span_fields(mut self, on: bool) -> Self {
        self.span_fields = on;
        self
    }

    /// Colours the level in the pretty format (default: when the output is a terminal: stdout,
    /// or the [`writer`](Self::writer) given when it is stdout, stderr or a `File` that is one).
    pub fn ansi(mut self, on: bool) -> Self {
        self.ansi = Some(on);
        self
    }

    /// Where lines go (default stdout).
    pub fn writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.writer_is_terminal = is_terminal(&writer);
        self.writer = Some(Box::new(writer));
        self
    }

    /// Writes on the logging thread instead of a background thread (default off): for tests
    /// and tools, never for a service, where a slow output would stall requests.
    pub fn blocking(mut self, on: bool) -> Self {
        self.writer_config.non_blocking = !on;
        self
    }

    /// Bounds of the queue in front of the background writer (default 65 536 lines, 32 MiB);
    /// past them lines are dropped and counted. A bound of 0 counts as 1, and a line longer
    /// than the bytes bound is always dropped.
    pub fn queue_limits(mut self, lines: usize, bytes: usize) -> Self {
        self.writer_config.max_lines = lines;
        self.writer_config.max_bytes = bytes;
        self
    }

    /// How long dropping the guard waits for the queue to drain (default 10 s); longer than a
    /// year (`Duration::MAX`, "as long as it takes") counts as a year, as a deadline past it
    /// cannot be told.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        self.writer_config.flush_timeout = timeout.min(A_YEAR);
        self
    }

    /// Bounds of the recent-lines buffer (default 1000 lines, 4 MiB; 0 lines turns it off),
    /// a quarter of each kept for `error` lines (see [`RecentLogs`]).
    pub fn recent_limits(mut self, lines: usize, bytes: usize) -> Self {
        self.recent_lines = lines;
        self.recent_bytes = bytes;
        self
    }

    /// The layer, and the guard that flushes the output when dropped.
    pub fn build(self) -> (LogLayer, LogGuard) {
        let json_format = self.format == LogFormat::Json;
        let context_fields: Vec<Box<str>> = self
            .context_fields
            .into_iter()
            .take(MAX_CONTEXT_FIELDS)
            .map(String::into_boxed_str)
            .collect();
        let context_keys = context_fields
            .iter()
            .map(|name| {
                let mut key = Vec::new();
                if json_format {
                    key.push(b',');
                    json::write_key(&mut key, name);
                } else {
                    key.push(b' ');
                    json::write_escaped(&mut key, name);
                    key.push(b'=');
                }
                key
            })
            .collect();
        let mut static_fields = Vec::new();
        if json_format {
            for (key, value) in [
                ("service", &self.service),
                ("environment", &self.environment),
                ("version", &self.version),
            ] {
                if let Some(value) = value {
                    static_fields.push(b',');
                    json::write_key(&mut static_fields, key);
                    json::write_str(&mut static_fields, value, self.max_value_bytes);
                }
            }
        }
        let level_control = self
            .level_control
            .unwrap_or_else(|| LevelControl::new(self.directives));
        let dropped = DroppedLines::default();
        let writer_given = self.writer.is_some();
        let out = self.writer.unwrap_or_else(|| Box::new(std::io::stdout()));
        let (sink, guard) = writer::start(out, &self.writer_config, dropped.clone());
        let request_id_slot = context_fields.iter().position(|f| &**f == "request_id");
        let layer = LogLayer {
            id: LayerId::next(),
            request_id_slot,
            rules: ValueRules::new(self.redactor, self.max_value_bytes, context_fields),
            format: self.format,
            context_keys,
            static_fields,
            flatten: self.flatten,
            span_fields: self.span_fields,
            ansi: self.ansi.unwrap_or_else(|| {
                if writer_given {
                    self.writer_is_terminal
                } else {
                    std::io::stdout().is_terminal()
                }
            }),
            filter: self.global_filter.then(|| level_control.clone()),
            level_control,
            sink,
            recent: RecentLogs::new(self.recent_lines, self.recent_bytes, json_format),
            dropped,
        };
        (layer, guard)
    }
}

/// Whether `writer` is a terminal, for the types that can tell: a file or pipe given as the
/// output must not get colour escapes because the program was started from a terminal.
fn is_terminal(writer: &dyn std::any::Any) -> bool {
    if let Some(file) = writer.downcast_ref::<std::fs::File>() {
        file.is_terminal()
    } else if writer.is::<std::io::Stdout>() {
        std::io::stdout().is_terminal()
    } else if writer.is::<std::io::Stderr>() {
        std::io::stderr().is_terminal()
    } else {
        false
    }
}

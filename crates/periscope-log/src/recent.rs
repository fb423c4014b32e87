//! The bounded buffer of recent lines behind `/debug/logs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::Level;

use crate::json;

/// Default number of lines kept.
pub const DEFAULT_RECENT_LINES: usize = 1000;
/// Default bound of the bytes kept.
pub const DEFAULT_RECENT_BYTES: usize = 4 * 1024 * 1024;

/// The most recent log lines, bounded in count and bytes, for an admin endpoint.
///
/// Cheap to clone; every clone reads the same buffer. Lines are the exact text written to the
/// output (JSON objects, or text in the `pretty` format).
///
/// ```
/// use periscope_log::{LogLayer, LogFormat};
/// use tracing::Level;
/// use tracing_subscriber::prelude::*;
///
/// let (layer, _guard) = LogLayer::builder().writer(std::io::sink()).build();
/// let recent = layer.recent_logs();
/// let subscriber = tracing_subscriber::registry().with(layer);
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!("started");
///     tracing::warn!("slow");
/// });
/// let lines = recent.lines(10, Some(Level::WARN));
/// assert_eq!(lines.len(), 1);
/// assert!(lines[0].text.contains("\"message\":\"slow\""));
/// ```
#[derive(Clone, Debug)]
pub struct RecentLogs {
    ring: Arc<Mutex<Ring>>,
    json: bool,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<(Level, Vec<u8>)>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

/// One line of [`RecentLogs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentLine {
    /// The event's level.
    pub level: Level,
    /// The line as written, without its newline.
    pub text: String,
}

/// Larger is more severe.
fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 4,
        Level::WARN => 3,
        Level::INFO => 2,
        Level::DEBUG => 1,
        _ => 0,
    }
}

impl RecentLogs {
    /// A buffer of at most `max_lines` lines and `max_bytes` bytes; `json` says whether the
    /// lines are JSON objects.
    pub(crate) fn new(max_lines: usize, max_bytes: usize, json: bool) -> Self {
        Self {
            ring: Arc::new(Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                max_lines,
                max_bytes,
            })),
            json,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.ring().max_lines > 0
    }

    /// Keeps `line` (without its newline), evicting the oldest lines past the bounds.
    pub(crate) fn push(&self, level: Level, line: &[u8]) {
        let mut ring = self.ring();
        if ring.max_lines == 0 || line.len() > ring.max_bytes {
            return;
        }
        // Reuse the evicted line's allocation: no allocation in the steady state.
        let mut reused = None;
        while ring.lines.len() >= ring.max_lines || ring.bytes + line.len() > ring.max_bytes {
            let Some((_, old)) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.len();
            reused = Some(old);
        }
        let mut text = reused.unwrap_or_default();
        text.clear();
        // The bound is in bytes held: a buffer kept from a much longer line would carry its
        // memory on to every line that reuses it, past the bound.
        if text.capacity() > 2 * line.len() {
            text = Vec::with_capacity(line.len());
        }
        text.extend_from_slice(line);
        ring.bytes += text.len();
        ring.lines.push_back((level, text));
    }

    /// The last `max` lines at `min_level` or more severe (all levels when `None`), oldest
    /// first.
    pub fn lines(&self, max: usize, min_level: Option<Level>) -> Vec<RecentLine> {
        let min = min_level.map_or(0, severity);
        let ring = self.ring();
        let mut lines: Vec<RecentLine> = ring
            .lines
            .iter()
            .rev()
            .filter(|(level, _)| severity(*level) >= min)
            .take(max)
            .map(|(level, text)| RecentLine {
                level: *level,
                text: String::from_utf8_lossy(text).into_owned(),
            })
            .collect();
        lines.reverse();
        lines
    }

    /// The same lines as a JSON array: the JSON lines as objects, `pretty` lines as strings.
    pub fn to_json_array(&self, max: usize, min_level: Option<Level>) -> String {
        let mut out = Vec::from(&b"["[..]);
        for (i, line) in self.lines(max, min_level).iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if self.json {
                out.extend_from_slice(line.text.as_bytes());
            } else {
                json::write_str(&mut out, &line.text, usize::MAX);
            }
        }
        out.push(b']');
        String::from_utf8_lossy(&out).into_owned()
    }

    /// How many lines the buffer holds now.
    pub fn len(&self) -> usize {
        self.ring().lines.len()
    }

    /// Whether the buffer holds no line.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_both_bounds() {
        let recent = RecentLogs::new(3, 1000, true);
        for i in 0..5 {
            recent.push(Level::INFO, format!("{{\"n\":{i}}}").as_bytes());
        }
        let texts: Vec<_> = recent.lines(10, None).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);

        let small = RecentLogs::new(100, 10, true);
        small.push(Level::INFO, b"12345");
        small.push(Level::INFO, b"67890");
        small.push(Level::INFO, b"abc");
        small.push(Level::INFO, b"far too long for the buffer");
        assert_eq!(small.len(), 2);
    }

    /// Lines of very different sizes, a long one now and then: the memory held stays within
    /// twice the byte bound, however often the long line comes back.
    #[test]
    fn memory_held_stays_within_the_byte_bound_when_line_sizes_vary() {
        let recent = RecentLogs::new(100, 100_000, true);
        let long = vec![b'x'; 50_000];
        for _ in 0..100 {
            recent.push(Level::INFO, &long);
            for _ in 0..120 {
                recent.push(Level::INFO, b"{\"short\":1}");
            }
        }
        let ring = recent.ring();
        let held: usize = ring.lines.iter().map(|(_, text)| text.capacity()).sum();
        assert!(ring.bytes <= 100_000);
        assert!(held <= 2 * 100_000, "{held} bytes held");
    }

    #[test]
    fn filters_by_severity_and_renders_a_json_array() {
        let recent = RecentLogs::new(10, 1000, true);
        recent.push(Level::DEBUG, b"{\"a\":1}");
        recent.push(Level::ERROR, b"{\"a\":2}");
        recent.push(Level::WARN, b"{\"a\":3}");
        recent.push(Level::INFO, b"{\"a\":4}");
        assert_eq!(
            recent.to_json_array(10, Some(Level::WARN)),
            "[{\"a\":2},{\"a\":3}]"
        );
        assert_eq!(recent.to_json_array(1, None), "[{\"a\":4}]");
        let pretty = RecentLogs::new(10, 1000, false);
        pretty.push(Level::INFO, b"INFO \"hi\"");
        assert_eq!(pretty.to_json_array(10, None), r#"["INFO \"hi\""]"#);
    }
}

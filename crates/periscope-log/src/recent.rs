//! The bounded buffer of recent lines behind `/debug/logs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::Level;

use crate::json;

/// Default number of lines kept.
pub const DEFAULT_RECENT_LINES: usize = 1000;
/// Default bound of the bytes kept.
pub const DEFAULT_RECENT_BYTES: usize = 4 * 1024 * 1024;

/// The share of each bound (1/4) reserved for `error` lines: lines of other levels cannot
/// push out the newest error lines that fit in it.
const ERROR_RESERVE_DIVISOR: usize = 4;

/// The most recent log lines, bounded in count and bytes, for an admin endpoint.
///
/// Cheap to clone; every clone reads the same buffer. Lines are the exact text written to the
/// output (JSON objects, or text in the `pretty` format).
///
/// The oldest lines go first when a bound is reached, with one exception: lines of other
/// levels do not push out the newest `error` lines that fit in a quarter of each bound (a
/// quarter of the lines and a quarter of the bytes). A flood of `warn` lines (refused
/// requests, say) cannot flush the errors an operator looks for after an incident; newer
/// `error` lines still push out older ones. The bounds hold for all lines together.
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
    /// The `error` lines held, and their bytes.
    error_lines: usize,
    error_bytes: usize,
    /// The share of the bounds that other levels cannot take from `error` lines.
    reserve_lines: usize,
    reserve_bytes: usize,
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
                error_lines: 0,
                error_bytes: 0,
                reserve_lines: max_lines / ERROR_RESERVE_DIVISOR,
                reserve_bytes: max_bytes / ERROR_RESERVE_DIVISOR,
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

    /// Keeps `line` (without its newline), evicting the oldest lines past the bounds (but not
    /// the reserved `error` lines for a line of another level).
    pub(crate) fn push(&self, level: Level, line: &[u8]) {
        let mut ring = self.ring();
        if ring.max_lines == 0 || line.len() > ring.max_bytes {
            return;
        }
        let error = level == Level::ERROR;
        // A line of another level that cannot fit beside the error lines eviction keeps is
        // refused before anything is evicted for it.
        if !error
            && ring.error_bytes + line.len() > ring.max_bytes
            && ring.kept_error_bytes() + line.len() > ring.max_bytes
        {
            return;
        }
        // Reuse the evicted line's allocation: no allocation in the steady state.
        let mut reused = None;
        while ring.lines.len() >= ring.max_lines || ring.bytes + line.len() > ring.max_bytes {
            let Some(old) = ring.evict(error) else {
                // Only the reserved error lines are left, and a line of another level over
                // three quarters of the byte bound does not fit beside them: not kept.
                return;
            };
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
        if error {
            ring.error_lines += 1;
            ring.error_bytes += text.len();
        }
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

impl Ring {
    /// Removes the oldest line that a new line (an `error` line when `for_error`) may push
    /// out, and returns its text; `None` when every line left is a reserved error line.
    /// The bytes of the error lines that evicting for a line of another level keeps: the
    /// newest ones within the reserve (eviction takes the oldest first while the errors are
    /// past it).
    fn kept_error_bytes(&self) -> usize {
        let (mut lines, mut bytes) = (0, 0);
        for (_, text) in self
            .lines
            .iter()
            .rev()
            .filter(|(level, _)| *level == Level::ERROR)
        {
            if lines + 1 > self.reserve_lines || bytes + text.len() > self.reserve_bytes {
                break;
            }
            lines += 1;
            bytes += text.len();
        }
        bytes
    }

    fn evict(&mut self, for_error: bool) -> Option<Vec<u8>> {
        let within_reserve =
            self.error_lines <= self.reserve_lines && self.error_bytes <= self.reserve_bytes;
        let other_line = || {
            self.lines
                .iter()
                .position(|(level, _)| *level != Level::ERROR)
        };
        // Past the reserve, the oldest error lines are not among the newest that fit in it:
        // the oldest line goes, whatever its level. Within it, the oldest line of another level
        // goes, for an error line too while one more still fits the reserve; the error lines
        // before it number at most `reserve_lines`.
        let index = if !within_reserve {
            0
        } else if for_error {
            if self.error_lines < self.reserve_lines {
                other_line().unwrap_or(0)
            } else {
                0
            }
        } else {
            other_line()?
        };
        let (level, old) = self.lines.remove(index)?;
        self.bytes -= old.len();
        if level == Level::ERROR {
            self.error_lines -= 1;
            self.error_bytes -= old.len();
        }
        Some(old)
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

    /// Random rings and random pushes against the ring's rules: both bounds and the counters
    /// hold (checked by `contents`), lines stay in the order they came, a line is either kept
    /// as the newest or refused with nothing evicted for it, and the error lines a line of
    /// another level pushes past stay the newest that fit the reserve.
    #[test]
    fn random_pushes_keep_the_rules() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let levels = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG];
        for _ in 0..2_000 {
            let recent = RecentLogs::new(1 + next(12), 8 + next(120), true);
            for n in 0..60 {
                let level = levels[next(levels.len())];
                let text = format!("{n:03}{}", "x".repeat(next(40)));
                let before = contents(&recent);
                recent.push(level, text.as_bytes());
                let after = contents(&recent);
                let numbers: Vec<usize> = after
                    .iter()
                    .map(|(_, text)| text[..3].parse().unwrap())
                    .collect();
                assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
                if after.last() != Some(&(level, text.clone())) {
                    assert_eq!(after, before, "refused {level} {text}: nothing evicted");
                } else if level != Level::ERROR {
                    // The errors evicted for it were older than every error kept.
                    let kept: Vec<_> = after.iter().filter(|(l, _)| *l == Level::ERROR).collect();
                    let gone = before
                        .iter()
                        .filter(|(l, _)| *l == Level::ERROR)
                        .filter(|line| !kept.contains(line));
                    for line in gone {
                        assert!(
                            kept.iter().all(|k| k.1 > line.1),
                            "{line:?} before {kept:?}"
                        );
                    }
                }
            }
        }
    }

    /// The lines held, with their levels, oldest first; and the bounds checked.
    fn contents(recent: &RecentLogs) -> Vec<(Level, String)> {
        let ring = recent.ring();
        let bytes: usize = ring.lines.iter().map(|(_, text)| text.len()).sum();
        assert_eq!(ring.bytes, bytes);
        assert!(
            ring.lines.len() <= ring.max_lines,
            "{} lines",
            ring.lines.len()
        );
        assert!(bytes <= ring.max_bytes, "{bytes} bytes");
        let errors = ring.lines.iter().filter(|(l, _)| *l == Level::ERROR);
        assert_eq!(ring.error_lines, errors.clone().count());
        assert_eq!(
            ring.error_bytes,
            errors.map(|(_, t)| t.len()).sum::<usize>()
        );
        ring.lines
            .iter()
            .map(|(level, text)| (*level, String::from_utf8_lossy(text).into_owned()))
            .collect()
    }

    /// A flood of large `warn` lines (refused requests with long paths) after the errors of an
    /// incident: the newest errors that fit in a quarter of each bound are still there.
    #[test]
    fn a_flood_of_other_levels_keeps_the_newest_error_lines() {
        // The line bound binds the reserve: 25 lines of 100, small lines.
        let recent = RecentLogs::new(100, 100_000, true);
        for i in 0..100 {
            recent.push(Level::ERROR, format!("{{\"error\":{i}}}").as_bytes());
        }
        let warn = |i: usize| format!("{{\"warn\":{i},\"path\":\"/{}\"}}", "a".repeat(3000));
        for i in 0..1000 {
            recent.push(Level::WARN, warn(i).as_bytes());
        }
        let held = contents(&recent);
        let errors: Vec<String> = recent
            .lines(1000, Some(Level::ERROR))
            .into_iter()
            .map(|line| line.text)
            .collect();
        let expected: Vec<String> = (75..100).map(|i| format!("{{\"error\":{i}}}")).collect();
        assert_eq!(errors, expected);
        // Oldest first: the errors, then the newest warnings that fit, in the order logged.
        let warns: Vec<String> = held[25..].iter().map(|(_, text)| text.clone()).collect();
        let first = 1000 - warns.len();
        assert_eq!(warns, (first..1000).map(warn).collect::<Vec<_>>());
        assert!(warns.len() > 20, "{} warnings", warns.len());
        assert_eq!(
            recent.lines(usize::MAX, None).len(),
            held.len(),
            "lines() returns what is held"
        );

        // The byte bound binds the reserve: 2500 of 10 000 bytes, error lines of about 500.
        let recent = RecentLogs::new(100, 10_000, true);
        let error = |i: usize| format!("{{\"error\":{i},\"pad\":\"{}\"}}", "e".repeat(480));
        for i in 0..40 {
            recent.push(Level::ERROR, error(i).as_bytes());
        }
        for i in 0..400 {
            recent.push(Level::WARN, &warn(i).as_bytes()[..1000]);
        }
        let held = contents(&recent);
        let errors: Vec<String> = held
            .iter()
            .filter(|(level, _)| *level == Level::ERROR)
            .map(|(_, text)| text.clone())
            .collect();
        let kept = 2500 / error(39).len();
        assert!(kept >= 4, "{kept}");
        assert_eq!(errors, (40 - kept..40).map(error).collect::<Vec<_>>());
        assert!(held[..kept].iter().all(|(level, _)| *level == Level::ERROR));
        assert!(held[kept..].iter().all(|(level, _)| *level == Level::WARN));
    }

    /// Errors among the warnings keep their place in time, and newer errors push out older
    /// ones: the reserve holds the newest.
    #[test]
    fn reserved_error_lines_stay_in_time_order_and_the_newest_win() {
        let recent = RecentLogs::new(8, 1000, true);
        // Reserve: 2 lines.
        for i in 0..20 {
            let level = if i % 5 == 0 {
                Level::ERROR
            } else {
                Level::INFO
            };
            recent.push(level, format!("{i}").as_bytes());
        }
        let texts: Vec<String> = contents(&recent)
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        // 10 and 15 are the newest errors; the 6 newest info lines fill the rest.
        assert_eq!(texts, ["10", "13", "14", "15", "16", "17", "18", "19"]);
        for i in 20..30 {
            recent.push(Level::ERROR, format!("{i}").as_bytes());
        }
        let texts: Vec<String> = contents(&recent)
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        assert_eq!(texts, ["22", "23", "24", "25", "26", "27", "28", "29"]);
        recent.push(Level::WARN, b"30");
        let texts: Vec<String> = contents(&recent)
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        assert_eq!(texts, ["23", "24", "25", "26", "27", "28", "29", "30"]);

        // A line of another level that does not fit beside the reserved errors is not kept.
        let small = RecentLogs::new(8, 100, true);
        small.push(Level::ERROR, &[b'e'; 20]);
        small.push(Level::INFO, &[b'i'; 90]);
        assert_eq!(contents(&small), [(Level::ERROR, "e".repeat(20))]);
        small.push(Level::ERROR, &[b'E'; 90]);
        assert_eq!(contents(&small), [(Level::ERROR, "E".repeat(90))]);
        // An error line pushes out a line of another level while the errors fit the reserve.
        let recent = RecentLogs::new(8, 1000, true);
        recent.push(Level::ERROR, b"E1");
        for _ in 0..7 {
            recent.push(Level::INFO, b"i");
        }
        recent.push(Level::ERROR, b"E2");
        for _ in 0..10 {
            recent.push(Level::WARN, b"w");
        }
        let errors: Vec<String> = recent
            .lines(10, Some(Level::ERROR))
            .into_iter()
            .map(|line| line.text)
            .collect();
        assert_eq!(errors, ["E1", "E2"]);
        // Past the reserve too: the errors eviction would keep leave no room, so nothing goes.
        let small = RecentLogs::new(5, 46, true);
        small.push(Level::ERROR, &[b'e'; 7]);
        small.push(Level::INFO, &[b'i'; 28]);
        small.push(Level::ERROR, &[b'E'; 11]);
        small.push(Level::DEBUG, &[b'd'; 37]);
        assert_eq!(
            contents(&small),
            [
                (Level::ERROR, "e".repeat(7)),
                (Level::INFO, "i".repeat(28)),
                (Level::ERROR, "E".repeat(11))
            ]
        );
        // Refused before anything is evicted for it: the lines already there stay.
        let small = RecentLogs::new(8, 100, true);
        small.push(Level::INFO, b"i1");
        small.push(Level::WARN, b"w2");
        small.push(Level::ERROR, &[b'e'; 20]);
        small.push(Level::INFO, &[b'i'; 90]);
        assert_eq!(
            contents(&small),
            [
                (Level::INFO, "i1".to_owned()),
                (Level::WARN, "w2".to_owned()),
                (Level::ERROR, "e".repeat(20))
            ]
        );
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

//! `/debug/logs?lines=N&level=L`: the most recent lines of the log buffer.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use periscope_error::Violation;
use periscope_log::RecentLogs;
use tracing::Level;

/// Lines answered when `lines` is not given.
pub const DEFAULT_LOG_LINES: usize = 100;
/// The most lines one request may ask for.
pub const MAX_LOG_LINES: usize = 1000;

/// The most problems one answer lists.
const MAX_VIOLATIONS: usize = 8;

/// What a `/debug/logs` request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LogsQuery {
    lines: usize,
    level: Option<Level>,
}

impl LogsQuery {
    /// Parses the query string, listing every parameter that is wrong.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, Vec<Violation>> {
        let mut parsed = LogsQuery {
            lines: DEFAULT_LOG_LINES,
            level: None,
        };
        let mut violations = Vec::new();
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty());
        let mut seen = (false, false);
        for pair in pairs {
            // A query of thousands of bad pairs gets a short answer, not one entry per pair.
            if violations.len() == MAX_VIOLATIONS {
                break;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Names are decoded like values: `%6Cevel` is `level` to any URL parser.
            let key = percent_decode_str(key).decode_utf8_lossy();
            let key = key.as_ref();
            let value = percent_decode_str(value).decode_utf8_lossy();
            // `lines=5&lines=500` is ambiguous: say so rather than pick one.
            let first = match key {
                "lines" => !std::mem::replace(&mut seen.0, true),
                "level" => !std::mem::replace(&mut seen.1, true),
                _ => true,
            };
            if !first {
                violations.push(Violation::new(
                    format!("query.{key}"),
                    "duplicate",
                    format!("{key} is given more than once: give it once"),
                ));
                continue;
            }
            match key {
                "lines" => match value.parse::<usize>() {
                    Ok(lines) if lines <= MAX_LOG_LINES => parsed.lines = lines,
                    _ => violations.push(Violation::new(
                        "query.lines",
                        "out_of_range",
                        format!("lines must be a whole number from 0 to {MAX_LOG_LINES}"),
                    )),
                },
                "level" => match parse_level(&value) {
                    Some(level) => parsed.level = Some(level),
                    None => violations.push(Violation::new(
                        "query.level",
                        "format",
                        "level must be one of error, warn, info, debug, trace",
                    )),
                },
                other => violations.push(Violation::new(
                    format!("query.{}", shorten(other)),
                    "unknown",
                    "unknown parameter: /debug/logs takes lines and level",
                )),
            }
        }
        if violations.is_empty() {
            Ok(parsed)
        } else {
            Err(violations)
        }
    }

    /// The answer: `{"buffered":N,"lines":[...]}`, oldest line first.
    pub(crate) fn answer(&self, recent: &RecentLogs) -> String {
        // The lines are JSON already (objects, or strings in the pretty format): splice the
        // array in rather than parse and re-encode up to a thousand lines.
        let lines = recent.to_json_array(self.lines, self.level);
        format!("{{\"buffered\":{},\"lines\":{lines}}}", recent.len())
    }
}

fn parse_level(text: &str) -> Option<Level> {
    match text.to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" | "warning" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

/// An unknown parameter name is echoed back; keep it short.
fn shorten(name: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if name.len() <= MAX {
        return Cow::Borrowed(name);
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &name[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_level_and_reports_every_problem() {
        assert_eq!(
            LogsQuery::parse(None),
            Ok(LogsQuery {
                lines: DEFAULT_LOG_LINES,
                level: None
            })
        );
        assert_eq!(
            LogsQuery::parse(Some("lines=5&level=WARN")),
            Ok(LogsQuery {
                lines: 5,
                level: Some(Level::WARN)
            })
        );
        assert_eq!(
            LogsQuery::parse(Some("level=%64ebug")).unwrap().level,
            Some(Level::DEBUG)
        );
        let problems = LogsQuery::parse(Some("lines=1001&level=loud&x=1")).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|v| v.field.as_ref()).collect();
        assert_eq!(fields, ["query.lines", "query.level", "query.x"]);
        assert!(LogsQuery::parse(Some("lines=-1")).is_err());
        assert!(LogsQuery::parse(Some("lines=")).is_err());
        let twice = LogsQuery::parse(Some("lines=2&lines=3&level=warn&level=warn")).unwrap_err();
        let reasons: Vec<(&str, &str)> = twice
            .iter()
            .map(|v| (v.field.as_ref(), v.reason.as_ref()))
            .collect();
        assert_eq!(
            reasons,
            [("query.lines", "duplicate"), ("query.level", "duplicate")]
        );
        let many = "x=1&".repeat(10_000);
        assert_eq!(
            LogsQuery::parse(Some(&many)).unwrap_err().len(),
            MAX_VIOLATIONS
        );
        let long = "k".repeat(500);
        let problems = LogsQuery::parse(Some(&long)).unwrap_err();
        assert!(problems[0].field.len() < 80);
    }
}

//! Prometheus text format 0.0.4, rewritten from prometheus-client's OpenMetrics output.
//!
//! prometheus-client only writes OpenMetrics. The two formats share their sample lines; what
//! differs is metadata and extras, so the rewrite is line by line:
//! - a counter family is named after its samples (`x_total`), as 0.0.4 has no suffix rules;
//! - `info` becomes a gauge named `x_info`, `unknown` becomes `untyped`;
//! - `# UNIT`, `# EOF` and exemplars (` # {trace_id="..."} 0.1`) are dropped;
//! - HELP text loses the `\"` escape, which 0.0.4 parsers refuse (a bare `"` is fine there).

/// Appends the 0.0.4 rendering of the OpenMetrics text `openmetrics` to `out`.
pub(crate) fn from_openmetrics(openmetrics: &str, out: &mut String) {
    out.reserve(openmetrics.len());
    // HELP comes before TYPE, and the family name depends on the type: hold HELP back.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                "gaugehistogram" => ("", "histogram"),
                "stateset" => ("", "gauge"),
                _ => ("", "untyped"),
            };
            if let Some((help_name, help)) = pending_help.take()
                && help_name == name
            {
                for part in ["# HELP ", name, suffix, " "] {
                    out.push_str(part);
                }
                push_unquoted(out, help);
                out.push('\n');
            }
            push_line(out, &["# TYPE ", name, suffix, " ", kind]);
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF` and any other comment: not part of 0.0.4.
        } else if !line.is_empty() {
            push_line(out, &[without_exemplar(line)]);
        }
    }
}

fn push_line(out: &mut String, parts: &[&str]) {
    for part in parts {
        out.push_str(part);
    }
    out.push('\n');
}

/// Appends OpenMetrics help text with `\"` written as `"`; `\\` and `\n` are kept, as
/// both formats escape them.
fn push_unquoted(out: &mut String, help: &str) {
    let mut rest = help;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        if let Some(after) = escape.strip_prefix("\\\"") {
            out.push('"');
            rest = after;
        } else {
            // `\\` or `\n`: copy both characters, so the next search starts after them.
            let end = escape
                .char_indices()
                .nth(2)
                .map_or(escape.len(), |(i, _)| i);
            out.push_str(&escape[..end]);
            rest = &escape[end..];
        }
    }
    out.push_str(rest);
}

/// The sample line up to its value, without the exemplar that may follow.
fn without_exemplar(line: &str) -> &str {
    // Most lines have no `#` at all: nothing to strip.
    if !line.contains('#') {
        return line;
    }
    // Skip the label set, whose quoted values may contain anything, `#` and `}` included.
    let bytes = line.as_bytes();
    let mut i = bytes
        .iter()
        .position(|&b| b == b'{' || b == b' ')
        .unwrap_or(bytes.len());
    if bytes.get(i) == Some(&b'{') {
        let mut in_quotes = false;
        let mut escaped = false;
        i += 1;
        while let Some(&b) = bytes.get(i) {
            i += 1;
            match b {
                _ if escaped => escaped = false,
                b'\\' if in_quotes => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b'}' if !in_quotes => break,
                _ => {}
            }
        }
    }
    match line.get(i..).and_then(|rest| rest.find(" # ")) {
        Some(at) => &line[..i + at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(openmetrics: &str) -> String {
        let mut out = String::new();
        from_openmetrics(openmetrics, &mut out);
        out
    }

    #[test]
    fn counters_take_the_sample_name_and_extras_are_dropped() {
        let om = "\
# HELP http_server_requests Requests.
# TYPE http_server_requests counter
http_server_requests_total{method=\"GET\"} 3
# HELP d_seconds Duration.
# TYPE d_seconds histogram
# UNIT d_seconds seconds
d_seconds_sum 0.5
d_seconds_count 1
d_seconds_bucket{le=\"0.5\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.5
d_seconds_bucket{le=\"+Inf\"} 1
# HELP build Build.
# TYPE build info
build_info{v=\"1\"} 1
# TYPE odd unknown
odd 1
# EOF
";
        assert_eq!(
            convert(om),
            "\
# HELP http_server_requests_total Requests.
# TYPE http_server_requests_total counter
http_server_requests_total{method=\"GET\"} 3
# HELP d_seconds Duration.
# TYPE d_seconds histogram
d_seconds_sum 0.5
d_seconds_count 1
d_seconds_bucket{le=\"0.5\"} 1
d_seconds_bucket{le=\"+Inf\"} 1
# HELP build_info Build.
# TYPE build_info gauge
build_info{v=\"1\"} 1
# TYPE odd untyped
odd 1
"
        );
    }

    #[test]
    fn label_values_that_look_like_exemplars_are_kept() {
        let line = r#"x_total{route="/a # {b} \" # }"} 7 # {trace_id="00"} 1"#;
        assert_eq!(
            without_exemplar(line),
            r#"x_total{route="/a # {b} \" # }"} 7"#
        );
        assert_eq!(without_exemplar("plain 1"), "plain 1");
        assert_eq!(without_exemplar("plain 1 # {a=\"b\"} 2"), "plain 1");
        assert_eq!(
            without_exemplar(r#"broken{a="unterminated"#),
            r#"broken{a="unterminated"#
        );
    }
}

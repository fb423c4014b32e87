//! Keeps the operations kit honest without promtool or Grafana: every metric a dashboard panel,
//! a rule or a runbook queries exists (in `deploy/metrics-catalogue.txt`, or as a recording rule),
//! with the labels it is queried by; every alert is tested and links to a runbook that exists;
//! the dashboard is valid JSON with its exemplar link to traces.
//!
//! `deploy/check.sh` runs the real tools (promtool check/test rules) on the same files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where every alert's `runbook_url` starts; the rest is a path in this repository.
const RUNBOOK_BASE: &str = "https://example.com/periscope/";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The files of `dir` (relative to the root) whose names end with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *{suffix} file in {dir}");
    found
}

// ---------------------------------------------------------------------------------------------
// The catalogue

struct Catalogue {
    /// Series name (histograms expanded to _bucket, _sum, _count) -> the labels it may carry.
    series: BTreeMap<String, BTreeSet<String>>,
    /// Labels Prometheus adds to every scraped series.
    target_labels: BTreeSet<String>,
}

impl Catalogue {
    fn load() -> Catalogue {
        let mut series = BTreeMap::new();
        let mut target_labels = BTreeSet::new();
        for (number, line) in read("deploy/metrics-catalogue.txt").lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let labels = |list: &str| -> BTreeSet<String> {
                list.split(',')
                    .filter(|l| *l != "-")
                    .map(str::to_owned)
                    .collect()
            };
            if fields[0] == "target-labels" {
                target_labels = labels(fields[1]);
                continue;
            }
            assert_eq!(
                fields.len(),
                3,
                "metrics-catalogue.txt line {}: expected NAME TYPE LABELS: {line}",
                number + 1
            );
            let (name, kind, own) = (fields[0], fields[1], labels(fields[2]));
            match kind {
                "histogram" => {
                    let mut with_le = own.clone();
                    with_le.insert("le".to_owned());
                    series.insert(format!("{name}_bucket"), with_le);
                    series.insert(format!("{name}_sum"), own.clone());
                    series.insert(format!("{name}_count"), own);
                }
                "counter" => {
                    assert!(
                        name.ends_with("_total"),
                        "counter {name} must end in _total"
                    );
                    series.insert(name.to_owned(), own);
                }
                "gauge" | "synthetic" => {
                    series.insert(name.to_owned(), own);
                }
                other => panic!("metrics-catalogue.txt: unknown type {other} for {name}"),
            }
        }
        assert!(
            !target_labels.is_empty(),
            "the catalogue lists no target-labels"
        );
        Catalogue {
            series,
            target_labels,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rule files: the small YAML subset the rule files are written in (one key per line, `expr` on
// one line or as a `|` block).

#[derive(Debug)]
struct Rule {
    file: String,
    /// `record` or `alert`.
    kind: &'static str,
    name: String,
    expr: String,
    runbook_url: Option<String>,
}

fn parse_rules(file: &str) -> Vec<Rule> {
    let text = read(file);
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((kind, name)) = trimmed
            .strip_prefix("- record: ")
            .map(|n| ("record", n))
            .or_else(|| trimmed.strip_prefix("- alert: ").map(|n| ("alert", n)))
        {
            rules.push(Rule {
                file: file.to_owned(),
                kind,
                name: name.trim().to_owned(),
                expr: String::new(),
                runbook_url: None,
            });
        } else if let Some(value) = trimmed.strip_prefix("expr: ") {
            let rule = rules.last_mut().expect("expr before any rule");
            if value.trim() == "|" {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                rule.expr = block.join("\n");
            } else {
                rule.expr = value.trim().trim_matches(['"', '\'']).to_owned();
            }
        } else if let Some(value) = trimmed.strip_prefix("runbook_url: ") {
            let rule = rules.last_mut().expect("runbook_url before any rule");
            rule.runbook_url = Some(value.trim().trim_matches(['"', '\'']).to_owned());
        }
        i += 1;
    }
    // The line parser must not miss a rule written in another style.
    let declared = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- record:") || t.starts_with("- alert:")
        })
        .count();
    assert_eq!(
        declared,
        rules.len(),
        "{file}: rules the parser could not read"
    );
    for rule in &rules {
        assert!(
            !rule.expr.trim().is_empty(),
            "{file}: {} has no expr",
            rule.name
        );
    }
    rules
}

fn all_rules() -> Vec<Rule> {
    files("deploy/prometheus", ".yml")
        .iter()
        .flat_map(|f| parse_rules(f))
        .collect()
}

/// The labels a recorded series keeps, from the level of its name (`job_route:...` keeps job
/// and route), as the level:metric:operations convention says.
fn level_labels(record: &str) -> BTreeSet<String> {
    let level = record.split(':').next().unwrap_or_default();
    level.split('_').map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names, selector labels and grouping labels of an expression.

#[derive(Debug, Default)]
struct QueryNames {
    /// (metric name, labels of its selector's matchers).
    selectors: Vec<(String, Vec<String>)>,
    /// Labels of selectors without a metric name (`{job="x"}`).
    bare_matchers: Vec<String>,
    /// Labels in by / without / on / ignoring / group_left / group_right lists.
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads an identifier at `i`; returns it and the index after it.
fn ident_at(chars: &[char], i: usize) -> (String, usize) {
    let mut end = i;
    while end < chars.len() && is_ident(chars[end]) {
        end += 1;
    }
    (chars[i..end].iter().collect(), end)
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Index just after the string literal that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// The label names of the matchers in the `{...}` that starts at `i`, and the index after it.
fn matchers_at(chars: &[char], i: usize) -> (Vec<String>, usize) {
    let mut labels = Vec::new();
    let mut j = i + 1;
    loop {
        j = skip_space(chars, j);
        match chars.get(j) {
            None => panic!("unclosed {{ in {}", chars.iter().collect::<String>()),
            Some('}') => return (labels, j + 1),
            Some(',') => j += 1,
            Some('"') | Some('\'') | Some('`') => j = skip_string(chars, j),
            Some(&c) if is_ident_start(c) => {
                let (label, end) = ident_at(chars, j);
                labels.push(label);
                j = end;
                // The operator, then the value.
                j = skip_space(chars, j);
                while j < chars.len() && matches!(chars[j], '=' | '!' | '~') {
                    j += 1;
                }
                j = skip_space(chars, j);
                if matches!(chars.get(j), Some('"') | Some('\'') | Some('`')) {
                    j = skip_string(chars, j);
                }
            }
            Some(c) => panic!(
                "unexpected {c:?} in a selector of {}",
                chars.iter().collect::<String>()
            ),
        }
    }
}

/// The names in the `(a, b)` list that starts at `i` (after whitespace), and the index after it.
fn label_list_at(chars: &[char], i: usize) -> (Vec<String>, usize) {
    let mut j = skip_space(chars, i);
    if chars.get(j) != Some(&'(') {
        return (Vec::new(), j); // group_left without a list
    }
    let mut labels = Vec::new();
    j += 1;
    while j < chars.len() && chars[j] != ')' {
        if is_ident_start(chars[j]) {
            let (label, end) = ident_at(chars, j);
            labels.push(label);
            j = end;
        } else {
            j += 1;
        }
    }
    (labels, j + 1)
}

fn promql_names(expr: &str) -> QueryNames {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = QueryNames::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            // Range or subquery: durations and dashboard variables, no names.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A dashboard variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                i = ident_at(&chars, i).1;
            }
        } else if c == '{' {
            let (labels, end) = matchers_at(&chars, i);
            names.bare_matchers.extend(labels);
            i = end;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (1e6, 0.001, 15m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let (word, end) = ident_at(&chars, i);
            let after = skip_space(&chars, end);
            if GROUPING.contains(&word.as_str()) {
                let (labels, next) = label_list_at(&chars, end);
                names.grouping.extend(labels);
                i = next;
            } else if AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
                || chars.get(after) == Some(&'(')
            {
                i = end; // an operator, a keyword or a function
            } else if chars.get(after) == Some(&'{') {
                let (labels, next) = matchers_at(&chars, after);
                names.selectors.push((word, labels));
                i = next;
            } else {
                names.selectors.push((word, Vec::new()));
                i = end;
            }
        } else {
            i += 1;
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Checking queries against the catalogue and the recording rules

struct Known {
    catalogue: Catalogue,
    /// Recording rule name -> labels its series keep.
    recorded: BTreeMap<String, BTreeSet<String>>,
    /// Every label any known series can carry.
    all_labels: BTreeSet<String>,
}

impl Known {
    fn load() -> Known {
        let catalogue = Catalogue::load();
        let recorded: BTreeMap<String, BTreeSet<String>> = all_rules()
            .iter()
            .filter(|r| r.kind == "record")
            .map(|r| (r.name.clone(), level_labels(&r.name)))
            .collect();
        let mut all_labels: BTreeSet<String> = catalogue.target_labels.clone();
        all_labels.extend(catalogue.series.values().flatten().cloned());
        all_labels.extend(recorded.values().flatten().cloned());
        Known {
            catalogue,
            recorded,
            all_labels,
        }
    }

    /// What is wrong with `expr`, one line per problem; `origin` says where it came from.
    fn problems(&self, origin: &str, expr: &str) -> Vec<String> {
        let names = promql_names(expr);
        let mut problems = Vec::new();
        for (metric, labels) in &names.selectors {
            let allowed: BTreeSet<String> = if let Some(own) = self.catalogue.series.get(metric) {
                own.union(&self.catalogue.target_labels).cloned().collect()
            } else if let Some(kept) = self.recorded.get(metric) {
                kept.clone()
            } else {
                problems.push(format!(
                    "{origin}: {metric} is neither in deploy/metrics-catalogue.txt nor a recording rule"
                ));
                continue;
            };
            for label in labels {
                if !allowed.contains(label) {
                    problems.push(format!("{origin}: {metric} has no label {label}"));
                }
            }
        }
        for label in names.grouping.iter().chain(&names.bare_matchers) {
            if !self.all_labels.contains(label) {
                problems.push(format!("{origin}: no known series has the label {label}"));
            }
        }
        problems
    }
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> serde_json::Value {
    let text = read("deploy/grafana/periscope-dashboard.json");
    serde_json::from_str(&text).expect("periscope-dashboard.json is not valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut found = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        found.push(panel);
    }
    found
}

fn datasource_type<'a>(target: &'a serde_json::Value, panel: &'a serde_json::Value) -> &'a str {
    target["datasource"]["type"]
        .as_str()
        .or_else(|| panel["datasource"]["type"].as_str())
        .unwrap_or("prometheus")
}

/// (where, PromQL) for every Prometheus query of the dashboard, variables included.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if datasource_type(target, panel) != "prometheus" {
                continue;
            }
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            queries.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let definition = variable["definition"]
            .as_str()
            .expect("query variable without definition");
        // label_values(SELECTOR, LABEL): check the selector, and LABEL as a grouping label.
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("variable {name}: only label_values(...) is checked: {definition}")
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        queries.push((
            format!("variable {name}"),
            format!("{} by ({})", selector.trim(), label.trim()),
        ));
    }
    queries
}

// ---------------------------------------------------------------------------------------------
// Markdown: runbooks' PromQL, headings and links

fn runbooks() -> Vec<String> {
    files("docs/runbooks", ".md")
}

/// The lines of the ```promql fenced blocks of a Markdown file.
fn promql_blocks(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed == "```promql";
            continue;
        }
        if inside && !trimmed.is_empty() {
            lines.push(trimmed.to_owned());
        }
    }
    lines
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(slug(line.trim_start_matches('#')));
        }
    }
    found
}

/// `path#anchor` as its two parts.
fn split_anchor(target: &str) -> (&str, Option<&str>) {
    match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    }
}

/// Checks that `path#anchor` (relative to the repository root) exists.
fn check_target(origin: &str, path: &Path, anchor: Option<&str>) -> Option<String> {
    let full = root().join(path);
    if !full.exists() {
        return Some(format!("{origin}: {} does not exist", path.display()));
    }
    let anchor = anchor?;
    let text = fs::read_to_string(&full).ok()?;
    (!anchors(&text).contains(anchor))
        .then(|| format!("{origin}: {} has no heading #{anchor}", path.display()))
}

/// The relative link targets `[text](target)` of a Markdown file.
fn relative_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if !target.contains("://") && !target.starts_with("mailto:") {
            links.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    links
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn promql_names_reads_selectors_grouping_and_skips_the_rest() {
    let names = promql_names(
        r#"sum by (job, route) (rate(http_server_requests_total{job=~"$job", status=~"5.."}[$__rate_interval] offset 1h))
           / on (job) group_left (version) service_info > bool 0.5 * 1e3 or vector(1)"#,
    );
    assert_eq!(
        names.selectors,
        vec![
            (
                "http_server_requests_total".to_owned(),
                vec!["job".to_owned(), "status".to_owned()]
            ),
            ("service_info".to_owned(), vec![]),
        ]
    );
    assert_eq!(names.grouping, ["job", "route", "job", "version"]);

    let names = promql_names(r#"count({job="x"}) + time() - process_start_time_seconds"#);
    assert_eq!(names.bare_matchers, ["job"]);
    assert_eq!(
        names.selectors,
        vec![("process_start_time_seconds".to_owned(), vec![])]
    );
}

#[test]
fn the_checker_reports_unknown_metrics_and_labels() {
    let known = Known::load();
    let problems = known.problems(
        "example",
        r#"sum by (rout) (rate(http_server_request_total{code="500"}[5m])) + http_server_requests_total{code="500"}
           + job_route:http_server_requests:rate5m{status="5xx"}"#,
    );
    assert_eq!(
        problems,
        [
            "example: http_server_request_total is neither in deploy/metrics-catalogue.txt nor a recording rule",
            "example: http_server_requests_total has no label code",
            "example: job_route:http_server_requests:rate5m has no label status",
            "example: no known series has the label rout",
        ]
    );
}

#[test]
fn every_rule_expression_queries_catalogued_metrics_and_labels() {
    let known = Known::load();
    let rules = all_rules();
    assert!(rules.iter().any(|r| r.kind == "record") && rules.iter().any(|r| r.kind == "alert"));
    assert_no_problems(
        rules
            .iter()
            .flat_map(|r| known.problems(&format!("{} {} {}", r.file, r.kind, r.name), &r.expr))
            .collect(),
    );
}

#[test]
fn recording_rules_follow_the_level_metric_operations_convention() {
    let mut problems = Vec::new();
    for rule in all_rules().iter().filter(|r| r.kind == "record") {
        let parts: Vec<&str> = rule.name.split(':').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            problems.push(format!("{}: not level:metric:operations", rule.name));
            continue;
        }
        // Every aggregation keeps exactly the labels the level names.
        let level = level_labels(&rule.name);
        let grouping = promql_names(&rule.expr).grouping;
        for chunk in rule.expr.split(" by (").skip(1) {
            let list: BTreeSet<String> = chunk
                .split(')')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect();
            if list != level {
                problems.push(format!(
                    "{}: aggregates by {list:?}, its level says {level:?}",
                    rule.name
                ));
            }
        }
        if grouping.is_empty() && !rule.expr.contains(':') {
            problems.push(format!(
                "{}: neither aggregates nor reads a recorded series",
                rule.name
            ));
        }
    }
    assert_no_problems(problems);
}

#[test]
fn every_alert_links_to_an_existing_runbook_section() {
    let mut problems = Vec::new();
    let alerts: Vec<Rule> = all_rules()
        .into_iter()
        .filter(|r| r.kind == "alert")
        .collect();
    assert!(
        alerts.len() >= 9,
        "expected the full alert set, found {}",
        alerts.len()
    );
    for alert in &alerts {
        let origin = format!("alert {}", alert.name);
        let Some(url) = &alert.runbook_url else {
            problems.push(format!("{origin}: no runbook_url annotation"));
            continue;
        };
        let Some(relative) = url.strip_prefix(RUNBOOK_BASE) else {
            problems.push(format!(
                "{origin}: runbook_url {url} does not start with {RUNBOOK_BASE}"
            ));
            continue;
        };
        let (path, anchor) = split_anchor(relative);
        if !path.starts_with("docs/runbooks/") {
            problems.push(format!(
                "{origin}: runbook_url {url} is not under docs/runbooks/"
            ));
        }
        problems.extend(check_target(&origin, Path::new(path), anchor));
    }
    assert_no_problems(problems);
}

#[test]
fn every_rule_has_a_promtool_unit_test() {
    let tests: Vec<String> = files("deploy/prometheus/tests", ".yml")
        .iter()
        .map(|f| read(f))
        .collect();
    let tested_alerts: BTreeSet<&str> = tests
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .map(str::trim)
        .collect();
    let expr_lines: Vec<&str> = tests
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| l.trim_start().starts_with("- expr:"))
        .collect();
    let mut problems = Vec::new();
    for rule in all_rules() {
        let tested = match rule.kind {
            "alert" => tested_alerts.contains(rule.name.as_str()),
            _ => expr_lines.iter().any(|l| {
                // The exact name, not a longer one that starts with it.
                l.match_indices(&rule.name)
                    .any(|(at, _)| !l[at + rule.name.len()..].starts_with(|c: char| is_ident(c)))
            }),
        };
        if !tested {
            problems.push(format!(
                "{} {} has no test in deploy/prometheus/tests",
                rule.kind, rule.name
            ));
        }
    }
    assert_no_problems(problems);
}

#[test]
fn the_dashboard_queries_only_catalogued_metrics_and_recording_rules() {
    let known = Known::load();
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() > 30,
        "expected the full dashboard, found {} queries",
        queries.len()
    );
    assert_no_problems(
        queries
            .iter()
            .flat_map(|(origin, expr)| known.problems(origin, expr))
            .collect(),
    );
}

#[test]
fn the_dashboard_uses_every_red_recording_rule_and_covers_each_family() {
    let dashboard = dashboard();
    let all: String = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, expr)| expr)
        .collect::<Vec<_>>()
        .join("\n");
    let mut missing: Vec<String> = all_rules()
        .into_iter()
        .filter(|r| r.kind == "record" && r.name.starts_with("job_route"))
        .filter(|r| !r.name.ends_with("_bucket:rate5m")) // an input of the quantiles only
        .map(|r| r.name)
        .filter(|name| !all.contains(name.as_str()))
        .collect();
    for family in [
        "health_check_status",
        "process_resident_memory_bytes",
        "gpu_memory_used_bytes",
        "gpu_collector_up",
        "gpu_temperature_celsius",
        "service_info",
        "periscope_label_overflow_total",
    ] {
        if !all.contains(family) {
            missing.push(family.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard does not show {missing:?}"
    );
}

#[test]
fn the_latency_panel_links_exemplars_to_traces_in_the_chosen_tempo() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "tempo" && v["type"] == "datasource" && v["query"] == "tempo"),
        "no Tempo datasource variable named tempo"
    );
    let exemplar_panels: Vec<&serde_json::Value> = panels(&dashboard)
        .into_iter()
        .filter(|p| {
            p["targets"].as_array().into_iter().flatten().any(|t| {
                t["exemplar"] == true
                    && t["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains("http_server_request_duration_seconds_bucket"))
            })
        })
        .collect();
    assert_eq!(
        exemplar_panels.len(),
        1,
        "one latency panel queries the raw buckets with exemplars"
    );
    let links = exemplar_panels[0]["fieldConfig"]["defaults"]["links"]
        .as_array()
        .expect("the exemplar panel has data links");
    assert!(
        links
            .iter()
            .any(|l| l["url"].as_str().is_some_and(|u| u.contains("${tempo}"))),
        "the latency panel's link does not go to the ${{tempo}} datasource"
    );
    // The exemplar dots link to traces through the Prometheus datasource's configuration.
    let datasources = read("deploy/grafana/provisioning/datasources.yml");
    assert!(datasources.contains("exemplarTraceIdDestinations:"));
    assert!(datasources.contains("- name: trace_id"));
}

#[test]
fn runbook_queries_use_catalogued_metrics_and_links_resolve() {
    let known = Known::load();
    let mut problems = Vec::new();
    let mut promql = 0;
    for file in runbooks() {
        let text = read(&file);
        for expr in promql_blocks(&text) {
            promql += 1;
            problems.extend(known.problems(&file, &expr));
        }
        for link in relative_links(&text) {
            let (path, anchor) = split_anchor(&link);
            let target = if path.is_empty() {
                PathBuf::from(&file)
            } else {
                Path::new(&file).parent().unwrap().join(path)
            };
            problems.extend(check_target(
                &format!("{file} link {link}"),
                &target,
                anchor,
            ));
        }
    }
    assert!(
        promql > 20,
        "expected the runbooks' PromQL, found {promql} queries"
    );
    assert_no_problems(problems);
}

#[test]
fn the_runbook_index_lists_every_runbook_and_alert() {
    let index = read("docs/runbooks/README.md");
    let mut missing: Vec<String> = runbooks()
        .iter()
        .filter_map(|f| f.strip_prefix("docs/runbooks/"))
        .filter(|name| *name != "README.md" && !index.contains(&format!("]({name})")))
        .map(str::to_owned)
        .collect();
    missing.extend(
        all_rules()
            .into_iter()
            .filter(|r| r.kind == "alert" && !index.contains(&format!("`{}`", r.name)))
            .map(|r| r.name),
    );
    assert!(
        missing.is_empty(),
        "docs/runbooks/README.md does not list {missing:?}"
    );
}

#[test]
fn the_deployment_probes_and_scrapes_the_served_paths() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    for path in ["path: /health", "path: /ready", "path: /startup"] {
        assert!(
            deployment.contains(path),
            "deployment.yaml has no probe with {path}"
        );
    }
    for probe in [
        "startupProbe:",
        "livenessProbe:",
        "readinessProbe:",
        "resources:",
        "name: admin",
    ] {
        assert!(deployment.contains(probe), "deployment.yaml has no {probe}");
    }
    // Every interface, IPv6 and IPv4: the pod's IP is IPv6 on an IPv6 or IPv6-first cluster.
    assert!(deployment.contains("- name: HOST\n              value: \"::\""));
    // The pod scrape job's targets of one pod (one per container port, sidecars included)
    // end with the same labels, so Prometheus scrapes the pod once: no label of the
    // container's may tell them apart.
    let pods = read("deploy/kubernetes/prometheus-scrape-annotations.yaml");
    assert!(!pods.contains("__meta_kubernetes_pod_container"));
    // The scrape annotation's port is the container's http port.
    assert!(deployment.contains("prometheus.io/port: \"8000\""));
    assert!(deployment.contains("- name: http\n              containerPort: 8000"));
    // The ServiceMonitor scrapes a port the Service names, and job is the service's name.
    let service = read("deploy/kubernetes/service.yaml");
    let monitor = read("deploy/kubernetes/servicemonitor.yaml");
    assert!(monitor.contains("- port: http") && service.contains("- name: http"));
    assert!(monitor.contains("jobLabel: app.kubernetes.io/name"));
    assert!(deployment.contains("name: SERVICE_NAME\n              value: inference-gateway"));
}

/// Grafana reads `$NAME` and `${NAME}` in a provisioning file as environment variables, empty
/// when unset: a Grafana variable there (`${__trace.traceId}`, `${__value.raw}`) must be written
/// `$$`, or the link it builds loses it (a trace's log query matching every line).
#[test]
fn grafana_provisioning_escapes_grafana_variables() {
    let mut problems = Vec::new();
    for file in files("deploy/grafana/provisioning", ".yml") {
        for (number, line) in read(&file).lines().enumerate() {
            // Values are read after the YAML is parsed: comments are not.
            if line.trim_start().starts_with('#') {
                continue;
            }
            let bytes = line.as_bytes();
            for (at, _) in line.match_indices('$') {
                let escaped = (at > 0 && bytes[at - 1] == b'$') || bytes.get(at + 1) == Some(&b'$');
                if !escaped && line[at + 1..].starts_with(['{', '_']) {
                    problems.push(format!("{file}:{}: unescaped `$` in {line}", number + 1));
                }
            }
        }
    }
    assert_no_problems(problems);
}

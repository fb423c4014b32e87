//! Shared test helpers: scrape a collector through a real prometheus-client registry and
//! parse the exposition text back.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use periscope_gpu::GpuCollector;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// One sample line of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: sample lines and the `# TYPE` / `# UNIT` metadata by family.
#[derive(Debug, Default)]
pub struct Exposition {
    pub lines: Vec<Line>,
    pub types: HashMap<String, String>,
    pub units: HashMap<String, String>,
}

impl Exposition {
    pub fn named(&self, name: &str) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.name == name).collect()
    }

    /// The one line with this name and these labels (a subset match).
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Line> {
        self.lines.iter().find(|l| {
            l.name == name
                && labels
                    .iter()
                    .all(|(k, v)| l.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(|l| l.value)
    }

    pub fn has_family(&self, name: &str) -> bool {
        self.lines.iter().any(|l| l.name.starts_with(name))
    }
}

/// Registers the collector in a fresh registry, encodes it and parses the text back.
pub fn scrape(collector: &GpuCollector) -> (String, Exposition) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector.clone()));
    let mut text = String::new();
    encode(&mut text, &registry).expect("encoding never fails");
    let parsed = parse(&text);
    (text, parsed)
}

/// A strict parser for the OpenMetrics text prometheus-client writes; panics on anything
/// malformed so a broken line fails the test.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    assert!(
        text.ends_with("# EOF\n"),
        "exposition must end with # EOF: {text}"
    );
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("UNIT line");
            out.units.insert(name.to_owned(), unit.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        out.lines.push(parse_sample(line));
    }
    out
}

fn parse_sample(line: &str) -> Line {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name {name:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().expect("unterminated label set");
            match c {
                '}' => {
                    rest = &after[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value quote");
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next().expect("unterminated label value");
                        match c {
                            '"' => break,
                            '\\' => match chars.next().expect("escape").1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    let previous = labels.insert(std::mem::take(&mut key), value);
                    assert!(previous.is_none(), "duplicate label in {line}");
                }
                other => key.push(other),
            }
        }
    }
    let value = rest
        .trim()
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
    Line {
        name: name.to_owned(),
        labels,
        value,
    }
}

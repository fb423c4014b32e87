//! `/debug/config`: the service's configuration with its secrets masked, once, when the admin
//! service is built (the unmasked value is not kept).
//!
//! Masked: the value of every key the log crate's [`Redactor`] finds sensitive (`password`,
//! `token`, `api_key`, ... at any depth), and inside any string holding URLs, the password of
//! `scheme://user:password@host` and the values of sensitive query parameters
//! (`?api_key=...`), since connection strings rarely sit under a sensitive key.

use periscope_log::{REDACTED, Redactor};
use serde_json::Value;

/// The masked configuration, encoded.
pub(crate) fn masked(mut config: Value, redactor: &Redactor) -> Result<Vec<u8>, serde_json::Error> {
    redactor.redact_value(&mut config);
    mask_urls_in(&mut config, redactor);
    serde_json::to_vec(&config)
}

fn mask_urls_in(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(text) => {
            if let Some(masked) = mask_urls(text, redactor) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_urls_in(v, redactor)),
        Value::Object(map) => map.values_mut().for_each(|v| mask_urls_in(v, redactor)),
        _ => {}
    }
}

/// Separates URLs in a list (`redis://a,redis://b`, space separated hosts, ...).
fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == ',' || c == ';'
}

/// `text` with the secrets of its URLs masked, or `None` when nothing needed masking.
pub(crate) fn mask_urls(text: &str, redactor: &Redactor) -> Option<String> {
    if !text.contains("://") {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for piece in text.split_inclusive(is_separator) {
        let (url, separator) = match piece.char_indices().last() {
            Some((at, c)) if is_separator(c) => piece.split_at(at),
            _ => (piece, ""),
        };
        match mask_url(url, redactor) {
            Some(masked) => {
                out.push_str(&masked);
                changed = true;
            }
            None => out.push_str(url),
        }
        out.push_str(separator);
    }
    changed.then_some(out)
}

/// One URL with its userinfo password and sensitive query values masked.
fn mask_url(url: &str, redactor: &Redactor) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (rest, fragment) = split_keep(rest, '#');
    let (rest, query) = split_keep(rest, '?');
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let mut changed = false;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => {
                changed = true;
                format!("{user}:{REDACTED}@{host}")
            }
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|query| {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if redactor.is_sensitive(key) => {
                    changed = true;
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    if !changed {
        return None;
    }
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(&query);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

/// `text` before the first `at`, and what follows it when present.
fn split_keep(text: &str, at: char) -> (&str, Option<&str>) {
    match text.split_once(at) {
        Some((before, after)) => (before, Some(after)),
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_sensitive_keys_and_url_secrets_at_any_depth() {
        let config = json!({
            "database": {"url": "postgres://app:hunter2@db:5432/app?sslmode=require", "password": "hunter2"},
            "redis": ["redis://:s3cret@a:6379,redis://:s3cret@b:6379"],
            "webhook": "https://hooks.example/x?api_key=abc123&team=core#frag",
            "openai_api_key": "sk-live-123",
            "plain": "https://example.com/path",
            "port": 8000,
        });
        let text = String::from_utf8(masked(config, &Redactor::default()).unwrap()).unwrap();
        for secret in ["hunter2", "s3cret", "abc123", "sk-live-123"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["database"]["url"],
            "postgres://app:[REDACTED]@db:5432/app?sslmode=require"
        );
        assert_eq!(value["database"]["password"], REDACTED);
        assert_eq!(
            value["redis"][0],
            "redis://:[REDACTED]@a:6379,redis://:[REDACTED]@b:6379"
        );
        assert_eq!(
            value["webhook"],
            "https://hooks.example/x?api_key=[REDACTED]&team=core#frag"
        );
        assert_eq!(value["plain"], "https://example.com/path");
        assert_eq!(value["port"], 8000);
    }

    #[test]
    fn leaves_text_without_url_secrets_alone() {
        let redactor = Redactor::default();
        assert_eq!(mask_urls("no url here", &redactor), None);
        assert_eq!(mask_urls("http://user@host/x", &redactor), None);
        assert_eq!(mask_urls("://weird", &redactor), None);
    }
}

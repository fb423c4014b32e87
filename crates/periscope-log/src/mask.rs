//! Masking the secrets of configuration values and free text shown to operators: the values
//! of sensitive keys (by [`Redactor::is_sensitive`]), the password of `scheme://user:password@host`
//! and the values of sensitive query parameters (`?api_key=...`), sensitive `key=value` pairs,
//! credential headers quoted in a text, and JSON held in a string, masked inside as the log
//! lines mask it.

use serde_json::Value;

use crate::{REDACTED, Redactor};

impl Redactor {
    /// Masks `value` in place: the value of every sensitive key at any depth, then the secrets
    /// inside every string (see [`mask_text`](Self::mask_text)). For a configuration or a
    /// status document shown to operators, whose connection strings rarely sit under a
    /// sensitive key.
    ///
    /// ```
    /// use periscope_log::Redactor;
    ///
    /// let mut config = serde_json::json!({
    ///     "database": "postgres://app:hunter2@db:5432/app",
    ///     "api_key": "sk-live-123",
    /// });
    /// Redactor::default().mask_value(&mut config);
    /// assert_eq!(config["database"], "postgres://app:[REDACTED]@db:5432/app");
    /// assert_eq!(config["api_key"], "[REDACTED]");
    /// ```
    pub fn mask_value(&self, value: &mut Value) {
        self.mask_structured(value);
        mask_option_lists(value, self);
    }

    /// [`mask_value`](Self::mask_value) but for command lines kept as lists: also the JSON
    /// found in free text, whose argument lists `mask_text` masks in place, as written.
    fn mask_structured(&self, value: &mut Value) {
        self.redact_value(value);
        mask_urls_in(value, self);
    }

    /// `text` with its secrets masked, or `None` when it holds none: the password of
    /// `scheme://user:password@host` (the user too when alone: a token), the values of
    /// sensitive query parameters (`?api_key=`) and `key=value` pairs (libpq's `password=`,
    /// ADO's `Password=...;`), of credential headers quoted in it (`Authorization: Bearer ...`,
    /// `Cookie: ...`, `X-Vault-Token: ...`, to the end of the line), of `password: ...` (after
    /// a `:`, only a password's own name counts), and of the sensitive keys of JSON in it (a
    /// whole document, a body quoted in an error: `failed: {"password": ...}`, or one cut
    /// short or with escaped quotes). For free text that may hold a connection string: an error message, a
    /// value that failed to parse. In free text a sensitive key names a secret (`db_password`,
    /// `api_token`, `credentials`, `session_id`, `secret_key_base`, `db_password_2`) unless what
    /// follows its last sensitive word says it is about a secret, not one: `token_count=12`,
    /// `tokenizer=llama3`, `password_min_length=8` and `secret_name=x` stay.
    /// Also masked: URL signature parameters (`periscope_context::SIGNATURE_QUERY_PARAMS`:
    /// `sig`, `X-Amz-Signature`, ...), a webhook's path secret (`hooks.slack.com`,
    /// `/webhooks/`), `--password <value>` options, ODBC's `Pwd=` and Azure's `AccountKey=` and
    /// `SharedAccessKey=` in a `;`-separated connection string, and keys whose last word is
    /// `auth` or `pass`.
    ///
    /// ```
    /// use periscope_log::Redactor;
    ///
    /// let redactor = Redactor::default();
    /// assert_eq!(
    ///     redactor.mask_text("connect to postgres://app:pa/ss@db/app failed").as_deref(),
    ///     Some("connect to postgres://app:[REDACTED]@db/app failed")
    /// );
    /// assert_eq!(
    ///     redactor.mask_text("host=db password=hunter2").as_deref(),
    ///     Some("host=db password=[REDACTED]")
    /// );
    /// assert_eq!(redactor.mask_text("timed out after 2s"), None);
    /// ```
    pub fn mask_text(&self, text: &str) -> Option<String> {
        if let Some(masked) = mask_json_in(text, self) {
            return Some(masked);
        }
        let mut masked: Option<String> = None;
        // JSON and quoted pairs first, while their quotes and commas are intact: the later
        // steps mask a value to the next whitespace, which may run over them.
        let steps: [fn(&str, &Redactor) -> Option<String>; 6] = [
            mask_json_objects_within,
            mask_quoted_pairs,
            mask_urls,
            mask_key_values,
            mask_flag_values,
            mask_secret_headers,
        ];
        for step in steps {
            if let Some(next) = step(masked.as_deref().unwrap_or(text), self) {
                masked = Some(next);
            }
        }
        masked
    }
}

/// A text rebuilt with some of its ranges replaced, left to right.
struct Splice<'a> {
    text: &'a str,
    out: String,
    /// Where the text is copied up to.
    copied: usize,
}

impl<'a> Splice<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            out: String::new(),
            copied: 0,
        }
    }

    /// Replaces `start..end` (after what was replaced before) with `with`.
    fn replace(&mut self, start: usize, end: usize, with: &str) {
        self.out.push_str(&self.text[self.copied..start]);
        self.out.push_str(with);
        self.copied = end;
    }

    /// The text rebuilt, or `None` when nothing was replaced.
    fn finish(mut self) -> Option<String> {
        if self.copied == 0 {
            return None;
        }
        self.out.push_str(&self.text[self.copied..]);
        Some(self.out)
    }
}

/// Headers whose value is a credential, as error texts quote them (`Authorization: Bearer x`).
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// `text` with the value of every `Header: value` of a [`SECRET_HEADERS`] name masked, to the
/// end of its line (or a closing quote), or `None` when there is none.
fn mask_secret_headers(text: &str, redactor: &Redactor) -> Option<String> {
    let bytes = text.as_bytes();
    let mut splice = Splice::new(text);
    for (colon, _) in text.match_indices(':') {
        if colon < splice.copied {
            continue;
        }
        let name_start = bytes[..colon]
            .iter()
            .rposition(|&b| !(b.is_ascii_alphanumeric() || b == b'-'))
            .map_or(0, |at| at + 1);
        let name = &text[name_start..colon];
        // A header name of several words ending in a credential's name (`X-Vault-Token`,
        // `Private-Token`, `X-Secret-Key`); not `tower-sessions:` or `...-Allow-Credentials`.
        let last_word = name.rsplit('-').next().unwrap_or_default();
        let secret_name = SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
            || (name.contains('-')
                && ["token", "key", "secret", "password", "apikey"]
                    .iter()
                    .any(|word| word.eq_ignore_ascii_case(last_word))
                && redactor.names_a_secret(name));
        if !secret_name {
            continue;
        }
        let mut value_start =
            colon + 1 + (text[colon + 1..].len() - text[colon + 1..].trim_start_matches(' ').len());
        // A quoted value (`Authorization: "Bearer x"`) runs to its closing quote.
        let quoted = text[value_start..].starts_with('"');
        if quoted {
            value_start += 1;
        }
        if text[value_start..].starts_with(REDACTED) {
            continue;
        }
        let value_end = text[value_start..]
            .find(['\n', '\r', '"'])
            .map_or(text.len(), |end| value_start + end);
        if value_end == value_start {
            continue;
        }
        splice.replace(value_start, value_end, REDACTED);
    }
    splice.finish()
}

/// How many bytes the search for JSON in a text may read, per byte of the text: enough for
/// every bracketed span of ordinary text, while a text of many unclosed brackets, each read to
/// the end, stays linear.
const JSON_SCAN_PER_BYTE: usize = 8;
/// The least it may read, whatever the text's length: a short text may nest brackets deeply.
const MIN_JSON_SCAN: usize = 1 << 20;

/// `text` with each JSON object or array inside it (`failed: {"password": "x"} at ...`)
/// masked as a string holding one is, or `None` when none needed masking. Each `{` or `[`
/// starts a span that ends where its brackets balance (outside JSON strings); a span that is
/// not JSON (`[warn]`) is passed over, and the search goes on inside it.
fn mask_json_objects_within(text: &str, redactor: &Redactor) -> Option<String> {
    let bytes = text.as_bytes();
    let mut splice = Splice::new(text);
    let mut budget = text
        .len()
        .saturating_mul(JSON_SCAN_PER_BYTE)
        .max(MIN_JSON_SCAN);
    let mut from = 0;
    while let Some(at) = text[from..].find(['{', '[']).map(|at| from + at) {
        let (end, read) = match balanced_end(bytes, at) {
            Some(end) => (Some(end), 2 * (end - at)),
            None => (None, text.len() - at),
        };
        let Some(left) = budget.checked_sub(read) else {
            break;
        };
        budget = left;
        let original = end.and_then(|end| serde_json::from_str::<Value>(&text[at..end]).ok());
        match (end, original) {
            (Some(end), Some(original)) => {
                let mut inner = original.clone();
                redactor.mask_structured(&mut inner);
                if inner != original
                    && let Ok(encoded) = serde_json::to_string(&inner)
                {
                    splice.replace(at, end, &encoded);
                }
                from = end;
            }
            _ => from = at + 1,
        }
    }
    splice.finish()
}

/// Where the bracketed span starting at `start` ends (just after the bracket that balances
/// it, brackets inside JSON strings not counted), or `None` when it runs to the text's end.
fn balanced_end(bytes: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &b) in bytes.iter().enumerate().skip(start) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` with the string value of every `"key": "value"` whose key names a secret masked,
/// also when the quotes are escaped (`\"password\": \"x\"`, JSON quoted in a `Debug` text)
/// or the document is cut short (`{"password":"x"` of a truncated body): what the JSON step
/// cannot parse. `None` when there is none.
fn mask_quoted_pairs(text: &str, redactor: &Redactor) -> Option<String> {
    let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let bytes = text.as_bytes();
    let mut splice = Splice::new(text);
    for (colon, _) in text.match_indices(':') {
        if colon < splice.copied {
            continue;
        }
        // Backwards from the colon: spaces, the key's closing quote, the key, its opening one.
        let key_end = text[..colon].trim_end_matches(' ').len();
        if key_end == 0 || bytes[key_end - 1] != b'"' {
            continue;
        }
        let escaped = key_end >= 2 && bytes[key_end - 2] == b'\\';
        let quote: &str = if escaped { "\\\"" } else { "\"" };
        let key_close = key_end - quote.len();
        let key_len = bytes[..key_close]
            .iter()
            .rev()
            .take_while(|&&b| is_key_char(b))
            .count();
        let key_open = key_close - key_len;
        if key_len == 0
            || !text[..key_open].ends_with(quote)
            || !redactor.names_a_secret(&text[key_open..key_close])
        {
            continue;
        }
        // Forwards: spaces, the value's opening quote, the value, its closing quote.
        let value_open =
            colon + 1 + (text[colon + 1..].len() - text[colon + 1..].trim_start_matches(' ').len());
        if !text[value_open..].starts_with(quote) {
            continue;
        }
        let value_start = value_open + quote.len();
        if text[value_start..].starts_with(REDACTED) {
            continue;
        }
        let value_end = if escaped {
            text[value_start..].find(quote).map(|end| value_start + end)
        } else {
            closing_quote(bytes, value_start, b'"')
        }
        .unwrap_or(text.len());
        if value_end > value_start {
            splice.replace(value_start, value_end, REDACTED);
        }
    }
    splice.finish()
}

fn mask_urls_in(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(text) => {
            if let Some(masked) = redactor.mask_text(text) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_urls_in(v, redactor)),
        Value::Object(map) => {
            map.values_mut().for_each(|v| mask_urls_in(v, redactor));
            mask_keys(map, redactor);
        }
        _ => {}
    }
}

/// Masks the keys of `map` as any string: a key can hold a secret too (pools or replicas
/// keyed by their connection string, `{"postgres://app:pw@db/app": {"idle": 3}}`). An entry
/// whose key masks to one already there keeps its own place under `<key>#2`, `#3`, ...
fn mask_keys(map: &mut serde_json::Map<String, Value>, redactor: &Redactor) {
    if !map.keys().any(|key| redactor.mask_text(key).is_some()) {
        return;
    }
    for (key, value) in std::mem::take(map) {
        let key = redactor.mask_text(&key).unwrap_or(key);
        let mut unique = key.clone();
        let mut n = 2;
        while map.contains_key(&unique) {
            unique = format!("{key}#{n}");
            n += 1;
        }
        map.insert(unique, value);
    }
}

/// Every list in `value`, masked as a command line may be ([`mask_option_items`]).
fn mask_option_lists(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::Array(items) => {
            items
                .iter_mut()
                .for_each(|v| mask_option_lists(v, redactor));
            mask_option_items(items, redactor);
        }
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| mask_option_lists(v, redactor)),
        _ => {}
    }
}

/// A command line kept as a list (`["serve", "--password", "S3cr3t"]`): the item after an
/// option naming a secret is its value, masked unless it is the next option.
fn mask_option_items(items: &mut [Value], redactor: &Redactor) {
    for at in 1..items.len() {
        let Value::String(option) = &items[at - 1] else {
            continue;
        };
        let name = option
            .strip_prefix("--")
            .or_else(|| option.strip_prefix('-'))
            .unwrap_or_default();
        let is_secret_option = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && redactor.names_a_secret(name);
        if let (true, Value::String(value)) = (is_secret_option, &mut items[at])
            && !value.starts_with('-')
        {
            *value = REDACTED.to_owned();
        }
    }
}

/// A string holding a JSON object or array, masked inside and encoded again; `None` when it
/// holds none, or nothing in it needed masking (the string then stays as it was written).
fn mask_json_in(text: &str, redactor: &Redactor) -> Option<String> {
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\n', '\r']);
    if !trimmed.starts_with(['{', '[']) {
        return None;
    }
    // serde_json stops at 128 levels of nesting: a hostile string cannot recurse deeper.
    let original: Value = serde_json::from_str(trimmed).ok()?;
    let mut inner = original.clone();
    redactor.mask_structured(&mut inner);
    (inner != original).then(|| serde_json::to_string(&inner).ok())?
}

/// Keys that hold a secret in a `;`-separated connection string, without a sensitive name:
/// ODBC's `Pwd`, and the keys of Azure's Storage (`AccountKey`) and Service Bus or Event Hubs
/// (`SharedAccessKey`) connection strings.
const CONNECTION_STRING_SECRETS: &[&str] = &["pwd", "accountkey", "sharedaccesskey"];

/// `text` with the value of every `key=value` whose key is sensitive masked (a libpq
/// `host=db password=...`, an ADO `Server=db;Password=...;`, `DB_PASSWORD=...` in a list), or
/// `None` when there is none. A value runs to the next whitespace or `;` (libpq's and ADO's
/// ends: a `,` or `&` may be part of a password, and masking too much beats showing the rest),
/// or to its closing quote when quoted, `\"` escapes included (see [`value_end`]). ODBC's `Pwd`
/// and Azure's keys ([`CONNECTION_STRING_SECRETS`]) count in a connection string only
/// ([`in_connection_string`]).
fn mask_key_values(text: &str, redactor: &Redactor) -> Option<String> {
    let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let bytes = text.as_bytes();
    let mut splice = Splice::new(text);
    let mut words = WordEnds::default();
    for (at, separator) in text.match_indices(['=', ':']) {
        if at < splice.copied {
            continue; // inside a value already masked
        }
        let after = &text[at + 1..];
        // `==`, `::` (a path) and `://` (a URL, masked by its own rules) separate nothing; a
        // value after `=` may start with `/` (`password=/x`).
        if after.starts_with(['=', ':'])
            || (separator == ":" && after.starts_with('/'))
            || text[..at].ends_with(['=', ':'])
        {
            continue;
        }
        // Spaces may stand around the separator (`password = x`).
        let key_end = text[..at].trim_end_matches(' ').len();
        let key_len = bytes[..key_end]
            .iter()
            .rev()
            .take_while(|&&b| is_key_char(b))
            .count();
        let key = &text[key_end - key_len..key_end];
        let mut value_start = at + 1 + (after.len() - after.trim_start_matches(' ').len());
        // `Config { token: "abc" }`, `Auth { bearer_token: Some("abc") }`: a `Debug` struct.
        let debug_value =
            text[value_start..].starts_with('"') || text[value_start..].starts_with("Some(\"");
        let secret = match separator {
            "=" => {
                redactor.names_a_secret(key)
                    || (CONNECTION_STRING_SECRETS
                        .iter()
                        .any(|name| key.eq_ignore_ascii_case(name))
                        && in_connection_string(text, key_end - key_len, value_start, &mut words))
            }
            // After `:`, a password's name, or any secret's name with a quoted value: `invalid
            // token: expired` stays.
            _ => redactor.names_a_secret(key) && (names_a_password(key) || debug_value),
        };
        if key.is_empty() || !secret {
            continue;
        }
        // `password= Authorization: Bearer x`: an empty value followed by the next secret's
        // key. Masking that key as the value would hide it from the later steps and show its
        // secret: it is left to its own rule, or, where that rule sees no secret (`token: x`),
        // masked here with its value (the word may as well be the password).
        let mut mask_from = None;
        if value_start > at + 1
            && let Some((key_len, by_its_own_rule)) =
                secret_key_ahead(&text[value_start..], redactor)
        {
            if by_its_own_rule {
                continue;
            }
            mask_from = Some(value_start);
            value_start += key_len;
        }
        if text[value_start..].starts_with("Some(") {
            value_start += "Some(".len();
        }
        // Checked before looking for the value's end: a text of many parameters the URL rules
        // masked would otherwise be scanned again from each of them (quadratic time).
        if text[value_start..]
            .trim_start_matches(['\'', '"'])
            .starts_with(REDACTED)
        {
            continue; // masked as part of a URL already
        }
        let value_end = value_end(text, value_start);
        if value_end > value_start {
            splice.replace(mask_from.unwrap_or(value_start), value_end, REDACTED);
        }
    }
    splice.finish()
}

/// Where the value starting at `value_start` ends: at its closing quote when quoted (`\"`
/// escapes included), at the `}` that ends it when braced (ODBC's `Pwd={a;b}`), else at the
/// next whitespace or `;`, or after the credentials of `Bearer <token>`.
fn value_end(text: &str, value_start: usize) -> usize {
    let bytes = text.as_bytes();
    match bytes.get(value_start) {
        Some(&quote @ (b'\'' | b'"')) => {
            closing_quote(bytes, value_start + 1, quote).map_or(text.len(), |close| close + 1)
        }
        // ODBC doubles a `}` inside: the value ends at one followed by its list's end.
        Some(b'{') => closing_delimiter(bytes, value_start + 1, b'}', b";")
            .map_or(text.len(), |close| close + 1),
        _ => {
            let word_end = |from: usize| {
                text[from..]
                    .find(|c: char| c.is_whitespace() || c == ';')
                    .map_or(text.len(), |end| from + end)
            };
            let end = word_end(value_start);
            // `authorization=Bearer <token>`: the credentials follow the scheme's name.
            let scheme = &text[value_start..end];
            let spaces = text[end..].len() - text[end..].trim_start_matches(' ').len();
            if AUTH_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) && spaces > 0 {
                word_end(end + spaces)
            } else {
                end
            }
        }
    }
}

/// Where the runs of a text that end at whitespace or `;` end, remembered for the last one
/// asked about: each `=` in `pwd=pwd=pwd=...` asks about the same run, which is read once.
#[derive(Default)]
struct WordEnds {
    /// The last run asked about: where it was read from, and its end.
    last: Option<(usize, usize)>,
}

impl WordEnds {
    /// Where the run holding `from` ends.
    fn end(&mut self, text: &str, from: usize) -> usize {
        if let Some((start, end)) = self.last
            && (start..=end).contains(&from)
        {
            return end;
        }
        let end = text[from..]
            .find(|c: char| c.is_whitespace() || c == ';')
            .map_or(text.len(), |end| from + end);
        self.last = Some((from, end));
        end
    }
}

/// Whether the `pwd=` pair at `key_start` is part of a connection string, where `Pwd` is ODBC's
/// password: a `;` separates it from the pair before or after it (`Uid=app;Pwd=x;`). A shell's
/// `PWD=/home/app` is a directory.
fn in_connection_string(
    text: &str,
    key_start: usize,
    value_start: usize,
    words: &mut WordEnds,
) -> bool {
    text[..key_start].trim_end().ends_with(';')
        || text.as_bytes().get(words.end(text, value_start)) == Some(&b';')
}

/// `text` with the value of every command-line option whose name names a secret masked
/// (`--password S3cr3t`, `-token "a b"`; `--token=x` is a `key=value` pair), or `None` when
/// there is none. The option is a word of one or two `-` and a key; its value is the next word
/// (to its closing quote when quoted), unless that starts with `-`: the next option.
fn mask_flag_values(text: &str, redactor: &Redactor) -> Option<String> {
    let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let bytes = text.as_bytes();
    let mut splice = Splice::new(text);
    for (at, _) in text.match_indices('-') {
        // A quoted option is an item of an argument list (`["--password", "x"]`, a
        // `Command`'s `Debug`: `"tool" "--password" "x"`), its value the next item.
        let quote = at
            .checked_sub(1)
            .map(|before| bytes[before])
            .filter(|&b| matches!(b, b'"' | b'\''));
        let word_start = at - usize::from(quote.is_some());
        // Only a `-` that starts a word or a list's item, outside a value masked already.
        if at < splice.copied
            || (word_start > 0
                && !bytes[word_start - 1].is_ascii_whitespace()
                && !(quote.is_some() && matches!(bytes[word_start - 1], b'[' | b'(' | b',')))
        {
            continue;
        }
        let name_start = if bytes.get(at + 1) == Some(&b'-') {
            at + 2
        } else {
            at + 1
        };
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|&&b| is_key_char(b))
            .count();
        let name_end = name_start + name_len;
        // A quoted option ends at its closing quote, and its list's `,` may follow.
        let mut option_end = name_end;
        let mut comma = false;
        if let Some(quote) = quote {
            if bytes.get(option_end) != Some(&quote) {
                continue;
            }
            option_end += 1;
            comma = bytes.get(option_end) == Some(&b',');
            option_end += usize::from(comma);
        }
        // The option ends its word, and spaces (not a line's end) lead to its value.
        let spaces =
            text[option_end..].len() - text[option_end..].trim_start_matches([' ', '\t']).len();
        let value_start = option_end + spaces;
        if name_len == 0
            || (spaces == 0 && !comma)
            || value_start == text.len()
            || matches!(bytes[value_start], b'-' | b'\n' | b'\r')
            // The next item of a list, quoted, is the next option.
            || (quote.is_some()
                && matches!(bytes[value_start], b'"' | b'\'')
                && bytes.get(value_start + 1) == Some(&b'-'))
            || text[value_start..].starts_with(REDACTED)
            || !redactor.names_a_secret(&text[name_start..name_end])
        {
            continue;
        }
        let value_end = value_end(text, value_start);
        if value_end > value_start {
            splice.replace(value_start, value_end, REDACTED);
        }
    }
    splice.finish()
}

/// Where `text` starts with the key of another secret (`db_password:`, `token=`,
/// `Authorization:`, an option `--token x`): a word ending in its separator whose name is a secret's or a credential
/// header's, with a value after it (a last word is a value, whatever it ends in). Then the
/// length of that key and the spaces after it, and whether [`mask_key_values`] masks its value by
/// its own rule: after `:` only a password's name or a quoted value counts there (`token: abc`
/// is free text), and the value must then be masked for it.
fn secret_key_ahead(text: &str, redactor: &Redactor) -> Option<(usize, bool)> {
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    let (word, rest) = text.split_at(end);
    let value = rest.trim_start();
    // `password= --token x`: a command-line option naming a secret, whose value
    // [`mask_flag_values`] masks (the same conditions).
    let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    if let Some(name) = word.strip_prefix("--").or_else(|| word.strip_prefix('-'))
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && spaces > 0
        && !rest[spaces..].is_empty()
        && !rest[spaces..].starts_with(['-', '\n', '\r'])
        && redactor.names_a_secret(name)
    {
        return Some((text.len() - value.len(), true));
    }
    let key = word.strip_suffix([':', '='])?;
    let header = SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(key));
    if value.is_empty()
        || key.is_empty()
        || key.ends_with([':', '='])
        || !(header || redactor.names_a_secret(key))
    {
        return None;
    }
    let by_its_own_rule = header
        || word.ends_with('=')
        || names_a_password(key)
        || value.starts_with('"')
        || value.starts_with("Some(\"");
    Some((text.len() - value.len(), by_its_own_rule))
}

/// Whether a key written before a `:` is a password's name (`password`, `db_passwd`): a colon
/// follows many words in free text (`failed to read secret: no such file`), so only these
/// count there unless a quoted value follows.
fn names_a_password(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "passphrase"]
        .iter()
        .any(|word| key.contains(word))
}

/// Authorization schemes whose credentials follow their name and a space.
const AUTH_SCHEMES: &[&str] = &["Bearer", "Basic", "Token", "Digest", "Negotiate", "ApiKey"];

/// Where the quoted value starting at `from` ends: its `quote` not escaped by a `\` and
/// followed by the text's end, whitespace or what may end a value (`;`, `,`, `&`, a closing
/// bracket). A quote followed by anything else is inside the value: an unclosed quote before
/// (`password='x` and, later, `Password='S3cr3t';`) then runs over the next value instead of
/// closing at its opening quote and showing it; SQL's doubled quote (`'it''s'`) stays inside.
fn closing_quote(bytes: &[u8], from: usize, quote: u8) -> Option<usize> {
    closing_delimiter(bytes, from, quote, b";,&)]}")
}

/// Where the value starting at `from` ends: its `close` not escaped by a `\` and followed by
/// the text's end, whitespace or one of `ends`.
fn closing_delimiter(bytes: &[u8], from: usize, close: u8, ends: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (at, &b) in bytes.iter().enumerate().skip(from) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            _ if b == close
                && bytes
                    .get(at + 1)
                    .is_none_or(|&next| next.is_ascii_whitespace() || ends.contains(&next)) =>
            {
                return Some(at);
            }
            _ => {}
        }
    }
    None
}

/// `text` with the secrets of its URLs masked, or `None` when nothing needed masking.
///
/// A URL starts at `scheme://` and runs to the next URL or the next whitespace, so a password
/// holding `,`, `;`, `/`, `?` or `#` (unencoded, as configuration files have them) stays inside
/// its URL. Lists of URLs separated by `,` or `;` are split where the next URL starts.
fn mask_urls(text: &str, redactor: &Redactor) -> Option<String> {
    if !text.contains("://") {
        return None;
    }
    let starts = url_starts(text);
    let mut splice = Splice::new(text);
    for (i, &start) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(text.len());
        let end = text[start..next]
            .find(char::is_whitespace)
            .map_or(next, |at| start + at);
        // A list's separator before the next URL is not part of this one.
        let url = text[start..end].trim_end_matches([',', ';']);
        if let Some(masked) = mask_url(url, redactor) {
            splice.replace(start, start + url.len(), &masked);
        }
    }
    splice.finish()
}

/// Where each URL of `text` starts: at the scheme (`[a-zA-Z][a-zA-Z0-9+.-]*`) before `://`.
fn url_starts(text: &str) -> Vec<usize> {
    let is_scheme_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    for (at, _) in text.match_indices("://") {
        let scheme_len = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| is_scheme_char(b))
            .count();
        // Skip leading digits and signs so the scheme starts with a letter.
        let start = (at - scheme_len..at).find(|&i| bytes[i].is_ascii_alphabetic());
        if let Some(start) = start
            && starts.last().is_none_or(|&last| last < start)
        {
            starts.push(start);
        }
    }
    starts
}

/// One URL with its credentials and sensitive query values masked: `user:[REDACTED]@host`
/// for a password, `[REDACTED]@host` for a user alone (a token in the user position, as in
/// `https://ghp_xxx@github.com`).
///
/// Credentials end at the URL's last `@`: an `@` in the path or query masks too much rather
/// than letting a password holding `/`, `?` or `#` through.
fn mask_url(url: &str, redactor: &Redactor) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let mut userinfo_end = userinfo_end(rest);
    // An `@` in a webhook's secret path (Teams' `/webhookb2/<id>@<id>/IncomingWebhook/...`)
    // ends no user information: taken for one, it hid the host and showed the secret.
    if let (Some(at), Some(secret_start)) = (userinfo_end, webhook_secret_start(rest))
        && at >= secret_start
    {
        userinfo_end = rest[..secret_start].rfind('@');
    }
    let (credentials, rest) = match userinfo_end.map(|at| (&rest[..at], &rest[at + 1..])) {
        Some((userinfo, rest)) => {
            let masked = match userinfo.split_once(':') {
                // GitHub's `https://<token>:x-oauth-basic@github.com` (the user information
                // may run to a later `@`), `https://<token>:@host`: the user is the token.
                Some((_token, password))
                    if password.is_empty()
                        || password
                            .get(..13)
                            .is_some_and(|start| start.eq_ignore_ascii_case("x-oauth-basic")) =>
                {
                    format!("{REDACTED}:{REDACTED}@")
                }
                Some((user, _password)) => format!("{user}:{REDACTED}@"),
                None => format!("{REDACTED}@"),
            };
            (Some(masked), rest)
        }
        None => (None, rest),
    };
    let mut changed = credentials.is_some();
    let mut out = format!("{scheme}://");
    out.push_str(credentials.as_deref().unwrap_or_default());
    let masked_path = mask_webhook_path(rest);
    changed |= masked_path.is_some();
    let rest = masked_path.as_deref().unwrap_or(rest);
    // Parameters may sit in the query, in the fragment (`#access_token=`), or after a URL
    // nested in another's query: mask every `key=value` after a `?`, `&` or `#`.
    for (i, piece) in rest.split_inclusive(['?', '&', '#']).enumerate() {
        let (pair, delimiter) = match piece.char_indices().last() {
            Some((at, '?' | '&' | '#')) => piece.split_at(at),
            _ => (piece, ""),
        };
        let secret_key = |key: &str| {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            redactor.names_a_secret(&key)
                || periscope_context::SIGNATURE_QUERY_PARAMS
                    .iter()
                    .any(|param| param.eq_ignore_ascii_case(&key))
        };
        match pair.split_once('=') {
            Some((key, _)) if i > 0 && secret_key(key) => {
                changed = true;
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
        out.push_str(delimiter);
    }
    changed.then_some(out)
}

/// Path segments after which a webhook URL holds its secret: Discord's
/// `/api/webhooks/<id>/<secret>`, Mattermost's `/hooks/<secret>`.
const WEBHOOK_WORDS: &[&str] = &["hooks", "webhook", "webhooks"];

/// A URL's rest (after its `scheme://` and user information) with the secret of a webhook's
/// path masked: the whole path on Slack's `hooks.slack.com` (`/services/T/B/<secret>`) or a
/// host with a `webhook` label (Teams' `*.webhook.office.com`), else the path after a segment
/// of the [`WEBHOOK_WORDS`] and the numeric ids after it; `None` when it is no webhook or the
/// path ends there.
fn mask_webhook_path(rest: &str) -> Option<String> {
    let secret_start = webhook_secret_start(rest)?;
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    Some(format!(
        "{}{REDACTED}{}",
        &rest[..secret_start],
        &rest[path_end..]
    ))
}

/// Where the secret of a webhook's path starts in a URL's rest (see [`mask_webhook_path`]),
/// user information before its host allowed; `None` when it is no webhook or the path ends
/// there.
fn webhook_secret_start(rest: &str) -> Option<usize> {
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    if path_start >= path_end {
        return None;
    }
    let is_word = |word: &str| WEBHOOK_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word));
    let authority = rest[..path_start].rsplit('@').next().unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let webhook_host = host.eq_ignore_ascii_case("hooks.slack.com")
        || host
            .split('.')
            .any(|label| label.eq_ignore_ascii_case("webhook"));
    let secret_start = if webhook_host {
        path_start + 1
    } else {
        let mut at = path_start + 1;
        let mut found = None;
        for segment in rest[path_start + 1..path_end].split('/') {
            let numeric = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
            match found {
                // A number after the word is the hook's id, not its secret (GitHub's
                // `/repos/o/r/hooks/123`, Discord's `/webhooks/<id>/<secret>`).
                Some(start) if numeric && start == at => found = Some(at + segment.len() + 1),
                Some(_) => break,
                None if is_word(segment) => found = Some(at + segment.len() + 1),
                None => {}
            }
            at += segment.len() + 1;
        }
        found?
    };
    (secret_start < path_end).then_some(secret_start)
}

/// Where the user information of a URL (after its `scheme://`) ends, if it has any: at the
/// URL's last `@` when the authority starts like `user:password` (an unencoded password may
/// hold `/`, `?` or `#`; a port or an IPv6 address is not a password); else at an `@` in the
/// authority (`token@host`); else at the first `@` that follows something other than `/` and
/// comes before a host name (a token holding `/`). An `@` starting a path segment
/// (`/users/@me`) is not one.
fn userinfo_end(rest: &str) -> Option<usize> {
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if has_password(authority) {
        return rest.rfind('@');
    }
    if let Some(at) = authority.rfind('@') {
        return Some(at);
    }
    let at = rest.find('@')?;
    let host = rest[at + 1..]
        .split(['/', '?', '#', ':'])
        .next()
        .unwrap_or_default();
    let is_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    (at > 0 && !rest[..at].ends_with('/') && is_host).then_some(at)
}

/// Whether an authority (up to the first `/`, `?` or `#`) starts like `user:password`: it has
/// a `:` outside an IPv6 address's brackets that is not a port's (digits to its end).
fn has_password(authority: &str) -> bool {
    let mut in_brackets = false;
    for (at, c) in authority.char_indices() {
        match c {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            ':' if !in_brackets => {
                let after = &authority[at + 1..];
                return !after.bytes().all(|b| b.is_ascii_digit());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masked(mut config: Value) -> String {
        Redactor::default().mask_value(&mut config);
        config.to_string()
    }

    #[test]
    fn masks_sensitive_keys_and_url_secrets_at_any_depth() {
        let config = json!({
            "database": {"url": "postgres://app:hunter2@db:5432/app?sslmode=require", "password": "hunter2"},
            "redis": ["redis://:s3cret@a:6379,redis://:s3cret@b:6379"],
            "webhook": "https://hooks.example/x?api_key=abc123&team=core#frag",
            "openai_api_key": "sk-live-123",
            "admin_token": null,
            "plain": "https://example.com/path",
            "port": 8000,
        });
        let text = masked(config);
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
        // No secret set is no secret to hide: the operator sees that none is set.
        assert_eq!(value["admin_token"], Value::Null);
        assert_eq!(value["plain"], "https://example.com/path");
        assert_eq!(value["port"], 8000);
    }

    /// JSON held in a string (an env var holding a JSON document) is masked inside, as the log
    /// lines mask it; JSON without secrets stays as it was written.
    #[test]
    fn json_inside_a_string_is_masked_inside() {
        let config = json!({
            "embedded_json": "{\"password\":\"HUNTER-EMBED\",\"host\":\"db\"}",
            "nested": " [{\"dsn\":\"postgres://app:HUNTER-URL@db/x\"}]",
            "harmless": "{ \"replicas\": 3 }",
            "not_json": "{oops replicas=3",
        });
        let text = masked(config);
        assert!(!text.contains("HUNTER"), "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        let embedded: Value =
            serde_json::from_str(value["embedded_json"].as_str().unwrap()).unwrap();
        assert_eq!(embedded, json!({"password": REDACTED, "host": "db"}));
        let nested: Value = serde_json::from_str(value["nested"].as_str().unwrap()).unwrap();
        assert_eq!(nested[0]["dsn"], "postgres://app:[REDACTED]@db/x");
        assert_eq!(value["harmless"], "{ \"replicas\": 3 }");
        assert_eq!(value["not_json"], "{oops replicas=3");
    }

    /// Connection strings that are not URLs name their secrets as `key=value`.
    #[test]
    fn key_value_secrets_in_strings_are_masked() {
        let redactor = Redactor::default();
        for (text, expected) in [
            (
                "host=db user=app password=HUNTER1 sslmode=require",
                "host=db user=app password=[REDACTED] sslmode=require",
            ),
            (
                "Server=db;Password=HUNTER2;Database=app",
                "Server=db;Password=[REDACTED];Database=app",
            ),
            (
                "DB_PASSWORD=HUNTER3 LOG_LEVEL=info",
                "DB_PASSWORD=[REDACTED] LOG_LEVEL=info",
            ),
            // `,` and `&` may be part of a password: the value runs to whitespace or `;`.
            (
                "password=HUN,TER&7 user=app",
                "password=[REDACTED] user=app",
            ),
            (
                "Password=p&ss,HUNTER8;Database=x",
                "Password=[REDACTED];Database=x",
            ),
            (
                r#"password="a\"HUNTER 9" user=app"#,
                "password=[REDACTED] user=app",
            ),
            (
                "password='HUNTER 4' user=app",
                "password=[REDACTED] user=app",
            ),
            ("api_key=HUNTER5", "api_key=[REDACTED]"),
            (
                "authorization=Bearer HUNTER10 next",
                "authorization=[REDACTED] next",
            ),
        ] {
            assert_eq!(
                mask_key_values(text, &redactor).as_deref(),
                Some(expected),
                "{text}"
            );
        }
        for plain in ["replicas=3 zone=a", "a == b", "=x", "no pairs"] {
            assert_eq!(mask_key_values(plain, &redactor), None, "{plain}");
        }
        // A URL's query is masked once, by the URL rules.
        let mut value = json!("https://h/x?api_key=HUNTER6&team=core");
        redactor.mask_value(&mut value);
        assert_eq!(value, "https://h/x?api_key=[REDACTED]&team=core");
    }

    /// In free text a key names a secret when it ends with a sensitive word: the figures and
    /// names that only hold one stay readable.
    #[test]
    fn ordinary_pairs_and_paths_stay_readable() {
        let redactor = Redactor::default();
        for text in [
            "token_count=9000 max=8192",
            "tokenizer=llama3 not loaded",
            "num_tokens=12 session_count=3 secrets_loaded=false password_min_length=8",
            "token_ttl=60 secret_name=db-creds",
            "status=503",
            "GET https://api.example.com/v1/users/@me failed: 503",
            "GET https://api.example.com:8443/v1/users/@me failed: 503",
            "http://[::1]:8080/users/@me",
            "https://h/x?tokenizer=bpe",
        ] {
            assert_eq!(redactor.mask_text(text), None, "{text}");
        }
        for (text, masked) in [
            (
                "db_password=a api_token=b",
                "db_password=[REDACTED] api_token=[REDACTED]",
            ),
            (
                "credentials=c session_id=d",
                "credentials=[REDACTED] session_id=[REDACTED]",
            ),
            ("X-API-Key=e", "X-API-Key=[REDACTED]"),
            (
                "SECRET_KEY=f aws_secret_access_key=g",
                "SECRET_KEY=[REDACTED] aws_secret_access_key=[REDACTED]",
            ),
            (
                "refresh_token=h client_secret=i sessionid=j",
                "refresh_token=[REDACTED] client_secret=[REDACTED] sessionid=[REDACTED]",
            ),
            (
                "SECRET_KEY_BASE=k credentials_json=l private_key_pem=m password_b64=n",
                "SECRET_KEY_BASE=[REDACTED] credentials_json=[REDACTED] \
                 private_key_pem=[REDACTED] password_b64=[REDACTED]",
            ),
            (
                "DB_PASSWORD_2=o api_token_v2=p tokens=q auth_tokens=r set_cookie_header=s",
                "DB_PASSWORD_2=[REDACTED] api_token_v2=[REDACTED] tokens=[REDACTED] \
                 auth_tokens=[REDACTED] set_cookie_header=[REDACTED]",
            ),
            (
                "https://ghp_x@github.com/org/@me",
                "https://[REDACTED]@github.com/org/@me",
            ),
            (
                "https://ab/cd+ef@github.com/org/repo.git",
                "https://[REDACTED]@github.com/org/repo.git",
            ),
            (
                "https://us/er:hunter2@host/x",
                "https://us/er:[REDACTED]@host/x",
            ),
        ] {
            assert_eq!(redactor.mask_text(text).as_deref(), Some(masked), "{text}");
        }
    }

    /// A megabyte of masked query parameters, or of pairs, is masked whole. (Masking rescanned
    /// the rest of the text after each parameter: this took minutes, where it now takes a
    /// few copies of the text.)
    #[test]
    fn a_megabyte_of_parameters_or_pairs_is_masked_whole() {
        let redactor = Redactor::default();
        let parameters = format!("https://h/x?{}", "token=a&".repeat(1 << 17));
        let masked = redactor.mask_text(&parameters).unwrap();
        assert_eq!(masked.matches("token=[REDACTED]&").count(), 1 << 17);
        let pairs = "token=[REDACTED] password=b ".repeat(1 << 15);
        let masked = redactor.mask_text(&pairs).unwrap();
        assert_eq!(masked.matches(REDACTED).count(), 1 << 16);
        assert!(!masked.contains("=b"));
        // Shapes that make each step read far ahead, a megabyte each: done in linear time (a
        // quadratic step would take minutes here).
        let started = std::time::Instant::now();
        for shape in [
            "[".repeat(1 << 20),
            "[a] ".repeat(1 << 18),
            r#"{"a":"#.repeat(1 << 18),
            r#""password":""#.repeat(1 << 16),
            r#"\"password\": \""#.repeat(1 << 16),
            "password: ".repeat(1 << 17),
            "password = ".repeat(1 << 17),
            "X-Api-Token: ".repeat(1 << 16),
            "pwd=".repeat(1 << 18),
            ";Pwd={".repeat(1 << 17),
            "password='a".repeat(1 << 17),
            "--password '".repeat(1 << 16),
            "-".repeat(1 << 20),
            " -token".repeat(1 << 17),
            "https://hooks.x/".repeat(1 << 16),
        ] {
            let _ = redactor.mask_text(&shape);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    /// Error texts quote headers and bodies: their credentials are masked too.
    #[test]
    fn headers_and_json_inside_a_text_are_masked() {
        let redactor = Redactor::default();
        for (text, masked) in [
            (
                "request failed: Authorization: Bearer HUNTER1\nretry",
                "request failed: Authorization: [REDACTED]\nretry",
            ),
            ("sent api-key: HUNTER2", "sent api-key: [REDACTED]"),
            (
                r#"bad body: {"password":"HUNTER3","user":"ann"} (400)"#,
                r#"bad body: {"password":"[REDACTED]","user":"ann"} (400)"#,
            ),
            (
                r#"invalid body {"token": "HUNTER4"} from client"#,
                r#"invalid body {"token":"[REDACTED]"} from client"#,
            ),
        ] {
            assert_eq!(redactor.mask_text(text).as_deref(), Some(masked), "{text}");
        }
        for plain in [
            "invalid token: expired signature",
            "see {oops} and [1, 2]",
            r#"bad body: {"user":"ann"}"#,
        ] {
            assert_eq!(redactor.mask_text(plain), None, "{plain}");
        }
        // A truncated body, then many unclosed objects: masked to the end, in linear time.
        let braces = format!("{}{}", r#"{"password":"x"#, "{".repeat(1 << 16));
        assert_eq!(
            redactor.mask_text(&braces).as_deref(),
            Some(r#"{"password":"[REDACTED]"#)
        );
    }

    /// Shapes of error texts that let a secret through before: JSON whose values the
    /// `key=value` rule ran over, JSON after many brackets, truncated or escaped JSON,
    /// spaces around `=`, `password:`, quoted or multi-word credential headers.
    #[test]
    fn secrets_in_the_shapes_error_texts_take_are_masked() {
        let redactor = Redactor::default();
        for (text, masked) in [
            (
                r#"request failed: {"cfg":"token=abc", "password":"hunter2"}"#,
                r#"request failed: {"cfg":"token=[REDACTED]","password":"[REDACTED]"}"#,
            ),
            (
                r#"[a] [b] [c] [d] [e] [f] [g] [h] [i] {"password":"hunter2"}"#,
                r#"[a] [b] [c] [d] [e] [f] [g] [h] [i] {"password":"[REDACTED]"}"#,
            ),
            (
                r#"upstream said {"password":"hunter2", "user"#,
                r#"upstream said {"password":"[REDACTED]", "user"#,
            ),
            (
                r#"Err(Parse("{\"password\": \"hunter2\"}"))"#,
                r#"Err(Parse("{\"password\": \"[REDACTED]\"}"))"#,
            ),
            (
                "password = hunter2 at login",
                "password = [REDACTED] at login",
            ),
            ("bad db_password: hunter2", "bad db_password: [REDACTED]"),
            (
                r#"sent Authorization: "Bearer abc" twice"#,
                r#"sent Authorization: [REDACTED] twice"#,
            ),
            (
                "authorization=Bearer  abc rest",
                "authorization=[REDACTED] rest",
            ),
            (
                "with X-Vault-Token: s.abc",
                "with X-Vault-Token: [REDACTED]",
            ),
            (
                "GET https://h/x?pass%77ord=abc&a=1 failed",
                "GET https://h/x?pass%77ord=[REDACTED]&a=1 failed",
            ),
            (
                "clone https://ghp_abc:x-oauth-basic@github.com/o/r failed",
                "clone https://[REDACTED]:[REDACTED]@github.com/o/r failed",
            ),
            (
                "git+https://ghp_abc:x-oauth-basic@github.com/o/r.git@v1.0",
                "git+https://[REDACTED]:[REDACTED]@v1.0",
            ),
            (
                "https://ghp_abc:@github.com/o/r",
                "https://[REDACTED]:[REDACTED]@github.com/o/r",
            ),
            (
                r#"Config { token: "abc", api_key: "sk-live-1" }"#,
                r#"Config { token: [REDACTED], api_key: [REDACTED] }"#,
            ),
            (
                r#"Auth { bearer_token: Some("abc") }"#,
                r#"Auth { bearer_token: Some([REDACTED]) }"#,
            ),
        ] {
            assert_eq!(redactor.mask_text(text).as_deref(), Some(masked), "{text}");
        }
        for plain in [
            "invalid token: expired signature",
            "at 12:30: periscope::secret::Store failed",
            "if a == b then c",
            "Content-Type: text/plain",
            "tower-sessions: failed to load session: connection refused",
            "Access-Control-Allow-Credentials: true",
            "failed to read secret: no such file",
            "Password: ",
            r#"missing field "token_count": 3"#,
        ] {
            assert_eq!(redactor.mask_text(plain), None, "{plain}");
        }
    }

    #[test]
    fn leaves_text_without_url_secrets_alone() {
        let redactor = Redactor::default();
        assert_eq!(mask_urls("no url here", &redactor), None);
        assert_eq!(mask_urls("://weird", &redactor), None);
        assert_eq!(
            mask_urls("see https://example.com/a, then b", &redactor),
            None
        );
    }

    #[test]
    fn passwords_with_url_delimiters_and_tokens_as_users_are_masked() {
        let redactor = Redactor::default();
        let mask = |text: &str| mask_urls(text, &redactor).unwrap_or_else(|| text.to_owned());
        for (text, masked) in [
            (
                "postgres://app:pa/ss@db/app",
                "postgres://app:[REDACTED]@db/app",
            ),
            (
                "postgres://app:p?w@db/app?x=1",
                "postgres://app:[REDACTED]@db/app?x=1",
            ),
            ("redis://:p#w@cache:6379", "redis://:[REDACTED]@cache:6379"),
            ("amqp://u:a,b;c@mq/vhost", "amqp://u:[REDACTED]@mq/vhost"),
            (
                "https://ghp_abc123@github.com/org/repo.git",
                "https://[REDACTED]@github.com/org/repo.git",
            ),
            ("http://user@host/x", "http://[REDACTED]@host/x"),
            (
                "redis://:s1,x@a:6379;redis://:s2@b:6379 and http://plain/",
                "redis://:[REDACTED]@a:6379;redis://:[REDACTED]@b:6379 and http://plain/",
            ),
            (
                "DSN=mysql://root:r00t@db:3306/x, backup",
                "DSN=mysql://root:[REDACTED]@db:3306/x, backup",
            ),
            (
                "https://h/cb?next=https://u:p2@inner/&token=t1",
                "https://h/cb?next=https://u:[REDACTED]@inner/&token=[REDACTED]",
            ),
            (
                "https://app/cb#access_token=t2&state=s",
                "https://app/cb#access_token=[REDACTED]&state=s",
            ),
        ] {
            assert_eq!(mask(text), masked, "{text}");
        }
        // An `@` in a path masks too much rather than too little.
        assert_eq!(
            mask("https://h:8080/u/a@b.com"),
            "https://h:[REDACTED]@b.com"
        );
    }
}

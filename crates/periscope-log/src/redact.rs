//! Redaction by key: which field names hide their values, at any depth.

use std::sync::Arc;

use crate::json;

/// The text that replaces a sensitive value.
pub const REDACTED: &str = "[REDACTED]";

/// The contract's sensitive key fragments: a key that contains any of them is redacted.
pub const DEFAULT_SENSITIVE_KEYS: &[&str] = periscope_context::SENSITIVE_KEY_PARTS;

/// Words that name a secret only as a key's last word (words split at `_`, `-`, `.`, spaces and
/// a lower-case letter followed by an upper-case one): `auth`, `basic_auth`, `proxyAuth`,
/// `HTTP_AUTH`, but not `oauth_callback_url`, `auth_url` or `author`; `pass`, `DB_PASS`,
/// `mysqlPass`, but not `bypass` or `passenger`. As fragments, `auth` would hide every
/// `oauth_*` setting and `pass` every `bypass`.
pub const DEFAULT_SENSITIVE_WORDS: &[&str] = &["auth", "pass"];

/// Keys that contain `token` but count tokens (LLM usage figures), so they are not secrets:
/// as OpenAI's, Anthropic's and Gemini's APIs name them, and OpenTelemetry's GenAI attributes.
/// An object under such a key (`prompt_tokens_details`) is still redacted key by key.
pub const DEFAULT_ALLOWED_KEYS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "audio_tokens",
    "accepted_prediction_tokens",
    "rejected_prediction_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "prompt_token_count",
    "candidates_token_count",
    "total_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.request.max_tokens",
];

/// Nesting deeper than this is not parsed as JSON (the value stays a plain string). Below
/// the 128 levels that common parsers take (serde_json's default), with room for the line's own
/// levels and for the `/debug/logs` answer that holds the line: a `json(..)` value written
/// nested must leave every reader able to parse the line.
const MAX_DEPTH: usize = 100;

/// Whether `text` starts like a JSON object or array: after a byte order mark, then JSON's
/// own whitespace (the parser accepts no other).
pub(crate) fn looks_like_json(text: &str) -> bool {
    let first = strip_bom(text)
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    matches!(first, Some(b'{' | b'['))
}

/// Whether text that starts like JSON but did not parse still reads as structured (an object
/// or a map, an array of values) rather than free text opening with a bracket (`[nightly]
/// rotated`, `[Rejected("invalid token: expired")]`, a `Debug` list of structs): such text is
/// hidden whole where it mentions a secret anywhere, free text only where it names one as a
/// key ([`Redactor::names_sensitive_key`]).
pub(crate) fn looks_structured(text: &str) -> bool {
    let is_json_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let text = strip_bom(text).trim_start_matches(is_json_ws);
    let Some(items) = text.strip_prefix('[') else {
        return text.starts_with('{');
    };
    let items = items.trim_start_matches(is_json_ws);
    // A word opens free text or a list of structs, unless it is one of JSON's literals.
    !items.starts_with(|c: char| c.is_ascii_alphabetic()) || names_no_secret(items)
}

/// `text` without a leading U+FEFF (which JSON parsers reject but many writers add).
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Decides which keys are sensitive, and redacts JSON text and `serde_json` values by key.
///
/// Keys are compared case-insensitively with `_`, `-`, `.` and spaces ignored, so `apiKey`,
/// `X-Api-Key`, `API_KEY` and `api.key` all match `api_key`. A key matches when it contains a
/// sensitive fragment anywhere (`db_password`, `password_hash`, `Set-Cookie`), unless it is
/// one of the allowed keys. A key whose last word is one of the [`DEFAULT_SENSITIVE_WORDS`]
/// (`auth`, `basic_auth`, `DB_PASS`) hides its string or number in [`redact_value`](Self::redact_value)
/// and names a secret in free text ([`mask_text`](Self::mask_text)).
///
/// ```
/// use periscope_log::Redactor;
///
/// let redactor = Redactor::default().with_sensitive_key("ssn");
/// assert!(redactor.is_sensitive("X-Api-Key"));
/// assert!(redactor.is_sensitive("user_SSN"));
/// assert!(!redactor.is_sensitive("max_tokens")); // a count, allowed by default
/// assert!(!redactor.is_sensitive("user_id"));
///
/// let mut config = serde_json::json!({"db": {"url": "pg://", "Password": "hunter2"}});
/// redactor.redact_value(&mut config);
/// assert_eq!(config["db"]["Password"], "[REDACTED]");
/// ```
#[derive(Clone, Debug)]
pub struct Redactor {
    inner: Arc<Rules>,
}

#[derive(Clone, Debug)]
struct Rules {
    /// Normalised fragments.
    fragments: Vec<Box<[u8]>>,
    /// `first[b]`: some fragment starts with byte `b`.
    first: [bool; 256],
    /// Normalised keys that are never sensitive.
    allowed: Vec<Box<[u8]>>,
    /// Lower-case words that make a key sensitive when they are its last word.
    words: Vec<Box<[u8]>>,
}

impl Default for Redactor {
    fn default() -> Self {
        let mut redactor = Self::new(DEFAULT_SENSITIVE_KEYS, DEFAULT_ALLOWED_KEYS);
        Arc::make_mut(&mut redactor.inner).words = DEFAULT_SENSITIVE_WORDS
            .iter()
            .map(|word| word.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        redactor
    }
}

/// The last word of `key`: its trailing run of ASCII letters and digits, cut where a lower-case
/// letter is followed by an upper-case one (`proxyAuth` ends in `Auth`; `OAuth` is one word).
fn last_word(key: &str) -> &[u8] {
    let bytes = key.as_bytes();
    let mut start = bytes.len();
    while start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
        start -= 1;
        if start > 0 && bytes[start].is_ascii_uppercase() && bytes[start - 1].is_ascii_lowercase() {
            break;
        }
    }
    &bytes[start..]
}

/// Lower case, without `_ - .` and spaces: the form keys are compared in.
fn normalize_into(key: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend(
        key.bytes()
            .filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' '))
            .map(|b| b.to_ascii_lowercase()),
    );
}

fn normalized(key: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(key.len());
    normalize_into(key, &mut out);
    out.into_boxed_slice()
}

impl Redactor {
    /// A redactor with exactly these sensitive fragments and allowed keys (and none of the
    /// [`DEFAULT_SENSITIVE_WORDS`], which [`Redactor::default`] adds).
    pub fn new(sensitive: &[&str], allowed: &[&str]) -> Self {
        let mut rules = Rules {
            fragments: Vec::new(),
            first: [false; 256],
            allowed: allowed.iter().map(|k| normalized(k)).collect(),
            words: Vec::new(),
        };
        for key in sensitive {
            rules.add_fragment(key);
        }
        Self {
            inner: Arc::new(rules),
        }
    }

    /// Adds a sensitive fragment: any key containing it is redacted.
    pub fn with_sensitive_key(mut self, fragment: &str) -> Self {
        Arc::make_mut(&mut self.inner).add_fragment(fragment);
        self
    }

    /// Never redacts this exact key (compared in the normalised form).
    pub fn with_allowed_key(mut self, key: &str) -> Self {
        Arc::make_mut(&mut self.inner).allowed.push(normalized(key));
        self
    }

    /// Whether values under `key` are hidden, whatever they are: `key` holds a sensitive
    /// fragment and is not allowed. A key whose last word is one of the
    /// [`DEFAULT_SENSITIVE_WORDS`] (`basic_auth`) is not counted here:
    /// [`redact_value`](Self::redact_value) hides only its string or number (a log field so
    /// named is hidden whole).
    pub fn is_sensitive(&self, key: &str) -> bool {
        // Field names are short: normalise on the stack.
        let mut buf = [0u8; 64];
        let mut len = 0;
        for b in key.bytes() {
            if matches!(b, b'_' | b'-' | b'.' | b' ') {
                continue;
            }
            if len == buf.len() {
                let mut long = Vec::new();
                normalize_into(key, &mut long);
                return self.inner.matches(&long);
            }
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
        self.inner.matches(&buf[..len])
    }

    /// Whether a value named `name` is hidden whole, as a log field so named is written
    /// `"[REDACTED]"`: a sensitive key, or one whose last word is a sensitive word (`auth`,
    /// `PROXY_AUTH`: such a value is a credential's text). For anything named once and shown
    /// whole, such as a setting in an error message.
    ///
    /// ```
    /// let redactor = periscope_log::Redactor::default();
    /// assert!(redactor.hides_field("PROXY_AUTH") && redactor.hides_field("db_password"));
    /// assert!(!redactor.hides_field("AUTHOR") && !redactor.hides_field("port"));
    /// ```
    pub fn hides_field(&self, name: &str) -> bool {
        self.is_sensitive(name) || self.ends_in_sensitive_word(name)
    }

    /// Whether a field so named is hidden by its last word alone (`require_auth`): a boolean
    /// under it is a setting and stays, as inside JSON.
    pub(crate) fn hides_by_word_alone(&self, name: &str) -> bool {
        !self.is_sensitive(name) && self.ends_in_sensitive_word(name)
    }

    /// Whether the last word of `key` is one of the [`DEFAULT_SENSITIVE_WORDS`] (`auth`,
    /// `basic_auth`), and the key is not allowed: its value is a secret when it is a string
    /// or a number, while an object under it (`"auth": {"type": .., "password": ..}`) is
    /// redacted key by key.
    fn ends_in_sensitive_word(&self, key: &str) -> bool {
        let word = last_word(key);
        self.inner
            .words
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word))
            && !self.inner.allowed.iter().any(|a| **a == *normalized(key))
    }

    /// Whether `key`, written in free text (`key=value`, a query parameter), names a secret:
    /// a sensitive key ([`is_sensitive`](Self::is_sensitive)) unless what follows its last
    /// sensitive word says it is about a secret, not one (`token_count`, `tokenizer`,
    /// `password_min_length`, `secrets_loaded`, `secret_name`, `num_tokens`). Anything else
    /// counts (`secret_key_base`, `db_password_2`, `auth_tokens`): masking a figure now and then
    /// beats showing a secret.
    pub(crate) fn names_a_secret(&self, key: &str) -> bool {
        /// What, after a key's last sensitive word, makes it about a secret rather than one.
        const ABOUT: &[&[u8]] = &[
            b"count",
            b"counts",
            b"len",
            b"length",
            b"minlength",
            b"maxlength",
            b"ttl",
            b"timeout",
            b"expiry",
            b"maxage",
            b"url",
            b"uri",
            b"file",
            b"path",
            b"name",
            b"domain",
            b"store",
            b"loaded",
            b"enabled",
            b"izer",
            b"izers",
            b"type",
            b"size",
            b"limit",
        ];
        /// Before `tokens`, what makes the key a count of tokens.
        const COUNTED: &[&[u8]] = &[
            b"num",
            b"max",
            b"total",
            b"prompt",
            b"completion",
            b"input",
            b"output",
            b"used",
            b"remaining",
        ];
        if !self.is_sensitive(key) {
            return self.ends_in_sensitive_word(key);
        }
        let mut normalized = Vec::with_capacity(key.len());
        normalize_into(key, &mut normalized);
        // The last sensitive word: the occurrence that ends furthest right.
        let mut last: Option<(usize, &[u8])> = None;
        for fragment in &self.inner.fragments {
            let fragment: &[u8] = fragment;
            for start in 0..normalized.len() {
                if normalized[start..].starts_with(fragment)
                    && last.is_none_or(|(at, word)| start + fragment.len() > at + word.len())
                {
                    last = Some((start, fragment));
                }
            }
        }
        let Some((start, word)) = last else {
            return true;
        };
        let tail = &normalized[start + word.len()..];
        // A plural before it (`secrets_loaded`).
        let about = |tail: &[u8]| ABOUT.contains(&tail);
        let counted = word == b"token".as_slice()
            && tail == b"s".as_slice()
            && COUNTED.contains(&&normalized[..start]);
        !(about(tail) || tail.strip_prefix(b"s".as_slice()).is_some_and(about) || counted)
    }

    /// Whether `text` contains a sensitive fragment anywhere (in the normalised form, made in
    /// `scratch`): for structured text that could not be redacted key by key.
    pub(crate) fn mentions_sensitive_key(&self, text: &str, scratch: &mut Vec<u8>) -> bool {
        normalize_into(text, scratch);
        self.inner.blank_allowed(scratch);
        self.inner.mentions(scratch)
    }

    /// Whether `Debug` text that is not JSON names a sensitive key: a struct field
    /// (`Login { password: .. }`), a map key (`{"authorization": ..}`) or a key of JSON quoted
    /// inside a literal (`Some("{\"password\":..}")`). A key counts where struct or map syntax
    /// puts one, after `{`, `(`, `[` or `,`, so free text such as `"invalid token: expired"`
    /// does not.
    pub(crate) fn names_sensitive_key(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        // Whether the key `start..end`, its opening quote (if any) at `before`, sits where struct
        // or map syntax puts a key and is sensitive.
        let names = |start: usize, end: usize, mut before: usize, value: &str| {
            if start >= end {
                return false;
            }
            // Any whitespace JSON or pretty `Debug` output puts before a key (a line break, a tab).
            while before > 0 && bytes[before - 1].is_ascii_whitespace() {
                before -= 1;
            }
            let opens = before == 0 || matches!(bytes[before - 1], b'{' | b'(' | b'[' | b',');
            opens && {
                let key = &text[start..end];
                // `auth: "Basic .."`, `smtp_pass: Some(..)`: a credential unless the value is a
                // setting (`require_auth: true`) or says none is set (`password: None`, which
                // `url::Url` always prints).
                (self.is_sensitive(key) || self.ends_in_sensitive_word(key))
                    && !names_no_secret(value)
            }
        };
        for (at, _) in text.match_indices(':') {
            // `std::io::Error` is a path, not a key.
            if bytes.get(at + 1) == Some(&b':') || (at > 0 && bytes[at - 1] == b':') {
                continue;
            }
            let Some(close) = at.checked_sub(1).filter(|&q| bytes[q] == b'"') else {
                // A struct field: the run of key bytes before the colon.
                let start = bytes[..at]
                    .iter()
                    .rposition(|&b| !is_key_byte(b))
                    .map_or(0, |i| i + 1);
                if names(start, at, start, &text[at + 1..]) {
                    return true;
                }
                continue;
            };
            // A quote after an odd number of backslashes is escaped: the key of JSON quoted
            // inside a literal (`\"password\":`); after an even number, a Debug map key's
            // closing quote (`"my token\\":`).
            let escaped = backslashes_before(bytes, close) % 2 == 1;
            let end = if escaped { close - 1 } else { close };
            // A map key is everything inside its quotes (`"db password"`, `"auth/token"`): its
            // opening quote is the nearest one before it with the same escaping.
            let open = (0..end)
                .rev()
                .find(|&i| bytes[i] == b'"' && (backslashes_before(bytes, i) % 2 == 1) == escaped);
            if let Some(open) = open
                && names(
                    open + 1,
                    end,
                    if escaped { open - 1 } else { open },
                    &text[at + 1..],
                )
            {
                return true;
            }
            // Else the run of key bytes right after a quote, as before (`("password\\": x")`,
            // JSON text cut inside a literal).
            let start = bytes[..end]
                .iter()
                .rposition(|&b| !is_key_byte(b))
                .map_or(0, |i| i + 1);
            let mut before = start;
            if strip_quote_before(bytes, &mut before) && names(start, end, before, &text[at + 1..])
            {
                return true;
            }
        }
        // A pair's first element, where tuple syntax puts a key: `("password", "hunter2")`, a
        // form's fields as reqwest's `.form(..)` takes them. A name, not words (`("invalid
        // token", 4)` is a message).
        text.match_indices('(').any(|(at, _)| {
            let Some(inside) = text[at + 1..].trim_start().strip_prefix('"') else {
                return false;
            };
            let Some((key, after)) = inside.split_once('"') else {
                return false;
            };
            if !is_name(key) {
                return false;
            }
            after.trim_start().strip_prefix(',').is_some_and(|value| {
                (self.is_sensitive(key) || self.ends_in_sensitive_word(key))
                    && !names_no_secret(value)
            })
        })
    }

    /// Replaces the value of every sensitive key, at any depth, with `"[REDACTED]"`; a `null`
    /// stays `null`, so a configuration shows whether a secret is set at all. A string or
    /// number under a key ending in a [sensitive word](DEFAULT_SENSITIVE_WORDS) (`auth`) is
    /// replaced too, and so is an array (`"basic_auth": ["admin", "hunter2"]`, how serde writes
    /// a pair); a boolean there (`"require_auth": true`) is a setting, not a secret. A pair
    /// whose first element names a secret (`["password", "hunter2"]`: serde's form of a
    /// `(String, String)`, as a form's or a query's fields come) hides its second the same way,
    /// and so does an object naming a secret in its `name` or `key` (`{"name": "DB_PASSWORD",
    /// "value": "hunter2"}`: an environment variable, a header in a list of them) its `value`.
    pub fn redact_value(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                // Every `name` and `key` member, as the line's parser reads them: an object
                // with both (`{"key": "primary", "name": "DB_PASSWORD", ..}`) names a secret
                // when either does.
                let names: Vec<String> = map
                    .iter()
                    .filter(|(key, _)| is_name_member(key.as_bytes()))
                    .filter_map(|(_, name)| name.as_str())
                    .filter(|name| is_pair_name(name))
                    .map(str::to_owned)
                    .collect();
                for (key, value) in map.iter_mut() {
                    let named_secret = key.eq_ignore_ascii_case("value")
                        && names
                            .iter()
                            .any(|name| self.hides_under(name, Shape::of(value)));
                    if named_secret || self.hides_under(key, Shape::of(value)) {
                        *value = serde_json::Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_value(value);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                if let [serde_json::Value::String(name), second] = items.as_mut_slice()
                    && is_pair_name(name)
                    && self.hides_under(name, Shape::of(second))
                {
                    *second = serde_json::Value::String(REDACTED.to_owned());
                    return;
                }
                items.iter_mut().for_each(|item| self.redact_value(item));
            }
            _ => {}
        }
    }

    /// Whether a value of `shape` under `key` is hidden whole: under a sensitive key anything
    /// but `null` (which tells that no secret is set, `"admin_token": null`); under a key
    /// ending in a sensitive word a string, number or array, not a boolean (`"require_auth":
    /// true`, a setting) nor an object (redacted key by key).
    fn hides_under(&self, key: &str, shape: Shape) -> bool {
        match shape {
            Shape::Null => false,
            Shape::Scalar => self.is_sensitive(key) || self.ends_in_sensitive_word(key),
            Shape::Other => self.is_sensitive(key),
        }
    }

    /// Rewrites JSON `text` compactly into `out`, sensitive values redacted and strings over
    /// `limit` bytes truncated. Returns `false` (and leaves `out` as it was) when `text` is not
    /// valid JSON.
    /// `nested`: the JSON goes into the line as a value of its own, where a key written twice
    /// is written once (the last); else into a string, which keeps every member (a `Debug`
    /// map of headers lists a header sent twice twice).
    pub(crate) fn rewrite_json(
        &self,
        text: &str,
        limit: usize,
        out: &mut Vec<u8>,
        nested: bool,
    ) -> bool {
        self.rewrite_json_at(strip_bom(text), limit, out, 0, nested)
    }

    /// [`rewrite_json`](Self::rewrite_json) of text found `depth` levels deep (in a string).
    fn rewrite_json_at(
        &self,
        text: &str,
        limit: usize,
        out: &mut Vec<u8>,
        depth: usize,
        nested: bool,
    ) -> bool {
        let mark = out.len();
        let mut parser = Parser {
            s: text.as_bytes(),
            i: 0,
            redactor: self,
            limit,
            key: String::new(),
            members: Vec::new(),
            keep_last_of_repeated_keys: nested,
        };
        let ok = parser.value(out, depth).is_some() && {
            parser.skip_ws();
            parser.i == parser.s.len()
        };
        if !ok {
            out.truncate(mark);
        }
        ok
    }
}

impl Rules {
    fn add_fragment(&mut self, fragment: &str) {
        let fragment = normalized(fragment);
        if let Some(&b) = fragment.first() {
            self.first[b as usize] = true;
            self.fragments.push(fragment);
        }
    }

    fn matches(&self, key: &[u8]) -> bool {
        self.mentions(key) && !self.allowed.iter().any(|a| **a == *key)
    }

    /// Blanks the allowed keys standing as whole words in normalised `text` (`"maxtokens":`),
    /// so that the fragments inside them (`token`) are not read as mentions of a secret.
    fn blank_allowed(&self, text: &mut [u8]) {
        for allowed in self.allowed.iter().filter(|allowed| !allowed.is_empty()) {
            let mut from = 0;
            while let Some(found) = text[from..]
                .windows(allowed.len())
                .position(|window| window == &allowed[..])
            {
                let (start, end) = (from + found, from + found + allowed.len());
                let bounded = |at: Option<&u8>| at.is_none_or(|b| !b.is_ascii_alphanumeric());
                if bounded(start.checked_sub(1).and_then(|i| text.get(i))) && bounded(text.get(end))
                {
                    text[start..end].fill(b' ');
                }
                from = start + 1;
            }
        }
    }

    /// Whether some fragment occurs in `text`.
    fn mentions(&self, text: &[u8]) -> bool {
        text.iter().enumerate().any(|(i, &b)| {
            self.first[b as usize]
                && self
                    .fragments
                    .iter()
                    .any(|f| f[0] == b && text[i..].starts_with(f))
        })
    }
}

/// A small JSON reader that copies its input compactly, redacting by key as it goes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    redactor: &'a Redactor,
    limit: usize,
    /// The decoded text of the last string read.
    key: String,
    /// Where the members of the objects being read were written: a stack, the innermost
    /// object's on top.
    members: Vec<Member>,
    /// Whether an object's key written twice is written once ([`keep_last_of_each_key`]): for
    /// JSON nested in the line, not for JSON kept in a string.
    keep_last_of_repeated_keys: bool,
}

/// Where one member of an object was written: its key (with its colon) at `start..key_end`,
/// its value up to `end`.
#[derive(Clone, Copy)]
struct Member {
    start: usize,
    key_end: usize,
    end: usize,
}

/// Of members written with the same key (a `#[serde(flatten)]` map holding a key of its
/// struct's own, JSON text that repeats one), keeps the last, as JSON readers take it: a line
/// never carries a key twice, which some stores refuse (and the line is lost there). `out`
/// holds the object from its `{` at `open`, its last member written, the `}` not yet.
fn keep_last_of_each_key(out: &mut Vec<u8>, open: usize, members: &[Member]) {
    let key = |member: &Member| &out[member.start..member.key_end];
    // Pairwise for the usual small object; sorted for a large one, so that a wide object costs
    // no more than its sort.
    let repeated = if members.len() <= 8 {
        (1..members.len()).any(|j| (0..j).any(|i| key(&members[i]) == key(&members[j])))
    } else {
        let mut keys: Vec<&[u8]> = members.iter().map(key).collect();
        keys.sort_unstable();
        keys.windows(2).any(|pair| pair[0] == pair[1])
    };
    if !repeated {
        return;
    }
    let written = out.split_off(open + 1);
    let at = |offset: usize| offset - open - 1;
    let mut seen = std::collections::HashSet::new();
    let last: Vec<&Member> = (members.iter().rev())
        .filter(|member| seen.insert(&written[at(member.start)..at(member.key_end)]))
        .collect();
    for (i, member) in last.iter().rev().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&written[at(member.start)..at(member.end)]);
    }
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.skip_ws();
        (self.s.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        match *self.s.get(self.i)? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                self.string()?;
                if looks_like_json(&self.key) {
                    self.nested_json(out, depth);
                } else {
                    json::write_str(out, &self.key, self.limit);
                }
                Some(())
            }
            b't' => self.literal(out, b"true"),
            b'f' => self.literal(out, b"false"),
            b'n' => self.literal(out, b"null"),
            _ => self.number(out),
        }
    }

    /// A string value (just read into `self.key`) that holds JSON text, as a serialized request
    /// body does: redacted by key as well, still written as a string. Text that cannot be
    /// redacted key by key (not JSON, or nested too deep) fails closed.
    fn nested_json(&mut self, out: &mut Vec<u8>, depth: usize) {
        let text = std::mem::take(&mut self.key);
        let mut rewritten = Vec::new();
        if self.redactor.rewrite_json_at(
            strip_bom(&text),
            self.limit,
            &mut rewritten,
            depth + 1,
            false,
        ) {
            // Only &str pieces were written into it. A cut says how long the text was, not
            // its rewrite, as for such a text at the top of the line.
            let rewritten = String::from_utf8_lossy(&rewritten);
            json::write_str_of(out, &rewritten, self.limit, text.len());
        } else if self.redactor.mentions_sensitive_key(&text, &mut rewritten)
            || self.redactor.names_sensitive_key(&text)
        {
            json::write_str(out, REDACTED, usize::MAX);
        } else {
            json::write_str(out, &text, self.limit);
        }
        self.key = text;
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        let open = out.len();
        out.push(b'{');
        if self.eat(b'}').is_some() {
            out.push(b'}');
            return Some(());
        }
        // This object's members sit above the enclosing objects' on the stack.
        let base = self.members.len();
        loop {
            self.skip_ws();
            if self.s.get(self.i) != Some(&b'"') {
                return None;
            }
            self.string()?;
            let start = out.len();
            json::write_key(out, &self.key);
            let key_end = out.len();
            self.eat(b':')?;
            self.skip_ws();
            // A string, number or array (serde's pair, `["admin", "hunter2"]`) under `auth`,
            // `smtp_pass` is a credential; an object under it is redacted key by key, and a
            // boolean (`require_auth`) is a setting.
            let hidden = self
                .redactor
                .hides_under(&self.key, Shape::starting_with(self.s.get(self.i).copied()));
            let mark = out.len();
            self.value(out, depth + 1)?;
            if hidden {
                out.truncate(mark);
                json::write_str(out, REDACTED, usize::MAX);
            }
            self.members.push(Member {
                start,
                key_end,
                end: out.len(),
            });
            if self.eat(b',').is_some() {
                out.push(b',');
            } else {
                self.eat(b'}')?;
                self.hide_named_value(out, base);
                if self.keep_last_of_repeated_keys {
                    keep_last_of_each_key(out, open, &self.members[base..]);
                }
                self.members.truncate(base);
                out.push(b'}');
                return Some(());
            }
        }
    }

    /// In the object whose members (written to `out`) are `self.members[base..]`: a `value`
    /// beside a `name` or `key` naming a secret (`{"name": "DB_PASSWORD", "value": ..}`) is
    /// hidden as under that key, as [`Redactor::redact_value`] hides it. With a key repeated
    /// (JSON text, a flattened map) a reader may take any of them: every name is looked at and
    /// every `value` hidden.
    fn hide_named_value(&mut self, out: &mut Vec<u8>, base: usize) {
        // Written as `"key":`.
        fn key<'o>(out: &'o [u8], member: &Member) -> &'o [u8] {
            &out[member.start + 1..member.key_end - 2]
        }
        let names: Vec<String> = self.members[base..]
            .iter()
            .filter(|member| is_name_member(key(out, member)))
            .filter_map(|member| {
                serde_json::from_slice::<String>(&out[member.key_end..member.end]).ok()
            })
            .filter(|name| is_pair_name(name))
            .collect();
        if names.is_empty() {
            return;
        }
        // Whether a name hides a value of each shape, asked once per object: an object of
        // thousands of names and values costs their sum, not their product.
        let hides_as = |shape| {
            names
                .iter()
                .any(|name| self.redactor.hides_under(name, shape))
        };
        let (hides_scalar, hides_other) = (hides_as(Shape::Scalar), hides_as(Shape::Other));
        let hidden_at = |value: &Member| {
            key(out, value).eq_ignore_ascii_case(b"value")
                && match Shape::starting_with(out.get(value.key_end).copied()) {
                    Shape::Null => false,
                    Shape::Scalar => hides_scalar,
                    Shape::Other => hides_other,
                }
        };
        let targets: Vec<usize> = (base..self.members.len())
            .filter(|&at| hidden_at(&self.members[at]))
            .collect();
        let Some(&first) = targets.first() else {
            return;
        };
        // One pass from the first value hidden: the text after it rebuilt, the members' offsets
        // moved by what the values hidden before them changed.
        let mut hidden = Vec::new();
        json::write_str(&mut hidden, REDACTED, usize::MAX);
        let from = self.members[first].key_end;
        let old = out.split_off(from);
        let (mut copied, mut grown) = (from, 0isize);
        let mut targets = targets.into_iter().peekable();
        for at in base..self.members.len() {
            let member = self.members[at];
            let shift = |offset: usize, by: isize| {
                if offset >= from {
                    offset.saturating_add_signed(by)
                } else {
                    offset
                }
            };
            let moved = &mut self.members[at];
            moved.start = shift(member.start, grown);
            moved.key_end = shift(member.key_end, grown);
            if targets.next_if_eq(&at).is_some() {
                out.extend_from_slice(&old[copied - from..member.key_end - from]);
                out.extend_from_slice(&hidden);
                copied = member.end;
                grown += hidden.len() as isize - (member.end - member.key_end) as isize;
            }
            moved.end = shift(member.end, grown);
        }
        out.extend_from_slice(&old[copied - from..]);
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        out.push(b'[');
        if self.eat(b']').is_some() {
            out.push(b']');
            return Some(());
        }
        // A pair whose first element names a secret holds it in its second, as a member under
        // that key does: serde writes a `(String, String)` so (`["password", "hunter2"]`, a
        // form's fields, `url::Url::query_pairs()` collected).
        let mut pair_name = None;
        for index in 0.. {
            self.skip_ws();
            let first = self.s.get(self.i).copied();
            let mark = out.len();
            self.value(out, depth + 1)?;
            if index == 0 && first == Some(b'"') && is_pair_name(&self.key) {
                pair_name = Some(std::mem::take(&mut self.key));
            }
            let more = self.eat(b',').is_some();
            if index == 1
                && !more
                && let Some(name) = &pair_name
                && self.redactor.hides_under(name, Shape::starting_with(first))
            {
                out.truncate(mark);
                json::write_str(out, REDACTED, usize::MAX);
            }
            if more {
                out.push(b',');
            } else {
                self.eat(b']')?;
                out.push(b']');
                return Some(());
            }
        }
        None
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Option<()> {
        self.s[self.i..].starts_with(word).then(|| {
            self.i += word.len();
            out.extend_from_slice(word);
        })
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        self.i += usize::from(self.s.get(self.i) == Some(&b'-'));
        match self.s.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.require_digits()?;
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            self.i += usize::from(matches!(self.s.get(self.i), Some(b'+' | b'-')));
            self.require_digits()?;
        }
        out.extend_from_slice(&self.s[start..self.i]);
        Some(())
    }

    fn digits(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    fn require_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// Reads a string at `self.i` (on its opening quote) into `self.key`, decoded.
    fn string(&mut self) -> Option<()> {
        self.i += 1;
        self.key.clear();
        loop {
            let start = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // The input is a &str and we stop only on ASCII bytes: always a char boundary.
            self.key
                .push_str(std::str::from_utf8(&self.s[start..self.i]).ok()?);
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.escape()?,
                _ => return None, // a raw control character
            }
        }
    }

    fn escape(&mut self) -> Option<()> {
        let c = *self.s.get(self.i + 1)?;
        self.i += 2;
        let decoded = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if (0xd800..0xdc00).contains(&high) {
                    if self.s.get(self.i..self.i + 2)? != b"\\u" {
                        return None;
                    }
                    self.i += 2;
                    let low = self.hex4()?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                } else {
                    char::from_u32(high)?
                }
            }
            _ => return None,
        };
        self.key.push(decoded);
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

/// How many backslashes come right before `bytes[at]`.
/// Whether the `Debug` text of a value (what follows its key's colon) shows no secret: a
/// boolean, or no value (`None`, `null`).
/// What [`Redactor::hides_under`] tells apart in a value.
#[derive(Clone, Copy)]
enum Shape {
    Null,
    /// A string, number or array: a credential's form under `auth` or `smtp_pass`.
    Scalar,
    /// A boolean or an object.
    Other,
}

impl Shape {
    fn of(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Self::Null,
            serde_json::Value::String(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Array(_) => Self::Scalar,
            serde_json::Value::Bool(_) | serde_json::Value::Object(_) => Self::Other,
        }
    }

    /// The shape of the JSON value starting with `first`.
    fn starting_with(first: Option<u8>) -> Self {
        match first {
            Some(b'n') => Self::Null,
            Some(b'"' | b'-' | b'0'..=b'9' | b'[') => Self::Scalar,
            _ => Self::Other,
        }
    }
}

/// Whether a pair's first element reads as a name (`password`, `api-key`): a key, not words
/// (`["invalid token", 4]` is a message).
fn is_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 256 && text.bytes().all(is_key_byte)
}

/// Whether an object's member so named (`name`, `key`, in any case: Kubernetes' `EnvVar`,
/// AWS's tags) names what its `value` member is.
fn is_name_member(key: &[u8]) -> bool {
    key.eq_ignore_ascii_case(b"name") || key.eq_ignore_ascii_case(b"key")
}

/// A pair's first element that names what its second is. Not an option (`["--password",
/// "--verbose"]`): a command line's options are masked by `mask_value`'s argument rule, which
/// knows that what follows one may be the next option.
fn is_pair_name(text: &str) -> bool {
    is_name(text) && !text.starts_with('-')
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn names_no_secret(value: &str) -> bool {
    let value = value.trim_start();
    ["true", "false", "None", "null"].iter().any(|word| {
        value
            .strip_prefix(word)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    })
}

fn backslashes_before(bytes: &[u8], at: usize) -> usize {
    bytes[..at]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
}

/// Moves `at` back over a quote (`"` or, inside a `Debug` literal, `\"`) just before it;
/// whether there was one.
fn strip_quote_before(bytes: &[u8], at: &mut usize) -> bool {
    if *at == 0 || bytes[*at - 1] != b'"' {
        return false;
    }
    *at -= 1;
    if *at > 0 && bytes[*at - 1] == b'\\' {
        *at -= 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debug_keys_are_found_where_struct_and_map_syntax_puts_them() {
        let r = Redactor::default();
        for named in [
            "Login { user: \"ann\", password: \"x\" }",
            "Config { db: Db { api_key: \"x\" } }",
            "{\"Authorization\": \"Bearer x\"}",
            "Some(\"{\\\"password\\\":\\\"x\\\"}\")",
            "[(\"a\", 1), (\"x\", Creds { session_id: 4 })]",
            "Some([(\"grant_type\", \"password\"), (\"password\", \"hunter2\")])",
            "Form { pairs: [(\n    \"client_secret\",\n    \"s3\",\n)] }",
            "password: x",
            "Upstream { url: \"u\", auth: \"Basic x\" }",
            "Mail { smtp_pass: Some(\"x\") }",
            "{\"proxyAuth\": \"Basic x\"}",
            "Some(\"{\\\"basic_auth\\\":\\\"x\\\"}\")",
        ] {
            assert!(r.names_sensitive_key(named), "{named}");
        }
        for free in [
            "Rejected(\"invalid token: expired\")",
            "Custom { kind: InvalidData, error: \"bad\" }",
            "std::io::Error::token",
            "Some(\"https://example.com/token\")",
            "Usage { max_tokens: 5, total_tokens: 9 }",
            "at 12:00: done",
            "\"token\"",
            "Settings { require_auth: true, smtp_pass: None, basic_auth: false }",
            "Post { author: \"ann\", auth_url: \"https://idp\" }",
            "Some((\"token\", None))",
            "Err((\"invalid token\", 4))",
        ] {
            assert!(!r.names_sensitive_key(free), "{free}");
        }
    }

    fn rewrite_with(redactor: &Redactor, text: &str) -> Option<String> {
        let mut out = Vec::new();
        redactor
            .rewrite_json(text, 32, &mut out, true)
            .then(|| String::from_utf8(out).unwrap())
    }

    fn rewrite(text: &str) -> Option<String> {
        rewrite_with(&Redactor::default(), text)
    }

    #[test]
    fn contract_keys_in_any_case_and_separator_style() {
        let r = Redactor::default();
        for key in [
            "password",
            "db_password",
            "PASSWD",
            "client_secret",
            "access_token",
            "apiKey",
            "X-API-KEY",
            "api.key",
            "Authorization",
            "Set-Cookie",
            "credentials",
            "privateKey",
            "session_id",
            "ssh_passphrase",
            "JWT_SIGNING_KEY",
            "encryptionKey",
        ] {
            assert!(r.is_sensitive(key), "{key}");
        }
        for key in [
            "user_id",
            "method",
            "status",
            "prompt_tokens",
            "keyboard",
            "passenger",
            "signing_algorithm",
        ] {
            assert!(!r.is_sensitive(key), "{key}");
        }
        let long = format!("{}_password", "x".repeat(100));
        assert!(r.is_sensitive(&long));
    }

    #[test]
    fn rewrites_nested_json_redacting_at_any_depth() {
        let text = r#" {"user": {"name": "ann", "Password": "hunter2", "keys": [{"api_key": {"v": 1}}]},
            "n": -1.5e3, "ok": true, "none": null, "esc": "a\"b\u00e9\ud83c\udf89"} "#;
        let out = rewrite(text).unwrap();
        assert!(!out.contains("hunter2"));
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["user"]["Password"], REDACTED);
        assert_eq!(value["user"]["keys"][0]["api_key"], REDACTED);
        assert_eq!(value["user"]["name"], "ann");
        assert_eq!(value["n"], -1500.0);
        assert_eq!(value["esc"], "a\"bé🎉");
    }

    #[test]
    fn rejects_what_is_not_json() {
        for text in [
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\":01}",
            "\"\\ud800\"",
            "{\"a\":1} x",
            "{\"a\":1 \"b\":2}",
            "[{\"a\":1}{\"b\":2}]",
            "Login { password: \"x\" }",
        ] {
            assert_eq!(rewrite(text), None, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(rewrite(&deep), None);
    }

    /// JSON values of every kind, objects and arrays nested a few levels, with keys the
    /// redaction reads (`password`, `name`, `value`) among others.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\é :,{}]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("password|name|value|[a-z]{1,3}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Real JSON, compact or pretty, as is or with one byte taken out, put in or changed
        /// (a comma dropped between members, a quote lost): read where serde_json reads it,
        /// to the same value, and refused (so failing closed) where it refuses it.
        #[test]
        fn agrees_with_serde_json_on_json_and_near_json(
            value in json_value(),
            pretty in any::<bool>(),
            edit in 0u8..4,
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b",:\"{}[] 1\\".to_vec()),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            match edit {
                1 if at < bytes.len() => drop(bytes.remove(at)),
                2 => bytes.insert(at, byte),
                3 if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
            let Ok(text) = String::from_utf8(bytes) else {
                return Ok(());
            };
            let ours = rewrite_with(&Redactor::new(&[], &[]), &text);
            let theirs = serde_json::from_str::<serde_json::Value>(&text);
            prop_assert_eq!(ours.is_some(), theirs.is_ok(), "{:?}", text);
            if let (Some(ours), Ok(theirs)) = (ours, theirs) {
                let back: serde_json::Value = serde_json::from_str(&ours).unwrap();
                prop_assert_eq!(back, theirs, "{:?}", text);
            }
        }

        #[test]
        fn agrees_with_serde_json(text in r#"[\[\]{}",:0-9a-z\\ .eE+-]{0,24}"#) {
            let ours = rewrite_with(&Redactor::new(&[], &[]), &text);
            let theirs = serde_json::from_str::<serde_json::Value>(&text);
            prop_assert_eq!(ours.is_some(), theirs.is_ok(), "{:?}", text);
            if let (Some(ours), Ok(theirs)) = (ours, theirs) {
                let back: serde_json::Value = serde_json::from_str(&ours).unwrap();
                if !text.contains("e") && !text.contains('.') {
                    prop_assert_eq!(back, theirs);
                }
            }
        }
    }
}

//! The W3C `tracestate` header (Trace Context Level 2).

use std::fmt;

use http::HeaderValue;

/// At most this many list members are accepted or propagated.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Propagated tracestate is truncated to this many characters, removing whole entries.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Entries longer than this are the first removed when truncating.
const LARGE_ENTRY_LEN: usize = 128;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 256;

/// Why a `tracestate` was rejected. Any invalid member drops the whole tracestate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceStateError {
    /// A member's key breaks `[a-z0-9][a-z0-9_-*/@]{0,255}`.
    #[error(
        "tracestate key {0:?} is invalid: use 1-256 characters of a-z 0-9 _ - * / @, starting with a-z or 0-9"
    )]
    InvalidKey(String),
    /// A member's value breaks the value grammar (1-256 printable ASCII, no `,` or `=`,
    /// no trailing space).
    #[error(
        "tracestate value for key {0:?} is invalid: use 1-256 printable ASCII characters other than ',' and '='"
    )]
    InvalidValue(String),
    /// A member has no `=`.
    #[error("tracestate member {0:?} has no '='")]
    MissingEquals(String),
    /// More than 32 members.
    #[error("tracestate has more than 32 members")]
    TooManyMembers,
    /// The header is not visible ASCII.
    #[error("tracestate is not ASCII")]
    NotAscii,
    /// An entry to insert is longer than a whole `tracestate` may be (512 characters).
    #[error(
        "tracestate entry of {0} characters cannot fit the 512 characters of a tracestate: use a shorter key or value"
    )]
    EntryTooLong(usize),
}

/// Vendor-specific trace data that travels beside `traceparent`.
///
/// Stored as its normalised header text (`k=v,k=v`), so propagating it costs one copy and
/// lookups scan at most 32 short members. Parsing follows W3C Trace Context Level 2: keys
/// `[a-z0-9][a-z0-9_-*/@]{0,255}`, values of 1–256 printable characters other than `,` and `=`,
/// spaces and tabs around members ignored, empty members skipped, several header values joined
/// in order, a duplicated key kept once (the first), any invalid member or more than 32 members
/// dropping the whole tracestate. The result is truncated to 512 characters by removing whole
/// entries: entries over 128 characters first, then from the right.
///
/// ```
/// use periscope_context::TraceState;
///
/// let mut state = TraceState::parse("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE").unwrap();
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
///
/// // An updated key moves to the left.
/// state.insert("congo", "updated").unwrap();
/// assert_eq!(state.to_string(), "congo=updated,rojo=00f067aa0ba902b7");
/// ```
#[derive(Default, PartialEq, Eq, Hash)]
pub struct TraceState(String);

/// By hand, and inlined into the context's clone: most requests carry no trace state, and cloning
/// an empty `String` still goes through its out-of-line clone (the context is cloned on every
/// request).
impl Clone for TraceState {
    #[inline]
    fn clone(&self) -> Self {
        if self.0.is_empty() {
            return Self::new();
        }
        Self(self.0.clone())
    }
}

impl TraceState {
    /// An empty tracestate.
    pub const fn new() -> Self {
        Self(String::new())
    }

    /// Parses one header value.
    pub fn parse(value: &str) -> Result<Self, TraceStateError> {
        Self::parse_headers([value.as_bytes()])
    }

    /// Parses every `tracestate` header value of a request, joined in order.
    pub fn parse_headers<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, TraceStateError> {
        let mut parser = TraceStateParser::default();
        for value in values {
            parser.push(value);
        }
        parser.finish()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        entries(&self.0).find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value` and moves it to the left, as a vendor does when it updates its
    /// entry. The rightmost entry is dropped past 32 members; the result is truncated to 512
    /// characters by removing other entries (those over 128 characters first, then from the
    /// right): the entry set here stays. An entry over 512 characters on its own (a 256
    /// character key with a 256 character value) is refused, the state left as it was: it
    /// could stay only by removing every other vendor's entry, and not even then.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceStateError> {
        validate_key(key.as_bytes())?;
        validate_value(key.as_bytes(), value.as_bytes())?;
        let entry_len = key.len() + 1 + value.len();
        if entry_len > MAX_TRACESTATE_LEN {
            return Err(TraceStateError::EntryTooLong(entry_len));
        }
        let mut out = String::with_capacity(self.0.len() + key.len() + value.len() + 2);
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        for (k, v) in entries(&self.0).filter(|(k, _)| *k != key) {
            out.push(',');
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        self.0 = out;
        while self.len() > MAX_TRACESTATE_MEMBERS {
            self.remove_at_end();
        }
        if self.0.len() > MAX_TRACESTATE_LEN {
            // The caller's own entry is not the one to give way.
            self.shorten(1);
        }
        Ok(())
    }

    /// Removes `key`, returning whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        let kept: Vec<(&str, &str)> = entries(&self.0).filter(|(k, _)| *k != key).collect();
        let out = join(kept.iter().map(|(k, v)| (*k, *v)));
        self.0 = out;
        self.0.len() != before
    }

    /// The members in order, leftmost (most recently updated) first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        entries(&self.0)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        entries(&self.0).count()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header text (`k=v,k=v`), empty when there are no members.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The header value to send, or `None` when empty (an empty tracestate is not sent).
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        HeaderValue::from_str(&self.0).ok()
    }

    fn remove_at_end(&mut self) {
        let cut = self.0.rfind(',').unwrap_or(0);
        self.0.truncate(cut);
    }

    /// Keeps the header within 512 characters by removing whole entries: first those over
    /// 128 characters (right to left), then from the right. The check is inlined: nearly
    /// every trace state is within the limit.
    #[inline]
    fn truncate(&mut self) {
        if self.0.len() > MAX_TRACESTATE_LEN {
            self.shorten(0);
        }
    }

    /// [`TraceState::truncate`]'s work, sparing the `protected` leftmost entries from the
    /// pass over large entries.
    fn shorten(&mut self, protected: usize) {
        let mut kept: Vec<(&str, &str)> = entries(&self.0).collect();
        let mut len = self.0.len();
        let mut i = kept.len();
        while len > MAX_TRACESTATE_LEN && i > protected {
            i -= 1;
            let (k, v) = kept[i];
            let entry_len = k.len() + 1 + v.len();
            if entry_len > LARGE_ENTRY_LEN {
                kept.remove(i);
                len = len.saturating_sub(entry_len + 1);
            }
        }
        while len > MAX_TRACESTATE_LEN {
            match kept.pop() {
                Some((k, v)) => len = len.saturating_sub(k.len() + v.len() + 2),
                None => break,
            }
        }
        self.0 = join(kept.into_iter());
    }
}

/// Parses `tracestate` header values one at a time, so a carrier can feed them without
/// collecting them first. The first error is kept and decides the result.
#[derive(Default)]
pub(crate) struct TraceStateParser {
    out: String,
    members: usize,
    error: Option<TraceStateError>,
}

impl TraceStateParser {
    pub(crate) fn push(&mut self, value: &[u8]) {
        if self.error.is_none()
            && let Err(error) = self.push_members(value)
        {
            self.error = Some(error);
        }
    }

    fn push_members(&mut self, value: &[u8]) -> Result<(), TraceStateError> {
        // Byte loops rather than `str::split`: members are a few bytes long, where a plain
        // loop beats the searcher set-up; every accepted byte is ASCII.
        // At most what can be kept: a header of blanks and commas (hundreds of kilobytes fit
        // in a request head) must not leave its size reserved for the life of the context.
        self.out.reserve(value.len().min(MAX_TRACESTATE_LEN + 1));
        for member in value.split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            self.members += 1;
            if self.members > MAX_TRACESTATE_MEMBERS {
                return Err(TraceStateError::TooManyMembers);
            }
            let Some(eq) = member.iter().position(|&b| b == b'=') else {
                return Err(TraceStateError::MissingEquals(lossy(member)));
            };
            let (key, val) = (&member[..eq], &member[eq + 1..]);
            validate_key(key)?;
            validate_value(key, val)?;
            // A duplicated key is kept once: the leftmost entry wins.
            if self.members == 1 || !has_key(&self.out, key) {
                if !self.out.is_empty() {
                    self.out.push(',');
                }
                // Validated above: keys and values are printable ASCII.
                self.out
                    .push_str(std::str::from_utf8(member).map_err(|_| TraceStateError::NotAscii)?);
            }
        }
        Ok(())
    }

    /// Inlined into `extract`, which is made for each carrier type in the crate using it.
    #[inline]
    pub(crate) fn finish(self) -> Result<TraceState, TraceStateError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut state = TraceState(self.out);
        state.truncate();
        Ok(state)
    }
}

fn join<'a>(members: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in members {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Members of normalised text: keys never hold '=' and values never hold ','.
fn entries(normalised: &str) -> impl Iterator<Item = (&str, &str)> {
    normalised
        .split(',')
        .filter(|m| !m.is_empty())
        .filter_map(|m| m.split_once('='))
}

/// Trims the optional whitespace (spaces and tabs) around a list member.
fn trim_ows(member: &[u8]) -> &[u8] {
    let start = member
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(member.len());
    let end = member
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &member[start..end]
}

/// Whether the normalised text already has a member with this key.
fn has_key(normalised: &str, key: &[u8]) -> bool {
    normalised.as_bytes().split(|&b| b == b',').any(|member| {
        member.len() > key.len() && member.starts_with(key) && member[key.len()] == b'='
    })
}

fn lossy(bytes: &[u8]) -> String {
    truncated(&String::from_utf8_lossy(bytes))
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn validate_key(key: &[u8]) -> Result<(), TraceStateError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && matches!(key[0], b'a'..=b'z' | b'0'..=b'9')
        && key[1..]
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'));
    if valid {
        Ok(())
    } else {
        Err(TraceStateError::InvalidKey(lossy(key)))
    }
}

fn validate_value(key: &[u8], value: &[u8]) -> Result<(), TraceStateError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    if valid {
        Ok(())
    } else {
        Err(TraceStateError::InvalidValue(lossy(key)))
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceState({:?})", self.0)
    }
}

impl std::str::FromStr for TraceState {
    type Err = TraceStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        let ts = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
        let ts = TraceState::parse("foo=1 \t , \t bar=2, \t baz=3").unwrap();
        assert_eq!(ts.as_str(), "foo=1,bar=2,baz=3");
        assert!(TraceState::parse("").unwrap().is_empty());
        assert_eq!(TraceState::parse(",,foo=1,,").unwrap().as_str(), "foo=1");
    }

    #[test]
    fn multiple_headers_join_in_order() {
        let ts = TraceState::parse_headers([
            b"foo=1,bar=2".as_slice(),
            b"".as_slice(),
            b"rojo=1,congo=2".as_slice(),
            b"baz=3".as_slice(),
        ])
        .unwrap();
        assert_eq!(ts.as_str(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
    }

    #[test]
    fn key_grammar_of_level_2() {
        for key in ["foo@", "foo@@bar", "foo@bar@baz", "0abc", "a_-*/"] {
            assert!(TraceState::parse(&format!("{key}=1")).is_ok(), "{key}");
        }
        for key in ["@foo", "FOO", "foo.bar", "foo ", "_a", ""] {
            assert!(
                TraceState::parse(&format!("{key}=1,bar=2")).is_err(),
                "{key:?}"
            );
        }
        assert!(TraceState::parse(&format!("{}=1", "z".repeat(256))).is_ok());
        assert!(TraceState::parse(&format!("{}=1", "z".repeat(257))).is_err());
    }

    #[test]
    fn value_grammar() {
        let all: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        assert_eq!(
            TraceState::parse(&format!("k={all}")).unwrap().get("k"),
            Some(all.as_str())
        );
        for bad in ["foo=bar=baz", "foo=,bar=3", "foo", "k=\u{7f}"] {
            assert!(TraceState::parse(bad).is_err(), "{bad}");
        }
        assert!(TraceState::parse(&format!("k={}", "v".repeat(257))).is_err());
        assert!(TraceState::parse_headers([b"k=\xff".as_slice()]).is_err());
    }

    #[test]
    fn member_limit_is_32() {
        let members = |n: usize| {
            (1..=n)
                .map(|i| format!("k{i}={i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(TraceState::parse(&members(32)).unwrap().len(), 32);
        assert_eq!(
            TraceState::parse(&members(33)),
            Err(TraceStateError::TooManyMembers)
        );
    }

    #[test]
    fn duplicated_keys_keep_the_first() {
        assert_eq!(TraceState::parse("foo=1,foo=2").unwrap().as_str(), "foo=1");
        let ts = TraceState::parse_headers([b"foo=1".as_slice(), b"foo=2".as_slice()]).unwrap();
        assert_eq!(ts.as_str(), "foo=1");
    }

    #[test]
    fn truncation_removes_large_entries_first_then_from_the_right() {
        let large = format!("big={}", "x".repeat(200));
        // 25 entries of 24 characters: 624 characters even without the large one.
        let smalls: Vec<String> = (0..25)
            .map(|i| format!("s{i:02}={}", "y".repeat(20)))
            .collect();
        let header = format!(
            "{},{large},{}",
            smalls[..10].join(","),
            smalls[10..].join(",")
        );
        let ts = TraceState::parse(&header).unwrap();
        assert!(ts.as_str().len() <= MAX_TRACESTATE_LEN);
        assert!(ts.get("big").is_none(), "the large entry goes first");
        assert!(
            ts.get("s00").is_some() && ts.get("s24").is_none(),
            "then from the right"
        );
        assert_eq!(ts.len(), 20, "20 entries of 24 characters fit in 512");
        assert!(ts.as_str().starts_with("s00="));
    }

    #[test]
    fn insert_moves_left_and_keeps_limits() {
        let mut ts = TraceState::parse("a=1,b=2,c=3").unwrap();
        ts.insert("c", "9").unwrap();
        assert_eq!(ts.as_str(), "c=9,a=1,b=2");
        ts.insert("new", "x").unwrap();
        assert_eq!(ts.as_str(), "new=x,c=9,a=1,b=2");
        assert!(ts.insert("Bad", "x").is_err());
        assert!(ts.remove("a"));
        assert!(!ts.remove("a"));
        assert_eq!(ts.as_str(), "new=x,c=9,b=2");

        let mut full = TraceState::parse(
            &(1..=32)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .unwrap();
        full.insert("fresh", "v").unwrap();
        assert_eq!(full.len(), 32);
        assert!(full.get("k32").is_none() && full.get("fresh").is_some());
    }

    /// A vendor's own entry over 128 characters is not the one truncation removes: the
    /// others give way, from the right.
    #[test]
    fn an_inserted_large_entry_stays_and_the_others_give_way() {
        let members: Vec<String> = (0..20)
            .map(|i| format!("k{i:02}={}", "v".repeat(12)))
            .collect();
        let mut ts = TraceState::parse(&members.join(",")).unwrap();
        let large = "x".repeat(256);
        ts.insert("mine", &large).unwrap();
        assert_eq!(ts.get("mine"), Some(large.as_str()));
        assert!(
            ts.as_str().len() <= MAX_TRACESTATE_LEN,
            "{}",
            ts.as_str().len()
        );
        assert!(ts.get("k00").is_some() && ts.get("k19").is_none(), "{ts}");
    }

    /// An entry longer than a whole tracestate may be is refused: inserted, it would have
    /// removed every other vendor's entry and then itself.
    #[test]
    fn insert_of_an_entry_over_512_characters_is_refused_and_keeps_the_other_entries() {
        let mut ts = TraceState::parse("a=1,b=2").unwrap();
        let (key, value) = ("k".repeat(256), "v".repeat(256));
        assert_eq!(
            ts.insert(&key, &value),
            Err(TraceStateError::EntryTooLong(513))
        );
        assert_eq!(ts.as_str(), "a=1,b=2");
        // 512 characters exactly stay, alone.
        ts.insert(&key, &value[1..]).unwrap();
        assert_eq!(ts.get(&key), Some(&value[1..]));
        assert_eq!(ts.as_str().len(), MAX_TRACESTATE_LEN);
    }

    /// A header of blanks and commas around one member keeps the member, not the header's
    /// size: the context holding it lives as long as the request or job.
    #[test]
    fn a_padded_header_leaves_no_capacity_behind() {
        let header = format!("a=1{}", ", ".repeat(200_000));
        let ts = TraceState::parse(&header).unwrap();
        assert_eq!(ts.as_str(), "a=1");
        assert!(
            ts.0.capacity() <= 2 * MAX_TRACESTATE_LEN,
            "{}",
            ts.0.capacity()
        );
    }
}

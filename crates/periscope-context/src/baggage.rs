//! The W3C `baggage` header.

use std::fmt;

use http::HeaderValue;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// At most this many members are kept and propagated.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;
/// At most this many bytes of encoded baggage are kept and propagated.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// Bytes a baggage value is sent percent-encoded: everything outside `baggage-octet`, `%`, and
/// `=`, which the specification allows unencoded but parsers that split a member on every `=`
/// (OpenTelemetry Rust's among them) would cut the value at.
const VALUE_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'=')
    .add(b'\\')
    .add(b'%');

/// [`VALUE_ENCODE`] with `=` sent as it is: for baggage that fits the 8192 bytes only so, as
/// it came (base64 padding, `==`, grows by four bytes encoded), since a header within the
/// limits must go on whole.
const VALUE_ENCODE_KEEPING_EQUALS: &AsciiSet = &VALUE_ENCODE.remove(b'=');

/// Why a baggage member was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaggageError {
    /// The key is not an RFC 7230 token.
    #[error("baggage key {0:?} is not a token (letters, digits and !#$%&'*+-.^_`|~)")]
    InvalidKey(String),
    /// The value holds a byte outside `baggage-octet` (invalid UTF-8 after percent-decoding is
    /// not an error: it becomes U+FFFD).
    #[error("baggage value for key {0:?} is not valid percent-encoded UTF-8")]
    InvalidValue(String),
    /// A property breaks `key [= value]`.
    #[error("baggage property {0:?} is invalid")]
    InvalidProperty(String),
    /// A member has no `=`.
    #[error("baggage member {0:?} has no '='")]
    MissingEquals(String),
    /// Adding the member would exceed 64 members or 8192 bytes.
    #[error("baggage is full: at most 64 members and 8192 bytes are propagated")]
    LimitExceeded,
}

/// One baggage entry: a key, its decoded value, and its properties as sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BaggageMember {
    key: String,
    value: String,
    /// Properties in their wire form (`p1;p2=v`), without the leading `;`.
    properties: String,
}

impl BaggageMember {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The decoded value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The properties in wire form (`p1;p2=v`), empty when there are none.
    pub fn properties(&self) -> &str {
        &self.properties
    }

    fn encoded_len(&self, set: &'static AsciiSet) -> usize {
        let value_len: usize = utf8_percent_encode(&self.value, set).map(str::len).sum();
        let properties_len = if self.properties.is_empty() {
            0
        } else {
            1 + self.properties.len()
        };
        self.key.len() + 1 + value_len + properties_len
    }

    fn write_encoded(&self, out: &mut String, set: &'static AsciiSet) {
        out.push_str(&self.key);
        out.push('=');
        out.extend(utf8_percent_encode(&self.value, set));
        if !self.properties.is_empty() {
            out.push(';');
            out.push_str(&self.properties);
        }
    }
}

/// Application-defined key/value pairs that travel with a request (W3C Baggage).
///
/// Values are percent-decoded on parse and encoded on format (`=` included, so peers that split
/// on every `=` read the whole value, except in baggage that fits the 8192 bytes only with its
/// `=` as sent, which goes on so); properties are kept as sent.
/// At most 64 members and 8192 bytes are kept: a member that does not fit in the bytes left is
/// dropped whole (later, smaller members still get in), members past the 64th are dropped, and
/// a member that breaks the grammar is dropped alone (baggage is advisory, so one bad member
/// does not cost the others). A percent-encoded value that is not UTF-8 is kept with U+FFFD in
/// place of the invalid bytes, as the W3C Baggage specification says.
///
/// ```
/// use periscope_context::Baggage;
///
/// let baggage = Baggage::parse("userId=alice,serverNode=DF%2028;meta=1, isProduction=false");
/// assert_eq!(baggage.get("serverNode"), Some("DF 28"));
/// assert_eq!(baggage.to_string(), "userId=alice,serverNode=DF%2028;meta=1,isProduction=false");
/// ```
#[derive(Default, PartialEq, Eq, Hash)]
pub struct Baggage {
    members: Vec<BaggageMember>,
    encoded_len: usize,
    /// The length the members would take with every `=` sent as it is: kept as they come,
    /// so that a member refused at the limit costs its own bytes, never a pass over the kept
    /// ones (a header of thousands of refused members would cost thousands of passes).
    raw_len: usize,
    /// Whether `=` in values is sent as it is ([`VALUE_ENCODE_KEEPING_EQUALS`]): only where
    /// the members fit the 8192 bytes no other way.
    equals_raw: bool,
}

/// By hand, and inlined into the context's clone: most requests carry no baggage, and cloning an
/// empty `Vec` still goes through its out-of-line clone (the context is cloned on every request).
impl Clone for Baggage {
    #[inline]
    fn clone(&self) -> Self {
        let members = if self.members.is_empty() {
            Vec::new()
        } else {
            self.members.clone()
        };
        Self {
            members,
            encoded_len: self.encoded_len,
            raw_len: self.raw_len,
            equals_raw: self.equals_raw,
        }
    }
}

impl Baggage {
    /// Empty baggage.
    pub const fn new() -> Self {
        Self {
            members: Vec::new(),
            encoded_len: 0,
            raw_len: 0,
            equals_raw: false,
        }
    }

    /// Parses one header value, dropping invalid members and members past the limits.
    pub fn parse(value: &str) -> Self {
        Self::parse_headers([value.as_bytes()])
    }

    /// Parses every `baggage` header value of a request, joined in order.
    pub fn parse_headers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut baggage = Self::new();
        for value in values {
            if !baggage.extend_from_header(value) {
                break;
            }
        }
        baggage
    }

    /// Adds the valid members of one header value; `false` once a limit is reached.
    pub(crate) fn extend_from_header(&mut self, value: &[u8]) -> bool {
        for member in value.split(|&b| b == b',') {
            // Bytes that are not UTF-8 are never baggage-octets: only their member is dropped.
            let Ok(member) = std::str::from_utf8(member) else {
                continue;
            };
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let Ok(parsed) = parse_member(member) else {
                continue;
            };
            // A member too big for the bytes left is dropped alone: smaller ones after it may
            // still fit. Only a full member count ends the parse.
            if self.push(parsed).is_err() && self.members.len() >= MAX_BAGGAGE_MEMBERS {
                return false;
            }
        }
        true
    }

    /// The decoded value of `key` (the first member with that key).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// Sets `key` to `value`, replacing every member with that key (a received header may repeat one).
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), BaggageError> {
        if !is_token(key) {
            return Err(BaggageError::InvalidKey(key.chars().take(64).collect()));
        }
        let member = BaggageMember {
            key: key.to_owned(),
            value: value.to_owned(),
            properties: String::new(),
        };
        // Work on a copy so a refused insert leaves the baggage as it was. Every member with
        // the key goes (a received header may repeat one), so `get` sees the new value.
        let mut next = Self::new();
        for kept in self.members.iter().filter(|m| m.key != key) {
            next.push(kept.clone())?;
        }
        next.push(member)?;
        *self = next;
        Ok(())
    }

    /// The members in order.
    pub fn iter(&self) -> impl Iterator<Item = &BaggageMember> {
        self.members.iter()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The header value to send, or `None` when empty.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        if self.members.is_empty() {
            return None;
        }
        HeaderValue::from_str(&self.to_string()).ok()
    }

    fn value_encode_set(&self) -> &'static AsciiSet {
        if self.equals_raw {
            VALUE_ENCODE_KEEPING_EQUALS
        } else {
            VALUE_ENCODE
        }
    }

    /// Bytes this member adds to the header, counting its separating comma.
    fn member_cost(&self, member: &BaggageMember) -> usize {
        member.encoded_len(self.value_encode_set()) + usize::from(!self.members.is_empty())
    }

    fn push(&mut self, member: BaggageMember) -> Result<(), BaggageError> {
        if self.members.len() >= MAX_BAGGAGE_MEMBERS {
            return Err(BaggageError::LimitExceeded);
        }
        let mut cost = self.member_cost(&member);
        // What it would cost with every `=` sent as it is: more work only for a value with one.
        let raw_cost = if !self.equals_raw && member.value.contains('=') {
            member.encoded_len(VALUE_ENCODE_KEEPING_EQUALS) + usize::from(!self.members.is_empty())
        } else {
            cost
        };
        // With every `=` sent as it is, the member may still fit (where it or a kept one has
        // an `=`, the raw length is the shorter). Only when it then fits: a member refused
        // anyway must not change how the kept ones, which fit as they are, go out.
        if self.encoded_len + cost > MAX_BAGGAGE_BYTES
            && !self.equals_raw
            && self.raw_len + raw_cost <= MAX_BAGGAGE_BYTES
        {
            self.equals_raw = true;
            self.encoded_len = self.raw_len;
            cost = raw_cost;
        }
        if self.encoded_len + cost > MAX_BAGGAGE_BYTES {
            return Err(BaggageError::LimitExceeded);
        }
        self.encoded_len += cost;
        self.raw_len += raw_cost;
        self.members.push(member);
        Ok(())
    }
}

fn parse_member(member: &str) -> Result<BaggageMember, BaggageError> {
    let (pair, properties) = member.split_once(';').unwrap_or((member, ""));
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| BaggageError::MissingEquals(member.chars().take(64).collect()))?;
    let key = key.trim_matches([' ', '\t']);
    let value = value.trim_matches([' ', '\t']);
    if !is_token(key) {
        return Err(BaggageError::InvalidKey(key.chars().take(64).collect()));
    }
    if !value.bytes().all(is_baggage_octet) {
        return Err(BaggageError::InvalidValue(key.to_owned()));
    }
    // W3C Baggage: invalid UTF-8 after percent-decoding becomes U+FFFD; the member is kept.
    let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
    let mut normalised = String::new();
    if !properties.is_empty() {
        for property in properties.split(';') {
            let property = property.trim_matches([' ', '\t']);
            let valid = match property.split_once('=') {
                Some((k, v)) => {
                    is_token(k.trim_matches([' ', '\t']))
                        && v.trim_matches([' ', '\t']).bytes().all(is_baggage_octet)
                }
                None => is_token(property),
            };
            if !valid {
                return Err(BaggageError::InvalidProperty(
                    property.chars().take(64).collect(),
                ));
            }
            if !normalised.is_empty() {
                normalised.push(';');
            }
            match property.split_once('=') {
                Some((k, v)) => {
                    normalised.push_str(k.trim_matches([' ', '\t']));
                    normalised.push('=');
                    normalised.push_str(v.trim_matches([' ', '\t']));
                }
                None => normalised.push_str(property),
            }
        }
    }
    Ok(BaggageMember {
        key: key.to_owned(),
        value,
        properties: normalised,
    })
}

/// RFC 7230 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

impl fmt::Display for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(self.encoded_len);
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            member.write_encoded(&mut out, self.value_encode_set());
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Baggage({:?})", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        let b = Baggage::parse(
            "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue",
        );
        assert_eq!(b.len(), 3);
        assert_eq!(b.get("key2"), Some("value2"));
        assert_eq!(b.iter().next().unwrap().properties(), "property1;property2");
        assert_eq!(
            b.to_string(),
            "key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue"
        );
        let b = Baggage::parse("key1=value1%2Cvalue2");
        assert_eq!(b.get("key1"), Some("value1,value2"));
        assert_eq!(b.to_string(), "key1=value1%2Cvalue2");
    }

    #[test]
    fn unicode_and_reserved_characters_round_trip() {
        let mut b = Baggage::new();
        b.insert("user", "Zoë, \"quoted\"; 100%\\").unwrap();
        let text = b.to_string();
        assert!(
            text.bytes().all(|c| c == b'=' || is_baggage_octet(c)),
            "{text}"
        );
        assert_eq!(
            Baggage::parse(&text).get("user"),
            Some("Zoë, \"quoted\"; 100%\\")
        );
        assert!(b.insert("bad key", "x").is_err());
    }

    #[test]
    fn invalid_members_are_dropped_alone() {
        let b = Baggage::parse("good=1,bad key=2,=3,novalue,also=\"q\",fine=2,%ZZ=1,nonutf=%ff");
        let keys: Vec<&str> = b.iter().map(BaggageMember::key).collect();
        assert_eq!(keys, ["good", "fine", "%ZZ", "nonutf"]);
        assert!(
            Baggage::parse_headers([b"k=\xff".as_slice(), b"ok=1".as_slice()])
                .get("ok")
                .is_some()
        );
    }

    /// A raw Latin-1 byte (a client that skipped percent-encoding) costs its member only.
    #[test]
    fn bytes_that_are_not_utf8_drop_only_their_member() {
        let b = Baggage::parse_headers([b"a=1,b=caf\xe9,c=2;p=\xff,d=4".as_slice()]);
        let keys: Vec<&str> = b.iter().map(BaggageMember::key).collect();
        assert_eq!(keys, ["a", "d"]);
    }

    /// A header within the W3C limits goes on whole (the specification's MUST for 8192
    /// bytes), though `=` sent encoded would take it past them: such baggage keeps its `=` as
    /// it came, while smaller baggage still sends it encoded.
    #[test]
    fn baggage_within_8192_bytes_as_received_keeps_every_member_whatever_its_equals_signs() {
        let members: Vec<String> = (0..64)
            .map(|i| format!("k{i:02}={}==", "A".repeat(120)))
            .collect();
        let header = members.join(",");
        assert!(header.len() <= MAX_BAGGAGE_BYTES, "{}", header.len());
        let received = Baggage::parse(&header);
        assert_eq!(received.len(), 64);
        let sent = received.to_string();
        assert!(sent.len() <= MAX_BAGGAGE_BYTES, "{}", sent.len());
        assert_eq!(received.encoded_len, sent.len());
        // Sent as it came; read back, every value is whole.
        assert_eq!(sent, header);
        let read_back = Baggage::parse(&sent);
        assert_eq!(read_back.len(), 64);
        assert_eq!(read_back.get("k63"), received.get("k63"));
        assert!(read_back.get("k63").unwrap().ends_with("=="));
    }

    /// A member too big even with every `=` sent raw is dropped, and the members kept, which
    /// fit as they are, still send their `=` encoded.
    #[test]
    fn an_oversized_member_does_not_make_equals_signs_go_out_raw() {
        let b = Baggage::parse(&format!("a=x=y,big={},c=1", "z".repeat(8200)));
        assert_eq!(b.to_string(), "a=x%3Dy,c=1");
        assert_eq!(b.encoded_len, b.to_string().len());
        assert_eq!(b.get("a"), Some("x=y"));
    }

    /// `=` is a baggage-octet, but a peer that splits a member on every `=` (OpenTelemetry
    /// Rust) would cut a base64 value at its padding, so it is sent encoded.
    #[test]
    fn equals_signs_in_values_are_sent_encoded() {
        let mut b = Baggage::new();
        b.insert("token", "dGVzdA==").unwrap();
        assert_eq!(b.to_string(), "token=dGVzdA%3D%3D");
        assert_eq!(
            Baggage::parse(&b.to_string()).get("token"),
            Some("dGVzdA==")
        );

        let received = Baggage::parse("token=dGVzdA==,f=a=b;p=x=y");
        assert_eq!(received.get("token"), Some("dGVzdA=="));
        assert_eq!(received.get("f"), Some("a=b"));
        assert_eq!(
            received.to_string(),
            "token=dGVzdA%3D%3D,f=a%3Db;p=x=y",
            "properties are kept as sent"
        );
        assert_eq!(received.encoded_len, received.to_string().len());
    }

    #[test]
    fn empty_values_are_allowed() {
        assert_eq!(Baggage::parse("k=").get("k"), Some(""));
    }

    #[test]
    fn limits_drop_whole_members() {
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        let b = Baggage::parse(&many.join(","));
        assert_eq!(b.len(), MAX_BAGGAGE_MEMBERS);
        assert_eq!(b.iter().last().unwrap().key(), "k63");

        let big: Vec<String> = (0..10)
            .map(|i| format!("k{i}={}", "x".repeat(1000)))
            .collect();
        let b = Baggage::parse(&big.join(","));
        assert_eq!(b.len(), 8);
        assert!(b.to_string().len() <= MAX_BAGGAGE_BYTES);

        // One member too big for what is left does not cost the members after it.
        let b = Baggage::parse(&format!("a=1,huge={},b=2", "x".repeat(9000)));
        let keys: Vec<&str> = b.iter().map(BaggageMember::key).collect();
        assert_eq!(keys, ["a", "b"]);
        let b = Baggage::parse_headers([
            format!("huge={}", "x".repeat(9000)).as_bytes(),
            b"after=1".as_slice(),
        ]);
        assert_eq!(b.get("after"), Some("1"));

        let b = Baggage::parse(&big.join(","));
        let mut full = b.clone();
        assert_eq!(
            full.insert("more", &"y".repeat(200)),
            Err(BaggageError::LimitExceeded)
        );
        assert_eq!(full, b, "a refused insert changes nothing");
    }

    #[test]
    fn invalid_utf8_becomes_the_replacement_character() {
        let b = Baggage::parse("ok=1,nonutf=%FF,mixed=a%C3b");
        assert_eq!(b.get("nonutf"), Some("\u{FFFD}"));
        assert_eq!(b.get("mixed"), Some("a\u{FFFD}b"));
        assert_eq!(b.get("ok"), Some("1"));
    }

    #[test]
    fn insert_replaces_every_member_with_the_key() {
        let mut b = Baggage::parse("a=1,b=2,a=2");
        b.insert("a", "3").unwrap();
        assert_eq!(b.get("a"), Some("3"));
        assert_eq!(b.to_string(), "b=2,a=3");
        assert_eq!(b.encoded_len, b.to_string().len());
    }

    #[test]
    fn insert_replaces() {
        let mut b = Baggage::parse("a=1,b=2");
        b.insert("a", "3").unwrap();
        assert_eq!(b.to_string(), "b=2,a=3");
        assert_eq!(b.encoded_len, b.to_string().len());
        b.insert("a", "").unwrap();
        b.insert("b", "x").unwrap();
        assert_eq!(b.encoded_len, b.to_string().len());
        assert_eq!(
            b.insert("a", &"z".repeat(9000)),
            Err(BaggageError::LimitExceeded)
        );
        assert_eq!(
            b.get("a"),
            Some(""),
            "a refused replacement keeps the old value"
        );
    }
}

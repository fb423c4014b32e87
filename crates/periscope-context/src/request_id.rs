//! Request ids: validation of incoming ids and generation of new ones.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use rand::RngExt;
use rand::rngs::ThreadRng;

/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why a request id (or a tenant id, which follows the same rules) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The value was empty.
    #[error("the id is empty; send 1 to 128 characters of A-Z a-z 0-9 - _ . :")]
    Empty,
    /// The value was longer than [`MAX_REQUEST_ID_LEN`].
    #[error("the id is {0} bytes long; at most 128 are accepted")]
    TooLong(usize),
    /// The value held a byte outside `A-Z a-z 0-9 - _ . :`.
    #[error(
        "the id holds the byte 0x{byte:02x} at position {position}; only A-Z a-z 0-9 - _ . : are accepted"
    )]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its zero-based position.
        position: usize,
    },
}

/// Checks the id rules shared by request ids and tenant ids:
/// 1–128 bytes of `A-Z a-z 0-9 - _ . :`.
pub fn validate_id(value: &[u8]) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId::Empty);
    }
    if value.len() > MAX_REQUEST_ID_LEN {
        return Err(InvalidId::TooLong(value.len()));
    }
    // One branch for the whole id rather than one per byte: ids are checked on every
    // request, and nearly all are valid.
    if value.iter().fold(true, |valid, &b| valid & is_id_byte(b)) {
        return Ok(());
    }
    match value.iter().position(|&b| !is_id_byte(b)) {
        Some(position) => Err(InvalidId::InvalidByte {
            byte: value[position],
            position,
        }),
        None => Ok(()),
    }
}

fn is_id_byte(b: u8) -> bool {
    ID_BYTES[usize::from(b)]
}

/// `A-Z a-z 0-9 - _ . :` as a table: ids are checked on every request.
static ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':');
        b += 1;
    }
    table
};

/// A validated request (correlation) id.
///
/// Backed by an [`http::HeaderValue`], so echoing it in a response or sending it downstream
/// is a reference-count increment, not a copy.
///
/// ```
/// use periscope_context::RequestId;
///
/// let kept = RequestId::parse("order-42:retry.1").unwrap();
/// assert_eq!(kept.as_str(), "order-42:retry.1");
/// assert!(RequestId::parse("has space").is_err());
///
/// let fresh = RequestId::generate();
/// assert!(fresh.as_str().starts_with("req_"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

/// The length of a ULID's text.
const ULID_LEN: usize = ulid::ULID_LEN;

/// `req_` and a 26-character ULID.
const GENERATED_LEN: usize = 4 + ULID_LEN;

/// The bytes of a generated id, owned by the `Bytes` that shares them.
struct GeneratedId([u8; GENERATED_LEN]);

impl AsRef<[u8]> for GeneratedId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl RequestId {
    /// The prefix of generated ids.
    pub const GENERATED_PREFIX: &'static str = "req_";

    /// Validates `value` as a request id.
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        validate_id(value.as_bytes())?;
        Ok(Self(
            HeaderValue::from_str(value).map_err(|_| InvalidId::Empty)?,
        ))
    }

    /// Validates a header value as a request id, sharing its bytes.
    pub fn from_header(value: &HeaderValue) -> Result<Self, InvalidId> {
        validate_id(value.as_bytes())?;
        Ok(Self(value.clone()))
    }

    /// Wraps a header value that already passed [`validate_id`].
    pub(crate) fn from_validated(value: HeaderValue) -> Self {
        Self(value)
    }

    /// Generates a new id: `req_` followed by a lower-case ULID (26 characters).
    ///
    /// ULIDs sort by creation time to the millisecond and carry 80 random bits, so ids from
    /// different processes do not collide; the result is URL-safe and valid by the id rules.
    pub fn generate() -> Self {
        Self::generate_with(&mut rand::rng())
    }

    /// [`RequestId::generate`] drawing its random bits from a handle the caller holds, so a
    /// request that also starts a trace takes the thread's generator once.
    pub(crate) fn generate_with(rng: &mut ThreadRng) -> Self {
        // A ULID: 48 bits of Unix time in milliseconds, then 80 random bits, written in
        // lower case (ULIDs are written in upper case; lower case reads better in logs and URLs).
        let millis = unix_millis();
        let mut text = [0u8; ULID_LEN];
        ulid::Ulid::from_parts(millis, rng.random())
            .array_to_str(&mut text)
            .make_ascii_lowercase();
        let mut buf = [0u8; GENERATED_LEN];
        buf[..4].copy_from_slice(Self::GENERATED_PREFIX.as_bytes());
        buf[4..].copy_from_slice(&text);
        // Owned bytes are shared by reference count from the start: the id is cloned into the
        // extensions, the current context and the response, and a plain `Vec`-backed value
        // would allocate again on its first clone.
        let shared = bytes::Bytes::from_owner(GeneratedId(buf));
        Self(
            HeaderValue::from_maybe_shared(shared)
                .unwrap_or_else(|_| HeaderValue::from_static("req_")),
        )
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Validated ids are ASCII, so this never falls back (and the UTF-8 check is the cheap
        // one: `HeaderValue::to_str` checks every byte for visible ASCII again).
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value (cheap to clone).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Milliseconds since the Unix epoch, for a generated id's timestamp.
///
/// On Linux the kernel's coarse clock: the time of its last tick (1 to 10 ms old), read in
/// 5 to 10 ns, where `SystemTime::now` took about 45 on the virtual machine measured; an id
/// needs its millisecond only to sort among ids made milliseconds apart. Elsewhere, or where
/// the kernel refuses that clock, the system time.
fn unix_millis() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::time::{ClockId, DynamicClockId, clock_gettime_dynamic};
        if let Ok(now) = clock_gettime_dynamic(DynamicClockId::Known(ClockId::RealtimeCoarse)) {
            let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
            let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
            return seconds * 1_000 + nanos / 1_000_000;
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

impl std::str::FromStr for RequestId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let all = "ABCXYZabcxyz0189-_.:";
        assert_eq!(RequestId::parse(all).unwrap().as_str(), all);
        assert!(RequestId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(RequestId::parse(""), Err(InvalidId::Empty));
        assert_eq!(
            RequestId::parse(&"a".repeat(129)),
            Err(InvalidId::TooLong(129))
        );
        for bad in [
            "a b", "a/b", "a\"b", "a\nb", "é", "a%20", "a,b", "a;b", "<script>",
        ] {
            assert!(
                matches!(RequestId::parse(bad), Err(InvalidId::InvalidByte { .. })),
                "{bad:?} accepted"
            );
        }
        let err = RequestId::parse("ab c").unwrap_err().to_string();
        assert!(err.contains("0x20") && err.contains("position 2"), "{err}");
    }

    #[test]
    fn generated_ids_are_valid_unique_and_time_ordered() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::generate()).collect();
        for id in &ids {
            assert_eq!(id.as_str().len(), 30);
            assert!(validate_id(id.as_str().as_bytes()).is_ok());
            assert!(
                id.as_str()[4..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            );
        }
        let unique: std::collections::HashSet<_> = ids.iter().map(RequestId::as_str).collect();
        assert_eq!(unique.len(), ids.len());
        // The first 10 ULID characters encode the millisecond timestamp, read from a clock
        // that moves once a kernel tick (at most 10 ms).
        let first = RequestId::generate();
        std::thread::sleep(std::time::Duration::from_millis(25));
        let later = RequestId::generate();
        assert!(first.as_str()[..14] < later.as_str()[..14]);
    }

    #[test]
    fn generated_ids_decode_as_the_ulids_they_encode() {
        let id = RequestId::generate();
        let ulid = ulid::Ulid::from_string(&id.as_str()[4..]).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(ulid.datetime())
            .unwrap_or_default();
        assert!(
            age < std::time::Duration::from_secs(5),
            "{id} is {age:?} old"
        );
    }

    #[test]
    fn the_ids_clock_keeps_to_the_system_time() {
        let system = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        for _ in 0..100 {
            let (before, millis, after) = (system(), unix_millis(), system());
            // One tick behind at most, never ahead.
            assert!(
                before.saturating_sub(10) <= millis && millis <= after,
                "{millis} outside {before}..={after} (less a tick)"
            );
        }
    }

    #[test]
    fn header_values_are_shared_not_copied() {
        let header = HeaderValue::from_static("abc-123");
        let id = RequestId::from_header(&header).unwrap();
        assert_eq!(id.header_value(), &header);
        assert!(RequestId::from_header(&HeaderValue::from_static("a b")).is_err());
    }
}

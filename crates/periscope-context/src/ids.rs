//! Trace and span identifiers and trace flags (W3C Trace Context Level 2).

use std::fmt;

use rand::RngExt;

/// A 16-byte trace id. The all-zero id is invalid and never produced here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id (the `parent-id` of a `traceparent`). The all-zero id is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// Wraps raw bytes; `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// A fresh random trace id: all 16 bytes random, so the W3C `random` flag may be set.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            let bytes: [u8; 16] = rng.random::<u128>().to_be_bytes();
            if let Some(id) = Self::from_bytes(bytes) {
                return id;
            }
        }
    }

    /// Parses 32 lowercase hex digits; `None` for anything else or the all-zero id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        decode_lower_hex(hex.as_bytes(), &mut bytes)?;
        Self::from_bytes(bytes)
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The 32-character lowercase hex form, without allocating.
    pub fn to_hex(self) -> HexId<32> {
        HexId::encode(&self.0)
    }
}

impl SpanId {
    /// Wraps raw bytes; `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// A fresh random span id.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            if let Some(id) = Self::from_bytes(rng.random::<u64>().to_be_bytes()) {
                return id;
            }
        }
    }

    /// Parses 16 lowercase hex digits; `None` for anything else or the all-zero id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        decode_lower_hex(hex.as_bytes(), &mut bytes)?;
        Self::from_bytes(bytes)
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The 16-character lowercase hex form, without allocating.
    pub fn to_hex(self) -> HexId<16> {
        HexId::encode(&self.0)
    }
}

macro_rules! hex_formatting {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.to_hex().as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self)
            }
        }
    };
}
hex_formatting!(TraceId);
hex_formatting!(SpanId);

/// Trace flags: `sampled` (0x01) and, from Level 2, `random` (0x02). Other bits are
/// reserved and are cleared when the flags are propagated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// The caller may have recorded this trace.
    pub const SAMPLED: TraceFlags = TraceFlags(0x01);
    /// The trace id's rightmost 7 bytes are random (W3C Level 2).
    pub const RANDOM: TraceFlags = TraceFlags(0x02);
    const KNOWN: u8 = 0x03;

    /// Wraps a raw flags byte, keeping every bit (use [`TraceFlags::propagated`] to send).
    pub const fn from_u8(bits: u8) -> Self {
        Self(bits)
    }

    /// The raw byte.
    pub const fn to_u8(self) -> u8 {
        self.0
    }

    /// Whether the sampled bit is set.
    pub const fn is_sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 != 0
    }

    /// Whether the random-trace-id bit is set.
    pub const fn is_random(self) -> bool {
        self.0 & Self::RANDOM.0 != 0
    }

    /// These flags with the sampled bit set to `sampled`.
    pub const fn with_sampled(self, sampled: bool) -> Self {
        if sampled {
            Self(self.0 | Self::SAMPLED.0)
        } else {
            Self(self.0 & !Self::SAMPLED.0)
        }
    }

    /// These flags with the random bit set to `random`.
    pub const fn with_random(self, random: bool) -> Self {
        if random {
            Self(self.0 | Self::RANDOM.0)
        } else {
            Self(self.0 & !Self::RANDOM.0)
        }
    }

    /// Only the bits this implementation understands: reserved bits must be sent as zero.
    pub const fn propagated(self) -> Self {
        Self(self.0 & Self::KNOWN)
    }
}

impl fmt::Debug for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TraceFlags({:02x}: sampled={}, random={})",
            self.0,
            self.is_sampled(),
            self.is_random()
        )
    }
}

/// A fixed-size lowercase hex rendering of an id, usable as `&str` without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    fn encode(bytes: &[u8]) -> Self {
        let mut out = [0u8; N];
        encode_lower_hex(bytes, &mut out);
        Self(out)
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the buffer.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn encode_lower_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Decodes lowercase hex only: W3C Trace Context rejects upper case.
pub(crate) fn decode_lower_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (
            LOWER_HEX[usize::from(pair[0])],
            LOWER_HEX[usize::from(pair[1])],
        );
        // One branch for the whole id instead of one per digit: this runs on every request.
        invalid |= (high | low) & INVALID;
        *byte = (high << 4) | (low & 0x0f);
    }
    (invalid == 0).then_some(())
}

const INVALID: u8 = 0x80;

/// Digit values of `0-9a-f`; every other byte maps to [`INVALID`].
static LOWER_HEX: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejections() {
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::from_hex("4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(TraceId::from_hex("00000000000000000000000000000000").is_none());
        assert!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473").is_none());
        assert!(SpanId::from_hex("00f067aa0ba902b7").is_some());
        assert!(SpanId::from_hex("0000000000000000").is_none());
        assert!(SpanId::from_hex("00f067aa0ba902bg").is_none());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(TraceId::random(), TraceId::random());
        assert_ne!(SpanId::random(), SpanId::random());
    }

    #[test]
    fn flags_keep_known_bits_when_propagated() {
        let flags = TraceFlags::from_u8(0xff);
        assert!(flags.is_sampled() && flags.is_random());
        assert_eq!(flags.propagated().to_u8(), 0x03);
        assert!(!flags.with_sampled(false).is_sampled());
    }
}

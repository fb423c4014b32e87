//! Trace and span identifiers and trace flags (W3C Trace Context Level 2).

use std::fmt;

use rand::RngExt;
use rand::rngs::ThreadRng;

/// A 16-byte trace id. The all-zero id is invalid and never produced here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id (the `parent-id` of a `traceparent`). The all-zero id is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// Wraps raw bytes; `None` for the invalid all-zero id.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        // One integer comparison: the array comparison goes byte by byte.
        (u128::from_ne_bytes(bytes) != 0).then_some(Self(bytes))
    }

    /// A fresh random trace id: all 16 bytes random, so the W3C `random` flag may be set.
    pub fn random() -> Self {
        Self::random_with(&mut rand::rng())
    }

    /// [`TraceId::random`] drawn from a handle the caller holds: a request that makes
    /// several ids takes the thread's generator once (each `rand::rng()` clones and drops
    /// its `Rc`).
    #[inline]
    pub(crate) fn random_with(rng: &mut ThreadRng) -> Self {
        loop {
            let bytes: [u8; 16] = rng.random::<u128>().to_be_bytes();
            if let Some(id) = Self::from_bytes(bytes) {
                return id;
            }
        }
    }

    /// Parses 32 lowercase hex digits; `None` for anything else or the all-zero id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::from_bytes(decode_lower_hex(hex.as_bytes())?)
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
        (u64::from_ne_bytes(bytes) != 0).then_some(Self(bytes))
    }

    /// A fresh random span id.
    pub fn random() -> Self {
        Self::random_with(&mut rand::rng())
    }

    /// [`SpanId::random`] drawn from a handle the caller holds (see [`TraceId::random_with`]).
    #[inline]
    pub(crate) fn random_with(rng: &mut ThreadRng) -> Self {
        loop {
            if let Some(id) = Self::from_bytes(rng.random::<u64>().to_be_bytes()) {
                return id;
            }
        }
    }

    /// Parses 16 lowercase hex digits; `None` for anything else or the all-zero id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::from_bytes(decode_lower_hex(hex.as_bytes())?)
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

pub(crate) fn encode_lower_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

/// The two lowercase hex digits of every byte: one lookup per byte instead of two.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    table
};

/// Decodes lowercase hex only: W3C Trace Context rejects upper case.
pub(crate) fn decode_lower_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    // Eight digits at a time (trace and span ids), then the rest one pair at a time. One
    // branch for the whole id instead of one per digit: this runs on every request.
    let mut valid = true;
    let (eights, rest) = hex.as_chunks::<8>();
    let (fours, rest_out) = out.as_chunks_mut::<4>();
    for (digits, bytes) in eights.iter().zip(fours) {
        let (decoded, ok) = decode_eight(*digits);
        *bytes = decoded;
        valid &= ok;
    }
    for (pair, byte) in rest.chunks_exact(2).zip(rest_out) {
        let (high, low) = (
            LOWER_HEX[usize::from(pair[0])],
            LOWER_HEX[usize::from(pair[1])],
        );
        valid &= (high | low) & INVALID == 0;
        *byte = (high << 4) | (low & 0x0f);
    }
    valid.then_some(out)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = ONES * 0x80;

/// Eight lowercase hex digits as four bytes, all eight checked and decoded at once in one
/// `u64`, and whether all eight were such digits.
fn decode_eight(digits: [u8; 8]) -> ([u8; 4], bool) {
    let x = u64::from_le_bytes(digits);
    // With every byte below 0x80, adding `0x80 - c` to each byte sets its high bit exactly
    // when the byte is at least `c`, and never carries into the next byte.
    let at_least = |c: u8| x.wrapping_add(ONES * u64::from(0x80 - c)) & HIGH_BITS;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    let valid = x & HIGH_BITS == 0 && digit | letter == HIGH_BITS;
    // '0'-'9' are worth their low nibble, 'a'-'f' their low nibble + 9.
    let values = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Byte 2i takes digit 2i as its high nibble and digit 2i + 1 as its low one...
    let pairs = ((values << 4) | (values >> 8)) & 0x00ff_00ff_00ff_00ff;
    // ...and bytes 0, 2, 4 and 6 are packed into the low four.
    let packed = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let packed = (packed | (packed >> 16)) & 0xffff_ffff;
    ((packed as u32).to_le_bytes(), valid)
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

    /// The one-digit-at-a-time decoding that `decode_eight` must agree with.
    fn decode_by_table(hex: &[u8]) -> Option<Vec<u8>> {
        hex.chunks(2)
            .map(|pair| {
                let (high, low) = (
                    LOWER_HEX[usize::from(pair[0])],
                    LOWER_HEX[usize::from(pair[1])],
                );
                ((high | low) & INVALID == 0).then_some((high << 4) | low)
            })
            .collect()
    }

    #[test]
    fn eight_digits_at_once_decode_as_one_at_a_time() {
        let valid = *b"09afc3e7";
        assert_eq!(decode_eight(valid), ([0x09, 0xaf, 0xc3, 0xe7], true));
        // Every byte value at every position, the others valid: digits below and above each
        // range edge, upper case, bytes with the high bit set.
        for position in 0..8 {
            for byte in 0..=u8::MAX {
                let mut digits = valid;
                digits[position] = byte;
                let decoded = decode_eight(digits);
                let expected = decode_by_table(&digits);
                assert_eq!(decoded.1, expected.is_some(), "{digits:?}");
                if let Some(expected) = expected {
                    assert_eq!(decoded.0[..], expected[..], "{digits:?}");
                }
            }
        }
        for value in [0u32, 1, 0x1234_abcd, u32::MAX, 0xdead_beef] {
            let hex = format!("{value:08x}");
            let digits: [u8; 8] = hex.as_bytes().try_into().unwrap();
            assert_eq!(decode_eight(digits), (value.to_be_bytes(), true));
        }
    }

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

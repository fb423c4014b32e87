//! Writing JSON text into a byte buffer: escaped strings, truncation, numbers.
//!
//! Everything a field or message holds goes through [`write_str`] or [`EscapeWriter`], so no
//! value can end the line, close the object or forge a field.

use std::fmt;

use periscope_context::text::prefix;

/// What follows a truncated string: the marker and the original length in bytes.
pub(crate) const TRUNCATED_MARKER: &str = "…[truncated, original ";

/// How a byte is written inside a JSON string.
/// 0: as is; b'u': `\u00XX`; 1: look at the whole UTF-8 sequence (C1 controls, U+2028/9);
/// anything else: a backslash and that byte.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0x7f] = b'u';
    // Lead bytes of U+0080..U+009F (C1 controls, NEL among them) and of U+2028/U+2029: line
    // breaks for some viewers, so they are escaped as well.
    table[0xc2] = 1;
    table[0xe2] = 1;
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The length of the run of bytes at the start of `bytes` that are written as they are,
/// checked eight at a time (most text is plain ASCII); stops at the first eight that hold a
/// byte below 0x20, `"`, `\` or one from 0x7f up, leaving those to [`ESCAPE`]. Inlined into
/// [`write_escaped`], which runs it for every value: with [`is_plain`] as a second caller the
/// compiler would make it a call.
#[inline(always)]
fn plain_run(bytes: &[u8]) -> usize {
    run_of(bytes, plain_eight)
}

/// Whether [`write_escaped`] writes `s` as it is: no byte of it is escaped.
pub(crate) fn is_plain(s: &str) -> bool {
    plain_run(s.as_bytes()) == s.len()
}

/// Whether `bytes` is plain (see [`plain_run`]) and holds no `:`, `{` or `[`: text that is
/// neither JSON nor struct or map syntax naming a key, such as an id or an enum variant, and
/// so is written the same whether it came as text or as `Debug` output.
pub(crate) fn is_plain_word(bytes: &[u8]) -> bool {
    run_of(bytes, |x| {
        // `[` and `{` differ only in bit 0x20: both are `{` once it is set.
        (unplain_bytes(x) | byte_at(x, b':') | byte_at(x | (ONES * 0x20), b'{')) & HIGH == 0
    }) == bytes.len()
}

/// The length of the run at the start of `bytes` whose eight-byte pieces pass `plain`. A last
/// piece shorter than eight is checked in one step too, so a plain string is one run (short
/// values, such as ids, would otherwise go a byte at a time through their tail).
#[inline(always)]
fn run_of(bytes: &[u8], plain: impl Fn(u64) -> bool) -> usize {
    let mut n = 0;
    while let Some(chunk) = bytes[n..].first_chunk::<8>() {
        if !plain(u64::from_ne_bytes(*chunk)) {
            return n;
        }
        n += 8;
    }
    if n == bytes.len() {
        return n;
    }
    // The string's last eight bytes when it has that many (those before the piece were just
    // found plain). Else (one to seven bytes) pieces of fixed length that overlap to cover
    // them all, padded with a plain byte: copies of fixed length are plain loads, where one
    // of the piece's own length is a `memcpy` call, on nearly every value and field name.
    let last = match bytes.last_chunk::<8>() {
        Some(last) => *last,
        None => {
            let len = bytes.len();
            let mut padded = [b'a'; 8];
            if len >= 4 {
                padded[..4].copy_from_slice(&bytes[..4]);
                padded[4..].copy_from_slice(&bytes[len - 4..]);
            } else {
                padded[..3].copy_from_slice(&[bytes[0], bytes[len / 2], bytes[len - 1]]);
            }
            padded
        }
    };
    if plain(u64::from_ne_bytes(last)) {
        n = bytes.len();
    }
    n
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether none of the eight bytes in `x` is below 0x20, `"`, `\`, or from 0x7f up.
#[inline(always)]
fn plain_eight(x: u64) -> bool {
    unplain_bytes(x) & HIGH == 0
}

/// The high bit of each byte of `x` below 0x20, `"`, `\`, or from 0x7f up, and maybe of
/// others too where one is (exact for "any", which is all that is asked).
#[inline(always)]
fn unplain_bytes(x: u64) -> u64 {
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    // (b & 0x7f) + 1 carries into the high bit only for 0x7f; b's own high bit: 0x80 up.
    let high = ((x & !HIGH) + ONES) | x;
    control | byte_at(x, b'"') | byte_at(x, b'\\') | high
}

/// The high bit set in bytes of `x` that are `byte` (and maybe in others where one is: exact
/// for "any").
#[inline(always)]
fn byte_at(x: u64, byte: u8) -> u64 {
    let y = x ^ (ONES * u64::from(byte));
    y.wrapping_sub(ONES) & !y
}

/// Appends `s` as the inside of a JSON string (no quotes), escaped.
pub(crate) fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        i += plain_run(&bytes[i..]);
        let Some(&byte) = bytes.get(i) else {
            break;
        };
        let action = ESCAPE[byte as usize];
        if action == 0 {
            i += 1;
            continue;
        }
        let len = if action == 1 {
            let escaped = escaped_multibyte(bytes, i);
            if escaped == 0 {
                i += 1;
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            push_unicode_escape(out, escaped);
            if escaped < 0x100 { 2 } else { 3 }
        } else {
            out.extend_from_slice(&bytes[start..i]);
            if action == b'u' {
                push_unicode_escape(out, u32::from(bytes[i]));
            } else {
                out.extend_from_slice(&[b'\\', action]);
            }
            1
        };
        i += len;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The code point to escape at `bytes[i]` (a 0xc2 or 0xe2 lead byte), or 0 to keep it.
fn escaped_multibyte(bytes: &[u8], i: usize) -> u32 {
    match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
        (0xc2, Some(&b), _) if (0x80..=0x9f).contains(&b) => u32::from(b),
        (0xe2, Some(0x80), Some(&b)) if b == 0xa8 || b == 0xa9 => 0x2000 | u32::from(b - 0x80),
        _ => 0,
    }
}

fn push_unicode_escape(out: &mut Vec<u8>, code: u32) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((code >> shift) & 0xf) as usize]);
    }
}

/// Appends `s` as a quoted, escaped JSON string, truncated to `limit` bytes.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str, limit: usize) {
    write_str_of(out, s, limit, s.len());
}

/// [`write_str`] of `s` made from a value of `original_len` bytes (JSON text compacted and
/// redacted): a cut says how long the value was, not its rewrite.
pub(crate) fn write_str_of(out: &mut Vec<u8>, s: &str, limit: usize, original_len: usize) {
    out.push(b'"');
    if s.len() <= limit {
        write_escaped(out, s);
    } else {
        write_escaped(out, prefix(s, limit));
        write_truncation(out, original_len);
    }
    out.push(b'"');
}

/// The marker that ends a truncated string (inside its quotes).
pub(crate) fn write_truncation(out: &mut Vec<u8>, original_len: usize) {
    out.extend_from_slice(TRUNCATED_MARKER.as_bytes());
    write_u64(out, original_len as u64);
    out.extend_from_slice(b" bytes]");
}

/// Appends `"key":`.
pub(crate) fn write_key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    write_escaped(out, key);
    out.extend_from_slice(b"\":");
}

pub(crate) fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

pub(crate) fn write_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    write_u64(out, value.unsigned_abs());
}

/// Writes a float; JSON has no NaN or infinity, so those become strings.
pub(crate) fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        // The shortest text that reads back as the same number, as serde_json writes it, at a
        // fraction of the cost of `Display` (every access line has a `duration_ms`).
        out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        let text = if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Streams `fmt` output into a JSON string (inside its quotes), escaping as it goes and
/// keeping at most `limit` bytes while counting them all.
pub(crate) struct EscapeWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    len: usize,
}

impl<'a> EscapeWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>, limit: usize) -> Self {
        Self { out, limit, len: 0 }
    }

    /// Ends the string: adds the truncation marker when the text went past the limit.
    pub(crate) fn finish(self) {
        if self.len > self.limit {
            write_truncation(self.out, self.len);
        }
    }
}

impl fmt::Write for EscapeWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.limit.saturating_sub(self.len);
        self.len += s.len();
        if room >= s.len() {
            write_escaped(self.out, s);
        } else if room > 0 {
            write_escaped(self.out, prefix(s, room));
        }
        Ok(())
    }
}

/// Collects `fmt` output as text, keeping at most `limit` bytes while counting them all.
pub(crate) struct CappedString<'a> {
    pub(crate) text: &'a mut String,
    limit: usize,
    pub(crate) len: usize,
}

impl<'a> CappedString<'a> {
    pub(crate) fn new(text: &'a mut String, limit: usize) -> Self {
        text.clear();
        Self {
            text,
            limit,
            len: 0,
        }
    }

    pub(crate) fn truncated(&self) -> bool {
        self.len > self.limit
    }
}

impl fmt::Write for CappedString<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.limit.saturating_sub(self.len);
        self.len += s.len();
        if room >= s.len() {
            self.text.push_str(s);
        } else if room > 0 {
            self.text.push_str(prefix(s, room));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str, limit: usize) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s, limit);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_parse_back_to_the_same_text() {
        for s in [
            "plain",
            "line\nbreak\r\t\"quoted\" back\\slash",
            "\u{0}\u{1b}[31mred\u{1b}[0m\u{7f}",
            "nel\u{85} ls\u{2028} ps\u{2029} é ü 日本 🎉",
        ] {
            let json = quoted(s, usize::MAX);
            assert!(!json.contains('\n') && !json.contains('\u{1b}') && !json.contains('\u{2028}'));
            assert!(!json.contains('\u{85}') && !json.contains('\u{0}'));
            let back: String = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }

    /// `special` in plain text of every length up to 20, at every offset: in a whole run of
    /// eight and in every position of a shorter last piece.
    fn at_every_offset(special: &str) -> impl Iterator<Item = String> + '_ {
        (0..=20).flat_map(move |len| {
            (0..=len).map(move |offset| {
                format!(
                    "{}{special}{}",
                    "a".repeat(offset),
                    "-".repeat(len - offset)
                )
            })
        })
    }

    #[test]
    fn every_escape_is_found_at_every_offset_of_an_eight_byte_run() {
        for special in [
            "\"", "\\", "\n", "\u{1f}", "\u{7f}", "\u{85}", "\u{2028}", "é", "🎉",
        ] {
            for s in at_every_offset(special) {
                let json = quoted(&s, usize::MAX);
                assert!(!json.contains(['\n', '\u{1f}', '\u{7f}', '\u{85}', '\u{2028}']));
                assert_eq!(serde_json::from_str::<String>(&json).unwrap(), s, "{json}");
            }
        }
    }

    #[test]
    fn a_plain_word_is_told_from_text_with_any_special_byte_at_any_offset() {
        let reference = |s: &str| {
            s.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && !b"\"\\:{[".contains(&b))
        };
        for special in [
            "\"", "\\", ":", "{", "[", "\n", "\u{7f}", "é", "\u{2028}", "z", "]",
        ] {
            for s in at_every_offset(special) {
                assert_eq!(is_plain_word(s.as_bytes()), reference(&s), "{s:?}");
            }
        }
        assert!(is_plain_word(b""));
        assert!(is_plain_word(b"4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn truncation_keeps_char_boundaries_and_records_the_length() {
        let s = "ééééé"; // 10 bytes
        let json = quoted(s, 3);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "é…[truncated, original 10 bytes]");
    }

    #[test]
    fn escape_writer_truncates_streamed_text() {
        use std::fmt::Write as _;
        let mut out = Vec::new();
        let mut w = EscapeWriter::new(&mut out, 4);
        w.write_str("ab\n").unwrap();
        w.write_str("cdef").unwrap();
        w.finish();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ab\\nc…[truncated, original 7 bytes]"
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        write_i64(&mut out, i64::MIN);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        out.push(b' ');
        write_f64(&mut out, f64::NAN);
        out.push(b' ');
        write_f64(&mut out, 1.5);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-9223372036854775808 18446744073709551615 \"NaN\" 1.5"
        );
    }

    /// Every finite float is written as JSON that parses back to the very same number.
    #[test]
    fn floats_read_back_exactly() {
        let text = |value| {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            (text(2.0), text(1.931), text(0.052)),
            ("2.0".into(), "1.931".into(), "0.052".into())
        );
        let samples = [
            0.0,
            -0.0,
            1.0,
            0.1,
            1.931,
            2.5e-7,
            123_456.789,
            1e21,
            -3.0e-300,
            f64::MAX,
        ];
        for value in samples
            .into_iter()
            .chain((0..2000).map(|i| f64::from(i) * 0.731 / 7.0))
        {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            let text = std::str::from_utf8(&out).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Number>(text).is_ok(),
                "{text}"
            );
            let parsed: f64 = text.parse().unwrap();
            assert_eq!(
                parsed.to_bits(),
                value.to_bits(),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}

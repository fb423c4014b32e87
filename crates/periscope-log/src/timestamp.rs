//! The line's timestamp: RFC 3339 in UTC with milliseconds (`2026-11-23T17:49:36.123Z`).

use std::cell::Cell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DDTHH:MM:`, the part of the timestamp that changes once a minute.
const PREFIX_LEN: usize = 17;
/// The whole timestamp, for years 0000 to 9999.
const LEN: usize = 24;

thread_local! {
    /// The minute (since the epoch) last written on this thread, and its formatted prefix.
    static MINUTE: Cell<(u64, [u8; PREFIX_LEN])> = const { Cell::new((u64::MAX, [0; PREFIX_LEN])) };
}

/// The last millisecond RFC 3339's four-digit years can write: 9999-12-31T23:59:59.999Z.
const LAST: Duration = Duration::from_millis(253_402_300_799_999);

/// Writes `time`. The calendar part is formatted (by humantime) once a minute per thread; the
/// seconds and milliseconds are plain digits: every log line starts with this. A clock set
/// outside 1970..=9999 is written as the nearest end of that range rather than failing the line.
pub(crate) fn write_rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    let seconds = since_epoch.as_secs();
    let minute = seconds / 60;
    let (cached, mut prefix) = MINUTE.get();
    if cached != minute {
        let mut full = Vec::with_capacity(LEN);
        let _ = write!(
            full,
            "{}",
            humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch)
        );
        prefix.copy_from_slice(full.get(..PREFIX_LEN).unwrap_or(b"1970-01-01T00:00:"));
        MINUTE.set((minute, prefix));
    }
    out.extend_from_slice(&prefix);
    let second = (seconds % 60) as u8;
    let millis = since_epoch.subsec_millis();
    let digit = |value: u32| b'0' + (value % 10) as u8;
    out.extend_from_slice(&[
        b'0' + second / 10,
        b'0' + second % 10,
        b'.',
        digit(millis / 100),
        digit(millis / 10),
        digit(millis),
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(time: SystemTime) -> String {
        let mut out = Vec::new();
        write_rfc3339_millis(&mut out, time);
        String::from_utf8(out).unwrap()
    }

    /// The same text as humantime's, across minutes, days, leap years and the epoch, whatever
    /// minute this thread cached before.
    #[test]
    fn matches_the_reference_formatter() {
        let mut time = UNIX_EPOCH + Duration::from_millis(1);
        let mut step = 997u64;
        for _ in 0..20_000 {
            assert_eq!(
                written(time),
                humantime::format_rfc3339_millis(time).to_string()
            );
            time += Duration::from_millis(step);
            step = step * 31 % 100_000_007 + 1;
        }
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2024-02-29T23:59:59.999Z",
            "2026-11-23T17:49:36.123Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let time = humantime::parse_rfc3339(text).unwrap();
            assert_eq!(written(time), text);
            assert_eq!(written(time), text, "from the cached minute");
        }
    }

    /// humantime panics before 1970 and fails after 9999; a line must still get a timestamp.
    #[test]
    fn a_clock_outside_the_range_is_clamped() {
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(written(before_epoch), "1970-01-01T00:00:00.000Z");
        let far_future = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(written(far_future), "9999-12-31T23:59:59.999Z");
    }
}

//! Text from `tracing` metadata (an event's target, a span's name), written on every line:
//! whether it needs escaping is checked once per string and thread, then it is copied as is.
//!
//! Metadata is `'static`, so the address and length of its text name the same bytes for good.

use std::cell::Cell;

use crate::json;

/// Entries in [`PLAIN`] (a power of two): a service's hot targets and span names are few, and
/// one that finds its entry taken by another is checked again, never written wrong.
const SLOTS: usize = 64;

/// (address, length, written as it is); address 0: a free entry.
type Entry = (usize, usize, bool);

thread_local! {
    /// One entry per hash of the address: a newer string takes the place of an older one.
    static PLAIN: [Cell<Entry>; SLOTS] = const { [const { Cell::new((0, 0, false)) }; SLOTS] };
}

/// Appends `text` as the inside of a JSON string: copied when it has nothing to escape (known
/// after its first line on this thread), escaped otherwise.
pub(crate) fn write(out: &mut Vec<u8>, text: &'static str) {
    if is_plain(text) {
        out.extend_from_slice(text.as_bytes());
    } else {
        json::write_escaped(out, text);
    }
}

/// Whether `text` is written in JSON as it is, from the per-thread table or checked now.
fn is_plain(text: &'static str) -> bool {
    let key = (text.as_ptr() as usize, text.len());
    let index = ((key.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> (64 - SLOTS.trailing_zeros())) as usize;
    PLAIN.with(|table| {
        let (address, len, plain) = table[index].get();
        if (address, len) == key {
            return plain;
        }
        let plain = json::is_plain(text);
        table[index].set((key.0, key.1, plain));
        plain
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &'static str) -> String {
        let mut out = Vec::new();
        write(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_is_escaped_or_copied_the_same_every_time_even_when_entries_are_taken() {
        // More strings than entries, some needing escapes: each is written right, first
        // checked or read back, whichever string held its entry before.
        let texts: Vec<&'static str> = (0..SLOTS * 4)
            .map(|i| {
                let text = if i % 3 == 0 {
                    format!("t\"{i}\n")
                } else {
                    format!("target::{i}")
                };
                &*Box::leak(text.into_boxed_str())
            })
            .collect();
        for _ in 0..3 {
            for text in &texts {
                let mut expected = Vec::new();
                json::write_escaped(&mut expected, text);
                assert_eq!(written(text).as_bytes(), expected, "{text:?}");
            }
        }
        assert_eq!(written("a\"b"), "a\\\"b");
        assert_eq!(written("a\"b"), "a\\\"b");
        assert_eq!(written(""), "");
    }
}

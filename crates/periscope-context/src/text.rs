//! Text cut to a bound in bytes, on a character boundary: one rule for the crates that bound
//! what a client or a handler sends before it is rendered, recorded or logged (periscope-error's
//! envelope, periscope-trace's span attributes, periscope-log's values).

use std::borrow::Cow;

/// `text` within `max` bytes: whole when it fits (borrowed: the common case costs one
/// comparison), else its start, cut on a character boundary, then `…` (counted in `max`, so a
/// `max` under 3 gives the `…` alone).
///
/// ```
/// use periscope_context::text::cut;
///
/// assert_eq!(cut("short", 8), "short");
/// assert_eq!(cut("a longer text", 8), "a lon…");
/// ```
#[inline]
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let kept = prefix(text, max.saturating_sub('…'.len_utf8()));
    let mut cut = String::with_capacity(kept.len() + '…'.len_utf8());
    cut.push_str(kept);
    cut.push('…');
    Cow::Owned(cut)
}

/// The longest start of `text` within `max` bytes that ends on a character boundary.
///
/// ```
/// use periscope_context::text::prefix;
///
/// assert_eq!(prefix("héllo", 2), "h");
/// ```
#[inline]
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    // At most 3 steps back: a character is at most 4 bytes.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_keeps_characters_whole() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("abc", 0), "");
        assert_eq!(prefix("🔥", 3), "");
    }

    #[test]
    fn a_cut_ends_with_an_ellipsis_counted_in_the_bound() {
        let fits = "x".repeat(1024);
        assert!(matches!(cut(&fits, 1024), Cow::Borrowed(text) if text == fits));
        let long = "x".repeat(1025);
        let cut_text = cut(&long, 1024);
        assert_eq!(cut_text, format!("{}…", "x".repeat(1021)));
        assert_eq!(cut_text.len(), 1024);
        // A 4-byte character across the cut at 1,021 bytes is left out whole.
        let text = format!("{}{}", "x".repeat(1020), "🔥".repeat(10));
        assert_eq!(cut(&text, 1024), format!("{}…", "x".repeat(1020)));
        // Two-byte characters: the cut falls inside one.
        let text = "é".repeat(100);
        let cut_text = cut(&text, 32);
        assert!(
            cut_text.len() <= 32 && cut_text.len() > 32 - 5,
            "{cut_text}"
        );
        assert!(text.starts_with(cut_text.strip_suffix('…').unwrap()));
        // A bound too small for the ellipsis.
        assert_eq!(cut("abcdef", 2), "…");
    }
}

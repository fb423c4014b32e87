//! The W3C `traceparent` header (Trace Context Level 2).

use std::fmt;

use http::HeaderValue;
use rand::rngs::ThreadRng;

use crate::ids::{SpanId, TraceFlags, TraceId, decode_lower_hex, encode_lower_hex};

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

/// Why a `traceparent` was rejected. Any of these restarts the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Shorter than the 55 characters every version needs.
    #[error("traceparent is {0} characters long; at least 55 are required")]
    TooShort(usize),
    /// The version is not two lowercase hex digits.
    #[error("traceparent version is not two lowercase hex digits")]
    InvalidVersion,
    /// Version `ff` is forbidden by the specification.
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    /// A `-` separator is missing or misplaced.
    #[error("traceparent fields are not separated by '-' at the expected positions")]
    InvalidDelimiter,
    /// The trace id is not 32 lowercase hex digits, or is all zeros.
    #[error("traceparent trace-id must be 32 lowercase hex digits and not all zero")]
    InvalidTraceId,
    /// The parent id is not 16 lowercase hex digits, or is all zeros.
    #[error("traceparent parent-id must be 16 lowercase hex digits and not all zero")]
    InvalidParentId,
    /// The flags are not two lowercase hex digits.
    #[error("traceparent trace-flags must be two lowercase hex digits")]
    InvalidFlags,
    /// Version 00 allows nothing after the flags.
    #[error("traceparent version 00 must be exactly 55 characters; found trailing data")]
    TrailingData,
    /// More than one `traceparent` header was sent.
    #[error("more than one traceparent header was sent")]
    Duplicated,
}

/// A parsed `traceparent`: which trace a request belongs to and which span sent it.
///
/// Parsing follows W3C Trace Context Level 2: surrounding spaces and tabs are trimmed; version
/// `ff` is invalid; a version-00 header must be exactly 55 characters; a higher version is
/// parsed by position (anything after the flags must start with `-`) and re-emitted as `00`;
/// hex digits must be lower case; all-zero ids are invalid. Formatting always writes version
/// `00` and only the flags this version defines (sampled and random).
///
/// ```
/// use periscope_context::TraceParent;
///
/// let incoming = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert!(incoming.flags.is_sampled());
///
/// // The next hop keeps the trace id and gets a fresh parent id.
/// let outgoing = incoming.child();
/// assert_eq!(outgoing.trace_id, incoming.trace_id);
/// assert_ne!(outgoing.parent_id, incoming.parent_id);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace every span of the request belongs to.
    pub trace_id: TraceId,
    /// The span that sent this header (the parent of the receiver's span).
    pub parent_id: SpanId,
    /// Sampled and random flags.
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Builds a traceparent from its parts.
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: TraceFlags) -> Self {
        Self {
            trace_id,
            parent_id,
            flags,
        }
    }

    /// Starts a new trace: random trace and parent ids, the `random` flag set, and the
    /// `sampled` flag as given.
    pub fn new_root(sampled: bool) -> Self {
        Self::new_root_with(sampled, &mut rand::rng())
    }

    /// [`TraceParent::new_root`] with both ids drawn from a handle the caller holds.
    #[inline]
    pub(crate) fn new_root_with(sampled: bool, rng: &mut ThreadRng) -> Self {
        Self::new(
            TraceId::random_with(rng),
            SpanId::random_with(rng),
            TraceFlags::RANDOM.with_sampled(sampled),
        )
    }

    /// The same trace with a fresh parent id: what a new span sends to its callee.
    pub fn child(&self) -> Self {
        Self::new(self.trace_id, SpanId::random(), self.flags.propagated())
    }

    /// Parses a header value. See the type documentation for the rules.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        Self::parse_bytes(value.as_bytes())
    }

    /// Parses raw header bytes (header values need not be UTF-8; invalid bytes are rejected).
    pub fn parse_bytes(value: &[u8]) -> Result<Self, TraceParentError> {
        let value = trim_ows(value);
        if value.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::TooShort(value.len()));
        }
        let version: [u8; 1] =
            decode_lower_hex(&value[..2]).ok_or(TraceParentError::InvalidVersion)?;
        if version[0] == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceParentError::InvalidDelimiter);
        }
        let trace_id = decode_lower_hex(&value[3..35])
            .and_then(TraceId::from_bytes)
            .ok_or(TraceParentError::InvalidTraceId)?;
        let parent_id = decode_lower_hex(&value[36..52])
            .and_then(SpanId::from_bytes)
            .ok_or(TraceParentError::InvalidParentId)?;
        let flags: [u8; 1] =
            decode_lower_hex(&value[53..55]).ok_or(TraceParentError::InvalidFlags)?;
        if value.len() > TRACEPARENT_LEN {
            if version[0] == 0 {
                return Err(TraceParentError::TrailingData);
            }
            // Future versions may append fields, always after a '-'.
            if value[TRACEPARENT_LEN] != b'-' {
                return Err(TraceParentError::InvalidDelimiter);
            }
        }
        Ok(Self::new(
            trace_id,
            parent_id,
            TraceFlags::from_u8(flags[0]),
        ))
    }

    /// The version-00 header bytes.
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        encode_lower_hex(&self.trace_id.to_bytes(), &mut out[3..35]);
        encode_lower_hex(&self.parent_id.to_bytes(), &mut out[36..52]);
        encode_lower_hex(&[self.flags.propagated().to_u8()], &mut out[53..55]);
        out
    }

    /// The header value to send.
    pub fn to_header_value(&self) -> HeaderValue {
        // Hex digits and '-' are always valid header bytes.
        HeaderValue::from_bytes(&self.encode()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Strips optional whitespace (RFC 9110: spaces and tabs only, never CR, LF or form feed).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        f.write_str(std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?)
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn spec_example_round_trips() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(tp.flags.is_sampled());
        assert!(!tp.flags.is_random());
        assert_eq!(tp.to_string(), VALID);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled).unwrap().flags.is_sampled());
    }

    #[test]
    fn invalid_inputs_name_the_problem() {
        use TraceParentError::*;
        let cases: &[(&str, TraceParentError)] = &[
            ("", TooShort(0)),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ForbiddenVersion,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidVersion,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                InvalidTraceId,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                InvalidTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                InvalidParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                InvalidParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                InvalidFlags,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                TrailingData,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidDelimiter,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x",
                InvalidDelimiter,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(TraceParent::parse(input), Err(*expected), "{input}");
        }
    }

    #[test]
    fn higher_versions_parse_by_position_and_re_emit_as_00() {
        let tp = TraceParent::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-fields",
        )
        .unwrap();
        assert_eq!(tp.to_string(), VALID);
    }

    #[test]
    fn ows_is_trimmed() {
        for input in [
            format!(" {VALID}"),
            format!("\t{VALID} \t"),
            format!("{VALID}\t"),
        ] {
            assert_eq!(TraceParent::parse(&input).unwrap().to_string(), VALID);
        }
        // Only spaces and tabs are optional whitespace, at either end.
        for input in [
            format!("\r\n{VALID}"),
            format!("\x0c{VALID}"),
            format!("{VALID}\r\n"),
        ] {
            assert!(TraceParent::parse(&input).is_err(), "{input:?}");
        }
        assert!(TraceParent::parse(" \t ").is_err());
    }

    #[test]
    fn reserved_flags_are_not_propagated() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(tp.flags.to_u8(), 0xff);
        assert!(tp.to_string().ends_with("-03"));
        assert!(tp.child().to_string().ends_with("-03"));
    }

    #[test]
    fn new_root_sets_random_flag() {
        let root = TraceParent::new_root(false);
        assert!(root.flags.is_random() && !root.flags.is_sampled());
        assert!(TraceParent::new_root(true).to_string().ends_with("-03"));
    }
}

//! The wire form of an error: `{"error": {...}}`.

use std::borrow::Cow;

use periscope_context::text::cut;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The longest `message` and `help` of an envelope periscope renders, and of each violation's
/// `field` and `message`, in bytes. Longer text is cut on a character boundary and ends with
/// `…` (the ellipsis counted in the bound), so a handler that echoes a huge input into its
/// error sends (and logs) a bounded one. The same bound holds for an [`ErrorBody`] built by
/// hand, cut when it is serialised, and for what the client [`Decoder`](crate::Decoder)
/// decodes: [`ApiError::message`](crate::ApiError::message), `help` and violations.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The most of an envelope's `details` periscope renders, and the client
/// [`Decoder`](crate::Decoder) keeps, in bytes of its JSON text: members are kept in order while
/// the whole stays within it; a member that would pass it is left out, so a handler that puts a
/// huge dump there sends (and a client keeps) the small facts beside it. The `details` of an
/// [`ErrorBody`] built by hand are bounded when it is serialised, like its texts.
pub const MAX_DETAILS_LEN: usize = 4096;

/// The members of `details` an envelope keeps, in order: each one while the JSON of those kept
/// stays within [`MAX_DETAILS_LEN`] (all of them when the whole fits). The one rule of the
/// rendered envelope and of the decoded one.
pub(crate) fn kept_details(
    details: &Map<String, Value>,
) -> impl Iterator<Item = (&String, &Value)> {
    // The braces.
    let mut len: usize = 2;
    let mut first = true;
    details.iter().filter(move |(key, value)| {
        // The key, its colon, the value, and a comma before every member but the first.
        let member = json_len(key)
            .saturating_add(1 + usize::from(!first))
            .saturating_add(json_len(value));
        if len.saturating_add(member) > MAX_DETAILS_LEN {
            return false;
        }
        len += member;
        first = false;
        true
    })
}

/// `details` as an envelope writes it: its [`kept_details`].
pub(crate) struct BoundedDetails<'a>(pub(crate) &'a Map<String, Value>);

impl Serialize for BoundedDetails<'_> {
    fn serialize<S: Serializer>(&self, to: S) -> Result<S::Ok, S::Error> {
        to.collect_map(kept_details(self.0))
    }
}

/// Writes `details` within [`MAX_DETAILS_LEN`]: public, they may have been set by hand.
fn serialize_bounded_details<S: Serializer>(
    details: &Option<Map<String, Value>>,
    to: S,
) -> Result<S::Ok, S::Error> {
    match details {
        Some(details) => to.serialize_some(&BoundedDetails(details)),
        None => to.serialize_none(),
    }
}

/// The length of `value`'s JSON text, counted without writing it.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// `text` within [`MAX_MESSAGE_LEN`] bytes, cut when longer (ending with `…`, counted in the
/// bound).
pub(crate) fn bounded(text: Cow<'static, str>) -> Cow<'static, str> {
    if text.len() <= MAX_MESSAGE_LEN {
        return text;
    }
    // A copy, not a truncation in place: the huge original is freed now.
    Cow::Owned(cut(&text, MAX_MESSAGE_LEN).into_owned())
}

/// Writes a text within [`MAX_MESSAGE_LEN`] bytes: the fields of an [`ErrorBody`] are public,
/// so a body built by hand is bounded when it is rendered, not when it is built.
fn serialize_bounded<S: Serializer>(text: &str, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(&cut(text, MAX_MESSAGE_LEN))
}

/// [`serialize_bounded`] for an optional text.
fn serialize_bounded_some<S: Serializer>(
    text: &Option<Cow<'static, str>>,
    to: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => to.serialize_some(&*cut(text, MAX_MESSAGE_LEN)),
        None => to.serialize_none(),
    }
}

/// The JSON body of every error response: `{"error": {...}}`.
///
/// ```
/// use periscope_error::{Envelope, ErrorBody};
///
/// let mut body = ErrorBody::new("job_already_terminal", "Cannot cancel job that is already completed", "req_1");
/// body.retryable = Some(false);
/// let json = serde_json::to_string(&Envelope { error: body }).unwrap();
/// assert_eq!(json, r#"{"error":{"code":"job_already_terminal","message":"Cannot cancel job that is already completed","request_id":"req_1","retryable":false}}"#);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The error.
    pub error: ErrorBody,
}

/// The members of an error, in the order they are written. `code`, `message` and `request_id`
/// are always written; the others only when known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The snake_case error code (`job_already_terminal`).
    pub code: Cow<'static, str>,
    /// What went wrong, for a human. Rendered cut to [`MAX_MESSAGE_LEN`] bytes.
    #[serde(serialize_with = "serialize_bounded")]
    pub message: Cow<'static, str>,
    /// The request (correlation) id: what a support engineer asks for first.
    #[serde(default)]
    pub request_id: String,
    /// The W3C trace id (32 lower-case hex digits) of the request's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Facts about the failure for programs (`{"job_id": "job_456"}`). Keys are written in
    /// serde_json's `Map` order: sorted, or insertion order where the application enables
    /// serde_json's `preserve_order` feature. Rendered within [`MAX_DETAILS_LEN`] bytes: the
    /// members in that order while their JSON fits.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_bounded_details"
    )]
    pub details: Option<Map<String, Value>>,
    /// What to change so the request succeeds. Rendered cut to [`MAX_MESSAGE_LEN`] bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_bounded_some"
    )]
    pub help: Option<Cow<'static, str>>,
    /// Whether the same request may succeed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// How long to wait before retrying, in whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// Where the code is documented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs_url: Option<Cow<'static, str>>,
    /// The invalid fields of a validation error (each one's `field` and `message` rendered cut
    /// to [`MAX_MESSAGE_LEN`] bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

impl ErrorBody {
    /// A body with the three members that are always present.
    pub fn new(
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
        request_id: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            request_id: request_id.into(),
            trace_id: None,
            details: None,
            help: None,
            retryable: None,
            retry_after_s: None,
            docs_url: None,
            violations: Vec::new(),
        }
    }

    /// `message`, `help` and the violations cut to [`MAX_MESSAGE_LEN`] in place (rendering cuts
    /// them anyway): for the layers that read a rendered body, and for a decoded one.
    pub(crate) fn bound_texts(&mut self) {
        self.message = bounded(std::mem::take(&mut self.message));
        self.help = self.help.take().map(bounded);
        for violation in &mut self.violations {
            violation.bound_texts();
        }
    }
}

/// One invalid field of a request: `{"field": "email", "reason": "format", "message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The field's path in the request (`email`, `items[2].quantity`, `query.limit`). Rendered
    /// cut to [`MAX_MESSAGE_LEN`] bytes.
    #[serde(serialize_with = "serialize_bounded")]
    pub field: Cow<'static, str>,
    /// A machine-readable snake_case reason (`required`, `too_long`, `format`, `out_of_range`).
    pub reason: Cow<'static, str>,
    /// What is wrong, for a human. Rendered cut to [`MAX_MESSAGE_LEN`] bytes.
    #[serde(serialize_with = "serialize_bounded")]
    pub message: Cow<'static, str>,
}

impl Violation {
    /// `field` and `message` cut to [`MAX_MESSAGE_LEN`]: both can echo a client's input (a
    /// JSON key, a value).
    pub(crate) fn bound_texts(&mut self) {
        self.field = bounded(std::mem::take(&mut self.field));
        self.message = bounded(std::mem::take(&mut self.message));
    }

    /// A violation of `field` for `reason`, explained by `message`.
    pub fn new(
        field: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_over_the_bound_are_cut_on_a_character_boundary_with_an_ellipsis() {
        let fits = "x".repeat(MAX_MESSAGE_LEN);
        assert_eq!(bounded(fits.clone().into()), fits);
        let cut = bounded("x".repeat(MAX_MESSAGE_LEN + 1).into());
        assert_eq!(cut, format!("{}…", "x".repeat(MAX_MESSAGE_LEN - 3)));
        // A 4-byte character across the cut at 1,021 bytes is left out whole.
        let text = format!("{}{}", "x".repeat(MAX_MESSAGE_LEN - 4), "🔥".repeat(10));
        assert_eq!(
            bounded(text.into()),
            format!("{}…", "x".repeat(MAX_MESSAGE_LEN - 4))
        );
    }

    #[test]
    fn details_keep_their_members_in_order_while_their_json_fits() {
        let written = |details: &Map<String, Value>| {
            let mut body = ErrorBody::new("c", "m", "r");
            body.details = Some(details.clone());
            let json: Value = serde_json::to_value(&body).unwrap();
            serde_json::to_string(&json["details"]).unwrap()
        };
        // `{"a":"x..."}`: 8 bytes around the text.
        let mut details = Map::new();
        details.insert("a".into(), "x".repeat(MAX_DETAILS_LEN - 8).into());
        assert_eq!(written(&details), serde_json::to_string(&details).unwrap());
        assert_eq!(written(&details).len(), MAX_DETAILS_LEN);
        // One byte more, with members after it: it is left out, they are kept.
        details.insert("a".into(), "x".repeat(MAX_DETAILS_LEN - 7).into());
        details.insert("b".into(), 1.into());
        details.insert("c".into(), "x".repeat(MAX_DETAILS_LEN - 14).into());
        // `{"b":1,"c":"x..."}`: exactly the bound.
        assert_eq!(written(&details).len(), MAX_DETAILS_LEN);
        assert!(written(&details).starts_with(r#"{"b":1,"c":"xx"#));
        details.insert("d".into(), Value::Null);
        assert!(!written(&details).contains(r#""d""#));
    }

    #[test]
    fn serialises_exactly_like_the_contract() {
        let mut body = ErrorBody::new(
            "job_already_terminal",
            "Cannot cancel job that is already completed",
            "req_01jj",
        );
        body.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        let mut details = Map::new();
        // One member: key order inside `details` follows serde_json's `Map` (sorted, or
        // insertion order when an application enables serde_json's `preserve_order`).
        details.insert("job_id".into(), "job_456".into());
        body.details = Some(details);
        body.help = Some("Jobs can only be canceled while queued or processing".into());
        body.retryable = Some(false);
        let json = serde_json::to_string(&Envelope { error: body }).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"error":{"code":"job_already_terminal","message":"Cannot cancel job that is already completed","#,
                r#""request_id":"req_01jj","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","#,
                r#""details":{"job_id":"job_456"},"#,
                r#""help":"Jobs can only be canceled while queued or processing","#,
                r#""retryable":false}}"#
            )
        );
    }

    #[test]
    fn every_optional_member_is_written_in_order_when_known() {
        let mut body = ErrorBody::new("rate_limited", "Too many requests", "r");
        body.retryable = Some(true);
        body.retry_after_s = Some(30);
        body.docs_url = Some("https://docs.example.com/errors#rate_limited".into());
        body.violations = vec![Violation::new("n", "required", "n is required")];
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"code":"rate_limited","message":"Too many requests","request_id":"r","retryable":true,"retry_after_s":30,"docs_url":"https://docs.example.com/errors#rate_limited","violations":[{"field":"n","reason":"required","message":"n is required"}]}"#
        );
        let back: ErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back, body);
    }
}

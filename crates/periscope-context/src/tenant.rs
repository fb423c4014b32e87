//! Tenant context: organisation, project, and any field a service declares.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderName, HeaderValue};

use crate::request_id::{InvalidId, validate_id};

/// The name of a tenant field: its log and span field (`org_id`) and its header (`x-org-id`).
///
/// ```
/// use periscope_context::TenantKey;
///
/// let team = TenantKey::new("team_id").unwrap();
/// assert_eq!(team.header().as_str(), "x-team-id");
/// assert!(TenantKey::new("Team Id").is_err());
/// assert!(TenantKey::new("request_id").is_err());
/// // Its header would be read by proxies as the client's address.
/// assert!(TenantKey::new("forwarded_for").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantKey {
    field: Cow<'static, str>,
    header: HeaderName,
}

/// A tenant field name refused by [`TenantKey::new`], with the reason.
///
/// ```
/// use periscope_context::TenantKey;
///
/// let refused = TenantKey::new("forwarded_for").unwrap_err();
/// assert_eq!(refused.name(), "forwarded_for");
/// assert!(refused.to_string().contains("x-forwarded-for"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant field name {name:?} is refused: {reason}")]
pub struct InvalidTenantKey {
    name: String,
    reason: Cow<'static, str>,
}

impl InvalidTenantKey {
    /// The name refused (at most its first 64 characters).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why it was refused, and what to do instead.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Header names (after `x-`) that mean something else to proxies, servers or tracing systems:
/// a tenant value sent downstream in one would be read as the request id, the client's address
/// or identity, the method or path, or another system's trace.
const TAKEN_HEADERS: &[&str] = &[
    "request-id",
    "correlation-id",
    "real-ip",
    "client-ip",
    "cluster-client-ip",
    "original-forwarded-for",
    "http-method-override",
    "http-method",
    "method-override",
    "original-url",
    "original-uri",
    "rewrite-url",
    "remote-user",
    "ms-client-principal",
    "cloud-trace-context",
    "ot-span-context",
];

/// Header name prefixes (after `x-`) of the same kind: `x-forwarded-for`, `-proto`, `-host`,
/// ...; B3, Datadog and Envoy headers; the identity and trace headers of AWS's and Google's
/// load balancers (`x-amzn-oidc-identity`, `x-goog-authenticated-user-email`).
const TAKEN_HEADER_PREFIXES: &[&str] =
    &["forwarded-", "b3-", "datadog-", "envoy-", "amzn-", "goog-"];

/// The correlation fields every span and log line carry beside the line's own keys.
const CORRELATION_FIELDS: &[&str] = &["trace_id", "span_id"];

/// Why `field` cannot name a tenant field, if it cannot.
fn refusal(field: &str) -> Option<Cow<'static, str>> {
    let well_formed = !field.is_empty()
        && field.len() <= 64
        && field
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Some(Cow::Borrowed(
            "use 1-64 characters of a-z 0-9 _ (for example \"team_id\")",
        ));
    }
    let header = field.replace('_', "-");
    if TAKEN_HEADERS.contains(&header.as_str())
        || TAKEN_HEADER_PREFIXES
            .iter()
            .any(|prefix| header.starts_with(prefix))
    {
        return Some(Cow::Owned(format!(
            "its header x-{header} already means something to proxies, servers or tracing \
             systems, which would read the tenant value sent downstream: choose another name"
        )));
    }
    if crate::LOG_LINE_KEYS.contains(&field) || CORRELATION_FIELDS.contains(&field) {
        return Some(Cow::Owned(format!(
            "{field} is already a field of every log line and server span, which a tenant \
             field would clash with (its value would show on none of them): choose another \
             name, such as \"tenant_{field}\""
        )));
    }
    if let Some(part) = crate::SENSITIVE_KEY_PARTS
        .iter()
        .find(|part| field.contains(*part))
    {
        return Some(Cow::Owned(format!(
            "it names a secret ({part}): tenant values are sent downstream, logged and \
             exported on spans unmasked; carry an id that names the tenant instead"
        )));
    }
    None
}

impl TenantKey {
    /// `org_id`, carried in `x-org-id`.
    pub const ORG_ID: TenantKey = TenantKey {
        field: Cow::Borrowed("org_id"),
        header: HeaderName::from_static("x-org-id"),
    };
    /// `project_id`, carried in `x-project-id`.
    pub const PROJECT_ID: TenantKey = TenantKey {
        field: Cow::Borrowed("project_id"),
        header: HeaderName::from_static("x-project-id"),
    };

    /// A service-declared field; its header is `x-` followed by the name with `_` as `-`.
    ///
    /// Refused, with the reason: a name that is not 1–64 characters of `a-z 0-9 _`, whose
    /// header already means something to proxies or tracing systems (`forwarded_for`,
    /// `real_ip`, `b3_*`, ...), that every log line or server span already has (`service`,
    /// `trace_id`, ...), or that names a secret (`api_key`, `session_id`, ...).
    pub fn new(field: &str) -> Result<Self, InvalidTenantKey> {
        let refused = |reason| InvalidTenantKey {
            name: field.chars().take(64).collect(),
            reason,
        };
        if let Some(reason) = refusal(field) {
            return Err(refused(reason));
        }
        let header = format!("x-{}", field.replace('_', "-"));
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| refused(Cow::Borrowed("it makes no valid header name")))?;
        Ok(Self {
            field: Cow::Owned(field.to_owned()),
            header,
        })
    }

    /// The default tenant fields: `org_id` and `project_id`.
    pub fn defaults() -> Vec<TenantKey> {
        vec![Self::ORG_ID, Self::PROJECT_ID]
    }

    /// The log and span field name.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The header (and carrier key) that carries it.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantKey({})", self.field)
    }
}

/// Validated tenant fields of a request, in the order they were declared.
///
/// Values follow the request id rules (1–128 characters of `A-Z a-z 0-9 - _ . :`), so they are
/// safe in headers, logs and metric labels.
#[derive(Default, PartialEq, Eq, Hash)]
pub struct Tenant {
    fields: Vec<(TenantKey, HeaderValue)>,
}

/// By hand, and inlined into the context's clone: most requests carry no tenant, and cloning an
/// empty `Vec` still goes through its out-of-line clone (the context is cloned on every request).
impl Clone for Tenant {
    #[inline]
    fn clone(&self) -> Self {
        if self.fields.is_empty() {
            return Self::new();
        }
        Self {
            fields: self.fields.clone(),
        }
    }
}

impl Tenant {
    /// No tenant fields.
    pub const fn new() -> Self {
        Self { fields: Vec::new() }
    }

    /// Sets a field after validating its value.
    pub fn insert(&mut self, key: TenantKey, value: &str) -> Result<(), InvalidId> {
        validate_id(value.as_bytes())?;
        let value = HeaderValue::from_str(value).map_err(|_| InvalidId::Empty)?;
        self.insert_validated(key, value);
        Ok(())
    }

    /// Sets a field from a header value after validating it, sharing its bytes.
    pub fn insert_header_value(
        &mut self,
        key: TenantKey,
        value: &HeaderValue,
    ) -> Result<(), InvalidId> {
        validate_id(value.as_bytes())?;
        self.insert_validated(key, value.clone());
        Ok(())
    }

    /// Sets a field whose value already passed the id rules.
    pub(crate) fn insert_validated(&mut self, key: TenantKey, value: HeaderValue) {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The value of a field by its field name (`"org_id"`).
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.field() == field)
            .and_then(|(_, v)| v.to_str().ok())
    }

    /// `org_id`, when sent.
    pub fn org_id(&self) -> Option<&str> {
        self.get("org_id")
    }

    /// `project_id`, when sent.
    pub fn project_id(&self) -> Option<&str> {
        self.get("project_id")
    }

    /// Every field with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&TenantKey, &str)> {
        self.fields
            .iter()
            .map(|(k, v)| (k, v.to_str().unwrap_or_default()))
    }

    /// Every field with its header value, for propagation.
    pub fn header_values(&self) -> impl Iterator<Item = (&TenantKey, &HeaderValue)> {
        self.fields.iter().map(|(k, v)| (k, v))
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields as spans and log lines record them (tracing needs field names at compile
    /// time): those of [`SPAN_TENANT_FIELDS`] under their own names, the others together in
    /// [`SPAN_TENANT_OTHERS`] as `key=value,...` (values never hold `,` or `=`).
    ///
    /// ```
    /// use periscope_context::{Tenant, TenantKey};
    ///
    /// let mut tenant = Tenant::new();
    /// tenant.insert(TenantKey::new("org_id").unwrap(), "org_1").unwrap();
    /// tenant.insert(TenantKey::new("workspace_id").unwrap(), "ws_2").unwrap();
    /// let fields = tenant.span_fields();
    /// assert_eq!(fields.named, [Some("org_1"), None, None, None, None]);
    /// assert_eq!(fields.others.as_deref(), Some("workspace_id=ws_2"));
    /// ```
    pub fn span_fields(&self) -> TenantSpanFields<'_> {
        let mut fields = TenantSpanFields::default();
        for (key, value) in self.iter() {
            match SPAN_TENANT_FIELDS
                .iter()
                .position(|name| *name == key.field())
            {
                Some(index) => fields.named[index] = Some(value),
                None => {
                    let others = fields.others.get_or_insert_with(String::new);
                    if !others.is_empty() {
                        others.push(',');
                    }
                    others.push_str(key.field());
                    others.push('=');
                    others.push_str(value);
                }
            }
        }
        fields
    }
}

/// Tenant fields recorded under their own name on every request span and access line.
pub const SPAN_TENANT_FIELDS: [&str; 5] =
    ["org_id", "project_id", "team_id", "user_id", "tenant_id"];

/// The span field in which the other declared tenant fields are recorded together, as
/// `key=value,...`.
pub const SPAN_TENANT_OTHERS: &str = "tenant";

/// A [`Tenant`] as spans record it: see [`Tenant::span_fields`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantSpanFields<'a> {
    /// The values of [`SPAN_TENANT_FIELDS`], in that order.
    pub named: [Option<&'a str>; 5],
    /// The other fields as `key=value,...`, when there are any.
    pub others: Option<String>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k.field(), v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_id_rules() {
        let mut tenant = Tenant::new();
        tenant.insert(TenantKey::ORG_ID, "org_42").unwrap();
        assert!(tenant.insert(TenantKey::PROJECT_ID, "bad value").is_err());
        assert!(tenant.insert(TenantKey::PROJECT_ID, "").is_err());
        assert_eq!(tenant.org_id(), Some("org_42"));
        assert_eq!(tenant.project_id(), None);
        tenant.insert(TenantKey::ORG_ID, "org_43").unwrap();
        assert_eq!(tenant.iter().count(), 1);
        assert_eq!(tenant.org_id(), Some("org_43"));
    }

    #[test]
    fn declared_keys_derive_their_header() {
        let key = TenantKey::new("user_id").unwrap();
        assert_eq!(key.field(), "user_id");
        assert_eq!(key.header().as_str(), "x-user-id");
        for bad in ["", "UserId", "user-id", "user id", &"a".repeat(65)] {
            assert!(TenantKey::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_whose_header_or_value_means_something_else_are_refused() {
        for (name, says) in [
            ("request_id", "x-request-id"),
            ("correlation_id", "x-correlation-id"),
            ("forwarded_for", "x-forwarded-for"),
            ("forwarded_proto", "x-forwarded-proto"),
            ("forwarded_host", "x-forwarded-host"),
            ("real_ip", "x-real-ip"),
            ("b3_traceid", "x-b3-traceid"),
            ("datadog_trace_id", "x-datadog-trace-id"),
            ("amzn_trace_id", "x-amzn-trace-id"),
            ("amzn_oidc_identity", "x-amzn-oidc-identity"),
            (
                "goog_authenticated_user_email",
                "x-goog-authenticated-user-email",
            ),
            ("original_url", "x-original-url"),
            ("remote_user", "x-remote-user"),
            ("http_method_override", "x-http-method-override"),
            ("api_key", "secret (api_key)"),
            ("session_id", "secret (session)"),
            ("auth_token", "secret (token)"),
            ("service", "already a field of every log line"),
            ("level", "already a field of every log line"),
            ("version", "already a field of every log line"),
            ("trace_id", "already a field of every log line"),
            ("span_id", "already a field of every log line"),
        ] {
            let refused = TenantKey::new(name).unwrap_err();
            assert_eq!(refused.name(), name);
            assert!(refused.to_string().contains(says), "{refused}");
        }
        // Names near them stay usable.
        for name in [
            "team_id",
            "tenant",
            "forwarded",
            "region",
            "b3",
            "user_id",
            "key_1",
            "service_id",
            "tenant_version",
        ] {
            assert!(TenantKey::new(name).is_ok(), "{name}");
        }
    }
}

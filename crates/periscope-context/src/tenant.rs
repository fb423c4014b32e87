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
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantKey {
    field: Cow<'static, str>,
    header: HeaderName,
}

/// A tenant field name that is not `[a-z0-9_]{1,64}`, or one whose header carries the request
/// id (`request_id`, `correlation_id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant field name {0:?} is invalid: use 1-64 characters of a-z 0-9 _ (for example \"team_id\"), other than request_id and correlation_id, whose headers carry the request id"
)]
pub struct InvalidTenantKey(pub String);

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
    pub fn new(field: &str) -> Result<Self, InvalidTenantKey> {
        let valid = !field.is_empty()
            && field.len() <= 64
            && field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            // Their headers are `x-request-id` and `x-correlation-id`: sent downstream, the
            // tenant value would replace the request id.
            && !matches!(field, "request_id" | "correlation_id");
        if !valid {
            return Err(InvalidTenantKey(field.chars().take(64).collect()));
        }
        let header = format!("x-{}", field.replace('_', "-"));
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| InvalidTenantKey(field.into()))?;
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
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tenant {
    fields: Vec<(TenantKey, HeaderValue)>,
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
}

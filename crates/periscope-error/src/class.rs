//! Error classes: the coarse kind of failure a client reacts to.

use std::fmt;

use http::StatusCode;

/// What kind of failure an error code names, and so what a client should do about it.
///
/// Every [`ErrorCode`](crate::ErrorCode) belongs to exactly one class. A class gives the
/// code's default HTTP status and retryability; a client that meets a code it does not know
/// still knows what to do from the class (see [`ErrorClass::from_status`] for responses that
/// carry no envelope at all).
///
/// ```
/// use http::StatusCode;
/// use periscope_error::ErrorClass;
///
/// assert_eq!(ErrorClass::RateLimited.default_status(), StatusCode::TOO_MANY_REQUESTS);
/// assert!(ErrorClass::Unavailable.is_retryable());
/// assert_eq!(ErrorClass::from_status(StatusCode::BAD_GATEWAY), ErrorClass::Unavailable);
/// assert_eq!(ErrorClass::NotFound.as_str(), "not_found");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The caller is not authenticated: no token, or an expired or invalid one (401).
    Auth,
    /// The caller is authenticated but may not do this (403).
    Permission,
    /// The request itself is wrong: malformed, invalid fields, too large (400, 422, 413, ...);
    /// on the client, also a redirect (3xx) it did not follow.
    Validation,
    /// The addressed resource or route does not exist (404).
    NotFound,
    /// The request conflicts with the resource's current state (409).
    Conflict,
    /// The caller sent too many requests; retry after the given delay (429).
    RateLimited,
    /// Capacity could not be provisioned: no allocation, SKU or node available (503, or 409).
    Provisioning,
    /// The service or one of its dependencies is unavailable or too slow (503, 502, 504).
    Unavailable,
    /// A bug or an unexpected failure inside the service (500).
    Internal,
}

impl ErrorClass {
    /// Every class, in the order of the catalogue.
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::Auth,
        ErrorClass::Permission,
        ErrorClass::Validation,
        ErrorClass::NotFound,
        ErrorClass::Conflict,
        ErrorClass::RateLimited,
        ErrorClass::Provisioning,
        ErrorClass::Unavailable,
        ErrorClass::Internal,
    ];

    /// The snake_case name, as written in docs and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::Permission => "permission",
            ErrorClass::Validation => "validation",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Provisioning => "provisioning",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Internal => "internal",
        }
    }

    /// The HTTP status a code of this class gets unless it names its own.
    pub const fn default_status(self) -> StatusCode {
        match self {
            ErrorClass::Auth => StatusCode::UNAUTHORIZED,
            ErrorClass::Permission => StatusCode::FORBIDDEN,
            ErrorClass::Validation => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Provisioning | ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed later without change: true for rate limits,
    /// unavailability and provisioning shortages.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited | ErrorClass::Provisioning | ErrorClass::Unavailable
        )
    }

    /// The class a client assumes for a response that carries no (known) error code.
    ///
    /// 401 → auth, 403 → permission, 404 and 410 → not_found, 409 and 412 → conflict,
    /// 429 → rate_limited, 408, 502, 503 and 504 → unavailable, other 4xx and every 3xx (a
    /// redirect the client did not follow) → validation, everything else (500, other 5xx, 1xx
    /// and 2xx) → internal.
    pub const fn from_status(status: StatusCode) -> ErrorClass {
        match status.as_u16() {
            401 => ErrorClass::Auth,
            403 => ErrorClass::Permission,
            404 | 410 => ErrorClass::NotFound,
            409 | 412 => ErrorClass::Conflict,
            429 => ErrorClass::RateLimited,
            408 | 502 | 503 | 504 => ErrorClass::Unavailable,
            // A redirect the client did not follow: the call must change (to its `Location`).
            300..=499 => ErrorClass::Validation,
            _ => ErrorClass::Internal,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_classes_are_retryable() {
        let retryable: Vec<_> = ErrorClass::ALL
            .into_iter()
            .filter(|class| class.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorClass::RateLimited,
                ErrorClass::Provisioning,
                ErrorClass::Unavailable
            ]
        );
    }

    #[test]
    fn every_class_maps_back_from_its_default_status() {
        for class in ErrorClass::ALL {
            let back = ErrorClass::from_status(class.default_status());
            // Provisioning shares 503 with unavailable; a client treats both as "retry later".
            let expected = match class {
                ErrorClass::Provisioning => ErrorClass::Unavailable,
                other => other,
            };
            assert_eq!(back, expected, "{class}");
        }
    }

    #[test]
    fn serde_name_is_the_snake_case_name() {
        for class in ErrorClass::ALL {
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            let back: ErrorClass = serde_json::from_str(&json).unwrap();
            assert_eq!(back, class);
        }
    }
}

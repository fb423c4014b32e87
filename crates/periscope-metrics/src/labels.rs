//! Bounded label values: HTTP method, status and the reserved values periscope writes.

use http::{Method, StatusCode};

/// The `route` of a request that matched no route template: never the raw path.
pub const UNMATCHED: &str = "__unmatched__";

/// The value a label takes once its cap of distinct values is reached.
pub const OVERFLOW: &str = "__overflow__";

/// The `method` of a request whose method is outside the standard set.
pub const OTHER_METHOD: &str = "_OTHER";

/// The `status` of a request dropped before its response was ready: the client went away or
/// a timeout above the metrics layer cancelled it.
pub const CANCELLED: &str = "cancelled";

/// The method label: one of the nine standard methods, `_OTHER` otherwise, so a client
/// inventing methods cannot create series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// How the `status` label renders a response status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusLabel {
    /// The class: `2xx`, `4xx`, `5xx`... (the default: at most a handful of series).
    #[default]
    Class,
    /// The exact code: `200`, `404`, `503`... (bounded by the label cap like any label).
    Code,
}

impl StatusLabel {
    /// The label value for `status`.
    pub fn value(self, status: StatusCode) -> &'static str {
        const CLASSES: [&str; 9] = [
            "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
        ];
        match self {
            // `StatusCode` is always 100..=999, so the class index is 0..=8.
            StatusLabel::Class => CLASSES
                .get(usize::from(status.as_u16() / 100).saturating_sub(1))
                .copied()
                .unwrap_or(OVERFLOW),
            StatusLabel::Code => status_code_str(status),
        }
    }

    /// The label value of a request that failed or panicked before it produced a response.
    pub(crate) fn server_error(self) -> &'static str {
        self.value(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// The code as a `'static` string: `StatusCode::as_str` borrows from the code.
fn status_code_str(status: StatusCode) -> &'static str {
    // Three ASCII digits for every code 100..=999, laid out back to back.
    static DIGITS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let digits = DIGITS.get_or_init(|| (100..1000).map(|code: u16| code.to_string()).collect());
    let start = usize::from(status.as_u16().saturating_sub(100)) * 3;
    digits.get(start..start + 3).unwrap_or(OVERFLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_keep_their_name_others_fold() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let bogus = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&bogus), OTHER_METHOD);
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(method_label(&lower), OTHER_METHOD);
    }

    #[test]
    fn status_renders_as_class_or_code() {
        assert_eq!(StatusLabel::Class.value(StatusCode::OK), "2xx");
        assert_eq!(StatusLabel::Class.value(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(
            StatusLabel::Class.value(StatusCode::from_u16(999).unwrap()),
            "9xx"
        );
        assert_eq!(StatusLabel::Code.value(StatusCode::OK), "200");
        assert_eq!(
            StatusLabel::Code.value(StatusCode::SERVICE_UNAVAILABLE),
            "503"
        );
        assert_eq!(
            StatusLabel::Code.value(StatusCode::from_u16(100).unwrap()),
            "100"
        );
        assert_eq!(
            StatusLabel::Code.value(StatusCode::from_u16(999).unwrap()),
            "999"
        );
        assert_eq!(StatusLabel::Code.server_error(), "500");
        assert_eq!(StatusLabel::Class.server_error(), "5xx");
    }
}

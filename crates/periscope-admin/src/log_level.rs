//! `GET`/`POST /debug/log-level`: the log filter, read and changed at run time.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use periscope_error::{BoxError, HttpError, Violation, codes};
use periscope_log::{Directives, LEVEL_CHANGE_TARGET, LevelControl, LevelStatus};
use serde::{Deserialize, Serialize};

use crate::reply::{self, AdminBody};

/// The longest temporary change, in seconds (a day): longer belongs in the configuration.
pub const MAX_TTL_S: f64 = 86_400.0;

/// The shortest `ttl_s` accepted: a millisecond.
pub const MIN_TTL_S: f64 = 0.001;
/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The answer to both methods: where the filter stands now.
#[derive(Debug, Serialize)]
struct LevelView {
    current: String,
    permanent: String,
    reverts_in_s: Option<f64>,
}

/// `GET /debug/log-level`.
pub(crate) fn current(control: &LevelControl) -> Response<AdminBody> {
    view(control.status())
}

fn view(status: LevelStatus) -> Response<AdminBody> {
    reply::json(&LevelView {
        current: status.current,
        permanent: status.permanent,
        reverts_in_s: status.reverts_in.map(|left| left.as_secs_f64()),
    })
}

/// The `POST` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    /// `info,my_crate=debug`.
    directives: Option<String>,
    /// Revert after this many seconds; permanent when absent. `null` is refused (as a wrong
    /// type), not read as absent: an unset variable in a script must not make `trace`
    /// permanent.
    #[serde(default, deserialize_with = "a_number")]
    ttl_s: Option<f64>,
    /// End the temporary change now.
    #[serde(default)]
    reset: bool,
}

/// `ttl_s` when present: a number, never `null`.
fn a_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    f64::deserialize(deserializer).map(Some)
}

/// What a valid `POST` does.
#[derive(Debug)]
enum Action {
    Set(Directives),
    SetFor(Directives, Duration),
    Reset,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Set(directives) => write!(f, "set {directives}"),
            Action::SetFor(directives, ttl) => {
                write!(f, "set {directives} for {}s", ttl.as_secs_f64())
            }
            Action::Reset => f.write_str("reset to the permanent directives"),
        }
    }
}

/// `POST /debug/log-level`: reads the body (at most [`MAX_BODY_BYTES`]), applies the change,
/// answers the new state. The change takes effect on the next event.
pub(crate) async fn change<B>(control: LevelControl, request: Request<B>) -> Response<AdminBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let head = Request::from_parts(parts, ());
    if !is_json(&head) {
        return reply::error(HttpError::from(codes::UNSUPPORTED_MEDIA_TYPE), &head);
    }
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(error) => return reply::error(error, &head),
    };
    let action = match parse(&bytes) {
        Ok(action) => action,
        Err(violation) => {
            return reply::invalid("The log level change is not valid", vec![violation], &head);
        }
    };
    let change = action.to_string();
    // `from` and the new state are read under the lock that orders changes: read around it,
    // a concurrent change (another operator, a revert) would slip into this line and answer.
    let done = match action {
        Action::Set(directives) => control.set(directives),
        Action::SetFor(directives, ttl) => control.set_for(directives, ttl),
        Action::Reset => control.reset(),
    };
    // Under the reserved target, which every filter lets through: no directive (`off`,
    // `periscope_admin=off`) can hide a change of the filter, this one included.
    tracing::warn!(
        target: LEVEL_CHANGE_TARGET,
        %change,
        from = %done.from,
        to = %done.status.current,
        "log filter changed through /debug/log-level"
    );
    view(done.status)
}

/// `Content-Type: application/json` (parameters allowed). Requiring it makes a browser send a
/// CORS preflight first, so a page cannot change the level of a service on the admin network.
fn is_json(head: &Request<()>) -> bool {
    head.headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_body<B>(body: B) -> Result<Bytes, HttpError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(HttpError::new(
            codes::PAYLOAD_TOO_LARGE,
            format!(
                "The body is over {MAX_BODY_BYTES} bytes; a log level change is a small JSON object"
            ),
        )),
        Err(error) => Err(HttpError::new(
            codes::INVALID_REQUEST,
            "The request body could not be read",
        )
        .with_source(error)),
    }
}

fn parse(body: &[u8]) -> Result<Action, Violation> {
    let refused = |error: &dyn fmt::Display| {
        Violation::new(
            "body",
            "format",
            format!(
                "{error}; send {{\"directives\":\"info,my_crate=debug\",\"ttl_s\":300}} or {{\"reset\":true}}"
            ),
        )
    };
    // serde reads a struct from a JSON array too, by position: `["trace"]` would be a
    // permanent `trace`. A change is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(refused(&"invalid type: array, expected a JSON object"));
    }
    let change: Change = serde_json::from_slice(body).map_err(|error| refused(&error))?;
    if change.reset {
        if change.directives.is_some() || change.ttl_s.is_some() {
            return Err(Violation::new(
                "reset",
                "conflict",
                "reset ends the temporary change; send it without directives or ttl_s",
            ));
        }
        return Ok(Action::Reset);
    }
    // An empty value (often an unset shell variable) would silence the service for good:
    // turning logs off takes an explicit "off".
    let Some(text) = change.directives.filter(|text| {
        text.split(',')
            .any(|directive| !directive.trim().is_empty())
    }) else {
        return Err(Violation::new(
            "directives",
            "required",
            "directives is required and not empty, for example \"info,my_crate=debug\" (\"off\" turns logs off)",
        ));
    };
    let directives = Directives::parse_log_level(&text)
        .map_err(|error| Violation::new("directives", "format", error.to_string()))?;
    match change.ttl_s {
        None => Ok(Action::Set(directives)),
        // Under a millisecond the change would revert before it is answered.
        Some(ttl) if (MIN_TTL_S..=MAX_TTL_S).contains(&ttl) => {
            Ok(Action::SetFor(directives, Duration::from_secs_f64(ttl)))
        }
        Some(_) => Err(Violation::new(
            "ttl_s",
            "out_of_range",
            format!(
                "ttl_s must be from {MIN_TTL_S} to {MAX_TTL_S} seconds; leave it out for a permanent change"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(body: &str) -> Violation {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn accepts_permanent_temporary_and_reset_changes() {
        assert!(matches!(
            parse(br#"{"directives":"info,my_crate=debug"}"#),
            Ok(Action::Set(_))
        ));
        match parse(br#"{"directives":"debug","ttl_s":0.5}"#) {
            Ok(Action::SetFor(d, ttl)) => {
                assert_eq!(d.to_string(), "debug");
                assert_eq!(ttl, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(br#"{"reset":true}"#), Ok(Action::Reset)));
    }

    #[test]
    fn names_the_problem() {
        assert_eq!(
            problem(r#"{"directives":"info,db=loud"}"#).field,
            "directives"
        );
        assert!(
            problem(r#"{"directives":"info,db=loud"}"#)
                .message
                .contains("not a log level")
        );
        assert_eq!(problem(r#"{"directives":"info","ttl_s":0}"#).field, "ttl_s");
        assert_eq!(
            problem(r#"{"directives":"info","ttl_s":5e-10}"#).field,
            "ttl_s"
        );
        assert_eq!(
            problem(r#"{"directives":"info","ttl_s":-3}"#).field,
            "ttl_s"
        );
        assert_eq!(
            problem(r#"{"directives":"info","ttl_s":1e9}"#).field,
            "ttl_s"
        );
        assert_eq!(problem(r#"{"ttl_s":5}"#).field, "directives");
        // Empty directives would silence the service for good: "off" must be said.
        for empty in [r#"{"directives":""}"#, r#"{"directives":" , "}"#] {
            assert_eq!(problem(empty).field, "directives", "{empty}");
        }
        assert!(matches!(
            parse(br#"{"directives":"off"}"#),
            Ok(Action::Set(_))
        ));
        // A lone word must be a level: as a bare target it would silence every other line.
        for typo in [r#"{"directives":"debg"}"#, r#"{"directives":" verbose "}"#] {
            let typo = problem(typo);
            assert_eq!(
                (typo.field.as_ref(), typo.reason.as_ref()),
                ("directives", "format")
            );
            assert!(typo.message.contains("not a log level"), "{}", typo.message);
        }
        match parse(br#"{"directives":" Warn "}"#) {
            Ok(Action::Set(d)) => assert_eq!(d.to_string(), "warn"),
            other => panic!("{other:?}"),
        }
        // Written as directives, a target is a target.
        match parse(br#"{"directives":"info,my_crate"}"#) {
            Ok(Action::Set(d)) => {
                assert_eq!(d.level_for("my_crate"), periscope_log::LevelFilter::TRACE)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            problem(r#"{"reset":true,"directives":"info"}"#).field,
            "reset"
        );
        let unknown = problem(r#"{"directive":"info"}"#);
        assert_eq!(unknown.field, "body");
        assert!(unknown.message.contains("unknown field `directive`"));
        assert_eq!(problem("not json").field, "body");
        assert_eq!(problem(r#"{"directives":5}"#).field, "body");
    }
}

//! The three renderings of a probe: the contract JSON (default), `application/health+json`
//! (draft-inadarei-api-health-check) when asked for, and Kubernetes-style `?verbose` text.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, VARY};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::report::{CheckOutcome, Report, Status};
use crate::runner::duration_ms;

/// Which probe a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `/health`: the process answers; never touches dependencies.
    Liveness,
    /// `/ready`: dependencies, startup gates and draining.
    Readiness,
    /// `/startup`: the startup gates alone, for slow starters.
    Startup,
}

impl Probe {
    fn word(self) -> &'static str {
        match self {
            Probe::Liveness => "health",
            Probe::Readiness => "ready",
            Probe::Startup => "startup",
        }
    }
}

/// Whether error texts go into responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Details {
    /// Each failed check shows its error text (the default).
    #[default]
    Full,
    /// Responses show each check's status only; the error text goes to the log alone. Use it
    /// where the probes are reachable from outside.
    Withheld,
}

/// The rendering a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    HealthJson,
    Verbose,
}

pub(crate) const HEALTH_JSON: &str = "application/health+json";

impl Format {
    /// `?verbose` (unless `=false`, in any case, or `=0`) wins, then
    /// `Accept: application/health+json`.
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        let verbose = request.uri().query().is_some_and(|query| {
            query.split('&').any(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                key == "verbose" && !value.eq_ignore_ascii_case("false") && value != "0"
            })
        });
        if verbose {
            return Format::Verbose;
        }
        // health+json when asked for, unless the client prefers plain `application/json`
        // (named, or through the most specific wildcard when not named: RFC 9110 12.5.1). A
        // wildcard alone chooses the default, plain JSON.
        let (mut health_json, mut json) = (None::<f32>, None::<f32>);
        let (mut application, mut any) = (None::<f32>, None::<f32>);
        let ranges = request
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for range in ranges {
            let (media_type, q) = media_range(range);
            let weight = if media_type.eq_ignore_ascii_case(HEALTH_JSON) {
                &mut health_json
            } else if media_type.eq_ignore_ascii_case("application/json") {
                &mut json
            } else if media_type.eq_ignore_ascii_case("application/*") {
                &mut application
            } else if media_type == "*/*" {
                &mut any
            } else {
                continue;
            };
            *weight = Some(weight.map_or(q, |w| w.max(q)));
        }
        let wildcard = application.or(any);
        let json = json.or(wildcard).unwrap_or(0.0);
        let health_json = match health_json {
            Some(q) => q > 0.0 && q >= json,
            // Not named: through the wildcard, when plain JSON ranks lower (`application/json;
            // q=0, */*`); a tie keeps the default.
            None => wildcard.is_some_and(|q| q > json),
        };
        if health_json {
            Format::HealthJson
        } else {
            Format::Json
        }
    }
}

/// A media range's type and its `q` weight (1 when absent, 0 when malformed).
fn media_range(range: &str) -> (&str, f32) {
    let mut parts = range.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    let q = parts
        .filter_map(|param| param.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
        .map_or(1.0, |(_, value)| {
            value
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0)
        });
    (media_type, q)
}

/// Renders a probe's answer.
pub(crate) fn render(
    probe: Probe,
    report: &Report,
    details: Details,
    format: Format,
) -> Response<Full<Bytes>> {
    let view = View {
        probe,
        report,
        details,
    };
    let (content_type, body) = match format {
        Format::Json => ("application/json", to_json(&ContractJson(view))),
        Format::HealthJson => (HEALTH_JSON, to_json(&DraftJson(view))),
        Format::Verbose => ("text/plain; charset=utf-8", view.verbose_text().into()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = report.status().http_status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A probe answer describes this instant: no proxy may serve it later. Its format follows
    // `Accept`, which a cache that ignores `no-store` must key on too.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(VARY, HeaderValue::from_static("accept"));
    // A 503 report is the probe's answer, not an error to turn into an envelope.
    response
        .extensions_mut()
        .insert(periscope_error::PassThrough);
    response
}

fn to_json(value: &impl Serialize) -> Bytes {
    // Serializing these views cannot fail: string keys, no maps with non-string keys.
    serde_json::to_vec(value).unwrap_or_default().into()
}

/// Why a request is not a probe.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// No probe answers on the path (404).
    NoProbe,
    /// Probes answer `GET` and `HEAD` only (405).
    Method,
}

/// The answer to a request that is not a probe: the error envelope every periscope error
/// response has (ids from the request's extensions when a correlation layer put them there),
/// even with no error layer in front of the probe server.
pub(crate) fn refusal<B>(refusal: Refusal, request: &Request<B>) -> Response<Full<Bytes>> {
    use periscope_error::{HttpError, codes};
    let error = match refusal {
        Refusal::NoProbe => HttpError::new(codes::ROUTE_NOT_FOUND, "No probe answers on this path"),
        Refusal::Method => HttpError::new(codes::METHOD_NOT_ALLOWED, "Probes answer GET and HEAD"),
    };
    // The probe server speaks HTTP only: a gRPC content type must not turn a refusal into a
    // gRPC answer, an HTTP 200 that access logs and status-keyed limits count as a success.
    let mut response: Response<Full<Bytes>> = error.into_http_only_response_for(request);
    // As every answer of the probe server: a 404 is cacheable by default.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Refusal::Method = refusal {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// A short plain-text answer (a future polled after it completed).
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Clone, Copy)]
struct View<'a> {
    probe: Probe,
    report: &'a Report,
    details: Details,
}

impl View<'_> {
    fn error_of<'o>(&self, outcome: &'o CheckOutcome) -> Option<&'o str> {
        match self.details {
            Details::Full => outcome.error.as_deref(),
            Details::Withheld => None,
        }
    }

    fn verbose_text(&self) -> String {
        let mut text = String::new();
        let report = self.report;
        if self.probe == Probe::Liveness {
            text.push_str("[+]ping ok\n");
        }
        for gate in report.waiting_for() {
            let _ = writeln!(text, "[-]startup:{} waiting", one_line(gate));
        }
        if report.status() == Status::Draining {
            text.push_str("[-]draining\n");
        }
        for outcome in report.checks() {
            let name = one_line(&outcome.name);
            if outcome.passed() {
                let _ = writeln!(text, "[+]{name} ok");
                continue;
            }
            let kind = if outcome.critical {
                ""
            } else {
                " (non-critical)"
            };
            let reason = self.error_of(outcome).map_or_else(
                || "reason withheld".to_owned(),
                |error| one_line(error).into_owned(),
            );
            let _ = writeln!(text, "[-]{name} failed{kind}: {reason}");
        }
        let probe = self.probe.word();
        let _ = match report.status() {
            Status::Ok => writeln!(text, "{probe} check passed"),
            Status::Degraded => writeln!(text, "{probe} check passed (degraded)"),
            Status::Fail => writeln!(text, "{probe} check failed"),
            status => writeln!(text, "{probe} check failed: {status}"),
        };
        text
    }
}

/// Keeps a name or error on its one line of the text rendering.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// The contract JSON: `{"status","version","uptime_s","checks":{name:{..}}}`.
struct ContractJson<'a>(View<'a>);

impl Serialize for ContractJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let report = view.report;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", report.status().as_str())?;
        if view.probe == Probe::Liveness {
            return map.end();
        }
        if let Some(version) = report.version() {
            map.serialize_entry("version", version)?;
        }
        map.serialize_entry("uptime_s", &report.uptime().as_secs())?;
        if !report.waiting_for.is_empty() {
            let gates: Vec<&str> = report.waiting_for().collect();
            map.serialize_entry("waiting_for", &gates)?;
        }
        if view.probe == Probe::Readiness {
            map.serialize_entry("checks", &ContractChecks(view))?;
        }
        map.end()
    }
}

struct ContractChecks<'a>(View<'a>);

impl Serialize for ContractChecks<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let checks = view.report.checks();
        let mut map = serializer.serialize_map(Some(checks.len()))?;
        for outcome in checks {
            map.serialize_entry(&*outcome.name, &ContractCheck(view, outcome))?;
        }
        map.end()
    }
}

struct ContractCheck<'a>(View<'a>, &'a CheckOutcome);

impl Serialize for ContractCheck<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ContractCheck(view, outcome) = self;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", if outcome.passed() { "ok" } else { "fail" })?;
        // Critical is the default: only the exception is spelled out.
        if !outcome.critical {
            map.serialize_entry("critical", &false)?;
        }
        map.serialize_entry("duration_ms", &duration_ms(outcome.duration))?;
        if let Some(error) = view.error_of(outcome) {
            map.serialize_entry("error", error)?;
        }
        map.end()
    }
}

/// draft-inadarei-api-health-check: `pass` / `warn` / `fail`, checks keyed
/// `name:responseTime`, each an array of one observation.
struct DraftJson<'a>(View<'a>);

impl DraftJson<'_> {
    fn status(status: Status) -> &'static str {
        match status {
            Status::Ok => "pass",
            Status::Degraded => "warn",
            Status::Fail | Status::Starting | Status::Draining => "fail",
        }
    }
}

impl Serialize for DraftJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let report = view.report;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", Self::status(report.status()))?;
        if view.probe == Probe::Liveness {
            return map.end();
        }
        if let Some(version) = report.version() {
            map.serialize_entry("releaseId", version)?;
        }
        match report.status() {
            Status::Starting => {
                let gates: Vec<&str> = report.waiting_for().collect();
                map.serialize_entry(
                    "output",
                    &format!("starting: waiting for {}", gates.join(", ")),
                )?;
            }
            Status::Draining => map.serialize_entry("output", "draining")?,
            _ => {}
        }
        map.serialize_entry("checks", &DraftChecks(view))?;
        map.end()
    }
}

struct DraftChecks<'a>(View<'a>);

impl Serialize for DraftChecks<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(
            "uptime",
            &[DraftObservation {
                component_type: Some("system"),
                status: "pass",
                value: view.report.uptime().as_secs_f64(),
                unit: "s",
                output: None,
            }],
        )?;
        for outcome in view.report.checks() {
            let status = match (outcome.passed(), outcome.critical) {
                (true, _) => "pass",
                (false, true) => "fail",
                (false, false) => "warn",
            };
            map.serialize_entry(
                &format!("{}:responseTime", outcome.name),
                &[DraftObservation {
                    component_type: None,
                    status,
                    value: outcome.duration.as_secs_f64() * 1000.0,
                    unit: "ms",
                    output: view.error_of(outcome),
                }],
            )?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DraftObservation<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    component_type: Option<&'static str>,
    status: &'static str,
    #[serde(rename = "observedValue")]
    value: f64,
    #[serde(rename = "observedUnit")]
    unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_of(uri: &str, accept: Option<&str>) -> Format {
        let mut request = Request::get(uri);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        Format::of(&request.body(()).unwrap())
    }

    #[test]
    fn negotiation() {
        assert_eq!(format_of("/ready", None), Format::Json);
        assert_eq!(format_of("/ready?verbose", None), Format::Verbose);
        assert_eq!(format_of("/ready?x=1&verbose=true", None), Format::Verbose);
        assert_eq!(format_of("/ready?verbose=0", None), Format::Json);
        assert_eq!(format_of("/ready?verbose=FALSE", None), Format::Json);
        assert_eq!(
            format_of("/ready", Some("text/html, application/health+json;q=0.9")),
            Format::HealthJson
        );
        assert_eq!(
            format_of("/ready", Some("application/health+json; q=0")),
            Format::Json
        );
        assert_eq!(
            format_of("/ready?verbose", Some("application/health+json")),
            Format::Verbose
        );
        // A client that prefers plain JSON gets it.
        assert_eq!(
            format_of(
                "/ready",
                Some("application/json, application/health+json;q=0.5")
            ),
            Format::Json
        );
        assert_eq!(
            format_of(
                "/ready",
                Some("application/json;q=0.5, application/health+json")
            ),
            Format::HealthJson
        );
        assert_eq!(
            format_of("/ready", Some("application/health+json;q=nan")),
            Format::Json
        );
        // Wildcards weigh for plain JSON where it is not named, the most specific first.
        for (accept, format) in [
            ("application/health+json;q=0.1, */*", Format::Json),
            ("application/health+json;q=0.1, application/*", Format::Json),
            ("application/health+json, */*;q=0.5", Format::HealthJson),
            (
                "application/health+json;q=0.5, application/*;q=0.1, */*",
                Format::HealthJson,
            ),
            (
                "application/health+json;q=0.5, application/json;q=0.1, */*",
                Format::HealthJson,
            ),
            ("*/*", Format::Json),
            // Plain JSON refused, or ranked below the wildcard health+json falls under.
            ("application/json;q=0, */*", Format::HealthJson),
            ("application/json;q=0.5, application/*", Format::HealthJson),
            ("application/json;q=0, */*;q=0", Format::Json),
        ] {
            assert_eq!(format_of("/ready", Some(accept)), format, "{accept}");
        }
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert_eq!(one_line("a\nb\r[+]c"), "a b [+]c");
    }
}

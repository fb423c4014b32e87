//! The `/metrics` endpoint: format negotiation, encoding and gzip.

use std::convert::Infallible;
use std::io::Write as _;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{ACCEPT, ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;

use crate::registry::MetricsRegistry;

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Prometheus text format 0.0.4: what scrapers read when they do not ask for more.
    Prometheus,
    /// OpenMetrics text 1.0.0, with exemplars: what Prometheus asks for by default.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a scraper's `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` above plain text, or names it and ranks it as high;
    /// Prometheus otherwise (also when it accepts neither). Each takes the weight of the most
    /// specific range that matches it, as RFC 9110 has it: `text/plain;q=0, */*` refuses plain
    /// text, whatever `*/*` says.
    ///
    /// This reads one header line; [`from_headers`](Self::from_headers) reads every
    /// `Accept` line of a request.
    ///
    /// ```
    /// use periscope_metrics::Format;
    ///
    /// let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
    /// assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
    /// assert_eq!(Format::from_accept(Some("text/plain;q=0, */*")), Format::OpenMetrics);
    /// assert_eq!(Format::from_accept(Some("application/*")), Format::OpenMetrics);
    /// assert_eq!(Format::from_accept(None), Format::Prometheus);
    /// ```
    pub fn from_accept(accept: Option<&str>) -> Format {
        Self::preferred(accept.into_iter().flat_map(ranges))
    }

    /// The format a request's `Accept` header prefers, as [`from_accept`](Self::from_accept)
    /// decides it, with every `Accept` line read as one list: a field split over several
    /// lines means the same as its values joined by commas on one (RFC 9110 §5.3).
    ///
    /// ```
    /// use http::header::{ACCEPT, HeaderMap, HeaderValue};
    /// use periscope_metrics::Format;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.append(ACCEPT, HeaderValue::from_static("text/plain;q=0.5"));
    /// headers.append(ACCEPT, HeaderValue::from_static("application/openmetrics-text"));
    /// assert_eq!(Format::from_headers(&headers), Format::OpenMetrics);
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Format {
        Self::preferred(list_items(headers, &ACCEPT))
    }

    /// Each format takes the weight of the most specific range that names it (RFC 9110,
    /// section 12.5.1): `text/plain` before `text/*` before `*/*`, and
    /// `application/openmetrics-text` before `application/*` before `*/*`; a weight of 0 refuses
    /// it. A tie goes to OpenMetrics only when it is named: `*/*` alone gets plain text.
    fn preferred<'a>(ranges: impl Iterator<Item = (&'a str, f32)>) -> Format {
        #[derive(Default)]
        struct Weights {
            openmetrics: Option<f32>,
            application: Option<f32>,
            text_plain: Option<f32>,
            text: Option<f32>,
            any: Option<f32>,
        }
        let mut weights = Weights::default();
        for (media, q) in ranges {
            let slot = if media.eq_ignore_ascii_case("application/openmetrics-text") {
                &mut weights.openmetrics
            } else if media.eq_ignore_ascii_case("application/*") {
                &mut weights.application
            } else if media.eq_ignore_ascii_case("text/plain") {
                &mut weights.text_plain
            } else if media.eq_ignore_ascii_case("text/*") {
                &mut weights.text
            } else if media == "*/*" {
                &mut weights.any
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |before| before.max(q)));
        }
        let openmetrics = weights
            .openmetrics
            .or(weights.application)
            .or(weights.any)
            .unwrap_or(0.0);
        let text = weights
            .text_plain
            .or(weights.text)
            .or(weights.any)
            .unwrap_or(0.0);
        let named = weights.openmetrics.is_some();
        if openmetrics > 0.0 && (openmetrics > text || (openmetrics == text && named)) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// Whether the request's `Accept-Encoding` lines accept gzip (`gzip` or `*` with a non-zero
/// weight) at least as much as `identity` where they weigh that too, by name or through `*`
/// (`identity;q=1, gzip;q=0.5` and `gzip;q=0.5, *` ask for the text as it is).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    let mut identity = None;
    for (coding, q) in list_items(headers, &ACCEPT_ENCODING) {
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if coding.eq_ignore_ascii_case("identity") {
            identity = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    // `*` weighs every coding not named, identity included (RFC 9110 §12.5.3).
    let identity = identity.or(any);
    gzip.or(any)
        .is_some_and(|q| q > 0.0 && identity.is_none_or(|identity| q >= identity))
}

/// The items of a list-valued header over all its lines, as if they were one line joined by
/// commas (RFC 9110 §5.3). Nothing when any line is not visible ASCII: the joined line would
/// not be either, and such a header reads as absent. Borrows the lines, no allocation.
fn list_items<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = (&'h str, f32)> {
    let readable = headers
        .get_all(name)
        .iter()
        .all(|line| line.to_str().is_ok());
    headers
        .get_all(name)
        .iter()
        .filter(move |_| readable)
        .filter_map(|line| line.to_str().ok())
        .flat_map(ranges)
}

/// The items of a comma-separated header with their `q` weight (1 when absent; 0 when
/// malformed, so a broken weight never selects anything).
fn ranges(header: &str) -> impl Iterator<Item = (&str, f32)> {
    header.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let value = parts.next()?.trim();
        if value.is_empty() {
            return None;
        }
        let q = parts
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| {
                q.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0)
            });
        Some((value, q))
    })
}

/// Encodes `registry` in `format`.
pub(crate) fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut openmetrics = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut openmetrics, registry)?;
    Ok(match format {
        Format::OpenMetrics => openmetrics,
        Format::Prometheus => {
            let mut text = String::new();
            crate::prometheus_text::from_openmetrics(&openmetrics, &mut text);
            text
        }
    })
}

/// The Tower service that answers a scrape: `GET` returns the registry in the format the
/// `Accept` header prefers, gzip-compressed when `Accept-Encoding` allows it (each header read
/// over all its lines). `HEAD` gets the same headers without encoding anything.
/// Mount it at `/metrics`; it answers whatever path it is given.
///
/// A `GET` is encoded on a thread of its own ([`scrape`](Self::scrape)): encoding is CPU work
/// proportional to the number of sample lines (a few milliseconds for 10,000 counter series; a
/// RED series writes 19 lines, so 10,000 of them take tens of milliseconds, gzip included),
/// plus reading a few `/proc` files for the process metrics, which must not stall an
/// executor's thread.
///
/// ```
/// use periscope_metrics::{MetricsRegistry, MetricsService};
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = MetricsRegistry::new();
/// registry.register_process_metrics().unwrap();
/// let mut service = MetricsService::new(registry);
///
/// let scrape = http::Request::get("/metrics")
///     .header("accept", "application/openmetrics-text; version=1.0.0")
///     .body(())
///     .unwrap();
/// let response = service.call(scrape).await.unwrap();
/// assert_eq!(response.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
/// # }
/// ```
///
/// With axum (feature `axum` not needed for this):
///
/// ```
/// # use periscope_metrics::{MetricsRegistry, MetricsService};
/// let registry = MetricsRegistry::new();
/// let app: axum::Router = axum::Router::new()
///     .route_service("/metrics", MetricsService::new(registry.clone()));
/// ```
#[derive(Clone, Debug)]
pub struct MetricsService {
    registry: MetricsRegistry,
}

impl MetricsService {
    /// Serves `registry`.
    pub fn new(registry: MetricsRegistry) -> Self {
        Self { registry }
    }

    /// The response to a scrape with these method and headers.
    pub fn respond(&self, method: &Method, headers: &HeaderMap) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or HEAD to scrape metrics\n",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let format = Format::from_headers(headers);
        let gzip = accepts_gzip(headers);
        // HEAD gets GET's headers without the exposition: a monitoring check must not cost a
        // scrape (collectors, `/proc` reads, gzip). So it cannot see an encoding failure that
        // would make a GET a 500; Content-Length is left out (RFC 9110 §9.3.2).
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            let text = match self.registry.encode(format) {
                Ok(text) => text,
                Err(std::fmt::Error) => {
                    tracing::error!(
                        "encoding the metrics registry failed: a collector returned an error"
                    );
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding the metrics failed; see the service log\n",
                    );
                }
            };
            if gzip {
                gzip_bytes(text.as_bytes())
            } else {
                Bytes::from(text)
            }
        };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        headers.insert(VARY, HeaderValue::from_static("accept, accept-encoding"));
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }
}

impl MetricsService {
    /// The response to a scrape, as [`respond`](Self::respond) gives it, but encoded on a
    /// thread of its own: encoding a big registry takes milliseconds (tens with 10,000 series)
    /// and the process metrics read `/proc`, which must not stall an executor's thread and
    /// every request waiting on it. At most [`MAX_SCRAPE_THREADS`] scrapes are encoded so at
    /// once; past them (a flood of scrapes), and where no thread can be started, the scrape is
    /// encoded in the caller. A `HEAD` or another method is answered at once.
    pub fn scrape(&self, method: &Method, headers: &HeaderMap) -> ScrapeFuture {
        if method != Method::GET {
            return ScrapeFuture::done(self.respond(method, headers));
        }
        let Some(slot) = ScrapeSlot::take() else {
            return ScrapeFuture::done(self.respond(method, headers));
        };
        let (sender, receiver) = futures_channel::oneshot::channel();
        let (service, owned_headers) = (self.clone(), headers.clone());
        // What the encoding logs (a collector's error) goes to the request's subscriber, in
        // its span.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("periscope-scrape".to_owned())
            .spawn(move || {
                let response = tracing::dispatcher::with_default(&dispatch, || {
                    span.in_scope(|| service.respond(&Method::GET, &owned_headers))
                });
                // Free before the answer goes: a scraper that asks again at once finds it.
                drop(slot);
                // The scrape may have gone: nobody to tell.
                let _ = sender.send(response);
            });
        match spawned {
            Ok(_) => ScrapeFuture(Some(Scrape::Encoding(receiver))),
            // No thread (a process at its limit): encoded here, as before there were threads.
            Err(_) => ScrapeFuture::done(self.respond(method, headers)),
        }
    }
}

/// The most scrapes encoded on threads of their own at once; more are encoded in the caller.
pub const MAX_SCRAPE_THREADS: usize = 2;

/// One of the [`MAX_SCRAPE_THREADS`] places, given back when dropped.
struct ScrapeSlot;

static SCRAPE_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ScrapeSlot {
    fn take() -> Option<Self> {
        use std::sync::atomic::Ordering;
        SCRAPE_THREADS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < MAX_SCRAPE_THREADS).then_some(running + 1)
            })
            .ok()
            .map(|_| Self)
    }
}

impl Drop for ScrapeSlot {
    fn drop(&mut self) {
        SCRAPE_THREADS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The response future of [`MetricsService`] (see [`MetricsService::scrape`]).
#[must_use = "futures do nothing unless polled"]
pub struct ScrapeFuture(Option<Scrape>);

enum Scrape {
    Done(Response<Full<Bytes>>),
    Encoding(futures_channel::oneshot::Receiver<Response<Full<Bytes>>>),
}

impl ScrapeFuture {
    fn done(response: Response<Full<Bytes>>) -> Self {
        Self(Some(Scrape::Done(response)))
    }
}

impl std::fmt::Debug for ScrapeFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            Some(Scrape::Done(_)) => "done",
            Some(Scrape::Encoding(_)) => "encoding",
            None => "answered",
        };
        f.debug_tuple("ScrapeFuture").field(&state).finish()
    }
}

impl std::future::Future for ScrapeFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = match self.0.take() {
            Some(Scrape::Done(response)) => response,
            Some(Scrape::Encoding(mut receiver)) => {
                match std::pin::Pin::new(&mut receiver).poll(cx) {
                    Poll::Pending => {
                        self.0 = Some(Scrape::Encoding(receiver));
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(response)) => response,
                    // The encoding thread ended without an answer: it panicked (a collector's
                    // bug), which the process's panic hook reported.
                    Poll::Ready(Err(_)) => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding the metrics failed; see the service log\n",
                    ),
                }
            }
            None => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this scrape was answered already\n",
            ),
        };
        // A scrape speaks HTTP only: an error layer outside keeps its answers so, whatever
        // `content-type` a request claims.
        response
            .extensions_mut()
            .insert(periscope_context::grpc::HttpOnly);
        Poll::Ready(Ok(response))
    }
}

impl<B> tower_service::Service<Request<B>> for MetricsService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ScrapeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.scrape(request.method(), request.headers())
    }
}

fn gzip_bytes(data: &[u8]) -> Bytes {
    // Level 1: scrapes are frequent and exposition text compresses well even at the fastest
    // level. Writing into a Vec cannot fail.
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4), Compression::fast());
    match encoder.write_all(data).and_then(|()| encoder.finish()) {
        Ok(compressed) => Bytes::from(compressed),
        Err(_) => Bytes::new(),
    }
}

fn plain(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_follows_q_weights() {
        let om = Some("application/openmetrics-text");
        assert_eq!(Format::from_accept(om), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=0")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=oops")),
            Format::Prometheus
        );
        // Prometheus 3 with its escaping parameter.
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some(",,;;")), Format::Prometheus);
    }

    /// The most specific range decides each format's weight (RFC 9110, section 12.5.1), not
    /// the highest of those that match it.
    #[test]
    fn accept_negotiation_weighs_each_format_by_its_most_specific_range() {
        for (accept, format) in [
            // Plain text refused by name: a wildcard does not bring it back.
            ("text/plain;q=0, */*", Format::OpenMetrics),
            ("text/*;q=0, */*", Format::OpenMetrics),
            // Ranked by name below OpenMetrics, however high the wildcard.
            (
                "application/openmetrics-text;q=0.5, text/plain;q=0.2, */*;q=0.8",
                Format::OpenMetrics,
            ),
            // Only OpenMetrics is acceptable.
            ("application/*", Format::OpenMetrics),
            ("application/*;q=0.5, text/plain;q=0", Format::OpenMetrics),
            // OpenMetrics refused by name, the wildcard notwithstanding.
            ("application/openmetrics-text;q=0, */*", Format::Prometheus),
            ("application/*;q=0, */*", Format::Prometheus),
            // A tie made by wildcards alone: plain text, the default.
            ("*/*", Format::Prometheus),
            ("application/*, text/*", Format::Prometheus),
            // A tie with OpenMetrics named.
            (
                "application/openmetrics-text;q=0.5, */*;q=0.5",
                Format::OpenMetrics,
            ),
            // Neither acceptable: plain text rather than no answer.
            ("application/json", Format::Prometheus),
        ] {
            assert_eq!(Format::from_accept(Some(accept)), format, "{accept}");
        }
    }

    /// Headers with `name` given on one line per item of `lines`.
    fn lines(name: HeaderName, lines: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&name, HeaderValue::from_bytes(line).unwrap());
        }
        headers
    }

    fn gzip(accept_encoding: &[&str]) -> bool {
        let values: Vec<&[u8]> = accept_encoding.iter().map(|v| v.as_bytes()).collect();
        accepts_gzip(&lines(ACCEPT_ENCODING, &values))
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(gzip(&["gzip, deflate, br"]));
        assert!(gzip(&["br;q=1.0, gzip;q=0.8"]));
        assert!(gzip(&["*"]));
        assert!(!gzip(&["gzip;q=0"]));
        assert!(!gzip(&["*, gzip;q=0"]));
        assert!(!gzip(&["identity"]));
        assert!(!gzip(&[]));
        // Weighed against the text as it is, where the client weighs that too.
        assert!(!gzip(&["identity;q=1, gzip;q=0.5"]));
        assert!(!gzip(&["identity, *;q=0.5"]));
        assert!(gzip(&["identity;q=0.5, gzip"]));
        assert!(gzip(&["identity, gzip"]));
        // ... through `*`, which weighs identity where it is not named.
        assert!(!gzip(&["gzip;q=0.5, *"]));
        assert!(!gzip(&["gzip;q=0.1, *;q=0.8"]));
        assert!(gzip(&["gzip, *;q=0.5"]));
        assert!(gzip(&["*;q=0, gzip"]));
    }

    /// Every split of a list over lines negotiates as the list on one line.
    #[test]
    fn lines_of_a_header_are_one_list() {
        let accepts = [
            "text/plain;q=0.5, application/openmetrics-text",
            "application/openmetrics-text;q=0.3, text/plain",
            "*/*;q=0.1, application/openmetrics-text;q=0.1, text/plain;q=0",
            "application/openmetrics-text;q=0, application/openmetrics-text;q=0.2",
            "text/html, , application/openmetrics-text;q=oops",
        ];
        let encodings = [
            "identity, gzip",
            "gzip, gzip;q=0",
            "*;q=0, gzip",
            "br, *",
            "gzip;q=0, *",
        ];
        for list in accepts.into_iter().chain(encodings) {
            let items: Vec<&str> = list.split(',').collect();
            for split in 0..=items.len() {
                let (first, second) = items.split_at(split);
                let (first, second) = (first.join(","), second.join(","));
                let split_lines: &[&[u8]] = &[first.as_bytes(), second.as_bytes()];
                assert_eq!(
                    Format::from_headers(&lines(ACCEPT, split_lines)),
                    Format::from_accept(Some(list)),
                    "{first:?} then {second:?}"
                );
                assert_eq!(
                    accepts_gzip(&lines(ACCEPT_ENCODING, split_lines)),
                    accepts_gzip(&lines(ACCEPT_ENCODING, &[list.as_bytes()])),
                    "{first:?} then {second:?}"
                );
            }
        }
        assert!(gzip(&["identity", "gzip"]));
        assert!(!gzip(&["gzip", "gzip;q=0"]));
        let split: &[&[u8]] = &[
            b"text/plain;q=0.5",
            b"application/openmetrics-text;version=1.0.0",
        ];
        assert_eq!(
            Format::from_headers(&lines(ACCEPT, split)),
            Format::OpenMetrics
        );
    }

    /// A line that is not visible ASCII makes the whole field unreadable, as it would on one
    /// line: the defaults (Prometheus text, no gzip), and no panic.
    #[test]
    fn a_line_that_is_not_ascii_reads_as_no_header() {
        let om: &[&[u8]] = &[b"application/openmetrics-text", b"text/x-\xe9t\xe9"];
        assert_eq!(Format::from_headers(&lines(ACCEPT, om)), Format::Prometheus);
        let gz: &[&[u8]] = &[b"x-caf\xe9", b"gzip"];
        assert!(!accepts_gzip(&lines(ACCEPT_ENCODING, gz)));
        assert_eq!(Format::from_headers(&HeaderMap::new()), Format::Prometheus);
    }

    #[test]
    fn other_methods_are_refused_with_allow() {
        let service = MetricsService::new(MetricsRegistry::new());
        let response = service.respond(&Method::POST, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
    }
}

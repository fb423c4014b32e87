//! `/debug/status`: who this service is, how long it has run, what it is doing now.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

/// Anything that knows how many requests are being served now.
///
/// Implemented for closures (`|| counter.load(Ordering::Relaxed)`) and, with the `metrics`
/// feature, for [`periscope_metrics::MetricsLayer`], so `.in_flight(metrics_layer.clone())`
/// shows the RED layer's in-flight gauge summed over routes.
pub trait InFlightSource: Send + Sync + 'static {
    /// Requests in flight now.
    fn in_flight(&self) -> i64;
}

impl<F> InFlightSource for F
where
    F: Fn() -> i64 + Send + Sync + 'static,
{
    fn in_flight(&self) -> i64 {
        self()
    }
}

#[cfg(feature = "metrics")]
impl InFlightSource for periscope_metrics::MetricsLayer {
    fn in_flight(&self) -> i64 {
        periscope_metrics::MetricsLayer::in_flight(self)
    }
}

/// A section the service adds to `/debug/status`, read on each request.
pub(crate) struct Section {
    read: Box<dyn Fn() -> Value + Send + Sync>,
    /// Set while a request reads it: one read at a time (see [`read_section`]).
    reading: AtomicBool,
}

impl Section {
    pub(crate) fn new(read: impl Fn() -> Value + Send + Sync + 'static) -> Self {
        Self {
            read: Box::new(read),
            reading: AtomicBool::new(false),
        }
    }
}

/// Who the service is, from `service_info(..)`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ServiceInfo {
    pub(crate) service: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) environment: Option<String>,
}

/// The moment the admin service was built: the service's start, for practical purposes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    at: SystemTime,
    instant: Instant,
}

impl Started {
    pub(crate) fn now() -> Self {
        Self {
            at: SystemTime::now(),
            instant: Instant::now(),
        }
    }
}

#[derive(Serialize)]
struct StatusView<'a> {
    #[serde(flatten)]
    info: &'a ServiceInfo,
    started_at: String,
    uptime_s: u64,
    pid: u32,
    in_flight: Option<i64>,
    gpu: Option<&'a GpuSnapshot>,
    /// An object: a section's name to its value, in registration order.
    sections: OrderedSections,
}

/// The masked sections, written in registration order: a `serde_json::Map` (without the
/// `preserve_order` feature) would sort them by name.
struct OrderedSections(Vec<(String, Value)>);

impl Serialize for OrderedSections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// The GPU section's type; without the `gpu` feature the key is always `null`.
#[cfg(feature = "gpu")]
pub(crate) type GpuSnapshot = periscope_gpu::GpuSnapshot;
/// The GPU section's type; without the `gpu` feature the key is always `null`.
#[cfg(not(feature = "gpu"))]
pub(crate) type GpuSnapshot = ();

/// What `/debug/status` shows, gathered now.
pub(crate) struct StatusParts<'a> {
    pub(crate) info: &'a ServiceInfo,
    pub(crate) started: Started,
    pub(crate) in_flight: Option<&'a dyn InFlightSource>,
    pub(crate) gpu: Option<GpuSnapshot>,
    pub(crate) sections: &'a [(String, Section)],
    /// Masks secrets in the sections as in `/debug/config` (feature `log`): given each section
    /// as an object of one entry, so a section named like a secret (`api_token`) is masked
    /// whole and a name holding one is masked too.
    pub(crate) mask: &'a dyn Fn(&mut Value),
}

impl StatusParts<'_> {
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Each section masked on its own, as a one-entry object: one named like a secret
        // (`api_token`) is masked whole, and one named by a URL keeps its place under the
        // masked name (looked up by its own name, it was lost).
        let mut sections: Vec<(String, Value)> = Vec::with_capacity(self.sections.len());
        for (name, section) in self.sections {
            let mut one = Value::Object(
                std::iter::once((name.clone(), read_section(name, section))).collect(),
            );
            (self.mask)(&mut one);
            let entries = match one {
                Value::Object(map) => map.into_iter().collect(),
                other => vec![(name.clone(), other)],
            };
            for (masked_name, value) in entries {
                // Two names that mask alike both stay, the later under `<name>#2`, ... as in
                // `/debug/config`.
                let mut unique = masked_name.clone();
                let mut n = 2;
                while sections.iter().any(|(taken, _)| *taken == unique) {
                    unique = format!("{masked_name}#{n}");
                    n += 1;
                }
                sections.push((unique, value));
            }
        }
        serde_json::to_vec(&StatusView {
            info: self.info,
            started_at: rfc3339_millis(self.started.at),
            uptime_s: self.started.instant.elapsed().as_secs(),
            pid: std::process::id(),
            in_flight: self.in_flight.and_then(read_in_flight),
            gpu: self.gpu.as_ref(),
            sections: OrderedSections(sections),
        })
    }
}

/// A panicking section shows an error instead of failing the whole answer. A section is read
/// by one request at a time: a read that blocks (on a lock a long job holds) keeps the thread
/// it runs on (its own, see [`on_own_thread`]) until it returns, and an operator's refreshes
/// must not each start one more blocked thread; they show an error instead.
fn read_section(name: &str, section: &Section) -> Value {
    if section.reading.swap(true, Ordering::Acquire) {
        return serde_json::json!({
            "error": "an earlier request is still reading this section; its read may be blocked"
        });
    }
    // Caught as the error layer catches a handler's panic: this line reports it, not also
    // the process's panic hook (`Observability::init`'s, or the default one on stderr).
    periscope_context::panic::install_hook();
    let value = match periscope_context::panic::catch(|| (section.read)()) {
        Ok(value) => value,
        Err(caught) => {
            tracing::error!(
                section = name,
                panic.message = caught.message.as_str(),
                panic.location = caught.location.as_deref(),
                "a /debug/status section panicked"
            );
            serde_json::json!({ "error": "this section panicked; see the service log" })
        }
    };
    section.reading.store(false, Ordering::Release);
    value
}

/// Runs `read` on a thread of its own and resolves to what it returns, without a runtime
/// (this crate serves any executor); `None` if that thread died first. When no thread can be
/// started, `read` runs here.
pub(crate) fn on_own_thread<T: Send + 'static>(
    read: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> + Send {
    let (sender, receiver) = futures_channel::oneshot::channel();
    // Shared, so that `read` can still run here when no thread starts.
    let job = Arc::new(Mutex::new(Some(read)));
    let take = |job: &Mutex<Option<_>>| job.lock().unwrap_or_else(PoisonError::into_inner).take();
    let spawned = std::thread::Builder::new()
        .name("periscope-status".into())
        .spawn({
            let job = Arc::clone(&job);
            move || {
                if let Some(read) = take(&job) {
                    // The request may have gone: nobody to tell.
                    let _ = sender.send(read());
                }
            }
        });
    let inline = match spawned {
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%error, "no thread for /debug/status; reading its sections on the request's task");
            take(&job)
        }
    };
    async move {
        match inline {
            Some(read) => Some(read()),
            None => receiver.await.ok(),
        }
    }
}

/// The in-flight count, or `None` (shown as `null`) when the source panics: like a section,
/// a bug in it must not take the whole answer, and the connection, down with it.
/// Caught as a section's panic is: reported by this line alone, with its message.
fn read_in_flight(source: &dyn InFlightSource) -> Option<i64> {
    periscope_context::panic::install_hook();
    match periscope_context::panic::catch(|| source.in_flight()) {
        Ok(count) => Some(count),
        Err(caught) => {
            tracing::error!(
                panic.message = caught.message.as_str(),
                panic.location = caught.location.as_deref(),
                "the /debug/status in-flight source panicked"
            );
            None
        }
    }
}

/// RFC 3339 with milliseconds. humantime panics for a time before 1970 and fails after 9999: a
/// clock set that wrong is clamped to the range rather than failing the endpoint.
fn rfc3339_millis(time: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(time.clamp(UNIX_EPOCH, last)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_outside_1970_to_9999_is_clamped() {
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
        let after = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_millis(after), "9999-12-31T23:59:59.999Z");
        let now = humantime::parse_rfc3339("2026-11-23T17:49:36.123Z").unwrap();
        assert_eq!(rfc3339_millis(now), "2026-11-23T17:49:36.123Z");
    }

    #[test]
    fn sections_are_read_masked_and_survive_a_panic() {
        let info = ServiceInfo {
            service: Some("api".into()),
            version: None,
            environment: Some("test".into()),
        };
        let sections: Vec<(String, Section)> = vec![
            (
                "queue".into(),
                Section::new(|| serde_json::json!({"depth": 3})),
            ),
            ("broken".into(), Section::new(|| panic!("section bug"))),
        ];
        let in_flight = || 7_i64;
        let mask = |sections: &mut Value| {
            if let Some(depth) = sections.pointer_mut("/queue/depth") {
                *depth = Value::from("masked");
            }
        };
        let parts = StatusParts {
            info: &info,
            started: Started::now(),
            in_flight: Some(&in_flight),
            gpu: None,
            sections: &sections,
            mask: &mask,
        };
        let json: Value = serde_json::from_slice(&parts.to_json().unwrap()).unwrap();
        assert_eq!(json["service"], "api");
        assert_eq!(json["version"], Value::Null);
        assert_eq!(json["in_flight"], 7);
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["sections"]["queue"]["depth"], "masked");
        assert!(json["sections"]["broken"]["error"].is_string());
        assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
    }
}

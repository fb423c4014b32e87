//! Background jobs: the request's context travels in the job payload, and the worker continues
//! the same trace and request id under a span of its own.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use periscope_context::panic::{self, CaughtPanic};
use periscope_context::{
    Carrier, ExtractOptions, Extracted, InvalidId, RequestContext, RequestIdOrigin, TenantKey,
    TraceOrigin, WithContext, extract,
};
use pin_project::pin_project;
use tracing::Span;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};

use crate::binding::{ParentKind, bind, early_id, handing_on};
use crate::fields::{JOB_FIELDS, record_failure};
use crate::propagation::Propagators;
use crate::rejected::warn_rejected;
use crate::sampler::Sampler;

/// The tracing target of job spans.
pub const JOB_TARGET: &str = "periscope_trace::job";

/// The longest `job_id` a job span records, in bytes: a longer one is cut on a character
/// boundary and ends with `…` (counted in the bound).
pub const MAX_JOB_ID_LEN: usize = 256;

/// The carrier to put in a job's payload when enqueuing it from a request (or another job):
/// the current context, naming the current span as the job's parent (with OpenTelemetry, a
/// span of the service's own that it is enqueued in, when that span belongs to the request's
/// trace; else the request's or job's span). `None` outside a request or job.
///
/// It holds what the process's formats send ([`Propagators::global`], `OTEL_PROPAGATORS`), as
/// an outgoing request does: no `baggage` with `tracecontext` alone, and with `none` only the
/// request id and tenant fields. [`JobSpan::from_carrier`] reads by the same formats.
///
/// ```
/// use periscope_context::RequestContext;
///
/// let ctx = RequestContext::new_root();
/// let carrier = ctx.in_scope(periscope_trace::job::carrier).unwrap();
/// assert_eq!(carrier.to_context().request_id, ctx.request_id);
/// assert!(periscope_trace::job::carrier().is_none());
/// ```
pub fn carrier() -> Option<Carrier> {
    RequestContext::current().map(|ctx| {
        let mut carrier = Carrier::from_context(&handing_on(&ctx));
        Propagators::global().strip(&mut carrier);
        carrier
    })
}

/// [`carrier`] inside a request or job; outside any (a scheduled task, startup code), a
/// carrier holding only a new request id. Every attempt of such a job keeps that request id
/// and starts a trace of its own, with its job span as the root: a carrier made from a new
/// context instead (`RequestContext::new_root()`) would name as the parent a span that no one
/// ever exports.
///
/// ```
/// use periscope_trace::job::{self, JobSpan};
///
/// let carrier = job::carrier_or_new();
/// let first = JobSpan::from_carrier("nightly_report", &carrier);
/// let retry = JobSpan::from_carrier("nightly_report", &carrier);
/// assert_eq!(first.context().request_id, retry.context().request_id);
/// assert_eq!(first.context().parent_span_id, None);
/// ```
pub fn carrier_or_new() -> Carrier {
    carrier().unwrap_or_else(|| {
        let id = periscope_context::RequestId::generate();
        Carrier::from(std::collections::BTreeMap::from([(
            "x-request-id".to_owned(),
            id.as_str().to_owned(),
        )]))
    })
}

/// A worker's span for one job, continuing the trace and request id of the request that
/// enqueued it. Its span records `request_id`, `trace_id`, `span_id`, the tenant fields,
/// `job_name` and (when given) `job_id` (both lifted to the top of log lines, so each line of a
/// job says which job it is); with the `otel` feature it is exported as a consumer
/// span whose parent is the enqueuing request's span.
///
/// ```
/// use periscope_context::{Carrier, RequestContext};
/// use periscope_trace::job::JobSpan;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // In the handler: put the carrier in the job's payload.
/// let request_ctx = RequestContext::new_root();
/// let payload = serde_json::to_string(&Carrier::from_context(&request_ctx)).unwrap();
///
/// // In the worker: continue the request's trace.
/// let carrier: Carrier = serde_json::from_str(&payload).unwrap();
/// let job = JobSpan::from_carrier("resize_image", &carrier).with_job_id("job_789");
/// let (trace_id, request_id) = job
///     .run(async {
///         let ctx = RequestContext::current().unwrap();
///         (ctx.trace_id, ctx.request_id.clone())
///     })
///     .await;
/// assert_eq!(trace_id, request_ctx.trace_id);
/// assert_eq!(request_id, request_ctx.request_id);
/// # });
/// ```
#[derive(Debug)]
pub struct JobSpan {
    span: Span,
    context: RequestContext,
    /// What the carrier held that could not be used, told when the job runs (or the span is
    /// dropped unrun): by then `with_job_id` has recorded the id its warnings carry.
    rejected: Option<Box<Rejected>>,
}

/// The carrier's entries a job could not use.
#[derive(Debug)]
struct Rejected {
    request_id: RequestIdOrigin,
    trace: TraceOrigin,
    tenant: Vec<(TenantKey, InvalidId)>,
    /// The keys whose values were not strings, comma-separated; empty when none.
    ignored: String,
}

impl Drop for JobSpan {
    fn drop(&mut self) {
        self.tell_rejected();
    }
}

impl JobSpan {
    /// Continues the context in `carrier` (a new trace and request id when it holds none), reading
    /// what the process's formats propagate ([`Propagators::global`]: with `OTEL_PROPAGATORS=none`
    /// a job starts a trace of its own under the carried request id, as a request does). An entry
    /// that cannot be used (an invalid request id, `traceparent` or tenant field, or one whose
    /// value was not a string: a bug or a tampered payload upstream) is logged once at warn, inside
    /// the job's span.
    pub fn from_carrier(name: &str, carrier: &Carrier) -> Self {
        Self::from_carrier_with(name, carrier, &ExtractOptions::default())
    }

    /// Like [`JobSpan::from_carrier`], reading `options.tenant_keys` (for tenant fields beyond
    /// `org_id` and `project_id`).
    ///
    /// Sampling follows the process's sampler ([`Sampler::global`]) where no OpenTelemetry
    /// sampler decides, but with `options.sample_new_traces` `false` a trace started here is
    /// not sampled (a continued one is still the sampler's to decide).
    pub fn from_carrier_with(name: &str, carrier: &Carrier, options: &ExtractOptions) -> Self {
        let propagators = Propagators::global();
        let extracted = if propagators.all() {
            extract(carrier, options)
        } else {
            let mut read = carrier.clone();
            propagators.strip(&mut read);
            extract(&read, options)
        };
        let continued = extracted.trace == TraceOrigin::Continued;
        let sampler = (options.sample_new_traces || continued).then(Sampler::global);
        let mut job = Self::from_extracted(name, extracted, sampler);
        let ignored = carrier.ignored_keys();
        if !ignored.is_empty() {
            // Left out when the payload was read (not strings): the job runs as if they were
            // absent, and says which they were.
            let rejected = job.rejected.get_or_insert_with(|| {
                Box::new(Rejected {
                    request_id: RequestIdOrigin::Kept,
                    trace: TraceOrigin::Continued,
                    tenant: Vec::new(),
                    ignored: String::new(),
                })
            });
            rejected.ignored = ignored.join(",");
        }
        job
    }

    /// Logs, once, at warn inside the job's span, what the carrier held that could not be used.
    fn tell_rejected(&mut self) {
        let Some(rejected) = self.rejected.take() else {
            return;
        };
        let Rejected {
            request_id,
            trace,
            tenant,
            ignored,
        } = *rejected;
        warn_rejected!(
            JOB_TARGET,
            &self.span,
            &self.context,
            &request_id,
            &tenant,
            Some(&trace)
        );
        if !ignored.is_empty() {
            tracing::warn!(
                target: JOB_TARGET,
                parent: &self.span,
                request_id = self.context.request_id.as_str(),
                trace_id = self.context.trace_id.to_hex().as_str(),
                keys = ignored.as_str(),
                "ignored carrier entries whose values are not strings"
            );
        }
    }

    fn from_extracted(name: &str, extracted: Extracted, sampler: Option<Sampler>) -> Self {
        let Extracted {
            mut context,
            request_id,
            trace,
            rejected_tenant,
            ..
        } = extracted;
        // A root in this process: its parent is the carrier's, set for the export by `bind`.
        // Under the span that happened to be current (a handler that enqueues it, a job that
        // starts another) its lines would take that span's fields, and that span would not
        // close, nor be exported, before this job ends.
        let span = tracing::info_span!(
            target: JOB_TARGET,
            parent: None,
            "job",
            otel.name = name,
            otel.kind = "consumer",
            otel.status_code = Empty,
            error.type = Empty,
            job_name = name,
            job_id = Empty,
            request_id = %context.request_id,
            trace_id = early_id(context.trace_id),
            span_id = early_id(context.span_id),
            org_id = Empty,
            project_id = Empty,
            team_id = Empty,
            user_id = Empty,
            tenant_id = Empty,
            tenant = Empty,
        );
        bind(&span, &mut context, ParentKind::Remote, None, sampler);
        let rejected = (!matches!(
            request_id,
            RequestIdOrigin::Kept | RequestIdOrigin::Generated
        ) || matches!(trace, TraceOrigin::Restarted(_))
            || !rejected_tenant.is_empty())
        .then(|| {
            Box::new(Rejected {
                request_id,
                trace,
                tenant: rejected_tenant,
                ignored: String::new(),
            })
        });
        Self {
            span,
            context,
            rejected,
        }
    }

    /// Records the job's id as `job_id` (lifted to the top of log lines by the log layer), cut
    /// at [`MAX_JOB_ID_LEN`] bytes as the server span's path is: an id is the application's,
    /// often a queue message's, and the span is exported with it.
    pub fn with_job_id(self, job_id: &str) -> Self {
        let job_id = periscope_context::text::cut(job_id, MAX_JOB_ID_LEN);
        self.span.record("job_id", &*job_id);
        self
    }

    /// The job's context: the request's trace and request id, this span's id.
    pub fn context(&self) -> &RequestContext {
        &self.context
    }

    /// The tracing span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `job` inside the span, with the job's context [current](RequestContext::current).
    /// An error-level line inside it marks the exported span as failed.
    ///
    /// A panic while the job is polled is logged once, at `error` inside the span (`job
    /// panicked`, with `panic.message`, `panic.location`, and `panic.backtrace` when
    /// `RUST_BACKTRACE` is set; the line carries the job's ids and, with OpenTelemetry, marks
    /// the exported span `ERROR`), and then goes on unwinding with its own payload, so the
    /// worker's retry logic sees it (a task's `JoinError`, `catch_unwind`). As with
    /// periscope-error's layer, the first call installs a panic hook (once per process) that
    /// records the location of the panics it catches and reports them by this line instead
    /// of the default hook's text on stderr; other panics reach the hook installed before.
    /// An `Err` the job returns is its value: see [`run_fallible`](Self::run_fallible) to log
    /// it.
    ///
    /// ```
    /// use periscope_trace::job::{self, JobSpan};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let carrier = job::carrier_or_new();
    /// let job = JobSpan::from_carrier("resize_image", &carrier).with_job_id("job_7");
    /// // Logged as `job panicked` with the job's ids; the task still ends with the panic.
    /// let joined = tokio::spawn(job.run(async { panic!("no such image") })).await;
    /// assert!(joined.unwrap_err().is_panic());
    /// # });
    /// ```
    pub fn run<F: Future>(mut self, job: F) -> JobFuture<F> {
        panic::install_hook();
        self.tell_rejected();
        let span = std::mem::replace(&mut self.span, Span::none());
        JobFuture {
            inner: self.context.clone().scope(job).instrument(span),
            report: None,
            ended: false,
        }
    }

    /// [`run`](Self::run) for a job that returns a `Result`: an `Err` is also logged once, at
    /// `error` inside the span (`job failed`, with the error and its `source()` chain under
    /// `error`, as the log layer writes an `&dyn Error`), which marks the exported span
    /// `ERROR`. The result is returned unchanged, for the worker to retry or give up.
    ///
    /// A boxed error (`Box<dyn Error + Send + Sync>`) or anyhow's does not implement `Error`
    /// itself: run such a job through [`run_fallible_dyn`](Self::run_fallible_dyn).
    ///
    /// ```
    /// use periscope_trace::job::{self, JobSpan};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let carrier = job::carrier_or_new();
    /// let job = JobSpan::from_carrier("send_receipt", &carrier).with_job_id("job_8");
    /// // Logged as `job failed`, with `error: {"message": "mail server refused", "chain": []}`.
    /// let sent: Result<(), std::io::Error> = job
    ///     .run_fallible(async { Err(std::io::Error::other("mail server refused")) })
    ///     .await;
    /// assert!(sent.is_err());
    /// # });
    /// ```
    pub fn run_fallible<F, T, E>(self, job: F) -> JobFuture<F>
    where
        F: Future<Output = Result<T, E>>,
        E: Error + 'static,
    {
        let mut future = self.run(job);
        future.report = Some(report_err::<T, E>);
        future
    }

    /// [`run_fallible`](Self::run_fallible) for a job whose error is a pointer to a
    /// `dyn Error + Send + Sync`: `Box<dyn Error + Send + Sync>`, anyhow's `Error`, eyre's
    /// `Report` (none of which implements `Error` itself). The `Err` is logged the same way,
    /// with the chain of the error it points to, and returned unchanged.
    ///
    /// ```
    /// use periscope_trace::job::{self, JobSpan};
    ///
    /// type BoxError = Box<dyn std::error::Error + Send + Sync>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let carrier = job::carrier_or_new();
    /// let job = JobSpan::from_carrier("send_receipt", &carrier).with_job_id("job_9");
    /// // Logged as `job failed`, with `error: {"message": "mail server refused", "chain": []}`.
    /// let sent: Result<(), BoxError> = job
    ///     .run_fallible_dyn(async { Err("mail server refused".into()) })
    ///     .await;
    /// assert!(sent.is_err());
    /// # });
    /// ```
    pub fn run_fallible_dyn<F, T, E>(self, job: F) -> JobFuture<F>
    where
        F: Future<Output = Result<T, E>>,
        E: Deref<Target = dyn Error + Send + Sync + 'static>,
    {
        let mut future = self.run(job);
        future.report = Some(report_dyn_err::<T, E>);
        future
    }
}

/// A job run by [`JobSpan::run`], [`JobSpan::run_fallible`] or [`JobSpan::run_fallible_dyn`]:
/// `F` inside the job's span, with the job's context current, logging a panic (and, for the
/// fallible forms, an `Err`) once
/// inside the span. `Send` when `F` is; a job that neither panics nor fails pays a
/// `catch_unwind` per poll.
///
/// Its span is marked `otel.status_code` `ERROR` when it fails, with `error.type` `panic` for a
/// panic, the error's type (`std::io::error::Error`) for an `Err` of `run_fallible`, `_OTHER`
/// for one of `run_fallible_dyn`. Dropped before it finished (a timeout around it, the worker
/// stopping), the job is told as cancelled: a warning with its ids, and its span marked
/// `otel.status_code` `ERROR` with `error.type` `cancelled`.
#[pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct JobFuture<F: Future> {
    #[pin]
    inner: Instrumented<WithContext<F>>,
    /// Logs an `Err` output (`run_fallible`, `run_fallible_dyn`).
    report: Option<fn(&F::Output)>,
    /// The job returned its output, or panicked (logged then): dropped without either, it was
    /// cancelled.
    ended: bool,
}

#[pin_project::pinned_drop]
impl<F: Future> PinnedDrop for JobFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if !*this.ended {
            inside(this.inner, log_cancelled);
        }
    }
}

impl<F: Future> JobFuture<F> {
    /// The job's span.
    pub fn span(&self) -> &Span {
        self.inner.span()
    }
}

impl<F: Future> fmt::Debug for JobFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobFuture")
            .field("span", self.inner.span())
            .field("logs_err", &self.report.is_some())
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for JobFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        // Polled again after its output, or after its panic: the caller's mistake, not the
        // job's failure, which was told already (or never happened).
        assert!(!*this.ended, "`JobFuture` polled after completion");
        let polled = match panic::catch(|| this.inner.as_mut().poll(cx)) {
            Ok(polled) => polled,
            Err(caught) => {
                *this.ended = true;
                inside(this.inner, || log_panic(&caught));
                caught.resume()
            }
        };
        if polled.is_ready() {
            *this.ended = true;
        }
        if let (Poll::Ready(output), Some(report)) = (&polled, *this.report) {
            inside(this.inner, || report(output));
        }
        polled
    }
}

/// Runs `f` as a line of the job would run: inside its span, with its context current.
#[cold]
fn inside(inner: Pin<&mut Instrumented<WithContext<impl Future>>>, f: impl FnOnce()) {
    let span = inner.span().clone();
    inner.inner_pin_mut().in_scope(|_| span.in_scope(f));
}

fn log_panic(caught: &CaughtPanic) {
    record_failure(&Span::current(), &JOB_FIELDS, "panic");
    tracing::error!(
        target: JOB_TARGET,
        {
            panic.message = caught.message.as_str(),
            panic.location = caught.location.as_deref(),
            panic.backtrace = caught.backtrace.as_deref(),
        },
        "job panicked"
    );
}

#[cold]
fn log_cancelled() {
    record_failure(&Span::current(), &JOB_FIELDS, "cancelled");
    tracing::warn!(
        target: JOB_TARGET,
        "job dropped before it finished: cancelled (a timeout around it, or the worker stopping)"
    );
}

fn report_err<T, E: Error + 'static>(output: &Result<T, E>) {
    if let Err(error) = output {
        // The error's type, as the semantic conventions have `error.type` (bounded: one per
        // type the service's jobs return).
        record_failure(&Span::current(), &JOB_FIELDS, std::any::type_name::<E>());
        log_job_error(error);
    }
}

fn report_dyn_err<T, E: Deref<Target = dyn Error + Send + Sync + 'static>>(output: &Result<T, E>) {
    if let Err(error) = output {
        // A boxed error's type is not known here.
        record_failure(&Span::current(), &JOB_FIELDS, "_OTHER");
        log_job_error(&**error);
    }
}

fn log_job_error(error: &(dyn Error + 'static)) {
    tracing::error!(target: JOB_TARGET, error, "job failed");
}

//! The in-process job queue: a job carries the request's context as a `Carrier`, and the
//! consumer runs it under a `JobSpan` that continues the same request id and trace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use periscope::context::{Carrier, RequestContext};
use periscope::error::{HttpError, codes};
use periscope::trace::job::JobSpan;
use tokio::sync::mpsc;

/// One unit of background work.
pub struct Job {
    pub id: String,
    pub text: String,
    /// The enqueuing request's context: what the job's log lines carry.
    pub trace: Carrier,
}

/// The producing side, shared by the api's handlers. The consumer stops once every clone is
/// dropped and the queue is empty.
#[derive(Clone)]
pub struct JobQueue {
    sender: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

/// The consuming side.
pub struct Consumer {
    receiver: mpsc::Receiver<Job>,
    counts: Arc<Counts>,
}

/// Jobs enqueued and done, for `/debug/status` (without holding the queue open).
#[derive(Default)]
pub struct Counts {
    last_id: AtomicU64,
    enqueued: AtomicU64,
    done: AtomicU64,
}

/// A bounded queue: when it is full, new jobs are refused rather than piling up in memory.
pub fn queue(capacity: usize) -> (JobQueue, Consumer) {
    let (sender, receiver) = mpsc::channel(capacity);
    let counts = Arc::new(Counts::default());
    let queue = JobQueue {
        sender,
        counts: counts.clone(),
    };
    (queue, Consumer { receiver, counts })
}

impl JobQueue {
    /// Takes a place in the queue for a job to come, or refuses at once when the queue is
    /// full. Taken before the work the job follows: a client told to retry (503, retryable)
    /// must not have that work done twice. So the tasks in progress hold places too, and the
    /// queue's capacity bounds them with the jobs waiting.
    pub fn reserve(&self) -> Result<QueueSlot, HttpError> {
        let permit = self.sender.clone().try_reserve_owned().map_err(|_| {
            HttpError::new(
                codes::SERVICE_UNAVAILABLE,
                "Too many tasks queued or in progress",
            )
            .with_retry_after(Duration::from_secs(1))
        })?;
        Ok(QueueSlot {
            permit,
            counts: self.counts.clone(),
        })
    }

    /// What `/debug/status` shows of the queue.
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }
}

impl Counts {
    /// The `jobs` section of `/debug/status`.
    pub fn status(&self) -> serde_json::Value {
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        serde_json::json!({"enqueued": enqueued, "done": done, "pending": enqueued.saturating_sub(done)})
    }
}

/// A place in the queue, released if the job is never enqueued.
pub struct QueueSlot {
    permit: mpsc::OwnedPermit<Job>,
    counts: Arc<Counts>,
}

impl QueueSlot {
    /// Enqueues a job carrying the current request's context; returns its id.
    pub fn enqueue(self, text: String) -> String {
        let id = format!(
            "job_{}",
            self.counts.last_id.fetch_add(1, Ordering::Relaxed) + 1
        );
        // Inside a request there is always a context; a new trace otherwise.
        let trace = periscope::trace::job::carrier()
            .unwrap_or_else(|| Carrier::from_context(&RequestContext::new_root()));
        self.permit.send(Job {
            id: id.clone(),
            text,
            trace,
        });
        self.counts.enqueued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job_id = id.as_str(), "job enqueued");
        id
    }
}

impl Consumer {
    /// Runs jobs one by one until every `JobQueue` is dropped and the queue is empty.
    pub async fn run(mut self) {
        while let Some(job) = self.receiver.recv().await {
            let span = JobSpan::from_carrier("index_text", &job.trace).with_job_id(&job.id);
            span.run(index_text(job)).await;
            self.counts.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The job itself: every line logged here carries the request's `request_id` and `trace_id`,
/// and the `job_id`.
async fn index_text(job: Job) {
    tracing::info!("job started");
    let words = job.text.split_whitespace().count();
    tokio::time::sleep(Duration::from_millis(10)).await; // stands for real work
    tracing::info!(words, "job done");
}

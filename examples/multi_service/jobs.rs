//! The in-process job queue: a job carries the request's context as a `Carrier`, and the
//! consumer runs it under a `JobSpan` that continues the same request id and trace.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use periscope::context::{Carrier, ExtractOptions};
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
    /// How a job reads its carrier: the service's tenant keys ([`Consumer::reading_with`]).
    options: ExtractOptions,
}

/// Jobs enqueued, done and failed, for `/debug/status` (without holding the queue open).
#[derive(Default)]
pub struct Counts {
    last_id: AtomicU64,
    enqueued: AtomicU64,
    done: AtomicU64,
    /// Of those done, the ones that panicked.
    failed: AtomicU64,
}

/// A bounded queue: when it is full, new jobs are refused rather than piling up in memory.
pub fn queue(capacity: usize) -> (JobQueue, Consumer) {
    let (sender, receiver) = mpsc::channel(capacity);
    let counts = Arc::new(Counts::default());
    let queue = JobQueue {
        sender,
        counts: counts.clone(),
    };
    let options = ExtractOptions::default();
    (
        queue,
        Consumer {
            receiver,
            counts,
            options,
        },
    )
}

impl JobQueue {
    /// Takes a place in the queue for a job to come, or refuses at once when the queue is
    /// full. Taken before the work the job follows: a client told to retry (503, retryable)
    /// must not have that work done twice. So the tasks in progress hold places too, and the
    /// queue's capacity bounds them with the jobs waiting.
    pub fn reserve(&self) -> Result<QueueSlot, HttpError> {
        let permit = self
            .sender
            .clone()
            .try_reserve_owned()
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => HttpError::new(
                    codes::SERVICE_UNAVAILABLE,
                    "Too many tasks queued or in progress",
                )
                .with_retry_after(Duration::from_secs(1)),
                // The consumer is gone (the service is stopping): a retry here cannot help.
                mpsc::error::TrySendError::Closed(_) => {
                    HttpError::new(codes::INTERNAL_ERROR, "The job queue is closed")
                }
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
        let failed = self.failed.load(Ordering::Relaxed);
        serde_json::json!({"enqueued": enqueued, "done": done, "failed": failed, "pending": self.pending()})
    }

    /// Jobs enqueued and not done yet.
    pub fn pending(&self) -> u64 {
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        enqueued.saturating_sub(self.done.load(Ordering::Relaxed))
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
        // Inside a request, its context; outside any, a request id of the job's own (each
        // attempt then starts a trace whose root is the job's span).
        let trace = periscope::trace::job::carrier_or_new();
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
    /// Reads each job's carrier with `options`: `Observability::job_options()`, so the tenant
    /// fields the service declares (`tenant_key`) reach the job's lines and the calls it makes.
    pub fn reading_with(mut self, options: ExtractOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs jobs one by one until every `JobQueue` is dropped and the queue is empty, or until
    /// `stop` completes (the drain's deadline at shutdown): then the running job is cancelled
    /// and every job left is named in a warning, while the log still takes lines.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        self.run_with(index_text, stop).await;
    }

    /// [`run`](Self::run), with `work` as the job; returns the ids of the jobs left unrun.
    /// Each job runs as a task of its own, so one that panics (a bug) fails alone and the
    /// queue goes on: a panic in the consumer itself would stop every later job for good.
    /// `JobSpan::run` logs the panic (`job panicked`, with the job's ids) before it ends the
    /// task, and a job cancelled at the deadline (`job dropped before it finished`).
    async fn run_with<F, W>(mut self, work: W, stop: impl Future<Output = ()>) -> Vec<String>
    where
        W: Fn(Job) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut stop = std::pin::pin!(stop);
        loop {
            let job = tokio::select! {
                biased;
                () = &mut stop => break,
                job = self.receiver.recv() => match job {
                    Some(job) => job,
                    None => return Vec::new(),
                },
            };
            let span = JobSpan::from_carrier_with("index_text", &job.trace, &self.options)
                .with_job_id(&job.id);
            let mut task = tokio::spawn(span.run(work(job)));
            let outcome = tokio::select! {
                outcome = &mut task => outcome,
                () = &mut stop => {
                    // Cancelled now, while its lines still reach the log.
                    task.abort();
                    let _ = task.await;
                    break;
                }
            };
            if outcome.is_err() {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
            self.counts.done.fetch_add(1, Ordering::Relaxed);
        }
        // Past the deadline: no job is taken any more, and each one left is named (with the
        // request it came from), not lost without a word.
        self.receiver.close();
        let mut left = Vec::new();
        while let Ok(job) = self.receiver.try_recv() {
            let request_id = job.trace.as_map().get("x-request-id").cloned();
            tracing::warn!(
                job_id = job.id.as_str(),
                request_id,
                "job not run: the service stopped before it"
            );
            left.push(job.id);
        }
        left
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the drain's deadline the consumer stops: the running job is cancelled (not left
    /// running, unlogged, once the service has stopped) and every job left is named.
    #[tokio::test(start_paused = true)]
    async fn a_drain_past_its_deadline_cancels_the_running_job_and_names_the_jobs_left() {
        let (queue, consumer) = queue(8);
        for text in ["slow", "a", "b", "c"] {
            queue
                .reserve()
                .unwrap_or_else(|_| panic!("room"))
                .enqueue(text.to_owned());
        }
        // The api still holds the queue: only the deadline ends the drain.
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct OnDrop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let seen = cancelled.clone();
        let started = tokio::time::Instant::now();
        let left = consumer
            .run_with(
                move |_| {
                    let dropped = OnDrop(seen.clone());
                    async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(dropped);
                    }
                },
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(
            cancelled.load(Ordering::SeqCst),
            "the running job was cancelled"
        );
        assert_eq!(left, ["job_2", "job_3", "job_4"]);
        drop(queue);
    }

    /// A job that panics is logged as failed and the queue goes on with the next one.
    #[tokio::test]
    async fn a_job_that_panics_fails_alone() {
        let (queue, consumer) = queue(4);
        let counts = queue.counts();
        for text in ["panic here", "fine"] {
            queue
                .reserve()
                .unwrap_or_else(|_| panic!("room"))
                .enqueue(text.to_owned());
        }
        drop(queue);
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ran.clone();
        tokio::time::timeout(
            Duration::from_secs(5),
            consumer.run_with(
                move |job| {
                    let seen = seen.clone();
                    async move {
                        assert!(!job.text.starts_with("panic"), "a bug in the job");
                        seen.lock().unwrap().push(job.text);
                    }
                },
                std::future::pending(),
            ),
        )
        .await
        .expect("the consumer ends once the queue is dropped and empty");
        assert_eq!(*ran.lock().unwrap(), ["fine"]);
        let status = counts.status();
        assert_eq!(
            (
                status["done"].as_u64(),
                status["failed"].as_u64(),
                status["pending"].as_u64()
            ),
            (Some(2), Some(1), Some(0))
        );
    }
}

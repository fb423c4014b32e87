//! Ready-made checks for what services commonly depend on, with no heavy dependency:
//! an HTTP endpoint answering 2xx, a TCP port accepting, a file or directory writable, and free
//! disk space above a threshold.
//!
//! ```
//! use periscope_health::{Health, HealthCheck, checks};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::builder()
//!     .check_with("postgres", checks::tcp("127.0.0.1:5432"))
//!     .check_with("embedder", checks::http_get("http://127.0.0.1:9000/health")?)
//!     .add_check(HealthCheck::new("scratch", checks::writable("/tmp")).non_critical())
//!     .add_check(HealthCheck::new("disk", checks::disk_space("/", 1 << 30)).non_critical())
//!     .build()?;
//! # let _ = health;
//! # Ok(())
//! # }
//! ```

mod fs;
mod http;
mod tcp;

pub use self::fs::{DiskSpaceCheck, WritableCheck, disk_space, writable};
pub use self::http::{HttpCheck, InvalidUrl, http_get};
pub use self::tcp::{TcpCheck, tcp};

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::check::CheckError;

/// Runs a check's blocking file-system work off the async threads, one call at a time.
///
/// A blocking call stuck in the kernel (a hung NFS mount) outlives the check's timeout: aborting
/// the task cannot stop its thread. Once the run that started a call has given up on it (timed
/// out or was cancelled) while the call is still blocked, later runs fail at once instead of piling
/// up blocked threads until the runtime's blocking pool is exhausted. A run that merely overlaps
/// a call in progress (the check cloned into two [`Health`](crate::Health)es, or called
/// concurrently) waits for that call to return, then makes its own; its own timeout bounds the
/// wait.
#[derive(Clone, Debug, Default)]
struct Blocking {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    /// Woken when the call in progress returns, or its run gives up on it.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Slot {
    busy: Option<Busy>,
    /// Tells calls apart, so a run only marks its own call abandoned.
    next_call: u64,
}

/// The blocking call in progress.
#[derive(Debug)]
struct Busy {
    call: u64,
    /// The run that started the call gave up on it: the call is stuck past that run's timeout.
    abandoned: bool,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frees the [`Blocking`] slot when the blocking call returns (or is never run).
struct Release(Arc<Shared>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.slot().busy = None;
        self.0.changed.notify_waiters();
    }
}

/// Marks the call abandoned when its run is dropped (timed out) before the call returned.
struct Abandon {
    shared: Arc<Shared>,
    call: u64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let mut slot = self.shared.slot();
        if let Some(busy) = slot.busy.as_mut().filter(|busy| busy.call == self.call) {
            busy.abandoned = true;
            drop(slot);
            self.shared.changed.notify_waiters();
        }
    }
}

impl Blocking {
    async fn run<T: Send + 'static>(
        &self,
        path: &Path,
        work: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        let call = loop {
            let changed = {
                let mut slot = self.shared.slot();
                match &slot.busy {
                    None => {
                        let call = slot.next_call;
                        slot.next_call += 1;
                        slot.busy = Some(Busy {
                            call,
                            abandoned: false,
                        });
                        break call;
                    }
                    Some(busy) if busy.abandoned => {
                        // No running figure in the text: a steady failure must read the
                        // same on every probe, or each one is logged as a new failure.
                        return Err(CheckError::msg(format!(
                            "{}: the previous check is still blocked (file system hung?)",
                            path.display()
                        )));
                    }
                    // Registered while the slot is locked, so no wake-up is missed.
                    Some(_) => self.shared.changed.notified(),
                }
            };
            changed.await;
        };
        let abandon = Abandon {
            shared: Arc::clone(&self.shared),
            call,
        };
        let release = Release(Arc::clone(&self.shared));
        // A thread of its own, not Tokio's blocking pool: the runtime's drop waits for every
        // blocking task still running, so a call stuck for good (the hung mount this guards
        // against) would keep the process from exiting after its server stopped. A detached
        // thread does not hold the exit; at most one is blocked per check (the slot above).
        let (sender, answer) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("periscope-fs-check".to_owned())
            .spawn(move || {
                let result = work();
                // The slot is free before the run hears back, as when a blocking task returns:
                // a run that finds its call returned never marks it abandoned.
                drop(release);
                let _ = sender.send(result);
            });
        let result = match spawned {
            Ok(_detached) => answer.await.unwrap_or_else(|_| {
                Err(CheckError::msg(
                    "file-system check did not finish: its thread panicked",
                ))
            }),
            Err(error) => Err(CheckError::msg(format!(
                "file-system check could not start a thread: {error}"
            ))),
        };
        drop(abandon);
        result
    }
}

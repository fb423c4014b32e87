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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::check::CheckError;

/// Runs a check's blocking file-system work off the async threads, one call at a time.
///
/// A blocking call stuck in the kernel (a hung NFS mount) outlives the check's timeout: aborting
/// the task cannot stop its thread. While one is stuck, later runs fail at once instead of
/// piling up blocked threads until the runtime's blocking pool is exhausted.
#[derive(Clone, Debug, Default)]
struct Blocking {
    /// When the call still running started.
    busy_since: Arc<Mutex<Option<Instant>>>,
}

/// Frees the [`Blocking`] slot when the blocking call returns (or is never run).
struct Release(Arc<Mutex<Option<Instant>>>);

impl Drop for Release {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Blocking {
    async fn run<T: Send + 'static>(
        &self,
        path: &Path,
        work: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        {
            let mut busy_since = self
                .busy_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(since) = *busy_since {
                return Err(CheckError::msg(format!(
                    "{}: the previous check is still blocked after {}s (file system hung?)",
                    path.display(),
                    since.elapsed().as_secs()
                )));
            }
            *busy_since = Some(Instant::now());
        }
        let release = Release(Arc::clone(&self.busy_since));
        tokio::task::spawn_blocking(move || {
            let _release = release;
            work()
        })
        .await
        .unwrap_or_else(|error| {
            Err(CheckError::msg(format!(
                "file-system check did not finish: {error}"
            )))
        })
    }
}

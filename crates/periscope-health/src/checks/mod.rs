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

use crate::check::CheckError;

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
) -> Result<T, CheckError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| {
            Err(CheckError::msg(format!(
                "file-system check did not finish: {error}"
            )))
        })
}

//! A file or directory writable, and free disk space above a threshold.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::check::{Check, CheckError, CheckFuture};
use crate::checks::blocking;

/// Passes when `path` can be written: for a directory, a probe file is created, written and
/// removed; for a file, it is opened for appending (and left unchanged).
pub fn writable(path: impl Into<PathBuf>) -> WritableCheck {
    WritableCheck { path: path.into() }
}

/// The check [`writable`] builds.
#[derive(Clone, Debug)]
pub struct WritableCheck {
    path: PathBuf,
}

impl Check for WritableCheck {
    fn check(&self) -> CheckFuture<'_> {
        let path = self.path.clone();
        Box::pin(blocking(move || probe_writable(&path)))
    }
}

fn probe_writable(path: &Path) -> Result<(), CheckError> {
    let fail = |what: &str, target: &Path, error: std::io::Error| {
        CheckError::msg(format!(
            "{} is not writable: {what} failed: {error}",
            target.display()
        ))
    };
    let metadata = std::fs::metadata(path).map_err(|error| fail("stat", path, error))?;
    if !metadata.is_dir() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|error| fail("open for append", path, error));
    }
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = path.join(format!(
        ".periscope-health-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| file.write_all(b"periscope health probe\n"))
        .map_err(|error| fail("create a probe file", path, error));
    // Remove the probe file even when the write failed half-way.
    let removed = std::fs::remove_file(&probe);
    written?;
    removed.map_err(|error| fail("remove the probe file", &probe, error))
}

/// Passes while the file system holding `path` has at least `min_available_bytes` available to
/// unprivileged users.
pub fn disk_space(path: impl Into<PathBuf>, min_available_bytes: u64) -> DiskSpaceCheck {
    DiskSpaceCheck {
        path: path.into(),
        min_available_bytes,
    }
}

/// The check [`disk_space`] builds.
#[derive(Clone, Debug)]
pub struct DiskSpaceCheck {
    path: PathBuf,
    min_available_bytes: u64,
}

impl Check for DiskSpaceCheck {
    fn check(&self) -> CheckFuture<'_> {
        let path = self.path.clone();
        let min = self.min_available_bytes;
        Box::pin(blocking(move || {
            let available = fs4::available_space(&path).map_err(|error| {
                CheckError::msg(format!("free space of {} unknown: {error}", path.display()))
            })?;
            if available < min {
                return Err(CheckError::msg(format!(
                    "{} has {} available, below the {} threshold",
                    path.display(),
                    human_bytes(available),
                    human_bytes(min)
                )));
            }
            Ok(())
        }))
    }
}

/// `512 B`, `1.5 KiB`, `20.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_df() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    }
}

//! A file or directory writable, and free disk space above a threshold.

use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::check::{Check, CheckError, CheckFuture};
use crate::checks::Blocking;

/// What may hold a file-system call past its check's timeout.
const FS_HUNG: &str = "file system hung";

/// Passes when `path` can be written: for a directory, a probe file is created, written and
/// removed; for a file, it is opened for appending (and left unchanged).
pub fn writable(path: impl Into<PathBuf>) -> WritableCheck {
    WritableCheck {
        path: path.into(),
        blocking: Blocking::default(),
        leftover: Arc::default(),
    }
}

/// The check [`writable`] builds.
#[derive(Clone, Debug)]
pub struct WritableCheck {
    path: PathBuf,
    blocking: Blocking,
    /// A probe file a run could not remove (a directory that lets files be made but not
    /// removed: append-only, or a policy without `unlink`).
    leftover: Arc<Mutex<Option<PathBuf>>>,
}

impl Check for WritableCheck {
    fn check(&self) -> CheckFuture<'_> {
        let path = self.path.clone();
        let leftover = Arc::clone(&self.leftover);
        Box::pin(self.blocking.run(self.path.display(), FS_HUNG, move || {
            probe_writable(&path, &leftover, |file| std::fs::remove_file(file))
        }))
    }
}

fn probe_writable(
    path: &Path,
    leftover: &Mutex<Option<PathBuf>>,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) -> Result<(), CheckError> {
    // Names the path checked, never a probe file's random name: a steady failure must read
    // the same on every probe, or each one is logged as a new failure.
    let fail = |what: &str, error: std::io::Error| {
        CheckError::msg(format!(
            "{} is not writable: {what} failed: {error}",
            path.display()
        ))
    };
    let metadata = std::fs::metadata(path).map_err(|error| fail("stat", error))?;
    if !metadata.is_dir() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|error| fail("open for append", error));
    }
    // The probe file an earlier run could not remove goes first, and no new one is made while
    // it stays: such a directory holds one probe file, not one more per probe.
    let mut leftover = leftover.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(file) = leftover.as_deref() {
        match remove(file) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(fail("remove the probe file", error));
            }
            _ => *leftover = None,
        }
    }
    // Never remove a file this check did not create: the directory may be shared (a volume
    // mounted by several replicas, each often pid 1), so on a name clash try another name.
    let mut attempts = 0;
    let (probe, mut file) = loop {
        let probe = path.join(probe_file_name());
        match OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(file) => break (probe, file),
            Err(error) if error.kind() == ErrorKind::AlreadyExists && attempts < 3 => {
                attempts += 1;
            }
            Err(error) => return Err(fail("create a probe file", error)),
        }
    };
    let written = file
        .write_all(b"periscope health probe\n")
        .map_err(|error| fail("write a probe file", error));
    drop(file);
    // Remove the probe file even when the write failed half-way.
    let removed = remove(&probe);
    if removed.is_err() {
        *leftover = Some(probe);
    }
    written?;
    removed.map_err(|error| fail("remove the probe file", error))
}

/// `.periscope-health-<pid>-<random>`: unique across processes that share the directory, even
/// ones with the same pid in different containers.
fn probe_file_name() -> String {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(PROBES.fetch_add(1, Ordering::Relaxed));
    format!(
        ".periscope-health-{}-{:016x}",
        std::process::id(),
        hasher.finish()
    )
}

/// Passes while the file system holding `path` has at least `min_available_bytes` available to
/// unprivileged users.
pub fn disk_space(path: impl Into<PathBuf>, min_available_bytes: u64) -> DiskSpaceCheck {
    DiskSpaceCheck {
        path: path.into(),
        min_available_bytes,
        blocking: Blocking::default(),
    }
}

/// The check [`disk_space`] builds.
#[derive(Clone, Debug)]
pub struct DiskSpaceCheck {
    path: PathBuf,
    min_available_bytes: u64,
    blocking: Blocking,
}

impl Check for DiskSpaceCheck {
    fn check(&self) -> CheckFuture<'_> {
        let path = self.path.clone();
        let min = self.min_available_bytes;
        Box::pin(self.blocking.run(self.path.display(), FS_HUNG, move || {
            let available = fs4::available_space(&path).map_err(|error| {
                CheckError::msg(format!("free space of {} unknown: {error}", path.display()))
            })?;
            if available < min {
                return Err(below_threshold(&path, min));
            }
            Ok(())
        }))
    }
}

/// The failure of a disk short of space. No running figure in the text: the space left moves
/// with every write, and a steady failure must read the same on every probe, or each one is
/// logged as a new failure, filling the disk further.
fn below_threshold(path: &Path, min: u64) -> CheckError {
    CheckError::msg(format!(
        "{} has less than the {} threshold available",
        path.display(),
        human_bytes(min)
    ))
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
    fn a_probe_file_that_cannot_be_removed_is_the_only_one_left() {
        let dir =
            std::env::temp_dir().join(format!("periscope-health-unlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = || std::fs::read_dir(&dir).unwrap().count();
        let leftover = Mutex::new(None);
        // Removal refused, as in an append-only directory: one file stays, however many runs.
        let refuse = |_: &Path| Err(std::io::Error::from(ErrorKind::PermissionDenied));
        let first = probe_writable(&dir, &leftover, refuse).unwrap_err();
        for _ in 0..5 {
            let again = probe_writable(&dir, &leftover, refuse).unwrap_err();
            assert_eq!(again.message(), first.message());
        }
        assert_eq!(files(), 1);
        assert!(
            first
                .message()
                .starts_with(&format!("{} is not writable: remove", dir.display())),
            "{}",
            first.message()
        );
        // Removal allowed again: the leftover goes, and the check passes.
        let remove = |file: &Path| std::fs::remove_file(file);
        probe_writable(&dir, &leftover, remove).unwrap();
        assert_eq!(files(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_read_like_df() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    }
}

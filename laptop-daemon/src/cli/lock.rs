//! The daemon lock: one daemon per repository, held for the process's
//! life (the OS releases it when the process exits).

use std::path::{Path, PathBuf};

/// The lock file of a repository's state directory.
pub(super) fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.lock")
}

/// Take the daemon lock; `None` if another process holds it.
pub(super) fn try_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

//! The daemon lock: one daemon per repository, held for the process's
//! life (the OS releases it when the process exits, also after `kill -9`).
//!
//! The lock file also names its holder (its pid), so that a lock that is
//! still held for a moment by a daemon that was just killed (the kernel
//! closes a dying process's files a little after the signal) is told apart
//! from a daemon that runs: the first is waited for, the second reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a lock held by a dying (or just killed) daemon is waited for.
const DYING_GRACE: Duration = Duration::from_secs(5);

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

/// Take the daemon lock for this process and write its pid into the file.
/// A lock held by a process that is gone or dying is waited for (up to
/// [`DYING_GRACE`]); `Err(pid)`: a live daemon holds it.
pub(super) fn lock_for_daemon(path: &Path) -> anyhow::Result<Result<std::fs::File, Option<u32>>> {
    let started = Instant::now();
    loop {
        if let Some(mut f) = try_lock(path)? {
            f.set_len(0)?;
            writeln!(f, "{}", std::process::id())?;
            return Ok(Ok(f));
        }
        let holder = holder(path);
        let live = holder.is_some_and(is_running);
        // A live holder may still be on its way out (killed, not yet
        // reaped by the kernel): give it the same grace, but say who it is.
        if started.elapsed() > DYING_GRACE || (live && started.elapsed() > DYING_GRACE / 5) {
            return Ok(Err(holder.filter(|_| live)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid written into the lock file by the daemon that holds it.
fn holder(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True while `pid` is a running process (not gone, not a zombie).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_names_its_holder_and_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        let held = lock_for_daemon(&path).unwrap().expect("a free lock");
        assert_eq!(holder(&path), Some(std::process::id()));
        assert!(is_running(std::process::id()));
        assert!(try_lock(&path).unwrap().is_none(), "held");
        drop(held);
        assert!(try_lock(&path).unwrap().is_some(), "released on drop");
    }

    #[test]
    fn a_reaped_process_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_running(pid));
    }
}

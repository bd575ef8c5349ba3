//! File watching: notify + notify-debouncer-full with a short coalescing
//! window. Events are triggers, not truth: each batch becomes a rescan of
//! the touched paths (a new directory is rescanned as a subtree); overflow
//! or rescan flags and moves of HEAD or refs become a full scan. Running
//! out of inotify watches is fatal, with the sysctl that fixes it.

use notify_debouncer_full::notify::{self, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, NoCache, new_debouncer_opt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the scanner should do.
#[derive(Debug)]
pub enum Trigger {
    /// Rescan these worktree paths; noticed at that instant.
    Paths(Vec<PathBuf>, Instant),
    /// Rescan everything (HEAD/refs moved, overflow, rescan flag).
    Full(Instant),
    /// The index changed: refresh its stat data.
    Index,
    /// The watcher failed for good.
    Fatal(String),
}

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "out of inotify watches while watching {path}; raise the limit: `sudo sysctl fs.inotify.max_user_watches=1048576` (persist it in /etc/sysctl.d/)"
    )]
    Limit { path: String },
    #[error("cannot watch {path}: {source}")]
    Notify { path: String, source: notify::Error },
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: Debouncer<RecommendedWatcher, NoCache>,
}

fn is_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28))
}

/// Classify one event path.
fn classify(workdir: &Path, git_dir: &Path, p: &Path) -> Option<Trigger> {
    if let Ok(rel) = p.strip_prefix(git_dir) {
        let s = rel.to_string_lossy();
        if s == "index" {
            return Some(Trigger::Index);
        }
        if s == "HEAD"
            || s == "packed-refs"
            || s == "config"
            || (s.starts_with("refs/") && !s.ends_with(".lock"))
        {
            return Some(Trigger::Full(Instant::now()));
        }
        return None;
    }
    if p.starts_with(workdir) {
        return Some(Trigger::Paths(vec![p.to_owned()], Instant::now()));
    }
    None
}

/// Watch `workdir` (recursively, `.git` included for HEAD/refs/index) and
/// send triggers to `tx`.
pub fn watch(
    workdir: &Path,
    git_dir: &Path,
    debounce: Duration,
    tx: mpsc::Sender<Trigger>,
) -> Result<Watcher, WatchError> {
    let wd = workdir.to_owned();
    let gd = git_dir.to_owned();
    let tick = (debounce / 4).max(Duration::from_millis(1));
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            let mut paths = Vec::new();
            let mut first = None::<Instant>;
            let mut full = false;
            let mut index = false;
            for ev in events {
                first = Some(first.map_or(ev.time, |f: Instant| f.min(ev.time)));
                if ev.need_rescan() {
                    full = true;
                    continue;
                }
                for p in &ev.paths {
                    match classify(&wd, &gd, p) {
                        Some(Trigger::Paths(mut v, _)) => paths.append(&mut v),
                        Some(Trigger::Full(_)) => full = true,
                        Some(Trigger::Index) => index = true,
                        _ => {}
                    }
                }
            }
            let at = first.unwrap_or_else(Instant::now);
            if index {
                let _ = tx.blocking_send(Trigger::Index);
            }
            if full {
                let _ = tx.blocking_send(Trigger::Full(at));
            } else if !paths.is_empty() {
                let _ = tx.blocking_send(Trigger::Paths(paths, at));
            }
        }
        Err(errors) => {
            for e in errors {
                if is_limit(&e) {
                    let msg = WatchError::Limit {
                        path: format!("{:?}", e.paths),
                    }
                    .to_string();
                    let _ = tx.blocking_send(Trigger::Fatal(msg));
                } else {
                    tracing::warn!(error = %e, "watch error; rescanning");
                    let _ = tx.blocking_send(Trigger::Full(Instant::now()));
                }
            }
        }
    };
    let mut debouncer = new_debouncer_opt::<_, RecommendedWatcher, NoCache>(
        debounce,
        Some(tick),
        handler,
        NoCache,
        notify::Config::default(),
    )
    .map_err(|source| WatchError::Notify {
        path: workdir.display().to_string(),
        source,
    })?;
    debouncer
        .watch(workdir, RecursiveMode::Recursive)
        .map_err(|source| {
            if is_limit(&source) {
                WatchError::Limit {
                    path: workdir.display().to_string(),
                }
            } else {
                WatchError::Notify {
                    path: workdir.display().to_string(),
                    source,
                }
            }
        })?;
    if !git_dir.starts_with(workdir) {
        debouncer
            .watch(git_dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError::Notify {
                path: git_dir.display().to_string(),
                source,
            })?;
    }
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_git_metadata_and_worktree_paths() {
        let wd = Path::new("/r");
        let gd = Path::new("/r/.git");
        assert!(matches!(
            classify(wd, gd, Path::new("/r/.git/index")),
            Some(Trigger::Index)
        ));
        assert!(matches!(
            classify(wd, gd, Path::new("/r/.git/HEAD")),
            Some(Trigger::Full(_))
        ));
        assert!(matches!(
            classify(wd, gd, Path::new("/r/.git/refs/remotes/origin/main")),
            Some(Trigger::Full(_))
        ));
        assert!(classify(wd, gd, Path::new("/r/.git/objects/ab/cdef")).is_none());
        assert!(classify(wd, gd, Path::new("/r/.git/refs/heads/main.lock")).is_none());
        assert!(matches!(
            classify(wd, gd, Path::new("/r/src/a.rs")),
            Some(Trigger::Paths(..))
        ));
        assert!(classify(wd, gd, Path::new("/elsewhere")).is_none());
    }
}

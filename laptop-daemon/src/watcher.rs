//! File watching: notify's recommended watcher (inotify on Linux) feeding
//! an event-driven coalescer: the first event opens a batch, which closes
//! after a short quiet window (default 10 ms, capped at ten windows while
//! events keep coming). Events are triggers, not truth: each batch becomes a
//! rescan of the touched paths (a new directory is rescanned as a subtree);
//! overflow or rescan flags and moves of HEAD or refs become a full scan.
//! Running out of inotify watches is fatal, with the sysctl that fixes it.
//!
//! notify-debouncer-full was the first choice, but its timer thread wakes
//! every tick even when nothing happens (about 0.4 % of a core at a 5 ms
//! tick); this coalescer sleeps until an event arrives.

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Raw events buffered between notify's thread and the coalescer; beyond
/// this the batch becomes a full scan.
const RAW_QUEUE: usize = 65_536;

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
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28))
}

/// Reads (our own scans open files and directories) are not changes; a
/// close after writing is.
fn relevant(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
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

/// One batch of events, reduced to what the scanner needs.
#[derive(Default)]
struct Batch {
    paths: Vec<PathBuf>,
    first: Option<Instant>,
    full: bool,
    index: bool,
    fatal: Option<String>,
}

impl Batch {
    fn add(&mut self, wd: &Path, gd: &Path, res: notify::Result<notify::Event>) {
        self.first.get_or_insert_with(Instant::now);
        match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    self.full = true;
                    return;
                }
                if !relevant(&ev.kind) {
                    return;
                }
                for p in &ev.paths {
                    tracing::trace!(path = %p.display(), kind = ?ev.kind, "event");
                    match classify(wd, gd, p) {
                        Some(Trigger::Paths(mut v, _)) => self.paths.append(&mut v),
                        Some(Trigger::Full(_)) => self.full = true,
                        Some(Trigger::Index) => self.index = true,
                        _ => {}
                    }
                }
            }
            Err(e) if is_limit(&e) => {
                self.fatal = Some(
                    WatchError::Limit {
                        path: format!("{:?}", e.paths),
                    }
                    .to_string(),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch error; rescanning");
                self.full = true;
            }
        }
    }

    async fn emit<M: From<Trigger>>(self, tx: &mpsc::Sender<M>) {
        let at = self.first.unwrap_or_else(Instant::now);
        if let Some(msg) = self.fatal {
            let _ = tx.send(Trigger::Fatal(msg).into()).await;
            return;
        }
        if self.index {
            let _ = tx.send(Trigger::Index.into()).await;
        }
        if self.full {
            let _ = tx.send(Trigger::Full(at).into()).await;
        } else if !self.paths.is_empty() {
            let _ = tx.send(Trigger::Paths(self.paths, at).into()).await;
        }
    }
}

async fn coalesce<M: From<Trigger>>(
    mut rx: mpsc::Receiver<notify::Result<notify::Event>>,
    overflow: Arc<AtomicBool>,
    wd: PathBuf,
    gd: PathBuf,
    window: Duration,
    tx: mpsc::Sender<M>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        let opened = Instant::now();
        let mut batch = Batch::default();
        batch.add(&wd, &gd, first);
        while opened.elapsed() < window * 10 {
            match tokio::time::timeout(window, rx.recv()).await {
                Ok(Some(ev)) => batch.add(&wd, &gd, ev),
                Ok(None) | Err(_) => break,
            }
        }
        if overflow.swap(false, Ordering::SeqCst) {
            batch.full = true;
        }
        batch.emit(&tx).await;
    }
}

/// Watch `workdir` (recursively, `.git` included for HEAD/refs/index) and
/// send triggers straight into `tx`, the queue its consumer reads (the
/// daemon's scanner queue: `M` is its message type, made from a
/// [`Trigger`]). The coalescing task runs on `tracker` and ends when
/// `cancel` fires or the returned [`Watcher`] is dropped. Must be called
/// within a tokio runtime.
pub fn watch<M: From<Trigger> + Send + 'static>(
    workdir: &Path,
    git_dir: &Path,
    window: Duration,
    tx: mpsc::Sender<M>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Watcher, WatchError> {
    let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let of = overflow.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if raw_tx.try_send(res).is_err() {
            of.store(true, Ordering::SeqCst);
        }
    })
    .map_err(|source| WatchError::Notify {
        path: workdir.display().to_string(),
        source,
    })?;
    let wrap = |path: &Path, source: notify::Error| {
        if is_limit(&source) {
            WatchError::Limit {
                path: path.display().to_string(),
            }
        } else {
            WatchError::Notify {
                path: path.display().to_string(),
                source,
            }
        }
    };
    watcher
        .watch(workdir, RecursiveMode::Recursive)
        .map_err(|e| wrap(workdir, e))?;
    if !git_dir.starts_with(workdir) {
        watcher
            .watch(git_dir, RecursiveMode::Recursive)
            .map_err(|e| wrap(git_dir, e))?;
    }
    let task = tracker.spawn(coalesce(
        raw_rx,
        overflow,
        workdir.to_owned(),
        git_dir.to_owned(),
        window,
        tx,
        cancel.clone(),
    ));
    Ok(Watcher {
        _watcher: watcher,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Modify(ModifyKind::Any)));
        assert!(relevant(&EventKind::Create(CreateKind::File)));
    }

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

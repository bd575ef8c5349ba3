//! File watching: notify's recommended watcher (inotify on Linux) feeding
//! an event-driven coalescer: the first event opens a batch, which closes
//! after a short quiet window (default 10 ms, capped at ten windows while
//! events keep coming). Events are triggers, not truth: each batch becomes a
//! rescan of the touched paths (a new directory is rescanned as a subtree);
//! overflow or rescan flags, moves of HEAD or refs, and edits of the ignore
//! files outside the worktree (`.git/info/exclude`, the global excludes
//! file) become a full scan.
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

/// What is watched: the worktree, its git directory, and the global
/// excludes file (`core.excludesFile`, else `~/.config/git/ignore`).
struct Roots {
    workdir: PathBuf,
    git_dir: PathBuf,
    global_excludes: Option<PathBuf>,
}

/// Classify one event path.
fn classify(roots: &Roots, p: &Path) -> Option<Trigger> {
    let (workdir, git_dir) = (&roots.workdir, &roots.git_dir);
    if roots.global_excludes.as_deref() == Some(p) {
        return Some(Trigger::Full(Instant::now()));
    }
    if let Ok(rel) = p.strip_prefix(git_dir) {
        let s = rel.to_string_lossy();
        if s == "index" {
            return Some(Trigger::Index);
        }
        if s == "HEAD"
            || s == "packed-refs"
            || s == "config"
            || s == "info/exclude"
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
    fn add(&mut self, roots: &Roots, res: notify::Result<notify::Event>) {
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
                    match classify(roots, p) {
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
    roots: Roots,
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
        batch.add(&roots, first);
        while opened.elapsed() < window * 10 {
            match tokio::time::timeout(window, rx.recv()).await {
                Ok(Some(ev)) => batch.add(&roots, ev),
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
    // The global excludes file: its directory (the file may be replaced
    // by a rename, or not exist yet). Not being able to is no reason to
    // stop; a full scan still applies it.
    let global_excludes = ignore::gitignore::gitconfig_excludes_path()
        .filter(|p| !p.starts_with(workdir) && !p.starts_with(git_dir));
    if let Some(dir) = global_excludes.as_deref().and_then(Path::parent)
        && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
    {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot watch the global excludes file's directory");
    }
    let roots = Roots {
        workdir: workdir.to_owned(),
        git_dir: git_dir.to_owned(),
        global_excludes,
    };
    let task = tracker.spawn(coalesce(
        raw_rx,
        overflow,
        roots,
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
        let roots = Roots {
            workdir: "/r".into(),
            git_dir: "/r/.git".into(),
            global_excludes: Some("/home/u/.config/git/ignore".into()),
        };
        let classify = |p: &str| classify(&roots, Path::new(p));
        assert!(matches!(
            classify("/r/.git/info/exclude"),
            Some(Trigger::Full(_))
        ));
        assert!(matches!(
            classify("/home/u/.config/git/ignore"),
            Some(Trigger::Full(_))
        ));
        assert!(classify("/home/u/.config/git/config").is_none());
        assert!(matches!(classify("/r/.git/index"), Some(Trigger::Index)));
        assert!(matches!(classify("/r/.git/HEAD"), Some(Trigger::Full(_))));
        assert!(matches!(
            classify("/r/.git/refs/remotes/origin/main"),
            Some(Trigger::Full(_))
        ));
        assert!(classify("/r/.git/objects/ab/cdef").is_none());
        assert!(classify("/r/.git/refs/heads/main.lock").is_none());
        assert!(matches!(classify("/r/src/a.rs"), Some(Trigger::Paths(..))));
        assert!(classify("/elsewhere").is_none());
    }
}

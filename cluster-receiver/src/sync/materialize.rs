//! The materializer: moves the worktree on disk from one state (base tree +
//! overlay) to another, touching only the paths whose desired state
//! differs. It never follows a symlink: every parent directory is checked
//! with `lstat`, and anything that is not a real directory where one is
//! needed is replaced, not traversed. Each file is written to a temporary
//! file on the same filesystem and renamed into place, so every path is
//! always either its old or its new version; replaying a transition is
//! idempotent, which is what crash recovery relies on.

use crate::sync::git_store::GitStore;
use devd_protocol::view::{Desired, Source, SymlinkTarget, View, ViewError, touched};
use devd_protocol::{GitOid, RelPath};
use devd_sync::blob_store::BlobStore;
use devd_sync::git::read_blob;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors while validating or materializing.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("writing {path} in the worktree: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("content for {path} is missing: {why}")]
    Source { path: RelPath, why: String },
}

/// Threads writing files during a large transition.
const WRITE_THREADS: usize = 4;

/// `mkdir` that accepts a directory another writer created meanwhile.
fn mkdir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        r => r,
    }
}

/// Figures of one transition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub written: u64,
    pub removed: u64,
    /// Every path whose state changed (written, replaced or removed).
    pub changed: Vec<RelPath>,
}

/// Content sources for the materializer.
pub struct Sources<'a> {
    pub blobs: &'a BlobStore,
    pub git: Option<&'a GitStore>,
}

/// The worktree directory and a scratch directory on the same filesystem.
pub struct Worktree {
    pub root: PathBuf,
    pub scratch: PathBuf,
}

/// Test hook: `DEVD_RECEIVER_CRASH_AFTER_WRITES=N` aborts the process (as
/// kill -9 would) after N worktree writes, so crash recovery can be tested
/// at a precise point. Unset in normal operation.
fn failpoint_tick() {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var("DEVD_RECEIVER_CRASH_AFTER_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(limit) = limit
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 >= *limit
    {
        eprintln!("devd-receiver: DEVD_RECEIVER_CRASH_AFTER_WRITES={limit} reached, aborting");
        std::process::abort();
    }
}

impl Worktree {
    fn io(&self, p: &Path) -> impl Fn(std::io::Error) -> MaterializeError {
        let path = p.display().to_string();
        move |source| MaterializeError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Make sure every ancestor of `path` is a real directory, replacing
    /// whatever else stands there (never following a symlink).
    fn ensure_parents(
        &self,
        path: &RelPath,
        known: &mut Option<RelPath>,
    ) -> Result<PathBuf, MaterializeError> {
        let comps: Vec<&str> = path.components().collect();
        let leaf = comps[comps.len() - 1];
        let parent = path.parent();
        // Files come sorted: most share the parent just checked.
        if parent.is_some() && *known == parent {
            return Ok(self.root.join(path.as_str()));
        }
        let mut dir = self.root.clone();
        for c in &comps[..comps.len() - 1] {
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    std::fs::remove_file(&dir).map_err(self.io(&dir))?;
                    mkdir(&dir).map_err(self.io(&dir))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    mkdir(&dir).map_err(self.io(&dir))?;
                }
                Err(e) => return Err(self.io(&dir)(e)),
            }
        }
        *known = parent;
        Ok(dir.join(leaf))
    }

    /// The on-disk path of `path` if all its parents are real directories.
    fn existing(&self, path: &RelPath) -> Option<PathBuf> {
        let mut dir = self.root.clone();
        let comps: Vec<&str> = path.components().collect();
        for c in &comps[..comps.len() - 1] {
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                _ => return None,
            }
        }
        Some(dir.join(comps[comps.len() - 1]))
    }

    fn remove(&self, path: &RelPath) -> Result<bool, MaterializeError> {
        let Some(full) = self.existing(path) else {
            return Ok(false);
        };
        let removed = match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(&full).map_err(self.io(&full))?;
                true
            }
            Ok(_) => {
                std::fs::remove_file(&full).map_err(self.io(&full))?;
                true
            }
            Err(_) => false,
        };
        // Prune directories the removal left empty, as git does.
        let mut dir = full.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || std::fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(removed)
    }

    fn write(
        &self,
        path: &RelPath,
        desired: &Desired<'_>,
        fresh: bool,
        src: &Sources<'_>,
        repo: Option<&gix::Repository>,
        known: &mut Option<RelPath>,
    ) -> Result<(), MaterializeError> {
        let full = self.ensure_parents(path, known)?;
        // A path that did not exist before is written in place: there is no
        // old version to protect, and if a crash leaves it half-written the
        // replay finds it present and replaces it by rename.
        if fresh
            && let Desired::File { source, mode } = desired
            && let Err(e) = std::fs::symlink_metadata(&full)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&full)
                .map_err(self.io(&full))?;
            match source {
                Source::Blob(id) => {
                    let mut blob = std::fs::File::open(src.blobs.path(id)).map_err(|e| {
                        MaterializeError::Source {
                            path: path.clone(),
                            why: format!("blob {id}: {e}"),
                        }
                    })?;
                    std::io::copy(&mut blob, &mut f).map_err(self.io(&full))?;
                }
                Source::Git(oid) => {
                    let repo = repo.ok_or_else(|| MaterializeError::Source {
                        path: path.clone(),
                        why: "no base repository".into(),
                    })?;
                    let data = read_blob(repo, *oid).map_err(|e| MaterializeError::Source {
                        path: path.clone(),
                        why: e.to_string(),
                    })?;
                    f.write_all(&data).map_err(self.io(&full))?;
                }
            }
            f.set_permissions(std::fs::Permissions::from_mode(*mode))
                .map_err(self.io(&full))?;
            failpoint_tick();
            return Ok(());
        }
        if let Ok(m) = std::fs::symlink_metadata(&full)
            && m.is_dir()
        {
            std::fs::remove_dir_all(&full).map_err(self.io(&full))?;
        }
        let missing = |why: String| MaterializeError::Source {
            path: path.clone(),
            why,
        };
        let git_blob = |oid: &GitOid| {
            let repo = repo.ok_or_else(|| missing("no base repository".into()))?;
            read_blob(repo, *oid).map_err(|e| missing(e.to_string()))
        };
        let tmp = match desired {
            Desired::Absent => unreachable!("absent paths are removed, not written"),
            Desired::File { source, mode } => {
                let mut f = tempfile::Builder::new()
                    .prefix(".devd-")
                    .tempfile_in(&self.scratch)
                    .map_err(self.io(&self.scratch))?;
                match source {
                    Source::Blob(id) => {
                        let mut blob = std::fs::File::open(src.blobs.path(id))
                            .map_err(|e| missing(format!("blob {id}: {e}")))?;
                        std::io::copy(&mut blob, f.as_file_mut()).map_err(self.io(f.path()))?;
                    }
                    Source::Git(oid) => {
                        let data = git_blob(oid)?;
                        f.as_file_mut()
                            .write_all(&data)
                            .map_err(self.io(f.path()))?;
                    }
                }
                f.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(*mode))
                    .map_err(self.io(f.path()))?;
                f.into_temp_path()
            }
            Desired::Symlink(target) => {
                let target = match target {
                    SymlinkTarget::Text(t) => t.to_string(),
                    SymlinkTarget::Git(oid) => {
                        String::from_utf8_lossy(&git_blob(oid)?).into_owned()
                    }
                };
                let tmp = tempfile::Builder::new()
                    .prefix(".devd-")
                    .tempfile_in(&self.scratch)
                    .map_err(self.io(&self.scratch))?
                    .into_temp_path();
                std::fs::remove_file(&tmp).map_err(self.io(&tmp))?;
                std::os::unix::fs::symlink(&target, &tmp).map_err(self.io(&tmp))?;
                tmp
            }
        };
        tmp.persist(&full).map_err(|e| self.io(&full)(e.error))?;
        failpoint_tick();
        Ok(())
    }

    /// Move the worktree from `old` to `new`.
    pub fn transition(
        &self,
        old: &View<'_>,
        new: &View<'_>,
        same_base: bool,
        src: &Sources<'_>,
    ) -> Result<Stats, MaterializeError> {
        std::fs::create_dir_all(&self.root).map_err(self.io(&self.root))?;
        std::fs::create_dir_all(&self.scratch).map_err(self.io(&self.scratch))?;
        let mut removals = Vec::new();
        let mut writes = Vec::new();
        for p in touched(old, new, same_base) {
            let want = new.desired(&p);
            if want == old.desired(&p) {
                continue;
            }
            if want == Desired::Absent {
                removals.push(p);
            } else {
                let fresh = old.desired(&p) == Desired::Absent;
                writes.push((p, want, fresh));
            }
        }
        let mut stats = Stats::default();
        for p in removals.iter().rev() {
            if self.remove(p)? {
                stats.removed += 1;
            }
        }
        // Writes are independent (their parents exist or are created
        // idempotently): spread them over a few threads, in sorted chunks
        // so each thread mostly stays within its directories.
        let threads = if writes.len() < 64 { 1 } else { WRITE_THREADS };
        let chunk = writes.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = writes
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let repo = src.git.map(|g| g.repo());
                        let mut known = None;
                        for (p, want, fresh) in part {
                            self.write(p, want, *fresh, src, repo.as_ref(), &mut known)?;
                        }
                        Ok::<u64, MaterializeError>(part.len() as u64)
                    })
                })
                .collect();
            for h in handles {
                stats.written += h.join().expect("writer thread")?;
            }
            Ok::<(), MaterializeError>(())
        })?;
        stats.changed = removals;
        stats.changed.extend(writes.into_iter().map(|(p, _, _)| p));
        stats.changed.sort();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::tree::{BaseTree, EntryKind, TreeEntry};
    use devd_protocol::{ContentId, Entry, Overlay};

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn writes_files_symlinks_modes_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let wt = Worktree {
            root: dir.path().join("wt"),
            scratch: dir.path().join("tmp"),
        };
        let a = ContentId::of(b"alpha");
        blobs.put(&a, b"alpha").unwrap();
        let tree = BaseTree::new();
        let empty = Overlay::new();
        let o1: Overlay = [
            (
                p("d/e/f.sh"),
                Entry::File {
                    id: a,
                    exec: true,
                    mode: None,
                },
            ),
            (
                p("secret"),
                Entry::File {
                    id: a,
                    exec: false,
                    mode: Some(0o600),
                },
            ),
            (
                p("link"),
                Entry::Symlink {
                    target: "d/e/f.sh".into(),
                },
            ),
        ]
        .into_iter()
        .collect();
        let src = Sources {
            blobs: &blobs,
            git: None,
        };
        let v0 = View {
            tree: &tree,
            overlay: &empty,
        };
        let v1 = View {
            tree: &tree,
            overlay: &o1,
        };
        v1.validate().unwrap();
        let s = wt.transition(&v0, &v1, true, &src).unwrap();
        assert_eq!(s.written, 3);
        let f = wt.root.join("d/e/f.sh");
        assert_eq!(std::fs::read(&f).unwrap(), b"alpha");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o755);
        assert_eq!(mode(&wt.root.join("secret")), 0o600, "never widened");
        // Only the mode changes: the file is rewritten with git's.
        let mut o2 = o1.clone();
        o2.insert(
            p("secret"),
            Entry::File {
                id: a,
                exec: false,
                mode: None,
            },
        );
        let v2 = View {
            tree: &tree,
            overlay: &o2,
        };
        assert_eq!(wt.transition(&v1, &v2, true, &src).unwrap().written, 1);
        assert_eq!(mode(&wt.root.join("secret")), 0o644);
        wt.transition(&v2, &v1, true, &src).unwrap();
        assert_eq!(
            std::fs::read_link(wt.root.join("link")).unwrap(),
            Path::new("d/e/f.sh")
        );
        // Replaying is idempotent.
        wt.transition(&v0, &v1, true, &src).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"alpha");
        // Back to empty: files gone, empty directories pruned.
        let s = wt.transition(&v1, &v0, true, &src).unwrap();
        assert_eq!(s.removed, 3);
        assert_eq!(std::fs::read_dir(&wt.root).unwrap().count(), 0);
    }

    #[test]
    fn refuses_writes_below_symlinks_before_touching_disk() {
        let tree = BaseTree::new();
        let o: Overlay = [
            (
                p("l"),
                Entry::Symlink {
                    target: "/tmp".into(),
                },
            ),
            (
                p("l/evil"),
                Entry::File {
                    id: ContentId([0; 32]),
                    exec: false,
                    mode: None,
                },
            ),
        ]
        .into_iter()
        .collect();
        let err = View {
            tree: &tree,
            overlay: &o,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("l/evil"), "{err}");

        let mut tree = BaseTree::new();
        tree.insert(
            p("dir/x"),
            TreeEntry {
                oid: GitOid([1; 20]),
                kind: EntryKind::File,
            },
        );
        let o: Overlay = [(
            p("dir"),
            Entry::Symlink {
                target: "/etc".into(),
            },
        )]
        .into_iter()
        .collect();
        assert!(
            View {
                tree: &tree,
                overlay: &o
            }
            .validate()
            .is_err()
        );
        let o: Overlay = [
            (
                p("dir"),
                Entry::Symlink {
                    target: "/etc".into(),
                },
            ),
            (p("dir/x"), Entry::Deleted),
        ]
        .into_iter()
        .collect();
        View {
            tree: &tree,
            overlay: &o,
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn replaces_stray_symlink_parent_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let wt = Worktree {
            root: dir.path().join("wt"),
            scratch: dir.path().join("tmp"),
        };
        std::fs::create_dir_all(&wt.root).unwrap();
        std::os::unix::fs::symlink(outside.path(), wt.root.join("sub")).unwrap();
        let a = ContentId::of(b"x");
        blobs.put(&a, b"x").unwrap();
        let tree = BaseTree::new();
        let empty = Overlay::new();
        let o: Overlay = [(
            p("sub/f"),
            Entry::File {
                id: a,
                exec: false,
                mode: None,
            },
        )]
        .into_iter()
        .collect();
        wt.transition(
            &View {
                tree: &tree,
                overlay: &empty,
            },
            &View {
                tree: &tree,
                overlay: &o,
            },
            true,
            &Sources {
                blobs: &blobs,
                git: None,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside"
        );
        assert!(
            std::fs::symlink_metadata(wt.root.join("sub"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(std::fs::read(wt.root.join("sub/f")).unwrap(), b"x");
    }
}

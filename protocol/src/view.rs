//! A worktree state as a pure value: the base tree with the overlay on top
//! ([`View`]), the desired state of each path ([`Desired`]), whether such a
//! state can exist on a filesystem ([`View::validate`]), and which paths a
//! transition between two states may touch ([`touched`]). The receiver's
//! materializer turns these into writes; nothing here touches a disk.

use crate::content_id::{ContentId, GitOid};
use crate::overlay::{Entry, Overlay};
use crate::path::RelPath;
use crate::tree::{BaseTree, EntryKind};
use std::collections::BTreeSet;

/// Why a state cannot exist on a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("path {path} conflicts with {other}: {why}")]
    Conflict {
        path: RelPath,
        other: RelPath,
        why: &'static str,
    },
    #[error("symlink {path} has an invalid target (empty or containing NUL)")]
    BadSymlink { path: RelPath },
}

/// Where a file's content comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Blob(ContentId),
    Git(GitOid),
}

/// The desired state of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired<'a> {
    Absent,
    /// `mode`: the permission bits to give it (git's 0644 or 0755, or
    /// narrower as on the laptop).
    File {
        source: Source,
        mode: u32,
    },
    Symlink(SymlinkTarget<'a>),
}

/// A symlink's target, borrowed from an overlay or read from git.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymlinkTarget<'a> {
    Text(&'a str),
    Git(GitOid),
}

/// A worktree state: the base tree with the overlay on top.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub tree: &'a BaseTree,
    pub overlay: &'a Overlay,
}

impl<'a> View<'a> {
    /// The desired state of `path`.
    pub fn desired(&self, path: &RelPath) -> Desired<'a> {
        match self.overlay.get(path) {
            Some(Entry::File { id, exec, mode }) => Desired::File {
                source: Source::Blob(*id),
                mode: crate::overlay::file_mode(*exec, *mode),
            },
            Some(Entry::Symlink { target }) => Desired::Symlink(SymlinkTarget::Text(target)),
            Some(Entry::Deleted) => Desired::Absent,
            None => match self.tree.get(path) {
                None => Desired::Absent,
                Some(t) => match t.kind {
                    EntryKind::File => Desired::File {
                        source: Source::Git(t.oid),
                        mode: 0o644,
                    },
                    EntryKind::Exec => Desired::File {
                        source: Source::Git(t.oid),
                        mode: 0o755,
                    },
                    EntryKind::Symlink => Desired::Symlink(SymlinkTarget::Git(t.oid)),
                },
            },
        }
    }

    /// Check that this state can exist on a filesystem: no file or symlink
    /// is the parent of another present path. Run before anything is
    /// written, so a hostile overlay (a symlink `l` plus a file `l/x`) is
    /// refused without side effects.
    pub fn validate(&self) -> Result<(), ViewError> {
        for (path, entry) in self.overlay.iter() {
            match entry {
                Entry::Deleted => continue,
                Entry::Symlink { target } if target.is_empty() || target.contains('\0') => {
                    return Err(ViewError::BadSymlink { path: path.clone() });
                }
                _ => {}
            }
            let mut anc = path.parent();
            while let Some(a) = anc {
                if self.desired(&a) != Desired::Absent {
                    return Err(ViewError::Conflict {
                        path: path.clone(),
                        other: a,
                        why: "a parent directory is a file or symlink",
                    });
                }
                anc = a.parent();
            }
            for (below, _) in self.tree.range(path.clone()..) {
                if !below.as_str().starts_with(path.as_str()) {
                    break;
                }
                if below != path
                    && below.starts_with(path)
                    && self.desired(below) != Desired::Absent
                {
                    return Err(ViewError::Conflict {
                        path: below.clone(),
                        other: path.clone(),
                        why: "it lies below a file or symlink",
                    });
                }
            }
        }
        Ok(())
    }
}

/// Paths whose desired state may differ between `old` and `new`.
pub fn touched(old: &View<'_>, new: &View<'_>, same_base: bool) -> BTreeSet<RelPath> {
    let mut out: BTreeSet<RelPath> = BTreeSet::new();
    out.extend(old.overlay.iter().map(|(p, _)| p.clone()));
    out.extend(new.overlay.iter().map(|(p, _)| p.clone()));
    if !same_base {
        let mut a = old.tree.iter().peekable();
        let mut b = new.tree.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((pa, _)), None) => {
                    out.insert((*pa).clone());
                    a.next();
                }
                (None, Some((pb, _))) => {
                    out.insert((*pb).clone());
                    b.next();
                }
                (Some((pa, ea)), Some((pb, eb))) => match pa.cmp(pb) {
                    std::cmp::Ordering::Less => {
                        out.insert((*pa).clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out.insert((*pb).clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if ea != eb {
                            out.insert((*pa).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }
    out
}

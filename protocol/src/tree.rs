//! A commit's tree as the sync model sees it: every file by path, with its
//! git blob id and whether it is a file, an executable or a symlink. The
//! laptop reads it from its repository, the receiver from its shallow
//! clone (both through `devd_sync::git`).

use crate::content_id::GitOid;
use crate::path::RelPath;
use std::collections::BTreeMap;

/// What a tree entry is in the worktree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (mode 100644).
    File,
    /// An executable file (mode 100755).
    Exec,
    /// A symbolic link (mode 120000); the blob holds the target.
    Symlink,
}

/// One file of a commit's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The blob holding the content (or the symlink target).
    pub oid: GitOid,
    /// File, executable or symlink.
    pub kind: EntryKind,
}

/// Every file of a commit, by worktree-relative path. Submodules are absent.
pub type BaseTree = BTreeMap<RelPath, TreeEntry>;

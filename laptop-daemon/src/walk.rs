//! The worktree walk that `devd init` (finding Dockerfiles) and the scanner
//! (finding what to sync) share, so both see the same files: everything
//! but what git ignores (`.gitignore`, `.git/info/exclude`, the global
//! excludes file), hidden files included, symlinks not followed, and no
//! `.ignore` files or ignore files above the worktree.

use std::path::Path;

/// A walk of `root` set up as above; callers add their filters (and
/// threads) on top.
pub fn worktree(root: &Path) -> ignore::WalkBuilder {
    let mut wb = ignore::WalkBuilder::new(root);
    wb.hidden(false)
        .ignore(false)
        .parents(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(true)
        .require_git(false)
        .follow_links(false);
    wb
}

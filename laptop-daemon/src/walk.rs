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

/// The path a walk error is about when the error is "permission denied"
/// (a directory the daemon may not list, an ignore file it may not read):
/// the scan skips it and goes on, rather than failing or treating what is
/// below it as deleted.
pub fn permission_denied(err: &ignore::Error) -> Option<&Path> {
    fn denied(err: &ignore::Error) -> bool {
        match err {
            ignore::Error::Io(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
            ignore::Error::WithPath { err, .. }
            | ignore::Error::WithDepth { err, .. }
            | ignore::Error::WithLineNumber { err, .. } => denied(err),
            ignore::Error::Partial(errs) => errs.iter().any(denied),
            _ => false,
        }
    }
    fn path(err: &ignore::Error) -> Option<&Path> {
        match err {
            ignore::Error::WithPath { path, .. } => Some(path),
            ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
                path(err)
            }
            ignore::Error::Partial(errs) => errs.iter().find_map(path),
            _ => None,
        }
    }
    if denied(err) { path(err) } else { None }
}

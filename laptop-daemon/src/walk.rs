//! The worktree walk that `devd init` (finding Dockerfiles) and the scanner
//! (finding what to sync) share, so both see the same files: everything
//! but what git ignores (`.gitignore`, `.git/info/exclude`, the global
//! excludes file), hidden files included, symlinks not followed, and no
//! `.ignore` files or ignore files above the worktree.

use devd_protocol::RelPath;
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// What the walk found: files (with their `lstat`), and the paths it could
/// not read (permission denied).
#[derive(Default)]
pub struct Walked {
    pub files: Vec<(RelPath, std::fs::Metadata)>,
    pub denied: Vec<RelPath>,
}

/// A walker thread's results, handed over in one lock when it finishes.
struct WalkBuffer {
    local: Walked,
    shared: Arc<Mutex<Walked>>,
}

impl Drop for WalkBuffer {
    fn drop(&mut self) {
        let mut shared = self.shared.lock().expect("walk results");
        shared.files.append(&mut self.local.files);
        shared.denied.append(&mut self.local.denied);
    }
}

/// The scanner's walk of `root`: every file and symlink but what git
/// ignores, not descending into `.git` nor into nested repositories
/// (submodules), limited to `scope` (paths, their ancestors and what is
/// below them), on two threads, sorted; and what could not be read.
pub fn scoped(root: &Path, scope: Option<&[RelPath]>) -> Walked {
    let root = root.to_path_buf();
    let scope: Option<Arc<Vec<String>>> =
        scope.map(|s| Arc::new(s.iter().map(|p| p.as_str().to_owned()).collect()));
    let mut wb = worktree(&root);
    wb.threads(2);
    let root2 = root.clone();
    wb.filter_entry(move |e| {
        if e.file_name() == ".git" {
            return false;
        }
        // A submodule (or any nested repository) is what git sees: a
        // commit, not files. Its own `.git` marks it.
        if e.depth() > 0
            && e.file_type().is_some_and(|t| t.is_dir())
            && e.path().join(".git").symlink_metadata().is_ok()
        {
            return false;
        }
        let Some(scope) = &scope else { return true };
        let Ok(rel) = e.path().strip_prefix(&root2) else {
            return true;
        };
        let Some(rel) = rel.to_str() else {
            return false;
        };
        if rel.is_empty() {
            return true;
        }
        scope.iter().any(|p| {
            // `rel` is at or below a scope path, or one of its ancestors.
            (p.starts_with(rel) && (p.len() == rel.len() || p.as_bytes()[rel.len()] == b'/'))
                || (rel.starts_with(p.as_str()) && rel.as_bytes().get(p.len()) == Some(&b'/'))
        })
    });
    let out = Arc::new(Mutex::new(Walked::default()));
    wb.build_parallel().run(|| {
            let mut buf = WalkBuffer {
                local: Walked { files: Vec::with_capacity(4096), denied: Vec::new() },
                shared: out.clone(),
            };
            let root = root.clone();
            Box::new(move |res| {
                let entry = match res {
                    Ok(entry) => entry,
                    Err(e) => {
                        if let Some(rel) = permission_denied(&e)
                            .and_then(|p| p.strip_prefix(&root).ok())
                            .and_then(|p| p.to_str())
                            .and_then(|s| RelPath::new(s).ok())
                        {
                            buf.local.denied.push(rel);
                        }
                        return ignore::WalkState::Continue;
                    }
                };
                let Some(ft) = entry.file_type() else { return ignore::WalkState::Continue };
                if ft.is_dir() {
                    return ignore::WalkState::Continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&root) else { return ignore::WalkState::Continue };
                let Some(rel) = rel.to_str().and_then(|s| RelPath::new(s).ok()) else {
                    tracing::warn!(path = %entry.path().display(), "skipping a path devd cannot sync (not UTF-8 or invalid)");
                    return ignore::WalkState::Continue;
                };
                if let Ok(m) = entry.metadata() {
                    buf.local.files.push((rel, m));
                }
                ignore::WalkState::Continue
            })
        });
    let mut all = Arc::try_unwrap(out)
        .map(|m| m.into_inner().expect("walk results"))
        .unwrap_or_default();
    all.files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    all.denied.sort();
    all.denied.dedup();
    all
}

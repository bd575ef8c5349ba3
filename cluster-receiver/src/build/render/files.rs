//! Reading the worktree for a render: every path resolved inside it (a
//! symlink that leads out is refused), every file bounded in size.

use super::RenderError;
use devd_protocol::RelPath;
use std::path::Path;

/// A manifest file larger than this is refused (8 MiB).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Read a worktree file that must stay inside the worktree.
pub fn read(root: &Path, rel: &RelPath) -> Result<String, RenderError> {
    let path = inside(root, rel)?;
    let meta = std::fs::metadata(&path).map_err(|e| RenderError::Read {
        path: rel.to_string(),
        error: e.to_string(),
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(RenderError::Invalid {
            origin: rel.to_string(),
            problem: format!(
                "is {} bytes, more than a manifest may have ({MAX_FILE_BYTES})",
                meta.len()
            ),
        });
    }
    std::fs::read_to_string(&path).map_err(|e| RenderError::Read {
        path: rel.to_string(),
        error: e.to_string(),
    })
}

/// `root/rel` resolved, refused when a symlink takes it outside `root`.
pub fn inside(root: &Path, rel: &RelPath) -> Result<std::path::PathBuf, RenderError> {
    let base = root.canonicalize().map_err(|e| RenderError::Read {
        path: root.display().to_string(),
        error: e.to_string(),
    })?;
    let path = root
        .join(rel.as_str())
        .canonicalize()
        .map_err(|e| RenderError::Read {
            path: rel.to_string(),
            error: e.to_string(),
        })?;
    if !path.starts_with(&base) {
        return Err(RenderError::Escapes {
            path: rel.to_string(),
        });
    }
    Ok(path)
}

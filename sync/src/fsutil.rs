//! Small filesystem helpers shared by the stores: atomic writes,
//! filesystem-wide flushes, private directories.

use std::io::Write;
use std::path::Path;

/// Write `data` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. `mode` sets Unix
/// permissions on the new file.
pub fn write_atomic(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_via_temp(path, data, mode, true)
}

/// Write `data` to `path` atomically (temporary file + rename) without
/// flushing: for data a later [`sync_fs`] makes durable in one go.
pub fn write_atomic_unsynced(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_via_temp(path, data, mode, false)
}

fn write_via_temp(
    path: &Path,
    data: &[u8],
    mode: Option<u32>,
    durable: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    if let Some(m) = mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(m))?;
    }
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `mkdir -p` a directory only its owner may enter (0700, also when it
/// existed): for caches holding copies of files whatever their own modes.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// fsync a directory so that renames in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Flush everything written to the filesystem holding `dir` (syncfs(2)):
/// one call instead of an fsync per file.
pub fn sync_fs(dir: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&f).map_err(std::io::Error::from)
}

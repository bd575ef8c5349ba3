//! Content-addressed blob store on disk: `blobs/ab/abcdef…`, raw content.
//! Every blob is verified (blake3 of its content) before it is stored.

use devd_protocol::ContentId;
use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {id} failed verification: its content hashes to {actual}")]
    Mismatch { id: ContentId, actual: ContentId },
    #[error("blob store I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A directory of blobs named by content id.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Open (creating) the store at `dir`. The store is private to its
    /// owner (directories 0700, blobs 0600): it holds copies of files
    /// whatever their own modes were.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        let io = |source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        };
        crate::fsutil::private_dir(dir).map_err(io)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where blob `id` lives.
    pub fn path(&self, id: &ContentId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(&hex)
    }

    /// True if the store has `id`.
    pub fn has(&self, id: &ContentId) -> bool {
        self.path(id).exists()
    }

    /// Read a blob.
    pub fn get(&self, id: &ContentId) -> Result<Vec<u8>, BlobError> {
        let p = self.path(id);
        std::fs::read(&p).map_err(|source| BlobError::Io {
            path: p.display().to_string(),
            source,
        })
    }

    /// Verify and store `data` as `id` (temporary file + rename; the
    /// journal flushes the filesystem before a generation refers to it).
    pub fn put(&self, id: &ContentId, data: &[u8]) -> Result<(), BlobError> {
        let actual = ContentId::of(data);
        if actual != *id {
            return Err(BlobError::Mismatch { id: *id, actual });
        }
        let p = self.path(id);
        if p.exists() {
            return Ok(());
        }
        let io = |source| BlobError::Io {
            path: p.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p.parent().expect("fanout dir"))
            .map_err(io)?;
        crate::fsutil::write_atomic_unsynced(&p, data, Some(0o600)).map_err(io)
    }

    /// A writer for a blob whose content is produced piece by piece (a
    /// large blob being decoded): it is hashed as it is written to a
    /// temporary file in the store, and [`BlobWriter::commit`] verifies
    /// and renames it into place. Nothing is held in memory.
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let file = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&self.dir)
            .map_err(|source| BlobError::Io {
                path: self.dir.display().to_string(),
                source,
            })?;
        Ok(BlobWriter {
            store: self.clone(),
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
        })
    }

    /// Delete every blob not in `keep`. Returns how many were removed.
    pub fn retain(&self, keep: &HashSet<ContentId>) -> Result<usize, BlobError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| BlobError::Io { path, source }
        };
        let mut removed = 0;
        for fan in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let fan = fan.map_err(io(&self.dir))?.path();
            if !fan.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&fan).map_err(io(&fan))? {
                let f = f.map_err(io(&fan))?.path();
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                match ContentId::from_hex(name) {
                    Some(id) if keep.contains(&id) => {}
                    _ => {
                        std::fs::remove_file(&f).map_err(io(&f))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// A blob being written (see [`BlobStore::writer`]); dropped without
/// [`BlobWriter::commit`], its temporary file is removed.
pub struct BlobWriter {
    store: BlobStore,
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    hasher: blake3::Hasher,
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Verify that what was written hashes to `id`, and store it as `id`
    /// (a blob already present is kept; the journal flushes the filesystem
    /// before a generation refers to it).
    pub fn commit(self, id: &ContentId) -> Result<(), BlobError> {
        let actual = ContentId::from(self.hasher.finalize());
        if actual != *id {
            return Err(BlobError::Mismatch { id: *id, actual });
        }
        let p = self.store.path(id);
        let io = |source| BlobError::Io {
            path: p.display().to_string(),
            source,
        };
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        if p.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(p.parent().expect("fanout dir")).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
        file.persist(&p).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_retain_collects() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = ContentId::of(b"a");
        let b = ContentId::of(b"b");
        s.put(&a, b"a").unwrap();
        s.put(&b, b"b").unwrap();
        let err = s.put(&a, b"not a").unwrap_err().to_string();
        assert!(err.contains("failed verification"), "{err}");
        assert_eq!(s.get(&a).unwrap(), b"a");
        assert_eq!(s.retain(&[a].into_iter().collect()).unwrap(), 1);
        assert!(s.has(&a) && !s.has(&b));
    }

    #[test]
    fn writer_hashes_what_it_writes_and_leaves_nothing_behind() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let id = ContentId::of(b"hello world");
        let mut w = s.writer().unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        w.commit(&id).unwrap();
        assert_eq!(s.get(&id).unwrap(), b"hello world");
        let mut w = s.writer().unwrap();
        w.write_all(b"hello there").unwrap();
        let err = w.commit(&id).unwrap_err().to_string();
        assert!(err.contains("failed verification"), "{err}");
        // Only the fan-out directory of the stored blob is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

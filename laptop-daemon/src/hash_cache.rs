//! Content hashes keyed by (path, size, mtime, ctime, inode), so a file
//! whose stat data did not change is never read again; persisted so a
//! restart does not re-hash the tree.
//!
//! Racy timestamps: mtimes come from a coarse clock, so a same-size rewrite
//! within one tick keeps the stat data. An entry is trusted only when it was
//! recorded clearly after the file's mtime and ctime (git's racy-entry
//! rule).

use devd_protocol::{ContentId, GitOid};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// An entry is racy unless recorded at least this long after the mtime.
pub const RACY_NS: i128 = 100_000_000;

/// Stat data that identifies a version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    /// From `lstat` metadata.
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cached {
    stamp: Stamp,
    id: ContentId,
    git: Option<GitOid>,
    recorded_ns: i128,
}

impl Cached {
    /// Recorded too soon after the file last changed to be trusted: a
    /// rewrite in the same clock tick would keep the stat data. The later
    /// of mtime and ctime counts (an mtime can be set back; ctime cannot).
    fn racy(&self) -> bool {
        self.recorded_ns - self.stamp.mtime_ns.max(self.stamp.ctime_ns) < RACY_NS
    }
}

/// Hashes of one worktree's files.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct HashCache {
    entries: HashMap<String, Cached>,
    #[serde(skip)]
    dirty: bool,
}

/// Hashes of one file version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashes {
    pub id: ContentId,
    pub git: GitOid,
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl HashCache {
    /// Load from `path`; an unreadable cache is simply empty.
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default()
    }

    /// Save to `path` if anything changed.
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = postcard::to_stdvec(&self).expect("cache serializes");
        devd_sync::fsutil::write_atomic(path, &bytes, Some(0o600))?;
        self.dirty = false;
        Ok(())
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hashes of `content` (a file's bytes, or a symlink's target) for
    /// `rel`, from the cache when `stamp` matches and the entry is not racy.
    pub fn get(&self, rel: &str, stamp: &Stamp) -> Option<Hashes> {
        let c = self.entries.get(rel)?;
        (c.stamp == *stamp && !c.racy())
            .then(|| c.git.map(|git| Hashes { id: c.id, git }))
            .flatten()
    }

    /// Record hashes computed for `rel` at `stamp`.
    pub fn put(&mut self, rel: &str, stamp: Stamp, h: Hashes) {
        self.entries.insert(
            rel.to_owned(),
            Cached {
                stamp,
                id: h.id,
                git: Some(h.git),
                recorded_ns: now_ns(),
            },
        );
        self.dirty = true;
    }

    /// Hash `data` and record it.
    pub fn hash(&mut self, rel: &str, stamp: Stamp, data: &[u8]) -> Hashes {
        let h = Hashes {
            id: ContentId::of(data),
            git: devd_sync::git::git_blob_oid(data),
        };
        self.put(rel, stamp, h);
        h
    }

    /// Forget paths for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|k, _| keep(k));
        self.dirty |= before != self.entries.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racy_entries_are_not_trusted_and_cache_persists() {
        let d = tempfile::tempdir().unwrap();
        let mut c = HashCache::default();
        let now = now_ns();
        let fresh = Stamp {
            size: 1,
            mtime_ns: now,
            ctime_ns: now,
            ino: 1,
        };
        c.hash("a", fresh, b"x");
        assert_eq!(c.get("a", &fresh), None, "recorded within the racy window");
        let old = Stamp {
            size: 1,
            mtime_ns: now - 10 * RACY_NS,
            ctime_ns: 0,
            ino: 1,
        };
        let h = c.hash("b", old, b"y");
        assert_eq!(c.get("b", &old), Some(h));
        assert_eq!(c.get("b", &Stamp { size: 2, ..old }), None);
        // An old mtime (restored with `touch -r`) but a fresh ctime: the
        // content changed just now, so the entry is racy too.
        let restored = Stamp {
            ctime_ns: now,
            ..old
        };
        c.hash("c", restored, b"z");
        assert_eq!(c.get("c", &restored), None, "ctime within the racy window");
        let p = d.path().join("cache");
        c.save(&p).unwrap();
        let back = HashCache::load(&p);
        assert_eq!(back.get("b", &old), Some(h));
        assert_eq!(back.len(), 3);
    }
}

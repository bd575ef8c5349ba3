//! The scanner: computes the overlay (worktree vs base tree) for the whole
//! worktree or for the paths a watcher event named. The only part of the
//! daemon that reads the worktree.
//!
//! A file is unchanged when its index entry has the base's blob id and
//! fresh stat data (git's own shortcut), or when its git blob id, from the
//! hash cache or hashed now, equals the base's. `.gitignore` (and
//! `.git/info/exclude`, the global excludes file) decide what is untracked
//! but ignored; `.devdignore` at the root names files that never leave the
//! laptop (the receiver keeps the base version of tracked ones).

use crate::hash_cache::{HashCache, Stamp};
use crate::repo::{BaseInfo, IndexSnapshot, IndexStat, Repo, RepoError};
use crate::walk::Walked;
use devd_protocol::message::Base;
use devd_protocol::tree::{BaseTree, EntryKind, TreeEntry};
use devd_protocol::{Entry, Overlay, RelPath};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors while scanning.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The base the overlay is computed against.
#[derive(Clone, Debug)]
pub struct ScanBase {
    pub base: Base,
    pub info: Option<BaseInfo>,
    pub tree: Arc<BaseTree>,
}

/// Figures of one scan.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOutcome {
    /// The overlay or the base changed.
    pub changed: bool,
    pub base_changed: bool,
    pub files_walked: usize,
    pub files_hashed: usize,
    pub elapsed: Duration,
}

/// Scanner settings.
#[derive(Clone, Debug)]
pub struct ScanConfig {
    pub upstream: Option<String>,
    pub max_file_bytes: u64,
}

/// Owns the current overlay of one worktree.
pub struct Scanner {
    repo: Arc<Repo>,
    workdir: PathBuf,
    cfg: ScanConfig,
    devdignore: Option<ignore::gitignore::Gitignore>,
    cache: HashCache,
    cache_path: PathBuf,
    index: IndexSnapshot,
    base: ScanBase,
    overlay: Overlay,
    upload_mode: bool,
    /// Files not synced, with the reason (e.g. too large).
    pub skipped: HashMap<RelPath, String>,
    /// The paths in `skipped` because they cannot be read (permission
    /// denied): re-checked by every scan that covers them.
    unreadable: BTreeSet<RelPath>,
    /// Files held back while they keep changing (see [`Scanner::hold`]).
    held: HashMap<RelPath, Held>,
    /// Files that changed while being sent this many times (listed in the
    /// status from [`UNSTABLE_AFTER`] on), until they settle.
    unstable: HashMap<RelPath, u32>,
    /// Where the progress of long scans goes.
    progress: Option<crate::progress::Reporter>,
    /// Bytes read to hash files, for progress.
    bytes_hashed: u64,
}

/// Tries after which a file that keeps changing while being sent is
/// listed as unstable.
pub const UNSTABLE_AFTER: u32 = 3;

/// A file held at the version the receiver has, until `until`: it changed
/// while being sent, and is retried later (with backoff) rather than
/// failing every sync.
#[derive(Debug)]
struct Held {
    keep: Option<Entry>,
    until: Instant,
}

/// Why an unreadable path is listed in the status.
const UNREADABLE: &str =
    "permission denied: devd cannot read it; not synced (the receiver keeps its previous version)";

/// Result of scanning part of the worktree.
struct ScopeScan {
    entries: Vec<(RelPath, Entry)>,
    /// Every path the walk yielded, sorted.
    walked_paths: Vec<RelPath>,
    walked: usize,
    hashed: usize,
}

/// Paths whose scan scope is this many or more get a full scan instead.
pub const FULL_SCAN_THRESHOLD: usize = 256;

fn is_dir_meta(m: &std::fs::Metadata) -> bool {
    m.file_type().is_dir()
}

impl Scanner {
    /// A scanner with an empty overlay; call [`Scanner::full_scan`] next.
    pub fn new(repo: Arc<Repo>, cfg: ScanConfig, state_dir: &Path) -> Self {
        let workdir = repo.workdir().to_owned();
        let cache_path = state_dir.join("hash-cache");
        Self {
            repo,
            cfg,
            devdignore: None,
            cache: HashCache::load(&cache_path),
            cache_path,
            index: IndexSnapshot::default(),
            base: ScanBase {
                base: Base::Uploaded,
                info: None,
                tree: Arc::default(),
            },
            overlay: Overlay::new(),
            upload_mode: false,
            skipped: HashMap::new(),
            unreadable: BTreeSet::new(),
            held: HashMap::new(),
            unstable: HashMap::new(),
            progress: None,
            bytes_hashed: 0,
            workdir,
        }
    }

    /// Report the progress of long scans (many files) to `r`.
    pub fn set_progress(&mut self, r: crate::progress::Reporter) {
        self.progress = Some(r);
    }

    /// The current overlay.
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The current base.
    pub fn base(&self) -> &ScanBase {
        &self.base
    }

    /// The repository.
    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    /// Whether the laptop uploads the base itself (receiver cannot fetch it).
    pub fn upload_mode(&self) -> bool {
        self.upload_mode
    }

    /// Switch to (or out of) uploading the base; takes effect at the next
    /// full scan.
    pub fn set_upload_mode(&mut self, on: bool) {
        self.upload_mode = on;
    }

    /// `rel` changed while it was being sent (`tries` times in a row): keep
    /// it at `keep` (what the receiver has; `None`: the base version or
    /// nothing) until `until`, so the rest of the worktree syncs; the next
    /// scan of it after `until` tries again.
    pub fn hold(&mut self, rel: RelPath, keep: Option<Entry>, until: Instant, tries: u32) {
        if tries >= UNSTABLE_AFTER && self.unstable.insert(rel.clone(), tries).is_none() {
            tracing::warn!(path = %rel, tries, "file keeps changing while it is being sent; it is sent once it settles");
        }
        self.unstable.insert(rel.clone(), tries);
        self.held.insert(rel, Held { keep, until });
    }

    /// `devd sync` asks for the current state: held files are tried again
    /// now (a file that changes during that send is held again).
    pub fn release_holds(&mut self) {
        self.held.clear();
    }

    /// These files were sent (or are gone): no longer unstable.
    pub fn settled(&mut self, paths: &[RelPath]) {
        for p in paths {
            self.unstable.remove(p);
        }
    }

    /// Files held back now.
    pub fn held_paths(&self) -> Vec<RelPath> {
        let now = Instant::now();
        let mut v: Vec<RelPath> = self
            .held
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }

    /// What is not synced and why, for the status: skipped files and
    /// files listed as unstable.
    pub fn not_synced(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .skipped
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .chain(
                self.unstable
                    .iter()
                    .filter(|(_, n)| **n >= UNSTABLE_AFTER)
                    .map(|(p, n)| format!("{p}: unstable, changed while being sent {n} times; sent once it stops changing")),
            )
            .collect();
        v.sort();
        v
    }

    /// Persist the hash cache.
    pub fn save_cache(&mut self) {
        if let Err(e) = self.cache.save(&self.cache_path) {
            tracing::warn!(error = %e, path = %self.cache_path.display(), "cannot save the hash cache");
        }
    }

    /// Re-read the index (after `.git/index` changed).
    pub fn refresh_index(&mut self) -> Result<(), ScanError> {
        self.index = self.repo.index()?;
        Ok(())
    }

    fn refresh_base(&mut self) -> Result<bool, ScanError> {
        let info = self.repo.base(self.cfg.upstream.as_deref())?;
        // A new base commit may be one the receiver can fetch: try again.
        if self.upload_mode
            && let Some(old) = &self.base.info
            && old.commit != info.commit
        {
            tracing::info!(base = %info.commit, "base moved; asking the receiver to fetch it again");
            self.upload_mode = false;
        }
        let want = if self.upload_mode {
            Base::Uploaded
        } else {
            Base::Commit(info.commit)
        };
        let changed = want != self.base.base;
        if changed {
            let tree = match want {
                Base::Commit(c) => Arc::new(self.repo.tree(c)?),
                Base::Uploaded => Arc::default(),
            };
            tracing::info!(base = %info.commit, upstream = ?info.upstream, upload = self.upload_mode, "sync base");
            self.base = ScanBase {
                base: want,
                info: Some(info),
                tree,
            };
        } else {
            self.base.info = Some(info);
        }
        Ok(changed)
    }

    fn load_devdignore(&mut self) {
        let path = self.workdir.join(".devdignore");
        self.devdignore = if path.exists() {
            let mut b = ignore::gitignore::GitignoreBuilder::new(&self.workdir);
            if let Some(e) = b.add(&path) {
                tracing::warn!(error = %e, "problem in .devdignore");
            }
            b.build()
                .map_err(|e| tracing::warn!(error = %e, "ignoring .devdignore"))
                .ok()
        } else {
            None
        };
    }

    fn devd_ignored(&self, rel: &RelPath) -> bool {
        self.devdignore.as_ref().is_some_and(|g| {
            g.matched_path_or_any_parents(rel.as_str(), false)
                .is_ignore()
        })
    }

    /// Walk the worktree (honouring ignore files), limited to `scope`.
    fn walk(&self, scope: Option<&[RelPath]>) -> Walked {
        crate::walk::scoped(&self.workdir, scope)
    }

    /// `rel` cannot be read: list it, and keep what the receiver has (its
    /// entry in the overlay sent so far, or the base's version).
    fn unreadable(&mut self, rel: &RelPath) -> Option<Entry> {
        if self.unreadable.insert(rel.clone()) {
            tracing::warn!(path = %rel, "{UNREADABLE}");
        }
        self.skipped.insert(rel.clone(), UNREADABLE.to_owned());
        self.overlay.get(rel).cloned()
    }

    /// Forget the unreadable paths a scan of `scope` checks again.
    fn recheck_unreadable(&mut self, scope: Option<&[RelPath]>) {
        let again: Vec<RelPath> = self
            .unreadable
            .iter()
            .filter(|u| {
                scope.is_none_or(|s| s.iter().any(|p| u.starts_with(p) || p.starts_with(u)))
            })
            .cloned()
            .collect();
        for u in again {
            self.unreadable.remove(&u);
            self.skipped.remove(&u);
        }
    }

    /// Git's stat comparison (`ie_match_stat` with `core.checkStat =
    /// default`): size, mtime, ctime, inode, uid and gid all as recorded,
    /// and the entry not racy. ctime matters: `touch -r` (or an editor that
    /// restores the mtime) cannot restore it, so a same-size rewrite with
    /// the old mtime still shows.
    fn index_fresh(&self, ix: &IndexStat, m: &std::fs::Metadata) -> bool {
        let stat_ok = ix.size == m.size() as u32
            && ix.mtime_secs == m.mtime() as u32
            && ix.mtime_nsecs == m.mtime_nsec() as u32
            && ix.ctime_secs == m.ctime() as u32
            && ix.ctime_nsecs == m.ctime_nsec() as u32
            && ix.ino == m.ino() as u32
            && ix.uid == m.uid()
            && ix.gid == m.gid();
        if !stat_ok {
            return false;
        }
        // Racy: changed in the same tick as (or after) the index was
        // written. The later of mtime and ctime counts, since a restored
        // mtime says nothing about when the content changed.
        let Some(index_mtime) = self.index.mtime else {
            return false;
        };
        let Ok(since) = index_mtime.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let mtime_ns = ix.mtime_secs as i128 * 1_000_000_000 + ix.mtime_nsecs as i128;
        let ctime_ns = ix.ctime_secs as i128 * 1_000_000_000 + ix.ctime_nsecs as i128;
        since.as_nanos() as i128 - mtime_ns.max(ctime_ns) >= crate::hash_cache::RACY_NS
    }

    /// The overlay entry of one path that exists in the worktree, `None`
    /// when it equals the base.
    fn evaluate(
        &mut self,
        rel: &RelPath,
        m: &std::fs::Metadata,
        base: Option<TreeEntry>,
        hashed: &mut usize,
    ) -> Result<Option<Entry>, ScanError> {
        let full = || self.workdir.join(rel.as_str());
        let io = |source| ScanError::Io {
            path: full().display().to_string(),
            source,
        };
        if let Some(h) = self.held.get(rel) {
            if Instant::now() < h.until {
                return Ok(h.keep.clone());
            }
            self.held.remove(rel);
        }
        let ft = m.file_type();
        let was_skipped = self.skipped.remove(rel).is_some();
        if ft.is_symlink() {
            let target = match std::fs::read_link(full()) {
                Ok(t) => t,
                // Gone since the walk (an editor's temporary file): absent.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(base.map(|_| Entry::Deleted));
                }
                Err(e) => return Err(io(e)),
            };
            let Some(target) = target.to_str().map(str::to_owned) else {
                tracing::warn!(path = %rel, "symlink target is not UTF-8; not synced");
                return Ok(None);
            };
            if let Some(b) = base
                && b.kind == EntryKind::Symlink
                && devd_sync::git::git_blob_oid(target.as_bytes()) == b.oid
            {
                return Ok(None);
            }
            return Ok(Some(Entry::Symlink { target }));
        }
        if !ft.is_file() {
            // A FIFO, socket or device has no content to sync: as far as
            // the receiver is concerned the path is gone.
            let kind = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else {
                "not a regular file"
            };
            let why = format!("{kind}, not synced (the receiver has no file there)");
            if !was_skipped {
                tracing::warn!(path = %rel, "{why}");
            }
            self.skipped.insert(rel.clone(), why);
            return Ok(base.map(|_| Entry::Deleted));
        }
        let perm = m.permissions().mode();
        let exec = perm & 0o100 != 0;
        // A mode narrower than git's (a 0600 file) keeps the file in the
        // overlay even when its content is the base's: the receiver must
        // not widen it.
        let mode = devd_protocol::overlay::narrowed_mode(exec, perm);
        if m.len() > self.cfg.max_file_bytes {
            let why = format!(
                "{} bytes exceeds sync.max_file_bytes = {}",
                m.len(),
                self.cfg.max_file_bytes
            );
            if !was_skipped {
                tracing::warn!(path = %rel, "{why}; not synced");
            }
            self.skipped.insert(rel.clone(), why);
            return Ok(None);
        }
        let kind_matches = mode.is_none()
            && base.is_some_and(|b| match b.kind {
                EntryKind::File => !exec,
                EntryKind::Exec => exec,
                EntryKind::Symlink => false,
            });
        if kind_matches
            && let (Some(b), Some(ix)) = (base, self.index.entries.get(rel.as_str()))
            && ix.oid == b.oid
            && self.index_fresh(ix, m)
        {
            return Ok(None);
        }
        let stamp = Stamp::of(m);
        let h = match self.cache.get(rel.as_str(), &stamp) {
            Some(h) => h,
            None => {
                let data = match std::fs::read(full()) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(base.map(|_| Entry::Deleted));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Ok(self.unreadable(rel));
                    }
                    Err(e) => return Err(io(e)),
                };
                *hashed += 1;
                self.bytes_hashed += data.len() as u64;
                // The file may change between stat and read; hash what was
                // read and key it by the stat taken before (a later change
                // gets a new event and a new stamp).
                self.cache.hash(rel.as_str(), stamp, &data)
            }
        };
        if kind_matches && base.is_some_and(|b| b.oid == h.git) {
            return Ok(None);
        }
        Ok(Some(Entry::File {
            id: h.id,
            exec,
            mode,
        }))
    }

    fn scan_scope(&mut self, scope: Option<&[RelPath]>) -> Result<ScopeScan, ScanError> {
        let t0 = Instant::now();
        self.recheck_unreadable(scope);
        let Walked {
            files: walked,
            denied,
        } = self.walk(scope);
        tracing::trace!(
            ms = t0.elapsed().as_millis() as u64,
            files = walked.len(),
            denied = denied.len(),
            "walked"
        );
        let under_denied = |rel: &RelPath| denied.iter().any(|d| rel.starts_with(d));
        let tree = self.base.tree.clone();
        // Base entries in scope, in path order (scope prefixes are sorted and
        // disjoint, so their ranges concatenate in order).
        let in_scope: Vec<(&RelPath, TreeEntry)> = match scope {
            None => tree.iter().map(|(p, e)| (p, *e)).collect(),
            Some(prefixes) => prefixes
                .iter()
                .flat_map(|p| {
                    tree.range(p.clone()..)
                        .take_while(move |(rel, _)| rel.as_str().starts_with(p.as_str()))
                        .filter(move |(rel, _)| rel.starts_with(p))
                        .map(|(r, e)| (r, *e))
                })
                .collect(),
        };
        // Merge-join the (sorted) walk with the base entries.
        let mut hashed = 0;
        let mut out = Vec::new();
        let progress = self.progress.clone();
        let _finish = progress
            .clone()
            .map(crate::progress::Reporter::finish_on_drop);
        let bytes0 = self.bytes_hashed;
        let total = walked.len().max(in_scope.len()) as u64;
        let mut done = 0u64;
        let mut w = walked.iter().peekable();
        let mut t = in_scope.into_iter().peekable();
        loop {
            let order = match (w.peek(), t.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((wp, _)), Some((tp, _))) => wp.cmp(tp),
            };
            if let Some(r) = &progress {
                r.update(done.min(total), total, self.bytes_hashed - bytes0, 0);
            }
            done += 1;
            match order {
                std::cmp::Ordering::Less => {
                    let (rel, m) = w.next().expect("peeked");
                    if !self.devd_ignored(rel)
                        && let Some(e) = self.evaluate(rel, m, None, &mut hashed)?
                    {
                        out.push((rel.clone(), e));
                    }
                }
                std::cmp::Ordering::Equal => {
                    let (rel, m) = w.next().expect("peeked");
                    let (_, base) = t.next().expect("peeked");
                    if !self.devd_ignored(rel)
                        && let Some(e) = self.evaluate(rel, m, Some(base), &mut hashed)?
                    {
                        out.push((rel.clone(), e));
                    }
                }
                std::cmp::Ordering::Greater => {
                    // In the base but not walked: deleted, or tracked but ignored.
                    let (rel, base) = t.next().expect("peeked");
                    // Below a directory that cannot be listed: kept as the
                    // receiver has it (added after the merge).
                    if self.devd_ignored(rel) || under_denied(rel) {
                        continue;
                    }
                    match std::fs::symlink_metadata(self.workdir.join(rel.as_str())) {
                        Ok(m) if !is_dir_meta(&m) => {
                            if let Some(e) = self.evaluate(rel, &m, Some(base), &mut hashed)? {
                                out.push((rel.clone(), e));
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            if let Some(e) = self.unreadable(rel) {
                                out.push((rel.clone(), e));
                            }
                        }
                        _ => out.push((rel.clone(), Entry::Deleted)),
                    }
                }
            }
        }
        for d in &denied {
            self.unreadable(d);
            let kept: Vec<(RelPath, Entry)> = self
                .overlay
                .iter_prefix(d)
                .filter(|(k, _)| *k != d)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            out.extend(kept);
        }
        let n_walked = walked.len();
        Ok(ScopeScan {
            entries: out,
            walked_paths: walked.into_iter().map(|(p, _)| p).collect(),
            walked: n_walked,
            hashed,
        })
    }

    /// Rescan everything: base, index, ignore rules, the whole worktree.
    pub fn full_scan(&mut self) -> Result<ScanOutcome, ScanError> {
        let started = Instant::now();
        let before = (self.base.base, self.overlay.digest());
        let base_changed = self.refresh_base()?;
        let t_base = started.elapsed();
        self.index = self.repo.index()?;
        let t_index = started.elapsed();
        self.load_devdignore();
        let ScopeScan {
            entries,
            walked_paths,
            walked,
            hashed,
        } = self.scan_scope(None)?;
        tracing::debug!(
            base_ms = t_base.as_millis() as u64,
            index_ms = (t_index - t_base).as_millis() as u64,
            walk_and_compare_ms = (started.elapsed() - t_index).as_millis() as u64,
            "full scan phases"
        );
        self.overlay = entries.into_iter().collect();
        // Forget hashes of files that no longer exist (the walk is sorted),
        // and the reasons for skipping them.
        let exists = |k: &str| walked_paths.binary_search_by(|p| p.as_str().cmp(k)).is_ok();
        self.cache.retain(exists);
        let unreadable = &self.unreadable;
        self.skipped
            .retain(|k, _| exists(k.as_str()) || unreadable.contains(k));
        self.save_cache();
        let changed = before != (self.base.base, self.overlay.digest());
        Ok(ScanOutcome {
            changed,
            base_changed,
            files_walked: walked,
            files_hashed: hashed,
            elapsed: started.elapsed(),
        })
    }

    /// Rescan the given worktree paths (absolute, from watcher events).
    pub fn rescan(&mut self, paths: &[PathBuf]) -> Result<ScanOutcome, ScanError> {
        let mut prefixes: Vec<RelPath> = Vec::new();
        for p in paths {
            let Ok(rel) = p.strip_prefix(&self.workdir) else {
                continue;
            };
            let Some(s) = rel.to_str() else { continue };
            if s.is_empty() {
                return self.full_scan();
            }
            if s == ".devdignore" || s == ".gitignore" {
                return self.full_scan();
            }
            let Ok(r) = RelPath::new(s) else { continue };
            // A nested `.gitignore` governs its directory: added, edited or
            // deleted, everything below may have changed sides.
            if r.as_str().rsplit('/').next() == Some(".gitignore") {
                match r.parent() {
                    Some(dir) => prefixes.push(dir),
                    None => return self.full_scan(),
                }
                continue;
            }
            prefixes.push(r);
        }
        if prefixes.is_empty() {
            return Ok(ScanOutcome::default());
        }
        prefixes.sort();
        prefixes.dedup();
        // Drop paths covered by another prefix.
        let mut reduced: Vec<RelPath> = Vec::new();
        for p in prefixes {
            if !reduced.last().is_some_and(|q| p.starts_with(q)) {
                reduced.push(p);
            }
        }
        if reduced.len() >= FULL_SCAN_THRESHOLD {
            return self.full_scan();
        }
        let started = Instant::now();
        let before = self.overlay.digest();
        let ScopeScan {
            entries,
            walked,
            hashed,
            ..
        } = self.scan_scope(Some(&reduced))?;
        for p in &reduced {
            let old: Vec<RelPath> = self
                .overlay
                .iter_prefix(p)
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                self.overlay.remove(&k);
            }
        }
        for (k, e) in entries {
            self.overlay.insert(k, e);
        }
        let changed = before != self.overlay.digest();
        Ok(ScanOutcome {
            changed,
            base_changed: false,
            files_walked: walked,
            files_hashed: hashed,
            elapsed: started.elapsed(),
        })
    }

    /// Read the content of an overlay file for sending; `None` if it changed
    /// since the scan (a rescan follows).
    pub fn read_blob(&self, rel: &RelPath, id: &devd_protocol::ContentId) -> Option<Vec<u8>> {
        let data = std::fs::read(self.workdir.join(rel.as_str())).ok()?;
        (devd_protocol::ContentId::of(&data) == *id).then_some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let st = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// An empty git repository in a temporary directory (which also holds
    /// the scanner's state).
    fn new_repo() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let wd = tmp.path().join("repo");
        std::fs::create_dir_all(&wd).unwrap();
        git(&wd, &["init", "-q"]);
        (tmp, wd)
    }

    /// A scanner of the repository at `wd`, its state in `tmp`.
    fn scanner(tmp: &tempfile::TempDir, wd: &Path) -> Scanner {
        let repo = Arc::new(Repo::discover(wd).unwrap());
        let cfg = ScanConfig {
            upstream: None,
            max_file_bytes: 1 << 20,
        };
        Scanner::new(repo, cfg, tmp.path())
    }

    fn write(dir: &Path, rel: &str, data: &str) {
        let f = dir.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }

    /// The overlay names exactly the paths that differ from the base, with
    /// the right kind of entry, for full scans and path-limited rescans.
    #[test]
    fn overlay_has_exactly_the_differences() {
        let (tmp, wd) = new_repo();
        write(&wd, "keep.txt", "same\n");
        write(&wd, "edit.txt", "old\n");
        write(&wd, "gone.txt", "bye\n");
        write(&wd, "run.sh", "#!/bin/sh\n");
        write(&wd, "tracked.log", "tracked although ignored\n");
        write(&wd, ".gitignore", "*.log\n");
        std::os::unix::fs::symlink("keep.txt", wd.join("link")).unwrap();
        git(&wd, &["add", "-A", "-f"]);
        git(&wd, &["commit", "-qm", "base"]);

        let mut s = scanner(&tmp, &wd);
        s.full_scan().unwrap();
        assert!(s.overlay().is_empty(), "clean worktree: {:?}", s.overlay());

        write(&wd, "edit.txt", "new\n");
        std::fs::remove_file(wd.join("gone.txt")).unwrap();
        std::fs::set_permissions(wd.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        write(&wd, "new/deep/file.rs", "fn main() {}\n");
        write(&wd, "noise.log", "ignored\n");
        write(&wd, "tracked.log", "changed\n");
        write(&wd, "secret.env", "TOKEN=1\n");
        write(&wd, ".devdignore", "secret.env\n");
        std::fs::remove_file(wd.join("link")).unwrap();
        std::os::unix::fs::symlink("edit.txt", wd.join("link")).unwrap();
        let out = s.full_scan().unwrap();
        assert!(out.changed);
        let got: Vec<(String, &'static str)> = s
            .overlay()
            .iter()
            .map(|(k, e)| {
                let kind = match e {
                    Entry::File { exec: true, .. } => "exec",
                    Entry::File { .. } => "file",
                    Entry::Symlink { .. } => "symlink",
                    Entry::Deleted => "deleted",
                };
                (k.as_str().to_owned(), kind)
            })
            .collect();
        let want: Vec<(String, &str)> = [
            (".devdignore", "file"),
            ("edit.txt", "file"),
            ("gone.txt", "deleted"),
            ("link", "symlink"),
            ("new/deep/file.rs", "file"),
            ("run.sh", "exec"),
            ("tracked.log", "file"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), *b))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            s.overlay().get(&p("edit.txt")),
            Some(&Entry::File {
                id: devd_protocol::ContentId::of(b"new\n"),
                exec: false,
                mode: None,
            })
        );

        // A path-limited rescan sees a revert and a new file, and agrees
        // with a full scan.
        write(&wd, "edit.txt", "old\n");
        write(&wd, "new/deep/second.rs", "// 2\n");
        s.rescan(&[wd.join("edit.txt"), wd.join("new")]).unwrap();
        assert_eq!(
            s.overlay().get(&p("edit.txt")),
            None,
            "reverted file leaves the overlay"
        );
        assert!(s.overlay().get(&p("new/deep/second.rs")).is_some());
        let partial = s.overlay().clone();
        s.full_scan().unwrap();
        assert_eq!(s.overlay(), &partial);
    }

    /// A same-size rewrite whose mtime is set back (`touch -r`) keeps size,
    /// mtime and inode; only ctime tells. The index shortcut and the hash
    /// cache compare it as git does, so the edit is in the overlay, and a
    /// second same-size rewrite (mtime restored again) is seen too.
    #[test]
    fn same_size_edit_with_restored_mtime_is_seen() {
        let (tmp, wd) = new_repo();
        write(&wd, "a.txt", "aaaa\n");
        git(&wd, &["add", "-A"]);
        git(&wd, &["commit", "-qm", "base"]);
        let mtime = std::fs::metadata(wd.join("a.txt"))
            .unwrap()
            .modified()
            .unwrap();
        // Let the entry age past the racy window, then refresh the index
        // (as `git status` does), so its stat data is trusted.
        std::thread::sleep(Duration::from_millis(300));
        git(&wd, &["update-index", "--refresh"]);
        std::thread::sleep(Duration::from_millis(300));

        let mut s = scanner(&tmp, &wd);
        s.full_scan().unwrap();
        assert!(s.overlay().is_empty(), "clean: {:?}", s.overlay());

        let rewrite = |data: &str| {
            // In place: same inode, same size; then the old mtime back.
            std::fs::write(wd.join("a.txt"), data).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(wd.join("a.txt"))
                .unwrap();
            f.set_modified(mtime).unwrap();
        };
        rewrite("bbbb\n");
        std::thread::sleep(Duration::from_millis(300));
        s.full_scan().unwrap();
        assert_eq!(
            s.overlay().get(&p("a.txt")),
            Some(&Entry::File {
                id: devd_protocol::ContentId::of(b"bbbb\n"),
                exec: false,
                mode: None,
            }),
            "the same-size edit with the mtime restored is lost"
        );
        rewrite("cccc\n");
        std::thread::sleep(Duration::from_millis(300));
        s.rescan(&[wd.join("a.txt")]).unwrap();
        assert_eq!(
            s.overlay().get(&p("a.txt")),
            Some(&Entry::File {
                id: devd_protocol::ContentId::of(b"cccc\n"),
                exec: false,
                mode: None,
            }),
            "the hash cache kept the previous content"
        );
    }

    /// A tracked file made private (0600) is in the overlay with its mode,
    /// content unchanged, so the receiver does not widen it; made 0644
    /// again it leaves the overlay. A group-writable umask's 0664 is git's
    /// mode as far as the receiver is concerned: no entry.
    #[test]
    fn a_narrower_mode_is_an_overlay_entry_and_a_wider_one_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let (tmp, wd) = new_repo();
        write(&wd, "a.txt", "aaaa\n");
        write(&wd, "run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(wd.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        git(&wd, &["add", "-A"]);
        git(&wd, &["commit", "-qm", "base"]);
        let mut s = scanner(&tmp, &wd);
        s.full_scan().unwrap();
        assert!(s.overlay().is_empty(), "clean: {:?}", s.overlay());
        let chmod = |rel: &str, m: u32| {
            std::fs::set_permissions(wd.join(rel), std::fs::Permissions::from_mode(m)).unwrap()
        };

        chmod("a.txt", 0o600);
        chmod("run.sh", 0o700);
        s.rescan(&[wd.join("a.txt"), wd.join("run.sh")]).unwrap();
        assert_eq!(
            s.overlay().get(&p("a.txt")),
            Some(&Entry::File {
                id: devd_protocol::ContentId::of(b"aaaa\n"),
                exec: false,
                mode: Some(0o600),
            })
        );
        assert_eq!(
            s.overlay().get(&p("run.sh")),
            Some(&Entry::File {
                id: devd_protocol::ContentId::of(b"#!/bin/sh\n"),
                exec: true,
                mode: Some(0o700),
            })
        );

        chmod("a.txt", 0o664);
        chmod("run.sh", 0o755);
        s.full_scan().unwrap();
        assert!(
            s.overlay().is_empty(),
            "git's modes again: {:?}",
            s.overlay()
        );
    }
}

//! The laptop's view of the user's repository: HEAD, the sync base
//! (merge-base with the upstream), the origin URL, the index, and object
//! reads. Every call reads refs, HEAD and the index from disk again, so the
//! daemon sees commits, checkouts, fetches and pulls made with the git CLI
//! while it runs; the configuration is re-read when `.git/config` changes.

use devd_protocol::tree::BaseTree;
use devd_protocol::{CommitId, GitOid};
use devd_sync::git::{self as git_store, ReadError as GitError, describe};
use gix::bstr::ByteSlice;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why reading the repository failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no git repository found at or above {}: {detail}; run devd inside a git worktree", dir.display())]
    Discover { dir: PathBuf, detail: String },
    #[error(
        "the repository at {} has no worktree (it is bare); devd syncs a worktree, run it inside a checkout",
        git_dir.display()
    )]
    NoWorktree { git_dir: PathBuf },
    #[error("cannot resolve the path {}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot re-open the repository at {}: {detail}; check that it still exists", workdir.display())]
    Reopen { workdir: PathBuf, detail: String },
    #[error("HEAD of the repository at {} has no commit yet (unborn branch); make a first commit", workdir.display())]
    Unborn { workdir: PathBuf },
    #[error("cannot read {what} in the repository at {}: {detail}", workdir.display())]
    Read {
        what: String,
        workdir: PathBuf,
        detail: String,
    },
    #[error("cannot read the index {}: {detail}; check it with `git status` (remove it and run `git reset` if it is corrupt)", path.display())]
    Index { path: PathBuf, detail: String },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// The stat data and blob id the index records for one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStat {
    pub oid: GitOid,
    /// Git mode bits: 0o100644, 0o100755 or 0o120000.
    pub mode: u32,
    pub size: u32,
    pub mtime_secs: u32,
    pub mtime_nsecs: u32,
    pub ctime_secs: u32,
    pub ctime_nsecs: u32,
    pub ino: u32,
    pub dev: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The index as read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSnapshot {
    /// Stage-0 file and symlink entries by `/`-separated path (conflicted
    /// paths, submodules and sparse directory entries are absent).
    pub entries: HashMap<String, IndexStat>,
    /// Modification time of the index file that was read, for git's
    /// racy-entry rule. `None` when there is no index.
    pub mtime: Option<SystemTime>,
}

/// The sync base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseInfo {
    /// merge-base(HEAD, upstream), or HEAD when no upstream resolves.
    pub commit: CommitId,
    /// The full ref name used, e.g. `refs/remotes/origin/main`; for a
    /// configured rev spec that is not a ref, the spec itself.
    pub upstream: Option<String>,
    /// HEAD at the time of the call.
    pub head: CommitId,
}

/// Identity of a config file's current version: (mtime, length, inode).
type FileStamp = Option<(SystemTime, u64, u64)>;

struct Cached {
    repo: gix::ThreadSafeRepository,
    config: Vec<FileStamp>,
}

/// The user's repository. `Send + Sync`; all methods are blocking.
pub struct Repo {
    workdir: PathBuf,
    git_dir: PathBuf,
    config_files: Vec<PathBuf>,
    cached: Mutex<Cached>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("workdir", &self.workdir)
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

fn git_oid(id: &gix::oid) -> GitOid {
    let mut out = [0u8; 20];
    out.copy_from_slice(&id.as_bytes()[..20]);
    GitOid(out)
}

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn canonical(path: &Path) -> Result<PathBuf, RepoError> {
    path.canonicalize().map_err(|source| RepoError::Path {
        path: path.to_path_buf(),
        source,
    })
}

/// `path` made absolute against `base`, with `.` and `..` resolved lexically
/// (or through the filesystem when it exists).
fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    if let Ok(c) = joined.canonicalize() {
        return c;
    }
    let mut out = PathBuf::new();
    for comp in joined.components() {
        match comp {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl Repo {
    /// The repository containing `dir`. Errors if there is none or it has no
    /// worktree.
    pub fn discover(dir: &Path) -> Result<Repo, RepoError> {
        let repo = gix::discover(dir).map_err(|e| RepoError::Discover {
            dir: dir.to_path_buf(),
            detail: describe(&e),
        })?;
        let Some(workdir) = repo.workdir() else {
            return Err(RepoError::NoWorktree {
                git_dir: repo.git_dir().to_path_buf(),
            });
        };
        let workdir = canonical(workdir)?;
        let git_dir = canonical(repo.git_dir())?;
        let config_files = vec![
            canonical(repo.common_dir())?.join("config"),
            git_dir.join("config.worktree"),
        ];
        let config = config_files.iter().map(|p| stamp(p)).collect();
        tracing::debug!(workdir = %workdir.display(), git_dir = %git_dir.display(), "opened repository");
        Ok(Repo {
            workdir,
            git_dir,
            config_files,
            cached: Mutex::new(Cached {
                repo: repo.into_sync(),
                config,
            }),
        })
    }

    /// Canonical absolute path of the worktree root.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The repository's git directory, e.g. `<workdir>/.git`.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// A handle for the calling thread. Refs, HEAD and loose objects are read
    /// from disk on each access and new packs are picked up on a miss; the
    /// repository is re-opened when its configuration changed.
    fn handle(&self) -> Result<gix::Repository, RepoError> {
        let now: Vec<FileStamp> = self.config_files.iter().map(|p| stamp(p)).collect();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.config != now {
            tracing::debug!(workdir = %self.workdir.display(), "git config changed, re-opening the repository");
            cached.repo =
                gix::ThreadSafeRepository::open(&self.workdir).map_err(|e| RepoError::Reopen {
                    workdir: self.workdir.clone(),
                    detail: describe(&e),
                })?;
            cached.config = now;
        }
        Ok(cached.repo.to_thread_local())
    }

    fn read_err(&self, what: impl Into<String>, e: &gix::Error) -> RepoError {
        RepoError::Read {
            what: what.into(),
            workdir: self.workdir.clone(),
            detail: describe(e),
        }
    }

    fn head_of(&self, repo: &gix::Repository) -> Result<CommitId, RepoError> {
        let mut head = repo.head().map_err(|e| self.read_err("HEAD", &e))?;
        if head.is_unborn() {
            return Err(RepoError::Unborn {
                workdir: self.workdir.clone(),
            });
        }
        let commit = head
            .peel_to_commit()
            .map_err(|e| self.read_err("the commit at HEAD", &e))?;
        Ok(git_oid(&commit.id))
    }

    /// The commit HEAD points to now.
    pub fn head_commit(&self) -> Result<CommitId, RepoError> {
        self.head_of(&self.handle()?)
    }

    /// The commit `rev` (any rev spec: a branch, a tag, a hash, `HEAD~2`)
    /// names.
    pub fn resolve(&self, rev: &str) -> Result<CommitId, RepoError> {
        let repo = self.handle()?;
        let id = repo
            .rev_parse_single(format!("{rev}^{{commit}}").as_str())
            .map_err(|e| self.read_err(format!("the commit {rev:?}"), &e))?;
        Ok(git_oid(&id))
    }

    /// The sync base: merge-base(HEAD, upstream), where the upstream is the
    /// current branch's upstream, else `refs/remotes/origin/HEAD`, else
    /// `configured` (any rev spec). A candidate that does not resolve or has
    /// no common history with HEAD is skipped; with none left the base is
    /// HEAD and `upstream` is `None`.
    pub fn base(&self, configured: Option<&str>) -> Result<BaseInfo, RepoError> {
        let repo = self.handle()?;
        let head = self.head_of(&repo)?;
        let head_id = gix::ObjectId::Sha1(head.0);

        let mut candidates: Vec<(String, gix::ObjectId)> = Vec::new();
        if let Some(c) = self.branch_upstream(&repo) {
            candidates.push(c);
        }
        if let Some(c) = self.origin_head(&repo) {
            candidates.push(c);
        }
        if let Some(spec) = configured
            && let Some(c) = self.configured_upstream(&repo, spec)
        {
            candidates.push(c);
        }

        for (name, id) in candidates {
            match repo.merge_base(head_id, id) {
                Ok(Some(base)) => {
                    let info = BaseInfo {
                        commit: git_oid(&base),
                        upstream: Some(name),
                        head,
                    };
                    tracing::debug!(?info, "sync base");
                    return Ok(info);
                }
                Ok(None) => {
                    tracing::warn!(upstream = %name, %head, "HEAD and the upstream share no history; trying the next candidate")
                }
                Err(e) => {
                    tracing::warn!(upstream = %name, %head, "merge-base failed: {}; trying the next candidate", describe(&e))
                }
            }
        }
        tracing::debug!(%head, "no upstream resolves; the base is HEAD");
        Ok(BaseInfo {
            commit: head,
            upstream: None,
            head,
        })
    }

    /// `refs/remotes/<remote>/<branch>` from branch.<b>.remote/merge, when
    /// HEAD is on a branch and that ref exists.
    fn branch_upstream(&self, repo: &gix::Repository) -> Option<(String, gix::ObjectId)> {
        let branch = match repo.head_name() {
            Ok(Some(name)) => name,
            Ok(None) => return None, // detached
            Err(e) => {
                tracing::warn!("cannot read HEAD's branch: {}", describe(&e));
                return None;
            }
        };
        let tracking = match repo
            .branch_remote_tracking_ref_name(branch.as_ref(), gix::remote::Direction::Fetch)?
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(branch = %branch.as_bstr(), "cannot map the branch's upstream: {}", describe(&e));
                return None;
            }
        };
        let name = tracking.as_bstr().to_string();
        if !name.starts_with("refs/remotes/") {
            tracing::debug!(branch = %branch.as_bstr(), upstream = %name, "upstream is not a remote-tracking ref; ignored");
            return None;
        }
        self.resolve_full_ref(repo, &name).map(|id| (name, id))
    }

    /// `refs/remotes/origin/HEAD`, named after the branch it points to.
    fn origin_head(&self, repo: &gix::Repository) -> Option<(String, gix::ObjectId)> {
        const ORIGIN_HEAD: &str = "refs/remotes/origin/HEAD";
        let mut reference = match repo.try_find_reference(ORIGIN_HEAD) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("cannot read {ORIGIN_HEAD}: {}", describe(&e));
                return None;
            }
        };
        let name = match reference.target() {
            gix::refs::TargetRef::Symbolic(target) => target.as_bstr().to_string(),
            gix::refs::TargetRef::Object(_) => ORIGIN_HEAD.to_owned(),
        };
        match reference.peel_to_commit() {
            Ok(c) => Some((name, c.id)),
            Err(e) => {
                tracing::warn!(
                    "{ORIGIN_HEAD} does not resolve to a commit: {}",
                    describe(&e)
                );
                None
            }
        }
    }

    /// A configured rev spec: a ref (reported by its full name) or any
    /// revision (reported as given).
    fn configured_upstream(
        &self,
        repo: &gix::Repository,
        spec: &str,
    ) -> Option<(String, gix::ObjectId)> {
        if let Ok(Some(mut r)) = repo.try_find_reference(spec)
            && let Ok(c) = r.peel_to_commit()
        {
            return Some((r.name().as_bstr().to_string(), c.id));
        }
        match repo.rev_parse_single(format!("{spec}^{{commit}}").as_str()) {
            Ok(id) => Some((spec.to_owned(), id.detach())),
            Err(e) => {
                tracing::warn!(
                    spec,
                    "the configured upstream does not resolve to a commit: {}",
                    describe(&e)
                );
                None
            }
        }
    }

    fn resolve_full_ref(&self, repo: &gix::Repository, name: &str) -> Option<gix::ObjectId> {
        match repo.try_find_reference(name) {
            Ok(Some(mut r)) => match r.peel_to_commit() {
                Ok(c) => Some(c.id),
                Err(e) => {
                    tracing::warn!(
                        upstream = name,
                        "upstream does not resolve to a commit: {}",
                        describe(&e)
                    );
                    None
                }
            },
            Ok(None) => {
                tracing::debug!(
                    upstream = name,
                    "upstream ref does not exist (not fetched yet?)"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    upstream = name,
                    "cannot read the upstream ref: {}",
                    describe(&e)
                );
                None
            }
        }
    }

    /// `remote.origin.url`. A local path (relative to the worktree root, or
    /// absolute) or a `file://` URL comes back as an absolute `file://` URL;
    /// other URLs as configured (after `insteadOf` rewrites).
    pub fn origin_url(&self) -> Option<String> {
        let repo = self.handle().ok()?;
        let remote = match repo.find_remote("origin") {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("no usable remote 'origin': {}", describe(&e));
                return None;
            }
        };
        let url = remote.url(gix::remote::Direction::Fetch)?;
        if url.scheme != gix::url::Scheme::File {
            return Some(url.to_bstring().to_string());
        }
        let path = match gix::path::from_bstr(url.path.as_bstr()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(url = %url.to_bstring(), "origin URL is not a usable path: {e}");
                return None;
            }
        };
        let abs = absolute(&self.workdir, &path);
        Some(format!("file://{}", abs.display()))
    }

    /// The index as it is on disk now: stage-0 entries and the file's mtime.
    /// A missing index is an empty snapshot.
    pub fn index(&self) -> Result<IndexSnapshot, RepoError> {
        let repo = self.handle()?;
        let path = repo.index_path();
        let file = match repo.open_index() {
            Ok(f) => f,
            Err(_) if !path.exists() => return Ok(IndexSnapshot::default()),
            Err(e) => {
                return Err(RepoError::Index {
                    path,
                    detail: describe(&e),
                });
            }
        };
        let ts = file.timestamp();
        let mtime = match u64::try_from(ts.unix_seconds()) {
            Ok(secs) => UNIX_EPOCH + Duration::new(secs, ts.nanoseconds()),
            Err(_) => UNIX_EPOCH,
        };
        let mut entries = HashMap::with_capacity(file.entries().len());
        for entry in file.entries() {
            if entry.stage_raw() != 0 {
                continue;
            }
            let mode = entry.mode.bits();
            if !matches!(mode, 0o100644 | 0o100755 | 0o120000) {
                continue; // submodule (gitlink) or sparse directory
            }
            let rela = entry.path(&file);
            let Ok(rela) = std::str::from_utf8(rela) else {
                tracing::warn!(path = %rela, "skipping non-UTF-8 path in the index");
                continue;
            };
            let s = &entry.stat;
            entries.insert(
                rela.to_owned(),
                IndexStat {
                    oid: git_oid(&entry.id),
                    mode,
                    size: s.size,
                    mtime_secs: s.mtime.secs,
                    mtime_nsecs: s.mtime.nsecs,
                    ctime_secs: s.ctime.secs,
                    ctime_nsecs: s.ctime.nsecs,
                    ino: s.ino,
                    dev: s.dev,
                    uid: s.uid,
                    gid: s.gid,
                },
            );
        }
        Ok(IndexSnapshot {
            entries,
            mtime: Some(mtime),
        })
    }

    /// The whole tree of commit `c`.
    pub fn tree(&self, c: CommitId) -> Result<BaseTree, RepoError> {
        Ok(git_store::read_tree(&self.handle()?, c)?)
    }

    /// The content of blob `oid`.
    pub fn blob(&self, oid: GitOid) -> Result<Vec<u8>, RepoError> {
        Ok(git_store::read_blob(&self.handle()?, oid)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::RelPath;
    use devd_protocol::tree::EntryKind;
    use std::process::Command;
    use tempfile::TempDir;

    /// Run git in `dir` (the test kit's hermetic git) with a fixed identity.
    fn git(dir: &Path, args: &[&str]) -> String {
        let mut all = vec![
            "-c",
            "user.name=Devd Test",
            "-c",
            "user.email=devd@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.autocrlf=false",
        ];
        all.extend_from_slice(args);
        devd_testkit::git(dir, &all).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn oid(s: &str) -> GitOid {
        GitOid::from_hex(s.trim()).expect("40 hex digits")
    }

    fn rev(dir: &Path, spec: &str) -> GitOid {
        oid(&git(dir, &["rev-parse", spec]))
    }

    fn commit_file(dir: &Path, rel: &str, content: &str) -> GitOid {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", &format!("edit {rel}")]);
        rev(dir, "HEAD")
    }

    struct Setup {
        _tmp: TempDir,
        origin: PathBuf,
        /// A second clone that pushes to origin.
        other: PathBuf,
        /// The clone under test.
        clone: PathBuf,
    }

    /// A bare origin with two commits on main, and two clones of it.
    fn setup() -> Setup {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let seed = root.join("seed");
        std::fs::create_dir(&seed).unwrap();
        git(&seed, &["init", "-q"]);
        commit_file(&seed, "README.md", "hello\n");
        commit_file(&seed, "src/lib.rs", "pub fn f() {}\n");
        git(&root, &["init", "-q", "--bare", "origin.git"]);
        git(&seed, &["push", "-q", "../origin.git", "main"]);
        git(
            &root,
            &[
                "--git-dir=origin.git",
                "symbolic-ref",
                "HEAD",
                "refs/heads/main",
            ],
        );
        git(&root, &["clone", "-q", "origin.git", "clone"]);
        git(&root, &["clone", "-q", "origin.git", "other"]);
        Setup {
            origin: root.join("origin.git"),
            other: root.join("other"),
            clone: root.join("clone"),
            _tmp: tmp,
        }
    }

    #[test]
    fn repo_base_is_merge_base_with_branch_upstream() {
        let s = setup();
        let repo = Repo::discover(&s.clone.join("src")).unwrap();
        assert_eq!(repo.workdir(), s.clone);
        assert_eq!(repo.git_dir(), s.clone.join(".git"));

        // No local commits: base = HEAD = origin/main.
        let b = repo.base(None).unwrap();
        assert_eq!(b.commit, rev(&s.clone, "HEAD"));
        assert_eq!(b.head, b.commit);
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/main"));

        // Local commits, and the remote moves on (fetched): base = merge-base.
        commit_file(&s.clone, "a.txt", "local 1\n");
        let head = commit_file(&s.clone, "a.txt", "local 2\n");
        commit_file(&s.other, "b.txt", "remote\n");
        git(&s.other, &["push", "-q", "origin", "main"]);
        git(&s.clone, &["fetch", "-q"]);
        let b = repo.base(None).unwrap();
        let expected = oid(&git(&s.clone, &["merge-base", "HEAD", "@{u}"]));
        assert_eq!(b.commit, expected);
        assert_ne!(b.commit, head);
        assert_ne!(b.commit, rev(&s.clone, "@{u}"));
        assert_eq!(b.head, head);
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/main"));

        // After a pull (rebase) the base moves to the new upstream tip.
        git(&s.clone, &["pull", "-q", "--rebase"]);
        let b = repo.base(None).unwrap();
        assert_eq!(b.commit, rev(&s.clone, "@{u}"));
        assert_eq!(b.head, rev(&s.clone, "HEAD"));
    }

    #[test]
    fn repo_base_without_upstream_uses_origin_head_then_sees_new_upstream_config() {
        let s = setup();
        // A remote branch `dev` that diverges from main.
        git(&s.other, &["checkout", "-q", "-b", "dev"]);
        commit_file(&s.other, "dev.txt", "dev\n");
        git(&s.other, &["push", "-q", "origin", "dev"]);
        git(&s.clone, &["fetch", "-q"]);

        let repo = Repo::discover(&s.clone).unwrap();
        git(&s.clone, &["checkout", "-q", "-b", "feature"]);
        let head = commit_file(&s.clone, "f.txt", "feature\n");
        let b = repo.base(None).unwrap();
        assert_eq!(
            b.upstream.as_deref(),
            Some("refs/remotes/origin/main"),
            "via origin/HEAD"
        );
        assert_eq!(
            b.commit,
            oid(&git(&s.clone, &["merge-base", "HEAD", "origin/HEAD"]))
        );
        assert_eq!(b.head, head);

        // Setting an upstream while the Repo is alive is seen.
        git(&s.clone, &["branch", "-q", "--set-upstream-to=origin/dev"]);
        let b = repo.base(None).unwrap();
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/dev"));
        assert_eq!(
            b.commit,
            oid(&git(&s.clone, &["merge-base", "HEAD", "@{u}"]))
        );

        // Detached HEAD skips the branch upstream.
        git(&s.clone, &["checkout", "-q", "--detach"]);
        let b = repo.base(None).unwrap();
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/main"));
        assert_eq!(
            b.commit,
            oid(&git(&s.clone, &["merge-base", "HEAD", "origin/main"]))
        );
        assert_eq!(b.head, head);

        // An upstream branch that was never fetched falls through to origin/HEAD.
        git(&s.clone, &["checkout", "-q", "feature"]);
        git(
            &s.clone,
            &["config", "branch.feature.merge", "refs/heads/not-fetched"],
        );
        let b = repo.base(None).unwrap();
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/main"));
    }

    #[test]
    fn repo_base_falls_back_to_configured_then_head() {
        let s = setup();
        git(&s.clone, &["remote", "set-head", "origin", "-d"]);
        git(&s.clone, &["checkout", "-q", "-b", "feature"]);
        let first = rev(&s.clone, "HEAD~1");
        let head = commit_file(&s.clone, "f.txt", "feature\n");
        let repo = Repo::discover(&s.clone).unwrap();

        let b = repo.base(None).unwrap();
        assert_eq!(
            b,
            BaseInfo {
                commit: head,
                upstream: None,
                head
            }
        );

        let b = repo.base(Some("origin/main")).unwrap();
        assert_eq!(b.upstream.as_deref(), Some("refs/remotes/origin/main"));
        assert_eq!(
            b.commit,
            oid(&git(&s.clone, &["merge-base", "HEAD", "origin/main"]))
        );

        let b = repo.base(Some(&first.to_hex())).unwrap();
        assert_eq!(b.commit, first);
        assert_eq!(b.upstream, Some(first.to_hex()));

        let b = repo.base(Some("origin/main~1")).unwrap();
        assert_eq!(b.commit, first);
        assert_eq!(b.upstream.as_deref(), Some("origin/main~1"));

        let b = repo.base(Some("no-such-branch")).unwrap();
        assert_eq!(
            b,
            BaseInfo {
                commit: head,
                upstream: None,
                head
            }
        );
    }

    #[test]
    fn repo_sees_commits_made_after_discover() {
        let s = setup();
        let repo = Repo::discover(&s.clone).unwrap();
        let before = repo.head_commit().unwrap();
        assert_eq!(before, rev(&s.clone, "HEAD"));

        let c = commit_file(&s.clone, "dir/new.txt", "new content\n");
        assert_eq!(repo.head_commit().unwrap(), c);
        let tree = repo.tree(c).unwrap();
        let entry = tree[&RelPath::new("dir/new.txt").unwrap()];
        assert_eq!(entry.kind, EntryKind::File);
        assert_eq!(repo.blob(entry.oid).unwrap(), b"new content\n");
        assert_eq!(
            tree.len(),
            git(&s.clone, &["ls-tree", "-r", "--name-only", "HEAD"])
                .lines()
                .count()
        );

        // Packed refs and a repacked object database, then yet another commit.
        git(&s.clone, &["gc", "-q", "--prune=now"]);
        assert_eq!(repo.head_commit().unwrap(), c);
        let c2 = commit_file(&s.clone, "dir/new.txt", "newer\n");
        git(&s.clone, &["repack", "-q", "-a", "-d"]);
        git(&s.clone, &["pack-refs", "--all"]);
        assert_eq!(repo.head_commit().unwrap(), c2);
        let entry = repo.tree(c2).unwrap()[&RelPath::new("dir/new.txt").unwrap()];
        assert_eq!(repo.blob(entry.oid).unwrap(), b"newer\n");

        // A branch switch moves HEAD.
        git(
            &s.clone,
            &["checkout", "-q", "-b", "other", &before.to_hex()],
        );
        assert_eq!(repo.head_commit().unwrap(), before);

        // A missing object is an error naming it.
        let err = repo.blob(GitOid([7; 20])).unwrap_err().to_string();
        assert!(err.contains(&GitOid([7; 20]).to_hex()), "{err}");
    }

    #[test]
    fn repo_index_matches_git_ls_files() {
        let s = setup();
        let repo = Repo::discover(&s.clone).unwrap();
        let w = &s.clone;
        std::fs::write(w.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("README.md", w.join("link")).unwrap();
        std::fs::write(w.join("README.md"), "staged change\n").unwrap();
        git(w, &["add", "-A"]);
        git(w, &["update-index", "--chmod=+x", "run.sh"]);
        std::fs::write(w.join("README.md"), "unstaged change on top\n").unwrap();

        let snap = repo.index().unwrap();
        let ls = git(w, &["ls-files", "-s"]);
        assert_eq!(snap.entries.len(), ls.lines().count());
        for line in ls.lines() {
            let (meta, path) = line.split_once('\t').unwrap();
            let mut parts = meta.split(' ');
            let mode = u32::from_str_radix(parts.next().unwrap(), 8).unwrap();
            let id = oid(parts.next().unwrap());
            let e = snap
                .entries
                .get(path)
                .unwrap_or_else(|| panic!("{path} missing"));
            assert_eq!((e.mode, e.oid), (mode, id), "{path}");
        }
        assert_eq!(snap.entries["run.sh"].mode, 0o100755);
        assert_eq!(snap.entries["link"].mode, 0o120000);
        assert_eq!(snap.entries["src/lib.rs"].size, 14);
        let meta = std::fs::symlink_metadata(w.join("src/lib.rs")).unwrap();
        {
            use std::os::unix::fs::MetadataExt;
            let e = snap.entries["src/lib.rs"];
            assert_eq!(e.mtime_secs as i64, meta.mtime());
            assert_eq!(e.ino, meta.ino() as u32);
        }
        let index_mtime = std::fs::metadata(w.join(".git/index"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(snap.mtime, Some(index_mtime));

        // Fresh on every call.
        git(w, &["rm", "-q", "--cached", "link"]);
        let snap = repo.index().unwrap();
        assert!(!snap.entries.contains_key("link"));

        // Conflicted paths (stages 1-3) are absent.
        git(w, &["commit", "-q", "-am", "base"]);
        git(w, &["checkout", "-q", "-b", "side"]);
        commit_file(w, "README.md", "side\n");
        git(w, &["checkout", "-q", "main"]);
        commit_file(w, "README.md", "main\n");
        let out = Command::new("git")
            .args(["merge", "-q", "side"])
            .current_dir(w)
            .output()
            .unwrap();
        assert!(!out.status.success(), "merge must conflict");
        let snap = repo.index().unwrap();
        assert!(!snap.entries.contains_key("README.md"));
        assert!(snap.entries.contains_key("src/lib.rs"));

        // No index at all.
        std::fs::remove_file(w.join(".git/index")).unwrap();
        assert_eq!(repo.index().unwrap(), IndexSnapshot::default());
    }

    #[test]
    fn repo_origin_url_is_an_absolute_file_url() {
        let s = setup();
        let expected = format!("file://{}", s.origin.display());
        let repo = Repo::discover(&s.clone).unwrap();
        assert_eq!(repo.origin_url().as_deref(), Some(expected.as_str()));

        // Relative path (resolved against the worktree root), set while the Repo is alive.
        git(&s.clone, &["remote", "set-url", "origin", "../origin.git"]);
        assert_eq!(repo.origin_url().as_deref(), Some(expected.as_str()));
        git(&s.clone, &["remote", "set-url", "origin", &expected]);
        assert_eq!(repo.origin_url().as_deref(), Some(expected.as_str()));
        git(
            &s.clone,
            &[
                "remote",
                "set-url",
                "origin",
                "git@example.invalid:team/app.git",
            ],
        );
        assert_eq!(
            repo.origin_url().as_deref(),
            Some("git@example.invalid:team/app.git")
        );
        git(&s.clone, &["remote", "remove", "origin"]);
        assert_eq!(repo.origin_url(), None);
    }

    #[test]
    fn repo_discover_rejects_bare_and_non_repositories() {
        let s = setup();
        let err = Repo::discover(&s.origin).unwrap_err();
        assert!(matches!(err, RepoError::NoWorktree { .. }), "{err:?}");
        let empty = TempDir::new().unwrap();
        let err = Repo::discover(empty.path()).unwrap_err();
        assert!(matches!(err, RepoError::Discover { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&empty.path().display().to_string()),
            "{err}"
        );

        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Repo>();

        // Unborn HEAD.
        let fresh = TempDir::new().unwrap();
        git(fresh.path(), &["init", "-q"]);
        let repo = Repo::discover(fresh.path()).unwrap();
        assert!(matches!(repo.head_commit(), Err(RepoError::Unborn { .. })));
        assert_eq!(repo.index().unwrap(), IndexSnapshot::default());
    }
}

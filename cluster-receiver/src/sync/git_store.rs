//! Git object access shared by the receiver and the laptop daemon, and the
//! receiver's bare store of base commits.
//!
//! [`read_tree`] and [`read_blob`] work on any `gix` repository. [`GitStore`]
//! is a bare repository owned by the receiver into which base commits are
//! fetched one at a time, shallowly (depth 1), from a fixed remote URL:
//! `file://`, `ssh://` (credentials from ssh's own configuration),
//! `git://`, or `http(s)://` with an optional token read from a file
//! ([`GitStore::with_token_file`]) and sent as HTTP Basic auth
//! `x-access-token:TOKEN`. Neither the token nor credentials in the URL
//! ever appear in logs or errors ([`redact_url`]).

use devd_protocol::tree::BaseTree;
use devd_protocol::{CommitId, GitOid};
use devd_sync::git::{describe, read_blob, read_tree, to_oid};
use gix::bstr::ByteSlice;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "cannot open or create the bare git store at {}: {detail}; check that the directory is writable, or remove it if it is not a bare git repository",
        dir.display()
    )]
    Store { dir: PathBuf, detail: String },
    #[error(
        "invalid remote URL {url:?}: {detail}; configure a URL such as file:///path/to/origin.git, ssh://host/repo.git or https://host/repo.git"
    )]
    InvalidUrl { url: String, detail: String },
    #[error(
        "cannot read the git token file {} for remote {url}: {detail}; mount the token there (the `token` key of the devd-git Secret) or remove [git] token_file / DEVD_RECEIVER_GIT_TOKEN_FILE",
        path.display()
    )]
    TokenFile {
        path: PathBuf,
        url: String,
        detail: String,
    },
    #[error(
        "remote {url} is unreachable or denied access while fetching commit {commit}: {detail}; check the remote URL, the network and the credentials of the receiver"
    )]
    RemoteUnreachable {
        url: String,
        commit: CommitId,
        detail: String,
    },
    #[error("remote {url} denied access while fetching commit {commit}: {detail}")]
    AccessDenied {
        url: String,
        commit: CommitId,
        detail: String,
    },
    #[error(
        "commit {commit} was not found on the remote {url} ({detail}); push the branch that contains it, or fetch/rebase so that the base is a commit the remote has"
    )]
    CommitNotOnRemote {
        url: String,
        commit: CommitId,
        detail: String,
    },
    #[error("fetching commit {commit} from {url} failed: {detail}; retry, and check the store at {}", store.display())]
    Fetch {
        url: String,
        commit: CommitId,
        store: PathBuf,
        detail: String,
    },
    /// The base commit or one of its objects could not be read.
    #[error(transparent)]
    Read(#[from] devd_sync::git::ReadError),
}

/// A bare repository owned by the receiver, holding the base commits fetched
/// from one remote. `Send + Sync`; every method is blocking (call it from
/// `spawn_blocking`). Fetches are serialized.
#[derive(Debug)]
pub struct GitStore {
    repo: gix::ThreadSafeRepository,
    dir: PathBuf,
    remote_url: String,
    /// File holding the HTTP token, read at every fetch (a rotated Secret
    /// takes effect without a restart).
    token_file: Option<PathBuf>,
    fetch_lock: Mutex<()>,
}

/// `url` with any userinfo (`user:password@`) replaced by `***@`, for logs
/// and error messages. Works on scp-like ssh URLs too (`user@host:path`
/// keeps its user: no secret there).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // `ssh://git@host/..`: a user name alone is not a secret.
            if !userinfo.contains(':') && !url.starts_with("http") {
                return url.to_owned();
            }
            format!("{}***@{}", &url[..scheme_end + 3], &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The password of `scheme://user:password@host/..`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The `Authorization` header carrying `token` as HTTP Basic auth with the
/// user `x-access-token` (accepted by GitHub, GitLab and Gitea; other
/// servers ignore the user name of a token).
fn basic_auth_header(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    )
}

/// Server messages (and gix wording) meaning "the wanted object does not exist".
const NOT_FOUND_MARKERS: &[&str] = &[
    "not our ref",
    "not found",
    "no such",
    "unadvertised object",
    "not a valid object",
    // upload-pack rejects an unknown want by hanging up; depending on
    // timing gix sees that as a broken pipe while still sending the wants
    // (the handshake before it succeeded, so the remote is reachable).
    "broken pipe",
];

impl GitStore {
    /// Open the bare repository at `dir`, creating it (and `dir`) if absent.
    pub fn open_or_init(dir: &Path, remote_url: &str) -> Result<Self, GitError> {
        gix::url::parse(remote_url.as_bytes().as_bstr()).map_err(|e| GitError::InvalidUrl {
            url: redact_url(remote_url),
            detail: e.to_string().replace(remote_url, &redact_url(remote_url)),
        })?;
        let store_err = |detail: String| GitError::Store {
            dir: dir.to_path_buf(),
            detail,
        };
        let is_empty_or_absent = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(store_err(e.to_string())),
        };
        let repo = if is_empty_or_absent {
            std::fs::create_dir_all(dir).map_err(|e| store_err(e.to_string()))?;
            tracing::info!(dir = %dir.display(), "initializing bare git store");
            gix::ThreadSafeRepository::init(
                dir,
                gix::create::Kind::Bare,
                gix::create::Options::default(),
            )
            .map_err(|e| store_err(describe(&e)))?;
            // Checkouts read every blob of a base: cache delta bases, or
            // each blob re-inflates its whole delta chain.
            let mut cfg = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("config"))
                .map_err(|e| store_err(e.to_string()))?;
            std::io::Write::write_all(&mut cfg, b"[core]\n\tdeltaBaseCacheLimit = 96m\n")
                .map_err(|e| store_err(e.to_string()))?;
            gix::ThreadSafeRepository::open(dir).map_err(|e| store_err(describe(&e)))?
        } else {
            gix::ThreadSafeRepository::open(dir).map_err(|e| store_err(describe(&e)))?
        };
        if repo.work_dir().is_some() {
            return Err(store_err(
                "it is a repository with a worktree, not a bare repository".into(),
            ));
        }
        Ok(Self {
            repo,
            dir: dir.to_path_buf(),
            remote_url: remote_url.to_owned(),
            token_file: None,
            fetch_lock: Mutex::new(()),
        })
    }

    /// Send the token in `path` (trimmed) to `http(s)://` remotes; other
    /// remotes ignore it. The file is read at every fetch; an empty or
    /// missing file means no token (like an empty deploy key: public
    /// repositories, or laptops upload the base; a Secret without the
    /// `token` key mounts no file), and a 401 then names the file. An
    /// unreadable file stops the start.
    pub fn with_token_file(mut self, path: Option<PathBuf>) -> Result<Self, GitError> {
        if let Some(p) = &path
            && is_http(&self.remote_url)
        {
            let token = self.read_token(p)?;
            tracing::info!(
                url = %redact_url(&self.remote_url),
                token_file = %p.display(),
                "{}",
                if token.is_some() {
                    "git remote: sending the token from the token file"
                } else {
                    "git remote: the token file is missing or empty, no token is sent"
                }
            );
        }
        self.token_file = path;
        Ok(self)
    }

    /// The token in `path`; `None` if the file is empty or absent.
    fn read_token(&self, path: &Path) -> Result<Option<String>, GitError> {
        let err = |detail: String| GitError::TokenFile {
            path: path.to_path_buf(),
            url: redact_url(&self.remote_url),
            detail,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let token = text.trim();
        if token.is_empty() {
            return Ok(None);
        }
        if token.contains(['\r', '\n']) {
            return Err(err("the token spans several lines".into()));
        }
        Ok(Some(token.to_owned()))
    }

    /// The URL base commits are fetched from.
    pub fn remote_url(&self) -> &str {
        &self.remote_url
    }

    /// True if the commit object and its root tree are in the store.
    pub fn has_commit(&self, c: CommitId) -> bool {
        let repo = self.repo();
        match repo.try_find_object(to_oid(c)) {
            Ok(Some(obj)) if obj.kind == gix::objs::Kind::Commit => obj
                .into_commit()
                .tree_id()
                .is_ok_and(|tree| repo.has_object(tree)),
            _ => false,
        }
    }

    /// Blocking. Shallow fetch (depth 1) of exactly commit `c` from the remote
    /// into `refs/devd/base/<c>`; no other refs, no tags. A commit already
    /// present is not fetched again.
    pub fn fetch_commit(&self, c: CommitId) -> Result<(), GitError> {
        let _guard = self.fetch_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.has_commit(c) {
            tracing::debug!(commit = %c, "base commit already in the store");
            return Ok(());
        }
        let started = std::time::Instant::now();
        // The URL as shown in errors and logs.
        let url = redact_url(&self.remote_url);
        let http = is_http(&self.remote_url);
        if http {
            // reqwest's rustls has no provider of its own (no aws-lc-rs):
            // it uses the process-wide ring provider.
            devd_sync::net::install_crypto();
        }
        let token = match &self.token_file {
            Some(p) if http => self.read_token(p)?,
            _ => None,
        };
        // gix's messages may quote the URL or (never seen, but cheap to
        // rule out) a header: scrub both secrets from every detail.
        let url_password = url_password(&self.remote_url);
        let scrub = |detail: String| {
            let mut d = detail.replace(self.remote_url.as_str(), &url);
            for secret in [token.as_deref(), url_password.as_deref()]
                .into_iter()
                .flatten()
            {
                d = d.replace(secret, "***");
            }
            d
        };
        let repo = self.repo();
        let hex = c.to_hex();
        let refspec = format!("+{hex}:refs/devd/base/{hex}");
        let denied_hint = match (&token, &self.token_file) {
            (Some(_), Some(p)) => format!(
                "the remote rejected the token (HTTP 401): check that the token in {} is valid, not expired, and grants read access to this repository",
                p.display()
            ),
            (None, Some(p)) => format!(
                "the remote requires authentication (HTTP 401) and the git token file {} is missing or empty: put a read-only access token there (the `token` key of the devd-git Secret)",
                p.display()
            ),
            _ => "the remote requires authentication (HTTP 401) and no token is configured: set [git] token_file (or DEVD_RECEIVER_GIT_TOKEN_FILE) to a file holding a read-only access token".to_owned(),
        };
        let denied_hint = denied_hint.as_str();
        let unreachable = |e: gix::Error| {
            let detail = scrub(describe(&e));
            if detail.contains(denied_hint) {
                GitError::AccessDenied {
                    url: url.clone(),
                    commit: c,
                    detail: denied_hint.to_owned(),
                }
            } else {
                GitError::RemoteUnreachable {
                    url: url.clone(),
                    commit: c,
                    detail,
                }
            }
        };
        let remote = repo
            .remote_at(self.remote_url.as_str())
            .and_then(|r| r.with_refspecs([refspec.as_str()], gix::remote::Direction::Fetch))
            .map_err(|e| GitError::InvalidUrl {
                url: url.clone(),
                detail: scrub(describe(&e)),
            })?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let mut connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(unreachable)?;
        // Never run git credential helpers or prompt (the receiver has no
        // terminal): the token file is the only source of credentials, so
        // a 401 ends the fetch with a message saying what to fix.
        let hint = denied_hint.to_owned();
        connection.set_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(_) => {
                Err(gix::error::unauthenticated(hint.clone()).into())
            }
            _ => Ok(None),
        });
        if let Some(t) = &token {
            let mut opts = repo
                .transport_options(self.remote_url.as_str(), None)
                .map_err(unreachable)?
                .and_then(|o| {
                    o.downcast::<gix::protocol::transport::client::blocking_io::http::Options>()
                        .ok()
                })
                .map(|o| *o)
                .unwrap_or_default();
            opts.extra_headers.push(basic_auth_header(t));
            connection = connection.with_transport_options(Box::new(opts));
        }
        let prepare = connection
            .prepare_fetch(
                gix::progress::Discard,
                gix::remote::ref_map::Options::default(),
            )
            .map_err(unreachable)?;
        let interrupt = AtomicBool::new(false);
        let outcome = prepare
            .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN))
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| {
                let detail = scrub(describe(&e));
                let lower = detail.to_lowercase();
                if detail.contains(denied_hint) {
                    GitError::AccessDenied {
                        url: url.clone(),
                        commit: c,
                        detail: denied_hint.to_owned(),
                    }
                } else if NOT_FOUND_MARKERS.iter().any(|m| lower.contains(m)) {
                    GitError::CommitNotOnRemote {
                        url: url.clone(),
                        commit: c,
                        detail,
                    }
                } else {
                    GitError::Fetch {
                        url: url.clone(),
                        commit: c,
                        store: self.dir.clone(),
                        detail,
                    }
                }
            })?;
        if !self.has_commit(c) {
            return Err(GitError::CommitNotOnRemote {
                url,
                commit: c,
                detail: "the remote sent no such commit".into(),
            });
        }
        let received = match &outcome.status {
            gix::remote::fetch::Status::Change {
                write_pack_bundle, ..
            } => write_pack_bundle.index.num_objects,
            gix::remote::fetch::Status::NoPackReceived { .. } => 0,
        };
        tracing::info!(
            commit = %c,
            url = %url,
            objects = received,
            ms = started.elapsed().as_millis() as u64,
            "fetched base commit"
        );
        Ok(())
    }

    /// The whole tree of commit `c`, which must be in the store.
    pub fn tree(&self, c: CommitId) -> Result<BaseTree, GitError> {
        Ok(read_tree(&self.repo(), c)?)
    }

    /// The content of blob `oid`.
    pub fn blob(&self, oid: GitOid) -> Result<Vec<u8>, GitError> {
        Ok(read_blob(&self.repo(), oid)?)
    }

    /// A fresh handle for the calling thread.
    pub fn repo(&self) -> gix::Repository {
        self.repo.to_thread_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::RelPath;
    use devd_protocol::tree::{EntryKind, TreeEntry};
    use devd_sync::git::git_blob_oid;
    use std::collections::BTreeMap;
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

    fn write(dir: &Path, rel: &str, content: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn commit_id(s: &str) -> CommitId {
        GitOid::from_hex(s.trim()).expect("40 hex digits")
    }

    struct Origin {
        _tmp: TempDir,
        root: PathBuf,
        work: PathBuf,
        url: String,
        /// Three commits, oldest first: c0 (root), c1, c2.
        commits: [CommitId; 3],
    }

    /// A bare origin with three commits: files, an executable, a symlink,
    /// nested directories, and (in c2) a submodule gitlink.
    fn origin() -> Origin {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);

        write(&work, "README.md", b"hello\n");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "c0"]);
        let c0 = commit_id(&git(&work, &["rev-parse", "HEAD"]));

        write(&work, "a.txt", b"alpha\n");
        write(&work, "bin/run.sh", b"#!/bin/sh\necho run\n");
        write(&work, "dir/sub/deep/x.rs", b"fn main() {}\n");
        write(&work, "dir/y.txt", b"why\n");
        std::os::unix::fs::symlink("a.txt", work.join("link")).unwrap();
        std::os::unix::fs::symlink("../a.txt", work.join("dir/up")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["update-index", "--chmod=+x", "bin/run.sh"]);
        git(&work, &["commit", "-q", "-m", "c1"]);
        let c1 = commit_id(&git(&work, &["rev-parse", "HEAD"]));

        write(&work, "a.txt", b"alpha two\n");
        write(&work, "dir/sub/new.txt", b"new\n");
        std::fs::remove_file(work.join("dir/y.txt")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["update-index", "--chmod=-x", "bin/run.sh"]);
        git(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{},vendor/sub", c0.to_hex()),
            ],
        );
        git(&work, &["commit", "-q", "-m", "c2"]);
        let c2 = commit_id(&git(&work, &["rev-parse", "HEAD"]));

        git(&root, &["init", "-q", "--bare", "origin.git"]);
        git(&work, &["push", "-q", "../origin.git", "main"]);
        let url = format!("file://{}", root.join("origin.git").display());
        Origin {
            _tmp: tmp,
            root,
            work,
            url,
            commits: [c0, c1, c2],
        }
    }

    /// `git ls-tree -r` of `c`, without gitlinks, as a BaseTree.
    fn ls_tree(repo: &Path, c: CommitId) -> BaseTree {
        let mut out = BTreeMap::new();
        for line in git(repo, &["ls-tree", "-r", &c.to_hex()]).lines() {
            let (meta, path) = line.split_once('\t').unwrap();
            let mut parts = meta.split(' ');
            let (mode, _ty, oid) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let kind = match mode {
                "100644" => EntryKind::File,
                "100755" => EntryKind::Exec,
                "120000" => EntryKind::Symlink,
                "160000" => continue,
                m => panic!("unexpected mode {m}"),
            };
            out.insert(
                RelPath::new(path).unwrap(),
                TreeEntry {
                    oid: GitOid::from_hex(oid).unwrap(),
                    kind,
                },
            );
        }
        out
    }

    fn check_tree(store: &GitStore, o: &Origin, c: CommitId) {
        let tree = store.tree(c).unwrap();
        assert_eq!(tree, ls_tree(&o.work, c), "tree of {c}");
        assert!(
            !tree.keys().any(|p| p.as_str().starts_with("vendor")),
            "gitlink skipped"
        );
        for (path, entry) in &tree {
            let expected = git(&o.work, &["cat-file", "blob", &entry.oid.to_hex()]);
            assert_eq!(
                store.blob(entry.oid).unwrap(),
                expected.as_bytes(),
                "{path}"
            );
        }
    }

    #[test]
    fn git_store_fetches_two_commits_shallow_and_reads_them() {
        let o = origin();
        let [c0, c1, c2] = o.commits;
        let dir = o.root.join("store.git");
        let store = GitStore::open_or_init(&dir, &o.url).unwrap();
        assert_eq!(store.remote_url(), o.url);
        assert!(!store.has_commit(c1));
        assert!(!store.has_commit(c2));

        store.fetch_commit(c1).unwrap();
        assert!(store.has_commit(c1));
        assert!(!store.has_commit(c2));
        assert!(!store.has_commit(c0), "depth 1: the parent is not fetched");
        check_tree(&store, &o, c1);
        let t1 = store.tree(c1).unwrap();
        let kinds = |p: &str| t1[&RelPath::new(p).unwrap()].kind;
        assert_eq!(kinds("bin/run.sh"), EntryKind::Exec);
        assert_eq!(kinds("link"), EntryKind::Symlink);
        assert_eq!(kinds("dir/up"), EntryKind::Symlink);
        assert_eq!(kinds("dir/sub/deep/x.rs"), EntryKind::File);
        assert_eq!(
            store.blob(t1[&RelPath::new("link").unwrap()].oid).unwrap(),
            b"a.txt"
        );
        assert_eq!(
            store.blob(t1[&RelPath::new("a.txt").unwrap()].oid).unwrap(),
            b"alpha\n"
        );
        assert_eq!(
            git(
                &dir,
                &["rev-parse", &format!("refs/devd/base/{}", c1.to_hex())]
            )
            .trim(),
            c1.to_hex()
        );
        assert_eq!(
            git(&dir, &["rev-parse", "--is-shallow-repository"]).trim(),
            "true"
        );

        // Again: a no-op.
        store.fetch_commit(c1).unwrap();

        // A new base later, into the same store.
        store.fetch_commit(c2).unwrap();
        assert!(store.has_commit(c1) && store.has_commit(c2));
        check_tree(&store, &o, c2);
        let t2 = store.tree(c2).unwrap();
        assert_eq!(
            t2[&RelPath::new("bin/run.sh").unwrap()].kind,
            EntryKind::File
        );
        assert!(!t2.contains_key(&RelPath::new("dir/y.txt").unwrap()));
        assert_eq!(
            store.blob(t2[&RelPath::new("a.txt").unwrap()].oid).unwrap(),
            b"alpha two\n"
        );

        // The shallow file lists both boundaries (c2 was fetched with depth 1
        // too) and git sees a consistent repository.
        let shallow = std::fs::read_to_string(dir.join("shallow")).unwrap();
        let mut boundary: Vec<_> = shallow.lines().collect();
        boundary.sort_unstable();
        let mut want = vec![c1.to_hex(), c2.to_hex()];
        want.sort_unstable();
        assert_eq!(boundary, want, "shallow file");
        assert_eq!(git(&dir, &["rev-list", &c2.to_hex()]).trim(), c2.to_hex());
        git(&dir, &["fsck", "--no-dangling", "--connectivity-only"]);
        assert!(
            git(&dir, &["for-each-ref", "--format=%(refname)"])
                .lines()
                .all(|r| r.starts_with("refs/devd/base/"))
        );
        assert!(!git(&dir, &["tag"]).contains('v'));

        // Reopening finds what was fetched.
        drop(store);
        let again = GitStore::open_or_init(&dir, &o.url).unwrap();
        assert!(again.has_commit(c1) && again.has_commit(c2));
    }

    #[test]
    fn git_store_fetches_a_parent_after_its_child() {
        let o = origin();
        let [_, c1, c2] = o.commits;
        let dir = o.root.join("store.git");
        let store = GitStore::open_or_init(&dir, &o.url).unwrap();
        store.fetch_commit(c2).unwrap();
        assert!(!store.has_commit(c1));
        store.fetch_commit(c1).unwrap();
        assert!(store.has_commit(c1));
        check_tree(&store, &o, c1);
        check_tree(&store, &o, c2);
        git(&dir, &["fsck", "--no-dangling", "--connectivity-only"]);
    }

    #[test]
    fn git_store_is_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GitStore>();
        let o = origin();
        let [_, c1, c2] = o.commits;
        let store = std::sync::Arc::new(GitStore::open_or_init(&o.root.join("s"), &o.url).unwrap());
        let handles: Vec<_> = [c1, c2, c1, c2]
            .into_iter()
            .map(|c| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.fetch_commit(c).map(|()| store.tree(c).unwrap().len())
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap().unwrap() > 0);
        }
        assert!(store.has_commit(c1) && store.has_commit(c2));
    }

    #[test]
    fn git_store_missing_commit_is_reported_as_not_found() {
        let o = origin();
        let store = GitStore::open_or_init(&o.root.join("store.git"), &o.url).unwrap();
        let bogus = GitOid([0xab; 20]);
        let err = store.fetch_commit(bogus).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GitError::CommitNotOnRemote { .. }), "{err:?}");
        assert!(msg.contains("not found on the remote"), "{msg}");
        assert!(
            msg.contains(&bogus.to_hex()) && msg.contains(&o.url),
            "{msg}"
        );
        assert!(!store.has_commit(bogus));
        // The store still works afterwards.
        store.fetch_commit(o.commits[1]).unwrap();
        assert!(store.has_commit(o.commits[1]));
    }

    #[test]
    fn git_store_bad_remote_is_reported_as_unreachable() {
        let o = origin();
        let url = format!("file://{}", o.root.join("no-such-origin.git").display());
        let store = GitStore::open_or_init(&o.root.join("store.git"), &url).unwrap();
        let err = store.fetch_commit(o.commits[1]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GitError::RemoteUnreachable { .. }), "{err:?}");
        assert!(msg.contains("unreachable") && msg.contains(&url), "{msg}");

        // A path that exists but is not a repository.
        let url = format!("file://{}", o.root.display());
        let store = GitStore::open_or_init(&o.root.join("store2.git"), &url).unwrap();
        let err = store.fetch_commit(o.commits[1]).unwrap_err();
        assert!(matches!(err, GitError::RemoteUnreachable { .. }), "{err:?}");
    }

    #[test]
    fn git_store_missing_objects_are_errors_naming_them() {
        let o = origin();
        let store = GitStore::open_or_init(&o.root.join("store.git"), &o.url).unwrap();
        let err = store.tree(o.commits[2]).unwrap_err().to_string();
        assert!(
            err.contains(&o.commits[2].to_hex()) && err.contains("fetch it first"),
            "{err}"
        );
        let err = store.blob(GitOid([1; 20])).unwrap_err().to_string();
        assert!(err.contains(&GitOid([1; 20]).to_hex()), "{err}");
        // A commit is not a blob.
        store.fetch_commit(o.commits[1]).unwrap();
        let err = store.blob(o.commits[1]).unwrap_err();
        assert!(
            matches!(
                err,
                GitError::Read(devd_sync::git::ReadError::WrongKind {
                    expected: "blob",
                    ..
                })
            ),
            "{err:?}"
        );
        // A non-empty directory that is not a repository is refused.
        assert!(matches!(
            GitStore::open_or_init(&o.work.join("dir"), &o.url),
            Err(GitError::Store { .. })
        ));
    }

    /// Errors of http(s) fetches name the remote but never the token nor a
    /// password in the URL. Port 1 on loopback refuses connections; the
    /// https case also builds the TLS client (rustls with ring, no
    /// aws-lc-rs).
    #[test]
    fn http_fetch_errors_hide_the_token_and_url_credentials() {
        let o = origin();
        let token_file = o.root.join("token");
        std::fs::write(&token_file, "tok-SECRET-1\n").unwrap();
        for (i, url) in [
            "http://127.0.0.1:1/origin.git",
            "https://127.0.0.1:1/origin.git",
            "http://x-access-token:PW-SECRET-2@127.0.0.1:1/origin.git",
            "https://x-access-token:PW-SECRET-2@127.0.0.1:1/origin.git",
        ]
        .into_iter()
        .enumerate()
        {
            let store = GitStore::open_or_init(&o.root.join(format!("s{i}")), url)
                .unwrap()
                .with_token_file(Some(token_file.clone()))
                .unwrap();
            let err = store.fetch_commit(o.commits[1]).unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(
                matches!(err, GitError::RemoteUnreachable { .. }),
                "{url}: {msg}"
            );
            assert!(msg.contains(&redact_url(url)), "{url}: {msg}");
            assert!(!msg.contains("SECRET"), "{url}: {msg}");
        }
        // An unreadable token file stops the start, naming the file.
        let err = GitStore::open_or_init(&o.root.join("s9"), "https://h/a.git")
            .unwrap()
            .with_token_file(Some(o.root.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token file") && err.contains(&o.root.display().to_string()),
            "{err}"
        );
        // Other remotes ignore it; an empty file means no token.
        GitStore::open_or_init(&o.root.join("s10"), &o.url)
            .unwrap()
            .with_token_file(Some(o.root.join("no-such-token")))
            .unwrap()
            .fetch_commit(o.commits[1])
            .unwrap();
        std::fs::write(&token_file, "\n").unwrap();
        for f in [token_file, o.root.join("no-such-token")] {
            GitStore::open_or_init(&o.root.join("s11"), "https://h/a.git")
                .unwrap()
                .with_token_file(Some(f))
                .unwrap();
        }
    }

    #[test]
    fn redact_url_hides_credentials_only() {
        for (url, want) in [
            (
                "https://user:s3cret@git.example/a.git",
                "https://***@git.example/a.git",
            ),
            (
                "https://s3cret@git.example:8443/a.git",
                "https://***@git.example:8443/a.git",
            ),
            ("http://127.0.0.1:9/a.git", "http://127.0.0.1:9/a.git"),
            ("https://git.example/a@b.git", "https://git.example/a@b.git"),
            ("ssh://git@host/repo.git", "ssh://git@host/repo.git"),
            ("ssh://git:pw@host/repo.git", "ssh://***@host/repo.git"),
            ("git@host:repo.git", "git@host:repo.git"),
            ("file:///srv/origin.git", "file:///srv/origin.git"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
        assert_eq!(
            url_password("https://u:p%40ss@h/a.git").as_deref(),
            Some("p%40ss")
        );
        assert_eq!(url_password("https://tok@h/a.git"), None);
        let h = basic_auth_header("tok");
        assert_eq!(h, "Authorization: Basic eC1hY2Nlc3MtdG9rZW46dG9r");
    }

    #[test]
    fn git_store_blob_oid_matches_git_hash_object() {
        let tmp = TempDir::new().unwrap();
        for (i, data) in [
            &b""[..],
            b"hello\n",
            &[0u8, 255, 10, 13, 0][..],
            &vec![b'x'; 100_000][..],
        ]
        .into_iter()
        .enumerate()
        {
            let p = tmp.path().join(format!("f{i}"));
            std::fs::write(&p, data).unwrap();
            let expected = git(
                tmp.path(),
                &["hash-object", "--no-filters", p.to_str().unwrap()],
            );
            assert_eq!(git_blob_oid(data), commit_id(&expected), "case {i}");
        }
    }
}

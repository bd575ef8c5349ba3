//! The git fixture: a bare origin and a clone of it as the laptop worktree,
//! with an initial commit pushed and `origin/HEAD` set.
//!
//! Initial tree of `main`:
//! ```text
//! .gitignore                 *.log, target/, devd.toml
//! README.md
//! src/main.rs
//! src/lib/util.rs
//! src/lib/deep/nested/mod.rs
//! docs/guide/intro.md
//! docs/guide/usage.md
//! scripts/build.sh           executable
//! latest.md -> docs/guide/intro.md
//! ```
//! `devd.toml` is git-ignored: it is configuration of this laptop, never
//! synced, and so never part of the compared worktrees.
//!
//! [`Fixture::from_example`] makes the same layout with one of the example
//! repositories under `examples/` as the initial commit instead.

use crate::daemon::Devd;
use crate::process::{Logs, tail};
use crate::receiver::{Receiver, ReceiverOpts};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `[sync]` section making the watcher react quickly.
pub const FAST_SYNC: &str = "[sync]\ndebounce_ms = 20\n";

const USER: [&str; 4] = [
    "-c",
    "user.name=devd tests",
    "-c",
    "user.email=tests@devd.invalid",
];

/// A temporary directory holding origin, laptop clone, `DEVD_HOME` and logs.
#[derive(Debug)]
pub struct Fixture {
    root: PathBuf,
    origin: PathBuf,
    laptop: PathBuf,
    home: PathBuf,
    logs: Logs,
    tmp: Option<tempfile::TempDir>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// Create origin and laptop clone with the initial commit pushed.
    pub fn new() -> Self {
        let fx = Self::empty_clone();
        fx.write(".gitignore", "*.log\ntarget/\ndevd.toml\n");
        fx.write(
            "README.md",
            "# demo\n\nA small service used by the devd end-to-end tests.\n",
        );
        fx.write("src/main.rs", "fn main() {\n    println!(\"hello\");\n}\n");
        fx.write(
            "src/lib/util.rs",
            "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
        );
        fx.write("src/lib/deep/nested/mod.rs", "pub const DEPTH: u32 = 3;\n");
        fx.write("docs/guide/intro.md", "# Intro\n\nStart here.\n");
        fx.write("docs/guide/usage.md", "# Usage\n\nRun it.\n");
        fx.write("scripts/build.sh", "#!/bin/sh\nset -e\necho building\n");
        fx.set_exec("scripts/build.sh", true);
        fx.symlink("latest.md", "docs/guide/intro.md");
        fx.push_initial_commit();
        fx
    }

    /// Like [`Fixture::new`], but the initial commit is the content of
    /// `examples/<name>/` of this source tree (e.g. `"demo"`), with
    /// `devd.local.toml` git-ignored.
    pub fn from_example(name: &str) -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        assert!(
            src.is_dir(),
            "no example repository {name:?} at {}",
            src.display()
        );
        let fx = Self::empty_clone();
        copy_tree(&src, &fx.laptop);
        let ignore = std::fs::read_to_string(fx.path(".gitignore")).unwrap_or_default();
        if !ignore.lines().any(|l| l.trim() == "devd.local.toml") {
            let sep = if ignore.is_empty() || ignore.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            fx.write(".gitignore", format!("{ignore}{sep}devd.local.toml\n"));
        }
        fx.push_initial_commit();
        fx
    }

    /// The temporary directory with an empty bare origin and its clone.
    fn empty_clone() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("devd-e2e-")
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let fx = Self {
            origin: root.join("origin.git"),
            laptop: root.join("laptop"),
            home: root.join("home"),
            logs: Logs::new(root.join("logs")),
            root,
            tmp: Some(tmp),
        };
        std::fs::create_dir_all(&fx.home).expect("create DEVD_HOME");
        git_in(
            &fx.root,
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git_in(
            &fx.root,
            &[
                "clone",
                "-q",
                fx.origin.to_str().expect("utf-8 path"),
                "laptop",
            ],
        );
        configure_clone(&fx.laptop);
        fx
    }

    /// Commit the whole worktree as "initial", push it and set
    /// `origin/HEAD`.
    fn push_initial_commit(&self) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "initial"]);
        self.git(&["push", "-q", "-u", "origin", "main"]);
        self.git(&["remote", "set-head", "origin", "main"]);
    }

    /// The temporary root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bare origin repository.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// `file://` URL of the origin.
    pub fn origin_url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    /// The laptop worktree (the repository devd watches).
    pub fn laptop(&self) -> &Path {
        &self.laptop
    }

    /// `DEVD_HOME` for every devd command of this fixture.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where command output is captured.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Absolute path of `rel` in the laptop worktree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.laptop.join(rel)
    }

    /// Write `content` to `rel`, creating parent directories.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        write_file(&self.path(rel), content.as_ref());
    }

    /// Append `content` to `rel`.
    pub fn append(&self, rel: &str, content: impl AsRef<[u8]>) {
        use std::io::Write;
        let path = self.path(rel);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {} for append: {e}", path.display()));
        f.write_all(content.as_ref()).expect("append");
    }

    /// Read `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let path = self.path(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Set (0755) or clear (0644) the executable bits of `rel`.
    pub fn set_exec(&self, rel: &str, exec: bool) {
        let path = self.path(rel);
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }

    /// Make `rel` a symlink to `target`, replacing whatever is there.
    pub fn symlink(&self, rel: &str, target: &str) {
        let path = self.path(rel);
        if path.symlink_metadata().is_ok() {
            self.remove(rel);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|e| panic!("symlink {} -> {target}: {e}", path.display()));
    }

    /// Remove a file, symlink or whole directory.
    pub fn remove(&self, rel: &str) {
        let path = self.path(rel);
        let meta = path
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// Rename `from` to `to` (plain filesystem rename, not `git mv`).
    pub fn rename(&self, from: &str, to: &str) {
        let to_path = self.path(to);
        if let Some(parent) = to_path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        std::fs::rename(self.path(from), &to_path)
            .unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
    }

    /// Run git in the laptop worktree; stdout on success, panic otherwise.
    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.laptop, args)
    }

    /// `git rev-parse <rev>` in the laptop worktree.
    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", rev]).trim().to_owned()
    }

    /// `git add -A && git commit -m msg` in the laptop worktree.
    pub fn commit_all(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }

    /// Commit everything and push the current branch to origin.
    pub fn commit_all_and_push(&self, msg: &str) {
        self.commit_all(msg);
        self.git(&["push", "-q", "origin", "HEAD"]);
        self.git(&["fetch", "-q", "origin"]);
    }

    /// Another clone of origin under the fixture root (a teammate).
    pub fn clone_origin(&self, name: &str) -> PathBuf {
        git_in(
            &self.root,
            &[
                "clone",
                "-q",
                self.origin.to_str().expect("utf-8 path"),
                name,
            ],
        );
        let dir = self.root.join(name);
        configure_clone(&dir);
        dir
    }

    /// Write `devd.toml` at the laptop repository root.
    pub fn write_config(&self, toml: &str) {
        self.write("devd.toml", toml);
    }

    /// Write `devd.local.toml` (this laptop's settings: `[receiver]`,
    /// `[sync]`) at the laptop repository root.
    pub fn write_local_config(&self, toml: &str) {
        self.write("devd.local.toml", toml);
    }

    /// A handle on the devd CLI for the laptop repository.
    pub fn devd(&self) -> Devd<'_> {
        Devd::new(self, self.laptop.clone())
    }

    /// A handle on the devd CLI for another repository (e.g. a
    /// [`Fixture::clone_origin`] clone), with this fixture's `DEVD_HOME`.
    pub fn devd_in(&self, repo: &Path) -> Devd<'_> {
        Devd::new(self, repo.to_owned())
    }

    /// Start `devd-receiver serve` with default options (workspace
    /// "default", data in `<root>/rx`, an ephemeral loopback port).
    pub fn receiver(&self) -> Receiver<'_> {
        Receiver::start(self, ReceiverOpts::default())
    }

    /// Start `devd-receiver serve` with `opts`.
    pub fn receiver_with(&self, opts: ReceiverOpts) -> Receiver<'_> {
        Receiver::start(self, opts)
    }

    /// Print the captured logs (commands, receivers, everything under
    /// `DEVD_HOME` that looks like a log), the last lines of each.
    pub fn dump_logs(&self) {
        eprintln!("===== devd-tests logs of {} =====", self.root.display());
        let mut files = Vec::new();
        collect_files(self.logs.dir(), &mut files);
        let mut home_files = Vec::new();
        collect_files(&self.home, &mut home_files);
        files.extend(home_files.into_iter().filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            name.contains("log") || name.ends_with(".out") || name.ends_with(".err")
        }));
        for f in files {
            let Ok(text) = std::fs::read(&f) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            eprintln!(
                "----- {} -----\n{}",
                f.display(),
                tail(&String::from_utf8_lossy(&text), 150)
            );
        }
        eprintln!("===== end of logs =====");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if std::env::var_os("DEVD_TESTS_KEEP").is_some()
                && let Some(tmp) = self.tmp.take()
            {
                eprintln!("DEVD_TESTS_KEEP: keeping {}", tmp.keep().display());
            }
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        match p.symlink_metadata() {
            Ok(m) if m.is_dir() => collect_files(&p, out),
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Copy the tree `src` into `dst` (files with their permissions, symlinks
/// as symlinks), leaving out `.git`.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let rd = std::fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    for entry in rd {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        if entry.file_name() == ".git" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = from
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("stat {}: {e}", from.display()));
        if meta.is_dir() {
            copy_tree(&from, &to);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", from.display()));
            std::os::unix::fs::symlink(&target, &to)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", to.display()));
        } else {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
    }
}

/// Write a file, creating parent directories.
pub fn write_file(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn configure_clone(dir: &Path) {
    git_in(dir, &["config", "user.name", "devd tests"]);
    git_in(dir, &["config", "user.email", "tests@devd.invalid"]);
    git_in(dir, &["config", "pull.rebase", "false"]);
    git_in(dir, &["config", "advice.detachedHead", "false"]);
}

/// Run git in `dir` with hermetic configuration ([`devd_testkit::git`])
/// and the tests' commit identity; stdout on success, panic otherwise.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let args: Vec<&str> = USER.iter().chain(args).copied().collect();
    devd_testkit::git(dir, &args)
        .unwrap_or_else(|e| panic!("git failed in {}: {e:#}", dir.display()))
}

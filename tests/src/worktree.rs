//! Worktree snapshots and their comparison.
//!
//! The laptop's visible worktree is what git would consider: tracked and
//! untracked-not-ignored paths (`git ls-files -co --exclude-standard`) that
//! exist, minus those matched by `.devdignore`. The receiver's worktree is
//! every file and symlink under it, except its top-level `.git`.

use devd_protocol::{ContentId, Entry, Overlay, RelPath};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// One path's state.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    File {
        len: u64,
        hash: blake3::Hash,
        exec: bool,
    },
    Symlink(PathBuf),
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::File { len, hash, exec } => {
                write!(
                    f,
                    "file({len} bytes, blake3 {}, {})",
                    &hash.to_hex()[..12],
                    if *exec { "exec" } else { "no exec" }
                )
            }
            Node::Symlink(t) => write!(f, "symlink -> {}", t.display()),
        }
    }
}

impl Node {
    fn read(path: &Path) -> io::Result<Option<Node>> {
        let meta = path.symlink_metadata()?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            Ok(Some(Node::Symlink(std::fs::read_link(path)?)))
        } else if ft.is_file() {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(path)?)?;
            Ok(Some(Node::File {
                len: meta.len(),
                hash: h.finalize(),
                exec: meta.permissions().mode() & 0o100 != 0,
            }))
        } else {
            Ok(None)
        }
    }
}

/// Path (`/`-separated, relative) → state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<String, Node>,
}

impl Snapshot {
    /// The laptop's visible worktree (see the module docs).
    pub fn of_laptop(repo: &Path) -> io::Result<Self> {
        let out = devd_testkit::git_command(repo)
            .args(["ls-files", "-z", "-c", "-o", "--exclude-standard"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "git ls-files failed in {}: {}",
                repo.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let devdignore = devdignore_matcher(repo);
        let mut entries = BTreeMap::new();
        for raw in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            let rel = String::from_utf8(raw.to_vec()).map_err(io::Error::other)?;
            if devdignore
                .matched_path_or_any_parents(&rel, false)
                .is_ignore()
            {
                continue;
            }
            match Node::read(&repo.join(&rel)) {
                Ok(Some(node)) => {
                    entries.insert(rel, node);
                }
                // Deleted (still listed by `ls-files -c`) or now a directory.
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self { entries })
    }

    /// Every file and symlink under `dir` (not following symlinks), except
    /// `dir/.git`. A missing `dir` is an empty snapshot.
    pub fn of_tree(dir: &Path) -> io::Result<Self> {
        let mut entries = BTreeMap::new();
        if dir.symlink_metadata().is_err() {
            return Ok(Self { entries });
        }
        walk(dir, "", &mut entries)?;
        Ok(Self { entries })
    }

    /// Human-readable differences, `self` being "laptop" and `other`
    /// "receiver", at most `limit` of them plus a count of the rest.
    pub fn differences(&self, other: &Snapshot, limit: usize) -> Vec<String> {
        let paths: BTreeSet<&String> = self.entries.keys().chain(other.entries.keys()).collect();
        let mut out = Vec::new();
        let mut total = 0usize;
        for p in paths {
            let msg = match (self.entries.get(p), other.entries.get(p)) {
                (Some(a), None) => format!("{p}: only on the laptop ({a:?})"),
                (None, Some(b)) => format!("{p}: only on the receiver ({b:?})"),
                (Some(a), Some(b)) if a != b => {
                    let what = match (a, b) {
                        (
                            Node::File {
                                hash: ha, exec: ea, ..
                            },
                            Node::File {
                                hash: hb, exec: eb, ..
                            },
                        ) => {
                            if ha != hb {
                                "content differs"
                            } else if ea != eb {
                                "exec bit differs"
                            } else {
                                "differs"
                            }
                        }
                        (Node::Symlink(_), Node::Symlink(_)) => "symlink target differs",
                        _ => "type differs",
                    };
                    format!("{p}: {what}: laptop {a:?}, receiver {b:?}")
                }
                _ => continue,
            };
            total += 1;
            if out.len() < limit {
                out.push(msg);
            }
        }
        if total > out.len() {
            out.push(format!("... and {} more differences", total - out.len()));
        }
        out
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| io::Error::other(format!("non-UTF-8 name {n:?}")))?;
        if prefix.is_empty() && name == ".git" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&path, &rel, out)?;
        } else if let Some(node) = Node::read(&path)? {
            out.insert(rel, node);
        }
    }
    Ok(())
}

fn devdignore_matcher(repo: &Path) -> ignore::gitignore::Gitignore {
    let mut b = ignore::gitignore::GitignoreBuilder::new(repo);
    let file = repo.join(".devdignore");
    if file.is_file()
        && let Some(e) = b.add(&file)
    {
        panic!("cannot parse {}: {e}", file.display());
    }
    b.build().expect("build the .devdignore matcher")
}

fn compare(laptop: &Path, receiver: &Path) -> Result<(Snapshot, Snapshot), String> {
    let a =
        Snapshot::of_laptop(laptop).map_err(|e| format!("cannot read the laptop worktree: {e}"))?;
    let b = Snapshot::of_tree(receiver)
        .map_err(|e| format!("cannot read the receiver worktree: {e}"))?;
    let diffs = a.differences(&b, 15);
    if diffs.is_empty() {
        Ok((a, b))
    } else {
        Err(format!(
            "receiver worktree {} differs from laptop worktree {} ({} vs {} paths):\n  {}",
            receiver.display(),
            laptop.display(),
            a.entries.len(),
            b.entries.len(),
            diffs.join("\n  ")
        ))
    }
}

/// Assert the receiver's worktree equals the laptop's visible worktree:
/// same paths, bytes, exec bits and symlink targets.
#[track_caller]
pub fn assert_worktrees_equal(laptop: &Path, receiver: &Path) {
    if let Err(msg) = compare(laptop, receiver) {
        panic!("{msg}");
    }
}

/// Poll until the worktrees are equal (watcher-driven syncs); return how
/// long it took, panic with the last differences after `timeout`.
#[track_caller]
pub fn wait_for_worktrees_equal(laptop: &Path, receiver: &Path, timeout: Duration) -> Duration {
    let mut last = String::new();
    match crate::wait::poll_until(timeout, || match compare(laptop, receiver) {
        Ok(_) => true,
        Err(msg) => {
            last = msg;
            false
        }
    }) {
        Some(d) => d,
        None => panic!("timed out after {timeout:?} waiting for the receiver to converge: {last}"),
    }
}

/// The overlay digest devd must report for the laptop worktree against
/// `base` (40-hex commit), computed independently: every visible path whose
/// state differs from the base tree, plus `Deleted` for base paths that are
/// gone. Returns the lowercase hex digest and the number of entries.
/// Files are taken to be in git's modes (no narrower `mode` entries).
pub fn expected_overlay_digest(repo: &Path, base: &str) -> (String, usize) {
    let base_tree = base_tree(repo, base);
    let laptop = Snapshot::of_laptop(repo).expect("read the laptop worktree");
    let paths: BTreeSet<&String> = base_tree.keys().chain(laptop.entries.keys()).collect();
    let mut overlay = Overlay::new();
    for p in paths {
        let entry = match (base_tree.get(p), laptop.entries.get(p)) {
            (Some(b), Some(l)) if b == l => continue,
            (_, Some(Node::File { hash, exec, .. })) => Entry::File {
                id: ContentId(*hash.as_bytes()),
                exec: *exec,
                mode: None,
            },
            (_, Some(Node::Symlink(t))) => Entry::Symlink {
                target: t.to_string_lossy().into_owned(),
            },
            (Some(_), None) => Entry::Deleted,
            (None, None) => unreachable!("path from the union"),
        };
        overlay.insert(
            RelPath::new(p.as_str()).unwrap_or_else(|e| panic!("{e}")),
            entry,
        );
    }
    (overlay.digest().to_hex(), overlay.len())
}

/// Path → node of every blob and symlink in commit `base`.
fn base_tree(repo: &Path, base: &str) -> BTreeMap<String, Node> {
    let listing = crate::repo::git_in(repo, &["ls-tree", "-r", "-z", "--full-tree", base]);
    let mut items = Vec::new();
    for rec in listing.split('\0').filter(|r| !r.is_empty()) {
        let (meta, path) = rec.split_once('\t').expect("ls-tree record has a tab");
        let mut f = meta.split(' ');
        let (mode, kind, oid) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if kind == "blob" {
            items.push((path.to_owned(), mode.to_owned(), oid.to_owned()));
        }
    }
    let mut child = devd_testkit::git_command(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start git cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let oids: String = items.iter().map(|(_, _, oid)| format!("{oid}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(oids.as_bytes()));
    let out = child.wait_with_output().expect("git cat-file output");
    writer
        .join()
        .expect("writer thread")
        .expect("write to git cat-file");
    let mut data = &out.stdout[..];
    let mut tree = BTreeMap::new();
    for (path, mode, _) in items {
        let nl = data
            .iter()
            .position(|b| *b == b'\n')
            .expect("cat-file header");
        let header = std::str::from_utf8(&data[..nl]).expect("utf-8 header");
        let size: usize = header
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("size in header");
        let content = &data[nl + 1..nl + 1 + size];
        data = &data[nl + 1 + size + 1..];
        let node = if mode == "120000" {
            Node::Symlink(PathBuf::from(String::from_utf8_lossy(content).into_owned()))
        } else {
            Node::File {
                len: size as u64,
                hash: blake3::hash(content),
                exec: mode == "100755",
            }
        };
        tree.insert(path, node);
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Fixture, git_in};

    /// A fresh checkout of origin equals the laptop; untracked files show
    /// up, ignored and devdignored ones do not; the expected overlay
    /// follows.
    #[test]
    fn snapshots_and_expected_overlay() {
        let fx = Fixture::new();
        git_in(
            fx.root(),
            &["clone", "-q", fx.origin().to_str().unwrap(), "checkout"],
        );
        let checkout = fx.root().join("checkout");
        let base = fx.rev_parse("origin/main");
        assert_worktrees_equal(fx.laptop(), &checkout);
        assert_eq!(
            expected_overlay_digest(fx.laptop(), &base),
            (Overlay::new().digest().to_hex(), 0)
        );
        let laptop = Snapshot::of_laptop(fx.laptop()).unwrap();
        assert!(
            matches!(laptop.entries.get("latest.md"), Some(Node::Symlink(t)) if t == Path::new("docs/guide/intro.md"))
        );
        assert!(matches!(
            laptop.entries.get("scripts/build.sh"),
            Some(Node::File { exec: true, .. })
        ));
        assert!(
            !laptop.entries.contains_key("devd.toml") && laptop.entries.len() == 9,
            "{laptop:?}"
        );

        fx.write_config("[sync]\n");
        fx.write("x.log", "ignored\n");
        fx.write(".devdignore", "secret/\n");
        fx.write("secret/a", "devdignored\n");
        fx.write("new/file.txt", "untracked\n");
        fx.set_exec("src/main.rs", true);
        fx.remove("docs/guide/usage.md");
        let diffs = Snapshot::of_laptop(fx.laptop())
            .unwrap()
            .differences(&Snapshot::of_tree(&checkout).unwrap(), 10);
        assert_eq!(
            diffs
                .iter()
                .map(|d| d.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                ".devdignore",
                "docs/guide/usage.md",
                "new/file.txt",
                "src/main.rs"
            ],
            "{diffs:#?}"
        );
        assert!(diffs[3].contains("exec bit differs"), "{}", diffs[3]);
        let (_, entries) = expected_overlay_digest(fx.laptop(), &base);
        assert_eq!(
            entries, 4,
            "overlay: .devdignore, usage.md deleted, new/file.txt, main.rs exec"
        );
    }
}

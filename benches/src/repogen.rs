//! The deterministic repository generator: a bare origin with one commit of
//! `files` source-like text files (~2 KB each) spread over `files / 50`
//! directories (2,000 for 100k files, 20 for 1k), six 1 MB files, and a
//! laptop clone with `origin/HEAD` set and a local, unpushed branch
//! `feature` that differs from `main` in `churn_files` paths (90 %
//! modified, 5 % added, 5 % deleted).
//!
//! Content comes from [`Rng`] seeded per file, so the same seed gives the
//! same bytes, paths and commit ids on every machine; the commits are
//! written with `git fast-import` (fixed author dates) rather than
//! `git add`, which would take minutes on 100k files.

use crate::rng::Rng;
use crate::util::run_with_stdin;
use anyhow::{Context, bail};
use devd_testkit::git;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Size of one "big" file.
pub const BIG_FILE_BYTES: usize = 1 << 20;
/// Number of big files (edits in scenario 2 each start from a clean one).
pub const BIG_FILES: usize = 6;

const STREAM_SMALL: u64 = 1;
const STREAM_BIG: u64 = 2;
const STREAM_FEATURE: u64 = 3;

/// What to generate.
#[derive(Clone, Debug)]
pub struct RepoSpec {
    pub seed: u64,
    /// Small (~2 KB) files.
    pub files: usize,
    /// Paths in which `feature` differs from `main`.
    pub churn_files: usize,
}

impl RepoSpec {
    /// Directories holding the small files: one per 50 files.
    pub fn dirs(&self) -> usize {
        (self.files / 50).max(1)
    }

    /// (top-level dirs, leaf dirs under each) with `top + top * leaves == dirs`.
    fn layout(&self) -> (usize, usize) {
        let dirs = self.dirs();
        if dirs < 3 {
            return (1, dirs.saturating_sub(1).max(1));
        }
        let mut top = (dirs as f64).sqrt() as usize;
        while top > 1 && !dirs.is_multiple_of(top) {
            top -= 1;
        }
        (top, (dirs / top).saturating_sub(1).max(1))
    }

    /// Worktree path of small file `i`.
    pub fn small_path(&self, i: usize) -> String {
        let (top, leaves) = self.layout();
        let leaf = i % (top * leaves);
        let ext = match i % 10 {
            7 => "go",
            8 => "ts",
            9 => "py",
            _ => "rs",
        };
        format!(
            "crates/c{:02}/m{:02}/f{i:06}.{ext}",
            leaf / leaves,
            leaf % leaves
        )
    }

    /// Index of the small file at `rel`, if it is one.
    pub fn small_index(&self, rel: &str) -> Option<usize> {
        let name = rel.rsplit('/').next()?;
        let i: usize = name.strip_prefix('f')?.split('.').next()?.parse().ok()?;
        (i < self.files && self.small_path(i) == rel).then_some(i)
    }

    /// Content of small file `i` in `main`.
    pub fn small_content(&self, i: usize) -> Vec<u8> {
        let mut r = Rng::derive(self.seed, STREAM_SMALL << 40 | i as u64);
        let target = r.range(1_600, 2_500) as usize;
        source_text(&mut r, &format!("f{i:06}"), target)
    }

    /// Worktree path of big file `k`.
    pub fn big_path(&self, k: usize) -> String {
        format!("assets/generated/table_{k}.rs")
    }

    /// Content of big file `k` in `main`.
    pub fn big_content(&self, k: usize) -> Vec<u8> {
        let mut r = Rng::derive(self.seed, STREAM_BIG << 40 | k as u64);
        let mut v = source_text(&mut r, &format!("table_{k}"), BIG_FILE_BYTES);
        v.truncate(BIG_FILE_BYTES);
        if let Some(nl) = v.iter().rposition(|&b| b == b'\n') {
            v.truncate(nl + 1);
        }
        v
    }

    /// How `feature` differs from `main`: path → content (`None`: deleted).
    pub fn feature_changes(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut r = Rng::derive(self.seed, STREAM_FEATURE << 40);
        let n = self.churn_files.min(self.files);
        let deleted = n / 20;
        let added = n / 20;
        let modified = n - deleted - added;
        let picks = r.sample(self.files, modified + deleted);
        let mut out = Vec::with_capacity(n);
        for (k, &i) in picks.iter().enumerate() {
            if k < modified {
                let old = self.small_content(i);
                out.push((self.small_path(i), Some(branch_edit(&old, &mut r, k))));
            } else {
                out.push((self.small_path(i), None));
            }
        }
        for a in 0..added {
            let path = format!("crates/feature/new_{a:05}.rs");
            let target = r.range(1_600, 2_500) as usize;
            out.push((path, Some(source_text(&mut r, &format!("new_{a}"), target))));
        }
        out
    }
}

const WORDS: &[&str] = &[
    "config", "request", "handler", "buffer", "session", "client", "server", "index", "cache",
    "value", "state", "event", "token", "stream", "frame", "record", "entry", "worker", "queue",
    "batch", "payload", "schema", "result", "context", "node", "graph", "digest", "offset",
    "window", "budget", "lease", "cursor", "shard", "replica", "ledger", "quota",
];
const TYPES: &[&str] = &[
    "u32",
    "u64",
    "usize",
    "String",
    "Vec<u8>",
    "bool",
    "Option<u32>",
    "HashMap<String, u64>",
];

fn word(r: &mut Rng) -> &'static str {
    WORDS[r.below(WORDS.len() as u64) as usize]
}

fn camel(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// Source-like text (Rust-flavoured) of at least `target` bytes.
pub fn source_text(r: &mut Rng, name: &str, target: usize) -> Vec<u8> {
    let mut s = String::with_capacity(target + 512);
    let w1 = word(r);
    let w2 = word(r);
    s.push_str(&format!(
        "//! {name}: {w1} {w2} support (generated by devd-benches).\n\nuse crate::{w1}::{};\nuse std::collections::HashMap;\n\n",
        camel(w2)
    ));
    let mut n = 0u32;
    while s.len() < target {
        let ty = format!("{}{}{n}", camel(word(r)), camel(word(r)));
        s.push_str(&format!(
            "/// Tracks the {} of a {} per {}.\n#[derive(Debug, Default)]\npub struct {ty} {{\n",
            word(r),
            word(r),
            word(r)
        ));
        for _ in 0..r.range(2, 5) {
            s.push_str(&format!(
                "    pub {}: {},\n",
                word(r),
                TYPES[r.below(TYPES.len() as u64) as usize]
            ));
        }
        s.push_str(&format!("}}\n\nimpl {ty} {{\n"));
        for f in 0..r.range(1, 4) {
            let a = word(r);
            let b = word(r);
            let k = r.range(3, 9999);
            s.push_str(&format!(
                "    /// Computes the {a} from the {b}.\n    pub fn {a}_{b}_{f}(&self, {a}: u64, {b}: u64) -> u64 {{\n        let mixed = {a}.wrapping_mul({k}) ^ ({b} >> {});\n        if mixed % {} == 0 {{\n            return mixed / {};\n        }}\n        mixed.rotate_left({}) + {k}\n    }}\n\n",
                r.range(1, 31),
                r.range(2, 17),
                r.range(2, 9),
                r.range(1, 63),
            ));
        }
        s.push_str("}\n\n");
        n += 1;
    }
    s.into_bytes()
}

/// A one-line edit: the line in the middle of `content` gets a comment
/// carrying `tag` appended. Different tags give different contents.
pub fn one_line_edit(content: &[u8], tag: &str) -> Vec<u8> {
    let lines: Vec<&[u8]> = content.split_inclusive(|&b| b == b'\n').collect();
    let at = lines.len() / 2;
    let mut out = Vec::with_capacity(content.len() + tag.len() + 16);
    for (i, l) in lines.iter().enumerate() {
        if i == at {
            let body = l.strip_suffix(b"\n").unwrap_or(l);
            out.extend_from_slice(body);
            out.extend_from_slice(format!(" // edit {tag}\n").as_bytes());
        } else {
            out.extend_from_slice(l);
        }
    }
    out
}

/// What a branch typically does to a file: a few lines changed and a new
/// function appended.
fn branch_edit(content: &[u8], r: &mut Rng, k: usize) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = content
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    for _ in 0..3 {
        let at = r.below(lines.len() as u64) as usize;
        let l = &mut lines[at];
        if l.ends_with(b"\n") {
            l.pop();
        }
        l.extend_from_slice(format!(" // feature change {k}\n").as_bytes());
    }
    let mut out = lines.concat();
    out.extend_from_slice(
        format!(
            "/// Added on the feature branch.\npub fn feature_{k}(x: u64) -> u64 {{\n    x.wrapping_mul({}) ^ {}\n}}\n",
            r.range(3, 999),
            r.range(3, 999)
        )
        .as_bytes(),
    );
    out
}

/// The generated repositories.
#[derive(Clone, Debug)]
pub struct Generated {
    pub spec: RepoSpec,
    /// Bare origin (`file://` remote of the laptop clone).
    pub origin: PathBuf,
    /// The laptop worktree.
    pub laptop: PathBuf,
    /// Bytes of the worktree files at `main`.
    pub bytes: u64,
    /// The `main` commit.
    pub main_commit: String,
}

impl Generated {
    /// Absolute path of `rel` in the laptop worktree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.laptop.join(rel)
    }
}

const AUTHOR: &str = "devd-benches <bench@devd.invalid> 1767225600 +0000";

fn fast_import_header(out: &mut Vec<u8>, branch: &str, msg: &str, from: Option<&str>) {
    out.extend_from_slice(
        format!(
            "commit refs/heads/{branch}\nauthor {AUTHOR}\ncommitter {AUTHOR}\ndata {}\n{msg}\n",
            msg.len()
        )
        .as_bytes(),
    );
    if let Some(f) = from {
        out.extend_from_slice(format!("from {f}\n").as_bytes());
    }
}

fn fast_import_file(out: &mut Vec<u8>, path: &str, data: &[u8]) {
    out.extend_from_slice(format!("M 100644 inline {path}\ndata {}\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.push(b'\n');
}

/// Generate origin and laptop clone under `root` (which must not exist or
/// be empty).
pub fn generate(spec: &RepoSpec, root: &Path) -> anyhow::Result<Generated> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let origin = root.join("origin.git");
    let laptop = root.join("laptop");
    if origin.exists() || laptop.exists() {
        bail!("{} already holds a generated repository", root.display());
    }
    git(root, &["init", "-q", "--bare", "-b", "main", "origin.git"])?;

    // main, straight into the origin.
    let mut stream = Vec::with_capacity(spec.files * 2_200 + BIG_FILES * BIG_FILE_BYTES);
    fast_import_header(
        &mut stream,
        "main",
        &format!(
            "generated: {} files, {} dirs, seed {}",
            spec.files,
            spec.dirs(),
            spec.seed
        ),
        None,
    );
    let mut bytes = 0u64;
    let readme = format!(
        "# bench repo\n\nGenerated by devd-benches: {} files of ~2 KB in {} directories, seed {}.\n",
        spec.files,
        spec.dirs(),
        spec.seed
    );
    for (p, d) in [
        (".gitignore", b"target/\n*.log\n".to_vec()),
        ("README.md", readme.into_bytes()),
    ] {
        bytes += d.len() as u64;
        fast_import_file(&mut stream, p, &d);
    }
    for k in 0..BIG_FILES {
        let d = spec.big_content(k);
        bytes += d.len() as u64;
        fast_import_file(&mut stream, &spec.big_path(k), &d);
    }
    for i in 0..spec.files {
        let d = spec.small_content(i);
        bytes += d.len() as u64;
        fast_import_file(&mut stream, &spec.small_path(i), &d);
    }
    stream.extend_from_slice(b"done\n");
    run_with_stdin(
        std::process::Command::new("git")
            .current_dir(&origin)
            .args(["fast-import", "--quiet", "--done"]),
        &stream,
    )
    .context("git fast-import into the origin")?;
    drop(stream);

    // The laptop: a local clone (hard links), then a file:// remote.
    git(
        root,
        &[
            "-c",
            "checkout.workers=0",
            "clone",
            "-q",
            origin.to_str().context("non-UTF-8 temp path")?,
            "laptop",
        ],
    )?;
    let url = format!("file://{}", origin.display());
    git(&laptop, &["remote", "set-url", "origin", &url])?;
    git(&laptop, &["config", "user.name", "devd-benches"])?;
    git(&laptop, &["config", "user.email", "bench@devd.invalid"])?;
    git(&laptop, &["config", "gc.auto", "0"])?;
    let main_commit = git(&laptop, &["rev-parse", "HEAD"])?.trim().to_owned();
    let origin_head = git(&laptop, &["rev-parse", "origin/HEAD"])?;
    if origin_head.trim() != main_commit {
        bail!("origin/HEAD is not set to main in the generated clone");
    }

    // feature: local and unpushed, so a checkout ships its changes as overlay.
    let mut stream = Vec::new();
    fast_import_header(
        &mut stream,
        "feature",
        &format!("feature: {} paths differ", spec.churn_files),
        Some(&main_commit),
    );
    for (p, c) in spec.feature_changes() {
        match c {
            Some(d) => fast_import_file(&mut stream, &p, &d),
            None => stream.extend_from_slice(format!("D {p}\n").as_bytes()),
        }
    }
    stream.extend_from_slice(b"done\n");
    run_with_stdin(
        std::process::Command::new("git")
            .current_dir(&laptop)
            .args(["fast-import", "--quiet", "--done"]),
        &stream,
    )
    .context("git fast-import of the feature branch")?;
    Ok(Generated {
        spec: spec.clone(),
        origin,
        laptop,
        bytes,
        main_commit,
    })
}

/// Write `data` to `path` the way most tools do (truncate and write in
/// place), creating parent directories.
pub fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_the_requested_directory_count() {
        for files in [1_000usize, 100_000] {
            let spec = RepoSpec {
                seed: 1,
                files,
                churn_files: 10,
            };
            let dirs: std::collections::HashSet<String> = (0..files)
                .map(|i| {
                    let p = spec.small_path(i);
                    p[..p.rfind('/').unwrap()].to_owned()
                })
                .collect();
            let tops: std::collections::HashSet<&str> = dirs
                .iter()
                .map(|d| &d[..d[7..].find('/').unwrap() + 7])
                .collect();
            assert_eq!(dirs.len() + tops.len(), spec.dirs(), "files = {files}");
        }
    }

    #[test]
    fn content_is_deterministic_source_like_and_about_2kb() {
        let spec = RepoSpec {
            seed: 42,
            files: 1000,
            churn_files: 100,
        };
        let a = spec.small_content(5);
        assert_eq!(a, spec.small_content(5));
        assert_ne!(a, spec.small_content(6));
        assert!((1_600..3_200).contains(&a.len()), "{}", a.len());
        assert!(std::str::from_utf8(&a).unwrap().contains("pub fn"));
        let big = spec.big_content(0);
        assert!(big.len() > BIG_FILE_BYTES - 2048 && big.len() <= BIG_FILE_BYTES);
        let ch = spec.feature_changes();
        assert_eq!(ch.len(), 100);
        assert_eq!(ch.iter().filter(|(_, c)| c.is_none()).count(), 5);
    }

    #[test]
    fn one_line_edit_changes_exactly_one_line() {
        let spec = RepoSpec {
            seed: 3,
            files: 10,
            churn_files: 1,
        };
        let a = spec.small_content(0);
        let b = one_line_edit(&a, "x1");
        let la: Vec<_> = a.split(|&c| c == b'\n').collect();
        let lb: Vec<_> = b.split(|&c| c == b'\n').collect();
        assert_eq!(la.len(), lb.len());
        assert_eq!(la.iter().zip(&lb).filter(|(x, y)| x != y).count(), 1);
        assert_ne!(one_line_edit(&b, "x2"), b);
    }
}

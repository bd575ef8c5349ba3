//! Running commands with stdin, reading `/proc`, comparing trees, waiting
//! for files, statistics and human units. (Running commands, git, HTTP GET
//! and containers: [`devd_testkit`].)

use anyhow::{Context, bail};
use devd_testkit::output;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run a command with `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let write = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    write.context("writing stdin")?;
    Ok(())
}

/// Write dirty pages back (`sync`), so that writeback left over from one
/// step does not slow down the next measured one.
pub fn flush_disk() {
    let _ = Command::new("sync").status();
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> u64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// (utime + stime, cutime + cstime) of `pid`, in clock ticks.
pub fn proc_cpu_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces.
    let rest = &s[s.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14.
    let n = |i: usize| -> anyhow::Result<u64> { Ok(f[i - 3].parse()?) };
    Ok((n(14)? + n(15)?, n(16)? + n(17)?))
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmRSS`), in bytes.
pub fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix(field).and_then(|v| v.strip_prefix(':')) {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("{field} not in /proc/{pid}/status")
}

/// What a path should be in a worktree: a file with this content, or absent.
pub type Expect = (PathBuf, Option<Vec<u8>>);

fn matches(path: &Path, want: &Option<Vec<u8>>) -> bool {
    match want {
        Some(w) => std::fs::read(path).is_ok_and(|got| &got == w),
        None => path.symlink_metadata().is_err(),
    }
}

/// Poll until every expectation holds (checked in order; one that held is
/// not re-read), every `interval`. Returns the time from `since` to the
/// moment the last one held, or an error naming the first path that did
/// not match within `timeout`.
pub fn wait_for(
    expect: &[Expect],
    since: Instant,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let mut i = 0;
    loop {
        while i < expect.len() && matches(&expect[i].0, &expect[i].1) {
            i += 1;
        }
        if i == expect.len() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            let (p, want) = &expect[i];
            let got = std::fs::read(p).map(|d| d.len());
            bail!(
                "{} of {} expected files never arrived within {timeout:?}; first: {} (want {}, have {:?})",
                expect.len() - i,
                expect.len(),
                p.display(),
                want.as_ref()
                    .map_or("absent".to_string(), |w| format!("{} bytes", w.len())),
                got.map_err(|e| e.kind())
            );
        }
        std::thread::sleep(interval);
    }
}

/// A file's identity in a tree comparison.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { hash: blake3::Hash, exec: bool },
    Symlink(PathBuf),
}

fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            let m = e.metadata()?;
            let rel = p.strip_prefix(root)?.to_path_buf();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(rel, Node::Symlink(std::fs::read_link(&p)?));
            } else {
                let data = std::fs::read(&p)?;
                out.insert(
                    rel,
                    Node::File {
                        hash: blake3::hash(&data),
                        exec: m.permissions().mode() & 0o100 != 0,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Compare two worktrees (contents, exec bit, symlinks; `.git` ignored).
/// `Ok(())` when equal, else an error listing a few differences.
pub fn compare_trees(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (sa, sb) = std::thread::scope(|s| {
        let ha = s.spawn(|| snapshot(a));
        let sb = snapshot(b);
        (ha.join().expect("snapshot thread"), sb)
    });
    let (sa, sb) = (sa?, sb?);
    let mut diffs = Vec::new();
    for (p, n) in &sa {
        match sb.get(p) {
            None => diffs.push(format!("{} missing on the receiver", p.display())),
            Some(m) if m != n => diffs.push(format!("{} differs", p.display())),
            _ => {}
        }
    }
    for p in sb.keys() {
        if !sa.contains_key(p) {
            diffs.push(format!("{} exists only on the receiver", p.display()));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    bail!(
        "{} differences between {} and {}, e.g.: {}",
        diffs.len(),
        a.display(),
        b.display(),
        diffs[..diffs.len().min(5)].join("; ")
    )
}

/// Percentile (nearest rank) of sorted `v`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `v` (any order).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

/// Human bytes: `1.2 KB`, `3.4 MB` (decimal units).
pub fn human_bytes(b: f64) -> String {
    if b < 1e3 {
        format!("{b:.0} B")
    } else if b < 1e6 {
        format!("{:.1} KB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} GB", b / 1e9)
    }
}

/// Human duration from milliseconds.
pub fn human_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn proc_stat_of_self() {
        let (t, _) = proc_cpu_ticks(std::process::id()).unwrap();
        let _ = t;
        assert!(proc_status_kb(std::process::id(), "VmRSS").unwrap() > 0);
    }

    #[test]
    fn tree_comparison_and_wait() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for r in [&a, &b] {
            std::fs::create_dir_all(r.join("x/.git")).unwrap();
            std::fs::write(r.join("x/f"), b"1").unwrap();
            std::fs::write(r.join("x/.git/HEAD"), r.to_str().unwrap()).unwrap();
        }
        compare_trees(&a, &b).unwrap();
        std::fs::write(b.join("x/f"), b"2").unwrap();
        assert!(compare_trees(&a, &b).is_err());
        let t = wait_for(
            &[(b.join("x/f"), Some(b"2".to_vec())), (b.join("y"), None)],
            Instant::now(),
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(t < Duration::from_secs(1));
        assert!(
            wait_for(
                &[(b.join("x/f"), Some(b"3".to_vec()))],
                Instant::now(),
                Duration::from_millis(1),
                Duration::from_millis(20),
            )
            .is_err()
        );
    }
}

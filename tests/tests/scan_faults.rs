//! What the scanner meets in real worktrees besides ordinary edits: a file
//! that keeps changing while it is sent, files it may not read,
//! ignore-file edits, private file modes, mass deletions, a FIFO in place
//! of a file, a submodule. Real daemon, real
//! embedded receiver, real git; only the watcher (no `devd sync`) where the
//! defect was that the watcher-driven rescan missed something.

use devd_tests::{
    Devd, FAST_SYNC, Fixture, SyncReport, assert_worktrees_equal, wait_for_worktrees_equal,
    wait_until,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a watcher-driven sync may take (the design targets ~2 s).
const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Run devd without the capabilities that let root read anything
/// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`): the tests run as root, and
/// a mode-000 file is unreadable only to a process without them.
const NO_DAC: &[&str] = &[
    "setpriv",
    "--inh-caps=-all",
    "--bounding-set=-dac_override,-dac_read_search",
];

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `devd status --json`'s `skipped` list.
fn skipped(devd: &Devd<'_>) -> Vec<String> {
    devd.status()
        .raw
        .get("skipped")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Start the daemon (with the embedded receiver) and return its worktree.
fn start(devd: &Devd<'_>) -> PathBuf {
    devd.fixture().write_config(FAST_SYNC);
    devd.start_wait();
    let worktree = devd
        .status()
        .receiver_worktree
        .expect("the embedded receiver's worktree");
    assert_worktrees_equal(devd.fixture().laptop(), &worktree);
    worktree
}

/// An unreadable file or directory (permission denied) does not fail the
/// scan: everything else syncs, the receiver keeps what it had of the
/// unreadable paths (a previous overlay version, the base version, an
/// earlier untracked file), `devd status` lists them, and once readable
/// again they sync.
#[test]
fn unreadable_files_and_directories_are_skipped_listed_and_kept() {
    let fx = Fixture::new();
    fx.write("notes/old.txt", "untracked, synced before\n");
    fx.write("src/main.rs", "fn main() { /* v2 */ }\n");
    let devd = fx.devd().via(NO_DAC);
    let worktree = start(&devd);

    // A modified tracked file edited again, then made unreadable.
    fx.write("src/main.rs", "fn main() { /* v3 */ }\n");
    chmod(&fx.path("src/main.rs"), 0o000);
    // A directory of tracked files, and one of untracked files.
    chmod(&fx.path("docs/guide"), 0o000);
    chmod(&fx.path("notes"), 0o000);
    // A new unreadable file, and an ordinary edit.
    fx.write("secret.txt", "no\n");
    chmod(&fx.path("secret.txt"), 0o000);
    fx.write("README.md", "# edited while some files are unreadable\n");

    let report = devd.sync();
    println!("sync with unreadable paths: {report:?}");
    assert_eq!(
        read(&worktree.join("README.md")).as_deref(),
        Some(&b"# edited while some files are unreadable\n"[..]),
        "the readable edit did not arrive"
    );
    assert_eq!(
        read(&worktree.join("src/main.rs")).as_deref(),
        Some(&b"fn main() { /* v2 */ }\n"[..]),
        "the receiver lost its previous version of the unreadable file"
    );
    assert_eq!(
        read(&worktree.join("docs/guide/intro.md")).as_deref(),
        Some(&b"# Intro\n\nStart here.\n"[..]),
        "files below an unreadable directory were deleted on the receiver"
    );
    assert_eq!(
        read(&worktree.join("notes/old.txt")).as_deref(),
        Some(&b"untracked, synced before\n"[..]),
        "untracked files below an unreadable directory were deleted on the receiver"
    );
    assert!(read(&worktree.join("secret.txt")).is_none());
    let listed = skipped(&devd);
    for path in ["src/main.rs", "docs/guide", "notes", "secret.txt"] {
        assert!(
            listed
                .iter()
                .any(|s| s.starts_with(&format!("{path}: ")) && s.contains("permission denied")),
            "{path} is not listed as unreadable in `devd status`: {listed:?}"
        );
    }
    let status = devd.status();
    assert_ne!(status.state, "scanning", "the daemon is stuck scanning");
    assert!(
        status.raw.get("last_error").is_none_or(|e| e.is_null()),
        "status reports an error: {}",
        status.raw
    );

    for (p, m) in [
        ("src/main.rs", 0o644),
        ("docs/guide", 0o755),
        ("notes", 0o755),
        ("secret.txt", 0o644),
    ] {
        chmod(&fx.path(p), m);
    }
    devd.sync();
    assert_worktrees_equal(fx.laptop(), &worktree);
    assert_eq!(skipped(&devd), Vec::<String>::new());
}

/// Edits of ignore files apply at once, through the watcher alone: a
/// directory of 300 files un-ignored in `.gitignore` arrives, re-ignored it
/// leaves the receiver; deleting a nested `.gitignore` syncs the files it
/// hid; `.git/info/exclude` and the global excludes file count too.
#[test]
fn ignore_file_edits_rescan_what_they_govern() {
    let fx = Fixture::new();
    let global = fx.root().join("global-excludes");
    std::fs::write(&global, "").unwrap();
    fx.write(".gitignore", "*.log\ntarget/\ndevd.toml\nvendor/\n");
    for i in 0..300 {
        fx.write(&format!("vendor/d{}/f{i:03}.txt", i % 10), format!("{i}\n"));
    }
    fx.write("pkg/.gitignore", "*.gen\n");
    fx.write("pkg/a.gen", "generated a\n");
    fx.write("pkg/deep/b.gen", "generated b\n");
    fx.write("extra/x.txt", "extra\n");
    fx.write("tmp/scratch.txt", "scratch\n");
    // The global excludes file: core.excludesFile of the global config.
    let gitconfig = fx.root().join("global-gitconfig");
    std::fs::write(
        &gitconfig,
        format!("[core]\n\texcludesFile = {}\n", global.display()),
    )
    .unwrap();
    let devd = fx.devd().with_env(vec![(
        "GIT_CONFIG_GLOBAL".into(),
        gitconfig.display().to_string(),
    )]);
    let worktree = start(&devd);
    let vendored = |w: &Path| {
        (0..300)
            .filter(|i| w.join(format!("vendor/d{}/f{i:03}.txt", i % 10)).is_file())
            .count()
    };
    assert_eq!(vendored(&worktree), 0);

    fx.write(".gitignore", "*.log\ntarget/\ndevd.toml\n");
    wait_until(WATCH_TIMEOUT, "the 300 un-ignored files arrive", || {
        vendored(&worktree) == 300
    });
    fx.write(".gitignore", "*.log\ntarget/\ndevd.toml\nvendor/\n");
    wait_until(
        WATCH_TIMEOUT,
        "the 300 re-ignored files leave the receiver",
        || vendored(&worktree) == 0,
    );
    fx.remove("pkg/.gitignore");
    wait_until(
        WATCH_TIMEOUT,
        "the files a deleted nested .gitignore hid arrive",
        || worktree.join("pkg/a.gen").is_file() && worktree.join("pkg/deep/b.gen").is_file(),
    );
    fx.append(".git/info/exclude", "extra/\n");
    wait_until(
        WATCH_TIMEOUT,
        "a path excluded in .git/info/exclude leaves the receiver",
        || !worktree.join("extra/x.txt").exists(),
    );
    wait_for_worktrees_equal(fx.laptop(), &worktree, WATCH_TIMEOUT);
    // Last: the test's own git (hermetic) does not read this global file.
    std::fs::write(&global, "tmp/\n").unwrap();
    wait_until(
        WATCH_TIMEOUT,
        "a path ignored by the global excludes file leaves the receiver",
        || !worktree.join("tmp/scratch.txt").exists(),
    );
    assert!(worktree.join("extra").symlink_metadata().is_err());
}

/// The laptop's caches never widen what the worktree allows: its state
/// directories are 0700, the copies of sent files and the hash cache 0600.
#[test]
fn laptop_caches_are_private() {
    let fx = Fixture::new();
    fx.write("secret.env", "TOKEN=1\n");
    chmod(&fx.path("secret.env"), 0o600);
    let devd = fx.devd();
    let worktree = start(&devd);
    assert!(worktree.join("secret.env").is_file());
    // Find the state directory by its sent-blobs cache.
    let mut sent = Vec::new();
    let mut stack = vec![fx.home().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                if p.file_name().is_some_and(|n| n == "sent-blobs") {
                    sent.push(p.clone());
                }
                stack.push(p);
            }
        }
    }
    assert_eq!(sent.len(), 1, "one sent-blobs cache under DEVD_HOME");
    let state = sent[0].parent().unwrap().to_path_buf();
    assert_eq!(mode(&state) & 0o077, 0, "state dir {}", state.display());
    let mut files = 0;
    let mut stack = vec![sent[0].clone()];
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "cache directory {}", d.display());
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                assert_eq!(mode(&p), 0o600, "cached copy {}", p.display());
            }
        }
    }
    assert!(files > 0, "no sent file was cached");
    assert_eq!(mode(&state.join("hash-cache")), 0o600);
}

/// Modes never widen (item 10, receiver side): a new 0600 file and a
/// tracked file made 0640 keep those modes on the receiver, a private
/// script stays 0700, a group-writable umask's 0664 is git's 0644 there,
/// and making a file 0644 again syncs that too, content unchanged.
#[test]
fn file_modes_are_never_widened_on_the_receiver() {
    let fx = Fixture::new();
    let devd = fx.devd();
    let worktree = start(&devd);
    let chmod = |rel: &str, m: u32| {
        std::fs::set_permissions(fx.path(rel), std::fs::Permissions::from_mode(m)).unwrap()
    };
    fx.write("secrets/token", "t0k3n\n");
    chmod("secrets/token", 0o600);
    fx.write("bin/private.sh", "#!/bin/sh\n");
    chmod("bin/private.sh", 0o700);
    fx.write("shared.txt", "group-writable\n");
    chmod("shared.txt", 0o664);
    chmod("docs/guide/usage.md", 0o640);
    devd.sync();
    let rx = |rel: &str| mode(&worktree.join(rel));
    assert_eq!(rx("secrets/token"), 0o600);
    assert_eq!(rx("bin/private.sh"), 0o700);
    assert_eq!(rx("shared.txt"), 0o644);
    assert_eq!(
        rx("docs/guide/usage.md"),
        0o640,
        "a tracked file, content unchanged"
    );
    assert_worktrees_equal(fx.laptop(), &worktree);

    chmod("docs/guide/usage.md", 0o644);
    chmod("secrets/token", 0o644);
    devd.sync();
    assert_eq!(rx("docs/guide/usage.md"), 0o644);
    assert_eq!(rx("secrets/token"), 0o644);
}

fn sync_ms(r: &SyncReport) -> u64 {
    r.latency_ms
}

/// Deleting 1,000 files costs about what writing them does (the
/// adversarial run measured 5–6 s against 0.35 s). Bound: a generous 3×
/// the write plus one second, so a load spike does not fail it but a
/// per-path cost that grows with the worktree does.
#[test]
fn deleting_a_thousand_files_is_as_fast_as_writing_them() {
    let fx = Fixture::new();
    let devd = fx.devd();
    let worktree = start(&devd);
    let path = |i: usize| format!("bulk/d{:02}/f{i:04}.txt", i % 25);
    for i in 0..1000 {
        fx.write(&path(i), format!("file {i}\n"));
    }
    let wrote = devd.sync();
    fx.remove("bulk");
    let deleted = devd.sync();
    assert_worktrees_equal(fx.laptop(), &worktree);
    println!(
        "1,000 files: written in {} ms, deleted in {} ms (devd sync latency)",
        sync_ms(&wrote),
        sync_ms(&deleted)
    );
    assert!(
        sync_ms(&deleted) <= 3 * sync_ms(&wrote) + 1000,
        "deleting 1,000 files took {} ms, writing them {} ms",
        sync_ms(&deleted),
        sync_ms(&wrote)
    );
}

/// The same with the files committed and pushed (in the base, so each
/// deletion is an overlay entry) and removed one by one, as `rm` of each
/// file or an editor's bulk delete does.
#[test]
fn deleting_a_thousand_committed_files_one_by_one_is_as_fast_as_writing_them() {
    let fx = Fixture::new();
    let path = |i: usize| format!("bulk/d{:02}/f{i:04}.txt", i % 25);
    for i in 0..1000 {
        fx.write(&path(i), format!("file {i}\n"));
    }
    fx.commit_all_and_push("a thousand files");
    let devd = fx.devd();
    let worktree = start(&devd);
    for i in 0..1000 {
        fx.write(&path(i), format!("file {i}, edited\n"));
    }
    let wrote = devd.sync();
    for i in 0..1000 {
        std::fs::remove_file(fx.path(&path(i))).unwrap();
    }
    let deleted = devd.sync();
    assert_worktrees_equal(fx.laptop(), &worktree);
    println!(
        "1,000 committed files: rewritten in {} ms, deleted one by one in {} ms (devd sync latency)",
        sync_ms(&wrote),
        sync_ms(&deleted)
    );
    assert!(
        sync_ms(&deleted) <= 3 * sync_ms(&wrote) + 1000,
        "deleting 1,000 files took {} ms, rewriting them {} ms",
        sync_ms(&deleted),
        sync_ms(&wrote)
    );
}

/// A tracked file replaced by a FIFO is gone as far as sync is concerned:
/// the receiver removes it, and `devd status` lists the FIFO as skipped.
#[test]
fn a_fifo_in_place_of_a_tracked_file_is_a_deletion_and_listed() {
    let fx = Fixture::new();
    let devd = fx.devd();
    let worktree = start(&devd);
    std::fs::remove_file(fx.path("docs/guide/usage.md")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(fx.path("docs/guide/usage.md"))
        .status()
        .unwrap();
    assert!(st.success());
    devd.sync();
    assert!(
        worktree
            .join("docs/guide/usage.md")
            .symlink_metadata()
            .is_err(),
        "the receiver kept the file a FIFO replaced"
    );
    let listed = skipped(&devd);
    assert!(
        listed
            .iter()
            .any(|s| s.starts_with("docs/guide/usage.md: ") && s.contains("FIFO")),
        "the FIFO is not listed as skipped: {listed:?}"
    );
}

/// A submodule syncs as git sees it (a commit, not files): neither a
/// registered submodule's files nor those of a nested repository that is
/// not added reach the receiver; the rest of the worktree does.
#[test]
fn submodule_files_are_not_uploaded() {
    let fx = Fixture::new();
    let lib = fx.root().join("lib-src");
    std::fs::create_dir_all(&lib).unwrap();
    devd_tests::repo::git_in(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.rs"), "pub fn lib() {}\n").unwrap();
    devd_tests::repo::git_in(&lib, &["add", "-A"]);
    devd_tests::repo::git_in(&lib, &["commit", "-qm", "lib"]);
    fx.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        &lib.display().to_string(),
        "vendor/lib",
    ]);
    // A nested repository nobody added.
    let nested = fx.path("tools/nested");
    std::fs::create_dir_all(&nested).unwrap();
    devd_tests::repo::git_in(&nested, &["init", "-q"]);
    std::fs::write(nested.join("tool.sh"), "echo tool\n").unwrap();
    fx.write("src/after.rs", "// after the submodule\n");
    let devd = fx.devd();
    let worktree = start(&devd);
    assert!(worktree.join("src/after.rs").is_file());
    assert!(
        worktree.join(".gitmodules").is_file(),
        ".gitmodules is an ordinary file"
    );
    for p in [
        "vendor/lib/lib.rs",
        "vendor/lib/.git",
        "tools/nested/tool.sh",
    ] {
        assert!(
            worktree.join(p).symlink_metadata().is_err(),
            "{p} reached the receiver"
        );
    }
}

/// The daemon's log file (under `DEVD_HOME`).
fn daemon_log(home: &Path) -> PathBuf {
    let mut stack = vec![home.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "daemon.log") {
                return p;
            }
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    panic!("no daemon.log under {}", home.display());
}

/// A large file appended to every 20 ms does not hold up the rest: an
/// edit elsewhere arrives promptly, the connection is never dropped (one
/// `connected` in the daemon's log), the file is listed as unstable while
/// it keeps changing, and it is sent once it settles, with the bytes sent
/// bounded (no resend of the whole file per attempt). It took 19 s for the
/// edit, 154 reconnects and 135 MB for a 50 MB file before.
#[test]
fn a_file_changing_while_it_is_sent_does_not_stop_the_rest() {
    let fx = Fixture::new();
    let big = devd_tests::random_bytes("growing", 12 << 20);
    fx.write("data/growing.bin", &big);
    let devd = fx.devd();
    let worktree = start(&devd);
    let sent0 = devd.status().raw["totals"]["bytes_sent"].as_u64().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let stop = stop.clone();
        let path = fx.path("data/growing.bin");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    fx.write("README.md", "# edited while a file keeps growing\n");
    let took = wait_until(
        WATCH_TIMEOUT,
        "the edit arrives while another file keeps changing",
        || {
            read(&worktree.join("README.md")).as_deref()
                == Some(&b"# edited while a file keeps growing\n"[..])
        },
    );
    println!("the edit arrived in {took:?} while data/growing.bin kept changing");
    wait_until(
        WATCH_TIMEOUT,
        "the changing file is listed as unstable",
        || {
            skipped(&devd)
                .iter()
                .any(|s| s.starts_with("data/growing.bin: unstable"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    appender.join().unwrap();
    let took = wait_for_worktrees_equal(fx.laptop(), &worktree, Duration::from_secs(60));
    println!("the file arrived {took:?} after it settled");
    wait_until(
        WATCH_TIMEOUT,
        "the settled file is no longer listed",
        || skipped(&devd).is_empty(),
    );
    let log = std::fs::read_to_string(daemon_log(fx.home())).unwrap();
    let connects = log.matches("devd::uplink: connected").count();
    assert_eq!(connects, 1, "the daemon reconnected {} times", connects - 1);
    let sent = devd.status().raw["totals"]["bytes_sent"].as_u64().unwrap() - sent0;
    println!(
        "{sent} bytes sent for a {} byte file that kept growing",
        big.len()
    );
    assert!(
        sent < 2 * big.len() as u64,
        "{sent} bytes sent for a {} byte file",
        big.len()
    );
}

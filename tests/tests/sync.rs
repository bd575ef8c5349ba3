//! Sync scenarios with a running daemon: every kind of worktree change
//! reaches the receiver, and nothing else does.

use devd_tests::{
    Devd, FAST_SYNC, Fixture, Receiver, assert_worktrees_equal, expected_overlay_digest,
    random_bytes, wait_for_worktrees_equal, wait_until,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a watcher-driven sync may take (the design targets ~2 s).
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon syncing to the embedded local receiver.
struct Embedded<'a> {
    devd: Devd<'a>,
    worktree: PathBuf,
}

/// Start the daemon with the embedded receiver and check the initial state
/// arrived.
fn start_embedded(fx: &Fixture) -> Embedded<'_> {
    fx.write_config(FAST_SYNC);
    let devd = fx.devd();
    devd.start_wait();
    let status = devd.status();
    let worktree = status.receiver_worktree.clone().expect(
        "with no [receiver] section, `devd status --json` reports the embedded receiver's worktree",
    );
    assert!(
        worktree.is_absolute(),
        "receiver.worktree is not absolute: {}",
        worktree.display()
    );
    assert_worktrees_equal(fx.laptop(), &worktree);
    Embedded { devd, worktree }
}

/// Start the daemon against a separate receiver and check the initial state
/// arrived.
fn start_remote<'a>(fx: &'a Fixture, rx: &Receiver<'a>) -> Devd<'a> {
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    devd
}

/// The overlay digest devd reports equals the one computed from git.
#[track_caller]
fn assert_overlay_digest(fx: &Fixture, devd: &Devd<'_>) {
    let status = devd.status();
    let (want, entries) = expected_overlay_digest(fx.laptop(), &status.base);
    assert_eq!(
        status.overlay_digest, want,
        "status overlay_digest differs from the digest of the {entries}-entry overlay computed from git against base {}",
        status.base
    );
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn is_exec(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o100 != 0)
        .unwrap_or(false)
}

/// The watcher alone propagates a save (no `devd sync`): edits to a tracked
/// file and a new file in an existing directory reach the receiver within
/// a few seconds.
#[test]
fn watcher_propagates_a_save_without_devd_sync() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);

    let new = b"# demo\n\nEdited by the watcher test.\n".to_vec();
    fx.write("README.md", &new);
    let took = wait_until(
        WATCH_TIMEOUT,
        "the receiver's README.md has the saved content",
        || read(&e.worktree.join("README.md")).as_deref() == Some(&new[..]),
    );
    println!("watcher propagated a save in {took:?}");

    fx.write("src/lib/extra.rs", "pub fn extra() {}\n");
    let took = wait_until(
        WATCH_TIMEOUT,
        "the receiver has the new src/lib/extra.rs",
        || {
            read(&e.worktree.join("src/lib/extra.rs")).as_deref()
                == Some(&b"pub fn extra() {}\n"[..])
        },
    );
    println!("watcher propagated a new file in {took:?}");
    wait_for_worktrees_equal(fx.laptop(), &e.worktree, WATCH_TIMEOUT);
}

/// Modified tracked files (rewritten, appended to, truncated to empty)
/// arrive with their new content, and the reported overlay digest matches
/// the overlay computed from git.
#[test]
fn modified_files_arrive() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.write(
        "src/main.rs",
        "fn main() {\n    println!(\"hello, devd\");\n}\n",
    );
    fx.append("src/lib/deep/nested/mod.rs", "pub const MORE: u32 = 4;\n");
    fx.write("docs/guide/usage.md", "");
    let report = e.devd.sync_and_assert_equal(&e.worktree);
    assert_eq!(
        read(&e.worktree.join("docs/guide/usage.md")).as_deref(),
        Some(&b""[..])
    );
    assert_overlay_digest(&fx, &e.devd);
    let status = e.devd.status();
    assert_eq!(
        report.overlay_digest, status.overlay_digest,
        "sync report and status disagree on the overlay digest"
    );
    assert!(
        status.generation >= report.generation,
        "status generation went backwards"
    );
}

/// New files, staged or not, in existing and new directories, arrive.
#[test]
fn added_files_arrive() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.write("src/added.rs", "pub fn added() {}\n");
    fx.write("assets/logo.svg", "<svg/>\n");
    fx.git(&["add", "src/added.rs"]);
    e.devd.sync_and_assert_equal(&e.worktree);
    assert_eq!(
        read(&e.worktree.join("assets/logo.svg")).as_deref(),
        Some(&b"<svg/>\n"[..])
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// Deleted tracked files and a deleted directory disappear on the receiver.
#[test]
fn deleted_files_are_removed() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.remove("src/main.rs");
    fx.remove("docs");
    fx.git(&["rm", "-q", "--cached", "scripts/build.sh"]);
    fx.remove("scripts/build.sh");
    e.devd.sync_and_assert_equal(&e.worktree);
    for gone in [
        "src/main.rs",
        "docs/guide/intro.md",
        "docs/guide/usage.md",
        "scripts/build.sh",
    ] {
        assert!(
            e.worktree.join(gone).symlink_metadata().is_err(),
            "{gone} still exists on the receiver"
        );
    }
    assert_overlay_digest(&fx, &e.devd);
}

/// Renamed files and a renamed directory move on the receiver (old paths
/// gone, new paths with the same content).
#[test]
fn renamed_files_and_directories_move() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.rename("README.md", "README.txt");
    fx.rename("docs/guide", "docs/manual");
    fx.git(&["mv", "src/lib/util.rs", "src/lib/helpers.rs"]);
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        e.worktree.join("README.md").symlink_metadata().is_err(),
        "README.md was not removed"
    );
    assert!(
        e.worktree
            .join("docs/guide/intro.md")
            .symlink_metadata()
            .is_err(),
        "docs/guide was not removed"
    );
    assert!(
        e.worktree.join("docs/manual/intro.md").is_file(),
        "docs/manual/intro.md missing"
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// The exec bit follows chmod +x and chmod -x, in both directions, without
/// content changes.
#[test]
fn exec_bit_round_trips() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    assert!(
        is_exec(&e.worktree.join("scripts/build.sh")),
        "base checkout lost the exec bit of scripts/build.sh"
    );
    fx.set_exec("src/main.rs", true);
    fx.set_exec("scripts/build.sh", false);
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        is_exec(&e.worktree.join("src/main.rs")),
        "chmod +x did not arrive"
    );
    assert!(
        !is_exec(&e.worktree.join("scripts/build.sh")),
        "chmod -x did not arrive"
    );
    assert_overlay_digest(&fx, &e.devd);

    fx.set_exec("src/main.rs", false);
    fx.set_exec("scripts/build.sh", true);
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        !is_exec(&e.worktree.join("src/main.rs")),
        "chmod -x back did not arrive"
    );
    assert!(
        is_exec(&e.worktree.join("scripts/build.sh")),
        "chmod +x back did not arrive"
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// Symlinks are created (relative, dangling, to a directory), retargeted,
/// and replaced by a regular file; targets are copied verbatim, never
/// followed.
#[test]
fn symlinks_are_created_and_retargeted() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.symlink("links/readme", "../README.md");
    fx.symlink("links/dangling", "does/not/exist");
    fx.symlink("guide", "docs/guide");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert_eq!(
        std::fs::read_link(e.worktree.join("links/dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    assert!(
        e.worktree
            .join("guide")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );

    fx.symlink("latest.md", "docs/guide/usage.md");
    fx.symlink("links/readme", "../src/main.rs");
    fx.remove("links/dangling");
    fx.write("links/dangling", "now a file\n");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert_eq!(
        std::fs::read_link(e.worktree.join("latest.md")).unwrap(),
        Path::new("docs/guide/usage.md")
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// `mkdir -p a/b/c` immediately followed by a write of `a/b/c/f` reaches
/// the receiver through the watcher alone (a new directory must trigger a
/// rescan of its subtree: inotify may report no event for the file).
#[test]
fn new_nested_directories_are_picked_up_by_the_watcher() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    std::fs::create_dir_all(fx.path("a/b/c")).unwrap();
    std::fs::write(fx.path("a/b/c/f"), "deep\n").unwrap();
    std::fs::create_dir_all(fx.path("x/y/z/w")).unwrap();
    std::fs::write(fx.path("x/y/z/w/one"), "1\n").unwrap();
    std::fs::write(fx.path("x/y/two"), "2\n").unwrap();
    let took = wait_until(
        WATCH_TIMEOUT,
        "the receiver has a/b/c/f, x/y/z/w/one and x/y/two",
        || {
            read(&e.worktree.join("a/b/c/f")).as_deref() == Some(&b"deep\n"[..])
                && read(&e.worktree.join("x/y/z/w/one")).as_deref() == Some(&b"1\n"[..])
                && read(&e.worktree.join("x/y/two")).as_deref() == Some(&b"2\n"[..])
        },
    );
    println!("files in new nested directories arrived in {took:?}");
    wait_for_worktrees_equal(fx.laptop(), &e.worktree, WATCH_TIMEOUT);
}

/// Untracked (never `git add`ed), not ignored files are part of the
/// overlay and arrive.
#[test]
fn untracked_files_arrive() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.write("notes/todo.txt", "- write tests\n");
    fx.write("scratch.rs", "// scratch\n");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert_eq!(
        read(&e.worktree.join("notes/todo.txt")).as_deref(),
        Some(&b"- write tests\n"[..])
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// Git-ignored files (`*.log`, `target/`) never arrive, while a normal
/// file saved at the same time does.
#[test]
fn ignored_files_never_arrive() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.write("debug.log", "noise\n");
    fx.write("src/trace.log", "more noise\n");
    fx.write("target/debug/app", random_bytes("ignored", 4096));
    fx.write("src/visible.rs", "// visible\n");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        e.worktree.join("src/visible.rs").is_file(),
        "the non-ignored file did not arrive"
    );
    for ignored in [
        "debug.log",
        "src/trace.log",
        "target/debug/app",
        "devd.toml",
    ] {
        assert!(
            e.worktree.join(ignored).symlink_metadata().is_err(),
            "ignored {ignored} reached the receiver"
        );
    }
    assert_overlay_digest(&fx, &e.devd);
}

/// Files matched by `.devdignore` never leave the laptop: neither those
/// present at start nor those created while the daemon runs.
#[test]
fn devdignored_files_never_arrive() {
    let fx = Fixture::new();
    fx.write(".devdignore", "secrets/\n*.key\n");
    fx.write("secrets/before-start.txt", "s3cr3t\n");
    let e = start_embedded(&fx);
    fx.write("secrets/token.txt", "t0k3n\n");
    fx.write("deploy/id.key", "-----BEGIN KEY-----\n");
    fx.write("deploy/config.yaml", "replicas: 1\n");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        e.worktree.join("deploy/config.yaml").is_file(),
        "the normal file did not arrive"
    );
    for secret in [
        "secrets/before-start.txt",
        "secrets/token.txt",
        "deploy/id.key",
    ] {
        assert!(
            e.worktree.join(secret).symlink_metadata().is_err(),
            "devdignored {secret} reached the receiver"
        );
    }
}

/// A local commit (not pushed) is part of the overlay; the base stays
/// origin/main.
#[test]
fn local_commits_sync_against_the_unchanged_base() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    let origin_main = fx.rev_parse("origin/main");
    fx.write(
        "src/lib/util.rs",
        "pub fn add(a: u64, b: u64) -> u64 {\n    a + b\n}\n",
    );
    fx.write("src/committed.rs", "// committed locally\n");
    fx.remove("docs/guide/usage.md");
    fx.commit_all("local work");
    fx.write("src/after-commit.rs", "// uncommitted\n");
    e.devd.sync_and_assert_equal(&e.worktree);
    let status = e.devd.status();
    assert_eq!(
        status.base, origin_main,
        "base moved although the commit is not pushed"
    );
    assert_overlay_digest(&fx, &e.devd);
}

/// Switching to a branch with different files, and back, leaves the
/// receiver equal to the laptop each time.
#[test]
fn branch_switch_and_back() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    fx.git(&["checkout", "-q", "-b", "other"]);
    fx.write("feature/new.rs", "pub fn feature() {}\n");
    fx.write("src/main.rs", "fn main() {\n    feature();\n}\n");
    fx.remove("docs/guide/usage.md");
    fx.set_exec("src/lib/util.rs", true);
    fx.commit_all("feature");
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(e.worktree.join("feature/new.rs").is_file());
    assert_overlay_digest(&fx, &e.devd);

    fx.git(&["checkout", "-q", "main"]);
    e.devd.sync_and_assert_equal(&e.worktree);
    assert!(
        e.worktree
            .join("feature/new.rs")
            .symlink_metadata()
            .is_err(),
        "branch-only file survived the switch back"
    );
    assert!(
        e.worktree.join("docs/guide/usage.md").is_file(),
        "file deleted on the branch did not come back"
    );
    assert_overlay_digest(&fx, &e.devd);
    let status = e.devd.status();
    assert_eq!(status.base, fx.rev_parse("origin/main"));
}

/// A pull that moves the base (a teammate pushed to origin) syncs: the
/// status base becomes the new origin/main, the separate receiver fetches
/// it, and the local uncommitted edit survives in the overlay.
#[test]
fn pull_moves_the_base_on_a_separate_receiver() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let devd = start_remote(&fx, &rx);
    let old_base = devd.status().base;
    assert_eq!(old_base, fx.rev_parse("origin/main"));

    fx.append("README.md", "\nlocal, uncommitted note\n");
    let mate = fx.clone_origin("teammate");
    devd_tests::repo::write_file(
        &mate.join("src/main.rs"),
        b"fn main() {\n    println!(\"from a teammate\");\n}\n",
    );
    devd_tests::repo::write_file(&mate.join("NEWS.md"), b"# News\n");
    devd_tests::repo::git_in(&mate, &["add", "-A"]);
    devd_tests::repo::git_in(&mate, &["commit", "-q", "-m", "teammate change"]);
    devd_tests::repo::git_in(&mate, &["push", "-q", "origin", "main"]);

    fx.git(&["pull", "-q", "--ff-only"]);
    let new_base = fx.rev_parse("origin/main");
    assert_ne!(new_base, old_base);
    devd.sync_and_assert_equal(&rx.worktree());
    let status = devd.status();
    assert_eq!(
        status.base, new_base,
        "status base is not the new origin/main after the pull"
    );
    assert_eq!(
        status.base_mode, "fetched",
        "the receiver can fetch origin, so the base should be fetched"
    );
    assert_overlay_digest(&fx, &devd);
    let (_, entries) = expected_overlay_digest(fx.laptop(), &new_base);
    assert_eq!(
        entries, 1,
        "after the pull only README.md differs from the base"
    );
}

/// 1,000 files created at once in new directories arrive; then all of them
/// modified at once; then all deleted.
#[test]
fn thousand_files_at_once() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    let path = |i: usize| format!("bulk/d{:02}/f{i:04}.txt", i % 25);
    for i in 0..1000 {
        fx.write(&path(i), format!("file {i}\n"));
    }
    let r = e.devd.sync_and_assert_equal(&e.worktree);
    println!("1,000 new files: {r:?}");
    assert_overlay_digest(&fx, &e.devd);

    for i in 0..1000 {
        fx.append(&path(i), format!("second line of {i}\n"));
    }
    let r = e.devd.sync_and_assert_equal(&e.worktree);
    println!("1,000 modified files: {r:?}");

    fx.remove("bulk");
    let r = e.devd.sync_and_assert_equal(&e.worktree);
    println!("1,000 deleted files: {r:?}");
    assert_overlay_digest(&fx, &e.devd);
}

/// A 50 MB binary file of random bytes arrives intact, byte for byte, at a
/// separate receiver.
#[test]
fn fifty_megabyte_binary_file() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let devd = start_remote(&fx, &rx);
    let data = random_bytes("fifty", 50 << 20);
    fx.write("assets/big.bin", &data);
    let r = devd.sync_timeout(Duration::from_secs(600));
    println!("50 MB sync: {r:?}");
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    let got = std::fs::read(rx.worktree().join("assets/big.bin")).expect("big.bin on the receiver");
    assert!(got == data, "big.bin content differs on the receiver");
}

/// Modify, add, delete, rename, exec bit and symlinks, all at once, reach a
/// separate `devd-receiver serve` through the watcher, then `devd sync`.
#[test]
fn edits_reach_a_separate_receiver() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let devd = start_remote(&fx, &rx);
    fx.write("src/main.rs", "fn main() {}\n");
    fx.write("src/new/module.rs", "pub mod x;\n");
    fx.remove("docs/guide/usage.md");
    fx.rename("src/lib/util.rs", "src/lib/utils.rs");
    fx.set_exec("src/main.rs", true);
    fx.symlink("latest.md", "README.md");
    fx.symlink("links/up", "../src");
    let took = wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), WATCH_TIMEOUT);
    println!("separate receiver converged through the watcher in {took:?}");
    devd.sync_and_assert_equal(&rx.worktree());
    assert_overlay_digest(&fx, &devd);
    let status = devd.status();
    assert_eq!(status.workspace, "default");
    assert_eq!(
        status.receiver_address.parse::<std::net::SocketAddr>().ok(),
        Some(rx.addr()),
        "status receiver.address is not the receiver's address"
    );
}

/// A second `devd start` exits 0 and says "already running"; status
/// reports the base; `devd stop` really stops it (a new start works).
#[test]
fn second_start_says_already_running() {
    let fx = Fixture::new();
    let e = start_embedded(&fx);
    let second = e.devd.run(&["start"]);
    second.assert_success();
    assert!(
        second.output().to_lowercase().contains("already running"),
        "second `devd start` does not say \"already running\":\n{}",
        second.describe()
    );
    let status = e.devd.status();
    assert_eq!(status.base, fx.rev_parse("origin/main"));
    assert!(!status.state.is_empty());

    e.devd.stop().assert_success();
    let again = e.devd.start();
    assert!(
        !again.output().to_lowercase().contains("already running"),
        "`devd start` after `devd stop` says already running:\n{}",
        again.describe()
    );
}

/// One-shot `devd sync` (no daemon) works against a separate receiver, and
/// exits non-zero naming the receiver once the receiver is down.
#[test]
fn one_shot_sync_fails_clearly_when_the_receiver_is_down() {
    let fx = Fixture::new();
    let mut rx = fx.receiver();
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    fx.write("src/one-shot.rs", "// one shot\n");
    devd.sync_and_assert_equal(&rx.worktree());

    rx.kill();
    fx.write("src/one-shot.rs", "// receiver is down\n");
    let run = devd.run_timeout(&["sync"], Duration::from_secs(120));
    assert_fails_naming_receiver(&run, &rx);
}

/// `devd sync` through a running daemon exits non-zero naming the receiver
/// when the receiver is down.
#[test]
fn daemon_sync_fails_clearly_when_the_receiver_is_down() {
    let fx = Fixture::new();
    let mut rx = fx.receiver();
    let devd = start_remote(&fx, &rx);
    rx.kill();
    fx.write("src/while-down.rs", "// receiver is down\n");
    let run = devd.run_timeout(&["sync"], Duration::from_secs(120));
    assert_fails_naming_receiver(&run, &rx);
}

#[track_caller]
fn assert_fails_naming_receiver(run: &devd_tests::Run, rx: &Receiver<'_>) {
    println!("`devd sync` with the receiver down:\n{}", run.describe());
    assert!(
        !run.timed_out(),
        "`devd sync` hung with the receiver down:\n{}",
        run.describe()
    );
    assert!(
        !run.success(),
        "`devd sync` succeeded with the receiver down:\n{}",
        run.describe()
    );
    let out = run.output().to_lowercase();
    assert!(
        out.contains("receiver") || out.contains(&rx.addr().to_string()),
        "`devd sync`'s error mentions neither the receiver nor its address {}:\n{}",
        rx.addr(),
        run.describe()
    );
}

//! A receiver whose disk fills up refuses the sync with a clear error and
//! loses nothing: its worktree stays at the last applied generation, and
//! syncing resumes once the change fits.

use devd_tests::{FAST_SYNC, Fixture, ReceiverOpts, assert_worktrees_equal, random_bytes};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs, unmounted on drop (after the receiver using it is gone).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount -t tmpfs failed ({st}): this test needs root (CAP_SYS_ADMIN), as CI has"
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Fill the receiver's disk with a 6 MB file: `devd sync` fails naming the
/// full disk, the receiver's worktree is exactly what it was, and after the
/// file is removed on the laptop the next sync converges.
///
/// Mounting the tmpfs needs root: built as another user (see
/// `tests/build.rs`) the test is ignored with that reason; run as root it
/// runs, and fails if the mount is refused.
#[test]
#[cfg_attr(
    devd_tests_not_root,
    ignore = "mounts a small tmpfs, which needs root (CI runs as root); run as root, or with --ignored to see the mount fail"
)]
fn full_receiver_disk_is_a_clear_error_and_loses_nothing() {
    let fx = Fixture::new();
    let _disk = Tmpfs::mount(&fx.root().join("rxdisk"), "3m");
    let rx = fx.receiver_with(ReceiverOpts {
        data: Some(fx.root().join("rxdisk")),
        ..Default::default()
    });
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    fx.write("notes.txt", "small change that fits\n");
    devd.sync_and_assert_equal(&rx.worktree());
    let before = snapshot(&rx.worktree());

    fx.write("big.bin", random_bytes("disk-full", 6 << 20));
    let run = devd.run(&["sync"]);
    println!("{}", run.describe());
    assert!(
        !run.success(),
        "sync of a file larger than the receiver's free space must fail"
    );
    let out = run.output().to_lowercase();
    assert!(
        out.contains("no space left"),
        "the error names the full disk: {out}"
    );
    assert_eq!(
        snapshot(&rx.worktree()),
        before,
        "the receiver's worktree is unchanged"
    );

    fx.remove("big.bin");
    fx.write("notes.txt", "and syncing resumes\n");
    devd.sync_and_assert_equal(&rx.worktree());
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
}

/// The receiver's `received_bytes_total` for the workspace.
fn received_bytes(http: &str) -> u64 {
    let (status, text) = devd_tests::http_get(&format!("{http}/metrics"))
        .unwrap_or_else(|e| panic!("GET /metrics: {e:#}"));
    assert_eq!(status, 200, "{text}");
    let series = "devd_receiver_received_bytes_total{workspace=\"default\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}")) as u64
}

/// With a running daemon and a 6 MiB file that cannot fit: `devd sync`
/// and `devd status` both show the receiver's own refusal ("the receiver's
/// disk is full: …", not a lost connection), and the daemon backs off
/// instead of uploading the file again and again: over the next 20 s the
/// receiver gets less than one more copy of it.
#[test]
#[cfg_attr(
    devd_tests_not_root,
    ignore = "mounts a small tmpfs, which needs root (CI runs as root); run as root, or with --ignored to see the mount fail"
)]
fn full_receiver_disk_is_reported_as_such_and_not_uploaded_again_and_again() {
    const BIG: usize = 6 << 20;
    let fx = Fixture::new();
    let _disk = Tmpfs::mount(&fx.root().join("rxdisk"), "3m");
    let config = fx.root().join("receiver.toml");
    std::fs::write(&config, "[build]\nbackend = \"none\"\n").unwrap();
    let rx = fx.receiver_with(ReceiverOpts {
        data: Some(fx.root().join("rxdisk")),
        config: Some(config),
        args: vec!["--http-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    let http = format!("http://{}", rx.http_addr());
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();

    fx.write("big.bin", random_bytes("disk-full-backoff", BIG));
    let run = devd.run(&["sync"]);
    println!("{}", run.describe());
    assert!(!run.success(), "the sync cannot fit: it must fail");
    let out = run.output();
    assert!(
        out.contains("the receiver's disk is full:")
            && out.to_lowercase().contains("no space left"),
        "`devd sync` shows the receiver's Storage refusal: {out}"
    );
    assert!(
        !out.contains("connection to the receiver lost"),
        "the refusal is not reported as a lost connection: {out}"
    );
    let st = devd.status();
    let err = st.raw["receiver"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        err.contains("the receiver's disk is full:"),
        "`devd status` shows the refusal: {}",
        st.raw
    );

    let before = received_bytes(&http);
    std::thread::sleep(std::time::Duration::from_secs(20));
    let resent = received_bytes(&http) - before;
    println!("bytes received by the receiver in the 20 s after the refusal: {resent}");
    assert!(
        resent < BIG as u64,
        "the daemon uploaded {resent} more bytes in 20 s: it must back off instead of re-uploading the {BIG}-byte file"
    );

    // Freeing the laptop side: an explicit `devd sync` converges at once.
    fx.remove("big.bin");
    devd.sync_and_assert_equal(&rx.worktree());
}

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

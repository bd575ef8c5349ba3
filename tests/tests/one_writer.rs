//! One workspace, one writer (issue 17, item 8): a second daemon paired to
//! the same workspace (another checkout sharing the pairing) is refused with
//! an error naming the first (host, worktree, since when) and the receiver
//! keeps the first one's tree; `devd start --take-over` makes it the writer,
//! after which the first daemon is told and stops syncing with a clear
//! status.

use devd_tests::daemon::first_json_object;
use devd_tests::{Devd, FAST_SYNC, Fixture, assert_worktrees_equal, wait_until};
use std::time::Duration;

/// `devd status --json` as it is (a daemon that never synced has no
/// overlay digest, which the contracted parse requires).
fn status(devd: &Devd<'_>) -> serde_json::Value {
    let run = devd.run_timeout(&["status", "--json"], Duration::from_secs(60));
    run.assert_success();
    first_json_object(&run.stdout).expect("status JSON")
}

#[test]
fn a_second_daemon_is_refused_naming_the_first_until_it_takes_over() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let local = format!("{}{FAST_SYNC}", rx.config_toml());
    fx.write_local_config(&local);
    fx.write("from_a.txt", "written on checkout A\n");
    let a = fx.devd();
    a.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());

    // A second checkout with the same pairing.
    let b_dir = fx.clone_origin("checkout-b");
    devd_tests::repo::write_file(&b_dir.join("devd.local.toml"), local.as_bytes());
    devd_tests::repo::write_file(&b_dir.join("from_b.txt"), b"written on checkout B\n");
    let b = fx.devd_in(&b_dir);
    let refused = b.run(&["start", "--wait"]);
    println!("{}", refused.describe());
    assert!(!refused.success(), "a second writer must be refused");
    let out = refused.output();
    let a_path = fx.laptop().display().to_string();
    for want in ["another daemon", "host ", &a_path, "since ", "--take-over"] {
        assert!(out.contains(want), "the refusal names {want:?}: {out}");
    }
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    assert!(!rx.worktree().join("from_b.txt").exists());
    let st = status(&b);
    assert_eq!(st["state"], "superseded", "{st}");

    // B takes over explicitly: its tree replaces A's.
    let took = b.run(&["start", "--take-over"]);
    println!("{}", took.describe());
    assert!(took.success(), "take-over failed:\n{}", took.describe());
    b.sync_and_assert_equal(&rx.worktree());
    assert!(rx.worktree().join("from_b.txt").exists());
    assert_eq!(status(&b)["state"], "idle");

    // A is told, says so, and stops syncing.
    let b_path = b_dir.display().to_string();
    let mut last = String::new();
    wait_until(
        Duration::from_secs(30),
        "A reports that it was taken over",
        || {
            let st = a.status();
            last = st.raw.to_string();
            st.state == "superseded"
                && st.raw["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&b_path))
        },
    );
    println!("A's status: {last}");
    fx.write("from_a.txt", "edited on A after the take-over\n");
    let sync = a.run(&["sync"]);
    assert!(!sync.success(), "A must not sync any more");
    assert!(
        sync.output().contains(&b_path),
        "A's `devd sync` names the new writer: {}",
        sync.output()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_worktrees_equal(&b_dir, &rx.worktree());
}

/// `devd stop` gives the workspace up: another checkout's `devd start`
/// then becomes the writer without `--take-over` (the refusal told the
/// user to "stop that daemon", and a stopped daemon still held it). Its
/// claim is as exclusive as ever: the first checkout, started again, is
/// refused naming the second.
#[test]
fn a_stopped_daemon_releases_the_workspace_for_the_next_one() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let local = format!("{}{FAST_SYNC}", rx.config_toml());
    fx.write_local_config(&local);
    let a = fx.devd();
    a.start_wait();
    let stop = a.stop();
    stop.assert_success();
    assert!(
        rx.stderr()
            .contains("the writer stopped and released the workspace"),
        "{}",
        rx.stderr()
    );

    let b_dir = fx.clone_origin("checkout-b");
    devd_tests::repo::write_file(&b_dir.join("devd.local.toml"), local.as_bytes());
    devd_tests::repo::write_file(&b_dir.join("from_b.txt"), b"written on checkout B\n");
    let b = fx.devd_in(&b_dir);
    let started = b.run(&["start", "--wait"]);
    assert!(started.success(), "{}", started.describe());
    b.sync_and_assert_equal(&rx.worktree());

    let again = a.run(&["start", "--wait"]);
    assert!(!again.success(), "A must be refused: B writes now");
    let b_path = b_dir.display().to_string();
    assert!(again.output().contains(&b_path), "{}", again.output());
    assert_worktrees_equal(&b_dir, &rx.worktree());
}

//! Restarts on either end (issue 17, items 6 and 11): a receiver that was
//! killed and restarted is noticed at once and `devd sync` waits through
//! the reconnect; a daemon killed with `kill -9` leaves nothing that stops
//! the next `devd start`.

use devd_tests::{FAST_SYNC, Fixture, ReceiverOpts, assert_worktrees_equal};
use std::process::Command;
use std::time::{Duration, Instant};

/// `devd sync` right after the receiver was killed and restarted on the
/// same data and address succeeds, with the edit made meanwhile applied.
///
/// The restarted receiver knows nothing of the daemon's QUIC connection;
/// the daemon must notice that from the receiver's stateless reset (the
/// first packet it sends gets one) rather than wait for its 10 s idle
/// timeout, and `devd sync` must ride through the reconnect. The bound
/// (5 s, where a reconnect on loopback takes a fraction of a second) only
/// separates "noticed at once" from "waited for the idle timeout".
#[test]
fn devd_sync_right_after_a_receiver_restart_succeeds() {
    let fx = Fixture::new();
    let mut rx = fx.receiver();
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&format!("{}transport = \"quic\"\n", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    let (data, addr) = (rx.data().to_owned(), rx.addr());
    for round in 0..3 {
        rx.kill();
        drop(rx);
        rx = fx.receiver_with(ReceiverOpts {
            data: Some(data.clone()),
            listen: addr.to_string(),
            ..ReceiverOpts::default()
        });
        fx.write(
            "src/after_restart.rs",
            format!("pub const ROUND: u32 = {round};\n"),
        );
        let t0 = Instant::now();
        let run = devd.run_timeout(&["sync", "--json"], Duration::from_secs(60));
        let took = t0.elapsed();
        println!("round {round}: devd sync took {took:?}");
        assert!(
            run.success(),
            "round {round}: `devd sync` right after a receiver restart failed:\n{}",
            run.describe()
        );
        assert_worktrees_equal(fx.laptop(), &rx.worktree());
        assert!(
            took < Duration::from_secs(5),
            "round {round}: `devd sync` took {took:?}: the restart was not noticed until the idle timeout"
        );
    }
    let st = devd.status();
    assert_eq!(st.raw["receiver"]["connected"], true, "{}", st.raw);
}

/// The daemon's pid, from `devd status --json` read as it is: a daemon
/// started a moment ago may not have synced yet (no overlay digest), which
/// the contracted parse refuses.
fn daemon_pid(devd: &devd_tests::Devd<'_>) -> u32 {
    let run = devd.run_timeout(&["status", "--json"], Duration::from_secs(60));
    run.assert_success();
    let st = devd_tests::daemon::first_json_object(&run.stdout).expect("status JSON");
    st["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no pid: {st}")) as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim().starts_with('Z'))
    })
}

/// `kill -9` the daemon, then `devd start` at once, a handful of times:
/// every start brings up a new daemon (its stale control socket and lock
/// are recognised as a dead daemon's), which syncs.
#[test]
fn devd_start_right_after_kill_9_starts_a_new_daemon() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    for round in 0..8 {
        let old = daemon_pid(&devd);
        let st = Command::new("kill")
            .args(["-9", &old.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -9 {old} failed");
        // No pause: the old daemon may still be dying.
        let run = devd.run_timeout(&["start"], Duration::from_secs(90));
        assert!(
            run.success() && run.stdout.contains("devd started"),
            "round {round}: `devd start` right after `kill -9 {old}` did not start a daemon:\n{}",
            run.describe()
        );
        let new = daemon_pid(&devd);
        assert_ne!(
            new, old,
            "round {round}: status still answers for the killed daemon"
        );
        assert!(
            alive(new),
            "round {round}: the new daemon {new} is not running"
        );
        assert!(
            !alive(old),
            "round {round}: the killed daemon {old} still runs"
        );
        fx.write("src/round.rs", format!("pub const ROUND: u32 = {round};\n"));
        devd.sync_and_assert_equal(&rx.worktree());
    }
}

/// Any file named `.blob-*` (a blob being spooled) below `dir`.
fn spooling(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            if p.is_dir() {
                spooling(&p)
            } else {
                e.file_name().to_string_lossy().starts_with(".blob-")
            }
        })
}

/// A daemon killed with `kill -9` in the middle of an upload leaves its
/// connection open on the receiver, holding the workspace for that
/// generation, and the receiver only finds out at its 10 s idle timeout:
/// the restarted daemon waited that long before it could sync. Now the
/// same daemon's new claim ends its older connection at once. The bound
/// (6 s, where the reconnect and a 40 MB re-upload on loopback take about
/// a second) only separates "at once" from "after the idle timeout".
#[test]
fn a_daemon_killed_mid_upload_syncs_again_without_waiting_for_its_dead_connection() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&format!("{}transport = \"quic\"\n", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    fx.write("assets/big.bin", devd_tests::random_bytes("big", 40 << 20));
    let seen = Instant::now();
    while !spooling(rx.data()) {
        assert!(
            seen.elapsed() < Duration::from_secs(60),
            "the upload never started on the receiver"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let old = daemon_pid(&devd);
    let st = Command::new("kill")
        .args(["-9", &old.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let t0 = Instant::now();
    let run = devd.run_timeout(&["start", "--wait"], Duration::from_secs(90));
    let took = t0.elapsed();
    run.assert_success();
    devd.sync_and_assert_equal(&rx.worktree());
    println!("killed mid-upload: synced again {took:?} after the kill");
    assert!(
        took < Duration::from_secs(6),
        "the restarted daemon synced {took:?} after the kill: it waited for the dead connection"
    );
    assert!(
        rx.stderr()
            .contains("connection superseded by its daemon's new one"),
        "{}",
        rx.stderr()
    );
}

//! Receiver and daemon crashes in the middle of syncing, and recovery: a
//! failpoint mid-apply, SIGTERM drains, and the crash soaks (SIGKILL at
//! random points, round after round).

use devd_tests::{
    Fixture, Receiver, ReceiverOpts, assert_worktrees_equal, random_bytes, wait_for_worktrees_equal,
};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const FAILPOINT: &str = "DEVD_RECEIVER_CRASH_AFTER_WRITES";
/// Size of the content acknowledged before the crash; resending it would
/// show in `bytes_sent`.
const ACKED_LEN: usize = 4 << 20;

fn crashing_receiver(fx: &Fixture) -> Receiver<'_> {
    fx.receiver_with(ReceiverOpts {
        env: vec![(FAILPOINT.into(), "50".into())],
        ..ReceiverOpts::default()
    })
}

/// Restart the receiver on the same data and address, without failpoint;
/// the pairing (fingerprint, token) must survive the restart.
fn restart<'a>(fx: &'a Fixture, crashed: &Receiver<'a>) -> Receiver<'a> {
    let before = crashed.pairing();
    let rx = fx.receiver_with(ReceiverOpts {
        data: Some(crashed.data().to_path_buf()),
        listen: crashed.addr().to_string(),
        ..ReceiverOpts::default()
    });
    let after = rx.pairing();
    assert_eq!(
        after.fingerprint, before.fingerprint,
        "the certificate changed across a restart on the same --data"
    );
    assert_eq!(
        after.token, before.token,
        "the token changed across a restart on the same --data"
    );
    rx
}

fn write_thousand(fx: &Fixture) {
    for i in 0..1000 {
        fx.write(
            &format!("bulk/d{:02}/f{i:04}.txt", i % 20),
            format!("crash test file {i}\n"),
        );
    }
}

#[track_caller]
fn assert_crashed(rx: &mut Receiver<'_>) {
    let status = rx.wait_exit(Duration::from_secs(120)).unwrap_or_else(|| {
        panic!("the receiver with {FAILPOINT}=50 did not die while applying 1,000 files")
    });
    println!("receiver died: {status} (signal {:?})", status.signal());
    assert!(
        !status.success(),
        "the receiver exited cleanly ({status}); the failpoint should abort it"
    );
}

/// With a running daemon: the receiver aborts after 50 of 1,000 file
/// writes; restarted on the same data, the daemon reconnects and
/// `devd sync` converges; the 4 MiB blob acknowledged before the crash is
/// not sent again.
#[test]
fn daemon_converges_after_the_receiver_crashes_mid_apply() {
    let fx = Fixture::new();
    let mut rx = crashing_receiver(&fx);
    fx.write_config(&format!("{}[sync]\ndebounce_ms = 20\n", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());

    fx.write("assets/acked.bin", random_bytes("acked", ACKED_LEN));
    devd.sync_and_assert_equal(&rx.worktree());

    write_thousand(&fx);
    let trigger = devd.spawn(&["sync", "--json"]);
    assert_crashed(&mut rx);

    let rx2 = restart(&fx, &rx);
    let triggered = trigger.wait(Duration::from_secs(180));
    println!(
        "`devd sync` running across the crash: {}",
        triggered.describe()
    );

    let report = devd.sync();
    println!("sync after restart: {report:?}");
    assert_worktrees_equal(fx.laptop(), &rx2.worktree());
    for r in [
        Some(report),
        devd_tests::SyncReport::parse(&triggered.stdout).ok(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            r.bytes_sent < ACKED_LEN as u64,
            "a sync after the restart sent {} bytes: the acknowledged {ACKED_LEN}-byte blob was resent ({r:?})",
            r.bytes_sent
        );
    }
}

/// Without a daemon (one-shot syncs): the sync during which the receiver
/// aborts fails; after a restart on the same data, the next one-shot sync
/// converges without resending the 4 MiB acknowledged before the crash.
#[test]
fn one_shot_sync_recovers_without_resending_acknowledged_content() {
    let fx = Fixture::new();
    let mut rx = crashing_receiver(&fx);
    fx.write_config(&rx.config_toml());
    let devd = fx.devd();
    devd.sync_and_assert_equal(&rx.worktree());
    fx.write("assets/acked.bin", random_bytes("acked", ACKED_LEN));
    let acked = devd.sync_and_assert_equal(&rx.worktree());
    assert!(
        acked.bytes_sent >= ACKED_LEN as u64,
        "the random 4 MiB blob cannot cost less than 4 MiB: {acked:?}"
    );

    write_thousand(&fx);
    let crashed = devd.run_timeout(&["sync"], Duration::from_secs(180));
    assert_crashed(&mut rx);
    assert!(
        !crashed.success(),
        "`devd sync` succeeded although the receiver died applying it:\n{}",
        crashed.describe()
    );

    let rx2 = restart(&fx, &rx);
    let report = devd.sync();
    println!("sync after restart: {report:?}");
    assert_worktrees_equal(fx.laptop(), &rx2.worktree());
    assert!(
        report.bytes_sent < ACKED_LEN as u64,
        "the sync after the restart sent {} bytes: the acknowledged {ACKED_LEN}-byte blob was resent ({report:?})",
        report.bytes_sent
    );
}

/// SIGTERM drains: the receiver finishes, exits 0 and says it drained; its
/// state survives, so a restarted receiver serves the same generation and
/// the daemon converges without a full resend of content.
#[test]
fn sigterm_drains_and_exits_cleanly() {
    let fx = devd_tests::Fixture::new();
    let mut rx = fx.receiver();
    fx.write_config(&format!("{}{}", rx.config_toml(), devd_tests::FAST_SYNC));
    let devd = fx.devd();
    devd.start_wait();
    fx.write("drain.txt", "before the signal\n");
    devd.sync_and_assert_equal(&rx.worktree());
    let generation = devd.status().generation;
    rx.signal("TERM");
    let status = rx
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("receiver exits after SIGTERM");
    assert!(
        status.success(),
        "receiver exit status after SIGTERM: {status}"
    );
    assert!(
        rx.stderr().contains("draining"),
        "receiver logs the drain:\n{}",
        rx.stderr()
    );
    let data = rx.data().to_owned();
    let addr = rx.addr().to_string();
    drop(rx);
    let rx2 = fx.receiver_with(devd_tests::ReceiverOpts {
        data: Some(data),
        listen: addr,
        ..Default::default()
    });
    fx.write("drain.txt", "after the restart\n");
    let report = devd.sync_and_assert_equal(&rx2.worktree());
    assert!(
        report.generation > generation,
        "generations keep growing: {report:?}"
    );
}

/// Edits made while the receiver is down reach it on its own once it is
/// back: the daemon keeps retrying with backoff and resumes from the
/// acknowledged generation, with no `devd sync` from the user.
#[test]
fn edits_made_while_the_receiver_is_down_arrive_on_reconnect() {
    let fx = Fixture::new();
    let mut rx = fx.receiver();
    fx.write_config(&format!("{}{}", rx.config_toml(), devd_tests::FAST_SYNC));
    let devd = fx.devd();
    devd.start_wait();
    rx.kill();
    fx.write("offline.txt", "written while the receiver was down\n");
    fx.append("README.md", "\nand this edit too\n");
    // QUIC notices a dead peer by its idle timeout (10 s): the daemon then
    // reports the error and keeps retrying with backoff.
    devd_tests::wait_until(
        std::time::Duration::from_secs(20),
        "the daemon notices the receiver is gone",
        || devd.status().raw["receiver"]["last_error"].is_string(),
    );
    let rx2 = restart(&fx, &rx);
    devd_tests::wait_for_worktrees_equal(
        fx.laptop(),
        &rx2.worktree(),
        std::time::Duration::from_secs(40),
    );
    let status = devd.status();
    assert!(
        status.generation >= 2,
        "a new generation was applied after the restart: {}",
        status.raw
    );
}

/// The receiver's worktree once it stops changing: no apply pending in
/// its journal and two snapshots 200 ms apart equal.
fn settled(rx: &Receiver<'_>) -> devd_tests::Snapshot {
    let pending = rx.workspace_dir().join("state.pending");
    let mut last = devd_tests::Snapshot::default();
    let settled = devd_tests::poll_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        // A file may vanish under the walk while an apply runs: not
        // settled yet.
        let Ok(now) = devd_tests::Snapshot::of_tree(&rx.worktree()) else {
            return false;
        };
        let same = now == last && !pending.exists();
        last = now;
        same
    });
    assert!(
        settled.is_some(),
        "the receiver's worktree kept changing for 60 s"
    );
    last
}

#[track_caller]
fn assert_one_of(
    got: &devd_tests::Snapshot,
    before: &devd_tests::Snapshot,
    after: &devd_tests::Snapshot,
    round: usize,
) {
    assert!(
        got == before || got == after,
        "round {round}: the receiver's worktree is neither the previous generation nor the new one\nagainst the previous: {:?}\nagainst the new: {:?}",
        before.differences(got, 10),
        after.differences(got, 10)
    );
}

/// Crash soak of the receiver: rounds of random edits (up to 200 files,
/// some of 1 MiB), each with a SIGKILL of the receiver at a random point —
/// while its journal has an apply pending when the kill lands in one, else
/// before or after. The daemon is stopped (SIGSTOP) across the kill and
/// restart, so what the restarted receiver shows is its own recovery: the
/// previous generation or the new one, never a mix. Then the daemon goes
/// on (SIGCONT) and the receiver converges to the laptop. 5 rounds in CI,
/// 100 with `DEVD_SOAK=1`.
#[test]
fn receiver_killed_at_random_points_recovers_a_whole_generation() {
    use devd_tests::faults::{Rng, ci_or_soak, random_edits, signal};
    let rounds = ci_or_soak(5, 100);
    let fx = Fixture::new();
    let mut rx = fx.receiver();
    fx.write_config(&format!("{}[sync]\ndebounce_ms = 1000\n", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    let pid = devd.status().raw["pid"]
        .as_u64()
        .expect("status has the pid") as u32;
    let mut rng = Rng::from_env("receiver crash soak");
    let (mut mid_apply, mut new_gen) = (0, 0);
    let mut converge = Vec::new();
    for round in 0..rounds {
        let before = devd_tests::Snapshot::of_tree(&rx.worktree()).unwrap();
        // The edits land within milliseconds, well inside the daemon's 1 s
        // quiet window, so they are one generation: the laptop's state
        // after all of them.
        let edits = random_edits(&fx, &mut rng, 20, 200);
        let after = devd_tests::Snapshot::of_laptop(fx.laptop()).unwrap();
        // Kill at a random point within 3 s; if an apply starts first,
        // at a random point inside it.
        let pending = rx.workspace_dir().join("state.pending");
        let until = Instant::now() + rng.duration(Duration::from_millis(3000));
        let mut in_apply = false;
        while Instant::now() < until {
            if pending.exists() {
                in_apply = true;
                std::thread::sleep(rng.duration(Duration::from_millis(40)));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        signal(pid, "STOP");
        rx.kill();
        let restarted = restart(&fx, &rx);
        rx = restarted;
        let got = devd_tests::Snapshot::of_tree(&rx.worktree()).unwrap();
        assert_one_of(&got, &before, &after, round);
        mid_apply += usize::from(in_apply);
        new_gen += usize::from(got == after && got != before);
        signal(pid, "CONT");
        let took = wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), Duration::from_secs(90));
        println!(
            "round {round}: {edits} edits, killed {}, recovered to the {} generation, converged {:.1} s after SIGCONT",
            if in_apply {
                "mid-apply"
            } else {
                "outside an apply"
            },
            if got == after { "new" } else { "previous" },
            took.as_secs_f64()
        );
        converge.push(took);
    }
    println!(
        "receiver crash soak: {rounds} SIGKILLs survived ({mid_apply} mid-apply, {new_gen} recovered to the new generation), time to converge p50 {:.1} s, max {:.1} s",
        devd_tests::faults::percentile(&converge, 50.0).as_secs_f64(),
        converge.iter().max().unwrap().as_secs_f64()
    );
}

/// Crash soak of the daemon: rounds of random edits, each with a SIGKILL
/// of the daemon at a random point (while it scans, uploads or waits); the
/// receiver's worktree, once settled, is the previous generation or the
/// new one, and a new `devd start --wait` converges it to the laptop.
/// 5 rounds in CI, 100 with `DEVD_SOAK=1`.
#[test]
fn daemon_killed_at_random_points_restarts_and_converges() {
    use devd_tests::faults::{Rng, alive, ci_or_soak, random_edits, signal};
    let rounds = ci_or_soak(5, 100);
    let fx = Fixture::new();
    let rx = fx.receiver();
    fx.write_config(&format!("{}[sync]\ndebounce_ms = 150\n", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    let mut rng = Rng::from_env("daemon crash soak");
    let mut converge = Vec::new();
    for round in 0..rounds {
        let pid = devd.status().raw["pid"]
            .as_u64()
            .expect("status has the pid") as u32;
        let before = settled(&rx);
        // As above: the edits are one change for the daemon.
        signal(pid, "STOP");
        let edits = random_edits(&fx, &mut rng, 20, 200);
        let after = devd_tests::Snapshot::of_laptop(fx.laptop()).unwrap();
        signal(pid, "CONT");
        std::thread::sleep(rng.duration(Duration::from_millis(1500)));
        signal(pid, "KILL");
        devd_tests::wait_until(Duration::from_secs(10), "the killed daemon is gone", || {
            !alive(pid)
        });
        let got = settled(&rx);
        assert_one_of(&got, &before, &after, round);
        let t = Instant::now();
        devd.start_wait();
        let took = wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), Duration::from_secs(60))
            + t.elapsed();
        println!(
            "round {round}: {edits} edits, the receiver had the {} generation; `devd start --wait` converged in {:.1} s",
            if got == after { "new" } else { "previous" },
            took.as_secs_f64()
        );
        converge.push(took);
    }
    println!(
        "daemon crash soak: {rounds} SIGKILLs survived, restart to converged p50 {:.1} s, max {:.1} s",
        devd_tests::faults::percentile(&converge, 50.0).as_secs_f64(),
        converge.iter().max().unwrap().as_secs_f64()
    );
}

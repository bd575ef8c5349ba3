//! Faults of the laptop and of scale, against real daemons and a real
//! receiver on loopback QUIC: a laptop that sleeps (the daemon stopped
//! with SIGSTOP while edits happen) and many workspaces syncing at once
//! against one receiver. Short versions run in CI; `DEVD_SOAK=1` runs the
//! long ones (see the README's reliability section).

use devd_tests::faults::{Rng, ci_or_soak, cpu_time, percentile, random_edits, signal};
use devd_tests::{FAST_SYNC, Fixture, Receiver, ReceiverOpts, wait_for_worktrees_equal};
use std::time::{Duration, Instant};

/// How many sessions the receiver has welcomed so far (its `laptop
/// connected` log lines): a reconnect shows as one more.
fn connections(rx: &Receiver<'_>) -> usize {
    rx.stderr().matches("laptop connected").count()
}

/// Stop the daemon (SIGSTOP) for `sleep` while edits happen every second,
/// wake it (SIGCONT), and return how long the receiver took to converge.
fn sleep_and_wake(
    fx: &Fixture,
    rx: &Receiver<'_>,
    pid: u32,
    sleep: Duration,
    rng: &mut Rng,
) -> Duration {
    signal(pid, "STOP");
    let until = Instant::now() + sleep;
    let mut edits = 0;
    while Instant::now() < until {
        edits += random_edits(fx, rng, 1, 10);
        std::thread::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        );
    }
    signal(pid, "CONT");
    let took = wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), Duration::from_secs(30));
    println!(
        "asleep {:.0} s with {edits} edits: converged {:.2} s after waking",
        sleep.as_secs_f64(),
        took.as_secs_f64()
    );
    took
}

/// Laptop sleep: the daemon is stopped while files change, then woken.
/// A nap shorter than the connection's 10 s idle timeout (5 s) keeps the
/// same connection: the receiver welcomes no new session. A long sleep
/// (20 s in CI, 5 minutes with `DEVD_SOAK=1`) outlasts it: the receiver
/// drops the connection meanwhile, and the daemon reconnects once when it
/// wakes. Either way every edit made during the sleep arrives within
/// 30 s of waking, by the same daemon process (no restart).
#[test]
fn a_sleeping_laptop_converges_within_seconds_of_waking() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    let pid = devd.status().raw["pid"]
        .as_u64()
        .expect("status has the pid") as u32;
    let mut rng = Rng::from_env("laptop sleep");

    let before = connections(&rx);
    sleep_and_wake(&fx, &rx, pid, Duration::from_secs(5), &mut rng);
    assert_eq!(
        connections(&rx),
        before,
        "a 5 s nap (under the 10 s idle timeout) must keep the same connection"
    );

    let long = ci_or_soak(Duration::from_secs(20), Duration::from_secs(300));
    sleep_and_wake(&fx, &rx, pid, long, &mut rng);
    let reconnects = connections(&rx) - before;
    println!("reconnects over the long sleep: {reconnects}");
    assert!(
        reconnects <= 1,
        "waking from one sleep should take at most one reconnect, took {reconnects}"
    );
    let status = devd.status();
    assert_eq!(
        status.raw["pid"].as_u64(),
        Some(u64::from(pid)),
        "the same daemon process goes on (no restart)"
    );
    assert_eq!(status.raw["receiver"]["connected"], true, "{}", status.raw);
}

/// Load: 32 workspaces, each with its own repository and daemon, sync
/// against one receiver; then rounds of edits in all of them at once
/// (3 in CI, 20 with `DEVD_SOAK=1`). Every edit arrives (nothing starves:
/// each workspace's edit is visible on the receiver within 60 s), every
/// worktree converges, and the per-edit latency (p50/p95/max), the
/// receiver's peak resident memory and CPU time are printed.
#[test]
fn thirty_two_workspaces_sync_at_once_against_one_receiver() {
    const WORKSPACES: usize = 32;
    let rounds = ci_or_soak(3, 20);
    let fxs: Vec<Fixture> = (0..WORKSPACES).map(|_| Fixture::new()).collect();
    let name = |i: usize| format!("ws{i:02}");
    let rx = fxs[0].receiver_with(ReceiverOpts {
        workspace: name(0),
        args: (1..WORKSPACES)
            .flat_map(|i| {
                [
                    "--also".to_string(),
                    format!("{}={}", name(i), fxs[i].origin_url()),
                ]
            })
            .collect(),
        ..ReceiverOpts::default()
    });
    let data = rx.data().to_path_buf();
    let worktree = |i: usize| data.join("workspaces").join(name(i)).join("worktree");
    let started = Instant::now();
    let daemons: Vec<_> = fxs
        .iter()
        .enumerate()
        .map(|(i, fx)| {
            let pairing = data.join("workspaces").join(name(i)).join("pairing.toml");
            devd_tests::wait_until(
                Duration::from_secs(30),
                "the workspace's pairing file",
                || pairing.is_file(),
            );
            fx.write_config(&format!(
                "[receiver]\nmode = \"remote\"\npairing = \"{}\"\n{FAST_SYNC}",
                pairing.display()
            ));
            let devd = fx.devd();
            devd.start();
            devd
        })
        .collect();
    for (i, fx) in fxs.iter().enumerate() {
        wait_for_worktrees_equal(fx.laptop(), &worktree(i), Duration::from_secs(120));
    }
    println!(
        "{WORKSPACES} daemons started and synced in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let cpu_before = cpu_time(rx.pid());
    let edits_started = Instant::now();
    let mut latencies = Vec::new();
    let mut rng = Rng::from_env("load");
    for round in 0..rounds {
        // An edit in every workspace, all at once; each is a file whose
        // content names its round, so its arrival is unambiguous.
        let mut written = Vec::new();
        for (i, fx) in fxs.iter().enumerate() {
            random_edits(fx, &mut rng, 1, 5);
            fx.write("load/marker.txt", format!("round {round} workspace {i}\n"));
            written.push(Instant::now());
        }
        let mut arrived: Vec<Option<Duration>> = vec![None; WORKSPACES];
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrived.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, a) in arrived.iter_mut().enumerate().filter(|(_, a)| a.is_none()) {
                let want = format!("round {round} workspace {i}\n");
                if std::fs::read_to_string(worktree(i).join("load/marker.txt"))
                    .is_ok_and(|s| s == want)
                {
                    *a = Some(written[i].elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let starved: Vec<String> = arrived
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_none())
            .map(|(i, _)| name(i))
            .collect();
        assert!(
            starved.is_empty(),
            "round {round}: the edit did not reach the receiver within 60 s in {starved:?}"
        );
        latencies.extend(arrived.into_iter().flatten());
    }
    for (i, fx) in fxs.iter().enumerate() {
        wait_for_worktrees_equal(fx.laptop(), &worktree(i), Duration::from_secs(60));
    }
    let busy = edits_started.elapsed();
    let cpu = cpu_time(rx.pid()) - cpu_before;
    let (rss, peak) = rx.memory();
    println!(
        "load: {WORKSPACES} workspaces × {rounds} rounds: edit → on the receiver p50 {} ms, p95 {} ms, max {} ms; receiver {} MiB resident (peak {} MiB), CPU {:.1} s over {:.1} s ({:.0} % of a core)",
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 95.0).as_millis(),
        latencies.iter().max().unwrap().as_millis(),
        rss >> 20,
        peak >> 20,
        cpu.as_secs_f64(),
        busy.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / busy.as_secs_f64()
    );
    drop(daemons);
}

//! Link faults between a real daemon and a real receiver, each in its own
//! network namespace, joined by a veth pair: random packet loss (iptables
//! `statistic` drops on both ends' input), a 1 Mbit/s link (`tc tbf` on
//! both ends), a partition (every packet dropped, 30 s), and the laptop's
//! address changing under a live connection (QUIC connection migration).
//! After each fault no edit is lost (the receiver's worktree equals the
//! laptop's), and the time to converge is printed. There is no `netem` on
//! these machines, so no delay or reordering.
//!
//! Namespaces, veth and iptables need root: built as another user (see
//! `tests/build.rs`) the test is ignored with that reason; CI runs as root.

use devd_tests::faults::ci_or_soak;
use devd_tests::{Fixture, Receiver, ReceiverOpts, random_bytes, wait_for_worktrees_equal};
use std::process::Command;
use std::time::{Duration, Instant};

/// Run `ip`/`iptables`/`tc` and insist it worked.
#[track_caller]
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: the laptop at 10.77.N.1, the
/// receiver at 10.77.N.2; deleted on drop.
struct Link {
    laptop_ns: String,
    receiver_ns: String,
    laptop_dev: String,
    receiver_dev: String,
    net: String,
}

impl Link {
    fn new() -> Self {
        let id = std::process::id();
        let l = Link {
            laptop_ns: format!("devd-l{id}"),
            receiver_ns: format!("devd-r{id}"),
            laptop_dev: format!("dvl{id}"),
            receiver_dev: format!("dvr{id}"),
            net: format!("10.77.{}", id % 250),
        };
        run(&["ip", "netns", "add", &l.laptop_ns]);
        run(&["ip", "netns", "add", &l.receiver_ns]);
        run(&[
            "ip",
            "link",
            "add",
            &l.laptop_dev,
            "netns",
            &l.laptop_ns,
            "type",
            "veth",
            "peer",
            "name",
            &l.receiver_dev,
            "netns",
            &l.receiver_ns,
        ]);
        for (ns, dev, host) in [
            (&l.laptop_ns, &l.laptop_dev, 1),
            (&l.receiver_ns, &l.receiver_dev, 2),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}.{host}/24", l.net),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        l
    }

    fn exec(ns: &str) -> Vec<String> {
        ["ip", "netns", "exec", ns].map(String::from).to_vec()
    }

    /// Both ends: (namespace, device).
    fn ends(&self) -> [(&str, &str); 2] {
        [
            (&self.laptop_ns, &self.laptop_dev),
            (&self.receiver_ns, &self.receiver_dev),
        ]
    }

    /// Drop each packet arriving at either end with probability `p`
    /// (1.0: all of them).
    fn drop_packets(&self, p: f64) {
        for (ns, dev) in self.ends() {
            let mut rule = vec![
                "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev,
            ];
            let prob = format!("{p}");
            if p < 1.0 {
                rule.extend([
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &prob,
                ]);
            }
            rule.extend(["-j", "DROP"]);
            run(&rule);
        }
    }

    fn heal_drops(&self) {
        for (ns, _) in self.ends() {
            run(&["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"]);
        }
    }

    /// Limit both directions to `rate` (e.g. "1mbit") with a token bucket.
    fn limit_rate(&self, rate: &str) {
        for (ns, dev) in self.ends() {
            run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                rate, "burst", "32kbit", "latency", "400ms",
            ]);
        }
    }

    fn unlimit_rate(&self) {
        for (ns, dev) in self.ends() {
            run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
            ]);
        }
    }

    /// Give the laptop a new address and take the old one away: its
    /// packets leave from the new one.
    fn move_laptop(&self, host: u8) {
        let new = format!("{}.{host}/24", self.net);
        // The new address is a secondary one until the old goes: promote
        // it then, instead of the kernel removing it with the primary.
        for scope in ["all", self.laptop_dev.as_str()] {
            let key = format!("net.ipv4.conf.{scope}.promote_secondaries=1");
            run(&[
                "ip",
                "netns",
                "exec",
                &self.laptop_ns,
                "sysctl",
                "-qw",
                &key,
            ]);
        }
        run(&[
            "ip",
            "-n",
            &self.laptop_ns,
            "addr",
            "add",
            &new,
            "dev",
            &self.laptop_dev,
        ]);
        run(&[
            "ip",
            "-n",
            &self.laptop_ns,
            "addr",
            "del",
            &format!("{}.1/24", self.net),
            "dev",
            &self.laptop_dev,
        ]);
    }
}

/// The laptop namespace's IPv4 addresses on its veth end.
fn addresses(link: &Link) -> String {
    let out = Command::new("ip")
        .args([
            "-n",
            &link.laptop_ns,
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            &link.laptop_dev,
        ])
        .output()
        .expect("run ip addr show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.laptop_ns, &self.receiver_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// How many sessions the receiver has welcomed (`laptop connected` lines).
fn connections(rx: &Receiver<'_>) -> usize {
    rx.stderr().matches("laptop connected").count()
}

/// A batch of edits for `phase`: ten 4 KiB files, one of 256 KiB (so a
/// slow link matters), and an append to a tracked file.
fn edit(fx: &Fixture, phase: &str) {
    for i in 0..10 {
        fx.write(
            &format!("link/{phase}/f{i}.txt"),
            random_bytes(&format!("{phase}{i}"), 4096),
        );
    }
    fx.write(
        &format!("link/{phase}/big.bin"),
        random_bytes(phase, 256 << 10),
    );
    fx.append("README.md", format!("\n{phase}\n"));
}

#[track_caller]
fn converge(fx: &Fixture, rx: &Receiver<'_>, what: &str, since: Instant) -> Duration {
    wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), Duration::from_secs(180));
    let took = since.elapsed();
    println!(
        "{what}: converged {:.1} s after the edit",
        took.as_secs_f64()
    );
    took
}

/// The daemon (laptop namespace) and the receiver (receiver namespace)
/// go through each fault in turn; after each, every edit made before or
/// during it is on the receiver. The partition lasts 30 s (well past the
/// 10 s idle timeout), 120 s with `DEVD_SOAK=1`. The address change keeps
/// the same QUIC connection: the receiver welcomes no new session.
#[test]
#[cfg_attr(
    devd_tests_not_root,
    ignore = "needs root for network namespaces, veth and iptables (CI runs as root)"
)]
fn edits_survive_loss_a_slow_link_a_partition_and_an_address_change() {
    let link = Link::new();
    let fx = Fixture::new();
    let rx = fx.receiver_with(ReceiverOpts {
        listen: format!("{}.2:0", link.net),
        wrap: Link::exec(&link.receiver_ns),
        ..ReceiverOpts::default()
    });
    fx.write_config(&format!("{}[sync]\ndebounce_ms = 20\n", rx.config_toml()));
    let devd = fx.devd().with_wrap(Link::exec(&link.laptop_ns));
    devd.start_wait();
    wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), Duration::from_secs(30));
    let mut report = Vec::new();

    // Connection migration first, on a clean link: the laptop moves to a
    // new address; the next edit arrives over the same connection.
    let before = connections(&rx);
    link.move_laptop(3);
    let now = addresses(&link);
    assert!(
        now.contains(&format!("{}.3/24", link.net)) && !now.contains(&format!("{}.1/24", link.net)),
        "the laptop moved from .1 to .3: {now}"
    );
    let t = Instant::now();
    edit(&fx, "moved");
    report.push((
        "laptop address changed",
        converge(&fx, &rx, "address change", t),
    ));
    assert_eq!(
        connections(&rx),
        before,
        "the address change must be invisible: same connection, no new session\n{}",
        devd_tests::process::tail(&rx.stderr(), 30)
    );

    for p in [0.1, 0.3] {
        link.drop_packets(p);
        let t = Instant::now();
        let phase = format!("loss{}", (p * 100.0) as u32);
        edit(&fx, &phase);
        let what = format!("{}% loss", (p * 100.0) as u32);
        report.push((
            if p < 0.2 { "10 % loss" } else { "30 % loss" },
            converge(&fx, &rx, &what, t),
        ));
        link.heal_drops();
    }

    link.limit_rate("1mbit");
    let t = Instant::now();
    edit(&fx, "slow");
    report.push(("1 Mbit/s link", converge(&fx, &rx, "1 Mbit/s", t)));
    link.unlimit_rate();

    // Partition: edits before and during it; time to converge counts from
    // the moment it heals.
    let partition = ci_or_soak(Duration::from_secs(30), Duration::from_secs(120));
    link.drop_packets(1.0);
    let cut = Instant::now();
    edit(&fx, "cut-early");
    std::thread::sleep(partition / 2);
    edit(&fx, "cut-late");
    std::thread::sleep(partition.saturating_sub(cut.elapsed()));
    link.heal_drops();
    let healed = Instant::now();
    report.push((
        "partition healed",
        converge(
            &fx,
            &rx,
            &format!("{} s partition", partition.as_secs()),
            healed,
        ),
    ));
    assert!(
        fx.read("README.md").ends_with(b"cut-late\n"),
        "the edits of every phase are in place on the laptop"
    );

    println!("link faults, time to converge:");
    for (what, took) in &report {
        println!("  {what}: {:.1} s", took.as_secs_f64());
    }
    drop(devd);
    drop(rx);
}

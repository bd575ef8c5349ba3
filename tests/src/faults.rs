//! Helpers of the fault tests (crash soaks, link faults, sleep, load):
//! the long "soak" mode, a seeded random source, random edits of a
//! worktree, signals to processes, and percentiles.
//!
//! Every fault test has a short version that CI runs and a long one run
//! with `DEVD_SOAK=1` (more rounds, longer faults, as the README's
//! reliability section lists).

use crate::repo::Fixture;
use std::process::Command;
use std::time::Duration;

/// True with `DEVD_SOAK=1`: the fault tests run their long versions.
pub fn soak() -> bool {
    std::env::var("DEVD_SOAK").is_ok_and(|v| v == "1")
}

/// `short` in CI, `long` with `DEVD_SOAK=1`.
pub fn ci_or_soak<T>(short: T, long: T) -> T {
    if soak() { long } else { short }
}

/// A small seeded random source (xorshift64*), so a failing round can be
/// replayed from the seed the test prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `DEVD_TEST_SEED` if set, else from the clock; the seed
    /// is printed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("DEVD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: DEVD_TEST_SEED={seed}");
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration uniform in `0..max`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros().max(1) as u64))
    }
}

/// Apply between `min` and `max` random edits under `soak/` of the
/// laptop worktree: new files (up to 64 KiB, sometimes 1 MiB), rewrites,
/// appends, deletions, exec-bit flips. Every content is made before the
/// first file is touched, so the edits land within milliseconds (a
/// watcher sees one burst). Returns how many were made.
pub fn random_edits(fx: &Fixture, rng: &mut Rng, min: u64, max: u64) -> u64 {
    enum Op {
        Write(Vec<u8>),
        Append(String),
        Remove,
        Exec(bool),
    }
    let n = min + rng.below(max - min + 1);
    let mut exists = std::collections::HashMap::new();
    let mut ops = Vec::new();
    for _ in 0..n {
        let name = format!("soak/d{}/f{:03}.txt", rng.below(8), rng.below(400));
        let there = *exists
            .entry(name.clone())
            .or_insert_with(|| fx.path(&name).is_file());
        let op = match rng.below(10) {
            0..=4 => {
                let len = if rng.below(40) == 0 {
                    1 << 20
                } else {
                    rng.below(64 << 10) as usize
                };
                Op::Write(crate::content::random_bytes(
                    &rng.next_u64().to_string(),
                    len,
                ))
            }
            5 | 6 if there => Op::Append(format!("appended {}\n", rng.next_u64())),
            7 | 8 if there => Op::Remove,
            9 if there => Op::Exec(rng.below(2) == 0),
            _ => Op::Write(format!("small {}\n", rng.next_u64()).into_bytes()),
        };
        exists.insert(name.clone(), !matches!(op, Op::Remove));
        ops.push((name, op));
    }
    for (name, op) in ops {
        match op {
            Op::Write(data) => fx.write(&name, data),
            Op::Append(line) => fx.append(&name, line),
            Op::Remove => fx.remove(&name),
            Op::Exec(on) => fx.set_exec(&name, on),
        }
    }
    n
}

/// Send `sig` (e.g. "KILL", "STOP", "CONT") to process `pid` with kill(1).
#[track_caller]
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// True while process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The `p`-th percentile (0–100) of `values`, nearest rank; 0 when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based
    // over the whole line), i.e. indexes 11 and 12 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

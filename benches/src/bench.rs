//! The scenario runner: generates the repository, measures the baselines
//! that need a quiet laptop (git status, rsync's initial copy), runs every
//! devd scenario against one background daemon, stops it, and runs the
//! rsync side of each scenario on the same tree. Every measured step ends
//! with a check of the receiver's (or rsync destination's) file contents.
//!
//! Order of a full run:
//! 1. generate; modify 50 files; `git status -uall`; rsync initial copy
//! 2. devd: cold start → idle → edit latency → bytes per edit → bulk → churn
//! 3. stop devd; idle baseline (polling); rsync: latency → bytes → bulk → churn

use crate::devd::Devd;
use crate::repogen::{self, BIG_FILES, Generated, RepoSpec, one_line_edit, write_file};
use crate::results::{Machine, Results};
use crate::rng::Rng;
use crate::rsync::{RsyncDaemon, RsyncRun};
use crate::util::{
    Expect, clock_ticks, compare_trees, flush_disk, human_bytes, human_ms, median, percentile,
    proc_cpu_ticks, proc_status_kb, wait_for,
};
use anyhow::{Context, bail};
use devd_testkit::{find_program, git, output};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

mod machine;
mod rsync_side;
mod scenario;
mod summary;
pub use machine::{check_tools, machine, new_results};
pub use scenario::Scenario;
pub use summary::describe_ratio;
use summary::{dir_size, git_diff_zstd, log_breakdown};
pub(crate) use summary::{ms_field, parse_ts, strip_ansi};

/// Sizes and counts of one run.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub seed: u64,
    pub files: usize,
    pub churn_files: usize,
    pub cold_modified: usize,
    pub devd_edits: usize,
    pub rsync_edits: usize,
    /// Pause before each edit, drawn uniformly from this range (ms).
    pub spacing_ms: (u64, u64),
    pub bytes_small_samples: usize,
    pub bytes_big_samples: usize,
    pub bulk_files: usize,
    pub bulk_file_bytes: usize,
    pub idle: Duration,
    pub idle_poll_runs: usize,
    pub poll_interval: Duration,
    /// Scenario 7: measured edits per variant, reuse hits, and whether the
    /// docker-registry variant runs too.
    pub deploy_edits: usize,
    pub deploy_reverts: usize,
    pub deploy_registry: bool,
    /// Scenario 8: repetitions of each variant, and whether the generated
    /// 10-service repository boots too.
    pub boot_reps: usize,
    pub boot_large: bool,
    pub work: PathBuf,
    pub devd_bin: PathBuf,
    pub command: String,
}

impl Config {
    /// The 100k-file run, or the 1k-file `--quick` one.
    pub fn new(quick: bool, work: PathBuf, devd_bin: PathBuf, command: String) -> Self {
        if quick {
            Self {
                quick,
                seed: 0xdecd,
                files: 1_000,
                churn_files: 200,
                cold_modified: 50,
                devd_edits: 40,
                rsync_edits: 10,
                spacing_ms: (50, 100),
                bytes_small_samples: 3,
                bytes_big_samples: 3,
                bulk_files: 100,
                bulk_file_bytes: 100_000,
                idle: Duration::from_secs(5),
                idle_poll_runs: 10,
                poll_interval: Duration::from_micros(500),
                deploy_edits: 5,
                deploy_reverts: 2,
                deploy_registry: false,
                boot_reps: 1,
                boot_large: false,
                work,
                devd_bin,
                command,
            }
        } else {
            Self {
                quick,
                seed: 0xdecd,
                files: 100_000,
                churn_files: 2_000,
                cold_modified: 50,
                devd_edits: 200,
                rsync_edits: 20,
                spacing_ms: (50, 100),
                bytes_small_samples: 5,
                bytes_big_samples: 3,
                bulk_files: 1_000,
                bulk_file_bytes: 100_000,
                idle: Duration::from_secs(60),
                idle_poll_runs: 3,
                poll_interval: Duration::from_micros(500),
                deploy_edits: 15,
                deploy_reverts: 5,
                deploy_registry: true,
                boot_reps: 5,
                boot_large: true,
                work,
                devd_bin,
                command,
            }
        }
    }
}

/// Per-edit samples of one tool.
#[derive(Default, Debug)]
struct EditSamples {
    ms: Vec<f64>,
    bytes: Vec<f64>,
    failures: Vec<String>,
}

#[derive(Default, Debug)]
struct Measured {
    git_status_ms: Option<f64>,
    git_fetch_ms: Option<f64>,
    git_checkout_ms: Option<f64>,
    rsync_initial: Option<RsyncRun>,
    cold_ms: Option<f64>,
    cold_bytes: Option<f64>,
    cold_breakdown: serde_json::Value,
    receiver_pack_bytes: Option<f64>,
    idle_cpu_pct: Option<f64>,
    idle_rss: Option<f64>,
    idle_rss_anon: Option<f64>,
    idle_rss_file: Option<f64>,
    idle_poll_cpu_pct: Option<f64>,
    lat_devd: EditSamples,
    lat_rsync: EditSamples,
    bytes_devd_small: Vec<f64>,
    bytes_devd_big: Vec<f64>,
    gitdiff_small: Vec<f64>,
    gitdiff_big: Vec<f64>,
    bytes_rsync_small: Vec<f64>,
    bytes_rsync_big: Vec<f64>,
    bulk_devd_ms: Option<f64>,
    bulk_devd_from_first_ms: Option<f64>,
    bulk_write_ms: Option<f64>,
    bulk_rsync: Option<RsyncRun>,
    churn_devd_ms: [Option<f64>; 2],
    churn_checkout_ms: [Option<f64>; 2],
    churn_rsync: [Option<RsyncRun>; 2],
}

/// A run in progress.
pub struct Bench {
    cfg: Config,
    which: BTreeSet<Scenario>,
    repo: Generated,
    rsync: RsyncDaemon,
    devd: Option<Devd>,
    receiver: PathBuf,
    /// Small files already edited (each edit starts from a clean file).
    touched: HashSet<usize>,
    /// The bulk scenario's files and contents (reused by the rsync side).
    bulk_files: Vec<(String, Vec<u8>)>,
    rng: Rng,
    m: Measured,
    results: Results,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    /// Generate the repository and start the rsync daemon.
    pub fn new(cfg: Config, which: BTreeSet<Scenario>) -> anyhow::Result<Self> {
        let spec = RepoSpec {
            seed: cfg.seed,
            files: cfg.files,
            churn_files: cfg.churn_files,
        };
        eprintln!(
            "generating {} files in {} directories under {} …",
            spec.files,
            spec.dirs(),
            cfg.work.display()
        );
        let t = Instant::now();
        let repo = repogen::generate(&spec, &cfg.work.join("repo"))?;
        let gen_s = t.elapsed().as_secs_f64();
        eprintln!(
            "generated in {gen_s:.1} s ({})",
            human_bytes(repo.bytes as f64)
        );
        let rsync = RsyncDaemon::start(&cfg.work.join("rsync"))?;
        let mut results = new_results(&cfg);
        results
            .repo
            .insert("files".into(), json!(spec.files + BIG_FILES + 2));
        results.repo.insert("small_files".into(), json!(spec.files));
        results.repo.insert("dirs".into(), json!(spec.dirs()));
        results.repo.insert("bytes".into(), json!(repo.bytes));
        results.repo.insert("seed".into(), json!(spec.seed));
        results.repo.insert("generate_s".into(), json!(gen_s));
        results.repo.insert("main".into(), json!(repo.main_commit));
        Ok(Self {
            rng: Rng::derive(cfg.seed, 0xbe4c),
            cfg,
            which,
            repo,
            rsync,
            devd: None,
            receiver: PathBuf::new(),
            touched: HashSet::new(),
            bulk_files: Vec::new(),
            m: Measured::default(),
            results,
        })
    }

    fn on(&self, s: Scenario) -> bool {
        self.which.contains(&s)
    }

    fn record<T>(&mut self, s: Scenario, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("!! {}: {msg}", s.key());
                self.results
                    .errors
                    .entry(s.key().into())
                    .and_modify(|m| {
                        m.push_str("; ");
                        m.push_str(&msg);
                    })
                    .or_insert(msg);
                None
            }
        }
    }

    /// A small file not edited before in this run.
    fn fresh_file(&mut self) -> usize {
        loop {
            let i = self.rng.below(self.cfg.files as u64) as usize;
            if self.touched.insert(i) {
                return i;
            }
        }
    }

    fn spacing(&mut self) {
        let (lo, hi) = self.cfg.spacing_ms;
        std::thread::sleep(Duration::from_millis(self.rng.range(lo, hi + 1)));
    }

    fn devd(&self) -> anyhow::Result<&Devd> {
        self.devd.as_ref().context("devd is not running")
    }

    /// Run everything selected; the results.
    pub fn run(mut self) -> Results {
        let started = Instant::now();
        let r = self.prepare();
        self.record(Scenario::ColdStart, r);
        let r = self.devd_phase();
        if let Err(e) = r {
            let first = *self.which.iter().next().expect("a scenario");
            self.record::<()>(first, Err(e.context("devd phase")));
        }
        if let Some(mut d) = self.devd.take() {
            let _ = d.stop();
        }
        let r = self.rsync_phase();
        if let Err(e) = r {
            let first = *self.which.iter().next().expect("a scenario");
            self.record::<()>(first, Err(e.context("rsync phase")));
        }
        self.results.machine.loadavg_end = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned();
        self.summarize();
        self.results.duration_s = started.elapsed().as_secs_f64();
        self.results
    }

    /// Modify the cold-start files, time `git status -uall`, seed rsync.
    fn prepare(&mut self) -> anyhow::Result<()> {
        for k in 0..self.cfg.cold_modified {
            let i = self.fresh_file();
            let rel = self.repo.spec.small_path(i);
            let p = self.repo.path(&rel);
            let new = one_line_edit(&std::fs::read(&p)?, &format!("cold{k}"));
            write_file(&p, &new)?;
        }
        flush_disk();
        if self.on(Scenario::ColdStart) {
            // Warm the cache once, then the median of three.
            let laptop = self.repo.laptop.clone();
            git(&laptop, &["status", "-uall", "--porcelain"])?;
            let mut v = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let out = git(&laptop, &["status", "-uall", "--porcelain"])?;
                v.push(ms(t.elapsed()));
                let n = out.lines().count();
                if n != self.cfg.cold_modified {
                    bail!(
                        "git status shows {n} changes, expected {}",
                        self.cfg.cold_modified
                    );
                }
            }
            self.m.git_status_ms = Some(median(&v));
            eprintln!("git status -uall: {}", human_ms(median(&v)));
            self.git_clone_baseline()?;
        }
        flush_disk();
        eprintln!("rsync: initial copy …");
        let run = self.rsync.push(&self.repo.laptop)?;
        compare_trees(&self.repo.laptop, &self.rsync.dest).context("rsync initial copy")?;
        eprintln!(
            "rsync initial copy: {} and {}",
            human_ms(ms(run.elapsed)),
            human_bytes(run.bytes() as f64)
        );
        self.m.rsync_initial = Some(run);
        Ok(())
    }

    /// What git itself needs for the receiver's cold-start work: a shallow
    /// fetch of the base commit from the same origin, and its checkout into
    /// an empty worktree.
    fn git_clone_baseline(&mut self) -> anyhow::Result<()> {
        let dir = self.cfg.work.join("git-baseline");
        git(&self.cfg.work, &["init", "-q", "git-baseline"])?;
        flush_disk();
        let url = format!("file://{}", self.repo.origin.display());
        let t = Instant::now();
        git(
            &dir,
            &["fetch", "-q", "--depth", "1", &url, &self.repo.main_commit],
        )?;
        self.m.git_fetch_ms = Some(ms(t.elapsed()));
        flush_disk();
        let t = Instant::now();
        git(&dir, &["checkout", "-q", &self.repo.main_commit])?;
        self.m.git_checkout_ms = Some(ms(t.elapsed()));
        eprintln!(
            "git fetch --depth 1: {}, git checkout: {}",
            human_ms(self.m.git_fetch_ms.unwrap_or_default()),
            human_ms(self.m.git_checkout_ms.unwrap_or_default())
        );
        // Kept until the run ends: deleting 100k files here would slow down
        // file creation in the next steps (ext4 avoids reusing inodes
        // deleted in the last minute, and scans for free ones).
        Ok(())
    }

    // ---------------------------------------------------------------- devd

    fn devd_phase(&mut self) -> anyhow::Result<()> {
        let r = self.cold_start();
        if self.record(Scenario::ColdStart, r).is_none() {
            bail!("devd did not start; skipping the devd scenarios");
        }
        if self.on(Scenario::Idle) {
            let r = self.idle();
            self.record(Scenario::Idle, r);
        }
        if self.on(Scenario::Latency) {
            let r = self.latency_devd();
            self.record(Scenario::Latency, r);
        }
        if self.on(Scenario::Bytes) {
            let r = self.bytes_devd();
            self.record(Scenario::Bytes, r);
        }
        if self.on(Scenario::Bulk) {
            let r = self.bulk_devd();
            self.record(Scenario::Bulk, r);
        }
        if self.on(Scenario::Churn) {
            let r = self.churn_devd();
            self.record(Scenario::Churn, r);
        }
        Ok(())
    }

    fn cold_start(&mut self) -> anyhow::Result<()> {
        let home = self.cfg.work.join("devd-home");
        let mut d = Devd::new(&self.cfg.devd_bin, &home, &self.repo.laptop);
        eprintln!("devd: cold start …");
        flush_disk();
        let wall0 = SystemTime::now();
        let t0 = Instant::now();
        d.start()?;
        let started_ms = ms(t0.elapsed());
        // First acknowledged generation.
        let mut status;
        loop {
            status = d.status()?;
            if status["generation"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            if let Some(e) = status["last_error"].as_str() {
                eprintln!("   devd reports: {e}");
            }
            if t0.elapsed() > Duration::from_secs(900) {
                bail!("no acknowledged sync within 900 s: {status}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let cold = ms(t0.elapsed());
        self.receiver = d.receiver_worktree()?;
        self.devd = Some(d);
        let d = self.devd()?;
        // Correctness: the whole receiver worktree equals the laptop's.
        compare_trees(&self.repo.laptop, &self.receiver).context("after the cold start")?;
        let ls = &status["last_sync"];
        let bytes =
            ls["bytes_sent"].as_f64().unwrap_or(0.0) + ls["bytes_received"].as_f64().unwrap_or(0.0);
        let objects = d
            .state_dir()?
            .join("receiver/workspaces/local/repo.git/objects");
        let pack = dir_size(&objects);
        let log = std::fs::read_to_string(d.log_path()?).unwrap_or_default();
        let breakdown = log_breakdown(&log, wall0);
        eprintln!(
            "devd cold start: {} to the first applied sync ({} from the laptop; receiver fetched {} from origin)",
            human_ms(cold),
            human_bytes(bytes),
            human_bytes(pack as f64)
        );
        self.m.cold_ms = Some(cold);
        self.m.cold_bytes = Some(bytes);
        self.m.receiver_pack_bytes = Some(pack as f64);
        self.m.cold_breakdown = json!({
            "devd_start_returned_ms": started_ms,
            "first_ack_ms": cold,
            "last_scan": status["last_scan"],
            "last_sync": status["last_sync"],
            "log_ms_since_start": breakdown,
        });
        Ok(())
    }

    fn idle(&mut self) -> anyhow::Result<()> {
        let d = self.devd()?;
        let pid = d.pid()?;
        std::thread::sleep(Duration::from_secs(2));
        let g0 = d.generation()?;
        let (c0, _) = proc_cpu_ticks(pid)?;
        let t0 = Instant::now();
        eprintln!("devd: idle for {} s …", self.cfg.idle.as_secs());
        std::thread::sleep(self.cfg.idle);
        let (c1, _) = proc_cpu_ticks(pid)?;
        let secs = t0.elapsed().as_secs_f64();
        let g1 = d.generation()?;
        let cpu = (c1 - c0) as f64 / clock_ticks() as f64;
        let rss = proc_status_kb(pid, "VmRSS")? as f64;
        let hwm = proc_status_kb(pid, "VmHWM")? as f64;
        let anon = proc_status_kb(pid, "RssAnon").ok().map(|v| v as f64);
        let file = proc_status_kb(pid, "RssFile").ok().map(|v| v as f64);
        self.m.idle_rss_anon = anon;
        self.m.idle_rss_file = file;
        let pct = cpu / secs * 100.0;
        eprintln!(
            "devd idle: {pct:.3} % of one core, RSS {} (peak {})",
            human_bytes(rss),
            human_bytes(hwm)
        );
        self.m.idle_cpu_pct = Some(pct);
        self.m.idle_rss = Some(rss);
        self.results.details.insert(
            "idle".into(),
            json!({"window_s": secs, "cpu_s": cpu, "cpu_pct": pct, "rss_bytes": rss,
                   "rss_anon_bytes": anon, "rss_file_bytes": file,
                   "rss_peak_bytes": hwm, "syncs_during_idle": g1 - g0}),
        );
        if g1 != g0 {
            bail!("{} sync(s) happened while nothing changed", g1 - g0);
        }
        Ok(())
    }

    /// Edit a fresh small file; (relative path, new content), timer started.
    fn edit_small(&mut self, tag: &str) -> anyhow::Result<(String, Vec<u8>, Instant)> {
        let i = self.fresh_file();
        let rel = self.repo.spec.small_path(i);
        let p = self.repo.path(&rel);
        let new = one_line_edit(&std::fs::read(&p)?, tag);
        write_file(&p, &new)?;
        Ok((rel, new, Instant::now()))
    }

    fn latency_devd(&mut self) -> anyhow::Result<()> {
        flush_disk();
        eprintln!("devd: {} single-file edits …", self.cfg.devd_edits);
        let mut s = EditSamples::default();
        let mut scan_ms = Vec::new();
        let mut daemon_ms = Vec::new();
        for k in 0..self.cfg.devd_edits {
            self.spacing();
            let g0 = self.devd()?.generation()?;
            let (rel, new, t0) = self.edit_small(&format!("lat{k}"))?;
            let want = [(self.receiver.join(&rel), Some(new))];
            match wait_for(&want, t0, self.cfg.poll_interval, Duration::from_secs(30)) {
                Ok(d) => s.ms.push(ms(d)),
                Err(e) => {
                    s.failures.push(format!("edit {k} ({rel}): {e:#}"));
                    continue;
                }
            }
            let st = self.devd()?.wait_generation(g0, Duration::from_secs(30))?;
            if st["generation"].as_u64() == Some(g0 + 1) {
                let ls = &st["last_sync"];
                s.bytes.push(
                    ls["bytes_sent"].as_f64().unwrap_or(0.0)
                        + ls["bytes_received"].as_f64().unwrap_or(0.0),
                );
                daemon_ms.push(ls["latency_ms"].as_f64().unwrap_or(f64::NAN));
                scan_ms.push(st["last_scan"]["ms"].as_f64().unwrap_or(f64::NAN));
            }
        }
        let mut sorted = s.ms.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "devd edit → applied: p50 {} p95 {} max {} ({} failures)",
            human_ms(percentile(&sorted, 50.0)),
            human_ms(percentile(&sorted, 95.0)),
            human_ms(percentile(&sorted, 100.0)),
            s.failures.len()
        );
        self.results.details.insert(
            "latency_devd".into(),
            json!({"samples_ms": s.ms, "bytes": s.bytes, "daemon_latency_ms": daemon_ms,
                   "scan_ms": scan_ms, "failures": s.failures}),
        );
        let failures = s.failures.len();
        self.m.lat_devd = s;
        if failures > 0 {
            bail!("{failures} devd edits never reached the receiver (see details)");
        }
        Ok(())
    }

    /// Edit `rel` (a one-line edit), wait until applied, return the bytes
    /// of that one sync (`None` if it took more than one generation) and
    /// the size of `git diff | zstd` of the edit.
    fn devd_edit_bytes(&mut self, rel: &str, tag: &str) -> anyhow::Result<(Option<f64>, f64)> {
        let d = self.devd()?;
        let g0 = d.generation()?;
        let p = self.repo.path(rel);
        let new = one_line_edit(&std::fs::read(&p)?, tag);
        write_file(&p, &new)?;
        let t0 = Instant::now();
        wait_for(
            &[(self.receiver.join(rel), Some(new))],
            t0,
            self.cfg.poll_interval,
            Duration::from_secs(30),
        )?;
        let st = d.wait_generation(g0, Duration::from_secs(30))?;
        let ls = &st["last_sync"];
        let bytes = (st["generation"].as_u64() == Some(g0 + 1)).then(|| {
            ls["bytes_sent"].as_f64().unwrap_or(0.0) + ls["bytes_received"].as_f64().unwrap_or(0.0)
        });
        Ok((bytes, git_diff_zstd(&self.repo.laptop, rel)?))
    }

    fn bytes_devd(&mut self) -> anyhow::Result<()> {
        eprintln!("devd: bytes per edit …");
        let mut tries = 0;
        while self.m.bytes_devd_small.len() < self.cfg.bytes_small_samples {
            tries += 1;
            if tries > 4 * self.cfg.bytes_small_samples {
                bail!("edits kept taking more than one generation");
            }
            self.spacing();
            let i = self.fresh_file();
            let rel = self.repo.spec.small_path(i);
            let (b, g) = self.devd_edit_bytes(&rel, &format!("bytes{tries}"))?;
            if let Some(b) = b {
                self.m.bytes_devd_small.push(b);
                self.m.gitdiff_small.push(g);
            }
        }
        for k in 0..self.cfg.bytes_big_samples.min(BIG_FILES / 2) {
            self.spacing();
            let rel = self.repo.spec.big_path(k);
            let (b, g) = self.devd_edit_bytes(&rel, &format!("big{k}"))?;
            self.m.gitdiff_big.push(g);
            match b {
                Some(b) => self.m.bytes_devd_big.push(b),
                None => eprintln!("   edit of {rel} took more than one generation; not counted"),
            }
        }
        eprintln!(
            "devd bytes per one-line edit: 2 KB file {}, 1 MB file {}",
            human_bytes(median(&self.m.bytes_devd_small)),
            human_bytes(median(&self.m.bytes_devd_big))
        );
        if self.m.bytes_devd_big.is_empty() {
            bail!("no single-generation sample of a 1 MB file edit");
        }
        Ok(())
    }

    /// `n` fresh small files and 100 KB contents for them.
    fn bulk_set(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut r = Rng::derive(self.cfg.seed, 0xb01c);
        (0..self.cfg.bulk_files)
            .map(|k| {
                let i = self.fresh_file();
                let mut c =
                    repogen::source_text(&mut r, &format!("bulk{k}"), self.cfg.bulk_file_bytes);
                c.truncate(self.cfg.bulk_file_bytes);
                (self.repo.spec.small_path(i), c)
            })
            .collect()
    }

    fn bulk_devd(&mut self) -> anyhow::Result<()> {
        let set = self.bulk_set();
        let total: usize = set.iter().map(|(_, c)| c.len()).sum();
        eprintln!(
            "devd: bulk rewrite of {} files ({}) …",
            set.len(),
            human_bytes(total as f64)
        );
        self.devd()?.sync()?;
        flush_disk();
        let t_first = Instant::now();
        for (rel, c) in &set {
            write_file(&self.repo.path(rel), c)?;
        }
        let t_last = Instant::now();
        let want: Vec<Expect> = set
            .iter()
            .map(|(rel, c)| (self.receiver.join(rel), Some(c.clone())))
            .collect();
        let d = wait_for(
            &want,
            t_last,
            Duration::from_millis(2),
            Duration::from_secs(600),
        )?;
        let write_ms = ms(t_last - t_first);
        self.m.bulk_devd_ms = Some(ms(d));
        self.m.bulk_devd_from_first_ms = Some(ms(d) + write_ms);
        self.m.bulk_write_ms = Some(write_ms);
        self.results.details.insert(
            "bulk_set_files".into(),
            json!(set.iter().map(|(p, _)| p).collect::<Vec<_>>()),
        );
        self.bulk_files = set;
        eprintln!(
            "devd bulk: applied {} after the last write ({} after the first)",
            human_ms(ms(d)),
            human_ms(ms(d) + write_ms)
        );
        Ok(())
    }

    /// Restore `main` exactly (drop every modification); wait for devd.
    fn reset_worktree(&self) -> anyhow::Result<()> {
        let l = &self.repo.laptop;
        git(l, &["checkout", "-q", "-f", "main"])?;
        git(l, &["reset", "-q", "--hard"])?;
        git(l, &["clean", "-q", "-fdx"])?;
        Ok(())
    }

    fn churn_expect(&self, root: &Path, to_feature: bool) -> Vec<Expect> {
        let spec = &self.repo.spec;
        let originals: std::collections::HashMap<String, usize> =
            (0..spec.files).map(|i| (spec.small_path(i), i)).collect();
        spec.feature_changes()
            .into_iter()
            .map(|(rel, c)| {
                let want = if to_feature {
                    c
                } else {
                    originals.get(&rel).map(|&i| spec.small_content(i))
                };
                (root.join(rel), want)
            })
            .collect()
    }

    fn churn_devd(&mut self) -> anyhow::Result<()> {
        self.reset_worktree()?;
        self.devd()?.sync()?;
        compare_trees(&self.repo.laptop, &self.receiver).context("after resetting to main")?;
        for (k, (branch, to_feature)) in
            [("feature", true), ("main", false)].into_iter().enumerate()
        {
            eprintln!(
                "devd: git checkout {branch} ({} paths) …",
                self.repo.spec.churn_files
            );
            std::thread::sleep(Duration::from_millis(500));
            flush_disk();
            let want = self.churn_expect(&self.receiver, to_feature);
            let t0 = Instant::now();
            git(&self.repo.laptop, &["checkout", "-q", branch])?;
            let t1 = Instant::now();
            let d = wait_for(
                &want,
                t1,
                Duration::from_millis(2),
                Duration::from_secs(600),
            )?;
            self.m.churn_devd_ms[k] = Some(ms(d));
            self.m.churn_checkout_ms[k] = Some(ms(t1 - t0));
            eprintln!(
                "devd churn → {branch}: applied {} after checkout returned (checkout took {})",
                human_ms(ms(d)),
                human_ms(ms(t1 - t0))
            );
        }
        self.devd()?.sync()?;
        compare_trees(&self.repo.laptop, &self.receiver).context("after the churn")?;
        Ok(())
    }
}

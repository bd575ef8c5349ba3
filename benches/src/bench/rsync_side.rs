//! The rsync side of every scenario, run after devd has stopped, on the
//! same tree: the idle baseline (polling with `git status`), then edit
//! latency, bytes per edit, bulk rewrite and branch churn through an rsync
//! daemon on loopback. Each step ends with a check of the destination.

use super::*;

impl Bench {
    pub(super) fn rsync_phase(&mut self) -> anyhow::Result<()> {
        if self.on(Scenario::Idle) {
            let r = self.idle_baseline();
            self.record(Scenario::Idle, r);
        }
        if self.on(Scenario::Latency) {
            let r = self.latency_rsync();
            self.record(Scenario::Latency, r);
        }
        if self.on(Scenario::Bytes) {
            let r = self.bytes_rsync();
            self.record(Scenario::Bytes, r);
        }
        if self.on(Scenario::Bulk) {
            let r = self.bulk_rsync();
            self.record(Scenario::Bulk, r);
        }
        if self.on(Scenario::Churn) {
            let r = self.churn_rsync();
            self.record(Scenario::Churn, r);
        }
        Ok(())
    }

    /// CPU of polling for changes with `git status -uall` every 10 s.
    pub(super) fn idle_baseline(&mut self) -> anyhow::Result<()> {
        let me = std::process::id();
        let (_, c0) = proc_cpu_ticks(me)?;
        let t = Instant::now();
        for _ in 0..self.cfg.idle_poll_runs {
            git(&self.repo.laptop, &["status", "-uall", "--porcelain"])?;
        }
        let wall = t.elapsed().as_secs_f64() / self.cfg.idle_poll_runs as f64;
        let (_, c1) = proc_cpu_ticks(me)?;
        let per_run = (c1 - c0) as f64 / clock_ticks() as f64 / self.cfg.idle_poll_runs as f64;
        let pct = per_run / 10.0 * 100.0;
        self.m.idle_poll_cpu_pct = Some(pct);
        self.results.details.insert(
            "idle_baseline".into(),
            json!({"cpu_s_per_poll": per_run, "wall_s_per_poll": wall, "interval_s": 10, "cpu_pct": pct}),
        );
        Ok(())
    }

    pub(super) fn rsync_edit(&mut self, rel: &str, tag: &str) -> anyhow::Result<RsyncRun> {
        let p = self.repo.path(rel);
        let new = one_line_edit(&std::fs::read(&p)?, tag);
        write_file(&p, &new)?;
        let t0 = Instant::now();
        let mut run = self.rsync.push(&self.repo.laptop)?;
        run.elapsed = t0.elapsed();
        if std::fs::read(self.rsync.dest.join(rel)).ok().as_deref() != Some(&new[..]) {
            bail!("rsync exited but {rel} has the wrong content at the destination");
        }
        Ok(run)
    }

    pub(super) fn latency_rsync(&mut self) -> anyhow::Result<()> {
        self.rsync.push(&self.repo.laptop)?;
        flush_disk();
        eprintln!("rsync: {} single-file edits …", self.cfg.rsync_edits);
        let mut s = EditSamples::default();
        for k in 0..self.cfg.rsync_edits {
            self.spacing();
            let i = self.fresh_file();
            let rel = self.repo.spec.small_path(i);
            match self.rsync_edit(&rel, &format!("rlat{k}")) {
                Ok(run) => {
                    s.ms.push(ms(run.elapsed));
                    s.bytes.push(run.bytes() as f64);
                }
                Err(e) => s.failures.push(format!("edit {k}: {e:#}")),
            }
        }
        let mut sorted = s.ms.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "rsync edit → applied: p50 {} p95 {} max {}",
            human_ms(percentile(&sorted, 50.0)),
            human_ms(percentile(&sorted, 95.0)),
            human_ms(percentile(&sorted, 100.0))
        );
        self.results.details.insert(
            "latency_rsync".into(),
            json!({"samples_ms": s.ms, "bytes": s.bytes, "failures": s.failures}),
        );
        let failures = s.failures.len();
        self.m.lat_rsync = s;
        if failures > 0 {
            bail!("{failures} rsync edits failed");
        }
        Ok(())
    }

    pub(super) fn bytes_rsync(&mut self) -> anyhow::Result<()> {
        self.rsync.push(&self.repo.laptop)?;
        eprintln!("rsync: bytes per edit …");
        for k in 0..self.cfg.bytes_small_samples {
            let i = self.fresh_file();
            let rel = self.repo.spec.small_path(i);
            let run = self.rsync_edit(&rel, &format!("rbytes{k}"))?;
            self.m.bytes_rsync_small.push(run.bytes() as f64);
        }
        for k in 0..self.cfg.bytes_big_samples.min(BIG_FILES / 2) {
            let rel = self.repo.spec.big_path(BIG_FILES / 2 + k);
            let run = self.rsync_edit(&rel, &format!("rbig{k}"))?;
            self.m.bytes_rsync_big.push(run.bytes() as f64);
        }
        Ok(())
    }

    pub(super) fn bulk_rsync(&mut self) -> anyhow::Result<()> {
        let set = if self.bulk_files.is_empty() {
            self.bulk_set()
        } else {
            std::mem::take(&mut self.bulk_files)
        };
        // The destination holds `main` for these files again after a reset.
        for (rel, _) in &set {
            let i = self
                .repo
                .spec
                .small_index(rel)
                .context("bulk file is not a generated small file")?;
            write_file(&self.repo.path(rel), &self.repo.spec.small_content(i))?;
        }
        self.rsync.push(&self.repo.laptop)?;
        flush_disk();
        eprintln!("rsync: bulk rewrite of {} files …", set.len());
        for (rel, c) in &set {
            write_file(&self.repo.path(rel), c)?;
        }
        let t0 = Instant::now();
        let mut run = self.rsync.push(&self.repo.laptop)?;
        run.elapsed = t0.elapsed();
        let want: Vec<Expect> = set
            .iter()
            .map(|(rel, c)| (self.rsync.dest.join(rel), Some(c.clone())))
            .collect();
        wait_for(
            &want,
            Instant::now(),
            Duration::from_millis(1),
            Duration::ZERO,
        )
        .context("rsync bulk result")?;
        eprintln!(
            "rsync bulk: {} ({})",
            human_ms(ms(run.elapsed)),
            human_bytes(run.bytes() as f64)
        );
        self.m.bulk_rsync = Some(run);
        Ok(())
    }

    pub(super) fn churn_rsync(&mut self) -> anyhow::Result<()> {
        self.reset_worktree()?;
        self.rsync.push(&self.repo.laptop)?;
        for (k, (branch, to_feature)) in
            [("feature", true), ("main", false)].into_iter().enumerate()
        {
            eprintln!("rsync: git checkout {branch} …");
            flush_disk();
            git(&self.repo.laptop, &["checkout", "-q", branch])?;
            let t0 = Instant::now();
            let mut run = self.rsync.push(&self.repo.laptop)?;
            run.elapsed = t0.elapsed();
            let want = self.churn_expect(&self.rsync.dest, to_feature);
            wait_for(
                &want,
                Instant::now(),
                Duration::from_millis(1),
                Duration::ZERO,
            )
            .with_context(|| format!("rsync churn to {branch}"))?;
            eprintln!("rsync churn → {branch}: {}", human_ms(ms(run.elapsed)));
            self.m.churn_rsync[k] = Some(run);
        }
        compare_trees(&self.repo.laptop, &self.rsync.dest).context("rsync after the churn")?;
        Ok(())
    }
}

//! Driving the real `devd` binary: `start`, `status --json`, `sync --json`,
//! `stop`, with a private `DEVD_HOME`. The daemon runs in the background
//! exactly as a developer runs it, with its embedded receiver on loopback.

use crate::util::output;
use anyhow::{Context, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One daemon for one repository.
#[derive(Debug)]
pub struct Devd {
    bin: PathBuf,
    home: PathBuf,
    repo: PathBuf,
    running: bool,
}

impl Devd {
    /// A (not yet started) daemon for `repo` keeping its state in `home`.
    pub fn new(bin: &Path, home: &Path, repo: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            home: home.to_owned(),
            repo: repo.to_owned(),
            running: false,
        }
    }

    /// `DEVD_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-C")
            .arg(&self.repo)
            .env("DEVD_HOME", &self.home)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        c
    }

    /// `devd start` (returns once the control socket answers).
    pub fn start(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.home)?;
        output(self.cmd().arg("start")).context("devd start")?;
        self.running = true;
        Ok(())
    }

    /// `devd status --json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = output(self.cmd().args(["status", "--json"])).context("devd status")?;
        serde_json::from_str(out.trim()).with_context(|| format!("parsing devd status: {out}"))
    }

    /// `devd sync --json`: full scan, returns once the receiver applied it.
    pub fn sync(&self) -> anyhow::Result<Value> {
        let out = output(self.cmd().args(["sync", "--json"])).context("devd sync")?;
        serde_json::from_str(out.trim()).with_context(|| format!("parsing devd sync: {out}"))
    }

    /// The acknowledged generation.
    pub fn generation(&self) -> anyhow::Result<u64> {
        Ok(self.status()?["generation"].as_u64().unwrap_or(0))
    }

    /// Poll `status` until the acknowledged generation exceeds `after`;
    /// returns the status.
    pub fn wait_generation(&self, after: u64, timeout: Duration) -> anyhow::Result<Value> {
        let t = Instant::now();
        loop {
            let s = self.status()?;
            if s["generation"].as_u64().unwrap_or(0) > after {
                return Ok(s);
            }
            if t.elapsed() > timeout {
                bail!(
                    "devd did not acknowledge a generation after {after} within {timeout:?}: {s}"
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The receiver's materialized worktree.
    pub fn receiver_worktree(&self) -> anyhow::Result<PathBuf> {
        let s = self.status()?;
        s["receiver"]["worktree"]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("devd status has no receiver.worktree: {s}"))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let s = self.status()?;
        s["pid"]
            .as_u64()
            .map(|p| p as u32)
            .with_context(|| format!("devd status has no pid: {s}"))
    }

    /// The repository's state directory (`DEVD_HOME/repos/<name>-<hash>`).
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        let repos = self.home.join("repos");
        let mut dirs = std::fs::read_dir(&repos)
            .with_context(|| format!("listing {}", repos.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir());
        dirs.next()
            .with_context(|| format!("no repository state under {}", repos.display()))
    }

    /// The daemon log.
    pub fn log_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.state_dir()?.join("daemon.log"))
    }

    /// `devd stop`.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        output(self.cmd().arg("stop")).context("devd stop")?;
        Ok(())
    }
}

impl Drop for Devd {
    fn drop(&mut self) {
        if self.running {
            let pid = self.pid().ok();
            if self.stop().is_err()
                && let Some(pid) = pid
            {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

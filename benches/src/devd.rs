//! Driving the real `devd` binary: `start`, `status --json`, `sync --json`,
//! `stop`, with a private `DEVD_HOME`. The daemon runs in the background
//! exactly as a developer runs it, with its embedded receiver on loopback;
//! and, for scenario 7, a separate `devd-receiver serve` ([`Receiver`]).

use anyhow::{Context, bail};
use devd_testkit::output;
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
    env: Vec<(String, String)>,
    running: bool,
}

impl Devd {
    /// A (not yet started) daemon for `repo` keeping its state in `home`.
    pub fn new(bin: &Path, home: &Path, repo: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            home: home.to_owned(),
            repo: repo.to_owned(),
            env: Vec::new(),
            running: false,
        }
    }

    /// More environment for every `devd` command (and so for the daemon
    /// and its embedded receiver): e.g. the private container storage.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
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
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
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

    /// `devd ARGS…` in the repository (e.g. `prebuild`); its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        output(self.cmd().args(args)).with_context(|| format!("devd {}", args.join(" ")))
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

/// A separate `devd-receiver serve` (scenario 7's registry variant), with
/// its output in `data/receiver.{out,err}`; stopped (SIGTERM, then SIGKILL)
/// on drop.
#[derive(Debug)]
pub struct Receiver {
    child: std::process::Child,
    pairing: PathBuf,
}

impl Receiver {
    /// Start `devd-receiver serve` for one workspace on an ephemeral
    /// loopback port; returns once it listens and wrote the pairing file.
    pub fn start(
        bin: &Path,
        data: &Path,
        git_remote: &str,
        workspace: &str,
        config: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data)?;
        let (out, err) = (data.join("receiver.out"), data.join("receiver.err"));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--git-remote", git_remote])
            .args(["--workspace", workspace])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut rx = Self {
            child,
            pairing: data.join("workspaces").join(workspace).join("pairing.toml"),
        };
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.starts_with("listening on ") && rx.pairing.is_file() {
                return Ok(rx);
            }
            if let Ok(Some(st)) = rx.child.try_wait() {
                bail!(
                    "devd-receiver exited ({st}): {}",
                    std::fs::read_to_string(&err).unwrap_or_default().trim()
                );
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("devd-receiver did not listen and pair within 60 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `devd.local.toml` pointing the daemon at this receiver.
    pub fn local_config(&self) -> String {
        format!(
            "[receiver]\nmode = \"remote\"\npairing = {}\n",
            serde_json::to_string(&self.pairing.display().to_string()).unwrap_or_default()
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

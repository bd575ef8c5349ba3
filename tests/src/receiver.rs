//! A separate `devd-receiver serve` process.

use crate::process::{Logs, cmdline, tail};
use crate::repo::Fixture;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start a receiver.
#[derive(Clone, Debug)]
pub struct ReceiverOpts {
    /// `--workspace`.
    pub workspace: String,
    /// `--listen`.
    pub listen: String,
    /// `--data`; default `<fixture root>/rx`.
    pub data: Option<PathBuf>,
    /// Extra environment (failpoints).
    pub env: Vec<(String, String)>,
    /// `--git-remote`; default the fixture's origin.
    pub git_remote: Option<String>,
    /// `--config FILE`: the receiver's configuration (builds, backends).
    pub config: Option<PathBuf>,
    /// More arguments for `serve`.
    pub args: Vec<String>,
    /// A command the receiver runs under, e.g. `ip netns exec NS` (it
    /// must exec the receiver, so the process id stays the receiver's).
    pub wrap: Vec<String>,
}

impl Default for ReceiverOpts {
    fn default() -> Self {
        Self {
            workspace: "default".into(),
            listen: "127.0.0.1:0".into(),
            data: None,
            env: Vec::new(),
            git_remote: None,
            config: None,
            args: Vec::new(),
            wrap: Vec::new(),
        }
    }
}

/// The pairing file a receiver writes for a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pairing {
    pub address: String,
    pub fingerprint: String,
    pub token: String,
    pub workspace: String,
}

/// A running `devd-receiver serve`; killed on drop.
#[derive(Debug)]
pub struct Receiver<'a> {
    fx: &'a Fixture,
    child: Child,
    exit: Option<ExitStatus>,
    data: PathBuf,
    workspace: String,
    addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl<'a> Receiver<'a> {
    /// Start the receiver and wait for its `listening on` line and its
    /// pairing file.
    pub fn start(fx: &'a Fixture, opts: ReceiverOpts) -> Self {
        let data = opts.data.clone().unwrap_or_else(|| fx.root().join("rx"));
        std::fs::create_dir_all(&data).expect("create receiver data dir");
        let mut cmd = crate::bins::wrapped_command("devd-receiver", &opts.wrap);
        cmd.arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--listen", &opts.listen])
            .args([
                "--git-remote",
                &opts.git_remote.clone().unwrap_or_else(|| fx.origin_url()),
            ])
            .args(["--workspace", &opts.workspace])
            .args(&opts.args);
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let logs: &Logs = fx.logs();
        let (stdout, stderr) = logs.next_pair("receiver");
        let line = cmdline(&cmd);
        // Its own process group, so that killing it takes the podman and
        // buildah it started along: a `podman run` left behind by a killed
        // receiver started a container after the test's clean-up.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create receiver stdout log"))
            .stderr(File::create(&stderr).expect("create receiver stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));

        let started = Instant::now();
        let addr = loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(first) = out.lines().next().filter(|_| out.contains('\n')) {
                let addr = first
                    .strip_prefix("listening on ")
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    .unwrap_or_else(|| {
                        let _ = child.kill();
                        panic!("receiver's first stdout line is {first:?}, expected `listening on 127.0.0.1:PORT`\ncommand: {line}")
                    });
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "receiver exited ({status}) before printing `listening on`\ncommand: {line}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                    tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 100)
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("receiver printed no `listening on` line within 60 s\ncommand: {line}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rx = Self {
            fx,
            child,
            exit: None,
            data,
            workspace: opts.workspace,
            addr,
            stdout,
            stderr,
        };
        let pairing = rx.pairing_path();
        let found = crate::wait::poll_until(Duration::from_secs(30), || pairing.is_file());
        assert!(
            found.is_some(),
            "receiver wrote no pairing file at {}",
            pairing.display()
        );
        rx
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its memory from `/proc/PID/status`: (resident now, peak resident),
    /// in bytes (`VmRSS`, `VmHWM`).
    #[track_caller]
    pub fn memory(&self) -> (u64, u64) {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key} in {path}:\n{status}"))
                * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `--data`.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// The address of its HTTP server (`serve --http-listen`), from its
    /// `http on ADDR` line.
    #[track_caller]
    pub fn http_addr(&self) -> SocketAddr {
        let mut found = None;
        crate::wait::poll_until(Duration::from_secs(30), || {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            found = out
                .lines()
                .find_map(|l| l.strip_prefix("http on "))
                .and_then(|a| a.trim().parse().ok());
            found.is_some()
        });
        found.expect(
            "the receiver printed no `http on ADDR` line: was it started with --http-listen?",
        )
    }

    /// The workspace name.
    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    /// `DATA/workspaces/NAME`.
    pub fn workspace_dir(&self) -> PathBuf {
        self.data.join("workspaces").join(&self.workspace)
    }

    /// The materialized worktree, `DATA/workspaces/NAME/worktree`.
    pub fn worktree(&self) -> PathBuf {
        self.workspace_dir().join("worktree")
    }

    /// `DATA/workspaces/NAME/pairing.toml`.
    pub fn pairing_path(&self) -> PathBuf {
        self.workspace_dir().join("pairing.toml")
    }

    /// The parsed pairing file.
    pub fn pairing(&self) -> Pairing {
        let path = self.pairing_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}\n{text}", path.display()));
        let get = |k: &str| {
            table
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{} lacks string key {k:?}:\n{text}", path.display()))
                .to_owned()
        };
        Pairing {
            address: get("address"),
            fingerprint: get("fingerprint"),
            token: get("token"),
            workspace: get("workspace"),
        }
    }

    /// The `[receiver]` section of a `devd.toml` pointing at this receiver.
    pub fn config_toml(&self) -> String {
        format!(
            "[receiver]\nmode = \"remote\"\npairing = \"{}\"\n",
            self.pairing_path().display()
        )
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on receiver");
        }
        self.exit
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal (e.g. "TERM") with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// Kill the process and every tool it started (SIGKILL to its
    /// process group) and reap it.
    /// (The group also when the receiver itself has exited: a tool it
    /// left running is still in it.)
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// The receiver's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The fixture this receiver belongs to.
    pub fn fixture(&self) -> &'a Fixture {
        self.fx
    }
}

impl Drop for Receiver<'_> {
    /// Stopped as a user stops it (SIGTERM: it drains, and the
    /// containers it retires are removed by the time it exits), killed
    /// after 20 s. A receiver killed outright while its `podman rm` of a
    /// retired container ran left that container's process running with
    /// podman no longer listing it.
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.wait_exit(Duration::from_secs(20));
        }
        self.kill();
    }
}

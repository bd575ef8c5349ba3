//! Finding programs and running commands.
//!
//! [`run`] and [`spawn`] capture output to files, never to pipes: `devd
//! start` leaves a daemon behind that may inherit the descriptors, and a
//! pipe would then never reach end-of-file. [`output`] reads pipes, for
//! short commands that leave nothing behind (git, buildah, podman as the
//! benchmarks' manual baseline runs them).

use anyhow::{Context, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A directory of numbered log files, one pair per command.
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    counter: AtomicUsize,
}

impl Logs {
    /// Logs kept in `dir` (created).
    pub fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("create the log directory");
        Self {
            dir,
            counter: AtomicUsize::new(0),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fresh `(stdout, stderr)` paths for a command labelled `label`.
    pub fn next_pair(&self, label: &str) -> (PathBuf, PathBuf) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        (
            self.dir.join(format!("{n:03}-{label}.stdout")),
            self.dir.join(format!("{n:03}-{label}.stderr")),
        )
    }
}

/// The outcome of a finished (or timed-out) command.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    /// `None` when the command timed out and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Killed by us after the timeout.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// stdout and stderr together, for message checks.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// A readable account of the command and its output.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => format!("TIMED OUT after {:?} (killed)", self.elapsed),
        };
        format!(
            "command: {}\nstatus: {status} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            self.cmdline,
            self.elapsed,
            tail(&self.stdout, 200),
            tail(&self.stderr, 200)
        )
    }

    /// An error with the full account unless the command succeeded.
    pub fn check(&self) -> anyhow::Result<&Self> {
        if !self.success() {
            bail!("command failed\n{}", self.describe());
        }
        Ok(self)
    }

    /// Panic with the full account unless the command succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed\n{}", self.describe());
        self
    }
}

/// Run a command to completion with its output in pipes: stdout on
/// success, an error naming the command, its status, stderr (and the end
/// of stdout, if any) otherwise.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\n--- stdout ---\n{}", tail(stdout.trim(), 50))
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program` in `PATH`, else in the usual bin and sbin directories (runc
/// lives in /usr/sbin, which a non-root `PATH` often lacks).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The last `lines` lines of `s`.
pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    if all.len() <= lines {
        return s.to_owned();
    }
    format!(
        "[... {} lines cut ...]\n{}",
        all.len() - lines,
        all[all.len() - lines..].join("\n")
    )
}

/// Printable form of a command.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("   (in {})", dir.display()));
    }
    s
}

/// A command running in the background; killed on drop if still running.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    cmdline: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

/// Start `cmd` with stdin closed and output captured under `logs`; panics
/// if it cannot start.
pub fn spawn(cmd: &mut Command, logs: &Logs, label: &str) -> Background {
    try_spawn(cmd, logs, label).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`spawn`], with an error instead of a panic.
pub fn try_spawn(cmd: &mut Command, logs: &Logs, label: &str) -> anyhow::Result<Background> {
    let (stdout, stderr) = logs.next_pair(label);
    let line = cmdline(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).context("create stdout log")?)
        .stderr(File::create(&stderr).context("create stderr log")?)
        .spawn()
        .with_context(|| format!("cannot start {line}"))?;
    Ok(Background {
        child: Some(child),
        cmdline: line,
        stdout,
        stderr,
        started: Instant::now(),
    })
}

/// Run `cmd` to completion, killing it after `timeout`.
pub fn run(cmd: &mut Command, logs: &Logs, label: &str, timeout: Duration) -> Run {
    spawn(cmd, logs, label).wait(timeout)
}

impl Background {
    /// The files capturing stdout and stderr.
    pub fn log_paths(&self) -> (&Path, &Path) {
        (&self.stdout, &self.stderr)
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait for the command, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let mut child = self.child.take().expect("child present until waited");
        let status = loop {
            match child.try_wait().expect("try_wait") {
                Some(status) => break Some(status),
                None if self.started.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Run {
            cmdline: self.cmdline.clone(),
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

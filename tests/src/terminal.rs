//! A real terminal for tests of what devd draws: a private tmux server
//! (its own socket under the test's directory) running one shell in a
//! pane of a fixed size. Tests type with [`Tmux::send_line`] and read the
//! screen as a person sees it with [`Tmux::screen`] (tmux's
//! `capture-pane`: the text after the terminal interpreted every escape
//! sequence, so broken sequences show up as stray characters).

use crate::wait::poll_until;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Panic with the package to install unless `tmux` is present.
#[track_caller]
pub fn require_tmux() {
    let ok = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the terminal tests need tmux: apt-get install tmux (scripts/test.sh does this)"
    );
}

/// A tmux server with one window; killed on drop.
#[derive(Debug)]
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Start `shell_argv` (e.g. `bash --norc`) in a `cols`×`rows` pane in
    /// `cwd`, with exactly the environment `env` (plus `TERM`).
    pub fn start(
        dir: &Path,
        cols: u16,
        rows: u16,
        cwd: &Path,
        env: &[(&str, String)],
        shell_argv: &[&str],
    ) -> Self {
        require_tmux();
        std::fs::create_dir_all(dir).expect("tmux directory");
        let t = Self {
            socket: dir.join("tmux.sock"),
        };
        let mut cmd = t.tmux();
        cmd.args(["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .arg("-c")
            .arg(cwd)
            .arg("env")
            .arg("-i");
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg("TERM=xterm-256color").args(shell_argv);
        let out = cmd.output().expect("run tmux");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A pane that never resizes with a client.
        let _ = t
            .tmux()
            .args(["set-option", "-t", "t", "status", "off"])
            .output();
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// Type `text` and Enter.
    pub fn send_line(&self, text: &str) {
        self.send_keys(&["-l", text]);
        self.send_keys(&["Enter"]);
    }

    /// `tmux send-keys` with these arguments (e.g. `["C-c"]`).
    pub fn send_keys(&self, keys: &[&str]) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .output()
            .expect("tmux send-keys");
        assert!(out.status.success(), "tmux send-keys {keys:?} failed");
    }

    /// Make the pane `cols`×`rows`, as a person resizing the terminal
    /// window does (its program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) {
        let out = self
            .tmux()
            .args(["resize-window", "-t", "t", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .output()
            .expect("tmux resize-window");
        assert!(
            out.status.success(),
            "tmux resize-window failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The visible screen, one string per row, trailing spaces removed.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        assert!(out.status.success(), "tmux capture-pane failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until the screen satisfies `pred`; returns that screen. Panics
    /// with the last screen after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = poll_until(timeout, || {
            last = self.screen();
            pred(&last)
        });
        assert!(
            found.is_some(),
            "timed out after {timeout:?} waiting until {what}; the screen:\n{last}"
        );
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

//! The rsync baseline: an `rsync --daemon` on 127.0.0.1 with one writable
//! module, and `rsync -a --delete --stats` runs of the laptop worktree
//! (without `.git`, which devd never syncs either) into it.

use anyhow::{Context, bail};
use devd_testkit::{free_port, output};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running rsync daemon; stopped on drop.
#[derive(Debug)]
pub struct RsyncDaemon {
    child: Child,
    port: u16,
    /// The module's directory (the rsync "receiver worktree").
    pub dest: PathBuf,
}

/// One client run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RsyncRun {
    pub elapsed: Duration,
    /// "Total bytes sent" + "Total bytes received" of `--stats`.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl RsyncRun {
    /// Both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }
}

impl RsyncDaemon {
    /// Start a daemon serving an empty module under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let dest = dir.join("dest");
        std::fs::create_dir_all(&dest)?;
        let port = free_port()?;
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nlog file = {log}\npid file = {pid}\n\n[bench]\n    path = {dest}\n    read only = no\n    uid = root\n    gid = root\n",
                log = dir.join("rsyncd.log").display(),
                pid = dir.join("rsyncd.pid").display(),
                dest = dest.display()
            ),
        )?;
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg("--address=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rsync --daemon")?;
        let mut d = Self { child, port, dest };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = d.child.try_wait()? {
                bail!(
                    "rsync --daemon exited ({st}); see {}",
                    dir.join("rsyncd.log").display()
                );
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("rsync --daemon did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Give the first accept a moment; then do a no-op listing as a probe.
        output(Command::new("rsync").arg(format!("rsync://127.0.0.1:{}/", d.port)))
            .context("probing the rsync daemon")?;
        d.port = port;
        Ok(d)
    }

    /// `rsync -a --delete --stats --exclude=/.git SRC/ rsync://…/bench/`.
    pub fn push(&self, src: &Path) -> anyhow::Result<RsyncRun> {
        let t = Instant::now();
        let out = output(
            Command::new("rsync")
                .args(["-a", "--delete", "--stats", "--exclude=/.git"])
                .arg(format!("{}/", src.display()))
                .arg(format!("rsync://127.0.0.1:{}/bench/", self.port)),
        )?;
        let elapsed = t.elapsed();
        Ok(RsyncRun {
            elapsed,
            bytes_sent: stat(&out, "Total bytes sent")?,
            bytes_received: stat(&out, "Total bytes received")?,
        })
    }
}

fn stat(out: &str, key: &str) -> anyhow::Result<u64> {
    for l in out.lines() {
        if let Some(v) = l.strip_prefix(key).and_then(|v| v.strip_prefix(':')) {
            let digits: String = v.chars().filter(char::is_ascii_digit).collect();
            return digits
                .parse()
                .with_context(|| format!("parsing rsync --stats line {l:?}"));
        }
    }
    bail!("rsync --stats output lacks {key:?}:\n{out}")
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stats_with_thousands_separators() {
        let out = "Number of files: 3\nTotal bytes sent: 2,712,345\nTotal bytes received: 1,024\n";
        assert_eq!(stat(out, "Total bytes sent").unwrap(), 2_712_345);
        assert_eq!(stat(out, "Total bytes received").unwrap(), 1_024);
        assert!(stat(out, "Nope").is_err());
    }
}

//! Private container storage for scenario 7, and Debian's `docker-registry`
//! on loopback.
//!
//! - [`ContainerEnv`]: a `containers.conf` + `storage.conf` pair (runc,
//!   lowered ulimits, own graphroot/runroot/tmp_dir) that every buildah,
//!   podman and devd process of the scenario gets through
//!   `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF`, so the run never touches
//!   the machine's images or containers. Dropping it removes every container
//!   and buildah working container, waits for conmon to go, unmounts what is
//!   left below it and deletes the storage — on success, on error and on
//!   panic alike.
//! - [`Registry`]: `docker-registry serve` on a free loopback port, killed
//!   on drop.
//!
//! Nothing can be pulled on these machines: [`ContainerEnv::build_busybox_base`]
//! builds the demo's base image `docker.io/library/busybox:stable` from
//! Debian's static busybox.

use crate::util::{http_get, output};
use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo's base image, built locally.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:stable";
const BUSYBOX_BIN: &str = "/bin/busybox";

/// What to install for scenario 7.
pub const PACKAGES: &str = "runc buildah podman docker-registry busybox-static";

/// `program` in `PATH` or the sbin directories (runc lives in /usr/sbin).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Check the container tools; the error says what to install.
pub fn check_tools(registry: bool) -> anyhow::Result<()> {
    let mut want = vec!["buildah", "podman", "runc", "conmon"];
    if registry {
        want.push("docker-registry");
    }
    let mut missing: Vec<&str> = want
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !Path::new(BUSYBOX_BIN).is_file() {
        missing.push(BUSYBOX_BIN);
    }
    if !missing.is_empty() {
        bail!(
            "scenario 7 (deploy) needs {}: install them with \
             `apt-get install --no-install-recommends {PACKAGES}`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Private buildah/podman configuration and storage under `dir`.
#[derive(Debug)]
pub struct ContainerEnv {
    dir: PathBuf,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
}

impl ContainerEnv {
    /// Write the two configuration files under `dir` (created).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let q = |sub: &str| serde_json::to_string(&dir.join(sub).display().to_string());
        // runc: crun fails on this kernel's hybrid cgroups. The ulimits: the
        // inherited limits are too high for runc to set in a container.
        // tmp_dir: podman's default /run/libpod would be shared.
        let containers_conf = dir.join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "# devd-benches: private to one run\n[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\nruntime = \"runc\"\ntmp_dir = {}\n",
                q("tmp")?
            ),
        )?;
        let storage_conf = dir.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "# devd-benches: private to one run\n[storage]\ndriver = \"overlay\"\n\
                 graphroot = {}\nrunroot = {}\n",
                q("storage")?,
                q("run")?
            ),
        )?;
        Ok(Self {
            dir,
            containers_conf,
            storage_conf,
        })
    }

    /// `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        vec![
            ("CONTAINERS_CONF".into(), self.containers_conf.clone()),
            ("CONTAINERS_STORAGE_CONF".into(), self.storage_conf.clone()),
        ]
    }

    /// `program` with [`Self::env`].
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// Run `program args…` here; stdout, or an error with stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        output(self.command(program).args(args))
    }

    /// Build [`BUSYBOX_IMAGE`] from `/bin/busybox` (`FROM scratch`, the
    /// binary, its applet links; `--timestamp 0`: reproducible).
    pub fn build_busybox_base(&self) -> anyhow::Result<()> {
        let ctx = self.dir.join("busybox-base");
        std::fs::create_dir_all(ctx.join("bin"))?;
        std::fs::copy(BUSYBOX_BIN, ctx.join("bin/busybox"))
            .with_context(|| format!("copying {BUSYBOX_BIN}"))?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY bin/busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )?;
        let ctx = ctx.display().to_string();
        self.run(
            "buildah",
            &[
                "bud",
                "--quiet",
                "--isolation",
                "chroot",
                "--timestamp",
                "0",
                "-t",
                BUSYBOX_IMAGE,
                &ctx,
            ],
        )
        .context("building the busybox base image")?;
        Ok(())
    }

    /// Names of the containers (any state) carrying every label `k=v`.
    pub fn containers_with(&self, labels: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let mut c = self.command("podman");
        c.args(["ps", "-a", "--format", "{{.Names}}"]);
        for (k, v) in labels {
            c.arg("--filter").arg(format!("label={k}={v}"));
        }
        Ok(output(&mut c)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Remove containers by name (`podman rm -f -t 0`).
    pub fn remove(&self, names: &[String]) -> anyhow::Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let mut c = self.command("podman");
        c.args(["rm", "-f", "-t", "0"]).args(names);
        output(&mut c)?;
        Ok(())
    }

    /// Run a cleanup command: bounded time, never fails.
    fn quiet(&self, program: &str, args: &[&str]) {
        let Ok(mut child) = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return;
        };
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        let mut err = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            let _ = std::io::Read::read_to_string(&mut e, &mut err);
                        }
                        eprintln!("cleanup: {program} {args:?}: {st}: {}", err.trim());
                    }
                    return;
                }
                Ok(None) if t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("cleanup: {program} {args:?} timed out");
                    return;
                }
            }
        }
    }

    /// Remove every container and working container, wait for conmon and
    /// podman's cleanup processes, unmount leftovers, delete the storage.
    pub fn cleanup(&self) {
        if !self.storage_conf.exists() {
            return;
        }
        self.quiet("podman", &["rm", "-a", "-f", "-t", "0"]);
        self.quiet("buildah", &["rm", "--all"]);
        let needle = self.dir.display().to_string();
        let t = Instant::now();
        while !processes_mentioning(&needle).is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = processes_mentioning(&needle);
        if !left.is_empty() {
            eprintln!("cleanup: processes still using {needle}: {left:?}");
        }
        let mut mounts = mounts_below(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            eprintln!(
                "cleanup: {} was still mounted{}",
                m.display(),
                if ok { "; unmounted" } else { "; umount failed" }
            );
        }
        for sub in ["storage", "run", "tmp", "busybox-base"] {
            let p = self.dir.join(sub);
            if p.exists()
                && let Err(e) = std::fs::remove_dir_all(&p)
            {
                eprintln!("cleanup: cannot remove {}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_file(&self.storage_conf);
    }
}

impl Drop for ContainerEnv {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Pids (other than ours) whose command line mentions `needle`: conmon and
/// its `podman container cleanup` exit command name the storage paths.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Mount points at or below `dir` in this mount namespace.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A free loopback port (a race with other processes is possible; callers
/// retry or fail with the reason).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Debian's `docker-registry` on 127.0.0.1, data under `dir`; killed on drop.
#[derive(Debug)]
pub struct Registry {
    addr: String,
    child: Child,
}

impl Registry {
    /// Start it and wait (up to 20 s) until `GET /v2/` answers `{}`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let mut failures = Vec::new();
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    data.display()
                ),
            )?;
            let log = dir.join(format!("registry-{attempt}.log"));
            let child = Command::new(find_program("docker-registry").context("docker-registry")?)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(
                    dir.join(format!("registry-{attempt}.err")),
                )?)
                .spawn()
                .context("starting docker-registry")?;
            let mut reg = Self { addr, child };
            let t = Instant::now();
            loop {
                let text = format!(
                    "{}{}",
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(dir.join(format!("registry-{attempt}.err")))
                        .unwrap_or_default()
                );
                if let Ok(Some(st)) = reg.child.try_wait() {
                    if text.contains("address already in use") {
                        failures.push(format!("{}: address in use", reg.addr));
                        break;
                    }
                    bail!("docker-registry exited ({st}): {}", text.trim());
                }
                // Our own `listening on` line first: the answer to /v2/
                // must not come from another process that got the port.
                if text.contains("listening on")
                    && let Ok((200, body)) =
                        http_get(&format!("http://{}/v2/", reg.addr), Duration::from_secs(2))
                    && body.trim() == "{}"
                {
                    return Ok(reg);
                }
                if t.elapsed() > Duration::from_secs(20) {
                    bail!(
                        "docker-registry on {} did not answer within 20 s: {}",
                        reg.addr,
                        text.trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!(
            "docker-registry could not bind a port: {}",
            failures.join("; ")
        )
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }
}

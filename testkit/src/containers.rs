//! Real image builds, a real registry and real containers, private to one
//! test or one benchmark run.
//!
//! - [`ContainerEnv`]: a `storage.conf` and a `containers.conf` giving
//!   buildah and podman (and every devd process started with
//!   [`ContainerEnv::env`]) their own image storage, run directory,
//!   podman state and network configuration, so runs never see each
//!   other's images, containers or networks, nor the machine's. devd's processes get nothing else: no runtime, no
//!   limits, so the tests prove that devd finds by itself what podman
//!   needs on the machine. The fixture's own `podman run`s (tests that run
//!   an image by hand) use a second file that also sets runc and lowered
//!   limits. Dropping it removes every container and buildah working
//!   container and leaves no mount behind, so its directory can be deleted
//!   (on success, on error and on panic alike).
//! - [`Registry`]: Debian's `docker-registry` on a free loopback port
//!   (127.0.0.1), killed on drop.
//!
//! No base image can be pulled on these machines: [`ContainerEnv::build_busybox_base`]
//! builds [`BUSYBOX_IMAGE`] from Debian's `busybox-static`, and the test
//! and demo images are `FROM` it.

use crate::process::{self, Logs, Run, find_program};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The base image of the test and demo images, built locally by
/// [`ContainerEnv::build_busybox_base`].
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:stable";

/// The Debian packages the container fixtures need (as root; `uidmap`,
/// `golang-github-containers-common` with the CNI plugins and `iptables`,
/// and `conmon` come as dependencies). `runc` is named because podman
/// depends on `crun | runc` and crun fails on this kernel's hybrid cgroups.
pub const CONTAINER_PACKAGES: &str = "runc buildah podman docker-registry busybox-static catatonit";

const BUSYBOX_BIN: &str = "/bin/busybox";

/// What is missing of buildah, podman, runc, conmon, `/bin/busybox` and,
/// with `registry`, docker-registry.
pub fn missing_container_tools(registry: bool) -> Vec<&'static str> {
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
    missing
}

/// An error naming what is missing and the packages to install, unless
/// the container tools (with `registry`, docker-registry too) are present.
pub fn check_container_tools(registry: bool) -> Result<()> {
    let missing = missing_container_tools(registry);
    if !missing.is_empty() {
        bail!(
            "missing container tools: {}; install them with \
             `apt-get install --no-install-recommends {CONTAINER_PACKAGES}`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Panic with the packages to install unless buildah, podman, runc,
/// docker-registry and `/bin/busybox` are all present.
#[track_caller]
pub fn require_container_tools() {
    let missing = missing_container_tools(true);
    assert!(
        missing.is_empty(),
        "the container tests need buildah, podman, runc, docker-registry and a static busybox; \
         missing: {}.\nInstall them with\n    apt-get install --no-install-recommends {CONTAINER_PACKAGES}\n\
         (scripts/test.sh does this).",
        missing.join(", ")
    );
}

/// Private buildah/podman configuration and storage in one directory.
/// Cleaned up on drop (never panics there).
#[derive(Debug)]
pub struct ContainerEnv {
    dir: PathBuf,
    /// What devd's processes get ([`Self::env`]): podman's run state.
    containers_conf: PathBuf,
    /// What the fixture's own commands get ([`Self::command`]): the same,
    /// plus runc and limits every runtime accepts.
    testkit_conf: PathBuf,
    storage_conf: PathBuf,
    logs: Logs,
    /// Delete the image storage on drop, not only unmount it.
    delete_storage: bool,
}

/// One container as `podman ps -a` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub names: Vec<String>,
    /// The image as given to `podman run` (name or `repo@sha256:…`).
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    /// `running`, `exited`, `created`, …
    pub state: String,
    pub ports: Vec<PortMapping>,
}

/// A published port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

impl ContainerInfo {
    /// The first name (podman gives every container exactly one).
    pub fn name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or("")
    }

    /// The host port published for `container_port`.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.container_port == container_port)
            .map(|p| p.host_port)
    }
}

impl ContainerEnv {
    /// For a test: the configuration and storage under `<root>/containers/`,
    /// left on disk at drop for the test's temporary directory to remove
    /// (or to keep for a post-mortem). Panics (naming the packages) if the
    /// tools are missing, or with what failed.
    #[track_caller]
    pub fn new(root: &Path) -> Self {
        require_container_tools();
        let mut env = Self::in_dir(&root.join("containers"))
            .unwrap_or_else(|e| panic!("container environment under {}: {e:#}", root.display()));
        env.delete_storage = false;
        env
    }

    /// For a benchmark run: the configuration and storage in `dir`
    /// (created), the storage deleted on drop, as `dir` may outlive the
    /// run. The caller checks the tools first ([`check_container_tools`]).
    pub fn in_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("canonicalize {}", dir.display()))?;
        let q = |sub: &str| toml::Value::String(dir.join(sub).display().to_string()).to_string();
        // tmp_dir: podman's default /run/libpod (exit files, events, the
        // "alive" marker) would be shared between runs; podman refuses a
        // storage used with another tmp_dir, so both files set the same.
        let containers_conf = dir.join("containers.conf");
        write(
            &containers_conf,
            &format!(
                "# devd-testkit: private to one test or benchmark run; devd finds the\n\
                 # runtime and the limits podman needs by itself\n\
                 [engine]\n\
                 tmp_dir = {}\n\
                 [network]\n\
                 network_config_dir = {}\n",
                q("tmp"),
                q("cni")
            ),
        )?;
        // The fixture's own runs: runc (crun fails on hybrid cgroups) and
        // limits below the hard limits (podman asks for more than a
        // process without CAP_SYS_RESOURCE may set).
        let testkit_conf = dir.join("containers-testkit.conf");
        write(
            &testkit_conf,
            &format!(
                "# devd-testkit: the fixture's own podman runs\n\
                 [containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 tmp_dir = {}\n\
                 [network]\n\
                 network_config_dir = {}\n",
                q("tmp"),
                q("cni")
            ),
        )?;
        let storage_conf = dir.join("storage.conf");
        write(
            &storage_conf,
            &format!(
                "# devd-testkit: private to one test or benchmark run\n\
                 [storage]\n\
                 driver = \"overlay\"\n\
                 graphroot = {}\n\
                 runroot = {}\n",
                q("storage"),
                q("run")
            ),
        )?;
        // podman's networks (CNI configuration) are machine-wide unless
        // configured: a test's (a devd stack's) stay private to it.
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).with_context(|| format!("create {}", cni.display()))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        Ok(Self {
            logs: Logs::new(logs),
            dir,
            containers_conf,
            testkit_conf,
            storage_conf,
            delete_storage: true,
        })
    }

    /// The directory holding the configuration and storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the commands run through this environment log their output.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`, for every devd
    /// process that runs buildah or podman (devd, devd-receiver): the
    /// storage and podman's run state, nothing that makes containers
    /// start (devd's local backend finds that out itself).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_conf(&self.containers_conf)
    }

    /// [`Self::env`] with `engine` (TOML lines of containers.conf's
    /// `[engine]` table, then any further tables) added to the
    /// configuration: a user's setup that devd must cope with, e.g. a
    /// default runtime that is not installed. Written as `name.conf`.
    pub fn env_with_engine(&self, name: &str, engine: &str) -> Result<Vec<(String, String)>> {
        let path = self.dir.join(format!("{name}.conf"));
        let tmp = toml::Value::String(self.dir.join("tmp").display().to_string());
        let network = if engine.contains("[network]") {
            String::new()
        } else {
            let cni = toml::Value::String(self.dir.join("cni").display().to_string());
            format!("[network]\nnetwork_config_dir = {cni}\n")
        };
        write(
            &path,
            &format!("# devd-testkit: {name}\n{network}[engine]\ntmp_dir = {tmp}\n{engine}\n"),
        )?;
        Ok(self.env_with_conf(&path))
    }

    fn env_with_conf(&self, conf: &Path) -> Vec<(String, String)> {
        vec![
            ("CONTAINERS_CONF".into(), conf.display().to_string()),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.storage_conf.display().to_string(),
            ),
        ]
    }

    /// `program` in this storage, configured for the fixture's own runs
    /// (runc, lowered limits), not devd's ([`Self::env`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env_with_conf(&self.testkit_conf));
        cmd
    }

    /// Run `program args…` in this environment (output in [`Self::logs`]).
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Run {
        let mut cmd = self.command(program);
        cmd.args(args);
        process::run(&mut cmd, &self.logs, program, timeout)
    }

    /// Run `program args…` in this environment with its output in pipes
    /// ([`process::output`]): stdout, or an error with stderr.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        process::output(self.command(program).args(args))
    }

    /// Build [`BUSYBOX_IMAGE`] from `/bin/busybox` into this storage:
    /// `FROM scratch`, the binary, its applet symlinks. `--timestamp 0`
    /// makes it reproducible: the same image ID every time. Panics with
    /// the build's output if it fails.
    #[track_caller]
    pub fn build_busybox_base(&self) {
        if let Err(e) = self.try_build_busybox_base() {
            panic!("{e:#}");
        }
    }

    /// [`Self::build_busybox_base`], with an error instead of a panic.
    pub fn try_build_busybox_base(&self) -> Result<()> {
        if !Path::new(BUSYBOX_BIN).is_file() {
            bail!(
                "{BUSYBOX_BIN} is missing: the busybox base image is built from Debian's static \
                 busybox; install it with `apt-get install busybox-static`"
            );
        }
        let ctx = self.dir.join("busybox-base");
        let bin = ctx.join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("create {}", bin.display()))?;
        std::fs::copy(BUSYBOX_BIN, bin.join("busybox"))
            .with_context(|| format!("copy {BUSYBOX_BIN}"))?;
        write(
            &ctx.join("Dockerfile"),
            "FROM scratch\n\
             COPY bin/busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )?;
        let ctx = ctx.display().to_string();
        self.run(
            "buildah",
            &[
                "bud",
                "--isolation",
                "chroot",
                "--timestamp",
                "0",
                "-t",
                BUSYBOX_IMAGE,
                &ctx,
            ],
            Duration::from_secs(120),
        )
        .check()
        .context("building the busybox base image")?;
        Ok(())
    }

    /// Every container of this storage (`podman ps -a`), running or not.
    #[track_caller]
    pub fn podman_ps(&self) -> Vec<ContainerInfo> {
        let run = self.run(
            "podman",
            &["ps", "-a", "--format", "json"],
            Duration::from_secs(60),
        );
        run.assert_success();
        parse_podman_ps(&run.stdout)
            .unwrap_or_else(|e| panic!("cannot parse `podman ps` output: {e:#}\n{}", run.stdout))
    }

    /// Names of the containers (any state) carrying every label `k=v`.
    pub fn containers_with(&self, labels: &[(&str, &str)]) -> Result<Vec<String>> {
        let mut c = self.command("podman");
        c.args(["ps", "-a", "--format", "{{.Names}}"]);
        for (k, v) in labels {
            c.arg("--filter").arg(format!("label={k}={v}"));
        }
        Ok(process::output(&mut c)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Remove containers by name (`podman rm -f -t 0`).
    pub fn remove(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let mut c = self.command("podman");
        c.args(["rm", "-f", "-t", "0"]).args(names);
        process::output(&mut c)?;
        Ok(())
    }

    /// Print every container and the last lines of its log (for a failing
    /// test).
    pub fn dump(&self) {
        let Some(out) = self.quiet("podman", &["ps", "-a", "--format", "json"]) else {
            return;
        };
        let Ok(list) = parse_podman_ps(&out) else {
            eprintln!("----- podman ps -a -----\n{out}");
            return;
        };
        eprintln!("===== containers of {} =====", self.dir.display());
        for c in list {
            eprintln!(
                "----- container {} ({}, image {}, ports {:?}) -----",
                c.name(),
                c.state,
                c.image,
                c.ports
                    .iter()
                    .map(|p| format!("{}:{}->{}", p.host_ip, p.host_port, p.container_port))
                    .collect::<Vec<_>>()
            );
            if let Some(log) = self.quiet("podman", &["logs", "--tail", "50", &c.id]) {
                eprintln!("{log}");
            }
        }
    }

    /// Run a cleanup command: no panic, bounded time, stdout on success.
    fn quiet(&self, program: &str, args: &[&str]) -> Option<String> {
        let out = self.dir.join("cleanup.out");
        let err = self.dir.join("cleanup.err");
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).ok()?)
            .stderr(std::fs::File::create(&err).ok()?)
            .spawn()
            .ok()?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("devd-testkit cleanup: {program} {args:?} timed out");
                    return None;
                }
            }
        };
        if !status.success() {
            eprintln!(
                "devd-testkit cleanup: {program} {args:?}: {status}\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            return None;
        }
        std::fs::read_to_string(&out).ok()
    }

    /// Remove every container and buildah working container, wait for
    /// conmon and podman cleanup processes of this storage to go away,
    /// unmount whatever is still mounted below [`Self::dir`], and (for a
    /// benchmark run) delete the storage.
    fn cleanup(&self) {
        if !self.storage_conf.exists() {
            return;
        }
        // A receiver killed mid-deploy leaves its `podman run` child
        // running: the container it starts appears after a first `rm -a`.
        // Remove until none has been seen for a second (a deploy takes
        // well under that), at most eight rounds.
        let mut quiet_rounds = 0;
        for _ in 0..8 {
            self.quiet("podman", &["rm", "-a", "-f", "-t", "0"]);
            std::thread::sleep(Duration::from_millis(500));
            match self.quiet("podman", &["ps", "-a", "-q"]) {
                Some(ids) if !ids.trim().is_empty() => quiet_rounds = 0,
                _ => quiet_rounds += 1,
            }
            if quiet_rounds == 2 {
                break;
            }
        }
        self.quiet("buildah", &["rm", "--all"]);
        // Networks (a devd stack's): their bridges and address leases are
        // the host's, outside this directory.
        if let Some(nets) = self.quiet("podman", &["network", "ls", "--format", "{{.Name}}"]) {
            for net in nets
                .lines()
                .map(str::trim)
                .filter(|n| !n.is_empty() && *n != "podman")
            {
                let bridge = self
                    .quiet(
                        "podman",
                        &[
                            "network",
                            "inspect",
                            "--format",
                            "{{.NetworkInterface}}",
                            net,
                        ],
                    )
                    .unwrap_or_default();
                self.quiet("podman", &["network", "rm", "-f", net]);
                let bridge = bridge.trim();
                if !bridge.is_empty() && Path::new("/sys/class/net").join(bridge).exists() {
                    let _ = Command::new("ip")
                        .args(["link", "delete", bridge])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                let leases = Path::new("/var/lib/cni/networks").join(net);
                if leases.is_dir() {
                    let _ = std::fs::remove_dir_all(leases);
                }
            }
        }
        let dir = self.dir.display().to_string();
        let started = Instant::now();
        while !processes_mentioning(&dir).is_empty() && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = processes_mentioning(&dir);
        if !left.is_empty() {
            eprintln!("devd-testkit cleanup: processes still using {dir}: {left:?}");
        }
        let mut mounts = mounts_below(&self.dir);
        // Deepest first.
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
                "devd-testkit cleanup: {} was still mounted{}",
                m.display(),
                if ok {
                    "; unmounted"
                } else {
                    " and umount failed"
                }
            );
        }
        if self.delete_storage {
            for sub in ["storage", "run", "tmp", "busybox-base"] {
                let p = self.dir.join(sub);
                if p.exists()
                    && let Err(e) = std::fs::remove_dir_all(&p)
                {
                    eprintln!("devd-testkit cleanup: cannot remove {}: {e}", p.display());
                }
            }
            let _ = std::fs::remove_file(&self.storage_conf);
        }
    }
}

impl Drop for ContainerEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        self.cleanup();
    }
}

pub(crate) fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))
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

fn parse_podman_ps(json: &str) -> Result<Vec<ContainerInfo>> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(json.trim()).context("not JSON")?;
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let list = match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => bail!("expected an array, got {other}"),
    };
    list.iter()
        .map(|c| {
            let names = c
                .get("Names")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let labels = c
                .get("Labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let ports = c
                .get("Ports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let port = |k: &str| {
                                p.get(k)
                                    .and_then(Value::as_u64)
                                    .and_then(|n| u16::try_from(n).ok())
                                    .with_context(|| format!("port field {k} in {p}"))
                            };
                            Ok(PortMapping {
                                host_ip: str_of(p, "host_ip"),
                                host_port: port("host_port")?,
                                container_port: port("container_port")?,
                                protocol: str_of(p, "protocol"),
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?
                .unwrap_or_default();
            Ok(ContainerInfo {
                id: str_of(c, "Id"),
                names,
                image: str_of(c, "Image"),
                image_id: str_of(c, "ImageID"),
                labels,
                state: str_of(c, "State"),
                ports,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_ps() {
        let json = r#"[{"Id":"ad55","Image":"localhost/app:1","ImageID":"bbd5",
            "Labels":{"io.buildah.version":"1.28.2"},"Names":["app1"],
            "Ports":[{"host_ip":"127.0.0.1","container_port":8080,"host_port":18080,"range":1,"protocol":"tcp"}],
            "State":"running"},
            {"Id":"b","Image":"x","Labels":null,"Names":["two"],"Ports":null,"State":"exited"}]"#;
        let list = parse_podman_ps(json).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name(), "app1");
        assert_eq!(list[0].host_port(8080), Some(18080));
        assert_eq!(list[0].labels["io.buildah.version"], "1.28.2");
        assert_eq!(list[1].state, "exited");
        assert!(list[1].ports.is_empty() && list[1].labels.is_empty());
        assert!(parse_podman_ps("[]\n").unwrap().is_empty());
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }
}

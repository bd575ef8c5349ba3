//! How podman must be invoked to start a container on this machine, and
//! what to tell the user when a container cannot start.
//!
//! podman's defaults do not work everywhere. On machines like the ones devd
//! is built on (themselves containers, without `CAP_SYS_RESOURCE`, with
//! cgroup v1 and a cgroup2 hierarchy mounted beside it):
//! - podman 4 (as root) gives every container open-file and process limits
//!   of 1048576, above the hard limits this process may raise to, and the
//!   runtime fails: `error setting rlimits for ready process: … operation
//!   not permitted`;
//! - crun refuses the hybrid cgroup layout (`cgroups in hybrid mode not
//!   supported`), where runc works.
//!
//! A user cannot be expected to know that and write a `containers.conf`,
//! and devd must not edit theirs. So the backend finds out once, with a
//! probe, what works here and passes it on podman's own command line:
//! `--runtime` on every podman command (podman refuses to do anything,
//! even `podman ps`, when its default runtime is not installed), and
//! `--ulimit` on those that start containers. The user's configuration
//! stays in force for everything else, and where podman's defaults work
//! nothing is added.
//!
//! The probe needs no image: `podman run --rootfs EMPTY_DIR /devd-probe`
//! goes through everything that starts a container (runtime, cgroups,
//! limits) up to the `exec` of `/devd-probe`, which does not exist. That
//! error is the probe's success; any earlier one is what must change.

use super::Failure;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

/// Label on the probe containers (run with `--rm`, gone when it ends).
pub const LABEL_PROBE: &str = "dev.devd.probe";

/// The command the probe asks the runtime to execute; it does not exist.
const PROBE_COMMAND: &str = "/devd-probe";

/// What the commands that start containers add to podman's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodmanSetup {
    /// `podman --runtime NAME`: podman's default runtime cannot start
    /// containers here and this one can.
    pub runtime: Option<String>,
    /// `podman run --ulimit TYPE=SOFT:HARD`: the limits podman would give
    /// a container are refused here, and these are not.
    pub ulimits: Vec<String>,
}

impl PodmanSetup {
    /// `podman` with the global options (the runtime).
    /// Killed if the task awaiting it is dropped (a receiver stopping
    /// past its drain), so no `podman run` outlives the receiver to start
    /// a container nobody tracks. Not a `podman rm` (callers opt out): one
    /// killed half-way leaves the container's process running with podman
    /// no longer listing it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.kill_on_drop(true);
        if let Some(r) = &self.runtime {
            cmd.arg("--runtime").arg(r);
        }
        cmd
    }

    /// `podman run` with the global options and the limits.
    pub fn run_command(&self) -> Command {
        let mut cmd = self.command();
        cmd.arg("run");
        for u in &self.ulimits {
            cmd.arg("--ulimit").arg(u);
        }
        cmd
    }

    /// What was added, for the log (`podman defaults` when nothing).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.runtime {
            parts.push(format!("--runtime {r}"));
        }
        for u in &self.ulimits {
            parts.push(format!("--ulimit {u}"));
        }
        if parts.is_empty() {
            "podman's defaults".to_owned()
        } else {
            parts.join(" ")
        }
    }

    /// Find what podman needs here to start a container: podman's
    /// defaults first, then lower limits, then runc instead of the default
    /// runtime. `dir` holds the probe's empty root filesystem. The error
    /// says in one line what is wrong and what to do.
    pub async fn detect(dir: &Path) -> Result<Self, Failure> {
        let rootfs = dir.join("podman-probe-rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| {
            Failure::new(format!(
                "cannot create {} (devd's probe of podman): {e}",
                rootfs.display()
            ))
        })?;
        let limits = host_limits();
        let mut refusals: Vec<(Option<String>, String)> = Vec::new();
        for runtime in [None, Some("runc".to_owned())] {
            let mut last = String::new();
            for ulimits in limit_candidates(&limits) {
                let setup = Self {
                    runtime: runtime.clone(),
                    ulimits,
                };
                match probe(&setup, &rootfs).await? {
                    Probe::Works => {
                        tracing::info!(setup = %setup.describe(), "podman starts containers here");
                        return Ok(setup);
                    }
                    Probe::Rlimits(msg) => last = msg,
                    Probe::Other(msg) => {
                        last = msg;
                        break;
                    }
                }
            }
            tracing::debug!(?runtime, error = %last, "podman probe refused");
            refusals.push((runtime, last));
        }
        Err(Failure::with_log(
            format!(
                "podman cannot start containers on this machine: {}",
                explain_environment(&refusals)
            ),
            &refusals
                .iter()
                .map(|(r, m)| format!("{}: {m}", r.as_deref().unwrap_or("default runtime")))
                .collect::<Vec<_>>()
                .join("\n"),
        ))
    }
}

/// Install hints for missing tools.
pub(super) fn missing_tool(tool: &str) -> Failure {
    Failure::new(format!(
        "{tool} is not installed, and the local backend needs it: install it (Debian/Ubuntu: `sudo apt-get install buildah podman runc`; Fedora: `sudo dnf install buildah podman`), or point devd at a cluster receiver"
    ))
}

/// What one probe found.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Works,
    /// The runtime may not set the limits (its message).
    Rlimits(String),
    /// Anything else that stops a container from starting.
    Other(String),
}

async fn probe(setup: &PodmanSetup, rootfs: &Path) -> Result<Probe, Failure> {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut cmd = setup.run_command();
    cmd.args(["--rm", "--network", "none", "--name"])
        .arg(format!("devd-probe-{}-{n}", std::process::id()))
        .arg("--label")
        .arg(format!("{LABEL_PROBE}=1"))
        .arg("--rootfs")
        .arg(rootfs)
        .arg(PROBE_COMMAND)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing_tool("podman")
        } else {
            Failure::new(format!("cannot run podman: {e}"))
        }
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(classify_probe(out.status.success(), &stderr))
}

/// A probe's outcome from its exit and podman's message.
fn classify_probe(success: bool, stderr: &str) -> Probe {
    // The runtime tried to execute the probe command: everything before
    // it (runtime, cgroups, limits, mounts) worked.
    let reached_exec = stderr.contains(&format!("\"{PROBE_COMMAND}\""))
        && (stderr.contains("no such file or directory")
            || stderr.contains("executable file not found"));
    if success || reached_exec {
        Probe::Works
    } else if is_rlimit_error(stderr) {
        Probe::Rlimits(error_line(stderr))
    } else {
        Probe::Other(error_line(stderr))
    }
}

fn is_rlimit_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("rlimit") && (m.contains("operation not permitted") || m.contains("permission"))
}

/// podman's `Error: …` line (the last one), else the last non-empty line.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("Error: "))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "podman failed without a message".to_owned())
}

/// This process's hard limits, from `/proc/self/limits`, and the kernel's
/// `pid_max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HostLimits {
    nofile: Option<u64>,
    nproc: Option<u64>,
    pid_max: Option<u64>,
}

fn host_limits() -> HostLimits {
    let mut limits = std::fs::read_to_string("/proc/self/limits")
        .map(|t| parse_limits(&t))
        .unwrap_or_default();
    limits.pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    limits
}

/// The hard open-file and process limits of a `/proc/PID/limits` text
/// (`None` for "unlimited" or absent).
fn parse_limits(text: &str) -> HostLimits {
    let hard = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    HostLimits {
        nofile: hard("Max open files"),
        nproc: hard("Max processes"),
        pid_max: None,
    }
}

/// The `--ulimit` sets to try, in order: none (podman's defaults, or the
/// user's `default_ulimits`); this process's hard limits; the process
/// limit no higher than `pid_max` (podman lowers its own to that); and
/// last 1024 each, which every runtime accepts.
fn limit_candidates(limits: &HostLimits) -> Vec<Vec<String>> {
    let set = |nofile: u64, nproc: u64| {
        vec![
            format!("nofile={nofile}:{nofile}"),
            format!("nproc={nproc}:{nproc}"),
        ]
    };
    let mut out = vec![Vec::new()];
    if let (Some(nofile), Some(nproc)) = (limits.nofile, limits.nproc) {
        out.push(set(nofile, nproc));
        if let Some(pid_max) = limits.pid_max {
            out.push(set(nofile, nproc.min(pid_max)));
        }
    }
    out.push(set(1024, 1024));
    out.dedup();
    out
}

/// One line for a machine where no probe started a container: what is
/// wrong, what to do. `refusals` are (runtime, podman's message) per
/// runtime tried, podman's default first.
fn explain_environment(refusals: &[(Option<String>, String)]) -> String {
    let default = refusals.first().map(|(_, m)| m.as_str()).unwrap_or("");
    let runc_missing = refusals.iter().any(|(r, m)| {
        r.as_deref() == Some("runc") && m.contains("runc") && m.contains("not found")
    });
    let install_runc =
        "install runc (Debian/Ubuntu: `sudo apt-get install runc`; devd then uses it by itself)";
    let lower = default.to_ascii_lowercase();
    if lower.contains("hybrid mode not supported") || lower.contains("cgroup") {
        let runtime = runtime_in(default).unwrap_or("podman's default runtime");
        if runc_missing {
            format!(
                "its runtime {runtime} does not support this machine's cgroups ({}), and runc is not installed: {install_runc}",
                clause(default)
            )
        } else {
            format!(
                "its runtime {runtime} does not support this machine's cgroups ({}), and neither runc works: see `podman run --rm --runtime runc IMAGE` by hand",
                clause(default)
            )
        }
    } else if is_rlimit_error(default) {
        "the container runtime may not set the containers' open-file and process limits, not even 1024 (this process lacks CAP_SYS_RESOURCE and its hard limits are lower): raise the hard limits of the shell that starts devd (`ulimit -Hn`, `ulimit -Hu`)".to_owned()
    } else if let Some(name) = missing_runtime(default) {
        if runc_missing {
            format!("its runtime {name} is not installed, nor is runc: {install_runc}")
        } else {
            format!("its runtime {name} is not installed: install it, or runc ({install_runc})")
        }
    } else {
        format!(
            "{}; try `podman run --rm IMAGE` by hand to see why",
            clause(default)
        )
    }
}

/// The runtime named in podman's message (`Error: crun: …`, `OCI runtime
/// error: runc: …`).
fn runtime_in(msg: &str) -> Option<&'static str> {
    ["crun", "runc", "youki", "krun", "runsc"]
        .into_iter()
        .find(|r| msg.contains(&format!("{r}:")))
}

/// `default OCI runtime "X" not found` → X.
fn missing_runtime(msg: &str) -> Option<&str> {
    let rest = msg.split("OCI runtime \"").nth(1)?;
    let (name, after) = rest.split_once('"')?;
    after.trim_start().starts_with("not found").then_some(name)
}

/// The part of podman's message that says what failed, without podman's
/// and the runtime's prefixes and the trailing error class.
pub fn clause(msg: &str) -> String {
    let mut s = error_line(msg);
    // Newer runtimes wrap their message in `time=… level=error msg="…"`.
    if let Some(i) = s.find("msg=\"") {
        let inner = &s[i + 5..];
        s = inner.split('"').next().unwrap_or(inner).to_owned();
    }
    let prefixes = [
        "Error: ",
        "OCI runtime error: ",
        "runc: ",
        "crun: ",
        "runc create failed: ",
        "unable to start container process: ",
        "error during container init: ",
    ];
    loop {
        let before = s.len();
        for p in prefixes {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest.to_owned();
            }
        }
        if s.len() == before {
            break;
        }
    }
    for suffix in [
        ": OCI permission denied",
        ": OCI runtime attempted to invoke a command that was not found",
        ": OCI runtime permission denied error",
        ": OCI runtime error",
        ": invalid argument",
    ] {
        if let Some(rest) = s.strip_suffix(suffix) {
            s = rest.to_owned();
        }
    }
    s.trim().to_owned()
}

/// One line for a container that podman could not start: what is wrong
/// and what to do. `output` is podman's output; `image` is what it ran,
/// `dockerfile` where the image's command comes from.
pub fn explain_start_failure(output: &str, image: &str, dockerfile: &str) -> String {
    let msg = error_line(output);
    let lower = msg.to_ascii_lowercase();
    if let Some(cmd) = exec_target(&msg) {
        if lower.contains("permission denied") {
            return format!(
                "its command {cmd:?} is not executable in the image: make it executable (chmod +x) or fix CMD/ENTRYPOINT in {dockerfile}"
            );
        }
        if lower.contains("no such file or directory") || lower.contains("not found") {
            return format!(
                "its command {cmd:?} is not in the image: fix CMD/ENTRYPOINT in {dockerfile}"
            );
        }
    }
    if lower.contains("address already in use") {
        return format!(
            "a port it publishes is taken ({}): stop what uses it, or restart devd",
            clause(&msg)
        );
    }
    if is_rlimit_error(&msg) || lower.contains("hybrid mode") {
        return format!(
            "the container runtime refused this machine's settings ({}): restart devd so it checks again how podman can start containers here",
            clause(&msg)
        );
    }
    format!("{}; see why with `podman run --rm {image}`", clause(&msg))
}

/// `exec: "X": …` → X.
fn exec_target(msg: &str) -> Option<&str> {
    let rest = msg.split("exec: \"").nth(1)?;
    rest.split('"').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    // podman 4.3.1 / runc 1.1.5 and crun 1.8.1 on a Debian 12 container
    // without CAP_SYS_RESOURCE, hybrid cgroups: the messages as seen.
    const RUNC_RLIMIT: &str = "Error: runc: runc create failed: unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: OCI permission denied\n";
    const CRUN_RLIMIT: &str =
        "Error: crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted: OCI permission denied\n";
    const CRUN_HYBRID: &str = "Error: OCI runtime error: crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2\n";
    const PROBE_REACHED: &str = "Error: runc: runc create failed: unable to start container process: exec: \"/devd-probe\": stat /devd-probe: no such file or directory: OCI runtime attempted to invoke a command that was not found\n";
    const BROKEN_CRUN: &str = "/opt/crun: error while loading shared libraries: libyajl.so.2: cannot open shared object file: No such file or directory\ntime=\"2026-12-07T12:05:08Z\" level=error msg=\"Removing container 45c9 from runtime after creation failed\"\nError: crun: /opt/crun: error while loading shared libraries: libyajl.so.2: cannot open shared object file: No such file or directory: OCI runtime attempted to invoke a command that was not found\n";
    const NO_RUNC: &str = "Error: default OCI runtime \"runc\" not found: invalid argument\n";
    const CMD_MISSING: &str = "Error: runc: runc create failed: unable to start container process: exec: \"httpdd\": executable file not found in $PATH: OCI runtime attempted to invoke a command that was not found\n";

    #[test]
    fn probe_outcomes() {
        assert_eq!(classify_probe(false, PROBE_REACHED), Probe::Works);
        assert!(matches!(
            classify_probe(false, RUNC_RLIMIT),
            Probe::Rlimits(_)
        ));
        assert!(matches!(
            classify_probe(false, CRUN_RLIMIT),
            Probe::Rlimits(_)
        ));
        assert!(matches!(
            classify_probe(false, CRUN_HYBRID),
            Probe::Other(_)
        ));
        // A runtime that cannot be executed also ends in "a command that
        // was not found", but not the probe's command.
        assert!(matches!(
            classify_probe(false, BROKEN_CRUN),
            Probe::Other(_)
        ));
        assert!(matches!(classify_probe(false, NO_RUNC), Probe::Other(_)));
    }

    #[test]
    fn limits_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max processes             96367                96367                processes \n\
                    Max open files            1024                 20000                files     \n";
        let l = parse_limits(text);
        assert_eq!((l.nofile, l.nproc), (Some(20000), Some(96367)));
        let l = HostLimits {
            pid_max: Some(32768),
            ..l
        };
        assert_eq!(
            limit_candidates(&l),
            vec![
                vec![],
                vec![
                    "nofile=20000:20000".to_owned(),
                    "nproc=96367:96367".to_owned()
                ],
                vec![
                    "nofile=20000:20000".to_owned(),
                    "nproc=32768:32768".to_owned()
                ],
                vec!["nofile=1024:1024".to_owned(), "nproc=1024:1024".to_owned()],
            ]
        );
        let unlimited = parse_limits(
            "Max processes             unlimited            unlimited            processes\n",
        );
        assert_eq!(unlimited.nproc, None);
        assert_eq!(limit_candidates(&unlimited).len(), 2);
    }

    #[test]
    fn environment_explanations_are_one_line_with_a_remedy() {
        let crun_no_runc = explain_environment(&[
            (None, error_line(CRUN_HYBRID)),
            (Some("runc".into()), error_line(NO_RUNC)),
        ]);
        assert_eq!(
            crun_no_runc,
            "its runtime crun does not support this machine's cgroups (cgroups in hybrid mode not supported, drop all controllers from cgroupv2), and runc is not installed: install runc (Debian/Ubuntu: `sudo apt-get install runc`; devd then uses it by itself)"
        );
        let rlimits = explain_environment(&[
            (None, error_line(RUNC_RLIMIT)),
            (Some("runc".into()), error_line(RUNC_RLIMIT)),
        ]);
        assert!(rlimits.contains("`ulimit -Hn`"), "{rlimits}");
        let missing = explain_environment(&[
            (
                None,
                "Error: default OCI runtime \"crun\" not found: invalid argument".into(),
            ),
            (Some("runc".into()), error_line(NO_RUNC)),
        ]);
        assert_eq!(
            missing,
            "its runtime crun is not installed, nor is runc: install runc (Debian/Ubuntu: `sudo apt-get install runc`; devd then uses it by itself)"
        );
        for line in [crun_no_runc, rlimits, missing] {
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn start_failures_name_the_cause_and_the_fix() {
        assert_eq!(
            explain_start_failure(CMD_MISSING, "x@sha256:1", "services/api/Dockerfile"),
            "its command \"httpdd\" is not in the image: fix CMD/ENTRYPOINT in services/api/Dockerfile"
        );
        assert_eq!(
            clause(RUNC_RLIMIT),
            "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted"
        );
        let rl = explain_start_failure(RUNC_RLIMIT, "x@sha256:1", "Dockerfile");
        assert!(rl.starts_with("the container runtime refused"), "{rl}");
        assert!(!rl.contains("runc create failed"), "{rl}");
        assert_eq!(
            explain_start_failure(
                "Error: something new: OCI runtime error\n",
                "x@sha256:1",
                "Dockerfile"
            ),
            "something new; see why with `podman run --rm x@sha256:1`"
        );
    }
}

//! Whether a played pod runs: its containers run (a Job's exited 0) and
//! answer on the ports its Services send to, within a bounded time; or
//! why not (exited with code N, restarted, never answered), with the
//! failing container's last log lines.

use crate::build::backend::podman::PodmanSetup;
use crate::build::backend::tail;
use devd_protocol::event::LOG_TAIL_LINES;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A container that restarted this often is failing, not starting.
const RESTARTS: u64 = 3;

/// What to wait for.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) pod: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) containers: Vec<String>,
    pub(crate) ports: BTreeSet<u16>,
    pub(crate) run_once: bool,
}

/// A pod that does not run: why, and the log of the container at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotReady {
    pub(crate) reason: String,
    pub(crate) log_tail: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Inspect {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "RestartCount", default)]
    restarts: u64,
    #[serde(rename = "State", default)]
    state: State,
}

#[derive(serde::Deserialize, Default)]
struct State {
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "ExitCode", default)]
    exit_code: i64,
    #[serde(rename = "Error", default)]
    error: String,
}

/// The last lines a container printed.
pub(crate) async fn logs(setup: &PodmanSetup, container: &str) -> Vec<String> {
    let mut cmd = setup.command();
    cmd.args(["logs", "--tail", &LOG_TAIL_LINES.to_string(), container])
        .stdin(Stdio::null());
    match cmd.output().await {
        Ok(out) => tail(
            &format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            LOG_TAIL_LINES,
        ),
        Err(e) => vec![format!("cannot run podman logs: {e}")],
    }
}

/// One look at the containers: `Ok(true)` when they run (or a Job's are
/// done), `Ok(false)` to look again, `Err` when one failed.
async fn look(setup: &PodmanSetup, check: &Check) -> Result<bool, (String, String)> {
    let mut cmd = setup.command();
    cmd.args(["container", "inspect", "--format", "json"])
        .args(&check.containers)
        .stdin(Stdio::null());
    let out = cmd.output().await.map_err(|e| {
        (
            format!("cannot run podman container inspect: {e}"),
            String::new(),
        )
    })?;
    let list: Vec<Inspect> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut all = true;
    for name in &check.containers {
        let Some(c) = list.iter().find(|c| &c.name == name) else {
            all = false;
            continue;
        };
        let s = &c.state;
        let stopped = matches!(s.status.as_str(), "exited" | "stopped" | "dead");
        if check.run_once {
            if stopped && s.exit_code != 0 {
                return Err((
                    format!("{name} exited with code {}", s.exit_code),
                    name.clone(),
                ));
            }
            all &= s.status == "running" || stopped;
            continue;
        }
        if stopped && s.exit_code != 0 {
            return Err((
                format!("{name} exited with code {}", s.exit_code),
                name.clone(),
            ));
        }
        if c.restarts >= RESTARTS {
            // Restarted, its exit code is gone: catch it between two runs.
            let code = exit_code(setup, name).await;
            return Err((
                match code {
                    Some(code) => format!(
                        "{name} exited with code {code} (restarted {} times)",
                        c.restarts
                    ),
                    None => format!("{name} keeps exiting (restarted {} times)", c.restarts),
                },
                name.clone(),
            ));
        }
        if !s.error.is_empty() && s.status != "running" {
            return Err((format!("{name} cannot start: {}", s.error), name.clone()));
        }
        all &= s.status == "running";
    }
    Ok(all)
}

/// The exit code of a container that podman keeps restarting, seen
/// while it is down (within a second), if it is.
async fn exit_code(setup: &PodmanSetup, name: &str) -> Option<i64> {
    for _ in 0..50 {
        let mut cmd = setup.command();
        cmd.args(["container", "inspect", "--format", "json", name])
            .stdin(Stdio::null());
        let out = cmd.output().await.ok()?;
        let list: Vec<Inspect> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let s = &list.first()?.state;
        if matches!(s.status.as_str(), "exited" | "stopped") {
            return Some(s.exit_code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Wait until the pod runs, at most `timeout`.
pub(crate) async fn wait(
    setup: &PodmanSetup,
    check: &Check,
    timeout: Duration,
) -> Result<(), NotReady> {
    let start = Instant::now();
    let mut waiting_for = "its containers to run".to_owned();
    loop {
        match look(setup, check).await {
            Err((reason, container)) => {
                return Err(NotReady {
                    reason,
                    log_tail: logs(setup, &container).await,
                });
            }
            Ok(true) => {
                let mut closed = None;
                if !check.run_once {
                    for p in &check.ports {
                        if !answers(SocketAddr::from((check.ip, *p))).await {
                            closed = Some(*p);
                            break;
                        }
                    }
                }
                match closed {
                    None => return Ok(()),
                    Some(p) => waiting_for = format!("an answer on port {p}"),
                }
            }
            Ok(false) => {}
        }
        if start.elapsed() > timeout {
            let mut log_tail = Vec::new();
            for c in &check.containers {
                log_tail.extend(logs(setup, c).await);
            }
            return Err(NotReady {
                reason: format!(
                    "pod {} still waits for {waiting_for} after {}s",
                    check.pod,
                    timeout.as_secs()
                ),
                log_tail: tail(&log_tail.join("\n"), LOG_TAIL_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! Build steps of the local backend: each is `podman run --rm` of the
//! step's image as root, the context snapshot bind-mounted read-write at
//! [`STEP_WORKSPACE`], its output appended to the build log (see the
//! parent module's docs).

use super::super::podman::{self, missing_tool};
use super::super::{BuildRequest, Failure};
use super::{LABEL_STEP, LocalBackend, STEP_WORKSPACE};
use devd_sync::catalog::Step;
use std::process::Stdio;
use std::time::Instant;

impl LocalBackend {
    /// Run one build step on the context (see the module docs); its
    /// output goes to the build log, and on failure its end is the
    /// failure's log tail.
    pub(super) async fn run_step(&self, req: &BuildRequest, step: &Step) -> Result<(), Failure> {
        let service = &req.service.name;
        let started = Instant::now();
        let ctx = std::fs::canonicalize(&req.context.dir).map_err(|e| {
            Failure::new(format!(
                "build of {service} failed: step {:?}: cannot find the build context {}: {e}",
                step.name,
                req.context.dir.display()
            ))
        })?;
        let workdir = match &step.workdir {
            Some(w) => format!("{STEP_WORKSPACE}/{}", w.as_str()),
            None => STEP_WORKSPACE.to_owned(),
        };
        let log_failure = |e: std::io::Error| {
            Failure::new(format!(
                "build of {service} failed: cannot write the build log {}: {e}",
                req.log.display()
            ))
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&req.log)
            .map_err(log_failure)?;
        {
            use std::io::Write;
            writeln!(
                log,
                "devd: step {:?}: {} {:?} (in {workdir})",
                step.name, step.image, step.command
            )
            .map_err(log_failure)?;
        }
        let offset = log.metadata().map_err(log_failure)?.len();
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut cmd = self.podman().await?.run_command();
        cmd.args(["--rm", "--user", "0:0"])
            .arg("--name")
            .arg(format!(
                "devd-{}-{service}-step-{}-{n}",
                req.workspace, step.name
            ))
            .arg("--label")
            .arg(format!(
                "{LABEL_STEP}={}/{service}/{}",
                req.workspace, step.name
            ));
        if let Some(f) = self.tls_flag() {
            cmd.arg(f);
        }
        cmd.arg("-v")
            .arg(format!("{}:{STEP_WORKSPACE}", ctx.display()))
            .arg("-w")
            .arg(&workdir);
        for (k, v) in &step.env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg("--entrypoint")
            .arg(&step.command[0])
            .arg(&step.image)
            .args(&step.command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_failure)?)
            .stderr(log);
        let status = cmd.status().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing_tool("podman")
            } else {
                Failure::new(format!("cannot run podman: {e}"))
            }
        })?;
        if status.success() {
            tracing::info!(service = %service, step = %step.name, ms = started.elapsed().as_millis() as u64, "build step done");
            return Ok(());
        }
        let output = std::fs::read(&req.log)
            .map(|b| String::from_utf8_lossy(&b[(offset as usize).min(b.len())..]).into_owned())
            .unwrap_or_default();
        // podman's own exit codes: 125 it failed itself (e.g. no such
        // image), 126 the command cannot run, 127 it does not exist; the
        // runtime's refusals (limits, cgroups) come as 125 or 126 with an
        // `Error: … OCI …` line.
        let runtime_refused = output
            .lines()
            .rev()
            .find(|l| l.starts_with("Error: "))
            .is_some_and(|l| l.contains("OCI "));
        let what = match status.code() {
            Some(125..=127) if runtime_refused => format!(
                "step {:?} could not start: {}",
                step.name,
                podman::explain_start_failure(&output, &step.image, "devd.toml")
            ),
            Some(125) => format!(
                "step {:?} could not start (podman exit 125: image {} or container setup failed)",
                step.name, step.image
            ),
            Some(c @ (126 | 127)) => format!(
                "step {:?} failed (exit {c}: the command {:?} {} in image {})",
                step.name,
                step.command[0],
                if c == 127 {
                    "was not found"
                } else {
                    "cannot be run"
                },
                step.image
            ),
            Some(c) => format!("step {:?} failed (exit {c})", step.name),
            None => format!("step {:?} was killed ({status})", step.name),
        };
        Err(Failure::with_log(
            format!("build of {service} failed: {what}"),
            &output,
        ))
    }
}

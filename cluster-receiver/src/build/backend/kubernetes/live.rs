//! Live update on the Kubernetes backend, through the pod exec API (as
//! Tilt, Skaffold and DevSpace do), in the service's container of every
//! running pod of its Deployment:
//! - deletions: `rm -rf -- PATH…`;
//! - files and symlinks: one tar streamed into `tar -x -C / -f -` (a
//!   container without `tar` or `rm`, e.g. an image FROM scratch, cannot
//!   be live-updated: the pipeline builds instead, saying why once);
//! - the `run` commands, their output to the log;
//! - restart: the process with `kill -s SIG 1` in the container.
//!   `restart = "container"` cannot be done in a cluster without losing
//!   what was copied (kubelet starts a container again from its image, and
//!   PID 1 ignores a SIGKILL sent from inside), so such a service builds
//!   images, said once.
//!
//! Pod starts are followed by polling the workspace's pods: a new pod, or
//! a container whose restart count grew (kubelet restarted it, the pod
//! was rescheduled), is reported once it runs, and the pipeline copies the
//! whole live difference into it before reporting the service deployed.
//! The pods of a stack (`[deploy]`) carry no devd labels: once one is
//! applied, a pod is a service's when a container runs the image the
//! stack gave that service.

use super::KubernetesBackend;
use super::names::LABEL_SERVICE;
use crate::build::backend::exec::{ExecIo, ExecOutput, ExecRequest};
use crate::build::backend::{Failure, LiveError, LiveUpdate, archive, tail};
use crate::build::live::WorktreeEntry;
use devd_protocol::event::LOG_TAIL_LINES;
use devd_sync::catalog::{Restart, Service};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit status of a shell that did not find the program.
const NOT_FOUND: i32 = 127;

/// How a command run for a live update ended, when not with status 0.
struct RunFailure {
    code: Option<i32>,
    error: String,
    output: String,
}

fn log(path: &Path, text: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

impl KubernetesBackend {
    /// Run `argv` in `container` of `pod` with `stdin`, its output
    /// appended to `log_path`.
    async fn run_in(
        &self,
        pod: &str,
        container: &str,
        argv: &[String],
        stdin: Option<Vec<u8>>,
        log_path: &Path,
    ) -> Result<(), RunFailure> {
        let (input_tx, input) = mpsc::channel(4);
        let (output, mut output_rx) = mpsc::channel::<ExecOutput>(16);
        let req = ExecRequest {
            command: argv.to_vec(),
            tty: None,
        };
        let io = ExecIo { input, output };
        let feed = async move {
            if let Some(data) = stdin {
                for chunk in data.chunks(64 << 10) {
                    let msg = crate::build::backend::exec::ExecInput::Data(chunk.to_vec());
                    if input_tx.send(msg).await.is_err() {
                        return input_tx;
                    }
                }
            }
            let _ = input_tx
                .send(crate::build::backend::exec::ExecInput::End)
                .await;
            input_tx // kept open: its end would end the command
        };
        let collect = async {
            let mut all = Vec::new();
            while let Some(chunk) = output_rx.recv().await {
                all.extend_from_slice(&chunk.data);
            }
            all
        };
        let (code, _input_tx, out) = tokio::join!(
            self.exec_in_pod(pod, container.to_owned(), req, io),
            feed,
            collect
        );
        let text = String::from_utf8_lossy(&out).into_owned();
        log(log_path, &text);
        match code {
            Ok(0) => Ok(()),
            Ok(code) => Err(RunFailure {
                code: Some(code),
                error: format!("exit status {code}"),
                output: text,
            }),
            Err(f) => Err(RunFailure {
                code: None,
                error: f.error,
                output: text,
            }),
        }
    }

    /// See the module docs.
    pub(super) async fn live(
        &self,
        workspace: &str,
        service: &Service,
        update: &LiveUpdate,
    ) -> Result<usize, LiveError> {
        if update.restart == Restart::Container {
            return Err(LiveError::Unsupported(
                "restart = \"container\" cannot keep the copied files in a cluster (kubelet starts a container again from its image): use restart = \"process\", or image builds".into(),
            ));
        }
        let pods = self
            .running_pods(workspace, service)
            .await
            .map_err(LiveError::Failed)?;
        if pods.is_empty() {
            return Err(LiveError::Unsupported(format!(
                "{} has no running pod",
                service.name
            )));
        }
        let tar = archive(&update.files).map_err(|e| {
            LiveError::Failed(Failure::new(format!("cannot pack the files to copy: {e}")))
        })?;
        let copied = update
            .files
            .iter()
            .filter(|f| f.entry != WorktreeEntry::Absent)
            .count();
        let deleted: Vec<String> = update
            .files
            .iter()
            .filter(|f| f.entry == WorktreeEntry::Absent)
            .map(|f| f.to.clone())
            .collect();
        let missing_tool = |pod: &str, tool: &str, f: &RunFailure| {
            let absent = f.code == Some(NOT_FOUND)
                || f.output.contains("executable file not found")
                || f.error.contains("executable file not found");
            absent.then(|| {
                LiveError::Unsupported(format!(
                    "its container in pod {pod} has no `{tool}` to {} files with (an image FROM scratch?)",
                    if tool == "rm" { "delete" } else { "copy" }
                ))
            })
        };
        let failed = |what: String, f: RunFailure| {
            LiveError::Failed(Failure {
                error: format!("{what}: {}", f.error),
                log_tail: tail(&f.output, LOG_TAIL_LINES),
            })
        };
        for (pod, container) in &pods {
            if !deleted.is_empty() {
                log(
                    &update.log,
                    &format!("devd: pod {pod}: rm -rf {}\n", deleted.join(" ")),
                );
                let argv: Vec<String> = ["rm", "-rf", "--"]
                    .into_iter()
                    .map(String::from)
                    .chain(deleted.iter().cloned())
                    .collect();
                if let Err(f) = self.run_in(pod, container, &argv, None, &update.log).await {
                    return Err(missing_tool(pod, "rm", &f).unwrap_or_else(|| {
                        failed(
                            format!("cannot delete {} in pod {pod}", deleted.join(", ")),
                            f,
                        )
                    }));
                }
            }
            if copied > 0 {
                log(
                    &update.log,
                    &format!("devd: pod {pod}: copy {copied} file(s) (tar through exec)\n"),
                );
                let argv: Vec<String> = ["tar", "-x", "-C", "/", "-f", "-"]
                    .into_iter()
                    .map(String::from)
                    .collect();
                if let Err(f) = self
                    .run_in(pod, container, &argv, Some(tar.clone()), &update.log)
                    .await
                {
                    return Err(missing_tool(pod, "tar", &f)
                        .unwrap_or_else(|| failed(format!("copying into pod {pod} failed"), f)));
                }
            }
            for argv in &update.run {
                log(&update.log, &format!("devd: pod {pod}: run {argv:?}\n"));
                if let Err(f) = self.run_in(pod, container, argv, None, &update.log).await {
                    return Err(failed(
                        format!("`{}` failed in pod {pod}", argv.join(" ")),
                        f,
                    ));
                }
            }
            match &update.restart {
                Restart::None => {}
                Restart::Process { signal } => {
                    log(
                        &update.log,
                        &format!("devd: pod {pod}: signal SIG{signal} to PID 1\n"),
                    );
                    let argv: Vec<String> = ["kill", "-s", signal, "1"]
                        .into_iter()
                        .map(String::from)
                        .collect();
                    if let Err(f) = self.run_in(pod, container, &argv, None, &update.log).await {
                        return Err(failed(format!("cannot signal PID 1 in pod {pod}"), f));
                    }
                }
                // Refused above.
                Restart::Container => {}
            }
        }
        Ok(pods.len())
    }

    /// Send the service of each pod of `workspace` that starts running
    /// (a new pod, or a container kubelet restarted) to `started`, until
    /// `cancel` (see [`crate::build::backend::Backend::watch_starts`]).
    pub(super) async fn follow_starts(
        &self,
        workspace: &str,
        started: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) {
        let api: Api<Pod> = self.api();
        let ws = super::names::label_value(workspace);
        let selector = format!("{}={ws}", super::names::LABEL_WORKSPACE);
        // Pod uid → the restart counts of its running containers, as last seen.
        let mut seen: Option<HashMap<String, i32>> = None;
        loop {
            // The pods of a stack ([deploy]) carry no devd labels: with
            // one applied, every pod is looked at, by its images.
            let images = self.stack_images_of(workspace);
            let lp = match images.is_empty() {
                true => ListParams::default().labels(&selector),
                false => ListParams::default(),
            };
            if let Ok(list) = api.list(&lp).await {
                let mut now = HashMap::new();
                let mut starts = Vec::new();
                for p in &list.items {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    let labelled = (labels.get(super::names::LABEL_WORKSPACE) == Some(&ws))
                        .then(|| labels.get(LABEL_SERVICE).cloned())
                        .flatten();
                    let by_image = || {
                        p.spec
                            .iter()
                            .flat_map(|s| &s.containers)
                            .find_map(|c| images.get(c.image.as_deref()?).cloned())
                    };
                    let (Some(uid), Some(service)) =
                        (p.metadata.uid.clone(), labelled.or_else(by_image))
                    else {
                        continue;
                    };
                    let statuses = p
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.clone())
                        .unwrap_or_default();
                    let running = !statuses.is_empty()
                        && statuses
                            .iter()
                            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
                    if !running {
                        continue;
                    }
                    let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
                    if let Some(before) = &seen
                        && before.get(&uid) != Some(&restarts)
                    {
                        starts.push(service);
                    }
                    now.insert(uid, restarts);
                }
                seen = Some(now);
                for s in starts {
                    if started.send(s).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = started.closed() => return,
                _ = tokio::time::sleep(self.s.poll_interval) => {}
            }
        }
    }

    /// Remember `images` (service → image) as `workspace`'s stack.
    pub(super) fn remember_stack_images(
        &self,
        workspace: &str,
        images: &std::collections::BTreeMap<String, String>,
    ) {
        let by_image = images
            .iter()
            .map(|(service, image)| (image.clone(), service.clone()))
            .collect();
        let mut map = self.stack_images.lock().expect("stack images");
        map.insert(workspace.to_owned(), by_image);
    }

    /// `workspace`'s stack's images → their services.
    fn stack_images_of(&self, workspace: &str) -> std::collections::BTreeMap<String, String> {
        let map = self.stack_images.lock().expect("stack images");
        map.get(workspace).cloned().unwrap_or_default()
    }
}

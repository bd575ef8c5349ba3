//! Live update in the local backend, with podman's own facilities, in
//! every running container of the service:
//! - deletions: `podman exec C rm -rf -- PATH…` (a container without `rm`
//!   cannot be live-updated: the pipeline builds instead);
//! - files and symlinks: one tar, streamed into `podman cp - C:/`, which
//!   writes into the container's filesystem from outside, so it needs
//!   nothing in the image and keeps each file's mode (owner root);
//! - the `run` commands: `podman exec C CMD…`, output to the log;
//! - restart: `podman kill --signal SIG C` (the process) or `podman
//!   restart C` (the container, which keeps its files).
//!
//! A re-application into a container that just started first waits until
//! it accepts connections (its entrypoint runs before) and routes the
//! service's stable port to it again.
//!
//! Container starts are followed with `podman events` ([`LocalBackend::follow_starts`]),
//! the service named by the container's label (a pod of the repository's
//! manifests names every service whose image its workload runs).

use super::super::{Failure, LiveError, LiveUpdate, archive};
use super::{LABEL_SERVICE, LABEL_WORKSPACE, LocalBackend, key, run};
use crate::build::live::WorktreeEntry;
use devd_sync::catalog::{Restart, Service};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Append `text` to the log at `path`.
fn log(path: &std::path::Path, text: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A command as an error shows it: its words, cut after 60 characters.
fn shown(argv: &[String]) -> String {
    let s = argv.join(" ");
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// podman's answer when the program to exec is not in the container.
fn not_found(f: &Failure) -> bool {
    f.log_tail.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("executable file") && l.contains("not found")
            || l.contains("no such file or directory")
    }) || f.error.contains("exit status: 127")
}

impl LocalBackend {
    /// See the module docs.
    pub(super) async fn live(
        &self,
        workspace: &str,
        service: &Service,
        update: &LiveUpdate,
    ) -> Result<usize, LiveError> {
        let name = &service.name;
        let running: Vec<String> = self
            .service_containers(workspace, service)
            .await
            .map_err(LiveError::Failed)?
            .into_iter()
            .filter(|(_, _, running)| *running)
            .map(|(n, _, _)| n)
            .collect();
        if running.is_empty() {
            return Err(LiveError::Unsupported(format!(
                "{name} has no running container"
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
        let deleted: Vec<&str> = update
            .files
            .iter()
            .filter(|f| f.entry == WorktreeEntry::Absent)
            .map(|f| f.to.as_str())
            .collect();
        let setup = self.podman().await.map_err(LiveError::Failed)?.clone();
        for c in &running {
            if update.reapply {
                self.reattach(workspace, service, c).await?;
            }
            if !deleted.is_empty() {
                log(
                    &update.log,
                    &format!("devd: {c}: rm -rf {}\n", deleted.join(" ")),
                );
                let mut cmd = setup.command();
                cmd.args(["exec", c, "rm", "-rf", "--"]).args(&deleted);
                if let Err(f) = run(cmd, "podman", Some(&update.log)).await {
                    return Err(if not_found(&f) {
                        LiveError::Unsupported(format!(
                            "its container {c} has no `rm` to delete files with (an image FROM scratch?)"
                        ))
                    } else {
                        LiveError::Failed(Failure {
                            error: format!("cannot delete {} in {c}", deleted.join(", ")),
                            log_tail: f.log_tail,
                        })
                    });
                }
            }
            if copied > 0 {
                log(
                    &update.log,
                    &format!("devd: {c}: copy {copied} file(s) (podman cp)\n"),
                );
                self.copy_in(&setup, c, &tar)
                    .await
                    .map_err(LiveError::Failed)?;
            }
            for argv in &update.run {
                log(&update.log, &format!("devd: {c}: run {argv:?}\n"));
                let mut cmd = setup.command();
                cmd.args(["exec", c]).args(argv);
                run(cmd, "podman", Some(&update.log)).await.map_err(|f| {
                    LiveError::Failed(Failure {
                        error: format!(
                            "`{}` failed in {c} {}",
                            shown(argv),
                            f.error.trim_start_matches("podman failed ")
                        ),
                        log_tail: f.log_tail,
                    })
                })?;
            }
            match &update.restart {
                Restart::None => {}
                Restart::Process { signal } => {
                    log(&update.log, &format!("devd: {c}: signal SIG{signal}\n"));
                    let mut cmd = setup.command();
                    cmd.args(["kill", "--signal", signal, c]);
                    run(cmd, "podman", Some(&update.log))
                        .await
                        .map_err(LiveError::Failed)?;
                }
                Restart::Container => {
                    log(&update.log, &format!("devd: {c}: restart\n"));
                    let mut cmd = setup.command();
                    cmd.args(["restart", "-t", "1", c]);
                    run(cmd, "podman", Some(&update.log))
                        .await
                        .map_err(LiveError::Failed)?;
                    self.reattach(workspace, service, c).await?;
                }
            }
        }
        Ok(running.len())
    }

    /// Wait until container `c` (just started) accepts connections, and
    /// route the service's stable port to it (its published port may
    /// have changed).
    async fn reattach(&self, workspace: &str, service: &Service, c: &str) -> Result<(), LiveError> {
        let addr = match service.port() {
            Some(p) => Some(self.published(c, p).await.map_err(LiveError::Failed)?),
            None => None,
        };
        self.wait_ready(c, addr).await.map_err(LiveError::Failed)?;
        if let Some(a) = addr {
            self.route(&key(workspace, &service.name), a)
                .await
                .map_err(LiveError::Failed)?;
        }
        Ok(())
    }

    /// `podman cp - C:/` with `tar` on its stdin.
    async fn copy_in(
        &self,
        setup: &super::super::podman::PodmanSetup,
        c: &str,
        tar: &[u8],
    ) -> Result<(), Failure> {
        let mut cmd = setup.command();
        cmd.args(["cp", "-", &format!("{c}:/")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Failure::new(format!("cannot run podman cp: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let write = async {
            let r = stdin.write_all(tar).await;
            drop(stdin);
            r
        };
        let (written, out) = tokio::join!(write, child.wait_with_output());
        let out = out.map_err(|e| Failure::new(format!("podman cp: {e}")))?;
        if !out.status.success() || written.is_err() {
            return Err(Failure::with_log(
                format!("copying into {c} failed ({})", out.status),
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(())
    }

    /// Send the service name of each container of `workspace` that starts
    /// to `started` (see [`super::super::Backend::watch_starts`]): `podman
    /// events`, started again if it ends, until `cancel`.
    pub(super) async fn follow_starts(
        &self,
        workspace: &str,
        started: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) {
        #[derive(serde::Deserialize)]
        struct Event {
            #[serde(rename = "Attributes", default)]
            attributes: std::collections::BTreeMap<String, String>,
        }
        while !cancel.is_cancelled() && !started.is_closed() {
            let Ok(setup) = self.podman().await.cloned() else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            };
            let mut cmd = setup.command();
            // Filters of one key are alternatives: the workspace is
            // checked below.
            cmd.args(["events", "--format", "json", "--filter", "event=start"])
                .arg("--filter")
                .arg(format!("label={}", self.receiver_label))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow container starts (podman events)");
                    return;
                }
            };
            let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
            loop {
                let line = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = started.closed() => return,
                    l = lines.next_line() => l,
                };
                let Ok(Some(line)) = line else { break };
                let Ok(e) = serde_json::from_str::<Event>(&line) else {
                    continue;
                };
                if e.attributes.get(LABEL_WORKSPACE).map(String::as_str) != Some(workspace) {
                    continue;
                }
                if let Some(s) = e.attributes.get(LABEL_SERVICE)
                    && started.send(s.clone()).await.is_err()
                {
                    return;
                }
                // A container of a pod of the repository's manifests.
                let services = e.attributes.get(super::stack::LABEL_SERVICES);
                for s in services.into_iter().flat_map(|s| s.split(',')) {
                    if started.send(s.to_owned()).await.is_err() {
                        return;
                    }
                }
            }
            let _ = child.kill().await;
            tracing::debug!("podman events ended; following container starts again");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::backend::LiveFile;

    #[test]
    fn the_archive_holds_files_with_modes_and_links_but_no_deletions() {
        let files = vec![
            LiveFile {
                to: "/srv/www/a/b.html".into(),
                entry: WorktreeEntry::File {
                    data: b"hi".to_vec(),
                    mode: 0o600,
                },
            },
            LiveFile {
                to: "/srv/www/link".into(),
                entry: WorktreeEntry::Symlink("a/b.html".into()),
            },
            LiveFile {
                to: "/srv/www/gone".into(),
                entry: WorktreeEntry::Absent,
            },
        ];
        let tar = archive(&files).unwrap();
        let mut a = tar::Archive::new(tar.as_slice());
        let got: Vec<(String, u32, Option<String>)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("srv/www/a/b.html".into(), 0o600, None),
                ("srv/www/link".into(), 0o777, Some("a/b.html".into())),
            ]
        );
    }
}

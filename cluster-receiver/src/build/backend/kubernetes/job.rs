//! Running a build Job: create it (replacing a leftover of the same
//! build), poll it until it ends, and explain a failure with the log of
//! the container that failed.

use super::KubernetesBackend;
use super::names::{
    FETCH_CONTAINER, KANIKO_CONTAINER, LABEL_WORKSPACE, label_value, step_container,
};
use super::state::{
    JobState, Stuck, Terminated, failed_create, has_label, job_state, stuck, terminated,
};
use super::{api_failure, is_status};
use crate::build::backend::{BuildRequest, Failure, tail};
use devd_protocol::event::LOG_TAIL_LINES;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Extra time past `activeDeadlineSeconds` before the backend gives up on
/// a Job whose controller never marked it failed.
const DEADLINE_GRACE: Duration = Duration::from_secs(60);
/// How long API errors are retried while waiting for a Job.
const API_ERROR_PATIENCE: Duration = Duration::from_secs(120);

impl KubernetesBackend {
    /// Create the Job; a leftover of the same build (a receiver restart)
    /// is deleted first.
    pub(super) async fn create_job(
        &self,
        name: &str,
        spec: &Value,
        req: &BuildRequest,
    ) -> Result<(), Failure> {
        let jobs: Api<Job> = self.api();
        let job: Job = serde_json::from_value(spec.clone())
            .map_err(|e| Failure::new(format!("internal error: invalid Job spec: {e}")))?;
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(api_failure(&format!("create Job {name}"), e)),
        }
        let old = jobs
            .get(name)
            .await
            .map_err(|e| api_failure(&format!("read Job {name}"), e))?;
        if !has_label(&old.metadata, LABEL_WORKSPACE, &label_value(&req.workspace)) {
            return Err(Failure::new(format!(
                "a Job named {name} that devd's workspace {} did not create exists in namespace {}; delete it or use a namespace per workspace",
                req.workspace, self.s.namespace
            )));
        }
        tracing::info!(job = %name, "deleting a leftover Job of the same build");
        let _ = jobs.delete(name, &DeleteParams::background()).await;
        let start = Instant::now();
        loop {
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) && start.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(api_failure(&format!("create Job {name}"), e)),
            }
        }
    }

    /// The newest pod of Job `name`.
    pub(super) async fn job_pod(&self, name: &str) -> Result<Option<Pod>, Failure> {
        let pods: Api<Pod> = self.api();
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .map_err(|e| api_failure(&format!("list the pods of Job {name}"), e))?;
        // Filter again: the selector is the server's job, but cheap to check.
        Ok(list
            .items
            .into_iter()
            .filter(|p| has_label(&p.metadata, "job-name", name))
            .max_by_key(|p| p.metadata.creation_timestamp.clone()))
    }

    /// The log tail of one container of a pod ("" if unavailable).
    pub(super) async fn log_tail(&self, pod: &str, container: &str, previous: bool) -> String {
        let pods: Api<Pod> = self.api();
        let lp = LogParams {
            container: Some(container.to_owned()),
            tail_lines: Some(LOG_TAIL_LINES as i64 * 4),
            previous,
            ..Default::default()
        };
        match pods.logs(pod, &lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%pod, %container, error = %e, "no log");
                String::new()
            }
        }
    }

    /// Why the Job controller cannot create Job `name`'s pod, if it said
    /// so: the message of its `FailedCreate` event (an admission webhook,
    /// Pod Security, a ResourceQuota or a LimitRange refused the pod). The
    /// controller retries with a back-off, but the rejection is the same
    /// each time, and without this the build would wait for
    /// `activeDeadlineSeconds` and say only "no pod was started".
    async fn rejected(&self, name: &str) -> Option<String> {
        let events: Api<Event> = self.api();
        let fields = format!("involvedObject.kind=Job,involvedObject.name={name}");
        match events.list(&ListParams::default().fields(&fields)).await {
            Ok(list) => failed_create(&list.items, "Job", name),
            Err(e) => {
                tracing::debug!(job = %name, error = %e, "cannot list the Job's events");
                None
            }
        }
    }

    pub(super) async fn delete_job(&self, name: &str) {
        let jobs: Api<Job> = self.api();
        if let Err(e) = jobs.delete(name, &DeleteParams::background()).await {
            tracing::warn!(job = %name, error = %e, "cannot delete the Job");
        }
    }

    /// Wait for Job `name` to finish; the pod that ran it.
    pub(super) async fn wait_job(&self, name: &str) -> Result<(JobState, Option<Pod>), Failure> {
        let jobs: Api<Job> = self.api();
        let limit = Duration::from_secs(self.s.active_deadline_seconds as u64) + DEADLINE_GRACE;
        let start = Instant::now();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        // API errors are tolerated this long (an API server restart).
        let mut failing_since: Option<Instant> = None;
        loop {
            match jobs.get(name).await {
                Ok(job) => {
                    failing_since = None;
                    let state = job_state(&job);
                    if state != JobState::Running {
                        return Ok((state, self.job_pod(name).await?));
                    }
                }
                Err(e) if is_status(&e, 404) => {
                    return Err(Failure::new(format!(
                        "Job {name} disappeared while it ran (deleted by someone?)"
                    )));
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > API_ERROR_PATIENCE {
                        return Err(api_failure(&format!("read Job {name}"), e));
                    }
                    tracing::warn!(job = %name, error = %e, "cannot read the Job; retrying");
                }
            }
            match self.job_pod(name).await {
                Ok(Some(pod)) => {
                    if let Some(Stuck {
                        container,
                        reason,
                        message,
                    }) = stuck(&pod)
                    {
                        self.delete_job(name).await;
                        return Err(Failure::new(format!(
                            "build pod of Job {name} cannot start: container {container}: {reason}: {message}"
                        )));
                    }
                }
                Ok(None) => {
                    if let Some(why) = self.rejected(name).await {
                        self.delete_job(name).await;
                        return Err(Failure::new(format!(
                            "build pod of Job {name} was refused: {why} — the namespace's admission rules (Pod Security, ResourceQuota, LimitRange) reject it; Kaniko runs as root, so the namespace needs Pod Security `baseline`, not `restricted` (see the README's cluster compatibility table)"
                        )));
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot list the build pod; retrying")
                }
            }
            if start.elapsed() > limit {
                self.delete_job(name).await;
                return Err(Failure::new(format!(
                    "Job {name} did not finish within activeDeadlineSeconds ({}s) and was deleted",
                    self.s.active_deadline_seconds
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.s.poll_interval);
        }
    }

    /// The failure of a failed Job: the reason, and the log tail of the
    /// container that failed.
    pub(super) async fn job_failure(
        &self,
        req: &BuildRequest,
        name: &str,
        reason: &str,
        message: &str,
        pod: Option<Pod>,
    ) -> Failure {
        let Some(pod) = pod else {
            return Failure::new(format!(
                "build of {} failed: Job {name}: {reason}: {message} (no pod was started)",
                req.service.name
            ));
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let failed_init = terminated(&pod, true)
            .into_iter()
            .find(|t| t.exit_code != 0);
        let Terminated {
            container,
            exit_code: code,
            reason: why,
            message: term_msg,
        } = match failed_init {
            Some(t) => t,
            None => terminated(&pod, false)
                .into_iter()
                .find(|t| t.container == KANIKO_CONTAINER)
                .unwrap_or_else(|| Terminated {
                    container: KANIKO_CONTAINER.to_owned(),
                    exit_code: -1,
                    reason: String::new(),
                    message: String::new(),
                }),
        };
        let mut log = self.log_tail(&pod_name, &container, false).await;
        if log.trim().is_empty() {
            log = term_msg;
        }
        let step = req
            .service
            .steps
            .iter()
            .find(|s| step_container(&s.name) == container);
        if let Some(step) = step {
            append_log(
                &req.log,
                &format!("devd: step {:?} (init container {container}):", step.name),
            );
        }
        append_log(&req.log, &log);
        let what = match step {
            Some(step) => format!("step {:?} failed (exit {code})", step.name),
            None if container == FETCH_CONTAINER => "fetching the build context failed".into(),
            None => "Kaniko failed".into(),
        };
        let exit = if code >= 0 && step.is_none() {
            format!(
                " (container {container} exited with code {code}{})",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(", {why}")
                }
            )
        } else {
            String::new()
        };
        let last_error = tail(&log, LOG_TAIL_LINES)
            .into_iter()
            .rev()
            .find(|l| l.to_ascii_lowercase().contains("error"));
        Failure::with_log(
            format!(
                "build of {} failed: {what}{exit}; Job {name}: {reason}{}{}",
                req.service.name,
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                },
                last_error.map(|l| format!("; {l}")).unwrap_or_default()
            ),
            &log,
        )
    }
}

/// Append `text` to the build log at `path` (best effort).
pub(super) fn append_log(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = f.write_all(b"\n");
        }
    }
}

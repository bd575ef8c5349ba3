//! The workloads of the stack ([`super::stack`]): how each one stands
//! after an apply, and the pods of one.
//!
//! - After an apply, every workload of the render is read: one applied
//!   now (or still rolling out from before) is awaited like `kubectl
//!   rollout status` ([`super::state`]: Deployments, StatefulSets,
//!   DaemonSets, ReplicaSets; a Job until it completes or fails; a Pod
//!   until it runs and is ready; a CronJob is ready once applied), all of
//!   them together, up to `rollout_timeout`. While one waits, its current
//!   pods (a Deployment's newest ReplicaSet's) are read: a pod that will
//!   not come up (ImagePullBackOff, CrashLoopBackOff, a missing
//!   ConfigMap, …) fails it at once, with the reason and, for a container
//!   that crashed, its previous log's last lines; at the timeout, the
//!   pod's reason (`Unschedulable: …` from its PodScheduled condition, a
//!   transient ErrImagePull) or the rollout's says why.

use super::applyset::Resource;
use super::job::append_log;
use super::state::{
    PodProblem, RolloutState, daemonset_state, job_rollout, owned_by, pod_problem, pod_selector,
    pod_state, replicaset_state, rollout_state, statefulset_state,
};
use super::{KubernetesBackend, api_failure};
use crate::build::backend::stack::{WorkloadState, WorkloadStatus};
use crate::build::backend::tail;
use devd_protocol::event::LOG_TAIL_LINES;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A workload of the render to report on.
pub(super) struct Watched {
    /// `deployment/web`.
    pub(super) key: String,
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) res: Resource,
    /// Applied by this apply: its rollout is awaited. An unchanged one is
    /// read once (and awaited only if it is still rolling out).
    pub(super) changed: bool,
}

/// What one look at a workload found.
enum Seen {
    Ready,
    Failed {
        reason: String,
        log_tail: Vec<String>,
    },
    Waiting {
        why: String,
        /// A pod's reason that may still resolve (and its log, if it crashed).
        problem: Option<(String, Vec<String>)>,
    },
}

pub(super) fn from_value<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

impl KubernetesBackend {
    /// How every workload of `workloads` stands, awaiting those that roll
    /// out (see the module docs); in the order given.
    pub(super) async fn settle(&self, log: &Path, workloads: Vec<Watched>) -> Vec<WorkloadStatus> {
        let start = Instant::now();
        let timeout = self.s.rollout_timeout;
        let mut done: BTreeMap<usize, WorkloadStatus> = BTreeMap::new();
        let mut pending: Vec<(usize, Watched)> = workloads.into_iter().enumerate().collect();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for (i, w) in pending {
                let status = |state, reason: Option<String>, log_tail| WorkloadStatus {
                    key: w.key.clone(),
                    state,
                    reason,
                    log_tail,
                };
                match self.look_at(&w).await {
                    Seen::Ready => {
                        append_log(log, &format!("{} ready", w.key));
                        done.insert(i, status(WorkloadState::Ready, None, Vec::new()));
                    }
                    Seen::Failed { reason, log_tail } => {
                        append_log(log, &format!("{} failed: {reason}", w.key));
                        for l in &log_tail {
                            append_log(log, &format!("  | {l}"));
                        }
                        done.insert(i, status(WorkloadState::Failed, Some(reason), log_tail));
                    }
                    Seen::Waiting { why, problem } if start.elapsed() >= timeout => {
                        let (reason, log_tail) = match problem {
                            Some((p, tail)) => (p, tail),
                            None => (why, Vec::new()),
                        };
                        let reason = format!("not ready within {}s: {reason}", timeout.as_secs());
                        append_log(log, &format!("{} failed: {reason}", w.key));
                        done.insert(i, status(WorkloadState::Failed, Some(reason), log_tail));
                    }
                    Seen::Waiting { why, .. } => {
                        if !w.changed {
                            tracing::debug!(workload = %w.key, %why, "unchanged, still rolling out");
                        }
                        still.push((i, w));
                    }
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.s.poll_interval);
            }
        }
        done.into_values().collect()
    }

    /// One look at workload `w`.
    async fn look_at(&self, w: &Watched) -> Seen {
        let api: Api<DynamicObject> = self.dynamic(&w.res);
        let obj = match api.get_opt(&w.name).await {
            Ok(Some(o)) => serde_json::to_value(o).unwrap_or_default(),
            Ok(None) => {
                return Seen::Waiting {
                    why: format!("{} does not exist", w.key),
                    problem: None,
                };
            }
            Err(e) => {
                return Seen::Waiting {
                    why: api_failure(&format!("read {}", w.key), e).error,
                    problem: None,
                };
            }
        };
        let state = match w.kind.as_str() {
            "Deployment" => from_value::<Deployment>(&obj).map(|d| rollout_state(&d)),
            "StatefulSet" => from_value::<StatefulSet>(&obj).map(|s| statefulset_state(&s)),
            "DaemonSet" => from_value::<DaemonSet>(&obj).map(|d| daemonset_state(&d)),
            "ReplicaSet" => from_value::<ReplicaSet>(&obj).map(|r| replicaset_state(&r)),
            "Job" => from_value::<Job>(&obj).map(|j| job_rollout(&j)),
            "Pod" => from_value::<Pod>(&obj).map(|p| pod_state(&p)),
            // A CronJob runs later, on its schedule.
            _ => Some(RolloutState::Done),
        };
        let state = state.unwrap_or_else(|| {
            RolloutState::Failed(format!(
                "the API server's {} is not a valid {}",
                w.key, w.kind
            ))
        });
        if state == RolloutState::Done {
            return Seen::Ready;
        }
        let pods = self.workload_pods(&w.kind, &obj).await.unwrap_or_default();
        let problem = pods.iter().find_map(|p| {
            pod_problem(p).map(|pr| (p.metadata.name.clone().unwrap_or_default(), pr))
        });
        let explained = match &problem {
            Some((pod, pr)) => Some((pr.fatal, self.explain(pod, pr).await)),
            None => None,
        };
        match (state, explained) {
            (RolloutState::Failed(why), Some((_, (reason, log_tail)))) => Seen::Failed {
                reason: format!("{why}; {reason}"),
                log_tail,
            },
            (RolloutState::Failed(why), None) => Seen::Failed {
                reason: why,
                log_tail: Vec::new(),
            },
            (_, Some((true, (reason, log_tail)))) => Seen::Failed { reason, log_tail },
            (RolloutState::Waiting(why), problem) => Seen::Waiting {
                why,
                problem: problem.map(|(_, p)| p),
            },
            (RolloutState::Done, _) => Seen::Ready,
        }
    }

    /// A pod's problem as a reason naming the pod and container, and the
    /// container's last log lines if it crashed.
    async fn explain(&self, pod: &str, p: &PodProblem) -> (String, Vec<String>) {
        let reason = if p.container.is_empty() {
            format!("{} (pod {pod})", p.reason)
        } else {
            format!("{} (pod {pod}, container {})", p.reason, p.container)
        };
        let log_tail = if p.crashed {
            let log = self.log_tail(pod, &p.container, p.restarts > 0).await;
            tail(&log, LOG_TAIL_LINES)
        } else {
            Vec::new()
        };
        (reason, log_tail)
    }

    /// The current pods of workload `obj` of `kind`: a Deployment's newest
    /// ReplicaSet's, the pods another workload owns, a Pod itself.
    pub(super) async fn workload_pods(
        &self,
        kind: &str,
        obj: &Value,
    ) -> Result<Vec<Pod>, kube::Error> {
        match kind {
            "Pod" => Ok(from_value::<Pod>(obj).into_iter().collect()),
            "Deployment" => {
                let Some(d) = from_value::<Deployment>(obj) else {
                    return Ok(Vec::new());
                };
                let selector = pod_selector(&d);
                if selector.is_empty() {
                    return Ok(Vec::new());
                }
                let lp = ListParams::default().labels(&selector);
                let sets: Api<ReplicaSet> = self.api();
                let revision = |rs: &ReplicaSet| {
                    rs.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                        .and_then(|r| r.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let newest = sets
                    .list(&lp)
                    .await?
                    .items
                    .into_iter()
                    .filter(|rs| owned_by(&rs.metadata, d.metadata.uid.as_deref()))
                    .max_by_key(|rs| {
                        (
                            revision(rs),
                            rs.metadata.creation_timestamp.clone().map(|t| t.0),
                        )
                    });
                let Some(uid) = newest.and_then(|rs| rs.metadata.uid) else {
                    return Ok(Vec::new());
                };
                self.owned_pods(&selector, &uid).await
            }
            _ => {
                let Some(uid) = obj["metadata"]["uid"].as_str() else {
                    return Ok(Vec::new());
                };
                let selector = obj["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                self.owned_pods(&selector, uid).await
            }
        }
    }

    /// The pods matching `selector` (all, if empty) owned by `uid`.
    async fn owned_pods(&self, selector: &str, uid: &str) -> Result<Vec<Pod>, kube::Error> {
        let pods: Api<Pod> = self.api();
        let mut lp = ListParams::default();
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        Ok(pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| owned_by(&p.metadata, Some(uid)))
            .collect())
    }
}

//! Classifiers: where a Job, a pod or a rollout stands, read from the
//! objects the API server returns. Pure functions, no API calls.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};

/// Container states that will not get better by waiting.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// `sha256:<64 lower-case hex>`.
pub fn valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed { reason: String, message: String },
}

/// A Job's state from its conditions (`Complete`, `Failed`, and the
/// `FailureTarget` that precedes `Failed`), else from its counters.
pub fn job_state(job: &Job) -> JobState {
    let Some(st) = &job.status else {
        return JobState::Running;
    };
    for c in st.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobState::Succeeded,
            "Failed" | "FailureTarget" => {
                return JobState::Failed {
                    reason: c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                    message: c.message.clone().unwrap_or_default(),
                };
            }
            _ => {}
        }
    }
    if st.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if st.failed.unwrap_or(0) > 0 {
        JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "the build pod failed".into(),
        }
    } else {
        JobState::Running
    }
}

/// Where a rollout stands (the logic of `kubectl rollout status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    Done,
    Waiting(String),
    Failed(String),
}

/// The label selector (`k=v,k=v`) of a Deployment's pods; empty if it
/// has none.
pub fn pod_selector(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The rollout state of a Deployment.
pub fn rollout_state(d: &Deployment) -> RolloutState {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(st) = &d.status else {
        return RolloutState::Waiting("no status yet".into());
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return RolloutState::Waiting(format!(
            "waiting for the controller to observe generation {generation}"
        ));
    }
    for c in st.conditions.iter().flatten() {
        if c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return RolloutState::Failed(format!(
                "ProgressDeadlineExceeded: {}",
                c.message.clone().unwrap_or_default()
            ));
        }
        // The ReplicaSet controller cannot create pods (admission: Pod
        // Security, a ResourceQuota, a LimitRange): it would only end in
        // ProgressDeadlineExceeded, without the reason.
        if c.type_ == "ReplicaFailure" && c.status == "True" {
            return RolloutState::Failed(format!(
                "ReplicaFailure: {}: {}",
                c.reason.as_deref().unwrap_or("FailedCreate"),
                c.message.clone().unwrap_or_default()
            ));
        }
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if updated < want {
        return RolloutState::Waiting(format!("{updated} of {want} new replicas updated"));
    }
    if total > updated {
        return RolloutState::Waiting(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return RolloutState::Waiting(format!("{available} of {updated} new replicas available"));
    }
    RolloutState::Done
}

/// The message of the newest `FailedCreate` event of object `kind`/`name`
/// among `events` (checked here too: not every server applies field
/// selectors).
pub fn failed_create(events: &[Event], kind: &str, name: &str) -> Option<String> {
    events
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                && e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
        })
        .max_by_key(|e| {
            e.last_timestamp
                .clone()
                .map(|t| t.0)
                .or(e.event_time.clone().map(|t| t.0))
        })
        .map(|e| e.message.clone().unwrap_or_else(|| "FailedCreate".into()))
}

/// The image of container `name` in a Deployment's pod template.
pub fn container_image(d: &Deployment, name: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?
        .image
        .clone()
}

/// A container of a pod that has terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub container: String,
    pub exit_code: i32,
    /// e.g. `Completed`, `Error`, `OOMKilled` (empty when not given).
    pub reason: String,
    /// The termination message: Kaniko's image digest, or the end of the
    /// log (`FallbackToLogsOnError`) when it failed without writing one.
    pub message: String,
}

/// The terminated init containers (`init`) or main containers of a pod.
pub fn terminated(pod: &Pod, init: bool) -> Vec<Terminated> {
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    let list = if init {
        &st.init_container_statuses
    } else {
        &st.container_statuses
    };
    list.iter()
        .flatten()
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some(Terminated {
                container: c.name.clone(),
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_default(),
                message: t.message.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// A container of a pod waiting in a state that will not resolve by
/// waiting longer (see `FATAL_WAITING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub container: String,
    /// e.g. `ImagePullBackOff`.
    pub reason: String,
    pub message: String,
}

/// The first container of the pod (init containers first) that is stuck.
pub fn stuck(pod: &Pod) -> Option<Stuck> {
    let st = pod.status.as_ref()?;
    st.init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone().unwrap_or_default();
            FATAL_WAITING.contains(&reason.as_str()).then(|| Stuck {
                container: c.name.clone(),
                reason,
                message: w.message.clone().unwrap_or_default(),
            })
        })
}

/// Whether object `meta` has an owner reference to the object with `uid`.
pub fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    uid: Option<&str>,
) -> bool {
    let Some(uid) = uid else { return false };
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

pub(super) fn has_label(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
    v: &str,
) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(k))
        .is_some_and(|x| x == v)
}

/// Where a StatefulSet's rollout stands (`kubectl rollout status`: every
/// replica ready at the update revision, or up to the partition).
pub fn statefulset_state(s: &StatefulSet) -> RolloutState {
    let Some(spec) = &s.spec else {
        return RolloutState::Waiting("no spec".into());
    };
    let strategy = spec.update_strategy.as_ref();
    if strategy
        .and_then(|u| u.type_.as_deref())
        .is_some_and(|t| t != "RollingUpdate")
    {
        // OnDelete: nothing rolls until pods are deleted.
        return RolloutState::Done;
    }
    let Some(st) = &s.status else {
        return RolloutState::Waiting("no status yet".into());
    };
    let generation = s.metadata.generation.unwrap_or(0);
    if st.observed_generation.unwrap_or(0) == 0 || generation > st.observed_generation.unwrap_or(0)
    {
        return RolloutState::Waiting("waiting for the spec update to be observed".into());
    }
    let want = spec.replicas.unwrap_or(1);
    let ready = st.ready_replicas.unwrap_or(0);
    if ready < want {
        return RolloutState::Waiting(format!("{ready} of {want} pods ready"));
    }
    let partition = strategy
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        let updated = st.updated_replicas.unwrap_or(0);
        return if updated < want - partition {
            RolloutState::Waiting(format!(
                "{updated} of {} pods updated (partition {partition})",
                want - partition
            ))
        } else {
            RolloutState::Done
        };
    }
    if st.update_revision != st.current_revision {
        return RolloutState::Waiting(format!(
            "rolling update to revision {} in progress",
            st.update_revision.as_deref().unwrap_or("?")
        ));
    }
    RolloutState::Done
}

/// Where a DaemonSet's rollout stands (`kubectl rollout status`).
pub fn daemonset_state(d: &DaemonSet) -> RolloutState {
    if d.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_some_and(|t| t != "RollingUpdate")
    {
        return RolloutState::Done;
    }
    let Some(st) = &d.status else {
        return RolloutState::Waiting("no status yet".into());
    };
    if d.metadata.generation.unwrap_or(0) > st.observed_generation.unwrap_or(0) {
        return RolloutState::Waiting("waiting for the spec update to be observed".into());
    }
    let desired = st.desired_number_scheduled;
    let updated = st.updated_number_scheduled.unwrap_or(0);
    if updated < desired {
        return RolloutState::Waiting(format!("{updated} of {desired} pods updated"));
    }
    let available = st.number_available.unwrap_or(0);
    if available < desired {
        return RolloutState::Waiting(format!("{available} of {desired} pods available"));
    }
    RolloutState::Done
}

/// Whether a ReplicaSet's pods are all ready.
pub fn replicaset_state(r: &ReplicaSet) -> RolloutState {
    let Some(st) = &r.status else {
        return RolloutState::Waiting("no status yet".into());
    };
    if r.metadata.generation.unwrap_or(0) > st.observed_generation.unwrap_or(0) {
        return RolloutState::Waiting("waiting for the spec update to be observed".into());
    }
    let want = r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = st.ready_replicas.unwrap_or(0);
    if ready < want {
        return RolloutState::Waiting(format!("{ready} of {want} pods ready"));
    }
    RolloutState::Done
}

/// A Job of the stack: done when it completed, failed when it failed.
pub fn job_rollout(job: &Job) -> RolloutState {
    match job_state(job) {
        JobState::Succeeded => RolloutState::Done,
        JobState::Running => RolloutState::Waiting("running".into()),
        JobState::Failed { reason, message } if message.is_empty() => RolloutState::Failed(reason),
        JobState::Failed { reason, message } => {
            RolloutState::Failed(format!("{reason}: {message}"))
        }
    }
}

/// A bare Pod of the stack: done when it runs and is ready (or completed).
pub fn pod_state(p: &Pod) -> RolloutState {
    let Some(st) = &p.status else {
        return RolloutState::Waiting("no status yet".into());
    };
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match st.phase.as_deref() {
        Some("Succeeded") => RolloutState::Done,
        Some("Running") if ready => RolloutState::Done,
        Some("Failed") => RolloutState::Failed(format!(
            "the pod failed: {}",
            st.message
                .clone()
                .or_else(|| st.reason.clone())
                .unwrap_or_default()
        )),
        phase => RolloutState::Waiting(format!(
            "pod {}{}",
            phase.unwrap_or("Pending"),
            if ready { "" } else { ", not ready" }
        )),
    }
}

/// Container waiting reasons of a pod that is not coming up.
const FAILING_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// Why a pod of a workload does not come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// The container (empty: the pod as a whole, e.g. unschedulable).
    pub container: String,
    /// `ImagePullBackOff: Back-off pulling image "…"`, `Unschedulable: 0/3
    /// nodes are available: …`.
    pub reason: String,
    /// Waiting longer will not help (an image that cannot be pulled, a
    /// container that keeps crashing, a missing ConfigMap). A transient
    /// `ErrImagePull` or an unschedulable pod (a cluster autoscaler may
    /// add a node) are only reported when the wait times out.
    pub fatal: bool,
    /// The container ran and exited: its previous log says why.
    pub crashed: bool,
    pub restarts: i32,
}

/// The first reason (init containers first, then containers, then
/// scheduling) why pod `p` is not coming up.
pub fn pod_problem(p: &Pod) -> Option<PodProblem> {
    let st = p.status.as_ref()?;
    let containers = st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten());
    for c in containers {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        if !FAILING_WAITING.contains(&reason.as_str()) {
            continue;
        }
        let mut text = match w.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("{reason}: {m}"),
            None => reason.clone(),
        };
        let last_exit = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        if let (Some(code), "CrashLoopBackOff") = (last_exit, reason.as_str()) {
            text.push_str(&format!(" (last exit code {code})"));
        }
        return Some(PodProblem {
            container: c.name.clone(),
            fatal: reason != "ErrImagePull",
            crashed: matches!(reason.as_str(), "CrashLoopBackOff" | "RunContainerError"),
            reason: text,
            restarts: c.restart_count,
        });
    }
    st.conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| PodProblem {
            container: String::new(),
            reason: format!("Unschedulable: {}", c.message.clone().unwrap_or_default()),
            fatal: false,
            crashed: false,
            restarts: 0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn job(status: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "status": status})).unwrap()
    }

    #[test]
    fn job_states_include_failures() {
        assert_eq!(job_state(&job(json!({"active": 1}))), JobState::Running);
        assert_eq!(
            job_state(&job(json!({"conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"}
            ]}))),
            JobState::Succeeded
        );
        assert_eq!(
            job_state(&job(json!({"failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"
            }]}))),
            JobState::Failed {
                reason: "DeadlineExceeded".into(),
                message: "Job was active longer than specified deadline".into()
            }
        );
        assert!(matches!(
            job_state(&job(
                json!({"conditions": [{"type": "FailureTarget", "status": "True"}]})
            )),
            JobState::Failed { .. }
        ));
        assert_eq!(
            job_state(&job(
                json!({"conditions": [{"type": "Failed", "status": "False"}]})
            )),
            JobState::Running
        );
        assert!(matches!(
            job_state(&job(json!({"failed": 1}))),
            JobState::Failed { .. }
        ));
        assert_eq!(
            job_state(&job(json!({"succeeded": 1}))),
            JobState::Succeeded
        );
    }

    fn deployment(generation: i64, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn rollout_states_follow_kubectl() {
        let waiting = |s: RolloutState| matches!(s, RolloutState::Waiting(_));
        assert!(waiting(rollout_state(&deployment(
            2,
            json!({"observedGeneration": 1})
        ))));
        assert!(waiting(rollout_state(&deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1})
        ))));
        assert!(waiting(rollout_state(&deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2})
        ))));
        assert!(waiting(rollout_state(&deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1})
        ))));
        assert_eq!(
            rollout_state(&deployment(
                2,
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2})
            )),
            RolloutState::Done
        );
        assert!(matches!(
            rollout_state(&deployment(2, json!({"observedGeneration": 2, "conditions": [{
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"web-1\" has timed out progressing."
            }]}))),
            RolloutState::Failed(m) if m.contains("timed out")
        ));
    }

    fn of<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn statefulsets_daemonsets_replicasets_roll_out_as_kubectl_says() {
        let waiting = |s: RolloutState| matches!(s, RolloutState::Waiting(_));
        let sts = |spec: Value, status: Value| -> StatefulSet {
            of(json!({"metadata": {"name": "db", "generation": 2},
                "spec": spec, "status": status}))
        };
        let spec = json!({"replicas": 2, "selector": {}, "serviceName": "db", "template": {}});
        let done = json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 2,
            "currentRevision": "db-2", "updateRevision": "db-2"});
        assert_eq!(
            statefulset_state(&sts(spec.clone(), done.clone())),
            RolloutState::Done
        );
        let mut old = done.clone();
        old["observedGeneration"] = json!(1);
        assert!(waiting(statefulset_state(&sts(spec.clone(), old))));
        let mut one_ready = done.clone();
        one_ready["readyReplicas"] = json!(1);
        assert!(waiting(statefulset_state(&sts(spec.clone(), one_ready))));
        let mut rolling = done.clone();
        rolling["currentRevision"] = json!("db-1");
        assert!(waiting(statefulset_state(&sts(
            spec.clone(),
            rolling.clone()
        ))));
        // A partition: only the pods above it must be updated.
        let mut partitioned = spec.clone();
        partitioned["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
        rolling["updatedReplicas"] = json!(1);
        assert_eq!(
            statefulset_state(&sts(partitioned, rolling.clone())),
            RolloutState::Done
        );
        let mut on_delete = spec.clone();
        on_delete["updateStrategy"] = json!({"type": "OnDelete"});
        assert_eq!(
            statefulset_state(&sts(on_delete, json!({}))),
            RolloutState::Done
        );

        let ds = |status: Value| -> DaemonSet {
            of(json!({"metadata": {"name": "agent", "generation": 3},
                "spec": {"selector": {}, "template": {}}, "status": status}))
        };
        let full = json!({"observedGeneration": 3, "desiredNumberScheduled": 2,
            "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2,
            "updatedNumberScheduled": 2, "numberAvailable": 2});
        assert_eq!(daemonset_state(&ds(full.clone())), RolloutState::Done);
        let mut behind = full.clone();
        behind["updatedNumberScheduled"] = json!(1);
        assert!(waiting(daemonset_state(&ds(behind))));
        let mut unavailable = full.clone();
        unavailable["numberAvailable"] = json!(1);
        assert!(waiting(daemonset_state(&ds(unavailable))));

        let rs = |ready: i32| -> ReplicaSet {
            of(json!({"metadata": {"name": "r", "generation": 1},
                "spec": {"replicas": 2, "selector": {}},
                "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": ready}}))
        };
        assert_eq!(replicaset_state(&rs(2)), RolloutState::Done);
        assert!(waiting(replicaset_state(&rs(1))));
    }

    #[test]
    fn jobs_and_pods_of_the_stack() {
        assert_eq!(
            job_rollout(&job(json!({"succeeded": 1}))),
            RolloutState::Done
        );
        assert!(matches!(
            job_rollout(&job(json!({"active": 1}))),
            RolloutState::Waiting(_)
        ));
        assert_eq!(
            job_rollout(&job(
                json!({"conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
            )),
            RolloutState::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            )
        );
        let pod =
            |status: Value| -> Pod { of(json!({"metadata": {"name": "p"}, "status": status})) };
        assert_eq!(
            pod_state(&pod(json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}))),
            RolloutState::Done
        );
        assert!(matches!(
            pod_state(&pod(json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}]}))),
            RolloutState::Waiting(_)
        ));
        assert_eq!(
            pod_state(&pod(json!({"phase": "Succeeded"}))),
            RolloutState::Done
        );
        assert!(matches!(
            pod_state(&pod(json!({"phase": "Failed", "message": "OOMKilled"}))),
            RolloutState::Failed(m) if m.contains("OOMKilled")
        ));
    }

    #[test]
    fn pod_problems_name_the_reason_and_whether_waiting_helps() {
        let pod =
            |status: Value| -> Pod { of(json!({"metadata": {"name": "p"}, "status": status})) };
        let container = |name: &str, state: Value, restarts: i32| {
            json!({"name": name, "image": "", "imageID": "", "ready": false,
                "restartCount": restarts, "state": state,
                "lastState": {"terminated": {"exitCode": 2}}})
        };
        assert_eq!(pod_problem(&pod(json!({"phase": "Running"}))), None);
        let pull = pod_problem(&pod(json!({"containerStatuses": [
            container("ok", json!({"running": {}}), 0),
            container("web", json!({"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"web@sha256:00\""}}), 0)]})))
        .unwrap();
        assert_eq!(pull.container, "web");
        assert_eq!(
            pull.reason,
            "ImagePullBackOff: Back-off pulling image \"web@sha256:00\""
        );
        assert!(pull.fatal && !pull.crashed);
        // The first pull error may pass; only the back-off is final.
        let err = pod_problem(&pod(json!({"containerStatuses": [
            container("web", json!({"waiting": {"reason": "ErrImagePull"}}), 0)]})))
        .unwrap();
        assert!(!err.fatal);
        // Init containers first.
        let crash = pod_problem(&pod(json!({
            "initContainerStatuses": [container("migrate",
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}), 4)],
            "containerStatuses": [container("web", json!({"waiting": {"reason": "PodInitializing"}}), 0)]})))
        .unwrap();
        assert_eq!(crash.container, "migrate");
        assert_eq!(
            crash.reason,
            "CrashLoopBackOff: back-off 10s (last exit code 2)"
        );
        assert!(crash.fatal && crash.crashed);
        assert_eq!(crash.restarts, 4);
        let unschedulable = pod_problem(&pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient memory."}]})))
        .unwrap();
        assert_eq!(
            unschedulable.reason,
            "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
        );
        assert!(!unschedulable.fatal);
        // Still creating: no problem yet.
        assert_eq!(
            pod_problem(&pod(json!({"containerStatuses": [
                container("web", json!({"waiting": {"reason": "ContainerCreating"}}), 0)]}))),
            None
        );
    }
}

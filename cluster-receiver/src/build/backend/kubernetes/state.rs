//! Classifiers: where a Job, a pod or a rollout stands, read from the
//! objects the API server returns. Pure functions, no API calls.

use k8s_openapi::api::apps::v1::Deployment;
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
}

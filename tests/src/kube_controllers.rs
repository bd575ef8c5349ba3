//! The controllers [`crate::kube_cluster`]'s played cluster runs besides its
//! kubelet, against the kmock emulator (which runs none):
//! - the Deployment and ReplicaSet controllers: a ReplicaSet per pod
//!   template (named `{deployment}-{hash}`, owned by the Deployment), pods
//!   owned by it (`{replicaset}-{n}`, Running and ready, with a log per
//!   container in the annotation the emulator serves logs from), the old
//!   ReplicaSets' pods removed once the new ones run. A pod the emulator's
//!   admission refuses (Pod Security, ResourceQuota) turns into the
//!   Deployment's `ReplicaFailure` condition with the refusal, as the real
//!   controller reports it;
//! - the Job controller's `FailedCreate` event, for a build pod refused.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The refusal message of an admission error, if `e` is one (HTTP 403).
pub fn refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if s.code == 403 => Some(s.message.clone()),
        _ => None,
    }
}

/// Record the Job controller's `FailedCreate` event for Job `job`, whose
/// pod admission refused with `message`.
pub async fn failed_create_event(
    client: &kube::Client,
    ns: &str,
    job: &str,
    message: &str,
) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{job}.failedcreate"), "namespace": ns},
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": job, "namespace": ns},
        "reason": "FailedCreate", "type": "Warning",
        "message": format!("Error creating: {message}"),
        "source": {"component": "job-controller"},
        "lastTimestamp": now_rfc3339(),
    }))?;
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}

fn now_rfc3339() -> String {
    // RFC 3339 without a time crate: the emulator only stores it.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A label value from the first 10 hex digits of the template's blake3.
fn template_hash(template: &Value) -> String {
    blake3::hash(template.to_string().as_bytes()).to_hex()[..10].to_owned()
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// What a step of the Deployment controller did.
pub enum Rollout {
    /// Every pod of the current template runs: (deployment, generation, image).
    Done(String, i64, String),
    /// Admission refused a pod: the Deployment says so in `ReplicaFailure`.
    Refused,
}

/// Roll Deployment `d` out to its current template: its ReplicaSet, its
/// pods, the old pods removed, the status reported.
pub async fn roll_out(client: &kube::Client, ns: &str, d: &Deployment) -> anyhow::Result<Rollout> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(1);
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let template = serde_json::to_value(&spec.template)?;
    let hash = template_hash(&template);
    let rs_name = format!("{name}-{hash}");
    let mut labels = template["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!(hash);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let rs = match sets.get_opt(&rs_name).await? {
        Some(rs) => rs,
        None => {
            let mut selector = serde_json::to_value(&spec.selector)?;
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"] = labels.clone();
            let rs: ReplicaSet = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                    "ownerReferences": [owner("apps/v1", "Deployment", &name, &uid)]},
                "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
            }))?;
            sets.create(&PostParams::default(), &rs).await?
        }
    };
    let rs_uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let image = template["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for i in 0..replicas {
        let pod_name = format!("{rs_name}-{i}");
        if pods.get_opt(&pod_name).await?.is_some() {
            continue;
        }
        let containers = template["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let annotations: serde_json::Map<String, Value> = containers
            .iter()
            .map(|c| {
                let c = c["name"].as_str().unwrap_or_default();
                (
                    format!("devd.test/log.{c}"),
                    json!(format!("log of {c} in {pod_name}\n")),
                )
            })
            .collect();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({"name": c["name"], "ready": true, "restartCount": 0,
                "image": c["image"], "imageID": "", "state": {"running": {}}})
            })
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner("apps/v1", "ReplicaSet", &rs_name, &rs_uid)]},
            "spec": template["spec"],
            "status": {"phase": "Running", "containerStatuses": statuses},
        }))?;
        if let Err(e) = pods.create(&PostParams::default(), &pod).await {
            let Some(message) = refusal(&e) else {
                return Err(e.into());
            };
            let status = json!({"status": {
                "observedGeneration": generation,
                "updatedReplicas": 0,
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                     "message": message},
                ],
            }});
            deployments
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            return Ok(Rollout::Refused);
        }
    }
    // The old ReplicaSets' pods go once the new ones run.
    let selector = spec
        .selector
        .match_labels
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let old_sets: Vec<String> = sets
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|s| {
            s.metadata.uid.as_deref() != Some(rs_uid.as_str())
                && s.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
        })
        .filter_map(|s| s.metadata.uid)
        .collect();
    for p in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let old = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| old_sets.contains(&o.uid));
        if old {
            let n = p.metadata.name.clone().unwrap_or_default();
            pods.delete(&n, &DeleteParams::default()).await?;
        }
    }
    let status = json!({"status": {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }});
    deployments
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(Rollout::Done(name, generation, image))
}

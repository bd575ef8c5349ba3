//! What a backend gets to run the repository's own manifests (`[deploy]`),
//! and what it reports back: the rendered objects, already namespaced and
//! with devd's images in them (`crate::build::render`), and per workload
//! whether it runs.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Field manager of every server-side apply devd makes, and the ApplySet
/// tooling name.
pub const FIELD_MANAGER: &str = "devd";

/// One object of the render, as it is applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackObject {
    /// `apps/v1`, `v1`, …
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None`: cluster-scoped (only CustomResourceDefinitions are allowed).
    pub namespace: Option<String>,
    /// Where it came from: the manifest file (`k8s/web.yaml`) or the
    /// kustomization (`kustomize deploy/overlays/dev`).
    pub source: String,
    /// The complete object (`apiVersion`, `kind`, `metadata`, …).
    pub body: serde_json::Value,
}

impl StackObject {
    /// `kind/name`, as kubectl names objects.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }

    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
    }

    /// A workload with a pod template (or a Pod).
    pub fn is_workload(&self) -> bool {
        WORKLOAD_KINDS.contains(&self.kind.as_str())
    }
}

/// Kinds whose pods run containers: images are replaced in these.
pub const WORKLOAD_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "Pod",
];

/// The whole render, to apply.
#[derive(Debug, Clone)]
pub struct Stack {
    pub objects: Vec<StackObject>,
    /// The image each devd-built service runs as, by service name
    /// (`repo@sha256:…`).
    pub images: BTreeMap<String, String>,
    /// The workloads (`kind/name`) that run each service's image.
    pub runs: BTreeMap<String, Vec<String>>,
    /// File the backend appends what it did to.
    pub log: PathBuf,
}

/// How a workload of the render stands after an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    /// Its pods run the applied version.
    Ready,
    /// Its pods fail (the reason and log tail say how).
    Failed,
    /// The backend cannot run this kind (local: a kind podman does not
    /// play); a warning named it.
    Skipped,
}

/// One workload (`kind/name`) of the render after an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadStatus {
    /// `deployment/web`.
    pub key: String,
    pub state: WorkloadState,
    /// Why it failed or was skipped (`ImagePullBackOff: …`,
    /// `CrashLoopBackOff`, `Unschedulable: …`).
    pub reason: Option<String>,
    /// The failing container's last log lines.
    pub log_tail: Vec<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackReport {
    pub workloads: Vec<WorkloadStatus>,
    /// Where each Service of the render answers, by its name: a URL that
    /// works on this machine (local) or in the cluster, or through the
    /// Ingress.
    pub urls: BTreeMap<String, String>,
    /// One line per object created, changed or removed (`deployment/web
    /// configured`), as kubectl prints them.
    pub changes: Vec<String>,
    /// What the backend could not do and left out (a kind it cannot run).
    pub warnings: Vec<String>,
}

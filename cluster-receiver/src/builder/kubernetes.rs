//! The Kubernetes backend: a Kaniko Job per build, server-side apply per
//! deploy, in one namespace.
//!
//! Build (one Job per build, `backoffLimit: 0`):
//! - The receiver's volume is ReadWriteOnce, so the build pod cannot mount
//!   the context snapshot. The receiver packs it and offers it over its HTTP
//!   server under a one-build random token ([`crate::http`]); the Job's
//!   init container runs `devd-receiver fetch-context` (the receiver's own
//!   image, as a non-root user) to download it, check its blake3 digest and
//!   unpack it into an emptyDir that the Kaniko container reads as
//!   `--context=dir:///workspace`.
//! - Kaniko pushes `REPO:TAG` and writes the manifest digest to
//!   `/dev/termination-log` (`--digest-file`); the backend reads it from the
//!   Kaniko container's `terminated.message` and checks it is
//!   `sha256:<64 hex>`. `terminationMessagePolicy: FallbackToLogsOnError`
//!   puts the log's end there when Kaniko fails without writing it.
//! - Registry credentials come from a docker-config Secret mounted at
//!   `/kaniko/.docker`; requests and limits, `activeDeadlineSeconds` and
//!   `ttlSecondsAfterFinished` come from the configuration.
//! - The Job is polled (with backoff) until it is Complete or Failed;
//!   `kube`'s `is_job_completed` ignores failures, so the conditions are
//!   read here. A pod that cannot start (image pull back-off, a missing
//!   Secret) fails the build at once and the Job is deleted. On failure the
//!   error names the reason and the log tail comes from the pod log API
//!   (the init container's when the context fetch failed, else Kaniko's).
//!
//! Deploy (server-side apply, field manager `devd`, forced):
//! - A run spec: a Deployment, a Service (expose internal/external) and an
//!   Ingress with host `{service}.{namespace}.{domain}` (external), all
//!   labelled `app.kubernetes.io/managed-by=devd`. The rolling update keeps
//!   old pods until new ones are ready (`maxUnavailable: 0`).
//! - An existing Deployment: an apply that sets only the named container's
//!   image (devd owns that one field).
//! - Then the rollout is awaited like `kubectl rollout status` does; on a
//!   failure (`ProgressDeadlineExceeded`, timeout) the previous image is
//!   applied back, so what ran before keeps running.
//!
//! Images are always referenced as `repo@sha256:…`.

use super::registry::{Credentials, RegistryClient};
use super::{Backend, BuildRequest, Deployment as Deployed, Failure, tail};
use crate::http::ContextShelf;
use devd_protocol::event::LOG_TAIL_LINES;
use devd_sync::catalog::{Expose, Run, Service};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server-side-apply field manager.
pub const FIELD_MANAGER: &str = "devd";
pub use devd_sync::labels::{LABEL_CONTEXT, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_WORKSPACE};
/// The whole context digest and the generation, on the Job.
pub const ANNOTATION_CONTEXT: &str = "dev.devd/context-digest";
pub const ANNOTATION_GENERATION: &str = "dev.devd/generation";
/// The build pod's containers.
pub const KANIKO_CONTAINER: &str = "kaniko";
pub const FETCH_CONTAINER: &str = "fetch-context";
/// Build steps run as init containers named `step-NAME`, after the fetch.
pub const STEP_CONTAINER_PREFIX: &str = "step-";
/// Where the build context is unpacked and read.
pub const WORKSPACE_DIR: &str = "/workspace";
/// Where Kaniko looks for `config.json` with registry credentials.
pub const DOCKER_CONFIG_DIR: &str = "/kaniko/.docker";
/// The uid the fetcher runs as (non-root; the emptyDir is world-writable).
pub const FETCH_UID: i64 = 65532;
/// The default builder: the original `gcr.io/kaniko-project/executor` was
/// archived in June 2025 (last release v1.24.0); this is the community
/// fork that continues its releases (osscontainertools/kaniko).
pub const DEFAULT_KANIKO_IMAGE: &str = "ghcr.io/osscontainertools/kaniko:v1.28.4";

/// Extra time past `activeDeadlineSeconds` before the backend gives up on
/// a Job whose controller never marked it failed.
const DEADLINE_GRACE: Duration = Duration::from_secs(60);
/// How long API errors are retried while waiting for a Job.
const API_ERROR_PATIENCE: Duration = Duration::from_secs(120);
/// Container states that will not get better by waiting.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// Resources of the Kaniko container and the size of its workspace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildResources {
    #[serde(default = "d_cpu_request")]
    pub cpu_request: String,
    #[serde(default = "d_memory_request")]
    pub memory_request: String,
    #[serde(default = "d_cpu_limit")]
    pub cpu_limit: String,
    #[serde(default = "d_memory_limit")]
    pub memory_limit: String,
    /// `sizeLimit` of the emptyDir holding the context.
    #[serde(default = "d_workspace_size")]
    pub workspace_size_limit: String,
}

fn d_cpu_request() -> String {
    "500m".into()
}
fn d_memory_request() -> String {
    "1Gi".into()
}
fn d_cpu_limit() -> String {
    "2".into()
}
fn d_memory_limit() -> String {
    "4Gi".into()
}
fn d_workspace_size() -> String {
    "2Gi".into()
}

impl Default for BuildResources {
    fn default() -> Self {
        Self {
            cpu_request: d_cpu_request(),
            memory_request: d_memory_request(),
            cpu_limit: d_cpu_limit(),
            memory_limit: d_memory_limit(),
            workspace_size_limit: d_workspace_size(),
        }
    }
}

/// Everything the backend needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// Registry (`host[:port]`) images without a registry host go under.
    pub registry: String,
    /// Plain HTTP to the registry (Kaniko `--insecure --skip-tls-verify`).
    pub insecure_registry: bool,
    pub kaniko_image: String,
    /// The image with `devd-receiver` (the init container).
    pub fetcher_image: String,
    /// Base URL build pods reach the receiver's HTTP server at.
    pub context_url: String,
    /// Secret of type `kubernetes.io/dockerconfigjson` for Kaniko.
    pub registry_secret: Option<String>,
    /// The same credentials as a file, for the receiver's registry lookups.
    pub docker_config: Option<PathBuf>,
    /// Service account of the build pod (default: the namespace's default).
    pub service_account: Option<String>,
    /// More Kaniko flags, e.g. `--cache=true`.
    pub kaniko_args: Vec<String>,
    pub resources: BuildResources,
    pub active_deadline_seconds: u32,
    pub ttl_seconds_after_finished: u32,
    /// Ingress hosts are `{service}.{namespace}.{domain}`.
    pub domain: Option<String>,
    /// URL reported for every service, with `{service}`, `{namespace}`,
    /// `{domain}`, `{port}`, `{workspace}` filled in.
    pub url_template: Option<String>,
    pub ingress_class: Option<String>,
    pub rollout_timeout: Duration,
    /// The longest pause between two polls of a Job or Deployment.
    pub poll_interval: Duration,
    /// DevBuild resources kept per service (0: record none).
    pub devbuilds_per_service: usize,
}

impl Settings {
    /// Settings with defaults for everything but the essentials (tests).
    pub fn new(namespace: &str, registry: &str, fetcher_image: &str, context_url: &str) -> Self {
        Self {
            namespace: namespace.into(),
            registry: registry.into(),
            insecure_registry: false,
            kaniko_image: DEFAULT_KANIKO_IMAGE.into(),
            fetcher_image: fetcher_image.into(),
            context_url: context_url.trim_end_matches('/').into(),
            registry_secret: None,
            docker_config: None,
            service_account: None,
            kaniko_args: Vec::new(),
            resources: BuildResources::default(),
            active_deadline_seconds: 900,
            ttl_seconds_after_finished: 600,
            domain: None,
            url_template: None,
            ingress_class: None,
            rollout_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            devbuilds_per_service: super::devbuild::DEFAULT_KEEP,
        }
    }
}

/// The Kubernetes backend.
pub struct KubernetesBackend {
    client: Client,
    s: Settings,
    shelf: Arc<ContextShelf>,
    credentials: HashMap<String, Credentials>,
    registries: Mutex<HashMap<String, Arc<RegistryClient>>>,
}

/// A label value from free text: at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The Job name of a build: `devd-{service}-{generation}-{context[..8]}`,
/// the service part shortened to keep it within 63 characters.
pub fn job_name(service: &str, generation: u64, context: &str) -> String {
    let short = &context[..8.min(context.len())];
    let fixed = format!("-{generation}-{short}");
    let room = 63 - "devd-".len() - fixed.len();
    let svc: String = service.chars().take(room).collect();
    format!("devd-{}{fixed}", svc.trim_end_matches('-'))
}

/// `sha256:<64 lower-case hex>`.
pub fn valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn api_failure(what: &str, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 403 => Failure::new(format!(
            "Kubernetes refused to {what}: {} — grant the receiver's service account this permission (see manifests/ RBAC)",
            s.message
        )),
        kube::Error::Api(s) => Failure::new(format!(
            "Kubernetes API: cannot {what}: {} ({}, HTTP {})",
            s.message, s.reason, s.code
        )),
        _ => Failure::new(format!(
            "Kubernetes API: cannot {what}: {e} (is the API server reachable?)"
        )),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Registry credentials per host from a docker config JSON
/// (`{"auths": {"host": {"auth": base64("user:pass")}}}`).
pub fn parse_docker_config(text: &str) -> Result<HashMap<String, Credentials>, String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let f: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (key, e) in f.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let creds = match (e.auth, e.username, e.password) {
            (_, Some(u), Some(p)) => Credentials {
                username: u,
                password: p,
            },
            (Some(a), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
                let raw =
                    String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                let (u, p) = raw
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                Credentials {
                    username: u.into(),
                    password: p.into(),
                }
            }
            _ => continue,
        };
        out.insert(host, creds);
    }
    Ok(out)
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

/// The init container that runs build step `step`.
pub fn step_container(step: &str) -> String {
    format!("{STEP_CONTAINER_PREFIX}{step}")
}

/// A terminated container of a pod: (name, exit code, reason, message).
fn terminated(pod: &Pod, init: bool) -> Vec<(String, i32, String, String)> {
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
            Some((
                c.name.clone(),
                t.exit_code,
                t.reason.clone().unwrap_or_default(),
                t.message.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

/// A container of the pod stuck in a state that will not resolve:
/// (container, reason, message).
fn fatal_waiting(pod: &Pod) -> Option<(String, String, String)> {
    let st = pod.status.as_ref()?;
    st.init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone().unwrap_or_default();
            FATAL_WAITING.contains(&reason.as_str()).then(|| {
                (
                    c.name.clone(),
                    reason,
                    w.message.clone().unwrap_or_default(),
                )
            })
        })
}

fn has_label(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
    v: &str,
) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(k))
        .is_some_and(|x| x == v)
}

impl KubernetesBackend {
    /// A backend talking to the cluster through `client`, offering build
    /// contexts on `shelf`. Reads the docker config file, if any.
    pub fn new(client: Client, s: Settings, shelf: Arc<ContextShelf>) -> Result<Self, Failure> {
        let credentials = match &s.docker_config {
            None => HashMap::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::new(format!(
                        "cannot read the docker config {}: {e}",
                        p.display()
                    ))
                })?;
                parse_docker_config(&text).map_err(|e| {
                    Failure::new(format!("{} is not a docker config JSON: {e}", p.display()))
                })?
            }
        };
        Ok(Self {
            client,
            s,
            shelf,
            credentials,
            registries: Mutex::new(HashMap::new()),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.s.namespace)
    }

    fn registry_for(&self, repository: &str) -> Arc<RegistryClient> {
        let host = super::registry_host(repository).to_owned();
        let mut map = self.registries.lock().expect("registry clients");
        map.entry(host.clone())
            .or_insert_with(|| {
                let insecure = if self.s.insecure_registry {
                    vec![host.clone()]
                } else {
                    Vec::new()
                };
                Arc::new(RegistryClient::new(
                    insecure,
                    self.credentials.get(&host).cloned(),
                ))
            })
            .clone()
    }

    fn labels(&self, workspace: &str, service: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), "devd".to_owned()),
            (LABEL_SERVICE.to_owned(), label_value(service)),
            (LABEL_WORKSPACE.to_owned(), label_value(workspace)),
        ])
    }

    /// The Job that builds `req`, fetching its context from `url` (an
    /// archive with blake3 `blake3`).
    pub fn job_spec(&self, req: &BuildRequest, name: &str, url: &str, blake3: &str) -> Value {
        let s = &self.s;
        let mut labels = self.labels(&req.workspace, &req.service.name);
        labels.insert(
            LABEL_CONTEXT.into(),
            label_value(&req.context.digest[..40.min(req.context.digest.len())]),
        );
        let mut args = vec![
            format!("--dockerfile={WORKSPACE_DIR}/{}", req.context.dockerfile),
            format!("--context=dir://{WORKSPACE_DIR}"),
            format!("--destination={}:{}", req.repository, req.tag),
            "--digest-file=/dev/termination-log".to_owned(),
        ];
        for (k, v) in &req.service.build_args {
            args.push(format!("--build-arg={k}={v}"));
        }
        if s.insecure_registry {
            args.push("--insecure".into());
            args.push("--skip-tls-verify".into());
        }
        args.extend(s.kaniko_args.iter().cloned());
        let mut kaniko_mounts = vec![json!({"name": "workspace", "mountPath": WORKSPACE_DIR})];
        let mut volumes = vec![json!({
            "name": "workspace",
            "emptyDir": {"sizeLimit": s.resources.workspace_size_limit},
        })];
        if let Some(secret) = &s.registry_secret {
            kaniko_mounts.push(json!({
                "name": "docker-config",
                "mountPath": DOCKER_CONFIG_DIR,
                "readOnly": true,
            }));
            volumes.push(json!({
                "name": "docker-config",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }));
        }
        let mut init_containers = vec![json!({
            "name": FETCH_CONTAINER,
            "image": s.fetcher_image,
            "command": [
                "devd-receiver", "fetch-context",
                "--url", url,
                "--dest", WORKSPACE_DIR,
                "--blake3", blake3,
            ],
            "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_DIR}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": FETCH_UID,
                "runAsGroup": FETCH_UID,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        })];
        // Build steps: in order, on the same emptyDir, as root (the fetched
        // files belong to the fetcher's uid), with the Kaniko resources.
        for step in &req.service.steps {
            let workdir = match &step.workdir {
                Some(w) => format!("{WORKSPACE_DIR}/{}", w.as_str()),
                None => WORKSPACE_DIR.to_owned(),
            };
            let env: Vec<Value> = step
                .env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            init_containers.push(json!({
                "name": step_container(&step.name),
                "image": step.image,
                "command": step.command,
                "workingDir": workdir,
                "env": env,
                "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_DIR}],
                "resources": {
                    "requests": {"cpu": s.resources.cpu_request, "memory": s.resources.memory_request},
                    "limits": {"cpu": s.resources.cpu_limit, "memory": s.resources.memory_limit},
                },
                "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }));
        }
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "initContainers": init_containers,
            "containers": [{
                "name": KANIKO_CONTAINER,
                "image": s.kaniko_image,
                "args": args,
                "volumeMounts": kaniko_mounts,
                "resources": {
                    "requests": {"cpu": s.resources.cpu_request, "memory": s.resources.memory_request},
                    "limits": {"cpu": s.resources.cpu_limit, "memory": s.resources.memory_limit},
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        });
        if let Some(sa) = &s.service_account {
            pod_spec["serviceAccountName"] = json!(sa);
        }
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": s.namespace,
                "labels": labels,
                "annotations": {
                    ANNOTATION_CONTEXT: req.context.digest,
                    ANNOTATION_GENERATION: req.generation.to_string(),
                },
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": s.active_deadline_seconds,
                "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec,
                },
            },
        })
    }

    /// Create the Job; a leftover of the same build (a receiver restart)
    /// is deleted first.
    async fn create_job(
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
    async fn job_pod(&self, name: &str) -> Result<Option<Pod>, Failure> {
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
    async fn log_tail(&self, pod: &str, container: &str, previous: bool) -> String {
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

    async fn delete_job(&self, name: &str) {
        let jobs: Api<Job> = self.api();
        if let Err(e) = jobs.delete(name, &DeleteParams::background()).await {
            tracing::warn!(job = %name, error = %e, "cannot delete the Job");
        }
    }

    /// Wait for Job `name` to finish; the pod that ran it.
    async fn wait_job(&self, name: &str) -> Result<(JobState, Option<Pod>), Failure> {
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
                    if let Some((container, reason, message)) = fatal_waiting(&pod) {
                        self.delete_job(name).await;
                        return Err(Failure::new(format!(
                            "build pod of Job {name} cannot start: container {container}: {reason}: {message}"
                        )));
                    }
                }
                Ok(None) => {}
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
    async fn job_failure(
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
            .find(|(_, code, _, _)| *code != 0);
        let (container, code, why, term_msg) = match failed_init {
            Some(t) => t,
            None => terminated(&pod, false)
                .into_iter()
                .find(|(n, _, _, _)| n == KANIKO_CONTAINER)
                .unwrap_or_else(|| {
                    (
                        KANIKO_CONTAINER.to_owned(),
                        -1,
                        String::new(),
                        String::new(),
                    )
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

    /// The URL of a deployed service.
    pub fn url(&self, workspace: &str, service: &Service) -> Option<String> {
        let ns = &self.s.namespace;
        let port = service.port();
        if let Some(t) = &self.s.url_template {
            return Some(
                t.replace("{service}", &service.name)
                    .replace("{namespace}", ns)
                    .replace("{domain}", self.s.domain.as_deref().unwrap_or(""))
                    .replace("{port}", &port.map(|p| p.to_string()).unwrap_or_default())
                    .replace("{workspace}", workspace),
            );
        }
        match &service.run {
            Run::Spec(spec) => match (spec.expose, port) {
                (Expose::External, _) => self
                    .s
                    .domain
                    .as_ref()
                    .map(|d| format!("http://{}", ingress_host(&service.name, ns, d))),
                (Expose::Internal, Some(p)) => Some(format!(
                    "http://{}.{ns}.svc.cluster.local:{p}",
                    service.name
                )),
                _ => None,
            },
            Run::Existing { deployment, .. } => {
                port.map(|p| format!("http://{deployment}.{ns}.svc.cluster.local:{p}"))
            }
        }
    }

    /// The Deployment devd applies for a run spec.
    pub fn deployment_spec(&self, workspace: &str, service: &Service, image: &str) -> Value {
        let Run::Spec(spec) = &service.run else {
            return Value::Null;
        };
        let labels = self.labels(workspace, &service.name);
        let mut container = json!({
            "name": service.name,
            "image": image,
            "env": spec.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        });
        if let Some(p) = spec.port {
            container["ports"] = json!([{"name": "http", "containerPort": p, "protocol": "TCP"}]);
            container["readinessProbe"] = json!({
                "tcpSocket": {"port": "http"},
                "periodSeconds": 2,
                "failureThreshold": 3,
            });
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": service.name, "namespace": self.s.namespace, "labels": labels},
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": {LABEL_SERVICE: label_value(&service.name)}},
                "progressDeadlineSeconds": self.s.rollout_timeout.as_secs().clamp(10, 600),
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container], "enableServiceLinks": false},
                },
            },
        })
    }

    /// The Service devd applies for a run spec with a port.
    pub fn service_spec(&self, workspace: &str, service: &Service) -> Value {
        let port = service.port().unwrap_or(80);
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": service.name,
                "namespace": self.s.namespace,
                "labels": self.labels(workspace, &service.name),
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {LABEL_SERVICE: label_value(&service.name)},
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        })
    }

    /// The Ingress devd applies for an external service.
    pub fn ingress_spec(&self, workspace: &str, service: &Service, domain: &str) -> Value {
        let port = service.port().unwrap_or(80);
        let mut spec = json!({
            "rules": [{
                "host": ingress_host(&service.name, &self.s.namespace, domain),
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service.name, "port": {"number": port}}},
                }]},
            }],
        });
        if let Some(c) = &self.s.ingress_class {
            spec["ingressClassName"] = json!(c);
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": service.name,
                "namespace": self.s.namespace,
                "labels": self.labels(workspace, &service.name),
            },
            "spec": spec,
        })
    }

    /// The apply that sets only `container`'s image in `deployment`.
    pub fn image_patch(&self, deployment: &str, container: &str, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deployment, "namespace": self.s.namespace},
            "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}},
        })
    }

    async fn apply<K>(&self, name: &str, body: &Value) -> Result<(), Failure>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = body["kind"].as_str().unwrap_or("object");
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
        .map_err(|e| api_failure(&format!("apply {kind} {name}"), e))
    }

    /// Delete `name` if it exists and devd manages it.
    async fn delete_owned<K>(&self, name: &str) -> Result<(), Failure>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        match api.get_opt(name).await {
            Ok(Some(obj)) if has_label(obj.meta(), LABEL_MANAGED_BY, "devd") => {
                tracing::info!(%name, "deleting what devd no longer exposes");
                api.delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| api_failure(&format!("delete {name}"), e))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(api_failure(&format!("read {name}"), e)),
        }
    }

    /// Wait for `deployment` to roll out.
    async fn wait_rollout(&self, deployment: &str) -> Result<(), Failure> {
        let api: Api<Deployment> = self.api();
        let start = Instant::now();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        let mut last = String::new();
        loop {
            match api.get(deployment).await {
                Ok(d) => match rollout_state(&d) {
                    RolloutState::Done => return Ok(()),
                    RolloutState::Failed(why) => {
                        return Err(self.rollout_failure(&d, deployment, &why).await);
                    }
                    RolloutState::Waiting(why) => {
                        if start.elapsed() > self.s.rollout_timeout {
                            return Err(self
                                .rollout_failure(
                                    &d,
                                    deployment,
                                    &format!(
                                        "not rolled out within {}s: {why}",
                                        self.s.rollout_timeout.as_secs()
                                    ),
                                )
                                .await);
                        }
                        last = why;
                    }
                },
                Err(e) if start.elapsed() > self.s.rollout_timeout => {
                    return Err(api_failure(&format!("read Deployment {deployment}"), e));
                }
                Err(e) => {
                    tracing::warn!(%deployment, error = %e, "cannot read the Deployment; retrying")
                }
            }
            tracing::debug!(%deployment, state = %last, "rollout in progress");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.s.poll_interval);
        }
    }

    /// A failed rollout, with the log tail of a new pod that does not come up.
    async fn rollout_failure(&self, d: &Deployment, name: &str, why: &str) -> Failure {
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut log_tail = Vec::new();
        let mut detail = String::new();
        if !selector.is_empty() {
            let pods: Api<Pod> = self.api();
            if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                for p in list.items {
                    let Some(st) = &p.status else { continue };
                    let bad = st.container_statuses.iter().flatten().find(|c| {
                        c.state
                            .as_ref()
                            .is_some_and(|s| s.waiting.is_some() || s.terminated.is_some())
                            && !c.ready
                    });
                    if let Some(c) = bad {
                        let pod = p.metadata.name.clone().unwrap_or_default();
                        let state = c.state.as_ref();
                        let reason = state
                            .and_then(|s| s.waiting.as_ref().and_then(|w| w.reason.clone()))
                            .or_else(|| {
                                state.and_then(|s| {
                                    s.terminated.as_ref().and_then(|t| t.reason.clone())
                                })
                            })
                            .unwrap_or_default();
                        detail = format!("; pod {pod} container {}: {reason}", c.name);
                        let log = self.log_tail(&pod, &c.name, c.restart_count > 0).await;
                        log_tail = tail(&log, LOG_TAIL_LINES);
                        break;
                    }
                }
            }
        }
        Failure {
            error: format!("rollout of Deployment {name} failed: {why}{detail}"),
            log_tail,
        }
    }
}

fn ingress_host(service: &str, namespace: &str, domain: &str) -> String {
    format!("{service}.{namespace}.{}", domain.trim_start_matches('.'))
}

fn append_log(path: &std::path::Path, text: &str) {
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

#[async_trait::async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn repository(&self, image: &str) -> String {
        super::qualify(image, Some(&self.s.registry))
    }

    async fn lookup(&self, repository: &str, tag: &str) -> Result<Option<String>, Failure> {
        self.registry_for(repository).lookup(repository, tag).await
    }

    async fn build(&self, req: &BuildRequest) -> Result<String, Failure> {
        let started = Instant::now();
        let name = job_name(&req.service.name, req.generation, &req.context.digest);
        let offer = self
            .shelf
            .offer(&req.context.dir)
            .await
            .map_err(|e| Failure::new(format!("cannot offer the build context: {e}")))?;
        let url = format!("{}{}", self.s.context_url, offer.path);
        let spec = self.job_spec(req, &name, &url, &offer.packed.blake3);
        append_log(
            &req.log,
            &format!(
                "devd: Job {name} in namespace {} builds {}:{} ({} files, archive {} bytes)",
                self.s.namespace, req.repository, req.tag, req.context.files, offer.packed.bytes
            ),
        );
        self.create_job(&name, &spec, req).await?;
        tracing::info!(job = %name, service = %req.service.name, generation = req.generation, "build Job created");
        let (state, pod) = self.wait_job(&name).await?;
        drop(offer);
        match state {
            JobState::Succeeded => {
                let Some(pod) = pod else {
                    return Err(Failure::new(format!(
                        "Job {name} succeeded but its pod is gone; cannot read the image digest"
                    )));
                };
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                for step in &req.service.steps {
                    let container = step_container(&step.name);
                    let log = self.log_tail(&pod_name, &container, false).await;
                    append_log(
                        &req.log,
                        &format!(
                            "devd: step {:?} (init container {container}):\n{log}",
                            step.name
                        ),
                    );
                }
                let log = self.log_tail(&pod_name, KANIKO_CONTAINER, false).await;
                append_log(&req.log, &log);
                let message = terminated(&pod, false)
                    .into_iter()
                    .find(|(n, ..)| n == KANIKO_CONTAINER)
                    .map(|(_, _, _, m)| m.trim().to_owned())
                    .unwrap_or_default();
                if !valid_digest(&message) {
                    return Err(Failure::with_log(
                        format!(
                            "Job {name} succeeded but the Kaniko container's termination message is not an image digest: {:?}",
                            message.chars().take(120).collect::<String>()
                        ),
                        &log,
                    ));
                }
                tracing::info!(job = %name, digest = %message, ms = started.elapsed().as_millis() as u64, "built");
                Ok(format!("{}@{message}", req.repository))
            }
            JobState::Failed { reason, message } => {
                Err(self.job_failure(req, &name, &reason, &message, pod).await)
            }
            JobState::Running => unreachable!("wait_job returns finished Jobs"),
        }
    }

    async fn deploy(
        &self,
        workspace: &str,
        service: &Service,
        image: &str,
    ) -> Result<Deployed, Failure> {
        let deployments: Api<Deployment> = self.api();
        let (name, previous) = match &service.run {
            Run::Existing {
                deployment,
                container,
                ..
            } => {
                let d = deployments
                    .get_opt(deployment)
                    .await
                    .map_err(|e| api_failure(&format!("read Deployment {deployment}"), e))?
                    .ok_or_else(|| {
                        Failure::new(format!(
                            "Deployment {deployment} does not exist in namespace {}: create it, or give service {} a run spec (port, env, replicas) instead of `deployment`",
                            self.s.namespace, service.name
                        ))
                    })?;
                let previous = container_image(&d, container).ok_or_else(|| {
                    Failure::new(format!(
                        "Deployment {deployment} has no container {container:?}: set `container` of service {} to one of its containers",
                        service.name
                    ))
                })?;
                self.apply::<Deployment>(
                    deployment,
                    &self.image_patch(deployment, container, image),
                )
                .await?;
                (deployment.clone(), Some(previous))
            }
            Run::Spec(spec) => {
                let previous = deployments
                    .get_opt(&service.name)
                    .await
                    .map_err(|e| api_failure(&format!("read Deployment {}", service.name), e))?
                    .and_then(|d| container_image(&d, &service.name));
                if spec.expose == Expose::External && self.s.domain.is_none() {
                    return Err(Failure::new(format!(
                        "service {} is expose = \"external\", but the receiver has no [kubernetes] domain for its Ingress host",
                        service.name
                    )));
                }
                if spec.expose != Expose::None {
                    self.apply::<KubeService>(
                        &service.name,
                        &self.service_spec(workspace, service),
                    )
                    .await?;
                } else {
                    self.delete_owned::<KubeService>(&service.name).await?;
                }
                match (&self.s.domain, spec.expose) {
                    (Some(domain), Expose::External) => {
                        self.apply::<Ingress>(
                            &service.name,
                            &self.ingress_spec(workspace, service, domain),
                        )
                        .await?
                    }
                    _ => self.delete_owned::<Ingress>(&service.name).await?,
                }
                self.apply::<Deployment>(
                    &service.name,
                    &self.deployment_spec(workspace, service, image),
                )
                .await?;
                (service.name.clone(), previous)
            }
        };
        if let Err(f) = self.wait_rollout(&name).await {
            if let Some(prev) = previous.filter(|p| p != image) {
                tracing::warn!(deployment = %name, image = %prev, "rollout failed; applying the previous image back");
                let body = match &service.run {
                    Run::Existing { container, .. } => self.image_patch(&name, container, &prev),
                    Run::Spec(_) => self.deployment_spec(workspace, service, &prev),
                };
                if let Err(e) = self.apply::<Deployment>(&name, &body).await {
                    tracing::error!(deployment = %name, error = %e, "cannot roll back");
                }
            }
            return Err(f);
        }
        Ok(Deployed {
            url: self.url(workspace, service),
        })
    }

    async fn logs(
        &self,
        _workspace: &str,
        service: &Service,
        follow: bool,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Failure> {
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        let (deployment, container) = match &service.run {
            Run::Existing {
                deployment,
                container,
                ..
            } => (deployment.clone(), container.clone()),
            Run::Spec(_) => (service.name.clone(), service.name.clone()),
        };
        let d = self
            .api::<Deployment>()
            .get_opt(&deployment)
            .await
            .map_err(|e| api_failure(&format!("reading Deployment {deployment}"), e))?
            .ok_or_else(|| {
                Failure::new(format!(
                    "{} has no Deployment {deployment}: it has not been deployed yet (see `devd status`)",
                    service.name
                ))
            })?;
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let pods: Api<Pod> = self.api();
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_failure("listing pods", e))?;
        // The newest running pod, else the newest one.
        let mut items = list.items;
        items.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        let running = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Running")
        };
        let pod = items
            .iter()
            .rev()
            .find(|p| running(p))
            .or_else(|| items.last())
            .and_then(|p| p.metadata.name.clone())
            .ok_or_else(|| Failure::new(format!("Deployment {deployment} has no pods (yet)")))?;
        let params = LogParams {
            container: Some(container),
            follow,
            ..Default::default()
        };
        let stream = pods
            .log_stream(&pod, &params)
            .await
            .map_err(|e| api_failure(&format!("reading the log of pod {pod}"), e))?;
        super::pump(stream.compat(), &out)
            .await
            .map_err(|e| Failure::new(format!("reading the log of pod {pod}: {e}")))
    }

    async fn running(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<(String, Option<String>)>, Failure> {
        let (deployment, container) = match &service.run {
            Run::Existing {
                deployment,
                container,
                ..
            } => (deployment.as_str(), container.as_str()),
            Run::Spec(_) => (service.name.as_str(), service.name.as_str()),
        };
        let api: Api<Deployment> = self.api();
        let d = api
            .get_opt(deployment)
            .await
            .map_err(|e| api_failure(&format!("read Deployment {deployment}"), e))?;
        Ok(d.and_then(|d| container_image(&d, container))
            .map(|image| (image, self.url(workspace, service))))
    }

    /// Every build of the workspace becomes a DevBuild resource
    /// ([`super::devbuild`]), written by a task beside the pipeline.
    fn observe(&self, workspace: &str, pipeline: &Arc<crate::pipeline::Pipeline>) {
        if self.s.devbuilds_per_service == 0 {
            return;
        }
        let weak = Arc::downgrade(pipeline);
        let registry = self.s.registry.clone();
        let repositories: super::devbuild::Repositories = Arc::new(move |service: &str| {
            let s = weak.upgrade()?.service(service)?;
            Some(super::qualify(&s.image, Some(&registry)))
        });
        let recorder = super::devbuild::Recorder::new(
            self.client.clone(),
            &self.s.namespace,
            workspace,
            self.s.devbuilds_per_service,
            repositories,
        );
        tokio::spawn(recorder.run(pipeline.subscribe()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_digests() {
        let d = "0123456789abcdef".repeat(4);
        assert_eq!(job_name("web", 7, &d), "devd-web-7-01234567");
        let long = job_name(&"a".repeat(40), u64::MAX, &d);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with(&format!("-{}-01234567", u64::MAX)), "{long}");
        assert!(devd_sync::catalog::valid_dns_label(&long, 63), "{long}");
        let dashy = job_name(&format!("{}-b", "a".repeat(22)), u64::MAX, &d);
        assert!(!dashy.contains("--"), "{dashy}");
        assert_eq!(label_value("-my_ws-"), "my_ws");
        assert_eq!(label_value("a/b c"), "a-b-c");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert!(valid_digest(&format!("sha256:{d}")));
        assert!(!valid_digest(&format!("sha256:{}", d.to_uppercase())));
        assert!(!valid_digest(&format!("sha256:{}", &d[1..])));
        assert!(!valid_digest(&format!("sha512:{d}")));
        assert!(!valid_digest("error building image: exit status 1"));
    }

    #[test]
    fn docker_config_credentials() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "r.example.com:5000": {"username": "u2", "password": "p:2"},
            "empty.example.com": {}
        }}"#;
        let c = parse_docker_config(text).unwrap();
        assert_eq!(c["index.docker.io"].username, "user");
        assert_eq!(c["index.docker.io"].password, "pass");
        assert_eq!(c["r.example.com:5000"].password, "p:2");
        assert!(!c.contains_key("empty.example.com"));
        assert!(parse_docker_config(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(parse_docker_config("{}").unwrap().is_empty());
    }

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

/// Request shapes, against kube's tower-test mock: no API server runs; each
/// test answers the backend's requests itself, in order, and asserts their
/// method, path, query and body.
#[cfg(test)]
mod request_shape_tests {
    use super::*;
    use crate::context::ContextSnapshot;
    use devd_sync::catalog::Catalog;
    use http::Method;

    const DIGEST: &str = "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

    type Mock = crate::api_mock::ApiMock;

    struct Setup {
        backend: Arc<KubernetesBackend>,
        shelf: Arc<ContextShelf>,
        dir: tempfile::TempDir,
    }

    fn setup(adjust: impl FnOnce(&mut Settings)) -> (Setup, Mock) {
        let (client, mock) = Mock::pair();
        let dir = tempfile::tempdir().unwrap();
        let shelf = ContextShelf::new(&dir.path().join("shelf")).unwrap();
        let mut s = Settings::new(
            "dev",
            "r.example.com:5000",
            "r.example.com:5000/devd/devd-receiver:0.1.0",
            "http://devd-receiver.dev.svc:8080/",
        );
        s.poll_interval = Duration::from_millis(5);
        adjust(&mut s);
        let backend = Arc::new(KubernetesBackend::new(client, s, shelf.clone()).unwrap());
        (
            Setup {
                backend,
                shelf,
                dir,
            },
            mock,
        )
    }

    fn service(toml: &str) -> Service {
        Catalog::parse(toml).unwrap().services.remove(0)
    }

    fn greeter() -> Service {
        service(
            "[services.greeter]\ncontext = \"services/greeter\"\ninputs = [\"shared\"]\nimage = \"demo/greeter\"\nport = 8080\n[services.greeter.build_args]\nSTYLE = \"plain\"\n",
        )
    }

    fn request(st: &Setup) -> BuildRequest {
        let ctx = st.dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("www")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY www /www\n").unwrap();
        std::fs::write(ctx.join("www/index.html"), "hi\n").unwrap();
        let digest = "c0ffee".repeat(11)[..64].to_owned();
        BuildRequest {
            workspace: "alice".into(),
            service: greeter(),
            generation: 7,
            context: ContextSnapshot {
                dir: ctx,
                digest: digest.clone(),
                dockerfile: "Dockerfile".into(),
                files: 2,
                bytes: 30,
            },
            repository: "r.example.com:5000/demo/greeter".into(),
            tag: crate::context::tag_for(&digest),
            log: st.dir.path().join("build.log"),
        }
    }

    fn pod(job: &str, status: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-x7k2p"), "namespace": "dev",
                         "labels": {"job-name": job}},
            "status": status,
        })
    }

    fn pods(items: Vec<Value>) -> Value {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
    }

    fn job_with(spec: &Value, status: Value) -> Value {
        let mut j = spec.clone();
        j["status"] = status;
        j
    }

    #[tokio::test]
    async fn build_request_shape_job_spec_and_digest() {
        let (st, mut api) = setup(|s| {
            s.registry_secret = Some("regcred".into());
            s.insecure_registry = true;
            s.kaniko_args = vec!["--cache=true".into()];
            s.active_deadline_seconds = 120;
            s.ttl_seconds_after_finished = 30;
            s.resources.memory_limit = "3Gi".into();
            s.service_account = Some("builder".into());
        });
        let req = request(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });

        let create = api.next().await;
        create.expect(Method::POST, "/apis/batch/v1/namespaces/dev/jobs", &[]);
        let j = create.body.clone();
        assert_eq!(j["apiVersion"], "batch/v1");
        assert_eq!(j["kind"], "Job");
        assert_eq!(j["metadata"]["name"], name);
        let labels = &j["metadata"]["labels"];
        assert_eq!(labels[LABEL_MANAGED_BY], "devd");
        assert_eq!(labels[LABEL_SERVICE], "greeter");
        assert_eq!(labels[LABEL_WORKSPACE], "alice");
        assert_eq!(labels[LABEL_CONTEXT], &req.context.digest[..40]);
        assert_eq!(
            j["metadata"]["annotations"][ANNOTATION_CONTEXT],
            req.context.digest
        );
        let spec = &j["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 120);
        assert_eq!(spec["ttlSecondsAfterFinished"], 30);
        let pod_spec = &spec["template"]["spec"];
        assert_eq!(spec["template"]["metadata"]["labels"], *labels);
        assert_eq!(pod_spec["restartPolicy"], "Never");
        assert_eq!(pod_spec["automountServiceAccountToken"], false);
        assert_eq!(pod_spec["serviceAccountName"], "builder");
        assert_eq!(
            pod_spec["volumes"],
            json!([
                {"name": "workspace", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "docker-config", "secret": {"secretName": "regcred",
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            ])
        );
        // The init container fetches the offered context.
        let init = &pod_spec["initContainers"][0];
        assert_eq!(init["name"], FETCH_CONTAINER);
        assert_eq!(init["image"], "r.example.com:5000/devd/devd-receiver:0.1.0");
        let cmd: Vec<&str> = init["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            &cmd[..4],
            ["devd-receiver", "fetch-context", "--url", cmd[3]]
        );
        let url = cmd[3];
        assert!(
            url.starts_with("http://devd-receiver.dev.svc:8080/contexts/")
                && url.ends_with(".tar.zst"),
            "{url}"
        );
        assert_eq!(&cmd[4..6], ["--dest", "/workspace"]);
        assert_eq!(cmd[6], "--blake3");
        assert_eq!(
            st.shelf.len(),
            1,
            "the context is offered while the Job runs"
        );
        let archive = std::fs::read_dir(st.dir.path().join("shelf"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(url.ends_with(archive.file_name().unwrap().to_str().unwrap()));
        assert_eq!(
            blake3::hash(&std::fs::read(&archive).unwrap())
                .to_hex()
                .as_str(),
            cmd[7],
            "--blake3 is the digest of the offered archive"
        );
        assert_eq!(init["securityContext"]["runAsNonRoot"], true);
        assert_eq!(init["securityContext"]["runAsUser"], FETCH_UID);
        assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            init["volumeMounts"],
            json!([{"name": "workspace", "mountPath": "/workspace"}])
        );
        // Kaniko.
        let k = &pod_spec["containers"][0];
        assert_eq!(k["name"], KANIKO_CONTAINER);
        assert_eq!(k["image"], DEFAULT_KANIKO_IMAGE);
        assert_eq!(
            k["args"],
            json!([
                "--dockerfile=/workspace/Dockerfile",
                "--context=dir:///workspace",
                format!("--destination=r.example.com:5000/demo/greeter:{}", req.tag),
                "--digest-file=/dev/termination-log",
                "--build-arg=STYLE=plain",
                "--insecure",
                "--skip-tls-verify",
                "--cache=true",
            ])
        );
        assert_eq!(k["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(
            k["resources"],
            json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                   "limits": {"cpu": "2", "memory": "3Gi"}})
        );
        assert_eq!(
            k["volumeMounts"],
            json!([
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "docker-config", "mountPath": "/kaniko/.docker", "readOnly": true},
            ])
        );
        create.reply(201, &j);

        let path = format!("/apis/batch/v1/namespaces/dev/jobs/{name}");
        let get = api.next().await;
        get.expect(Method::GET, &path, &[]);
        get.ok(&job_with(&j, json!({"active": 1})));
        let list = api.next().await;
        list.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &[&format!("labelSelector=job-name%3D{name}")],
        );
        list.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": "kaniko", "ready": false, "restartCount": 0,
                "image": "k", "imageID": "",
                "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let get = api.next().await;
        get.expect(Method::GET, &path, &[]);
        get.ok(&job_with(
            &j,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        ));
        let list = api.next().await;
        list.expect(Method::GET, "/api/v1/namespaces/dev/pods", &[]);
        let done = json!({
            "initContainerStatuses": [{"name": FETCH_CONTAINER, "ready": false, "restartCount": 0,
                "image": "f", "imageID": "", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "message": format!("{DIGEST}\n")}}}],
        });
        // A pod of another Job is ignored even if the server ignored the selector.
        let mut other = pod("devd-other-1-00000000", done.clone());
        other["status"]["containerStatuses"][0]["state"]["terminated"]["message"] =
            json!("sha256:0000000000000000000000000000000000000000000000000000000000000000");
        list.ok(&pods(vec![other, pod(&name, done)]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=kaniko", "tailLines=120"],
        );
        log.text("INFO Pushing image to r.example.com:5000/demo/greeter\nINFO Pushed\n");

        let image = build.await.unwrap().unwrap();
        assert_eq!(image, format!("r.example.com:5000/demo/greeter@{DIGEST}"));
        assert!(
            st.shelf.is_empty(),
            "the context is withdrawn after the build"
        );
        let log = std::fs::read_to_string(&req.log).unwrap();
        assert!(
            log.contains(&format!("Job {name}")) && log.contains("INFO Pushed"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn build_request_shape_failed_fetch_reads_the_init_container_log() {
        let (st, mut api) = setup(|_| {});
        let req = request(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });
        let create = api.next().await;
        let j = create.body.clone();
        assert!(
            j["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len()
                == 1,
            "no registry Secret configured, no Secret volume"
        );
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"phase": "Failed",
                "initContainerStatuses": [{"name": FETCH_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "f", "imageID": "",
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "short"}}}],
                "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "k", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=fetch-context"],
        );
        log.text(
            "WARN retrying\nError: GET http://x/contexts/t.tar.zst failed: HTTP 404 Not Found\n",
        );
        let f = build.await.unwrap().unwrap_err();
        assert!(
            f.error.contains("fetching the build context failed"),
            "{}",
            f.error
        );
        assert!(f.error.contains("BackoffLimitExceeded"), "{}", f.error);
        assert!(f.error.contains("exited with code 1"), "{}", f.error);
        assert!(
            f.error.contains("HTTP 404"),
            "the last error line is named: {}",
            f.error
        );
        assert_eq!(
            f.log_tail.last().unwrap(),
            "Error: GET http://x/contexts/t.tar.zst failed: HTTP 404 Not Found"
        );
        assert!(st.shelf.is_empty());
    }

    #[tokio::test]
    async fn build_request_shape_kaniko_failure_falls_back_to_the_termination_message() {
        let (st, mut api) = setup(|_| {});
        let req = request(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "INFO step 2/3\nerror building image: exit status 1\n"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=kaniko"],
        );
        log.reply(
            500,
            &json!({"kind": "Status", "code": 500, "message": "kubelet unreachable"}),
        );
        let f = build.await.unwrap().unwrap_err();
        assert!(f.error.contains("Kaniko failed"), "{}", f.error);
        assert!(f.error.contains("DeadlineExceeded"), "{}", f.error);
        assert_eq!(
            f.log_tail,
            ["INFO step 2/3", "error building image: exit status 1"]
        );
    }

    /// `request(st)` for a greeter with two build steps.
    fn request_with_steps(st: &Setup) -> BuildRequest {
        let mut req = request(st);
        req.service = service(
            r#"
[services.greeter]
context = "services/greeter"
image = "demo/greeter"
port = 8080

[[services.greeter.steps]]
name = "generate"
image = "r.example.com:5000/tools/gen:1.2"
command = ["gen", "--out", "generated.txt"]
workdir = "www"
env = { MODE = "ci", LANG = "C" }

[[services.greeter.steps]]
name = "test"
image = "busybox:stable"
command = ["sh", "-c", "./run-tests.sh"]
"#,
        );
        req
    }

    fn exited(name: &str, code: i32) -> Value {
        json!({"name": name, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
               "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}}})
    }

    #[tokio::test]
    async fn build_request_shape_steps_are_init_containers_in_order_and_logged() {
        let (st, mut api) = setup(|s| s.resources.memory_limit = "3Gi".into());
        let req = request_with_steps(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });

        let create = api.next().await;
        create.expect(Method::POST, "/apis/batch/v1/namespaces/dev/jobs", &[]);
        let j = create.body.clone();
        let init = j["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [FETCH_CONTAINER, "step-generate", "step-test"],
            "the fetch first, then the steps in catalog order"
        );
        let mount = json!([{"name": "workspace", "mountPath": "/workspace"}]);
        let resources = json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                               "limits": {"cpu": "2", "memory": "3Gi"}});
        let gen_ = &init[1];
        assert_eq!(gen_["image"], "r.example.com:5000/tools/gen:1.2");
        assert_eq!(gen_["command"], json!(["gen", "--out", "generated.txt"]));
        assert!(gen_.get("args").is_none(), "the command is the whole argv");
        assert_eq!(gen_["workingDir"], "/workspace/www");
        assert_eq!(
            gen_["env"],
            json!([{"name": "LANG", "value": "C"}, {"name": "MODE", "value": "ci"}])
        );
        assert_eq!(gen_["volumeMounts"], mount);
        assert_eq!(gen_["resources"], resources);
        assert_eq!(
            gen_["securityContext"],
            json!({"runAsUser": 0, "runAsGroup": 0})
        );
        assert_eq!(gen_["terminationMessagePolicy"], "FallbackToLogsOnError");
        let test = &init[2];
        assert_eq!(test["image"], "busybox:stable");
        assert_eq!(test["command"], json!(["sh", "-c", "./run-tests.sh"]));
        assert_eq!(test["workingDir"], "/workspace");
        assert_eq!(test["env"], json!([]));
        assert_eq!(test["volumeMounts"], mount);
        // Kaniko reads the same volume after the steps.
        let k = &j["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(k["name"], KANIKO_CONTAINER);
        assert_eq!(k["volumeMounts"], mount);
        // The body is a valid Job.
        let _: Job = serde_json::from_value(j.clone()).unwrap();
        create.reply(201, &j);

        api.next().await.ok(&job_with(
            &j,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        ));
        let mut kaniko = exited(KANIKO_CONTAINER, 0);
        kaniko["state"]["terminated"]["message"] = json!(DIGEST);
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"initContainerStatuses": [exited(FETCH_CONTAINER, 0),
                                             exited("step-generate", 0), exited("step-test", 0)],
                   "containerStatuses": [kaniko]}),
        )]));
        // Each step's log goes to the build log, in order, then Kaniko's.
        for (container, text) in [
            ("step-generate", "generated 1 file\n"),
            ("step-test", "3 tests passed\n"),
            ("kaniko", "INFO Pushed\n"),
        ] {
            let log = api.next().await;
            log.expect(
                Method::GET,
                &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
                &[&format!("container={container}")],
            );
            log.text(text);
        }
        let image = build.await.unwrap().unwrap();
        assert_eq!(image, format!("r.example.com:5000/demo/greeter@{DIGEST}"));
        let log = std::fs::read_to_string(&req.log).unwrap();
        let at = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing in the build log:\n{log}"))
        };
        assert!(at("devd: step \"generate\"") < at("generated 1 file"));
        assert!(at("generated 1 file") < at("devd: step \"test\""));
        assert!(at("3 tests passed") < at("INFO Pushed"));
    }

    #[tokio::test]
    async fn build_request_shape_failing_step_is_named_with_its_log_tail() {
        let (st, mut api) = setup(|_| {});
        let req = request_with_steps(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"phase": "Failed",
                "initContainerStatuses": [exited(FETCH_CONTAINER, 0), exited("step-generate", 0),
                                          exited("step-test", 1)],
                "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "k", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=step-test"],
        );
        log.text("running 3 tests\nFAIL: greeting_renders\n");
        let f = build.await.unwrap().unwrap_err();
        assert!(
            f.error
                .starts_with("build of greeter failed: step \"test\" failed (exit 1); Job "),
            "{}",
            f.error
        );
        assert!(f.error.contains("BackoffLimitExceeded"), "{}", f.error);
        assert_eq!(f.log_tail, ["running 3 tests", "FAIL: greeting_renders"]);
        let log = std::fs::read_to_string(&req.log).unwrap();
        assert!(
            log.contains("devd: step \"test\"") && log.contains("FAIL: greeting_renders"),
            "{log}"
        );
        assert!(st.shelf.is_empty());
    }

    #[tokio::test]
    async fn build_request_shape_image_pull_backoff_deletes_the_job() {
        let (st, mut api) = setup(|_| {});
        let req = request(&st);
        let name = job_name("greeter", 7, &req.context.digest);
        let backend = st.backend.clone();
        let r2 = req.clone();
        let build = tokio::spawn(async move { backend.build(&r2).await });
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(&j, json!({"active": 1})));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/x/kaniko\""}}}]}),
        )]));
        let del = api.next().await;
        del.expect(
            Method::DELETE,
            &format!("/apis/batch/v1/namespaces/dev/jobs/{name}"),
            &[],
        );
        assert_eq!(del.body["propagationPolicy"], "Background");
        del.ok(&j);
        let f = build.await.unwrap().unwrap_err();
        assert!(
            f.error.contains("ImagePullBackOff") && f.error.contains("cannot start"),
            "{}",
            f.error
        );
    }

    fn rolled_out(mut d: Value) -> Value {
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        d["metadata"]["generation"] = json!(2);
        d["status"] = json!({"observedGeneration": 2, "replicas": replicas,
            "updatedReplicas": replicas, "availableReplicas": replicas});
        d
    }

    #[tokio::test]
    async fn deploy_request_shape_run_spec_applies_service_ingress_and_deployment() {
        let (st, mut api) = setup(|s| {
            s.domain = Some("dev.example.com".into());
            s.ingress_class = Some("nginx".into());
        });
        let web = service(
            "[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\nreplicas = 2\n[services.web.env]\nMODE = \"dev\"\n",
        );
        let image = format!("r.example.com:5000/web@{DIGEST}");
        let backend = st.backend.clone();
        let (w2, i2) = (web.clone(), image.clone());
        let deploy = tokio::spawn(async move { backend.deploy("alice", &w2, &i2).await });

        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            &[],
        );
        get.not_found();
        let svc = api.next().await;
        svc.expect_apply("/api/v1/namespaces/dev/services/web");
        assert_eq!(svc.body["kind"], "Service");
        assert_eq!(svc.body["spec"]["selector"], json!({LABEL_SERVICE: "web"}));
        assert_eq!(
            svc.body["spec"]["ports"],
            json!([{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
        );
        let body = svc.body.clone();
        svc.ok(&body);
        let ing = api.next().await;
        ing.expect_apply("/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web");
        assert_eq!(ing.body["spec"]["ingressClassName"], "nginx");
        let rule = &ing.body["spec"]["rules"][0];
        assert_eq!(rule["host"], "web.dev.dev.example.com");
        assert_eq!(
            rule["http"]["paths"][0]["backend"],
            json!({"service": {"name": "web", "port": {"number": 8080}}})
        );
        let body = ing.body.clone();
        ing.ok(&body);
        let dep = api.next().await;
        dep.expect_apply("/apis/apps/v1/namespaces/dev/deployments/web");
        let d = dep.body.clone();
        assert_eq!(d["metadata"]["labels"][LABEL_MANAGED_BY], "devd");
        assert_eq!(d["metadata"]["labels"][LABEL_WORKSPACE], "alice");
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["selector"],
            json!({"matchLabels": {LABEL_SERVICE: "web"}})
        );
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "web");
        assert_eq!(c["image"], image, "deployed by digest");
        assert_eq!(c["env"], json!([{"name": "MODE", "value": "dev"}]));
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "http");
        dep.ok(&d);
        let mut progressing = d.clone();
        progressing["metadata"]["generation"] = json!(2);
        progressing["status"] =
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 0});
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            &[],
        );
        get.ok(&progressing);
        api.next().await.ok(&rolled_out(d));
        let out = deploy.await.unwrap().unwrap();
        assert_eq!(out.url.as_deref(), Some("http://web.dev.dev.example.com"));
    }

    #[tokio::test]
    async fn deploy_request_shape_internal_service_removes_its_old_ingress() {
        let (st, mut api) = setup(|s| s.domain = Some("dev.example.com".into()));
        let api_svc = service("[services.api]\ncontext = \"api\"\nport = 9000\n");
        let image = format!("r.example.com:5000/api@{DIGEST}");
        let backend = st.backend.clone();
        let (s2, i2) = (api_svc.clone(), image.clone());
        let deploy = tokio::spawn(async move { backend.deploy("alice", &s2, &i2).await });
        api.next().await.not_found();
        let svc = api.next().await;
        svc.expect_apply("/api/v1/namespaces/dev/services/api");
        let body = svc.body.clone();
        svc.ok(&body);
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/api",
            &[],
        );
        get.ok(
            &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "api", "labels": {LABEL_MANAGED_BY: "devd"}}}),
        );
        let del = api.next().await;
        del.expect(
            Method::DELETE,
            "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/api",
            &[],
        );
        del.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}));
        let dep = api.next().await;
        dep.expect_apply("/apis/apps/v1/namespaces/dev/deployments/api");
        let d = dep.body.clone();
        dep.ok(&d);
        api.next().await.ok(&rolled_out(d));
        let out = deploy.await.unwrap().unwrap();
        assert_eq!(
            out.url.as_deref(),
            Some("http://api.dev.svc.cluster.local:9000")
        );
    }

    fn existing(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "legacy-app", "namespace": "dev", "generation": 5},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
                "template": {"spec": {"containers": [
                    {"name": "app", "image": image},
                    {"name": "sidecar", "image": "envoy:1"},
                ]}}},
        })
    }

    fn legacy() -> Service {
        service(
            "[services.legacy]\ncontext = \".\"\ndeployment = \"legacy-app\"\ncontainer = \"app\"\nport = 80\n",
        )
    }

    #[tokio::test]
    async fn deploy_request_shape_existing_deployment_patches_only_the_image() {
        let (st, mut api) = setup(|_| {});
        let image = format!("r.example.com:5000/legacy@{DIGEST}");
        let backend = st.backend.clone();
        let i2 = image.clone();
        let deploy = tokio::spawn(async move { backend.deploy("alice", &legacy(), &i2).await });
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
            &[],
        );
        get.ok(&existing("legacy:old"));
        let patch = api.next().await;
        patch.expect_apply("/apis/apps/v1/namespaces/dev/deployments/legacy-app");
        assert_eq!(
            patch.body,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "legacy-app", "namespace": "dev"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
            }),
            "devd owns only the container's image"
        );
        patch.ok(&existing(&image));
        api.next().await.ok(&rolled_out(existing(&image)));
        let out = deploy.await.unwrap().unwrap();
        assert_eq!(
            out.url.as_deref(),
            Some("http://legacy-app.dev.svc.cluster.local:80")
        );
    }

    #[tokio::test]
    async fn deploy_request_shape_failed_rollout_reports_the_pod_and_applies_the_old_image() {
        let (st, mut api) = setup(|_| {});
        let image = format!("r.example.com:5000/legacy@{DIGEST}");
        let backend = st.backend.clone();
        let i2 = image.clone();
        let deploy = tokio::spawn(async move { backend.deploy("alice", &legacy(), &i2).await });
        api.next().await.ok(&existing("legacy:old"));
        api.next().await.ok(&existing(&image));
        let mut stuck = existing(&image);
        stuck["status"] = json!({"observedGeneration": 5, "replicas": 2, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"legacy-app-7f9\" has timed out progressing."}]});
        api.next().await.ok(&stuck);
        let list = api.next().await;
        list.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &["labelSelector=app%3Dlegacy"],
        );
        list.ok(&pods(vec![
            json!({"metadata": {"name": "legacy-app-7f9-abc"},
            "status": {"containerStatuses": [{"name": "app", "ready": false, "restartCount": 4,
                "image": image, "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
        ]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods/legacy-app-7f9-abc/log",
            &["container=app", "previous=true"],
        );
        log.text("starting\npanic: config missing\n");
        let back = api.next().await;
        back.expect_apply("/apis/apps/v1/namespaces/dev/deployments/legacy-app");
        assert_eq!(
            back.body["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "legacy:old"}]),
            "the previous image is applied back"
        );
        back.ok(&existing("legacy:old"));
        let f = deploy.await.unwrap().unwrap_err();
        assert!(f.error.contains("ProgressDeadlineExceeded"), "{}", f.error);
        assert!(f.error.contains("CrashLoopBackOff"), "{}", f.error);
        assert_eq!(f.log_tail, ["starting", "panic: config missing"]);
    }

    #[tokio::test]
    async fn deploy_request_shape_missing_deployment_or_container_is_named() {
        let (st, mut api) = setup(|_| {});
        let backend = st.backend.clone();
        let d =
            tokio::spawn(async move { backend.deploy("alice", &legacy(), "r/x@sha256:00").await });
        api.next().await.not_found();
        let e = d.await.unwrap().unwrap_err().error;
        assert!(
            e.contains("legacy-app does not exist in namespace dev"),
            "{e}"
        );
        let backend = st.backend.clone();
        let svc = service(
            "[services.legacy]\ncontext = \".\"\ndeployment = \"legacy-app\"\ncontainer = \"nope\"\n",
        );
        let d = tokio::spawn(async move { backend.deploy("alice", &svc, "r/x@sha256:00").await });
        api.next().await.ok(&existing("legacy:old"));
        let e = d.await.unwrap().unwrap_err().error;
        assert!(e.contains("no container \"nope\""), "{e}");
    }

    #[tokio::test]
    async fn running_request_shape_reads_the_container_image() {
        let (st, mut api) = setup(|_| {});
        let backend = st.backend.clone();
        let r = tokio::spawn(async move { backend.running("alice", &legacy()).await });
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
            &[],
        );
        get.ok(&existing("legacy@sha256:11"));
        assert_eq!(
            r.await.unwrap().unwrap(),
            Some((
                "legacy@sha256:11".to_owned(),
                Some("http://legacy-app.dev.svc.cluster.local:80".to_owned())
            ))
        );
        let backend = st.backend.clone();
        let r = tokio::spawn(async move { backend.running("alice", &greeter()).await });
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/greeter",
            &[],
        );
        get.not_found();
        assert_eq!(r.await.unwrap().unwrap(), None);
    }

    #[tokio::test]
    async fn logs_request_shape_follows_the_newest_running_pod_of_the_deployment() {
        let (st, mut api) = setup(|_| {});
        let backend = st.backend.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let r = tokio::spawn(async move { backend.logs("alice", &legacy(), true, tx).await });
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
            &[],
        );
        get.ok(&existing("legacy@sha256:11"));
        let list = api.next().await;
        list.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &["labelSelector=app%3Dlegacy"],
        );
        let pod = |name: &str, created: &str, phase: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "creationTimestamp": created},
                   "status": {"phase": phase}})
        };
        list.ok(
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                pod("legacy-old", "2026-01-01T00:00:00Z", "Running"),
                pod("legacy-new", "2026-01-02T00:00:00Z", "Running"),
                pod("legacy-pending", "2026-01-03T00:00:00Z", "Pending"),
            ]}),
        );
        let log = api.next().await;
        log.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods/legacy-new/log",
            &["container=app", "follow=true"],
        );
        log.text("GET /health 200\n");
        assert_eq!(rx.recv().await.unwrap(), b"GET /health 200\n");
        r.await.unwrap().unwrap();
        // A service that was never deployed: a clear error.
        let backend = st.backend.clone();
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let r = tokio::spawn(async move { backend.logs("alice", &greeter(), false, tx).await });
        api.next().await.not_found();
        let e = r.await.unwrap().unwrap_err().error;
        assert!(e.contains("not been deployed"), "{e}");
    }

    #[tokio::test]
    async fn urls_follow_exposure_and_the_template() {
        let (st, _api) = setup(|s| s.domain = Some("dev.example.com".into()));
        let b = &st.backend;
        let web = service("[services.web]\ncontext = \"w\"\nport = 8080\nexpose = \"external\"\n");
        let api = service("[services.api]\ncontext = \"a\"\nport = 9000\n");
        let worker = service("[services.worker]\ncontext = \"k\"\nexpose = \"none\"\n");
        assert_eq!(
            b.url("alice", &web).as_deref(),
            Some("http://web.dev.dev.example.com")
        );
        assert_eq!(
            b.url("alice", &api).as_deref(),
            Some("http://api.dev.svc.cluster.local:9000")
        );
        assert_eq!(b.url("alice", &worker), None);
        assert_eq!(
            b.url("alice", &legacy()).as_deref(),
            Some("http://legacy-app.dev.svc.cluster.local:80")
        );
        let (st, _api) = setup(|s| {
            s.domain = Some("dev.example.com".into());
            s.url_template = Some("https://{service}-{workspace}.{domain}:{port}".into());
        });
        assert_eq!(
            st.backend.url("alice", &api).as_deref(),
            Some("https://api-alice.dev.example.com:9000")
        );
    }

    /// Every field devd sends exists in the Kubernetes schema: a misspelled
    /// one would be dropped by the typed round trip.
    #[tokio::test]
    async fn specs_round_trip_through_the_api_types() {
        let (st, _api) = setup(|s| {
            s.registry_secret = Some("regcred".into());
            s.service_account = Some("b".into());
            s.ingress_class = Some("nginx".into());
        });
        let b = &st.backend;
        let req = request(&st);
        fn same<K: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
            let typed: K = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(&serde_json::to_value(typed).unwrap(), v);
        }
        same::<Job>(&b.job_spec(&req, "devd-greeter-7-c0ffeec0", "http://x/c.tar.zst", "ab"));
        let web = service(
            "[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\n[services.web.env]\nA = \"1\"\n",
        );
        same::<Deployment>(&b.deployment_spec("alice", &web, "r/web@sha256:00"));
        same::<KubeService>(&b.service_spec("alice", &web));
        same::<Ingress>(&b.ingress_spec("alice", &web, "dev.example.com"));
        // The image patch is partial on purpose: through the typed struct it
        // would claim an empty selector (a required field), hence raw JSON.
        let patch = b.image_patch("legacy-app", "app", "r/x@sha256:00");
        let typed: Deployment = serde_json::from_value(patch.clone()).unwrap();
        let mut back = serde_json::to_value(typed).unwrap();
        assert_eq!(back["spec"]["selector"], json!({}));
        back["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(back, patch);
    }
}

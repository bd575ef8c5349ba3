//! The Kubernetes backend: a Kaniko Job per build, server-side apply per
//! deploy, in one namespace.
//!
//! Build (one Job per build, `backoffLimit: 0`):
//! - The receiver's volume is ReadWriteOnce, so the build pod cannot mount
//!   the context snapshot. The receiver packs it and offers it over its HTTP
//!   server under a one-build random token ([`crate::build::http`]); the Job's
//!   init container runs `devd-receiver fetch-context` (the receiver's own
//!   image, as a non-root user) to download it, check its blake3 digest and
//!   unpack it into a 0755 subdirectory of an emptyDir mounted at
//!   `/kaniko/buildcontext` (as Skaffold does), which the Kaniko container
//!   reads as `--context=dir:///kaniko/buildcontext/context`, with
//!   `FF_KANIKO_COPY_AS_ROOT=true` so that `COPY` gives files to root as
//!   `docker build` does ([`names::BUILD_MOUNT`], [`names::CONTEXT_DIR`]).
//! - Build pods carry `dev.devd/build-of`, not the service label their
//!   app's Deployment selects on, opt out of Istio sidecars (which would keep
//!   the Job from completing), run with the RuntimeDefault seccomp profile
//!   and pull with the configured `imagePullSecrets`.
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
//!   Secret) fails the build at once and the Job is deleted, and so does a
//!   pod the namespace's admission refuses (the Job's `FailedCreate` event:
//!   Pod Security, ResourceQuota, LimitRange). On failure the
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
//!   failure (`ProgressDeadlineExceeded`, a `ReplicaFailure` condition from
//!   a refused pod, timeout) the previous image is applied back, so what ran
//!   before keeps running. The app's pods are found through the
//!   Deployment's ReplicaSets (owner references), never by labels alone.
//! - An external service's URL is reported once an ingress controller has
//!   taken its Ingress (given it an address) and the URL answers through
//!   that controller ([`ingress`]: a class-less Ingress in a cluster without
//!   a default IngressClass fails within seconds, asking for one).
//!
//! Stack (`[deploy]`: the repository's own manifests, rendered): every
//! object server-side applied as a member of one ApplySet per workspace
//! (KEP-3659, as `kubectl apply --prune --applyset`), only what changed,
//! CRDs first and workloads last; members that left the render pruned,
//! never an object devd did not apply; the workloads that changed awaited
//! and each reported ready or failed with its pod's reason. The services
//! of such a catalog are found in the stack's workloads by their image
//! (logs, exec, live update).
//!
//! Images are always referenced as `repo@sha256:…`.
//!
//! Files: [`settings`] (configuration and docker config), [`names`] (object
//! names and label values, shared with the DevBuild recorder), [`objects`]
//! (the JSON of Jobs, Deployments, Services, Ingresses), [`state`] (what a
//! Job, pod or rollout says about itself), `job` (running a build Job),
//! `rollout` (applies and the rollout wait, a service's pods), [`ingress`]
//! (an external service's Ingress and its URL), `exec` (`devd exec`
//! through the pod exec API), `live` (live update through it),
//! [`applyset`] (the stack's ApplySet, kinds and digests, pure), `stack`
//! (applying, pruning and removing the stack), `stack_services` (a
//! service's workloads and pods in it), `workloads` (how the stack's
//! workloads stand, their pods),
//! `request_shape_tests` and `stack_tests`, and
//! this file: the backend.

pub mod applyset;
mod exec;
pub mod ingress;
mod job;
mod live;
pub mod names;
pub mod objects;
mod rollout;
pub mod settings;
mod stack;
mod stack_services;
pub mod state;
mod workloads;

pub use names::*;
pub use settings::{BuildResources, DEFAULT_KANIKO_IMAGE, Settings, parse_docker_config};
pub use state::{JobState, RolloutState, container_image, job_state, rollout_state, valid_digest};

use super::devbuild::{Recorder, Repositories};
use super::registry::{Credentials, RegistryClient};
use super::{Backend, BuildRequest, Deployment as Deployed, Failure, Observation, RunningService};
use crate::build::http::ContextShelf;
use devd_sync::catalog::{Expose, Run, Service};
use job::append_log;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DynamicObject, LogParams};
use state::terminated;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The Kubernetes backend.
pub struct KubernetesBackend {
    client: Client,
    s: Settings,
    shelf: Arc<ContextShelf>,
    credentials: HashMap<String, Credentials>,
    registries: Mutex<HashMap<String, Arc<RegistryClient>>>,
    /// By workspace, the service each devd-built image of its last
    /// applied stack is (image `repo@sha256:…` → service): how a pod of the
    /// manifests that starts is known to run a service (live update).
    stack_images: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

/// A failed API call as a build or deploy failure that says what to do.
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

/// The API server answered with HTTP `code`.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
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
            stack_images: Mutex::new(HashMap::new()),
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

    /// The objects of `res` in the receiver's namespace (or cluster-wide).
    fn dynamic(&self, res: &applyset::Resource) -> Api<DynamicObject> {
        if res.namespaced {
            Api::namespaced_with(self.client.clone(), &self.s.namespace, &res.ar)
        } else {
            Api::all_with(self.client.clone(), &res.ar)
        }
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
        names::labels(workspace, service)
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

    fn stack_namespace(&self, _workspace: &str) -> String {
        self.s.namespace.clone()
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
                    .find(|t| t.container == KANIKO_CONTAINER)
                    .map(|t| t.message.trim().to_owned())
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
            Run::Manifests => {
                return Err(Failure::new(format!(
                    "service {} runs from the manifests ([deploy]): the stack is applied, not one Deployment",
                    service.name
                )));
            }
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
                    self.delete_if_owned::<KubeService>(&service.name).await?;
                }
                match (&self.s.domain, spec.expose) {
                    (Some(domain), Expose::External) => {
                        self.apply_ingress(workspace, service, domain).await?
                    }
                    _ => {
                        self.delete_if_owned::<Ingress>(&service.name).await?;
                    }
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
                    Run::Spec(_) | Run::Manifests => {
                        self.deployment_spec(workspace, service, &prev)
                    }
                };
                if let Err(e) = self.apply::<Deployment>(&name, &body).await {
                    tracing::error!(deployment = %name, error = %e, "cannot roll back");
                }
            }
            return Err(f);
        }
        if let (Run::Spec(spec), Some(domain)) = (&service.run, &self.s.domain)
            && spec.expose == Expose::External
        {
            let host = ingress_host(&service.name, &self.s.namespace, domain);
            self.wait_ingress(&service.name, &host).await?;
        }
        Ok(Deployed {
            url: self.url(workspace, service),
        })
    }

    async fn logs(
        &self,
        workspace: &str,
        service: &Service,
        follow: bool,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Failure> {
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        let (pod, container) = self.service_pod(workspace, service, false).await?;
        let pods: Api<Pod> = self.api();
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

    fn supports_live_update(&self) -> bool {
        true
    }

    async fn live_update(
        &self,
        workspace: &str,
        service: &Service,
        update: &super::LiveUpdate,
    ) -> Result<usize, super::LiveError> {
        self.live(workspace, service, update).await
    }

    async fn watch_starts(
        &self,
        workspace: &str,
        started: tokio::sync::mpsc::Sender<String>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        self.follow_starts(workspace, started, cancel).await
    }

    async fn exec(
        &self,
        workspace: &str,
        service: &Service,
        req: super::exec::ExecRequest,
        io: super::exec::ExecIo,
    ) -> Result<i32, Failure> {
        self.exec_in(workspace, service, req, io).await
    }

    async fn running(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<RunningService>, Failure> {
        let (deployment, container) = match &service.run {
            Run::Existing {
                deployment,
                container,
                ..
            } => (deployment.as_str(), container.as_str()),
            Run::Spec(_) => (service.name.as_str(), service.name.as_str()),
            // The image of the manifests' workload that runs it; its URL
            // is the stack's (a Service of the manifests), not the
            // service's.
            Run::Manifests => {
                return Ok(self
                    .manifest_image(workspace, service)
                    .await?
                    .map(|image| RunningService { image, url: None }));
            }
        };
        let api: Api<Deployment> = self.api();
        let d = api
            .get_opt(deployment)
            .await
            .map_err(|e| api_failure(&format!("read Deployment {deployment}"), e))?;
        Ok(d.and_then(|d| container_image(&d, container))
            .map(|image| RunningService {
                image,
                url: self.url(workspace, service),
            }))
    }

    /// `devd down`: the Deployment, Service and Ingress devd created for
    /// each service (labelled managed-by devd). A Deployment devd only
    /// patched (`deployment = …`) stays; so do the images in the registry.
    async fn remove(&self, workspace: &str, services: &[Service]) -> Result<Vec<String>, Failure> {
        let _ = workspace;
        let mut removed = Vec::new();
        for service in services {
            let name = &service.name;
            if let Run::Existing { deployment, .. } = &service.run {
                tracing::info!(%name, %deployment, "down: leaving the Deployment devd only patched");
                continue;
            }
            if self.delete_if_owned::<Deployment>(name).await? {
                removed.push(format!("Deployment {}/{name}", self.s.namespace));
            }
            if self.delete_if_owned::<KubeService>(name).await? {
                removed.push(format!("Service {}/{name}", self.s.namespace));
            }
            if self.delete_if_owned::<Ingress>(name).await? {
                removed.push(format!("Ingress {}/{name}", self.s.namespace));
            }
        }
        Ok(removed)
    }

    fn supports_stack(&self) -> bool {
        true
    }

    /// The rendered manifests as one ApplySet ([`stack`]).
    async fn apply_stack(
        &self,
        workspace: &str,
        stack: &super::stack::Stack,
    ) -> Result<super::stack::StackReport, Failure> {
        self.apply_stack_in(workspace, stack).await
    }

    /// Every object of the workspace's ApplySet, then its parent.
    async fn remove_stack(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        self.remove_stack_in(workspace).await
    }

    /// Every build of the workspace becomes a DevBuild resource
    /// ([`super::devbuild`]), written by a task beside the pipeline that
    /// ends when the pipeline is gone or the receiver shuts down.
    fn observe(&self, o: Observation) {
        if self.s.devbuilds_per_service == 0 {
            return;
        }
        let registry = self.s.registry.clone();
        let services = o.services;
        let repositories: Repositories = Arc::new(move |service: &str| {
            let s = services(service)?;
            Some(super::qualify(&s.image, Some(&registry)))
        });
        let recorder = Recorder::new(
            self.client.clone(),
            &self.s.namespace,
            &o.workspace,
            self.s.devbuilds_per_service,
            repositories,
        );
        let (events, cancel) = (o.events, o.cancel);
        o.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = recorder.run(events) => {}
            }
        });
    }
}

// Last in the file: tools that read the backend's code stop at the first
// `#[cfg(test)]`.
#[cfg(test)]
mod request_shape_tests;
#[cfg(test)]
mod stack_tests;

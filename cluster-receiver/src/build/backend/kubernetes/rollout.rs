//! Deploying: server-side apply of what devd owns, removal of what it no
//! longer exposes, and the wait for a Deployment's rollout (like
//! `kubectl rollout status`), with the failing pod's log when it fails.

use super::KubernetesBackend;
use super::api_failure;
use super::names::{FIELD_MANAGER, LABEL_MANAGED_BY};
use super::state::{RolloutState, has_label, owned_by, pod_selector, rollout_state};
use crate::build::backend::{Failure, tail};
use devd_protocol::event::LOG_TAIL_LINES;
use devd_sync::catalog::{Run, Service};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::Value;
use std::time::{Duration, Instant};

impl KubernetesBackend {
    /// Server-side apply `body` to object `name`, forced, as field manager
    /// `devd`.
    pub(super) async fn apply<K>(&self, name: &str, body: &Value) -> Result<(), Failure>
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

    /// Delete `name` if devd owns it (labelled managed-by devd); whether
    /// it did.
    pub(super) async fn delete_if_owned<K>(&self, name: &str) -> Result<bool, Failure>
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
                tracing::info!(%name, "deleting what devd applied");
                api.delete(name, &DeleteParams::default())
                    .await
                    .map(|_| true)
                    .map_err(|e| api_failure(&format!("delete {name}"), e))
            }
            Ok(_) => Ok(false),
            Err(e) => Err(api_failure(&format!("read {name}"), e)),
        }
    }

    /// Wait for `deployment` to roll out.
    pub(super) async fn wait_rollout(&self, deployment: &str) -> Result<(), Failure> {
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

    /// The pods of Deployment `d`: those its selector matches that belong
    /// to one of its ReplicaSets (as `kubectl` finds them). The selector
    /// alone is not enough: any pod carrying its labels matches it (a build
    /// pod did once, and another workload's pods can).
    pub(super) async fn app_pods(&self, d: &Deployment) -> Result<Vec<Pod>, kube::Error> {
        let selector = pod_selector(d);
        if selector.is_empty() {
            return Ok(Vec::new());
        }
        let lp = ListParams::default().labels(&selector);
        let replica_sets: Api<ReplicaSet> = self.api();
        let owners: Vec<String> = replica_sets
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|rs| owned_by(&rs.metadata, d.metadata.uid.as_deref()))
            .filter_map(|rs| rs.metadata.uid)
            .collect();
        let pods: Api<Pod> = self.api();
        Ok(pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| owners.iter().any(|o| owned_by(&p.metadata, Some(o))))
            .collect())
    }

    /// The pod of `service` to read logs from or run a command in, and its
    /// container: the newest running pod of its Deployment (of the
    /// manifests' workloads that run its image, for `[deploy]`; else,
    /// unless `running_only`, the newest pod.
    pub(super) async fn service_pod(
        &self,
        workspace: &str,
        service: &Service,
        running_only: bool,
    ) -> Result<(String, String), Failure> {
        let (pods, what) = self.service_pods(workspace, service).await?;
        let newest_running = pods.iter().rev().find(|(p, _)| running(p));
        let pod = match running_only {
            true => newest_running,
            false => newest_running.or_else(|| pods.last()),
        };
        pod.and_then(|(p, c)| Some((p.metadata.name.clone()?, c.clone())))
            .ok_or_else(|| {
                let which = if running_only { "running pods" } else { "pods" };
                Failure::new(format!("{what} has no {which} (yet)"))
            })
    }

    /// The running pods of `service`, oldest first, each with the
    /// service's container in it.
    pub(super) async fn running_pods(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Vec<(String, String)>, Failure> {
        let (pods, _) = self.service_pods(workspace, service).await?;
        Ok(pods
            .iter()
            .filter(|(p, _)| running(p))
            .filter_map(|(p, c)| Some((p.metadata.name.clone()?, c.clone())))
            .collect())
    }

    /// The pods of `service`, oldest first, each with its container; what
    /// runs them (`Deployment web`), for messages.
    async fn service_pods(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<(Vec<(Pod, String)>, String), Failure> {
        let (deployment, container) = match &service.run {
            Run::Existing {
                deployment,
                container,
                ..
            } => (deployment.clone(), container.clone()),
            Run::Spec(_) => (service.name.clone(), service.name.clone()),
            Run::Manifests => return self.manifest_pods(workspace, service).await,
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
        let mut items = self
            .app_pods(&d)
            .await
            .map_err(|e| api_failure("listing pods", e))?;
        items.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        Ok((
            items.into_iter().map(|p| (p, container.clone())).collect(),
            format!("Deployment {deployment}"),
        ))
    }

    /// A failed rollout, with the log tail of a new pod that does not come up.
    pub(super) async fn rollout_failure(&self, d: &Deployment, name: &str, why: &str) -> Failure {
        let mut log_tail = Vec::new();
        let mut detail = String::new();
        {
            if let Ok(list) = self.app_pods(d).await {
                for p in list {
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

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Running")
}

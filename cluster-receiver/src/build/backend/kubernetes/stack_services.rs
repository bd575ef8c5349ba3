//! The services of a stack (a catalog with `[deploy]`): a service runs in
//! the workloads of the stack (members of its ApplySet) whose pod template
//! has a container with the service's image repository. Their pods (and
//! that container) are where `devd logs`, `devd exec` and live update go,
//! and that container's image is what runs after a receiver restart.

use super::applyset::{ApplySet, GroupKind, Resource, known, runs_image, template_containers};
use super::workloads::from_value;
use super::{KubernetesBackend, api_failure};
use crate::build::backend::Failure;
use devd_sync::catalog::Service;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

/// The workload kinds whose pods can run a service, in the order they
/// are searched.
const SERVICE_KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("v1", "Pod"),
];

impl KubernetesBackend {
    /// The workloads of `workspace`'s stack that run `service`'s image:
    /// (kind, the object, the container that runs it, its image). `None`:
    /// no stack has been applied.
    async fn service_workloads(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<Vec<(String, Value, String, String)>>, Failure> {
        let set = ApplySet::new(workspace, &self.s.namespace);
        let Some((_, kinds)) = self.stack_parent(&set).await? else {
            return Ok(None);
        };
        let repository = crate::build::backend::Backend::repository(self, &service.image);
        let mut out = Vec::new();
        for (api_version, kind) in SERVICE_KINDS {
            let k = known(api_version, kind).expect("a known workload kind");
            if !kinds.contains(&GroupKind::new(k.group(), kind)) {
                continue;
            }
            let res = Resource::known(k);
            let api: Api<DynamicObject> = self.dynamic(&res);
            let list = api
                .list(&ListParams::default().labels(&set.selector()))
                .await
                .map_err(|e| api_failure(&format!("list the stack's {kind}s"), e))?;
            for o in list
                .items
                .into_iter()
                .filter(|o| set.has_member(o.metadata.labels.as_ref()))
            {
                let v = serde_json::to_value(&o).unwrap_or_default();
                if let Some((container, image)) = template_containers(kind, &v)
                    .into_iter()
                    .find(|(_, image)| runs_image(image, &repository))
                {
                    out.push((kind.to_string(), v, container, image));
                }
            }
        }
        Ok(Some(out))
    }

    /// The pods (oldest first) of the workloads that run `service`'s image,
    /// each with the container that runs it; and what they are, for
    /// messages.
    pub(super) async fn manifest_pods(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<(Vec<(Pod, String)>, String), Failure> {
        let workloads = match self.service_workloads(workspace, service).await? {
            None => {
                return Err(Failure::new(format!(
                    "service {} runs from the manifests ([deploy]), and none have been applied in namespace {} yet (see `devd status`)",
                    service.name, self.s.namespace
                )));
            }
            Some(w) if w.is_empty() => {
                return Err(Failure::new(format!(
                    "no workload of the manifests runs service {}'s image {}: does a container's `image` in them name {:?}?",
                    service.name,
                    crate::build::backend::Backend::repository(self, &service.image),
                    service.image
                )));
            }
            Some(w) => w,
        };
        let mut out = Vec::new();
        let mut names = Vec::new();
        for (kind, obj, container, _) in &workloads {
            names.push(format!(
                "{}/{}",
                kind.to_ascii_lowercase(),
                obj["metadata"]["name"].as_str().unwrap_or_default()
            ));
            let pods = match kind.as_str() {
                "Deployment" => match from_value::<Deployment>(obj) {
                    Some(d) => self.app_pods(&d).await,
                    None => Ok(Vec::new()),
                },
                _ => self.workload_pods(kind, obj).await,
            }
            .map_err(|e| api_failure("list pods", e))?;
            out.extend(pods.into_iter().map(|p| (p, container.clone())));
        }
        out.sort_by_key(|(p, _)| p.metadata.creation_timestamp.clone().map(|t| t.0));
        Ok((out, names.join(", ")))
    }

    /// The image `service` runs as in the stack (its first workload's
    /// container), if a stack runs it.
    pub(super) async fn manifest_image(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<String>, Failure> {
        Ok(self
            .service_workloads(workspace, service)
            .await?
            .and_then(|w| w.into_iter().next())
            .map(|(_, _, _, image)| image))
    }
}

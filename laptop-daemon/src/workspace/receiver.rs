//! Deploying a workspace's receiver: the compiled-in objects prepared for
//! the namespace, the registry and git Secrets copied in, applied, and
//! the wait for the receiver to roll out and publish its pairing.

use super::local_file::write_receiver;
use super::{CreateOptions, LABEL_PART_OF, QUIC_SERVICE, api_error};
use anyhow::{Context, bail};
use devd_sync::labels::LABEL_WORKSPACE;
use devd_sync::pairing::Pairing;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the receiver objects `create` applies are kept, from the
/// repository root: the render of `manifests/receiver` without Secrets.
pub const RECEIVER_OBJECTS_PATH: &str = "manifests/workspace/receiver.json";
const RECEIVER_OBJECTS: &str = include_str!("../../../manifests/workspace/receiver.json");
/// The receiver's Deployment.
pub const RECEIVER_DEPLOYMENT: &str = "devd-receiver";
/// The Secrets the receiver mounts, copied from the install's namespace:
/// registry credentials and git read access.
pub const COPIED_SECRETS: [&str; 2] = ["devd-registry", "devd-git"];
/// Server-side-apply field manager of what `create` applies.
const FIELD_MANAGER: &str = "devd";
/// Pause between two looks at the receiver.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// The receiver's objects as compiled in (see [`RECEIVER_OBJECTS_PATH`]).
pub fn receiver_objects() -> anyhow::Result<Vec<DynamicObject>> {
    serde_json::from_str(RECEIVER_OBJECTS).with_context(|| {
        format!("{RECEIVER_OBJECTS_PATH} (compiled into devd) is not a list of Kubernetes objects")
    })
}

/// The API resource of a kind the receiver's manifests use.
fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "PersistentVolumeClaim" => ApiResource::erase::<PersistentVolumeClaim>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        _ => return None,
    })
}

/// The Secrets the receiver mounts, read from `from` (where
/// `kubectl apply -k manifests/` put them), ready to apply elsewhere.
pub(super) async fn source_secrets(
    client: &kube::Client,
    from: &str,
    target: &str,
) -> anyhow::Result<Vec<DynamicObject>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), from);
    let mut out = Vec::new();
    for name in COPIED_SECRETS {
        let s = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => bail!(
                "no Secret {name} in namespace {from}: the receiver in {target} mounts it. \
                 `kubectl apply -k manifests/` installs it there (manifests/receiver/secrets/README.md); \
                 or pass --secrets-from NAMESPACE where it is"
            ),
            Err(e) => {
                return Err(api_error(
                    e,
                    &format!(
                        "reading Secret {name} in namespace {from} (to copy it into {target}; your kubeconfig needs `get secrets` there)"
                    ),
                ));
            }
        };
        let copy = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: s.metadata.labels.clone(),
                ..Default::default()
            },
            type_: s.type_.clone(),
            data: s.data.clone(),
            ..Default::default()
        };
        out.push(serde_json::from_value(serde_json::to_value(copy)?)?);
    }
    Ok(out)
}

/// The receiver of one new workspace namespace.
pub(super) struct Receiver {
    pub(super) client: kube::Client,
    pub(super) namespace: String,
    pub(super) workspace: String,
    pub(super) node_port: bool,
}

/// What pairing wrote.
pub(super) struct Paired {
    pub(super) pairing: Pairing,
    pub(super) address: String,
    pub(super) address_from: String,
    pub(super) file: PathBuf,
    pub(super) ignored: bool,
}

/// Where a Deployment's rollout stands.
#[derive(Debug, PartialEq, Eq)]
enum Rollout {
    Available,
    Failed(String),
    Waiting(String),
}

fn rollout(d: &Deployment) -> Rollout {
    let status = d.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let cond = |t: &str| conditions.iter().find(|c| c.type_ == t);
    // Admission (Pod Security, a ResourceQuota, a LimitRange) refused the
    // receiver's pod: waiting would only reach ProgressDeadlineExceeded.
    if let Some(c) = cond("ReplicaFailure")
        && c.status == "True"
    {
        return Rollout::Failed(format!(
            "ReplicaFailure: {}: {}",
            c.reason.as_deref().unwrap_or("FailedCreate"),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    if let Some(c) = cond("Progressing")
        && c.status == "False"
    {
        return Rollout::Failed(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("not progressing"),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    let current = match (d.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        _ => true,
    };
    if current && cond("Available").is_some_and(|c| c.status == "True") {
        return Rollout::Available;
    }
    Rollout::Waiting(format!(
        "{}/{} replicas ready",
        status.ready_replicas.unwrap_or(0),
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    ))
}

/// The objects for this namespace: the namespace set, the workspace's
/// label added, the RoleBinding's subject in it, the ConfigMap naming
/// the workspace. Also the pairing Secret's name from the receiver's
/// configuration.
///
/// With `node_port`, the QUIC Service becomes a NodePort whose port the
/// cluster picks (a fixed one would collide between workspaces), with
/// `externalTrafficPolicy: Cluster` so that any node forwards to the
/// receiver.
fn prepare(
    objects: Vec<DynamicObject>,
    namespace: &str,
    workspace: &str,
    node_port: bool,
) -> anyhow::Result<(Vec<DynamicObject>, String)> {
    let mut pairing_secret = None;
    let mut out = Vec::new();
    for mut o in objects {
        let kind = o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        o.metadata.namespace = Some(namespace.to_owned());
        // Not app.kubernetes.io/managed-by=devd: the receiver's backend
        // reads that label as "a service devd deployed".
        let labels = o.metadata.labels.get_or_insert_default();
        labels.insert(LABEL_WORKSPACE.to_owned(), workspace.to_owned());
        labels.insert(LABEL_PART_OF.to_owned(), "devd".to_owned());
        match kind.as_str() {
            "Service" if node_port && o.metadata.name.as_deref() == Some(QUIC_SERVICE) => {
                o.data["spec"]["type"] = "NodePort".into();
                // With the manifests' Local, kube-proxy drops what reaches
                // a node without the receiver's pod; laptops dial one node.
                o.data["spec"]["externalTrafficPolicy"] = "Cluster".into();
                if let Some(ports) = o.data["spec"]["ports"].as_array_mut() {
                    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                        p.remove("nodePort");
                    }
                }
            }
            "RoleBinding" => {
                if let Some(subjects) = o.data["subjects"].as_array_mut() {
                    for s in subjects {
                        s["namespace"] = namespace.to_owned().into();
                    }
                }
            }
            "ConfigMap" if o.data["data"]["receiver.toml"].is_string() => {
                let data = &mut o.data["data"];
                data["workspace"] = workspace.to_owned().into();
                // The pod's own address is useless to a laptop; create
                // reads the Service instead.
                if let Some(d) = data.as_object_mut() {
                    d.remove("advertise");
                }
                let toml = data["receiver.toml"].as_str().unwrap_or_default();
                pairing_secret = devd_sync::pairing::secret_name_in_receiver_toml(toml)
                    .with_context(|| format!("the receiver.toml in {RECEIVER_OBJECTS_PATH}"))?;
            }
            _ => {}
        }
        out.push(o);
    }
    let secret = pairing_secret.with_context(|| {
        format!(
            "the receiver's receiver.toml in {RECEIVER_OBJECTS_PATH} sets no [kubernetes] pairing_secret: the receiver would never publish its pairing"
        )
    })?;
    Ok((out, secret))
}

impl Receiver {
    pub(super) fn timed_out(&self, what: &str, timeout: Duration) -> anyhow::Error {
        let ns = &self.namespace;
        anyhow::anyhow!(
            "{what} within {}s in namespace {ns}; look with\n  \
             kubectl -n {ns} describe deploy/{RECEIVER_DEPLOYMENT}\n  \
             kubectl -n {ns} logs deploy/{RECEIVER_DEPLOYMENT}\n\
             (`--timeout 15m` waits longer)",
            timeout.as_secs()
        )
    }

    fn prepare(&self, objects: Vec<DynamicObject>) -> anyhow::Result<(Vec<DynamicObject>, String)> {
        prepare(objects, &self.namespace, &self.workspace, self.node_port)
    }

    async fn apply(&self, o: &DynamicObject) -> anyhow::Result<()> {
        let types = o.types.clone().unwrap_or_default();
        let name = o.metadata.name.clone().unwrap_or_default();
        let ar = api_resource(&types.kind).with_context(|| {
            format!(
                "{RECEIVER_OBJECTS_PATH} has a {} {name}, a kind devd does not know how to apply",
                types.kind
            )
        })?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(o),
        )
        .await
        .map_err(|e| {
            api_error(
                e,
                &format!(
                    "applying {} {name} in namespace {}",
                    types.kind, self.namespace
                ),
            )
        })?;
        Ok(())
    }

    pub(super) async fn deploy_and_pair(
        &self,
        objects: Vec<DynamicObject>,
        secrets: Vec<DynamicObject>,
        opts: &CreateOptions,
        timeout: Duration,
        root: &Path,
    ) -> anyhow::Result<Paired> {
        let (objects, secret_name) = self.prepare(secrets.into_iter().chain(objects).collect())?;
        for o in &objects {
            self.apply(o).await?;
        }
        let count = objects.len();
        println!(
            "applied the receiver into {} ({count} objects, Secrets {} copied from {})",
            self.namespace,
            COPIED_SECRETS.join(" and "),
            opts.secrets_from
        );
        let deadline = Instant::now() + timeout;
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        eprintln!(
            "waiting for the receiver in {} to be ready (at most {}s)…",
            self.namespace,
            timeout.as_secs()
        );
        let result = self
            .wait_and_read(
                &secret_name,
                opts.address.as_deref(),
                deadline,
                timeout,
                &spinner,
            )
            .await;
        spinner.finish_and_clear();
        let (pairing, address, address_from) = result?;
        let (file, ignored) = write_receiver(root, &address, &pairing)?;
        Ok(Paired {
            pairing,
            address,
            address_from,
            file,
            ignored,
        })
    }

    async fn wait_and_read(
        &self,
        secret_name: &str,
        address: Option<&str>,
        deadline: Instant,
        timeout: Duration,
        spinner: &indicatif::ProgressBar,
    ) -> anyhow::Result<(Pairing, String, String)> {
        let ns = &self.namespace;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        loop {
            let d = deployments
                .get_opt(RECEIVER_DEPLOYMENT)
                .await
                .map_err(|e| {
                    api_error(e, &format!("reading deploy/{RECEIVER_DEPLOYMENT} in {ns}"))
                })?;
            let state = match &d {
                None => Rollout::Waiting("the Deployment is not there yet".into()),
                Some(d) => rollout(d),
            };
            match state {
                Rollout::Available => break,
                Rollout::Failed(why) => bail!(
                    "the receiver in namespace {ns} failed to roll out ({why}); look with\n  \
                     kubectl -n {ns} describe deploy/{RECEIVER_DEPLOYMENT}"
                ),
                Rollout::Waiting(what) => {
                    spinner.set_message(format!("receiver in {ns}: {what}"));
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out("the receiver did not become ready", timeout));
            }
            tokio::time::sleep(POLL).await;
        }
        spinner.set_message(format!("receiver in {ns}: ready; reading its pairing"));
        // Ready means published; still, wait out a cache that lags.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let pairing = loop {
            let s = secrets.get_opt(secret_name).await.map_err(|e| {
                api_error(
                    e,
                    &format!("reading the pairing Secret {secret_name} in {ns} (your kubeconfig needs `get secrets` there)"),
                )
            })?;
            if let Some(s) = s {
                let p = devd_sync::pairing::pairing_of(&s).map_err(|key| {
                    anyhow::anyhow!(
                        "the pairing Secret {secret_name} in {ns} has no usable `{key}`; is the receiver's image as new as devd?"
                    )
                })?;
                break p;
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(
                    &format!("the receiver is ready but published no pairing Secret {secret_name}"),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        if let Some(a) = address {
            return Ok((pairing, a.to_owned(), "--address".into()));
        }
        let (address, from) = self
            .service_address(&pairing, deadline, timeout, spinner)
            .await?;
        Ok((pairing, address, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_sync::labels::LABEL_MANAGED_BY;

    #[test]
    fn the_compiled_in_receiver_is_prepared_for_the_namespace() {
        let (objs, secret) =
            prepare(receiver_objects().unwrap(), "devd-alice", "alice", false).unwrap();
        assert_eq!(secret, "devd-pairing");
        let kinds: Vec<&str> = objs
            .iter()
            .map(|o| o.types.as_ref().unwrap().kind.as_str())
            .collect();
        for k in [
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "ServiceAccount",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
            assert!(api_resource(k).is_some(), "no API resource for {k}");
        }
        for o in &objs {
            assert_eq!(o.metadata.namespace.as_deref(), Some("devd-alice"));
            let labels = o.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_WORKSPACE], "alice");
            assert_eq!(labels[LABEL_PART_OF], "devd");
            assert!(
                !labels.contains_key(LABEL_MANAGED_BY),
                "the backend reads managed-by=devd as one of the services it deploys"
            );
            match o.types.as_ref().unwrap().kind.as_str() {
                "RoleBinding" => assert_eq!(o.data["subjects"][0]["namespace"], "devd-alice"),
                "ConfigMap" => {
                    assert_eq!(o.data["data"]["workspace"], "alice");
                    assert!(o.data["data"].get("advertise").is_none());
                }
                _ => {}
            }
        }
    }

    #[test]
    fn node_port_makes_the_quic_service_a_node_port_the_cluster_numbers() {
        let (objs, _) = prepare(receiver_objects().unwrap(), "devd-alice", "alice", true).unwrap();
        let quic = objs
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(QUIC_SERVICE))
            .unwrap();
        assert_eq!(quic.data["spec"]["type"], "NodePort");
        assert_eq!(quic.data["spec"]["externalTrafficPolicy"], "Cluster");
        for p in quic.data["spec"]["ports"].as_array().unwrap() {
            assert!(p.get("nodePort").is_none(), "{p}");
        }
        let http = objs
            .iter()
            .find(|o| {
                o.metadata.name.as_deref() == Some("devd-receiver")
                    && o.types.as_ref().unwrap().kind == "Service"
            })
            .unwrap();
        assert_eq!(
            http.data["spec"]["type"], "ClusterIP",
            "only the QUIC Service"
        );
    }

    #[test]
    fn a_deployment_is_available_failed_or_waiting() {
        let d = |v: serde_json::Value| -> Deployment { serde_json::from_value(v).unwrap() };
        let base = serde_json::json!({"metadata": {"name": "devd-receiver", "generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}}});
        let mut v = base.clone();
        assert!(matches!(rollout(&d(v.clone())), Rollout::Waiting(w) if w == "0/1 replicas ready"));
        v["status"] = serde_json::json!({"observedGeneration": 2, "readyReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"}]});
        assert_eq!(rollout(&d(v.clone())), Rollout::Available);
        v["status"]["observedGeneration"] = 1.into();
        assert!(
            matches!(rollout(&d(v.clone())), Rollout::Waiting(_)),
            "an older generation's status"
        );
        let mut refused = base.clone();
        refused["status"] = serde_json::json!({"conditions": [{"type": "ReplicaFailure",
            "status": "True", "reason": "FailedCreate",
            "message": "pods \"devd-receiver-1\" is forbidden: exceeded quota: q"}]});
        assert_eq!(
            rollout(&d(refused)),
            Rollout::Failed(
                "ReplicaFailure: FailedCreate: pods \"devd-receiver-1\" is forbidden: exceeded quota: q"
                    .into()
            )
        );
        let mut v = base;
        v["status"] = serde_json::json!({"conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "took too long"}]});
        assert_eq!(
            rollout(&d(v)),
            Rollout::Failed("ProgressDeadlineExceeded: took too long".into())
        );
    }
}

//! The stack (`[deploy]`: the repository's own manifests) on the Kubernetes
//! backend, against the kmock emulator (no API server can run here): the
//! backend's `apply_stack`/`remove_stack` are called with rendered objects
//! as the pipeline passes them, and the test plays the Deployment and
//! ReplicaSet controllers and kubelet (`devd_tests::kube_controllers`): a
//! ReplicaSet and running pods per template, or, for an image this test's
//! registry does not have, a pod in `ImagePullBackOff`.
//!
//! The emulator (`tests/kmock/launcher.py`) was extended where the stack
//! needs API server semantics kmock lacks: server-side apply keeps
//! `managedFields` per field manager and removes the fields a manager no
//! longer applies; an applied CustomResourceDefinition is served and
//! `Established` at once; a delete collects the deleted object's dependents
//! (ownerReferences) unless the policy is `Orphan`.

use devd_receiver::build::backend::Backend;
use devd_receiver::build::backend::kubernetes::applyset::{
    ANNOTATION_APPLIED, ANNOTATION_GROUP_KINDS, ANNOTATION_TOOLING, ApplySet, LABEL_APPLYSET_ID,
    LABEL_PART_OF,
};
use devd_receiver::build::backend::kubernetes::{KubernetesBackend, Settings};
use devd_receiver::build::backend::stack::{Stack, StackObject, StackReport, WorkloadState};
use devd_receiver::build::http::ContextShelf;
use devd_tests::Fixture;
use devd_tests::kmock::KubeEmulator;
use devd_tests::kube_controllers::roll_out;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service as KubeService};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const NS: &str = "devd-stack";
const WORKSPACE: &str = "alice";
const REGISTRY: &str = "127.0.0.1:5000";
/// Images kubelet cannot pull here.
const UNPULLABLE: &str = "registry.invalid/";

fn image(repo: &str, digit: char) -> String {
    format!(
        "{REGISTRY}/demo/{repo}@sha256:{}",
        digit.to_string().repeat(64)
    )
}

fn object(body: Value) -> StackObject {
    let kind = body["kind"].as_str().unwrap().to_owned();
    let crd = kind == "CustomResourceDefinition";
    let mut body = body;
    if !crd {
        body["metadata"]["namespace"] = json!(NS);
    }
    StackObject {
        api_version: body["apiVersion"].as_str().unwrap().to_owned(),
        name: body["metadata"]["name"].as_str().unwrap().to_owned(),
        namespace: (!crd).then(|| NS.to_owned()),
        source: "kustomize deploy/overlays/dev".into(),
        kind,
        body,
    }
}

fn deployment(name: &str, image: &str) -> StackObject {
    object(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image,
                    "envFrom": [{"configMapRef": {"name": "settings"}}]}]},
            },
        },
    }))
}

/// The render: settings, credentials, web and worker (devd-built), web's
/// Service, a postgres from its public image, a CRD and one of its
/// resources.
fn render(web_image: &str, with_worker: bool, settings_labels: Value) -> Vec<StackObject> {
    let mut objs = vec![
        object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": settings_labels},
            "data": {"GREETING": "hello"}})),
        object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db-credentials"}, "type": "Opaque",
            "stringData": {"POSTGRES_PASSWORD": "dev"}})),
        deployment("web", web_image),
        object(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}}),
        ),
        deployment("postgres", "postgres:16"),
        object(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}]},
        })),
        object(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "blue"}, "spec": {"color": "blue"}})),
    ];
    if with_worker {
        objs.insert(3, deployment("worker", &image("worker", 'b')));
    }
    objs
}

/// The test's Deployment and ReplicaSet controllers and kubelet, until
/// the runtime ends: every Deployment whose generation its status has not
/// observed is rolled out, or its pod pulls in vain.
async fn controllers(client: kube::Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    loop {
        if let Ok(list) = deployments.list(&ListParams::default()).await {
            for d in list.items {
                let generation = d.metadata.generation.unwrap_or(1);
                let observed = d
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .unwrap_or(0);
                if observed >= generation {
                    continue;
                }
                let image = d
                    .spec
                    .as_ref()
                    .unwrap()
                    .template
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap_or_default();
                let played = if image.starts_with(UNPULLABLE) {
                    pull_in_vain(&client, &d, &image).await
                } else {
                    roll_out(&client, NS, &d).await.map(|_| ())
                };
                if let Err(e) = played {
                    eprintln!("the played controller failed: {e:#}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deployment `d`'s new ReplicaSet and its pod, which cannot pull `image`.
async fn pull_in_vain(client: &kube::Client, d: &Deployment, image: &str) -> anyhow::Result<()> {
    let name = d.metadata.name.clone().unwrap();
    let uid = d.metadata.uid.clone().unwrap();
    let generation = d.metadata.generation.unwrap_or(1);
    let rs_name = format!("{name}-unpullable{generation}");
    let labels = json!({"app": name, "pod-template-hash": format!("unpullable{generation}")});
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let rs = sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": NS, "labels": labels,
                    "annotations": {"deployment.kubernetes.io/revision": (100 + generation).to_string()},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": name, "uid": uid, "controller": true}]},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}}},
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{rs_name}-0"), "namespace": NS, "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": rs_name, "uid": rs.metadata.uid.unwrap(), "controller": true}]},
            "spec": {"containers": [{"name": name, "image": image}]},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": format!("Back-off pulling image \"{image}\"")}}}]},
        }))?,
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": generation, "replicas": 2,
                "updatedReplicas": 1, "availableReplicas": 1}}),
            ),
        )
        .await?;
    Ok(())
}

struct Env {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    backend: KubernetesBackend,
    log: std::path::PathBuf,
}

impl Env {
    fn apply(&self, objects: Vec<StackObject>) -> StackReport {
        // The devd-built images, by service (a Deployment of each).
        let images = objects
            .iter()
            .filter(|o| o.kind == "Deployment")
            .filter_map(|o| {
                let image =
                    o.body["spec"]["template"]["spec"]["containers"][0]["image"].as_str()?;
                image
                    .starts_with(REGISTRY)
                    .then(|| (o.name.clone(), image.to_owned()))
            })
            .collect();
        let stack = Stack {
            objects,
            images,
            runs: BTreeMap::new(),
            log: self.log.clone(),
        };
        self.rt
            .block_on(self.backend.apply_stack(WORKSPACE, &stack))
            .unwrap_or_else(|f| panic!("apply_stack failed: {f:?}"))
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    fn get<K>(&self, name: &str) -> Option<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.rt.block_on(self.api::<K>().get_opt(name)).unwrap()
    }

    fn widgets(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: "example.com".into(),
            version: "v1".into(),
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
        };
        Api::namespaced_with(self.client.clone(), NS, &ar)
    }
}

fn start(emu: &KubeEmulator, dir: &Path) -> Env {
    let (rt, client) = emu.client();
    let mut s = Settings::new(
        NS,
        REGISTRY,
        &format!("{REGISTRY}/devd/devd-receiver:0.1.0"),
        "http://devd-receiver:8080/",
    );
    s.poll_interval = Duration::from_millis(50);
    s.rollout_timeout = Duration::from_secs(30);
    let shelf = ContextShelf::new(&dir.join("shelf")).unwrap();
    let backend = KubernetesBackend::new(client.clone(), s, shelf).unwrap();
    rt.spawn(controllers(client.clone()));
    Env {
        rt,
        client,
        backend,
        log: dir.join("stack.log"),
    }
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn container_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

#[test]
fn emulator_stack_applies_prunes_reports_failures_and_removes_only_its_own_objects() {
    let fx = Fixture::new();
    let emu = KubeEmulator::start(&fx, NS);
    let dir = tempfile::tempdir().unwrap();
    let env = start(&emu, dir.path());
    let set = ApplySet::new(WORKSPACE, NS);
    // Someone else's ConfigMap in the namespace: never devd's to delete.
    let theirs: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "team-notes", "namespace": NS}, "data": {"a": "b"}}))
    .unwrap();
    env.rt
        .block_on(
            env.api::<ConfigMap>()
                .create(&PostParams::default(), &theirs),
        )
        .unwrap();

    // 1. The whole stack: created, every workload rolled out.
    let web_1 = image("web", 'a');
    let report = env.apply(render(&web_1, true, json!({"app": "web", "tier": "dev"})));
    assert_eq!(
        report.changes,
        [
            "customresourcedefinition/widgets.example.com created",
            "configmap/settings created",
            "secret/db-credentials created",
            "service/web created",
            "widget/blue created",
            "deployment/web created",
            "deployment/worker created",
            "deployment/postgres created",
        ]
    );
    let states: Vec<(&str, &WorkloadState)> = report
        .workloads
        .iter()
        .map(|w| (w.key.as_str(), &w.state))
        .collect();
    assert_eq!(
        states,
        [
            ("deployment/web", &WorkloadState::Ready),
            ("deployment/worker", &WorkloadState::Ready),
            ("deployment/postgres", &WorkloadState::Ready),
        ]
    );
    assert_eq!(
        report.urls["web"],
        format!("http://web.{NS}.svc.cluster.local:8080")
    );
    let parent: Secret = env.get(&set.name).expect("the ApplySet parent");
    assert_eq!(labels_of(&parent.metadata)[LABEL_APPLYSET_ID], set.id);
    let annotations = parent.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[ANNOTATION_TOOLING], "devd/v1");
    assert_eq!(
        annotations[ANNOTATION_GROUP_KINDS],
        "ConfigMap,Deployment.apps,Secret,Service,Widget.example.com"
    );
    for name in ["web", "worker", "postgres"] {
        let d: Deployment = env.get(name).unwrap();
        assert_eq!(labels_of(&d.metadata)[LABEL_PART_OF], set.id, "{name}");
        let managers: Vec<String> = d
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(managers, ["devd"], "{name}: applied by devd");
    }
    assert_eq!(
        container_image(&env.get::<Deployment>("web").unwrap()),
        web_1
    );
    assert_eq!(
        container_image(&env.get::<Deployment>("postgres").unwrap()),
        "postgres:16"
    );
    let settings: ConfigMap = env.get("settings").unwrap();
    assert_eq!(labels_of(&settings.metadata)["tier"], "dev");
    assert!(
        settings.metadata.annotations.unwrap()[ANNOTATION_APPLIED].len() == 32,
        "the digest of what devd applied"
    );
    let blue = env.rt.block_on(env.widgets().get("blue")).unwrap();
    assert_eq!(blue.data["spec"]["color"], "blue");
    assert_eq!(labels_of(&blue.metadata)[LABEL_PART_OF], set.id);

    // devd logs for a [deploy] service: its workload's pod, its container.
    let svc = devd_sync::catalog::Catalog::parse(
        "[deploy]\nkustomize = \"deploy/overlays/dev\"\n[services.web]\ncontext = \"web\"\nimage = \"demo/web\"\n",
    )
    .unwrap()
    .services
    .remove(0);
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    env.rt
        .block_on(env.backend.logs(WORKSPACE, &svc, false, tx))
        .unwrap();
    let mut log = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        log.extend(chunk);
    }
    let log = String::from_utf8(log).unwrap();
    assert!(log.starts_with("log of web in web-"), "{log}");
    let running = env
        .rt
        .block_on(env.backend.running(WORKSPACE, &svc))
        .unwrap();
    assert_eq!(running.map(|r| r.image), Some(web_1.clone()));

    // A restarted container of web's pod is web's start (live update
    // copies its differences in again); postgres is no devd service.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let starts = env.rt.block_on(async {
        let watch = env.backend.watch_starts(WORKSPACE, tx, Default::default());
        let restart = async {
            // The watcher's first look is its baseline.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for app in ["postgres", "web"] {
                let pods = env
                    .api::<Pod>()
                    .list(&ListParams::default().labels(&format!("app={app}")))
                    .await
                    .unwrap();
                let pod = &pods.items[0];
                let mut status = serde_json::to_value(&pod.status).unwrap();
                status["containerStatuses"][0]["restartCount"] = json!(1);
                env.api::<Pod>()
                    .patch_status(
                        pod.metadata.name.as_deref().unwrap(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .unwrap();
            }
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Some(s)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                got.push(s);
            }
            drop(rx);
            got
        };
        tokio::join!(watch, restart).1
    });
    assert_eq!(starts, ["web"]);

    // 2. The same render again: nothing applied, nothing rolled.
    let web_generation = env.get::<Deployment>("web").unwrap().metadata.generation;
    let again = env.apply(render(&web_1, true, json!({"app": "web", "tier": "dev"})));
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(
        again
            .workloads
            .iter()
            .all(|w| w.state == WorkloadState::Ready)
    );
    assert_eq!(
        env.get::<Deployment>("web").unwrap().metadata.generation,
        web_generation
    );
    let text = std::fs::read_to_string(&env.log).unwrap();
    assert!(text.contains("deployment/web unchanged"), "{text}");

    // 3. worker left the render, web has a new image, a label left the
    // ConfigMap: worker is pruned (its ReplicaSet and pods with it), web
    // rolls, the label is gone; the unlabelled ConfigMap stays.
    let worker_pods = env
        .rt
        .block_on(
            env.api::<Pod>()
                .list(&ListParams::default().labels("app=worker")),
        )
        .unwrap();
    assert_eq!(worker_pods.items.len(), 1, "worker's pod ran");
    let web_2 = image("web", 'c');
    let report = env.apply(render(&web_2, false, json!({"app": "web"})));
    assert_eq!(
        report.changes,
        [
            "configmap/settings configured",
            "deployment/web configured",
            "deployment/worker pruned",
        ]
    );
    assert!(env.get::<Deployment>("worker").is_none());
    let left = env
        .rt
        .block_on(
            env.api::<Pod>()
                .list(&ListParams::default().labels("app=worker")),
        )
        .unwrap();
    assert!(left.items.is_empty(), "worker's pods went with it");
    let sets = env
        .rt
        .block_on(
            env.api::<ReplicaSet>()
                .list(&ListParams::default().labels("app=worker")),
        )
        .unwrap();
    assert!(sets.items.is_empty());
    assert_eq!(
        container_image(&env.get::<Deployment>("web").unwrap()),
        web_2
    );
    assert_eq!(
        report
            .workloads
            .iter()
            .map(|w| (w.key.as_str(), &w.state))
            .collect::<Vec<_>>(),
        [
            ("deployment/web", &WorkloadState::Ready),
            ("deployment/postgres", &WorkloadState::Ready),
        ]
    );
    let settings: ConfigMap = env.get("settings").unwrap();
    assert!(
        !labels_of(&settings.metadata).contains_key("tier"),
        "a label the manifest dropped is gone (server-side apply)"
    );
    assert!(env.get::<ConfigMap>("team-notes").is_some());

    // 4. web's new image cannot be pulled: web Failed with the reason,
    // the others are reported as they stand.
    let broken = format!("{UNPULLABLE}demo/web@sha256:{}", "d".repeat(64));
    let report = env.apply(render(&broken, false, json!({"app": "web"})));
    assert_eq!(report.changes, ["deployment/web configured"]);
    let web = &report.workloads[0];
    assert_eq!(web.key, "deployment/web");
    assert_eq!(web.state, WorkloadState::Failed);
    let why = web.reason.as_deref().unwrap();
    assert!(
        why.starts_with(&format!(
            "ImagePullBackOff: Back-off pulling image \"{broken}\""
        )) && why.contains("container web"),
        "{why}"
    );
    assert_eq!(report.workloads[1].state, WorkloadState::Ready);

    // 5. devd down: every member and the parent go; the CRD (shared by
    // every workspace) and the unlabelled ConfigMap stay.
    let removed = env
        .rt
        .block_on(env.backend.remove_stack(WORKSPACE))
        .unwrap();
    assert_eq!(
        removed,
        [
            "configmap/settings deleted",
            "secret/db-credentials deleted",
            "service/web deleted",
            "deployment/postgres deleted",
            "deployment/web deleted",
            "widget/blue deleted",
            &format!("secret/{} deleted", set.name),
        ]
    );
    for name in ["web", "postgres"] {
        assert!(env.get::<Deployment>(name).is_none(), "{name}");
    }
    assert!(env.get::<KubeService>("web").is_none());
    assert!(env.get::<Secret>(&set.name).is_none());
    assert!(env.get::<ConfigMap>("team-notes").is_some());
    assert!(
        env.rt
            .block_on(env.widgets().get_opt("blue"))
            .unwrap()
            .is_none()
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    assert!(
        env.rt
            .block_on(crds.get_opt("widgets.example.com"))
            .unwrap()
            .is_some()
    );
    // Nothing left to remove.
    assert!(
        env.rt
            .block_on(env.backend.remove_stack(WORKSPACE))
            .unwrap()
            .is_empty()
    );
}

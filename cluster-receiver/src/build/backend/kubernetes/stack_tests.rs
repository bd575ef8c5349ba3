//! Request shapes of the stack (`[deploy]`: the repository's own
//! manifests) against kube's tower-test mock: each test plays the API
//! server, request by request, and asserts what the backend asks and what
//! it reports. The mock helpers are `request_shape_tests`' (setup,
//! scripted) and `crate::api_mock`'s.

use super::applyset::{
    ANNOTATION_APPLIED, ANNOTATION_GROUP_KINDS, ANNOTATION_TOOLING, ApplySet, LABEL_APPLYSET_ID,
    LABEL_PART_OF, TOOLING, prepare,
};
use super::request_shape_tests::{scripted, setup};
use crate::api_mock::Call;
use crate::build::backend::Backend;
use crate::build::backend::stack::{Stack, StackObject, WorkloadState};
use devd_sync::catalog::Catalog;
use http::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const WEB_IMAGE: &str = "r.example.com:5000/demo/web@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PARENT: &str = "/api/v1/namespaces/dev/secrets/devd-stack-alice";
const CRD_PATH: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";

fn set() -> ApplySet {
    ApplySet::new("alice", "dev")
}

/// `labelSelector=…part-of=<id>` as the query carries it.
fn member_query() -> String {
    format!(
        "labelSelector=applyset.kubernetes.io%2Fpart-of%3D{}",
        set().id
    )
}

/// A render's object from its body (namespaced into `dev` unless a CRD).
fn object(body: Value) -> StackObject {
    let kind = body["kind"].as_str().unwrap().to_owned();
    let crd = kind == "CustomResourceDefinition";
    let mut body = body;
    if !crd {
        body["metadata"]["namespace"] = json!("dev");
    }
    StackObject {
        api_version: body["apiVersion"].as_str().unwrap().to_owned(),
        name: body["metadata"]["name"].as_str().unwrap().to_owned(),
        namespace: (!crd).then(|| "dev".to_owned()),
        source: "k8s/app.yaml".into(),
        kind,
        body,
    }
}

fn stack(objects: Vec<StackObject>, dir: &Path) -> Stack {
    Stack {
        objects,
        images: BTreeMap::from([("web".to_owned(), WEB_IMAGE.to_owned())]),
        runs: BTreeMap::from([("web".to_owned(), vec!["deployment/web".to_owned()])]),
        log: dir.join("stack.log"),
    }
}

fn config_map(name: &str, data: Value) -> StackObject {
    object(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
}

fn deployment(name: &str, image: &str) -> StackObject {
    object(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }))
}

fn service(name: &str, port: u16) -> StackObject {
    object(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
    }))
}

fn crd() -> StackObject {
    object(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

/// `obj` as the API server has it after devd applied it: labelled, with
/// the digest devd gave it (or `digest` instead), a uid.
fn applied(obj: &StackObject, digest: Option<&str>) -> Value {
    let (mut body, d) = prepare(obj, &set()).unwrap();
    body["metadata"]["annotations"][ANNOTATION_APPLIED] = json!(digest.unwrap_or(&d));
    body["metadata"]["uid"] = json!(format!("uid-{}", obj.name));
    body
}

/// A Deployment as the API server returns it, rolled out (or not).
fn rolled_out(obj: &StackObject, done: bool) -> Value {
    let mut d = applied(obj, None);
    d["metadata"]["generation"] = json!(2);
    d["status"] = if done {
        json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1})
    } else {
        json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0})
    };
    d
}

/// Assert `c` is the forced apply of `obj` (path from `path`) with the
/// part-of label, and answer it.
#[track_caller]
fn expect_member_apply(c: Call, path: &str) -> Value {
    c.expect_apply(path);
    let body = c.body.clone();
    assert_eq!(
        body["metadata"]["labels"][LABEL_PART_OF],
        set().id,
        "{path}: every applied object is part of the set"
    );
    assert!(
        body["metadata"]["annotations"][ANNOTATION_APPLIED].is_string(),
        "{path}: the digest of what devd applied"
    );
    c.ok(&body);
    body
}

#[tokio::test]
async fn apply_creates_the_parent_then_every_object_crds_first_workloads_last() {
    let (st, mut api) = setup(|_| {});
    let widget = object(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3},
    }));
    let web = deployment("web", WEB_IMAGE);
    let s = stack(
        vec![
            web.clone(),
            service("web", 8080),
            widget,
            config_map("settings", json!({"mode": "dev"})),
            crd(),
            object(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                          "stringData": {"password": "x"}}),
            ),
        ],
        st.dir.path(),
    );
    let report = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let parent = api.next().await;
        parent.expect(Method::GET, PARENT, &[]);
        parent.not_found();
        // The parent first, listing every kind the render has (the CRD is
        // shared by all workspaces: not a member).
        let c = api.next().await;
        c.expect_apply(PARENT);
        let p = &c.body;
        assert_eq!(p["kind"], "Secret");
        assert_eq!(p["metadata"]["labels"][LABEL_APPLYSET_ID], set().id);
        assert_eq!(p["metadata"]["annotations"][ANNOTATION_TOOLING], TOOLING);
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION_GROUP_KINDS],
            "ConfigMap,Deployment.apps,Secret,Service,Widget.example.com"
        );
        c.ok(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "devd-stack-alice"}}));
        // The members of each kind: none yet.
        for (path, kind) in [
            ("/api/v1/namespaces/dev/configmaps", "ConfigMap"),
            ("/api/v1/namespaces/dev/secrets", "Secret"),
            ("/api/v1/namespaces/dev/services", "Service"),
            ("/apis/apps/v1/namespaces/dev/deployments", "Deployment"),
        ] {
            let c = api.next().await;
            c.expect(Method::GET, path, &[&member_query()]);
            c.ok(&list(kind, vec![]));
        }
        // Widgets are not served before their CRD exists: no members.
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/example.com/v1/namespaces/dev/widgets",
            &[&member_query()],
        );
        c.not_found();
        let c = api.next().await;
        c.expect(Method::GET, CRD_PATH, &[]);
        c.not_found();
        // The CRD, unlabelled, then a wait until it is Established.
        let c = api.next().await;
        c.expect_apply(CRD_PATH);
        assert!(c.body["metadata"].get("labels").is_none(), "{}", c.body);
        assert!(c.body["metadata"]["annotations"][ANNOTATION_APPLIED].is_string());
        let mut established = c.body.clone();
        c.ok(&established);
        let c = api.next().await;
        c.expect(Method::GET, CRD_PATH, &[]);
        c.ok(&established);
        let c = api.next().await;
        c.expect(Method::GET, CRD_PATH, &[]);
        established["status"] = json!({"conditions": [
            {"type": "NamesAccepted", "status": "True"},
            {"type": "Established", "status": "True"}]});
        c.ok(&established);
        // Then what workloads use, the custom resource, the workload.
        // (ConfigMaps and Secrets share a rank: the render's order.)
        let cm = expect_member_apply(
            api.next().await,
            "/api/v1/namespaces/dev/configmaps/settings",
        );
        assert_eq!(cm["data"]["mode"], "dev");
        expect_member_apply(api.next().await, "/api/v1/namespaces/dev/secrets/db");
        expect_member_apply(api.next().await, "/api/v1/namespaces/dev/services/web");
        let w = expect_member_apply(
            api.next().await,
            "/apis/example.com/v1/namespaces/dev/widgets/w",
        );
        assert_eq!(w["spec"]["size"], 3);
        let d = expect_member_apply(
            api.next().await,
            "/apis/apps/v1/namespaces/dev/deployments/web",
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            WEB_IMAGE
        );
        // Its rollout.
        let c = api.next().await;
        c.expect(Method::GET, "/apis/apps/v1/namespaces/dev/deployments/web", &[]);
        c.ok(&rolled_out(&web, true));
        assert!(
            api.next_within(Duration::from_millis(300)).await.is_none(),
            "nothing to prune, the parent already lists these kinds"
        );
    })
    .await
    .unwrap();
    assert_eq!(
        report.changes,
        [
            "customresourcedefinition/widgets.example.com created",
            "configmap/settings created",
            "secret/db created",
            "service/web created",
            "widget/w created",
            "deployment/web created",
        ]
    );
    assert_eq!(report.workloads.len(), 1);
    assert_eq!(report.workloads[0].key, "deployment/web");
    assert_eq!(report.workloads[0].state, WorkloadState::Ready);
    assert_eq!(
        report.urls,
        BTreeMap::from([(
            "web".to_owned(),
            "http://web.dev.svc.cluster.local:8080".to_owned()
        )])
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("deployment/web ready"), "{log}");
}

#[tokio::test]
async fn only_changes_are_applied_and_what_left_the_render_is_pruned_never_an_unlabelled_object() {
    let (st, mut api) = setup(|_| {});
    let settings = config_map("settings", json!({"mode": "dev"}));
    let web = deployment("web", WEB_IMAGE);
    let s = stack(vec![settings.clone(), web.clone()], st.dir.path());
    let old_parent = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "devd-stack-alice", "namespace": "dev",
            "labels": {LABEL_APPLYSET_ID: set().id},
            "annotations": {ANNOTATION_TOOLING: TOOLING,
                ANNOTATION_GROUP_KINDS: "ConfigMap,Deployment.apps,Service"}},
    });
    let report = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&old_parent);
        // The parent already lists a superset: no apply of it. The members:
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/configmaps",
            &[&member_query()],
        );
        let gone = applied(&config_map("old-settings", json!({})), None);
        // A server that ignores the selector: this ConfigMap is someone
        // else's and must stay.
        let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "not-devds", "namespace": "dev", "labels": {"team": "x"}}});
        c.ok(&list(
            "ConfigMap",
            vec![applied(&settings, None), gone, foreign],
        ));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/services",
            &[&member_query()],
        );
        c.ok(&list("Service", vec![applied(&service("web", 80), None)]));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments",
            &[&member_query()],
        );
        c.ok(&list(
            "Deployment",
            vec![
                applied(&web, Some("an-older-digest")),
                applied(&deployment("worker", WEB_IMAGE), None),
            ],
        ));
        // Only the changed Deployment is applied (the ConfigMap's digest
        // is the same).
        expect_member_apply(
            api.next().await,
            "/apis/apps/v1/namespaces/dev/deployments/web",
        );
        // Then the members no longer in the render, in the background
        // (their pods go with them).
        for path in [
            "/api/v1/namespaces/dev/configmaps/old-settings",
            "/api/v1/namespaces/dev/services/web",
            "/apis/apps/v1/namespaces/dev/deployments/worker",
        ] {
            let c = api.next().await;
            c.expect(Method::DELETE, path, &[]);
            assert_eq!(c.body["propagationPolicy"], "Background", "{path}");
            c.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        }
        // The parent now lists the render's kinds only.
        let c = api.next().await;
        c.expect_apply(PARENT);
        assert_eq!(
            c.body["metadata"]["annotations"][ANNOTATION_GROUP_KINDS],
            "ConfigMap,Deployment.apps"
        );
        c.ok(&old_parent);
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            &[],
        );
        c.ok(&rolled_out(&web, true));
        assert!(
            api.next_within(Duration::from_millis(300)).await.is_none(),
            "the unlabelled ConfigMap is never deleted"
        );
    })
    .await
    .unwrap();
    assert_eq!(
        report.changes,
        [
            "deployment/web configured",
            "configmap/old-settings pruned",
            "service/web pruned",
            "deployment/worker pruned",
        ]
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("configmap/settings unchanged"), "{log}");
    assert!(!report.changes.iter().any(|c| c.contains("unchanged")));
}

/// A rollout that does not come up: Failed with the pod's reason, and for a
/// crashing container its previous log's last lines.
#[tokio::test]
async fn a_workload_whose_pod_cannot_pull_or_keeps_crashing_is_reported_failed_with_why() {
    let (st, mut api) = setup(|_| {});
    let web = deployment("web", WEB_IMAGE);
    let db = deployment("db", "postgres:16");
    let s = stack(vec![web.clone(), db.clone()], st.dir.path());
    let parent = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "devd-stack-alice", "namespace": "dev",
            "labels": {LABEL_APPLYSET_ID: set().id},
            "annotations": {ANNOTATION_TOOLING: TOOLING, ANNOTATION_GROUP_KINDS: "Deployment.apps"}},
    });
    let replica_set = |d: &str, uid: &str, revision: &str| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{d}-{revision}"), "namespace": "dev", "uid": uid,
                "annotations": {"deployment.kubernetes.io/revision": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": d, "uid": format!("uid-{d}")}]},
            "spec": {"selector": {"matchLabels": {"app": d}}}})
    };
    let pod = |name: &str, owner: &str, container: &str, waiting: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "dev",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "x", "uid": owner}]},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": container, "image": "", "imageID": "", "ready": false,
                "restartCount": 3, "state": {"waiting": waiting},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}})
    };
    let report = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&parent);
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments",
            &[&member_query()],
        );
        c.ok(&list("Deployment", vec![]));
        expect_member_apply(
            api.next().await,
            "/apis/apps/v1/namespaces/dev/deployments/web",
        );
        expect_member_apply(
            api.next().await,
            "/apis/apps/v1/namespaces/dev/deployments/db",
        );
        // web: not available; its newest ReplicaSet's pod cannot pull.
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            &[],
        );
        c.ok(&rolled_out(&web, false));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/replicasets",
            &["labelSelector=app%3Dweb"],
        );
        c.ok(&list(
            "ReplicaSet",
            vec![
                replica_set("web", "rs-old", "1"),
                replica_set("web", "rs-new", "2"),
            ],
        ));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &["labelSelector=app%3Dweb"],
        );
        c.ok(&list(
            "Pod",
            vec![
                // The old ReplicaSet's pod crashes, but it is not the rollout's.
                pod(
                    "web-1-a",
                    "rs-old",
                    "web",
                    json!({"reason": "CrashLoopBackOff"}),
                ),
                pod(
                    "web-2-a",
                    "rs-new",
                    "web",
                    json!({"reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{WEB_IMAGE}\"")}),
                ),
            ],
        ));
        // db: its container keeps crashing; its previous log says why.
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/db",
            &[],
        );
        c.ok(&rolled_out(&db, false));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/replicasets",
            &["labelSelector=app%3Ddb"],
        );
        c.ok(&list("ReplicaSet", vec![replica_set("db", "rs-db", "1")]));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &["labelSelector=app%3Ddb"],
        );
        c.ok(&list(
            "Pod",
            vec![pod(
                "db-1-a",
                "rs-db",
                "db",
                json!({
            "reason": "CrashLoopBackOff",
            "message": "back-off 40s restarting failed container=db"}),
            )],
        ));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods/db-1-a/log",
            &["container=db", "previous=true"],
        );
        c.text("starting\nFATAL: POSTGRES_PASSWORD is not set\n");
    })
    .await
    .unwrap();
    let web = &report.workloads[0];
    assert_eq!(
        (web.key.as_str(), &web.state),
        ("deployment/web", &WorkloadState::Failed)
    );
    let why = web.reason.as_deref().unwrap();
    assert!(
        why.starts_with("ImagePullBackOff: Back-off pulling image")
            && why.contains(WEB_IMAGE)
            && why.contains("pod web-2-a, container web"),
        "{why}"
    );
    assert!(web.log_tail.is_empty());
    let db = &report.workloads[1];
    assert_eq!(
        (db.key.as_str(), &db.state),
        ("deployment/db", &WorkloadState::Failed)
    );
    let why = db.reason.as_deref().unwrap();
    assert!(
        why.starts_with("CrashLoopBackOff") && why.contains("last exit code 1"),
        "{why}"
    );
    assert_eq!(
        db.log_tail,
        ["starting", "FATAL: POSTGRES_PASSWORD is not set"]
    );
}

/// A Job's pod template is immutable: a new image makes it anew.
#[tokio::test]
async fn a_job_whose_template_changed_is_replaced() {
    let (st, mut api) = setup(|_| {});
    let job = |image: &str| {
        object(json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "migrate", "image": image}]}}},
        }))
    };
    let new = job(WEB_IMAGE);
    let s = stack(vec![new.clone()], st.dir.path());
    let parent = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "devd-stack-alice", "namespace": "dev",
            "labels": {LABEL_APPLYSET_ID: set().id},
            "annotations": {ANNOTATION_TOOLING: TOOLING, ANNOTATION_GROUP_KINDS: "Job.batch"}},
    });
    const JOB: &str = "/apis/batch/v1/namespaces/dev/jobs/migrate";
    let report = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&parent);
        let c = api.next().await;
        c.expect(Method::GET, "/apis/batch/v1/namespaces/dev/jobs", &[&member_query()]);
        c.ok(&list("Job", vec![applied(&job("r.example.com:5000/demo/web@sha256:00"), None)]));
        let c = api.next().await;
        c.expect_apply(JOB);
        c.reply(422, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Invalid", "code": 422,
            "message": "Job.batch \"migrate\" is invalid: spec.template: Invalid value: core.PodTemplateSpec{}: field is immutable"}));
        let c = api.next().await;
        c.expect(Method::DELETE, JOB, &[]);
        assert_eq!(c.body["propagationPolicy"], "Background");
        c.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        // Still terminating, then gone.
        let c = api.next().await;
        c.expect(Method::GET, JOB, &[]);
        c.ok(&applied(&new, None));
        let c = api.next().await;
        c.expect(Method::GET, JOB, &[]);
        c.not_found();
        let body = expect_member_apply(api.next().await, JOB);
        assert_eq!(
            body["spec"]["template"]["spec"]["containers"][0]["image"],
            WEB_IMAGE
        );
        // Then it runs to completion.
        let c = api.next().await;
        c.expect(Method::GET, JOB, &[]);
        let mut done = applied(&new, None);
        done["status"] = json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
        c.ok(&done);
    })
    .await
    .unwrap();
    assert_eq!(report.changes, ["job/migrate replaced"]);
    assert_eq!(report.workloads[0].state, WorkloadState::Ready);
}

#[tokio::test]
async fn a_refused_apply_names_the_object_the_verb_and_the_grant() {
    let (st, mut api) = setup(|_| {});
    let role = object(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "app-reader"}, "rules": [],
    }));
    let s = stack(vec![role], st.dir.path());
    let forbidden = |what: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
            "code": 403, "message": format!("{what} is forbidden: User \"system:serviceaccount:dev:devd-receiver\" cannot patch resource")})
    };
    let failure = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        // A kind devd does not know: discovery of its group version.
        let c = api.next().await;
        assert_eq!(
            (&c.method, c.path.as_str()),
            (&Method::GET, "/apis/rbac.authorization.k8s.io/v1")
        );
        c.ok(&json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "rbac.authorization.k8s.io/v1", "resources": [
                {"name": "roles", "singularName": "role", "namespaced": true, "kind": "Role",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}]}));
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.not_found();
        let c = api.next().await;
        c.expect_apply(PARENT);
        let body = c.body.clone();
        c.ok(&body);
        let c = api.next().await;
        assert_eq!(
            c.path,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles"
        );
        c.ok(&list("Role", vec![]));
        let c = api.next().await;
        assert_eq!(
            (&c.method, c.path.as_str()),
            (
                &Method::PATCH,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/dev/roles/app-reader"
            )
        );
        assert_eq!(c.content_type, "application/apply-patch+yaml");
        c.reply(
            403,
            &forbidden("roles.rbac.authorization.k8s.io \"app-reader\""),
        );
        assert!(
            api.next_within(Duration::from_millis(300)).await.is_none(),
            "nothing after a failed apply"
        );
    })
    .await
    .unwrap_err();
    let e = &failure.error;
    assert!(
        e.starts_with("Kubernetes refused to patch Role app-reader (from k8s/app.yaml)")
            && e.contains("must grant patch and create on roles.rbac.authorization.k8s.io")
            && e.contains("manifests/receiver/role.yaml"),
        "{e}"
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("role/app-reader failed"), "{log}");

    // A CRD is cluster-scoped: the hint is a ClusterRole.
    let (st, mut api) = setup(|_| {});
    let s = stack(vec![crd()], st.dir.path());
    let failure = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.not_found();
        // A CRD is no member: no parent for a render of CRDs only.
        let c = api.next().await;
        c.expect(Method::GET, CRD_PATH, &[]);
        c.reply(
            403,
            &forbidden("customresourcedefinitions.apiextensions.k8s.io \"widgets.example.com\""),
        );
    })
    .await
    .unwrap_err();
    let e = &failure.error;
    assert!(
        e.starts_with("Kubernetes refused to get CustomResourceDefinition widgets.example.com")
            && e.contains("ClusterRole")
            && e.contains("customresourcedefinitions.apiextensions.k8s.io"),
        "{e}"
    );
}

#[tokio::test]
async fn objects_outside_the_namespace_or_cluster_scoped_are_refused_before_any_apply() {
    let (st, mut api) = setup(|_| {});
    let mut elsewhere = config_map("c", json!({}));
    elsewhere.namespace = Some("kube-system".into());
    let s = stack(vec![elsewhere], st.dir.path());
    let failure = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        assert!(api.next_within(Duration::from_millis(300)).await.is_none());
    })
    .await
    .unwrap_err();
    assert!(
        failure
            .error
            .contains("ConfigMap c (from k8s/app.yaml) is in namespace kube-system"),
        "{}",
        failure.error
    );

    let (st, mut api) = setup(|_| {});
    let mut ns =
        object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    ns.namespace = None;
    let s = stack(vec![ns], st.dir.path());
    let failure = scripted(&mut api, st.backend.apply_stack("alice", &s), async |api| {
        let c = api.next().await;
        assert_eq!((&c.method, c.path.as_str()), (&Method::GET, "/api/v1"));
        c.ok(
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": ["create", "get", "list"]}]}),
        );
        assert!(api.next_within(Duration::from_millis(300)).await.is_none());
    })
    .await
    .unwrap_err();
    assert!(
        failure
            .error
            .contains("Namespace other (from k8s/app.yaml) is cluster-scoped"),
        "{}",
        failure.error
    );
}

#[tokio::test]
async fn remove_stack_deletes_every_member_and_then_the_parent() {
    let (st, mut api) = setup(|_| {});
    let parent = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "devd-stack-alice", "namespace": "dev",
            "labels": {LABEL_APPLYSET_ID: set().id},
            "annotations": {ANNOTATION_TOOLING: TOOLING,
                ANNOTATION_GROUP_KINDS: "ConfigMap,Deployment.apps"}},
    });
    let removed = scripted(&mut api, st.backend.remove_stack("alice"), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&parent);
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/api/v1/namespaces/dev/configmaps",
            &[&member_query()],
        );
        c.ok(&list(
            "ConfigMap",
            vec![applied(&config_map("settings", json!({})), None)],
        ));
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments",
            &[&member_query()],
        );
        c.ok(&list(
            "Deployment",
            vec![applied(&deployment("web", WEB_IMAGE), None)],
        ));
        for path in [
            "/api/v1/namespaces/dev/configmaps/settings",
            "/apis/apps/v1/namespaces/dev/deployments/web",
            PARENT,
        ] {
            let c = api.next().await;
            c.expect(Method::DELETE, path, &[]);
            c.ok(&json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        removed,
        [
            "configmap/settings deleted",
            "deployment/web deleted",
            "secret/devd-stack-alice deleted"
        ]
    );

    // Another tool's Secret of that name is not devd's record: refused.
    let (st, mut api) = setup(|_| {});
    let failure = scripted(&mut api, st.backend.remove_stack("alice"), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "devd-stack-alice", "namespace": "dev",
                "labels": {LABEL_APPLYSET_ID: set().id},
                "annotations": {ANNOTATION_TOOLING: "kubectl/v1.33"}}}));
        assert!(api.next_within(Duration::from_millis(300)).await.is_none());
    })
    .await
    .unwrap_err();
    assert!(
        failure.error.contains("is not devd's ApplySet parent"),
        "{}",
        failure.error
    );
}

/// A `[deploy]` service's logs come from the pod of the stack's workload
/// that runs its image, from the container that runs it.
#[tokio::test]
async fn a_manifest_services_logs_come_from_the_workload_running_its_image() {
    let (st, mut api) = setup(|_| {});
    let svc = Catalog::parse(
        "[deploy]\nmanifests = [\"k8s\"]\n[services.web]\ncontext = \"web\"\nimage = \"demo/web\"\n",
    )
    .unwrap()
    .services
    .remove(0);
    let parent = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "devd-stack-alice", "namespace": "dev",
            "labels": {LABEL_APPLYSET_ID: set().id},
            "annotations": {ANNOTATION_TOOLING: TOOLING,
                ANNOTATION_GROUP_KINDS: "ConfigMap,Deployment.apps"}},
    });
    let mut frontend = applied(&deployment("frontend", WEB_IMAGE), None);
    // The app container is the second one, after a sidecar.
    frontend["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "proxy", "image": "envoyproxy/envoy:v1.30"},
        {"name": "app", "image": WEB_IMAGE}]);
    let db = applied(&deployment("db", "postgres:16"), None);
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    scripted(&mut api, st.backend.logs("alice", &svc, false, tx), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&parent);
        let c = api.next().await;
        c.expect(Method::GET, "/apis/apps/v1/namespaces/dev/deployments", &[&member_query()]);
        c.ok(&list("Deployment", vec![db.clone(), frontend.clone()]));
        // frontend's pods, through its ReplicaSets.
        let c = api.next().await;
        c.expect(Method::GET, "/apis/apps/v1/namespaces/dev/replicasets", &["labelSelector=app%3Dfrontend"]);
        c.ok(&list("ReplicaSet", vec![json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "frontend-1", "uid": "rs-1", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "frontend", "uid": "uid-frontend"}]}})]));
        let c = api.next().await;
        c.expect(Method::GET, "/api/v1/namespaces/dev/pods", &["labelSelector=app%3Dfrontend"]);
        c.ok(&list("Pod", vec![json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "frontend-1-x", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "frontend-1", "uid": "rs-1"}]},
            "status": {"phase": "Running"}})]));
        let c = api.next().await;
        c.expect(Method::GET, "/api/v1/namespaces/dev/pods/frontend-1-x/log", &["container=app"]);
        c.text("listening on :8080\n");
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        out.extend(chunk);
    }
    assert_eq!(String::from_utf8(out).unwrap(), "listening on :8080\n");

    // What runs, for a receiver that restarts: that container's image.
    let (st, mut api) = setup(|_| {});
    let running = scripted(&mut api, st.backend.running("alice", &svc), async |api| {
        let c = api.next().await;
        c.expect(Method::GET, PARENT, &[]);
        c.ok(&parent);
        let c = api.next().await;
        c.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments",
            &[&member_query()],
        );
        c.ok(&list("Deployment", vec![db.clone(), frontend.clone()]));
    })
    .await
    .unwrap();
    assert_eq!(running.map(|r| r.image).as_deref(), Some(WEB_IMAGE));
}

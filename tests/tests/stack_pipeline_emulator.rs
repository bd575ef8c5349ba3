//! The whole `[deploy]` flow on the Kubernetes backend, from a save to the
//! objects in the cluster, against the emulator (PyPI's kmock standing in
//! for the API server, the test playing Kaniko, the Deployment controllers
//! and kubelet: see `kubernetes_emulator.rs` and
//! `devd_tests::kube_cluster`). The real daemon and receiver run
//! `examples/stack` (a kustomization of web and api, built by devd, and a
//! third-party db); the assertions are on the objects the emulator holds
//! and on what `devd status --json` reports.

use devd_tests::Fixture;
use devd_tests::kube_cluster::{ClusterOpts, Setup};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use serde_json::Value;
use std::time::Duration;

const NS: &str = "devd-stack";
const TIMEOUT: Duration = Duration::from_secs(180);

#[track_caller]
fn wait_stack(st: &Setup<'_>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let got = devd_tests::poll_until(TIMEOUT, || {
        last = st.devd.status().raw["stack"].clone();
        done(&last)
    });
    if got.is_none() {
        st.fx.dump_logs();
        panic!("{what}: not reached within {TIMEOUT:?}; last stack status: {last:#}");
    }
    last
}

fn all_ready(stack: &Value) -> bool {
    let ws = stack["workloads"].as_array().cloned().unwrap_or_default();
    stack["error"].is_null() && ws.len() == 3 && ws.iter().all(|w| w["state"] == "ready")
}

fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

fn config_map_of(d: &Deployment) -> String {
    pod_spec(d).containers[0].env_from.clone().unwrap()[0]
        .config_map_ref
        .clone()
        .unwrap()
        .name
}

#[test]
fn emulator_the_stack_deploys_by_digest_and_a_manifest_edit_applies_without_a_build() {
    let fx = Fixture::from_example("stack");
    let st = Setup::start(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "",
        },
    );
    let stack = wait_stack(&st, "every workload ready", all_ready);
    st.cluster.assert_no_errors();
    let reg = st.registry.addr();
    // devd's images by digest, in the containers and the init container
    // that use them; the third-party image as written.
    let web = st.cluster.deployment("web");
    let api = st.cluster.deployment("api");
    let web_image = pod_spec(&web).containers[0].image.clone().unwrap();
    let api_image = pod_spec(&api).containers[0].image.clone().unwrap();
    assert!(
        web_image.starts_with(&format!("{reg}/shop/web@sha256:")),
        "{web_image}"
    );
    assert!(
        api_image.starts_with(&format!("{reg}/shop/api@sha256:")),
        "{api_image}"
    );
    assert_eq!(
        pod_spec(&api).init_containers.unwrap()[0].image.as_deref(),
        Some(api_image.as_str())
    );
    assert_eq!(
        st.cluster.image_of("db"),
        "docker.io/library/busybox:stable"
    );
    // The status names each workload and the devd services it runs.
    let web_row = stack["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"] == "deployment/web")
        .unwrap();
    assert_eq!(web_row["services"], serde_json::json!(["web"]));
    assert_eq!(
        st.devd.status().service("web").unwrap().image.as_deref(),
        Some(web_image.as_str())
    );
    let urls = stack["urls"].as_array().unwrap();
    assert!(
        urls.iter()
            .any(|u| u[0] == "db" && u[1] == format!("http://db.{NS}.svc.cluster.local:5432")),
        "{urls:?}"
    );
    let cm = config_map_of(&web);
    let data = st
        .cluster
        .block_on(st.cluster.api::<ConfigMap>().get(&cm))
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["MODE"], "dev");
    let builds = st.cluster.builds().len();
    assert_eq!(builds, 2, "one Kaniko Job per devd-built image");

    // A manifest-only edit: the new hash-suffixed ConfigMap, web rolled to
    // it, no build, and the old ConfigMap pruned.
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\nconfigMapGenerator:\n- name: web-config\n  behavior: merge\n  literals:\n  - MODE=staging\n",
    );
    let rolled = devd_tests::poll_until(TIMEOUT, || {
        config_map_of(&st.cluster.deployment("web")) != cm
    });
    assert!(rolled.is_some(), "web references the new ConfigMap");
    let cm2 = config_map_of(&st.cluster.deployment("web"));
    let data = st
        .cluster
        .block_on(st.cluster.api::<ConfigMap>().get(&cm2))
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["MODE"], "staging");
    wait_stack(&st, "ready after the manifest edit", all_ready);
    assert_eq!(
        st.cluster.builds().len(),
        builds,
        "no build for a manifest edit"
    );
    assert_eq!(
        pod_spec(&st.cluster.deployment("web")).containers[0]
            .image
            .as_deref(),
        Some(web_image.as_str())
    );
    let names: Vec<String> = st
        .cluster
        .block_on(st.cluster.api::<ConfigMap>().list(&ListParams::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        !names.contains(&cm),
        "the old ConfigMap {cm} is pruned: {names:?}"
    );

    // db leaves the manifests: its Deployment is pruned.
    fx.write(
        "deploy/base/kustomization.yaml",
        "resources:\n- web.yaml\n- api.yaml\nconfigMapGenerator:\n- name: web-config\n  literals:\n  - MODE=base\n",
    );
    let gone = devd_tests::poll_until(TIMEOUT, || {
        st.cluster
            .block_on(st.cluster.api::<Deployment>().get_opt("db"))
            .unwrap()
            .is_none()
    });
    assert!(gone.is_some(), "db's Deployment is pruned");
    st.cluster.assert_no_errors();
}

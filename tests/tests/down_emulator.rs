//! `devd down` with a remote receiver on the Kubernetes backend, against
//! the kmock emulator standing in for the API server (the cluster is
//! played as in `kubernetes_emulator.rs`: `devd_tests::kube_cluster`): the
//! Deployments, Services and Ingress devd applied for the demo's services
//! are deleted, an object devd did not create stays.

use devd_tests::Fixture;
use devd_tests::kube_cluster::{ClusterOpts, Setup};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::PostParams;

const NS: &str = "devd-down";

#[test]
fn emulator_devd_down_deletes_what_devd_applied_and_leaves_the_rest() {
    let fx = Fixture::from_example("demo");
    let st = Setup::start(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "",
        },
    );
    st.wait_all_deployed();
    let c = &st.cluster;
    // Someone else's Deployment in the same namespace.
    let theirs: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "theirs", "namespace": NS, "labels": { "app": "theirs" } },
        "spec": {
            "selector": { "matchLabels": { "app": "theirs" } },
            "template": {
                "metadata": { "labels": { "app": "theirs" } },
                "spec": { "containers": [{ "name": "theirs", "image": "example/theirs:1" }] }
            }
        }
    }))
    .unwrap();
    c.block_on(
        c.api::<Deployment>()
            .create(&PostParams::default(), &theirs),
    )
    .expect("create a Deployment devd does not own");
    for name in ["api", "greeter", "web"] {
        assert!(
            c.block_on(c.api::<Deployment>().get_opt(name))
                .unwrap()
                .is_some()
        );
        assert!(
            c.block_on(c.api::<KubeService>().get_opt(name))
                .unwrap()
                .is_some()
        );
    }
    assert!(
        c.block_on(c.api::<Ingress>().get_opt("web"))
            .unwrap()
            .is_some()
    );

    let run = st.devd.run(&["down", "--yes"]);
    run.assert_success();
    for line in [
        "removed Deployment devd-down/api",
        "removed Service devd-down/greeter",
        "removed Ingress devd-down/web",
        "devd is down",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in:\n{}", run.stdout);
    }
    for name in ["api", "greeter", "web"] {
        assert!(
            c.block_on(c.api::<Deployment>().get_opt(name))
                .unwrap()
                .is_none(),
            "Deployment {name} is still there"
        );
        assert!(
            c.block_on(c.api::<KubeService>().get_opt(name))
                .unwrap()
                .is_none(),
            "Service {name} is still there"
        );
    }
    assert!(
        c.block_on(c.api::<Ingress>().get_opt("web"))
            .unwrap()
            .is_none()
    );
    assert!(
        c.block_on(c.api::<Deployment>().get_opt("theirs"))
            .unwrap()
            .is_some(),
        "an object devd did not create stays"
    );
    let status = st.devd.run(&["status"]);
    assert!(status.stdout.contains("not running"), "{}", status.stdout);
    c.assert_no_errors();
}

//! Live update on the Kubernetes backend, against the kmock emulator (no
//! API server or kubelet can run here): the real receiver copies a save
//! into the greeter's pod through the pod exec API (a tar into `tar -x`,
//! `rm -rf` for deletions), which the emulator's played kubelet runs for
//! real with `podman exec` in a busybox container the test started for
//! the pod; no Kaniko Job and no rollout. When kubelet restarts the
//! container (played: a fresh container, the pod's restart count up), the
//! receiver copies the whole live difference into it again.

use devd_tests::containers::{BUSYBOX_IMAGE, ContainerEnv, require_container_tools};
use devd_tests::kube_cluster::{ClusterOpts, Setup};
use devd_tests::{Fixture, poll_until};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

const NS: &str = "devd-live";

/// Start the container the played kubelet runs greeter's pod in.
fn run_played(cenv: &ContainerEnv) {
    cenv.run(
        "podman",
        &[
            "run",
            "-d",
            "--name",
            "played-greeter",
            BUSYBOX_IMAGE,
            "sleep",
            "600",
        ],
        Duration::from_secs(60),
    )
    .assert_success();
}

/// What `path` holds in the played container (`None`: no such file).
fn in_container(cenv: &ContainerEnv, path: &str) -> Option<String> {
    cenv.output("podman", &["exec", "played-greeter", "cat", path])
        .ok()
}

#[test]
fn emulator_live_update_copies_a_save_into_the_pod_and_again_after_a_restart() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    // The greeter's pages are copied into its running containers.
    let catalog = String::from_utf8(fx.read("devd.toml")).unwrap();
    if !catalog.contains("[services.greeter.live]") {
        fx.write(
            "devd.toml",
            format!(
                "{catalog}[services.greeter.live]\nsync = [{{ from = \"www\", to = \"/www\" }}]\n"
            ),
        );
        fx.commit_all_and_push("greeter: live update");
    }
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    run_played(&cenv);
    let st = Setup::start(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "registry_secret = \"devd-registry\"\n",
        },
    );
    st.wait_service("greeter", "deployed", |s| s.state == "deployed");
    let podman = cenv.command("podman");
    let env: serde_json::Map<String, serde_json::Value> = podman
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), json!(v?.to_str()?))))
        .collect();
    let played = json!({"argv": ["podman", "exec"], "env": env, "target": "played-greeter"});
    let pods = st
        .cluster
        .block_on(
            st.cluster
                .api::<Pod>()
                .list(&ListParams::default().labels("dev.devd/service=greeter")),
        )
        .unwrap();
    assert_eq!(pods.items.len(), 1, "one greeter pod");
    let pod = pods.items[0].metadata.name.clone().unwrap();
    let patch =
        json!({"metadata": {"annotations": {"devd.test/exec.greeter": played.to_string()}}});
    st.cluster
        .block_on(st.cluster.api::<Pod>().patch(
            &pod,
            &PatchParams::default(),
            &Patch::Merge(patch),
        ))
        .unwrap();
    let builds = st.cluster.builds_of("greeter").len();
    let greeter_rollouts = || {
        st.cluster
            .rollouts()
            .iter()
            .filter(|(d, _, _)| d == "greeter")
            .count()
    };
    let rollouts = greeter_rollouts();
    let image = st
        .devd
        .status()
        .service("greeter")
        .and_then(|s| s.image)
        .unwrap();

    // An edit and a new file in a new directory: copied into the pod.
    fx.write(
        "services/greeter/www/index.html",
        "<h1>greeter, live</h1>\n",
    );
    fx.write("services/greeter/www/new/page.html", "new page\n");
    let s = st.wait_service("greeter", "live-updated", |s| {
        s.state == "deployed" && s.live_files == 2
    });
    assert_eq!(s.image.as_deref(), Some(image.as_str()), "the same image");
    let first = s.live_updated_ms.expect("the time of the live update");
    assert_eq!(
        in_container(&cenv, "/www/index.html").as_deref(),
        Some("<h1>greeter, live</h1>\n")
    );
    assert_eq!(
        in_container(&cenv, "/www/new/page.html").as_deref(),
        Some("new page\n")
    );
    // A deletion reaches it too.
    fx.remove("services/greeter/www/new/page.html");
    st.wait_service("greeter", "the deletion live-updated", |s| {
        s.state == "deployed" && s.live_updated_ms.is_some_and(|t| t > first)
    });
    let gone = poll_until(Duration::from_secs(30), || {
        in_container(&cenv, "/www/new/page.html").is_none()
    });
    assert!(gone.is_some(), "the deleted page is gone from the pod");
    assert_eq!(
        st.cluster.builds_of("greeter").len(),
        builds,
        "no Kaniko Job"
    );
    assert_eq!(greeter_rollouts(), rollouts, "no rollout");

    // kubelet restarts the container: it starts again from its image (a
    // fresh container here) and the pod's restart count goes up. The
    // receiver copies the live difference into it again.
    cenv.run(
        "podman",
        &["rm", "-f", "-t", "0", "played-greeter"],
        Duration::from_secs(60),
    )
    .assert_success();
    run_played(&cenv);
    assert_eq!(in_container(&cenv, "/www/index.html"), None);
    let mut status = serde_json::to_value(&pods.items[0].status).unwrap();
    status["containerStatuses"][0]["restartCount"] = json!(1);
    st.cluster
        .block_on(st.cluster.api::<Pod>().patch_status(
            &pod,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        ))
        .unwrap();
    let again = poll_until(Duration::from_secs(60), || {
        in_container(&cenv, "/www/index.html").as_deref() == Some("<h1>greeter, live</h1>\n")
    });
    assert!(
        again.is_some(),
        "the live difference is copied into the restarted container"
    );
    assert_eq!(st.cluster.builds_of("greeter").len(), builds);
    st.cluster.assert_no_errors();
}

//! The repository's own manifests (`[deploy]`) on the local backend, for
//! real: `examples/stack` (a kustomization of web and api, built by devd,
//! and a third-party `db`) started with `devd start`, run by the embedded
//! receiver through `podman kube play`. The tests assert what the
//! workloads serve at their URLs, which images were built, which pods
//! were replaced, and what `devd status` reports.

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::{Devd, Fixture, poll_until};
use serde_json::Value;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

/// `stack` of `devd status --json` once `done` holds for it.
#[track_caller]
fn wait_stack(devd: &Devd<'_>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let got = poll_until(TIMEOUT, || {
        last = devd.status().raw["stack"].clone();
        done(&last)
    });
    if got.is_none() {
        devd.fixture().dump_logs();
        panic!("{what}: not reached within {TIMEOUT:?}; last stack status: {last:#}");
    }
    last
}

fn workload<'a>(stack: &'a Value, key: &str) -> Option<&'a Value> {
    stack["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["key"] == key)
}

fn all_ready(stack: &Value) -> bool {
    let ws = stack["workloads"].as_array().cloned().unwrap_or_default();
    stack["error"].is_null() && !ws.is_empty() && ws.iter().all(|w| w["state"] == "ready")
}

fn url(stack: &Value, service: &str) -> String {
    stack["urls"]
        .as_array()
        .and_then(|u| u.iter().find(|p| p[0] == service))
        .and_then(|p| p[1].as_str())
        .unwrap_or_else(|| panic!("no URL for Service {service}: {stack:#}"))
        .to_owned()
}

fn image(devd: &Devd<'_>, service: &str) -> String {
    devd.status()
        .service(service)
        .and_then(|s| s.image)
        .unwrap_or_else(|| panic!("{service} has no image"))
}

/// Poll `url` until it answers 200 with a body containing `text`.
#[track_caller]
fn wait_served(url: &str, text: &str) -> String {
    let mut last = String::new();
    let ok = poll_until(TIMEOUT, || match http_get(url) {
        Ok((200, body)) => {
            last = body;
            last.contains(text)
        }
        Ok((code, body)) => {
            last = format!("{code}: {body}");
            false
        }
        Err(e) => {
            last = format!("{e:#}");
            false
        }
    });
    assert!(ok.is_some(), "{url} never served {text:?}; last: {last}");
    last
}

/// The ids of the running containers named `app` (not the infra or init
/// ones) of the pods of workload `app` (pods carry their template's `app`
/// label; podman names a pod's containers `<pod>-<container>`).
fn containers_of(cenv: &ContainerEnv, app: &str) -> Vec<String> {
    let pods = cenv
        .output(
            "podman",
            &[
                "pod",
                "ps",
                "--filter",
                &format!("label=app={app}"),
                "--format",
                "{{.Name}}",
            ],
        )
        .unwrap();
    let mut ids = Vec::new();
    for pod in pods.lines().filter(|l| !l.trim().is_empty()) {
        let out = cenv
            .output(
                "podman",
                &[
                    "ps",
                    "--filter",
                    &format!("pod={pod}"),
                    "--format",
                    "{{.ID}} {{.Names}}",
                ],
            )
            .unwrap();
        ids.extend(out.lines().filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            (name.trim() == format!("{pod}-{app}")).then(|| id.to_owned())
        }));
    }
    ids.sort();
    ids
}

#[test]
fn a_kustomization_runs_and_each_kind_of_edit_does_only_what_it_needs() {
    require_container_tools();
    let fx = Fixture::from_example("stack");
    fx.write_local_config(
        "[sync]\ndebounce_ms = 150\n[secrets.db-credentials]\npassword = \"hunter2\"\n",
    );
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();

    // Everything runs: the two devd-built workloads and the third-party db.
    let stack = wait_stack(&devd, "the stack ready", all_ready);
    for key in ["deployment/web", "deployment/api", "deployment/db"] {
        assert_eq!(workload(&stack, key).unwrap()["state"], "ready", "{key}");
    }
    assert_eq!(
        workload(&stack, "deployment/web").unwrap()["services"],
        serde_json::json!(["web"])
    );
    let web = url(&stack, "web");
    let api = url(&stack, "api");
    assert!(web.starts_with("http://127.0.0.1:"), "{web}");
    wait_served(&format!("{web}/"), "shop: web v1");
    wait_served(&format!("{api}/"), "api v1");
    wait_served(&format!("{}/", url(&stack, "db")), "db-ok");
    // The overlay's ConfigMap and the Secret from devd.local.toml reached
    // web's environment (the password's length only).
    wait_served(&format!("{web}/env.txt"), "mode=dev password_length=7");
    // A pod reaches another by its Service name (`devd exec` finds web's
    // container by its image).
    let reach = devd.run(&["exec", "web", "--", "wget", "-qO-", "http://db:5432/"]);
    reach.assert_success();
    assert_eq!(reach.stdout.trim(), "db-ok");
    let human = devd.run(&["status"]);
    human.assert_success();
    assert!(human.stdout.contains("deployment/db"), "{}", human.stdout);
    assert!(
        !human.stdout.contains("hunter2")
            && !devd.run(&["status", "--json"]).stdout.contains("hunter2")
    );

    // An edit in web's context: web's image only is built; api's pod stays.
    let (web_image, api_image) = (image(&devd, "web"), image(&devd, "api"));
    let api_pods = containers_of(&cenv, "api");
    assert_eq!(api_pods.len(), 1, "{api_pods:?}");
    fx.write("services/web/www/index.html", "<h1>shop: web v2</h1>\n");
    wait_served(&format!("{web}/"), "shop: web v2");
    let stack = wait_stack(&devd, "ready after web's build", all_ready);
    assert_ne!(image(&devd, "web"), web_image, "web was built");
    assert_eq!(image(&devd, "api"), api_image, "api was not built");
    assert_eq!(
        containers_of(&cenv, "api"),
        api_pods,
        "api's pod was not replaced"
    );
    assert_eq!(url(&stack, "web"), web, "the same URL");

    // A manifest-only edit (the overlay's ConfigMap): no build, web rolls.
    let web_image = image(&devd, "web");
    let web_pods = containers_of(&cenv, "web");
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\nconfigMapGenerator:\n- name: web-config\n  behavior: merge\n  literals:\n  - MODE=staging\n",
    );
    wait_served(&format!("{web}/env.txt"), "mode=staging");
    assert_eq!(
        image(&devd, "web"),
        web_image,
        "no image built for a manifest edit"
    );
    assert_eq!(image(&devd, "api"), api_image);
    assert_ne!(
        containers_of(&cenv, "web"),
        web_pods,
        "web's pod was replaced"
    );
    assert_eq!(containers_of(&cenv, "api"), api_pods, "api's pod was not");

    // A kustomization that does not build: kubectl's error, and what ran
    // keeps running.
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\n- missing.yaml\n",
    );
    let stack = wait_stack(&devd, "the render error", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.yaml"))
    });
    assert!(
        stack["error"]
            .as_str()
            .unwrap()
            .contains("kubectl kustomize"),
        "{stack:#}"
    );
    wait_served(&format!("{web}/env.txt"), "mode=staging");

    // db removed from the base: its pod goes, the rest stays.
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\n",
    );
    fx.write(
        "deploy/base/kustomization.yaml",
        "resources:\n- web.yaml\n- api.yaml\nconfigMapGenerator:\n- name: web-config\n  literals:\n  - MODE=base\n",
    );
    let stack = wait_stack(&devd, "db pruned", |s| {
        all_ready(s) && workload(s, "deployment/db").is_none()
    });
    assert!(workload(&stack, "deployment/web").is_some());
    let gone = poll_until(TIMEOUT, || containers_of(&cenv, "db").is_empty());
    assert!(gone.is_some(), "db's containers are gone");
    wait_served(&format!("{web}/env.txt"), "mode=base");

    // devd down removes every pod devd played.
    let down = devd.run(&["down", "--yes"]);
    down.assert_success();
    for app in ["web", "api"] {
        let gone = poll_until(Duration::from_secs(60), || {
            containers_of(&cenv, app).is_empty()
        });
        assert!(
            gone.is_some(),
            "{app}'s containers are gone after devd down"
        );
    }
}

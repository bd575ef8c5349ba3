//! `devd render` on `examples/stack` (a kustomization: base and overlay,
//! a ConfigMap generator, a Secret reference, a third-party image, two
//! devd-built services, an init container running a devd image): the real
//! binary and the real `kubectl kustomize`, its output checked object by
//! object against kubectl's own render of the same kustomization, and
//! validated strictly against Kubernetes' OpenAPI schemas.

use devd_tests::kmock::python;
use devd_tests::repo::Fixture;
use serde_json::Value;
use std::process::Command;

fn kustomize(dir: &std::path::Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/overlays/dev"])
        .current_dir(dir)
        .output()
        .expect("kubectl (scripts/test.sh installs it into .venv/bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let list: Vec<Option<Value>> = serde_saphyr::from_multiple(&text).unwrap();
    list.into_iter().flatten().collect()
}

fn render(fx: &Fixture, args: &[&str]) -> Value {
    let mut all = vec!["render", "-o", "json"];
    all.extend_from_slice(args);
    let run = fx.devd().run(&all);
    run.assert_success();
    serde_json::from_str(&run.stdout).expect("a JSON List")
}

/// `shop/web:latest`'s replacement, e.g.
/// `localhost/shop/web:devd-0123…` (40 hex digits).
fn devd_tag(image: &str, repository: &str) -> String {
    let tag = image
        .strip_prefix(&format!("{repository}:devd-"))
        .unwrap_or_else(|| panic!("{image} is not {repository}:devd-<digest>"));
    assert!(
        tag.len() == 40 && tag.chars().all(|c| c.is_ascii_hexdigit()),
        "{image}"
    );
    tag.to_owned()
}

#[test]
fn devd_render_is_kubectls_render_with_devd_images_in_the_workspace_namespace() {
    let fx = Fixture::from_example("stack");
    fx.write_local_config("[secrets.db-credentials]\npassword = \"hunter2-not-printed\"\n");
    let raw = fx
        .devd()
        .run(&["render", "-o", "json", "--namespace", "devd-alice"]);
    raw.assert_success();
    assert!(!raw.stdout.contains("hunter2") && !raw.stderr.contains("hunter2"));
    let list: Value = serde_json::from_str(&raw.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    let expected = kustomize(fx.laptop());
    // Every object of kubectl's render, plus the Secret of [secrets].
    assert_eq!(items.len(), expected.len() + 1);
    let mut web_tag = None;
    let mut api_tags = Vec::new();
    for want in &expected {
        let kind = want["kind"].as_str().unwrap();
        let name = want["metadata"]["name"].as_str().unwrap();
        let got = items
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} missing"));
        // Only the namespace and devd's images differ.
        let mut want = want.clone();
        want["metadata"]["namespace"] = "devd-alice".into();
        if kind == "Deployment" {
            let spec = &mut want["spec"]["template"]["spec"];
            for list in ["initContainers", "containers"] {
                let containers = spec.get_mut(list).and_then(|c| c.as_array_mut());
                for (i, c) in containers.into_iter().flatten().enumerate() {
                    let image = c["image"].as_str().unwrap().to_owned();
                    let got_image = got["spec"]["template"]["spec"][list][i]["image"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    match image.as_str() {
                        "shop/web:latest" => {
                            web_tag = Some(devd_tag(&got_image, "localhost/shop/web"))
                        }
                        "shop/api:latest" | "registry.example.com/shop/api:v1" => {
                            api_tags.push(devd_tag(&got_image, "localhost/shop/api"))
                        }
                        // Third-party: as written.
                        other => assert_eq!(got_image, other),
                    }
                    c["image"] = got_image.into();
                }
            }
        }
        assert_eq!(got, &want, "{kind}/{name}");
    }
    // The init container and the api Deployment run the same api image.
    assert_eq!(api_tags.len(), 2);
    assert_eq!(api_tags[0], api_tags[1]);
    let web_tag = web_tag.expect("web's image replaced");
    let secret = items
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "db-credentials")
        .expect("the Secret of [secrets]");
    assert_eq!(secret["metadata"]["namespace"], "devd-alice");
    assert_eq!(secret["data"]["password"], "");

    // The tag is the context digest: an edit in web's context changes
    // web's tag only; an edit in the manifests changes neither.
    fx.write("services/web/www/index.html", "<h1>shop: web v2</h1>\n");
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\nconfigMapGenerator:\n- name: web-config\n  behavior: merge\n  literals:\n  - MODE=staging\n",
    );
    let again = render(
        &fx,
        &[
            "--namespace",
            "devd-alice",
            "--registry",
            "registry.test:5000",
        ],
    );
    let image_of = |list: &Value, deployment: &str, field: &str| -> String {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == deployment)
            .unwrap()["spec"]["template"]["spec"][field][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let web2 = devd_tag(
        &image_of(&again, "web", "containers"),
        "registry.test:5000/shop/web",
    );
    assert_ne!(web2, web_tag);
    let api2 = devd_tag(
        &image_of(&again, "api", "containers"),
        "registry.test:5000/shop/api",
    );
    assert_eq!(api2, api_tags[0]);
    let cm = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .unwrap();
    assert_eq!(cm["data"]["MODE"], "staging");

    // --service: the workloads that run its image and their Services.
    let only = render(&fx, &["--service", "api"]);
    let mut keys: Vec<String> = only["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["Deployment/api", "Service/api"]);

    // Strict schema validation of the YAML output (unknown fields refused).
    let yaml = fx.devd().run(&["render", "--namespace", "devd-alice"]);
    yaml.assert_success();
    let file = fx.root().join("render.yaml");
    std::fs::write(&file, &yaml.stdout).unwrap();
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "-k", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn devd_render_refuses_bad_manifests_saying_what_is_wrong() {
    let fx = Fixture::from_example("stack");
    // kubectl's own error, and a non-zero exit.
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\n- missing.yaml\n",
    );
    let run = fx.devd().run(&["render"]);
    assert!(!run.success());
    assert!(
        run.stderr
            .contains("kubectl kustomize deploy/overlays/dev failed")
            && run.stderr.contains("missing.yaml"),
        "{}",
        run.stderr
    );
    // A cluster-scoped object is named.
    fx.write(
        "deploy/overlays/dev/kustomization.yaml",
        "resources:\n- ../../base\n- role.yaml\n",
    );
    fx.write(
        "deploy/overlays/dev/role.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: everyone-admin}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: []\n",
    );
    let run = fx.devd().run(&["render"]);
    assert!(!run.success());
    assert!(
        run.stderr.contains("clusterrolebinding/everyone-admin"),
        "{}",
        run.stderr
    );
    // A YAML error in plain manifests names the file and line.
    fx.write("devd.toml", "[deploy]\nmanifests = [\"k8s\"]\n[services.web]\ncontext = \"services/web\"\nimage = \"shop/web\"\n");
    fx.write(
        "k8s/web.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n",
    );
    let run = fx.devd().run(&["render"]);
    assert!(!run.success());
    assert!(run.stderr.contains("k8s/web.yaml:"), "{}", run.stderr);
    // A service whose image no manifest uses: a warning naming it.
    fx.write(
        "k8s/web.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\n",
    );
    let run = fx.devd().run(&["render"]);
    run.assert_success();
    assert!(
        run.stderr.contains(
            "warning: service web: no container in the manifests uses image \"shop/web\""
        ),
        "{}",
        run.stderr
    );
    // Without [deploy]: nothing to render, and why.
    fx.write(
        "devd.toml",
        "[services.web]\ncontext = \"services/web\"\nport = 8080\n",
    );
    let run = fx.devd().run(&["render"]);
    assert!(!run.success());
    assert!(run.stderr.contains("no [deploy] table"), "{}", run.stderr);
}

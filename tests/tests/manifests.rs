//! The Kubernetes manifests (`manifests/`), offline: no API server runs
//! here.
//!
//! - Every kustomization is rendered with kubectl's built-in kustomize
//!   (`kubectl kustomize`, offline), with placeholder files for the
//!   git-ignored secretGenerator inputs, and every object is validated with
//!   PyPI's `kubernetes-validate --strict` (the OpenAPI schemas of each
//!   Kubernetes release, unknown fields refused) for 1.30 and 1.37.
//! - A misspelled field fails that validation (and passes without
//!   `--strict`, which is why it is on).
//! - The receiver's Role grants exactly the API calls of the Kubernetes
//!   backend: they are read from `cluster-receiver/src/build/backend/kubernetes/`
//!   (every `Api<Kind>` binding and the methods called on it, through the
//!   generic helpers too), cross-checked against the request paths its
//!   tower-test scenarios assert, and compared both ways with the Role. The
//!   vacuum's ClusterRole is checked the same way against `vacuum.rs`.
//! - What the receiver needs of its objects: one replica with `Recreate`, the
//!   security context, probes, volumes, Services, labels.

use devd_tests::kmock::python;
use devd_tests::process::{self, Logs, Run};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Env {
    dir: tempfile::TempDir,
    logs: Logs,
}

impl Env {
    /// A copy of `manifests/` with placeholder secret files.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path().join("logs"));
        let copy = dir.path().join("manifests");
        copy_dir(&root().join("manifests"), &copy);
        let secrets = copy.join("receiver/secrets");
        for (f, content) in [
            ("dockerconfig.json", r#"{"auths": {}}"#),
            ("git-ssh-key", "placeholder\n"),
            ("known_hosts", "placeholder\n"),
            ("git-token", "placeholder\n"),
        ] {
            std::fs::write(secrets.join(f), content).unwrap();
        }
        Self { dir, logs }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn run(&self, cmd: &mut Command, label: &str) -> Run {
        process::run(cmd, &self.logs, label, Duration::from_secs(120))
    }

    /// `kubectl kustomize manifests/<sub>` as YAML.
    #[track_caller]
    fn render(&self, sub: &str) -> String {
        let kubectl = process::find_program("kubectl").unwrap_or_else(|| {
            panic!(
                "the manifest tests render kustomizations with `kubectl kustomize` (kubectl's \
                 built-in kustomize, offline); install kubectl"
            )
        });
        let run = self.run(
            Command::new(kubectl)
                .arg("kustomize")
                .arg(self.manifests().join(sub)),
            "kustomize",
        );
        run.assert_success();
        run.stdout
    }

    /// `kubectl kustomize` of a kustomization written next to the copy of
    /// `manifests/` (for components, which render only inside one).
    #[track_caller]
    fn render_with(&self, name: &str, kustomization: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
        let kubectl = process::find_program("kubectl").expect("kubectl");
        let run = self.run(
            Command::new(kubectl).arg("kustomize").arg(&dir),
            "kustomize",
        );
        run.assert_success();
        run.stdout
    }

    /// Write `yaml` to a file and validate it strictly for `version`.
    fn validate(&self, name: &str, yaml: &str, version: &str, strict: bool) -> Run {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "kubernetes_validate", "-k", version]);
        if strict {
            cmd.arg("--strict");
        }
        cmd.arg(&file);
        self.run(&mut cmd, "kubernetes-validate")
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Panic with the install hint unless kubernetes-validate is importable.
#[track_caller]
fn require_validator() {
    let ok = Command::new(python())
        .args(["-c", "import kubernetes_validate, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the manifest tests need PyPI's kubernetes-validate in {}; install it with\n    \
         .venv/bin/pip install kubernetes-validate==1.37.0  (scripts/test.sh does this)",
        python().display()
    );
}

/// The objects of a multi-document YAML stream, as JSON (PyYAML).
fn objects(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

/// Every kustomization devd ships, rendered.
fn renders(env: &Env) -> Vec<(&'static str, String)> {
    vec![
        ("install", env.render(".")),
        ("nodeport", env.render("overlays/nodeport")),
        ("workspace", env.render("workspace")),
    ]
}

#[test]
fn every_manifest_validates_strictly_on_kubernetes_1_30_and_1_37() {
    require_validator();
    let env = Env::new();
    let mut sets = renders(&env);
    // The optional NetworkPolicy component, with the receiver.
    sets.push(("networkpolicy", netpol_render(&env)));
    // The templates on their own too, as `devd workspace create` reads them.
    for f in ["workspace/namespace.yaml", "vacuum/cronjob.yaml"] {
        sets.push((f, std::fs::read_to_string(env.manifests().join(f)).unwrap()));
    }
    for (name, yaml) in &sets {
        let objs = objects(yaml);
        assert!(!objs.is_empty(), "{name} renders nothing");
        for v in VERSIONS {
            let run = env.validate(&name.replace('/', "-"), yaml, v, true);
            assert!(
                run.success(),
                "{name} does not validate against Kubernetes {v}:\n{}",
                run.output()
            );
            let passed = run.output().matches(" passed for resource ").count();
            assert_eq!(
                passed,
                objs.len(),
                "{name} on {v}: every object must be validated:\n{}",
                run.output()
            );
        }
    }
    let install = objects(&sets[0].1);
    let kinds: BTreeSet<&str> = install.iter().filter_map(|o| o["kind"].as_str()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "PersistentVolumeClaim",
        "Deployment",
        "CronJob",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(k), "the install renders no {k}: {kinds:?}");
    }
}

/// The DevBuild CRD is generated: the committed manifest is exactly what
/// `devd-receiver crd` prints from the Rust type, so the two cannot drift;
/// it is installed once per cluster (it is cluster-scoped), by the install
/// and not by a workspace.
#[test]
fn the_devbuild_crd_is_what_devd_receiver_crd_prints() {
    let out = Command::new(devd_tests::bin("devd-receiver"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(root().join("manifests/crd/devbuild.yaml")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "manifests/crd/devbuild.yaml differs from the Rust type; regenerate it with\n    \
         cargo run -p devd-receiver -- crd > manifests/crd/devbuild.yaml"
    );
    let env = Env::new();
    let install = objects(&env.render("."));
    let crd = find(&install, "CustomResourceDefinition", "devbuilds.devd.dev");
    assert_eq!(crd["spec"]["group"], "devd.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "DevBuild");
    assert!(crd["metadata"].get("namespace").is_none());
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("priority").is_none())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Service", "Phase", "Digest", "Duration(ms)", "Age"]
    );
    let phases = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
        ["enum"];
    assert_eq!(
        phases,
        &serde_json::json!(["Pending", "Running", "Succeeded", "Failed", "Reused"])
    );
    let workspace = objects(&env.render("workspace"));
    assert!(
        !workspace
            .iter()
            .any(|o| o["kind"] == "CustomResourceDefinition"),
        "a workspace does not install the cluster-scoped CRD"
    );
}

#[test]
fn a_misspelled_field_fails_strict_validation() {
    require_validator();
    let env = Env::new();
    let yaml = env.render(".");
    assert!(env.validate("good", &yaml, "1.37.0", true).success());
    for (good, bad, field) in [
        ("  replicas: 1\n", "  replica: 1\n", "replica"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "readOnlyRootFileSystem",
        ),
    ] {
        assert!(
            yaml.contains(good),
            "{good:?} not in the rendered manifests"
        );
        let broken = yaml.replacen(good, bad, 1);
        for v in VERSIONS {
            let run = env.validate("bad", &broken, v, true);
            assert!(
                !run.success(),
                "{field} passed strict validation on {v}:\n{}",
                run.output()
            );
            assert!(
                run.output().contains(&format!("'{field}' was unexpected")),
                "the error names the field:\n{}",
                run.output()
            );
        }
        assert!(
            env.validate("bad-lax", &broken, "1.37.0", false).success(),
            "without --strict the misspelling passes: that is why the tests use it"
        );
    }
}

#[test]
fn objects_are_what_the_issue_asks_for() {
    let env = Env::new();
    let objs = objects(&env.render("."));
    let ns = "devd";
    for o in &objs {
        let labels = &o["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/part-of"], "devd",
            "{} {} lacks app.kubernetes.io/part-of",
            o["kind"], o["metadata"]["name"]
        );
        assert!(
            labels["app.kubernetes.io/name"].is_string(),
            "{} {} lacks app.kubernetes.io/name",
            o["kind"],
            o["metadata"]["name"]
        );
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
        ];
        if !cluster_scoped.contains(&o["kind"].as_str().unwrap()) {
            assert_eq!(o["metadata"]["namespace"], ns, "{}", o["metadata"]["name"]);
        }
    }
    let d = find(&objs, "Deployment", "devd-receiver");
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "devd-receiver");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--http-listen=0.0.0.0:8080"), "{args:?}");
    assert!(
        args.contains(&"--config=/etc/devd/receiver.toml"),
        "{args:?}"
    );
    let ports: BTreeMap<&str, (&str, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                (
                    p["protocol"].as_str().unwrap(),
                    p["containerPort"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(ports["quic"], ("UDP", 7447));
    assert_eq!(ports["sync-tcp"], ("TCP", 7447), "the TCP + TLS fallback");
    assert_eq!(ports["http"], ("TCP", 8080));
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(
        volumes[mounts["/var/lib/devd"]]["persistentVolumeClaim"]["claimName"],
        "devd-receiver-data"
    );
    assert!(volumes[mounts["/tmp"]]["emptyDir"].is_object());
    let config = &volumes[mounts["/etc/devd/receiver.toml"]]["configMap"]["name"];
    let cm = find(&objs, "ConfigMap", config.as_str().unwrap());
    // The mounted configuration is one the receiver accepts.
    let toml = cm["data"]["receiver.toml"].as_str().unwrap();
    let cfg = devd_receiver::config::ReceiverConfig::parse(toml, "receiver.toml")
        .unwrap_or_else(|e| panic!("the ConfigMap's receiver.toml is refused: {e}"));
    let cfg_git_token_file = cfg.git.token_file.clone();
    let k = cfg.kubernetes.unwrap();
    assert_eq!(k.context_url.as_deref(), Some("http://devd-receiver:8080"));
    assert_eq!(k.registry_secret.as_deref(), Some("devd-registry"));
    for key in ["git-remote", "workspace", "advertise"] {
        assert!(cm["data"][key].is_string(), "ConfigMap lacks {key}");
    }
    let registry = find(&objs, "Secret", "devd-registry");
    assert_eq!(registry["type"], "kubernetes.io/dockerconfigjson");
    assert!(registry["data"][".dockerconfigjson"].is_string());
    let git = find(&objs, "Secret", "devd-git");
    for key in ["ssh-privatekey", "known_hosts", "token"] {
        assert!(git["data"][key].is_string(), "devd-git lacks {key}");
    }
    // [git] token_file is where the Deployment mounts devd-git's token.
    assert_eq!(
        cfg_git_token_file.as_deref(),
        Some(std::path::Path::new("/etc/devd/git/token"))
    );
    assert_eq!(
        volumes[mounts["/etc/devd/git"]]["secret"]["secretName"],
        "devd-git"
    );
    let pvc = find(&objs, "PersistentVolumeClaim", "devd-receiver-data");
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    let http = find(&objs, "Service", "devd-receiver");
    assert_eq!(http["spec"]["type"], "ClusterIP");
    assert_eq!(http["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(http["spec"]["ports"][0]["port"], 8080);
    let quic = find(&objs, "Service", "devd-receiver-quic");
    assert_eq!(quic["spec"]["type"], "LoadBalancer");
    assert_eq!(quic["spec"]["ports"][0]["protocol"], "UDP");
    // The TCP + TLS fallback on the same port number, to the same pod port.
    assert_eq!(quic["spec"]["ports"][1]["protocol"], "TCP");
    assert_eq!(quic["spec"]["ports"][1]["port"], 7447);
    assert_eq!(quic["spec"]["ports"][1]["targetPort"], "sync-tcp");
    for svc in [http, quic] {
        let sel = svc["spec"]["selector"].as_object().unwrap();
        for (k, v) in sel {
            assert_eq!(
                &d["spec"]["template"]["metadata"]["labels"][k], v,
                "Service selector {k} does not match the pod"
            );
        }
    }
    assert_eq!(
        quic["spec"]["externalTrafficPolicy"], "Local",
        "a LoadBalancer keeps the laptop's address"
    );
    // Private registries without node credentials: the receiver's and the
    // vacuum's image are pulled with the registry Secret.
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "devd-registry"}])
    );
    let np = objects(&env.render("overlays/nodeport"));
    let quic = find(&np, "Service", "devd-receiver-quic");
    assert_eq!(quic["spec"]["type"], "NodePort");
    assert_eq!(
        quic["spec"]["externalTrafficPolicy"], "Cluster",
        "with Local, every node without the receiver's pod drops what laptops send"
    );
    assert_eq!(quic["spec"]["ports"][0]["nodePort"], 30747);
    assert_eq!(quic["spec"]["ports"][1]["nodePort"], 30747);
    for (kind, name) in [
        ("RoleBinding", "devd-receiver"),
        ("ClusterRoleBinding", "devd-vacuum"),
    ] {
        let b = find(&objs, kind, name);
        assert_eq!(b["subjects"][0]["namespace"], ns, "{kind} subject");
    }
    let cron = find(&objs, "CronJob", "devd-vacuum");
    let job_pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(job_pod["serviceAccountName"], "devd-vacuum");
    assert_eq!(
        job_pod["imagePullSecrets"],
        serde_json::json!([{"name": "devd-registry"}])
    );
    assert_eq!(job_pod["containers"][0]["args"][0], "vacuum");
    assert_eq!(
        job_pod["containers"][0]["image"], c["image"],
        "the vacuum runs the receiver's image"
    );
    // The workspace template: devd's labels, owner and expiry, and a
    // receiver bound in that namespace.
    let ws = objects(&env.render("workspace"));
    let wns = find(&ws, "Namespace", "devd-alice");
    assert_eq!(
        wns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "devd"
    );
    assert!(wns["metadata"]["labels"]["dev.devd/workspace"].is_string());
    let ann = &wns["metadata"]["annotations"];
    assert!(ann[devd_sync::labels::ANNOTATION_OWNER].is_string());
    let expires = ann[devd_sync::labels::ANNOTATION_EXPIRES].as_str().unwrap();
    assert!(
        expires.ends_with('Z') && expires.contains('T'),
        "RFC 3339: {expires}"
    );
    let selector = devd_sync::labels::selector();
    for term in selector.split(',') {
        let key = term.split('=').next().unwrap();
        assert!(
            wns["metadata"]["labels"][key].is_string(),
            "the template lacks the vacuum's label {key}"
        );
    }
    assert_eq!(
        find(&ws, "RoleBinding", "devd-receiver")["subjects"][0]["namespace"],
        "devd-alice"
    );
}

/// What `devd workspace create` applies: `manifests/workspace/receiver.json`,
/// compiled into devd, must be the render of `manifests/receiver` (without
/// the Secrets, which it copies from the install's namespace instead).
/// `DEVD_BLESS_MANIFESTS=1` rewrites the file from the render.
#[test]
fn the_receiver_devd_applies_is_the_render_of_manifests_receiver() {
    let env = Env::new();
    let rendered: Vec<Value> = objects(&env.render("receiver"))
        .into_iter()
        .filter(|o| o["kind"] != "Secret")
        .collect();
    let path = root().join(devd::workspace::RECEIVER_OBJECTS_PATH);
    if std::env::var_os("DEVD_BLESS_MANIFESTS").is_some() {
        let text = serde_json::to_string_pretty(&rendered).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let embedded = devd::workspace::receiver_objects().expect("the embedded objects parse");
    let embedded: Vec<Value> = embedded
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    assert!(
        embedded == rendered,
        "{} is not the render of manifests/receiver (edit the manifests, then \
         DEVD_BLESS_MANIFESTS=1 cargo test -p devd-tests --test manifests -- \
         the_receiver_devd_applies; and rebuild devd)",
        path.display()
    );
    let kinds: BTreeSet<&str> = rendered.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ])
    );
}

// ----- RBAC against the code ------------------------------------------------

/// (API group, resource[/subresource], verb)
type Grant = (String, String, String);

fn grant(g: &str, r: &str, v: &str) -> Grant {
    (g.to_owned(), r.to_owned(), v.to_owned())
}

/// The API group and resource of a k8s-openapi type the code names.
fn resource_of(ty: &str) -> (&'static str, &'static str) {
    match ty {
        "Job" => ("batch", "jobs"),
        "Pod" => ("", "pods"),
        "Deployment" => ("apps", "deployments"),
        "KubeService" | "Service" => ("", "services"),
        "Ingress" => ("networking.k8s.io", "ingresses"),
        "Namespace" => ("", "namespaces"),
        "DevBuild" => ("devd.dev", "devbuilds"),
        "Secret" => ("", "secrets"),
        "ReplicaSet" => ("apps", "replicasets"),
        "Event" => ("", "events"),
        "CustomResourceDefinition" => ("apiextensions.k8s.io", "customresourcedefinitions"),
        other => panic!(
            "the code calls the API for `{other}`, which this test cannot map to an RBAC \
             resource: add it to resource_of() and grant it in manifests/"
        ),
    }
}

/// The RBAC grants a kube `Api` method needs; `apply` is a server-side
/// apply patch, which the API server also authorizes as `create` when the
/// object does not exist yet (apiserver's patch handler).
fn grants_of(group: &str, resource: &str, method: &str, apply: bool) -> Vec<Grant> {
    let verbs: &[&str] = match method {
        "create" => &["create"],
        "get" | "get_opt" => &["get"],
        "list" => &["list"],
        "delete" => &["delete"],
        "patch" if apply => &["patch", "create"],
        "patch" => &["patch"],
        "replace" => &["update"],
        "watch" => &["watch"],
        "logs" | "log_stream" => {
            return vec![grant(group, &format!("{resource}/log"), "get")];
        }
        // The exec websocket is a GET upgraded, authorized as create since
        // Kubernetes 1.31 (get before).
        "exec" => {
            let sub = format!("{resource}/exec");
            return vec![grant(group, &sub, "create"), grant(group, &sub, "get")];
        }
        "patch_status" => {
            return vec![grant(group, &format!("{resource}/status"), "patch")];
        }
        other => {
            panic!("the code calls Api::{other} on {resource}: add its RBAC verb to grants_of()")
        }
    };
    verbs.iter().map(|v| grant(group, resource, v)).collect()
}

/// Rust source without comments and string contents (so code in strings
/// or docs is not read as calls), whitespace collapsed so chained calls
/// split over lines read `x.get(`.
fn code_only(src: &str) -> String {
    let mut out = String::new();
    let b: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if b[i] == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if b[i] == '\'' && b.get(i + 1) == Some(&'\\') {
            // An escaped char literal such as '\"' or '\n'.
            out.push_str("' '");
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if b[i] == '\'' && b.get(i + 2) == Some(&'\'') {
            // A char literal such as '{' (lifetimes have no closing quote).
            out.push_str("' '");
            i += 3;
        } else if b[i].is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out.replace(" .", ".").replace(". ", ".")
}

/// The non-test part of a source file.
fn non_test(src: &str) -> &str {
    src.split("#[cfg(test)]").next().unwrap()
}

/// The grants the API calls in `src` need: every `let x: Api<T> = …`
/// binding and the methods called on `x` in the same function; a generic
/// helper (`Api<K>`) counts for every `self.helper::<T>(` call.
fn grants_in_code(src: &str) -> BTreeSet<Grant> {
    let code = code_only(non_test(src));
    // Split into functions (each chunk starts at a `fn `).
    let mut chunks: Vec<&str> = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest[1..].find(" fn ").map(|i| i + 1) {
        chunks.push(&rest[..i]);
        rest = &rest[i..];
    }
    chunks.push(rest);
    let mut per_type: Vec<(String, String, bool)> = Vec::new(); // (type, method, apply)
    let mut generic: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    let mut bindings_seen = 0;
    for chunk in &chunks {
        let fn_name = chunk
            .trim_start()
            .strip_prefix("fn ")
            .map(|s| s.split(['<', '(']).next().unwrap().trim().to_owned())
            .unwrap_or_default();
        let apply = chunk.contains("Patch::Apply");
        let mut pos = 0;
        while let Some(i) = chunk[pos..].find("let ") {
            let at = pos + i + 4;
            pos = at;
            let decl = &chunk[at..];
            let Some((var, after)) = decl.split_once(':') else {
                continue;
            };
            let var = var.trim().trim_start_matches("mut ").to_owned();
            let after = after.trim_start();
            let Some(ty) = after
                .strip_prefix("Api<")
                .and_then(|t| t.split_once('>'))
                .map(|(t, _)| t.trim().to_owned())
            else {
                continue;
            };
            bindings_seen += 1;
            // Calls on the binding in the rest of this function.
            let needle = format!("{var}.");
            let mut p = at;
            while let Some(j) = chunk[p..].find(&needle) {
                let start = p + j;
                p = start + needle.len();
                let before = chunk[..start].chars().last().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == '.' {
                    continue; // part of a longer name, or a field
                }
                let method: String = chunk[p..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if chunk[p + method.len()..].starts_with('(') {
                    if ty.len() == 1 {
                        generic
                            .entry(fn_name.clone())
                            .or_default()
                            .push((method, apply));
                    } else {
                        per_type.push((ty.clone(), method, apply));
                    }
                }
            }
        }
    }
    assert!(
        bindings_seen > 0,
        "no `let x: Api<T>` binding found: has the code changed shape?"
    );
    // Generic helpers, by their call sites `self.helper::<T>(`.
    for (helper, methods) in &generic {
        let needle = format!("self.{helper}::<");
        let mut found = false;
        for (i, _) in code.match_indices(&needle) {
            let ty = code[i + needle.len()..].split('>').next().unwrap().trim();
            found = true;
            for (m, apply) in methods {
                per_type.push((ty.to_owned(), m.clone(), *apply));
            }
        }
        assert!(
            found || helper == "api",
            "generic helper {helper} is never called with a type"
        );
    }
    // Every `Api<` outside a binding must be a signature we understand.
    for (i, _) in code.match_indices("Api<") {
        let ctx = &code[i.saturating_sub(30)..i];
        assert!(
            ctx.contains(": ") || ctx.contains("-> "),
            "an Api<…> use this test does not understand: …{}…",
            &code[i.saturating_sub(60)..(i + 40).min(code.len())]
        );
    }
    per_type
        .into_iter()
        .flat_map(|(ty, m, apply)| {
            // The stack's dynamic API (`Api<DynamicObject>`): every kind
            // devd applies without discovery, in its own namespace.
            if ty == "DynamicObject" {
                return stack_kinds()
                    .into_iter()
                    .flat_map(|(g, r)| grants_of(g, r, &m, apply))
                    .collect();
            }
            let (g, r) = resource_of(&ty);
            grants_of(g, r, &m, apply)
        })
        .collect()
}

/// (group, resource) of the namespaced kinds the stack applies through
/// the dynamic API ([`KNOWN_KINDS`](devd_receiver::build::backend::kubernetes::applyset::KNOWN_KINDS)).
fn stack_kinds() -> Vec<(&'static str, &'static str)> {
    devd_receiver::build::backend::kubernetes::applyset::KNOWN_KINDS
        .iter()
        .filter(|k| k.namespaced)
        .map(|k| (k.group(), k.plural))
        .collect()
}

/// The grants the tower-test scenarios of a file (kubernetes/'s
/// request_shape_tests.rs, devbuild.rs) exercise: each asserted request path and method; at least
/// `at_least` of them.
fn grants_in_scenarios(src: &str, at_least: usize) -> BTreeSet<Grant> {
    let tests = src
        .split("mod request_shape_tests")
        .nth(1)
        .expect("the file has a request_shape_tests module");
    // Whitespace collapsed, and none after `(`: rustfmt may break a call's
    // arguments over lines.
    let flat: String = tests
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(");
    let mut out = BTreeSet::new();
    let mut add = |method: &str, path: &str| {
        let path = path.split('?').next().unwrap();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // /api/v1/namespaces/NS/RES[/NAME[/SUB]] or /apis/G/V/namespaces/NS/…
        let (group, rest) = match parts[0] {
            "api" => ("", &parts[2..]),
            "apis" => (parts[1], &parts[3..]),
            _ => panic!("unexpected path {path}"),
        };
        let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            &rest[2..]
        } else {
            rest
        };
        let resource = match rest {
            [r] | [r, _] => r.to_string(),
            [r, _, sub] => format!("{r}/{sub}"),
            _ => panic!("unexpected path {path}"),
        };
        let verbs: &[&str] = match (method, rest.len()) {
            ("GET", 1) => &["list"],
            ("GET", _) => &["get"],
            ("POST", _) => &["create"],
            ("DELETE", _) => &["delete"],
            ("APPLY", _) => &["patch", "create"],
            ("PATCH", _) => &["patch"],
            _ => panic!("unexpected {method} {path}"),
        };
        for v in verbs {
            out.insert(grant(group, &resource, v));
        }
    };
    for (i, _) in flat.match_indices(".expect(Method::") {
        let rest = &flat[i + ".expect(Method::".len()..];
        let method: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase())
            .collect();
        let arg = rest[method.len()..].trim_start_matches([',', ' ']);
        // A literal path or a format! of one; a path in a variable is
        // asserted elsewhere in the same scenario.
        let Some(lit) = arg
            .strip_prefix('"')
            .or_else(|| arg.strip_prefix("&format!(\""))
        else {
            continue;
        };
        let path = lit.split('"').next().unwrap();
        add(&method, &path.replace("{name}", "x"));
    }
    for (i, _) in flat.match_indices(".expect_apply(\"") {
        let path = flat[i + ".expect_apply(\"".len()..]
            .split('"')
            .next()
            .unwrap();
        add("APPLY", path);
    }
    assert!(
        out.len() >= at_least,
        "too few scenario requests found: {out:?}"
    );
    out
}

/// The grants of a Role/ClusterRole object (a rule's `resourceNames`, if
/// any, are checked by [`named_grants`]).
fn grants_of_role(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "unexpected rule shape {rule}"
        );
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let (g, r, v) = (
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap(),
                    );
                    assert!(g != "*" && r != "*" && v != "*", "a wildcard in {rule}");
                    assert!(
                        out.insert(grant(g, r, v)),
                        "{v} {g}/{r} is granted twice in {}",
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }
    out
}

/// The grants a role restricts to named objects, with those names.
fn named_grants(role: &Value) -> BTreeMap<Grant, BTreeSet<String>> {
    let mut out: BTreeMap<Grant, BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        let Some(names) = rule.get("resourceNames") else {
            continue;
        };
        let names: BTreeSet<String> = names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        assert!(!names.is_empty(), "empty resourceNames in {rule}");
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let g = grant(
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap(),
                    );
                    out.entry(g).or_default().extend(names.iter().cloned());
                }
            }
        }
    }
    out
}

fn show(set: &BTreeSet<Grant>) -> String {
    set.iter()
        .map(|(g, r, v)| {
            format!(
                "{v} {}{r}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!("{g}/")
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[track_caller]
fn assert_same(role: &str, granted: &BTreeSet<Grant>, needed: &BTreeSet<Grant>) {
    let missing: BTreeSet<Grant> = needed.difference(granted).cloned().collect();
    let extra: BTreeSet<Grant> = granted.difference(needed).cloned().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{role} does not match the code:\n  missing: [{}]\n  extra:   [{}]\n  the code needs: [{}]",
        show(&missing),
        show(&extra),
        show(needed)
    );
}

#[test]
fn receiver_role_grants_exactly_the_kubernetes_backends_calls() {
    // The backend is a folder: the code of every file (each without its
    // unit tests), and the request-shape tests in their own files
    // (`*_tests.rs`: request_shape_tests.rs, stack_tests.rs).
    let dir = root().join("cluster-receiver/src/build/backend/kubernetes");
    let is_tests = |p: &Path| p.to_string_lossy().ends_with("_tests.rs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let code: String = files
        .iter()
        .filter(|p| !is_tests(p))
        .map(|p| non_test(&std::fs::read_to_string(p).unwrap()).to_owned())
        .collect();
    let test_files: Vec<&PathBuf> = files.iter().filter(|p| is_tests(p)).collect();
    assert!(
        test_files.len() >= 2,
        "request_shape_tests.rs and stack_tests.rs: {test_files:?}"
    );
    let scenarios: String = test_files
        .iter()
        .map(|p| {
            format!(
                "mod request_shape_tests\n{}",
                std::fs::read_to_string(p).unwrap()
            )
        })
        .collect();
    let mut needed = grants_in_code(&code);
    eprintln!("the Kubernetes backend calls: {}", show(&needed));
    // The pairing Secret (publish.rs), its calls read the same way.
    let publish = std::fs::read_to_string(root().join("cluster-receiver/src/publish.rs")).unwrap();
    let pairing = grants_in_code(&publish);
    assert_eq!(
        pairing,
        BTreeSet::from([
            grant("", "secrets", "patch"),
            grant("", "secrets", "create")
        ]),
        "publish.rs server-side-applies one Secret"
    );
    needed.extend(pairing.iter().cloned());
    // The DevBuild recorder (builder/devbuild.rs), read the same way and
    // cross-checked against its own tower-test scenarios.
    let devbuild =
        std::fs::read_to_string(root().join("cluster-receiver/src/build/backend/devbuild.rs"))
            .unwrap();
    let devbuilds = grants_in_code(&devbuild);
    let exercised = grants_in_scenarios(&devbuild, 4);
    assert!(
        exercised.is_subset(&devbuilds),
        "devbuild.rs's tower-test scenarios request [{}], which the code reading missed",
        show(&exercised.difference(&devbuilds).cloned().collect())
    );
    for g in [
        grant("devd.dev", "devbuilds", "create"),
        grant("devd.dev", "devbuilds/status", "patch"),
    ] {
        assert!(
            devbuilds.contains(&g),
            "{g:?} not found: {}",
            show(&devbuilds)
        );
    }
    needed.extend(devbuilds);
    // The parse is sound: what the tower-test scenarios request is in it,
    // and the calls every build and deploy makes are found.
    let exercised = grants_in_scenarios(&scenarios, 5);
    let unexplained: BTreeSet<Grant> = exercised.difference(&needed).cloned().collect();
    assert!(
        unexplained.is_empty(),
        "the tower-test scenarios request [{}], which the code reading missed",
        show(&unexplained)
    );
    for g in [
        grant("batch", "jobs", "create"),
        grant("", "pods/log", "get"),
        grant("apps", "deployments", "patch"),
        grant("networking.k8s.io", "ingresses", "create"),
        // The stack: its dynamic applies, prunes and member lists.
        grant("apps", "statefulsets", "patch"),
        grant("", "configmaps", "delete"),
        grant("", "persistentvolumeclaims", "list"),
    ] {
        assert!(
            needed.contains(&g),
            "{g:?} not found in the code: {}",
            show(&needed)
        );
    }
    // CustomResourceDefinitions are cluster-scoped: no Role can grant
    // them. The stack applies and reads them; the docs give the
    // ClusterRole a cluster admin binds for that.
    let crds: BTreeSet<Grant> = needed
        .iter()
        .filter(|g| g.1 == "customresourcedefinitions")
        .cloned()
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from([
            grant(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "create"
            ),
            grant("apiextensions.k8s.io", "customresourcedefinitions", "get"),
            grant("apiextensions.k8s.io", "customresourcedefinitions", "patch"),
        ])
    );
    needed.retain(|g| !crds.contains(g));
    let docs = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    assert!(
        docs.contains("resources: [\"customresourcedefinitions\"]")
            && docs.contains("verbs: [\"create\", \"get\", \"patch\"]"),
        "docs/configuration.md gives the ClusterRole for the stack's CRDs"
    );
    let env = Env::new();
    let objs = objects(&env.render("."));
    let role = find(&objs, "Role", "devd-receiver");
    assert_same("Role devd-receiver", &grants_of_role(role), &needed);
    // Secrets: the pairing Secret is one of the Secrets the Role grants
    // for the stack (an app's manifests have Secrets), so nothing is
    // restricted by name (a stray resourceNames would starve the code).
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["receiver.toml"].is_string())
        .expect("the receiver's ConfigMap");
    let cfg = devd_receiver::config::ReceiverConfig::parse(
        cm["data"]["receiver.toml"].as_str().unwrap(),
        "receiver.toml",
    )
    .unwrap();
    let secret = cfg
        .kubernetes
        .and_then(|k| k.pairing_secret)
        .expect("config/receiver.toml sets [kubernetes] pairing_secret");
    assert!(!secret.is_empty());
    let named = named_grants(role);
    assert!(named.is_empty(), "no grant restricted by name: {named:?}");
    assert!(pairing.is_subset(&grants_of_role(role)));
    let binding = find(&objs, "RoleBinding", "devd-receiver");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["name"], "devd-receiver");
    // Nothing else in the namespace grants the receiver more.
    let roles: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["devd-receiver", "devd-receiver"]);
}

#[test]
fn vacuum_cluster_role_grants_exactly_what_vacuum_calls() {
    let src = std::fs::read_to_string(root().join("cluster-receiver/src/vacuum.rs")).unwrap();
    let needed = grants_in_code(&src);
    assert_eq!(
        needed,
        BTreeSet::from([
            grant("", "namespaces", "list"),
            grant("", "namespaces", "delete")
        ])
    );
    let env = Env::new();
    let objs = objects(&env.render("."));
    let role = find(&objs, "ClusterRole", "devd-vacuum");
    assert_same("ClusterRole devd-vacuum", &grants_of_role(role), &needed);
    let b = find(&objs, "ClusterRoleBinding", "devd-vacuum");
    assert_eq!(b["roleRef"]["name"], "devd-vacuum");
    assert_eq!(b["subjects"][0]["name"], "devd-vacuum");
    let cluster_roles: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cluster_roles,
        ["devd-devbuilds-edit", "devd-devbuilds-view", "devd-vacuum"]
    );
    let bound: Vec<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .map(|o| o["roleRef"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        bound,
        ["devd-vacuum"],
        "the vacuum is the only cluster-wide grant; the DevBuild roles only add to admin/edit/view"
    );
}

#[test]
fn the_code_reading_finds_calls_in_every_shape_the_backend_writes() {
    // A miniature of the backend's patterns: chained calls over lines, a
    // generic helper, calls inside strings and comments that must not count.
    let src = r#"
        fn a(&self) {
            let jobs: Api<Job> = self.api();
            jobs
                .create(&pp, &j).await;
            // jobs.delete(name) in a comment
            let s = "jobs.replace(x)";
        }
        fn apply<K>(&self) {
            let api: Api<K> = self.api();
            api.patch(name, &pp, &Patch::Apply(body)).await;
        }
        fn b(&self) {
            self.apply::<Ingress>(&x).await;
            let pods: Api<Pod> = self.api();
            pods.log_stream(&p, &lp).await;
        }
        #[cfg(test)]
        mod tests { fn t() { let x: Api<Namespace> = a(); x.delete(); } }
    "#;
    assert_eq!(
        grants_in_code(src),
        BTreeSet::from([
            grant("batch", "jobs", "create"),
            grant("networking.k8s.io", "ingresses", "patch"),
            grant("networking.k8s.io", "ingresses", "create"),
            grant("", "pods/log", "get"),
        ])
    );
}

/// The optional NetworkPolicy component rendered with the receiver.
fn netpol_render(env: &Env) -> String {
    env.render_with(
        "with-networkpolicy",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: devd-alice\n\
         resources:\n  - ../manifests/receiver\ncomponents:\n  - ../manifests/components/networkpolicy\n",
    )
}

/// Every way to install devd ships what `manifests/` ships: the nodeport
/// overlay lists manifests/'s parts itself (kustomize refuses a base that
/// contains its overlay), so a part added to one and not the other (the
/// DevBuild CRD once) would answer 404 on every DevBuild write there.
#[test]
fn every_overlay_ships_every_object_the_install_ships() {
    let env = Env::new();
    let key = |o: &Value| {
        (
            o["kind"].as_str().unwrap().to_owned(),
            o["metadata"]["name"].as_str().unwrap().to_owned(),
        )
    };
    let install: BTreeSet<(String, String)> = objects(&env.render(".")).iter().map(key).collect();
    assert!(install.contains(&(
        "CustomResourceDefinition".to_owned(),
        "devbuilds.devd.dev".to_owned()
    )));
    let overlays = std::fs::read_dir(env.manifests().join("overlays")).unwrap();
    let mut seen = 0;
    for o in overlays {
        let name = o.unwrap().file_name().into_string().unwrap();
        let shipped: BTreeSet<(String, String)> = objects(&env.render(&format!("overlays/{name}")))
            .iter()
            .map(key)
            .collect();
        let missing: Vec<_> = install.difference(&shipped).collect();
        assert!(
            missing.is_empty(),
            "overlays/{name} leaves out {missing:?}, which manifests/ installs"
        );
        seen += 1;
    }
    assert!(seen >= 1, "no overlays found");
}

/// (group, resource, verb) grants of the rules of `roles`, wildcards refused.
fn rule_grants<'a>(roles: impl IntoIterator<Item = &'a Value>) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for role in roles {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.insert(grant(
                            g.as_str().unwrap(),
                            r.as_str().unwrap(),
                            v.as_str().unwrap(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// A developer holding the built-in `admin` ClusterRole in a workspace
/// namespace (what the README suggests) may create the receiver's Role:
/// RBAC's escalation prevention lets one grant only what one holds, and
/// `admin` is the aggregation of Kubernetes' own rules (the fixture, from
/// its bootstrap policy) and of every ClusterRole labelled
/// aggregate-to-admin/-edit/-view — devd's DevBuild roles among them. Without
/// those, the devbuilds grants would be refused with 403.
#[test]
fn the_built_in_admin_role_holds_everything_the_receivers_role_grants() {
    let env = Env::new();
    let install = objects(&env.render("."));
    let builtin = objects(
        &std::fs::read_to_string(
            root().join("tests/fixtures/kubernetes-aggregated-clusterroles.yaml"),
        )
        .unwrap(),
    );
    let builtin: Vec<Value> = builtin[0]["items"].as_array().unwrap().clone();
    let aggregated_into_admin = |o: &&Value| {
        o["kind"] == "ClusterRole"
            && ["admin", "edit", "view"].iter().any(|to| {
                o["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")]
                    == "true"
            })
    };
    let kubernetes_admin = rule_grants(builtin.iter());
    let devd_roles: Vec<&Value> = install.iter().filter(aggregated_into_admin).collect();
    assert!(
        !devd_roles.is_empty(),
        "manifests/ aggregates no rules into admin"
    );
    let admin: BTreeSet<Grant> = kubernetes_admin
        .iter()
        .cloned()
        .chain(rule_grants(devd_roles.iter().copied()))
        .collect();
    let role = find(&install, "Role", "devd-receiver");
    let granted = grants_of_role(role);
    let beyond: BTreeSet<Grant> = granted.difference(&admin).cloned().collect();
    assert!(
        beyond.is_empty(),
        "the receiver's Role grants what `admin` does not hold: [{}]; `devd workspace create` would get 403",
        show(&beyond)
    );
    // What devd's aggregated roles are there for.
    let without: BTreeSet<Grant> = granted.difference(&kubernetes_admin).cloned().collect();
    assert_eq!(
        without,
        BTreeSet::from([
            grant("devd.dev", "devbuilds", "create"),
            grant("devd.dev", "devbuilds", "delete"),
            grant("devd.dev", "devbuilds", "list"),
            grant("devd.dev", "devbuilds/status", "patch"),
        ]),
        "Kubernetes' own admin lacks exactly the DevBuild grants"
    );
}

/// The optional NetworkPolicies let exactly the build pods (the labels the
/// Kubernetes backend gives them) reach the receiver's HTTP port, not the
/// apps' pods, and leave the laptops' QUIC and TCP ports open.
#[test]
fn the_network_policies_let_build_pods_and_laptops_reach_the_receiver() {
    use devd_receiver::build::backend::kubernetes::names;
    let env = Env::new();
    let objs = objects(&netpol_render(&env));
    let d = find(&objs, "Deployment", "devd-receiver");
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    let matches = |selector: &Value, labels: &Value| {
        let by_labels = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| &labels[k] == v);
        let by_expressions = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| match e["operator"].as_str().unwrap() {
                "Exists" => labels.get(e["key"].as_str().unwrap()).is_some(),
                other => panic!("operator {other} not understood here"),
            });
        by_labels && by_expressions
    };
    let ingress = find(&objs, "NetworkPolicy", "devd-receiver");
    assert_eq!(ingress["metadata"]["namespace"], "devd-alice");
    assert!(matches(&ingress["spec"]["podSelector"], pod_labels));
    let build = serde_json::to_value(names::build_pod_labels("alice", "web")).unwrap();
    let app = serde_json::to_value(names::labels("alice", "web")).unwrap();
    let rules = ingress["spec"]["ingress"].as_array().unwrap();
    let from_build = &rules[0];
    let from = &from_build["from"][0]["podSelector"];
    assert!(matches(from, &build), "build pods reach the context server");
    assert!(!matches(from, &app), "the apps' pods do not");
    assert_eq!(
        from_build["ports"],
        serde_json::json!([{"port": "http", "protocol": "TCP"}])
    );
    let container_ports: BTreeSet<&str> = d["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let laptops = &rules[1];
    assert!(laptops.get("from").is_none(), "laptops come from anywhere");
    for p in laptops["ports"]
        .as_array()
        .unwrap()
        .iter()
        .chain(from_build["ports"].as_array().unwrap())
    {
        assert!(
            container_ports.contains(p["port"].as_str().unwrap()),
            "{p} names no port of the receiver"
        );
    }
    let egress = find(&objs, "NetworkPolicy", "devd-build-pods");
    assert!(matches(&egress["spec"]["podSelector"], &build));
    assert!(!matches(&egress["spec"]["podSelector"], &app));
    assert!(matches(
        &egress["spec"]["egress"][0]["to"][0]["podSelector"],
        pod_labels
    ));
    assert_eq!(egress["spec"]["egress"][0]["ports"][0]["port"], 8080);
}

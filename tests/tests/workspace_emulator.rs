//! `devd workspace` against the kmock Kubernetes emulator
//! (`tests/kmock/launcher.py`; no cluster runs here), with the real `devd`
//! binary and a kubeconfig: `create` makes a namespace carrying devd's
//! labels and the owner and expiry annotations the vacuum reads, `list`
//! shows it, `extend` moves the expiry, `devd-receiver vacuum` deletes it
//! once the expiry has passed, and `delete` deletes only devd's
//! namespaces (with `--no-receiver`: the namespace only).
//!
//! `workspace_emulator_create_deploys_a_receiver_and_pairs` is the whole
//! `create`: the receiver's objects applied into the new namespace, the
//! test playing kubelet and the cloud's load balancer while the REAL
//! `devd-receiver serve` publishes its pairing Secret into the emulator,
//! and `[receiver]` merged into the repository's devd.local.toml. The
//! emulator stands in for an API server because none can run here; the
//! receiver's pod, its probes and the load balancer are played by the test.

use devd_sync::labels::{ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE};
use devd_tests::containers::http_get;
use devd_tests::kmock::KubeEmulator;
use devd_tests::process::{self, Run};
use devd_tests::receiver::ReceiverOpts;
use devd_tests::{Fixture, bin};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const OWNER: &str = "alice@example.com";

struct Env<'a> {
    fx: &'a Fixture,
    emu: &'a KubeEmulator,
    gitconfig: std::path::PathBuf,
}

impl Env<'_> {
    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(program));
        cmd.args(args)
            .current_dir(self.fx.root())
            .env("KUBECONFIG", self.emu.kubeconfig())
            .env("USER", "alice")
            .env("GIT_CONFIG_GLOBAL", &self.gitconfig)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("RUST_LOG", "info");
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Run {
        let mut cmd = self.cmd(program, args);
        process::run(&mut cmd, self.fx.logs(), program, Duration::from_secs(60))
    }

    /// `devd` in the laptop's repository.
    fn run_in_repo(&self, args: &[&str]) -> Run {
        let mut cmd = self.cmd("devd", args);
        cmd.current_dir(self.fx.laptop());
        process::run(&mut cmd, self.fx.logs(), "devd", Duration::from_secs(60))
    }

    #[track_caller]
    fn ok(&self, program: &str, args: &[&str]) -> Run {
        let run = self.run(program, args);
        assert!(
            run.success(),
            "{}\n--- emulator ---\n{}",
            run.describe(),
            process::tail(&self.emu.stderr(), 40)
        );
        run
    }
}

fn expiry(ns: &Namespace) -> jiff::Timestamp {
    ns.metadata.annotations.as_ref().unwrap()[ANNOTATION_EXPIRES]
        .parse()
        .unwrap()
}

#[track_caller]
fn near(t: jiff::Timestamp, want: jiff::Timestamp) {
    let off = t.duration_since(want).as_secs().abs();
    assert!(off <= 30, "expiry {t} is not about {want}");
}

#[test]
fn workspace_emulator_create_list_extend_vacuum_delete() {
    let fx = Fixture::new();
    let emu = KubeEmulator::start(&fx, "default");
    let gitconfig = fx.root().join("workspace-gitconfig");
    std::fs::write(&gitconfig, format!("[user]\n\temail = {OWNER}\n")).unwrap();
    let env = Env {
        fx: &fx,
        emu: &emu,
        gitconfig,
    };
    let (rt, client) = emu.client();
    let api: Api<Namespace> = Api::all(client);
    let get = |name: &str| rt.block_on(api.get_opt(name)).unwrap();

    for sub in [
        &["workspace"][..],
        &["workspace", "create"],
        &["workspace", "extend"],
    ] {
        let help = env.ok("devd", &[sub, &["--help"]].concat());
        assert!(
            help.stdout.contains("Examples:") && help.stdout.contains("devd workspace "),
            "{}",
            help.stdout
        );
    }

    // create: the namespace with devd's labels, the owner and an expiry
    // about now + ttl.
    let run = env.ok(
        "devd",
        &["workspace", "create", "--ttl", "12h", "--no-receiver"],
    );
    assert!(
        run.stdout.contains("created namespace devd-alice")
            && run.stdout.contains("Next:")
            && run.stdout.contains("manifests/receiver"),
        "create says what it did and what is next:\n{}",
        run.stdout
    );
    let ns = get("devd-alice").expect("devd-alice was created");
    let labels = ns.metadata.labels.clone().unwrap();
    assert_eq!(labels[LABEL_MANAGED_BY], "devd");
    assert_eq!(labels[LABEL_WORKSPACE], "alice");
    assert_eq!(labels["app.kubernetes.io/part-of"], "devd");
    assert_eq!(
        ns.metadata.annotations.as_ref().unwrap()[ANNOTATION_OWNER],
        OWNER
    );
    let now = jiff::Timestamp::now();
    near(expiry(&ns), now + jiff::SignedDuration::from_hours(12));

    // A named one, and creating the same one again is refused clearly.
    env.ok(
        "devd",
        &[
            "workspace",
            "create",
            "--name",
            "feat",
            "--ttl",
            "90m",
            "--no-receiver",
        ],
    );
    let feat = get("devd-alice-feat").expect("devd-alice-feat was created");
    near(expiry(&feat), now + jiff::SignedDuration::from_mins(90));
    let again = env.run("devd", &["workspace", "create", "--no-receiver"]);
    assert!(!again.success(), "{}", again.describe());
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    // Someone else's workspace and a namespace that is not devd's.
    rt.block_on(async {
        for (name, labels, owner) in [
            (
                "devd-bob",
                json!({LABEL_MANAGED_BY: "devd", LABEL_WORKSPACE: "bob"}),
                "bob@example.com",
            ),
            ("payments", json!({"team": "payments"}), OWNER),
        ] {
            let ns: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels, "annotations": {
                    ANNOTATION_OWNER: owner, ANNOTATION_EXPIRES: "2999-01-01T00:00:00Z"}},
            }))
            .unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    });

    // list: the caller's workspaces, with owner, expiry and time left.
    let list = env.ok("devd", &["workspace", "list"]);
    for want in ["NAMESPACE", "devd-alice", "devd-alice-feat", OWNER, "LEFT"] {
        assert!(list.stdout.contains(want), "{want}:\n{}", list.stdout);
    }
    assert!(
        list.stdout.contains("11h 5") || list.stdout.contains("12h 00m"),
        "time left about 12h:\n{}",
        list.stdout
    );
    assert!(
        !list.stdout.contains("devd-bob") && !list.stdout.contains("payments"),
        "{}",
        list.stdout
    );
    let all = env.ok("devd", &["workspace", "list", "--all"]);
    assert!(all.stdout.contains("devd-bob"), "{}", all.stdout);
    assert!(!all.stdout.contains("payments"), "{}", all.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok("devd", &["workspace", "list", "--json"]).stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 2, "{json:#}");
    let alice = items
        .iter()
        .find(|i| i["namespace"] == "devd-alice")
        .unwrap();
    assert_eq!(alice["owner"], OWNER);
    assert_eq!(alice["workspace"], "alice");
    assert_eq!(alice["expired"], false);
    let left = alice["seconds_left"].as_i64().unwrap();
    assert!((12 * 3600 - 60..=12 * 3600).contains(&left), "{left}");
    assert_eq!(
        alice["expires_at"],
        get("devd-alice").unwrap().metadata.annotations.unwrap()[ANNOTATION_EXPIRES]
    );

    // extend: the expiry moves to now + ttl; by --name too.
    let run = env.ok(
        "devd",
        &["workspace", "extend", "devd-alice", "--ttl", "2d"],
    );
    assert!(run.stdout.contains("extended devd-alice"), "{}", run.stdout);
    near(
        expiry(&get("devd-alice").unwrap()),
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48),
    );
    env.ok("devd", &["workspace", "extend", "feat", "--ttl", "6h"]);
    near(
        expiry(&get("devd-alice-feat").unwrap()),
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(6),
    );
    let bad = env.run(
        "devd",
        &["workspace", "extend", "devd-alice", "--ttl", "soon"],
    );
    assert!(
        !bad.success() && bad.stderr.contains("--ttl"),
        "{}",
        bad.describe()
    );

    // The vacuum deletes the workspace once its expiry has passed.
    rt.block_on(api.patch(
        "devd-alice-feat",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {ANNOTATION_EXPIRES: "2020-01-01T00:00:00Z"}}}),
        ),
    ))
    .unwrap();
    let list = env.ok("devd", &["workspace", "list"]);
    assert!(list.stdout.contains("expired"), "{}", list.stdout);
    let vac = env.ok("devd-receiver", &["vacuum"]);
    assert!(
        vac.stdout.contains("deleted namespace devd-alice-feat"),
        "{}",
        vac.stdout
    );
    assert!(get("devd-alice-feat").is_none(), "the vacuum left it");
    assert!(get("devd-alice").is_some(), "the vacuum deleted a live one");

    // delete: refuses a namespace without devd's labels, deletes a workspace.
    let refused = env.run("devd", &["workspace", "delete", "payments"]);
    assert!(!refused.success(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("payments is not a devd workspace"),
        "{}",
        refused.stderr
    );
    assert!(get("payments").is_some(), "payments was deleted");
    let ext = env.run("devd", &["workspace", "extend", "payments", "--ttl", "1h"]);
    assert!(!ext.success() && ext.stderr.contains("not a devd workspace"));
    let missing = env.run("devd", &["workspace", "delete", "nope"]);
    assert!(
        !missing.success() && missing.stderr.contains("no workspace nope"),
        "{}",
        missing.describe()
    );
    let run = env.ok("devd", &["workspace", "delete", "devd-alice"]);
    assert!(
        run.stdout.contains("deleted namespace devd-alice"),
        "{}",
        run.stdout
    );
    assert!(get("devd-alice").is_none(), "devd-alice is left");
    let list = env.ok("devd", &["workspace", "list"]);
    assert!(
        list.stdout.contains("no workspaces owned by"),
        "{}",
        list.stdout
    );
}

/// Poll `f` every 100 ms for up to 30 s.
#[track_caller]
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn workspace_emulator_create_deploys_a_receiver_and_pairs() {
    use devd_sync::pairing::Pairing;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let fx = Fixture::new();
    let emu = KubeEmulator::start(&fx, "default");
    let gitconfig = fx.root().join("workspace-gitconfig");
    std::fs::write(&gitconfig, format!("[user]\n\temail = {OWNER}\n")).unwrap();
    let env = Env {
        fx: &fx,
        emu: &emu,
        gitconfig,
    };
    let (rt, client) = emu.client();
    let ns_name = "devd-alice";

    // This laptop's settings before: another section, with a comment.
    let local = fx.laptop().join("devd.local.toml");
    std::fs::write(
        &local,
        "# my notification settings\n[notifications]\nenabled = false # quiet, please\n",
    )
    .unwrap();

    // Without the Secrets the receiver mounts in the install's namespace,
    // create stops before creating anything, and says where they come from.
    let run = env.run_in_repo(&["workspace", "create", "--timeout", "20s"]);
    assert!(!run.success(), "{}", run.describe());
    assert!(
        run.stderr
            .contains("no Secret devd-registry in namespace devd")
            && run.stderr.contains("--secrets-from"),
        "{}",
        run.stderr
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(rt.block_on(namespaces.get_opt(ns_name)).unwrap().is_none());

    // What `kubectl apply -k manifests/` installs into `devd`.
    let install: Api<Secret> = Api::namespaced(client.clone(), "devd");
    for (name, ty, key) in [
        (
            "devd-registry",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
        ),
        ("devd-git", "Opaque", "ssh-privatekey"),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "devd"},
            "type": ty, "data": {key: "c2VjcmV0"},
        }))
        .unwrap();
        rt.block_on(install.create(&PostParams::default(), &s))
            .unwrap();
    }

    // devd workspace create, in the background: it waits for the receiver.
    let mut cmd = env.cmd(
        "devd",
        &["workspace", "create", "--ttl", "2h", "--timeout", "60s"],
    );
    cmd.current_dir(fx.laptop());
    let mut create = process::spawn(&mut cmd, fx.logs(), "devd-create");

    // The receiver's objects arrive in the namespace, labelled with it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns_name);
    eventually("the receiver's Deployment is applied", || {
        rt.block_on(deployments.get_opt("devd-receiver")).unwrap()
    });
    // Every object of the compiled-in render, in the namespace.
    let ns_labels = rt
        .block_on(namespaces.get(ns_name))
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(ns_labels[LABEL_WORKSPACE], "alice");
    macro_rules! applied {
        ($ty:ty, $name:expr) => {{
            let api: Api<$ty> = Api::namespaced(client.clone(), ns_name);
            let o = rt
                .block_on(api.get_opt($name))
                .unwrap()
                .unwrap_or_else(|| panic!("no {} {} in {ns_name}", stringify!($ty), $name));
            let labels = o.metadata.labels.clone().unwrap_or_default();
            assert_eq!(o.metadata.namespace.as_deref(), Some(ns_name));
            for key in [LABEL_WORKSPACE, "app.kubernetes.io/part-of"] {
                assert_eq!(
                    labels.get(key),
                    ns_labels.get(key),
                    "{} {} lacks the namespace's {key}",
                    stringify!($ty),
                    $name
                );
            }
            o
        }};
    }
    let deployment = applied!(Deployment, "devd-receiver");
    applied!(Service, "devd-receiver");
    applied!(Service, "devd-receiver-quic");
    applied!(PersistentVolumeClaim, "devd-receiver-data");
    applied!(ServiceAccount, "devd-receiver");
    applied!(Role, "devd-receiver");
    let binding = applied!(RoleBinding, "devd-receiver");
    assert_eq!(
        binding.subjects.unwrap()[0].namespace.as_deref(),
        Some(ns_name),
        "the RoleBinding binds the namespace's service account"
    );
    for name in ["devd-registry", "devd-git"] {
        let s = applied!(Secret, name);
        assert_eq!(s.data.unwrap().values().next().unwrap().0, b"secret");
    }
    let config_name = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
        .expect("the Deployment mounts its ConfigMap");
    let cm = applied!(ConfigMap, &config_name);
    let data = cm.data.unwrap();
    assert_eq!(
        data["workspace"], "alice",
        "the receiver serves the workspace"
    );
    assert!(
        !data.contains_key("advertise"),
        "the example advertise address is not the workspace's"
    );

    // The receiver: the real one, with the configuration devd applied
    // (builds off: no registry here), its client pointed at the emulator.
    let mut cfg: toml::Table = toml::from_str(&data["receiver.toml"]).unwrap();
    cfg["build"]
        .as_table_mut()
        .unwrap()
        .insert("backend".into(), "none".into());
    let k = cfg["kubernetes"].as_table_mut().unwrap();
    assert_eq!(k["pairing_secret"].as_str(), Some("devd-pairing"));
    k.insert(
        "kubeconfig".into(),
        emu.kubeconfig().display().to_string().into(),
    );
    k.insert("namespace".into(), ns_name.into());
    let cfg_path = fx.root().join("receiver-in-alice.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let rx = fx.receiver_with(ReceiverOpts {
        workspace: data["workspace"].clone(),
        config: Some(cfg_path),
        args: vec!["--http-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });

    // It publishes its pairing; the test then plays kubelet (the readiness
    // probe passes once published) and the cloud's load balancer.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns_name);
    let published = eventually("the receiver publishes devd-pairing", || {
        rt.block_on(secrets.get_opt("devd-pairing")).unwrap()
    });
    let pairing = Pairing::load(&rx.pairing_path()).unwrap();
    assert_eq!(
        devd_sync::pairing::pairing_of(&published).unwrap(),
        pairing,
        "the Secret carries the receiver's pairing"
    );
    // Published, so ready: the readiness probe the test plays kubelet for.
    let readyz = format!("http://{}/readyz", rx.http_addr());
    eventually("the receiver is ready once published", || {
        (http_get(&readyz).unwrap().0 == 200).then_some(())
    });
    assert!(
        create.is_running(),
        "devd workspace create waits for the Deployment to be available"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), ns_name);
    rt.block_on(services.patch_status(
        "devd-receiver-quic",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}})),
    ))
    .unwrap();
    rt.block_on(deployments.patch_status(
        "devd-receiver",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": deployment.metadata.generation,
            "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }})),
    ))
    .unwrap();

    let run = create.wait(Duration::from_secs(60));
    assert!(
        run.success(),
        "{}\n--- emulator ---\n{}",
        run.describe(),
        process::tail(&emu.stderr(), 40)
    );
    for want in [
        "created namespace devd-alice",
        "applied the receiver into devd-alice",
        "paired: wrote [receiver]",
        "203.0.113.7:7447",
        "Next: devd start",
    ] {
        assert!(run.stdout.contains(want), "{want}:\n{}", run.stdout);
    }

    // devd.local.toml: [receiver] with the receiver's pairing and the
    // LoadBalancer's address; the other section and its comments stay.
    let text = std::fs::read_to_string(&local).unwrap();
    let written: toml::Table = toml::from_str(&text).unwrap();
    let r = written["receiver"].as_table().unwrap();
    assert_eq!(r["mode"].as_str(), Some("remote"));
    assert_eq!(r["address"].as_str(), Some("203.0.113.7:7447"));
    assert_eq!(
        r["fingerprint"].as_str(),
        Some(pairing.fingerprint.as_str())
    );
    assert_eq!(r["token"].as_str(), Some(pairing.token.as_str()));
    assert_eq!(r["workspace"].as_str(), Some("alice"));
    assert_eq!(written["notifications"]["enabled"].as_bool(), Some(false));
    assert!(
        text.contains("# my notification settings") && text.contains("# quiet, please"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600,
        "it holds the token"
    );
    let loaded = devd::config::Config::load(fx.laptop()).unwrap();
    assert_eq!(loaded.receiver.address.as_deref(), Some("203.0.113.7:7447"));
    assert!(!loaded.notifications.enabled);

    // A receiver that never becomes ready: a clear timeout naming the
    // namespace and how to look.
    let run = env.run_in_repo(&["workspace", "create", "--name", "stuck", "--timeout", "3s"]);
    assert!(!run.success(), "{}", run.describe());
    for want in [
        "did not become ready within 3s in namespace devd-alice-stuck",
        "kubectl -n devd-alice-stuck describe deploy/devd-receiver",
        "devd workspace delete devd-alice-stuck",
    ] {
        assert!(run.stderr.contains(want), "{want}:\n{}", run.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        text,
        "a failed create leaves devd.local.toml alone"
    );

    // --node-port: the QUIC Service is a NodePort whose port the cluster
    // numbers (the test plays the API server's allocation), with the
    // Cluster traffic policy, and devd dials the ExternalIP of the node
    // that runs the receiver's pod at it. Two nodes, as on a multi-node
    // kind cluster: the first one listed is the control plane, which never
    // runs the receiver (with the Local policy it would drop the traffic).
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, internal, external, role) in [
        ("kind-control-plane", "10.0.0.2", "198.51.100.2", true),
        ("kind-worker", "10.0.0.5", "198.51.100.9", false),
    ] {
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": internal},
                {"type": "ExternalIP", "address": external},
            ]},
        });
        if role {
            node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = "".into();
        }
        let node: Node = serde_json::from_value(node).unwrap();
        rt.block_on(nodes.create(&PostParams::default(), &node))
            .unwrap();
    }
    let np_ns = "devd-alice-np";
    let mut cmd = env.cmd(
        "devd",
        &[
            "workspace",
            "create",
            "--name",
            "np",
            "--node-port",
            "--timeout",
            "60s",
        ],
    );
    cmd.current_dir(fx.laptop());
    let create = process::spawn(&mut cmd, fx.logs(), "devd-create-np");
    let np_deployments: Api<Deployment> = Api::namespaced(client.clone(), np_ns);
    let np_deployment = eventually("the np receiver's Deployment is applied", || {
        rt.block_on(np_deployments.get_opt("devd-receiver"))
            .unwrap()
    });
    let np_services: Api<Service> = Api::namespaced(client.clone(), np_ns);
    let quic = rt.block_on(np_services.get("devd-receiver-quic")).unwrap();
    let spec = quic.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(
        spec.external_traffic_policy.as_deref(),
        Some("Cluster"),
        "with Local, nodes without the receiver's pod drop the traffic"
    );
    // The test's scheduler and kubelet: the receiver's pod runs on the
    // worker (a pod of another app, with other labels, on the control plane).
    let np_pods: Api<Pod> = Api::namespaced(client.clone(), np_ns);
    let template_labels = np_deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap();
    for (name, labels, node) in [
        ("other-app-1", json!({"app": "other"}), "kind-control-plane"),
        (
            "devd-receiver-5d8f7-abcde",
            json!(template_labels),
            "kind-worker",
        ),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        rt.block_on(np_pods.create(&PostParams::default(), &pod))
            .unwrap();
    }
    // Numbered per protocol: UDP and the TCP fallback differ at first.
    let mut ports = serde_json::to_value(spec.ports.unwrap()).unwrap();
    for p in ports.as_array_mut().unwrap() {
        assert!(p.get("nodePort").is_none(), "the cluster picks it: {p}");
        p["nodePort"] = if p["protocol"] == "UDP" { 31234 } else { 31999 }.into();
    }
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["protocol"] == "TCP"),
        "the TCP fallback's port: {ports}"
    );
    rt.block_on(np_services.patch(
        "devd-receiver-quic",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ports": ports}})),
    ))
    .unwrap();
    let np_cms: Api<ConfigMap> = Api::namespaced(client.clone(), np_ns);
    let np_workspace =
        rt.block_on(np_cms.get(&config_name)).unwrap().data.unwrap()["workspace"].clone();
    assert_eq!(np_workspace, "alice-np");
    cfg["kubernetes"]
        .as_table_mut()
        .unwrap()
        .insert("namespace".into(), np_ns.into());
    let np_cfg = fx.root().join("receiver-in-alice-np.toml");
    std::fs::write(&np_cfg, toml::to_string(&cfg).unwrap()).unwrap();
    let np_rx = fx.receiver_with(ReceiverOpts {
        workspace: np_workspace,
        data: Some(fx.root().join("rx-np")),
        config: Some(np_cfg),
        ..Default::default()
    });
    let np_secrets: Api<Secret> = Api::namespaced(client.clone(), np_ns);
    eventually("the np receiver publishes devd-pairing", || {
        rt.block_on(np_secrets.get_opt("devd-pairing")).unwrap()
    });
    rt.block_on(np_deployments.patch_status(
        "devd-receiver",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": np_deployment.metadata.generation,
            "conditions": [{"type": "Available", "status": "True"}],
        }})),
    ))
    .unwrap();
    let run = create.wait(Duration::from_secs(60));
    assert!(run.success(), "{}", run.describe());
    assert!(
        run.stdout.contains("198.51.100.9:31234"),
        "the receiver's node's ExternalIP and the nodePort:\n{}",
        run.stdout
    );
    let written: toml::Table = toml::from_str(&std::fs::read_to_string(&local).unwrap()).unwrap();
    let r = written["receiver"].as_table().unwrap();
    assert_eq!(r["address"].as_str(), Some("198.51.100.9:31234"));
    assert_eq!(r["workspace"].as_str(), Some("alice-np"));
    assert_eq!(r["token"].as_str(), Some(np_rx.pairing().token.as_str()));
    // The TCP fallback listens on the same number: its nodePort follows.
    let quic = rt.block_on(np_services.get("devd-receiver-quic")).unwrap();
    for p in quic.spec.unwrap().ports.unwrap() {
        assert_eq!(p.node_port, Some(31234), "{p:?}");
    }
    assert!(
        run.stdout.contains("TCP fallback's nodePort"),
        "{}",
        run.stdout
    );
    assert_eq!(written["notifications"]["enabled"].as_bool(), Some(false));
}

/// A receiver that cannot write its pairing Secret (here: its API server
/// refuses connections) serves /healthz but is not ready, so its
/// Deployment never turns available with the pairing missing, and it logs
/// why and keeps trying.
#[test]
fn workspace_emulator_receiver_is_not_ready_until_its_pairing_is_published() {
    let fx = Fixture::new();
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = fx.root().join("dead-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: dead\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: dead\n  user: {{}}\n\
             contexts:\n- name: dead\n  context:\n    cluster: dead\n    user: dead\n    namespace: devd-alice\n\
             current-context: dead\n"
        ),
    )
    .unwrap();
    let config = fx.root().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nbackend = \"none\"\n[kubernetes]\npairing_secret = \"devd-pairing\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let rx = fx.receiver_with(ReceiverOpts {
        workspace: "alice".into(),
        config: Some(config),
        args: vec!["--http-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    let base = format!("http://{}", rx.http_addr());
    assert_eq!(http_get(&format!("{base}/healthz")).unwrap().0, 200);
    eventually("the receiver logs the failed publish", || {
        rx.stderr()
            .contains("cannot write the pairing Secret devd-alice/devd-pairing")
            .then_some(())
    });
    // Still not ready after a retry or two.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_get(&format!("{base}/readyz")).unwrap().0,
        503,
        "ready without its pairing published"
    );
    assert!(
        rx.stderr().matches("pairing not published").count() >= 2,
        "it retries:\n{}",
        rx.stderr()
    );
}

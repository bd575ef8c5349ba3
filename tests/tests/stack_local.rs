//! The repository's own manifests on the local backend, for real: a
//! [`Stack`] written by hand (as the renderer would hand it over: objects
//! namespaced, devd's images by digest) applied by a `LocalBackend`
//! through `podman kube play`. The tests assert what the pods serve at
//! the Services' URLs and to each other by Service name, which pods were
//! played again (container ids), what was removed, and the reasons of
//! workloads that fail.
//!
//! The backend runs podman with the environment of the process, so each
//! scenario runs in a child process of this test binary that gets the
//! test's private storage and network configuration (`ContainerEnv::env`):
//! the parent builds the images, starts the child on the same test with
//! [`CHILD`] set, and asserts that it passed.

use devd_receiver::build::backend::Backend;
use devd_receiver::build::backend::exec::{ExecInput, ExecIo, ExecRequest};
use devd_receiver::build::backend::local::{LocalBackend, LocalConfig};
use devd_receiver::build::backend::stack::{
    Stack, StackObject, StackReport, WorkloadState, WorkloadStatus,
};
use devd_receiver::build::backend::{LiveFile, LiveUpdate};
use devd_receiver::build::live::WorktreeEntry;
use devd_sync::catalog::{Restart, Run, Service};
use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Set in the child process: the test's directory.
const CHILD: &str = "DEVD_STACK_LOCAL_CHILD";
const WORKSPACE: &str = "ws";

const WEB_DOCKERFILE: &str = r#"FROM docker.io/library/busybox:stable
COPY version /version
CMD ["sh", "-c", "echo web starting; mkdir -p /www && echo \"web $(cat /version) greeting=$GREETING pw=$PW user=$(cat /etc/creds/USER) file=$(cat /etc/cfg/GREETING) env=$S_USER\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#;
const API_DOCKERFILE: &str = r#"FROM docker.io/library/busybox:stable
CMD ["sh", "-c", "mkdir -p /www && echo api-ok > /www/index.html && exec httpd -f -p 9090 -h /www"]
"#;

/// Run `scenario` in a child process with the container environment.
fn in_child(test: &str, scenario: fn(&Path)) {
    if let Ok(root) = std::env::var(CHILD) {
        scenario(Path::new(&root));
        return;
    }
    require_container_tools();
    assert!(
        devd_tests::process::find_program("catatonit").is_some(),
        "podman makes the pods' pause container of catatonit: apt-get install catatonit (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cenv = ContainerEnv::new(root);
    cenv.build_busybox_base();
    for (tag, dockerfile, version) in [
        ("localhost/demo/web:v1", WEB_DOCKERFILE, "v1"),
        ("localhost/demo/web:v2", WEB_DOCKERFILE, "v2"),
        ("localhost/demo/api:v1", API_DOCKERFILE, "v1"),
    ] {
        let ctx = root.join("ctx").join(tag.replace([':', '/'], "-"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(ctx.join("version"), version).unwrap();
        cenv.run(
            "buildah",
            &[
                "bud",
                "--isolation",
                "chroot",
                "-t",
                tag,
                ctx.to_str().unwrap(),
            ],
            Duration::from_secs(180),
        )
        .assert_success();
    }
    // The fixture's configuration keeps the workspace's network private
    // (and removes it, with its bridge, if the scenario leaves it).
    let status = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, root)
        .envs(cenv.env())
        .status()
        .unwrap();
    if !status.success() {
        cenv.dump();
    }
    assert!(
        status.success(),
        "the scenario failed in the child: {status}"
    );
}

/// `podman --runtime runc ARGS` in the child's environment: stdout.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `repo:tag` as `repo@sha256:…`, as devd deploys it.
fn by_digest(tag: &str) -> String {
    let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", tag]);
    let repo = tag.rsplit_once(':').unwrap().0;
    format!("{repo}@{}", digest.trim())
}

fn object(source: &str, mut body: Value) -> StackObject {
    let kind = body["kind"].as_str().unwrap().to_owned();
    body["metadata"]["namespace"] = json!(WORKSPACE);
    StackObject {
        api_version: body["apiVersion"].as_str().unwrap().to_owned(),
        name: body["metadata"]["name"].as_str().unwrap().to_owned(),
        namespace: Some(WORKSPACE.into()),
        source: source.into(),
        kind,
        body,
    }
}

fn deployment(name: &str, image: &str, spec: Value) -> StackObject {
    let mut pod = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": name, "image": image}],
    });
    if let (Some(p), Some(extra)) = (pod.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            if k == "container" {
                let c = p["containers"][0].as_object_mut().unwrap();
                for (ck, cv) in v.as_object().unwrap() {
                    c.insert(ck.clone(), cv.clone());
                }
            } else {
                p.insert(k.clone(), v.clone());
            }
        }
    }
    object(
        &format!("k8s/{name}.yaml"),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
            },
        }),
    )
}

fn service(name: &str, port: u16, target: u16) -> StackObject {
    object(
        &format!("k8s/{name}.yaml"),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}]},
        }),
    )
}

/// The demo stack: `web` (devd-built, reads a ConfigMap and a Secret),
/// `api` (devd-built), `db` (a third-party image with a claim), their
/// Services, and an Ingress and a CronJob the local backend cannot run.
fn demo(dir: &Path, web: &str, greeting: &str) -> Stack {
    let objects = vec![
        object(
            "k8s/config.yaml",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
                   "data": {"GREETING": greeting}}),
        ),
        object(
            "k8s/config.yaml",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-secret"},
                   "type": "Opaque", "data": {"PASSWORD": "czNjcmV0"}, "stringData": {"USER": "app"}}),
        ),
        object(
            "k8s/db.yaml",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "db-data"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        deployment(
            "web",
            web,
            json!({
                "container": {
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "envFrom": [{"configMapRef": {"name": "web-config"}}, {"secretRef": {"name": "web-secret"}, "prefix": "S_"}],
                    "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "PASSWORD"}}}],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}, {"name": "cfg", "mountPath": "/etc/cfg"}],
                },
                "volumes": [{"name": "creds", "secret": {"secretName": "web-secret"}}, {"name": "cfg", "configMap": {"name": "web-config"}}],
            }),
        ),
        deployment("api", &by_digest("localhost/demo/api:v1"), json!({})),
        deployment(
            "db",
            "docker.io/library/busybox:stable",
            json!({
                "container": {
                    "command": ["sh", "-c", "cat /data/boot 2>/dev/null; date >> /data/boot; mkdir -p /srv && echo db-ok > /srv/index.html && exec httpd -f -p 5432 -h /srv"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}}],
            }),
        ),
        service("web", 80, 8080),
        service("api", 9090, 9090),
        service("db", 5432, 5432),
        object(
            "k8s/web.yaml",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"}, "spec": {}}),
        ),
        object(
            "k8s/jobs.yaml",
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {}}),
        ),
    ];
    Stack {
        objects,
        images: BTreeMap::new(),
        runs: [
            ("api".to_owned(), vec!["deployment/api".to_owned()]),
            ("web".to_owned(), vec!["deployment/web".to_owned()]),
        ]
        .into(),
        log: dir.join("stack.log"),
    }
}

fn backend(state: &Path) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        registry: None,
        insecure_registry: false,
        bind: "127.0.0.1".parse().unwrap(),
        state_dir: state.to_path_buf(),
    })
}

fn manifest_service(name: &str, image: &str) -> Service {
    Service {
        name: name.into(),
        context: None,
        dockerfile: devd_protocol::path::RelPath::new("Dockerfile").unwrap(),
        inputs: Vec::new(),
        image: image.into(),
        build_args: BTreeMap::new(),
        steps: Vec::new(),
        run: Run::Manifests,
        live: None,
    }
}

fn state_of<'a>(report: &'a StackReport, key: &str) -> &'a WorkloadStatus {
    report
        .workloads
        .iter()
        .find(|w| w.key == key)
        .unwrap_or_else(|| panic!("no workload {key}: {report:#?}"))
}

fn assert_ready(report: &StackReport, keys: &[&str]) {
    for k in keys {
        assert_eq!(
            state_of(report, k).state,
            WorkloadState::Ready,
            "{k}: {report:#?}"
        );
    }
}

/// Container id of each pod's app container, by workload name.
fn container_ids() -> BTreeMap<String, String> {
    let out = podman(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dev.devd.workspace={WORKSPACE}"),
        "--format",
        "{{.Labels}} {{.ID}}",
    ]);
    out.lines()
        .filter_map(|l| {
            let workload = l.split("dev.devd.workload:").nth(1)?;
            let workload = workload.split([' ', ']']).next()?;
            let id = l.rsplit(' ').next()?;
            Some((
                workload.trim_start_matches("deployment.").to_owned(),
                id.to_owned(),
            ))
        })
        .collect()
}

fn get(url: &str) -> String {
    let (code, body) = http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(code, 200, "GET {url}: {body}");
    body
}

/// Run `argv` in a running container of `service` through the backend.
async fn exec(b: &LocalBackend, service: &Service, argv: &[&str]) -> (i32, String) {
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(4);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    in_tx.send(ExecInput::End).await.unwrap();
    let req = ExecRequest {
        command: argv.iter().map(|s| s.to_string()).collect(),
        tty: None,
    };
    let code = b
        .exec(
            WORKSPACE,
            service,
            req,
            ExecIo {
                input: in_rx,
                output: out_tx,
            },
        )
        .await
        .unwrap_or_else(|f| panic!("exec {argv:?}: {f:?}"));
    let mut out = Vec::new();
    while let Some(chunk) = out_rx.recv().await {
        out.extend(chunk.data);
    }
    (code, String::from_utf8_lossy(&out).into_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_stack_runs_reaches_by_service_name_replays_what_changed_and_goes_away() {
    in_child(
        "a_stack_runs_reaches_by_service_name_replays_what_changed_and_goes_away",
        scenario,
    );
}

fn scenario(root: &Path) {
    let dir = root.join("scenario");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("receiver-state");
    let web1 = by_digest("localhost/demo/web:v1");
    let web2 = by_digest("localhost/demo/web:v2");
    let t0 = std::time::Instant::now();
    runtime().block_on(async {
        let b = backend(&state);
        assert!(b.supports_stack());

        eprintln!("stack_local: {:>5.1}s apply", t0.elapsed().as_secs_f64());
        // Everything runs; what cannot run is named.
        let r = b.apply_stack(WORKSPACE, &demo(&dir, &web1, "hello-v1")).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/api", "deployment/db"]);
        assert_eq!(state_of(&r, "cronjob/nightly").state, WorkloadState::Skipped);
        assert_eq!(r.workloads.len(), 4, "{r:#?}");
        assert!(r.warnings.iter().any(|w| w.starts_with("ingress/web (k8s/web.yaml): skipped")), "{:#?}", r.warnings);
        assert!(r.warnings.iter().any(|w| w.starts_with("cronjob/nightly")), "{:#?}", r.warnings);
        assert!(r.warnings.iter().any(|w| w.contains("service/web") && w.contains("80 forwards to 8080")), "{:#?}", r.warnings);
        for w in ["deployment/web created", "deployment/api created", "deployment/db created", "secret/web-secret created"] {
            assert!(r.changes.iter().any(|c| c == w), "{w}: {:#?}", r.changes);
        }
        let urls = r.urls.clone();
        assert_eq!(urls.keys().collect::<Vec<_>>(), ["api", "db", "web"]);
        for u in urls.values() {
            assert!(u.starts_with("http://127.0.0.1:"), "{u}");
        }
        assert_eq!(get(&urls["web"]).trim(), "web v1 greeting=hello-v1 pw=s3cret user=app file=hello-v1 env=app");
        assert_eq!(get(&urls["api"]).trim(), "api-ok");
        assert_eq!(get(&urls["db"]).trim(), "db-ok");
        let pods = podman(&["pod", "ps", "--filter", &format!("label=dev.devd.workspace={WORKSPACE}"), "--format", "{{.Name}} {{.Status}}"]);
        assert_eq!(pods.lines().count(), 3, "{pods}");
        assert!(pods.lines().all(|l| l.ends_with("Running")), "{pods}");
        // No containerPort is published on the host.
        let ports = podman(&["ps", "--format", "{{.Ports}}"]);
        assert!(ports.trim().is_empty(), "published: {ports}");

        eprintln!("stack_local: {:>5.1}s checks", t0.elapsed().as_secs_f64());
        // A pod reaches the others by their Service names, through the
        // backend's exec of a manifest service (found by its image).
        let web_svc = manifest_service("web", "demo/web");
        let (code, out) = exec(&b, &web_svc, &["wget", "-qO-", "http://db:5432/"]).await;
        assert_eq!((code, out.trim()), (0, "db-ok"));
        let (code, out) = exec(&b, &web_svc, &["wget", "-qO-", "http://api.ws.svc.cluster.local:9090/"]).await;
        assert_eq!((code, out.trim()), (0, "api-ok"));
        let running = b.running(WORKSPACE, &web_svc).await.unwrap().expect("web runs");
        assert_eq!(running.image, web1);
        assert_eq!(running.url.as_deref(), Some(urls["web"].as_str()));
        assert_eq!(b.running(WORKSPACE, &manifest_service("nope", "demo/nope")).await.unwrap(), None);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        b.logs(WORKSPACE, &web_svc, false, tx).await.unwrap();
        let mut logs = Vec::new();
        while let Some(c) = rx.recv().await {
            logs.extend(c);
        }
        assert!(String::from_utf8_lossy(&logs).contains("web starting"), "{}", String::from_utf8_lossy(&logs));

        eprintln!("stack_local: {:>5.1}s live", t0.elapsed().as_secs_f64());
        // Live update copies into the played container.
        let live = LiveUpdate {
            files: vec![LiveFile { to: "/www/live.html".into(), entry: WorktreeEntry::File { data: b"live!\n".to_vec(), mode: 0o644 } }],
            run: Vec::new(),
            restart: Restart::None,
            reapply: false,
            log: dir.join("live.log"),
        };
        assert_eq!(b.live_update(WORKSPACE, &web_svc, &live).await.unwrap(), 1);
        assert_eq!(get(&format!("{}/live.html", urls["web"])).trim(), "live!");

        eprintln!("stack_local: {:>5.1}s same", t0.elapsed().as_secs_f64());
        // A restart of a played container is told by its service's name
        // (the pipeline applies the live changes again then).
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(8);
        let cancel = tokio_util::sync::CancellationToken::new();
        let watch = b.watch_starts(WORKSPACE, started_tx, cancel.clone());
        let restart = async {
            // `podman events` needs a moment to start following.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let web = podman(&["ps", "--filter", "label=dev.devd.services=web", "--format", "{{.Names}}"]);
            podman(&["restart", "-t", "0", web.trim()]);
            let got = tokio::time::timeout(Duration::from_secs(30), started_rx.recv()).await;
            cancel.cancel();
            got
        };
        let ((), got) = tokio::join!(watch, restart);
        assert_eq!(got.expect("no start seen within 30 s"), Some("web".to_owned()));
        assert_eq!(get(&urls["web"]).trim(), "web v1 greeting=hello-v1 pw=s3cret user=app file=hello-v1 env=app");

        // The same render again: nothing is played.
        let ids0 = container_ids();
        assert_eq!(ids0.keys().collect::<Vec<_>>(), ["api", "db", "web"], "{ids0:?}");
        let r = b.apply_stack(WORKSPACE, &demo(&dir, &web1, "hello-v1")).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/api", "deployment/db"]);
        assert!(r.changes.is_empty(), "{:#?}", r.changes);
        assert_eq!(container_ids(), ids0);

        eprintln!("stack_local: {:>5.1}s image", t0.elapsed().as_secs_f64());
        // A new image of web replays web only, behind the same URL.
        let r = b.apply_stack(WORKSPACE, &demo(&dir, &web2, "hello-v1")).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/api", "deployment/db"]);
        assert_eq!(r.changes, ["deployment/web configured"]);
        let ids1 = container_ids();
        assert_ne!(ids1["web"], ids0["web"]);
        assert_eq!((&ids1["api"], &ids1["db"]), (&ids0["api"], &ids0["db"]));
        assert_eq!(r.urls, urls, "the URLs are stable");
        assert_eq!(get(&urls["web"]).trim(), "web v2 greeting=hello-v1 pw=s3cret user=app file=hello-v1 env=app");

        eprintln!("stack_local: {:>5.1}s configmap", t0.elapsed().as_secs_f64());
        // A ConfigMap edit replays the workload that reads it, no other.
        let r = b.apply_stack(WORKSPACE, &demo(&dir, &web2, "hello-v2")).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/api", "deployment/db"]);
        assert_eq!(r.changes, ["deployment/web configured"]);
        let ids2 = container_ids();
        assert_ne!(ids2["web"], ids1["web"]);
        assert_eq!((&ids2["api"], &ids2["db"]), (&ids0["api"], &ids0["db"]));
        assert_eq!(get(&urls["web"]).trim(), "web v2 greeting=hello-v2 pw=s3cret user=app file=hello-v2 env=app");

        eprintln!("stack_local: {:>5.1}s restart", t0.elapsed().as_secs_f64());
        // A receiver restart (a new backend, same state): nothing replays,
        // the URLs come back on the same ports.
        drop(b);
        let b = backend(&state);
        let r = b.apply_stack(WORKSPACE, &demo(&dir, &web2, "hello-v2")).await.unwrap();
        assert!(r.changes.is_empty(), "{:#?}", r.changes);
        assert_eq!(container_ids(), ids2);
        assert_eq!(r.urls, urls);
        assert_eq!(get(&urls["db"]).trim(), "db-ok");

        eprintln!("stack_local: {:>5.1}s other receiver", t0.elapsed().as_secs_f64());
        // Another receiver on this machine, same workspace name: its own
        // pods, and its `down` leaves ours alone.
        let other_state = dir.join("other-receiver");
        let other = backend(&other_state);
        let mut small = demo(&dir, &web2, "x");
        small.objects.retain(|o| o.name == "api");
        let r = other.apply_stack(WORKSPACE, &small).await.unwrap();
        assert_ready(&r, &["deployment/api"]);
        assert_ne!(r.urls["api"], urls["api"]);
        let removed = other.remove_stack(WORKSPACE).await.unwrap();
        assert!(removed.iter().any(|l| l.starts_with("pod ")), "{removed:?}");
        assert_eq!(container_ids(), ids2, "the other receiver touched our pods");

        eprintln!("stack_local: {:>5.1}s remove+failures", t0.elapsed().as_secs_f64());
        // Removing a Deployment (and its Service) removes its pod; a
        // workload whose image does not exist fails with the reason, one
        // that exits fails with its code and log; the rest stays Ready.
        let mut s = demo(&dir, &web2, "hello-v2");
        s.objects.retain(|o| o.name != "api");
        s.objects.push(deployment("broken", "localhost/demo/missing@sha256:0000000000000000000000000000000000000000000000000000000000000000", json!({})));
        s.objects.push(deployment(
            "crash",
            "docker.io/library/busybox:stable",
            json!({"container": {"command": ["sh", "-c", "echo boom; exit 3"]}}),
        ));
        let r = b.apply_stack(WORKSPACE, &s).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/db"]);
        assert!(r.changes.iter().any(|c| c == "deployment/api deleted"), "{:#?}", r.changes);
        let broken = state_of(&r, "deployment/broken");
        assert_eq!(broken.state, WorkloadState::Failed);
        assert!(broken.reason.as_deref().unwrap().contains("localhost/demo/missing@sha256:0000") && broken.reason.as_deref().unwrap().contains("not in local storage"), "{broken:?}");
        let crash = state_of(&r, "deployment/crash");
        assert_eq!(crash.state, WorkloadState::Failed, "{crash:?}");
        assert!(crash.reason.as_deref().unwrap().contains("code 3"), "{crash:?}");
        assert!(crash.log_tail.iter().any(|l| l == "boom"), "{crash:?}");
        let ids3 = container_ids();
        assert!(!ids3.contains_key("api"), "{ids3:?}");
        assert_eq!((&ids3["web"], &ids3["db"]), (&ids2["web"], &ids2["db"]));
        assert!(!r.urls.contains_key("api"));
        let (_, hosts) = exec(&b, &web_svc, &["cat", "/etc/hosts"]).await;
        assert!(hosts.lines().any(|l| l.ends_with("\tdb")), "{hosts}");
        assert!(!hosts.contains("api"), "the running web pod still names api: {hosts}");
        let proxy_gone = http_get(&urls["api"]);
        assert!(proxy_gone.is_err(), "the api URL still answers: {proxy_gone:?}");

        // A new version whose image cannot be had: the old one serves on.
        let missing = "localhost/demo/web@sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let mut m = s.clone();
        for o in m.objects.iter_mut().filter(|o| o.kind == "Deployment" && o.name == "web") {
            o.body["spec"]["template"]["spec"]["containers"][0]["image"] = json!(missing);
        }
        let r = b.apply_stack(WORKSPACE, &m).await.unwrap();
        let web = state_of(&r, "deployment/web");
        assert_eq!(web.state, WorkloadState::Failed, "{web:?}");
        assert!(web.reason.as_deref().unwrap().ends_with("(the previous version keeps running)"), "{web:?}");
        assert_eq!(container_ids()["web"], ids3["web"]);
        assert_eq!(get(&urls["web"]).trim(), "web v2 greeting=hello-v2 pw=s3cret user=app file=hello-v2 env=app");

        eprintln!("stack_local: {:>5.1}s kinds", t0.elapsed().as_secs_f64());
        // The other workload kinds run as pods of their own: a Pod with an
        // init container of a devd-built image, a StatefulSet with a claim
        // template, a DaemonSet, a ReplicaSet, a Job that completes.
        let busybox = "docker.io/library/busybox:stable";
        let serve = |port: u16| json!(["sh", "-c", format!("mkdir -p /s && echo ok > /s/index.html && exec httpd -f -p {port} -h /s")]);
        let template = |name: &str, spec: Value| json!({"metadata": {"labels": {"app": name}}, "spec": spec});
        let mut kinds = s.clone();
        kinds.objects.retain(|o| o.name != "broken" && o.name != "crash");
        kinds.objects.extend([
            object("k8s/kinds.yaml", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tools", "labels": {"app": "tools"}},
                "spec": {"initContainers": [{"name": "init", "image": web2, "command": ["sh", "-c", "echo init done"]}],
                         "containers": [{"name": "tools", "image": busybox, "command": serve(7000)}]}})),
            object("k8s/kinds.yaml", json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "cache"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "cache"}}, "serviceName": "cache",
                         "template": template("cache", json!({"containers": [{"name": "cache", "image": busybox,
                             "command": ["sh", "-c", "date > /data/started && mkdir -p /s && echo ok > /s/index.html && exec httpd -f -p 6379 -h /s"],
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]})),
                         "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}})),
            object("k8s/kinds.yaml", json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                         "template": template("agent", json!({"containers": [{"name": "agent", "image": busybox, "command": serve(7100)}]}))}})),
            object("k8s/kinds.yaml", json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "rs"}},
                         "template": template("rs", json!({"containers": [{"name": "rs", "image": busybox, "command": serve(7200)}]}))}})),
            object("k8s/kinds.yaml", json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
                "spec": {"template": template("migrate", json!({"restartPolicy": "Never",
                    "containers": [{"name": "migrate", "image": busybox, "command": ["sh", "-c", "wget -qO- http://db:5432/ && echo migrated"]}]}))}})),
            service("cache", 6379, 6379),
        ]);
        let r = b.apply_stack(WORKSPACE, &kinds).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/db", "pod/tools", "statefulset/cache", "daemonset/agent", "replicaset/rs", "job/migrate"]);
        assert!(
            r.changes.iter().any(|c| c == "deployment/crash deleted"),
            "{:#?}",
            r.changes
        );
        let pods = podman(&["pod", "ps", "--filter", &format!("label=dev.devd.workspace={WORKSPACE}"), "--format", "{{.Name}}"]);
        let mut pods: Vec<&str> = pods.lines().map(|p| p.split_once("-ws-").unwrap().1).collect();
        pods.sort();
        assert_eq!(pods, ["agent-0", "cache-0", "db-0", "migrate-0", "rs-0", "rs-1", "tools", "web-0"]);
        let migrate = podman(&["logs", &format!("{}-migrate", podman(&["pod", "ps", "--format", "{{.Name}}", "--filter", "name=migrate"]).trim())]);
        assert_eq!(migrate.lines().collect::<Vec<_>>(), ["db-ok", "migrated"], "the Job ran to its end");
        assert!(podman(&["volume", "ls", "--format", "{{.Name}}"]).lines().any(|v| v.ends_with("-ws-data-cache-0")));
        let (code, out) = exec(&b, &web_svc, &["wget", "-qO-", "http://cache:6379/"]).await;
        assert_eq!((code, out.trim()), (0, "ok"));
        eprintln!("stack_local: {:>5.1}s kinds removed", t0.elapsed().as_secs_f64());
        let r = b.apply_stack(WORKSPACE, &s).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/db"]);
        for k in ["pod/tools", "statefulset/cache", "daemonset/agent", "replicaset/rs", "job/migrate"] {
            assert!(r.changes.contains(&format!("{k} deleted")), "{k}: {:#?}", r.changes);
        }
        assert_eq!(
            container_ids().keys().collect::<Vec<_>>(),
            ["crash", "db", "web"],
            "the pods of the kinds are gone"
        );

        eprintln!("stack_local: {:>5.1}s stop", t0.elapsed().as_secs_f64());
        // devd stop: the pods go, the claim's data stays; the next apply
        // plays everything again.
        let stopped = b
            .stop(WORKSPACE, std::slice::from_ref(&web_svc))
            .await
            .unwrap();
        assert_eq!(stopped, ["web"]);
        assert!(container_ids().is_empty());
        let mut s2 = s.clone();
        s2.objects.retain(|o| o.name != "broken" && o.name != "crash");
        let r = b.apply_stack(WORKSPACE, &s2).await.unwrap();
        assert_ready(&r, &["deployment/web", "deployment/db"]);
        let (_, boots) = exec(&b, &manifest_service("db", "docker.io/library/busybox"), &["cat", "/data/boot"]).await;
        assert_eq!(boots.lines().count(), 2, "the claim's volume kept the first boot: {boots}");

        eprintln!("stack_local: {:>5.1}s down", t0.elapsed().as_secs_f64());
        // devd down: nothing of the workspace is left.
        let network = podman(&["network", "ls", "--format", "{{.Name}}"]);
        let network = network.lines().find(|n| n.starts_with("devd-")).unwrap().to_owned();
        let bridge = podman(&["network", "inspect", "--format", "{{.NetworkInterface}}", &network]);
        assert!(Path::new("/sys/class/net").join(bridge.trim()).exists(), "{bridge}");
        let removed = b.remove_stack(WORKSPACE).await.unwrap();
        let kinds: BTreeSet<&str> = removed.iter().filter_map(|l| l.split(' ').next()).collect();
        // The bridge: when podman left it behind.
        kinds.iter().for_each(|k| assert!(["bridge", "network", "pod", "secret", "volume"].contains(k), "{removed:#?}"));
        for k in ["network", "pod", "secret", "volume"] {
            assert!(kinds.contains(k), "no {k} removed: {removed:#?}");
        }
        assert!(removed.contains(&format!("network {network}")), "{removed:#?}");
        assert!(!Path::new("/sys/class/net").join(bridge.trim()).exists(), "bridge {bridge} left");
        assert!(!Path::new("/var/lib/cni/networks").join(&network).exists(), "leases of {network} left");
        assert!(removed.iter().any(|l| l.contains("db-data")), "{removed:#?}");
        let left = podman(&["pod", "ps", "--filter", &format!("label=dev.devd.workspace={WORKSPACE}"), "--format", "{{.Name}}"]);
        assert!(left.trim().is_empty(), "{left}");
        let containers = podman(&["ps", "-a", "--format", "{{.Names}}"]);
        assert!(containers.trim().is_empty(), "containers left: {containers}");
        assert!(!podman(&["volume", "ls", "--format", "{{.Name}}"]).contains("devd-"));
        assert!(podman(&["secret", "ls", "--format", "{{.Name}}"]).trim().is_empty());
        assert!(!podman(&["network", "ls", "--format", "{{.Name}}"]).contains("devd-"));
        assert!(http_get(&urls["web"]).is_err(), "the web URL still answers");
        assert!(b.remove_stack(WORKSPACE).await.unwrap().is_empty(), "a second down has nothing to do");
    });
}

//! The Kubernetes backend's whole flow against an emulator: PyPI's kmock
//! stands in for the API server (`tests/kmock/launcher.py`) and Debian's
//! docker-registry for the team registry. No cluster runs, so the test
//! plays the cluster's controllers and kubelet:
//! - for each Job the receiver creates, it runs the init container's
//!   command for real (`devd-receiver fetch-context` downloads the context
//!   from the receiver's HTTP server and checks its digest), plays Kaniko
//!   (pushes an image for `--destination` to the registry, or fails when the
//!   Dockerfile says `RUN false`), creates the Job's pod with the digest or
//!   the log in the Kaniko container's `terminated.message`, and marks the
//!   Job Complete or Failed;
//! - build steps (init containers after `fetch-context`) run for real, in
//!   order, as host processes on the fetched context (their working
//!   directory mapped from `/workspace`); the first non-zero exit fails the
//!   pod before Kaniko, with that container's log;
//! - for each Deployment whose generation is ahead of its status, it
//!   reports the rollout done.
//!
//! The receiver (`devd-receiver serve --http-listen`) and the daemon are the
//! real binaries on a real git fixture (`examples/demo`); assertions are on
//! the Job specs, the fetched contexts, the objects in the emulator, the
//! registry, and what `devd status --json` reports.

use devd_tests::containers::{Registry, http_get};
use devd_tests::kmock::KubeEmulator;
use devd_tests::{Devd, FAST_SYNC, Fixture, ReceiverOpts, Service, bin};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "devd-e2e";
const DOMAIN: &str = "devd.test";
const TIMEOUT: Duration = Duration::from_secs(120);
const FAIL_MARKER: &str = "RUN false";
const KANIKO_ERROR: &str = "error building image: error building stage: failed to execute command: waiting for process to exit: exit status 1";

/// What the test's kubelet saw and did for one Job.
#[derive(Clone, Debug)]
struct Build {
    job: Value,
    service: String,
    /// Where `fetch-context` unpacked the context.
    context: PathBuf,
    destination: String,
    /// The pushed manifest digest (`None`: the build failed).
    digest: Option<String>,
    /// The build step init containers that ran, in order, with exit codes.
    steps: Vec<(String, i32)>,
}

#[derive(Default)]
struct Seen {
    builds: Vec<Build>,
    /// (deployment, generation, image) per rollout reported done.
    rollouts: Vec<(String, i64, String)>,
    errors: Vec<String>,
}

/// The cluster's controllers and kubelet, played on a background task.
struct Cluster {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    fn start(emu: &KubeEmulator, registry: &Registry, root: &Path) -> Self {
        devd_receiver::server::install_crypto();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kubeconfig = emu.kubeconfig().to_owned();
        let client = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(cfg).unwrap()
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let kubelet = Kubelet {
            client: client.clone(),
            seen: seen.clone(),
            registry: registry.addr(),
            root: root.join("kubelet"),
            jobs: HashSet::new(),
        };
        let stop2 = stop.clone();
        rt.spawn(kubelet.run(stop2));
        Self {
            rt,
            client,
            seen,
            stop,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    fn builds(&self) -> Vec<Build> {
        self.seen.lock().unwrap().builds.clone()
    }

    fn rollouts(&self) -> Vec<(String, i64, String)> {
        self.seen.lock().unwrap().rollouts.clone()
    }

    #[track_caller]
    fn assert_no_errors(&self) {
        let errors = self.seen.lock().unwrap().errors.clone();
        assert!(errors.is_empty(), "the test's kubelet failed: {errors:#?}");
    }

    fn deployment(&self, name: &str) -> Deployment {
        self.rt
            .block_on(self.api::<Deployment>().get(name))
            .unwrap_or_else(|e| panic!("Deployment {name}: {e}"))
    }

    fn image_of(&self, name: &str) -> String {
        let d = self.deployment(name);
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Kubelet {
    client: kube::Client,
    seen: Arc<Mutex<Seen>>,
    registry: String,
    root: PathBuf,
    jobs: HashSet<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn after<'a>(args: &'a [String], flag: &str) -> anyhow::Result<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| anyhow::anyhow!("no {flag} in {args:?}"))
}

/// Every file under `dir` as (path, content), sorted: the fake image layer.
fn tree_bytes(dir: &Path, rel: &str, out: &mut Vec<u8>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let r = format!("{rel}/{}", n.to_string_lossy());
        if p.is_dir() {
            tree_bytes(&p, &r, out);
        } else {
            out.extend_from_slice(r.as_bytes());
            out.push(0);
            out.extend_from_slice(&std::fs::read(&p).unwrap_or_default());
        }
    }
}

impl Kubelet {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.step().await {
                eprintln!("kubelet: {e:#}");
                self.seen.lock().unwrap().errors.push(format!("{e:#}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn step(&mut self) -> anyhow::Result<()> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), NS);
        for job in jobs.list(&ListParams::default()).await?.items {
            let name = job.metadata.name.clone().unwrap_or_default();
            if self.jobs.insert(name.clone()) {
                self.run_job(&name, serde_json::to_value(&job)?).await?;
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        for d in deployments.list(&ListParams::default()).await?.items {
            let generation = d.metadata.generation.unwrap_or(1);
            let observed = d
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if observed >= generation {
                continue;
            }
            let name = d.metadata.name.clone().unwrap_or_default();
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let image = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            deployments
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "observedGeneration": generation,
                        "replicas": replicas,
                        "updatedReplicas": replicas,
                        "readyReplicas": replicas,
                        "availableReplicas": replicas,
                        "conditions": [
                            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                        ],
                    }})),
                )
                .await?;
            self.seen
                .lock()
                .unwrap()
                .rollouts
                .push((name, generation, image));
        }
        Ok(())
    }

    /// Play the build pod of Job `name`: fetch its context for real, push
    /// an image (or fail), then report through the pod and the Job status.
    async fn run_job(&mut self, name: &str, job: Value) -> anyhow::Result<()> {
        let pod_spec = &job["spec"]["template"]["spec"];
        let init = strings(&pod_spec["initContainers"][0]["command"]);
        let url = after(&init, "--url")?;
        let blake3 = after(&init, "--blake3")?;
        let dest = self.root.join(name);
        let out = tokio::process::Command::new(bin("devd-receiver"))
            .args(["fetch-context", "--url", url, "--blake3", blake3, "--dest"])
            .arg(&dest)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "fetch-context for Job {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Build steps: the init containers after the fetch, in order.
        let mut init_statuses = vec![json!({"name": "fetch-context", "ready": false,
            "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})];
        let mut annotations = json!({
            "devd.test/log.fetch-context": String::from_utf8_lossy(&out.stdout),
        });
        let mut steps = Vec::new();
        for c in pod_spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
        {
            let cname = c["name"].as_str().unwrap_or_default().to_owned();
            let argv = strings(&c["command"]);
            anyhow::ensure!(!argv.is_empty(), "init container {cname} has no command");
            let workdir = c["workingDir"].as_str().unwrap_or("/workspace");
            let rel = workdir.strip_prefix("/workspace").ok_or_else(|| {
                anyhow::anyhow!("{cname}: workingDir {workdir} is not in /workspace")
            })?;
            let dir = dest.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(&dir)?;
            let env = c["env"].as_array().into_iter().flatten().map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["value"].as_str().unwrap_or_default().to_owned(),
                )
            });
            let run = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .current_dir(&dir)
                .envs(env)
                .output()
                .await?;
            let code = run.status.code().unwrap_or(-1);
            annotations[format!("devd.test/log.{cname}")] = json!(format!(
                "{}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            ));
            init_statuses.push(json!({"name": cname, "ready": false, "restartCount": 0,
                "image": c["image"], "imageID": "",
                "state": {"terminated": {"exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" }}}}));
            steps.push((cname, code));
            if code != 0 {
                break;
            }
        }
        let step_failed = steps.iter().any(|(_, code)| *code != 0);
        let args = strings(&pod_spec["containers"][0]["args"]);
        let arg = |flag: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(flag))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no {flag} in Kaniko args {args:?}"))
        };
        let destination = arg("--destination=")?;
        let dockerfile = arg("--dockerfile=")?;
        let dockerfile = dest.join(dockerfile.trim_start_matches("/workspace/"));
        let fails = step_failed || std::fs::read_to_string(&dockerfile)?.contains(FAIL_MARKER);
        let service = job["metadata"]["labels"]["dev.devd/service"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let (digest, log, exit, message) = if fails {
            let log = format!("INFO[0000] Running: [/bin/sh -c false]\n{KANIKO_ERROR}\n");
            (None, log.clone(), 1, log)
        } else {
            let digest = self.push(&destination, &dest).await?;
            let log = format!(
                "INFO[0000] Retrieving image manifest scratch\nINFO[0001] Pushing image to {destination}\nINFO[0002] Pushed {destination}@{digest}\n"
            );
            (Some(digest.clone()), log, 0, digest)
        };
        let kaniko_state = if step_failed {
            json!({"waiting": {"reason": "PodInitializing"}})
        } else {
            annotations["devd.test/log.kaniko"] = json!(log);
            json!({"terminated": {
                "exitCode": exit, "reason": if fails { "Error" } else { "Completed" },
                "message": message}})
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{name}-kblt1"), "namespace": NS,
                "labels": {"job-name": name, "batch.kubernetes.io/job-name": name},
                "annotations": annotations,
            },
            "spec": {"restartPolicy": "Never", "containers": [{"name": "kaniko", "image": pod_spec["containers"][0]["image"]}]},
            "status": {
                "phase": if fails { "Failed" } else { "Succeeded" },
                "initContainerStatuses": init_statuses,
                "containerStatuses": [{"name": "kaniko", "ready": false, "restartCount": 0,
                    "image": "x", "imageID": "", "state": kaniko_state}],
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let status = if fails {
            json!({"failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"},
            ]})
        } else {
            json!({"succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ]})
        };
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), NS);
        jobs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        self.seen.lock().unwrap().builds.push(Build {
            job,
            service,
            context: dest,
            destination,
            digest,
            steps,
        });
        Ok(())
    }

    /// Push a one-layer image made of the context's files to
    /// `destination`; its manifest digest.
    async fn push(&self, destination: &str, context: &Path) -> anyhow::Result<String> {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.registry.clone()]),
            ..Default::default()
        });
        let reference: oci_client::Reference = destination.parse()?;
        let mut layer = Vec::new();
        tree_bytes(context, "", &mut layer);
        let auth = oci_client::secrets::RegistryAuth::Anonymous;
        client
            .push(
                &reference,
                &[ImageLayer::oci_v1(layer, None)],
                Config::oci_v1(
                    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                        .to_vec(),
                    None,
                ),
                &auth,
                None,
            )
            .await?;
        Ok(client.fetch_manifest_digest(&reference, &auth).await?)
    }
}

/// Emulator, registry, cluster roles, receiver and daemon for one test.
struct Setup<'a> {
    fx: &'a Fixture,
    registry: Registry,
    cluster: Cluster,
    devd: Devd<'a>,
    _rx: devd_tests::Receiver<'a>,
    _emu: KubeEmulator,
}

fn start(fx: &Fixture) -> Setup<'_> {
    let emu = KubeEmulator::start(fx, NS);
    let registry = Registry::start(fx.root(), fx.logs());
    let cluster = Cluster::start(&emu, &registry, fx.root());
    let config = fx.root().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nbackend = \"kubernetes\"\nregistry = \"{}\"\ninsecure_registry = true\nconcurrency = 2\n\
             [kubernetes]\nkubeconfig = \"{}\"\nfetcher_image = \"registry.invalid/devd/devd-receiver:test\"\n\
             registry_secret = \"devd-registry\"\ndomain = \"{DOMAIN}\"\nactive_deadline_seconds = 120\n\
             rollout_timeout_seconds = 60\npoll_interval_ms = 100\n",
            registry.addr(),
            emu.kubeconfig().display()
        ),
    )
    .unwrap();
    let rx = fx.receiver_with(ReceiverOpts {
        config: Some(config),
        args: vec!["--http-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    fx.write_local_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    Setup {
        fx,
        registry,
        cluster,
        devd,
        _rx: rx,
        _emu: emu,
    }
}

impl Setup<'_> {
    /// Wait until service `name` satisfies `pred`; returns it.
    #[track_caller]
    fn wait_service(&self, name: &str, what: &str, pred: impl Fn(&Service) -> bool) -> Service {
        let mut last = None;
        let found = devd_tests::poll_until(TIMEOUT, || {
            let s = self.devd.status().service(name);
            let ok = s.as_ref().is_some_and(&pred);
            last = s;
            ok
        });
        if found.is_none() {
            self.fx.dump_logs();
            panic!(
                "service {name}: {what} not reached within {TIMEOUT:?}; last state: {last:#?}\nkubelet errors: {:#?}",
                self.cluster.seen.lock().unwrap().errors
            );
        }
        last.expect("service present")
    }

    fn build_of(&self, service: &str) -> Vec<Build> {
        self.cluster
            .builds()
            .into_iter()
            .filter(|b| b.service == service)
            .collect()
    }

    /// Wait until every demo service is deployed; they are returned sorted.
    fn wait_all_deployed(&self) -> Vec<Service> {
        ["api", "greeter", "web"]
            .iter()
            .map(|n| self.wait_service(n, "deployed", |s| s.state == "deployed"))
            .collect()
    }
}

#[test]
fn emulator_kaniko_job_then_deploy_by_digest_then_reuse_without_a_job() {
    let fx = Fixture::from_example("demo");
    let st = start(&fx);
    let reg = st.registry.addr();
    let all = st.wait_all_deployed();
    st.cluster.assert_no_errors();

    // One Job per service, built to spec.
    let builds = st.cluster.builds();
    assert_eq!(builds.len(), 3, "{builds:#?}");
    for s in &all {
        let [b] = &st.build_of(&s.name)[..] else {
            panic!("one Job for {}: {builds:#?}", s.name)
        };
        let job = &b.job;
        let name = job["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with(&format!("devd-{}-", s.name)), "{name}");
        assert_eq!(
            job["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "devd"
        );
        assert_eq!(job["metadata"]["labels"]["dev.devd/workspace"], "default");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 120);
        assert!(job["spec"]["ttlSecondsAfterFinished"].as_i64().unwrap() > 0);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let init = &pod["initContainers"][0];
        assert_eq!(init["image"], "registry.invalid/devd/devd-receiver:test");
        assert_eq!(init["securityContext"]["runAsNonRoot"], true);
        let url = after(&strings(&init["command"]), "--url")
            .unwrap()
            .to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.contains("/contexts/"),
            "{url}"
        );
        let kaniko = &pod["containers"][0];
        assert_eq!(kaniko["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert!(kaniko["resources"]["limits"]["memory"].is_string());
        let args = strings(&kaniko["args"]);
        assert!(args.contains(&"--digest-file=/dev/termination-log".to_owned()));
        assert!(args.contains(&"--context=dir:///workspace".to_owned()));
        assert!(args.contains(&"--insecure".to_owned()), "{args:?}");
        assert!(
            b.destination
                .starts_with(&format!("{reg}/demo/{}:devd-", s.name)),
            "{}",
            b.destination
        );
        assert!(
            kaniko["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/kaniko/.docker"),
            "registry credentials mounted"
        );
        // The context is withdrawn once the build is over.
        assert_eq!(http_get(&url).unwrap().0, 404, "{url} still served");

        // The digest the pod reported is what runs and what the daemon shows.
        let digest = b.digest.clone().unwrap();
        let image = format!("{reg}/demo/{}@{digest}", s.name);
        assert_eq!(s.digest.as_deref(), Some(digest.as_str()), "{s:?}");
        assert_eq!(s.image.as_deref(), Some(image.as_str()), "{s:?}");
        assert_eq!(st.cluster.image_of(&s.name), image);
        assert!(s.last_build_ms.is_some() && !s.reused, "{s:?}");
    }
    // The contexts the init containers fetched are the services' inputs.
    let ctx = |svc: &str, rel: &str| std::fs::read_to_string(st.build_of(svc)[0].context.join(rel));
    assert!(ctx("web", "www/index.html").unwrap().contains("web v1"));
    assert!(
        ctx("greeter", "shared/greeting.txt")
            .unwrap()
            .contains("Hello from shared v1")
    );
    assert!(ctx("greeter", "Dockerfile").is_ok());
    assert!(
        ctx("api", "NOTES.md").is_err(),
        "api's .dockerignore keeps NOTES.md out of its context"
    );
    assert!(ctx("api", "www/health").is_ok());
    let greeter_args = strings(
        &st.build_of("greeter")[0].job["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    assert!(
        greeter_args.contains(&"--build-arg=GREETING_STYLE=plain".to_owned()),
        "{greeter_args:?}"
    );

    // What devd created next to the Deployments, and the URLs it reports.
    let web = &all[2];
    assert_eq!(
        web.url.as_deref(),
        Some(&*format!("http://web.{NS}.{DOMAIN}"))
    );
    assert_eq!(
        all[0].url.as_deref(),
        Some(&*format!("http://api.{NS}.svc.cluster.local:8080"))
    );
    let ingress = st
        .cluster
        .rt
        .block_on(st.cluster.api::<Ingress>().get("web"))
        .unwrap();
    assert_eq!(
        ingress.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some(&*format!("web.{NS}.{DOMAIN}"))
    );
    for name in ["api", "greeter", "web"] {
        let svc = st
            .cluster
            .rt
            .block_on(st.cluster.api::<KubeService>().get(name))
            .unwrap_or_else(|e| panic!("Service {name}: {e}"));
        assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);
    }
    assert!(
        st.cluster
            .rt
            .block_on(st.cluster.api::<Ingress>().get_opt("api"))
            .unwrap()
            .is_none(),
        "internal services get no Ingress"
    );

    // An edit of web rebuilds web alone, and the Deployment follows.
    let web0 = web.clone();
    fx.write("services/web/www/index.html", "<h1>web v2</h1>\n");
    let web1 = st.wait_service("web", "redeployed", |s| {
        s.state == "deployed" && s.image != web0.image
    });
    st.cluster.assert_no_errors();
    assert_eq!(st.cluster.builds().len(), 4, "one more Job, for web only");
    let b = &st.build_of("web")[1];
    assert!(
        std::fs::read_to_string(b.context.join("www/index.html"))
            .unwrap()
            .contains("web v2")
    );
    assert_eq!(web1.digest, b.digest);
    assert_eq!(st.cluster.image_of("web"), web1.image.clone().unwrap());
    assert_eq!(st.cluster.image_of("api"), all[0].image.clone().unwrap());

    // Reverting it reuses the first image: no Job, the Deployment goes back.
    let rollouts = st.cluster.rollouts().len();
    fx.write(
        "services/web/www/index.html",
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/demo/services/web/www/index.html"),
        )
        .unwrap(),
    );
    let web2 = st.wait_service("web", "redeployed with the first image", |s| {
        s.state == "deployed" && s.image == web0.image
    });
    assert!(web2.reused && web2.last_build_ms.is_none(), "{web2:?}");
    assert_eq!(st.cluster.builds().len(), 4, "a reuse runs no Job");
    assert_eq!(st.cluster.image_of("web"), web0.image.clone().unwrap());
    let r = st.cluster.rollouts();
    assert!(
        r.len() > rollouts && r.last().unwrap().2 == web0.image.clone().unwrap(),
        "{r:?}"
    );
    assert!(
        st.registry
            .has_tag("demo/web", b.destination.rsplit_once(':').unwrap().1)
    );
    st.cluster.assert_no_errors();
}

#[test]
fn emulator_failed_kaniko_job_reports_the_log_tail_and_leaves_the_deployment() {
    let fx = Fixture::from_example("demo");
    let st = start(&fx);
    let all = st.wait_all_deployed();
    let web0 = all[2].clone();
    let deployed = st.cluster.deployment("web");

    let dockerfile = String::from_utf8(fx.read("services/web/Dockerfile")).unwrap();
    fx.write(
        "services/web/Dockerfile",
        format!("{dockerfile}{FAIL_MARKER}\n"),
    );
    let failed = st.wait_service("web", "failed", |s| s.state == "failed");
    st.cluster.assert_no_errors();
    assert_eq!(st.build_of("web").len(), 2);
    assert!(st.build_of("web")[1].digest.is_none());
    let error = failed.error.clone().unwrap();
    assert!(error.contains("Kaniko failed"), "{error}");
    assert!(error.contains("BackoffLimitExceeded"), "{error}");
    assert!(
        error.contains("exit status 1"),
        "the last error line is named: {error}"
    );
    assert_eq!(
        failed.log_tail.last().map(String::as_str),
        Some(KANIKO_ERROR),
        "{failed:?}"
    );
    // What ran keeps running: the Deployment was not touched.
    assert_eq!(failed.image, web0.image, "status keeps the running image");
    let now = st.cluster.deployment("web");
    assert_eq!(now.metadata.generation, deployed.metadata.generation);
    assert_eq!(st.cluster.image_of("web"), web0.image.clone().unwrap());
    assert!(
        !st.cluster
            .rollouts()
            .iter()
            .any(|(d, g, _)| d == "web" && Some(*g) > deployed.metadata.generation),
        "no rollout of web after the failed build"
    );
}

#[test]
fn emulator_build_steps_run_as_init_containers_before_kaniko_and_a_failing_one_is_named() {
    let fx = Fixture::from_example("demo");
    let catalog = String::from_utf8(fx.read("devd.toml")).unwrap();
    let steps = |test_exit: u8| {
        format!(
            "{catalog}\n\
             [[services.web.steps]]\n\
             name = \"generate\"\n\
             image = \"busybox:stable\"\n\
             command = [\"sh\", \"-c\", \"echo \\\"generated in $MODE\\\" > generated.txt && echo generate-ran\"]\n\
             workdir = \"www\"\n\
             env = {{ MODE = \"ci\" }}\n\
             [[services.web.steps]]\n\
             name = \"test\"\n\
             image = \"busybox:stable\"\n\
             command = [\"sh\", \"-c\", \"test -f www/generated.txt && echo tests-ran; echo 'FAIL: web_renders' >&2; exit {test_exit}\"]\n"
        )
    };
    fx.write("devd.toml", steps(0));
    let st = start(&fx);
    let all = st.wait_all_deployed();
    st.cluster.assert_no_errors();
    let web0 = all[2].clone();
    let builds = st.build_of("web");
    assert_eq!(builds.len(), 1);
    let b = &builds[0];
    let init: Vec<&str> = b.job["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["fetch-context", "step-generate", "step-test"]);
    assert_eq!(
        b.steps,
        [("step-generate".to_owned(), 0), ("step-test".to_owned(), 0)]
    );
    // The step wrote into the context Kaniko built (and the test pushed).
    assert_eq!(
        std::fs::read_to_string(b.context.join("www/generated.txt")).unwrap(),
        "generated in ci\n"
    );
    assert!(b.digest.is_some());
    // Services without steps get only the fetch.
    let api_init = &st.build_of("api")[0].job["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(api_init.as_array().unwrap().len(), 1);
    let log = st.devd.run(&["logs", "web", "--build"]);
    log.assert_success();
    assert!(
        log.stdout.contains("generate-ran") && log.stdout.contains("tests-ran"),
        "the steps' logs are in the build log:\n{}",
        log.stdout
    );

    // A failing step: named, with its log tail; Kaniko never ran and
    // nothing is rolled out.
    let deployed = st.cluster.deployment("web");
    fx.write("devd.toml", steps(3));
    let failed = st.wait_service("web", "failed", |s| s.state == "failed");
    st.cluster.assert_no_errors();
    let builds = st.build_of("web");
    assert_eq!(builds.len(), 2, "changing a step builds again");
    assert_eq!(
        builds[1].steps,
        [("step-generate".to_owned(), 0), ("step-test".to_owned(), 3)]
    );
    assert!(builds[1].digest.is_none());
    let error = failed.error.clone().unwrap();
    assert!(
        error.contains("build of web failed: step \"test\" failed (exit 3)"),
        "{error}"
    );
    assert_eq!(
        failed.log_tail,
        ["tests-ran", "FAIL: web_renders"],
        "{failed:?}"
    );
    assert_eq!(failed.image, web0.image);
    assert_eq!(
        st.cluster.deployment("web").metadata.generation,
        deployed.metadata.generation,
        "the Deployment is untouched"
    );
    assert_eq!(st.cluster.image_of("web"), web0.image.clone().unwrap());
}

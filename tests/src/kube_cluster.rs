//! A Kubernetes cluster played against the [kmock emulator](crate::kmock),
//! for the receiver's Kubernetes backend end to end. No API server, kubelet
//! or Kaniko can run here (no cluster, no container runtime for pods), so
//! the emulator stores the objects and [`Cluster`] plays the controllers
//! and kubelet on a tokio runtime of its own:
//! - for each Job the receiver creates, it runs the first init container's
//!   command for real (`devd-receiver fetch-context` downloads the context
//!   from the receiver's HTTP server and checks its digest), then the build
//!   steps (the init containers after `fetch-context`), in order, as host
//!   processes on the fetched context (their working directory mapped from
//!   `/workspace`; the first non-zero exit fails the pod before Kaniko,
//!   with that container's log); then it plays Kaniko: pushes a real image
//!   made of the context's files to `--destination` in the registry, or
//!   fails with Kaniko's error when the Dockerfile says [`FAIL_MARKER`] or
//!   the service is in [`Cluster::failing`]; it creates the Job's pod with
//!   the digest or the log in the Kaniko container's `terminated.message`,
//!   and marks the Job Complete or Failed;
//!   The build pod is created from the Job's pod template first, so the
//!   emulator's admission (Pod Security, ResourceQuota) can refuse it; a
//!   refused build pod becomes the Job's `FailedCreate` event and nothing
//!   runs;
//! - for each Deployment whose generation is ahead of its status, it plays
//!   the Deployment and ReplicaSet controllers
//!   ([`crate::kube_controllers::roll_out`]): a ReplicaSet, pods owned by
//!   it, the rollout reported done, or `ReplicaFailure` when a pod is refused;
//! - an ingress controller ([`crate::kube_ingress`]) takes the Ingresses of
//!   an existing IngressClass ([`Setup`] installs `nginx` as the default,
//!   which the emulator's admission gives class-less Ingresses) and serves
//!   their hosts over real HTTP on loopback.
//!
//! [`Setup::start`] brings up the emulator, a registry, the cluster, a
//! `devd-receiver serve --http-listen` with the Kubernetes backend and the
//! daemon on a fixture; a test reads what the kubelet saw ([`Build`]s,
//! rollouts) and the objects in the emulator.

use crate::containers::Registry;
use crate::kmock::KubeEmulator;
use crate::kube_controllers::{self as controllers, Rollout};
use crate::kube_ingress::{self, IngressController};
use crate::{Devd, FAST_SYNC, Fixture, Receiver, ReceiverOpts, Service, bin};
use devd_receiver::build::backend::kubernetes::names::CONTEXT_DIR;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The ingress domain in the receiver's config.
pub const DOMAIN: &str = "devd.test";
/// How long a test waits for a service or an object to reach a state.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// A Dockerfile containing this fails its Kaniko build.
pub const FAIL_MARKER: &str = "RUN false";
/// The last line of a failed Kaniko build's log.
pub const KANIKO_ERROR: &str = "error building image: error building stage: failed to execute command: waiting for process to exit: exit status 1";

/// What the test's kubelet saw and did for one Job.
#[derive(Clone, Debug)]
pub struct Build {
    /// The Job's name.
    pub name: String,
    /// The Job as the receiver created it.
    pub job: Value,
    /// Its `dev.devd/service` label.
    pub service: String,
    /// Where `fetch-context` unpacked the context.
    pub context: PathBuf,
    /// Kaniko's `--destination`.
    pub destination: String,
    /// The pushed manifest digest (`None`: the build failed).
    pub digest: Option<String>,
    /// The build step init containers that ran, in order, with exit codes.
    pub steps: Vec<(String, i32)>,
    /// Admission's refusal of the build pod (then nothing ran).
    pub refused: Option<String>,
}

#[derive(Default)]
struct Seen {
    builds: Vec<Build>,
    /// (deployment, generation, image) per rollout reported done.
    rollouts: Vec<(String, i64, String)>,
    /// (deployment, generation) whose pods admission refused.
    refused: Vec<(String, i64)>,
}

/// Errors of the tasks playing the cluster, reported by
/// [`Cluster::assert_no_errors`].
pub type Errors = Arc<Mutex<Vec<String>>>;

/// The cluster's controllers and kubelet, played on a background task of a
/// runtime of their own; stopped on drop.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    ns: String,
    seen: Arc<Mutex<Seen>>,
    errors: Errors,
    /// Services whose Kaniko builds fail.
    pub failing: Arc<Mutex<HashSet<String>>>,
    ingress: IngressController,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    /// Connect to `emu` and start the kubelet for namespace `ns`, pushing
    /// to `registry` and fetching contexts under `<root>/kubelet`.
    pub fn start(emu: &KubeEmulator, ns: &str, registry: &Registry, root: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = emu.client_on(&rt);
        let ingress = rt
            .block_on(IngressController::start())
            .expect("start the played ingress controller");
        let cluster = Self {
            rt,
            client,
            ns: ns.to_owned(),
            seen: Default::default(),
            errors: Default::default(),
            failing: Default::default(),
            ingress: ingress.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let kubelet = Kubelet {
            client: cluster.client.clone(),
            ns: cluster.ns.clone(),
            seen: cluster.seen.clone(),
            errors: cluster.errors.clone(),
            failing: cluster.failing.clone(),
            registry: registry.addr(),
            root: root.join("kubelet"),
            jobs: HashSet::new(),
            ingress,
        };
        cluster.rt.spawn(kubelet.run(cluster.stop.clone()));
        cluster
    }

    /// The played ingress controller (what its data path answered).
    pub fn ingress(&self) -> &IngressController {
        &self.ingress
    }

    /// A client of the emulator.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The namespace the receiver deploys to.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Run `f` to completion on the cluster's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `f` in the background on the cluster's runtime (until the
    /// cluster is dropped).
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }

    /// Where a background task reports errors for [`Self::assert_no_errors`].
    pub fn errors(&self) -> Errors {
        self.errors.clone()
    }

    /// The objects of kind `K` in the namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Every Job the kubelet ran, in order.
    pub fn builds(&self) -> Vec<Build> {
        self.seen.lock().unwrap().builds.clone()
    }

    /// The Jobs the kubelet ran for `service`, in order.
    pub fn builds_of(&self, service: &str) -> Vec<Build> {
        self.builds()
            .into_iter()
            .filter(|b| b.service == service)
            .collect()
    }

    /// (deployment, generation, image) per rollout reported done, in order.
    pub fn rollouts(&self) -> Vec<(String, i64, String)> {
        self.seen.lock().unwrap().rollouts.clone()
    }

    /// (deployment, generation) per rollout whose pods admission refused.
    pub fn refused_rollouts(&self) -> Vec<(String, i64)> {
        self.seen.lock().unwrap().refused.clone()
    }

    /// Fail unless every task playing the cluster succeeded so far.
    #[track_caller]
    pub fn assert_no_errors(&self) {
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "the test's kubelet failed: {errors:#?}");
    }

    /// Deployment `name` as it is in the emulator.
    pub fn deployment(&self, name: &str) -> Deployment {
        self.rt
            .block_on(self.api::<Deployment>().get(name))
            .unwrap_or_else(|e| panic!("Deployment {name}: {e}"))
    }

    /// The image of Deployment `name`'s first container.
    pub fn image_of(&self, name: &str) -> String {
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
    ns: String,
    seen: Arc<Mutex<Seen>>,
    errors: Errors,
    failing: Arc<Mutex<HashSet<String>>>,
    registry: String,
    root: PathBuf,
    jobs: HashSet<String>,
    ingress: IngressController,
}

/// A JSON array of strings (a command, args) as strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The argument after `flag` in `args`.
pub fn after<'a>(args: &'a [String], flag: &str) -> anyhow::Result<&'a str> {
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
                self.errors.lock().unwrap().push(format!("{e:#}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn step(&mut self) -> anyhow::Result<()> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.ns);
        for job in jobs.list(&ListParams::default()).await?.items {
            let name = job.metadata.name.clone().unwrap_or_default();
            if self.jobs.insert(name.clone()) {
                self.run_job(&name, serde_json::to_value(&job)?).await?;
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
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
            match controllers::roll_out(&self.client, &self.ns, &d).await? {
                Rollout::Done(name, generation, image) => self
                    .seen
                    .lock()
                    .unwrap()
                    .rollouts
                    .push((name, generation, image)),
                Rollout::Refused => {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    self.seen.lock().unwrap().refused.push((name, generation));
                }
            }
        }
        self.ingress.admit(&self.client, &self.ns).await?;
        Ok(())
    }

    /// Play the build pod of Job `name`: fetch its context for real, run
    /// its build steps, push an image (or fail), then report through the
    /// pod and the Job status.
    async fn run_job(&mut self, name: &str, job: Value) -> anyhow::Result<()> {
        let ns = self.ns.clone();
        let pod_spec = &job["spec"]["template"]["spec"];
        let service = job["metadata"]["labels"]["dev.devd/service"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // The Job controller creates the pod from the template; admission
        // may refuse it.
        let pod_name = format!("{name}-kblt1");
        let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
        labels["job-name"] = json!(name);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let pending: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                "annotations": job["spec"]["template"]["metadata"]["annotations"]},
            "spec": pod_spec,
            "status": {"phase": "Pending"},
        }))?;
        if let Err(e) = pods.create(&PostParams::default(), &pending).await {
            let Some(message) = controllers::refusal(&e) else {
                return Err(e.into());
            };
            controllers::failed_create_event(&self.client, &ns, name, &message).await?;
            self.seen.lock().unwrap().builds.push(Build {
                name: name.to_owned(),
                job,
                service,
                context: PathBuf::new(),
                destination: String::new(),
                digest: None,
                steps: Vec::new(),
                refused: Some(message),
            });
            return Ok(());
        }
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
            let workdir = c["workingDir"].as_str().unwrap_or(CONTEXT_DIR);
            let rel = workdir.strip_prefix(CONTEXT_DIR).ok_or_else(|| {
                anyhow::anyhow!("{cname}: workingDir {workdir} is not in {CONTEXT_DIR}")
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
        let dockerfile = dest.join(
            dockerfile
                .strip_prefix(CONTEXT_DIR)
                .ok_or_else(|| {
                    anyhow::anyhow!("--dockerfile {dockerfile} is not in {CONTEXT_DIR}")
                })?
                .trim_start_matches('/'),
        );
        let fails = step_failed
            || std::fs::read_to_string(&dockerfile)?.contains(FAIL_MARKER)
            || self.failing.lock().unwrap().contains(&service);

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
        pods.patch(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": annotations},
                "status": {
                    "phase": if fails { "Failed" } else { "Succeeded" },
                    "initContainerStatuses": init_statuses,
                    "containerStatuses": [{"name": "kaniko", "ready": false, "restartCount": 0,
                        "image": "x", "imageID": "", "state": kaniko_state}],
                },
            })),
        )
        .await?;
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
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        jobs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        self.seen.lock().unwrap().builds.push(Build {
            name: name.to_owned(),
            job,
            service,
            context: dest,
            destination,
            digest,
            steps,
            refused: None,
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

/// What differs between the tests' clusters.
#[derive(Clone, Debug)]
pub struct ClusterOpts<'a> {
    /// The namespace the receiver deploys to.
    pub namespace: &'a str,
    /// Extra lines of the receiver config's `[kubernetes]` table (each
    /// ending in a newline), e.g. `devbuilds_per_service = 2\n`.
    pub kubernetes_config: &'a str,
}

/// Emulator, registry, cluster, receiver and daemon for one test.
pub struct Setup<'a> {
    /// The git fixture (the demo example, usually).
    pub fx: &'a Fixture,
    /// The team registry the builds push to.
    pub registry: Registry,
    /// The played cluster.
    pub cluster: Cluster,
    /// The started daemon.
    pub devd: Devd<'a>,
    _rx: Receiver<'a>,
    _emu: KubeEmulator,
}

impl<'a> Setup<'a> {
    /// Start the emulator, a registry, the cluster, a receiver with the
    /// Kubernetes backend (contexts served over HTTP) and the daemon.
    pub fn start(fx: &'a Fixture, opts: &ClusterOpts<'_>) -> Self {
        Self::start_with(fx, opts, |_| ()).0
    }

    /// [`Self::start`], running `before_receiver` once the cluster runs
    /// and before the receiver starts (to watch objects from the start).
    pub fn start_with<T>(
        fx: &'a Fixture,
        opts: &ClusterOpts<'_>,
        before_receiver: impl FnOnce(&Cluster) -> T,
    ) -> (Self, T) {
        let emu = KubeEmulator::start(fx, opts.namespace);
        let registry = Registry::start(fx.root(), fx.logs());
        let cluster = Cluster::start(&emu, opts.namespace, &registry, fx.root());
        cluster
            .block_on(kube_ingress::install_default_ingress_class(&cluster.client))
            .expect("install the default IngressClass");
        let t = before_receiver(&cluster);
        let config = fx.root().join("receiver.toml");
        std::fs::write(
            &config,
            format!(
                "[build]\nbackend = \"kubernetes\"\nregistry = \"{}\"\ninsecure_registry = true\nconcurrency = 2\n\
                 [kubernetes]\nkubeconfig = \"{}\"\nfetcher_image = \"registry.invalid/devd/devd-receiver:test\"\n\
                 domain = \"{DOMAIN}\"\nactive_deadline_seconds = 120\n\
                 rollout_timeout_seconds = 60\npoll_interval_ms = 100\n{}",
                registry.addr(),
                emu.kubeconfig().display(),
                opts.kubernetes_config,
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
        let setup = Setup {
            fx,
            registry,
            cluster,
            devd,
            _rx: rx,
            _emu: emu,
        };
        (setup, t)
    }

    /// Wait until service `name` satisfies `pred`; returns it.
    #[track_caller]
    pub fn wait_service(&self, name: &str, what: &str, pred: impl Fn(&Service) -> bool) -> Service {
        let mut last = None;
        let found = crate::poll_until(TIMEOUT, || {
            let s = self.devd.status().service(name);
            let ok = s.as_ref().is_some_and(&pred);
            last = s;
            ok
        });
        if found.is_none() {
            self.fx.dump_logs();
            panic!(
                "service {name}: {what} not reached within {TIMEOUT:?}; last state: {last:#?}\nkubelet errors: {:#?}",
                self.cluster.errors.lock().unwrap()
            );
        }
        last.expect("service present")
    }

    /// Wait until every demo service is deployed; they are returned sorted.
    pub fn wait_all_deployed(&self) -> Vec<Service> {
        ["api", "greeter", "web"]
            .iter()
            .map(|n| self.wait_service(n, "deployed", |s| s.state == "deployed"))
            .collect()
    }
}

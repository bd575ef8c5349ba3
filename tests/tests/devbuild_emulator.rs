//! DevBuild resources (`kubectl get devbuilds`) against an emulator: PyPI's
//! kmock stands in for the API server (`tests/kmock/launcher.py`, which
//! serves the CRDs of manifests/crd/ as an install would) and Debian's
//! docker-registry for the team registry. No cluster runs, so the test
//! plays the controllers and kubelet:
//! - for each Job the receiver creates, it plays Kaniko: pushes an image to
//!   the Job's `--destination` (a real push, so a later reuse finds it) and
//!   reports its digest in the Kaniko container's `terminated.message`, or,
//!   for a service the test marked failing, reports Kaniko's error and
//!   marks the Job Failed;
//! - for each Deployment whose generation is ahead of its status, it
//!   reports the rollout done;
//! - it watches the DevBuilds, recording every phase each one went through.
//!
//! The receiver and the daemon are the real binaries on a real git fixture
//! (`examples/demo`); assertions are on the DevBuild objects in the
//! emulator, their phase history, the Jobs, the registry and `devd status`.

use devd_receiver::builder::devbuild::{DevBuild, Phase};
use devd_receiver::builder::kubernetes::KANIKO_CONTAINER;
use devd_tests::containers::Registry;
use devd_tests::kmock::KubeEmulator;
use devd_tests::{Devd, FAST_SYNC, Fixture, ReceiverOpts, Service};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "devd-builds";
const TIMEOUT: Duration = Duration::from_secs(120);
const KANIKO_ERROR: &str = "error building image: error building stage: failed to execute command: waiting for process to exit: exit status 1";

/// A Job the test's kubelet ran.
#[derive(Clone, Debug)]
struct JobRun {
    name: String,
    service: String,
    /// The pushed manifest digest (`None`: the build failed).
    digest: Option<String>,
}

#[derive(Default)]
struct Seen {
    jobs: Vec<JobRun>,
    /// Every DevBuild phase the watch saw, in order, per object name
    /// (`None`: the object as created, before its first status).
    phases: BTreeMap<String, Vec<Option<Phase>>>,
    watching: bool,
    errors: Vec<String>,
}

/// The cluster's controllers and kubelet, and a DevBuild watch, on a
/// runtime of their own.
struct Cluster {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    seen: Arc<Mutex<Seen>>,
    /// Services whose Kaniko builds fail.
    failing: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    fn start(emu: &KubeEmulator, registry: &Registry) -> Self {
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
        let cluster = Self {
            rt,
            client,
            seen: Default::default(),
            failing: Default::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let kubelet = Kubelet {
            client: cluster.client.clone(),
            seen: cluster.seen.clone(),
            failing: cluster.failing.clone(),
            registry: registry.addr(),
            jobs: HashSet::new(),
        };
        cluster.rt.spawn(kubelet.run(cluster.stop.clone()));
        cluster.rt.spawn(watch_devbuilds(
            cluster.client.clone(),
            cluster.seen.clone(),
        ));
        let watching = devd_tests::poll_until(Duration::from_secs(10), || {
            cluster.seen.lock().unwrap().watching
        });
        assert!(watching.is_some(), "the DevBuild watch did not start");
        cluster
    }

    fn jobs_of(&self, service: &str) -> Vec<JobRun> {
        let seen = self.seen.lock().unwrap();
        seen.jobs
            .iter()
            .filter(|j| j.service == service)
            .cloned()
            .collect()
    }

    fn job_count(&self) -> usize {
        self.seen.lock().unwrap().jobs.len()
    }

    /// The phases DevBuild `name` went through, repeats folded.
    fn phases(&self, name: &str) -> Vec<Option<Phase>> {
        let mut p = self
            .seen
            .lock()
            .unwrap()
            .phases
            .get(name)
            .cloned()
            .unwrap_or_default();
        p.dedup();
        p
    }

    #[track_caller]
    fn assert_no_errors(&self) {
        let errors = self.seen.lock().unwrap().errors.clone();
        assert!(errors.is_empty(), "the test's kubelet failed: {errors:#?}");
    }

    /// The DevBuilds of `service`, oldest first.
    fn devbuilds(&self, service: &str) -> Vec<DevBuild> {
        let api: Api<DevBuild> = Api::namespaced(self.client.clone(), NS);
        let mut all: Vec<DevBuild> = self
            .rt
            .block_on(api.list(&ListParams::default()))
            .expect("list DevBuilds")
            .items
            .into_iter()
            .filter(|b| b.spec.service == service)
            .collect();
        all.sort_by_key(|b| (b.metadata.creation_timestamp.clone(), b.spec.generation));
        all
    }

    /// Wait until the newest DevBuild of `service` satisfies `pred`.
    #[track_caller]
    fn wait_devbuild(
        &self,
        service: &str,
        what: &str,
        pred: impl Fn(&DevBuild) -> bool,
    ) -> DevBuild {
        let mut last = None;
        let found = devd_tests::poll_until(TIMEOUT, || {
            last = self.devbuilds(service).pop();
            last.as_ref().is_some_and(&pred)
        });
        assert!(
            found.is_some(),
            "DevBuild of {service}: {what} not reached within {TIMEOUT:?}; newest: {last:#?}"
        );
        last.unwrap()
    }

    fn image_of(&self, deployment: &str) -> String {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        let d = self.rt.block_on(api.get(deployment)).unwrap();
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

/// Record every phase of every DevBuild, as `kubectl get devbuilds -w`
/// would show them.
async fn watch_devbuilds(client: kube::Client, seen: Arc<Mutex<Seen>>) {
    let api: Api<DevBuild> = Api::namespaced(client, NS);
    loop {
        let stream = match api.watch(&WatchParams::default(), "0").await {
            Ok(s) => s,
            Err(e) => {
                seen.lock()
                    .unwrap()
                    .errors
                    .push(format!("watch DevBuilds: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        seen.lock().unwrap().watching = true;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(WatchEvent::Added(b) | WatchEvent::Modified(b)) = event {
                let phase = b.status.and_then(|s| s.phase);
                let name = b.metadata.name.unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .phases
                    .entry(name)
                    .or_default()
                    .push(phase);
            }
        }
    }
}

struct Kubelet {
    client: kube::Client,
    seen: Arc<Mutex<Seen>>,
    failing: Arc<Mutex<HashSet<String>>>,
    registry: String,
    jobs: HashSet<String>,
}

impl Kubelet {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.step().await {
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
                self.play_kaniko(&name, serde_json::to_value(&job)?).await?;
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        for d in deployments.list(&ListParams::default()).await?.items {
            let generation = d.metadata.generation.unwrap_or(1);
            let observed = d.status.as_ref().and_then(|s| s.observed_generation);
            if observed >= Some(generation) {
                continue;
            }
            let name = d.metadata.name.clone().unwrap_or_default();
            let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = json!({"status": {
                "observedGeneration": generation, "replicas": n, "updatedReplicas": n,
                "readyReplicas": n, "availableReplicas": n,
                "conditions": [{"type": "Available", "status": "True"},
                               {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
            }});
            deployments
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
        }
        Ok(())
    }

    /// Finish Job `name` as Kaniko would: push and report the digest, or
    /// fail with Kaniko's error when its service is marked failing.
    async fn play_kaniko(&self, name: &str, job: Value) -> anyhow::Result<()> {
        let service = job["metadata"]["labels"]["dev.devd/service"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kaniko = job["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == KANIKO_CONTAINER))
            .ok_or_else(|| anyhow::anyhow!("Job {name} has no {KANIKO_CONTAINER} container"))?;
        let destination = kaniko["args"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|a| a.as_str()?.strip_prefix("--destination="))
            .ok_or_else(|| anyhow::anyhow!("Job {name}: no --destination"))?
            .to_owned();
        let fails = self.failing.lock().unwrap().contains(&service);
        let digest = if fails {
            None
        } else {
            Some(self.push(&destination).await?)
        };
        let (exit, reason, message) = match &digest {
            Some(d) => (0, "Completed", d.clone()),
            None => (1, "Error", format!("{KANIKO_ERROR}\n")),
        };
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-k1"), "namespace": NS,
                         "labels": {"job-name": name},
                         "annotations": {"devd.test/log.kaniko": message}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": KANIKO_CONTAINER, "image": kaniko["image"]}]},
            "status": {"phase": if fails { "Failed" } else { "Succeeded" },
                       "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false,
                           "restartCount": 0, "image": "x", "imageID": "",
                           "state": {"terminated": {"exitCode": exit, "reason": reason,
                                                    "message": message}}}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        pods.create(&PostParams::default(), &pod).await?;
        let condition = if fails {
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}])
        } else {
            json!([{"type": "Complete", "status": "True"}])
        };
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), NS);
        jobs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": condition}})),
        )
        .await?;
        self.seen.lock().unwrap().jobs.push(JobRun {
            name: name.to_owned(),
            service,
            digest,
        });
        Ok(())
    }

    /// Push a one-layer image whose content is `destination` itself (one
    /// image per context digest); its manifest digest.
    async fn push(&self, destination: &str) -> anyhow::Result<String> {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.registry.clone()]),
            ..Default::default()
        });
        let reference: oci_client::Reference = destination.parse()?;
        let auth = oci_client::secrets::RegistryAuth::Anonymous;
        let layer = ImageLayer::oci_v1(destination.as_bytes().to_vec(), None);
        let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
        client
            .push(&reference, &[layer], config, &auth, None)
            .await?;
        Ok(client.fetch_manifest_digest(&reference, &auth).await?)
    }
}

struct Setup<'a> {
    fx: &'a Fixture,
    registry: Registry,
    cluster: Cluster,
    devd: Devd<'a>,
    _rx: devd_tests::Receiver<'a>,
    _emu: KubeEmulator,
}

/// Emulator, registry, kubelet, a receiver keeping `keep` DevBuilds per
/// service, and the daemon on the demo example.
fn start(fx: &Fixture, keep: usize) -> Setup<'_> {
    let emu = KubeEmulator::start(fx, NS);
    let registry = Registry::start(fx.root(), fx.logs());
    let cluster = Cluster::start(&emu, &registry);
    let config = fx.root().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nbackend = \"kubernetes\"\nregistry = \"{}\"\ninsecure_registry = true\nconcurrency = 2\n\
             [kubernetes]\nkubeconfig = \"{}\"\nfetcher_image = \"registry.invalid/devd/devd-receiver:test\"\n\
             domain = \"devd.test\"\nactive_deadline_seconds = 120\nrollout_timeout_seconds = 60\npoll_interval_ms = 100\n\
             devbuilds_per_service = {keep}\n",
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
    #[track_caller]
    fn wait_service(&self, name: &str, what: &str, pred: impl Fn(&Service) -> bool) -> Service {
        self.devd.wait_service(name, what, TIMEOUT, pred)
    }

    fn wait_all_deployed(&self) -> Vec<Service> {
        ["api", "greeter", "web"]
            .iter()
            .map(|n| self.wait_service(n, "deployed", |s| s.state == "deployed"))
            .collect()
    }

    /// Edit web's page and wait until the edit runs.
    fn redeploy_web(&self, text: &str) -> Service {
        let before = self.devd.status().service("web").and_then(|s| s.image);
        self.fx.write("services/web/www/index.html", text);
        self.wait_service("web", "redeployed", |s| {
            s.state == "deployed" && s.image != before
        })
    }
}

fn original_web_page() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/services/web/www/index.html"),
    )
    .unwrap()
}

#[test]
fn emulator_devbuilds_go_pending_running_then_succeeded_failed_or_reused() {
    let fx = Fixture::from_example("demo");
    let st = start(&fx, 20);
    let reg = st.registry.addr();
    let all = st.wait_all_deployed();
    use Phase::*;

    // One DevBuild per build, created on queue, then Running, then
    // Succeeded with the digest the build reported.
    for s in &all {
        let b = st
            .cluster
            .wait_devbuild(&s.name, "Succeeded", |b| phase(b) == Some(Succeeded));
        assert_eq!(
            st.cluster.devbuilds(&s.name).len(),
            1,
            "one build of {}",
            s.name
        );
        let [job] = &st.cluster.jobs_of(&s.name)[..] else {
            panic!("one Job for {}", s.name)
        };
        let name = b.metadata.name.clone().unwrap();
        assert_eq!(b.spec.workspace, "default");
        assert_eq!(b.spec.repository, format!("{reg}/demo/{}", s.name));
        assert!(b.spec.generation >= 1);
        let labels = b.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["dev.devd/service"], s.name);
        assert_eq!(labels["app.kubernetes.io/managed-by"], "devd");
        let status = b.status.clone().unwrap();
        assert_eq!(status.digest, job.digest, "{name}");
        assert_eq!(status.image, s.image, "the image devd deployed");
        assert_eq!(
            status.image.as_deref(),
            Some(&*st.cluster.image_of(&s.name))
        );
        assert_eq!(status.job_name.as_deref(), Some(job.name.as_str()));
        let context = status.context.clone().unwrap();
        assert_eq!(context.len(), 64, "{context}");
        assert_eq!(
            status.tag.as_deref(),
            Some(&*devd_receiver::context::tag_for(&context))
        );
        assert_eq!(status.built_generation, Some(s.generation), "{name}");
        let (start, end) = (status.start_time.unwrap(), status.completion_time.unwrap());
        let ts = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
        assert!(ts(&start) <= ts(&end), "{start} .. {end}");
        assert_eq!(status.duration_ms, s.last_build_ms, "{name}");
        assert!(status.error.is_none());
        assert_eq!(
            st.cluster.phases(&name),
            [None, Some(Pending), Some(Running), Some(Succeeded)],
            "{name}"
        );
    }
    st.cluster.assert_no_errors();

    // A failing Kaniko Job: the DevBuild ends Failed with the error.
    let web0 = all[2].clone();
    st.cluster.failing.lock().unwrap().insert("web".into());
    st.fx
        .write("services/web/www/index.html", "<h1>web v2</h1>\n");
    let failed = st.wait_service("web", "failed", |s| s.state == "failed");
    let b = st
        .cluster
        .wait_devbuild("web", "Failed", |b| phase(b) == Some(Failed));
    let jobs = st.cluster.jobs_of("web");
    assert_eq!(jobs.len(), 2);
    assert!(jobs[1].digest.is_none());
    let status = b.status.clone().unwrap();
    let error = status.error.clone().unwrap();
    assert_eq!(Some(&error), failed.error.as_ref());
    assert!(
        error.contains("Kaniko failed") && error.contains("exit status 1"),
        "{error}"
    );
    assert_eq!(status.job_name.as_deref(), Some(jobs[1].name.as_str()));
    assert!(
        status.image.is_none() && status.digest.is_none(),
        "{status:?}"
    );
    assert_eq!(
        st.cluster.phases(b.metadata.name.as_deref().unwrap()),
        [None, Some(Pending), Some(Running), Some(Failed)]
    );
    assert_eq!(st.cluster.devbuilds("web").len(), 2);

    // Back to the first page: its image exists, no Job runs, the DevBuild
    // says Reused with that image.
    st.cluster.failing.lock().unwrap().clear();
    let jobs_before = st.cluster.job_count();
    st.fx
        .write("services/web/www/index.html", original_web_page());
    let web2 = st.wait_service("web", "deployed again", |s| s.state == "deployed");
    assert_eq!(web2.image, web0.image);
    assert!(web2.reused, "{web2:?}");
    let b = st
        .cluster
        .wait_devbuild("web", "Reused", |b| phase(b) == Some(Reused));
    let status = b.status.clone().unwrap();
    assert_eq!(status.image, web0.image);
    assert_eq!(status.digest, web0.digest);
    assert!(status.job_name.is_none(), "no Job for a reuse: {status:?}");
    assert!(status.completion_time.is_some() && status.duration_ms.is_some());
    assert_eq!(st.cluster.job_count(), jobs_before, "a reuse runs no Job");
    assert_eq!(
        st.cluster.phases(b.metadata.name.as_deref().unwrap()),
        [None, Some(Pending), Some(Running), Some(Reused)]
    );
    let phases: Vec<_> = st.cluster.devbuilds("web").iter().map(phase).collect();
    assert_eq!(phases, [Some(Succeeded), Some(Failed), Some(Reused)]);
    // Other services' DevBuilds were left alone.
    assert_eq!(st.cluster.devbuilds("api").len(), 1);
    st.cluster.assert_no_errors();
}

#[test]
fn emulator_devbuild_garbage_collection_keeps_exactly_n_per_service() {
    const KEEP: usize = 2;
    let fx = Fixture::from_example("demo");
    let st = start(&fx, KEEP);
    st.wait_all_deployed();
    st.cluster
        .wait_devbuild("web", "Succeeded", |b| phase(b) == Some(Phase::Succeeded));
    for v in 2..=5 {
        st.redeploy_web(&format!("<h1>web v{v}</h1>\n"));
        st.cluster.wait_devbuild("web", "Succeeded", |b| {
            phase(b) == Some(Phase::Succeeded)
                && b.status.as_ref().unwrap().job_name
                    == st.cluster.jobs_of("web").last().map(|j| j.name.clone())
        });
    }
    st.cluster.assert_no_errors();
    let jobs = st.cluster.jobs_of("web");
    assert_eq!(jobs.len(), 5, "five builds of web");
    // Exactly KEEP remain, and they are the newest builds.
    let kept = st.cluster.devbuilds("web");
    let kept_jobs: Vec<String> = kept
        .iter()
        .map(|b| b.status.clone().unwrap().job_name.unwrap())
        .collect();
    let newest: Vec<String> = jobs[jobs.len() - KEEP..]
        .iter()
        .map(|j| j.name.clone())
        .collect();
    assert_eq!(kept_jobs, newest);
    assert!(kept[0].spec.generation < kept[1].spec.generation);
    // The watch saw the older ones come and go.
    let seen = st.cluster.seen.lock().unwrap().phases.len();
    assert!(seen >= 5 + 2, "{seen} DevBuilds were ever seen");
    // The other services keep theirs.
    for s in ["api", "greeter"] {
        assert_eq!(st.cluster.devbuilds(s).len(), 1, "{s}");
    }
}

fn phase(b: &DevBuild) -> Option<Phase> {
    b.status.as_ref().and_then(|s| s.phase)
}

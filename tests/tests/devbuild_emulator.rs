//! DevBuild resources (`kubectl get devbuilds`) against an emulator: PyPI's
//! kmock stands in for the API server (`tests/kmock/launcher.py`, which
//! serves the CRDs of manifests/crd/ as an install would) and Debian's
//! docker-registry for the team registry. No cluster runs, so the test
//! plays the controllers and kubelet (`devd_tests::kube_cluster`):
//! - for each Job the receiver creates, it fetches the context for real and
//!   plays Kaniko: pushes an image to the Job's `--destination` (a real
//!   push, so a later reuse finds it) and reports its digest in the Kaniko
//!   container's `terminated.message`, or, for a service the test marked
//!   failing, reports Kaniko's error and marks the Job Failed;
//! - for each Deployment whose generation is ahead of its status, it
//!   reports the rollout done;
//! - it watches the DevBuilds, recording every phase each one went through.
//!
//! The receiver and the daemon are the real binaries on a real git fixture
//! (`examples/demo`); assertions are on the DevBuild objects in the
//! emulator, their phase history, the Jobs, the registry and `devd status`.

use devd_receiver::build::backend::devbuild::{DevBuild, Phase};
use devd_tests::kube_cluster::{self, Build, ClusterOpts, Errors, TIMEOUT};
use devd_tests::{Fixture, Service};
use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "devd-builds";

#[derive(Default)]
struct Phases {
    /// Every DevBuild phase the watch saw, in order, per object name
    /// (`None`: the object as created, before its first status).
    phases: BTreeMap<String, Vec<Option<Phase>>>,
    watching: bool,
}

/// The played cluster (`devd_tests::kube_cluster`) with a DevBuild watch
/// started before the receiver.
struct Setup<'a> {
    st: kube_cluster::Setup<'a>,
    seen: Arc<Mutex<Phases>>,
}

impl<'a> Deref for Setup<'a> {
    type Target = kube_cluster::Setup<'a>;
    fn deref(&self) -> &Self::Target {
        &self.st
    }
}

/// Emulator, registry, kubelet, a DevBuild watch, a receiver keeping `keep`
/// DevBuilds per service, and the daemon on the demo example.
fn start(fx: &Fixture, keep: usize) -> Setup<'_> {
    let (st, seen) = kube_cluster::Setup::start_with(
        fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: &format!("devbuilds_per_service = {keep}\n"),
        },
        |cluster| {
            let seen = Arc::new(Mutex::new(Phases::default()));
            cluster.spawn(watch_devbuilds(
                cluster.client(),
                seen.clone(),
                cluster.errors(),
            ));
            let watching =
                devd_tests::poll_until(Duration::from_secs(10), || seen.lock().unwrap().watching);
            assert!(watching.is_some(), "the DevBuild watch did not start");
            seen
        },
    );
    Setup { st, seen }
}

/// Record every phase of every DevBuild, as `kubectl get devbuilds -w`
/// would show them.
async fn watch_devbuilds(client: kube::Client, seen: Arc<Mutex<Phases>>, errors: Errors) {
    let api: Api<DevBuild> = Api::namespaced(client, NS);
    loop {
        let stream = match api.watch(&WatchParams::default(), "0").await {
            Ok(s) => s,
            Err(e) => {
                errors.lock().unwrap().push(format!("watch DevBuilds: {e}"));
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

impl Setup<'_> {
    fn jobs_of(&self, service: &str) -> Vec<Build> {
        self.cluster.builds_of(service)
    }

    fn job_count(&self) -> usize {
        self.cluster.builds().len()
    }

    /// The phases DevBuild `name` went through, repeats folded.
    /// [`Self::phases`] once it ends in `last` (the recorder follows a
    /// watch, which can deliver the last change after a GET has seen it),
    /// or as it stands after 10 s.
    fn phases_ending(&self, name: &str, last: Phase) -> Vec<Option<Phase>> {
        let t = std::time::Instant::now();
        loop {
            let p = self.phases(name);
            if p.last() == Some(&Some(last)) || t.elapsed() > std::time::Duration::from_secs(10) {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

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

    /// The DevBuilds of `service`, oldest first.
    fn devbuilds(&self, service: &str) -> Vec<DevBuild> {
        let mut all: Vec<DevBuild> = self
            .cluster
            .block_on(self.cluster.api::<DevBuild>().list(&ListParams::default()))
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
        let b = st.wait_devbuild(&s.name, "Succeeded", |b| phase(b) == Some(Succeeded));
        assert_eq!(st.devbuilds(&s.name).len(), 1, "one build of {}", s.name);
        let [job] = &st.jobs_of(&s.name)[..] else {
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
            Some(&*devd_receiver::build::context::tag_for(&context))
        );
        assert_eq!(status.built_generation, Some(s.generation), "{name}");
        let (start, end) = (status.start_time.unwrap(), status.completion_time.unwrap());
        let ts = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
        assert!(ts(&start) <= ts(&end), "{start} .. {end}");
        assert_eq!(status.duration_ms, s.last_build_ms, "{name}");
        assert!(status.error.is_none());
        assert_eq!(
            st.phases_ending(&name, Succeeded),
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
    let b = st.wait_devbuild("web", "Failed", |b| phase(b) == Some(Failed));
    let jobs = st.jobs_of("web");
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
        st.phases_ending(b.metadata.name.as_deref().unwrap(), Failed),
        [None, Some(Pending), Some(Running), Some(Failed)]
    );
    assert_eq!(st.devbuilds("web").len(), 2);

    // Back to the first page: its image exists, no Job runs, the DevBuild
    // says Reused with that image.
    st.cluster.failing.lock().unwrap().clear();
    let jobs_before = st.job_count();
    st.fx
        .write("services/web/www/index.html", original_web_page());
    let web2 = st.wait_service("web", "deployed again", |s| s.state == "deployed");
    assert_eq!(web2.image, web0.image);
    assert!(web2.reused, "{web2:?}");
    let b = st.wait_devbuild("web", "Reused", |b| phase(b) == Some(Reused));
    let status = b.status.clone().unwrap();
    assert_eq!(status.image, web0.image);
    assert_eq!(status.digest, web0.digest);
    assert!(status.job_name.is_none(), "no Job for a reuse: {status:?}");
    assert!(status.completion_time.is_some() && status.duration_ms.is_some());
    assert_eq!(st.job_count(), jobs_before, "a reuse runs no Job");
    assert_eq!(
        st.phases_ending(b.metadata.name.as_deref().unwrap(), Reused),
        [None, Some(Pending), Some(Running), Some(Reused)]
    );
    let phases: Vec<_> = st.devbuilds("web").iter().map(phase).collect();
    assert_eq!(phases, [Some(Succeeded), Some(Failed), Some(Reused)]);
    // Other services' DevBuilds were left alone.
    assert_eq!(st.devbuilds("api").len(), 1);
    st.cluster.assert_no_errors();
}

#[test]
fn emulator_devbuild_garbage_collection_keeps_exactly_n_per_service() {
    const KEEP: usize = 2;
    let fx = Fixture::from_example("demo");
    let st = start(&fx, KEEP);
    st.wait_all_deployed();
    st.wait_devbuild("web", "Succeeded", |b| phase(b) == Some(Phase::Succeeded));
    for v in 2..=5 {
        st.redeploy_web(&format!("<h1>web v{v}</h1>\n"));
        st.wait_devbuild("web", "Succeeded", |b| {
            phase(b) == Some(Phase::Succeeded)
                && b.status.as_ref().unwrap().job_name
                    == st.jobs_of("web").last().map(|j| j.name.clone())
        });
    }
    st.cluster.assert_no_errors();
    let jobs = st.jobs_of("web");
    assert_eq!(jobs.len(), 5, "five builds of web");
    // Exactly KEEP remain, and they are the newest builds.
    let kept = st.devbuilds("web");
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
    let seen = st.seen.lock().unwrap().phases.len();
    assert!(seen >= 5 + 2, "{seen} DevBuilds were ever seen");
    // The other services keep theirs.
    for s in ["api", "greeter"] {
        assert_eq!(st.devbuilds(s).len(), 1, "{s}");
    }
}

fn phase(b: &DevBuild) -> Option<Phase> {
    b.status.as_ref().and_then(|s| s.phase)
}

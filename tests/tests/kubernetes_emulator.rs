//! The Kubernetes backend's whole flow against an emulator: PyPI's kmock
//! stands in for the API server (`tests/kmock/launcher.py`) and Debian's
//! docker-registry for the team registry. No cluster runs, so the test
//! plays the cluster's controllers and kubelet (`devd_tests::kube_cluster`):
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
//! - for each Deployment whose generation is ahead of its status, it plays
//!   the Deployment and ReplicaSet controllers (pods owned by a
//!   ReplicaSet, or `ReplicaFailure` when admission refuses one), and an
//!   ingress controller takes Ingresses of the default IngressClass;
//! - the emulator applies label and field selectors and plays admission
//!   (Pod Security by the namespace's label, ResourceQuota).
//!
//! The receiver (`devd-receiver serve --http-listen`) and the daemon are the
//! real binaries on a real git fixture (`examples/demo`); assertions are on
//! the Job specs, the fetched contexts, the objects in the emulator, the
//! registry, and what `devd status --json` reports.

use devd_tests::Fixture;
use devd_tests::containers::http_get;
use devd_tests::kube_cluster::{
    ClusterOpts, DOMAIN, FAIL_MARKER, KANIKO_ERROR, Setup, after, strings,
};
use devd_tests::kube_ingress::{DEFAULT_INGRESS_CLASS, INGRESS_ADDRESS};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Service as KubeService};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::path::Path;

const NS: &str = "devd-e2e";

/// Emulator, registry, cluster roles, receiver and daemon for one test.
fn start(fx: &Fixture) -> Setup<'_> {
    Setup::start(
        fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "registry_secret = \"devd-registry\"\n",
        },
    )
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
        let [b] = &st.cluster.builds_of(&s.name)[..] else {
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
        assert!(args.contains(&"--context=dir:///kaniko/buildcontext/context".to_owned()));
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
    let ctx = |svc: &str, rel: &str| {
        std::fs::read_to_string(st.cluster.builds_of(svc)[0].context.join(rel))
    };
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
        &st.cluster.builds_of("greeter")[0].job["spec"]["template"]["spec"]["containers"][0]["args"],
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
        .block_on(st.cluster.api::<Ingress>().get("web"))
        .unwrap();
    let spec = ingress.spec.unwrap();
    assert_eq!(
        spec.rules.unwrap()[0].host.as_deref(),
        Some(&*format!("web.{NS}.{DOMAIN}"))
    );
    assert_eq!(
        spec.ingress_class_name.as_deref(),
        Some(DEFAULT_INGRESS_CLASS),
        "the API server's admission gave the class-less Ingress the default class"
    );
    let host = format!("web.{NS}.{DOMAIN}");
    assert!(
        st.cluster.ingress().requests().contains(&host),
        "the URL was asked through the ingress controller before it was announced: {:?}",
        st.cluster.ingress().requests()
    );
    for name in ["api", "greeter", "web"] {
        let svc = st
            .cluster
            .block_on(st.cluster.api::<KubeService>().get(name))
            .unwrap_or_else(|e| panic!("Service {name}: {e}"));
        assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);
    }
    assert!(
        st.cluster
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
    let b = &st.cluster.builds_of("web")[1];
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
    assert_eq!(st.cluster.builds_of("web").len(), 2);
    assert!(st.cluster.builds_of("web")[1].digest.is_none());
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
    let builds = st.cluster.builds_of("web");
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
    let api_init =
        &st.cluster.builds_of("api")[0].job["spec"]["template"]["spec"]["initContainers"];
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
    let builds = st.cluster.builds_of("web");
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

/// A namespace with Pod Security `restricted` (OpenShift's `restricted-v2`
/// is as strict): the Job controller cannot create Kaniko's pod (it runs as
/// root), and the build fails at once with the admission message instead of
/// waiting for activeDeadlineSeconds. Under `baseline` the build runs; then a
/// ResourceQuota on requests.memory refuses the new app pod (devd's
/// Deployment sets no requests): the rollout fails at once on the
/// Deployment's `ReplicaFailure` with the quota's message, blames no build
/// pod, and the previous image is applied back. `devd logs` reads the app's
/// own pod (through its ReplicaSet), never a build pod.
#[test]
fn emulator_admission_refusals_fail_builds_and_rollouts_at_once_with_their_reason() {
    let fx = Fixture::from_example("demo");
    let (st, ()) = Setup::start_with(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "registry_secret = \"devd-registry\"\n",
        },
        |c| {
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
            }))
            .unwrap();
            c.block_on(Api::<Namespace>::all(c.client()).create(&PostParams::default(), &ns))
                .unwrap();
        },
    );
    let failed = st.wait_service("web", "failed", |s| s.state == "failed");
    st.cluster.assert_no_errors();
    let error = failed.error.clone().unwrap();
    for want in [
        "was refused",
        "violates PodSecurity \"restricted:latest\"",
        "runAsNonRoot != true",
        "baseline",
    ] {
        assert!(error.contains(want), "{want}: {error}");
    }
    assert!(
        !error.contains("activeDeadlineSeconds") && !error.contains("no pod was started"),
        "{error}"
    );
    let refused = st.cluster.builds_of("web");
    assert!(refused[0].refused.is_some() && refused[0].digest.is_none());
    let job = &refused[0].name;
    assert!(
        st.cluster
            .block_on(st.cluster.api::<Job>().get_opt(job))
            .unwrap()
            .is_none(),
        "the refused Job is deleted"
    );

    // baseline: Kaniko runs.
    st.cluster
        .block_on(Api::<Namespace>::all(st.cluster.client()).patch(
            NS,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "baseline"}}})),
        ))
        .unwrap();
    fx.write("services/web/www/index.html", "<h1>web v2</h1>\n");
    let web = st.wait_service("web", "deployed", |s| s.state == "deployed");
    st.cluster.assert_no_errors();
    let image = web.image.clone().unwrap();
    assert_eq!(st.cluster.image_of("web"), image);
    // Its logs are its own pod's, not a build pod's.
    let log = st.devd.run(&["logs", "web"]);
    log.assert_success();
    assert!(
        log.stdout.contains("log of web in web-"),
        "the app pod's log:\n{}\n{}",
        log.stdout,
        log.stderr
    );

    // A quota on requests.memory: the build pod specifies its requests, the
    // app's new pod does not, so the ReplicaSet controller cannot create it.
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "compute"}, "spec": {"hard": {"requests.memory": "64Gi"}},
    }))
    .unwrap();
    st.cluster
        .block_on(
            st.cluster
                .api::<ResourceQuota>()
                .create(&PostParams::default(), &quota),
        )
        .unwrap();
    fx.write("services/web/www/index.html", "<h1>web v3</h1>\n");
    let failed = st.wait_service("web", "rollout failed", |s| {
        s.state == "failed" && s.error.as_deref().is_some_and(|e| e.contains("rollout"))
    });
    st.cluster.assert_no_errors();
    let error = failed.error.clone().unwrap();
    for want in [
        "ReplicaFailure: FailedCreate",
        "failed quota: compute: must specify requests.memory",
    ] {
        assert!(error.contains(want), "{want}: {error}");
    }
    assert!(
        !error.contains("kaniko") && !error.contains("devd-web-"),
        "no build pod is blamed: {error}"
    );
    let last_build = st.cluster.builds_of("web").last().cloned().unwrap();
    assert!(last_build.digest.is_some(), "the build itself ran");
    assert_eq!(
        st.cluster.refused_rollouts().len(),
        1,
        "{:?}",
        st.cluster.refused_rollouts()
    );
    assert_eq!(
        st.cluster.image_of("web"),
        image,
        "the previous image is applied back"
    );
}

/// An external service's URL is announced only once an ingress controller
/// took its Ingress and the URL answers through it: without
/// `ingress_class` and without a default IngressClass the API server gives
/// the Ingress no class, no controller takes it (ingress-nginx 1.0 and
/// later), and the deploy fails at once saying what to set; once a class
/// is marked default, the next save makes the Ingress anew, admission gives
/// it that class, and it is taken. A controller answering 503 (no ready
/// pod behind it) fails the deploy until it answers.
#[test]
fn emulator_an_ingress_no_controller_takes_fails_the_deploy_with_what_to_set() {
    let fx = Fixture::from_example("demo");
    let (st, ()) = Setup::start_with(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "registry_secret = \"devd-registry\"\ningress_wait_seconds = 3\n",
        },
        |c| {
            let classes: Api<IngressClass> = Api::all(c.client());
            c.block_on(classes.delete(DEFAULT_INGRESS_CLASS, &DeleteParams::default()))
                .unwrap();
        },
    );
    let failed = st.wait_service("web", "failed", |s| s.state == "failed");
    let error = failed.error.clone().unwrap();
    for want in [
        "Ingress web has no ingressClassName",
        "no default IngressClass",
        "ingress_class",
        "is-default-class",
    ] {
        assert!(error.contains(want), "{want}: {error}");
    }
    // The internal services need no Ingress.
    st.wait_service("api", "deployed", |s| s.state == "deployed");
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "traefik",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "traefik.io/ingress-controller"},
    }))
    .unwrap();
    st.cluster
        .block_on(
            Api::<IngressClass>::all(st.cluster.client()).create(&PostParams::default(), &class),
        )
        .unwrap();
    let host = format!("web.{NS}.{DOMAIN}");
    st.cluster.ingress().answer(&host, 503);
    fx.write("services/web/www/index.html", "<h1>web v2</h1>\n");
    let failed = st.wait_service("web", "failed on 503", |s| {
        s.state == "failed" && s.error.as_deref().is_some_and(|e| e.contains("503"))
    });
    assert!(
        failed.error.as_deref().unwrap().contains("did not answer"),
        "{:?}",
        failed.error
    );
    st.cluster.ingress().answer(&host, 200);
    fx.write("services/web/www/index.html", "<h1>web v3</h1>\n");
    let web = st.wait_service("web", "deployed", |s| s.state == "deployed");
    st.cluster.assert_no_errors();
    assert_eq!(
        web.url.as_deref(),
        Some(&*format!("http://web.{NS}.{DOMAIN}"))
    );
    let ingress = st
        .cluster
        .block_on(st.cluster.api::<Ingress>().get("web"))
        .unwrap();
    assert_eq!(
        ingress.spec.as_ref().unwrap().ingress_class_name.as_deref(),
        Some("traefik"),
        "made anew, so admission gave it the new default class"
    );
    assert_eq!(
        ingress
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some(INGRESS_ADDRESS)
    );
}

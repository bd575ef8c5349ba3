//! Request shapes, against kube's tower-test mock: no API server runs; each
//! test answers the backend's requests itself, in order, and asserts their
//! method, path, query and body.

use super::*;
use crate::build::context::ContextSnapshot;
use devd_sync::catalog::Catalog;
use http::Method;
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};
use std::time::Duration;

const DIGEST: &str = "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

type Mock = crate::api_mock::ApiMock;

pub(super) struct Setup {
    pub(super) backend: Arc<KubernetesBackend>,
    shelf: Arc<ContextShelf>,
    pub(super) dir: tempfile::TempDir,
}

pub(super) fn setup(adjust: impl FnOnce(&mut Settings)) -> (Setup, Mock) {
    let (client, mock) = Mock::pair();
    let dir = tempfile::tempdir().unwrap();
    let shelf = ContextShelf::new(&dir.path().join("shelf")).unwrap();
    let mut s = Settings::new(
        "dev",
        "r.example.com:5000",
        "r.example.com:5000/devd/devd-receiver:0.1.0",
        "http://devd-receiver.dev.svc:8080/",
    );
    s.poll_interval = Duration::from_millis(5);
    adjust(&mut s);
    let backend = Arc::new(KubernetesBackend::new(client, s, shelf.clone()).unwrap());
    (
        Setup {
            backend,
            shelf,
            dir,
        },
        mock,
    )
}

/// Run `call` (the backend method under test) while `script` plays the API
/// server: it takes each request the call makes, in order, asserts on it and
/// answers it. Returns what the call returned. Both run on the test's own
/// task, so the call may borrow the test's values.
pub(super) async fn scripted<T>(
    api: &mut Mock,
    call: impl Future<Output = T>,
    script: impl AsyncFnOnce(&mut Mock),
) -> T {
    let (out, ()) = tokio::join!(call, script(api));
    out
}

fn service(toml: &str) -> Service {
    Catalog::parse(toml).unwrap().services.remove(0)
}

fn greeter() -> Service {
    service(
        "[services.greeter]\ncontext = \"services/greeter\"\ninputs = [\"shared\"]\nimage = \"demo/greeter\"\nport = 8080\n[services.greeter.build_args]\nSTYLE = \"plain\"\n",
    )
}

fn request(st: &Setup) -> BuildRequest {
    let ctx = st.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("www")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY www /www\n").unwrap();
    std::fs::write(ctx.join("www/index.html"), "hi\n").unwrap();
    let digest = "c0ffee".repeat(11)[..64].to_owned();
    BuildRequest {
        workspace: "alice".into(),
        service: greeter(),
        generation: 7,
        context: ContextSnapshot {
            dir: ctx,
            digest: digest.clone(),
            dockerfile: "Dockerfile".into(),
            files: 2,
            bytes: 30,
        },
        repository: "r.example.com:5000/demo/greeter".into(),
        tag: crate::build::context::tag_for(&digest),
        log: st.dir.path().join("build.log"),
    }
}

fn pod(job: &str, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job}-x7k2p"), "namespace": "dev",
                     "labels": {"job-name": job}},
        "status": status,
    })
}

fn pods(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

fn job_with(spec: &Value, status: Value) -> Value {
    let mut j = spec.clone();
    j["status"] = status;
    j
}

#[tokio::test]
async fn build_request_shape_job_spec_and_digest() {
    let (st, mut api) = setup(|s| {
        s.registry_secret = Some("regcred".into());
        s.insecure_registry = true;
        s.kaniko_args = vec!["--cache=true".into()];
        s.active_deadline_seconds = 120;
        s.ttl_seconds_after_finished = 30;
        s.resources.memory_limit = "3Gi".into();
        s.service_account = Some("builder".into());
        s.image_pull_secrets = vec!["regcred".into()];
    });
    let req = request(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        create.expect(Method::POST, "/apis/batch/v1/namespaces/dev/jobs", &[]);
        let j = create.body.clone();
        assert_eq!(j["apiVersion"], "batch/v1");
        assert_eq!(j["kind"], "Job");
        assert_eq!(j["metadata"]["name"], name);
        let labels = &j["metadata"]["labels"];
        assert_eq!(labels[LABEL_MANAGED_BY], "devd");
        assert_eq!(labels[LABEL_SERVICE], "greeter");
        assert_eq!(labels[LABEL_WORKSPACE], "alice");
        assert_eq!(labels[LABEL_CONTEXT], &req.context.digest[..40]);
        assert_eq!(
            j["metadata"]["annotations"][ANNOTATION_CONTEXT],
            req.context.digest
        );
        let spec = &j["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 120);
        assert_eq!(spec["ttlSecondsAfterFinished"], 30);
        let pod_spec = &spec["template"]["spec"];
        // The build pod is not one of greeter's pods: it lacks the label
        // greeter's Deployment selects on, and says what it builds instead.
        let pod_labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(
            *pod_labels,
            json!({LABEL_MANAGED_BY: "devd", LABEL_WORKSPACE: "alice",
                   LABEL_BUILD_OF: "greeter", LABEL_CONTEXT: &req.context.digest[..40],
                   "sidecar.istio.io/inject": "false"})
        );
        assert!(pod_labels.get(LABEL_SERVICE).is_none());
        // Istio's sidecar would keep the Job from completing.
        assert_eq!(
            spec["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"],
            "false"
        );
        assert_eq!(
            pod_spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        // The fetcher image (and the app images) from a private registry.
        assert_eq!(pod_spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(pod_spec["restartPolicy"], "Never");
        assert_eq!(pod_spec["automountServiceAccountToken"], false);
        assert_eq!(pod_spec["serviceAccountName"], "builder");
        assert_eq!(
            pod_spec["volumes"],
            json!([
                {"name": "workspace", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "docker-config", "secret": {"secretName": "regcred",
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            ])
        );
        // The init container fetches the offered context.
        let init = &pod_spec["initContainers"][0];
        assert_eq!(init["name"], FETCH_CONTAINER);
        assert_eq!(init["image"], "r.example.com:5000/devd/devd-receiver:0.1.0");
        let cmd: Vec<&str> = init["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            &cmd[..4],
            ["devd-receiver", "fetch-context", "--url", cmd[3]]
        );
        let url = cmd[3];
        assert!(
            url.starts_with("http://devd-receiver.dev.svc:8080/contexts/")
                && url.ends_with(".tar.zst"),
            "{url}"
        );
        // A subdirectory of the emptyDir (which fetch-context makes 0755),
        // under /kaniko/buildcontext as Skaffold mounts it: not /workspace,
        // which Kaniko would not snapshot for a `WORKDIR /workspace`.
        assert_eq!(&cmd[4..6], ["--dest", "/kaniko/buildcontext/context"]);
        assert_eq!(cmd[6], "--blake3");
        assert_eq!(
            st.shelf.len(),
            1,
            "the context is offered while the Job runs"
        );
        let archive = std::fs::read_dir(st.dir.path().join("shelf"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(url.ends_with(archive.file_name().unwrap().to_str().unwrap()));
        assert_eq!(
            blake3::hash(&std::fs::read(&archive).unwrap())
                .to_hex()
                .as_str(),
            cmd[7],
            "--blake3 is the digest of the offered archive"
        );
        assert_eq!(init["securityContext"]["runAsNonRoot"], true);
        assert_eq!(init["securityContext"]["runAsUser"], FETCH_UID);
        assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            init["volumeMounts"],
            json!([{"name": "workspace", "mountPath": "/kaniko/buildcontext"}])
        );
        // Kaniko.
        let k = &pod_spec["containers"][0];
        assert_eq!(k["name"], KANIKO_CONTAINER);
        assert_eq!(k["image"], DEFAULT_KANIKO_IMAGE);
        assert_eq!(
            k["args"],
            json!([
                "--dockerfile=/kaniko/buildcontext/context/Dockerfile",
                "--context=dir:///kaniko/buildcontext/context",
                format!("--destination=r.example.com:5000/demo/greeter:{}", req.tag),
                "--digest-file=/dev/termination-log",
                "--build-arg=STYLE=plain",
                "--insecure",
                "--skip-tls-verify",
                "--cache=true",
            ])
        );
        assert_eq!(k["terminationMessagePolicy"], "FallbackToLogsOnError");
        // COPY gives files to root, as docker build does, not to the
        // fetcher's uid that unpacked them.
        assert_eq!(
            k["env"],
            json!([{"name": "FF_KANIKO_COPY_AS_ROOT", "value": "true"}])
        );
        assert_eq!(
            k["resources"],
            json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                   "limits": {"cpu": "2", "memory": "3Gi"}})
        );
        assert_eq!(
            k["volumeMounts"],
            json!([
                {"name": "workspace", "mountPath": "/kaniko/buildcontext"},
                {"name": "docker-config", "mountPath": "/kaniko/.docker", "readOnly": true},
            ])
        );
        create.reply(201, &j);

        let path = format!("/apis/batch/v1/namespaces/dev/jobs/{name}");
        let get = api.next().await;
        get.expect(Method::GET, &path, &[]);
        get.ok(&job_with(&j, json!({"active": 1})));
        let list = api.next().await;
        list.expect(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            &[&format!("labelSelector=job-name%3D{name}")],
        );
        list.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": "kaniko", "ready": false, "restartCount": 0,
                "image": "k", "imageID": "",
                "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let get = api.next().await;
        get.expect(Method::GET, &path, &[]);
        get.ok(&job_with(
            &j,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        ));
        let list = api.next().await;
        list.expect(Method::GET, "/api/v1/namespaces/dev/pods", &[]);
        let done = json!({
            "initContainerStatuses": [{"name": FETCH_CONTAINER, "ready": false, "restartCount": 0,
                "image": "f", "imageID": "", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "message": format!("{DIGEST}\n")}}}],
        });
        // A pod of another Job is ignored even if the server ignored the selector.
        let mut other = pod("devd-other-1-00000000", done.clone());
        other["status"]["containerStatuses"][0]["state"]["terminated"]["message"] =
            json!("sha256:0000000000000000000000000000000000000000000000000000000000000000");
        list.ok(&pods(vec![other, pod(&name, done)]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=kaniko", "tailLines=120"],
        );
        log.text("INFO Pushing image to r.example.com:5000/demo/greeter\nINFO Pushed\n");
    })
    .await;
    let image = build.unwrap();
    assert_eq!(image, format!("r.example.com:5000/demo/greeter@{DIGEST}"));
    assert!(
        st.shelf.is_empty(),
        "the context is withdrawn after the build"
    );
    let log = std::fs::read_to_string(&req.log).unwrap();
    assert!(
        log.contains(&format!("Job {name}")) && log.contains("INFO Pushed"),
        "{log}"
    );
}

#[tokio::test]
async fn build_request_shape_failed_fetch_reads_the_init_container_log() {
    let (st, mut api) = setup(|_| {});
    let req = request(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        let j = create.body.clone();
        assert!(
            j["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .len()
                == 1,
            "no registry Secret configured, no Secret volume"
        );
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"phase": "Failed",
                "initContainerStatuses": [{"name": FETCH_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "f", "imageID": "",
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "short"}}}],
                "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "k", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=fetch-context"],
        );
        log.text(
            "WARN retrying\nError: GET http://x/contexts/t.tar.zst failed: HTTP 404 Not Found\n",
        );
    })
    .await;
    let f = build.unwrap_err();
    assert!(
        f.error.contains("fetching the build context failed"),
        "{}",
        f.error
    );
    assert!(f.error.contains("BackoffLimitExceeded"), "{}", f.error);
    assert!(f.error.contains("exited with code 1"), "{}", f.error);
    assert!(
        f.error.contains("HTTP 404"),
        "the last error line is named: {}",
        f.error
    );
    assert_eq!(
        f.log_tail.last().unwrap(),
        "Error: GET http://x/contexts/t.tar.zst failed: HTTP 404 Not Found"
    );
    assert!(st.shelf.is_empty());
}

#[tokio::test]
async fn build_request_shape_kaniko_failure_falls_back_to_the_termination_message() {
    let (st, mut api) = setup(|_| {});
    let req = request(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "INFO step 2/3\nerror building image: exit status 1\n"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=kaniko"],
        );
        log.reply(
            500,
            &json!({"kind": "Status", "code": 500, "message": "kubelet unreachable"}),
        );
    })
    .await;
    let f = build.unwrap_err();
    assert!(f.error.contains("Kaniko failed"), "{}", f.error);
    assert!(f.error.contains("DeadlineExceeded"), "{}", f.error);
    assert_eq!(
        f.log_tail,
        ["INFO step 2/3", "error building image: exit status 1"]
    );
}

/// `request(st)` for a greeter with two build steps.
fn request_with_steps(st: &Setup) -> BuildRequest {
    let mut req = request(st);
    req.service = service(
        r#"
[services.greeter]
context = "services/greeter"
image = "demo/greeter"
port = 8080

[[services.greeter.steps]]
name = "generate"
image = "r.example.com:5000/tools/gen:1.2"
command = ["gen", "--out", "generated.txt"]
workdir = "www"
env = { MODE = "ci", LANG = "C" }

[[services.greeter.steps]]
name = "test"
image = "busybox:stable"
command = ["sh", "-c", "./run-tests.sh"]
"#,
    );
    req
}

fn exited(name: &str, code: i32) -> Value {
    json!({"name": name, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
           "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}}})
}

#[tokio::test]
async fn build_request_shape_steps_are_init_containers_in_order_and_logged() {
    let (st, mut api) = setup(|s| s.resources.memory_limit = "3Gi".into());
    let req = request_with_steps(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        create.expect(Method::POST, "/apis/batch/v1/namespaces/dev/jobs", &[]);
        let j = create.body.clone();
        let init = j["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [FETCH_CONTAINER, "step-generate", "step-test"],
            "the fetch first, then the steps in catalog order"
        );
        let mount = json!([{"name": "workspace", "mountPath": "/kaniko/buildcontext"}]);
        let resources = json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                               "limits": {"cpu": "2", "memory": "3Gi"}});
        let gen_ = &init[1];
        assert_eq!(gen_["image"], "r.example.com:5000/tools/gen:1.2");
        assert_eq!(gen_["command"], json!(["gen", "--out", "generated.txt"]));
        assert!(gen_.get("args").is_none(), "the command is the whole argv");
        assert_eq!(gen_["workingDir"], "/kaniko/buildcontext/context/www");
        assert_eq!(
            gen_["env"],
            json!([{"name": "LANG", "value": "C"}, {"name": "MODE", "value": "ci"}])
        );
        assert_eq!(gen_["volumeMounts"], mount);
        assert_eq!(gen_["resources"], resources);
        assert_eq!(
            gen_["securityContext"],
            json!({"runAsUser": 0, "runAsGroup": 0})
        );
        assert_eq!(gen_["terminationMessagePolicy"], "FallbackToLogsOnError");
        let test = &init[2];
        assert_eq!(test["image"], "busybox:stable");
        assert_eq!(test["command"], json!(["sh", "-c", "./run-tests.sh"]));
        assert_eq!(test["workingDir"], "/kaniko/buildcontext/context");
        assert_eq!(test["env"], json!([]));
        assert_eq!(test["volumeMounts"], mount);
        // Kaniko reads the same volume after the steps.
        let k = &j["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(k["name"], KANIKO_CONTAINER);
        assert_eq!(k["volumeMounts"], mount);
        // The body is a valid Job.
        let _: Job = serde_json::from_value(j.clone()).unwrap();
        create.reply(201, &j);

        api.next().await.ok(&job_with(
            &j,
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        ));
        let mut kaniko = exited(KANIKO_CONTAINER, 0);
        kaniko["state"]["terminated"]["message"] = json!(DIGEST);
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"initContainerStatuses": [exited(FETCH_CONTAINER, 0),
                                             exited("step-generate", 0), exited("step-test", 0)],
                   "containerStatuses": [kaniko]}),
        )]));
        // Each step's log goes to the build log, in order, then Kaniko's.
        for (container, text) in [
            ("step-generate", "generated 1 file\n"),
            ("step-test", "3 tests passed\n"),
            ("kaniko", "INFO Pushed\n"),
        ] {
            let log = api.next().await;
            log.expect(
                Method::GET,
                &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
                &[&format!("container={container}")],
            );
            log.text(text);
        }
    })
    .await;
    let image = build.unwrap();
    assert_eq!(image, format!("r.example.com:5000/demo/greeter@{DIGEST}"));
    let log = std::fs::read_to_string(&req.log).unwrap();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing in the build log:\n{log}"))
    };
    assert!(at("devd: step \"generate\"") < at("generated 1 file"));
    assert!(at("generated 1 file") < at("devd: step \"test\""));
    assert!(at("3 tests passed") < at("INFO Pushed"));
}

#[tokio::test]
async fn build_request_shape_failing_step_is_named_with_its_log_tail() {
    let (st, mut api) = setup(|_| {});
    let req = request_with_steps(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(
            &j,
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        ));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"phase": "Failed",
                "initContainerStatuses": [exited(FETCH_CONTAINER, 0), exited("step-generate", 0),
                                          exited("step-test", 1)],
                "containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                    "image": "k", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )]));
        let log = api.next().await;
        log.expect(
            Method::GET,
            &format!("/api/v1/namespaces/dev/pods/{name}-x7k2p/log"),
            &["container=step-test"],
        );
        log.text("running 3 tests\nFAIL: greeting_renders\n");
    })
    .await;
    let f = build.unwrap_err();
    assert!(
        f.error
            .starts_with("build of greeter failed: step \"test\" failed (exit 1); Job "),
        "{}",
        f.error
    );
    assert!(f.error.contains("BackoffLimitExceeded"), "{}", f.error);
    assert_eq!(f.log_tail, ["running 3 tests", "FAIL: greeting_renders"]);
    let log = std::fs::read_to_string(&req.log).unwrap();
    assert!(
        log.contains("devd: step \"test\"") && log.contains("FAIL: greeting_renders"),
        "{log}"
    );
    assert!(st.shelf.is_empty());
}

#[tokio::test]
async fn build_request_shape_image_pull_backoff_deletes_the_job() {
    let (st, mut api) = setup(|_| {});
    let req = request(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(&j, json!({"active": 1})));
        api.next().await.ok(&pods(vec![pod(
            &name,
            json!({"containerStatuses": [{"name": KANIKO_CONTAINER, "ready": false, "restartCount": 0,
                "image": "k", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/x/kaniko\""}}}]}),
        )]));
        let del = api.next().await;
        del.expect(
            Method::DELETE,
            &format!("/apis/batch/v1/namespaces/dev/jobs/{name}"),
            &[],
        );
        assert_eq!(del.body["propagationPolicy"], "Background");
        del.ok(&j);
    })
    .await;
    let f = build.unwrap_err();
    assert!(
        f.error.contains("ImagePullBackOff") && f.error.contains("cannot start"),
        "{}",
        f.error
    );
}

fn rolled_out(mut d: Value) -> Value {
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    d["metadata"]["generation"] = json!(2);
    d["status"] = json!({"observedGeneration": 2, "replicas": replicas,
        "updatedReplicas": replicas, "availableReplicas": replicas});
    d
}

#[tokio::test]
async fn deploy_request_shape_run_spec_applies_service_ingress_and_deployment() {
    let controller = Controller::answering(&[503, 200]).await;
    let (st, mut api) = setup(|s| {
        s.domain = Some("dev.example.com".into());
        s.ingress_class = Some("nginx".into());
        s.image_pull_secrets = vec!["devd-registry".into()];
    });
    let web = service(
        "[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\nreplicas = 2\n[services.web.env]\nMODE = \"dev\"\n",
    );
    let image = format!("r.example.com:5000/web@{DIGEST}");
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &web, &image),
        async |api| {
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/dev/deployments/web",
                &[],
            );
            get.not_found();
            let svc = api.next().await;
            svc.expect_apply("/api/v1/namespaces/dev/services/web");
            assert_eq!(svc.body["kind"], "Service");
            assert_eq!(svc.body["spec"]["selector"], json!({LABEL_SERVICE: "web"}));
            assert_eq!(
                svc.body["spec"]["ports"],
                json!([{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}])
            );
            let body = svc.body.clone();
            svc.ok(&body);
            let ing = api.next().await;
            ing.expect_apply("/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web");
            assert_eq!(ing.body["spec"]["ingressClassName"], "nginx");
            let rule = &ing.body["spec"]["rules"][0];
            assert_eq!(rule["host"], "web.dev.dev.example.com");
            assert_eq!(
                rule["http"]["paths"][0]["backend"],
                json!({"service": {"name": "web", "port": {"number": 8080}}})
            );
            let ingress_body = ing.body.clone();
            ing.ok(&ingress_body);
            let dep = api.next().await;
            dep.expect_apply("/apis/apps/v1/namespaces/dev/deployments/web");
            let d = dep.body.clone();
            assert_eq!(d["metadata"]["labels"][LABEL_MANAGED_BY], "devd");
            assert_eq!(d["metadata"]["labels"][LABEL_WORKSPACE], "alice");
            assert_eq!(d["spec"]["replicas"], 2);
            assert_eq!(
                d["spec"]["selector"],
                json!({"matchLabels": {LABEL_SERVICE: "web"}})
            );
            assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["name"], "web");
            assert_eq!(c["image"], image, "deployed by digest");
            assert_eq!(c["env"], json!([{"name": "MODE", "value": "dev"}]));
            assert_eq!(c["ports"][0]["containerPort"], 8080);
            assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "http");
            assert_eq!(
                d["spec"]["template"]["spec"]["imagePullSecrets"],
                json!([{"name": "devd-registry"}])
            );
            dep.ok(&d);
            let mut progressing = d.clone();
            progressing["metadata"]["generation"] = json!(2);
            progressing["status"] =
                json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 0});
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/dev/deployments/web",
                &[],
            );
            get.ok(&progressing);
            api.next().await.ok(&rolled_out(d));
            // The URL is reported once an ingress controller took the
            // Ingress and the URL answers through it.
            let ing = api.next().await;
            ing.expect(
                Method::GET,
                "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web",
                &[],
            );
            let mut taken = ingress_body.clone();
            taken["status"] = json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1",
                "ports": [{"port": controller.port, "protocol": "TCP"}]}]}});
            ing.ok(&taken);
        },
    )
    .await;
    let out = deploy.unwrap();
    assert_eq!(out.url.as_deref(), Some("http://web.dev.dev.example.com"));
    let host = format!("web.dev.dev.example.com:{}", controller.port);
    assert_eq!(
        controller.hosts(),
        [host.clone(), host],
        "asked through the controller's address with the Ingress's host, again after its 503"
    );
}

/// An ingress controller's data path on loopback: connection `n` gets the
/// `n`th status of `statuses` (the last one from then on); the `Host` of
/// each request is kept.
struct Controller {
    port: u16,
    hosts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Controller {
    async fn answering(statuses: &[u16]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hosts: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (seen, statuses) = (hosts.clone(), statuses.to_vec());
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let host = head.lines().find_map(|l| l.strip_prefix("host: "));
                seen.lock()
                    .unwrap()
                    .push(host.unwrap_or("").trim().to_owned());
                let status = statuses[n.min(statuses.len() - 1)];
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        Self { port, hosts }
    }

    fn hosts(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }
}

/// A controller that took the Ingress but cannot reach the service (it
/// answers 502): the deploy fails saying so, after asking more than once.
#[tokio::test]
async fn deploy_request_shape_an_external_url_that_does_not_answer_fails_the_deploy() {
    let controller = Controller::answering(&[502]).await;
    let (st, mut api) = setup(|s| {
        s.domain = Some("dev.example.com".into());
        s.ingress_class = Some("nginx".into());
        s.ingress_wait = Duration::from_millis(400);
        s.poll_interval = Duration::from_millis(50);
    });
    let web = service("[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\n");
    let image = format!("r.example.com:5000/web@{DIGEST}");
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &web, &image),
        async |api| {
            api.next().await.not_found();
            let svc = api.next().await;
            let body = svc.body.clone();
            svc.ok(&body);
            let ing = api.next().await;
            let mut taken = ing.body.clone();
            ing.ok(&taken);
            let dep = api.next().await;
            let d = dep.body.clone();
            dep.ok(&d);
            api.next().await.ok(&rolled_out(d));
            taken["status"] = json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1",
                "ports": [{"port": controller.port, "protocol": "TCP"}]}]}});
            api.next().await.ok(&taken);
        },
    )
    .await;
    let f = deploy.unwrap_err();
    for want in ["did not answer", "502", "ingress_wait_seconds = 0"] {
        assert!(f.error.contains(want), "{want}: {}", f.error);
    }
    assert!(controller.hosts().len() >= 2, "{:?}", controller.hosts());
}

#[tokio::test]
async fn deploy_request_shape_internal_service_removes_its_old_ingress() {
    let (st, mut api) = setup(|s| s.domain = Some("dev.example.com".into()));
    let api_svc = service("[services.api]\ncontext = \"api\"\nport = 9000\n");
    let image = format!("r.example.com:5000/api@{DIGEST}");
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &api_svc, &image),
        async |api| {
            api.next().await.not_found();
            let svc = api.next().await;
            svc.expect_apply("/api/v1/namespaces/dev/services/api");
            let body = svc.body.clone();
            svc.ok(&body);
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/api",
                &[],
            );
            get.ok(
                &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "api", "labels": {LABEL_MANAGED_BY: "devd"}}}),
            );
            let del = api.next().await;
            del.expect(
                Method::DELETE,
                "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/api",
                &[],
            );
            del.ok(
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            );
            let dep = api.next().await;
            dep.expect_apply("/apis/apps/v1/namespaces/dev/deployments/api");
            let d = dep.body.clone();
            dep.ok(&d);
            api.next().await.ok(&rolled_out(d));
        },
    )
    .await;
    let out = deploy.unwrap();
    assert_eq!(
        out.url.as_deref(),
        Some("http://api.dev.svc.cluster.local:9000")
    );
}

fn existing(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "legacy-app", "namespace": "dev", "generation": 5, "uid": "dep-uid"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
            "template": {"spec": {"containers": [
                {"name": "app", "image": image},
                {"name": "sidecar", "image": "envoy:1"},
            ]}}},
    })
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true})
}

/// Answer the two lists of `app_pods` for Deployment legacy-app (uid
/// `dep-uid`): its ReplicaSets `rs-uid-0` and `rs-uid-1` plus one of
/// another owner, then `pods`, as a server that ignores selectors would.
async fn owned_pods(api: &mut Mock, selector: &str, pods_: Vec<Value>) {
    let rs = api.next().await;
    rs.expect(
        Method::GET,
        "/apis/apps/v1/namespaces/dev/replicasets",
        &[&format!("labelSelector={selector}")],
    );
    let set = |name: &str, uid: &str, owner_uid: &str| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "uid": uid,
                "ownerReferences": [owner("Deployment", "x", owner_uid)]},
            "spec": {"selector": {}}})
    };
    rs.ok(
        &json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": [
            set("legacy-app-x", "rs-uid-0", "dep-uid"),
            set("legacy-app-7f9", "rs-uid-1", "dep-uid"),
            set("other-1", "rs-uid-9", "other-dep-uid"),
        ]}),
    );
    let list = api.next().await;
    list.expect(
        Method::GET,
        "/api/v1/namespaces/dev/pods",
        &[&format!("labelSelector={selector}")],
    );
    list.ok(&pods(pods_));
}

fn legacy() -> Service {
    service(
        "[services.legacy]\ncontext = \".\"\ndeployment = \"legacy-app\"\ncontainer = \"app\"\nport = 80\n",
    )
}

#[tokio::test]
async fn deploy_request_shape_existing_deployment_patches_only_the_image() {
    let (st, mut api) = setup(|_| {});
    let image = format!("r.example.com:5000/legacy@{DIGEST}");
    let deploy = scripted(&mut api, st.backend.deploy("alice", &legacy(), &image), async |api| {
        let get = api.next().await;
        get.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
            &[],
        );
        get.ok(&existing("legacy:old"));
        let patch = api.next().await;
        patch.expect_apply("/apis/apps/v1/namespaces/dev/deployments/legacy-app");
        assert_eq!(
            patch.body,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "legacy-app", "namespace": "dev"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
            }),
            "devd owns only the container's image"
        );
        patch.ok(&existing(&image));
        api.next().await.ok(&rolled_out(existing(&image)));
    })
    .await;
    let out = deploy.unwrap();
    assert_eq!(
        out.url.as_deref(),
        Some("http://legacy-app.dev.svc.cluster.local:80")
    );
}

#[tokio::test]
async fn deploy_request_shape_failed_rollout_reports_the_pod_and_applies_the_old_image() {
    let (st, mut api) = setup(|_| {});
    let image = format!("r.example.com:5000/legacy@{DIGEST}");
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &legacy(), &image),
        async |api| {
            api.next().await.ok(&existing("legacy:old"));
            api.next().await.ok(&existing(&image));
            let mut stuck = existing(&image);
            stuck["status"] = json!({"observedGeneration": 5, "replicas": 2, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"legacy-app-7f9\" has timed out progressing."}]});
            api.next().await.ok(&stuck);
            owned_pods(
                api,
                "app%3Dlegacy",
                vec![
                    // Matches the selector, belongs to no ReplicaSet of the
                    // Deployment (a build pod once did): not blamed.
                    json!({"metadata": {"name": "devd-legacy-3-c0ffee00-x1", "labels": {"app": "legacy"}},
                "status": {"containerStatuses": [{"name": "kaniko", "ready": false, "restartCount": 0,
                    "image": "k", "imageID": "",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}),
                    json!({"metadata": {"name": "legacy-app-7f9-abc",
                    "ownerReferences": [owner("ReplicaSet", "legacy-app-7f9", "rs-uid-1")]},
                "status": {"containerStatuses": [{"name": "app", "ready": false, "restartCount": 4,
                    "image": image, "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
                ],
            )
            .await;
            let log = api.next().await;
            log.expect(
                Method::GET,
                "/api/v1/namespaces/dev/pods/legacy-app-7f9-abc/log",
                &["container=app", "previous=true"],
            );
            log.text("starting\npanic: config missing\n");
            let back = api.next().await;
            back.expect_apply("/apis/apps/v1/namespaces/dev/deployments/legacy-app");
            assert_eq!(
                back.body["spec"]["template"]["spec"]["containers"],
                json!([{"name": "app", "image": "legacy:old"}]),
                "the previous image is applied back"
            );
            back.ok(&existing("legacy:old"));
        },
    )
    .await;
    let f = deploy.unwrap_err();
    assert!(f.error.contains("ProgressDeadlineExceeded"), "{}", f.error);
    assert!(f.error.contains("CrashLoopBackOff"), "{}", f.error);
    assert_eq!(f.log_tail, ["starting", "panic: config missing"]);
}

#[tokio::test]
async fn deploy_request_shape_missing_deployment_or_container_is_named() {
    let (st, mut api) = setup(|_| {});
    let d = scripted(
        &mut api,
        st.backend.deploy("alice", &legacy(), "r/x@sha256:00"),
        async |api| {
            api.next().await.not_found();
        },
    )
    .await;
    let e = d.unwrap_err().error;
    assert!(
        e.contains("legacy-app does not exist in namespace dev"),
        "{e}"
    );
    let svc = service(
        "[services.legacy]\ncontext = \".\"\ndeployment = \"legacy-app\"\ncontainer = \"nope\"\n",
    );
    let d = scripted(
        &mut api,
        st.backend.deploy("alice", &svc, "r/x@sha256:00"),
        async |api| {
            api.next().await.ok(&existing("legacy:old"));
        },
    )
    .await;
    let e = d.unwrap_err().error;
    assert!(e.contains("no container \"nope\""), "{e}");
}

#[tokio::test]
async fn running_request_shape_reads_the_container_image() {
    let (st, mut api) = setup(|_| {});
    let r = scripted(
        &mut api,
        st.backend.running("alice", &legacy()),
        async |api| {
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
                &[],
            );
            get.ok(&existing("legacy@sha256:11"));
        },
    )
    .await;
    assert_eq!(
        r.unwrap(),
        Some(RunningService {
            image: "legacy@sha256:11".to_owned(),
            url: Some("http://legacy-app.dev.svc.cluster.local:80".to_owned())
        })
    );
    let r = scripted(
        &mut api,
        st.backend.running("alice", &greeter()),
        async |api| {
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/dev/deployments/greeter",
                &[],
            );
            get.not_found();
        },
    )
    .await;
    assert_eq!(r.unwrap(), None);
}

#[tokio::test]
async fn logs_request_shape_follows_the_newest_running_pod_of_the_deployment() {
    let (st, mut api) = setup(|_| {});
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let r = scripted(
        &mut api,
        st.backend.logs("alice", &legacy(), true, tx),
        async |api| {
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
                &[],
            );
            get.ok(&existing("legacy@sha256:11"));
            let pod = |name: &str, created: &str, phase: &str, rs: &str| {
                json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "creationTimestamp": created,
                       "ownerReferences": [owner("ReplicaSet", "legacy-app-x", rs)]},
                   "status": {"phase": phase}})
            };
            owned_pods(
                api,
                "app%3Dlegacy",
                vec![
                    pod("legacy-old", "2026-01-01T00:00:00Z", "Running", "rs-uid-0"),
                    pod("legacy-new", "2026-01-02T00:00:00Z", "Running", "rs-uid-1"),
                    pod(
                        "legacy-pending",
                        "2026-01-03T00:00:00Z",
                        "Pending",
                        "rs-uid-1",
                    ),
                    // Newest and running, matching the selector, but no pod
                    // of the Deployment (a build pod during a build was).
                    pod(
                        "devd-legacy-9-c0ffee00-x1",
                        "2026-01-04T00:00:00Z",
                        "Running",
                        "job-uid",
                    ),
                ],
            )
            .await;
            let log = api.next().await;
            log.expect(
                Method::GET,
                "/api/v1/namespaces/dev/pods/legacy-new/log",
                &["container=app", "follow=true"],
            );
            log.text("GET /health 200\n");
            assert_eq!(rx.recv().await.unwrap(), b"GET /health 200\n");
        },
    )
    .await;
    r.unwrap();
    // A service that was never deployed: a clear error.
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let r = scripted(
        &mut api,
        st.backend.logs("alice", &greeter(), false, tx),
        async |api| {
            api.next().await.not_found();
        },
    )
    .await;
    let e = r.unwrap_err().error;
    assert!(e.contains("not been deployed"), "{e}");
}

#[tokio::test]
async fn urls_follow_exposure_and_the_template() {
    let (st, _api) = setup(|s| s.domain = Some("dev.example.com".into()));
    let b = &st.backend;
    let web = service("[services.web]\ncontext = \"w\"\nport = 8080\nexpose = \"external\"\n");
    let api = service("[services.api]\ncontext = \"a\"\nport = 9000\n");
    let worker = service("[services.worker]\ncontext = \"k\"\nexpose = \"none\"\n");
    assert_eq!(
        b.url("alice", &web).as_deref(),
        Some("http://web.dev.dev.example.com")
    );
    assert_eq!(
        b.url("alice", &api).as_deref(),
        Some("http://api.dev.svc.cluster.local:9000")
    );
    assert_eq!(b.url("alice", &worker), None);
    assert_eq!(
        b.url("alice", &legacy()).as_deref(),
        Some("http://legacy-app.dev.svc.cluster.local:80")
    );
    let (st, _api) = setup(|s| {
        s.domain = Some("dev.example.com".into());
        s.url_template = Some("https://{service}-{workspace}.{domain}:{port}".into());
    });
    assert_eq!(
        st.backend.url("alice", &api).as_deref(),
        Some("https://api-alice.dev.example.com:9000")
    );
}

/// Every field devd sends exists in the Kubernetes schema: a misspelled
/// one would be dropped by the typed round trip.
#[tokio::test]
async fn specs_round_trip_through_the_api_types() {
    let (st, _api) = setup(|s| {
        s.registry_secret = Some("regcred".into());
        s.service_account = Some("b".into());
        s.ingress_class = Some("nginx".into());
    });
    let b = &st.backend;
    let req = request(&st);
    fn same<K: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
        let typed: K = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(&serde_json::to_value(typed).unwrap(), v);
    }
    same::<Job>(&b.job_spec(&req, "devd-greeter-7-c0ffeec0", "http://x/c.tar.zst", "ab"));
    let web = service(
        "[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\n[services.web.env]\nA = \"1\"\n",
    );
    same::<Deployment>(&b.deployment_spec("alice", &web, "r/web@sha256:00"));
    same::<KubeService>(&b.service_spec("alice", &web));
    same::<Ingress>(&b.ingress_spec("alice", &web, "dev.example.com"));
    // The image patch is partial on purpose: through the typed struct it
    // would claim an empty selector (a required field), hence raw JSON.
    let patch = b.image_patch("legacy-app", "app", "r/x@sha256:00");
    let typed: Deployment = serde_json::from_value(patch.clone()).unwrap();
    let mut back = serde_json::to_value(typed).unwrap();
    assert_eq!(back["spec"]["selector"], json!({}));
    back["spec"].as_object_mut().unwrap().remove("selector");
    assert_eq!(back, patch);
}

/// The DevBuild recorder runs on the receiver's task tracker, so a drain
/// waits for it; it ends on cancellation or when the pipeline (the sender
/// of the events) is gone. With no DevBuilds to keep, nothing runs.
#[tokio::test]
async fn observe_runs_the_recorder_on_the_tracker_until_cancelled() {
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    let observation = |tasks: &TaskTracker, cancel: &CancellationToken| {
        let (events, rx) = tokio::sync::broadcast::channel(4);
        let o = Observation {
            workspace: "alice".into(),
            events: rx,
            services: Arc::new(|_: &str| None),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        (events, o)
    };
    let (st, _api) = setup(|_| {});
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    let (_events, o) = observation(&tasks, &cancel);
    st.backend.observe(o);
    assert_eq!(tasks.len(), 1, "the recorder is tracked");
    tasks.close();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), tasks.wait())
            .await
            .is_err(),
        "the recorder runs while the pipeline does"
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("cancellation ends the recorder");

    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    let (events, o) = observation(&tasks, &cancel);
    st.backend.observe(o);
    tasks.close();
    drop(events);
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("the recorder ends with the pipeline's events");

    let (st, _api) = setup(|s| s.devbuilds_per_service = 0);
    let tasks = TaskTracker::new();
    let (_events, o) = observation(&tasks, &CancellationToken::new());
    st.backend.observe(o);
    assert_eq!(tasks.len(), 0, "no DevBuilds kept, no recorder");
}

#[tokio::test]
async fn build_request_shape_admission_rejection_fails_at_once_with_its_message() {
    let (st, mut api) = setup(|_| {});
    let req = request(&st);
    let name = job_name("greeter", 7, &req.context.digest);
    let refused = format!(
        "Error creating: pods \"{name}-x7k2p\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod or container \"kaniko\" must set securityContext.runAsNonRoot=true)"
    );
    let build = scripted(&mut api, st.backend.build(&req), async |api| {
        let create = api.next().await;
        let j = create.body.clone();
        create.reply(201, &j);
        api.next().await.ok(&job_with(&j, json!({"active": 0})));
        // No pod: the Job controller could not create it.
        api.next().await.ok(&pods(vec![]));
        let events = api.next().await;
        events.expect(
            Method::GET,
            "/api/v1/namespaces/dev/events",
            &[&format!(
                "fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3D{name}"
            )],
        );
        let event = |kind: &str, object: &str, reason: &str, message: &str| {
            json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{object}.1"), "namespace": "dev"},
                "involvedObject": {"kind": kind, "name": object, "namespace": "dev"},
                "reason": reason, "message": message, "type": "Warning",
                "lastTimestamp": "2026-12-07T12:00:00Z"})
        };
        events.ok(
            &json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                // Another object's event, as a server ignoring field selectors sends it.
                event("Job", "devd-other-1-00000000", "FailedCreate", "Error creating: other"),
                event("Job", &name, "SuccessfulCreate", "Created pod"),
                event("Job", &name, "FailedCreate", &refused),
            ]}),
        );
        let del = api.next().await;
        del.expect(
            Method::DELETE,
            &format!("/apis/batch/v1/namespaces/dev/jobs/{name}"),
            &[],
        );
        del.ok(&j);
    })
    .await;
    let f = build.unwrap_err();
    assert!(f.error.contains(&refused), "{}", f.error);
    assert!(
        f.error.contains("baseline") && f.error.contains("refused"),
        "says what to do: {}",
        f.error
    );
    assert!(st.shelf.is_empty(), "the context is withdrawn");
}

#[tokio::test]
async fn deploy_request_shape_replica_failure_fails_the_rollout_with_the_admission_message() {
    let (st, mut api) = setup(|_| {});
    let image = format!("r.example.com:5000/legacy@{DIGEST}");
    let quota = "pods \"legacy-app-7f9-abc\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=3, limited: pods=3";
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &legacy(), &image),
        async |api| {
            api.next().await.ok(&existing("legacy:old"));
            api.next().await.ok(&existing(&image));
            let mut refused = existing(&image);
            refused["status"] = json!({"observedGeneration": 5, "replicas": 1, "updatedReplicas": 0,
                "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                     "message": quota}]});
            api.next().await.ok(&refused);
            owned_pods(api, "app%3Dlegacy", vec![]).await;
            let back = api.next().await;
            back.expect_apply("/apis/apps/v1/namespaces/dev/deployments/legacy-app");
            back.ok(&existing("legacy:old"));
        },
    )
    .await;
    let f = deploy.unwrap_err();
    assert!(
        f.error.contains("ReplicaFailure: FailedCreate") && f.error.contains(quota),
        "{}",
        f.error
    );
}

#[tokio::test]
async fn deploy_request_shape_an_ingress_no_controller_takes_fails_with_what_to_set() {
    let (st, mut api) = setup(|s| {
        s.domain = Some("dev.example.com".into());
        s.ingress_wait = Duration::from_millis(30);
    });
    let web = service("[services.web]\ncontext = \"web\"\nport = 8080\nexpose = \"external\"\n");
    let image = format!("r.example.com:5000/web@{DIGEST}");
    let deploy = scripted(
        &mut api,
        st.backend.deploy("alice", &web, &image),
        async |api| {
            api.next().await.not_found();
            let svc = api.next().await;
            let body = svc.body.clone();
            svc.ok(&body);
            // The class-less Ingress of an earlier deploy, which no
            // controller took, is made anew so that admission may give it
            // the default class that may exist now.
            let get = api.next().await;
            get.expect(
                Method::GET,
                "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web",
                &[],
            );
            get.ok(
                &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "labels": {LABEL_MANAGED_BY: "devd"}},
                "spec": {"rules": []}}),
            );
            let del = api.next().await;
            del.expect(
                Method::DELETE,
                "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web",
                &[],
            );
            del.ok(
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            );
            let ing = api.next().await;
            ing.expect_apply("/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web");
            assert!(
                ing.body["spec"].get("ingressClassName").is_none(),
                "no class configured"
            );
            let ingress = ing.body.clone();
            ing.ok(&ingress);
            let dep = api.next().await;
            let d = dep.body.clone();
            dep.ok(&d);
            api.next().await.ok(&rolled_out(d));
            // The Ingress never gets an address; the backend asks until
            // ingress_wait has passed.
            let mut gets = 0;
            while let Some(get) = api.next_within(Duration::from_millis(500)).await {
                get.expect(
                    Method::GET,
                    "/apis/networking.k8s.io/v1/namespaces/dev/ingresses/web",
                    &[],
                );
                get.ok(&ingress);
                gets += 1;
            }
            assert!(gets >= 2, "asked again before giving up: {gets}");
        },
    )
    .await;
    let f = deploy.unwrap_err();
    for want in [
        "Ingress web has no ingressClassName",
        "no default IngressClass",
        "ingress_class",
        "is-default-class",
    ] {
        assert!(f.error.contains(want), "{want}: {}", f.error);
    }
}

/// Every entry under `root` (the root itself as ""): kind and permission
/// bits, as an image builder copying the directory would see them.
fn tree_modes(root: &std::path::Path) -> BTreeMap<String, (char, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &std::path::Path, rel: &str, out: &mut BTreeMap<String, (char, u32)>) {
        let meta = std::fs::symlink_metadata(dir).unwrap();
        out.insert(rel.to_owned(), ('d', meta.permissions().mode() & 0o7777));
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                walk(&e.path(), &child, out);
            } else if m.file_type().is_symlink() {
                out.insert(child, ('l', 0));
            } else {
                out.insert(child, ('f', m.permissions().mode() & 0o7777));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// The owner `COPY` gives the context's files in an image built from the
/// Job's pod: Kaniko keeps the owner on disk (the fetcher's uid) unless
/// `FF_KANIKO_COPY_AS_ROOT=true` (kaniko#2921, #1921; the fork's flag).
fn kaniko_copy_owner(pod_spec: &Value) -> i64 {
    let kaniko = &pod_spec["containers"][0];
    let as_root = kaniko["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == KANIKO_COPY_AS_ROOT && e["value"] == "true");
    if as_root {
        0
    } else {
        pod_spec["initContainers"][0]["securityContext"]["runAsUser"]
            .as_i64()
            .unwrap()
    }
}

/// The same context, built by the local backend (buildah reads the
/// snapshot directory) and by the Kubernetes backend (Kaniko reads what
/// `fetch-context` unpacked in the build pod, run for real here over HTTP
/// into a stand-in for the pod's emptyDir at the path the Job names): the
/// same entries with the same modes, the context root 0755 although the
/// emptyDir's root is 0777, and root-owned copies on both sides (buildah's
/// COPY gives root:root as `docker build` does; Kaniko does with
/// FF_KANIKO_COPY_AS_ROOT, while the fetcher that unpacked the files runs
/// as uid 65532).
#[tokio::test]
async fn kaniko_sees_the_context_with_the_modes_and_owner_the_local_build_sees() {
    use crate::build::http::{HttpState, serve};
    use std::os::unix::fs::PermissionsExt;
    devd_sync::net::install_crypto();
    let (st, _api) = setup(|_| {});
    // The worktree, as the receiver materialized it.
    let root = st.dir.path().join("worktree");
    let write = |rel: &str, text: &str, mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("app/Dockerfile", "FROM scratch\nCOPY . /app\n", 0o644);
    write("app/bin/run.sh", "#!/bin/sh\n", 0o755);
    write("app/www/index.html", "hi\n", 0o664);
    write("app/www/deep/data.txt", "x\n", 0o600);
    std::os::unix::fs::symlink("www/index.html", root.join("app/latest")).unwrap();
    let svc = service("[services.app]\ncontext = \"app\"\nport = 80\n");
    // What the local backend builds from.
    let local =
        crate::build::context::snapshot(&root, &svc, &st.dir.path().join("snap"), &[]).unwrap();

    // What the Kubernetes backend's build pod unpacks, where the Job says.
    let cancel = tokio_util::sync::CancellationToken::new();
    let srv = serve(
        "127.0.0.1:0".parse().unwrap(),
        HttpState::new(st.shelf.clone()),
        &tokio_util::task::TaskTracker::new(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let offer = st.shelf.offer(&local.dir).await.unwrap();
    let url = format!("http://{}{}", srv.addr, offer.path);
    let mut req = request(&st);
    req.service = svc;
    req.context = local.clone();
    let job = st
        .backend
        .job_spec(&req, "devd-app-1-00000000", &url, &offer.packed.blake3);
    let pod_spec = &job["spec"]["template"]["spec"];
    let init = &pod_spec["initContainers"][0];
    let cmd: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let dest = cmd[cmd.iter().position(|a| *a == "--dest").unwrap() + 1];
    let mount = init["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let kaniko_args: Vec<&str> = pod_spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        kaniko_args.contains(&format!("--context=dir://{dest}").as_str()),
        "Kaniko reads what the fetcher unpacked: {kaniko_args:?}"
    );
    let empty_dir = st.dir.path().join("emptydir");
    std::fs::create_dir(&empty_dir).unwrap();
    std::fs::set_permissions(&empty_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let unpacked = empty_dir.join(dest.strip_prefix(mount).unwrap().trim_start_matches('/'));
    crate::build::fetch::fetch_context(&url, &unpacked, &offer.packed.blake3)
        .await
        .unwrap();
    cancel.cancel();

    let (local_tree, pod_tree) = (tree_modes(&local.dir), tree_modes(&unpacked));
    assert_eq!(pod_tree, local_tree, "entries and modes differ");
    assert_eq!(pod_tree[""], ('d', 0o755), "the context root");
    assert_eq!(pod_tree["bin/run.sh"], ('f', 0o755));
    assert_eq!(pod_tree["www/deep"], ('d', 0o755));
    assert_eq!(
        tree_modes(&empty_dir)[""],
        ('d', 0o777),
        "the emptyDir root itself is world-writable: the context is not unpacked there"
    );
    // Owners: buildah's COPY gives root:root (the local backend passes no
    // --chown); Kaniko's must too.
    assert_ne!(
        init["securityContext"]["runAsUser"].as_i64(),
        Some(0),
        "the fetcher is not root, so the files on disk are not root's"
    );
    assert_eq!(kaniko_copy_owner(pod_spec), 0);
}

/// `devd exec` in the cluster: the newest running pod of the service's
/// Deployment (through its ReplicaSets), the service's container, the
/// command as repeated `command` parameters, all three streams without a
/// terminal and stdout only with one; a refusal (RBAC without
/// `pods/exec`) comes back as the API server's message.
#[tokio::test]
async fn exec_request_shape_the_newest_running_pod_and_its_container() {
    use crate::build::backend::exec::{ExecIo, ExecRequest};
    use devd_protocol::message::TermSize;
    for tty in [
        None,
        Some(TermSize {
            cols: 100,
            rows: 30,
        }),
    ] {
        let (st, mut api) = setup(|_| {});
        let (_input_tx, input) = tokio::sync::mpsc::channel(1);
        let (output, _output_rx) = tokio::sync::mpsc::channel(1);
        let req = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            tty,
        };
        let exec = scripted(
            &mut api,
            st.backend
                .exec("alice", &legacy(), req, ExecIo { input, output }),
            async |api| {
                let get = api.next().await;
                get.expect(
                    Method::GET,
                    "/apis/apps/v1/namespaces/dev/deployments/legacy-app",
                    &[],
                );
                get.ok(&existing("legacy:v1"));
                let pod = |name: &str, at: &str, phase: &str| {
                    json!({"metadata": {"name": name, "creationTimestamp": at,
                        "ownerReferences": [owner("ReplicaSet", "legacy-app-7f9", "rs-uid-1")]},
                        "status": {"phase": phase}})
                };
                owned_pods(
                    api,
                    "app%3Dlegacy",
                    vec![
                        pod("legacy-old", "2026-01-01T00:00:00Z", "Running"),
                        pod("legacy-new", "2026-01-02T00:00:00Z", "Running"),
                        pod("legacy-starting", "2026-01-03T00:00:00Z", "Pending"),
                    ],
                )
                .await;
                let call = api.next().await;
                let streams: &[&str] = match tty {
                    // (kube leaves out what is false.)
                    None => &["stderr=true"],
                    Some(_) => &["tty=true"],
                };
                call.expect(
                    Method::GET,
                    "/api/v1/namespaces/dev/pods/legacy-new/exec",
                    &[
                        &["container=app", "command=sh", "command=-c", "command=echo+hi"],
                        &["stdin=true", "stdout=true"][..],
                        streams,
                    ]
                    .concat(),
                );
                call.reply(
                    403,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Forbidden", "code": 403,
                        "message": "pods \"legacy-new\" is forbidden: User \"system:serviceaccount:dev:devd-receiver\" cannot create resource \"pods/exec\""}),
                );
            },
        )
        .await;
        let f = exec.unwrap_err();
        assert!(
            f.error.contains("exec in pod legacy-new") && f.error.contains("pods/exec"),
            "{}",
            f.error
        );
    }
}

/// `restart = "container"` cannot keep copied files in a cluster (kubelet
/// starts a container again from its image): the backend says so before
/// any API call, and the pipeline builds images for the service instead.
#[tokio::test]
async fn live_request_shape_restart_container_is_refused_before_any_call() {
    use crate::build::backend::{LiveError, LiveUpdate};
    use devd_sync::catalog::Restart;
    let (st, mut api) = setup(|_| {});
    let update = LiveUpdate {
        files: Vec::new(),
        run: Vec::new(),
        restart: Restart::Container,
        reapply: false,
        log: st.dir.path().join("live.log"),
    };
    let web = service("[services.web]\ncontext = \"web\"\nport = 8080\n");
    let out = st.backend.live_update("alice", &web, &update).await;
    match out {
        Err(LiveError::Unsupported(why)) => {
            assert!(why.contains("restart = \"container\""), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        api.next_within(Duration::from_millis(100)).await.is_none(),
        "no API call"
    );
}

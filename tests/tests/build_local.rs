//! Builds and deploys with the local backend, for real: buildah builds,
//! Debian's docker-registry on loopback stores, podman runs, and the test
//! fetches what the deployed containers serve at the URLs `devd status`
//! reports. The repository is `examples/demo` (web, api with a
//! .dockerignore, greeter with a `shared/` input).

use devd_tests::containers::{
    ContainerEnv, Registry, http_get, receiver_pushing_to, require_container_tools,
};
use devd_tests::{Devd, FAST_SYNC, Fixture, ReceiverOpts, Service, wait_until};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

fn services(devd: &Devd<'_>) -> Vec<Service> {
    devd.status().services()
}

fn service(devd: &Devd<'_>, name: &str) -> Service {
    devd.status()
        .service(name)
        .unwrap_or_else(|| panic!("devd status lists no service {name:?}"))
}

fn get(url: &str, path: &str) -> String {
    let (code, body) =
        http_get(&format!("{url}{path}")).unwrap_or_else(|e| panic!("GET {url}{path}: {e:#}"));
    assert_eq!(code, 200, "GET {url}{path}: {body}");
    body
}

#[test]
fn local_backend_rebuilds_exactly_the_affected_services_reuses_images_and_keeps_serving_on_failure()
{
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let registry = Registry::start(fx.root(), fx.logs());
    let _rx = receiver_pushing_to(&fx, &cenv, &registry, ReceiverOpts::default());
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();

    // The whole system comes up: every service built, pushed, deployed.
    for name in ["api", "greeter", "web"] {
        devd.wait_service(name, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    }
    let all = services(&devd);
    assert_eq!(
        all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["api", "greeter", "web"]
    );
    for s in &all {
        let image = s.image.as_deref().unwrap();
        let digest = s.digest.as_deref().unwrap();
        assert!(
            image.starts_with(&format!("{}/demo/{}@sha256:", registry.addr(), s.name)),
            "{s:?}"
        );
        assert!(image.ends_with(digest) && digest.len() == 71, "{s:?}");
        assert_eq!(
            registry
                .manifest_digest(&format!("demo/{}", s.name), digest)
                .as_deref(),
            Some(digest),
            "the deployed digest is the pushed manifest"
        );
        assert!(s.last_build_ms.is_some() && !s.reused, "{s:?}");
        assert!(
            s.url.as_deref().unwrap().starts_with("http://127.0.0.1:"),
            "{s:?}"
        );
    }
    let web0 = service(&devd, "web");
    let web_url = web0.url.clone().unwrap();
    let greeter0 = service(&devd, "greeter");
    let api0 = service(&devd, "api");
    assert!(get(&web_url, "/").contains("web v1"));
    assert!(
        get(greeter0.url.as_deref().unwrap(), "/greeting.txt").contains("Hello from shared v1")
    );
    assert_eq!(
        get(greeter0.url.as_deref().unwrap(), "/style").trim(),
        "plain",
        "build arg"
    );

    // Editing one service's file rebuilds exactly that service.
    let v1 = String::from_utf8(fx.read("services/web/www/index.html")).unwrap();
    fx.write(
        "services/web/www/index.html",
        v1.replace("web v1", "web v2"),
    );
    let web1 = devd.wait_service("web", "a new image deployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed" && s.image != web0.image
    });
    assert_eq!(
        web1.url.as_deref(),
        Some(web_url.as_str()),
        "the URL is stable"
    );
    assert!(get(&web_url, "/").contains("web v2"));
    assert!(!web1.reused && web1.last_build_ms.is_some());
    for before in [&api0, &greeter0] {
        assert_eq!(
            &service(&devd, &before.name),
            before,
            "{} was not affected and must see no event",
            before.name
        );
    }

    // Editing the shared input rebuilds its dependant only.
    let g = String::from_utf8(fx.read("shared/greeting.txt")).unwrap();
    fx.write("shared/greeting.txt", g.replace("v1", "v2"));
    let greeter1 = devd.wait_service(
        "greeter",
        "rebuilt after shared/ changed",
        DEPLOY_TIMEOUT,
        |s| s.state == "deployed" && s.image != greeter0.image,
    );
    assert!(
        get(greeter1.url.as_deref().unwrap(), "/greeting.txt").contains("Hello from shared v2")
    );
    assert_eq!(service(&devd, "api"), api0);
    assert_eq!(service(&devd, "web").image, web1.image);

    // A file the context's .dockerignore excludes changes no image.
    let api_tags = registry.tags("demo/api");
    fx.append("services/api/NOTES.md", "\nmore notes\n");
    devd.wait_service("api", "the ignored edit considered", DEPLOY_TIMEOUT, |s| {
        s.generation > api0.generation && s.state == "deployed"
    });
    let api1 = service(&devd, "api");
    assert_eq!(api1.image, api0.image, "an ignored file must not rebuild");
    assert_eq!(registry.tags("demo/api"), api_tags);

    // Reverting the edit reuses the first image: no build.
    fx.write("services/web/www/index.html", &v1);
    let web2 = devd.wait_service(
        "web",
        "the original image redeployed",
        DEPLOY_TIMEOUT,
        |s| s.state == "deployed" && s.image == web0.image,
    );
    assert!(web2.reused, "a revert must reuse the image: {web2:?}");
    assert_eq!(web2.last_build_ms, None);
    assert!(get(&web_url, "/").contains("web v1"));

    // A broken Dockerfile fails with its log tail; the old container serves on.
    let df = String::from_utf8(fx.read("services/web/Dockerfile")).unwrap();
    fx.write(
        "services/web/Dockerfile",
        format!("{df}\nRUN /bin/false-does-not-exist\n"),
    );
    let failed = devd.wait_service("web", "failed", DEPLOY_TIMEOUT, |s| s.state == "failed");
    let error = failed.error.clone().unwrap();
    assert!(error.contains("build of web failed"), "{error}");
    assert!(
        failed
            .log_tail
            .iter()
            .any(|l| l.contains("false-does-not-exist")),
        "log tail should show the failing step: {:#?}",
        failed.log_tail
    );
    assert_eq!(failed.image, web0.image, "the running image stays");
    assert!(
        get(&web_url, "/").contains("web v1"),
        "the old container keeps serving"
    );
    let human = devd.run(&["status"]);
    human.assert_success();
    for needle in ["web", "failed", "greeter", "deployed", &web_url] {
        assert!(
            human.stdout.contains(needle),
            "{needle:?} missing in:\n{}",
            human.stdout
        );
    }

    // Fixing it recovers.
    fx.write("services/web/Dockerfile", &df);
    devd.wait_service("web", "deployed again", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed"
    });
    assert!(get(&web_url, "/").contains("web v1"));
}

#[test]
fn embedded_default_builds_into_local_storage_and_serves_the_new_content() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    fx.write_local_config(FAST_SYNC);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let web = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    let image = web.image.clone().unwrap();
    assert!(image.starts_with("localhost/demo/web@sha256:"), "{image}");
    let url = web.url.clone().unwrap();
    assert!(get(&url, "/").contains("web v1"));
    fx.write("services/web/www/index.html", "<h1>web v3</h1>\n");
    devd.wait_service("web", "redeployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed" && s.image.as_deref() != Some(image.as_str())
    });
    assert!(get(&url, "/").contains("web v3"));
    // One container per service: the old one is retired (in the background).
    let web_containers = || -> Vec<_> {
        cenv.podman_ps()
            .into_iter()
            .filter(|c| c.labels.get("dev.devd.service").map(String::as_str) == Some("web"))
            .collect()
    };
    wait_until(
        Duration::from_secs(30),
        "the old web container is removed",
        || web_containers().len() == 1,
    );
    assert_eq!(web_containers()[0].state, "running");
}

#[test]
fn missing_buildah_fails_the_build_with_what_to_install_and_sync_goes_on() {
    let fx = Fixture::from_example("demo");
    // A PATH with everything from /usr/bin except the container tools.
    let bin = fx.root().join("bin-without-buildah");
    std::fs::create_dir_all(&bin).unwrap();
    for e in std::fs::read_dir("/usr/bin").unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if ["buildah", "podman"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
    }
    fx.write_local_config(FAST_SYNC);
    let path = bin.display().to_string();
    let devd = fx.devd().with_env(vec![("PATH".into(), path)]);
    devd.start_wait();
    let web = devd.wait_service("web", "failed", DEPLOY_TIMEOUT, |s| s.state == "failed");
    let error = web.error.unwrap();
    assert!(
        error.contains("podman is not installed") || error.contains("buildah is not installed"),
        "{error}"
    );
    assert!(error.contains("apt-get install buildah podman"), "{error}");
    // Syncing is unaffected.
    fx.write("services/web/www/index.html", "still syncing\n");
    let st = devd.status();
    let wt = st.receiver_worktree.clone().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the edit reaches the receiver",
        || {
            std::fs::read_to_string(wt.join("services/web/www/index.html"))
                .ok()
                .as_deref()
                == Some("still syncing\n")
        },
    );
}

#[test]
fn edits_during_a_build_queue_exactly_one_follow_up_build_with_the_latest_state() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let registry = Registry::start(fx.root(), fx.logs());
    let _rx = receiver_pushing_to(&fx, &cenv, &registry, ReceiverOpts::default());
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let web0 = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    assert_eq!(registry.tags("demo/web").len(), 1);

    // A slow build: its last step takes 3 s, after the content is copied.
    let df = String::from_utf8(fx.read("services/web/Dockerfile")).unwrap();
    fx.write("services/web/Dockerfile", format!("{df}RUN sleep 3\n"));
    devd.wait_service("web", "building", DEPLOY_TIMEOUT, |s| s.state == "building");
    // Three edits while it builds; each reaches the receiver.
    for v in ["edit-a", "edit-b", "edit-c"] {
        let before = devd.status().generation;
        fx.write("services/web/www/index.html", format!("<h1>{v}</h1>\n"));
        wait_until(Duration::from_secs(30), "the edit is applied", || {
            devd.status().generation > before
        });
        assert_eq!(
            service(&devd, "web").state,
            "building",
            "the first build should still run (it sleeps 3 s)"
        );
    }
    let last = devd.wait_service("web", "the latest edit deployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed"
            && s.image != web0.image
            && s.url
                .as_deref()
                .is_some_and(|u| get(u, "/").contains("edit-c"))
    });
    assert!(!last.reused);
    // Exactly two builds since the first deploy: the one that ran and one
    // follow-up with the latest state; the superseded edits never built.
    let tags = registry.tags("demo/web");
    assert_eq!(tags.len(), 3, "one tag per image built: {tags:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        service(&devd, "web").state,
        "deployed",
        "nothing else queued"
    );
}

#[test]
fn a_restarted_receiver_adopts_the_running_services_without_rebuilding() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let mut rx = fx.receiver_with(ReceiverOpts {
        env: cenv.env(),
        ..Default::default()
    });
    let addr = rx.addr().to_string();
    fx.write_local_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let mut before = Vec::new();
    for name in ["api", "greeter", "web"] {
        before.push(devd.wait_service(name, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed"));
    }
    let containers: Vec<String> = cenv.podman_ps().iter().map(|c| c.id.clone()).collect();

    rx.signal("TERM");
    assert!(
        rx.wait_exit(Duration::from_secs(30)).is_some(),
        "receiver drains and exits"
    );
    drop(rx);
    // Down for a while: the daemon's first reconnect attempts fail, and it
    // must keep trying although it has nothing to sync.
    std::thread::sleep(Duration::from_secs(3));
    let _rx = fx.receiver_with(ReceiverOpts {
        env: cenv.env(),
        listen: addr,
        ..Default::default()
    });
    // The daemon reconnects by itself and gets the adopted state: the same
    // images at the same URLs, nothing built, the same containers serving.
    for b in &before {
        let s = devd.wait_service(&b.name, "adopted", DEPLOY_TIMEOUT, |s| {
            s.state == "deployed" && s.image == b.image && s.last_build_ms.is_none()
        });
        assert_eq!(
            s.url, b.url,
            "{}: the URL survives a receiver restart",
            b.name
        );
    }
    assert!(get(before[2].url.as_deref().unwrap(), "/").contains("web v1"));
    let after: Vec<String> = cenv.podman_ps().iter().map(|c| c.id.clone()).collect();
    assert_eq!(after, containers, "no container was replaced");

    // And builds go on from there.
    fx.write("services/api/www/index.html", "api v2\n");
    let api = devd.wait_service("api", "rebuilt", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed" && s.image != before[0].image
    });
    assert!(get(api.url.as_deref().unwrap(), "/").contains("api v2"));
}

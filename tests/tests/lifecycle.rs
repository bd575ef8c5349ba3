//! The daemon's life on the embedded default, for real (buildah builds,
//! podman runs, on `examples/demo`): a deploy that fails points at the log
//! that holds its error; failures whose cause lies outside the worktree
//! are retried on `devd start` and by `devd retry`, without an edit;
//! `devd stop`, `devd stop --keep-running` and `devd down` leave the
//! containers, images and URLs as they say.

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::{Devd, FAST_SYNC, Fixture, Service};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);
const SERVICES: [&str; 3] = ["api", "greeter", "web"];

/// The demo with a private container storage and fast syncs; the busybox
/// base image only if `base`.
fn demo(fx: &Fixture, base: bool) -> ContainerEnv {
    require_container_tools();
    let cenv = ContainerEnv::new(fx.root());
    if base {
        cenv.build_busybox_base();
    }
    fx.write_local_config(FAST_SYNC);
    cenv
}

fn wait_all(devd: &Devd<'_>, what: &str, pred: impl Fn(&Service) -> bool) -> Vec<Service> {
    SERVICES
        .iter()
        .map(|n| devd.wait_service(n, what, DEPLOY_TIMEOUT, &pred))
        .collect()
}

/// `GET url/` answers 200.
fn answers(url: &str) -> bool {
    matches!(http_get(&format!("{url}/")), Ok((200, _)))
}

/// The one file named `name` under `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// Names of the containers the embedded receiver runs (its workspace is
/// `local`), with `running` if only the running ones.
fn service_containers(cenv: &ContainerEnv, running: bool) -> Vec<String> {
    cenv.podman_ps()
        .into_iter()
        .filter(|c| {
            c.labels.get("dev.devd.workspace").map(String::as_str) == Some("local")
                && (!running || c.state == "running")
        })
        .map(|c| c.name().to_owned())
        .collect()
}

#[test]
fn a_failed_deploy_points_at_the_log_that_holds_its_error_and_daemon_log_has_no_colours() {
    let fx = Fixture::from_example("demo");
    let cenv = demo(&fx, true);
    // The image builds; its container exits at once.
    let df = String::from_utf8(fx.read("services/api/Dockerfile")).unwrap();
    fx.write(
        "services/api/Dockerfile",
        df.replace(
            r#"CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]"#,
            r#"CMD ["sh", "-c", "echo api-cannot-start: no config >&2; exit 3"]"#,
        ),
    );
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let api = devd.wait_service("api", "failed", DEPLOY_TIMEOUT, |s| s.state == "failed");
    let error = api.error.clone().unwrap();
    assert!(error.starts_with("deploy of api failed"), "{error}");
    assert!(
        api.log_tail.iter().any(|l| l.contains("api-cannot-start")),
        "{api:?}"
    );

    // The table's pointer names a log, and that log holds the error: the
    // build's output, then the deploy attempt with the container's output.
    let human = devd.run(&["status"]);
    human.assert_success();
    let pointer = "the whole log: devd logs api --build";
    assert!(human.stdout.contains(pointer), "{}", human.stdout);
    let log = devd.run(&["logs", "api", "--build"]);
    log.assert_success();
    let text = &log.stdout;
    let build = text.find("STEP 1/").expect("the build's output");
    let deploy = text
        .find("devd: deploy of api failed")
        .expect("the deploy's error");
    assert!(
        build < deploy,
        "build output first, then the deploy:\n{text}"
    );
    assert!(text.contains("api-cannot-start: no config"), "{text}");

    // The other services deployed, and their logs say so.
    devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    let web = devd.run(&["logs", "web", "--build"]);
    assert!(web.stdout.contains("devd: deployed "), "{}", web.stdout);

    // daemon.log is a file, not a terminal: no colour codes.
    let log = find(fx.home(), "daemon.log").expect("daemon.log under DEVD_HOME");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("build event"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in {}:\n{text}",
        log.display()
    );
}

#[test]
fn failures_from_outside_the_worktree_are_retried_by_devd_retry_and_on_start_without_an_edit() {
    let fx = Fixture::from_example("demo");
    // No base image yet: every build fails (nothing can be pulled here).
    let cenv = demo(&fx, false);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let failed = wait_all(&devd, "failed", |s| s.state == "failed");
    for s in &failed {
        let e = s.error.as_deref().unwrap();
        assert!(e.starts_with(&format!("build of {} failed", s.name)), "{e}");
    }

    // The environment is fixed; `devd retry web` deploys web, and only it.
    cenv.build_busybox_base();
    let run = devd.run(&["retry", "web"]);
    run.assert_success();
    assert!(run.stdout.contains("retrying web"), "{}", run.stdout);
    let web = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    assert!(answers(web.url.as_deref().unwrap()));
    for name in ["api", "greeter"] {
        assert_eq!(devd.status().service(name).unwrap().state, "failed");
    }
    let run = devd.run(&["retry", "nosuch"]);
    assert!(!run.success());
    assert!(
        run.output().contains("api, greeter, web"),
        "{}",
        run.output()
    );

    // A new start deploys what is not deployed, with no edit: api and
    // greeter are built, web (its container stopped with the daemon) comes
    // back from its image.
    devd.stop().assert_success();
    let restarted = Instant::now();
    devd.start_wait();
    let all = wait_all(&devd, "deployed", |s| s.state == "deployed");
    let since_start = restarted.elapsed().as_millis() as u64;
    for s in &all {
        assert!(answers(s.url.as_deref().unwrap()), "{s:?}");
        assert_eq!(s.reused, s.name == "web", "{s:?}");
    }
    assert_eq!(all[2].url, web.url, "web's URL is stable across restarts");
    let status = devd.status();
    let boot = &status.raw["boot"];
    assert_eq!(boot["services"], 3, "{boot}");
    assert_eq!(boot["built"], 2, "{boot}");
    assert_eq!(boot["reused"], 1, "{boot}");
    // Counted from this start, not from the first one.
    let ms = boot["ms"].as_u64().unwrap_or_else(|| panic!("{boot}"));
    assert!(
        ms <= since_start,
        "boot {ms} ms, start {since_start} ms ago"
    );
}

#[test]
fn stop_keep_running_and_down_leave_containers_images_and_urls_as_they_say() {
    let fx = Fixture::from_example("demo");
    let cenv = demo(&fx, true);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let first = wait_all(&devd, "deployed", |s| s.state == "deployed");
    let urls: Vec<String> = first.iter().map(|s| s.url.clone().unwrap()).collect();
    assert!(urls.iter().all(|u| answers(u)));

    // --keep-running: the containers stay and answer on their own ports;
    // the stable URLs lived in the daemon.
    let run = devd.run(&["stop", "--keep-running"]);
    run.assert_success();
    assert!(
        run.stdout.contains("left running: api, greeter and web"),
        "{}",
        run.stdout
    );
    let running = cenv.podman_ps();
    let running: Vec<_> = running
        .iter()
        .filter(|c| c.labels.get("dev.devd.workspace").map(String::as_str) == Some("local"))
        .collect();
    assert_eq!(running.len(), 3, "{running:#?}");
    for c in &running {
        assert_eq!(c.state, "running", "{c:?}");
        let port = c.host_port(8080).unwrap();
        assert!(answers(&format!("http://127.0.0.1:{port}")), "{c:?}");
    }
    assert!(urls.iter().all(|u| !answers(u)), "no daemon, no URL");

    // A start takes them over as they are: same images, same URLs, no build.
    devd.start_wait();
    let adopted = wait_all(&devd, "deployed", |s| s.state == "deployed");
    for (a, f) in adopted.iter().zip(&first) {
        assert_eq!((&a.image, &a.url), (&f.image, &f.url), "{a:?}");
        assert_eq!(a.last_build_ms, None, "{a:?}");
        assert!(answers(a.url.as_deref().unwrap()));
    }
    let human = devd.run(&["status"]);
    assert!(
        human.stdout.contains("before this start"),
        "{}",
        human.stdout
    );
    assert_eq!(service_containers(&cenv, true).len(), 3);

    // A plain stop takes the containers with it, and says so.
    let started = Instant::now();
    let run = devd.run(&["stop"]);
    let took = started.elapsed();
    run.assert_success();
    eprintln!("`devd stop` with 3 services took {took:?}:\n{}", run.stdout);
    assert!(
        run.stdout
            .contains("stopped the containers of 3 services: api, greeter and web"),
        "{}",
        run.stdout
    );
    assert_eq!(service_containers(&cenv, false), Vec::<String>::new());
    assert!(urls.iter().all(|u| !answers(u)));

    // The next start runs them again from their images: no build.
    devd.start_wait();
    let back = wait_all(&devd, "deployed", |s| s.state == "deployed");
    for (b, f) in back.iter().zip(&first) {
        assert_eq!((&b.image, &b.url), (&f.image, &f.url), "{b:?}");
        assert!(b.reused, "{b:?}");
        assert!(answers(b.url.as_deref().unwrap()));
    }

    // `devd down` asks; without a terminal it refuses and removes nothing.
    let run = devd.run(&["down"]);
    assert!(!run.success());
    assert!(run.output().contains("--yes"), "{}", run.output());
    assert_eq!(service_containers(&cenv, true).len(), 3);

    // With --yes: containers, devd's images, the state, the URLs: gone.
    let state = find(fx.home(), "daemon.log").unwrap();
    let state = state.parent().unwrap().to_owned();
    let run = devd.run(&["down", "--yes"]);
    run.assert_success();
    for name in SERVICES {
        assert!(
            run.stdout
                .contains(&format!("removed image localhost/demo/{name}:devd-")),
            "{}",
            run.stdout
        );
    }
    assert_eq!(service_containers(&cenv, false), Vec::<String>::new());
    let images = cenv
        .output(
            "podman",
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
        )
        .unwrap();
    assert!(!images.contains("localhost/demo/"), "{images}");
    assert!(images.contains("busybox"), "other images stay: {images}");
    assert!(!state.exists(), "{} is still there", state.display());
    assert!(urls.iter().all(|u| !answers(u)));
    let status = devd.run(&["status"]);
    assert!(status.stdout.contains("not running"), "{}", status.stdout);
}

/// Two checkouts of the same repository on one machine, each with its own
/// `devd start` on the embedded default and one container storage: both
/// receivers call their workspace `local`, and `devd stop` in one took the
/// other's containers down with its own. Each receiver now labels and
/// finds only its own containers.
#[test]
fn stop_and_down_in_one_checkout_leave_another_checkouts_services_running() {
    let a = Fixture::from_example("demo");
    let b = Fixture::from_example("demo");
    let cenv = demo(&a, true);
    b.write_local_config(FAST_SYNC);
    let devd_a = a.devd().with_env(cenv.env());
    let devd_b = b.devd().with_env(cenv.env());
    devd_a.start_wait();
    devd_b.start_wait();
    wait_all(&devd_a, "deployed", |s| s.state == "deployed");
    let in_b = wait_all(&devd_b, "deployed", |s| s.state == "deployed");
    assert_eq!(service_containers(&cenv, true).len(), 6, "three each");

    let run = devd_a.run(&["stop"]);
    run.assert_success();
    assert!(
        run.stdout
            .contains("stopped the containers of 3 services: api, greeter and web"),
        "{}",
        run.stdout
    );
    assert_eq!(
        service_containers(&cenv, true).len(),
        3,
        "the other checkout's three run on"
    );
    for s in &in_b {
        assert!(answers(s.url.as_deref().unwrap()), "{s:?}");
    }

    // Started again, A runs its own three; B's `down` removes only B's.
    devd_a.start_wait();
    let in_a = wait_all(&devd_a, "deployed", |s| s.state == "deployed");
    devd_b.run(&["down", "--yes"]).assert_success();
    assert_eq!(service_containers(&cenv, true).len(), 3);
    for s in &in_a {
        assert!(answers(s.url.as_deref().unwrap()), "{s:?}");
    }
}

/// `devd stop` answers with what it stopped even when removing the
/// containers is slow (a loaded machine; here a `podman` on PATH that
/// takes 4 s over `rm`): the daemon gave its answer 2 s once it had begun
/// to stop, then cut it off, and `devd stop` said "devd is not running".
#[test]
fn stop_reports_what_it_stopped_when_podman_rm_is_slow() {
    let fx = Fixture::from_example("demo");
    let cenv = demo(&fx, true);
    let shim = fx.root().join("slow-podman");
    std::fs::create_dir_all(&shim).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v podman"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    devd_tests::repo::write_file(
        &shim.join("podman"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = rm ] && sleep 4 && break; done\nexec {} \"$@\"\n",
            real.trim()
        )
        .as_bytes(),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(shim.join("podman"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let mut env = cenv.env();
    env.push((
        "PATH".into(),
        format!(
            "{}:{}",
            shim.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    wait_all(&devd, "deployed", |s| s.state == "deployed");
    let run = devd.run(&["stop"]);
    run.assert_success();
    assert!(
        run.stdout
            .contains("stopped the containers of 3 services: api, greeter and web"),
        "{}",
        run.describe()
    );
    assert_eq!(service_containers(&cenv, false), Vec::<String>::new());
}

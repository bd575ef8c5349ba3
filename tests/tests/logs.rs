//! `devd logs`: a service's runtime log and its last build's log, streamed
//! from the receiver through the daemon's connection. Real builds and
//! containers (local backend: buildah, podman) on the example repository.

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::{FAST_SYNC, Fixture, poll_until, wait_until};
use std::time::Duration;

#[test]
fn logs_show_the_containers_output_and_a_failed_builds_log() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    fx.write_local_config(FAST_SYNC);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let mut url = None;
    wait_until(Duration::from_secs(120), "web deployed", || {
        url = devd
            .status()
            .service("web")
            .filter(|s| s.state == "deployed")
            .and_then(|s| s.url);
        url.is_some()
    });
    let url = url.unwrap();
    let (code, _) = http_get(&format!("{url}/index.html")).unwrap();
    assert_eq!(code, 200);

    // Runtime log: busybox httpd -v logs each request it served.
    let mut out = String::new();
    let seen = poll_until(Duration::from_secs(20), || {
        let run = devd.run(&["logs", "web"]);
        out = run.stdout.clone();
        run.success() && out.contains("response:200")
    });
    assert!(seen.is_some(), "`devd logs web` shows no request: {out:?}");

    // Follow: new output arrives while the command runs.
    let mut follow = devd.spawn(&["logs", "web", "--follow"]);
    std::thread::sleep(Duration::from_millis(500));
    let (code, _) = http_get(&format!("{url}/missing-page")).unwrap();
    assert_eq!(code, 404);
    let (stdout_path, _) = follow.log_paths();
    let stdout_path = stdout_path.to_owned();
    wait_until(
        Duration::from_secs(20),
        "the followed log shows the 404",
        || std::fs::read_to_string(&stdout_path).is_ok_and(|s| s.contains("response:404")),
    );
    assert!(follow.is_running(), "--follow keeps streaming");
    drop(follow);

    // A failed build's log.
    let df = String::from_utf8(fx.read("services/web/Dockerfile")).unwrap();
    fx.write(
        "services/web/Dockerfile",
        format!("{df}RUN /bin/missing-build-step\n"),
    );
    wait_until(Duration::from_secs(120), "web failed", || {
        devd.status()
            .service("web")
            .is_some_and(|s| s.state == "failed")
    });
    let run = devd.run(&["logs", "web", "--build"]);
    run.assert_success();
    assert!(run.stdout.contains("STEP"), "{}", run.stdout);
    assert!(
        run.stdout.contains("/bin/missing-build-step"),
        "{}",
        run.stdout
    );

    // Unknown service: a clear error naming the declared ones.
    let run = devd.run(&["logs", "nosuch"]);
    assert!(!run.success());
    let err = run.output();
    assert!(
        err.contains("nosuch") && err.contains("api, greeter, web"),
        "{err}"
    );
}

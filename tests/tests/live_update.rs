//! Live update with the local backend, for real: the embedded receiver
//! copies saves into the running podman container of `web` (the demo
//! repository, with a `[services.web.live]` section) instead of building
//! its image. The tests assert what the container serves, that it is the
//! same container and the same image (no image built), and what `devd
//! status` and `devd logs` report.
//!
//! The web image's entrypoint copies its pages from `/pristine` to `/www`
//! at every start, as an app that prepares its files at start would: a
//! restarted container has lost every live change unless devd applies
//! them again.

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::{Devd, Fixture, Service, poll_until, wait_until};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

const DOCKERFILE: &str = r#"FROM docker.io/library/busybox:stable
COPY www/ /pristine/
COPY conf/ /conf/
EXPOSE 8080
CMD ["sh", "-c", "rm -rf /www && cp -a /pristine /www && exec httpd -f -v -p 8080 -h /www"]
"#;

/// The demo with `web` live-updated: `www` syncs to `/www`, `conf` does
/// not, `www/*.lock` falls back, `run` commands as given.
fn fixture(run: &str) -> Fixture {
    fixture_with(run, DOCKERFILE)
}

/// [`fixture`] with another Dockerfile for `web`.
fn fixture_with(run: &str, dockerfile: &str) -> Fixture {
    let fx = Fixture::from_example("demo");
    let toml = String::from_utf8(fx.read("devd.toml")).unwrap();
    let toml = toml.replace(
        "expose = \"external\"\n",
        &format!(
            "expose = \"external\"\n[services.web.live]\nsync = [{{ from = \"www\", to = \"/www\" }}]\nfall_back_on = [\"www/*.lock\"]\n{run}"
        ),
    );
    assert!(toml.contains("[services.web.live]"), "{toml}");
    fx.write("devd.toml", toml);
    fx.write("services/web/Dockerfile", dockerfile);
    fx.write("services/web/conf/site.conf", "v1\n");
    fx.write("services/web/www/old.html", "old page\n");
    fx.commit_all_and_push("web: live update");
    // One scan per burst of saves: a test writes its bursts within
    // milliseconds.
    fx.write_local_config("[sync]\ndebounce_ms = 150\n");
    fx
}

struct Web<'a> {
    devd: Devd<'a>,
    cenv: &'a ContainerEnv,
    url: String,
}

impl Web<'_> {
    fn status(&self) -> Service {
        self.devd.status().service("web").expect("web in status")
    }

    /// The id of the one running web container (an old one is retired
    /// in the background after a deploy).
    #[track_caller]
    fn container(&self) -> String {
        let mut running = Vec::new();
        let one = poll_until(Duration::from_secs(30), || {
            running = self
                .cenv
                .podman_ps()
                .into_iter()
                .filter(|c| {
                    c.labels.get("dev.devd.service").map(String::as_str) == Some("web")
                        && c.state == "running"
                })
                .collect();
            running.len() == 1
        });
        assert!(one.is_some(), "one running web container: {running:?}");
        running[0].id.clone()
    }

    /// Images of demo/web in the local storage.
    fn images(&self) -> usize {
        self.cenv
            .output(
                "podman",
                &["images", "--format", "{{.ID}}", "localhost/demo/web"],
            )
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.url)).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// What the container has at `path` (not what the proxy serves).
    fn cat(&self, path: &str) -> Option<String> {
        let c = self.container();
        let run = self.cenv.run(
            "podman",
            &["exec", &c, "cat", path],
            Duration::from_secs(30),
        );
        run.success().then(|| run.stdout.clone())
    }

    /// Wait for a live update after `before` (its time) that left the
    /// service deployed.
    #[track_caller]
    fn wait_live(&self, what: &str, before: Option<u64>) -> Service {
        self.devd.wait_service("web", what, TIMEOUT, |s| {
            s.state == "deployed" && s.live_updated_ms.is_some() && s.live_updated_ms != before
        })
    }
}

fn start<'a>(fx: &'a Fixture, cenv: &'a ContainerEnv) -> Web<'a> {
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let web = devd.wait_service("web", "deployed", TIMEOUT, |s| s.state == "deployed");
    let url = web.url.clone().unwrap();
    Web { devd, cenv, url }
}

#[test]
fn saves_under_the_sync_rules_reach_the_same_container_and_survive_its_restart() {
    require_container_tools();
    let fx = fixture("");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let web = start(&fx, &cenv);
    let s0 = web.status();
    let (c0, images0) = (web.container(), web.images());
    assert_eq!(s0.live_files, 0);
    assert!(web.get("/").1.contains("web v1"));
    assert_eq!(web.get("/old.html").1, "old page\n");

    // An edit: served from the same container, no image built.
    fx.write("services/web/www/index.html", "<p>web live 1</p>\n");
    let s1 = web.wait_live("the edit live-updated", None);
    assert_eq!(web.get("/"), (200, "<p>web live 1</p>\n".into()));
    assert_eq!(web.container(), c0, "the same container serves the edit");
    assert_eq!(s1.image, s0.image, "no new image");
    assert_eq!(web.images(), images0, "no image built");
    assert_eq!(s1.live_files, 1);
    let human = web.devd.run(&["status"]);
    human.assert_success();
    assert!(
        human.stdout.contains("live: 1 file since image"),
        "{}",
        human.stdout
    );

    // A deletion: gone in the container.
    fx.remove("services/web/www/old.html");
    let s2 = web.wait_live("the deletion live-updated", s1.live_updated_ms);
    assert_eq!(web.get("/old.html").0, 404);
    assert_eq!(web.cat("/www/old.html"), None);
    assert_eq!(s2.live_files, 2);

    // A new file in a new directory, executable: present, with its mode.
    fx.write("services/web/www/new/deep/page.html", "deep page\n");
    fx.set_exec("services/web/www/new/deep/page.html", true);
    let s3 = web.wait_live("the new file live-updated", s2.live_updated_ms);
    assert_eq!(web.get("/new/deep/page.html"), (200, "deep page\n".into()));
    let mode = web.cenv.run(
        "podman",
        &["exec", &c0, "stat", "-c", "%a", "/www/new/deep/page.html"],
        Duration::from_secs(30),
    );
    assert_eq!(mode.stdout.trim(), "755", "{}", mode.describe());
    assert_eq!(s3.live_files, 3);
    assert_eq!(web.container(), c0);

    // The container restarts: its entrypoint resets /www to the image's
    // pages; devd applies the three changes again before it reports web
    // deployed, in the same container.
    let restart = web.cenv.run(
        "podman",
        &["restart", "-t", "1", &c0],
        Duration::from_secs(60),
    );
    restart.assert_success();
    let s4 = web.wait_live("the live difference applied again", s3.live_updated_ms);
    assert_eq!(s4.live_files, 3);
    assert_eq!(web.container(), c0);
    assert_eq!(web.get("/"), (200, "<p>web live 1</p>\n".into()));
    assert_eq!(web.get("/new/deep/page.html").0, 200);
    assert_eq!(web.get("/old.html").0, 404);
    assert_eq!(web.images(), images0);

    // A burst of saves: one live update with all of them.
    for i in 0..5 {
        fx.write(
            &format!("services/web/www/burst/{i}.html"),
            format!("burst {i}\n"),
        );
    }
    let s5 = web.wait_live("the burst live-updated", s4.live_updated_ms);
    for i in 0..5 {
        assert_eq!(
            web.get(&format!("/burst/{i}.html")),
            (200, format!("burst {i}\n")),
            "every file of the burst is there once the update is reported"
        );
    }
    assert_eq!(s5.live_files, 8);
    let log = web.devd.run(&["logs", "web", "--build"]);
    log.assert_success();
    assert!(
        log.stdout.contains("5 path(s)"),
        "one live update of the five files: {}",
        log.stdout
    );

    // A change outside the sync rules: one image build, which holds
    // every live change; the live difference is back to zero.
    fx.write("services/web/conf/site.conf", "v2\n");
    let s6 = web
        .devd
        .wait_service("web", "a new image deployed", TIMEOUT, |s| {
            s.state == "deployed" && s.image != s0.image
        });
    assert_eq!(s6.live_files, 0);
    assert!(s6.last_build_ms.is_some(), "{s6:?}");
    assert_eq!(web.images(), images0 + 1, "one image built");
    let c1 = web.container();
    assert_ne!(c1, c0, "a new container runs the new image");
    assert_eq!(web.get("/"), (200, "<p>web live 1</p>\n".into()));
    assert_eq!(web.get("/burst/4.html"), (200, "burst 4\n".into()));
    assert_eq!(web.get("/old.html").0, 404);

    // So does a change that matches fall_back_on, although it is under
    // a sync rule.
    fx.write("services/web/www/deps.lock", "locked\n");
    let s7 = web
        .devd
        .wait_service("web", "another image deployed", TIMEOUT, |s| {
            s.state == "deployed" && s.image != s6.image
        });
    assert_eq!(s7.live_files, 0);
    assert_eq!(web.images(), images0 + 2);
    assert_eq!(web.get("/deps.lock"), (200, "locked\n".into()));

    // And live update goes on from the new image.
    let c2 = web.container();
    fx.write("services/web/www/index.html", "<p>web live 2</p>\n");
    let s8 = web.wait_live("live update on the new image", s7.live_updated_ms);
    assert_eq!(s8.live_files, 1);
    assert_eq!(s8.image, s7.image);
    assert_eq!(web.container(), c2);
    assert_eq!(web.get("/"), (200, "<p>web live 2</p>\n".into()));
}

#[test]
fn a_failing_run_command_fails_the_service_with_its_output_and_the_next_save_recovers() {
    require_container_tools();
    let fx = fixture(
        "run = [{ cmd = [\"sh\", \"-c\", \"if grep -q BROKEN /www/index.html; then echo 'check: BROKEN marker in index.html' >&2; exit 3; fi; echo checked > /www/checked.txt\"], when = [\"www/*.html\"] }]\n",
    );
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let web = start(&fx, &cenv);
    let s0 = web.status();
    let c0 = web.container();

    // A command that fails: web is failed with its output.
    fx.write("services/web/www/index.html", "<p>BROKEN</p>\n");
    let failed = web
        .devd
        .wait_service("web", "failed", TIMEOUT, |s| s.state == "failed");
    let error = failed.error.clone().unwrap();
    assert!(error.contains("live update of web failed"), "{error}");
    assert!(
        failed
            .log_tail
            .iter()
            .any(|l| l.contains("check: BROKEN marker in index.html")),
        "the command's output: {failed:?}"
    );
    assert_eq!(failed.image, s0.image, "the image stays");
    assert_eq!(web.get("/checked.txt").0, 404, "the command did not finish");
    // `devd logs web` shows the command's output after the container's.
    let mut out = String::new();
    let shown = poll_until(Duration::from_secs(20), || {
        let run = web.devd.run(&["logs", "web"]);
        out = run.stdout.clone();
        run.success() && out.contains("[devd live]") && out.contains("BROKEN marker")
    });
    assert!(shown.is_some(), "devd logs web: {out}");

    // A save that does not touch the command's paths retries the failed
    // one too: still failing.
    fx.write("services/web/www/notes.txt", "notes\n");
    let still = web
        .devd
        .wait_service("web", "the retry failed again", TIMEOUT, |s| {
            s.state == "failed" && s.generation > failed.generation
        });
    assert!(still.log_tail.iter().any(|l| l.contains("BROKEN marker")));

    // The fix: deployed, the command ran, same container and image.
    fx.write("services/web/www/index.html", "<p>fixed</p>\n");
    let ok = web.wait_live("the fix live-updated", None);
    assert!(ok.error.is_none(), "{ok:?}");
    assert_eq!(ok.image, s0.image);
    assert_eq!(web.container(), c0);
    assert_eq!(web.get("/"), (200, "<p>fixed</p>\n".into()));
    assert_eq!(web.get("/checked.txt"), (200, "checked\n".into()));
    assert_eq!(web.get("/notes.txt"), (200, "notes\n".into()));
    assert_eq!(ok.live_files, 2);
    wait_until(
        Duration::from_secs(20),
        "the run output in devd logs",
        || {
            let run = web.devd.run(&["logs", "web"]);
            run.success() && run.stdout.contains("run [\"sh\"")
        },
    );
}

/// `examples/demo` as committed: the greeter declares live update, so a
/// save under its `www/` is served without an image build (what
/// `scripts/try.sh` shows), and `shared/` still builds it.
#[test]
fn the_demos_greeter_is_live_updated_and_its_shared_input_still_builds() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    fx.write_local_config(devd_tests::FAST_SYNC);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let g0 = devd.wait_service("greeter", "deployed", TIMEOUT, |s| s.state == "deployed");
    let url = g0.url.clone().unwrap();
    fx.write("services/greeter/www/index.html", "greeter v2\n");
    let g1 = devd.wait_service("greeter", "live-updated", TIMEOUT, |s| {
        s.state == "deployed" && s.live_files == 1
    });
    assert_eq!(g1.image, g0.image, "no image built");
    assert_eq!(
        http_get(&format!("{url}/")).unwrap(),
        (200, "greeter v2\n".into())
    );
    fx.write("shared/greeting.txt", "Hello from shared v2\n");
    let g2 = devd.wait_service("greeter", "rebuilt", TIMEOUT, |s| {
        s.state == "deployed" && s.image != g0.image
    });
    assert_eq!(g2.live_files, 0);
    assert_eq!(
        http_get(&format!("{url}/")).unwrap(),
        (200, "greeter v2\n".into())
    );
    assert_eq!(
        http_get(&format!("{url}/greeting.txt")).unwrap(),
        (200, "Hello from shared v2\n".into())
    );
}

/// `restart = "container"` restarts the same container after the copy
/// (its entrypoint sees the new file), without devd applying it again in
/// a loop; `restart = "process"` signals PID 1 (SIGHUP by default).
#[test]
fn restart_modes_restart_the_container_or_signal_its_process() {
    require_container_tools();
    // PID 1 is a shell: it notes the page at start and on SIGHUP; httpd
    // runs in the background.
    let dockerfile = r#"FROM docker.io/library/busybox:stable
COPY www/ /www/
COPY conf/ /conf/
EXPOSE 8080
CMD ["sh", "-c", "cp /www/index.html /www/started.html; httpd -p 8080 -h /www; trap 'cp /www/index.html /www/signalled.html' HUP; while true; do sleep 1 & wait $!; done"]
"#;
    let fx = fixture_with("restart = \"container\"\n", dockerfile);
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let web = start(&fx, &cenv);
    let s0 = web.status();
    let c0 = web.container();
    fx.write("services/web/www/index.html", "<p>v2</p>\n");
    let s1 = web.wait_live("the copy and the restart", None);
    assert_eq!(web.container(), c0, "the same container, restarted");
    assert_eq!(s1.image, s0.image);
    assert_eq!(s1.live_files, 1);
    assert_eq!(web.get("/started.html"), (200, "<p>v2</p>\n".into()));

    // Now signal the process instead: the catalog changed, so one image
    // build first.
    let toml = String::from_utf8(fx.read("devd.toml")).unwrap();
    fx.write(
        "devd.toml",
        toml.replace("restart = \"container\"", "restart = \"process\""),
    );
    let s2 = web
        .devd
        .wait_service("web", "rebuilt for the new catalog", TIMEOUT, |s| {
            s.state == "deployed" && s.image != s0.image
        });
    assert_eq!(s2.live_files, 0);
    let c1 = web.container();
    fx.write("services/web/www/index.html", "<p>v3</p>\n");
    web.wait_live("the copy and the signal", s2.live_updated_ms);
    assert_eq!(web.container(), c1, "signalled, not restarted");
    let mut last = (0, String::new());
    let seen = poll_until(Duration::from_secs(20), || {
        last = web.get("/signalled.html");
        last == (200, "<p>v3</p>\n".to_string())
    });
    assert!(seen.is_some(), "PID 1 got SIGHUP after the copy: {last:?}");
    assert_eq!(web.get("/started.html"), (200, "<p>v2</p>\n".into()));
}

/// An image without `rm` (FROM scratch, only a static httpd): a deletion
/// cannot be live-updated, which is said once and builds the image
/// instead; edits (a copy, which needs nothing in the image) still are.
#[test]
fn a_container_without_rm_builds_the_deletion_and_says_why() {
    require_container_tools();
    let dockerfile = r#"FROM docker.io/library/busybox:stable AS base
FROM scratch
COPY --from=base /bin/busybox /bin/httpd
COPY www/ /www/
COPY conf/ /conf/
EXPOSE 8080
CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
"#;
    let fx = fixture_with("", dockerfile);
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let web = start(&fx, &cenv);
    let s0 = web.status();
    assert_eq!(web.get("/old.html"), (200, "old page\n".into()));
    fx.remove("services/web/www/old.html");
    let s1 = web
        .devd
        .wait_service("web", "the deletion built", TIMEOUT, |s| {
            s.state == "deployed" && s.image != s0.image
        });
    assert_eq!(s1.live_files, 0);
    assert_eq!(web.get("/old.html").0, 404);
    let log = web.devd.run(&["logs", "web"]);
    log.assert_success();
    assert!(
        log.stdout.contains("has no `rm`") && log.stdout.contains("building images instead"),
        "{}",
        log.stdout
    );
    // The new image: an edit is copied in again.
    let c1 = web.container();
    fx.write("services/web/www/index.html", "<p>copied</p>\n");
    let s2 = web.wait_live("the edit live-updated", None);
    assert_eq!(s2.image, s1.image);
    assert_eq!(web.container(), c1);
    assert_eq!(web.get("/"), (200, "<p>copied</p>\n".into()));
}

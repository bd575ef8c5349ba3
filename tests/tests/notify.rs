//! Desktop notifications, for real: the example repository is built with
//! buildah and served with podman (embedded default, local backend), and
//! devd's notifications go to dunst on a private D-Bus session bus with
//! an Xvfb display. The tests read every `Notify` call on that bus (with
//! the id dunst answered) and what dunst shows and keeps (`dunstctl`).

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::desktop::{Desktop, Notification, nowhere_bus_address, require_desktop_tools};
use devd_tests::{FAST_SYNC, Fixture, Service, poll_until, wait_until};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
const SERVICES: [&str; 3] = ["api", "greeter", "web"];

/// Wait until the notifications seen on the bus satisfy `pred`.
#[track_caller]
fn wait_notifications(
    desktop: &Desktop,
    what: &str,
    pred: impl Fn(&[Notification]) -> bool,
) -> Vec<Notification> {
    let mut last = Vec::new();
    let ok = poll_until(Duration::from_secs(30), || {
        last = desktop.notifications();
        pred(&last)
    });
    assert!(
        ok.is_some(),
        "notifications: {what} not seen within 30 s; seen: {last:#?}"
    );
    last
}

fn get(url: &str) -> String {
    let (code, body) = http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(code, 200, "GET {url}: {body}");
    body
}

/// The daemon's log (`DEVD_HOME/repos/<repo>/daemon.log`).
fn daemon_log(fx: &Fixture) -> String {
    let repos = fx.home().join("repos");
    let rd = std::fs::read_dir(&repos).unwrap_or_else(|e| panic!("read {}: {e}", repos.display()));
    rd.filter_map(Result::ok)
        .map(|e| e.path().join("daemon.log"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Warnings in the daemon log that are about notifications.
fn notification_warnings(fx: &Fixture) -> Vec<String> {
    daemon_log(fx)
        .lines()
        .filter(|l| l.contains(" WARN ") && l.to_lowercase().contains("notification"))
        .map(str::to_owned)
        .collect()
}

/// Images of `service` built so far (the local backend logs each build).
fn builds_of(fx: &Fixture, service: &str) -> usize {
    let needle = format!(": built service={service} ");
    daemon_log(fx).matches(&needle).count()
}

/// A fake `xdg-open` (and macOS `open`) that records the URLs it is
/// asked to open in `<root>/opened.txt`; returns (its directory, that file).
fn fake_opener(root: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("fake-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let record = root.join("opened.txt");
    for name in ["xdg-open", "open"] {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n",
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, record)
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )
}

/// What devd escapes in a body (servers read markup there).
fn markup(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short_digest(s: &Service) -> String {
    let d = s
        .digest
        .as_deref()
        .expect("a deployed service has a digest");
    d.trim_start_matches("sha256:")[..12].to_owned()
}

#[test]
fn a_deploy_notifies_with_the_service_and_its_url_once_per_deploy_and_a_click_opens_it() {
    require_container_tools();
    require_desktop_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let desktop = Desktop::start(fx.root());
    let (fake_bin, opened) = fake_opener(fx.root());
    // Bubbles stay until closed, so the test can count and click them.
    fx.write_local_config(&format!("{FAST_SYNC}[notifications]\ntimeout_ms = 0\n"));
    let mut env = cenv.env();
    env.extend(desktop.env());
    env.push(("PATH".into(), path_with(&fake_bin)));
    let devd = fx.devd().with_env(env);
    devd.start_wait();

    // Every service deployed: one bubble each, saying name, URL, digest.
    let deployed: Vec<Service> = SERVICES
        .iter()
        .map(|n| devd.wait_service(n, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed"))
        .collect();
    wait_notifications(&desktop, "one per deployed service, answered", |n| {
        n.len() >= 3 && n.iter().all(|n| n.id.is_some())
    });
    std::thread::sleep(Duration::from_secs(1));
    let notes = desktop.notifications();
    assert_eq!(notes.len(), 3, "exactly one per service: {notes:#?}");
    let mut ids = Vec::new();
    for s in &deployed {
        let url = s.url.as_deref().expect("every demo service has a URL");
        let n = notes
            .iter()
            .find(|n| n.summary.starts_with(&format!("{} deployed in ", s.name)))
            .unwrap_or_else(|| panic!("no notification for {}: {notes:#?}", s.name));
        assert_eq!(n.app_name, "devd");
        assert!(n.body.contains(url), "the URL is in the body: {n:#?}");
        assert!(
            n.body.contains(&short_digest(s)),
            "the short digest is in the body: {n:#?}"
        );
        assert_eq!(n.replaces_id, 0, "a service's first bubble is new");
        assert_eq!(n.action_keys(), ["default", "open"], "{n:#?}");
        assert_eq!(n.expire_timeout, 0, "timeout_ms = 0: until dismissed");
        ids.push(n.id.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one bubble per service: {notes:#?}");
    assert_eq!(desktop.displayed(), 3, "dunst shows the three bubbles");

    // dunst got them as sent: closed bubbles go to its history.
    desktop.close_all();
    let history = desktop.history();
    for s in &deployed {
        let url = s.url.as_deref().unwrap();
        assert!(
            history.iter().any(|h| h.app_name == "devd"
                && h.summary.starts_with(&format!("{} deployed in ", s.name))
                && h.body.contains(url)),
            "dunstctl history lacks {} with {url}: {history:#?}",
            s.name
        );
    }

    // Saving one file twice in a row: one bubble per deploy (never per
    // save, never for queued/started), each replacing web's previous one.
    let web0 = deployed.iter().find(|s| s.name == "web").unwrap().clone();
    let web_url = web0.url.clone().unwrap();
    let web_id = notes
        .iter()
        .find(|n| n.summary.starts_with("web deployed"))
        .and_then(|n| n.id)
        .unwrap();
    let before = notes.len();
    let builds_before = builds_of(&fx, "web");
    let page = String::from_utf8(fx.read("services/web/www/index.html")).unwrap();
    fx.write(
        "services/web/www/index.html",
        page.replace("web v1", "web v2"),
    );
    std::thread::sleep(Duration::from_millis(5));
    fx.write(
        "services/web/www/index.html",
        page.replace("web v1", "web v3"),
    );
    wait_until(DEPLOY_TIMEOUT, "web serves the second save", || {
        http_get(&web_url).is_ok_and(|(_, b)| b.contains("web v3"))
    });
    let web1 = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    let builds = builds_of(&fx, "web") - builds_before;
    assert!(builds >= 1);
    wait_notifications(&desktop, "one per web deploy", |n| {
        n.len() >= before + builds && n.iter().all(|n| n.id.is_some())
    });
    std::thread::sleep(Duration::from_secs(1));
    let notes = desktop.notifications().split_off(before);
    assert_eq!(
        notes.len(),
        builds,
        "one notification per deploy ({builds} builds of web), not per save: {notes:#?}"
    );
    let mut replaces = web_id;
    for n in &notes {
        assert!(n.summary.starts_with("web deployed in "), "{n:#?}");
        assert!(n.body.contains(&web_url), "{n:#?}");
        assert_eq!(n.replaces_id, replaces, "replaces web's previous bubble");
        replaces = n.id.unwrap();
    }
    assert!(
        notes.last().unwrap().body.contains(&short_digest(&web1)),
        "the last bubble has the deployed digest: {notes:#?}"
    );
    assert_eq!(desktop.displayed(), 1, "one bubble for web");

    // Clicking the bubble opens the service's URL (xdg-open, faked here).
    desktop.click(0);
    wait_until(
        Duration::from_secs(15),
        "the click runs xdg-open with web's URL",
        || std::fs::read_to_string(&opened).is_ok_and(|t| t.contains(&web_url)),
    );
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        format!("{web_url}\n")
    );

    // A failed build notifies with its error line and where the log is,
    // replacing web's bubble.
    let before = desktop.notifications().len();
    let df = String::from_utf8(fx.read("services/web/Dockerfile")).unwrap();
    fx.write(
        "services/web/Dockerfile",
        format!("{df}\nRUN /bin/false-does-not-exist\n"),
    );
    let failed = devd.wait_service("web", "failed", DEPLOY_TIMEOUT, |s| s.state == "failed");
    let error = failed.error.clone().unwrap();
    let error_line = error.lines().next().unwrap().trim().to_owned();
    let notes = wait_notifications(&desktop, "the failure", |n| {
        n[before..].iter().any(|n| n.summary == "web: build failed")
    });
    let n = &notes[before..];
    assert_eq!(n.len(), 1, "one bubble for the failure: {n:#?}");
    let n = &n[0];
    assert!(
        n.body.contains(&markup(&error_line)),
        "the error line {error_line:?} is in the body: {n:#?}"
    );
    assert!(
        n.body.contains("false-does-not-exist"),
        "the failing step is named: {n:#?}"
    );
    assert!(n.body.contains("devd logs web --build"), "{n:#?}");
    assert_eq!(n.replaces_id, replaces, "replaces web's bubble");
    assert!(n.action_keys().is_empty(), "nothing to open: {n:#?}");
    assert_eq!(desktop.displayed(), 1);
    assert!(
        get(&web_url).contains("web v3"),
        "the old container serves on"
    );
    assert!(
        notification_warnings(&fx).is_empty(),
        "{:#?}",
        notification_warnings(&fx)
    );
}

#[test]
fn without_a_notification_server_deploys_complete_and_the_daemon_warns_once() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    fx.write_local_config(FAST_SYNC);
    let mut env = cenv.env();
    env.push((
        "DBUS_SESSION_BUS_ADDRESS".into(),
        nowhere_bus_address(fx.root()),
    ));
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    for n in SERVICES {
        devd.wait_service(n, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    }
    wait_until(
        Duration::from_secs(30),
        "the daemon warns that notifications are unavailable",
        || !notification_warnings(&fx).is_empty(),
    );
    // More deploys, more failed attempts: still one warning.
    let web = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    fx.write("services/web/www/index.html", "<h1>web v4</h1>\n");
    let web1 = devd.wait_service("web", "redeployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed" && s.image != web.image
    });
    assert!(get(web1.url.as_deref().unwrap()).contains("web v4"));
    std::thread::sleep(Duration::from_secs(1));
    let warnings = notification_warnings(&fx);
    assert_eq!(warnings.len(), 1, "exactly one warning: {warnings:#?}");
    assert!(
        warnings[0].contains("desktop notifications unavailable"),
        "{warnings:#?}"
    );
    let st = devd.status();
    assert_eq!(st.state, "idle", "the daemon goes on: {:#?}", st.raw);
}

#[test]
fn notifications_can_be_turned_off() {
    require_container_tools();
    require_desktop_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let desktop = Desktop::start(fx.root());
    fx.write_local_config(&format!("{FAST_SYNC}[notifications]\nenabled = false\n"));
    let mut env = cenv.env();
    env.extend(desktop.env());
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    for n in SERVICES {
        devd.wait_service(n, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    }
    let web = devd.wait_service("web", "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    fx.write("services/web/www/index.html", "<h1>web v5</h1>\n");
    devd.wait_service("web", "redeployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed" && s.image != web.image
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(desktop.notifications(), [], "enabled = false sends none");
    assert_eq!(desktop.displayed(), 0);
    assert!(notification_warnings(&fx).is_empty());
}

/// A save the greeter copies into its running container (the demo
/// declares live update for its `www/`): a bubble saying so, with the
/// number of files, and no build.
#[test]
fn a_live_update_notifies_with_its_time_and_file_count() {
    require_container_tools();
    require_desktop_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let desktop = Desktop::start(fx.root());
    fx.write_local_config(&format!("{FAST_SYNC}[notifications]\ntimeout_ms = 0\n"));
    let mut env = cenv.env();
    env.extend(desktop.env());
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    let g0 = devd.wait_service("greeter", "deployed", DEPLOY_TIMEOUT, |s| {
        s.state == "deployed"
    });
    wait_notifications(&desktop, "the greeter's deploy", |n| {
        n.iter()
            .any(|n| n.summary.starts_with("greeter deployed in "))
    });
    let builds = builds_of(&fx, "greeter");
    fx.write("services/greeter/www/index.html", "greeter v2\n");
    fx.write("services/greeter/www/new.html", "new\n");
    let notes = wait_notifications(&desktop, "the live update", |n| {
        n.iter()
            .any(|n| n.summary.starts_with("greeter live-updated in "))
    });
    let n = notes
        .iter()
        .find(|n| n.summary.starts_with("greeter live-updated in "))
        .unwrap();
    assert!(n.summary.ends_with("(2 files)"), "{n:#?}");
    assert!(n.body.contains("no image built"), "{n:#?}");
    let g1 = devd.wait_service("greeter", "live", DEPLOY_TIMEOUT, |s| s.live_files == 2);
    assert_eq!(g1.image, g0.image);
    assert_eq!(builds_of(&fx, "greeter"), builds, "no image built");
    assert_eq!(get(&format!("{}/new.html", g0.url.unwrap())), "new\n");
}

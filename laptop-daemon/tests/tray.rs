//! The tray icon on a real, private D-Bus session bus (`dbus-daemon` with
//! a configuration of its own), with a stand-in StatusNotifierWatcher that
//! records who registers: the item registers, its title and icon follow
//! the daemon's state, its menu lists the services with their URLs, and
//! clicking Quit through the menu's D-Bus interface (what a panel does)
//! cancels the daemon's token.
//!
//! The tray connects to the bus in `DBUS_SESSION_BUS_ADDRESS`, so the tray
//! side runs in a child process of this test binary (`tray_child`, which
//! only acts when the parent sets `DEVD_TRAY_TEST_DIR`); the parent
//! inspects it with `busctl`, like a panel would.
#![cfg(all(feature = "tray", target_os = "linux"))]

use devd::status::{DaemonState, ServiceView, Status};
use devd_protocol::event::ServiceState;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A private session bus; killed on drop.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Self {
        let conf = dir.join("session.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                std::env::temp_dir().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--print-address", "--nofork"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian: apt-get install dbus)");
        let mut address = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        Self {
            child,
            address: address.trim().to_owned(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child process, killed if the test fails before it ends.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The stand-in StatusNotifierWatcher (what KDE's or GNOME's panel runs).
struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(&self, service: &str) {
        self.items.lock().unwrap().push(service.to_owned());
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// `busctl --json=short` on the private bus.
fn busctl(bus: &str, args: &[&str]) -> Value {
    let out = Command::new("busctl")
        .arg(format!("--address={bus}"))
        .arg("--json=short")
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("busctl (Debian: part of systemd)");
    assert!(
        out.status.success(),
        "busctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn item_property(bus: &str, item: &str, name: &str) -> Value {
    busctl(
        bus,
        &[
            "get-property",
            item,
            "/StatusNotifierItem",
            "org.kde.StatusNotifierItem",
            name,
        ],
    )["data"]
        .clone()
}

/// The menu's items as (id, label, enabled), from dbusmenu's GetLayout.
fn menu(bus: &str, item: &str) -> Vec<(i64, String, bool)> {
    let layout = busctl(
        bus,
        &[
            "call",
            item,
            "/MenuBar",
            "com.canonical.dbusmenu",
            "GetLayout",
            "iias",
            "0",
            "-1",
            "0",
        ],
    );
    // (u (ia{sv}av)): the root's children are variants of (ia{sv}av).
    let children = layout["data"][1][2].as_array().cloned().unwrap_or_default();
    children
        .iter()
        .map(|c| {
            let node = &c["data"];
            let props = &node[1];
            (
                node[0].as_i64().unwrap(),
                props["label"]["data"].as_str().unwrap_or("").to_owned(),
                props["enabled"]["data"].as_bool().unwrap_or(true),
            )
        })
        .filter(|(_, label, _)| !label.is_empty())
        .collect()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Prints a log file when dropped during a panic.
struct ShowOnPanic(PathBuf);

impl Drop for ShowOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} -----\n{}",
                self.0.display(),
                std::fs::read_to_string(&self.0).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tray_registers_follows_the_state_lists_urls_and_quit_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(dir.path());
    let items = Arc::new(Mutex::new(Vec::new()));
    let _watcher = zbus::connection::Builder::address(bus.address.as_str())
        .name("org.kde.StatusNotifierWatcher")
        .serve_at(
            "/StatusNotifierWatcher",
            Watcher {
                items: items.clone(),
            },
        )
        .build()
        .await
        .expect("the stand-in watcher on the private bus");

    // The child's debug log (zbus's warnings included) goes to a file,
    // shown only if the test fails: a passing run leaves the output clean.
    let child_log = dir.path().join("tray-child.log");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["tray_child", "--exact", "--ignored", "--nocapture"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("DEVD_TRAY_TEST_DIR", dir.path())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&child_log).unwrap())
        .spawn()
        .unwrap();
    let addr = bus.address.clone();
    let fail_flag = dir.path().join("fail");
    tokio::task::spawn_blocking(move || {
        let _log = ShowOnPanic(child_log);
        let mut child = KillOnDrop(Some(child));
        let item = wait_for("the tray item to register", || {
            items.lock().unwrap().first().cloned()
        });
        assert!(item.starts_with("org.kde.StatusNotifierItem-"), "{item}");
        // api is building: so is the icon.
        assert_eq!(
            item_property(&addr, &item, "Title"),
            "devd: building (demo)"
        );
        assert_eq!(item_property(&addr, &item, "IconName"), "system-run");
        assert_eq!(item_property(&addr, &item, "Status"), "Active");
        let m = menu(&addr, &item);
        let labels: Vec<(&str, bool)> = m.iter().map(|(_, l, e)| (l.as_str(), *e)).collect();
        assert_eq!(
            labels,
            [
                ("devd: building (demo)", false),
                ("api (building)", false),
                ("web (deployed): http://127.0.0.1:4711", true),
                ("Quit devd", true),
            ]
        );

        // The daemon sees api fail: the tray follows.
        std::fs::write(&fail_flag, b"").unwrap();
        wait_for("the failed state on the tray", || {
            (item_property(&addr, &item, "Title") == "devd: failed (demo)").then_some(())
        });
        assert_eq!(item_property(&addr, &item, "IconName"), "dialog-error");
        assert_eq!(item_property(&addr, &item, "Status"), "NeedsAttention");
        let m = menu(&addr, &item);
        assert!(m.iter().any(|(_, l, _)| l == "api (failed)"), "{m:?}");

        // Quit, clicked the way a panel clicks: the daemon's token.
        let quit = m.iter().find(|(_, l, _)| l == "Quit devd").unwrap().0;
        busctl(
            &addr,
            &[
                "call",
                &item,
                "/MenuBar",
                "com.canonical.dbusmenu",
                "Event",
                "isvu",
                &quit.to_string(),
                "clicked",
                "i",
                "0",
                "0",
            ],
        );
        let out = child.0.take().unwrap().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CANCELLED BY QUIT"),
            "the tray's Quit must cancel the daemon ({}):\n{stdout}",
            out.status
        );
    })
    .await
    .unwrap();
}

/// The daemon side: a tray on the daemon's status until Quit cancels it.
#[test]
#[ignore = "run by the test above, in a child process on a private bus"]
fn tray_child() {
    let Some(dir) = std::env::var_os("DEVD_TRAY_TEST_DIR") else {
        return;
    };
    let fail_flag = PathBuf::from(dir).join("fail");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let service = |name: &str, state: ServiceState, url: Option<&str>| ServiceView {
        name: name.into(),
        state,
        url: url.map(Into::into),
        ..Default::default()
    };
    let status = Arc::new(Mutex::new(Status {
        state: DaemonState::Idle,
        workdir: "/home/me/demo".into(),
        services: vec![
            service("api", ServiceState::Building, None),
            service("web", ServiceState::Deployed, Some("http://127.0.0.1:4711")),
        ],
        ..Default::default()
    }));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        devd::tray::spawn(status.clone(), cancel.clone(), &tracker);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cancel.is_cancelled() {
            assert!(Instant::now() < deadline, "Quit never came");
            if fail_flag.exists() {
                status.lock().unwrap().services[0].state = ServiceState::Failed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the tray task ends after the cancel");
        println!("CANCELLED BY QUIT");
    });
}

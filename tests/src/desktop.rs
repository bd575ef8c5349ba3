//! A private desktop session for notification tests: a D-Bus session bus
//! of its own (`dbus-daemon --session` with a private configuration),
//! an `Xvfb` display, and `dunst` as the notification server on both.
//!
//! What devd sends is observed two ways: every `Notify` call on the bus
//! with the id the server answered (`busctl monitor --json=short`, like
//! `dbus-monitor`), and what dunst itself shows and keeps (`dunstctl`).
//! Every process is stopped on drop (SIGTERM, then SIGKILL), also when the
//! test panics; a panicking test prints their logs.

use crate::process::find_program;
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian packages these fixtures need: `dbus` (dbus-daemon,
/// dbus-send), `xvfb`, `dunst` (with `dunstctl`), and `systemd` for
/// `busctl` (the bus monitor here, `dunstctl history` there).
pub const DESKTOP_PACKAGES: &str = "dbus xvfb dunst systemd";

const TOOLS: [&str; 6] = [
    "dbus-daemon",
    "dbus-send",
    "Xvfb",
    "dunst",
    "dunstctl",
    "busctl",
];

/// Panic with the packages to install unless the tools are all present.
#[track_caller]
pub fn require_desktop_tools() {
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|t| find_program(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the notification tests need a private desktop session; missing: {}.\n\
         Install it with\n    apt-get install --no-install-recommends {DESKTOP_PACKAGES}\n\
         (scripts/test.sh does this).",
        missing.join(", ")
    );
}

/// One `Notify` call seen on the bus, and the id the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub app_name: String,
    /// The id this notification asked to replace (0: a new bubble).
    pub replaces_id: u32,
    pub icon: String,
    pub summary: String,
    pub body: String,
    /// `[key, label, key, label, …]`.
    pub actions: Vec<String>,
    /// milliseconds; -1: the server's default, 0: never.
    pub expire_timeout: i32,
    /// The id the server gave it (`None` until the reply is seen).
    pub id: Option<u32>,
}

impl Notification {
    /// The action keys (`default`, `open`, …).
    pub fn action_keys(&self) -> Vec<&str> {
        self.actions.iter().step_by(2).map(String::as_str).collect()
    }
}

/// A bubble dunst has closed and keeps in its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub id: i64,
    pub app_name: String,
    pub summary: String,
    pub body: String,
}

/// A process of the session; SIGTERM then SIGKILL on drop.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &'static str, cmd: &mut Command) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panic with its logs if it exited.
    #[track_caller]
    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited ({st})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Wait until `ready(stdout, stderr)` gives a value.
    #[track_caller]
    fn wait_for<T>(&mut self, what: &str, mut ready: impl FnMut(&str, &str) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = ready(&self.stdout(), &self.stderr()) {
                return v;
            }
            self.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} did not get ready ({what}) within 20 s\n--- stderr ---\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dbus-daemon + Xvfb + dunst + a bus monitor, private to one test.
#[derive(Debug)]
pub struct Desktop {
    dir: PathBuf,
    address: String,
    display: String,
    /// Stopped in this order: monitor, dunst, Xvfb, bus.
    procs: Vec<Proc>,
}

impl Desktop {
    /// Start the session under `<root>/desktop/`. Panics (naming the
    /// packages) if the tools are missing.
    #[track_caller]
    pub fn start(root: &Path) -> Self {
        require_desktop_tools();
        let dir = root.join("desktop");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = dir.canonicalize().expect("canonicalize the desktop dir");
        // A session bus of its own: no service activation (nothing
        // starts a notification server behind the test's back), anyone
        // may own names and monitor.
        let conf = dir.join("session.conf");
        let sock_dir = short_socket_dir();
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
                sock_dir.display()
            ),
        )
        .expect("write the bus configuration");
        let mut procs = Vec::new();
        let mut bus = Proc::spawn(
            &dir,
            "dbus-daemon",
            Command::new("dbus-daemon")
                .arg(format!("--config-file={}", conf.display()))
                .args(["--print-address", "--nofork"]),
        );
        let address = bus.wait_for("its address", |out, _| {
            out.lines()
                .next()
                .filter(|l| l.starts_with("unix:"))
                .map(str::to_owned)
        });
        procs.push(bus);
        // Xvfb picks a free display number and writes it to fd 1.
        let mut xvfb = Proc::spawn(
            &dir,
            "Xvfb",
            Command::new("Xvfb").args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "640x480x24",
            ]),
        );
        let display = xvfb.wait_for("its display number", |out, _| {
            out.trim()
                .parse::<u32>()
                .ok()
                .filter(|_| out.ends_with('\n'))
                .map(|n| format!(":{n}"))
        });
        procs.push(xvfb);
        // dunst: show notifications at once, also when nobody touched the
        // (virtual) keyboard for a while.
        let dunstrc = dir.join("dunstrc");
        std::fs::write(
            &dunstrc,
            "[global]\n    idle_threshold = 0\n    history_length = 100\n    notification_limit = 0\n",
        )
        .expect("write dunstrc");
        let mut dunst = Proc::spawn(
            &dir,
            "dunst",
            Command::new("dunst")
                .arg("-config")
                .arg(&dunstrc)
                .env("DISPLAY", &display)
                .env("DBUS_SESSION_BUS_ADDRESS", &address),
        );
        let mut me = Self {
            dir: dir.clone(),
            address,
            display,
            procs,
        };
        let started = Instant::now();
        while !me.server_running() {
            dunst.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "dunst did not take org.freedesktop.Notifications within 20 s\n{}",
                dunst.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me.procs.push(dunst);
        let mut monitor = Proc::spawn(
            &dir,
            "busctl-monitor",
            Command::new("busctl")
                .arg(format!("--address={}", me.address))
                .args(["monitor", "--json=short"]),
        );
        monitor.wait_for("monitoring", |_, err| {
            err.contains("Monitoring bus message stream").then_some(())
        });
        me.procs.push(monitor);
        me
    }

    /// `DBUS_SESSION_BUS_ADDRESS` and `DISPLAY` of this session, for devd.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.address.clone()),
            ("DISPLAY".into(), self.display.clone()),
        ]
    }

    /// The bus address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("dunstctl")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("DISPLAY", &self.display)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run dunstctl: {e}"));
        assert!(
            out.status.success(),
            "dunstctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Someone owns `org.freedesktop.Notifications`.
    fn server_running(&self) -> bool {
        Command::new("dbus-send")
            .arg(format!("--bus={}", self.address))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.Notifications",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true"))
    }

    /// Every `Notify` call so far, in order, with the server's ids.
    pub fn notifications(&self) -> Vec<Notification> {
        let text = std::fs::read_to_string(self.dir.join("busctl-monitor.stdout"))
            .expect("read the bus monitor's output");
        parse_monitor(&text)
    }

    /// How many bubbles dunst shows now.
    pub fn displayed(&self) -> u32 {
        let out = self.ctl(&["count", "displayed"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("dunstctl count displayed prints a number")
    }

    /// Close every bubble (dunst moves them to its history).
    pub fn close_all(&self) {
        self.ctl(&["close-all"]);
    }

    /// Click the bubble at position `n` (0: the first shown): dunst
    /// invokes its default action.
    pub fn click(&self, n: u32) {
        self.ctl(&["action", &n.to_string()]);
    }

    /// `dunstctl history`: the closed bubbles, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let out = self.ctl(&["history"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dunstctl history is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let field = |n: &Value, k: &str| n.get(k).and_then(|f| f.get("data")).cloned();
        v["data"][0]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let s = |k| {
                    field(n, k)
                        .and_then(|d| d.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                HistoryEntry {
                    id: field(n, "id").and_then(|d| d.as_i64()).unwrap_or(-1),
                    app_name: s("appname"),
                    summary: s("summary"),
                    body: s("body"),
                }
            })
            .collect()
    }

    /// Print the session's logs (for a failing test).
    pub fn dump(&self) {
        eprintln!("===== desktop session {} =====", self.dir.display());
        for p in &self.procs {
            eprintln!(
                "----- {} -----\n{}{}",
                p.name,
                crate::process::tail(&p.stdout(), 60),
                crate::process::tail(&p.stderr(), 60)
            );
        }
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }
}

/// A directory for the bus socket whose path fits in `sun_path` (108
/// bytes), wherever the test's temporary directory is.
fn short_socket_dir() -> PathBuf {
    let d = std::env::temp_dir().join("devd-tests-dbus");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// A `DBUS_SESSION_BUS_ADDRESS` where nothing listens: a session without
/// any notification server.
pub fn nowhere_bus_address(root: &Path) -> String {
    format!(
        "unix:path={}",
        root.join("no-session-bus").join("bus").display()
    )
}

/// `Notify` calls and their replies in `busctl monitor --json=short`
/// output.
fn parse_monitor(text: &str) -> Vec<Notification> {
    let mut calls: Vec<(String, u64, Notification)> = Vec::new();
    let mut replies: Vec<(String, u64, u32)> = Vec::new();
    for line in text.lines() {
        let Ok(m) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
        let data = &m["payload"]["data"];
        match s("type") {
            "method_call"
                if s("member") == "Notify" && s("interface") == "org.freedesktop.Notifications" =>
            {
                let d = |i: usize| &data[i];
                let st = |i: usize| d(i).as_str().unwrap_or("").to_owned();
                calls.push((
                    s("sender").to_owned(),
                    m["cookie"].as_u64().unwrap_or(0),
                    Notification {
                        app_name: st(0),
                        replaces_id: d(1).as_u64().unwrap_or(0) as u32,
                        icon: st(2),
                        summary: st(3),
                        body: st(4),
                        actions: d(5)
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect(),
                        expire_timeout: d(7).as_i64().unwrap_or(-1) as i32,
                        id: None,
                    },
                ));
            }
            "method_return" => {
                if let Some(id) = data[0].as_u64() {
                    replies.push((
                        s("destination").to_owned(),
                        m["reply_cookie"].as_u64().unwrap_or(0),
                        id as u32,
                    ));
                }
            }
            _ => {}
        }
    }
    calls
        .into_iter()
        .map(|(sender, cookie, mut n)| {
            n.id = replies
                .iter()
                .find(|(dest, rc, _)| *dest == sender && *rc == cookie)
                .map(|r| r.2);
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_output_pairs_calls_with_their_ids() {
        let text = r#"{"type":"method_call","cookie":3,"sender":":1.5","destination":"org.freedesktop.Notifications","interface":"org.freedesktop.Notifications","member":"Notify","payload":{"type":"susssasa{sv}i","data":["devd",0,"","web deployed","body \"q\"\nhttp://x",["default","Open"],{},5000]}}
Monitoring bus message stream.
{"type":"method_return","cookie":10,"reply_cookie":2,"sender":":1.0","destination":":1.8","payload":{"type":"v","data":[{"type":"u","data":0}]}}
{"type":"method_return","cookie":11,"reply_cookie":3,"sender":":1.0","destination":":1.5","payload":{"type":"u","data":[7]}}
"#;
        let n = parse_monitor(text);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].summary, "web deployed");
        assert_eq!(n[0].body, "body \"q\"\nhttp://x");
        assert_eq!(n[0].action_keys(), ["default"]);
        assert_eq!(n[0].expire_timeout, 5000);
        assert_eq!(n[0].id, Some(7));
    }
}

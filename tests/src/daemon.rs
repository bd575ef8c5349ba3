//! Driving the `devd` CLI with the fixture's `DEVD_HOME`.

use crate::process::{self, Background, Run};
use crate::repo::Fixture;
use crate::worktree::assert_worktrees_equal;
use serde_json::Value;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Default time limit of one devd command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The devd CLI for one repository. Stops the daemon on drop if this handle
/// ever ran `devd start`.
#[derive(Debug)]
pub struct Devd<'a> {
    fx: &'a Fixture,
    repo: PathBuf,
    started: Cell<bool>,
    env: Vec<(String, String)>,
    wrap: Vec<String>,
}

impl<'a> Devd<'a> {
    pub(crate) fn new(fx: &'a Fixture, repo: PathBuf) -> Self {
        Self {
            fx,
            repo,
            started: Cell::new(false),
            env: Vec::new(),
            wrap: Vec::new(),
        }
    }

    /// Run every devd command (and so the daemon it starts) through
    /// `prefix`, e.g. `setpriv` dropping capabilities.
    pub fn via(mut self, prefix: &[&str]) -> Self {
        self.wrap = prefix.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Run every devd command (and so the daemon it starts) with `env`
    /// added, e.g. the container tools' configuration.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// Run every devd command (and so the daemon `devd start` spawns)
    /// under `wrap`, e.g. `ip netns exec NS` to put it in a network
    /// namespace.
    pub fn with_wrap(mut self, wrap: Vec<String>) -> Self {
        self.wrap = wrap;
        self
    }

    /// The fixture this handle belongs to.
    pub fn fixture(&self) -> &'a Fixture {
        self.fx
    }

    /// The repository this handle runs devd in.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// A `devd <args>` command in the repository, with `DEVD_HOME` set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = crate::bins::wrapped_command("devd", &self.wrap);
        cmd.args(args)
            .current_dir(&self.repo)
            .env("DEVD_HOME", self.fx.home());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `devd <args>` to completion (time limit [`COMMAND_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_timeout(args, COMMAND_TIMEOUT)
    }

    /// Run `devd <args>`, killing it after `timeout`.
    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Run {
        if args.first() == Some(&"start") {
            self.started.set(true);
        }
        process::run(
            &mut self.command(args),
            self.fx.logs(),
            &label(args),
            timeout,
        )
    }

    /// Start `devd <args>` in the background.
    pub fn spawn(&self, args: &[&str]) -> Background {
        process::spawn(&mut self.command(args), self.fx.logs(), &label(args))
    }

    /// `devd start`; panics unless it succeeds.
    pub fn start(&self) -> Run {
        let run = self.run(&["start"]);
        run.assert_success();
        run
    }

    /// `devd start --wait` (returns once the first sync is acknowledged);
    /// panics unless it succeeds.
    pub fn start_wait(&self) -> Run {
        let run = self.run(&["start", "--wait"]);
        run.assert_success();
        run
    }

    /// `devd stop`.
    pub fn stop(&self) -> Run {
        self.run_timeout(&["stop"], Duration::from_secs(60))
    }

    /// `devd sync --json`; panics unless it succeeds and prints the report.
    pub fn sync(&self) -> SyncReport {
        self.sync_timeout(COMMAND_TIMEOUT)
    }

    /// `devd sync --json` with a time limit.
    pub fn sync_timeout(&self, timeout: Duration) -> SyncReport {
        let run = self.run_timeout(&["sync", "--json"], timeout);
        run.assert_success();
        SyncReport::parse(&run.stdout).unwrap_or_else(|e| {
            panic!(
                "`devd sync --json` output is not the contracted JSON: {e}\n{}",
                run.describe()
            )
        })
    }

    /// `devd sync --json`, then assert the receiver worktree equals the
    /// laptop's.
    #[track_caller]
    pub fn sync_and_assert_equal(&self, receiver_worktree: &Path) -> SyncReport {
        let report = self.sync();
        assert_worktrees_equal(&self.repo, receiver_worktree);
        report
    }

    /// Poll `devd status` until service `name` satisfies `pred` (`what`
    /// names the awaited state in the failure message); returns it. On
    /// timeout, prints the fixture's logs and panics with the last state.
    #[track_caller]
    pub fn wait_service(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Service) -> bool,
    ) -> Service {
        let mut last = None;
        let found = crate::wait::poll_until(timeout, || {
            let s = self.status().service(name);
            let ok = s.as_ref().is_some_and(&pred);
            last = s;
            ok
        });
        match found {
            Some(_) => last.expect("service present"),
            None => {
                self.fx.dump_logs();
                panic!(
                    "service {name}: {what} not reached within {timeout:?}; last state: {last:#?}"
                )
            }
        }
    }

    /// `devd status --json`, parsed.
    pub fn status(&self) -> Status {
        let run = self.run_timeout(&["status", "--json"], Duration::from_secs(60));
        run.assert_success();
        Status::parse(&run.stdout).unwrap_or_else(|e| {
            panic!(
                "`devd status --json` output is not the contracted JSON: {e}\n{}",
                run.describe()
            )
        })
    }
}

impl Drop for Devd<'_> {
    fn drop(&mut self) {
        if self.started.get() {
            let run = self.stop();
            if !run.success() {
                eprintln!(
                    "warning: `devd stop` failed; a daemon may be left running\n{}",
                    run.describe()
                );
            }
        }
    }
}

fn label(args: &[&str]) -> String {
    format!("devd-{}", args.first().copied().unwrap_or("none"))
}

/// The first JSON object in `text` (commands may log lines around it).
pub fn first_json_object(text: &str) -> anyhow::Result<Value> {
    let start = text
        .find('{')
        .ok_or_else(|| anyhow::anyhow!("no JSON object in output {text:?}"))?;
    let mut it = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    match it.next() {
        Some(Ok(v @ Value::Object(_))) => Ok(v),
        Some(Ok(other)) => anyhow::bail!("expected a JSON object, got {other}"),
        Some(Err(e)) => anyhow::bail!("invalid JSON ({e}) in output {text:?}"),
        None => anyhow::bail!("no JSON object in output {text:?}"),
    }
}

fn u64_field(v: &Value, key: &str) -> anyhow::Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("field {key:?} missing or not an unsigned integer in {v}"))
}

fn str_field(v: &Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("field {key:?} missing or not a string in {v}"))
}

fn hex_field(v: &Value, key: &str, len: usize) -> anyhow::Result<String> {
    let s = str_field(v, key)?;
    anyhow::ensure!(
        s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "field {key:?} = {s:?} is not {len} hex digits"
    );
    Ok(s.to_ascii_lowercase())
}

/// What `devd sync --json` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub generation: u64,
    pub overlay_digest: String,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency_ms: u64,
}

impl SyncReport {
    /// Parse the contracted JSON object.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let v = first_json_object(text)?;
        Ok(Self {
            generation: u64_field(&v, "generation")?,
            overlay_digest: hex_field(&v, "overlay_digest", 64)?,
            files: u64_field(&v, "files")?,
            bytes_sent: u64_field(&v, "bytes_sent")?,
            bytes_received: u64_field(&v, "bytes_received")?,
            latency_ms: u64_field(&v, "latency_ms")?,
        })
    }

    /// UDP bytes on the wire for this sync, both directions.
    pub fn wire_bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }
}

/// What `devd status --json` reports.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: String,
    /// 40-hex base commit.
    pub base: String,
    /// "fetched" or "uploaded".
    pub base_mode: String,
    pub generation: u64,
    pub overlay_digest: String,
    pub receiver_address: String,
    /// The receiver's materialized worktree, when it is known (embedded).
    pub receiver_worktree: Option<PathBuf>,
    pub workspace: String,
    /// `last_sync`, when there was one.
    pub last_sync: Option<Value>,
    pub raw: Value,
}

impl Status {
    /// Parse the contracted JSON object.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let v = first_json_object(text)?;
        let receiver = v
            .get("receiver")
            .ok_or_else(|| anyhow::anyhow!("field \"receiver\" missing in {v}"))?;
        let worktree = match receiver.get("worktree") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(PathBuf::from(s)),
            Some(other) => anyhow::bail!("receiver.worktree is neither a path nor null: {other}"),
        };
        let base_mode = str_field(&v, "base_mode")?;
        anyhow::ensure!(
            base_mode == "fetched" || base_mode == "uploaded",
            "base_mode {base_mode:?} is neither \"fetched\" nor \"uploaded\""
        );
        Ok(Self {
            state: str_field(&v, "state")?,
            base: hex_field(&v, "base", 40)?,
            base_mode,
            generation: u64_field(&v, "generation")?,
            overlay_digest: hex_field(&v, "overlay_digest", 64)?,
            receiver_address: str_field(receiver, "address")?,
            receiver_worktree: worktree,
            workspace: str_field(receiver, "workspace")?,
            last_sync: v.get("last_sync").filter(|s| !s.is_null()).cloned(),
            raw: v,
        })
    }

    /// `services[]`: every declared service as the receiver reported it.
    pub fn services(&self) -> Vec<Service> {
        self.raw
            .get("services")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Service::from_json).collect())
            .unwrap_or_default()
    }

    /// The service named `name`, if the status lists it.
    pub fn service(&self, name: &str) -> Option<Service> {
        self.services().into_iter().find(|s| s.name == name)
    }
}

/// One entry of `devd status --json`'s `services[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub state: String,
    /// `sha256:…` of the deployed image.
    pub digest: Option<String>,
    /// `repo@sha256:…`.
    pub image: Option<String>,
    pub url: Option<String>,
    pub last_build_ms: Option<u64>,
    pub reused: bool,
    pub error: Option<String>,
    pub log_tail: Vec<String>,
    /// Generation of the service's latest event.
    pub generation: u64,
    /// Paths copied into the containers since the image (live update).
    pub live_files: u64,
    /// When the last live update was applied (receiver clock, Unix ms).
    pub live_updated_ms: Option<u64>,
}

impl Service {
    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            name: s("name").expect("service without a name"),
            state: s("state").expect("service without a state"),
            digest: s("digest"),
            image: s("image"),
            url: s("url"),
            last_build_ms: v.get("last_build_ms").and_then(Value::as_u64),
            reused: v.get("reused").and_then(Value::as_bool).unwrap_or(false),
            error: s("error"),
            log_tail: v
                .get("log_tail")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            generation: v.get("generation").and_then(Value::as_u64).unwrap_or(0),
            live_files: v.get("live_files").and_then(Value::as_u64).unwrap_or(0),
            live_updated_ms: v.get("live_updated_ms").and_then(Value::as_u64),
        }
    }
}

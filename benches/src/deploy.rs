//! Scenario 7: save → deployed, on `examples/demo` with the local build
//! backend for real (buildah builds, podman runs, private storage).
//!
//! What is timed, for a one-line edit of `services/web/www/index.html`:
//! from just before the write to the first `GET /` at the service's stable
//! URL that returns the new content (polled every 20 ms). devd's own
//! figures (`last_deploy_ms`: applied on the receiver → deployed, and
//! `last_build_ms`) are read from `devd status --json` afterwards.
//!
//! - **devd**, embedded receiver (the default, no registry: the image stays
//!   in local storage); in full runs also a separate `devd-receiver` pushing
//!   to Debian's `docker-registry` on 127.0.0.1.
//! - **reuse hit**: writing back the content of an earlier edit, whose
//!   image exists for that context digest, → served, next to a real build.
//! - **baseline**, in the same run and storage, interleaved edit by edit
//!   with each variant's: what a developer scripts by hand — `buildah bud
//!   --isolation chroot -t IMG ctx`, `podman rm -f -t 0 OLD`, `podman run
//!   -d -p 127.0.0.1:PORT:8080 IMG`, poll until served.
//!
//! Before each measured edit the machine is let settle: devd retires the
//! old container in the background after the switch, and the next edit
//! waits until it is gone. One warm-up edit per tool is not counted.
//! Timing never fails the run; a deploy that never serves the new content
//! (or a revert that rebuilds) does. Every container and the storage are
//! removed at the end, on errors too ([`ContainerEnv`]'s drop).

use crate::bench::{Config, Scenario};
use crate::devd::{Devd, Receiver};
use crate::results::{Figure, Results, Row};
use crate::util::{human_ms, median, percentile};
use anyhow::{Context, bail};
use devd_testkit::process::Logs;
use devd_testkit::{
    ContainerEnv, Registry, check_container_tools, find_program, free_port, git, http_get_within,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod summary;
mod timeline;
use summary::summarize;

/// The service and file every edit changes.
const SERVICE: &str = "web";
const FILE: &str = "services/web/www/index.html";
/// The line of the demo's page the edits rewrite.
const LINE: &str = "web v1";
const POLL: Duration = Duration::from_millis(20);
/// Quiet time after an edit was served (and devd retired the old
/// container) before the next one.
const SETTLE_MS: u64 = 200;
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
const LABEL_WORKSPACE: &str = "dev.devd.workspace";
const LABEL_SERVICE: &str = "dev.devd.service";

/// The baseline's name in the table.
pub const BASELINE: &str = "manual loop: buildah bud --isolation chroot, podman rm -f -t 0 OLD, \
                            podman run -d -p 127.0.0.1:PORT:8080, poll until served";

/// What the report says about scenario 7.
pub const NOTES: &str = "Scenario 7 runs `examples/demo` (three services) as a git repository \
with a bare origin, with the local build backend for real: buildah (`--isolation chroot`), \
podman with runc, private storage, the busybox base image built locally. Each edit rewrites one \
line of `services/web/www/index.html`; the time runs from just before the write to the first \
`GET /` (polled every 20 ms) at the service's URL that returns the new content. devd's figure \
includes work the baseline does not do: the daemon notices the save and syncs it over QUIC to \
the receiver's worktree, the receiver snapshots the build context and hashes it; then `buildah \
bud --layers` (in the registry variant also `buildah push`), `podman run` of the new container, \
a wait until it accepts connections, and the switch of the stable URL's proxy; the old container \
is retired after the switch, off the critical path. `last_deploy_ms` is devd's own figure: \
applied on the receiver → deployed. The baseline is the same edit done by hand on a copy of the \
context (`podman rm` of the old container is on its critical path, as in a typical script), \
interleaved edit by edit with devd's on the same machine and storage. One warm-up edit per tool \
is not counted; before each edit devd's old container is gone and the machine idle for 200 ms. \
A reuse hit writes back the content of an earlier edit: its context digest names an image that \
exists, so devd deploys it without building. While polling, the time the URL answered nothing \
(or not 200) is summed: the manual loop's URL is down from `podman rm` until the new container \
serves, devd's old container serves until the switch. Percentiles are nearest-rank: p95 is the \
maximum for n < 20.";

/// One measured devd edit.
#[derive(Clone, Debug, Serialize)]
struct Edit {
    marker: String,
    /// Write → new content served at the service URL.
    served_ms: f64,
    /// Meanwhile, how long the URL did not answer 200.
    unavailable_ms: f64,
    /// devd's `last_deploy_ms`: applied on the receiver → deployed.
    deploy_ms: Option<f64>,
    /// devd's `last_build_ms` (none for a reuse).
    build_ms: Option<f64>,
    reused: bool,
    image: String,
    /// The generation devd deployed it in.
    generation: Option<u64>,
    /// From the receiver's log ([`timeline`]): context snapshot, `buildah
    /// bud` alone, bud → Built (digest lookup or push), Built/Reused →
    /// Deployed (new container serving, proxy switched).
    snapshot_ms: Option<f64>,
    bud_ms: Option<f64>,
    after_bud_ms: Option<f64>,
    start_ms: Option<f64>,
}

impl Edit {
    /// Save → applied on the receiver: devd noticing the save and syncing
    /// it over QUIC (the part before `last_deploy_ms` starts).
    fn to_applied_ms(&self) -> Option<f64> {
        self.deploy_ms.map(|d| self.served_ms - d)
    }

    fn add_steps(&mut self, steps: &std::collections::BTreeMap<u64, timeline::Steps>) {
        if let Some(s) = self.generation.and_then(|g| steps.get(&g)) {
            self.snapshot_ms = s.snapshot_ms();
            self.bud_ms = s.bud_ms;
            self.after_bud_ms = s.after_bud_ms();
            self.start_ms = s.start_ms();
        }
    }
}

/// One edit of the manual loop.
#[derive(Clone, Debug, Default, Serialize)]
struct ManualEdit {
    served_ms: f64,
    unavailable_ms: f64,
    build_ms: f64,
    rm_ms: f64,
    run_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Embedded,
    Registry,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Embedded => "embedded",
            Variant::Registry => "registry",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Embedded => "embedded receiver, image in local storage",
            Variant::Registry => "devd-receiver + docker-registry on 127.0.0.1: build, push",
        }
    }

    /// The receiver's workspace (the containers' label).
    fn workspace(self) -> &'static str {
        match self {
            Variant::Embedded => "local",
            Variant::Registry => "bench",
        }
    }
}

#[derive(Debug)]
struct VariantRun {
    variant: Variant,
    /// `devd start` → every service deployed.
    startup_ms: Option<f64>,
    warmup: Vec<Edit>,
    edits: Vec<Edit>,
    reverts: Vec<Edit>,
    /// The manual loop, interleaved edit by edit with `edits`.
    manual_warmup: Vec<ManualEdit>,
    manual: Vec<ManualEdit>,
    /// `/proc/loadavg` before and after (others' work disturbs the figures).
    loadavg: [String; 2],
}

impl VariantRun {
    fn new(variant: Variant) -> Self {
        Self {
            variant,
            startup_ms: None,
            warmup: Vec::new(),
            edits: Vec::new(),
            reverts: Vec::new(),
            manual_warmup: Vec::new(),
            manual: Vec::new(),
            loadavg: [loadavg(), String::new()],
        }
    }
}

/// Everything scenario 7 measured (possibly partial after an error).
#[derive(Debug, Default)]
struct Outcome {
    variants: Vec<VariantRun>,
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `buildah --version; podman --version; runc --version` (first lines).
pub(crate) fn tool_versions() -> String {
    ["buildah", "podman", "runc"]
        .iter()
        .filter_map(|t| {
            let bin = find_program(t)?;
            let out =
                devd_testkit::output(std::process::Command::new(bin).arg("--version")).ok()?;
            Some(out.lines().next()?.trim().to_owned())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `examples/demo` in this source tree.
pub(crate) fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

/// The `devd-receiver` binary next to `devd`.
pub(crate) fn receiver_bin(cfg: &Config) -> PathBuf {
    cfg.devd_bin.parent().map_or_else(
        || PathBuf::from("devd-receiver"),
        |d| d.join("devd-receiver"),
    )
}

/// Debian's `docker-registry` on 127.0.0.1 with its data and logs under
/// `dir`.
pub(crate) fn start_registry(dir: &Path) -> anyhow::Result<Registry> {
    Registry::try_start(dir, &Logs::new(dir.join("logs")))
}

/// Check what scenario 7 needs; the error says what to install or build.
pub fn check_tools(cfg: &Config) -> anyhow::Result<()> {
    check_container_tools(cfg.deploy_registry).context("scenario 7 (deploy)")?;
    if !demo_dir().join("devd.toml").is_file() {
        bail!(
            "scenario 7 needs the demo repository at {}",
            demo_dir().display()
        );
    }
    if cfg.deploy_registry && !receiver_bin(cfg).is_file() {
        bail!(
            "scenario 7's registry variant needs devd-receiver at {}: build it with \
             `cargo build --release -p devd-receiver --bins`, or pass --deploy-registry false",
            receiver_bin(cfg).display()
        );
    }
    Ok(())
}

/// Run scenario 7; its rows, details and errors go into `results`.
pub fn run(cfg: &Config, results: &mut Results) {
    let started = Instant::now();
    let mut out = Outcome::default();
    let r = measure(cfg, &mut out);
    if let Err(e) = r {
        let msg = format!("{e:#}");
        eprintln!("!! {}: {msg}", Scenario::Deploy.key());
        results
            .errors
            .entry(Scenario::Deploy.key().into())
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&msg);
            })
            .or_insert(msg);
    }
    results.machine.container_tools = tool_versions();
    summarize(cfg, &out, results);
    if let Some(d) = results.details.get_mut("deploy") {
        d["duration_s"] = json!(started.elapsed().as_secs_f64());
    }
}

fn measure(cfg: &Config, out: &mut Outcome) -> anyhow::Result<()> {
    let dir = cfg.work.join("deploy");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    // Dropped last: removes every container and the storage, whatever
    // happens below.
    let env = ContainerEnv::in_dir(&dir.join("containers"))?;
    eprintln!("deploy: building the busybox base image in private storage …");
    env.try_build_busybox_base()?;
    let origin = make_origin(&dir)?;
    let v1 = std::fs::read_to_string(demo_dir().join(FILE))?;
    if !v1.contains(LINE) {
        bail!("{FILE} of the demo no longer contains {LINE:?}");
    }
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let content = |marker: &str| v1.replace(LINE, &format!("web {marker}"));

    let mut manual = Manual::start(&env, &dir.join("manual"), &v1)?;
    let variants: &[Variant] = if cfg.deploy_registry {
        &[Variant::Embedded, Variant::Registry]
    } else {
        &[Variant::Embedded]
    };
    for &v in variants {
        out.variants.push(VariantRun::new(v));
        let run = out.variants.last_mut().expect("just pushed");
        let laptop = dir.join(format!("laptop-{}", v.name()));
        git(
            &dir,
            &[
                "clone",
                "-q",
                &origin.display().to_string(),
                &laptop.display().to_string(),
            ],
        )?;
        let home = dir.join(format!("home-{}", v.name()));
        // Declared before the daemon: stopped after it.
        let (_registry, _receiver) = if v == Variant::Registry {
            let reg = start_registry(&dir.join("registry"))?;
            let rx_config = dir.join("receiver.toml");
            std::fs::write(
                &rx_config,
                format!(
                    "[build]\nbackend = \"local\"\nregistry = \"{}\"\n\
                     insecure_registry = true\nconcurrency = 2\n",
                    reg.addr()
                ),
            )?;
            let rx = Receiver::start(
                &receiver_bin(cfg),
                &dir.join("receiver"),
                &format!("file://{}", origin.display()),
                v.workspace(),
                &rx_config,
                &env.env(),
            )?;
            std::fs::write(laptop.join("devd.local.toml"), rx.local_config())?;
            (Some(reg), Some(rx))
        } else {
            (None, None)
        };
        eprintln!(
            "deploy ({}): devd start → every service deployed …",
            v.name()
        );
        let mut d = Devd::new(&cfg.devd_bin, &home, &laptop).with_env(env.env());
        let t = Instant::now();
        d.start()?;
        let services = wait_all_deployed(&d, Duration::from_millis(100))?;
        run.startup_ms = Some(ms(t.elapsed()));
        let web = find(&services, SERVICE).context("devd status lists no web service")?;
        let url = web["url"]
            .as_str()
            .context("the web service has no URL")?
            .to_owned();
        let mut image = web["image"].as_str().unwrap_or_default().to_owned();
        eprintln!(
            "deploy ({}): all services deployed in {}; web at {url}",
            v.name(),
            human_ms(ms(t.elapsed()))
        );
        let lab = Lab {
            env: &env,
            devd: &d,
            laptop: &laptop,
            url: &url,
            variant: v,
        };
        lab.settle()?;

        let marker = format!("{}-warmup-{nonce}", v.name());
        let e = lab.edit(&content(&marker), &marker, &image, None)?;
        image = e.image.clone();
        run.warmup.push(e);
        let marker = format!("manual-{}-warmup-{nonce}", v.name());
        run.manual_warmup
            .push(manual.edit(&content(&marker), &marker)?);
        eprintln!(
            "deploy ({}): {} edits, each followed by the same edit in the manual loop …",
            v.name(),
            cfg.deploy_edits,
        );
        let mut contents = Vec::new();
        for k in 0..cfg.deploy_edits {
            let marker = format!("{}-edit{k}-{nonce}", v.name());
            let c = content(&marker);
            let e = lab.edit(&c, &marker, &image, None)?;
            image = e.image.clone();
            eprintln!(
                "   edit {k}: served after {} (devd: build {}, applied → deployed {})",
                human_ms(e.served_ms),
                e.build_ms.map_or("—".into(), human_ms),
                e.deploy_ms.map_or("—".into(), human_ms)
            );
            contents.push((marker, c, e.image.clone()));
            run.edits.push(e);
            let marker = format!("manual-{}-edit{k}-{nonce}", v.name());
            let m = manual.edit(&content(&marker), &marker)?;
            eprintln!(
                "   manual {k}: served after {} (buildah bud {}, podman rm {}, podman run {})",
                human_ms(m.served_ms),
                human_ms(m.build_ms),
                human_ms(m.rm_ms),
                human_ms(m.run_ms)
            );
            run.manual.push(m);
        }
        // Reuse hits: back to the content of earlier edits (not the one
        // deployed), whose images exist.
        let reverts = cfg.deploy_reverts.min(contents.len().saturating_sub(1));
        for j in 0..reverts {
            let (marker, c, want) = &contents[contents.len() - 2 - j];
            let e = lab.edit(c, marker, &image, Some(want))?;
            image = e.image.clone();
            eprintln!(
                "   revert to {marker}: served after {} (reused, no build)",
                human_ms(e.served_ms)
            );
            run.reverts.push(e);
        }
        run.loadavg[1] = loadavg();
        let log = match v {
            Variant::Embedded => d.log_path()?,
            Variant::Registry => dir.join("receiver/receiver.err"),
        };
        let steps = timeline::read(&std::fs::read_to_string(&log).unwrap_or_default(), SERVICE);
        for e in run
            .warmup
            .iter_mut()
            .chain(&mut run.edits)
            .chain(&mut run.reverts)
        {
            e.add_steps(&steps);
        }
        d.stop()?;
        drop(d);
        let left = env.containers_with(&[(LABEL_WORKSPACE, v.workspace())])?;
        env.remove(&left)?;
    }
    manual.stop()?;
    Ok(())
}

/// A bare origin holding `examples/demo` as its first commit on `main`.
fn make_origin(dir: &Path) -> anyhow::Result<PathBuf> {
    make_origin_with(dir, "examples/demo", |seed| copy_dir(&demo_dir(), seed))
}

/// A bare origin (`dir/origin.git`) whose first commit on `main`
/// (`message`) holds what `fill` writes into the (empty) seed worktree.
pub(crate) fn make_origin_with(
    dir: &Path,
    message: &str,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let origin = dir.join("origin.git");
    let seed = dir.join("seed");
    git(dir, &["init", "-q", "--bare", "-b", "main", "origin.git"])?;
    git(dir, &["init", "-q", "-b", "main", "seed"])?;
    fill(&seed)?;
    let user = [
        "-c",
        "user.name=devd benches",
        "-c",
        "user.email=benches@devd.invalid",
    ];
    git(&seed, &["add", "-A"])?;
    let commit: Vec<&str> = [&user[..], &["commit", "-q", "-m", message]].concat();
    git(&seed, &commit)?;
    git(
        &seed,
        &["push", "-q", &origin.display().to_string(), "main"],
    )?;
    Ok(origin)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

fn find<'a>(services: &'a [Value], name: &str) -> Option<&'a Value> {
    services.iter().find(|s| s["name"] == name)
}

/// `services[]` of `devd status --json`.
fn services(d: &Devd) -> anyhow::Result<Vec<Value>> {
    Ok(d.status()?["services"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn failure(s: &Value) -> String {
    let tail: Vec<&str> = s["log_tail"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{} failed: {}; log tail:\n{}",
        s["name"],
        s["error"].as_str().unwrap_or("?"),
        tail.join("\n")
    )
}

/// Wait until every declared service is deployed, polling `devd status`
/// every `poll`; fail on a failed build.
pub(crate) fn wait_all_deployed(d: &Devd, poll: Duration) -> anyhow::Result<Vec<Value>> {
    let t = Instant::now();
    loop {
        let list = services(d)?;
        if let Some(f) = list.iter().find(|s| s["state"] == "failed") {
            bail!("{}", failure(f));
        }
        if !list.is_empty() && list.iter().all(|s| s["state"] == "deployed") {
            return Ok(list);
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("not every service was deployed within 300 s: {list:?}");
        }
        std::thread::sleep(poll);
    }
}

/// What polling the service URL during a redeploy saw.
struct Served {
    /// `t0` → the first answer with the new content.
    after: Duration,
    /// How long the URL answered nothing (or not 200) meanwhile: from the
    /// first poll of each failing run to the next poll that got a 200.
    unavailable: Duration,
}

/// Poll `url` every [`POLL`] until its body contains `marker`.
fn wait_served(url: &str, marker: &str, t0: Instant, timeout: Duration) -> anyhow::Result<Served> {
    let mut unavailable = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    let mut last: String;
    loop {
        let r = http_get_within(url, Duration::from_secs(2));
        let now = Instant::now();
        if matches!(r, Ok((200, _))) {
            if let Some(f) = failing_since.take() {
                unavailable += now - f;
            }
        } else {
            failing_since.get_or_insert(now);
        }
        match r {
            Ok((200, body)) if body.contains(marker) => {
                return Ok(Served {
                    after: now - t0,
                    unavailable,
                });
            }
            Ok((code, body)) => last = format!("{code}: {}", body.trim()),
            Err(e) => last = format!("{e:#}"),
        }
        if t0.elapsed() > timeout {
            bail!("{url} did not serve {marker:?} within {timeout:?}; last answer: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// One devd variant's running daemon and its web service.
struct Lab<'a> {
    env: &'a ContainerEnv,
    devd: &'a Devd,
    laptop: &'a Path,
    url: &'a str,
    variant: Variant,
}

impl Lab<'_> {
    /// Wait until the old web containers are retired (devd removes them in
    /// the background after a switch), then a moment more.
    fn settle(&self) -> anyhow::Result<()> {
        let labels = [
            (LABEL_WORKSPACE, self.variant.workspace()),
            (LABEL_SERVICE, SERVICE),
        ];
        let t = Instant::now();
        while self.env.containers_with(&labels)?.len() > 1 {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("devd's old {SERVICE} containers were not retired within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(SETTLE_MS));
        Ok(())
    }

    /// Write `content`, time until served, read devd's figures. With
    /// `reuse`, the deploy must be a reuse of that image.
    fn edit(
        &self,
        content: &str,
        marker: &str,
        prev_image: &str,
        reuse: Option<&str>,
    ) -> anyhow::Result<Edit> {
        let path = self.laptop.join(FILE);
        let t0 = Instant::now();
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        let served = match wait_served(self.url, marker, t0, DEPLOY_TIMEOUT) {
            Ok(d) => d,
            Err(e) => {
                let st = services(self.devd).ok();
                let web = st.as_deref().and_then(|s| find(s, SERVICE));
                return Err(e.context(format!(
                    "devd's web service: {}",
                    web.map_or("not listed".into(), |w| if w["state"] == "failed" {
                        failure(w)
                    } else {
                        w.to_string()
                    })
                )));
            }
        };
        let t = Instant::now();
        let web = loop {
            let list = services(self.devd)?;
            let web = find(&list, SERVICE).cloned().unwrap_or_default();
            if web["state"] == "deployed" && web["image"] != prev_image {
                break web;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("served, but devd status did not report the deploy within 30 s: {web}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let e = Edit {
            marker: marker.into(),
            served_ms: ms(served.after),
            unavailable_ms: ms(served.unavailable),
            deploy_ms: web["last_deploy_ms"].as_f64(),
            build_ms: web["last_build_ms"].as_f64(),
            reused: web["reused"].as_bool().unwrap_or(false),
            image: web["image"].as_str().unwrap_or_default().into(),
            generation: web["generation"].as_u64(),
            snapshot_ms: None,
            bud_ms: None,
            after_bud_ms: None,
            start_ms: None,
        };
        match reuse {
            Some(want) if !e.reused || e.image != want => bail!(
                "writing back the content of {marker} should reuse {want}, \
                 but devd deployed {} (reused: {})",
                e.image,
                e.reused
            ),
            None if e.reused => bail!("a new content was deployed as a reuse: {web}"),
            _ => {}
        }
        self.settle()?;
        Ok(e)
    }
}

/// The baseline: the same edit by hand, on a copy of the web context.
struct Manual<'a> {
    env: &'a ContainerEnv,
    ctx: PathBuf,
    port: u16,
    url: String,
    current: Option<String>,
    seq: usize,
}

impl<'a> Manual<'a> {
    /// Copy the context, build and start the first version.
    fn start(env: &'a ContainerEnv, dir: &Path, v1: &str) -> anyhow::Result<Self> {
        let ctx = dir.join("web");
        copy_dir(&demo_dir().join("services/web"), &ctx)?;
        let port = free_port()?;
        let mut m = Self {
            env,
            ctx,
            port,
            url: format!("http://127.0.0.1:{port}/"),
            current: None,
            seq: 0,
        };
        m.edit(v1, LINE)
            .context("the manual loop's first version")?;
        Ok(m)
    }

    fn edit(&mut self, content: &str, marker: &str) -> anyhow::Result<ManualEdit> {
        let image = format!("localhost/manual/web:e{}", self.seq);
        let name = format!("manual-web-{}", self.seq);
        self.seq += 1;
        let ctx = self.ctx.display().to_string();
        let path = self.ctx.join("www/index.html");
        let t0 = Instant::now();
        // Polled in the background from the start, as devd's URL is: the
        // old container serves until `podman rm`.
        let poll = {
            let (url, marker) = (self.url.clone(), marker.to_owned());
            std::thread::spawn(move || wait_served(&url, &marker, t0, DEPLOY_TIMEOUT))
        };
        std::fs::write(&path, content)?;
        self.env.output(
            "buildah",
            &["bud", "--isolation", "chroot", "-t", &image, &ctx],
        )?;
        let build = t0.elapsed();
        if let Some(old) = self.current.take() {
            self.env.output("podman", &["rm", "-f", "-t", "0", &old])?;
        }
        let rm = t0.elapsed();
        let publish = format!("127.0.0.1:{}:8080", self.port);
        self.env.output(
            "podman",
            &["run", "-d", "--name", &name, "-p", &publish, &image],
        )?;
        self.current = Some(name);
        let run = t0.elapsed();
        let served = poll
            .join()
            .map_err(|_| anyhow::anyhow!("the poller of {} panicked", self.url))??;
        std::thread::sleep(Duration::from_millis(SETTLE_MS));
        Ok(ManualEdit {
            served_ms: ms(served.after),
            unavailable_ms: ms(served.unavailable),
            build_ms: ms(build),
            rm_ms: ms(rm - build),
            run_ms: ms(run - rm),
        })
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.current.take() {
            self.env.output("podman", &["rm", "-f", "-t", "0", &old])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(served: f64, build: Option<f64>) -> Edit {
        Edit {
            marker: "m".into(),
            served_ms: served,
            unavailable_ms: 0.0,
            deploy_ms: Some(served - 30.0),
            build_ms: build,
            reused: build.is_none(),
            image: "localhost/demo/web@sha256:00".into(),
            generation: None,
            snapshot_ms: None,
            bud_ms: build.map(|b| b - 50.0),
            after_bud_ms: None,
            start_ms: Some(served - 30.0 - build.unwrap_or(0.0)),
        }
    }

    #[test]
    fn rows_compare_devd_with_the_manual_loop_and_reuse_with_a_build() {
        let cfg = Config::new(true, "/w".into(), "/b/devd".into(), "cmd".into());
        let mut run = VariantRun::new(Variant::Embedded);
        run.startup_ms = Some(1500.0);
        run.edits = [600.0, 700.0, 650.0]
            .map(|ms| edit(ms, Some(250.0)))
            .to_vec();
        run.reverts = vec![edit(400.0, None), edit(380.0, None)];
        run.manual = [800.0, 780.0, 900.0]
            .map(|served_ms| ManualEdit {
                served_ms,
                unavailable_ms: 400.0,
                build_ms: 160.0,
                rm_ms: 330.0,
                run_ms: 220.0,
            })
            .to_vec();
        let out = Outcome {
            variants: vec![run],
        };
        let mut r = Results::default();
        summarize(&cfg, &out, &mut r);
        assert_eq!(r.rows.len(), 11);
        assert!(r.rows.iter().all(|row| row.scenario == "7 save → deployed"));
        let p50 = &r.rows[0];
        assert_eq!(p50.devd.as_ref().unwrap().value, 650.0);
        assert_eq!(p50.baseline.as_ref().unwrap().value, 800.0);
        assert_eq!(crate::bench::describe_ratio(p50), "1.2× faster");
        assert_eq!(r.rows[1].devd.as_ref().unwrap().value, 700.0);
        let fig = |i: usize| r.rows[i].devd.as_ref().map(|f| f.value);
        let base = |i: usize| r.rows[i].baseline.as_ref().map(|f| f.value);
        assert_eq!(fig(2), Some(620.0), "last_deploy_ms");
        assert_eq!(fig(3), Some(30.0), "save → applied");
        assert_eq!((fig(4), base(4)), (Some(250.0), Some(160.0)), "build");
        assert_eq!((fig(5), base(5)), (Some(200.0), Some(160.0)), "bud alone");
        assert_eq!(
            (fig(6), base(6)),
            (Some(370.0), Some(640.0)),
            "built → serving"
        );
        let reuse = &r.rows[8];
        assert_eq!(reuse.devd.as_ref().unwrap().value, 380.0);
        assert_eq!(reuse.baseline.as_ref().unwrap().value, 650.0);
        assert!(
            reuse.metric.contains("saves 270 ms per save"),
            "{}",
            reuse.metric
        );
        let d = &r.details["deploy"]["embedded"];
        assert_eq!(d["saved_per_reuse_ms"], json!(270.0));
        assert_eq!(d["manual"]["median_rm_ms"], json!(330.0));
    }
}

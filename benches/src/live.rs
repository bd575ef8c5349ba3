//! Scenario 9: save → served with live update, against the image build of
//! the same kind of service, in the same run (local backend for real:
//! buildah builds, podman runs, private storage).
//!
//! The repository has two services built from the same Dockerfile, whose
//! build does real work after copying the sources (`RUN sleep 3`, standing
//! for a dependency install or a compile that reads them, so no layer
//! cache skips it):
//! - `live`: `[services.live.live]` syncs `www` to `/www`: a save is copied
//!   into the running container;
//! - `built`: no `live`: a save builds the image and replaces the
//!   container (devd's path before live update).
//!
//! Each save rewrites one line of the service's `www/index.html`; the time
//! runs from just before the write to the first `GET /` at the service's
//! stable URL (polled every 10 ms) that returns the new content. Saves
//! alternate between the two services; before each, the machine is let
//! settle. A live save must keep the image and the container; a built one
//! must change the image. One warm-up save of each is not counted.

use crate::bench::{Config, Scenario};
use crate::deploy::{loadavg, make_origin_with, tool_versions, wait_all_deployed};
use crate::devd::Devd;
use crate::results::{Figure, Results, Row, TargetCheck};
use crate::util::{human_ms, percentile};
use anyhow::{Context, bail};
use devd_testkit::{ContainerEnv, check_container_tools, git, http_get_within};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);
const SETTLE: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(180);
/// What the image build does besides copying: seconds of work.
const BUILD_WORK_S: u32 = 3;

/// The target of issue 13.
const TARGET_P50_MS: f64 = 300.0;

/// The baseline's name in the table.
pub const BASELINE: &str = "the same save without live update: image build (RUN sleep 3 after \
                            COPY) and deploy of a new container";

/// What the report says about scenario 9.
pub const NOTES: &str = "Scenario 9 runs a repository of two services built from one Dockerfile \
whose build does 3 s of work after copying the sources (`COPY www/ /src/` then `RUN sleep 3 && \
cp -a /src /www`), so every image build pays it, as a dependency install or a compile does. \
`live` declares `[services.live.live] sync = [{ from = \"www\", to = \"/www\" }]`; `built` does \
not. Saves alternate between them; each rewrites one line of the service's `www/index.html`, \
timed from just before the write to the first `GET /` at the stable URL (polled every 10 ms) \
that returns the new content. A live save must leave the image and the container as they were; \
a built save must deploy a new image. One warm-up save per service is not counted; the machine \
settles 300 ms before each save. Percentiles are nearest-rank.";

fn dockerfile() -> String {
    format!(
        "FROM docker.io/library/busybox:stable\nCOPY www/ /src/\n\
         RUN sleep {BUILD_WORK_S} && cp -a /src /www\nEXPOSE 8080\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    )
}

const CATALOG: &str = r#"[services.live]
context = "live"
port = 8080
[services.live.live]
sync = [{ from = "www", to = "/www" }]

[services.built]
context = "built"
port = 8080
"#;

fn page(marker: &str) -> String {
    format!("<!doctype html>\n<title>bench</title>\n<p>\n{marker}\n</p>\n")
}

/// Check what scenario 9 needs.
pub fn check_tools(_cfg: &Config) -> anyhow::Result<()> {
    check_container_tools(false).context("scenario 9 (live update)")
}

/// The saves of one service.
#[derive(Debug, Default)]
struct Samples {
    served_ms: Vec<f64>,
    warmup_ms: Vec<f64>,
}

/// Run scenario 9; its rows, details and errors go into `results`.
pub fn run(cfg: &Config, results: &mut Results) {
    let started = Instant::now();
    let (mut live, mut built) = (Samples::default(), Samples::default());
    let load_start = loadavg();
    if let Err(e) = measure(cfg, &mut live, &mut built) {
        let msg = format!("{e:#}");
        eprintln!("!! {}: {msg}", Scenario::Live.key());
        results.errors.insert(Scenario::Live.key().into(), msg);
    }
    results.machine.container_tools = tool_versions();
    summarize(&live, &built, results);
    results.details.insert(
        "live".into(),
        json!({
            "live_served_ms": live.served_ms,
            "built_served_ms": built.served_ms,
            "warmup_live_ms": live.warmup_ms,
            "warmup_built_ms": built.warmup_ms,
            "build_work_s": BUILD_WORK_S,
            "loadavg": [load_start, loadavg()],
            "duration_s": started.elapsed().as_secs_f64(),
            "notes": NOTES,
        }),
    );
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (!s.is_empty()).then(|| percentile(&s, p))
}

fn summarize(live: &Samples, built: &Samples, results: &mut Results) {
    let s = Scenario::Live.key();
    let n = format!(
        "live n = {}, build n = {}",
        live.served_ms.len(),
        built.served_ms.len()
    );
    let fig = |v: f64| Figure::new(v, "ms", human_ms(v));
    for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
        results.rows.push(Row::new(
            s,
            format!("{label} save → new content served, live update ({n})"),
            pct(&live.served_ms, p).map(fig),
            BASELINE,
            pct(&built.served_ms, p).map(fig),
            false,
        ));
    }
    let p50 = pct(&live.served_ms, 50.0);
    results.targets.push(TargetCheck {
        target: format!("live update save → served p50 ≤ {TARGET_P50_MS} ms (local backend)"),
        measured: p50.map_or("—".into(), human_ms),
        met: p50.map(|v| v <= TARGET_P50_MS),
    });
    let ratio = p50.zip(pct(&built.served_ms, 50.0)).map(|(l, b)| b / l);
    results.targets.push(TargetCheck {
        target: "live update ≥ 10× faster than the image build (p50)".into(),
        measured: ratio.map_or("—".into(), |r| format!("{r:.1}×")),
        met: ratio.map(|r| r >= 10.0),
    });
}

/// The `live`/`built` service in `devd status --json`.
fn service(d: &Devd, name: &str) -> anyhow::Result<Value> {
    d.status()?["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .with_context(|| format!("devd status lists no {name}"))
}

/// Poll `url` until its body contains `marker`; the time since `t0`.
fn wait_served(url: &str, marker: &str, t0: Instant) -> anyhow::Result<f64> {
    loop {
        if let Ok((200, body)) = http_get_within(url, Duration::from_secs(2))
            && body.contains(marker)
        {
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        }
        if t0.elapsed() > TIMEOUT {
            bail!("{url} did not serve {marker:?} within {TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The running container of `service` (its name), once there is one.
fn container(env: &ContainerEnv, service: &str) -> anyhow::Result<String> {
    let t = Instant::now();
    loop {
        let names = env.containers_with(&[("dev.devd.service", service)])?;
        if names.len() == 1 {
            return Ok(names[0].clone());
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{service} has {} containers, not one", names.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn measure(cfg: &Config, live: &mut Samples, built: &mut Samples) -> anyhow::Result<()> {
    let dir = cfg.work.join("live");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let env = ContainerEnv::in_dir(&dir.join("containers"))?;
    eprintln!("live: building the busybox base image in private storage …");
    env.try_build_busybox_base()?;
    let origin = make_origin_with(&dir, "live update bench", |seed| {
        std::fs::write(seed.join("devd.toml"), CATALOG)?;
        for s in ["live", "built"] {
            std::fs::create_dir_all(seed.join(s).join("www"))?;
            std::fs::write(seed.join(s).join("Dockerfile"), dockerfile())?;
            std::fs::write(seed.join(s).join("www/index.html"), page("v1"))?;
        }
        Ok(())
    })?;
    let laptop = dir.join("laptop");
    git(
        &dir,
        &[
            "clone",
            "-q",
            &origin.display().to_string(),
            &laptop.display().to_string(),
        ],
    )?;
    std::fs::write(laptop.join("devd.local.toml"), "[sync]\ndebounce_ms = 20\n")?;
    std::fs::write(laptop.join(".git/info/exclude"), "devd.local.toml\n")?;
    let mut d = Devd::new(&cfg.devd_bin, &dir.join("home"), &laptop).with_env(env.env());
    eprintln!("live: devd start → both services deployed (two image builds) …");
    d.start()?;
    let services = wait_all_deployed(&d, Duration::from_millis(100))?;
    let url = |name: &str| -> anyhow::Result<String> {
        services
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["url"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("{name} has no URL"))
    };
    let (live_url, built_url) = (url("live")?, url("built")?);
    let nonce = std::process::id();
    // Saves: warm-up first (not counted), then the measured ones,
    // alternating between the services.
    let live_saves = if cfg.quick { 5 } else { 30 };
    let built_saves = if cfg.quick { 2 } else { 20 };
    for k in 0..=live_saves.max(built_saves) {
        if k <= live_saves {
            let image = service(&d, "live")?["image"].clone();
            let c = container(&env, "live")?;
            std::thread::sleep(SETTLE);
            let marker = format!("live-{nonce}-{k}");
            let t0 = Instant::now();
            std::fs::write(laptop.join("live/www/index.html"), page(&marker))?;
            let ms = wait_served(&live_url, &marker, t0)?;
            let after = service(&d, "live")?;
            if after["image"] != image || container(&env, "live")? != c {
                bail!("a live save changed the image or the container: {after}");
            }
            eprintln!("   live save {k}: served after {}", human_ms(ms));
            if k == 0 {
                live.warmup_ms.push(ms);
            } else {
                live.served_ms.push(ms);
            }
        }
        if k <= built_saves {
            let image = service(&d, "built")?["image"].clone();
            container(&env, "built")?;
            std::thread::sleep(SETTLE);
            let marker = format!("built-{nonce}-{k}");
            let t0 = Instant::now();
            std::fs::write(laptop.join("built/www/index.html"), page(&marker))?;
            let ms = wait_served(&built_url, &marker, t0)?;
            let t = Instant::now();
            while service(&d, "built")?["image"] == image {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("built: served, but no new image reported");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("   built save {k}: served after {}", human_ms(ms));
            if k == 0 {
                built.warmup_ms.push(ms);
            } else {
                built.served_ms.push(ms);
            }
        }
    }
    d.stop()?;
    drop(d);
    let left = env.containers_with(&[("dev.devd.workspace", "local")])?;
    env.remove(&left)?;
    Ok(())
}

//! Scenario 8: a fresh workspace boots — `devd start` against a new
//! `devd-receiver` (empty data, its own container storage) until every
//! service of the repository is deployed — with and without the images
//! prebuilt by `devd prebuild`, in the same run.
//!
//! Each variant of each repetition gets a new, empty Debian
//! `docker-registry` on 127.0.0.1 (the tags are context digests: what one
//! boot pushed, the next would find), and then:
//!
//! - **A, nothing prebuilt**: a fresh workspace builds every service
//!   (`buildah bud` + `buildah push`) and runs it.
//! - **CI**: `devd prebuild --registry … --insecure-registry --json` on the
//!   same commit into another empty registry, with its own fresh container
//!   storage (a CI machine): builds and pushes every image; then once more,
//!   finding every image present.
//! - **B, prebuilt**: a fresh workspace (new receiver data, workspace name
//!   and container storage; the prebuild's registry) deploys every service
//!   from the prebuilt image: podman pulls it and runs it, no build.
//!
//! Timed twice per boot: by the runner, from spawning `devd start` until
//! `devd status --json` (polled every 20 ms) lists every service deployed;
//! and devd's own `boot.ms` (daemon start → every service deployed). A must
//! report every service built and B every one reused, none built; anything
//! else fails the run. Timing never does. Every storage starts with only the
//! locally built busybox base image (nothing can be pulled here), removed
//! with its containers after each boot ([`ContainerEnv`]'s drop).
//!
//! The repositories: `examples/demo` (3 services) and, in full runs, a
//! generated one with 10 copies of the demo's web service, each with its own
//! page (so 10 distinct contexts and images).

use crate::bench::{Config, Scenario};
use crate::deploy::{
    copy_dir, demo_dir, loadavg, make_origin_with, receiver_bin, start_registry, tool_versions,
    wait_all_deployed,
};
use crate::devd::{Devd, Receiver};
use crate::results::{Figure, Results, Row};
use crate::util::{human_ms, percentile};
use anyhow::{Context, bail};
use devd_testkit::{ContainerEnv, Registry, check_container_tools, git};
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the runner polls `devd status --json` during a boot.
const POLL: Duration = Duration::from_millis(20);
/// Services in the generated repository of full runs.
pub const LARGE_SERVICES: usize = 10;

/// What the report says about scenario 8.
pub const NOTES: &str = "Scenario 8 boots a fresh workspace: a new `devd-receiver` (empty data \
directory, new workspace name, its own empty container storage with only the locally built \
busybox base image) with the local build backend pushing to and looking up in Debian's \
`docker-registry` on 127.0.0.1, then `devd start` on the laptop's clone. The time runs from \
spawning `devd start` until `devd status --json` (polled every 20 ms) lists every service \
deployed; `boot.ms` is devd's own figure (daemon start → every service deployed). Variant A finds \
no image (a new, empty registry) and builds every service (`buildah bud --layers`, `buildah \
push`, `podman run`). Then `devd prebuild` runs on the same commit as CI would, with its own \
fresh container storage, and builds and pushes every image into another empty registry; variant \
B boots another fresh workspace against that registry: podman pulls each prebuilt image and runs it, no \
build. A has to report every service built and B every service reused and none built, or the \
run fails. A and B alternate within each repetition. Percentiles are nearest-rank.";

/// One repository scenario 8 boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repo {
    /// `examples/demo`: web, api, greeter.
    Demo,
    /// [`LARGE_SERVICES`] copies of the demo's web service.
    Copies(usize),
}

impl Repo {
    fn name(self) -> String {
        match self {
            Repo::Demo => "demo".into(),
            Repo::Copies(n) => format!("web-x{n}"),
        }
    }

    fn label(self) -> String {
        match self {
            Repo::Demo => "examples/demo, 3 services".into(),
            Repo::Copies(n) => format!("generated: {n} copies of the demo's web service"),
        }
    }

    fn services(self) -> usize {
        match self {
            Repo::Demo => 3,
            Repo::Copies(n) => n,
        }
    }

    /// Write the repository's files into the (empty) `seed` worktree.
    fn fill(self, seed: &Path) -> anyhow::Result<()> {
        match self {
            Repo::Demo => copy_dir(&demo_dir(), seed),
            Repo::Copies(n) => write_copies(seed, n),
        }
    }
}

/// `n` copies of the demo's web service (`services/webNN`, image
/// `boot/webNN`), each page naming its copy, and their `devd.toml`.
fn write_copies(seed: &Path, n: usize) -> anyhow::Result<()> {
    let web = demo_dir().join("services/web");
    let page = std::fs::read_to_string(web.join("www/index.html"))?;
    if !page.contains("web v1") {
        bail!("the demo's web page no longer contains \"web v1\"");
    }
    let mut toml = String::from(
        "# devd.toml — generated by devd-benches (scenario 8): copies of examples/demo's web\n",
    );
    for i in 1..=n {
        let name = format!("web{i:02}");
        let dir = seed.join("services").join(&name);
        copy_dir(&web, &dir)?;
        std::fs::write(
            dir.join("www/index.html"),
            page.replace("web v1", &format!("{name} v1 (copy {i} of {n})")),
        )?;
        let _ = write!(
            toml,
            "\n[services.{name}]\ncontext = \"services/{name}\"\nimage = \"boot/{name}\"\nport = 8080\n"
        );
    }
    std::fs::write(seed.join("devd.toml"), toml)?;
    std::fs::write(seed.join(".gitignore"), "devd.local.toml\n")?;
    Ok(())
}

/// One fresh workspace's boot.
#[derive(Clone, Debug, Default, Serialize)]
struct Boot {
    /// Spawning `devd start` → every service deployed (runner's polling).
    wall_ms: f64,
    /// devd's `boot` object of `devd status --json`.
    ms: Option<f64>,
    services: u64,
    built: u64,
    reused: u64,
    running: u64,
    failed: u64,
}

/// One `devd prebuild` run.
#[derive(Clone, Debug, Default, Serialize)]
struct Prebuild {
    wall_ms: f64,
    /// The report's own `ms`.
    ms: Option<f64>,
    built: u64,
    present: u64,
    failed: u64,
}

/// One repetition: A, prebuild (twice), B.
#[derive(Clone, Debug, Default, Serialize)]
struct Rep {
    cold: Option<Boot>,
    prebuild: Option<Prebuild>,
    prebuild_again: Option<Prebuild>,
    prebuilt: Option<Boot>,
    loadavg_start_end: [String; 2],
}

/// Every repetition on one repository (possibly partial after an error).
#[derive(Debug)]
struct RepoRun {
    repo: Repo,
    reps: Vec<Rep>,
}

impl RepoRun {
    fn boots(&self, f: fn(&Rep) -> Option<&Boot>) -> Vec<&Boot> {
        self.reps.iter().filter_map(f).collect()
    }

    fn prebuilds(&self, f: fn(&Rep) -> Option<&Prebuild>) -> Vec<&Prebuild> {
        self.reps.iter().filter_map(f).collect()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Check what scenario 8 needs; the error says what to install or build.
pub fn check_tools(cfg: &Config) -> anyhow::Result<()> {
    check_container_tools(true).context("scenario 8 (boot)")?;
    if !demo_dir().join("devd.toml").is_file() {
        bail!(
            "scenario 8 needs the demo repository at {}",
            demo_dir().display()
        );
    }
    if !receiver_bin(cfg).is_file() {
        bail!(
            "scenario 8 needs devd-receiver at {}: build it with \
             `cargo build --release -p devd-receiver --bins`",
            receiver_bin(cfg).display()
        );
    }
    Ok(())
}

/// Run scenario 8; its rows, details and errors go into `results`.
pub fn run(cfg: &Config, results: &mut Results) {
    let started = Instant::now();
    let mut out = Vec::new();
    if let Err(e) = measure(cfg, &mut out) {
        let msg = format!("{e:#}");
        eprintln!("!! {}: {msg}", Scenario::Boot.key());
        results
            .errors
            .entry(Scenario::Boot.key().into())
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&msg);
            })
            .or_insert(msg);
    }
    if results.machine.container_tools.is_empty() {
        results.machine.container_tools = tool_versions();
    }
    summarize(cfg, &out, results);
    if let Some(d) = results.details.get_mut("boot") {
        d["duration_s"] = json!(started.elapsed().as_secs_f64());
    }
}

fn measure(cfg: &Config, out: &mut Vec<RepoRun>) -> anyhow::Result<()> {
    let dir = cfg.work.join("boot");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut repos = vec![Repo::Demo];
    if cfg.boot_large {
        repos.push(Repo::Copies(LARGE_SERVICES));
    }
    for repo in repos {
        let rdir = dir.join(repo.name());
        std::fs::create_dir_all(&rdir)?;
        let origin = make_origin_with(&rdir, &repo.label(), |seed| repo.fill(seed))?;
        let laptop = rdir.join("laptop");
        git(
            &rdir,
            &[
                "clone",
                "-q",
                &origin.display().to_string(),
                &laptop.display().to_string(),
            ],
        )?;
        let lab = Lab {
            cfg,
            dir: &rdir,
            git_remote: format!("file://{}", origin.display()),
            laptop: &laptop,
            services: repo.services() as u64,
        };
        out.push(RepoRun {
            repo,
            reps: Vec::new(),
        });
        let run = out.last_mut().expect("just pushed");
        for r in 0..cfg.boot_reps {
            run.reps.push(Rep {
                loadavg_start_end: [loadavg(), String::new()],
                ..Rep::default()
            });
            let rep = run.reps.last_mut().expect("just pushed");
            // A pushes what it builds: B and the prebuild get another,
            // empty registry.
            let registry = start_registry(&rdir.join(format!("registry-a{r}")))?;
            eprintln!(
                "boot ({}, {}/{}): A, fresh workspace, no image in the registry …",
                repo.name(),
                r + 1,
                cfg.boot_reps
            );
            let a = lab.boot(&registry, &format!("a{r}"))?;
            eprintln!(
                "   A: all {} deployed after {} (devd boot.ms {}), {} built",
                a.services,
                human_ms(a.wall_ms),
                a.ms.map_or("—".into(), human_ms),
                a.built
            );
            if a.built != lab.services || a.reused != 0 {
                bail!(
                    "with no image in the registry every service should be built: {}",
                    json!(a)
                );
            }
            rep.cold = Some(a);
            drop(registry);

            let registry = start_registry(&rdir.join(format!("registry-b{r}")))?;
            eprintln!("   CI: devd prebuild into an empty registry …");
            let (first, again) = lab.prebuild(&registry, &format!("ci{r}"))?;
            eprintln!(
                "   prebuild: {} built in {}; again: {} present in {}",
                first.built,
                human_ms(first.wall_ms),
                again.present,
                human_ms(again.wall_ms)
            );
            if first.built != lab.services || again.present != lab.services {
                bail!(
                    "devd prebuild should build all {} images, then find them all present: \
                     {} then {}",
                    lab.services,
                    json!(first),
                    json!(again)
                );
            }
            rep.prebuild = Some(first);
            rep.prebuild_again = Some(again);

            eprintln!("   B: fresh workspace, every image prebuilt …");
            let b = lab.boot(&registry, &format!("b{r}"))?;
            eprintln!(
                "   B: all {} deployed after {} (devd boot.ms {}), {} reused, {} built",
                b.services,
                human_ms(b.wall_ms),
                b.ms.map_or("—".into(), human_ms),
                b.reused,
                b.built
            );
            if b.reused != lab.services || b.built != 0 {
                bail!(
                    "with every image prebuilt no service should be built: {}",
                    json!(b)
                );
            }
            rep.prebuilt = Some(b);
            rep.loadavg_start_end[1] = loadavg();
        }
    }
    Ok(())
}

/// One repository's origin, laptop clone and scratch directory.
struct Lab<'a> {
    cfg: &'a Config,
    dir: &'a Path,
    git_remote: String,
    laptop: &'a Path,
    services: u64,
}

impl Lab<'_> {
    /// A fresh container storage (busybox base only) named `name`.
    fn storage(&self, name: &str) -> anyhow::Result<ContainerEnv> {
        let env = ContainerEnv::in_dir(&self.dir.join(format!("containers-{name}")))?;
        env.try_build_busybox_base()?;
        Ok(env)
    }

    /// A fresh workspace `boot-NAME` against `registry`: its own receiver,
    /// storage and `DEVD_HOME`; `devd start` → every service deployed.
    fn boot(&self, registry: &Registry, name: &str) -> anyhow::Result<Boot> {
        // Declared before the receiver and the daemon: dropped after them.
        let env = self.storage(name)?;
        let config = self.dir.join(format!("receiver-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[build]\nbackend = \"local\"\nregistry = \"{}\"\n\
                 insecure_registry = true\nconcurrency = 2\n",
                registry.addr()
            ),
        )?;
        let rx = Receiver::start(
            &receiver_bin(self.cfg),
            &self.dir.join(format!("receiver-{name}")),
            &self.git_remote,
            &format!("boot-{name}"),
            &config,
            &env.env(),
        )?;
        std::fs::write(self.laptop.join("devd.local.toml"), rx.local_config())?;
        let home: PathBuf = self.dir.join(format!("home-{name}"));
        let mut d = Devd::new(&self.cfg.devd_bin, &home, self.laptop).with_env(env.env());
        let t = Instant::now();
        d.start()?;
        let list = wait_all_deployed(&d, POLL)?;
        let wall_ms = ms(t.elapsed());
        if list.len() as u64 != self.services {
            bail!(
                "devd status lists {} services, the repository declares {}",
                list.len(),
                self.services
            );
        }
        // The boot object is complete once the last deploy event is in.
        let t = Instant::now();
        let boot = loop {
            let b = d.status()?["boot"].clone();
            if b["ms"].is_number() {
                break b;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "devd status reports no boot time 30 s after every service was deployed: {b}"
                );
            }
            std::thread::sleep(POLL);
        };
        d.stop()?;
        let n = |k: &str| boot[k].as_u64().unwrap_or(0);
        Ok(Boot {
            wall_ms,
            ms: boot["ms"].as_f64(),
            services: n("services"),
            built: n("built"),
            reused: n("reused"),
            running: n("running"),
            failed: n("failed"),
        })
    }

    /// `devd prebuild` on the laptop clone's commit, from a fresh storage
    /// (a CI machine), twice: building, then finding every image present.
    fn prebuild(&self, registry: &Registry, name: &str) -> anyhow::Result<(Prebuild, Prebuild)> {
        let env = self.storage(name)?;
        let d = Devd::new(
            &self.cfg.devd_bin,
            &self.dir.join(format!("home-{name}")),
            self.laptop,
        )
        .with_env(env.env());
        let once = || -> anyhow::Result<Prebuild> {
            let t = Instant::now();
            let out = d.run(&[
                "prebuild",
                "--registry",
                &registry.addr(),
                "--insecure-registry",
                "--json",
            ])?;
            let wall_ms = ms(t.elapsed());
            let r: Value = serde_json::from_str(out.trim())
                .with_context(|| format!("parsing devd prebuild --json: {out}"))?;
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            Ok(Prebuild {
                wall_ms,
                ms: r["ms"].as_f64(),
                built: n("built"),
                present: n("present"),
                failed: n("failed"),
            })
        };
        Ok((once()?, once()?))
    }
}

fn ms_fig(v: f64) -> Figure {
    Figure::new(v, "ms", human_ms(v))
}

fn p50(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (!s.is_empty()).then(|| percentile(&s, 50.0))
}

/// "1.62 s, 1.70 s, 1.81 s": every sample, sorted.
fn samples(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.iter()
        .map(|&x| human_ms(x))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows and details.
fn summarize(cfg: &Config, out: &[RepoRun], results: &mut Results) {
    let s = Scenario::Boot.key();
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for run in out {
        let label = run.repo.label();
        let n = run.repo.services();
        let cold = run.boots(|r| r.cold.as_ref());
        let warm = run.boots(|r| r.prebuilt.as_ref());
        let wall = |b: &[&Boot]| b.iter().map(|b| b.wall_ms).collect::<Vec<_>>();
        let own = |b: &[&Boot]| b.iter().filter_map(|b| b.ms).collect::<Vec<_>>();
        let (cold_wall, warm_wall) = (wall(&cold), wall(&warm));
        let (cold_own, warm_own) = (own(&cold), own(&warm));
        let reps = format!("n = {} / {}", warm.len(), cold.len());
        rows.push(Row::new(
            s,
            format!(
                "p50 fresh workspace, every image prebuilt by `devd prebuild`: spawning `devd \
                 start` → all {n} services deployed, runner's clock ({label}; {reps}; prebuilt \
                 {}, none {})",
                samples(&warm_wall),
                samples(&cold_wall)
            ),
            p50(&warm_wall).map(ms_fig),
            "the same fresh workspace with no prebuilt image: every service built on boot",
            p50(&cold_wall).map(ms_fig),
            false,
        ));
        rows.push(Row::new(
            s,
            format!(
                "p50 the same, devd's own figure (`devd status --json` boot.ms: daemon start → \
                 every service deployed; {label}; {reps})"
            ),
            p50(&warm_own).map(ms_fig),
            "boot.ms with no prebuilt image",
            p50(&cold_own).map(ms_fig),
            false,
        ));
        let most = |b: &[&Boot], f: fn(&Boot) -> u64| b.iter().map(|b| f(b)).max();
        let least = |b: &[&Boot], f: fn(&Boot) -> u64| b.iter().map(|b| f(b)).min();
        let builds = |v: u64| Figure::new(v as f64, "builds", format!("{v} built"));
        rows.push(Row::new(
            s,
            format!(
                "images built during the boot, most in any repetition (prebuilt: reused {} of \
                 {n} in every boot; {label})",
                least(&warm, |b| b.reused).map_or("—".into(), |r| r.to_string())
            ),
            most(&warm, |b| b.built).map(builds),
            "no prebuilt image (fewest in any repetition)",
            least(&cold, |b| b.built).map(builds),
            false,
        ));
        let pre = run.prebuilds(|r| r.prebuild.as_ref());
        let again = run.prebuilds(|r| r.prebuild_again.as_ref());
        let pre_wall: Vec<f64> = pre.iter().map(|p| p.wall_ms).collect();
        let again_wall: Vec<f64> = again.iter().map(|p| p.wall_ms).collect();
        rows.push(Row::new(
            s,
            format!(
                "p50 `devd prebuild` in CI (fresh storage, empty registry): build and push all \
                 {n} images ({label}; n = {})",
                pre.len()
            ),
            p50(&pre_wall).map(ms_fig),
            "—",
            None,
            false,
        ));
        rows.push(Row::new(
            s,
            format!(
                "p50 `devd prebuild` again on the same commit: all {n} present, nothing built \
                 ({label}; n = {})",
                again.len()
            ),
            p50(&again_wall).map(ms_fig),
            "`devd prebuild` building them (above)",
            p50(&pre_wall).map(ms_fig),
            false,
        ));
        let ratio = p50(&cold_wall).zip(p50(&warm_wall)).map(|(a, b)| a / b);
        details.insert(
            run.repo.name(),
            json!({
                "label": label,
                "services": n,
                "prebuilt_speedup_wall": ratio,
                "prebuilt_speedup_boot_ms": p50(&cold_own).zip(p50(&warm_own)).map(|(a, b)| a / b),
                "cold_wall_ms": cold_wall,
                "prebuilt_wall_ms": warm_wall,
                "cold_boot_ms": cold_own,
                "prebuilt_boot_ms": warm_own,
                "prebuild_ms": pre_wall,
                "prebuild_again_ms": again_wall,
                "reps": run.reps,
            }),
        );
    }
    details.insert(
        "settings".into(),
        json!({"reps": cfg.boot_reps, "large": cfg.boot_large, "poll_ms": ms(POLL),
               "receiver_build_concurrency": 2}),
    );
    results
        .details
        .insert("boot".into(), Value::Object(details));
    results.rows.extend(rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(wall_ms: f64, built: u64, reused: u64) -> Boot {
        Boot {
            wall_ms,
            ms: Some(wall_ms - 100.0),
            services: 3,
            built,
            reused,
            ..Boot::default()
        }
    }

    fn prebuild(wall_ms: f64) -> Prebuild {
        Prebuild {
            wall_ms,
            ..Prebuild::default()
        }
    }

    #[test]
    fn rows_compare_a_prebuilt_boot_with_one_that_builds() {
        let cfg = Config::new(true, "/w".into(), "/b/devd".into(), "cmd".into());
        let rep = |a: f64, b: f64| Rep {
            cold: Some(boot(a, 3, 0)),
            prebuild: Some(prebuild(5000.0)),
            prebuild_again: Some(prebuild(400.0)),
            prebuilt: Some(boot(b, 0, 3)),
            ..Rep::default()
        };
        let out = [RepoRun {
            repo: Repo::Demo,
            reps: vec![
                rep(3000.0, 1000.0),
                rep(3300.0, 1200.0),
                rep(2900.0, 1100.0),
            ],
        }];
        let mut r = Results::default();
        summarize(&cfg, &out, &mut r);
        assert_eq!(r.rows.len(), 5);
        assert!(
            r.rows
                .iter()
                .all(|row| row.scenario == "8 fresh workspace boot")
        );
        let fig = |i: usize| r.rows[i].devd.as_ref().map(|f| f.value);
        let base = |i: usize| r.rows[i].baseline.as_ref().map(|f| f.value);
        assert_eq!((fig(0), base(0)), (Some(1100.0), Some(3000.0)));
        assert_eq!(
            crate::bench::describe_ratio(&r.rows[0]),
            "2.7× faster",
            "{:?}",
            r.rows[0]
        );
        assert!(
            r.rows[0].metric.contains("1.00 s, 1.10 s, 1.20 s"),
            "{}",
            r.rows[0].metric
        );
        assert_eq!((fig(1), base(1)), (Some(1000.0), Some(2900.0)));
        assert_eq!((fig(2), base(2)), (Some(0.0), Some(3.0)));
        assert!(
            r.rows[2].metric.contains("reused 3 of 3"),
            "{}",
            r.rows[2].metric
        );
        assert_eq!(fig(3), Some(5000.0));
        assert_eq!((fig(4), base(4)), (Some(400.0), Some(5000.0)));
        let d = &r.details["boot"]["demo"];
        assert_eq!(d["prebuilt_wall_ms"], json!([1000.0, 1200.0, 1100.0]));
    }

    #[test]
    fn copies_are_distinct_services() {
        let t = tempfile::tempdir().unwrap();
        write_copies(t.path(), 3).unwrap();
        let toml = std::fs::read_to_string(t.path().join("devd.toml")).unwrap();
        for i in 1..=3 {
            assert!(toml.contains(&format!("[services.web0{i}]")), "{toml}");
            assert!(
                toml.contains(&format!("image = \"boot/web0{i}\"")),
                "{toml}"
            );
        }
        let page = |i: usize| {
            std::fs::read_to_string(t.path().join(format!("services/web0{i}/www/index.html")))
                .unwrap()
        };
        assert_ne!(page(1), page(2));
        assert!(page(3).contains("web03 v1"));
        assert!(t.path().join("services/web02/Dockerfile").is_file());
    }
}

//! Scenario 10: the repository's own manifests (`[deploy]`).
//!
//! - **Render time** of a generated kustomization of 50 objects (a base
//!   of ten apps × Deployment, Service, ConfigMap, ServiceAccount,
//!   PodDisruptionBudget, and an overlay), `devd render` (the whole
//!   command: the catalog, every service's context digest, `kubectl
//!   kustomize`, the namespacing and image substitution) against `kubectl
//!   kustomize` alone on the same directory, alternating, in the same run.
//! - **Manifest-only edit → applied and rolled** on `examples/stack` with
//!   the local backend for real (buildah, podman): each edit changes the
//!   overlay's ConfigMap literal `MODE`; the time runs from just before the
//!   write to the first `GET /env.txt` at web's URL that shows the new
//!   mode (the web pod replayed with the new hash-suffixed ConfigMap).
//!   Baseline in the same run: a save in web's own context (its page),
//!   which builds web's image and applies the stack with it.

use crate::bench::{Config, Scenario};
use crate::deploy::{copy_dir, loadavg, make_origin_with, tool_versions};
use crate::devd::Devd;
use crate::results::{Figure, Results, Row};
use crate::util::{human_ms, percentile};
use anyhow::{Context, bail};
use devd_testkit::{ContainerEnv, check_container_tools, git, http_get_within};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);
const SETTLE: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(180);

/// What the report says about scenario 10.
pub const NOTES: &str = "Scenario 10 times (a) `devd render` against `kubectl kustomize` alone on a \
generated kustomization of 50 objects (ten apps of Deployment, Service, ConfigMap, ServiceAccount \
and PodDisruptionBudget, two of them devd-built, plus an overlay), alternating, nearest-rank \
percentiles; devd render does kubectl's work plus the catalog, each service's context digest, the \
namespacing and the image substitution; (b) on `examples/stack` with the local backend (buildah, \
podman kube play), a manifest-only edit (the overlay's ConfigMap literal) from the write to the \
first `GET /env.txt` at web's stable URL showing the new value, against a save in web's context \
(its page), which builds web's image and applies the stack, timed the same way; one warm-up of \
each not counted; the machine settles 300 ms before each.";

/// The baselines' names in the table.
const RENDER_BASELINE: &str = "kubectl kustomize alone, same directory";
const EDIT_BASELINE: &str = "a save in web's context: image build + stack apply";

/// `examples/stack` in this source tree.
fn stack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stack")
}

/// Check what scenario 10 needs.
pub fn check_tools(_cfg: &Config) -> anyhow::Result<()> {
    check_container_tools(false).context("scenario 10 (manifests)")?;
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .context("scenario 10 needs kubectl on the PATH (scripts/test.sh puts .venv/bin there)")?;
    Ok(())
}

#[derive(Debug, Default)]
struct Samples {
    render_ms: Vec<f64>,
    kustomize_ms: Vec<f64>,
    manifest_ms: Vec<f64>,
    build_ms: Vec<f64>,
    objects: usize,
}

/// Run scenario 10; its rows, details and errors go into `results`.
pub fn run(cfg: &Config, results: &mut Results) {
    let started = Instant::now();
    let mut s = Samples::default();
    let load_start = loadavg();
    if let Err(e) = render_times(cfg, &mut s).and_then(|()| edits(cfg, &mut s)) {
        let msg = format!("{e:#}");
        eprintln!("!! {}: {msg}", Scenario::Manifests.key());
        results.errors.insert(Scenario::Manifests.key().into(), msg);
    }
    results.machine.container_tools = tool_versions();
    summarize(&s, results);
    results.details.insert(
        "manifests".into(),
        json!({
            "render_ms": s.render_ms,
            "kustomize_ms": s.kustomize_ms,
            "objects": s.objects,
            "manifest_edit_ms": s.manifest_ms,
            "build_edit_ms": s.build_ms,
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

fn summarize(s: &Samples, results: &mut Results) {
    let key = Scenario::Manifests.key();
    let fig = |v: f64| Figure::new(v, "ms", human_ms(v));
    results.rows.push(Row::new(
        key,
        format!(
            "p50 render of {} objects (n = {})",
            s.objects,
            s.render_ms.len()
        ),
        pct(&s.render_ms, 50.0).map(fig),
        RENDER_BASELINE,
        pct(&s.kustomize_ms, 50.0).map(fig),
        false,
    ));
    for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
        results.rows.push(Row::new(
            key,
            format!(
                "{label} manifest-only edit → rolled and served (n = {}, build n = {})",
                s.manifest_ms.len(),
                s.build_ms.len()
            ),
            pct(&s.manifest_ms, p).map(fig),
            EDIT_BASELINE,
            pct(&s.build_ms, p).map(fig),
            false,
        ));
    }
}

/// A kustomization of ten apps × five objects.
fn generate(dir: &Path) -> anyhow::Result<usize> {
    let base = dir.join("deploy/base");
    std::fs::create_dir_all(&base)?;
    let mut resources = Vec::new();
    let mut objects = 0;
    for i in 0..10 {
        let app = format!("app{i}");
        let image = if i < 2 {
            format!("bench/{app}:latest")
        } else {
            "docker.io/library/busybox:stable".into()
        };
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\nspec:\n  selector:\n    matchLabels: {{app: {app}}}\n  template:\n    metadata:\n      labels: {{app: {app}}}\n    spec:\n      serviceAccountName: {app}\n      containers:\n      - name: {app}\n        image: {image}\n        envFrom:\n        - configMapRef: {{name: {app}-config}}\n        ports:\n        - containerPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\nspec:\n  selector: {{app: {app}}}\n  ports:\n  - port: 8080\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {app}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: {app}\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels: {{app: {app}}}\n"
        );
        std::fs::write(base.join(format!("{app}.yaml")), yaml)?;
        resources.push(format!("- {app}.yaml"));
        // Four in the file, and its generated ConfigMap.
        objects += 5;
    }
    let generators: String = (0..10)
        .map(|i| format!("- name: app{i}-config\n  literals: [MODE=base]\n"))
        .collect();
    std::fs::write(
        base.join("kustomization.yaml"),
        format!(
            "resources:\n{}\nconfigMapGenerator:\n{generators}",
            resources.join("\n")
        ),
    )?;
    let dev = dir.join("deploy/dev");
    std::fs::create_dir_all(&dev)?;
    std::fs::write(
        dev.join("kustomization.yaml"),
        "resources:\n- ../base\ncommonLabels:\n  env: dev\n",
    )?;
    let mut catalog = String::from("[deploy]\nkustomize = \"deploy/dev\"\n");
    for i in 0..2 {
        let ctx = dir.join(format!("app{i}"));
        std::fs::create_dir_all(&ctx)?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM docker.io/library/busybox:stable\n",
        )?;
        catalog.push_str(&format!(
            "[services.app{i}]\ncontext = \"app{i}\"\nimage = \"bench/app{i}\"\n"
        ));
    }
    std::fs::write(dir.join("devd.toml"), catalog)?;
    git(dir, &["init", "-q"])?;
    Ok(objects)
}

fn timed(cmd: &mut Command) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd.output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn render_times(cfg: &Config, s: &mut Samples) -> anyhow::Result<()> {
    let dir = cfg.work.join("manifests-render");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    s.objects = generate(&dir)?;
    let reps = if cfg.quick { 5 } else { 30 };
    for k in 0..=reps {
        let (devd_ms, out) = timed(
            Command::new(&cfg.devd_bin)
                .args(["render", "-o", "json"])
                .current_dir(&dir),
        )?;
        let (kubectl_ms, _) = timed(
            Command::new("kubectl")
                .args(["kustomize", "deploy/dev"])
                .current_dir(&dir),
        )?;
        let list: Value = serde_json::from_str(&out)?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if n != s.objects {
            bail!("devd render printed {n} objects, not {}", s.objects);
        }
        if k > 0 {
            s.render_ms.push(devd_ms);
            s.kustomize_ms.push(kubectl_ms);
        }
    }
    Ok(())
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

/// web's URL once every workload of the stack is ready.
fn wait_stack(d: &Devd) -> anyhow::Result<String> {
    let t = Instant::now();
    loop {
        let st = d.status()?;
        let stack = &st["stack"];
        if let Some(e) = stack["error"].as_str() {
            bail!("the stack failed: {e}");
        }
        let workloads = stack["workloads"].as_array().cloned().unwrap_or_default();
        if let Some(w) = workloads.iter().find(|w| w["state"] == "failed") {
            bail!("{} failed: {}", w["key"], w["reason"]);
        }
        let ready = !workloads.is_empty() && workloads.iter().all(|w| w["state"] == "ready");
        let url = stack["urls"]
            .as_array()
            .and_then(|u| u.iter().find(|p| p[0] == "web"))
            .and_then(|p| p[1].as_str());
        if let (true, Some(url)) = (ready, url) {
            return Ok(url.to_owned());
        }
        if t.elapsed() > TIMEOUT {
            bail!("the stack was not ready within {TIMEOUT:?}: {stack}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn overlay(mode: &str) -> String {
    format!(
        "resources:\n- ../../base\nconfigMapGenerator:\n- name: web-config\n  behavior: merge\n  literals:\n  - MODE={mode}\n"
    )
}

fn edits(cfg: &Config, s: &mut Samples) -> anyhow::Result<()> {
    let dir = cfg.work.join("manifests");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let env = ContainerEnv::in_dir(&dir.join("containers"))?;
    eprintln!("manifests: building the busybox base image in private storage …");
    env.try_build_busybox_base()?;
    let origin = make_origin_with(&dir, "examples/stack", |seed| copy_dir(&stack_dir(), seed))?;
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
    eprintln!("manifests: devd start → the stack runs (two image builds) …");
    d.start()?;
    let url = format!("{}/env.txt", wait_stack(&d)?);
    let page = format!("{}/", url.trim_end_matches("/env.txt"));
    let nonce = std::process::id();
    let n = if cfg.quick { 3 } else { 20 };
    let builds = if cfg.quick { 2 } else { 10 };
    for k in 0..=n.max(builds) {
        if k <= n {
            std::thread::sleep(SETTLE);
            let mode = format!("m{nonce}x{k}");
            let t0 = Instant::now();
            std::fs::write(
                laptop.join("deploy/overlays/dev/kustomization.yaml"),
                overlay(&mode),
            )?;
            let ms = wait_served(&url, &format!("mode={mode}"), t0)?;
            eprintln!("   manifest edit {k}: served after {}", human_ms(ms));
            if k > 0 {
                s.manifest_ms.push(ms);
            }
        }
        if k <= builds {
            std::thread::sleep(SETTLE);
            let marker = format!("web-{nonce}-{k}");
            let t0 = Instant::now();
            std::fs::write(
                laptop.join("services/web/www/index.html"),
                format!("<h1>{marker}</h1>\n"),
            )?;
            let ms = wait_served(&page, &marker, t0)?;
            eprintln!("   web save {k}: served after {}", human_ms(ms));
            if k > 0 {
                s.build_ms.push(ms);
            }
        }
    }
    // Removes the pods and stops the daemon.
    d.run(&["down", "--yes"])?;
    let _ = d.stop();
    Ok(())
}

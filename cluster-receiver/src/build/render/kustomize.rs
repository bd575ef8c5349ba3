//! A kustomization: the local files it reads (so a change to any of them
//! re-renders, and none lies outside the worktree), and its build through
//! `kubectl kustomize`.
//!
//! The files are found by reading each `kustomization.yaml` (or `.yml`,
//! `Kustomization`) from the one `[deploy] kustomize` names: `resources`,
//! `bases`, `components`, `crds`, `patches`/`patchesStrategicMerge`/
//! `patchesJson6902`/`replacements` paths, and the `files`/`envs` of
//! generators. A directory among them is read as a kustomization in turn.
//! Remote bases (URLs) and Helm charts are refused: the render must come
//! from the worktree alone, as it was synced.

use super::RenderError;
use super::files::{MAX_FILE_BYTES, inside, read};
use devd_protocol::RelPath;
use std::path::Path;
use std::time::Duration;

/// How long `kubectl kustomize` may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many kustomizations in one tree.
const MAX_KUSTOMIZATIONS: usize = 200;

const FILE_NAMES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The worktree paths the kustomization at `dir` reads, itself included
/// (files and directories, sorted).
pub fn inputs(root: &Path, dir: &RelPath) -> Result<Vec<RelPath>, RenderError> {
    let mut seen = Vec::new();
    let mut todo = vec![dir.clone()];
    let mut out = Vec::new();
    while let Some(d) = todo.pop() {
        if seen.contains(&d) {
            continue;
        }
        seen.push(d.clone());
        if seen.len() > MAX_KUSTOMIZATIONS {
            return Err(RenderError::Invalid {
                origin: format!("kustomize {dir}"),
                problem: format!("reads more than {MAX_KUSTOMIZATIONS} kustomizations"),
            });
        }
        let abs = inside(root, &d)?;
        let Some(name) = FILE_NAMES.iter().find(|n| abs.join(n).is_file()) else {
            return Err(RenderError::Kustomize {
                dir: d.to_string(),
                error: format!("{d} has no kustomization.yaml"),
            });
        };
        let file = RelPath::new(format!("{d}/{name}")).map_err(|e| RenderError::Invalid {
            origin: d.to_string(),
            problem: e.to_string(),
        })?;
        let text = read(root, &file)?;
        let k: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| RenderError::Yaml {
                file: file.to_string(),
                line: e.location().map(|l| l.line()),
                error: e.to_string().lines().next().unwrap_or_default().to_owned(),
            })?;
        out.push(d.clone());
        if k.get("helmCharts").is_some() || k.get("helmChartInflationGenerator").is_some() {
            return Err(RenderError::Invalid {
                origin: file.to_string(),
                problem: "uses Helm charts, which devd does not render: render the chart into YAML and commit it (e.g. `helm template`), and list that file".into(),
            });
        }
        for reference in references(&k) {
            if reference.contains("://") || reference.starts_with("github.com/") {
                return Err(RenderError::Invalid {
                    origin: file.to_string(),
                    problem: format!(
                        "{reference:?} is a remote base: devd renders from the synced worktree only; vendor it into the repository"
                    ),
                });
            }
            let rel = join(&d, &reference).ok_or_else(|| RenderError::Escapes {
                path: format!("{file}: {reference}"),
            })?;
            let path = inside(root, &rel).map_err(|e| match e {
                RenderError::Escapes { .. } => RenderError::Escapes {
                    path: format!("{file}: {reference}"),
                },
                RenderError::Read { error, .. } => RenderError::Kustomize {
                    dir: d.to_string(),
                    error: format!("{file}: {reference}: {error}"),
                },
                other => other,
            })?;
            if path.is_dir() {
                todo.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every local path a kustomization's fields name.
fn references(k: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let strings = |v: Option<&serde_json::Value>, out: &mut Vec<String>| {
        for s in v.and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(s) = s.as_str() {
                out.push(s.to_owned());
            }
        }
    };
    for field in [
        "resources",
        "bases",
        "components",
        "crds",
        "patchesStrategicMerge",
    ] {
        strings(k.get(field), &mut out);
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for p in k
            .get(field)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(path) = p.get("path").and_then(|p| p.as_str()) {
                out.push(path.to_owned());
            }
        }
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for g in k
            .get(field)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            for files in ["files", "envs"] {
                for f in g
                    .get(files)
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    // `key=path` names the key.
                    if let Some(f) = f.as_str() {
                        out.push(f.rsplit_once('=').map_or(f, |(_, p)| p).to_owned());
                    }
                }
            }
            if let Some(env) = g.get("env").and_then(|e| e.as_str()) {
                out.push(env.to_owned());
            }
        }
    }
    // Inline patches (a YAML text) are not paths.
    out.retain(|p| !p.contains('\n'));
    out
}

/// `dir/reference`, normalized; `None` when it leaves the repository.
fn join(dir: &RelPath, reference: &str) -> Option<RelPath> {
    if reference.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.as_str().split('/').collect();
    for c in reference.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    RelPath::new(parts.join("/")).ok()
}

/// `kubectl kustomize DIR` run in the worktree: the rendered YAML, or
/// kubectl's own error.
pub fn build(root: &Path, dir: &RelPath, kubectl: &Path) -> Result<String, RenderError> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir.as_str())
        .current_dir(root)
        .env("KUBECONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RenderError::Kustomize {
            dir: dir.to_string(),
            error: if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is not installed: install kubectl (scripts/try.sh does), or set [deploy] manifests to plain YAML",
                    kubectl.display()
                )
            } else {
                format!("cannot run {}: {e}", kubectl.display())
            },
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut stdout).take(MAX_FILE_BYTES * 4).read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut b);
        b
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| RenderError::Kustomize {
            dir: dir.to_string(),
            error: e.to_string(),
        })? {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RenderError::Kustomize {
                dir: dir.to_string(),
                error: format!("kubectl kustomize took longer than {TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(RenderError::Kustomize {
            dir: dir.to_string(),
            error: err.trim().to_owned(),
        });
    }
    String::from_utf8(out).map_err(|_| RenderError::Kustomize {
        dir: dir.to_string(),
        error: "kubectl kustomize printed something that is not UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn joins_inside_the_repository_only() {
        assert_eq!(
            join(&rel("deploy/overlays/dev"), "../../base"),
            Some(rel("deploy/base"))
        );
        assert_eq!(join(&rel("deploy"), "./a.yaml"), Some(rel("deploy/a.yaml")));
        assert_eq!(join(&rel("deploy"), "../../etc"), None);
        assert_eq!(join(&rel("deploy"), "/etc/passwd"), None);
    }

    #[test]
    fn finds_what_a_kustomization_reads() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w(
            "deploy/base/kustomization.yaml",
            "resources: [web.yaml]\nconfigMapGenerator:\n- name: cfg\n  files: [conf=app.conf]\n  envs: [app.env]\n",
        );
        w("deploy/base/web.yaml", "");
        w("deploy/base/app.conf", "");
        w("deploy/base/app.env", "");
        w(
            "deploy/dev/kustomization.yaml",
            "resources: [../base]\npatches:\n- path: patch.yaml\n- patch: |-\n    - op: add\n",
        );
        w("deploy/dev/patch.yaml", "");
        let found: Vec<String> = inputs(dir.path(), &rel("deploy/dev"))
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "deploy/base",
                "deploy/base/app.conf",
                "deploy/base/app.env",
                "deploy/base/web.yaml",
                "deploy/dev",
                "deploy/dev/patch.yaml"
            ]
        );
        w(
            "deploy/dev/kustomization.yaml",
            "resources: [../../../outside]\n",
        );
        let e = inputs(dir.path(), &rel("deploy/dev")).unwrap_err();
        assert!(matches!(e, RenderError::Escapes { .. }), "{e}");
        w(
            "deploy/dev/kustomization.yaml",
            "resources: [https://github.com/x/y//base]\n",
        );
        let e = inputs(dir.path(), &rel("deploy/dev"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("remote base"), "{e}");
        std::os::unix::fs::symlink("/etc", dir.path().join("deploy/etc")).unwrap();
        w("deploy/dev/kustomization.yaml", "resources: [../etc]\n");
        let e = inputs(dir.path(), &rel("deploy/dev")).unwrap_err();
        assert!(matches!(e, RenderError::Escapes { .. }), "{e}");
    }
}

//! `devd prebuild`: for CI, on any commit. Builds the image of every service
//! in the commit's catalog whose context-digest tag is not in the registry
//! yet, pushes it, and nothing else.
//!
//! The context of each service is taken from the commit's tree (exported to
//! a temporary directory, so nothing a CI checkout leaves around counts) and
//! digested exactly as a receiver digests its worktree
//! ([`devd_receiver::build::context::snapshot`]). The tag is the same, so a fresh
//! workspace at that commit finds every image and deploys it without a
//! build; build steps run first as they do on a receiver. Images are built
//! with buildah ([`LocalBackend`]), on the CI machine.

use crate::repo::Repo;
use anyhow::Context;
use devd_protocol::CommitId;
use devd_protocol::tree::EntryKind;
use devd_receiver::build::backend::local::{LocalBackend, LocalConfig};
use devd_receiver::build::backend::{Backend, BuildRequest};
use devd_sync::catalog::Catalog;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to prebuild.
#[derive(Debug, Clone)]
pub struct Options {
    /// The repository (any directory in it).
    pub dir: PathBuf,
    /// The commit (any rev spec); default HEAD.
    pub rev: Option<String>,
    /// Registry (`host:port[/prefix]`) to look up and push to; without one
    /// images stay in this machine's container storage (which an embedded
    /// receiver on the same machine looks up).
    pub registry: Option<String>,
    /// Speak plain HTTP to the registry.
    pub insecure_registry: bool,
    /// Only these services (default: all).
    pub services: Vec<String>,
}

/// What happened to one service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "result")]
pub enum Outcome {
    /// The image for this context was there already.
    Present { image: String },
    /// Built (and pushed, with a registry).
    Built { image: String, duration_ms: u64 },
    /// The build failed.
    Failed {
        error: String,
        log_tail: Vec<String>,
    },
}

/// One service's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub service: String,
    pub context: String,
    pub tag: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub commit: String,
    pub services: Vec<Line>,
    pub built: usize,
    pub present: usize,
    pub failed: usize,
    pub ms: u64,
}

/// Write commit `c`'s tree into `dest`: files with their exec bit, symlinks.
fn export_tree(repo: &Repo, c: CommitId, dest: &Path) -> anyhow::Result<()> {
    for (path, entry) in repo.tree(c)? {
        let to = dest.join(path.as_str());
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let data = repo.blob(entry.oid)?;
        match entry.kind {
            EntryKind::Symlink => {
                let target = String::from_utf8_lossy(&data).into_owned();
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("symlink {}", to.display()))?;
            }
            kind => {
                std::fs::write(&to, &data).with_context(|| format!("write {}", to.display()))?;
                let mode = if kind == EntryKind::Exec {
                    0o755
                } else {
                    0o644
                };
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Prebuild; `progress` gets a line per service as it finishes.
pub async fn run(opts: &Options, mut progress: impl FnMut(&Line)) -> anyhow::Result<Report> {
    let started = Instant::now();
    let repo = Repo::discover(&opts.dir)?;
    let commit = match &opts.rev {
        None => repo.head_commit()?,
        Some(rev) => repo.resolve(rev)?,
    };
    let scratch = tempfile::Builder::new()
        .prefix("devd-prebuild-")
        .tempdir()
        .context("create a temporary directory")?;
    let tree = scratch.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    {
        let (repo, tree) = (&repo, tree.clone());
        tokio::task::block_in_place(|| export_tree(repo, commit, &tree))
            .with_context(|| format!("export the tree of {commit}"))?;
    }
    let catalog = Catalog::load(&tree).with_context(|| format!("devd.toml at {commit}"))?;
    for name in &opts.services {
        anyhow::ensure!(
            catalog.get(name).is_some(),
            "no service {name:?} in devd.toml at {commit}; declared: {}",
            catalog
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let backend = LocalBackend::new(LocalConfig {
        registry: opts.registry.clone(),
        insecure_registry: opts.insecure_registry,
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        state_dir: scratch.path().join("backend"),
    });
    let mut lines = Vec::new();
    for service in &catalog.services {
        if !opts.services.is_empty() && !opts.services.contains(&service.name) {
            continue;
        }
        let snap_dir = scratch.path().join("contexts").join(&service.name);
        std::fs::create_dir_all(snap_dir.parent().expect("parent"))?;
        let (root, s, dir) = (tree.clone(), service.clone(), snap_dir.clone());
        let snap = tokio::task::spawn_blocking(move || {
            devd_receiver::build::context::snapshot(&root, &s, &dir, b"")
        })
        .await?
        .with_context(|| format!("build context of {}", service.name))?;
        let repository = backend.repository(&service.image);
        let tag = snap.tag();
        let outcome = match backend.lookup(&repository, &tag).await {
            Ok(Some(image)) => Outcome::Present { image },
            lookup => {
                if let Err(f) = lookup {
                    tracing::warn!(service = %service.name, error = %f, "image lookup failed; building");
                }
                let log = scratch.path().join(format!("{}.build.log", service.name));
                let t = Instant::now();
                let req = BuildRequest {
                    workspace: "prebuild".into(),
                    service: service.clone(),
                    generation: 0,
                    context: snap.clone(),
                    repository: repository.clone(),
                    tag: tag.clone(),
                    log,
                };
                match backend.build(&req).await {
                    Ok(image) => Outcome::Built {
                        image,
                        duration_ms: t.elapsed().as_millis() as u64,
                    },
                    Err(f) => Outcome::Failed {
                        error: f.error,
                        log_tail: f.log_tail,
                    },
                }
            }
        };
        let _ = std::fs::remove_dir_all(&snap_dir);
        let line = Line {
            service: service.name.clone(),
            context: snap.digest.clone(),
            tag,
            outcome,
        };
        progress(&line);
        lines.push(line);
    }
    let count = |f: fn(&Outcome) -> bool| lines.iter().filter(|l| f(&l.outcome)).count();
    Ok(Report {
        commit: commit.to_string(),
        built: count(|o| matches!(o, Outcome::Built { .. })),
        present: count(|o| matches!(o, Outcome::Present { .. })),
        failed: count(|o| matches!(o, Outcome::Failed { .. })),
        services: lines,
        ms: started.elapsed().as_millis() as u64,
    })
}

/// One human line for `line`.
pub fn describe(line: &Line) -> String {
    match &line.outcome {
        Outcome::Present { image } => format!("{:<16} present  {image}", line.service),
        Outcome::Built { image, duration_ms } => format!(
            "{:<16} built    {image} ({:.1} s)",
            line.service,
            *duration_ms as f64 / 1000.0
        ),
        Outcome::Failed { error, log_tail } => {
            let mut s = format!("{:<16} FAILED   {error}", line.service);
            for l in log_tail {
                s.push_str("\n    ");
                s.push_str(l);
            }
            s
        }
    }
}

//! Live update, the receiver's decisions (pure but for [`read`]): whether
//! a change can be copied into a service's running containers instead of
//! building its image, where each changed path goes in the container,
//! which `run` commands it triggers, and the worktree entries to copy.
//!
//! Paths are matched as the build context names them ([`context_path`]):
//! relative to the service's context, an `inputs` path outside the context
//! by its repository path (where the image has it).
//!
//! A service's **live difference** is the set of repository paths copied
//! into its containers since its image was deployed ([`LiveDiff`]): its
//! current worktree state, copied again, turns a container of the image
//! into one of the worktree. It is kept per workspace in
//! `builds/live.json`.

use devd_protocol::RelPath;
use devd_sync::catalog::{Live, Restart, Service, live::glob};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A live update copies at most this many bytes; more builds the image.
pub const MAX_LIVE_BYTES: u64 = 64 << 20;

/// Why a change is built rather than copied in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every affecting path falls under a sync rule: copy these.
    Live(BTreeSet<RelPath>),
    /// Build the image; the reason, for the log.
    Build(String),
}

/// `path` (repository-relative) as `service`'s build context names it, if
/// the service depends on it.
pub fn context_path(service: &Service, path: &RelPath) -> Option<String> {
    if !service.depends_on(path) {
        return None;
    }
    match &service.context {
        None => Some(path.as_str().to_owned()),
        Some(c) => match path.as_str().strip_prefix(c.as_str()) {
            Some(rest) if rest.starts_with('/') => Some(rest[1..].to_owned()),
            // Under an input outside the context: its repository path.
            _ => Some(path.as_str().to_owned()),
        },
    }
}

/// Where the context path `ctx` goes in the container, by the first sync
/// rule that covers it.
pub fn target(live: &Live, ctx: &str) -> Option<String> {
    live.sync.iter().find_map(|rule| {
        let rest = match &rule.from {
            None => Some(ctx),
            Some(f) if ctx == f.as_str() => Some(""),
            Some(f) => ctx
                .strip_prefix(f.as_str())
                .and_then(|r| r.strip_prefix('/')),
        }?;
        Some(match (rule.to.as_str(), rest) {
            (to, "") => to.to_owned(),
            ("/", r) => format!("/{r}"),
            (to, r) => format!("{to}/{r}"),
        })
    })
}

fn matches_any(globs: &[String], ctx: &str) -> bool {
    globs
        .iter()
        .filter_map(|g| glob(g).ok())
        .any(|m| m.is_match(ctx))
}

/// Live update or build, for `service` after `changed` (repository paths).
/// Only the paths the service depends on count; none of them: nothing to
/// copy (`Live` of an empty set).
pub fn decide(service: &Service, changed: &[RelPath]) -> Decision {
    let Some(live) = &service.live else {
        return Decision::Build("no [live] section".into());
    };
    let mut copy = BTreeSet::new();
    for p in changed {
        let Some(ctx) = context_path(service, p) else {
            continue;
        };
        if ctx == service.dockerfile.as_str() || ctx == ".dockerignore" {
            return Decision::Build(format!("{ctx} changed"));
        }
        if matches_any(&live.fall_back_on, &ctx) {
            return Decision::Build(format!("{ctx} matches live.fall_back_on"));
        }
        if target(live, &ctx).is_none() {
            return Decision::Build(format!("{ctx} is under no live.sync rule"));
        }
        copy.insert(p.clone());
    }
    Decision::Live(copy)
}

/// The `run` commands, in order, that the context paths of `paths`
/// trigger (a command without `when` runs every time).
pub fn commands(service: &Service, paths: &BTreeSet<RelPath>) -> Vec<Vec<String>> {
    let Some(live) = &service.live else {
        return Vec::new();
    };
    let ctx: Vec<String> = paths
        .iter()
        .filter_map(|p| context_path(service, p))
        .collect();
    live.run
        .iter()
        .filter(|r| r.when.is_empty() || ctx.iter().any(|c| matches_any(&r.when, c)))
        .map(|r| r.cmd.clone())
        .collect()
}

/// A path's state in the worktree, to copy into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorktreeEntry {
    /// `mode` as the image would have it (git's 0644/0755, or narrower).
    File {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    /// Deleted (or a directory now: its files are paths of their own).
    Absent,
}

/// The entries of `paths` in the worktree at `root`. Blocking; call it
/// while no generation is applied.
pub fn read(root: &Path, paths: &[RelPath]) -> std::io::Result<Vec<(RelPath, WorktreeEntry)>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let full = root.join(p.as_str());
        let entry = match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WorktreeEntry::Absent,
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                WorktreeEntry::Symlink(std::fs::read_link(&full)?.to_string_lossy().into_owned())
            }
            Ok(m) if m.is_file() => {
                let perm = m.permissions().mode();
                let exec = perm & 0o100 != 0;
                let mode = devd_protocol::overlay::narrowed_mode(exec, perm);
                WorktreeEntry::File {
                    data: std::fs::read(&full)?,
                    mode: devd_protocol::overlay::file_mode(exec, mode),
                }
            }
            Ok(_) => WorktreeEntry::Absent,
        };
        out.push((p.clone(), entry));
    }
    Ok(out)
}

/// The paths copied into a service's containers since its image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveDiff {
    pub paths: BTreeSet<String>,
    /// When the last live update was applied (Unix ms).
    pub at_ms: Option<u64>,
}

/// `builds/live.json`: every service's [`LiveDiff`].
pub fn load(path: &Path) -> BTreeMap<String, LiveDiff> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Write `all` to `path` atomically.
pub fn save(path: &Path, all: &BTreeMap<String, LiveDiff>) {
    let text = serde_json::to_string_pretty(all).unwrap_or_default();
    if let Err(e) = devd_sync::fsutil::write_atomic(path, text.as_bytes(), None) {
        tracing::warn!(error = %e, "cannot record the live differences");
    }
}

/// The restart a live update ends with: a re-application into a container
/// that just started never restarts it again.
pub fn restart_for(live: &Live, reapply: bool) -> Restart {
    match (&live.restart, reapply) {
        (Restart::Container, true) => Restart::None,
        (r, _) => r.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_sync::catalog::Catalog;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn web() -> Service {
        let c = Catalog::parse(
            r#"
[services.web]
context = "services/web"
inputs = ["shared"]
port = 8080
[services.web.live]
sync = [{ from = "www", to = "/srv/www" }, { from = "shared", to = "/" }]
fall_back_on = ["www/**/*.conf"]
run = [{ cmd = ["gzip"], when = ["www/*.html"] }, { cmd = ["always"] }]
"#,
        )
        .unwrap();
        c.get("web").unwrap().clone()
    }

    #[test]
    fn paths_map_to_the_container_by_the_context() {
        let s = web();
        let live = s.live.clone().unwrap();
        assert_eq!(
            context_path(&s, &p("services/web/www/a.html")).as_deref(),
            Some("www/a.html")
        );
        assert_eq!(
            context_path(&s, &p("shared/g.txt")).as_deref(),
            Some("shared/g.txt")
        );
        assert_eq!(context_path(&s, &p("services/api/x")), None);
        assert_eq!(
            target(&live, "www/a/b.html").as_deref(),
            Some("/srv/www/a/b.html")
        );
        assert_eq!(target(&live, "www").as_deref(), Some("/srv/www"));
        assert_eq!(target(&live, "wwwx/a"), None);
        assert_eq!(target(&live, "shared/g.txt").as_deref(), Some("/g.txt"));
        assert_eq!(target(&live, "Dockerfile"), None);
    }

    #[test]
    fn every_affecting_path_must_be_synced_and_none_fall_back() {
        let s = web();
        let live = |paths: &[&str]| Decision::Live(paths.iter().map(|x| p(x)).collect());
        assert_eq!(
            decide(
                &s,
                &[
                    p("services/web/www/a.html"),
                    p("services/web/www/new/dir/b.txt"),
                    p("shared/g.txt"),
                    p("services/api/unrelated"),
                ]
            ),
            live(&[
                "services/web/www/a.html",
                "services/web/www/new/dir/b.txt",
                "shared/g.txt"
            ])
        );
        assert_eq!(decide(&s, &[p("services/api/x")]), live(&[]));
        for (path, why) in [
            ("services/web/Dockerfile", "Dockerfile changed"),
            ("services/web/.dockerignore", ".dockerignore changed"),
            ("services/web/main.go", "under no live.sync rule"),
            ("services/web/www/nginx/site.conf", "fall_back_on"),
        ] {
            match decide(&s, &[p("services/web/www/a.html"), p(path)]) {
                Decision::Build(r) => assert!(r.contains(why), "{path}: {r}"),
                d => panic!("{path}: {d:?}"),
            }
        }
        let mut plain = s.clone();
        plain.live = None;
        assert!(matches!(
            decide(&plain, &[p("services/web/www/a.html")]),
            Decision::Build(_)
        ));
    }

    #[test]
    fn commands_run_when_a_path_matches() {
        let s = web();
        let set = |x: &[&str]| x.iter().map(|y| p(y)).collect::<BTreeSet<_>>();
        assert_eq!(
            commands(&s, &set(&["services/web/www/a.html"])),
            [vec!["gzip".to_string()], vec!["always".to_string()]]
        );
        // `*` stays within a directory.
        assert_eq!(
            commands(&s, &set(&["services/web/www/sub/a.html"])),
            [vec!["always".to_string()]]
        );
    }

    #[test]
    fn reads_files_links_modes_and_absence() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "A").unwrap();
        std::fs::write(d.path().join("x"), "X").unwrap();
        std::fs::set_permissions(d.path().join("x"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::fs::set_permissions(
            d.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let got = read(d.path(), &[p("a"), p("x"), p("secret"), p("l"), p("gone")]).unwrap();
        let e: Vec<_> = got.into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            e,
            [
                WorktreeEntry::File {
                    data: b"A".to_vec(),
                    mode: 0o644
                },
                WorktreeEntry::File {
                    data: b"X".to_vec(),
                    mode: 0o755
                },
                WorktreeEntry::File {
                    data: b"s".to_vec(),
                    mode: 0o600
                },
                WorktreeEntry::Symlink("a".into()),
                WorktreeEntry::Absent,
            ]
        );
    }
}

//! `[deploy]`: run the stack the repository's own Kubernetes manifests
//! describe, with devd's images in it, instead of workloads devd
//! generates from each service's run fields.
//!
//! ```toml
//! [deploy]
//! kustomize = "deploy/overlays/dev"        # a kustomization directory, or
//! manifests = ["k8s/*.yaml", "k8s/db/"]    # YAML files, directories, globs
//! ```
//!
//! Exactly one of the two. Paths are relative to the repository root; a
//! directory in `manifests` means every `*.yaml`/`*.yml`/`*.json` under it
//! (recursively); a glob's `*` stays within a directory, `**` crosses them.
//! The services keep their build fields; their run fields (`port`, `env`,
//! `replicas`, `expose`, `deployment`) are refused, since the manifests say
//! how everything runs. A service's `image` is the name the manifests use
//! for it (see the receiver's `render::images` for the matching rules).

use super::CatalogError;
use devd_protocol::RelPath;
use globset::GlobMatcher;
use serde::Deserialize;

/// At most this many `manifests` entries.
pub const MAX_MANIFEST_ENTRIES: usize = 64;

/// Where the stack's manifests come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `kubectl kustomize DIR`.
    Kustomize(RelPath),
    /// Plain YAML (or JSON) files.
    Manifests(Vec<ManifestPath>),
}

/// One `manifests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPath {
    /// A file or a directory (every YAML/JSON file under it).
    Path(RelPath),
    /// A glob over repository paths; `base` is its literal leading
    /// directory (`None`: the root), where a walk starts.
    Glob {
        pattern: String,
        base: Option<RelPath>,
    },
}

/// A validated `[deploy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub source: Source,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    kustomize: Option<String>,
    manifests: Option<Vec<String>>,
}

/// A glob over repository paths as `manifests` means it.
pub fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    super::live::glob(pattern)
}

fn invalid(field: &str, problem: String, fix: &str) -> CatalogError {
    CatalogError::Invalid {
        service: "[deploy]".into(),
        field: field.into(),
        problem,
        fix: fix.into(),
    }
}

/// A repository-relative path written in `[deploy]`: `./` and a trailing
/// `/` are allowed; `.` is the root (`None`).
fn relative(field: &str, value: &str) -> Result<Option<RelPath>, CatalogError> {
    let trimmed = value.trim_end_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    RelPath::new(trimmed).map(Some).map_err(|e| {
        invalid(
            field,
            format!("{value:?} is not a path inside the repository ({e})"),
            "use a path relative to the repository root, e.g. \"deploy/overlays/dev\"",
        )
    })
}

pub(super) fn deploy(raw: &RawDeploy) -> Result<Deploy, CatalogError> {
    let source = match (&raw.kustomize, &raw.manifests) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "kustomize",
                "cannot be combined with `manifests`".into(),
                "list the YAML files in the kustomization's `resources` and keep only kustomize = \"…\"",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "kustomize",
                "[deploy] names no manifests".into(),
                "add kustomize = \"path/to/kustomization-dir\" or manifests = [\"k8s/*.yaml\"]",
            ));
        }
        (Some(k), None) => Source::Kustomize(relative("kustomize", k)?.ok_or_else(|| {
            invalid(
                "kustomize",
                "is the repository root".into(),
                "move kustomization.yaml into a directory, e.g. \"deploy\"",
            )
        })?),
        (None, Some(m)) => {
            if m.is_empty() {
                return Err(invalid(
                    "manifests",
                    "is empty".into(),
                    "list YAML files, directories or globs, e.g. [\"k8s/*.yaml\"]",
                ));
            }
            if m.len() > MAX_MANIFEST_ENTRIES {
                return Err(invalid(
                    "manifests",
                    format!("{} entries, more than {MAX_MANIFEST_ENTRIES}", m.len()),
                    "use directories or globs that cover more at once",
                ));
            }
            let mut out = Vec::new();
            for (i, entry) in m.iter().enumerate() {
                out.push(manifest_path(&format!("manifests[{i}]"), entry)?);
            }
            Source::Manifests(out)
        }
    };
    Ok(Deploy { source })
}

fn manifest_path(field: &str, entry: &str) -> Result<ManifestPath, CatalogError> {
    let magic = |c: char| matches!(c, '*' | '?' | '[' | '{');
    if !entry.contains(magic) {
        return Ok(ManifestPath::Path(relative(field, entry)?.ok_or_else(
            || {
                invalid(
                    field,
                    "is the whole repository".into(),
                    "name the directory that holds the manifests, e.g. \"k8s\"",
                )
            },
        )?));
    }
    let pattern = entry.strip_prefix("./").unwrap_or(entry).to_owned();
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
        return Err(invalid(
            field,
            format!("{entry:?} reaches outside the repository"),
            "use a glob relative to the repository root, e.g. \"k8s/**/*.yaml\"",
        ));
    }
    glob(&pattern).map_err(|e| {
        invalid(
            field,
            format!("{entry:?} is not a glob ({e})"),
            "use `*` within a directory and `**` across them, e.g. \"k8s/**/*.yaml\"",
        )
    })?;
    let literal: Vec<&str> = pattern
        .split('/')
        .take_while(|c| !c.contains(magic))
        .collect();
    let base = relative(field, &literal.join("/"))?;
    Ok(ManifestPath::Glob { pattern, base })
}

impl Deploy {
    /// The directories and files whose change may change the render
    /// before a kustomization is read (its references are found when it
    /// renders).
    pub fn roots(&self) -> Vec<Option<RelPath>> {
        match &self.source {
            Source::Kustomize(d) => vec![Some(d.clone())],
            Source::Manifests(m) => m
                .iter()
                .map(|p| match p {
                    ManifestPath::Path(p) => Some(p.clone()),
                    ManifestPath::Glob { base, .. } => base.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Deploy, CatalogError> {
        let raw: RawDeploy =
            toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        deploy(&raw)
    }

    #[test]
    fn kustomize_and_manifests() {
        assert_eq!(
            parse("kustomize = \"./deploy/overlays/dev/\"").unwrap(),
            Deploy {
                source: Source::Kustomize(RelPath::new("deploy/overlays/dev").unwrap())
            }
        );
        let d = parse("manifests = [\"k8s/app.yaml\", \"k8s/db/\", \"k8s/**/*.yml\", \"*.yaml\"]")
            .unwrap();
        assert_eq!(
            d.roots(),
            vec![
                Some(RelPath::new("k8s/app.yaml").unwrap()),
                Some(RelPath::new("k8s/db").unwrap()),
                Some(RelPath::new("k8s").unwrap()),
                None,
            ]
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        for (text, says) in [
            ("", "names no manifests"),
            (
                "kustomize = \"k\"\nmanifests = [\"a.yaml\"]",
                "cannot be combined",
            ),
            ("kustomize = \".\"", "repository root"),
            (
                "kustomize = \"../other\"",
                "not a path inside the repository",
            ),
            ("manifests = []", "is empty"),
            ("manifests = [\"../x/*.yaml\"]", "outside the repository"),
            ("manifests = [\"/etc/*.yaml\"]", "outside the repository"),
            ("manifests = [\"k8s/[.yaml\"]", "not a glob"),
            ("manifests = [\".\"]", "whole repository"),
            ("kustomise = \"k\"", "unknown field"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}

//! The render: the objects the repository's own manifests (`[deploy]` in
//! `devd.toml`) describe, as devd applies them in a workspace, from the
//! materialized worktree (which is exact):
//!
//! 1. read them ([`load`]: plain YAML parsed here, a kustomization through
//!    `kubectl kustomize`, every path inside the worktree);
//! 2. check each object (apiVersion, kind, a name; no two alike) and its
//!    scope ([`scope`]): namespaced objects go into the workspace's
//!    namespace, cluster-scoped ones other than CRDs are refused;
//! 3. put each devd-built service's image in the containers that use it
//!    ([`images`]), by digest once built (`devd render` shows the tag
//!    `devd-<context digest>`, known before any build).
//!
//! Nothing else in an object changes. The same function serves the
//! pipeline (what to apply) and `devd render` (what would be applied).

pub mod files;
pub mod images;
pub mod kustomize;
pub mod load;
pub mod scope;

use crate::build::backend::stack::StackObject;
use devd_protocol::RelPath;
use devd_sync::catalog::{Catalog, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Why there is no render. The old deployment keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("kubectl kustomize {dir} failed: {error}")]
    Kustomize { dir: String, error: String },
    #[error("{file}:{}: {error}", line.map_or("?".into(), |l| l.to_string()))]
    Yaml {
        file: String,
        line: Option<u64>,
        error: String,
    },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path} leads outside the repository: manifests are read from the worktree only")]
    Escapes { path: String },
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error(
        "cluster-scoped objects are not deployed into a workspace (it must not change the cluster outside its namespace): {}; remove them from the manifests, or have a cluster admin apply them once",
        objects.join(", ")
    )]
    ClusterScoped { objects: Vec<String> },
    #[error("devd.toml has no [deploy] table")]
    NoDeploy,
}

/// What the render needs besides the worktree.
pub struct Input<'a> {
    /// The materialized worktree.
    pub root: &'a Path,
    pub catalog: &'a Catalog,
    /// The workspace's namespace.
    pub namespace: &'a str,
    /// The image reference to put in for a service (`None`: leave the
    /// manifests' own reference, e.g. not built yet).
    pub image_of: &'a dyn Fn(&Service) -> Option<String>,
    /// The kubectl binary (`kubectl` on the PATH by default).
    pub kubectl: &'a Path,
}

/// The objects to apply and what devd knows about them.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub objects: Vec<StackObject>,
    /// The workloads (`kind/name`) that run each service's image.
    pub runs: BTreeMap<String, Vec<String>>,
    /// Worktree paths whose change may change the render.
    pub inputs: Vec<RelPath>,
    /// What the user should know (an unknown kind, a service no manifest
    /// uses, a namespace overridden).
    pub warnings: Vec<String>,
}

impl Rendered {
    /// The Services of the render that select the pods of `service`'s
    /// workloads (their selector is a subset of the pod labels).
    pub fn services_of(&self, service: &str) -> Vec<String> {
        let Some(workloads) = self.runs.get(service) else {
            return Vec::new();
        };
        let pods: Vec<&serde_json::Map<String, serde_json::Value>> = self
            .objects
            .iter()
            .filter(|o| workloads.contains(&o.key()))
            .filter_map(|o| images::pod_labels(&o.body))
            .collect();
        self.objects
            .iter()
            .filter(|o| o.kind == "Service" && o.group().is_empty())
            .filter(|svc| {
                let Some(sel) = svc.body["spec"]["selector"].as_object() else {
                    return false;
                };
                !sel.is_empty()
                    && pods
                        .iter()
                        .any(|labels| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// Whether a change to `path` may change the render.
    pub fn reads(&self, path: &RelPath) -> bool {
        self.inputs.iter().any(|i| {
            path.as_str() == i.as_str()
                || path
                    .as_str()
                    .strip_prefix(i.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// Render the stack of `input`'s catalog.
pub fn render(input: &Input<'_>) -> Result<Rendered, RenderError> {
    let deploy = input.catalog.deploy.as_ref().ok_or(RenderError::NoDeploy)?;
    let loaded = load::load(input.root, &deploy.source, input.kubectl)?;
    let mut warnings = Vec::new();
    let crds: Vec<(String, String, bool)> = loaded
        .documents
        .iter()
        .filter(|d| d.value["kind"] == "CustomResourceDefinition")
        .filter_map(|d| scope::crd_defines(&d.value))
        .collect();
    let mut objects = Vec::new();
    let mut refused = Vec::new();
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for doc in loaded.documents {
        let mut body = doc.value;
        let field = |f: &str| body.get(f).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(RenderError::Invalid {
                origin: doc.source,
                problem: "an object has no apiVersion or kind".into(),
            });
        };
        let name = body["metadata"]["name"].as_str().map(str::to_owned);
        let Some(name) = name.filter(|n| valid_name(n)) else {
            return Err(RenderError::Invalid {
                origin: doc.source,
                problem: format!(
                    "a {kind} has no valid metadata.name (generateName is not supported: devd applies by name)"
                ),
            });
        };
        let group = scope::group(&api_version).to_owned();
        let key = format!("{}/{name}", kind.to_ascii_lowercase());
        let namespace = match scope::scope(&group, &kind, &crds) {
            scope::Scope::Cluster if kind == "CustomResourceDefinition" => None,
            scope::Scope::Cluster => {
                refused.push(format!("{key} ({})", doc.source));
                continue;
            }
            s => {
                if s == scope::Scope::Unknown {
                    warnings.push(format!(
                        "{key} ({}): {api_version} {kind} is not a built-in kind and no CustomResourceDefinition in the manifests defines it; it is applied as a namespaced custom resource, so the cluster must know it",
                        doc.source
                    ));
                }
                if let Some(ns) = body["metadata"]["namespace"].as_str()
                    && ns != input.namespace
                {
                    warnings.push(format!(
                        "{key} ({}): namespace {ns:?} replaced by the workspace's {:?}",
                        doc.source, input.namespace
                    ));
                }
                body["metadata"]["namespace"] = input.namespace.into();
                Some(input.namespace.to_owned())
            }
        };
        if let Some(first) = seen.insert(
            (group.clone(), kind.clone(), name.clone()),
            doc.source.clone(),
        ) {
            return Err(RenderError::Invalid {
                origin: doc.source,
                problem: format!("{key} is also defined in {first}"),
            });
        }
        for service in images::substitute(&mut body, &input.catalog.services, input.image_of) {
            runs.entry(service).or_default().push(key.clone());
        }
        objects.push(StackObject {
            api_version,
            kind,
            name,
            namespace,
            source: doc.source,
            body,
        });
    }
    if !refused.is_empty() {
        refused.sort();
        return Err(RenderError::ClusterScoped { objects: refused });
    }
    let used: BTreeSet<&String> = runs.keys().collect();
    for s in &input.catalog.services {
        if !used.contains(&s.name) {
            warnings.push(format!(
                "service {}: no container in the manifests uses image {:?} (it matches `{0}`, `{0}:TAG` or `REGISTRY/…/{0}`), so it is built but runs nowhere",
                s.name, s.image
            ));
        }
    }
    let mut inputs = loaded.inputs;
    inputs.push(RelPath::new(devd_sync::catalog::FILE).expect("a valid path"));
    Ok(Rendered {
        objects,
        runs,
        inputs,
        warnings,
    })
}

/// `objects` as a multi-document YAML stream (`---` between them), as
/// `kubectl` prints a render.
pub fn to_yaml(objects: &[&serde_json::Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_saphyr::to_string(o).map_err(|e| RenderError::Invalid {
            origin: "render".into(),
            problem: format!("cannot print an object as YAML: {e}"),
        })?;
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// A Kubernetes object name: a DNS subdomain (or label) of at most 253.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests;

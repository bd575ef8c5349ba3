//! Reading the manifests `[deploy]` names into JSON objects: plain YAML
//! (or JSON) files parsed here, a kustomization through `kubectl
//! kustomize`. Every path read stays inside the worktree; a syntax error
//! names the file and the line.

use super::RenderError;
use super::files::{inside, read};
use super::kustomize;
use devd_protocol::RelPath;
use devd_sync::catalog::deploy::{self, ManifestPath, Source};
use std::path::Path;

pub use super::files::MAX_FILE_BYTES;
/// At most this many objects in one render.
pub const MAX_OBJECTS: usize = 5000;
/// At most this many manifest files.
const MAX_FILES: usize = 2000;

/// One document of the manifests, and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: String,
    pub value: serde_json::Value,
}

/// The documents and the repository paths whose change may change them.
#[derive(Debug, Default)]
pub struct Loaded {
    pub documents: Vec<Document>,
    pub inputs: Vec<RelPath>,
}

/// Read what `source` names from the worktree at `root`.
pub fn load(root: &Path, source: &Source, kubectl: &Path) -> Result<Loaded, RenderError> {
    match source {
        Source::Kustomize(dir) => {
            let inputs = kustomize::inputs(root, dir)?;
            let text = kustomize::build(root, dir, kubectl)?;
            let label = format!("kustomize {dir}");
            Ok(Loaded {
                documents: parse(&label, &text)?,
                inputs,
            })
        }
        Source::Manifests(entries) => {
            let mut files = Vec::new();
            for e in entries {
                files.extend(expand(root, e)?);
            }
            files.sort();
            files.dedup();
            if files.len() > MAX_FILES {
                return Err(RenderError::Invalid {
                    origin: "[deploy] manifests".into(),
                    problem: format!("names {} files, more than {MAX_FILES}", files.len()),
                });
            }
            let mut documents = Vec::new();
            for f in &files {
                let text = read(root, f)?;
                documents.extend(parse(f.as_str(), &text)?);
            }
            Ok(Loaded {
                documents,
                inputs: files,
            })
        }
    }
}

fn is_manifest(name: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x))
}

/// The files one `manifests` entry names, sorted.
fn expand(root: &Path, entry: &ManifestPath) -> Result<Vec<RelPath>, RenderError> {
    match entry {
        ManifestPath::Path(p) => {
            let path = inside(root, p)?;
            if path.is_dir() {
                let mut out = Vec::new();
                walk(root, Some(p), &mut |f| {
                    if is_manifest(f.as_str()) {
                        out.push(f);
                    }
                })?;
                Ok(out)
            } else {
                Ok(vec![p.clone()])
            }
        }
        ManifestPath::Glob { pattern, base } => {
            let glob = deploy::glob(pattern).map_err(|e| RenderError::Invalid {
                origin: "[deploy] manifests".into(),
                problem: format!("{pattern:?}: {e}"),
            })?;
            let mut out = Vec::new();
            if base
                .as_ref()
                .is_some_and(|b| !root.join(b.as_str()).is_dir())
            {
                return Ok(out);
            }
            walk(root, base.as_ref(), &mut |f| {
                if glob.is_match(f.as_str()) {
                    out.push(f);
                }
            })?;
            Ok(out)
        }
    }
}

/// Every regular file under `dir` (the root when `None`), without
/// following symlinks or entering `.git`.
fn walk(
    root: &Path,
    dir: Option<&RelPath>,
    found: &mut dyn FnMut(RelPath),
) -> Result<(), RenderError> {
    let abs = match dir {
        Some(d) => root.join(d.as_str()),
        None => root.to_owned(),
    };
    let read_err = |e: std::io::Error| RenderError::Read {
        path: dir.map_or(".".into(), |d| d.to_string()),
        error: e.to_string(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(&abs)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name == ".git" {
            continue;
        }
        let rel = match dir {
            Some(d) => format!("{d}/{name}"),
            None => name,
        };
        let Ok(rel) = RelPath::new(rel) else {
            continue;
        };
        let ft = e.file_type().map_err(read_err)?;
        if ft.is_dir() {
            walk(root, Some(&rel), found)?;
        } else if ft.is_file() {
            found(rel);
        }
    }
    Ok(())
}

/// The objects of a multi-document YAML (or JSON) text; empty documents
/// are skipped, a `List` is unpacked.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, RenderError> {
    let docs: Vec<Option<serde_json::Value>> = serde_saphyr::from_multiple(text).map_err(|e| {
        let loc = e.location();
        RenderError::Yaml {
            file: source.to_owned(),
            line: loc.map(|l| l.line()),
            error: first_line(&e.to_string()),
        }
    })?;
    let mut out = Vec::new();
    for value in docs.into_iter().flatten() {
        match value {
            serde_json::Value::Object(ref m)
                if m.get("kind").and_then(|k| k.as_str()) == Some("List")
                    && m.get("items").is_some_and(|i| i.is_array()) =>
            {
                for item in m["items"].as_array().into_iter().flatten() {
                    out.push(Document {
                        source: source.to_owned(),
                        value: item.clone(),
                    });
                }
            }
            serde_json::Value::Object(_) => out.push(Document {
                source: source.to_owned(),
                value,
            }),
            other => {
                return Err(RenderError::Invalid {
                    origin: source.to_owned(),
                    problem: format!(
                        "a document is {}, not a Kubernetes object",
                        match other {
                            serde_json::Value::Array(_) => "a list",
                            serde_json::Value::String(_) => "a string",
                            _ => "a scalar",
                        }
                    ),
                });
            }
        }
        if out.len() > MAX_OBJECTS {
            return Err(RenderError::Invalid {
                origin: source.to_owned(),
                problem: format!("holds more than {MAX_OBJECTS} objects"),
            });
        }
    }
    Ok(out)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documents_and_lists() {
        let docs = parse(
            "k8s/a.yaml",
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n",
        )
        .unwrap();
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d.value["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["ConfigMap", "Secret"]);
        assert_eq!(docs[0].source, "k8s/a.yaml");
    }

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let e = parse(
            "k8s/web.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n  x: y\n",
        )
        .unwrap_err();
        let RenderError::Yaml { file, line, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(file, "k8s/web.yaml");
        assert!(line.is_some_and(|l| (4..=6).contains(&l)), "{e}");
        assert!(e.to_string().starts_with("k8s/web.yaml:"), "{e}");
        let e = parse("x.yaml", "- a\n- b\n").unwrap_err().to_string();
        assert!(e.contains("not a Kubernetes object"), "{e}");
    }
}

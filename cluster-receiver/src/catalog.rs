//! The service catalog: the `[services.NAME]` tables of `devd.toml` at the
//! repository root (the paper's Application resource). The receiver reads
//! it from the materialized worktree, so the catalog of a generation is the
//! one the laptop had when it saved.
//!
//! ```toml
//! [services.web]
//! context = "services/web"     # build context, relative to the repository root
//! dockerfile = "Dockerfile"    # relative to the context (default)
//! inputs = ["shared"]          # more paths the image depends on; each is added
//!                              # to the build context at its repository path
//! image = "demo/web"           # image repository (default: the service name)
//! port = 8080                  # container port; the URL points at it
//! expose = "external"          # "none" | "internal" (default) | "external"
//! replicas = 1
//! [services.web.env]
//! MODE = "dev"
//! [services.web.build_args]
//! VERSION = "dev"
//! ```
//! Instead of the run spec (`port`/`env`/`replicas`/`expose`), a service
//! may name an existing workload to patch: `deployment = "web"` and
//! optionally `container = "web"`.

use devd_protocol::RelPath;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The file the catalog lives in, at the repository root.
pub const FILE: &str = "devd.toml";

/// Why a catalog was refused. Messages name the service, the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{FILE}: {0}")]
    Parse(String),
    #[error("{FILE}: service {service:?}: `{field}`: {problem}; {fix}")]
    Invalid {
        service: String,
        field: &'static str,
        problem: String,
        fix: String,
    },
    #[error("cannot read {FILE}: {0}")]
    Read(String),
}

/// How a service's containers get exposed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// No Service object: nothing reaches it by name.
    None,
    /// A ClusterIP Service (Kubernetes) / a loopback port (local).
    #[default]
    Internal,
    /// Also an Ingress with host `{service}.{namespace}.{domain}`.
    External,
}

/// How a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Patch the image of an existing workload (devd does not own it).
    Existing {
        deployment: String,
        container: String,
        /// Container port, for the URL.
        port: Option<u16>,
    },
    /// devd creates and owns Deployment, Service and Ingress.
    Spec(RunSpec),
}

/// The run spec devd owns the workload for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub port: Option<u16>,
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    pub expose: Expose,
}

/// One declared service, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Build context relative to the repository root; `None` is the root.
    pub context: Option<RelPath>,
    /// Dockerfile, relative to the context.
    pub dockerfile: RelPath,
    /// Extra repository paths the image depends on.
    pub inputs: Vec<RelPath>,
    /// Image repository, without tag or digest.
    pub image: String,
    pub build_args: BTreeMap<String, String>,
    pub run: Run,
}

impl Service {
    /// The Dockerfile's path relative to the repository root.
    pub fn dockerfile_path(&self) -> RelPath {
        match &self.context {
            None => self.dockerfile.clone(),
            Some(c) => RelPath::new(format!("{}/{}", c.as_str(), self.dockerfile.as_str()))
                .expect("joined valid paths"),
        }
    }

    /// True if a change to `path` can change this service's image.
    pub fn depends_on(&self, path: &RelPath) -> bool {
        let under = |dir: &RelPath| {
            path.as_str() == dir.as_str()
                || path
                    .as_str()
                    .strip_prefix(dir.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        };
        self.context.as_ref().is_none_or(under) || self.inputs.iter().any(under)
    }

    /// The container port, if the service declares one.
    pub fn port(&self) -> Option<u16> {
        match &self.run {
            Run::Existing { port, .. } => *port,
            Run::Spec(s) => s.port,
        }
    }
}

/// The validated catalog, services sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub services: Vec<Service>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    context: Option<String>,
    dockerfile: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    image: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    deployment: Option<String>,
    container: Option<String>,
    port: Option<u16>,
    env: Option<BTreeMap<String, String>>,
    replicas: Option<u32>,
    expose: Option<Expose>,
}

/// A Kubernetes-style name: lower-case letters, digits and '-', starting
/// with a letter, ending with a letter or digit.
pub fn valid_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An image repository without tag or digest: `[host[:port]/]path`, with
/// lower-case path components.
fn valid_repository(s: &str) -> bool {
    if s.is_empty() || s.contains('@') || s.len() > 255 {
        return false;
    }
    let mut parts: Vec<&str> = s.split('/').collect();
    let host_like = parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost");
    if host_like {
        let host = parts.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, "0"));
        if h.is_empty()
            || port.parse::<u16>().is_err()
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return false;
        }
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
    })
}

fn rel(
    service: &str,
    field: &'static str,
    value: &str,
    fix: &str,
) -> Result<Option<RelPath>, CatalogError> {
    let trimmed = value.trim_end_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    RelPath::new(trimmed)
        .map(Some)
        .map_err(|e| CatalogError::Invalid {
            service: service.into(),
            field,
            problem: format!("{value:?} is not a path inside the repository ({e})"),
            fix: fix.into(),
        })
}

impl Catalog {
    /// Parse and validate the text of `devd.toml`. Other sections of the
    /// file (the laptop's `[sync]`, `[receiver]`) are ignored here.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        let mut services = Vec::new();
        for (name, r) in raw.services {
            services.push(Self::service(name, r)?);
        }
        Ok(Self { services })
    }

    /// Read the catalog of the worktree at `root` (empty without `devd.toml`).
    pub fn load(root: &Path) -> Result<Self, CatalogError> {
        match std::fs::read_to_string(root.join(FILE)) {
            Ok(t) => Self::parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CatalogError::Read(e.to_string())),
        }
    }

    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    fn service(name: String, r: RawService) -> Result<Service, CatalogError> {
        let invalid = |field, problem: String, fix: String| CatalogError::Invalid {
            service: name.clone(),
            field,
            problem,
            fix,
        };
        if !valid_dns_label(&name, 40) {
            return Err(invalid(
                "name",
                "service names must be at most 40 lower-case letters, digits and '-', starting with a letter".into(),
                format!("rename [services.{name}], e.g. [services.{}]", suggest_name(&name)),
            ));
        }
        let context = match &r.context {
            Some(c) => rel(
                &name,
                "context",
                c,
                "use a directory relative to the repository root, e.g. \"services/web\"",
            )?,
            None => {
                return Err(invalid(
                    "context",
                    "missing".into(),
                    format!(
                        "add context = \"path/to/{name}\" (the directory with its Dockerfile), or \".\" for the repository root"
                    ),
                ));
            }
        };
        let dockerfile = rel(
            &name,
            "dockerfile",
            r.dockerfile.as_deref().unwrap_or("Dockerfile"),
            "give the Dockerfile's path relative to the context, e.g. \"Dockerfile\"",
        )?
        .ok_or_else(|| {
            invalid(
                "dockerfile",
                "is empty".into(),
                "give the Dockerfile's path relative to the context, e.g. \"Dockerfile\"".into(),
            )
        })?;
        let mut inputs = Vec::new();
        for i in &r.inputs {
            let Some(p) = rel(
                &name,
                "inputs",
                i,
                "list directories or files relative to the repository root, e.g. [\"protos\"]",
            )?
            else {
                return Err(invalid(
                    "inputs",
                    format!("{i:?} is the whole repository"),
                    "set context = \".\" instead, or list the paths the image needs".into(),
                ));
            };
            inputs.push(p);
        }
        let image = r.image.clone().unwrap_or_else(|| name.clone());
        if !valid_repository(&image) {
            return Err(invalid(
                "image",
                format!("{image:?} is not an image repository"),
                "use lower-case [registry/]path without tag or digest, e.g. \"team/web\" (devd tags by content digest)".into(),
            ));
        }
        for k in r.build_args.keys() {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    "build_args",
                    format!("{k:?} is not a build argument name"),
                    "use letters, digits and '_' as in the Dockerfile's ARG".into(),
                ));
            }
        }
        if let Some(env) = &r.env {
            for k in env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(invalid(
                        "env",
                        format!("{k:?} is not an environment variable name"),
                        "use names like MODE or LOG_LEVEL".into(),
                    ));
                }
            }
        }
        if r.port == Some(0) {
            return Err(invalid(
                "port",
                "0 is not a port".into(),
                "give the port the container listens on, e.g. 8080".into(),
            ));
        }
        let run = match (&r.deployment, &r.container) {
            (Some(d), c) => {
                let spec_fields = [
                    ("env", r.env.is_some()),
                    ("replicas", r.replicas.is_some()),
                    ("expose", r.expose.is_some()),
                ];
                if let Some((f, _)) = spec_fields.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        f,
                        format!("cannot be combined with deployment = {d:?}"),
                        "either patch an existing workload (deployment, container) or let devd run it (port, env, replicas, expose), not both".into(),
                    ));
                }
                if !valid_dns_label(d, 63) {
                    return Err(invalid(
                        "deployment",
                        format!("{d:?} is not a Deployment name"),
                        "use the metadata.name of the Deployment to patch".into(),
                    ));
                }
                let container = c.clone().unwrap_or_else(|| d.clone());
                if !valid_dns_label(&container, 63) {
                    return Err(invalid(
                        "container",
                        format!("{container:?} is not a container name"),
                        "use the name of the container in the Deployment's pod template".into(),
                    ));
                }
                Run::Existing {
                    deployment: d.clone(),
                    container,
                    port: r.port,
                }
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "container",
                    "is only meaningful with `deployment`".into(),
                    "add deployment = \"NAME\" or remove `container`".into(),
                ));
            }
            (None, None) => {
                let expose = r.expose.unwrap_or_default();
                if expose != Expose::None && r.port.is_none() {
                    return Err(invalid(
                        "port",
                        format!(
                            "missing, but expose = \"{}\" needs it",
                            if expose == Expose::External {
                                "external"
                            } else {
                                "internal"
                            }
                        ),
                        "add port = <the port the container listens on>, or expose = \"none\""
                            .into(),
                    ));
                }
                if r.replicas.is_some_and(|n| n > 100) {
                    return Err(invalid(
                        "replicas",
                        "more than 100".into(),
                        "a development workspace needs a handful at most".into(),
                    ));
                }
                Run::Spec(RunSpec {
                    port: r.port,
                    env: r.env.clone().unwrap_or_default(),
                    replicas: r.replicas.unwrap_or(1),
                    expose,
                })
            }
        };
        Ok(Service {
            name,
            context,
            dockerfile,
            inputs,
            image,
            build_args: r.build_args,
            run,
        })
    }
}

fn suggest_name(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    let s = if s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.to_owned()
    } else {
        format!("svc-{s}")
    };
    s.chars()
        .take(40)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
[sync]
debounce_ms = 5

[services.web]
context = "services/web"
image = "demo/web"
port = 8080
expose = "external"

[services.greeter]
context = "./services/greeter/"
inputs = ["shared/"]
port = 8080
[services.greeter.build_args]
STYLE = "plain"

[services.legacy]
context = "."
dockerfile = "legacy/Dockerfile"
deployment = "legacy-app"
image = "registry.example.com:5000/team/legacy"
"#;

    #[test]
    fn parses_the_demo_catalog() {
        let c = Catalog::parse(DEMO).unwrap();
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["greeter", "legacy", "web"]);
        let g = c.get("greeter").unwrap();
        assert_eq!(g.context.as_ref().unwrap().as_str(), "services/greeter");
        assert_eq!(g.inputs[0].as_str(), "shared");
        assert_eq!(g.image, "greeter");
        assert_eq!(g.dockerfile_path().as_str(), "services/greeter/Dockerfile");
        let p = |s: &str| RelPath::new(s).unwrap();
        assert!(g.depends_on(&p("shared/greeting.txt")));
        assert!(g.depends_on(&p("services/greeter/www/index.html")));
        assert!(!g.depends_on(&p("services/greeterx/a")));
        assert!(!g.depends_on(&p("services/web/www/index.html")));
        let l = c.get("legacy").unwrap();
        assert!(l.context.is_none() && l.depends_on(&p("anything")));
        assert_eq!(
            l.run,
            Run::Existing {
                deployment: "legacy-app".into(),
                container: "legacy-app".into(),
                port: None
            }
        );
        let w = c.get("web").unwrap();
        assert!(matches!(&w.run, Run::Spec(s) if s.expose == Expose::External && s.replicas == 1));
    }

    fn err(text: &str) -> String {
        Catalog::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_service_the_field_and_the_fix() {
        let e = err("[services.web]\nport = 8080\n");
        assert!(
            e.contains("\"web\"") && e.contains("`context`") && e.contains("add context"),
            "{e}"
        );
        let e = err("[services.web]\ncontext = \"../elsewhere\"\nport = 1\n");
        assert!(e.contains("`context`") && e.contains("../elsewhere"), "{e}");
        let e = err("[services.Web_1]\ncontext = \"w\"\nport = 1\n");
        assert!(e.contains("`name`") && e.contains("services.web-1"), "{e}");
        let e = err("[services.web]\ncontext = \"w\"\nimage = \"Team/Web:latest\"\nport = 1\n");
        assert!(e.contains("`image`") && e.contains("without tag"), "{e}");
        let e = err("[services.web]\ncontext = \"w\"\n");
        assert!(
            e.contains("`port`") && e.contains("expose = \"none\""),
            "{e}"
        );
        let e = err("[services.web]\ncontext = \"w\"\ndeployment = \"web\"\nreplicas = 2\n");
        assert!(e.contains("`replicas`") && e.contains("not both"), "{e}");
        let e = err("[services.web]\ncontext = \"w\"\nport = 1\nportt = 2\n");
        assert!(e.contains("portt"), "{e}");
        let e = err("[services.web]\ncontext = \"w\"\nport = 1\ninputs = [\".git/config\"]\n");
        assert!(e.contains("`inputs`"), "{e}");
        assert!(Catalog::parse("").unwrap().services.is_empty());
        assert!(Catalog::parse("[receiver]\nmode = \"local\"\n").is_ok());
    }

    #[test]
    fn repositories() {
        for ok in [
            "web",
            "team/web",
            "localhost/devd/web",
            "127.0.0.1:5000/a/b",
            "r.io/x_y.z-1",
        ] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "web:latest",
            "a//b",
            "r@sha256:00",
            "r.io:x/a",
            "/a",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }
}

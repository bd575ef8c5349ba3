//! The service catalog: the `[services.NAME]` tables of `devd.toml` at the
//! repository root: what each service is built from and how it runs. The
//! receiver reads it from the materialized worktree, so the catalog of a
//! generation is the one the laptop had when it saved.
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
//!
//! [[services.web.steps]]       # run in order on the build context, before
//! name = "test"                # the image build (tests, code generation)
//! image = "busybox:stable"     # any image reference
//! command = ["sh", "-c", "./run-tests.sh"]   # argv; replaces the entrypoint
//! workdir = "src"              # relative to the context (default: its root)
//! env = { CI = "1" }
//!
//! [services.web.live]          # optional: live update (see [`live`])
//! sync = [{ from = "www", to = "/www" }]
//! ```
//! Instead of the run spec (`port`/`env`/`replicas`/`expose`), a service
//! may name an existing workload to patch: `deployment = "web"` and
//! optionally `container = "web"`. With a `[deploy]` table (see
//! [`deploy`]) the repository's own manifests say how everything runs, and
//! the services only say how their images are built.

use devd_protocol::RelPath;
use devd_protocol::path::MAX_PATH_LEN;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub mod deploy;
pub mod live;
pub use deploy::Deploy;
pub use live::{Live, LiveRun, Restart, SyncRule};

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
        field: String,
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
    /// The repository's manifests (`[deploy]`) run it: the workloads whose
    /// containers use the service's image.
    Manifests,
}

/// The run spec devd owns the workload for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub port: Option<u16>,
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    pub expose: Expose,
}

/// A build step: a container run on the build context before the image
/// build. Whatever it writes into the context is in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Unique within the service; a DNS label (it names a container).
    pub name: String,
    /// Image reference (tag or digest allowed).
    pub image: String,
    /// argv; the first element replaces the image's entrypoint.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the context; `None` is its root.
    pub workdir: Option<RelPath>,
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
    /// Run in order on the build context before the image build.
    pub steps: Vec<Step>,
    pub run: Run,
    /// `[services.NAME.live]`: copy changes into the running containers.
    pub live: Option<Live>,
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
            Run::Manifests => None,
        }
    }
}

/// The validated catalog, services sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub services: Vec<Service>,
    /// `[deploy]`: the repository's manifests run the stack.
    pub deploy: Option<Deploy>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    deploy: Option<deploy::RawDeploy>,
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
    #[serde(default)]
    steps: Vec<RawStep>,
    live: Option<live::RawLive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    image: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
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
    field: &str,
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
            field: field.into(),
            problem: format!("{value:?} is not a path inside the repository ({e})"),
            fix: fix.into(),
        })
}

impl Catalog {
    /// Parse and validate the text of `devd.toml`. Other sections of the
    /// file (the laptop's `[sync]`, `[receiver]`) are ignored here.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        let deploy = raw.deploy.as_ref().map(deploy::deploy).transpose()?;
        let mut services = Vec::new();
        for (name, r) in raw.services {
            services.push(Self::service(name, r, deploy.is_some())?);
        }
        Ok(Self { services, deploy })
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

    fn service(name: String, r: RawService, manifests: bool) -> Result<Service, CatalogError> {
        let invalid = |field: &str, problem: String, fix: String| CatalogError::Invalid {
            service: name.clone(),
            field: field.into(),
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
        if let Some(c) = &context
            && c.as_str().len() + 1 + dockerfile.as_str().len() > MAX_PATH_LEN
        {
            return Err(invalid(
                "dockerfile",
                format!("with the context, its path is longer than {MAX_PATH_LEN} bytes"),
                "use a shorter context or Dockerfile path".into(),
            ));
        }
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
        let steps = steps(&name, &r.steps)?;
        let live = r.live.as_ref().map(|l| live::live(&name, l)).transpose()?;
        if r.port == Some(0) {
            return Err(invalid(
                "port",
                "0 is not a port".into(),
                "give the port the container listens on, e.g. 8080".into(),
            ));
        }
        let run = match (&r.deployment, &r.container) {
            _ if manifests => {
                let run_fields = [
                    ("port", r.port.is_some()),
                    ("env", r.env.is_some()),
                    ("replicas", r.replicas.is_some()),
                    ("expose", r.expose.is_some()),
                    ("deployment", r.deployment.is_some()),
                    ("container", r.container.is_some()),
                ];
                if let Some((f, _)) = run_fields.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        f,
                        "cannot be used with [deploy]: the manifests say how the service runs"
                            .into(),
                        format!(
                            "set it in the manifests and remove `{f}`; `image` names the image the manifests use (now {:?})",
                            r.image.as_deref().unwrap_or(&name)
                        ),
                    ));
                }
                Run::Manifests
            }
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
            steps,
            run,
            live,
        })
    }
}

/// At most this many build steps per service.
pub const MAX_STEPS: usize = 20;

/// An image reference: a repository as [`valid_repository`], then an
/// optional `:tag` and an optional `@algo:hex` digest.
fn valid_image_reference(s: &str) -> bool {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        if algo.is_empty()
            || !algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            || hex.len() < 32
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    });
    tag_ok && valid_repository(repo)
}

/// Validate the `[[services.NAME.steps]]` of service `service`.
fn steps(service: &str, raw: &[RawStep]) -> Result<Vec<Step>, CatalogError> {
    let invalid = |field: String, problem: String, fix: &str| CatalogError::Invalid {
        service: service.to_owned(),
        field,
        problem,
        fix: fix.to_owned(),
    };
    if raw.len() > MAX_STEPS {
        return Err(invalid(
            "steps".into(),
            format!("{} steps, more than {MAX_STEPS}", raw.len()),
            "combine steps into a script that one step runs",
        ));
    }
    let mut out: Vec<Step> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let field = |f: &str| format!("steps[{i}].{f}");
        let name = match &r.name {
            None => {
                return Err(invalid(
                    field("name"),
                    "missing".into(),
                    "give every step a name, e.g. name = \"test\" (it names the step in errors and logs)",
                ));
            }
            Some(n) if !valid_dns_label(n, 40) => {
                return Err(invalid(
                    field("name"),
                    format!(
                        "{n:?} is not a step name: use at most 40 lower-case letters, digits and '-', starting with a letter"
                    ),
                    &format!("rename it, e.g. name = \"{}\"", suggest_name(n)),
                ));
            }
            Some(n) if out.iter().any(|s| &s.name == n) => {
                return Err(invalid(
                    field("name"),
                    format!("a second step is named {n:?}"),
                    "give each step of a service its own name",
                ));
            }
            Some(n) => n.clone(),
        };
        let image = match &r.image {
            None => {
                return Err(invalid(
                    field("image"),
                    format!("step {name:?} has no image"),
                    "add image = \"REPOSITORY[:TAG]\", the image the step's command runs in",
                ));
            }
            Some(img) if !valid_image_reference(img) => {
                return Err(invalid(
                    field("image"),
                    format!("step {name:?}: {img:?} is not an image reference"),
                    "use [registry/]repository[:tag][@sha256:…] with a lower-case repository, e.g. \"busybox:stable\"",
                ));
            }
            Some(img) => img.clone(),
        };
        let command = match &r.command {
            Some(c) if !c.is_empty() && !c[0].is_empty() && !c.iter().any(|a| a.contains('\0')) => {
                c.clone()
            }
            Some(_) => {
                return Err(invalid(
                    field("command"),
                    format!("step {name:?}: the command is empty or holds a NUL character"),
                    "give the argv as a list whose first element is the program, e.g. [\"sh\", \"-c\", \"make test\"]",
                ));
            }
            None => {
                return Err(invalid(
                    field("command"),
                    format!("step {name:?} has no command"),
                    "add command = [\"PROGRAM\", \"ARG\", …], e.g. [\"sh\", \"-c\", \"make test\"]",
                ));
            }
        };
        for (k, v) in &r.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(invalid(
                    field("env"),
                    format!(
                        "step {name:?}: {k:?} is not an environment variable name (or its value holds a NUL)"
                    ),
                    "use names like CI or GOFLAGS",
                ));
            }
        }
        let workdir = match &r.workdir {
            None => None,
            Some(w) => rel(
                service,
                &field("workdir"),
                w,
                "give a directory relative to the build context, e.g. \"src\" (default: the context itself)",
            )?,
        };
        out.push(Step {
            name,
            image,
            command,
            env: r.env.clone(),
            workdir,
        });
    }
    Ok(out)
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

    #[test]
    fn deploy_mode_services_only_build() {
        let c = Catalog::parse(
            "[deploy]\nkustomize = \"deploy/dev\"\n[services.web]\ncontext = \"web\"\nimage = \"frontend\"\n",
        )
        .unwrap();
        assert!(c.deploy.is_some());
        assert_eq!(c.services[0].run, Run::Manifests);
        assert_eq!(c.services[0].image, "frontend");
        let e = Catalog::parse(
            "[deploy]\nmanifests = [\"k8s\"]\n[services.web]\ncontext = \"web\"\nport = 8080\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`port`") && e.contains("[deploy]"), "{e}");
    }

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

    /// Context and Dockerfile each within the path limit, together over
    /// it: refused when read, not a panic where the Dockerfile is looked
    /// up (the receiver's build context, `devd init`).
    #[test]
    fn dockerfile_path_over_the_limit_with_its_context_is_refused() {
        let context = "c".repeat(3000);
        let dockerfile = "d".repeat(2000);
        let service = |dockerfile: &str| {
            format!(
                "[services.web]\ncontext = \"{context}\"\ndockerfile = \"{dockerfile}\"\nport = 80\n"
            )
        };
        match Catalog::parse(&service(&dockerfile)) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("dockerfile") && e.contains("4096"), "{e}");
            }
            Ok(c) => panic!(
                "accepted: {}",
                c.services[0].dockerfile_path().as_str().len()
            ),
        }
        let ok = service("d");
        let c = Catalog::parse(&ok).unwrap();
        assert_eq!(c.services[0].dockerfile_path().as_str().len(), 3002);
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

    const STEPS: &str = r#"
[services.api]
context = "services/api"
port = 8080

[[services.api.steps]]
name = "test"
image = "localhost/devd-test/busybox:stable"
command = ["sh", "-c", "./run-tests.sh"]

[[services.api.steps]]
name = "generate"
image = "r.io:5000/tools/gen@sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899"
command = ["gen", "--out", "www/generated.txt"]
workdir = "./src/"
env = { CI = "1" }
"#;

    #[test]
    fn parses_steps_in_order() {
        let c = Catalog::parse(STEPS).unwrap();
        let api = c.get("api").unwrap();
        assert_eq!(api.steps.len(), 2);
        let (t, g) = (&api.steps[0], &api.steps[1]);
        assert_eq!(t.name, "test");
        assert_eq!(t.image, "localhost/devd-test/busybox:stable");
        assert_eq!(t.command, ["sh", "-c", "./run-tests.sh"]);
        assert!(t.env.is_empty() && t.workdir.is_none());
        assert_eq!(g.name, "generate");
        assert_eq!(g.workdir.as_ref().unwrap().as_str(), "src");
        assert_eq!(g.env["CI"], "1");
        // A changed step is a changed service (the pipeline rebuilds it).
        let c2 = Catalog::parse(&STEPS.replace("./run-tests.sh", "./run-tests.sh -v")).unwrap();
        assert_ne!(c2.get("api"), c.get("api"));
        assert!(
            Catalog::parse(DEMO)
                .unwrap()
                .get("web")
                .unwrap()
                .steps
                .is_empty()
        );
    }

    #[test]
    fn step_errors_name_the_service_the_step_field_and_the_fix() {
        let base = "[services.api]\ncontext = \"a\"\nport = 1\n[[services.api.steps]]\n";
        let e = err(&format!(
            "{base}image = \"busybox\"\ncommand = [\"true\"]\n"
        ));
        assert!(
            e.contains("\"api\"") && e.contains("`steps[0].name`") && e.contains("name = \"test\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"Unit Tests\"\nimage = \"busybox\"\ncommand = [\"true\"]\n"
        ));
        assert!(
            e.contains("`steps[0].name`") && e.contains("unit-tests"),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"busybox\"\ncommand = [\"true\"]\n[[services.api.steps]]\nname = \"t\"\nimage = \"busybox\"\ncommand = [\"true\"]\n"
        ));
        assert!(
            e.contains("`steps[1].name`") && e.contains("own name"),
            "{e}"
        );
        let e = err(&format!("{base}name = \"t\"\ncommand = [\"true\"]\n"));
        assert!(
            e.contains("`steps[0].image`") && e.contains("add image"),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"Busy Box\"\ncommand = [\"true\"]\n"
        ));
        assert!(e.contains("`steps[0].image`") && e.contains("\"t\""), "{e}");
        let e = err(&format!("{base}name = \"t\"\nimage = \"busybox\"\n"));
        assert!(
            e.contains("`steps[0].command`") && e.contains("add command"),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"busybox\"\ncommand = []\n"
        ));
        assert!(
            e.contains("`steps[0].command`") && e.contains("first element"),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"busybox\"\ncommand = [\"true\"]\nworkdir = \"../up\"\n"
        ));
        assert!(
            e.contains("`steps[0].workdir`") && e.contains("relative to the build context"),
            "{e}"
        );
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"busybox\"\ncommand = [\"true\"]\nenv = {{ \"A=B\" = \"1\" }}\n"
        ));
        assert!(e.contains("`steps[0].env`"), "{e}");
        // Unknown keys are refused, naming the key.
        let e = err(&format!(
            "{base}name = \"t\"\nimage = \"busybox\"\nargs = [\"true\"]\n"
        ));
        assert!(
            e.contains("unknown field `args`") && e.contains("command"),
            "{e}"
        );
        let many = (0..=MAX_STEPS)
            .map(|i| format!("[[services.api.steps]]\nname = \"s{i}\"\nimage = \"busybox\"\ncommand = [\"true\"]\n"))
            .collect::<String>();
        let e = err(&format!(
            "[services.api]\ncontext = \"a\"\nport = 1\n{many}"
        ));
        assert!(e.contains("`steps`") && e.contains("script"), "{e}");
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "busybox:stable",
            "localhost/devd-test/busybox:stable",
            "127.0.0.1:5000/a/b:v1.2_3",
            "r.io/x@sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899",
            "r.io/x:1@sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899",
        ] {
            assert!(valid_image_reference(ok), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox:a b",
            "r.io/x@sha256:zz",
            "r.io/x@4a5b",
            "a//b:1",
        ] {
            assert!(!valid_image_reference(bad), "{bad}");
        }
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

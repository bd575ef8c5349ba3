//! The Kubernetes backend's settings (resolved from the receiver's
//! `[kubernetes]` configuration, with defaults) and the docker config
//! file its registry credentials come from.

use crate::build::backend::registry::Credentials;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// The default builder: the original `gcr.io/kaniko-project/executor` was
/// archived in June 2025 (last release v1.24.0); this is the community
/// fork that continues its releases (osscontainertools/kaniko, images on
/// GHCR since its PRs #329/#368). v1.27.6 is its release of 2026-06-05
/// (CHANGELOG.md "# v1.27.6 Release 2026-06-05", release PR
/// osscontainertools/kaniko#765), the newest one whose notes could be read
/// here; it has `FF_KANIKO_COPY_AS_ROOT` (CHANGELOG_OVERVIEW.md, PRs
/// mzihlmann/kaniko#145 and #166). `[kubernetes] kaniko_image` overrides it
/// (pin a digest there for reproducible builds).
pub const DEFAULT_KANIKO_IMAGE: &str = "ghcr.io/osscontainertools/kaniko:v1.27.6";

/// Resources of the Kaniko container and the size of its workspace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildResources {
    #[serde(default = "d_cpu_request")]
    pub cpu_request: String,
    #[serde(default = "d_memory_request")]
    pub memory_request: String,
    #[serde(default = "d_cpu_limit")]
    pub cpu_limit: String,
    #[serde(default = "d_memory_limit")]
    pub memory_limit: String,
    /// `sizeLimit` of the emptyDir holding the context.
    #[serde(default = "d_workspace_size")]
    pub workspace_size_limit: String,
}

fn d_cpu_request() -> String {
    "500m".into()
}
fn d_memory_request() -> String {
    "1Gi".into()
}
fn d_cpu_limit() -> String {
    "2".into()
}
fn d_memory_limit() -> String {
    "4Gi".into()
}
fn d_workspace_size() -> String {
    "2Gi".into()
}

impl Default for BuildResources {
    fn default() -> Self {
        Self {
            cpu_request: d_cpu_request(),
            memory_request: d_memory_request(),
            cpu_limit: d_cpu_limit(),
            memory_limit: d_memory_limit(),
            workspace_size_limit: d_workspace_size(),
        }
    }
}

/// Everything the backend needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// Registry (`host[:port]`) images without a registry host go under.
    pub registry: String,
    /// Plain HTTP to the registry (Kaniko `--insecure --skip-tls-verify`).
    pub insecure_registry: bool,
    pub kaniko_image: String,
    /// The image with `devd-receiver` (the init container).
    pub fetcher_image: String,
    /// Base URL build pods reach the receiver's HTTP server at.
    pub context_url: String,
    /// Secret of type `kubernetes.io/dockerconfigjson` for Kaniko.
    pub registry_secret: Option<String>,
    /// The same credentials as a file, for the receiver's registry lookups.
    pub docker_config: Option<PathBuf>,
    /// Service account of the build pod (default: the namespace's default).
    pub service_account: Option<String>,
    /// `imagePullSecrets` of build pods and of the Deployments devd
    /// creates: on a private registry without node credentials the fetcher
    /// image and the apps' images are pulled with these (default: the
    /// `registry_secret`, a `kubernetes.io/dockerconfigjson` Secret).
    pub image_pull_secrets: Vec<String>,
    /// More Kaniko flags, e.g. `--cache=true`.
    pub kaniko_args: Vec<String>,
    pub resources: BuildResources,
    pub active_deadline_seconds: u32,
    pub ttl_seconds_after_finished: u32,
    /// Ingress hosts are `{service}.{namespace}.{domain}`.
    pub domain: Option<String>,
    /// URL reported for every service, with `{service}`, `{namespace}`,
    /// `{domain}`, `{port}`, `{workspace}` filled in.
    pub url_template: Option<String>,
    pub ingress_class: Option<String>,
    /// How long an external service's Ingress may go without an address
    /// from an ingress controller before the deploy fails, and then its URL
    /// without answering through that address (zero: neither wait nor
    /// check). An Ingress no controller takes (no `ingressClassName` and no
    /// default IngressClass: ingress-nginx 1.0 and later ignore it) never
    /// gets one; see [`super::ingress`].
    pub ingress_wait: Duration,
    pub rollout_timeout: Duration,
    /// The longest pause between two polls of a Job or Deployment.
    pub poll_interval: Duration,
    /// DevBuild resources kept per service (0: record none).
    pub devbuilds_per_service: usize,
}

impl Settings {
    /// Settings with defaults for everything but the essentials (tests).
    pub fn new(namespace: &str, registry: &str, fetcher_image: &str, context_url: &str) -> Self {
        Self {
            namespace: namespace.into(),
            registry: registry.into(),
            insecure_registry: false,
            kaniko_image: DEFAULT_KANIKO_IMAGE.into(),
            fetcher_image: fetcher_image.into(),
            context_url: context_url.trim_end_matches('/').into(),
            registry_secret: None,
            docker_config: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            kaniko_args: Vec::new(),
            resources: BuildResources::default(),
            active_deadline_seconds: 900,
            ttl_seconds_after_finished: 600,
            domain: None,
            url_template: None,
            ingress_class: None,
            ingress_wait: Duration::from_secs(60),
            rollout_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            devbuilds_per_service: crate::build::backend::devbuild::DEFAULT_KEEP,
        }
    }
}

/// Registry credentials per host from a docker config JSON
/// (`{"auths": {"host": {"auth": base64("user:pass")}}}`).
pub fn parse_docker_config(text: &str) -> Result<HashMap<String, Credentials>, String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let f: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (key, e) in f.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let creds = match (e.auth, e.username, e.password) {
            (_, Some(u), Some(p)) => Credentials {
                username: u,
                password: p,
            },
            (Some(a), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
                let raw =
                    String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                let (u, p) = raw
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                Credentials {
                    username: u.into(),
                    password: p.into(),
                }
            }
            _ => continue,
        };
        out.insert(host, creds);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "r.example.com:5000": {"username": "u2", "password": "p:2"},
            "empty.example.com": {}
        }}"#;
        let c = parse_docker_config(text).unwrap();
        assert_eq!(c["index.docker.io"].username, "user");
        assert_eq!(c["index.docker.io"].password, "pass");
        assert_eq!(c["r.example.com:5000"].password, "p:2");
        assert!(!c.contains_key("empty.example.com"));
        assert!(parse_docker_config(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(parse_docker_config("{}").unwrap().is_empty());
    }
}

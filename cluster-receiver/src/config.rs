//! The receiver's configuration file (`devd-receiver serve --config FILE`),
//! TOML. Every field has a default, so no file is needed for the local
//! backend.
//!
//! Every section and field, with examples and what each does:
//! [docs/configuration.md](../../docs/configuration.md) at the repository
//! root (`[build]`, `[git]`, `[kubernetes]`, `[kubernetes.resources]`).

use crate::build::backend::kubernetes::BuildResources;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Which backend builds and deploys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// buildah + podman on this machine.
    #[default]
    Local,
    /// Kaniko Jobs and Deployments in the receiver's namespace.
    Kubernetes,
    /// Sync only: no builds.
    None,
}

/// `[build]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    pub registry: Option<String>,
    #[serde(default)]
    pub insecure_registry: bool,
    #[serde(default = "default_bind")]
    pub bind: IpAddr,
}

fn default_concurrency() -> usize {
    2
}

fn default_bind() -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            concurrency: default_concurrency(),
            registry: None,
            insecure_registry: false,
            bind: default_bind(),
        }
    }
}

/// `[kubernetes]`, documented in the module doc.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub fetcher_image: Option<String>,
    pub kaniko_image: Option<String>,
    pub context_url: Option<String>,
    pub registry_secret: Option<String>,
    pub docker_config: Option<PathBuf>,
    pub service_account: Option<String>,
    /// Default: `[registry_secret]`; `[]` for none.
    pub image_pull_secrets: Option<Vec<String>>,
    #[serde(default)]
    pub kaniko_args: Vec<String>,
    #[serde(default)]
    pub resources: BuildResources,
    pub active_deadline_seconds: Option<u32>,
    pub ttl_seconds_after_finished: Option<u32>,
    pub domain: Option<String>,
    pub url_template: Option<String>,
    pub ingress_class: Option<String>,
    pub ingress_wait_seconds: Option<u64>,
    pub rollout_timeout_seconds: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub devbuilds_per_service: Option<usize>,
    pub pairing_secret: Option<String>,
}

/// `[git]`: how the receiver reaches the git remote.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// File holding the token for `http(s)://` remotes.
    pub token_file: Option<PathBuf>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub git: GitConfig,
    pub kubernetes: Option<KubernetesConfig>,
}

impl ReceiverConfig {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate the text of a configuration file.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if cfg.build.concurrency == 0 || cfg.build.concurrency > 64 {
            return Err(ConfigError::Invalid(format!(
                "{path}: [build] concurrency = {} must be between 1 and 64",
                cfg.build.concurrency
            )));
        }
        if cfg.build.backend == BackendKind::Kubernetes {
            cfg.check_kubernetes(path)?;
        }
        if let Some(name) = cfg
            .kubernetes
            .as_ref()
            .and_then(|k| k.pairing_secret.as_ref())
            && !devd_sync::catalog::valid_dns_label(name, 253)
        {
            return Err(ConfigError::Invalid(format!(
                "{path}: [kubernetes] pairing_secret = {name:?} is not a Secret name (lower-case letters, digits, '-')"
            )));
        }
        Ok(cfg)
    }

    fn check_kubernetes(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("{path}: {m}")));
        let Some(k) = &self.kubernetes else {
            return invalid(
                "[build] backend = \"kubernetes\" needs a [kubernetes] section (at least fetcher_image)".into(),
            );
        };
        if self.build.registry.is_none() {
            return invalid(
                "[build] backend = \"kubernetes\" needs [build] registry = \"HOST[:PORT]\": Kaniko pushes there and deploys pull from there".into(),
            );
        }
        if k.fetcher_image.as_deref().is_none_or(str::is_empty) {
            return invalid(
                "[kubernetes] fetcher_image is missing: set it to the image this receiver runs from (build pods run `devd-receiver fetch-context` from it)".into(),
            );
        }
        if let Some(ns) = &k.namespace
            && !devd_sync::catalog::valid_dns_label(ns, 63)
        {
            return invalid(format!(
                "[kubernetes] namespace = {ns:?} is not a namespace name (lower-case letters, digits, '-')"
            ));
        }
        if let Some(u) = &k.context_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return invalid(format!(
                "[kubernetes] context_url = {u:?} must be an http:// URL build pods can reach, e.g. \"http://devd-receiver.NAMESPACE.svc:8080\""
            ));
        }
        if k.active_deadline_seconds == Some(0) || k.rollout_timeout_seconds == Some(0) {
            return invalid(
                "[kubernetes] active_deadline_seconds and rollout_timeout_seconds must be above 0"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The Kubernetes client of `[kubernetes]` (its kubeconfig, else
/// `KUBECONFIG`/`~/.kube/config`, else the pod's service account) and the
/// namespace the receiver works in.
pub async fn kube_client(k: &KubernetesConfig) -> Result<(kube::Client, String), ConfigError> {
    let invalid = ConfigError::Invalid;
    devd_sync::net::install_crypto();
    let kube_config = match &k.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| invalid(format!("[kubernetes] kubeconfig {}: {e}", p.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| invalid(format!("[kubernetes] kubeconfig {}: {e}", p.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            invalid(format!(
                "no Kubernetes configuration: {e}; run the receiver in a pod with a service account, or set [kubernetes] kubeconfig"
            ))
        })?,
    };
    let namespace = k
        .namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let client = kube::Client::try_from(kube_config)
        .map_err(|e| invalid(format!("cannot create the Kubernetes client: {e}")))?;
    Ok((client, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = ReceiverConfig::parse("", "r.toml").unwrap();
        assert_eq!(c.build.backend, BackendKind::Local);
        assert_eq!(c.build.concurrency, 2);
        let e = ReceiverConfig::parse("[build]\nconcurrency = 0\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurrency"), "{e}");
        let e = ReceiverConfig::parse("[build]\nbackend = \"docker\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker"), "{e}");
    }

    const KUBE: &str = "[build]\nbackend = \"kubernetes\"\nregistry = \"r.example.com:5000\"\n";

    #[test]
    fn kubernetes_section_is_validated() {
        let e = ReceiverConfig::parse(KUBE, "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[kubernetes]") && e.contains("fetcher_image"),
            "{e}"
        );
        let e = ReceiverConfig::parse(&format!("{KUBE}[kubernetes]\n"), "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fetcher_image is missing"), "{e}");
        let e = ReceiverConfig::parse(
            "[build]\nbackend = \"kubernetes\"\n[kubernetes]\nfetcher_image = \"x\"\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[build] registry"), "{e}");
        let e = ReceiverConfig::parse(
            &format!("{KUBE}[kubernetes]\nfetcher_image = \"x\"\nnamespace = \"Dev_Alice\"\n"),
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("namespace"), "{e}");
        let e = ReceiverConfig::parse(
            &format!("{KUBE}[kubernetes]\nfetcher_image = \"x\"\ncpu = 1\n"),
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cpu"), "{e}");
        let c = ReceiverConfig::parse(
            &format!(
                "{KUBE}[kubernetes]\nfetcher_image = \"x\"\ndomain = \"dev.example.com\"\n[kubernetes.resources]\nmemory_limit = \"8Gi\"\n"
            ),
            "r.toml",
        )
        .unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.resources.memory_limit, "8Gi");
        assert_eq!(k.resources.cpu_request, "500m", "defaults fill the rest");
        assert_eq!(k.domain.as_deref(), Some("dev.example.com"));
    }
}

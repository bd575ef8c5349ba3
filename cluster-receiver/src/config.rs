//! The receiver's configuration file (`devd-receiver serve --config FILE`),
//! TOML. Every field has a default, so no file is needed for the local
//! backend.
//!
//! Every section and field, with examples and what each does:
//! [docs/configuration.md](../../docs/configuration.md) at the repository
//! root (`[build]`, `[git]`, `[kubernetes]`, `[kubernetes.resources]`).

use crate::builder::Backend;
use crate::builder::kubernetes::{
    BuildResources, DEFAULT_KANIKO_IMAGE, KubernetesBackend, Settings,
};
use crate::builder::local::{LocalBackend, LocalConfig};
use crate::http::ContextShelf;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    #[serde(default)]
    pub kaniko_args: Vec<String>,
    #[serde(default)]
    pub resources: BuildResources,
    pub active_deadline_seconds: Option<u32>,
    pub ttl_seconds_after_finished: Option<u32>,
    pub domain: Option<String>,
    pub url_template: Option<String>,
    pub ingress_class: Option<String>,
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

/// What the backends get from the running receiver.
#[derive(Debug, Clone)]
pub struct BackendEnv {
    /// The receiver's data directory.
    pub state_dir: PathBuf,
    /// Build contexts offered on the HTTP server, and its bound address
    /// (`None`: no `--http-listen`).
    pub http: Option<(Arc<ContextShelf>, SocketAddr)>,
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

    /// The configured backend (`None`: builds are off).
    pub async fn backend(&self, env: &BackendEnv) -> Result<Option<Arc<dyn Backend>>, ConfigError> {
        match self.build.backend {
            BackendKind::None => Ok(None),
            BackendKind::Local => Ok(Some(Arc::new(LocalBackend::new(LocalConfig {
                registry: self.build.registry.clone(),
                insecure_registry: self.build.insecure_registry,
                bind: self.build.bind,
                state_dir: env.state_dir.join("local-backend"),
            })))),
            BackendKind::Kubernetes => Ok(Some(Arc::new(self.kubernetes_backend(env).await?))),
        }
    }

    async fn kubernetes_backend(&self, env: &BackendEnv) -> Result<KubernetesBackend, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let k = self.kubernetes.clone().unwrap_or_default();
        let Some((shelf, addr)) = &env.http else {
            return Err(invalid(
                "backend = \"kubernetes\" needs the HTTP server build pods fetch their context from: pass --http-listen 0.0.0.0:8080".into(),
            ));
        };
        let context_url = match &k.context_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if addr.ip().is_unspecified() => {
                return Err(invalid(format!(
                    "[kubernetes] context_url is missing and --http-listen {addr} is not an address build pods can use: set context_url = \"http://devd-receiver.NAMESPACE.svc:{}\" (the receiver's Service)",
                    addr.port()
                )));
            }
            None => format!("http://{addr}"),
        };
        let (client, namespace) = kube_client(&k).await?;
        let registry = self
            .build
            .registry
            .clone()
            .ok_or_else(|| invalid("backend = \"kubernetes\" needs [build] registry".into()))?;
        let mut s = Settings::new(
            &namespace,
            &registry,
            k.fetcher_image.as_deref().unwrap_or_default(),
            &context_url,
        );
        s.insecure_registry = self.build.insecure_registry;
        s.kaniko_image = k
            .kaniko_image
            .clone()
            .unwrap_or_else(|| DEFAULT_KANIKO_IMAGE.to_owned());
        s.registry_secret = k.registry_secret.clone();
        s.docker_config = k.docker_config.clone();
        s.service_account = k.service_account.clone();
        s.kaniko_args = k.kaniko_args.clone();
        s.resources = k.resources.clone();
        if let Some(v) = k.active_deadline_seconds {
            s.active_deadline_seconds = v;
        }
        if let Some(v) = k.ttl_seconds_after_finished {
            s.ttl_seconds_after_finished = v;
        }
        s.domain = k.domain.clone();
        s.url_template = k.url_template.clone();
        s.ingress_class = k.ingress_class.clone();
        if let Some(v) = k.rollout_timeout_seconds {
            s.rollout_timeout = Duration::from_secs(v);
        }
        if let Some(v) = k.poll_interval_ms {
            s.poll_interval = Duration::from_millis(v.max(10));
        }
        if let Some(v) = k.devbuilds_per_service {
            s.devbuilds_per_service = v;
        }
        tracing::info!(%namespace, %context_url, kaniko = %s.kaniko_image, "Kubernetes backend");
        KubernetesBackend::new(client, s, shelf.clone()).map_err(|f| invalid(f.error))
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
        let c = ReceiverConfig::parse(
            "[build]\nbackend = \"none\"\nregistry = \"127.0.0.1:5000\"\n",
            "r.toml",
        )
        .unwrap();
        let env = BackendEnv {
            state_dir: "/nonexistent".into(),
            http: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(c.backend(&env)).unwrap().is_none());
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

    #[test]
    fn kubernetes_backend_needs_a_reachable_http_server() {
        let c = ReceiverConfig::parse(
            &format!("{KUBE}[kubernetes]\nfetcher_image = \"x\"\n"),
            "r.toml",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let shelf = ContextShelf::new(&d.path().join("shelf")).unwrap();
        let no_http = BackendEnv {
            state_dir: d.path().into(),
            http: None,
        };
        let e = rt.block_on(c.backend(&no_http)).err().unwrap().to_string();
        assert!(e.contains("--http-listen"), "{e}");
        let wildcard = BackendEnv {
            state_dir: d.path().into(),
            http: Some((shelf, "0.0.0.0:8080".parse().unwrap())),
        };
        let e = rt.block_on(c.backend(&wildcard)).err().unwrap().to_string();
        assert!(e.contains("context_url"), "{e}");
    }
}

//! The build backend the configuration chooses ([`ReceiverConfig::backend`]),
//! with what it needs from the running receiver ([`BackendEnv`]). Apart from
//! `config` so the configuration file's types know no HTTP server.

use crate::build::backend::Backend;
use crate::build::backend::kubernetes::{DEFAULT_KANIKO_IMAGE, KubernetesBackend, Settings};
use crate::build::backend::local::{LocalBackend, LocalConfig};
use crate::build::http::ContextShelf;
use crate::config::{BackendKind, ConfigError, ReceiverConfig, kube_client};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
        s.image_pull_secrets = k
            .image_pull_secrets
            .clone()
            .unwrap_or_else(|| k.registry_secret.iter().cloned().collect());
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
        if let Some(v) = k.ingress_wait_seconds {
            s.ingress_wait = Duration::from_secs(v);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE: &str = "[build]\nbackend = \"kubernetes\"\nregistry = \"r.example.com:5000\"\n";

    #[test]
    fn backend_none_is_no_backend() {
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

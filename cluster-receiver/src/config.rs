//! The receiver's configuration file (`devd-receiver serve --config FILE`),
//! TOML. Every field has a default, so no file is needed for the local
//! backend.
//!
//! ```toml
//! [build]
//! backend = "local"              # "local" | "kubernetes" | "none" (sync only)
//! concurrency = 2                # builds running at once, across services
//! registry = "127.0.0.1:5000"    # push images here; images without a
//!                                # registry host go under it
//! insecure_registry = true       # plain HTTP / no TLS verification
//! bind = "127.0.0.1"             # local backend: address of service URLs
//! ```

use crate::builder::Backend;
use crate::builder::local::{LocalBackend, LocalConfig};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

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

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    #[serde(default)]
    pub build: BuildConfig,
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
        Ok(cfg)
    }

    /// The configured backend (`None`: builds are off). `state_dir` is the
    /// receiver's data directory.
    pub fn backend(&self, state_dir: &Path) -> Result<Option<Arc<dyn Backend>>, ConfigError> {
        match self.build.backend {
            BackendKind::None => Ok(None),
            BackendKind::Local => Ok(Some(Arc::new(LocalBackend::new(LocalConfig {
                registry: self.build.registry.clone(),
                insecure_registry: self.build.insecure_registry,
                bind: self.build.bind,
                state_dir: state_dir.join("local-backend"),
            })))),
            BackendKind::Kubernetes => Err(ConfigError::Invalid(
                "[build] backend = \"kubernetes\" needs a [kubernetes] section".into(),
            )),
        }
    }
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
        assert!(c.backend(Path::new("/nonexistent")).unwrap().is_none());
        let e = ReceiverConfig::parse("[build]\nconcurrency = 0\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurrency"), "{e}");
        let e = ReceiverConfig::parse("[build]\nbackend = \"docker\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker"), "{e}");
    }
}

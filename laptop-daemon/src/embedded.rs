//! The embedded receiver: `devd start` without a remote receiver runs one
//! in this process, on loopback QUIC, with the local backend (buildah
//! builds, podman runs). Only with the cargo feature `embedded` (default).

use crate::uplink::Target;
use devd_receiver::{RunError, ServeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A receiver running in this process.
pub struct Embedded {
    running: devd_receiver::Running,
}

impl Embedded {
    /// Start it under `state_dir/receiver`, fetching base commits from the
    /// repository's origin (else the repository itself).
    pub async fn start(
        repo: &crate::repo::Repo,
        state_dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Self, RunError> {
        let remote = match repo.origin_url() {
            Some(u) => u,
            None => format!("file://{}", repo.git_dir().display()),
        };
        // The laptop's own credentials are not the receiver's: a private
        // https origin falls back to uploading the base. Loopback QUIC, no
        // TCP fallback, the local backend (buildah, podman) under
        // `receiver/local-backend`.
        let config = ServeConfig::embedded(state_dir.join("receiver"), remote);
        let running = devd_receiver::run(config, cancel.child_token()).await?;
        Ok(Self { running })
    }

    /// Where and how the daemon reaches it.
    pub fn target(&self) -> Target {
        let name = devd_receiver::run::EMBEDDED_WORKSPACE;
        let ws = self.running.registry.get(name).expect("local workspace");
        Target {
            address: self.running.addr.to_string(),
            fingerprint: self.running.fingerprint.clone(),
            workspace: name.into(),
            token: ws.token().to_owned(),
            transport: crate::transport::TransportMode::Quic,
        }
    }

    /// The receiver's copy of the worktree.
    pub fn worktree(&self) -> PathBuf {
        self.running
            .workspaces
            .first()
            .map(|w| w.worktree.clone())
            .unwrap_or_default()
    }

    /// Stop the services' containers (`devd stop`); the names stopped.
    pub async fn stop_services(&self) -> Result<Vec<String>, String> {
        match self.pipeline() {
            Some(p) => p.stop_services().await,
            None => Ok(Vec::new()),
        }
    }

    /// Remove the services' containers and images (`devd down`); one line
    /// per thing removed.
    pub async fn remove_deployed(&self) -> Result<Vec<String>, String> {
        match self.pipeline() {
            Some(p) => p.remove_all().await,
            None => Ok(Vec::new()),
        }
    }

    fn pipeline(&self) -> Option<std::sync::Arc<devd_receiver::build::pipeline::Pipeline>> {
        let name = devd_receiver::run::EMBEDDED_WORKSPACE;
        self.running.registry.get(name)?.pipeline().cloned()
    }

    /// Stop it, letting work in flight finish for up to `grace`.
    pub async fn drain(self, grace: Duration) {
        self.running.drain(grace).await;
    }
}

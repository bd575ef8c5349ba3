//! The embedded receiver: `devd start` without a remote receiver runs one
//! in this process, on loopback QUIC, with the local backend (buildah
//! builds, podman runs). Only with the cargo feature `embedded` (default).

use crate::uplink::Target;
use devd_receiver::server::ServeError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    ) -> Result<Self, ServeError> {
        let remote = match repo.origin_url() {
            Some(u) => u,
            None => format!("file://{}", repo.git_dir().display()),
        };
        let running = devd_receiver::start(
            devd_receiver::ServeOptions {
                data_dir: state_dir.join("receiver"),
                listen: "127.0.0.1:0".parse().expect("loopback"),
                advertise: None,
                workspaces: vec![devd_receiver::WorkspaceSpec {
                    name: "local".into(),
                    git_remote: remote,
                    // The laptop's own credentials are not the receiver's: a
                    // private https origin falls back to uploading the base.
                    git_token_file: None,
                }],
                max_connections: 8,
                // The embedded receiver is on loopback: QUIC always gets through.
                tcp: false,
                builds: Some(devd_receiver::Builds {
                    backend: Arc::new(devd_receiver::builder::local::LocalBackend::new(
                        devd_receiver::builder::local::LocalConfig {
                            registry: None,
                            insecure_registry: false,
                            bind: std::net::Ipv4Addr::LOCALHOST.into(),
                            state_dir: state_dir.join("receiver").join("local-backend"),
                        },
                    )),
                    concurrency: 2,
                }),
            },
            cancel.child_token(),
        )
        .await?;
        Ok(Self { running })
    }

    /// Where and how the daemon reaches it.
    pub fn target(&self) -> Target {
        let ws = self.running.registry.get("local").expect("local workspace");
        Target {
            address: self.running.addr.to_string(),
            fingerprint: self.running.fingerprint.clone(),
            workspace: "local".into(),
            token: ws.token().to_owned(),
            transport: crate::transport::TransportMode::Quic,
        }
    }

    /// The receiver's copy of the worktree.
    pub fn worktree(&self) -> PathBuf {
        self.running
            .workspaces
            .first()
            .map(|w| w.2.clone())
            .unwrap_or_default()
    }

    /// Stop it, letting work in flight finish for up to `grace`.
    pub async fn drain(self, grace: Duration) {
        self.running.drain(grace).await;
    }
}

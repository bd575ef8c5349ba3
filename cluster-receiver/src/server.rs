//! The QUIC server: endpoint, connection limit, workspaces, pairing files,
//! and a drain on shutdown.

use crate::pairing::Pairing;
use crate::session::serve_connection;
use crate::tls::{Identity, TlsError};
use crate::workspace::{Registry, Workspace, WorkspaceError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One workspace to serve and the git remote its base commits come from.
#[derive(Clone, Debug)]
pub struct WorkspaceSpec {
    pub name: String,
    pub git_remote: String,
}

/// How to run a receiver.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address written into pairing files; defaults to the bound address.
    pub advertise: Option<String>,
    pub workspaces: Vec<WorkspaceSpec>,
    pub max_connections: usize,
    /// Builds and deploys (`None`: sync only).
    pub builds: Option<Builds>,
}

/// The build backend and its concurrency.
#[derive(Clone)]
pub struct Builds {
    pub backend: Arc<dyn crate::builder::Backend>,
    pub concurrency: usize,
}

impl std::fmt::Debug for Builds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builds")
            .field("backend", &self.backend.name())
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Errors starting the receiver.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid workspace name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error(transparent)]
    Pairing(#[from] crate::pairing::PairingError),
    #[error("startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running receiver.
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: String,
    /// (workspace, pairing file, worktree)
    pub workspaces: Vec<(String, PathBuf, PathBuf)>,
    pub registry: Arc<Registry>,
    tracker: TaskTracker,
    endpoint: quinn::Endpoint,
}

impl Running {
    /// Wait for every connection to finish (after the token was cancelled),
    /// at most `grace`, then close the endpoint.
    pub async fn drain(self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still busy after {grace:?}; closing anyway");
        }
        self.endpoint.close(0u32.into(), b"receiver shutting down");
        self.endpoint.wait_idle().await;
    }
}

/// Install ring as rustls' process-wide provider (once; later calls no-op).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead peer (UDP: no reset) is noticed after the idle timeout; the
    // keep-alives keep a live but busy peer (a long apply) from timing out.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .expect("valid idle timeout"),
    ));
    t.stream_receive_window((32u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// The QUIC transport settings shared by both ends.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(transport())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Path of a workspace's pairing file.
pub fn pairing_path(data_dir: &Path, workspace: &str) -> PathBuf {
    data_dir
        .join("workspaces")
        .join(workspace)
        .join("pairing.toml")
}

/// Start serving; connections are handled until `cancel` fires.
pub async fn start(opts: ServeOptions, cancel: CancellationToken) -> Result<Running, ServeError> {
    install_crypto();
    for w in &opts.workspaces {
        if !valid_name(&w.name) {
            return Err(ServeError::BadName(w.name.clone()));
        }
    }
    let data = opts.data_dir.clone();
    let identity = {
        let d = data.join("tls");
        tokio::task::spawn_blocking(move || Identity::load_or_create(&d)).await??
    };
    let mut registry = Registry::new();
    for w in &opts.workspaces {
        let (d, name, remote) = (data.clone(), w.name.clone(), w.git_remote.clone());
        let ws = tokio::task::spawn_blocking(move || Workspace::open(&d, &name, &remote)).await??;
        let ws = Arc::new(ws);
        if let Some(b) = &opts.builds {
            let p = crate::pipeline::Pipeline::start(&ws, b.backend.clone(), b.concurrency).await;
            ws.set_pipeline(p);
        }
        registry.insert(w.name.clone(), ws);
    }
    let registry = Arc::new(registry);
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
    ));
    server_config.transport_config(transport_config());
    let endpoint =
        quinn::Endpoint::server(server_config, opts.listen).map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = endpoint.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let fingerprint = identity.fingerprint();
    let advertise = opts.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut workspaces = Vec::new();
    for (name, ws) in registry.iter() {
        let path = pairing_path(&data, name);
        Pairing {
            address: advertise.clone(),
            fingerprint: fingerprint.clone(),
            workspace: name.clone(),
            token: ws.token().to_owned(),
        }
        .save(&path)?;
        workspaces.push((name.clone(), path, ws.worktree_path().to_owned()));
    }
    let tracker = TaskTracker::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    {
        let endpoint = endpoint.clone();
        let registry = registry.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = cancel.cancelled() => break,
                    i = endpoint.accept() => match i { Some(i) => i, None => break },
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                    incoming.refuse();
                    continue;
                };
                let registry = registry.clone();
                let cancel = cancel.clone();
                tracker2.spawn(async move {
                    let _permit = permit;
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, registry, cancel).await,
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                });
            }
        });
    }
    Ok(Running {
        addr,
        fingerprint,
        workspaces,
        registry,
        tracker,
        endpoint,
    })
}

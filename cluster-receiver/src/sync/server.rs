//! The QUIC server: endpoint, connection limit, workspaces, pairing files.
//! [`open`] opens the workspaces, [`serve`] accepts connections; the
//! composition root (`run.rs`) attaches the build pipelines between
//! the two and drains on shutdown.

use crate::sync::gate::Gate;
use crate::sync::session::serve_connection;
use crate::sync::workspace::{Registry, Workspace, WorkspaceError};
use devd_sync::pairing::Pairing;
use devd_sync::tls::{Identity, TlsError};
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
    /// File holding the token sent to an `http(s)://` git remote (HTTP
    /// Basic auth, user `x-access-token`); read at every fetch.
    pub git_token_file: Option<PathBuf>,
}

/// Where and how the QUIC endpoint listens.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address written into pairing files; defaults to the bound address.
    pub advertise: Option<String>,
    pub max_connections: usize,
    /// Also accept the TCP + TLS fallback on the same port number, for
    /// networks that carry no UDP (office firewalls, `kubectl
    /// port-forward`).
    pub tcp: bool,
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
    Pairing(#[from] devd_sync::pairing::PairingError),
    #[error("startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One served workspace, as `devd-receiver serve` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub name: String,
    /// Its pairing file (address, fingerprint, workspace, token).
    pub pairing: PathBuf,
    /// The receiver's copy of the laptop's worktree.
    pub worktree: PathBuf,
}

/// The receiver's identity and its workspaces, opened and recovered, not
/// served yet.
pub struct Opened {
    identity: Identity,
    pub registry: Registry,
}

/// The QUIC endpoint (and TCP listener) accepting connections.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub workspaces: Vec<Served>,
    pub registry: Arc<Registry>,
    endpoint: quinn::Endpoint,
}

impl Endpoint {
    /// Close the endpoint (after the connections drained) and wait until
    /// the peers know.
    pub async fn close(self) {
        self.endpoint.close(0u32.into(), b"receiver shutting down");
        self.endpoint.wait_idle().await;
    }
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

/// Load (or create) the TLS identity under `data_dir` and open every
/// workspace of `specs`, finishing any apply a crash interrupted.
pub async fn open(data_dir: &Path, specs: &[WorkspaceSpec]) -> Result<Opened, ServeError> {
    devd_sync::net::install_crypto();
    for w in specs {
        if !valid_name(&w.name) {
            return Err(ServeError::BadName(w.name.clone()));
        }
    }
    let data = data_dir.to_owned();
    let identity = {
        let d = data.join("tls");
        tokio::task::spawn_blocking(move || Identity::load_or_create(&d)).await??
    };
    let mut registry = Registry::new();
    for w in specs {
        let (d, name, remote, token) = (
            data.clone(),
            w.name.clone(),
            w.git_remote.clone(),
            w.git_token_file.clone(),
        );
        let ws = tokio::task::spawn_blocking(move || {
            Workspace::open(&d, &name, &remote, token.as_deref())
        })
        .await??;
        registry.insert(w.name.clone(), Arc::new(ws));
    }
    Ok(Opened { identity, registry })
}

/// Bind the endpoint, write the pairing files and accept connections on
/// `tracker` until `cancel` fires.
pub fn serve(
    opened: Opened,
    opts: &ServeOptions,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<Endpoint, ServeError> {
    let Opened { identity, registry } = opened;
    let registry = Arc::new(registry);
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
    ));
    server_config.transport_config(devd_sync::net::transport_config());
    let (udp, tcp) = bind(opts.listen, opts.tcp)?;
    let bind_err = |source| ServeError::Bind {
        addr: opts.listen,
        source,
    };
    let endpoint = quinn::Endpoint::new(
        devd_sync::net::endpoint_config(identity.reset_secret()),
        Some(server_config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)?;
    let addr = endpoint.local_addr().map_err(bind_err)?;
    let fingerprint = identity.fingerprint();
    let advertise = opts.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut workspaces = Vec::new();
    for (name, ws) in registry.iter() {
        let path = pairing_path(&opts.data_dir, name);
        Pairing {
            address: advertise.clone(),
            fingerprint: fingerprint.clone(),
            workspace: name.clone(),
            token: ws.token().to_owned(),
        }
        .save(&path)?;
        workspaces.push(Served {
            name: name.clone(),
            pairing: path,
            worktree: ws.worktree_path().to_owned(),
        });
    }
    // Only authenticated connections count against the limit; see `gate`.
    let gate = Gate::new(opts.max_connections);
    if let Some(listener) = tcp {
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()?));
        tracker.spawn(accept_tcp(
            listener,
            tls,
            registry.clone(),
            gate.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
    }
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
                let admission = gate.admit(incoming.remote_address());
                let registry = registry.clone();
                let cancel = cancel.clone();
                tracker2.spawn(async move {
                    let connecting = match incoming.accept() {
                        Ok(c) => c,
                        Err(e) => return tracing::debug!(error = %e, "cannot accept a QUIC connection"),
                    };
                    let handshake = tokio::select! {
                        h = connecting => h,
                        () = admission.expired() => return tracing::debug!("QUIC handshake not done in time"),
                    };
                    match handshake {
                        Ok(conn) => serve_connection(conn, registry, cancel, admission).await,
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                });
            }
        });
    }
    Ok(Endpoint {
        addr,
        fingerprint,
        workspaces,
        registry,
        endpoint,
    })
}

/// Bind the UDP socket for QUIC and, with `tcp`, a TCP listener on the same
/// port number (when `listen` asks for any port, one free for both).
fn bind(
    listen: SocketAddr,
    tcp: bool,
) -> Result<(std::net::UdpSocket, Option<tokio::net::TcpListener>), ServeError> {
    let bind_err = |source| ServeError::Bind {
        addr: listen,
        source,
    };
    let mut attempts = 0;
    loop {
        let udp = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        if !tcp {
            return Ok((udp, None));
        }
        let port = udp.local_addr().map_err(bind_err)?.port();
        let at = SocketAddr::new(listen.ip(), port);
        // Not SO_REUSEADDR: a listener left by another process must not be
        // shared silently.
        match std::net::TcpListener::bind(at) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(bind_err)?;
                let l = tokio::net::TcpListener::from_std(l).map_err(bind_err)?;
                return Ok((udp, Some(l)));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && listen.port() == 0
                    && attempts < 20 =>
            {
                attempts += 1;
            }
            Err(source) => return Err(ServeError::Bind { addr: at, source }),
        }
    }
}

/// Accept TCP + TLS connections until `cancel` fires; each is one stream
/// ([`crate::sync::session::serve_tcp_stream`]), admitted by the same
/// `gate` as QUIC connections.
async fn accept_tcp(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    registry: Arc<Registry>,
    gate: Arc<Gate>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a TCP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admission = gate.admit(remote);
        devd_sync::net::tune_tcp(&tcp);
        let (tls, registry, cancel) = (tls.clone(), registry.clone(), cancel.clone());
        tracker.spawn(async move {
            let stream = tokio::select! {
                s = tls.accept(tcp) => s,
                () = admission.expired() => return tracing::debug!(%remote, "TLS handshake not done in time"),
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
            };
            let (recv, send) = tokio::io::split(stream);
            let io = devd_sync::framed::Framed::new(send, recv, devd_protocol::message::MAX_FRAME);
            crate::sync::session::serve_tcp_stream(io, remote, registry, cancel, admission).await;
        });
    }
}

//! The composition root: [`run`] assembles a receiver from a
//! [`ServeConfig`], for `devd-receiver serve` and for the laptop's embedded
//! receiver alike, so limits and build concurrency have one type and one
//! set of defaults.
//!
//! Order: the HTTP server (with `http_listen`), the build backend, the
//! pairing publisher, the workspaces (opened and recovered), their build
//! pipelines, the QUIC endpoint, then readiness (once the pairing is
//! published, if configured). Every task runs on one `TaskTracker`;
//! [`Running::drain`] waits for connections and builds in flight, at most
//! a grace period.

use crate::backends::BackendEnv;
use crate::build::context;
use crate::build::http::{self, ContextShelf, HttpError, HttpState};
use crate::build::pipeline::{Pipeline, Read, Snapshotted, Source};
use crate::config::{ConfigError, ReceiverConfig};
use crate::publish::{PublishError, Publisher};
use crate::sync::server::{self, ServeError, ServeOptions, Served, WorkspaceSpec};
use crate::sync::workspace::{Registry, Workspace};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Concurrent laptop connections a receiver accepts, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Connections the embedded receiver accepts: its one laptop daemon
/// (uplink, event and log streams) with room for a restart.
pub const EMBEDDED_MAX_CONNECTIONS: usize = 8;
/// Name of the embedded receiver's one workspace.
pub const EMBEDDED_WORKSPACE: &str = "local";

/// Everything a receiver runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// All state: certificate, workspaces, blobs, worktrees, build state.
    pub data_dir: PathBuf,
    /// QUIC on this UDP port (and the TCP + TLS fallback with `tcp`).
    pub listen: SocketAddr,
    /// Address written into pairing files; defaults to the bound address.
    pub advertise: Option<String>,
    /// Also accept the TCP + TLS fallback on the same port number.
    pub tcp: bool,
    pub workspaces: Vec<WorkspaceSpec>,
    /// Concurrent laptop connections, at most.
    pub max_connections: usize,
    /// The HTTP server (build contexts, `/healthz`, `/readyz`, `/metrics`).
    pub http_listen: Option<SocketAddr>,
    /// The configuration file: build backend and concurrency, registry,
    /// git token, Kubernetes settings.
    pub file: ReceiverConfig,
}

impl ServeConfig {
    /// Serve `workspaces` on `listen` with the defaults: TCP fallback on,
    /// [`DEFAULT_MAX_CONNECTIONS`], no HTTP server, the configuration
    /// file's defaults (local backend, 2 builds at once).
    pub fn new(data_dir: PathBuf, listen: SocketAddr, workspaces: Vec<WorkspaceSpec>) -> Self {
        Self {
            data_dir,
            listen,
            advertise: None,
            tcp: true,
            workspaces,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http_listen: None,
            file: ReceiverConfig::default(),
        }
    }

    /// The laptop's embedded receiver: loopback QUIC on any free port (no
    /// TCP fallback: QUIC always gets through on loopback), one workspace
    /// [`EMBEDDED_WORKSPACE`] fetching from `git_remote` without a token,
    /// [`EMBEDDED_MAX_CONNECTIONS`], and the default local backend under
    /// `data_dir/local-backend`.
    pub fn embedded(data_dir: PathBuf, git_remote: String) -> Self {
        Self {
            tcp: false,
            max_connections: EMBEDDED_MAX_CONNECTIONS,
            ..Self::new(
                data_dir,
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
                vec![WorkspaceSpec {
                    name: EMBEDDED_WORKSPACE.into(),
                    git_remote,
                    git_token_file: None,
                }],
            )
        }
    }
}

/// Errors starting a receiver.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A running receiver.
pub struct Running {
    /// The bound QUIC address.
    pub addr: SocketAddr,
    /// Fingerprint of the receiver's certificate (pinned by laptops).
    pub fingerprint: String,
    /// The bound address of the HTTP server, if any.
    pub http: Option<SocketAddr>,
    pub workspaces: Vec<Served>,
    pub registry: Arc<Registry>,
    tracker: TaskTracker,
    endpoint: server::Endpoint,
}

impl Running {
    /// After the `cancel` token given to [`run`] fired: wait for the
    /// connections and for the builds in flight (no new build starts), at
    /// most `grace` for all of them, then close the endpoint.
    pub async fn drain(self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tracker.len(),
                "connections or builds still busy after {grace:?}; closing anyway"
            );
        }
        self.endpoint.close().await;
    }
}

/// Start a receiver; it serves until `cancel` fires, then
/// [`Running::drain`] lets work in flight finish.
pub async fn run(config: ServeConfig, cancel: CancellationToken) -> Result<Running, RunError> {
    let ServeConfig {
        data_dir,
        listen,
        advertise,
        tcp,
        workspaces,
        max_connections,
        http_listen,
        file,
    } = config;
    let tracker = TaskTracker::new();
    let mut ops = None;
    let http = match http_listen {
        Some(addr) => {
            let shelf = ContextShelf::new(&data_dir.join("http-contexts"))?;
            let state = HttpState::new(shelf.clone());
            ops = Some(state.ops.clone());
            let server = http::serve(addr, state, &tracker, cancel.clone()).await?;
            Some((shelf, server.addr))
        }
        None => None,
    };
    let env = BackendEnv {
        state_dir: data_dir.clone(),
        http: http.clone(),
    };
    let backend = file.backend(&env).await?;
    // [kubernetes] pairing_secret: its client now, so a bad kubeconfig
    // stops the start.
    let publisher = Publisher::from_config(&file).await?;
    let opened = server::open(&data_dir, &workspaces).await?;
    if let Some(backend) = &backend {
        for ws in opened.registry.values() {
            let p = Pipeline::start(
                source(ws),
                backend.clone(),
                file.build.concurrency,
                tracker.clone(),
                cancel.clone(),
            )
            .await;
            ws.set_pipeline(p);
        }
    }
    let opts = ServeOptions {
        data_dir,
        listen,
        advertise,
        max_connections,
        tcp,
    };
    let endpoint = server::serve(opened, &opts, &tracker, cancel.clone())?;
    // Every workspace is open and recovered, and its pairing published if
    // configured: /readyz says so.
    let registry = endpoint.registry.clone();
    crate::publish::ready_after_publishing(
        publisher,
        endpoint.workspaces.iter().map(|w| w.pairing.as_path()),
        &tracker,
        cancel,
        move || {
            if let Some(ops) = ops {
                let names: Vec<String> = registry.keys().cloned().collect();
                ops.set_ready(
                    names.iter().map(String::as_str),
                    Box::new(move || queue_depths(&registry)),
                );
            }
        },
    )?;
    Ok(Running {
        addr: endpoint.addr,
        fingerprint: endpoint.fingerprint.clone(),
        http: http.map(|(_, addr)| addr),
        workspaces: endpoint.workspaces.clone(),
        registry: endpoint.registry.clone(),
        tracker,
        endpoint,
    })
}

/// Per workspace with builds, the services whose build is queued.
fn queue_depths(registry: &Registry) -> Vec<(String, usize)> {
    registry
        .iter()
        .filter_map(|(name, ws)| Some((name.clone(), http::queued(&ws.pipeline()?.snapshot())?)))
        .collect()
}

/// What a build pipeline gets from workspace `ws`: its name and paths, and
/// a snapshot function that copies a build context under the workspace
/// lock (no generation is applied meanwhile). It holds the workspace
/// weakly: the workspace holds the pipeline.
fn source(ws: &Arc<Workspace>) -> Source {
    let weak = Arc::downgrade(ws);
    let worktree = ws.worktree_path().to_owned();
    let root = worktree.clone();
    let read = {
        let (weak, root) = (weak.clone(), root.clone());
        Arc::new(move |paths: Vec<devd_protocol::RelPath>| {
            let (weak, root) = (weak.clone(), root.clone());
            Box::pin(async move {
                let ws = weak.upgrade()?;
                let guard = ws.lock().await;
                let generation = guard.generation();
                let entries =
                    tokio::task::spawn_blocking(move || crate::build::live::read(&root, &paths))
                        .await;
                drop(guard);
                Some(Read {
                    generation,
                    entries: match entries {
                        Ok(Ok(e)) => Ok(e),
                        Ok(Err(e)) => Err(format!("cannot read the changed files: {e}")),
                        Err(e) => Err(format!("read task failed: {e}")),
                    },
                })
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Option<Read>> + Send>>
        })
    };
    let render = {
        let (weak, root) = (weak.clone(), root.clone());
        Arc::new(move |job: crate::build::pipeline::RenderJob| {
            let (weak, root) = (weak.clone(), root.clone());
            Box::pin(async move {
                let ws = weak.upgrade()?;
                let guard = ws.lock().await;
                let generation = guard.generation();
                let rendered = tokio::task::spawn_blocking(move || job(&root)).await;
                drop(guard);
                Some((
                    generation,
                    rendered.unwrap_or_else(|e| {
                        Err(crate::build::render::RenderError::Invalid {
                            origin: "render".into(),
                            problem: format!("the render task failed: {e}"),
                        })
                    }),
                ))
            })
                as std::pin::Pin<
                    Box<
                        dyn std::future::Future<
                                Output = Option<(
                                    Option<u64>,
                                    Result<
                                        crate::build::render::Rendered,
                                        crate::build::render::RenderError,
                                    >,
                                )>,
                            > + Send,
                    >,
                >
        })
    };
    Source {
        name: ws.name.clone(),
        worktree,
        dir: ws.dir(),
        read,
        render,
        snapshot: Arc::new(move |lookup, dir| {
            let (weak, root) = (weak.clone(), root.clone());
            Box::pin(async move {
                let ws = weak.upgrade()?;
                let guard = ws.lock().await;
                let generation = guard.generation();
                let Some(service) = lookup() else {
                    return Some(Snapshotted {
                        generation,
                        copy: None,
                    });
                };
                let s2 = service.clone();
                let copy =
                    tokio::task::spawn_blocking(move || context::snapshot(&root, &s2, &dir, b""))
                        .await;
                drop(guard);
                let copy = match copy {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("snapshot task failed: {e}")),
                };
                Some(Snapshotted {
                    generation,
                    copy: Some((service, copy)),
                })
            })
        }),
    }
}

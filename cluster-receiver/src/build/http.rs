//! The receiver's HTTP server (`devd-receiver serve --http-listen ADDR`).
//!
//! Routes:
//! - `GET /contexts/{token}.tar.zst`: the build context of one running
//!   Kubernetes build, for its `fetch-context` init container. The receiver's
//!   volume is ReadWriteOnce, so a build pod on another node cannot mount it;
//!   the context travels over the cluster network instead. Each build gets
//!   a fresh random token (128 bits) that names its archive only while the
//!   build runs ([`ContextOffer`] withdraws it when dropped); any other path
//!   is 404. The archive's blake3 digest is passed to the fetcher beside the
//!   URL, and the fetcher verifies it.
//!
//! - `GET /healthz`: 200 while the process serves HTTP (liveness).
//! - `GET /readyz`: 200 once every workspace was opened and its volume
//!   state recovered (an interrupted apply finished), 503 before
//!   ([`Ops::set_ready`]); Kubernetes routes nothing to the pod until then.
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]); the build
//!   queue depths come from a function the composition root passes to
//!   [`Ops::set_ready`], so this module knows no workspace.

use crate::build::archive::{self, Packed};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use devd_protocol::event::ServiceState;
use devd_protocol::message::ServerMsg;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors of the HTTP side.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare the context directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("cannot draw a random token: {0}")]
    Random(std::io::Error),
    #[error("packing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Build contexts offered for download, by token.
#[derive(Debug)]
pub struct ContextShelf {
    dir: PathBuf,
    offers: Mutex<HashMap<String, PathBuf>>,
}

/// One offered context; withdrawn (and its archive deleted) on drop.
#[derive(Debug)]
pub struct ContextOffer {
    shelf: Arc<ContextShelf>,
    token: String,
    file: PathBuf,
    /// URL path, e.g. `/contexts/3f…9a.tar.zst`.
    pub path: String,
    pub packed: Packed,
}

impl Drop for ContextOffer {
    fn drop(&mut self) {
        self.shelf
            .offers
            .lock()
            .expect("context shelf")
            .remove(&self.token);
        let _ = std::fs::remove_file(&self.file);
    }
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

impl ContextShelf {
    /// A shelf keeping its archives in `dir` (created; leftovers of an
    /// earlier run are removed).
    pub fn new(dir: &Path) -> Result<Arc<Self>, HttpError> {
        let err = |source| HttpError::Dir {
            dir: dir.display().to_string(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(err)?;
        }
        std::fs::create_dir_all(dir).map_err(err)?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            offers: Mutex::new(HashMap::new()),
        }))
    }

    /// Pack `context_dir` and offer it under a fresh token until the
    /// returned offer is dropped.
    pub async fn offer(self: &Arc<Self>, context_dir: &Path) -> Result<ContextOffer, HttpError> {
        let token = random_token().map_err(HttpError::Random)?;
        let file = self.dir.join(format!("{token}.tar.zst"));
        let (src, out) = (context_dir.to_owned(), file.clone());
        let packed = match tokio::task::spawn_blocking(move || archive::pack(&src, &out)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&file);
                return Err(e.into());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                return Err(e.into());
            }
        };
        self.offers
            .lock()
            .expect("context shelf")
            .insert(token.clone(), file.clone());
        Ok(ContextOffer {
            shelf: self.clone(),
            path: format!("/contexts/{token}.tar.zst"),
            token,
            file,
            packed,
        })
    }

    fn lookup(&self, token: &str) -> Option<PathBuf> {
        self.offers
            .lock()
            .expect("context shelf")
            .get(token)
            .cloned()
    }

    /// How many contexts are offered right now.
    pub fn len(&self) -> usize {
        self.offers.lock().expect("context shelf").len()
    }

    /// True if nothing is offered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per workspace, the services whose build is queued and not started.
pub type QueueDepths = Box<dyn Fn() -> Vec<(String, usize)> + Send + Sync>;

/// The running receiver as the operational routes see it: nothing until
/// every workspace has been opened (and recovered).
#[derive(Default)]
pub struct Ops {
    queue_depths: OnceLock<QueueDepths>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Ops {
    /// Every workspace of `workspaces` is open: `/readyz` answers 200 and
    /// `/metrics` reads their build queues from `queue_depths`.
    pub fn set_ready<'a>(
        &self,
        workspaces: impl IntoIterator<Item = &'a str>,
        queue_depths: QueueDepths,
    ) {
        for name in workspaces {
            crate::metrics::init_workspace(name);
        }
        let _ = self.queue_depths.set(queue_depths);
    }

    /// Has [`Self::set_ready`] been called?
    pub fn is_ready(&self) -> bool {
        self.queue_depths.get().is_some()
    }

    /// Per workspace, the services whose build is queued and not started.
    fn queue_depths(&self) -> Vec<(String, usize)> {
        self.queue_depths.get().map(|f| f()).unwrap_or_default()
    }
}

/// How many services a [`ServerMsg::Services`] snapshot shows queued.
pub fn queued(snapshot: &ServerMsg) -> Option<usize> {
    let ServerMsg::Services { services, .. } = snapshot else {
        return None;
    };
    Some(
        services
            .iter()
            .filter(|s| s.state == ServiceState::Queued)
            .count(),
    )
}

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub contexts: Arc<ContextShelf>,
    pub ops: Arc<Ops>,
}

impl HttpState {
    /// State offering `contexts`, not ready yet.
    pub fn new(contexts: Arc<ContextShelf>) -> Self {
        Self {
            contexts,
            ops: Arc::default(),
        }
    }
}

/// Every route of the receiver's HTTP server.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/contexts/{file}", get(get_context))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<HttpState>) -> Response {
    if st.ops.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: opening workspaces and recovering their state\n",
        )
            .into_response()
    }
}

async fn metrics(State(st): State<HttpState>) -> Response {
    let depths = st.ops.queue_depths();
    let text = crate::metrics::encode(depths.iter().map(|(w, n)| (w.as_str(), *n)));
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn get_context(State(st): State<HttpState>, UrlPath(file): UrlPath<String>) -> Response {
    let Some(token) = file.strip_suffix(".tar.zst") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(path) = st.contexts.lookup(token) else {
        tracing::info!("request for an unknown or withdrawn build context");
        return StatusCode::NOT_FOUND.into_response();
    };
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open an offered build context");
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    tracing::info!(bytes = len, "serving a build context");
    (
        [
            (header::CONTENT_TYPE, "application/zstd".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(f)),
    )
        .into_response()
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Listen on `addr` and serve [`router`] on `tracker` until `cancel` fires.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<HttpServer, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let app = router(state);
    let task = tracker.spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(HttpServer { addr: bound, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, out[end + 4..].to_vec())
    }

    #[tokio::test]
    async fn serves_an_offer_only_while_it_lasts() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        let shelf = ContextShelf::new(&d.path().join("shelf")).unwrap();
        let cancel = CancellationToken::new();
        let srv = serve(
            "127.0.0.1:0".parse().unwrap(),
            HttpState::new(shelf.clone()),
            &TaskTracker::new(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let offer = shelf.offer(&ctx).await.unwrap();
        assert!(offer.path.starts_with("/contexts/") && offer.path.len() > 40);
        let (code, body) = get(srv.addr, &offer.path).await;
        assert_eq!(code, 200);
        assert_eq!(
            blake3::hash(&body).to_hex().to_string(),
            offer.packed.blake3
        );
        let out = d.path().join("out");
        archive::unpack(&body[..], &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("Dockerfile")).unwrap(),
            "FROM scratch\n"
        );
        assert_eq!(get(srv.addr, "/contexts/nope.tar.zst").await.0, 404);
        let path = offer.path.clone();
        drop(offer);
        assert!(shelf.is_empty());
        assert_eq!(
            get(srv.addr, &path).await.0,
            404,
            "withdrawn after the build"
        );
        assert_eq!(
            std::fs::read_dir(d.path().join("shelf")).unwrap().count(),
            0,
            "archive deleted"
        );
        cancel.cancel();
        srv.task.await.unwrap();
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let d = tempfile::tempdir().unwrap();
        let shelf = ContextShelf::new(&d.path().join("shelf")).unwrap();
        let state = HttpState::new(shelf);
        let ops = state.ops.clone();
        let cancel = CancellationToken::new();
        let srv = serve(
            "127.0.0.1:0".parse().unwrap(),
            state,
            &TaskTracker::new(),
            cancel.clone(),
        )
        .await
        .unwrap();
        assert_eq!(get(srv.addr, "/healthz").await, (200, b"ok\n".to_vec()));
        let (code, body) = get(srv.addr, "/readyz").await;
        assert_eq!(code, 503, "not ready before the workspaces are open");
        assert!(String::from_utf8_lossy(&body).contains("recovering"));
        ops.set_ready([], Box::new(Vec::new));
        assert_eq!(get(srv.addr, "/readyz").await.0, 200);
        crate::metrics::init_workspace("http-test");
        let (code, body) = get(srv.addr, "/metrics").await;
        assert_eq!(code, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("# TYPE devd_receiver_syncs_applied counter")
                && text.contains("devd_receiver_syncs_applied_total{workspace=\"http-test\"} 0"),
            "{text}"
        );
        cancel.cancel();
        srv.task.await.unwrap();
    }
}

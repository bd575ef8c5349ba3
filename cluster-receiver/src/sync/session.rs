//! One laptop connection: authenticate, then receive generations and apply
//! them. Every refusal is a `Rejected` message naming what was wrong; a
//! malformed or oversized frame ends the connection, and nothing of a
//! refused generation reaches the worktree.

use crate::sync::workspace::{CommitHeader, Incoming, Registry, Reject, Workspace};
use devd_protocol::message::{Blob, ClientMsg, INLINE_TOTAL_MAX, MAX_FRAME, ServerMsg};
use devd_protocol::{CodecError, ContentId, ErrorCode, PROTOCOL_VERSION};
use devd_sync::framed::{Framed, FramedError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a peer may stay silent in the middle of a sync.
const IDLE: Duration = Duration::from_secs(60);
/// Changes accepted per generation (bounded memory per connection).
const MAX_CHANGES: usize = 4_000_000;

fn framed_reject(e: &FramedError) -> Reject {
    match e {
        FramedError::Codec(CodecError::TooLarge { .. }) => {
            Reject::new(ErrorCode::TooLarge, e.to_string())
        }
        _ => Reject::new(ErrorCode::Malformed, e.to_string()),
    }
}

async fn reject(io: &mut Framed, generation: Option<u64>, r: Reject) {
    tracing::warn!(code = ?r.code, generation = ?generation, message = %r.message, "rejected");
    let _ = io
        .send(&ServerMsg::Rejected {
            generation,
            code: r.code,
            message: r.message,
        })
        .await;
}

/// Serve one QUIC connection until the peer leaves or `cancel` fires.
pub async fn serve_connection(
    conn: quinn::Connection,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    let remote = conn.remote_address();
    let (send, recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection closed before opening a stream");
            return;
        }
    };
    let mut io = Framed::new(send, recv, MAX_FRAME);
    converse(&mut io, Some(&conn), remote, registry, cancel).await;
    // Let the last message (often a Rejected) reach the peer before the
    // connection goes away: finish the stream and give the peer a moment.
    io.finish().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
}

/// Serve one connection of the TCP + TLS fallback. It carries a single
/// stream that starts like a QUIC connection's first one (`Hello`, then
/// `Welcome`); its first message after that decides what it is: syncs, or
/// what a further QUIC stream would carry (`Subscribe`, `Logs`).
pub async fn serve_tcp_stream(
    mut io: Framed,
    remote: std::net::SocketAddr,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    converse(&mut io, None, remote, registry, cancel).await;
    io.finish().await;
}

async fn converse(
    io: &mut Framed,
    conn: Option<&quinn::Connection>,
    remote: std::net::SocketAddr,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) {
    let ws = match tokio::time::timeout(Duration::from_secs(10), io.recv::<ClientMsg>()).await {
        Ok(Ok(Some(ClientMsg::Hello {
            version,
            workspace,
            token,
        }))) => {
            if version != PROTOCOL_VERSION {
                let m = format!(
                    "protocol version {version} is not supported; this receiver speaks {PROTOCOL_VERSION}: upgrade devd on both sides"
                );
                return reject(io, None, Reject::new(ErrorCode::Version, m)).await;
            }
            let Some(ws) = registry.get(&workspace).cloned() else {
                let m = format!(
                    "no workspace named {workspace:?} on this receiver; check the pairing file"
                );
                return reject(io, None, Reject::new(ErrorCode::UnknownWorkspace, m)).await;
            };
            if !ws.check_token(&token) {
                let m = format!(
                    "wrong token for workspace {workspace:?}; re-pair with the receiver's pairing file"
                );
                return reject(io, None, Reject::new(ErrorCode::Unauthorized, m)).await;
            }
            ws
        }
        Ok(Ok(Some(_))) => {
            let m = "the first message must be Hello";
            return reject(io, None, Reject::new(ErrorCode::Malformed, m)).await;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return reject(io, None, framed_reject(&e)).await,
        Err(_) => {
            return reject(
                io,
                None,
                Reject::new(ErrorCode::Malformed, "no Hello within 10 s"),
            )
            .await;
        }
    };
    tracing::info!(%remote, workspace = %ws.name, "laptop connected");
    let welcome = ServerMsg::Welcome {
        version: PROTOCOL_VERSION,
        receiver: format!("devd-receiver {}", env!("CARGO_PKG_VERSION")),
        acked: ws.acked().await,
        worktree: ws.worktree_path().display().to_string(),
    };
    if io.send(&welcome).await.is_err() {
        return;
    }
    // Further streams of this (now authenticated) QUIC connection carry
    // events and logs.
    let _abort_side = conn.map(|conn| {
        AbortOnDrop(tokio::spawn(side_streams(
            conn.clone(),
            ws.clone(),
            cancel.clone(),
        )))
    });
    let mut incoming: Option<Incoming> = None;
    let mut first = true;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = io.recv::<ClientMsg>() => m,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(FramedError::Read(_)) => break,
            Err(e) => return reject(io, None, framed_reject(&e)).await,
        };
        if std::mem::take(&mut first)
            && matches!(msg, ClientMsg::Subscribe | ClientMsg::Logs { .. })
        {
            // A TCP connection standing in for a further QUIC stream.
            return side_stream(io, &ws, msg, cancel).await;
        }
        match msg {
            ClientMsg::Changes {
                generation,
                changes,
                blobs,
            } => {
                let inc = incoming.get_or_insert_with(|| Incoming {
                    generation,
                    ..Default::default()
                });
                let size: usize = blobs.iter().map(|b| b.data.len()).sum();
                crate::metrics::bytes_received(&ws.name, size);
                if inc.generation != generation {
                    let m = format!(
                        "changes for generation {generation} while {} is open",
                        inc.generation
                    );
                    return reject(io, Some(generation), Reject::new(ErrorCode::Malformed, m))
                        .await;
                }
                if inc.changes.len() + changes.len() > MAX_CHANGES
                    || inc.inline_bytes + size > 16 * INLINE_TOTAL_MAX
                {
                    let m = format!(
                        "generation {generation} exceeds the limits of {MAX_CHANGES} changes or inline blob bytes"
                    );
                    return reject(io, Some(generation), Reject::new(ErrorCode::TooLarge, m)).await;
                }
                inc.inline_bytes += size;
                inc.changes.extend(changes);
                inc.blobs.extend(blobs);
            }
            ClientMsg::Commit {
                generation,
                parent,
                base,
                digest,
                entries,
            } => {
                let inc = incoming.take().unwrap_or_else(|| Incoming {
                    generation,
                    ..Default::default()
                });
                if inc.generation != generation {
                    let m = format!(
                        "commit of generation {generation} while {} is open",
                        inc.generation
                    );
                    return reject(io, Some(generation), Reject::new(ErrorCode::Malformed, m))
                        .await;
                }
                let header = CommitHeader {
                    generation,
                    parent,
                    base,
                    digest,
                    entries,
                };
                match sync(&ws, io, header, inc).await {
                    Ok(msg) => {
                        if io.send(&msg).await.is_err() {
                            break;
                        }
                    }
                    Err(SyncFailure::Rejected(r)) => reject(io, Some(generation), r).await,
                    Err(SyncFailure::Fatal(r)) => {
                        return reject(io, Some(generation), r).await;
                    }
                }
            }
            ClientMsg::BlobChunk { .. }
            | ClientMsg::Hello { .. }
            | ClientMsg::Subscribe
            | ClientMsg::Logs { .. } => {
                let m = "unexpected message outside of a blob request";
                return reject(io, None, Reject::new(ErrorCode::Malformed, m)).await;
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serve the connection's further streams: each starts with `Subscribe`.
async fn side_streams(conn: quinn::Connection, ws: Arc<Workspace>, cancel: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (send, recv) = tokio::select! {
            _ = cancel.cancelled() => break,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => break },
        };
        let ws = ws.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut io = Framed::new(send, recv, MAX_FRAME);
            match tokio::time::timeout(Duration::from_secs(10), io.recv::<ClientMsg>()).await {
                Ok(Ok(Some(msg))) => side_stream(&mut io, &ws, msg, cancel).await,
                Ok(Ok(None)) => {}
                _ => {
                    let m = "a further stream must start with Subscribe or Logs";
                    reject(&mut io, None, Reject::new(ErrorCode::Malformed, m)).await;
                }
            }
            io.finish().await;
        });
    }
    tasks.abort_all();
}

/// Serve a stream that opened with `msg`: events or logs.
async fn side_stream(
    io: &mut Framed,
    ws: &Arc<Workspace>,
    msg: ClientMsg,
    cancel: CancellationToken,
) {
    match msg {
        ClientMsg::Subscribe => stream_events(io, ws, cancel).await,
        ClientMsg::Logs {
            service,
            build,
            follow,
        } => stream_logs(io, ws, &service, build, follow, cancel).await,
        _ => {
            let m = "a further stream must start with Subscribe or Logs";
            reject(io, None, Reject::new(ErrorCode::Malformed, m)).await;
        }
    }
}

/// The state of every service, then each build event as it happens.
async fn stream_events(io: &mut Framed, ws: &Arc<Workspace>, cancel: CancellationToken) {
    let Some(p) = ws.pipeline() else {
        let _ = io
            .send(&ServerMsg::Services {
                services: Vec::new(),
                catalog_error: None,
            })
            .await;
        // Builds are off on this receiver: nothing more will come.
        cancel.cancelled().await;
        return;
    };
    let mut rx = p.subscribe();
    if io.send(&p.snapshot()).await.is_err() {
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => p.snapshot(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if io.send(&msg).await.is_err() {
            return;
        }
    }
}

/// A service's logs: its last build's log, or what its container prints.
async fn stream_logs(
    io: &mut Framed,
    ws: &Arc<Workspace>,
    service: &str,
    build: bool,
    follow: bool,
    cancel: CancellationToken,
) {
    let end = |error: Option<String>| ServerMsg::LogEnd { error };
    let Some(p) = ws.pipeline() else {
        let _ = io
            .send(&end(Some("builds are off on this receiver".into())))
            .await;
        return;
    };
    let Some(svc) = p.service(service) else {
        let m = format!(
            "no service named {service:?}; devd.toml declares: {}",
            p.service_names().join(", ")
        );
        let _ = io.send(&end(Some(m))).await;
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let producer = if build {
        let path = p.build_log(service);
        let name = service.to_owned();
        tokio::spawn(async move { tail_file(path, &name, follow, tx).await })
    } else {
        let backend = p.backend().clone();
        let workspace = ws.name.clone();
        tokio::spawn(async move { backend.logs(&workspace, &svc, follow, tx).await })
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            // The laptop closed its side: stop following.
            m = io.recv::<ClientMsg>() => if !matches!(m, Ok(Some(_))) { break },
            chunk = rx.recv() => match chunk {
                Some(data) => if io.send(&ServerMsg::Log { data }).await.is_err() { return },
                None => break,
            },
        }
    }
    drop(rx);
    let error = match producer.await {
        Ok(Ok(())) => None,
        Ok(Err(f)) => Some(f.error),
        Err(e) => Some(format!("log task failed: {e}")),
    };
    let _ = io.send(&end(error)).await;
}

/// Send a log file (and, with `follow`, what is appended to it; a file
/// truncated by a new build is read again from the start).
async fn tail_file(
    path: Option<std::path::PathBuf>,
    service: &str,
    follow: bool,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), crate::builder::Failure> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Some(path) = path else {
        return Err(crate::builder::Failure::new(format!(
            "{service} has no build log yet: nothing was built for it on this receiver"
        )));
    };
    let failure = |e: std::io::Error| {
        crate::builder::Failure::new(format!("reading {}: {e}", path.display()))
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(failure)?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = f.read(&mut buf).await.map_err(failure)?;
        if n > 0 {
            pos += n as u64;
            if out.send(buf[..n].to_vec()).await.is_err() {
                return Ok(());
            }
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            _ = out.closed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let len = tokio::fs::metadata(&path).await.map_err(failure)?.len();
        if len < pos {
            f.seek(std::io::SeekFrom::Start(0)).await.map_err(failure)?;
            pos = 0;
        }
    }
}

enum SyncFailure {
    /// Refuse this generation; the connection stays usable.
    Rejected(Reject),
    /// Refuse and close: the stream is in an unknown state.
    Fatal(Reject),
}

async fn sync(
    ws: &Arc<Workspace>,
    io: &mut Framed,
    header: CommitHeader,
    inc: Incoming,
) -> Result<ServerMsg, SyncFailure> {
    let mut inner = ws.lock().await;
    let prepared = ws
        .prepare(&mut inner, header, inc)
        .await
        .map_err(SyncFailure::Rejected)?;
    if !prepared.missing.is_empty() {
        let need = ServerMsg::Need {
            generation: header.generation,
            ids: prepared.missing.clone(),
        };
        io.send(&need)
            .await
            .map_err(|e| SyncFailure::Fatal(framed_reject(&e)))?;
        receive_blobs(ws, io, &prepared.missing).await?;
    }
    let applied = ws
        .finish(&mut inner, prepared)
        .await
        .map_err(SyncFailure::Rejected)?;
    crate::metrics::sync_applied(&ws.name, applied.apply_ms);
    if let Some(p) = ws.pipeline() {
        // Still under the workspace lock: the worktree is at this generation.
        p.on_applied(applied.ack.generation, &applied.changed);
    }
    tracing::info!(workspace = %ws.name, generation = applied.ack.generation, files = applied.files_written, ms = applied.apply_ms, "applied");
    Ok(ServerMsg::Applied {
        ack: applied.ack,
        files_written: applied.files_written,
        apply_ms: applied.apply_ms,
    })
}

/// Receive the chunks of every blob in `wanted`.
async fn receive_blobs(
    ws: &Arc<Workspace>,
    io: &mut Framed,
    wanted: &[ContentId],
) -> Result<(), SyncFailure> {
    let mut left: HashMap<ContentId, Option<Blob>> = wanted.iter().map(|id| (*id, None)).collect();
    let mut done = 0;
    while done < wanted.len() {
        let msg = match tokio::time::timeout(IDLE, io.recv::<ClientMsg>()).await {
            Err(_) => {
                return Err(SyncFailure::Fatal(Reject::new(
                    ErrorCode::Malformed,
                    "blob transfer stalled",
                )));
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(SyncFailure::Fatal(Reject::new(
                    ErrorCode::Malformed,
                    "stream ended",
                )));
            }
            Ok(Err(e)) => return Err(SyncFailure::Fatal(framed_reject(&e))),
        };
        let ClientMsg::BlobChunk {
            id,
            encoding,
            raw_len,
            total,
            offset,
            data,
        } = msg
        else {
            return Err(SyncFailure::Fatal(Reject::new(
                ErrorCode::Malformed,
                "expected blob chunks",
            )));
        };
        let Some(slot) = left.get_mut(&id) else {
            return Err(SyncFailure::Fatal(Reject::new(
                ErrorCode::Malformed,
                format!("blob {id} was not requested"),
            )));
        };
        if total > 2 * crate::sync::workspace::MAX_BLOB
            || raw_len > crate::sync::workspace::MAX_BLOB
        {
            return Err(SyncFailure::Fatal(Reject::new(
                ErrorCode::TooLarge,
                format!("blob {id} is too large"),
            )));
        }
        let blob = slot.get_or_insert_with(|| Blob {
            id,
            encoding,
            raw_len,
            data: Vec::new(),
        });
        if offset != blob.data.len() as u64 || blob.encoding != encoding || blob.raw_len != raw_len
        {
            return Err(SyncFailure::Fatal(Reject::new(
                ErrorCode::Malformed,
                format!("blob {id}: chunk out of order"),
            )));
        }
        blob.data.extend_from_slice(&data);
        crate::metrics::bytes_received(&ws.name, data.len());
        if blob.data.len() as u64 > total {
            return Err(SyncFailure::Fatal(Reject::new(
                ErrorCode::Malformed,
                format!("blob {id}: more bytes than announced"),
            )));
        }
        if blob.data.len() as u64 == total {
            let blob = slot.take().expect("blob present");
            left.remove(&id);
            ws.store_blob(blob).await.map_err(SyncFailure::Fatal)?;
            done += 1;
        }
    }
    Ok(())
}

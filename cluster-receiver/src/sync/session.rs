//! One laptop connection: the driver of the receiver end of the sync
//! exchange ([`devd_protocol::session::Receiver`]). It reads a frame, feeds
//! it to the machine, writes what the machine polls, and does the I/O the
//! machine's events ask for (authenticate, prepare, store a blob, apply);
//! every rule of the exchange (order, limits, deadlines, which refusal ends
//! the connection) lives in the machine. Nothing of a refused generation
//! reaches the worktree. Further streams carry build events and logs.

use crate::sync::gate::{Admission, Slot};
use crate::sync::workspace::{Inner, Prepared, Registry, Spool, Workspace};
use devd_protocol::ErrorCode;
use devd_protocol::message::{ClientMsg, MAX_FRAME, ServerMsg};
use devd_protocol::session::{
    Applied, AuthAnswer, ClaimAnswer, Limits, Receiver, ReceiverEvent, Reject,
};
use devd_sync::framed::{Framed, FramedError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// Serve one QUIC connection until the peer leaves or `cancel` fires. It
/// must open its stream and authenticate before `admission` expires.
pub async fn serve_connection(
    conn: quinn::Connection,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    admission: Admission,
) {
    let remote = conn.remote_address();
    let stream = tokio::select! {
        s = conn.accept_bi() => s,
        () = admission.expired() => {
            tracing::debug!(%remote, "no stream opened in time; closing");
            conn.close(0u32.into(), b"authenticate first");
            return;
        }
    };
    let (send, recv) = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection closed before opening a stream");
            return;
        }
    };
    let mut io = Framed::new(send, recv, MAX_FRAME);
    converse(
        &mut io,
        Some(&conn),
        remote,
        registry,
        cancel.clone(),
        admission,
    )
    .await;
    // Let the last message (often a Rejected) reach the peer before the
    // connection goes away: finish the stream, stop reading (so that a
    // laptop still uploading learns at once, and reads the refusal rather
    // than wait on flow control) and give the peer a moment.
    io.finish().await;
    io.stop_reading();
    // Not when the receiver is shutting down (an embedded receiver with its
    // daemon, `devd stop`): the endpoint closes every connection anyway,
    // and waiting here held the daemon's exit for the whole 2 s.
    if !cancel.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
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
    admission: Admission,
) {
    converse(&mut io, None, remote, registry, cancel.clone(), admission).await;
    io.finish().await;
    // A laptop still uploading when the session ended reads the refusal
    // only if its bytes are taken until it closes (a close with unread
    // data would reset the connection).
    if !cancel.is_cancelled() {
        io.drain(Duration::from_secs(2)).await;
    }
}

/// The machine's clock: tokio's, so that paused time in tests applies.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn converse(
    io: &mut Framed,
    conn: Option<&quinn::Connection>,
    remote: std::net::SocketAddr,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    admission: Admission,
) {
    let limits = Limits {
        max_blob: crate::sync::workspace::MAX_BLOB,
        ..Limits::default()
    };
    let mut m = Receiver::with_limits(limits, now());
    // Until its Hello is accepted the connection is pending: evicted by a
    // flood from its source, or closed at the gate's deadline.
    let expiry = admission.expiry();
    let mut admission = Some(admission);
    let authenticated = tokio::select! {
        a = authenticate(io, &mut m, &registry, &cancel, &mut admission) => a,
        () = expiry.expired() => {
            tracing::debug!(%remote, "not authenticated in time; closing");
            None
        }
    };
    let Some((ws, _slot)) = authenticated else {
        return;
    };
    tracing::info!(%remote, workspace = %ws.name, "laptop connected");
    // Further streams of this (now authenticated) QUIC connection carry
    // events and logs.
    let _abort_side = conn.map(|conn| {
        AbortOnDrop(tokio::spawn(side_streams(
            conn.clone(),
            ws.clone(),
            cancel.clone(),
        )))
    });
    // The workspace stays locked from `Prepare` to `Finish` (or a refusal),
    // so syncs of one workspace never interleave.
    let mut held: Option<(tokio::sync::MutexGuard<'_, Inner>, Prepared)> = None;
    // This connection's claim as the workspace's writer, once made.
    let mut grant: Option<crate::sync::writer::Grant> = None;
    // The blob whose chunks are arriving, on disk.
    let mut spool: Option<Spool> = None;
    loop {
        if !flush(io, &mut m).await {
            return;
        }
        // One event at a time: what answering it queued is written before
        // the next event or frame.
        if let Some(event) = m.poll_event() {
            let fed = match event {
                ReceiverEvent::SideStream(first) => {
                    // A TCP connection standing in for a further QUIC stream.
                    return side_stream(io, &ws, first, cancel).await;
                }
                ReceiverEvent::Prepare { header, .. }
                    if let Err(r) = ws.writer.may_write(grant.as_ref()) =>
                {
                    tracing::warn!(workspace = %ws.name, generation = header.generation, "refused: not the workspace's writer");
                    m.handle_prepared(Err(r), now())
                }
                ReceiverEvent::Prepare { header, incoming } => {
                    let mut guard = ws.lock().await;
                    match ws.prepare(&mut guard, header, incoming).await {
                        Ok(prepared) => {
                            let missing = prepared.missing.clone();
                            held = Some((guard, prepared));
                            m.handle_prepared(Ok(missing), now())
                        }
                        Err(r) => m.handle_prepared(Err(r), now()),
                    }
                }
                ReceiverEvent::StoreChunk(part) => {
                    let stored = ws.store_chunk(&mut spool, part).await;
                    m.handle_chunk_stored(stored, now())
                }
                ReceiverEvent::Finish { generation } => {
                    let Some((mut guard, prepared)) = held.take() else {
                        return driver_bug(format!("generation {generation} was never prepared"));
                    };
                    let applied = ws.finish(&mut guard, prepared).await;
                    if let Ok(a) = &applied {
                        crate::metrics::sync_applied(&ws.name, a.apply_ms);
                        if let Some(p) = ws.pipeline() {
                            // Still under the workspace lock: the worktree is
                            // at this generation.
                            p.on_applied(a.ack.generation, &a.changed);
                        }
                        tracing::info!(workspace = %ws.name, generation = a.ack.generation, files = a.files_written, ms = a.apply_ms, "applied");
                    }
                    drop(guard);
                    m.handle_finished(applied.map(|a| Applied {
                        ack: a.ack,
                        files_written: a.files_written,
                        apply_ms: a.apply_ms,
                    }))
                }
                ReceiverEvent::Claim { writer, take_over } => {
                    let now_secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    match ws.writer.claim(&writer, take_over, now_secs) {
                        Ok(g) => {
                            tracing::info!(workspace = %ws.name, %writer, previous = ?g.previous, "writer claimed the workspace");
                            let answer = ClaimAnswer::Granted {
                                since: g.since,
                                previous: g.previous.clone(),
                            };
                            grant = Some(g);
                            m.handle_claim(answer)
                        }
                        Err(r) => m.handle_claim(ClaimAnswer::Refused(r)),
                    }
                }
                ReceiverEvent::Abandoned { generation } => {
                    // Prepared only, nothing written: forget it (and a blob
                    // half spooled for it) and unlock the workspace.
                    tracing::info!(workspace = %ws.name, generation, "the laptop abandoned a generation (a file changed while it was being sent)");
                    held = None;
                    spool = None;
                    Ok(())
                }
                ReceiverEvent::Release => {
                    // The daemon stops cleanly: another may claim the
                    // workspace now. Ending the connection is the answer.
                    if let Some(g) = grant.take() {
                        ws.writer.release(&g);
                    }
                    tracing::info!(%remote, workspace = %ws.name, "the writer stopped and released the workspace");
                    return;
                }
                ReceiverEvent::Authenticate { .. } => {
                    return driver_bug("a second Authenticate".into());
                }
            };
            if let Err(e) = fed {
                return driver_bug(e.to_string());
            }
            continue;
        }
        // Taken over by another writer: between generations, the
        // connection ends (the daemon's reconnect learns why).
        let taken = grant.as_ref().map(|g| g.taken.clone());
        let superseded = grant.as_ref().map(|g| g.superseded.clone());
        let reading = read(io, &mut m, &cancel, Some(&ws.name), taken);
        let superseded = async {
            match superseded {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = reading => if !alive {
                return;
            },
            () = superseded => {
                // Its daemon reconnected: this connection is dead. What it
                // prepared goes (dropping `held` unlocks the workspace).
                tracing::info!(%remote, workspace = %ws.name, "connection superseded by its daemon's new one");
                return;
            }
        }
    }
}

/// Run the machine up to `Hello` and its check: the workspace and the
/// connection's slot, if the laptop was welcomed (the `Welcome` is queued,
/// not yet written). Good credentials turn the `admission` into a slot.
async fn authenticate(
    io: &mut Framed,
    m: &mut Receiver,
    registry: &Registry,
    cancel: &CancellationToken,
    admission: &mut Option<Admission>,
) -> Option<(Arc<Workspace>, Slot)> {
    loop {
        if !flush(io, m).await {
            return None;
        }
        if let Some(event) = m.poll_event() {
            let ReceiverEvent::Authenticate { workspace, token } = event else {
                driver_bug(format!("{event:?} before authentication"));
                return None;
            };
            let ws = registry.get(&workspace).cloned();
            let mut slot = None;
            let answer = match &ws {
                None => AuthAnswer::UnknownWorkspace,
                Some(ws) if !ws.check_token(&token) => AuthAnswer::WrongToken,
                Some(ws) => match admission.take().map(Admission::authenticate) {
                    Some(Ok(s)) => {
                        slot = Some(s);
                        AuthAnswer::Accepted {
                            receiver: format!("devd-receiver {}", env!("CARGO_PKG_VERSION")),
                            acked: ws.acked(),
                            worktree: ws.worktree_path().display().to_string(),
                        }
                    }
                    Some(Err(busy)) => AuthAnswer::Busy {
                        message: busy.to_string(),
                    },
                    None => {
                        driver_bug("a second Hello to authenticate".into());
                        return None;
                    }
                },
            };
            if let Err(e) = m.handle_auth(answer) {
                driver_bug(e.to_string());
                return None;
            }
            if let (Some(ws), Some(slot)) = (ws, slot) {
                return Some((ws, slot));
            }
            continue;
        }
        if !read(io, m, cancel, None, None).await {
            return None;
        }
    }
}

/// Write every frame the machine has queued (logging refusals). False when
/// the session is over: the machine closed it, or the stream broke.
async fn flush(io: &mut Framed, m: &mut Receiver) -> bool {
    while let Some(msg) = m.poll_transmit() {
        if let ServerMsg::Rejected {
            generation,
            code,
            message,
        } = &msg
        {
            tracing::warn!(?code, ?generation, %message, "rejected");
        }
        if io.send(&msg).await.is_err() {
            return false;
        }
    }
    !m.is_closed()
}

/// Wait for the next frame and feed it to the machine, or tell it that its
/// deadline passed. False when `cancel` fired between generations (a
/// drain lets a generation in progress finish) or the driver misused the
/// machine.
async fn read(
    io: &mut Framed,
    m: &mut Receiver,
    cancel: &CancellationToken,
    workspace: Option<&str>,
    taken: Option<CancellationToken>,
) -> bool {
    let deadline = m.poll_timeout().map(Instant::from_std);
    let idle = m.generation().is_none();
    let taken = async {
        match taken {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let msg = tokio::select! {
        _ = cancel.cancelled(), if idle => return false,
        () = taken, if idle => return false,
        _ = until(deadline) => {
            m.handle_timeout(now());
            return true;
        }
        msg = io.recv::<ClientMsg>() => msg,
    };
    let fed = match msg {
        Ok(Some(msg)) => {
            if let Some(w) = workspace {
                let bytes = match &msg {
                    ClientMsg::Changes { blobs, .. } => blobs.iter().map(|b| b.data.len()).sum(),
                    ClientMsg::BlobChunk { data, .. } => data.len(),
                    _ => 0,
                };
                crate::metrics::bytes_received(w, bytes);
            }
            m.handle_message(msg, now())
        }
        Ok(None) => {
            m.handle_stream_end();
            Ok(())
        }
        Err(e @ FramedError::Read(_)) => {
            m.handle_read_failed(e.to_string());
            Ok(())
        }
        Err(FramedError::Codec(e)) => {
            m.handle_bad_frame(Reject::from(&e));
            Ok(())
        }
        Err(e) => {
            m.handle_bad_frame(Reject::new(ErrorCode::Malformed, e.to_string()));
            Ok(())
        }
    };
    if let Err(e) = fed {
        driver_bug(e.to_string());
        return false;
    }
    true
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The driver called the machine at the wrong moment: a bug here, not the
/// peer's doing. The session ends.
fn driver_bug(what: String) {
    tracing::error!(%what, "session driver bug; closing the connection");
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
                    let m =
                        "a further stream must start with Subscribe, Logs, Retry, Remove or Exec";
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
        ClientMsg::Retry { services } => {
            let answer = match ws.pipeline() {
                None => Err("builds are off on this receiver".to_string()),
                Some(p) => p.retry(&services),
            };
            answer_done(io, answer).await;
        }
        ClientMsg::Exec {
            service,
            command,
            tty,
        } => super::exec::serve(io, ws, &service, command, tty, cancel).await,
        ClientMsg::Secrets { secrets } => {
            let answer = match ws.pipeline() {
                None => Ok(Vec::new()),
                Some(p) => p.set_secrets(secrets),
            };
            answer_done(io, answer).await;
        }
        ClientMsg::Remove => {
            let answer = match ws.pipeline() {
                None => Ok(Vec::new()),
                Some(p) => p.remove_all().await,
            };
            answer_done(io, answer).await;
        }
        _ => {
            let m =
                "a further stream must start with Subscribe, Logs, Retry, Remove, Exec or Secrets";
            reject(io, None, Reject::new(ErrorCode::Malformed, m)).await;
        }
    }
}

/// The answer to a `Retry` or `Remove`: `Done`, or `Rejected` with why.
async fn answer_done(io: &mut Framed, answer: Result<Vec<String>, String>) {
    let msg = match answer {
        Ok(items) => ServerMsg::Done { items },
        Err(message) => ServerMsg::Rejected {
            generation: None,
            code: ErrorCode::Internal,
            message,
        },
    };
    let _ = io.send(&msg).await;
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
    // The snapshot, then where each live-updated service stands (the
    // snapshot's statuses do not carry the live difference).
    let snapshot = |p: &crate::build::pipeline::Pipeline| {
        std::iter::once(p.snapshot())
            .chain(p.stack_report())
            .chain(p.live_reports())
            .collect::<Vec<_>>()
    };
    for m in snapshot(p) {
        if io.send(&m).await.is_err() {
            return;
        }
    }
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => m,
        };
        let msgs = match msg {
            Ok(m) => vec![m],
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => snapshot(p),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for m in msgs {
            if io.send(&m).await.is_err() {
                return;
            }
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
        // What the container prints, and what the live updates' commands
        // printed (marked `[devd live]`), interleaved as they come.
        let backend = p.backend().clone();
        let workspace = ws.name.clone();
        let live = p.live_log(service).map(|path| {
            let (tx, name) = (tx.clone(), service.to_owned());
            tokio::spawn(async move { tail_file(Some(path), &name, follow, tx).await })
        });
        tokio::spawn(async move {
            let container = backend.logs(&workspace, &svc, follow, tx).await;
            if let Some(live) = live {
                // The container's log ended (not following, or the laptop
                // went away): the live log's tail ends with it.
                let _ = live.await;
            }
            container
        })
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
) -> Result<(), crate::build::backend::Failure> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Some(path) = path else {
        return Err(crate::build::backend::Failure::new(format!(
            "{service} has no build log yet: nothing was built for it on this receiver"
        )));
    };
    let failure = |e: std::io::Error| {
        crate::build::backend::Failure::new(format!("reading {}: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::compress::Encoding;
    use devd_protocol::message::{Base, Blob, CHUNK};
    use devd_protocol::session::{Request, Sender, SenderEvent, Snapshot, SyncReport};
    use devd_protocol::{ContentId, Entry, Overlay, RelPath};
    use std::collections::HashMap;

    /// The sender machine on the laptop's end of `io`, with the files of
    /// `files` on its "disk", until the sync of their overlay ends.
    async fn sync(io: &mut Framed, token: &str, files: &HashMap<RelPath, Vec<u8>>) -> SyncReport {
        let now = std::time::Instant::now;
        let overlay: Overlay = files
            .iter()
            .map(|(p, d)| {
                let id = ContentId::of(d);
                (
                    p.clone(),
                    Entry::File {
                        id,
                        exec: false,
                        mode: None,
                    },
                )
            })
            .collect();
        let by_id: HashMap<ContentId, &Vec<u8>> =
            files.values().map(|d| (ContentId::of(d), d)).collect();
        let mut s = Sender::new("alice", token);
        s.connect();
        loop {
            while let Some(frame) = s.poll_transmit() {
                io.send(&frame).await.expect("write to the receiver");
            }
            if let Some(event) = s.poll_event() {
                match event {
                    SenderEvent::Connected { .. } => {
                        let snap = Snapshot::new(Base::Uploaded, Arc::new(overlay.clone()));
                        s.start_sync(snap, now()).unwrap();
                    }
                    SenderEvent::Synced(r) => return r,
                    SenderEvent::Failed(e) | SenderEvent::ConnectFailed(e) => {
                        panic!("sync failed: {e}")
                    }
                    _ => {}
                }
                continue;
            }
            match s.poll_request() {
                Some(Request::Measure(paths)) => {
                    let sizes = paths.iter().map(|p| Some(files[p].len() as u64)).collect();
                    s.handle_sizes(sizes, now()).unwrap();
                }
                Some(Request::Encode(items)) => {
                    let blobs = items
                        .iter()
                        .map(|i| Blob {
                            id: i.id,
                            encoding: Encoding::Raw,
                            raw_len: by_id[&i.id].len() as u64,
                            data: by_id[&i.id].clone(),
                        })
                        .collect();
                    s.handle_encoded(Ok(blobs), now()).unwrap();
                }
                None => {
                    let msg = io
                        .recv::<ServerMsg>()
                        .await
                        .expect("read from the receiver");
                    let msg = msg.expect("the receiver ended the stream");
                    s.handle_message(msg, now()).unwrap();
                }
            }
        }
    }

    /// The driver end to end over an in-memory stream (the TCP fallback's
    /// entry point): Welcome, a small blob inline, a large one asked for
    /// with Need and sent in chunks, Applied, and the files in the
    /// worktree. Every answer the driver queues reaches the laptop.
    #[tokio::test]
    async fn a_sync_is_applied_and_acknowledged_over_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "alice", "file:///nowhere.git", None).unwrap();
        let token = ws.token().to_owned();
        let worktree = ws.worktree_path().to_owned();
        let registry = Arc::new(Registry::from([("alice".to_owned(), Arc::new(ws))]));
        let (laptop, receiver) = tokio::io::duplex(256 << 10);
        let (rr, rw) = tokio::io::split(receiver);
        let (lr, lw) = tokio::io::split(laptop);
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_tcp_stream(
            Framed::new(rw, rr, MAX_FRAME),
            "127.0.0.1:9".parse().unwrap(),
            registry,
            cancel,
            crate::sync::gate::Gate::new(1).admit("127.0.0.1:9".parse().unwrap()),
        ));
        let mut io = Framed::new(lw, lr, MAX_FRAME);
        // Larger than a chunk, and pseudo-random so no size trick applies.
        let big: Vec<u8> = (0..CHUNK as u32 + 4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let files = HashMap::from([
            (RelPath::new("a.txt").unwrap(), b"hello\n".to_vec()),
            (RelPath::new("data/big.bin").unwrap(), big.clone()),
        ]);
        let report = sync(&mut io, &token, &files).await;
        assert_eq!(
            (
                report.generation,
                report.blobs_inline,
                report.blobs_requested
            ),
            (1, 1, 1)
        );
        assert_eq!(report.files_written, 2);
        assert_eq!(std::fs::read(worktree.join("a.txt")).unwrap(), b"hello\n");
        assert_eq!(std::fs::read(worktree.join("data/big.bin")).unwrap(), big);
        // The laptop leaves: the session ends.
        io.finish().await;
        drop(io);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the session ends when the laptop leaves")
            .unwrap();
    }
}

//! The laptop's side of a sync: one connection to the receiver, the last
//! acknowledged generation, and the exchange that turns the receiver's
//! overlay into the laptop's (delta + inline blobs, `Need`, chunks,
//! `Applied`). Resumes from what the receiver acknowledged after a
//! reconnect; heals a divergence with a full resend (which still sends only
//! blobs the receiver lacks).

use crate::repo::Repo;
use crate::transport;
use devd_protocol::compress::{self, BlobRef};
use devd_protocol::message::{
    Ack, Base, Blob, CHANGES_PER_FRAME, CHUNK, ClientMsg, INLINE_BLOB_MAX, INLINE_TOTAL_MAX,
    ServerMsg,
};
use devd_protocol::tree::{BaseTree, EntryKind};
use devd_protocol::{ContentId, Digest, Entry, ErrorCode, Overlay, PROTOCOL_VERSION, RelPath};
use devd_sync::blob_store::BlobStore;
use devd_sync::framed::{Framed, FramedError};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blobs up to this size are kept on the laptop as patch references.
const REFERENCE_MAX: usize = 16 << 20;

/// Where and how to reach the receiver.
#[derive(Clone, Debug)]
pub struct Target {
    pub address: String,
    pub fingerprint: String,
    pub workspace: String,
    pub token: String,
    /// QUIC, TCP + TLS, or whichever gets through.
    pub transport: transport::TransportMode,
}

/// A scanned state to send.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub base: Base,
    pub tree: Arc<BaseTree>,
    pub overlay: Arc<Overlay>,
    pub digest: Digest,
    /// When the change that led to this snapshot was noticed.
    pub noticed: Instant,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Connect(String),
    #[error("receiver refused ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("receiver cannot fetch the base commit: {0}")]
    BaseUnavailable(String),
    #[error("connection to the receiver lost: {0}")]
    Lost(String),
    #[error("{0} changed while it was being sent; rescanning")]
    Changed(RelPath),
    #[error("unexpected answer from the receiver: {0}")]
    Protocol(String),
}

impl From<FramedError> for SyncError {
    fn from(e: FramedError) -> Self {
        SyncError::Lost(e.to_string())
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SyncReport {
    pub generation: u64,
    pub overlay_digest: String,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency_ms: u64,
    pub blobs_inline: u64,
    pub blobs_requested: u64,
    pub full: bool,
}

#[derive(Clone, Debug)]
struct Known {
    ack: Ack,
    overlay: Arc<Overlay>,
}

struct Connected {
    conn: transport::Link,
    io: Framed,
}

/// The connection and the acknowledged state.
pub struct Uplink {
    target: Target,
    repo: Arc<Repo>,
    workdir: PathBuf,
    refs: BlobStore,
    conn: Option<Connected>,
    acked: Option<Known>,
    in_flight: Option<Known>,
    /// What the receiver reported as applied when we connected.
    remote_ack: Option<Ack>,
    /// The receiver's worktree path, from its Welcome.
    pub receiver_worktree: Option<String>,
    /// Where build events go (`None` message: the event stream ended).
    events: Option<tokio::sync::mpsc::UnboundedSender<Option<ServerMsg>>>,
    /// False once the current connection's event stream ended.
    events_alive: Arc<std::sync::atomic::AtomicBool>,
    /// The current connection, for further streams (`devd logs`).
    live: Arc<std::sync::Mutex<Option<transport::Link>>>,
    /// Where the progress of large uploads goes.
    progress: Option<crate::progress::Reporter>,
}

/// Reads and encodes blobs; shareable across threads.
struct Encoder<'a> {
    refs: &'a BlobStore,
    repo: &'a Repo,
    workdir: &'a std::path::Path,
    acked: Option<&'a Overlay>,
}

impl Encoder<'_> {
    /// The reference a patch of `rel` may use: the previous overlay version
    /// (kept locally) or the base version.
    fn reference(&self, rel: &RelPath, tree: &BaseTree, base: Base) -> Option<(BlobRef, Vec<u8>)> {
        if let Some(o) = self.acked
            && let Some(Entry::File { id, .. }) = o.get(rel)
            && let Ok(data) = self.refs.get(id)
        {
            return Some((BlobRef::Overlay(*id), data));
        }
        if let Base::Commit(_) = base
            && let Some(t) = tree.get(rel)
            && t.kind != EntryKind::Symlink
            && let Ok(data) = self.repo.blob(t.oid)
        {
            return Some((BlobRef::Base(t.oid), data));
        }
        None
    }

    fn read(&self, rel: &RelPath, id: &ContentId) -> Result<Vec<u8>, SyncError> {
        let data = std::fs::read(self.workdir.join(rel.as_str()))
            .map_err(|_| SyncError::Changed(rel.clone()))?;
        if ContentId::of(&data) != *id {
            return Err(SyncError::Changed(rel.clone()));
        }
        Ok(data)
    }

    fn encode(&self, rel: &RelPath, id: &ContentId, snap: &Snapshot) -> Result<Blob, SyncError> {
        let data = self.read(rel, id)?;
        let reference = self.reference(rel, &snap.tree, snap.base);
        let (encoding, bytes) =
            compress::encode(&data, reference.as_ref().map(|(r, d)| (*r, d.as_slice())));
        if data.len() <= REFERENCE_MAX
            && let Err(e) = self.refs.put(id, &data)
        {
            tracing::debug!(error = %e, "cannot keep a patch reference");
        }
        Ok(Blob {
            id: *id,
            encoding,
            raw_len: data.len() as u64,
            data: bytes,
        })
    }

    /// Encode several blobs on a few threads (compression dominates), in
    /// the order given.
    fn encode_many(
        &self,
        items: &[(RelPath, ContentId)],
        snap: &Snapshot,
    ) -> Vec<Result<Blob, SyncError>> {
        if items.len() < 4 {
            return items
                .iter()
                .map(|(rel, id)| self.encode(rel, id, snap))
                .collect();
        }
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8);
        let chunk = items.len().div_ceil(threads);
        tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = items
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|(rel, id)| self.encode(rel, id, snap))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("encoder thread"))
                    .collect()
            })
        })
    }
}

fn rejected(code: ErrorCode, message: String) -> SyncError {
    if code == ErrorCode::BaseUnavailable {
        SyncError::BaseUnavailable(message)
    } else {
        SyncError::Rejected { code, message }
    }
}

impl Uplink {
    /// An uplink; `state_dir` keeps the patch references.
    pub fn new(
        target: Target,
        repo: Arc<Repo>,
        state_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let refs = BlobStore::open(&state_dir.join("sent-blobs")).map_err(std::io::Error::other)?;
        let workdir = repo.workdir().to_owned();
        Ok(Self {
            target,
            repo,
            workdir,
            refs,
            conn: None,
            acked: None,
            in_flight: None,
            remote_ack: None,
            receiver_worktree: None,
            events: None,
            events_alive: Arc::default(),
            live: Arc::default(),
            progress: None,
        })
    }

    /// Report the progress of large uploads (many or large blobs) to `r`.
    pub fn with_progress(mut self, r: crate::progress::Reporter) -> Self {
        self.progress = Some(r);
        self
    }

    /// Subscribe to build events on every connection; they are forwarded
    /// to `tx`, followed by `None` when the connection's stream ends.
    pub fn with_events(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<Option<ServerMsg>>,
    ) -> Self {
        self.events = Some(tx);
        self
    }

    /// The current connection, shared with whoever opens further streams.
    pub fn live_connection(&self) -> Arc<std::sync::Mutex<Option<transport::Link>>> {
        self.live.clone()
    }

    /// Connect (and subscribe) unless connected with a live event stream.
    pub async fn ensure_connected(&mut self) -> Result<(), SyncError> {
        use std::sync::atomic::Ordering;
        if self.connected() && (self.events.is_none() || self.events_alive.load(Ordering::SeqCst)) {
            return Ok(());
        }
        // The event stream ended: the receiver is going away (or went).
        self.disconnect();
        self.connect().await
    }

    /// Open the event stream on a fresh connection.
    async fn subscribe(&mut self, conn: &transport::Link) {
        let Some(tx) = self.events.clone() else {
            return;
        };
        let mut io = match conn.open_side().await {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the build event stream");
                return;
            }
        };
        if let Err(e) = io.send(&ClientMsg::Subscribe).await {
            tracing::warn!(error = %e, "cannot subscribe to build events");
            return;
        }
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        self.events_alive = alive.clone();
        let link = conn.clone();
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    // On TCP the event stream is a connection of its own:
                    // it ends with the link.
                    _ = link.closed() => break,
                    m = io.recv::<ServerMsg>() => m,
                };
                let Ok(Some(m)) = m else { break };
                if tx.send(Some(m)).is_err() {
                    return;
                }
            }
            alive.store(false, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send(None);
        });
    }

    /// The worktree being synced.
    pub fn workdir(&self) -> &std::path::Path {
        &self.workdir
    }

    /// The receiver's address.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `"quic"` or `"tcp"` while connected.
    pub fn transport(&self) -> Option<&'static str> {
        self.conn
            .as_ref()
            .filter(|c| !c.conn.is_closed())
            .map(|c| c.conn.transport())
    }

    /// True while connected.
    pub fn connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.conn.is_closed())
    }

    /// The last acknowledged generation.
    pub fn acked(&self) -> Option<Ack> {
        self.acked.as_ref().map(|k| k.ack)
    }

    /// Drop the connection (it is re-established on the next sync).
    pub fn disconnect(&mut self) {
        *self.live.lock().expect("live connection") = None;
        if let Some(c) = self.conn.take() {
            c.conn.close();
        }
    }

    async fn connect(&mut self) -> Result<(), SyncError> {
        if self.connected() {
            return Ok(());
        }
        self.conn = None;
        let addr = transport::resolve(&self.target.address)
            .await
            .map_err(|e| SyncError::Connect(e.to_string()))?;
        let credentials = transport::Credentials {
            workspace: self.target.workspace.clone(),
            token: self.target.token.clone(),
        };
        let (conn, mut io) = transport::connect_link(
            addr,
            &self.target.fingerprint,
            self.target.transport,
            credentials,
        )
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?;
        io.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            workspace: self.target.workspace.clone(),
            token: self.target.token.clone(),
        })
        .await?;
        match io.recv::<ServerMsg>().await? {
            Some(ServerMsg::Welcome {
                acked,
                worktree,
                receiver,
                ..
            }) => {
                tracing::info!(address = %self.target.address, transport = conn.transport(), %receiver, acked = ?acked.map(|a| a.generation), "connected");
                self.receiver_worktree = Some(worktree);
                self.remote_ack = acked;
                // Resume from whatever the receiver has, if we know it.
                let matches =
                    |k: &Option<Known>| k.as_ref().filter(|k| Some(k.ack) == acked).cloned();
                self.acked = matches(&self.acked).or_else(|| matches(&self.in_flight));
                self.in_flight = None;
                if self.acked.is_none() && acked.is_some() {
                    tracing::info!(
                        "receiver state unknown to this daemon; next sync is a full overlay"
                    );
                }
            }
            Some(ServerMsg::Rejected { code, message, .. }) => {
                return Err(SyncError::Connect(format!(
                    "receiver at {} refused: {message} ({code:?})",
                    self.target.address
                )));
            }
            other => return Err(SyncError::Protocol(format!("{other:?}"))),
        }
        self.subscribe(&conn).await;
        *self.live.lock().expect("live connection") = Some(conn.clone());
        self.conn = Some(Connected { conn, io });
        Ok(())
    }

    /// Bring the receiver to `snap`. Returns `None` if it already was there.
    pub async fn sync(&mut self, snap: &Snapshot) -> Result<Option<SyncReport>, SyncError> {
        let res = self.sync_inner(snap).await;
        // After these refusals the receiver may close the connection (it
        // does when a blob could not be stored): start afresh next time, so
        // the next attempt reports the refusal again, not a closed stream.
        let closing_refusal = matches!(
            &res,
            Err(SyncError::Rejected {
                code: ErrorCode::Storage
                    | ErrorCode::BadBlob
                    | ErrorCode::TooLarge
                    | ErrorCode::Malformed
                    | ErrorCode::Internal,
                ..
            })
        );
        if closing_refusal
            || matches!(
                res,
                Err(SyncError::Lost(_) | SyncError::Protocol(_) | SyncError::Changed(_))
            )
        {
            self.disconnect();
        }
        res
    }

    async fn sync_inner(&mut self, snap: &Snapshot) -> Result<Option<SyncReport>, SyncError> {
        self.connect().await?;
        // After a daemon restart the receiver may already have exactly this
        // state: adopt it instead of resending anything.
        if self.acked.is_none()
            && let Some(r) = self.remote_ack
            && r.digest == snap.digest
            && r.base == snap.base
        {
            tracing::info!(
                generation = r.generation,
                "receiver already has the current state"
            );
            self.acked = Some(Known {
                ack: r,
                overlay: snap.overlay.clone(),
            });
        }
        for attempt in 0..2 {
            if let Some(k) = &self.acked
                && k.ack.digest == snap.digest
                && k.ack.base == snap.base
            {
                return Ok(None);
            }
            match self.send_generation(snap).await {
                Err(SyncError::Rejected {
                    code: ErrorCode::OutOfSync | ErrorCode::DigestMismatch,
                    message,
                }) if attempt == 0 => {
                    tracing::warn!(%message, "receiver diverged; resending the full overlay");
                    self.acked = None;
                }
                other => return other.map(Some),
            }
        }
        unreachable!("second attempt returns")
    }

    async fn send_chunks(&mut self, blob: &Blob) -> Result<(), SyncError> {
        let io = &mut self
            .conn
            .as_mut()
            .ok_or_else(|| SyncError::Lost("not connected".into()))?
            .io;
        let total = blob.data.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK).min(blob.data.len());
            io.send(&ClientMsg::BlobChunk {
                id: blob.id,
                encoding: blob.encoding,
                raw_len: blob.raw_len,
                total,
                offset: offset as u64,
                data: blob.data[offset..end].to_vec(),
            })
            .await?;
            offset = end;
            if offset >= blob.data.len() {
                return Ok(());
            }
        }
    }

    fn encoder(&self) -> Encoder<'_> {
        Encoder {
            refs: &self.refs,
            repo: &self.repo,
            workdir: &self.workdir,
            acked: self.acked.as_ref().map(|k| &*k.overlay),
        }
    }

    async fn send_generation(&mut self, snap: &Snapshot) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let (parent, old) = match &self.acked {
            Some(k) => (Some(k.ack.generation), k.overlay.clone()),
            None => (None, Arc::new(Overlay::new())),
        };
        // Generations only grow, also across daemon restarts.
        let last = self
            .acked
            .as_ref()
            .map(|k| k.ack.generation)
            .max(self.remote_ack.map(|a| a.generation));
        let generation = last.unwrap_or(0) + 1;
        let changes = Overlay::diff(&old, &snap.overlay);
        // Blobs of changed files: small ones inline, the rest on request.
        // Candidates are encoded in parallel; those that do not fit inline
        // are kept for the receiver's request.
        let mut by_id: HashMap<ContentId, RelPath> = HashMap::new();
        let mut candidates = Vec::new();
        let mut candidate_bytes = 0u64;
        for c in &changes {
            if let Some(Entry::File { id, .. }) = &c.entry {
                if by_id.insert(*id, c.path.clone()).is_some() {
                    continue;
                }
                let len = std::fs::symlink_metadata(self.workdir.join(c.path.as_str()))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if len <= 4 * INLINE_BLOB_MAX as u64
                    && candidate_bytes < 4 * INLINE_TOTAL_MAX as u64
                {
                    candidate_bytes += len;
                    candidates.push((c.path.clone(), *id));
                }
            }
        }
        let mut inline = Vec::new();
        let mut inline_bytes = 0;
        let mut stash: HashMap<ContentId, Blob> = HashMap::new();
        for blob in self.encoder().encode_many(&candidates, snap) {
            let blob = blob?;
            if blob.data.len() <= INLINE_BLOB_MAX
                && inline_bytes + blob.data.len() <= INLINE_TOTAL_MAX
            {
                inline_bytes += blob.data.len();
                inline.push(blob);
            } else {
                stash.insert(blob.id, blob);
            }
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| SyncError::Lost("not connected".into()))?;
        let stats0 = conn.conn.bytes();
        let mut frames = Vec::new();
        let mut chunks = changes.chunks(CHANGES_PER_FRAME).peekable();
        if chunks.peek().is_none() {
            frames.push(ClientMsg::Changes {
                generation,
                changes: vec![],
                blobs: std::mem::take(&mut inline),
            });
        }
        while let Some(chunk) = chunks.next() {
            let blobs = if chunks.peek().is_none() {
                std::mem::take(&mut inline)
            } else {
                vec![]
            };
            frames.push(ClientMsg::Changes {
                generation,
                changes: chunk.to_vec(),
                blobs,
            });
        }
        let n_inline = frames
            .iter()
            .map(|f| {
                if let ClientMsg::Changes { blobs, .. } = f {
                    blobs.len()
                } else {
                    0
                }
            })
            .sum::<usize>();
        frames.push(ClientMsg::Commit {
            generation,
            parent,
            base: snap.base,
            digest: snap.digest,
            entries: snap.overlay.len() as u64,
        });
        let known = Known {
            ack: Ack {
                generation,
                digest: snap.digest,
                base: snap.base,
            },
            overlay: snap.overlay.clone(),
        };
        self.in_flight = Some(known.clone());
        // One write per frame keeps memory flat for huge overlays.
        for f in &frames {
            self.conn.as_mut().expect("connected").io.send(f).await?;
        }
        let mut requested = 0;
        let progress = self.progress.clone();
        let _finish = progress
            .clone()
            .map(crate::progress::Reporter::finish_on_drop);
        // Requested blobs: (sent, of), raw bytes (sent, of).
        let (mut sent, mut of, mut bytes_sent, mut bytes_of) = (0u64, 0u64, 0u64, 0u64);
        loop {
            let msg = tokio::time::timeout(
                Duration::from_secs(600),
                self.conn
                    .as_mut()
                    .expect("connected")
                    .io
                    .recv::<ServerMsg>(),
            )
            .await
            .map_err(|_| SyncError::Lost("no answer from the receiver within 600 s".into()))??;
            match msg {
                None => return Err(SyncError::Lost("receiver closed the stream".into())),
                Some(ServerMsg::Need { ids, .. }) => {
                    requested += ids.len();
                    if let Some(r) = &progress {
                        of += ids.len() as u64;
                        bytes_of += ids
                            .iter()
                            .map(|id| match (stash.get(id), by_id.get(id)) {
                                (Some(b), _) => b.raw_len,
                                (None, Some(rel)) => {
                                    std::fs::symlink_metadata(self.workdir.join(rel.as_str()))
                                        .map_or(0, |m| m.len())
                                }
                                (None, None) => 0,
                            })
                            .sum::<u64>();
                        r.update(sent, of, bytes_sent, bytes_of);
                    }
                    for batch in ids.chunks(16) {
                        let mut todo = Vec::new();
                        for id in batch {
                            if !stash.contains_key(id) {
                                let rel = by_id.get(id).cloned().ok_or_else(|| {
                                    SyncError::Protocol(format!(
                                        "receiver asked for unknown blob {id}"
                                    ))
                                })?;
                                todo.push((rel, *id));
                            }
                        }
                        for blob in self.encoder().encode_many(&todo, snap) {
                            let blob = blob?;
                            stash.insert(blob.id, blob);
                        }
                        for id in batch {
                            let blob = stash.remove(id).ok_or_else(|| {
                                SyncError::Protocol(format!("receiver asked twice for blob {id}"))
                            })?;
                            self.send_chunks(&blob).await?;
                            if let Some(r) = &progress {
                                sent += 1;
                                bytes_sent += blob.raw_len;
                                r.update(sent, of, bytes_sent, bytes_of);
                            }
                        }
                    }
                }
                Some(ServerMsg::Applied {
                    ack, files_written, ..
                }) => {
                    if ack != known.ack {
                        return Err(SyncError::Protocol(format!(
                            "applied {ack:?}, expected {:?}",
                            known.ack
                        )));
                    }
                    self.acked = Some(known);
                    self.remote_ack = Some(ack);
                    self.in_flight = None;
                    let keep: HashSet<ContentId> = snap.overlay.blob_ids().collect();
                    let _ = self.refs.retain(&keep);
                    let stats1 = self.conn.as_ref().expect("connected").conn.bytes();
                    let report = SyncReport {
                        generation,
                        overlay_digest: snap.digest.to_hex(),
                        files: files_written,
                        bytes_sent: stats1.0 - stats0.0,
                        bytes_received: stats1.1 - stats0.1,
                        latency_ms: snap.noticed.elapsed().as_millis() as u64,
                        blobs_inline: n_inline as u64,
                        blobs_requested: requested as u64,
                        full: parent.is_none(),
                    };
                    tracing::info!(
                        generation,
                        files = files_written,
                        bytes_sent = report.bytes_sent,
                        ms = started.elapsed().as_millis() as u64,
                        "synced"
                    );
                    return Ok(report);
                }
                Some(ServerMsg::Rejected { code, message, .. }) => {
                    self.in_flight = None;
                    return Err(rejected(code, message));
                }
                Some(other) => return Err(SyncError::Protocol(format!("{other:?}"))),
            }
        }
    }
}

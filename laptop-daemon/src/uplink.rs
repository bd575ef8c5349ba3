//! The laptop's side of a sync: the driver of the sender end of the
//! exchange ([`devd_protocol::session::Sender`]). The machine decides what
//! goes on the wire (resume after a reconnect, delta and inline blobs,
//! answers to `Need`, the full resend that heals a divergence); this
//! driver owns the connection, writes the machine's frames, feeds it the
//! receiver's, and answers its requests: file sizes, and blobs read from
//! the worktree and encoded as a patch against a version the receiver has
//! (kept on disk after sending, or the base tree's). It also forwards each
//! connection's build events.

use crate::repo::Repo;
use crate::transport;
use devd_protocol::compress::{self, BlobRef};
use devd_protocol::message::{Ack, Base, Blob, ClientMsg, ServerMsg, Writer};
use devd_protocol::session::{self, EncodeError, EncodeItem, Request, Sender, SenderEvent};
use devd_protocol::tree::{BaseTree, EntryKind};
use devd_protocol::{ContentId, Digest, Overlay, RelPath};
use devd_sync::blob_store::BlobStore;
use devd_sync::framed::Framed;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

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
    /// Files held at the version the receiver has because they kept
    /// changing while being sent (see [`crate::scanner::Scanner::hold`]).
    pub held: Arc<Vec<RelPath>>,
}

/// Why a sync failed: the receiver could not be reached (or refused the
/// connection), or the exchange failed as the protocol's sender reports it.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Connect(String),
    /// The receiver refused the generation for want of disk space
    /// (`Storage`): retrying at once would only upload it again.
    #[error(
        "the receiver's disk is full: {0}; free space on the receiver (or remove large files from the worktree), then run `devd sync`"
    )]
    DiskFull(String),
    /// Another daemon is the workspace's writer (it was before this one
    /// came, or it took the workspace over): this daemon must not sync.
    #[error("{0}")]
    OtherWriter(String),
    #[error(transparent)]
    Session(#[from] session::SyncError),
}

impl SyncError {
    fn lost(why: impl Into<String>) -> Self {
        Self::Session(session::SyncError::Lost(why.into()))
    }

    fn protocol(what: impl Into<String>) -> Self {
        Self::Session(session::SyncError::Protocol(what.into()))
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

struct Connected {
    link: transport::Link,
    io: Framed,
}

/// Where build events go: `Some(message)` for each, `None` when a
/// connection's event stream ends.
pub type EventSender = mpsc::Sender<Option<ServerMsg>>;

/// The build-event subscription of each connection.
struct Events {
    tx: EventSender,
    /// Tracks the task forwarding each connection's stream.
    tracker: TaskTracker,
    /// False once the current connection's event stream ended.
    alive: Arc<AtomicBool>,
}

/// The connection and the sender machine (which outlives connections: it
/// holds what the receiver acknowledged).
pub struct Uplink {
    target: Target,
    repo: Arc<Repo>,
    workdir: PathBuf,
    refs: BlobStore,
    sender: Sender,
    conn: Option<Connected>,
    /// The receiver's worktree path, from its Welcome.
    pub receiver_worktree: Option<String>,
    events: Option<Events>,
    /// The current connection, for further streams (`devd logs`).
    live: Arc<std::sync::Mutex<Option<transport::Link>>>,
    /// Where the progress of large uploads goes.
    progress: Option<crate::progress::Reporter>,
    /// Who this daemon is to the receiver, claiming the workspace.
    writer: Writer,
    /// Take the workspace over at the next claim (once).
    take_over: Arc<AtomicBool>,
    /// A claim of this daemon was granted before: a refusal now means
    /// another daemon took the workspace over.
    was_writer: bool,
}

/// This daemon as the writer of its workspace: the host and the worktree.
pub fn this_writer(workdir: &std::path::Path) -> Writer {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    Writer {
        host,
        worktree: workdir.display().to_string(),
    }
}

/// How a sync ended.
enum Outcome {
    UpToDate,
    Synced(session::SyncReport),
    Failed(session::SyncError),
}

/// The requested blobs of one sync, for the progress report: sent and
/// asked for, in blobs and in raw bytes.
#[derive(Default)]
struct Upload {
    sent: u64,
    of: u64,
    bytes_sent: u64,
    bytes_of: u64,
}

/// Reads and encodes blobs; shareable across threads.
struct Encoder<'a> {
    refs: &'a BlobStore,
    repo: &'a Repo,
    workdir: &'a std::path::Path,
    tree: &'a BaseTree,
    base: Base,
}

impl Encoder<'_> {
    /// The reference a patch of `item` may use: its previous overlay
    /// version (kept locally) or its base version.
    fn reference(&self, item: &EncodeItem) -> Option<(BlobRef, Vec<u8>)> {
        if let Some(id) = &item.previous
            && let Ok(data) = self.refs.get(id)
        {
            return Some((BlobRef::Overlay(*id), data));
        }
        if let Base::Commit(_) = self.base
            && let Some(t) = self.tree.get(&item.path)
            && t.kind != EntryKind::Symlink
            && let Ok(data) = self.repo.blob(t.oid)
        {
            return Some((BlobRef::Base(t.oid), data));
        }
        None
    }

    fn read(&self, rel: &RelPath, id: &ContentId) -> Result<Vec<u8>, EncodeError> {
        let data = std::fs::read(self.workdir.join(rel.as_str()))
            .map_err(|_| EncodeError::Changed(rel.clone()))?;
        if ContentId::of(&data) != *id {
            return Err(EncodeError::Changed(rel.clone()));
        }
        Ok(data)
    }

    fn encode(&self, item: &EncodeItem) -> Result<Blob, EncodeError> {
        let data = self.read(&item.path, &item.id)?;
        let reference = self.reference(item);
        let (encoding, bytes) =
            compress::encode(&data, reference.as_ref().map(|(r, d)| (*r, d.as_slice())));
        if data.len() <= REFERENCE_MAX
            && let Err(e) = self.refs.put(&item.id, &data)
        {
            tracing::debug!(error = %e, "cannot keep a patch reference");
        }
        Ok(Blob {
            id: item.id,
            encoding,
            raw_len: data.len() as u64,
            data: bytes,
        })
    }

    /// Encode several blobs on a few threads (compression dominates), in
    /// the order given; the first failure in that order.
    fn encode_many(&self, items: &[EncodeItem]) -> Result<Vec<Blob>, EncodeError> {
        if items.len() < 4 {
            return items.iter().map(|item| self.encode(item)).collect();
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
                                .map(|item| self.encode(item))
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

/// The machine's clock: tokio's, so that paused time in tests applies.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Write every frame the sender has queued. A failed write ends the
/// connection for the sender (it reports the loss as an event); false then.
async fn transmit(sender: &mut Sender, io: &mut Framed) -> bool {
    while let Some(frame) = sender.poll_transmit() {
        if let Err(e) = io.send(&frame).await {
            // The receiver may have refused what we were sending (a full
            // disk) and stopped reading: its refusal is the reason, not the
            // failed write.
            if let Some(refusal) = last_word(io).await {
                let _ = sender.handle_message(refusal, now());
            }
            sender.handle_connection_lost(e.to_string());
            return false;
        }
    }
    true
}

/// A `Rejected` the receiver sent before it stopped reading, if it comes
/// within a moment.
async fn last_word(io: &mut Framed) -> Option<ServerMsg> {
    let read = async {
        loop {
            match io.recv::<ServerMsg>().await {
                Ok(Some(m @ ServerMsg::Rejected { .. })) => return Some(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

/// Read the receiver's next frame, or reach the sender's deadline, and
/// feed the sender what happened.
async fn receive(sender: &mut Sender, io: &mut Framed) -> Result<(), session::UsageError> {
    let deadline = sender.poll_timeout().map(tokio::time::Instant::from_std);
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        msg = io.recv::<ServerMsg>() => match msg {
            Ok(Some(msg)) => sender.handle_message(msg, now())?,
            Ok(None) => sender.handle_connection_lost("receiver closed the stream"),
            Err(e) => sender.handle_connection_lost(e.to_string()),
        },
        () = until => sender.handle_timeout(now()),
    }
    Ok(())
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
        let writer = this_writer(&workdir);
        let sender = Sender::new(target.workspace.clone(), target.token.clone());
        Ok(Self {
            target,
            repo,
            workdir,
            refs,
            sender,
            conn: None,
            receiver_worktree: None,
            events: None,
            live: Arc::default(),
            progress: None,
            writer,
            take_over: Arc::default(),
            was_writer: false,
        })
    }

    /// Take the workspace over from another writer at the next claim when
    /// `flag` is set (it is cleared once that claim is granted).
    pub fn with_take_over(mut self, flag: Arc<AtomicBool>) -> Self {
        self.take_over = flag;
        self
    }

    /// Report the progress of large uploads (many or large blobs) to `r`.
    pub fn with_progress(mut self, r: crate::progress::Reporter) -> Self {
        self.progress = Some(r);
        self
    }

    /// Subscribe to build events on every connection; they are forwarded
    /// to `tx` (waiting when it is full), followed by `None` when the
    /// connection's stream ends. The forwarding task of each connection is
    /// spawned on `tracker` and ends with the connection.
    pub fn with_events(mut self, tx: EventSender, tracker: TaskTracker) -> Self {
        self.events = Some(Events {
            tx,
            tracker,
            alive: Arc::default(),
        });
        self
    }

    /// The current connection, shared with whoever opens further streams.
    pub fn live_connection(&self) -> Arc<std::sync::Mutex<Option<transport::Link>>> {
        self.live.clone()
    }

    /// Connect (and subscribe) unless connected with a live event stream.
    pub async fn ensure_connected(&mut self) -> Result<(), SyncError> {
        let events_alive = self
            .events
            .as_ref()
            .is_none_or(|e| e.alive.load(Ordering::SeqCst));
        if self.connected() && events_alive {
            return Ok(());
        }
        // The event stream ended: the receiver is going away (or went).
        self.disconnect();
        self.connect().await
    }

    /// Open the event stream on a fresh connection.
    async fn subscribe(&mut self, link: &transport::Link) {
        let Some(events) = &mut self.events else {
            return;
        };
        let mut io = match link.open_side().await {
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
        let alive = Arc::new(AtomicBool::new(true));
        events.alive = alive.clone();
        let tx = events.tx.clone();
        let link = link.clone();
        events.tracker.spawn(async move {
            // The task ends with the connection: on TCP the event stream is
            // a connection of its own, and a full channel must not keep a
            // closed connection's task waiting.
            loop {
                let m = tokio::select! {
                    _ = link.closed() => break,
                    m = io.recv::<ServerMsg>() => m,
                };
                let Ok(Some(m)) = m else { break };
                let sent = tokio::select! {
                    _ = link.closed() => break,
                    r = tx.send(Some(m)) => r,
                };
                if sent.is_err() {
                    return;
                }
            }
            alive.store(false, Ordering::SeqCst);
            let _ = tx.send(None).await;
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
            .filter(|c| !c.link.is_closed())
            .map(|c| c.link.transport())
    }

    /// True while connected.
    pub fn connected(&self) -> bool {
        self.sender.is_connected() && self.conn.as_ref().is_some_and(|c| !c.link.is_closed())
    }

    /// The last acknowledged generation.
    pub fn acked(&self) -> Option<Ack> {
        self.sender.acked()
    }

    /// The daemon stops cleanly: give up the writer claim, so that another
    /// daemon may claim the workspace without `--take-over`, and wait (at
    /// most 2 s) for the receiver to end the connection, which is its
    /// answer. Best effort: without a connection, mid-generation, or to a
    /// receiver that does not answer, the claim stays, as after a crash.
    pub async fn release(&mut self) {
        if !self.was_writer || !self.connected() || self.sender.is_syncing() {
            return;
        }
        let Some(c) = &mut self.conn else { return };
        let released = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            c.io.send(&ClientMsg::Release).await.ok()?;
            // Whatever else arrives (build events) until the receiver
            // closes the stream.
            while let Ok(Some(_)) = c.io.recv::<ServerMsg>().await {}
            Some(())
        })
        .await;
        match released {
            Ok(Some(())) => {
                tracing::info!("gave the workspace claim up; the receiver closed the connection")
            }
            _ => tracing::debug!("the receiver did not confirm the release; the claim stays"),
        }
    }

    /// Drop the connection (it is re-established on the next sync).
    pub fn disconnect(&mut self) {
        *self.live.lock().expect("live connection") = None;
        if let Some(c) = self.conn.take() {
            c.link.close();
        }
        self.sender.handle_connection_lost("disconnected");
        // Nothing the sender says about a dropped connection is left to
        // act on.
        while self.sender.poll_event().is_some() {}
    }

    async fn connect(&mut self) -> Result<(), SyncError> {
        if self.connected() {
            return Ok(());
        }
        self.disconnect();
        let addr = transport::resolve(&self.target.address)
            .await
            .map_err(|e| SyncError::Connect(e.to_string()))?;
        let credentials = transport::Credentials {
            workspace: self.target.workspace.clone(),
            token: self.target.token.clone(),
        };
        let (link, mut io) = transport::connect_link(
            addr,
            &self.target.fingerprint,
            self.target.transport,
            credentials,
        )
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?;
        self.sender.connect();
        if transmit(&mut self.sender, &mut io).await
            && let Err(e) = receive(&mut self.sender, &mut io).await
        {
            link.close();
            return Err(self.misuse(e));
        }
        match self.sender.poll_event() {
            Some(SenderEvent::Connected {
                receiver,
                worktree,
                acked,
                resumed,
            }) => {
                tracing::info!(address = %self.target.address, transport = link.transport(), %receiver, acked = ?acked.map(|a| a.generation), "connected");
                if !resumed && acked.is_some() {
                    tracing::info!(
                        "receiver state unknown to this daemon; next sync is a full overlay"
                    );
                }
                self.receiver_worktree = Some(worktree);
                if let Err(e) = self.claim(&mut io).await {
                    link.close();
                    self.sender
                        .handle_connection_lost("the workspace has another writer");
                    while self.sender.poll_event().is_some() {}
                    return Err(e);
                }
            }
            Some(SenderEvent::ConnectFailed(e)) => {
                link.close();
                return Err(self.error(e));
            }
            other => {
                link.close();
                self.sender.handle_connection_lost("no answer to Hello");
                return Err(SyncError::protocol(format!("{other:?}")));
            }
        }
        self.subscribe(&link).await;
        *self.live.lock().expect("live connection") = Some(link.clone());
        self.conn = Some(Connected { link, io });
        Ok(())
    }

    /// Claim the workspace as its writer on a fresh connection (the sender
    /// machine is idle between `Welcome` and the first sync).
    async fn claim(&mut self, io: &mut Framed) -> Result<(), SyncError> {
        let take_over = self.take_over.load(Ordering::SeqCst);
        let msg = ClientMsg::Claim {
            writer: self.writer.clone(),
            take_over,
        };
        io.send(&msg)
            .await
            .map_err(|e| SyncError::lost(e.to_string()))?;
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(30), io.recv::<ServerMsg>())
                .await
                .map_err(|_| SyncError::lost("no answer to the writer claim within 30 s"))?;
        match answer {
            Ok(Some(ServerMsg::Claimed {
                since, previous, ..
            })) => {
                if let Some(p) = previous {
                    tracing::warn!(from = %p, "took the workspace over from another daemon");
                }
                tracing::debug!(since, "claimed the workspace");
                self.take_over.store(false, Ordering::SeqCst);
                self.was_writer = true;
                Ok(())
            }
            Ok(Some(ServerMsg::Rejected {
                code: devd_protocol::ErrorCode::OtherWriter,
                message,
                ..
            })) if self.was_writer => Err(SyncError::OtherWriter(format!(
                "taken over, this daemon no longer syncs: {message}"
            ))),
            Ok(Some(ServerMsg::Rejected {
                code: devd_protocol::ErrorCode::OtherWriter,
                message,
                ..
            })) => Err(SyncError::OtherWriter(message)),
            Ok(Some(ServerMsg::Rejected { code, message, .. })) => {
                Err(SyncError::Connect(format!(
                    "receiver at {} refused: {message} ({code:?})",
                    self.target.address
                )))
            }
            Ok(Some(other)) => Err(SyncError::protocol(format!("{other:?}"))),
            Ok(None) => Err(SyncError::lost("receiver closed the stream")),
            Err(e) => Err(SyncError::lost(e.to_string())),
        }
    }

    /// Bring the receiver to `snap`. Returns `None` if it already was there.
    pub async fn sync(&mut self, snap: &Snapshot) -> Result<Option<SyncReport>, SyncError> {
        self.connect().await?;
        let started = Instant::now();
        let Some(conn) = &self.conn else {
            return Err(SyncError::lost("not connected"));
        };
        let bytes0 = conn.link.bytes();
        let target = session::Snapshot {
            base: snap.base,
            overlay: snap.overlay.clone(),
            digest: snap.digest,
        };
        let outcome = match self.sender.start_sync(target, now()) {
            Ok(()) => self.drive(snap).await,
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                self.disconnect();
                return Err(self.misuse(e));
            }
        };
        let report = match outcome {
            Outcome::UpToDate => return Ok(None),
            Outcome::Synced(r) => r,
            Outcome::Failed(e) => {
                // After these the receiver may have closed its end (it
                // does when a blob could not be stored): start afresh next
                // time, so the next attempt reports the refusal again.
                if e.closes_connection() {
                    self.disconnect();
                }
                return Err(self.error(e));
            }
        };
        let keep: HashSet<ContentId> = snap.overlay.blob_ids().collect();
        let _ = self.refs.retain(&keep);
        let bytes1 = self.conn.as_ref().map_or(bytes0, |c| c.link.bytes());
        let report = SyncReport {
            generation: report.generation,
            overlay_digest: report.digest.to_hex(),
            files: report.files_written,
            bytes_sent: bytes1.0 - bytes0.0,
            bytes_received: bytes1.1 - bytes0.1,
            latency_ms: snap.noticed.elapsed().as_millis() as u64,
            blobs_inline: report.blobs_inline,
            blobs_requested: report.blobs_requested,
            full: report.full,
        };
        tracing::info!(
            generation = report.generation,
            files = report.files,
            bytes_sent = report.bytes_sent,
            ms = started.elapsed().as_millis() as u64,
            "synced"
        );
        Ok(Some(report))
    }

    /// Run the sync the sender started until it ends: write its frames,
    /// act on its events, answer its requests, read the receiver's frames.
    async fn drive(&mut self, snap: &Snapshot) -> Result<Outcome, session::UsageError> {
        let _finish = self
            .progress
            .clone()
            .map(crate::progress::Reporter::finish_on_drop);
        let mut upload = Upload::default();
        loop {
            let conn = self.conn.as_mut().expect("connected while syncing");
            transmit(&mut self.sender, &mut conn.io).await;
            while let Some(event) = self.sender.poll_event() {
                match event {
                    SenderEvent::UpToDate => return Ok(Outcome::UpToDate),
                    SenderEvent::Synced(r) => return Ok(Outcome::Synced(r)),
                    SenderEvent::Failed(e) => return Ok(Outcome::Failed(e)),
                    SenderEvent::Adopted(ack) => tracing::info!(
                        generation = ack.generation,
                        "receiver already has the current state"
                    ),
                    SenderEvent::Resending { message, .. } => {
                        tracing::warn!(%message, "receiver diverged; resending the full overlay");
                    }
                    SenderEvent::BlobsRequested(blobs) if self.progress.is_some() => {
                        upload.of += blobs.len() as u64;
                        upload.bytes_of += blobs
                            .iter()
                            .map(|b| match (b.raw_len, &b.path) {
                                (Some(len), _) => len,
                                (None, Some(rel)) => self.size(rel).unwrap_or(0),
                                (None, None) => 0,
                            })
                            .sum::<u64>();
                        self.report_progress(&upload);
                    }
                    SenderEvent::BlobSent { raw_len, .. } => {
                        upload.sent += 1;
                        upload.bytes_sent += raw_len;
                        self.report_progress(&upload);
                    }
                    SenderEvent::BlobsRequested(_)
                    | SenderEvent::Connected { .. }
                    | SenderEvent::ConnectFailed(_) => {}
                }
            }
            match self.sender.poll_request() {
                Some(Request::Measure(paths)) => {
                    let sizes = paths.iter().map(|p| self.size(p)).collect();
                    self.sender.handle_sizes(sizes, now())?;
                }
                Some(Request::Encode(items)) => {
                    let encoder = Encoder {
                        refs: &self.refs,
                        repo: &self.repo,
                        workdir: &self.workdir,
                        tree: &snap.tree,
                        base: snap.base,
                    };
                    let blobs = encoder.encode_many(&items);
                    self.sender.handle_encoded(blobs, now())?;
                }
                None => {
                    let conn = self.conn.as_mut().expect("connected while syncing");
                    receive(&mut self.sender, &mut conn.io).await?;
                }
            }
        }
    }

    /// The size of `rel` on disk, if it can be read.
    fn size(&self, rel: &RelPath) -> Option<u64> {
        std::fs::symlink_metadata(self.workdir.join(rel.as_str()))
            .ok()
            .map(|m| m.len())
    }

    fn report_progress(&self, u: &Upload) {
        if let Some(r) = &self.progress {
            r.update(u.sent, u.of, u.bytes_sent, u.bytes_of);
        }
    }

    /// The daemon's view of a failure the sender reported.
    fn error(&self, e: session::SyncError) -> SyncError {
        match e {
            session::SyncError::Refused { code, message } => SyncError::Connect(format!(
                "receiver at {} refused: {message} ({code:?})",
                self.target.address
            )),
            session::SyncError::Rejected {
                code: devd_protocol::ErrorCode::Storage,
                message,
            } => SyncError::DiskFull(message),
            session::SyncError::Rejected {
                code: devd_protocol::ErrorCode::OtherWriter,
                message,
            } => SyncError::OtherWriter(message),
            other => SyncError::Session(other),
        }
    }

    /// This driver fed the sender an input at the wrong moment: a bug
    /// here; the connection is dropped and the sync fails.
    fn misuse(&self, e: session::UsageError) -> SyncError {
        tracing::error!(error = %e, "uplink driver bug");
        SyncError::protocol(format!("daemon bug: {e}"))
    }
}

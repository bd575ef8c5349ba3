//! The laptop end of the sync exchange.
//!
//! A [`Sender`] lives as long as the daemon and outlives connections. It
//! remembers what the receiver acknowledged (the [`Ack`] and the overlay it
//! stands for), which generation is in flight, and what the receiver said in
//! its last `Welcome`. From those it decides, for each [`Snapshot`] the
//! scanner produces:
//!
//! - nothing to send, when the receiver already has the snapshot (also right
//!   after a daemon restart: the receiver's `Welcome` ack is *adopted* when
//!   its digest and base equal the snapshot's);
//! - otherwise a new generation (numbers only grow, also across restarts,
//!   because they continue from the `Welcome` ack): the delta against the
//!   last acknowledged overlay, or the full overlay when nothing is known.
//!
//! One sync goes: [`Request::Measure`] (file sizes, to pick candidates for
//! inline blobs) → [`Request::Encode`] (read and encode the candidates) →
//! `Changes` frames (small blobs inline) and one `Commit` → the receiver's
//! `Need` → more [`Request::Encode`]s, 16 ids at a time, and `BlobChunk`
//! frames → `Applied` (checked against the expected ack) or `Rejected`.
//! `OutOfSync` and `DigestMismatch` are healed once per sync by forgetting
//! the acknowledged state and resending the full overlay (small blobs ride
//! inline again; larger ones are only uploaded if the receiver asks).
//!
//! A file that changed since the scan cannot be sent in the version the
//! generation names: the sync fails with [`SyncError::Changed`], and if the
//! receiver was already waiting for blobs the sender tells it to drop the
//! generation (`Abandon`); the connection stays up for the next snapshot.
//!
//! After [`SenderEvent::Failed`] any outstanding request is void: the driver
//! drops its answer. [`SyncError::closes_connection`] says whether the
//! driver should also drop the connection (the sender already considers it
//! closed).
//!
//! The driver: `connect()` and write the `Hello`, feed the `Welcome` to
//! [`Sender::handle_message`], then for each snapshot call
//! [`Sender::start_sync`] and loop: write [`Sender::poll_transmit`] frames,
//! act on [`Sender::poll_event`], answer [`Sender::poll_request`], and read
//! the next frame with [`Sender::poll_timeout`] as deadline, until the
//! event is [`SenderEvent::Synced`], [`SenderEvent::UpToDate`] or
//! [`SenderEvent::Failed`].

mod plan;

use super::UsageError;
use crate::content_id::ContentId;
use crate::message::{Ack, Base, Blob, CHUNK, ClientMsg, ErrorCode, ServerMsg};
use crate::overlay::{Digest, Overlay};
use crate::path::RelPath;
use plan::{Generation, Known, Phase};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the receiver may take to answer a `Commit` or a blob.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Ids of a `Need` encoded per [`Request::Encode`] (bounds memory).
pub const NEED_BATCH: usize = 16;
/// A scanned state to bring the receiver to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub base: Base,
    pub overlay: Arc<Overlay>,
    /// `overlay.digest()`, computed once.
    pub digest: Digest,
}

impl Snapshot {
    /// The snapshot of `overlay` on `base`.
    pub fn new(base: Base, overlay: Arc<Overlay>) -> Self {
        let digest = overlay.digest();
        Self {
            base,
            overlay,
            digest,
        }
    }

    /// True if `ack` acknowledges this very state.
    fn is_acked_by(&self, ack: &Ack) -> bool {
        ack.digest == self.digest && ack.base == self.base
    }
}

/// One file to read, verify against `id` and encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeItem {
    pub path: RelPath,
    pub id: ContentId,
    /// The content this path had in the acknowledged overlay: the receiver
    /// has it, so it may serve as the patch reference (if the driver kept a
    /// copy). Otherwise the base tree's version of `path` may.
    pub previous: Option<ContentId>,
}

/// I/O the sender needs done; answer each with the matching `handle_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The size on disk of each path (`symlink_metadata`, `None` if it
    /// cannot be read), in order: answer with [`Sender::handle_sizes`].
    Measure(Vec<RelPath>),
    /// Read, verify and encode each file, in order: answer with
    /// [`Sender::handle_encoded`].
    Encode(Vec<EncodeItem>),
}

/// Why the driver could not encode a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The file is gone or its content no longer has the expected id.
    #[error("{0} changed while it was being sent; rescanning")]
    Changed(RelPath),
}

/// Why a connection attempt or a sync failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The receiver answered `Hello` with a refusal.
    #[error("receiver refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// The receiver refused the generation.
    #[error("receiver refused ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    /// The receiver cannot fetch the base commit: upload the base instead.
    #[error("receiver cannot fetch the base commit: {0}")]
    BaseUnavailable(String),
    /// The connection ended, or the receiver stopped answering.
    #[error("connection to the receiver lost: {0}")]
    Lost(String),
    /// A file changed while it was being sent.
    #[error("{0} changed while it was being sent; rescanning")]
    Changed(RelPath),
    /// The receiver said something that makes no sense here.
    #[error("unexpected answer from the receiver: {0}")]
    Protocol(String),
}

impl SyncError {
    /// True if the connection cannot be trusted after this failure: the
    /// sender closes it, and the driver should drop it. Refusals after
    /// which the receiver closes its end count too, so the next attempt
    /// reports the refusal again rather than a closed stream.
    pub fn closes_connection(&self) -> bool {
        match self {
            SyncError::Rejected { code, .. } => matches!(
                code,
                ErrorCode::Storage
                    | ErrorCode::BadBlob
                    | ErrorCode::TooLarge
                    | ErrorCode::Malformed
                    | ErrorCode::Internal
            ),
            SyncError::BaseUnavailable(_) | SyncError::Changed(_) => false,
            SyncError::Refused { .. } | SyncError::Lost(_) | SyncError::Protocol(_) => true,
        }
    }
}

/// What one successful sync did (the driver adds byte counts and latency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub generation: u64,
    pub digest: Digest,
    /// Files the receiver wrote or removed.
    pub files_written: u64,
    pub apply_ms: u64,
    pub blobs_inline: u64,
    pub blobs_requested: u64,
    /// The whole overlay was sent (no acknowledged parent).
    pub full: bool,
}

/// A blob the receiver asked for, for progress reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedBlob {
    pub id: ContentId,
    /// Where its content is read from (`None`: an id the sender never
    /// offered; the sync fails).
    pub path: Option<RelPath>,
    /// Its raw length, when it is already encoded.
    pub raw_len: Option<u64>,
}

/// What happened, for the driver to act on or log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver welcomed us. `resumed`: the sender knows the state the
    /// receiver acknowledged, so the next sync is a delta; `false` with an
    /// `acked` means the next sync is a full overlay (or an adoption).
    Connected {
        receiver: String,
        worktree: String,
        acked: Option<Ack>,
        resumed: bool,
    },
    /// The connection attempt failed; the sender is disconnected.
    ConnectFailed(SyncError),
    /// The receiver already had the snapshot (after a daemon restart):
    /// its ack is now the acknowledged state.
    Adopted(Ack),
    /// The receiver diverged: the full overlay follows.
    Resending { code: ErrorCode, message: String },
    /// The receiver asked for these blobs.
    BlobsRequested(Vec<RequestedBlob>),
    /// A requested blob was queued for sending.
    BlobSent { id: ContentId, raw_len: u64 },
    /// The sync ended without sending: the receiver has the snapshot.
    UpToDate,
    /// The sync ended: the receiver applied the snapshot.
    Synced(SyncReport),
    /// The sync ended in failure (see [`SyncError::closes_connection`]),
    /// or the receiver sent something between syncs (then a
    /// [`SyncError::Protocol`] with no sync in progress).
    Failed(SyncError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Closed,
    AwaitingWelcome,
    Open,
}

/// A frame, or a blob still to be cut into `BlobChunk` frames (cut one at
/// a time as the driver polls, so a large blob is not copied at once).
#[derive(Debug)]
enum Outgoing {
    Msg(ClientMsg),
    Blob { blob: Blob, offset: usize },
}

/// One sync: the snapshot, and the generation being sent for it.
#[derive(Debug)]
struct Sync {
    snap: Snapshot,
    /// 0, or 1 for the full resend after a divergence.
    attempt: u8,
    cur: Generation,
}

/// The laptop end of the sync exchange (see the module documentation).
#[derive(Debug)]
pub struct Sender {
    workspace: String,
    token: String,
    acked: Option<Known>,
    in_flight: Option<Known>,
    remote_ack: Option<Ack>,
    conn: Conn,
    sync: Option<Sync>,
    transmit: VecDeque<Outgoing>,
    requests: VecDeque<Request>,
    events: VecDeque<SenderEvent>,
}

impl Sender {
    /// A sender for `workspace`, authenticating with `token`, that knows
    /// nothing about the receiver yet.
    pub fn new(workspace: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            workspace: workspace.into(),
            token: token.into(),
            acked: None,
            in_flight: None,
            remote_ack: None,
            conn: Conn::Closed,
            sync: None,
            transmit: VecDeque::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The last generation the receiver acknowledged to this sender.
    pub fn acked(&self) -> Option<Ack> {
        self.acked.as_ref().map(|k| k.ack)
    }

    /// What the receiver last reported as applied (`Welcome` or `Applied`).
    pub fn remote_ack(&self) -> Option<Ack> {
        self.remote_ack
    }

    /// The generation sent but not yet acknowledged, if any.
    pub fn in_flight(&self) -> Option<Ack> {
        self.in_flight.as_ref().map(|k| k.ack)
    }

    /// True once the receiver welcomed us, until the connection ends.
    pub fn is_connected(&self) -> bool {
        self.conn == Conn::Open
    }

    /// True while a sync is in progress.
    pub fn is_syncing(&self) -> bool {
        self.sync.is_some()
    }

    /// Start a new connection: queues the `Hello`. Anything about the
    /// previous connection (frames, a sync in progress) is dropped; the
    /// acknowledged state is kept for resuming.
    pub fn connect(&mut self) {
        self.transmit.clear();
        self.requests.clear();
        self.sync = None;
        self.conn = Conn::AwaitingWelcome;
        self.transmit.push_back(Outgoing::Msg(ClientMsg::Hello {
            version: crate::PROTOCOL_VERSION,
            workspace: self.workspace.clone(),
            token: self.token.clone(),
        }));
    }

    /// The connection ended (closed by the peer, a read or write failed,
    /// or the driver dropped it). A sync in progress fails with
    /// [`SyncError::Lost`]; the generation in flight is remembered, so a
    /// reconnect can resume from it if the receiver applied it.
    pub fn handle_connection_lost(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        match self.conn {
            Conn::Closed => {}
            Conn::AwaitingWelcome => {
                self.events
                    .push_back(SenderEvent::ConnectFailed(SyncError::Lost(reason)));
            }
            Conn::Open => {
                if self.sync.take().is_some() {
                    self.events
                        .push_back(SenderEvent::Failed(SyncError::Lost(reason)));
                }
            }
        }
        self.conn = Conn::Closed;
        self.requests.clear();
    }

    /// Bring the receiver to `snap`. Ends with [`SenderEvent::UpToDate`],
    /// [`SenderEvent::Synced`] or [`SenderEvent::Failed`].
    pub fn start_sync(&mut self, snap: Snapshot, now: Instant) -> Result<(), UsageError> {
        if self.conn != Conn::Open {
            return Err(self.misuse("start_sync"));
        }
        if self.sync.is_some() {
            return Err(self.misuse("start_sync"));
        }
        // After a daemon restart the receiver may already have exactly this
        // state: adopt it instead of resending anything.
        if self.acked.is_none()
            && let Some(r) = self.remote_ack
            && snap.is_acked_by(&r)
        {
            self.acked = Some(Known {
                ack: r,
                overlay: snap.overlay.clone(),
            });
            self.events.push_back(SenderEvent::Adopted(r));
        }
        self.begin(snap, 0, now);
        Ok(())
    }

    /// A frame from the receiver.
    pub fn handle_message(&mut self, msg: ServerMsg, now: Instant) -> Result<(), UsageError> {
        match self.conn {
            Conn::Closed => Err(self.misuse("handle_message")),
            Conn::AwaitingWelcome => {
                self.welcome(msg);
                Ok(())
            }
            Conn::Open => {
                let Some(sync) = &self.sync else {
                    // Nothing is expected between syncs.
                    self.fail(SyncError::Protocol(format!("{msg:?}")));
                    return Ok(());
                };
                // A refusal may come at any point of a sync (the receiver
                // refused a blob while the rest was still being encoded).
                let refusal = matches!(msg, ServerMsg::Rejected { .. });
                if !refusal && !matches!(sync.cur.phase, Phase::Awaiting { .. }) {
                    return Err(self.misuse("handle_message"));
                }
                self.answer(msg, now);
                Ok(())
            }
        }
    }

    /// The sizes asked for by [`Request::Measure`], in the same order.
    pub fn handle_sizes(
        &mut self,
        sizes: Vec<Option<u64>>,
        now: Instant,
    ) -> Result<(), UsageError> {
        let misuse = self.misuse("handle_sizes");
        let Some(sync) = self.sync.as_mut() else {
            return Err(misuse);
        };
        let cur = &mut sync.cur;
        if !matches!(cur.phase, Phase::Measuring) {
            return Err(misuse);
        }
        // Files small enough on disk are encoded up front; those whose
        // encoding fits inline ride with the delta.
        let Some(items) = cur.pick_candidates(sizes) else {
            return Err(misuse);
        };
        if items.is_empty() {
            self.send_frames(Vec::new(), now);
        } else {
            cur.phase = Phase::EncodingInline;
            self.requests.push_back(Request::Encode(items));
        }
        Ok(())
    }

    /// The blobs asked for by [`Request::Encode`], in the same order, or
    /// the first file that could not be encoded.
    pub fn handle_encoded(
        &mut self,
        result: Result<Vec<Blob>, EncodeError>,
        now: Instant,
    ) -> Result<(), UsageError> {
        let misuse = self.misuse("handle_encoded");
        let Some(sync) = self.sync.as_mut() else {
            return Err(misuse);
        };
        let cur = &mut sync.cur;
        if !matches!(cur.phase, Phase::EncodingInline | Phase::EncodingRequested) {
            return Err(misuse);
        }
        let wanted = cur.encoding();
        let blobs = match result {
            Ok(blobs) => blobs,
            Err(EncodeError::Changed(path)) => {
                // Nothing of this generation is on the wire before the inline
                // blobs are encoded; after the `Commit` the receiver waits
                // for blobs and must be told to stop.
                if matches!(cur.phase, Phase::EncodingRequested) {
                    let generation = cur.expected.ack.generation;
                    self.transmit
                        .push_back(Outgoing::Msg(ClientMsg::Abandon { generation }));
                }
                self.in_flight = None;
                self.fail(SyncError::Changed(path));
                return Ok(());
            }
        };
        if blobs.len() != wanted.len() || blobs.iter().zip(&wanted).any(|(b, id)| b.id != *id) {
            return Err(misuse);
        }
        if matches!(cur.phase, Phase::EncodingInline) {
            let inline = cur.split_inline(blobs);
            self.send_frames(inline, now);
        } else {
            cur.stash(blobs);
            let batch = std::mem::take(&mut cur.current);
            if self.send_batch(batch) {
                self.next_batches(now);
            }
        }
        Ok(())
    }

    /// When [`Sender::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.sync.as_ref().map(|s| &s.cur.phase) {
            Some(Phase::Awaiting { deadline }) => Some(*deadline),
            _ => None,
        }
    }

    /// Time passed: fails the sync if the receiver has not answered in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            let secs = ANSWER_TIMEOUT.as_secs();
            self.fail(SyncError::Lost(format!(
                "no answer from the receiver within {secs} s"
            )));
        }
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<ClientMsg> {
        match self.transmit.front_mut()? {
            Outgoing::Msg(_) => match self.transmit.pop_front() {
                Some(Outgoing::Msg(m)) => Some(m),
                _ => unreachable!("front is a message"),
            },
            Outgoing::Blob { blob, offset } => {
                let end = (*offset + CHUNK).min(blob.data.len());
                let msg = ClientMsg::BlobChunk {
                    id: blob.id,
                    encoding: blob.encoding,
                    raw_len: blob.raw_len,
                    total: blob.data.len() as u64,
                    offset: *offset as u64,
                    data: blob.data[*offset..end].to_vec(),
                };
                if end >= blob.data.len() {
                    self.transmit.pop_front();
                } else {
                    *offset = end;
                }
                Some(msg)
            }
        }
    }

    /// The next I/O to do; its answer must come before the next frame is
    /// read.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    fn misuse(&self, input: &'static str) -> UsageError {
        let state = match (&self.conn, self.sync.as_ref().map(|s| &s.cur.phase)) {
            (Conn::Closed, _) => "not connected",
            (Conn::AwaitingWelcome, _) => "waiting for the Welcome",
            (Conn::Open, None) => "idle",
            (Conn::Open, Some(Phase::Measuring)) => "measuring files",
            (Conn::Open, Some(Phase::EncodingInline | Phase::EncodingRequested)) => {
                "encoding blobs"
            }
            (Conn::Open, Some(Phase::Awaiting { .. })) => "waiting for the receiver",
        };
        UsageError {
            input,
            machine: "sender",
            state,
        }
    }

    /// The answer to `Hello`.
    fn welcome(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Welcome {
                acked,
                worktree,
                receiver,
                ..
            } => {
                self.remote_ack = acked;
                // Resume from whatever the receiver has, if we know it.
                let matches =
                    |k: &Option<Known>| k.as_ref().filter(|k| Some(k.ack) == acked).cloned();
                self.acked = matches(&self.acked).or_else(|| matches(&self.in_flight));
                self.in_flight = None;
                self.conn = Conn::Open;
                self.events.push_back(SenderEvent::Connected {
                    receiver,
                    worktree,
                    acked,
                    resumed: self.acked.is_some(),
                });
            }
            ServerMsg::Rejected { code, message, .. } => {
                self.conn = Conn::Closed;
                self.events
                    .push_back(SenderEvent::ConnectFailed(SyncError::Refused {
                        code,
                        message,
                    }));
            }
            other => {
                self.conn = Conn::Closed;
                self.events
                    .push_back(SenderEvent::ConnectFailed(SyncError::Protocol(format!(
                        "{other:?}"
                    ))));
            }
        }
    }

    /// Start attempt `attempt` of a sync to `snap`: nothing, if the
    /// acknowledged state is the snapshot, else a new generation.
    fn begin(&mut self, snap: Snapshot, attempt: u8, now: Instant) {
        if let Some(k) = &self.acked
            && snap.is_acked_by(&k.ack)
        {
            self.sync = None;
            self.events.push_back(SenderEvent::UpToDate);
            return;
        }
        let cur = Generation::new(&snap, self.acked.as_ref(), self.remote_ack);
        let to_measure = cur.to_measure();
        let measure = !to_measure.is_empty();
        if measure {
            self.requests.push_back(Request::Measure(to_measure));
        }
        self.sync = Some(Sync { snap, attempt, cur });
        if !measure {
            self.send_frames(Vec::new(), now);
        }
    }

    /// Queue the delta (`Changes` frames, the inline blobs on the last one)
    /// and the `Commit`, then wait for the receiver.
    fn send_frames(&mut self, inline: Vec<Blob>, now: Instant) {
        let sync = self.sync.as_mut().expect("a sync in progress");
        let frames = sync.cur.frames(inline, &sync.snap);
        self.transmit.extend(frames.into_iter().map(Outgoing::Msg));
        self.in_flight = Some(sync.cur.expected.clone());
        sync.cur.phase = Phase::Awaiting {
            deadline: now + ANSWER_TIMEOUT,
        };
    }

    /// A message while waiting for the receiver.
    fn answer(&mut self, msg: ServerMsg, now: Instant) {
        let sync = self.sync.as_mut().expect("a sync in progress");
        match msg {
            ServerMsg::Need { ids, .. } => {
                let asked = sync.cur.need(&ids);
                self.events.push_back(SenderEvent::BlobsRequested(asked));
                self.next_batches(now);
            }
            ServerMsg::Applied {
                ack,
                files_written,
                apply_ms,
            } => {
                let cur = &sync.cur;
                if ack != cur.expected.ack {
                    let m = format!("applied {ack:?}, expected {:?}", cur.expected.ack);
                    self.fail(SyncError::Protocol(m));
                    return;
                }
                let report = SyncReport {
                    generation: ack.generation,
                    digest: ack.digest,
                    files_written,
                    apply_ms,
                    blobs_inline: cur.blobs_inline,
                    blobs_requested: cur.blobs_requested,
                    full: cur.parent.is_none(),
                };
                self.acked = Some(cur.expected.clone());
                self.remote_ack = Some(ack);
                self.in_flight = None;
                self.sync = None;
                self.events.push_back(SenderEvent::Synced(report));
            }
            ServerMsg::Rejected { code, message, .. } => {
                self.in_flight = None;
                let diverged = matches!(code, ErrorCode::OutOfSync | ErrorCode::DigestMismatch);
                if diverged && sync.attempt == 0 {
                    let snap = self.sync.take().expect("a sync in progress").snap;
                    self.events
                        .push_back(SenderEvent::Resending { code, message });
                    self.acked = None;
                    self.begin(snap, 1, now);
                } else if code == ErrorCode::BaseUnavailable {
                    self.fail(SyncError::BaseUnavailable(message));
                } else {
                    self.fail(SyncError::Rejected { code, message });
                }
            }
            other => self.fail(SyncError::Protocol(format!("{other:?}"))),
        }
    }

    /// Handle queued `Need` batches until one needs encoding, then wait for
    /// the receiver again.
    fn next_batches(&mut self, now: Instant) {
        loop {
            let Some(sync) = self.sync.as_mut() else {
                return;
            };
            let cur = &mut sync.cur;
            let Some(batch) = cur.batches.pop_front() else {
                cur.phase = Phase::Awaiting {
                    deadline: now + ANSWER_TIMEOUT,
                };
                return;
            };
            if let Some(id) = cur.unknown(&batch) {
                let m = format!("receiver asked for unknown blob {id}");
                self.fail(SyncError::Protocol(m));
                return;
            }
            cur.current = batch;
            let todo = cur.todo_ids();
            if todo.is_empty() {
                let batch = std::mem::take(&mut cur.current);
                if !self.send_batch(batch) {
                    return;
                }
                continue;
            }
            cur.phase = Phase::EncodingRequested;
            self.requests
                .push_back(Request::Encode(cur.encode_items(&todo)));
            return;
        }
    }

    /// Queue the blobs of one `Need` batch, all of them encoded by now.
    /// False if the sync failed (an id asked for twice).
    fn send_batch(&mut self, batch: Vec<ContentId>) -> bool {
        let cur = &mut self.sync.as_mut().expect("a sync in progress").cur;
        for id in batch {
            let blob = match cur.take_requested(id) {
                Some(blob) => blob,
                None => {
                    let m = format!("receiver asked twice for blob {id}");
                    self.fail(SyncError::Protocol(m));
                    return false;
                }
            };
            self.events.push_back(SenderEvent::BlobSent {
                id,
                raw_len: blob.raw_len,
            });
            self.transmit.push_back(Outgoing::Blob { blob, offset: 0 });
        }
        true
    }

    /// End the sync (or the idle connection) with `error`.
    fn fail(&mut self, error: SyncError) {
        self.sync = None;
        self.requests.clear();
        if error.closes_connection() {
            self.conn = Conn::Closed;
        }
        self.events.push_back(SenderEvent::Failed(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_id::GitOid;
    use crate::message::INLINE_BLOB_MAX;
    use crate::overlay::Entry;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    fn base() -> Base {
        Base::Commit(GitOid([1; 20]))
    }

    /// A snapshot of files `(path, n)` with content id `[n; 32]`.
    fn snap(files: &[(&str, u8)]) -> Snapshot {
        let o: Overlay = files
            .iter()
            .map(|(path, n)| {
                (
                    p(path),
                    Entry::File {
                        id: id(*n),
                        exec: false,
                        mode: None,
                    },
                )
            })
            .collect();
        Snapshot::new(base(), Arc::new(o))
    }

    fn blob(n: u8, len: usize) -> Blob {
        Blob {
            id: id(n),
            encoding: crate::compress::Encoding::Raw,
            raw_len: len as u64,
            data: vec![n; len],
        }
    }

    fn welcome(acked: Option<Ack>) -> ServerMsg {
        ServerMsg::Welcome {
            version: crate::PROTOCOL_VERSION,
            receiver: "r".into(),
            acked,
            worktree: "/w".into(),
        }
    }

    fn drain(s: &mut Sender) -> (Vec<ClientMsg>, Vec<SenderEvent>) {
        let frames = std::iter::from_fn(|| s.poll_transmit()).collect();
        let events = std::iter::from_fn(|| s.poll_event()).collect();
        (frames, events)
    }

    fn connected(acked: Option<Ack>, now: Instant) -> Sender {
        let mut s = Sender::new("alice", "tok");
        s.connect();
        s.handle_message(welcome(acked), now).unwrap();
        let (frames, events) = drain(&mut s);
        assert_eq!(
            frames,
            vec![ClientMsg::Hello {
                version: crate::PROTOCOL_VERSION,
                workspace: "alice".into(),
                token: "tok".into(),
            }]
        );
        assert!(matches!(events[..], [SenderEvent::Connected { .. }]));
        s
    }

    /// Start a sync of `snap`, answer the size and encode requests with
    /// `sizes` and blobs of those sizes; the frames sent.
    fn send(s: &mut Sender, snap: Snapshot, sizes: &[u64], now: Instant) -> Vec<ClientMsg> {
        s.start_sync(snap, now).unwrap();
        if let Some(Request::Measure(paths)) = s.poll_request() {
            assert_eq!(paths.len(), sizes.len());
            s.handle_sizes(sizes.iter().map(|n| Some(*n)).collect(), now)
                .unwrap();
        }
        if let Some(Request::Encode(items)) = s.poll_request() {
            let blobs = items.iter().map(|it| blob(it.id.0[0], 10)).collect();
            s.handle_encoded(Ok(blobs), now).unwrap();
        }
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn applied(generation: u64, snap: &Snapshot) -> ServerMsg {
        ServerMsg::Applied {
            ack: Ack {
                generation,
                digest: snap.digest,
                base: snap.base,
            },
            files_written: 1,
            apply_ms: 2,
        }
    }

    fn failed(s: &mut Sender) -> SyncError {
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        match events.last() {
            Some(SenderEvent::Failed(e)) => e.clone(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn first_sync_is_full_with_inline_blobs_and_report() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let sn = snap(&[("a", 1), ("b", 2)]);
        let frames = send(&mut s, sn.clone(), &[10, 10], now);
        let [
            ClientMsg::Changes {
                generation: 1,
                changes,
                blobs,
            },
            ClientMsg::Commit {
                generation: 1,
                parent: None,
                digest,
                entries: 2,
                ..
            },
        ] = &frames[..]
        else {
            panic!("unexpected frames {frames:?}");
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(
            blobs.iter().map(|b| b.id).collect::<Vec<_>>(),
            [id(1), id(2)]
        );
        assert_eq!(*digest, sn.digest);
        assert_eq!(s.in_flight().map(|a| a.generation), Some(1));
        s.handle_message(applied(1, &sn), now).unwrap();
        let (_, events) = drain(&mut s);
        assert_eq!(
            events,
            vec![SenderEvent::Synced(SyncReport {
                generation: 1,
                digest: sn.digest,
                files_written: 1,
                apply_ms: 2,
                blobs_inline: 2,
                blobs_requested: 0,
                full: true,
            })]
        );
        assert_eq!(s.acked().map(|a| a.generation), Some(1));
        assert_eq!(s.in_flight(), None);
    }

    #[test]
    fn delta_carries_previous_ids_for_patches() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let one = snap(&[("a", 1), ("b", 2)]);
        send(&mut s, one.clone(), &[10, 10], now);
        s.handle_message(applied(1, &one), now).unwrap();
        drain(&mut s);
        let two = snap(&[("a", 3), ("b", 2)]);
        s.start_sync(two, now).unwrap();
        assert_eq!(s.poll_request(), Some(Request::Measure(vec![p("a")])));
        s.handle_sizes(vec![Some(10)], now).unwrap();
        assert_eq!(
            s.poll_request(),
            Some(Request::Encode(vec![EncodeItem {
                path: p("a"),
                id: id(3),
                previous: Some(id(1)),
            }]))
        );
        s.handle_encoded(Ok(vec![blob(3, 10)]), now).unwrap();
        let (frames, _) = drain(&mut s);
        assert!(matches!(
            &frames[..],
            [
                ClientMsg::Changes { generation: 2, changes, .. },
                ClientMsg::Commit { generation: 2, parent: Some(1), entries: 2, .. }
            ] if changes.len() == 1 && changes[0].path == p("a")
        ));
    }

    #[test]
    fn adopts_the_receivers_state_and_sends_nothing() {
        let now = Instant::now();
        let sn = snap(&[("a", 1)]);
        let ack = Ack {
            generation: 41,
            digest: sn.digest,
            base: sn.base,
        };
        let mut s = connected(Some(ack), now);
        s.start_sync(sn, now).unwrap();
        let (frames, events) = drain(&mut s);
        assert!(frames.is_empty());
        assert_eq!(
            events,
            vec![SenderEvent::Adopted(ack), SenderEvent::UpToDate]
        );
        assert_eq!(s.poll_request(), None);
        assert_eq!(s.acked(), Some(ack));
        // The next change is a delta on generation 41, numbered 42.
        let frames = send(&mut s, snap(&[("a", 2)]), &[10], now);
        assert!(matches!(
            frames.last(),
            Some(ClientMsg::Commit {
                generation: 42,
                parent: Some(41),
                ..
            })
        ));
    }

    #[test]
    fn unknown_receiver_state_means_full_overlay_with_growing_generation() {
        let now = Instant::now();
        let other = Ack {
            generation: 9,
            digest: Digest([7; 32]),
            base: base(),
        };
        let mut s = Sender::new("alice", "tok");
        s.connect();
        s.handle_message(welcome(Some(other)), now).unwrap();
        let (_, events) = drain(&mut s);
        assert_eq!(
            events,
            vec![SenderEvent::Connected {
                receiver: "r".into(),
                worktree: "/w".into(),
                acked: Some(other),
                resumed: false,
            }]
        );
        let frames = send(&mut s, snap(&[("a", 1)]), &[10], now);
        assert!(matches!(
            frames.last(),
            Some(ClientMsg::Commit {
                generation: 10,
                parent: None,
                ..
            })
        ));
    }

    #[test]
    fn resumes_from_the_generation_in_flight_if_the_receiver_applied_it() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let one = snap(&[("a", 1)]);
        send(&mut s, one.clone(), &[10], now);
        s.handle_connection_lost("gone");
        assert_eq!(failed(&mut s), SyncError::Lost("gone".into()));
        assert!(!s.is_connected());
        let applied_ack = Ack {
            generation: 1,
            digest: one.digest,
            base: one.base,
        };
        s.connect();
        s.handle_message(welcome(Some(applied_ack)), now).unwrap();
        let (_, events) = drain(&mut s);
        assert!(matches!(
            events[..],
            [SenderEvent::Connected { resumed: true, .. }]
        ));
        assert_eq!(s.acked(), Some(applied_ack));
        s.start_sync(one, now).unwrap();
        let (frames, events) = drain(&mut s);
        assert!(frames.is_empty());
        assert_eq!(events, vec![SenderEvent::UpToDate]);
    }

    #[test]
    fn divergence_is_healed_once_with_a_full_resend() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let one = snap(&[("a", 1), ("b", 2)]);
        send(&mut s, one.clone(), &[10, 10], now);
        s.handle_message(applied(1, &one), now).unwrap();
        drain(&mut s);
        let two = snap(&[("a", 1), ("b", 3)]);
        send(&mut s, two.clone(), &[10], now);
        let reject = |code| ServerMsg::Rejected {
            generation: Some(2),
            code,
            message: "diverged".into(),
        };
        s.handle_message(reject(ErrorCode::DigestMismatch), now)
            .unwrap();
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            events,
            vec![SenderEvent::Resending {
                code: ErrorCode::DigestMismatch,
                message: "diverged".into()
            }]
        );
        assert_eq!(s.acked(), None);
        // The full overlay: both files measured, no previous ids.
        assert_eq!(
            s.poll_request(),
            Some(Request::Measure(vec![p("a"), p("b")]))
        );
        s.handle_sizes(vec![Some(10), Some(10)], now).unwrap();
        let Some(Request::Encode(items)) = s.poll_request() else {
            panic!("encode request expected");
        };
        assert!(items.iter().all(|i| i.previous.is_none()));
        s.handle_encoded(Ok(vec![blob(1, 10), blob(3, 10)]), now)
            .unwrap();
        let (frames, _) = drain(&mut s);
        assert!(matches!(
            frames.last(),
            Some(ClientMsg::Commit {
                generation: 2,
                parent: None,
                entries: 2,
                ..
            })
        ));
        // A second divergence in the same sync is reported.
        s.handle_message(reject(ErrorCode::OutOfSync), now).unwrap();
        assert_eq!(
            failed(&mut s),
            SyncError::Rejected {
                code: ErrorCode::OutOfSync,
                message: "diverged".into()
            }
        );
        assert!(s.is_connected(), "divergence does not close the connection");
        assert_eq!(s.in_flight(), None);
    }

    #[test]
    fn base_unavailable_is_its_own_outcome_and_keeps_the_connection() {
        let now = Instant::now();
        let mut s = connected(None, now);
        send(&mut s, snap(&[("a", 1)]), &[10], now);
        s.handle_message(
            ServerMsg::Rejected {
                generation: Some(1),
                code: ErrorCode::BaseUnavailable,
                message: "no such commit".into(),
            },
            now,
        )
        .unwrap();
        let e = failed(&mut s);
        assert_eq!(e, SyncError::BaseUnavailable("no such commit".into()));
        assert!(!e.closes_connection());
        assert!(s.is_connected());
        assert!(!s.is_syncing());
    }

    #[test]
    fn closing_refusals_close_the_connection() {
        let now = Instant::now();
        let mut s = connected(None, now);
        send(&mut s, snap(&[("a", 1)]), &[10], now);
        s.handle_message(
            ServerMsg::Rejected {
                generation: Some(1),
                code: ErrorCode::Storage,
                message: "disk full".into(),
            },
            now,
        )
        .unwrap();
        assert!(failed(&mut s).closes_connection());
        assert!(!s.is_connected());
        assert!(s.start_sync(snap(&[("a", 1)]), now).is_err());
    }

    #[test]
    fn need_sends_stashed_and_freshly_encoded_blobs_in_chunks() {
        let now = Instant::now();
        let mut s = connected(None, now);
        // "big" is a candidate whose encoding is too large for inline;
        // "huge" is too large on disk to be a candidate.
        let sn = snap(&[("big", 1), ("huge", 2), ("small", 3)]);
        s.start_sync(sn.clone(), now).unwrap();
        assert!(matches!(s.poll_request(), Some(Request::Measure(_))));
        let huge = plan::CANDIDATE_FILE_MAX + 1;
        s.handle_sizes(vec![Some(100_000), Some(huge), Some(5)], now)
            .unwrap();
        let Some(Request::Encode(items)) = s.poll_request() else {
            panic!("encode request expected");
        };
        assert_eq!(
            items.iter().map(|i| i.id).collect::<Vec<_>>(),
            [id(1), id(3)]
        );
        let big = blob(1, INLINE_BLOB_MAX + 1);
        s.handle_encoded(Ok(vec![big.clone(), blob(3, 5)]), now)
            .unwrap();
        let (frames, _) = drain(&mut s);
        assert!(matches!(
            &frames[0],
            ClientMsg::Changes { blobs, .. } if blobs.len() == 1 && blobs[0].id == id(3)
        ));
        s.handle_message(
            ServerMsg::Need {
                generation: 1,
                ids: vec![id(1), id(2)],
            },
            now,
        )
        .unwrap();
        // "big" is in the stash; only "huge" is read now.
        assert_eq!(
            s.poll_request(),
            Some(Request::Encode(vec![EncodeItem {
                path: p("huge"),
                id: id(2),
                previous: None,
            }]))
        );
        assert_eq!(s.poll_timeout(), None, "no deadline while encoding");
        let huge_blob = blob(2, 2 * CHUNK + 5);
        s.handle_encoded(Ok(vec![huge_blob.clone()]), now).unwrap();
        let (frames, events) = drain(&mut s);
        let chunks: Vec<(ContentId, u64, u64, usize)> = frames
            .iter()
            .map(|f| match f {
                ClientMsg::BlobChunk {
                    id,
                    total,
                    offset,
                    data,
                    ..
                } => (*id, *total, *offset, data.len()),
                other => panic!("chunk expected, got {other:?}"),
            })
            .collect();
        let big_len = big.data.len() as u64;
        let huge_len = huge_blob.data.len() as u64;
        assert_eq!(
            chunks,
            vec![
                (id(1), big_len, 0, big.data.len()),
                (id(2), huge_len, 0, CHUNK),
                (id(2), huge_len, CHUNK as u64, CHUNK),
                (id(2), huge_len, 2 * CHUNK as u64, 5),
            ]
        );
        let reassembled: Vec<u8> = frames
            .iter()
            .filter_map(|f| match f {
                ClientMsg::BlobChunk { id: i, data, .. } if *i == id(2) => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(reassembled, huge_blob.data);
        assert!(events.contains(&SenderEvent::BlobsRequested(vec![
            RequestedBlob {
                id: id(1),
                path: Some(p("big")),
                raw_len: Some(big.raw_len),
            },
            RequestedBlob {
                id: id(2),
                path: Some(p("huge")),
                raw_len: None,
            },
        ])));
        s.handle_message(applied(1, &sn), now).unwrap();
        let (_, events) = drain(&mut s);
        assert!(matches!(
            &events[..],
            [SenderEvent::Synced(r)] if r.blobs_inline == 1 && r.blobs_requested == 2
        ));
    }

    #[test]
    fn need_is_encoded_in_batches_of_sixteen() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, u8)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u8 + 1))
            .collect();
        s.start_sync(snap(&files), now).unwrap();
        assert!(matches!(s.poll_request(), Some(Request::Measure(_))));
        // Nothing is a candidate: everything is requested.
        s.handle_sizes(vec![Some(plan::CANDIDATE_FILE_MAX + 1); 20], now)
            .unwrap();
        drain(&mut s);
        let ids: Vec<ContentId> = (1..=20).map(id).collect();
        s.handle_message(
            ServerMsg::Need {
                generation: 1,
                ids: ids.clone(),
            },
            now,
        )
        .unwrap();
        let mut sent = Vec::new();
        for want in [16, 4] {
            let Some(Request::Encode(items)) = s.poll_request() else {
                panic!("encode request expected");
            };
            assert_eq!(items.len(), want);
            let blobs = items.iter().map(|i| blob(i.id.0[0], 3)).collect();
            s.handle_encoded(Ok(blobs), now).unwrap();
            for f in std::iter::from_fn(|| s.poll_transmit()) {
                if let ClientMsg::BlobChunk { id, .. } = f {
                    sent.push(id);
                }
            }
        }
        assert_eq!(sent, ids);
        assert_eq!(s.poll_timeout(), Some(now + ANSWER_TIMEOUT));
    }

    #[test]
    fn unknown_or_repeated_need_ids_fail_the_sync() {
        let now = Instant::now();
        for (ids, want) in [
            (vec![id(9)], "receiver asked for unknown blob"),
            (vec![id(1), id(1)], "receiver asked twice for blob"),
        ] {
            let mut s = connected(None, now);
            s.start_sync(snap(&[("a", 1)]), now).unwrap();
            s.poll_request();
            s.handle_sizes(vec![Some(plan::CANDIDATE_FILE_MAX + 1)], now)
                .unwrap();
            drain(&mut s);
            s.handle_message(ServerMsg::Need { generation: 1, ids }, now)
                .unwrap();
            if let Some(Request::Encode(items)) = s.poll_request() {
                assert_eq!(items.len(), 1, "a repeated id is encoded once");
                s.handle_encoded(Ok(vec![blob(1, 3)]), now).unwrap();
            }
            match failed(&mut s) {
                SyncError::Protocol(m) => assert!(m.starts_with(want), "{m}"),
                other => panic!("protocol error expected, got {other:?}"),
            }
            assert!(!s.is_connected());
        }
        // Asked again in a later Need of the same generation.
        let mut s = connected(None, now);
        s.start_sync(snap(&[("a", 1)]), now).unwrap();
        s.poll_request();
        s.handle_sizes(vec![Some(plan::CANDIDATE_FILE_MAX + 1)], now)
            .unwrap();
        drain(&mut s);
        let need = ServerMsg::Need {
            generation: 1,
            ids: vec![id(1)],
        };
        s.handle_message(need.clone(), now).unwrap();
        let Some(Request::Encode(_)) = s.poll_request() else {
            panic!("encode request expected");
        };
        s.handle_encoded(Ok(vec![blob(1, 3)]), now).unwrap();
        assert_eq!(drain(&mut s).0.len(), 1);
        s.handle_message(need, now).unwrap();
        assert_eq!(s.poll_request(), None, "nothing is encoded again");
        assert!(matches!(failed(&mut s), SyncError::Protocol(m) if m.contains("twice")));
    }

    #[test]
    fn applied_must_match_the_expected_ack() {
        let now = Instant::now();
        let mut s = connected(None, now);
        let sn = snap(&[("a", 1)]);
        send(&mut s, sn.clone(), &[10], now);
        s.handle_message(applied(2, &sn), now).unwrap();
        assert!(matches!(failed(&mut s), SyncError::Protocol(m) if m.starts_with("applied")));
        assert_eq!(s.acked(), None);
        assert_eq!(s.in_flight().map(|a| a.generation), Some(1));
    }

    #[test]
    fn answer_timeout_uses_the_clock_it_is_given() {
        let now = Instant::now();
        let mut s = connected(None, now);
        send(&mut s, snap(&[("a", 1)]), &[10], now);
        assert_eq!(s.poll_timeout(), Some(now + ANSWER_TIMEOUT));
        s.handle_timeout(now + ANSWER_TIMEOUT - Duration::from_millis(1));
        assert!(s.is_syncing());
        s.handle_timeout(now + ANSWER_TIMEOUT);
        assert_eq!(
            failed(&mut s),
            SyncError::Lost("no answer from the receiver within 600 s".into())
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn changed_file_fails_the_sync_before_anything_is_sent() {
        let now = Instant::now();
        let mut s = connected(None, now);
        s.start_sync(snap(&[("a", 1)]), now).unwrap();
        s.poll_request();
        s.handle_sizes(vec![Some(4)], now).unwrap();
        s.poll_request();
        s.handle_encoded(Err(EncodeError::Changed(p("a"))), now)
            .unwrap();
        let (frames, events) = drain(&mut s);
        assert!(frames.is_empty());
        assert_eq!(
            events,
            vec![SenderEvent::Failed(SyncError::Changed(p("a")))]
        );
        assert_eq!(s.in_flight(), None);
    }

    #[test]
    fn refusal_of_hello_and_misuse_are_reported() {
        let now = Instant::now();
        let mut s = Sender::new("alice", "bad");
        assert!(s.start_sync(snap(&[]), now).is_err());
        s.connect();
        s.handle_message(
            ServerMsg::Rejected {
                generation: None,
                code: ErrorCode::Unauthorized,
                message: "wrong token".into(),
            },
            now,
        )
        .unwrap();
        let (_, events) = drain(&mut s);
        assert_eq!(
            events,
            vec![SenderEvent::ConnectFailed(SyncError::Refused {
                code: ErrorCode::Unauthorized,
                message: "wrong token".into()
            })]
        );
        let err = s.handle_sizes(vec![], now).unwrap_err();
        assert_eq!(err.input, "handle_sizes");
        assert_eq!(err.state, "not connected");
        let mut s = connected(None, now);
        s.start_sync(snap(&[("a", 1)]), now).unwrap();
        assert!(s.start_sync(snap(&[("a", 1)]), now).is_err(), "busy");
        assert!(s.handle_encoded(Ok(vec![]), now).is_err(), "not asked yet");
        assert!(s.handle_sizes(vec![], now).is_err(), "wrong count");
    }

    #[test]
    fn empty_delta_is_one_empty_changes_frame_and_a_commit() {
        let now = Instant::now();
        let mut s = connected(None, now);
        // The empty overlay on a new base: nothing to measure or encode.
        let sn = Snapshot::new(Base::Uploaded, Arc::new(Overlay::new()));
        s.start_sync(sn, now).unwrap();
        assert_eq!(s.poll_request(), None);
        let (frames, _) = drain(&mut s);
        assert_eq!(
            frames,
            vec![
                ClientMsg::Changes {
                    generation: 1,
                    changes: vec![],
                    blobs: vec![]
                },
                ClientMsg::Commit {
                    generation: 1,
                    parent: None,
                    base: Base::Uploaded,
                    digest: Overlay::new().digest(),
                    entries: 0
                }
            ]
        );
    }
}

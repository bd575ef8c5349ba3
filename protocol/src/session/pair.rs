//! Test harness: a [`Sender`] and a [`Receiver`] wired together in memory,
//! every frame encoded with the real codec and decoded on the other side,
//! a fake clock, and fake I/O on both ends:
//!
//! - [`Laptop`]: a worktree (path → content) the sender's requests read
//!   and encode with the real zstd encoder, plus the patch references a
//!   daemon keeps;
//! - [`Cluster`]: the durable receiver state (acknowledged generation,
//!   overlay, blob store) that outlives connections, and a prepare/finish
//!   that behave like the real workspace: unknown blobs are reported
//!   missing, a parent other than the acknowledged generation is
//!   `OutOfSync`, a resulting overlay with another digest is
//!   `DigestMismatch`, blobs are decoded and verified.

use super::receiver::{Applied, AuthAnswer, CommitHeader, Incoming, Limits, ReceiverEvent};
use super::sender::{EncodeError, EncodeItem, Request, SenderEvent, Snapshot};
use super::{Receiver, Reject, Sender};
use crate::codec::{FrameDecoder, encode_frame};
use crate::compress::{self, BlobRef, Encoding};
use crate::content_id::{ContentId, GitOid};
use crate::message::{Ack, Base, Blob, ClientMsg, ErrorCode, MAX_FRAME, ServerMsg};
use crate::overlay::{Entry, Overlay};
use crate::path::RelPath;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const WORKSPACE: &str = "alice";
pub(super) const TOKEN: &str = "s3cret";
/// Time one frame takes to cross.
const HOP: Duration = Duration::from_millis(1);

pub(super) fn p(s: &str) -> RelPath {
    RelPath::new(s).expect("a valid test path")
}

/// A base commit the fake cluster can "fetch".
pub(super) fn base(n: u8) -> Base {
    Base::Commit(GitOid([n; 20]))
}

/// A path in the laptop's worktree, as far as the overlay is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum FakeEntry {
    File(Vec<u8>),
    Symlink(String),
    Deleted,
}

/// The laptop's side of the I/O.
#[derive(Default)]
pub(super) struct Laptop {
    pub(super) worktree: BTreeMap<RelPath, FakeEntry>,
    /// Raw content of every blob encoded, kept as patch references.
    pub(super) refs: HashMap<ContentId, Vec<u8>>,
    /// Every id encoded, in order.
    pub(super) encoded: Vec<ContentId>,
    /// Paths whose content changes right after it is measured (the file
    /// is edited during the sync).
    pub(super) edit_during_sync: Option<RelPath>,
}

impl Laptop {
    pub(super) fn write(&mut self, path: &str, content: impl Into<Vec<u8>>) -> ContentId {
        let content = content.into();
        let id = ContentId::of(&content);
        self.worktree.insert(p(path), FakeEntry::File(content));
        id
    }

    /// The overlay of the worktree.
    pub(super) fn overlay(&self) -> Overlay {
        self.worktree
            .iter()
            .map(|(path, e)| {
                let entry = match e {
                    FakeEntry::File(c) => Entry::File {
                        id: ContentId::of(c),
                        exec: false,
                        mode: None,
                    },
                    FakeEntry::Symlink(t) => Entry::Symlink { target: t.clone() },
                    FakeEntry::Deleted => Entry::Deleted,
                };
                (path.clone(), entry)
            })
            .collect()
    }

    fn content(&self, path: &RelPath) -> Option<&[u8]> {
        match self.worktree.get(path) {
            Some(FakeEntry::File(c)) => Some(c),
            _ => None,
        }
    }

    fn measure(&mut self, paths: &[RelPath]) -> Vec<Option<u64>> {
        let sizes = paths
            .iter()
            .map(|path| self.content(path).map(|c| c.len() as u64))
            .collect();
        if let Some(path) = self.edit_during_sync.take() {
            self.worktree
                .insert(path, FakeEntry::File(b"edited meanwhile".to_vec()));
        }
        sizes
    }

    fn encode(&mut self, items: &[EncodeItem]) -> Result<Vec<Blob>, EncodeError> {
        let mut out = Vec::new();
        for item in items {
            let data = match self.content(&item.path) {
                Some(c) if ContentId::of(c) == item.id => c.to_vec(),
                _ => return Err(EncodeError::Changed(item.path.clone())),
            };
            let reference = item.previous.and_then(|id| {
                self.refs
                    .get(&id)
                    .map(|d| (BlobRef::Overlay(id), d.as_slice()))
            });
            let (encoding, bytes) = compress::encode(&data, reference);
            self.encoded.push(item.id);
            self.refs.insert(item.id, data.clone());
            out.push(Blob {
                id: item.id,
                encoding,
                raw_len: data.len() as u64,
                data: bytes,
            });
        }
        Ok(out)
    }
}

/// The receiver's durable state and its fake workspace I/O.
#[derive(Default)]
pub(super) struct Cluster {
    pub(super) acked: Option<Ack>,
    pub(super) overlay: Overlay,
    pub(super) blobs: HashMap<ContentId, Vec<u8>>,
    /// Bases the cluster cannot fetch.
    pub(super) unfetchable: HashSet<Base>,
    /// Refusals `prepare` / `finish` return instead of doing their work.
    pub(super) fail_prepare: VecDeque<Reject>,
    pub(super) fail_finish: VecDeque<Reject>,
    /// Every blob stored after a `Need`, by generation.
    pub(super) stored: Vec<(u64, ContentId)>,
    /// The generation prepared and not yet finished.
    pending: Option<(CommitHeader, Overlay, Vec<ContentId>)>,
    /// The encoded bytes of the blob whose chunks are arriving.
    spool: Vec<u8>,
}

impl Cluster {
    fn auth(&self, workspace: &str, token: &str) -> AuthAnswer {
        if workspace != WORKSPACE {
            AuthAnswer::UnknownWorkspace
        } else if token != TOKEN {
            AuthAnswer::WrongToken
        } else {
            AuthAnswer::Accepted {
                receiver: "fake-receiver".into(),
                acked: self.acked,
                worktree: "/data/alice/worktree".into(),
            }
        }
    }

    fn prepare(
        &mut self,
        header: CommitHeader,
        incoming: Incoming,
    ) -> Result<Vec<ContentId>, Reject> {
        if let Some(r) = self.fail_prepare.pop_front() {
            return Err(r);
        }
        let acked = self.acked.map(|a| a.generation);
        if header.parent.is_some() && header.parent != acked {
            let m = format!("delta is relative to {:?}, have {acked:?}", header.parent);
            return Err(Reject::new(ErrorCode::OutOfSync, m));
        }
        let mut overlay = if header.parent.is_some() {
            self.overlay.clone()
        } else {
            Overlay::new()
        };
        overlay.apply(&incoming.changes);
        if overlay.len() as u64 != header.entries || overlay.digest() != header.digest {
            return Err(Reject::new(ErrorCode::DigestMismatch, "digest differs"));
        }
        if self.unfetchable.contains(&header.base) {
            return Err(Reject::new(ErrorCode::BaseUnavailable, "cannot fetch"));
        }
        for blob in incoming.blobs {
            self.store(blob)?;
        }
        let mut seen = HashSet::new();
        let missing: Vec<ContentId> = overlay
            .blob_ids()
            .filter(|id| seen.insert(*id) && !self.blobs.contains_key(id))
            .collect();
        self.pending = Some((header, overlay, missing.clone()));
        Ok(missing)
    }

    /// Decode, verify and keep a blob.
    fn store(&mut self, blob: Blob) -> Result<(), Reject> {
        let bad = |m: String| Reject::new(ErrorCode::BadBlob, m);
        let reference = match blob.encoding {
            Encoding::ZstdPatch {
                reference: BlobRef::Overlay(id),
            } => Some(
                self.blobs
                    .get(&id)
                    .ok_or_else(|| bad(format!("reference {id} unavailable")))?
                    .clone(),
            ),
            Encoding::ZstdPatch { .. } => return Err(bad("no base blobs here".into())),
            _ => None,
        };
        let data = compress::decode(
            blob.encoding,
            &blob.data,
            blob.raw_len,
            reference.as_deref(),
            1 << 30,
        )
        .map_err(|e| bad(e.to_string()))?;
        if ContentId::of(&data) != blob.id {
            return Err(bad(format!("blob {} does not match its id", blob.id)));
        }
        self.blobs.insert(blob.id, data);
        Ok(())
    }

    fn finish(&mut self) -> Result<Applied, Reject> {
        let (header, overlay, missing) = self.pending.take().expect("a prepared generation");
        if let Some(r) = self.fail_finish.pop_front() {
            return Err(r);
        }
        if let Some(id) = missing.iter().find(|id| !self.blobs.contains_key(id)) {
            return Err(Reject::new(ErrorCode::BadBlob, format!("{id} never came")));
        }
        let files = Overlay::diff(&self.overlay, &overlay).len() as u64;
        let ack = Ack {
            generation: header.generation,
            digest: header.digest,
            base: header.base,
        };
        let keep: HashSet<ContentId> = overlay.blob_ids().collect();
        self.blobs.retain(|id, _| keep.contains(id));
        self.acked = Some(ack);
        self.overlay = overlay;
        Ok(Applied {
            ack,
            files_written: files,
            apply_ms: 0,
        })
    }
}

/// A sender and a receiver on one fake connection, with their I/O.
pub(super) struct Pair {
    pub(super) now: Instant,
    pub(super) sender: Sender,
    /// The receiver end of the current connection, if any.
    pub(super) receiver: Option<Receiver>,
    pub(super) limits: Limits,
    pub(super) laptop: Laptop,
    pub(super) cluster: Cluster,
    /// Every frame the receiver decoded, over all connections.
    pub(super) client_frames: Vec<ClientMsg>,
    /// Every frame the sender decoded, over all connections.
    pub(super) server_frames: Vec<ServerMsg>,
    /// Every sender event.
    pub(super) events: Vec<SenderEvent>,
    /// Frames (either way) the current connection carries before it is cut.
    pub(super) cut_after: Option<usize>,
    /// The sender's snapshot of the sync in progress.
    snap: Option<Snapshot>,
    to_receiver: FrameDecoder,
    to_sender: FrameDecoder,
}

impl Pair {
    pub(super) fn new() -> Self {
        Self {
            now: Instant::now(),
            sender: Sender::new(WORKSPACE, TOKEN),
            receiver: None,
            limits: Limits::default(),
            laptop: Laptop::default(),
            cluster: Cluster::default(),
            client_frames: Vec::new(),
            server_frames: Vec::new(),
            events: Vec::new(),
            cut_after: None,
            snap: None,
            to_receiver: FrameDecoder::new(MAX_FRAME),
            to_sender: FrameDecoder::new(MAX_FRAME),
        }
    }

    /// The daemon restarts: a fresh sender that knows nothing.
    pub(super) fn restart_daemon(&mut self) {
        self.drop_connection("daemon restarted");
        self.sender = Sender::new(WORKSPACE, TOKEN);
        self.laptop.refs.clear();
    }

    /// The connection dies; both ends notice.
    pub(super) fn drop_connection(&mut self, reason: &str) {
        self.receiver = None;
        self.to_receiver = FrameDecoder::new(MAX_FRAME);
        self.to_sender = FrameDecoder::new(MAX_FRAME);
        self.sender.handle_connection_lost(reason);
        self.cut_after = None;
        self.collect_events();
        // The cluster drops a prepared generation it never finished.
        self.cluster.pending = None;
    }

    /// Open a connection and exchange Hello / Welcome. Returns the
    /// sender's event about it.
    pub(super) fn connect(&mut self) -> SenderEvent {
        let seen = self.events.len();
        self.sender.connect();
        self.receiver = Some(Receiver::with_limits(self.limits, self.now));
        self.drive();
        self.events[seen..]
            .iter()
            .find(|e| {
                matches!(
                    e,
                    SenderEvent::Connected { .. } | SenderEvent::ConnectFailed(_)
                )
            })
            .cloned()
            .expect("the connection attempt ends with an event")
    }

    /// The snapshot of the laptop's worktree on `base`.
    pub(super) fn snapshot(&self, base: Base) -> Snapshot {
        Snapshot::new(base, Arc::new(self.laptop.overlay()))
    }

    /// Sync the worktree on `base(1)` (connecting first if needed); the
    /// event that ended the sync.
    pub(super) fn sync(&mut self) -> SenderEvent {
        self.sync_on(base(1))
    }

    pub(super) fn sync_on(&mut self, b: Base) -> SenderEvent {
        if !self.sender.is_connected()
            && let SenderEvent::ConnectFailed(e) = self.connect()
        {
            return SenderEvent::Failed(e);
        }
        let seen = self.events.len();
        let snap = self.snapshot(b);
        self.snap = Some(snap.clone());
        self.sender
            .start_sync(snap, self.now)
            .expect("a connected sender starts a sync");
        self.drive();
        self.events[seen..]
            .iter()
            .find(|e| {
                matches!(
                    e,
                    SenderEvent::Synced(_) | SenderEvent::UpToDate | SenderEvent::Failed(_)
                )
            })
            .cloned()
            .expect("the sync ends with an event")
    }

    /// Move frames and answer I/O until nothing moves.
    pub(super) fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(msg) = self.sender.poll_transmit() {
                moved = true;
                if self.receiver.is_some() {
                    self.to_receiver.push(&encode_frame(&msg));
                    self.hop();
                }
            }
            moved |= self.receiver_step();
            moved |= self.sender_step();
            if !moved {
                return;
            }
        }
    }

    /// One frame crossed: advance the clock, and cut the connection if it
    /// has carried its allowance.
    fn hop(&mut self) {
        self.now += HOP;
    }

    fn tick_cut(&mut self) -> bool {
        match &mut self.cut_after {
            Some(0) => {
                self.drop_connection("connection cut");
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    fn receiver_step(&mut self) -> bool {
        let mut moved = false;
        while self.receiver.is_some() {
            let decoded = self.to_receiver.decode::<ClientMsg>();
            let r = self.receiver.as_mut().expect("checked");
            match decoded {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    moved = true;
                    if self.tick_cut() {
                        return true;
                    }
                    self.client_frames.push(msg.clone());
                    let r = self.receiver.as_mut().expect("not cut");
                    if !r.is_closed() {
                        r.handle_message(msg, self.now)
                            .expect("the harness answers every request before the next frame");
                    }
                }
                Err(e) => {
                    moved = true;
                    r.handle_bad_frame(Reject::from(&e));
                }
            }
            self.receiver_io();
        }
        let Some(r) = self.receiver.as_mut() else {
            return moved;
        };
        while let Some(msg) = r.poll_transmit() {
            moved = true;
            self.to_sender.push(&encode_frame(&msg));
        }
        if r.is_closed() && self.to_sender.buffered() == 0 {
            // Everything written: the receiver closes the stream.
            self.receiver = None;
            self.sender
                .handle_connection_lost("receiver closed the stream");
            self.collect_events();
            moved = true;
        }
        moved
    }

    fn receiver_io(&mut self) {
        let Some(r) = self.receiver.as_mut() else {
            return;
        };
        while let Some(ev) = r.poll_event() {
            let now = self.now;
            match ev {
                ReceiverEvent::Authenticate { workspace, token } => {
                    let answer = self.cluster.auth(&workspace, &token);
                    r.handle_auth(answer).expect("asked to authenticate");
                }
                ReceiverEvent::SideStream(_) => {}
                ReceiverEvent::Prepare { header, incoming } => {
                    let res = self.cluster.prepare(header, incoming);
                    r.handle_prepared(res, now).expect("asked to prepare");
                }
                ReceiverEvent::StoreChunk(part) => {
                    if part.is_first() {
                        self.cluster.spool.clear();
                    }
                    self.cluster.spool.extend_from_slice(&part.data);
                    let mut res = Ok(());
                    if part.is_last() {
                        let blob = Blob {
                            id: part.id,
                            encoding: part.encoding,
                            raw_len: part.raw_len,
                            data: std::mem::take(&mut self.cluster.spool),
                        };
                        res = self.cluster.store(blob);
                        if res.is_ok() {
                            let generation = r.generation().expect("receiving a generation");
                            self.cluster.stored.push((generation, part.id));
                        }
                    }
                    r.handle_chunk_stored(res, now).expect("asked to store");
                }
                ReceiverEvent::Finish { .. } => {
                    let res = self.cluster.finish();
                    r.handle_finished(res).expect("asked to finish");
                }
                ReceiverEvent::Claim { .. } => {
                    // The sender machine never claims (its driver does).
                    let answer = super::ClaimAnswer::Granted {
                        since: 0,
                        previous: None,
                    };
                    r.handle_claim(answer).expect("asked to claim");
                }
                ReceiverEvent::Abandoned { .. } => self.cluster.pending = None,
                // The sender machine never releases (its driver does).
                ReceiverEvent::Release => {}
            }
        }
    }

    fn sender_step(&mut self) -> bool {
        let mut moved = false;
        loop {
            let msg = match self.to_sender.decode::<ServerMsg>() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => panic!("the receiver sent an undecodable frame: {e}"),
            };
            moved = true;
            self.hop();
            if self.tick_cut() {
                return true;
            }
            self.server_frames.push(msg.clone());
            self.sender
                .handle_message(msg, self.now)
                .expect("the sender takes frames while waiting for them");
            self.sender_io();
        }
        moved |= self.sender_io();
        moved
    }

    /// Answer the sender's requests; collect its events.
    fn sender_io(&mut self) -> bool {
        let mut moved = false;
        while let Some(req) = self.sender.poll_request() {
            moved = true;
            match req {
                Request::Measure(paths) => {
                    let sizes = self.laptop.measure(&paths);
                    self.sender.handle_sizes(sizes, self.now).expect("asked");
                }
                Request::Encode(items) => {
                    let res = self.laptop.encode(&items);
                    self.sender.handle_encoded(res, self.now).expect("asked");
                }
            }
        }
        self.collect_events();
        moved
    }

    fn collect_events(&mut self) {
        while let Some(ev) = self.sender.poll_event() {
            if let SenderEvent::Synced(_) = &ev
                && let Some(snap) = &self.snap
            {
                // The daemon keeps only the current overlay's blobs.
                let keep: HashSet<ContentId> = snap.overlay.blob_ids().collect();
                self.laptop.refs.retain(|id, _| keep.contains(id));
            }
            self.events.push(ev);
        }
    }

    /// Client frames sent since frame `from`, by kind, e.g. for asserting
    /// the frame plan: `["Changes", "Commit", "BlobChunk"]`.
    pub(super) fn kinds(&self, from: usize) -> Vec<&'static str> {
        self.client_frames[from..].iter().map(kind).collect()
    }

    /// Assert that the receiver holds exactly the laptop's worktree: same
    /// overlay, same digest, and every file's content.
    pub(super) fn assert_converged(&self, b: Base) {
        let overlay = self.laptop.overlay();
        assert_eq!(self.cluster.overlay, overlay, "receiver's overlay");
        let ack = self.cluster.acked.expect("the receiver acknowledged");
        assert_eq!(ack.digest, overlay.digest());
        assert_eq!(ack.base, b);
        assert_eq!(self.sender.acked(), Some(ack), "sender's acked state");
        for (path, e) in &self.laptop.worktree {
            if let FakeEntry::File(c) = e {
                let id = ContentId::of(c);
                assert_eq!(self.cluster.blobs.get(&id), Some(c), "content of {path}");
            }
        }
    }

    /// Assert that no blob crossed twice within one attempt (one `Commit`
    /// and the `Changes` and chunks around it).
    pub(super) fn assert_no_blob_sent_twice(&self) {
        let mut sent: HashSet<ContentId> = HashSet::new();
        let mut committed = false;
        for f in &self.client_frames {
            match f {
                ClientMsg::Hello { .. } => sent.clear(),
                ClientMsg::Changes { blobs, .. } => {
                    if std::mem::take(&mut committed) {
                        sent.clear();
                    }
                    for b in blobs {
                        assert!(sent.insert(b.id), "blob {} sent twice inline", b.id);
                    }
                }
                ClientMsg::Commit { .. } => committed = true,
                ClientMsg::BlobChunk { id, offset: 0, .. } => {
                    assert!(sent.insert(*id), "blob {id} sent twice in one generation");
                }
                _ => {}
            }
        }
    }
}

pub(super) fn kind(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Hello { .. } => "Hello",
        ClientMsg::Changes { .. } => "Changes",
        ClientMsg::Commit { .. } => "Commit",
        ClientMsg::BlobChunk { .. } => "BlobChunk",
        ClientMsg::Subscribe => "Subscribe",
        ClientMsg::Logs { .. } => "Logs",
        ClientMsg::Claim { .. } => "Claim",
        ClientMsg::Retry { .. } => "Retry",
        ClientMsg::Remove => "Remove",
        ClientMsg::Abandon { .. } => "Abandon",
        ClientMsg::Release => "Release",
        ClientMsg::Exec { .. } => "Exec",
        ClientMsg::ExecInput { .. } => "ExecInput",
        ClientMsg::ExecResize(_) => "ExecResize",
        ClientMsg::Secrets { .. } => "Secrets",
    }
}

/// `n` bytes that zstd cannot shrink much (a simple xorshift stream).
pub(super) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

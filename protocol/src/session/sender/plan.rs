//! The plan of one generation, as pure data: its number and parent, the
//! delta against the acknowledged overlay, which files are encoded up
//! front and which of those ride inline, the frames that carry it, and the
//! bookkeeping of what the receiver asked for.

use super::{EncodeItem, RequestedBlob, Snapshot};
use crate::content_id::ContentId;
use crate::message::{Ack, Blob, CHANGES_PER_FRAME, ClientMsg, INLINE_BLOB_MAX, INLINE_TOTAL_MAX};
use crate::overlay::{Change, Entry, Overlay};
use crate::path::RelPath;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Files up to this size on disk are encoded as inline candidates.
pub(super) const CANDIDATE_FILE_MAX: u64 = 4 * INLINE_BLOB_MAX as u64;
/// Candidates stop once their sizes on disk reach this total.
const CANDIDATE_TOTAL_MAX: u64 = 4 * INLINE_TOTAL_MAX as u64;

/// An acknowledged (or expected) ack and the overlay it stands for.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub(super) ack: Ack,
    pub(super) overlay: Arc<Overlay>,
}

/// Where a generation is.
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for the sizes of the files to encode.
    Measuring,
    /// Waiting for the encoded inline candidates.
    EncodingInline,
    /// Frames are out; waiting for the receiver until `deadline`.
    Awaiting { deadline: Instant },
    /// Waiting for the encoded blobs of the current `Need` batch.
    EncodingRequested,
}

/// One generation on its way.
#[derive(Debug)]
pub(super) struct Generation {
    /// The ack `Applied` must carry, and the overlay it stands for.
    pub(super) expected: Known,
    pub(super) parent: Option<u64>,
    /// The acknowledged overlay the delta starts from (empty when full).
    old: Arc<Overlay>,
    /// The delta; taken when the frames are built.
    changes: Vec<Change>,
    /// Content id → a path with that content (the last one in the delta).
    by_id: HashMap<ContentId, RelPath>,
    /// Each content id with the first path that has it, in delta order.
    unique: Vec<(RelPath, ContentId)>,
    candidates: Vec<(RelPath, ContentId)>,
    /// Encoded blobs not sent inline, kept for the receiver's `Need`.
    stash: HashMap<ContentId, Blob>,
    /// Ids the receiver asked for in this generation.
    asked: HashSet<ContentId>,
    /// `Need` batches not handled yet, and the one being encoded.
    pub(super) batches: VecDeque<Vec<ContentId>>,
    pub(super) current: Vec<ContentId>,
    pub(super) phase: Phase,
    pub(super) blobs_inline: u64,
    pub(super) blobs_requested: u64,
}

impl Generation {
    /// The generation that brings a receiver at `acked` (`None`: unknown)
    /// to `snap`. Its number follows both what this sender saw
    /// acknowledged and what the receiver last reported, so numbers only
    /// grow, also across daemon restarts.
    pub(super) fn new(snap: &Snapshot, acked: Option<&Known>, remote_ack: Option<Ack>) -> Self {
        let (parent, old) = match acked {
            Some(k) => (Some(k.ack.generation), k.overlay.clone()),
            None => (None, Arc::new(Overlay::new())),
        };
        let last = acked
            .map(|k| k.ack.generation)
            .max(remote_ack.map(|a| a.generation));
        let generation = last.unwrap_or(0) + 1;
        let changes = Overlay::diff(&old, &snap.overlay);
        let mut by_id = HashMap::new();
        let mut unique = Vec::new();
        for c in &changes {
            if let Some(Entry::File { id, .. }) = &c.entry
                && by_id.insert(*id, c.path.clone()).is_none()
            {
                unique.push((c.path.clone(), *id));
            }
        }
        Self {
            expected: Known {
                ack: Ack {
                    generation,
                    digest: snap.digest,
                    base: snap.base,
                },
                overlay: snap.overlay.clone(),
            },
            parent,
            old,
            changes,
            by_id,
            unique,
            candidates: Vec::new(),
            stash: HashMap::new(),
            asked: HashSet::new(),
            batches: VecDeque::new(),
            current: Vec::new(),
            phase: Phase::Measuring,
            blobs_inline: 0,
            blobs_requested: 0,
        }
    }

    /// The files whose sizes decide the inline candidates (one per id).
    pub(super) fn to_measure(&self) -> Vec<RelPath> {
        self.unique.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Pick the inline candidates from the sizes of [`Self::to_measure`]
    /// (`None`: unreadable, counted as empty): files small enough on disk,
    /// until their total reaches a bound. `None` if the count is wrong.
    pub(super) fn pick_candidates(&mut self, sizes: Vec<Option<u64>>) -> Option<Vec<EncodeItem>> {
        if sizes.len() != self.unique.len() {
            return None;
        }
        let mut candidate_bytes = 0u64;
        for ((path, id), size) in self.unique.iter().zip(sizes) {
            let len = size.unwrap_or(0);
            if len <= CANDIDATE_FILE_MAX && candidate_bytes < CANDIDATE_TOTAL_MAX {
                candidate_bytes += len;
                self.candidates.push((path.clone(), *id));
            }
        }
        Some(
            self.candidates
                .iter()
                .map(|(path, id)| self.encode_item(path, *id))
                .collect(),
        )
    }

    /// The ids the pending encode request was for, in order.
    pub(super) fn encoding(&self) -> Vec<ContentId> {
        match self.phase {
            Phase::EncodingInline => self.candidates.iter().map(|(_, id)| *id).collect(),
            Phase::EncodingRequested => self.todo_ids(),
            _ => Vec::new(),
        }
    }

    /// Keep the encoded candidates: those small enough ride inline (within
    /// the per-sync total), the rest wait for the receiver's `Need`.
    pub(super) fn split_inline(&mut self, blobs: Vec<Blob>) -> Vec<Blob> {
        let mut inline = Vec::new();
        let mut inline_bytes = 0;
        for blob in blobs {
            if blob.data.len() <= INLINE_BLOB_MAX
                && inline_bytes + blob.data.len() <= INLINE_TOTAL_MAX
            {
                inline_bytes += blob.data.len();
                inline.push(blob);
            } else {
                self.stash.insert(blob.id, blob);
            }
        }
        self.blobs_inline = inline.len() as u64;
        inline
    }

    /// The frames of the delta: `Changes` frames of at most
    /// [`CHANGES_PER_FRAME`] changes (one empty frame if there are none),
    /// the inline blobs on the last one, then the `Commit`.
    pub(super) fn frames(&mut self, inline: Vec<Blob>, snap: &Snapshot) -> Vec<ClientMsg> {
        let generation = self.expected.ack.generation;
        let mut out = Vec::new();
        let mut inline = Some(inline);
        let mut changes = std::mem::take(&mut self.changes).into_iter().peekable();
        loop {
            let chunk: Vec<Change> = changes.by_ref().take(CHANGES_PER_FRAME).collect();
            let last = changes.peek().is_none();
            let blobs = if last {
                inline.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push(ClientMsg::Changes {
                generation,
                changes: chunk,
                blobs,
            });
            if last {
                break;
            }
        }
        out.push(ClientMsg::Commit {
            generation,
            parent: self.parent,
            base: snap.base,
            digest: snap.digest,
            entries: snap.overlay.len() as u64,
        });
        out
    }

    /// Note a `Need` for `ids`: what the progress report says about them.
    pub(super) fn need(&mut self, ids: &[ContentId]) -> Vec<RequestedBlob> {
        self.blobs_requested += ids.len() as u64;
        self.batches
            .extend(ids.chunks(super::NEED_BATCH).map(<[ContentId]>::to_vec));
        ids.iter()
            .map(|id| RequestedBlob {
                id: *id,
                path: self.by_id.get(id).cloned(),
                raw_len: self.stash.get(id).map(|b| b.raw_len),
            })
            .collect()
    }

    /// The first id of `batch` this generation never offered.
    pub(super) fn unknown(&self, batch: &[ContentId]) -> Option<ContentId> {
        batch
            .iter()
            .find(|id| !self.stash.contains_key(id) && !self.by_id.contains_key(id))
            .copied()
    }

    /// Ids of the current batch that still need encoding, each once, in
    /// order (not stashed, not already sent on request).
    pub(super) fn todo_ids(&self) -> Vec<ContentId> {
        let mut seen = HashSet::new();
        self.current
            .iter()
            .filter(|id| {
                !self.stash.contains_key(id) && !self.asked.contains(id) && seen.insert(**id)
            })
            .copied()
            .collect()
    }

    /// What to encode for `ids` (all of them known).
    pub(super) fn encode_items(&self, ids: &[ContentId]) -> Vec<EncodeItem> {
        ids.iter()
            .map(|id| self.encode_item(&self.by_id[id], *id))
            .collect()
    }

    /// Keep blobs encoded on request.
    pub(super) fn stash(&mut self, blobs: Vec<Blob>) {
        for blob in blobs {
            self.stash.insert(blob.id, blob);
        }
    }

    /// The blob to send for a requested `id`; `None` if the receiver
    /// already asked for it in this generation.
    pub(super) fn take_requested(&mut self, id: ContentId) -> Option<Blob> {
        match self.stash.remove(&id) {
            Some(blob) if self.asked.insert(id) => Some(blob),
            _ => None,
        }
    }

    fn encode_item(&self, path: &RelPath, id: ContentId) -> EncodeItem {
        let previous = match self.old.get(path) {
            Some(Entry::File { id, .. }) => Some(*id),
            _ => None,
        };
        EncodeItem {
            path: path.clone(),
            id,
            previous,
        }
    }
}

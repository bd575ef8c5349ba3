//! Wire fidelity: the laptop's frames, as the daemon's inline sync code
//! computed them before the [`Sender`] existed, transcribed as a pure
//! function (file sizes and encodings passed in), and a property test that
//! the machine sends exactly the same frames, in the same order, for the
//! same inputs: the delta, the inline blobs, the `Commit`, and the chunks
//! answering a `Need`.

use super::Sender;
use super::sender::{Request, SenderEvent, Snapshot};
use crate::compress::Encoding;
use crate::content_id::{ContentId, GitOid};
use crate::message::{
    Ack, Base, Blob, CHANGES_PER_FRAME, CHUNK, ClientMsg, INLINE_BLOB_MAX, INLINE_TOTAL_MAX,
    ServerMsg,
};
use crate::overlay::{Digest, Entry, Overlay};
use crate::path::RelPath;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The inputs that decide the frames: the size on disk of each content id
/// (its encoding is that many bytes), and the previous content of a path
/// in the acknowledged overlay (it only changes the encoding's bytes).
fn encode(
    path: &RelPath,
    id: &ContentId,
    previous: Option<ContentId>,
    sizes: &HashMap<ContentId, u64>,
) -> Blob {
    let len = sizes[id] as usize;
    let mut data = vec![id.0[0]; len];
    if let (Some(p), Some(first)) = (previous, data.first_mut()) {
        *first = p.0[0] ^ path.as_str().len() as u8;
    }
    Blob {
        id: *id,
        encoding: Encoding::Raw,
        raw_len: len as u64,
        data,
    }
}

/// Today's `send_generation`, minus the I/O, up to the `Commit`; then its
/// answer to one `Need` of `need`.
fn legacy_frames(
    acked: Option<&(Ack, Arc<Overlay>)>,
    remote_ack: Option<Ack>,
    snap: &Snapshot,
    sizes: &HashMap<ContentId, u64>,
    need: &[ContentId],
) -> Vec<ClientMsg> {
    let (parent, old) = match acked {
        Some(k) => (Some(k.0.generation), k.1.clone()),
        None => (None, Arc::new(Overlay::new())),
    };
    let last = acked
        .map(|k| k.0.generation)
        .max(remote_ack.map(|a| a.generation));
    let generation = last.unwrap_or(0) + 1;
    let previous = |rel: &RelPath| match old.get(rel) {
        Some(Entry::File { id, .. }) => Some(*id),
        _ => None,
    };
    let changes = Overlay::diff(&old, &snap.overlay);
    let mut by_id: HashMap<ContentId, RelPath> = HashMap::new();
    let mut candidates = Vec::new();
    let mut candidate_bytes = 0u64;
    for c in &changes {
        if let Some(Entry::File { id, .. }) = &c.entry {
            if by_id.insert(*id, c.path.clone()).is_some() {
                continue;
            }
            let len = sizes[id];
            if len <= 4 * INLINE_BLOB_MAX as u64 && candidate_bytes < 4 * INLINE_TOTAL_MAX as u64 {
                candidate_bytes += len;
                candidates.push((c.path.clone(), *id));
            }
        }
    }
    let mut inline = Vec::new();
    let mut inline_bytes = 0;
    let mut stash: HashMap<ContentId, Blob> = HashMap::new();
    for (rel, id) in &candidates {
        let blob = encode(rel, id, previous(rel), sizes);
        if blob.data.len() <= INLINE_BLOB_MAX && inline_bytes + blob.data.len() <= INLINE_TOTAL_MAX
        {
            inline_bytes += blob.data.len();
            inline.push(blob);
        } else {
            stash.insert(blob.id, blob);
        }
    }
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
    frames.push(ClientMsg::Commit {
        generation,
        parent,
        base: snap.base,
        digest: snap.digest,
        entries: snap.overlay.len() as u64,
    });
    for batch in need.chunks(16) {
        for id in batch {
            if !stash.contains_key(id) {
                let rel = by_id[id].clone();
                let blob = encode(&rel, id, previous(&rel), sizes);
                stash.insert(blob.id, blob);
            }
        }
        for id in batch {
            let blob = stash.remove(id).expect("asked once");
            let total = blob.data.len() as u64;
            let mut offset = 0usize;
            loop {
                let end = (offset + CHUNK).min(blob.data.len());
                frames.push(ClientMsg::BlobChunk {
                    id: blob.id,
                    encoding: blob.encoding,
                    raw_len: blob.raw_len,
                    total,
                    offset: offset as u64,
                    data: blob.data[offset..end].to_vec(),
                });
                offset = end;
                if offset >= blob.data.len() {
                    break;
                }
            }
        }
    }
    frames
}

/// Drive a sender through one sync of `snap` with the same inputs; the
/// frames it sends.
fn machine_frames(
    s: &mut Sender,
    snap: &Snapshot,
    sizes: &HashMap<ContentId, u64>,
    need: &[ContentId],
    now: Instant,
) -> Vec<ClientMsg> {
    s.start_sync(snap.clone(), now).expect("connected");
    let mut frames = Vec::new();
    let mut needed = false;
    loop {
        frames.extend(std::iter::from_fn(|| s.poll_transmit()));
        if let Some(req) = s.poll_request() {
            match req {
                Request::Measure(paths) => {
                    let by_path: HashMap<RelPath, ContentId> = snap
                        .overlay
                        .iter()
                        .filter_map(|(p, e)| match e {
                            Entry::File { id, .. } => Some((p.clone(), *id)),
                            _ => None,
                        })
                        .collect();
                    let got = paths.iter().map(|p| Some(sizes[&by_path[p]])).collect();
                    s.handle_sizes(got, now).expect("asked");
                }
                Request::Encode(items) => {
                    let blobs = items
                        .iter()
                        .map(|i| encode(&i.path, &i.id, i.previous, sizes))
                        .collect();
                    s.handle_encoded(Ok(blobs), now).expect("asked");
                }
            }
            continue;
        }
        if needed || need.is_empty() {
            return frames;
        }
        needed = true;
        let msg = ServerMsg::Need {
            generation: 0,
            ids: need.to_vec(),
        };
        s.handle_message(msg, now)
            .expect("waiting for the receiver");
    }
}

fn arb_overlay() -> impl Strategy<Value = Overlay> {
    let entry = prop_oneof![
        6 => (0u8..8).prop_map(|n| Entry::File { id: ContentId([n; 32]), exec: n % 5 == 0, mode: None }),
        1 => "[a-z]{1,4}".prop_map(|target| Entry::Symlink { target }),
        1 => Just(Entry::Deleted),
    ];
    prop::collection::btree_map("[a-d]{1,2}(/[a-d]{1,2})?", entry, 0..14).prop_map(|m| {
        m.into_iter()
            .map(|(p, e)| (RelPath::new(p).expect("valid path"), e))
            .collect()
    })
}

/// Sizes on disk per content id: mostly small, some too large to ride
/// inline, some too large to be candidates, some over a chunk.
fn arb_sizes() -> impl Strategy<Value = HashMap<ContentId, u64>> {
    let size = prop_oneof![
        3 => 0u64..2_000,
        2 => 60_000u64..70_000,
        2 => 200_000u64..300_000,
        1 => (CHUNK as u64)..(CHUNK as u64 + 5_000),
    ];
    prop::collection::vec(size, 8).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(n, s)| (ContentId([n as u8; 32]), s))
            .collect()
    })
}

fn base() -> Base {
    Base::Commit(GitOid([7; 20]))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_machine_sends_the_same_frames_as_the_inline_code(
        old in arb_overlay(),
        new in arb_overlay(),
        sizes in arb_sizes(),
        acked_before in any::<bool>(),
        remote_generation in 0u64..5,
        need_mask in any::<u32>(),
    ) {
        let now = Instant::now();
        let old_snap = Snapshot::new(base(), Arc::new(old));
        let snap = Snapshot::new(base(), Arc::new(new));
        prop_assume!(old_snap.digest != snap.digest);
        let mut s = Sender::new("w", "t");
        s.connect();
        let hello = s.poll_transmit();
        prop_assert!(matches!(hello, Some(ClientMsg::Hello { .. })), "{:?}", hello);
        let remote = (remote_generation > 0).then(|| Ack {
            generation: remote_generation,
            digest: Digest([9; 32]),
            base: base(),
        });
        s.handle_message(ServerMsg::Welcome {
            version: crate::PROTOCOL_VERSION,
            receiver: "r".into(),
            acked: remote,
            worktree: "/w".into(),
        }, now).expect("welcome");
        // Either the sender knows the receiver has `old`, or nothing.
        let acked = if acked_before {
            machine_frames(&mut s, &old_snap, &sizes, &[], now);
            let ack = Ack {
                generation: s.in_flight().expect("in flight").generation,
                digest: old_snap.digest,
                base: base(),
            };
            s.handle_message(ServerMsg::Applied { ack, files_written: 0, apply_ms: 0 }, now)
                .expect("applied");
            Some((ack, old_snap.overlay.clone()))
        } else {
            None
        };
        while s.poll_event().is_some() {}
        // The receiver lacks some of the delta's blobs, in overlay order.
        let delta = Overlay::diff(
            acked.as_ref().map_or(&Overlay::new(), |k| &k.1),
            &snap.overlay,
        );
        let mut need: Vec<ContentId> = Vec::new();
        for c in &delta {
            if let Some(Entry::File { id, .. }) = &c.entry
                && !need.contains(id)
                && need_mask & (1 << (id.0[0] % 32)) != 0
            {
                need.push(*id);
            }
        }
        let remote_now = acked.as_ref().map(|k| k.0).or(remote);
        let want = legacy_frames(acked.as_ref(), remote_now, &snap, &sizes, &need);
        let got = machine_frames(&mut s, &snap, &sizes, &need, now);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g, w);
        }
        let ev = s.poll_event();
        prop_assert!(matches!(ev, Some(SenderEvent::BlobsRequested(_)) | None), "{:?}", ev);
    }
}

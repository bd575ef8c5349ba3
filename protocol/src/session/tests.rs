//! Scenarios and properties of the whole exchange: a sender and a receiver
//! talking through [`super::pair::Pair`] (real frames, fake clock, fake
//! worktree and fake receiver workspace).

use super::pair::*;
use super::receiver::Limits;
use super::sender::{ANSWER_TIMEOUT, SenderEvent, SyncError, SyncReport};
use super::{Receiver, Reject, Sender};
use crate::content_id::ContentId;
use crate::message::{Ack, Base, CHANGES_PER_FRAME, CHUNK, ClientMsg, ErrorCode, ServerMsg};
use crate::overlay::Entry;
use proptest::prelude::*;

fn synced(e: SenderEvent) -> SyncReport {
    match e {
        SenderEvent::Synced(r) => r,
        other => panic!("expected a successful sync, got {other:?}"),
    }
}

fn needs(pair: &Pair, from: usize) -> Vec<Vec<ContentId>> {
    pair.server_frames[from..]
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Need { ids, .. } => Some(ids.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn first_sync_then_delta_then_nothing() {
    let mut pair = Pair::new();
    pair.laptop.write("src/a.rs", "fn a() {}");
    pair.laptop.write("src/b.rs", "fn b() {}");
    pair.laptop
        .worktree
        .insert(p("gone.txt"), FakeEntry::Deleted);
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full, r.blobs_inline), (1, true, 2));
    assert_eq!(r.blobs_requested, 0);
    assert_eq!(pair.kinds(0), ["Hello", "Changes", "Commit"]);
    pair.assert_converged(base(1));

    let mark = pair.client_frames.len();
    let new_b = pair.laptop.write("src/b.rs", "fn b() { todo!() }");
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full, r.blobs_inline), (2, false, 1));
    let ClientMsg::Changes { changes, blobs, .. } = &pair.client_frames[mark] else {
        panic!("a Changes frame first");
    };
    assert_eq!(changes.len(), 1, "only the edited file");
    assert_eq!(changes[0].path, p("src/b.rs"));
    assert_eq!(blobs[0].id, new_b);
    assert!(matches!(
        pair.client_frames[mark + 1],
        ClientMsg::Commit {
            generation: 2,
            parent: Some(1),
            ..
        }
    ));
    pair.assert_converged(base(1));

    let mark = pair.client_frames.len();
    assert_eq!(pair.sync(), SenderEvent::UpToDate);
    assert_eq!(pair.client_frames.len(), mark, "nothing sent");
}

#[test]
fn a_restarted_daemon_adopts_the_receivers_state_and_keeps_numbering() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    synced(pair.sync());
    pair.laptop.write("a", "two");
    synced(pair.sync());
    pair.restart_daemon();
    let mark = pair.client_frames.len();
    assert!(matches!(
        pair.connect(),
        SenderEvent::Connected {
            resumed: false,
            acked: Some(Ack { generation: 2, .. }),
            ..
        }
    ));
    assert_eq!(pair.sync(), SenderEvent::UpToDate);
    assert!(
        pair.events
            .iter()
            .any(|e| matches!(e, SenderEvent::Adopted(a) if a.generation == 2))
    );
    assert_eq!(pair.kinds(mark), ["Hello"]);
    // The next edit is a delta numbered after the receiver's generation.
    pair.laptop.write("b", "new");
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full), (3, false));
    pair.assert_converged(base(1));
}

#[test]
fn a_restarted_daemon_with_other_changes_sends_the_full_overlay() {
    let mut pair = Pair::new();
    pair.laptop.write("big", noise(1, 100_000));
    pair.laptop.write("a", "one");
    synced(pair.sync());
    pair.restart_daemon();
    pair.laptop.write("a", "two");
    let mark = pair.server_frames.len();
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full), (2, true));
    // The receiver still has "big": the full resend does not upload it.
    assert!(needs(&pair, mark).is_empty());
    assert_eq!(r.blobs_requested, 0);
    pair.assert_converged(base(1));
}

#[test]
fn connection_lost_after_apply_resumes_without_resending() {
    let mut pair = Pair::new();
    pair.connect();
    pair.laptop.write("a", "one");
    // Changes and Commit reach the receiver; its Applied is lost.
    pair.cut_after = Some(2);
    assert_eq!(
        pair.sync(),
        SenderEvent::Failed(SyncError::Lost("connection cut".into()))
    );
    assert_eq!(pair.cluster.acked.map(|a| a.generation), Some(1));
    assert_eq!(pair.sender.acked(), None);
    assert!(matches!(
        pair.connect(),
        SenderEvent::Connected { resumed: true, .. }
    ));
    let mark = pair.client_frames.len();
    assert_eq!(pair.sync(), SenderEvent::UpToDate);
    assert_eq!(pair.client_frames.len(), mark);
    pair.assert_converged(base(1));
}

#[test]
fn connection_lost_before_apply_resends_the_same_generation() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    synced(pair.sync());
    pair.laptop.write("a", "two");
    pair.cut_after = Some(1); // only the Changes frame arrives
    assert!(matches!(
        pair.sync(),
        SenderEvent::Failed(SyncError::Lost(_))
    ));
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full), (2, false));
    pair.assert_converged(base(1));
    pair.assert_no_blob_sent_twice();
}

#[test]
fn out_of_sync_is_healed_with_a_full_resend() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    pair.laptop.write("big", noise(2, 100_000));
    synced(pair.sync());
    // Another daemon moved the workspace on meanwhile.
    let ack = pair.cluster.acked.expect("acked");
    pair.cluster.acked = Some(Ack {
        generation: 7,
        ..ack
    });
    pair.laptop.write("a", "two");
    let mark = pair.server_frames.len();
    let r = synced(pair.sync());
    assert!(r.full);
    assert!(pair.events.iter().any(|e| matches!(
        e,
        SenderEvent::Resending {
            code: ErrorCode::OutOfSync,
            ..
        }
    )));
    assert!(matches!(
        pair.server_frames[mark],
        ServerMsg::Rejected {
            code: ErrorCode::OutOfSync,
            ..
        }
    ));
    assert!(needs(&pair, mark).is_empty(), "the receiver had big");
    pair.assert_converged(base(1));
}

#[test]
fn digest_mismatch_is_healed_with_a_full_resend() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    pair.laptop.write("b", noise(3, 100_000));
    synced(pair.sync());
    // The receiver's overlay lost an entry behind everyone's back.
    pair.cluster.overlay.remove(&p("a"));
    pair.laptop.write("c", "three");
    let r = synced(pair.sync());
    assert_eq!((r.generation, r.full), (2, true));
    assert!(pair.events.iter().any(|e| matches!(
        e,
        SenderEvent::Resending {
            code: ErrorCode::DigestMismatch,
            ..
        }
    )));
    pair.assert_converged(base(1));
}

#[test]
fn divergence_twice_in_one_sync_is_reported_and_the_next_sync_works() {
    let mut pair = Pair::new();
    pair.connect();
    pair.laptop.write("a", "one");
    for _ in 0..2 {
        pair.cluster
            .fail_prepare
            .push_back(Reject::new(ErrorCode::OutOfSync, "moved"));
    }
    assert_eq!(
        pair.sync(),
        SenderEvent::Failed(SyncError::Rejected {
            code: ErrorCode::OutOfSync,
            message: "moved".into()
        })
    );
    assert!(pair.sender.is_connected());
    assert_eq!(
        pair.kinds(0),
        ["Hello", "Changes", "Commit", "Changes", "Commit"]
    );
    synced(pair.sync());
    pair.assert_converged(base(1));
}

#[test]
fn base_unavailable_then_uploaded_base() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    pair.cluster.unfetchable.insert(base(2));
    assert_eq!(
        pair.sync_on(base(2)),
        SenderEvent::Failed(SyncError::BaseUnavailable("cannot fetch".into()))
    );
    assert!(pair.sender.is_connected());
    assert_eq!(pair.cluster.acked, None);
    let r = synced(pair.sync_on(Base::Uploaded));
    assert_eq!(r.generation, 1);
    pair.assert_converged(Base::Uploaded);
}

#[test]
fn blobs_larger_than_a_chunk_cross_in_chunks() {
    let mut pair = Pair::new();
    let big = noise(4, 2 * CHUNK + 100);
    let id = pair.laptop.write("big.bin", big.clone());
    let mid = pair.laptop.write("mid.bin", noise(5, 100_000));
    pair.laptop.write("small", "x");
    let r = synced(pair.sync());
    assert_eq!((r.blobs_inline, r.blobs_requested), (1, 2));
    assert_eq!(needs(&pair, 0), vec![vec![id, mid]]);
    let chunks: Vec<(u64, usize)> = pair
        .client_frames
        .iter()
        .filter_map(|f| match f {
            ClientMsg::BlobChunk {
                id: i,
                offset,
                data,
                ..
            } if *i == id => Some((*offset, data.len())),
            _ => None,
        })
        .collect();
    let n = chunks.len();
    assert!(n >= 3, "{n} chunks");
    assert!(
        chunks
            .iter()
            .enumerate()
            .all(|(i, (o, _))| *o == (i * CHUNK) as u64)
    );
    assert!(chunks[..n - 1].iter().all(|(_, len)| *len == CHUNK));
    assert_eq!(pair.cluster.blobs.get(&id), Some(&big));
    // The mid-size blob was encoded once, as an inline candidate, and sent
    // from the stash.
    assert_eq!(pair.laptop.encoded.iter().filter(|i| **i == mid).count(), 1);
    pair.assert_converged(base(1));
}

#[test]
fn edits_to_a_large_file_are_sent_as_patches() {
    let mut pair = Pair::new();
    // Small enough on disk to be encoded up front, too large to ride
    // inline in full: the first sync uploads it on request.
    let mut content = noise(6, 200_000);
    pair.laptop.write("f", content.clone());
    assert_eq!(synced(pair.sync()).blobs_requested, 1);
    content[1000] ^= 0xff;
    let id = pair.laptop.write("f", content);
    let mark = pair.client_frames.len();
    synced(pair.sync());
    let blob = pair.client_frames[mark..].iter().find_map(|f| match f {
        ClientMsg::Changes { blobs, .. } => blobs.iter().find(|b| b.id == id).cloned(),
        _ => None,
    });
    let blob = blob.expect("the patch is small enough to ride inline");
    assert!(matches!(
        blob.encoding,
        crate::compress::Encoding::ZstdPatch { .. }
    ));
    assert!(blob.data.len() < 10_000, "{} bytes", blob.data.len());
    pair.assert_converged(base(1));
}

#[test]
fn many_changes_are_split_into_frames_with_inline_blobs_last() {
    let mut pair = Pair::new();
    for i in 0..CHANGES_PER_FRAME {
        pair.laptop
            .worktree
            .insert(p(&format!("l/{i:05}")), FakeEntry::Symlink("t".into()));
    }
    let id = pair.laptop.write("z", "last");
    synced(pair.sync());
    assert_eq!(pair.kinds(0), ["Hello", "Changes", "Changes", "Commit"]);
    let sizes: Vec<(usize, Vec<ContentId>)> = pair.client_frames[1..3]
        .iter()
        .map(|f| match f {
            ClientMsg::Changes { changes, blobs, .. } => {
                (changes.len(), blobs.iter().map(|b| b.id).collect())
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(sizes, vec![(CHANGES_PER_FRAME, vec![]), (1, vec![id])]);
    pair.assert_converged(base(1));
}

#[test]
fn a_file_edited_during_the_sync_fails_it_and_a_rescan_succeeds() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    pair.laptop.edit_during_sync = Some(p("a"));
    assert_eq!(pair.sync(), SenderEvent::Failed(SyncError::Changed(p("a"))));
    assert!(pair.sender.is_connected(), "the connection stays up");
    assert_eq!(pair.kinds(0), ["Hello"], "nothing but Hello was sent");
    synced(pair.sync());
    assert_eq!(
        pair.cluster.overlay.get(&p("a")),
        pair.laptop.overlay().get(&p("a"))
    );
    assert_eq!(pair.kinds(0).iter().filter(|k| **k == "Hello").count(), 1);
    pair.assert_converged(base(1));
}

/// A requested (large) file that changed before the receiver asked for it:
/// the sender abandons the generation the receiver holds open, the
/// connection stays, and the next generation (same number) applies.
#[test]
fn a_requested_file_edited_during_the_sync_is_abandoned_without_reconnecting() {
    let mut pair = Pair::new();
    pair.laptop.write("big", noise(4, 300_000));
    pair.laptop.write("small", "s");
    pair.laptop.edit_during_sync = Some(p("big"));
    assert_eq!(
        pair.sync(),
        SenderEvent::Failed(SyncError::Changed(p("big")))
    );
    assert!(pair.sender.is_connected(), "the connection stays up");
    assert_eq!(pair.kinds(0), ["Hello", "Changes", "Commit", "Abandon"]);
    assert_eq!(pair.cluster.overlay.len(), 0, "nothing was applied");
    let r = synced(pair.sync());
    assert_eq!(r.generation, 1, "the abandoned number is used again");
    assert_eq!(pair.kinds(0).iter().filter(|k| **k == "Hello").count(), 1);
    pair.assert_converged(base(1));
}

#[test]
fn a_closing_refusal_drops_the_connection_and_the_next_sync_reconnects() {
    let mut pair = Pair::new();
    pair.laptop.write("a", "one");
    pair.cluster
        .fail_finish
        .push_back(Reject::new(ErrorCode::Storage, "disk full"));
    let e = pair.sync();
    assert_eq!(
        e,
        SenderEvent::Failed(SyncError::Rejected {
            code: ErrorCode::Storage,
            message: "disk full".into()
        })
    );
    assert!(!pair.sender.is_connected());
    pair.drop_connection("daemon dropped it");
    synced(pair.sync());
    assert_eq!(pair.kinds(0).iter().filter(|k| **k == "Hello").count(), 2);
    pair.assert_converged(base(1));
}

#[test]
fn wrong_token_is_refused_at_connect() {
    let mut pair = Pair::new();
    pair.sender = Sender::new(WORKSPACE, "guess");
    assert_eq!(
        pair.connect(),
        SenderEvent::ConnectFailed(SyncError::Refused {
            code: ErrorCode::Unauthorized,
            message: format!(
                "wrong token for workspace {WORKSPACE:?}; re-pair with the receiver's pairing file"
            ),
        })
    );
    assert!(!pair.sender.is_connected());
    assert!(pair.receiver.is_none(), "the receiver closed the stream");
}

#[test]
fn silent_peers_time_out_on_both_ends() {
    // A receiver that never hears Hello.
    let now = std::time::Instant::now();
    let mut r = Receiver::with_limits(Limits::default(), now);
    let deadline = r.poll_timeout().expect("a Hello deadline");
    r.handle_timeout(deadline);
    assert!(matches!(
        r.poll_transmit(),
        Some(ServerMsg::Rejected {
            generation: None,
            code: ErrorCode::Malformed,
            ..
        })
    ));
    assert!(r.is_closed());
    // A sender whose receiver goes quiet after the Commit.
    let mut pair = Pair::new();
    pair.connect();
    pair.laptop.write("a", "one");
    pair.cut_after = Some(2);
    let snap = pair.snapshot(base(1));
    pair.sender.start_sync(snap, pair.now).expect("connected");
    // The harness answers the sender's requests without delivering any
    // answer from the receiver: the Commit is swallowed.
    while let Some(req) = pair.sender.poll_request() {
        match req {
            super::Request::Measure(paths) => pair
                .sender
                .handle_sizes(vec![Some(3); paths.len()], pair.now)
                .expect("asked"),
            super::Request::Encode(items) => {
                let blobs = items
                    .iter()
                    .map(|i| crate::message::Blob {
                        id: i.id,
                        encoding: crate::compress::Encoding::Raw,
                        raw_len: 3,
                        data: b"one".to_vec(),
                    })
                    .collect();
                pair.sender
                    .handle_encoded(Ok(blobs), pair.now)
                    .expect("asked")
            }
        }
    }
    let deadline = pair
        .sender
        .poll_timeout()
        .expect("waiting for the receiver");
    assert_eq!(deadline, pair.now + ANSWER_TIMEOUT);
    pair.sender.handle_timeout(deadline);
    assert!(matches!(
        pair.sender.poll_event(),
        Some(SenderEvent::Failed(SyncError::Lost(_)))
    ));
}

// Property tests: random edits, dropped connections, daemon restarts and
// injected refusals; after a final clean sync the receiver holds the
// laptop's worktree, and no blob ever crossed twice in one generation.

/// A few contents: small text (inline), mid-size noise (requested), and
/// one larger than a chunk.
fn content(n: u8) -> Vec<u8> {
    match n % 10 {
        0..=5 => format!("file content {n}\n")
            .repeat(usize::from(n % 4) + 1)
            .into_bytes(),
        6 | 7 => noise(u64::from(n), 80_000),
        8 => {
            let mut c = noise(8, 200_000);
            c[7] = n;
            c
        }
        _ => noise(9, CHUNK + 10),
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Set path `path % 6` to a file with `content(n)`, a symlink, a
    /// deletion of a base file, or drop it from the overlay.
    Edit {
        path: u8,
        what: u8,
        n: u8,
    },
    Sync,
    /// The next sync's connection carries only `frames` frames.
    Cut {
        frames: u8,
    },
    RestartDaemon,
    /// The next prepare or finish is refused with this code.
    Refuse {
        at_finish: bool,
        code: u8,
    },
    /// The receiver's state moves behind the daemon's back.
    Diverge {
        digest: bool,
    },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, 0u8..4, 0u8..40).prop_map(|(path, what, n)| Step::Edit { path, what, n }),
        4 => Just(Step::Sync),
        1 => (0u8..8).prop_map(|frames| Step::Cut { frames }),
        1 => Just(Step::RestartDaemon),
        1 => (any::<bool>(), 0u8..5).prop_map(|(at_finish, code)| Step::Refuse { at_finish, code }),
        1 => any::<bool>().prop_map(|digest| Step::Diverge { digest }),
    ]
}

const CODES: [ErrorCode; 5] = [
    ErrorCode::OutOfSync,
    ErrorCode::DigestMismatch,
    ErrorCode::Storage,
    ErrorCode::Internal,
    ErrorCode::BadPath,
];

fn apply_step(pair: &mut Pair, step: &Step) {
    match *step {
        Step::Edit { path, what, n } => {
            let path = p(&format!("d{}/f{}", path % 2, path));
            let entry = match what {
                0 | 1 => Some(FakeEntry::File(content(n))),
                2 => Some(FakeEntry::Symlink(format!("t{n}"))),
                _ if n % 2 == 0 => Some(FakeEntry::Deleted),
                _ => None,
            };
            match entry {
                Some(e) => pair.laptop.worktree.insert(path, e),
                None => pair.laptop.worktree.remove(&path),
            };
        }
        Step::Sync => {
            let mark = pair.client_frames.len();
            // What the sender knew the receiver had (a fresh daemon
            // learns it from the Welcome).
            let known = pair.sender.remote_ack().or(pair.cluster.acked);
            let e = pair.sync();
            match e {
                SenderEvent::UpToDate => {
                    let sent = pair.kinds(mark);
                    assert!(
                        sent.iter().all(|k| *k == "Hello"),
                        "up to date sent {sent:?}"
                    );
                    let ack = pair.cluster.acked.expect("up to date means acked");
                    assert_eq!(ack.digest, pair.laptop.overlay().digest());
                }
                SenderEvent::Synced(r) => {
                    assert_eq!(Some(r.digest), pair.cluster.acked.map(|a| a.digest));
                    assert_eq!(pair.cluster.overlay, pair.laptop.overlay());
                    let before = known.map_or(0, |a| a.generation);
                    assert!(r.generation > before, "generations only grow");
                }
                SenderEvent::Failed(_) => {}
                other => panic!("unexpected end of a sync: {other:?}"),
            }
            if !pair.sender.is_connected() {
                pair.drop_connection("closed after a failure");
            }
        }
        Step::Cut { frames } => pair.cut_after = Some(usize::from(frames)),
        Step::RestartDaemon => pair.restart_daemon(),
        Step::Refuse { at_finish, code } => {
            let r = Reject::new(CODES[usize::from(code) % CODES.len()], "injected");
            if at_finish {
                pair.cluster.fail_finish.push_back(r);
            } else {
                pair.cluster.fail_prepare.push_back(r);
            }
        }
        Step::Diverge { digest } => {
            if let Some(ack) = pair.cluster.acked {
                if digest {
                    let first = pair.cluster.overlay.iter().next().map(|(p, _)| p.clone());
                    match first {
                        Some(path) => {
                            pair.cluster.overlay.remove(&path);
                        }
                        None => {
                            pair.cluster.overlay.insert(p("stray"), Entry::Deleted);
                        }
                    }
                } else {
                    pair.cluster.acked = Some(Ack {
                        generation: ack.generation + 5,
                        ..ack
                    });
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        // Keep regressions out of the source tree; a failure prints its case.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn syncs_converge_with_bounded_work(steps in prop::collection::vec(arb_step(), 1..24)) {
        let mut pair = Pair::new();
        for step in &steps {
            apply_step(&mut pair, step);
        }
        // A clean run: no more injected faults, and one more edit so the
        // last sync really talks to the receiver (a receiver whose state
        // was changed behind the daemon's back is only found out then).
        pair.cluster.fail_prepare.clear();
        pair.cluster.fail_finish.clear();
        pair.cut_after = None;
        pair.laptop.write("final", "last edit");
        let last = pair.sync();
        prop_assert!(matches!(last, SenderEvent::Synced(_)), "final sync: {:?}", last);
        pair.assert_converged(base(1));
        pair.assert_no_blob_sent_twice();
        // Now the receiver has the state: nothing more crosses, also for
        // a fresh daemon.
        let mark = pair.client_frames.len();
        prop_assert_eq!(pair.sync(), SenderEvent::UpToDate);
        pair.restart_daemon();
        prop_assert_eq!(pair.sync(), SenderEvent::UpToDate);
        prop_assert_eq!(pair.kinds(mark), vec!["Hello"]);
    }
}

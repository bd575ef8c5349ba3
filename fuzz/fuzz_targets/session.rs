//! The receiver's side of the sync exchange fed whatever a laptop (or
//! anyone who reaches the port) sends: frames decoded as the receiver's
//! session loop decodes them, handed to the protocol's `Receiver`, whose
//! requests a lenient driver answers (every workspace and token accepted,
//! no digest or content id check, so the fuzzer gets past them into blob
//! transfer and apply). No input may make the machine report a driver
//! misuse, and the overlay checks must agree with each other.
#![no_main]

use devd_protocol::compress::{self, BlobRef};
use devd_protocol::message::Ack;
use devd_protocol::message::Blob;
use devd_protocol::session::{
    Applied, AuthAnswer, ClaimAnswer, Limits, Receiver, ReceiverEvent, Reject,
};
use devd_protocol::tree::BaseTree;
use devd_protocol::view::{View, ViewError};
use devd_protocol::{
    ClientMsg, ContentId, Encoding, ErrorCode, FrameDecoder, Overlay, encode_frame,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let limits = Limits {
        hello_timeout: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        max_changes: 64,
        max_inline_bytes: 4096,
        max_blob: 4096,
        max_held_bytes: 1 << 20,
    };
    let mut m = Receiver::with_limits(limits, start);
    let mut dec = FrameDecoder::new(1 << 16);
    dec.push(data);
    let mut overlay = Overlay::new();
    let mut pending: Option<Overlay> = None;
    let mut stored = HashMap::new();
    let mut spool = Vec::new();
    let mut now = start;
    loop {
        if drive(
            &mut m,
            &mut overlay,
            &mut pending,
            &mut stored,
            &mut spool,
            now,
        ) == Driven::SideStream
        {
            // The driver serves the stream from here on.
            return;
        }
        while let Some(msg) = m.poll_transmit() {
            encode_frame(&msg);
        }
        if m.is_closed() {
            assert!(m.poll_event().is_none());
            return;
        }
        match dec.decode::<ClientMsg>() {
            Ok(Some(msg)) => {
                // Every message is a second later: enough of them stall a
                // transfer or miss the Hello deadline.
                now += Duration::from_secs(1);
                m.handle_timeout(now);
                if m.is_closed() {
                    continue;
                }
                if m.handle_message(msg, now).is_err() {
                    // Only while the driver owes an answer, which it never does here.
                    panic!("a message was refused as a driver misuse");
                }
            }
            Ok(None) => {
                m.handle_stream_end();
                drive(
                    &mut m,
                    &mut overlay,
                    &mut pending,
                    &mut stored,
                    &mut spool,
                    now,
                );
                return;
            }
            Err(e) => {
                m.handle_bad_frame(Reject::from(&e));
                drive(
                    &mut m,
                    &mut overlay,
                    &mut pending,
                    &mut stored,
                    &mut spool,
                    now,
                );
                return;
            }
        }
    }
});

#[derive(PartialEq)]
enum Driven {
    Answered,
    SideStream,
}

/// Answer every request the machine has, as a receiver would but without
/// the checks a fuzzer cannot pass (token, digest, content ids).
fn drive(
    m: &mut Receiver,
    overlay: &mut Overlay,
    pending: &mut Option<Overlay>,
    stored: &mut HashMap<ContentId, Vec<u8>>,
    spool: &mut Vec<u8>,
    now: Instant,
) -> Driven {
    while let Some(ev) = m.poll_event() {
        let r = match ev {
            ReceiverEvent::Authenticate { .. } => m.handle_auth(AuthAnswer::Accepted {
                receiver: "fuzz".into(),
                acked: None,
                worktree: "/w".into(),
            }),
            ReceiverEvent::SideStream(_) => return Driven::SideStream,
            ReceiverEvent::Prepare { header, incoming } => {
                let mut next = if header.parent.is_some() {
                    overlay.clone()
                } else {
                    Overlay::new()
                };
                next.apply(&incoming.changes);
                let answer = incoming
                    .blobs
                    .iter()
                    .try_for_each(|b| store(stored, b))
                    .and_then(|()| check(&next))
                    .map(|()| {
                        let mut missing: Vec<ContentId> = next
                            .blob_ids()
                            .filter(|id| !stored.contains_key(id))
                            .collect();
                        missing.sort_by_key(|id| id.0);
                        missing.dedup();
                        missing
                    });
                if answer.is_ok() {
                    *pending = Some(next);
                }
                m.handle_prepared(answer, now)
            }
            ReceiverEvent::StoreChunk(part) => {
                // The chunks of one blob, gathered as the receiver spools
                // them; the last one decodes and stores the blob.
                if part.is_first() {
                    spool.clear();
                }
                spool.extend_from_slice(&part.data);
                let r = if part.is_last() {
                    let blob = Blob {
                        id: part.id,
                        encoding: part.encoding,
                        raw_len: part.raw_len,
                        data: std::mem::take(spool),
                    };
                    store(stored, &blob)
                } else {
                    Ok(())
                };
                m.handle_chunk_stored(r, now)
            }
            ReceiverEvent::Claim { .. } => m.handle_claim(ClaimAnswer::Granted {
                since: 0,
                previous: None,
            }),
            ReceiverEvent::Abandoned { .. } => {
                *pending = None;
                Ok(())
            }
            // The driver gives the claim up and ends the connection.
            ReceiverEvent::Release => Ok(()),
            ReceiverEvent::Finish { generation } => {
                let next = pending.take().expect("a finished generation was prepared");
                let digest = next.digest();
                *overlay = next;
                m.handle_finished(Ok(Applied {
                    ack: Ack {
                        generation,
                        base: devd_protocol::message::Base::Uploaded,
                        digest,
                    },
                    files_written: 0,
                    apply_ms: 0,
                }))
            }
        };
        r.expect("the driver answers what it was asked");
    }
    Driven::Answered
}

/// Decode a blob (against the overlay blob it names as its reference, if
/// stored) and keep it under its id, which is not checked.
fn store(stored: &mut HashMap<ContentId, Vec<u8>>, blob: &Blob) -> Result<(), Reject> {
    let reference = match blob.encoding {
        Encoding::ZstdPatch {
            reference: BlobRef::Overlay(id),
        } => stored.get(&id).map(Vec::as_slice),
        _ => None,
    };
    let out = compress::decode(blob.encoding, &blob.data, blob.raw_len, reference, 4096)
        .map_err(|e| Reject::new(ErrorCode::BadBlob, e.to_string()))?;
    assert_eq!(out.len() as u64, blob.raw_len);
    stored.insert(blob.id, out);
    Ok(())
}

/// The receiver's check of a new overlay on an empty base tree; the
/// overlay's own conflict check must agree with it.
fn check(next: &Overlay) -> Result<(), Reject> {
    let tree = BaseTree::new();
    let view = View {
        tree: &tree,
        overlay: next,
    };
    let v = view.validate();
    // A bad symlink target is reported first; the conflict check below
    // only compares verdicts on the paths.
    if !matches!(v, Err(ViewError::BadSymlink { .. })) {
        assert_eq!(
            next.conflicting_path().is_some(),
            v.is_err(),
            "Overlay::conflicting_path and View::validate disagree: {v:?}"
        );
    }
    v.map_err(|e| Reject::new(ErrorCode::BadPath, e.to_string()))
}

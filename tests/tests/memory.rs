//! The receiver's memory is bounded whatever an authenticated laptop sends:
//! a 2 GB file arrives with the real `devd-receiver` process under 256 MB
//! resident (blobs are spooled to disk and decoded and hashed as a
//! stream), and a change list of a million long paths is refused with a
//! clear error before it costs more (a session holds a bounded number of
//! bytes of changes).
//!
//! The peak is the kernel's own record of the process's largest resident
//! set (`VmHWM` in `/proc/PID/status`), so no spike between two samples
//! can hide. The client is this test speaking the raw protocol, so that
//! only the receiver's memory is in question (the laptop reads files
//! itself).

use devd_protocol::message::{Base, CHANGES_PER_FRAME, CHUNK, MAX_FRAME};
use devd_protocol::{
    Change, ClientMsg, ContentId, Encoding, Entry, ErrorCode, FrameDecoder, GitOid, Overlay,
    PROTOCOL_VERSION, RelPath, ServerMsg, encode_frame,
};
use devd_tests::{Fixture, Receiver};
use std::io::Read;
use std::time::{Duration, Instant};

/// The ceiling the issue sets for the receiver process.
const CEILING: u64 = 256 << 20;
/// The large file: 2 GiB.
const BIG: u64 = 2 << 30;
/// Entries in the large change list, and the length of each path.
const ENTRIES: usize = 1_000_000;
const PATH_LEN: usize = 200;

/// One authenticated connection and its stream.
struct Client {
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl Client {
    async fn login(rx: &Receiver<'_>) -> (Client, Option<u64>) {
        let pairing = rx.pairing();
        let conn = devd::transport::connect_quic(rx.addr(), &pairing.fingerprint)
            .await
            .unwrap_or_else(|e| panic!("connect to the receiver: {e:#}"));
        let (send, recv) = conn.open_bi().await.expect("open a stream");
        let mut c = Client {
            _conn: conn,
            send,
            recv,
            dec: FrameDecoder::new(MAX_FRAME),
        };
        c.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            workspace: pairing.workspace,
            token: pairing.token,
        })
        .await
        .expect("send Hello");
        match c.next(Duration::from_secs(30)).await {
            Some(ServerMsg::Welcome { acked, .. }) => (c, acked.map(|a| a.generation)),
            other => panic!("Hello was not welcomed: {other:?}"),
        }
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
        self.send
            .write_all(&encode_frame(msg))
            .await
            .map_err(|e| e.to_string())
    }

    async fn next(&mut self, timeout: Duration) -> Option<ServerMsg> {
        next(&mut self.recv, &mut self.dec, timeout).await
    }
}

/// The next message, or `None` when the stream ends or `timeout` passes.
async fn next(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
    timeout: Duration,
) -> Option<ServerMsg> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(m) = dec.decode::<ServerMsg>().expect("a decodable frame") {
            return Some(m);
        }
        match tokio::time::timeout(timeout, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => dec.push(&buf[..n]),
            _ => return None,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn base_of(fx: &Fixture) -> Base {
    Base::Commit(GitOid::from_hex(&fx.rev_parse("origin/main")).expect("40-hex commit"))
}

/// 1 MiB block `i` of the large file: a 4 KiB pseudo-random unit repeated,
/// so the file is 2 GiB on disk but a few MB on the wire (zstd), and no
/// two blocks are alike.
fn block(i: u64) -> Vec<u8> {
    let mut unit = vec![0u8; 4096];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut unit);
    unit.repeat(256)
}

#[track_caller]
fn assert_under_ceiling(rx: &Receiver<'_>, what: &str) -> (u64, u64) {
    let (rss, peak) = rx.memory();
    println!(
        "receiver memory after {what}: {} MiB resident, peak {} MiB (ceiling {} MiB)",
        rss >> 20,
        peak >> 20,
        CEILING >> 20
    );
    assert!(
        peak < CEILING,
        "the receiver's peak resident memory was {} MiB during {what}; the ceiling is {} MiB",
        peak >> 20,
        CEILING >> 20
    );
    (rss, peak)
}

/// A 2 GiB file (zstd-encoded, one frame per MiB, sent as 1 MiB chunks)
/// is applied: the worktree has it, byte for byte, and the receiver's peak
/// resident memory stayed under 256 MiB.
#[test]
fn a_2_gib_file_arrives_with_the_receiver_under_256_mib() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let rt = runtime();
    let mut hasher = blake3::Hasher::new();
    let mut encoded = Vec::new();
    for i in 0..BIG >> 20 {
        let b = block(i);
        hasher.update(&b);
        encoded.extend(devd_protocol::compress::compress(&b));
    }
    let id = ContentId::from(hasher.finalize());
    println!(
        "{} MiB file {id} encoded as {} KiB of zstd frames",
        BIG >> 20,
        encoded.len() >> 10
    );
    let path = RelPath::new("assets/big.bin").unwrap();
    let entry = Entry::File {
        id,
        exec: false,
        mode: None,
    };
    let overlay: Overlay = [(path.clone(), entry.clone())].into_iter().collect();
    let started = Instant::now();
    let reply = rt.block_on(async {
        let (mut c, acked) = Client::login(&rx).await;
        let generation = acked.map_or(1, |g| g + 1);
        c.send(&ClientMsg::Changes {
            generation,
            changes: vec![Change {
                path,
                entry: Some(entry),
            }],
            blobs: vec![],
        })
        .await
        .unwrap();
        c.send(&ClientMsg::Commit {
            generation,
            parent: None,
            base: base_of(&fx),
            digest: overlay.digest(),
            entries: 1,
        })
        .await
        .unwrap();
        match c.next(Duration::from_secs(120)).await {
            Some(ServerMsg::Need { ids, .. }) => assert_eq!(ids, vec![id]),
            other => panic!("expected Need for the large file, got {other:?}"),
        }
        for (n, piece) in encoded.chunks(CHUNK).enumerate() {
            let sent = c
                .send(&ClientMsg::BlobChunk {
                    id,
                    encoding: Encoding::Zstd,
                    raw_len: BIG,
                    total: encoded.len() as u64,
                    offset: (n * CHUNK) as u64,
                    data: piece.to_vec(),
                })
                .await;
            if let Err(e) = sent {
                panic!(
                    "the receiver stopped reading at chunk {n}: {e}; it said {:?}",
                    c.next(Duration::from_secs(5)).await
                );
            }
        }
        c.next(Duration::from_secs(600)).await
    });
    println!(
        "applied in {:.1} s: {reply:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(reply, Some(ServerMsg::Applied { .. })),
        "the 2 GiB file was not applied: {reply:?}\n{}",
        devd_tests::process::tail(&rx.stderr(), 40)
    );
    assert_under_ceiling(&rx, "a 2 GiB file arrived");
    let on_disk = rx.worktree().join("assets/big.bin");
    let mut f = std::fs::File::open(&on_disk).expect("the large file is in the worktree");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    assert_eq!(len, BIG, "length of the file in the receiver's worktree");
    assert_eq!(ContentId::from(h.finalize()), id, "content of the file");
}

/// A million changes with 200-byte paths (about 200 MB of paths, as a
/// hostile or runaway laptop could send) are refused as too large, with a
/// message saying what to do, while the receiver stays under 256 MiB; and
/// it goes on serving: an honest sync right after is applied.
#[test]
fn a_million_long_paths_are_refused_with_the_receiver_under_256_mib() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let rt = runtime();
    let id = ContentId::of(b"x");
    let (refusal, frames_sent) = rt.block_on(async {
        let (c, acked) = Client::login(&rx).await;
        let generation = acked.map_or(1, |g| g + 1);
        let Client {
            _conn,
            mut send,
            mut recv,
            mut dec,
        } = c;
        // Send from a task while the reply is awaited here: the receiver
        // refuses mid-stream and stops reading.
        let sender = tokio::spawn(async move {
            let mut frames = 0;
            for start in (0..ENTRIES).step_by(CHANGES_PER_FRAME) {
                let changes = (start..(start + CHANGES_PER_FRAME).min(ENTRIES))
                    .map(|i| Change {
                        path: long_path(i),
                        entry: Some(Entry::File {
                            id,
                            exec: false,
                            mode: None,
                        }),
                    })
                    .collect();
                let msg = ClientMsg::Changes {
                    generation,
                    changes,
                    blobs: vec![],
                };
                if send.write_all(&encode_frame(&msg)).await.is_err() {
                    break;
                }
                frames += 1;
            }
            frames
        });
        let reply = next(&mut recv, &mut dec, Duration::from_secs(300)).await;
        // The receiver is done with this connection: close it, so that the
        // sending task's writes fail instead of waiting for credit.
        _conn.close(0u32.into(), b"done");
        (reply, sender.await.unwrap())
    });
    println!("sent {frames_sent} frames; reply: {refusal:?}");
    // The ceiling first: the peak is what a receiver without the bound
    // shows as well (it holds everything and refuses nothing).
    assert_under_ceiling(&rx, "a million 200-byte paths");
    match &refusal {
        Some(ServerMsg::Rejected { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::TooLarge, "{message}");
            assert!(
                message.contains("MiB") && message.contains("commit and push"),
                "the refusal says what the limit is and what to do: {message}"
            );
        }
        other => panic!("a million 200-byte paths were not refused: {other:?}"),
    }
    // The receiver still serves an honest sync.
    let applied = rt.block_on(async {
        let (mut c, acked) = Client::login(&rx).await;
        let generation = acked.map_or(1, |g| g + 1);
        let overlay = Overlay::new();
        c.send(&ClientMsg::Commit {
            generation,
            parent: None,
            base: base_of(&fx),
            digest: overlay.digest(),
            entries: 0,
        })
        .await
        .unwrap();
        c.next(Duration::from_secs(120)).await
    });
    assert!(
        matches!(applied, Some(ServerMsg::Applied { .. })),
        "an honest sync after the refusal: {applied:?}"
    );
}

/// Path `i` of the large change list: `PATH_LEN` bytes, all distinct.
fn long_path(i: usize) -> RelPath {
    let head = format!("d{:03}/f{i:07}-", i % 1000);
    RelPath::new(format!("{head}{}", "x".repeat(PATH_LEN - head.len()))).unwrap()
}

//! Security of the receiver against a hostile client speaking the raw
//! protocol: authentication, workspace isolation, path escapes through
//! symlinks and hand-edited frames, oversized frames.
//!
//! Each test starts a separate receiver, applies an honest empty overlay
//! (so the base is checked out), snapshots its worktree, attacks, and then
//! checks that the worktree is unchanged, that no file was written outside
//! it, and that an honest client still gets a sync applied.

use devd_protocol::message::{Base, Blob, MAX_FRAME};
use devd_protocol::{
    Change, ClientMsg, ContentId, Encoding, Entry, ErrorCode, FrameDecoder, GitOid, Overlay,
    PROTOCOL_VERSION, RelPath, ServerMsg, encode_frame,
};
use devd_tests::{Fixture, Pairing, Receiver, Snapshot};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Name of every file an attack tries to create.
const MARKER: &str = "pwned";

/// What came back from the receiver.
#[derive(Debug)]
enum Reply {
    Msg(ServerMsg),
    /// The stream or connection ended (finished, reset, or closed).
    Closed(String),
    TimedOut,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Msg(m) => write!(f, "{m:?}"),
            Reply::Closed(why) => write!(f, "stream closed ({why})"),
            Reply::TimedOut => write!(f, "no reply within {REPLY_TIMEOUT:?}"),
        }
    }
}

impl Reply {
    fn rejected_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Msg(ServerMsg::Rejected { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

/// One connection and its single bidirectional stream.
struct Client {
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    blobs: HashMap<ContentId, Vec<u8>>,
}

impl Client {
    async fn open(addr: SocketAddr, fingerprint: &str) -> Client {
        let conn = devd::transport::connect_quic(addr, fingerprint)
            .await
            .unwrap_or_else(|e| panic!("devd::transport::connect_quic({addr}) failed: {e:#}"));
        let (send, recv) = conn.open_bi().await.expect("open a bidirectional stream");
        Client {
            _conn: conn,
            send,
            recv,
            dec: FrameDecoder::new(MAX_FRAME),
            blobs: HashMap::new(),
        }
    }

    /// Write raw bytes; a write error (the receiver reset the stream) is
    /// returned, not fatal: the reply may still be readable.
    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.send.write_all(bytes).await.map_err(|e| e.to_string())
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
        self.send_raw(&encode_frame(msg)).await
    }

    async fn next(&mut self) -> Reply {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.dec.decode::<ServerMsg>() {
                Ok(Some(msg)) => return Reply::Msg(msg),
                Ok(None) => {}
                Err(e) => panic!("the receiver sent an undecodable frame: {e}"),
            }
            match tokio::time::timeout(REPLY_TIMEOUT, self.recv.read(&mut buf)).await {
                Err(_) => return Reply::TimedOut,
                Ok(Ok(Some(n))) => self.dec.push(&buf[..n]),
                Ok(Ok(None)) => return Reply::Closed("stream finished".into()),
                Ok(Err(e)) => return Reply::Closed(e.to_string()),
            }
        }
    }

    async fn hello(&mut self, version: u32, workspace: &str, token: &str) -> Reply {
        let _ = self
            .send(&ClientMsg::Hello {
                version,
                workspace: workspace.into(),
                token: token.into(),
            })
            .await;
        self.next().await
    }

    /// Hello with the right credentials; the acknowledged generation.
    async fn login(&mut self, pairing: &Pairing) -> Option<u64> {
        match self
            .hello(PROTOCOL_VERSION, &pairing.workspace, &pairing.token)
            .await
        {
            Reply::Msg(ServerMsg::Welcome { acked, .. }) => acked.map(|a| a.generation),
            other => panic!("an honest Hello was not welcomed: {other}"),
        }
    }

    fn blob(&mut self, data: &[u8]) -> (ContentId, Blob) {
        let id = ContentId::of(data);
        self.blobs.insert(id, data.to_vec());
        (
            id,
            Blob {
                id,
                encoding: Encoding::Raw,
                raw_len: data.len() as u64,
                data: data.to_vec(),
            },
        )
    }

    /// Send a full overlay (`parent: None`) as generation `generation`,
    /// answer `Need`s, and return the final reply.
    async fn sync_full(
        &mut self,
        generation: u64,
        base: Base,
        entries: Vec<(RelPath, Entry)>,
        blobs: Vec<Blob>,
    ) -> Reply {
        let overlay: Overlay = entries.iter().cloned().collect();
        let changes = entries
            .into_iter()
            .map(|(path, e)| Change {
                path,
                entry: Some(e),
            })
            .collect();
        let _ = self
            .send(&ClientMsg::Changes {
                generation,
                changes,
                blobs,
            })
            .await;
        self.commit_and_answer(generation, base, &overlay).await
    }

    async fn commit_and_answer(&mut self, generation: u64, base: Base, overlay: &Overlay) -> Reply {
        let _ = self
            .send(&ClientMsg::Commit {
                generation,
                parent: None,
                base,
                digest: overlay.digest(),
                entries: overlay.len() as u64,
            })
            .await;
        loop {
            match self.next().await {
                Reply::Msg(ServerMsg::Need { ids, .. }) => {
                    for id in ids {
                        let data = self
                            .blobs
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| panic!("receiver needs unknown blob {id}"));
                        let _ = self
                            .send(&ClientMsg::BlobChunk {
                                id,
                                encoding: Encoding::Raw,
                                raw_len: data.len() as u64,
                                total: data.len() as u64,
                                offset: 0,
                                data,
                            })
                            .await;
                    }
                }
                other => return other,
            }
        }
    }
}

fn path(s: &str) -> RelPath {
    RelPath::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Receiver plus the state before any attack.
struct Setup<'a> {
    fx: &'a Fixture,
    rx: Receiver<'a>,
    pairing: Pairing,
    base: Base,
    /// Target of the symlinks pointing outside; must stay empty.
    outside: PathBuf,
    /// Receiver worktree after the honest baseline sync.
    before: Snapshot,
    /// Generation of the honest baseline sync.
    baseline: u64,
    rt: tokio::runtime::Runtime,
}

/// Fixture whose base has symlinks pointing outside the receiver worktree:
/// `escape-abs` → `<root>/outside` (absolute), `escape-rel` →
/// `../../../../outside` (the same directory, seen from the receiver
/// worktree `<root>/rx/workspaces/default/worktree`), `escape-up` →
/// `../../..` (`<root>/rx`).
fn fixture() -> Fixture {
    let fx = Fixture::new();
    let outside = fx.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    fx.symlink("escape-abs", outside.to_str().unwrap());
    fx.symlink("escape-rel", "../../../../outside");
    fx.symlink("escape-up", "../../..");
    fx.commit_all_and_push("symlinks pointing outside");
    fx
}

fn setup(fx: &Fixture) -> Setup<'_> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rx = fx.receiver();
    let pairing = rx.pairing();
    assert_eq!(pairing.workspace, "default");
    let base = Base::Commit(GitOid::from_hex(&fx.rev_parse("origin/main")).expect("40-hex commit"));
    let addr = rx.addr();
    let baseline = rt.block_on(async {
        let mut c = Client::open(addr, &pairing.fingerprint).await;
        let generation = c.login(&pairing).await.map_or(1, |g| g + 1);
        match c.sync_full(generation, base, vec![], vec![]).await {
            Reply::Msg(ServerMsg::Applied { ack, .. }) => {
                assert_eq!(
                    ack.generation, generation,
                    "Applied acknowledges another generation"
                );
                assert_eq!(
                    ack.digest,
                    Overlay::new().digest(),
                    "digest of the empty overlay"
                );
            }
            other => panic!("the honest empty overlay was not applied: {other}"),
        }
        generation
    });
    let before = Snapshot::of_tree(&rx.worktree()).expect("snapshot the receiver worktree");
    assert!(
        before.entries.contains_key("README.md") && before.entries.contains_key("escape-abs"),
        "the base checkout is incomplete: {:?}",
        before.entries.keys().collect::<Vec<_>>()
    );
    Setup {
        fx,
        outside: fx.root().join("outside"),
        rx,
        pairing,
        base,
        before,
        baseline,
        rt,
    }
}

impl Setup<'_> {
    async fn client(&self) -> Client {
        Client::open(self.rx.addr(), &self.pairing.fingerprint).await
    }

    /// Nothing changed in the worktree, nothing was written outside it,
    /// and the receiver still runs.
    fn assert_untouched(&mut self, attack: &str) {
        assert!(
            self.rx.is_running(),
            "{attack}: the receiver died\n{}",
            devd_tests::process::tail(&self.rx.stderr(), 60)
        );
        let now = Snapshot::of_tree(&self.rx.worktree()).expect("snapshot the receiver worktree");
        let diffs = self.before.differences(&now, 10);
        assert!(
            diffs.is_empty(),
            "{attack}: the receiver worktree changed (\"laptop\" = before):\n  {}",
            diffs.join("\n  ")
        );
        let outside: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            outside.is_empty(),
            "{attack}: files appeared outside the worktree: {outside:?}"
        );
        let planted = find_named(self.fx.root(), MARKER);
        assert!(
            planted.is_empty(),
            "{attack}: attack files were written: {planted:?}"
        );
        let hook = self.rx.worktree().join(".git/hooks").join(MARKER);
        assert!(
            hook.symlink_metadata().is_err(),
            "{attack}: wrote into .git: {}",
            hook.display()
        );
    }

    /// An honest client still connects, sees the baseline as the
    /// acknowledged generation (no attack was acknowledged), and gets a
    /// new file applied.
    fn assert_honest_sync_works(&mut self) {
        let (baseline, base, pairing) = (self.baseline, self.base, self.pairing.clone());
        let reply = self.rt.block_on(async {
            let mut c = self.client().await;
            let acked = c.login(&pairing).await;
            assert_eq!(
                acked,
                Some(baseline),
                "the acknowledged generation moved: an attack was applied"
            );
            let (id, blob) = c.blob(b"honest\n");
            let entries = vec![(
                path("honest.txt"),
                Entry::File {
                    id,
                    exec: false,
                    mode: None,
                },
            )];
            c.sync_full(baseline + 1, base, entries, vec![blob]).await
        });
        assert!(
            matches!(&reply, Reply::Msg(ServerMsg::Applied { ack, .. }) if ack.generation == baseline + 1),
            "an honest sync after the attacks was not applied: {reply}"
        );
        let got = std::fs::read(self.rx.worktree().join("honest.txt")).ok();
        assert_eq!(
            got.as_deref(),
            Some(&b"honest\n"[..]),
            "honest.txt not materialized"
        );
    }
}

/// Every file named `name` under `dir` (not following symlinks).
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(name) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&p, name));
        }
    }
    out
}

/// A wrong token is rejected with `Unauthorized`; a client that keeps
/// sending a sync after the rejection gets nothing applied.
#[test]
fn wrong_token_is_rejected_unauthorized() {
    let fx = fixture();
    let mut s = setup(&fx);
    let (ws, wrong, base, next) = (
        s.pairing.workspace.clone(),
        format!("{}x", s.pairing.token),
        s.base,
        s.baseline + 1,
    );
    let (hello, after) = s.rt.block_on(async {
        let mut c = s.client().await;
        let hello = c.hello(PROTOCOL_VERSION, &ws, &wrong).await;
        let (id, blob) = c.blob(b"unauthorized\n");
        let after = c
            .sync_full(
                next,
                base,
                vec![(
                    path(MARKER),
                    Entry::File {
                        id,
                        exec: false,
                        mode: None,
                    },
                )],
                vec![blob],
            )
            .await;
        (hello, after)
    });
    assert_eq!(
        hello.rejected_code(),
        Some(ErrorCode::Unauthorized),
        "wrong token: {hello}"
    );
    assert!(
        !matches!(after, Reply::Msg(ServerMsg::Applied { .. })),
        "sync after a rejected Hello was applied: {after}"
    );
    s.assert_untouched("wrong token");
    s.assert_honest_sync_works();
}

/// A valid token for another workspace name is rejected with
/// `UnknownWorkspace`; a wrong protocol version with `Version`.
#[test]
fn unknown_workspace_and_wrong_version_are_rejected() {
    let fx = fixture();
    let mut s = setup(&fx);
    let (ws, token) = (s.pairing.workspace.clone(), s.pairing.token.clone());
    let (unknown, version) = s.rt.block_on(async {
        let unknown = s
            .client()
            .await
            .hello(PROTOCOL_VERSION, "no-such-workspace", &token)
            .await;
        let version = s
            .client()
            .await
            .hello(PROTOCOL_VERSION + 1, &ws, &token)
            .await;
        (unknown, version)
    });
    assert_eq!(
        unknown.rejected_code(),
        Some(ErrorCode::UnknownWorkspace),
        "unknown workspace: {unknown}"
    );
    assert_eq!(
        version.rejected_code(),
        Some(ErrorCode::Version),
        "wrong version: {version}"
    );
    s.assert_untouched("unknown workspace / version");
    s.assert_honest_sync_works();
}

/// A sync without a Hello first is refused (no reply but a rejection or
/// a closed stream) and nothing is applied.
#[test]
fn sync_without_hello_is_refused() {
    let fx = fixture();
    let mut s = setup(&fx);
    let (base, next) = (s.base, s.baseline + 1);
    let reply = s.rt.block_on(async {
        let mut c = s.client().await;
        let (id, blob) = c.blob(b"no hello\n");
        c.sync_full(
            next,
            base,
            vec![(
                path(MARKER),
                Entry::File {
                    id,
                    exec: false,
                    mode: None,
                },
            )],
            vec![blob],
        )
        .await
    });
    assert!(
        matches!(reply, Reply::Closed(_)) || reply.rejected_code().is_some(),
        "a sync without Hello was not refused: {reply}"
    );
    s.assert_untouched("sync without hello");
    s.assert_honest_sync_works();
}

/// An overlay with a symlink to outside the worktree and a file under it
/// (absolute target, and `../../..`) is refused with `BadPath`; no file is
/// created outside, and the symlink itself is not created either.
#[test]
fn symlink_entry_to_outside_with_a_file_under_it_is_bad_path() {
    let fx = fixture();
    let mut s = setup(&fx);
    let outside = s.outside.to_str().unwrap().to_owned();
    for (n, target) in [outside.as_str(), "../../..", "../../../../outside"]
        .into_iter()
        .enumerate()
    {
        let (base, next) = (s.base, s.baseline + 1);
        let pairing = s.pairing.clone();
        let reply = s.rt.block_on(async {
            let mut c = s.client().await;
            c.login(&pairing).await;
            let (id, blob) = c.blob(b"written through a symlink\n");
            let entries = vec![
                (
                    path(&format!("link{n}")),
                    Entry::Symlink {
                        target: target.to_owned(),
                    },
                ),
                (
                    path(&format!("link{n}/{MARKER}")),
                    Entry::File {
                        id,
                        exec: false,
                        mode: None,
                    },
                ),
            ];
            c.sync_full(next, base, entries, vec![blob]).await
        });
        assert_eq!(
            reply.rejected_code(),
            Some(ErrorCode::BadPath),
            "symlink to {target:?} + file under it: {reply}"
        );
        s.assert_untouched(&format!("symlink entry to {target:?}"));
    }
    s.assert_honest_sync_works();
}

/// A file under a symlink of the base tree that points outside the
/// worktree (absolute, relative to the same directory, `../../..`) is
/// refused with `BadPath` and nothing is written anywhere.
#[test]
fn file_under_a_base_symlink_pointing_outside_is_bad_path() {
    let fx = fixture();
    let mut s = setup(&fx);
    for link in ["escape-abs", "escape-rel", "escape-up"] {
        let (base, next) = (s.base, s.baseline + 1);
        let pairing = s.pairing.clone();
        let reply = s.rt.block_on(async {
            let mut c = s.client().await;
            c.login(&pairing).await;
            let (id, blob) = c.blob(b"written through a base symlink\n");
            let entries = vec![(
                path(&format!("{link}/{MARKER}")),
                Entry::File {
                    id,
                    exec: false,
                    mode: None,
                },
            )];
            c.sync_full(next, base, entries, vec![blob]).await
        });
        assert_eq!(
            reply.rejected_code(),
            Some(ErrorCode::BadPath),
            "file under base symlink {link}: {reply}"
        );
        s.assert_untouched(&format!("file under base symlink {link}"));
    }
    s.assert_honest_sync_works();
}

/// Hand-edited frames carrying paths that `RelPath` never produces
/// (`../pwned`, an absolute path into the outside directory,
/// `.git/hooks/pwned`) are refused with `Malformed` or a closed stream,
/// and nothing is written.
#[test]
fn hand_edited_escaping_paths_are_refused() {
    let fx = fixture();
    let mut s = setup(&fx);
    let abs = s.outside.join(MARKER).to_str().unwrap().to_owned();
    for bad in [format!("../{MARKER}"), abs, format!(".git/hooks/{MARKER}")] {
        let (base, next) = (s.base, s.baseline + 1);
        let pairing = s.pairing.clone();
        let reply = s.rt.block_on(async {
            let mut c = s.client().await;
            c.login(&pairing).await;
            let (id, blob) = c.blob(b"escaped\n");
            let placeholder = "Q".repeat(bad.len());
            let good = encode_frame(&ClientMsg::Changes {
                generation: next,
                changes: vec![Change {
                    path: path(&placeholder),
                    entry: Some(Entry::File {
                        id,
                        exec: false,
                        mode: None,
                    }),
                }],
                blobs: vec![blob],
            });
            let hits: Vec<usize> = good
                .windows(bad.len())
                .enumerate()
                .filter(|(_, w)| *w == placeholder.as_bytes())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(hits.len(), 1, "placeholder must occur once in the frame");
            let mut frame = good;
            frame[hits[0]..hits[0] + bad.len()].copy_from_slice(bad.as_bytes());
            let _ = c.send_raw(&frame).await;
            let overlay: Overlay = [(
                path(&placeholder),
                Entry::File {
                    id,
                    exec: false,
                    mode: None,
                },
            )]
            .into_iter()
            .collect();
            c.commit_and_answer(next, base, &overlay).await
        });
        assert!(
            matches!(reply, Reply::Closed(_))
                || reply.rejected_code() == Some(ErrorCode::Malformed),
            "frame with path {bad:?}: expected Rejected Malformed or a closed stream, got {reply}"
        );
        s.assert_untouched(&format!("hand-edited path {bad:?}"));
    }
    s.assert_honest_sync_works();
}

/// A length prefix over 16 MiB, before and after Hello, is refused
/// (`TooLarge`, `Malformed` or a closed stream) promptly, without waiting
/// for the announced bytes and without the receiver crashing; an honest
/// connection still works afterwards.
#[test]
fn oversized_frame_is_refused_and_the_receiver_survives() {
    let fx = fixture();
    let mut s = setup(&fx);
    let pairing = s.pairing.clone();
    let (before_hello, after_hello) = s.rt.block_on(async {
        let mut prefix = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(&[0u8; 1024]);
        let mut c = s.client().await;
        let _ = c.send_raw(&prefix).await;
        let before_hello = c.next().await;
        let mut c = s.client().await;
        c.login(&pairing).await;
        let _ = c.send_raw(&prefix).await;
        let after_hello = c.next().await;
        (before_hello, after_hello)
    });
    for (when, reply) in [
        ("before Hello", &before_hello),
        ("after Hello", &after_hello),
    ] {
        assert!(
            matches!(reply, Reply::Closed(_))
                || matches!(
                    reply.rejected_code(),
                    Some(ErrorCode::TooLarge | ErrorCode::Malformed)
                ),
            "oversized frame {when}: expected TooLarge/Malformed or a closed stream, got {reply}"
        );
    }
    s.assert_untouched("oversized frame");
    s.assert_honest_sync_works();
}

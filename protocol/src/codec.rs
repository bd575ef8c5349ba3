//! Framing: a 4-byte big-endian length, then a postcard-encoded message.
//! Decoding tells "need more bytes" (`Ok(None)`) apart from "invalid"
//! (`Err`), and refuses a frame larger than the limit as soon as its
//! length prefix arrives, before buffering it.

use serde::{Serialize, de::DeserializeOwned};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Invalid(#[from] postcard::Error),
}

/// Encode one message as a frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("postcard encodes every message type");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Accumulates bytes and yields whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Length of the next frame's body, once its prefix has arrived.
    pub fn next_len(&self) -> Result<Option<usize>, CodecError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(CodecError::TooLarge { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = postcard::from_bytes(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        Ok(Some(msg?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{BlobRef, Encoding};
    use crate::content_id::{ContentId, GitOid};
    use crate::message::{Ack, Base, Blob, ClientMsg, ErrorCode, ServerMsg};
    use crate::overlay::{Change, Digest, Entry};
    use crate::path::RelPath;
    use proptest::prelude::*;

    fn hello() -> ClientMsg {
        ClientMsg::Hello {
            version: 1,
            workspace: "alice".into(),
            token: "t0k".into(),
        }
    }

    fn changes() -> ClientMsg {
        ClientMsg::Changes {
            generation: 7,
            changes: vec![
                Change {
                    path: RelPath::new("src/a.rs").unwrap(),
                    entry: Some(Entry::File {
                        id: ContentId([1; 32]),
                        exec: true,
                        mode: None,
                    }),
                },
                Change {
                    path: RelPath::new("l").unwrap(),
                    entry: Some(Entry::Symlink { target: "a".into() }),
                },
                Change {
                    path: RelPath::new("gone").unwrap(),
                    entry: Some(Entry::Deleted),
                },
                Change {
                    path: RelPath::new("back").unwrap(),
                    entry: None,
                },
            ],
            blobs: vec![Blob {
                id: ContentId([1; 32]),
                encoding: Encoding::ZstdPatch {
                    reference: BlobRef::Base(GitOid([2; 20])),
                },
                raw_len: 3,
                data: vec![9, 9],
            }],
        }
    }

    #[test]
    fn wire_bytes_are_pinned() {
        let frames = [
            ("hello", encode_frame(&hello())),
            ("changes", encode_frame(&changes())),
            (
                "commit",
                encode_frame(&ClientMsg::Commit {
                    generation: 7,
                    parent: Some(6),
                    base: Base::Commit(GitOid([3; 20])),
                    digest: Digest([4; 32]),
                    entries: 4,
                }),
            ),
            (
                "applied",
                encode_frame(&ServerMsg::Applied {
                    ack: Ack {
                        generation: 7,
                        digest: Digest([4; 32]),
                        base: Base::Uploaded,
                    },
                    files_written: 2,
                    apply_ms: 3,
                }),
            ),
            (
                "rejected",
                encode_frame(&ServerMsg::Rejected {
                    generation: None,
                    code: ErrorCode::Unauthorized,
                    message: "x".into(),
                }),
            ),
            ("subscribe", encode_frame(&ClientMsg::Subscribe)),
            (
                "claim",
                encode_frame(&ClientMsg::Claim {
                    writer: crate::message::Writer {
                        host: "h".into(),
                        worktree: "/w".into(),
                    },
                    take_over: true,
                }),
            ),
            (
                "claimed",
                encode_frame(&ServerMsg::Claimed {
                    writer: crate::message::Writer {
                        host: "h".into(),
                        worktree: "/w".into(),
                    },
                    since: 1,
                    previous: None,
                }),
            ),
            (
                "event",
                encode_frame(&ServerMsg::Event(crate::event::BuildEvent {
                    service: "web".into(),
                    generation: 7,
                    at_ms: 1,
                    kind: crate::event::EventKind::Deployed {
                        image: "r@sha256:ab".into(),
                        url: Some("http://h".into()),
                        total_ms: 5,
                    },
                })),
            ),
        ];
        let text: String = frames
            .iter()
            .map(|(name, f)| format!("{name}: {}\n", hex::encode(f)))
            .collect();
        insta::assert_snapshot!("wire_frames", text);
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let f = encode_frame(&changes());
        let mut d = FrameDecoder::new(1 << 20);
        for (i, b) in f.iter().enumerate() {
            assert!(
                d.decode::<ClientMsg>().unwrap().is_none(),
                "decoded early at byte {i}"
            );
            d.push(&[*b]);
        }
        assert_eq!(d.decode::<ClientMsg>().unwrap(), Some(changes()));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_frame_refused_from_prefix() {
        let mut d = FrameDecoder::new(100);
        d.push(&1000u32.to_be_bytes());
        assert!(matches!(
            d.decode::<ClientMsg>(),
            Err(CodecError::TooLarge {
                len: 1000,
                max: 100
            })
        ));
    }

    #[test]
    fn garbage_is_invalid_not_need_more() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.decode::<ClientMsg>(),
            Err(CodecError::Invalid(_))
        ));
    }

    #[test]
    fn path_escape_in_frame_is_invalid() {
        // Hand-build a Changes frame with "../x" as the path.
        let good = encode_frame(&ClientMsg::Changes {
            generation: 1,
            changes: vec![Change {
                path: RelPath::new("abcd").unwrap(),
                entry: None,
            }],
            blobs: vec![],
        });
        let mut bad = good.clone();
        let pos = bad.windows(4).position(|w| w == b"abcd").unwrap();
        bad[pos..pos + 4].copy_from_slice(b"../x");
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&bad);
        let err = d.decode::<ClientMsg>().unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_pieces(cut in 0usize..200, gen_ in any::<u64>(), tok in ".{0,40}") {
            let msgs = vec![
                ClientMsg::Hello { version: 1, workspace: "w".into(), token: tok },
                changes(),
                ClientMsg::Commit { generation: gen_, parent: None, base: Base::Uploaded, digest: Digest([0; 32]), entries: 0 },
            ];
            let mut bytes = Vec::new();
            for m in &msgs { bytes.extend(encode_frame(m)); }
            let cut = cut.min(bytes.len());
            let mut d = FrameDecoder::new(1 << 20);
            let mut out = Vec::new();
            d.push(&bytes[..cut]);
            while let Some(m) = d.decode::<ClientMsg>().unwrap() { out.push(m); }
            d.push(&bytes[cut..]);
            while let Some(m) = d.decode::<ClientMsg>().unwrap() { out.push(m); }
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut d = FrameDecoder::new(1 << 16);
            d.push(&bytes);
            while let Ok(Some(_)) = d.decode::<ClientMsg>() {}
        }
    }
}

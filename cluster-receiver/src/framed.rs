//! Frames over a QUIC bidirectional stream, for both ends: writes encoded
//! messages, reads whole frames with the size limit enforced early.

use devd_protocol::{CodecError, FrameDecoder, encode_frame};
use serde::{Serialize, de::DeserializeOwned};

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("connection read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("connection write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("the peer closed the stream in the middle of a frame")]
    Truncated,
}

/// A framed bidirectional stream.
pub struct Framed {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl Framed {
    /// Wrap a stream pair; frames above `max_frame` are refused.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream, max_frame: usize) -> Self {
        Self {
            send,
            recv,
            dec: FrameDecoder::new(max_frame),
            buf: vec![0; 64 << 10],
        }
    }

    /// Send one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FramedError> {
        self.send.write_all(&encode_frame(msg)).await?;
        Ok(())
    }

    /// Send several messages in one write.
    pub async fn send_all<T: Serialize>(&mut self, msgs: &[T]) -> Result<(), FramedError> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend(encode_frame(m));
        }
        self.send.write_all(&out).await?;
        Ok(())
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FramedError> {
        loop {
            if let Some(m) = self.dec.decode()? {
                return Ok(Some(m));
            }
            match self.recv.read(&mut self.buf).await? {
                Some(n) => self.dec.push(&self.buf[..n]),
                None if self.dec.buffered() == 0 => return Ok(None),
                None => return Err(FramedError::Truncated),
            }
        }
    }

    /// Finish the sending side.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

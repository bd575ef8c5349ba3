//! Frames over one bidirectional byte stream, for both ends: writes
//! encoded messages, reads whole frames with the size limit enforced early.
//! The stream is a QUIC stream or, on the TCP fallback, a TLS connection;
//! the frames are the same.

use devd_protocol::{CodecError, FrameDecoder, encode_frame};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The sending half of a stream.
pub type SendHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("connection read failed: {0}")]
    Read(std::io::Error),
    #[error("connection write failed: {0}")]
    Write(std::io::Error),
    #[error("the peer closed the stream in the middle of a frame")]
    Truncated,
}

/// A framed bidirectional stream.
pub struct Framed {
    send: SendHalf,
    recv: RecvHalf,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl Framed {
    /// Wrap a stream pair; frames above `max_frame` are refused.
    pub fn new(
        send: impl AsyncWrite + Send + Unpin + 'static,
        recv: impl AsyncRead + Send + Unpin + 'static,
        max_frame: usize,
    ) -> Self {
        Self {
            send: Box::new(send),
            recv: Box::new(recv),
            dec: FrameDecoder::new(max_frame),
            buf: vec![0; 64 << 10],
        }
    }

    /// Send one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FramedError> {
        self.write(&encode_frame(msg)).await
    }

    /// Send several messages in one write.
    pub async fn send_all<T: Serialize>(&mut self, msgs: &[T]) -> Result<(), FramedError> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend(encode_frame(m));
        }
        self.write(&out).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FramedError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(FramedError::Write)?;
        // A TLS stream buffers; QUIC's flush is a no-op.
        self.send.flush().await.map_err(FramedError::Write)
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FramedError> {
        loop {
            if let Some(m) = self.dec.decode()? {
                return Ok(Some(m));
            }
            match self.recv.read(&mut self.buf).await {
                Ok(0) if self.dec.buffered() == 0 => return Ok(None),
                Ok(0) => return Err(FramedError::Truncated),
                Ok(n) => self.dec.push(&self.buf[..n]),
                Err(e) => return Err(FramedError::Read(e)),
            }
        }
    }

    /// Stop reading: the receiving half is dropped (QUIC: the peer's writes
    /// fail at once with "stopped", and it can still read what was sent to
    /// it, such as the refusal that ended the session).
    pub fn stop_reading(&mut self) {
        self.recv = Box::new(tokio::io::empty());
    }

    /// Read and drop whatever the peer still sends, for up to `max`: on TCP
    /// a close with unread data would reset the connection and lose the
    /// last frames sent to the peer.
    pub async fn drain(&mut self, max: std::time::Duration) {
        let _ = tokio::time::timeout(max, async {
            while matches!(self.recv.read(&mut self.buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// Finish the sending side (QUIC: finish the stream; TLS: send
    /// close_notify and shut the socket's write half).
    pub async fn finish(&mut self) {
        let _ = self.send.shutdown().await;
    }
}

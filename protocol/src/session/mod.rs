//! The two ends of the sync exchange as state machines, free of I/O.
//!
//! Both machines follow the same shape (the one quinn-proto uses for QUIC):
//! the driver feeds them what happened with `handle_*(input, now)` and then
//! drains what they want done with `poll_*()`. Time is always an argument;
//! the machines never read a clock, touch a file or own a socket, so every
//! transition can be tested in memory with a fake clock.
//!
//! Map:
//! - [`sender`]: the laptop end. It owns the acknowledged state, generation
//!   numbering, resume after a reconnect, the one-time full resend when the
//!   receiver diverged, the frame plan (changes with inline blobs, commit),
//!   answering `Need` with chunked blobs, and checking `Applied`. Reading
//!   and encoding files is the driver's job, asked for with a
//!   [`sender::Request`].
//! - [`receiver`]: the cluster end. It checks `Hello` (version, deadline),
//!   asks the driver to authenticate, gathers `Changes`, asks the driver to
//!   prepare a commit, sends `Need`, reassembles blob chunks with every size
//!   and order check, asks the driver to store each blob and to finish the
//!   generation, and decides which refusals end the session.
//!
//! A driver loop, on either side, is: read one frame → `handle_message` →
//! write every `poll_transmit` frame → do the I/O each polled event asks for
//! and feed the answer back → wait for the next frame until `poll_timeout`
//! (then `handle_timeout`).
//!
//! The shared types here are [`Reject`] (a refusal the receiver sends) and
//! [`UsageError`] (the driver called a machine at the wrong moment: a bug in
//! the driver, never something a peer can cause).

mod driver;
pub mod receiver;
pub mod sender;

#[cfg(test)]
mod legacy;
#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;

pub use receiver::{
    Applied, AuthAnswer, BlobPart, CHANGE_COST, ClaimAnswer, CommitHeader, Incoming, Limits,
    Receiver, ReceiverEvent,
};
pub use sender::{
    EncodeError, EncodeItem, Request, RequestedBlob, Sender, SenderEvent, Snapshot, SyncError,
    SyncReport,
};

use crate::codec::CodecError;
use crate::message::ErrorCode;

/// A refusal: the code the laptop acts on and a message for the developer
/// (what was wrong and what to do about it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: ErrorCode,
    pub message: String,
}

impl Reject {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<&CodecError> for Reject {
    /// An oversized frame is [`ErrorCode::TooLarge`]; anything else that
    /// does not decode is [`ErrorCode::Malformed`].
    fn from(e: &CodecError) -> Self {
        match e {
            CodecError::TooLarge { .. } => Self::new(ErrorCode::TooLarge, e.to_string()),
            CodecError::Invalid(_) => Self::new(ErrorCode::Malformed, e.to_string()),
        }
    }
}

/// The driver fed a machine an input it cannot take in its current state
/// (an answer nobody asked for, a message while an answer is outstanding,
/// a sync while not connected). Peers cannot cause this; drivers can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input} is not expected while the {machine} is {state}")]
pub struct UsageError {
    /// The call that was refused, e.g. `"handle_prepared"`.
    pub input: &'static str,
    /// `"sender"` or `"receiver"`.
    pub machine: &'static str,
    /// What the machine was doing, e.g. `"receiving blobs"`.
    pub state: &'static str,
}

//! What the receiver machine ([`crate::session::Receiver`]) and its driver
//! hand each other: the limits it enforces, the I/O it asks for
//! ([`ReceiverEvent`]) with what it carries, and the driver's answers.

use super::Reject;
use crate::compress::Encoding;
use crate::content_id::ContentId;
use crate::message::{Ack, Base, Blob, ClientMsg, INLINE_TOTAL_MAX, Writer};
use crate::overlay::{Change, Digest};
use std::time::Duration;

/// The bounds a receiver enforces on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time from the start of the connection to `Hello`.
    pub hello_timeout: Duration,
    /// Longest silence while blobs are being received.
    pub idle: Duration,
    /// Changes accepted per generation (bounded memory per connection).
    pub max_changes: usize,
    /// Inline blob bytes accepted per generation.
    pub max_inline_bytes: usize,
    /// Largest blob accepted (raw content); its encoding may be up to
    /// twice that.
    pub max_blob: u64,
    /// Bytes one generation's `Changes` may hold before its `Commit`:
    /// paths, symlink targets, [`CHANGE_COST`] per change, and inline blobs.
    /// An authenticated laptop can send millions of long paths; past this
    /// the sync is refused instead of the receiver's memory growing.
    pub max_held_bytes: usize,
}

/// What one change costs in memory beyond its path and symlink target
/// (the `Change` itself and its share of the vector), for
/// [`Limits::max_held_bytes`].
pub const CHANGE_COST: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_changes: 4_000_000,
            max_inline_bytes: 16 * INLINE_TOTAL_MAX,
            max_blob: 1 << 30,
            max_held_bytes: 64 << 20,
        }
    }
}

/// A generation's `Changes` as received, before it is prepared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    pub generation: u64,
    pub changes: Vec<Change>,
    pub blobs: Vec<Blob>,
    pub inline_bytes: usize,
    /// What the changes and inline blobs hold, as [`Limits::max_held_bytes`]
    /// counts it.
    pub held_bytes: usize,
}

/// A slice of a requested blob, handed to the driver as it arrives so no
/// blob is ever held whole in memory (see [`ReceiverEvent::StoreChunk`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobPart {
    pub id: ContentId,
    pub encoding: Encoding,
    /// Length of the decoded content.
    pub raw_len: u64,
    /// Encoded length of the whole blob.
    pub total: u64,
    /// Where `data` starts in the encoded blob.
    pub offset: u64,
    pub data: Vec<u8>,
}

impl BlobPart {
    /// The blob's first chunk: the driver starts a new one.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// The blob's last chunk: the driver decodes, verifies and stores it.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 == self.total
    }
}

/// The `Commit` closing a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitHeader {
    pub generation: u64,
    /// The acknowledged generation the delta applies to (`None`: full).
    pub parent: Option<u64>,
    pub base: Base,
    pub digest: Digest,
    pub entries: u64,
}

/// The driver's answer to [`ReceiverEvent::Authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthAnswer {
    /// Welcome the laptop with this content.
    Accepted {
        /// Name and version of the receiver, for logs.
        receiver: String,
        /// What the workspace has applied.
        acked: Option<Ack>,
        /// Where the worktree lives on the receiver.
        worktree: String,
    },
    /// No workspace of that name.
    UnknownWorkspace,
    /// The workspace exists, the token is wrong.
    WrongToken,
    /// The credentials are good but the receiver serves as many laptop
    /// connections as it may; `message` says so and what to do.
    Busy { message: String },
}

/// The driver's answer to [`ReceiverEvent::Claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The laptop is the writer since `since` (Unix seconds); `previous`
    /// is the writer it took over from.
    Granted {
        since: u64,
        previous: Option<Writer>,
    },
    /// Another writer holds the workspace: the session ends with this.
    Refused(Reject),
}

/// A generation the driver applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub ack: Ack,
    pub files_written: u64,
    pub apply_ms: u64,
}

/// I/O the receiver needs done, or a hand-over to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Look up `workspace` and check `token`: answer with
    /// [`crate::session::Receiver::handle_auth`].
    Authenticate { workspace: String, token: String },
    /// This stream carries events or logs, as `first` asks: the driver
    /// serves it; the machine is done.
    SideStream(ClientMsg),
    /// Validate this generation against the workspace (parent, digest,
    /// base, paths), store its inline blobs, and answer with the ids of the
    /// blobs still missing via [`crate::session::Receiver::handle_prepared`]. The driver
    /// holds the workspace for this sync until the generation is finished
    /// or refused.
    Prepare {
        header: CommitHeader,
        incoming: Incoming,
    },
    /// Append a chunk of a requested blob (a new blob starts at offset 0);
    /// at its last chunk decode, verify and store the blob. Answer with
    /// [`crate::session::Receiver::handle_chunk_stored`]. Chunks of one blob come in order
    /// and blobs one after another.
    StoreChunk(BlobPart),
    /// Every blob is in: apply `generation`, answer with
    /// [`crate::session::Receiver::handle_finished`].
    Finish { generation: u64 },
    /// The laptop claims the workspace as its writer: answer with
    /// [`crate::session::Receiver::handle_claim`].
    Claim { writer: Writer, take_over: bool },
    /// The laptop dropped `generation` while its blobs were expected (a
    /// file changed while it was being sent): release what was prepared
    /// for it. No answer.
    Abandoned { generation: u64 },
    /// The laptop gave up its writer claim and stops: release it, then end
    /// the connection.
    Release,
}

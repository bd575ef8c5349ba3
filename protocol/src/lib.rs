//! devd's wire protocol and sync model, free of I/O (no sockets, no
//! filesystem, no runtime), in the spirit of quinn-proto.
//!
//! Map of the crate:
//! - [`content_id`]: blake3 content ids and git object ids.
//! - [`path`]: the path rules every path on the wire obeys ([`RelPath`]).
//! - [`overlay`]: overlay entries, the overlay, its digest, diff and apply.
//! - [`compress`]: zstd blob encoding, full and patch-against-a-reference.
//! - [`message`]: the messages both sides exchange, and protocol limits.
//! - [`event`]: build and deploy events, per-service state.
//! - [`codec`]: length-delimited postcard frames with a maximum size.
//! - [`tree`]: a commit's files by path (git blob id, file/exec/symlink).
//! - [`view`]: a worktree state (base tree + overlay), its validity, and
//!   the paths a transition between two states touches.
//! - [`session`]: the two ends of the sync exchange as sans-IO state machines.

pub mod codec;
pub mod compress;
pub mod content_id;
pub mod control;
pub mod event;
pub mod message;
pub mod overlay;
pub mod path;
pub mod session;
pub mod tree;
pub mod view;

pub use codec::{CodecError, FrameDecoder, encode_frame};
pub use compress::{BlobRef, CompressError, Encoding};
pub use content_id::{CommitId, ContentId, GitOid};
pub use event::{BuildEvent, EventKind, ServiceState, ServiceStatus};
pub use message::{ClientMsg, ErrorCode, ServerMsg, Writer};
pub use overlay::{Change, Digest, Entry, Overlay};
pub use path::{PathError, RelPath};

/// Version carried in `Hello`; bumped on any incompatible change.
/// 2: a daemon claims the workspace (`Claim`, `Claimed`, `OtherWriter`)
/// before it syncs; a receiver speaking 1 could not decode the claim.
/// 3: a file entry carries its mode when narrower than git's (a 0600 file
/// stays 0600 on the receiver), and a daemon that stops releases its claim.
pub const PROTOCOL_VERSION: u32 = 3;
/// QUIC ALPN identifier.
pub const ALPN: &[u8] = b"devd/1";

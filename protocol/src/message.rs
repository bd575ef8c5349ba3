//! The messages both sides exchange, and the limits they obey.
//!
//! One bidirectional QUIC stream per connection carries all messages.
//! A sync of generation `g` is zero or more [`ClientMsg::Changes`] frames
//! (the delta, with small blobs inline) closed by one [`ClientMsg::Commit`].
//! The receiver answers [`ServerMsg::Need`] with the ids it still lacks
//! (sent as [`ClientMsg::BlobChunk`]s), then [`ServerMsg::Applied`] or
//! [`ServerMsg::Rejected`]. Enum variants are only ever appended: postcard
//! encodes the variant index.

use crate::compress::Encoding;
use crate::content_id::{CommitId, ContentId};
use crate::event::{BuildEvent, ServiceStatus};
use crate::overlay::{Change, Digest};
use serde::{Deserialize, Serialize};

/// Largest frame either side accepts (16 MiB).
pub const MAX_FRAME: usize = 16 << 20;
/// Size of one [`ClientMsg::BlobChunk`] payload (1 MiB).
pub const CHUNK: usize = 1 << 20;
/// Blobs whose encoded size is at most this ride inline with the delta.
pub const INLINE_BLOB_MAX: usize = 64 << 10;
/// Inline blob bytes per sync, at most; the rest go through `Need`.
pub const INLINE_TOTAL_MAX: usize = 4 << 20;
/// Changes per `Changes` frame, at most.
pub const CHANGES_PER_FRAME: usize = 16_384;

/// What the overlay is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Base {
    /// A commit the receiver fetches from its git remote.
    Commit(CommitId),
    /// The empty tree: the receiver could not fetch the base, so the daemon
    /// uploads every file itself, content-addressed.
    Uploaded,
}

/// A blob with its content id and the length of its raw content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub id: ContentId,
    pub encoding: Encoding,
    pub raw_len: u64,
    pub data: Vec<u8>,
}

/// A generation the receiver has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub generation: u64,
    pub digest: Digest,
    pub base: Base,
}

/// A daemon that writes a workspace: where it runs and what it syncs.
/// One workspace has one writer at a time (see [`ClientMsg::Claim`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// The laptop's host name.
    pub host: String,
    /// The worktree the daemon syncs, on that host.
    pub worktree: String,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host {}, worktree {}", self.host, self.worktree)
    }
}

/// Laptop → receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message: protocol version, workspace name, access token.
    Hello {
        version: u32,
        workspace: String,
        token: String,
    },
    /// Part of the delta for `generation`, with small blobs inline.
    Changes {
        generation: u64,
        changes: Vec<Change>,
        blobs: Vec<Blob>,
    },
    /// Closes the delta for `generation`. `parent` is the acknowledged
    /// generation the delta applies to (`None`: the delta is a full overlay).
    /// `digest` and `entries` describe the resulting overlay.
    Commit {
        generation: u64,
        parent: Option<u64>,
        base: Base,
        digest: Digest,
        entries: u64,
    },
    /// A slice of a blob the receiver asked for. `total` is the encoded
    /// length; the blob is complete when `offset + data.len() == total`.
    BlobChunk {
        id: ContentId,
        encoding: Encoding,
        raw_len: u64,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// First and only message on a second stream: send build events on
    /// this stream (see [`crate::event`]).
    Subscribe,
    /// First and only message on a further stream: send `service`'s logs
    /// (its last build's log if `build`, else what its containers print),
    /// and keep sending new output if `follow`. Answered with
    /// [`ServerMsg::Log`] chunks closed by one [`ServerMsg::LogEnd`].
    Logs {
        service: String,
        build: bool,
        follow: bool,
    },
    /// After `Welcome`, before the first sync (protocol version 2): this
    /// daemon is the workspace's writer. Refused with
    /// [`ErrorCode::OtherWriter`] while another writer holds it, unless
    /// `take_over`; answered with [`ServerMsg::Claimed`]. A writer that was
    /// taken over has its connections closed; its next claim is refused.
    Claim { writer: Writer, take_over: bool },
    /// First and only message on a further stream: build and deploy
    /// `services` (every declared one if empty) again at the worktree's
    /// current content, unless already deployed at it (`devd retry`, and
    /// the daemon's start). Answered with [`ServerMsg::Done`] naming the
    /// services queued.
    Retry { services: Vec<String> },
    /// First and only message on a further stream: remove what the
    /// receiver's backend created for this workspace (containers and
    /// images, or the Kubernetes objects devd applied) (`devd down`).
    /// Answered with [`ServerMsg::Done`] naming what was removed.
    Remove,
    /// Drop `generation`, whose blobs are being requested: a file changed
    /// while it was being sent, so the laptop cannot send that version. The
    /// receiver forgets the generation (its acknowledged state stays) and
    /// the connection goes on with the next one; there is no answer.
    Abandon { generation: u64 },
    /// The daemon stops cleanly (`devd stop`): it gives up its claim as
    /// the workspace's writer, so that another daemon may claim it without
    /// `--take-over`. Sent between generations; the receiver releases the
    /// claim (if this connection's is still current) and ends the
    /// connection, which is the answer.
    Release,
    /// First message on a further stream: run `command` (the container's
    /// shell if empty) in a running container of `service` (`devd exec`),
    /// with a terminal of `tty`'s size if given. Then [`ClientMsg::ExecInput`]
    /// and [`ClientMsg::ExecResize`] follow on the stream; the receiver
    /// answers with [`ServerMsg::ExecOutput`] chunks closed by one
    /// [`ServerMsg::ExecExit`].
    Exec {
        service: String,
        command: Vec<String>,
        tty: Option<TermSize>,
    },
    /// Input for an [`ClientMsg::Exec`]'s command; empty `data` closes its
    /// standard input.
    ExecInput { data: Vec<u8> },
    /// The terminal of an [`ClientMsg::Exec`] with `tty` changed size.
    ExecResize(TermSize),
    /// First and only message on a further stream: the Secrets of this
    /// laptop's `devd.local.toml` (`[secrets]`), which the repository's
    /// manifests may reference by name. They replace the ones sent before
    /// (an empty list removes them). Answered with [`ServerMsg::Done`]
    /// naming them. The values never enter git, logs or the status.
    Secrets { secrets: Vec<Secret> },
}

/// One Secret from `devd.local.toml`: its name and its keys' values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub data: Vec<(String, Vec<u8>)>,
}

/// Names and keys only: a value must never reach a log line.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field(
                "keys",
                &self
                    .data
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

/// Why the receiver refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Protocol versions differ.
    Version,
    /// Wrong token.
    Unauthorized,
    /// No such workspace on this receiver.
    UnknownWorkspace,
    /// A path broke the path rules or would escape the worktree.
    BadPath,
    /// `parent` is not the receiver's acknowledged generation: resend in full.
    OutOfSync,
    /// The overlay digest after applying differs: resend in full.
    DigestMismatch,
    /// The receiver cannot fetch the base commit: upload the base instead.
    BaseUnavailable,
    /// A blob failed verification or decoding.
    BadBlob,
    /// A frame, blob or sync exceeded a limit.
    TooLarge,
    /// The receiver's disk is full or not writable.
    Storage,
    /// A frame could not be decoded, or arrived out of order.
    Malformed,
    /// Anything else.
    Internal,
    /// Another daemon is the workspace's writer (see [`ClientMsg::Claim`]).
    OtherWriter,
}

/// Receiver → laptop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to a valid `Hello`: what the receiver has applied, and where.
    Welcome {
        version: u32,
        receiver: String,
        acked: Option<Ack>,
        worktree: String,
    },
    /// Blobs of `generation` the receiver lacks.
    Need {
        generation: u64,
        ids: Vec<ContentId>,
    },
    /// `generation` is applied, on disk, durable.
    Applied {
        ack: Ack,
        files_written: u64,
        apply_ms: u64,
    },
    /// Something was refused; nothing of `generation` was applied.
    Rejected {
        generation: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    /// Every declared service's state, sent when a subscription starts and
    /// whenever the catalog changes. `catalog_error` says why `devd.toml`'s
    /// services could not be read (the previous catalog stays in force).
    Services {
        services: Vec<ServiceStatus>,
        catalog_error: Option<String>,
    },
    /// One step of a service's build and deploy.
    Event(BuildEvent),
    /// A chunk of log output (bytes as the program wrote them).
    Log { data: Vec<u8> },
    /// The end of a log stream; `error` says why it ended early.
    LogEnd { error: Option<String> },
    /// The claim is granted: `writer` holds the workspace since `since`
    /// (Unix seconds, the receiver's clock); `previous` is the writer it
    /// took the workspace over from, if any.
    Claimed {
        writer: Writer,
        since: u64,
        previous: Option<Writer>,
    },
    /// A [`ClientMsg::Retry`] or [`ClientMsg::Remove`] was carried out:
    /// what it concerned, one line each (service names, removed objects).
    Done { items: Vec<String> },
    /// Output of an exec'd command: its standard error if `stderr`, else
    /// its standard output (or the terminal's output, with a tty).
    ExecOutput { stderr: bool, data: Vec<u8> },
    /// The exec'd command ended with exit status `code`; or it could not
    /// be run (`error` says why, `code` is then 126 or 127 as a shell's).
    ExecExit { code: i32, error: Option<String> },
    /// Where the stack of the repository's own manifests (`[deploy]`)
    /// stands: sent after each apply, and after the [`ServerMsg::Services`]
    /// snapshot when the catalog has `[deploy]`.
    Stack(crate::event::StackStatus),
}

#[cfg(test)]
mod secret_tests {
    #[test]
    fn a_secret_prints_no_value() {
        let s = super::Secret {
            name: "db".into(),
            data: vec![("password".into(), b"hunter2".to_vec())],
        };
        let text = format!("{:?}", super::ClientMsg::Secrets { secrets: vec![s] });
        assert!(
            text.contains("password") && !text.contains("hunter2"),
            "{text}"
        );
    }
}

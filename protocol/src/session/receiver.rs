//! The receiver end of the sync exchange, for one connection.
//!
//! A [`Receiver`] is created when a laptop opens a connection and dropped
//! when it ends; everything durable (the workspace's acknowledged state,
//! its blobs, its worktree) belongs to the driver, which the machine asks
//! for what it needs through [`ReceiverEvent`]s:
//!
//! 1. `Hello` must arrive before [`Limits::hello_timeout`]; its version is
//!    checked here, then [`ReceiverEvent::Authenticate`] asks the driver to
//!    look up the workspace and check the token ([`Receiver::handle_auth`]).
//!    Accepted, the machine sends `Welcome` with what the driver supplied.
//! 2. If the first message after that is `Subscribe` or `Logs`, the stream
//!    is a side stream ([`ReceiverEvent::SideStream`]): the driver serves it
//!    and the machine is done.
//! 3. `Changes` frames of one generation accumulate (bounded by [`Limits`]);
//!    `Commit` closes them: [`ReceiverEvent::Prepare`] asks the driver to
//!    validate the generation and store its inline blobs, answered with the
//!    ids it still lacks ([`Receiver::handle_prepared`]).
//! 4. The machine sends `Need` and reassembles `BlobChunk`s (only requested
//!    ids, offsets in order, sizes bounded, at most [`Limits::idle`] of
//!    silence); each complete blob is a [`ReceiverEvent::StoreBlob`]
//!    ([`Receiver::handle_blob_stored`]).
//! 5. With every blob in, [`ReceiverEvent::Finish`] asks the driver to
//!    apply the generation ([`Receiver::handle_finished`]); the machine
//!    sends `Applied` or `Rejected`.
//!
//! Refusals while preparing or finishing keep the session (the laptop may
//! retry, e.g. with a full overlay). A refusal of the stream itself (bad
//! frame, wrong order, over a limit, a blob that cannot be stored, a stall)
//! ends it: the machine queues the `Rejected` frame and reports
//! [`Receiver::is_closed`], after which the driver writes what is left and
//! closes the stream.

use super::{Reject, UsageError};
use crate::content_id::ContentId;
use crate::message::{Ack, Base, Blob, ClientMsg, ErrorCode, INLINE_TOTAL_MAX, ServerMsg};
use crate::overlay::{Change, Digest};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_changes: 4_000_000,
            max_inline_bytes: 16 * INLINE_TOTAL_MAX,
            max_blob: 1 << 30,
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
    /// [`Receiver::handle_auth`].
    Authenticate { workspace: String, token: String },
    /// This stream carries events or logs, as `first` asks: the driver
    /// serves it; the machine is done.
    SideStream(ClientMsg),
    /// Validate this generation against the workspace (parent, digest,
    /// base, paths), store its inline blobs, and answer with the ids of the
    /// blobs still missing via [`Receiver::handle_prepared`]. The driver
    /// holds the workspace for this sync until the generation is finished
    /// or refused.
    Prepare {
        header: CommitHeader,
        incoming: Incoming,
    },
    /// Verify and store a requested blob: answer with
    /// [`Receiver::handle_blob_stored`].
    StoreBlob(Blob),
    /// Every blob is in: apply `generation`, answer with
    /// [`Receiver::handle_finished`].
    Finish { generation: u64 },
}

#[derive(Debug)]
enum State {
    AwaitingHello {
        deadline: Instant,
    },
    /// Waiting for [`Receiver::handle_auth`] about this workspace.
    Authenticating {
        workspace: String,
    },
    /// Between syncs, or gathering `Changes`.
    Open {
        incoming: Option<Incoming>,
    },
    Preparing {
        header: CommitHeader,
    },
    Receiving {
        header: CommitHeader,
        /// Blobs still expected, with the chunks received so far.
        left: HashMap<ContentId, Option<Blob>>,
        /// Waiting for the driver to store a blob (no deadline meanwhile).
        storing: bool,
        deadline: Instant,
    },
    Finishing {
        header: CommitHeader,
    },
    /// Handed over to the driver as a side stream.
    SideStream,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingHello { .. } => "waiting for Hello",
            State::Authenticating { .. } => "authenticating",
            State::Open { .. } => "open",
            State::Preparing { .. } => "preparing a commit",
            State::Receiving { storing: false, .. } => "receiving blobs",
            State::Receiving { storing: true, .. } => "storing a blob",
            State::Finishing { .. } => "finishing a commit",
            State::SideStream => "handed over as a side stream",
            State::Closed => "closed",
        }
    }
}

/// The receiver end of one connection (see the module documentation).
#[derive(Debug)]
pub struct Receiver {
    limits: Limits,
    state: State,
    /// No message after `Welcome` yet (a side stream announces itself then).
    first: bool,
    transmit: VecDeque<ServerMsg>,
    events: VecDeque<ReceiverEvent>,
}

impl Receiver {
    /// A connection that opened at `now`, with the default [`Limits`].
    pub fn new(now: Instant) -> Self {
        Self::with_limits(Limits::default(), now)
    }

    /// A connection that opened at `now`, with `limits`.
    pub fn with_limits(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            state: State::AwaitingHello {
                deadline: now + limits.hello_timeout,
            },
            first: true,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// True once the session is over: write what [`Receiver::poll_transmit`]
    /// still yields, then close the stream.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The generation being prepared, received or finished, if any.
    pub fn generation(&self) -> Option<u64> {
        match &self.state {
            State::Preparing { header }
            | State::Receiving { header, .. }
            | State::Finishing { header } => Some(header.generation),
            _ => None,
        }
    }

    /// A frame from the laptop.
    pub fn handle_message(&mut self, msg: ClientMsg, now: Instant) -> Result<(), UsageError> {
        match &self.state {
            State::AwaitingHello { .. } => self.hello(msg),
            State::Open { .. } => self.open_message(msg),
            State::Receiving { storing: false, .. } => self.chunk(msg, now),
            _ => return Err(self.misuse("handle_message")),
        }
        Ok(())
    }

    /// The peer finished its side of the stream.
    pub fn handle_stream_end(&mut self) {
        match &self.state {
            State::Receiving { .. } => {
                self.fatal(Reject::new(ErrorCode::Malformed, "stream ended"))
            }
            State::SideStream => {}
            _ => self.state = State::Closed,
        }
    }

    /// Reading from the stream failed (`message` says how).
    pub fn handle_read_failed(&mut self, message: impl Into<String>) {
        let r = Reject::new(ErrorCode::Malformed, message);
        match &self.state {
            State::AwaitingHello { .. } => self.close_with(None, r),
            State::Receiving { .. } => self.fatal(r),
            State::SideStream => {}
            _ => self.state = State::Closed,
        }
    }

    /// A frame could not be decoded (too large, invalid, truncated): the
    /// session ends with `reject` (see [`Reject`]'s `From<&CodecError>`).
    pub fn handle_bad_frame(&mut self, reject: Reject) {
        match &self.state {
            State::Receiving { .. } => self.fatal(reject),
            State::SideStream | State::Closed => {}
            _ => self.close_with(None, reject),
        }
    }

    /// The driver's answer to [`ReceiverEvent::Authenticate`].
    pub fn handle_auth(&mut self, answer: AuthAnswer) -> Result<(), UsageError> {
        let State::Authenticating { workspace } = &self.state else {
            return Err(self.misuse("handle_auth"));
        };
        let workspace = workspace.clone();
        match answer {
            AuthAnswer::Accepted {
                receiver,
                acked,
                worktree,
            } => {
                self.transmit.push_back(ServerMsg::Welcome {
                    version: crate::PROTOCOL_VERSION,
                    receiver,
                    acked,
                    worktree,
                });
                self.state = State::Open { incoming: None };
            }
            AuthAnswer::UnknownWorkspace => {
                let m = format!(
                    "no workspace named {workspace:?} on this receiver; check the pairing file"
                );
                self.close_with(None, Reject::new(ErrorCode::UnknownWorkspace, m));
            }
            AuthAnswer::WrongToken => {
                let m = format!(
                    "wrong token for workspace {workspace:?}; re-pair with the receiver's pairing file"
                );
                self.close_with(None, Reject::new(ErrorCode::Unauthorized, m));
            }
        }
        Ok(())
    }

    /// The driver's answer to [`ReceiverEvent::Prepare`]: the ids of the
    /// blobs it lacks, or why the generation is refused (the session stays
    /// open).
    pub fn handle_prepared(
        &mut self,
        result: Result<Vec<ContentId>, Reject>,
        now: Instant,
    ) -> Result<(), UsageError> {
        let State::Preparing { header } = self.state else {
            return Err(self.misuse("handle_prepared"));
        };
        match result {
            Err(r) => self.refuse(header.generation, r),
            Ok(missing) if missing.is_empty() => self.finish(header),
            Ok(missing) => {
                self.transmit.push_back(ServerMsg::Need {
                    generation: header.generation,
                    ids: missing.clone(),
                });
                self.state = State::Receiving {
                    header,
                    left: missing.into_iter().map(|id| (id, None)).collect(),
                    storing: false,
                    deadline: now + self.limits.idle,
                };
            }
        }
        Ok(())
    }

    /// The driver's answer to [`ReceiverEvent::StoreBlob`]; a blob that
    /// cannot be stored ends the session.
    pub fn handle_blob_stored(
        &mut self,
        result: Result<(), Reject>,
        now: Instant,
    ) -> Result<(), UsageError> {
        let State::Receiving {
            header,
            left,
            storing: storing @ true,
            deadline,
        } = &mut self.state
        else {
            return Err(self.misuse("handle_blob_stored"));
        };
        if let Err(r) = result {
            self.fatal(r);
            return Ok(());
        }
        *storing = false;
        *deadline = now + self.limits.idle;
        if left.is_empty() {
            let header = *header;
            self.finish(header);
        }
        Ok(())
    }

    /// The driver's answer to [`ReceiverEvent::Finish`]; a refusal keeps
    /// the session open.
    pub fn handle_finished(&mut self, result: Result<Applied, Reject>) -> Result<(), UsageError> {
        let State::Finishing { header } = self.state else {
            return Err(self.misuse("handle_finished"));
        };
        match result {
            Ok(a) => {
                self.transmit.push_back(ServerMsg::Applied {
                    ack: a.ack,
                    files_written: a.files_written,
                    apply_ms: a.apply_ms,
                });
                self.state = State::Open { incoming: None };
            }
            Err(r) => self.refuse(header.generation, r),
        }
        Ok(())
    }

    /// When [`Receiver::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello { deadline } => Some(deadline),
            State::Receiving {
                storing: false,
                deadline,
                ..
            } => Some(deadline),
            _ => None,
        }
    }

    /// Time passed: no `Hello`, or a blob transfer stalled, ends the session.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|d| now < d) {
            return;
        }
        if let State::AwaitingHello { .. } = self.state {
            let secs = self.limits.hello_timeout.as_secs();
            let m = format!("no Hello within {secs} s");
            self.close_with(None, Reject::new(ErrorCode::Malformed, m));
        } else {
            self.fatal(Reject::new(ErrorCode::Malformed, "blob transfer stalled"));
        }
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<ServerMsg> {
        self.transmit.pop_front()
    }

    /// The next request or hand-over for the driver.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    fn misuse(&self, input: &'static str) -> UsageError {
        UsageError {
            input,
            machine: "receiver",
            state: self.state.name(),
        }
    }

    fn hello(&mut self, msg: ClientMsg) {
        let ClientMsg::Hello {
            version,
            workspace,
            token,
        } = msg
        else {
            let r = Reject::new(ErrorCode::Malformed, "the first message must be Hello");
            return self.close_with(None, r);
        };
        if version != crate::PROTOCOL_VERSION {
            let ours = crate::PROTOCOL_VERSION;
            let m = format!(
                "protocol version {version} is not supported; this receiver speaks {ours}: upgrade devd on both sides"
            );
            return self.close_with(None, Reject::new(ErrorCode::Version, m));
        }
        self.state = State::Authenticating {
            workspace: workspace.clone(),
        };
        self.events
            .push_back(ReceiverEvent::Authenticate { workspace, token });
    }

    /// A message between syncs or while gathering `Changes`.
    fn open_message(&mut self, msg: ClientMsg) {
        if std::mem::take(&mut self.first)
            && matches!(msg, ClientMsg::Subscribe | ClientMsg::Logs { .. })
        {
            self.state = State::SideStream;
            self.events.push_back(ReceiverEvent::SideStream(msg));
            return;
        }
        let State::Open { incoming } = &mut self.state else {
            unreachable!("open_message is only called when open");
        };
        match msg {
            ClientMsg::Changes {
                generation,
                changes,
                blobs,
            } => {
                let inc = incoming.get_or_insert_with(|| Incoming {
                    generation,
                    ..Default::default()
                });
                if inc.generation != generation {
                    let m = format!(
                        "changes for generation {generation} while {} is open",
                        inc.generation
                    );
                    return self.close_with(Some(generation), Reject::new(ErrorCode::Malformed, m));
                }
                let size: usize = blobs.iter().map(|b| b.data.len()).sum();
                if inc.changes.len() + changes.len() > self.limits.max_changes
                    || inc.inline_bytes + size > self.limits.max_inline_bytes
                {
                    let m = format!(
                        "generation {generation} exceeds the limits of {} changes or inline blob bytes",
                        self.limits.max_changes
                    );
                    return self.close_with(Some(generation), Reject::new(ErrorCode::TooLarge, m));
                }
                inc.inline_bytes += size;
                inc.changes.extend(changes);
                inc.blobs.extend(blobs);
            }
            ClientMsg::Commit {
                generation,
                parent,
                base,
                digest,
                entries,
            } => {
                let inc = incoming.take().unwrap_or_else(|| Incoming {
                    generation,
                    ..Default::default()
                });
                if inc.generation != generation {
                    let m = format!(
                        "commit of generation {generation} while {} is open",
                        inc.generation
                    );
                    return self.close_with(Some(generation), Reject::new(ErrorCode::Malformed, m));
                }
                let header = CommitHeader {
                    generation,
                    parent,
                    base,
                    digest,
                    entries,
                };
                self.state = State::Preparing { header };
                self.events.push_back(ReceiverEvent::Prepare {
                    header,
                    incoming: inc,
                });
            }
            ClientMsg::BlobChunk { .. }
            | ClientMsg::Hello { .. }
            | ClientMsg::Subscribe
            | ClientMsg::Logs { .. } => {
                let m = "unexpected message outside of a blob request";
                self.close_with(None, Reject::new(ErrorCode::Malformed, m));
            }
        }
    }

    /// A message while blobs are expected.
    fn chunk(&mut self, msg: ClientMsg, now: Instant) {
        let max_blob = self.limits.max_blob;
        let idle = self.limits.idle;
        let State::Receiving {
            left,
            storing,
            deadline,
            ..
        } = &mut self.state
        else {
            unreachable!("chunk is only called while receiving");
        };
        let ClientMsg::BlobChunk {
            id,
            encoding,
            raw_len,
            total,
            offset,
            data,
        } = msg
        else {
            return self.fatal(Reject::new(ErrorCode::Malformed, "expected blob chunks"));
        };
        *deadline = now + idle;
        let Some(slot) = left.get_mut(&id) else {
            let m = format!("blob {id} was not requested");
            return self.fatal(Reject::new(ErrorCode::Malformed, m));
        };
        if total > 2 * max_blob || raw_len > max_blob {
            let m = format!("blob {id} is too large");
            return self.fatal(Reject::new(ErrorCode::TooLarge, m));
        }
        let blob = slot.get_or_insert_with(|| Blob {
            id,
            encoding,
            raw_len,
            data: Vec::new(),
        });
        if offset != blob.data.len() as u64 || blob.encoding != encoding || blob.raw_len != raw_len
        {
            let m = format!("blob {id}: chunk out of order");
            return self.fatal(Reject::new(ErrorCode::Malformed, m));
        }
        if blob.data.len() as u64 + data.len() as u64 > total {
            let m = format!("blob {id}: more bytes than announced");
            return self.fatal(Reject::new(ErrorCode::Malformed, m));
        }
        blob.data.extend_from_slice(&data);
        if blob.data.len() as u64 == total {
            let blob = left
                .remove(&id)
                .flatten()
                .expect("a complete blob is in its slot");
            *storing = true;
            self.events.push_back(ReceiverEvent::StoreBlob(blob));
        }
    }

    /// Every blob is in: ask the driver to apply the generation.
    fn finish(&mut self, header: CommitHeader) {
        self.state = State::Finishing { header };
        self.events.push_back(ReceiverEvent::Finish {
            generation: header.generation,
        });
    }

    /// Refuse `generation`; the session stays open.
    fn refuse(&mut self, generation: u64, r: Reject) {
        self.transmit.push_back(rejected(Some(generation), r));
        self.state = State::Open { incoming: None };
    }

    /// Refuse the generation being received and end the session.
    fn fatal(&mut self, r: Reject) {
        let generation = self.generation();
        self.close_with(generation, r);
    }

    /// Send a refusal and end the session.
    fn close_with(&mut self, generation: Option<u64>, r: Reject) {
        self.transmit.push_back(rejected(generation, r));
        self.state = State::Closed;
    }
}

fn rejected(generation: Option<u64>, r: Reject) -> ServerMsg {
    ServerMsg::Rejected {
        generation,
        code: r.code,
        message: r.message,
    }
}

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
//! 2. If the first message after that is `Subscribe`, `Logs`, `Retry`,
//!    `Remove` or `Exec`, the stream
//!    is a side stream ([`ReceiverEvent::SideStream`]): the driver serves it
//!    and the machine is done.
//! 3. `Changes` frames of one generation accumulate (bounded by [`Limits`]);
//!    `Commit` closes them: [`ReceiverEvent::Prepare`] asks the driver to
//!    validate the generation and store its inline blobs, answered with the
//!    ids it still lacks ([`Receiver::handle_prepared`]).
//! 4. The machine sends `Need` and checks the `BlobChunk`s (only requested
//!    ids, one blob at a time, offsets in order, sizes bounded, at most
//!    [`Limits::idle`] of silence); it never reassembles a blob: each chunk
//!    is a [`ReceiverEvent::StoreChunk`] ([`Receiver::handle_chunk_stored`])
//!    that the driver appends to disk, and decodes, verifies and stores at
//!    the blob's last chunk. What a session holds in memory is bounded:
//!    one chunk, and [`Limits::max_held_bytes`] of changes before `Commit`.
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
use crate::compress::Encoding;
use crate::content_id::ContentId;
use crate::message::{ClientMsg, ErrorCode, ServerMsg, Writer};
use crate::overlay::{Change, Entry};
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

pub use super::driver::{
    Applied, AuthAnswer, BlobPart, CHANGE_COST, ClaimAnswer, CommitHeader, Incoming, Limits,
    ReceiverEvent,
};

/// The blob whose chunks are arriving.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    id: ContentId,
    encoding: Encoding,
    raw_len: u64,
    total: u64,
    received: u64,
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
        /// Blobs still expected (the one in flight included).
        left: HashSet<ContentId>,
        /// The blob whose chunks are arriving, until its last one.
        current: Option<InFlight>,
        /// Waiting for the driver to store a chunk (no deadline meanwhile).
        storing: bool,
        deadline: Instant,
    },
    Finishing {
        header: CommitHeader,
    },
    /// Waiting for [`Receiver::handle_claim`] about this writer.
    Claiming {
        writer: Writer,
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
            State::Claiming { .. } => "claiming the workspace",
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
            AuthAnswer::Busy { message } => {
                self.close_with(None, Reject::new(ErrorCode::Internal, message));
            }
        }
        Ok(())
    }

    /// The driver's answer to [`ReceiverEvent::Claim`].
    pub fn handle_claim(&mut self, answer: ClaimAnswer) -> Result<(), UsageError> {
        let State::Claiming { writer } = &self.state else {
            return Err(self.misuse("handle_claim"));
        };
        match answer {
            ClaimAnswer::Granted { since, previous } => {
                self.transmit.push_back(ServerMsg::Claimed {
                    writer: writer.clone(),
                    since,
                    previous,
                });
                self.state = State::Open { incoming: None };
            }
            ClaimAnswer::Refused(r) => self.close_with(None, r),
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
                    left: missing.into_iter().collect(),
                    current: None,
                    storing: false,
                    deadline: now + self.limits.idle,
                };
            }
        }
        Ok(())
    }

    /// The driver's answer to [`ReceiverEvent::StoreChunk`]; a chunk or
    /// blob that cannot be stored ends the session.
    pub fn handle_chunk_stored(
        &mut self,
        result: Result<(), Reject>,
        now: Instant,
    ) -> Result<(), UsageError> {
        let State::Receiving {
            header,
            left,
            storing: storing @ true,
            deadline,
            ..
        } = &mut self.state
        else {
            return Err(self.misuse("handle_chunk_stored"));
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
            && matches!(
                msg,
                ClientMsg::Subscribe
                    | ClientMsg::Logs { .. }
                    | ClientMsg::Retry { .. }
                    | ClientMsg::Remove
                    | ClientMsg::Exec { .. }
                    | ClientMsg::Secrets { .. }
            )
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
                let held = size + changes.iter().map(held_by).sum::<usize>();
                if inc.held_bytes + held > self.limits.max_held_bytes {
                    let mib = self.limits.max_held_bytes >> 20;
                    let m = format!(
                        "generation {generation} is more than this receiver holds for one sync ({mib} MiB of paths and inline content, reached after {} changes): commit and push the bulk of it (the receiver fetches pushed commits itself), or exclude generated files with .devdignore",
                        inc.changes.len()
                    );
                    return self.close_with(Some(generation), Reject::new(ErrorCode::TooLarge, m));
                }
                inc.held_bytes += held;
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
            ClientMsg::Claim { writer, take_over } if incoming.is_none() => {
                self.state = State::Claiming {
                    writer: writer.clone(),
                };
                self.events
                    .push_back(ReceiverEvent::Claim { writer, take_over });
            }
            ClientMsg::Release if incoming.is_none() => {
                self.events.push_back(ReceiverEvent::Release);
            }
            // A generation the receiver already refused (or never got):
            // nothing to drop.
            ClientMsg::Abandon { .. } => {}
            ClientMsg::BlobChunk { .. }
            | ClientMsg::Claim { .. }
            | ClientMsg::Hello { .. }
            | ClientMsg::Subscribe
            | ClientMsg::Logs { .. }
            | ClientMsg::Retry { .. }
            | ClientMsg::Release
            | ClientMsg::Remove
            | ClientMsg::Exec { .. }
            | ClientMsg::ExecInput { .. }
            | ClientMsg::ExecResize(_)
            | ClientMsg::Secrets { .. } => {
                let m = "unexpected message outside of a blob request";
                self.close_with(None, Reject::new(ErrorCode::Malformed, m));
            }
        }
    }

    /// A message while blobs are expected: check the chunk and hand it to
    /// the driver.
    fn chunk(&mut self, msg: ClientMsg, now: Instant) {
        let max_blob = self.limits.max_blob;
        let idle = self.limits.idle;
        let State::Receiving {
            left,
            current,
            storing,
            deadline,
            ..
        } = &mut self.state
        else {
            unreachable!("chunk is only called while receiving");
        };
        if let ClientMsg::Abandon { generation } = msg {
            if self.generation() != Some(generation) {
                let m = format!("abandon of generation {generation}, which is not being received");
                return self.fatal(Reject::new(ErrorCode::Malformed, m));
            }
            self.state = State::Open { incoming: None };
            self.events
                .push_back(ReceiverEvent::Abandoned { generation });
            return;
        }
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
        let blob = match current {
            Some(blob) if blob.id != id => {
                let m = format!("blob {id} started before blob {} was complete", blob.id);
                return self.fatal(Reject::new(ErrorCode::Malformed, m));
            }
            Some(blob) => blob,
            None => {
                if !left.contains(&id) {
                    let m = format!("blob {id} was not requested");
                    return self.fatal(Reject::new(ErrorCode::Malformed, m));
                }
                if total > 2 * max_blob || raw_len > max_blob {
                    let m = format!("blob {id} is too large");
                    return self.fatal(Reject::new(ErrorCode::TooLarge, m));
                }
                current.insert(InFlight {
                    id,
                    encoding,
                    raw_len,
                    total,
                    received: 0,
                })
            }
        };
        if offset != blob.received
            || blob.encoding != encoding
            || blob.raw_len != raw_len
            || blob.total != total
        {
            let m = format!("blob {id}: chunk out of order");
            return self.fatal(Reject::new(ErrorCode::Malformed, m));
        }
        if blob.received + data.len() as u64 > total {
            let m = format!("blob {id}: more bytes than announced");
            return self.fatal(Reject::new(ErrorCode::Malformed, m));
        }
        blob.received += data.len() as u64;
        if blob.received == total {
            left.remove(&id);
            *current = None;
        }
        *storing = true;
        self.events.push_back(ReceiverEvent::StoreChunk(BlobPart {
            id,
            encoding,
            raw_len,
            total,
            offset,
            data,
        }));
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

/// What a change holds, as [`Limits::max_held_bytes`] counts it.
fn held_by(c: &Change) -> usize {
    let target = match &c.entry {
        Some(Entry::Symlink { target }) => target.len(),
        _ => 0,
    };
    CHANGE_COST + c.path.as_str().len() + target
}

fn rejected(generation: Option<u64>, r: Reject) -> ServerMsg {
    ServerMsg::Rejected {
        generation,
        code: r.code,
        message: r.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Encoding;
    use crate::content_id::GitOid;
    use crate::message::{Ack, Base, Blob};
    use crate::overlay::Digest;
    use crate::overlay::Entry;
    use crate::path::RelPath;
    use std::time::Duration;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    fn hello(version: u32) -> ClientMsg {
        ClientMsg::Hello {
            version,
            workspace: "alice".into(),
            token: "tok".into(),
        }
    }

    fn accepted() -> AuthAnswer {
        AuthAnswer::Accepted {
            receiver: "devd-receiver test".into(),
            acked: None,
            worktree: "/w".into(),
        }
    }

    fn change(path: &str, n: u8) -> Change {
        Change {
            path: RelPath::new(path).unwrap(),
            entry: Some(Entry::File {
                id: id(n),
                exec: false,
                mode: None,
            }),
        }
    }

    fn changes(generation: u64, c: Vec<Change>, blobs: Vec<Blob>) -> ClientMsg {
        ClientMsg::Changes {
            generation,
            changes: c,
            blobs,
        }
    }

    fn commit(generation: u64) -> ClientMsg {
        ClientMsg::Commit {
            generation,
            parent: None,
            base: Base::Commit(GitOid([1; 20])),
            digest: Digest([2; 32]),
            entries: 1,
        }
    }

    fn chunk(n: u8, total: u64, offset: u64, data: Vec<u8>) -> ClientMsg {
        ClientMsg::BlobChunk {
            id: id(n),
            encoding: Encoding::Raw,
            raw_len: total,
            total,
            offset,
            data,
        }
    }

    fn rejected_frame(r: &mut Receiver) -> (Option<u64>, ErrorCode, String) {
        match r.poll_transmit() {
            Some(ServerMsg::Rejected {
                generation,
                code,
                message,
            }) => (generation, code, message),
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    /// A receiver past Welcome.
    fn open(now: Instant, limits: Limits) -> Receiver {
        let mut r = Receiver::with_limits(limits, now);
        r.handle_message(hello(crate::PROTOCOL_VERSION), now)
            .unwrap();
        assert_eq!(
            r.poll_event(),
            Some(ReceiverEvent::Authenticate {
                workspace: "alice".into(),
                token: "tok".into()
            })
        );
        r.handle_auth(accepted()).unwrap();
        assert_eq!(
            r.poll_transmit(),
            Some(ServerMsg::Welcome {
                version: crate::PROTOCOL_VERSION,
                receiver: "devd-receiver test".into(),
                acked: None,
                worktree: "/w".into(),
            })
        );
        r
    }

    /// A receiver that sent `Need` for `ids` of generation 1 at `now`.
    fn receiving(now: Instant, ids: Vec<ContentId>) -> Receiver {
        let mut r = open(now, Limits::default());
        r.handle_message(commit(1), now).unwrap();
        assert!(matches!(
            r.poll_event(),
            Some(ReceiverEvent::Prepare { .. })
        ));
        r.handle_prepared(Ok(ids.clone()), now).unwrap();
        assert_eq!(
            r.poll_transmit(),
            Some(ServerMsg::Need { generation: 1, ids })
        );
        r
    }

    fn writer(worktree: &str) -> Writer {
        Writer {
            host: "laptop".into(),
            worktree: worktree.into(),
        }
    }

    /// `Release` between generations is handed to the driver (which gives
    /// up the claim and ends the connection); during one it is malformed.
    #[test]
    fn release_between_generations_is_the_drivers_and_malformed_inside_one() {
        let now = Instant::now();
        let mut r = open(now, Limits::default());
        r.handle_message(ClientMsg::Release, now).unwrap();
        assert_eq!(r.poll_event(), Some(ReceiverEvent::Release));

        let mut r = receiving(now, vec![id(1)]);
        r.handle_message(ClientMsg::Release, now).unwrap();
        assert_eq!(
            rejected_frame(&mut r).1,
            ErrorCode::Malformed,
            "a release while a generation's blobs are expected"
        );
    }

    /// A claim is the driver's to decide: granted, it is answered with
    /// `Claimed` and syncs follow; refused, the refusal ends the session.
    #[test]
    fn a_claim_is_answered_with_claimed_or_ends_the_session() {
        let now = Instant::now();
        let mut r = open(now, Limits::default());
        let claim = ClientMsg::Claim {
            writer: writer("/a"),
            take_over: true,
        };
        r.handle_message(claim.clone(), now).unwrap();
        assert_eq!(
            r.poll_event(),
            Some(ReceiverEvent::Claim {
                writer: writer("/a"),
                take_over: true
            })
        );
        assert!(r.handle_message(commit(1), now).is_err(), "claiming");
        r.handle_claim(ClaimAnswer::Granted {
            since: 7,
            previous: Some(writer("/b")),
        })
        .unwrap();
        assert_eq!(
            r.poll_transmit(),
            Some(ServerMsg::Claimed {
                writer: writer("/a"),
                since: 7,
                previous: Some(writer("/b"))
            })
        );
        r.handle_message(commit(1), now).unwrap();
        assert!(matches!(
            r.poll_event(),
            Some(ReceiverEvent::Prepare { .. })
        ));

        let mut r = open(now, Limits::default());
        r.handle_message(claim, now).unwrap();
        r.poll_event();
        let refusal = Reject::new(ErrorCode::OtherWriter, "host x holds it");
        r.handle_claim(ClaimAnswer::Refused(refusal)).unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (None, ErrorCode::OtherWriter, "host x holds it".into())
        );
        assert!(r.is_closed());
    }

    #[test]
    fn hello_deadline_is_the_time_given_plus_ten_seconds() {
        let t0 = Instant::now();
        let mut r = Receiver::new(t0);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        r.handle_timeout(t0 + Duration::from_millis(9_999));
        assert!(!r.is_closed());
        assert_eq!(r.poll_transmit(), None);
        r.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            rejected_frame(&mut r),
            (None, ErrorCode::Malformed, "no Hello within 10 s".into())
        );
        assert!(r.is_closed());
    }

    #[test]
    fn wrong_version_is_refused_before_authentication() {
        let now = Instant::now();
        let mut r = Receiver::new(now);
        r.handle_message(hello(99), now).unwrap();
        assert_eq!(r.poll_event(), None);
        let (generation, code, message) = rejected_frame(&mut r);
        assert_eq!((generation, code), (None, ErrorCode::Version));
        assert!(message.contains("protocol version 99"), "{message}");
        assert!(r.is_closed());
    }

    #[test]
    fn first_message_must_be_hello() {
        let now = Instant::now();
        let mut r = Receiver::new(now);
        r.handle_message(commit(1), now).unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (
                None,
                ErrorCode::Malformed,
                "the first message must be Hello".into()
            )
        );
        assert!(r.is_closed());
    }

    #[test]
    fn bad_token_and_unknown_workspace_are_refused() {
        for (answer, want) in [
            (AuthAnswer::WrongToken, ErrorCode::Unauthorized),
            (AuthAnswer::UnknownWorkspace, ErrorCode::UnknownWorkspace),
        ] {
            let now = Instant::now();
            let mut r = Receiver::new(now);
            r.handle_message(hello(crate::PROTOCOL_VERSION), now)
                .unwrap();
            assert!(matches!(
                r.poll_event(),
                Some(ReceiverEvent::Authenticate { .. })
            ));
            assert_eq!(r.poll_timeout(), None, "no deadline while authenticating");
            r.handle_auth(answer).unwrap();
            let (generation, code, message) = rejected_frame(&mut r);
            assert_eq!((generation, code), (None, want));
            assert!(message.contains("\"alice\""), "{message}");
            assert!(r.is_closed());
        }
    }

    #[test]
    fn subscribe_or_logs_first_is_a_side_stream_later_it_is_refused() {
        let now = Instant::now();
        let logs = ClientMsg::Logs {
            service: "web".into(),
            build: false,
            follow: true,
        };
        for first in [ClientMsg::Subscribe, logs] {
            let mut r = open(now, Limits::default());
            r.handle_message(first.clone(), now).unwrap();
            assert_eq!(r.poll_event(), Some(ReceiverEvent::SideStream(first)));
            assert_eq!(r.poll_transmit(), None);
            assert!(r.handle_message(commit(1), now).is_err());
        }
        let mut r = open(now, Limits::default());
        r.handle_message(changes(1, vec![], vec![]), now).unwrap();
        r.handle_message(ClientMsg::Subscribe, now).unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (
                None,
                ErrorCode::Malformed,
                "unexpected message outside of a blob request".into()
            )
        );
        assert!(r.is_closed());
    }

    #[test]
    fn changes_accumulate_into_one_prepare_request() {
        let now = Instant::now();
        let mut r = open(now, Limits::default());
        let b = Blob {
            id: id(1),
            encoding: Encoding::Raw,
            raw_len: 3,
            data: vec![1, 2, 3],
        };
        r.handle_message(changes(1, vec![change("a", 1)], vec![]), now)
            .unwrap();
        r.handle_message(changes(1, vec![change("b", 2)], vec![b.clone()]), now)
            .unwrap();
        r.handle_message(commit(1), now).unwrap();
        assert_eq!(
            r.poll_event(),
            Some(ReceiverEvent::Prepare {
                header: CommitHeader {
                    generation: 1,
                    parent: None,
                    base: Base::Commit(GitOid([1; 20])),
                    digest: Digest([2; 32]),
                    entries: 1,
                },
                incoming: Incoming {
                    generation: 1,
                    changes: vec![change("a", 1), change("b", 2)],
                    blobs: vec![b],
                    inline_bytes: 3,
                    held_bytes: 3 + 2 * (CHANGE_COST + 1),
                }
            })
        );
        assert_eq!(r.generation(), Some(1));
        assert!(r.handle_message(commit(2), now).is_err(), "busy preparing");
    }

    #[test]
    fn changes_or_commit_for_another_generation_end_the_session() {
        let now = Instant::now();
        let mut r = open(now, Limits::default());
        r.handle_message(changes(1, vec![change("a", 1)], vec![]), now)
            .unwrap();
        r.handle_message(changes(2, vec![], vec![]), now).unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (
                Some(2),
                ErrorCode::Malformed,
                "changes for generation 2 while 1 is open".into()
            )
        );
        assert!(r.is_closed());
        let mut r = open(now, Limits::default());
        r.handle_message(changes(1, vec![], vec![]), now).unwrap();
        r.handle_message(commit(3), now).unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (
                Some(3),
                ErrorCode::Malformed,
                "commit of generation 3 while 1 is open".into()
            )
        );
    }

    #[test]
    fn too_many_changes_or_inline_bytes_end_the_session() {
        let now = Instant::now();
        let limits = Limits {
            max_changes: 2,
            max_inline_bytes: 4,
            ..Limits::default()
        };
        let mut r = open(now, limits);
        r.handle_message(
            changes(1, vec![change("a", 1), change("b", 1)], vec![]),
            now,
        )
        .unwrap();
        r.handle_message(changes(1, vec![change("c", 1)], vec![]), now)
            .unwrap();
        let (generation, code, _) = rejected_frame(&mut r);
        assert_eq!((generation, code), (Some(1), ErrorCode::TooLarge));
        assert!(r.is_closed());
        let mut r = open(now, limits);
        let b = Blob {
            id: id(1),
            encoding: Encoding::Raw,
            raw_len: 5,
            data: vec![0; 5],
        };
        r.handle_message(changes(1, vec![], vec![b]), now).unwrap();
        let (_, code, _) = rejected_frame(&mut r);
        assert_eq!(code, ErrorCode::TooLarge);
    }

    #[test]
    fn refused_prepare_or_finish_keeps_the_session() {
        let now = Instant::now();
        let mut r = open(now, Limits::default());
        r.handle_message(commit(1), now).unwrap();
        r.poll_event();
        r.handle_prepared(Err(Reject::new(ErrorCode::OutOfSync, "parent")), now)
            .unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::OutOfSync, "parent".into())
        );
        assert!(!r.is_closed());
        // The laptop resends; nothing is missing; finishing fails.
        r.handle_message(commit(1), now).unwrap();
        r.poll_event();
        r.handle_prepared(Ok(vec![]), now).unwrap();
        assert_eq!(r.poll_transmit(), None, "no Need when nothing is missing");
        assert_eq!(
            r.poll_event(),
            Some(ReceiverEvent::Finish { generation: 1 })
        );
        r.handle_finished(Err(Reject::new(ErrorCode::Storage, "disk")))
            .unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::Storage, "disk".into())
        );
        assert!(!r.is_closed());
        // And once more, applied.
        r.handle_message(commit(2), now).unwrap();
        r.poll_event();
        r.handle_prepared(Ok(vec![]), now).unwrap();
        r.poll_event();
        let ack = Ack {
            generation: 2,
            digest: Digest([2; 32]),
            base: Base::Uploaded,
        };
        r.handle_finished(Ok(Applied {
            ack,
            files_written: 3,
            apply_ms: 4,
        }))
        .unwrap();
        assert_eq!(
            r.poll_transmit(),
            Some(ServerMsg::Applied {
                ack,
                files_written: 3,
                apply_ms: 4
            })
        );
    }

    fn part(n: u8, total: u64, offset: u64, data: Vec<u8>) -> ReceiverEvent {
        ReceiverEvent::StoreChunk(BlobPart {
            id: id(n),
            encoding: Encoding::Raw,
            raw_len: total,
            total,
            offset,
            data,
        })
    }

    #[test]
    fn chunks_are_handed_over_one_by_one_and_then_finished() {
        let t0 = Instant::now();
        let mut r = receiving(t0, vec![id(1), id(2)]);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        let t1 = t0 + Duration::from_secs(30);
        r.handle_message(chunk(1, 5, 0, vec![1, 1]), t1).unwrap();
        let first = part(1, 5, 0, vec![1, 1]);
        assert_eq!(r.poll_event(), Some(first.clone()));
        let ReceiverEvent::StoreChunk(p) = first else {
            unreachable!()
        };
        assert!(p.is_first() && !p.is_last());
        assert_eq!(r.poll_timeout(), None, "no deadline while storing");
        assert!(
            r.handle_message(chunk(1, 5, 2, vec![1]), t1).is_err(),
            "no frame before the chunk is stored"
        );
        r.handle_chunk_stored(Ok(()), t1).unwrap();
        assert_eq!(r.poll_timeout(), Some(t1 + Duration::from_secs(60)));
        r.handle_message(chunk(1, 5, 2, vec![1, 1, 1]), t1).unwrap();
        let last = part(1, 5, 2, vec![1, 1, 1]);
        assert_eq!(r.poll_event(), Some(last.clone()));
        let ReceiverEvent::StoreChunk(p) = last else {
            unreachable!()
        };
        assert!(!p.is_first() && p.is_last());
        r.handle_chunk_stored(Ok(()), t1).unwrap();
        // An empty blob is one empty chunk, first and last.
        r.handle_message(chunk(2, 0, 0, vec![]), t1).unwrap();
        assert!(matches!(
            r.poll_event(),
            Some(ReceiverEvent::StoreChunk(p)) if p.data.is_empty() && p.is_first() && p.is_last()
        ));
        r.handle_chunk_stored(Ok(()), t1).unwrap();
        assert_eq!(
            r.poll_event(),
            Some(ReceiverEvent::Finish { generation: 1 })
        );
        assert_eq!(r.poll_transmit(), None);
    }

    /// Feed `msgs` to a receiver waiting for blob 1 (5 bytes), storing
    /// every chunk it hands over, and return the refusal that ended the
    /// session.
    fn fatal_after(msgs: Vec<ClientMsg>) -> (Option<u64>, ErrorCode, String) {
        let now = Instant::now();
        let mut r = receiving(now, vec![id(1), id(2)]);
        for m in msgs {
            r.handle_message(m, now).unwrap();
            if let Some(ReceiverEvent::StoreChunk(_)) = r.poll_event() {
                r.handle_chunk_stored(Ok(()), now).unwrap();
            }
        }
        let out = rejected_frame(&mut r);
        assert!(r.is_closed());
        assert_eq!(r.poll_event(), None, "no Finish");
        out
    }

    /// Blobs come one after another: a second blob starting while the first
    /// is incomplete is refused (the driver spools one blob at a time).
    #[test]
    fn interleaved_blobs_end_the_session() {
        let (_, code, message) =
            fatal_after(vec![chunk(1, 5, 0, vec![1]), chunk(2, 5, 0, vec![2])]);
        assert_eq!(code, ErrorCode::Malformed);
        assert_eq!(
            message,
            format!("blob {} started before blob {} was complete", id(2), id(1))
        );
    }

    /// Long paths count: a generation whose changes hold more than
    /// `max_held_bytes` is refused with a message saying what to do.
    #[test]
    fn changes_holding_too_many_bytes_end_the_session() {
        let now = Instant::now();
        let limits = Limits {
            max_held_bytes: 3 * CHANGE_COST + 300,
            ..Limits::default()
        };
        let long = |c: char| change(&c.to_string().repeat(100), 1);
        let mut r = open(now, limits);
        r.handle_message(changes(1, vec![long('a'), long('b')], vec![]), now)
            .unwrap();
        r.handle_message(changes(1, vec![long('c')], vec![]), now)
            .unwrap();
        assert!(!r.is_closed(), "three 100-byte paths fit");
        r.handle_message(changes(1, vec![change("d", 1)], vec![]), now)
            .unwrap();
        let (generation, code, message) = rejected_frame(&mut r);
        assert_eq!((generation, code), (Some(1), ErrorCode::TooLarge));
        assert!(
            message.contains("after 3 changes") && message.contains("commit and push"),
            "{message}"
        );
        assert!(r.is_closed());
    }

    #[test]
    fn chunk_checks_end_the_session() {
        let id1 = id(1);
        let cases = [
            (
                vec![chunk(1, 5, 2, vec![1])],
                ErrorCode::Malformed,
                format!("blob {id1}: chunk out of order"),
            ),
            (
                vec![chunk(1, 5, 0, vec![1]), chunk(1, 5, 2, vec![1])],
                ErrorCode::Malformed,
                format!("blob {id1}: chunk out of order"),
            ),
            (
                vec![chunk(9, 5, 0, vec![1])],
                ErrorCode::Malformed,
                format!("blob {} was not requested", id(9)),
            ),
            (
                vec![chunk(1, 5, 0, vec![1; 6])],
                ErrorCode::Malformed,
                format!("blob {id1}: more bytes than announced"),
            ),
            (
                vec![chunk(1, (1 << 30) + 1, 0, vec![1])],
                ErrorCode::TooLarge,
                format!("blob {id1} is too large"),
            ),
            (
                vec![commit(2)],
                ErrorCode::Malformed,
                "expected blob chunks".into(),
            ),
        ];
        for (msgs, code, message) in cases {
            assert_eq!(fatal_after(msgs), (Some(1), code, message));
        }
        // The encoding may not change between chunks of one blob.
        let mut other = chunk(1, 5, 1, vec![1]);
        if let ClientMsg::BlobChunk { encoding, .. } = &mut other {
            *encoding = Encoding::Zstd;
        }
        let (_, code, message) = fatal_after(vec![chunk(1, 5, 0, vec![1]), other]);
        assert_eq!(code, ErrorCode::Malformed);
        assert!(message.ends_with("chunk out of order"));
        // A blob's encoding may be up to twice its raw size, not more.
        let mut big = chunk(1, 0, 0, vec![]);
        if let ClientMsg::BlobChunk { raw_len, total, .. } = &mut big {
            *raw_len = 10;
            *total = (2 << 30) + 1;
        }
        assert_eq!(fatal_after(vec![big]).1, ErrorCode::TooLarge);
    }

    #[test]
    fn a_complete_blob_sent_again_was_not_requested() {
        let now = Instant::now();
        let mut r = receiving(now, vec![id(1), id(2)]);
        r.handle_message(chunk(1, 1, 0, vec![1]), now).unwrap();
        assert!(matches!(r.poll_event(), Some(ReceiverEvent::StoreChunk(_))));
        r.handle_chunk_stored(Ok(()), now).unwrap();
        r.handle_message(chunk(1, 1, 0, vec![1]), now).unwrap();
        let (_, code, message) = rejected_frame(&mut r);
        assert_eq!(code, ErrorCode::Malformed);
        assert!(message.ends_with("was not requested"));
    }

    #[test]
    fn idle_blob_transfer_times_out() {
        let t0 = Instant::now();
        let mut r = receiving(t0, vec![id(1)]);
        r.handle_timeout(t0 + Duration::from_secs(59));
        assert!(!r.is_closed());
        r.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(
            rejected_frame(&mut r),
            (
                Some(1),
                ErrorCode::Malformed,
                "blob transfer stalled".into()
            )
        );
        assert!(r.is_closed());
    }

    #[test]
    fn a_blob_that_cannot_be_stored_ends_the_session() {
        let now = Instant::now();
        let mut r = receiving(now, vec![id(1), id(2)]);
        r.handle_message(chunk(1, 1, 0, vec![1]), now).unwrap();
        r.poll_event();
        r.handle_chunk_stored(Err(Reject::new(ErrorCode::BadBlob, "hash")), now)
            .unwrap();
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::BadBlob, "hash".into())
        );
        assert!(r.is_closed());
        assert_eq!(r.poll_event(), None, "no Finish");
    }

    #[test]
    fn stream_end_and_read_errors() {
        let now = Instant::now();
        // Between syncs: the session just ends.
        let mut r = open(now, Limits::default());
        r.handle_stream_end();
        assert!(r.is_closed());
        assert_eq!(r.poll_transmit(), None);
        let mut r = open(now, Limits::default());
        r.handle_read_failed("reset");
        assert!(r.is_closed());
        assert_eq!(r.poll_transmit(), None);
        // While blobs are expected it is refused.
        let mut r = receiving(now, vec![id(1)]);
        r.handle_stream_end();
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::Malformed, "stream ended".into())
        );
        let mut r = receiving(now, vec![id(1)]);
        r.handle_read_failed("reset");
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::Malformed, "reset".into())
        );
        // Before Hello: a read error is refused, an end is not.
        let mut r = Receiver::new(now);
        r.handle_read_failed("reset");
        assert_eq!(
            rejected_frame(&mut r),
            (None, ErrorCode::Malformed, "reset".into())
        );
        let mut r = Receiver::new(now);
        r.handle_stream_end();
        assert!(r.is_closed());
        assert_eq!(r.poll_transmit(), None);
    }

    #[test]
    fn undecodable_frames_end_the_session() {
        let now = Instant::now();
        let mut dec = crate::codec::FrameDecoder::new(16);
        dec.push(&[0, 0, 1, 0]);
        let err = dec.decode::<ClientMsg>().unwrap_err();
        let mut r = open(now, Limits::default());
        r.handle_bad_frame(Reject::from(&err));
        let (generation, code, message) = rejected_frame(&mut r);
        assert_eq!((generation, code), (None, ErrorCode::TooLarge));
        assert!(message.contains("256"), "{message}");
        assert!(r.is_closed());
        let mut r = receiving(now, vec![id(1)]);
        r.handle_bad_frame(Reject::new(ErrorCode::Malformed, "truncated"));
        assert_eq!(
            rejected_frame(&mut r),
            (Some(1), ErrorCode::Malformed, "truncated".into())
        );
    }

    #[test]
    fn answers_nobody_asked_for_are_usage_errors() {
        let now = Instant::now();
        let mut r = Receiver::new(now);
        let e = r.handle_prepared(Ok(vec![]), now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "handle_prepared is not expected while the receiver is waiting for Hello"
        );
        assert!(r.handle_auth(accepted()).is_err());
        let mut r = open(now, Limits::default());
        assert!(r.handle_chunk_stored(Ok(()), now).is_err());
        assert!(
            r.handle_finished(Err(Reject::new(ErrorCode::Internal, "x")))
                .is_err()
        );
        assert_eq!(r.poll_transmit(), None);
    }
}

//! One writer per workspace. A daemon claims the workspace after `Welcome`
//! ([`devd_protocol::ClientMsg::Claim`]); while one daemon (a host and a
//! worktree) holds it, another is refused with a message naming the
//! holder, unless it takes the workspace over explicitly. Taking over ends
//! the previous writer's connections; its reconnect's claim is refused,
//! which is how it learns. The claim is kept on disk, so a receiver
//! restart does not let a second writer in.

use devd_protocol::message::{ErrorCode, Writer};
use devd_protocol::session::Reject;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The workspace's writer, as kept in `writer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    host: String,
    worktree: String,
    since: u64,
}

#[derive(Debug)]
struct Holder {
    writer: Writer,
    since: u64,
    /// Which claim this is (a take-over starts a new one).
    epoch: u64,
    /// Cancelled when another writer takes over.
    taken: CancellationToken,
    /// The holder's latest connection: cancelled when the same writer
    /// claims again on a new one (its daemon reconnected, so the old
    /// connection is dead even if the receiver has not noticed yet).
    connection: CancellationToken,
}

/// The writer claim of one workspace.
#[derive(Debug)]
pub struct WriterClaim {
    workspace: String,
    path: PathBuf,
    holder: Mutex<Option<Holder>>,
    /// The last epoch handed out: every new holder gets the next one, so
    /// a grant from before a release never matches a later holder.
    epochs: std::sync::atomic::AtomicU64,
}

/// A granted claim, held by a connection.
#[derive(Clone, Debug)]
pub struct Grant {
    pub since: u64,
    /// The writer this claim took the workspace over from.
    pub previous: Option<Writer>,
    epoch: u64,
    /// Cancelled when another writer takes over: end the connection.
    pub taken: CancellationToken,
    /// Cancelled when the same writer claims again on a newer connection:
    /// end this one at once, even mid-generation, so that the workspace
    /// it holds does not wait for a dead connection's idle timeout.
    pub superseded: CancellationToken,
}

impl WriterClaim {
    /// The claim of workspace `name` whose directory is `dir` (read from
    /// its `writer.json`, if any).
    pub fn open(dir: &Path, name: &str) -> Self {
        let path = dir.join("writer.json");
        let holder = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .map(|s| Holder {
                writer: Writer {
                    host: s.host,
                    worktree: s.worktree,
                },
                since: s.since,
                epoch: 0,
                taken: CancellationToken::new(),
                connection: CancellationToken::new(),
            });
        Self {
            workspace: name.to_owned(),
            path,
            holder: Mutex::new(holder),
            epochs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `writer` claims the workspace at `now` (Unix seconds): granted when
    /// nobody holds it, when it already does, or with `take_over`.
    pub fn claim(&self, writer: &Writer, take_over: bool, now: u64) -> Result<Grant, Reject> {
        let mut holder = self.holder.lock().expect("writer claim");
        match holder.as_mut() {
            Some(h) if h.writer == *writer => {
                h.connection.cancel();
                h.connection = CancellationToken::new();
                return Ok(Grant {
                    since: h.since,
                    previous: None,
                    epoch: h.epoch,
                    taken: h.taken.clone(),
                    superseded: h.connection.clone(),
                });
            }
            Some(h) if !take_over => {
                let m = format!(
                    "workspace {:?} is synced by another daemon ({}) since {}; stop that daemon, or run `devd start --take-over` here to make this one the workspace's writer",
                    self.workspace,
                    h.writer,
                    timestamp(h.since)
                );
                return Err(Reject::new(ErrorCode::OtherWriter, m));
            }
            _ => {}
        }
        let previous = holder.take().map(|h| {
            tracing::warn!(workspace = %self.workspace, from = %h.writer, to = %writer, "writer taken over");
            h.taken.cancel();
            h.connection.cancel();
            h.writer
        });
        let stored = Stored {
            host: writer.host.clone(),
            worktree: writer.worktree.clone(),
            since: now,
        };
        let bytes = serde_json::to_vec(&stored).expect("writer record");
        if let Err(e) = devd_sync::fsutil::write_atomic(&self.path, &bytes, Some(0o600)) {
            let m = format!("cannot record the workspace's writer: {e}");
            return Err(Reject::new(ErrorCode::Storage, m));
        }
        let h = Holder {
            writer: writer.clone(),
            since: now,
            epoch: self
                .epochs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1,
            taken: CancellationToken::new(),
            connection: CancellationToken::new(),
        };
        let grant = Grant {
            since: now,
            previous,
            epoch: h.epoch,
            taken: h.taken.clone(),
            superseded: h.connection.clone(),
        };
        *holder = Some(h);
        Ok(grant)
    }

    /// The holder of `grant` stops cleanly: nobody holds the workspace
    /// now, so the next daemon's claim is granted without `--take-over`.
    /// A grant that was taken over meanwhile releases nothing.
    pub fn release(&self, grant: &Grant) {
        let mut holder = self.holder.lock().expect("writer claim");
        if holder
            .as_ref()
            .is_some_and(|h| h.epoch == grant.epoch && !grant.taken.is_cancelled())
        {
            *holder = None;
            if let Err(e) = std::fs::remove_file(&self.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(workspace = %self.workspace, error = %e, "cannot remove the released writer record");
            }
        }
    }

    /// Whether a connection with `grant` (or, `None`, one that made no
    /// claim) may write: the grant is still current, or nobody holds the
    /// workspace. The refusal names the holder.
    pub fn may_write(&self, grant: Option<&Grant>) -> Result<(), Reject> {
        let holder = self.holder.lock().expect("writer claim");
        match (holder.as_ref(), grant) {
            (None, _) => Ok(()),
            (Some(h), Some(g)) if h.epoch == g.epoch && !g.taken.is_cancelled() => Ok(()),
            (Some(h), _) => {
                let m = format!(
                    "workspace {:?} was taken over by another daemon ({}) at {}; this daemon no longer syncs it (`devd start --take-over` takes it back)",
                    self.workspace,
                    h.writer,
                    timestamp(h.since)
                );
                Err(Reject::new(ErrorCode::OtherWriter, m))
            }
        }
    }
}

/// Unix seconds as an RFC 3339 UTC time.
fn timestamp(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{secs} s after the epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(worktree: &str) -> Writer {
        Writer {
            host: "laptop".into(),
            worktree: worktree.into(),
        }
    }

    #[test]
    fn one_writer_a_named_refusal_and_an_explicit_take_over() {
        let dir = tempfile::tempdir().unwrap();
        let c = WriterClaim::open(dir.path(), "alice");
        let a = c.claim(&w("/a"), false, 100).unwrap();
        assert_eq!((a.since, a.previous.clone()), (100, None));
        // The same writer again (a reconnect) keeps its claim.
        let again = c.claim(&w("/a"), false, 200).unwrap();
        assert_eq!(again.since, 100);
        assert!(
            a.superseded.is_cancelled() && !again.superseded.is_cancelled(),
            "the reconnect ends the older connection, and only that"
        );
        assert!(c.may_write(Some(&again)).is_ok());
        let refused = c.claim(&w("/b"), false, 300).unwrap_err();
        assert_eq!(refused.code, ErrorCode::OtherWriter);
        assert!(
            refused.message.contains("host laptop, worktree /a")
                && refused.message.contains("1970-01-01T00:01:40Z")
                && refused.message.contains("--take-over"),
            "{}",
            refused.message
        );
        assert!(c.may_write(Some(&a)).is_ok());
        assert!(c.may_write(None).is_err(), "an unclaimed connection");
        let b = c.claim(&w("/b"), true, 400).unwrap();
        assert_eq!(b.previous, Some(w("/a")));
        assert!(a.taken.is_cancelled(), "the previous writer is told");
        let e = c.may_write(Some(&a)).unwrap_err();
        assert!(e.message.contains("worktree /b"), "{}", e.message);
        assert!(c.may_write(Some(&b)).is_ok());
        // Kept across a restart.
        let reopened = WriterClaim::open(dir.path(), "alice");
        assert!(reopened.claim(&w("/a"), false, 500).is_err());
        assert_eq!(reopened.claim(&w("/b"), false, 500).unwrap().since, 400);
    }

    #[test]
    fn a_released_claim_lets_the_next_writer_in_and_a_stale_release_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = WriterClaim::open(dir.path(), "alice");
        let a = c.claim(&w("/a"), false, 100).unwrap();
        c.release(&a);
        assert!(!dir.path().join("writer.json").exists());
        let b = c.claim(&w("/b"), false, 200).unwrap();
        assert_eq!((b.since, b.previous.clone()), (200, None));
        // A's old grant (say a late release on another connection) does
        // not free B's claim.
        c.release(&a);
        assert_eq!(
            c.claim(&w("/c"), false, 300).unwrap_err().code,
            ErrorCode::OtherWriter
        );
        // Nor does one taken over since.
        let c2 = c.claim(&w("/c"), true, 400).unwrap();
        c.release(&b);
        assert!(c.may_write(Some(&c2)).is_ok());
        assert_eq!(
            WriterClaim::open(dir.path(), "alice")
                .claim(&w("/a"), false, 500)
                .unwrap_err()
                .code,
            ErrorCode::OtherWriter,
            "kept on disk"
        );
    }

    #[test]
    fn without_a_holder_anyone_may_write() {
        let dir = tempfile::tempdir().unwrap();
        let c = WriterClaim::open(dir.path(), "alice");
        assert!(c.may_write(None).is_ok());
    }
}

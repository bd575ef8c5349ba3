//! A workspace's durable sync state and its journal.
//!
//! `committed` holds the last applied generation (ack + overlay). Before a
//! new generation touches the worktree, its target state is written to
//! `pending` (every blob it needs is already stored). After the worktree is
//! updated, `pending` replaces `committed` with one rename. A crash in
//! between leaves `pending` behind; recovery replays the (idempotent)
//! transition from `committed` to `pending` and commits it, so the worktree
//! always ends at one generation or the other, never a mix.

use devd_protocol::Overlay;
use devd_protocol::message::Ack;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The first bytes of a state file since protocol version 3, whose file
/// entries carry a mode. A file without them holds the encoding before
/// (read through [`legacy`]), so an upgraded receiver keeps its state.
const MAGIC: &[u8] = b"devd-state 3\n";

/// The state files of protocol versions 1 and 2: file entries without a
/// mode.
mod legacy {
    use devd_protocol::message::Ack;
    use devd_protocol::{ContentId, Entry, RelPath};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    enum OldEntry {
        File { id: ContentId, exec: bool },
        Symlink { target: String },
        Deleted,
    }

    #[derive(Deserialize)]
    struct OldOverlay {
        entries: BTreeMap<RelPath, OldEntry>,
    }

    #[derive(Deserialize)]
    pub(super) struct OldState {
        ack: Option<Ack>,
        overlay: OldOverlay,
    }

    impl From<OldState> for super::SyncState {
        fn from(old: OldState) -> Self {
            let overlay = old
                .overlay
                .entries
                .into_iter()
                .map(|(p, e)| {
                    let e = match e {
                        OldEntry::File { id, exec } => Entry::File {
                            id,
                            exec,
                            mode: None,
                        },
                        OldEntry::Symlink { target } => Entry::Symlink { target },
                        OldEntry::Deleted => Entry::Deleted,
                    };
                    (p, e)
                })
                .collect();
            Self {
                ack: old.ack,
                overlay,
            }
        }
    }
}

/// What is (or is about to be) materialized.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// `None` before the first generation (empty worktree).
    pub ack: Option<Ack>,
    pub overlay: Overlay,
}

/// Errors reading or writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt ({source}); remove the workspace directory to start over"
    )]
    Corrupt {
        path: String,
        source: postcard::Error,
    },
}

/// The two state files of one workspace.
#[derive(Debug, Clone)]
pub struct Journal {
    committed: PathBuf,
    pending: PathBuf,
}

impl Journal {
    /// State files inside `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            committed: dir.join("state.committed"),
            pending: dir.join("state.pending"),
        }
    }

    fn read(path: &Path) -> Result<Option<SyncState>, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state = match bytes.strip_prefix(MAGIC) {
                    Some(rest) => postcard::from_bytes(rest),
                    None => postcard::from_bytes::<legacy::OldState>(&bytes).map(Into::into),
                };
                state.map(Some).map_err(|source| StateError::Corrupt {
                    path: path.display().to_string(),
                    source,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn write(path: &Path, state: &SyncState) -> Result<(), StateError> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(postcard::to_stdvec(state).expect("state serializes"));
        devd_sync::fsutil::write_atomic(path, &bytes, Some(0o600)).map_err(|source| {
            StateError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// The committed state (default when none yet).
    pub fn committed(&self) -> Result<SyncState, StateError> {
        Ok(Self::read(&self.committed)?.unwrap_or_default())
    }

    /// A pending state left by an interrupted apply.
    pub fn pending(&self) -> Result<Option<SyncState>, StateError> {
        Self::read(&self.pending)
    }

    /// Record the target of an apply before touching the worktree. The
    /// blobs it refers to are flushed first (one syncfs), so a replay after
    /// a power loss finds them.
    pub fn begin(&self, target: &SyncState) -> Result<(), StateError> {
        self.flush()?;
        Self::write(&self.pending, target)
    }

    fn flush(&self) -> Result<(), StateError> {
        let dir = self.committed.parent().unwrap_or(Path::new("."));
        devd_sync::fsutil::sync_fs(dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })
    }

    /// The worktree now matches the pending state: make it the committed one.
    pub fn commit(&self) -> Result<(), StateError> {
        // The worktree files first, then the state that says they are there.
        self.flush()?;
        let io = |source| StateError::Io {
            path: self.committed.display().to_string(),
            source,
        };
        std::fs::rename(&self.pending, &self.committed).map_err(io)?;
        devd_sync::fsutil::sync_dir(self.committed.parent().unwrap_or(Path::new("."))).map_err(io)
    }

    /// Forget a pending state that was never started.
    pub fn abort(&self) -> Result<(), StateError> {
        match std::fs::remove_file(&self.pending) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                path: self.pending.display().to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::message::Base;
    use devd_protocol::{Digest, Entry, RelPath};

    #[test]
    fn begin_commit_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert_eq!(j.committed().unwrap(), SyncState::default());
        let s = SyncState {
            ack: Some(Ack {
                generation: 3,
                digest: Digest([1; 32]),
                base: Base::Uploaded,
            }),
            overlay: [(RelPath::new("x").unwrap(), Entry::Deleted)]
                .into_iter()
                .collect(),
        };
        j.begin(&s).unwrap();
        assert_eq!(j.pending().unwrap(), Some(s.clone()));
        assert_eq!(j.committed().unwrap(), SyncState::default());
        j.commit().unwrap();
        assert_eq!(j.committed().unwrap(), s);
        assert_eq!(j.pending().unwrap(), None);
        std::fs::write(dir.path().join("state.committed"), b"\xff\xff").unwrap();
        assert!(j.committed().unwrap_err().to_string().contains("corrupt"));
    }

    /// A state file written before file entries had modes (protocol
    /// version 2, these exact bytes) is read after the upgrade.
    #[test]
    fn a_state_file_from_before_modes_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        // postcard of SyncState { ack: Some(Ack { generation: 3, digest:
        // [1; 32], base: Uploaded }), overlay: { "f": File { id: [7; 32],
        // exec: true }, "x": Deleted } } in the version 2 types.
        let mut old = vec![1, 3];
        old.extend([1; 32]);
        old.push(1); // Base::Uploaded
        old.extend([2, 1, b'f', 0]);
        old.extend([7; 32]);
        old.push(1);
        old.extend([1, b'x', 2]);
        std::fs::write(dir.path().join("state.committed"), &old).unwrap();
        let s = j.committed().unwrap();
        assert_eq!(s.ack.map(|a| a.generation), Some(3));
        assert_eq!(
            s.overlay.get(&RelPath::new("f").unwrap()),
            Some(&Entry::File {
                id: devd_protocol::ContentId([7; 32]),
                exec: true,
                mode: None,
            })
        );
        assert_eq!(
            s.overlay.get(&RelPath::new("x").unwrap()),
            Some(&Entry::Deleted)
        );
        // Written again, it has the new form.
        j.begin(&s).unwrap();
        j.commit().unwrap();
        assert!(
            std::fs::read(dir.path().join("state.committed"))
                .unwrap()
                .starts_with(MAGIC)
        );
        assert_eq!(j.committed().unwrap(), s);
    }
}

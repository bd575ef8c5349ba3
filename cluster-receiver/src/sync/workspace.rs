//! One workspace on the receiver: its token, git store, blob store, journal
//! and worktree, and the steps of applying a generation (prepare → blobs →
//! finish). Callers hold [`Workspace::lock`] across the steps, so syncs of
//! one workspace never interleave.

use crate::sync::git_store::{GitError, GitStore};
use crate::sync::materialize::{MaterializeError, Sources, Worktree};
use crate::sync::state::{Journal, StateError, SyncState};
use devd_protocol::compress::{self, BlobRef, Encoding};
use devd_protocol::message::{Ack, Base, Blob};
use devd_protocol::session::{BlobPart, CommitHeader, Incoming, Reject};
use devd_protocol::tree::BaseTree;
use devd_protocol::view::View;
use devd_protocol::{ContentId, ErrorCode, Overlay};
use devd_sync::blob_store::{BlobError, BlobStore};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Largest blob accepted (raw content), 4 GiB. Blobs are spooled to disk
/// and decoded as a stream, so their size costs disk, not memory.
pub const MAX_BLOB: u64 = 4 << 30;
/// Largest patch reference read into memory: the patch window (256 MiB).
const MAX_REFERENCE: u64 = 1 << compress::MAX_WINDOW_LOG;
/// Largest overlay accepted, in entries.
pub const MAX_ENTRIES: u64 = 4_000_000;

/// Errors opening a workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("recovering workspace {name}: {reason}")]
    Recover { name: String, reason: String },
}

impl From<MaterializeError> for Reject {
    fn from(e: MaterializeError) -> Self {
        let code = match &e {
            MaterializeError::View(_) => ErrorCode::BadPath,
            MaterializeError::Io { .. } => ErrorCode::Storage,
            MaterializeError::Source { .. } => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<StateError> for Reject {
    fn from(e: StateError) -> Self {
        Self::new(ErrorCode::Storage, e.to_string())
    }
}

/// A generation validated, with its base available and inline blobs stored.
pub struct Prepared {
    target: SyncState,
    tree: Arc<BaseTree>,
    /// Blobs the laptop must still send.
    pub missing: Vec<ContentId>,
}

/// Mutable state of a workspace, behind its lock.
pub struct Inner {
    state: SyncState,
    tree: Arc<BaseTree>,
}

impl Inner {
    /// The generation the worktree is at.
    pub fn generation(&self) -> Option<u64> {
        self.state.ack.map(|a| a.generation)
    }
}

/// Outcome of an applied generation.
#[derive(Debug, Clone)]
pub struct Applied {
    pub ack: Ack,
    pub files_written: u64,
    pub apply_ms: u64,
    /// Paths whose state changed, sorted.
    pub changed: Vec<devd_protocol::RelPath>,
}

/// A workspace.
pub struct Workspace {
    pub name: String,
    token: String,
    git: Arc<GitStore>,
    blobs: BlobStore,
    journal: Journal,
    worktree: Worktree,
    inner: tokio::sync::Mutex<Inner>,
    /// `inner`'s last applied generation, readable while a connection
    /// holds `inner` for its generation: a laptop's `Hello` is answered at
    /// once, not after another (perhaps dead) connection lets go.
    acked: std::sync::Mutex<Option<Ack>>,
    pipeline: std::sync::OnceLock<Arc<crate::build::pipeline::Pipeline>>,
    /// Which daemon writes this workspace.
    pub writer: crate::sync::writer::WriterClaim,
}

fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Compare secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Workspace {
    /// Open (creating on first use) workspace `name` under `data_dir`, and
    /// finish any apply a crash interrupted. Blocking.
    /// `git_token_file`: the HTTP token for an `http(s)://` remote.
    pub fn open(
        data_dir: &Path,
        name: &str,
        git_remote: &str,
        git_token_file: Option<&Path>,
    ) -> Result<Self, WorkspaceError> {
        let dir = data_dir.join("workspaces").join(name);
        let io = |source| WorkspaceError::Io {
            name: name.to_owned(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let token_path = dir.join("token");
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) => t.trim().to_owned(),
            Err(_) => {
                let t = random_token().map_err(io)?;
                devd_sync::fsutil::write_atomic(&token_path, t.as_bytes(), Some(0o600))
                    .map_err(io)?;
                t
            }
        };
        let scratch = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).map_err(io)?;
        let mut ws = Self {
            name: name.to_owned(),
            token,
            git: Arc::new(
                GitStore::open_or_init(&dir.join("repo.git"), git_remote)?
                    .with_token_file(git_token_file.map(Path::to_path_buf))?,
            ),
            blobs: BlobStore::open(&dir.join("blobs"))?,
            journal: Journal::new(&dir),
            worktree: Worktree {
                root: dir.join("worktree"),
                scratch,
            },
            inner: tokio::sync::Mutex::new(Inner {
                state: SyncState::default(),
                tree: Arc::default(),
            }),
            acked: std::sync::Mutex::new(None),
            pipeline: std::sync::OnceLock::new(),
            writer: crate::sync::writer::WriterClaim::open(&dir, name),
        };
        let state = ws.journal.committed()?;
        let tree = ws
            .tree_for(state.ack.map(|a| a.base))
            .map_err(|r| WorkspaceError::Recover {
                name: name.to_owned(),
                reason: r.message,
            })?;
        let mut inner = Inner { state, tree };
        ws.recover(&mut inner)
            .map_err(|r| WorkspaceError::Recover {
                name: name.to_owned(),
                reason: r.message,
            })?;
        ws.acked = std::sync::Mutex::new(inner.state.ack);
        ws.inner = tokio::sync::Mutex::new(inner);
        Ok(ws)
    }

    /// True if `token` is this workspace's token.
    pub fn check_token(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), self.token.as_bytes())
    }

    /// The access token (for the pairing file).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The materialized worktree.
    pub fn worktree_path(&self) -> &Path {
        &self.worktree.root
    }

    /// The workspace's directory on disk.
    pub fn dir(&self) -> PathBuf {
        self.worktree
            .root
            .parent()
            .expect("worktree has a parent")
            .to_owned()
    }

    /// The build pipeline, if builds are enabled.
    pub fn pipeline(&self) -> Option<&Arc<crate::build::pipeline::Pipeline>> {
        self.pipeline.get()
    }

    /// Attach the build pipeline (once).
    pub fn set_pipeline(&self, p: Arc<crate::build::pipeline::Pipeline>) {
        let _ = self.pipeline.set(p);
    }

    /// Lock the workspace for a sync.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Inner> {
        self.inner.lock().await
    }

    /// The last applied generation.
    pub fn acked(&self) -> Option<Ack> {
        *self.acked.lock().expect("acked")
    }

    fn tree_for(&self, base: Option<Base>) -> Result<Arc<BaseTree>, Reject> {
        match base {
            None | Some(Base::Uploaded) => Ok(Arc::default()),
            Some(Base::Commit(c)) => self
                .git
                .tree(c)
                .map(Arc::new)
                .map_err(|e| Reject::new(ErrorCode::BaseUnavailable, e.to_string())),
        }
    }

    /// Move the worktree from `from` to the journaled `target` and commit
    /// the journal. Idempotent, so an interrupted move can be replayed.
    /// Blocking.
    fn move_to(
        &self,
        from: &SyncState,
        from_tree: &BaseTree,
        target: &SyncState,
        tree: &BaseTree,
    ) -> Result<crate::sync::materialize::Stats, Reject> {
        let same = from.ack.map(|a| a.base) == target.ack.map(|a| a.base);
        let src = Sources {
            blobs: &self.blobs,
            git: Some(&self.git),
        };
        let stats = self.worktree.transition(
            &View {
                tree: from_tree,
                overlay: &from.overlay,
            },
            &View {
                tree,
                overlay: &target.overlay,
            },
            same,
            &src,
        )?;
        self.journal.commit()?;
        Ok(stats)
    }

    /// Roll a pending (interrupted or failed) apply forward. Blocking.
    fn recover(&self, inner: &mut Inner) -> Result<(), Reject> {
        let Some(target) = self.journal.pending()? else {
            return Ok(());
        };
        tracing::warn!(workspace = %self.name, generation = ?target.ack.map(|a| a.generation), "finishing an interrupted apply");
        let tree = self.tree_for(target.ack.map(|a| a.base))?;
        self.move_to(&inner.state, &inner.tree, &target, &tree)?;
        inner.state = target;
        inner.tree = tree;
        Ok(())
    }

    /// Validate a generation, make its base available and store its inline
    /// blobs. Nothing in the worktree changes.
    pub async fn prepare(
        self: &Arc<Self>,
        inner: &mut Inner,
        header: CommitHeader,
        incoming: Incoming,
    ) -> Result<Prepared, Reject> {
        if self.journal.pending()?.is_some() {
            let this = self.clone();
            let mut taken = Inner {
                state: std::mem::take(&mut inner.state),
                tree: inner.tree.clone(),
            };
            let (res, back) = tokio::task::spawn_blocking(move || {
                let r = this.recover(&mut taken);
                (r, taken)
            })
            .await
            .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
            *inner = back;
            res?;
        }
        let acked = inner.state.ack.map(|a| a.generation);
        if header.parent.is_some() && header.parent != acked {
            return Err(Reject::new(
                ErrorCode::OutOfSync,
                format!(
                    "delta is relative to generation {:?} but the receiver has {:?}",
                    header.parent, acked
                ),
            ));
        }
        if header.entries > MAX_ENTRIES {
            return Err(Reject::new(
                ErrorCode::TooLarge,
                format!("{} entries exceed {MAX_ENTRIES}", header.entries),
            ));
        }
        let mut overlay = if header.parent.is_some() {
            inner.state.overlay.clone()
        } else {
            Overlay::new()
        };
        overlay.apply(&incoming.changes);
        if overlay.len() as u64 != header.entries || overlay.digest() != header.digest {
            return Err(Reject::new(
                ErrorCode::DigestMismatch,
                format!(
                    "overlay after generation {} has {} entries and digest {}, the laptop expected {} and {}",
                    header.generation,
                    overlay.len(),
                    overlay.digest(),
                    header.entries,
                    header.digest
                ),
            ));
        }
        // The base.
        let same_base = inner.state.ack.map(|a| a.base) == Some(header.base);
        let tree = if same_base {
            inner.tree.clone()
        } else {
            let this = self.clone();
            let base = header.base;
            tokio::task::spawn_blocking(move || {
                if let Base::Commit(c) = base
                    && !this.git.has_commit(c)
                {
                    tracing::info!(workspace = %this.name, commit = %c, "fetching base commit");
                    this.git
                        .fetch_commit(c)
                        .map_err(|e| Reject::new(ErrorCode::BaseUnavailable, e.to_string()))?;
                }
                this.tree_for(Some(base))
            })
            .await
            .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))??
        };
        let view = View {
            tree: &tree,
            overlay: &overlay,
        };
        view.validate().map_err(MaterializeError::from)?;
        // Inline blobs, then what is still missing.
        for blob in incoming.blobs {
            self.store_blob(blob).await?;
        }
        let mut seen = HashSet::new();
        let missing: Vec<ContentId> = overlay
            .blob_ids()
            .filter(|id| seen.insert(*id) && !self.blobs.has(id))
            .collect();
        let ack = Ack {
            generation: header.generation,
            digest: header.digest,
            base: header.base,
        };
        Ok(Prepared {
            target: SyncState {
                ack: Some(ack),
                overlay,
            },
            tree,
            missing,
        })
    }

    /// Decode, verify and store one inline blob (see [`Self::decode_into_store`]).
    pub async fn store_blob(self: &Arc<Self>, blob: Blob) -> Result<(), Reject> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.decode_into_store(blob.id, blob.encoding, blob.raw_len, &blob.data[..])
        })
        .await
        .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?
    }

    /// Take one chunk of a requested blob: the first starts a spool file in
    /// the workspace's scratch directory, each is appended to it, and the
    /// last decodes the spooled blob into the store. A blob is never held
    /// whole in memory, whatever its size.
    pub async fn store_chunk(
        self: &Arc<Self>,
        spool: &mut Option<Spool>,
        part: BlobPart,
    ) -> Result<(), Reject> {
        let storage =
            |e: std::io::Error| Reject::new(ErrorCode::Storage, format!("spooling a blob: {e}"));
        if part.is_first() {
            check_size(part.id, part.raw_len)?;
            let file = tempfile::Builder::new()
                .prefix(".blob-")
                .tempfile_in(&self.worktree.scratch)
                .map_err(storage)?;
            *spool = Some(Spool { file });
        }
        let mut current = spool.take().ok_or_else(|| {
            Reject::new(
                ErrorCode::Internal,
                format!("blob {}: a chunk without its start", part.id),
            )
        })?;
        let this = self.clone();
        let (res, current) = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let res = current
                .file
                .as_file_mut()
                .write_all(&part.data)
                .map_err(storage);
            if res.is_err() || !part.is_last() {
                return (res, Some(current));
            }
            let mut file = current.file;
            let res = file.as_file_mut().rewind().map_err(storage).and_then(|()| {
                let input = std::io::BufReader::with_capacity(1 << 20, file.as_file_mut());
                this.decode_into_store(part.id, part.encoding, part.raw_len, input)
            });
            (res, None)
        })
        .await
        .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
        *spool = current;
        res
    }

    /// Decode a blob from `input` straight into the blob store, hashing as
    /// it goes, and verify it. A patch's reference must be a blob the
    /// receiver has (an overlay blob or a blob of a fetched base) and fit
    /// the patch window. Blocking.
    fn decode_into_store(
        &self,
        id: ContentId,
        encoding: Encoding,
        raw_len: u64,
        input: impl std::io::Read,
    ) -> Result<(), Reject> {
        check_size(id, raw_len)?;
        let bad = |m: String| Reject::new(ErrorCode::BadBlob, m);
        let storage = |e: BlobError| match e {
            BlobError::Mismatch { .. } => bad(e.to_string()),
            BlobError::Io { .. } => Reject::new(ErrorCode::Storage, e.to_string()),
        };
        let reference = match encoding {
            Encoding::ZstdPatch {
                reference: BlobRef::Overlay(rid),
            } => {
                let len = std::fs::metadata(self.blobs.path(&rid)).map(|m| m.len());
                if len.is_ok_and(|l| l > MAX_REFERENCE) {
                    return Err(bad(format!(
                        "patch reference {rid} is larger than the {MAX_REFERENCE}-byte patch window"
                    )));
                }
                Some(
                    self.blobs
                        .get(&rid)
                        .map_err(|e| bad(format!("patch reference {rid} unavailable: {e}")))?,
                )
            }
            Encoding::ZstdPatch {
                reference: BlobRef::Base(oid),
            } => Some(
                self.git
                    .blob(oid)
                    .map_err(|e| bad(format!("patch reference {oid} unavailable: {e}")))?,
            ),
            _ => None,
        };
        let mut out = self.blobs.writer().map_err(storage)?;
        compress::decode_stream(
            encoding,
            input,
            raw_len,
            reference.as_deref(),
            MAX_BLOB,
            &mut out,
        )
        .map_err(|e| match e {
            compress::CompressError::Output(e) => {
                Reject::new(ErrorCode::Storage, format!("storing blob {id}: {e}"))
            }
            e => bad(format!("blob {id}: {e}")),
        })?;
        out.commit(&id).map_err(storage)
    }

    /// Apply a prepared generation: journal, worktree, commit, blob GC.
    pub async fn finish(
        self: &Arc<Self>,
        inner: &mut Inner,
        prepared: Prepared,
    ) -> Result<Applied, Reject> {
        if let Some(id) = prepared.missing.iter().find(|id| !self.blobs.has(id)) {
            return Err(Reject::new(
                ErrorCode::BadBlob,
                format!("blob {id} was never received"),
            ));
        }
        let started = Instant::now();
        let this = self.clone();
        let old_state = std::mem::take(&mut inner.state);
        let old_tree = inner.tree.clone();
        let Prepared { target, tree, .. } = prepared;
        let res = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let r = this.journal.begin(&target).map_err(Reject::from);
            let t_begin = t0.elapsed();
            let r = r.and_then(|()| this.move_to(&old_state, &old_tree, &target, &tree));
            let t_move = t0.elapsed();
            match r {
                Ok(stats) => {
                    let keep: HashSet<ContentId> = target.overlay.blob_ids().collect();
                    if let Err(e) = this.blobs.retain(&keep) {
                        tracing::warn!(error = %e, "blob garbage collection failed");
                    }
                    tracing::debug!(
                        journal_ms = t_begin.as_millis() as u64,
                        worktree_and_commit_ms = (t_move - t_begin).as_millis() as u64,
                        blob_gc_ms = (t0.elapsed() - t_move).as_millis() as u64,
                        written = stats.written,
                        removed = stats.removed,
                        "apply phases"
                    );
                    (Ok(stats), target, tree)
                }
                // The pending state stays in the journal: the next sync (or
                // a restart) rolls it forward.
                Err(e) => (Err(e), old_state, old_tree),
            }
        })
        .await
        .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
        let (r, state, tree) = res;
        inner.state = state;
        inner.tree = tree;
        *self.acked.lock().expect("acked") = inner.state.ack;
        let stats = r?;
        let ack = inner.state.ack.expect("applied state has an ack");
        Ok(Applied {
            ack,
            files_written: stats.written + stats.removed,
            apply_ms: started.elapsed().as_millis() as u64,
            changed: stats.changed,
        })
    }
}

/// The spool file of the blob whose chunks are arriving (see
/// [`Workspace::store_chunk`]); removed when dropped.
pub struct Spool {
    file: tempfile::NamedTempFile,
}

fn check_size(id: ContentId, raw_len: u64) -> Result<(), Reject> {
    if raw_len > MAX_BLOB {
        return Err(Reject::new(
            ErrorCode::TooLarge,
            format!("blob {id} of {raw_len} bytes exceeds the {MAX_BLOB}-byte limit"),
        ));
    }
    Ok(())
}

/// The workspaces a receiver serves, by name.
pub type Registry = HashMap<String, Arc<Workspace>>;

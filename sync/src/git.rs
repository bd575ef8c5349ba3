//! The read side of git, shared by the laptop (its own repository) and the
//! receiver (its shallow clone): a commit's whole tree ([`read_tree`]), a
//! blob ([`read_blob`]), git's blob id of some bytes ([`git_blob_oid`]),
//! and gix errors on one line ([`describe`]).

use devd_protocol::tree::{BaseTree, EntryKind, TreeEntry};
use devd_protocol::{CommitId, GitOid, RelPath};
use gix::bstr::ByteSlice;
use std::path::PathBuf;

/// Why a commit, tree or blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("commit {commit} is not in the repository at {}; fetch it first", repo.display())]
    MissingCommit { commit: CommitId, repo: PathBuf },
    #[error("{what} {oid} is not in the repository at {}; the base commit must be fetched first", repo.display())]
    MissingObject {
        what: &'static str,
        oid: GitOid,
        repo: PathBuf,
    },
    #[error("object {oid} in the repository at {} is a {actual}, not a {expected}", repo.display())]
    WrongKind {
        oid: GitOid,
        expected: &'static str,
        actual: String,
        repo: PathBuf,
    },
    #[error(
        "cannot read {what} {oid} from the repository at {}: {detail}; the object database may be damaged, re-fetch the base or re-clone",
        repo.display()
    )]
    Read {
        what: &'static str,
        oid: GitOid,
        repo: PathBuf,
        detail: String,
    },
}

/// The full chain of a gix error on one line (gix's `Display` shows only the
/// outermost message).
pub fn describe(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in err.iter_errors() {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p == &s) {
            parts.push(s);
        }
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

pub fn to_oid(oid: GitOid) -> gix::ObjectId {
    gix::ObjectId::Sha1(oid.0)
}

pub fn from_oid(oid: &gix::oid) -> GitOid {
    let mut out = [0u8; 20];
    // SHA-1 only (the workspace enables the `sha1` feature alone).
    out.copy_from_slice(&oid.as_bytes()[..20]);
    GitOid(out)
}

/// Read the whole tree of `commit`, recursively. Submodules (gitlinks) are
/// skipped; a path [`RelPath`] rejects (e.g. non-UTF-8, or inside `.git`)
/// is skipped with a warning.
pub fn read_tree(repo: &gix::Repository, commit: CommitId) -> Result<BaseTree, ReadError> {
    let repo_dir = repo.git_dir().to_path_buf();
    let read_err = |what: &'static str, oid: GitOid, e: &gix::Error| ReadError::Read {
        what,
        oid,
        repo: repo_dir.clone(),
        detail: describe(e),
    };
    let obj = match repo.try_find_object(to_oid(commit)) {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            return Err(ReadError::MissingCommit {
                commit,
                repo: repo_dir,
            });
        }
        Err(e) => return Err(read_err("commit", commit, &e)),
    };
    if obj.kind != gix::objs::Kind::Commit {
        return Err(ReadError::WrongKind {
            oid: commit,
            expected: "commit",
            actual: obj.kind.to_string(),
            repo: repo_dir,
        });
    }
    let tree_id = obj
        .into_commit()
        .tree_id()
        .map_err(|e| read_err("commit", commit, &e))?
        .detach();
    let tree_oid = from_oid(&tree_id);
    let tree = match repo.try_find_object(tree_id) {
        Ok(Some(obj)) if obj.kind == gix::objs::Kind::Tree => obj.into_tree(),
        Ok(Some(obj)) => {
            return Err(ReadError::WrongKind {
                oid: tree_oid,
                expected: "tree",
                actual: obj.kind.to_string(),
                repo: repo_dir,
            });
        }
        Ok(None) => {
            return Err(ReadError::MissingObject {
                what: "tree",
                oid: tree_oid,
                repo: repo_dir,
            });
        }
        Err(e) => return Err(read_err("tree", tree_oid, &e)),
    };
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| read_err("tree", tree_oid, &e))?;

    let mut out = BaseTree::new();
    for entry in recorder.records {
        use gix::objs::tree::EntryKind as K;
        let kind = match entry.mode.kind() {
            K::Tree => continue,
            K::Commit => {
                tracing::debug!(path = %entry.filepath, "skipping submodule (gitlink) in base tree");
                continue;
            }
            K::Blob => EntryKind::File,
            K::BlobExecutable => EntryKind::Exec,
            K::Link => EntryKind::Symlink,
        };
        let path = match entry.filepath.to_str() {
            Ok(p) => p.to_owned(),
            Err(_) => {
                tracing::warn!(path = %entry.filepath, %commit, "skipping non-UTF-8 path in base tree");
                continue;
            }
        };
        match RelPath::new(path) {
            Ok(rel) => {
                out.insert(
                    rel,
                    TreeEntry {
                        oid: from_oid(&entry.oid),
                        kind,
                    },
                );
            }
            Err(e) => tracing::warn!(%commit, "skipping path in base tree: {e}"),
        }
    }
    Ok(out)
}

/// Read the content of blob `oid`.
pub fn read_blob(repo: &gix::Repository, oid: GitOid) -> Result<Vec<u8>, ReadError> {
    match repo.try_find_object(to_oid(oid)) {
        Ok(Some(obj)) if obj.kind == gix::objs::Kind::Blob => Ok(obj.detach().data),
        Ok(Some(obj)) => Err(ReadError::WrongKind {
            oid,
            expected: "blob",
            actual: obj.kind.to_string(),
            repo: repo.git_dir().to_path_buf(),
        }),
        Ok(None) => Err(ReadError::MissingObject {
            what: "blob",
            oid,
            repo: repo.git_dir().to_path_buf(),
        }),
        Err(e) => Err(ReadError::Read {
            what: "blob",
            oid,
            repo: repo.git_dir().to_path_buf(),
            detail: describe(&e),
        }),
    }
}

/// Git's blob id of `data` (SHA-1 over `"blob <len>\0"` followed by `data`),
/// as `git hash-object` computes it.
pub fn git_blob_oid(data: &[u8]) -> GitOid {
    let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, data)
        .expect("SHA-1 of an in-memory buffer");
    from_oid(&id)
}

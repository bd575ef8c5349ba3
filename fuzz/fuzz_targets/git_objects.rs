//! Git objects as the receiver reads them from its shallow clone, i.e. as
//! any git remote it fetches from wrote them: a commit, its trees and
//! blobs, read through `devd_sync::git` into the base tree the receiver
//! materializes. Objects arrive with correct ids (git verifies those while
//! indexing a pack), so the input is object *contents*:
//!
//! `count: u8`, then per object `kind: u8` (tree, blob, commit),
//! `len: u16 LE`, `bytes`. Inside an object, 20 bytes `@obj`, `k`, then 15
//! `@` stand for the id of object `k` written before it, so trees can point
//! at real subtrees and blobs. A commit `tree <id of the last tree>` is added
//! unless the last object is a commit, then its tree is read, and every
//! blob it names.
#![no_main]

use devd_sync::git::{from_oid, read_blob, read_tree};
use gix::objs::{Kind, Write};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// An empty bare repository; each input's objects stay in memory.
fn repo() -> &'static gix::ThreadSafeRepository {
    static REPO: OnceLock<(tempfile::TempDir, gix::ThreadSafeRepository)> = OnceLock::new();
    &REPO
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let repo = gix::ThreadSafeRepository::init(
                dir.path(),
                gix::create::Kind::Bare,
                gix::create::Options::default(),
            )
            .expect("an empty bare repository");
            (dir, repo)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let repo = repo().to_thread_local().with_object_memory();
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let mut ids: Vec<gix::ObjectId> = Vec::new();
    let mut last_tree = None;
    let mut last_kind = Kind::Blob;
    for _ in 0..count.min(16) {
        if rest.len() < 3 {
            break;
        }
        let kind = match rest[0] % 3 {
            0 => Kind::Tree,
            1 => Kind::Blob,
            _ => Kind::Commit,
        };
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut body = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        link(&mut body, &ids);
        let id = repo
            .objects
            .write_buf(kind, &body)
            .expect("objects are written to memory");
        if kind == Kind::Tree {
            last_tree = Some(id);
        }
        last_kind = kind;
        ids.push(id);
    }
    let commit = match (last_kind, last_tree) {
        (Kind::Commit, _) => *ids.last().expect("the commit was written"),
        (_, Some(tree)) => repo
            .objects
            .write_buf(Kind::Commit, format!("tree {tree}\n").as_bytes())
            .expect("objects are written to memory"),
        (_, None) => return,
    };
    let Ok(tree) = read_tree(&repo, from_oid(&commit)) else {
        return;
    };
    for entry in tree.values() {
        let _ = read_blob(&repo, entry.oid);
    }
});

/// Replace each `@obj` `k` `@…@` (20 bytes) by the id of object `k`.
fn link(body: &mut [u8], ids: &[gix::ObjectId]) {
    let mut i = 0;
    while i + 20 <= body.len() {
        let k = usize::from(body[i + 4]);
        if &body[i..i + 4] == b"@obj"
            && body[i + 5..i + 20].iter().all(|&b| b == b'@')
            && k < ids.len()
        {
            body[i..i + 20].copy_from_slice(ids[k].as_bytes());
            i += 20;
        } else {
            i += 1;
        }
    }
}

//! What both of devd's ends do with the outside world, the same way: the
//! laptop daemon and the receiver depend on this crate, which depends on
//! the pure model in `devd-protocol` and on nothing of theirs.
//!
//! Map of the crate:
//! - [`framed`]: protocol frames over one byte stream (a QUIC stream, or a
//!   TLS connection on the TCP fallback).
//! - [`net`]: the crypto provider, QUIC transport settings, TCP tuning.
//! - [`tls`]: the receiver's self-signed identity and its fingerprint.
//! - [`pairing`]: the pairing file and its Kubernetes Secret form.
//! - [`blob_store`]: content-addressed blobs on disk.
//! - [`fsutil`]: atomic writes and filesystem flushes.
//! - [`git`]: the read side of git (trees, blobs, blob ids).
//! - [`catalog`]: the services declared in `devd.toml`.
//! - [`dockerignore`]: which files of a service's build context its
//!   `.dockerignore` leaves out.
//! - [`labels`]: the labels that mark devd's objects and workspaces.

pub mod blob_store;
pub mod catalog;
pub mod dockerignore;
pub mod framed;
pub mod fsutil;
pub mod git;
pub mod labels;
pub mod net;
pub mod pairing;
pub mod tls;

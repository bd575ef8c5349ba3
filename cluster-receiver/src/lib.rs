//! devd's receiver: accepts a laptop's overlays over QUIC and keeps a
//! materialized copy of its worktree on a shallow clone.
//!
//! Map of the crate:
//! - [`server`]: QUIC endpoint, connection limit, startup, drain.
//! - [`session`]: one laptop connection: auth, generations, blob requests.
//! - [`workspace`]: one workspace's stores and the apply steps.
//! - [`state`]: the durable sync state and its journal (crash safety).
//! - [`materialize`]: moves the worktree from one state to the next.
//! - [`blob_store`]: content-addressed blobs on disk.
//! - [`git_store`]: the shallow clone (gix): fetch a base commit, read trees.
//! - [`framed`]: protocol frames over a QUIC stream (used by both ends).
//! - [`tls`], [`pairing`]: the self-signed identity and the pairing file.
//! - [`fsutil`]: atomic writes.
//! - [`config`]: the receiver's configuration file (builds, backends).
//! - [`catalog`]: the services declared in `devd.toml`.
//! - [`dockerignore`], [`context`]: build contexts, their snapshot and digest.
//! - [`pipeline`]: affected services, the build queue, build events.
//! - [`builder`]: the build and deploy backends (local, Kubernetes).
//! - [`http`]: the receiver's HTTP server (build contexts for build pods).
//! - [`archive`], [`fetch`]: build contexts packed for a build pod, and
//!   `devd-receiver fetch-context`, which unpacks them there.
//! - [`metrics`]: Prometheus metrics (`/metrics`).
//! - [`vacuum`]: `devd-receiver vacuum`, which deletes expired workspace
//!   namespaces.
//! - [`publish`]: the pairing in a Secret, for `devd workspace create`.

#[cfg(test)]
mod api_mock;
pub mod build;
pub mod builder;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod sync;
pub mod vacuum;

// The paths `builder/` and the laptop's prebuild still use; they go when
// `builder/` moves under `build/`.
#[doc(hidden)]
pub use build::{context, http, pipeline};
pub use sync::server::{Builds, Running, ServeOptions, WorkspaceSpec, start};

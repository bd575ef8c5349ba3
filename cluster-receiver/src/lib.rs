//! devd's receiver: accepts a laptop's overlays over QUIC, keeps a
//! materialized copy of its worktree on a shallow clone, and builds and
//! deploys the services a change touches.
//!
//! Map of the crate (dependencies point down the list, never back up):
//! - [`run`]: the composition root. [`run()`] assembles a receiver from a
//!   [`ServeConfig`] (used by `devd-receiver serve` and the laptop's
//!   embedded receiver); [`Running::drain`] shuts it down.
//! - [`publish`]: the pairing in a Secret, for `devd workspace create`.
//! - [`backends`]: the build backend the configuration chooses.
//! - [`config`]: the receiver's configuration file (builds, backends).
//! - [`sync`], the sync half:
//!   - [`sync::server`]: QUIC endpoint, connection limit, pairing files.
//!   - [`sync::session`]: one laptop connection: auth, generations, blobs.
//!   - [`sync::workspace`]: one workspace's stores and the apply steps.
//!   - [`sync::state`]: the durable sync state and its journal.
//!   - [`sync::materialize`]: moves the worktree from one state to the next.
//!   - [`sync::git_store`]: the shallow clone (gix): fetch a base commit.
//! - [`build`], the build half:
//!   - [`build::pipeline`]: affected services, the build queue, events.
//!   - [`build::context`]: build contexts (after their `.dockerignore`,
//!     [`build::dockerignore`], read in devd-sync), their snapshot and digest.
//!   - [`build::http`]: the HTTP server (contexts for build pods, health,
//!     metrics).
//!   - [`build::archive`], [`build::fetch`]: contexts packed for a build
//!     pod, and `devd-receiver fetch-context`, which unpacks them there.
//!   - [`build::backend`]: the build and deploy backends behind one trait:
//!     local (buildah, podman) and Kubernetes (Kaniko Jobs, server-side
//!     apply), and the DevBuild records.
//! - [`metrics`]: Prometheus metrics (`/metrics`).
//! - [`vacuum`]: `devd-receiver vacuum`, which deletes expired workspace
//!   namespaces.
//!
//! Shared with the laptop daemon, in `devd-sync`: framing, blob store,
//! TLS, pairing files, atomic writes, the git read side, the catalog.

#[cfg(test)]
mod api_mock;
pub mod backends;
pub mod build;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod run;
pub mod sync;
pub mod vacuum;

pub use run::{RunError, Running, ServeConfig, run};
pub use sync::server::{Served, WorkspaceSpec};

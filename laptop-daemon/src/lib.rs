//! devd's laptop side: the daemon that keeps a receiver's copy of the git
//! worktree identical to this one, and the CLI that drives it.
//!
//! Map of the crate:
//! - [`cli`]: the argument types (`cli/args.rs`) and one file per command
//!   (`init`, `start`, `stop`, `sync`, `status`, `logs`, `workspace`,
//!   `prebuild`, `completions`, `run`); the daemon lock and the
//!   `status --watch` screen.
//! - `prebuild` (feature `embedded`): `devd prebuild`, images built for CI.
//! - [`init`]: `devd init`, a `devd.toml` proposed from the Dockerfiles.
//! - [`status_view`]: `devd status` for people: header block and services table.
//! - [`progress`]: progress of long scans and uploads, published and drawn.
//! - [`daemon`]: wires watcher → scanner → uplink, and the embedded receiver.
//! - [`events`]: the receiver's build events folded into the status, and
//!   the retry of undeployed services at start.
//! - [`requests`]: retry and remove, asked of the receiver beside syncing.
//! - `embedded` (cargo feature `embedded`, default): the receiver run in
//!   this process on loopback, with the local backend.
//! - [`watcher`]: notify events turned into scan triggers.
//! - [`scanner`]: the overlay (worktree vs base), full or path-limited.
//! - [`walk`]: the worktree walk the scanner and `devd init` share.
//! - [`hash_cache`]: persisted content hashes keyed by stat data.
//! - [`repo`]: the git repository: base, index, objects (gix).
//! - [`uplink`]: the sync exchange with the receiver.
//! - [`unstable`]: files that keep changing while they are sent.
//! - [`transport`]: QUIC client with the pinned certificate.
//! - [`control`]: the Unix control socket.
//! - [`logs`]: the daemon's side of `devd logs`: the receiver's log stream.
//! - [`exec`]: the daemon's side of `devd exec`: a command's stream.
//! - [`config`]: `devd.toml` and `DEVD_HOME`.
//! - [`status`]: what `devd status` reports (typed states, serialized with
//!   the lower-case names `--json` always printed).
//! - [`notify`]: desktop notifications for deploys and failed builds.
//! - [`workspace`]: `devd workspace`, expiring namespaces on the cluster
//!   (ttl, namespace, receiver deploy, address, `devd.local.toml` merge).
//! - `tray` (cargo feature `tray`, Linux): the tray icon and its menu.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod events;
pub mod exec;
pub mod hash_cache;
pub mod init;
pub mod logs;
pub mod notify;
#[cfg(feature = "embedded")]
pub mod prebuild;
pub mod progress;
pub mod repo;
pub mod requests;
pub mod scanner;
pub mod schedule;
pub mod secrets;
pub mod status;
pub mod status_view;
pub mod transport;
#[cfg(all(feature = "tray", target_os = "linux"))]
pub mod tray;
pub mod unstable;
pub mod uplink;
pub mod walk;
pub mod watcher;
pub mod workspace;

//! devd's laptop side: the daemon that keeps a receiver's copy of the git
//! worktree identical to this one, and the CLI that drives it.
//!
//! Map of the crate:
//! - [`cli`]: arguments and commands (`start`, `stop`, `sync`, `status`, `run`).
//! - [`daemon`]: wires watcher → scanner → uplink, and the embedded receiver.
//! - [`watcher`]: notify events turned into scan triggers.
//! - [`scanner`]: the overlay (worktree vs base), full or path-limited.
//! - [`hash_cache`]: persisted content hashes keyed by stat data.
//! - [`repo`]: the git repository: base, index, objects (gix).
//! - [`uplink`]: the sync exchange with the receiver.
//! - [`transport`]: QUIC client with the pinned certificate.
//! - [`control`]: the Unix control socket.
//! - [`config`]: `devd.toml` and `DEVD_HOME`.
//! - [`status`]: what `devd status` reports.
//! - [`notify`]: desktop notifications for deploys and failed builds.
//! - `tray` (cargo feature `tray`, Linux): the tray icon and its menu.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod hash_cache;
pub mod notify;
pub mod repo;
pub mod scanner;
pub mod status;
#[cfg(all(feature = "tray", target_os = "linux"))]
pub mod tray;
pub mod transport;
pub mod uplink;
pub mod watcher;

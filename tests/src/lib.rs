//! End-to-end fixtures for devd: real binaries, real QUIC on loopback, real
//! git repositories in temporary directories.
//!
//! What does not know devd (commands with captured output, hermetic git,
//! container storage, the registry, the HTTP client) lives in
//! [`devd_testkit`], shared with the benchmarks; this crate re-exports it
//! and adds the devd fixtures on top.
//!
//! Map of the crate:
//! - [`bins`]: locating the `devd` and `devd-receiver` binaries.
//! - [`process`]: running commands with output captured to files, timeouts
//!   (re-exported from [`devd_testkit::process`]).
//! - [`wait`]: polling helpers for watcher-driven outcomes.
//! - [`repo`]: the git fixture (bare origin + laptop clone) and file helpers.
//! - [`daemon`]: driving the `devd` CLI (start, sync, status, stop).
//! - [`receiver`]: a separate `devd-receiver serve` process.
//! - [`git_http`]: a smart-HTTP git server (`git http-backend`) on loopback
//!   that requires a token.
//! - [`worktree`]: snapshots of worktrees, their comparison, and the
//!   expected overlay digest computed independently of devd.
//! - [`content`]: deterministic bulk content (random bytes, text files).
//! - [`faults`]: what the fault tests share: the long `DEVD_SOAK=1` mode,
//!   a seeded random source, random edits, signals, percentiles.
//! - [`kmock`]: the kmock Kubernetes API emulator and a kubeconfig for it.
//! - [`kube_cluster`]: a Kubernetes cluster played against that emulator
//!   (kubelet, Kaniko, rollouts), with receiver and daemon on top;
//!   [`kube_controllers`]: its Deployment and ReplicaSet controllers;
//!   [`kube_ingress`]: its ingress controller, with a real HTTP data path.
//! - [`containers`]: private buildah/podman storage per test, a local
//!   `docker-registry`, a tiny HTTP client for what containers serve (from
//!   [`devd_testkit`]), and a receiver that pushes to that registry.
//! - [`desktop`]: a private D-Bus session bus, Xvfb and dunst, and what
//!   notifications reached them.
//! - [`terminal`]: a private tmux server, to read what devd draws on a
//!   real terminal.
//!
//! Every handle that starts a process stops it on drop, also when the test
//! panics; a panicking test prints the captured logs. Set
//! `DEVD_TESTS_KEEP=1` to keep the temporary directory of a failed test.

pub mod bins;
pub mod containers;
pub mod content;
pub mod daemon;
pub mod desktop;
pub mod faults;
pub mod git_http;
pub mod kmock;
pub mod kube_cluster;
pub mod kube_controllers;
pub mod kube_ingress;
pub use devd_testkit::process;
pub mod receiver;
pub mod repo;
pub mod terminal;
pub mod wait;
pub mod worktree;

pub use bins::bin;
pub use containers::{
    BUSYBOX_IMAGE, ContainerEnv, ContainerInfo, PortMapping, Registry, http_get,
    require_container_tools,
};
pub use content::{random_bytes, text_lines};
pub use daemon::{Devd, Service, Status, SyncReport};
pub use process::{Background, Run};
pub use receiver::{Pairing, Receiver, ReceiverOpts};
pub use repo::{FAST_SYNC, Fixture};
pub use wait::{poll_until, wait_until};
pub use worktree::{
    Node, Snapshot, assert_worktrees_equal, expected_overlay_digest, wait_for_worktrees_equal,
};

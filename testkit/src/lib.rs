//! Fixtures shared by devd's end-to-end tests (`devd-tests`) and its
//! benchmarks (`devd-benches`): nothing here knows devd, so both can run
//! the same real tools the same way.
//!
//! Map of the crate:
//! - [`process`]: finding programs, running commands with output captured
//!   to files (with timeouts) or read from pipes ([`process::output`]).
//! - [`git`]: git with a hermetic configuration (no system or global
//!   config, no prompt), one helper for every caller.
//! - [`net`]: a free loopback port and a tiny blocking HTTP/1.0 client for
//!   what containers serve and for the registry API.
//! - [`containers`]: private buildah/podman storage (devd's processes get
//!   no runtime or limits: devd finds those itself), the busybox base image built from Debian's `busybox-static`,
//!   and Debian's `docker-registry` on 127.0.0.1; all cleaned up on drop.
//!
//! Each fixture comes in two flavours where the callers differ: the tests'
//! constructors panic with what to install or what failed (`new`,
//! `start`), the benchmarks' return an error they record and move on
//! (`try_new`, `try_start`).

pub mod containers;
pub mod git;
pub mod net;
pub mod process;
pub mod registry;

pub use containers::{
    BUSYBOX_IMAGE, CONTAINER_PACKAGES, ContainerEnv, ContainerInfo, PortMapping,
    check_container_tools, require_container_tools,
};
pub use git::{git, git_command};
pub use net::{free_port, http_get, http_get_within};
pub use process::{Background, Logs, Run, find_program, output};
pub use registry::Registry;

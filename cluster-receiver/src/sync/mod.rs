//! The sync half: laptops' overlays in, a materialized worktree out.

mod exec;
pub mod gate;
pub mod git_store;
pub mod materialize;
pub mod server;
pub mod session;
pub mod state;
pub mod workspace;
pub mod writer;

//! placeholder
pub mod git_store;

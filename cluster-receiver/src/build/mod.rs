//! The build half: from an applied generation to built images and
//! deployed services.

pub mod archive;
pub mod backend;
pub mod context;
/// `.dockerignore`, read in devd-sync with the catalog it completes.
pub use devd_sync::dockerignore;
pub mod fetch;
pub mod http;
pub mod live;
pub mod pipeline;
pub mod render;

//! The build half: from an applied generation to built images and
//! deployed services.

pub mod archive;
pub mod backend;
pub mod context;
pub mod dockerignore;
pub mod fetch;
pub mod http;
pub mod pipeline;

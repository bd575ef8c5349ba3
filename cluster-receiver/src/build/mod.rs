//! The build half: from an applied generation to built images and
//! deployed services (the backends themselves are in `builder/`).

pub mod archive;
pub mod context;
pub mod dockerignore;
pub mod fetch;
pub mod http;
pub mod pipeline;

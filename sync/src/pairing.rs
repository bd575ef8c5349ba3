//! The pairing file: everything a laptop needs to reach one workspace of a
//! receiver — address, certificate fingerprint, workspace name and token.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Contents of `pairing.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    pub address: String,
    pub fingerprint: String,
    pub workspace: String,
    pub token: String,
}

/// Errors reading or writing a pairing file.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("cannot read pairing file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("pairing file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("cannot write pairing file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Pairing {
    /// Read a pairing file.
    pub fn load(path: &Path) -> Result<Self, PairingError> {
        let text = std::fs::read_to_string(path).map_err(|source| PairingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| PairingError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Write it readable by its owner only (it carries the token).
    pub fn save(&self, path: &Path) -> Result<(), PairingError> {
        let text = toml::to_string(self).expect("pairing serializes");
        crate::fsutil::write_atomic(path, text.as_bytes(), Some(0o600)).map_err(|source| {
            PairingError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

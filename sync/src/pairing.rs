//! The pairing file: everything a laptop needs to reach one workspace of a
//! receiver — address, certificate fingerprint, workspace name and token.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
        Self::parse(&text).map_err(|source| PairingError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parse the text of a pairing file.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The text of its pairing file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("pairing serializes")
    }

    /// Write it readable by its owner only (it carries the token).
    pub fn save(&self, path: &Path) -> Result<(), PairingError> {
        let text = self.to_toml();
        crate::fsutil::write_atomic(path, text.as_bytes(), Some(0o600)).map_err(|source| {
            PairingError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

/// The keys of a pairing Secret's data, one per [`Pairing`] field.
pub const KEYS: [&str; 4] = ["address", "fingerprint", "workspace", "token"];

/// The Secret for `pairing`: the pairing's fields as data, devd's labels.
pub fn secret(name: &str, pairing: &Pairing) -> Secret {
    let values = [
        &pairing.address,
        &pairing.fingerprint,
        &pairing.workspace,
        &pairing.token,
    ];
    let data = KEYS
        .iter()
        .zip(values)
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_owned(),
                    "devd-receiver".to_owned(),
                ),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "pairing".to_owned(),
                ),
                ("app.kubernetes.io/part-of".to_owned(), "devd".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "devd-receiver".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Read a pairing back from the Secret's data (what `devd workspace
/// create` does); the error names the first missing, empty or non-UTF-8
/// key.
pub fn pairing_of(secret: &Secret) -> Result<Pairing, &'static str> {
    let get = |k: &'static str| -> Result<String, &'static str> {
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8(b.0.clone()).map_err(|_| k));
        let from_string_data = secret.string_data.as_ref().and_then(|d| d.get(k)).cloned();
        match (from_data, from_string_data) {
            (Some(v), _) => v,
            (None, Some(v)) => Ok(v),
            (None, None) => Err(k),
        }
        .and_then(|v| if v.is_empty() { Err(k) } else { Ok(v) })
    };
    Ok(Pairing {
        address: get("address")?,
        fingerprint: get("fingerprint")?,
        workspace: get("workspace")?,
        token: get("token")?,
    })
}

/// The name of the Secret a receiver publishes its pairing in: `[kubernetes]
/// pairing_secret` of its `receiver.toml` (the receiver's whole
/// configuration is read by the receiver itself; the laptop needs only
/// this key to find the pairing after `devd workspace create`).
pub fn secret_name_in_receiver_toml(toml_text: &str) -> Result<Option<String>, toml::de::Error> {
    #[derive(Deserialize)]
    struct File {
        kubernetes: Option<Kubernetes>,
    }
    #[derive(Deserialize)]
    struct Kubernetes {
        pairing_secret: Option<String>,
    }
    let f: File = toml::from_str(toml_text)?;
    Ok(f.kubernetes.and_then(|k| k.pairing_secret))
}
